//! A real 3-node GlusterFS in the fault lab: each node is a network namespace with its
//! own mount namespace (private glusterd state, /run and brick directory) running its
//! own glusterd, and the agent inside both. The leader creates and starts the replica-3
//! volume; a writer service mounts it (FUSE) and appends numbered lines, recording each
//! one it has synced (its acknowledgement) on the host. The writer's node loses power;
//! the service resumes on another node, which finds every acknowledged line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::Duration;

use quorate_lab::cluster::{LabCluster, Options};
use quorate_lab::netns;

#[test]
fn a_gluster_volume_follows_its_service_and_keeps_every_acknowledged_write() {
    follows_its_service("qltg", false);
}

/// The same over the WireGuard mesh: peers and bricks on overlay addresses, and a
/// capture of the underlay finds no GlusterFS (or any other) traffic in clear.
#[test]
fn over_wireguard_the_volume_replicates_through_the_tunnels_only() {
    if Command::new("wireguard-go")
        .arg("--version")
        .output()
        .is_err()
        || Command::new("tcpdump").arg("--version").output().is_err()
    {
        support::skip("wireguard-go or tcpdump is not installed (scripts/test.sh installs them)");
        return;
    }
    follows_its_service("qltw", true);
}

fn follows_its_service(prefix: &str, wireguard: bool) {
    if let Some(why) = netns::unavailable() {
        support::skip(&format!("the lab needs network namespaces: {why}"));
        return;
    }
    if Command::new("glusterd").arg("--version").output().is_err() {
        support::skip("glusterd is not installed (apt-get install glusterfs-server glusterfs-client; scripts/test.sh does this)");
        return;
    }
    let writer = support::synced_writer("media/data", "acks");
    let extra_spec = format!(
        "\n[storage.media]\nkind = \"gluster\"\nnodes = [\"n1\", \"n2\", \"n3\"]\nbrick = \"@DIR@/brick\"\nmount = \"@DIR@/media\"\n\n[services.w]\nkind = \"process\"\ncommand = [\"/bin/sh\", \"-c\", {writer:?}]\nstorage = [\"media\"]\nstop_timeout = \"2s\"\n"
    );
    let mut cluster = LabCluster::new(Options {
        gluster: true,
        wireguard,
        extra_spec,
        ..Options::new(3, support::quorate_bin(), prefix)
    })
    .unwrap();
    let dir = cluster.path().to_owned();
    let capture = wireguard
        .then(|| support::capture::Capture::start(&cluster.net.switch, &dir.join("underlay.pcap")));
    cluster.start_all(Duration::from_secs(120)).unwrap();
    support::wait_until("10 acknowledged writes", Duration::from_secs(60), || {
        support::acks(&dir).len() >= 10
    });

    let host = cluster.host_of("w").unwrap();
    // status shows the volume attached where w runs, and every brick online.
    support::wait_until(
        "storage health from every node",
        Duration::from_secs(60),
        || {
            let Some(status) = cluster.quorate_status() else {
                return false;
            };
            let media = &status["storage"][0];
            media["attached_on"] == host.as_str()
                && ["n1", "n2", "n3"].iter().all(|n| {
                    media["health"][n]
                        .as_str()
                        .is_some_and(|h| h.starts_with("brick online"))
                })
        },
    );
    cluster.poweroff(&host).unwrap();
    let acknowledged: Vec<u64> = support::acks(&dir);
    let moved = support::wait_moved(&cluster, "w", &host, Duration::from_secs(60));
    let before = acknowledged.len();
    support::wait_until(
        "10 more writes on the new node",
        Duration::from_secs(60),
        || support::acks(&dir).len() >= before + 10,
    );

    // Read the volume as the new node sees it: every acknowledged line is there.
    support::assert_acknowledged_in(&cluster, &moved, "media/data", &acknowledged);
    // The new writer continued the sequence from the data it found.
    assert!(support::acks(&dir)
        .iter()
        .skip(before)
        .all(|n| *n as usize > before - 1));

    if let Some(capture) = capture {
        let pcap = capture.stop();
        support::capture::assert_only_wireguard(&pcap, &dir, 100);
    }
    drop(cluster);
    assert!(netns::namespaces(prefix).is_empty());
    assert!(!dir.exists());
}
