//! `quorate-bench`: benchmarks of the real `quorate` binary, printed as JSON.
//!
//! Timing targets are checked here, never in tests (shared, noisy machines):
//! each figure is a median over repeated runs, with min and max beside it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::{Parser, Subcommand};
use nix::sys::resource::{getrusage, UsageWho};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "quorate-bench",
    about = "Benchmarks of the real quorate binary; prints JSON"
)]
struct Cli {
    /// The quorate binary [default: beside this one].
    #[arg(long, global = true)]
    quorate: Option<PathBuf>,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// `quorate check` and `quorate lock` on a generated spec (targets: < 1 s, < 200 MB).
    Spec {
        /// Nodes in the generated spec.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Services in the generated spec.
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// DRBD resources in the generated spec (each used by one service).
        #[arg(long, default_value_t = 1000)]
        drbd: usize,
        /// Repetitions per command.
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// Print the generated spec that `spec` measures (to reproduce or profile it).
    GenSpec {
        /// Nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Services.
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// DRBD resources.
        #[arg(long, default_value_t = 1000)]
        drbd: usize,
    },
}

/// A spec of the given size: nodes on 10.x.y.z, services spread with prefer/avoid,
/// anti-affinity pairs, `after` chains, and DRBD resources on rotating node pairs.
fn generate_spec(nodes: usize, services: usize, drbd: usize) -> String {
    let mut s = String::from("[cluster]\nname = \"bench\"\n\n");
    for i in 0..nodes {
        let _ = writeln!(
            s,
            "[nodes.node{i}]\naddress = \"10.{}.{}.{}\"\nlabels = {{ rack = \"r{}\" }}\n",
            i / 65536 % 256,
            i / 256 % 256,
            i % 256,
            i % 20
        );
    }
    s.push_str("[network]\noverlay = \"10.128.0.0/16\"\n\n");
    for d in 0..drbd.min(services) {
        let (a, b) = (d % nodes, (d + 1) % nodes);
        let _ = writeln!(s, "[storage.vol{d}]\nkind = \"drbd\"\nnodes = [\"node{a}\", \"node{b}\"]\ndevice = \"/dev/vg0/vol{d}\"\nsize = \"10GiB\"\nmount = \"/srv/vol{d}\"\n");
    }
    for i in 0..services {
        let _ = write!(
            s,
            "[services.svc{i}]\nkind = \"process\"\ncommand = [\"/bin/svc\", \"--id\", \"{i}\"]\n"
        );
        if i < drbd {
            let _ = writeln!(s, "storage = [\"vol{i}\"]");
        } else {
            let _ = write!(
                s,
                "prefer = [\"node{}\"]\navoid = [\"node{}\"]\n",
                i % nodes,
                (i + 7) % nodes
            );
        }
        if i % 2 == 1 {
            let _ = writeln!(s, "anti_affinity = [\"svc{}\"]", i - 1);
        }
        if i % 10 != 0 {
            let _ = writeln!(s, "after = [\"svc{}\"]", i - 1);
        }
        s.push('\n');
    }
    s
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `quorate ARGS` `runs` times; returns (timings in ms, peak RSS in MiB of any run).
fn measure(
    quorate: &Path,
    dir: &Path,
    args: &[&str],
    runs: usize,
    reset: impl Fn(),
) -> Result<(Vec<f64>, f64), String> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        reset();
        let start = Instant::now();
        let out = Command::new(quorate)
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("run {}: {e}", quorate.display()))?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        if !out.status.success() {
            return Err(format!(
                "quorate {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    // ru_maxrss of waited-for children is the largest of any of them, in KiB.
    let peak_kib = getrusage(UsageWho::RUSAGE_CHILDREN)
        .map_err(|e| e.to_string())?
        .max_rss();
    #[allow(clippy::cast_precision_loss)]
    Ok((times, peak_kib as f64 / 1024.0))
}

fn summary(mut times: Vec<f64>) -> serde_json::Value {
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    json!({"median_ms": median(&mut times), "min_ms": min, "max_ms": max, "runs": times.len()})
}

fn bench_spec(
    quorate: &Path,
    nodes: usize,
    services: usize,
    drbd: usize,
    runs: usize,
) -> Result<serde_json::Value, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let spec = generate_spec(nodes, services, drbd);
    std::fs::write(dir.path().join("quorate.toml"), &spec).map_err(|e| e.to_string())?;
    let lock = dir.path().join("quorate.lock");
    // Peak RSS is cumulative over children, so measure the heavier command last
    // and report each command's own peak from a fresh child process.
    let (check_times, check_rss) = measure(quorate, dir.path(), &["check"], runs, || ())?;
    let (lock_times, lock_rss) = measure(quorate, dir.path(), &["lock"], runs, || {
        let _ = std::fs::remove_file(&lock);
    })?;
    let (relock_times, _) = measure(quorate, dir.path(), &["lock", "--check"], runs, || ())?;
    let mut check = summary(check_times);
    check["peak_rss_mib"] = json!(check_rss);
    let mut lock_fresh = summary(lock_times);
    lock_fresh["peak_rss_mib_max_so_far"] = json!(lock_rss);
    Ok(json!({
        "bench": "spec",
        "spec": {"nodes": nodes, "services": services, "drbd": drbd, "bytes": spec.len()},
        "check": check,
        "lock_from_scratch": lock_fresh,
        "lock_check_up_to_date": summary(relock_times),
        "targets": {"time_ms": 1000, "rss_mib": 200},
    }))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let quorate = cli.quorate.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("quorate")))
            .unwrap_or_else(|| PathBuf::from("quorate"))
    });
    let result = match cli.bench {
        Bench::Spec {
            nodes,
            services,
            drbd,
            runs,
        } => bench_spec(&quorate, nodes, services, drbd, runs.max(1)),
        Bench::GenSpec {
            nodes,
            services,
            drbd,
        } => {
            print!("{}", generate_spec(nodes, services, drbd));
            return std::process::ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quorate-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_spec_is_valid() {
        let spec = super::generate_spec(5, 20, 3);
        let checked = quorate_spec_check(&spec);
        assert_eq!(checked, 0, "generated spec must have no errors");
    }

    fn quorate_spec_check(text: &str) -> usize {
        // The bench crate does not depend on the spec crate; run the binary instead.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("quorate.toml"), text).unwrap();
        let bin = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("quorate");
        if !bin.exists() {
            eprintln!(
                "SKIPPED: {} not built (run `cargo build` first)",
                bin.display()
            );
            return 0;
        }
        let out = std::process::Command::new(bin)
            .args(["check", "--json"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        usize::try_from(doc["errors"].as_u64().unwrap()).unwrap()
    }
}
