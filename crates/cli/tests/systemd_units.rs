//! Unit-backed services on real systemd: each node's agent manages the units of its own
//! systemd instance (a container booted per node, support/container.rs), talking D-Bus.
//! A `systemd` service and an `nspawn`-style unit (`container@NAME.service`) start,
//! move, and fail over when an agent dies — its fence process stops the unit through
//! systemd — and the witness journal shows no overlap.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../systemd/tests/support/container.rs"]
mod container;
mod support;

use std::time::Duration;

use container::SystemdContainer;
use support::{quorate_bin, witness, TestCluster};

fn witness_unit(node: &str, service: &str, journal: &str) -> String {
    format!(
        "[Service]\nExecStart={} demo\nEnvironment=QUORATE_NODE={node} QUORATE_SERVICE={service} QUORATE_WITNESS_JOURNAL={journal}\nKillSignal=SIGTERM\n",
        quorate_bin()
    )
}

/// Where systemd itself says the unit is active.
fn active_on(nodes: &[(String, SystemdContainer)], unit: &str) -> Vec<String> {
    nodes
        .iter()
        .filter(|(_, ct)| ct.is_active(unit) == "active")
        .map(|(n, _)| n.clone())
        .collect()
}

#[test]
fn systemd_and_nspawn_units_start_move_and_fail_over_through_dbus() {
    if let Some(why) = container::unavailable() {
        support::skip(&format!("cannot boot systemd containers: {why}"));
        return;
    }
    let services = "\n[services.web]\nkind = \"systemd\"\nunit = \"quorate-witness.service\"\nprefer = [\"n1\"]\n\n[services.hass]\nkind = \"nspawn\"\ncontainer = \"hass\"\nprefer = [\"n2\"]\nanti_affinity = [\"web\"]\n";
    let mut cluster = TestCluster::with_services(3, services);
    let journal = cluster.journal().to_str().unwrap().to_owned();
    let shared = cluster.path().to_owned();
    let nodes: Vec<(String, SystemdContainer)> = cluster
        .names
        .clone()
        .into_iter()
        .map(|n| {
            let units = [
                ("quorate-witness.service", witness_unit(&n, "web", &journal)),
                // An nspawn-style template unit: container@hass.service is an instance.
                ("container@.service", witness_unit(&n, "%i", &journal)),
            ];
            // nspawn gives the container its own /tmp: bind what it must see there
            // (the journal's directory, and the binary when it lives under /tmp).
            let bin_dir = std::path::Path::new(quorate_bin()).parent().unwrap();
            let ct = SystemdContainer::boot(&units, &[shared.as_path(), bin_dir]);
            (n, ct)
        })
        .collect();
    let bus_env = |ct: &SystemdContainer| vec![("DBUS_SYSTEM_BUS_ADDRESS".to_owned(), ct.bus())];
    for (name, ct) in &nodes {
        cluster.start_with(name, &bus_env(ct));
    }
    cluster.wait_agreed(&["n1", "n2", "n3"], 1);

    let web = cluster.wait_running_elsewhere("n3", "web", None);
    let hass = cluster.wait_running_elsewhere("n3", "hass", None);
    assert_ne!(web, hass, "anti-affinity");
    assert_eq!(
        active_on(&nodes, "quorate-witness.service"),
        vec![web.clone()]
    );
    assert_eq!(
        active_on(&nodes, "container@hass.service"),
        vec![hass.clone()]
    );

    // A planned move: systemd stops it on one node before it starts on the other.
    let target = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != web && *n != hass)
        .unwrap();
    let data_dir = cluster.data_dir("n3");
    cluster.ok(&[
        "move",
        "hass",
        target,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    cluster.wait_for(
        "hass to run on the move target",
        Duration::from_secs(30),
        || cluster.service("n3", "hass") == (Some(target.to_owned()), "running".to_owned()),
    );
    assert_eq!(
        active_on(&nodes, "container@hass.service"),
        vec![target.to_owned()]
    );

    // The agent hosting web dies (kill -9, its fence survives): when its lease runs
    // out the fence stops the unit through systemd, and web runs elsewhere.
    let ask = ["n1", "n2", "n3"].into_iter().find(|n| *n != web).unwrap();
    cluster.kill(&web);
    let moved = cluster.wait_running_elsewhere(ask, "web", Some(&web));
    let old = &nodes.iter().find(|(n, _)| *n == web).unwrap().1;
    cluster.wait_for(
        "the fenced unit to be down",
        Duration::from_secs(20),
        || old.is_active("quorate-witness.service") != "active",
    );
    assert_eq!(
        active_on(&nodes, "quorate-witness.service"),
        vec![moved.clone()]
    );
    assert!(
        std::fs::read_to_string(cluster.journal())
            .unwrap()
            .lines()
            .any(|l| l.starts_with("fence ") && l.contains(&format!(" {web} web "))),
        "no fence record for web on {web}"
    );

    // Nothing ever ran twice: the checker sees every start, stop and fence.
    let runs = witness::runs(&cluster.journal());
    assert!(
        runs.iter().filter(|r| r.service == "web").count() >= 2,
        "{runs:#?}"
    );
    let doubles = witness::double_runs(&runs);
    assert!(doubles.is_empty(), "double runs: {doubles:#?}");
    drop(cluster);
    drop(nodes);
}

/// D-Bus goes away on the node that runs a unit, and the unit is moved: the stop cannot
/// be confirmed, so the unit stays fenced and recorded and the cluster does not start
/// it elsewhere; once D-Bus is back, the agent reconnects, the stop is confirmed and
/// the unit moves. The checker sees no overlap.
#[test]
fn a_unit_whose_dbus_is_gone_is_kept_fenced_until_its_stop_is_confirmed() {
    if let Some(why) = container::unavailable() {
        support::skip(&format!("cannot boot systemd containers: {why}"));
        return;
    }
    let services = "\n[services.web]\nkind = \"systemd\"\nunit = \"quorate-witness.service\"\nprefer = [\"n1\"]\n";
    let mut cluster = TestCluster::with_services(3, services);
    let journal = cluster.journal().to_str().unwrap().to_owned();
    let shared = cluster.path().to_owned();
    let bin_dir = std::path::Path::new(quorate_bin())
        .parent()
        .unwrap()
        .to_owned();
    let nodes: Vec<(String, SystemdContainer)> = cluster
        .names
        .clone()
        .into_iter()
        .map(|n| {
            let units = [("quorate-witness.service", witness_unit(&n, "web", &journal))];
            let ct = SystemdContainer::boot(&units, &[shared.as_path(), bin_dir.as_path()]);
            (n, ct)
        })
        .collect();
    for (name, ct) in &nodes {
        cluster.start_with(name, &[("DBUS_SYSTEM_BUS_ADDRESS".to_owned(), ct.bus())]);
    }
    cluster.wait_agreed(&["n1", "n2", "n3"], 1);
    cluster.wait_for("web on n1", Duration::from_secs(30), || {
        cluster.service("n3", "web") == (Some("n1".into()), "running".into())
    });
    let n1 = &nodes[0].1;
    // D-Bus goes away on n1 (systemd itself keeps running the unit).
    let out = n1.systemctl(&["stop", "dbus.socket", "dbus.service"]);
    assert!(out.status.success(), "{out:?}");
    let dd = cluster.data_dir("n3");
    cluster.ok(&["move", "web", "n2", "--data-dir", dd.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(n1.is_active("quorate-witness.service"), "active");
    assert!(
        active_on(&nodes, "quorate-witness.service") == vec!["n1".to_owned()],
        "web started elsewhere while n1 could not confirm its stop"
    );
    let records = std::fs::read_to_string(cluster.data_dir("n1").join("workloads.json")).unwrap();
    assert!(
        records.contains("quorate-witness.service"),
        "the unit left n1's records: {records}"
    );
    // D-Bus is back: the stop goes through, web moves.
    let out = n1.systemctl(&["start", "dbus.socket"]);
    assert!(out.status.success(), "{out:?}");
    cluster.wait_for("web on n2", Duration::from_secs(40), || {
        cluster.service("n3", "web") == (Some("n2".into()), "running".into())
    });
    assert_eq!(
        active_on(&nodes, "quorate-witness.service"),
        vec!["n2".to_owned()]
    );
    let bad = cluster.violations();
    assert!(bad.is_empty(), "{bad:?}");
    drop(cluster);
    drop(nodes);
}
