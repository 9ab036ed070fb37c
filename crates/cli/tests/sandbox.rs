//! `quorate sandbox`, the README's first command: up, break it every way, down —
//! and nothing left behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = sandbox(&self.0, &["down"]);
    }
}

fn quorate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(args)
        .env_remove("QUORATE_SANDBOX")
        .output()
        .unwrap()
}

fn sandbox(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["sandbox"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dir", dir.to_str().unwrap()]);
    quorate(&all)
}

fn status(dir: &Path, node: Option<&str>) -> serde_json::Value {
    let mut args = vec!["status", "--json", "--sandbox", dir.to_str().unwrap()];
    if let Some(n) = node {
        args.extend_from_slice(&["--node", n]);
    }
    serde_json::from_slice(&quorate(&args).stdout).unwrap_or(serde_json::Value::Null)
}

fn where_is(dir: &Path, service: &str) -> Option<String> {
    let r = status(dir, None);
    r["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service && s["state"] == "running")?["node"]
        .as_str()
        .map(String::from)
}

/// The body's last line from `entry` ("address:port").
fn http(entry: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&entry.parse().unwrap(), Duration::from_millis(300))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().last().map(String::from)
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(40) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn processes_of(dir: &Path) -> usize {
    // Every agent, fence and demo process of this sandbox has the sandbox dir in its
    // command line or working directory.
    let needle = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let p = e.path();
            let cmd = std::fs::read(p.join("cmdline")).unwrap_or_default();
            let cwd = std::fs::read_link(p.join("cwd")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(needle) || cwd.starts_with(needle)
        })
        .filter(|e| {
            quorate_drivers::pid_alive(
                e.file_name()
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            )
        })
        .count()
}

#[test]
fn the_sandbox_comes_up_fails_over_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sb");
    let _guard = Guard(dir.clone());
    let up = sandbox(&dir, &["--detach"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(
        stderr.contains("quorate sandbox kill n1"),
        "the sandbox teaches how to break it:\n{stderr}"
    );
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("sandbox.json")).unwrap()).unwrap();
    let entry = file["entry"]["web"].as_str().unwrap().to_string();
    assert!(
        stderr.contains(&format!("curl {entry}")),
        "the printed entry point is web's:\n{stderr}"
    );
    // The entry point answers from the node web runs on.
    let host = where_is(&dir, "web").unwrap();
    assert_eq!(
        http(&entry).as_deref(),
        Some(format!("web on {host}").as_str())
    );
    // A second sandbox in the same dir is refused.
    let again = sandbox(&dir, &["--detach"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    // Power loss of web's node: the same entry point answers from another node.
    assert!(sandbox(&dir, &["kill", &host]).status.success());
    let mut new_host = String::new();
    wait("web's entry point to answer from another node", || {
        let Some(answer) = http(&entry) else {
            return false;
        };
        let node = answer
            .strip_prefix("web on ")
            .unwrap_or_default()
            .to_string();
        let moved = !node.is_empty() && node != host;
        if moved {
            new_host = node;
        }
        moved
    });
    assert_eq!(where_is(&dir, "web").as_deref(), Some(new_host.as_str()));
    // Every client command can ask any node.
    let survivor = ["n1", "n2", "n3"].into_iter().find(|n| *n != host).unwrap();
    assert_eq!(status(&dir, Some(survivor))["quorum"], true);

    // Partition and heal, pause and resume, restart: the cluster comes back whole.
    let other = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != host && *n != new_host)
        .unwrap();
    for (fault, undo) in [("partition", "heal"), ("pause", "resume")] {
        let out = sandbox(&dir, &[fault, other]);
        assert!(
            out.status.success(),
            "{fault}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(2500));
        assert!(sandbox(&dir, &[undo, other]).status.success());
    }
    assert!(sandbox(&dir, &["restart", &host]).status.success());
    wait("all three nodes up with quorum", || {
        let r = status(&dir, None);
        r["quorum"] == true
            && r["nodes"]
                .as_array()
                .is_some_and(|ns| ns.iter().all(|n| n["state"] == "up"))
    });
    wait("every service running", || {
        let r = status(&dir, None);
        r["services"]
            .as_array()
            .is_some_and(|ss| ss.iter().all(|s| s["state"] == "running"))
    });

    // Bad input: an unknown node.
    let out = sandbox(&dir, &["kill", "n9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node `n9`"));

    assert!(sandbox(&dir, &["down"]).status.success());
    wait("every sandbox process to be gone", || {
        processes_of(&dir) == 0
    });
}
