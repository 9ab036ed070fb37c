//! `quorate ceph bootstrap`: the one-time steps that turn the nodes of a `[ceph]`
//! spec into a running Ceph — keys, the first monitor map, every monitor's store,
//! manager and metadata server keys, OSD preparation, pools, file systems and the
//! `client.quorate` identity quorate's storage steps use. Run from any machine that
//! reaches the nodes through `--exec` (default `ssh root@{address}`), like `deploy`.
//!
//! Every step looks before it acts, so a second run (or a run after a failure half
//! way) does only what is missing and changes nothing that exists: a monitor store,
//! an OSD directory, a pool or a file system is never made twice, and the keys are
//! made once on the first monitor. Daemons are started with `--start` (default
//! `systemctl start ceph-{kind}-{id}`, the units NixOS's `services.ceph` defines from
//! what the quorate module wires); on a node where they already run that is a no-op.
//!
//! Each node's `/etc/ceph/ceph.conf` must already be the one `quorate render` writes
//! (the NixOS module installs it): bootstrap checks its fsid and refuses otherwise.

use std::time::{Duration, Instant};

use quorate_lock::Lock;
use quorate_spec::Spec;
use serde_json::json;

use crate::deploy::remote::{run_script, sh_quote, Target};
use crate::exit::Exit;

/// Where the Ceph files live on a node (NixOS's `services.ceph` layout).
const CONF: &str = "/etc/ceph/ceph.conf";
const ADMIN_KEYRING: &str = "/etc/ceph/ceph.client.admin.keyring";
const STATE: &str = "/var/lib/ceph";

/// How to reach the nodes and start daemons.
#[derive(Clone, Debug)]
pub struct Request {
    /// Command prefix running a command on a node (`{node}`, `{address}`).
    pub exec: String,
    /// A shell command starting daemon `{kind}` `{id}` on its node.
    pub start: String,
    /// How long to wait for monitors to form a quorum and OSDs to come up.
    pub timeout: Duration,
    /// One JSON event per line instead of text.
    pub json: bool,
}

/// One bootstrap run: what it works from, the monitor it asks (the first one that
/// holds the bootstrap keys), and every step's outcome so far.
struct Run<'a> {
    spec: &'a Spec,
    plan: &'a Plan,
    request: &'a Request,
    first: String,
    done: Vec<serde_json::Value>,
}

/// How long one script on a node may take (OSD preparation: the request's timeout).
const QUICK: Duration = Duration::from_secs(60);
/// Where bootstrap keeps the monitor keyring and maps on a monitor.
const KEYS_DIR: &str = "/var/lib/ceph/bootstrap-quorate";

/// What the first monitor hands the others: base64 of the monitor keyring, the admin
/// keyring and the bootstrap monitor map.
struct Keys {
    mon_keyring: String,
    admin_keyring: String,
    monmap: String,
}

impl Run<'_> {
    /// Logs one step's outcome (a line of text, or a JSON object with --json).
    fn say(&mut self, node: &str, what: &str, outcome: &str) {
        let event = json!({"node": node, "step": what, "outcome": outcome});
        if self.request.json {
            println!("{event}");
        } else {
            println!("[{node}] {what}: {outcome}");
        }
        self.done.push(event);
    }

    /// Runs `script` on `node` through --exec.
    fn on(&self, node: &str, script: &str, limit: Duration) -> Result<String, String> {
        let address = self
            .spec
            .nodes
            .get(node)
            .map(|n| n.address.to_string())
            .unwrap_or_default();
        let t = Target {
            node,
            address: &address,
        };
        run_script(&self.request.exec, &t, script, limit).map_err(|e| format!("on {node}: {e}"))
    }

    /// `ceph ARGS` as client.admin on the first monitor.
    fn admin(&self, args: &str) -> Result<String, String> {
        self.on(
            &self.first,
            &format!("ceph -c {CONF} --connect-timeout 15 {args}"),
            QUICK,
        )
    }

    /// Starts daemon `kind` `id` on `node` with --start.
    fn start(&self, node: &str, kind: &str, id: &str) -> Result<(), String> {
        self.on(node, &fill_start(&self.request.start, kind, id), QUICK)
            .map(drop)
    }
}

/// A step's outcome from its script's last line: `1` it made something, else it
/// found it there.
fn outcome_of(out: &str) -> &'static str {
    if out.ends_with('1') {
        "created"
    } else {
        "already there"
    }
}

fn fill_start(template: &str, kind: &str, id: &str) -> String {
    template.replace("{kind}", kind).replace("{id}", id)
}

/// What bootstrap will set up, from the spec and the lock.
struct Plan {
    fsid: String,
    monitors: Vec<String>,
    managers: Vec<String>,
    metadata: Vec<String>,
    /// (node, OSD id, device).
    osds: Vec<(String, u32, String)>,
    /// Every node (each gets the `client.quorate` keyring).
    nodes: Vec<String>,
}

fn plan(spec: &Spec, lock: &Lock) -> Result<Plan, String> {
    let Some(ceph) = &spec.ceph else {
        return Err("the spec has no [ceph]: there is no declared Ceph to bootstrap (a Ceph deployed some other way is consumed through `storage.<name>.ceph_config`)".into());
    };
    let locked = lock
        .ceph
        .as_ref()
        .ok_or_else(|| "the lock has no Ceph fsid yet: run `quorate lock` first".to_owned())?;
    let (monitors, managers, metadata) = quorate_render::ceph_roles(spec);
    let mut osds = Vec::new();
    for (node, entries) in &locked.osds {
        for o in entries {
            osds.push((node.clone(), o.id, o.device.clone()));
        }
    }
    let declared: usize = ceph.osds.values().map(Vec::len).sum();
    if declared != osds.len() {
        return Err("the lock's OSDs differ from the spec's: run `quorate lock` first".into());
    }
    Ok(Plan {
        fsid: locked.fsid.clone(),
        monitors,
        managers,
        metadata,
        osds,
        nodes: spec.nodes.keys().cloned().collect(),
    })
}

/// `base64 -w0` of a file, or nothing when it does not exist.
fn b64_write(path: &str, data_b64: &str, mode: &str) -> String {
    let p = sh_quote(path);
    format!(
        "if [ ! -s {p} ]; then mkdir -p \"$(dirname {p})\"; umask 077; printf '%s' {d} | base64 -d > {p}.tmp; chmod {mode} {p}.tmp; mv {p}.tmp {p}; fi\n",
        d = sh_quote(data_b64)
    )
}

/// Makes files and directories under `path` the `ceph` user's, where it exists (NixOS
/// runs the daemons as `ceph`).
fn own(path: &str) -> String {
    format!(
        "if id ceph >/dev/null 2>&1; then chown -R ceph:ceph {}; fi\n",
        sh_quote(path)
    )
}

/// Runs the bootstrap. Exit: 0 when the cluster is up with every declared piece, 1
/// for bad input or a failing step (what ran before it stays; run again).
pub fn run(spec: &Spec, lock: &Lock, request: &Request) -> Exit {
    let fail = |message: &str| {
        if request.json {
            println!("{}", json!({"ok": false, "error": message}));
        } else {
            eprintln!("error: {message}");
        }
        Exit::Invalid
    };
    let plan = match plan(spec, lock) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let mut run = Run {
        spec,
        plan: &plan,
        request,
        first: plan.monitors.first().cloned().unwrap_or_default(),
        done: Vec::new(),
    };
    match run.bootstrap() {
        Ok(()) => {
            let made = run
                .done
                .iter()
                .filter(|e| e["outcome"].as_str().is_some_and(|o| o.starts_with("created")))
                .count();
            let steps = run.done.len();
            if request.json {
                println!(
                    "{}",
                    json!({"ok": true, "fsid": plan.fsid, "steps": steps, "changed": made})
                );
            } else {
                println!(
                    "Ceph {} is up: {steps} steps, {made} changed something (a run with nothing to do changes nothing).",
                    plan.fsid
                );
            }
            Exit::Ok
        }
        Err(e) => fail(&format!(
            "{e}\n  help: fix the cause and run `quorate ceph bootstrap` again: it keeps what the steps before made"
        )),
    }
}

impl Run<'_> {
    fn bootstrap(&mut self) -> Result<(), String> {
        if self.plan.monitors.is_empty() {
            return Err("the spec declares no Ceph monitor".into());
        }
        self.check_nodes()?;
        let keys = self.keys()?;
        self.monitors(&keys)?;
        self.quorum()?;
        self.daemon_keys()?;
        self.osds()?;
        self.pools_and_filesystems()?;
        self.client_keyring()
    }

    /// Step 1: Every node: reachable, Ceph installed, the rendered ceph.conf in place
    /// (`fsid = X` as `quorate render` writes it, `fsid=X` as NixOS's INI generator
    /// does).
    fn check_nodes(&mut self) -> Result<(), String> {
        let fsid = &self.plan.fsid;
        let line = format!("^[[:space:]]*fsid[[:space:]]*=[[:space:]]*{fsid}[[:space:]]*$");
        for node in &self.plan.nodes {
            let script = format!(
                "command -v ceph >/dev/null || {{ echo 'the ceph tools are not installed' >&2; exit 1; }}\n\
                 grep -Eq {f} {CONF} 2>/dev/null || {{ echo '{CONF} is missing or is not the one `quorate render` writes for fsid {fsid} (deploy the NixOS configuration, or install the rendered etc/ceph/ceph.conf)' >&2; exit 1; }}",
                f = sh_quote(&line),
            );
            self.on(node, &script, QUICK)?;
            self.say(node, "ceph.conf", "checked");
        }
        Ok(())
    }

    /// Step 2: The keys and the monitor map, once, on the first monitor — the first one
    /// that has them already, should monitors have been added to the spec since.
    fn keys(&mut self) -> Result<Keys, String> {
        let kb = KEYS_DIR;
        for m in &self.plan.monitors {
            let has = self.on(
                m,
                &format!("if [ -s {kb}/mon.keyring ]; then echo yes; else echo no; fi"),
                QUICK,
            )?;
            if has == "yes" {
                self.first.clone_from(m);
                break;
            }
        }
        let mut addv = String::new();
        for m in &self.plan.monitors {
            let a = quorate_render::ceph_address(self.spec, m)
                .ok_or_else(|| format!("monitor `{m}` is not a node of the spec"))?;
            let a = match a {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            };
            addv.push_str(&format!(" --addv {m} '[v2:{a}:3300,v1:{a}:6789]'"));
        }
        let first = self.first.clone();
        let out = self.on(
            &first,
            &format!(
                "made=0; mkdir -p {kb} /etc/ceph; chmod 700 {kb}\n\
                 if [ ! -s {ADMIN_KEYRING} ]; then umask 077; ceph-authtool --create-keyring {ADMIN_KEYRING}.tmp --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null; mv {ADMIN_KEYRING}.tmp {ADMIN_KEYRING}; made=1; fi\n\
                 if [ ! -s {kb}/mon.keyring ]; then umask 077; ceph-authtool --create-keyring {kb}/mon.keyring.tmp --gen-key -n mon. --cap mon 'allow *' >/dev/null; ceph-authtool {kb}/mon.keyring.tmp --import-keyring {ADMIN_KEYRING} >/dev/null; mv {kb}/mon.keyring.tmp {kb}/mon.keyring; made=1; fi\n\
                 if [ ! -s {kb}/monmap ]; then monmaptool --create --fsid {fsid}{addv} {kb}/monmap.tmp >/dev/null; mv {kb}/monmap.tmp {kb}/monmap; made=1; fi\n\
                 echo $made; base64 -w0 {kb}/mon.keyring; echo; base64 -w0 {ADMIN_KEYRING}; echo; base64 -w0 {kb}/monmap; echo",
                fsid = self.plan.fsid
            ),
            QUICK,
        )?;
        let lines: Vec<&str> = out.lines().collect();
        let [made, mon_keyring, admin_keyring, monmap] = lines.as_slice() else {
            return Err(format!(
                "on {first}: unexpected output while making the keys: {out}"
            ));
        };
        self.say(&first, "keys and monitor map", outcome_of(made));
        Ok(Keys {
            mon_keyring: (*mon_keyring).to_owned(),
            admin_keyring: (*admin_keyring).to_owned(),
            monmap: (*monmap).to_owned(),
        })
    }

    /// Step 3: Every monitor's store, made once from the same keys; then started. Before
    /// the cluster runs, from the bootstrap map (every monitor of the spec); once it
    /// runs (monitors added to the spec later), from the cluster's current map: the
    /// new monitor adds itself when it starts (Ceph's own procedure for adding one).
    fn monitors(&mut self, keys: &Keys) -> Result<(), String> {
        let kb = KEYS_DIR;
        let first = self.first.clone();
        let current_map = self.on(
            &first,
            &format!(
                "[ -e {STATE}/mon/ceph-{first}/done ] || exit 0\n\
                 f=$(mktemp); if ceph -c {CONF} --connect-timeout 20 mon getmap -o $f >/dev/null 2>&1; then base64 -w0 $f; rm -f $f; else rm -f $f; echo 'the cluster exists but its monitors do not answer: start them, then run bootstrap again' >&2; exit 1; fi"
            ),
            QUICK,
        )?;
        for m in &self.plan.monitors {
            let data = format!("{STATE}/mon/ceph-{m}");
            let (map_file, map) = if current_map.is_empty() {
                let f = format!("{kb}/monmap");
                let write = b64_write(&f, &keys.monmap, "600");
                (f, write)
            } else {
                let f = format!("{kb}/monmap.current");
                let write = format!("rm -f {f}\n{}", b64_write(&f, &current_map, "600"));
                (f, write)
            };
            let script = format!(
                "{admin}if [ -e {data}/done ]; then echo 0; exit 0; fi\n\
                 mkdir -p {kb} {data}\n\
                 {mk}{map}\
                 rm -rf {data}/store.db; ceph-mon -c {CONF} --mkfs -i {m} --monmap {map_file} --keyring {kb}/mon.keyring >&2\n\
                 touch {data}/done\n{own}echo 1",
                admin = b64_write(ADMIN_KEYRING, &keys.admin_keyring, "600"),
                mk = b64_write(&format!("{kb}/mon.keyring"), &keys.mon_keyring, "600"),
                own = own(&format!("{STATE}/mon")),
            );
            let out = self.on(m, &script, QUICK)?;
            self.say(m, "monitor store", outcome_of(&out));
            self.start(m, "mon", m)?;
        }
        Ok(())
    }

    /// Step 4: The monitors form a quorum (a majority of them).
    fn quorum(&mut self) -> Result<(), String> {
        let wanted = self.plan.monitors.len();
        let quorum = wait(self.request, "the monitors to form a quorum", || {
            let out = self.admin("quorum_status -f json").ok()?;
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let names = v["quorum_names"].as_array()?.len();
            (names * 2 > wanted).then_some(names)
        })?;
        let first = self.first.clone();
        self.say(&first, "monitor quorum", &format!("{quorum} of {wanted}"));
        Ok(())
    }

    /// Step 5: Managers and metadata servers: a key each (get-or-create: the same key on
    /// every run), installed in their data directory, then started.
    fn daemon_keys(&mut self) -> Result<(), String> {
        for (kind, what, caps) in [
            (
                "mgr",
                "manager key",
                "mon 'allow profile mgr' osd 'allow *' mds 'allow *'",
            ),
            (
                "mds",
                "metadata server key",
                "mon 'allow profile mds' osd 'allow rwx' mds 'allow' mgr 'allow profile mds'",
            ),
        ] {
            let nodes = if kind == "mgr" {
                &self.plan.managers
            } else {
                &self.plan.metadata
            };
            for n in nodes {
                let keyring = self.admin(&format!("auth get-or-create {kind}.{n} {caps}"))?;
                let data = format!("{STATE}/{kind}/ceph-{n}");
                let b64 = base64(&format!("{keyring}\n"));
                let out = self.on(
                    n,
                    &format!(
                        "if [ -s {data}/keyring ]; then echo 0; else {w}{own}echo 1; fi",
                        w = b64_write(&format!("{data}/keyring"), &b64, "600"),
                        own = own(&data)
                    ),
                    QUICK,
                )?;
                self.say(n, what, outcome_of(&out));
                self.start(n, kind, n)?;
            }
        }
        Ok(())
    }

    /// Step 6: OSDs: the node keeps its OSD's uuid and key before the cluster hears of it,
    /// so that a rerun after a failure registers the same OSD again (`osd new` with
    /// the same uuid and id is idempotent), and makes the store once; then all up.
    fn osds(&mut self) -> Result<(), String> {
        for (node, id, device) in &self.plan.osds {
            let data = format!("{STATE}/osd/ceph-{id}");
            let identity = self.on(
                node,
                &format!(
                    "mkdir -p {data}\n\
                     if [ ! -s {data}/quorate-uuid ]; then cat /proc/sys/kernel/random/uuid > {data}/quorate-uuid.tmp; mv {data}/quorate-uuid.tmp {data}/quorate-uuid; fi\n\
                     if [ ! -s {data}/quorate-key ]; then (umask 077; ceph-authtool --gen-print-key > {data}/quorate-key.tmp); mv {data}/quorate-key.tmp {data}/quorate-key; fi\n\
                     if [ -e {data}/ready ]; then echo ready; else echo new; fi; cat {data}/quorate-uuid; cat {data}/quorate-key"
                ),
                QUICK,
            )?;
            let parts: Vec<&str> = identity.lines().collect();
            let [state, uuid, key] = parts.as_slice() else {
                return Err(format!(
                    "on {node}: unexpected output preparing osd.{id}: {identity}"
                ));
            };
            if *state == "ready" {
                self.say(node, &format!("osd.{id}"), "already there");
            } else {
                let secret = base64(&format!("{{\"cephx_secret\": \"{key}\"}}"));
                let first = self.first.clone();
                self.on(
                    &first,
                    &format!(
                        "f=$(mktemp); printf '%s' {s} | base64 -d > $f; ceph -c {CONF} --connect-timeout 15 osd new {uuid} {id} -i $f >/dev/null; rm -f $f",
                        s = sh_quote(&secret)
                    ),
                    QUICK,
                )?;
                let block = if device == quorate_spec::CEPH_MEMSTORE {
                    String::new()
                } else {
                    format!("ln -sfn {} {data}/block\n", sh_quote(device))
                };
                self.on(
                    node,
                    &format!(
                        "printf '[osd.{id}]\\n\\tkey = %s\\n' {k} > {data}/keyring; chmod 600 {data}/keyring\n\
                         {block}ceph-osd -c {CONF} -i {id} --mkfs --osd-uuid {uuid} >&2\n{own}",
                        k = sh_quote(key),
                        own = own(&data)
                    ),
                    self.request.timeout,
                )?;
                self.say(node, &format!("osd.{id}"), &format!("created on {device}"));
            }
            self.start(node, "osd", &id.to_string())?;
        }
        let total = self.plan.osds.len();
        if total > 0 {
            wait(self.request, &format!("{total} OSDs up"), || {
                let out = self.admin("osd stat -f json").ok()?;
                let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                (v["num_up_osds"].as_u64()? >= total as u64).then_some(())
            })?;
            let first = self.first.clone();
            self.say(&first, "OSDs up", &format!("{total} of {total}"));
        }
        Ok(())
    }

    /// Step 7: Pools and file systems, when missing.
    fn pools_and_filesystems(&mut self) -> Result<(), String> {
        let ceph = self.spec.ceph.as_ref().ok_or("the spec has no [ceph]")?;
        let first = self.first.clone();
        let pools = self.admin("osd pool ls")?;
        for (pool, application) in &ceph.pools {
            if pools.lines().any(|l| l.trim() == pool) {
                self.say(&first, &format!("pool {pool}"), "already there");
                continue;
            }
            let p = sh_quote(pool);
            self.admin(&format!("osd pool create {p} >&2"))?;
            if application == "rbd" {
                // `rbd pool init`: the application and RBD's own objects.
                self.on(&first, &format!("rbd -c {CONF} pool init {p}"), QUICK)?;
            } else {
                self.admin(&format!(
                    "osd pool application enable {p} {} >&2",
                    sh_quote(application)
                ))?;
            }
            self.say(
                &first,
                &format!("pool {pool}"),
                &format!("created ({application})"),
            );
        }
        let filesystems = self.admin("fs ls -f json")?;
        for fs in &ceph.filesystems {
            if filesystems.contains(&format!("\"name\":\"{fs}\"")) {
                self.say(&first, &format!("file system {fs}"), "already there");
                continue;
            }
            self.admin(&format!("fs volume create {} >&2", sh_quote(fs)))?;
            self.say(&first, &format!("file system {fs}"), "created");
        }
        Ok(())
    }

    /// Step 8: client.quorate: what the storage steps and the leader's blocklisting need,
    /// installed on every node where `storage.<name>.ceph_keyring` expects it.
    fn client_keyring(&mut self) -> Result<(), String> {
        let ceph = self.spec.ceph.as_ref().ok_or("the spec has no [ceph]")?;
        let mut osd_caps = vec!["profile rbd".to_owned()];
        osd_caps.extend(
            ceph.filesystems
                .iter()
                .map(|fs| format!("allow rw pool=cephfs.{fs}.data")),
        );
        let keyring = self.admin(&format!(
            "auth get-or-create client.quorate mon 'profile rbd, allow r, allow command \"osd blocklist\"' mds 'allow rw' mgr 'profile rbd' osd {}",
            sh_quote(&osd_caps.join(", "))
        ))?;
        let b64 = base64(&format!("{keyring}\n"));
        let path = "/etc/ceph/ceph.client.quorate.keyring";
        for node in &self.plan.nodes {
            let out = self.on(
                node,
                &format!(
                    "if [ -s {path} ]; then echo 0; else {}echo 1; fi",
                    b64_write(path, &b64, "600")
                ),
                QUICK,
            )?;
            self.say(node, "client.quorate keyring", outcome_of(&out));
        }
        Ok(())
    }
}

/// Polls `check` every 2 s until it gives a value, for at most the request's timeout.
fn wait<T>(
    request: &Request,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    let mut said = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() > request.timeout {
            return Err(format!(
                "{what}: not within {} s (are the daemons started? see --start)",
                request.timeout.as_secs()
            ));
        }
        if said.elapsed() > Duration::from_secs(10) && !request.json {
            eprintln!("waiting for {what} ({} s)", start.elapsed().as_secs());
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Standard base64 (for moving keys through `sh -s` scripts).
fn base64(data: &str) -> String {
    use ::base64::Engine as _;
    ::base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(""), "");
        assert_eq!(base64("f"), "Zg==");
        assert_eq!(base64("fo"), "Zm8=");
        assert_eq!(base64("foo"), "Zm9v");
        assert_eq!(base64("[client.quorate]\n"), "W2NsaWVudC5xdW9yYXRlXQo=");
    }

    #[test]
    fn the_start_template_names_the_daemon() {
        assert_eq!(
            fill_start("systemctl start ceph-{kind}-{id}", "osd", "3"),
            "systemctl start ceph-osd-3"
        );
    }
}
