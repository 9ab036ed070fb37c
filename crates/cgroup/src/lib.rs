//! A workload's own cgroup v2 directory, so that nothing it forks can escape a stop
//! or a fence: a process group is left with one `setsid()`, a cgroup is not.
//!
//! The directory is created under the cgroup this process runs in (under systemd: the
//! agent unit's own cgroup, which the NixOS module delegates), named
//! `quorate.<node>.<service>.<n>`. The workload enters it before it runs any code of
//! its own: the driver starts it through `/bin/sh -c 'echo $$ > DIR/cgroup.procs &&
//! exec "$@"'`, so the pid stays the workload's and every child is born inside.
//!
//! Killing writes `1` to `cgroup.kill` (Linux ≥ 5.14), falling back to SIGKILL of
//! every pid in `cgroup.procs`; a stop is *confirmed* once `cgroup.procs` is empty.
//! Where no writable cgroup v2 hierarchy exists, [`Cgroup::create`] fails and callers
//! fall back to the process group alone (and say so).
//!
//! **Architecture Invariant:** knows nothing of quorate; the fence depends on it, so it
//! must keep working when everything else on the node is stuck (plain file I/O only).

use std::path::{Path, PathBuf};

/// Prefix of every directory this crate creates.
pub const PREFIX: &str = "quorate.";

/// Where cgroup2 is mounted, from `/proc/self/mountinfo` (`/sys/fs/cgroup` on a
/// unified host, `/sys/fs/cgroup/unified` on a hybrid one).
#[must_use]
pub fn mount_point() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <options> ... - <fstype> ..."
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The cgroup v2 directory this process runs in.
#[must_use]
pub fn own_dir() -> Option<PathBuf> {
    let mount = mount_point()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(path.trim().trim_start_matches('/')))
}

/// The directory under which one agent creates its workloads' cgroups:
/// `<own cgroup>/quorate.<node>.<tag>` (created if missing). `tag` tells agents of the
/// same node name apart on one host (tests, the lab); the agent passes a digest of its
/// data dir. Killing and removing this directory ends every workload of that agent.
///
/// # Errors
/// No writable cgroup v2 hierarchy.
pub fn agent_parent(node: &str, tag: &str) -> Result<PathBuf, Unavailable> {
    let own = own_dir().ok_or_else(|| Unavailable("no cgroup v2 hierarchy is mounted".into()))?;
    let dir = own.join(format!("{PREFIX}{}.{}", sanitize(node), sanitize(tag)));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Unavailable(format!("cannot create {}: {e}", dir.display()))),
    }
    if dir.join("cgroup.procs").exists() {
        Ok(dir)
    } else {
        Err(Unavailable(format!(
            "{} is not a cgroup v2 directory",
            own.display()
        )))
    }
}

/// Kills everything in the cgroup tree at `dir` and removes it, deepest first, waiting
/// up to 5 s per directory for killed processes to be reaped (until then they keep it
/// busy). For a power-off of a whole agent (the sandbox). Returns whether it is gone.
pub fn remove_tree(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let cg = Cgroup {
        dir: dir.to_path_buf(),
    };
    for _ in 0..500 {
        cg.kill();
        if cg.remove() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// One workload's cgroup directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    dir: PathBuf,
}

/// Why a cgroup could not be made.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Cgroup {
    /// Creates a fresh cgroup for `service` of `node` under this process's own cgroup.
    ///
    /// # Errors
    /// No cgroup v2 hierarchy, or it is not writable here.
    pub fn create(node: &str, service: &str) -> Result<Self, Unavailable> {
        let parent =
            own_dir().ok_or_else(|| Unavailable("no cgroup v2 hierarchy is mounted".into()))?;
        Self::create_in(&parent, node, service)
    }

    /// Creates a fresh cgroup for `service` of `node` under `parent`.
    ///
    /// # Errors
    /// `parent` is not a writable cgroup v2 directory.
    pub fn create_in(parent: &Path, node: &str, service: &str) -> Result<Self, Unavailable> {
        let base = format!("{PREFIX}{}.{}.", sanitize(node), sanitize(service));
        for n in 0..10_000u32 {
            let dir = parent.join(format!("{base}{}", std::process::id().wrapping_add(n)));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    if !dir.join("cgroup.procs").exists() {
                        let _ = std::fs::remove_dir(&dir);
                        return Err(Unavailable(format!(
                            "{} is not a cgroup v2 directory",
                            parent.display()
                        )));
                    }
                    return Ok(Self { dir });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Unavailable(format!(
                        "cannot create a cgroup under {}: {e}",
                        parent.display()
                    )))
                }
            }
        }
        Err(Unavailable("no free cgroup name".into()))
    }

    /// The cgroup at `dir` (as recorded), if it still exists.
    #[must_use]
    pub fn open(dir: &Path) -> Option<Self> {
        dir.join("cgroup.procs").exists().then(|| Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Its directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shell words that start a program inside this cgroup: `/bin/sh -c '…' sh`,
    /// to be followed by the program and its arguments.
    #[must_use]
    pub fn exec_prefix(&self) -> Vec<String> {
        vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            "echo $$ > \"$0\" || exit 126; shift; exec \"$@\"".to_owned(),
            self.dir.join("cgroup.procs").to_string_lossy().into_owned(),
            "--".to_owned(),
        ]
    }

    /// The pids in it now.
    #[must_use]
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// True when no process is left in it (a removed cgroup is empty).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// SIGKILLs everything in it, at once: `cgroup.kill`, else every listed pid.
    pub fn kill(&self) {
        kill_dir(&self.dir);
    }

    /// Removes the directory once it is empty; returns whether it is gone.
    pub fn remove(&self) -> bool {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }
}

/// SIGKILLs everything in the cgroup at `dir` (see [`Cgroup::kill`]). Works on a path
/// alone, for the fence.
pub fn kill_dir(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), b"1").is_ok() {
        return;
    }
    // Before Linux 5.14: kill what is listed until nothing new appears.
    for _ in 0..8 {
        let pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids.into_iter().filter(|p| *p > 1) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// True while any non-zombie process belongs to process group `pgid`.
#[must_use]
pub fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // Fields after the command name: state, ppid, pgrp, …
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        let pgrp = f.nth(1).and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(pgid) && state != "Z" && state != "X"
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Root on a host with cgroup v2: the real thing. Elsewhere the test says so.
    fn cgroup_or_skip(service: &str) -> Option<Cgroup> {
        match Cgroup::create("ntest", service) {
            Ok(c) => Some(c),
            Err(e) => {
                assert!(
                    std::env::var("QUORATE_TEST_NO_SKIP").map_or(true, |v| v != "1"),
                    "cgroup v2 is required here (QUORATE_TEST_NO_SKIP): {e}"
                );
                eprintln!("SKIPPED: no writable cgroup v2: {e}");
                None
            }
        }
    }

    #[test]
    fn a_setsid_child_dies_with_its_cgroup() {
        let Some(cg) = cgroup_or_skip(&format!("t{}", std::process::id())) else {
            return;
        };
        let mut argv = cg.exec_prefix();
        argv.extend([
            "/bin/sh".into(),
            "-c".into(),
            "setsid sleep 300 & sleep 300".into(),
        ]);
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .spawn()
            .unwrap();
        let mut pids = Vec::new();
        for _ in 0..200 {
            pids = cg.pids();
            if pids.len() >= 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            pids.len() >= 3,
            "the shell, its child and the escaped child are inside: {pids:?}"
        );
        assert!(
            pids.contains(&i32::try_from(child.id()).unwrap()),
            "the pid stayed the workload's"
        );
        cg.kill();
        child.wait().unwrap();
        for _ in 0..200 {
            if cg.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(cg.is_empty(), "everything died, the escaped child too");
        assert!(cg.remove());
        assert!(Cgroup::open(cg.dir()).is_none());
    }

    #[test]
    fn the_mount_point_is_found_or_absent_not_wrong() {
        if let Some(m) = mount_point() {
            assert!(m.join("cgroup.procs").exists(), "{}", m.display());
        }
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("a/b c.d"), "a_b_c_d");
    }
}
