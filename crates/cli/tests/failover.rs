//! Issue "failover with fencing", checked with real agents, fence processes and
//! witness workloads; the verdict comes from the journal checker (support/witness.rs),
//! which knows nothing of the agent code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::witness::{double_runs, runs, Run};
use support::TestCluster;

fn three_services() -> String {
    TestCluster::demo_services(&["s1", "s2", "s3"])
}

/// A formed 3-node cluster with s1..s3 running (one per node); returns (leader, placements).
fn running_cluster(c: &mut TestCluster) -> (String, Vec<(String, String)>) {
    let leader = c.start_all();
    let mut placed = Vec::new();
    for s in ["s1", "s2", "s3"] {
        placed.push((s.to_string(), c.wait_running_elsewhere(&leader, s, None)));
    }
    (leader, placed)
}

fn assert_no_double_run(c: &TestCluster) {
    let all = runs(&c.journal());
    let bad = double_runs(&all);
    assert!(
        bad.is_empty(),
        "double runs: {bad:#?}\njournal runs: {all:#?}"
    );
}

fn power_loss(host_is_leader: bool) {
    let mut c = TestCluster::with_services(3, &three_services());
    let (leader, placed) = running_cluster(&mut c);
    let (service, host) = placed
        .iter()
        .find(|(_, n)| (*n == leader) == host_is_leader)
        .cloned()
        .unwrap();
    c.poweroff(&host);
    let survivors: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != host)
        .collect();
    let new_host = c.wait_running_elsewhere(survivors[0], &service, Some(&host));
    // Every surviving node's own view agrees on where it runs.
    for n in &survivors {
        c.wait_for(
            &format!("{n} to see {service} on {new_host}"),
            Duration::from_secs(20),
            || {
                let (_, r) = c.status(n, true);
                r["services"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|s| s["name"] == service.as_str() && s["node"] == new_host.as_str())
                })
            },
        );
    }
    assert_no_double_run(&c);
}

/// Waits until the journal shows `service` started on `node`: the agent reports it
/// running once it is spawned, and its own `start` record may come a moment later.
fn wait_started(c: &TestCluster, service: &str, node: &str) {
    c.wait_for(
        &format!("a start record of {service} on {node}"),
        Duration::from_secs(10),
        || {
            runs(&c.journal())
                .iter()
                .any(|r| r.service == service && r.node == node)
        },
    );
}

/// The first run of `service` on `node` in the witness journal.
fn first_run<'a>(all: &'a [Run], service: &str, node: &str) -> &'a Run {
    all.iter()
        .find(|r| r.service == service && r.node == node)
        .unwrap_or_else(|| panic!("no run of {service} on {node}: {all:#?}"))
}

#[test]
fn power_loss_of_a_follower_moves_its_service() {
    power_loss(false);
}

#[test]
fn power_loss_of_the_leader_moves_its_service() {
    power_loss(true);
}

#[test]
fn a_paused_agent_is_fenced_before_its_service_starts_elsewhere() {
    let mut c = TestCluster::with_services(3, &three_services());
    let (leader, placed) = running_cluster(&mut c);
    let (service, host) = placed.iter().find(|(_, n)| *n != leader).cloned().unwrap();
    c.signal(&host, "-STOP");
    let new_host = c.wait_running_elsewhere(&leader, &service, Some(&host));
    wait_started(&c, &service, &new_host);
    let all = runs(&c.journal());
    let old = first_run(&all, &service, &host);
    let new = first_run(&all, &service, &new_host);
    let fenced_at = old
        .end
        .expect("the paused node's workload was stopped by its fence");
    assert!(
        fenced_at < new.start,
        "fence at {fenced_at} must come before the new start at {}",
        new.start
    );
    let journal = std::fs::read_to_string(c.journal()).unwrap();
    assert!(
        journal
            .lines()
            .any(|l| l.starts_with("fence ") && l.contains(&format!(" {host} {service} "))),
        "a fence record for {service} on {host}:\n{journal}"
    );
    // The agent wakes up: it rejoins and does not start a second copy.
    c.signal(&host, "-CONT");
    c.wait_agreed(&["n1", "n2", "n3"], 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.service(&leader, &service).0.as_deref(),
        Some(new_host.as_str())
    );
    let starts_on_host = runs(&c.journal())
        .iter()
        .filter(|r| r.service == service && r.node == host)
        .count();
    assert_eq!(starts_on_host, 1, "no second start on the woken node");
    assert_no_double_run(&c);
}

fn partition(c: &TestCluster, node: &str, cut: bool) {
    let reply = c.control(node, &quorate_api::ControlRequest::Partition { cut });
    assert!(
        matches!(reply, quorate_api::ControlReply::Done { .. }),
        "{reply:?}"
    );
}

#[test]
fn an_isolated_node_stops_its_workload_before_the_majority_starts_a_copy() {
    let mut c = TestCluster::with_services(3, &three_services());
    let (leader, placed) = running_cluster(&mut c);
    let (service, host) = placed.iter().find(|(_, n)| *n != leader).cloned().unwrap();
    partition(&c, &host, true);
    let new_host = c.wait_running_elsewhere(&leader, &service, Some(&host));
    wait_started(&c, &service, &new_host);
    let all = runs(&c.journal());
    let old = first_run(&all, &service, &host);
    let new = first_run(&all, &service, &new_host);
    assert!(
        old.end.is_some_and(|e| e < new.start),
        "isolated copy {old:?} must end before {new:?}"
    );
    partition(&c, &host, false);
    c.wait_agreed(&["n1", "n2", "n3"], 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.service(&leader, &service).0.as_deref(),
        Some(new_host.as_str()),
        "no move back after heal"
    );
    assert_no_double_run(&c);
}

/// The lease handover (issue 17): the new leader bounds the leases its isolated
/// predecessor granted (itself included) by asking the voters, instead of waiting a
/// full TTL + drift from its election. The old leader's own service must still end
/// (its fence) before the copy starts, and the new leader must have used the bound.
#[test]
fn an_isolated_leader_is_fenced_before_the_new_leader_starts_its_service() {
    let mut c = TestCluster::with_services(3, &three_services());
    let (leader, placed) = running_cluster(&mut c);
    let (service, _) = placed.iter().find(|(_, n)| *n == leader).cloned().unwrap();
    partition(&c, &leader, true);
    let ask = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap();
    let new_host = c.wait_running_elsewhere(ask, &service, Some(&leader));
    wait_started(&c, &service, &new_host);
    let all = runs(&c.journal());
    let old = first_run(&all, &service, &leader);
    let new = first_run(&all, &service, &new_host);
    assert!(
        old.end.is_some_and(|e| e < new.start),
        "the isolated leader's copy {old:?} must end before {new:?}"
    );
    let new_leader = c.status(ask, false).1["leader"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        c.log(&new_leader).contains("earlier leaders' leases end"),
        "the new leader {new_leader} did not bound its predecessor's leases:\n{}",
        c.log(&new_leader)
    );
    partition(&c, &leader, false);
    c.wait_agreed(&["n1", "n2", "n3"], 1);
    assert_no_double_run(&c);
}

#[test]
fn a_restarted_agent_adopts_workloads_under_a_valid_lease_and_kills_the_rest() {
    let mut c = TestCluster::with_services(3, &three_services());
    let (leader, placed) = running_cluster(&mut c);
    let (service, host) = placed.iter().find(|(_, n)| *n != leader).cloned().unwrap();
    // Agent only (its fence and workload live on): restart at once, the lease is still valid.
    c.kill(&host);
    c.start(&host);
    c.wait_agreed(&["n1", "n2", "n3"], 1);
    std::thread::sleep(Duration::from_secs(3));
    let all = runs(&c.journal());
    let on_host: Vec<_> = all
        .iter()
        .filter(|r| r.service == service && r.node == host)
        .collect();
    assert_eq!(on_host.len(), 1, "adopted, not restarted: {on_host:#?}");
    assert!(on_host[0].end.is_none(), "still running: {on_host:#?}");
    assert!(
        c.log(&host).contains("adopted a workload"),
        "{}",
        c.log(&host)
    );
    assert_eq!(
        c.service(&leader, &service).0.as_deref(),
        Some(host.as_str())
    );
    assert_no_double_run(&c);

    // Agent and fence die; the workload is orphaned. After the lease has expired, the
    // restarted agent must kill it.
    let fence: i32 = std::fs::read_to_string(c.data_dir(&host).join("fence.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The fence is frozen first: killed after the agent, a loaded machine could let it
    // reach the deadline in between and kill the workload without writing its journal
    // record (it died before it could), which this test would wait for in vain.
    let signal = |sig: &str| {
        let _ = std::process::Command::new("kill")
            .args([sig, &fence.to_string()])
            .status();
    };
    signal("-STOP");
    c.kill(&host);
    signal("-9");
    std::thread::sleep(Duration::from_millis(2500));
    c.start(&host);
    c.wait_for("the orphan to be killed", Duration::from_secs(20), || {
        runs(&c.journal())
            .iter()
            .any(|r| r.service == service && r.node == host && r.end.is_some())
    });
    assert!(
        c.log(&host)
            .contains("lease expired while the agent was down"),
        "{}",
        c.log(&host)
    );
}

#[test]
fn without_fencing_the_checker_catches_the_double_run() {
    let mut c = TestCluster::with_services(3, &three_services());
    c.env.push(("QUORATE_UNSAFE_NO_FENCE".into(), "1".into()));
    let (leader, placed) = running_cluster(&mut c);
    let (service, host) = placed.iter().find(|(_, n)| *n != leader).cloned().unwrap();
    c.signal(&host, "-STOP");
    c.wait_running_elsewhere(&leader, &service, Some(&host));
    std::thread::sleep(Duration::from_millis(300));
    let bad = double_runs(&runs(&c.journal()));
    assert!(
        bad.iter()
            .any(|(a, b)| a.service == service && (a.node == host || b.node == host)),
        "the checker must see the double run: {bad:#?}"
    );
    c.signal(&host, "-CONT");
}

#[test]
fn the_checker_judges_synthetic_journals() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("journal");
    for line in [
        "start 10 n1 web 1",
        "alive 20 n1 web 1",
        "fence 30 n1 web 1",
        "start 31 n2 web 2",
        "start 40 n3 db 3",
        "poweroff 50 n3 - 0",
        "start 45 n1 db 4",
    ] {
        support::witness::append(&j, line);
    }
    let all = runs(&j);
    assert_eq!(all.len(), 4);
    let bad = double_runs(&all);
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert_eq!(
        (
            bad[0].0.service.as_str(),
            bad[0].0.node.as_str(),
            bad[0].1.node.as_str()
        ),
        ("db", "n3", "n1")
    );
}

#[test]
fn fence_command_must_succeed_before_services_leave_a_down_node() {
    let aux = tempfile::tempdir().unwrap();
    let (flag, log) = (aux.path().join("may-fence"), aux.path().join("fenced"));
    let mut c = TestCluster::with_services(3, &three_services());
    // The fence agent succeeds only once the flag exists, and records whom it fenced.
    let script = format!(
        "test -e {} && echo {{node}} >> {}",
        flag.display(),
        log.display()
    );
    c.set_fence_command(&script);
    let (leader, placed) = running_cluster(&mut c);
    let (service, host) = placed.iter().find(|(_, n)| *n != leader).cloned().unwrap();
    c.poweroff(&host);
    // Lease long expired, but the fence agent keeps failing: the service stays put.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        c.service(&leader, &service).0.as_deref(),
        Some(host.as_str()),
        "no relocation before power fencing succeeds"
    );
    assert!(
        c.log(&leader).contains("fence_command failed"),
        "{}",
        c.log(&leader)
    );
    std::fs::write(&flag, "").unwrap();
    c.wait_running_elsewhere(&leader, &service, Some(&host));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().trim(),
        host,
        "the fence agent was told which node to fence"
    );
    assert_no_double_run(&c);
}

#[test]
fn fence_command_secrets_reach_the_agent_and_nothing_else() {
    const PASSWORD: &str = "hunter2-do-not-print";
    const TOKEN: &str = "env-token-do-not-print";
    let aux = tempfile::tempdir().unwrap();
    let (secret, env_file, got) = (
        aux.path().join("ipmi-password"),
        aux.path().join("fence.env"),
        aux.path().join("got"),
    );
    std::fs::write(&secret, format!("{PASSWORD}\n")).unwrap();
    std::fs::write(
        &env_file,
        format!("# the fence agent's login\nIPMI_TOKEN=\"{TOKEN}\"\n"),
    )
    .unwrap();
    let mut c = TestCluster::with_services(3, &three_services());
    // The fence agent records what it was given: the node, the password from
    // {secret:PATH}, and the token from the environment file.
    let path = c.path().join("quorate.toml");
    let spec = std::fs::read_to_string(&path).unwrap();
    let script = format!("echo \"$1 $2 $IPMI_TOKEN\" >> {}", got.display());
    let with = spec.replacen(
        "name = \"test\"",
        &format!(
            "name = \"test\"\nfence_command = [\"/bin/sh\", \"-c\", {script:?}, \"fence\", \"{{node}}\", \"{{secret:{}}}\"]\nfence_environment_file = {:?}",
            secret.display(),
            env_file.display().to_string()
        ),
        1,
    );
    std::fs::write(&path, with).unwrap();
    c.ok(&["lock"]);
    let (leader, placed) = running_cluster(&mut c);
    let (service, host) = placed.iter().find(|(_, n)| *n != leader).cloned().unwrap();
    c.poweroff(&host);
    c.wait_running_elsewhere(&leader, &service, Some(&host));
    assert_eq!(
        std::fs::read_to_string(&got).unwrap().trim(),
        format!("{host} {PASSWORD} {TOKEN}"),
        "the fence agent got the node and both secrets"
    );
    // The secrets are in no log line, status or event of any node.
    let mut seen = String::new();
    for n in c.names.clone() {
        seen.push_str(&c.log(&n));
        if n != host {
            seen.push_str(&c.status(&n, false).1.to_string());
            let dd = c.data_dir(&n);
            seen.push_str(&String::from_utf8_lossy(
                &c.run(&["events", "--json", "--data-dir", dd.to_str().unwrap()])
                    .stdout,
            ));
        }
    }
    assert!(seen.contains("fence_command"), "the fence run is logged");
    assert!(seen.contains("{secret:"), "the log shows the placeholder");
    assert!(
        !seen.contains(PASSWORD) && !seen.contains(TOKEN),
        "a secret leaked"
    );
    // The applied spec holds the path, not the secret (it is replicated everywhere).
    assert!(!std::fs::read_to_string(&path).unwrap().contains(PASSWORD));
    assert_no_double_run(&c);
}
