//! The lock file format (version 1) and its consistency check.
//!
//! Persisted formats are versioned: [`Lock::from_json`] reads the `version` field
//! first and dispatches; a future version 2 adds a `v2` struct and a migration from
//! this one, so old locks keep loading.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use quorate_spec::{ByteSize, StorageKind};
use serde::{Deserialize, Serialize};

use crate::{LockError, DRBD_NODE_ID_MAX};

/// The format version this build writes.
pub const LOCK_VERSION: u32 = 1;

/// The whole lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Format version.
    pub version: u32,
    /// The cluster this lock belongs to.
    pub cluster: String,
    /// Next number of each space; they only grow, so numbers are never reused.
    pub next: Counters,
    /// Overlay network the node addresses were allocated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<IpNet>,
    /// Live nodes.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Live services.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceEntry>,
    /// Live storage.
    #[serde(default)]
    pub storage: BTreeMap<String, StorageEntry>,
    /// Removed entries, with the numbers they held, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tombstones: Vec<Tombstone>,
    /// The declared Ceph's identity (`[ceph]` in the spec), once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph: Option<CephEntry>,
}

/// The declared Ceph's numbers: its fsid and every OSD's id. Monitor, manager and
/// metadata server ids are the node names, so they are as stable as the nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CephEntry {
    /// The cluster's fsid (set once, kept when the cluster is renamed).
    pub fsid: String,
    /// OSDs per node, in the spec's order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub osds: BTreeMap<String, Vec<OsdEntry>>,
    /// The next OSD id; it only grows, so a removed OSD's id is never handed out again.
    pub next_osd: u32,
}

/// One OSD: its id and what it stores on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsdEntry {
    /// The OSD id (`osd.ID`).
    pub id: u32,
    /// The device, or `memstore`.
    pub device: String,
}

/// Next free number in each space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    /// Raft node id.
    pub raft_id: u64,
    /// Service id.
    pub service_id: u64,
    /// DRBD minor.
    pub drbd_minor: u32,
    /// DRBD port.
    pub drbd_port: u32,
    /// WireGuard listen port.
    pub wg_port: u32,
    /// Host index within the overlay network.
    pub overlay_host: u64,
}

/// A node's numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Raft node id.
    pub raft_id: u64,
    /// Whether the node votes (recorded so `plan` can tell a quorum-breaking change).
    pub voter: bool,
    /// Overlay address, once the spec has an overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_ip: Option<IpAddr>,
    /// WireGuard listen port, once the transport is WireGuard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_port: Option<u16>,
}

/// A service's numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// Stable id (names unit drop-ins and journal records across renames).
    pub id: u64,
}

/// A storage resource's numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageEntry {
    /// Kind; a kind change retires the entry and allocates a new one.
    pub kind: StorageKind,
    /// Last size locked (so `plan` can tell a shrink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// DRBD numbers, for kind = drbd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drbd: Option<DrbdEntry>,
}

/// A DRBD resource's numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrbdEntry {
    /// Device minor (`/dev/drbd<minor>`).
    pub minor: u32,
    /// TCP port, the same on every node.
    pub port: u16,
    /// DRBD node-id of each member (replicas and the tie-breaker).
    pub node_ids: BTreeMap<String, u8>,
    /// The diskless tie-breaker, when only two nodes hold replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_breaker: Option<String>,
    /// Next free node-id in this resource.
    pub next_node_id: u8,
    /// Node-ids of members that left; never given out again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_node_ids: Vec<RetiredNodeId>,
}

/// A node-id a member held before it left the resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiredNodeId {
    /// The node that held it.
    pub node: String,
    /// The node-id.
    pub node_id: u8,
}

/// A removed entry and the numbers it held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "entity", rename_all = "lowercase", deny_unknown_fields)]
pub enum Tombstone {
    /// A removed node.
    Node {
        /// Its name.
        name: String,
        /// Its numbers.
        entry: NodeEntry,
    },
    /// A removed service.
    Service {
        /// Its name.
        name: String,
        /// Its numbers.
        entry: ServiceEntry,
    },
    /// A removed storage resource.
    Storage {
        /// Its name.
        name: String,
        /// Its numbers.
        entry: StorageEntry,
    },
}

impl Lock {
    /// An empty lock for `cluster`.
    #[must_use]
    pub fn new(cluster: &str) -> Self {
        Self {
            version: LOCK_VERSION,
            cluster: cluster.to_string(),
            next: Counters {
                raft_id: crate::RAFT_ID_BASE,
                service_id: crate::SERVICE_ID_BASE,
                drbd_minor: crate::DRBD_MINOR_BASE,
                drbd_port: crate::DRBD_PORT_BASE,
                wg_port: crate::WG_PORT_BASE,
                overlay_host: 1,
            },
            overlay: None,
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            storage: BTreeMap::new(),
            tombstones: Vec::new(),
            ceph: None,
        }
    }

    /// Reads a lock from JSON text, checking version and consistency. `path` names
    /// the file in errors.
    ///
    /// # Errors
    /// Syntax, version or consistency problems, each naming the place.
    pub fn from_json(text: &str, path: &str) -> Result<Self, LockError> {
        let syntax = |e: &serde_json::Error| LockError::Syntax {
            path: path.to_string(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| syntax(&e))?;
        let version = value.get("version").cloned();
        match version.as_ref().and_then(serde_json::Value::as_u64) {
            Some(1) => {}
            Some(v) if v > u64::from(LOCK_VERSION) => {
                return Err(LockError::Version {
                    path: path.to_string(),
                    found: v.to_string(),
                    supported: LOCK_VERSION,
                    hint: "this lock was written by a newer quorate; upgrade quorate",
                })
            }
            _ => {
                return Err(LockError::Version {
                    path: path.to_string(),
                    found: version.map_or_else(|| "(missing)".to_string(), |v| v.to_string()),
                    supported: LOCK_VERSION,
                    hint: "the `version` field must be a supported number; restore the file from version control",
                })
            }
        }
        let lock: Self = serde_json::from_value(value).map_err(|e| LockError::Corrupt {
            path: path.to_string(),
            at: "(document)".into(),
            problem: e.to_string(),
        })?;
        lock.verify(path)?;
        Ok(lock)
    }

    /// The lock as pretty JSON with a trailing newline; deterministic byte for byte.
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Checks that every number is unique in its space (live and tombstoned) and
    /// below its counter.
    ///
    /// # Errors
    /// The first inconsistency found, with its key path.
    pub fn verify(&self, path: &str) -> Result<(), LockError> {
        let corrupt = |at: String, problem: String| LockError::Corrupt {
            path: path.to_string(),
            at,
            problem,
        };
        // Every (space, number) → where it was seen first.
        let mut seen: BTreeMap<(&str, u64), String> = BTreeMap::new();
        let mut claim =
            |space: &'static str, number: u64, at: String, limit: u64| -> Result<(), LockError> {
                if number >= limit {
                    return Err(corrupt(
                        at,
                        format!("{space} {number} is not below the counter next.{space} = {limit}"),
                    ));
                }
                if let Some(first) = seen.insert((space, number), at.clone()) {
                    return Err(corrupt(
                        at,
                        format!("{space} {number} is also held by {first}"),
                    ));
                }
                Ok(())
            };
        let n = &self.next;
        let nodes = self
            .nodes
            .iter()
            .map(|(k, v)| (format!("nodes.{k}"), v))
            .chain(
                self.tombstones
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| match t {
                        Tombstone::Node { entry, .. } => Some((format!("tombstones[{i}]"), entry)),
                        _ => None,
                    }),
            );
        for (at, e) in nodes {
            claim("raft_id", e.raft_id, format!("{at}.raft_id"), n.raft_id)?;
            if let Some(port) = e.wg_port {
                claim(
                    "wg_port",
                    u64::from(port),
                    format!("{at}.wg_port"),
                    u64::from(n.wg_port),
                )?;
            }
            if let Some(ip) = e.overlay_ip {
                let as_num = match ip {
                    IpAddr::V4(v4) => u64::from(u32::from(v4)),
                    IpAddr::V6(v6) => {
                        u64::try_from(u128::from(v6) & u128::from(u64::MAX)).unwrap_or(0)
                    }
                };
                claim("overlay_ip", as_num, format!("{at}.overlay_ip"), u64::MAX)?;
            }
        }
        let services = self
            .services
            .iter()
            .map(|(k, v)| (format!("services.{k}"), v))
            .chain(
                self.tombstones
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| match t {
                        Tombstone::Service { entry, .. } => {
                            Some((format!("tombstones[{i}]"), entry))
                        }
                        _ => None,
                    }),
            );
        for (at, e) in services {
            claim("service_id", e.id, format!("{at}.id"), n.service_id)?;
        }
        let storage = self
            .storage
            .iter()
            .map(|(k, v)| (format!("storage.{k}"), v))
            .chain(
                self.tombstones
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| match t {
                        Tombstone::Storage { entry, .. } => {
                            Some((format!("tombstones[{i}]"), entry))
                        }
                        _ => None,
                    }),
            );
        for (at, e) in storage {
            let Some(d) = &e.drbd else { continue };
            claim(
                "drbd_minor",
                u64::from(d.minor),
                format!("{at}.drbd.minor"),
                u64::from(n.drbd_minor),
            )?;
            claim(
                "drbd_port",
                u64::from(d.port),
                format!("{at}.drbd.port"),
                u64::from(n.drbd_port),
            )?;
            let mut ids = BTreeSet::new();
            for (node, id) in d.node_ids.iter().map(|(k, v)| (k.as_str(), *v)).chain(
                d.retired_node_ids
                    .iter()
                    .map(|r| (r.node.as_str(), r.node_id)),
            ) {
                if id > DRBD_NODE_ID_MAX || id >= d.next_node_id {
                    return Err(corrupt(
                        format!("{at}.drbd.node_ids.{node}"),
                        format!("node-id {id} is not below next_node_id {} (and at most {DRBD_NODE_ID_MAX})", d.next_node_id),
                    ));
                }
                if !ids.insert(id) {
                    return Err(corrupt(
                        format!("{at}.drbd.node_ids.{node}"),
                        format!("node-id {id} is used twice"),
                    ));
                }
            }
            if let Some(tb) = &d.tie_breaker {
                if !d.node_ids.contains_key(tb) {
                    return Err(corrupt(
                        format!("{at}.drbd.tie_breaker"),
                        format!("tie-breaker `{tb}` has no node-id"),
                    ));
                }
            }
        }
        if let Some(ceph) = &self.ceph {
            for (node, osds) in &ceph.osds {
                for (i, osd) in osds.iter().enumerate() {
                    claim(
                        "osd_id",
                        u64::from(osd.id),
                        format!("ceph.osds.{node}[{i}].id"),
                        u64::from(ceph.next_osd),
                    )?;
                }
            }
        }
        Ok(())
    }
}
