//! The server side of the peer protocol: only members speak (everyone else gets
//! [`PeerReply::NotMember`] before a byte of their request is read), each frame kind
//! is held to its size limit ([`kinds`]), Raft messages go to [`Consensus`], and
//! application requests (client calls forwarded to the leader, lease renewals,
//! reports) to an [`AppHandler`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quorate_net::PeerClient;

use crate::network::{kinds, PeerReply, PeerRequest};
use crate::Consensus;

/// Which frame kind an application request travels as, and so its size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppClass {
    /// An operator request forwarded to the leader ([`kinds::CONTROL`]).
    Control,
    /// A small message between agents ([`kinds::REPORT`]).
    Report,
}

impl AppClass {
    fn kind(self) -> u8 {
        match self {
            Self::Control => kinds::CONTROL,
            Self::Report => kinds::REPORT,
        }
    }
}

/// Handles application requests that arrive from peers.
pub trait AppHandler: Send + Sync + 'static {
    /// Handles `request` from `peer` (a member, named by its certificate), sent as
    /// `class`; a handler refuses a message that does not belong to its class.
    fn handle(
        &self,
        peer: String,
        class: AppClass,
        request: serde_json::Value,
    ) -> impl Future<Output = serde_json::Value> + Send;

    /// A member connected: its certificate's node and validity, and the protocol
    /// version it announced.
    fn connected(&self, _identity: &quorate_pki::PeerIdentity) {}
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

fn encode(reply: &PeerReply) -> Vec<u8> {
    serde_json::to_vec(reply).unwrap_or_default()
}

impl<A: AppHandler> quorate_net::Handler for PeerService<A> {
    fn max_request(&self, kind: u8) -> usize {
        kinds::max_request(kind)
    }

    fn connected(&self, identity: &quorate_pki::PeerIdentity) {
        if self.consensus.is_member(&identity.node) {
            self.app.connected(identity);
        }
    }

    fn refusal(&self, peer: &str) -> Option<Vec<u8>> {
        (!self.consensus.is_member(peer)).then(|| {
            encode(&PeerReply::NotMember(format!(
                "node `{peer}` is not a member of this cluster (not in its applied spec); its messages are refused"
            )))
        })
    }

    async fn handle(&self, peer: String, kind: u8, request: Vec<u8>) -> Vec<u8> {
        let reply = match (kind, serde_json::from_slice::<PeerRequest>(&request)) {
            (kinds::RAFT, Ok(PeerRequest::Raft(m))) => {
                PeerReply::Raft(self.consensus.handle(&peer, m).await)
            }
            (kinds::CONTROL, Ok(PeerRequest::App(v))) => {
                PeerReply::App(self.app.handle(peer, AppClass::Control, v).await)
            }
            (kinds::REPORT, Ok(PeerRequest::App(v))) => {
                PeerReply::App(self.app.handle(peer, AppClass::Report, v).await)
            }
            (_, Ok(_)) => {
                tracing::warn!(
                    peer,
                    kind,
                    "refused a peer request sent as the wrong frame kind"
                );
                PeerReply::Error(format!(
                    "a request of this type may not be sent as frame kind {kind}"
                ))
            }
            (_, Err(e)) => {
                let ours = quorate_pki::ProtocolVersion::spoken();
                tracing::warn!(
                    peer,
                    "undecodable peer request (this node speaks quorate protocol {ours}; is the peer another version?): {e}"
                );
                PeerReply::Error(format!(
                    "undecodable request for quorate protocol {ours}: {e}"
                ))
            }
        };
        encode(&reply)
    }
}

/// Why an application call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The peer refuses this node: it is not in the peer's applied spec.
    #[error("{0}")]
    NotMember(String),
    /// Transport failure, or the peer refused or answered something else.
    #[error("{0}")]
    Failed(String),
}

/// Sends an application request to a peer as `class` and returns its JSON reply.
///
/// # Errors
/// Transport errors, or a peer that refused or answered with something else.
pub async fn call_app(
    client: &mut PeerClient,
    class: AppClass,
    request: serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, CallError> {
    let failed = |e: &dyn std::fmt::Display| CallError::Failed(e.to_string());
    let bytes = serde_json::to_vec(&PeerRequest::App(request)).map_err(|e| failed(&e))?;
    let reply = client
        .call(class.kind(), &bytes, timeout)
        .await
        .map_err(|e| failed(&e))?;
    match serde_json::from_slice::<PeerReply>(&reply).map_err(|e| failed(&e))? {
        PeerReply::App(v) => Ok(v),
        PeerReply::Error(e) => Err(CallError::Failed(e)),
        PeerReply::NotMember(e) => Err(CallError::NotMember(e)),
        PeerReply::Raft(_) => Err(CallError::Failed("unexpected Raft reply".into())),
    }
}
