//! The fence process on its own, as the agent drives it: a lease deadline and the
//! workload process groups on its stdin; at the deadline it kills them, records it,
//! pets a watchdog while all is well and disarms it on a clean exit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

#[test]
fn the_fence_kills_at_the_deadline_records_it_and_handles_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let (dog, journal) = (dir.path().join("watchdog"), dir.path().join("journal"));
    std::fs::write(&dog, "").unwrap();
    let mut workload = Command::new("sleep")
        .arg("60")
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = workload.id();
    let mut fence = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["fence", "--node", "n1", "--watchdog", dog.to_str().unwrap()])
        .env("QUORATE_WITNESS_JOURNAL", &journal)
        .env_remove("QUORATE_UNSAFE_NO_FENCE")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = support::witness::mono_ns() + 600_000_000;
    let stdin = fence.stdin.as_mut().unwrap();
    writeln!(stdin, "lease {deadline}").unwrap();
    writeln!(stdin, "groups web={pgid}").unwrap();
    stdin.flush().unwrap();
    // Before the deadline the workload lives.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        workload.try_wait().unwrap().is_none(),
        "killed before the deadline"
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = workload.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the fence did not kill at the deadline"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "killed by a signal");
    // The fence records the kill once it is done: the record may trail the exit.
    let start = Instant::now();
    let record = loop {
        match std::fs::read_to_string(&journal) {
            Ok(text) if text.ends_with('\n') => break text,
            _ if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => panic!("no fence record 10 s after the kill: {other:?}"),
        }
    };
    let fields: Vec<&str> = record.split_whitespace().collect();
    assert_eq!(
        (fields[0], fields[2], fields[3], fields[4]),
        ("fence", "n1", "web", pgid.to_string().as_str()),
        "{record}"
    );
    assert!(
        fields[1].parse::<u64>().unwrap() >= deadline,
        "not before the deadline"
    );
    // The agent goes away: the fence ends cleanly and disarms the watchdog.
    drop(fence.stdin.take());
    let exit = fence.wait().unwrap();
    assert!(exit.success());
    let pets = std::fs::read(&dog).unwrap();
    assert!(
        pets.iter().filter(|b| **b == b'1').count() >= 1,
        "the watchdog was petted: {pets:?}"
    );
    assert_eq!(
        pets.last(),
        Some(&b'V'),
        "the magic close disarms it: {pets:?}"
    );
}

/// A `sleep 60` in its own process group, and a fence of node n1 reading a pipe.
fn workload_and_fence() -> (std::process::Child, u32, std::process::Child) {
    let workload = Command::new("sleep")
        .arg("60")
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = workload.id();
    let fence = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["fence", "--node", "n1"])
        .env_remove("QUORATE_UNSAFE_NO_FENCE")
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (workload, pgid, fence)
}

#[test]
fn without_a_lease_the_fence_kills_when_the_agent_is_gone() {
    let (mut workload, pgid, mut fence) = workload_and_fence();
    writeln!(fence.stdin.as_mut().unwrap(), "groups web={pgid}").unwrap();
    drop(fence.stdin.take());
    assert!(fence.wait().unwrap().success());
    let start = Instant::now();
    while workload.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "nothing vouched for the workload, it must die"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_missing_watchdog_device_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args([
            "fence",
            "--node",
            "n1",
            "--watchdog",
            "/nonexistent/watchdog",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open the watchdog"));
}

/// `systemctl stop/restart` of the agent's unit (or a Ctrl-C) sends SIGTERM to what
/// it reaches: the fence holds its deadline through it and still kills at the end.
#[test]
fn sigterm_does_not_end_the_fence_before_its_deadline() {
    let (mut workload, pgid, mut fence) = workload_and_fence();
    let deadline = support::witness::mono_ns() + 1_500_000_000;
    let stdin = fence.stdin.as_mut().unwrap();
    writeln!(stdin, "lease {deadline}").unwrap();
    writeln!(stdin, "groups web={pgid}").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for signal in ["-TERM", "-INT", "-HUP"] {
        assert!(Command::new("kill")
            .args([signal, &fence.id().to_string()])
            .status()
            .unwrap()
            .success());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        fence.try_wait().unwrap().is_none(),
        "the fence ended on SIGTERM before its deadline"
    );
    let start = Instant::now();
    while workload.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the fence did not kill at its deadline"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(fence.stdin.take());
    let _ = fence.kill();
    let _ = fence.wait();
}
