//! `quorate deploy` in the fault lab: three namespace nodes, each with a Nix store of
//! its own mounted on `/nix` (nix-bin, no daemon), and trivial system generations
//! built without nixpkgs — a `derivation` whose `bin/switch-to-configuration` records
//! its run in the node's `/nix/var/switches` (and can fail, or be slow) and whose
//! `bin/healthy` is the health check. The witness services keep running throughout
//! and the checker judges the whole test: no double run, nothing acknowledged lost.
//!
//! Shown here: a rollout builds each node's closure from a flake, copies and switches
//! every node, leader last; a generation
//! whose activation fails, and one that fails its health check, are rolled back on
//! the first node and the rollout stops there; `--auto-rollback false` leaves the node
//! drained and `--abort` brings it back; a deploy killed in the middle of a switch is
//! refused until resumed, and `--resume` finishes it; an unreachable node, a store
//! path that is not there and a node not in the spec are refused before anything is
//! switched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use quorate_lab::cluster::{LabCluster, Options};
use quorate_lab::generations::{Generation, NixBuilds};
use quorate_lab::{checker, netns};
use serde_json::Value;

struct Lab {
    cluster: LabCluster,
    nix: NixBuilds,
}

impl Lab {
    fn build(&self, g: &Generation) -> String {
        self.nix.build(g).unwrap()
    }

    fn deploy_command(&self, args: &[&str]) -> Command {
        let dd = self.cluster.data_dir("n1");
        let mut c = Command::new(support::quorate_bin());
        c.args(["deploy", "--json", "--data-dir", dd.to_str().unwrap()])
            .args(["--from-store", &self.nix.store, "--no-check-sigs"])
            .args(["--copy-to", &self.cluster.nix_store_template()])
            .args(["--check", "/nix/var/nix/profiles/system/bin/healthy"])
            .args(["--timeout", "60"])
            .args(args);
        if !args.contains(&"--exec") {
            c.args(["--exec", &self.cluster.exec_template()]);
        }
        self.nix.env(&mut c);
        c
    }

    /// Runs a deploy; its exit code and its JSON events.
    fn deploy(&self, args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
        let out = self.deploy_command(args).output().unwrap();
        parse(&out)
    }

    /// The switches node `name` ran, in order (`NAME ACTION`).
    fn switches(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.cluster.nix_dir(name).join("var/switches"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The generation node `name`'s system profile points to.
    fn profile(&self, name: &str) -> Option<String> {
        let profiles = self.cluster.nix_dir(name).join("var/nix/profiles");
        let link = std::fs::read_link(profiles.join("system")).ok()?;
        let target = std::fs::read_link(profiles.join(link)).ok()?;
        Some(target.to_string_lossy().into_owned())
    }

    fn node_states(&self) -> Vec<(String, String)> {
        let status = self.cluster.status("n1").unwrap_or_default();
        status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or_default().to_owned(),
                    n["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn state_file(&self) -> PathBuf {
        self.cluster.data_dir("n1").join("deploy.json")
    }
}

fn parse(out: &Output) -> (Option<i32>, Vec<Value>, String) {
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (
        out.status.code(),
        events,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

fn error_of(events: &[Value]) -> String {
    events
        .iter()
        .find_map(|e| e["error"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn setup() -> Option<Lab> {
    if let Some(why) = netns::unavailable() {
        support::skip(&format!("network namespaces: {why}"));
        return None;
    }
    let mut cluster = LabCluster::new(Options {
        services: 3,
        nix_stores: true,
        ..Options::new(3, support::quorate_bin(), "qdp")
    })
    .unwrap();
    let nix = match NixBuilds::new(cluster.path()) {
        Ok(nix) => nix,
        Err(why) => {
            support::skip(&why);
            return None;
        }
    };
    cluster.start_all(Duration::from_secs(60)).unwrap();
    Some(Lab { cluster, nix })
}

fn assert_all_active(lab: &Lab) {
    for (node, state) in lab.node_states() {
        assert_eq!(state, "up", "{node} is left {state}");
    }
}

#[test]
fn a_rollout_switches_every_node_and_rolls_back_a_bad_generation() {
    let Some(lab) = setup() else { return };
    let from = checker::mono_ns();
    let names = lab.cluster.names.clone();
    let good = Generation::good;
    // The first generation comes from a flake: one closure per node (v1-n1, …).
    let flake = lab.nix.flake("v1", &names).unwrap();
    let any = lab.build(&good("gen-any"));
    let v2 = lab.build(&good("gen-v2"));
    let mut drains = 0;

    // Bad input first: each refused before anything is copied or switched.
    let missing = "/nix/store/00000000000000000000000000000000-not-built";
    let (code, events, stderr) = lab.deploy(&["--store-path", missing]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(error_of(&events).contains("not valid"), "{events:?}");
    let (code, events, stderr) = lab.deploy(&["--store-path", &any, "--on", "n9"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        error_of(&events).contains("`n9` is not a node"),
        "{events:?}"
    );
    let (code, events, stderr) = lab.deploy(&["--flake", "path:/nonexistent/flake"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        error_of(&events).contains("--flake path:/nonexistent/flake"),
        "{events:?}"
    );
    let unreachable = lab.cluster.exec_template().replace("{node}", "nowhere");
    let (code, events, stderr) = lab.deploy(&["--store-path", &any, "--exec", &unreachable]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(error_of(&events).contains("cannot reach"), "{events:?}");
    for n in &names {
        assert!(lab.switches(n).is_empty(), "{n} switched on bad input");
        assert!(lab.profile(n).is_none());
    }

    // The first rollout: every node, the leader last.
    let leader = lab.cluster.leader().unwrap();
    let (code, events, stderr) = lab.deploy(&["--flake", &flake]);
    assert_eq!(code, Some(0), "{stderr}\n{events:#?}");
    drains += 3;
    let done: Vec<&str> = events_of(&events, "done")
        .iter()
        .map(|e| e["node"].as_str().unwrap())
        .collect();
    assert_eq!(done.len(), 3, "{events:#?}");
    assert_eq!(done[2], leader, "the leader goes last: {done:?}");
    assert_eq!(events_of(&events, "copied").len(), 3, "{events:#?}");
    // Each node's own closure, built from the flake.
    let v1: std::collections::BTreeMap<String, String> = events_of(&events, "done")
        .iter()
        .map(|e| {
            (
                e["node"].as_str().unwrap().to_owned(),
                e["store_path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for n in &names {
        assert!(v1[n].ends_with(&format!("-v1-{n}")), "{v1:?}");
        assert_eq!(lab.switches(n), [format!("v1-{n} switch")], "{n}");
        assert_eq!(lab.profile(n).as_ref(), Some(&v1[n]), "{n}");
    }
    assert_all_active(&lab);
    assert!(
        !lab.state_file().exists(),
        "a finished rollout leaves no state"
    );

    // An activation that fails: the first node goes back to v1, the rollout stops.
    let broken = lab.build(&Generation {
        switch_fails: true,
        ..good("gen-broken")
    });
    let (code, events, stderr) = lab.deploy(&["--store-path", &broken]);
    assert_eq!(code, Some(1), "{stderr}");
    drains += 1;
    let rolled = events_of(&events, "rolled-back");
    assert_eq!(rolled.len(), 1, "{events:#?}");
    let first = rolled[0]["node"].as_str().unwrap().to_owned();
    assert!(
        error_of(&events).contains("activation of gen-broken failed"),
        "{events:#?}"
    );
    assert_eq!(
        lab.switches(&first),
        [
            format!("v1-{first} switch"),
            "gen-broken switch".to_owned(),
            format!("v1-{first} switch")
        ]
    );
    assert_eq!(lab.profile(&first).as_ref(), Some(&v1[&first]));
    for n in names.iter().filter(|n| **n != first) {
        assert_eq!(
            lab.switches(n),
            [format!("v1-{n} switch")],
            "{n} was not touched"
        );
    }
    assert_all_active(&lab);

    // A generation that activates but fails its health check: the same.
    let unhealthy = lab.build(&Generation {
        healthy: false,
        ..good("gen-unhealthy")
    });
    let (code, events, stderr) = lab.deploy(&["--store-path", &unhealthy]);
    assert_eq!(code, Some(1), "{stderr}");
    drains += 1;
    assert!(
        error_of(&events).contains("gen-unhealthy is unhealthy"),
        "{events:#?}"
    );
    let first = events_of(&events, "rolled-back")[0]["node"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(lab.profile(&first).as_ref(), Some(&v1[&first]));
    assert_eq!(
        lab.switches(&first).last().unwrap(),
        &format!("v1-{first} switch")
    );
    assert_all_active(&lab);

    // --auto-rollback false: the node stays drained on the bad generation until
    // --abort takes it back.
    let (code, events, _) = lab.deploy(&["--store-path", &unhealthy, "--auto-rollback", "false"]);
    assert_eq!(code, Some(1));
    drains += 1;
    let stopped = events_of(&events, "stopped")[0]["node"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(lab.profile(&stopped).as_deref(), Some(unhealthy.as_str()));
    assert!(
        lab.node_states()
            .contains(&(stopped.clone(), "draining".to_owned())),
        "{:?}",
        lab.node_states()
    );
    let (code, events, _) = lab.deploy(&["--store-path", &v2]);
    assert_eq!(code, Some(1), "a recorded rollout blocks a new one");
    assert!(error_of(&events).contains("--resume"), "{events:?}");
    let (code, events, stderr) = lab.deploy(&["--abort"]);
    assert_eq!(code, Some(0), "{stderr}\n{events:#?}");
    assert_eq!(lab.profile(&stopped).as_ref(), Some(&v1[&stopped]));
    assert_all_active(&lab);

    // A deploy killed in the middle of a (slow) switch: the node stays drained, a new
    // deploy is refused, --resume finishes the rollout.
    let slow = lab.build(&Generation {
        switch_seconds: 3,
        ..good("gen-v2-slow")
    });
    let mut child = lab
        .deploy_command(&["--store-path", &slow])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let switching = loop {
        let state: Value = std::fs::read(lab.state_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Some(n) = state["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["phase"] == "switching")
        {
            break n["node"].as_str().unwrap().to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "never switching"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    drains += 3;
    assert!(lab
        .node_states()
        .contains(&(switching.clone(), "draining".to_owned())));
    let (code, events, _) = lab.deploy(&["--store-path", &v2]);
    assert_eq!(code, Some(1));
    assert!(
        error_of(&events).contains(&format!("at {switching}")),
        "{events:?}"
    );
    let (code, events, stderr) = lab.deploy(&["--resume"]);
    assert_eq!(code, Some(0), "{stderr}\n{events:#?}");
    for n in &names {
        assert_eq!(lab.profile(n).as_deref(), Some(slow.as_str()), "{n}");
    }
    assert_all_active(&lab);
    assert!(!lab.state_file().exists());

    // The services ran throughout: never twice, nothing acknowledged lost, and each
    // was down only for the moves the drains made.
    let verdict = lab.cluster.verdict(from);
    assert!(
        verdict.ok(),
        "{}",
        serde_json::to_string_pretty(&verdict).unwrap()
    );
    for (service, d) in &verdict.downtime {
        assert!(
            d.gaps <= drains,
            "{service} was down {} times in {drains} drains: {d:?}",
            d.gaps
        );
    }
}
