//! The webhook's and housekeeping's metrics, read from a recorder of the test's own (the
//! Prometheus exporter is the metrics module's business): deliveries by result, the backlog,
//! dead events, and rows deleted by kind. Its own binary: a recorder is process-wide.

mod common;

use axum::http::StatusCode;
use common::*;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every counter and gauge by `name{label=value,...}`, as atomics.
#[derive(Default, Clone)]
struct Recorded(Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>);

impl Recorded {
    fn cell(&self, key: &Key) -> Arc<AtomicU64> {
        let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0.lock().unwrap().entry(name).or_default().clone()
    }

    fn counter(&self, name: &str) -> u64 {
        self.0.lock().unwrap().get(name).map_or(0, |c| c.load(Ordering::SeqCst))
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        let cells = self.0.lock().unwrap();
        cells.get(name).map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test]
async fn deliveries_dead_events_the_backlog_and_swept_rows_are_counted() {
    let recorded = Recorded::default();
    metrics::set_global_recorder(recorded.clone()).expect("the only recorder of this binary");

    // The first event is refused, the others accepted.
    let refused = Arc::new(Mutex::new(None::<String>));
    let hook = {
        let refused = refused.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| async move {
                let id = headers["webhook-id"].to_str().unwrap().to_owned();
                let mut first = refused.lock().unwrap();
                if first.get_or_insert(id.clone()) == &id {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await });
    let secret = format!(
        "whsec_{}",
        tessera::domain::sealing::MasterKey::generate().to_base64().as_str()
    );
    let app = spawn_with(Options {
        configure: Box::new(move |c| {
            let mut webhook = tessera::webhook::WebhookConfig::new(&url, Some(secret)).unwrap();
            webhook.poll_interval = Duration::from_millis(20);
            webhook.max_attempts = 2;
            c.webhook = Some(webhook);
        }),
        ..Options::default()
    })
    .await;
    // Four events: two registrations and two logins.
    app.user_with_session("first@example.com").await;
    app.user_with_session("second@example.com").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while recorded.counter("tessera_webhook_deliveries_total{result=ok}") < 3
        || recorded.gauge("tessera_webhook_backlog{}") != Some(0.0)
    {
        assert!(Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(30)).await;
        app.clock.advance(time::Duration::seconds(10));
    }
    assert_eq!(recorded.counter("tessera_webhook_deliveries_total{result=failed}"), 2);
    assert_eq!(recorded.counter("tessera_webhook_deliveries_total{result=ok}"), 3);
    assert_eq!(recorded.gauge("tessera_webhook_dead_events{}"), Some(1.0));

    // Housekeeping: both logins' sessions are past their lifetime a day later.
    app.clock.advance(time::Duration::days(1));
    let config = tessera::housekeeping::HousekeepingConfig {
        interval: Duration::from_secs(300),
        event_retention_days: 400,
        session_idle_secs: 1800,
        keep_undelivered_events: true,
    };
    let report = tessera::housekeeping::sweep(app.store.as_ref(), &app.clock, &config, None)
        .await
        .unwrap();
    assert_eq!(report.sessions, 2);
    assert_eq!(recorded.counter("tessera_housekeeping_deleted_total{kind=sessions}"), 2);
    assert_eq!(
        recorded.counter("tessera_housekeeping_deleted_total{kind=security_events}"),
        0
    );
}
