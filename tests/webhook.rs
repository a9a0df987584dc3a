//! The security-event webhook as a receiver and an operator see it: Standard Webhooks headers
//! checked by the reference verifier from PyPI (`standardwebhooks`), bounded retries timed by the
//! service's clock, dead events that no longer hold back the others, `tessera events dead` and
//! `tessera events redeliver`, and what a graceful stop does to a delivery in flight.
//!
//! The Python check needs `python3` with the `standardwebhooks` package; without it the test
//! says so and skips, unless `TESSERA_REQUIRE_STANDARDWEBHOOKS=1` (set by `.ci/run`), which
//! makes it fail instead.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::process::{run, tessera};
use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera::store::{Redelivery, WebhookBacklog};
use tessera::webhook::WebhookConfig;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Attempt {
    id: i64,
    timestamp: i64,
    headers: HeaderMap,
    body: Vec<u8>,
    accepted: bool,
}

/// A receiver that refuses (503) the event ids it is told to, and may take its time answering.
#[derive(Clone, Default)]
struct Receiver {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    refuse_all: Arc<Mutex<bool>>,
    refused: Arc<Mutex<HashSet<i64>>>,
    delay: Arc<Mutex<Duration>>,
    arrived: Arc<tokio::sync::Notify>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let id = headers["webhook-id"].to_str().unwrap().parse().unwrap();
    let timestamp = headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
    receiver.arrived.notify_waiters();
    let delay = *receiver.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let accepted = !*receiver.refuse_all.lock().unwrap() && !receiver.refused.lock().unwrap().contains(&id);
    receiver.attempts.lock().unwrap().push(Attempt {
        id,
        timestamp,
        headers,
        body: body.to_vec(),
        accepted,
    });
    if accepted {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (receiver, url)
    }

    fn of(&self, id: i64) -> Vec<Attempt> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.id == id)
            .cloned()
            .collect()
    }

    fn delivered(&self, id: i64) -> bool {
        self.of(id).iter().any(|a| a.accepted)
    }
}

fn random_secret() -> String {
    // 32 random bytes in base64, as `echo whsec_$(head -c 32 /dev/urandom | base64)` makes them.
    format!(
        "whsec_{}",
        tessera::domain::sealing::MasterKey::generate().to_base64().as_str()
    )
}

fn webhook(url: &str, secret: &str) -> WebhookConfig {
    let mut config = WebhookConfig::new(url, Some(secret.to_owned())).unwrap();
    config.poll_interval = Duration::from_millis(20);
    config
}

async fn app_with_webhook(config: WebhookConfig) -> TestApp {
    spawn_with(Options {
        configure: Box::new(move |c| c.webhook = Some(config)),
        ..Options::default()
    })
    .await
}

async fn newest_event_id(app: &TestApp) -> i64 {
    app.count("SELECT MAX(id) FROM security_events").await
}

/// Waits (polling, at most 20 s) until `done`, moving the service's clock by `step` between
/// looks so that due retries are made.
async fn until(app: &TestApp, step: time::Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(30)).await;
        app.clock.advance(step);
    }
}

/// `python3` (or pyenv's) when it can import `standardwebhooks`.
fn python_with_standardwebhooks() -> Option<String> {
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = ["python3".to_owned(), format!("{home}/.pyenv/shims/python3")];
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import standardwebhooks"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

const VERIFY: &str = r#"
import json, sys
from standardwebhooks import Webhook
request = json.load(sys.stdin)
try:
    payload = Webhook(request["secret"]).verify(request["body"].encode(), request["headers"])
except Exception as err:
    print("rejected:", type(err).__name__, err)
    sys.exit(1)
print("verified", payload["type"], payload["id"])
"#;

/// Runs the reference verifier on one delivery; its exit status and output.
fn verify_with_reference_library(python: &str, secret: &str, headers: &HeaderMap, body: &str) -> (bool, String) {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), Value::from(value.to_str().unwrap())))
        .collect();
    let input = serde_json::json!({"secret": secret, "headers": headers, "body": body}).to_string();
    let mut child = Command::new(python)
        .args(["-c", VERIFY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn a_delivery_passes_the_reference_standard_webhooks_verifier() {
    let Some(python) = python_with_standardwebhooks() else {
        assert!(
            std::env::var("TESSERA_REQUIRE_STANDARDWEBHOOKS").is_err(),
            "TESSERA_REQUIRE_STANDARDWEBHOOKS is set but python3 cannot import standardwebhooks"
        );
        eprintln!("skipped: python3 with the standardwebhooks package (pip install standardwebhooks) is not available");
        return;
    };
    let (receiver, url) = Receiver::start().await;
    let secret = random_secret();
    let app = app_with_webhook(webhook(&url, &secret)).await;
    assert_eq!(app.register("verified@example.com").await.status, 201);
    let id = newest_event_id(&app).await;
    until(&app, time::Duration::ZERO, "the delivery", || receiver.delivered(id)).await;
    let delivery = receiver.of(id).pop().unwrap();
    let body = String::from_utf8(delivery.body.clone()).unwrap();

    let (ok, output) = verify_with_reference_library(&python, &secret, &delivery.headers, &body);
    assert!(ok, "{output}");
    assert_eq!(output.trim(), format!("verified user_registered {id}"));

    // The verifier is not a rubber stamp: another body, or another secret, is refused.
    let tampered = body.replace("verified@", "someone@");
    let tampered = if tampered == body {
        body.replace("user_registered", "user_registerex")
    } else {
        tampered
    };
    let (ok, output) = verify_with_reference_library(&python, &secret, &delivery.headers, &tampered);
    assert!(!ok, "{output}");
    let (ok, output) = verify_with_reference_library(&python, &random_secret(), &delivery.headers, &body);
    assert!(!ok, "{output}");
}

#[tokio::test]
async fn an_event_that_fails_every_attempt_is_dead_and_no_longer_holds_back_the_next() {
    let (receiver, url) = Receiver::start().await;
    let mut config = webhook(&url, &random_secret());
    config.max_attempts = 3;
    let app = app_with_webhook(config).await;
    // Refuse everything until the first event's id is known, then only that event.
    *receiver.refuse_all.lock().unwrap() = true;
    assert_eq!(app.register("doomed@example.com").await.status, 201);
    let doomed = newest_event_id(&app).await;
    receiver.refused.lock().unwrap().insert(doomed);
    *receiver.refuse_all.lock().unwrap() = false;
    assert_eq!(app.register("next@example.com").await.status, 201);
    let next = newest_event_id(&app).await;

    until(&app, time::Duration::seconds(5), "the next event", || {
        receiver.delivered(next)
    })
    .await;
    let attempts = receiver.of(doomed);
    assert_eq!(attempts.len(), 3, "bounded: {attempts:?}");
    assert!(attempts.iter().all(|a| !a.accepted));
    // The waits come from the service's clock: 10 s, then 20 s (the base backoff, doubled).
    assert!(attempts[1].timestamp - attempts[0].timestamp >= 10, "{attempts:?}");
    assert!(attempts[2].timestamp - attempts[1].timestamp >= 20, "{attempts:?}");
    let first_next = receiver.of(next)[0].clone();
    assert!(
        first_next.timestamp >= attempts[2].timestamp,
        "the next event waited its turn"
    );

    let dead = app.store.dead_webhook_events(false, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.id, doomed);
    assert_eq!((dead[0].attempts, dead[0].last_error.as_str()), (3, "HTTP 503"));
    assert_eq!(
        app.store.webhook_backlog().await.unwrap(),
        WebhookBacklog { pending: 0, dead: 1 }
    );

    // Redelivered once the receiver is fixed, with the same webhook-id; then no longer dead.
    receiver.refused.lock().unwrap().clear();
    assert_eq!(
        app.store.requeue_dead_event(doomed, app.now()).await.unwrap(),
        Redelivery::Queued
    );
    until(&app, time::Duration::ZERO, "the redelivery", || {
        receiver.delivered(doomed)
    })
    .await;
    let redelivered = receiver.of(doomed).pop().unwrap();
    assert_eq!(redelivered.headers["webhook-id"], doomed.to_string().as_str());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app.store.dead_webhook_events(false, 10).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the delivered event is still recorded as dead"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(
        app.store.requeue_dead_event(doomed, app.now()).await.unwrap(),
        Redelivery::NotDead
    );
}

// ---------------------------------------------------------------- graceful stop

/// An app without a configured webhook, and a delivery task of the test's own on its store, so
/// the test can stop the task; returns once the task holds the lease.
async fn app_and_courier(config: WebhookConfig) -> (TestApp, tessera::webhook::WebhookTask) {
    let app = spawn_app().await;
    let task = tessera::webhook::spawn(app.store.clone(), config, Arc::new(app.clock.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while app
        .count("SELECT COUNT(*) FROM webhook_cursor WHERE lease_holder IS NOT NULL")
        .await
        == 0
    {
        assert!(Instant::now() < deadline, "the task never took the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (app, task)
}

async fn cursor(app: &TestApp) -> i64 {
    app.count("SELECT last_event_id FROM webhook_cursor").await
}

#[tokio::test]
async fn a_graceful_stop_lets_the_delivery_in_flight_finish_records_it_and_releases_the_lease() {
    let (receiver, url) = Receiver::start().await;
    *receiver.delay.lock().unwrap() = Duration::from_millis(500);
    let (app, task) = app_and_courier(webhook(&url, &random_secret())).await;
    let arrived = receiver.arrived.notified();
    assert_eq!(app.register("inflight@example.com").await.status, 201);
    let id = newest_event_id(&app).await;
    tokio::time::timeout(Duration::from_secs(20), arrived)
        .await
        .expect("the delivery started");
    task.shutdown().await;
    assert!(receiver.delivered(id), "the receiver answered before the task ended");
    assert_eq!(cursor(&app).await, id, "and the delivery was recorded");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM webhook_cursor WHERE lease_holder IS NULL")
            .await,
        1,
        "the lease is released"
    );
    assert!(
        app.store
            .acquire_webhook_lease("another instance", app.now(), 30)
            .await
            .unwrap(),
        "another instance takes over at once"
    );
}

#[tokio::test]
async fn a_delivery_still_in_flight_after_the_grace_is_abandoned_and_not_recorded() {
    let (receiver, url) = Receiver::start().await;
    *receiver.delay.lock().unwrap() = Duration::from_secs(5);
    let mut config = webhook(&url, &random_secret());
    config.shutdown_grace = Duration::from_millis(200);
    let (app, task) = app_and_courier(config).await;
    let arrived = receiver.arrived.notified();
    assert_eq!(app.register("slow@example.com").await.status, 201);
    let id = newest_event_id(&app).await;
    tokio::time::timeout(Duration::from_secs(20), arrived)
        .await
        .expect("the delivery started");
    let stopping = Instant::now();
    task.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(3), "bounded by the grace");
    assert!(
        cursor(&app).await < id,
        "not recorded as delivered: it will be sent again"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM webhook_cursor WHERE lease_holder IS NULL")
            .await,
        1,
        "the lease is released all the same"
    );
}

// ---------------------------------------------------------------- the operator's commands

fn data_dir_arg(app: &TestApp) -> &str {
    app.data_dir.to_str().unwrap()
}

/// An app whose first event (its one user's registration) is recorded dead after 10 attempts.
async fn app_with_a_dead_event() -> (TestApp, i64) {
    let app = spawn_app().await;
    let start = app.store.webhook_cursor().await.unwrap();
    assert_eq!(app.register("dead@example.com").await.status, 201);
    let events = app.store.events_after(start, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(app.store.acquire_webhook_lease("test", app.now(), 30).await.unwrap());
    assert!(
        app.store
            .bury_webhook_event("test", &events[0], 10, "HTTP 503", app.now())
            .await
            .unwrap()
    );
    app.store.release_webhook_lease("test").await.unwrap();
    (app, events[0].id)
}

#[tokio::test]
async fn events_dead_lists_the_dead_events_as_a_table_and_as_json() {
    let (app, id) = app_with_a_dead_event().await;
    let table = run(tessera(&["events", "dead", "--data-dir", data_dir_arg(&app)]));
    assert!(table.status.success(), "{}", table.stderr);
    let row = table
        .stdout
        .lines()
        .find(|line| line.starts_with(&id.to_string()))
        .unwrap_or_else(|| panic!("no row for {id}: {}", table.stdout));
    for column in ["user_registered", "10", "no", "HTTP 503"] {
        assert!(row.contains(column), "{column} missing in {row}");
    }
    assert!(table.stderr.contains("1 dead event(s)"), "{}", table.stderr);

    let json = run(tessera(&["events", "dead", "--json", "--data-dir", data_dir_arg(&app)]));
    assert!(json.status.success(), "{}", json.stderr);
    let listed: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["type"], "user_registered");
    assert_eq!(listed[0]["attempts"], 10);
    assert_eq!(listed[0]["last_error"], "HTTP 503");
    assert_eq!(listed[0]["queued_for_redelivery"], false);
    assert!(listed[0]["at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn events_redeliver_queues_a_dead_event_and_refuses_anything_else_in_one_line() {
    let (app, id) = app_with_a_dead_event().await;
    let queued_at = || app.count("SELECT COALESCE(MAX(requeued_at), -1) FROM webhook_dead_events");
    let redeliver = |id: i64| {
        run(tessera(&[
            "events",
            "redeliver",
            &id.to_string(),
            "--data-dir",
            data_dir_arg(&app),
        ]))
    };

    let done = redeliver(id);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout.trim(), format!("event {id} is queued for redelivery"));
    let first = queued_at().await;
    assert!(first > 0);

    assert_eq!(app.register("alive@example.com").await.status, 201);
    let alive = newest_event_id(&app).await;
    for (target, message) in [
        (id, format!("event {id} is already queued for redelivery")),
        (
            alive,
            format!("event {alive} is not dead: it was delivered or is still on its way"),
        ),
        (424_242, "no security event has the id 424242".to_owned()),
    ] {
        let refused = redeliver(target);
        assert!(!refused.status.success(), "{target}: {}", refused.stdout);
        let errors: Vec<&str> = refused.stderr.lines().filter(|l| l.starts_with("Error")).collect();
        assert_eq!(errors, [format!("Error: {message}")], "{}", refused.stderr);
        assert!(refused.stdout.is_empty());
    }
    assert_eq!(queued_at().await, first, "the refusals wrote nothing");
    assert_eq!(app.count("SELECT COUNT(*) FROM webhook_dead_events").await, 1);
}

#[tokio::test]
async fn serve_refuses_a_secret_that_is_not_a_standard_webhooks_secret_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = tessera(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()]);
    command
        .env("TESSERA_EVENTS_WEBHOOK_URL", "http://127.0.0.1:9/events")
        .env("TESSERA_EVENTS_WEBHOOK_SECRET", "webhook-secret-0123456789");
    let refused = run(command);
    assert!(!refused.status.success());
    let errors: Vec<&str> = refused.stderr.lines().filter(|l| l.starts_with("Error")).collect();
    assert_eq!(errors.len(), 1, "{}", refused.stderr);
    assert!(errors[0].contains("whsec_"), "{}", errors[0]);
    assert!(errors[0].contains("head -c 32 /dev/urandom | base64"), "{}", errors[0]);
    assert!(
        !refused.stderr.contains("webhook-secret-0123456789"),
        "the secret is never shown"
    );
}
