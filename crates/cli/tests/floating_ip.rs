//! A floating address follows its service between hosts: each node is its own network
//! namespace on a switch (support/netns.rs). The address is added on the node that
//! runs the service, answers there, and moves — after power loss of that node, and
//! after its agent dies (then its fence process removes the address).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use quorate_lab::netns::{self, Network as NetLab};
use support::{quorate_bin, witness, TestCluster};

const FLOATING: &str = "10.88.0.100/24";

/// Waits until HTTP on the floating address (from the switch) answers `expected`.
fn answer(cluster: &TestCluster, lab: &NetLab, expected: &str) {
    cluster.wait_for(
        &format!("the floating address to answer `{expected}`"),
        Duration::from_secs(20),
        || lab.http_get("10.88.0.100", 8080).as_deref() == Some(expected),
    );
}

#[test]
fn a_floating_ip_moves_with_its_service_and_answers_on_the_new_node() {
    if let Some(why) = netns::unavailable() {
        support::skip(&format!("network namespaces unavailable: {why}"));
        return;
    }
    let lab = NetLab::new("qtip", 3).unwrap();
    let services = format!(
        "\n[services.web]\nkind = \"process\"\ncommand = [{:?}, \"demo\", \"--port\", \"8080\", \"--bind\", \"0.0.0.0\"]\nstop_timeout = \"2s\"\nip = \"{FLOATING}\"\ninterface = \"eth0\"\n\n[services.api]\nkind = \"process\"\ncommand = [{:?}, \"demo\"]\nstop_timeout = \"2s\"\nip = \"10.88.0.101/24\"\n",
        quorate_bin(),
        quorate_bin()
    );
    let mut cluster = TestCluster::in_netns(&lab, &services);
    cluster.start_all();
    let index = |node: &str| node.trim_start_matches('n').parse::<usize>().unwrap();
    let holders =
        |address: &str| -> Vec<usize> { (1..=3).filter(|i| lab.holds(*i, address)).collect() };

    let first = cluster.wait_running_elsewhere("n1", "web", None);
    assert_eq!(holders(FLOATING), vec![index(&first)]);
    answer(&cluster, &lab, &format!("web on {first}"));
    // Without `interface`, the address goes on the interface of the node's address.
    let api = cluster.wait_running_elsewhere("n1", "api", None);
    assert_eq!(holders("10.88.0.101/24"), vec![index(&api)]);

    // Power loss of web's node: its agent, fence and workloads die and its cable is cut.
    let ask = if first == "n1" { "n2" } else { "n1" };
    cluster.poweroff(&first);
    lab.link(index(&first), false).unwrap();
    let second = cluster.wait_running_elsewhere(ask, "web", Some(&first));
    answer(&cluster, &lab, &format!("web on {second}"));
    assert!(lab.holds(index(&second), FLOATING));

    // The first node comes back: it drops the address it held when it lost power.
    lab.link(index(&first), true).unwrap();
    cluster.start(&first);
    cluster.wait_agreed(&["n1", "n2", "n3"], 1);
    cluster.wait_for(
        "the restarted node to drop its stale address",
        Duration::from_secs(10),
        || !lab.holds(index(&first), FLOATING),
    );
    assert_eq!(holders(FLOATING), vec![index(&second)]);

    // web's new agent dies alone (kill -9): its fence SIGKILLs web and removes the
    // address when the lease runs out; web and its address move to the last node.
    let ask = (1..=3)
        .map(|i| format!("n{i}"))
        .find(|n| *n != second)
        .unwrap();
    cluster.kill(&second);
    let third = cluster.wait_running_elsewhere(&ask, "web", Some(&second));
    cluster.wait_for(
        "the fence to remove the address",
        Duration::from_secs(20),
        || !lab.holds(index(&second), FLOATING),
    );
    answer(&cluster, &lab, &format!("web on {third}"));
    assert_eq!(holders(FLOATING), vec![index(&third)]);

    let doubles = witness::double_runs(&witness::runs(&cluster.journal()));
    assert!(doubles.is_empty(), "{doubles:#?}");
}

/// At its deadline the fence removes the floating address itself, over rtnetlink:
/// with no `ip` on its PATH (a forked `ip` failed here before) the address is gone
/// all the same, and a second address it lists that is not there is reported so.
#[test]
fn the_fence_removes_an_address_without_forking_ip() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    if let Some(why) = netns::unavailable() {
        support::skip(&format!("network namespaces unavailable: {why}"));
        return;
    }
    let lab = NetLab::new("qtfn", 1).unwrap();
    let ns = lab.nodes[0].clone();
    let added = Command::new("ip")
        .args(["-n", &ns, "addr", "add", FLOATING, "dev", "eth0"])
        .status()
        .unwrap();
    assert!(added.success());
    assert!(lab.holds(1, FLOATING));
    let empty_path = tempfile::tempdir().unwrap();
    let mut fence = Command::new("ip")
        .args(["netns", "exec", &ns, "env", "-i"])
        .arg(format!("PATH={}", empty_path.path().display()))
        .arg(quorate_bin())
        .args(["fence", "--node", "n1"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = witness::mono_ns() + 300_000_000;
    let stdin = fence.stdin.as_mut().unwrap();
    writeln!(stdin, "ips web=eth0,{FLOATING} api=eth0,10.88.0.101/24").unwrap();
    writeln!(stdin, "lease {deadline}").unwrap();
    drop(fence.stdin.take());
    let out = fence.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        !lab.holds(1, FLOATING),
        "the address survived the fence: {said}"
    );
    assert!(
        said.contains(&format!("removed {FLOATING} from eth0 (done)")),
        "{said}"
    );
    assert!(
        said.contains("removed 10.88.0.101/24 from eth0 (was not there)"),
        "{said}"
    );
}
