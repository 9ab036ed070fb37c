//! Ceph storage steps, for a Ceph cluster quorate consumes (it does not run it):
//!
//! - `ceph-rbd`: the image is created on first use (only when it does not exist, never
//!   again), mapped on the node that runs the service — the kernel client (`rbd device
//!   map -o exclusive`) where the `rbd` module is loaded, `rbd-nbd --exclusive` where
//!   `nbd` is, else `rbd-fuse` with its cache off (a cached rbd-fuse can acknowledge a
//!   write Ceph never got) under a loop device with direct I/O —, a filesystem made
//!   only on an image this very step created, mounted; on stop unmounted and unmapped.
//! - `cephfs`: a CephFS directory mounted with the kernel client where it exists, else
//!   `ceph-fuse`.
//! - Storage-level fencing: [`blocklist`] adds a node's address to the OSD blocklist
//!   (the leader does it before a Ceph-backed service leaves an unreachable node, so
//!   that even a hung node can no longer write), [`unblocklist`] removes it.
//!
//! Every command names the cluster's config, the keyring and the client id from the
//! spec (never `/etc/ceph` implicitly).

use std::time::Duration;

use crate::runner::Runner;
use crate::storage::{
    mount_fs, run, run_ok, signature, StorageError, MOUNT_TIMEOUT, STORAGE_COMMAND_TIMEOUT,
};

/// How to reach the Ceph cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CephAccess {
    /// `ceph.conf`.
    pub conf: String,
    /// The client's keyring.
    pub keyring: String,
    /// The client id (`quorate` for `client.quorate`).
    pub client: String,
}

impl CephAccess {
    fn args(&self) -> [&str; 6] {
        [
            "-c",
            &self.conf,
            "--keyring",
            &self.keyring,
            "--id",
            &self.client,
        ]
    }

    /// Refuses before any command when the config or the keyring is missing.
    fn check_files(&self, resource: &str) -> Result<(), StorageError> {
        for (what, path) in [("config", &self.conf), ("keyring", &self.keyring)] {
            if !std::path::Path::new(path).exists() {
                return Err(StorageError::Command {
                    resource: resource.to_owned(),
                    command: format!("reading the Ceph {what}"),
                    reason: format!(
                        "{path} does not exist on this node (put the cluster's {what} there, or fix `ceph_{what}` in the spec)"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// How an RBD image is mapped on this node (written beside the mapping, so that the
/// stop undoes exactly what the start did).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mapping {
    Kernel(String),
    Nbd(String),
    /// The loop device and the rbd-fuse directory.
    Fuse(String, String),
}

impl Mapping {
    fn device(&self) -> &str {
        match self {
            Self::Kernel(d) | Self::Nbd(d) | Self::Fuse(d, _) => d,
        }
    }

    fn encode(&self) -> String {
        match self {
            Self::Kernel(d) => format!("kernel {d}"),
            Self::Nbd(d) => format!("nbd {d}"),
            Self::Fuse(d, dir) => format!("fuse {d} {dir}"),
        }
    }

    fn decode(text: &str) -> Option<Self> {
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["kernel", d] => Some(Self::Kernel((*d).to_owned())),
            ["nbd", d] => Some(Self::Nbd((*d).to_owned())),
            ["fuse", d, dir] => Some(Self::Fuse((*d).to_owned(), (*dir).to_owned())),
            _ => None,
        }
    }
}

/// An RBD image for a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbdImage {
    /// Storage name.
    pub resource: String,
    /// Pool.
    pub pool: String,
    /// Image.
    pub image: String,
    /// Size in bytes, when the image may be created.
    pub size: Option<u64>,
    /// Filesystem.
    pub fs: String,
    /// Mount point.
    pub mount: String,
    /// The cluster.
    pub access: CephAccess,
    /// This node's directory for the mapping's state (and the rbd-fuse mount).
    pub state_dir: String,
}

fn error(resource: &str, command: String, reason: String) -> StorageError {
    StorageError::Command {
        resource: resource.to_owned(),
        command,
        reason,
    }
}

impl RbdImage {
    fn spec(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }

    /// Whether the image exists (`Ok(false)`: it does not, the pool does).
    async fn exists(&self, runner: &dyn Runner) -> Result<bool, StorageError> {
        let r = &self.resource;
        let spec = self.spec();
        let mut args = self.access.args().to_vec();
        args.extend(["info", &spec]);
        let out = run(runner, r, "rbd", &args, STORAGE_COMMAND_TIMEOUT).await?;
        if out.success() {
            return Ok(true);
        }
        let stderr = out.stderr.to_lowercase();
        if stderr.contains("pool")
            && (stderr.contains("does not exist") || stderr.contains("error opening pool"))
        {
            return Err(error(
                r,
                format!("rbd info {spec}"),
                format!(
                    "pool `{}` does not exist in the Ceph cluster (create it: `ceph osd pool create {0}` and `rbd pool init {0}`), or fix `pool` in the spec",
                    self.pool
                ),
            ));
        }
        if out.code == Some(2) || stderr.contains("no such file") {
            return Ok(false);
        }
        Err(error(
            r,
            format!("rbd info {spec}"),
            if out.code.is_none() {
                "timed out (is the Ceph cluster reachable?)".into()
            } else {
                out.stderr.trim().to_owned()
            },
        ))
    }

    async fn map(&self, runner: &dyn Runner) -> Result<Mapping, StorageError> {
        let r = &self.resource;
        let spec = self.spec();
        let t = STORAGE_COMMAND_TIMEOUT;
        let a = self.access.args();
        if std::path::Path::new("/sys/bus/rbd").exists() {
            let mut args = a.to_vec();
            args.extend(["device", "map", "-o", "exclusive", &spec]);
            let out = run_ok(runner, r, "rbd", &args, t).await?;
            return Ok(Mapping::Kernel(out.stdout.trim().to_owned()));
        }
        if std::path::Path::new("/sys/module/nbd").exists() {
            let mut args = a.to_vec();
            args.extend(["map", "--exclusive", &spec]);
            let out = run_ok(runner, r, "rbd-nbd", &args, t).await?;
            return Ok(Mapping::Nbd(out.stdout.trim().to_owned()));
        }
        // rbd-fuse exposes the image as a file; a loop device makes it a block device.
        let dir = format!("{}/fuse", self.state_dir);
        run_ok(runner, r, "mkdir", &["-p", &dir], t).await?;
        let file = format!("{dir}/{}", self.image);
        let present = run(runner, r, "test", &["-f", &file], t).await?.success();
        if !present {
            let mut args = a.to_vec();
            args.extend([
                "--rbd-cache=false",
                "-p",
                &self.pool,
                "-r",
                &self.image,
                &dir,
            ]);
            run_ok(runner, r, "rbd-fuse", &args, t).await?;
            let deadline = tokio::time::Instant::now() + MOUNT_TIMEOUT;
            while !run(runner, r, "test", &["-f", &file], t).await?.success() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(error(
                        r,
                        format!("rbd-fuse {spec}"),
                        format!("{file} did not appear within {MOUNT_TIMEOUT:?}"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let out = run_ok(
            runner,
            r,
            "losetup",
            &["-f", "--show", "--direct-io=on", &file],
            t,
        )
        .await?;
        Ok(Mapping::Fuse(out.stdout.trim().to_owned(), dir))
    }

    fn mapping_file(&self) -> String {
        format!("{}/mapping", self.state_dir)
    }

    /// Creates the image when it does not exist (and `size` is given), maps it,
    /// formats it only when this step created it, and mounts it.
    ///
    /// # Errors
    /// Missing config or keyring, a pool that does not exist, an image that does not
    /// exist without a size, an existing image without a filesystem (never formatted),
    /// or a failing command.
    pub async fn attach(&self, runner: &dyn Runner) -> Result<(), StorageError> {
        let r = &self.resource;
        let t = STORAGE_COMMAND_TIMEOUT;
        self.access.check_files(r)?;
        // A mapping left from before (an agent killed, a node cut off and back): undo
        // it first, so the service never runs on a stale, possibly fenced mount.
        if std::path::Path::new(&self.mapping_file()).exists() {
            self.detach(runner).await?;
        }
        let spec = self.spec();
        let created = if self.exists(runner).await? {
            false
        } else {
            let Some(size) = self.size else {
                return Err(error(
                    r,
                    format!("rbd info {spec}"),
                    format!("image {spec} does not exist and the spec gives no `size` to create it with"),
                ));
            };
            let megabytes = format!("{}M", size.div_ceil(1_048_576).max(1));
            let mut args = self.access.args().to_vec();
            args.extend([
                "create",
                "--size",
                &megabytes,
                "--image-feature",
                "layering,exclusive-lock",
                &spec,
            ]);
            run_ok(runner, r, "rbd", &args, t).await?;
            true
        };
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| error(r, format!("mkdir -p {}", self.state_dir), e.to_string()))?;
        let mapping = self.map(runner).await?;
        // Recorded before anything else can fail: the stop undoes what is recorded.
        std::fs::write(self.mapping_file(), mapping.encode())
            .map_err(|e| error(r, format!("writing {}", self.mapping_file()), e.to_string()))?;
        let device = mapping.device();
        match signature(runner, r, device).await? {
            Some(_) => {}
            None if created => {
                run_ok(runner, r, &format!("mkfs.{}", self.fs), &[device], t).await?;
            }
            None => {
                return Err(error(
                    r,
                    format!("blkid {device}"),
                    format!("image {spec} exists but holds no filesystem; quorate formats only images it created itself — make the filesystem by hand if the image is really empty"),
                ));
            }
        }
        mount_fs(runner, r, device, &self.mount, &self.fs).await
    }

    /// What this node sees of the image, on one line: whether it is mapped here (how,
    /// on which device) and who holds its exclusive lock (`rbd lock ls`): the client
    /// and address Ceph names as the owner — the node a writer really runs on.
    pub async fn health(&self, runner: &dyn Runner) -> String {
        let Some(mapping) = std::fs::read_to_string(self.mapping_file())
            .ok()
            .and_then(|m| Mapping::decode(&m))
        else {
            return "not mapped here".into();
        };
        let how = match &mapping {
            Mapping::Kernel(d) => format!("mapped with the kernel client on {d}"),
            Mapping::Nbd(d) => format!("mapped with rbd-nbd on {d}"),
            Mapping::Fuse(d, _) => format!("mapped with rbd-fuse + loop on {d}"),
        };
        let spec = self.spec();
        let mut args = self.access.args().to_vec();
        args.extend(["lock", "ls", "--format", "json", &spec]);
        let owner = match run(
            runner,
            &self.resource,
            "rbd",
            &args,
            STORAGE_COMMAND_TIMEOUT,
        )
        .await
        {
            Ok(out) if out.success() => lock_owners(&out.stdout).map_or_else(
                || "unreadable".into(),
                |o| {
                    if o.is_empty() {
                        "none".into()
                    } else {
                        o.join(", ")
                    }
                },
            ),
            Ok(out) => format!("unknown ({})", out.stderr.trim()),
            Err(e) => format!("unknown ({e})"),
        };
        format!("{how}; exclusive lock held by: {owner}")
    }

    /// Unmounts and unmaps: the reverse of [`attach`](Self::attach).
    ///
    /// # Errors
    /// A failing command.
    pub async fn detach(&self, runner: &dyn Runner) -> Result<(), StorageError> {
        let r = &self.resource;
        let t = STORAGE_COMMAND_TIMEOUT;
        unmount(runner, r, &self.mount).await?;
        let Some(mapping) = std::fs::read_to_string(self.mapping_file())
            .ok()
            .and_then(|m| Mapping::decode(&m))
        else {
            return Ok(());
        };
        match &mapping {
            Mapping::Kernel(d) => {
                let mut args = self.access.args().to_vec();
                args.extend(["device", "unmap", d.as_str()]);
                run_ok(runner, r, "rbd", &args, t).await?;
            }
            Mapping::Nbd(d) => {
                run_ok(runner, r, "rbd-nbd", &["unmap", d], t).await?;
            }
            Mapping::Fuse(d, dir) => {
                run_ok(runner, r, "losetup", &["-d", d], t).await?;
                unmount(runner, r, dir).await?;
            }
        }
        let _ = std::fs::remove_file(self.mapping_file());
        Ok(())
    }
}

/// The lockers in `rbd lock ls --format json` (`client.4161 at 10.0.0.2:0/123`): an
/// array of `{id, locker, address}` (Ceph ≥ 12), or an object keyed by lock id
/// (older). `None` when it is neither.
fn lock_owners(json: &str) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    let entries: Vec<&serde_json::Value> = match &value {
        serde_json::Value::Array(a) => a.iter().collect(),
        serde_json::Value::Object(o) => o.values().collect(),
        _ => return None,
    };
    entries
        .into_iter()
        .map(|e| {
            let locker = e.get("locker")?.as_str()?;
            let address = e.get("address")?.as_str()?;
            Some(format!("{locker} at {address}"))
        })
        .collect()
}

/// Whether this process's mount table lists `target` (a FUSE mount whose server died
/// answers every stat with ENOTCONN, so `mountpoint` cannot tell).
fn listed_mount(target: &str) -> bool {
    let target = target.trim_end_matches('/').replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(target.as_str()))
    })
}

/// Unmounts `target` when something is mounted there; a mount that does not let go
/// within the timeout (a blocklisted FUSE client never answers, a dead one cannot) is
/// detached lazily.
async fn unmount(runner: &dyn Runner, resource: &str, target: &str) -> Result<(), StorageError> {
    let mounted = listed_mount(target)
        || run(
            runner,
            resource,
            "mountpoint",
            &["-q", target],
            MOUNT_TIMEOUT,
        )
        .await?
        .success();
    if !mounted {
        return Ok(());
    }
    if run(runner, resource, "umount", &[target], MOUNT_TIMEOUT)
        .await?
        .success()
    {
        return Ok(());
    }
    run_ok(runner, resource, "umount", &["-l", target], MOUNT_TIMEOUT)
        .await
        .map(drop)
}

/// A CephFS directory for a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CephfsMount {
    /// Storage name.
    pub resource: String,
    /// The directory in the file system.
    pub path: String,
    /// Mount point.
    pub mount: String,
    /// The cluster.
    pub access: CephAccess,
}

impl CephfsMount {
    /// Mounts the directory (kernel client where the kernel has it, else ceph-fuse).
    ///
    /// # Errors
    /// Missing config or keyring, or a failing mount.
    pub async fn attach(&self, runner: &dyn Runner) -> Result<(), StorageError> {
        let r = &self.resource;
        self.access.check_files(r)?;
        // Whatever is mounted there is from before (the service is starting): a dead
        // or fenced client's mount must not be what it writes to.
        unmount(runner, r, &self.mount).await?;
        run_ok(runner, r, "mkdir", &["-p", &self.mount], MOUNT_TIMEOUT).await?;
        let kernel = std::fs::read_to_string("/proc/filesystems")
            .is_ok_and(|f| f.lines().any(|l| l.trim_end().ends_with("\tceph")));
        if kernel {
            // mount.ceph finds the key through the config (its `keyring` setting).
            let options = format!("name={},conf={}", self.access.client, self.access.conf);
            run_ok(
                runner,
                r,
                "mount",
                &[
                    "-t",
                    "ceph",
                    &format!(":{}", self.path),
                    &self.mount,
                    "-o",
                    &options,
                ],
                MOUNT_TIMEOUT,
            )
            .await
            .map(drop)
        } else {
            let mut args = self.access.args().to_vec();
            args.extend(["-r", &self.path, &self.mount]);
            run_ok(runner, r, "ceph-fuse", &args, MOUNT_TIMEOUT)
                .await
                .map(drop)
        }
    }

    /// Unmounts it.
    ///
    /// # Errors
    /// A failing command.
    pub async fn detach(&self, runner: &dyn Runner) -> Result<(), StorageError> {
        unmount(runner, &self.resource, &self.mount).await
    }
}

/// Adds `address` (every client instance from it: `ADDR:0/0`) to the OSD blocklist
/// for `expiry`.
///
/// # Errors
/// The command fails (the caller must not relocate then).
pub async fn blocklist(
    runner: &dyn Runner,
    access: &CephAccess,
    address: &str,
    expiry: Duration,
) -> Result<(), StorageError> {
    let entry = format!("{address}:0/0");
    let seconds = expiry.as_secs().to_string();
    let mut args = access.args().to_vec();
    args.extend(["osd", "blocklist", "add", &entry, &seconds]);
    run_ok(runner, "blocklist", "ceph", &args, STORAGE_COMMAND_TIMEOUT)
        .await
        .map(drop)
}

/// Removes `address` from the OSD blocklist.
///
/// # Errors
/// The command fails.
pub async fn unblocklist(
    runner: &dyn Runner,
    access: &CephAccess,
    address: &str,
) -> Result<(), StorageError> {
    let entry = format!("{address}:0/0");
    let mut args = access.args().to_vec();
    args.extend(["osd", "blocklist", "rm", &entry]);
    run_ok(runner, "blocklist", "ceph", &args, STORAGE_COMMAND_TIMEOUT)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{CommandOutput, RecordedRunner};

    /// An image whose config (and, with `keyring`, keyring) exist in `dir`.
    fn image(dir: &tempfile::TempDir, keyring: bool) -> RbdImage {
        let conf = dir.path().join("ceph.conf");
        std::fs::write(&conf, "[global]\n").unwrap();
        let key = dir.path().join("ceph.client.quorate.keyring");
        if keyring {
            std::fs::write(&key, "[client.quorate]\n").unwrap();
        }
        RbdImage {
            resource: "data".into(),
            pool: "rbd".into(),
            image: "data".into(),
            size: Some(64 << 20),
            fs: "ext4".into(),
            mount: "/var/lib/data".into(),
            access: CephAccess {
                conf: conf.to_string_lossy().into_owned(),
                keyring: key.to_string_lossy().into_owned(),
                client: "quorate".into(),
            },
            state_dir: dir.path().join("state").to_string_lossy().into_owned(),
        }
    }

    fn formats(r: &RecordedRunner) -> bool {
        r.calls()
            .iter()
            .any(|c| c.starts_with("mkfs") || c.contains(" create "))
    }

    #[tokio::test]
    async fn a_missing_keyring_is_refused_before_any_command() {
        let dir = tempfile::tempdir().unwrap();
        let r = RecordedRunner::default();
        let e = image(&dir, false).attach(&r).await.unwrap_err().to_string();
        assert!(e.contains("keyring") && e.contains("does not exist"), "{e}");
        assert!(r.calls().is_empty(), "{:?}", r.calls());
    }

    #[tokio::test]
    async fn a_pool_that_does_not_exist_is_named_and_nothing_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let r = RecordedRunner::default().answer(
            "rbd",
            CommandOutput::failed(
                2,
                "rbd: error opening pool 'rbd': (2) No such file or directory",
            ),
        );
        let e = image(&dir, true).attach(&r).await.unwrap_err().to_string();
        assert!(e.contains("pool `rbd` does not exist"), "{e}");
        assert!(!formats(&r), "{:?}", r.calls());
    }

    #[tokio::test]
    async fn an_existing_image_without_a_filesystem_is_never_formatted() {
        let dir = tempfile::tempdir().unwrap();
        // `rbd info` succeeds (the image exists); blkid finds nothing on it.
        let r = RecordedRunner::default()
            .answer("losetup", CommandOutput::ok("/dev/loop7\n"))
            .answer("blkid", CommandOutput::failed(2, ""));
        let e = image(&dir, true).attach(&r).await.unwrap_err().to_string();
        assert!(e.contains("formats only images it created"), "{e}");
        assert!(!formats(&r), "{:?}", r.calls());
    }

    #[tokio::test]
    async fn a_new_image_is_created_once_formatted_and_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(&dir, true);
        let r = RecordedRunner::default()
            .answer(
                "rbd",
                CommandOutput::failed(
                    2,
                    "rbd: error opening image data: (2) No such file or directory",
                ),
            )
            // Not exposed yet: rbd-fuse starts, then the file is there.
            .answer("test -f", CommandOutput::failed(1, ""))
            .answer("losetup", CommandOutput::ok("/dev/loop7\n"))
            .answer("blkid", CommandOutput::failed(2, ""))
            .answer("mountpoint", CommandOutput::failed(32, ""));
        img.attach(&r).await.unwrap();
        let calls = r.calls().join("\n");
        assert!(
            calls.contains("create --size 64M --image-feature layering,exclusive-lock rbd/data"),
            "{calls}"
        );
        assert!(
            calls.contains("--rbd-cache=false"),
            "the cache stays off: {calls}"
        );
        assert!(calls.contains("mkfs.ext4 /dev/loop7"), "{calls}");
        assert!(
            calls.contains("mount -t ext4 /dev/loop7 /var/lib/data"),
            "{calls}"
        );
        // The stop undoes the recorded mapping.
        let r = RecordedRunner::default().answer("mountpoint", CommandOutput::failed(32, ""));
        img.detach(&r).await.unwrap();
        assert!(
            r.calls().iter().any(|c| c == "losetup -d /dev/loop7"),
            "{:?}",
            r.calls()
        );
    }

    #[test]
    fn lock_owners_are_read_in_both_json_shapes() {
        let list = r#"[{"id":"auto 140230","locker":"client.4161","address":"10.87.0.2:0/3014"}]"#;
        assert_eq!(
            lock_owners(list),
            Some(vec!["client.4161 at 10.87.0.2:0/3014".to_owned()])
        );
        let map = r#"{"auto 1":{"locker":"client.9","address":"10.0.0.1:0/7"}}"#;
        assert_eq!(
            lock_owners(map),
            Some(vec!["client.9 at 10.0.0.1:0/7".to_owned()])
        );
        assert_eq!(lock_owners("[]"), Some(Vec::new()));
        assert_eq!(lock_owners("not json"), None);
        assert_eq!(lock_owners(r#"[{"id":"x"}]"#), None);
    }
}
