//! `quorate-bench`: benchmarks of the real `quorate` binary, printed as JSON.
//!
//! Timing targets are checked here, never in tests (shared, noisy machines):
//! each figure is a median over repeated runs, with min and max beside it.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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
    /// A 3-node cluster of real agents on loopback: time from start to an elected leader
    /// with quorum, `quorate apply` latency, idle RSS per agent (targets: RSS < 30 MB).
    Cluster {
        /// Cold formations to time.
        #[arg(long, default_value_t = 10)]
        formations: usize,
        /// Applies to time.
        #[arg(long, default_value_t = 100)]
        applies: usize,
    },
    /// The HTTP API of a 3-node cluster (`network.api_port`): `GET /v1/status` latency
    /// on a kept-alive HTTPS connection (curl), and the serving agent's RSS and CPU with
    /// the dashboard's event stream closed and with `streams` of them open.
    Api {
        /// Requests per measurement.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Event streams (open dashboards) for the second measurement.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Seconds to hold each state before measuring RSS and CPU.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// The scheduler on the generated spec: cold placement of every service, and
    /// re-placement after one node fails (target: 10,000 services on 1,000 nodes < 100 ms).
    Scheduler {
        /// Nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Services.
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// Repetitions.
        #[arg(long, default_value_t = 11)]
        runs: usize,
    },
    /// Failover on `quorate sandbox` (3 real agents, fences, HTTP demo services): time
    /// from a power loss (kill -9 of agent, fence and services) to the service answering
    /// HTTP on another node, separately for a follower and for the leader hosting it
    /// (targets with default timings: median < 2 s and < 3 s).
    Failover {
        /// Measurements per case.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Operating a 3-node cluster of real agents: a planned `quorate move` of one
    /// service (stop, then start elsewhere) and a `quorate drain` of a node that hosts
    /// 20 services (targets: move < 0.5 s plus the workload's own stop and start).
    Operate {
        /// Planned moves to time.
        #[arg(long, default_value_t = 10)]
        moves: usize,
        /// Services on the drained node.
        #[arg(long, default_value_t = 20)]
        services: usize,
    },
    /// The fence's reaction (root, cgroup v2): N process workloads, each in its own
    /// cgroup, handed to a real `quorate fence`; time from the lease deadline until the
    /// last workload is dead (its cgroup empty). The drift margin must cover this.
    Fence {
        /// Workloads per trial.
        #[arg(long, default_value_t = 10)]
        workloads: usize,
        /// Trials.
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Busy threads (one per core) while measuring, to see it under CPU load.
        #[arg(long)]
        load: bool,
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A cluster of agents for benchmarking; killed on drop.
struct BenchCluster {
    dir: tempfile::TempDir,
    agents: Vec<std::process::Child>,
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        // Each agent's cgroup tree goes with it: its workloads die, nothing is left.
        for entry in std::fs::read_dir(self.dir.path().join("d"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(tree) = std::fs::read_to_string(entry.path().join("cgroup")) {
                quorate_cgroup::remove_tree(Path::new(tree.trim()));
            }
        }
    }
}

fn run(quorate: &Path, dir: &Path, args: &[&str]) -> Result<std::process::Output, String> {
    let out = Command::new(quorate)
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "quorate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| e.to_string())?
        .local_addr()
        .map_err(|e| e.to_string())?
        .port())
}

/// Prepares spec, lock and certificates for 3 nodes, then starts the agents and
/// returns the time until node n1 reports a leader with quorum.
fn form_cluster(quorate: &Path) -> Result<(BenchCluster, f64), String> {
    let web = format!("[services.web]\nkind = \"process\"\ncommand = [{:?}, \"demo\"]\nenv = {{ GENERATION = \"0\" }}\n", quorate.display().to_string());
    form_cluster_with(quorate, &web)
}

/// Like [`form_cluster`], with `services` (TOML) in the spec; waits until every
/// service runs.
fn form_cluster_with(quorate: &Path, services: &str) -> Result<(BenchCluster, f64), String> {
    form_cluster_in(quorate, services, "")
}

/// Like [`form_cluster_with`], with `network` (TOML lines) in `[network]`.
fn form_cluster_in(
    quorate: &Path,
    services: &str,
    network: &str,
) -> Result<(BenchCluster, f64), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port()?;
    let mut spec = format!("[cluster]\nname = \"bench\"\n[network]\nport = {port}\n{network}");
    for i in 1..=3 {
        let _ = write!(spec, "[nodes.n{i}]\naddress = \"127.0.0.{i}\"\n");
    }
    spec.push_str(services);
    std::fs::write(dir.path().join("quorate.toml"), spec).map_err(|e| e.to_string())?;
    run(quorate, dir.path(), &["lock"])?;
    run(quorate, dir.path(), &["ca", "init", "ca"])?;
    for i in 1..=3 {
        run(
            quorate,
            dir.path(),
            &[
                "ca",
                "issue",
                &format!("n{i}"),
                "--ca",
                "ca",
                "--out",
                &format!("d/n{i}/tls"),
            ],
        )?;
    }
    let mut cluster = BenchCluster {
        dir,
        agents: Vec::new(),
    };
    let start = Instant::now();
    for i in 1..=3 {
        let child = Command::new(quorate)
            .args([
                "agent",
                "--spec",
                "quorate.toml",
                "--node",
                &format!("n{i}"),
                "--data-dir",
                &format!("d/n{i}"),
            ])
            .current_dir(cluster.dir.path())
            .env("QUORATE_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        cluster.agents.push(child);
    }
    loop {
        let out = Command::new(quorate)
            .args(["status", "--json", "--data-dir", "d/n1"])
            .current_dir(cluster.dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if let Ok(report) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if report["quorum"] == true && report["spec_version"] == 1 {
                return Ok((cluster, start.elapsed().as_secs_f64() * 1000.0));
            }
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            return Err("no leader within 60 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn bench_cluster(
    quorate: &Path,
    formations: usize,
    applies: usize,
) -> Result<serde_json::Value, String> {
    let mut formation_ms = Vec::new();
    for _ in 0..formations {
        let (_cluster, ms) = form_cluster(quorate)?;
        formation_ms.push(ms);
    }
    let (cluster, _) = form_cluster(quorate)?;
    let dir = cluster.dir.path();
    let mut apply_ms = Vec::new();
    for k in 1..=applies {
        let spec_path = dir.join("quorate.toml");
        let text = std::fs::read_to_string(&spec_path).map_err(|e| e.to_string())?;
        let text = text.replace(
            &format!("GENERATION = \"{}\"", k - 1),
            &format!("GENERATION = \"{k}\""),
        );
        std::fs::write(&spec_path, text).map_err(|e| e.to_string())?;
        let start = Instant::now();
        run(quorate, dir, &["apply", "--data-dir", "d/n2"])?;
        apply_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    // A process-start baseline: what part of each apply is just launching the CLI.
    let mut baseline_ms = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        run(quorate, dir, &["--version"])?;
        baseline_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    std::thread::sleep(std::time::Duration::from_secs(5));
    let rss: Vec<f64> = cluster
        .agents
        .iter()
        .filter_map(|a| rss_mib(a.id()))
        .collect();
    apply_ms.sort_by(f64::total_cmp);
    Ok(json!({
        "bench": "cluster",
        "nodes": 3,
        "formation_to_leader_with_quorum": summary(formation_ms),
        "apply_commit_latency": {
            "runs": apply_ms.len(),
            "p50_ms": percentile(&apply_ms, 0.5),
            "p99_ms": percentile(&apply_ms, 0.99),
            "max_ms": apply_ms.last().copied(),
            "note": "wall time of `quorate apply` through a follower, process start included",
        },
        "cli_process_start": summary(baseline_ms),
        "idle_rss_mib_per_agent": rss,
        "targets": {"idle_rss_mib": 30},
    }))
}

fn bench_scheduler(
    nodes: usize,
    services: usize,
    runs: usize,
) -> Result<serde_json::Value, String> {
    use quorate_scheduler::{place, Input, NodeState};
    let text = generate_spec(nodes, services, services / 10);
    let spec = quorate_spec::check(&text, quorate_spec::Format::Toml)
        .spec
        .ok_or("the generated spec is invalid")?;
    let mut states: std::collections::BTreeMap<String, NodeState> = spec
        .nodes
        .keys()
        .map(|n| (n.clone(), NodeState::Up))
        .collect();
    let empty = std::collections::BTreeMap::new();
    let mut cold = Vec::new();
    let mut placed = std::collections::BTreeMap::new();
    for _ in 0..runs {
        let start = Instant::now();
        let out = place(&Input {
            spec: &spec,
            nodes: &states,
            current: &empty,
            pins: &std::collections::BTreeMap::new(),
            failed: &std::collections::BTreeMap::new(),
            constraints: &quorate_scheduler::Constraints::NONE,
        });
        cold.push(start.elapsed().as_secs_f64() * 1000.0);
        placed = out;
    }
    let current: std::collections::BTreeMap<String, String> = placed
        .iter()
        .filter_map(|(s, p)| p.node.clone().map(|n| (s.clone(), n)))
        .collect();
    let unplaceable = placed.values().filter(|p| p.node.is_none()).count();
    // The node hosting the most services fails.
    let mut counts: std::collections::BTreeMap<&String, usize> = std::collections::BTreeMap::new();
    for n in current.values() {
        *counts.entry(n).or_default() += 1;
    }
    let victim = counts
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(n, _)| (*n).clone())
        .ok_or("nothing placed")?;
    states.insert(victim.clone(), NodeState::Down);
    let mut failover = Vec::new();
    let mut moved = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let out = place(&Input {
            spec: &spec,
            nodes: &states,
            current: &current,
            pins: &std::collections::BTreeMap::new(),
            failed: &std::collections::BTreeMap::new(),
            constraints: &quorate_scheduler::Constraints::NONE,
        });
        failover.push(start.elapsed().as_secs_f64() * 1000.0);
        moved = out
            .iter()
            .filter(|(s, p)| current.get(*s) != p.node.as_ref())
            .count();
    }
    Ok(json!({
        "bench": "scheduler",
        "nodes": nodes,
        "services": services,
        "unplaceable": unplaceable,
        "cold_placement": summary(cold),
        "after_one_node_fails": summary(failover),
        "failed_node": victim,
        "services_moved": moved,
        "target_ms": 100,
    }))
}

fn http_answer(ip: &str, port: u16) -> Option<String> {
    use std::io::{Read, Write as _};
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().ok()?;
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(50)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().last().map(String::from)
}

fn stats(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return json!({"runs": 0});
    }
    json!({"runs": v.len(), "median_ms": percentile(&v, 0.5), "p90_ms": percentile(&v, 0.9), "min_ms": v[0], "max_ms": v[v.len() - 1]})
}

/// One trial: a fresh sandbox, a power loss of the leader or of a follower, the time
/// until the service that ran there answers from another node.
fn failover_trial(quorate: &Path, kill_leader: bool) -> Result<f64, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path().join("sb");
    let d = dir.to_str().ok_or("path")?;
    run(quorate, tmp.path(), &["sandbox", "--detach", "--dir", d])?;
    let result = (|| {
        let file: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("sandbox.json")).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let out = run(quorate, tmp.path(), &["status", "--json", "--sandbox", d])?;
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let leader = report["leader"].as_str().ok_or("no leader")?.to_string();
        let services = report["services"].as_array().ok_or("no services")?;
        let pick = services
            .iter()
            .find(|s| (s["node"].as_str() == Some(leader.as_str())) == kill_leader)
            .ok_or("no service on the wanted node")?;
        let (service, victim) = (
            pick["name"].as_str().ok_or("name")?.to_string(),
            pick["node"].as_str().ok_or("node")?.to_string(),
        );
        // The service's entry point answers from wherever it runs.
        let entry = file["entry"][&service].as_str().ok_or("entry")?.to_string();
        let (ip, port) = entry.rsplit_once(':').ok_or("entry")?;
        let port: u16 = port
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string())?;
        let start = Instant::now();
        run(
            quorate,
            tmp.path(),
            &["sandbox", "kill", &victim, "--dir", d],
        )?;
        while start.elapsed() < std::time::Duration::from_secs(30) {
            let moved = http_answer(ip, port).is_some_and(|b| {
                b.strip_prefix(&format!("{service} on "))
                    .is_some_and(|n| n != victim)
            });
            if moved {
                return Ok(start.elapsed().as_secs_f64() * 1000.0);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Err(format!("{service} did not come back within 30 s"))
    })();
    let _ = run(quorate, tmp.path(), &["sandbox", "down", "--dir", d]);
    result
}

fn bench_failover(quorate: &Path, runs: usize) -> Result<serde_json::Value, String> {
    let mut follower = Vec::new();
    let mut leader = Vec::new();
    for i in 0..runs * 2 {
        let kill_leader = i % 2 == 1;
        let ms = failover_trial(quorate, kill_leader)?;
        eprintln!(
            "trial {}: {} host: {ms:.0} ms",
            i + 1,
            if kill_leader { "leader" } else { "follower" }
        );
        if kill_leader {
            leader.push(ms);
        } else {
            follower.push(ms);
        }
    }
    Ok(json!({
        "bench": "failover",
        "fault": "power loss (kill -9 of agent, fence and services) of the hosting node",
        "measured": "from issuing the kill to the service answering HTTP on another node",
        "timings": {"heartbeat_ms": 100, "election_timeout_ms": 500, "lease_ttl_ms": 1500, "drift_margin_ms": 500},
        "follower_hosted": stats(follower),
        "leader_hosted": stats(leader),
        "targets": {"follower_median_ms": 2000, "leader_median_ms": 3000},
    }))
}

fn status_of(quorate: &Path, dir: &Path, node: &str) -> Option<serde_json::Value> {
    let out = Command::new(quorate)
        .args(["status", "--json", "--data-dir", &format!("d/{node}")])
        .current_dir(dir)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// (node, state) of `service` in a status report.
fn placement_of(report: &serde_json::Value, service: &str) -> Option<(String, String)> {
    let s = report["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)?;
    Some((
        s["node"].as_str()?.to_string(),
        s["state"].as_str()?.to_string(),
    ))
}

fn bench_operate(
    quorate: &Path,
    moves: usize,
    services: usize,
) -> Result<serde_json::Value, String> {
    let names: Vec<String> = (0..services).map(|i| format!("s{i:02}")).collect();
    let spec: String = names.iter().map(|n| format!("[services.{n}]\nkind = \"process\"\ncommand = [{:?}, \"demo\"]\nstop_timeout = \"2s\"\nprefer = [\"n1\"]\n", quorate.display().to_string())).collect();
    let (cluster, _) = form_cluster_with(quorate, &spec)?;
    let dir = cluster.dir.path();
    let start = Instant::now();
    loop {
        let report = status_of(quorate, dir, "n1").unwrap_or_default();
        if names.iter().all(|n| {
            placement_of(&report, n).is_some_and(|(node, state)| node == "n1" && state == "running")
        }) {
            break;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            return Err("services did not all start on n1 within 60 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut move_ms = Vec::new();
    for k in 0..moves {
        let target = if k % 2 == 0 { "n2" } else { "n3" };
        let t0 = Instant::now();
        run(
            quorate,
            dir,
            &["move", &names[0], target, "--data-dir", "d/n1"],
        )?;
        loop {
            let report = status_of(quorate, dir, "n1").unwrap_or_default();
            if placement_of(&report, &names[0])
                .is_some_and(|(node, state)| node == target && state == "running")
            {
                move_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if t0.elapsed() > std::time::Duration::from_secs(30) {
                return Err(format!("{} did not reach {target} within 30 s", names[0]));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    run(
        quorate,
        dir,
        &["move", "--clear", &names[0], "--data-dir", "d/n1"],
    )?;
    let on_n1 = placement_of(
        &status_of(quorate, dir, "n1").unwrap_or_default(),
        &names[1],
    )
    .map(|(n, _)| n);
    let t0 = Instant::now();
    run(quorate, dir, &["drain", "n1", "--data-dir", "d/n2"])?;
    let drain_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let moved = names.iter().filter(|n| *n != &names[0]).count();
    Ok(json!({
        "bench": "operate",
        "planned_move": stats(move_ms),
        "planned_move_note": "from issuing `quorate move` to the service reported running on the target: stop on the old node (SIGTERM, the demo exits at once), report, start on the new one",
        "drain": {"services_moved": moved, "first_service_was_on": on_n1, "ms": drain_ms, "note": "`quorate drain n1` returns when nothing runs on n1"},
        "targets": {"planned_move_ms": 500},
    }))
}

/// One trial of `bench fence`: returns ms from the deadline to the last workload dead.
fn fence_trial(quorate: &Path, base: &Path, workloads: usize, trial: usize) -> Result<f64, String> {
    use quorate_cgroup::Cgroup;
    use quorate_fence::mono_ns;
    use std::io::Write as _;
    let mut cgs: Vec<Cgroup> = Vec::new();
    let mut children = Vec::new();
    let mut groups = Vec::new();
    let mut cgroups = Vec::new();
    let result = (|| {
        for i in 0..workloads {
            let cg = Cgroup::create_in(base, "bench", &format!("w{trial}-{i}"))
                .map_err(|e| e.to_string())?;
            let mut argv = cg.exec_prefix();
            argv.extend(["sleep".to_owned(), "300".to_owned()]);
            let child = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .process_group(0)
                .spawn()
                .map_err(|e| e.to_string())?;
            groups.push(format!("w{i}={}", child.id()));
            cgroups.push(format!("w{i}={}", cg.dir().display()));
            children.push(child);
            cgs.push(cg);
        }
        // Every workload is inside its cgroup before the fence gets it.
        let t0 = Instant::now();
        while cgs.iter().any(Cgroup::is_empty) {
            if t0.elapsed() > Duration::from_secs(5) {
                return Err("workloads did not enter their cgroups".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut fence = std::process::Command::new(quorate)
            .args(["fence", "--node", "bench"])
            .env_remove("QUORATE_UNSAFE_NO_FENCE")
            .env_remove("QUORATE_WITNESS_JOURNAL")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = mono_ns() + 300_000_000;
        if let Some(stdin) = fence.stdin.as_mut() {
            let lines = format!(
                "lease {deadline}\ngroups {}\ncgroups {}\n",
                groups.join(" "),
                cgroups.join(" ")
            );
            stdin
                .write_all(lines.as_bytes())
                .map_err(|e| e.to_string())?;
            stdin.flush().map_err(|e| e.to_string())?;
        }
        // Sleep until just before the deadline (spinning there would take a core from
        // the fence), then poll tightly: the first instant every cgroup is empty.
        std::thread::sleep(Duration::from_nanos(
            deadline.saturating_sub(mono_ns()).saturating_sub(2_000_000),
        ));
        let done = loop {
            let now = mono_ns();
            if now >= deadline && cgs.iter().all(Cgroup::is_empty) {
                break now;
            }
            if now > deadline + 10_000_000_000 {
                let _ = fence.kill();
                return Err("the fence did not kill within 10 s of its deadline".into());
            }
            std::hint::spin_loop();
        };
        drop(fence.stdin.take());
        let _ = fence.wait();
        #[allow(clippy::cast_precision_loss)]
        Ok((done - deadline) as f64 / 1e6)
    })();
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    for cg in &cgs {
        for _ in 0..100 {
            cg.kill();
            if cg.remove() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    result
}

/// `quorate-bench fence`: the fence's reaction time (see [`Bench::Fence`]).
fn bench_fence(
    quorate: &Path,
    workloads: usize,
    runs: usize,
    load: bool,
) -> Result<serde_json::Value, String> {
    let own = quorate_cgroup::own_dir().ok_or("no cgroup v2 hierarchy")?;
    let base = own.join(format!("quorate-bench-fence.{}", std::process::id()));
    std::fs::create_dir(&base).map_err(|e| format!("{} (root needed): {e}", base.display()))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<std::thread::JoinHandle<()>> = if load {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        std::hint::black_box(x);
                    }
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut times = Vec::with_capacity(runs);
    let mut error = None;
    for trial in 0..runs {
        match fence_trial(quorate, &base, workloads, trial) {
            Ok(ms) => times.push(ms),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in busy {
        let _ = b.join();
    }
    let _ = std::fs::remove_dir(&base);
    if let Some(e) = error {
        return Err(e);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(json!({
        "bench": "fence",
        "workloads": workloads,
        "cpu_load": load,
        "deadline_to_last_dead_ms": stats(times),
        "p99_ms": percentile(&sorted, 0.99),
        "p999_ms": percentile(&sorted, 0.999),
        "note": "process workloads in cgroups of their own, killed by process group and cgroup.kill; a unit's cgroup is killed the same way (its D-Bus stop comes after, off the critical path)",
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
        Bench::Cluster {
            formations,
            applies,
        } => bench_cluster(&quorate, formations.max(1), applies.max(1)),
        Bench::Scheduler {
            nodes,
            services,
            runs,
        } => bench_scheduler(nodes, services, runs.max(1)),
        Bench::Failover { runs } => bench_failover(&quorate, runs.max(1)),
        Bench::Api {
            requests,
            streams,
            seconds,
        } => bench_api(&quorate, requests.max(1), streams, seconds.max(1)),
        Bench::Operate { moves, services } => {
            bench_operate(&quorate, moves.max(1), services.max(1))
        }
        Bench::Fence {
            workloads,
            runs,
            load,
        } => bench_fence(&quorate, workloads.max(1), runs.max(1), load),
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

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// `requests` GETs of /v1/status over one kept-alive connection (one curl, many URLs);
/// each transfer's total time in ms, the first (with the TLS handshake) left out.
fn status_latencies(
    dir: &Path,
    port: u16,
    token: &str,
    requests: usize,
) -> Result<Vec<f64>, String> {
    let url = format!("https://n1:{port}/v1/status");
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "--resolve",
        &format!("n1:{port}:127.0.0.1"),
        "--cacert",
    ])
    .arg(dir.join("ca/ca.pem"))
    .args([
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-w",
        "%{http_code} %{time_total}\\n",
    ]);
    for _ in 0..=requests {
        c.args(["-o", "/dev/null", &url]);
    }
    let out = c.output().map_err(|e| format!("curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ms = Vec::new();
    for line in text.lines().skip(1) {
        let (code, secs) = line.split_once(' ').ok_or("curl printed no timing")?;
        if code != "200" {
            return Err(format!("GET /v1/status answered {code}"));
        }
        ms.push(secs.parse::<f64>().map_err(|e| e.to_string())? * 1000.0);
    }
    Ok(ms)
}

fn bench_api(
    quorate: &Path,
    requests: usize,
    streams: usize,
    seconds: u64,
) -> Result<serde_json::Value, String> {
    let api_port = free_port()?;
    let web = format!(
        "[services.web]\nkind = \"process\"\ncommand = [{:?}, \"demo\"]\n",
        quorate.display().to_string()
    );
    let (cluster, _) = form_cluster_in(quorate, &web, &format!("api_port = {api_port}\n"))?;
    let dir = cluster.dir.path();
    let token = run(
        quorate,
        dir,
        &["token", "create", "--role", "viewer", "--data-dir", "d/n1"],
    )?;
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let pid = cluster.agents[0].id();
    let hold = |what: &str| -> Result<(f64, f64), String> {
        let (t0, c0) = (Instant::now(), cpu_ticks(pid).ok_or("no /proc stat")?);
        std::thread::sleep(std::time::Duration::from_secs(seconds));
        let c1 = cpu_ticks(pid).ok_or("no /proc stat")?;
        let cpu = (c1 - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
        let rss = rss_mib(pid).ok_or_else(|| format!("no RSS ({what})"))?;
        Ok((rss, cpu))
    };
    let (rss_closed, cpu_closed) = hold("closed")?;
    let mut closed = status_latencies(dir, api_port, &token, requests)?;
    closed.sort_by(f64::total_cmp);
    let mut open: Vec<std::process::Child> = Vec::new();
    for _ in 0..streams {
        let child = Command::new("curl")
            .args([
                "-s",
                "-N",
                "-o",
                "/dev/null",
                "--resolve",
                &format!("n1:{api_port}:127.0.0.1"),
                "--cacert",
            ])
            .arg(dir.join("ca/ca.pem"))
            .arg(format!(
                "https://n1:{api_port}/v1/stream?access_token={token}"
            ))
            .spawn()
            .map_err(|e| format!("curl: {e}"))?;
        open.push(child);
    }
    let held = hold("open");
    let latencies = status_latencies(dir, api_port, &token, requests);
    for mut c in open {
        let _ = c.kill();
        let _ = c.wait();
    }
    let (rss_open, cpu_open) = held?;
    let mut with_streams = latencies?;
    with_streams.sort_by(f64::total_cmp);
    let line = |v: &[f64]| json!({"median_ms": percentile(v, 0.5), "p90_ms": percentile(v, 0.9), "p99_ms": percentile(v, 0.99), "requests": v.len()});
    Ok(json!({
        "bench": "api",
        "note": "GET /v1/status through n1's API (it forwards to the leader like `quorate status`) on one kept-alive HTTPS connection; RSS and CPU of n1's agent after holding each state",
        "status_latency_streams_closed": line(&closed),
        "status_latency_streams_open": line(&with_streams),
        "streams_open": streams,
        "agent_rss_mib": {"streams_closed": rss_closed, "streams_open": rss_open},
        "agent_cpu_percent_of_one_core": {"streams_closed": cpu_closed, "streams_open": cpu_open},
        "seconds_held": seconds,
    }))
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
