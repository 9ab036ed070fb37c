//! `quorate deploy --dry-run`: the plan of a rolling deploy, computed from the live
//! cluster before anything is copied or switched — the order (followers first, the
//! leader last, one node at a time), which services each drain moves where (the
//! leader's scheduler, as `simulate` runs it), and the closure to copy to each node.
//! Every check that can refuse the rollout runs here, so a bad input changes nothing:
//! a node not in the spec, a node that is down, a store path that does not exist, a
//! drain that would leave a service nowhere to run.
//!
//! Without `--dry-run` the same plan is then carried out by [`rollout`]: the closures
//! are copied to every node, then each node in turn is drained, switched, checked and
//! undrained, and rolled back when it does not come back healthy.

pub(crate) mod remote;
pub use remote::Remote;
mod rollout;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use quorate_api::{ControlReply, ControlRequest, SchedulerView, StatusReport};
use serde_json::{json, Value};

use crate::cluster_commands::AgentSocket;
use crate::exit::Exit;

/// What `quorate deploy` was asked.
#[derive(Debug)]
pub struct Request<'a> {
    /// Nodes to deploy (empty: every node of the applied spec).
    pub on: &'a [String],
    /// `NODE=PATH` or `PATH` (every node): the system closure to switch to.
    pub store_paths: &'a [String],
    /// The Nix store the paths are in (`nix path-info --store`); none: the local one.
    pub from_store: Option<&'a str>,
    /// Build each node's closure from this flake.
    pub flake: Option<&'a str>,
    /// Only the plan.
    pub dry_run: bool,
    /// JSON on stdout (the plan, or one event per line).
    pub json: bool,
    /// How the nodes are reached, and their system profile.
    pub remote: remote::Remote,
    /// `switch-to-configuration` action (`switch`, `test`, `boot`).
    pub action: &'a str,
    /// Health check run on each node after its switch.
    pub check: Option<&'a str>,
    /// How long a node may take to come back healthy.
    pub timeout: Duration,
    /// Switch a node that does not come back healthy back to its generation.
    pub auto_rollback: bool,
    /// How many nodes receive their closure at once.
    pub parallel_copy: usize,
    /// Continue the rollout recorded in the state file.
    pub resume: bool,
    /// Revert the node the recorded rollout was at, and end it.
    pub abort: bool,
    /// The state file [default: `<data-dir>/deploy.json`].
    pub state_file: Option<std::path::PathBuf>,
}

/// One step of the rollout: a node, the moves its drain makes, its closure.
#[derive(Debug)]
struct Step {
    node: String,
    leader: bool,
    moves: Vec<(String, Option<String>)>,
    store_path: Option<String>,
    closure_bytes: Option<u64>,
}

fn refuse(json: bool, message: &str) -> Exit {
    if json {
        println!("{}", json!({"ok": false, "error": message}));
    } else {
        eprintln!("error: {message}\n  nothing was copied or switched");
    }
    Exit::Invalid
}

/// The store path for each target node from `NODE=PATH` and `PATH` arguments.
fn paths_per_node(
    args: &[String],
    targets: &[String],
    known: &BTreeMap<String, ()>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for arg in args {
        match arg.split_once('=') {
            Some((node, path)) => {
                if !known.contains_key(node) {
                    return Err(format!(
                        "--store-path {arg}: `{node}` is not a node of the spec"
                    ));
                }
                out.insert(node.to_owned(), path.to_owned());
            }
            None => {
                for t in targets {
                    out.entry(t.clone()).or_insert_with(|| arg.clone());
                }
            }
        }
    }
    for path in out.values() {
        if !path.starts_with('/') {
            return Err(format!(
                "--store-path {path}: a store path is absolute (e.g. /nix/store/…-nixos-system-alpha)"
            ));
        }
    }
    Ok(out)
}

/// Builds every target's system (`FLAKE#nixosConfigurations.NODE.config.system.build.toplevel`)
/// in one `nix build` (Nix builds them in parallel); `NODE=PATH` for each.
fn build_from_flake(
    flake: &str,
    targets: &[String],
    store: Option<&str>,
    json: bool,
) -> Result<Vec<String>, String> {
    let installables: Vec<String> = targets
        .iter()
        .map(|t| format!("{flake}#nixosConfigurations.\"{t}\".config.system.build.toplevel"))
        .collect();
    if !json {
        eprintln!(
            "building {} system closure(s) from {flake} …",
            installables.len()
        );
    }
    let mut c = Command::new("nix");
    c.args([
        "--extra-experimental-features",
        "nix-command flakes",
        "build",
        "--no-link",
        "--json",
    ]);
    if let Some(store) = store {
        c.args(["--store", store]);
    }
    let out = c
        .args(&installables)
        .output()
        .map_err(|e| format!("cannot run `nix build` ({e}): install Nix"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        return Err(format!(
            "--flake {flake}: `nix build` failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        ));
    }
    let built: Vec<Value> = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("`nix build --json` printed no JSON: {e}"))?;
    targets
        .iter()
        .zip(&built)
        .map(|(t, b)| {
            b["outputs"]["out"]
                .as_str()
                .map(|p| format!("{t}={p}"))
                .ok_or_else(|| format!("`nix build` gave no output path for {t}: {b}"))
        })
        .collect()
}

/// The closure size of `path` (`nix path-info -S --json`), or why there is none.
fn closure_size(path: &str, store: Option<&str>) -> Result<u64, String> {
    let mut c = Command::new("nix");
    c.args([
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--json",
        "--closure-size",
    ]);
    if let Some(store) = store {
        c.args(["--store", store]);
    }
    let out = c.arg(path).output().map_err(|e| {
        format!(
            "cannot run `nix path-info` ({e}); install Nix, or leave --store-path out of a dry run"
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "store path {path} is not valid{}: {}",
            store.map(|s| format!(" in {s}")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let info: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("`nix path-info` printed no JSON: {e}"))?;
    // Nix 2.8 prints a list of objects; later versions an object keyed by path.
    let entry = info
        .as_array()
        .and_then(|a| a.first().cloned())
        .or_else(|| info.as_object().and_then(|o| o.values().next().cloned()))
        .unwrap_or_default();
    // A path the store does not hold: exit 0 and `"valid": false` (Nix 2.8).
    if entry["valid"] == false {
        return Err(format!(
            "store path {path} is not valid{}: build it or copy it there first",
            store.map(|s| format!(" in {s}")).unwrap_or_default()
        ));
    }
    entry["closureSize"]
        .as_u64()
        .ok_or_else(|| format!("`nix path-info` gave no closure size for {path}"))
}

/// The plan, or the reason the rollout is refused.
fn plan(
    status: &StatusReport,
    view: &SchedulerView,
    request: &Request<'_>,
) -> Result<Vec<Step>, String> {
    let known: BTreeMap<String, ()> = view.spec.nodes.keys().map(|n| (n.clone(), ())).collect();
    let targets: Vec<String> = if request.on.is_empty() {
        view.spec.nodes.keys().cloned().collect()
    } else {
        request.on.to_vec()
    };
    for t in &targets {
        if !known.contains_key(t) {
            return Err(format!(
                "`{t}` is not a node of the cluster's spec (nodes: {})",
                view.spec
                    .nodes
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let state = status
            .nodes
            .iter()
            .find(|n| n.name == *t)
            .map_or("unknown", |n| n.state.as_str());
        if state != "up" {
            return Err(format!(
                "`{t}` is {state}: a rollout starts only with every target up and reachable (bring it back, or leave it out with --on)"
            ));
        }
    }
    // Closures built from the flake first; `--store-path NODE=PATH` overrides them.
    let mut args = match request.flake {
        Some(flake) => build_from_flake(flake, &targets, request.from_store, request.json)?,
        None => Vec::new(),
    };
    args.extend(request.store_paths.iter().cloned());
    let paths = paths_per_node(&args, &targets, &known)?;
    // Followers first, the leader last: one election at most, at the very end.
    let leader = status.leader.clone();
    let mut order: Vec<String> = targets
        .iter()
        .filter(|t| Some(*t) != leader.as_ref())
        .cloned()
        .collect();
    order.extend(
        targets
            .iter()
            .filter(|t| Some(*t) == leader.as_ref())
            .cloned(),
    );
    let mut steps = Vec::new();
    for node in order {
        let sim = quorate_api::simulate::simulate(view, &[], std::slice::from_ref(&node));
        let report =
            quorate_api::simulate::report(view, &sim, &[], std::slice::from_ref(&node), true);
        if let Some(stuck) = report["unplaceable"].as_array().and_then(|u| u.first()) {
            return Err(format!(
                "draining {node} would leave {} nowhere to run: deploy it when another node can take it (or change the spec first)",
                stuck.as_str().unwrap_or("a service")
            ));
        }
        let moves = sim
            .after
            .iter()
            .filter(|(s, p)| sim.before[*s].node != p.node)
            .map(|(s, p)| (s.clone(), p.node.clone()))
            .collect();
        let store_path = paths.get(&node).cloned();
        let closure_bytes = match &store_path {
            Some(p) => Some(closure_size(p, request.from_store)?),
            None => None,
        };
        steps.push(Step {
            leader: Some(&node) == leader.as_ref(),
            node,
            moves,
            store_path,
            closure_bytes,
        });
    }
    Ok(steps)
}

/// `quorate deploy`
pub fn run(agent: &AgentSocket, request: &Request<'_>) -> Exit {
    if request.resume || request.abort {
        return continue_recorded(agent, request);
    }
    // A recorded rollout comes first: it is continued or aborted, not replaced.
    let state = if request.dry_run {
        None
    } else {
        let state = match rollout::StateFile::lock(&state_path(agent, request)) {
            Ok(s) => s,
            Err(e) => return refuse(request.json, &e),
        };
        match state.load() {
            Ok(None) => {}
            Ok(Some(recorded)) => {
                let at = recorded
                    .nodes
                    .iter()
                    .find(|n| n.phase != rollout::Phase::Done && n.phase != rollout::Phase::Pending)
                    .map(|n| format!(" (at {})", n.node))
                    .unwrap_or_default();
                return refuse(
                    request.json,
                    &format!(
                        "a rollout is in progress{at}, recorded in {}: `quorate deploy --resume` continues it, `quorate deploy --abort` reverts the node it was at and ends it",
                        state.path().display()
                    ),
                );
            }
            Err(e) => return refuse(request.json, &e),
        }
        Some(state)
    };
    // One request to the local agent; a refusal ends the command with its exit code.
    let ask = |r: &ControlRequest| -> Result<ControlReply, Exit> {
        match crate::cluster_commands::call(agent, r, Duration::from_secs(15), request.json)? {
            ControlReply::Refused {
                exit_code, message, ..
            } => {
                eprintln!("error: {message}");
                Err(Exit::from_refusal(exit_code))
            }
            reply => Ok(reply),
        }
    };
    let status = match ask(&ControlRequest::Status { local: false }) {
        Ok(ControlReply::Status(s)) => *s,
        Ok(_) => return refuse(request.json, "unexpected reply from the agent"),
        Err(exit) => return exit,
    };
    if !status.quorum {
        eprintln!("error: the cluster has no quorum: a rollout would make it worse\n  help: `quorate status` shows which voters are missing");
        return Exit::NoQuorum;
    }
    let view = match ask(&ControlRequest::SchedulerInput) {
        Ok(ControlReply::SchedulerInput(v)) => *v,
        Ok(_) => return refuse(request.json, "unexpected reply from the agent"),
        Err(exit) => return exit,
    };
    let steps = match plan(&status, &view, request) {
        Ok(steps) => steps,
        Err(why) => return refuse(request.json, &why),
    };
    let voters = status.nodes.iter().filter(|n| n.voter).count();
    let warning = (voters < 3).then(|| {
        format!("only {voters} voter(s): while a voter switches (its agent may restart) the cluster has no quorum")
    });
    if request.dry_run {
        print_plan(&status, &steps, warning.as_deref(), request.json);
        return Exit::Ok;
    }
    let mut nodes = Vec::new();
    for s in &steps {
        let Some(store_path) = s.store_path.clone() else {
            return refuse(
                request.json,
                &format!("no closure for {}: give --flake REF, --store-path PATH (every node) or --store-path {}=PATH", s.node, s.node),
            );
        };
        let address = view
            .spec
            .nodes
            .get(&s.node)
            .map(|n| n.address.to_string())
            .unwrap_or_default();
        let target = remote::Target {
            node: &s.node,
            address: &address,
        };
        // Reaching every node before anything moves: an unreachable one stops it here.
        let previous = match request.remote.current(&target) {
            Ok(p) => p,
            Err(e) => {
                return refuse(
                    request.json,
                    &format!(
                        "cannot reach {} to read its generation: {e} (check --exec)",
                        s.node
                    ),
                )
            }
        };
        nodes.push(rollout::NodeRollout {
            node: s.node.clone(),
            address,
            store_path,
            previous,
            phase: rollout::Phase::Pending,
            error: None,
            seconds: None,
        });
    }
    let report = rollout::Reporter::new(request.json);
    if let Some(w) = &warning {
        report.event(
            "warning",
            None,
            json!({"warning": w}),
            &format!("warning: {w}"),
        );
    }
    report.event(
        "plan",
        None,
        json!({"order": steps.iter().map(|s| s.node.clone()).collect::<Vec<_>>()}),
        &format!(
            "rolling deploy of `{}`: {}",
            status.cluster,
            steps
                .iter()
                .map(|s| s.node.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        ),
    );
    let recorded = rollout::Rollout {
        cluster: status.cluster.clone(),
        remote: request.remote.clone(),
        action: request.action.to_owned(),
        check: request.check.map(str::to_owned),
        timeout_secs: request.timeout.as_secs(),
        auto_rollback: request.auto_rollback,
        services: status
            .services
            .iter()
            .filter(|s| s.state == "running")
            .map(|s| s.name.clone())
            .collect(),
        nodes,
    };
    let Some(state) = state else {
        return Exit::Invalid;
    };
    rollout::run(agent, &state, recorded, request.parallel_copy, &report)
}

fn state_path(agent: &AgentSocket, request: &Request<'_>) -> std::path::PathBuf {
    request
        .state_file
        .clone()
        .unwrap_or_else(|| agent.data_dir.join("deploy.json"))
}

/// `--resume` / `--abort`: the rollout the state file records.
fn continue_recorded(agent: &AgentSocket, request: &Request<'_>) -> Exit {
    let state = match rollout::StateFile::lock(&state_path(agent, request)) {
        Ok(s) => s,
        Err(e) => return refuse(request.json, &e),
    };
    let recorded = match state.load() {
        Ok(Some(r)) => r,
        Ok(None) => {
            return refuse(
                request.json,
                &format!(
                    "no rollout is in progress ({} does not exist)",
                    state.path().display()
                ),
            )
        }
        Err(e) => return refuse(request.json, &e),
    };
    let report = rollout::Reporter::new(request.json);
    if request.abort {
        rollout::abort(agent, &state, recorded, &report)
    } else {
        rollout::run(agent, &state, recorded, request.parallel_copy, &report)
    }
}

/// The dry run's output.
fn print_plan(status: &StatusReport, steps: &[Step], warning: Option<&str>, json: bool) {
    if json {
        let steps: Vec<Value> = steps
            .iter()
            .map(|s| {
                json!({
                    "node": s.node,
                    "leader": s.leader,
                    "moves": s.moves.iter().map(|(svc, to)| json!({"service": svc, "to": to})).collect::<Vec<_>>(),
                    "store_path": s.store_path,
                    "closure_bytes": s.closure_bytes,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ok": true,
                "dry_run": true,
                "order": steps.iter().map(|s| s["node"].clone()).collect::<Vec<_>>(),
                "steps": steps,
                "warning": warning,
            }))
            .unwrap_or_default()
        );
        return;
    }
    println!(
        "Rolling deploy of cluster `{}`, one node at a time:",
        status.cluster
    );
    for (i, s) in steps.iter().enumerate() {
        let moves = if s.moves.is_empty() {
            "nothing runs there".to_owned()
        } else {
            s.moves
                .iter()
                .map(|(svc, to)| format!("{svc} → {}", to.as_deref().unwrap_or("nowhere")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let closure = match (&s.store_path, s.closure_bytes) {
            (Some(p), Some(b)) => {
                format!("switch to {p} ({:.1} MiB closure)", b as f64 / 1_048_576.0)
            }
            _ => "switch".to_owned(),
        };
        println!(
            "  {}. {}{}: drain ({moves}), {closure}, wait until its agent rejoins healthy, undrain",
            i + 1,
            s.node,
            if s.leader { " (leader, last)" } else { "" }
        );
    }
    if let Some(w) = warning {
        println!("warning: {w}");
    }
}
