//! The README's "Try it" block is run as printed: its first command brings up the
//! sandbox (here with `--detach` and a private `--dir`, appended to the literal
//! command), its second is the test command `.ci/run` runs. If the README changes,
//! this test follows it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// The commands of the first ```sh block under "## Try it", without comments.
fn try_it_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Try it"))
        .expect("README has a `## Try it` section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a ```sh block in `## Try it`");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn the_try_it_block_is_the_sandbox_and_the_ci_test_command() {
    let commands = try_it_commands();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert!(commands[0].contains(" sandbox"), "{commands:?}");
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    let exec = ci
        .lines()
        .find(|l| l.starts_with("exec "))
        .expect(".ci/run execs the test command");
    assert_eq!(exec.trim_start_matches("exec ").trim(), commands[1]);
}

/// Stops the sandbox however the test ends.
struct Down(PathBuf, PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(&self.0)
            .args(["sandbox", "down", "--dir"])
            .arg(&self.1)
            .output();
    }
}

#[test]
fn the_first_command_brings_up_a_healthy_three_node_sandbox() {
    let first = &try_it_commands()[0];
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sb");
    let words: Vec<&str> = first.split_whitespace().collect();
    let (program, args) = words.split_first().unwrap();
    let out = Command::new(program)
        .args(args)
        .arg("--detach")
        .arg("--dir")
        .arg(&sandbox)
        .current_dir(repo())
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    // The binary the command built (`target/release` if it says `--release`); it
    // stops the sandbox afterwards.
    let profile = if words.contains(&"--release") {
        "release"
    } else {
        "debug"
    };
    let quorate = repo().join("target").join(profile).join("quorate");
    let _down = Down(quorate.clone(), sandbox.clone());
    assert!(
        out.status.success(),
        "`{first} --detach` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    loop {
        let status = Command::new(&quorate)
            .args(["status", "--json", "--sandbox"])
            .arg(&sandbox)
            .output()
            .unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&status.stdout).unwrap_or(serde_json::Value::Null);
        let nodes = report["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|x| x["state"] == "up").count());
        if report["quorum"] == true && nodes == 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no healthy 3-node sandbox: {report}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
