//! The lease handover, checked exhaustively within bounds by a model checker
//! (Stateright) instead of by hope (issue 17).
//!
//! Three nodes, discrete time. What the model has: elections by any majority (an old
//! leader that hears nothing of it goes on believing it leads), heartbeats, lease
//! renewals whose request and reply are delayed or lost, a grant split into its start
//! (the leader records that it heard itself) and its confirmation by a majority
//! heartbeat round, the new leader's question "since when have you not heard from a
//! leader of an earlier term?" with delayed answers, agent restarts (which forget what
//! they heard), and the leader's reassignment of the service once it counts the holder
//! down. The decisions are the agent's own pure functions
//! ([`quorate_agent::lease_rules::predecessor_leases_end`] and
//! [`quorate_agent::lease_rules::in_grace`]).
//!
//! The property: whenever the service is reassigned, its previous holder's fence
//! deadline plus the fence's worst reaction lies before that moment. The same model with
//! the bound computed wrong (the earliest answer instead of the latest) must break it.
//!
//! Bounds: 3 nodes, one election (any majority, at any time), one agent restart, time
//! up to `QUORATE_MODEL_TICKS` ticks (default 4; TTL 2 ticks, drift margin 1): about
//! 18 million distinct states, explored exhaustively (about 50 s: this crate is built
//! optimized even in test builds, see the workspace manifest).
//! The agent does not use this handover yet (issue 17): the rules are checked first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use quorate_agent::lease_rules::{in_grace, predecessor_leases_end};
use stateright::{Checker, Model, Property};

const N: usize = 3;
/// Terms 1..=TERMS (term 1 is the first leader's; one election makes term 2).
const TERMS: usize = 2;
const TTL: u8 = 2;
/// The drift margin: covers the fence's reaction (deadline → last kill).
const DRIFT: u8 = 1;
/// The fence's worst reaction; the model's fence is as slow as the margin allows.
const REACTION: u8 = DRIFT;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    /// Global time, in ticks.
    t: u8,
    /// Each node's current term (its vote).
    term: [u8; N],
    /// The term a node believes it leads, if any.
    leads: [Option<u8>; N],
    /// `heard[v][term - 1]`: the last tick `v` heard from the leader of `term` (a leader
    /// hears itself when it starts a grant).
    heard: [[Option<u8>; TERMS]; N],
    /// A renewal request of each node in flight: the tick it was sent.
    request: [Option<u8>; N],
    /// A grant a leader has started for a node: (leader, holder, request sent at).
    granting: Option<(u8, u8, u8)>,
    /// Each node's fence deadline: its request's send time + TTL, once granted.
    deadline: [Option<u8>; N],
    /// Which node the service is assigned to.
    holder: u8,
    /// `ends[l][h]`: leader `l`'s lease table (this term only).
    ends: [[Option<u8>; N]; N],
    /// When `l` became leader.
    since: [u8; N],
    /// Answers `l` received: which voters answered (a bit each), and the latest and the
    /// earliest of the times they last heard from an earlier leader — all the bound
    /// needs, kept small. (An answer's delay only makes it later on the leader's clock,
    /// never earlier: the model takes the worst case, no delay.)
    answered: [u8; N],
    latest: [Option<u8>; N],
    earliest: [Option<u8>; N],
    /// Elections and restarts so far.
    elections: u8,
    restarts: u8,
    /// Whether a leader of a later term reassigned the service, and whether a
    /// reassignment broke the rule.
    reassigned_by_new_leader: bool,
    violation: bool,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Action {
    Tick,
    /// `c` wins an election with `other`'s vote.
    Elect {
        c: u8,
        other: u8,
    },
    Request {
        h: u8,
    },
    GrantStart {
        l: u8,
        h: u8,
    },
    /// The confirmation round with `other`; `delivered`: the reply reaches the holder.
    GrantConfirm {
        other: u8,
        delivered: bool,
    },
    /// `l` asks `v`, and `v` answers if it follows `l`'s term.
    Ask {
        l: u8,
        v: u8,
    },
    Restart {
        v: u8,
    },
    /// Committed with `other`'s acknowledgement (a majority at `l`'s term).
    Reassign {
        l: u8,
        to: u8,
        other: u8,
    },
}

struct LeaseModel {
    max_time: u8,
    max_elections: u8,
    max_restarts: u8,
    /// The deliberately wrong bound: the earliest answer instead of the latest.
    wrong_bound: bool,
}

fn idx(n: u8) -> usize {
    usize::from(n)
}

impl LeaseModel {
    /// The time `v` last heard from a leader of a term before `term`. (A restart sets
    /// it to the restart's time: what the agent heard before is forgotten, and was
    /// heard before that — the agent answers with its start time.)
    fn last_heard_before(s: &State, v: usize, term: u8) -> u8 {
        s.heard[v][..usize::from(term - 1)]
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Records that `v` heard from the leader of `term` at `s.t`. Only earlier terms
    /// than the last are ever asked about: the last term's records are left out to keep
    /// the state space small.
    fn hear(s: &mut State, v: usize, term: u8) {
        if usize::from(term) < TERMS {
            s.heard[v][usize::from(term - 1)] = Some(s.t);
        }
    }

    fn bound(&self, s: &State, l: usize) -> Option<u8> {
        let count = s.answered[l].count_ones() as usize;
        let (Some(latest), Some(earliest)) = (s.latest[l], s.earliest[l]) else {
            return None;
        };
        if self.wrong_bound {
            return (count > N / 2).then_some(earliest + TTL);
        }
        // The agent's own function, over answers that have the same latest time.
        predecessor_leases_end(&vec![latest; count], N, TTL)
    }

    /// Leader `l` counts `h` down: past its grace and past the lease it granted `h`.
    fn counts_down(&self, s: &State, l: usize, h: usize) -> bool {
        !in_grace(s.t, s.since[l], self.bound(s, l), TTL, DRIFT)
            && s.ends[l][h].is_none_or(|end| s.t > end + DRIFT)
    }
}

impl Model for LeaseModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        // Node 0 leads term 1 and granted the holder a lease at tick 0, confirmed by
        // everyone; the holder is the leader itself or a follower.
        (0..2)
            .map(|holder: u8| {
                let mut deadline = [None; N];
                deadline[idx(holder)] = Some(TTL);
                let mut ends = [[None; N]; N];
                ends[0][idx(holder)] = Some(TTL);
                let mut heard = [[None; TERMS]; N];
                for v in &mut heard {
                    v[0] = Some(0);
                }
                State {
                    t: 0,
                    term: [1; N],
                    leads: [Some(1), None, None],
                    heard,
                    request: [None; N],
                    granting: None,
                    deadline,
                    holder,
                    ends,
                    since: [0; N],
                    answered: [0; N],
                    latest: [None; N],
                    earliest: [None; N],
                    elections: 0,
                    restarts: 0,
                    reassigned_by_new_leader: false,
                    violation: false,
                }
            })
            .collect()
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.violation {
            return;
        }
        if s.t < self.max_time {
            actions.push(Action::Tick);
        }
        for a in 0..N as u8 {
            for b in 0..N as u8 {
                if a == b {
                    continue;
                }
                if s.elections < self.max_elections && usize::from(s.term[idx(a)]) < TERMS {
                    actions.push(Action::Elect { c: a, other: b });
                }
                if s.leads[idx(a)].is_some() {
                    for other in 0..N as u8 {
                        if other != a {
                            actions.push(Action::Reassign { l: a, to: b, other });
                        }
                    }
                }
            }
            // Only the holder's lease matters to the property.
            if a == s.holder && s.request[idx(a)].is_none() {
                actions.push(Action::Request { h: a });
            }
            if s.restarts < self.max_restarts {
                actions.push(Action::Restart { v: a });
            }
            if s.leads[idx(a)].is_some() {
                if s.granting.is_none() && s.request[idx(s.holder)].is_some() {
                    actions.push(Action::GrantStart { l: a, h: s.holder });
                }
                // The first leader has no predecessor to ask about.
                if s.leads[idx(a)] > Some(1) {
                    for v in 0..N as u8 {
                        if s.answered[idx(a)] & (1 << v) == 0 {
                            actions.push(Action::Ask { l: a, v });
                        }
                    }
                }
            }
        }
        if let Some((l, _, _)) = s.granting {
            for other in 0..N as u8 {
                if other != l {
                    actions.push(Action::GrantConfirm {
                        other,
                        delivered: true,
                    });
                    actions.push(Action::GrantConfirm {
                        other,
                        delivered: false,
                    });
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick => s.t += 1,
            Action::Elect { c, other } => {
                let (c, other) = (idx(c), idx(other));
                let term = s.term[c].max(s.term[other]) + 1;
                if usize::from(term) > TERMS {
                    return None;
                }
                for v in [c, other] {
                    s.term[v] = term;
                    s.leads[v] = None;
                }
                s.leads[c] = Some(term);
                s.since[c] = s.t;
                s.ends[c] = [None; N];
                s.answered[c] = 0;
                s.latest[c] = None;
                s.earliest[c] = None;
                if s.granting
                    .is_some_and(|(l, _, _)| idx(l) == c || idx(l) == other)
                {
                    s.granting = None;
                }
                s.elections += 1;
            }
            Action::Request { h } => s.request[idx(h)] = Some(s.t),
            Action::GrantStart { l, h } => {
                let term = s.leads[idx(l)]?;
                let sent = s.request[idx(h)].take()?;
                // The leader hears itself first: an answer it gives later covers this.
                Self::hear(&mut s, idx(l), term);
                s.granting = Some((l, h, sent));
            }
            Action::GrantConfirm { other, delivered } => {
                let (l, h, sent) = s.granting.take()?;
                let term = s.leads[idx(l)]?;
                // A heartbeat round: `other` accepts it unless it follows a later term.
                if s.term[idx(other)] > term || s.term[idx(l)] != term {
                    return Some(s);
                }
                s.term[idx(other)] = term;
                s.leads[idx(other)] = None;
                Self::hear(&mut s, idx(other), term);
                let end = s.t + TTL;
                let entry = &mut s.ends[idx(l)][idx(h)];
                *entry = Some(entry.map_or(end, |e| e.max(end)));
                if delivered {
                    let d = sent + TTL;
                    let dl = &mut s.deadline[idx(h)];
                    *dl = Some(dl.map_or(d, |e| e.max(d)));
                }
            }
            Action::Ask { l, v } => {
                let term = s.leads[idx(l)]?;
                // Only a voter that already follows this term answers.
                if s.term[idx(v)] < term || s.answered[idx(l)] & (1 << v) != 0 {
                    return None;
                }
                let heard = Self::last_heard_before(&s, idx(v), term);
                s.answered[idx(l)] |= 1 << v;
                s.latest[idx(l)] = Some(s.latest[idx(l)].map_or(heard, |t| t.max(heard)));
                // (The earliest answer is kept only for the deliberately wrong bound.)
                let earliest = if self.wrong_bound { heard } else { 0 };
                s.earliest[idx(l)] = Some(s.earliest[idx(l)].map_or(earliest, |t| t.min(earliest)));
            }
            Action::Restart { v } => {
                s.heard[idx(v)] = [Some(s.t); TERMS];
                s.leads[idx(v)] = None;
                s.request[idx(v)] = None;
                s.restarts += 1;
                if s.granting.is_some_and(|(l, _, _)| l == v) {
                    s.granting = None;
                }
            }
            Action::Reassign { l, to, other } => {
                let term = s.leads[idx(l)]?;
                let h = s.holder;
                if h == to
                    || s.term[idx(other)] > term
                    || s.term[idx(l)] != term
                    || !self.counts_down(&s, idx(l), idx(h))
                {
                    return None;
                }
                s.term[idx(other)] = term;
                s.leads[idx(other)] = None;
                Self::hear(&mut s, idx(other), term);
                // The old holder's fence kills at its deadline, at worst REACTION later.
                if s.deadline[idx(h)].is_some_and(|d| d + REACTION > s.t) {
                    s.violation = true;
                }
                s.reassigned_by_new_leader |= s.since[idx(l)] > 0;
                // From here on only the new holder's lease matters (the old holder's
                // deadline has just been checked to be past): forget the rest, which
                // keeps the state space small.
                s.holder = to;
                s.request = [None; N];
                s.deadline = [None; N];
                s.ends = [[None; N]; N];
                s.granting = None;
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "the holder's fence acts before any reassignment",
                |_, s: &State| !s.violation,
            ),
            Property::sometimes("a new leader reassigns the service", |_, s: &State| {
                s.reassigned_by_new_leader && !s.violation
            }),
        ]
    }
}

fn check(wrong_bound: bool) -> (usize, bool, bool) {
    let max_time = std::env::var("QUORATE_MODEL_TICKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let model = LeaseModel {
        max_time,
        max_elections: 1,
        max_restarts: 1,
        wrong_bound,
    };
    let checker = model.checker().spawn_bfs().join();
    let states = checker.unique_state_count();
    let broken = checker
        .discovery("the holder's fence acts before any reassignment")
        .is_some();
    let reached = checker
        .discovery("a new leader reassigns the service")
        .is_some();
    if let Some(path) = checker.discovery("the holder's fence acts before any reassignment") {
        eprintln!(
            "counterexample ({}):\n{:#?}",
            if wrong_bound {
                "wrong bound"
            } else {
                "the real bound"
            },
            path.into_actions()
        );
    }
    (states, broken, reached)
}

#[test]
fn the_lease_handover_never_reassigns_before_the_old_fence_acts() {
    let (states, broken, reached) = check(false);
    eprintln!("lease model: {states} distinct states explored");
    assert!(
        !broken,
        "the model found a reassignment before the old holder's fence acted"
    );
    assert!(
        reached,
        "the model never reached a reassignment by a new leader: it checks nothing"
    );
}

#[test]
fn the_model_finds_the_double_run_when_the_bound_is_computed_wrong() {
    let (_, broken, _) = check(true);
    assert!(
        broken,
        "with the earliest answer as the bound, the checker must find a violation"
    );
}
