//! The per-node agent (`quorate agent`): checks its inputs, opens its Raft state,
//! joins the cluster of the spec's voters, serves peers over mutual TLS and the local
//! CLI over `<data-dir>/control.sock`.
//!
//! Start order does not matter: at a cold start every node with an empty log
//! initializes Raft with the same voters (from spec + lock), which openraft makes
//! safe; a node that finds the cluster already running waits to be added instead.
//! Whichever node leads
//! first commits the local spec as the cluster's first spec, and later bootstraps are
//! ignored. After that, only `quorate apply` changes the spec (DESIGN invariant 7).
//!
//! **Architecture Invariant:** the agent talks to Raft only through
//! `quorate-consensus`; it never names openraft.

mod alerts;
mod cluster;
mod control;
mod decide;
mod failover;
mod handover;
mod health;
pub mod lease_rules;
mod mesh;
mod metrics;
mod notify;
mod recovery;
mod runtime;
pub mod setup;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quorate_consensus::{Consensus, PeerService, Timings};
use quorate_net::Partition;
use quorate_pki::TlsFiles;

pub use crate::cluster::{members, voters, Caller, Node};
pub use crate::failover::LeaseTable;
pub use crate::recovery::{check_force_single, force_single, RecoveryCheck};
pub use crate::runtime::Runtime;
use crate::setup::Identity;
pub use quorate_consensus::ForcedSingle;

/// How to run one agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The spec file.
    pub spec: PathBuf,
    /// The lock file.
    pub lock: PathBuf,
    /// This node's name.
    pub node: String,
    /// State directory.
    pub data_dir: PathBuf,
    /// TLS material.
    pub tls: TlsFiles,
    /// Control socket.
    pub socket: PathBuf,
    /// Watchdog device for the fence process, if any.
    pub watchdog: Option<PathBuf>,
    /// Sandbox and tests only: the control socket takes the `partition` fault.
    pub allow_fault_injection: bool,
    /// A group (name or number) whose members may read status and events through the
    /// control socket; none: root and the agent's user only.
    pub read_only_group: Option<String>,
}

/// Why the agent stopped or could not start. Start-up errors change nothing.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad input: spec, lock, node name, data dir, TLS material.
    #[error("{0}")]
    Input(String),
    /// A runtime failure.
    #[error("{0}")]
    Runtime(String),
}

/// Runs the agent until SIGINT or SIGTERM.
///
/// # Errors
/// Bad inputs (before anything is changed), or a failure to bind its sockets.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let local = setup::load_local(&config.spec, &config.lock)?;
    let spec = &local.spec;
    let Some(my_lock) = local.lock.nodes.get(&config.node) else {
        let known: Vec<&String> = spec.nodes.keys().collect();
        return Err(AgentError::Input(format!(
            "node `{}` is not in the spec {} (nodes: {known:?})\n  help: pass --node with one of those names (or set QUORATE_NODE)",
            config.node,
            config.spec.display()
        )));
    };
    let raft_id = my_lock.raft_id;
    let identity = Identity {
        format: 1,
        cluster: spec.cluster.name.clone(),
        node: config.node.clone(),
        raft_id,
    };
    let write_identity = setup::check_data_dir(&config.data_dir, &identity)?;
    if let Some(dog) = &config.watchdog {
        std::fs::OpenOptions::new().write(true).open(dog).map(drop).map_err(|e| AgentError::Input(format!("cannot open the watchdog {}: {e}\n  help: check --watchdog / QUORATE_WATCHDOG, or leave it unset", dog.display())))?;
    }
    let tls = quorate_pki::SharedTls::new(load_tls(&config)?);
    let addr = setup::peer_addr(spec, &local.lock, &config.node).ok_or_else(|| {
        AgentError::Input(format!(
            "node `{}` has no overlay address in the lock (network.transport = \"wireguard\")\n  help: run `quorate lock` and deploy the new lock",
            config.node
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        AgentError::Input(format!(
            "cannot listen on {addr} (node `{}`'s address and network.port): {e}",
            config.node
        ))
    })?;
    // The HTTP API, when the spec asks for it: on the node's own (underlay) address,
    // where operators reach it.
    let api = match spec.network.api_port {
        Some(port) => {
            let address = std::net::SocketAddr::new(spec.nodes[&config.node].address, port);
            let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
                AgentError::Input(format!(
                    "cannot listen on {address} for the HTTP API (node `{}`'s address and network.api_port): {e}",
                    config.node
                ))
            })?;
            let tls = quorate_pki::api_server_config(&config.tls)
                .map_err(|e| AgentError::Input(format!("the HTTP API's TLS: {e}")))?;
            Some((listener, tls))
        }
        None => None,
    };
    if write_identity {
        setup::write_identity(&config.data_dir, &identity)?;
    }
    let group = config
        .read_only_group
        .as_deref()
        .map(control::resolve_group)
        .transpose()?;
    let control = control::bind(&config.socket, group)?;

    let timings = Timings {
        heartbeat: spec.cluster.timings.heartbeat.get(),
        election_timeout: spec.cluster.timings.election_timeout.get(),
    };
    let partition = Partition::default();
    let consensus = Consensus::open(
        &config.data_dir,
        raft_id,
        timings,
        tls.clone(),
        partition.clone(),
        Some(addr.ip()),
    )
    .await
    .map_err(|e| AgentError::Runtime(e.to_string()))?;
    let members = voters(spec, &local.lock);
    let cluster_name = spec.cluster.name.clone();

    let node = Arc::new(Node::new(
        config.node.clone(),
        consensus.clone(),
        local,
        tls.clone(),
        partition.clone(),
        config.allow_fault_injection,
    ));
    // Members before the first peer message: the applied spec's, else the local one's.
    node.refresh_applied().await;
    let service = Arc::new(PeerService::new(
        consensus.clone(),
        Arc::new(cluster::PeerApp(node.clone())),
    ));
    let server = tokio::spawn(quorate_net::serve(
        listener,
        tls.clone(),
        service,
        partition,
        quorate_net::Limits::default(),
        node.known_addresses.clone(),
    ));
    let reload = tokio::spawn(reload_tls_on_hangup(config.clone(), tls));
    tracing::info!(node = %config.node, raft_id, %addr, "agent started");

    let joining = {
        let (node, consensus) = (node.clone(), consensus.clone());
        tokio::spawn(async move { join(&node, &consensus, members).await })
    };
    let duties = {
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                node.refresh_applied().await;
                node.leader_duties().await;
                tokio::time::sleep(node.duties_pause()).await;
            }
        })
    };
    let volumes = {
        let node = node.clone();
        tokio::spawn(async move { node.ensure_gluster_volumes_forever().await })
    };
    let rejoin = {
        let node = node.clone();
        tokio::spawn(async move { node.rejoin_left_out_forever().await })
    };
    let handover = tokio::spawn(node.clone().bound_predecessor_leases_forever());
    let mesh = tokio::spawn(node.clone().keep_mesh_forever(config.data_dir.clone()));
    let control_task = tokio::spawn(control::serve(control, node.clone()));
    let api_task = api.map(|(listener, tls)| {
        let handler: quorate_http::Handler = {
            let node = node.clone();
            Arc::new(move |request, by| {
                let node = node.clone();
                Box::pin(async move {
                    let caller = cluster::Caller {
                        node: node.name.clone(),
                        user: Some(by),
                        forwarded: false,
                    };
                    node.handle(request, &caller).await
                })
            })
        };
        let metrics: quorate_http::MetricsText = {
            let node = node.clone();
            Arc::new(move || {
                let node = node.clone();
                Box::pin(async move { node.metrics_text().await })
            })
        };
        let api = quorate_http::Api {
            handler,
            metrics,
            tokens: config.data_dir.join(quorate_http::tokens::TOKENS_FILE),
        };
        tracing::info!(address = ?listener.local_addr().ok(), "HTTP API listening");
        tokio::spawn(quorate_http::serve(listener, tls, api))
    });
    let alerts_task = tokio::spawn(alerts::run_forever(node.clone()));
    let runtime = Arc::new(Runtime::new(
        node.clone(),
        config.data_dir.clone(),
        config.watchdog.clone(),
    ));
    // The workloads' cgroups live under one directory of this agent's, named after the
    // node and a digest of the data dir, recorded in `<data-dir>/cgroup`.
    let tag = format!(
        "{:08x}",
        fnv1a(config.data_dir.to_string_lossy().as_bytes())
    );
    match quorate_cgroup::agent_parent(&config.node, &tag) {
        Ok(dir) => {
            if let Err(e) = quorate_files::write_atomic(
                &config.data_dir.join("cgroup"),
                dir.to_string_lossy().as_bytes(),
            ) {
                tracing::warn!("cannot record the workloads' cgroup in the data dir: {e}");
            }
            quorate_drivers::set_cgroup_parent(dir);
        }
        Err(e) => tracing::warn!(
            "no cgroup for workloads ({e}): a workload that leaves its process group escapes stops and the fence"
        ),
    }
    runtime.adopt_previous().await;
    let lease_task = tokio::spawn(runtime.clone().keep_lease());
    let reconcile_task = tokio::spawn(runtime.clone().reconcile_forever());
    let drbd_task = tokio::spawn(runtime.clone().keep_drbd_up());
    let gluster_task = tokio::spawn(runtime.clone().watch_gluster());
    let ceph_task = tokio::spawn(runtime.clone().watch_ceph());

    let readiness = tokio::spawn(notify::report(
        node.clone(),
        cluster_name,
        timings.election_timeout * 6,
    ));
    let watchdog = tokio::spawn(notify::pet_watchdog());

    wait_for_signal().await;
    tracing::info!("stopping");
    notify::stopping();
    readiness.abort();
    watchdog.abort();
    duties.abort();
    volumes.abort();
    rejoin.abort();
    handover.abort();
    mesh.abort();
    joining.abort();
    lease_task.abort();
    reconcile_task.abort();
    drbd_task.abort();
    gluster_task.abort();
    ceph_task.abort();
    control_task.abort();
    if let Some(task) = api_task {
        task.abort();
    }
    alerts_task.abort();
    reload.abort();
    server.abort();
    consensus.shutdown().await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// Loads this node's TLS material, refusing an expired certificate.
fn load_tls(config: &AgentConfig) -> Result<quorate_pki::NodeTls, AgentError> {
    let help = || {
        format!(
            "  help: issue one with the CA (`quorate ca issue {} --ca CA_DIR --out DIR`, or `quorate cert request` here and `quorate ca sign` there) and put node.pem, node.key and ca.pem in {}",
            config.node,
            config.data_dir.join("tls").display()
        )
    };
    let tls = quorate_pki::load(&config.tls, &config.node).map_err(|e| {
        AgentError::Input(format!(
            "TLS material for `{}`: {e}\n{}",
            config.node,
            help()
        ))
    })?;
    if tls.not_after < std::time::SystemTime::now() {
        return Err(AgentError::Input(format!(
            "the certificate {} of `{}` has expired; peers refuse it\n{}",
            config.tls.cert.display(),
            config.node,
            help()
        )));
    }
    Ok(tls)
}

/// On SIGHUP: reloads the certificate, key and CA bundle for every new connection;
/// established connections keep theirs. A reload that fails keeps the old material.
async fn reload_tls_on_hangup(config: AgentConfig, tls: quorate_pki::SharedTls) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangup.recv().await.is_some() {
        match load_tls(&config) {
            Ok(fresh) => {
                tracing::info!(
                    not_after = %quorate_pki::format_time(fresh.not_after),
                    "SIGHUP: reloaded the TLS certificate, key and CA bundle"
                );
                tls.set(fresh);
            }
            Err(e) => tracing::error!("SIGHUP: kept the current TLS material: {e}"),
        }
    }
}

/// FNV-1a, 32 bits: a short, stable digest (not a security boundary).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Joins the cluster: a node without Raft state initializes with the spec's voters
/// only when no peer has state yet (a cold start, where every node initializes
/// identically — safe). When the cluster already exists, it waits for the leader to
/// add it, so a node never starts a second history with other members.
async fn join(
    node: &Node,
    consensus: &Consensus,
    members: std::collections::BTreeMap<u64, quorate_consensus::PeerNode>,
) {
    let mut told = false;
    while !consensus.has_state().await {
        if node.cluster_exists().await {
            if !told {
                tracing::info!("the cluster exists; waiting for its leader to add this node");
                told = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        match consensus.initialize(members.clone()).await {
            Ok(true) => tracing::info!("initialized Raft with the spec's voters"),
            Ok(false) => {}
            Err(e) => tracing::error!("cannot initialize Raft: {e}"),
        }
        return;
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
