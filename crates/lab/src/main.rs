//! `quorate-lab`: the fault lab's command line (root required).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use quorate_lab::cluster::{default_quorate, LabCluster, Options};
use quorate_lab::{bench, checker, faults, netns};

#[derive(Debug, Parser)]
#[command(
    name = "quorate-lab",
    version,
    about = "The fault lab: real agents in network namespaces, real faults, an independent checker.",
    long_about = "The fault lab: a cluster whose nodes are network namespaces on a bridge, each \
running a real `quorate agent` with its fence and witness workloads. Faults are real: power \
loss, cut cables, 2+3 splits, paused agents, agent restarts, flapping links, and netem delay/loss \
where the kernel has it. The checker judges a run from the witness journal and the client record \
alone: a service on two nodes at once, or an acknowledged operation lost, fails the run (exit 1).

Examples (as root):
  quorate-lab run --nodes 3 --faults 20 --seed 7
  quorate-lab run --nodes 5 --faults 50 --json > report.json
  quorate-lab soak --minutes 30 --seed 1
  quorate-lab bench failover --runs 10 --markdown table.md
  quorate-lab check journal --client client.jsonl
  quorate-lab cleanup

Environment: QUORATE_LAB_KEEP=1 keeps the work dir (spec, logs, journal, client record)
for a post-mortem; QUORATE_LAB_LOG sets the agents' log filter (default info)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct LabArgs {
    /// Nodes (each a network namespace).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Witness services.
    #[arg(long, default_value_t = 4)]
    services: usize,
    /// How many nodes vote in Raft (the first ones); the others join as members with
    /// `voter = false` [default: all].
    #[arg(long)]
    voters: Option<usize>,
    /// The spec's `cluster.timings.drift_margin` (e.g. "250ms") [default: the spec's
    /// default, 500ms].
    #[arg(long, value_name = "DURATION")]
    drift_margin: Option<String>,
    /// The quorate binary [default: beside quorate-lab, else on PATH].
    #[arg(long, value_name = "PATH")]
    quorate: Option<PathBuf>,
    /// Run the agents with fencing disabled (QUORATE_UNSAFE_NO_FENCE=1): the checker
    /// should then catch double runs. For testing the checker only.
    #[arg(long)]
    unsafe_no_fence: bool,
    /// Cluster traffic through a WireGuard mesh (network.transport = "wireguard";
    /// wireguard-go in each namespace).
    #[arg(long)]
    wireguard: bool,
}

impl LabArgs {
    fn options(&self) -> Options {
        let mut env = Vec::new();
        if self.unsafe_no_fence {
            env.push(("QUORATE_UNSAFE_NO_FENCE".to_owned(), "1".to_owned()));
        }
        Options {
            services: self.services,
            voters: self.voters,
            env,
            wireguard: self.wireguard,
            extra_spec: self.drift_margin.as_ref().map_or_else(String::new, |m| {
                format!("\n[cluster.timings]\ndrift_margin = {m:?}\n")
            }),
            ..Options::new(
                self.nodes,
                self.quorate.clone().unwrap_or_else(default_quorate),
                netns::PREFIX,
            )
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A seeded random schedule of faults, then the checker's verdict.
    Run {
        #[command(flatten)]
        lab: LabArgs,
        /// How many faults.
        #[arg(long, default_value_t = 20)]
        faults: usize,
        /// Seed of the schedule (same seed, same schedule).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Random faults until the time is up, then the verdict.
    Soak {
        #[command(flatten)]
        lab: LabArgs,
        /// How long.
        #[arg(long)]
        minutes: u64,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the checker on a journal (and a client record) from an earlier run.
    Check {
        /// The witness journal.
        journal: PathBuf,
        /// The client record.
        #[arg(long, value_name = "FILE")]
        client: Option<PathBuf>,
    },
    /// Remove namespaces and processes a killed lab left behind.
    Cleanup,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Fault → service running elsewhere, per fault kind; formation; planned move.
    Failover {
        #[command(flatten)]
        lab: LabArgs,
        /// Runs per measurement.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Seed of the random pause (up to 1 s) before each fault, so that faults
        /// strike at any phase of the heartbeat and renewal cycles.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the result as a markdown table to this file.
        #[arg(long, value_name = "FILE")]
        markdown: Option<PathBuf>,
    },
    /// Node-to-node throughput and CPU per GB, direct vs through the WireGuard mesh
    /// (iperf3 between two namespaces).
    Mesh {
        #[command(flatten)]
        lab: LabArgs,
        /// Runs per path.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
    /// `quorate deploy` of 3 nodes vs a naive serial copy-then-switch: wall time and
    /// copy throughput (each node has its own Nix store; needs nix-bin).
    Deploy {
        #[command(flatten)]
        lab: LabArgs,
        /// Runs of each.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Random MiB in each generation (what every copy moves, per node).
        #[arg(long, default_value_t = 64)]
        payload_mib: u32,
    },
    /// Failover on power loss: a witness on a Ceph RBD image vs a process-only one
    /// (a real Ceph in the lab; needs Debian's ceph packages).
    Ceph {
        #[command(flatten)]
        lab: LabArgs,
        /// Runs of each.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seed of the random pause (up to 1 s) before each fault.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// One idle cluster: formation, RSS per agent, the leader's CPU, `status` latency
    /// (e.g. `--nodes 25 --voters 5`; targets: leader < 5 % of a core, RSS < 30 MB).
    Scale {
        #[command(flatten)]
        lab: LabArgs,
        /// How long to measure the idle leader's CPU.
        #[arg(long, default_value_t = 20)]
        idle_seconds: u64,
    },
}

/// Prints a benchmark's JSON result on stdout, or its error (exit 1).
fn print_bench(result: Result<serde_json::Value, String>) -> ExitCode {
    match result {
        Ok(result) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn schedule(lab: &LabArgs, faults: usize, minutes: Option<u64>, seed: u64, json: bool) -> ExitCode {
    if let Some(why) = netns::unavailable() {
        eprintln!("error: the lab needs network namespaces: {why}");
        return ExitCode::from(2);
    }
    let mut options = lab.options();
    options.services = options.services.max(1);
    let result = (|| -> Result<(faults::ScheduleReport, checker::Verdict, PathBuf), String> {
        let mut cluster = LabCluster::new(options)?;
        let from = checker::mono_ns();
        let formed = cluster.start_all(Duration::from_secs(60))?;
        eprintln!(
            "lab: {} nodes formed in {formed:?} ({})",
            cluster.names.len(),
            cluster.path().display()
        );
        let deadline = minutes.map(|m| Instant::now() + Duration::from_secs(m * 60));
        let mut report = faults::ScheduleReport {
            seed,
            faults: Vec::new(),
            skipped: Vec::new(),
        };
        let mut round = 0u64;
        loop {
            let batch = if deadline.is_some() { 10 } else { faults };
            let part = faults::run_schedule(
                &mut cluster,
                batch,
                seed.wrapping_add(round),
                Duration::from_secs(60),
                |f| {
                    eprintln!("fault {:>3}: {:?} of {:?} ({:?}) held {} ms, {} op(s), healthy again after {} ms", report.faults.len() + f.n, f.kind, f.nodes, f.target, f.held_ms, f.operations.len(), f.recovered_ms);
                },
            )?;
            report.skipped = part.skipped;
            report.faults.extend(part.faults);
            round += 1;
            match deadline {
                Some(d) if Instant::now() < d => continue,
                _ => break,
            }
        }
        for (kind, why) in &report.skipped {
            eprintln!("skipped {kind:?}: {why}");
        }
        let verdict = cluster.verdict(from);
        let kept = cluster.path().to_owned();
        Ok((report, verdict, kept))
    })();
    match result {
        Ok((report, verdict, dir)) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": verdict.ok(), "schedule": report, "verdict": verdict})
                );
            } else {
                println!(
                    "{} faults (seed {}), {} runs checked",
                    report.faults.len(),
                    report.seed,
                    verdict.runs
                );
                for (service, d) in &verdict.downtime {
                    println!(
                        "  {service}: down {} ms in {} gap(s), longest {} ms",
                        d.total_ms, d.gaps, d.longest_ms
                    );
                }
                for (a, b) in &verdict.double_runs {
                    println!("VIOLATION (invariant 1): {} ran on {} (pid {}, {}..{:?}) and {} (pid {}, {}..{:?}) at once", a.service, a.node, a.pid, a.start, a.end, b.node, b.pid, b.start, b.end);
                }
                for problem in &verdict.journal_problems {
                    println!("VIOLATION (checker): {problem}");
                }
                for lost in &verdict.lost_operations {
                    println!("VIOLATION (invariant 2): acknowledged {:?} not in effect (cluster shows pin {:?})", lost.operation, lost.found);
                }
                println!(
                    "{}",
                    if verdict.ok() {
                        "OK: no violation"
                    } else {
                        "FAILED"
                    }
                );
            }
            let _ = dir;
            if verdict.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            lab,
            faults,
            seed,
            json,
        } => schedule(&lab, faults, None, seed, json),
        Command::Soak {
            lab,
            minutes,
            seed,
            json,
        } => schedule(&lab, 0, Some(minutes), seed, json),
        Command::Bench(BenchCommand::Scale { lab, idle_seconds }) => {
            if let Some(why) = netns::unavailable() {
                eprintln!("error: the lab needs network namespaces: {why}");
                return ExitCode::from(2);
            }
            let options = lab.options();
            print_bench(bench::scale(
                &options,
                Duration::from_secs(idle_seconds),
                |line| eprintln!("{line}"),
            ))
        }
        Command::Bench(BenchCommand::Deploy {
            lab,
            runs,
            payload_mib,
        }) => {
            if let Some(why) = netns::unavailable() {
                eprintln!("error: the lab needs network namespaces: {why}");
                return ExitCode::from(2);
            }
            print_bench(bench::deploy(&lab.options(), runs, payload_mib, |line| {
                eprintln!("{line}");
            }))
        }
        Command::Bench(BenchCommand::Ceph { lab, runs, seed }) => {
            if let Some(why) = netns::unavailable().or_else(quorate_lab::ceph::unavailable) {
                eprintln!("error: {why}");
                return ExitCode::from(2);
            }
            print_bench(bench::ceph(&lab.options(), runs, seed, |line| {
                eprintln!("{line}");
            }))
        }
        Command::Bench(BenchCommand::Mesh { lab, runs, seconds }) => {
            if let Some(why) = netns::unavailable() {
                eprintln!("error: the lab needs network namespaces: {why}");
                return ExitCode::from(2);
            }
            print_bench(bench::mesh(&lab.options(), runs, seconds, |line| {
                eprintln!("{line}");
            }))
        }
        Command::Bench(BenchCommand::Failover {
            lab,
            runs,
            seed,
            markdown,
        }) => {
            if let Some(why) = netns::unavailable() {
                eprintln!("error: the lab needs network namespaces: {why}");
                return ExitCode::from(2);
            }
            let mut options = lab.options();
            options.services = 1;
            match bench::failover(&options, runs, seed, |line| eprintln!("{line}")) {
                Ok(result) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&result).unwrap_or_default()
                    );
                    if let Some(path) = markdown {
                        if let Err(e) = std::fs::write(&path, bench::markdown(&result)) {
                            eprintln!("error: cannot write {}: {e}", path.display());
                            return ExitCode::from(1);
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Check { journal, client } => {
            if !journal.exists() {
                eprintln!("error: no journal at {}", journal.display());
                return ExitCode::from(2);
            }
            let judged = checker::read_journal(&journal);
            let doubles = checker::double_runs(&judged.runs);
            let ops = client
                .as_deref()
                .map(checker::operations)
                .unwrap_or_default();
            println!("{} runs, {} operations", judged.runs.len(), ops.len());
            for (a, b) in &doubles {
                println!(
                    "VIOLATION (invariant 1): {} on {} and {} at once: {a:?} / {b:?}",
                    a.service, a.node, b.node
                );
            }
            for problem in &judged.problems {
                println!("VIOLATION (checker): {problem}");
            }
            if doubles.is_empty() && judged.problems.is_empty() {
                println!("OK: no service ran twice and every run's end is credible");
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Cleanup => {
            let removed = netns::cleanup(netns::PREFIX);
            println!(
                "removed {} namespace(s){}",
                removed.len(),
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", removed.join(" "))
                }
            );
            ExitCode::SUCCESS
        }
    }
}
