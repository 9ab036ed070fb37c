//! The catalogue of bad specs in `tests/bad-specs/`: each file has exactly one
//! problem. `quorate check` must exit 1, report exactly one error, and render it
//! as in the snapshot (file, line, column, caret, fix).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

fn quorate(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("QUORATE_SPEC")
        .env_remove("QUORATE_LOCK")
        .output()
        .expect("run quorate")
}

#[test]
fn every_bad_spec_is_one_clear_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-specs");
    let mut count = 0;
    insta::glob!("bad-specs/*", |path| {
        count += 1;
        let name = path.file_name().unwrap().to_str().unwrap();
        let human = quorate(&dir, &["check", name]);
        assert_eq!(human.status.code(), Some(1), "{name} must exit 1");
        assert!(
            human.stdout.is_empty(),
            "{name}: human diagnostics go to stderr"
        );
        let stderr = String::from_utf8(human.stderr).unwrap();
        assert!(
            stderr.contains(&format!("[{name}:")),
            "{name}: diagnostics name the file with line:column\n{stderr}"
        );
        assert!(
            stderr.contains("help:"),
            "{name}: every error says how to fix it\n{stderr}"
        );
        insta::assert_snapshot!(stderr);

        let json = quorate(&dir, &["check", "--json", name]);
        assert_eq!(json.status.code(), Some(1));
        let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(doc["ok"], false);
        assert_eq!(
            doc["errors"], 1,
            "{name}: exactly one error expected\n{doc:#}"
        );
        let error = doc["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["severity"] == "error")
            .unwrap();
        assert!(
            error["line"].as_u64().unwrap() >= 1,
            "{name}: error has a line"
        );
        assert!(
            error["column"].as_u64().unwrap() >= 1,
            "{name}: error has a column"
        );
        assert!(error["help"].is_string(), "{name}: error has a fix hint");
    });
    assert!(
        count >= 20,
        "the catalogue must hold at least 20 bad specs, found {count}"
    );
}
