//! `check`, `lock`, `plan` and `schema` through the real binary: exit codes,
//! files written (or not), JSON shapes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn quorate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("QUORATE_SPEC")
        .env_remove("QUORATE_LOCK")
        .output()
        .expect("run quorate")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// A temp dir holding a copy of an example as quorate.toml.
fn workdir(example: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("examples").join(example).join("quorate.toml"),
        dir.path().join("quorate.toml"),
    )
    .unwrap();
    dir
}

#[test]
fn every_example_passes_check() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let spec = entry.unwrap().path().join("quorate.toml");
        if !spec.exists() {
            continue;
        }
        seen += 1;
        let o = quorate(&repo(), &["check", spec.to_str().unwrap()]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}: {}",
            spec.display(),
            stderr(&o)
        );
        assert!(stderr(&o).contains("ok: cluster"), "{}", stderr(&o));
    }
    assert!(seen >= 2, "expected the homelab and minimal examples");
}

#[test]
fn check_json_summarises_a_good_spec() {
    let o = quorate(
        &repo(),
        &["check", "--json", "examples/homelab/quorate.toml"],
    );
    assert_eq!(o.status.code(), Some(0));
    let doc = json(&o);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["errors"], 0);
    assert_eq!(doc["summary"]["cluster"], "homelab");
    assert_eq!(doc["summary"]["nodes"], 3);
    // Every setting of the example is active (its WireGuard transport too): no warnings.
    assert_eq!(doc["diagnostics"], serde_json::json!([]), "{doc:#}");
}

#[test]
fn an_incomplete_ceph_storage_names_everything_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("quorate.toml");
    std::fs::write(
        &spec,
        "[cluster]\nname = \"c\"\n[nodes.n1]\naddress = \"10.0.0.1\"\n\
         [storage.img]\nkind = \"ceph-rbd\"\nnodes = [\"n1\"]\n",
    )
    .unwrap();
    let o = quorate(dir.path(), &["check", "--json", "quorate.toml"]);
    let doc = json(&o);
    let codes: Vec<&str> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    // Ceph storage is active now: no "not active" warning, but its two missing keys.
    assert!(!codes.contains(&"spec::not-active"), "{doc:#}");
    assert_eq!(
        codes.iter().filter(|c| **c == "spec::missing-key").count(),
        2,
        "size and mount: {doc:#}"
    );
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn missing_spec_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = quorate(dir.path(), &["check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read quorate.toml"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("help:"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2() {
    let o = quorate(&repo(), &["check", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    let o = quorate(&repo(), &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn lock_writes_once_then_check_passes_and_rerun_is_a_no_op() {
    let dir = workdir("homelab");
    let o = quorate(dir.path(), &["lock", "--check"]);
    assert_eq!(o.status.code(), Some(1), "a missing lock is out of date");
    assert!(
        !dir.path().join("quorate.lock").exists(),
        "--check never writes"
    );

    let o = quorate(dir.path(), &["lock"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let first = std::fs::read(dir.path().join("quorate.lock")).unwrap();
    let lock: serde_json::Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(lock["version"], 1);
    assert_eq!(lock["storage"]["pgdata"]["drbd"]["minor"], 1000);
    assert_eq!(lock["storage"]["pgdata"]["drbd"]["tie_breaker"], "gamma");
    assert_eq!(lock["nodes"]["alpha"]["overlay_ip"], "10.99.0.1");

    let o = quorate(dir.path(), &["lock", "--check"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = quorate(dir.path(), &["lock", "--json"]);
    assert_eq!(json(&o)["status"], "up-to-date");
    assert_eq!(
        std::fs::read(dir.path().join("quorate.lock")).unwrap(),
        first,
        "re-running lock changes nothing"
    );
}

#[test]
fn lock_path_can_be_overridden() {
    let dir = workdir("minimal");
    let o = quorate(
        dir.path(),
        &["lock", "quorate.toml", "--lock", "other.lock"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(dir.path().join("other.lock").exists());
    assert!(!dir.path().join("quorate.lock").exists());
}

fn edit(dir: &Path, f: impl FnOnce(String) -> String) {
    let path = dir.join("quorate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, f(text)).unwrap();
}

fn remove_table(text: &str, header: &str) -> String {
    let start = text.find(header).unwrap();
    let end = text[start + header.len()..]
        .find("\n[")
        .map_or(text.len(), |i| start + header.len() + i + 1);
    format!("{}{}", &text[..start], &text[end..])
}

#[test]
fn removing_storage_is_destructive_and_refused_without_the_flag() {
    let dir = workdir("homelab");
    assert_eq!(quorate(dir.path(), &["lock"]).status.code(), Some(0));
    let before = std::fs::read(dir.path().join("quorate.lock")).unwrap();
    edit(dir.path(), |t| {
        remove_table(&t, "[storage.pgdata]").replace("storage = [\"pgdata\"]\n", "")
    });

    let o = quorate(dir.path(), &["plan"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("- storage pgdata   DESTRUCTIVE"), "{out}");

    let o = quorate(dir.path(), &["plan", "--json"]);
    assert_eq!(o.status.code(), Some(3));
    let doc = json(&o);
    assert_eq!(doc["destructive"], true);
    assert_eq!(doc["summary"]["remove"], 1);

    let o = quorate(dir.path(), &["lock"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dir.path().join("quorate.lock")).unwrap(),
        before,
        "a refused lock writes nothing"
    );

    let o = quorate(dir.path(), &["plan", "--allow-destructive"]);
    assert_eq!(o.status.code(), Some(0));
    let o = quorate(dir.path(), &["lock", "--allow-destructive"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("quorate.lock")).unwrap()).unwrap();
    assert_eq!(lock["tombstones"][0]["entity"], "storage");
    assert_eq!(lock["tombstones"][0]["entry"]["drbd"]["minor"], 1000);
    assert_eq!(
        lock["next"]["drbd_minor"], 1001,
        "the retired minor is never handed out again"
    );
}

#[test]
fn removing_a_majority_of_voters_is_destructive() {
    let dir = workdir("minimal");
    edit(dir.path(), |t| {
        t + "\n[nodes.n4]\naddress = \"127.0.0.4\"\n\n[nodes.n5]\naddress = \"127.0.0.5\"\n"
    });
    assert_eq!(quorate(dir.path(), &["lock"]).status.code(), Some(0));
    // 5 → 2 voters in one step: only 2 of 5 stay.
    edit(dir.path(), |t| {
        let t = remove_table(&t, "[nodes.n3]");
        let t = remove_table(&t, "[nodes.n4]");
        let t = remove_table(&t, "[nodes.n5]");
        t + "\n[nodes.n6]\naddress = \"127.0.0.6\"\n"
    });
    let o = quorate(dir.path(), &["plan", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let doc = json(&o);
    let destructive: Vec<&str> = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["destructive"].is_string())
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(destructive, ["n3", "n4", "n5"]);
    // Removing one voter of five is fine.
    let dir = workdir("minimal");
    edit(dir.path(), |t| {
        t + "\n[nodes.n4]\naddress = \"127.0.0.4\"\n\n[nodes.n5]\naddress = \"127.0.0.5\"\n"
    });
    assert_eq!(quorate(dir.path(), &["lock"]).status.code(), Some(0));
    edit(dir.path(), |t| remove_table(&t, "[nodes.n5]"));
    let o = quorate(dir.path(), &["plan"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn plan_against_an_old_spec_shows_field_changes_and_shrinks() {
    let dir = workdir("homelab");
    assert_eq!(quorate(dir.path(), &["lock"]).status.code(), Some(0));
    std::fs::copy(dir.path().join("quorate.toml"), dir.path().join("old.toml")).unwrap();
    edit(dir.path(), |t| {
        t.replace("size = \"50GiB\"", "size = \"20GiB\"")
            .replace("unit = \"nginx.service\"", "unit = \"caddy.service\"")
    });
    let o = quorate(dir.path(), &["plan", "--against", "old.toml"]);
    assert_eq!(o.status.code(), Some(3), "shrinking is destructive");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("unit: \"nginx.service\" → \"caddy.service\""),
        "{out}"
    );
    assert!(
        out.contains("shrinks `pgdata` from 50GiB to 20GiB"),
        "{out}"
    );
}

#[test]
fn renamed_from_keeps_numbers() {
    let dir = workdir("homelab");
    assert_eq!(quorate(dir.path(), &["lock"]).status.code(), Some(0));
    edit(dir.path(), |t| {
        t.replace("\"beta\"", "\"bravo\"")
            .replace("[nodes.beta]", "[nodes.bravo]\nrenamed_from = \"beta\"")
            .replace(
                "[storage.pgdata]",
                "[storage.pg]\nrenamed_from = \"pgdata\"",
            )
            .replace("storage = [\"pgdata\"]", "storage = [\"pg\"]")
    });
    let o = quorate(dir.path(), &["plan"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "a rename is not destructive: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(quorate(dir.path(), &["lock"]).status.code(), Some(0));
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("quorate.lock")).unwrap()).unwrap();
    assert_eq!(lock["nodes"]["bravo"]["raft_id"], 2);
    assert_eq!(lock["storage"]["pg"]["drbd"]["minor"], 1000);
    assert_eq!(lock["storage"]["pg"]["drbd"]["node_ids"]["bravo"], 1);
    assert!(
        lock.get("tombstones").is_none(),
        "a rename leaves no tombstone"
    );
}

#[test]
fn bad_lock_files_are_clear_errors_and_change_nothing() {
    let dir = workdir("minimal");
    let cases: [(&str, &str); 5] = [
        ("{ \"version\": 1, ", "not valid JSON"),
        ("{ \"version\": 99 }", "newer quorate"),
        ("{ \"cluster\": \"minimal\" }", "(missing)"),
        ("{ \"version\": 1, \"cluster\": \"other\", \"next\": {\"raft_id\": 1, \"service_id\": 1, \"drbd_minor\": 1000, \"drbd_port\": 7789, \"wg_port\": 51820, \"overlay_host\": 1} }", "cluster `other`"),
        ("{ \"version\": 1, \"cluster\": \"minimal\", \"next\": {\"raft_id\": 2, \"service_id\": 1, \"drbd_minor\": 1000, \"drbd_port\": 7789, \"wg_port\": 51820, \"overlay_host\": 1}, \"nodes\": {\"n1\": {\"raft_id\": 1, \"voter\": true}, \"n2\": {\"raft_id\": 1, \"voter\": true}} }", "also held by nodes.n1"),
    ];
    for (content, expected) in cases {
        std::fs::write(dir.path().join("quorate.lock"), content).unwrap();
        for args in [&["lock"][..], &["plan"][..], &["lock", "--check"][..]] {
            let o = quorate(dir.path(), args);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{args:?} on {content}: {}",
                stderr(&o)
            );
            assert!(
                stderr(&o).contains(expected),
                "{args:?}: expected {expected:?} in {}",
                stderr(&o)
            );
            assert!(stderr(&o).contains("help:"), "{}", stderr(&o));
            assert_eq!(
                std::fs::read_to_string(dir.path().join("quorate.lock")).unwrap(),
                content,
                "nothing changed"
            );
        }
    }
}

#[test]
fn json_spec_means_the_same_as_toml() {
    // The NixOS module writes cluster.json; it must lock to the same numbers.
    let dir = workdir("homelab");
    let schema = quorate(dir.path(), &["schema"]);
    assert_eq!(schema.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout).unwrap();
    assert!(schema["properties"]["services"].is_object(), "{schema:#}");
    assert!(schema["required"]
        .as_array()
        .unwrap()
        .contains(&"cluster".into()));

    assert_eq!(quorate(dir.path(), &["lock"]).status.code(), Some(0));
    let toml_lock = std::fs::read(dir.path().join("quorate.lock")).unwrap();
    let spec: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.path().join("quorate.toml")).unwrap()).unwrap();
    let json_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        json_dir.path().join("cluster.json"),
        serde_json::to_string_pretty(&spec).unwrap(),
    )
    .unwrap();
    let o = quorate(json_dir.path(), &["lock", "cluster.json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(json_dir.path().join("quorate.lock")).unwrap(),
        toml_lock
    );
}

/// `quorate … | head` closes the pipe early: quorate ends quietly (exit 141, like a
/// SIGPIPE), without a panic message.
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = String::from("[cluster]\nname = \"big\"\n");
    for i in 1..=3 {
        spec.push_str(&format!("[nodes.n{i}]\naddress = \"10.0.0.{i}\"\n"));
    }
    for i in 0..3000 {
        spec.push_str(&format!(
            "[services.service-with-a-long-name-{i}]\nkind = \"process\"\ncommand = [\"/bin/true\"]\n"
        ));
    }
    std::fs::write(dir.path().join("quorate.toml"), spec).unwrap();
    // The plan of 3000 new services is far more than a pipe buffer holds.
    let mut child = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["plan", "--json", "quorate.toml"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is dropped here: the next writes fail with EPIPE.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}

#[test]
fn ceph_bootstrap_refuses_without_a_declared_ceph_or_with_a_stale_lock_and_touches_no_node() {
    let dir = workdir("minimal");
    // --exec would leave a mark on "the node" if anything ran there.
    let mark = dir.path().join("ran");
    let exec = format!("sh -c 'touch {}; exec \"$@\"' --", mark.display());
    let bootstrap = |dir: &Path| {
        quorate(
            dir,
            &[
                "ceph",
                "bootstrap",
                "quorate.toml",
                "--exec",
                &exec,
                "--json",
            ],
        )
    };
    assert!(quorate(dir.path(), &["lock"]).status.success());
    let out = bootstrap(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let reply = json(&out);
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("the spec has no [ceph]"),
        "{reply}"
    );
    // A [ceph] the lock does not know yet: refused until `quorate lock` ran.
    let spec = dir.path().join("quorate.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let addresses: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("address = "))
        .map(|a| a.trim_matches('"').to_owned())
        .collect();
    let network = format!("{}/32", addresses[0]);
    std::fs::write(
        &spec,
        format!(
            "{text}\n[ceph]\npublic_network = \"{network}\"\nmonitors = [\"{}\"]\n",
            text.lines()
                .find_map(|l| l.strip_prefix("[nodes.").and_then(|n| n.strip_suffix(']')))
                .unwrap()
        ),
    )
    .unwrap();
    let out = bootstrap(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("out of date"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!mark.exists(), "a node was touched");
}
