//! Three Raft nodes in one process over real mutual TLS on loopback: they form a
//! group from identical `initialize` calls, replicate a command, survive a restart
//! from their redb files, and refuse a peer that speaks as another node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quorate_consensus::{
    AppHandler, Command, CommandResult, Consensus, PeerNode, PeerService, Timings,
};
use quorate_net::Partition;
use tokio::net::TcpListener;

struct NoApp;

impl AppHandler for NoApp {
    async fn handle(
        &self,
        _peer: String,
        _class: quorate_consensus::AppClass,
        _request: serde_json::Value,
    ) -> serde_json::Value {
        serde_json::Value::Null
    }
}

const TIMINGS: Timings = Timings {
    heartbeat: Duration::from_millis(100),
    election_timeout: Duration::from_millis(500),
};

async fn node(
    dir: &Path,
    ca: &Path,
    name: &str,
    id: u64,
    listener: TcpListener,
    peers: &BTreeMap<String, u64>,
) -> (Consensus, tokio::task::JoinHandle<()>) {
    let tls_dir = dir.join(name).join("tls");
    if !tls_dir.join("node.pem").exists() {
        quorate_pki::issue(ca, name, &tls_dir, quorate_pki::NODE_VALIDITY).unwrap();
    }
    let tls = quorate_pki::SharedTls::new(
        quorate_pki::load(&quorate_pki::TlsFiles::in_dir(&tls_dir), name).unwrap(),
    );
    let c = Consensus::open(
        &dir.join(name),
        id,
        TIMINGS,
        tls.clone(),
        Partition::default(),
        None,
    )
    .await
    .unwrap();
    c.set_peers(peers.clone());
    let server = tokio::spawn(quorate_net::serve(
        listener,
        tls,
        Arc::new(PeerService::new(c.clone(), Arc::new(NoApp))),
        Partition::default(),
        quorate_net::Limits::default(),
        quorate_net::KnownAddresses::default(),
    ));
    (c, server)
}

fn spec_and_lock() -> (quorate_spec::Spec, quorate_lock::Lock) {
    let text = "[cluster]\nname = \"t\"\n[nodes.n1]\naddress = \"127.0.0.1\"\n[nodes.n2]\naddress = \"127.0.0.2\"\n[nodes.n3]\naddress = \"127.0.0.3\"\n";
    let spec = quorate_spec::check(text, quorate_spec::Format::Toml)
        .spec
        .unwrap();
    let lock = quorate_lock::allocate(None, &spec).unwrap().lock;
    (spec, lock)
}

async fn wait_leader(nodes: &[&Consensus]) -> u64 {
    for _ in 0..200 {
        let leaders: Vec<Option<u64>> = nodes.iter().map(|n| n.status().leader).collect();
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l)) && nodes.iter().any(|n| n.id() == *l) {
                return *l;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no agreed leader");
}

/// Listeners for n1..n3 on loopback, with the membership and name→id map they imply.
async fn bind_three() -> (
    Vec<TcpListener>,
    BTreeMap<u64, PeerNode>,
    BTreeMap<String, u64>,
) {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    let mut peers = BTreeMap::new();
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let id = i as u64 + 1;
        members.insert(
            id,
            PeerNode {
                name: (*name).into(),
                addr: l.local_addr().unwrap().to_string(),
            },
        );
        peers.insert((*name).to_string(), id);
        listeners.push(l);
    }
    (listeners, members, peers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_replicate_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    quorate_pki::init_ca(&ca, "t", quorate_pki::CA_VALIDITY).unwrap();
    let (listeners, members, peers) = bind_three().await;
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let name = format!("n{}", i + 1);
        let (c, server) = node(dir.path(), &ca, &name, i as u64 + 1, l, &peers).await;
        nodes.push(c);
        servers.push(server);
    }
    // Every node initializes with the same members: safe, one leader results.
    for n in &nodes {
        n.initialize(members.clone()).await.unwrap();
    }
    let leader = wait_leader(&nodes.iter().collect::<Vec<_>>()).await;
    let leader_node = nodes.iter().find(|n| n.id() == leader).unwrap();
    let (spec, lock) = spec_and_lock();
    let result = leader_node
        .write(
            Command::Bootstrap {
                spec: Box::new(spec.clone()),
                lock: Box::new(lock.clone()),
                by: "n1".into(),
                at_ms: 0,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(matches!(result, CommandResult::Applied { version: 1, .. }));
    // A follower refuses to write and names the leader.
    let follower = nodes.iter().find(|n| n.id() != leader).unwrap();
    let err = follower
        .write(
            Command::ApplySpec {
                spec: Box::new(spec.clone()),
                lock: Box::new(lock.clone()),
                by: "x".into(),
                at_ms: 0,
            },
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not the leader"), "{err}");
    // Replicated everywhere.
    for _ in 0..100 {
        let mut done = true;
        for n in &nodes {
            done &= n.state().await.spec_version() == 1;
        }
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in &nodes {
        assert_eq!(
            n.state().await.spec_version(),
            1,
            "node {} has the spec",
            n.id()
        );
    }
    // A restart of every node keeps the state (rebuilt from redb).
    let addrs: Vec<String> = members.values().map(|p| p.addr.clone()).collect();
    for n in &nodes {
        n.shutdown().await;
    }
    for s in &servers {
        s.abort();
    }
    drop(nodes);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut restarted = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let l = TcpListener::bind(addr).await.unwrap();
        let name = format!("n{}", i + 1);
        let (c, _server) = node(dir.path(), &ca, &name, i as u64 + 1, l, &peers).await;
        assert!(c.has_state().await, "the log survived the restart");
        assert!(
            !c.initialize(members.clone()).await.unwrap(),
            "a second initialize is a no-op"
        );
        restarted.push(c);
    }
    wait_leader(&restarted.iter().collect::<Vec<_>>()).await;
    for _ in 0..100 {
        if restarted[0].state().await.spec_version() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(restarted[0].state().await.spec_version(), 1);
    for n in &restarted {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_compacted_and_a_lagging_node_catches_up_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    quorate_pki::init_ca(&ca, "t", quorate_pki::CA_VALIDITY).unwrap();
    let (listeners, members, peers) = bind_three().await;
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let (c, s) = node(
            dir.path(),
            &ca,
            &format!("n{}", i + 1),
            i as u64 + 1,
            l,
            &peers,
        )
        .await;
        c.initialize(members.clone()).await.unwrap();
        nodes.push(c);
        servers.push(s);
    }
    // n3 goes away before the writes.
    nodes[2].shutdown().await;
    servers[2].abort();
    let live: Vec<&Consensus> = nodes[..2].iter().collect();
    let (spec, lock) = spec_and_lock();
    let writes = 700;
    let mut leader = nodes[0].clone();
    for k in 0..writes {
        let mut s = spec.clone();
        s.cluster.timings.drift_margin = quorate_spec::SpecDuration::from_millis(k);
        let command = Command::ApplySpec {
            spec: Box::new(s),
            lock: Box::new(lock.clone()),
            by: "t".into(),
            at_ms: k,
        };
        // Like any client: find the leader, and retry after an election.
        let mut attempts = 0;
        loop {
            let id = wait_leader(&live).await;
            leader = nodes.iter().find(|n| n.id() == id).unwrap().clone();
            match leader.write(command.clone(), Duration::from_secs(5)).await {
                Ok(_) => break,
                Err(e) if attempts < 20 => {
                    // Right after an election the nodes' view of the leader can lag:
                    // give it a moment, as a real client would.
                    attempts += 1;
                    eprintln!("write {k}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("write {k}: {e}; status {:?}", leader.status()),
            }
        }
    }
    let status = leader.status();
    let snapshot = status.snapshot.expect("a snapshot was built");
    assert!(snapshot >= 499, "snapshot at {snapshot}");
    // n3 returns: the log it lacks is purged on the leader, so it must install the snapshot.
    let addr = members[&3].addr.clone();
    let (n3, _s) = node(
        dir.path(),
        &ca,
        "n3",
        3,
        TcpListener::bind(&addr).await.unwrap(),
        &peers,
    )
    .await;
    for _ in 0..200 {
        if n3.state().await.spec_version() == writes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        n3.state().await.spec_version(),
        writes,
        "n3 caught up through the snapshot"
    );
    assert!(n3.status().snapshot.is_some(), "n3 installed a snapshot");
    for n in [&nodes[0], &nodes[1], &n3] {
        n.shutdown().await;
    }
}
