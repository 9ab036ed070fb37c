//! The HTTP API of real agents, called with curl as users call it: every endpoint with
//! the CLI's semantics; refused without credentials, with a certificate of another CA,
//! with a node's certificate, and for a viewer who operates; a malformed body for every
//! operation is a clear 4xx that changes nothing; events say who asked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::TestCluster;

/// How a request authenticates.
enum Auth<'a> {
    None,
    /// A directory holding client.pem/client.key (or node.pem/node.key).
    Cert(&'a Path, &'a str),
    Token(&'a str),
}

struct Api {
    cluster: TestCluster,
    port: u16,
}

impl Api {
    fn start() -> Self {
        let mut cluster = TestCluster::with_services(3, &TestCluster::demo_services(&["web"]));
        let port = support::free_port();
        let spec = cluster.path().join("quorate.toml");
        let text = std::fs::read_to_string(&spec).unwrap().replacen(
            "[network]\n",
            &format!("[network]\napi_port = {port}\n"),
            1,
        );
        std::fs::write(&spec, text).unwrap();
        cluster.start_all();
        cluster.wait_running_elsewhere("n1", "web", None);
        Self { cluster, port }
    }

    fn ca(&self) -> PathBuf {
        self.cluster.path().join("ca")
    }

    /// `curl` to n1's API; returns the HTTP status (0: no HTTP answer) and the body.
    fn call(&self, method: &str, path: &str, auth: &Auth<'_>, body: Option<&str>) -> (u16, Value) {
        let (code, text) = self.call_on("n1", method, path, auth, body);
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `curl` to `node`'s API (nodes are n1…n3 at 127.0.0.1…3); the status and the
    /// body as text.
    fn call_on(
        &self,
        node: &str,
        method: &str,
        path: &str,
        auth: &Auth<'_>,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .arg("--resolve")
            .arg(format!("{node}:{}:127.0.0.{}", self.port, &node[1..]))
            .arg("--cacert")
            .arg(self.ca().join("ca.pem"));
        match auth {
            Auth::None => {}
            Auth::Cert(dir, stem) => {
                c.arg("--cert")
                    .arg(dir.join(format!("{stem}.pem")))
                    .arg("--key")
                    .arg(dir.join(format!("{stem}.key")));
            }
            Auth::Token(token) => {
                c.arg("-H").arg(format!("Authorization: Bearer {token}"));
            }
        }
        if let Some(body) = body {
            c.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        c.arg(format!("https://{node}:{}{path}", self.port));
        let out = c.output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    fn pin_of(&self, service: &str) -> Value {
        let (_, status) = self.cluster.status("n1", false);
        status["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .map(|s| s["pinned"].clone())
            .unwrap_or(Value::Null)
    }
}

fn issue(ca: &Path, name: &str, role: &str, out: &Path) {
    let o = Command::new(support::quorate_bin())
        .args(["ca", "issue", name, "--role", role, "--ca"])
        .arg(ca)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_api_answers_as_the_cli_does_and_only_to_whom_it_should() {
    if Command::new("curl").arg("--version").output().is_err() {
        support::skip("curl is not installed (scripts/test.sh installs it)");
        return;
    }
    let api = Api::start();
    let dir = api.cluster.path().to_owned();
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    issue(&api.ca(), "alice", "operator", &alice);
    issue(&api.ca(), "bob", "viewer", &bob);
    // Another CA's operator.
    let other = dir.join("other-ca");
    let o = Command::new(support::quorate_bin())
        .args(["ca", "init"])
        .arg(&other)
        .args(["--cluster", "other"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let mallory = dir.join("mallory");
    issue(&other, "mallory", "operator", &mallory);
    let token = api
        .cluster
        .ok(&[
            "token",
            "create",
            "--role",
            "viewer",
            "--data-dir",
            &api.cluster.data_dir("n1").to_string_lossy(),
        ])
        .stdout;
    let token = String::from_utf8(token).unwrap().trim().to_owned();
    let alice = Auth::Cert(&alice, "client");
    let bob = Auth::Cert(&bob, "client");
    let tls = api.cluster.data_dir("n1").join("tls");

    // Reads, as `status --json` has them.
    let (code, status) = api.call("GET", "/v1/status", &alice, None);
    assert_eq!(code, 200, "{status:#}");
    assert_eq!(status["quorum"], true);
    assert!(status["services"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "web"));
    let (code, _) = api.call("GET", "/v1/status", &bob, None);
    assert_eq!(code, 200);
    let (code, events) = api.call("GET", "/v1/events?limit=5", &Auth::Token(&token), None);
    assert_eq!(code, 200, "{events:#}");
    assert!(events["events"].is_array());
    let (code, explain) = api.call("GET", "/v1/services/web/explain", &bob, None);
    assert_eq!(code, 200, "{explain:#}");
    assert_eq!(explain["service"], "web");
    for (path, key) in [
        ("/v1/nodes", "nodes"),
        ("/v1/services", "services"),
        ("/v1/storage", "storage"),
    ] {
        let (code, part) = api.call("GET", path, &bob, None);
        assert_eq!(code, 200, "{path}: {part:#}");
        // That part of the status (by name: contact times move on between calls).
        let names = |v: &Value| -> Vec<Value> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x["name"].clone())
                .collect()
        };
        assert_eq!(names(&part[key]), names(&status[key]), "{path}");
    }
    let host = api.cluster.service("n1", "web").0.unwrap();
    let (code, sim) = api.call("GET", &format!("/v1/simulate?fail={host}"), &bob, None);
    assert_eq!(code, 200, "{sim:#}");
    assert_eq!(sim["failed"], serde_json::json!([host]));
    assert_ne!(sim["services"]["web"]["after"], host.as_str(), "{sim:#}");
    let (code, problem) = api.call("GET", "/v1/simulate?drain=n9", &bob, None);
    assert_eq!(code, 422, "{problem:#}");
    // Events after a cursor: none older than it.
    let (_, all) = api.call("GET", "/v1/events?limit=100", &bob, None);
    let first = all["events"][0]["seq"].as_u64().unwrap();
    let (code, later) = api.call("GET", &format!("/v1/events?after={first}"), &bob, None);
    assert_eq!(code, 200);
    assert!(later["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["seq"].as_u64().unwrap() > first));

    // Who may not ask.
    let (code, problem) = api.call("GET", "/v1/status", &Auth::None, None);
    assert_eq!(code, 401);
    assert_eq!(problem["status"], 401, "{problem:#}");
    assert!(problem["detail"].as_str().unwrap().contains("token create"));
    let (code, _) = api.call("GET", "/v1/status", &Auth::Cert(&mallory, "client"), None);
    assert_eq!(code, 0, "another CA's certificate fails the handshake");
    let (code, _) = api.call("GET", "/v1/status", &Auth::Cert(&tls, "node"), None);
    assert_eq!(code, 401, "a node's certificate carries no role");
    let (code, _) = api.call("GET", "/v1/status", &Auth::Token("qrt_not-a-token"), None);
    assert_eq!(code, 401);
    let before = api.pin_of("web");
    let (code, problem) = api.call(
        "POST",
        "/v1/services/web/move",
        &bob,
        Some(r#"{"node": "n2"}"#),
    );
    assert_eq!(code, 403, "{problem:#}");
    let (code, _) = api.call("POST", "/v1/nodes/n2/drain", &Auth::Token(&token), None);
    assert_eq!(code, 403);
    assert_eq!(api.pin_of("web"), before, "refused: nothing changed");

    // A malformed body for every operation: 400, nothing changed.
    for (path, bad) in [
        ("/v1/services/web/move", "{"),
        ("/v1/services/web/move", r#"{"node": 5}"#),
        ("/v1/services/web/move", r#"{"node": "n2", "force": true}"#),
        ("/v1/services/web/move", "[]"),
        ("/v1/nodes/n2/maintenance", r#"{"on": "yes"}"#),
        ("/v1/nodes/n2/maintenance", "{}"),
        ("/v1/services/web/restart", r#"{"now": true}"#),
        ("/v1/services/web/disable", "not json"),
        ("/v1/services/web/enable", "[1]"),
        ("/v1/nodes/n2/drain", r#"{"wait": false}"#),
        ("/v1/nodes/n2/undrain", "{"),
        ("/v1/services/web/ban", "{}"),
        ("/v1/services/web/ban", r#"{"node": "n2", "for_ms": -1}"#),
        ("/v1/services/web/unban", r#"{"node": ["n2"]}"#),
        ("/v1/services/web/cleanup", r#"{"node": "n2", "all": true}"#),
        ("/v1/cluster/maintenance", r#"{"on": 1}"#),
    ] {
        let (code, problem) = api.call("POST", path, &alice, Some(bad));
        assert_eq!(code, 400, "{path} {bad}: {problem:#}");
        assert_eq!(problem["exit_code"], 1, "{problem:#}");
        assert!(problem["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was changed"));
    }
    assert_eq!(api.pin_of("web"), before);
    let (_, status) = api.cluster.status("n1", false);
    assert!(
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "up"),
        "no node drained or in maintenance: {status:#}"
    );

    // Refusals carry the CLI's exit code.
    let (code, problem) = api.call(
        "POST",
        "/v1/services/nope/move",
        &alice,
        Some(r#"{"node": "n2"}"#),
    );
    assert_eq!(code, 422, "{problem:#}");
    assert_eq!(problem["exit_code"], 1);
    let (code, _) = api.call("GET", "/v1/nope", &alice, None);
    assert_eq!(code, 404);

    // Operations by an operator, acknowledged through Raft, recorded with who asked.
    let (code, done) = api.call(
        "POST",
        "/v1/services/web/move",
        &alice,
        Some(r#"{"node": "n2"}"#),
    );
    assert_eq!(code, 200, "{done:#}");
    api.cluster
        .wait_for("web on n2", Duration::from_secs(30), || {
            api.cluster.service("n1", "web").0.as_deref() == Some("n2")
        });
    let (code, _) = api.call(
        "POST",
        "/v1/services/web/move",
        &alice,
        Some(r#"{"node": null}"#),
    );
    assert_eq!(code, 200);
    for (path, body) in [
        ("/v1/nodes/n3/drain", None),
        ("/v1/nodes/n3/undrain", Some("{}")),
        ("/v1/nodes/n3/maintenance", Some(r#"{"on": true}"#)),
        ("/v1/nodes/n3/maintenance", Some(r#"{"on": false}"#)),
        ("/v1/services/web/restart", None),
        ("/v1/services/web/disable", None),
        ("/v1/services/web/enable", None),
        (
            "/v1/services/web/ban",
            Some(r#"{"node": "n3", "for_ms": 600000}"#),
        ),
        ("/v1/services/web/unban", Some(r#"{"node": "n3"}"#)),
        ("/v1/services/web/cleanup", Some("{}")),
        ("/v1/cluster/maintenance", Some(r#"{"on": true}"#)),
        ("/v1/cluster/maintenance", Some(r#"{"on": false}"#)),
    ] {
        let (code, reply) = api.call("POST", path, &alice, body);
        assert_eq!(code, 200, "{path}: {reply:#}");
    }
    let (_, events) = api.call("GET", "/v1/events?limit=50", &alice, None);
    let by: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["by"].as_str())
        .collect();
    assert!(by.contains(&"api:alice@n1"), "events say who asked: {by:?}");
}

/// The value of `name` (with `labels`, when given) in Prometheus text, parsed by a
/// Prometheus text-format parser.
fn metric(text: &str, name: &str) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            _ => None,
        })
}

#[test]
fn metrics_count_a_failover_and_time_it() {
    if Command::new("curl").arg("--version").output().is_err() {
        support::skip("curl is not installed (scripts/test.sh installs it)");
        return;
    }
    let mut api = Api::start();
    let dir = api.cluster.path().join("watcher");
    issue(&api.ca(), "prometheus", "viewer", &dir);
    let viewer = Auth::Cert(&dir, "client");
    let (_, status) = api.cluster.status("n1", false);
    let leader = status["leader"].as_str().unwrap().to_owned();
    let (code, text) = api.call_on(&leader, "GET", "/metrics", &viewer, None);
    assert_eq!(code, 200, "{text}");
    assert_eq!(metric(&text, "quorate_raft_leader"), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "quorate_failovers_total"),
        Some(0.0),
        "{text}"
    );
    assert!(
        metric(&text, "quorate_lease_renewals_total").is_some_and(|v| v > 0.0),
        "{text}"
    );
    // web on a node that is not the leader, then that node loses power.
    let host = api.cluster.service(&leader, "web").0.unwrap();
    let host = if host == leader {
        let other = ["n1", "n2", "n3"]
            .into_iter()
            .find(|n| *n != leader)
            .unwrap();
        api.cluster.ok(&[
            "move",
            "web",
            other,
            "--data-dir",
            &api.cluster.data_dir(&leader).to_string_lossy(),
        ]);
        api.cluster
            .wait_for("web moved", Duration::from_secs(30), || {
                api.cluster.service(&leader, "web").0.as_deref() == Some(other)
            });
        api.cluster.ok(&[
            "move",
            "--clear",
            "web",
            "--data-dir",
            &api.cluster.data_dir(&leader).to_string_lossy(),
        ]);
        other.to_owned()
    } else {
        host
    };
    api.cluster.poweroff(&host);
    let moved = api
        .cluster
        .wait_running_elsewhere(&leader, "web", Some(&host));
    assert_ne!(moved, host);
    let mut text = String::new();
    api.cluster
        .wait_for("the failover timed", Duration::from_secs(20), || {
            text = api.call_on(&leader, "GET", "/metrics", &viewer, None).1;
            metric(&text, "quorate_failover_seconds_count") == Some(1.0)
        });
    assert_eq!(
        metric(&text, "quorate_failovers_total"),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(&text, "quorate_commit_seconds_count").is_some_and(|n| n >= 1.0),
        "the placement's commit was timed: {text}"
    );
    let seconds = metric(&text, "quorate_failover_seconds_sum").unwrap();
    assert!(
        (0.5..30.0).contains(&seconds),
        "from the last renewal to running elsewhere: {seconds} s"
    );
    // The leader's status (and so the dashboard's timeline) has it with its duration.
    let (_, status) = api.cluster.status(&leader, false);
    let failover = &status["failovers"][0];
    assert_eq!(failover["service"], "web", "{status:#}");
    assert_eq!(failover["from"], host.as_str());
    assert_eq!(failover["to"], moved.as_str());
    assert!(
        (failover["seconds"].as_f64().unwrap() - seconds).abs() < 1e-6,
        "the same duration as the histogram's: {failover}"
    );
    let (code, _) = api.call_on(&leader, "GET", "/metrics", &Auth::None, None);
    assert_eq!(code, 401);
}
