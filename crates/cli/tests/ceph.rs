//! Ceph storage in the fault lab, against a real Ceph (1 mon, 1 mgr, 3 memstore OSDs,
//! 1 MDS) on a storage network of its own. A writer service appends numbered lines to
//! a file on an ext4 filesystem on an RBD image (created by quorate on first use,
//! mapped with rbd-fuse + loop here: this kernel has no rbd or nbd module) and to a
//! file on CephFS (ceph-fuse here), recording each line it has synced to both (its
//! acknowledgement) on the host.
//!
//! Power loss of the writer's node: before the service starts elsewhere, the leader
//! blocklists the node's storage address; the new node finds every acknowledged line.
//! The node powers back on and rejoins cleanly: its blocklist entry is removed. Then a
//! partition: the writer's node is cut from the cluster network but still reaches Ceph
//! — exactly the node that could keep writing. It is blocklisted before the service
//! starts elsewhere, and a write from it to the image fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use quorate_lab::cluster::{LabCluster, Options};
use quorate_lab::{ceph, netns};

fn blocklisted(cluster: &LabCluster) -> String {
    cluster
        .ceph()
        .unwrap()
        .admin(&["osd", "blocklist", "ls"])
        .unwrap_or_default()
}

fn storage_address(node: &str) -> String {
    let i: usize = node.trim_start_matches('n').parse().unwrap();
    netns::Network::storage_address(i)
}

/// Every acknowledged line is in both files (RBD and CephFS) as `node` sees them.
fn assert_acknowledged_found(cluster: &LabCluster, node: &str, acknowledged: &[u64]) {
    for file in ["data/lines", "shared/lines"] {
        support::assert_acknowledged_in(cluster, node, file, acknowledged);
    }
}

/// The cluster's events as `node`'s agent tells them (JSON).
fn events_seen_by(cluster: &LabCluster, node: &str) -> String {
    let out = std::process::Command::new(support::quorate_bin())
        .args(["events", "--json", "--data-dir"])
        .arg(cluster.data_dir(node))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_rbd_image_follows_its_service_and_a_lost_node_is_blocklisted_first() {
    if let Some(why) = netns::unavailable() {
        support::skip(&format!("the lab needs network namespaces: {why}"));
        return;
    }
    if let Some(why) = ceph::unavailable() {
        support::skip(&why);
        return;
    }
    // Each line goes to the RBD filesystem and to CephFS; it is acknowledged once both
    // are synced.
    let writer = "i=$(cat @DIR@/data/lines 2>/dev/null | wc -l); while :; do i=$((i+1)); echo $i >> @DIR@/data/lines && sync @DIR@/data/lines && echo $i >> @DIR@/shared/lines && sync @DIR@/shared/lines && echo $i >> @DIR@/acks; sleep 0.1; done";
    let extra_spec = format!(
        "\n[storage.data]\nkind = \"ceph-rbd\"\npool = \"rbd\"\nsize = \"64MiB\"\nmount = \"@DIR@/data\"\nceph_config = \"@CEPH@/ceph.conf\"\nceph_keyring = \"@CEPH@/keyring/ceph.client.quorate.keyring\"\nceph_client = \"quorate\"\n\n[storage.shared]\nkind = \"cephfs\"\npath = \"/\"\nmount = \"@DIR@/shared\"\nceph_config = \"@CEPH@/ceph.conf\"\nceph_keyring = \"@CEPH@/keyring/ceph.client.quorate.keyring\"\n\n[services.w]\nkind = \"process\"\ncommand = [\"/bin/sh\", \"-c\", {writer:?}]\nstorage = [\"data\", \"shared\"]\nstop_timeout = \"2s\"\n"
    );
    let mut cluster = LabCluster::new(Options {
        nodes: 3,
        services: 0,
        voters: None,
        quorate: support::quorate_bin().into(),
        env: Vec::new(),
        prefix: "qlce".into(),
        gluster: false,
        wireguard: false,
        nix_stores: false,
        ceph: true,
        extra_spec,
    })
    .unwrap();
    let dir = cluster.path().to_owned();
    cluster.start_all(Duration::from_secs(120)).unwrap();
    support::wait_until("10 acknowledged writes", Duration::from_secs(90), || {
        support::acks(&dir).len() >= 10
    });
    let image = cluster.ceph().unwrap().rbd(&["info", "rbd/data"]).unwrap();
    assert!(image.contains("exclusive-lock"), "{image}");

    // 1. Power loss.
    let first = cluster.host_of("w").unwrap();
    cluster.poweroff(&first).unwrap();
    let acknowledged = support::acks(&dir);
    let second = support::wait_moved(&cluster, "w", &first, Duration::from_secs(90));
    let entry = format!("{}:0/0", storage_address(&first));
    assert!(
        blocklisted(&cluster).contains(&entry),
        "{first} is not blocklisted: {}",
        blocklisted(&cluster)
    );
    // The move's event says the node was blocklisted first.
    let events = events_seen_by(&cluster, &second);
    assert!(
        events.contains(&format!("({first} on the Ceph blocklist first)")),
        "{events}"
    );
    let status = cluster.quorate_status().unwrap();
    assert!(
        status["storage"][0]["blocklisted"]
            .as_array()
            .is_some_and(|b| b
                .iter()
                .any(|e| e.as_str() == Some(&format!("{first} {entry}")))),
        "status shows the blocklist entry: {}",
        status["storage"]
    );
    let before = support::acks(&dir).len();
    support::wait_until(
        "10 more writes on the new node",
        Duration::from_secs(60),
        || support::acks(&dir).len() >= before + 10,
    );
    assert_acknowledged_found(&cluster, &second, &acknowledged);

    // It comes back and rejoins cleanly: its entry goes.
    cluster.power_on(&first).unwrap();
    support::wait_until(
        "the returning node's blocklist entry removed",
        Duration::from_secs(90),
        || !blocklisted(&cluster).contains(&entry),
    );

    // 2. Partition: the writer's node loses the cluster network, not Ceph.
    cluster.link(&second, false).unwrap();
    let acknowledged = support::acks(&dir);
    let third = support::wait_moved(&cluster, "w", &second, Duration::from_secs(90));
    let entry = format!("{}:0/0", storage_address(&second));
    assert!(
        blocklisted(&cluster).contains(&entry),
        "{second} is not blocklisted: {}",
        blocklisted(&cluster)
    );
    let events = events_seen_by(&cluster, &third);
    assert!(
        events.contains(&format!("({second} on the Ceph blocklist first)")),
        "{events}"
    );
    // A late write from the cut-off node fails.
    let ceph = cluster.ceph().unwrap();
    let late = cluster
        .on_node(&second)
        .args(["timeout", "40", "rbd", "-c"])
        .arg(ceph.conf())
        .arg("--keyring")
        .arg(ceph.keyring("quorate"))
        .args([
            "--id",
            "quorate",
            "bench",
            "--io-type",
            "write",
            "--io-size",
            "4K",
        ])
        .args(["--io-total", "64K", "rbd/data"])
        .output()
        .unwrap();
    assert!(
        !late.status.success(),
        "a write from the blocklisted node went through: {}",
        String::from_utf8_lossy(&late.stdout)
    );
    let before = support::acks(&dir).len();
    support::wait_until(
        "10 more writes after the partition",
        Duration::from_secs(60),
        || support::acks(&dir).len() >= before + 10,
    );
    assert_acknowledged_found(&cluster, &third, &acknowledged);
    cluster.link(&second, true).unwrap();
    support::wait_until(
        "the healed node's blocklist entry removed",
        Duration::from_secs(90),
        || !blocklisted(&cluster).contains(&entry),
    );
}
