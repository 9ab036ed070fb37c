//! Hosts as network namespaces: one namespace per node, each with an `eth0` whose other
//! end sits on a bridge in a separate "switch" namespace (which also serves as the
//! client that talks to the nodes). Addresses are 10.88.0.N/24, only inside these
//! namespaces. The guard deletes every namespace (and kills what runs in them) on drop,
//! also when the test fails.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct NetLab {
    /// The switch (and client) namespace.
    pub switch: String,
    /// Node namespaces, node i (1-based) at index i-1.
    pub nodes: Vec<String>,
    prefix: String,
}

/// Why network namespaces cannot be made here, if they cannot.
pub fn unavailable() -> Option<String> {
    let probe = format!("qprobe{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &probe]).output();
    match made {
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

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl NetLab {
    pub fn new(nodes: usize) -> Self {
        let prefix = format!(
            "qt{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut lab = Self {
            switch: format!("{prefix}-sw"),
            nodes: Vec::new(),
            prefix: prefix.clone(),
        };
        ip(&["netns", "add", &lab.switch]);
        ip(&["-n", &lab.switch, "link", "set", "lo", "up"]);
        ip(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"]);
        ip(&[
            "-n",
            &lab.switch,
            "addr",
            "add",
            "10.88.0.254/24",
            "dev",
            "br0",
        ]);
        for i in 1..=nodes {
            let ns = format!("{prefix}-n{i}");
            ip(&["netns", "add", &ns]);
            lab.nodes.push(ns.clone());
            let port = lab.port(i);
            ip(&[
                "link",
                "add",
                &port,
                "netns",
                &lab.switch,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ]);
            ip(&[
                "-n",
                &lab.switch,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", Self::address(i)),
                "dev",
                "eth0",
            ]);
        }
        lab
    }

    /// Node i's address (1-based).
    pub fn address(i: usize) -> String {
        format!("10.88.0.{i}")
    }

    fn port(&self, i: usize) -> String {
        format!("{}p{i}", self.prefix)
    }

    /// Cuts node i's link (its cable to the switch); `up` plugs it back.
    pub fn link(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &self.port(i),
            if up { "up" } else { "down" },
        ]);
    }

    /// Whether node i's eth0 holds `address` (e.g. "10.88.0.100/24").
    pub fn holds(&self, i: usize, address: &str) -> bool {
        let out = ip(&[
            "-n",
            &self.nodes[i - 1],
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|w| w == address)
    }

    /// An HTTP GET from the switch namespace; the body, or None.
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

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.switch)) {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
