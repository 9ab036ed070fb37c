//! Commands that talk to a running cluster through the local agent: `agent`,
//! `status`, `apply`.

use std::path::PathBuf;
use std::time::Duration;

use quorate_api::{ControlReply, ControlRequest, StatusReport};
use serde_json::json;

use crate::exit::Exit;

/// Where the local agent is.
#[derive(Debug, clap::Args)]
pub struct AgentSocket {
    /// The agent's data dir; its control socket is `<data-dir>/control.sock`.
    #[arg(
        long,
        value_name = "DIR",
        env = "QUORATE_DATA_DIR",
        default_value = "/var/lib/quorate"
    )]
    pub data_dir: PathBuf,
    /// The control socket, overriding `<data-dir>/control.sock`.
    #[arg(long, value_name = "PATH", env = "QUORATE_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Ask a node of the sandbox in DIR (see `quorate sandbox`).
    #[arg(
        long,
        value_name = "DIR",
        env = "QUORATE_SANDBOX",
        conflicts_with = "socket"
    )]
    pub sandbox: Option<PathBuf>,
    /// With --sandbox: which node's agent answers [default: the first one up].
    #[arg(long, value_name = "NAME", requires = "sandbox")]
    pub node: Option<String>,
}

impl AgentSocket {
    pub(crate) fn path(&self) -> Result<PathBuf, String> {
        if let Some(dir) = &self.sandbox {
            return crate::sandbox::Sandbox::new(dir).socket(self.node.as_deref());
        }
        Ok(self
            .socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("control.sock")))
    }
}

pub(crate) fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .ok()
}

/// Calls the agent; prints an unreachable agent as exit 4, a socket this user may not
/// use as exit 1.
pub(crate) fn call(
    socket: &AgentSocket,
    request: &ControlRequest,
    timeout: Duration,
    json: bool,
) -> Result<ControlReply, Exit> {
    let report = |e: &dyn std::fmt::Display, exit: Exit| {
        if json {
            println!("{}", json!({"ok": false, "error": e.to_string()}));
        } else {
            eprintln!("error: {e}");
        }
        exit
    };
    let path = socket.path().map_err(|e| report(&e, Exit::NoQuorum))?;
    let Some(rt) = runtime() else {
        return Err(Exit::Invalid);
    };
    rt.block_on(quorate_api::call(&path, request, timeout))
        .map_err(|e| {
            // Not being allowed is not "the cluster is unreachable": exit 1, not 4.
            let exit = if matches!(e, quorate_api::ApiError::PermissionDenied { .. }) {
                Exit::Invalid
            } else {
                Exit::NoQuorum
            };
            report(&e, exit)
        })
}

/// True when stderr is the journal stream systemd gave this process
/// (`JOURNAL_STREAM` = "device:inode" of it), i.e. logs go to journald anyway.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// The agent's log: `--log` / `QUORATE_LOG` sets the level (an `EnvFilter`: `info`,
/// `debug`, `quorate_agent=debug,info`, …; default `info`). Under systemd (stderr is the
/// journal stream) records go to journald with their priority and fields; otherwise
/// to stderr, coloured only on a terminal.
fn init_agent_log(level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // openraft's own chatter stays at errors unless the filter names it.
    let directives = if level.contains("openraft") {
        level.to_string()
    } else {
        format!("{level},openraft=error")
    };
    let filter = || {
        tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
            eprintln!("warning: --log / QUORATE_LOG `{level}`: {e}; logging at info");
            tracing_subscriber::EnvFilter::new("info,openraft=error")
        })
    };
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            let journald = journald.with_syslog_identifier("quorate".into());
            if tracing_subscriber::registry()
                .with(filter())
                .with(journald)
                .try_init()
                .is_ok()
            {
                return;
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// `quorate agent`
pub fn agent(config: quorate_agent::AgentConfig, log: &str) -> Exit {
    init_agent_log(log);
    let Some(rt) = runtime() else {
        return Exit::Invalid;
    };
    match rt.block_on(quorate_agent::run(config)) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Invalid
        }
    }
}

/// `status` warns this many days before a node certificate expires.
const CERTIFICATE_WARNING_DAYS: i64 = 30;

fn print_status(r: &StatusReport) {
    let yes = |b: bool| if b { "yes" } else { "NO" };
    println!(
        "cluster {} · leader {} · term {} · quorum {} · spec version {} · answered by {}",
        r.cluster,
        r.leader.as_deref().unwrap_or("none"),
        r.term,
        yes(r.quorum),
        r.spec_version,
        r.answered_by
    );
    if r.cluster_maintenance {
        println!("CLUSTER MAINTENANCE: everything keeps running where it is; nothing moves or starts (`quorate maintenance off --cluster` ends it)");
    }
    let versions: std::collections::BTreeSet<&str> = r
        .nodes
        .iter()
        .filter_map(|n| n.protocol.as_deref())
        .collect();
    if versions.len() > 1 {
        println!(
            "rolling upgrade: nodes speak quorate protocol {} ({})",
            versions.into_iter().collect::<Vec<_>>().join(" and "),
            r.nodes
                .iter()
                .filter_map(|n| Some(format!("{} {}", n.name, n.protocol.as_deref()?)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !r.left_out.is_empty() {
        println!(
            "FORCED RECOVERY: left out of the voters until each comes back with an empty data dir (keep its tls/): {}",
            r.left_out.join(", ")
        );
    }
    if let Some(mesh) = &r.wireguard {
        let peers: Vec<String> = mesh
            .peers
            .iter()
            .map(|p| match (p.handshake_age_s, p.fresh) {
                (Some(age), true) => format!("{} {age}s", p.node),
                (Some(age), false) => format!("{} STALE {age}s", p.node),
                (None, _) => format!("{} NO HANDSHAKE", p.node),
            })
            .collect();
        match &mesh.error {
            Some(e) => println!(
                "wireguard ({} on {}): cannot read: {e}",
                mesh.interface, mesh.node
            ),
            None => println!(
                "wireguard ({} on {}): handshakes {}",
                mesh.interface,
                mesh.node,
                peers.join(", ")
            ),
        }
    }
    if r.local_spec_differs {
        println!("note: this node's local spec file differs from the applied spec (run `quorate plan`, then `quorate apply` to change the cluster)");
    }
    for n in &r.nodes {
        let (Some(days), Some(at)) = (n.certificate_days_left, &n.certificate_expires) else {
            continue;
        };
        if days < CERTIFICATE_WARNING_DAYS {
            let when = if days < 0 {
                "has EXPIRED".to_string()
            } else {
                format!("expires in {days} days")
            };
            println!(
                "warning: the certificate of {} {when} ({at}); issue a new one with the CA (`quorate ca issue {} --days 365` or `ca sign`), put it in place and run `systemctl reload quorate` on {}",
                n.name, n.name, n.name
            );
        }
    }
    println!(
        "\n{:<20} {:<12} {:>14}  VOTER",
        "NODE", "STATE", "LAST CONTACT"
    );
    for n in &r.nodes {
        let contact = n
            .last_contact_ms
            .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms"));
        println!(
            "{:<20} {:<12} {:>14}  {}",
            n.name,
            n.state,
            contact,
            if n.voter { "yes" } else { "no" }
        );
    }
    if !r.services.is_empty() {
        println!("\n{:<20} {:<12} {:<12} WHY", "SERVICE", "NODE", "STATE");
        for s in &r.services {
            println!(
                "{:<20} {:<12} {:<12} {}",
                s.name,
                s.node.as_deref().unwrap_or("-"),
                s.state,
                s.reason
            );
        }
    }
    if !r.storage.is_empty() {
        println!(
            "\n{:<20} {:<10} {:<12} REPLICAS",
            "STORAGE", "KIND", "ATTACHED"
        );
        for s in &r.storage {
            println!(
                "{:<20} {:<10} {:<12} {}",
                s.name,
                s.kind,
                s.attached_on.as_deref().unwrap_or("-"),
                s.replicas.join(", ")
            );
            for (node, health) in &s.health {
                println!("{:<20} {node}: {health}", "");
            }
        }
    }
}

/// `quorate status`
pub fn status(socket: &AgentSocket, local: bool, json: bool) -> Exit {
    let reply = match call(
        socket,
        &ControlRequest::Status { local },
        Duration::from_secs(15),
        json,
    ) {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    match reply {
        ControlReply::Status(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print_status(&report);
                if !report.quorum {
                    eprintln!("\nno quorum: fewer than a majority of voters answer the leader (or there is no leader); nothing can change until they do");
                }
            }
            if report.quorum {
                Exit::Ok
            } else {
                Exit::NoQuorum
            }
        }
        other => {
            eprintln!("error: unexpected answer {other:?}");
            Exit::Invalid
        }
    }
}

/// `quorate apply`
pub fn apply(
    paths: &crate::SpecPaths,
    socket: &AgentSocket,
    allow_destructive: bool,
    json: bool,
) -> Exit {
    let spec = match crate::spec_commands::load_checked(&paths.spec, json) {
        Ok(s) => s,
        Err(exit) => return exit,
    };
    let lock_path = paths.lock_path();
    let lock = match quorate_lock::read(&lock_path) {
        Ok(Some(l)) => l,
        Ok(None) => {
            eprintln!(
                "error: no lock at {}\n  help: run `quorate lock {}` first",
                lock_path.display(),
                paths.spec.display()
            );
            return Exit::Invalid;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Invalid;
        }
    };
    let request = ControlRequest::Apply {
        spec: Box::new(spec),
        lock: Box::new(lock),
        allow_destructive,
    };
    let reply = match call(socket, &request, Duration::from_secs(30), json) {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).unwrap_or_default()
        );
    }
    match reply {
        ControlReply::Applied {
            version,
            hash,
            unchanged,
            ..
        } => {
            if !json {
                if unchanged {
                    eprintln!(
                        "no change: the cluster already runs this spec (version {version}, {})",
                        &hash[..12.min(hash.len())]
                    );
                } else {
                    eprintln!(
                        "applied: spec version {version} ({}) is committed on a majority",
                        &hash[..12.min(hash.len())]
                    );
                }
            }
            Exit::Ok
        }
        ControlReply::Refused {
            exit_code, message, ..
        } => {
            if !json {
                eprintln!("{message}");
            }
            Exit::from_refusal(exit_code)
        }
        _ => Exit::Invalid,
    }
}

/// What `quorate demo` does; the adversarial switches make it misbehave the way real
/// workloads do, for the tests that attack invariant 1.
#[derive(Debug, Default)]
pub struct DemoOptions {
    /// Answer HTTP on this port.
    pub port: Option<u16>,
    /// Listen address instead of QUORATE_NODE_ADDRESS.
    pub bind: Option<String>,
    /// Ignore SIGTERM/SIGINT.
    pub ignore_term: bool,
    /// Keep running this long after SIGTERM.
    pub stop_delay: Option<Duration>,
    /// Fork a `setsid` child that keeps writing this workload's `alive` records.
    pub escape: bool,
    /// Journal records under this service name.
    pub witness_as: Option<String>,
    /// This process is the escaped child of that pid.
    pub escaped_from: Option<i32>,
}

/// `quorate demo`: a witness workload for the sandbox and the tests. It appends
/// `start`/`alive`/`stop` records (CLOCK_BOOTTIME) to `QUORATE_WITNESS_JOURNAL` and,
/// with `--port`, answers HTTP with the node it runs on.
pub fn demo(options: &DemoOptions) -> Exit {
    let node = std::env::var("QUORATE_NODE").unwrap_or_else(|_| "?".into());
    let service = options
        .witness_as
        .clone()
        .unwrap_or_else(|| std::env::var("QUORATE_SERVICE").unwrap_or_else(|_| "demo".into()));
    let address = options.bind.clone().unwrap_or_else(|| {
        std::env::var("QUORATE_NODE_ADDRESS").unwrap_or_else(|_| "127.0.0.1".into())
    });
    let pid = i32::try_from(std::process::id()).unwrap_or(0);
    if let Some(parent) = options.escaped_from {
        // The escaped child: it speaks for its parent's run until something kills it.
        loop {
            quorate_fence::witness("alive", &node, &service, parent);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if options.escape {
        let mut child = std::process::Command::new("setsid");
        child
            .arg(std::env::current_exe().unwrap_or_else(|_| "quorate".into()))
            .args([
                "demo",
                "--escaped-from",
                &pid.to_string(),
                "--witness-as",
                &service,
            ])
            .stdin(std::process::Stdio::null());
        if let Err(e) = child.spawn() {
            eprintln!("demo {service}: cannot start the escaping child: {e}");
            return Exit::Invalid;
        }
    }
    let Some(rt) = runtime() else {
        return Exit::Invalid;
    };
    let port = options.port;
    let (ignore_term, stop_delay) = (options.ignore_term, options.stop_delay);
    rt.block_on(async move {
        use tokio::io::AsyncWriteExt;
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else { return Exit::Invalid };
        quorate_fence::witness("start", &node, &service, pid);
        if let Some(port) = port {
            let listener = match tokio::net::TcpListener::bind((address.as_str(), port)).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("demo {service}: cannot listen on {address}:{port}: {e}");
                    return Exit::Invalid;
                }
            };
            let body = format!("{service} on {node}\n");
            tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = listener.accept().await else { continue };
                    let reply = format!("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let _ = tokio::time::timeout(Duration::from_millis(500), tokio::io::AsyncReadExt::read(&mut s, &mut buf)).await;
                        let _ = s.write_all(reply.as_bytes()).await;
                    });
                }
            });
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut stop_at: Option<tokio::time::Instant> = None;
        loop {
            let asked = tokio::select! {
                _ = tick.tick() => {
                    quorate_fence::witness("alive", &node, &service, pid);
                    false
                }
                _ = term.recv() => true,
                _ = int.recv() => true,
            };
            if asked && !ignore_term && stop_at.is_none() {
                stop_at = Some(tokio::time::Instant::now() + stop_delay.unwrap_or_default());
            }
            if stop_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                break;
            }
        }
        quorate_fence::witness("stop", &node, &service, pid);
        Exit::Ok
    })
}

/// Prints a reply to a change (move, drain, maintenance) and maps it to an exit code.
fn done_or_refused(reply: ControlReply, json: bool) -> Exit {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).unwrap_or_default()
        );
    }
    match reply {
        ControlReply::Done { message } => {
            if !json {
                eprintln!("{message}");
            }
            Exit::Ok
        }
        ControlReply::Refused {
            exit_code, message, ..
        } => {
            if !json {
                eprintln!("{message}");
            }
            Exit::from_refusal(exit_code)
        }
        _ => Exit::Invalid,
    }
}

/// `quorate backup FILE`
pub fn backup(socket: &AgentSocket, file: &std::path::Path, json: bool) -> Exit {
    match call(
        socket,
        &ControlRequest::Backup,
        Duration::from_secs(15),
        json,
    ) {
        Ok(ControlReply::Backup(b)) => {
            let text = serde_json::to_string_pretty(&b).unwrap_or_default() + "\n";
            if let Err(e) = quorate_files::write_secret(file, text.as_bytes()) {
                eprintln!(
                    "error: cannot write {}: {e}; no backup was written",
                    file.display()
                );
                return Exit::Invalid;
            }
            let message = format!(
                "backed up cluster `{}` (spec version {}, {} event(s)) to {}",
                b.cluster,
                b.applied.version,
                b.events.len(),
                file.display()
            );
            if json {
                println!("{}", json!({"ok": true, "message": message}));
            } else {
                eprintln!("{message}");
            }
            Exit::Ok
        }
        Ok(other) => done_or_refused(other, json),
        Err(exit) => exit,
    }
}

/// `quorate restore FILE`
pub fn restore(socket: &AgentSocket, file: &std::path::Path, json: bool) -> Exit {
    let backup: quorate_api::Backup = match std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "error: {}: not a quorate backup: {e}; nothing was changed",
                file.display()
            );
            return Exit::Invalid;
        }
    };
    request(
        socket,
        &ControlRequest::Restore {
            backup: Box::new(backup),
        },
        json,
    )
}

/// An operator request whose answer is done or refused (disable, ban, cleanup, …).
pub fn request(socket: &AgentSocket, request: &ControlRequest, json: bool) -> Exit {
    match call(socket, request, Duration::from_secs(15), json) {
        Ok(reply) => done_or_refused(reply, json),
        Err(exit) => exit,
    }
}

/// `quorate move SVC NODE` / `quorate move --clear SVC`
pub fn move_service(socket: &AgentSocket, service: &str, node: Option<String>, json: bool) -> Exit {
    let request = ControlRequest::Move {
        service: service.to_string(),
        node,
    };
    match call(socket, &request, Duration::from_secs(15), json) {
        Ok(reply) => done_or_refused(reply, json),
        Err(exit) => exit,
    }
}

/// The services a drain of `node` still waits for: placed there, or stopping (the
/// status shows a stopping service without a node).
pub(crate) fn still_on(report: &StatusReport, node: &str) -> Vec<String> {
    report
        .services
        .iter()
        .filter(|s| s.node.as_deref() == Some(node) || (s.node.is_none() && s.state == "stopping"))
        .map(|s| s.name.clone())
        .collect()
}

/// `quorate drain|undrain NODE`, `quorate maintenance on|off NODE`. A drain waits,
/// showing progress, until nothing runs on the node any more (unless `no_wait`).
pub fn set_admin(socket: &AgentSocket, node: &str, state: &str, wait: bool, json: bool) -> Exit {
    let request = ControlRequest::SetAdmin {
        node: node.to_string(),
        state: state.to_string(),
    };
    let exit = match call(socket, &request, Duration::from_secs(15), json) {
        Ok(reply) => done_or_refused(reply, json),
        Err(exit) => return exit,
    };
    if exit != Exit::Ok || state != "draining" || !wait {
        return exit;
    }
    let start = std::time::Instant::now();
    let mut last = usize::MAX;
    loop {
        let Ok(ControlReply::Status(r)) = call(
            socket,
            &ControlRequest::Status { local: false },
            Duration::from_secs(15),
            json,
        ) else {
            return Exit::NoQuorum;
        };
        let left = still_on(&r, node);
        if left.is_empty() {
            if !json {
                eprintln!(
                    "{node} is drained: nothing runs there ({:.1} s)",
                    start.elapsed().as_secs_f64()
                );
            }
            return Exit::Ok;
        }
        if left.len() != last && !json {
            eprintln!(
                "waiting for {} service(s) to leave {node}: {}",
                left.len(),
                left.join(", ")
            );
            last = left.len();
        }
        if start.elapsed() > Duration::from_secs(300) {
            eprintln!("error: {node} still runs {} after 5 minutes; see `quorate status` and `quorate explain`", left.join(", "));
            return Exit::Invalid;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `quorate events`
pub fn events(socket: &AgentSocket, limit: usize, json: bool, follow: bool) -> Exit {
    let fetch = |limit: usize| match call(
        socket,
        &ControlRequest::Events { limit },
        Duration::from_secs(15),
        json,
    ) {
        Ok(ControlReply::Events { events }) => Ok(events),
        Ok(other) => Err(done_or_refused(other, json)),
        Err(exit) => Err(exit),
    };
    let events = match fetch(limit) {
        Ok(e) => e,
        Err(exit) => return exit,
    };
    if json && !follow {
        println!(
            "{}",
            serde_json::to_string_pretty(&events).unwrap_or_default()
        );
        return Exit::Ok;
    }
    let print = |e: &serde_json::Value| {
        if json {
            println!("{e}");
        } else {
            println!(
                "{:>5}  {}  [{}] {}",
                e["seq"],
                local_time(e["at_ms"].as_i64().unwrap_or(0)),
                e["by"].as_str().unwrap_or("?"),
                e["what"].as_str().unwrap_or("")
            );
        }
    };
    let mut last = None;
    for e in &events {
        print(e);
        last = e["seq"].as_u64();
    }
    if !follow {
        return Exit::Ok;
    }
    // Follow: ask again twice a second; print what is newer than what was printed.
    // A moment without an answer (a leader change) is waited out, not fatal.
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(events) = fetch(200) else {
            continue;
        };
        for e in events {
            if last.is_none_or(|l| e["seq"].as_u64().is_some_and(|s| s > l)) {
                print(&e);
                last = e["seq"].as_u64();
            }
        }
    }
}

/// `at_ms` (ms since the epoch) as RFC 3339 in the local time zone,
/// e.g. `2026-12-02T23:10:04.120+01:00`.
#[must_use]
pub fn local_time(at_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(at_ms).map_or_else(
        |_| format!("@{at_ms}ms"),
        |t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%dT%H:%M:%S%.3f%:z")
                .to_string()
        },
    )
}

/// `quorate status --watch`: the report every second until Ctrl-C (JSON: one per line).
pub fn status_watch(socket: &AgentSocket, local: bool, json: bool) -> Exit {
    loop {
        let reply = call(
            socket,
            &ControlRequest::Status { local },
            Duration::from_secs(5),
            json,
        );
        match reply {
            Ok(ControlReply::Status(report)) if json => {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            }
            Ok(ControlReply::Status(report)) => {
                print!("\x1b[2J\x1b[H");
                print_status(&report);
                if !report.quorum {
                    println!("\nno quorum: fewer than a majority of voters answer the leader");
                }
                println!("\n(every second; Ctrl-C ends it)");
            }
            Ok(other) => {
                eprintln!("error: unexpected answer {other:?}");
                return Exit::Invalid;
            }
            // Unreachable for a moment (a restart): keep watching.
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `quorate explain SVC`
pub fn explain(socket: &AgentSocket, service: &str, json: bool) -> Exit {
    match call(
        socket,
        &ControlRequest::Explain {
            service: service.to_string(),
        },
        Duration::from_secs(15),
        json,
    ) {
        Ok(reply @ ControlReply::Explain { .. }) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reply).unwrap_or_default()
                );
                return Exit::Ok;
            }
            if let ControlReply::Explain {
                service,
                node,
                reason,
                pinned,
                nodes,
            } = reply
            {
                println!(
                    "{service} runs on {}: {reason}",
                    node.as_deref().unwrap_or("no node")
                );
                if let Some(p) = pinned {
                    println!("pinned to {p} by `quorate move` (clear with `quorate move --clear {service}`)");
                }
                println!();
                for (n, why) in nodes {
                    let mark = if node.as_deref() == Some(n.as_str()) {
                        "*"
                    } else {
                        " "
                    };
                    println!(
                        " {mark} {n:<20} {}",
                        why.map_or_else(
                            || "could run here".to_string(),
                            |w| format!("not here: {w}")
                        )
                    );
                }
            }
            Exit::Ok
        }
        Ok(other) => done_or_refused(other, json),
        Err(exit) => exit,
    }
}

/// `quorate restart SVC`
pub fn restart(socket: &AgentSocket, service: &str, json: bool) -> Exit {
    match call(
        socket,
        &ControlRequest::Restart {
            service: service.to_string(),
        },
        Duration::from_secs(15),
        json,
    ) {
        Ok(reply) => done_or_refused(reply, json),
        Err(exit) => exit,
    }
}
