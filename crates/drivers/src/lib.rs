//! Drivers: how a node starts, watches and stops the workloads it is assigned.
//!
//! The process driver runs `command` in its own process group (so a stop or a fence
//! reaches every process it forked), with the spec's `env` and `cwd` plus
//! `QUORATE_NODE`, `QUORATE_SERVICE` and `QUORATE_NODE_ADDRESS`. Stopping sends the
//! stop signal to the group, waits `stop_timeout`, then SIGKILLs the group. The agent
//! reaps its own children (PID 1 on these machines reaps orphans slowly).
//!
//! The unit driver (kinds `systemd`, `nspawn` → `container@NAME.service`, `microvm` →
//! `microvm@NAME.service`) asks systemd over D-Bus to start and stop the unit and waits
//! for the job's result; the unit's `ActiveState` tells whether it still runs. How it
//! stops (signals, timeouts) is the unit's own configuration.
//!
//! **Architecture Invariant:** drivers know nothing of Raft, leases or placement; the
//! agent decides what runs, drivers only do it.

pub mod ceph;
pub mod floating_ip;
pub mod gluster;
pub mod runner;
pub mod storage;

use std::collections::BTreeMap;
use std::time::Duration;

pub use ceph::{blocklist, unblocklist, CephAccess, CephfsMount, RbdImage};
pub use floating_ip::{FloatingIp, FloatingIpError};
pub use gluster::GlusterVolume;
pub use runner::{CommandOutput, RecordedRunner, Runner, SystemRunner};
pub use storage::{drbd_up, StorageError, StorageStep};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use quorate_spec::{ServiceKind, ServiceSpec};
use quorate_systemd::{ActiveState, Systemd, SystemdError};
use serde::{Deserialize, Serialize};

/// How long a unit's start or stop job may take (systemd's own default timeouts are
/// 90 s; it enforces them and reports the job as failed).
pub const UNIT_JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The connection to systemd, made on first use: a node that runs only processes never
/// needs D-Bus. A failed connection is retried on the next use, and a connection that
/// fails a call (the bus restarted, systemd re-executed) is dropped and made anew —
/// a dead cached connection must never make a stop look done. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct UnitBus {
    systemd: std::sync::Arc<tokio::sync::Mutex<Option<Systemd>>>,
}

/// How long connecting to systemd may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long reading a unit's state may take.
const STATE_TIMEOUT: Duration = Duration::from_secs(10);

impl UnitBus {
    /// The connection.
    ///
    /// # Errors
    /// systemd cannot be reached over D-Bus.
    pub async fn get(&self) -> Result<Systemd, DriverError> {
        let mut slot = self.systemd.lock().await;
        if let Some(systemd) = slot.as_ref() {
            return Ok(systemd.clone());
        }
        let systemd = Systemd::connect_within(CONNECT_TIMEOUT).await?;
        *slot = Some(systemd.clone());
        Ok(systemd)
    }

    /// Forgets the connection after `error`, unless the error was about the unit
    /// itself (the connection is fine then).
    async fn forget_after(&self, error: &SystemdError) {
        if !error.is_about_the_unit() {
            *self.systemd.lock().await = None;
        }
    }

    /// `result` of a call, after forgetting the connection if it failed for that.
    async fn checked<T>(&self, result: Result<T, SystemdError>) -> Result<T, SystemdError> {
        if let Err(e) = &result {
            self.forget_after(e).await;
        }
        result
    }

    /// The unit's state; `Err` when it cannot be read (the connection is renewed).
    ///
    /// # Errors
    /// systemd cannot be reached, or does not know the unit.
    pub async fn state(&self, unit: &str) -> Result<quorate_systemd::UnitState, SystemdError> {
        let systemd = self.get().await.map_err(into_systemd_error)?;
        let state = match tokio::time::timeout(STATE_TIMEOUT, systemd.state(unit)).await {
            Ok(state) => state,
            Err(_) => Err(SystemdError::Unreachable {
                address: quorate_systemd::bus_address(),
                why: format!("no answer about {unit} within {STATE_TIMEOUT:?}"),
            }),
        };
        self.checked(state).await
    }

    /// Stops the unit, waiting for the job (see [`Systemd::stop`]).
    ///
    /// # Errors
    /// systemd cannot be reached, or the stop job failed.
    pub async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        let systemd = self.get().await.map_err(into_systemd_error)?;
        self.checked(systemd.stop(unit, UNIT_JOB_TIMEOUT).await)
            .await
    }

    /// SIGKILLs every process of the unit.
    ///
    /// # Errors
    /// systemd cannot be reached, or refused.
    pub async fn kill(&self, unit: &str) -> Result<(), SystemdError> {
        let systemd = self.get().await.map_err(into_systemd_error)?;
        self.checked(systemd.kill(unit, Signal::SIGKILL as i32).await)
            .await
    }
}

fn into_systemd_error(e: DriverError) -> SystemdError {
    match e {
        DriverError::Systemd(e) => *e,
        other => SystemdError::Unreachable {
            address: quorate_systemd::bus_address(),
            why: other.to_string(),
        },
    }
}

/// Where this process creates its workloads' cgroups (see
/// [`quorate_cgroup::agent_parent`]); unset: directly below its own cgroup.
static CGROUP_PARENT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Sets the directory under which process workloads get their cgroups (once, at the
/// agent's start).
pub fn set_cgroup_parent(dir: std::path::PathBuf) {
    let _ = CGROUP_PARENT.set(dir);
}

/// Environment variables that belong to the agent's own systemd unit (sd_notify socket,
/// watchdog) and must not leak into the processes it starts: a workload that speaks
/// sd_notify would otherwise talk to the agent's unit.
pub const SERVICE_MANAGER_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Removes [`SERVICE_MANAGER_ENV`] from a command's environment.
pub fn without_service_manager_env(
    command: &mut tokio::process::Command,
) -> &mut tokio::process::Command {
    for var in SERVICE_MANAGER_ENV {
        command.env_remove(var);
    }
    command
}

/// Why a workload could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No driver for this kind yet.
    #[error("no driver for kind `{0}` in this version")]
    Unsupported(String),
    /// The program could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The spec has no command.
    #[error("the service has no command")]
    NoCommand,
    /// systemd refused, failed or could not be reached.
    #[error(transparent)]
    Systemd(Box<SystemdError>),
    /// The floating address could not be added.
    #[error("floating address: {0}")]
    FloatingIp(#[from] FloatingIpError),
    /// A storage or mount step failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<SystemdError> for DriverError {
    fn from(e: SystemdError) -> Self {
        Self::Systemd(Box::new(e))
    }
}

/// What a node records about a running workload, so that a restarted agent can find it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    /// Service name.
    pub service: String,
    /// Process id of the leader of its group (a unit's main PID as systemd sees it,
    /// 0 when unknown).
    pub pid: i32,
    /// Process group id (equal to `pid`; 0 for units).
    pub pgid: i32,
    /// The systemd unit, for unit-backed workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The workload's own cgroup v2 directory (process workloads, where cgroup v2 is
    /// writable): a stop or a fence kills everything in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<std::path::PathBuf>,
    /// Its stop has begun and is not confirmed yet: a restarted agent finishes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
    /// Recorded before it was started (no pid yet): a restarted agent that finds
    /// this ends whatever of it runs (its processes carry QUORATE_NODE and
    /// QUORATE_SERVICE in their environment).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
}

/// One running workload.
#[derive(Debug)]
pub struct Workload {
    /// What is recorded about it.
    pub record: WorkloadRecord,
    backend: Backend,
    /// The floating address added before it started, removed after it stops.
    floating: Option<FloatingIp>,
    /// Storage attached before it started (in order), detached after it stops.
    storage: Vec<StorageStep>,
    runner: std::sync::Arc<dyn Runner>,
}

#[derive(Debug)]
enum Backend {
    Process {
        child: Option<tokio::process::Child>,
        stop_signal: Signal,
        stop_timeout: Duration,
    },
    Unit {
        bus: UnitBus,
        unit: String,
    },
}

/// How a workload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Exit code 0.
    Success,
    /// Non-zero exit or killed by a signal.
    Failure,
}

fn signal_of(name: Option<&str>) -> Signal {
    match name.map(|s| s.trim_start_matches("SIG")) {
        Some("INT") => Signal::SIGINT,
        Some("HUP") => Signal::SIGHUP,
        Some("QUIT") => Signal::SIGQUIT,
        Some("USR1") => Signal::SIGUSR1,
        Some("USR2") => Signal::SIGUSR2,
        Some("KILL") => Signal::SIGKILL,
        _ => Signal::SIGTERM,
    }
}

impl Workload {
    /// Starts `service` on this node: a process, or its systemd unit (waiting for the
    /// start job's result).
    ///
    /// # Errors
    /// No command, a program that cannot be started, an unknown unit, a failed start
    /// job, or systemd out of reach.
    pub async fn start(
        service: &str,
        spec: &ServiceSpec,
        env: &BTreeMap<String, String>,
        bus: &UnitBus,
        floating: Option<FloatingIp>,
        storage: Vec<StorageStep>,
        runner: std::sync::Arc<dyn Runner>,
    ) -> Result<Self, DriverError> {
        // Start order: storage → mount → ip → service; undone in reverse on failure.
        for (i, step) in storage.iter().enumerate() {
            if let Err(e) = step.attach(runner.as_ref()).await {
                for done in storage[..i].iter().rev() {
                    let _ = done.detach(runner.as_ref()).await;
                }
                return Err(e.into());
            }
        }
        if let Some(ip) = &floating {
            if let Err(e) = ip.add().await {
                for done in storage.iter().rev() {
                    let _ = done.detach(runner.as_ref()).await;
                }
                return Err(e.into());
            }
        }
        let started = if spec.kind == ServiceKind::Process {
            Self::start_process(service, spec, env)
        } else {
            Self::start_unit(service, spec, bus).await
        };
        match started {
            Ok(mut workload) => {
                workload.floating = floating;
                workload.storage = storage;
                workload.runner = runner;
                Ok(workload)
            }
            Err(e) => {
                if let Some(ip) = &floating {
                    let _ = ip.remove().await;
                }
                for done in storage.iter().rev() {
                    let _ = done.detach(runner.as_ref()).await;
                }
                Err(e)
            }
        }
    }

    async fn start_unit(
        service: &str,
        spec: &ServiceSpec,
        bus: &UnitBus,
    ) -> Result<Self, DriverError> {
        let unit = spec
            .unit_name()
            .ok_or_else(|| DriverError::Unsupported(format!("{:?}", spec.kind).to_lowercase()))?;
        let systemd = bus.get().await?;
        if let Err(e) = bus
            .checked(systemd.start(&unit, UNIT_JOB_TIMEOUT).await)
            .await
        {
            // A start that failed or timed out may have left it running or still
            // activating: it is stopped, not forgotten.
            if !matches!(e, SystemdError::UnknownUnit(_)) {
                let _ = bus.stop(&unit).await;
                let _ = bus.kill(&unit).await;
            }
            return Err(e.into());
        }
        let state = bus.state(&unit).await.ok();
        let pid = state
            .as_ref()
            .map_or(0, |s| i32::try_from(s.main_pid).unwrap_or(0));
        let cgroup = state.and_then(|s| unit_cgroup(&s.control_group, pid));
        Ok(Self {
            record: WorkloadRecord {
                service: service.to_string(),
                pid,
                pgid: 0,
                unit: Some(unit.clone()),
                cgroup,
                stopping: false,
                starting: false,
            },
            backend: Backend::Unit {
                bus: bus.clone(),
                unit,
            },
            floating: None,
            storage: Vec::new(),
            runner: std::sync::Arc::new(SystemRunner),
        })
    }

    fn start_process(
        service: &str,
        spec: &ServiceSpec,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, DriverError> {
        let (program, args) = spec.command.split_first().ok_or(DriverError::NoCommand)?;
        // Its own cgroup where one can be made: it enters it before it runs, so nothing
        // it forks (setsid or not) escapes a stop or the fence.
        let node = env.get("QUORATE_NODE").map_or("node", String::as_str);
        let created = match CGROUP_PARENT.get() {
            Some(parent) => quorate_cgroup::Cgroup::create_in(parent, node, service),
            None => quorate_cgroup::Cgroup::create(node, service),
        };
        let cgroup = match created {
            Ok(cg) => Some(cg),
            Err(e) => {
                tracing::warn!(service, "no cgroup for the workload ({e}): only its process group is stopped and fenced");
                None
            }
        };
        let mut argv: Vec<String> = cgroup
            .as_ref()
            .map(quorate_cgroup::Cgroup::exec_prefix)
            .unwrap_or_default();
        argv.push(program.clone());
        argv.extend(args.iter().cloned());
        let mut cmd = tokio::process::Command::new(&argv[0]);
        without_service_manager_env(&mut cmd)
            .args(&argv[1..])
            .envs(&spec.env)
            .envs(env)
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(source) => {
                if let Some(cg) = &cgroup {
                    cg.remove();
                }
                return Err(DriverError::Spawn {
                    program: program.clone(),
                    source,
                });
            }
        };
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        Ok(Self {
            record: WorkloadRecord {
                service: service.to_string(),
                pid,
                pgid: pid,
                unit: None,
                cgroup: cgroup.map(|c| c.dir().to_path_buf()),
                stopping: false,
                starting: false,
            },
            backend: Backend::Process {
                child: Some(child),
                stop_signal: signal_of(spec.stop_signal.as_deref()),
                stop_timeout: spec
                    .stop_timeout
                    .map_or(Duration::from_secs(10), quorate_spec::SpecDuration::get),
            },
            floating: None,
            storage: Vec::new(),
            runner: std::sync::Arc::new(SystemRunner),
        })
    }

    /// Takes over a workload started by a previous agent process, or `None` when it no
    /// longer runs. A unit whose state cannot be read (systemd out of reach) is taken
    /// over as running, so that it is stopped or fenced rather than forgotten.
    pub async fn adopt(
        record: WorkloadRecord,
        spec: Option<&ServiceSpec>,
        bus: &UnitBus,
        floating: Option<FloatingIp>,
        storage: Vec<StorageStep>,
        runner: std::sync::Arc<dyn Runner>,
    ) -> Option<Self> {
        if let Some(unit) = record.unit.clone() {
            // A unit whose state cannot be read (D-Bus down or slow) is kept: it is
            // stopped or fenced later, never forgotten.
            match bus.state(&unit).await {
                Ok(state) if !state.active.may_run() => return None,
                Err(SystemdError::UnknownUnit(_)) => return None,
                _ => {}
            }
            return Some(Self {
                record,
                backend: Backend::Unit {
                    bus: bus.clone(),
                    unit,
                },
                floating,
                storage,
                runner,
            });
        }
        let cgroup_busy = record
            .cgroup
            .as_deref()
            .and_then(quorate_cgroup::Cgroup::open)
            .is_some_and(|cg| !cg.is_empty());
        if !pid_alive(record.pid) && !cgroup_busy && !quorate_cgroup::group_alive(record.pgid) {
            if let Some(cg) = record
                .cgroup
                .as_deref()
                .and_then(quorate_cgroup::Cgroup::open)
            {
                cg.remove();
            }
            return None;
        }
        Some(Self {
            record,
            backend: Backend::Process {
                child: None,
                stop_signal: signal_of(spec.and_then(|s| s.stop_signal.as_deref())),
                stop_timeout: spec
                    .and_then(|s| s.stop_timeout)
                    .map_or(Duration::from_secs(10), quorate_spec::SpecDuration::get),
            },
            floating,
            storage,
            runner,
        })
    }

    /// The floating address that goes with it.
    #[must_use]
    pub fn floating_ip(&self) -> Option<&FloatingIp> {
        self.floating.as_ref()
    }

    async fn release_ip(&self) {
        if let Some(ip) = &self.floating {
            if let Err(e) = ip.remove().await {
                tracing::warn!("cannot remove the floating address {}: {e}", ip.address);
            }
        }
    }

    /// The systemd unit behind this workload, if it is one.
    #[must_use]
    pub fn unit(&self) -> Option<&str> {
        match &self.backend {
            Backend::Unit { unit, .. } => Some(unit),
            Backend::Process { .. } => None,
        }
    }

    /// Whether the workload has ended (reaping it when it is our child). A unit that
    /// is inactive has ended with success, a failed one with failure; while systemd
    /// cannot be asked, nothing is concluded.
    pub async fn exited(&mut self) -> Option<Exit> {
        match &mut self.backend {
            Backend::Process { child, .. } => match child {
                Some(child) => match child.try_wait() {
                    Ok(Some(status)) => Some(if status.success() {
                        Exit::Success
                    } else {
                        Exit::Failure
                    }),
                    Ok(None) => None,
                    Err(_) => Some(Exit::Failure),
                },
                None => (!pid_alive(self.record.pid)).then_some(Exit::Failure),
            },
            Backend::Unit { bus, unit } => match bus.state(unit).await {
                Ok(state) => match state.active {
                    ActiveState::Inactive => Some(Exit::Success),
                    ActiveState::Failed => Some(Exit::Failure),
                    _ => None,
                },
                Err(SystemdError::UnknownUnit(_)) => Some(Exit::Failure),
                Err(_) => None,
            },
        }
    }

    /// Stops the workload: a process group gets its stop signal, then SIGKILL (with
    /// its cgroup) after the stop timeout; a unit is stopped by systemd (SIGKILLed if
    /// the job fails). Returns whether the stop is *confirmed*: no process left in the
    /// group or the cgroup, the unit inactive. Only then are its floating address and
    /// storage released; an unconfirmed stop keeps them and is tried again.
    pub async fn stop(&mut self) -> bool {
        if !self.stop_service().await {
            return false;
        }
        self.release_ip().await;
        self.detach_storage().await;
        true
    }

    async fn detach_storage(&self) {
        for step in self.storage.iter().rev() {
            if let Err(e) = step.detach(self.runner.as_ref()).await {
                tracing::warn!("{e}");
            }
        }
    }

    fn cgroup(&self) -> Option<quorate_cgroup::Cgroup> {
        self.record
            .cgroup
            .as_deref()
            .and_then(quorate_cgroup::Cgroup::open)
    }

    /// True once nothing of a process workload is left: leader, group and cgroup.
    async fn process_gone(&mut self) -> bool {
        self.exited().await.is_some()
            && !quorate_cgroup::group_alive(self.record.pgid)
            && self.cgroup().is_none_or(|cg| cg.is_empty())
    }

    async fn stop_service(&mut self) -> bool {
        let (stop_signal, stop_timeout) = match &self.backend {
            Backend::Process {
                stop_signal,
                stop_timeout,
                ..
            } => (*stop_signal, *stop_timeout),
            Backend::Unit { bus, unit } => {
                if let Err(e) = bus.stop(unit).await {
                    tracing::warn!(unit = %unit, "stop failed ({e}): killing it");
                    if let Err(e) = bus.kill(unit).await {
                        tracing::warn!(unit = %unit, "cannot kill it: {e}");
                    }
                }
                return match bus.state(unit).await {
                    Ok(state) => !state.active.may_run(),
                    Err(SystemdError::UnknownUnit(_)) => true,
                    Err(e) => {
                        tracing::warn!(unit = %unit, "cannot confirm the stop: {e}");
                        false
                    }
                };
            }
        };
        let group = self.record.pgid;
        if group <= 1 {
            return true;
        }
        if self.exited().await.is_none() {
            signal_group(group, stop_signal);
            tracing::info!(
                service = %self.record.service,
                "stopping: stop signal sent ({stop_signal}), SIGKILL after {stop_timeout:?}"
            );
            let deadline = tokio::time::Instant::now() + stop_timeout;
            while tokio::time::Instant::now() < deadline && self.exited().await.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // The leader is gone or out of time: nothing else of it may stay.
        for _ in 0..250 {
            self.kill_service().await;
            if self.process_gone().await {
                if let Some(cg) = self.cgroup() {
                    cg.remove();
                }
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(service = %self.record.service, "processes of the workload survive SIGKILL: the stop is not confirmed");
        false
    }

    /// SIGKILLs every process of the workload now (group and cgroup, or the unit), and
    /// releases its floating address and storage.
    pub async fn kill(&mut self) {
        self.kill_service().await;
        self.release_ip().await;
        self.detach_storage().await;
    }

    async fn kill_service(&mut self) {
        match &self.backend {
            Backend::Process { .. } => {
                signal_group(self.record.pgid, Signal::SIGKILL);
                if let Some(cg) = self.cgroup() {
                    cg.kill();
                }
            }
            Backend::Unit { bus, unit } => {
                let _ = bus.kill(unit).await;
            }
        }
    }
}

/// The unit's cgroup directory as this process sees it, when it can be trusted: it
/// exists under our cgroup v2 mount and holds the unit's main pid (systemd and this
/// agent may see different cgroup or pid namespaces, e.g. in tests; then the fence
/// falls back to D-Bus alone for this unit).
fn unit_cgroup(control_group: &str, main_pid: i32) -> Option<std::path::PathBuf> {
    if control_group.is_empty() || main_pid <= 1 {
        return None;
    }
    let dir = quorate_cgroup::mount_point()?.join(control_group.trim_start_matches('/'));
    let cg = quorate_cgroup::Cgroup::open(&dir)?;
    cg.pids().contains(&main_pid).then_some(dir)
}

/// Sends `signal` to process group `pgid` — never to group 0 or 1, which would be the
/// caller's own group or every process (unit-backed workloads record pgid 0).
pub fn signal_group(pgid: i32, signal: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// True while `pid` exists and is not a zombie.
#[must_use]
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the ")" that closes the command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start without floating address or storage steps.
    async fn start_bare(
        service: &str,
        spec: &ServiceSpec,
        env: &BTreeMap<String, String>,
        bus: &UnitBus,
    ) -> Result<Workload, DriverError> {
        Workload::start(
            service,
            spec,
            env,
            bus,
            None,
            Vec::new(),
            std::sync::Arc::new(SystemRunner),
        )
        .await
    }

    fn spec(command: &[&str]) -> ServiceSpec {
        serde_json::from_value(
            serde_json::json!({"kind": "process", "command": command, "stop_timeout": "300ms"}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn stop_reaches_the_whole_group_and_escalates_to_sigkill() {
        // The shell ignores TERM and forks a child: only the group SIGKILL ends both.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!(
            "trap '' TERM; sleep 1000 & echo $! > {}; wait",
            pidfile.display()
        );
        let bus = UnitBus::default();
        let mut w = start_bare(
            "svc",
            &spec(&["/bin/sh", "-c", &script]),
            &BTreeMap::new(),
            &bus,
        )
        .await
        .unwrap();
        let mut child_pid = None;
        for _ in 0..100 {
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                if let Ok(p) = text.trim().parse::<i32>() {
                    child_pid = Some(p);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let child_pid = child_pid.expect("the forked child started");
        assert!(w.exited().await.is_none());
        w.stop().await;
        assert!(w.exited().await.is_some(), "the workload ended");
        for _ in 0..100 {
            if !pid_alive(child_pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !pid_alive(child_pid),
            "the forked child died with its group"
        );
    }

    #[tokio::test]
    async fn env_and_exit_status_are_reported() {
        let env = [("QUORATE_NODE".to_string(), "n1".to_string())].into();
        let bus = UnitBus::default();
        let mut ok = start_bare(
            "a",
            &spec(&["/bin/sh", "-c", "test \"$QUORATE_NODE\" = n1"]),
            &env,
            &bus,
        )
        .await
        .unwrap();
        let mut bad = start_bare("b", &spec(&["/bin/sh", "-c", "exit 3"]), &env, &bus)
            .await
            .unwrap();
        let mut results = (None, None);
        for _ in 0..200 {
            if results.0.is_none() {
                results.0 = ok.exited().await;
            }
            if results.1.is_none() {
                results.1 = bad.exited().await;
            }
            if results.0.is_some() && results.1.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(results, (Some(Exit::Success), Some(Exit::Failure)));
        // A confirmed stop removes their cgroups (the agent always stops what ended).
        assert!(ok.stop().await && bad.stop().await);
        for w in [&ok, &bad] {
            if let Some(dir) = &w.record.cgroup {
                assert!(!dir.exists(), "{} was left behind", dir.display());
            }
        }
    }

    #[tokio::test]
    async fn a_unit_without_systemd_is_a_clear_error() {
        let s: ServiceSpec =
            serde_json::from_value(serde_json::json!({"kind": "systemd", "unit": "x.service"}))
                .unwrap();
        std::env::set_var(
            "DBUS_SYSTEM_BUS_ADDRESS",
            "unix:path=/nonexistent/quorate-test-bus",
        );
        let err = start_bare("x", &s, &BTreeMap::new(), &UnitBus::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "cannot reach systemd over D-Bus at unix:path=/nonexistent/quorate-test-bus"
            ),
            "{err}"
        );
    }
}
