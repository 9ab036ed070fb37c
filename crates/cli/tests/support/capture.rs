//! A packet capture (real `tcpdump`) on the lab switch's bridge, where every node's
//! cable ends: what crossed the underlay between nodes, for tests that prove what is
//! (not) in clear. The capture process is killed when the guard drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Packets between two lab nodes' underlay addresses (10.88.0.N), leaving out the
/// switch's own address (the lab's client) and ARP.
pub const NODE_TO_NODE: &str =
    "ip and src net 10.88.0.0/24 and dst net 10.88.0.0/24 and not host 10.88.0.254";

/// A running capture.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing on `br0` of the switch namespace `switch` into `file`, and
    /// returns once tcpdump listens.
    pub fn start(switch: &str, file: &Path) -> Self {
        let child = Command::new("ip")
            .args([
                "netns", "exec", switch, "tcpdump", "-i", "br0", "-nn", "-U", "-w",
            ])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump; scripts/test.sh does this)");
        let t0 = Instant::now();
        while !file.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "tcpdump did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The file exists once the interface is open; give it a moment to listen.
        std::thread::sleep(Duration::from_millis(300));
        Self {
            child: Some(child),
            file: file.to_owned(),
        }
    }

    /// Ends the capture (SIGINT flushes it) and returns the file.
    pub fn stop(mut self) -> PathBuf {
        self.end();
        self.file.clone()
    }

    fn end(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.end();
    }
}

/// The packets of `file` that match the pcap `filter`, one line each.
pub fn packets(file: &Path, filter: &str) -> Vec<String> {
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(file)
        .arg(filter)
        .output()
        .expect("tcpdump");
    assert!(
        out.status.success(),
        "tcpdump -r {filter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The WireGuard ports of the lock in the lab directory `dir`.
pub fn wireguard_ports(dir: &Path) -> Vec<u16> {
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("quorate.lock")).unwrap()).unwrap();
    lock["nodes"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|n| n["wg_port"].as_u64())
        .map(|p| p as u16)
        .collect()
}

/// Asserts that the underlay carried node-to-node traffic (more than `at_least`
/// packets) and all of it inside WireGuard, using the ports of the lab's lock in `dir`.
pub fn assert_only_wireguard(pcap: &Path, dir: &Path, at_least: usize) {
    let ports = wireguard_ports(dir);
    assert!(!ports.is_empty(), "the lock has WireGuard ports");
    let all = packets(pcap, NODE_TO_NODE);
    assert!(
        all.len() > at_least,
        "node-to-node traffic was captured ({} packets)",
        all.len()
    );
    let clear = in_clear(pcap, &ports);
    assert!(
        clear.is_empty(),
        "{} node-to-node packets outside WireGuard, e.g.:\n{}",
        clear.len(),
        clear
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The pcap filter for node-to-node packets that are not WireGuard UDP.
pub fn not_wireguard(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("port {p}")).collect();
    format!("{NODE_TO_NODE} and not (udp and ({}))", ports.join(" or "))
}

/// Node-to-node packets in `file` that are neither WireGuard UDP nor the ICMP "port
/// unreachable" a node answers a WireGuard datagram with while its tunnel is not up
/// yet (it quotes that datagram's headers and encrypted bytes, nothing in clear).
pub fn in_clear(file: &Path, ports: &[u16]) -> Vec<String> {
    packets(file, &not_wireguard(ports))
        .into_iter()
        .filter(|line| {
            !ports
                .iter()
                .any(|p| line.contains(&format!("udp port {p} unreachable")))
        })
        .collect()
}
