//! The node's reconciler, decision half: a pure function from what the node knows at
//! the start of a tick to what it must do. No I/O, no clock, no locks — so property
//! tests can attack the rules directly (random interleavings of lease loss, stop
//! orders, exits and restarts). The executor in `runtime.rs` carries the actions out
//! and records their results.
//!
//! The rules (DESIGN invariant 1, issue "never twice"):
//! - a workload is stopped when its service is no longer assigned here, when this node
//!   lost its lease, when it exited (what it forked is stopped too), when it failed its
//!   health check, or when `quorate restart` asked for a newer generation;
//! - nothing starts without a valid lease and a view at least as new as the grant, nor
//!   while the same service is still running here or still stopping (its stop not
//!   confirmed), nor before its `after` dependencies run somewhere;
//! - a stop order is confirmed, and a stale claim corrected, only for a service of
//!   which nothing runs or stops here.
//!
//! What the executor guarantees in turn: a stopped workload stays in the fence's lists
//! until its stop is confirmed (see `runtime.rs`, `Stop`).

use std::collections::{BTreeMap, BTreeSet};

/// A workload the node runs, as the decision needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    /// It ended by itself: `Some(true)` with success, `Some(false)` with failure.
    pub exited: Option<bool>,
    /// The restart generation it was started for.
    pub generation: u64,
}

/// What the node knows at the start of a tick.
#[derive(Clone, Debug, Default)]
pub struct Situation {
    /// Services the applied state assigns to this node.
    pub assigned: BTreeSet<String>,
    /// Services the applied state says may run here (this node's own last reports).
    pub claimed: BTreeSet<String>,
    /// Stop orders to this node not yet answered, with the state to answer.
    pub unconfirmed_stops: BTreeMap<String, String>,
    /// Services reported running somewhere (for `after`).
    pub running_somewhere: BTreeSet<String>,
    /// The `after` dependencies of each assigned service.
    pub after: BTreeMap<String, Vec<String>>,
    /// Current restart generation of each service.
    pub generations: BTreeMap<String, u64>,
    /// This node holds a valid lease.
    pub lease_ok: bool,
    /// Its view is at least as new as the lease grant.
    pub caught_up: bool,
    /// Fencing is disabled (tests only): workloads are kept without a lease.
    pub keep_without_lease: bool,
    /// The workloads it runs.
    pub running: BTreeMap<String, Running>,
    /// Workloads whose stop is not confirmed yet (they are still fenced).
    pub stopping: BTreeSet<String>,
    /// Workloads that failed their health check.
    pub unhealthy: BTreeSet<String>,
    /// Workloads that passed their first health check.
    pub ready: BTreeSet<String>,
    /// Services whose restart budget on this node is spent.
    pub given_up: BTreeSet<String>,
}

/// Why a workload is stopped, which decides what is reported and witnessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// It ended by itself (reported `restarting` while assigned, else `stopped` or
    /// `failed` by its exit).
    Exited,
    /// Not assigned here any more, or no lease.
    Unassigned,
    /// `quorate restart`: a newer generation (the next start is not counted).
    Restart,
    /// It failed its health check (reported `restarting`).
    Unhealthy,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop the workload: it leaves the running table now and stays fenced until the
    /// stop is confirmed.
    Stop {
        /// The service.
        service: String,
        /// Why.
        reason: StopReason,
    },
    /// It passed its first health check: report it running.
    MarkRunning(String),
    /// Start the service (the executor still applies the restart budget and checks
    /// the lease and the assignment once more right before the start).
    Start(String),
    /// Report `state` for a service nothing runs of here (a stale claim corrected, or
    /// a stop order confirmed), unless something else is reported for it this tick.
    Report {
        /// The service.
        service: String,
        /// The state.
        state: String,
    },
}

/// The state to report for a workload stopped for `reason`, before its stop is
/// confirmed (`None`: report `stopping`).
#[must_use]
pub fn report_on_stop(reason: StopReason, assigned: bool, exited: Option<bool>) -> &'static str {
    match reason {
        StopReason::Exited if assigned => "restarting",
        StopReason::Exited if exited == Some(true) => "stopped",
        StopReason::Exited => "failed",
        StopReason::Unhealthy => "restarting",
        StopReason::Unassigned | StopReason::Restart => "stopping",
    }
}

/// Decides one tick. Deterministic; every action names a service of the situation.
#[must_use]
pub fn decide(s: &Situation) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut leaving: BTreeSet<&str> = BTreeSet::new();
    let lease_lost = !s.lease_ok && !s.keep_without_lease;
    for (service, w) in &s.running {
        let current = s.generations.get(service).copied().unwrap_or(0);
        let reason = if w.exited.is_some() {
            Some(StopReason::Exited)
        } else if w.generation < current {
            Some(StopReason::Restart)
        } else if !s.assigned.contains(service) || lease_lost {
            Some(StopReason::Unassigned)
        } else {
            None
        };
        if let Some(reason) = reason {
            leaving.insert(service);
            actions.push(Action::Stop {
                service: service.clone(),
                reason,
            });
        }
    }
    for service in &s.ready {
        if s.running.contains_key(service) && !leaving.contains(service.as_str()) {
            actions.push(Action::MarkRunning(service.clone()));
        }
    }
    for service in &s.unhealthy {
        if s.running.contains_key(service) && !leaving.contains(service.as_str()) {
            leaving.insert(service);
            actions.push(Action::Stop {
                service: service.clone(),
                reason: StopReason::Unhealthy,
            });
        }
    }
    // Something of it runs or stops here: nothing may start, be confirmed or corrected.
    let present = |service: &str| s.running.contains_key(service) || s.stopping.contains(service);
    if s.lease_ok && s.caught_up {
        for service in &s.assigned {
            if present(service) || s.given_up.contains(service) {
                continue;
            }
            let deps = s.after.get(service).map_or(&[][..], Vec::as_slice);
            if deps.iter().any(|d| !s.running_somewhere.contains(d)) {
                continue;
            }
            actions.push(Action::Start(service.clone()));
        }
    }
    for service in &s.claimed {
        if !present(service) && !s.assigned.contains(service) {
            actions.push(Action::Report {
                service: service.clone(),
                state: "stopped".to_owned(),
            });
        }
    }
    for (service, state) in &s.unconfirmed_stops {
        if !present(service) {
            actions.push(Action::Report {
                service: service.clone(),
                state: state.clone(),
            });
        }
    }
    actions
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SERVICES: [&str; 4] = ["a", "b", "c", "d"];

    fn set(mask: u8) -> BTreeSet<String> {
        SERVICES
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, s)| (*s).to_owned())
            .collect()
    }

    prop_compose! {
        fn situation()(
            assigned in 0u8..16, claimed in 0u8..16, stops in 0u8..16, somewhere in 0u8..16,
            running in 0u8..16, exited in 0u8..16, failed in 0u8..16, stale_gen in 0u8..16,
            stopping in 0u8..16, unhealthy in 0u8..16, ready in 0u8..16, given_up in 0u8..16,
            lease_ok in any::<bool>(), caught_up in any::<bool>(), keep in any::<bool>(),
            after_a_on_b in any::<bool>(),
        ) -> Situation {
            let generations: BTreeMap<String, u64> = set(stale_gen).into_iter().map(|s| (s, 1)).collect();
            Situation {
                assigned: set(assigned),
                claimed: set(claimed),
                unconfirmed_stops: set(stops).into_iter().map(|s| (s, "stopped".to_owned())).collect(),
                running_somewhere: set(somewhere),
                after: if after_a_on_b { [("a".to_owned(), vec!["b".to_owned()])].into() } else { BTreeMap::new() },
                generations,
                lease_ok,
                caught_up,
                keep_without_lease: keep,
                running: set(running).into_iter().map(|s| {
                    let i = SERVICES.iter().position(|x| *x == s).unwrap();
                    let exited = (exited & (1 << i) != 0).then_some(failed & (1 << i) == 0);
                    (s, Running { exited, generation: 0 })
                }).collect(),
                // A service is either running or stopping here, not both.
                stopping: set(stopping & !running),
                unhealthy: set(unhealthy),
                ready: set(ready),
                given_up: set(given_up),
            }
        }
    }

    fn starts(actions: &[Action]) -> BTreeSet<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn stops(actions: &[Action]) -> Vec<(String, StopReason)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop { service, reason } => Some((service.clone(), *reason)),
                _ => None,
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Nothing starts without a valid lease and a current view, nor a service that
        /// runs or stops here, is not assigned, or has given up.
        #[test]
        fn starts_need_a_lease_a_view_and_nothing_of_it_here(s in situation()) {
            let actions = decide(&s);
            for service in starts(&actions) {
                prop_assert!(s.lease_ok && s.caught_up, "{service} started without lease/view: {s:?}");
                prop_assert!(s.assigned.contains(&service));
                prop_assert!(!s.running.contains_key(&service), "{service} started twice here");
                prop_assert!(!s.stopping.contains(&service), "{service} started while its stop is unconfirmed");
                prop_assert!(!s.given_up.contains(&service));
                for dep in s.after.get(&service).into_iter().flatten() {
                    prop_assert!(s.running_somewhere.contains(dep));
                }
            }
        }

        /// Every workload that must not run any more is stopped, exactly once; one
        /// that may run is left alone.
        #[test]
        fn whatever_must_not_run_is_stopped_once(s in situation()) {
            let actions = decide(&s);
            let stopped = stops(&actions);
            let names: BTreeSet<&String> = stopped.iter().map(|(n, _)| n).collect();
            prop_assert_eq!(names.len(), stopped.len(), "a workload stopped twice: {:?}", stopped);
            for (service, w) in &s.running {
                let generation = s.generations.get(service).copied().unwrap_or(0);
                let must_stop = w.exited.is_some()
                    || w.generation < generation
                    || !s.assigned.contains(service)
                    || (!s.lease_ok && !s.keep_without_lease)
                    || s.unhealthy.contains(service);
                prop_assert_eq!(names.contains(service), must_stop, "{} in {:?}", service, s);
            }
            for (service, _) in &stopped {
                prop_assert!(s.running.contains_key(service), "stopped what does not run: {}", service);
            }
        }

        /// A stop order is confirmed, and a claim corrected, only for a service of
        /// which nothing runs or stops here — the leader starts it elsewhere on the
        /// strength of that report.
        #[test]
        fn nothing_is_reported_stopped_while_anything_of_it_runs_here(s in situation()) {
            for action in decide(&s) {
                if let Action::Report { service, .. } = action {
                    prop_assert!(!s.running.contains_key(&service), "{service} reported while running");
                    prop_assert!(!s.stopping.contains(&service), "{service} reported while its stop is unconfirmed");
                }
            }
        }
    }

    /// The executor's side of the rule, modelled: random ticks with lease loss,
    /// assignment changes, exits, and stops that succeed or not. The fence's lists are
    /// `running ∪ stopping`; a workload is alive from its start until its stop is
    /// confirmed. On every step nothing alive is missing from the fence's lists, and
    /// nothing is reported stopped while alive.
    #[test]
    fn nothing_alive_ever_leaves_the_fences_lists() {
        let mut rng = proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        );
        for _ in 0..200 {
            let mut s = Situation::default();
            let mut alive: BTreeSet<String> = BTreeSet::new();
            for _ in 0..200 {
                // The world changes.
                s.lease_ok = rng.random_ratio(4, 5);
                s.caught_up = rng.random_ratio(9, 10);
                s.assigned = set(rng.random::<u8>() & 15);
                s.unconfirmed_stops = set(rng.random::<u8>() & 15)
                    .into_iter()
                    .filter(|x| !s.assigned.contains(x))
                    .map(|x| (x, "stopped".to_owned()))
                    .collect();
                for (service, w) in &mut s.running {
                    if rng.random_ratio(1, 10) {
                        w.exited = Some(rng.random());
                    }
                    let _ = service;
                }
                // Decide and execute, as runtime.rs does.
                for action in decide(&s) {
                    match action {
                        Action::Stop { service, .. } => {
                            s.running.remove(&service);
                            s.stopping.insert(service);
                        }
                        Action::Start(service) => {
                            s.running.insert(
                                service.clone(),
                                Running {
                                    exited: None,
                                    generation: 0,
                                },
                            );
                            alive.insert(service);
                        }
                        Action::Report { service, state } => {
                            assert!(
                                !alive.contains(&service),
                                "{service} reported {state} while alive"
                            );
                        }
                        Action::MarkRunning(_) => {}
                    }
                    let fenced: BTreeSet<&String> =
                        s.running.keys().chain(s.stopping.iter()).collect();
                    for a in &alive {
                        assert!(fenced.contains(a), "{a} is alive but not fenced: {s:?}");
                    }
                }
                // Stops complete, or not (a process that survives SIGKILL a while, a
                // unit systemd does not confirm): only a confirmed one is dead.
                let stopping: Vec<String> = s.stopping.iter().cloned().collect();
                for service in stopping {
                    if rng.random_ratio(2, 3) {
                        s.stopping.remove(&service);
                        alive.remove(&service);
                    }
                }
            }
        }
    }
}
