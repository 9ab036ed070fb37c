//! Only the cluster speaks to the cluster: a certificate from the cluster's own CA is
//! not enough. Real agents on loopback; the "attacker" speaks the peer protocol with
//! a CA-signed certificate, as a stolen or leftover one would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use quorate_consensus::{kinds, PeerReply};
use quorate_net::{Partition, PeerClient};
use support::TestCluster;

/// A client speaking as `node` with the certificate in `tls_dir`, to `to`.
fn client(c: &TestCluster, tls_dir: &std::path::Path, node: &str, to: &str) -> PeerClient {
    let tls = quorate_pki::load(&quorate_pki::TlsFiles::in_dir(tls_dir), node).unwrap();
    let index: u8 = to.trim_start_matches('n').parse().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, index], c.port));
    PeerClient::new(
        to,
        addr,
        &quorate_pki::SharedTls::new(tls),
        Partition::default(),
    )
}

/// Sends `json` as a frame of `kind` and decodes the reply.
fn send(client: &mut PeerClient, kind: u8, json: &serde_json::Value) -> PeerReply {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = serde_json::to_vec(json).unwrap();
    let reply = rt
        .block_on(client.call(kind, &bytes, Duration::from_secs(10)))
        .unwrap();
    serde_json::from_slice(&reply).unwrap()
}

/// Every message class a node sends, as a frame of the kind it travels as.
fn every_message() -> Vec<(&'static str, u8, serde_json::Value)> {
    let app = |m: serde_json::Value| serde_json::json!({ "App": m });
    vec![
        // Refused before its bytes are even decoded: any content will do.
        (
            "raft",
            kinds::RAFT,
            serde_json::json!({ "Raft": { "Vote": {} } }),
        ),
        (
            "probe",
            kinds::REPORT,
            app(serde_json::json!({ "peer_message": "probe" })),
        ),
        (
            "lease",
            kinds::REPORT,
            app(serde_json::json!({ "peer_message": "renew_lease" })),
        ),
        (
            "observe",
            kinds::REPORT,
            app(serde_json::json!({ "peer_message": "observe", "services": { "web": "running" } })),
        ),
        (
            "control",
            kinds::CONTROL,
            app(
                serde_json::json!({ "peer_message": "control", "request": { "request": "set_admin", "node": "n1", "state": "draining" } }),
            ),
        ),
    ]
}

fn issue(c: &TestCluster, node: &str) -> std::path::PathBuf {
    let out = c.path().join(format!("stolen-{node}"));
    c.ok(&[
        "ca",
        "issue",
        node,
        "--ca",
        "ca",
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

#[test]
fn a_certificate_for_a_node_not_in_the_spec_is_refused_for_every_message() {
    let mut c = TestCluster::new(3);
    let leader = c.start_all();
    let rogue = issue(&c, "n9");
    for to in ["n1", "n2", "n3"] {
        for (what, kind, message) in every_message() {
            let reply = send(&mut client(&c, &rogue, "n9", to), kind, &message);
            assert!(
                matches!(&reply, PeerReply::NotMember(why) if why.contains("n9")),
                "{what} to {to}: {reply:?}"
            );
        }
    }
    // The same check passes a member: n2's probe is answered (the refusal above is
    // about membership, not about the messages).
    let n2 = c.data_dir("n2").join("tls");
    let reply = send(
        &mut client(&c, &n2, "n2", "n1"),
        kinds::REPORT,
        &every_message()[1].2,
    );
    assert!(
        matches!(&reply, PeerReply::App(v) if v["has_state"] == true),
        "{reply:?}"
    );
    // Nothing the rogue sent changed anything: no node is draining, no event names n9.
    let states = c.node_states(&leader);
    assert!(states.values().all(|s| s == "up"), "{states:?}");
    let events = String::from_utf8_lossy(
        &c.ok(&[
            "events",
            "--data-dir",
            c.data_dir(&leader).to_str().unwrap(),
        ])
        .stdout,
    )
    .into_owned();
    assert!(
        !events.contains("n9") && !events.contains("draining"),
        "{events}"
    );
}

#[test]
fn a_member_cannot_cut_another_nodes_traffic_and_production_agents_take_no_faults() {
    let mut c = TestCluster::new(3);
    // These agents run as in production: no fault injection.
    c.env.retain(|(k, _)| k != "QUORATE_ALLOW_FAULT_INJECTION");
    let leader = c.start_all();
    let n2 = c.data_dir("n2").join("tls");
    let cut = serde_json::json!({ "App": { "peer_message": "control", "request": { "request": "partition", "cut": true } } });
    let reply = send(&mut client(&c, &n2, "n2", "n1"), kinds::CONTROL, &cut);
    let PeerReply::App(answer) = &reply else {
        panic!("{reply:?}")
    };
    assert_eq!(answer["reply"], "refused", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("peers may not"),
        "{answer}"
    );
    // A small message sent as a large frame kind is refused too.
    let probe = serde_json::json!({ "App": { "peer_message": "probe" } });
    let reply = send(&mut client(&c, &n2, "n2", "n1"), kinds::CONTROL, &probe);
    assert!(
        matches!(&reply, PeerReply::App(v) if v["reply"] == "refused"),
        "{reply:?}"
    );
    // On the node's own socket, a production agent refuses the fault as well.
    let local = c.control("n1", &quorate_api::ControlRequest::Partition { cut: true });
    assert!(
        matches!(&local, quorate_api::ControlReply::Refused { message, .. } if message.contains("fault injection")),
        "{local:?}"
    );
    // n1 still talks to everyone: the leader hears from it.
    std::thread::sleep(Duration::from_secs(2));
    let states = c.node_states(&leader);
    assert_eq!(states["n1"], "up", "{states:?}");
}

#[test]
fn a_node_removed_from_the_spec_is_refused_and_events_say_who_asked() {
    let mut c = TestCluster::new(4);
    c.start_all();
    let n4 = c.data_dir("n4").join("tls");
    let probe = &every_message()[1].2;
    assert!(matches!(
        send(&mut client(&c, &n4, "n4", "n1"), kinds::REPORT, probe),
        PeerReply::App(_)
    ));
    // Remove n4 from the spec and apply it through n2's socket.
    let path = c.path().join("quorate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("\n[nodes.n4]\naddress = \"127.0.0.4\"\n", "\n");
    assert!(!text.contains("n4"), "{text}");
    std::fs::write(&path, text).unwrap();
    c.ok(&["lock"]);
    let dd = c.data_dir("n2");
    let out = c.run(&[
        "apply",
        "--allow-destructive",
        "--data-dir",
        dd.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_agreed(&["n1", "n2", "n3"], 2);
    // Every remaining node refuses n4 now, for every message.
    for to in ["n1", "n2", "n3"] {
        c.wait_for("the node to refuse n4", Duration::from_secs(10), || {
            matches!(
                send(&mut client(&c, &n4, "n4", to), kinds::REPORT, probe),
                PeerReply::NotMember(_)
            )
        });
        for (what, kind, message) in every_message() {
            let reply = send(&mut client(&c, &n4, "n4", to), kind, &message);
            assert!(
                matches!(reply, PeerReply::NotMember(_)),
                "{what} to {to}: {reply:?}"
            );
        }
    }
    // The apply is recorded with who asked: the user on n2, through n2.
    let events =
        String::from_utf8_lossy(&c.ok(&["events", "--data-dir", dd.to_str().unwrap()]).stdout)
            .into_owned();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .map_or_else(|| format!("uid{}", nix::unistd::getuid()), |u| u.name);
    let asked = format!("{user}@n2");
    assert!(
        events
            .lines()
            .any(|l| l.contains(&asked) && l.contains("spec version 2")),
        "no `spec version 2` event by {asked}:\n{events}"
    );
}

/// Sends a probe as `node` with the certificate in `tls_dir`; the transport error, if any.
fn probe_as(
    c: &TestCluster,
    tls_dir: &std::path::Path,
    node: &str,
    to: &str,
) -> Result<PeerReply, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = serde_json::to_vec(&every_message()[1].2).unwrap();
    let reply = rt
        .block_on(client(c, tls_dir, node, to).call(kinds::REPORT, &bytes, Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    Ok(serde_json::from_slice(&reply).unwrap())
}

/// Replaces the node's certificate and key with fresh ones from the CA in `ca`, valid
/// for `days`, as an operator's secret tooling would (each file renamed into place).
fn renew(c: &TestCluster, node: &str, ca: &str, days: u32) {
    let fresh = c.path().join(format!("renewed-{node}-{ca}-{days}"));
    c.ok(&[
        "ca",
        "issue",
        node,
        "--ca",
        ca,
        "--out",
        fresh.to_str().unwrap(),
        "--days",
        &days.to_string(),
    ]);
    let tls = c.data_dir(node).join("tls");
    for file in ["node.pem", "node.key"] {
        std::fs::copy(fresh.join(file), tls.join(format!("{file}.new"))).unwrap();
        std::fs::rename(tls.join(format!("{file}.new")), tls.join(file)).unwrap();
    }
}

fn install_ca(c: &TestCluster, node: &str, pem: &std::path::Path) {
    let tls = c.data_dir(node).join("tls");
    std::fs::copy(pem, tls.join("ca.pem.new")).unwrap();
    std::fs::rename(tls.join("ca.pem.new"), tls.join("ca.pem")).unwrap();
}

/// SIGHUP to the node's agent, then waits until its own status shows the certificate
/// valid for `days_left` days.
fn reload(c: &TestCluster, node: &str) {
    let before = c.log(node).matches("SIGHUP: reloaded").count();
    c.signal(node, "-HUP");
    c.wait_for(
        "the agent to reload its TLS material",
        Duration::from_secs(10),
        || c.log(node).matches("SIGHUP: reloaded").count() > before,
    );
}

fn own_days_left(c: &TestCluster, node: &str) -> i64 {
    let (_, status) = c.status(node, true);
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap()["certificate_days_left"]
        .as_i64()
        .unwrap()
}

/// Asserts the leader has quorum now, asked through `via`.
fn assert_quorum(c: &TestCluster, via: &str, when: &str) {
    let (code, status) = c.status(via, false);
    assert_eq!(code, Some(0), "{when}: {status:#}");
    assert_eq!(status["quorum"], true, "{when}: {status:#}");
}

#[test]
fn an_expired_certificate_is_refused_and_a_renewed_one_loads_on_sighup_with_quorum_kept() {
    let mut c = TestCluster::new(3);
    let expired = c.path().join("expired-n2");
    c.ok(&[
        "ca",
        "issue",
        "n2",
        "--ca",
        "ca",
        "--out",
        expired.to_str().unwrap(),
        "--days",
        "0",
    ]);
    let leader = c.start_all();
    std::thread::sleep(Duration::from_millis(1500));
    // A member's name on an expired certificate: the handshake fails.
    let refused = probe_as(&c, &expired, "n2", &leader);
    assert!(
        refused.is_err(),
        "an expired certificate was accepted: {refused:?}"
    );
    // An agent does not start on one either, and says why.
    let out = c.run(&[
        "agent",
        "--node",
        "n2",
        "--data-dir",
        c.path().join("d/expired").to_str().unwrap(),
        "--cert",
        expired.join("node.pem").to_str().unwrap(),
        "--key",
        expired.join("node.key").to_str().unwrap(),
        "--ca",
        expired.join("ca.pem").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has expired"),
        "{out:?}"
    );

    // The status shows each node's certificate expiry; the default is a year.
    assert_eq!(own_days_left(&c, "n1"), 364);
    // Renew n1's certificate for 20 days and reload it: no restart, quorum kept.
    renew(&c, "n1", "ca", 20);
    reload(&c, "n1");
    assert_eq!(own_days_left(&c, "n1"), 19);
    assert_quorum(&c, "n1", "after the reload");
    // `status` warns about a certificate that expires within 30 days.
    let text = String::from_utf8_lossy(
        &c.run(&[
            "status",
            "--local",
            "--data-dir",
            c.data_dir("n1").to_str().unwrap(),
        ])
        .stdout,
    )
    .into_owned();
    assert!(
        text.contains("warning: the certificate of n1 expires in 19 days"),
        "{text}"
    );
    // New connections to n1 use the renewed certificate: a restarted peer rejoins.
    let other = if leader == "n3" { "n2" } else { "n3" };
    c.kill(other);
    c.start(other);
    c.wait_agreed(&["n1", "n2", "n3"], 1);
}

#[test]
fn a_rolling_ca_rotation_keeps_quorum_from_start_to_end() {
    let mut c = TestCluster::new(3);
    c.start_all();
    let out = c.ok(&[
        "ca",
        "rotate",
        "--ca",
        "ca",
        "--new",
        "ca2",
        "--cluster",
        "test",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("systemctl reload quorate"));
    let bundle = c.path().join("ca2/bundle.pem");
    let nodes = ["n1", "n2", "n3"];
    // 1. Everyone trusts both CAs.
    for n in nodes {
        install_ca(&c, n, &bundle);
        reload(&c, n);
        assert_quorum(&c, n, &format!("step 1 on {n}"));
    }
    // 2. Everyone gets a certificate of the new CA.
    for n in nodes {
        renew(&c, n, "ca2", 365);
        reload(&c, n);
        assert_quorum(&c, n, &format!("step 2 on {n}"));
    }
    // 3. The old CA is trusted no more.
    for n in nodes {
        install_ca(&c, n, &c.path().join("ca2/ca.pem"));
        reload(&c, n);
        assert_quorum(&c, n, &format!("step 3 on {n}"));
    }
    // Every connection is made anew under the new CA: all agents restart one by one
    // and the cluster comes back each time.
    for n in nodes {
        c.kill(n);
        c.start(n);
        c.wait_agreed(&nodes, 1);
    }
    // A certificate of the old CA is refused now.
    let old = issue(&c, "n2");
    assert!(
        probe_as(&c, &old, "n2", "n1").is_err(),
        "the old CA is still trusted"
    );
}
