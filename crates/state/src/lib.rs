//! The replicated cluster state and the commands that change it.
//!
//! Raft (in `quorate-consensus`) orders [`Command`]s; every node applies them to its
//! [`ClusterState`] with [`ClusterState::apply`], which is deterministic: no I/O, no
//! clock reads. Anything time-dependent (when something happened) travels inside the
//! command, stamped by the node that proposed it.
//!
//! **Architecture Invariant:** knows nothing about Raft, the network or agents. The
//! Raft library is swappable because this crate does not name it.
//!
//! Persisted format: the state is serialised into Raft snapshots; [`STATE_VERSION`]
//! names its format so a later version can migrate old snapshots.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use quorate_lock::Lock;
use quorate_spec::Spec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format version of [`ClusterState`] inside snapshots.
pub const STATE_VERSION: u32 = 1;

/// How many events the state keeps (oldest dropped first).
pub const EVENT_LOG_CAPACITY: usize = 1000;

/// The spec and lock the cluster runs by (DESIGN invariant 7: once the cluster exists,
/// this — not any node's local file — is the truth).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedSpec {
    /// The spec.
    pub spec: Spec,
    /// Its lock.
    pub lock: Lock,
    /// Content hash of spec + lock ([`content_hash`]).
    pub hash: String,
    /// Increases by one with every applied change.
    pub version: u64,
}

/// Administrative state of a node, set by operators (drain, maintenance).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Normal operation.
    #[default]
    Active,
    /// Services are being moved away.
    Draining,
    /// The cluster does not react to this node's failures.
    Maintenance,
}

/// One decision the cluster made, for `quorate events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, increasing.
    pub seq: u64,
    /// Wall-clock time (ms since the Unix epoch) on the proposing node.
    pub at_ms: u64,
    /// Node that proposed it.
    pub by: String,
    /// What happened.
    pub what: String,
    /// What kind of event: `failover`, `placement`, `operator`, `spec` (see
    /// `quorate_spec::Alerts::KINDS`); empty in logs written before kinds existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// Where a service should run, decided by the leader's scheduler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The node, or `None` while the service is stopped (unplaceable, or stopping on
    /// its old node before it may start on a new one).
    pub node: Option<String>,
    /// Increases with every change of any assignment.
    pub epoch: u64,
    /// Why, in a sentence.
    pub reason: String,
    /// While `node` is None after the service left a node: that node and the epoch of
    /// the stop order. The node must confirm it stopped (a report at that epoch or
    /// later) before the service may start anywhere else — unless it is down (its
    /// lease expired, so it is fenced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping: Option<(String, u64)>,
}

/// What a node reported about a service it runs or ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// The reporting node.
    pub node: String,
    /// `starting`, `running`, `restarting`, `stopping`, `stopped` or `failed`.
    pub state: String,
    /// Reporter's wall clock, ms since the epoch.
    pub at_ms: u64,
    /// The service's placement epoch the reporter had applied when it reported.
    #[serde(default)]
    pub epoch: u64,
}

impl Observed {
    /// True when the service may be running on the reporting node.
    #[must_use]
    pub fn may_run(&self) -> bool {
        matches!(
            self.state.as_str(),
            "starting" | "running" | "stopping" | "restarting"
        )
    }
}

/// Everything the cluster agrees on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The applied spec, once bootstrapped.
    pub applied: Option<AppliedSpec>,
    /// Operator-set node states; absent means active.
    pub admin: BTreeMap<String, AdminState>,
    /// Recent events, oldest first, at most [`EVENT_LOG_CAPACITY`].
    pub events: VecDeque<Event>,
    /// Sequence number of the next event.
    pub next_event: u64,
    /// Where each service should run.
    #[serde(default)]
    pub placements: BTreeMap<String, Assignment>,
    /// Epoch of the next assignment change.
    #[serde(default)]
    pub next_epoch: u64,
    /// Last report about each service, from the node that runs or ran it.
    #[serde(default)]
    pub observed: BTreeMap<String, Observed>,
    /// Explicit placements (`quorate move`): service → node, until `move --clear`.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
    /// Restart generation of each service (`quorate restart` increments it).
    #[serde(default)]
    pub generations: BTreeMap<String, u64>,
    /// Services stopped everywhere and kept stopped (`quorate disable`).
    #[serde(default)]
    pub disabled: BTreeSet<String>,
    /// Services kept off nodes at runtime (`quorate ban`): service → node → until
    /// (wall clock ms; `None`: until `unban`).
    #[serde(default)]
    pub bans: BTreeMap<String, BTreeMap<String, Option<u64>>>,
    /// The whole cluster keeps what runs and moves nothing (`quorate maintenance on
    /// --cluster`).
    #[serde(default)]
    pub cluster_maintenance: bool,
    /// Voters of the applied spec left out of Raft's voters by `quorate recover
    /// --force-single`: each votes again only once it has come back with an empty
    /// data dir (its old log could disagree with the recovered one).
    #[serde(default)]
    pub left_out: BTreeSet<String>,
}

impl ClusterState {
    /// The backup of this state, when a spec is applied.
    #[must_use]
    pub fn backup(&self) -> Option<Backup> {
        let applied = self.applied.clone()?;
        Some(Backup {
            format: BACKUP_FORMAT,
            cluster: applied.spec.cluster.name.clone(),
            applied,
            admin: self.admin.clone(),
            pins: self.pins.clone(),
            disabled: self.disabled.clone(),
            bans: self.bans.clone(),
            cluster_maintenance: self.cluster_maintenance,
            generations: self.generations.clone(),
            events: self.events.clone(),
        })
    }

    /// The bans in force at `now_ms`: service → nodes.
    #[must_use]
    pub fn active_bans(&self, now_ms: u64) -> BTreeMap<String, BTreeSet<String>> {
        self.bans
            .iter()
            .map(|(service, nodes)| {
                let active = nodes
                    .iter()
                    .filter(|(_, until)| until.is_none_or(|u| u > now_ms))
                    .map(|(n, _)| n.clone())
                    .collect::<BTreeSet<String>>();
                (service.clone(), active)
            })
            .filter(|(_, nodes)| !nodes.is_empty())
            .collect()
    }
}

/// What `quorate backup` exports: everything operators and the cluster decided,
/// consistent as of one committed index. Placements and reports are not in it: a
/// restored cluster derives them again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// Format of this file.
    pub format: u32,
    /// The cluster.
    pub cluster: String,
    /// The applied spec, its lock, hash and version.
    pub applied: AppliedSpec,
    /// Operator node states.
    #[serde(default)]
    pub admin: BTreeMap<String, AdminState>,
    /// Pins.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
    /// Disabled services.
    #[serde(default)]
    pub disabled: BTreeSet<String>,
    /// Bans.
    #[serde(default)]
    pub bans: BTreeMap<String, BTreeMap<String, Option<u64>>>,
    /// Cluster maintenance.
    #[serde(default)]
    pub cluster_maintenance: bool,
    /// Restart generations.
    #[serde(default)]
    pub generations: BTreeMap<String, u64>,
    /// The event log.
    #[serde(default)]
    pub events: VecDeque<Event>,
}

/// The [`Backup`] format this version writes and reads.
pub const BACKUP_FORMAT: u32 = 1;

/// A change to the cluster state, ordered by Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// The first spec, proposed from a node's local files when the cluster has none.
    /// Ignored once a spec exists, so racing bootstraps are harmless.
    Bootstrap {
        /// The spec and its lock.
        spec: Box<Spec>,
        /// The lock.
        lock: Box<Lock>,
        /// Proposing node.
        by: String,
        /// Proposer's wall clock, ms since the epoch.
        at_ms: u64,
    },
    /// New assignments from the leader's scheduler: service → node (or `None`) and reason.
    Place {
        /// The changed assignments only.
        changes: BTreeMap<String, (Option<String>, String)>,
        /// Proposing node (the leader).
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
    /// Pin a service to a node (`quorate move`), or clear the pin (`None`).
    Pin {
        /// The service.
        service: String,
        /// The node, or `None` to clear.
        node: Option<String>,
        /// Proposing node.
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
    /// Restart a service where it runs (`quorate restart`).
    Restart {
        /// The service.
        service: String,
        /// Proposing node.
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
    /// Set a node's operator state (drain, maintenance, or back to active).
    SetAdmin {
        /// The node.
        node: String,
        /// The new state.
        state: AdminState,
        /// Proposing node.
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
    /// Service states reported by a node (only those that changed).
    Observe {
        /// The reporting node.
        node: String,
        /// Service → state.
        services: BTreeMap<String, String>,
        /// Service → the placement epoch the reporter had applied (absent: 0).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        epochs: BTreeMap<String, u64>,
        /// Reporter's wall clock.
        at_ms: u64,
    },
    /// Stop a service everywhere and keep it stopped (`disabled = true`), or let it run
    /// again.
    SetDisabled {
        /// The service.
        service: String,
        /// True to disable.
        disabled: bool,
        /// Who asked.
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
    /// Keep a service off a node until `until_ms` (or until unbanned).
    Ban {
        /// The service.
        service: String,
        /// The node.
        node: String,
        /// Wall clock ms the ban ends at; `None`: until `Unban`.
        until_ms: Option<u64>,
        /// Who asked.
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
    /// Lift a ban.
    Unban {
        /// The service.
        service: String,
        /// The node.
        node: String,
        /// Who asked.
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
    /// Forget a service's recorded failures (on one node, or everywhere).
    Cleanup {
        /// The service.
        service: String,
        /// Only this node's.
        node: Option<String>,
        /// Who asked.
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
    /// Operator decisions and history from a backup of this cluster with the same
    /// applied spec (`quorate restore`).
    Restore {
        /// The backup.
        backup: Box<Backup>,
        /// Who asked.
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
    /// The whole cluster keeps what runs and moves nothing, or returns to normal.
    SetClusterMaintenance {
        /// True to enter maintenance.
        on: bool,
        /// Who asked.
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
    /// The first entry after `quorate recover --force-single` on `by`: the applied
    /// spec's other voters are left out of Raft's voters until each rejoins with an
    /// empty data dir.
    Recovered {
        /// The surviving node.
        by: String,
        /// Its wall clock.
        at_ms: u64,
    },
    /// A node left out by a recovery came back with an empty data dir: it may vote again.
    Rejoined {
        /// The node.
        node: String,
        /// Proposing node (the leader).
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
    /// A new spec (`quorate apply`). Same content hash = no change.
    ApplySpec {
        /// The spec.
        spec: Box<Spec>,
        /// The lock.
        lock: Box<Lock>,
        /// Proposing node.
        by: String,
        /// Proposer's wall clock.
        at_ms: u64,
    },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Place { changes, by, .. } => {
                write!(f, "place {} service(s) by {by}", changes.len())
            }
            Self::Pin { service, node, .. } => write!(f, "pin {service} to {node:?}"),
            Self::Restart { service, .. } => write!(f, "restart {service}"),
            Self::SetAdmin { node, state, .. } => write!(f, "set {node} to {state:?}"),
            Self::Observe { node, services, .. } => {
                write!(f, "{node} reports {} service(s)", services.len())
            }
            Self::Bootstrap { spec, by, .. } => {
                write!(f, "bootstrap `{}` by {by}", spec.cluster.name)
            }
            Self::ApplySpec { by, .. } => write!(f, "apply spec by {by}"),
            Self::SetDisabled {
                service, disabled, ..
            } => write!(f, "set {service} disabled={disabled}"),
            Self::Ban { service, node, .. } => write!(f, "ban {service} from {node}"),
            Self::Unban { service, node, .. } => write!(f, "unban {service} from {node}"),
            Self::Cleanup { service, .. } => write!(f, "clean up {service}"),
            Self::SetClusterMaintenance { on, .. } => write!(f, "cluster maintenance {on}"),
            Self::Restore { by, .. } => write!(f, "restore a backup by {by}"),
            Self::Recovered { by, .. } => write!(f, "recovered alone on {by}"),
            Self::Rejoined { node, .. } => write!(f, "{node} rejoined after a recovery"),
        }
    }
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandResult {
    /// The spec changed to this version.
    Applied {
        /// New version.
        version: u64,
        /// Its hash.
        hash: String,
    },
    /// Nothing changed (same hash, or a bootstrap after the first).
    Unchanged {
        /// Current version.
        version: u64,
        /// Current hash.
        hash: String,
    },
    /// Assignments or reports recorded.
    Recorded,
    /// No command result (Raft's own entries: blank, membership).
    None,
}

/// Hash of a spec and its lock: SHA-256 of their canonical JSON, hex.
#[must_use]
pub fn content_hash(spec: &Spec, lock: &Lock) -> String {
    let mut h = Sha256::new();
    // Serialising these types cannot fail: plain data, string keys.
    h.update(serde_json::to_vec(spec).unwrap_or_default());
    h.update(b"\n");
    h.update(serde_json::to_vec(lock).unwrap_or_default());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Prefix of storage health reports in [`ClusterState::observed`]:
/// `storage/<resource>/<node>`, each about the reporting node's own replica.
pub const STORAGE_REPORT: &str = "storage/";

/// The states a service report may carry.
pub const SERVICE_STATES: [&str; 6] = [
    "starting",
    "running",
    "restarting",
    "stopping",
    "stopped",
    "failed",
];

/// The longest storage health text a report may carry.
pub const MAX_STORAGE_HEALTH: usize = 1024;

impl ClusterState {
    /// True when `node` may report `state` under `key`: a service of the applied spec
    /// (or one still assigned while it stops) with a known state, or the health of
    /// `node`'s own replica of a storage resource of the applied spec.
    #[must_use]
    pub fn report_is_valid(&self, node: &str, key: &str, state: &str) -> bool {
        let Some(applied) = &self.applied else {
            return false;
        };
        let spec = &applied.spec;
        if !spec.nodes.contains_key(node) {
            return false;
        }
        if let Some(rest) = key.strip_prefix(STORAGE_REPORT) {
            return rest
                .split_once('/')
                .is_some_and(|(resource, of)| of == node && spec.storage.contains_key(resource))
                && state.len() <= MAX_STORAGE_HEALTH;
        }
        (spec.services.contains_key(key) || self.placements.contains_key(key))
            && SERVICE_STATES.contains(&state)
    }

    /// Applies one command. Deterministic: the same commands in the same order give
    /// the same state on every node.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        let first_new = self.next_event;
        let result = self.apply_command(command);
        // Each event says what kind it is, for alerts: a placement away from a down
        // node or a spent restart budget is a failover.
        let kind = match command {
            Command::Place { .. } => "placement",
            Command::Bootstrap { .. } | Command::ApplySpec { .. } => "spec",
            Command::Recovered { .. } | Command::Rejoined { .. } => "recovery",
            _ => "operator",
        };
        for e in self
            .events
            .iter_mut()
            .filter(|e| e.seq >= first_new && e.kind.is_empty())
        {
            e.kind = if kind == "placement"
                && (e.what.contains("(down)") || e.what.contains("restart budget"))
            {
                "failover".into()
            } else {
                kind.into()
            };
        }
        result
    }

    fn apply_command(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::Place { changes, by, at_ms } => self.place(changes, by, *at_ms),
            Command::Pin {
                service,
                node,
                by,
                at_ms,
            } => {
                let what = match node {
                    Some(n) => {
                        self.pins.insert(service.clone(), n.clone());
                        format!("{service}: pinned to {n} (quorate move; `move --clear {service}` removes it)")
                    }
                    None => {
                        self.pins.remove(service);
                        format!("{service}: pin cleared; normal placement")
                    }
                };
                self.event(by, *at_ms, what);
                CommandResult::Recorded
            }
            Command::Recovered { by, at_ms } => {
                let left_out: BTreeSet<String> = self
                    .applied
                    .iter()
                    .flat_map(|a| a.spec.voters())
                    .filter(|n| n != by)
                    .map(str::to_owned)
                    .collect();
                self.left_out.clone_from(&left_out);
                self.event(by, *at_ms, format!(
                    "forced recovery: {by} is the only voter, with the last state it had committed; left out until they rejoin with an empty data dir: {}",
                    left_out.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
                CommandResult::Recorded
            }
            Command::Rejoined { node, by, at_ms } => {
                if self.left_out.remove(node) {
                    self.event(by, *at_ms, format!("{node} rejoined with an empty data dir after the forced recovery; it votes again once it has caught up"));
                }
                CommandResult::Recorded
            }
            Command::SetDisabled {
                service,
                disabled,
                by,
                at_ms,
            } => {
                let what = if *disabled {
                    self.disabled.insert(service.clone());
                    format!(
                        "{service}: disabled: stopped everywhere until `quorate enable {service}`"
                    )
                } else {
                    self.disabled.remove(service);
                    format!("{service}: enabled again")
                };
                self.event(by, *at_ms, what);
                CommandResult::Recorded
            }
            Command::Ban {
                service,
                node,
                until_ms,
                by,
                at_ms,
            } => {
                self.bans
                    .entry(service.clone())
                    .or_default()
                    .insert(node.clone(), *until_ms);
                let how_long = until_ms.map_or_else(
                    || format!("until `quorate unban {service} {node}`"),
                    |u| format!("for {} s", u.saturating_sub(*at_ms).div_ceil(1000)),
                );
                self.event(
                    by,
                    *at_ms,
                    format!("{service}: banned from {node} {how_long}"),
                );
                CommandResult::Recorded
            }
            Command::Unban {
                service,
                node,
                by,
                at_ms,
            } => {
                if let Some(nodes) = self.bans.get_mut(service) {
                    nodes.remove(node);
                    if nodes.is_empty() {
                        self.bans.remove(service);
                    }
                }
                self.event(by, *at_ms, format!("{service}: ban from {node} lifted"));
                CommandResult::Recorded
            }
            Command::Cleanup {
                service,
                node,
                by,
                at_ms,
            } => {
                let failed_here = self.observed.get(service).is_some_and(|o| {
                    o.state == "failed" && node.as_ref().is_none_or(|n| *n == o.node)
                });
                if failed_here {
                    self.observed.remove(service);
                }
                let scope = node
                    .as_ref()
                    .map_or_else(String::new, |n| format!(" on {n}"));
                self.event(
                    by,
                    *at_ms,
                    format!("{service}: failures{scope} forgotten (cleanup)"),
                );
                CommandResult::Recorded
            }
            Command::Restore { backup, by, at_ms } => {
                // Only onto the same spec and lock: anything else is refused before it
                // is proposed, and ignored here should it arrive anyway.
                let same = self
                    .applied
                    .as_ref()
                    .is_some_and(|a| a.hash == backup.applied.hash);
                if !same || backup.format != BACKUP_FORMAT {
                    return CommandResult::Recorded;
                }
                let spec = &backup.applied.spec;
                self.admin = backup.admin.clone();
                self.admin.retain(|n, _| spec.nodes.contains_key(n));
                self.pins = backup.pins.clone();
                self.disabled = backup.disabled.clone();
                self.bans = backup.bans.clone();
                self.cluster_maintenance = backup.cluster_maintenance;
                for (service, g) in &backup.generations {
                    let mine = self.generations.entry(service.clone()).or_insert(0);
                    *mine = (*mine).max(*g);
                }
                // The old history first, then this cluster's own, then the restore.
                let mine = std::mem::take(&mut self.events);
                for e in backup.events.iter().chain(mine.iter()) {
                    self.event(&e.by, e.at_ms, e.what.clone());
                    if let Some(last) = self.events.back_mut() {
                        last.kind.clone_from(&e.kind);
                    }
                }
                let taken = backup.events.back().map_or(0, |e| e.at_ms);
                self.event(
                    by,
                    *at_ms,
                    format!(
                        "restored a backup of `{}` (spec version {}, last event at {taken} ms): pins, node states, disabled services, bans and history",
                        backup.cluster, backup.applied.version
                    ),
                );
                CommandResult::Recorded
            }
            Command::SetClusterMaintenance { on, by, at_ms } => {
                self.cluster_maintenance = *on;
                let what = if *on {
                    "CLUSTER MAINTENANCE: everything keeps running where it is; nothing moves, nothing is started"
                } else {
                    "cluster maintenance over: services are placed and moved again"
                };
                self.event(by, *at_ms, what.to_string());
                CommandResult::Recorded
            }
            Command::Restart { service, by, at_ms } => {
                let generation = self.generations.entry(service.clone()).or_insert(0);
                *generation += 1;
                let what = format!("{service}: restart requested (generation {generation})");
                self.event(by, *at_ms, what);
                CommandResult::Recorded
            }
            Command::SetAdmin {
                node,
                state,
                by,
                at_ms,
            } => {
                if *state == AdminState::Active {
                    self.admin.remove(node);
                } else {
                    self.admin.insert(node.clone(), *state);
                }
                self.event(
                    by,
                    *at_ms,
                    format!(
                        "{node}: {}",
                        match state {
                            AdminState::Active => "active again",
                            AdminState::Draining => "draining: its services move away",
                            AdminState::Maintenance =>
                                "in maintenance: keeps what it runs, gets nothing new",
                        }
                    ),
                );
                CommandResult::Recorded
            }
            Command::Observe {
                node,
                services,
                epochs,
                at_ms,
            } => {
                for (service, state) in services {
                    // Only reports a member may make about what the spec has: nothing
                    // else ever enters the state (a flood of made-up names included).
                    if !self.report_is_valid(node, service, state) {
                        continue;
                    }
                    let incoming = Observed {
                        node: node.clone(),
                        state: state.clone(),
                        at_ms: *at_ms,
                        epoch: epochs.get(service).copied().unwrap_or(0),
                    };
                    // Nodes report only changes, so a stale report must not replace a
                    // current one: a late "restarting"/"stopped" from the old holder (a
                    // resumed or healed node) would hide the new holder for good.
                    // - the assigned holder's own report stands against other nodes';
                    // - a node that no longer runs it must not hide one that may.
                    let assigned = self.placements.get(service).and_then(|a| a.node.as_deref());
                    let stale = self.observed.get(service).is_some_and(|current| {
                        current.node != *node
                            && ((assigned == Some(current.node.as_str())
                                && assigned != Some(node.as_str()))
                                || (current.may_run() && !incoming.may_run()))
                    });
                    if !stale {
                        self.observed.insert(service.clone(), incoming);
                    }
                }
                CommandResult::Recorded
            }
            Command::Bootstrap {
                spec,
                lock,
                by,
                at_ms,
            } => {
                if let Some(a) = &self.applied {
                    return CommandResult::Unchanged {
                        version: a.version,
                        hash: a.hash.clone(),
                    };
                }
                let hash = content_hash(spec, lock);
                self.applied = Some(AppliedSpec {
                    spec: (**spec).clone(),
                    lock: (**lock).clone(),
                    hash: hash.clone(),
                    version: 1,
                });
                self.event(
                    by,
                    *at_ms,
                    format!(
                        "cluster `{}` bootstrapped with spec version 1 ({})",
                        spec.cluster.name,
                        short(&hash)
                    ),
                );
                CommandResult::Applied { version: 1, hash }
            }
            Command::ApplySpec {
                spec,
                lock,
                by,
                at_ms,
            } => {
                let hash = content_hash(spec, lock);
                let version = match &self.applied {
                    Some(a) if a.hash == hash => {
                        return CommandResult::Unchanged {
                            version: a.version,
                            hash,
                        };
                    }
                    Some(a) => a.version + 1,
                    None => 1,
                };
                self.applied = Some(AppliedSpec {
                    spec: (**spec).clone(),
                    lock: (**lock).clone(),
                    hash: hash.clone(),
                    version,
                });
                // Operator states of nodes that no longer exist are dropped, and so
                // are pins to them or of services that no longer exist.
                self.admin.retain(|n, _| spec.nodes.contains_key(n));
                self.pins
                    .retain(|s, n| spec.services.contains_key(s) && spec.nodes.contains_key(n));
                self.disabled.retain(|s| spec.services.contains_key(s));
                self.left_out
                    .retain(|n| spec.nodes.get(n).is_some_and(|n| n.voter));
                self.bans.retain(|s, nodes| {
                    nodes.retain(|n, _| spec.nodes.contains_key(n));
                    spec.services.contains_key(s) && !nodes.is_empty()
                });
                // So are reports about services that no longer exist (unless their
                // assignment is kept until the leader's scheduler removes it, after
                // the stop) and about storage that no longer exists.
                let observed = std::mem::take(&mut self.observed);
                self.observed = observed
                    .into_iter()
                    .filter(|(key, o)| self.report_is_valid(&o.node, key, &o.state))
                    .collect();
                self.event(
                    by,
                    *at_ms,
                    format!("spec version {version} applied ({})", short(&hash)),
                );
                CommandResult::Applied { version, hash }
            }
        }
    }

    fn place(
        &mut self,
        changes: &BTreeMap<String, (Option<String>, String)>,
        by: &str,
        at_ms: u64,
    ) -> CommandResult {
        for (service, (node, reason)) in changes {
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            let previous = self.placements.get(service).and_then(|a| a.node.clone());
            // A service no longer in the spec leaves like a move: a stop order to its
            // holder first; the leader removes it only once that stop is confirmed
            // (or the holder is down), so neither a re-added service of the same name
            // nor a renamed one can start while the old instance still runs.
            if node.is_none()
                && previous.is_none()
                && !self
                    .applied
                    .as_ref()
                    .is_some_and(|a| a.spec.services.contains_key(service))
            {
                self.placements.remove(service);
                self.observed.remove(service);
                self.event(
                    by,
                    at_ms,
                    format!("{service}: removed from the cluster ({reason})"),
                );
                continue;
            }
            self.placements.insert(
                service.clone(),
                Assignment {
                    node: node.clone(),
                    epoch,
                    reason: reason.clone(),
                    // Leaving a node: it must confirm the stop. Still stopped: keep it.
                    stopping: match (node, &previous) {
                        (Some(_), _) => None,
                        (None, Some(p)) => Some((p.clone(), epoch)),
                        (None, None) => self
                            .placements
                            .get(service)
                            .and_then(|a| a.stopping.clone()),
                    },
                },
            );
            let what = match (&previous, node) {
                (None, Some(n)) => format!("{service}: start on {n} — {reason}"),
                (Some(p), Some(n)) => format!("{service}: move {p} → {n} — {reason}"),
                (Some(p), None) => format!("{service}: stop on {p} — {reason}"),
                (None, None) => format!("{service}: not placed — {reason}"),
            };
            self.event(by, at_ms, what);
        }
        CommandResult::Recorded
    }

    fn event(&mut self, by: &str, at_ms: u64, what: String) {
        self.events.push_back(Event {
            seq: self.next_event,
            at_ms,
            by: by.to_string(),
            what,
            kind: String::new(),
        });
        self.next_event += 1;
        while self.events.len() > EVENT_LOG_CAPACITY {
            self.events.pop_front();
        }
    }

    /// The applied spec's version, 0 before bootstrap.
    #[must_use]
    pub fn spec_version(&self) -> u64 {
        self.applied.as_ref().map_or(0, |a| a.version)
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state bootstrapped with three nodes and the `services` TOML.
    fn bootstrapped(services: &str) -> ClusterState {
        let text = format!("[cluster]\nname = \"lab\"\n[nodes.n1]\naddress = \"127.0.0.1\"\n[nodes.n2]\naddress = \"127.0.0.2\"\n[nodes.n3]\naddress = \"127.0.0.3\"\n{services}");
        let s = quorate_spec::check(&text, quorate_spec::Format::Toml)
            .spec
            .unwrap();
        let l = lock(&s);
        let mut st = ClusterState::default();
        st.apply(&Command::Bootstrap {
            spec: Box::new(s),
            lock: Box::new(l),
            by: "n1".into(),
            at_ms: 0,
        });
        st
    }

    #[test]
    fn leaving_a_node_records_a_stop_order_that_outlives_reason_changes() {
        let mut st =
            bootstrapped("[services.web]\nkind = \"process\"\ncommand = [\"/bin/true\"]\n");
        let place = |st: &mut ClusterState, node: Option<&str>, reason: &str| {
            let changes: BTreeMap<String, (Option<String>, String)> =
                [("web".to_owned(), (node.map(Into::into), reason.to_owned()))].into();
            st.place(&changes, "n9", 0);
        };
        place(&mut st, Some("n1"), "placed");
        assert_eq!(st.placements["web"].stopping, None);
        place(&mut st, None, "stopping on n1 before it moves");
        let order = st.placements["web"].stopping.clone().unwrap();
        assert_eq!(order, ("n1".to_owned(), st.placements["web"].epoch));
        // A new reason while still stopped keeps the original order (and its epoch).
        place(&mut st, None, "unplaceable: no node left");
        assert_eq!(st.placements["web"].stopping, Some(order));
        place(&mut st, Some("n2"), "moved");
        assert_eq!(st.placements["web"].stopping, None);
    }

    #[test]
    fn a_removed_service_first_gets_a_stop_order_then_goes() {
        let mut st = bootstrapped("");
        // `web` ran on n1 and is not in the applied spec any more.
        st.placements.insert(
            "web".into(),
            Assignment {
                node: Some("n1".into()),
                epoch: 0,
                reason: "placed".into(),
                stopping: None,
            },
        );
        let gone: BTreeMap<String, (Option<String>, String)> =
            [("web".to_owned(), (None, "removed from the spec".to_owned()))].into();
        st.place(&gone, "n2", 1);
        let a = &st.placements["web"];
        assert_eq!(a.node, None);
        assert_eq!(a.stopping.as_ref().map(|(n, _)| n.as_str()), Some("n1"));
        // The leader sends the removal again once n1 confirmed: now it goes.
        st.place(&gone, "n2", 2);
        assert!(!st.placements.contains_key("web"));
    }

    #[test]
    fn a_late_stop_from_the_old_holder_does_not_hide_the_new_one() {
        let mut st =
            bootstrapped("[services.web]\nkind = \"process\"\ncommand = [\"/bin/true\"]\n");
        let observe = |node: &str, state: &str, at_ms| Command::Observe {
            node: node.into(),
            services: [("web".to_owned(), state.to_owned())].into(),
            epochs: BTreeMap::new(),
            at_ms,
        };
        st.apply(&observe("n1", "running", 1));
        st.apply(&observe("n2", "running", 2));
        // n1 resumes after being fenced and reports the exit of its old instance.
        st.apply(&observe("n1", "failed", 3));
        assert_eq!(st.observed["web"].node, "n2");
        assert_eq!(st.observed["web"].state, "running");
        // Once web is placed on n2, a stale "restarting" from n1 does not hide n2 either.
        st.placements.insert(
            "web".into(),
            Assignment {
                node: Some("n2".into()),
                reason: "test".into(),
                stopping: None,
                epoch: 1,
            },
        );
        st.apply(&observe("n1", "restarting", 3));
        assert_eq!(st.observed["web"].node, "n2");
        st.placements.remove("web");
        // The holder's own reports always count, and a node starting it always counts.
        st.apply(&observe("n2", "stopped", 4));
        assert_eq!(st.observed["web"].state, "stopped");
        st.apply(&observe("n3", "starting", 5));
        assert_eq!(st.observed["web"].node, "n3");
    }

    #[test]
    fn only_reports_about_what_the_spec_has_enter_the_state() {
        let web = "[services.web]\nkind = \"process\"\ncommand = [\"/bin/true\"]\n";
        let data = "[storage.data]\nkind = \"gluster\"\nnodes = [\"n1\", \"n2\", \"n3\"]\nbrick = \"/srv/bricks/data\"\nmount = \"/srv/data\"\n";
        let mut st = bootstrapped(&format!("{web}{data}"));
        let report = |node: &str, pairs: &[(&str, &str)]| Command::Observe {
            node: node.into(),
            services: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            epochs: BTreeMap::new(),
            at_ms: 1,
        };
        let flood: Vec<(String, String)> = (0..1000)
            .map(|i| (format!("made-up-{i}"), "running".to_owned()))
            .collect();
        let flood: Vec<(&str, &str)> = flood
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        st.apply(&report("n1", &flood));
        st.apply(&report("n1", &[("web", "on fire")]));
        st.apply(&report("n1", &[("storage/data/n2", "UpToDate")]));
        st.apply(&report("n1", &[("storage/other/n1", "UpToDate")]));
        st.apply(&report("n9", &[("web", "running")]));
        assert!(st.observed.is_empty(), "{:?}", st.observed);
        // What a member may say about the spec's services and its own replicas stays.
        st.apply(&report(
            "n1",
            &[("web", "running"), ("storage/data/n1", "UpToDate")],
        ));
        assert_eq!(st.observed.len(), 2);
        // A spec without the storage prunes its reports; the service's stays while
        // it is still assigned (it must be stopped first).
        st.placements.insert(
            "web".into(),
            Assignment {
                node: Some("n1".into()),
                epoch: 0,
                reason: "placed".into(),
                stopping: None,
            },
        );
        let bare = spec("lab", 3);
        st.apply(&Command::ApplySpec {
            spec: Box::new(bare.clone()),
            lock: Box::new(lock(&bare)),
            by: "n1".into(),
            at_ms: 2,
        });
        assert_eq!(st.observed.keys().collect::<Vec<_>>(), ["web"]);
    }

    fn spec(name: &str, nodes: usize) -> Spec {
        let mut text = format!("[cluster]\nname = \"{name}\"\n");
        for i in 1..=nodes {
            text.push_str(&format!("[nodes.n{i}]\naddress = \"127.0.0.{i}\"\n"));
        }
        quorate_spec::check(&text, quorate_spec::Format::Toml)
            .spec
            .unwrap()
    }

    fn lock(s: &Spec) -> Lock {
        quorate_lock::allocate(None, s).unwrap().lock
    }

    #[test]
    fn bootstrap_happens_once_and_apply_versions_increase() {
        let s = spec("lab", 3);
        let l = lock(&s);
        let mut st = ClusterState::default();
        let boot = Command::Bootstrap {
            spec: Box::new(s.clone()),
            lock: Box::new(l.clone()),
            by: "n1".into(),
            at_ms: 1,
        };
        assert!(matches!(
            st.apply(&boot),
            CommandResult::Applied { version: 1, .. }
        ));
        // A racing bootstrap from another node changes nothing.
        assert!(matches!(
            st.apply(&boot),
            CommandResult::Unchanged { version: 1, .. }
        ));
        let same = Command::ApplySpec {
            spec: Box::new(s.clone()),
            lock: Box::new(l),
            by: "n2".into(),
            at_ms: 2,
        };
        assert!(matches!(
            st.apply(&same),
            CommandResult::Unchanged { version: 1, .. }
        ));
        let s5 = spec("lab", 5);
        let l5 = lock(&s5);
        let change = Command::ApplySpec {
            spec: Box::new(s5),
            lock: Box::new(l5),
            by: "n2".into(),
            at_ms: 3,
        };
        assert!(matches!(
            st.apply(&change),
            CommandResult::Applied { version: 2, .. }
        ));
        assert_eq!(st.events.len(), 2);
        assert_eq!(st.spec_version(), 2);
    }

    #[test]
    fn the_event_log_is_bounded() {
        let mut st = ClusterState::default();
        for i in 0..(EVENT_LOG_CAPACITY as u64 + 10) {
            st.event("n1", i, format!("e{i}"));
        }
        assert_eq!(st.events.len(), EVENT_LOG_CAPACITY);
        assert_eq!(st.events.front().unwrap().seq, 10);
    }

    #[test]
    fn hash_depends_on_content_only() {
        let s = spec("lab", 3);
        let l = lock(&s);
        assert_eq!(content_hash(&s, &l), content_hash(&s.clone(), &l.clone()));
        assert_ne!(content_hash(&s, &l), content_hash(&spec("lab", 4), &l));
    }
}
