//! The node's side of quorate's WireGuard mesh (`network.transport = "wireguard"`):
//!
//! - [`keys`]: the node's key pair. The private key lives only in the data dir
//!   (`wireguard.key`, 0600); the public key goes into the spec
//!   (`nodes.<n>.wireguard.public_key`), so the mesh is declarative and reviewable.
//! - [`link`]: bringing the interface up from the mesh `quorate render` describes
//!   ([`quorate_render::mesh`]): kernel WireGuard when the kernel has it, `wireguard-go`
//!   otherwise; peers kept in sync with `wg syncconf` (which keeps the sessions of
//!   unchanged peers); handshake ages for `status`.
//!
//! **Architecture Invariant:** knows nothing of Raft, agents or the CLI; the only
//! processes it starts are `ip`, `wg` and `wireguard-go`. The private key is passed to
//! `wg` on its standard input, never in an argument or a file outside the data dir.

pub mod keys;
pub mod link;

/// Why a WireGuard step failed. Each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// A key file is missing, unreadable, malformed or too open.
    #[error("{0}")]
    Key(String),
    /// A tool is missing or failed.
    #[error("{0}")]
    Command(String),
}
