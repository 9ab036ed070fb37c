//! When this node last heard from a leader, per term: the raw material of the lease
//! handover (`quorate_agent::lease_rules`). A leader grants a lease only after a
//! heartbeat round a majority confirmed; each of those voters received that heartbeat
//! after the holder asked, and records the arrival here before Raft sees it. A leader
//! records its own term before it confirms a grant. A new leader asks a majority
//! "when did you last hear from a leader of a term before mine?" and bounds every
//! lease its predecessors could have granted.

use std::collections::BTreeMap;
use std::time::Instant;

/// Terms kept apart; older ones are folded into the next (later instants win), which
/// only ever makes an answer later, never earlier.
const TERMS_KEPT: usize = 16;

/// The latest arrival of a leader's message, per leader term.
#[derive(Debug)]
pub(crate) struct HeardFromLeaders {
    by_term: BTreeMap<u64, Instant>,
}

impl HeardFromLeaders {
    /// Starts with this process's start under term 0: whatever an earlier run of this
    /// node heard, it heard before now.
    pub(crate) fn new(started: Instant) -> Self {
        Self {
            by_term: BTreeMap::from([(0, started)]),
        }
    }

    /// A leader of `term` was heard (or, on the leader, is about to confirm a grant)
    /// at `at`.
    pub(crate) fn note(&mut self, term: u64, at: Instant) {
        let entry = self.by_term.entry(term).or_insert(at);
        *entry = (*entry).max(at);
        while self.by_term.len() > TERMS_KEPT {
            let Some((_, oldest)) = self.by_term.pop_first() else {
                break;
            };
            if let Some(next) = self.by_term.values_mut().next() {
                *next = (*next).max(oldest);
            }
        }
    }

    /// The latest arrival from a leader of any term before `term`.
    pub(crate) fn latest_before(&self, term: u64) -> Option<Instant> {
        self.by_term.range(..term).map(|(_, at)| *at).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_latest_arrival_before_a_term_counts_and_folding_only_moves_it_later() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut heard = HeardFromLeaders::new(t0);
        assert_eq!(heard.latest_before(1), Some(t0));
        heard.note(1, at(10));
        heard.note(2, at(5)); // a late message of term 2 after term 1's
        heard.note(1, at(7)); // never earlier than what was noted
        heard.note(3, at(20));
        assert_eq!(heard.latest_before(2), Some(at(10)));
        assert_eq!(heard.latest_before(3), Some(at(10)));
        assert_eq!(heard.latest_before(4), Some(at(20)));
        // Term 3's own messages never count for term 3.
        for term in 4..40 {
            heard.note(term, at(100 + term));
        }
        assert!(heard.by_term.len() <= TERMS_KEPT);
        assert_eq!(heard.latest_before(39), Some(at(138)));
        assert_eq!(heard.latest_before(40), Some(at(139)));
    }
}
