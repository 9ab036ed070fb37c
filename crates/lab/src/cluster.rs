//! A cluster of real `quorate agent` processes, each in its node's network namespace
//! with its own data dir (and so its own fence process and workloads), and the faults
//! the lab makes on it. Every process and namespace goes when it drops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::checker::{self, Operation};
use crate::netns::Network;

/// How a lab cluster is made.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of nodes (each a network namespace).
    pub nodes: usize,
    /// Number of witness services (`s1`…).
    pub services: usize,
    /// How many of the nodes vote in Raft (the first ones); the rest are members
    /// with `voter = false`. `None`: every node votes.
    pub voters: Option<usize>,
    /// The `quorate` binary.
    pub quorate: PathBuf,
    /// Extra environment for every agent (e.g. `QUORATE_UNSAFE_NO_FENCE=1`).
    pub env: Vec<(String, String)>,
    /// Namespace name prefix.
    pub prefix: String,
    /// Run a glusterd on every node, each in its own mount namespace (private
    /// /var/lib/glusterd, /var/log/glusterfs, /run and brick directory), with the
    /// agent inside that namespace too. Bricks are at [`LabCluster::brick_path`].
    pub gluster: bool,
    /// `network.transport = "wireguard"`: each node gets a key (`quorate wg keygen`),
    /// a private /run/wireguard (wireguard-go's socket) in its own mount namespace, and
    /// its mesh interface (`quorate net up`, userspace wireguard-go here) before its
    /// agent starts; every node-to-node packet then goes through the tunnels.
    pub wireguard: bool,
    /// Each node gets a Nix store of its own: `<dir>/gl/<node>/nix` is mounted on
    /// `/nix` in the node's mount namespace, so `nix-env`, profiles and
    /// `/nix/store/…` paths there are the node's, as on a NixOS host; from outside it
    /// is the chroot store `local?root=<dir>/gl/<node>` ([`LabCluster::nix_store_template`]).
    pub nix_stores: bool,
    /// A real Ceph ([`crate::ceph::Ceph`]) on a storage network of its own: every node
    /// gets an `eth1` there (`nodes.<n>.storage_address` in the spec) and a mount
    /// namespace of its own (mount points are per node); the daemons run in one more
    /// namespace. `@CEPH@` in `extra_spec` stands for Ceph's directory (config,
    /// keyrings).
    pub ceph: bool,
    /// The nodes run Ceph themselves (a `[ceph]` in `extra_spec`, set up with `quorate
    /// ceph bootstrap`): the storage network as with `ceph` but no Ceph of the lab's
    /// own; each node's mount namespace has private `/etc/ceph`, `/var/lib/ceph`,
    /// `/run/ceph` and `/var/log/ceph` (under `<dir>/gl/<node>/`), the paths NixOS's
    /// `services.ceph` uses.
    pub ceph_nodes: bool,
    /// TOML appended to the generated spec (more services, storage); `@DIR@` stands
    /// for the lab's work directory.
    pub extra_spec: String,
}

impl Options {
    /// `nodes` nodes running `quorate`, namespaces named `prefix…`: no witness
    /// services, every node a voter, no extra environment, storage or spec — set
    /// those with struct update syntax (`Options { ceph: true, ..Options::new(…) }`).
    pub fn new(nodes: usize, quorate: impl Into<PathBuf>, prefix: &str) -> Self {
        Self {
            nodes,
            services: 0,
            voters: None,
            quorate: quorate.into(),
            env: Vec::new(),
            prefix: prefix.to_owned(),
            gluster: false,
            wireguard: false,
            nix_stores: false,
            ceph: false,
            ceph_nodes: false,
            extra_spec: String::new(),
        }
    }
}

/// With `Options::ceph_nodes`: each node's private directory (under `<dir>/gl/<node>/`)
/// and where it is mounted in the node's mount namespace.
pub const CEPH_NODE_DIRS: [(&str, &str); 4] = [
    ("etc-ceph", "/etc/ceph"),
    ("lib-ceph", "/var/lib/ceph"),
    ("run-ceph", "/run/ceph"),
    ("log-ceph", "/var/log/ceph"),
];

/// The `quorate` binary beside the running executable (target/…/quorate), else on PATH.
#[must_use]
pub fn default_quorate() -> PathBuf {
    if let Ok(path) = std::env::var("QUORATE_BIN") {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let dir = exe.parent()?;
            // Test binaries live in target/<profile>/deps.
            [dir.join("quorate"), dir.parent()?.join("quorate")]
                .into_iter()
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from("quorate"))
}

/// SIGKILLs what an agent left running, as its data dir records it: the fence process
/// (`fence.pid`) and the workloads' process groups (`workloads.json`). The agent itself
/// must be killed by the caller first (or it would start them again).
pub fn kill_fence_and_workloads(data_dir: &Path) {
    let fence: Option<i32> = std::fs::read_to_string(data_dir.join("fence.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    let records: Vec<serde_json::Value> = std::fs::read(data_dir.join("workloads.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    if let Some(f) = fence.filter(|f| *f > 1) {
        let _ = kill(Pid::from_raw(f), Signal::SIGKILL);
    }
    // Never group 0 or 1 (ours, or everything): units have no group of ours.
    for r in &records {
        if let Some(g) = r["pgid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
            if g > 1 {
                let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            }
        }
    }
    // Their cgroups: everything in them dies, and the directories go (a power loss
    // leaves no cgroup behind either).
    for dir in records
        .iter()
        .filter_map(|r| r["cgroup"].as_str())
        .map(Path::new)
    {
        kill_cgroup(dir);
    }
    // The agent's whole cgroup tree (every workload cgroup it made, recorded or not).
    if let Ok(tree) = std::fs::read_to_string(data_dir.join("cgroup")) {
        kill_cgroup_tree(Path::new(tree.trim()));
    }
}

/// [`kill_cgroup`] of every directory below `dir`, deepest first, then of `dir`.
pub fn kill_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_cgroup_tree(&e.path());
            }
        }
    }
    kill_cgroup(dir);
}

/// SIGKILLs everything in a cgroup v2 directory and removes it (the lab's own few
/// lines, independent of the agent's code).
/// A killed process stays a member until it is reaped (orphans are reaped by PID 1,
/// slowly on these machines), so the directory is removed once it can be, within 5 s.
pub fn kill_cgroup(dir: &Path) {
    for _ in 0..500 {
        let _ = std::fs::write(dir.join("cgroup.kill"), b"1");
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// Node `name`'s data dir in a cluster work dir: `<dir>/d/<name>`.
#[must_use]
pub fn node_data_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("d").join(name)
}

/// Prepares a cluster work dir whose `quorate.toml` is written: locks it, creates the
/// CA (`<dir>/ca`, named `cluster`) and one certificate per node in its data dir's
/// `tls/`. Used by the lab and by the loopback test clusters.
///
/// # Errors
/// A `quorate` command fails (its stderr is in the message).
pub fn lock_and_certify(
    quorate: &Path,
    dir: &Path,
    cluster: &str,
    nodes: &[String],
) -> Result<(), String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new(quorate)
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", quorate.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "quorate {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(&["lock"])?;
    run(&["ca", "init", "ca", "--cluster", cluster])?;
    for name in nodes {
        let tls = node_data_dir(dir, name).join("tls");
        run(&[
            "ca",
            "issue",
            name,
            "--ca",
            "ca",
            "--out",
            &tls.to_string_lossy(),
        ])?;
    }
    Ok(())
}

/// A running lab cluster.
#[derive(Debug)]
pub struct LabCluster {
    /// The network.
    pub net: Network,
    /// The work directory: spec, lock, CA, data dirs, journal, client record, logs.
    pub dir: tempfile::TempDir,
    /// Node names `n1`…
    pub names: Vec<String>,
    /// The names of the witness services in the spec now: `s1`… at first; a rename
    /// (see [`LabCluster::rename_service`]) changes one, a removal takes one out.
    pub services: Vec<String>,
    /// Every witness service as the spec has it now, in spec order.
    shapes: Vec<ServiceShape>,
    options: Options,
    agents: BTreeMap<String, Child>,
    /// Persistent mount namespaces per node (gluster and WireGuard labs), under a
    /// private mount.
    mount_ns: Option<PathBuf>,
    paused: std::collections::BTreeSet<String>,
    /// Each node's WireGuard public key (WireGuard labs).
    wg_keys: BTreeMap<String, String>,
    /// The lab's Ceph (Ceph labs).
    ceph: Option<crate::ceph::Ceph>,
}

/// The overlay of WireGuard labs.
pub const OVERLAY: &str = "10.89.0.0/24";

/// The witness workloads, by service index (s1, s2, …, round robin): extra `demo`
/// arguments and the stop timeout. Besides a plain one, adversaries: one that ignores
/// SIGTERM (only the SIGKILL after its stop timeout ends it), one whose child leaves
/// its process group with setsid(), one that takes a second to stop.
pub const WORKLOADS: [(&str, &str); 4] = [
    ("", "2s"),
    (", \"--ignore-term\"", "3s"),
    (", \"--escape\"", "2s"),
    (", \"--stop-delay\", \"1s\"", "4s"),
];

/// A witness service as the lab's spec declares it.
#[derive(Clone, Debug)]
struct ServiceShape {
    /// Its name in the spec now.
    name: String,
    /// Which witness it is (0 for s1): its workload, and the name its records carry
    /// (`--witness-as s1` under every name, so that the checker follows it across
    /// renames).
    index: usize,
    /// `renamed_from` in the spec.
    renamed_from: Option<String>,
    /// False while removed from the spec.
    in_spec: bool,
}

impl LabCluster {
    /// Writes `quorate.toml`: the nodes, the witness services as they are now, and
    /// the extra spec.
    fn write_spec(&self) -> Result<(), String> {
        let mut spec = String::from("[cluster]\nname = \"lab\"\n\n[network]\nport = 7400\n");
        if self.options.wireguard {
            spec.push_str(&format!(
                "transport = \"wireguard\"\noverlay = \"{OVERLAY}\"\n"
            ));
        }
        for (i, name) in self.names.iter().enumerate() {
            spec.push_str(&format!(
                "\n[nodes.{name}]\naddress = \"{}\"\n",
                Network::address(i + 1)
            ));
            if let Some(key) = self.wg_keys.get(name) {
                spec.push_str(&format!("wireguard.public_key = \"{key}\"\n"));
            }
            if self.options.ceph || self.options.ceph_nodes {
                spec.push_str(&format!(
                    "storage_address = \"{}\"\n",
                    crate::netns::Network::storage_address(i + 1)
                ));
            }
            if self.options.voters.is_some_and(|v| i >= v) {
                spec.push_str("voter = false\n");
            }
        }
        for shape in self.shapes.iter().filter(|s| s.in_spec) {
            let (extra, stop_timeout) = WORKLOADS[shape.index % WORKLOADS.len()];
            spec.push_str(&format!(
                "\n[services.{}]\nkind = \"process\"\ncommand = [{:?}, \"demo\", \"--witness-as\", \"s{}\"{extra}]\nstop_timeout = \"{stop_timeout}\"\n",
                shape.name,
                self.options.quorate.display().to_string(),
                shape.index + 1,
            ));
            if let Some(old) = &shape.renamed_from {
                spec.push_str(&format!("renamed_from = \"{old}\"\n"));
            }
        }
        spec.push_str(
            &self
                .options
                .extra_spec
                .replace("@DIR@", &self.dir.path().to_string_lossy())
                .replace("@CEPH@", &self.dir.path().join("ceph").to_string_lossy()),
        );
        // Whole or not at all: an agent (re)starting now reads one spec or the other.
        let path = self.dir.path().join("quorate.toml");
        let temp = self.dir.path().join("quorate.toml.tmp");
        std::fs::write(&temp, spec)
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Makes the network, the spec, the lock, the CA and one certificate per node.
    ///
    /// # Errors
    /// Namespaces cannot be made, or a `quorate` command fails.
    pub fn new(options: Options) -> Result<Self, String> {
        let mut net = Network::new(&options.prefix, options.nodes)?;
        let storage_host = if options.ceph || options.ceph_nodes {
            Some(net.add_storage_network()?)
        } else {
            None
        };
        let mut dir = tempfile::Builder::new()
            .prefix("quorate-lab-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        // QUORATE_LAB_KEEP=1 keeps the work dir (logs, journal) for a post-mortem.
        if std::env::var("QUORATE_LAB_KEEP").is_ok_and(|v| v == "1") {
            dir.disable_cleanup(true);
        }
        let names: Vec<String> = (1..=options.nodes).map(|i| format!("n{i}")).collect();
        let services: Vec<String> = (1..=options.services).map(|i| format!("s{i}")).collect();
        let gluster = options.gluster;
        let wireguard = options.wireguard;
        let mut cluster = Self {
            net,
            dir,
            names,
            shapes: services
                .iter()
                .enumerate()
                .map(|(i, name)| ServiceShape {
                    name: name.clone(),
                    index: i,
                    renamed_from: None,
                    in_spec: true,
                })
                .collect(),
            services,
            options,
            agents: BTreeMap::new(),
            mount_ns: None,
            ceph: None,
            paused: std::collections::BTreeSet::new(),
            wg_keys: BTreeMap::new(),
        };
        if wireguard {
            for name in cluster.names.clone() {
                let key = cluster.wg_public_key("keygen", &name)?;
                cluster.wg_keys.insert(name, key);
            }
        }
        cluster.write_spec()?;
        lock_and_certify(
            &cluster.options.quorate,
            cluster.path(),
            "lab",
            &cluster.names,
        )?;
        if let Some(host) = storage_host.filter(|_| cluster.options.ceph) {
            let ceph = crate::ceph::Ceph::start(&host, &cluster.path().join("ceph"))?;
            cluster.ceph = Some(ceph);
        }
        if gluster
            || wireguard
            || cluster.options.nix_stores
            || cluster.options.ceph
            || cluster.options.ceph_nodes
        {
            cluster.make_mount_namespaces()?;
        }
        if gluster {
            for name in cluster.names.clone() {
                cluster.start_glusterd(&name)?;
            }
        }
        Ok(cluster)
    }

    /// The lab's Ceph (with `Options::ceph`).
    #[must_use]
    pub fn ceph(&self) -> Option<&crate::ceph::Ceph> {
        self.ceph.as_ref()
    }

    /// `nix copy --to` for node `{node}`'s store (a chroot store whose `/nix` is the
    /// one mounted in that node's namespace), for `quorate deploy --copy-to`.
    #[must_use]
    pub fn nix_store_template(&self) -> String {
        format!("local?root={}/gl/{{node}}", self.path().display())
    }

    /// Where node `name`'s `/nix` is, seen from outside.
    #[must_use]
    pub fn nix_dir(&self, name: &str) -> PathBuf {
        self.path().join("gl").join(name).join("nix")
    }

    /// A command prefix running a command on node `{node}` (its network and mount
    /// namespaces), for `quorate deploy --exec`.
    #[must_use]
    pub fn exec_template(&self) -> String {
        let ns = self.net.nodes[0].trim_end_matches("-n1");
        let mut t = format!("nsenter --net=/run/netns/{ns}-{{node}}");
        if let Some(dir) = &self.mount_ns {
            t.push_str(&format!(
                " --mount={}/{{node}} --wd={}",
                dir.display(),
                self.path().display()
            ));
        }
        t + " --"
    }

    /// The brick directory path (the same on every node; each node's mount namespace
    /// has its own directory there).
    #[must_use]
    pub fn brick_path(&self) -> PathBuf {
        self.path().join("brick")
    }

    fn node_ns_file(&self, name: &str) -> Option<PathBuf> {
        self.mount_ns.as_ref().map(|d| d.join(name))
    }

    /// A command run inside node `name`'s namespaces (network, and mount when it has one).
    #[must_use]
    pub fn on_node(&self, name: &str) -> Command {
        let ns = &self.net.nodes[self.index(name) - 1];
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"));
        if let Some(file) = self.node_ns_file(name) {
            c.arg(format!("--mount={}", file.display()));
            // Entering a mount namespace resets the working directory.
            c.arg(format!("--wd={}", self.path().display()));
        }
        c.arg("--");
        c
    }

    /// One persistent mount namespace per node: private GlusterFS state and /run in
    /// gluster labs, a private /run/wireguard (wireguard-go's socket) in WireGuard labs.
    fn make_mount_namespaces(&mut self) -> Result<(), String> {
        let sh = |script: &str| -> Result<(), String> {
            let out = Command::new("sh")
                .args(["-ec", script])
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{script}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let nsdir = self.path().join("mntns");
        std::fs::create_dir_all(&nsdir).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(self.brick_path()).map_err(|e| e.to_string())?;
        // nsfs files must live on a private mount.
        sh(&format!(
            "mount --bind {0} {0} && mount --make-private {0}",
            nsdir.display()
        ))?;
        self.mount_ns = Some(nsdir.clone());
        if self.options.wireguard && !self.options.gluster {
            std::fs::create_dir_all("/run/wireguard").map_err(|e| e.to_string())?;
        }
        if self.options.nix_stores {
            // The mount point; running any `nix` as root makes it anyway.
            std::fs::create_dir_all("/nix").map_err(|e| e.to_string())?;
        }
        for name in self.names.clone() {
            let node_dir = self.path().join("gl").join(&name);
            for sub in ["log", "run/wireguard", "brick", "wg", "nix/store"] {
                std::fs::create_dir_all(node_dir.join(sub)).map_err(|e| e.to_string())?;
            }
            let file = nsdir.join(&name);
            std::fs::write(&file, b"").map_err(|e| e.to_string())?;
            let mounts = if self.options.gluster {
                // /run is private, and /run/wireguard with it.
                format!(
                    "cp -a /var/lib/glusterd {d}/lib && unshare --mount={f} --propagation private sh -ec 'mount --bind {d}/lib /var/lib/glusterd; mount --bind {d}/log /var/log/glusterfs; mount --bind {d}/run /run; mount --bind {d}/brick {b}'",
                    d = node_dir.display(),
                    f = file.display(),
                    b = self.brick_path().display()
                )
            } else if self.options.wireguard {
                format!(
                    "unshare --mount={f} --propagation private sh -ec 'mount --bind {d}/wg /run/wireguard'",
                    d = node_dir.display(),
                    f = file.display(),
                )
            } else {
                // Nothing of the host's to hide yet: the other options bind below.
                format!(
                    "unshare --mount={f} --propagation private true",
                    f = file.display()
                )
            };
            let mounts = if self.options.nix_stores {
                format!(
                    "{} && nsenter --mount={f} mount --bind {d}/nix /nix",
                    mounts,
                    d = node_dir.display(),
                    f = file.display(),
                )
            } else {
                mounts
            };
            let mounts = if self.options.ceph_nodes {
                let mut binds = String::new();
                for (sub, target) in CEPH_NODE_DIRS {
                    std::fs::create_dir_all(node_dir.join(sub)).map_err(|e| e.to_string())?;
                    std::fs::create_dir_all(target).map_err(|e| e.to_string())?;
                    binds.push_str(&format!(
                        " && nsenter --mount={f} mount --bind {d}/{sub} {target}",
                        d = node_dir.display(),
                        f = file.display(),
                    ));
                }
                mounts + &binds
            } else {
                mounts
            };
            sh(&mounts)?;
        }
        Ok(())
    }

    /// Starts node `name`'s glusterd and waits until it answers.
    ///
    /// # Errors
    /// glusterd does not start or answer within 30 s.
    pub fn start_glusterd(&self, name: &str) -> Result<(), String> {
        let out = self
            .on_node(name)
            .args([
                "glusterd",
                "-p",
                "/run/glusterd.pid",
                "--log-level",
                "WARNING",
            ])
            .output()
            .map_err(|e| format!("cannot run glusterd: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "glusterd on {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            let ok = self
                .on_node(name)
                .args(["gluster", "--mode=script", "pool", "list"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("glusterd on {name} did not answer within 30 s"))
    }

    /// The work directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A node's data dir.
    #[must_use]
    pub fn data_dir(&self, name: &str) -> PathBuf {
        node_data_dir(self.path(), name)
    }

    /// The witness journal.
    #[must_use]
    pub fn journal(&self) -> PathBuf {
        self.path().join("journal")
    }

    /// The client record (operations submitted, acknowledged or not).
    #[must_use]
    pub fn client_record(&self) -> PathBuf {
        self.path().join("client.jsonl")
    }

    fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .map_or(0, |i| i + 1)
    }

    fn quorate(&self, args: &[&str]) -> Result<Output, String> {
        Command::new(&self.options.quorate)
            .args(args)
            .current_dir(self.path())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.options.quorate.display()))
    }

    /// Starts a node's agent inside its namespace.
    ///
    /// # Errors
    /// The agent cannot be spawned.
    pub fn start(&mut self, name: &str) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("{name}.log")))
            .map_err(|e| e.to_string())?;
        if self.options.wireguard {
            self.mesh_up(name)?;
        }
        // `nsenter` execs the agent: the child's pid is the agent's.
        let child = self
            .quorate_on(name, &["agent"])
            .env(
                "QUORATE_LOG",
                std::env::var("QUORATE_LAB_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("QUORATE_WITNESS_JOURNAL", self.journal())
            .envs(
                self.options
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start the agent of {name}: {e}"))?;
        self.agents.insert(name.to_owned(), child);
        Ok(())
    }

    /// `quorate ARGS --spec quorate.toml --node NAME --data-dir D` inside node `name`'s
    /// namespaces, from the lab's directory.
    fn quorate_on(&self, name: &str, args: &[&str]) -> Command {
        let mut command = self.on_node(name);
        command
            .arg(&self.options.quorate)
            .args(args)
            .args(["--spec", "quorate.toml", "--node", name, "--data-dir"])
            .arg(self.data_dir(name))
            .current_dir(self.path());
        command
    }

    /// `quorate net up` on node `name` (idempotent): its mesh interface from the spec.
    ///
    /// # Errors
    /// The command fails.
    pub fn mesh_up(&self, name: &str) -> Result<(), String> {
        let out = self
            .quorate_on(name, &["net", "up"])
            .output()
            .map_err(|e| format!("cannot run quorate net up on {name}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "quorate net up on {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Blocks (`up = false`) or restores node `name`'s tunnel alone: its mesh
    /// interface goes down while its cable stays up.
    ///
    /// # Errors
    /// `ip` fails.
    pub fn tunnel(&self, name: &str, up: bool) -> Result<(), String> {
        let out = self
            .on_node(name)
            .args(["ip", "link", "set", "dev", "quorate0"])
            .arg(if up { "up" } else { "down" })
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip link set quorate0 on {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts every agent and waits until the cluster is healthy; returns how long
    /// that took (cold formation: quorum and every service running).
    ///
    /// # Errors
    /// An agent cannot start, or the cluster is not healthy within `limit`.
    pub fn start_all(&mut self, limit: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        for name in self.names.clone() {
            self.start(&name)?;
        }
        self.wait_healthy(limit)?;
        Ok(t0.elapsed())
    }

    /// Whether the node's agent process is running (not killed by the lab).
    #[must_use]
    pub fn is_running(&self, name: &str) -> bool {
        self.agents.contains_key(name)
    }

    /// The agent's pid.
    #[must_use]
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.agents.get(name).map(Child::id)
    }

    /// kill -9 of the agent only (its fence and workloads live on).
    pub fn kill_agent(&mut self, name: &str) {
        if let Some(mut child) = self.agents.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Power loss: the agent, its fence and its workloads die at once, the cable is
    /// cut, and a `poweroff` record goes to the journal (nothing there can log now).
    ///
    /// # Errors
    /// The link cannot be cut.
    pub fn poweroff(&mut self, name: &str) -> Result<(), String> {
        self.kill_agent(name);
        kill_fence_and_workloads(&self.data_dir(name));
        // Everything else the host ran (glusterd, bricks, FUSE clients) dies with it.
        for pid in crate::netns::pids_in(&self.net.nodes[self.index(name) - 1]) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = checker::append(
            &self.journal(),
            &format!("poweroff {} {name} - 0", checker::mono_ns()),
        );
        self.net.link(self.index(name), false)
    }

    /// Power back on after [`poweroff`](Self::poweroff) (or start after a kill).
    ///
    /// # Errors
    /// The link or the agent cannot come back.
    pub fn power_on(&mut self, name: &str) -> Result<(), String> {
        self.net.link(self.index(name), true)?;
        if self.options.gluster && !self.is_running(name) {
            self.start_glusterd(name)?;
        }
        if !self.is_running(name) {
            self.start(name)?;
        }
        Ok(())
    }

    /// SIGSTOP (`pause = true`) or SIGCONT of the agent only.
    pub fn pause(&mut self, name: &str, pause: bool) {
        if pause {
            self.paused.insert(name.to_owned());
        } else {
            self.paused.remove(name);
        }
        if let Some(pid) = self.pid(name).and_then(|p| i32::try_from(p).ok()) {
            let signal = if pause {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            };
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Cuts (`up = false`) or restores a node's cable.
    ///
    /// # Errors
    /// A failing `ip` command.
    pub fn link(&self, name: &str, up: bool) -> Result<(), String> {
        self.net.link(self.index(name), up)
    }

    /// Splits the network with `minority` on one side.
    ///
    /// # Errors
    /// A failing `ip` command.
    pub fn split(&self, minority: &[String]) -> Result<(), String> {
        let idx: Vec<usize> = minority.iter().map(|n| self.index(n)).collect();
        self.net.split(&idx)
    }

    /// `quorate status --json` through a node's agent, if it answers.
    #[must_use]
    pub fn status(&self, name: &str) -> Option<serde_json::Value> {
        let dd = self.data_dir(name);
        let out = self
            .quorate(&["status", "--json", "--data-dir", &dd.to_string_lossy()])
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// A status with quorum from any running node.
    #[must_use]
    pub fn quorate_status(&self) -> Option<serde_json::Value> {
        self.names
            .iter()
            .filter(|n| self.is_running(n) && !self.paused.contains(*n))
            .filter_map(|n| self.status(n))
            .find(|s| s["quorum"] == true)
    }

    /// The leader, as a node with quorum reports it.
    #[must_use]
    pub fn leader(&self) -> Option<String> {
        self.quorate_status()?["leader"].as_str().map(str::to_owned)
    }

    /// Where a service runs, if it runs.
    #[must_use]
    pub fn host_of(&self, service: &str) -> Option<String> {
        let status = self.quorate_status()?;
        status["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == service && s["state"] == "running")
            .and_then(|s| s["node"].as_str().map(str::to_owned))
    }

    /// Waits until every running agent answers with quorum and the same leader, and
    /// the leader's view has every node up and every service running — twice in a row,
    /// 300 ms apart (a freshly restarted node is not counted healthy by a stale view).
    ///
    /// # Errors
    /// Not healthy within `limit` (with the last status seen).
    pub fn wait_healthy(&self, limit: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        let mut last = serde_json::Value::Null;
        let mut good_in_a_row = 0;
        while t0.elapsed() < limit {
            let statuses: Vec<serde_json::Value> = self
                .names
                .iter()
                .filter(|n| self.is_running(n))
                .map(|n| self.status(n).unwrap_or_default())
                .collect();
            let leaders: std::collections::BTreeSet<String> = statuses
                .iter()
                .map(|s| s["leader"].as_str().unwrap_or("").to_owned())
                .collect();
            let all_agree = statuses.iter().all(|s| s["quorum"] == true)
                && leaders.len() == 1
                && !leaders.contains("");
            let healthy = all_agree
                && statuses.first().is_some_and(|s| {
                    let nodes_up = s["nodes"]
                        .as_array()
                        .is_some_and(|a| a.iter().all(|n| n["state"] == "up"));
                    let running = s["services"].as_array().is_some_and(|a| {
                        a.len() >= self.services.len() && a.iter().all(|x| x["state"] == "running")
                    });
                    nodes_up && running
                });
            if healthy {
                good_in_a_row += 1;
                if good_in_a_row >= 2 {
                    return Ok(());
                }
            } else {
                good_in_a_row = 0;
                last = statuses.into_iter().next().unwrap_or_default();
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(format!("not healthy within {limit:?}; last status: {last}"))
    }

    /// `quorate move` (or `move --clear` with `node = None`) through a running node,
    /// recorded in the client record with whether it was acknowledged.
    pub fn move_service(&self, service: &str, node: Option<&str>) -> bool {
        // Through a node that answers (a paused agent would hold the CLI until timeout).
        let Some(via) = self
            .names
            .iter()
            .find(|n| self.is_running(n) && !self.paused.contains(*n))
        else {
            return false;
        };
        let dd = self.data_dir(via).to_string_lossy().into_owned();
        let mut args = vec!["move", service];
        match node {
            Some(n) => args.push(n),
            None => args.push("--clear"),
        }
        args.extend(["--data-dir", &dd]);
        let t = checker::mono_ns();
        let acked = self.quorate(&args).is_ok_and(|o| o.status.success());
        let op = Operation {
            t,
            op: if node.is_some() { "move" } else { "clear" }.into(),
            service: service.to_owned(),
            node: node.map(str::to_owned),
            acked,
        };
        if let Ok(line) = serde_json::to_string(&op) {
            let _ = checker::append(&self.client_record(), &line);
        }
        acked
    }

    /// A node whose agent runs, is not paused and is not `except`: the one to submit
    /// through.
    fn answering_node(&self, except: &str) -> Option<String> {
        self.names
            .iter()
            .find(|n| *n != except && self.is_running(n) && !self.paused.contains(*n))
            .cloned()
    }

    /// Writes the spec as the shapes say, locks it and applies it through `via`
    /// (retried for 15 s while there is no quorum); records the operation in the client
    /// record and returns whether it was acknowledged.
    fn apply_shapes(&self, via: &str, record: Operation) -> bool {
        let acked = self.apply_spec(via);
        if let Ok(line) = serde_json::to_string(&Operation { acked, ..record }) {
            let _ = checker::append(&self.client_record(), &line);
        }
        acked
    }

    /// Writes the spec as the lab's state says, locks it and applies it through `via`
    /// (retried for 15 s while there is no quorum); returns whether it was applied.
    fn apply_spec(&self, via: &str) -> bool {
        self.write_spec().is_ok() && self.quorate(&["lock"]).is_ok_and(|o| o.status.success()) && {
            let dd = self.data_dir(via).to_string_lossy().into_owned();
            let t0 = Instant::now();
            loop {
                let out = self.quorate(&["apply", "--allow-destructive", "--data-dir", &dd]);
                match out {
                    Ok(o) if o.status.success() => break true,
                    // 4: no quorum (an election in progress): try again.
                    Ok(o)
                        if o.status.code() == Some(4) && t0.elapsed() < Duration::from_secs(15) =>
                    {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    _ => break false,
                }
            }
        }
    }

    /// `quorate wg SUBCOMMAND --data-dir D` (`keygen`, `rotate`) for node `name`: the
    /// public key it prints.
    fn wg_public_key(&self, subcommand: &str, name: &str) -> Result<String, String> {
        let out = self.quorate(&[
            "wg",
            subcommand,
            "--data-dir",
            &self.data_dir(name).to_string_lossy(),
        ])?;
        if !out.status.success() {
            return Err(format!(
                "quorate wg {subcommand} for {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Rotates node `name`'s WireGuard key (`quorate wg rotate` in its data dir), puts
    /// the new public key into the spec and applies it through `via`; returns the new
    /// key once applied.
    ///
    /// # Errors
    /// `wg rotate` or the apply fails.
    pub fn rotate_key(&mut self, name: &str, via: &str) -> Result<String, String> {
        let key = self.wg_public_key("rotate", name)?;
        self.wg_keys.insert(name.to_owned(), key.clone());
        if self.apply_spec(via) {
            Ok(key)
        } else {
            Err(format!("the spec with {name}'s new key was not applied"))
        }
    }

    /// Renames witness service `old` in the spec (with `renamed_from`) and applies it
    /// through a node other than `not_via`; returns the new name and whether the
    /// change was acknowledged. The workload keeps its witness name.
    pub fn rename_service(&mut self, old: &str, not_via: &str) -> Option<(String, bool)> {
        let via = self.answering_node(not_via)?;
        let shape = self
            .shapes
            .iter_mut()
            .find(|s| s.name == old && s.in_spec)?;
        let base = format!("s{}", shape.index + 1);
        let generation = old
            .rsplit_once("-r")
            .and_then(|(_, n)| n.parse::<u32>().ok())
            .unwrap_or(0);
        let new = format!("{base}-r{}", generation + 1);
        shape.renamed_from = Some(old.to_owned());
        shape.name.clone_from(&new);
        for s in &mut self.services {
            if s == old {
                s.clone_from(&new);
            }
        }
        let t = checker::mono_ns();
        let acked = self.apply_shapes(
            &via,
            Operation {
                t,
                op: "rename".into(),
                service: old.to_owned(),
                node: Some(new.clone()),
                acked: false,
            },
        );
        Some((new, acked))
    }

    /// Takes witness service `name` out of the spec (`in_spec = false`) or puts it
    /// back under the same name, applied through a node other than `not_via`; returns
    /// whether the change was acknowledged.
    pub fn set_in_spec(&mut self, name: &str, in_spec: bool, not_via: &str) -> Option<bool> {
        let via = self.answering_node(not_via)?;
        let shape = self.shapes.iter_mut().find(|s| s.name == name)?;
        shape.in_spec = in_spec;
        // A service added back is new: no rename to follow.
        shape.renamed_from = None;
        if in_spec {
            if !self.services.iter().any(|s| s == name) {
                self.services.push(name.to_owned());
            }
        } else {
            self.services.retain(|s| s != name);
        }
        let t = checker::mono_ns();
        Some(self.apply_shapes(
            &via,
            Operation {
                t,
                op: if in_spec { "add" } else { "remove" }.into(),
                service: name.to_owned(),
                node: None,
                acked: false,
            },
        ))
    }

    /// The pins the cluster shows now: service → pinned node.
    #[must_use]
    pub fn pins(&self) -> Option<BTreeMap<String, Option<String>>> {
        let status = self.quorate_status()?;
        Some(
            status["services"]
                .as_array()?
                .iter()
                .filter_map(|s| {
                    Some((
                        s["name"].as_str()?.to_owned(),
                        s["pinned"].as_str().map(str::to_owned),
                    ))
                })
                .collect(),
        )
    }

    /// The checker's verdict on everything so far (run it after healing). A status
    /// that cannot be read after healing is a failure, not "no pins".
    #[must_use]
    pub fn verdict(&self, from: u64) -> checker::Verdict {
        let journal = checker::read_journal(&self.journal());
        let ops = checker::operations(&self.client_record());
        let mut problems = journal.problems;
        let lost = match self.pins() {
            Some(pins) => checker::lost_operations(&ops, &pins),
            None if ops.iter().any(|o| o.acked) => {
                problems.push(
                    "the healed cluster's status could not be read: acknowledged operations cannot be checked"
                        .to_owned(),
                );
                Vec::new()
            }
            None => Vec::new(),
        };
        checker::Verdict {
            double_runs: checker::double_runs(&journal.runs),
            lost_operations: lost,
            downtime: checker::downtime(&journal.runs, from, checker::mono_ns()),
            runs: journal.runs.len(),
            journal_problems: problems,
        }
    }

    /// The time of the first `start` of `service` after `after` on a node other than
    /// `not_on`, from the journal.
    #[must_use]
    pub fn started_elsewhere(
        &self,
        service: &str,
        not_on: &str,
        after: u64,
    ) -> Option<(u64, String)> {
        checker::runs(&self.journal())
            .into_iter()
            .find(|r| r.service == service && r.node != not_on && r.start > after)
            .map(|r| (r.start, r.node))
    }
}

impl Drop for LabCluster {
    fn drop(&mut self) {
        for name in self.names.clone() {
            self.pause(&name, false);
            let _ = self.poweroff(&name);
        }
        // Release the nodes' mount namespaces (their mounts go with them).
        if let Some(nsdir) = &self.mount_ns {
            for name in &self.names {
                let _ = Command::new("umount").arg(nsdir.join(name)).output();
            }
            let _ = Command::new("umount").arg(nsdir).output();
        }
        // Loop devices the agents made for RBD images (rbd-fuse + loop), as their
        // mapping files record them: a node that lost power never detached its own.
        // A busy loop device is detached as soon as its last user lets go.
        for name in &self.names {
            let Ok(entries) = std::fs::read_dir(self.data_dir(name).join("ceph")) else {
                continue;
            };
            for entry in entries.flatten() {
                let mapping =
                    std::fs::read_to_string(entry.path().join("mapping")).unwrap_or_default();
                if let Some(device) = mapping
                    .split_whitespace()
                    .nth(1)
                    .filter(|d| d.starts_with("/dev/loop"))
                {
                    let _ = Command::new("losetup").args(["-d", device]).output();
                }
            }
        }
        // Network's drop kills whatever is left in the namespaces and deletes them.
    }
}
