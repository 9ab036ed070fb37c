//! Rendering is stable: snapshots of the homelab example's files, and the same bytes
//! however the spec is ordered.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use quorate_lock::Lock;
use quorate_render::{node_files, RenderError};
use quorate_spec::{Format, Spec};

fn example() -> (String, Lock) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/homelab");
    let toml = std::fs::read_to_string(dir.join("quorate.toml")).unwrap();
    let lock = quorate_lock::read(&dir.join("quorate.lock"))
        .unwrap()
        .unwrap();
    (toml, lock)
}

fn spec(text: &str) -> Spec {
    let checked = quorate_spec::check(text, Format::Toml);
    checked
        .spec
        .unwrap_or_else(|| panic!("{:#?}", checked.diagnostics))
}

fn all_files(spec: &Spec, lock: &Lock, node: &str) -> String {
    node_files(spec, lock, node)
        .unwrap()
        .iter()
        .map(|f| format!("==> {} ({})\n{}", f.path, f.purpose, f.contents))
        .collect()
}

#[test]
fn homelab_files_per_node() {
    let (toml, lock) = example();
    let spec = spec(&toml);
    for node in ["alpha", "beta", "gamma"] {
        insta::assert_snapshot!(format!("homelab_{node}"), all_files(&spec, &lock, node));
    }
}

#[test]
fn the_same_inputs_give_the_same_bytes_whatever_the_spec_order() {
    let (toml, lock) = example();
    // Reverse the order of the spec's tables (TOML allows any table order).
    let mut tables: Vec<String> = Vec::new();
    for line in toml.lines() {
        if line.starts_with('[') || tables.is_empty() {
            tables.push(String::new());
        }
        let last = tables.last_mut().unwrap();
        last.push_str(line);
        last.push('\n');
    }
    let reversed: String = tables.iter().rev().cloned().collect();
    assert_ne!(reversed, toml);
    let (a, b) = (spec(&toml), spec(&reversed));
    for node in ["alpha", "beta", "gamma"] {
        let first = node_files(&a, &lock, node).unwrap();
        assert_eq!(first, node_files(&a, &lock, node).unwrap());
        assert_eq!(first, node_files(&b, &lock, node).unwrap());
    }
}

#[test]
fn numbers_come_from_the_lock_and_a_stale_lock_is_refused() {
    let (toml, mut lock) = example();
    let spec = spec(&toml);
    // Numbers other than the defaults show up as they are in the lock.
    let drbd = lock
        .storage
        .get_mut("pgdata")
        .unwrap()
        .drbd
        .as_mut()
        .unwrap();
    drbd.minor = 1017;
    drbd.port = 7801;
    let res = node_files(&spec, &lock, "alpha").unwrap();
    let res = &res
        .iter()
        .find(|f| f.path == "etc/drbd.d/pgdata.res")
        .unwrap()
        .contents;
    assert!(res.contains("device minor 1017;"), "{res}");
    assert!(res.contains("address 10.99.0.1:7801;"), "{res}");

    lock.storage.remove("pgdata");
    let err = node_files(&spec, &lock, "alpha").unwrap_err();
    assert!(matches!(err, RenderError::NotLocked { .. }), "{err}");
    assert!(err.to_string().contains("run `quorate lock`"), "{err}");

    let err = node_files(&spec, &lock, "delta").unwrap_err();
    assert_eq!(
        err.to_string(),
        "node `delta` is not in the spec (nodes: alpha, beta, gamma)"
    );
}

#[test]
fn a_node_without_replicas_gets_no_drbd_file_and_avoided_units_get_no_drop_in() {
    let (toml, lock) = example();
    let spec = spec(&toml);
    let gamma: Vec<String> = node_files(&spec, &lock, "gamma")
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    // gamma is pgdata's diskless tie-breaker: it gets the resource (with `disk none`),
    // but not the db unit (needs a pgdata replica) nor the ci-runner VM (avoids gamma).
    assert!(gamma.contains(&"etc/drbd.d/pgdata.res".to_owned()));
    assert!(!gamma.iter().any(|p| p.contains("postgresql")));
    assert!(!gamma.iter().any(|p| p.contains("microvm@ci-runner")));
    assert!(gamma.iter().any(|p| p.contains("container@hass.service.d")));
}

#[test]
fn lxc_services_get_a_drop_in_and_witnesses_get_none() {
    let text = "[cluster]\nname = \"t\"\n\
        [nodes.a]\naddress = \"10.0.0.1\"\n\
        [nodes.b]\naddress = \"10.0.0.2\"\n\
        [nodes.pi]\naddress = \"10.0.0.3\"\nworkloads = false\n\
        [services.box]\nkind = \"lxc\"\ncontainer = \"box\"\n";
    let spec = quorate_spec::check(text, quorate_spec::Format::Toml)
        .spec
        .unwrap();
    assert_eq!(
        spec.services["box"].unit_name().as_deref(),
        Some("lxc@box.service")
    );
    let lock = quorate_lock::allocate(None, &spec).unwrap().lock;
    let on_a = quorate_render::node_files(&spec, &lock, "a").unwrap();
    assert!(
        on_a.iter()
            .any(|f| f.path == "etc/systemd/system/lxc@box.service.d/50-quorate.conf"),
        "{on_a:?}"
    );
    let on_pi = quorate_render::node_files(&spec, &lock, "pi").unwrap();
    assert!(on_pi.is_empty(), "a witness runs nothing: {on_pi:?}");
}
