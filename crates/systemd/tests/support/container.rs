//! A real systemd (PID 1) for tests, without a host systemd: the host's own root
//! filesystem booted through a throw-away overlay (lower = `/` read-only, upper = tmpfs)
//! with `systemd-nspawn`, in its own network namespace, its D-Bus socket bind-mounted
//! out so that host processes reach its manager with
//! `DBUS_SYSTEM_BUS_ADDRESS=unix:path=<dir>/dbus/system_bus_socket`.
//! (The recipe is ../shared/substrate/systemd-nspawn-overlay.sh.)
//!
//! The guard powers the container off, unmounts and removes everything on drop, also
//! when the test fails.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct SystemdContainer {
    pub name: String,
    pub dir: PathBuf,
    nspawn: Option<Child>,
    pid1: u32,
    mounted: Vec<PathBuf>,
    /// The cgroup subtrees made for it (one per hierarchy), removed on drop.
    cgroups: Vec<PathBuf>,
}

/// The hierarchies a container gets a subtree of its own in: without a host systemd,
/// every container started with --keep-unit would otherwise share one cgroup tree and
/// their systemds would not honour KillMode (../shared/substrate/README.md).
const CGROUP_HIERARCHIES: [&str; 2] = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"];

/// Removes a cgroup subtree, deepest directories first.
fn remove_cgroup_tree(dir: &Path) {
    let _ = Command::new("find")
        .arg(dir)
        .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
        .stderr(Stdio::null())
        .status();
}

/// Why containers cannot be booted here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !nix_is_root() {
        return Some("needs root (mounts and systemd-nspawn)".into());
    }
    for tool in ["systemd-nspawn", "nsenter", "dbus-daemon"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Some(format!(
                "{tool} is missing (apt-get install systemd-container dbus; scripts/test.sh does this)"
            ));
        }
    }
    if !Path::new("/lib/systemd/systemd").exists() {
        return Some("no /lib/systemd/systemd (apt-get install systemd)".into());
    }
    None
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

/// Removes containers left by test processes that died without dropping their guard
/// (SIGKILL, abort): their systemd, mounts and directories.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/var/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix("quorate-sd-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let root = entry.path().join("root");
        // The container's PID 1 has that root: find it through /proc/*/root.
        for proc_entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            if std::fs::read_link(proc_entry.path().join("root")).is_ok_and(|r| r == root) {
                let _ = Command::new("kill")
                    .args(["-KILL", &proc_entry.file_name().to_string_lossy()])
                    .status();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for dir in [root, entry.path().join("rw")] {
            let _ = Command::new("umount").arg("-l").arg(&dir).status();
        }
        let _ = std::fs::remove_dir_all(entry.path());
        for h in CGROUP_HIERARCHIES {
            remove_cgroup_tree(&Path::new(h).join(&name));
        }
    }
}

impl SystemdContainer {
    /// Boots a container with `units` (file name, contents) installed in
    /// /etc/systemd/system, and each of `binds` bind-mounted at the same path inside.
    pub fn boot(units: &[(&str, String)], binds: &[&Path]) -> Self {
        Self::boot_in(units, binds, None)
    }

    /// [`boot`](Self::boot) in the network namespace `netns` (`ip netns` name) instead
    /// of a private one of its own.
    pub fn boot_in(units: &[(&str, String)], binds: &[&Path], netns: Option<&str>) -> Self {
        remove_stale();
        let name = format!(
            "quorate-sd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = PathBuf::from("/var/tmp").join(&name);
        let mut me = Self {
            name: name.clone(),
            dir: dir.clone(),
            nspawn: None,
            pid1: 0,
            mounted: Vec::new(),
            cgroups: Vec::new(),
        };
        let (rw, root) = (dir.join("rw"), dir.join("root"));
        for d in [&rw, &root, &dir.join("dbus")] {
            std::fs::create_dir_all(d).unwrap();
        }
        assert!(run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m", "quorate-sd"])
            .arg(&rw))
        .status
        .success());
        me.mounted.push(rw.clone());
        std::fs::create_dir_all(rw.join("upper")).unwrap();
        std::fs::create_dir_all(rw.join("work")).unwrap();
        let options = format!(
            "lowerdir=/,upperdir={},workdir={}",
            rw.join("upper").display(),
            rw.join("work").display()
        );
        assert!(run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&root))
        .status
        .success());
        me.mounted.push(root.clone());
        // Everything below lands in the tmpfs upper layer, never on the host.
        let id = run(Command::new("systemd-id128").arg("new"));
        std::fs::write(root.join("etc/machine-id"), &id.stdout).unwrap();
        let units_dir = root.join("etc/systemd/system");
        std::fs::create_dir_all(&units_dir).unwrap();
        std::fs::write(
            units_dir.join("quorate-test.target"),
            "[Unit]\nDescription=quorate test target\nRequires=basic.target dbus.socket\nAfter=basic.target\nAllowIsolate=yes\n",
        )
        .unwrap();
        for (file, contents) in units {
            std::fs::write(units_dir.join(file), contents).unwrap();
        }
        // Keep the boot small and offline.
        for unit in [
            "systemd-timesyncd.service",
            "getty@tty1.service",
            "console-getty.service",
            "apt-daily.timer",
            "apt-daily-upgrade.timer",
            "dpkg-db-backup.timer",
            "e2scrub_all.timer",
            "fstrim.timer",
            "man-db.timer",
        ] {
            let _ = std::os::unix::fs::symlink("/dev/null", units_dir.join(unit));
        }
        // Its own cgroup subtrees: a shell moves itself in, then becomes nspawn.
        let mut enter = String::new();
        for h in CGROUP_HIERARCHIES {
            let sub = Path::new(h).join(&name);
            if Path::new(h).join("cgroup.procs").exists() {
                std::fs::create_dir_all(&sub).unwrap();
                enter.push_str(&format!("echo $$ > {}/cgroup.procs && ", sub.display()));
                me.cgroups.push(sub);
            }
        }
        let mut nspawn = Command::new("sh");
        nspawn
            .args(["-c", &format!("{enter}exec \"$@\""), "sh", "systemd-nspawn"])
            .args(["-q", "-D"])
            .arg(&root)
            .args(["-M", &name, "--register=no", "--keep-unit"])
            .arg(match netns {
                Some(ns) => format!("--network-namespace-path=/run/netns/{ns}"),
                None => "--private-network".to_owned(),
            })
            .arg(format!("--bind={}:/run/dbus", dir.join("dbus").display()));
        for bind in binds {
            nspawn.arg(format!("--bind={}", bind.display()));
        }
        let console = std::fs::File::create(dir.join("console.log")).unwrap();
        let child = nspawn
            .args(["-b", "--", "--unit=quorate-test.target"])
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .unwrap();
        let nspawn_pid = child.id();
        me.nspawn = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while me.pid1 == 0 {
            assert!(
                Instant::now() < deadline,
                "no PID 1 in {name}: {}",
                me.console()
            );
            let out =
                run(Command::new("pgrep").args(["-P", &nspawn_pid.to_string(), "-x", "systemd"]));
            me.pid1 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(100));
        }
        loop {
            let state = me.systemctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not boot ({state}): {}",
                me.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    /// The D-Bus address of its system bus, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn bus(&self) -> String {
        format!("unix:path={}/dbus/system_bus_socket", self.dir.display())
    }

    /// `systemctl` inside the container (the host's refuses a foreign bus).
    pub fn systemctl(&self, args: &[&str]) -> Output {
        run(Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a", "--", "systemctl"])
            .args(args))
    }

    /// `systemctl is-active UNIT` inside, trimmed.
    pub fn is_active(&self, unit: &str) -> String {
        String::from_utf8_lossy(&self.systemctl(&["is-active", unit]).stdout)
            .trim()
            .to_owned()
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }
}

impl Drop for SystemdContainer {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            // nspawn turns SIGTERM into a clean poweroff of the container.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for path in self.mounted.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        for sub in &self.cgroups {
            // Whatever is left in it (a process the container's systemd did not reap)
            // goes first.
            for procs in [sub.join("cgroup.procs")] {
                for pid in std::fs::read_to_string(&procs).unwrap_or_default().lines() {
                    let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            remove_cgroup_tree(sub);
        }
        let _ = std::fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", self.name));
    }
}
