//! `quorate.lock`: the numbers the outside world identifies things by — Raft node
//! ids, DRBD minors, ports and node-ids, overlay addresses, WireGuard ports —
//! allocated once from the spec and never renumbered or reused.
//!
//! **Architecture Invariant:** an allocated number never changes and is never
//! reused. Removed entries become tombstones; counters only grow. Allocation is a
//! pure function of (previous lock, spec).
//!
//! **Architecture Invariant:** this crate reads specs but knows nothing about Raft,
//! agents or the CLI. Its only I/O is [`write_atomic`] and [`read`].

mod allocate;
mod file;
mod format;

pub use allocate::{allocate, ceph_fsid, Allocation, Entity, LockChange};
pub use file::{read, write_atomic};
pub use format::{
    CephEntry, Counters, DrbdEntry, Lock, NodeEntry, OsdEntry, RetiredNodeId, ServiceEntry,
    StorageEntry, Tombstone, LOCK_VERSION,
};

/// The address `node`'s cluster traffic uses (Raft and the control RPC, DRBD,
/// GlusterFS peers and bricks): its overlay address when `network.transport =
/// "wireguard"`, else its underlay `address`. `None` for a node not in the spec or,
/// over WireGuard, not locked yet. Floating service addresses and the fence command's
/// `{address}` stay on the underlay: users and power switches reach nodes there.
#[must_use]
pub fn cluster_address(
    spec: &quorate_spec::Spec,
    lock: &Lock,
    node: &str,
) -> Option<std::net::IpAddr> {
    let underlay = spec.nodes.get(node)?.address;
    if spec.network.transport == quorate_spec::Transport::Wireguard {
        lock.nodes.get(node)?.overlay_ip
    } else {
        Some(underlay)
    }
}

/// First Raft node id.
pub const RAFT_ID_BASE: u64 = 1;
/// First service id.
pub const SERVICE_ID_BASE: u64 = 1;
/// First DRBD minor (LINSTOR also starts at 1000, clear of hand-made resources).
pub const DRBD_MINOR_BASE: u32 = 1000;
/// Largest DRBD minor (2^20 - 1).
pub const DRBD_MINOR_MAX: u32 = (1 << 20) - 1;
/// First DRBD TCP port (DRBD's customary 7788 + 1).
pub const DRBD_PORT_BASE: u32 = 7789;
/// First WireGuard listen port.
pub const WG_PORT_BASE: u32 = 51820;
/// Largest DRBD 9 node-id.
pub const DRBD_NODE_ID_MAX: u8 = 31;

/// Why a lock could not be read or allocated. Nothing is written when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The file is not valid JSON.
    #[error("{path}:{line}:{column}: not valid JSON: {message}\n  help: restore the file from version control, or delete it and run `quorate lock` to allocate anew (numbers may change)")]
    Syntax {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde_json said.
        message: String,
    },
    /// The file's format version is not one this build reads.
    #[error("{path}: lock format version {found} is not supported (this quorate reads versions 1 to {supported})\n  help: {hint}")]
    Version {
        /// File.
        path: String,
        /// Version found.
        found: String,
        /// Newest version supported.
        supported: u32,
        /// What to do.
        hint: &'static str,
    },
    /// The file is valid JSON but its content is inconsistent.
    #[error("{path}: {at}: {problem}\n  help: restore the file from version control; a lock edited by hand can renumber storage")]
    Corrupt {
        /// File.
        path: String,
        /// Key path inside the lock.
        at: String,
        /// What is wrong.
        problem: String,
    },
    /// The lock belongs to another cluster.
    #[error("the lock is for cluster `{lock}`, but the spec is cluster `{spec}`\n  help: use the lock that belongs to this spec (--lock PATH), or rename `cluster.name` back to `{lock}`")]
    OtherCluster {
        /// Cluster in the lock.
        lock: String,
        /// Cluster in the spec.
        spec: String,
    },
    /// A number space ran out.
    #[error("no {what} left: {detail}\n  help: {hint}")]
    Exhausted {
        /// Which space.
        what: &'static str,
        /// Details.
        detail: String,
        /// What to do.
        hint: String,
    },
    /// The overlay network changed, which would renumber every node.
    #[error("network.overlay is {spec}, but the lock allocated addresses in {locked}; changing it would renumber every node\n  help: set `network.overlay = \"{locked}\"` again")]
    OverlayChanged {
        /// In the lock.
        locked: String,
        /// In the spec.
        spec: String,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
