//! Placement: where each service of the spec runs.
//!
//! [`place`] is a pure, deterministic function — no I/O, no clock, no randomness —
//! from the spec, each node's state and the current placements to new placements,
//! each with a human-readable reason. The leader runs it and commits the result
//! through Raft; `quorate simulate` (later) runs the same function offline.
//!
//! Rules, in order: a service runs only on an `up` node (a node in `maintenance`
//! keeps what it has but gets nothing new), never on a witness (`workloads = false`),
//! never on a node it `avoid`s, only on a
//! node carrying every label it `require`s, only on a replica node of each DRBD
//! storage it uses, never beside a service it is anti-affine with. Every service
//! stays where it is while that node is allowed; one that must move (or has no node)
//! goes to the first allowed node of its `prefer` list, else to the allowed node
//! matching the most of its `prefer_labels`, then with the fewest services (ties by
//! name). A service
//! with `sticky = false` also moves back to a better-ranked preferred node once that
//! node is allowed again. The result is stable: feeding it back changes nothing.
//!
//! **Architecture Invariant:** no I/O and no time: the same input gives the same
//! output on every node and in every test.

use std::collections::{BTreeMap, BTreeSet};

use quorate_spec::{ServiceSpec, Spec, StorageKind};
use serde::{Deserialize, Serialize};

/// A node's state as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Healthy: may run services.
    Up,
    /// Surely dead (its lease has expired): runs nothing.
    Down,
    /// Being emptied: runs nothing new, its services move away.
    Draining,
    /// Not reacted to: keeps what it runs, gets nothing new.
    Maintenance,
}

/// Where one service runs, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The node, or `None` when no node may run it.
    pub node: Option<String>,
    /// Why, in a sentence.
    pub reason: String,
}

/// Everything placement depends on.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The applied spec.
    pub spec: &'a Spec,
    /// State of each node of the spec (a node missing here counts as down).
    pub nodes: &'a BTreeMap<String, NodeState>,
    /// Current placements (service → node).
    pub current: &'a BTreeMap<String, String>,
    /// Explicit placements (`quorate move`): service → node. A pinned service goes to
    /// its node whenever that node is allowed.
    pub pins: &'a BTreeMap<String, String>,
    /// Nodes where a service recently spent its restart budget: not chosen again for
    /// it until the restart window has passed (Pacemaker's migration-threshold).
    pub failed: &'a BTreeMap<String, BTreeSet<String>>,
    /// What operators decided at runtime: disabled services, bans.
    pub constraints: &'a Constraints,
}

/// Operators' runtime decisions the scheduler honours (replicated by the cluster).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraints {
    /// Services stopped everywhere (`quorate disable`): placed nowhere.
    #[serde(default)]
    pub disabled: BTreeSet<String>,
    /// Nodes each service is banned from right now (`quorate ban`).
    #[serde(default)]
    pub banned: BTreeMap<String, BTreeSet<String>>,
}

impl Constraints {
    /// No runtime decisions.
    pub const NONE: Self = Self {
        disabled: BTreeSet::new(),
        banned: BTreeMap::new(),
    };
}

struct Board<'a> {
    /// Symmetric anti-affinity: service → services it may not share a node with.
    anti: BTreeMap<&'a str, Vec<&'a str>>,
    load: BTreeMap<&'a str, usize>,
    /// (load, node) for the nodes that may take new services.
    by_load: BTreeSet<(usize, &'a str)>,
    placed: BTreeMap<&'a str, &'a str>,
}

impl<'a> Board<'a> {
    fn unassign(&mut self, service: &str, node: &str, takes_new: bool) {
        self.placed.remove(service);
        if let Some((key, load)) = self.load.iter_mut().find(|(k, _)| **k == node) {
            if takes_new {
                self.by_load.remove(&(*load, *key));
                self.by_load.insert((*load - 1, *key));
            }
            *load -= 1;
        }
    }

    fn assign(&mut self, service: &'a str, node: &'a str, takes_new: bool) {
        let load = self.load.entry(node).or_insert(0);
        if takes_new {
            self.by_load.remove(&(*load, node));
        }
        *load += 1;
        if takes_new {
            self.by_load.insert((*load, node));
        }
        self.placed.insert(service, node);
    }
}

/// Both directions of every `anti_affinity` entry, built once per [`place`] call.
fn anti_index(spec: &Spec) -> BTreeMap<&str, Vec<&str>> {
    let mut index: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, svc) in &spec.services {
        for other in &svc.anti_affinity {
            if let Some((other, _)) = spec.services.get_key_value(other) {
                index.entry(name.as_str()).or_default().push(other.as_str());
                index.entry(other.as_str()).or_default().push(name.as_str());
            }
        }
    }
    index
}

/// Why `node` may not run `service` right now, or `None` when it may.
fn refusal(
    input: &Input<'_>,
    board: &Board<'_>,
    name: &str,
    svc: &ServiceSpec,
    node: &str,
    keeping: bool,
) -> Option<String> {
    match input.nodes.get(node) {
        Some(NodeState::Up) => {}
        Some(NodeState::Maintenance) if keeping => {}
        Some(NodeState::Maintenance) => return Some("in maintenance".into()),
        Some(NodeState::Down) | None => return Some("down".into()),
        Some(NodeState::Draining) => return Some("draining".into()),
    }
    if input.spec.nodes.get(node).is_some_and(|n| !n.workloads) {
        return Some("a witness (workloads = false): it only votes".into());
    }
    if input
        .constraints
        .banned
        .get(name)
        .is_some_and(|b| b.contains(node))
    {
        return Some(format!("banned (`quorate unban {name} {node}` lifts it)"));
    }
    if svc.avoid.iter().any(|a| a == node) {
        return Some("avoided".into());
    }
    let labels = input.spec.nodes.get(node).map(|n| &n.labels);
    for (key, wanted) in &svc.require {
        match labels.and_then(|l| l.get(key)) {
            Some(have) if have == wanted => {}
            Some(have) => return Some(format!("label {key}={have}, requires {key}={wanted}")),
            None => return Some(format!("lacks label {key}={wanted} (require)")),
        }
    }
    if input.failed.get(name).is_some_and(|f| f.contains(node)) {
        return Some("failed here recently (restart budget spent)".into());
    }
    for st in &svc.storage {
        if let Some(s) = input
            .spec
            .storage
            .get(st)
            .filter(|s| s.kind == StorageKind::Drbd)
        {
            if !s.nodes.iter().any(|n| n == node) {
                return Some(format!("no replica of DRBD `{st}`"));
            }
        }
    }
    for other in board.anti.get(name).into_iter().flatten() {
        if board.placed.get(other).is_some_and(|on| *on == node) {
            return Some(format!("runs `{other}` (anti-affinity)"));
        }
    }
    None
}

/// Places every service of the spec. Deterministic, and stable: feeding the result
/// back in as the current placements changes nothing.
#[must_use]
pub fn place(input: &Input<'_>) -> BTreeMap<String, Placement> {
    let spec = input.spec;
    let mut board = Board {
        anti: anti_index(spec),
        load: BTreeMap::new(),
        by_load: BTreeSet::new(),
        placed: BTreeMap::new(),
    };
    for (node, state) in input.nodes {
        if spec.nodes.contains_key(node) && *state == NodeState::Up {
            board.by_load.insert((0, node.as_str()));
        }
    }
    let mut out: BTreeMap<&str, Placement> = BTreeMap::new();
    // Pass 1: every service keeps its node while that node is allowed, so a move of one
    // service never displaces another that had no reason to move.
    let mut homeless: Vec<(&str, Option<(&str, String)>)> = Vec::new();
    for (name, svc) in &spec.services {
        if input.constraints.disabled.contains(name) {
            out.insert(
                name,
                Placement {
                    node: None,
                    reason: format!("disabled: stopped everywhere until `quorate enable {name}`"),
                },
            );
            continue;
        }
        match input
            .current
            .get(name)
            .and_then(|n| spec.nodes.get_key_value(n))
            .map(|(n, _)| n.as_str())
        {
            Some(node) => match refusal(input, &board, name, svc, node, true) {
                None => {
                    board.assign(name, node, takes_new(input, node));
                    out.insert(
                        name,
                        Placement {
                            node: Some(node.to_string()),
                            reason: format!("stays on {node}"),
                        },
                    );
                }
                Some(why) => homeless.push((name, Some((node, why)))),
            },
            None => homeless.push((name, None)),
        }
    }
    // Pass 2: the rest, in name order: the first allowed preferred node, else the
    // allowed node with the fewest services.
    for (name, from) in homeless {
        let svc = &spec.services[name];
        let placement = choose(
            input,
            &mut board,
            name,
            svc,
            from.as_ref().map(|(n, why)| (*n, why.as_str())),
        );
        out.insert(name, placement);
    }
    // Then, until nothing changes: non-sticky services move to a better-ranked preferred
    // node that has become allowed, and unplaced services try again. Every step places
    // a service or improves one's preference rank, so this ends.
    for _ in 0..=spec.services.len() {
        let mut changed = false;
        for (name, svc) in &spec.services {
            if input.constraints.disabled.contains(name) {
                continue;
            }
            let Some(placement) = out.get(name.as_str()) else {
                continue;
            };
            match placement.node.clone() {
                // A pinned service moves to its pin as soon as the pin accepts it.
                Some(node) if input.pins.get(name).is_some_and(|p| *p != node) => {
                    let pin = input
                        .pins
                        .get(name)
                        .and_then(|p| spec.nodes.get_key_value(p))
                        .map(|(k, _)| k.as_str());
                    board.unassign(name, &node, takes_new(input, &node));
                    match pin.filter(|p| refusal(input, &board, name, svc, p, false).is_none()) {
                        Some(p) => {
                            board.assign(name, p, true);
                            out.insert(
                                name,
                                Placement {
                                    node: Some(p.to_string()),
                                    reason: format!(
                                        "moved from {node} to {p} (pinned by quorate move)"
                                    ),
                                },
                            );
                            changed = true;
                        }
                        None => board.assign(
                            name,
                            spec.nodes
                                .get_key_value(&node)
                                .map_or("", |(k, _)| k.as_str()),
                            takes_new(input, &node),
                        ),
                    }
                }
                Some(node) if !svc.sticky && !input.pins.contains_key(name) => {
                    let rank = svc
                        .prefer
                        .iter()
                        .position(|p| *p == node)
                        .unwrap_or(svc.prefer.len());
                    board.unassign(name, &node, takes_new(input, &node));
                    let better = svc.prefer[..rank].iter().find(|p| {
                        spec.nodes.contains_key(*p)
                            && refusal(input, &board, name, svc, p, false).is_none()
                    });
                    match better
                        .and_then(|p| spec.nodes.get_key_value(p))
                        .map(|(k, _)| k.as_str())
                    {
                        Some(p) => {
                            board.assign(name, p, true);
                            out.insert(
                                name,
                                Placement {
                                    node: Some(p.to_string()),
                                    reason: format!("moved from {node} to {p} (preferred)"),
                                },
                            );
                            changed = true;
                        }
                        None => board.assign(
                            name,
                            spec.nodes
                                .get_key_value(&node)
                                .map_or("", |(k, _)| k.as_str()),
                            takes_new(input, &node),
                        ),
                    }
                }
                None => {
                    let retry = choose(input, &mut board, name, svc, None);
                    if retry.node.is_some() {
                        out.insert(name, retry);
                        changed = true;
                    }
                }
                Some(_) => {}
            }
        }
        if !changed {
            break;
        }
    }
    out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn takes_new(input: &Input<'_>, node: &str) -> bool {
    input.nodes.get(node) == Some(&NodeState::Up)
}

/// Picks a node for a service that has none (or must leave `from`).
fn choose<'a>(
    input: &Input<'a>,
    board: &mut Board<'a>,
    name: &'a str,
    svc: &'a ServiceSpec,
    from: Option<(&str, &str)>,
) -> Placement {
    let spec = input.spec;
    let pin = input
        .pins
        .get(name)
        .and_then(|p| spec.nodes.get_key_value(p))
        .map(|(k, _)| k.as_str());
    if let Some(p) = pin {
        if refusal(input, board, name, svc, p, false).is_none() {
            board.assign(name, p, true);
            let moved = from.map_or_else(
                || "placed on ".to_string(),
                |(n, why)| format!("moved from {n} ({why}) to "),
            );
            return Placement {
                node: Some(p.to_string()),
                reason: format!("{moved}{p} (pinned by quorate move)"),
            };
        }
    }
    let preferred = svc
        .prefer
        .iter()
        .find(|p| {
            spec.nodes.contains_key(*p) && refusal(input, board, name, svc, p, false).is_none()
        })
        .and_then(|p| spec.nodes.get_key_value(p))
        .map(|(k, _)| (k.as_str(), "preferred"));
    // Else the allowed node matching the most of `prefer_labels`, least loaded first.
    let matching = |node: &str| {
        spec.nodes.get(node).map_or(0, |n| {
            svc.prefer_labels
                .iter()
                .filter(|(k, v)| n.labels.get(*k) == Some(*v))
                .count()
        })
    };
    let chosen = preferred.or_else(|| {
        let mut best: Option<(&str, usize)> = None;
        for node in board.by_load.iter().map(|(_, n)| *n) {
            if refusal(input, board, name, svc, node, false).is_some() {
                continue;
            }
            let matches = matching(node);
            if best.is_none_or(|(_, m)| matches > m) {
                best = Some((node, matches));
            }
        }
        best.map(|(n, matches)| {
            (
                n,
                if matches > 0 {
                    "matches prefer_labels"
                } else {
                    "least loaded"
                },
            )
        })
    });
    match chosen {
        Some((node, how)) => {
            board.assign(name, node, true);
            let moved = from.map_or_else(
                || "placed on ".to_string(),
                |(n, why)| format!("moved from {n} ({why}) to "),
            );
            Placement {
                node: Some(node.to_string()),
                reason: format!("{moved}{node} ({how})"),
            }
        }
        None => {
            let mut why: Vec<String> = spec
                .nodes
                .keys()
                .map(|n| {
                    format!(
                        "{n}: {}",
                        refusal(input, board, name, svc, n, false).unwrap_or_else(|| "?".into())
                    )
                })
                .collect();
            why.truncate(8);
            Placement {
                node: None,
                reason: format!("unplaceable: no node may run it ({})", why.join("; ")),
            }
        }
    }
}

/// Why `service` may or may not run on each node, given the placements `place` made
/// for everything else: `None` = allowed, `Some(reason)` = not allowed.
#[must_use]
pub fn explain(
    input: &Input<'_>,
    placed: &BTreeMap<String, Placement>,
    service: &str,
) -> BTreeMap<String, Option<String>> {
    let spec = input.spec;
    let Some((name, svc)) = spec.services.get_key_value(service) else {
        return BTreeMap::new();
    };
    let mut board = Board {
        anti: anti_index(spec),
        load: BTreeMap::new(),
        by_load: BTreeSet::new(),
        placed: BTreeMap::new(),
    };
    for (other, p) in placed {
        if other == service {
            continue;
        }
        if let (Some((o, _)), Some(n)) = (
            spec.services.get_key_value(other),
            p.node.as_ref().and_then(|n| spec.nodes.get_key_value(n)),
        ) {
            board.placed.insert(o.as_str(), n.0.as_str());
        }
    }
    let current = placed.get(service).and_then(|p| p.node.clone());
    spec.nodes
        .keys()
        .map(|n| {
            (
                n.clone(),
                refusal(
                    input,
                    &board,
                    name,
                    svc,
                    n,
                    current.as_deref() == Some(n.as_str()),
                ),
            )
        })
        .collect()
}
