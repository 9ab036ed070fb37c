//! Properties of placement over random specs, node states and current placements.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use quorate_scheduler::{place, Input, NodeState, Placement};
use quorate_spec::{NodeSpec, ServiceSpec, Spec, StorageSpec};

#[derive(Debug, Clone)]
struct World {
    spec: Spec,
    nodes: BTreeMap<String, NodeState>,
    current: BTreeMap<String, String>,
    pins: BTreeMap<String, String>,
}

fn world() -> impl Strategy<Value = World> {
    (1usize..7, 0usize..16).prop_flat_map(|(n_nodes, n_services)| {
        let state = prop_oneof![4 => Just(NodeState::Up), 2 => Just(NodeState::Down), 1 => Just(NodeState::Draining), 1 => Just(NodeState::Maintenance)];
        let node_idx = 0..n_nodes;
        let svc = (
            prop::collection::vec(node_idx.clone(), 0..3),             // prefer
            prop::collection::vec(node_idx.clone(), 0..2),             // avoid
            prop::collection::vec(0..n_services.max(1), 0..3),         // anti-affinity
            prop::option::of((node_idx.clone(), node_idx.clone())),    // drbd replicas
            any::<bool>(),                                             // sticky
            prop::option::of(node_idx.clone()),                        // current node
            prop::option::weighted(0.2, node_idx.clone()),             // pin (quorate move)
        );
        (prop::collection::vec(state, n_nodes), prop::collection::vec(svc, n_services))
    }).prop_map(|(states, services)| {
        let name = |i: usize| format!("n{i}");
        let mut nodes = BTreeMap::new();
        let mut node_states = BTreeMap::new();
        for (i, st) in states.iter().enumerate() {
            nodes.insert(name(i), NodeSpec { address: format!("10.0.0.{}", i + 1).parse().unwrap(), labels: BTreeMap::new(), voter: true, workloads: true, renamed_from: None, wireguard: None, storage_address: None });
            node_states.insert(name(i), *st);
        }
        let mut spec_services = BTreeMap::new();
        let mut storage = BTreeMap::new();
        let mut current = BTreeMap::new();
        let mut pins = BTreeMap::new();
        for (i, (prefer, avoid, anti, drbd, sticky, cur, pin)) in services.iter().enumerate() {
            if let Some(p) = pin {
                pins.insert(format!("s{i}"), name(*p));
            }
            let mut svc: ServiceSpec = serde_json::from_value(serde_json::json!({"kind": "process", "command": ["/bin/x"]})).unwrap();
            svc.prefer = prefer.iter().map(|p| name(*p)).collect();
            svc.avoid = avoid.iter().map(|p| name(*p)).collect();
            svc.anti_affinity = anti.iter().filter(|a| **a != i).map(|a| format!("s{a}")).collect();
            svc.sticky = *sticky;
            if let Some((a, b)) = drbd {
                let st: StorageSpec = serde_json::from_value(serde_json::json!({"kind": "drbd", "nodes": [name(*a), name(*b)], "device": "/dev/vdb"})).unwrap();
                storage.insert(format!("d{i}"), st);
                svc.storage = vec![format!("d{i}")];
            }
            if let Some(c) = cur {
                current.insert(format!("s{i}"), name(*c));
            }
            spec_services.insert(format!("s{i}"), svc);
        }
        let spec = Spec {
            cluster: quorate_spec::Cluster { name: "p".into(), timings: quorate_spec::Timings::default(), fence_command: Vec::new(), fence_environment_file: None },
            nodes,
            network: quorate_spec::Network::default(),
            services: spec_services,
            storage,
            alerts: None,
            ceph: None,
        };
        World { spec, nodes: node_states, current, pins }
    })
}

fn run(w: &World, current: &BTreeMap<String, String>) -> BTreeMap<String, Placement> {
    place(&Input {
        spec: &w.spec,
        nodes: &w.nodes,
        current,
        pins: &w.pins,
        failed: &BTreeMap::new(),
        constraints: &quorate_scheduler::Constraints::NONE,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn placements_respect_every_rule(w in world()) {
        let out = run(&w, &w.current);
        prop_assert_eq!(out.len(), w.spec.services.len(), "every service gets a decision");
        for (name, p) in &out {
            prop_assert!(!p.reason.is_empty());
            let Some(node) = &p.node else { continue };
            let svc = &w.spec.services[name];
            let state = w.nodes[node];
            let kept = w.current.get(name) == Some(node);
            prop_assert!(state == NodeState::Up || (state == NodeState::Maintenance && kept), "{name} on {node} which is {state:?}");
            prop_assert!(!svc.avoid.contains(node), "{name} on avoided {node}");
            for st in &svc.storage {
                prop_assert!(w.spec.storage[st].nodes.contains(node), "{name} on {node} without a replica of {st}");
            }
            for (other, q) in &out {
                if other != name && q.node.as_ref() == Some(node) {
                    prop_assert!(!svc.anti_affinity.contains(other), "{name} and {other} share {node} despite anti-affinity");
                }
            }
        }
    }

    #[test]
    fn an_unchanged_state_changes_nothing(w in world()) {
        let first = run(&w, &w.current);
        let current: BTreeMap<String, String> = first.iter().filter_map(|(s, p)| p.node.clone().map(|n| (s.clone(), n))).collect();
        let second = run(&w, &current);
        for (name, p) in &first {
            prop_assert_eq!(&second[name].node, &p.node, "{} moved without a reason: {}", name, second[name].reason);
        }
        // And the function is deterministic.
        prop_assert_eq!(run(&w, &w.current), first);
    }

    #[test]
    fn a_pin_wins_when_its_node_is_up_and_allowed_on_its_own(w in world()) {
        let out = run(&w, &w.current);
        for (name, pin) in &w.pins {
            let svc = &w.spec.services[name];
            let statically_ok = w.nodes[pin] == NodeState::Up && !svc.avoid.contains(pin) && svc.storage.iter().all(|st| w.spec.storage[st].nodes.contains(pin));
            let anti_neighbour = out.iter().any(|(o, p)| o != name && p.node.as_ref() == Some(pin) && (svc.anti_affinity.contains(o) || w.spec.services[o].anti_affinity.contains(name)));
            if statically_ok && !anti_neighbour {
                prop_assert_eq!(out[name].node.as_ref(), Some(pin), "{} pinned to {} but: {}", name, pin, out[name].reason);
            }
        }
    }

    #[test]
    fn a_sticky_service_on_an_allowed_node_stays(w in world()) {
        let out = run(&w, &w.current);
        for (name, node) in &w.current {
            let svc = &w.spec.services[name];
            if svc.sticky && !w.pins.contains_key(name) && w.nodes[node] == NodeState::Up && !svc.avoid.contains(node) && svc.storage.iter().all(|st| w.spec.storage[st].nodes.contains(node)) {
                // It may only lose its node to anti-affinity with a service placed earlier in pass 1.
                let kept = out[name].node.as_ref() == Some(node);
                let blocked = w.current.iter().any(|(o, n)| o < name && n == node && (svc.anti_affinity.contains(o) || w.spec.services[o].anti_affinity.contains(name)));
                prop_assert!(kept || blocked, "{name} left {node}: {}", out[name].reason);
            }
        }
    }
}

/// The spec of `text`, which must be valid.
fn spec_from(text: &str) -> Spec {
    quorate_spec::check(text, quorate_spec::Format::Toml)
        .spec
        .unwrap()
}

/// Each of `names` up.
fn all_up(names: &[&str]) -> BTreeMap<String, NodeState> {
    names
        .iter()
        .map(|n| ((*n).to_string(), NodeState::Up))
        .collect()
}

/// What `place` works from, without pins or recent failures.
fn input<'a>(
    spec: &'a Spec,
    nodes: &'a BTreeMap<String, NodeState>,
    current: &'a BTreeMap<String, String>,
    constraints: &'a quorate_scheduler::Constraints,
) -> Input<'a> {
    Input {
        spec,
        nodes,
        current,
        pins: &EMPTY_PINS,
        failed: &EMPTY_FAILED,
        constraints,
    }
}

static EMPTY_PINS: BTreeMap<String, String> = BTreeMap::new();
static EMPTY_FAILED: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();

#[test]
fn a_failed_node_moves_its_services_to_the_preferred_survivor() {
    let text = "[cluster]\nname = \"t\"\n[nodes.a]\naddress = \"10.0.0.1\"\n[nodes.b]\naddress = \"10.0.0.2\"\n[nodes.c]\naddress = \"10.0.0.3\"\n[services.web]\nkind = \"process\"\ncommand = [\"/bin/web\"]\nprefer = [\"a\", \"c\"]\n";
    let spec = spec_from(text);
    let mut nodes = all_up(&["a", "b", "c"]);
    let out = place(&input(
        &spec,
        &nodes,
        &BTreeMap::new(),
        &quorate_scheduler::Constraints::NONE,
    ));
    assert_eq!(out["web"].node.as_deref(), Some("a"));
    assert_eq!(out["web"].reason, "placed on a (preferred)");
    nodes.insert("a".into(), NodeState::Down);
    let current = [("web".to_string(), "a".to_string())].into();
    let out = place(&input(
        &spec,
        &nodes,
        &current,
        &quorate_scheduler::Constraints::NONE,
    ));
    assert_eq!(out["web"].node.as_deref(), Some("c"));
    assert_eq!(out["web"].reason, "moved from a (down) to c (preferred)");
    // a comes back: the service stays on c (sticky), no flapping.
    nodes.insert("a".into(), NodeState::Up);
    let current = [("web".to_string(), "c".to_string())].into();
    let out = place(&input(
        &spec,
        &nodes,
        &current,
        &quorate_scheduler::Constraints::NONE,
    ));
    assert_eq!(out["web"].node.as_deref(), Some("c"));
}

#[test]
fn node_labels_are_required_and_preferred() {
    let text = "[cluster]\nname = \"t\"\n\
        [nodes.a]\naddress = \"10.0.0.1\"\nlabels = { disk = \"hdd\", zone = \"x\" }\n\
        [nodes.b]\naddress = \"10.0.0.2\"\nlabels = { disk = \"ssd\", zone = \"x\" }\n\
        [nodes.c]\naddress = \"10.0.0.3\"\nlabels = { disk = \"ssd\", zone = \"y\" }\n\
        [services.db]\nkind = \"process\"\ncommand = [\"/bin/db\"]\nrequire = { disk = \"ssd\" }\nprefer_labels = { zone = \"y\" }\n\
        [services.cache]\nkind = \"process\"\ncommand = [\"/bin/cache\"]\nprefer_labels = { zone = \"x\", disk = \"hdd\" }\n\
        [services.gpu]\nkind = \"process\"\ncommand = [\"/bin/gpu\"]\nrequire = { gpu = \"yes\" }\n";
    let spec = spec_from(text);
    let mut nodes = all_up(&["a", "b", "c"]);
    let input = |nodes: &BTreeMap<String, NodeState>| {
        place(&input(
            &spec,
            nodes,
            &BTreeMap::new(),
            &quorate_scheduler::Constraints::NONE,
        ))
    };
    let out = input(&nodes);
    // db needs an ssd (b or c) and prefers zone y: c.
    assert_eq!(out["db"].node.as_deref(), Some("c"), "{:?}", out["db"]);
    assert!(
        out["db"].reason.contains("prefer_labels"),
        "{:?}",
        out["db"]
    );
    // cache matches both of its labels on a only.
    assert_eq!(
        out["cache"].node.as_deref(),
        Some("a"),
        "{:?}",
        out["cache"]
    );
    // No node has a gpu: unplaceable, and the reason says which label is missing.
    assert_eq!(out["gpu"].node, None);
    assert!(
        out["gpu"].reason.contains("lacks label gpu=yes"),
        "{:?}",
        out["gpu"]
    );
    // With c down, db goes to the other ssd node, never to the hdd one.
    nodes.insert("c".into(), NodeState::Down);
    let out = input(&nodes);
    assert_eq!(out["db"].node.as_deref(), Some("b"), "{:?}", out["db"]);
    nodes.insert("b".into(), NodeState::Down);
    let out = input(&nodes);
    assert_eq!(out["db"].node, None);
    assert!(
        out["db"]
            .reason
            .contains("a: label disk=hdd, requires disk=ssd"),
        "{:?}",
        out["db"]
    );
}

#[test]
fn a_witness_votes_but_never_runs_a_service() {
    let text = "[cluster]\nname = \"t\"\n\
        [nodes.a]\naddress = \"10.0.0.1\"\n\
        [nodes.b]\naddress = \"10.0.0.2\"\n\
        [nodes.pi]\naddress = \"10.0.0.3\"\nworkloads = false\n\
        [services.web]\nkind = \"process\"\ncommand = [\"/bin/web\"]\nprefer = [\"pi\"]\n\
        [services.db]\nkind = \"process\"\ncommand = [\"/bin/db\"]\nanti_affinity = [\"web\"]\n\
        [services.cache]\nkind = \"process\"\ncommand = [\"/bin/cache\"]\n";
    let checked = quorate_spec::check(text, quorate_spec::Format::Toml);
    let spec = checked.spec.unwrap();
    assert_eq!(spec.voters().count(), 3, "the witness votes");
    let mut nodes = all_up(&["a", "b", "pi"]);
    let placed = |nodes: &BTreeMap<String, NodeState>| {
        place(&input(
            &spec,
            nodes,
            &BTreeMap::new(),
            &quorate_scheduler::Constraints::NONE,
        ))
    };
    let out = placed(&nodes);
    for (service, p) in &out {
        assert_ne!(
            p.node.as_deref(),
            Some("pi"),
            "{service} on the witness: {p:?}"
        );
        assert!(p.node.is_some(), "{service}: {p:?}");
    }
    // With a down, everything that can goes to b; of the anti-affine pair db/web one
    // has no node left, and the reason names the witness.
    nodes.insert("a".into(), NodeState::Down);
    let out = placed(&nodes);
    assert_eq!(out["cache"].node.as_deref(), Some("b"));
    let unplaced: Vec<_> = out.iter().filter(|(_, p)| p.node.is_none()).collect();
    assert_eq!(unplaced.len(), 1, "{out:?}");
    assert!(
        unplaced[0].1.reason.contains("pi: a witness"),
        "{:?}",
        unplaced[0]
    );
}

#[test]
fn disabled_services_go_nowhere_and_bans_keep_services_off_nodes() {
    let text = "[cluster]\nname = \"t\"\n[nodes.a]\naddress = \"10.0.0.1\"\n[nodes.b]\naddress = \"10.0.0.2\"\n[nodes.c]\naddress = \"10.0.0.3\"\n\
        [services.web]\nkind = \"process\"\ncommand = [\"/bin/web\"]\nprefer = [\"a\"]\n\
        [services.db]\nkind = \"process\"\ncommand = [\"/bin/db\"]\n";
    let spec = spec_from(text);
    let nodes = all_up(&["a", "b", "c"]);
    let constraints = quorate_scheduler::Constraints {
        disabled: ["db".to_string()].into(),
        banned: [("web".to_string(), ["a".to_string()].into())].into(),
    };
    let current: BTreeMap<String, String> =
        [("web".into(), "a".into()), ("db".into(), "b".into())].into();
    let out = place(&input(&spec, &nodes, &current, &constraints));
    assert_eq!(out["db"].node, None, "{:?}", out["db"]);
    assert!(out["db"].reason.starts_with("disabled"), "{:?}", out["db"]);
    // web leaves its preferred node a, which it is banned from.
    assert!(
        matches!(out["web"].node.as_deref(), Some("b" | "c")),
        "{:?}",
        out["web"]
    );
    let why =
        quorate_scheduler::explain(&input(&spec, &nodes, &current, &constraints), &out, "web");
    assert!(
        why["a"].as_deref().is_some_and(|w| w.contains("banned")),
        "{why:?}"
    );
}
