//! `quorate sandbox`: a local cluster to watch and break. Nodes `n1`…`nN` on
//! 127.0.0.1…N, each a real agent with its own data dir, fence process and CA-issued
//! certificate; demo services answer HTTP with the node they run on, each at an
//! entry point of its own on loopback (127.0.1.x) that only its running instance
//! listens on, so the address follows the service. No floating IPs on interfaces
//! (they would change the host).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quorate_api::{ControlReply, ControlRequest, StatusReport};
use serde::{Deserialize, Serialize};

use crate::exit::Exit;

/// What `quorate sandbox` remembers in `<dir>/sandbox.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SandboxFile {
    port: u16,
    /// Node name → agent pid (0 when the node is down).
    agents: BTreeMap<String, u32>,
    /// Service name → HTTP port.
    http: BTreeMap<String, u16>,
    /// Service name → its entry point, `address:port`: an address of its own on
    /// loopback that only the running instance listens on, so it moves with the
    /// service like a floating IP.
    #[serde(default)]
    entry: BTreeMap<String, String>,
    /// The HTTP API's port on every node (0: a sandbox made before the API).
    #[serde(default)]
    api_port: u16,
    /// An operator token every node accepts, for the dashboard.
    #[serde(default)]
    token: String,
}

/// The entry address of the `index`-th demo service: 127.0.1.1, 127.0.1.2, … (all of
/// 127.0.0.0/8 is local, so nothing has to be added to an interface).
fn entry_address(index: usize) -> String {
    format!("127.0.1.{}", index + 1)
}

/// Asks a demo service's entry point which node answers ("web on n2" → "n2").
async fn answered_by(entry: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(entry).await.ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        let last = body.lines().last()?.to_string();
        last.rsplit_once(" on ").map(|(_, node)| node.to_string())
    };
    tokio::time::timeout(Duration::from_millis(300), ask)
        .await
        .ok()
        .flatten()
}

/// The sandbox's layout on disk.
#[derive(Debug, Clone)]
pub struct Sandbox {
    dir: PathBuf,
}

fn fail(message: &str) -> Exit {
    eprintln!("error: {message}");
    Exit::Invalid
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl Sandbox {
    /// The sandbox in `dir`.
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        // Absolute: agents run with the sandbox as their working directory.
        Self {
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("sandbox.json")
    }

    fn read(&self) -> Result<SandboxFile, String> {
        let bytes = std::fs::read(self.file()).map_err(|_| {
            format!(
                "no sandbox in {}\n  help: start one with `quorate sandbox --dir {}`",
                self.dir.display(),
                self.dir.display()
            )
        })?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", self.file().display()))
    }

    fn write(&self, f: &SandboxFile) {
        let _ = quorate_files::write_atomic(
            &self.file(),
            &serde_json::to_vec_pretty(f).unwrap_or_default(),
        );
    }

    /// A node's data dir.
    #[must_use]
    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    /// The control socket of `node`, or of the first node whose agent is alive.
    ///
    /// # Errors
    /// No sandbox, or no live node.
    pub fn socket(&self, node: Option<&str>) -> Result<PathBuf, String> {
        let f = self.read()?;
        let name = match node {
            Some(n) if f.agents.contains_key(n) => n.to_string(),
            Some(n) => {
                return Err(format!(
                    "the sandbox has no node `{n}` (nodes: {:?})",
                    f.agents.keys().collect::<Vec<_>>()
                ))
            }
            None => f
                .agents
                .iter()
                .find(|(_, pid)| quorate_drivers::pid_alive(i32::try_from(**pid).unwrap_or(0)))
                .map(|(n, _)| n.clone())
                .ok_or("every sandbox node is down")?,
        };
        Ok(self.data_dir(&name).join("control.sock"))
    }

    fn spawn_agent(&self, node: &str) -> Result<u32, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        std::fs::create_dir_all(self.dir.join("logs")).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("{node}.log")))
            .map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .args([
                "agent",
                "--spec",
                "quorate.toml",
                "--node",
                node,
                "--data-dir",
            ])
            .arg(self.data_dir(node))
            // The sandbox's `partition` and `heal` go to the node's control socket.
            .arg("--allow-fault-injection")
            .current_dir(&self.dir)
            .env("QUORATE_WITNESS_JOURNAL", self.dir.join("journal"))
            .env_remove("QUORATE_DATA_DIR")
            .env_remove("QUORATE_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start the agent of {node}: {e}"))?;
        Ok(child.id())
    }

    /// Kill -9 of a node's agent, fence and workloads: a power loss.
    fn power_off(&self, node: &str, f: &mut SandboxFile) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let dd = self.data_dir(node);
        if let Some(pid) = f.agents.get(node).copied().filter(|p| *p > 0) {
            let _ = kill(
                Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                Signal::SIGCONT,
            );
            let _ = kill(
                Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                Signal::SIGKILL,
            );
        }
        if let Some(pid) = std::fs::read_to_string(dd.join("fence.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let groups: Vec<quorate_drivers::WorkloadRecord> = std::fs::read(dd.join("workloads.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for g in &groups {
            quorate_drivers::signal_group(g.pgid, Signal::SIGKILL);
        }
        // Everything of the node's workloads, also what left its process group, and
        // their cgroups: a power loss leaves nothing behind.
        if let Ok(tree) = std::fs::read_to_string(dd.join("cgroup")) {
            quorate_cgroup::remove_tree(std::path::Path::new(tree.trim()));
        }
        f.agents.insert(node.to_string(), 0);
    }

    fn prepare(&self, nodes: usize) -> Result<SandboxFile, String> {
        if let Ok(old) = self.read() {
            if old
                .agents
                .values()
                .any(|p| quorate_drivers::pid_alive(i32::try_from(*p).unwrap_or(0)))
            {
                return Err(format!("a sandbox is already running in {}\n  help: `quorate sandbox down --dir {}` first, or use another --dir", self.dir.display(), self.dir.display()));
            }
            // A stale sandbox of ours: start afresh (only what the sandbox created).
            for sub in ["nodes", "ca", "logs"] {
                let _ = std::fs::remove_dir_all(self.dir.join(sub));
            }
            for file in ["quorate.toml", "quorate.lock", "journal", "sandbox.json"] {
                let _ = std::fs::remove_file(self.dir.join(file));
            }
        } else if self.dir.exists()
            && std::fs::read_dir(&self.dir)
                .map_err(|e| e.to_string())?
                .next()
                .is_some()
        {
            return Err(format!("{} exists and is not a sandbox; refusing to write into it\n  help: pass an empty or new --dir", self.dir.display()));
        }
        if !(3..=9).contains(&nodes) {
            return Err(format!("--nodes {nodes}: a sandbox has 3 to 9 nodes (quorum needs 3; loopback 127.0.0.1..9)"));
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let port = free_port()?;
        let http: BTreeMap<String, u16> = [
            ("web".to_string(), free_port()?),
            ("api".to_string(), free_port()?),
            ("worker".to_string(), free_port()?),
        ]
        .into();
        let api_port = free_port()?;
        let mut spec = format!("# Written by `quorate sandbox`: {nodes} nodes on loopback.\n[cluster]\nname = \"sandbox\"\n\n[network]\nport = {port}\napi_port = {api_port}\n");
        for i in 1..=nodes {
            spec.push_str(&format!("\n[nodes.n{i}]\naddress = \"127.0.0.{i}\"\n"));
        }
        let demo = |name: &str, extra: &str| {
            format!("\n[services.{name}]\nkind = \"process\"\ncommand = [{:?}, \"demo\"{extra}]\nstop_timeout = \"2s\"\n", exe.display().to_string())
        };
        // One service per node to start with, each answering HTTP with its node.
        // Each listens only on its entry address, wherever it runs.
        let mut entry = BTreeMap::new();
        for (index, (name, extra)) in [
            ("web", "prefer = [\"n1\"]\n"),
            ("api", "prefer = [\"n2\"]\n"),
            ("worker", "prefer = [\"n3\"]\nanti_affinity = [\"web\"]\n"),
        ]
        .into_iter()
        .enumerate()
        {
            let address = entry_address(index);
            spec.push_str(&demo(
                name,
                &format!(
                    ", \"--port\", \"{}\", \"--bind\", \"{address}\"",
                    http[name]
                ),
            ));
            spec.push_str(extra);
            entry.insert(name.to_string(), format!("{address}:{}", http[name]));
        }
        std::fs::write(self.dir.join("quorate.toml"), &spec).map_err(|e| e.to_string())?;
        let parsed = quorate_spec::check(&spec, quorate_spec::Format::Toml)
            .spec
            .ok_or("internal: the sandbox spec is invalid")?;
        let lock = quorate_lock::allocate(None, &parsed)
            .map_err(|e| e.to_string())?
            .lock;
        quorate_lock::write_atomic(&self.dir.join("quorate.lock"), lock.to_json().as_bytes())
            .map_err(|e| e.to_string())?;
        quorate_pki::init_ca(&self.dir.join("ca"), "sandbox", quorate_pki::CA_VALIDITY)
            .map_err(|e| e.to_string())?;
        for i in 1..=nodes {
            let node = format!("n{i}");
            quorate_pki::issue(
                &self.dir.join("ca"),
                &node,
                &self.data_dir(&node).join("tls"),
                quorate_pki::NODE_VALIDITY,
            )
            .map_err(|e| e.to_string())?;
        }
        // One operator token for the dashboard, accepted by every node.
        let tokens = |n: usize| {
            self.data_dir(&format!("n{n}"))
                .join(quorate_http::tokens::TOKENS_FILE)
        };
        let token =
            quorate_http::tokens::create(&tokens(1), "sandbox", quorate_pki::Role::Operator)
                .map_err(|e| e.to_string())?;
        for i in 2..=nodes {
            quorate_http::tokens::record(
                &tokens(i),
                "sandbox",
                quorate_pki::Role::Operator,
                &token,
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(SandboxFile {
            port,
            agents: BTreeMap::new(),
            http,
            entry,
            api_port,
            token,
        })
    }

    async fn ask_async(
        &self,
        node: Option<&str>,
        request: &ControlRequest,
    ) -> Result<ControlReply, String> {
        let socket = self.socket(node)?;
        quorate_api::call(&socket, request, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())
    }

    fn ask(&self, node: Option<&str>, request: &ControlRequest) -> Result<ControlReply, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(self.ask_async(node, request))
    }

    async fn status_async(&self) -> Option<StatusReport> {
        match self
            .ask_async(None, &ControlRequest::Status { local: false })
            .await
        {
            Ok(ControlReply::Status(r)) => Some(*r),
            _ => None,
        }
    }

    fn status(&self) -> Option<StatusReport> {
        match self.ask(None, &ControlRequest::Status { local: false }) {
            Ok(ControlReply::Status(r)) => Some(*r),
            _ => None,
        }
    }

    fn hints(&self, f: &SandboxFile) -> String {
        let d = self.dir.display();
        let web = f.entry.get("web").cloned().unwrap_or_default();
        let mut out = format!("Try it (in another terminal):\n  curl {web}        # web's entry point: answers \"web on NODE\" from wherever web runs\n");
        out.push_str(&format!(
            "  quorate sandbox kill n1 --dir {d}        # power loss: web moves within ~2 s\n"
        ));
        out.push_str(&format!("  quorate sandbox pause n2 --dir {d}       # SIGSTOP the agent: its fence kills its services\n"));
        out.push_str(&format!("  quorate sandbox resume n2 --dir {d}\n"));
        out.push_str(&format!(
            "  quorate sandbox partition n3 --dir {d}   # cut n3 off; `heal` to reconnect\n"
        ));
        out.push_str(&format!(
            "  quorate sandbox restart n1 --dir {d}     # bring a node back\n"
        ));
        out.push_str(&format!(
            "  quorate status --sandbox {d} [--node n2] # the cluster as any node sees it\n"
        ));
        out.push_str(&format!(
            "  quorate sandbox down --dir {d}           # stop everything\n"
        ));
        if f.api_port != 0 {
            out.push_str(&format!(
                "Dashboard (any node serves it; the certificate is the sandbox CA's, so the browser warns once):\n  https://127.0.0.3:{}/#token={}\n",
                f.api_port, f.token
            ));
        }
        out.push_str(&format!("Logs: {d}/logs/  ·  witness journal: {d}/journal"));
        out
    }

    /// `quorate sandbox [--nodes N] [--detach]`
    pub fn up(&self, nodes: usize, detach: bool) -> Exit {
        let mut f = match self.prepare(nodes) {
            Ok(f) => f,
            Err(e) => return fail(&e),
        };
        eprintln!("starting {nodes} nodes in {} …", self.dir.display());
        for i in 1..=nodes {
            let node = format!("n{i}");
            match self.spawn_agent(&node) {
                Ok(pid) => {
                    f.agents.insert(node, pid);
                }
                Err(e) => {
                    self.write(&f);
                    let _ = self.down();
                    return fail(&e);
                }
            }
        }
        self.write(&f);
        let start = Instant::now();
        let ready = loop {
            if let Some(r) = self.status() {
                if r.quorum
                    && !r.services.is_empty()
                    && r.services.iter().all(|s| s.state == "running")
                {
                    break Some(r);
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let Some(report) = ready else {
            let _ = self.down();
            return fail(&format!(
                "the sandbox did not come up within 60 s; see {}/logs/",
                self.dir.display()
            ));
        };
        eprintln!(
            "up in {:.1} s: leader {}, services {}\n",
            start.elapsed().as_secs_f64(),
            report.leader.as_deref().unwrap_or("-"),
            report
                .services
                .iter()
                .map(|s| format!("{} on {}", s.name, s.node.as_deref().unwrap_or("-")))
                .collect::<Vec<_>>()
                .join(", ")
        );
        eprintln!("{}", self.hints(&f));
        if detach {
            return Exit::Ok;
        }
        self.watch(&f)
    }

    /// The live view, until Ctrl-C; then everything stops.
    fn watch(&self, f: &SandboxFile) -> Exit {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return Exit::Invalid;
        };
        let stop = rt.block_on(async {
            let mut int =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok()?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()?;
            loop {
                let mut answers = BTreeMap::new();
                for (service, entry) in &f.entry {
                    answers.insert(service.clone(), (entry.clone(), answered_by(entry).await));
                }
                let view = render(&self.dir, self.status_async().await, &answers);
                print!(
                    "\x1b[2J\x1b[H{view}\n\n{}\n\nCtrl-C stops the sandbox.\n",
                    self.hints(f)
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = int.recv() => return Some(()),
                    _ = term.recv() => return Some(()),
                }
            }
        });
        let _ = stop;
        eprintln!("\nstopping the sandbox …");
        self.down()
    }
}

/// Service → (entry point, the node that answered there just now).
type Answers = BTreeMap<String, (String, Option<String>)>;

fn render(dir: &Path, report: Option<StatusReport>, answers: &Answers) -> String {
    let Some(r) = report else {
        return "no node answers: is the sandbox down?".into();
    };
    let mut out = format!(
        "quorate sandbox · {} · leader {} · term {} · quorum {}\n\n",
        dir.display(),
        r.leader.as_deref().unwrap_or("none"),
        r.term,
        if r.quorum { "yes" } else { "NO" }
    );
    out.push_str(&format!(
        "{:<6} {:<12} {:>14}\n",
        "NODE", "STATE", "LAST CONTACT"
    ));
    for n in &r.nodes {
        out.push_str(&format!(
            "{:<6} {:<12} {:>14}\n",
            n.name,
            n.state,
            n.last_contact_ms
                .map_or_else(|| "-".into(), |m| format!("{m} ms"))
        ));
    }
    out.push_str(&format!(
        "\n{:<8} {:<6} {:<10} {:<22} {:<12} WHY\n",
        "SERVICE", "NODE", "STATE", "ENTRY POINT", "ANSWERED BY"
    ));
    for s in &r.services {
        let (entry, answer) = answers.get(&s.name).map_or(("-", "-"), |(e, a)| {
            (e.as_str(), a.as_deref().unwrap_or("no answer"))
        });
        out.push_str(&format!(
            "{:<8} {:<6} {:<10} {:<22} {:<12} {}\n",
            s.name,
            s.node.as_deref().unwrap_or("-"),
            s.state,
            entry,
            answer,
            s.reason
        ));
    }
    out.push_str("\nRecent events:\n");
    for e in &r.recent_events {
        out.push_str(&format!("  {e}\n"));
    }
    out
}

impl Sandbox {
    /// `quorate sandbox down`
    pub fn down(&self) -> Exit {
        let mut f = match self.read() {
            Ok(f) => f,
            Err(e) => return fail(&e),
        };
        let nodes: Vec<String> = f.agents.keys().cloned().collect();
        for n in &nodes {
            self.power_off(n, &mut f);
        }
        self.write(&f);
        eprintln!(
            "stopped {} nodes; logs and journal remain in {}",
            nodes.len(),
            self.dir.display()
        );
        Exit::Ok
    }

    /// `quorate sandbox kill|pause|resume|restart|partition|heal NODE`
    pub fn fault(&self, fault: &str, node: &str) -> Exit {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let mut f = match self.read() {
            Ok(f) => f,
            Err(e) => return fail(&e),
        };
        let Some(pid) = f.agents.get(node).copied() else {
            return fail(&format!(
                "the sandbox has no node `{node}` (nodes: {:?})",
                f.agents.keys().collect::<Vec<_>>()
            ));
        };
        let alive = quorate_drivers::pid_alive(i32::try_from(pid).unwrap_or(0));
        let agent = Pid::from_raw(i32::try_from(pid).unwrap_or(0));
        let done = |what: String| {
            eprintln!("{what}");
            Exit::Ok
        };
        match fault {
            "kill" => {
                self.power_off(node, &mut f);
                self.write(&f);
                done(format!("{node}: powered off (agent, fence and workloads killed)"))
            }
            "pause" if alive => match kill(agent, Signal::SIGSTOP) {
                Ok(()) => done(format!("{node}: agent paused (SIGSTOP); its fence kills its services when the lease runs out")),
                Err(e) => fail(&e.to_string()),
            },
            "resume" if alive => match kill(agent, Signal::SIGCONT) {
                Ok(()) => done(format!("{node}: agent resumed")),
                Err(e) => fail(&e.to_string()),
            },
            "restart" => {
                if alive {
                    let _ = kill(agent, Signal::SIGCONT);
                    let _ = kill(agent, Signal::SIGKILL);
                    std::thread::sleep(Duration::from_millis(100));
                }
                match self.spawn_agent(node) {
                    Ok(new) => {
                        f.agents.insert(node.to_string(), new);
                        self.write(&f);
                        done(format!("{node}: agent restarted (pid {new})"))
                    }
                    Err(e) => fail(&e),
                }
            }
            "partition" | "heal" if alive => match self.ask(Some(node), &ControlRequest::Partition { cut: fault == "partition" }) {
                Ok(ControlReply::Done { message }) => done(message),
                Ok(other) => fail(&format!("unexpected answer {other:?}")),
                Err(e) => fail(&e),
            },
            _ => fail(&format!("{node} is down; `quorate sandbox restart {node} --dir {}` brings it back", self.dir.display())),
        }
    }
}
