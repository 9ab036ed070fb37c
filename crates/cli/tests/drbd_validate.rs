//! Generated DRBD configs pass the real `drbdadm` (drbd-utils) on every node that holds
//! a replica or the tie-breaker, run *as* that node: in a network namespace that has
//! the node's DRBD address, with the node's hostname (`unshare --uts`), as
//! ../shared/substrate/drbd-validate.sh does. `sh-nop`, `dump all` and `-d adjust all`
//! must be clean, without "no normal resources defined for this host". This kernel has
//! no DRBD module: only the configuration is judged here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use support::quorate_bin;

/// A namespace with addresses on lo, deleted on drop.
struct Host(String);

impl Host {
    fn new(name: &str, addresses: &[String]) -> Self {
        let host = Self(name.to_owned());
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        for a in addresses {
            let prefix = if a.contains(':') { "128" } else { "32" };
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{a}/{prefix}"),
                "dev",
                "lo",
            ]);
        }
        host
    }

    /// drbdadm as `node` inside this namespace: (success, output).
    fn drbdadm(&self, node: &str, conf: &Path, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "unshare", "--uts", "sh", "-c"])
            .arg("hostname \"$0\"; exec drbdadm \"$@\"")
            .arg(node)
            .arg("-c")
            .arg(conf)
            .args(args)
            // No kernel module here: keep drbdadm from asking modinfo on every call.
            .env("DRBD_DRIVER_VERSION_OVERRIDE", "9.2.0")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn unavailable() -> Option<String> {
    if Command::new("drbdadm").arg("--version").output().is_err() {
        return Some(
            "drbdadm is not installed (apt-get install drbd-utils; scripts/test.sh does this)"
                .into(),
        );
    }
    quorate_lab::netns::unavailable()
}

/// Renders every node of the spec in `dir` and checks each node's DRBD files with drbdadm
/// as that node. Returns how many (node, resource) pairs were checked.
fn validate(dir: &Path, tag: &str) -> usize {
    let spec_path = dir.join("quorate.toml");
    let run = |args: &[&str]| {
        let out = Command::new(quorate_bin()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "quorate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let spec = spec_path.to_str().unwrap();
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("quorate.lock")).unwrap()).unwrap();
    let text = std::fs::read_to_string(&spec_path).unwrap();
    let parsed = quorate_spec::check(&text, quorate_spec::Format::Toml)
        .spec
        .unwrap();
    let wireguard = parsed.network.transport == quorate_spec::Transport::Wireguard;
    let mut checked = 0;
    for (i, (node, node_spec)) in parsed.nodes.iter().enumerate() {
        let out_dir = dir.join("render").join(node);
        let listed = run(&[
            "render",
            spec,
            "--node",
            node,
            "--out",
            out_dir.to_str().unwrap(),
            "--json",
        ]);
        let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        let resources: Vec<String> = listed["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| {
                f["path"]
                    .as_str()?
                    .strip_prefix("etc/drbd.d/")
                    .map(str::to_owned)
            })
            .collect();
        if resources.is_empty() {
            continue;
        }
        let address = if wireguard {
            lock["nodes"][node]["overlay_ip"]
                .as_str()
                .unwrap()
                .to_owned()
        } else {
            node_spec.address.to_string()
        };
        let conf = out_dir.join("drbd.conf");
        std::fs::write(
            &conf,
            format!(
                "global {{ usage-count no; }}\ninclude \"{}/etc/drbd.d/*.res\";\n",
                out_dir.display()
            ),
        )
        .unwrap();
        let host = Host::new(
            &format!("qdv{}{tag}{i}", std::process::id() % 10_000),
            &[address],
        );
        for args in [&["sh-nop"][..], &["dump", "all"], &["-d", "adjust", "all"]] {
            let (ok, text) = host.drbdadm(node, &conf, args);
            assert!(ok, "drbdadm {args:?} as {node}: {text}");
            assert!(
                !text.contains("no normal resources defined for this host"),
                "drbdadm {args:?} as {node}: {text}"
            );
        }
        // adjust would bring up exactly this node's resources.
        let (_, plan) = host.drbdadm(node, &conf, &["-d", "adjust", "all"]);
        for res in &resources {
            let name = res.trim_end_matches(".res");
            assert!(plan.contains(&format!("new-resource {name} ")), "{plan}");
        }
        checked += resources.len();
    }
    checked
}

#[test]
fn the_homelab_example_passes_drbdadm_on_every_drbd_node() {
    if let Some(why) = unavailable() {
        support::skip(&why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/homelab");
    for file in ["quorate.toml", "quorate.lock"] {
        std::fs::copy(example.join(file), dir.path().join(file)).unwrap();
    }
    // pgdata: replicas on alpha and beta, the tie-breaker on gamma.
    assert_eq!(validate(dir.path(), "h"), 3);
}

#[test]
fn random_specs_pass_drbdadm_and_numbers_never_collide() {
    if let Some(why) = unavailable() {
        support::skip(&why);
        return;
    }
    let mut rng = fastrand::Rng::with_seed(42);
    for round in 0..4 {
        let nodes = rng.usize(3..=5);
        let wireguard = rng.bool();
        let mut spec = String::from("[cluster]\nname = \"rnd\"\n");
        if wireguard {
            spec.push_str("[network]\ntransport = \"wireguard\"\noverlay = \"10.77.9.0/24\"\n");
        }
        for n in 1..=nodes {
            spec.push_str(&format!("[nodes.n{n}]\naddress = \"10.66.{round}.{n}\"\n"));
            if wireguard {
                // Any 32 bytes in base64 make a key `check` accepts.
                let key = format!("{:A<43}=", format!("n{n}"));
                spec.push_str(&format!("wireguard.public_key = \"{key}\"\n"));
            }
        }
        let resources = rng.usize(1..=6);
        for r in 0..resources {
            let mut replicas: Vec<usize> = (1..=nodes).collect();
            rng.shuffle(&mut replicas);
            replicas.truncate(rng.usize(2..=3));
            let list: Vec<String> = replicas.iter().map(|n| format!("\"n{n}\"")).collect();
            spec.push_str(&format!(
                "[storage.r{r}]\nkind = \"drbd\"\nnodes = [{}]\ndevice = \"/dev/vg0/r{r}\"\n",
                list.join(", ")
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("quorate.toml"), &spec).unwrap();
        let out = Command::new(quorate_bin())
            .args(["lock", dir.path().join("quorate.toml").to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{spec}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let checked = validate(dir.path(), &format!("r{round}"));
        assert!(checked >= resources * 2, "{spec}: only {checked} checked");
        // No two resources share a minor or a port.
        let lock: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("quorate.lock")).unwrap(),
        )
        .unwrap();
        let mut minors = BTreeMap::new();
        let mut ports = BTreeMap::new();
        for (name, st) in lock["storage"].as_object().unwrap() {
            let drbd = &st["drbd"];
            assert!(
                minors
                    .insert(drbd["minor"].to_string(), name.clone())
                    .is_none(),
                "{lock}"
            );
            assert!(
                ports
                    .insert(drbd["port"].to_string(), name.clone())
                    .is_none(),
                "{lock}"
            );
        }
    }
}
