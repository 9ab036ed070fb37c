//! `quorate plan`: what applying a spec would change, like `terraform plan` or
//! `nomad job plan`. The baseline is the lock (what was numbered before) and,
//! when given, the previous spec (for field-level changes). Destructive changes —
//! removing storage or a replica that holds data, shrinking a volume, removing
//! voters so that the old majority is gone — are marked with the reason.
//!
//! **Architecture Invariant:** pure: no I/O. `quorate lock` and `quorate apply`
//! refuse what this marks destructive unless explicitly allowed.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use quorate_lock::{allocate, Entity, Lock, LockChange, LockError};
use quorate_spec::Spec;
use serde::Serialize;

/// What a plan item is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    /// `[cluster]`
    Cluster,
    /// `[network]`
    Network,
    /// A node.
    Node,
    /// A service.
    Service,
    /// A storage resource.
    Storage,
    /// The declared Ceph (fsid, OSDs).
    Ceph,
}

impl From<Entity> for Subject {
    fn from(e: Entity) -> Self {
        match e {
            Entity::Node => Self::Node,
            Entity::Service => Self::Service,
            Entity::Storage => Self::Storage,
            Entity::Ceph => Self::Ceph,
        }
    }
}

/// The kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// New.
    Add,
    /// Renamed, numbers kept.
    Rename,
    /// Modified.
    Change,
    /// Removed.
    Remove,
}

/// One line of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanItem {
    /// Add, rename, change or remove.
    pub op: Op,
    /// What kind of thing.
    pub subject: Subject,
    /// Its name (empty for `cluster` / `network`).
    pub name: String,
    /// What changes, one line each.
    pub details: Vec<String>,
    /// Why this is destructive, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destructive: Option<String>,
}

/// The whole plan.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Changes, grouped by subject and name.
    pub items: Vec<PlanItem>,
    /// The lock after the change (what `quorate lock` would write).
    #[serde(skip)]
    pub new_lock: Lock,
    /// True when the lock file would change.
    pub lock_changes: bool,
}

impl Plan {
    /// True when any item is destructive.
    #[must_use]
    pub fn is_destructive(&self) -> bool {
        self.items.iter().any(|i| i.destructive.is_some())
    }

    /// Count of items with `op`.
    #[must_use]
    pub fn count(&self, op: Op) -> usize {
        self.items.iter().filter(|i| i.op == op).count()
    }

    fn item(&mut self, op: Op, subject: Subject, name: &str) -> &mut PlanItem {
        // Additions and removals own their line; further details about the same
        // thing (numbers, field changes) are merged into the existing line.
        let pos = self
            .items
            .iter()
            .position(|i| i.subject == subject && i.name == name);
        let i = match pos {
            Some(i) => {
                if self.items[i].op == Op::Change {
                    self.items[i].op = op;
                }
                i
            }
            None => {
                self.items.push(PlanItem {
                    op,
                    subject,
                    name: name.to_string(),
                    details: Vec::new(),
                    destructive: None,
                });
                self.items.len() - 1
            }
        };
        &mut self.items[i]
    }

    fn destructive(&mut self, op: Op, subject: Subject, name: &str, why: String) {
        let item = self.item(op, subject, name);
        item.destructive = Some(match item.destructive.take() {
            Some(prev) => format!("{prev}; {why}"),
            None => why,
        });
    }
}

/// Builds the plan for moving from (`lock`, `previous`) to `spec`.
///
/// # Errors
/// When the lock cannot be extended for this spec (another cluster, exhausted
/// numbers, a changed overlay).
pub fn plan(lock: Option<&Lock>, previous: Option<&Spec>, spec: &Spec) -> Result<Plan, LockError> {
    let allocation = allocate(lock, spec)?;
    let mut plan = Plan {
        items: Vec::new(),
        lock_changes: lock != Some(&allocation.lock),
        new_lock: allocation.lock.clone(),
    };
    for change in &allocation.changes {
        match change {
            LockChange::Added {
                entity,
                name,
                numbers,
            } => {
                let item = plan.item(Op::Add, (*entity).into(), name);
                if !numbers.is_empty() {
                    item.details.push(numbers.clone());
                }
            }
            LockChange::Renamed { entity, from, to } => {
                plan.item(Op::Rename, (*entity).into(), to)
                    .details
                    .push(format!("renamed from `{from}`, numbers kept"));
            }
            LockChange::Retired {
                entity,
                name,
                numbers,
            } => {
                plan.item(Op::Remove, (*entity).into(), name)
                    .details
                    .push(format!("retires {numbers} (never reused)"));
                if *entity == Entity::Storage {
                    let kind = lock
                        .and_then(|l| l.storage.get(name))
                        .map_or("storage", |e| e.kind.name());
                    let replaced = spec.storage.contains_key(name);
                    let why = if replaced {
                        format!("changes the kind of `{name}` from {kind}: the old resource and its data are no longer managed")
                    } else {
                        format!("removes {kind} `{name}`: its data is no longer managed and its numbers are retired")
                    };
                    plan.destructive(Op::Remove, Subject::Storage, name, why);
                }
            }
            LockChange::Updated {
                entity,
                name,
                field,
                from,
                to,
            } => {
                plan.item(Op::Change, (*entity).into(), name)
                    .details
                    .push(format!("{field}: {from} → {to}"));
                if *field == "size" {
                    let parse = |s: &str| s.parse::<quorate_spec::ByteSize>().ok();
                    if let (Some(a), Some(b)) = (parse(from), parse(to)) {
                        if b < a {
                            plan.destructive(
                                Op::Change,
                                Subject::Storage,
                                name,
                                format!("shrinks `{name}` from {a} to {b}, which can cut off data"),
                            );
                        }
                    }
                }
            }
            LockChange::Extended { entity, name, what } => {
                plan.item(Op::Change, (*entity).into(), name)
                    .details
                    .push(format!("adds {what}"));
            }
            LockChange::MemberRetired {
                storage,
                node,
                node_id,
                had_data,
            } => {
                let role = if *had_data { "replica" } else { "tie-breaker" };
                plan.item(Op::Change, Subject::Storage, storage)
                    .details
                    .push(format!("removes {role} {node} (node-id {node_id} retired)"));
                if *had_data {
                    plan.destructive(Op::Change, Subject::Storage, storage, format!("removes the replica of `{storage}` on {node}: that copy of the data is abandoned"));
                }
            }
        }
    }
    quorum_loss(&mut plan, lock, &allocation.lock);
    if let Some(previous) = previous {
        field_changes(&mut plan, previous, spec);
    }
    plan.items
        .sort_by(|a, b| (a.subject, &a.name).cmp(&(b.subject, &b.name)));
    Ok(plan)
}

/// Marks the change destructive when fewer than a majority of the current voters
/// stay voters: Raft could not carry the change through without losing quorum.
fn quorum_loss(plan: &mut Plan, old: Option<&Lock>, new: &Lock) {
    let Some(old) = old else { return };
    let old_voters: BTreeSet<u64> = old
        .nodes
        .values()
        .filter(|e| e.voter)
        .map(|e| e.raft_id)
        .collect();
    let new_voters: BTreeSet<u64> = new
        .nodes
        .values()
        .filter(|e| e.voter)
        .map(|e| e.raft_id)
        .collect();
    let staying = old_voters.intersection(&new_voters).count();
    if old_voters.is_empty() || staying > old_voters.len() / 2 {
        return;
    }
    let leaving: Vec<String> = old
        .nodes
        .iter()
        .filter(|(_, e)| e.voter && !new_voters.contains(&e.raft_id))
        .map(|(n, _)| n.clone())
        .collect();
    for name in leaving {
        let op = if new.nodes.contains_key(&name) {
            Op::Change
        } else {
            Op::Remove
        };
        plan.destructive(op, Subject::Node, &name, format!(
            "only {staying} of the {} current voters stay voters; the cluster would lose its majority — remove voters one at a time",
            old_voters.len()
        ));
    }
}

fn json_fields<T: Serialize>(value: &T) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

fn compare<T: Serialize>(plan: &mut Plan, subject: Subject, name: &str, before: &T, after: &T) {
    let (a, b) = (json_fields(before), json_fields(after));
    let keys: BTreeSet<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| *k != "renamed_from")
        .collect();
    let show = |v: Option<&serde_json::Value>| {
        v.map_or_else(|| "(unset)".to_string(), ToString::to_string)
    };
    let mut lines = Vec::new();
    for k in keys {
        if a.get(k) != b.get(k) {
            lines.push(format!("{k}: {} → {}", show(a.get(k)), show(b.get(k))));
        }
    }
    if !lines.is_empty() {
        plan.item(Op::Change, subject, name).details.extend(lines);
    }
}

/// Field-level differences between two specs, for entries present in both.
fn field_changes(plan: &mut Plan, before: &Spec, after: &Spec) {
    compare(plan, Subject::Cluster, "", &before.cluster, &after.cluster);
    compare(plan, Subject::Network, "", &before.network, &after.network);
    let old_name = |renamed_from: &Option<String>, name: &String| {
        renamed_from.clone().unwrap_or_else(|| name.clone())
    };
    for (name, n) in &after.nodes {
        let old = before
            .nodes
            .get(name)
            .or_else(|| before.nodes.get(&old_name(&n.renamed_from, name)));
        if let Some(old) = old {
            compare(plan, Subject::Node, name, old, n);
        }
    }
    for (name, s) in &after.services {
        let old = before
            .services
            .get(name)
            .or_else(|| before.services.get(&old_name(&s.renamed_from, name)));
        if let Some(old) = old {
            compare(plan, Subject::Service, name, old, s);
        }
    }
    for (name, s) in &after.storage {
        let old = before
            .storage
            .get(name)
            .or_else(|| before.storage.get(&old_name(&s.renamed_from, name)));
        if let Some(old) = old {
            if let (Some(a), Some(b)) = (old.size, s.size) {
                if b < a
                    && !plan.items.iter().any(|i| {
                        i.subject == Subject::Storage && i.name == *name && i.destructive.is_some()
                    })
                {
                    plan.destructive(
                        Op::Change,
                        Subject::Storage,
                        name,
                        format!("shrinks `{name}` from {a} to {b}, which can cut off data"),
                    );
                }
            }
            compare(plan, Subject::Storage, name, old, s);
        }
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.items.is_empty() {
            return writeln!(f, "No changes: the spec matches the lock.");
        }
        let mut out = String::new();
        for item in &self.items {
            let sign = match item.op {
                Op::Add => '+',
                Op::Rename => '>',
                Op::Change => '~',
                Op::Remove => '-',
            };
            let subject = match item.subject {
                Subject::Cluster => "cluster",
                Subject::Network => "network",
                Subject::Node => "node",
                Subject::Service => "service",
                Subject::Storage => "storage",
                Subject::Ceph => "ceph",
            };
            let _ = write!(out, "  {sign} {subject}");
            if !item.name.is_empty() {
                let _ = write!(out, " {}", item.name);
            }
            if item.destructive.is_some() {
                out.push_str("   DESTRUCTIVE");
            }
            out.push('\n');
            for d in &item.details {
                let _ = writeln!(out, "      {d}");
            }
            if let Some(why) = &item.destructive {
                let _ = writeln!(out, "      ! {why}");
            }
        }
        let destructive = self
            .items
            .iter()
            .filter(|i| i.destructive.is_some())
            .count();
        let _ = write!(
            out,
            "\nPlan: {} to add, {} to rename, {} to change, {} to remove",
            self.count(Op::Add),
            self.count(Op::Rename),
            self.count(Op::Change),
            self.count(Op::Remove)
        );
        if destructive > 0 {
            let _ = write!(out, " ({destructive} destructive)");
        }
        out.push_str(".\n");
        f.write_str(&out)
    }
}
