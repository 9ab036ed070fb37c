//! What-if on the scheduler the leader runs (`quorate simulate`, `GET /v1/simulate`):
//! from a [`SchedulerView`] (offline from a spec, or the live cluster's), placements
//! before and after some nodes fail or drain, and the order of stops and starts.

use std::collections::{BTreeMap, BTreeSet};

use quorate_scheduler::{place, Input, NodeState, Placement};
use quorate_spec::Spec;
use serde_json::json;

use crate::SchedulerView;

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

/// The simulation as `quorate simulate --json` prints it (and the API returns it).
#[must_use]
pub fn report(
    start: &SchedulerView,
    sim: &Simulation,
    fail: &[String],
    drain: &[String],
    live: bool,
) -> serde_json::Value {
    // A disabled service is placed nowhere on purpose: not a problem to report.
    let unplaceable: Vec<&String> = sim
        .after
        .iter()
        .filter(|(s, p)| p.node.is_none() && !start.constraints.disabled.contains(*s))
        .map(|(s, _)| s)
        .collect();
    let placements: serde_json::Map<String, serde_json::Value> = sim
        .after
        .iter()
        .map(|(s, p)| {
            (
                s.clone(),
                json!({"before": sim.before[s].node, "after": p.node, "reason": p.reason}),
            )
        })
        .collect();
    json!({
        "live": live,
        "failed": fail,
        "draining": drain,
        "services": placements,
        "unplaceable": unplaceable,
        "stops": sim.stops.iter().map(|(s, n)| json!({"service": s, "node": n})).collect::<Vec<_>>(),
        "starts": sim.starts.iter().map(|(s, n)| json!({"service": s, "node": n})).collect::<Vec<_>>(),
    })
}
