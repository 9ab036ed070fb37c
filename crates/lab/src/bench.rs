//! `quorate-lab bench failover`: per fault kind, the time from the fault to the
//! service's `start` record on another node (the witness writes it as it starts
//! serving), plus cold formation and planned move. Medians, p90 and max over runs.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::checker::mono_ns;
use crate::cluster::{LabCluster, Options};

/// Median, p90 and max of a sample, in ms.
#[must_use]
pub fn stats(mut ms: Vec<f64>) -> Value {
    if ms.is_empty() {
        return Value::Null;
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        // Nearest-rank percentile.
        let rank = (q * ms.len() as f64).ceil().max(1.0) as usize;
        ms[rank.min(ms.len()) - 1]
    };
    json!({"runs": ms.len(), "median": at(0.5), "p90": at(0.9), "max": ms[ms.len() - 1]})
}

const SERVICE: &str = "s1";
const LIMIT: Duration = Duration::from_secs(30);

/// Puts the service on the leader (`on_leader`) or on a follower, then clears the pin
/// so that it stays there as any placed service does. Returns (host, leader).
fn place_for(
    cluster: &LabCluster,
    service: &str,
    on_leader: bool,
) -> Result<(String, String), String> {
    let leader = cluster.leader().ok_or("no leader")?;
    let host = cluster
        .host_of(service)
        .ok_or(format!("{service} does not run"))?;
    if (host == leader) == on_leader {
        return Ok((host, leader));
    }
    let target = if on_leader {
        leader.clone()
    } else {
        cluster
            .names
            .iter()
            .find(|n| **n != leader)
            .cloned()
            .ok_or("no follower")?
    };
    if !cluster.move_service(service, Some(&target)) {
        return Err("move refused".into());
    }
    let t0 = Instant::now();
    while cluster.host_of(service).as_deref() != Some(target.as_str()) {
        if t0.elapsed() > LIMIT {
            return Err(format!("{service} did not reach {target}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.move_service(service, None);
    Ok((target, leader))
}

/// The longest random pause before a fault: ten heartbeat intervals and two lease
/// renewal periods at the default timings.
const PHASE_SPREAD_MS: u64 = 1000;

fn measure_failover(
    cluster: &mut LabCluster,
    service: &str,
    power_loss: bool,
    on_leader: bool,
    rng: &mut fastrand::Rng,
) -> Result<f64, String> {
    cluster.wait_healthy(LIMIT)?;
    let (host, _) = place_for(cluster, service, on_leader)?;
    cluster.wait_healthy(LIMIT)?;
    // A fault strikes at any moment of the cluster's heartbeat and renewal cycles,
    // not right after a status query: on the leader, `status` sends a heartbeat round
    // of its own, so a fault injected at once would always hit the leader just after
    // the voters heard from it (the worst phase for the lease handover).
    std::thread::sleep(Duration::from_millis(rng.u64(0..PHASE_SPREAD_MS)));
    let t0 = mono_ns();
    if power_loss {
        cluster.poweroff(&host)?;
    } else {
        cluster.link(&host, false)?;
    }
    let started = Instant::now();
    let result = loop {
        if let Some((t, _)) = cluster.started_elsewhere(service, &host, t0) {
            break Ok((t - t0) as f64 / 1e6);
        }
        if started.elapsed() > LIMIT {
            break Err(format!(
                "{service} did not start elsewhere within {LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if power_loss {
        cluster.power_on(&host)?;
    } else {
        cluster.link(&host, true)?;
    }
    cluster.wait_healthy(LIMIT)?;
    result
}

fn measure_move(cluster: &LabCluster) -> Result<f64, String> {
    cluster.wait_healthy(LIMIT)?;
    let host = cluster.host_of(SERVICE).ok_or("s1 does not run")?;
    let target = cluster
        .names
        .iter()
        .find(|n| **n != host)
        .cloned()
        .ok_or("no other node")?;
    let t0 = mono_ns();
    if !cluster.move_service(SERVICE, Some(&target)) {
        return Err("move refused".into());
    }
    let started = Instant::now();
    loop {
        if let Some((t, node)) = cluster.started_elsewhere(SERVICE, &host, t0) {
            if node == target {
                cluster.move_service(SERVICE, None);
                return Ok((t - t0) as f64 / 1e6);
            }
        }
        if started.elapsed() > LIMIT {
            return Err(format!("s1 did not reach {target}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the failover benchmark: `runs` of each measurement on a 3-node lab.
///
/// # Errors
/// The lab cannot be made or a measurement times out.
pub fn failover(
    options: &Options,
    runs: usize,
    seed: u64,
    mut say: impl FnMut(&str),
) -> Result<Value, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut formation = Vec::new();
    for _ in 0..runs.min(5) {
        let mut cluster = LabCluster::new(options.clone())?;
        formation.push(cluster.start_all(LIMIT)?.as_secs_f64() * 1000.0);
    }
    say(&format!("formation: {}", stats(formation.clone())));
    let mut cluster = LabCluster::new(options.clone())?;
    cluster.start_all(LIMIT)?;
    let from = mono_ns();
    let mut results = serde_json::Map::new();
    for (name, power_loss, on_leader) in [
        ("power-loss/non-leader host", true, false),
        ("power-loss/leader host", true, true),
        ("isolation/non-leader host", false, false),
        ("isolation/leader host", false, true),
    ] {
        let mut sample = Vec::new();
        for _ in 0..runs {
            sample.push(measure_failover(
                &mut cluster,
                SERVICE,
                power_loss,
                on_leader,
                &mut rng,
            )?);
        }
        let s = stats(sample);
        say(&format!("{name}: {s}"));
        results.insert(name.to_owned(), s);
    }
    let mut moves = Vec::new();
    for _ in 0..runs {
        moves.push(measure_move(&cluster)?);
    }
    say(&format!("planned move: {}", stats(moves.clone())));
    // Fast only counts if it was safe: the checker judges every run of the bench.
    let verdict = cluster.verdict(from);
    if !verdict.ok() {
        return Err(format!(
            "the checker found violations during the bench: {}",
            serde_json::to_string(&verdict).unwrap_or_default()
        ));
    }
    Ok(json!({
        "bench": "lab failover",
        "nodes": options.nodes,
        "voters": options.voters.unwrap_or(options.nodes),
        "seed": seed,
        "note": "ms from the fault (CLOCK_BOOTTIME, struck after a seeded random pause of up to 1 s) to the witness's `start` record on another node; default timings (heartbeat 100ms, election 1s, lease 1.5s + 500ms drift margin) unless `spec_extra` sets others",
        "spec_extra": options.extra_spec,
        "formation_ms": stats(formation),
        "failover_ms": results,
        "planned_move_ms": stats(moves),
        "checker": {"runs": verdict.runs, "double_runs": verdict.double_runs.len(), "lost_operations": verdict.lost_operations.len()},
        "targets": {"non-leader median ms": 1900, "leader median ms": 2000},
    }))
}

/// Resident memory of a process, MiB (`VmRSS`).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// CPU time of every thread of a process so far, ns (`/proc/<pid>/task/*/schedstat`).
fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// `quorate-lab bench scale`: cold formation, each idle agent's RSS, the leader's
/// CPU while idle (lease renewals of every node and heartbeats), and `status`
/// latency, on one cluster of `options.nodes`.
///
/// # Errors
/// The lab cannot be made or does not form.
pub fn scale(
    options: &Options,
    idle: Duration,
    mut say: impl FnMut(&str),
) -> Result<Value, String> {
    let mut cluster = LabCluster::new(options.clone())?;
    let formed = cluster.start_all(Duration::from_secs(120))?;
    say(&format!("formed in {formed:?}"));
    // Settled: every node has renewed many times, the first status calls are done.
    std::thread::sleep(Duration::from_secs(5));
    let leader = cluster.leader().ok_or("no leader")?;
    let leader_pid = cluster
        .pid(&leader)
        .ok_or("the leader's agent is not running")?;
    let (cpu0, t0) = (
        cpu_ns(leader_pid).ok_or("cannot read the leader's CPU time")?,
        Instant::now(),
    );
    std::thread::sleep(idle);
    let cpu1 = cpu_ns(leader_pid).ok_or("cannot read the leader's CPU time")?;
    let leader_cpu = (cpu1 - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
    say(&format!(
        "leader {leader}: {leader_cpu:.2} % of one core while idle"
    ));
    let mut rss = Vec::new();
    let mut follower_cpu = Vec::new();
    for name in &cluster.names {
        if let Some(pid) = cluster.pid(name) {
            rss.extend(rss_mib(pid));
            if *name != leader {
                follower_cpu.extend(cpu_ns(pid));
            }
        }
    }
    let mut status = Vec::new();
    for i in 0..20 {
        let via = &cluster.names[i % cluster.names.len()];
        let t = Instant::now();
        if cluster.status(via).is_some() {
            status.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(json!({
        "bench": "lab scale",
        "nodes": options.nodes,
        "voters": options.voters.unwrap_or(options.nodes),
        "services": options.services,
        "formation_ms": formed.as_secs_f64() * 1000.0,
        "leader_cpu_percent_of_one_core": leader_cpu,
        "idle_seconds": idle.as_secs(),
        "rss_mib": stats(rss),
        "status_ms": stats(status),
        "targets": {"leader cpu %": 5, "rss mib": 30},
    }))
}

/// The benchmark's result as a markdown table.
#[must_use]
pub fn markdown(result: &Value) -> String {
    let row = |name: &str, s: &Value| {
        format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {} |\n",
            s["median"].as_f64().unwrap_or(f64::NAN),
            s["p90"].as_f64().unwrap_or(f64::NAN),
            s["max"].as_f64().unwrap_or(f64::NAN),
            s["runs"]
        )
    };
    let mut out = String::from(
        "| measurement | median ms | p90 ms | max ms | runs |\n|---|---|---|---|---|\n",
    );
    out.push_str(&row(
        "cold formation (quorum + every service running)",
        &result["formation_ms"],
    ));
    if let Some(map) = result["failover_ms"].as_object() {
        for (name, s) in map {
            out.push_str(&row(&format!("failover after {name}"), s));
        }
    }
    out.push_str(&row("planned move", &result["planned_move_ms"]));
    out
}

/// Busy CPU time of the whole machine so far (every core: user, nice, system, irq,
/// softirq, steal), in seconds.
fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    Some((total - idle) as f64 / ticks as f64)
}

/// A process killed when dropped (the iperf3 server).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `quorate-lab bench mesh`: node-to-node TCP throughput (iperf3) and the whole
/// machine's CPU per GB moved, over the underlay directly and through the WireGuard
/// mesh (wireguard-go, as the lab has no kernel WireGuard), between two namespaces.
///
/// # Errors
/// The lab cannot be made, iperf3 is missing, or a run fails.
pub fn mesh(
    options: &Options,
    runs: usize,
    seconds: u32,
    mut say: impl FnMut(&str),
) -> Result<Value, String> {
    let mut options = options.clone();
    options.nodes = options.nodes.max(2);
    options.services = 0;
    options.wireguard = true;
    let cluster = LabCluster::new(options)?;
    for name in cluster.names.clone() {
        cluster.mesh_up(&name)?;
    }
    let lock: Value = std::fs::read_to_string(cluster.path().join("quorate.lock"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or("cannot read the lab's lock")?;
    let overlay = lock["nodes"]["n2"]["overlay_ip"]
        .as_str()
        .ok_or("the lock has no overlay address for n2")?
        .to_owned();
    let _server = Killed(
        cluster
            .on_node("n2")
            .args(["iperf3", "-s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run iperf3 (apt-get install iperf3): {e}"))?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut results = serde_json::Map::new();
    for (path, address) in [
        ("direct", crate::netns::Network::address(2)),
        ("wireguard", overlay),
    ] {
        let (mut gbits, mut cpu_per_gb) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let busy0 = machine_busy_s().ok_or("cannot read /proc/stat")?;
            let out = cluster
                .on_node("n1")
                .args(["iperf3", "-c", &address, "-t", &seconds.to_string(), "-J"])
                .output()
                .map_err(|e| e.to_string())?;
            let busy1 = machine_busy_s().ok_or("cannot read /proc/stat")?;
            let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
                format!(
                    "iperf3 said no JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
            let received = &report["end"]["sum_received"];
            let (bps, bytes) = (
                received["bits_per_second"]
                    .as_f64()
                    .ok_or_else(|| format!("iperf3 over {path}: {report}"))?,
                received["bytes"].as_f64().unwrap_or(0.0),
            );
            gbits.push(bps / 1e9);
            cpu_per_gb.push((busy1 - busy0) / (bytes / 1e9).max(1e-9));
        }
        let entry = json!({
            "throughput_gbit_s": stats(gbits),
            "cpu_seconds_per_gb": stats(cpu_per_gb),
        });
        say(&format!("{path}: {entry}"));
        results.insert(path.to_owned(), entry);
    }
    Ok(json!({
        "bench": "lab mesh",
        "note": "iperf3 TCP n1 -> n2 between two namespaces; cpu = the whole machine's busy time (iperf3 both ends, wireguard-go, kernel) per GB received",
        "seconds_per_run": seconds,
        "results": results,
    }))
}

/// `quorate-lab bench deploy`: the wall time of a 3-node `quorate deploy` (parallel
/// copy, then drain → switch → rejoin → check → undrain per node) against a naive
/// serial deploy (per node: `nix copy`, then switch; no drain), and the copy
/// throughput of each, on nodes with stores of their own (`Options::nix_stores`).
/// Every run deploys fresh generations with `payload_mib` random MiB, so every copy
/// moves them.
///
/// # Errors
/// The lab cannot be made, Nix is missing, or a deploy fails.
pub fn deploy(
    options: &Options,
    runs: usize,
    payload_mib: u32,
    mut say: impl FnMut(&str),
) -> Result<Value, String> {
    use crate::generations::{Generation, NixBuilds};
    let mut options = options.clone();
    options.nix_stores = true;
    options.services = options.services.max(1);
    let mut cluster = LabCluster::new(options.clone())?;
    let nix = NixBuilds::new(cluster.path())?;
    cluster.start_all(Duration::from_secs(60))?;
    cluster.wait_healthy(LIMIT)?;
    let exec = cluster.exec_template();
    let copy_to = cluster.nix_store_template();
    let generation = |name: String| Generation {
        payload_mib,
        ..Generation::good(&name)
    };
    let bytes = u64::from(payload_mib) * 1_048_576 * cluster.names.len() as u64;
    let (mut q_total, mut q_copy, mut q_tput) = (Vec::new(), Vec::new(), Vec::new());
    let (mut n_total, mut n_copy, mut n_tput) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        // quorate deploy
        let path = nix.build(&generation(format!("bench-{run}-quorate")))?;
        let data_dir = cluster.data_dir("n1");
        let mut c = std::process::Command::new(&options.quorate);
        c.args(["deploy", "--json", "--no-check-sigs", "--timeout", "120"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--from-store", &nix.store, "--store-path", &path])
            .args(["--exec", &exec, "--copy-to", &copy_to])
            .args(["--check", "/nix/var/nix/profiles/system/bin/healthy"]);
        nix.env(&mut c);
        let start = Instant::now();
        let out = c.output().map_err(|e| e.to_string())?;
        let total = start.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!(
                "quorate deploy failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let copy = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == "copied")
            .filter_map(|e| e["seconds"].as_f64())
            .fold(0.0, f64::max);
        say(&format!(
            "run {run}: quorate deploy {total:.2} s (copy {copy:.2} s)"
        ));
        q_total.push(total * 1000.0);
        q_copy.push(copy * 1000.0);
        q_tput.push(bytes as f64 / 1_048_576.0 / copy.max(1e-6));

        // naive: node by node, copy then switch
        let path = nix.build(&generation(format!("bench-{run}-naive")))?;
        let start = Instant::now();
        let mut copying = 0.0;
        for name in &cluster.names {
            let t = Instant::now();
            let mut c = std::process::Command::new("nix");
            c.args(["--extra-experimental-features", "nix-command", "copy"])
                .args(["--no-check-sigs", "--from", &nix.store])
                .args(["--to", &copy_to.replace("{node}", name), &path]);
            let out = nix.env(&mut c).output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "nix copy: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            copying += t.elapsed().as_secs_f64();
            let prefix = exec.replace("{node}", name);
            let mut words = prefix.split_whitespace();
            let mut c = std::process::Command::new(words.next().unwrap_or("nsenter"));
            c.args(words).args([
                "sh",
                "-ec",
                &format!("nix-env -p /nix/var/nix/profiles/system --set {path} && {path}/bin/switch-to-configuration switch"),
            ]);
            let out = nix.env(&mut c).output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("switch: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        let total = start.elapsed().as_secs_f64();
        say(&format!(
            "run {run}: naive serial {total:.2} s (copy {copying:.2} s)"
        ));
        n_total.push(total * 1000.0);
        n_copy.push(copying * 1000.0);
        n_tput.push(bytes as f64 / 1_048_576.0 / copying.max(1e-6));
    }
    Ok(json!({
        "bench": "lab deploy",
        "nodes": cluster.names.len(),
        "services": options.services,
        "payload_mib_per_node": payload_mib,
        "note": "quorate deploy: parallel copy, then per node drain, switch, rejoin (>= 1 s of readings), health check, undrain, services running again; naive: per node nix copy then switch, no drain (services are never moved, and a real switch could restart them in place). Copies are store to store on one disk (local chroot stores), not over a network.",
        "quorate_deploy": {
            "total_ms": stats(q_total),
            "copy_ms": stats(q_copy),
            "copy_mib_s": stats(q_tput),
        },
        "naive_serial": {
            "total_ms": stats(n_total),
            "copy_ms": stats(n_copy),
            "copy_mib_s": stats(n_tput),
        },
    }))
}

/// `quorate-lab bench ceph`: failover on power loss of a non-leader host, for a
/// witness whose data is on a Ceph RBD image (`c1`: blocklisting, then map, mount
/// with journal replay, start) and for a process-only witness (`s1`), on a lab with a
/// real Ceph (memstore OSDs).
///
/// # Errors
/// The lab or Ceph cannot be made, or a measurement times out.
pub fn ceph(
    options: &Options,
    runs: usize,
    seed: u64,
    mut say: impl FnMut(&str),
) -> Result<Value, String> {
    let mut options = options.clone();
    options.ceph = true;
    options.services = 1;
    options.extra_spec = format!(
        "\n[storage.data]\nkind = \"ceph-rbd\"\nsize = \"64MiB\"\nmount = \"@DIR@/data\"\nceph_config = \"@CEPH@/ceph.conf\"\nceph_keyring = \"@CEPH@/keyring/ceph.client.quorate.keyring\"\n\n[services.c1]\nkind = \"process\"\ncommand = [{:?}, \"demo\", \"--witness-as\", \"c1\"]\nstorage = [\"data\"]\nstop_timeout = \"2s\"\n",
        options.quorate.display().to_string()
    );
    let mut cluster = LabCluster::new(options)?;
    cluster.start_all(Duration::from_secs(120))?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut results = serde_json::Map::new();
    for service in ["s1", "c1"] {
        let mut sample = Vec::new();
        for run in 0..runs {
            let ms = measure_failover(&mut cluster, service, true, false, &mut rng)?;
            say(&format!("{service} run {run}: {ms:.0} ms"));
            sample.push(ms);
        }
        let s = stats(sample);
        say(&format!("{service}: {s}"));
        results.insert(
            if service == "c1" {
                "ceph-rbd witness".to_owned()
            } else {
                "process-only witness".to_owned()
            },
            s,
        );
    }
    Ok(json!({
        "bench": "lab ceph",
        "fault": "power loss of a non-leader host",
        "seed": seed,
        "note": "ms from the fault to the witness's start record on another node; the ceph-rbd witness's start comes after the leader blocklisted the old node and the new node mapped (rbd-fuse + loop, this kernel has no rbd module), replayed the ext4 journal and mounted the image",
        "results": results,
    }))
}
