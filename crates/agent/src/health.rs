//! Health checks of running workloads: `http` (a GET answered 2xx), `tcp` (a connect),
//! `exec` (a command exiting 0), each with its interval, timeout and number of
//! consecutive failures that count as one failure. `{address}` in the URL, address or
//! command is replaced by the node's address. `https` URLs are checked by a TCP connect
//! to their host and port (no TLS client here yet).

use std::time::Duration;

use quorate_spec::{Health, HealthKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs one check; true when healthy.
pub async fn check(health: &Health, node_address: &str) -> bool {
    let fill = |s: &str| s.replace("{address}", node_address);
    let work = async {
        match health.kind {
            HealthKind::Alive => true,
            HealthKind::Tcp => match &health.address {
                Some(a) => tokio::net::TcpStream::connect(fill(a)).await.is_ok(),
                None => false,
            },
            HealthKind::Http => match &health.url {
                Some(url) => http_ok(&fill(url)).await,
                None => false,
            },
            HealthKind::Exec => match health.command.split_first() {
                Some((program, args)) => {
                    let args: Vec<String> = args.iter().map(|a| fill(a)).collect();
                    quorate_drivers::without_service_manager_env(&mut tokio::process::Command::new(
                        fill(program),
                    ))
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .is_ok_and(|s| s.success())
                }
                None => false,
            },
        }
    };
    tokio::time::timeout(health.timeout.get(), work)
        .await
        .unwrap_or(false)
}

/// GET `url` (http://host:port/path); true on a 2xx status line.
async fn http_ok(url: &str) -> bool {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return false,
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let target = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let Ok(mut stream) = tokio::net::TcpStream::connect(&target).await else {
        return false;
    };
    if tls {
        return true;
    }
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: quorate-health\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 64];
    let Ok(n) = stream.read(&mut head).await else {
        return false;
    };
    let line = String::from_utf8_lossy(&head[..n]);
    line.starts_with("HTTP/1.")
        && line
            .split_whitespace()
            .nth(1)
            .is_some_and(|code| code.starts_with('2'))
}

/// The probing state of one workload.
#[derive(Debug)]
pub struct Probe {
    /// Process the probe belongs to (a new process starts a new probe).
    pub pid: i32,
    /// A check is running.
    pub in_flight: bool,
    /// When the last check started (or the process started).
    pub last: tokio::time::Instant,
    /// Consecutive failed checks.
    pub failures: u32,
    /// A check has passed since the process started (it is ready).
    pub passed: bool,
}

/// How long between checks: the interval, but at most 200 ms until the first check has
/// passed, so a starting service is reported running (and its dependents may start)
/// soon after it is ready.
#[must_use]
pub fn next_check_after(health: &Health, ready: bool) -> Duration {
    if ready {
        health.interval.get()
    } else {
        health.interval.get().min(Duration::from_millis(200))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(kind: &str, field: &str, value: serde_json::Value) -> Health {
        let mut v = serde_json::json!({"kind": kind, "timeout": "500ms"});
        v[field] = value;
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn tcp_http_and_exec_checks_tell_healthy_from_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let path_ok = String::from_utf8_lossy(&buf).starts_with("GET /ok ");
                let reply = if path_ok {
                    "HTTP/1.0 200 OK\r\n\r\n"
                } else {
                    "HTTP/1.0 503 Unavailable\r\n\r\n"
                };
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(
            check(
                &health("tcp", "address", format!("{{address}}:{port}").into()),
                "127.0.0.1"
            )
            .await
        );
        assert!(
            !check(
                &health("tcp", "address", format!("127.0.0.1:{closed}").into()),
                "127.0.0.1"
            )
            .await
        );
        assert!(
            check(
                &health(
                    "http",
                    "url",
                    format!("http://{{address}}:{port}/ok").into()
                ),
                "127.0.0.1"
            )
            .await
        );
        assert!(
            !check(
                &health(
                    "http",
                    "url",
                    format!("http://127.0.0.1:{port}/down").into()
                ),
                "127.0.0.1"
            )
            .await
        );
        assert!(
            check(
                &health("exec", "command", serde_json::json!(["/bin/true"])),
                "127.0.0.1"
            )
            .await
        );
        assert!(
            !check(
                &health(
                    "exec",
                    "command",
                    serde_json::json!(["/bin/sh", "-c", "exit 1"])
                ),
                "127.0.0.1"
            )
            .await
        );
        assert!(
            !check(
                &health("exec", "command", serde_json::json!(["/bin/sleep", "5"])),
                "127.0.0.1"
            )
            .await,
            "a check past its timeout fails"
        );
    }
}
