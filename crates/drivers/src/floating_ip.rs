//! The `ip` step: a floating address (`services.<name>.ip` on `interface`) that follows
//! its service. Added before the service starts, removed after it stops; after adding
//! an IPv4 address a gratuitous ARP tells the neighbours (and switches) where it lives
//! now, when an `arping` (iputils or Habets) is installed.
//!
//! Uses iproute2's `ip`, the tool an operator would use to check what it did.

use std::process::Stdio;

use ipnet::IpNet;
use tokio::process::Command;

/// Why an address could not be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum FloatingIpError {
    /// `ip` could not be run.
    #[error("cannot run `ip` (install iproute2): {0}")]
    Missing(#[source] std::io::Error),
    /// `ip` did not finish in time (a hung netlink, a stuck kernel).
    #[error("`ip {0}` did not finish within 10 s")]
    Timeout(String),
    /// `ip` refused.
    #[error("`ip {args}` failed: {stderr}")]
    Refused {
        /// The arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
}

/// A floating address on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloatingIp {
    /// `addr/prefix`.
    pub address: IpNet,
    /// The interface.
    pub interface: String,
}

async fn ip(args: &[&str]) -> Result<String, FloatingIpError> {
    let run = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .map_err(|_| FloatingIpError::Timeout(args.join(" ")))?
        .map_err(FloatingIpError::Missing)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(FloatingIpError::Refused {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

impl FloatingIp {
    /// The interface that holds `address` (the node's cluster address), for a floating
    /// address without an explicit `interface`.
    ///
    /// # Errors
    /// `ip` missing, or no interface has that address.
    pub async fn interface_holding(address: std::net::IpAddr) -> Result<String, FloatingIpError> {
        let address = address.to_string();
        let shown = ip(&["-o", "addr", "show", "to", &address]).await?;
        shown
            .split_whitespace()
            .nth(1)
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .ok_or_else(|| FloatingIpError::Refused {
                args: format!("-o addr show to {address}"),
                stderr: "no interface holds the node's address: set `interface`".into(),
            })
    }

    /// Whether the address is on the interface now.
    ///
    /// # Errors
    /// `ip` missing, or an unknown interface.
    pub async fn present(&self) -> Result<bool, FloatingIpError> {
        let shown = ip(&["-o", "addr", "show", "dev", &self.interface]).await?;
        let wanted = self.address.to_string();
        Ok(shown.split_whitespace().any(|word| word == wanted))
    }

    /// Adds the address (nothing to do when it is there) and announces it.
    ///
    /// # Errors
    /// `ip` missing, an unknown interface, or a refused address.
    pub async fn add(&self) -> Result<(), FloatingIpError> {
        if !self.present().await? {
            let address = self.address.to_string();
            let mut args = vec!["addr", "add", address.as_str(), "dev", &self.interface];
            if self.address.addr().is_ipv6() {
                // Usable at once: no duplicate address detection delay.
                args.push("nodad");
            }
            ip(&args).await?;
        }
        self.announce().await;
        Ok(())
    }

    /// Removes the address (nothing to do when it is not there).
    ///
    /// # Errors
    /// `ip` missing or an unknown interface.
    pub async fn remove(&self) -> Result<(), FloatingIpError> {
        if self.present().await? {
            let address = self.address.to_string();
            ip(&["addr", "del", address.as_str(), "dev", &self.interface]).await?;
        }
        Ok(())
    }

    /// A gratuitous ARP for IPv4 addresses, when an `arping` is installed. Best effort:
    /// neighbours also learn the new address on their own, only later.
    async fn announce(&self) {
        let IpNet::V4(net) = self.address else {
            return;
        };
        let addr = net.addr().to_string();
        let Ok(help) = Command::new("arping").arg("--help").output().await else {
            tracing::debug!("no arping: the move of {addr} is not announced");
            return;
        };
        let text = String::from_utf8_lossy(&help.stdout).into_owned()
            + &String::from_utf8_lossy(&help.stderr);
        let args: Vec<&str> = if text.contains("Habets") {
            vec![
                "-U",
                "-P",
                "-c",
                "1",
                "-i",
                &self.interface,
                "-S",
                &addr,
                &addr,
            ]
        } else {
            vec!["-U", "-c", "1", "-I", &self.interface, &addr]
        };
        let sent = Command::new("arping")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if !sent.is_ok_and(|s| s.success()) {
            tracing::debug!(address = %addr, "gratuitous ARP not sent");
        }
    }
}
