//! The fault lab: each node of a cluster is its own host (a network namespace on a
//! bridge) running a real `quorate agent`, fence and witness workloads; faults are
//! real (power loss, cut cables, 2+3 splits, paused agents, flapping links, netem where
//! the kernel has it); an independent checker judges the run from the witness journal
//! and the client record alone.
//!
//! **Architecture Invariant:** the lab imports nothing of quorate: it runs the
//! `quorate` binary and reads files, so its verdict cannot share the agent's bugs.

pub mod bench;
pub mod ceph;
pub mod checker;
pub mod cluster;
pub mod faults;
pub mod generations;
pub mod netns;
