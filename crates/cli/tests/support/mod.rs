//! A local cluster of real `quorate agent` processes on 127.0.0.1…N for tests: its own
//! CA, one data dir per node, every process killed and reaped when the guard drops
//! (also when the test fails).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn quorate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_quorate")
}

/// Processes whose environment holds exactly `var` (`NAME=value`).
pub fn processes_with_env(var: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == var.as_bytes()))
        })
        .collect()
}

/// Environment switch under which a test that would skip fails instead (set by
/// scripts/test.sh when it runs as root, as CI does: there everything is installed).
pub const NO_SKIP: &str = "QUORATE_TEST_NO_SKIP";

/// Says loudly that a test skips, or fails it under [`NO_SKIP`]`=1`.
pub fn skip(why: &str) {
    assert!(
        std::env::var(NO_SKIP).map_or(true, |v| v != "1"),
        "{NO_SKIP}=1 and this test would skip: {why}"
    );
    eprintln!("SKIPPED: {why}");
}

/// True (after saying why) when a Ceph lab cannot run here: no network namespaces,
/// or no Ceph daemons.
pub fn skipped_without_ceph_lab() -> bool {
    if let Some(why) = quorate_lab::netns::unavailable() {
        skip(&format!("the lab needs network namespaces: {why}"));
        return true;
    }
    if let Some(why) = quorate_lab::ceph::unavailable() {
        skip(&why);
        return true;
    }
    false
}

/// A writer workload's shell script: every 0.1 s it appends the next number to
/// `@DIR@/<file>` (continuing after the lines already there), syncs it, and only then
/// records the number in `@DIR@/<ack>` — its acknowledgement, read by [`acks_in`].
pub fn synced_writer(file: &str, ack: &str) -> String {
    format!("i=$(cat @DIR@/{file} 2>/dev/null | wc -l); while :; do i=$((i+1)); echo $i >> @DIR@/{file} && sync @DIR@/{file} && echo $i >> @DIR@/{ack}; sleep 0.1; done")
}

/// The numbers a writer workload recorded in `<dir>/acks` once it had synced them
/// (its acknowledgements), in order.
pub fn acks(dir: &Path) -> Vec<u64> {
    acks_in(dir, "acks")
}

/// The numbers a witness acknowledged in `<dir>/<file>`, in order.
pub fn acks_in(dir: &Path, file: &str) -> Vec<u64> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits until `service` runs on a lab node other than `old`; that node.
pub fn wait_moved(
    cluster: &quorate_lab::cluster::LabCluster,
    service: &str,
    old: &str,
    limit: Duration,
) -> String {
    let mut moved = String::new();
    wait_until(
        &format!("{service} to run on another node"),
        limit,
        || match cluster.host_of(service) {
            Some(n) if n != old => {
                moved = n;
                true
            }
            _ => false,
        },
    );
    moved
}

/// Every acknowledged number is a line of `<lab dir>/<file>` as lab node `node` reads
/// it (through its own mounts).
pub fn assert_acknowledged_in(
    cluster: &quorate_lab::cluster::LabCluster,
    node: &str,
    file: &str,
    acknowledged: &[u64],
) {
    let data = cluster
        .on_node(node)
        .args(["cat", &format!("{}/{file}", cluster.path().display())])
        .output()
        .unwrap();
    assert!(
        data.status.success(),
        "{}",
        String::from_utf8_lossy(&data.stderr)
    );
    let lines: std::collections::BTreeSet<u64> = String::from_utf8_lossy(&data.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost: Vec<&u64> = acknowledged.iter().filter(|a| !lines.contains(a)).collect();
    assert!(lost.is_empty(), "{file}: acknowledged but lost: {lost:?}");
}

/// Polls `done` every 200 ms until it says yes; fails the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A free TCP port on loopback (for `network.port`; each test gets its own).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub mod capture;
pub mod witness;

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub names: Vec<String>,
    agents: BTreeMap<String, Child>,
    /// Extra environment for every agent (and so its fence and workloads).
    pub env: Vec<(String, String)>,
    /// The network namespace each node's agent runs in (none: the host's loopback).
    pub netns: BTreeMap<String, String>,
    /// A node's own spec file (relative to the cluster dir), when it is not
    /// `quorate.toml`: a node whose local file differs from the applied spec.
    pub spec_of: BTreeMap<String, String>,
}

impl TestCluster {
    /// Writes a spec with `n` nodes, locks it, creates a CA and one certificate per node.
    pub fn new(n: usize) -> Self {
        Self::with_services(n, "")
    }

    /// A witness service: `quorate demo` (journal records; HTTP when `port` is given).
    pub fn demo_service(name: &str, extra: &str) -> String {
        format!("\n[services.{name}]\nkind = \"process\"\ncommand = [{:?}, \"demo\"]\nstop_timeout = \"2s\"\n{extra}\n", quorate_bin())
    }

    /// [`demo_service`](Self::demo_service) for each name, with no extra keys.
    pub fn demo_services(names: &[&str]) -> String {
        names.iter().map(|s| Self::demo_service(s, "")).collect()
    }

    /// Like [`new`](Self::new), with `services` (TOML) appended to the spec.
    pub fn with_services(n: usize, services: &str) -> Self {
        let addresses: Vec<String> = (1..=n).map(|i| format!("127.0.0.{i}")).collect();
        Self::build(&addresses, services, free_port())
    }

    /// Nodes n1..nN in the namespaces of `lab` (agents started inside them), at its
    /// addresses.
    pub fn in_netns(lab: &quorate_lab::netns::Network, services: &str) -> Self {
        let addresses: Vec<String> = (1..=lab.nodes.len())
            .map(quorate_lab::netns::Network::address)
            .collect();
        let mut c = Self::build(&addresses, services, 7400);
        c.netns = c
            .names
            .iter()
            .cloned()
            .zip(lab.nodes.iter().cloned())
            .collect();
        c
    }

    fn build(addresses: &[String], services: &str, port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (1..=addresses.len()).map(|i| format!("n{i}")).collect();
        let mut spec = format!("[cluster]\nname = \"test\"\n\n[network]\nport = {port}\n");
        for (name, address) in names.iter().zip(addresses) {
            spec.push_str(&format!("\n[nodes.{name}]\naddress = \"{address}\"\n"));
        }
        spec.push_str(services);
        std::fs::write(dir.path().join("quorate.toml"), spec).unwrap();
        let journal = dir.path().join("journal").to_string_lossy().into_owned();
        let c = Self {
            dir,
            port,
            names,
            agents: BTreeMap::new(),
            env: vec![
                ("QUORATE_WITNESS_JOURNAL".into(), journal),
                // Tests cut a node's traffic through its control socket.
                ("QUORATE_ALLOW_FAULT_INJECTION".into(), "true".into()),
            ],
            netns: BTreeMap::new(),
            spec_of: BTreeMap::new(),
        };
        quorate_lab::cluster::lock_and_certify(
            Path::new(quorate_bin()),
            c.path(),
            "test",
            &c.names,
        )
        .unwrap();
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        quorate_lab::cluster::node_data_dir(self.path(), name)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Runs `quorate ARGS` in the cluster dir.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(quorate_bin())
            .args(args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env_remove("QUORATE_DATA_DIR")
            .env_remove("QUORATE_SOCKET")
            .output()
            .unwrap()
    }

    /// Runs `quorate ARGS` and insists on exit 0.
    pub fn ok(&self, args: &[&str]) -> Output {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "quorate {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// Starts the agent of `name` (log in `<name>.log`).
    pub fn start(&mut self, name: &str) {
        self.start_with(name, &[]);
    }

    /// Starts the node's agent with `extra` environment on top of [`env`](Self::env)
    /// (e.g. the D-Bus address of that node's own systemd).
    pub fn start_with(&mut self, name: &str, extra: &[(String, String)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("{name}.log")))
            .unwrap();
        // In a namespace: `ip netns exec` execs the agent, so the pid stays the agent's.
        let mut command = match self.netns.get(name) {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, quorate_bin()]);
                c
            }
            None => Command::new(quorate_bin()),
        };
        let child = command
            .args([
                "agent",
                "--spec",
                self.spec_of
                    .get(name)
                    .map_or("quorate.toml", String::as_str),
                "--node",
                name,
                "--data-dir",
                self.data_dir(name).to_str().unwrap(),
            ])
            .current_dir(self.path())
            .env("QUORATE_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.insert(name.to_string(), child);
    }

    /// Starts every node's agent and waits until all agree on a leader with quorum at
    /// spec version 1; returns the leader.
    pub fn start_all(&mut self) -> String {
        let names = self.names.clone();
        for n in &names {
            self.start(n);
        }
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        self.wait_agreed(&all, 1)
    }

    /// kill -9 and reap.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.agents.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Power loss: kill -9 of the node's agent, its fence and its workloads together,
    /// and a `poweroff` record in the journal (nothing on that node can log any more).
    pub fn poweroff(&mut self, name: &str) {
        self.kill(name);
        quorate_lab::cluster::kill_fence_and_workloads(&self.data_dir(name));
        // Power loss ends every process of the node, also one that left its process
        // group: all of this cluster's processes that say they belong to the node.
        let on_node = processes_with_env(&format!("QUORATE_NODE={name}"));
        for pid in processes_with_env(&self.marker()) {
            if on_node.contains(&pid) && pid != std::process::id() {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        witness::append(
            &self.journal(),
            &format!("poweroff {} {name} - 0", witness::mono_ns()),
        );
    }

    /// Sends a signal (`-STOP`, `-CONT`, `-TERM`, …) to the node's agent only.
    pub fn signal(&self, name: &str, signal: &str) {
        let pid = self.pid(name).unwrap();
        assert!(Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success());
    }

    pub fn journal(&self) -> PathBuf {
        self.path().join("journal")
    }

    /// The environment entry every process of this cluster carries.
    fn marker(&self) -> String {
        format!(
            "QUORATE_WITNESS_JOURNAL={}",
            self.journal().to_string_lossy()
        )
    }

    /// Every violation the checker finds in the journal (empty: none).
    pub fn violations(&self) -> Vec<String> {
        witness::violations(&self.journal())
    }

    /// Where `service` runs and in what state, as `name`'s status (through the leader) says.
    pub fn service(&self, name: &str, service: &str) -> (Option<String>, String) {
        let (_, r) = self.status(name, false);
        r["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == service))
            .map_or((None, String::new()), |s| {
                (
                    s["node"].as_str().map(String::from),
                    s["state"].as_str().unwrap_or("").to_string(),
                )
            })
    }

    /// Waits until `service` runs on a node other than `not_on`; returns that node.
    pub fn wait_running_elsewhere(&self, ask: &str, service: &str, not_on: Option<&str>) -> String {
        let mut at = String::new();
        self.wait_for(
            &format!("{service} to run (not on {not_on:?})"),
            Duration::from_secs(40),
            || {
                let (node, state) = self.service(ask, service);
                match node {
                    Some(n) if state == "running" && Some(n.as_str()) != not_on => {
                        at = n;
                        true
                    }
                    _ => false,
                }
            },
        );
        at
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.agents.get(name).map(Child::id)
    }

    /// `quorate status --json` against `name`'s agent: (exit code, report).
    pub fn status(&self, name: &str, local: bool) -> (Option<i32>, serde_json::Value) {
        let dd = self.data_dir(name);
        let mut args = vec!["status", "--json", "--data-dir", dd.to_str().unwrap()];
        if local {
            args.push("--local");
        }
        let o = self.run(&args);
        (
            o.status.code(),
            serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Each node's state (`up`, `down`, …) as `ask` reports it; panics when `ask`
    /// gives no report.
    pub fn node_states(&self, ask: &str) -> BTreeMap<String, String> {
        let (_, status) = self.status(ask, false);
        status["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("{ask} gave no node states: {status:#}"))
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or_default().to_string(),
                    n["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Sends `request` to the node's own control socket and returns the reply.
    pub fn control(
        &self,
        name: &str,
        request: &quorate_api::ControlRequest,
    ) -> quorate_api::ControlReply {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(quorate_api::call(
            &self.data_dir(name).join("control.sock"),
            request,
            Duration::from_secs(5),
        ))
        .unwrap()
    }

    /// Waits until `check` holds, polling; panics with `what` after `limit` (a hang guard,
    /// not a performance assertion).
    pub fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let logs: Vec<String> = self
            .names
            .iter()
            .map(|n| format!("--- {n}.log\n{}", self.log(n)))
            .collect();
        panic!(
            "timed out waiting for {what}\n{}\n--- journal\n{}",
            logs.join("\n"),
            std::fs::read_to_string(self.journal()).unwrap_or_default()
        );
    }

    /// Waits until every listed node reports quorum, the same leader and spec version.
    pub fn wait_agreed(&self, nodes: &[&str], version: u64) -> String {
        let mut leader = String::new();
        self.wait_for(
            &format!("{nodes:?} to agree on a leader with quorum at spec version {version}"),
            Duration::from_secs(30),
            || {
                let reports: Vec<serde_json::Value> =
                    nodes.iter().map(|n| self.status(n, false).1).collect();
                let first = &reports[0];
                let ok = reports.iter().all(|r| {
                    r["quorum"] == true
                        && r["leader"] == first["leader"]
                        && r["spec_version"] == version
                        && r["leader"].is_string()
                });
                if ok {
                    leader = first["leader"].as_str().unwrap().to_string();
                }
                ok
            },
        );
        leader
    }

    /// Sets `cluster.fence_command` to `/bin/sh -c SCRIPT` and re-locks the spec.
    pub fn set_fence_command(&self, script: &str) {
        let path = self.path().join("quorate.toml");
        let spec = std::fs::read_to_string(&path).unwrap();
        let with = spec.replacen(
            "name = \"test\"",
            &format!("name = \"test\"\nfence_command = [\"/bin/sh\", \"-c\", {script:?}]"),
            1,
        );
        assert_ne!(
            with, spec,
            "the spec has no `name = \"test\"` to add it after"
        );
        std::fs::write(&path, with).unwrap();
        self.ok(&["lock"]);
    }

    /// Appends text to the spec and re-locks it.
    pub fn edit_spec(&self, append: &str) {
        let path = self.path().join("quorate.toml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(append);
        std::fs::write(&path, text).unwrap();
        self.ok(&["lock"]);
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Power off every node, also one a test added: agents, fences, workloads and
        // their cgroups all go.
        let data_dirs: Vec<String> = std::fs::read_dir(self.path().join("d"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        let names: std::collections::BTreeSet<String> = self
            .names
            .iter()
            .chain(self.agents.keys())
            .chain(&data_dirs)
            .cloned()
            .collect();
        for n in names {
            if let Some(pid) = self.pid(&n) {
                let _ = Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            self.poweroff(&n);
        }
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for n in names {
            self.kill(&n);
        }
        // A workload started in the instant before its agent was killed may not be in
        // workloads.json yet: every process this cluster started carries its journal
        // path in its environment, so none outlives the test.
        for pid in processes_with_env(&self.marker()) {
            if pid != std::process::id() {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}
