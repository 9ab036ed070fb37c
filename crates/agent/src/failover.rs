//! Leases and relocation, the leader's side and the follower's side.
//!
//! **Safety rule (DESIGN invariant 1):** the leader assigns a service to a node only
//! when no other node may still run it: the previous holder reported it stopped, or
//! that holder's lease has surely expired — `last renewal acknowledged + TTL + drift
//! margin` on the leader's own clock. A new leader does not know its predecessors'
//! grants: it waits until a majority of voters bounded them (crate::handover) + the
//! drift margin, or a full TTL + drift margin from its election, whichever is first. A move between
//! two live nodes is therefore two steps: stop on the old node, then (after its
//! report) start on the new one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quorate_consensus::Command;
use quorate_scheduler::{place, Input, NodeState};
use quorate_state::AdminState;

use crate::cluster::PeerMessage;
use crate::Node;

/// The applied spec, or why there is none yet.
fn applied_spec(st: &quorate_consensus::ClusterState) -> Result<&quorate_spec::Spec, String> {
    st.applied
        .as_ref()
        .map(|a| &a.spec)
        .ok_or_else(|| "the cluster has no spec yet".to_string())
}

/// `service` is one of `spec`'s, or an error naming the ones there are.
fn known_service(spec: &quorate_spec::Spec, service: &str) -> Result<(), String> {
    if spec.services.contains_key(service) {
        return Ok(());
    }
    Err(format!(
        "no service `{service}` in the applied spec (services: {:?})",
        spec.services.keys().collect::<Vec<_>>()
    ))
}

/// `node` is one of `spec`'s, or an error naming the ones there are.
fn known_node(spec: &quorate_spec::Spec, node: &str) -> Result<(), String> {
    if spec.nodes.contains_key(node) {
        return Ok(());
    }
    Err(format!(
        "no node `{node}` (nodes: {:?})",
        spec.nodes.keys().collect::<Vec<_>>()
    ))
}

/// `service` (and `node`, when given) exist in the applied spec.
fn check_names(
    st: &quorate_consensus::ClusterState,
    service: &str,
    node: Option<&str>,
) -> Result<(), String> {
    let spec = applied_spec(st)?;
    known_service(spec, service)?;
    node.map_or(Ok(()), |n| known_node(spec, n))
}

/// The operators' runtime decisions in force now: disabled services, unexpired bans.
fn constraints(st: &quorate_consensus::ClusterState) -> quorate_scheduler::Constraints {
    quorate_scheduler::Constraints {
        disabled: st.disabled.clone(),
        banned: st.active_bans(now_ms()),
    }
}

/// The fence command's argv and environment, secrets filled in.
type FenceInvocation = (Vec<String>, Vec<(String, String)>);

/// The fence command's argv with every `{secret:PATH}` replaced by the file's content
/// (without its final newline), and the environment from `environment_file`
/// (`KEY=VALUE` lines; blank lines and `#` comments skipped). Errors name the file,
/// never its content.
fn fence_invocation(
    argv: &[String],
    environment_file: Option<&str>,
) -> Result<FenceInvocation, String> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the secret file {path}: {e}"))
    };
    let mut expanded = Vec::with_capacity(argv.len());
    for arg in argv {
        let mut arg = arg.clone();
        for path in quorate_spec::validate::secret_paths(&arg.clone()) {
            let secret = read(path)?;
            let secret = secret.strip_suffix('\n').unwrap_or(&secret);
            arg = arg.replace(&format!("{{secret:{path}}}"), secret);
        }
        expanded.push(arg);
    }
    let mut env = Vec::new();
    if let Some(path) = environment_file {
        for (n, line) in read(path)?.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("{path}:{}: not a KEY=VALUE line", n + 1));
            };
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            env.push((key.trim().to_string(), value.to_string()));
        }
    }
    Ok((expanded, env))
}

/// How long a fenced node stays on Ceph's blocklist unless it rejoins cleanly first:
/// far longer than any lease.
const CEPH_BLOCKLIST_EXPIRY: Duration = Duration::from_secs(3600);

/// True when `service` uses Ceph storage (RBD or CephFS).
fn uses_ceph(spec: &quorate_spec::Spec, service: &str) -> bool {
    spec.services.get(service).is_some_and(|svc| {
        svc.storage.iter().any(|name| {
            spec.storage.get(name).is_some_and(|st| {
                matches!(
                    st.kind,
                    quorate_spec::StorageKind::CephRbd | quorate_spec::StorageKind::Cephfs
                )
            })
        })
    })
}

/// The distinct Ceph clusters (config, keyring, client) the spec's storage uses.
fn ceph_clusters(spec: &quorate_spec::Spec) -> Vec<quorate_drivers::CephAccess> {
    let mut out: Vec<quorate_drivers::CephAccess> = Vec::new();
    for st in spec.storage.values().filter(|st| {
        matches!(
            st.kind,
            quorate_spec::StorageKind::CephRbd | quorate_spec::StorageKind::Cephfs
        )
    }) {
        let access = crate::runtime::ceph_access(st);
        if !out.contains(&access) {
            out.push(access);
        }
    }
    out
}

/// One kind of fencing the leader does before services leave a down node: which
/// nodes are fenced (with what this kind remembers about each), which attempts run,
/// when the last one failed per node (retried 5 s later), and the outcomes not yet
/// alerted. Power fencing and Ceph blocklisting both keep one.
#[derive(Debug)]
pub struct FencingLedger<D> {
    /// Nodes fenced, with what was done to them.
    done: BTreeMap<String, D>,
    /// Nodes whose fencing runs now.
    running: std::collections::BTreeSet<String>,
    /// When a node's last attempt failed.
    failed: BTreeMap<String, Instant>,
    /// Outcomes not yet alerted: (node, what happened).
    outcomes: Vec<(String, String)>,
}

impl<D> Default for FencingLedger<D> {
    fn default() -> Self {
        Self {
            done: BTreeMap::new(),
            running: std::collections::BTreeSet::new(),
            failed: BTreeMap::new(),
            outcomes: Vec::new(),
        }
    }
}

impl<D> FencingLedger<D> {
    /// How long after a failed attempt the next one may start.
    const RETRY: Duration = Duration::from_secs(5);

    /// Claims an attempt for `node`: false when it is fenced already, an attempt runs,
    /// or the last one failed less than [`Self::RETRY`] ago.
    fn begin(&mut self, node: &str) -> bool {
        if self.running.contains(node)
            || self.done.contains_key(node)
            || self
                .failed
                .get(node)
                .is_some_and(|t| t.elapsed() < Self::RETRY)
        {
            return false;
        }
        self.running.insert(node.to_owned())
    }

    /// Whether `node` is fenced.
    fn is_done(&self, node: &str) -> bool {
        self.done.contains_key(node)
    }

    /// Ends `node`'s attempt: fenced with `detail`, or failed; `outcome` is alerted.
    fn finish(&mut self, node: &str, result: Option<D>, outcome: String) {
        self.running.remove(node);
        match result {
            Some(detail) => {
                self.done.insert(node.to_owned(), detail);
            }
            None => {
                self.failed.insert(node.to_owned(), Instant::now());
            }
        }
        self.note(node, outcome);
    }

    /// An outcome to alert; kept bounded when nobody drains them.
    fn note(&mut self, node: &str, outcome: String) {
        self.outcomes.push((node.to_owned(), outcome));
        let excess = self.outcomes.len().saturating_sub(100);
        self.outcomes.drain(..excess);
    }

    /// The outcomes not yet alerted, taken.
    pub(crate) fn take_outcomes(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.outcomes)
    }
}

/// Ceph blocklisting done by this leader (storage-level fencing): a down node that
/// may hold a Ceph-backed service is blocklisted before the service moves. Each
/// fenced node keeps the address blocklisted and the clusters it is blocklisted on.
#[derive(Debug, Default)]
pub struct CephFencing {
    pub(crate) ledger: FencingLedger<(String, Vec<quorate_drivers::CephAccess>)>,
    /// Nodes whose entry is being removed.
    removing: std::collections::BTreeSet<String>,
    /// When removing a node's entry last failed (retried after 30 s).
    remove_failed: BTreeMap<String, Instant>,
}

impl CephFencing {
    /// The entries in place: `NODE ADDRESS:0/0`.
    pub(crate) fn blocklisted(&self) -> Vec<String> {
        self.ledger
            .done
            .iter()
            .map(|(node, (address, _))| format!("{node} {address}:0/0"))
            .collect()
    }
}

/// Runs of the spec's `fence_command` (power fencing), on the leader: nodes fenced
/// since they went down (forgotten when a node is up again).
pub type PowerFencing = FencingLedger<()>;

/// The leader's view of everyone's lease. Lives in the leader's memory only, and
/// belongs to one term: a table from an earlier term (this node led, lost and won
/// again) is forgotten, since other leaders may have granted leases in between.
#[derive(Debug, Default)]
pub struct LeaseTable {
    /// When each node's lease ends at the latest on this node's clock: the latest
    /// acknowledgement + the TTL it was granted (never earlier than an earlier
    /// grant's end, should the TTL have shrunk).
    ends: BTreeMap<String, Instant>,
    /// When this node became leader (None while it is not).
    leader_since: Option<Instant>,
    /// The term the acknowledgements belong to.
    pub(crate) term: u64,
    /// When every lease granted by an earlier leader has ended, once a majority of
    /// voters answered (crate::handover).
    pub(crate) predecessors_end: Option<Instant>,
    /// When the voters were last asked for that bound.
    pub(crate) bound_asked: Option<Instant>,
    /// Nodes the scheduler counted down in a decision it has not proposed yet: their
    /// renewals wait (see `Node::grant_lease`).
    deciding: std::collections::BTreeSet<String>,
    /// The earliest moment a node now counted alive would be counted down, as of the
    /// last look: the scheduler wakes then rather than at its next tick.
    next_down: Option<Instant>,
}

impl LeaseTable {
    /// Forgets acknowledgements (and the predecessors' bound) of another term than
    /// `term`.
    pub(crate) fn for_term(&mut self, term: u64) -> &mut Self {
        if self.term != term {
            self.forget();
            self.term = term;
        }
        self
    }

    /// Forgets everything learnt as leader.
    fn forget(&mut self) {
        self.deciding.clear();
        self.next_down = None;
        self.ends.clear();
        self.leader_since = None;
        self.predecessors_end = None;
        self.bound_asked = None;
    }
}

/// A lease as the leader grants it: the index the holder must have applied before it
/// acts, and the TTL from the applied spec (never the holder's local file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The leader's applied index.
    pub applied: u64,
    /// The lease's time to live, counted by the holder from when it asked.
    pub ttl: Duration,
}

/// `QUORATE_TEST_SLOW_PLACEMENT_MS` (tests only, never in the spec): how long the
/// scheduler waits between deciding placements and committing them, to show that no
/// lease granted in between lets a node act on the older view.
fn test_placement_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("QUORATE_TEST_SLOW_PLACEMENT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

impl Node {
    /// The lease TTL of the applied spec (the local file's before bootstrap). Used for
    /// round-trip budgets; grants and expiries take theirs from the applied spec.
    fn lease_ttl(&self) -> Duration {
        self.applied_timings().map_or_else(
            || self.local.spec.cluster.timings.lease_ttl.get(),
            |t| t.lease_ttl.get(),
        )
    }

    /// The applied spec's timings, once there is one.
    pub(crate) fn applied_timings(&self) -> Option<quorate_spec::Timings> {
        self.applied_timings.lock().ok().and_then(|t| *t)
    }

    /// On the leader: acknowledges a renewal from `node` once a majority confirms this
    /// node still leads (so a deposed leader cannot extend anyone's lease). Returns the
    /// leader's last log index: the holder may act on its assignments only once its own
    /// state has applied that far, so a node waking from a pause cannot start work from
    /// a stale view with a fresh lease — not even from a view that misses a placement
    /// the leader proposed but has not committed yet.
    pub(crate) async fn grant_lease(&self, node: &str) -> Option<LeaseGrant> {
        if !self.is_leader() {
            return None;
        }
        // The holder's deadline runs from when it asked, before this moment: the
        // lease ends at `arrived + ttl` at the latest, however long the confirmation.
        let arrived = Instant::now();
        // Only under an applied spec: its TTL is the one every node fences by.
        let ttl = self.applied_timings()?.lease_ttl.get();
        let term = self.consensus.status().term;
        // Before the confirmation: if this node answers a later leader's question
        // (crate::handover) after this point, the answer covers this grant.
        self.consensus.note_leader_heard(term);
        // Confirmed by the next regular heartbeat round (sent after this point): all
        // renewals arriving within one heartbeat interval share it.
        if self
            .consensus
            .confirm_leadership_with_next_heartbeat(ttl / 3)
            .await
            .is_err()
        {
            return None;
        }
        // A node the scheduler counted down in a decision it has not proposed yet gets
        // no lease until the proposal is in the log: the index below must cover it.
        // Every other node renews meanwhile (a slow commit must not let every lease
        // in the cluster run out).
        let waited = tokio::time::timeout(ttl / 3, async {
            loop {
                let released = self.decision_done.notified();
                let undecided = self.leases.lock().is_ok_and(|t| t.deciding.contains(node));
                if !undecided {
                    break;
                }
                released.await;
            }
        })
        .await;
        if waited.is_err() {
            return None;
        }
        // Checked and recorded under the table's lock, which the scheduler holds while
        // it reads the node states: either it saw this renewal, or this index covers
        // what it proposes.
        let mut t = self.leases.lock().ok()?;
        let status = self.consensus.status();
        if status.term != term || t.deciding.contains(node) {
            return None;
        }
        let end = arrived + ttl;
        let ends = &mut t.for_term(term).ends;
        let latest = ends.get(node).map_or(end, |e| (*e).max(end));
        ends.insert(node.to_string(), latest);
        Some(LeaseGrant {
            applied: status.last_log.unwrap_or(0),
            ttl,
        })
    }

    /// On any node: asks the leader to renew this node's lease; returns the grant (the
    /// index this node must have applied before it may start anything under the new
    /// lease, and the TTL to count from the moment it asked).
    pub(crate) async fn renew_lease(&self) -> Option<LeaseGrant> {
        if self.is_leader() {
            return self.grant_lease(&self.name).await;
        }
        let (leader_id, leader) = self.consensus.leader()?;
        let call = self.call_peer(
            "lease",
            &leader,
            &PeerMessage::RenewLease,
            self.lease_ttl() / 3,
        );
        // A leader that died can hold this call for the whole connect budget (2 s):
        // give up on it as soon as Raft names another leader (or none), so that the
        // renewal goes to the new one, or to this node when it won.
        let leader_moved = async {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if self.consensus.leader().map(|(id, _)| id) != Some(leader_id) {
                    break;
                }
            }
        };
        let reply = tokio::select! {
            reply = call => reply.ok()?,
            () = leader_moved => return None,
        };
        if reply["ok"] != true {
            return None;
        }
        // A leader that does not say the TTL (an older version) is not trusted with
        // this node's lease.
        Some(LeaseGrant {
            applied: reply["applied"].as_u64().unwrap_or(u64::MAX),
            ttl: Duration::from_millis(reply["ttl_ms"].as_u64()?),
        })
    }

    /// On the leader: commits service states reported by `node`.
    pub(crate) async fn record_observed(
        &self,
        node: &str,
        services: BTreeMap<String, String>,
        epochs: BTreeMap<String, u64>,
    ) -> bool {
        if !self.is_leader() {
            return false;
        }
        // Only what the node may report reaches the Raft log (the state machine
        // filters again, deterministically).
        let (mut services, mut epochs) = (services, epochs);
        let before = services.len();
        self.consensus
            .with_state(|st| services.retain(|key, state| st.report_is_valid(node, key, state)))
            .await;
        epochs.retain(|key, _| services.contains_key(key));
        if services.len() < before {
            tracing::warn!(
                peer = node,
                dropped = before - services.len(),
                "dropped reports about services or storage the applied spec does not have"
            );
        }
        if services.is_empty() {
            return true;
        }
        let command = Command::Observe {
            node: node.to_string(),
            services,
            epochs,
            at_ms: now_ms(),
        };
        self.consensus
            .write(command, self.lease_ttl())
            .await
            .is_ok()
    }

    /// On any node: sends this node's service states to the leader.
    pub(crate) async fn observe(&self, services: BTreeMap<String, String>) -> bool {
        // Each report says which placement it answers: the epoch of the service's
        // placement as this node has applied it now.
        let epochs: BTreeMap<String, u64> = self
            .consensus
            .with_state(|st| {
                services
                    .keys()
                    .filter_map(|s| Some((s.clone(), st.placements.get(s)?.epoch)))
                    .collect()
            })
            .await;
        if self.is_leader() {
            return self.record_observed(&self.name, services, epochs).await;
        }
        let Some((_, leader)) = self.consensus.leader() else {
            return false;
        };
        let reply = self
            .call_peer(
                "observe",
                &leader,
                &PeerMessage::Observe { services, epochs },
                self.lease_ttl(),
            )
            .await;
        reply.is_ok_and(|v| v["ok"] == true)
    }

    /// The leader's view of each node, for the scheduler: down only when its lease has
    /// surely expired.
    pub(crate) fn node_states(
        &self,
        spec: &quorate_spec::Spec,
        admin: &BTreeMap<String, AdminState>,
    ) -> BTreeMap<String, NodeState> {
        self.states_of_nodes(spec, admin, false)
    }

    /// [`node_states`](Self::node_states) for a decision of the scheduler: the nodes
    /// counted down are held in `deciding` (no lease for them) until the decision is
    /// proposed ([`Self::decision_proposed`]).
    fn node_states_for_decision(
        &self,
        spec: &quorate_spec::Spec,
        admin: &BTreeMap<String, AdminState>,
    ) -> BTreeMap<String, NodeState> {
        self.states_of_nodes(spec, admin, true)
    }

    /// The scheduler's decision is in the log (or was given up): renewals of the nodes
    /// it counted down go ahead, with an index that covers it.
    fn decision_proposed(&self) {
        if let Ok(mut t) = self.leases.lock() {
            t.deciding.clear();
        }
        self.decision_done.notify_waiters();
    }

    fn states_of_nodes(
        &self,
        spec: &quorate_spec::Spec,
        admin: &BTreeMap<String, AdminState>,
        deciding: bool,
    ) -> BTreeMap<String, NodeState> {
        // `spec` is the applied one: its timings are the ones leases were granted by.
        let (ttl, drift) = (
            spec.cluster.timings.lease_ttl.get(),
            spec.cluster.timings.drift_margin.get(),
        );
        let term = self.consensus.status().term;
        let Ok(mut table) = self.leases.lock() else {
            return BTreeMap::new();
        };
        let table = table.for_term(term);
        let since = *table.leader_since.get_or_insert_with(Instant::now);
        let in_grace =
            crate::lease_rules::in_grace(Instant::now(), since, table.predecessors_end, ttl, drift);
        // When the grace ends, once it is known (else its upper bound).
        let grace_end = (since + ttl + drift).min(
            table
                .predecessors_end
                .map_or(since + ttl + drift, |end| end + drift),
        );
        let mut next_down: Option<Instant> = None;
        let states: BTreeMap<String, NodeState> = spec
            .nodes
            .keys()
            .map(|name| {
                let lease_end = table.ends.get(name).map(|end| *end + drift);
                let alive = *name == self.name
                    || in_grace
                    || lease_end.is_some_and(|end| Instant::now() <= end);
                if alive && *name != self.name {
                    // The moment this node would be counted down if nothing renews.
                    let at = lease_end.map_or(grace_end, |end| {
                        if in_grace {
                            end.max(grace_end)
                        } else {
                            end
                        }
                    });
                    next_down = Some(next_down.map_or(at, |n| n.min(at)));
                }
                let state = match (alive, admin.get(name)) {
                    (false, _) => NodeState::Down,
                    (true, Some(AdminState::Draining)) => NodeState::Draining,
                    (true, Some(AdminState::Maintenance)) => NodeState::Maintenance,
                    (true, _) => NodeState::Up,
                };
                (name.clone(), state)
            })
            .collect();
        table.next_down = next_down;
        if deciding {
            table.deciding = states
                .iter()
                .filter(|(_, s)| **s == NodeState::Down)
                .map(|(n, _)| n.clone())
                .collect();
        }
        states
    }

    /// How long the leader's duties may pause: their usual tick (50 ms), or less when a
    /// node is due to be counted down sooner (1 ms after that moment), so that a
    /// failover does not wait for the next tick.
    pub(crate) fn duties_pause(&self) -> Duration {
        let tick = Duration::from_millis(50);
        let Some(at) = self.leases.lock().ok().and_then(|t| t.next_down) else {
            return tick;
        };
        let now = Instant::now();
        if at < now {
            return tick;
        }
        (at - now + Duration::from_millis(1)).min(tick)
    }

    /// Called when this node is not the leader: forget the lease table.
    pub(crate) fn step_down(&self) {
        if let Ok(mut t) = self.leases.lock() {
            t.forget();
        }
    }

    /// Forgets power fencing done for nodes that are up again: their next failure
    /// runs the fence command again.
    fn forget_fencing_of_live_nodes(&self, states: &BTreeMap<String, NodeState>) {
        if let Ok(mut f) = self.power_fencing.lock() {
            f.done
                .retain(|n, ()| states.get(n).is_none_or(|s| *s == NodeState::Down));
        }
    }

    /// True when relocating away from `node` may proceed: no fence command is
    /// configured, or it has succeeded since the node went down.
    fn fenced(&self, spec: &quorate_spec::Spec, node: &str) -> bool {
        spec.cluster.fence_command.is_empty()
            || self.power_fencing.lock().is_ok_and(|f| f.is_done(node))
    }

    /// Starts the fence command for `node` unless it runs or failed less than 5 s ago.
    fn start_power_fencing(&self, spec: &quorate_spec::Spec, node: &str) {
        if !self.power_fencing.lock().is_ok_and(|mut f| f.begin(node)) {
            return;
        }
        let address = spec
            .nodes
            .get(node)
            .map(|n| n.address.to_string())
            .unwrap_or_default();
        // What is logged keeps `{secret:PATH}` as it is; secrets are read only for the
        // command's own argv and environment.
        let shown: Vec<String> = spec
            .cluster
            .fence_command
            .iter()
            .map(|a| a.replace("{node}", node).replace("{address}", &address))
            .collect();
        let environment_file = spec.cluster.fence_environment_file.clone();
        let (log, node) = (self.power_fencing.clone(), node.to_string());
        let count = self.metrics.power_fenced();
        tokio::spawn(async move {
            tracing::warn!(
                node,
                "running fence_command {shown:?} before relocating its services"
            );
            let result = match fence_invocation(&shown, environment_file.as_deref()) {
                Ok((argv, env)) => match argv.split_first() {
                    Some((program, args)) => tokio::time::timeout(
                        Duration::from_secs(60),
                        quorate_drivers::without_service_manager_env(
                            &mut tokio::process::Command::new(program),
                        )
                        .args(args)
                        .envs(env)
                        .kill_on_drop(true)
                        .status(),
                    )
                    .await
                    .map_err(|_| "timed out after 60 s".to_string())
                    .and_then(|r| r.map_err(|e| format!("cannot run it: {e}"))),
                    None => return,
                },
                Err(e) => Err(e),
            };
            let ok = matches!(&result, Ok(status) if status.success());
            count(&node, ok);
            if let Ok(mut f) = log.lock() {
                if ok {
                    tracing::warn!(node, "fence_command succeeded: its services may move");
                    let outcome = format!(
                        "{node} was power-fenced (fence_command succeeded): its services may move"
                    );
                    f.finish(&node, Some(()), outcome);
                } else {
                    tracing::error!(
                        node,
                        "fence_command failed ({result:?}): its services stay put; retrying in 5 s"
                    );
                    let outcome = format!("fence_command for {node} failed ({result:?}): its services stay put; retrying in 5 s");
                    f.finish(&node, None, outcome);
                }
            }
        });
    }

    /// True when `node` is on the blocklist of every Ceph cluster the spec uses.
    fn ceph_fenced(&self, node: &str) -> bool {
        self.ceph_fencing
            .lock()
            .is_ok_and(|f| f.ledger.is_done(node))
    }

    /// Adds `node`'s storage address to the OSD blocklist of every Ceph cluster the
    /// spec uses (unless that runs, or failed less than 5 s ago); its Ceph-backed
    /// services move once it succeeded.
    fn start_ceph_fencing(&self, spec: &quorate_spec::Spec, node: &str) {
        let Some(address) = spec
            .nodes
            .get(node)
            .map(|n| n.storage_address.unwrap_or(n.address).to_string())
        else {
            return;
        };
        if !self
            .ceph_fencing
            .lock()
            .is_ok_and(|mut f| f.ledger.begin(node))
        {
            return;
        }
        let clusters = ceph_clusters(spec);
        let (log, node) = (self.ceph_fencing.clone(), node.to_string());
        tokio::spawn(async move {
            let runner = quorate_drivers::SystemRunner;
            let mut result = Ok(());
            for access in &clusters {
                if let Err(e) =
                    quorate_drivers::blocklist(&runner, access, &address, CEPH_BLOCKLIST_EXPIRY)
                        .await
                {
                    result = Err(e.to_string());
                    break;
                }
            }
            if let Ok(mut f) = log.lock() {
                match result {
                    Ok(()) => {
                        tracing::warn!(
                            node,
                            address,
                            "blocklisted on Ceph before relocating its services"
                        );
                        let outcome = format!("{node} ({address}) added to the Ceph OSD blocklist: its Ceph-backed services may move");
                        f.ledger.finish(&node, Some((address, clusters)), outcome);
                    }
                    Err(e) => {
                        tracing::error!(node, "Ceph blocklisting failed ({e}): its Ceph-backed services stay put; retrying in 5 s");
                        let outcome = format!("blocklisting {node} on Ceph failed ({e}): its Ceph-backed services stay put; retrying in 5 s");
                        f.ledger.finish(&node, None, outcome);
                    }
                }
            }
        });
    }

    /// Removes the blocklist entries of nodes that rejoined cleanly: up again, and
    /// running none of the Ceph-backed services (what it ran was stopped and its
    /// storage detached before it reported so).
    fn unblocklist_rejoined(
        &self,
        spec: &quorate_spec::Spec,
        st: &quorate_consensus::ClusterState,
        states: &BTreeMap<String, NodeState>,
    ) {
        let Ok(mut f) = self.ceph_fencing.lock() else {
            return;
        };
        let clean: Vec<String> = f
            .ledger
            .done
            .keys()
            .filter(|n| states.get(*n).is_some_and(|s| *s != NodeState::Down))
            .filter(|n| !f.removing.contains(*n))
            .filter(|n| {
                f.remove_failed
                    .get(*n)
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(30))
            })
            .filter(|n| {
                !st.observed
                    .iter()
                    .any(|(service, o)| o.node == **n && o.may_run() && uses_ceph(spec, service))
            })
            .cloned()
            .collect();
        for node in clean {
            let Some((address, clusters)) = f.ledger.done.get(&node).cloned() else {
                continue;
            };
            f.removing.insert(node.clone());
            let log = self.ceph_fencing.clone();
            tokio::spawn(async move {
                let runner = quorate_drivers::SystemRunner;
                let mut result = Ok(());
                for access in &clusters {
                    if let Err(e) = quorate_drivers::unblocklist(&runner, access, &address).await {
                        result = Err(e.to_string());
                    }
                }
                if let Ok(mut f) = log.lock() {
                    f.removing.remove(&node);
                    match result {
                        Ok(()) => {
                            f.ledger.done.remove(&node);
                            f.ledger.note(
                                &node,
                                format!("{node} rejoined cleanly: {address} removed from the Ceph OSD blocklist"),
                            );
                        }
                        Err(e) => {
                            tracing::warn!(
                                node,
                                "cannot remove {address} from the Ceph blocklist yet (retrying in 30 s): {e}"
                            );
                            f.remove_failed.insert(node, Instant::now());
                        }
                    }
                }
            });
        }
    }

    /// On the leader: nodes where each service recently failed for good (its restart
    /// budget spent there), remembered for the service's restart window.
    pub(crate) fn recent_failures(
        &self,
        spec: &quorate_spec::Spec,
        st: &quorate_consensus::ClusterState,
    ) -> BTreeMap<String, std::collections::BTreeSet<String>> {
        let Ok(mut log) = self.failures.lock() else {
            return BTreeMap::new();
        };
        for (service, o) in &st.observed {
            let assigned_there =
                st.placements.get(service).and_then(|a| a.node.as_deref()) == Some(o.node.as_str());
            if o.state == "failed" && assigned_there {
                log.entry(service.clone())
                    .or_default()
                    .entry(o.node.clone())
                    .or_insert_with(Instant::now);
            }
        }
        log.retain(|service, nodes| {
            let window = spec
                .services
                .get(service)
                .map_or(Duration::ZERO, |s| s.restart.window.get());
            nodes.retain(|_, since| since.elapsed() < window);
            !nodes.is_empty()
        });
        log.iter()
            .map(|(s, nodes)| (s.clone(), nodes.keys().cloned().collect()))
            .collect()
    }

    /// On the leader: runs the scheduler and commits the changes it may make now.
    pub(crate) async fn schedule(&self) {
        let proposal = self
            .consensus
            .with_state(|st| {
                let applied = st.applied.as_ref()?;
                let spec = &applied.spec;
                let states = self.node_states_for_decision(spec, &st.admin);
                self.forget_fencing_of_live_nodes(&states);
                let current: BTreeMap<String, String> = st.placements.iter().filter_map(|(s, a)| a.node.clone().map(|n| (s.clone(), n))).collect();
                let failed = self.recent_failures(spec, st);
                if st.cluster_maintenance {
                    // Everything keeps running where it is; nothing is placed or moved.
                    return None;
                }
                let mut constraints = constraints(st);
                // A node still on Ceph's blocklist cannot run a Ceph-backed service: its
                // client would be refused. Kept off it until it rejoined cleanly.
                let blocklisted: Vec<String> = self
                    .ceph_fencing
                    .lock()
                    .map(|f| f.ledger.done.keys().cloned().collect())
                    .unwrap_or_default();
                if !blocklisted.is_empty() {
                    for service in spec.services.keys().filter(|s| uses_ceph(spec, s)) {
                        constraints
                            .banned
                            .entry(service.clone())
                            .or_default()
                            .extend(blocklisted.iter().cloned());
                    }
                }
                let placements = place(&Input { spec, nodes: &states, current: &current, pins: &st.pins, failed: &failed, constraints: &constraints });
                let mut changes: BTreeMap<String, (Option<String>, String)> = BTreeMap::new();
                // Moves away from a down node: (service, old holder, new holder).
                let mut failovers: Vec<(String, String, String)> = Vec::new();
                let mut needs_fence: Vec<String> = Vec::new();
                let mut needs_ceph_fence: Vec<String> = Vec::new();
                self.unblocklist_rejoined(spec, st, &states);
                for (service, p) in &placements {
                    let now = st.placements.get(service).and_then(|a| a.node.clone());
                    if now == p.node {
                        if now.is_none() && st.placements.get(service).is_none_or(|a| a.reason != p.reason) {
                            changes.insert(service.clone(), (None, p.reason.clone()));
                        }
                        continue;
                    }
                    match (&now, &p.node) {
                        // Leaving a node that may still run it: stop there first.
                        (Some(old), Some(new)) if states.get(old) != Some(&NodeState::Down) => {
                            changes.insert(service.clone(), (None, format!("stopping on {old} before it moves to {new}: {}", p.reason)));
                        }
                        (_, Some(new)) => {
                            // A service that left a live node starts elsewhere only once
                            // that node confirmed the stop order (a report answering it).
                            if let Some((x, stop_epoch)) = st.placements.get(service).and_then(|a| a.stopping.clone()) {
                                let confirmed = x == *new
                                    || states.get(&x) == Some(&NodeState::Down)
                                    || st.observed.get(service).is_some_and(|o| o.node == x && !o.may_run() && o.epoch >= stop_epoch);
                                if !confirmed {
                                    tracing::debug!(service, holder = %x, "waiting for the previous holder to confirm the stop");
                                    continue;
                                }
                            }
                            // A renamed service is the same workload: the new name waits
                            // until the old one is gone (its stop confirmed, removed).
                            if let Some(old) = spec.services.get(service).and_then(|s| s.renamed_from.as_ref()) {
                                let old_live = st.placements.contains_key(old)
                                    || st.observed.get(old).is_some_and(|o| o.may_run() && states.get(&o.node) != Some(&NodeState::Down));
                                if old_live {
                                    tracing::debug!(service, old = %old, "waiting for the old name to stop before starting the renamed service");
                                    continue;
                                }
                            }
                            let elsewhere = st.observed.get(service).filter(|o| o.node != *new && o.may_run() && states.get(&o.node) != Some(&NodeState::Down));
                            if let Some(o) = elsewhere {
                                tracing::debug!(service, holder = %o.node, "waiting for the previous holder to stop before placing");
                                continue;
                            }
                            // A down node that may still hold it must be power-fenced first
                            // when the spec says so.
                            let mut down_holders: Vec<String> = now.iter().chain(st.observed.get(service).filter(|o| o.may_run()).map(|o| &o.node)).filter(|n| *n != new && states.get(*n) == Some(&NodeState::Down)).cloned().collect();
                            down_holders.dedup();
                            let unfenced: Vec<String> = down_holders.iter().filter(|n| !self.fenced(spec, n)).cloned().collect();
                            // A Ceph-backed service also waits until the holder is on
                            // Ceph's blocklist: a hung node can then no longer write.
                            let unblocked: Vec<String> = if uses_ceph(spec, service) {
                                down_holders.iter().filter(|n| !self.ceph_fenced(n)).cloned().collect()
                            } else {
                                Vec::new()
                            };
                            if !unfenced.is_empty() || !unblocked.is_empty() {
                                needs_fence.extend(unfenced);
                                needs_ceph_fence.extend(unblocked);
                                continue;
                            }
                            if let Some(old) = now.as_ref().filter(|old| *old != new) {
                                failovers.push((service.clone(), old.clone(), new.clone()));
                            }
                            // The event says the storage was fenced before the move.
                            let reason = if uses_ceph(spec, service) && !down_holders.is_empty() {
                                format!("{} ({} on the Ceph blocklist first)", p.reason, down_holders.join(", "))
                            } else {
                                p.reason.clone()
                            };
                            changes.insert(service.clone(), (Some(new.clone()), reason));
                        }
                        (_, None) => {
                            changes.insert(service.clone(), (None, p.reason.clone()));
                        }
                    }
                }
                // Services no longer in the spec: a stop order to the holder, then, once
                // it is confirmed (or the holder is down), the removal.
                for (service, a) in &st.placements {
                    if spec.services.contains_key(service) {
                        continue;
                    }
                    match (&a.node, &a.stopping) {
                        (Some(holder), _) => {
                            changes.insert(service.clone(), (None, format!("removed from the spec: stopping on {holder}")));
                        }
                        (None, Some((holder, epoch))) => {
                            let confirmed = states.get(holder) == Some(&NodeState::Down)
                                || st.observed.get(service).is_some_and(|o| o.node == *holder && !o.may_run() && o.epoch >= *epoch);
                            if confirmed {
                                changes.insert(service.clone(), (None, format!("removed from the spec (stopped on {holder})")));
                            }
                        }
                        (None, None) => {
                            let live = st.observed.get(service).is_some_and(|o| o.may_run() && states.get(&o.node) != Some(&NodeState::Down));
                            if !live {
                                changes.insert(service.clone(), (None, "removed from the spec".to_owned()));
                            }
                        }
                    }
                }
                for node in &needs_fence {
                    self.start_power_fencing(spec, node);
                }
                for node in &needs_ceph_fence {
                    self.start_ceph_fencing(spec, node);
                }
                Some((changes, failovers))
            })
            .await;
        let Some((changes, failovers)) = proposal.filter(|(c, _)| !c.is_empty()) else {
            self.decision_proposed();
            return;
        };
        for (service, (node, reason)) in &changes {
            tracing::info!(service, node = node.as_deref().unwrap_or("-"), "{reason}");
        }
        if let Some(delay) = test_placement_delay() {
            // Tests only: widen the window between the decision and its commit.
            tokio::time::sleep(delay).await;
        }
        let command = Command::Place {
            changes,
            by: self.name.clone(),
            at_ms: now_ms(),
        };
        let asked = Instant::now();
        let result = self.consensus.write(command, self.lease_ttl()).await;
        self.metrics.commit(asked.elapsed());
        // The proposal is in the log now (committed, or appended and maybe still
        // committing), or it never will be: renewals of the nodes counted down get an
        // index that covers it.
        self.decision_proposed();
        match result {
            Ok(_) => self.count_failovers(&failovers),
            Err(e) => tracing::warn!("cannot commit placements: {e}"),
        }
    }

    /// Counts committed moves away from down nodes, each timed from the old holder's
    /// last lease renewal this leader granted (else from the bound it took over from
    /// its predecessors) until the new holder reports the service running.
    fn count_failovers(&self, failovers: &[(String, String, String)]) {
        let Some(ttl) = self.applied_timings().map(|t| t.lease_ttl.get()) else {
            return;
        };
        let Ok(table) = self.leases.lock() else {
            return;
        };
        for (service, old, new) in failovers {
            let last_end = table.ends.get(old).copied().or(table.predecessors_end);
            let since = last_end.and_then(|end| end.checked_sub(ttl));
            self.metrics.failover_decided(service, old, new, since);
        }
    }
}

impl Node {
    fn refused(exit_code: u8, message: String) -> quorate_api::ControlReply {
        quorate_api::ControlReply::Refused {
            exit_code,
            message,
            changes: serde_json::Value::Null,
        }
    }

    async fn commit(&self, command: Command, done: String) -> quorate_api::ControlReply {
        let asked = Instant::now();
        let written = self.consensus.write(command, self.quorum_timeout()).await;
        self.metrics.commit(asked.elapsed());
        match written {
            Ok(_) => quorate_api::ControlReply::Done { message: done },
            Err(e) => Self::refused(4, format!("{e}\n  help: a majority of voters must be up and connected; check `quorate status`")),
        }
    }

    /// Commits `command` once `check` passed; a failed check is refused with exit 1
    /// and changes nothing.
    async fn commit_checked(
        &self,
        check: Result<(), String>,
        command: Command,
        done: String,
    ) -> quorate_api::ControlReply {
        match check {
            Ok(()) => self.commit(command, done).await,
            Err(why) => Self::refused(1, format!("{why}; nothing was changed")),
        }
    }

    /// The leader's node states, and why `service` may or may not run on each node
    /// given where everything else would be placed now.
    fn explain_service(
        &self,
        spec: &quorate_spec::Spec,
        st: &quorate_consensus::ClusterState,
        service: &str,
    ) -> (
        BTreeMap<String, NodeState>,
        BTreeMap<String, Option<String>>,
    ) {
        self.explain_under(spec, st, service, &constraints(st))
    }

    /// [`explain_service`](Self::explain_service) under `constraints` instead of the
    /// ones in force (e.g. with a ban that is only being asked for).
    fn explain_under(
        &self,
        spec: &quorate_spec::Spec,
        st: &quorate_consensus::ClusterState,
        service: &str,
        constraints: &quorate_scheduler::Constraints,
    ) -> (
        BTreeMap<String, NodeState>,
        BTreeMap<String, Option<String>>,
    ) {
        let states = self.node_states(spec, &st.admin);
        let current: BTreeMap<String, String> = st
            .placements
            .iter()
            .filter_map(|(s, a)| a.node.clone().map(|n| (s.clone(), n)))
            .collect();
        let failed = self.recent_failures(spec, st);
        let input = Input {
            spec,
            nodes: &states,
            current: &current,
            pins: &st.pins,
            failed: &failed,
            constraints,
        };
        let placed = place(&input);
        let why_not = quorate_scheduler::explain(&input, &placed, service);
        (states, why_not)
    }

    /// On the leader: `quorate move SVC NODE` (a visible, revocable pin) or `--clear`.
    pub(crate) async fn move_service(
        &self,
        service: &str,
        node: Option<String>,
        caller: &crate::cluster::Caller,
    ) -> quorate_api::ControlReply {
        let check = self
            .consensus
            .with_state(|st| {
                let spec = applied_spec(st)?;
                known_service(spec, service)?;
                let Some(target) = &node else {
                    return if st.pins.contains_key(service) {
                        Ok(())
                    } else {
                        Err(format!("`{service}` is not pinned; nothing to clear"))
                    };
                };
                known_node(spec, target)?;
                let (states, why_not) = self.explain_service(spec, st, service);
                if states.get(target) != Some(&NodeState::Up) {
                    return Err(format!(
                        "`{target}` is {:?}: a service can only be moved to an up node",
                        states.get(target).copied().unwrap_or(NodeState::Down)
                    )
                    .to_lowercase());
                }
                match why_not.get(target) {
                    Some(Some(why)) => Err(format!("`{service}` cannot run on `{target}`: {why}")),
                    _ => Ok(()),
                }
            })
            .await;
        let done = match &node {
            Some(n) => format!("{service} is pinned to {n}; it moves there (stop first, then start). `quorate move --clear {service}` removes the pin"),
            None => format!("{service}'s pin is cleared; normal placement applies (it stays where it is)"),
        };
        self.commit_checked(
            check,
            Command::Pin {
                service: service.to_string(),
                node,
                by: caller.by(),
                at_ms: now_ms(),
            },
            done,
        )
        .await
    }

    /// On the leader: `quorate restart SVC` — its node stops and starts it again.
    pub(crate) async fn restart_service(
        &self,
        service: &str,
        caller: &crate::cluster::Caller,
    ) -> quorate_api::ControlReply {
        let check = self
            .consensus
            .with_state(
                |st| match st.placements.get(service).and_then(|a| a.node.clone()) {
                    Some(node) => Ok(node),
                    None if st
                        .applied
                        .as_ref()
                        .is_some_and(|a| a.spec.services.contains_key(service)) =>
                    {
                        Err(format!(
                            "`{service}` runs nowhere right now; nothing to restart"
                        ))
                    }
                    None => Err(format!("no service `{service}` in the applied spec")),
                },
            )
            .await;
        match check {
            Ok(node) => {
                self.commit(
                    Command::Restart {
                        service: service.to_string(),
                        by: caller.by(),
                        at_ms: now_ms(),
                    },
                    format!("{service} restarts on {node}"),
                )
                .await
            }
            Err(why) => Self::refused(1, format!("{why}; nothing was changed")),
        }
    }

    /// On the leader: `quorate disable SVC` / `enable SVC`.
    pub(crate) async fn set_disabled(
        &self,
        service: &str,
        disabled: bool,
        caller: &crate::cluster::Caller,
    ) -> quorate_api::ControlReply {
        let check = self
            .consensus
            .with_state(|st| {
                check_names(st, service, None)?;
                match (disabled, st.disabled.contains(service)) {
                    (true, true) => Err(format!("`{service}` is already disabled")),
                    (false, false) => Err(format!("`{service}` is not disabled")),
                    _ => Ok(()),
                }
            })
            .await;
        let done = if disabled {
            format!("{service} is disabled: it stops where it runs and starts nowhere until `quorate enable {service}`")
        } else {
            format!("{service} is enabled: it is placed again")
        };
        self.commit_checked(
            check,
            Command::SetDisabled {
                service: service.to_string(),
                disabled,
                by: caller.by(),
                at_ms: now_ms(),
            },
            done,
        )
        .await
    }

    /// On the leader: `quorate ban SVC NODE [--for D]`. Refused when the ban would
    /// leave the service no node at all.
    pub(crate) async fn ban(
        &self,
        service: &str,
        node: &str,
        for_ms: Option<u64>,
        caller: &crate::cluster::Caller,
    ) -> quorate_api::ControlReply {
        let check = self
            .consensus
            .with_state(|st| {
                check_names(st, service, Some(node))?;
                let spec = applied_spec(st)?;
                // With the ban in force, would it still have a node?
                let mut banned = constraints(st);
                banned
                    .banned
                    .entry(service.to_string())
                    .or_default()
                    .insert(node.to_string());
                let (_, why_not) = self.explain_under(spec, st, service, &banned);
                if why_not.values().all(Option::is_some) && !st.disabled.contains(service) {
                    let reasons: Vec<String> = why_not
                        .iter()
                        .map(|(n, w)| format!("{n}: {}", w.as_deref().unwrap_or("?")))
                        .collect();
                    return Err(format!(
                        "banning `{service}` from `{node}` would leave it no node ({})",
                        reasons.join("; ")
                    ));
                }
                Ok(())
            })
            .await;
        let how_long = for_ms.map_or_else(
            || format!("until `quorate unban {service} {node}`"),
            |ms| format!("for {} s", ms.div_ceil(1000)),
        );
        self.commit_checked(
            check,
            Command::Ban {
                service: service.to_string(),
                node: node.to_string(),
                until_ms: for_ms.map(|ms| now_ms() + ms),
                by: caller.by(),
                at_ms: now_ms(),
            },
            format!("{service} is banned from {node} {how_long}; it moves away if it runs there"),
        )
        .await
    }

    /// On the leader: `quorate unban SVC NODE`.
    pub(crate) async fn unban(
        &self,
        service: &str,
        node: &str,
        caller: &crate::cluster::Caller,
    ) -> quorate_api::ControlReply {
        let check = self
            .consensus
            .with_state(|st| {
                check_names(st, service, Some(node))?;
                if st
                    .active_bans(now_ms())
                    .get(service)
                    .is_some_and(|b| b.contains(node))
                {
                    Ok(())
                } else {
                    Err(format!("`{service}` is not banned from `{node}`"))
                }
            })
            .await;
        self.commit_checked(
            check,
            Command::Unban {
                service: service.to_string(),
                node: node.to_string(),
                by: caller.by(),
                at_ms: now_ms(),
            },
            format!("{service} may run on {node} again"),
        )
        .await
    }

    /// On the leader: `quorate cleanup SVC [--node N]`: its recorded failures (and the
    /// nodes it may not return to for its restart window) are forgotten.
    pub(crate) async fn cleanup(
        &self,
        service: &str,
        node: Option<&str>,
        caller: &crate::cluster::Caller,
    ) -> quorate_api::ControlReply {
        let check = self
            .consensus
            .with_state(|st| check_names(st, service, node))
            .await;
        let scope = node.map_or_else(|| " everywhere".to_string(), |n| format!(" on {n}"));
        let reply = self
            .commit_checked(
                check,
                Command::Cleanup {
                    service: service.to_string(),
                    node: node.map(str::to_string),
                    by: caller.by(),
                    at_ms: now_ms(),
                },
                format!("{service}: failures{scope} forgotten; it may be placed there again"),
            )
            .await;
        // The leader's own record of where the budget was spent goes with the commit
        // (a refused or uncommitted cleanup changes nothing).
        if matches!(reply, quorate_api::ControlReply::Done { .. }) {
            if let Ok(mut log) = self.failures.lock() {
                match node {
                    Some(n) => {
                        if let Some(nodes) = log.get_mut(service) {
                            nodes.remove(n);
                        }
                    }
                    None => {
                        log.remove(service);
                    }
                }
            }
        }
        reply
    }

    /// On the leader: the backup, read after confirming leadership (consistent as of
    /// the committed index it reads).
    pub(crate) async fn backup(&self) -> quorate_api::ControlReply {
        if let Err(e) = self
            .consensus
            .confirm_leadership(self.quorum_timeout())
            .await
        {
            return Self::refused(4, format!("{e}; no backup was taken"));
        }
        match self
            .consensus
            .with_state(quorate_consensus::ClusterState::backup)
            .await
        {
            Some(b) => quorate_api::ControlReply::Backup(Box::new(b)),
            None => Self::refused(1, "the cluster has no spec yet; nothing to back up".into()),
        }
    }

    /// On the leader: `quorate restore FILE`.
    pub(crate) async fn restore(
        &self,
        backup: quorate_consensus::Backup,
        caller: &crate::cluster::Caller,
    ) -> quorate_api::ControlReply {
        let check = self
            .consensus
            .with_state(|st| {
                let applied = st
                    .applied
                    .as_ref()
                    .ok_or_else(|| "the cluster has no spec yet".to_string())?;
                if backup.format != quorate_consensus::BACKUP_FORMAT {
                    return Err(format!("the backup has format {}, this quorate reads {}", backup.format, quorate_consensus::BACKUP_FORMAT));
                }
                if backup.cluster != applied.spec.cluster.name {
                    return Err(format!("the backup is of cluster `{}`, this is `{}`", backup.cluster, applied.spec.cluster.name));
                }
                if backup.applied.hash != applied.hash {
                    return Err(format!("the backup was taken at a different spec (version {}, {}); apply that spec and lock first (they are in the backup), then restore", backup.applied.version, backup.applied.hash.get(..12).unwrap_or("?")));
                }
                Ok(())
            })
            .await;
        let (pins, admin, disabled, bans) = (
            backup.pins.len(),
            backup.admin.len(),
            backup.disabled.len(),
            backup.bans.len(),
        );
        self.commit_checked(
            check,
            Command::Restore {
                backup: Box::new(backup),
                by: caller.by(),
                at_ms: now_ms(),
            },
            format!("restored: {pins} pin(s), {admin} node state(s), {disabled} disabled service(s), {bans} ban(s) and the event history; placements follow from them"),
        )
        .await
    }

    /// On the leader: `quorate maintenance on|off --cluster`.
    pub(crate) async fn cluster_maintenance(
        &self,
        on: bool,
        caller: &crate::cluster::Caller,
    ) -> quorate_api::ControlReply {
        let now = self.consensus.with_state(|st| st.cluster_maintenance).await;
        if now == on {
            return Self::refused(
                1,
                format!(
                    "the cluster is {} in maintenance; nothing was changed",
                    if on { "already" } else { "not" }
                ),
            );
        }
        let done = if on {
            "the cluster is in maintenance: everything keeps running where it is, nothing moves or starts; `quorate maintenance off --cluster` ends it"
        } else {
            "cluster maintenance is over: services are placed and moved again"
        };
        self.commit(
            Command::SetClusterMaintenance {
                on,
                by: caller.by(),
                at_ms: now_ms(),
            },
            done.to_string(),
        )
        .await
    }

    /// On the leader: drain, undrain, maintenance on/off.
    pub(crate) async fn set_admin(
        &self,
        node: &str,
        state: &str,
        caller: &crate::cluster::Caller,
    ) -> quorate_api::ControlReply {
        let admin = match state {
            "active" => AdminState::Active,
            "draining" => AdminState::Draining,
            "maintenance" => AdminState::Maintenance,
            other => {
                return Self::refused(
                    1,
                    format!("unknown node state `{other}` (active, draining, maintenance)"),
                )
            }
        };
        let check = self
            .consensus
            .with_state(|st| {
                let spec = applied_spec(st)?;
                known_node(spec, node)?;
                if admin == AdminState::Draining {
                    let states = self.node_states(spec, &st.admin);
                    if !states.iter().any(|(n, s)| n != node && *s == NodeState::Up) {
                        return Err(format!(
                            "draining `{node}` would leave no up node to run services"
                        ));
                    }
                }
                Ok(())
            })
            .await;
        self.commit_checked(
            check,
            Command::SetAdmin {
                node: node.to_string(),
                state: admin,
                by: caller.by(),
                at_ms: now_ms(),
            },
            format!("{node} is now {state}"),
        )
        .await
    }

    /// On the leader, every few seconds: makes every GlusterFS volume of the applied
    /// spec exist and run (peer probe, create, start) through the local glusterd.
    /// Idempotent, so it also repairs a volume someone stopped.
    pub(crate) async fn ensure_gluster_volumes_forever(&self) {
        let runner = quorate_drivers::SystemRunner;
        let mut reported: BTreeMap<String, String> = BTreeMap::new();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if !self.is_leader() {
                continue;
            }
            let (volumes, local) = self
                .consensus
                .with_state(|st| {
                    let Some(applied) = st.applied.as_ref() else {
                        return (Vec::new(), String::new());
                    };
                    let spec = &applied.spec;
                    let address = |n: &String| {
                        quorate_lock::cluster_address(spec, &applied.lock, n).map(|a| a.to_string())
                    };
                    let volumes: Vec<quorate_drivers::GlusterVolume> = spec
                        .storage
                        .iter()
                        .filter(|(_, s)| s.kind == quorate_spec::StorageKind::Gluster)
                        .filter_map(|(name, s)| {
                            let brick = s.brick.clone()?;
                            Some(quorate_drivers::GlusterVolume {
                                resource: name.clone(),
                                volume: s.volume.clone().unwrap_or_else(|| name.clone()),
                                bricks: s
                                    .nodes
                                    .iter()
                                    .filter_map(|n| Some((address(n)?, brick.clone())))
                                    .collect(),
                                arbiter: s.arbiter,
                            })
                        })
                        .collect();
                    (volumes, address(&self.name).unwrap_or_default())
                })
                .await;
            for volume in volumes {
                let outcome = match volume.ensure(&runner, &local).await {
                    Ok(()) => "ready".to_owned(),
                    Err(e) => e.to_string(),
                };
                // Log changes only (the loop runs every 2 s).
                if reported.get(&volume.resource) != Some(&outcome) {
                    if outcome == "ready" {
                        tracing::info!(storage = %volume.resource, "GlusterFS volume `{}` is created and started", volume.volume);
                    } else {
                        tracing::warn!(storage = %volume.resource, "{outcome}");
                    }
                    reported.insert(volume.resource.clone(), outcome);
                }
            }
        }
    }

    /// On the leader: the input its scheduler places from, for `simulate --live`.
    pub(crate) async fn scheduler_input(&self) -> quorate_api::ControlReply {
        self.consensus
            .with_state(|st| {
                let Some(applied) = st.applied.as_ref() else {
                    return Self::refused(1, "the cluster has no spec yet".into());
                };
                let spec = &applied.spec;
                quorate_api::ControlReply::SchedulerInput(Box::new(quorate_api::SchedulerView {
                    spec: spec.clone(),
                    nodes: self.node_states(spec, &st.admin),
                    current: st
                        .placements
                        .iter()
                        .filter_map(|(s, a)| a.node.clone().map(|n| (s.clone(), n)))
                        .collect(),
                    pins: st.pins.clone(),
                    failed: self.recent_failures(spec, st),
                    constraints: constraints(st),
                }))
            })
            .await
    }

    /// On the leader: why `service` runs where it runs, and why not elsewhere.
    pub(crate) async fn explain(&self, service: &str) -> quorate_api::ControlReply {
        self.consensus
            .with_state(|st| {
                let Some(applied) = st.applied.as_ref() else {
                    return Self::refused(1, "the cluster has no spec yet".into());
                };
                let spec = &applied.spec;
                if !spec.services.contains_key(service) {
                    return Self::refused(1, format!("no service `{service}` in the applied spec"));
                }
                let (_, nodes) = self.explain_service(spec, st, service);
                let assignment = st.placements.get(service);
                quorate_api::ControlReply::Explain {
                    service: service.to_string(),
                    node: assignment.and_then(|a| a.node.clone()),
                    reason: assignment.map(|a| a.reason.clone()).unwrap_or_default(),
                    pinned: st.pins.get(service).cloned(),
                    nodes,
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::FencingLedger;

    #[test]
    fn a_fencing_attempt_is_claimed_once_and_retried_only_after_a_pause() {
        let mut ledger: FencingLedger<&str> = FencingLedger::default();
        assert!(ledger.begin("n1"));
        assert!(!ledger.begin("n1"), "an attempt runs already");
        ledger.finish("n1", None, "failed".into());
        assert!(!ledger.is_done("n1"));
        assert!(!ledger.begin("n1"), "too soon after a failure");
        ledger.failed.insert(
            "n1".into(),
            std::time::Instant::now() - FencingLedger::<&str>::RETRY,
        );
        assert!(ledger.begin("n1"), "retried after the pause");
        ledger.finish("n1", Some("10.0.0.1"), "fenced".into());
        assert!(ledger.is_done("n1"));
        assert!(!ledger.begin("n1"), "fenced already");
        assert_eq!(ledger.done["n1"], "10.0.0.1");
        let outcomes = ledger.take_outcomes();
        assert_eq!(
            outcomes,
            vec![
                ("n1".to_owned(), "failed".to_owned()),
                ("n1".to_owned(), "fenced".to_owned())
            ]
        );
        assert!(ledger.take_outcomes().is_empty());
        for i in 0..150 {
            ledger.note("n2", format!("{i}"));
        }
        let kept = ledger.take_outcomes();
        assert_eq!(kept.len(), 100, "bounded");
        assert_eq!(kept[0].1, "50", "the newest are kept");
    }
}
