//! The WireGuard mesh in the fault lab: three network namespaces, each with its own
//! key (`quorate wg keygen`), its mesh interface (`quorate net up`; wireguard-go, as
//! this kernel has no WireGuard module) and its agent bound to its overlay address.
//! The cluster forms over the tunnels, fails over on power loss and on a partition of
//! the overlay alone (cable up, tunnel down), and a capture on the switch shows that
//! nothing but WireGuard's UDP crossed the underlay between nodes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use quorate_lab::checker;
use quorate_lab::cluster::{LabCluster, Options};
use quorate_lab::netns;
use support::capture::{self, Capture};

const LIMIT: Duration = Duration::from_secs(60);

/// Why the WireGuard lab cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if let Some(why) = netns::unavailable() {
        return Some(format!("the lab needs network namespaces: {why}"));
    }
    for (tool, package) in [
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        ("tcpdump", "tcpdump"),
    ] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!(
                "{tool} is not installed (apt-get install {package}; scripts/test.sh does this)"
            ));
        }
    }
    None
}

fn options(prefix: &str, services: usize) -> Options {
    Options {
        services,
        wireguard: true,
        ..Options::new(3, support::quorate_bin(), prefix)
    }
}

/// Waits until `service` started on a node other than `host` after `t0`; returns it.
fn moved_from(cluster: &LabCluster, service: &str, host: &str, t0: u64) -> String {
    let started = Instant::now();
    loop {
        if let Some((_, node)) = cluster.started_elsewhere(service, host, t0) {
            return node;
        }
        assert!(
            started.elapsed() < LIMIT,
            "{service} did not start elsewhere than {host}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_cluster_over_wireguard_forms_fails_over_and_only_tunnel_packets_cross_the_underlay() {
    if let Some(why) = unavailable() {
        support::skip(&why);
        return;
    }
    let mut cluster = LabCluster::new(options("qlwg", 2)).unwrap();
    let dir = cluster.path().to_owned();
    let pcap = dir.join("underlay.pcap");
    let capture = Capture::start(&cluster.net.switch, &pcap);
    let from = checker::mono_ns();
    cluster.start_all(LIMIT).unwrap();

    // Every agent listens on its overlay address, and `status` shows live tunnels.
    let log = std::fs::read_to_string(dir.join("n1.log")).unwrap();
    assert!(
        log.contains("addr=10.89.0."),
        "n1 binds its overlay address:\n{log}"
    );
    let status = cluster.status("n2").unwrap();
    let mesh = &status["wireguard"];
    assert_eq!(mesh["node"], "n2", "{status:#}");
    let peers = mesh["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{mesh:#}");
    assert!(
        peers.iter().all(|p| p["fresh"] == true),
        "every tunnel had a handshake: {mesh:#}"
    );

    // Power loss of s1's host: s1 runs elsewhere; the node comes back into the mesh.
    let host = cluster.host_of("s1").unwrap();
    let t0 = checker::mono_ns();
    cluster.poweroff(&host).unwrap();
    let new_host = moved_from(&cluster, "s1", &host, t0);
    cluster.power_on(&host).unwrap();
    cluster.wait_healthy(LIMIT).unwrap();

    // The overlay alone partitioned: the cable stays up (the node still answers on the
    // underlay), the tunnel is down; that is a partition like any other.
    let t1 = checker::mono_ns();
    cluster.tunnel(&new_host, false).unwrap();
    let ping = cluster
        .on_node(&new_host)
        .args(["arping", "-c1", "-w2", "-I", "eth0", "10.88.0.254"])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "the underlay of {new_host} is still up"
    );
    let third = moved_from(&cluster, "s1", &new_host, t1);
    assert_ne!(third, new_host);
    cluster.tunnel(&new_host, true).unwrap();
    cluster.wait_healthy(LIMIT).unwrap();

    let verdict = cluster.verdict(from);
    assert!(
        verdict.ok(),
        "{}",
        serde_json::to_string_pretty(&verdict).unwrap()
    );

    // The underlay carried the cluster's traffic, all of it inside WireGuard.
    let pcap = capture.stop();
    assert_eq!(
        capture::wireguard_ports(&dir).len(),
        3,
        "one WireGuard port per node in the lock"
    );
    capture::assert_only_wireguard(&pcap, &dir, 100);
    drop(cluster);
    assert!(netns::namespaces("qlwg").is_empty());
    assert!(!dir.exists());
}

#[test]
fn without_wireguard_the_same_capture_sees_raft_in_clear() {
    // The capture check above can fail: on a direct cluster it finds the TCP of Raft.
    if let Some(why) = unavailable() {
        support::skip(&why);
        return;
    }
    let mut direct = options("qlwd", 1);
    direct.wireguard = false;
    let mut cluster = LabCluster::new(direct).unwrap();
    let pcap = cluster.path().join("underlay.pcap");
    let capture = Capture::start(&cluster.net.switch, &pcap);
    cluster.start_all(LIMIT).unwrap();
    let pcap = capture.stop();
    let clear = capture::in_clear(&pcap, &[51820, 51821, 51822]);
    assert!(
        clear.iter().any(|p| p.contains(".7400")),
        "Raft on port 7400 in clear: {:?}",
        clear.iter().take(5).collect::<Vec<_>>()
    );
}

/// Whether every node other than `target` has a handshake with `target` under the key
/// the applied spec gives it.
fn all_shook_hands_with(cluster: &LabCluster, target: &str) -> bool {
    ["n1", "n2", "n3"]
        .iter()
        .filter(|n| **n != target)
        .all(|n| {
            cluster.status(n).is_some_and(|s| {
                s["wireguard"]["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["node"] == target && p["handshake_age_s"].is_u64())
            })
        })
}

#[test]
fn keys_rotate_a_followers_then_the_leaders_without_an_election() {
    if let Some(why) = unavailable() {
        support::skip(&why);
        return;
    }
    let mut cluster = LabCluster::new(options("qlwr", 1)).unwrap();
    let from = checker::mono_ns();
    cluster.start_all(LIMIT).unwrap();
    let before = cluster.quorate_status().unwrap();
    let leader = before["leader"].as_str().unwrap().to_owned();
    let host = cluster.host_of("s1").unwrap();
    let follower = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap()
        .to_owned();
    for target in [follower, leader.clone()] {
        let via = ["n1", "n2", "n3"]
            .into_iter()
            .find(|n| *n != target)
            .unwrap();
        let key = cluster.rotate_key(&target, via).unwrap();
        let data_dir = cluster.data_dir(&target);
        wait_rotated(&cluster, &target, &key);
        let private = std::fs::read_to_string(data_dir.join("wireguard.key")).unwrap();
        let public = Command::new("wg")
            .arg("pubkey")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(private.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&public.stdout).trim(),
            key,
            "{target} uses the new key"
        );
        cluster.wait_healthy(LIMIT).unwrap();
    }
    // No election: the same leader in the same term, quorum all along; s1 never moved.
    let after = cluster.quorate_status().unwrap();
    assert_eq!(after["leader"], leader.as_str(), "{after:#}");
    assert_eq!(
        after["term"], before["term"],
        "no election during the rotations"
    );
    assert_eq!(cluster.host_of("s1").as_deref(), Some(host.as_str()));

    // A node that sleeps through its own rotation: when it wakes, its peers know only
    // the new key and it knows only the old spec; it finds its way back by trying the
    // pending key once it hears from no leader.
    let sleeper = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader && *n != host)
        .unwrap_or_else(|| {
            ["n1", "n2", "n3"]
                .into_iter()
                .find(|n| *n != leader)
                .unwrap()
        });
    cluster.pause(sleeper, true);
    let key = cluster.rotate_key(sleeper, &leader).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    cluster.pause(sleeper, false);
    wait_rotated(&cluster, sleeper, &key);
    cluster.wait_healthy(LIMIT).unwrap();
    let verdict = cluster.verdict(from);
    assert!(
        verdict.ok(),
        "{}",
        serde_json::to_string_pretty(&verdict).unwrap()
    );
}

/// Waits until `target`'s rotation to `key` is done: no next key pending in its data
/// dir, and every other node had a handshake with it under the key the spec declares.
fn wait_rotated(cluster: &LabCluster, target: &str, key: &str) {
    let t0 = Instant::now();
    loop {
        let pending = cluster.data_dir(target).join("wireguard.key.next").exists();
        if !pending && all_shook_hands_with(cluster, target) {
            return;
        }
        assert!(
            t0.elapsed() < LIMIT,
            "{target}'s new key {key} did not take over (next key pending: {pending}): {:#}",
            cluster.quorate_status().unwrap_or_default()["wireguard"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
