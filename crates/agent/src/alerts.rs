//! Alerts: the spec's `[alerts]` command, run for cluster events of the kinds it
//! chose, one event at a time and in order, with the event as JSON on stdin and in
//! `QUORATE_EVENT_*` variables, each run bounded by its timeout and retried.
//!
//! The leader alerts: every new event of the replicated log (failover, placement,
//! operator, spec), and what only it observes — a node's lease expiring or coming
//! back (`node`), a service reported failed (`service`), its own election (`quorum`).
//! A leader that loses quorum says so too (the one alert a non-leader sends). A new
//! leader starts from the log's end: history was the previous leader's to alert.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use quorate_scheduler::NodeState;
use tokio::io::AsyncWriteExt;

use crate::Node;

/// One alert to deliver.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Alert {
    /// `failover`, `placement`, `operator`, `spec`, `node`, `service`, `quorum` or
    /// `fence`.
    kind: String,
    /// What happened.
    what: String,
    /// Who did it or saw it.
    by: String,
    /// Wall clock, ms since the epoch.
    at_ms: u64,
    /// The event's sequence number in the replicated log, when it is from there.
    seq: Option<u64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// What the leader watches between two looks.
#[derive(Default)]
struct Seen {
    cursor: u64,
    nodes: BTreeMap<String, NodeState>,
    failed: BTreeSet<String>,
}

/// Watches for events and hands them to the delivery task, forever.
pub(crate) async fn run_forever(node: Arc<Node>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Alert>(1024);
    tokio::spawn(deliver(node.clone(), rx));
    let mut was_leader = false;
    let mut seen = Seen::default();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let leader = node.is_leader();
        let mut out = Vec::new();
        let mut looked = true;
        if !leader && was_leader && node.consensus.leader().is_none() {
            out.push(Alert {
                kind: "quorum".into(),
                what: format!(
                    "quorum lost as seen by {}: it no longer leads and knows no leader",
                    node.name
                ),
                by: node.name.clone(),
                at_ms: now_ms(),
                seq: None,
            });
        }
        if leader {
            let mut fenced = node
                .power_fencing
                .lock()
                .map(|mut f| f.take_outcomes())
                .unwrap_or_default();
            fenced.extend(
                node.ceph_fencing
                    .lock()
                    .map(|mut f| f.ledger.take_outcomes())
                    .unwrap_or_default(),
            );
            out.extend(fenced.into_iter().map(|(_, what)| Alert {
                kind: "fence".into(),
                what,
                by: node.name.clone(),
                at_ms: now_ms(),
                seq: None,
            }));
            let first = !was_leader;
            // Before the spec is applied there is nothing to look at (nor an alert
            // command): the first look, with the election alert, waits for it.
            match node
                .consensus
                .with_state(|st| {
                    st.applied
                        .is_some()
                        .then(|| look(&node, st, &mut seen, first))
                })
                .await
            {
                Some(alerts) => out.extend(alerts),
                None => looked = false,
            }
        }
        was_leader = leader && looked;
        for alert in out {
            if tx.try_send(alert).is_err() {
                tracing::warn!("alert queue full: an alert was dropped");
            }
        }
    }
}

/// New alerts since the last look; on the first look as leader, only the election.
fn look(
    node: &Node,
    st: &quorate_consensus::ClusterState,
    seen: &mut Seen,
    first: bool,
) -> Vec<Alert> {
    let Some(applied) = st.applied.as_ref() else {
        return Vec::new();
    };
    let spec = &applied.spec;
    let nodes = node.node_states(spec, &st.admin);
    let failed: BTreeSet<String> = st
        .observed
        .iter()
        .filter(|(_, o)| o.state == "failed")
        .map(|(s, o)| format!("{s} on {}", o.node))
        .collect();
    let mut out = Vec::new();
    let alert = |kind: &str, what: String| Alert {
        kind: kind.into(),
        what,
        by: node.name.clone(),
        at_ms: now_ms(),
        seq: None,
    };
    if first {
        let term = node.consensus.status().term;
        out.push(alert(
            "quorum",
            format!(
                "{} leads the cluster (term {term}): a majority answers",
                node.name
            ),
        ));
    } else {
        for e in st.events.iter().filter(|e| e.seq >= seen.cursor) {
            out.push(Alert {
                kind: if e.kind.is_empty() {
                    "operator".into()
                } else {
                    e.kind.clone()
                },
                what: e.what.clone(),
                by: e.by.clone(),
                at_ms: e.at_ms,
                seq: Some(e.seq),
            });
        }
        for (name, now) in &nodes {
            match (seen.nodes.get(name), now) {
                (Some(NodeState::Down), s) if *s != NodeState::Down => {
                    out.push(alert(
                        "node",
                        format!("{name} is back (its lease is renewed)"),
                    ));
                }
                (Some(before), NodeState::Down) if *before != NodeState::Down => {
                    out.push(alert("node", format!("{name} is down (its lease expired)")));
                }
                _ => {}
            }
        }
        for f in failed.difference(&seen.failed) {
            out.push(alert(
                "service",
                format!("{f} failed (its restart budget is spent there)"),
            ));
        }
    }
    seen.cursor = st.next_event;
    seen.nodes = nodes;
    seen.failed = failed;
    out
}

/// Runs the spec's command for each alert of a kind it wants, in order.
async fn deliver(node: Arc<Node>, mut rx: tokio::sync::mpsc::Receiver<Alert>) {
    while let Some(alert) = rx.recv().await {
        let (config, cluster) = node
            .consensus
            .with_state(|st| {
                let applied = st.applied.as_ref();
                (
                    applied.and_then(|a| a.spec.alerts.clone()),
                    applied
                        .map(|a| a.spec.cluster.name.clone())
                        .unwrap_or_default(),
                )
            })
            .await;
        let Some(config) = config.filter(|c| c.wants(&alert.kind)) else {
            continue;
        };
        let mut pause = Duration::from_secs(1);
        for attempt in 0..=config.retries {
            match run_once(&config, &cluster, &node.name, &alert).await {
                Ok(()) => break,
                Err(e) if attempt < config.retries => {
                    tracing::warn!(
                        kind = alert.kind,
                        "alert command failed ({e}); retrying in {pause:?}"
                    );
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => tracing::error!(
                    kind = alert.kind,
                    what = alert.what,
                    "alert command failed for good: {e}"
                ),
            }
        }
    }
}

async fn run_once(
    config: &quorate_spec::Alerts,
    cluster: &str,
    me: &str,
    alert: &Alert,
) -> Result<(), String> {
    let Some((program, args)) = config.command.split_first() else {
        return Err("no command".into());
    };
    let mut body = serde_json::to_value(alert).map_err(|e| e.to_string())?;
    body["cluster"] = cluster.into();
    body["alerted_by"] = me.into();
    let mut line = body.to_string();
    line.push('\n');
    let mut command = tokio::process::Command::new(program);
    quorate_drivers::without_service_manager_env(&mut command)
        .args(args)
        .env("QUORATE_CLUSTER", cluster)
        .env("QUORATE_EVENT_KIND", &alert.kind)
        .env("QUORATE_EVENT_WHAT", &alert.what)
        .env("QUORATE_EVENT_BY", &alert.by)
        .env("QUORATE_EVENT_AT_MS", alert.at_ms.to_string())
        .env(
            "QUORATE_EVENT_SEQ",
            alert.seq.map(|s| s.to_string()).unwrap_or_default(),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    let run = async {
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(line.as_bytes()).await;
        }
        let status = child.wait().await.map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("exited with {status}"))
        }
    };
    tokio::time::timeout(config.timeout.get(), run)
        .await
        .map_err(|_| format!("timed out after {}", config.timeout))?
}
