//! Prometheus metrics: the process-wide recorder and the `GET /metrics` listener.
//!
//! Owns: installing the recorder (only when `--metrics-listen` is set; without it every
//! `metrics::counter!` in the crate is a no-op), the metric descriptions, the histogram
//! buckets, the start-time and build-info gauges, and the scrape router that reads the
//! database pool at scrape time. The per-request HTTP metrics live in [`crate::http::metrics`];
//! the login, lockout and backup-code counters sit where the service decides each outcome.
//!
//! Must not: serve anything but `GET /metrics` on its listener, or put an email, a user id, a
//! raw path or anything secret into a label (labels are fixed words and route templates).
//!
//! The metric names are listed, with their labels, in README.md ("### Metrics").

use crate::clock::{Clock, SystemClock};
use crate::store::Store;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Bucket upper bounds, in seconds, of every histogram: from a cached session lookup (~1 ms)
/// to an argon2 login on a busy machine and the request timeout (30 s).
pub const BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram samples are folded into their buckets between scrapes, so memory stays
/// bounded when nobody scrapes for a while.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The recorder can be installed once per process (tests start many servers in one): the first
/// installation's outcome is kept and every later caller shares it.
static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Why the metrics recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct RecorderError(String);

/// Installs the Prometheus recorder for the whole process (idempotent) and returns its handle.
/// Sets the start-time and build-info gauges on the first call.
pub fn install() -> Result<PrometheusHandle, RecorderError> {
    RECORDER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS_SECONDS)
                .map_err(|err| err.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            ::metrics::set_global_recorder(recorder).map_err(|err| err.to_string())?;
            describe();
            let started = SystemClock.now().unix_timestamp();
            // Unix seconds are far inside f64's exact integer range.
            ::metrics::gauge!("tessera_start_time_seconds").set(started as f64);
            ::metrics::gauge!("tessera_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Ok(handle)
        })
        .clone()
        .map_err(RecorderError)
}

/// Whether the recorder is installed: the HTTP middleware skips even its clock read otherwise.
pub fn enabled() -> bool {
    RECORDER.get().is_some_and(Result::is_ok)
}

/// HELP lines for every agreed metric, including those other modules emit (hashing pool,
/// webhook, housekeeping): a description renders only once its metric has a value.
fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "tessera_http_requests_total",
        "HTTP requests answered, by route template and status class."
    );
    describe_histogram!(
        "tessera_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by route template."
    );
    describe_counter!("tessera_logins_total", "Login steps, by outcome.");
    describe_counter!("tessera_lockouts_total", "Throttle lockouts started, by kind.");
    describe_counter!(
        "tessera_backup_codes_used_total",
        "Backup codes consumed as a second factor."
    );
    describe_gauge!(
        "tessera_database_connections",
        "Database pool connections at scrape time, by state (in_use, idle)."
    );
    describe_gauge!(
        "tessera_start_time_seconds",
        Unit::Seconds,
        "Start time of the process, in Unix seconds."
    );
    describe_gauge!("tessera_build_info", "Always 1; the version label names the build.");
    describe_gauge!(
        "tessera_hashing_queue_length",
        "Password hashing requests waiting for a hashing slot."
    );
    describe_histogram!(
        "tessera_hashing_wait_seconds",
        Unit::Seconds,
        "Time from queueing a password hash to its start."
    );
    describe_counter!(
        "tessera_webhook_deliveries_total",
        "Webhook delivery attempts, by result (ok, failed)."
    );
    describe_gauge!(
        "tessera_webhook_backlog",
        "Security events not yet delivered to the webhook."
    );
    describe_gauge!(
        "tessera_webhook_dead_events",
        "Security events whose delivery was given up."
    );
    describe_counter!(
        "tessera_housekeeping_deleted_total",
        "Expired rows deleted by the housekeeping sweep, by kind."
    );
}

#[derive(Clone)]
struct ScrapeState {
    handle: PrometheusHandle,
    store: Arc<dyn Store>,
}

/// The metrics listener's whole application: `GET /metrics`, nothing else (404). Installs the
/// recorder if it is not installed yet.
pub fn router(store: Arc<dyn Store>) -> Result<Router, RecorderError> {
    let handle = install()?;
    Ok(Router::new()
        .route("/metrics", get(scrape))
        .with_state(ScrapeState { handle, store }))
}

/// Folds histogram samples into their buckets every few seconds; runs until aborted.
pub async fn upkeep() {
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        ticks.tick().await;
        if let Some(Ok(handle)) = RECORDER.get() {
            handle.run_upkeep();
        }
    }
}

async fn scrape(State(state): State<ScrapeState>) -> impl IntoResponse {
    let pool = state.store.pool_status();
    ::metrics::gauge!("tessera_database_connections", "state" => "in_use").set(f64::from(pool.in_use()));
    ::metrics::gauge!("tessera_database_connections", "state" => "idle").set(f64::from(pool.idle));
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], state.handle.render())
}
