//! Raft RPCs over quorate-net: what goes on the wire, the client side
//! (openraft's `RaftNetworkV2`) and the server-side dispatch.

use std::net::SocketAddr;
use std::time::Duration;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use quorate_net::{ConnectionPool, Partition, PeerClient};
use quorate_pki::SharedTls;
use serde::{Deserialize, Serialize};

use crate::types::{PeerNode, Snapshot, SnapshotMeta, TypeConfig, Vote};

/// A Raft message between nodes. Opaque outside this crate.
#[derive(Debug, Serialize, Deserialize)]
pub struct RaftMessage(pub(crate) RaftRpc);

/// The reply to a [`RaftMessage`]. Opaque outside this crate.
#[derive(Debug, Serialize, Deserialize)]
pub struct RaftAnswer(pub(crate) RaftReply);

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftReply {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    Refused(String),
}

/// The frame kinds of the peer protocol. Each is held to its own size limit
/// ([`crate::PeerService`]), so that a small message can never arrive as a large frame.
pub mod kinds {
    /// Raft RPCs: up to 64 MiB (a snapshot of the whole cluster state).
    pub const RAFT: u8 = 1;
    /// Operator requests forwarded to the leader: up to 8 MiB (a spec and its lock).
    pub const CONTROL: u8 = 2;
    /// Everything else (probe, lease renewal, service reports): up to 1 MiB.
    pub const REPORT: u8 = 3;

    /// The largest request of `kind`; 0 for an unknown kind.
    #[must_use]
    pub fn max_request(kind: u8) -> usize {
        match kind {
            RAFT => 64 << 20,
            CONTROL => 8 << 20,
            REPORT => 1 << 20,
            _ => 0,
        }
    }
}

/// Everything one node sends another: Raft traffic, or an application request
/// (forwarded client calls) that the layer above handles.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Raft RPC.
    Raft(RaftMessage),
    /// Application request, JSON.
    App(serde_json::Value),
}

/// Reply to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReply {
    /// Raft RPC reply.
    Raft(RaftAnswer),
    /// Application reply, JSON.
    App(serde_json::Value),
    /// The request could not be decoded or was refused.
    Error(String),
    /// The sender is not a member of the cluster (not in its applied spec).
    NotMember(String),
}

#[derive(Debug)]
struct RemoteRefused(String);

impl std::fmt::Display for RemoteRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RemoteRefused {}

/// Creates one [`RaftClient`] per replication target.
#[derive(Clone)]
pub struct NetworkFactory {
    tls: SharedTls,
    partition: Partition,
    source: Option<std::net::IpAddr>,
    /// Shared by every client made here: Raft makes a client per election round and
    /// drops its vote request at the election timeout, so a connection must outlive
    /// both (see [`ConnectionPool`]).
    pool: ConnectionPool,
}

impl std::fmt::Debug for NetworkFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkFactory").finish_non_exhaustive()
    }
}

impl NetworkFactory {
    pub(crate) fn new(
        tls: SharedTls,
        partition: Partition,
        source: Option<std::net::IpAddr>,
    ) -> Self {
        Self {
            tls,
            partition,
            source,
            pool: ConnectionPool::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = RaftClient;

    async fn new_client(&mut self, _target: u64, node: &PeerNode) -> RaftClient {
        let addr = node
            .addr
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        RaftClient {
            peer: PeerClient::new(&node.name, addr, &self.tls, self.partition.clone())
                .from_address(self.source)
                .with_pool(self.pool.clone()),
        }
    }
}

/// Sends Raft RPCs to one peer.
#[derive(Debug)]
pub struct RaftClient {
    peer: PeerClient,
}

impl RaftClient {
    async fn call(
        &mut self,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> Result<RaftReply, Unreachable<TypeConfig>> {
        let unreachable =
            |e: &dyn std::fmt::Display| Unreachable::new(&AnyError::error(e.to_string()));
        let bytes = serde_json::to_vec(&PeerRequest::Raft(RaftMessage(rpc)))
            .map_err(|e| unreachable(&e))?;
        let reply = self
            .peer
            .call(kinds::RAFT, &bytes, timeout)
            .await
            .map_err(|e| unreachable(&e))?;
        match serde_json::from_slice::<PeerReply>(&reply).map_err(|e| unreachable(&e))? {
            PeerReply::Raft(RaftAnswer(RaftReply::Refused(why)))
            | PeerReply::Error(why)
            | PeerReply::NotMember(why) => Err(Unreachable::new(&RemoteRefused(format!(
                "{}: {why}",
                self.peer.node()
            )))),
            PeerReply::Raft(RaftAnswer(r)) => Ok(r),
            PeerReply::App(_) => Err(unreachable(&"unexpected application reply")),
        }
    }
}

fn unexpected() -> Unreachable<TypeConfig> {
    Unreachable::new(&AnyError::error("unexpected reply type"))
}

impl RaftNetworkV2<TypeConfig> for RaftClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRpc::Append(rpc), option.hard_ttl()).await? {
            RaftReply::Append(r) => Ok(r),
            _ => Err(unexpected().into()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRpc::Vote(rpc), option.hard_ttl()).await? {
            RaftReply::Vote(r) => Ok(r),
            _ => Err(unexpected().into()),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRpc::PreVote(rpc), option.hard_ttl()).await? {
            RaftReply::Vote(r) => Ok(r),
            _ => Err(unexpected().into()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let rpc = RaftRpc::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = self.call(rpc, option.hard_ttl()) => match reply? {
                RaftReply::Snapshot(r) => Ok(r),
                _ => Err(unexpected().into()),
            },
        }
    }
}
