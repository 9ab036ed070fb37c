//! Faults and seeded random schedules of them. Each fault is injected, held for a
//! while (during which the lab may submit operations), healed, and followed by a wait
//! until the cluster is healthy again. The same seed gives the same schedule.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::LabCluster;

/// What breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9 of the node's agent, fence and workloads, cable cut; back on after.
    PowerLoss,
    /// The node's cable is cut, then plugged back.
    Isolate,
    /// Two sides: the minority (2 of 5, 1 of 3) on a second bridge.
    Split,
    /// SIGSTOP of the agent, then SIGCONT.
    Pause,
    /// kill -9 of the agent only (fence and workloads live on), then started again.
    Restart,
    /// The cable goes down and up several times quickly.
    Flap,
    /// Delay and loss with `tc netem` (skipped where the kernel lacks it).
    Netem,
    /// A service of the node is moved away, and the agent is paused while it stops it.
    PauseInStop,
    /// A service of the node is moved away, and the agent is killed (-9) while it stops
    /// it; started again after.
    KillInStop,
    /// The agent is killed, started, and killed again while it adopts its workloads.
    KillInAdoption,
    /// A service is moved to the node, and its agent is killed (-9) while it starts
    /// it; started again after.
    KillInStart,
    /// A service of the node is renamed in the spec (`renamed_from`) while the node is
    /// paused, cut off or its agent killed: the new name must wait for the old one's
    /// stop, or for the node's fence.
    RenameInFault,
    /// A service of the node is removed from the spec while the node is paused, cut
    /// off or its agent killed, and added back under its name before the node heals.
    RemoveInFault,
}

impl FaultKind {
    /// All kinds.
    pub const ALL: [Self; 13] = [
        Self::PowerLoss,
        Self::Isolate,
        Self::Split,
        Self::Pause,
        Self::Restart,
        Self::Flap,
        Self::Netem,
        Self::PauseInStop,
        Self::KillInStop,
        Self::KillInAdoption,
        Self::KillInStart,
        Self::RenameInFault,
        Self::RemoveInFault,
    ];
}

/// Moves a service that runs elsewhere to `node`, to put its agent in the middle of a
/// start; returns the operation when there was one.
fn move_one_here(
    cluster: &LabCluster,
    node: &str,
    rng: &mut fastrand::Rng,
) -> Option<(String, Option<String>, bool)> {
    let elsewhere: Vec<String> = cluster
        .services
        .iter()
        .filter(|s| cluster.host_of(s).is_some_and(|h| h != node))
        .cloned()
        .collect();
    let service = elsewhere.get(rng.usize(0..elsewhere.len().max(1)))?.clone();
    let acked = cluster.move_service(&service, Some(node));
    Some((service, Some(node.to_owned()), acked))
}

/// Moves a service that runs on `node` to another node, to put the agent in the middle
/// of a stop; returns the operation (service, target, acknowledged) when there was one.
fn move_one_away(
    cluster: &LabCluster,
    node: &str,
    rng: &mut fastrand::Rng,
) -> Option<(String, Option<String>, bool)> {
    let here: Vec<String> = cluster
        .services
        .iter()
        .filter(|s| cluster.host_of(s).as_deref() == Some(node))
        .cloned()
        .collect();
    let service = here.get(rng.usize(0..here.len().max(1)))?.clone();
    let others: Vec<&String> = cluster.names.iter().filter(|n| *n != node).collect();
    let to = (*others.get(rng.usize(0..others.len().max(1)))?).clone();
    let acked = cluster.move_service(&service, Some(&to));
    Some((service, Some(to), acked))
}

/// Makes one of the single-node faults a rename or removal happens under.
fn make_simple(cluster: &mut LabCluster, kind: FaultKind, node: &str) -> Result<(), String> {
    match kind {
        FaultKind::Pause => cluster.pause(node, true),
        FaultKind::Isolate => cluster.link(node, false)?,
        _ => cluster.kill_agent(node),
    }
    Ok(())
}

/// Heals what [`make_simple`] made.
fn heal_simple(cluster: &mut LabCluster, kind: FaultKind, node: &str) -> Result<(), String> {
    match kind {
        FaultKind::Pause => cluster.pause(node, false),
        FaultKind::Isolate => cluster.net.heal()?,
        _ => cluster.power_on(node)?,
    }
    Ok(())
}

/// Who it hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The current leader.
    Leader,
    /// A node that is not the leader.
    Follower,
}

/// One fault as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    /// Sequence number.
    pub n: usize,
    /// What.
    pub kind: FaultKind,
    /// Leader or follower.
    pub target: Target,
    /// The node(s) hit.
    pub nodes: Vec<String>,
    /// How long it was held, ms.
    pub held_ms: u64,
    /// Operations submitted while it was held: (service, node or clear, acknowledged).
    pub operations: Vec<(String, Option<String>, bool)>,
    /// How long the cluster took to be healthy again after healing, ms.
    pub recovered_ms: u64,
}

/// A schedule run's outcome.
#[derive(Debug, Serialize)]
pub struct ScheduleReport {
    /// The seed.
    pub seed: u64,
    /// Faults injected.
    pub faults: Vec<FaultRecord>,
    /// Kinds skipped, with why.
    pub skipped: Vec<(FaultKind, String)>,
}

/// The kinds usable on this cluster and machine, and the skipped ones with why.
#[must_use]
pub fn usable_kinds(cluster: &LabCluster) -> (Vec<FaultKind>, Vec<(FaultKind, String)>) {
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for kind in FaultKind::ALL {
        match kind {
            FaultKind::Split if cluster.names.len() < 5 => skipped.push((
                kind,
                "a 2+3 split needs 5 nodes (with 3, isolating one node is the split)".into(),
            )),
            FaultKind::Netem => match cluster.net.netem(1, 1, 0) {
                Ok(()) => {
                    cluster.net.clear_netem(1);
                    usable.push(kind);
                }
                Err(why) => skipped.push((kind, format!("{why} (kernel without sch_netem)"))),
            },
            _ => usable.push(kind),
        }
    }
    (usable, skipped)
}

fn pick_target(cluster: &LabCluster, rng: &mut fastrand::Rng) -> Option<(Target, String)> {
    let t0 = Instant::now();
    let leader = loop {
        match cluster.leader() {
            Some(leader) => break leader,
            None if t0.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            None => return None,
        }
    };
    if rng.u8(0..3) == 0 {
        return Some((Target::Leader, leader));
    }
    let followers: Vec<&String> = cluster.names.iter().filter(|n| **n != leader).collect();
    let pick = followers.get(rng.usize(0..followers.len().max(1)))?;
    Some((Target::Follower, (*pick).clone()))
}

/// Injects `count` random faults (seeded), each healed and recovered from before the
/// next; submits random `move`s during some of them.
///
/// # Errors
/// A fault cannot be made or healed, or the cluster does not recover within `recover`.
pub fn run_schedule(
    cluster: &mut LabCluster,
    count: usize,
    seed: u64,
    recover: Duration,
    mut progress: impl FnMut(&FaultRecord),
) -> Result<ScheduleReport, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (kinds, skipped) = usable_kinds(cluster);
    let mut faults = Vec::new();
    // Kinds are dealt from a shuffled deck: every usable kind comes once in each
    // round of `kinds.len()` faults, in a seeded random order.
    let mut deck: Vec<FaultKind> = Vec::new();
    for n in 0..count {
        if deck.is_empty() {
            deck.clone_from(&kinds);
            rng.shuffle(&mut deck);
        }
        let Some(kind) = deck.pop() else {
            return Err("no usable fault kind".into());
        };
        let (target, node) = pick_target(cluster, &mut rng)
            .ok_or_else(|| format!("fault {n}: no node with quorum answers"))?;
        let held = Duration::from_millis(rng.u64(500..3000));
        let mut nodes = vec![node.clone()];
        let mut operations = Vec::new();
        // Rename/remove faults: the fault under the spec change, and the service to
        // add back.
        let mut underlying: Option<FaultKind> = None;
        let mut removed: Option<String> = None;
        match kind {
            FaultKind::PowerLoss => cluster.poweroff(&node)?,
            FaultKind::Isolate | FaultKind::Flap => cluster.link(&node, false)?,
            FaultKind::Split => {
                let other = cluster
                    .names
                    .iter()
                    .filter(|x| **x != node)
                    .nth(rng.usize(0..cluster.names.len() - 1))
                    .cloned()
                    .unwrap_or_default();
                nodes.push(other);
                cluster.split(&nodes)?;
            }
            FaultKind::Pause => cluster.pause(&node, true),
            FaultKind::Restart => cluster.kill_agent(&node),
            FaultKind::Netem => {
                let i = cluster.names.iter().position(|x| *x == node).unwrap_or(0) + 1;
                cluster.net.netem(i, rng.u32(20..200), rng.u32(0..30))?;
            }
            FaultKind::PauseInStop | FaultKind::KillInStop => {
                operations.extend(move_one_away(cluster, &node, &mut rng));
                // The stop order reaches the node within a few heartbeats; the
                // adversarial workloads take seconds to stop.
                std::thread::sleep(Duration::from_millis(rng.u64(50..600)));
                if kind == FaultKind::PauseInStop {
                    cluster.pause(&node, true);
                } else {
                    cluster.kill_agent(&node);
                }
            }
            FaultKind::KillInAdoption => {
                cluster.kill_agent(&node);
                cluster.power_on(&node)?;
                std::thread::sleep(Duration::from_millis(rng.u64(20..400)));
                cluster.kill_agent(&node);
            }
            FaultKind::RenameInFault | FaultKind::RemoveInFault => {
                let hosted: Vec<String> = cluster
                    .services
                    .iter()
                    .filter(|s| cluster.host_of(s).as_deref() == Some(node.as_str()))
                    .cloned()
                    .collect();
                let pool = if hosted.is_empty() {
                    cluster.services.clone()
                } else {
                    hosted
                };
                let under =
                    [FaultKind::Pause, FaultKind::Isolate, FaultKind::Restart][rng.usize(0..3)];
                make_simple(cluster, under, &node)?;
                underlying = Some(under);
                std::thread::sleep(Duration::from_millis(rng.u64(50..600)));
                if let Some(service) = pool.get(rng.usize(0..pool.len().max(1))).cloned() {
                    if kind == FaultKind::RenameInFault {
                        if let Some((new, acked)) = cluster.rename_service(&service, &node) {
                            operations.push((service, Some(new), acked));
                        }
                    } else if let Some(acked) = cluster.set_in_spec(&service, false, &node) {
                        operations.push((service.clone(), None, acked));
                        removed = Some(service);
                    }
                }
            }
            FaultKind::KillInStart => {
                operations.extend(move_one_here(cluster, &node, &mut rng));
                // The old holder stops first (seconds for the adversarial workloads),
                // then the node starts it: the kill lands before, during or after.
                std::thread::sleep(Duration::from_millis(rng.u64(100..3500)));
                cluster.kill_agent(&node);
            }
        }
        let t0 = Instant::now();
        while t0.elapsed() < held {
            if kind == FaultKind::Flap {
                std::thread::sleep(Duration::from_millis(150));
                let up = (t0.elapsed().as_millis() / 150).is_multiple_of(2);
                cluster.link(&node, up)?;
            } else if rng.u8(0..4) == 0 && !cluster.services.is_empty() {
                let service = cluster.services[rng.usize(0..cluster.services.len())].clone();
                let to = if rng.bool() {
                    Some(cluster.names[rng.usize(0..cluster.names.len())].clone())
                } else {
                    None
                };
                let acked = cluster.move_service(&service, to.as_deref());
                operations.push((service, to, acked));
            } else {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if let Some(service) = removed {
            // Back under its name while the node is still cut off or paused.
            if let Some(acked) = cluster.set_in_spec(&service, true, &node) {
                operations.push((service, None, acked));
            }
        }
        if let Some(under) = underlying {
            heal_simple(cluster, under, &node)?;
        }
        // Heal.
        match kind {
            FaultKind::PowerLoss
            | FaultKind::Restart
            | FaultKind::KillInStop
            | FaultKind::KillInAdoption
            | FaultKind::KillInStart => cluster.power_on(&node)?,
            FaultKind::Isolate | FaultKind::Flap | FaultKind::Split => cluster.net.heal()?,
            FaultKind::Pause | FaultKind::PauseInStop => cluster.pause(&node, false),
            FaultKind::Netem => {
                let i = cluster.names.iter().position(|x| *x == node).unwrap_or(0) + 1;
                cluster.net.clear_netem(i);
            }
            FaultKind::RenameInFault | FaultKind::RemoveInFault => {}
        }
        let healing = Instant::now();
        cluster
            .wait_healthy(recover)
            .map_err(|e| format!("fault {n} ({kind:?} of {node}) did not recover: {e}"))?;
        let record = FaultRecord {
            n,
            kind,
            target,
            nodes,
            held_ms: u64::try_from(held.as_millis()).unwrap_or(u64::MAX),
            operations,
            recovered_ms: u64::try_from(healing.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        progress(&record);
        faults.push(record);
    }
    Ok(ScheduleReport {
        seed,
        faults,
        skipped,
    })
}
