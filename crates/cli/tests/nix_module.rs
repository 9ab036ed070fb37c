//! The NixOS module (nix/module.nix), evaluated for real: `nix-instantiate` (nix 2.8)
//! runs `lib.evalModules` from nixpkgs' lib on the module, with the NixOS options it sets
//! declared loosely by nix/tests/eval-module.nix. The generated cluster.json goes through
//! the real `quorate check` / `lock --check`, and the build-time check derivation is
//! built with `nix-build` in a private chroot store.
//!
//! nixpkgs' lib is found through `QUORATE_NIXPKGS_LIB`, else
//! `../shared/vendor/nixpkgs-lib/lib` beside the repository, else `<nixpkgs/lib>` from
//! NIX_PATH. Without nix-instantiate or a lib the tests say so loudly and skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::quorate_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The nixpkgs lib as a Nix expression, or None (after saying why) when there is none.
fn nixpkgs_lib() -> Option<String> {
    if Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .is_err()
    {
        support::skip(
            "nix-instantiate is not installed (apt-get install nix-bin; scripts/test.sh does this)",
        );
        return None;
    }
    if let Ok(dir) = std::env::var("QUORATE_NIXPKGS_LIB") {
        return Some(format!("import {dir}"));
    }
    let vendored = repo().join("../shared/vendor/nixpkgs-lib/lib");
    if vendored.join("default.nix").exists() {
        return Some(format!("import {}", vendored.display()));
    }
    let from_path = nix(&["--eval", "-E", "(import <nixpkgs/lib>).version"]);
    if from_path.status.success() {
        return Some("import <nixpkgs/lib>".to_owned());
    }
    // Not a package test.sh can install (nixpkgs is not in any registry this machine
    // reaches): a loud skip even under QUORATE_TEST_NO_SKIP, so that a fresh clone
    // without ../shared passes the README's test command.
    eprintln!(
        "SKIPPED: no nixpkgs lib (set QUORATE_NIXPKGS_LIB, vendor it at ../shared/vendor/nixpkgs-lib, or put nixpkgs on NIX_PATH)"
    );
    None
}

fn nix(args: &[&str]) -> Output {
    Command::new("nix-instantiate")
        .args(args)
        .output()
        .expect("nix-instantiate runs")
}

/// A host module: `cluster` imported, with this host name and extra settings.
fn host(cluster: &Path, host_name: &str, extra: &str) -> String {
    format!(
        "{{ lib, ... }}: {{ imports = [ {} ]; networking.hostName = \"{host_name}\"; {extra} }}",
        cluster.display()
    )
}

/// Evaluates the module for a host: Ok(JSON) or Err(nix's error text).
fn eval_host(lib: &str, host_module: &str, extra_args: &[&str]) -> Result<Value, String> {
    let harness = repo().join("nix/tests/eval-module.nix");
    let mut args = vec![
        "--readonly-mode",
        "--eval",
        "--strict",
        "--json",
        harness.to_str().unwrap(),
        "--arg",
        "lib",
        lib,
        "--arg",
        "host",
        host_module,
    ];
    args.extend_from_slice(extra_args);
    let out = nix(&args);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn example_cluster() -> PathBuf {
    repo().join("examples/nixos/cluster.nix")
}

fn quorate(args: &[&str]) -> Output {
    Command::new(quorate_bin()).args(args).output().unwrap()
}

#[test]
fn every_nix_file_parses() {
    if nixpkgs_lib().is_none() {
        return;
    }
    let mut files = Vec::new();
    let mut dirs = vec![repo()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    dirs.push(path);
                }
            } else if name.ends_with(".nix") {
                files.push(path);
            }
        }
    }
    assert!(
        files.len() >= 8,
        "expected the flake, module, package, lock app, tests and example: {files:?}"
    );
    for file in &files {
        let out = nix(&["--parse", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{} does not parse:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn example_cluster_json_is_the_homelab_toml_and_passes_check_and_lock_check() {
    let Some(lib) = nixpkgs_lib() else { return };
    let result = eval_host(&lib, &host(&example_cluster(), "alpha", ""), &[]).unwrap();
    assert_eq!(result["enabled"], true);
    assert_eq!(result["lockInstalled"], true);
    let spec_text = result["spec"].as_str().unwrap();

    // quorate reads the generated JSON as the same spec as the TOML example.
    let from_nix = quorate_spec::check(spec_text, quorate_spec::Format::Json);
    let toml = std::fs::read_to_string(repo().join("examples/homelab/quorate.toml")).unwrap();
    let from_toml = quorate_spec::check(&toml, quorate_spec::Format::Toml);
    assert_eq!(from_nix.errors(), 0, "{:#?}", from_nix.diagnostics);
    assert_eq!(from_nix.spec.unwrap(), from_toml.spec.unwrap());

    // And the real binary accepts it, with the example's committed lock up to date.
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("cluster.json");
    std::fs::write(&spec, spec_text).unwrap();
    std::fs::copy(
        repo().join("examples/nixos/quorate.lock"),
        dir.path().join("quorate.lock"),
    )
    .unwrap();
    let check = quorate(&["check", spec.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}");
    let lock = quorate(&["lock", "--check", spec.to_str().unwrap()]);
    assert!(lock.status.success(), "{lock:?}");
}

#[test]
fn the_vm_tests_locks_are_up_to_date() {
    let Some(lib) = nixpkgs_lib() else { return };
    for (cluster, lock) in [
        ("failover-cluster.nix", "failover.lock"),
        ("drbd-cluster.nix", "drbd.lock"),
    ] {
        let cluster = repo().join("nix/tests").join(cluster);
        let spec_text = eval_host(
            &lib,
            &host(&cluster, "alpha", ""),
            &["--arg", "specOnly", "true"],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("cluster.json");
        std::fs::write(&spec, spec_text.as_str().unwrap()).unwrap();
        let lock = repo().join("nix/tests").join(lock);
        let out = quorate(&[
            "lock",
            "--check",
            spec.to_str().unwrap(),
            "--lock",
            lock.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{} is stale: {out:?}", lock.display());
        let check = quorate(&["check", spec.to_str().unwrap()]);
        assert!(check.status.success(), "{check:?}");
    }
}

#[test]
fn a_read_only_group_moves_the_socket_where_the_group_and_the_cli_find_it() {
    let Some(lib) = nixpkgs_lib() else { return };
    let plain = eval_host(&lib, &host(&example_cluster(), "beta", ""), &[]).unwrap();
    assert!(plain["unit"]["environment"].get("QUORATE_SOCKET").is_none());
    assert!(plain["variables"].get("QUORATE_SOCKET").is_none());
    let extra = "services.quorate.readOnlyGroup = \"wheel\";";
    let result = eval_host(&lib, &host(&example_cluster(), "beta", extra), &[]).unwrap();
    let env = &result["unit"]["environment"];
    assert_eq!(env["QUORATE_READ_ONLY_GROUP"], "wheel");
    assert_eq!(env["QUORATE_SOCKET"], "/run/quorate/control.sock");
    assert_eq!(
        result["variables"]["QUORATE_SOCKET"],
        "/run/quorate/control.sock"
    );
    let service = &result["unit"]["serviceConfig"];
    assert_eq!(service["RuntimeDirectory"], "quorate");
    assert_eq!(service["RuntimeDirectoryMode"], "0755");
}

#[test]
fn the_cli_is_on_the_path_pointed_at_this_node_and_the_log_level_is_quorates() {
    let Some(lib) = nixpkgs_lib() else { return };
    let result = eval_host(&lib, &host(&example_cluster(), "beta", ""), &[]).unwrap();
    assert_eq!(result["systemPackages"], serde_json::json!(["quorate"]));
    assert_eq!(result["variables"]["QUORATE_DATA_DIR"], "/var/lib/quorate");
    assert_eq!(
        result["variables"]["QUORATE_SPEC"],
        "/etc/quorate/cluster.json"
    );
    let env = &result["unit"]["environment"];
    assert_eq!(env["QUORATE_LOG"], "info");
    assert!(
        env.get("RUST_LOG").is_none(),
        "RUST_LOG did nothing: {env:#}"
    );
    let extra = "services.quorate.logLevel = \"debug\";";
    let result = eval_host(&lib, &host(&example_cluster(), "beta", extra), &[]).unwrap();
    assert_eq!(result["unit"]["environment"]["QUORATE_LOG"], "debug");
}

#[test]
fn guests_quorate_runs_never_autostart() {
    let Some(lib) = nixpkgs_lib() else { return };
    let guests = ["--arg", "guests", "true"];
    // A host without the containers or microvm.nix options evaluates as before.
    assert!(eval_host(&lib, &host(&example_cluster(), "beta", ""), &[]).is_ok());
    // With them: explicit autostart off is fine ...
    let off = "containers.hass.autoStart = false; microvm.vms.ci-runner.autostart = false;";
    assert!(eval_host(&lib, &host(&example_cluster(), "beta", off), &guests).is_ok());
    // ... a container quorate runs that would also start at boot is refused, naming it ...
    let on = "containers.hass.autoStart = true;";
    let err = eval_host(&lib, &host(&example_cluster(), "beta", on), &guests).unwrap_err();
    assert!(err.contains("containers.hass.autoStart = false"), "{err}");
    // ... and so is a MicroVM left at microvm.nix's default (autostart on).
    let default_on = "microvm.vms.ci-runner = { autostart = true; };";
    let err = eval_host(&lib, &host(&example_cluster(), "beta", default_on), &guests).unwrap_err();
    assert!(
        err.contains("microvm.vms.ci-runner.autostart = false"),
        "{err}"
    );
}

#[test]
fn the_agent_unit_is_notify_with_watchdog_restart_and_network_online() {
    let Some(lib) = nixpkgs_lib() else { return };
    let extra = "services.quorate.watchdog.device = \"/dev/watchdog\"; services.quorate.dataDir = \"/srv/quorate\";";
    let result = eval_host(&lib, &host(&example_cluster(), "beta", extra), &[]).unwrap();
    let unit = &result["unit"];
    let service = &unit["serviceConfig"];
    assert_eq!(service["Type"], "notify");
    assert_eq!(service["NotifyAccess"], "main");
    assert_eq!(service["WatchdogSec"], "10s");
    assert_eq!(service["Restart"], "always");
    // The fence and the workloads outlive a stop/restart/crash of the agent (issue
    // "never twice", path 2), and workloads get cgroups below the agent's.
    assert_eq!(service["KillMode"], "process");
    assert_eq!(service["Delegate"], "yes");
    assert_eq!(service["LimitNOFILE"], 65536);
    assert!(
        service["ExecReload"]
            .as_str()
            .is_some_and(|r| r.ends_with("kill -HUP $MAINPID")),
        "{service:#}"
    );
    // A spec or lock change never restarts the agent: quorate-apply applies it.
    assert_eq!(unit["restartTriggers"], serde_json::json!([]));
    let apply = &result["apply"];
    assert_eq!(apply["serviceConfig"]["Type"], "oneshot");
    assert_eq!(apply["requires"], serde_json::json!(["quorate.service"]));
    assert_eq!(apply["environment"]["QUORATE_DATA_DIR"], "/srv/quorate");
    let triggers = apply["restartTriggers"].as_array().unwrap();
    assert_eq!(triggers.len(), 2, "spec text and lock file: {triggers:?}");
    assert!(
        triggers[0].as_str().unwrap().contains("\"cluster\""),
        "the spec text triggers it: {triggers:?}"
    );
    let script = apply["script"].as_str().unwrap();
    assert!(
        script.contains("quorate apply /etc/quorate/cluster.json --lock /etc/quorate/quorate.lock"),
        "{script}"
    );
    assert!(service["ExecStart"]
        .as_str()
        .unwrap()
        .ends_with("-quorate/bin/quorate agent"));
    // No hardening that would hide the agent's mounts from the services in a private
    // mount namespace.
    for option in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
    ] {
        assert!(service.get(option).is_none(), "{option} is set");
    }
    // The example's transport is WireGuard: the agent binds its overlay address, so
    // the mesh interface comes first.
    let first = serde_json::json!(["network-online.target", "wireguard-quorate0.service"]);
    assert_eq!(unit["after"], first);
    assert_eq!(unit["wants"], first);
    assert_eq!(unit["wantedBy"], serde_json::json!(["multi-user.target"]));
    let env = &unit["environment"];
    assert_eq!(env["QUORATE_NODE"], "beta");
    assert_eq!(env["QUORATE_SPEC"], "/etc/quorate/cluster.json");
    assert_eq!(env["QUORATE_LOCK"], "/etc/quorate/quorate.lock");
    assert_eq!(env["QUORATE_DATA_DIR"], "/srv/quorate");
    assert_eq!(env["QUORATE_KEY"], "/srv/quorate/tls/node.key");
    assert_eq!(env["QUORATE_WATCHDOG"], "/dev/watchdog");
    assert_eq!(
        result["tmpfiles"],
        serde_json::json!(["d /srv/quorate 0700 root root -"])
    );
    assert_eq!(
        result["checks"], 1,
        "the spec check is part of the system build"
    );
    // The units quorate manages are not started at boot; beta holds a pgdata replica,
    // so it gets the DRBD files.
    assert_eq!(
        result["managedUnits"],
        serde_json::json!({"nginx": [], "postgresql": []})
    );
    assert_eq!(
        result["etcFiles"],
        serde_json::json!([
            "drbd.conf",
            "drbd.d",
            "quorate/cluster.json",
            "quorate/quorate.lock"
        ])
    );

    // The environment names flags the agent really reads.
    let help = quorate(&["agent", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for (name, _) in env.as_object().unwrap() {
        if name.starts_with("QUORATE_") {
            assert!(help.contains(name), "`quorate agent` does not read {name}");
        }
    }
}

#[test]
fn open_firewall_opens_exactly_the_ports_of_the_lock() {
    let Some(lib) = nixpkgs_lib() else { return };
    let lock: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/nixos/quorate.lock")).unwrap(),
    )
    .unwrap();
    let drbd = &lock["storage"]["pgdata"]["drbd"];
    for node in ["alpha", "beta", "gamma"] {
        let result = eval_host(&lib, &host(&example_cluster(), node, ""), &[]).unwrap();
        let fw = &result["firewall"];
        // Every node holds a pgdata replica or is its tie-breaker, and a media brick.
        assert!(drbd["node_ids"].get(node).is_some());
        // Over WireGuard only the tunnel's UDP port is open on the underlay; the
        // cluster ports only on the mesh interface.
        assert_eq!(fw["tcp"], serde_json::json!([]), "{node}");
        assert_eq!(fw["tcpRanges"], serde_json::json!([]), "{node}");
        assert_eq!(
            fw["udp"],
            serde_json::json!([lock["nodes"][node]["wg_port"]]),
            "{node}"
        );
        let mesh_fw = &fw["interfaces"]["quorate0"];
        let expected_tcp = serde_json::json!([7400, drbd["port"], 24007, 24008]);
        assert_eq!(mesh_fw["allowedTCPPorts"], expected_tcp, "{node}");
        assert_eq!(
            mesh_fw["allowedTCPPortRanges"],
            serde_json::json!([{"from": 49152, "to": 49152}])
        );
    }

    // Without WireGuard or storage only the cluster port is opened.
    let vm = repo().join("nix/tests/failover-cluster.nix");
    let result = eval_host(&lib, &host(&vm, "gamma", ""), &[]).unwrap();
    assert_eq!(result["firewall"]["tcp"], serde_json::json!([7400]));
    assert_eq!(result["firewall"]["udp"], serde_json::json!([]));

    // openFirewall = false opens nothing.
    let result = eval_host(
        &lib,
        &host(
            &vm,
            "gamma",
            "services.quorate.openFirewall = lib.mkForce false;",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(result["firewall"]["tcp"], serde_json::json!([]));
}

#[test]
fn the_mesh_is_nixoss_wireguard_interface_with_the_peers_quorate_renders() {
    let Some(lib) = nixpkgs_lib() else { return };
    let example = repo().join("examples/homelab");
    let spec = quorate_spec::check(
        &std::fs::read_to_string(example.join("quorate.toml")).unwrap(),
        quorate_spec::Format::Toml,
    )
    .spec
    .unwrap();
    let lock: quorate_lock::Lock = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/nixos/quorate.lock")).unwrap(),
    )
    .unwrap();
    for node in ["alpha", "beta", "gamma"] {
        let result = eval_host(&lib, &host(&example_cluster(), node, ""), &[]).unwrap();
        let iface = &result["wireguard"]["quorate0"];
        let mesh = quorate_render::mesh(&spec, &lock, node).unwrap();
        assert_eq!(
            iface["ips"],
            serde_json::json!([format!("{}/{}", mesh.address, mesh.prefix_len)])
        );
        assert_eq!(iface["listenPort"], mesh.listen_port);
        assert_eq!(iface["privateKeyFile"], "/var/lib/quorate/wireguard.key");
        let peers = iface["peers"].as_array().unwrap();
        assert_eq!(peers.len(), mesh.peers.len(), "{node}");
        for (p, want) in peers.iter().zip(&mesh.peers) {
            assert_eq!(p["publicKey"], want.public_key.as_str());
            assert_eq!(p["endpoint"], want.endpoint.to_string());
            assert_eq!(
                p["allowedIPs"],
                serde_json::json!([format!("{}/32", want.overlay)])
            );
        }
    }
    // A direct cluster has no mesh.
    let vm = repo().join("nix/tests/failover-cluster.nix");
    let result = eval_host(&lib, &host(&vm, "gamma", ""), &[]).unwrap();
    assert_eq!(result["wireguard"], serde_json::json!({}));
}

#[test]
fn invalid_settings_fail_with_a_message_that_names_the_option() {
    let Some(lib) = nixpkgs_lib() else { return };
    let vm = repo().join("nix/tests/failover-cluster.nix");
    let cases = [
        ("delta", "", "services.quorate.nodeName"),
        (
            "alpha",
            "services.quorate.settings.services.witness.kind = lib.mkForce \"docker\";",
            "services.quorate.settings.services.witness.kind",
        ),
        (
            "alpha",
            "services.quorate.settings.services.witness.prefer = lib.mkForce [ \"omega\" ];",
            "services.quorate.settings.services.witness.prefer: unknown node `omega`",
        ),
        (
            "alpha",
            "services.quorate.settings.services.witness.storage = [ \"nope\" ];",
            "services.quorate.settings.services.witness.storage: unknown storage `nope`",
        ),
        (
            "alpha",
            "services.quorate.lockFile = lib.mkForce null;",
            "services.quorate.lockFile is not set",
        ),
        (
            "alpha",
            "services.quorate.tls.key = \"/nix/store/0000-secret/node.key\";",
            "services.quorate.tls.key points into the Nix store",
        ),
        (
            "alpha",
            "services.quorate.settings.cluster.name = lib.mkForce \"Bad_Name\";",
            "services.quorate.settings.cluster.name",
        ),
        (
            "alpha",
            "services.quorate.settings.nodes.alpha.address = lib.mkForce 7;",
            "services.quorate.settings.nodes.alpha.address",
        ),
    ];
    for (node, extra, expected) in cases {
        let err = eval_host(&lib, &host(&vm, node, extra), &[])
            .expect_err(&format!("`{extra}` on {node} should fail"));
        assert!(
            err.contains(expected),
            "`{extra}` on {node}: expected `{expected}` in:\n{err}"
        );
    }
}

/// Builds the module's check derivation (system.checks) in a private chroot store with
/// the quorate binary under test: a good spec builds, a bad one fails with quorate's own
/// error text — what `nixos-rebuild build` shows the user.
#[test]
fn the_build_time_check_fails_a_bad_spec_with_quorates_own_error() {
    let Some(lib) = nixpkgs_lib() else { return };
    let store = tempfile::tempdir().unwrap();
    let conf = store.path().join("etc");
    std::fs::create_dir_all(&conf).unwrap();
    let bin_dir = Path::new(quorate_bin()).parent().unwrap();
    std::fs::write(
        conf.join("nix.conf"),
        format!(
            "build-users-group =\nsubstituters =\nsandbox = true\nextra-sandbox-paths = /usr /bin=/usr/bin /lib=/usr/lib /lib64=/usr/lib64 /quorate-bin={}\n",
            bin_dir.display()
        ),
    )
    .unwrap();
    let build = |extra: &str| {
        Command::new("nix-build")
            .env("NIX_CONF_DIR", &conf)
            .env("HOME", store.path())
            .arg("--store")
            .arg(store.path().join("root"))
            .arg("--no-out-link")
            .arg(repo().join("nix/tests/eval-module.nix"))
            .args([
                "--arg",
                "lib",
                &lib,
                "--argstr",
                "checkWith",
                "/quorate-bin",
            ])
            .args(["--arg", "host", &host(&example_cluster(), "alpha", extra)])
            .output()
            .unwrap()
    };
    let good = build("");
    assert!(good.status.success(), "{good:?}");
    let stderr = String::from_utf8_lossy(&good.stderr);
    assert!(stderr.contains("quorate.lock is up to date"), "{stderr}");
    // The node's files the module installs are `quorate render`'s, byte for byte.
    let outputs = String::from_utf8_lossy(&good.stdout);
    let files_out = outputs.lines().last().unwrap().trim();
    let installed = store
        .path()
        .join("root")
        .join(files_out.trim_start_matches('/'));
    let rendered = tempfile::tempdir().unwrap();
    let example = repo().join("examples/homelab/quorate.toml");
    let out = quorate(&[
        "render",
        example.to_str().unwrap(),
        "--node",
        "alpha",
        "--out",
        rendered.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    for file in [
        "etc/drbd.d/pgdata.res",
        "etc/systemd/system/postgresql.service.d/50-quorate.conf",
        "etc/systemd/system/microvm@ci-runner.service.d/50-quorate.conf",
    ] {
        assert_eq!(
            std::fs::read(installed.join(file)).unwrap(),
            std::fs::read(rendered.path().join(file)).unwrap(),
            "{file}"
        );
    }

    let bad = build("services.quorate.settings.cluster.timings.heartbeat = lib.mkForce \"fast\";");
    assert!(!bad.status.success(), "a bad heartbeat built: {bad:?}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    let direct = {
        let dir = tempfile::tempdir().unwrap();
        let toml = std::fs::read_to_string(repo().join("examples/homelab/quorate.toml"))
            .unwrap()
            .replace("heartbeat = \"100ms\"", "heartbeat = \"fast\"");
        std::fs::write(dir.path().join("quorate.toml"), toml).unwrap();
        let out = quorate(&[
            "check",
            "--json",
            dir.path().join("quorate.toml").to_str().unwrap(),
        ]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let errors: Vec<&Value> = report["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["severity"] == "error")
            .collect();
        assert_eq!(errors.len(), 1, "{report}");
        errors[0]["message"].as_str().unwrap().to_owned()
    };
    // miette wraps long messages: compare without the wrapping.
    let flat = |s: &str| {
        s.replace('│', " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        flat(&stderr).contains(&flat(&direct)),
        "expected quorate's message `{direct}` in:\n{stderr}"
    );
}

/// A three-node cluster module with a `[ceph]`; `lock` adds `lockFile = ./quorate.lock`.
fn ceph_cluster(lock: bool) -> String {
    let lock_file = if lock {
        "lockFile = ./quorate.lock;"
    } else {
        ""
    };
    format!(
        r#"{{ services.quorate = {{
  enable = true; openFirewall = true; {lock_file}
  settings = {{
    cluster.name = "cephlab";
    nodes = {{
      a = {{ address = "192.168.1.1"; storage_address = "10.1.0.1"; }};
      b = {{ address = "192.168.1.2"; storage_address = "10.1.0.2"; }};
      c = {{ address = "192.168.1.3"; storage_address = "10.1.0.3"; }};
    }};
    ceph = {{
      public_network = "10.1.0.0/24";
      osds = {{ a = [ "/dev/vdb" ]; c = [ "/dev/vdb" "/dev/vdc" ]; }};
      pools = {{ rbd = "rbd"; }};
      filesystems = [ "shared" ];
      config = {{ "osd pool default size" = "2"; }};
    }};
  }};
}}; }}"#
    )
}

#[test]
fn a_declared_ceph_is_wired_into_nixos_services_ceph_from_the_spec_and_the_lock() {
    let Some(lib) = nixpkgs_lib() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.nix");
    std::fs::write(&cluster, ceph_cluster(false)).unwrap();
    let spec_text = eval_host(
        &lib,
        &host(&cluster, "a", ""),
        &["--arg", "specOnly", "true"],
    )
    .unwrap();
    let spec_path = dir.path().join("cluster.json");
    std::fs::write(&spec_path, spec_text.as_str().unwrap()).unwrap();
    let out = quorate(&["lock", spec_path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&cluster, ceph_cluster(true)).unwrap();
    let spec = quorate_spec::check(spec_text.as_str().unwrap(), quorate_spec::Format::Json)
        .spec
        .unwrap();
    let lock: quorate_lock::Lock =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("quorate.lock")).unwrap())
            .unwrap();
    let fsid = lock.ceph.as_ref().unwrap().fsid.clone();
    let want = [
        // node, mon/mgr, mds (the first monitor, as file systems are declared), OSD ids
        ("a", true, true, vec!["0"]),
        ("b", true, false, vec![]),
        ("c", true, false, vec!["1", "2"]),
    ];
    for (node, mon, mds, osds) in want {
        let result =
            eval_host(&lib, &host(&cluster, node, ""), &["--arg", "ceph", "true"]).unwrap();
        let ceph = &result["ceph"];
        assert_eq!(ceph["enable"], true, "{node}: {ceph}");
        assert_eq!(ceph["global"]["fsid"], fsid.as_str());
        assert_eq!(ceph["global"]["monInitialMembers"], "a, b, c");
        assert_eq!(ceph["global"]["publicNetwork"], "10.1.0.0/24");
        // The monitors NixOS configures are the ones `quorate render` writes.
        let conf = quorate_render::ceph_conf(&spec, &lock, node).unwrap();
        let mon_host = ceph["global"]["monHost"].as_str().unwrap();
        assert!(conf.contains(&format!("mon host = {mon_host}\n")), "{conf}");
        assert!(mon_host.starts_with("[v2:10.1.0.1:3300,v1:10.1.0.1:6789],"));
        assert_eq!(ceph["extraConfig"]["osd pool default size"], "2");
        assert_eq!(ceph["mon"]["enable"], mon);
        assert_eq!(ceph["mon"]["daemons"], serde_json::json!([node]));
        assert_eq!(ceph["mgr"]["daemons"], serde_json::json!([node]));
        assert_eq!(ceph["mds"]["enable"], mds, "{node}");
        assert_eq!(ceph["osd"]["daemons"], serde_json::json!(osds), "{node}");
        assert_eq!(ceph["osd"]["enable"], !osds.is_empty(), "{node}");
        let tcp = result["firewall"]["tcp"].as_array().unwrap();
        assert!(tcp.contains(&serde_json::json!(3300)) && tcp.contains(&serde_json::json!(6789)));
        assert!(result["firewall"]["tcpRanges"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"from": 6800, "to": 7300})));
    }
    // A system without NixOS's Ceph module evaluates too (nothing to wire into).
    let result = eval_host(&lib, &host(&cluster, "b", ""), &[]).unwrap();
    assert_eq!(result["ceph"], serde_json::Value::Null);
}
