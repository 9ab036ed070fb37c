//! Health checks of running workloads: `http` (a GET answered 2xx, over TLS for
//! `https://` with the spec's `ca` or `insecure = true`), `tcp` (a connect), `exec` (a
//! command exiting 0), each with its interval, timeout and number of consecutive
//! failures that count as one failure. `{address}` in the URL, address or command is
//! replaced by the node's address.

use std::time::Duration;

use quorate_spec::{Health, HealthKind};

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
                Some(url) => {
                    http_ok(
                        &fill(url),
                        health.ca.as_deref(),
                        health.insecure,
                        health.timeout.get(),
                    )
                    .await
                }
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

/// GET `url`; true on a 2xx answer. `https://` checks the server's certificate
/// against `ca` (a PEM file), or accepts any with `insecure` (the spec insists on
/// one of the two). The client is blocking, so it runs on the blocking pool; the
/// caller's timeout bounds it, and so does its own.
async fn http_ok(url: &str, ca: Option<&str>, insecure: bool, timeout: Duration) -> bool {
    let (url, ca) = (url.to_string(), ca.map(str::to_string));
    let get = tokio::task::spawn_blocking(move || {
        let agent = match http_agent(ca.as_deref(), insecure, timeout) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("health check {url}: {e}");
                return false;
            }
        };
        match agent.get(&url).call() {
            Ok(response) => response.status().is_success(),
            Err(e) => {
                tracing::debug!("health check {url}: {e}");
                false
            }
        }
    });
    get.await.unwrap_or(false)
}

fn http_agent(ca: Option<&str>, insecure: bool, timeout: Duration) -> Result<ureq::Agent, String> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};
    let mut tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .disable_verification(insecure);
    if let Some(path) = ca {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA {path}: {e}"))?;
        let roots: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if roots.is_empty() {
            return Err(format!("no certificate in the CA file {path}"));
        }
        tls = tls.root_certs(RootCerts::Specific(std::sync::Arc::new(roots)));
    }
    Ok(ureq::Agent::config_builder()
        .tls_config(tls.build())
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into())
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    /// A CA and a server certificate for localhost / 127.0.0.1 signed by it.
    fn ca_and_server() -> (String, rustls::ServerConfig) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &issuer).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        (ca.pem(), config)
    }

    #[tokio::test]
    async fn https_checks_verify_the_certificate_against_the_spec_ca() {
        let (ca_pem, server) = ca_and_server();
        let (other_ca, _) = ca_and_server();
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
        std::fs::write(&good, ca_pem).unwrap();
        std::fs::write(&bad, other_ca).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await;
                    let ok = String::from_utf8_lossy(&buf).starts_with("GET /ok ");
                    let reply = if ok {
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    } else {
                        "HTTP/1.1 503 Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    };
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        let https = |path: &str, extra: serde_json::Value| {
            let mut v = serde_json::json!({
                "kind": "http",
                "timeout": "2s",
                "url": format!("https://{{address}}:{port}/{path}"),
            });
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            serde_json::from_value::<Health>(v).unwrap()
        };
        let with_ca = |ca: &std::path::Path| serde_json::json!({ "ca": ca.to_str().unwrap() });
        // The right CA: a real HTTPS GET, its status decides.
        assert!(check(&https("ok", with_ca(&good)), "127.0.0.1").await);
        assert!(!check(&https("down", with_ca(&good)), "127.0.0.1").await);
        // A certificate from another CA fails the check, even though the port is open.
        assert!(!check(&https("ok", with_ca(&bad)), "127.0.0.1").await);
        // `insecure = true` accepts any certificate.
        assert!(
            check(
                &https("ok", serde_json::json!({ "insecure": true })),
                "127.0.0.1"
            )
            .await
        );
        // Plain http to a TLS port is not healthy either.
        let plain: Health = serde_json::from_value(serde_json::json!({
            "kind": "http", "timeout": "1s", "url": format!("http://127.0.0.1:{port}/ok"),
        }))
        .unwrap();
        assert!(!check(&plain, "127.0.0.1").await);
    }
}
