//! `quorate simulate`: the examples survive any single node failure, a DRBD service
//! whose replicas are all down is unplaceable, and a live cluster does what the
//! simulation predicted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;

use support::TestCluster;

fn simulate(dir: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["simulate", "--json"];
    all.extend_from_slice(args);
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(&all)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
    )
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_example_survives_any_single_node_failure() {
    for example in ["minimal", "homelab"] {
        let spec = format!("examples/{example}/quorate.toml");
        let text = std::fs::read_to_string(repo().join(&spec)).unwrap();
        let parsed = quorate_spec::check(&text, quorate_spec::Format::Toml)
            .spec
            .unwrap();
        for node in parsed.nodes.keys() {
            let (code, r) = simulate(&repo(), &[&spec, "--fail", node]);
            assert_eq!(code, Some(0), "{example} with {node} failed: {r:#}");
            assert_eq!(
                r["unplaceable"],
                serde_json::json!([]),
                "{example} with {node} failed: {r:#}"
            );
            for (service, p) in r["services"].as_object().unwrap() {
                assert_ne!(
                    p["after"],
                    node.as_str(),
                    "{service} still on the failed {node}"
                );
            }
        }
    }
}

#[test]
fn drbd_replicas_all_down_is_unplaceable() {
    let (code, r) = simulate(
        &repo(),
        &[
            "examples/homelab/quorate.toml",
            "--fail",
            "alpha",
            "--fail",
            "beta",
        ],
    );
    assert_eq!(code, Some(1));
    assert!(
        r["unplaceable"].as_array().unwrap().contains(&"db".into()),
        "{r:#}"
    );
    assert!(
        r["services"]["db"]["reason"]
            .as_str()
            .unwrap()
            .contains("no replica of DRBD `pgdata`"),
        "{r:#}"
    );
    // Bad input: an unknown node.
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args([
            "simulate",
            "examples/homelab/quorate.toml",
            "--fail",
            "delta",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`delta` is not a node"));
}

#[test]
fn the_live_cluster_does_what_the_simulation_predicted() {
    let mut c =
        TestCluster::with_services(3, &TestCluster::demo_services(&["s1", "s2", "s3", "s4"]));
    let leader = c.start_all();
    for s in ["s1", "s2", "s3", "s4"] {
        c.wait_running_elsewhere(&leader, s, None);
    }
    let (_, before) = simulate(c.path(), &["quorate.toml"]);
    for s in ["s1", "s2", "s3", "s4"] {
        assert_eq!(
            c.service(&leader, s).0.as_deref(),
            before["services"][s]["after"].as_str(),
            "initial placement of {s}"
        );
    }
    let victim = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap();
    let (_, predicted) = simulate(c.path(), &["quorate.toml", "--fail", victim]);
    c.poweroff(victim);
    for s in ["s1", "s2", "s3", "s4"] {
        let want = predicted["services"][s]["after"]
            .as_str()
            .unwrap()
            .to_string();
        c.wait_for(
            &format!("{s} on {want} as simulated"),
            std::time::Duration::from_secs(30),
            || {
                let (node, state) = c.service(&leader, s);
                node.as_deref() == Some(want.as_str()) && state == "running"
            },
        );
    }
}

/// `--live` starts from the cluster's real state — here a pin the spec does not know —
/// and the cluster then does what it predicted.
#[test]
fn simulate_live_starts_from_pins_and_placements_and_the_cluster_follows_it() {
    let services = ["s1", "s2", "s3", "s4"];
    let mut c = TestCluster::with_services(3, &TestCluster::demo_services(&services));
    let leader = c.start_all();
    for s in services {
        c.wait_running_elsewhere(&leader, s, None);
    }
    let data_dir = c.data_dir(&leader);
    let data_dir = data_dir.to_str().unwrap();
    // Pin s2 to the leader (a `move`): the live state now differs from the spec's.
    c.ok(&["move", "s2", &leader, "--data-dir", data_dir]);
    c.wait_for(
        "s2 on the leader",
        std::time::Duration::from_secs(20),
        || c.service(&leader, "s2") == (Some(leader.clone()), "running".to_owned()),
    );
    let victim = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap();
    let (code, predicted) = simulate(
        c.path(),
        &["--live", "--data-dir", data_dir, "--fail", victim],
    );
    assert_eq!(code, Some(0), "{predicted}");
    assert_eq!(predicted["live"], true);
    for s in services {
        assert_eq!(
            predicted["services"][s]["before"].as_str(),
            c.service(&leader, s).0.as_deref(),
            "live placement of {s}"
        );
    }
    assert_eq!(
        predicted["services"]["s2"]["after"].as_str(),
        Some(leader.as_str())
    );
    c.poweroff(victim);
    for s in services {
        let want = predicted["services"][s]["after"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(want, victim);
        c.wait_for(
            &format!("{s} on {want} as simulated live"),
            std::time::Duration::from_secs(30),
            || c.service(&leader, s) == (Some(want.clone()), "running".to_owned()),
        );
    }

    // Without an agent to ask: exit 4 and a clear error.
    let (code, _) = simulate(c.path(), &["--live", "--data-dir", "/nonexistent"]);
    assert_eq!(code, Some(4));
}

/// Node labels are placement constraints: `require` makes a service unplaceable
/// where no node carries the labels, and `simulate`, `explain` and `check` all say so.
#[test]
fn a_label_constraint_is_honoured_and_shown_by_simulate_explain_and_check() {
    let services = format!(
        "{}require = {{ disk = \"ssd\" }}\n{}require = {{ gpu = \"yes\" }}\n",
        TestCluster::demo_service("db", ""),
        TestCluster::demo_service("ml", "")
    );
    let mut c = TestCluster::with_services(3, &services);
    // Only n2 has an ssd.
    let path = c.path().join("quorate.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[nodes.n2]\naddress = \"127.0.0.2\"\n",
        "[nodes.n2]\naddress = \"127.0.0.2\"\nlabels = { disk = \"ssd\" }\n",
    );
    std::fs::write(&path, text).unwrap();
    c.ok(&["lock"]);
    // check warns that no node can ever run `ml`.
    let out = c.run(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec::require") && stderr.contains("gpu=yes"),
        "{stderr}"
    );
    // simulate: db on n2, ml unplaceable, with the label as the reason.
    let (code, r) = simulate(c.path(), &["quorate.toml"]);
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(r["services"]["db"]["after"], "n2", "{r:#}");
    assert!(
        r["unplaceable"].as_array().unwrap().contains(&"ml".into()),
        "{r:#}"
    );
    let why = r["services"]["ml"]["reason"].as_str().unwrap();
    assert!(why.contains("lacks label gpu=yes"), "{why}");
    // With n2 failed, db has nowhere to go.
    let (_, r) = simulate(c.path(), &["quorate.toml", "--fail", "n2"]);
    assert!(
        r["unplaceable"].as_array().unwrap().contains(&"db".into()),
        "{r:#}"
    );
    // The live cluster does it, and explain names the label on each other node.
    let leader = c.start_all();
    assert_eq!(c.wait_running_elsewhere(&leader, "db", None), "n2");
    let dd = c.data_dir(&leader);
    let out = c.run(&[
        "explain",
        "db",
        "--json",
        "--data-dir",
        dd.to_str().unwrap(),
    ]);
    let explained: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = explained.to_string();
    assert!(text.contains("lacks label disk=ssd"), "{explained:#}");
    let (_, status) = c.status(&leader, false);
    let ml = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ml")
        .unwrap()
        .clone();
    assert_eq!(ml["state"], "unplaceable", "{status:#}");
}

/// A witness (`workloads = false`) votes but runs nothing, also in `simulate`.
#[test]
fn simulate_never_puts_a_service_on_a_witness() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = String::from("[cluster]\nname = \"t\"\n[nodes.a]\naddress = \"10.0.0.1\"\n[nodes.b]\naddress = \"10.0.0.2\"\n[nodes.pi]\naddress = \"10.0.0.3\"\nworkloads = false\n");
    for s in ["s1", "s2", "s3", "s4"] {
        spec.push_str(&format!(
            "[services.{s}]\nkind = \"process\"\ncommand = [\"/bin/true\"]\nprefer = [\"pi\"]\n"
        ));
    }
    std::fs::write(dir.path().join("quorate.toml"), spec).unwrap();
    let (code, r) = simulate(dir.path(), &["quorate.toml", "--fail", "a"]);
    assert_eq!(code, Some(0), "{r:#}");
    for s in ["s1", "s2", "s3", "s4"] {
        assert_eq!(r["services"][s]["after"], "b", "{r:#}");
    }
}
