//! The lease handover rules, as pure functions over any clock (the agent passes
//! `Instant`s and `Duration`s, the model checker in `crates/lease-model/tests/lease_model.rs` ticks): the
//! model calls this very code.
//!
//! Why the bound holds (docs/ARCHITECTURE.md, "The failover protocol"): a lease is
//! granted only after a heartbeat round that a majority confirmed, sent after the
//! renewal request; the holder's deadline is its request's send time + TTL, so before
//! any voter of that majority received the confirming heartbeat + TTL. A voter that
//! follows the new leader's term accepts nothing from an earlier leader any more, so
//! what it last heard from one is final. Any majority of such answers meets the
//! majority that confirmed the last grant: the latest answer + TTL bounds every lease
//! an earlier leader could have granted.

use std::ops::Add;

/// When every lease granted by a leader of an earlier term has ended, on this leader's
/// clock: the latest of `heard` (for each voter that answered and follows this term,
/// when it last heard from an earlier leader) + `ttl`. `None` until a majority of
/// `voters` answered.
pub fn predecessor_leases_end<T, D>(heard: &[T], voters: usize, ttl: D) -> Option<T>
where
    T: Copy + Ord + Add<D, Output = T>,
    D: Copy,
{
    if heard.len() < voters / 2 + 1 {
        return None;
    }
    heard.iter().copied().max().map(|t| t + ttl)
}

/// True while a new leader must count every node alive, because leases granted before
/// its term may still run: until its own election (`since`) + TTL + drift at the
/// latest, and no longer than [`predecessor_leases_end`] + drift once that is known.
pub fn in_grace<T, D>(now: T, since: T, predecessors_end: Option<T>, ttl: D, drift: D) -> bool
where
    T: Copy + Ord + Add<D, Output = T>,
    D: Copy + Add<D, Output = D>,
{
    now <= since + (ttl + drift) && predecessors_end.is_none_or(|end| now <= end + drift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_answer_of_a_majority_bounds_the_old_leases() {
        assert_eq!(predecessor_leases_end(&[5_u64], 3, 3), None);
        assert_eq!(predecessor_leases_end(&[5_u64, 2], 3, 3), Some(8));
        assert_eq!(predecessor_leases_end(&[1_u64, 7, 2], 5, 3), Some(10));
        assert!(in_grace(4_u64, 0, None, 3, 1));
        assert!(!in_grace(5_u64, 0, None, 3, 1));
        assert!(!in_grace(3_u64, 0, Some(1), 3, 1));
        assert!(in_grace(2_u64, 0, Some(1), 3, 1));
    }
}
