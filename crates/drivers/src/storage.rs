//! The storage and mount steps, first in a service's start order (storage → mount → ip
//! → service) and last in its stop order:
//!
//! - DRBD: `drbdadm up` (metadata created only when the backing device has none *and*
//!   holds no filesystem or other signature — never over existing data), `primary` on
//!   the node that runs the service, a filesystem made only on a device that has none,
//!   mounted at the service's mount point; on stop unmounted and `secondary`.
//!   Resources are never torn down automatically.
//! - GlusterFS: the volume is FUSE-mounted from the node's own glusterd.
//! - Ceph: an RBD image mapped and mounted, or a CephFS directory mounted
//!   ([`crate::ceph`]).
//! - Mounts have a timeout: a hanging mount fails the start (and the restart policy
//!   moves the service).

use std::time::Duration;

use crate::runner::{CommandOutput, Runner};

/// How long one storage command may take.
pub const STORAGE_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a mount may take before the start fails.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a service waits for its GlusterFS volume to be created and started.
pub const VOLUME_WAIT: Duration = Duration::from_secs(60);

/// Why a storage step failed. Nothing was formatted or overwritten.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backing block device is not there.
    #[error("storage `{resource}`: backing device {device} does not exist on this node (create it, or fix `device` in the spec)")]
    NoBackingDevice {
        /// The resource.
        resource: String,
        /// The device path.
        device: String,
    },
    /// The backing device holds data but no DRBD metadata: refusing to create any.
    #[error("storage `{resource}`: {device} holds data ({found}) but no DRBD metadata; quorate never writes metadata over existing data — move the data away or run `drbdadm create-md {resource}` yourself")]
    ExistingData {
        /// The resource.
        resource: String,
        /// The device path.
        device: String,
        /// What blkid found.
        found: String,
    },
    /// A command failed.
    #[error("storage `{resource}`: `{command}` failed: {reason}")]
    Command {
        /// The resource.
        resource: String,
        /// The command line.
        command: String,
        /// Its error output, or "timed out".
        reason: String,
    },
}

/// One storage step of a service on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageStep {
    /// A DRBD resource, mounted when `mount` is set.
    Drbd {
        /// Resource name.
        resource: String,
        /// Locked minor: the device is /dev/drbd<minor>.
        minor: u32,
        /// Backing device on this node.
        disk: String,
        /// Filesystem to mount (and make on a fresh device).
        fs: String,
        /// Mount point.
        mount: Option<String>,
    },
    /// A GlusterFS volume, FUSE-mounted from `server`.
    Gluster {
        /// Storage name.
        resource: String,
        /// Volume name.
        volume: String,
        /// The glusterd to mount from (this node's address).
        server: String,
        /// Mount point.
        mount: String,
    },
    /// A Ceph RBD image, mapped and mounted.
    CephRbd(crate::ceph::RbdImage),
    /// A CephFS directory, mounted.
    Cephfs(crate::ceph::CephfsMount),
}

pub(crate) async fn run(
    runner: &dyn Runner,
    resource: &str,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<CommandOutput, StorageError> {
    let command = format!("{program} {}", args.join(" "));
    let out = runner
        .run(program, args, timeout)
        .await
        .map_err(|e| StorageError::Command {
            resource: resource.to_owned(),
            command: command.clone(),
            reason: e.to_string(),
        })?;
    Ok(out)
}

pub(crate) async fn run_ok(
    runner: &dyn Runner,
    resource: &str,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<CommandOutput, StorageError> {
    let out = run(runner, resource, program, args, timeout).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(StorageError::Command {
            resource: resource.to_owned(),
            command: format!("{program} {}", args.join(" ")),
            reason: if out.code.is_none() {
                format!("timed out after {timeout:?}")
            } else {
                out.stderr.trim().to_owned()
            },
        })
    }
}

/// What `blkid -p` finds on a device ("ext4", "drbd", …), or None when it is empty.
pub(crate) async fn signature(
    runner: &dyn Runner,
    resource: &str,
    device: &str,
) -> Result<Option<String>, StorageError> {
    let out = run(
        runner,
        resource,
        "blkid",
        &["-p", "-o", "value", "-s", "TYPE", device],
        STORAGE_COMMAND_TIMEOUT,
    )
    .await?;
    // blkid exits 2 when it finds nothing.
    Ok(match out.code {
        Some(0) if !out.stdout.trim().is_empty() => Some(out.stdout.trim().to_owned()),
        Some(0 | 2) => None,
        _ => {
            return Err(StorageError::Command {
                resource: resource.to_owned(),
                command: format!("blkid -p {device}"),
                reason: out.stderr.trim().to_owned(),
            })
        }
    })
}

impl StorageStep {
    fn resource(&self) -> &str {
        match self {
            Self::Drbd { resource, .. } | Self::Gluster { resource, .. } => resource,
            Self::CephRbd(image) => &image.resource,
            Self::Cephfs(fs) => &fs.resource,
        }
    }

    /// Brings the storage up for the service on this node, then mounts it.
    ///
    /// # Errors
    /// A missing backing device, data without DRBD metadata, or a failing (or hanging)
    /// command. Nothing is formatted or overwritten on any error path.
    pub async fn attach(&self, runner: &dyn Runner) -> Result<(), StorageError> {
        let resource = self.resource();
        match self {
            Self::Drbd {
                minor,
                disk,
                fs,
                mount,
                ..
            } => {
                let t = STORAGE_COMMAND_TIMEOUT;
                drbd_up(runner, resource, Some(disk)).await?;
                run_ok(runner, resource, "drbdadm", &["primary", resource], t).await?;
                let device = format!("/dev/drbd{minor}");
                if let Some(target) = mount {
                    if signature(runner, resource, &device).await?.is_none() {
                        run_ok(runner, resource, &format!("mkfs.{fs}"), &[&device], t).await?;
                    }
                    mount_fs(runner, resource, &device, target, fs).await?;
                }
                Ok(())
            }
            Self::Gluster {
                volume,
                server,
                mount,
                ..
            } => {
                // The leader creates the volume; wait (a while) until it is started.
                let deadline = tokio::time::Instant::now() + VOLUME_WAIT;
                loop {
                    let info = run(
                        runner,
                        resource,
                        "gluster",
                        &["--mode=script", "volume", "info", volume],
                        MOUNT_TIMEOUT,
                    )
                    .await?;
                    if info.success() && info.stdout.contains("Status: Started") {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StorageError::Command {
                            resource: resource.to_owned(),
                            command: format!("gluster volume info {volume}"),
                            reason: format!("volume not started within {VOLUME_WAIT:?} (is glusterd running on every replica node?)"),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let source = format!("{server}:/{volume}");
                mount_fs(runner, resource, &source, mount, "glusterfs").await
            }
            Self::CephRbd(image) => image.attach(runner).await,
            Self::Cephfs(fs) => fs.attach(runner).await,
        }
    }

    /// Unmounts and (DRBD) demotes: the reverse of [`attach`](Self::attach).
    ///
    /// # Errors
    /// A failing command (the caller keeps the service reported failed).
    pub async fn detach(&self, runner: &dyn Runner) -> Result<(), StorageError> {
        let resource = self.resource();
        let target = match self {
            Self::Drbd { mount, .. } => mount.clone(),
            Self::Gluster { mount, .. } => Some(mount.clone()),
            Self::CephRbd(image) => return image.detach(runner).await,
            Self::Cephfs(fs) => return fs.detach(runner).await,
        };
        if let Some(target) = target {
            let mounted = run(
                runner,
                resource,
                "mountpoint",
                &["-q", &target],
                MOUNT_TIMEOUT,
            )
            .await?
            .success();
            if mounted {
                run_ok(runner, resource, "umount", &[&target], MOUNT_TIMEOUT).await?;
            }
        }
        if let Self::Drbd { .. } = self {
            run_ok(
                runner,
                resource,
                "drbdadm",
                &["secondary", resource],
                STORAGE_COMMAND_TIMEOUT,
            )
            .await?;
        }
        Ok(())
    }
}

/// Brings a DRBD resource up on this node (secondary), as every replica node and the
/// tie-breaker keep it: `adjust` when it is configured; else, with a backing `disk`,
/// the disk must exist and metadata is created only when it has none and holds no
/// other data, then `up`. The diskless tie-breaker (`disk = None`) is just brought up.
///
/// # Errors
/// A missing backing device, data without metadata, or a failing command.
pub async fn drbd_up(
    runner: &dyn Runner,
    resource: &str,
    disk: Option<&str>,
) -> Result<(), StorageError> {
    let t = STORAGE_COMMAND_TIMEOUT;
    let configured = run(runner, resource, "drbdadm", &["status", resource], t)
        .await?
        .success();
    if configured {
        run_ok(runner, resource, "drbdadm", &["adjust", resource], t).await?;
        return Ok(());
    }
    if let Some(disk) = disk {
        let exists = run(runner, resource, "test", &["-b", disk], t)
            .await?
            .success();
        if !exists {
            return Err(StorageError::NoBackingDevice {
                resource: resource.to_owned(),
                device: disk.to_owned(),
            });
        }
        let has_metadata = run(runner, resource, "drbdadm", &["dump-md", resource], t)
            .await?
            .success();
        if !has_metadata {
            if let Some(found) = signature(runner, resource, disk).await? {
                return Err(StorageError::ExistingData {
                    resource: resource.to_owned(),
                    device: disk.to_owned(),
                    found,
                });
            }
            run_ok(
                runner,
                resource,
                "drbdadm",
                &["create-md", "--force", resource],
                t,
            )
            .await?;
        }
    }
    run_ok(runner, resource, "drbdadm", &["up", resource], t).await?;
    Ok(())
}

pub(crate) async fn mount_fs(
    runner: &dyn Runner,
    resource: &str,
    source: &str,
    target: &str,
    fs: &str,
) -> Result<(), StorageError> {
    let mounted = run(
        runner,
        resource,
        "mountpoint",
        &["-q", target],
        MOUNT_TIMEOUT,
    )
    .await?
    .success();
    if mounted {
        return Ok(());
    }
    run_ok(runner, resource, "mkdir", &["-p", target], MOUNT_TIMEOUT).await?;
    run_ok(
        runner,
        resource,
        "mount",
        &["-t", fs, source, target],
        MOUNT_TIMEOUT,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::RecordedRunner;

    fn drbd() -> StorageStep {
        StorageStep::Drbd {
            resource: "pgdata".into(),
            minor: 1000,
            disk: "/dev/vg0/pgdata".into(),
            fs: "ext4".into(),
            mount: Some("/var/lib/postgresql".into()),
        }
    }

    fn not_configured() -> RecordedRunner {
        RecordedRunner::default()
            .answer(
                "drbdadm status",
                CommandOutput::failed(10, "pgdata: No such resource"),
            )
            .answer("mountpoint", CommandOutput::failed(32, ""))
    }

    #[tokio::test]
    async fn a_fresh_device_gets_metadata_then_up_primary_mkfs_and_mount() {
        let r = not_configured()
            .answer(
                "drbdadm dump-md",
                CommandOutput::failed(255, "No valid meta data found"),
            )
            .answer(
                "blkid -p -o value -s TYPE /dev/vg0/pgdata",
                CommandOutput::failed(2, ""),
            )
            .answer(
                "blkid -p -o value -s TYPE /dev/drbd1000",
                CommandOutput::failed(2, ""),
            );
        drbd().attach(&r).await.unwrap();
        assert_eq!(
            r.calls(),
            [
                "drbdadm status pgdata",
                "test -b /dev/vg0/pgdata",
                "drbdadm dump-md pgdata",
                "blkid -p -o value -s TYPE /dev/vg0/pgdata",
                "drbdadm create-md --force pgdata",
                "drbdadm up pgdata",
                "drbdadm primary pgdata",
                "blkid -p -o value -s TYPE /dev/drbd1000",
                "mkfs.ext4 /dev/drbd1000",
                "mountpoint -q /var/lib/postgresql",
                "mkdir -p /var/lib/postgresql",
                "mount -t ext4 /dev/drbd1000 /var/lib/postgresql",
            ]
        );
    }

    #[tokio::test]
    async fn existing_metadata_and_filesystem_are_never_recreated() {
        let r = not_configured().answer(
            "blkid -p -o value -s TYPE /dev/drbd1000",
            CommandOutput::ok("ext4\n"),
        );
        drbd().attach(&r).await.unwrap();
        let calls = r.calls();
        assert!(calls.contains(&"drbdadm up pgdata".to_owned()), "{calls:?}");
        assert!(
            !calls
                .iter()
                .any(|c| c.contains("create-md") || c.starts_with("mkfs")),
            "{calls:?}"
        );
    }

    #[tokio::test]
    async fn an_up_resource_is_adjusted_not_brought_up_again() {
        let r = RecordedRunner::default()
            .answer("blkid", CommandOutput::ok("ext4"))
            .answer("mountpoint", CommandOutput::ok(""));
        drbd().attach(&r).await.unwrap();
        assert_eq!(
            r.calls(),
            [
                "drbdadm status pgdata",
                "drbdadm adjust pgdata",
                "drbdadm primary pgdata",
                "blkid -p -o value -s TYPE /dev/drbd1000",
                "mountpoint -q /var/lib/postgresql",
            ]
        );
    }

    #[tokio::test]
    async fn data_without_metadata_is_refused_and_nothing_is_written() {
        let r = not_configured()
            .answer(
                "drbdadm dump-md",
                CommandOutput::failed(255, "No valid meta data found"),
            )
            .answer(
                "blkid -p -o value -s TYPE /dev/vg0/pgdata",
                CommandOutput::ok("xfs\n"),
            );
        let err = drbd().attach(&r).await.unwrap_err();
        assert!(
            matches!(err, StorageError::ExistingData { ref found, .. } if found == "xfs"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("never writes metadata over existing data"),
            "{err}"
        );
        let calls = r.calls();
        assert!(
            !calls
                .iter()
                .any(|c| c.contains("create-md") || c.contains(" up ") || c.starts_with("mkfs")),
            "{calls:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_backing_device_is_a_clear_error() {
        let r = not_configured().answer("test -b", CommandOutput::failed(1, ""));
        let err = drbd().attach(&r).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("backing device /dev/vg0/pgdata does not exist"),
            "{err}"
        );
        assert_eq!(r.calls().len(), 2, "{:?}", r.calls());
    }

    #[tokio::test]
    async fn a_hanging_mount_fails_the_start() {
        let r = not_configured()
            .answer("blkid", CommandOutput::ok("ext4"))
            .answer(
                "mount -t",
                CommandOutput {
                    code: None,
                    stdout: String::new(),
                    stderr: "timed out".into(),
                },
            );
        let err = drbd().attach(&r).await.unwrap_err();
        assert!(err.to_string().contains("timed out after"), "{err}");
    }

    #[tokio::test]
    async fn the_diskless_tie_breaker_is_only_brought_up() {
        let r = RecordedRunner::default().answer(
            "drbdadm status",
            CommandOutput::failed(10, "No such resource"),
        );
        drbd_up(&r, "pgdata", None).await.unwrap();
        assert_eq!(r.calls(), ["drbdadm status pgdata", "drbdadm up pgdata"]);
    }

    #[tokio::test]
    async fn detach_unmounts_then_demotes_and_never_downs() {
        let r = RecordedRunner::default().answer("mountpoint", CommandOutput::ok(""));
        drbd().detach(&r).await.unwrap();
        assert_eq!(
            r.calls(),
            [
                "mountpoint -q /var/lib/postgresql",
                "umount /var/lib/postgresql",
                "drbdadm secondary pgdata",
            ]
        );
    }

    #[tokio::test]
    async fn gluster_mounts_from_the_local_glusterd() {
        let step = StorageStep::Gluster {
            resource: "media".into(),
            volume: "media".into(),
            server: "10.0.0.1".into(),
            mount: "/srv/media".into(),
        };
        let r = RecordedRunner::default()
            .answer(
                "gluster --mode=script volume info",
                CommandOutput::ok("Status: Created"),
            )
            .answer(
                "gluster --mode=script volume info",
                CommandOutput::ok("Status: Started"),
            )
            .answer("mountpoint", CommandOutput::failed(32, ""));
        step.attach(&r).await.unwrap();
        assert_eq!(
            r.calls(),
            [
                "gluster --mode=script volume info media",
                "gluster --mode=script volume info media",
                "mountpoint -q /srv/media",
                "mkdir -p /srv/media",
                "mount -t glusterfs 10.0.0.1:/media /srv/media",
            ]
        );
    }
}
