//! The mesh interface: up, in sync with the spec, down, and its peers' handshakes.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quorate_render::{Mesh, WIREGUARD_DEFAULT_MTU, WIREGUARD_INTERFACE};
use serde::Serialize;

use crate::WgError;

/// WireGuard's own encapsulation overhead over IPv6 (the larger case): the MTU of the
/// interface is the underlay's minus this.
pub const OVERHEAD: u16 = 80;

/// How the interface was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The kernel's WireGuard (`ip link add … type wireguard`).
    Kernel,
    /// `wireguard-go` on a TUN device (no kernel module).
    WireguardGo,
    /// It existed already (made by networkd, the NixOS module or an earlier run).
    Existing,
}

/// What [`up`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Up {
    /// The interface.
    pub interface: String,
    /// How it was made.
    pub backend: Backend,
    /// Its MTU.
    pub mtu: u16,
    /// The overlay address it carries.
    pub address: String,
    /// Peers configured.
    pub peers: usize,
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, WgError> {
    let package = match program {
        "wg" => "wireguard-tools",
        "wireguard-go" => "wireguard-go",
        _ => "iproute2",
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            WgError::Command(format!(
                "cannot run `{program}`: {e}\n  help: install {package} (on NixOS the quorate module adds it)"
            ))
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| WgError::Command(format!("cannot write to `{program}`: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| WgError::Command(format!("`{program}` failed: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        // `args` never holds the private key: it goes through stdin.
        Err(WgError::Command(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether the interface exists in this network namespace.
#[must_use]
pub fn exists(interface: &str) -> bool {
    run("ip", &["link", "show", "dev", interface], None).is_ok()
}

/// The MTU of the interface that holds `underlay` (this node's address), if found.
#[must_use]
pub fn underlay_mtu(underlay: IpAddr) -> Option<u16> {
    let out = run("ip", &["-o", "address", "show"], None).ok()?;
    let wanted = underlay.to_string();
    let device = out.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let device = fields.nth(1)?;
        let addr = fields.nth(1)?;
        (addr.split('/').next() == Some(wanted.as_str())).then(|| device.to_owned())
    })?;
    std::fs::read_to_string(format!("/sys/class/net/{device}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The MTU to use: the spec's, else the underlay's minus [`OVERHEAD`], else 1420.
#[must_use]
pub fn mtu_for(mesh: &Mesh, underlay: IpAddr) -> u16 {
    mesh.mtu.unwrap_or_else(|| {
        underlay_mtu(underlay).map_or(WIREGUARD_DEFAULT_MTU, |m| m.saturating_sub(OVERHEAD))
    })
}

/// The UAPI socket `wireguard-go` and `wg` talk through.
fn uapi_socket(interface: &str) -> String {
    format!("/var/run/wireguard/{interface}.sock")
}

/// Creates the interface: kernel WireGuard when the kernel has it, else
/// `wireguard-go` (which puts itself in the background and outlives this process, as
/// a kernel interface would).
fn create(interface: &str) -> Result<Backend, WgError> {
    if run(
        "ip",
        &["link", "add", "dev", interface, "type", "wireguard"],
        None,
    )
    .is_ok()
    {
        return Ok(Backend::Kernel);
    }
    // The interface is gone, so a socket left by a wireguard-go that died (power
    // loss) is stale: waiting for "the" socket below must see the new daemon's.
    let _ = std::fs::remove_file(uapi_socket(interface));
    run("wireguard-go", &[interface], None).map_err(|e| {
        WgError::Command(format!(
            "this kernel has no WireGuard and wireguard-go did not start: {e}\n  help: load the wireguard module or install wireguard-go (it needs /dev/net/tun)"
        ))
    })?;
    // wireguard-go returns once its daemon is forked; `wg` works once the socket is.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::path::Path::new(&uapi_socket(interface)).exists() {
        if Instant::now() > deadline {
            return Err(WgError::Command(format!(
                "wireguard-go started but {} did not appear within 5 s",
                uapi_socket(interface)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Backend::WireguardGo)
}

/// The full `wg` configuration: the private key, the listen port and every peer.
fn wg_config(mesh: &Mesh, private_key: &str) -> String {
    format!(
        "[Interface]\nPrivateKey = {private_key}\nListenPort = {}\n{}",
        mesh.listen_port,
        mesh.wg_peers()
    )
}

/// Brings the mesh interface up (idempotent): creates it when missing, sets the
/// private key, port and peers (`wg syncconf`: peers not in the mesh go, unchanged
/// ones keep their sessions), the overlay address and the MTU.
///
/// # Errors
/// A missing tool, no WireGuard at all, or a failing `ip`/`wg` step.
pub fn up(mesh: &Mesh, private_key: &str, underlay: IpAddr) -> Result<Up, WgError> {
    let interface = WIREGUARD_INTERFACE;
    let backend = if exists(interface) {
        Backend::Existing
    } else {
        create(interface)?
    };
    sync(mesh, private_key)?;
    let address = format!("{}/{}", mesh.address, mesh.prefix_len);
    run(
        "ip",
        &["address", "replace", &address, "dev", interface],
        None,
    )?;
    let mtu = mtu_for(mesh, underlay);
    run(
        "ip",
        &[
            "link",
            "set",
            "dev",
            interface,
            "mtu",
            &mtu.to_string(),
            "up",
        ],
        None,
    )?;
    Ok(Up {
        interface: interface.to_owned(),
        backend,
        mtu,
        address,
        peers: mesh.peers.len(),
    })
}

/// Sets the interface's key, port and peers to the mesh's (`wg syncconf`).
///
/// # Errors
/// `wg` is missing or refuses the configuration.
pub fn sync(mesh: &Mesh, private_key: &str) -> Result<(), WgError> {
    run(
        "wg",
        &["syncconf", WIREGUARD_INTERFACE, "/dev/stdin"],
        Some(&wg_config(mesh, private_key)),
    )
    .map(drop)
}

/// Removes the interface (a `wireguard-go` daemon exits with it). Returns whether it
/// existed.
///
/// # Errors
/// `ip` fails to delete an existing interface.
pub fn down() -> Result<bool, WgError> {
    if !exists(WIREGUARD_INTERFACE) {
        return Ok(false);
    }
    run("ip", &["link", "del", "dev", WIREGUARD_INTERFACE], None)?;
    Ok(true)
}

/// One peer as the interface sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerState {
    /// Its public key.
    pub public_key: String,
    /// Where its packets last came from (or the configured endpoint).
    pub endpoint: Option<String>,
    /// Seconds since the last completed handshake; `None`: never.
    pub handshake_age_s: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// How old a handshake may be while traffic flows: WireGuard rekeys every 120 s and
/// gives up on a session after 180 s; with a 5 s keepalive an older one means the
/// tunnel is down.
pub const HANDSHAKE_FRESH_S: u64 = 180;

/// The peers of the mesh interface and their latest handshakes (`wg show … dump`).
///
/// # Errors
/// No interface, or `wg` is missing.
pub fn peers() -> Result<Vec<PeerState>, WgError> {
    let dump = run("wg", &["show", WIREGUARD_INTERFACE, "dump"], None)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(parse_dump(&dump, now))
}

/// Parses `wg show <if> dump`: the first line is the interface, then one line per
/// peer: key, preshared key, endpoint, allowed IPs, latest handshake (unix seconds, 0 =
/// never), rx, tx, keepalive.
fn parse_dump(dump: &str, now_s: u64) -> Vec<PeerState> {
    dump.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 8 {
                return None;
            }
            let handshake: u64 = f[4].parse().ok()?;
            Some(PeerState {
                public_key: f[0].to_owned(),
                endpoint: (f[2] != "(none)").then(|| f[2].to_owned()),
                handshake_age_s: (handshake > 0).then(|| now_s.saturating_sub(handshake)),
                rx_bytes: f[5].parse().unwrap_or(0),
                tx_bytes: f[6].parse().unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_gives_each_peers_handshake_age() {
        let dump = "cHJpdmF0ZQ==\tcHVibGlj\t51820\toff\n\
                    a2V5MQ==\t(none)\t10.88.0.2:51821\t10.99.0.2/32\t1000\t1200\t3400\t5\n\
                    a2V5Mg==\t(none)\t(none)\t10.99.0.3/32\t0\t0\t148\t5\n\
                    garbage line\n";
        let peers = parse_dump(dump, 1030);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].handshake_age_s, Some(30));
        assert_eq!(peers[0].endpoint.as_deref(), Some("10.88.0.2:51821"));
        assert_eq!((peers[0].rx_bytes, peers[0].tx_bytes), (1200, 3400));
        assert_eq!(peers[1].handshake_age_s, None, "0 means never");
        assert_eq!(peers[1].endpoint, None);
    }

    #[test]
    fn the_config_carries_the_key_port_and_every_peer() {
        let mesh = Mesh {
            address: "10.99.0.1".parse().unwrap(),
            prefix_len: 24,
            listen_port: 51820,
            mtu: None,
            peers: vec![quorate_render::MeshPeer {
                name: "n2".into(),
                public_key: "a2V5MQ==".into(),
                endpoint: "10.88.0.2:51821".parse().unwrap(),
                overlay: "10.99.0.2".parse().unwrap(),
            }],
        };
        let config = wg_config(&mesh, "PRIVATE");
        assert!(config.starts_with("[Interface]\nPrivateKey = PRIVATE\nListenPort = 51820\n"));
        assert!(config.contains(
            "PublicKey = a2V5MQ==\nEndpoint = 10.88.0.2:51821\nAllowedIPs = 10.99.0.2/32\n"
        ));
    }
}
