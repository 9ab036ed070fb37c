//! The agent speaks systemd's notify protocol (`Type=notify` in the NixOS module): the
//! test plays systemd, with its own NOTIFY_SOCKET and WATCHDOG_USEC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::{processes_with_env, TestCluster};

/// Receives notify datagrams until `done` holds for one of them; returns all of them.
fn receive_until(
    socket: &UnixDatagram,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let finished = done(&message);
            seen.push(message);
            if finished {
                return seen;
            }
        }
    }
    panic!("no matching notification within {limit:?}; got {seen:?}");
}

fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid …: comm may hold spaces, so split after ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

#[test]
fn ready_status_watchdog_and_stopping_reach_systemd() {
    let mut cluster =
        TestCluster::with_services(3, &TestCluster::demo_service("web", "prefer = [\"n1\"]"));
    let path = cluster.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let notify_var = format!("NOTIFY_SOCKET={}", path.display());
    cluster.env = vec![
        ("NOTIFY_SOCKET".into(), path.to_str().unwrap().into()),
        ("WATCHDOG_USEC".into(), "400000".into()),
    ];

    // Alone, n1 cannot reach quorum: it still becomes ready (so a booting node's unit
    // does not fail) and says why in STATUS.
    cluster.start("n1");
    let first = receive_until(&socket, Duration::from_secs(30), |m| m.contains("READY=1"));
    let ready = first.last().unwrap();
    assert!(
        ready.contains("STATUS=waiting for quorum in cluster test"),
        "{ready}"
    );
    assert!(
        first.iter().any(|m| m.contains("WATCHDOG=1")),
        "no watchdog ping before ready: {first:?}"
    );

    // The other two join (without systemd): n1's status changes to member.
    cluster.env.clear();
    cluster.start("n2");
    cluster.start("n3");
    let joined = receive_until(&socket, Duration::from_secs(30), |m| {
        m.contains("STATUS=member of cluster test; leader n")
    });
    assert!(
        !joined.iter().any(|m| m.contains("READY=1")),
        "READY sent twice: {joined:?}"
    );

    // Pings keep coming at half the interval (200 ms): at least 3 in 1.5 s, and
    // nothing else than pings and status lines.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let mut buf = [0u8; 4096];
        if let Ok(n) = socket.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]);
            assert!(m.contains("WATCHDOG=1") || m.contains("STATUS="), "{m}");
            pings += usize::from(m.contains("WATCHDOG=1"));
        }
    }
    assert!(pings >= 3, "only {pings} watchdog pings in 1.5 s");

    // The agent's children (fence, the web workload) do not inherit the unit's socket.
    cluster.wait_running_elsewhere("n1", "web", None);
    let agent = cluster.pid("n1").unwrap();
    assert!(
        !children_of(agent).is_empty(),
        "n1's agent has no fence or workload child"
    );
    assert_eq!(processes_with_env(&notify_var), vec![agent]);

    cluster.signal("n1", "-TERM");
    receive_until(&socket, Duration::from_secs(10), |m| {
        m.contains("STOPPING=1")
    });
}
