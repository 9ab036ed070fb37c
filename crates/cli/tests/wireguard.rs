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
        nodes: 3,
        services,
        voters: None,
        quorate: support::quorate_bin().into(),
        env: Vec::new(),
        prefix: prefix.to_owned(),
        gluster: false,
        wireguard: true,
        extra_spec: String::new(),
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
    let ports = capture::wireguard_ports(&dir);
    assert_eq!(ports.len(), 3, "one WireGuard port per node in the lock");
    let all = capture::packets(&pcap, capture::NODE_TO_NODE);
    let clear = capture::in_clear(&pcap, &ports);
    assert!(
        all.len() > 100,
        "node-to-node traffic was captured ({} packets)",
        all.len()
    );
    assert!(
        clear.is_empty(),
        "{} node-to-node packets outside WireGuard, e.g.:\n{}",
        clear.len(),
        clear
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
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
