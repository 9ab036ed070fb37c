//! Telling systemd how the agent is doing (`Type=notify` units): `READY=1` once the node
//! is a member of the cluster with a known leader — or, when no leader appears within a
//! few election timeouts, `READY=1` with a status that says it waits for quorum (so that
//! booting the first node of a cluster does not fail its unit); `STATUS=` whenever that
//! changes; `WATCHDOG=1` at half of `WatchdogSec`; `STOPPING=1` on shutdown.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::cluster::Node;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Reports readiness and status changes until the agent stops.
pub async fn report(node: Arc<Node>, cluster: String, wait_for_quorum: Duration) {
    let started = Instant::now();
    let mut ready = false;
    let mut last = String::new();
    loop {
        let leader = node.leader_name();
        let joined = leader.is_some();
        let status = match leader {
            Some(leader) => format!("member of cluster {cluster}; leader {leader}"),
            None => format!("waiting for quorum in cluster {cluster} (no leader reachable)"),
        };
        if !ready && (joined || started.elapsed() >= wait_for_quorum) {
            tracing::info!("ready: {status}");
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            ready = true;
            last = status;
        } else if ready && status != last {
            send(&[NotifyState::Status(&status)]);
            last = status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pings systemd's watchdog at half its interval, when the unit has `WatchdogSec`.
/// The pings come from the agent's async runtime: if it stops scheduling tasks, they
/// stop and systemd restarts the agent.
pub async fn pet_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(10));
    loop {
        send(&[NotifyState::Watchdog]);
        tokio::time::sleep(every).await;
    }
}

/// Says the agent is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
