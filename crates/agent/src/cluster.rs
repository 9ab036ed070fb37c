//! What a node answers: status (through the leader when it can) and apply (on the
//! leader, forwarded there from any node). Peers forward control requests to the
//! leader as application messages of the peer protocol.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quorate_api::{ControlReply, ControlRequest, NodeStatus, StatusReport, StorageStatus};
use quorate_consensus::{
    call_app, AppClass, ClusterState, Command, CommandResult, Consensus, PeerNode, WriteError,
};
use quorate_lock::Lock;
use quorate_net::{Partition, PeerClient};
use quorate_pki::SharedTls;
use quorate_spec::Spec;
use quorate_state::AdminState;
use serde_json::json;
use tokio::sync::Mutex;

use crate::setup::LocalFiles;

/// One node's view of the cluster and the means to act on it.
#[derive(Debug)]
pub struct Node {
    pub(crate) name: String,
    pub(crate) consensus: Consensus,
    pub(crate) local: LocalFiles,
    pub(crate) tls: SharedTls,
    pub(crate) partition: Partition,
    /// True only in the sandbox and tests: the control socket takes `partition`.
    pub(crate) fault_injection: bool,
    /// Connections to the leader, by node name.
    clients: Mutex<BTreeMap<String, PeerClient>>,
    /// On the leader: when each node's lease was last renewed.
    pub(crate) leases: std::sync::Mutex<crate::failover::LeaseTable>,
    /// The applied spec's timings, refreshed whenever the applied spec changes
    /// ([`Node::refresh_applied`]): lease grants and expiries use these.
    pub(crate) applied_timings: std::sync::Mutex<Option<quorate_spec::Timings>>,
    /// On the leader: where each service recently failed for good, and since when.
    pub(crate) failures: std::sync::Mutex<BTreeMap<String, BTreeMap<String, std::time::Instant>>>,
    /// Wakes lease grants waiting for a decision of the scheduler that counted their
    /// node down to be proposed (see `Node::grant_lease`).
    pub(crate) decision_done: tokio::sync::Notify,
    /// The members' addresses, whose handshakes have slots of their own.
    pub(crate) known_addresses: quorate_net::KnownAddresses,
    /// The end of validity of each peer's certificate and the protocol version it
    /// announced, as seen at its last handshake with this node (the leader sees every
    /// node: all renew their leases with it).
    pub(crate) peer_certificates:
        std::sync::Mutex<BTreeMap<String, (SystemTime, quorate_pki::ProtocolVersion)>>,
    /// On the leader: runs of the spec's fence_command.
    pub(crate) power_fencing: std::sync::Arc<std::sync::Mutex<crate::failover::PowerFencing>>,
    /// Ceph blocklisting done as the leader (storage-level fencing).
    pub(crate) ceph_fencing: std::sync::Arc<std::sync::Mutex<crate::failover::CephFencing>>,
    /// Prometheus metrics (`GET /metrics`).
    pub(crate) metrics: crate::metrics::Metrics,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// Who asked for an operator request: the node whose control socket received it
/// (named by its certificate when it was forwarded) and the local user there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The node that received the request from its local CLI.
    pub node: String,
    /// That node's local user (from `SO_PEERCRED`), when known.
    pub user: Option<String>,
    /// True when a peer forwarded the request here.
    pub forwarded: bool,
}

impl Caller {
    /// How events name the caller: `user@node`, or the node alone.
    #[must_use]
    pub fn by(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}", self.node),
            None => self.node.clone(),
        }
    }
}

/// Whole days from now until `at` (negative once past).
fn days_left(at: SystemTime) -> i64 {
    let secs = match at.duration_since(SystemTime::now()) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    secs.div_euclid(86_400)
}

fn refused(exit_code: u8, message: impl Into<String>) -> ControlReply {
    ControlReply::Refused {
        exit_code,
        message: message.into(),
        changes: serde_json::Value::Null,
    }
}

/// The nodes of `spec` that the lock numbers: name → raft id. Only these may speak.
#[must_use]
pub fn members(spec: &Spec, lock: &Lock) -> BTreeMap<String, u64> {
    spec.nodes
        .keys()
        .filter_map(|name| Some((name.clone(), lock.nodes.get(name)?.raft_id)))
        .collect()
}

/// The voters Raft should have: the applied spec's, less those a forced recovery left
/// out (until they rejoin).
fn wanted_voters(state: &quorate_state::ClusterState) -> BTreeMap<u64, PeerNode> {
    let Some(applied) = &state.applied else {
        return BTreeMap::new();
    };
    let mut wanted = voters(&applied.spec, &applied.lock);
    wanted.retain(|_, p| !state.left_out.contains(&p.name));
    wanted
}

/// The non-voting members Raft should have: the applied spec's nodes with
/// `voter = false`, as learners (they get the log and leases, they do not vote).
fn wanted_learners(state: &quorate_state::ClusterState) -> BTreeMap<u64, PeerNode> {
    let Some(applied) = &state.applied else {
        return BTreeMap::new();
    };
    let mut wanted = nodes_where(&applied.spec, &applied.lock, |n| !n.voter);
    wanted.retain(|_, p| !state.left_out.contains(&p.name));
    wanted
}

/// Raft members of `spec` + `lock` that vote: raft id → name and address.
#[must_use]
pub fn voters(spec: &Spec, lock: &Lock) -> BTreeMap<u64, PeerNode> {
    nodes_where(spec, lock, |n| n.voter)
}

/// The nodes of `spec` + `lock` that `keep` selects: raft id → name and address.
fn nodes_where(
    spec: &Spec,
    lock: &Lock,
    keep: impl Fn(&quorate_spec::NodeSpec) -> bool,
) -> BTreeMap<u64, PeerNode> {
    spec.nodes
        .iter()
        .filter(|(_, n)| keep(n))
        .filter_map(|(name, _)| {
            let id = lock.nodes.get(name)?.raft_id;
            Some((
                id,
                PeerNode {
                    name: name.clone(),
                    addr: crate::setup::peer_addr(spec, lock, name)?.to_string(),
                },
            ))
        })
        .collect()
}

impl Node {
    pub(crate) fn new(
        name: String,
        consensus: Consensus,
        local: LocalFiles,
        tls: SharedTls,
        partition: Partition,
        fault_injection: bool,
    ) -> Self {
        Self {
            name,
            consensus,
            local,
            tls,
            partition,
            fault_injection,
            clients: Mutex::default(),
            leases: std::sync::Mutex::default(),
            applied_timings: std::sync::Mutex::default(),
            power_fencing: std::sync::Arc::default(),
            ceph_fencing: std::sync::Arc::default(),
            peer_certificates: std::sync::Mutex::default(),
            known_addresses: quorate_net::KnownAddresses::default(),
            failures: std::sync::Mutex::default(),
            decision_done: tokio::sync::Notify::new(),
            metrics: crate::metrics::Metrics::new(),
        }
    }

    /// How long to wait for a majority before answering "no quorum".
    pub(crate) fn quorum_timeout(&self) -> Duration {
        (self.local.spec.cluster.timings.election_timeout.get() * 4).max(Duration::from_secs(2))
    }

    /// A node unheard of for longer than this is reported down.
    pub(crate) fn down_after_ms(&self) -> u64 {
        self.local.spec.cluster.timings.lease_ttl.as_millis()
    }

    /// This node's cluster address in its local spec and lock: peer connections are
    /// made from it.
    pub(crate) fn own_address(&self) -> Option<std::net::IpAddr> {
        quorate_lock::cluster_address(&self.local.spec, &self.local.lock, &self.name)
    }

    /// The current leader's name, when this node knows one.
    pub(crate) fn leader_name(&self) -> Option<String> {
        self.consensus.leader().map(|(_, peer)| peer.name)
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.consensus.status().leader == Some(self.consensus.id())
    }

    /// Handles a control request from the local CLI or from a peer that forwarded it
    /// here because it believes this node leads; `caller` says who asked.
    pub async fn handle(&self, request: ControlRequest, caller: &Caller) -> ControlReply {
        let forwarded = caller.forwarded;
        if let ControlRequest::Partition { cut } = request {
            // A fault of this node's own, never something a peer may ask for.
            if forwarded {
                tracing::warn!(
                    peer = caller.node,
                    "refused a forwarded `partition`: peers may not cut a node's traffic"
                );
                return refused(
                    1,
                    "`partition` is local to a node's control socket; peers may not send it",
                );
            }
            if !self.fault_injection {
                return refused(1, "this agent takes no fault injection: `partition` exists only in the sandbox and tests (`quorate agent --allow-fault-injection`)");
            }
            self.partition.set(cut);
            tracing::warn!(
                cut,
                "peer traffic {}",
                if cut {
                    "CUT (partition)"
                } else {
                    "restored (heal)"
                }
            );
            let message = if cut {
                format!("{}: all peer traffic is cut", self.name)
            } else {
                format!("{}: peer traffic restored", self.name)
            };
            return ControlReply::Done { message };
        }
        if let ControlRequest::Events { limit } = request {
            // The event log is replicated: any node can answer.
            let events = self
                .consensus
                .with_state(|st| {
                    st.events
                        .iter()
                        .rev()
                        .take(limit)
                        .rev()
                        .map(
                            |e| json!({"seq": e.seq, "at_ms": e.at_ms, "by": e.by, "what": e.what, "kind": e.kind}),
                        )
                        .collect()
                })
                .await;
            return ControlReply::Events { events };
        }
        if let ControlRequest::Status { local: true } = request {
            return self.status(self.is_leader()).await;
        }
        if self.is_leader() {
            return match request {
                ControlRequest::Status { .. } => self.status(true).await,
                ControlRequest::Apply {
                    spec,
                    lock,
                    allow_destructive,
                } => self.apply(*spec, *lock, allow_destructive, caller).await,
                ControlRequest::Move { service, node } => {
                    self.move_service(&service, node, caller).await
                }
                ControlRequest::SetAdmin { node, state } => {
                    self.set_admin(&node, &state, caller).await
                }
                ControlRequest::Restart { service } => self.restart_service(&service, caller).await,
                ControlRequest::SetDisabled { service, disabled } => {
                    self.set_disabled(&service, disabled, caller).await
                }
                ControlRequest::Ban {
                    service,
                    node,
                    for_ms,
                } => self.ban(&service, &node, for_ms, caller).await,
                ControlRequest::Unban { service, node } => {
                    self.unban(&service, &node, caller).await
                }
                ControlRequest::Cleanup { service, node } => {
                    self.cleanup(&service, node.as_deref(), caller).await
                }
                ControlRequest::ClusterMaintenance { on } => {
                    self.cluster_maintenance(on, caller).await
                }
                ControlRequest::Backup => self.backup().await,
                ControlRequest::Restore { backup } => self.restore(*backup, caller).await,
                ControlRequest::Explain { service } => self.explain(&service).await,
                ControlRequest::SchedulerInput => self.scheduler_input().await,
                // Answered above, on the node that was asked.
                ControlRequest::Partition { .. } | ControlRequest::Events { .. } => {
                    refused(1, "answered locally")
                }
            };
        }
        let leader = self
            .consensus
            .leader()
            .filter(|(id, _)| *id != self.consensus.id());
        let reply = match (&leader, forwarded) {
            (Some((_, peer)), false) => self.forward(peer, &request, caller).await,
            _ => Err("no leader is known".to_string()),
        };
        match (reply, request) {
            (Ok(ControlReply::Status(mut report)), ControlRequest::Status { .. }) => {
                report.local_spec_differs = report.spec_hash.as_deref().is_some_and(|h| h != self.local.hash);
                // The tunnels as seen from here: the node asked, not the leader.
                report.wireguard = self.mesh_status().await;
                ControlReply::Status(report)
            }
            (Ok(reply), _) => reply,
            (Err(_), ControlRequest::Status { .. }) => self.status(false).await,
            (Err(_), ControlRequest::Partition { .. } | ControlRequest::Events { .. }) => refused(1, "answered locally"),
            (Err(why), ControlRequest::Move { .. } | ControlRequest::SetAdmin { .. } | ControlRequest::Explain { .. } | ControlRequest::Restart { .. } | ControlRequest::SchedulerInput | ControlRequest::SetDisabled { .. } | ControlRequest::Ban { .. } | ControlRequest::Unban { .. } | ControlRequest::Cleanup { .. } | ControlRequest::ClusterMaintenance { .. } | ControlRequest::Backup | ControlRequest::Restore { .. }) => refused(
                4,
                format!("no quorum: {why}; nothing was changed\n  help: a majority of voters must be up and connected; check `quorate status`"),
            ),
            (Err(why), ControlRequest::Apply { .. }) => refused(
                4,
                format!("no quorum: {why}; nothing was changed\n  help: a majority of voters must be up and connected; check `quorate status`"),
            ),
        }
    }

    async fn forward(
        &self,
        leader: &PeerNode,
        request: &ControlRequest,
        caller: &Caller,
    ) -> Result<ControlReply, String> {
        let message = PeerMessage::Control {
            request: request.clone(),
            user: caller.user.clone(),
        };
        let timeout = self.quorum_timeout() * 2 + Duration::from_secs(1);
        let reply = self.call_peer("control", leader, &message, timeout).await?;
        serde_json::from_value(reply).map_err(|e| e.to_string())
    }

    /// Sends a peer message on the connection kept for `purpose`, so that a slow
    /// `apply` never delays a lease renewal behind it.
    pub(crate) async fn call_peer(
        &self,
        purpose: &str,
        peer: &PeerNode,
        message: &PeerMessage,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let addr = peer
            .addr
            .parse()
            .map_err(|e| format!("bad address {} of {}: {e}", peer.addr, peer.name))?;
        let mut clients = self.clients.lock().await;
        let key = format!("{purpose}/{}", peer.name);
        let mut client = clients.remove(&key).unwrap_or_else(|| {
            PeerClient::new(&peer.name, addr, &self.tls, self.partition.clone())
                .from_address(self.own_address())
        });
        drop(clients);
        let request = serde_json::to_value(message).map_err(|e| e.to_string())?;
        let class = if matches!(message, PeerMessage::Control { .. }) {
            AppClass::Control
        } else {
            AppClass::Report
        };
        let reply = call_app(&mut client, class, request, timeout)
            .await
            .map_err(|e| format!("{} unreachable: {e}", peer.name));
        self.clients.lock().await.insert(key, client);
        reply
    }

    /// The Prometheus text of this node's metrics and view (`GET /metrics`).
    pub async fn metrics_text(&self) -> String {
        let leads = self.is_leader();
        let ControlReply::Status(report) = self.status(leads).await else {
            return String::new();
        };
        let snapshot = crate::metrics::Snapshot {
            term: report.term,
            leader: leads,
            quorum: if leads {
                report.quorum
            } else {
                report.leader.is_some()
            },
            spec_version: report.spec_version,
            nodes_up: report
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.state != "down"))
                .collect(),
            services: report
                .services
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.node.clone().unwrap_or_default(),
                        s.state.clone(),
                    )
                })
                .collect(),
            certificate_days: report
                .nodes
                .iter()
                .filter_map(|n| Some((n.name.clone(), n.certificate_days_left?)))
                .collect(),
            storage: report
                .storage
                .iter()
                .flat_map(|s| {
                    s.health
                        .iter()
                        .map(|(node, health)| (s.name.clone(), node.clone(), health.clone()))
                })
                .collect(),
        };
        crate::metrics::encode(&self.metrics, &snapshot)
    }

    /// The status report from this node's view. On the leader, `confirm` checks quorum.
    async fn status(&self, confirm: bool) -> ControlReply {
        let quorum = confirm
            && self
                .consensus
                .confirm_leadership(self.quorum_timeout())
                .await
                .is_ok();
        let raft = self.consensus.status();
        let state = self.consensus.state().await;
        let (spec, lock) = state
            .applied
            .as_ref()
            .map_or((&self.local.spec, &self.local.lock), |a| (&a.spec, &a.lock));
        let leader_name = raft
            .leader
            .and_then(|id| raft.members.get(&id).map(|p| p.name.clone()));
        let am_leader = raft.leader == Some(raft.id);
        let nodes = spec
            .nodes
            .iter()
            .map(|(name, n)| {
                let raft_id = lock.nodes.get(name).map(|e| e.raft_id);
                let contact = if raft_id == Some(raft.id) {
                    Some(0)
                } else if am_leader {
                    raft_id.and_then(|id| raft.last_contact_ms.get(&id).copied().flatten())
                } else {
                    None
                };
                let up = contact.is_some_and(|ms| ms <= self.down_after_ms());
                let state_name = match (up, state.admin.get(name)) {
                    (false, _) => "down",
                    (true, Some(AdminState::Draining)) => "draining",
                    (true, Some(AdminState::Maintenance)) => "maintenance",
                    (true, _) => "up",
                };
                let seen = if *name == self.name {
                    Some((
                        self.tls.get().not_after,
                        quorate_pki::ProtocolVersion::spoken(),
                    ))
                } else {
                    self.peer_certificates
                        .lock()
                        .ok()
                        .and_then(|seen| seen.get(name).copied())
                };
                let expires = seen.map(|(at, _)| at);
                NodeStatus {
                    name: name.clone(),
                    state: state_name.into(),
                    last_contact_ms: contact,
                    raft_id,
                    voter: n.voter,
                    certificate_expires: expires.map(quorate_pki::format_time),
                    certificate_days_left: expires.map(days_left),
                    protocol: seen.map(|(_, v)| v.to_string()),
                }
            })
            .collect();
        let blocklisted: Vec<String> = self
            .ceph_fencing
            .lock()
            .map(|f| f.blocklisted())
            .unwrap_or_default();
        let storage = spec
            .storage
            .iter()
            .map(|(name, s)| {
                let prefix = format!("{}{name}/", crate::runtime::STORAGE_REPORT);
                StorageStatus {
                    name: name.clone(),
                    kind: s.kind.name().into(),
                    replicas: s.nodes.clone(),
                    attached_on: spec
                        .services
                        .iter()
                        .filter(|(_, svc)| svc.storage.contains(name))
                        .find_map(|(svc, _)| {
                            let o = state.observed.get(svc)?;
                            (o.state == "running").then(|| o.node.clone())
                        }),
                    health: state
                        .observed
                        .iter()
                        .filter_map(|(key, o)| {
                            Some((key.strip_prefix(&prefix)?.to_owned(), o.state.clone()))
                        })
                        .collect(),
                    blocklisted: if matches!(
                        s.kind,
                        quorate_spec::StorageKind::CephRbd | quorate_spec::StorageKind::Cephfs
                    ) {
                        blocklisted.clone()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        let applied = state.applied.as_ref();
        ControlReply::Status(Box::new(StatusReport {
            cluster: spec.cluster.name.clone(),
            leader: leader_name,
            term: raft.term,
            quorum,
            spec_version: state.spec_version(),
            spec_hash: applied.map(|a| a.hash.clone()),
            commit_index: raft.committed,
            answered_by: self.name.clone(),
            raft_voters: raft.voters.values().map(|p| p.name.clone()).collect(),
            raft_membership_changing: !raft.membership_settled,
            raft_learners: raft
                .members
                .iter()
                .filter(|(id, _)| !raft.voters.contains_key(id))
                .map(|(_, p)| p.name.clone())
                .collect(),
            recent_events: state
                .events
                .iter()
                .rev()
                .take(8)
                .rev()
                .map(|e| format!("[{}] {}", e.by, e.what))
                .collect(),
            local_spec_differs: applied.is_some_and(|a| a.hash != self.local.hash),
            cluster_maintenance: state.cluster_maintenance,
            left_out: state.left_out.iter().cloned().collect(),
            wireguard: self.mesh_status().await,
            failovers: self.metrics.recent_failovers(),
            nodes,
            services: spec
                .services
                .keys()
                .map(|name| {
                    let assignment = state.placements.get(name);
                    let observed = state.observed.get(name);
                    let node = assignment.and_then(|a| a.node.clone());
                    // DESIGN's status vocabulary: a restart in place shows as starting.
                    let reported = |n: &str| {
                        observed.filter(|o| o.node == n).map(|o| {
                            if o.state == "restarting" {
                                "starting".to_string()
                            } else {
                                o.state.clone()
                            }
                        })
                    };
                    let status = match (&node, assignment) {
                        (Some(n), _) => reported(n).unwrap_or_else(|| "starting".into()),
                        (None, Some(a)) if a.reason.starts_with("unplaceable") => {
                            "unplaceable".into()
                        }
                        (None, _) if observed.is_some_and(quorate_state::Observed::may_run) => {
                            "stopping".into()
                        }
                        (None, _) if state.disabled.contains(name) => "disabled".into(),
                        (None, _) => "pending".into(),
                    };
                    quorate_api::ServiceStatus {
                        name: name.clone(),
                        node,
                        state: status,
                        pinned: state.pins.get(name).cloned(),
                        reason: assignment.map(|a| a.reason.clone()).unwrap_or_default(),
                        reported: observed.map(|o| format!("{}: {}", o.node, o.state)),
                    }
                })
                .collect(),
            storage,
        }))
    }

    /// On the leader: checks and commits a new spec + lock.
    async fn apply(
        &self,
        spec: Spec,
        lock: Lock,
        allow_destructive: bool,
        caller: &Caller,
    ) -> ControlReply {
        let errors: Vec<String> = quorate_spec::validate_spec(&spec)
            .into_iter()
            .filter(quorate_spec::Diagnostic::is_error)
            .map(|d| format!("  {}: {}", d.path, d.message))
            .collect();
        if !errors.is_empty() {
            return refused(
                1,
                format!(
                    "the spec is invalid; run `quorate check` for details:\n{}",
                    errors.join("\n")
                ),
            );
        }
        let state: ClusterState = self.consensus.state().await;
        let (previous_spec, previous_lock) = match &state.applied {
            Some(a) => (Some(&a.spec), Some(&a.lock)),
            None => (None, None),
        };
        if let Some(prev) = previous_spec {
            if prev.cluster.name != spec.cluster.name {
                return refused(
                    1,
                    format!(
                        "this is cluster `{}`, the spec is for `{}`; nothing was changed",
                        prev.cluster.name, spec.cluster.name
                    ),
                );
            }
        }
        // The submitted lock must be exactly what the cluster's lock becomes for this
        // spec: numbers are never renumbered behind the cluster's back.
        match quorate_lock::allocate(previous_lock, &spec) {
            Ok(a) if a.lock == lock => {}
            Ok(_) => {
                return refused(1, "the submitted lock does not continue the cluster's lock: its numbers differ from what the cluster allocated\n  help: start from the cluster's lock (the one committed with the applied spec), run `quorate lock`, and apply again")
            }
            Err(e) => return refused(1, format!("the lock cannot be extended for this spec: {e}")),
        }
        let plan = match quorate_plan::plan(previous_lock, previous_spec, &spec) {
            Ok(p) => p,
            Err(e) => return refused(1, e.to_string()),
        };
        let changes = serde_json::to_value(&plan.items).unwrap_or_default();
        if plan.is_destructive() && !allow_destructive {
            return ControlReply::Refused {
                exit_code: 3,
                message: format!("refused: the change is destructive; nothing was changed\n{plan}  help: review the lines marked DESTRUCTIVE; rerun with --allow-destructive to accept them"),
                changes,
            };
        }
        let command = Command::ApplySpec {
            spec: Box::new(spec),
            lock: Box::new(lock),
            by: caller.by(),
            at_ms: now_ms(),
        };
        match self.consensus.write(command, self.quorum_timeout()).await {
            Ok(CommandResult::Applied { version, hash }) => ControlReply::Applied { version, hash, unchanged: false, changes },
            Ok(CommandResult::Unchanged { version, hash }) => ControlReply::Applied { version, hash, unchanged: true, changes: json!([]) },
            Ok(CommandResult::None | CommandResult::Recorded) => refused(1, "unexpected empty result from the state machine"),
            Err(WriteError::NotLeader { leader }) => refused(
                4,
                format!("leadership moved to {} before applying; nothing was changed\n  help: retry", leader.map_or_else(|| "another node".to_string(), |(_, p)| p.name)),
            ),
            Err(e @ WriteError::NoQuorum(_)) => refused(4, format!("{e}\n  help: a majority of voters must be up and connected; check `quorate status`")),
            Err(e) => refused(4, e.to_string()),
        }
    }

    /// Copies what every node needs at hand from the applied spec: its timings, and
    /// its members (the only nodes whose messages are accepted). Before a spec is
    /// applied, the members are the local spec's nodes.
    pub async fn refresh_applied(&self) {
        let (timings, members, addresses) = self
            .consensus
            .with_state(|st| {
                let (spec, lock) = st
                    .applied
                    .as_ref()
                    .map_or((&self.local.spec, &self.local.lock), |a| (&a.spec, &a.lock));
                (
                    st.applied.as_ref().map(|a| a.spec.cluster.timings),
                    members(spec, lock),
                    spec.nodes
                        .keys()
                        .filter_map(|n| quorate_lock::cluster_address(spec, lock, n))
                        .collect(),
                )
            })
            .await;
        self.consensus.set_peers(members);
        self.known_addresses.set(addresses);
        if let Ok(mut t) = self.applied_timings.lock() {
            *t = timings;
        }
    }

    /// Leader duties, called periodically: bootstrap the spec from the local files when
    /// the cluster has none (DESIGN invariant 7's one exception), and bring Raft's voters
    /// in line with the applied spec, one change at a time.
    pub async fn leader_duties(&self) {
        self.metrics.saw_leader(self.consensus.status().leader);
        if !self.is_leader() {
            self.step_down();
            return;
        }
        self.schedule().await;
        if self.metrics.failovers_pending() {
            let running: Vec<(String, String)> = self
                .consensus
                .with_state(|st| {
                    st.observed
                        .iter()
                        .filter(|(_, o)| o.state == "running")
                        .map(|(s, o)| (s.clone(), o.node.clone()))
                        .collect()
                })
                .await;
            self.metrics
                .settle_failovers(|s, n| running.iter().any(|(rs, rn)| rs == s && rn == n));
        }
        let state = self.consensus.state().await;
        match &state.applied {
            None => {
                let command = Command::Bootstrap {
                    spec: Box::new(self.local.spec.clone()),
                    lock: Box::new(self.local.lock.clone()),
                    by: self.name.clone(),
                    at_ms: now_ms(),
                };
                match self.consensus.write(command, self.quorum_timeout()).await {
                    Ok(r) => tracing::info!("bootstrap: {r:?}"),
                    Err(e) => tracing::debug!("bootstrap not yet possible: {e}"),
                }
            }
            Some(_) => {
                let wanted = wanted_voters(&state);
                let learners = wanted_learners(&state);
                let status = self.consensus.status();
                let members_ok = status
                    .members
                    .keys()
                    .all(|id| wanted.contains_key(id) || learners.contains_key(id))
                    && learners.keys().all(|id| status.members.contains_key(id));
                if wanted.keys().eq(status.voters.keys()) && members_ok {
                    return;
                }
                // Decide on everything committed so far: a leader just elected may
                // not have applied its predecessor's last entries (a forced recovery's
                // left-out voters among them), and a wrong membership change would
                // need a majority that is gone.
                if self
                    .consensus
                    .confirm_leadership(self.quorum_timeout())
                    .await
                    .is_err()
                {
                    return;
                }
                let (wanted, learners) = self
                    .consensus
                    .with_state(|st| (wanted_voters(st), wanted_learners(st)))
                    .await;
                match self
                    .consensus
                    .set_voters(&wanted, &learners, self.quorum_timeout())
                    .await
                {
                    Ok(true) => tracing::info!(
                        "voters changed to {:?}",
                        wanted.values().map(|p| &p.name).collect::<Vec<_>>()
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("cannot change voters yet: {e}"),
                }
            }
        }
    }
}

/// What agents say to each other besides Raft.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "peer_message", rename_all = "snake_case")]
pub enum PeerMessage {
    /// A control request forwarded to the leader, with the local user who asked on the
    /// forwarding node (the node itself is named by its certificate).
    Control {
        /// The request.
        request: ControlRequest,
        /// The user on the forwarding node.
        #[serde(default)]
        user: Option<String>,
    },
    /// "Do you have Raft state?" — asked by a fresh node before it initializes.
    Probe,
    /// "Renew my lease": the sender (named by its certificate) asks the leader.
    RenewLease,
    /// "How long ago did you last hear from a leader of a term before `term`?" —
    /// asked by the new leader of `term` (crate::handover). Answered only by a node
    /// whose own term is `term`.
    LeaseBound {
        /// The asker's term.
        term: u64,
    },
    /// Service states of the sender, for the leader to commit.
    Observe {
        /// Service → state.
        services: BTreeMap<String, String>,
        /// Service → the placement epoch the sender had applied.
        #[serde(default)]
        epochs: BTreeMap<String, u64>,
    },
}

/// Answers [`PeerMessage`]s.
#[derive(Debug)]
pub struct PeerApp(pub std::sync::Arc<Node>);

impl quorate_consensus::AppHandler for PeerApp {
    async fn handle(
        &self,
        peer: String,
        class: AppClass,
        request: serde_json::Value,
    ) -> serde_json::Value {
        let message = serde_json::from_value::<PeerMessage>(request);
        // Each message travels as its own frame kind, held to that kind's size limit.
        let expected = match &message {
            Ok(PeerMessage::Control { .. }) => AppClass::Control,
            _ => AppClass::Report,
        };
        if class != expected {
            return serde_json::to_value(refused(
                1,
                "this peer message was sent as the wrong frame kind",
            ))
            .unwrap_or_default();
        }
        match message {
            Ok(PeerMessage::Control { request, user }) => {
                tracing::debug!(peer, "forwarded control request");
                let caller = Caller {
                    node: peer,
                    user,
                    forwarded: true,
                };
                serde_json::to_value(self.0.handle(request, &caller).await).unwrap_or_default()
            }
            Ok(PeerMessage::Probe) => json!({ "has_state": self.0.consensus.has_state().await }),
            // The lease and the reports are the sender's own: its name comes from its
            // certificate, never from the message.
            Ok(PeerMessage::RenewLease) => match self.0.grant_lease(&peer).await {
                Some(grant) => json!({
                    "ok": true,
                    "applied": grant.applied,
                    "ttl_ms": u64::try_from(grant.ttl.as_millis()).unwrap_or(u64::MAX),
                }),
                None => json!({ "ok": false }),
            },
            Ok(PeerMessage::LeaseBound { term }) => self.0.answer_lease_bound(term),
            Ok(PeerMessage::Observe { services, epochs }) => {
                json!({ "ok": self.0.record_observed(&peer, services, epochs).await })
            }
            Err(e) => serde_json::to_value(refused(1, format!("bad peer message: {e}")))
                .unwrap_or_default(),
        }
    }

    fn connected(&self, identity: &quorate_pki::PeerIdentity) {
        if let Ok(mut seen) = self.0.peer_certificates.lock() {
            seen.insert(
                identity.node.clone(),
                (identity.not_after, identity.protocol),
            );
        }
    }
}

impl Node {
    /// True when any other node of the local spec answers that it has Raft state,
    /// i.e. the cluster already exists and this node must wait to be added.
    pub async fn cluster_exists(&self) -> bool {
        for name in self.local.spec.nodes.keys() {
            if *name == self.name {
                continue;
            }
            let Some(addr) = crate::setup::peer_addr(&self.local.spec, &self.local.lock, name)
            else {
                continue;
            };
            match self.probe(name, addr).await {
                crate::recovery::ProbeAnswer::Answered { has_state: true } => return true,
                // A peer that refuses this node has a spec without it: the cluster
                // exists, and this node must wait until a spec that has it is applied.
                crate::recovery::ProbeAnswer::NotMember(why) => {
                    tracing::info!(peer = name, "{why}");
                    return true;
                }
                _ => {}
            }
        }
        false
    }
}
