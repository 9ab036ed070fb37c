//! A Ceph declared in the spec (`[ceph]`) and run by the nodes themselves, in the
//! fault lab: three namespace nodes on a storage network, each with private
//! /etc/ceph, /var/lib/ceph, /run/ceph and /var/log/ceph (what NixOS's `services.ceph`
//! uses). Nothing of the Ceph is set up by hand: `quorate lock` gives it its fsid and
//! OSD ids, `quorate render` each node's ceph.conf (installed where the NixOS module
//! would), and `quorate ceph bootstrap` does the rest through the nodes' shells —
//! first one monitor, one manager, two metadata servers, three (memstore) OSDs, the
//! pool `rbd`, the file system `cephfs`, the `client.quorate` keyring; then, the spec
//! grown to three monitors, the two new monitors (and managers) join the running
//! cluster. A third bootstrap changes nothing. Then quorate uses it: a writer on an RBD image of that Ceph fails
//! over on power loss of its node (which takes that node's monitor and OSD down too),
//! the node blocklisted first, every acknowledged line found.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::Duration;

use quorate_lab::cluster::{LabCluster, Options};
use quorate_lab::netns;

/// Starts daemon `{kind}` `{id}` unless its pid file names a live process (what the
/// NixOS units would do; the lab has no systemd).
const START: &str = "p=/run/ceph/ceph-{kind}.{id}.pid; if [ -s $p ] && kill -0 \"$(cat $p)\" 2>/dev/null; then exit 0; fi; ceph-{kind} -c /etc/ceph/ceph.conf -i {id}";

const CEPH_SPEC: &str = r#"
[ceph]
public_network = "10.87.0.0/24"
monitors = ["n1"]
metadata_servers = ["n1", "n2"]
filesystems = ["cephfs"]
osds = { n1 = ["memstore"], n2 = ["memstore"], n3 = ["memstore"] }
pools = { rbd = "rbd" }

[ceph.config]
"osd pool default min size" = "2"
"osd pool default pg num" = "8"
"osd pool default pgp num" = "8"
"osd pool default pg autoscale mode" = "off"
"osd crush chooseleaf type" = "0"
"mon data avail warn" = "2"
"mon data avail crit" = "1"
"mgr initial modules" = "iostat"
"memstore device bytes" = "1073741824"
"osd memory target" = "939524096"
"mds cache memory limit" = "268435456"
"pid file" = "/run/ceph/$cluster-$name.pid"
"#;

fn bootstrap(cluster: &LabCluster) -> (bool, Vec<serde_json::Value>, String) {
    let out = Command::new(support::quorate_bin())
        .args([
            "ceph",
            "bootstrap",
            "quorate.toml",
            "--json",
            "--timeout",
            "180",
        ])
        .args(["--exec", &cluster.exec_template(), "--start", START])
        .current_dir(cluster.path())
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (
        out.status.success(),
        events,
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Renders every node's files and installs its ceph.conf where NixOS would; checks the
/// fsid and the monitors it names.
fn install_ceph_conf(cluster: &LabCluster, fsid: &str, monitors: &str) {
    let dir = cluster.path();
    for node in ["n1", "n2", "n3"] {
        let out = Command::new(support::quorate_bin())
            .args(["render", "quorate.toml", "--node", node, "--out"])
            .arg(dir.join("rendered").join(node))
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.join("rendered").join(node).join("etc/ceph/ceph.conf");
        let text = std::fs::read_to_string(&conf).unwrap();
        assert!(text.contains(&format!("fsid = {fsid}")), "{text}");
        assert!(
            text.contains(&format!("mon initial members = {monitors}\n")),
            "{text}"
        );
        std::fs::copy(&conf, dir.join("gl").join(node).join("etc-ceph/ceph.conf")).unwrap();
    }
}

/// Waits for HEALTH_OK; the last `ceph -s`.
fn wait_healthy(cluster: &LabCluster) -> String {
    let mut last = String::new();
    support::wait_until(
        "the declared Ceph to report HEALTH_OK",
        Duration::from_secs(150),
        || {
            last = ceph_on(cluster, "n1", &["-s"]);
            ceph_on(cluster, "n1", &["health"]).starts_with("HEALTH_OK")
        },
    );
    last
}

/// `ceph ARGS` as client.admin on `node`.
fn ceph_on(cluster: &LabCluster, node: &str, args: &[&str]) -> String {
    let out = cluster
        .on_node(node)
        .args([
            "ceph",
            "-c",
            "/etc/ceph/ceph.conf",
            "--connect-timeout",
            "15",
        ])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_ceph_declared_in_the_spec_is_bootstrapped_by_quorate_and_serves_a_failover() {
    if support::skipped_without_ceph_lab() {
        return;
    }
    let writer = support::synced_writer("data/lines", "acks");
    let extra_spec = format!(
        "{CEPH_SPEC}\n[storage.data]\nkind = \"ceph-rbd\"\npool = \"rbd\"\nsize = \"64MiB\"\nmount = \"@DIR@/data\"\n\n[services.w]\nkind = \"process\"\ncommand = [\"/bin/sh\", \"-c\", {writer:?}]\nstorage = [\"data\"]\nprefer = [\"n2\", \"n3\", \"n1\"]\nstop_timeout = \"2s\"\n"
    );
    let mut cluster = LabCluster::new(Options {
        ceph_nodes: true,
        extra_spec,
        ..Options::new(3, support::quorate_bin(), "qlcd")
    })
    .unwrap();
    let dir = cluster.path().to_owned();
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("quorate.lock")).unwrap()).unwrap();
    let fsid = lock["ceph"]["fsid"].as_str().unwrap().to_owned();
    assert_eq!(
        lock["ceph"]["osds"]["n3"][0]["id"], 2,
        "OSD ids in node order: {lock}"
    );

    // Before the rendered config is in place, bootstrap refuses and makes nothing.
    let (ok, _, text) = bootstrap(&cluster);
    assert!(!ok, "{text}");
    assert!(text.contains("/etc/ceph/ceph.conf is missing"), "{text}");
    assert!(!dir.join("gl/n1/lib-ceph/bootstrap-quorate").exists());

    // `quorate render` writes each node's ceph.conf; it goes where NixOS puts it.
    install_ceph_conf(&cluster, &fsid, "n1");

    // One monitor first.
    let (ok, events, text) = bootstrap(&cluster);
    assert!(ok, "bootstrap failed:\n{text}");
    let summary = events.last().unwrap();
    assert_eq!(summary["fsid"], fsid.as_str(), "{text}");
    assert!(summary["changed"].as_u64().unwrap() > 10, "{text}");
    wait_healthy(&cluster);

    // The spec grows to three monitors (the lock keeps the fsid): the next bootstrap
    // makes the new monitors' stores from the running cluster's map, and they join.
    let spec_path = dir.join("quorate.toml");
    let grown = std::fs::read_to_string(&spec_path)
        .unwrap()
        .replace("monitors = [\"n1\"]", "monitors = [\"n1\", \"n2\", \"n3\"]");
    std::fs::write(&spec_path, grown).unwrap();
    let relock = Command::new(support::quorate_bin())
        .args(["lock", "quorate.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(relock.status.success(), "{relock:?}");
    install_ceph_conf(&cluster, &fsid, "n1, n2, n3");
    let (ok, events, text) = bootstrap(&cluster);
    assert!(ok, "bootstrap with more monitors failed:\n{text}");
    assert_eq!(events.last().unwrap()["fsid"], fsid.as_str(), "{text}");
    let made: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["outcome"] == "created")
        .map(|e| (e["node"].as_str().unwrap(), e["step"].as_str().unwrap()))
        .collect();
    assert_eq!(
        made,
        vec![
            ("n2", "monitor store"),
            ("n3", "monitor store"),
            ("n2", "manager key"),
            ("n3", "manager key"),
        ],
        "only the new monitors and managers were made: {text}"
    );
    // The cluster is healthy: every monitor in quorum, every OSD up, the pool and the
    // file system there (a standby MDS keeps CephFS from warning).
    let last = wait_healthy(&cluster);
    let status: serde_json::Value =
        serde_json::from_str(&ceph_on(&cluster, "n2", &["-s", "-f", "json"])).unwrap();
    assert_eq!(status["fsid"], fsid.as_str(), "{last}");
    assert_eq!(
        status["quorum_names"].as_array().unwrap().len(),
        3,
        "{last}"
    );
    assert_eq!(status["osdmap"]["num_up_osds"], 3, "{last}");
    assert!(ceph_on(&cluster, "n3", &["osd", "pool", "ls"]).contains("rbd"));
    assert!(ceph_on(&cluster, "n3", &["fs", "ls"]).contains("cephfs"));

    // Again: nothing to do, nothing changed.
    let (ok, events, text) = bootstrap(&cluster);
    assert!(ok, "second bootstrap failed:\n{text}");
    assert_eq!(events.last().unwrap()["changed"], 0, "{text}");
    let again: serde_json::Value =
        serde_json::from_str(&ceph_on(&cluster, "n2", &["-s", "-f", "json"])).unwrap();
    assert_eq!(again["osdmap"]["num_osds"], 3, "no OSD was added: {again}");

    // quorate uses it: a writer on an RBD image fails over when its node loses power
    // (with that node's monitor and OSD).
    cluster.start_all(Duration::from_secs(120)).unwrap();
    support::wait_until("10 acknowledged writes", Duration::from_secs(90), || {
        support::acks(&dir).len() >= 10
    });
    let first = cluster.host_of("w").unwrap();
    assert_eq!(first, "n2", "w prefers n2");
    cluster.poweroff(&first).unwrap();
    let acknowledged = support::acks(&dir);
    let second = support::wait_moved(&cluster, "w", &first, Duration::from_secs(120));
    let blocklist = ceph_on(&cluster, &second, &["osd", "blocklist", "ls"]);
    assert!(
        blocklist.contains(&format!("{}:0/0", netns::Network::storage_address(2))),
        "{blocklist}"
    );
    let before = support::acks(&dir).len();
    support::wait_until(
        "10 more writes on the new node",
        Duration::from_secs(90),
        || support::acks(&dir).len() >= before + 10,
    );
    support::assert_acknowledged_in(&cluster, &second, "data/lines", &acknowledged);
}
