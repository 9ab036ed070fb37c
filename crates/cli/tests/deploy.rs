//! `quorate deploy --dry-run` against real agents: the plan's order (the leader last),
//! the moves each drain makes, closure sizes from a real Nix store, and every refusal
//! before anything is switched (unknown node, node down, invalid store path, a drain
//! that would strand a service, no closure given).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use serde_json::Value;
use support::TestCluster;

fn deploy(cluster: &TestCluster, args: &[&str]) -> (Option<i32>, Value, String) {
    let dd = cluster.data_dir("n1");
    let mut all = vec!["deploy", "--json", "--data-dir", dd.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = cluster.run(&all);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_dry_run_plans_followers_first_and_refuses_what_it_cannot_do() {
    let services = TestCluster::demo_service("web", "prefer = [\"n1\"]")
        + &TestCluster::demo_service("api", "prefer = [\"n2\"]");
    let mut cluster = TestCluster::with_services(3, &services);
    cluster.start_all();
    cluster.wait_running_elsewhere("n1", "web", None);
    cluster.wait_running_elsewhere("n1", "api", None);
    let (_, status) = cluster.status("n1", false);
    let leader = status["leader"].as_str().unwrap().to_owned();
    let web_host = cluster.service("n1", "web").0.unwrap();

    let (code, plan, stderr) = deploy(&cluster, &["--dry-run"]);
    assert_eq!(code, Some(0), "{stderr}");
    let order: Vec<&str> = plan["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(order.len(), 3, "{plan:#}");
    assert_eq!(
        *order.last().unwrap(),
        leader,
        "the leader goes last: {plan:#}"
    );
    for step in plan["steps"].as_array().unwrap() {
        let node = step["node"].as_str().unwrap();
        for m in step["moves"].as_array().unwrap() {
            assert_ne!(m["to"], node, "a drain moves services away: {step}");
        }
        if node == web_host {
            assert!(
                step["moves"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["service"] == "web"),
                "draining web's node moves web: {step}"
            );
        }
    }

    // Refusals, each before anything is done.
    let (code, plan, _) = deploy(&cluster, &["--dry-run", "--on", "n9"]);
    assert_eq!(code, Some(1));
    assert!(
        plan["error"]
            .as_str()
            .unwrap()
            .contains("`n9` is not a node"),
        "{plan}"
    );
    let (code, plan, _) = deploy(&cluster, &["--dry-run", "--store-path", "n9=/nix/store/x"]);
    assert_eq!(code, Some(1));
    assert!(plan["error"].as_str().unwrap().contains("n9"), "{plan}");
    let (code, plan, _) = deploy(&cluster, &["--dry-run", "--store-path", "relative/path"]);
    assert_eq!(code, Some(1));
    assert!(
        plan["error"].as_str().unwrap().contains("absolute"),
        "{plan}"
    );
    let (code, plan, _) = deploy(
        &cluster,
        &[
            "--dry-run",
            "--store-path",
            "/nix/store/00000000000000000000000000000000-not-there",
        ],
    );
    assert_eq!(code, Some(1));
    assert!(
        plan["error"].as_str().unwrap().contains("not valid")
            || plan["error"].as_str().unwrap().contains("nix path-info"),
        "{plan}"
    );
    let (code, plan, _) = deploy(&cluster, &[]);
    assert_eq!(code, Some(1), "a rollout needs closures");
    assert!(
        plan["error"].as_str().unwrap().contains("--store-path"),
        "{plan}"
    );

    // A node that is down: no rollout.
    let down = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader && *n != "n1")
        .unwrap();
    cluster.poweroff(down);
    cluster.wait_for(
        "the node counted down",
        std::time::Duration::from_secs(30),
        || cluster.node_states("n1").get(down).map(String::as_str) == Some("down"),
    );
    let (code, plan, _) = deploy(&cluster, &["--dry-run"]);
    assert_eq!(code, Some(1));
    assert!(
        plan["error"].as_str().unwrap().contains("is down"),
        "{plan}"
    );
    // Leaving it out is fine.
    let others: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != down)
        .collect();
    let (code, plan, stderr) = deploy(
        &cluster,
        &["--dry-run", "--on", others[0], "--on", others[1]],
    );
    assert_eq!(code, Some(0), "{stderr} {plan}");
}

#[test]
fn a_drain_that_would_strand_a_service_refuses_the_rollout() {
    // Three services that may never share a node, on three nodes: draining any node
    // leaves one of them nowhere to run.
    let services = TestCluster::demo_service("a", "anti_affinity = [\"b\", \"c\"]")
        + &TestCluster::demo_service("b", "anti_affinity = [\"c\"]")
        + &TestCluster::demo_service("c", "");
    let mut cluster = TestCluster::with_services(3, &services);
    cluster.start_all();
    for s in ["a", "b", "c"] {
        cluster.wait_running_elsewhere("n1", s, None);
    }
    let (code, plan, _) = deploy(&cluster, &["--dry-run"]);
    assert_eq!(code, Some(1), "{plan}");
    assert!(
        plan["error"].as_str().unwrap().contains("nowhere to run"),
        "{plan}"
    );
}

#[test]
fn the_plan_shows_each_nodes_closure_size_from_a_real_store() {
    if Command::new("nix-store").arg("--version").output().is_err() {
        support::skip("nix is not installed (apt-get install nix-bin; scripts/test.sh does this)");
        return;
    }
    let mut cluster = TestCluster::with_services(3, "");
    cluster.start_all();
    // A store of our own (a chroot store), holding one path.
    let store_dir = cluster.path().join("store");
    let file = cluster.path().join("generation");
    std::fs::write(&file, vec![b'x'; 100_000]).unwrap();
    let conf = cluster.path().join("nix-conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("nix.conf"), "build-users-group =\n").unwrap();
    let store = format!("local?root={}", store_dir.display());
    let added = Command::new("nix-store")
        .args(["--store", &store, "--add"])
        .arg(&file)
        .env("NIX_CONF_DIR", &conf)
        .env("HOME", cluster.path())
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let path = String::from_utf8_lossy(&added.stdout).trim().to_owned();
    let dd = cluster.data_dir("n1");
    let out = Command::new(support::quorate_bin())
        .args([
            "deploy",
            "--dry-run",
            "--json",
            "--data-dir",
            dd.to_str().unwrap(),
        ])
        .args(["--from-store", &store, "--store-path", &path])
        .env("NIX_CONF_DIR", &conf)
        .env("HOME", cluster.path())
        .output()
        .unwrap();
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{plan} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in plan["steps"].as_array().unwrap() {
        assert_eq!(step["store_path"], path.as_str());
        assert!(
            step["closure_bytes"].as_u64().is_some_and(|b| b >= 100_000),
            "{step}"
        );
    }
}
