//! Invariant 3 of DESIGN.md: a lock entry, once allocated, never changes and is
//! never reused — checked over random sequences of spec edits (add, remove, rename,
//! reorder, replica changes, overlay and WireGuard switched on).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use proptest::prelude::*;
use quorate_lock::{allocate, Lock, Tombstone};
use quorate_spec::{NodeSpec, ServiceKind, ServiceSpec, Spec, StorageKind, StorageSpec};

#[derive(Clone, Debug)]
enum Edit {
    AddNode(u8),
    RemoveNode(usize),
    RenameNode(usize, u8),
    ToggleVoter(usize),
    AddService(u8),
    RemoveService(usize),
    RenameService(usize, u8),
    AddDrbd(u8, usize, usize),
    AddGluster(u8),
    RemoveStorage(usize),
    RenameStorage(usize, u8),
    SetReplicas(usize, usize, usize),
    ReorderReplicas(usize),
    EnableOverlay,
    EnableWireguard,
    /// `[ceph]`: node i's OSDs become the devices of this bit mask (/dev/vdb…vde).
    SetOsds(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let name = 0u8..12;
    let i = 0usize..64;
    prop_oneof![
        4 => name.clone().prop_map(Edit::AddNode),
        2 => i.clone().prop_map(Edit::RemoveNode),
        1 => (i.clone(), name.clone()).prop_map(|(a, b)| Edit::RenameNode(a, b)),
        1 => i.clone().prop_map(Edit::ToggleVoter),
        2 => (i.clone(), 0u8..16).prop_map(|(a, b)| Edit::SetOsds(a, b)),
        3 => name.clone().prop_map(Edit::AddService),
        1 => i.clone().prop_map(Edit::RemoveService),
        1 => (i.clone(), name.clone()).prop_map(|(a, b)| Edit::RenameService(a, b)),
        3 => (name.clone(), i.clone(), i.clone()).prop_map(|(n, a, b)| Edit::AddDrbd(n, a, b)),
        1 => name.clone().prop_map(Edit::AddGluster),
        1 => i.clone().prop_map(Edit::RemoveStorage),
        1 => (i.clone(), name).prop_map(|(a, b)| Edit::RenameStorage(a, b)),
        2 => (i.clone(), i.clone(), i.clone()).prop_map(|(s, a, b)| Edit::SetReplicas(s, a, b)),
        1 => i.prop_map(Edit::ReorderReplicas),
        1 => Just(Edit::EnableOverlay),
        1 => Just(Edit::EnableWireguard),
    ]
}

fn empty_spec() -> Spec {
    let text = "[cluster]\nname = \"prop\"\n[nodes.seed]\naddress = \"10.0.0.1\"\n";
    // Not a valid cluster (one voter), but the allocator does not need one.
    let root = quorate_spec::source::parse(text, quorate_spec::Format::Toml).unwrap();
    quorate_spec::decode::decode(&root).spec
}

fn nth<V>(map: &BTreeMap<String, V>, i: usize) -> Option<String> {
    (!map.is_empty()).then(|| map.keys().nth(i % map.len()).cloned().unwrap_or_default())
}

/// Identities survive renames; the test follows them to know what must stay equal.
#[derive(Default)]
struct World {
    next_identity: u64,
    node_id: BTreeMap<String, u64>,
    service_id: BTreeMap<String, u64>,
    storage_id: BTreeMap<String, u64>,
    /// (node identity, device) → the OSD's identity, while the node lists it.
    osd_id: BTreeMap<(u64, String), u64>,
}

impl World {
    fn fresh(&mut self) -> u64 {
        self.next_identity += 1;
        self.next_identity
    }
}

fn apply(spec: &mut Spec, world: &mut World, e: &Edit) {
    let node_names: Vec<String> = spec.nodes.keys().cloned().collect();
    let pick =
        |i: usize| (!node_names.is_empty()).then(|| node_names[i % node_names.len()].clone());
    match e {
        Edit::AddNode(n) => {
            let name = format!("n{n}");
            if !spec.nodes.contains_key(&name) {
                let address: IpAddr = format!("10.1.0.{}", n + 1).parse().unwrap();
                spec.nodes.insert(
                    name.clone(),
                    NodeSpec {
                        address,
                        labels: BTreeMap::new(),
                        voter: true,
                        workloads: true,
                        renamed_from: None,
                        wireguard: None,
                        storage_address: None,
                    },
                );
                let id = world.fresh();
                world.node_id.insert(name, id);
            }
        }
        Edit::RemoveNode(i) => {
            if let Some(name) = nth(&spec.nodes, *i) {
                spec.nodes.remove(&name);
                let gone = world.node_id.remove(&name);
                world.osd_id.retain(|(node, _), _| Some(*node) != gone);
                for st in spec.storage.values_mut() {
                    st.nodes.retain(|n| *n != name);
                }
                if let Some(ceph) = &mut spec.ceph {
                    ceph.osds.remove(&name);
                }
            }
        }
        Edit::RenameNode(i, to) => {
            let to = format!("r{to}");
            if let Some(from) = nth(&spec.nodes, *i) {
                if !spec.nodes.contains_key(&to) {
                    let mut node = spec.nodes.remove(&from).unwrap();
                    node.renamed_from = Some(from.clone());
                    spec.nodes.insert(to.clone(), node);
                    let id = world.node_id.remove(&from).unwrap();
                    world.node_id.insert(to.clone(), id);
                    for st in spec.storage.values_mut() {
                        for n in &mut st.nodes {
                            if *n == from {
                                n.clone_from(&to);
                            }
                        }
                    }
                    if let Some(ceph) = &mut spec.ceph {
                        if let Some(osds) = ceph.osds.remove(&from) {
                            ceph.osds.insert(to.clone(), osds);
                        }
                    }
                }
            }
        }
        Edit::ToggleVoter(i) => {
            if let Some(name) = nth(&spec.nodes, *i) {
                let n = spec.nodes.get_mut(&name).unwrap();
                n.voter = !n.voter;
            }
        }
        Edit::AddService(n) => {
            let name = format!("s{n}");
            if !spec.services.contains_key(&name) {
                let svc: ServiceSpec = serde_json::from_value(
                    serde_json::json!({"kind": "process", "command": ["/bin/true"]}),
                )
                .unwrap();
                assert_eq!(svc.kind, ServiceKind::Process);
                spec.services.insert(name.clone(), svc);
                let id = world.fresh();
                world.service_id.insert(name, id);
            }
        }
        Edit::RemoveService(i) => {
            if let Some(name) = nth(&spec.services, *i) {
                spec.services.remove(&name);
                world.service_id.remove(&name);
            }
        }
        Edit::RenameService(i, to) => {
            let to = format!("t{to}");
            if let Some(from) = nth(&spec.services, *i) {
                if !spec.services.contains_key(&to) {
                    let mut s = spec.services.remove(&from).unwrap();
                    s.renamed_from = Some(from.clone());
                    spec.services.insert(to.clone(), s);
                    let id = world.service_id.remove(&from).unwrap();
                    world.service_id.insert(to, id);
                }
            }
        }
        Edit::AddDrbd(n, a, b) => {
            let name = format!("d{n}");
            if !spec.storage.contains_key(&name) {
                let nodes: BTreeSet<String> = [pick(*a), pick(*b)].into_iter().flatten().collect();
                spec.storage.insert(
                    name.clone(),
                    storage(StorageKind::Drbd, nodes.into_iter().collect()),
                );
                let id = world.fresh();
                world.storage_id.insert(name, id);
            }
        }
        Edit::AddGluster(n) => {
            let name = format!("g{n}");
            if !spec.storage.contains_key(&name) {
                spec.storage.insert(
                    name.clone(),
                    storage(
                        StorageKind::Gluster,
                        node_names.iter().take(3).cloned().collect(),
                    ),
                );
                let id = world.fresh();
                world.storage_id.insert(name, id);
            }
        }
        Edit::RemoveStorage(i) => {
            if let Some(name) = nth(&spec.storage, *i) {
                spec.storage.remove(&name);
                world.storage_id.remove(&name);
            }
        }
        Edit::RenameStorage(i, to) => {
            let to = format!("q{to}");
            if let Some(from) = nth(&spec.storage, *i) {
                if !spec.storage.contains_key(&to) {
                    let mut s = spec.storage.remove(&from).unwrap();
                    s.renamed_from = Some(from.clone());
                    spec.storage.insert(to.clone(), s);
                    let id = world.storage_id.remove(&from).unwrap();
                    world.storage_id.insert(to, id);
                }
            }
        }
        Edit::SetReplicas(s, a, b) => {
            if let Some(name) = nth(&spec.storage, *s) {
                let nodes: BTreeSet<String> = [pick(*a), pick(*b), pick(a + b)]
                    .into_iter()
                    .flatten()
                    .take(3)
                    .collect();
                spec.storage.get_mut(&name).unwrap().nodes = nodes.into_iter().collect();
            }
        }
        Edit::ReorderReplicas(s) => {
            if let Some(name) = nth(&spec.storage, *s) {
                spec.storage.get_mut(&name).unwrap().nodes.reverse();
            }
        }
        Edit::EnableOverlay => spec.network.overlay = Some("10.200.0.0/16".parse().unwrap()),
        Edit::EnableWireguard => spec.network.transport = quorate_spec::Transport::Wireguard,
        Edit::SetOsds(i, mask) => {
            if let Some(name) = pick(*i) {
                let devices: Vec<String> = ["vdb", "vdc", "vdd", "vde"]
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| mask & (1 << bit) != 0)
                    .map(|(_, d)| format!("/dev/{d}"))
                    .collect();
                let node = world.node_id[&name];
                world
                    .osd_id
                    .retain(|(n, d), _| *n != node || devices.contains(d));
                for d in &devices {
                    if !world.osd_id.contains_key(&(node, d.clone())) {
                        let id = world.fresh();
                        world.osd_id.insert((node, d.clone()), id);
                    }
                }
                let ceph = spec.ceph.get_or_insert_with(|| quorate_spec::CephSpec {
                    public_network: "10.1.0.0/24".parse().unwrap(),
                    monitors: Vec::new(),
                    managers: Vec::new(),
                    metadata_servers: Vec::new(),
                    osds: BTreeMap::new(),
                    pools: BTreeMap::new(),
                    filesystems: Vec::new(),
                    config: BTreeMap::new(),
                });
                if devices.is_empty() {
                    ceph.osds.remove(&name);
                } else {
                    ceph.osds.insert(name, devices);
                }
            }
        }
    }
}

fn storage(kind: StorageKind, nodes: Vec<String>) -> StorageSpec {
    StorageSpec {
        kind,
        nodes,
        device: Some("/dev/vdb".into()),
        size: None,
        mount: None,
        fs: None,
        brick: None,
        volume: None,
        arbiter: false,
        renamed_from: None,
        pool: None,
        image: None,
        path: None,
        ceph_config: None,
        ceph_keyring: None,
        ceph_client: None,
    }
}

/// What the test has seen of every number: (space, number) → (identity, detail).
#[derive(Default)]
struct Ledger {
    owner: BTreeMap<(&'static str, String), u64>,
    by_identity: BTreeMap<(u64, &'static str), String>,
    drbd_ids: BTreeMap<(u64, u8), u64>,
    drbd_member: BTreeMap<(u64, u64), u8>,
}

impl Ledger {
    fn see(
        &mut self,
        space: &'static str,
        number: String,
        identity: u64,
    ) -> Result<(), TestCaseError> {
        if let Some(prev) = self.owner.insert((space, number.clone()), identity) {
            prop_assert_eq!(
                prev,
                identity,
                "{} {} reused by another entity",
                space,
                number
            );
        }
        if let Some(prev) = self.by_identity.insert((identity, space), number.clone()) {
            prop_assert_eq!(prev, number, "{} of entity {} changed", space, identity);
        }
        Ok(())
    }
}

fn record(lock: &Lock, world: &World, ledger: &mut Ledger) -> Result<(), TestCaseError> {
    lock.verify("test")
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (name, e) in &lock.nodes {
        let id = world.node_id[name];
        ledger.see("raft_id", e.raft_id.to_string(), id)?;
        if let Some(ip) = e.overlay_ip {
            ledger.see("overlay_ip", ip.to_string(), id)?;
        }
        if let Some(p) = e.wg_port {
            ledger.see("wg_port", p.to_string(), id)?;
        }
    }
    for (name, e) in &lock.services {
        ledger.see("service_id", e.id.to_string(), world.service_id[name])?;
    }
    for (name, e) in &lock.storage {
        let sid = world.storage_id[name];
        if let Some(d) = &e.drbd {
            ledger.see("drbd_minor", d.minor.to_string(), sid)?;
            ledger.see("drbd_port", d.port.to_string(), sid)?;
            for (node, nid) in &d.node_ids {
                let member = world.node_id[node];
                // A node-id belongs to one member forever; a member keeps its node-id
                // for as long as it stays (a member that left and returns gets a new one).
                if let Some(prev) = ledger.drbd_ids.insert((sid, *nid), member) {
                    prop_assert_eq!(prev, member, "node-id {} of {} reused", nid, name);
                }
                ledger.drbd_member.insert((sid, member), *nid);
            }
        }
    }
    if let Some(ceph) = &lock.ceph {
        // One fsid forever (identity 0: the cluster).
        ledger.see("ceph_fsid", ceph.fsid.clone(), 0)?;
        for (node, osds) in &ceph.osds {
            let n = world.node_id[node];
            for o in osds {
                ledger.see(
                    "osd_id",
                    o.id.to_string(),
                    world.osd_id[&(n, o.device.clone())],
                )?;
            }
        }
    }
    // Tombstones keep their numbers: nothing live may hold a tombstoned number.
    let live_raft: BTreeSet<u64> = lock.nodes.values().map(|e| e.raft_id).collect();
    for t in &lock.tombstones {
        if let Tombstone::Node { entry, .. } = t {
            prop_assert!(
                !live_raft.contains(&entry.raft_id),
                "tombstoned raft id {} is live again",
                entry.raft_id
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn numbers_never_change_and_are_never_reused(edits in prop::collection::vec(edit(), 1..60)) {
        let mut spec = empty_spec();
        let mut world = World::default();
        let id = world.fresh();
        world.node_id.insert("seed".into(), id);
        let mut ledger = Ledger::default();
        let mut lock: Option<Lock> = None;
        for e in &edits {
            apply(&mut spec, &mut world, e);
            let result = match allocate(lock.as_ref(), &spec) {
                Ok(a) => a,
                // Only exhaustion may fail here, and none of these sequences is long enough.
                Err(err) => return Err(TestCaseError::fail(format!("allocation failed after {e:?}: {err}"))),
            };
            // Deterministic, and a fixpoint: allocating again changes nothing.
            let again = allocate(lock.as_ref(), &spec).unwrap();
            prop_assert_eq!(&again.lock, &result.lock);
            let fix = allocate(Some(&result.lock), &spec).unwrap();
            prop_assert_eq!(&fix.lock, &result.lock);
            prop_assert!(fix.changes.is_empty(), "not a fixpoint: {:?}", fix.changes);
            // Round trip through the file format.
            let reread = Lock::from_json(&result.lock.to_json(), "test").unwrap();
            prop_assert_eq!(&reread, &result.lock);
            record(&result.lock, &world, &mut ledger)?;
            // The user removes `renamed_from` once the rename is locked.
            for n in spec.nodes.values_mut() { n.renamed_from = None; }
            for s in spec.services.values_mut() { s.renamed_from = None; }
            for s in spec.storage.values_mut() { s.renamed_from = None; }
            lock = Some(result.lock);
        }
    }
}

#[test]
fn two_replica_drbd_gets_a_diskless_tie_breaker_and_keeps_it() {
    let mut spec = empty_spec();
    for (n, ip) in [("a", "10.0.0.2"), ("b", "10.0.0.3"), ("c", "10.0.0.4")] {
        spec.nodes.insert(
            n.into(),
            NodeSpec {
                address: ip.parse().unwrap(),
                labels: BTreeMap::new(),
                voter: true,
                workloads: true,
                renamed_from: None,
                wireguard: None,
                storage_address: None,
            },
        );
    }
    spec.storage.insert(
        "db".into(),
        storage(StorageKind::Drbd, vec!["a".into(), "b".into()]),
    );
    let first = allocate(None, &spec).unwrap().lock;
    let d = first.storage["db"].drbd.as_ref().unwrap();
    // "c" sorts before "seed": the first voter without a replica.
    assert_eq!(d.tie_breaker.as_deref(), Some("c"));
    assert_eq!(d.node_ids.len(), 3);
    // A third replica replaces the tie-breaker; its node-id is retired, not reused.
    spec.storage
        .get_mut("db")
        .unwrap()
        .nodes
        .push("seed".into());
    let second = allocate(Some(&first), &spec).unwrap().lock;
    let d2 = second.storage["db"].drbd.as_ref().unwrap();
    assert_eq!(d2.tie_breaker, None);
    assert_eq!(d2.node_ids["a"], d.node_ids["a"]);
    assert_eq!(d2.node_ids["seed"], 3);
    assert_eq!(d2.retired_node_ids.len(), 1);
    assert_eq!(d2.retired_node_ids[0].node, "c");
}

#[test]
fn changing_the_overlay_is_refused() {
    let mut spec = empty_spec();
    spec.network.overlay = Some("10.99.0.0/24".parse().unwrap());
    let lock = allocate(None, &spec).unwrap().lock;
    assert_eq!(
        lock.nodes["seed"].overlay_ip,
        Some("10.99.0.1".parse().unwrap())
    );
    spec.network.overlay = Some("10.98.0.0/24".parse().unwrap());
    let err = allocate(Some(&lock), &spec).unwrap_err();
    assert!(err.to_string().contains("renumber every node"), "{err}");
}

#[test]
fn a_full_overlay_is_a_clear_error() {
    let mut spec = empty_spec();
    spec.network.overlay = Some("10.99.0.0/30".parse().unwrap()); // 2 usable addresses
    for n in ["a", "b"] {
        spec.nodes.insert(
            n.into(),
            NodeSpec {
                address: "10.0.0.9".parse().unwrap(),
                labels: BTreeMap::new(),
                voter: true,
                workloads: true,
                renamed_from: None,
                wireguard: None,
                storage_address: None,
            },
        );
    }
    let err = allocate(None, &spec).unwrap_err();
    assert!(
        err.to_string().contains("no overlay addresses left"),
        "{err}"
    );
}

#[test]
fn another_clusters_lock_is_refused() {
    let spec = empty_spec();
    let lock = Lock::new("elsewhere");
    let err = allocate(Some(&lock), &spec).unwrap_err();
    assert!(err.to_string().contains("cluster `elsewhere`"), "{err}");
}
