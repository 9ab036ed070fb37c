//! The server side of the peer protocol: Raft messages go to [`Consensus`], and
//! application requests (client calls forwarded to the leader) to an [`AppHandler`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quorate_net::PeerClient;

use crate::network::{PeerReply, PeerRequest};
use crate::Consensus;

/// Handles application requests that arrive from peers.
pub trait AppHandler: Send + Sync + 'static {
    /// Handles `request` from `peer` (the node its certificate names).
    fn handle(
        &self,
        peer: String,
        request: serde_json::Value,
    ) -> impl Future<Output = serde_json::Value> + Send;
}

/// Serves the peer protocol for one node.
#[derive(Debug)]
pub struct PeerService<A> {
    consensus: Consensus,
    app: Arc<A>,
}

impl<A> PeerService<A> {
    /// A service dispatching to `consensus` and `app`.
    pub fn new(consensus: Consensus, app: Arc<A>) -> Self {
        Self { consensus, app }
    }
}

impl<A: AppHandler> quorate_net::Handler for PeerService<A> {
    async fn handle(&self, peer: String, request: Vec<u8>) -> Vec<u8> {
        let reply = match serde_json::from_slice::<PeerRequest>(&request) {
            Ok(PeerRequest::Raft(m)) => PeerReply::Raft(self.consensus.handle(&peer, m).await),
            Ok(PeerRequest::App(v)) => PeerReply::App(self.app.handle(peer, v).await),
            Err(e) => {
                tracing::warn!(peer, "undecodable peer request: {e}");
                PeerReply::Error(format!("undecodable request: {e}"))
            }
        };
        serde_json::to_vec(&reply).unwrap_or_default()
    }
}

/// Sends an application request to a peer and returns its JSON reply.
///
/// # Errors
/// Transport errors, or a peer that refused or answered with something else.
pub async fn call_app(
    client: &mut PeerClient,
    request: serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let bytes = serde_json::to_vec(&PeerRequest::App(request)).map_err(|e| e.to_string())?;
    let reply = client
        .call(&bytes, timeout)
        .await
        .map_err(|e| e.to_string())?;
    match serde_json::from_slice::<PeerReply>(&reply).map_err(|e| e.to_string())? {
        PeerReply::App(v) => Ok(v),
        PeerReply::Error(e) => Err(e),
        PeerReply::Raft(_) => Err("unexpected Raft reply".into()),
    }
}
