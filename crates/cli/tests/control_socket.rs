//! The local control socket: its mode and directory, and a read-only group whose
//! members may read the cluster's state but not change it. Real agents; the other
//! user is `nobody` through setpriv (root needed, as in CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output};

use support::TestCluster;

const GROUP: &str = "4242";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `quorate ARGS` as nobody, with `groups` as its supplementary groups.
fn as_nobody(c: &TestCluster, groups: &[&str], args: &[&str]) -> Output {
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534"]);
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        command.arg(format!("--groups={}", groups.join(",")));
    }
    command
        .arg("--")
        .arg(support::quorate_bin())
        .args(args)
        .current_dir(c.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn a_read_only_group_may_read_but_not_operate() {
    if !is_root() {
        support::skip("needs root to run as another user");
        return;
    }
    let mut c = TestCluster::new(3);
    c.env.push(("QUORATE_READ_ONLY_GROUP".into(), GROUP.into()));
    // nobody may pass through the directories, not read them.
    for dir in [c.path().to_path_buf(), c.path().join("d")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    c.start_all();
    let socket = c.data_dir("n1").join("control.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid().to_string(), GROUP);
    let dd = c.data_dir("n1");
    let dd = dd.to_str().unwrap();

    // A member of the group reads status and events ...
    let out = as_nobody(&c, &[GROUP], &["status", "--json", "--data-dir", dd]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["quorum"], true);
    let out = as_nobody(&c, &[GROUP], &["events", "--data-dir", dd]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // ... and is refused every change, which changes nothing.
    let out = as_nobody(&c, &[GROUP], &["drain", "n2", "--data-dir", dd]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("permission denied") && stderr.contains("not change it"),
        "{stderr}"
    );
    let states = c.node_states("n1");
    assert!(states.values().all(|s| s == "up"), "{states:?}");
    // Without the group, nothing at all.
    let out = as_nobody(&c, &[], &["status", "--data-dir", dd]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
}

#[test]
fn the_socket_is_private_and_its_directory_must_be_ours_alone() {
    let mut c = TestCluster::new(3);
    // A directory others may write to: the agent refuses to put its socket there.
    let dd = c.data_dir("n1");
    std::fs::set_permissions(&dd, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = c.run(&["agent", "--node", "n1", "--data-dir", dd.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("writable by others") && stderr.contains("chmod go-w"),
        "{stderr}"
    );
    assert!(!dd.join("control.sock").exists());
    std::fs::set_permissions(&dd, std::fs::Permissions::from_mode(0o755)).unwrap();
    c.start_all();
    let mode = std::fs::metadata(dd.join("control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Nothing was left of the private staging directory.
    let staged: Vec<_> = std::fs::read_dir(&dd)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".control-"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

/// Issue 14, item 7: control-socket lines from a fuzzer, random bytes and mutated
/// valid requests, each get one well-formed reply, and the agent carries on.
#[test]
fn fuzzed_control_lines_each_get_a_reply_and_the_agent_carries_on() {
    use proptest::prelude::*;
    use std::io::{BufRead, BufReader, Write};
    let mut c = TestCluster::new(3);
    c.start_all();
    let socket = c.data_dir("n1").join("control.sock");
    let templates = [
        r#"{"request":"status"}"#,
        r#"{"request":"status","local":true}"#,
        r#"{"request":"events","limit":5}"#,
        r#"{"request":"explain","service":"web"}"#,
        r#"{"request":"move","service":"web","node":"n2"}"#,
        r#"{"request":"set_admin","node":"n9","state":"draining"}"#,
        r#"{"request":"restart","service":"web"}"#,
    ];
    let cases = std::env::var("QUORATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..templates.len(),
        any::<prop::sample::Index>(),
        0_usize..12,
        prop::collection::vec(any::<u8>(), 0..16),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(template, at, len, with, random)| {
            let mut line = if random {
                with.clone()
            } else {
                templates[template].as_bytes().to_vec()
            };
            if !random {
                let start = at.index(line.len());
                let end = (start + len).min(line.len());
                line.splice(start..end, with);
            }
            line.retain(|b| *b != b'\n');
            line.push(b'\n');
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            stream.write_all(&line).unwrap();
            let mut reply = String::new();
            BufReader::new(stream).read_line(&mut reply).unwrap();
            let parsed: Result<quorate_api::ControlReply, _> = serde_json::from_str(&reply);
            prop_assert!(
                parsed.is_ok(),
                "{:?} → {reply:?}",
                String::from_utf8_lossy(&line)
            );
            Ok(())
        })
        .unwrap();
    let (code, status) = c.status("n1", false);
    assert_eq!(
        (code, &status["quorum"]),
        (Some(0), &serde_json::json!(true)),
        "{status:#}"
    );
}
