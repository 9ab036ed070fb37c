//! Issue "cluster core", checked with real binaries on loopback, one data dir per
//! node: formation in any order, crash of any node including the leader, loss of
//! quorum, authentication, bad inputs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::TestCluster;

const SERVICE: &str =
    "\n[services.hello]\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"1000\"]\n";
const SERVICE2: &str =
    "\n[services.other]\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"1000\"]\n";

#[test]
fn three_nodes_form_in_any_order_and_agree() {
    let mut c = TestCluster::new(3);
    for n in ["n3", "n1", "n2"] {
        c.start(n);
        std::thread::sleep(Duration::from_millis(400));
    }
    c.wait_agreed(&["n1", "n2", "n3"], 1);
    let (code, report) = c.status("n2", false);
    assert_eq!(code, Some(0));
    // The DESIGN contract's keys.
    for key in [
        "cluster",
        "leader",
        "term",
        "quorum",
        "spec_version",
        "nodes",
        "services",
        "storage",
    ] {
        assert!(
            report.get(key).is_some(),
            "status --json lacks `{key}`: {report:#}"
        );
    }
    assert_eq!(report["cluster"], "test");
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        assert_eq!(n["state"], "up", "{report:#}");
        assert!(n["last_contact_ms"].is_u64(), "{report:#}");
    }
}

#[test]
fn five_nodes_form_from_a_cold_start() {
    let mut c = TestCluster::new(5);
    for n in ["n5", "n4", "n3", "n2", "n1"] {
        c.start(n);
    }
    c.wait_agreed(&["n1", "n2", "n3", "n4", "n5"], 1);
}

#[test]
fn killing_the_leader_keeps_the_cluster_writable_and_the_node_catches_up() {
    let mut c = TestCluster::new(3);
    let leader = c.start_all();
    c.kill(&leader);
    let survivors: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != leader)
        .collect();
    c.wait_agreed(&survivors, 1);
    c.edit_spec(SERVICE);
    let dd = c.data_dir(survivors[0]);
    let out = c.run(&["apply", "--data-dir", dd.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Same content again: acknowledged, unchanged.
    let out = c.run(&["apply", "--json", "--data-dir", dd.to_str().unwrap()]);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["unchanged"], true, "{reply:#}");
    assert_eq!(reply["version"], 2);
    // The killed node restarts from its data dir and catches up on its own log.
    c.start(&leader);
    c.wait_for(
        "the restarted node to apply spec version 2 locally",
        Duration::from_secs(30),
        || c.status(&leader, true).1["spec_version"] == 2,
    );
    c.wait_agreed(&["n1", "n2", "n3"], 2);
}

#[test]
fn a_follower_crash_is_reported_down_and_tolerated() {
    let mut c = TestCluster::new(3);
    let leader = c.start_all();
    let follower = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap();
    c.kill(follower);
    c.wait_for(
        "the leader to report the follower down",
        Duration::from_secs(30),
        || {
            let (_, r) = c.status(&leader, false);
            r["quorum"] == true
                && r["nodes"].as_array().is_some_and(|ns| {
                    ns.iter()
                        .any(|n| n["name"] == follower && n["state"] == "down")
                })
        },
    );
    c.edit_spec(SERVICE);
    let dd = c.data_dir(&leader);
    assert_eq!(
        c.run(&["apply", "--data-dir", dd.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn without_quorum_apply_is_refused_nothing_changes_and_the_cluster_recovers() {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.kill("n2");
    c.kill("n3");
    c.edit_spec(SERVICE);
    let dd = c.data_dir("n1");
    let out = c.run(&["apply", "--data-dir", dd.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no quorum"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, report) = c.status("n1", false);
    assert_eq!(code, Some(4), "status without quorum exits 4: {report:#}");
    assert_eq!(report["quorum"], false);
    // One node returns: the cluster recovers by itself, and the refused change is not there.
    c.start("n2");
    c.wait_agreed(&["n1", "n2"], 1);
    assert_eq!(
        c.status("n2", true).1["spec_version"],
        1,
        "nothing was half-applied"
    );
    // Now the change goes through.
    assert_eq!(
        c.run(&["apply", "--data-dir", dd.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    c.wait_agreed(&["n1", "n2"], 2);
}

#[test]
fn a_peer_from_a_foreign_ca_or_without_tls_is_refused_and_logged() {
    let mut c = TestCluster::new(3);
    // n3's certificate comes from another CA.
    std::fs::remove_dir_all(c.data_dir("n3").join("tls")).unwrap();
    c.ok(&["ca", "init", "evil-ca", "--cluster", "evil"]);
    let out = c.data_dir("n3").join("tls");
    c.ok(&[
        "ca",
        "issue",
        "n3",
        "--ca",
        "evil-ca",
        "--out",
        out.to_str().unwrap(),
    ]);
    for n in ["n1", "n2", "n3"] {
        c.start(n);
    }
    c.wait_agreed(&["n1", "n2"], 1);
    // A plain TCP client without TLS.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", c.port)).unwrap();
        let _ = s.write_all(b"hello, I am n3\n");
    }
    c.wait_for(
        "n1 and n2 to log refused connections",
        Duration::from_secs(30),
        || {
            let logs = c.log("n1") + &c.log("n2");
            logs.matches("refused peer connection").count() >= 2
        },
    );
    // The impostor never joins: it has no quorum and no leader of its own.
    let (_, rogue) = c.status("n3", true);
    assert_ne!(rogue["quorum"], true, "{rogue:#}");
    let (_, real) = c.status("n1", false);
    let n3 = real["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "n3")
        .unwrap();
    assert_eq!(n3["state"], "down", "{real:#}");
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            out.extend(listing(&e.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn bad_inputs_are_clear_errors_and_change_nothing() {
    let c = TestCluster::new(3);
    let agent = |node: &str, data_dir: &str| {
        c.run(&[
            "agent",
            "--spec",
            "quorate.toml",
            "--node",
            node,
            "--data-dir",
            data_dir,
        ])
    };

    // A node name the spec does not have.
    let out = agent("n9", "d/n9");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node `n9` is not in the spec"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!c.path().join("d/n9").exists(), "nothing was created");

    // A data dir of another cluster.
    std::fs::write(
        c.data_dir("n1").join("node.json"),
        r#"{"format":1,"cluster":"elsewhere","node":"n1","raft_id":1}"#,
    )
    .unwrap();
    let before = listing(&c.data_dir("n1"));
    let out = agent("n1", "d/n1");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("belongs to node `n1` (raft id 1) of cluster `elsewhere`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        listing(&c.data_dir("n1")),
        before,
        "the data dir is unchanged"
    );

    // A lock that does not match the spec.
    let spec = std::fs::read_to_string(c.path().join("quorate.toml")).unwrap();
    std::fs::write(
        c.path().join("quorate.toml"),
        spec + "\n[nodes.n4]\naddress = \"127.0.0.4\"\n",
    )
    .unwrap();
    let before = listing(&c.data_dir("n2"));
    let out = agent("n2", "d/n2");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match the spec"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listing(&c.data_dir("n2")), before);

    // Status against no agent: unreachable is exit 4.
    let out = c.run(&["status", "--data-dir", "d/n2"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent"));
}

#[test]
fn the_harness_leaves_no_process_or_cgroup_behind() {
    let (pids, cgroups): (Vec<u32>, Vec<std::path::PathBuf>) = {
        let services = TestCluster::demo_services(&["a", "b", "c"]);
        let mut c = TestCluster::with_services(3, &services);
        let leader = c.start_all();
        for s in ["a", "b", "c"] {
            c.wait_running_elsewhere(&leader, s, None);
        }
        let pids = ["n1", "n2", "n3"]
            .iter()
            .map(|n| c.pid(n).unwrap())
            .collect();
        // Each agent's cgroup tree, where cgroup v2 is writable here.
        let cgroups = ["n1", "n2", "n3"]
            .iter()
            .filter_map(|n| std::fs::read_to_string(c.data_dir(n).join("cgroup")).ok())
            .map(|p| std::path::PathBuf::from(p.trim()))
            .collect();
        (pids, cgroups)
    };
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "agent {pid} survived its guard"
        );
    }
    for dir in cgroups {
        assert!(!dir.exists(), "{} survived the guard", dir.display());
    }
}

#[test]
fn apply_of_an_invalid_or_foreign_lock_is_refused() {
    let mut c = TestCluster::new(3);
    c.start_all();
    // A lock allocated from scratch in another order does not continue the cluster's.
    c.edit_spec(SERVICE);
    let lock_path = c.path().join("quorate.lock");
    let mut lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lock_path).unwrap()).unwrap();
    lock["services"]["hello"]["id"] = 7.into();
    lock["next"]["service_id"] = 8.into();
    std::fs::write(&lock_path, serde_json::to_string_pretty(&lock).unwrap()).unwrap();
    let dd = c.data_dir("n1");
    let out = c.run(&["apply", "--data-dir", dd.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not continue the cluster's lock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.ok(&["lock"]);
    std::fs::remove_file(&lock_path).unwrap();
    c.ok(&["lock"]);
    c.edit_spec(SERVICE2);
    let out = c.run(&["apply", "--data-dir", dd.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `quorate apply` through `node`'s agent; insists on exit `code`.
/// Adds `table` (a `[nodes.<name>]` table) to the spec, issues the node's
/// certificate and applies the spec through n1; the node is not started.
fn add_node_by_apply(c: &mut TestCluster, name: &str, table: &str) {
    c.edit_spec(table);
    let out = c.data_dir(name).join("tls");
    c.ok(&[
        "ca",
        "issue",
        name,
        "--ca",
        "ca",
        "--out",
        out.to_str().unwrap(),
    ]);
    apply_on(c, "n1", 0);
    c.names.push(name.into());
}

fn apply_on(c: &TestCluster, node: &str, code: i32) {
    let dd = c.data_dir(node);
    let out = c.run(&["apply", "--data-dir", dd.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A voter added by `apply` that never starts must not cost the cluster its
/// tolerance: before, it became a voter at once (openraft counts a learner within
/// 5,000 entries as caught up), so 4 voters with one missing lost quorum at the next
/// failure and a dead node's service never moved. Now it votes only once it has
/// replicated the log.
#[test]
fn a_new_voter_that_never_starts_stalls_neither_scheduling_nor_quorum() {
    let mut c = TestCluster::with_services(3, &TestCluster::demo_services(&["web"]));
    let leader = c.start_all();
    let host = c.wait_running_elsewhere(&leader, "web", None);
    c.edit_spec("\n[nodes.n4]\naddress = \"127.0.0.4\"\n");
    apply_on(&c, "n1", 0);
    // n4 is a learner at most: the voters do not change until it has caught up.
    std::thread::sleep(Duration::from_secs(2));
    let ask = ["n1", "n2", "n3"].into_iter().find(|n| *n != host).unwrap();
    assert_eq!(
        c.status(ask, false).1["raft_voters"],
        serde_json::json!(["n1", "n2", "n3"])
    );
    c.poweroff(&host);
    c.wait_running_elsewhere(ask, "web", Some(&host));
    let bad = c.violations();
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn a_node_added_by_apply_joins_as_a_voter_and_a_removed_one_leaves() {
    let mut c = TestCluster::new(3);
    c.start_all();
    // Add n4 to the spec (and give it a certificate), apply, then start it.
    add_node_by_apply(&mut c, "n4", "\n[nodes.n4]\naddress = \"127.0.0.4\"\n");
    let dd = c.data_dir("n1");
    c.start("n4");
    c.wait_agreed(&["n1", "n2", "n3", "n4"], 2);
    c.wait_for("n4 to be up as a voter", Duration::from_secs(30), || {
        let (_, r) = c.status("n1", false);
        r["nodes"].as_array().is_some_and(|ns| {
            ns.iter()
                .any(|n| n["name"] == "n4" && n["state"] == "up" && n["voter"] == true)
        })
    });
    // It either waited to be added or got the leader's log first; it never started a
    // history of its own.
    assert!(
        !c.log("n4")
            .contains("initialized Raft with the spec's voters"),
        "n4 must not initialize a Raft group of its own:\n{}",
        c.log("n4")
    );
    // n4 now votes: with n1 and n2 down, n3 + n4 are only 2 of 4 — no quorum.
    // Remove n4 again (one voter of four: not destructive).
    let spec = std::fs::read_to_string(c.path().join("quorate.toml")).unwrap();
    std::fs::write(
        c.path().join("quorate.toml"),
        spec.replace("\n[nodes.n4]\naddress = \"127.0.0.4\"\n", ""),
    )
    .unwrap();
    c.ok(&["lock"]);
    let out = c.run(&["apply", "--data-dir", dd.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_for(
        "Raft's voters to be n1, n2, n3 again",
        Duration::from_secs(30),
        || c.status("n1", false).1["raft_voters"] == serde_json::json!(["n1", "n2", "n3"]),
    );
    c.kill("n4");
    c.names.pop();
    c.wait_agreed(&["n1", "n2", "n3"], 3);
    c.kill("n3");
    // Two of the three remaining voters suffice: n4 no longer counts.
    c.wait_agreed(&["n1", "n2"], 3);
}

#[test]
fn apply_refuses_a_destructive_change_unless_allowed() {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.edit_spec("\n[storage.media]\nkind = \"gluster\"\nnodes = [\"n1\", \"n2\", \"n3\"]\n\n[services.web]\nkind = \"process\"\ncommand = [\"/bin/web\"]\nstorage = [\"media\"]\n");
    let dd = c.data_dir("n2");
    let dd = dd.to_str().unwrap();
    assert_eq!(c.run(&["apply", "--data-dir", dd]).status.code(), Some(0));
    // Removing the storage is destructive: exit 3, nothing applied.
    let spec = std::fs::read_to_string(c.path().join("quorate.toml")).unwrap();
    let cut = spec.find("\n[storage.media]").unwrap();
    std::fs::write(c.path().join("quorate.toml"), &spec[..cut]).unwrap();
    c.ok(&["lock", "--allow-destructive"]);
    let out = c.run(&["apply", "--data-dir", dd]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DESTRUCTIVE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.status("n1", false).1["spec_version"], 2);
    let out = c.run(&["apply", "--allow-destructive", "--data-dir", dd]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_agreed(&["n1", "n2", "n3"], 3);
}

/// Issue 16, item 13: the whole cluster powered off and on, every node cold. Every
/// service comes back exactly once; the time from the first agent's start to every
/// service running is printed (docs/BENCHMARKS.md).
#[test]
fn a_whole_cluster_power_cycle_brings_every_service_back_once() {
    let names = ["s1", "s2", "s3", "s4", "s5"];
    let mut c = TestCluster::with_services(3, &TestCluster::demo_services(&names));
    let leader = c.start_all();
    for s in names {
        c.wait_running_elsewhere(&leader, s, None);
    }
    let mut timings = Vec::new();
    for cycle in 0..3 {
        for n in c.names.clone() {
            c.poweroff(&n);
        }
        let runs_before = quorate_lab::checker::runs(&c.journal()).len();
        let began = std::time::Instant::now();
        for n in c.names.clone() {
            c.start(&n);
        }
        let all: Vec<&str> = c.names.iter().map(String::as_str).collect::<Vec<_>>();
        let leader = c.wait_agreed(&all, 1);
        // Running again means a new run in the journal (the status may still show the
        // reports from before the power went) and the cluster saying so.
        c.wait_for(
            "every service running after the power cycle",
            Duration::from_secs(60),
            || {
                let runs = quorate_lab::checker::runs(&c.journal());
                let new = runs.get(runs_before..).unwrap_or_default();
                names.iter().all(|s| {
                    new.iter().any(|r| r.service == *s) && c.service(&leader, s).1 == "running"
                })
            },
        );
        timings.push(began.elapsed().as_millis());
        // Exactly one new run per service: nothing started twice on the way up.
        let runs = quorate_lab::checker::runs(&c.journal());
        let new: Vec<_> = runs[runs_before..].iter().collect();
        for s in names {
            let count = new.iter().filter(|r| r.service == s).count();
            assert_eq!(
                count, 1,
                "cycle {cycle}: {s} started {count} times: {new:?}"
            );
        }
        assert_eq!(c.violations(), Vec::<String>::new());
    }
    println!("{{\"power_cycle_ms\": {timings:?}}}");
}

fn protocols(c: &TestCluster, ask: &str) -> std::collections::BTreeMap<String, String> {
    let (_, s) = c.status(ask, false);
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| {
            Some((
                n["name"].as_str()?.to_owned(),
                n["protocol"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Issue 16, item 12: a rolling upgrade. Nodes announce their protocol version in the
/// TLS handshake (ALPN); a node one minor version ahead works with the others (it
/// forms, leads or follows, fails over), `status` shows who runs what; a node with no
/// version in common (a major ahead) is refused by every peer with a message naming
/// both versions, and the others carry on without it. (`QUORATE_PROTOCOL_VERSION` makes
/// this binary announce another version, standing in for another build.)
#[test]
fn a_node_one_minor_version_ahead_works_and_one_a_major_ahead_is_refused_clearly() {
    let mut c =
        TestCluster::with_services(3, &TestCluster::demo_service("web", "prefer = [\"n1\"]"));
    let newer = |v: &str| [("QUORATE_PROTOCOL_VERSION".to_string(), v.to_string())];
    c.start_with("n1", &newer("1.1"));
    c.start("n2");
    c.start("n3");
    let leader = c.wait_agreed(&["n1", "n2", "n3"], 1);
    c.wait_for("web on n1", Duration::from_secs(30), || {
        c.service("n2", "web") == (Some("n1".into()), "running".into())
    });
    c.wait_for(
        "the leader to see every node's version",
        Duration::from_secs(20),
        || protocols(&c, &leader).len() == 3,
    );
    let seen = protocols(&c, &leader);
    assert_eq!(seen["n1"], "1.1", "{seen:?}");
    assert_eq!(
        (seen["n2"].as_str(), seen["n3"].as_str()),
        ("1.0", "1.0"),
        "{seen:?}"
    );
    let dd = c.data_dir(&leader);
    let text =
        String::from_utf8_lossy(&c.ok(&["status", "--data-dir", dd.to_str().unwrap()]).stdout)
            .into_owned();
    assert!(
        text.contains("rolling upgrade: nodes speak quorate protocol 1.0 and 1.1"),
        "{text}"
    );

    // The newer node fails; the older ones fail its service over.
    c.poweroff("n1");
    c.wait_running_elsewhere("n2", "web", Some("n1"));

    // A node two versions ahead (2.0): no version in common. Refused by both peers, it
    // says why, and the other two keep quorum.
    c.start_with("n1", &newer("2.0"));
    c.wait_for(
        "n2 to refuse n1 with both versions named",
        Duration::from_secs(20),
        || {
            c.log("n2")
                .contains("it speaks quorate protocol 2.0 and this node 1.0: no version in common")
        },
    );
    c.wait_for(
        "n1 to say its peers speak no common version",
        Duration::from_secs(20),
        || {
            c.log("n1")
                .contains("speaks no quorate protocol version in common with this node (2.0)")
        },
    );
    let (code, s) = c.status("n2", false);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["quorum"], true, "{s}");
    assert_ne!(s["leader"], "n1", "{s}");
    let bad = c.violations();
    assert!(bad.is_empty(), "{bad:?}");
}

/// A node with `voter = false` joins as a Raft learner: it gets the log and a lease and
/// runs services, but does not vote; removed from the spec, it leaves Raft's
/// membership. Before, such a node was never added to Raft and stayed down (the
/// 25-node lab bench found it: 20 of 25 nodes down).
#[test]
fn a_non_voting_node_runs_services_as_a_learner_and_leaves_when_removed() {
    let mut c = TestCluster::with_services(3, &TestCluster::demo_service("web", ""));
    c.start_all();
    let node4 = "\n[nodes.n4]\naddress = \"127.0.0.4\"\nvoter = false\n";
    add_node_by_apply(&mut c, "n4", node4);
    c.start("n4");
    c.wait_for("n4 to be up as a learner", Duration::from_secs(30), || {
        let (_, r) = c.status("n1", false);
        r["raft_learners"] == serde_json::json!(["n4"])
            && r["nodes"].as_array().is_some_and(|ns| {
                ns.iter()
                    .any(|n| n["name"] == "n4" && n["state"] == "up" && n["voter"] == false)
            })
    });
    assert_eq!(
        c.status("n1", false).1["raft_voters"],
        serde_json::json!(["n1", "n2", "n3"])
    );
    // It runs a service.
    let dd = c.data_dir("n1");
    let dd = dd.to_str().unwrap();
    c.ok(&["move", "web", "n4", "--data-dir", dd]);
    c.wait_for("web to run on n4", Duration::from_secs(30), || {
        c.service("n1", "web") == (Some("n4".into()), "running".into())
    });
    // Moved away, then n4 removed from the spec: it leaves the membership.
    c.ok(&["move", "web", "n1", "--data-dir", dd]);
    c.wait_for("web to run on n1", Duration::from_secs(30), || {
        c.service("n1", "web") == (Some("n1".into()), "running".into())
    });
    let spec = std::fs::read_to_string(c.path().join("quorate.toml")).unwrap();
    std::fs::write(c.path().join("quorate.toml"), spec.replace(node4, "")).unwrap();
    c.ok(&["lock", "--allow-destructive"]);
    c.ok(&["apply", "--allow-destructive", "--data-dir", dd]);
    c.wait_for("n4 to leave Raft", Duration::from_secs(30), || {
        c.status("n1", false).1["raft_learners"] == serde_json::json!([])
    });
    c.kill("n4");
    c.names.pop();
    let bad = c.violations();
    assert!(bad.is_empty(), "{bad:?}");
}
