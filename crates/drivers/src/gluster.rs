//! GlusterFS volumes, driven by the leader through the `gluster` CLI of its own
//! glusterd: peer probe of every replica node, the replicated volume created once (one
//! brick per replica node, `replica N`, or `replica 3 arbiter 1` for 2+1), started.
//! Every step is idempotent, so the leader simply ensures the volume on each tick
//! until it is done.

use std::time::Duration;

use crate::runner::{CommandOutput, Runner};
use crate::storage::StorageError;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A replicated volume as the spec declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlusterVolume {
    /// Storage name (for errors).
    pub resource: String,
    /// Volume name.
    pub volume: String,
    /// (node address, brick path) per replica, in the spec's node order.
    pub bricks: Vec<(String, String)>,
    /// The last brick is an arbiter (2 data replicas + 1 arbiter).
    pub arbiter: bool,
}

impl GlusterVolume {
    async fn gluster(
        &self,
        runner: &dyn Runner,
        args: &[&str],
    ) -> Result<CommandOutput, StorageError> {
        let mut all = vec!["--mode=script"];
        all.extend_from_slice(args);
        runner
            .run("gluster", &all, TIMEOUT)
            .await
            .map_err(|e| StorageError::Command {
                resource: self.resource.clone(),
                command: format!("gluster {}", args.join(" ")),
                reason: e.to_string(),
            })
    }

    fn failed(&self, args: &[&str], out: &CommandOutput) -> StorageError {
        StorageError::Command {
            resource: self.resource.clone(),
            command: format!("gluster {}", args.join(" ")),
            reason: format!("{}{}", out.stdout.trim(), out.stderr.trim()),
        }
    }

    /// Makes the volume exist and run: probes peers, creates it when missing, starts it
    /// when stopped. `local` is the address of the node running this (not probed).
    ///
    /// # Errors
    /// A peer that cannot be probed, or a refused create/start.
    pub async fn ensure(&self, runner: &dyn Runner, local: &str) -> Result<(), StorageError> {
        for (address, _) in &self.bricks {
            if address == local {
                continue;
            }
            let args = ["peer", "probe", address.as_str()];
            let out = self.gluster(runner, &args).await?;
            if !out.success() {
                return Err(self.failed(&args, &out));
            }
        }
        let info = self
            .gluster(runner, &["volume", "info", &self.volume])
            .await?;
        if !info.success() {
            let replica = self.bricks.len().to_string();
            let mut args = vec!["volume", "create", self.volume.as_str(), "replica"];
            if self.arbiter {
                args.extend(["3", "arbiter", "1"]);
            } else {
                args.push(&replica);
            }
            let bricks: Vec<String> = self
                .bricks
                .iter()
                .map(|(a, b)| format!("{a}:{b}"))
                .collect();
            args.extend(bricks.iter().map(String::as_str));
            // Bricks may sit on the root filesystem; gluster refuses that without force.
            args.push("force");
            let out = self.gluster(runner, &args).await?;
            if !out.success() {
                return Err(self.failed(&args, &out));
            }
        } else if info.stdout.contains("Status: Started") {
            return Ok(());
        }
        let args = ["volume", "start", self.volume.as_str()];
        let out = self.gluster(runner, &args).await?;
        if !out.success() && !format!("{}{}", out.stdout, out.stderr).contains("already started") {
            return Err(self.failed(&args, &out));
        }
        Ok(())
    }

    /// Entries waiting for heal, summed over bricks (`volume heal VOL info summary`).
    ///
    /// # Errors
    /// The command fails.
    pub async fn heal_pending(&self, runner: &dyn Runner) -> Result<u64, StorageError> {
        let args = ["volume", "heal", self.volume.as_str(), "info", "summary"];
        let out = self.gluster(runner, &args).await?;
        if !out.success() {
            return Err(self.failed(&args, &out));
        }
        Ok(out
            .stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Total Number of entries:"))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::RecordedRunner;

    fn volume(arbiter: bool) -> GlusterVolume {
        GlusterVolume {
            resource: "media".into(),
            volume: "media".into(),
            bricks: vec![
                ("10.0.0.1".into(), "/srv/b".into()),
                ("10.0.0.2".into(), "/srv/b".into()),
                ("10.0.0.3".into(), "/srv/b".into()),
            ],
            arbiter,
        }
    }

    #[tokio::test]
    async fn a_missing_volume_is_probed_created_and_started() {
        let r = RecordedRunner::default().answer(
            "gluster --mode=script volume info",
            CommandOutput::failed(1, "Volume media does not exist"),
        );
        volume(false).ensure(&r, "10.0.0.1").await.unwrap();
        assert_eq!(
            r.calls(),
            [
                "gluster --mode=script peer probe 10.0.0.2",
                "gluster --mode=script peer probe 10.0.0.3",
                "gluster --mode=script volume info media",
                "gluster --mode=script volume create media replica 3 10.0.0.1:/srv/b 10.0.0.2:/srv/b 10.0.0.3:/srv/b force",
                "gluster --mode=script volume start media",
            ]
        );
    }

    #[tokio::test]
    async fn an_arbiter_volume_says_so_and_a_started_one_is_left_alone() {
        let r = RecordedRunner::default().answer(
            "gluster --mode=script volume info",
            CommandOutput::failed(1, ""),
        );
        volume(true).ensure(&r, "10.0.0.9").await.unwrap();
        assert!(
            r.calls()
                .iter()
                .any(|c| c.contains("replica 3 arbiter 1 10.0.0.1:/srv/b")),
            "{:?}",
            r.calls()
        );

        let r = RecordedRunner::default().answer(
            "gluster --mode=script volume info",
            CommandOutput::ok("Volume Name: media\nStatus: Started\n"),
        );
        volume(false).ensure(&r, "10.0.0.1").await.unwrap();
        assert!(
            !r.calls()
                .iter()
                .any(|c| c.contains("create") || c.contains("start")),
            "{:?}",
            r.calls()
        );
    }

    #[tokio::test]
    async fn a_refused_create_names_the_command_and_the_reason() {
        let r = RecordedRunner::default()
            .answer("gluster --mode=script volume info", CommandOutput::failed(1, ""))
            .answer("gluster --mode=script volume create", CommandOutput::failed(1, "volume create: media: failed: Brick may be containing or be contained by an existing brick"));
        let err = volume(false).ensure(&r, "10.0.0.1").await.unwrap_err();
        assert!(err.to_string().contains("existing brick"), "{err}");
        assert!(!r.calls().iter().any(|c| c.contains("volume start")));
    }

    #[tokio::test]
    async fn heal_pending_sums_the_bricks() {
        let r = RecordedRunner::default().answer(
            "gluster --mode=script volume heal",
            CommandOutput::ok("Brick a\nTotal Number of entries: 2\nBrick b\nTotal Number of entries: 0\nBrick c\nTotal Number of entries: 3\n"),
        );
        assert_eq!(volume(false).heal_pending(&r).await.unwrap(), 5);
    }
}
