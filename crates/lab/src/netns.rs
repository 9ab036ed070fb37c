//! Hosts as network namespaces: one namespace per node, each with an `eth0` whose other
//! end is a port on a bridge in a separate "switch" namespace (which also serves as the
//! client that talks to the nodes). Addresses are 10.88.0.N/24 and exist only inside
//! these namespaces. Faults are made on the switch: a port down cuts a node's cable; a
//! second bridge splits the network in two; `tc netem` adds delay or loss where the
//! kernel has it.
//!
//! [`Network`] deletes every namespace it made (and kills what runs in them) on drop,
//! also when the caller panics; [`cleanup`] removes what a killed lab left behind.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Every namespace the lab creates starts with this.
pub const PREFIX: &str = "qlab";

/// A switch and its nodes.
#[derive(Debug)]
pub struct Network {
    /// The switch (and client) namespace.
    pub switch: String,
    /// Node namespaces, node i (1-based) at index i-1.
    pub nodes: Vec<String>,
    /// Other hosts (the storage servers).
    pub hosts: Vec<String>,
    prefix: String,
}

/// The storage servers' address on the storage network.
pub const STORAGE_SERVER: &str = "10.87.0.250";

/// Why network namespaces cannot be made here, if they cannot.
#[must_use]
pub fn unavailable() -> Option<String> {
    // Unique per call: tests of one process probe at the same time.
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let probe = format!("{PREFIX}probe{}x{n}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
        Ok(o) => Some(format!(
            "`ip netns add` fails (root needed): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("no `ip` (apt-get install iproute2): {e}")),
    }
}

fn ip(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces whose names start with `prefix`.
#[must_use]
pub fn namespaces(prefix: &str) -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(prefix))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The processes in network namespace `ns` (by the inode of its /run/netns file).
#[must_use]
pub fn pids_in(ns: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(format!("/run/netns/{ns}")) else {
        return Vec::new();
    };
    let wanted = format!("net:[{}]", meta.ino());
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/ns/net"))
                        .is_ok_and(|link| link.to_string_lossy() == wanted)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process in the namespace (until none is left, up to 5 s) and deletes it.
pub fn remove(ns: &str) {
    let t0 = std::time::Instant::now();
    loop {
        let pids = pids_in(ns);
        if pids.is_empty() || t0.elapsed() > std::time::Duration::from_secs(5) {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

/// Removes every lab namespace (and its processes) that a killed lab left behind;
/// returns their names.
#[must_use]
pub fn cleanup(prefix: &str) -> Vec<String> {
    let found = namespaces(prefix);
    for ns in &found {
        remove(ns);
    }
    found
}

impl Network {
    /// A switch with `nodes` hosts, names starting with `prefix` (e.g. [`PREFIX`]).
    ///
    /// # Errors
    /// A failing `ip` command (everything made so far is removed again).
    pub fn new(prefix: &str, nodes: usize) -> Result<Self, String> {
        let prefix = format!(
            "{prefix}{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut net = Self {
            switch: format!("{prefix}-sw"),
            nodes: Vec::new(),
            hosts: Vec::new(),
            prefix: prefix.clone(),
        };
        // On error `net` drops and removes what exists.
        ip(&["netns", "add", &net.switch])?;
        let sw = net.switch.clone();
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        for bridge in ["br0", "br1"] {
            ip(&["-n", &sw, "link", "add", bridge, "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", bridge, "up"])?;
        }
        ip(&["-n", &sw, "addr", "add", "10.88.0.254/24", "dev", "br0"])?;
        for i in 1..=nodes {
            let ns = format!("{prefix}-n{i}");
            ip(&["netns", "add", &ns])?;
            net.nodes.push(ns.clone());
            let port = net.port(i);
            ip(&[
                "link", "add", &port, "netns", &sw, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", Self::address(i)),
                "dev",
                "eth0",
            ])?;
        }
        Ok(net)
    }

    /// A second network for storage: a bridge `br2` on the switch, an `eth1` on every
    /// node at [`Self::storage_address`]`(i)`, and one more host namespace `{prefix}-st`
    /// (the storage servers) at [`STORAGE_SERVER`]. Faults on the cluster network
    /// (cut cables, splits) leave it alone, as a separate storage network would be:
    /// a node cut off from its peers can still reach the storage.
    ///
    /// # Errors
    /// A failing `ip` command; returns the storage host's namespace.
    pub fn add_storage_network(&mut self) -> Result<String, String> {
        let sw = self.switch.clone();
        ip(&["-n", &sw, "link", "add", "br2", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br2", "up"])?;
        let host = format!("{}-st", self.prefix);
        ip(&["netns", "add", &host])?;
        self.hosts.push(host.clone());
        let mut ends: Vec<(String, String, String)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                (
                    ns.clone(),
                    format!("{}s{}", self.prefix, i + 1),
                    format!("{}/24", Self::storage_address(i + 1)),
                )
            })
            .collect();
        ends.push((
            host.clone(),
            format!("{}s0", self.prefix),
            format!("{STORAGE_SERVER}/24"),
        ));
        for (ns, port, address) in ends {
            ip(&[
                "link", "add", &port, "netns", &sw, "type", "veth", "peer", "name", "eth1",
                "netns", &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br2", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "set", "eth1", "up"])?;
            ip(&["-n", &ns, "addr", "add", &address, "dev", "eth1"])?;
        }
        Ok(host)
    }

    /// Node i's address on the storage network (1-based).
    #[must_use]
    pub fn storage_address(i: usize) -> String {
        format!("10.87.0.{i}")
    }

    /// Node i's address (1-based).
    #[must_use]
    pub fn address(i: usize) -> String {
        format!("10.88.0.{i}")
    }

    fn port(&self, i: usize) -> String {
        format!("{}p{i}", self.prefix)
    }

    /// Cuts node i's cable (`up = false`) or plugs it back.
    ///
    /// # Errors
    /// A failing `ip` command.
    pub fn link(&self, i: usize, up: bool) -> Result<(), String> {
        let port = self.port(i);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ])?;
        Ok(())
    }

    /// Splits the network: the nodes in `minority` (1-based) move to a second bridge,
    /// so each side reaches only itself.
    ///
    /// # Errors
    /// A failing `ip` command.
    pub fn split(&self, minority: &[usize]) -> Result<(), String> {
        for i in minority {
            ip(&[
                "-n",
                &self.switch,
                "link",
                "set",
                &self.port(*i),
                "master",
                "br1",
            ])?;
        }
        Ok(())
    }

    /// Undoes [`split`](Self::split) and plugs every cable back in.
    ///
    /// # Errors
    /// A failing `ip` command.
    pub fn heal(&self) -> Result<(), String> {
        for i in 1..=self.nodes.len() {
            ip(&[
                "-n",
                &self.switch,
                "link",
                "set",
                &self.port(i),
                "master",
                "br0",
            ])?;
            self.link(i, true)?;
        }
        Ok(())
    }

    /// Adds `netem` delay and loss on node i's port (both directions seen by the
    /// switch), or an error saying why the kernel cannot (this machine's lacks netem).
    ///
    /// # Errors
    /// `tc` missing or the kernel without `sch_netem`.
    pub fn netem(&self, i: usize, delay_ms: u32, loss_percent: u32) -> Result<(), String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.switch,
                "tc",
                "qdisc",
                "replace",
                "dev",
            ])
            .arg(self.port(i))
            .args([
                "root",
                "netem",
                "delay",
                &format!("{delay_ms}ms"),
                "loss",
                &format!("{loss_percent}%"),
            ])
            .output()
            .map_err(|e| format!("cannot run tc: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tc netem unavailable: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Removes [`netem`](Self::netem) from node i's port.
    pub fn clear_netem(&self, i: usize) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.switch, "tc", "qdisc", "del", "dev"])
            .arg(self.port(i))
            .arg("root")
            .output();
    }

    /// Whether node i's eth0 holds `address` (e.g. "10.88.0.100/24").
    #[must_use]
    pub fn holds(&self, i: usize, address: &str) -> bool {
        ip(&[
            "-n",
            &self.nodes[i - 1],
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ])
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .any(|w| w == address)
        })
    }

    /// An HTTP GET from the switch namespace; the body, or None.
    #[must_use]
    pub fn http_get(&self, address: &str, port: u16) -> Option<String> {
        let script = format!(
            "exec 3<>/dev/tcp/{address}/{port} && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 2 cat <&3"
        );
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.switch,
                "timeout",
                "3",
                "bash",
                "-c",
                &script,
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.trim().to_owned())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self
            .nodes
            .iter()
            .chain(&self.hosts)
            .chain(std::iter::once(&self.switch))
        {
            remove(ns);
        }
    }
}
