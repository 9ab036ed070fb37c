//! Agents run by a real systemd, as the NixOS module runs them: one systemd container
//! per node, inside that node's network namespace, each with a `quorate.service` whose
//! settings mirror nix/module.nix (nix_module.rs checks the module sets them). A
//! restart, a stop, a SIGKILL of the agent alone and a watchdog abort — while a
//! unit-kind and a process-kind service run there — must never leave a workload
//! running unfenced; the independent checker judges the witness journal.
//!
//! The same scenario with systemd's default `KillMode=control-group` shows why the
//! module sets `KillMode=process`: a `systemctl stop` (with a short TimeoutStopSec) then
//! kills the fence with the agent while the unit workload lives on, and the checker
//! sees it run twice.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../systemd/tests/support/container.rs"]
mod container;
mod support;

use std::time::Duration;

use container::SystemdContainer;
use quorate_lab::netns::{self, Network as NetLab};
use support::{quorate_bin, TestCluster};

/// The agent's unit: what nix/module.nix sets that matters here, with test paths.
fn agent_unit(c: &TestCluster, node: &str, kill_mode: &str, stop_timeout: &str) -> String {
    let dir = c.path().display();
    format!(
        "[Unit]\nDescription=quorate agent {node}\n\n[Service]\nType=notify\nNotifyAccess=main\n\
         ExecStart={bin} agent --spec {dir}/quorate.toml --node {node} --data-dir {dd}\n\
         WorkingDirectory={dir}\nEnvironment=QUORATE_WITNESS_JOURNAL={journal} QUORATE_LOG=info\n\
         Restart=always\nRestartSec=1s\nKillMode={kill_mode}\nDelegate=yes\nWatchdogSec=2s\n\
         TimeoutAbortSec=2s\nTimeoutStopSec={stop_timeout}\nStandardError=append:{dir}/{node}.log\n",
        bin = quorate_bin(),
        dd = c.data_dir(node).display(),
        journal = c.journal().display(),
    )
}

/// `quorate-apply.service` as nix/module.nix writes it: its very script (read from the
/// module), with this cluster's paths for the package and /etc/quorate.
fn apply_unit(c: &TestCluster, node: &str) -> String {
    let module = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nix/module.nix"),
    )
    .unwrap();
    let unit = &module[module.find("systemd.services.quorate-apply").unwrap()..];
    let body = &unit[unit.find("script = ''").unwrap() + "script = ''".len()..];
    let body = &body[..body.find("'';").unwrap()];
    let dir = c.path().display().to_string();
    let script = body
        .replace("${cfg.package}/bin/quorate", quorate_bin())
        .replace("/etc/quorate/cluster.json", &format!("{dir}/quorate.toml"))
        .replace("/etc/quorate/quorate.lock", &format!("{dir}/quorate.lock"));
    assert!(
        !script.contains("${"),
        "unsubstituted Nix in the apply script: {script}"
    );
    let path = c.path().join(format!("apply-{node}.sh"));
    std::fs::write(&path, format!("set -e\n{script}")).unwrap();
    format!(
        "[Unit]\nDescription=Apply the spec\nAfter=quorate.service\nRequires=quorate.service\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nEnvironment=QUORATE_DATA_DIR={dd}\nExecStart=/bin/sh {script}\nStandardOutput=append:{dir}/apply-{node}.log\nStandardError=append:{dir}/apply-{node}.log\n",
        dd = c.data_dir(node).display(),
        script = path.display(),
    )
}

fn witness_unit(node: &str, journal: &str) -> String {
    format!(
        "[Service]\nExecStart={} demo\nEnvironment=QUORATE_NODE={node} QUORATE_SERVICE=web QUORATE_WITNESS_JOURNAL={journal}\n",
        quorate_bin()
    )
}

struct Rig {
    // Dropped first: powers every node off (agents, fences, workloads).
    cluster: TestCluster,
    nodes: Vec<(String, SystemdContainer)>,
    _lab: NetLab,
}

fn rig(prefix: &str, kill_mode: &str, stop_timeout: &str) -> Option<Rig> {
    if let Some(why) = netns::unavailable() {
        support::skip(&format!("network namespaces unavailable: {why}"));
        return None;
    }
    if let Some(why) = container::unavailable() {
        support::skip(&format!("cannot boot systemd containers: {why}"));
        return None;
    }
    let lab = NetLab::new(prefix, 3).unwrap();
    let services = format!(
        "\n[services.web]\nkind = \"systemd\"\nunit = \"quorate-witness.service\"\nprefer = [\"n1\"]\n\n[services.proc]\nkind = \"process\"\ncommand = [{:?}, \"demo\"]\nstop_timeout = \"2s\"\nprefer = [\"n1\"]\n",
        quorate_bin()
    );
    let cluster = TestCluster::in_netns(&lab, &services);
    let journal = cluster.journal().to_str().unwrap().to_owned();
    let bin_dir = std::path::Path::new(quorate_bin())
        .parent()
        .unwrap()
        .to_owned();
    let nodes: Vec<(String, SystemdContainer)> = cluster
        .names
        .iter()
        .zip(lab.nodes.iter())
        .map(|(n, ns)| {
            let units = [
                (
                    "quorate.service",
                    agent_unit(&cluster, n, kill_mode, stop_timeout),
                ),
                ("quorate-witness.service", witness_unit(n, &journal)),
                ("quorate-apply.service", apply_unit(&cluster, n)),
            ];
            let ct = SystemdContainer::boot_in(&units, &[cluster.path(), &bin_dir], Some(ns));
            (n.clone(), ct)
        })
        .collect();
    for (_, ct) in &nodes {
        let out = ct.systemctl(&["start", "--no-block", "quorate.service"]);
        assert!(out.status.success(), "{out:?}");
    }
    let rig = Rig {
        cluster,
        nodes,
        _lab: lab,
    };
    rig.cluster.wait_agreed(&["n1", "n2", "n3"], 1);
    for service in ["web", "proc"] {
        rig.cluster
            .wait_for(&format!("{service} on n1"), Duration::from_secs(40), || {
                rig.cluster.service("n2", service) == (Some("n1".into()), "running".into())
            });
    }
    Some(rig)
}

impl Rig {
    fn systemctl(&self, node: &str, args: &[&str]) {
        let ct = &self.nodes.iter().find(|(n, _)| n == node).unwrap().1;
        let out = ct.systemctl(args);
        assert!(
            out.status.success(),
            "systemctl {args:?} on {node}: {out:?}"
        );
    }

    /// The agent's MainPID, in the container's pid namespace.
    fn main_pid(&self, node: &str) -> u32 {
        let ct = &self.nodes.iter().find(|(n, _)| n == node).unwrap().1;
        let out = ct.systemctl(&["show", "-p", "MainPID", "--value", "quorate.service"]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// The number of runs (start records) of `service` on `node`.
    fn runs_on(&self, service: &str, node: &str) -> usize {
        support::witness::runs(&self.cluster.journal())
            .iter()
            .filter(|r| r.service == service && r.node == node)
            .count()
    }

    fn settle_and_judge(&self, what: &str, version: u64) {
        self.cluster.wait_agreed(&["n1", "n2", "n3"], version);
        std::thread::sleep(Duration::from_secs(3));
        let bad = self.cluster.violations();
        assert!(
            bad.is_empty(),
            "after {what}: {}\n--- n1.log\n{}",
            bad.join("\n"),
            self.cluster.log("n1")
        );
    }
}

#[test]
fn restart_stop_kill_and_watchdog_abort_of_a_systemd_run_agent_never_run_twice() {
    let Some(rig) = rig("qtsd", "process", "30s") else {
        return;
    };
    // A restart (as a package upgrade does): the fence and both workloads stay, the
    // new agent adopts them — no restart of either service.
    rig.systemctl("n1", &["restart", "quorate.service"]);
    rig.settle_and_judge("systemctl restart", 1);
    for service in ["web", "proc"] {
        assert_eq!(rig.runs_on(service, "n1"), 1, "{service} was not restarted");
        assert_eq!(rig.cluster.service("n2", service).0.as_deref(), Some("n1"));
    }
    assert!(
        rig.cluster.log("n1").contains("adopted a workload"),
        "{}",
        rig.cluster.log("n1")
    );

    // SIGKILL of the agent alone; systemd restarts it a second later.
    rig.systemctl(
        "n1",
        &["kill", "--kill-whom=main", "-s", "KILL", "quorate.service"],
    );
    rig.settle_and_judge("systemctl kill --kill-whom=main -s KILL", 1);

    // A stop: nobody renews the lease, the fence kills both at the deadline and the
    // cluster runs them elsewhere.
    let host = rig.cluster.service("n2", "web").0.unwrap();
    let ask = if host == "n2" { "n3" } else { "n2" };
    rig.systemctl(&host, &["stop", "quorate.service"]);
    rig.cluster.wait_running_elsewhere(ask, "web", Some(&host));
    rig.cluster.wait_running_elsewhere(ask, "proc", Some(&host));
    rig.systemctl(&host, &["start", "quorate.service"]);
    rig.settle_and_judge("systemctl stop", 1);

    // A hung agent: SIGSTOP, the watchdog aborts it (SIGABRT, then SIGKILL), systemd
    // restarts it; meanwhile its fence has killed what it ran.
    let host = rig.cluster.service(ask, "web").0.unwrap();
    let ask = ["n1", "n2", "n3"].into_iter().find(|n| *n != host).unwrap();
    // (MainPID is a pid of the container's namespace: signal it through systemd.)
    let pid = rig.main_pid(&host);
    rig.systemctl(
        &host,
        &["kill", "--kill-whom=main", "-s", "STOP", "quorate.service"],
    );
    // Its fence kills web at the deadline; web then runs elsewhere, or back on the
    // same node when the restarted agent renews its lease first (the host may also
    // have been the leader, whose successor waits out the old leases): either way,
    // never twice.
    rig.cluster.wait_for(
        "the watchdog to replace the hung agent",
        Duration::from_secs(30),
        || {
            let now = rig.main_pid(&host);
            now != 0 && now != pid
        },
    );
    rig.cluster.wait_running_elsewhere(ask, "web", None);
    rig.settle_and_judge("a watchdog abort", 1);
}

#[test]
fn with_kill_mode_control_group_a_stop_kills_the_fence_and_the_checker_sees_the_double_run() {
    // The fence blocks SIGTERM, so systemd's SIGKILL after TimeoutStopSec is what ends
    // it with the agent's cgroup: short here (as an operator might set it), before the
    // fence's deadline.
    let Some(rig) = rig("qtsc", "control-group", "300ms") else {
        return;
    };
    rig.systemctl("n1", &["stop", "quorate.service"]);
    rig.cluster.wait_running_elsewhere("n2", "web", Some("n1"));
    std::thread::sleep(Duration::from_millis(500));
    let bad = rig.cluster.violations();
    assert!(
        bad.iter().any(|v| v.starts_with("web ran twice")),
        "the unfenced unit must show as a double run: {bad:?}"
    );
}

/// Issue 16, item 1: `nixos-rebuild switch` with a changed spec. The module restarts
/// only `quorate-apply.service` (its restartTriggers), never the agent; on every node
/// that unit applies the new spec to the running cluster: committed once, the same
/// spec a no-op on the others, the agents and their workloads untouched. A change
/// quorate refuses fails the unit with quorate's message, and changes nothing.
#[test]
fn a_spec_change_through_the_activation_unit_applies_without_a_bounce() {
    let Some(rig) = rig("qtsa", "process", "30s") else {
        return;
    };
    let pids: Vec<u32> = ["n1", "n2", "n3"].iter().map(|n| rig.main_pid(n)).collect();
    rig.cluster
        .edit_spec(&TestCluster::demo_service("extra", "prefer = [\"n2\"]"));
    for node in ["n1", "n2", "n3"] {
        rig.systemctl(node, &["restart", "quorate-apply.service"]);
    }
    rig.cluster.wait_agreed(&["n1", "n2", "n3"], 2);
    rig.cluster
        .wait_for("extra on n2", Duration::from_secs(30), || {
            rig.cluster.service("n1", "extra") == (Some("n2".into()), "running".into())
        });
    let after: Vec<u32> = ["n1", "n2", "n3"].iter().map(|n| rig.main_pid(n)).collect();
    assert_eq!(pids, after, "an agent was restarted by the spec change");
    for service in ["web", "proc"] {
        assert_eq!(rig.runs_on(service, "n1"), 1, "{service} was bounced");
    }
    let logs: String = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(rig.cluster.path().join(format!("apply-{n}.log")))
                .unwrap_or_default()
        })
        .collect();
    assert!(
        logs.contains("unchanged") || logs.contains("no change"),
        "{logs}"
    );

    // A refused change (a service preferring a node that does not exist) fails the
    // unit with quorate's message and exit status, and the cluster stays at version 2.
    let spec_path = rig.cluster.path().join("quorate.toml");
    let spec = std::fs::read_to_string(&spec_path).unwrap();
    std::fs::write(
        &spec_path,
        spec.replace("prefer = [\"n2\"]", "prefer = [\"n9\"]"),
    )
    .unwrap();
    let ct = &rig.nodes.iter().find(|(n, _)| n == "n1").unwrap().1;
    let out = ct.systemctl(&["restart", "quorate-apply.service"]);
    assert!(!out.status.success(), "a refused change must fail the unit");
    let status = ct.systemctl(&[
        "show",
        "-p",
        "ExecMainStatus",
        "--value",
        "quorate-apply.service",
    ]);
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "1");
    let log = std::fs::read_to_string(rig.cluster.path().join("apply-n1.log")).unwrap();
    assert!(log.contains("n9"), "{log}");
    std::fs::write(&spec_path, spec).unwrap();
    let (_, s) = rig.cluster.status("n2", false);
    assert_eq!(s["spec_version"], 2, "{s}");
    rig.settle_and_judge("a spec change through the activation unit", 2);
}
