//! The WireGuard mesh as the agent keeps it (`network.transport = "wireguard"`): the
//! interface's peers and private key follow the *applied* spec, so a node added, an
//! address changed or a key rotated reaches every node's tunnels with the change
//! itself. The interface is made by `quorate net up` or by systemd-networkd from
//! `quorate render`'s files; the agent only keeps an existing one in sync.
//!
//! **Key rotation without losing quorum.** A rotation changes one node's key, and
//! WireGuard knows one key per peer: the moment a peer switches to the new key, the
//! rotating node's old sessions end, and vice versa. Every node therefore applies a
//! key change two heartbeats after it applied the spec: by then every connected node
//! has learnt the commit (it travels with the next heartbeat, still over the old
//! session), so the switches fall within about one heartbeat of each other, well inside
//! the election timeout — the leader keeps leading, whichever node rotates. A node
//! that missed the change (down, or cut off when its peers switched) and holds a
//! pending next key tries it, and its old key again, in turn, each for three election
//! timeouts, while it hears from no leader.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate_render::{Mesh, WIREGUARD_INTERFACE};
use quorate_wireguard::{keys, link};

use crate::cluster::Node;

/// What was last written to the interface.
#[derive(PartialEq)]
struct Synced {
    mesh: Mesh,
    public_key: String,
}

impl Node {
    /// Keeps the mesh interface's peers and key equal to the applied spec's, forever.
    pub(crate) async fn keep_mesh_forever(self: Arc<Self>, data_dir: PathBuf) {
        let mut synced: Option<Synced> = None;
        let mut seen: Option<u64> = None;
        // The fallback of a node that missed a rotation: which key it tries, since when.
        let mut trying_next = false;
        let mut tried_since = Instant::now();
        loop {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.consensus.applied_beyond(seen))
                    .await;
            seen = self.consensus.status().applied;
            let Some((spec, lock)) = self
                .consensus
                .with_state(|st| {
                    st.applied
                        .as_ref()
                        .map(|a| (a.spec.clone(), a.lock.clone()))
                })
                .await
            else {
                continue;
            };
            if spec.network.transport != quorate_spec::Transport::Wireguard {
                continue;
            }
            let Ok(mesh) = quorate_render::mesh(&spec, &lock, &self.name) else {
                continue;
            };
            let declared = spec
                .nodes
                .get(&self.name)
                .and_then(|n| n.wireguard.as_ref())
                .map(|w| w.public_key.clone());
            let dd = data_dir.clone();
            let Ok(Ok((current, next))) = tokio::task::spawn_blocking(move || {
                Ok::<_, quorate_wireguard::WgError>((
                    keys::read_private(&dd)?,
                    keys::read_next(&dd)?,
                ))
            })
            .await
            else {
                tracing::warn!("cannot read this node's WireGuard keys from the data dir");
                continue;
            };
            let public = |k: &str| keys::public_of(k).unwrap_or_default();
            // The applied spec declares the pending key: the rotation is done here.
            let (current, next) = match next {
                Some(n) if declared.as_deref() == Some(public(&n).as_str()) => {
                    if let Err(e) = keys::promote_next(&data_dir) {
                        tracing::error!("{e}");
                    }
                    (n, None)
                }
                other => (current, other),
            };
            let timings = spec.cluster.timings;
            let cut_off = !self.is_leader()
                && self
                    .consensus
                    .since_leader_heard()
                    .is_none_or(|d| d > timings.election_timeout.get() * 3);
            let key = match next {
                Some(next) if cut_off => {
                    if tried_since.elapsed() > timings.election_timeout.get() * 3 {
                        trying_next = !trying_next;
                        tried_since = Instant::now();
                        tracing::info!(
                            next = trying_next,
                            "no leader heard with a WireGuard key rotation pending: trying the {} key",
                            if trying_next { "next" } else { "current" }
                        );
                    }
                    if trying_next {
                        next
                    } else {
                        current
                    }
                }
                _ => {
                    trying_next = false;
                    tried_since = Instant::now();
                    current
                }
            };
            let wanted = Synced {
                mesh,
                public_key: public(&key),
            };
            if synced.as_ref() == Some(&wanted) {
                continue;
            }
            if synced.is_some() && !cut_off {
                // Every connected node learns the change with the next heartbeat:
                // switch together (see the module's comment).
                tokio::time::sleep(timings.heartbeat.get() * 2).await;
            }
            let mesh = wanted.mesh.clone();
            let result = tokio::task::spawn_blocking(move || {
                if !link::exists(WIREGUARD_INTERFACE) {
                    return Ok(false);
                }
                link::sync(&mesh, &key).map(|()| true)
            })
            .await;
            match result {
                Ok(Ok(true)) => {
                    tracing::info!(
                        peers = wanted.mesh.peers.len(),
                        public_key = %wanted.public_key,
                        "WireGuard mesh in sync with the applied spec"
                    );
                    synced = Some(wanted);
                }
                Ok(Ok(false)) => synced = None,
                Ok(Err(e)) => tracing::warn!("cannot sync the WireGuard mesh: {e}"),
                Err(e) => tracing::warn!("cannot sync the WireGuard mesh: {e}"),
            }
        }
    }

    /// This node's mesh interface and each peer's latest handshake, when the applied
    /// (else local) spec's transport is WireGuard.
    pub(crate) async fn mesh_status(&self) -> Option<quorate_api::MeshStatus> {
        // Each peer's name and public key, only when the transport is WireGuard: a
        // status of a direct cluster copies nothing.
        let keys = |spec: &quorate_spec::Spec| -> Option<Vec<(String, Option<String>)>> {
            (spec.network.transport == quorate_spec::Transport::Wireguard).then(|| {
                spec.nodes
                    .iter()
                    .filter(|(name, _)| **name != self.name)
                    .map(|(name, n)| {
                        (
                            name.clone(),
                            n.wireguard.as_ref().map(|w| w.public_key.clone()),
                        )
                    })
                    .collect()
            })
        };
        let nodes = match self
            .consensus
            .with_state(|st| st.applied.as_ref().map(|a| keys(&a.spec)))
            .await
        {
            Some(applied) => applied?,
            None => keys(&self.local.spec)?,
        };
        let read = tokio::task::spawn_blocking(link::peers)
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let (peers, error) = match read {
            Ok(peers) => (peers, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let peers = nodes
            .into_iter()
            .map(|(name, key)| {
                let seen = peers
                    .iter()
                    .find(|p| Some(p.public_key.as_str()) == key.as_deref());
                let age = seen.and_then(|p| p.handshake_age_s);
                quorate_api::MeshPeerStatus {
                    node: name,
                    endpoint: seen.and_then(|p| p.endpoint.clone()),
                    handshake_age_s: age,
                    fresh: age.is_some_and(|a| a < link::HANDSHAKE_FRESH_S),
                }
            })
            .collect();
        Some(quorate_api::MeshStatus {
            node: self.name.clone(),
            interface: WIREGUARD_INTERFACE.to_owned(),
            error,
            peers,
        })
    }
}
