//! Losing the majority: `quorate recover --force-single` makes the surviving node a
//! one-voter cluster with the last state it had committed (the idea of etcd's
//! `--force-new-cluster`), and the nodes it left out rejoin one by one once each
//! comes back with an empty data dir.
//!
//! **Rules:** the recovery runs offline (the agent stopped), refuses while any other
//! voter answers, drops only entries nobody confirmed, and writes its decision into the
//! replicated state ([`Command::Recovered`]). A left-out node that still has its old
//! log is never asked back (its log could disagree with the recovered one) and its
//! vote requests are refused; the leader asks it again every few seconds.

use std::time::Duration;

use quorate_consensus::{call_app, AppClass, CallError, Command, Consensus, ForcedSingle};
use quorate_net::{Partition, PeerClient};
use quorate_pki::SharedTls;

use crate::cluster::{Node, PeerMessage};
use crate::{AgentConfig, AgentError};

/// What a peer said to "do you have Raft state?".
#[derive(Debug)]
pub(crate) enum ProbeAnswer {
    /// It answered.
    Answered {
        /// True when it has a Raft log.
        has_state: bool,
    },
    /// It answered, refusing this node as a non-member.
    NotMember(String),
    /// No answer within the timeout.
    Silent(String),
}

/// Asks `name` at `addr` whether it has Raft state.
pub(crate) async fn probe(
    name: &str,
    addr: std::net::SocketAddr,
    tls: &SharedTls,
    partition: Partition,
    source: Option<std::net::IpAddr>,
    timeout: Duration,
) -> ProbeAnswer {
    let mut client = PeerClient::new(name, addr, tls, partition).from_address(source);
    let probe = serde_json::to_value(PeerMessage::Probe).unwrap_or_default();
    match call_app(&mut client, AppClass::Report, probe, timeout).await {
        Ok(reply) => ProbeAnswer::Answered {
            has_state: reply["has_state"] == true,
        },
        Err(CallError::NotMember(why)) => ProbeAnswer::NotMember(why),
        Err(e) => ProbeAnswer::Silent(e.to_string()),
    }
}

/// What `recover --force-single` found before changing anything.
#[derive(Debug)]
pub struct RecoveryCheck {
    /// The other voters of the local spec, each silent.
    pub silent: Vec<(String, String)>,
}

/// Checks that a forced recovery may run on this node: the local files are sound, this
/// node is a voter, and no other voter of the local spec answers.
///
/// # Errors
/// Bad input, or another voter answered (the majority is not lost).
pub async fn check_force_single(config: &AgentConfig) -> Result<RecoveryCheck, AgentError> {
    let local = crate::setup::load_local(&config.spec, &config.lock)?;
    let spec = &local.spec;
    let me = spec.nodes.get(&config.node).ok_or_else(|| {
        AgentError::Input(format!(
            "node `{}` is not in the spec {}\n  help: pass --node with the name of this node",
            config.node,
            config.spec.display()
        ))
    })?;
    if !me.voter {
        return Err(AgentError::Input(format!(
            "node `{}` is not a voter: only a voter can carry the cluster alone\n  help: run the recovery on a surviving voter",
            config.node
        )));
    }
    let tls = SharedTls::new(crate::load_tls(config)?);
    let mut silent = Vec::new();
    let mut answered = Vec::new();
    for name in spec.voters().filter(|n| *n != config.node) {
        let Some(addr) = crate::setup::peer_addr(spec, &local.lock, name) else {
            continue;
        };
        match probe(
            name,
            addr,
            &tls,
            Partition::default(),
            quorate_lock::cluster_address(spec, &local.lock, &config.node),
            Duration::from_secs(2),
        )
        .await
        {
            ProbeAnswer::Silent(why) => silent.push((name.to_owned(), why)),
            ProbeAnswer::Answered { .. } | ProbeAnswer::NotMember(_) => {
                answered.push(name.to_owned());
            }
        }
    }
    if !answered.is_empty() {
        return Err(AgentError::Input(format!(
            "{} answered: the majority is not lost, and a forced recovery now would make two clusters; nothing was changed\n  help: start the agents there (and here) instead; `quorate status` shows why there is no quorum",
            answered.join(", ")
        )));
    }
    Ok(RecoveryCheck { silent })
}

/// Rewrites this node's Raft state into a one-voter cluster (the agent must be
/// stopped). Run [`check_force_single`] first.
///
/// # Errors
/// The data dir is in use or holds no committed state; nothing was changed then.
pub fn force_single(config: &AgentConfig) -> Result<ForcedSingle, AgentError> {
    let local = crate::setup::load_local(&config.spec, &config.lock)?;
    let me = crate::cluster::voters(&local.spec, &local.lock)
        .into_iter()
        .find(|(_, p)| p.name == config.node)
        .ok_or_else(|| {
            AgentError::Input(format!(
                "node `{}` is not a voter of the spec and lock",
                config.node
            ))
        })?;
    let command = Command::Recovered {
        by: config.node.clone(),
        at_ms: crate::cluster::now_ms(),
    };
    Consensus::force_single(&config.data_dir, me.0, me.1, command).map_err(|e| {
        AgentError::Input(format!(
            "{e}\n  help: stop the agent on this node first (`systemctl stop quorate`); nothing was changed"
        ))
    })
}

impl Node {
    /// Asks a peer whether it has Raft state (500 ms), from this node's address.
    pub(crate) async fn probe(&self, name: &str, addr: std::net::SocketAddr) -> ProbeAnswer {
        probe(
            name,
            addr,
            &self.tls,
            self.partition.clone(),
            self.own_address(),
            Duration::from_millis(500),
        )
        .await
    }

    /// On the leader, every few seconds: asks each node left out by a forced recovery
    /// whether it came back with an empty data dir, and lets it rejoin if so.
    pub(crate) async fn rejoin_left_out_forever(&self) {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if !self.is_leader() {
                continue;
            }
            let (left_out, spec) = self
                .consensus
                .with_state(|s| {
                    (
                        s.left_out.clone(),
                        s.applied.as_ref().map(|a| (a.spec.clone(), a.lock.clone())),
                    )
                })
                .await;
            let Some((spec, lock)) = spec else { continue };
            for name in left_out {
                let Some(addr) = crate::setup::peer_addr(&spec, &lock, &name) else {
                    continue;
                };
                match self.probe(&name, addr).await {
                    ProbeAnswer::Answered { has_state: false } => {
                        let command = Command::Rejoined {
                            node: name.clone(),
                            by: self.name.clone(),
                            at_ms: crate::cluster::now_ms(),
                        };
                        match self.consensus.write(command, self.quorum_timeout()).await {
                            Ok(_) => {
                                tracing::info!(node = %name, "a node left out by the recovery rejoins");
                            }
                            Err(e) => {
                                tracing::warn!(node = %name, "cannot record the rejoin yet: {e}");
                            }
                        }
                    }
                    ProbeAnswer::Answered { has_state: true } => tracing::warn!(
                        node = %name,
                        "left out by the forced recovery and still has its old Raft state: empty its data dir (keep tls/) and start it again to rejoin"
                    ),
                    ProbeAnswer::NotMember(_) | ProbeAnswer::Silent(_) => {}
                }
            }
        }
    }
}
