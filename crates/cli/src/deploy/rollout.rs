//! The rollout: copy every closure first (in parallel; nothing is switched until every
//! node has its closure), then one node at a time: drain (its services move away and
//! the drain is acknowledged), switch, wait until its agent is back, run the health
//! check, undrain, wait until the services are running again. A node that does not
//! come back healthy is switched back to the generation it had, undrained, and the
//! rollout stops there.
//!
//! Every phase is written to a state file (atomically) before it starts, so a deploy
//! that is killed half-way never leaves a node drained without a record: `--resume`
//! continues from the node it was at, `--abort` switches that node back and undrains
//! it. A lock on the state file keeps two deploys from running at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quorate_api::{ControlReply, ControlRequest, StatusReport};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::remote::{Remote, Target};
use crate::cluster_commands::AgentSocket;
use crate::exit::Exit;

/// Where a node is in the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Pending,
    Draining,
    Switching,
    Rejoining,
    Checking,
    Undraining,
    Done,
    RollingBack,
    RolledBack,
    /// Stopped on the new generation, drained, for inspection (`--auto-rollback
    /// false`, or a rollback that failed).
    Failed,
}

/// One node of the rollout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRollout {
    pub node: String,
    pub address: String,
    pub store_path: String,
    /// The generation before the switch (what a rollback returns to).
    pub previous: Option<String>,
    pub phase: Phase,
    #[serde(default)]
    pub error: Option<String>,
    /// How long its step took, in seconds.
    #[serde(default)]
    pub seconds: Option<f64>,
}

impl NodeRollout {
    /// The node as `--exec` and `--copy-to` templates see it.
    #[must_use]
    pub fn target(&self) -> Target<'_> {
        Target {
            node: &self.node,
            address: &self.address,
        }
    }
}

/// The whole rollout, as the state file keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rollout {
    pub cluster: String,
    pub remote: Remote,
    /// `switch-to-configuration` action.
    pub action: String,
    /// Health check run on a node after its switch.
    pub check: Option<String>,
    /// How long a node may take to come back healthy, in seconds.
    pub timeout_secs: u64,
    pub auto_rollback: bool,
    /// The services running when the rollout began: each must run again after each
    /// step.
    pub services: Vec<String>,
    /// In rollout order.
    pub nodes: Vec<NodeRollout>,
}

/// Prints progress: one line per event on stderr, or JSON lines on stdout.
pub struct Reporter {
    pub json: bool,
    started: Instant,
}

impl Reporter {
    #[must_use]
    pub fn new(json: bool) -> Self {
        Self {
            json,
            started: Instant::now(),
        }
    }

    /// `event` for `node` with `fields`; `text` is the human line.
    pub fn event(&self, event: &str, node: Option<&str>, fields: Value, text: &str) {
        if self.json {
            let mut line = json!({
                "event": event,
                "node": node,
                "elapsed_s": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            });
            if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
                line.extend(fields);
            }
            println!("{line}");
        } else {
            let at = self.started.elapsed().as_secs_f64();
            match node {
                Some(n) => eprintln!("[{at:6.1}s] {n}: {text}"),
                None => eprintln!("[{at:6.1}s] {text}"),
            }
        }
    }
}

/// The state file and the lock that keeps it to one deploy at a time.
pub struct StateFile {
    path: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl StateFile {
    /// Takes the lock next to `path`.
    ///
    /// # Errors
    /// Another deploy holds it, or the file cannot be made.
    pub fn lock(path: &Path) -> Result<Self, String> {
        let lock_path = path.with_extension("lock");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| {
                format!(
                    "another `quorate deploy` is running (it holds {})",
                    lock_path.display()
                )
            })?;
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The rollout in progress, if any.
    ///
    /// # Errors
    /// The file exists but cannot be read.
    pub fn load(&self) -> Result<Option<Rollout>, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                format!(
                    "{} is not a rollout state ({e}); move it away if no rollout is in progress",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display())),
        }
    }

    fn save(&self, rollout: &Rollout) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(rollout).map_err(|e| e.to_string())?;
        quorate_files::write_atomic(&self.path, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Talks to the local agent without printing: a failed call is retried by the
/// callers that wait (the agent may be the one restarting).
struct Agent<'a> {
    socket: &'a AgentSocket,
    runtime: tokio::runtime::Runtime,
}

impl Agent<'_> {
    fn call(&self, request: &ControlRequest) -> Result<ControlReply, String> {
        let path = self.socket.path()?;
        self.runtime
            .block_on(quorate_api::call(&path, request, Duration::from_secs(15)))
            .map_err(|e| e.to_string())
    }

    fn status(&self) -> Result<StatusReport, String> {
        match self.call(&ControlRequest::Status { local: false })? {
            ControlReply::Status(s) => Ok(*s),
            ControlReply::Refused { message, .. } => Err(message),
            _ => Err("unexpected reply from the agent".into()),
        }
    }

    fn set_admin(&self, node: &str, state: &str) -> Result<(), String> {
        match self.call(&ControlRequest::SetAdmin {
            node: node.to_owned(),
            state: state.to_owned(),
        })? {
            ControlReply::Done { .. } => Ok(()),
            ControlReply::Refused { message, .. } => Err(message),
            _ => Err("unexpected reply from the agent".into()),
        }
    }

    /// Polls the status until `done` says yes (`Ok(true)`) or fails (`Err`), or
    /// `limit` passes; a status that cannot be read is retried. `Err` names what was
    /// still missing.
    fn wait(
        &self,
        limit: Duration,
        mut done: impl FnMut(&StatusReport) -> Result<bool, String>,
        what: &str,
    ) -> Result<(), String> {
        let start = Instant::now();
        let mut last: String;
        loop {
            match self.status() {
                Ok(s) => match done(&s) {
                    Ok(true) => return Ok(()),
                    Ok(false) => last = "not yet".into(),
                    Err(why) => last = why,
                },
                Err(e) => last = e,
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "{what} did not happen within {} s ({last})",
                    limit.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn node_state<'a>(status: &'a StatusReport, node: &str) -> &'a str {
    status
        .nodes
        .iter()
        .find(|n| n.name == node)
        .map_or("unknown", |n| n.state.as_str())
}

/// Runs (or resumes) `rollout`. The caller has checked the plan.
pub fn run(
    socket: &AgentSocket,
    state: &StateFile,
    mut rollout: Rollout,
    parallel_copy: usize,
    report: &Reporter,
) -> Exit {
    let Some(runtime) = crate::cluster_commands::runtime() else {
        return Exit::Invalid;
    };
    let agent = Agent { socket, runtime };
    if let Err(e) = state.save(&rollout) {
        report.event("error", None, json!({"error": e}), &e);
        return Exit::Invalid;
    }
    // 1. Every closure to every node that still needs it, before anything switches.
    if let Err(e) = copy_all(&rollout, parallel_copy, report) {
        let message = format!("{e}; nothing was switched");
        report.event("error", None, json!({"error": message}), &message);
        if rollout.nodes.iter().all(|n| n.phase == Phase::Pending) {
            state.remove();
        }
        return Exit::Invalid;
    }
    // 2. One node at a time.
    for i in 0..rollout.nodes.len() {
        if matches!(rollout.nodes[i].phase, Phase::Done) {
            continue;
        }
        let started = Instant::now();
        let outcome = if rollout.nodes[i].phase == Phase::RollingBack {
            Err("a rollback was interrupted".to_owned())
        } else {
            step(&agent, state, &mut rollout, i, report)
        };
        match outcome {
            Ok(()) => {
                let n = &mut rollout.nodes[i];
                n.phase = Phase::Done;
                n.seconds = Some(started.elapsed().as_secs_f64());
                let _ = state.save(&rollout);
                let n = &rollout.nodes[i];
                report.event(
                    "done",
                    Some(&n.node),
                    json!({"seconds": n.seconds, "store_path": n.store_path}),
                    &format!(
                        "done in {:.1} s, on {}",
                        started.elapsed().as_secs_f64(),
                        n.store_path
                    ),
                );
            }
            Err(why) if rollout.nodes[i].phase == Phase::Pending => {
                // Refused before its drain (no quorum, a drain that would strand a
                // service): nothing was done to it, so there is nothing to roll back.
                let node = rollout.nodes[i].node.clone();
                let _ = state.save(&rollout);
                report.event(
                    "stopped",
                    Some(&node),
                    json!({"error": why, "state_file": state.path()}),
                    &format!("stopped before touching it: {why}; `quorate deploy --resume` continues once that is fixed, `--abort` ends the rollout"),
                );
                summary(&rollout, report);
                return Exit::Invalid;
            }
            Err(why) => {
                rollout.nodes[i].error = Some(why.clone());
                report.event(
                    "failed",
                    Some(&rollout.nodes[i].node.clone()),
                    json!({"error": why}),
                    &format!("failed: {why}"),
                );
                let exit = if rollout.auto_rollback {
                    roll_back(&agent, state, &mut rollout, i, report)
                } else {
                    rollout.nodes[i].phase = Phase::Failed;
                    let _ = state.save(&rollout);
                    let node = rollout.nodes[i].node.clone();
                    report.event(
                        "stopped",
                        Some(&node),
                        json!({"state_file": state.path()}),
                        "left drained on the new generation for inspection: `quorate deploy --resume` retries it, `quorate deploy --abort` switches it back and undrains it",
                    );
                    Exit::Invalid
                };
                summary(&rollout, report);
                return exit;
            }
        }
    }
    state.remove();
    summary(&rollout, report);
    Exit::Ok
}

/// Copies each node's closure, `parallel` at a time, reporting progress.
fn copy_all(rollout: &Rollout, parallel: usize, report: &Reporter) -> Result<(), String> {
    let jobs: Vec<&NodeRollout> = rollout
        .nodes
        .iter()
        .filter(|n| n.phase != Phase::Done)
        .collect();
    if jobs.is_empty() {
        return Ok(());
    }
    let queue = Mutex::new(jobs.into_iter().collect::<std::collections::VecDeque<_>>());
    let (tx, rx) = mpsc::channel::<(String, Result<Option<(u64, u64)>, String>)>();
    let started = Instant::now();
    let mut failures = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            let tx = tx.clone();
            let queue = &queue;
            let remote = &rollout.remote;
            scope.spawn(move || {
                while let Some(job) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
                    let target = job.target();
                    let _ = tx.send((job.node.clone(), Ok(Some((0, 0)))));
                    let result = remote.copy(&target, &job.store_path, |done, total| {
                        let _ = tx.send((job.node.clone(), Ok(Some((done, total)))));
                    });
                    let _ = tx.send((job.node.clone(), result.map(|()| None)));
                }
            });
        }
        drop(tx);
        let mut percent: BTreeMap<String, u64> = BTreeMap::new();
        for (node, event) in rx {
            match event {
                Ok(Some((0, 0))) => report.event(
                    "copy",
                    Some(&node),
                    json!({"phase": "copying", "paths_done": 0, "paths_total": null}),
                    "copying its closure",
                ),
                Ok(Some((done, total))) => {
                    let p = (done * 100).checked_div(total).unwrap_or(0);
                    // One line per 25 %, and the last path.
                    if percent.get(&node).is_none_or(|&old| p / 25 > old / 25) || done == total {
                        percent.insert(node.clone(), p);
                        report.event(
                            "copy",
                            Some(&node),
                            json!({"phase": "copying", "paths_done": done, "paths_total": total}),
                            &format!("copying: {done}/{total} paths ({p} %)"),
                        );
                    }
                }
                Ok(None) => report.event(
                    "copied",
                    Some(&node),
                    json!({"seconds": started.elapsed().as_secs_f64()}),
                    &format!("closure copied ({:.1} s)", started.elapsed().as_secs_f64()),
                ),
                Err(e) => failures.push(e),
            }
        }
    });
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// The checks before a node is drained: quorum, the voters that remain, a drain that
/// strands nothing.
fn may_drain(agent: &Agent<'_>, node: &str) -> Result<(), String> {
    let status = agent.status()?;
    if !status.quorum {
        return Err("the cluster has no quorum: the rollout stops before draining anything".into());
    }
    let voters: Vec<_> = status.nodes.iter().filter(|n| n.voter).collect();
    let others_up = voters
        .iter()
        .filter(|n| n.name != node && n.state != "down")
        .count();
    if voters.iter().any(|n| n.name == node) && voters.len() > 1 && others_up * 2 <= voters.len() {
        return Err(format!(
            "only {others_up} of {} voters besides {node} are up: switching it could cost the quorum",
            voters.len()
        ));
    }
    let view = match agent.call(&ControlRequest::SchedulerInput)? {
        ControlReply::SchedulerInput(v) => *v,
        _ => return Err("unexpected reply from the agent".into()),
    };
    let sim = quorate_api::simulate::simulate(&view, &[], &[node.to_owned()]);
    let report = quorate_api::simulate::report(&view, &sim, &[], &[node.to_owned()], true);
    if let Some(stuck) = report["unplaceable"].as_array().and_then(|u| u.first()) {
        return Err(format!(
            "draining {node} would leave {} nowhere to run",
            stuck.as_str().unwrap_or("a service")
        ));
    }
    Ok(())
}

fn set_phase(state: &StateFile, rollout: &mut Rollout, i: usize, phase: Phase, report: &Reporter) {
    rollout.nodes[i].phase = phase;
    let _ = state.save(rollout);
    let node = rollout.nodes[i].node.clone();
    let text = serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    report.event("phase", Some(&node), json!({"phase": text}), &text);
}

/// Drains node `node` and waits until nothing runs there.
fn drain(agent: &Agent<'_>, node: &str, limit: Duration) -> Result<(), String> {
    agent.set_admin(node, "draining")?;
    agent.wait(
        limit,
        |s| {
            let left = crate::cluster_commands::still_on(s, node);
            if left.is_empty() {
                Ok(true)
            } else {
                Err(format!("still on {node}: {}", left.join(", ")))
            }
        },
        &format!("the drain of {node}"),
    )
}

/// Waits until the node is reachable again: three readings in a row, a second apart
/// at least, that it is not down.
fn rejoin(agent: &Agent<'_>, node: &str, limit: Duration) -> Result<(), String> {
    let mut since: Option<Instant> = None;
    agent.wait(
        limit,
        |s| {
            if node_state(s, node) == "down" || node_state(s, node) == "unknown" {
                since = None;
                return Err(format!("{node} is {}", node_state(s, node)));
            }
            let first = *since.get_or_insert_with(Instant::now);
            Ok(first.elapsed() >= Duration::from_secs(1))
        },
        &format!("{node}'s agent rejoining"),
    )
}

/// After the undrain: every service that ran when the rollout began runs again, none
/// is failed, and nothing is starting on `node` any more.
fn settle(
    agent: &Agent<'_>,
    node: &str,
    services: &[String],
    limit: Duration,
) -> Result<(), String> {
    let wanted: BTreeSet<&str> = services.iter().map(String::as_str).collect();
    agent.wait(
        limit,
        |s| {
            let bad: Vec<String> = s
                .services
                .iter()
                .filter(|v| {
                    v.state != "running"
                        && (wanted.contains(v.name.as_str()) || v.node.as_deref() == Some(node))
                })
                .map(|v| {
                    format!(
                        "{} {}{}",
                        v.name,
                        v.state,
                        v.node
                            .as_deref()
                            .map(|n| format!(" on {n}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            if bad.is_empty() {
                Ok(true)
            } else {
                Err(bad.join(", "))
            }
        },
        "every service running again",
    )
}

/// One node's step: drain, switch, rejoin, check, undrain, settle.
fn step(
    agent: &Agent<'_>,
    state: &StateFile,
    rollout: &mut Rollout,
    i: usize,
    report: &Reporter,
) -> Result<(), String> {
    let limit = Duration::from_secs(rollout.timeout_secs);
    let n = rollout.nodes[i].clone();
    let target = n.target();
    may_drain(agent, &n.node)?;
    set_phase(state, rollout, i, Phase::Draining, report);
    drain(agent, &n.node, limit)?;
    set_phase(state, rollout, i, Phase::Switching, report);
    rollout
        .remote
        .switch(&target, &n.store_path, &rollout.action, limit)?;
    set_phase(state, rollout, i, Phase::Rejoining, report);
    rejoin(agent, &n.node, limit)?;
    if let Some(check) = rollout.check.clone() {
        set_phase(state, rollout, i, Phase::Checking, report);
        rollout
            .remote
            .check(&target, &check, limit)
            .map_err(|e| format!("health check `{check}` failed: {e}"))?;
    }
    set_phase(state, rollout, i, Phase::Undraining, report);
    agent.set_admin(&n.node, "active")?;
    settle(agent, &n.node, &rollout.services, limit)
}

/// Switches node `i` back to its previous generation and undrains it; the rollout
/// stops (exit 1) either way.
fn roll_back(
    agent: &Agent<'_>,
    state: &StateFile,
    rollout: &mut Rollout,
    i: usize,
    report: &Reporter,
) -> Exit {
    let n = rollout.nodes[i].clone();
    let Some(previous) = n.previous.clone() else {
        rollout.nodes[i].phase = Phase::Failed;
        let _ = state.save(rollout);
        report.event(
            "stopped",
            Some(&n.node),
            json!({"error": "no previous generation"}),
            "it had no previous generation to return to: left drained; fix it, then `quorate deploy --resume` (retry) or `--abort` (undrain)",
        );
        return Exit::Invalid;
    };
    match revert(agent, state, rollout, i, &previous, report) {
        Ok(()) => {
            rollout.nodes[i].phase = Phase::RolledBack;
            state.remove();
            report.event(
                "rolled-back",
                Some(&n.node),
                json!({"store_path": previous}),
                &format!("rolled back to {previous} and undrained; the rollout stopped here"),
            );
        }
        Err(e) => {
            rollout.nodes[i].phase = Phase::Failed;
            rollout.nodes[i].error = Some(format!(
                "{}; the rollback failed too: {e}",
                n.error.unwrap_or_default()
            ));
            let _ = state.save(rollout);
            report.event(
                "stopped",
                Some(&n.node),
                json!({"error": e}),
                &format!(
                    "the rollback failed ({e}): left drained; `quorate deploy --abort` tries again"
                ),
            );
        }
    }
    Exit::Invalid
}

/// Drains node `i`, switches it to `previous`, waits until it is back, undrains it.
fn revert(
    agent: &Agent<'_>,
    state: &StateFile,
    rollout: &mut Rollout,
    i: usize,
    previous: &str,
    report: &Reporter,
) -> Result<(), String> {
    let limit = Duration::from_secs(rollout.timeout_secs);
    let n = rollout.nodes[i].clone();
    let target = n.target();
    set_phase(state, rollout, i, Phase::RollingBack, report);
    // It may have been undrained already (a failure after the undrain).
    agent.set_admin(&n.node, "draining")?;
    drain(agent, &n.node, limit)?;
    rollout
        .remote
        .switch(&target, previous, &rollout.action, limit)?;
    rejoin(agent, &n.node, limit)?;
    agent.set_admin(&n.node, "active")?;
    settle(agent, &n.node, &rollout.services, limit)
}

/// `quorate deploy --abort`: the node in progress goes back to its previous
/// generation (when it was switched) and is undrained; nodes already done stay.
pub fn abort(
    socket: &AgentSocket,
    state: &StateFile,
    mut rollout: Rollout,
    report: &Reporter,
) -> Exit {
    let Some(runtime) = crate::cluster_commands::runtime() else {
        return Exit::Invalid;
    };
    let agent = Agent { socket, runtime };
    let mut exit = Exit::Ok;
    for i in 0..rollout.nodes.len() {
        let n = rollout.nodes[i].clone();
        let result = match n.phase {
            Phase::Pending | Phase::Done | Phase::RolledBack => continue,
            Phase::Draining => agent.set_admin(&n.node, "active"),
            _ => match &n.previous {
                Some(previous) => revert(&agent, state, &mut rollout, i, previous, report),
                None => Err("it had no previous generation to return to".to_owned()),
            },
        };
        match result {
            Ok(()) => {
                rollout.nodes[i].phase = Phase::RolledBack;
                report.event(
                    "rolled-back",
                    Some(&n.node),
                    json!({"store_path": n.previous}),
                    "back on its previous generation and undrained",
                );
            }
            Err(e) => {
                report.event(
                    "failed",
                    Some(&n.node),
                    json!({"error": e}),
                    &format!("abort failed: {e}"),
                );
                exit = Exit::Invalid;
            }
        }
    }
    if exit == Exit::Ok {
        state.remove();
    } else {
        let _ = state.save(&rollout);
    }
    summary(&rollout, report);
    exit
}

/// The final table (human) or a `summary` event (JSON).
fn summary(rollout: &Rollout, report: &Reporter) {
    let nodes: Vec<Value> = rollout
        .nodes
        .iter()
        .map(|n| {
            json!({"node": n.node, "phase": n.phase, "store_path": n.store_path,
                   "previous": n.previous, "seconds": n.seconds, "error": n.error})
        })
        .collect();
    if report.json {
        report.event("summary", None, json!({"nodes": nodes}), "");
        return;
    }
    println!(
        "{:<12} {:<12} {:>8}  GENERATION",
        "NODE", "RESULT", "SECONDS"
    );
    for n in &rollout.nodes {
        let phase = serde_json::to_value(n.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let generation = if n.phase == Phase::RolledBack || n.phase == Phase::Pending {
            n.previous.as_deref().unwrap_or("-")
        } else {
            &n.store_path
        };
        println!(
            "{:<12} {:<12} {:>8}  {generation}",
            n.node,
            phase,
            n.seconds.map_or("-".into(), |s| format!("{s:.1}")),
        );
        if let Some(e) = &n.error {
            println!("{:<12} {e}", "");
        }
    }
}
