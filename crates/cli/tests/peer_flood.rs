//! What an attacker costs an agent: thousands of idle TCP connections and stalled TLS
//! handshakes from strangers' addresses, and oversized frames and report floods from
//! a member's stolen certificate. Leases, failover and memory must not care.
//! Real agents on loopback; the attacker runs in this process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate_consensus::{kinds, PeerReply};
use quorate_net::{Partition, PeerClient};
use support::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Keeps `count` connections from `sources` open to `to`, reopening each one the
/// server closes; with `hello`, each sends the first bytes of a TLS ClientHello and
/// stalls. Stops when `stop` is set; counts reconnections.
async fn hold_open(
    sources: Vec<IpAddr>,
    count: usize,
    to: SocketAddr,
    hello: bool,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let source = sources[i % sources.len()];
        let (stop, opened) = (stop.clone(), opened.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                    return;
                };
                if socket.bind(SocketAddr::new(source, 0)).is_err() {
                    return;
                }
                let Ok(Ok(mut tcp)) =
                    tokio::time::timeout(Duration::from_secs(2), socket.connect(to)).await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                if hello {
                    // TLS record header + the start of a ClientHello, then nothing.
                    let _ = tcp
                        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
                        .await;
                }
                // Wait until the server closes it (or the test ends), then reopen.
                let mut buf = [0_u8; 64];
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let read =
                        tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await;
                    if let Ok(Ok(0) | Err(_)) = read {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Raises this process's open-file limit for the attacker's sockets.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536), hard).unwrap();
}

fn addresses(third: u8, count: u8) -> Vec<IpAddr> {
    (1..=count)
        .map(|i| IpAddr::from([127, 0, third, i]))
        .collect()
}

#[test]
fn a_flood_of_idle_connections_and_stalled_handshakes_does_not_stop_leases_or_failover() {
    raise_nofile();
    let mut c = TestCluster::with_services(3, &TestCluster::demo_services(&["web"]));
    let leader = c.start_all();
    let holder = c.wait_running_elsewhere(&leader, "web", None);
    let index: u8 = leader.trim_start_matches('n').parse().unwrap();
    let target = SocketAddr::from(([127, 0, 0, index], c.port));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (idle_opened, hello_opened) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // 2,000 idle TCP connections from 100 addresses and 200 stalled handshakes from
    // 50 more, all kept open (reopened as soon as the agent closes one).
    // QUORATE_FLOOD=0 runs the same steps without the attacker: the baseline that
    // docs/BENCHMARKS.md compares the failover time with.
    let flood = std::env::var("QUORATE_FLOOD").map_or(true, |v| v != "0");
    let (idle_count, stalled_count) = if flood { (2000, 200) } else { (0, 0) };
    let idle = rt.spawn(hold_open(
        addresses(2, 100),
        idle_count,
        target,
        false,
        stop.clone(),
        idle_opened.clone(),
    ));
    let stalled = rt.spawn(hold_open(
        addresses(3, 50),
        stalled_count,
        target,
        true,
        stop.clone(),
        hello_opened.clone(),
    ));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        idle_opened.load(Ordering::Relaxed) >= idle_count,
        "the flood did not start"
    );

    // Under the flood, for longer than several lease TTLs: quorum holds and web keeps
    // running where it was, never restarted (its lease was renewed all along).
    std::thread::sleep(Duration::from_secs(6));
    let (code, status) = c.status(&leader, false);
    assert_eq!(
        (code, &status["quorum"]),
        (Some(0), &serde_json::json!(true)),
        "{status:#}"
    );
    let starts = |c: &TestCluster| {
        quorate_lab::checker::runs(&c.journal())
            .iter()
            .filter(|r| r.service == "web")
            .count()
    };
    assert_eq!(starts(&c), 1, "web was restarted under the flood");

    // A failover under the flood: the holder's power goes.
    let began = Instant::now();
    c.poweroff(&holder);
    let now_on = c.wait_running_elsewhere(
        if holder == leader {
            c.names.iter().find(|n| **n != holder).unwrap()
        } else {
            &leader
        },
        "web",
        Some(&holder),
    );
    let took = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    let reopened = idle_opened.load(Ordering::Relaxed) + hello_opened.load(Ordering::Relaxed);
    rt.block_on(async {
        let _ = idle.await;
        let _ = stalled.await;
    });
    println!(
        "{{\"flood\": {{\"attacked\": {flood}, \"failover_ms\": {}, \"from\": \"{holder}\", \"to\": \"{now_on}\", \"leader\": \"{leader}\", \"attacker_connections_opened\": {reopened}}}}}",
        took.as_millis()
    );
    assert_eq!(c.violations(), Vec::<String>::new());
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn huge_frames_and_a_report_flood_from_a_member_leave_memory_bounded() {
    let mut c = TestCluster::with_services(3, &TestCluster::demo_services(&["web"]));
    let leader = c.start_all();
    let pid = c.pid(&leader).unwrap();
    let before = vm_kib(pid, "VmRSS:");
    let index: u8 = leader.trim_start_matches('n').parse().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, index], c.port));
    let thief = if leader == "n2" { "n3" } else { "n2" };
    let tls = quorate_pki::SharedTls::new(
        quorate_pki::load(
            &quorate_pki::TlsFiles::in_dir(&c.data_dir(thief).join("tls")),
            thief,
        )
        .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        // Eight 60 MiB frames at once, as Raft (the only kind that large is allowed):
        // read in turn within the agent's budget for large frames, never all at once.
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let tls = tls.clone();
            let leader = leader.clone();
            sends.spawn(async move {
                let mut client = PeerClient::new(&leader, addr, &tls, Partition::default());
                let junk = vec![b'x'; 60 << 20];
                client
                    .call(kinds::RAFT, &junk, Duration::from_secs(120))
                    .await
                    .map(|r| r.len())
            });
        }
        let mut results = Vec::new();
        while let Some(r) = sends.join_next().await {
            results.push(r.unwrap());
        }
        // 60 MiB as a report: refused before it is read.
        let mut client = PeerClient::new(&leader, addr, &tls, Partition::default());
        let junk = vec![b'x'; 60 << 20];
        assert!(client
            .call(kinds::REPORT, &junk, Duration::from_secs(60))
            .await
            .is_err());
        // 200 reports of 10,000 made-up services each (~300 KiB): dropped, not stored.
        let services: serde_json::Map<String, serde_json::Value> = (0..10_000)
            .map(|i| (format!("made-up-service-{i}"), serde_json::json!("running")))
            .collect();
        let report = serde_json::to_vec(
            &serde_json::json!({ "App": { "peer_message": "observe", "services": services } }),
        )
        .unwrap();
        let mut client = PeerClient::new(&leader, addr, &tls, Partition::default());
        for _ in 0..200 {
            let reply = client
                .call(kinds::REPORT, &report, Duration::from_secs(10))
                .await
                .unwrap();
            let reply: PeerReply = serde_json::from_slice(&reply).unwrap();
            assert!(matches!(reply, PeerReply::App(_)), "{reply:?}");
        }
        results
    });
    assert!(
        results.iter().all(Result::is_ok),
        "every huge frame got an answer: {results:?}"
    );
    let (after, peak) = (vm_kib(pid, "VmRSS:"), vm_kib(pid, "VmHWM:"));
    println!("{{\"memory_kib\": {{\"before\": {before}, \"after\": {after}, \"peak\": {peak}}}}}");
    // 8 × 60 MiB at once would be 480 MiB; the budget admits 160 MiB of large frames.
    assert!(
        peak < before + 300 * 1024,
        "peak RSS {peak} KiB (before: {before} KiB)"
    );
    // Nothing of the flood was stored, and the cluster is fine.
    let (code, status) = c.status(&leader, false);
    assert_eq!(code, Some(0), "{status:#}");
    assert!(!status.to_string().contains("made-up"), "{status:#}");
}
