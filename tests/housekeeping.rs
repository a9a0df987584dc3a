//! The housekeeping task as `serve` runs it: its first sweep at start removes what expired (by
//! the service's clock), it stops promptly at shutdown, and its settings refuse nonsense. What
//! each sweep deletes, batch by batch and on both backends, is in `tests/store_contract.rs`.

mod common;

use common::process::{run, tessera};
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera::housekeeping::HousekeepingConfig;

#[tokio::test]
async fn the_task_sweeps_what_expired_by_the_service_clock_and_stops_at_once() {
    let app = spawn_app().await;
    let expired = app.user_with_session("expired@example.com").await;
    // Past the session lifetime (12 h) by the service's clock; then another user's login stays.
    app.clock.advance(time::Duration::hours(13));
    let live = app.user_with_session("live@example.com").await;
    assert_eq!(app.count("SELECT COUNT(*) FROM sessions").await, 2);

    let task = tessera::housekeeping::spawn(
        app.store.clone(),
        Arc::new(app.clock.clone()),
        HousekeepingConfig {
            interval: Duration::from_secs(3600),
            event_retention_days: 400,
            session_idle_secs: app.config().service.session_idle_secs,
            keep_undelivered_events: false,
        },
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.count("SELECT COUNT(*) FROM sessions").await != 1 {
        assert!(Instant::now() < deadline, "the expired session was not swept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.get("/api/auth/session", Some(&live)).await.status, 200);
    assert_eq!(app.get("/api/auth/session", Some(&expired)).await.status, 401);

    let stopping = Instant::now();
    task.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "a task waiting for its next interval stops at once"
    );
}

#[test]
fn the_housekeeping_settings_refuse_zero() {
    for (flag, name) in [
        ("--event-retention-days", "event_retention_days"),
        ("--housekeeping-interval-secs", "housekeeping_interval_secs"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let refused = run(tessera(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            flag,
            "0",
        ]));
        assert!(!refused.status.success(), "{flag} 0 accepted");
        let errors: Vec<&str> = refused.stderr.lines().filter(|l| l.starts_with("Error")).collect();
        assert_eq!(errors.len(), 1, "{}", refused.stderr);
        assert!(errors[0].contains(name), "{}", errors[0]);
    }
}
