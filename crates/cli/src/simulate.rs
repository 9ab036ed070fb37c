//! `quorate simulate`: what-if on the same pure scheduler the leader runs, offline
//! from the spec or from the live cluster's state — like Pacemaker's `crm_simulate`
//! or Proxmox's HA simulator.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use quorate_api::{ControlReply, ControlRequest, SchedulerView};
use quorate_scheduler::{place, Input, NodeState, Placement};
use quorate_spec::Spec;
use serde_json::json;

use crate::exit::Exit;

/// Services in an order where every service comes after the ones it is `after`.
fn start_order(spec: &Spec, services: &BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    // Specs are checked to have no `after` cycles, so this ends; the bound is a guard.
    for _ in 0..=services.len() {
        for s in services {
            if placed.contains(s.as_str()) {
                continue;
            }
            let deps_done = spec.services.get(s).is_none_or(|x| {
                x.after
                    .iter()
                    .all(|d| !services.contains(d) || placed.contains(d.as_str()))
            });
            if deps_done {
                placed.insert(s);
                out.push(s.clone());
            }
        }
    }
    out
}

/// The outcome of a simulation.
#[derive(Debug)]
pub struct Simulation {
    /// Placements with every node up.
    pub before: BTreeMap<String, Placement>,
    /// Placements after the failures and drains.
    pub after: BTreeMap<String, Placement>,
    /// Stops, dependents first.
    pub stops: Vec<(String, String)>,
    /// Starts, dependencies first.
    pub starts: Vec<(String, String)>,
}

/// The offline starting point: every node up, nothing placed, no pins or failures.
#[must_use]
pub fn offline(spec: &Spec) -> SchedulerView {
    SchedulerView {
        spec: spec.clone(),
        nodes: spec
            .nodes
            .keys()
            .map(|n| (n.clone(), NodeState::Up))
            .collect(),
        current: BTreeMap::new(),
        pins: BTreeMap::new(),
        failed: BTreeMap::new(),
        constraints: quorate_scheduler::Constraints::default(),
    }
}

/// Runs the scheduler from `start` (offline, or the live cluster's state), then again
/// with `fail` down and `drain` draining.
#[must_use]
pub fn simulate(start: &SchedulerView, fail: &[String], drain: &[String]) -> Simulation {
    let spec = &start.spec;
    let before = place(&Input {
        spec,
        nodes: &start.nodes,
        current: &start.current,
        pins: &start.pins,
        failed: &start.failed,
        constraints: &start.constraints,
    });
    let current: BTreeMap<String, String> = before
        .iter()
        .filter_map(|(s, p)| p.node.clone().map(|n| (s.clone(), n)))
        .collect();
    let mut states = start.nodes.clone();
    for n in drain {
        states.insert(n.clone(), NodeState::Draining);
    }
    for n in fail {
        states.insert(n.clone(), NodeState::Down);
    }
    let after = place(&Input {
        spec,
        nodes: &states,
        current: &current,
        pins: &start.pins,
        failed: &start.failed,
        constraints: &start.constraints,
    });
    let moved: BTreeSet<String> = after
        .iter()
        .filter(|(s, p)| before.get(*s).map(|b| &b.node) != Some(&p.node))
        .map(|(s, _)| s.clone())
        .collect();
    let order = start_order(spec, &moved);
    let stops = order
        .iter()
        .rev()
        .filter_map(|s| before[s].node.clone().map(|n| (s.clone(), n)))
        .collect();
    let starts = order
        .iter()
        .filter_map(|s| after[s].node.clone().map(|n| (s.clone(), n)))
        .collect();
    Simulation {
        before,
        after,
        stops,
        starts,
    }
}

/// `quorate simulate`
pub fn run(
    spec_path: &Path,
    live: Option<&crate::cluster_commands::AgentSocket>,
    fail: &[String],
    drain: &[String],
    json: bool,
) -> Exit {
    let start = match live {
        Some(agent) => {
            match crate::cluster_commands::call(
                agent,
                &ControlRequest::SchedulerInput,
                std::time::Duration::from_secs(15),
                json,
            ) {
                Ok(ControlReply::SchedulerInput(view)) => *view,
                Ok(ControlReply::Refused {
                    exit_code, message, ..
                }) => {
                    eprintln!("error: {message}");
                    return Exit::from_refusal(exit_code);
                }
                Ok(_) => {
                    eprintln!("error: unexpected reply from the agent");
                    return Exit::Invalid;
                }
                Err(exit) => return exit,
            }
        }
        None => match crate::spec_commands::load_checked(spec_path, json) {
            Ok(spec) => offline(&spec),
            Err(exit) => return exit,
        },
    };
    let spec = &start.spec;
    for n in fail.iter().chain(drain) {
        if !spec.nodes.contains_key(n) {
            let known: Vec<&String> = spec.nodes.keys().collect();
            eprintln!("error: `{n}` is not a node of the spec (nodes: {known:?})\n  help: pass node names from [nodes]");
            return Exit::Invalid;
        }
    }
    let sim = simulate(&start, fail, drain);
    let source = match live {
        Some(_) => format!("the live cluster `{}`", spec.cluster.name),
        None => spec_path.display().to_string(),
    };
    // A disabled service is placed nowhere on purpose: not a problem to report.
    let unplaceable: Vec<&String> = sim
        .after
        .iter()
        .filter(|(s, p)| p.node.is_none() && !start.constraints.disabled.contains(*s))
        .map(|(s, _)| s)
        .collect();
    if json {
        let placements: serde_json::Value = sim
            .after
            .iter()
            .map(|(s, p)| {
                (
                    s.clone(),
                    json!({"before": sim.before[s].node, "after": p.node, "reason": p.reason}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "live": live.is_some(),
                "failed": fail,
                "draining": drain,
                "services": placements,
                "unplaceable": unplaceable,
                "stops": sim.stops.iter().map(|(s, n)| json!({"service": s, "node": n})).collect::<Vec<_>>(),
                "starts": sim.starts.iter().map(|(s, n)| json!({"service": s, "node": n})).collect::<Vec<_>>(),
            }))
            .unwrap_or_default()
        );
    } else {
        println!(
            "quorate simulate: {source} with {}{}\n",
            if fail.is_empty() {
                "no failures".to_string()
            } else {
                format!("{} failed", fail.join(", "))
            },
            if drain.is_empty() {
                String::new()
            } else {
                format!(", {} draining", drain.join(", "))
            }
        );
        println!("{:<20} {:<12} {:<12} WHY", "SERVICE", "BEFORE", "AFTER");
        for (s, p) in &sim.after {
            let before = sim.before[s].node.as_deref().unwrap_or("-");
            println!(
                "{:<20} {:<12} {:<12} {}",
                s,
                before,
                p.node.as_deref().unwrap_or("UNPLACEABLE"),
                p.reason
            );
        }
        if !sim.stops.is_empty() || !sim.starts.is_empty() {
            println!("\nTransition:");
            for (i, (s, n)) in sim.stops.iter().enumerate() {
                let note = if fail.contains(n) {
                    " (the node failed: its fence already ended it)"
                } else {
                    ""
                };
                println!("  {:>2}. stop  {s} on {n}{note}", i + 1);
            }
            for (i, (s, n)) in sim.starts.iter().enumerate() {
                println!("  {:>2}. start {s} on {n}", sim.stops.len() + i + 1);
            }
        }
        if unplaceable.is_empty() {
            println!("\nEvery service has a node.");
        } else {
            println!(
                "\n{} service(s) would have nowhere to run: {}",
                unplaceable.len(),
                unplaceable
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if unplaceable.is_empty() {
        Exit::Ok
    } else {
        Exit::Invalid
    }
}
