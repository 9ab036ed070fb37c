//! The fault lab through its library (the `quorate-lab` binary is the same code):
//! randomized faults on 3 and 5 nodes judged by the independent checker; the checker
//! catching a double run when fencing is disabled; teardown that leaves nothing behind,
//! also after a failing test.
//!
//! The number of randomized faults is `QUORATE_LAB_FAULTS` (default 100, split 60/40
//! between 3 and 5 nodes); `quorate-lab soak` runs many more.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use quorate_lab::cluster::{LabCluster, Options};
use quorate_lab::{checker, faults, netns};

fn options(nodes: usize, services: usize, prefix: &str) -> Options {
    Options {
        services,
        ..Options::new(nodes, support::quorate_bin(), prefix)
    }
}

/// Processes of this test binary's quorate whose command line mentions `dir`.
fn processes_in(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid = e.ok()?.file_name().to_str()?.parse::<u32>().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then_some(format!("{pid}: {cmd}"))
        })
        .collect()
}

fn run_random(nodes: usize, count: usize, seed: u64, prefix: &str) {
    let mut cluster = LabCluster::new(options(nodes, 4, prefix)).unwrap();
    let from = checker::mono_ns();
    cluster.start_all(Duration::from_secs(60)).unwrap();
    let report = faults::run_schedule(&mut cluster, count, seed, Duration::from_secs(60), |f| {
        eprintln!(
            "{nodes} nodes, fault {:>3}: {:?} of {:?} ({:?}), {} op(s), healthy after {} ms",
            f.n,
            f.kind,
            f.nodes,
            f.target,
            f.operations.len(),
            f.recovered_ms
        );
    })
    .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    for (kind, why) in &report.skipped {
        eprintln!("skipped {kind:?}: {why}");
    }
    let verdict = cluster.verdict(from);
    assert!(
        verdict.ok(),
        "seed {seed}, {nodes} nodes: {}",
        serde_json::to_string_pretty(&verdict).unwrap()
    );
    assert_eq!(report.faults.len(), count);
    // Every usable kind was exercised at least once in a long enough schedule.
    if count >= 30 {
        let (usable, _) = faults::usable_kinds(&cluster);
        for kind in usable {
            assert!(
                report.faults.iter().any(|f| f.kind == kind),
                "{kind:?} never drawn"
            );
        }
        // The spec changes under a fault were really made: at least one rename and
        // one removal was acknowledged by the cluster (their first operation).
        for kind in [
            faults::FaultKind::RenameInFault,
            faults::FaultKind::RemoveInFault,
        ] {
            assert!(
                report
                    .faults
                    .iter()
                    .filter(|f| f.kind == kind)
                    .any(|f| f.operations.first().is_some_and(|op| op.2)),
                "no {kind:?} was acknowledged: {:?}",
                report
                    .faults
                    .iter()
                    .filter(|f| f.kind == kind)
                    .collect::<Vec<_>>()
            );
        }
    }
    // Teardown leaves no namespace and no process behind.
    let dir = cluster.path().to_owned();
    drop(cluster);
    assert!(
        netns::namespaces(prefix).is_empty(),
        "{:?}",
        netns::namespaces(prefix)
    );
    assert!(processes_in(&dir).is_empty(), "{:?}", processes_in(&dir));
}

fn fault_budget() -> usize {
    std::env::var("QUORATE_LAB_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

#[test]
fn randomized_faults_on_three_nodes_never_violate_the_invariants() {
    if let Some(why) = netns::unavailable() {
        support::skip(&format!("the lab needs network namespaces: {why}"));
        return;
    }
    run_random(3, fault_budget() * 6 / 10, 3, "qlt3");
}

#[test]
fn randomized_faults_on_five_nodes_never_violate_the_invariants() {
    if let Some(why) = netns::unavailable() {
        support::skip(&format!("the lab needs network namespaces: {why}"));
        return;
    }
    run_random(5, fault_budget() * 4 / 10, 5, "qlt5");
}

/// With fencing disabled, an isolated node keeps its service while the majority starts
/// it elsewhere: the checker must report that double run.
#[test]
fn without_fencing_the_checker_catches_the_double_run() {
    if let Some(why) = netns::unavailable() {
        support::skip(&format!("the lab needs network namespaces: {why}"));
        return;
    }
    let mut opts = options(3, 1, "qltu");
    opts.env = vec![("QUORATE_UNSAFE_NO_FENCE".into(), "1".into())];
    let mut cluster = LabCluster::new(opts).unwrap();
    let from = checker::mono_ns();
    cluster.start_all(Duration::from_secs(60)).unwrap();
    let host = cluster.host_of("s1").unwrap();
    let t0 = checker::mono_ns();
    cluster.link(&host, false).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster.started_elsewhere("s1", &host, t0).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "s1 never started elsewhere"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.net.heal().unwrap();
    let verdict = cluster.verdict(from);
    assert!(!verdict.ok(), "the checker missed the double run");
    let (a, b) = &verdict.double_runs[0];
    assert_eq!(a.service, "s1");
    assert_ne!(a.node, b.node);
    assert!(a.node == host || b.node == host);
}

/// A test that fails half-way still leaves nothing behind.
#[test]
fn teardown_after_a_failing_test_leaves_nothing_behind() {
    if let Some(why) = netns::unavailable() {
        support::skip(&format!("the lab needs network namespaces: {why}"));
        return;
    }
    let dir = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = dir.clone();
    let failed = std::panic::catch_unwind(move || {
        let mut cluster = LabCluster::new(options(3, 2, "qltf")).unwrap();
        cluster.start_all(Duration::from_secs(60)).unwrap();
        *seen.lock().unwrap() = Some(cluster.path().to_owned());
        cluster.pause("n1", true);
        panic!("a deliberate failure with a paused agent and running workloads");
    });
    assert!(failed.is_err());
    let dir = dir.lock().unwrap().clone().unwrap();
    assert!(
        netns::namespaces("qltf").is_empty(),
        "{:?}",
        netns::namespaces("qltf")
    );
    assert!(processes_in(&dir).is_empty(), "{:?}", processes_in(&dir));
    assert!(!dir.exists(), "the work dir is removed");
}
