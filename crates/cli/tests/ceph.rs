//! Ceph storage in the fault lab, against a real Ceph (1 mon, 1 mgr, 3 memstore OSDs,
//! 1 MDS) on a storage network of its own. Two writer services append numbered lines
//! and record each line once it is synced (its acknowledgement) on the host: `w` to a
//! file on an ext4 filesystem on an RBD image (created by quorate on first use, mapped
//! with rbd-fuse + loop here: this kernel has no rbd or nbd module), `f` to a file on
//! CephFS (ceph-fuse here). Both prefer n1, then n2, then n3, so both face both faults.
//!
//! Power loss of their node: before they start elsewhere, the leader blocklists the
//! node's storage address; the new node finds every acknowledged line of both, and
//! `status` names it as the image's exclusive-lock owner. The node powers back on and
//! rejoins cleanly: its blocklist entry is removed. Then a partition: their node is cut
//! from the cluster network but still reaches Ceph — exactly the node that could keep
//! writing. It is blocklisted before they start elsewhere, and a write from it to the
//! image and to the CephFS data pool fails. Last, quorate's client loses the right to
//! blocklist and the writers' node loses power: the writers stay down (nothing runs
//! them elsewhere) until the right is back and the node is blocklisted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use quorate_lab::cluster::{LabCluster, Options};
use quorate_lab::netns;

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

/// Every line acknowledged in `<dir>/acks-rbd` is in the RBD file, every one in
/// `<dir>/acks-fs` in the CephFS file, as `node` sees them.
fn assert_acknowledged_found(cluster: &LabCluster, node: &str, acknowledged: &Acks) {
    support::assert_acknowledged_in(cluster, node, "data/lines", &acknowledged.rbd);
    support::assert_acknowledged_in(cluster, node, "shared/lines", &acknowledged.fs);
}

/// What the two writers acknowledged.
struct Acks {
    rbd: Vec<u64>,
    fs: Vec<u64>,
}

fn acks(dir: &std::path::Path) -> Acks {
    Acks {
        rbd: support::acks_in(dir, "acks-rbd"),
        fs: support::acks_in(dir, "acks-fs"),
    }
}

/// Waits until both writers acknowledged 10 more lines than in `before`.
fn wait_both_write(dir: &std::path::Path, before: &Acks, what: &str) {
    support::wait_until(what, Duration::from_secs(90), || {
        let now = acks(dir);
        now.rbd.len() >= before.rbd.len() + 10 && now.fs.len() >= before.fs.len() + 10
    });
}

/// Waits until both services run on one node other than `old`; that node.
fn wait_both_moved(cluster: &LabCluster, old: &str) -> String {
    let to = support::wait_moved(cluster, "w", old, Duration::from_secs(90));
    let f = support::wait_moved(cluster, "f", old, Duration::from_secs(90));
    assert_eq!(to, f, "both prefer the same next node");
    to
}

/// The image's health as `node` reports it in `status` (mapping, lock owner).
fn rbd_health(cluster: &LabCluster, node: &str) -> String {
    let status = cluster.quorate_status().unwrap_or_default();
    status["storage"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "data"))
        .and_then(|s| s["health"][node].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// `status` names the client at `node`'s storage address as the exclusive-lock owner.
fn wait_lock_owner(cluster: &LabCluster, node: &str) {
    let address = format!(" at {}:0/", storage_address(node));
    support::wait_until(
        &format!("status to show {node} holding the image's exclusive lock"),
        Duration::from_secs(60),
        || {
            let h = rbd_health(cluster, node);
            h.contains("exclusive lock held by: client.") && h.contains(&address)
        },
    );
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
    if support::skipped_without_ceph_lab() {
        return;
    }
    // `w` writes to the RBD filesystem, `f` to CephFS; a line is acknowledged once
    // it is synced.
    let (w, f) = (
        support::synced_writer("data/lines", "acks-rbd"),
        support::synced_writer("shared/lines", "acks-fs"),
    );
    let extra_spec = format!(
        "\n[storage.data]\nkind = \"ceph-rbd\"\npool = \"rbd\"\nsize = \"64MiB\"\nmount = \"@DIR@/data\"\nceph_config = \"@CEPH@/ceph.conf\"\nceph_keyring = \"@CEPH@/keyring/ceph.client.quorate.keyring\"\nceph_client = \"quorate\"\n\n[storage.shared]\nkind = \"cephfs\"\npath = \"/\"\nmount = \"@DIR@/shared\"\nceph_config = \"@CEPH@/ceph.conf\"\nceph_keyring = \"@CEPH@/keyring/ceph.client.quorate.keyring\"\n\n[services.w]\nkind = \"process\"\ncommand = [\"/bin/sh\", \"-c\", {w:?}]\nstorage = [\"data\"]\nprefer = [\"n1\", \"n2\", \"n3\"]\nstop_timeout = \"2s\"\n\n[services.f]\nkind = \"process\"\ncommand = [\"/bin/sh\", \"-c\", {f:?}]\nstorage = [\"shared\"]\nprefer = [\"n1\", \"n2\", \"n3\"]\nstop_timeout = \"2s\"\n"
    );
    let mut cluster = LabCluster::new(Options {
        ceph: true,
        extra_spec,
        ..Options::new(3, support::quorate_bin(), "qlce")
    })
    .unwrap();
    let dir = cluster.path().to_owned();
    cluster.start_all(Duration::from_secs(120)).unwrap();
    wait_both_write(&dir, &acks(&dir), "10 acknowledged writes of each writer");
    let image = cluster.ceph().unwrap().rbd(&["info", "rbd/data"]).unwrap();
    assert!(image.contains("exclusive-lock"), "{image}");
    let first = cluster.host_of("w").unwrap();
    assert_eq!(cluster.host_of("f"), Some(first.clone()), "both prefer n1");
    wait_lock_owner(&cluster, &first);

    // 1. Power loss.
    cluster.poweroff(&first).unwrap();
    let acknowledged = acks(&dir);
    let second = wait_both_moved(&cluster, &first);
    let entry = format!("{}:0/0", storage_address(&first));
    assert!(
        blocklisted(&cluster).contains(&entry),
        "{first} is not blocklisted: {}",
        blocklisted(&cluster)
    );
    // The moves' events say the node was blocklisted first.
    let events = events_seen_by(&cluster, &second);
    assert!(
        events.contains(&format!("({first} on the Ceph blocklist first)")),
        "{events}"
    );
    let status = cluster.quorate_status().unwrap();
    for storage in status["storage"].as_array().unwrap() {
        assert!(
            storage["blocklisted"].as_array().is_some_and(|b| b
                .iter()
                .any(|e| e.as_str() == Some(&format!("{first} {entry}")))),
            "status shows the blocklist entry: {storage}",
        );
    }
    wait_both_write(&dir, &acks(&dir), "10 more writes of each on the new node");
    assert_acknowledged_found(&cluster, &second, &acknowledged);
    wait_lock_owner(&cluster, &second);

    // It comes back and rejoins cleanly: its entry goes.
    cluster.power_on(&first).unwrap();
    support::wait_until(
        "the returning node's blocklist entry removed",
        Duration::from_secs(90),
        || !blocklisted(&cluster).contains(&entry),
    );

    // 2. Partition: the writers' node loses the cluster network, not Ceph.
    cluster.link(&second, false).unwrap();
    let acknowledged = acks(&dir);
    let third = wait_both_moved(&cluster, &second);
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
    // Late writes from the cut-off node fail: to the image and to CephFS's data pool.
    let ceph = cluster.ceph().unwrap();
    let client = |program: &str| {
        let mut c = cluster.on_node(&second);
        c.args(["timeout", "40", program, "-c"])
            .arg(ceph.conf())
            .arg("--keyring")
            .arg(ceph.keyring("quorate"))
            .args(["--id", "quorate"]);
        c
    };
    let late_rbd = client("rbd")
        .args(["bench", "--io-type", "write", "--io-size", "4K"])
        .args(["--io-total", "64K", "rbd/data"])
        .output()
        .unwrap();
    assert!(
        !late_rbd.status.success(),
        "a write to the image from the blocklisted node went through: {}",
        String::from_utf8_lossy(&late_rbd.stdout)
    );
    let late_fs = client("rados")
        .args([
            "-p",
            "cephfs.cephfs.data",
            "put",
            "late-write",
            "/etc/hostname",
        ])
        .output()
        .unwrap();
    assert!(
        !late_fs.status.success(),
        "a write to the CephFS data pool from the blocklisted node went through: {}",
        String::from_utf8_lossy(&late_fs.stdout)
    );
    wait_both_write(
        &dir,
        &acks(&dir),
        "10 more writes of each after the partition",
    );
    assert_acknowledged_found(&cluster, &third, &acknowledged);
    wait_lock_owner(&cluster, &third);
    cluster.link(&second, true).unwrap();
    support::wait_until(
        "the healed node's blocklist entry removed",
        Duration::from_secs(90),
        || !blocklisted(&cluster).contains(&entry),
    );

    // 3. Storage fencing that cannot happen: quorate's client loses the right to
    // blocklist, and the writers' node loses power. Their leases run out, but nothing
    // may start them elsewhere while the node cannot be fenced at the storage layer.
    cluster
        .ceph()
        .unwrap()
        .allow_quorate_blocklisting(false)
        .unwrap();
    cluster.poweroff(&third).unwrap();
    let frozen = acks(&dir);
    let logs = || {
        cluster
            .names
            .iter()
            .map(|n| std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default())
            .collect::<String>()
    };
    support::wait_until(
        "the leader to fail to blocklist the lost node",
        Duration::from_secs(60),
        || logs().contains("Ceph blocklisting failed"),
    );
    // Well past the lease (1.5 s) and several retries.
    std::thread::sleep(Duration::from_secs(12));
    for service in ["w", "f"] {
        let host = cluster.host_of(service);
        assert!(
            host.is_none() || host.as_deref() == Some(third.as_str()),
            "{service} moved to {host:?} without {third} on the Ceph blocklist"
        );
    }
    let now = acks(&dir);
    assert_eq!(
        (now.rbd.len(), now.fs.len()),
        (frozen.rbd.len(), frozen.fs.len()),
        "no writer ran anywhere while {third} could not be fenced"
    );
    // The right is back: the node is blocklisted, then the writers move.
    cluster
        .ceph()
        .unwrap()
        .allow_quorate_blocklisting(true)
        .unwrap();
    let fourth = wait_both_moved(&cluster, &third);
    assert!(
        blocklisted(&cluster).contains(&format!("{}:0/0", storage_address(&third))),
        "{}",
        blocklisted(&cluster)
    );
    wait_both_write(&dir, &now, "10 more writes of each once fencing worked");
    assert_acknowledged_found(&cluster, &fourth, &now);
}
