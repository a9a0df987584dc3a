//! Prometheus metrics on their own listener: what `GET /metrics` shows after a journey of
//! registrations, logins, wrong passwords, MFA logins with a TOTP code and a backup code and
//! lockouts; route labels that are templates, never raw paths; histograms with buckets; the API
//! listener that never serves `/metrics`; and `tessera serve --metrics-listen` as an operator
//! runs it.
//!
//! The recorder is global to the process and every in-process test here shares it, so the
//! tests assert differences between two scrapes and hold [`SERIAL`] while they run.

mod common;

use common::process::*;
use common::{PASSWORD, TestApp, spawn_app, totp_code, wrong_code};
use std::collections::HashMap;
use tessera::server::{self, MetricsListener};

/// In-process tests run one at a time: they share the one recorder.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One scrape: every sample line, keyed by metric name and sorted labels.
struct Scrape {
    text: String,
    samples: HashMap<(String, Vec<(String, String)>), f64>,
}

/// Parses `name{a="x",b="y"} value` lines (comments skipped). Label values here never hold a
/// quote, so the parse needs no unescaping.
fn parse(text: &str) -> HashMap<(String, Vec<(String, String)>), f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, mut labels) = match series.split_once('{') {
            None => (series.to_owned(), Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("labels in {line}"));
                let mut labels = Vec::new();
                let mut rest = inner;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label in {line}"));
                    let (value, after) = after.split_once('"').unwrap_or_else(|| panic!("label in {line}"));
                    labels.push((key.to_owned(), value.to_owned()));
                    rest = after.strip_prefix(',').unwrap_or(after);
                }
                (name.to_owned(), labels)
            }
        };
        labels.sort();
        samples.insert((name, labels), value);
    }
    samples
}

impl Scrape {
    /// The sample's value; a series not shown yet counts as 0.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        labels.sort();
        self.samples.get(&(name.to_owned(), labels)).copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        labels.sort();
        self.samples.contains_key(&(name.to_owned(), labels))
    }
}

async fn scrape_at(client: &reqwest::Client, address: std::net::SocketAddr) -> Scrape {
    let response = client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = response.text().await.expect("body");
    let samples = parse(&text);
    Scrape { text, samples }
}

/// An app with the metrics listener on a port of its own.
async fn app_with_metrics() -> (TestApp, MetricsListener) {
    let app = spawn_app().await;
    let metrics = server::start_metrics("127.0.0.1:0".parse().unwrap(), app.store.clone()).expect("metrics listener");
    assert_ne!(metrics.address, app.addr);
    (app, metrics)
}

const LOGINS: &str = "tessera_logins_total";
const REQUESTS: &str = "tessera_http_requests_total";

fn outcome(value: &str) -> [(&str, &str); 1] {
    [("outcome", value)]
}

#[tokio::test]
async fn a_journey_moves_each_counter_by_exactly_its_own_steps() {
    let _serial = SERIAL.lock().await;
    let (app, metrics) = app_with_metrics().await;
    let before = scrape_at(&app.client, metrics.address).await;

    // Register, log in, a wrong password, an unknown account.
    let token = app.user_with_session("ada@example.com").await;
    assert_eq!(
        app.login("ada@example.com", "not the password at all").await.status,
        401
    );
    assert_eq!(app.login("nobody@example.com", PASSWORD).await.status, 401);
    // MFA on, then one login with a TOTP code and one with a backup code.
    let (secret, backup_codes) = app.enable_mfa(&token).await;
    app.next_step();
    let challenge = app.mfa_token("ada@example.com").await;
    let code = totp_code(&secret, app.now());
    assert_eq!(app.login_mfa(&challenge, &code).await.status, 200);
    let challenge = app.mfa_token("ada@example.com").await;
    assert_eq!(app.login_mfa(&challenge, &backup_codes[0]).await.status, 200);
    // Wrong codes until the second factor locks.
    let challenge = app.mfa_token("ada@example.com").await;
    let wrong = wrong_code(&secret, app.now());
    let mut failed_codes = 0.0;
    loop {
        let reply = app.login_mfa(&challenge, &wrong).await;
        if reply.status == 429 {
            break;
        }
        assert_eq!(reply.status, 401, "{}", reply.text);
        failed_codes += 1.0;
        assert!(failed_codes < 20.0, "the second factor never locked");
    }
    // Wrong passwords until the password step locks.
    assert_eq!(app.register("bob@example.com").await.status, 201);
    let mut wrong_passwords = 1.0; // ada's above
    loop {
        let reply = app.login("bob@example.com", "still not the password").await;
        if reply.status == 429 {
            break;
        }
        assert_eq!(reply.status, 401, "{}", reply.text);
        wrong_passwords += 1.0;
        assert!(wrong_passwords < 30.0, "the password step never locked");
    }
    // The session route, a templated route with an id, and a path no route matches.
    assert_eq!(app.get("/api/auth/session", Some(&token)).await.status, 200);
    let missing_id = "0000aaaa-0000-4000-8000-00000000beef";
    let ended = app
        .send(
            app.client
                .delete(app.url(&format!("/api/user/profile/sessions/{missing_id}")))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(ended.status, 404, "{}", ended.text);
    assert_eq!(app.get("/wp-admin/probe-7f3e", None).await.status, 404);

    let after = scrape_at(&app.client, metrics.address).await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);

    assert_eq!(delta(LOGINS, &outcome("success")), 1.0, "{}", after.text);
    assert_eq!(delta(LOGINS, &outcome("wrong_password")), wrong_passwords);
    assert_eq!(delta(LOGINS, &outcome("unknown_account")), 1.0);
    assert_eq!(delta(LOGINS, &outcome("mfa_required")), 3.0);
    assert_eq!(delta(LOGINS, &outcome("second_factor_ok")), 2.0);
    assert_eq!(delta(LOGINS, &outcome("second_factor_failed")), failed_codes);
    assert_eq!(delta(LOGINS, &outcome("second_factor_locked")), 1.0);
    assert_eq!(delta(LOGINS, &outcome("locked")), 1.0);
    assert_eq!(delta("tessera_backup_codes_used_total", &[]), 1.0);
    assert_eq!(delta("tessera_lockouts_total", &[("kind", "second_factor")]), 1.0);
    assert_eq!(delta("tessera_lockouts_total", &[("kind", "password")]), 1.0);

    // Requests by route template and status class: 1 + 1 + 3 + wrong passwords + 1 unknown
    // + 1 locked on /api/auth/login.
    let login_route = [("route", "/api/auth/login")];
    let login_requests = 1.0 + 3.0 + wrong_passwords + 1.0 + 1.0;
    assert_eq!(
        delta(REQUESTS, &[login_route[0], ("status_class", "2xx")]),
        4.0,
        "{}",
        after.text
    );
    assert_eq!(
        delta(REQUESTS, &[login_route[0], ("status_class", "4xx")]),
        login_requests - 4.0
    );
    assert_eq!(
        delta(REQUESTS, &[("route", "/api/auth/register"), ("status_class", "2xx")]),
        2.0
    );
    assert_eq!(
        delta(REQUESTS, &[("route", "/api/auth/login/mfa"), ("status_class", "4xx")]),
        failed_codes + 1.0
    );
    assert_eq!(
        delta(REQUESTS, &[("route", "/api/auth/session"), ("status_class", "2xx")]),
        1.0
    );
    assert_eq!(
        delta(
            REQUESTS,
            &[("route", "/api/user/profile/sessions/{id}"), ("status_class", "4xx")]
        ),
        1.0
    );
    assert_eq!(delta(REQUESTS, &[("route", "unmatched"), ("status_class", "4xx")]), 1.0);
    assert!(!after.text.contains(missing_id), "raw ids never become labels");
    assert!(!after.text.contains("wp-admin"), "raw paths never become labels");
    assert!(!after.text.contains("ada@example.com"), "no email in any metric");

    // The duration histogram renders as a histogram, per route.
    let count = "tessera_http_request_duration_seconds_count";
    assert_eq!(delta(count, &login_route), login_requests);
    assert!(after.has("tessera_http_request_duration_seconds_sum", &login_route));
    let bucket = |le: &str| {
        after.value(
            "tessera_http_request_duration_seconds_bucket",
            &[login_route[0], ("le", le)],
        )
    };
    assert!(bucket("+Inf") >= login_requests);
    assert_eq!(bucket("+Inf"), after.value(count, &login_route));
    assert!(bucket("0.001") <= bucket("30"), "buckets are cumulative");
    assert!(
        after
            .text
            .contains("# TYPE tessera_http_request_duration_seconds histogram")
    );
}

#[tokio::test]
async fn metrics_live_only_on_their_own_listener_with_build_info_and_pool_gauges() {
    let _serial = SERIAL.lock().await;
    let (app, metrics) = app_with_metrics().await;

    let on_api = app.get("/metrics", None).await;
    assert_eq!(on_api.status, 404, "the API listener never serves /metrics");
    let other = app
        .client
        .get(format!("http://{}/api/auth/session", metrics.address))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404, "the metrics listener serves nothing else");

    let scrape = scrape_at(&app.client, metrics.address).await;
    assert_eq!(
        scrape.value("tessera_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0,
        "{}",
        scrape.text
    );
    let started = scrape.value("tessera_start_time_seconds", &[]);
    assert!(started > 1.7e9 && started <= unix_now() as f64, "{started}");
    let idle = scrape.value("tessera_database_connections", &[("state", "idle")]);
    let in_use = scrape.value("tessera_database_connections", &[("state", "in_use")]);
    assert!(scrape.has("tessera_database_connections", &[("state", "in_use")]));
    assert!(idle + in_use >= 1.0, "the app has used its pool: {}", scrape.text);
}

#[tokio::test]
async fn serve_with_metrics_listen_serves_metrics_on_that_address_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(tessera(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    // Logged before the API's `listening` line, which `Server::start` waits for.
    let address = server
        .log
        .split_whitespace()
        .find_map(|field| field.strip_prefix("metrics_address="))
        .unwrap_or_else(|| panic!("no metrics address in {}", server.log));
    assert_eq!(server.register("carol@example.com").await.status, 201);
    assert_eq!(server.get("/metrics", None).await.status, 404);

    let client = common::http_client();
    let scrape = scrape_at(&client, address.parse().unwrap()).await;
    assert_eq!(
        scrape.value(REQUESTS, &[("route", "/api/auth/register"), ("status_class", "2xx")]),
        1.0,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.value("tessera_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    server.stop("-TERM");
}

#[tokio::test]
async fn a_metrics_address_in_use_stops_the_start_with_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("tessera.toml");
    std::fs::write(&config, format!("metrics_listen = \"{address}\"\n")).unwrap();
    // The setting from the environment, then from the config file.
    let mut from_env = tessera(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()]);
    from_env.env("TESSERA_METRICS_LISTEN", &address);
    let from_file = tessera(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    for mut command in [from_env, from_file] {
        command.env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
        let refused = run(command);
        assert!(!refused.status.success(), "{}", refused.stderr);
        let errors: Vec<&str> = refused
            .stderr
            .lines()
            .filter(|line| line.starts_with("Error"))
            .collect();
        assert_eq!(errors.len(), 1, "{}", refused.stderr);
        assert!(
            errors[0].contains(&format!("cannot listen for metrics on {address}")),
            "{}",
            refused.stderr
        );
        assert_eq!(refused.stderr.lines().last(), Some(errors[0]), "{}", refused.stderr);
        assert!(!refused.stderr.contains("listening"), "{}", refused.stderr);
    }
}
