//! Raft for quorate. openraft (an exact alpha pin, see Cargo.toml) is wrapped here
//! and nowhere else: the rest of quorate sees [`Consensus`], [`Command`]s in and
//! [`ClusterState`] out.
//!
//! **Architecture Invariant:** no other crate imports openraft. Swapping the Raft
//! library means rewriting this crate only.
//!
//! **Architecture Invariant:** a peer speaks only as itself: a Raft message whose
//! leader or candidate id is not the raft id of the node named by the sender's
//! certificate is refused.

mod heard;
mod network;
mod service;
mod store;
mod types;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::vote::RaftLeaderId;
use openraft::Instant;
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use quorate_net::Partition;
use quorate_pki::SharedTls;
pub use quorate_state::{Backup, ClusterState, Command, CommandResult, BACKUP_FORMAT};
use tokio::sync::RwLock;

pub use crate::network::{kinds, PeerReply, PeerRequest, RaftAnswer, RaftMessage};
use crate::network::{NetworkFactory, RaftReply, RaftRpc};
pub use crate::service::{call_app, AppClass, AppHandler, CallError, PeerService};
pub use crate::store::ForcedSingle;
pub use crate::types::PeerNode;
use crate::types::Raft;

/// Raft timings, from the spec.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout: a dead leader is replaced after 1× to 2× this.
    pub election_timeout: Duration,
}

/// Errors opening or running consensus.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// The Raft database could not be opened.
    #[error("cannot open the Raft state in {path}: {source}\n  help: is another agent using this data dir? is the file from another program?")]
    Open {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// openraft refused to start or stopped.
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader; the leader (if known) should be asked.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's raft id and node, when known.
        leader: Option<(u64, PeerNode)>,
    },
    /// No majority answered: nothing was proposed.
    #[error("no quorum: a majority of voters did not answer within {0:?}; nothing was changed")]
    NoQuorum(Duration),
    /// The change was proposed but its commit was not confirmed (timeout, or the
    /// leadership moved meanwhile): it may still take effect.
    #[error("the change was proposed but its commit was not confirmed ({0}); it may still take effect: check `quorate status` before retrying")]
    Uncertain(String),
    /// Raft stopped.
    #[error("raft stopped: {0}")]
    Fatal(String),
}

/// What this node knows about the Raft group.
#[derive(Clone, Debug)]
pub struct RaftStatus {
    /// This node's raft id.
    pub id: u64,
    /// Role: leader, follower, candidate, learner, shutdown.
    pub role: &'static str,
    /// Current leader, if known.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Index of the last committed entry.
    pub committed: Option<u64>,
    /// Index of the last applied entry.
    pub applied: Option<u64>,
    /// Index of the last entry in this node's log (committed or not).
    pub last_log: Option<u64>,
    /// Index of the last snapshot.
    pub snapshot: Option<u64>,
    /// Voting members by raft id.
    pub voters: BTreeMap<u64, PeerNode>,
    /// All members (voters and learners) by raft id.
    pub members: BTreeMap<u64, PeerNode>,
    /// False while a membership change is under way: a joint configuration (during
    /// which `voters` is the union of the old and the new voters, and a majority of
    /// *each* is needed) or a membership entry not yet applied here.
    pub membership_settled: bool,
    /// On the leader: ms since each follower last acknowledged a heartbeat.
    pub last_contact_ms: BTreeMap<u64, Option<u64>>,
    /// On the leader: ms since a quorum last acknowledged it.
    pub quorum_ack_ms: Option<u64>,
}

/// This node's Raft.
#[derive(Clone)]
pub struct Consensus {
    raft: Raft,
    applied: Arc<RwLock<store::Applied>>,
    id: u64,
    /// The members: node name → raft id. Only members may speak, each only as itself.
    peers: Arc<std::sync::RwLock<BTreeMap<String, u64>>>,
    /// When a leader of each term was last heard from (the lease handover's input).
    heard: Arc<std::sync::Mutex<heard::HeardFromLeaders>>,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Consensus {
    /// Opens the Raft state in `dir` (file `raft.redb`) and starts Raft; connections
    /// to peers are made from `source` (this node's address) when given.
    ///
    /// # Errors
    /// When the database cannot be opened or Raft refuses the configuration.
    pub async fn open(
        dir: &Path,
        id: u64,
        timings: Timings,
        tls: SharedTls,
        partition: Partition,
        source: Option<std::net::IpAddr>,
    ) -> Result<Self, ConsensusError> {
        let path = dir.join("raft.redb");
        let db = store::open_db(&path).map_err(|source| ConsensusError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let hb = u64::try_from(timings.heartbeat.as_millis()).unwrap_or(100);
        let el = u64::try_from(timings.election_timeout.as_millis()).unwrap_or(500);
        let config = Config {
            cluster_name: "quorate".into(),
            heartbeat_interval: hb,
            // openraft starts an election only after its leader lease (= the maximum)
            // plus a random timeout between min and max. With max = the spec's
            // election timeout and min = half of it, a dead leader is replaced after
            // 1× to 2× the spec's value (500–1000 ms by default), as DESIGN intends.
            election_timeout_min: el / 2,
            election_timeout_max: el,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(500),
            max_in_snapshot_log_to_keep: 100,
            install_snapshot_timeout: 10_000,
            ..Config::default()
        }
        .validate()
        .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        let sm = store::StateMachineStore::new(db.clone());
        let applied = sm.applied.clone();
        let raft = Raft::new(
            id,
            Arc::new(config),
            NetworkFactory::new(tls, partition, source),
            store::LogStore::new(db),
            sm,
        )
        .await
        .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        Ok(Self {
            raft,
            applied,
            id,
            peers: Arc::default(),
            heard: Arc::new(std::sync::Mutex::new(heard::HeardFromLeaders::new(
                std::time::Instant::now(),
            ))),
        })
    }

    /// Offline, with the agent stopped (`quorate recover --force-single`): turns the
    /// Raft state in `dir` into that of a one-voter group of `id`, keeping everything
    /// committed and proposing `command` as the first new entry (see
    /// [`store::force_single`]).
    ///
    /// # Errors
    /// When the database is in use (the agent runs) or has no committed state.
    pub fn force_single(
        dir: &Path,
        id: u64,
        me: PeerNode,
        command: Command,
    ) -> Result<ForcedSingle, ConsensusError> {
        let path = dir.join("raft.redb");
        let open = |source| ConsensusError::Open {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            return Err(open(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file: this node never joined a cluster",
            )));
        }
        let db = store::open_db(&path).map_err(open)?;
        store::force_single(&db, id, me, command).map_err(open)
    }

    /// This node's raft id.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sets the members (node name → raft id): the nodes of the applied spec (of the
    /// local spec before one is applied). Every peer message from another name is
    /// refused, and a Raft message must carry its sender's own raft id.
    pub fn set_peers(&self, peers: BTreeMap<String, u64>) {
        if let Ok(mut p) = self.peers.write() {
            if *p != peers {
                *p = peers;
            }
        }
    }

    /// True when `node` is a member, i.e. may send peer messages.
    #[must_use]
    pub fn is_member(&self, node: &str) -> bool {
        self.peers.read().is_ok_and(|p| p.contains_key(node))
    }

    /// True once this node has a Raft log (it was initialized or has joined).
    pub async fn has_state(&self) -> bool {
        self.raft
            .with_raft_state(|st| st.log_ids.last().is_some())
            .await
            .unwrap_or(false)
    }

    /// Initializes the group with `members` if this node has no Raft state yet.
    /// Safe on every node at once with the same members (openraft's first log entry
    /// is identical everywhere). Returns true when this call initialized.
    ///
    /// # Errors
    /// When Raft has stopped.
    pub async fn initialize(
        &self,
        members: BTreeMap<u64, PeerNode>,
    ) -> Result<bool, ConsensusError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(_)) => Ok(false),
            Err(e) => Err(ConsensusError::Raft(e.to_string())),
        }
    }

    /// Confirms that this node is the leader and a majority still follows it.
    ///
    /// # Errors
    /// [`WriteError::NotLeader`] or [`WriteError::NoQuorum`] after `timeout`.
    pub async fn confirm_leadership(&self, timeout: Duration) -> Result<(), WriteError> {
        self.confirm_with(openraft::ReadPolicy::ReadIndex, timeout)
            .await
    }

    /// Like [`Self::confirm_leadership`], without a heartbeat round of its own: waits
    /// for the next periodic heartbeat (sent after this call) that a quorum
    /// acknowledges. Many callers at once share that round, so lease renewals of a
    /// large cluster cost no extra RPCs; each waits up to one heartbeat interval.
    ///
    /// # Errors
    /// As [`Self::confirm_leadership`].
    pub async fn confirm_leadership_with_next_heartbeat(
        &self,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        self.confirm_with(
            openraft::LinearizerOption::new(Some(Duration::ZERO), false),
            timeout,
        )
        .await
    }

    async fn confirm_with(
        &self,
        option: impl Into<openraft::LinearizerOption>,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable(option)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) => {
                Err(WriteError::NoQuorum(timeout))
            }
            // A leader that lost its majority steps down: from the caller's side that is
            // "no quorum" unless another node already leads.
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                match f.leader_id.filter(|id| *id != self.id) {
                    Some(_) => Err(WriteError::NotLeader {
                        leader: self.leader(),
                    }),
                    None => Err(WriteError::NoQuorum(timeout)),
                }
            }
            Ok(Err(e)) => Err(WriteError::Fatal(e.to_string())),
            Err(_) => Err(WriteError::NoQuorum(timeout)),
        }
    }

    /// Proposes `command` and waits until a majority has it and it is applied here.
    /// Leadership and quorum are confirmed first, so a node that has lost its majority
    /// proposes nothing (no entry that could commit later, after the caller gave up).
    ///
    /// # Errors
    /// Not the leader, no quorum within `timeout`, or Raft stopped.
    pub async fn write(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResult, WriteError> {
        self.confirm_leadership(timeout).await?;
        // From here on the entry may be in the log: a failure does not mean that
        // nothing changed.
        match tokio::time::timeout(timeout, self.raft.client_write(command)).await {
            Ok(Ok(r)) => Ok(r.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(WriteError::Uncertain(format!(
                    "the leadership moved to {}",
                    f.leader_node
                        .map_or_else(|| "another node".to_owned(), |n| n.name)
                )))
            }
            Ok(Err(e)) => Err(WriteError::Fatal(e.to_string())),
            Err(_) => Err(WriteError::Uncertain(format!(
                "no majority confirmed it within {timeout:?}"
            ))),
        }
    }

    /// On the leader: makes `voters` the voting members, through joint consensus, and
    /// adds `learners` (nodes with `voter = false`) as non-voting members.
    /// New members first join as learners; the voters change only once every one of
    /// them has caught up (so a new voter that is down never takes the majority with
    /// it, and nothing here waits for it). Members no longer listed are removed.
    /// Returns true when the voters changed, false when they match or a new member is
    /// still catching up (call again later).
    ///
    /// # Errors
    /// Not the leader, no quorum, or a membership change Raft refuses.
    pub async fn set_voters(
        &self,
        voters: &BTreeMap<u64, PeerNode>,
        learners: &BTreeMap<u64, PeerNode>,
        timeout: Duration,
    ) -> Result<bool, WriteError> {
        let status = self.status();
        let current: std::collections::BTreeSet<u64> = status.voters.keys().copied().collect();
        let wanted: std::collections::BTreeSet<u64> = voters.keys().copied().collect();
        let missing_learners: Vec<(&u64, &PeerNode)> = learners
            .iter()
            .filter(|(id, _)| !status.members.contains_key(id))
            .collect();
        // Non-voting members no longer in the spec (voters leave through the voter
        // change below).
        let stale_learners: std::collections::BTreeSet<u64> = status
            .members
            .keys()
            .filter(|id| {
                !status.voters.contains_key(id)
                    && !voters.contains_key(id)
                    && !learners.contains_key(id)
            })
            .copied()
            .collect();
        if current == wanted && missing_learners.is_empty() && stale_learners.is_empty() {
            return Ok(false);
        }
        self.confirm_leadership(timeout).await?;
        let map_err = |e: RaftError<types::TypeConfig, ClientWriteError<types::TypeConfig>>| match e
        {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => WriteError::NotLeader {
                leader: self.leader(),
            },
            other => WriteError::Fatal(other.to_string()),
        };
        let deadline =
            |what: &str| WriteError::Uncertain(format!("{what} not confirmed within {timeout:?}"));
        // Non-voting members stay learners; new voters start as learners.
        for (id, node) in voters.iter().chain(missing_learners) {
            if !status.members.contains_key(id) {
                tokio::time::timeout(timeout, self.raft.add_learner(*id, node.clone(), false))
                    .await
                    .map_err(|_| deadline("adding a learner"))?
                    .map_err(map_err)?;
            }
        }
        if !stale_learners.is_empty() {
            tokio::time::timeout(
                timeout,
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(stale_learners), false),
            )
            .await
            .map_err(|_| deadline("removing a non-voting member"))?
            .map_err(map_err)?;
        }
        if current == wanted {
            return Ok(false);
        }
        if !self.caught_up(&wanted) {
            return Ok(false);
        }
        tokio::time::timeout(timeout, self.raft.change_membership(wanted, false))
            .await
            .map_err(|_| deadline("the membership change"))?
            .map_err(map_err)?;
        Ok(true)
    }

    /// On the leader: true when every node of `ids` has replicated the log up to the
    /// current membership entry (the one that made the new ones learners).
    fn caught_up(&self, ids: &std::collections::BTreeSet<u64>) -> bool {
        let m = self.raft.metrics().borrow_watched().clone();
        let Some(needed) = m.membership_config.log_id().as_ref().map(|l| l.index) else {
            return false;
        };
        let Some(replication) = m.replication.as_ref() else {
            return false;
        };
        ids.iter().all(|id| {
            *id == self.id
                || replication
                    .get(id)
                    .and_then(|matched| matched.as_ref())
                    .is_some_and(|l| l.index >= needed)
        })
    }

    /// The current leader's raft id and node, when known.
    #[must_use]
    pub fn leader(&self) -> Option<(u64, PeerNode)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, node))
    }

    /// Reads the applied cluster state without copying it.
    pub async fn with_state<R>(&self, read: impl FnOnce(&ClusterState) -> R) -> R {
        read(&self.applied.read().await.state)
    }

    /// A copy of the applied cluster state.
    pub async fn state(&self) -> ClusterState {
        self.applied.read().await.state.clone()
    }

    /// Raft's view from this node.
    #[must_use]
    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let members: BTreeMap<u64, PeerNode> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let voters = membership
            .voter_ids()
            .filter_map(|id| members.get(&id).map(|n| (id, n.clone())))
            .collect();
        let last_contact_ms = m
            .heartbeat
            .as_ref()
            .map(|h| {
                h.iter()
                    .map(|(id, at)| {
                        (
                            *id,
                            at.as_ref().map(|t| {
                                u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
                            }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        RaftStatus {
            id: m.id,
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            leader: m.current_leader,
            term: m.current_term,
            committed: m.local_committed.as_ref().map(|l| l.index),
            applied: m.last_applied.as_ref().map(|l| l.index),
            last_log: m.last_log_index,
            snapshot: m.snapshot.as_ref().map(|l| l.index),
            voters,
            members,
            membership_settled: membership.get_joint_config().len() == 1
                && m.membership_config.log_id().as_ref().map(|l| l.index)
                    <= m.last_applied.as_ref().map(|l| l.index),
            last_contact_ms,
            quorum_ack_ms: m
                .last_quorum_acked
                .as_ref()
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Handles a Raft message from `from` (the node named by its certificate).
    pub async fn handle(&self, from: &str, message: RaftMessage) -> RaftAnswer {
        let claimed = match &message.0 {
            RaftRpc::Append(r) => *r.vote.leader_id().node_id(),
            RaftRpc::Vote(r) | RaftRpc::PreVote(r) => *r.vote.leader_id().node_id(),
            RaftRpc::Snapshot { vote, .. } => *vote.leader_id().node_id(),
        };
        let actual = self.peers.read().ok().and_then(|p| p.get(from).copied());
        if actual != Some(claimed) {
            tracing::warn!(
                peer = from,
                claimed,
                "refused a Raft message: the peer's certificate names another node"
            );
            return RaftAnswer(RaftReply::Refused(format!(
                "node `{from}` may not speak as raft id {claimed}"
            )));
        }
        // A candidate must be a member of this node's Raft group: a node left out by a
        // forced recovery (or removed) that still has its old log must not win votes
        // or bump terms here. (A new voter is a learner, thus a member, first.)
        if let RaftRpc::Vote(_) | RaftRpc::PreVote(_) = &message.0 {
            let metrics = self.raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            // (A node not yet initialized knows no group: it votes as Raft says.)
            let uninitialized = membership.nodes().next().is_none();
            if !uninitialized && membership.get_node(&claimed).is_none() {
                tracing::warn!(
                    peer = from,
                    "refused a vote request: the candidate is not a member of this Raft group"
                );
                return RaftAnswer(RaftReply::Refused(format!(
                    "`{from}` is not a member of this node's Raft group; if it was left out by `quorate recover --force-single`, empty its data dir so that it rejoins"
                )));
            }
        }
        // Only a leader replicates, and a leader's vote is committed: an append or a
        // snapshot under an uncommitted vote is nonsense that openraft does not expect
        // (it asserts on it and stops; found by the fuzzer).
        let uncommitted = match &message.0 {
            RaftRpc::Append(r) => !r.vote.is_committed(),
            RaftRpc::Snapshot { vote, .. } => !vote.is_committed(),
            RaftRpc::Vote(_) | RaftRpc::PreVote(_) => false,
        };
        if uncommitted {
            tracing::warn!(
                peer = from,
                "refused a Raft append or snapshot under an uncommitted vote"
            );
            return RaftAnswer(RaftReply::Refused(
                "an append or snapshot must carry its leader's committed vote".into(),
            ));
        }
        // What a leader says is noted before Raft acts on it (and so before any
        // answer could confirm a lease grant of that leader).
        let leader_term = match &message.0 {
            RaftRpc::Append(r) => Some(r.vote.leader_id().term()),
            RaftRpc::Snapshot { vote, .. } => Some(vote.leader_id().term()),
            RaftRpc::Vote(_) | RaftRpc::PreVote(_) => None,
        };
        if let Some(term) = leader_term {
            self.note_leader_heard(term);
        }
        let reply = match message.0 {
            RaftRpc::Append(r) => self
                .raft
                .append_entries(r)
                .await
                .map(RaftReply::Append)
                .map_err(|e| e.to_string()),
            RaftRpc::Vote(r) => self
                .raft
                .vote(r)
                .await
                .map(RaftReply::Vote)
                .map_err(|e| e.to_string()),
            RaftRpc::PreVote(r) => self
                .raft
                .pre_vote(r)
                .await
                .map(RaftReply::Vote)
                .map_err(|e| e.to_string()),
            RaftRpc::Snapshot { vote, meta, data } => self
                .raft
                .install_full_snapshot(
                    vote,
                    types::Snapshot {
                        meta,
                        snapshot: data,
                    },
                )
                .await
                .map(RaftReply::Snapshot)
                .map_err(|e| e.to_string()),
        };
        RaftAnswer(reply.unwrap_or_else(RaftReply::Refused))
    }

    /// Resolves once this node has applied past `seen` (an applied index read
    /// earlier): the reconciler wakes at once for a new placement instead of at its
    /// next tick.
    pub async fn applied_beyond(&self, seen: Option<u64>) {
        let mut rx = self.raft.data_metrics();
        loop {
            if rx.borrow_watched().last_applied.as_ref().map(|l| l.index) != seen {
                return;
            }
            if rx.changed().await.is_err() {
                // Raft stopped: nothing will be applied any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Notes that a leader of `term` is heard now. The leader calls this for its own
    /// term before it confirms a lease grant; [`Self::handle`] calls it for every
    /// append and snapshot before Raft sees it.
    pub fn note_leader_heard(&self, term: u64) {
        if let Ok(mut heard) = self.heard.lock() {
            heard.note(term, std::time::Instant::now());
        }
    }

    /// How long ago this node last heard from a leader of any term (itself included,
    /// when it leads and grants).
    #[must_use]
    pub fn since_leader_heard(&self) -> Option<std::time::Duration> {
        let latest = self.heard.lock().ok()?.latest_before(u64::MAX)?;
        Some(latest.elapsed())
    }

    /// For a new leader of `term`: how long ago this node last heard from a leader of
    /// an earlier term. Answered only while this node's own term is `term`: Raft then
    /// refuses every earlier leader, so the answer can no longer change.
    #[must_use]
    pub fn heard_from_earlier_leaders(&self, term: u64) -> Option<std::time::Duration> {
        if self.raft.metrics().borrow_watched().current_term != term {
            return None;
        }
        let latest = self.heard.lock().ok()?.latest_before(term)?;
        Some(latest.elapsed())
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh Raft of raft id 1 named `n1`, with its own CA, in `dir`.
    async fn open_n1(dir: &Path) -> Consensus {
        let ca = dir.join("ca");
        quorate_pki::init_ca(&ca, "t", quorate_pki::CA_VALIDITY).unwrap();
        quorate_pki::issue(&ca, "n1", &dir.join("tls"), quorate_pki::NODE_VALIDITY).unwrap();
        let tls = SharedTls::new(
            quorate_pki::load(&quorate_pki::TlsFiles::in_dir(&dir.join("tls")), "n1").unwrap(),
        );
        let timings = Timings {
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(500),
        };
        Consensus::open(dir, 1, timings, tls, Partition::default(), None)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_peer_may_not_speak_as_another_node() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_n1(dir.path()).await;
        c.set_peers(
            [
                ("n1".to_string(), 1),
                ("n2".to_string(), 2),
                ("n3".to_string(), 3),
            ]
            .into(),
        );
        let vote_as = |candidate: u64| {
            let vote = openraft::alias::VoteOf::<types::TypeConfig>::new(5, candidate);
            RaftMessage(RaftRpc::Vote(openraft::raft::VoteRequest::new(vote, None)))
        };
        // n2 asking for votes as raft id 3: refused before Raft sees it.
        let RaftAnswer(reply) = c.handle("n2", vote_as(3)).await;
        assert!(
            matches!(&reply, RaftReply::Refused(why) if why.contains("may not speak as raft id 3")),
            "{reply:?}"
        );
        // An unknown node is refused too.
        let RaftAnswer(reply) = c.handle("intruder", vote_as(2)).await;
        assert!(matches!(reply, RaftReply::Refused(_)));
        // n2 as itself reaches Raft.
        let RaftAnswer(reply) = c.handle("n2", vote_as(2)).await;
        assert!(matches!(reply, RaftReply::Vote(_)), "{reply:?}");
        c.shutdown().await;
    }

    /// A JSON value with one leaf changed, one key dropped or one node replaced, as
    /// chosen by `(which, how, value)`.
    fn mutate(v: &mut serde_json::Value, which: usize, how: u8, value: u64) {
        fn nodes(v: &serde_json::Value) -> usize {
            1 + match v {
                serde_json::Value::Array(a) => a.iter().map(nodes).sum(),
                serde_json::Value::Object(o) => o.values().map(nodes).sum(),
                _ => 0,
            }
        }
        fn walk(v: &mut serde_json::Value, n: &mut usize, how: u8, value: u64) -> bool {
            if *n == 0 {
                *v = match how % 6 {
                    0 => serde_json::json!(value),
                    1 => serde_json::json!(-1),
                    2 => serde_json::json!(format!("x{value}")),
                    3 => serde_json::Value::Null,
                    4 => serde_json::json!([value, value]),
                    _ => serde_json::json!({ "term": value, "index": value, "node_id": value }),
                };
                return true;
            }
            *n -= 1;
            match v {
                serde_json::Value::Array(a) => a.iter_mut().any(|c| walk(c, n, how, value)),
                serde_json::Value::Object(o) => {
                    if how == 255 {
                        if let Some(k) = o.keys().next().cloned() {
                            o.remove(&k);
                            return true;
                        }
                    }
                    o.values_mut().any(|c| walk(c, n, how, value))
                }
                _ => false,
            }
        }
        let mut n = which % nodes(v);
        walk(v, &mut n, how, value);
    }

    struct NoApp;

    impl crate::AppHandler for NoApp {
        async fn handle(
            &self,
            _: String,
            _: crate::AppClass,
            _: serde_json::Value,
        ) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    fn fuzz_cases(default: u32) -> u32 {
        std::env::var("QUORATE_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Issue 14, item 7: peer frames of every kind, random bytes and mutated valid Raft
    /// messages from a member, reach a real Raft and never panic it or stop it.
    #[test]
    fn fuzzed_peer_frames_never_panic_or_stop_raft() {
        use proptest::prelude::*;
        use quorate_net::Handler;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let c = rt.block_on(open_n1(dir.path()));
        c.set_peers([("n1".to_string(), 1), ("n2".to_string(), 2)].into());
        // A member of a two-voter group whose other voter (n2) is the fuzzer.
        let peer = |name: &str| PeerNode {
            name: name.into(),
            addr: "127.0.0.1:1".into(),
        };
        rt.block_on(c.initialize([(1, peer("n1")), (2, peer("n2"))].into()))
            .unwrap();
        let service = crate::PeerService::new(c.clone(), std::sync::Arc::new(NoApp));
        let vote = openraft::alias::VoteOf::<types::TypeConfig>::new(3, 2);
        let templates: Vec<serde_json::Value> = [
            RaftRpc::Vote(openraft::raft::VoteRequest::new(vote, None)),
            RaftRpc::PreVote(openraft::raft::VoteRequest::new(vote, None)),
            RaftRpc::Append(openraft::raft::AppendEntriesRequest {
                vote,
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            }),
            RaftRpc::Append(openraft::raft::AppendEntriesRequest {
                vote: openraft::alias::VoteOf::<types::TypeConfig>::new_committed(4, 2),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            }),
        ]
        .into_iter()
        .map(|rpc| serde_json::to_value(crate::PeerRequest::Raft(RaftMessage(rpc))).unwrap())
        .collect();
        let config = ProptestConfig {
            cases: fuzz_cases(300),
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let strategy = (
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..300),
            0..templates.len(),
            prop::collection::vec((any::<usize>(), any::<u8>(), any::<u64>()), 0..4),
        );
        runner
            .run(&strategy, |(kind, bytes, template, mutations)| {
                let mut message = templates[template].clone();
                for (which, how, value) in mutations {
                    mutate(&mut message, which, how, value);
                }
                let mutated = serde_json::to_vec(&message).unwrap();
                rt.block_on(async {
                    for (kind, frame) in [(kind, bytes), (kinds::RAFT, mutated)] {
                        let reply = service.handle("n2".into(), kind, frame).await;
                        // Every reply is a well-formed answer.
                        serde_json::from_slice::<PeerReply>(&reply).unwrap();
                    }
                });
                Ok(())
            })
            .unwrap();
        // Raft is still running and still answers a sound vote request.
        assert_ne!(c.status().role, "shutdown");
        let RaftAnswer(reply) = rt.block_on(c.handle(
            "n2",
            RaftMessage(RaftRpc::Vote(openraft::raft::VoteRequest::new(
                openraft::alias::VoteOf::<types::TypeConfig>::new(1_000_000, 2),
                None,
            ))),
        ));
        assert!(matches!(reply, RaftReply::Vote(_)), "{reply:?}");
        rt.block_on(c.shutdown());
    }
}
