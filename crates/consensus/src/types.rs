//! openraft's type configuration for quorate.

use std::fmt;

use quorate_state::{Command, CommandResult};
use serde::{Deserialize, Serialize};

/// What Raft stores about each member: its node name and RPC address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// Node name (what its certificate names).
    pub name: String,
    /// `ip:port` of its cluster RPC.
    pub addr: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// quorate's Raft types: commands in, command results out, named peers.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        Node = PeerNode,
);

pub(crate) type Raft = openraft::Raft<TypeConfig, crate::store::StateMachineStore>;
pub(crate) type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
pub(crate) type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub(crate) type LeaderId = openraft::alias::LeaderIdOf<TypeConfig>;
pub(crate) type Vote = openraft::alias::VoteOf<TypeConfig>;
pub(crate) type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub(crate) type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub(crate) type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;
