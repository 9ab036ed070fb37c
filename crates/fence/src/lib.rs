//! The fence process (`quorate fence`), DESIGN.md's "Fencing protocol".
//!
//! The agent starts it with a pipe on its stdin and writes one line after every lease
//! renewal and every change of what runs:
//!
//! ```text
//! lease <deadline, CLOCK_BOOTTIME nanoseconds>
//! groups <service>=<pgid> <service>=<pgid> …
//! cgroups <service>=<cgroup v2 directory> …
//! unitcgroups <service>=<a unit's cgroup v2 directory> …
//! units <service>=<unit>/<main pid> <service>=<unit>/<main pid> …
//! ips <service>=<interface>,<addr/prefix> …
//! starting <service>=<unit or nothing>
//! ```
//!
//! `starting` comes before the agent starts a service; the next `groups`/`units` line
//! settles it. If the deadline passes first (the agent died in between), the fence also
//! kills every process of this node that carries `QUORATE_SERVICE=<service>` in its
//! environment (and stops the unit, if any), so nothing the agent started escapes.
//!
//! When the deadline passes (agent paused, hung, partitioned) the fence SIGKILLs every
//! listed process group and every listed cgroup (`cgroup.kill`: nothing a workload
//! forked escapes, not even after `setsid()`), then asks systemd over D-Bus to SIGKILL and stop every listed
//! unit (retrying every second until systemd confirms they are down), removes the
//! services' floating addresses (rtnetlink `RTM_DELADDR`, no `ip` forked) so that the node stops answering for
//! them, and appends a
//! `fence` record per service to the witness journal when one is configured
//! (`QUORATE_WITNESS_JOURNAL`): a SIGKILLed workload cannot log its own stop. When the pipe closes (the agent died) it keeps waiting for
//! the deadline, fences, and exits. It does no allocation on the path from deadline to
//! kill of process groups (units need D-Bus, which allocates; they come second).
//! `QUORATE_UNSAFE_NO_FENCE=1` (tests only, never in the spec) disables the kills.
//!
//! With a watchdog device (`--watchdog /dev/watchdog`) it pets the device every
//! second. After fencing it keeps petting only once every killed group is confirmed
//! gone (within 5 s); otherwise it stops, and the hardware resets the node. On a clean
//! exit it writes the magic `V` so the device disarms.
//!
//! **Architecture Invariant:** depends on nothing of quorate but the D-Bus client of
//! systemd (`quorate-systemd`); it must keep working when everything else on the node
//! is stuck.

pub mod netlink;

use std::io::Write;
use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::Pid;

/// Environment variable that disables fencing (tests only).
pub const UNSAFE_NO_FENCE: &str = "QUORATE_UNSAFE_NO_FENCE";

/// Environment variable naming the witness journal.
pub const WITNESS_JOURNAL: &str = "QUORATE_WITNESS_JOURNAL";

/// Most workloads one node fences (more are ignored, with a warning).
pub const MAX_GROUPS: usize = 4096;

/// CLOCK_BOOTTIME now, in nanoseconds (shared by every process on the machine).
///
/// Not CLOCK_MONOTONIC: that one stops while the machine is suspended, so a node
/// waking from suspend would find its lease deadline still ahead although the leader
/// expired it long ago. CLOCK_BOOTTIME counts the suspended time too.
#[must_use]
pub fn mono_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        u64::try_from(t.tv_sec())
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.tv_nsec()).unwrap_or(0))
    })
}

/// True when fencing is disabled by the test-only environment variable.
#[must_use]
pub fn disabled() -> bool {
    std::env::var(UNSAFE_NO_FENCE).is_ok_and(|v| v == "1")
}

/// Appends one record to the witness journal, if configured.
pub fn witness(kind: &str, node: &str, service: &str, pid: i32) {
    if let Ok(path) = std::env::var(WITNESS_JOURNAL) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write(2) per record: O_APPEND keeps records whole across processes.
            let _ =
                f.write_all(format!("{kind} {} {node} {service} {pid}\n", mono_ns()).as_bytes());
        }
    }
}

struct Fence {
    node: String,
    deadline: Option<u64>,
    names: Vec<String>,
    pgids: Vec<i32>,
    armed: bool,
    /// Groups killed and not yet confirmed gone, and since when (monotonic ns).
    unconfirmed: Vec<i32>,
    unconfirmed_since: u64,
    /// Exclusive systemd units: (service, unit, main pid as systemd reported it).
    units: Vec<(String, String, i32)>,
    /// Units fenced and not yet confirmed down by systemd.
    unconfirmed_units: Vec<String>,
    /// Floating addresses of exclusive services: (interface, addr/prefix).
    ips: Vec<(String, String)>,
    /// Cgroups of exclusive process workloads: (service, directory).
    cgroups: Vec<(String, std::path::PathBuf)>,
    /// Cgroups of exclusive units (systemd's): killed at once, removed by systemd.
    unit_cgroups: Vec<(String, std::path::PathBuf)>,
    /// Cgroups killed and not yet confirmed empty, and whether they are ours to
    /// remove once empty (a unit's belongs to systemd).
    unconfirmed_cgroups: Vec<(std::path::PathBuf, bool)>,
    /// Asks systemd to stop units, off the fence's loop.
    unit_stops: UnitStops,
    /// Services the agent announced it is starting, not yet in a groups/units line:
    /// (service, unit or empty).
    starting: Vec<(String, String)>,
}

/// How long killed groups may take to disappear before the watchdog is left to fire.
const CONFIRM_NS: u64 = 5_000_000_000;

pub use quorate_cgroup::group_alive;

/// Whether to keep petting the watchdog: yes, unless killed groups are still
/// alive after [`CONFIRM_NS`].
#[must_use]
pub fn keep_petting(unconfirmed: bool, unconfirmed_since: u64, now: u64) -> bool {
    !unconfirmed || now.saturating_sub(unconfirmed_since) < CONFIRM_NS
}

impl Fence {
    /// A fence for `node` with nothing to fence yet; `armed = false` only logs.
    fn new(node: &str, armed: bool) -> Self {
        Self {
            node: node.to_string(),
            deadline: None,
            names: Vec::with_capacity(64),
            pgids: Vec::with_capacity(64),
            armed,
            unconfirmed: Vec::with_capacity(64),
            unconfirmed_since: 0,
            units: Vec::new(),
            unconfirmed_units: Vec::new(),
            ips: Vec::new(),
            cgroups: Vec::new(),
            unit_cgroups: Vec::new(),
            unconfirmed_cgroups: Vec::new(),
            unit_stops: UnitStops::default(),
            starting: Vec::new(),
        }
    }

    fn apply(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("lease") => {
                if let Some(d) = words.next().and_then(|w| w.parse().ok()) {
                    self.deadline = Some(d);
                }
            }
            Some("starting") => {
                if let Some((service, unit)) = words.next().and_then(|w| w.split_once('=')) {
                    if self.starting.len() < MAX_GROUPS {
                        self.starting.push((service.to_owned(), unit.to_owned()));
                    }
                }
            }
            Some("ips") => {
                self.ips = words
                    .take(MAX_GROUPS)
                    .filter_map(|w| {
                        let (_, rest) = w.split_once('=')?;
                        let (interface, address) = rest.split_once(',')?;
                        Some((interface.to_owned(), address.to_owned()))
                    })
                    .collect();
            }
            Some(kind @ ("cgroups" | "unitcgroups")) => {
                let dirs = words
                    .take(MAX_GROUPS)
                    .filter_map(|w| {
                        let (service, dir) = w.split_once('=')?;
                        (!dir.is_empty()).then(|| (service.to_owned(), dir.into()))
                    })
                    .collect();
                if kind == "cgroups" {
                    self.cgroups = dirs;
                } else {
                    self.unit_cgroups = dirs;
                }
            }
            Some("units") => {
                self.units = words
                    .take(MAX_GROUPS)
                    .filter_map(|w| {
                        let (service, rest) = w.split_once('=')?;
                        let (unit, pid) = rest.rsplit_once('/')?;
                        let pid = pid.parse().ok()?;
                        (!unit.is_empty()).then(|| (service.to_owned(), unit.to_owned(), pid))
                    })
                    .collect();
            }
            Some("groups") => {
                // The agent lists what runs now: announced starts are settled.
                self.starting.clear();
                self.names.clear();
                self.pgids.clear();
                for word in words.take(MAX_GROUPS) {
                    if let Some((name, pgid)) = word.rsplit_once('=') {
                        if let Ok(pgid) = pgid.parse::<i32>() {
                            if pgid > 1 {
                                self.names.push(name.to_string());
                                self.pgids.push(pgid);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The deadline has passed: kill everything listed, all at once and without a
    /// D-Bus round trip on the way: process groups (no allocation before those kills),
    /// the workloads' cgroups and the units' cgroups, then the floating addresses go.
    /// systemd is told to stop the units afterwards, by a worker thread
    /// ([`UnitStops`]), which also confirms they are down.
    fn fire(&mut self) {
        if self.pgids.is_empty()
            && self.units.is_empty()
            && self.ips.is_empty()
            && self.starting.is_empty()
            && self.cgroups.is_empty()
        {
            return;
        }
        if self.armed {
            for pgid in &self.pgids {
                let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
            }
            for (_, dir) in self.cgroups.iter().chain(&self.unit_cgroups) {
                quorate_cgroup::kill_dir(dir);
            }
            self.unconfirmed_since = mono_ns();
            for (interface, address) in &self.ips {
                let outcome = match netlink::remove_address(interface, address) {
                    Ok(netlink::Removal::Removed) => "done".to_owned(),
                    Ok(netlink::Removal::WasNotThere) => "was not there".to_owned(),
                    Err(e) => format!("FAILED: {e}"),
                };
                eprintln!(
                    "quorate fence: lease of node {} expired: removed {address} from {interface} ({outcome})",
                    self.node
                );
            }
            self.unconfirmed_cgroups
                .extend(self.cgroups.iter().map(|(_, d)| (d.clone(), true)));
            self.unconfirmed_cgroups
                .extend(self.unit_cgroups.iter().map(|(_, d)| (d.clone(), false)));
            self.unconfirmed.extend_from_slice(&self.pgids);
            self.unconfirmed_units
                .extend(self.units.iter().map(|(_, unit, _)| unit.clone()));
            for (service, unit) in std::mem::take(&mut self.starting) {
                let killed = kill_service_processes(&self.node, &service);
                if !unit.is_empty() {
                    self.unconfirmed_units.push(unit.clone());
                }
                if killed > 0 || !unit.is_empty() {
                    witness("fence", &self.node, &service, 0);
                }
                eprintln!(
                    "quorate fence: lease of node {} expired while {service} was starting: killed {killed} process(es){}",
                    self.node,
                    if unit.is_empty() { String::new() } else { format!(", stopping {unit}") }
                );
            }
        }
        let what = if self.armed {
            "killed"
        } else {
            "UNSAFE: fencing disabled, left running"
        };
        for (name, pgid) in self.names.iter().zip(&self.pgids) {
            if self.armed {
                witness("fence", &self.node, name, *pgid);
            }
            eprintln!(
                "quorate fence: lease of node {} expired: {what} {name} (process group {pgid})",
                self.node
            );
        }
        for (name, unit, pid) in &self.units {
            if self.armed {
                witness("fence", &self.node, name, *pid);
            }
            eprintln!(
                "quorate fence: lease of node {} expired: {what} {name} (unit {unit})",
                self.node
            );
        }
        self.names.clear();
        self.pgids.clear();
        self.units.clear();
        self.ips.clear();
        self.cgroups.clear();
        self.unit_cgroups.clear();
    }

    /// Nothing is listed and nothing killed waits for confirmation.
    fn idle(&self) -> bool {
        self.pgids.is_empty()
            && self.units.is_empty()
            && self.ips.is_empty()
            && self.starting.is_empty()
            && self.cgroups.is_empty()
            && self.unconfirmed.is_empty()
            && self.unconfirmed_units.is_empty()
            && self.unconfirmed_cgroups.is_empty()
            && !self.unit_stops.in_flight
    }
}

/// SIGKILLs every process (and its process group) whose environment says it is
/// `service` of `node` (`QUORATE_SERVICE` and `QUORATE_NODE`, which the agent gives
/// every workload). Returns how many it found.
#[must_use = "how many were found tells whether anything ran"]
pub fn kill_service_processes(node: &str, service: &str) -> usize {
    let want_service = format!("QUORATE_SERVICE={service}");
    let want_node = format!("QUORATE_NODE={node}");
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if u32::try_from(pid).is_ok_and(|p| p == me) {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        if vars.contains(&want_service.as_bytes()) && vars.contains(&want_node.as_bytes()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            if pid > 1 {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}

/// The channels to and from the unit-stop worker thread.
type UnitStopWorker = (
    std::sync::mpsc::Sender<Vec<String>>,
    std::sync::mpsc::Receiver<Vec<String>>,
);

/// A worker thread that asks systemd to stop units and reports those it could not
/// confirm down, so that D-Bus (slow, or gone) never blocks the fence's loop.
#[derive(Debug, Default)]
struct UnitStops {
    worker: Option<UnitStopWorker>,
    /// A request is with the worker.
    in_flight: bool,
    /// When the last request was sent (CLOCK_BOOTTIME ns).
    sent_at: u64,
}

impl UnitStops {
    /// Hands `units` to the worker, unless a request is in flight or the last one was
    /// sent less than a second ago (then they come back as `Err`).
    fn request(&mut self, units: Vec<String>, now: u64) -> Result<(), Vec<String>> {
        if self.in_flight || (self.sent_at != 0 && now.saturating_sub(self.sent_at) < 1_000_000_000)
        {
            return Err(units);
        }
        if self.worker.is_none() {
            let (to_worker, requests) = std::sync::mpsc::channel::<Vec<String>>();
            let (answers, from_worker) = std::sync::mpsc::channel::<Vec<String>>();
            let spawned = std::thread::Builder::new()
                .name("unit-stops".into())
                .spawn(move || {
                    while let Ok(units) = requests.recv() {
                        if answers.send(stop_units(units)).is_err() {
                            return;
                        }
                    }
                });
            if spawned.is_err() {
                return Err(units);
            }
            self.worker = Some((to_worker, from_worker));
        }
        let Some((to_worker, _)) = &self.worker else {
            return Err(units);
        };
        match to_worker.send(units) {
            Ok(()) => {
                self.in_flight = true;
                self.sent_at = now;
                Ok(())
            }
            Err(e) => {
                self.worker = None;
                Err(e.0)
            }
        }
    }

    /// The units of the last request that systemd did not confirm down, once the
    /// worker has answered.
    fn poll(&mut self) -> Option<Vec<String>> {
        let (_, answers) = self.worker.as_ref()?;
        match answers.try_recv() {
            Ok(left) => {
                self.in_flight = false;
                Some(left)
            }
            Err(_) => None,
        }
    }
}

/// Asks systemd to SIGKILL and stop each unit; returns those not confirmed down (all of
/// them when systemd cannot be reached within a few seconds).
fn stop_units(units: Vec<String>) -> Vec<String> {
    if units.is_empty() {
        return units;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return units;
    };
    runtime.block_on(async {
        let attempt = async {
            let systemd = quorate_systemd::Systemd::connect().await.ok()?;
            let mut left = Vec::new();
            for unit in &units {
                let _ = systemd.kill(unit, Signal::SIGKILL as i32).await;
                let _ = systemd.stop(unit, std::time::Duration::from_secs(3)).await;
                match systemd.state(unit).await {
                    Ok(state) if !state.active.may_run() => {}
                    Err(quorate_systemd::SystemdError::UnknownUnit(_)) => {}
                    _ => left.push(unit.clone()),
                }
            }
            Some(left)
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), attempt)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| units.clone())
    })
}

/// Runs the fence for `node`, reading the agent's lines from stdin. Returns when the
/// agent is gone and nothing is left to fence. With `watchdog`, pets that device.
#[must_use]
pub fn run(node: &str, watchdog: Option<&std::path::Path>) -> i32 {
    // SIGTERM, SIGINT and SIGHUP are held back (blocked, never delivered): a
    // `systemctl stop/restart` of the agent, a Ctrl-C in its terminal or a closed
    // session must not end the fence before its deadline. Only SIGKILL ends it early,
    // and the agent that takes over sends that only once its own fence holds the
    // deadline.
    let mut held_back = nix::sys::signal::SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        held_back.add(signal);
    }
    if let Err(e) = held_back.thread_block() {
        eprintln!("quorate fence: cannot block SIGTERM ({e}): a stop of the agent's unit may end the fence early");
    }
    let mut dog = match watchdog {
        Some(path) => match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "quorate fence: cannot open the watchdog {}: {e}",
                    path.display()
                );
                return 2;
            }
        },
        None => None,
    };
    let mut last_pet = 0u64;
    let mut fence = Fence::new(node, !disabled());
    if !fence.armed {
        eprintln!("quorate fence: {UNSAFE_NO_FENCE}=1 — fencing is DISABLED (tests only)");
    }
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    // Raw reads into fixed buffers: no hidden read-ahead that poll(2) cannot see.
    let mut chunk = [0u8; 8192];
    let mut pending: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut agent_gone = false;
    loop {
        let now = mono_ns();
        if fence.deadline.is_some_and(|d| now >= d) {
            fence.fire();
        }
        if !fence.unconfirmed.is_empty() {
            fence.unconfirmed.retain(|g| group_alive(*g));
        }
        if !fence.unconfirmed_cgroups.is_empty() {
            // Killed again until empty (a fork in flight can land after cgroup.kill),
            // then removed.
            fence.unconfirmed_cgroups.retain(|(dir, ours)| {
                let Some(cg) = quorate_cgroup::Cgroup::open(dir) else {
                    return false;
                };
                if cg.is_empty() {
                    if *ours {
                        cg.remove();
                    }
                    return false;
                }
                cg.kill();
                true
            });
        }
        // systemd is asked off this loop; what it did not confirm is asked again after
        // a second.
        if let Some(left) = fence.unit_stops.poll() {
            fence.unconfirmed_units.extend(left);
        }
        if !fence.unconfirmed_units.is_empty() {
            let units = std::mem::take(&mut fence.unconfirmed_units);
            if let Err(units) = fence.unit_stops.request(units, now) {
                fence.unconfirmed_units = units;
            }
        }
        if let Some(dog) = dog.as_mut() {
            let unconfirmed = !fence.unconfirmed.is_empty()
                || !fence.unconfirmed_units.is_empty()
                || fence.unit_stops.in_flight
                || !fence.unconfirmed_cgroups.is_empty();
            let petting = keep_petting(unconfirmed, fence.unconfirmed_since, now);
            if petting && now.saturating_sub(last_pet) >= 1_000_000_000 {
                let _ = dog.write_all(b"1").and_then(|()| dog.flush());
                last_pet = now;
            } else if !petting && last_pet != u64::MAX {
                eprintln!("quorate fence: killed workloads of node {} are still alive after 5 s: no longer petting the watchdog, the node will be reset", fence.node);
                last_pet = u64::MAX;
            }
        }
        if agent_gone {
            if fence.idle() {
                // A clean end: disarm the watchdog (the magic close).
                if let Some(dog) = dog.as_mut() {
                    let _ = dog.write_all(b"V");
                }
                return 0;
            }
            if fence.deadline.is_none() {
                // Workloads but never a lease: nothing vouches for them.
                fence.fire();
                return 0;
            }
        }
        // Sleep until the deadline, or until the agent writes.
        let wait_ms = fence
            .deadline
            .map_or(1000, |d| d.saturating_sub(now) / 1_000_000 + 1)
            .min(1000);
        if agent_gone {
            std::thread::sleep(std::time::Duration::from_millis(wait_ms));
            continue;
        }
        let timeout = PollTimeout::try_from(i32::try_from(wait_ms).unwrap_or(1000))
            .unwrap_or(PollTimeout::NONE);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => {}
            Ok(_) => match nix::unistd::read(fd, &mut chunk) {
                Ok(0) | Err(_) => agent_gone = true,
                Ok(n) => {
                    pending.extend_from_slice(&chunk[..n]);
                    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                        if let Ok(line) = std::str::from_utf8(&pending[..end]) {
                            fence.apply(line);
                        }
                        pending.drain(..=end);
                    }
                }
            },
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_set_the_deadline_and_the_groups() {
        let mut f = Fence::new("n1", false);
        f.apply("lease 123\n");
        f.apply("starting web=\n");
        f.apply("starting hass=container@hass.service\n");
        assert_eq!(
            f.starting,
            vec![
                ("web".to_owned(), String::new()),
                ("hass".to_owned(), "container@hass.service".to_owned())
            ]
        );
        f.apply("ips web=eth0,10.0.0.5/24 bad=eth0 junk\n");
        assert_eq!(f.ips, vec![("eth0".to_owned(), "10.0.0.5/24".to_owned())]);
        f.apply("units web=nginx.service/17 hass=container@hass.service/0 bad=/3 nopid=x.service junk\n");
        assert_eq!(
            f.units,
            vec![
                ("web".to_owned(), "nginx.service".to_owned(), 17),
                ("hass".to_owned(), "container@hass.service".to_owned(), 0)
            ]
        );
        f.apply("groups web=4242 db=4343 junk bad=x init=1\n");
        assert_eq!(f.deadline, Some(123));
        assert_eq!(f.pgids, vec![4242, 4343]);
        assert_eq!(f.names, vec!["web", "db"]);
        f.apply("groups\n");
        assert!(f.pgids.is_empty());
    }

    #[test]
    fn a_service_announced_as_starting_is_killed_by_its_environment() {
        let service = format!("fence-test-{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("QUORATE_SERVICE", &service)
            .env("QUORATE_NODE", "nfence")
            .spawn()
            .unwrap();
        // Another node's process with the same service name is left alone.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .env("QUORATE_SERVICE", &service)
            .env("QUORATE_NODE", "nother")
            .spawn()
            .unwrap();
        let mut f = Fence::new("nfence", true);
        f.deadline = Some(0);
        f.apply(&format!("starting {service}=\n"));
        f.fire();
        let status = child.wait().unwrap();
        assert!(!status.success(), "the announced workload was killed");
        assert!(
            matches!(other.try_wait(), Ok(None)),
            "another node's process survived"
        );
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(f.starting.is_empty());
    }

    #[test]
    fn the_watchdog_is_left_to_fire_only_after_unconfirmed_kills() {
        assert!(keep_petting(false, 0, u64::MAX));
        assert!(keep_petting(true, 1_000, 1_000 + CONFIRM_NS - 1));
        assert!(!keep_petting(true, 1_000, 1_000 + CONFIRM_NS));
    }

    #[test]
    fn group_alive_sees_a_live_group_and_not_a_dead_one() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i32::try_from(child.id()).unwrap();
        assert!(group_alive(pgid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!group_alive(pgid));
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = mono_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(mono_ns() > a);
    }
}
