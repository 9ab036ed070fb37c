//! What a new user meets first: `quorate --help` lists what they use (the internal
//! fence process is hidden), and a user who may not use the agent's socket is told
//! so (exit 1), not that the cluster has no quorum (exit 4).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn help_hides_the_internal_fence_process() {
    let out = Command::new(support::quorate_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        !help.lines().any(|l| l.trim_start().starts_with("fence ")),
        "{help}"
    );
    assert!(help.contains("  status "), "{help}");
    // Still there for the agent to start.
    let out = Command::new(support::quorate_bin())
        .args(["fence", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn a_user_without_access_to_the_socket_is_told_so_with_exit_1() {
    let is_root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    if !is_root {
        support::skip("needs root to own a socket and run as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("control.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(support::quorate_bin())
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("run as root"), "{stderr}");
    assert!(!stderr.contains("no quorum"), "{stderr}");
}
