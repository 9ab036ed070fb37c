//! The client against a real systemd booted in a container (support/container.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/container.rs"]
mod container;

use std::time::Duration;

use container::SystemdContainer;
use quorate_systemd::{ActiveState, Systemd, SystemdError};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_state_kill_and_errors_against_real_systemd() {
    if let Some(why) = container::unavailable() {
        assert!(
            std::env::var("QUORATE_TEST_NO_SKIP").map_or(true, |v| v != "1"),
            "QUORATE_TEST_NO_SKIP=1 and this test would skip: cannot boot a systemd container: {why}"
        );
        eprintln!("SKIPPED: cannot boot a systemd container: {why}");
        return;
    }
    let ct = SystemdContainer::boot(
        &[
            (
                "sleeper.service",
                "[Service]\nExecStart=/bin/sleep infinity\n".to_owned(),
            ),
            (
                "broken.service",
                "[Service]\nType=exec\nExecStart=/nonexistent/program\n".to_owned(),
            ),
            (
                "slowstop.service",
                "[Service]\nExecStart=/bin/sh -c 'trap \"\" TERM; while :; do sleep 0.1; done'\nTimeoutStopSec=1s\n".to_owned(),
            ),
        ],
        &[],
    );
    // The client reads DBUS_SYSTEM_BUS_ADDRESS, as the agent does in tests.
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", ct.bus());
    let systemd = Systemd::connect().await.unwrap();

    // start waits for the job: the unit is active when it returns.
    systemd.start("sleeper.service", WAIT).await.unwrap();
    assert_eq!(ct.is_active("sleeper.service"), "active");
    let state = systemd.state("sleeper.service").await.unwrap();
    assert_eq!(state.active, ActiveState::Active);
    assert!(state.main_pid > 1, "{state:?}");

    // stop waits too.
    systemd.stop("sleeper.service", WAIT).await.unwrap();
    assert_eq!(ct.is_active("sleeper.service"), "inactive");
    assert!(!systemd
        .state("sleeper.service")
        .await
        .unwrap()
        .active
        .may_run());

    // A unit that cannot start: the job result names it.
    let err = systemd.start("broken.service", WAIT).await.unwrap_err();
    assert!(
        matches!(&err, SystemdError::Job { verb: "start", result, .. } if result == "failed"),
        "{err}"
    );
    assert_eq!(
        systemd.state("broken.service").await.unwrap().active,
        ActiveState::Failed
    );

    // An unknown unit is refused before anything is asked of systemd.
    let err = systemd.start("nope.service", WAIT).await.unwrap_err();
    assert!(matches!(err, SystemdError::UnknownUnit(_)), "{err}");
    assert!(
        err.to_string().contains("`nope.service` does not exist"),
        "{err}"
    );

    // kill reaches processes that ignore SIGTERM.
    systemd.start("slowstop.service", WAIT).await.unwrap();
    systemd.kill("slowstop.service", 9).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while systemd
        .state("slowstop.service")
        .await
        .unwrap()
        .active
        .may_run()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGKILL did not end the unit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A bus nobody listens on: a clear connection error.
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus");
    let err = Systemd::connect().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot reach systemd over D-Bus at unix:path=/nonexistent/bus"),
        "{err}"
    );
}
