//! A real, minimal Ceph for the lab: 1 monitor, 1 manager, 3 OSDs (memstore: 1 GiB
//! of RAM each, no disks) and 1 MDS, all in the storage host's namespace on the lab's
//! storage network ([`crate::netns::Network::add_storage_network`]), with the pool
//! `rbd` and the file system `cephfs`, and one client identity for quorate
//! (`client.quorate`: RBD in `rbd`, CephFS, and adding other clients to the OSD
//! blocklist and removing them). Ceph's own tools from Debian (`ceph-mon`,
//! `ceph-osd`, …) do the work; nothing is written outside the lab's directory, and the
//! daemons die with the namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::netns::STORAGE_SERVER;

/// A running Ceph.
#[derive(Debug)]
pub struct Ceph {
    /// Its directory (config, keyrings, daemon data, logs).
    pub dir: PathBuf,
    /// The storage host's namespace, where the daemons run.
    pub host: String,
}

/// Why Ceph cannot run here, if it cannot (its packages are missing).
#[must_use]
pub fn unavailable() -> Option<String> {
    for tool in [
        "ceph-mon",
        "ceph-osd",
        "ceph-mgr",
        "ceph-mds",
        "rbd",
        "ceph-fuse",
        "rbd-fuse",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Some(format!(
                "{tool} is not installed (apt-get install ceph-mon ceph-mgr ceph-osd ceph-mds ceph-common ceph-fuse rbd-fuse; scripts/test.sh does this)"
            ));
        }
    }
    None
}

fn random_uuid() -> String {
    let hex: String = (0..32)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
        .collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

fn sh(what: &str, c: &mut Command) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// `client.quorate`'s monitor capabilities: RBD's profile and the right to blocklist.
const QUORATE_MON_CAPS: &str = "profile rbd, allow r, allow command \"osd blocklist\"";

/// `client.quorate`'s capabilities with `mon` on the monitors: RBD in the pool `rbd`,
/// CephFS's data pool.
fn quorate_caps(mon: &str) -> [&str; 8] {
    [
        "mon",
        mon,
        "mds",
        "allow rw",
        "mgr",
        "profile rbd pool=rbd",
        "osd",
        "profile rbd pool=rbd, allow rw pool=cephfs.cephfs.data",
    ]
}

impl Ceph {
    /// Gives `client.quorate` the right to blocklist other clients, or takes it (its
    /// monitor capability becomes `allow r`: `profile rbd` alone includes
    /// blocklisting, which RBD uses to break a dead owner's exclusive lock).
    ///
    /// # Errors
    /// The `ceph auth caps` command fails.
    pub fn allow_quorate_blocklisting(&self, allowed: bool) -> Result<(), String> {
        let mon = if allowed { QUORATE_MON_CAPS } else { "allow r" };
        let mut args = vec!["auth", "caps", "client.quorate"];
        args.extend(quorate_caps(mon));
        self.admin(&args).map(drop)
    }

    /// The config file every client reads (`-c`).
    #[must_use]
    pub fn conf(&self) -> PathBuf {
        self.dir.join("ceph.conf")
    }

    /// Client `name`'s keyring.
    #[must_use]
    pub fn keyring(&self, name: &str) -> PathBuf {
        self.dir
            .join("keyring")
            .join(format!("ceph.client.{name}.keyring"))
    }

    /// A command run in the storage host's namespace.
    fn on_host(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.host))
            .arg("--")
            .arg(program);
        c
    }

    /// The `ceph` CLI as client.admin; its stdout.
    ///
    /// # Errors
    /// It fails.
    pub fn admin(&self, args: &[&str]) -> Result<String, String> {
        let mut c = self.on_host("ceph");
        c.arg("-c")
            .arg(self.conf())
            .args(["--connect-timeout", "15"])
            .args(args);
        sh(&format!("ceph {}", args.join(" ")), &mut c)
    }

    /// `rbd` as client.admin; its stdout.
    ///
    /// # Errors
    /// It fails.
    pub fn rbd(&self, args: &[&str]) -> Result<String, String> {
        let mut c = self.on_host("rbd");
        c.arg("-c").arg(self.conf()).args(args);
        sh(&format!("rbd {}", args.join(" ")), &mut c)
    }

    fn wait(
        &self,
        what: &str,
        limit: Duration,
        mut ok: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let start = Instant::now();
        while !ok() {
            if start.elapsed() > limit {
                let status = self.admin(&["-s"]).unwrap_or_else(|e| e);
                return Err(format!("Ceph: {what} not within {limit:?}:\n{status}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    /// Bootstraps and starts the daemons in `host` (on the storage network), their
    /// data under `dir`; returns once the cluster is healthy with every PG clean.
    ///
    /// # Errors
    /// A Ceph tool fails, or the cluster does not become healthy within 2 minutes.
    pub fn start(host: &str, dir: &Path) -> Result<Self, String> {
        let ceph = Self {
            dir: dir.to_owned(),
            host: host.to_owned(),
        };
        for sub in [
            "run",
            "log",
            "crash",
            "keyring",
            "mon/ceph-a",
            "mgr/ceph-x",
            "mds/ceph-a",
        ] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
        }
        let d = dir.display();
        let fsid = random_uuid();
        std::fs::write(
            ceph.conf(),
            format!(
                "[global]
fsid = {fsid}
mon initial members = a
mon host = [v2:{STORAGE_SERVER}:3300,v1:{STORAGE_SERVER}:6789]
public network = 10.87.0.0/24
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
run dir = {d}/run
log file = {d}/log/$cluster-$name.log
pid file = {d}/run/$cluster-$name.pid
crash dir = {d}/crash
exporter sock dir = {d}/run
osd pool default size = 3
osd pool default min size = 2
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool delete = true
mon data avail warn = 2
mon data avail crit = 1
mgr initial modules = iostat
[mon]
mon data = {d}/mon/$cluster-$id
keyring = $mon_data/keyring
[mgr]
mgr data = {d}/mgr/$cluster-$id
keyring = $mgr_data/keyring
[osd]
osd data = {d}/osd/$cluster-$id
keyring = $osd_data/keyring
osd objectstore = memstore
memstore device bytes = 1073741824
osd memory target = 939524096
osd crush update on start = true
[mds]
mds data = {d}/mds/$cluster-$id
keyring = $mds_data/keyring
mds cache memory limit = 268435456
[client]
keyring = {d}/keyring/$cluster.$name.keyring
admin socket = {d}/run/$cluster-$name.$pid.asok
log file = {d}/log/$cluster-$name.log
"
            ),
        )
        .map_err(|e| e.to_string())?;
        let conf = ceph.conf();
        let tool = |program: &str, args: &[&str]| {
            let mut c = Command::new(program);
            c.args(args);
            sh(program, &mut c)
        };
        let bootstrap = dir.join("mon-bootstrap.keyring");
        let admin = ceph.keyring("admin");
        let (bootstrap_s, admin_s) = (
            bootstrap.to_string_lossy().into_owned(),
            admin.to_string_lossy().into_owned(),
        );
        tool(
            "ceph-authtool",
            &[
                "--create-keyring",
                &bootstrap_s,
                "--gen-key",
                "-n",
                "mon.",
                "--cap",
                "mon",
                "allow *",
            ],
        )?;
        tool(
            "ceph-authtool",
            &[
                "--create-keyring",
                &admin_s,
                "--gen-key",
                "-n",
                "client.admin",
                "--cap",
                "mon",
                "allow *",
                "--cap",
                "osd",
                "allow *",
                "--cap",
                "mds",
                "allow *",
                "--cap",
                "mgr",
                "allow *",
            ],
        )?;
        tool(
            "ceph-authtool",
            &[&bootstrap_s, "--import-keyring", &admin_s],
        )?;
        let monmap = dir.join("monmap").to_string_lossy().into_owned();
        tool(
            "monmaptool",
            &[
                "--create",
                "--fsid",
                &fsid,
                "--addv",
                "a",
                &format!("[v2:{STORAGE_SERVER}:3300,v1:{STORAGE_SERVER}:6789]"),
                &monmap,
            ],
        )?;
        let daemon = |program: &str, args: &[&str]| {
            let mut c = ceph.on_host(program);
            c.arg("-c").arg(&conf).args(args);
            sh(program, &mut c)
        };
        daemon(
            "ceph-mon",
            &[
                "--mkfs",
                "-i",
                "a",
                "--monmap",
                &monmap,
                "--keyring",
                &bootstrap_s,
            ],
        )?;
        daemon("ceph-mon", &["-i", "a"])?;
        ceph.wait("the monitor answering", Duration::from_secs(30), || {
            ceph.admin(&["mon", "stat"]).is_ok()
        })?;
        let mgr_keyring = dir
            .join("mgr/ceph-x/keyring")
            .to_string_lossy()
            .into_owned();
        ceph.admin(&[
            "auth",
            "get-or-create",
            "mgr.x",
            "mon",
            "allow profile mgr",
            "osd",
            "allow *",
            "mds",
            "allow *",
            "-o",
            &mgr_keyring,
        ])?;
        daemon("ceph-mgr", &["-i", "x"])?;
        for i in 0..3 {
            let id = i.to_string();
            let osd_dir = dir.join(format!("osd/ceph-{i}"));
            std::fs::create_dir_all(&osd_dir).map_err(|e| e.to_string())?;
            let uuid = random_uuid();
            let key = tool("ceph-authtool", &["--gen-print-key"])?
                .trim()
                .to_owned();
            let keyring = osd_dir.join("keyring").to_string_lossy().into_owned();
            tool(
                "ceph-authtool",
                &[
                    "--create-keyring",
                    &keyring,
                    "-n",
                    &format!("osd.{i}"),
                    "--add-key",
                    &key,
                ],
            )?;
            let secret = dir.join(format!("osd-{i}.json"));
            std::fs::write(&secret, format!("{{\"cephx_secret\": \"{key}\"}}"))
                .map_err(|e| e.to_string())?;
            ceph.admin(&["osd", "new", &uuid, &id, "-i", &secret.to_string_lossy()])?;
            daemon("ceph-osd", &["-i", &id, "--mkfs", "--osd-uuid", &uuid])?;
            daemon("ceph-osd", &["-i", &id])?;
        }
        let mds_keyring = dir
            .join("mds/ceph-a/keyring")
            .to_string_lossy()
            .into_owned();
        ceph.admin(&[
            "auth",
            "get-or-create",
            "mds.a",
            "mon",
            "allow profile mds",
            "osd",
            "allow rwx",
            "mds",
            "allow",
            "mgr",
            "allow profile mds",
            "-o",
            &mds_keyring,
        ])?;
        daemon("ceph-mds", &["-i", "a"])?;
        ceph.wait("3 OSDs up", Duration::from_secs(90), || {
            ceph.admin(&["osd", "stat", "-f", "json"])
                .is_ok_and(|s| s.contains("\"num_up_osds\":3"))
        })?;
        ceph.admin(&["osd", "pool", "create", "rbd", "8", "8"])?;
        ceph.rbd(&["pool", "init", "rbd"])?;
        ceph.admin(&["fs", "volume", "create", "cephfs"])?;
        ceph.admin(&["fs", "set", "cephfs", "standby_count_wanted", "0"])?;
        ceph.wait("CephFS active", Duration::from_secs(60), || {
            ceph.admin(&["fs", "status", "cephfs"])
                .is_ok_and(|s| s.contains("active"))
        })?;
        let client = ceph.keyring("quorate").to_string_lossy().into_owned();
        let mut args = vec!["auth", "get-or-create", "client.quorate"];
        args.extend(quorate_caps(QUORATE_MON_CAPS));
        args.extend(["-o", &client]);
        ceph.admin(&args)?;
        ceph.wait("HEALTH_OK", Duration::from_secs(120), || {
            ceph.admin(&["health"])
                .is_ok_and(|s| s.starts_with("HEALTH_OK"))
        })?;
        Ok(ceph)
    }
}
