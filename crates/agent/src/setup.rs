//! Everything checked before the agent joins: spec, lock, node name, data dir
//! identity, TLS material. Each failure is a clear error and changes nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use quorate_lock::Lock;
use quorate_spec::{Format, Spec};
use serde::{Deserialize, Serialize};

use crate::AgentError;

/// The spec and lock this node started with, and their hash.
#[derive(Clone, Debug)]
pub struct LocalFiles {
    /// The spec.
    pub spec: Spec,
    /// The lock.
    pub lock: Lock,
    /// Content hash of both.
    pub hash: String,
}

/// Reads and checks the local spec and lock.
///
/// # Errors
/// Invalid spec, missing or out-of-date lock.
pub fn load_local(spec_path: &Path, lock_path: &Path) -> Result<LocalFiles, AgentError> {
    let file = spec_path.display().to_string();
    let text = std::fs::read_to_string(spec_path).map_err(|e| {
        AgentError::Input(format!(
            "cannot read the spec {file}: {e}\n  help: pass --spec PATH (or QUORATE_SPEC)"
        ))
    })?;
    let checked = quorate_spec::check(&text, Format::from_path(spec_path));
    let Some(spec) = checked.spec else {
        let lines: Vec<String> = checked
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| {
                let (line, col) = d
                    .span
                    .as_ref()
                    .map_or((0, 0), |s| quorate_spec::line_column(&text, s.start));
                format!(
                    "  {file}:{line}:{col}: {} ({})",
                    d.message,
                    d.help.as_deref().unwrap_or("")
                )
            })
            .collect();
        return Err(AgentError::Input(format!(
            "the spec has {} error(s); run `quorate check {file}` for details:\n{}",
            lines.len(),
            lines.join("\n")
        )));
    };
    let lock = quorate_lock::read(lock_path)
        .map_err(|e| AgentError::Input(e.to_string()))?
        .ok_or_else(|| AgentError::Input(format!("no lock at {}\n  help: run `quorate lock {file}` and deploy the lock with the spec", lock_path.display())))?;
    let allocation =
        quorate_lock::allocate(Some(&lock), &spec).map_err(|e| AgentError::Input(e.to_string()))?;
    if allocation.lock != lock {
        return Err(AgentError::Input(format!(
            "the lock {} does not match the spec {file} ({} change(s) missing)\n  help: run `quorate lock {file}` and deploy the updated lock",
            lock_path.display(),
            allocation.changes.len()
        )));
    }
    let hash = quorate_state::content_hash(&spec, &lock);
    Ok(LocalFiles { spec, lock, hash })
}

/// Who a data dir belongs to; written on first start, checked on every start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Format version of this file.
    pub format: u32,
    /// Cluster name.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// Raft id from the lock.
    pub raft_id: u64,
}

/// Checks, without changing anything, that `dir` is empty/new or belongs to this node
/// of this cluster. Returns true when the identity file still has to be written.
///
/// # Errors
/// A data dir of another cluster or node, or one with foreign content.
pub fn check_data_dir(dir: &Path, wanted: &Identity) -> Result<bool, AgentError> {
    let path = dir.join("node.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: Identity = serde_json::from_str(&text).map_err(|e| AgentError::Input(format!("{}: not a quorate identity file ({e})\n  help: is --data-dir the right directory?", path.display())))?;
            if found.cluster != wanted.cluster
                || found.node != wanted.node
                || found.raft_id != wanted.raft_id
            {
                return Err(AgentError::Input(format!(
                    "the data dir {} belongs to node `{}` (raft id {}) of cluster `{}`, not node `{}` (raft id {}) of cluster `{}`\n  help: use the data dir of this node, or a new empty one",
                    dir.display(), found.node, found.raft_id, found.cluster, wanted.node, wanted.raft_id, wanted.cluster
                )));
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join("raft.redb").exists() {
                return Err(AgentError::Input(format!(
                    "{} has Raft state but no identity file\n  help: use an empty data dir",
                    dir.display()
                )));
            }
            Ok(true)
        }
        Err(e) => Err(AgentError::Input(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Creates the data dir (0700) and writes the identity file.
///
/// # Errors
/// I/O errors.
pub fn write_identity(dir: &Path, identity: &Identity) -> Result<(), AgentError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            AgentError::Input(format!("cannot create the data dir {}: {e}", dir.display()))
        })?;
    let path = dir.join("node.json");
    let bytes = serde_json::to_vec_pretty(identity).unwrap_or_default();
    quorate_files::write_atomic(&path, &bytes)
        .map_err(|e| AgentError::Input(format!("cannot write {}: {e}", path.display())))
}

/// The peer address of `node`: its cluster address (the overlay one over WireGuard,
/// see [`quorate_lock::cluster_address`]) and `network.port`.
#[must_use]
pub fn peer_addr(spec: &Spec, lock: &quorate_lock::Lock, node: &str) -> Option<SocketAddr> {
    quorate_lock::cluster_address(spec, lock, node).map(|ip| SocketAddr::new(ip, spec.network.port))
}

/// Default TLS directory inside a data dir.
#[must_use]
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}
