//! The lease handover, the new leader's side (docs/ARCHITECTURE.md, "The failover
//! protocol"; the rules are [`crate::lease_rules`], checked by the Stateright model in
//! `crates/lease-model/tests/lease_model.rs`).
//!
//! A new leader does not know which leases its predecessors granted. Instead of
//! waiting a full TTL + drift margin from its own election, it asks every voter
//! "how long ago did you last hear from a leader of a term before mine?"
//! ([`PeerMessage::LeaseBound`]). A voter answers only while its own term is the
//! asker's, so no earlier leader can get another confirmation from it; each answer,
//! placed on this node's clock at its arrival, is no earlier than the real moment.
//! Once a majority answered, every earlier lease ends by the latest answer + TTL, and
//! the leader counts silent nodes down after that + the drift margin (or after its
//! own election + TTL + drift, whichever comes first). Voters that do not answer (an
//! older version, down, slow) simply leave the full wait in force; so does a
//! membership change in progress.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::PeerMessage;
use crate::Node;

/// How often a leader without a bound asks again.
const ASK_AGAIN: Duration = Duration::from_millis(200);

impl Node {
    /// Runs for the agent's life: whenever this node leads a term whose predecessors'
    /// leases are not bounded yet, asks the voters.
    pub(crate) async fn bound_predecessor_leases_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.clone().bound_predecessor_leases().await;
        }
    }

    /// One round of asking, when this node leads and has no bound for its term.
    async fn bound_predecessor_leases(self: Arc<Self>) {
        if !self.is_leader() {
            return;
        }
        let status = self.consensus.status();
        // During a joint configuration a majority of each voter set would be needed:
        // keep the full wait instead.
        if !status.membership_settled {
            tracing::debug!(
                term = status.term,
                "a membership change is under way: the full wait applies"
            );
            return;
        }
        let Some(ttl) = self.applied_timings().map(|t| t.lease_ttl.get()) else {
            return;
        };
        let term = status.term;
        {
            let Ok(mut table) = self.leases.lock() else {
                return;
            };
            let table = table.for_term(term);
            if table.predecessors_end.is_some()
                || table.bound_asked.is_some_and(|at| at.elapsed() < ASK_AGAIN)
            {
                return;
            }
            table.bound_asked = Some(Instant::now());
        }
        tracing::debug!(
            term,
            "asking the voters when they last heard from an earlier leader"
        );
        let mut heard: Vec<Instant> = Vec::new();
        if let Some(ago) = self.consensus.heard_from_earlier_leaders(term) {
            heard.extend(Instant::now().checked_sub(ago));
        }
        let mut asks = tokio::task::JoinSet::new();
        for (id, peer) in &status.voters {
            if *id == status.id {
                continue;
            }
            let (node, peer) = (self.clone(), peer.clone());
            asks.spawn(async move {
                let reply = node
                    .call_peer(
                        "lease-bound",
                        &peer,
                        &PeerMessage::LeaseBound { term },
                        ttl / 3,
                    )
                    .await;
                // Placed at the answer's arrival: never earlier than the real moment.
                let arrived = Instant::now();
                let ago = reply
                    .ok()
                    .filter(|r| r["ok"] == true)
                    .and_then(|r| r["heard_us_ago"].as_u64())?;
                arrived.checked_sub(Duration::from_micros(ago))
            });
        }
        // Any majority of answers bounds the earlier leases (it meets the majority
        // that confirmed the last grant), and more answers only move the bound later:
        // stop at the first majority instead of waiting for a dead voter's timeout.
        let majority = status.voters.len() / 2 + 1;
        while heard.len() < majority {
            let Some(answer) = asks.join_next().await else {
                break;
            };
            if let Ok(Some(at)) = answer {
                heard.push(at);
            }
        }
        asks.abort_all();
        let Some(end) =
            crate::lease_rules::predecessor_leases_end(&heard, status.voters.len(), ttl)
        else {
            tracing::debug!(
                term,
                answers = heard.len(),
                voters = status.voters.len(),
                "no majority bounded the earlier leaders' leases yet: the full wait applies"
            );
            return;
        };
        if let Ok(mut table) = self.leases.lock() {
            // Still the same term (a new one cleared the table, and this answer is not
            // about it).
            if table.term == term && self.consensus.status().term == term {
                table.predecessors_end = Some(end);
                tracing::info!(
                    term,
                    answers = heard.len(),
                    "earlier leaders' leases end in {} ms at the latest (bounded by the voters' answers)",
                    end.saturating_duration_since(Instant::now()).as_millis()
                );
            }
        }
    }

    /// A voter's answer to [`PeerMessage::LeaseBound`]: how long ago (µs) this node
    /// last heard from a leader of a term before `term`, when its own term is `term`.
    pub(crate) fn answer_lease_bound(&self, term: u64) -> serde_json::Value {
        match self.consensus.heard_from_earlier_leaders(term) {
            Some(ago) => serde_json::json!({
                "ok": true,
                "heard_us_ago": u64::try_from(ago.as_micros()).unwrap_or(u64::MAX),
            }),
            None => serde_json::json!({ "ok": false }),
        }
    }
}
