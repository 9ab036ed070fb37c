//! Drivers: how a node starts, watches and stops the workloads it is assigned.
//!
//! The process driver runs `command` in its own process group (so a stop or a fence
//! reaches every process it forked), with the spec's `env` and `cwd` plus
//! `QUORATE_NODE`, `QUORATE_SERVICE` and `QUORATE_NODE_ADDRESS`. Stopping sends the
//! stop signal to the group, waits `stop_timeout`, then SIGKILLs the group. The agent
//! reaps its own children (PID 1 on these machines reaps orphans slowly).
//!
//! **Architecture Invariant:** drivers know nothing of Raft, leases or placement; the
//! agent decides what runs, drivers only do it.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use quorate_spec::{ServiceKind, ServiceSpec};
use serde::{Deserialize, Serialize};

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
}

/// What a node records about a running workload, so that a restarted agent can find it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    /// Service name.
    pub service: String,
    /// Process id of the leader of its group.
    pub pid: i32,
    /// Process group id (equal to `pid`).
    pub pgid: i32,
}

/// One running workload.
#[derive(Debug)]
pub struct Workload {
    /// What is recorded about it.
    pub record: WorkloadRecord,
    child: Option<tokio::process::Child>,
    stop_signal: Signal,
    stop_timeout: Duration,
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
    /// Starts `service` on this node.
    ///
    /// # Errors
    /// Unsupported kind, no command, or a program that cannot be started.
    pub fn start(
        service: &str,
        spec: &ServiceSpec,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, DriverError> {
        if spec.kind != ServiceKind::Process {
            let kind = format!("{:?}", spec.kind).to_lowercase();
            return Err(DriverError::Unsupported(kind));
        }
        let (program, args) = spec.command.split_first().ok_or(DriverError::NoCommand)?;
        let mut cmd = tokio::process::Command::new(program);
        without_service_manager_env(&mut cmd)
            .args(args)
            .envs(&spec.env)
            .envs(env)
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd.spawn().map_err(|source| DriverError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        Ok(Self {
            record: WorkloadRecord {
                service: service.to_string(),
                pid,
                pgid: pid,
            },
            child: Some(child),
            stop_signal: signal_of(spec.stop_signal.as_deref()),
            stop_timeout: spec
                .stop_timeout
                .map_or(Duration::from_secs(10), quorate_spec::SpecDuration::get),
        })
    }

    /// Takes over a workload started by a previous agent process (not our child).
    #[must_use]
    pub fn adopt(record: WorkloadRecord, spec: Option<&ServiceSpec>) -> Self {
        Self {
            record,
            child: None,
            stop_signal: signal_of(spec.and_then(|s| s.stop_signal.as_deref())),
            stop_timeout: spec
                .and_then(|s| s.stop_timeout)
                .map_or(Duration::from_secs(10), quorate_spec::SpecDuration::get),
        }
    }

    /// Whether the process has ended (reaping it when it is our child).
    pub fn exited(&mut self) -> Option<Exit> {
        match &mut self.child {
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
        }
    }

    /// Sends the stop signal to the group, waits up to the stop timeout, then SIGKILLs it.
    pub async fn stop(&mut self) {
        let group = Pid::from_raw(self.record.pgid);
        if self.exited().is_some() {
            let _ = killpg(group, Signal::SIGKILL);
            return;
        }
        let _ = killpg(group, self.stop_signal);
        let deadline = tokio::time::Instant::now() + self.stop_timeout;
        while tokio::time::Instant::now() < deadline {
            if self.exited().is_some() {
                // The leader exited; make sure no forked process of the group survives.
                let _ = killpg(group, Signal::SIGKILL);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        for _ in 0..100 {
            if self.exited().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILLs the whole group now.
    pub fn kill(&mut self) {
        let _ = killpg(Pid::from_raw(self.record.pgid), Signal::SIGKILL);
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
        let mut w =
            Workload::start("svc", &spec(&["/bin/sh", "-c", &script]), &BTreeMap::new()).unwrap();
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
        assert!(w.exited().is_none());
        w.stop().await;
        assert!(w.exited().is_some(), "the workload ended");
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
        let mut ok = Workload::start(
            "a",
            &spec(&["/bin/sh", "-c", "test \"$QUORATE_NODE\" = n1"]),
            &env,
        )
        .unwrap();
        let mut bad = Workload::start("b", &spec(&["/bin/sh", "-c", "exit 3"]), &env).unwrap();
        let mut results = (None, None);
        for _ in 0..200 {
            results = (
                results.0.or_else(|| ok.exited()),
                results.1.or_else(|| bad.exited()),
            );
            if results.0.is_some() && results.1.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(results, (Some(Exit::Success), Some(Exit::Failure)));
    }

    #[test]
    fn other_kinds_are_refused_clearly() {
        let s: ServiceSpec =
            serde_json::from_value(serde_json::json!({"kind": "systemd", "unit": "x.service"}))
                .unwrap();
        let err = Workload::start("x", &s, &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("no driver for kind `systemd`"),
            "{err}"
        );
    }
}
