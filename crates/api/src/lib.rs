//! The local control protocol: the CLI sends one [`ControlRequest`] as a JSON line on
//! the agent's unix socket (`<data-dir>/control.sock`, mode 0600) and reads one
//! [`ControlReply`] line back.
//!
//! [`StatusReport`] is also what `quorate status --json` prints; its field names are a
//! contract with users' scripts (DESIGN.md, "Interfaces"): extend, never rename.
//!
//! **Architecture Invariant:** plain data and a tiny client; knows nothing of Raft.

pub mod simulate;

use std::path::Path;
use std::time::Duration;

use quorate_lock::Lock;
use quorate_spec::Spec;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub use quorate_state::Backup;

/// A request from the CLI to its local agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum ControlRequest {
    /// The cluster's status, read through the leader when possible.
    Status {
        /// Answer from this node's own view, without asking the leader.
        #[serde(default)]
        local: bool,
    },
    /// Pin a service to a node (`quorate move`), or clear its pin.
    Move {
        /// The service.
        service: String,
        /// The node; `None` clears the pin.
        node: Option<String>,
    },
    /// Restart a service where it runs.
    Restart {
        /// The service.
        service: String,
    },
    /// Stop a service everywhere and keep it stopped (`disabled`), or let it run again.
    SetDisabled {
        /// The service.
        service: String,
        /// True: disable; false: enable.
        disabled: bool,
    },
    /// Keep a service off a node, for `for_ms` or until unbanned.
    Ban {
        /// The service.
        service: String,
        /// The node.
        node: String,
        /// How long, in ms; `None`: until `Unban`.
        #[serde(default)]
        for_ms: Option<u64>,
    },
    /// Lift a ban.
    Unban {
        /// The service.
        service: String,
        /// The node.
        node: String,
    },
    /// Forget a service's recorded failures (on one node, or everywhere).
    Cleanup {
        /// The service.
        service: String,
        /// Only on this node.
        #[serde(default)]
        node: Option<String>,
    },
    /// The replicated state's backup, read through the leader.
    Backup,
    /// Restore a backup's operator decisions and history onto this cluster, whose
    /// applied spec and lock must be the backup's.
    Restore {
        /// The backup.
        backup: Box<quorate_state::Backup>,
    },
    /// The whole cluster keeps what runs and moves nothing, or returns to normal.
    ClusterMaintenance {
        /// True: enter; false: leave.
        on: bool,
    },
    /// Set a node's operator state: `active`, `draining` or `maintenance`.
    SetAdmin {
        /// The node.
        node: String,
        /// `active`, `draining` or `maintenance`.
        state: String,
    },
    /// The most recent cluster decisions.
    Events {
        /// At most this many, newest last.
        limit: usize,
    },
    /// Why a service runs where it runs, and why not on each other node.
    Explain {
        /// The service.
        service: String,
    },
    /// What the leader's scheduler works from now (for `quorate simulate --live`).
    SchedulerInput,
    /// Cut (or restore) all peer traffic of this node: the sandbox's `partition` fault.
    Partition {
        /// True to cut, false to heal.
        cut: bool,
    },
    /// Submit a spec and its lock through Raft.
    Apply {
        /// The spec.
        spec: Box<Spec>,
        /// Its lock.
        lock: Box<Lock>,
        /// Accept destructive changes.
        allow_destructive: bool,
    },
}

impl ControlRequest {
    /// True for requests that only read the cluster's state.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Self::Status { .. }
                | Self::Events { .. }
                | Self::Explain { .. }
                | Self::SchedulerInput
                | Self::Backup
        )
    }
}

/// The agent's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ControlReply {
    /// Status report.
    Status(Box<StatusReport>),
    /// A change was made (partition / heal, move, drain, maintenance).
    Done {
        /// What was done.
        message: String,
    },
    /// Cluster decisions, oldest first.
    Events {
        /// Each with `seq`, `at_ms`, `by`, `what`.
        events: Vec<serde_json::Value>,
    },
    /// Why a service runs where it runs.
    Explain {
        /// The service.
        service: String,
        /// Where it runs (or null).
        node: Option<String>,
        /// The scheduler's reason.
        reason: String,
        /// Its pin, if any.
        pinned: Option<String>,
        /// Node → `null` when it may run there, else why not.
        nodes: std::collections::BTreeMap<String, Option<String>>,
    },
    /// What the leader's scheduler works from.
    SchedulerInput(Box<SchedulerView>),
    /// The replicated state's backup.
    Backup(Box<quorate_state::Backup>),
    /// The spec was committed (or was already the applied one).
    Applied {
        /// Applied spec version.
        version: u64,
        /// Its content hash.
        hash: String,
        /// True when the submitted spec was already applied (no-op).
        unchanged: bool,
        /// What changed, as `quorate plan --json` items.
        changes: serde_json::Value,
    },
    /// The request was refused; nothing changed.
    Refused {
        /// Exit code for the CLI (1 invalid, 3 destructive, 4 no quorum).
        exit_code: u8,
        /// What and why, with the fix.
        message: String,
        /// Plan items, when the refusal is about the change itself.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        changes: serde_json::Value,
    },
}

/// The leader's scheduler input: the applied spec and the live state it places from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SchedulerView {
    /// The applied spec.
    pub spec: Spec,
    /// Each node's state.
    pub nodes: std::collections::BTreeMap<String, quorate_scheduler::NodeState>,
    /// Where each service is placed now.
    pub current: std::collections::BTreeMap<String, String>,
    /// `quorate move` pins.
    pub pins: std::collections::BTreeMap<String, String>,
    /// Nodes where a service recently spent its restart budget.
    pub failed: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Disabled services and bans in force.
    #[serde(default)]
    pub constraints: quorate_scheduler::Constraints,
}

/// `quorate status --json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusReport {
    /// Cluster name.
    pub cluster: String,
    /// Leader's node name, or null.
    pub leader: Option<String>,
    /// Raft term.
    pub term: u64,
    /// True when the leader confirmed a majority just now.
    pub quorum: bool,
    /// Applied spec version (0 before bootstrap).
    pub spec_version: u64,
    /// Applied spec hash.
    pub spec_hash: Option<String>,
    /// Raft commit index.
    pub commit_index: Option<u64>,
    /// Node whose agent produced this report (the leader when reachable).
    pub answered_by: String,
    /// True when the answering node's local spec file differs from the applied spec
    /// (DESIGN invariant 7: it is reported, never applied by itself).
    pub local_spec_differs: bool,
    /// Nodes that vote in Raft right now (may lag the spec while a membership change
    /// is carried out).
    pub raft_voters: Vec<String>,
    /// True while a change of the voters is under way (both the old and the new
    /// voters must then form a majority each): wait for false before taking a voter
    /// down.
    #[serde(default)]
    pub raft_membership_changing: bool,
    /// Raft members that do not vote (nodes with `voter = false`).
    #[serde(default)]
    pub raft_learners: Vec<String>,
    /// Nodes.
    pub nodes: Vec<NodeStatus>,
    /// Services (filled once scheduling lands).
    pub services: Vec<ServiceStatus>,
    /// Storage resources of the applied spec.
    pub storage: Vec<StorageStatus>,
    /// The most recent cluster decisions, oldest first.
    #[serde(default)]
    pub recent_events: Vec<String>,
    /// The whole cluster is in maintenance: nothing moves (`quorate maintenance on
    /// --cluster`).
    #[serde(default)]
    pub cluster_maintenance: bool,
    /// Voters left out by `quorate recover --force-single`: each votes again once it
    /// has come back with an empty data dir.
    #[serde(default)]
    pub left_out: Vec<String>,
    /// The WireGuard mesh as the node you asked sees it (`network.transport =
    /// "wireguard"`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<MeshStatus>,
    /// The latest failovers the answering leader decided and saw completed, oldest
    /// first, with how long each took (its memory only: a new leader starts empty).
    #[serde(default)]
    pub failovers: Vec<FailoverStatus>,
}

/// A failover in [`StatusReport`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FailoverStatus {
    /// The service.
    pub service: String,
    /// The node it left (down).
    pub from: String,
    /// The node it runs on now.
    pub to: String,
    /// From the old holder's last lease renewal the leader saw to the new holder's
    /// report that the service runs: the outage's upper bound.
    pub seconds: f64,
    /// When the new holder reported it running (ms since the epoch).
    pub at_ms: u64,
}

/// The mesh interface of one node, in [`StatusReport`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MeshStatus {
    /// Whose view this is.
    pub node: String,
    /// The interface (`quorate0`).
    pub interface: String,
    /// Why the interface could not be read (missing, `wg` not installed); null when read.
    pub error: Option<String>,
    /// Every other node of the spec.
    pub peers: Vec<MeshPeerStatus>,
}

/// One peer of [`MeshStatus`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MeshPeerStatus {
    /// The peer node.
    pub node: String,
    /// Where its packets last came from (or the configured endpoint).
    pub endpoint: Option<String>,
    /// Seconds since the last completed handshake; null: never (or the peer's key is
    /// not configured on the interface).
    pub handshake_age_s: Option<u64>,
    /// Whether that handshake is recent enough for a live tunnel (under 180 s).
    pub fresh: bool,
}

/// One node in [`StatusReport`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Name.
    pub name: String,
    /// `up`, `down`, `draining` or `maintenance`.
    pub state: String,
    /// Ms since the leader last heard from it (0 for the leader; null when unknown).
    pub last_contact_ms: Option<u64>,
    /// Raft id from the lock.
    pub raft_id: Option<u64>,
    /// Whether it votes.
    pub voter: bool,
    /// When its certificate expires (`2027-12-02 21:55:40 UTC`), as the answering
    /// node saw it at its last handshake with it; null when unknown.
    #[serde(default)]
    pub certificate_expires: Option<String>,
    /// Whole days until then (negative once expired); null when unknown.
    #[serde(default)]
    pub certificate_days_left: Option<i64>,
    /// The highest quorate protocol version it announced (`1.0`) at its last handshake
    /// with the answering node; null when unknown. Differs between nodes only during
    /// a rolling upgrade.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// One service in [`StatusReport`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// Node it runs on, or null.
    pub node: Option<String>,
    /// `pending`, `starting`, `running`, `stopping`, `stopped`, `failed`, `unplaceable`.
    pub state: String,
    /// Explicit placement (`quorate move`), or null.
    pub pinned: Option<String>,
    /// Why it is where it is (the scheduler's reason).
    #[serde(default)]
    pub reason: String,
    /// The last report the cluster recorded about it: which node said what
    /// (e.g. `n2: running`), or null before any report.
    #[serde(default)]
    pub reported: Option<String>,
}

/// One storage resource in [`StatusReport`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StorageStatus {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Replica nodes.
    pub replicas: Vec<String>,
    /// The node where it is attached (DRBD primary / mounted): where a running service
    /// that uses it runs, or null.
    #[serde(default)]
    pub attached_on: Option<String>,
    /// What each node last reported about it (DRBD: role, disk, peers, out-of-sync;
    /// GlusterFS: its brick online, entries waiting for heal).
    #[serde(default)]
    pub health: std::collections::BTreeMap<String, String>,
    /// Ceph: the OSD blocklist entries the leader added for nodes it fenced
    /// (`NODE ADDRESS:0/0`), until each rejoins cleanly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocklisted: Vec<String>,
}

/// Why the agent could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket exists but this user may not use it.
    #[error("permission denied on the agent's control socket {path}\n  help: run as root (sudo quorate …), or as a member of the group that owns the socket")]
    PermissionDenied {
        /// Socket path.
        path: String,
    },
    /// No agent listens there.
    #[error("cannot reach the agent at {path}: {source}\n  help: is `quorate agent` running with this data dir? pass --data-dir or --socket")]
    Unreachable {
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not answer in time.
    #[error("the agent at {path} did not answer within {after:?}")]
    Timeout {
        /// Socket path.
        path: String,
        /// Time allowed.
        after: Duration,
    },
    /// The answer was not understood.
    #[error("the agent at {path} sent an answer this CLI does not understand: {problem}")]
    Protocol {
        /// Socket path.
        path: String,
        /// What.
        problem: String,
    },
}

/// Largest control message accepted (a large spec is a few MB).
pub const MAX_LINE: usize = 64 << 20;

/// Sends one request to the agent at `socket` and waits up to `timeout` for the reply.
///
/// # Errors
/// Unreachable agent, timeout, or an answer that does not parse.
pub async fn call(
    socket: &Path,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<ControlReply, ApiError> {
    let path = socket.display().to_string();
    let work = async {
        let stream = UnixStream::connect(socket).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                ApiError::PermissionDenied { path: path.clone() }
            } else {
                ApiError::Unreachable {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| ApiError::Protocol {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|source| ApiError::Unreachable {
                path: path.clone(),
                source,
            })?;
        let mut reply = String::new();
        BufReader::new(read)
            .read_line(&mut reply)
            .await
            .map_err(|source| ApiError::Unreachable {
                path: path.clone(),
                source,
            })?;
        serde_json::from_str(&reply).map_err(|e| ApiError::Protocol {
            path: path.clone(),
            problem: e.to_string(),
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::Timeout {
            path,
            after: timeout,
        }),
    }
}
