//! A small client of systemd's manager (`org.freedesktop.systemd1`) over D-Bus: start
//! and stop a unit and wait for the job's result, read a unit's state and main PID,
//! kill every process of a unit. The bus is the system bus, or
//! `DBUS_SYSTEM_BUS_ADDRESS` when set (tests point it at a systemd in a container).
//!
//! **Architecture Invariant:** this crate knows nothing about services, specs or
//! leases: it speaks to systemd and reports what systemd says.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;
use zbus::{proxy, Connection};

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait ServiceUnit {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn control_group(&self) -> zbus::Result<String>;
}

/// What went wrong talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// The bus cannot be reached.
    #[error("cannot reach systemd over D-Bus at {address}: {source}")]
    Connect {
        /// The bus address tried.
        address: String,
        /// Cause.
        #[source]
        source: zbus::Error,
    },
    /// systemd knows no such unit.
    #[error("unit `{0}` does not exist on this node: systemd has no unit file for it (define it on every node that may run the service)")]
    UnknownUnit(String),
    /// The start or stop job ended without success.
    #[error("systemd could not {verb} `{unit}`: the job ended with `{result}` (see `journalctl -u {unit}`)")]
    Job {
        /// `start` or `stop`.
        verb: &'static str,
        /// The unit.
        unit: String,
        /// systemd's job result (`failed`, `timeout`, `dependency`, `canceled`, …).
        result: String,
    },
    /// The job did not finish in time.
    #[error("systemd did not {verb} `{unit}` within {timeout:?}")]
    Timeout {
        /// `start` or `stop`.
        verb: &'static str,
        /// The unit.
        unit: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// Any other D-Bus failure.
    #[error("D-Bus call to systemd failed: {0}")]
    Call(#[from] zbus::Error),
    /// No connection could be made in time.
    #[error("cannot reach systemd over D-Bus at {address}: {why}")]
    Unreachable {
        /// The bus address tried.
        address: String,
        /// Why.
        why: String,
    },
}

impl SystemdError {
    /// True when the error says something about the unit, not about the connection
    /// (which is fine and can be kept).
    #[must_use]
    pub fn is_about_the_unit(&self) -> bool {
        matches!(
            self,
            Self::UnknownUnit(_) | Self::Job { .. } | Self::Timeout { .. }
        )
    }
}

/// A unit's `ActiveState`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActiveState {
    /// Running.
    Active,
    /// Starting.
    Activating,
    /// Reloading.
    Reloading,
    /// Stopping.
    Deactivating,
    /// Not running.
    Inactive,
    /// Not running, after a failure.
    Failed,
    /// Anything newer systemd versions add.
    Other(String),
}

impl ActiveState {
    fn parse(s: &str) -> Self {
        match s {
            "active" => Self::Active,
            "activating" => Self::Activating,
            "reloading" => Self::Reloading,
            "deactivating" => Self::Deactivating,
            "inactive" => Self::Inactive,
            "failed" => Self::Failed,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Whether any process of the unit may still run.
    #[must_use]
    pub fn may_run(&self) -> bool {
        !matches!(self, Self::Inactive | Self::Failed)
    }
}

/// What systemd says about a unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitState {
    /// `ActiveState`.
    pub active: ActiveState,
    /// The main process (0 when none, or for units that are not services).
    pub main_pid: u32,
    /// The unit's cgroup, relative to the root of the cgroup hierarchy as systemd sees
    /// it (`/system.slice/x.service`; empty when it has none).
    pub control_group: String,
}

/// A connection to systemd's manager.
#[derive(Clone, Debug)]
pub struct Systemd {
    connection: Connection,
    manager: ManagerProxy<'static>,
}

/// The bus address used: `DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket.
#[must_use]
pub fn bus_address() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".to_owned())
}

impl Systemd {
    /// [`connect`](Self::connect), giving up after `timeout`.
    ///
    /// # Errors
    /// The bus cannot be reached, or systemd does not answer in time.
    pub async fn connect_within(timeout: Duration) -> Result<Self, SystemdError> {
        match tokio::time::timeout(timeout, Self::connect()).await {
            Ok(connected) => connected,
            Err(_) => Err(SystemdError::Unreachable {
                address: bus_address(),
                why: format!("no answer within {timeout:?}"),
            }),
        }
    }

    /// Connects to the system bus and subscribes to job signals.
    ///
    /// # Errors
    /// The bus cannot be reached or systemd does not answer.
    pub async fn connect() -> Result<Self, SystemdError> {
        let connect = |source| SystemdError::Connect {
            address: bus_address(),
            source,
        };
        let connection = Connection::system().await.map_err(connect)?;
        let manager = ManagerProxy::new(&connection).await.map_err(connect)?;
        manager.subscribe().await.map_err(connect)?;
        Ok(Self {
            connection,
            manager,
        })
    }

    /// Starts `unit` and waits until systemd's start job has finished successfully.
    ///
    /// # Errors
    /// Unknown unit, a failed job, or no result within `timeout`.
    pub async fn start(&self, unit: &str, timeout: Duration) -> Result<(), SystemdError> {
        self.state(unit).await?;
        // A unit that failed before (or hit its start limit) can be started again.
        let _ = self.manager.reset_failed_unit(unit).await;
        self.run_job("start", unit, timeout).await
    }

    /// Stops `unit` and waits until systemd's stop job has finished.
    ///
    /// # Errors
    /// Unknown unit, a failed job, or no result within `timeout`.
    pub async fn stop(&self, unit: &str, timeout: Duration) -> Result<(), SystemdError> {
        self.state(unit).await?;
        self.run_job("stop", unit, timeout).await
    }

    async fn run_job(
        &self,
        verb: &'static str,
        unit: &str,
        timeout: Duration,
    ) -> Result<(), SystemdError> {
        // Listen before asking, so that a fast job's result is not missed.
        let mut removed = self.manager.receive_job_removed().await?;
        let job = match verb {
            "start" => self.manager.start_unit(unit, "replace").await?,
            _ => self.manager.stop_unit(unit, "replace").await?,
        };
        let wait = async {
            while let Some(signal) = removed.next().await {
                let args = signal.args()?;
                if args.job == job {
                    return if args.result == "done" {
                        Ok(())
                    } else {
                        Err(SystemdError::Job {
                            verb,
                            unit: unit.to_owned(),
                            result: args.result.clone(),
                        })
                    };
                }
            }
            Err(SystemdError::Call(zbus::Error::Failure(
                "the D-Bus connection closed while waiting for the job".into(),
            )))
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| SystemdError::Timeout {
                verb,
                unit: unit.to_owned(),
                timeout,
            })?
    }

    /// The unit's active state and main PID, read fresh from systemd.
    ///
    /// # Errors
    /// Unknown unit, or a D-Bus failure.
    pub async fn state(&self, unit: &str) -> Result<UnitState, SystemdError> {
        let path = self.manager.load_unit(unit).await?;
        let proxy = UnitProxy::builder(&self.connection)
            .path(path.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        if proxy.load_state().await? == "not-found" {
            return Err(SystemdError::UnknownUnit(unit.to_owned()));
        }
        let active = ActiveState::parse(&proxy.active_state().await?);
        let (main_pid, control_group) = if unit.ends_with(".service") {
            let service = ServiceUnitProxy::builder(&self.connection)
                .path(path)?
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            (
                service.main_pid().await.unwrap_or(0),
                service.control_group().await.unwrap_or_default(),
            )
        } else {
            (0, String::new())
        };
        Ok(UnitState {
            active,
            main_pid,
            control_group,
        })
    }

    /// Sends `signal` to every process of the unit (fencing), without waiting.
    ///
    /// # Errors
    /// A D-Bus failure (including a unit that is not loaded).
    pub async fn kill(&self, unit: &str, signal: i32) -> Result<(), SystemdError> {
        self.manager.kill_unit(unit, "all", signal).await?;
        Ok(())
    }
}
