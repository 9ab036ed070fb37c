//! Prometheus metrics of one agent (`GET /metrics` on the HTTP API, text format).
//!
//! Counted as things happen: leader changes this node saw, lease renewals and
//! renewals that failed (and how long each took), failovers this node decided as
//! leader and how long each took — from the old holder's last lease renewal this
//! leader saw (the latest moment the service is known to have run there) to the new
//! holder's report that it runs, the outage's upper bound. Read at scrape time from the
//! node's view: Raft term and role, quorum, nodes up, each service's state per node,
//! certificate days left.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Seconds buckets for failovers (the defaults put the median near 2 s).
const FAILOVER_BUCKETS: [f64; 10] = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0, 30.0];
/// Seconds buckets for lease renewals (a renewal takes a heartbeat round).
const RENEWAL_BUCKETS: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FenceLabels {
    node: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorageLabels {
    storage: String,
    node: String,
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
    node: String,
    state: String,
}

/// A failover decided by this leader whose new holder has not reported yet.
#[derive(Debug)]
struct Pending {
    service: String,
    from: String,
    to: String,
    since: Instant,
}

/// How many completed failovers the leader remembers for `status`.
const RECENT_FAILOVERS: usize = 20;

/// The agent's metrics.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    leader_changes: Counter,
    renewals: Counter,
    renewal_misses: Counter,
    renewal_seconds: Option<Histogram>,
    failovers: Counter,
    failover_seconds: Option<Histogram>,
    commit_seconds: Option<Histogram>,
    restarts: Family<ServiceLabel, Counter>,
    power_fences: Family<FenceLabels, Counter>,
    pending: std::sync::Mutex<Vec<Pending>>,
    recent: std::sync::Mutex<std::collections::VecDeque<quorate_api::FailoverStatus>>,
    last_leader: std::sync::Mutex<Option<u64>>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            renewal_seconds: Some(Histogram::new(RENEWAL_BUCKETS)),
            failover_seconds: Some(Histogram::new(FAILOVER_BUCKETS)),
            commit_seconds: Some(Histogram::new(RENEWAL_BUCKETS)),
            ..Self::default()
        }
    }

    /// A renewal of this node's lease ended: granted or not, after `took`.
    pub(crate) fn renewal(&self, granted: bool, took: Duration) {
        self.renewals.inc();
        if !granted {
            self.renewal_misses.inc();
        }
        if let Some(h) = &self.renewal_seconds {
            h.observe(took.as_secs_f64());
        }
    }

    /// A write through Raft (a placement or an operator's change) took `took`.
    pub(crate) fn commit(&self, took: Duration) {
        if let Some(h) = &self.commit_seconds {
            h.observe(took.as_secs_f64());
        }
    }

    /// This node restarted `service` (a start within its restart window after the
    /// first, as the restart budget counts them).
    pub(crate) fn restart(&self, service: &str) {
        self.restarts
            .get_or_create(&ServiceLabel {
                service: service.to_owned(),
            })
            .inc();
    }

    /// A run of the spec's fence_command for `node` ended (`ok`: exit 0); the counter,
    /// for the task that waits for the command.
    pub(crate) fn power_fenced(&self) -> impl Fn(&str, bool) + Send + 'static {
        let family = self.power_fences.clone();
        move |node, ok| {
            family
                .get_or_create(&FenceLabels {
                    node: node.to_owned(),
                    result: if ok { "ok" } else { "failed" }.to_owned(),
                })
                .inc();
        }
    }

    /// The leader this node sees (Raft id), to count changes.
    pub(crate) fn saw_leader(&self, leader: Option<u64>) {
        let Some(leader) = leader else { return };
        if let Ok(mut last) = self.last_leader.lock() {
            if last.is_some_and(|l| l != leader) {
                self.leader_changes.inc();
            }
            *last = Some(leader);
        }
    }

    /// This leader committed a move of `service` from a down node to `to`; the old
    /// holder was last known to run it at `since` (timed only when known).
    pub(crate) fn failover_decided(
        &self,
        service: &str,
        from: &str,
        to: &str,
        since: Option<Instant>,
    ) {
        self.failovers.inc();
        let Some(since) = since else { return };
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|x| x.service != service);
            p.push(Pending {
                service: service.to_owned(),
                from: from.to_owned(),
                to: to.to_owned(),
                since,
            });
        }
    }

    /// Observes the duration of every pending failover whose new holder now reports
    /// the service running (`running(service, node)`); forgets those older than a
    /// minute (moved again, or this node stopped leading).
    pub(crate) fn settle_failovers(&self, running: impl Fn(&str, &str) -> bool) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        pending.retain(|p| {
            if running(&p.service, &p.to) {
                let seconds = p.since.elapsed().as_secs_f64();
                if let Some(h) = &self.failover_seconds {
                    h.observe(seconds);
                }
                if let Ok(mut recent) = self.recent.lock() {
                    recent.push_back(quorate_api::FailoverStatus {
                        service: p.service.clone(),
                        from: p.from.clone(),
                        to: p.to.clone(),
                        seconds,
                        at_ms: crate::cluster::now_ms(),
                    });
                    while recent.len() > RECENT_FAILOVERS {
                        recent.pop_front();
                    }
                }
                return false;
            }
            p.since.elapsed() < Duration::from_secs(60)
        });
    }

    /// The latest completed failovers, oldest first.
    pub(crate) fn recent_failovers(&self) -> Vec<quorate_api::FailoverStatus> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether a failover waits for its new holder's report.
    pub(crate) fn failovers_pending(&self) -> bool {
        self.pending.lock().is_ok_and(|p| !p.is_empty())
    }
}

/// What is read at scrape time.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) term: u64,
    pub(crate) leader: bool,
    pub(crate) quorum: bool,
    pub(crate) spec_version: u64,
    pub(crate) nodes_up: Vec<(String, bool)>,
    pub(crate) services: Vec<(String, String, String)>,
    pub(crate) certificate_days: Vec<(String, i64)>,
    /// (storage, node, health report) for every replica's last report.
    pub(crate) storage: Vec<(String, String, String)>,
}

/// The Prometheus text of `metrics` and `now`.
pub(crate) fn encode(metrics: &Metrics, now: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("quorate");
    let gauge = |v: i64| {
        let g: Gauge<i64, std::sync::atomic::AtomicI64> = Gauge::default();
        g.set(v);
        g
    };
    registry.register(
        "raft_term",
        "Raft term this node is in",
        gauge(i64::try_from(now.term).unwrap_or(i64::MAX)),
    );
    registry.register(
        "raft_leader",
        "1 when this node leads",
        gauge(i64::from(now.leader)),
    );
    registry.register(
        "quorum",
        "1 when this node's view has a leader confirmed by a majority",
        gauge(i64::from(now.quorum)),
    );
    registry.register(
        "spec_version",
        "Applied spec version",
        gauge(i64::try_from(now.spec_version).unwrap_or(i64::MAX)),
    );
    let up = Family::<NodeLabel, Gauge>::default();
    for (node, is_up) in &now.nodes_up {
        up.get_or_create(&NodeLabel { node: node.clone() })
            .set(i64::from(*is_up));
    }
    registry.register("node_up", "1 when the node is up (its lease is live)", up);
    let services = Family::<ServiceLabels, Gauge>::default();
    for (service, node, state) in &now.services {
        services
            .get_or_create(&ServiceLabels {
                service: service.clone(),
                node: node.clone(),
                state: state.clone(),
            })
            .set(1);
    }
    registry.register(
        "service_state",
        "1 for each service's state on its node",
        services,
    );
    let days = Family::<NodeLabel, Gauge>::default();
    for (node, d) in &now.certificate_days {
        days.get_or_create(&NodeLabel { node: node.clone() })
            .set(*d);
    }
    registry.register(
        "certificate_days_left",
        "Days until the node's certificate expires",
        days,
    );
    let storage = Family::<StorageLabels, Gauge>::default();
    for (name, node, health) in &now.storage {
        storage
            .get_or_create(&StorageLabels {
                storage: name.clone(),
                node: node.clone(),
                health: health.clone(),
            })
            .set(1);
    }
    registry.register(
        "storage_health",
        "1 for each replica's last health report",
        storage,
    );
    registry.register(
        "leader_changes",
        "Leader changes this node saw",
        metrics.leader_changes.clone(),
    );
    registry.register(
        "lease_renewals",
        "Renewals of this node's lease",
        metrics.renewals.clone(),
    );
    registry.register(
        "lease_renewal_misses",
        "Renewals of this node's lease that were not granted",
        metrics.renewal_misses.clone(),
    );
    if let Some(h) = &metrics.renewal_seconds {
        registry.register(
            "lease_renewal_seconds",
            "How long a renewal of this node's lease took",
            h.clone(),
        );
    }
    registry.register(
        "failovers",
        "Services this node, as leader, moved away from a down node",
        metrics.failovers.clone(),
    );
    registry.register(
        "restarts",
        "Restarts of a service on this node (as its restart budget counts them)",
        metrics.restarts.clone(),
    );
    registry.register(
        "power_fence_runs",
        "Runs of the spec's fence_command this node made as leader, by result",
        metrics.power_fences.clone(),
    );
    if let Some(h) = &metrics.commit_seconds {
        registry.register(
            "commit_seconds",
            "How long a write through Raft (placements, operators' changes) took on this node",
            h.clone(),
        );
    }
    if let Some(h) = &metrics.failover_seconds {
        registry.register("failover_seconds", "From the old holder's last lease renewal to the new holder reporting the service running", h.clone());
    }
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
