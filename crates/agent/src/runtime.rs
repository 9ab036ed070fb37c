//! What runs on this node: the lease, the fence process, and the level-triggered
//! reconciler that makes the node's workloads match its committed assignments.
//!
//! A workload starts only while this node holds a valid lease; the lease is renewed
//! every TTL/3 through the leader, which confirms its quorum before it answers. The
//! deadline counts from when the renewal was *sent*, on this node's monotonic clock,
//! so it always ends before the leader's own count (leader: last acknowledgement +
//! TTL + drift margin). The fence process gets every new deadline and the list of
//! workload process groups; if the agent stops renewing for any reason, the fence
//! kills them at the deadline.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate_drivers::{CommandOutput, Exit, UnitBus, Workload, WorkloadRecord};
use quorate_fence::mono_ns;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::decide;
use crate::Node;

/// The lease as persisted in the data dir, so that a restarted agent knows whether
/// the workloads it finds still run under a valid lease.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LeaseFile {
    /// CLOCK_BOOTTIME deadline in ns (valid across processes until reboot).
    deadline_ns: u64,
    /// Boot id: a deadline from another boot means nothing.
    boot_id: String,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// What the reconciler reads from the replicated state in one go.
struct View {
    /// Services assigned to this node.
    assigned: BTreeSet<String>,
    /// Services the replicated state says may run here (this node's own last reports).
    claimed: BTreeSet<String>,
    /// Stop orders to this node not yet answered by a report at their epoch, with the
    /// state to confirm (this node's last non-running report, else "stopped").
    unconfirmed_stops: BTreeMap<String, String>,
    /// Storage steps of each assigned service on this node, in start order.
    storage: BTreeMap<String, Vec<quorate_drivers::StorageStep>>,
    /// Their specs.
    specs: BTreeMap<String, quorate_spec::ServiceSpec>,
    /// Services reported running somewhere.
    running: BTreeSet<String>,
    /// Every service's `after` list.
    after: BTreeMap<String, Vec<String>>,
    /// Restart generation of each service (`quorate restart`).
    generations: BTreeMap<String, u64>,
}

/// Generation of a workload adopted from a previous agent: taken as current.
const ADOPTED: u64 = u64::MAX;

struct Tracked {
    workload: Workload,
    state: &'static str,
    /// The restart generation it was started for.
    generation: u64,
}

/// A workload being stopped: it leaves the reconciler's table at once, but stays in
/// the fence's lists and in `workloads.json` (marked `stopping`) until its stop is
/// confirmed — sending a stop signal is not a stop.
struct Stop {
    service: String,
    tracked: Tracked,
}

/// What the fence and the records need of a workload.
#[derive(Clone)]
struct Held {
    record: WorkloadRecord,
    unit: Option<String>,
    ip: Option<quorate_drivers::FloatingIp>,
}

impl Held {
    fn of(w: &Workload) -> Self {
        Self {
            record: w.record.clone(),
            unit: w.unit().map(str::to_owned),
            ip: w.floating_ip().cloned(),
        }
    }
}

/// The node-local side of failover.
pub struct Runtime {
    node: Arc<Node>,
    data_dir: PathBuf,
    deadline_ns: AtomicU64,
    /// Raft index this node must have applied before it starts work under its lease.
    lease_index: AtomicU64,
    workloads: Mutex<BTreeMap<String, Tracked>>,
    /// Workloads whose stop is not confirmed yet (see [`Stop`]).
    stopping: Mutex<BTreeMap<String, Held>>,
    /// Stops to try again (not confirmed last time, or adopted while stopping).
    retry_stops: Mutex<Vec<Stop>>,
    /// Services being started right now (service → unit), recorded in
    /// workloads.json before they are spawned.
    announced: Mutex<BTreeMap<String, Option<String>>>,
    fence: Mutex<Option<(tokio::process::Child, tokio::process::ChildStdin)>>,
    /// States not yet accepted by the leader.
    unreported: Mutex<BTreeMap<String, String>>,
    /// Services whose restart budget is spent (reported failed) while assigned here.
    given_up: Mutex<BTreeSet<String>>,
    /// Recent starts of each service, for the restart budget.
    starts: Mutex<BTreeMap<String, VecDeque<Instant>>>,
    /// Services stopped by `quorate restart`: their next start is not counted.
    planned_restarts: Mutex<BTreeSet<String>>,
    /// Watchdog device handed to the fence process.
    watchdog: Option<PathBuf>,
    /// Health-check state per running workload (updated by check tasks).
    probes: Arc<std::sync::Mutex<BTreeMap<String, crate::health::Probe>>>,
    /// systemd over D-Bus, for unit-backed services (connected on first use).
    units: UnitBus,
    /// Runs drbdadm, mount and friends for the storage steps.
    storage_runner: Arc<dyn quorate_drivers::Runner>,
    /// Storage health last queued for the leader, by report key.
    storage_reported: Mutex<BTreeMap<String, String>>,
}

pub(crate) use quorate_state::STORAGE_REPORT;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    pub(crate) fn new(node: Arc<Node>, data_dir: PathBuf, watchdog: Option<PathBuf>) -> Self {
        Self {
            node,
            data_dir,
            deadline_ns: AtomicU64::new(0),
            lease_index: AtomicU64::new(u64::MAX),
            workloads: Mutex::default(),
            stopping: Mutex::default(),
            retry_stops: Mutex::default(),
            announced: Mutex::default(),
            fence: Mutex::default(),
            unreported: Mutex::default(),
            given_up: Mutex::default(),
            starts: Mutex::default(),
            planned_restarts: Mutex::default(),
            watchdog,
            probes: Arc::default(),
            units: UnitBus::default(),
            storage_runner: Arc::new(quorate_drivers::SystemRunner),
            storage_reported: Mutex::default(),
        }
    }

    /// The service's floating address on this node: its `interface`, else the one that
    /// holds the node's cluster address.
    async fn floating_ip(
        &self,
        spec: &quorate_spec::ServiceSpec,
    ) -> Result<Option<quorate_drivers::FloatingIp>, quorate_drivers::FloatingIpError> {
        let Some(address) = spec.ip else {
            return Ok(None);
        };
        let interface = match &spec.interface {
            Some(interface) => interface.clone(),
            None => {
                let mine = self
                    .node
                    .local
                    .spec
                    .nodes
                    .get(&self.node.name)
                    .map(|n| n.address);
                match mine {
                    Some(addr) => quorate_drivers::FloatingIp::interface_holding(addr).await?,
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(quorate_drivers::FloatingIp { address, interface }))
    }

    /// Keeps every DRBD resource this node holds a replica of, or tie-breaks, up
    /// (secondary) so that it replicates and counts for DRBD's quorum, whether or not
    /// it runs the service. Never takes one down. Logs changes of outcome only.
    pub(crate) async fn keep_drbd_up(self: Arc<Self>) {
        let mut reported: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let me = self.node.name.clone();
            let resources: Vec<(String, Option<String>)> = self
                .storage_of_kind(quorate_spec::StorageKind::Drbd, |name, s, lock| {
                    let drbd = lock.storage.get(name)?.drbd.as_ref()?;
                    if s.nodes.contains(&me) {
                        Some((name.to_owned(), s.device.clone()))
                    } else if drbd.tie_breaker.as_deref() == Some(me.as_str()) {
                        Some((name.to_owned(), None))
                    } else {
                        None
                    }
                })
                .await;
            for (resource, _) in &resources {
                let health = self.drbd_health(resource).await;
                self.report_storage(resource, health).await;
            }
            for (resource, disk) in resources {
                let outcome = match quorate_drivers::drbd_up(
                    self.storage_runner.as_ref(),
                    &resource,
                    disk.as_deref(),
                )
                .await
                {
                    Ok(()) => "up".to_owned(),
                    Err(e) => e.to_string(),
                };
                if reported.get(&resource) != Some(&outcome) {
                    if outcome == "up" {
                        tracing::info!(storage = %resource, "DRBD resource is up on this node");
                    } else {
                        tracing::warn!(storage = %resource, "{outcome}");
                    }
                    reported.insert(resource, outcome);
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    /// Every storage of `kind` in the applied spec that `pick` (its name, spec and the
    /// applied lock) turns into something; nothing before a spec is applied.
    async fn storage_of_kind<T>(
        &self,
        kind: quorate_spec::StorageKind,
        pick: impl Fn(&str, &quorate_spec::StorageSpec, &quorate_lock::Lock) -> Option<T>,
    ) -> Vec<T> {
        self.node
            .consensus
            .with_state(|st| {
                let Some(applied) = st.applied.as_ref() else {
                    return Vec::new();
                };
                applied
                    .spec
                    .storage
                    .iter()
                    .filter(|(_, s)| s.kind == kind)
                    .filter_map(|(name, s)| pick(name, s, &applied.lock))
                    .collect()
            })
            .await
    }

    /// `drbdsetup status RES --statistics`, on one line (role, disk, peers, out-of-sync).
    async fn drbd_health(&self, resource: &str) -> String {
        match self
            .storage_runner
            .run(
                "drbdsetup",
                &["status", resource, "--statistics"],
                Duration::from_secs(10),
            )
            .await
        {
            Ok(out) if out.success() => out.stdout.split_whitespace().collect::<Vec<_>>().join(" "),
            Ok(out) => format!("not up: {}", out.stderr.trim()),
            Err(e) => format!("cannot ask drbdsetup: {e}"),
        }
    }

    /// Queues a storage health report (sent with the service reports) when it changed.
    async fn report_storage(&self, resource: &str, mut health: String) {
        // The cluster keeps at most this much of it.
        if health.len() > quorate_state::MAX_STORAGE_HEALTH {
            let mut end = quorate_state::MAX_STORAGE_HEALTH - 3;
            while !health.is_char_boundary(end) {
                end -= 1;
            }
            health.truncate(end);
            health.push_str("...");
        }
        let key = format!("{STORAGE_REPORT}{resource}/{}", self.node.name);
        let mut last = self.storage_reported.lock().await;
        if last.get(&key) != Some(&health) {
            last.insert(key.clone(), health.clone());
            self.unreported.lock().await.insert(key, health);
        }
    }

    /// Reports what this node sees of every RBD image every 10 s: mapped here or not,
    /// and while mapped, who holds its exclusive lock (Ceph's own view of the writer).
    pub(crate) async fn watch_ceph(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let images: Vec<quorate_drivers::RbdImage> = self
                .storage_of_kind(quorate_spec::StorageKind::CephRbd, |name, s, _| {
                    rbd_image(name, s, &self.data_dir)
                })
                .await;
            for image in images {
                let health = image.health(self.storage_runner.as_ref()).await;
                self.report_storage(&image.resource, health).await;
            }
        }
    }

    /// Reports what this node sees of its GlusterFS bricks every 10 s: whether its own
    /// brick is online and how many entries wait for heal.
    pub(crate) async fn watch_gluster(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let me = self.node.name.clone();
            let (volumes, address) = self
                .node
                .consensus
                .with_state(|st| {
                    let Some(applied) = st.applied.as_ref() else {
                        return (Vec::new(), String::new());
                    };
                    let spec = &applied.spec;
                    let volumes: Vec<(String, String)> = spec
                        .storage
                        .iter()
                        .filter(|(_, s)| {
                            s.kind == quorate_spec::StorageKind::Gluster && s.nodes.contains(&me)
                        })
                        .map(|(n, s)| (n.clone(), s.volume.clone().unwrap_or_else(|| n.clone())))
                        .collect();
                    let address = quorate_lock::cluster_address(spec, &applied.lock, &me)
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    (volumes, address)
                })
                .await;
            for (resource, volume) in volumes {
                let status = self
                    .storage_runner
                    .run(
                        "gluster",
                        &["--mode=script", "volume", "status", &volume, "detail"],
                        Duration::from_secs(20),
                    )
                    .await;
                let online = status.ok().filter(CommandOutput::success).map(|out| {
                    // Blocks of "Brick : Brick ADDR:/path" … "Online : Y".
                    let mut mine = false;
                    let mut online = None;
                    for line in out.stdout.lines() {
                        let line = line.trim();
                        if line.starts_with("Brick ") && line.contains(':') {
                            mine = line.contains(&format!("{address}:"));
                        } else if mine && line.starts_with("Online") {
                            online = Some(line.ends_with('Y'));
                            mine = false;
                        }
                    }
                    online
                });
                let volume_spec = quorate_drivers::GlusterVolume {
                    resource: resource.clone(),
                    volume: volume.clone(),
                    bricks: Vec::new(),
                    arbiter: false,
                };
                let heal = volume_spec.heal_pending(self.storage_runner.as_ref()).await;
                let health = match (online.flatten(), heal) {
                    (Some(up), Ok(pending)) => format!(
                        "brick {}, {pending} entries waiting for heal",
                        if up { "online" } else { "OFFLINE" }
                    ),
                    (Some(up), Err(_)) => {
                        format!("brick {}", if up { "online" } else { "OFFLINE" })
                    }
                    (None, _) => "volume not started (or glusterd not answering)".to_owned(),
                };
                self.report_storage(&resource, health).await;
            }
        }
    }

    /// True when the applied state assigns `service` to this node now.
    async fn still_assigned(&self, service: &str) -> bool {
        let me = self.node.name.as_str();
        self.node
            .consensus
            .with_state(|st| st.placements.get(service).and_then(|a| a.node.as_deref()) == Some(me))
            .await
    }

    /// True while this node's lease is valid.
    pub fn lease_valid(&self) -> bool {
        mono_ns() < self.deadline_ns.load(Ordering::SeqCst)
    }

    /// Takes over from a previous agent process: its fence is stopped, and its
    /// workloads are adopted while their lease is still valid, or killed.
    pub(crate) async fn adopt_previous(&self) {
        // The previous fence keeps holding the deadline until this agent's own fence
        // holds it (with the adopted workloads): only then is it stopped.
        let previous_fence = std::fs::read_to_string(self.data_dir.join("fence.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 1 && quorate_drivers::pid_alive(*pid));
        let lease: LeaseFile = std::fs::read(self.data_dir.join("lease.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let records: Vec<WorkloadRecord> = std::fs::read(self.data_dir.join("workloads.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let same_boot = lease.boot_id == boot_id();
        let valid = same_boot && mono_ns() < lease.deadline_ns;
        let mut table = self.workloads.lock().await;
        for mut record in records {
            if record.starting {
                if record.unit.is_none() {
                    // Recorded but never listed: the previous agent died while starting
                    // it. Whatever of it runs is ended (found by its environment, not by
                    // a pid, so this holds across reboots too); the reconciler starts it
                    // again if it is still assigned here.
                    let killed =
                        quorate_fence::kill_service_processes(&self.node.name, &record.service);
                    if killed > 0 {
                        tracing::warn!(service = %record.service, killed, "ended a workload the previous agent started but never recorded");
                        quorate_fence::witness("fence", &self.node.name, &record.service, 0);
                    }
                    continue;
                }
                record.starting = false;
            }
            // Pids from an earlier boot (or with no lease on record) name other
            // processes now: never signal them. Units are still asked about: systemd
            // knows them across boots.
            if !same_boot && record.unit.is_none() {
                tracing::info!(service = %record.service, "forgetting a process record from an earlier boot");
                continue;
            }
            let spec = self.node.local.spec.services.get(&record.service);
            let floating = match spec {
                Some(spec) => self.floating_ip(spec).await.ok().flatten(),
                None => None,
            };
            let steps = self
                .node
                .consensus
                .with_state(|st| {
                    st.applied.as_ref().map(|a| {
                        storage_steps(
                            &a.spec,
                            &a.lock,
                            &record.service,
                            &self.node.name,
                            &self.data_dir,
                        )
                    })
                })
                .await
                .unwrap_or_default();
            let Some(mut workload) = Workload::adopt(
                record.clone(),
                spec,
                &self.units,
                floating,
                steps,
                self.storage_runner.clone(),
            )
            .await
            else {
                tracing::info!(service = %record.service, pid = record.pid, unit = ?record.unit, "a workload the previous agent recorded no longer runs: nothing to adopt");
                continue;
            };
            if valid && record.stopping {
                tracing::info!(service = %record.service, pid = record.pid, "adopted a workload whose stop was not confirmed: finishing it");
                self.stopping
                    .lock()
                    .await
                    .insert(record.service.clone(), Held::of(&workload));
                self.retry_stops.lock().await.push(Stop {
                    service: record.service.clone(),
                    tracked: Tracked {
                        workload,
                        state: "stopping",
                        generation: ADOPTED,
                    },
                });
            } else if valid {
                tracing::info!(service = %record.service, pid = record.pid, "adopted a workload that still runs under a valid lease");
                table.insert(
                    record.service.clone(),
                    Tracked {
                        workload,
                        state: "running",
                        generation: ADOPTED,
                    },
                );
            } else {
                tracing::warn!(service = %record.service, pid = record.pid, "killing a workload whose lease expired while the agent was down");
                workload.kill().await;
                quorate_fence::witness("fence", &self.node.name, &record.service, record.pid);
            }
        }
        if valid {
            self.deadline_ns.store(lease.deadline_ns, Ordering::SeqCst);
        }
        // A floating address this node holds for a service it does not run under a
        // valid lease is stale (left by a crash or power loss): it goes.
        for (name, spec) in &self.node.local.spec.services {
            if table.contains_key(name) {
                continue;
            }
            if let Ok(Some(ip)) = self.floating_ip(spec).await {
                if ip.present().await.unwrap_or(false) {
                    tracing::warn!(service = %name, address = %ip.address, "removing a stale floating address");
                    if let Err(e) = ip.remove().await {
                        tracing::error!("cannot remove {}: {e}", ip.address);
                    }
                }
            }
        }
        drop(table);
        self.persist_workloads().await;
        // This agent's fence now holds the deadline and the adopted workloads.
        self.ensure_fence().await;
        if let Some(pid) = previous_fence {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Starts the fence process (or restarts it if it died).
    async fn ensure_fence(&self) {
        let mut fence = self.fence.lock().await;
        if let Some((child, _)) = fence.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return;
            }
        }
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("quorate"));
        let mut command = tokio::process::Command::new(exe);
        command.args(["fence", "--node", &self.node.name]);
        quorate_drivers::without_service_manager_env(&mut command);
        if let Some(dog) = &self.watchdog {
            command.arg("--watchdog").arg(dog);
        }
        let spawned = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(false)
            .spawn();
        match spawned {
            Ok(mut child) => {
                let stdin = child.stdin.take();
                if let (Some(pid), Some(stdin)) = (child.id(), stdin) {
                    let _ = quorate_files::write_atomic(
                        &self.data_dir.join("fence.pid"),
                        pid.to_string().as_bytes(),
                    );
                    *fence = Some((child, stdin));
                }
            }
            Err(e) => tracing::error!("cannot start the fence process: {e}"),
        }
        drop(fence);
        self.tell_fence(&format!(
            "lease {}\n",
            self.deadline_ns.load(Ordering::SeqCst)
        ))
        .await;
        self.update_fence_groups().await;
    }

    /// Writes to the fence's pipe. A fence that does not read (stopped) must not stall
    /// the agent: after a second the write is abandoned and a new fence is started on
    /// the next tick (the stalled one still holds its last deadline).
    async fn tell_fence(&self, line: &str) {
        let mut fence = self.fence.lock().await;
        if let Some((_, stdin)) = fence.as_mut() {
            let written =
                tokio::time::timeout(Duration::from_secs(1), stdin.write_all(line.as_bytes()))
                    .await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::error!("the fence process does not read its pipe: starting another");
                *fence = None;
            }
        }
    }

    /// Everything the fence must hold: running workloads and those still stopping.
    async fn held(&self) -> Vec<(String, Held)> {
        let table = self.workloads.lock().await;
        self.held_with(&table).await
    }

    /// [`held`](Self::held) with the table already locked by the caller.
    async fn held_with(&self, table: &BTreeMap<String, Tracked>) -> Vec<(String, Held)> {
        let mut held: Vec<(String, Held)> = table
            .iter()
            .map(|(s, t)| (s.clone(), Held::of(&t.workload)))
            .collect();
        held.extend(
            self.stopping
                .lock()
                .await
                .iter()
                .map(|(s, h)| (s.clone(), h.clone())),
        );
        held
    }

    async fn update_fence_groups(&self) {
        let held = self.held().await;
        let exclusive = |s: &str| {
            self.node
                .local
                .spec
                .services
                .get(s)
                .is_none_or(|x| x.exclusive)
        };
        let mut groups = Vec::new();
        let mut cgroups = Vec::new();
        let mut unit_cgroups = Vec::new();
        let mut units = Vec::new();
        let mut ips = Vec::new();
        for (s, h) in &held {
            if let Some(ip) = &h.ip {
                ips.push(format!("{s}={},{}", ip.interface, ip.address));
            }
            if !exclusive(s) {
                continue;
            }
            match &h.unit {
                Some(unit) => {
                    units.push(format!("{s}={unit}/{}", h.record.pid));
                    // Its cgroup too: the fence kills it at once, without a D-Bus
                    // round trip, and tells systemd afterwards.
                    if let Some(dir) = &h.record.cgroup {
                        unit_cgroups.push(format!("{s}={}", dir.display()));
                    }
                }
                None => {
                    groups.push(format!("{s}={}", h.record.pgid));
                    if let Some(dir) = &h.record.cgroup {
                        cgroups.push(format!("{s}={}", dir.display()));
                    }
                }
            }
        }
        let line = format!(
            "groups {}\ncgroups {}\nunitcgroups {}\nunits {}\nips {}\n",
            groups.join(" "),
            cgroups.join(" "),
            unit_cgroups.join(" "),
            units.join(" "),
            ips.join(" ")
        );
        self.tell_fence(&line).await;
    }

    async fn persist_workloads(&self) {
        let table = self.workloads.lock().await;
        self.persist_workloads_with(&table).await;
    }

    /// [`persist_workloads`](Self::persist_workloads) with the table already locked by
    /// the caller (the reconciler, recording a workload before it is spawned).
    async fn persist_workloads_with(&self, table: &BTreeMap<String, Tracked>) {
        let mut records: Vec<WorkloadRecord> = self
            .held_with(table)
            .await
            .into_iter()
            .map(|(_, h)| h.record)
            .collect();
        for (service, unit) in self.announced.lock().await.iter() {
            if !records.iter().any(|r| r.service == *service) {
                records.push(WorkloadRecord {
                    service: service.clone(),
                    pid: 0,
                    pgid: 0,
                    unit: unit.clone(),
                    cgroup: None,
                    stopping: false,
                    starting: true,
                });
            }
        }
        if let Err(e) = quorate_files::write_atomic(
            &self.data_dir.join("workloads.json"),
            &serde_json::to_vec(&records).unwrap_or_default(),
        ) {
            tracing::error!("cannot record the workloads in workloads.json: {e}");
        }
    }

    /// Renews the lease through the leader every TTL/3, forever; after a failed attempt
    /// (no leader yet, leader unreachable) it tries again after 100 ms, so a change of
    /// leader does not cost this node its lease.
    pub(crate) async fn keep_lease(self: Arc<Self>) {
        let mut period = Duration::from_millis(100);
        loop {
            let sent = mono_ns();
            let asked = std::time::Instant::now();
            let renewed = self.node.renew_lease().await;
            self.node
                .metrics
                .renewal(renewed.is_some(), asked.elapsed());
            if let Some(grant) = renewed {
                // The TTL is the leader's, from the applied spec: this node's fence
                // deadline never lies after the leader's expiry of this lease.
                period = grant.ttl / 3;
                self.lease_index.store(grant.applied, Ordering::SeqCst);
                let ttl_ns = u64::try_from(grant.ttl.as_nanos()).unwrap_or(u64::MAX);
                let deadline = sent.saturating_add(ttl_ns);
                self.deadline_ns.fetch_max(deadline, Ordering::SeqCst);
                let file = LeaseFile {
                    deadline_ns: deadline,
                    boot_id: boot_id(),
                };
                let _ = quorate_files::write_atomic(
                    &self.data_dir.join("lease.json"),
                    &serde_json::to_vec(&file).unwrap_or_default(),
                );
                self.tell_fence(&format!("lease {deadline}\n")).await;
                tracing::trace!(index = grant.applied, "lease renewed");
            } else {
                tracing::trace!("lease renewal failed");
            }
            tokio::time::sleep(if renewed.is_some() {
                period
            } else {
                Duration::from_millis(100)
            })
            .await;
        }
    }

    /// The reconciler: every 50 ms, make what runs here match what is assigned here.
    pub(crate) async fn reconcile_forever(self: Arc<Self>) {
        loop {
            let seen = self.node.consensus.status().applied;
            self.ensure_fence().await;
            self.reconcile().await;
            self.report().await;
            // The next round after 50 ms, or as soon as something new is applied (a
            // placement for this node, a stop order): no tick to wait for in a failover.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = async {
                    // At least 5 ms apart, however fast entries are applied.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    self.node.consensus.applied_beyond(seen).await;
                } => {}
            }
        }
    }

    async fn reconcile(&self) {
        let me = self.node.name.clone();
        let View {
            assigned,
            claimed,
            unconfirmed_stops,
            storage,
            specs,
            running: running_somewhere,
            after,
            generations,
        } = self
            .node
            .consensus
            .with_state(|st| {
                let assigned: BTreeSet<String> = st
                    .placements
                    .iter()
                    .filter(|(_, a)| a.node.as_deref() == Some(me.as_str()))
                    .map(|(s, _)| s.clone())
                    .collect();
                let specs = st
                    .applied
                    .as_ref()
                    .map(|a| {
                        a.spec
                            .services
                            .iter()
                            .filter(|(s, _)| assigned.contains(*s))
                            .map(|(s, v)| (s.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                // Services running somewhere, for `after`; and every service's `after`.
                let running = st
                    .observed
                    .iter()
                    .filter(|(_, o)| o.state == "running")
                    .map(|(s, _)| s.clone())
                    .collect();
                let after = st
                    .applied
                    .as_ref()
                    .map(|a| {
                        a.spec
                            .services
                            .iter()
                            .map(|(s, v)| (s.clone(), v.after.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let claimed = st
                    .observed
                    .iter()
                    .filter(|(_, o)| o.node == me && o.may_run())
                    .map(|(s, _)| s.clone())
                    .collect();
                let storage = st
                    .applied
                    .as_ref()
                    .map(|a| {
                        assigned
                            .iter()
                            .map(|s| {
                                (
                                    s.clone(),
                                    storage_steps(&a.spec, &a.lock, s, &me, &self.data_dir),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let unconfirmed_stops = st
                    .placements
                    .iter()
                    .filter_map(|(s, a)| {
                        let (holder, epoch) = a.stopping.as_ref()?;
                        if a.node.is_some() || *holder != me {
                            return None;
                        }
                        let last = st.observed.get(s).filter(|o| o.node == me);
                        if last.is_some_and(|o| !o.may_run() && o.epoch >= *epoch) {
                            return None;
                        }
                        let state = last
                            .filter(|o| !o.may_run())
                            .map_or_else(|| "stopped".to_owned(), |o| o.state.clone());
                        Some((s.clone(), state))
                    })
                    .collect();
                View {
                    assigned,
                    claimed,
                    unconfirmed_stops,
                    storage,
                    specs,
                    running,
                    after,
                    generations: st.generations.clone(),
                }
            })
            .await;
        // Starting needs a valid lease *and* a view at least as new as the lease grant.
        let caught_up = self.node.consensus.status().applied.unwrap_or(0)
            >= self.lease_index.load(Ordering::SeqCst);
        let lease_ok = self.lease_valid();
        let keep_without_lease = quorate_fence::disabled();
        let mut changes: BTreeMap<String, String> = BTreeMap::new();
        // Stops not confirmed last time are tried again first (each is still in
        // `stopping`, where every stop is entered before it begins).
        let mut to_stop: Vec<Stop> = std::mem::take(&mut *self.retry_stops.lock().await);
        let mut table = self.workloads.lock().await;
        let mut changed_groups = false;
        // What the decision needs of the workloads: how each ended (asked of the
        // drivers), its generation (an adopted one takes the current), health checks.
        let mut running: BTreeMap<String, decide::Running> = BTreeMap::new();
        for (name, t) in table.iter_mut() {
            if t.generation == ADOPTED {
                t.generation = generations.get(name).copied().unwrap_or(0);
            }
            let exited = t.workload.exited().await.map(|e| e == Exit::Success);
            running.insert(
                name.clone(),
                decide::Running {
                    exited,
                    generation: t.generation,
                },
            );
        }
        let (unhealthy, ready) = self.run_health_checks(&table, &specs);
        let situation = decide::Situation {
            assigned: assigned.clone(),
            claimed,
            unconfirmed_stops,
            running_somewhere: running_somewhere.clone(),
            after: specs
                .iter()
                .map(|(s, spec)| (s.clone(), spec.after.clone()))
                .collect(),
            generations: generations.clone(),
            lease_ok,
            caught_up,
            keep_without_lease,
            running,
            stopping: self.stopping.lock().await.keys().cloned().collect(),
            unhealthy: unhealthy.into_iter().collect(),
            ready: ready.into_iter().collect(),
            given_up: self.given_up.lock().await.clone(),
        };
        for action in decide::decide(&situation) {
            match action {
                decide::Action::Stop { service, reason } => {
                    let Some(tracked) = table.remove(&service) else {
                        continue;
                    };
                    let exited = situation.running.get(&service).and_then(|r| r.exited);
                    match reason {
                        decide::StopReason::Restart => {
                            self.planned_restarts.lock().await.insert(service.clone());
                        }
                        decide::StopReason::Unhealthy => {
                            tracing::warn!(service = %service, "health check failed: restarting it");
                        }
                        decide::StopReason::Exited | decide::StopReason::Unassigned => {}
                    }
                    let report = decide::report_on_stop(
                        reason,
                        situation.assigned.contains(&service),
                        exited,
                    );
                    changes.insert(service.clone(), report.into());
                    // What it forked is stopped too, and only then does it leave the
                    // fence's lists (see `Stop`).
                    to_stop.push(Stop { service, tracked });
                    changed_groups = true;
                }
                decide::Action::MarkRunning(service) => {
                    if let Some(t) = table.get_mut(&service) {
                        t.state = "running";
                        changes.insert(service, "running".into());
                    }
                }
                decide::Action::Start(name) => {
                    let Some(spec) = specs.get(&name) else {
                        continue;
                    };
                    if let Some(state) = self
                        .start(&name, spec, &storage, &generations, &mut table)
                        .await
                    {
                        if state != "failed" {
                            changed_groups = true;
                        }
                        changes.insert(name, state.into());
                    }
                }
                decide::Action::Report { service, state } => {
                    changes.entry(service).or_insert(state);
                }
            }
        }
        if lease_ok && caught_up {
            // A service that leaves this node gets a fresh budget if it comes back.
            self.given_up.lock().await.retain(|s| assigned.contains(s));
            self.starts.lock().await.retain(|s, _| assigned.contains(s));
        }
        drop(table);
        // What is being stopped stays fenced and recorded until its stop is confirmed.
        if !to_stop.is_empty() {
            let mut stopping = self.stopping.lock().await;
            for st in &to_stop {
                let mut held = Held::of(&st.tracked.workload);
                held.record.stopping = true;
                stopping.insert(st.service.clone(), held);
            }
            changed_groups = true;
        }
        if changed_groups {
            self.update_fence_groups().await;
            self.persist_workloads().await;
        }
        // Dependents stop before what they depend on (the reverse of the start order).
        to_stop.sort_by_key(|st| stop_rank(&st.service, &after));
        let mut confirmed_any = false;
        for mut st in to_stop {
            st.tracked.state = "stopping";
            let name = st.service.clone();
            if st.tracked.workload.stop().await {
                self.stopping.lock().await.remove(&name);
                confirmed_any = true;
                // Recorded whether or not the workload wrote its own `stop` (one killed
                // after its stop timeout cannot): nothing of it runs any more.
                quorate_fence::witness("exit", &me, &name, st.tracked.workload.record.pid);
                tracing::info!(service = %name, "stopped (confirmed)");
                // A failure (health check, restart budget) stays the reported state.
                if !matches!(
                    changes.get(&name).map(String::as_str),
                    Some("failed" | "restarting")
                ) {
                    changes.insert(name, "stopped".into());
                }
            } else {
                tracing::warn!(service = %name, "the stop is not confirmed: it stays fenced and is tried again");
                changes.insert(name, "stopping".into());
                self.retry_stops.lock().await.push(st);
            }
        }
        if confirmed_any {
            self.update_fence_groups().await;
            self.persist_workloads().await;
        }
        if !changes.is_empty() {
            self.unreported.lock().await.extend(changes);
        }
    }

    /// Carries out a decided start: a last check of the lease and the assignment, the
    /// restart budget (max_restarts within the window, after the first start; a restart
    /// the operator asked for is not counted), the record and the fence's notice before
    /// the spawn, then the drivers. Returns the state to report (`None`: not started,
    /// nothing to report).
    async fn start(
        &self,
        name: &str,
        spec: &quorate_spec::ServiceSpec,
        storage: &BTreeMap<String, Vec<quorate_drivers::StorageStep>>,
        generations: &BTreeMap<String, u64>,
        table: &mut BTreeMap<String, Tracked>,
    ) -> Option<&'static str> {
        let me = self.node.name.clone();
        // The view and the lease were read at the start of the tick, and starts before
        // this one may have taken long (storage, units): right before this start, the
        // lease must still be valid and the service still assigned here.
        if !self.lease_valid() || !self.still_assigned(name).await {
            tracing::info!(service = %name, "not starting: the lease or the assignment changed during this tick");
            return None;
        }
        {
            let planned = self.planned_restarts.lock().await.remove(name);
            let mut starts = self.starts.lock().await;
            let log = starts.entry(name.to_owned()).or_default();
            log.retain(|t| t.elapsed() < spec.restart.window.get());
            if !planned {
                if log.len() > spec.restart.max_restarts as usize {
                    tracing::warn!(service = %name, "restarted {} times within {}: giving up on this node", spec.restart.max_restarts, spec.restart.window);
                    self.given_up.lock().await.insert(name.to_owned());
                    return Some("failed");
                }
                if !log.is_empty() {
                    self.node.metrics.restart(name);
                }
                log.push_back(Instant::now());
            }
        }
        let env: BTreeMap<String, String> = [
            ("QUORATE_NODE".to_string(), me.clone()),
            ("QUORATE_SERVICE".to_string(), name.to_owned()),
            (
                "QUORATE_NODE_ADDRESS".to_string(),
                self.node
                    .local
                    .spec
                    .nodes
                    .get(&me)
                    .map(|n| n.address.to_string())
                    .unwrap_or_default(),
            ),
        ]
        .into();
        let steps = storage.get(name).cloned().unwrap_or_default();
        // Record it and tell the fence first: should this agent die between the start
        // and the next records, the fence (and a restarted agent) still end what it
        // started.
        self.announced
            .lock()
            .await
            .insert(name.to_owned(), spec.unit_name());
        // The table is locked by the caller (the reconciler).
        self.persist_workloads_with(table).await;
        self.tell_fence(&format!(
            "starting {name}={}\n",
            spec.unit_name().unwrap_or_default()
        ))
        .await;
        let started = match self.floating_ip(spec).await {
            Ok(floating) => {
                Workload::start(
                    name,
                    spec,
                    &env,
                    &self.units,
                    floating,
                    steps,
                    self.storage_runner.clone(),
                )
                .await
            }
            Err(e) => Err(e.into()),
        };
        self.announced.lock().await.remove(name);
        match started {
            Ok(workload) => {
                tracing::info!(service = %name, pid = workload.record.pid, "started");
                // With a health check it is "starting" until a check passes.
                let state = if spec
                    .health
                    .as_ref()
                    .is_some_and(|h| h.kind != quorate_spec::HealthKind::Alive)
                {
                    "starting"
                } else {
                    "running"
                };
                table.insert(
                    name.to_owned(),
                    Tracked {
                        workload,
                        state,
                        generation: generations.get(name).copied().unwrap_or(0),
                    },
                );
                Some(state)
            }
            Err(e) => {
                tracing::warn!(service = %name, "cannot start: {e}");
                self.given_up.lock().await.insert(name.to_owned());
                Some("failed")
            }
        }
    }

    /// Starts due checks (as tasks) and returns the workloads that failed theirs.
    fn run_health_checks(
        &self,
        table: &BTreeMap<String, Tracked>,
        specs: &BTreeMap<String, quorate_spec::ServiceSpec>,
    ) -> (Vec<String>, Vec<String>) {
        use quorate_spec::HealthKind;
        let address = self
            .node
            .local
            .spec
            .nodes
            .get(&self.node.name)
            .map(|n| n.address.to_string())
            .unwrap_or_default();
        let Ok(mut probes) = self.probes.lock() else {
            return (Vec::new(), Vec::new());
        };
        probes.retain(|name, _| table.contains_key(name));
        let mut unhealthy = Vec::new();
        let mut ready = Vec::new();
        for (name, t) in table {
            let Some(health) = specs
                .get(name)
                .and_then(|s| s.health.clone())
                .filter(|h| h.kind != HealthKind::Alive)
            else {
                continue;
            };
            let pid = t.workload.record.pid;
            let probe = probes
                .entry(name.clone())
                .or_insert_with(|| crate::health::Probe {
                    pid,
                    in_flight: false,
                    last: tokio::time::Instant::now(),
                    failures: 0,
                    passed: false,
                });
            if probe.pid != pid {
                *probe = crate::health::Probe {
                    pid,
                    in_flight: false,
                    last: tokio::time::Instant::now(),
                    failures: 0,
                    passed: false,
                };
            }
            if probe.failures >= health.failures {
                unhealthy.push(name.clone());
                continue;
            }
            if probe.passed && t.state == "starting" {
                ready.push(name.clone());
            }
            if probe.in_flight
                || probe.last.elapsed() < crate::health::next_check_after(&health, probe.passed)
            {
                continue;
            }
            probe.in_flight = true;
            probe.last = tokio::time::Instant::now();
            let (probes, name, address) = (self.probes.clone(), name.clone(), address.clone());
            tokio::spawn(async move {
                let ok = crate::health::check(&health, &address).await;
                if let Ok(mut probes) = probes.lock() {
                    if let Some(p) = probes.get_mut(&name).filter(|p| p.pid == pid) {
                        p.in_flight = false;
                        p.failures = if ok { 0 } else { p.failures + 1 };
                        p.passed |= ok;
                    }
                }
            });
        }
        for name in &unhealthy {
            probes.remove(name);
        }
        (unhealthy, ready)
    }

    /// Sends states the leader has not accepted yet.
    async fn report(&self) {
        let pending = self.unreported.lock().await.clone();
        if pending.is_empty() {
            return;
        }
        let reported = self.node.observe(pending.clone()).await;
        tracing::debug!(?pending, reported, "reported service states");
        if reported {
            let mut unreported = self.unreported.lock().await;
            for (k, v) in pending {
                if unreported.get(&k) == Some(&v) {
                    unreported.remove(&k);
                }
            }
        }
    }

    /// The states of the workloads this node runs, for status.
    pub async fn local_states(&self) -> BTreeMap<String, &'static str> {
        self.workloads
            .lock()
            .await
            .iter()
            .map(|(k, t)| (k.clone(), t.state))
            .collect()
    }
}

/// How deep `service` sits in the `after` graph: 0 for a service nothing depends on.
/// Services with a lower rank stop first.
fn stop_rank(service: &str, after: &BTreeMap<String, Vec<String>>) -> usize {
    // The graph is acyclic (the spec is checked), so the recursion ends; the bound
    // guards against a hand-made state that is not.
    fn depth(s: &str, after: &BTreeMap<String, Vec<String>>, budget: usize) -> usize {
        if budget == 0 {
            return 0;
        }
        after
            .iter()
            .filter(|(_, deps)| deps.iter().any(|d| d == s))
            .map(|(dependent, _)| 1 + depth(dependent, after, budget - 1))
            .max()
            .unwrap_or(0)
    }
    depth(service, after, after.len())
}

/// The storage steps of `service` on `node`, in the spec's order: DRBD resources with
/// their locked minor, GlusterFS volumes mounted from the node's own address, Ceph RBD
/// images (mapping state under `<data-dir>/ceph/<storage>`) and CephFS directories.
fn storage_steps(
    spec: &quorate_spec::Spec,
    lock: &quorate_lock::Lock,
    service: &str,
    node: &str,
    data_dir: &std::path::Path,
) -> Vec<quorate_drivers::StorageStep> {
    use quorate_drivers::StorageStep;
    use quorate_spec::StorageKind;
    let Some(svc) = spec.services.get(service) else {
        return Vec::new();
    };
    let address = quorate_lock::cluster_address(spec, lock, node)
        .map(|a| a.to_string())
        .unwrap_or_default();
    svc.storage
        .iter()
        .filter_map(|name| {
            let st = spec.storage.get(name)?;
            match st.kind {
                StorageKind::Drbd => Some(StorageStep::Drbd {
                    resource: name.clone(),
                    minor: lock.storage.get(name)?.drbd.as_ref()?.minor,
                    disk: st.device.clone()?,
                    fs: st.fs.clone().unwrap_or_else(|| "ext4".into()),
                    mount: st.mount.clone(),
                }),
                StorageKind::Gluster => Some(StorageStep::Gluster {
                    resource: name.clone(),
                    volume: st.volume.clone().unwrap_or_else(|| name.clone()),
                    server: address.clone(),
                    mount: st.mount.clone()?,
                }),
                StorageKind::CephRbd => rbd_image(name, st, data_dir).map(StorageStep::CephRbd),
                StorageKind::Cephfs => Some(StorageStep::Cephfs(quorate_drivers::CephfsMount {
                    resource: name.clone(),
                    path: st.path.clone().unwrap_or_else(|| "/".into()),
                    mount: st.mount.clone()?,
                    access: ceph_access(st),
                })),
            }
        })
        .collect()
}

/// The RBD image behind a `ceph-rbd` storage, as this node maps it (`None`: no
/// mount point).
fn rbd_image(
    name: &str,
    st: &quorate_spec::StorageSpec,
    data_dir: &std::path::Path,
) -> Option<quorate_drivers::RbdImage> {
    Some(quorate_drivers::RbdImage {
        resource: name.to_owned(),
        pool: st.ceph_pool().to_owned(),
        image: st.image.clone().unwrap_or_else(|| name.to_owned()),
        size: st.size.map(|s| s.0),
        fs: st.fs.clone().unwrap_or_else(|| "ext4".into()),
        mount: st.mount.clone()?,
        access: ceph_access(st),
        state_dir: data_dir
            .join("ceph")
            .join(name)
            .to_string_lossy()
            .into_owned(),
    })
}

/// How a Ceph storage reaches its cluster (the spec's paths and client, defaults
/// filled in).
pub(crate) fn ceph_access(st: &quorate_spec::StorageSpec) -> quorate_drivers::CephAccess {
    quorate_drivers::CephAccess {
        conf: st.ceph_config_path().to_owned(),
        keyring: st.ceph_keyring_path(),
        client: st.ceph_client_id().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::stop_rank;

    #[test]
    fn dependents_rank_below_what_they_depend_on() {
        let after = [
            ("web".to_string(), vec!["api".to_string()]),
            ("api".to_string(), vec!["db".to_string()]),
            ("db".to_string(), vec![]),
        ]
        .into();
        assert_eq!(stop_rank("web", &after), 0);
        assert_eq!(stop_rank("api", &after), 1);
        assert_eq!(stop_rank("db", &after), 2);
    }
}
