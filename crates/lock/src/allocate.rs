//! The allocator: (previous lock, spec) → new lock, deterministically.
//!
//! Order of work: renames, then removals (tombstones), then additions in name
//! order. Existing numbers are copied, never recomputed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use quorate_spec::{Spec, StorageKind, Transport};
use serde::Serialize;

use crate::format::{
    CephEntry, DrbdEntry, Lock, NodeEntry, OsdEntry, RetiredNodeId, ServiceEntry, StorageEntry,
    Tombstone,
};
use crate::{LockError, DRBD_MINOR_MAX, DRBD_NODE_ID_MAX};

/// What kind of thing a change is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    /// A node.
    Node,
    /// A service.
    Service,
    /// A storage resource.
    Storage,
    /// The declared Ceph (its fsid, an OSD).
    Ceph,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Node => "node",
            Self::Service => "service",
            Self::Storage => "storage",
            Self::Ceph => "ceph",
        })
    }
}

/// One change the allocator made to the lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum LockChange {
    /// A new entry with new numbers.
    Added {
        /// Kind of entry.
        entity: Entity,
        /// Its name.
        name: String,
        /// Its numbers, for people.
        numbers: String,
    },
    /// An entry moved to a new name with its numbers.
    Renamed {
        /// Kind of entry.
        entity: Entity,
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// An entry became a tombstone.
    Retired {
        /// Kind of entry.
        entity: Entity,
        /// Its name.
        name: String,
        /// The numbers it keeps forever.
        numbers: String,
    },
    /// A field recorded for `plan` changed (voter, size); no number changed.
    Updated {
        /// Kind of entry.
        entity: Entity,
        /// Its name.
        name: String,
        /// Which field.
        field: &'static str,
        /// Old value.
        from: String,
        /// New value.
        to: String,
    },
    /// A number was added to an existing entry (overlay address, WireGuard port, DRBD member).
    Extended {
        /// Kind of entry.
        entity: Entity,
        /// Its name.
        name: String,
        /// What was added, for people.
        what: String,
    },
    /// A DRBD member left a resource; its node-id is retired.
    MemberRetired {
        /// The storage.
        storage: String,
        /// The node.
        node: String,
        /// Its node-id.
        node_id: u8,
        /// True when the member held data (not the diskless tie-breaker).
        had_data: bool,
    },
}

/// A new lock and what changed relative to the previous one.
#[derive(Clone, Debug)]
pub struct Allocation {
    /// The new lock.
    pub lock: Lock,
    /// Changes, in the order they were made.
    pub changes: Vec<LockChange>,
}

fn exhausted(what: &'static str, detail: String, hint: &str) -> LockError {
    LockError::Exhausted {
        what,
        detail,
        hint: hint.to_string(),
    }
}

fn take_port(counter: &mut u32, what: &'static str) -> Result<u16, LockError> {
    let port = u16::try_from(*counter).map_err(|_| {
        exhausted(
            what,
            format!("the next would be {counter}, above 65535"),
            "ports are never reused; start a new cluster lock or free the range by hand with care",
        )
    })?;
    *counter += 1;
    Ok(port)
}

fn overlay_address(net: IpNet, host: u64) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => {
            let size = 1u64 << (32 - u32::from(n.prefix_len()));
            // Skip the network address (host 0) and the broadcast address.
            if host == 0 || host + 1 >= size {
                return None;
            }
            let base = u64::from(u32::from(n.network()));
            u32::try_from(base + host)
                .ok()
                .map(|a| IpAddr::V4(a.into()))
        }
        IpNet::V6(n) => {
            let bits = 128 - u32::from(n.prefix_len());
            if host == 0 || (bits < 64 && host >= (1u64 << bits)) {
                return None;
            }
            Some(IpAddr::V6(
                (u128::from(n.network()) + u128::from(host)).into(),
            ))
        }
    }
}

/// Renames the map entry `from` → `to` when the lock has `from` and not `to`.
fn rename<V>(map: &mut std::collections::BTreeMap<String, V>, from: &str, to: &str) -> bool {
    if map.contains_key(to) {
        return false;
    }
    match map.remove(from) {
        Some(v) => {
            map.insert(to.to_string(), v);
            true
        }
        None => false,
    }
}

fn describe_node(e: &NodeEntry) -> String {
    let mut s = format!("raft id {}", e.raft_id);
    if let Some(ip) = e.overlay_ip {
        s.push_str(&format!(", overlay {ip}"));
    }
    if let Some(p) = e.wg_port {
        s.push_str(&format!(", wireguard port {p}"));
    }
    s
}

fn describe_storage(e: &StorageEntry) -> String {
    match &e.drbd {
        Some(d) => {
            let ids: Vec<String> = d
                .node_ids
                .iter()
                .map(|(n, id)| format!("{n}={id}"))
                .collect();
            let mut s = format!(
                "minor {}, port {}, node-ids {}",
                d.minor,
                d.port,
                ids.join(" ")
            );
            if let Some(tb) = &d.tie_breaker {
                s.push_str(&format!(", tie-breaker {tb}"));
            }
            s
        }
        None => format!("kind {}", e.kind.name()),
    }
}

/// Allocates numbers for `spec` on top of `previous`. Pure and deterministic.
///
/// # Errors
/// A lock of another cluster, an exhausted number space, or a changed overlay.
/// Nothing is returned half-done.
pub fn allocate(previous: Option<&Lock>, spec: &Spec) -> Result<Allocation, LockError> {
    let mut lock = match previous {
        Some(p) if p.cluster != spec.cluster.name => {
            return Err(LockError::OtherCluster {
                lock: p.cluster.clone(),
                spec: spec.cluster.name.clone(),
            })
        }
        Some(p) => p.clone(),
        None => Lock::new(&spec.cluster.name),
    };
    let mut changes = Vec::new();

    // 1. Renames keep numbers under the new name.
    for (name, node) in &spec.nodes {
        let Some(old) = &node.renamed_from else {
            continue;
        };
        if rename(&mut lock.nodes, old, name) {
            for st in lock.storage.values_mut() {
                if let Some(d) = &mut st.drbd {
                    rename(&mut d.node_ids, old, name);
                    if d.tie_breaker.as_deref() == Some(old) {
                        d.tie_breaker = Some(name.clone());
                    }
                }
            }
            if let Some(ceph) = &mut lock.ceph {
                rename(&mut ceph.osds, old, name);
            }
            changes.push(LockChange::Renamed {
                entity: Entity::Node,
                from: old.clone(),
                to: name.clone(),
            });
        }
    }
    for (name, svc) in &spec.services {
        if let Some(old) = &svc.renamed_from {
            if rename(&mut lock.services, old, name) {
                changes.push(LockChange::Renamed {
                    entity: Entity::Service,
                    from: old.clone(),
                    to: name.clone(),
                });
            }
        }
    }
    for (name, st) in &spec.storage {
        if let Some(old) = &st.renamed_from {
            if rename(&mut lock.storage, old, name) {
                changes.push(LockChange::Renamed {
                    entity: Entity::Storage,
                    from: old.clone(),
                    to: name.clone(),
                });
            }
        }
    }

    // 2. Removals become tombstones. A storage kind change retires the old entry.
    let gone: Vec<String> = lock
        .nodes
        .keys()
        .filter(|n| !spec.nodes.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        if let Some(entry) = lock.nodes.remove(&name) {
            changes.push(LockChange::Retired {
                entity: Entity::Node,
                name: name.clone(),
                numbers: describe_node(&entry),
            });
            lock.tombstones.push(Tombstone::Node { name, entry });
        }
    }
    let gone: Vec<String> = lock
        .services
        .keys()
        .filter(|n| !spec.services.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        if let Some(entry) = lock.services.remove(&name) {
            changes.push(LockChange::Retired {
                entity: Entity::Service,
                name: name.clone(),
                numbers: format!("id {}", entry.id),
            });
            lock.tombstones.push(Tombstone::Service { name, entry });
        }
    }
    let gone: Vec<String> = lock
        .storage
        .iter()
        .filter(|(n, e)| spec.storage.get(*n).is_none_or(|s| s.kind != e.kind))
        .map(|(n, _)| n.clone())
        .collect();
    for name in gone {
        if let Some(entry) = lock.storage.remove(&name) {
            changes.push(LockChange::Retired {
                entity: Entity::Storage,
                name: name.clone(),
                numbers: describe_storage(&entry),
            });
            lock.tombstones.push(Tombstone::Storage { name, entry });
        }
    }

    // 3. Nodes: new entries, recorded voter flag.
    for (name, node) in &spec.nodes {
        match lock.nodes.get_mut(name) {
            Some(e) => {
                if e.voter != node.voter {
                    changes.push(LockChange::Updated {
                        entity: Entity::Node,
                        name: name.clone(),
                        field: "voter",
                        from: e.voter.to_string(),
                        to: node.voter.to_string(),
                    });
                    e.voter = node.voter;
                }
            }
            None => {
                let entry = NodeEntry {
                    raft_id: lock.next.raft_id,
                    voter: node.voter,
                    overlay_ip: None,
                    wg_port: None,
                };
                lock.next.raft_id += 1;
                lock.nodes.insert(name.clone(), entry);
                changes.push(LockChange::Added {
                    entity: Entity::Node,
                    name: name.clone(),
                    numbers: String::new(),
                });
            }
        }
    }

    // 4. Overlay addresses and WireGuard ports, added to entries that lack them.
    if let Some(overlay) = spec.network.overlay {
        match lock.overlay {
            Some(locked) if locked != overlay => {
                return Err(LockError::OverlayChanged {
                    locked: locked.to_string(),
                    spec: overlay.to_string(),
                })
            }
            Some(_) => {}
            None => lock.overlay = Some(overlay),
        }
    }
    let wireguard = spec.network.transport == Transport::Wireguard;
    let names: Vec<String> = lock.nodes.keys().cloned().collect();
    for name in names {
        let mut added = Vec::new();
        if let Some(overlay) = lock.overlay.filter(|_| spec.network.overlay.is_some()) {
            if lock
                .nodes
                .get(&name)
                .is_some_and(|e| e.overlay_ip.is_none())
            {
                let ip = overlay_address(overlay, lock.next.overlay_host).ok_or_else(|| {
                    exhausted(
                        "overlay addresses",
                        format!(
                            "{overlay} has no address left (host index {})",
                            lock.next.overlay_host
                        ),
                        "addresses are never reused; a larger overlay would renumber every node",
                    )
                })?;
                lock.next.overlay_host += 1;
                if let Some(e) = lock.nodes.get_mut(&name) {
                    e.overlay_ip = Some(ip);
                }
                added.push(format!("overlay {ip}"));
            }
        }
        if wireguard && lock.nodes.get(&name).is_some_and(|e| e.wg_port.is_none()) {
            let port = take_port(&mut lock.next.wg_port, "WireGuard ports")?;
            if let Some(e) = lock.nodes.get_mut(&name) {
                e.wg_port = Some(port);
            }
            added.push(format!("wireguard port {port}"));
        }
        if added.is_empty() {
            continue;
        }
        // A node added in this run reports all its numbers once, in its Added line.
        let fresh = changes.iter().any(
            |c| matches!(c, LockChange::Added { entity: Entity::Node, name: n, .. } if *n == name),
        );
        if !fresh {
            changes.push(LockChange::Extended {
                entity: Entity::Node,
                name: name.clone(),
                what: added.join(", "),
            });
        }
    }
    for c in &mut changes {
        if let LockChange::Added {
            entity: Entity::Node,
            name,
            numbers,
        } = c
        {
            if let Some(e) = lock.nodes.get(name) {
                *numbers = describe_node(e);
            }
        }
    }

    // 5. Services.
    for name in spec.services.keys() {
        if !lock.services.contains_key(name) {
            let id = lock.next.service_id;
            lock.next.service_id += 1;
            lock.services.insert(name.clone(), ServiceEntry { id });
            changes.push(LockChange::Added {
                entity: Entity::Service,
                name: name.clone(),
                numbers: format!("id {id}"),
            });
        }
    }

    // 6. Storage: new entries, recorded size, DRBD membership.
    for (name, st) in &spec.storage {
        let is_new = !lock.storage.contains_key(name);
        if is_new {
            let drbd = if st.kind == StorageKind::Drbd {
                if lock.next.drbd_minor > DRBD_MINOR_MAX {
                    return Err(exhausted(
                        "DRBD minors",
                        format!(
                            "the next would be {}, above {DRBD_MINOR_MAX}",
                            lock.next.drbd_minor
                        ),
                        "minors are never reused",
                    ));
                }
                let minor = lock.next.drbd_minor;
                let port = take_port(&mut lock.next.drbd_port, "DRBD ports")?;
                lock.next.drbd_minor += 1;
                Some(DrbdEntry {
                    minor,
                    port,
                    node_ids: Default::default(),
                    tie_breaker: None,
                    next_node_id: 0,
                    retired_node_ids: Vec::new(),
                })
            } else {
                None
            };
            lock.storage.insert(
                name.clone(),
                StorageEntry {
                    kind: st.kind,
                    size: st.size,
                    drbd,
                },
            );
        }
        let Some(entry) = lock.storage.get_mut(name) else {
            continue;
        };
        if !is_new && entry.size != st.size && st.size.is_some() {
            changes.push(LockChange::Updated {
                entity: Entity::Storage,
                name: name.clone(),
                field: "size",
                from: entry.size.map_or_else(|| "unset".into(), |s| s.to_string()),
                to: st.size.map_or_else(|| "unset".into(), |s| s.to_string()),
            });
            entry.size = st.size;
        }
        if let Some(d) = &mut entry.drbd {
            let replicas: BTreeSet<&String> = st
                .nodes
                .iter()
                .filter(|n| spec.nodes.contains_key(*n))
                .collect();
            // Tie-breaker: kept while still valid, else the first voter (by name) that holds no replica.
            let mut tie_breaker = None;
            if replicas.len() == 2 {
                let valid = |n: &String| spec.nodes.contains_key(n) && !replicas.contains(n);
                tie_breaker = d.tie_breaker.clone().filter(valid).or_else(|| {
                    spec.nodes
                        .iter()
                        .filter(|(n, s)| s.voter && valid(n))
                        .map(|(n, _)| n.clone())
                        .next()
                });
            }
            let members: BTreeSet<String> = replicas
                .iter()
                .map(|s| (*s).clone())
                .chain(tie_breaker.clone())
                .collect();
            let leaving: Vec<(String, u8)> = d
                .node_ids
                .iter()
                .filter(|(n, _)| !members.contains(*n))
                .map(|(n, id)| (n.clone(), *id))
                .collect();
            for (node, node_id) in leaving {
                d.node_ids.remove(&node);
                let had_data = d.tie_breaker.as_deref() != Some(node.as_str());
                d.retired_node_ids.push(RetiredNodeId {
                    node: node.clone(),
                    node_id,
                });
                if !is_new {
                    changes.push(LockChange::MemberRetired {
                        storage: name.clone(),
                        node,
                        node_id,
                        had_data,
                    });
                }
            }
            d.tie_breaker = tie_breaker;
            for member in &members {
                if d.node_ids.contains_key(member) {
                    continue;
                }
                if d.next_node_id > DRBD_NODE_ID_MAX {
                    return Err(exhausted("DRBD node-ids", format!("resource `{name}` has used all {} node-ids", u32::from(DRBD_NODE_ID_MAX) + 1), "node-ids are never reused within a resource; create a new resource under a new name and move the data"));
                }
                d.node_ids.insert(member.clone(), d.next_node_id);
                if !is_new {
                    let role = if d.tie_breaker.as_ref() == Some(member) {
                        "tie-breaker"
                    } else {
                        "replica"
                    };
                    changes.push(LockChange::Extended {
                        entity: Entity::Storage,
                        name: name.clone(),
                        what: format!("{role} {member} (node-id {})", d.next_node_id),
                    });
                }
                d.next_node_id += 1;
            }
        }
        if is_new {
            changes.push(LockChange::Added {
                entity: Entity::Storage,
                name: name.clone(),
                numbers: describe_storage(entry),
            });
        }
    }
    allocate_ceph(&mut lock, spec, &mut changes);
    Ok(Allocation { lock, changes })
}

/// The fsid a new declared Ceph gets: a name-based UUID (v5) of the cluster's name,
/// so that allocation stays a pure function of its inputs. It is written once and
/// kept: renaming the cluster later does not change it.
#[must_use]
pub fn ceph_fsid(cluster: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6e1c_2a44_5b0e_4d1f_9a3c_71f0_c3de_0a51);
    uuid::Uuid::new_v5(&NAMESPACE, format!("quorate ceph {cluster}").as_bytes()).to_string()
}

/// `[ceph]`: the fsid once, an OSD id for every OSD entry that has none. An OSD keeps
/// its id while its node lists the same device (`memstore` entries: the same
/// position among that node's `memstore` entries); an OSD that left the spec is
/// dropped, its id never handed out again. A spec without `[ceph]` leaves the entry
/// as it is (the fsid outlives a spec edit).
fn allocate_ceph(lock: &mut Lock, spec: &Spec, changes: &mut Vec<LockChange>) {
    let Some(declared) = &spec.ceph else {
        return;
    };
    let ceph = lock.ceph.get_or_insert_with(|| {
        let fsid = ceph_fsid(&spec.cluster.name);
        changes.push(LockChange::Added {
            entity: Entity::Ceph,
            name: "ceph".into(),
            numbers: format!("fsid {fsid}"),
        });
        CephEntry {
            fsid,
            osds: std::collections::BTreeMap::new(),
            next_osd: 0,
        }
    });
    let mut next = ceph.next_osd;
    let mut osds = std::collections::BTreeMap::new();
    for (node, devices) in &declared.osds {
        let mut old: Vec<OsdEntry> = ceph.osds.get(node).cloned().unwrap_or_default();
        let mut entries = Vec::new();
        for device in devices {
            if let Some(i) = old.iter().position(|o| &o.device == device) {
                entries.push(old.remove(i));
                continue;
            }
            changes.push(LockChange::Added {
                entity: Entity::Ceph,
                name: format!("osd.{next}"),
                numbers: format!("on {node} ({device})"),
            });
            entries.push(OsdEntry {
                id: next,
                device: device.clone(),
            });
            next += 1;
        }
        for gone in old {
            changes.push(LockChange::Retired {
                entity: Entity::Ceph,
                name: format!("osd.{}", gone.id),
                numbers: format!("on {node} ({}), never reused", gone.device),
            });
        }
        if !entries.is_empty() {
            osds.insert(node.clone(), entries);
        }
    }
    for (node, gone) in &ceph.osds {
        if !declared.osds.contains_key(node) {
            for o in gone {
                changes.push(LockChange::Retired {
                    entity: Entity::Ceph,
                    name: format!("osd.{}", o.id),
                    numbers: format!("on {node} ({}), never reused", o.device),
                });
            }
        }
    }
    ceph.osds = osds;
    ceph.next_osd = next;
}
