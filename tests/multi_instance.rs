//! Two `tessera serve` processes on one fresh PostgreSQL database behave as one service: a
//! session made on A works on B, a TOTP step accepted by A is refused by B, one code sent to
//! both at once logs in once, wrong guesses on both share one throttle, fifty parallel uses of
//! one backup code across both let exactly one win, and the webhook delivers each event from
//! one instance, handing over when that instance dies. Runs when `TESSERA_TEST_DATABASE_URL`
//! names a PostgreSQL server (required in CI).

mod common;

use axum::extract::State;
use common::process::{Server, tessera, unix_now};
use common::{Reply, TestDatabase, postgres_or_skip, totp_code};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera::domain::sealing::MasterKey;

/// `tessera serve` on a free loopback port against `database_url`, with the shared master key.
fn instance(database_url: &str, key: &str, data: &Path, env: &[(&str, &str)]) -> std::process::Command {
    let mut command = tessera(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().expect("UTF-8 path"),
        "--database-url",
        database_url,
    ]);
    command.env("TESSERA_SECRET_KEY", key);
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// Starts both commands at the same moment (their migrations race) and waits until both listen.
fn start_together(a: std::process::Command, b: std::process::Command) -> (Server, Server) {
    std::thread::scope(|scope| {
        let a = scope.spawn(move || Server::start(a));
        let b = scope.spawn(move || Server::start(b));
        (a.join().expect("A starts"), b.join().expect("B starts"))
    })
}

struct Pair {
    a: Server,
    b: Server,
    database: TestDatabase,
    _dir: tempfile::TempDir,
}

async fn pair(env: &[(&str, &str)]) -> Pair {
    let database = TestDatabase::create().await;
    let key = MasterKey::generate().to_base64();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = start_together(
        instance(&database.url, &key, &dir.path().join("a"), env),
        instance(&database.url, &key, &dir.path().join("b"), env),
    );
    Pair {
        a,
        b,
        database,
        _dir: dir,
    }
}

const NO_IP_LIMIT: &[(&str, &str)] = &[("TESSERA_IP_RATE_LIMIT_PER_MINUTE", "0")];

/// Enables MFA: setup on `first`, verify on `second`. Returns the secret, the backup codes and
/// the step the enabling code belonged to (it can never be used again).
async fn enable_mfa(first: &Server, second: &Server, token: &str) -> (String, Vec<String>, i64) {
    let setup = first.mfa_setup(token).await;
    let secret = setup.body["secret"].as_str().unwrap().to_owned();
    let step = unix_now() / 30;
    let verify = second
        .post(
            "/api/user/profile/mfa/verify",
            Some(token),
            json!({"code": totp_code(&secret, step * 30)}),
        )
        .await;
    assert_eq!(verify.status, 200, "{}", verify.text);
    let codes = verify.body["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (secret, codes, step)
}

async fn mfa_token(server: &Server, email: &str) -> String {
    let login = server.login(email).await;
    assert_eq!(login.body["mfa_required"], true, "{}", login.text);
    login.body["mfa_token"].as_str().unwrap().to_owned()
}

async fn second_step(server: &Server, mfa_token: &str, code: &str) -> Reply {
    server
        .post(
            "/api/auth/login/mfa",
            None,
            json!({"mfa_token": mfa_token, "code": code}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_database_behave_as_one() {
    if postgres_or_skip().is_none() {
        return;
    }
    let Pair { a, b, database, _dir } = pair(NO_IP_LIMIT).await;

    // A session made on A works on B, and a logout on B ends it on A.
    let token = a.user_with_session("ann@example.com").await;
    assert_eq!(b.get("/api/auth/session", Some(&token)).await.status, 200);
    let other = b.login("ann@example.com").await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(b.post("/api/auth/logout", Some(&other), json!({})).await.status, 204);
    assert_eq!(a.get("/api/auth/session", Some(&other)).await.status, 401);

    // MFA set up on A and verified on B; a TOTP step accepted by A is then refused by B.
    let (secret, _, step) = enable_mfa(&a, &b, &token).await;
    let next = totp_code(&secret, (step + 1) * 30);
    let on_a = mfa_token(&a, "ann@example.com").await;
    assert_eq!(second_step(&a, &on_a, &next).await.status, 200);
    let on_b = mfa_token(&b, "ann@example.com").await;
    second_step(&b, &on_b, &next)
        .await
        .assert_problem(401, "/problems/invalid-second-factor");

    // One code sent to A and B at the same moment logs in once.
    let bea = a.user_with_session("bea@example.com").await;
    let (secret, _, step) = enable_mfa(&b, &a, &bea).await;
    let code = totp_code(&secret, (step + 1) * 30);
    let (token_a, token_b) = (
        mfa_token(&a, "bea@example.com").await,
        mfa_token(&b, "bea@example.com").await,
    );
    let (first, second) = tokio::join!(second_step(&a, &token_a, &code), second_step(&b, &token_b, &code));
    let mut statuses = [first.status, second.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401], "{} / {}", first.text, second.text);

    // Wrong guesses spread over A and B share one throttle: the 6th attempt is refused, even
    // with the right code.
    let cal = a.user_with_session("cal@example.com").await;
    let (secret, _, step) = enable_mfa(&a, &b, &cal).await;
    let challenge = mfa_token(&a, "cal@example.com").await;
    let right = totp_code(&secret, (step + 1) * 30);
    let wrong = common::wrong_code(&secret, step * 30);
    for attempt in 0..5 {
        let server = if attempt % 2 == 0 { &a } else { &b };
        second_step(server, &challenge, &wrong)
            .await
            .assert_problem(401, "/problems/invalid-second-factor");
    }
    let locked = second_step(&b, &challenge, &right).await;
    locked.assert_problem(429, "/problems/too-many-attempts");
    assert!(locked.header("retry-after").is_some());
    let locked_on_a = second_step(&a, &challenge, &right).await;
    assert_eq!(locked_on_a.status, 429);

    // Fifty parallel uses of one backup code, spread over A and B: exactly one wins.
    let dee = a.user_with_session("dee@example.com").await;
    let (_, codes, _) = enable_mfa(&b, &a, &dee).await;
    let mut challenges = Vec::new();
    for i in 0..50 {
        let server = if i % 2 == 0 { &a } else { &b };
        challenges.push((server.base.clone(), mfa_token(server, "dee@example.com").await));
    }
    let client = common::http_client();
    let statuses = common::concurrently(50, |i| {
        let (base, challenge) = &challenges[i];
        client
            .post(format!("{base}/api/auth/login/mfa"))
            .json(&json!({"mfa_token": challenge, "code": codes[0]}))
    })
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| [200, 401, 429].contains(s)), "{statuses:?}");
    let pool = database.pool().await;
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM backup_codes b JOIN users u ON u.id = b.user_id WHERE u.email = 'dee@example.com'")
            .await,
        9
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM security_events WHERE kind = 'backup_code_used'").await,
        1
    );
    assert_eq!(count("SELECT COUNT(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.email = 'dee@example.com' AND s.mfa").await, 1);
    pool.close().await;
    a.stop("-TERM");
    b.stop("-TERM");
}

/// The per-IP budget is kept in memory by each instance (see README, "Scaling out"): behind a
/// load balancer one address gets the budget once per instance. Measured here with two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_instance_keeps_its_own_per_ip_budget() {
    if postgres_or_skip().is_none() {
        return;
    }
    let Pair { a, b, .. } = pair(&[("TESSERA_IP_RATE_LIMIT_PER_MINUTE", "10")]).await;
    let mut allowed = Vec::new();
    for server in [&a, &b] {
        let mut ok = 0;
        for _ in 0..15 {
            match server.get("/api/openapi.json", None).await.status {
                200 => ok += 1,
                429 => {}
                other => panic!("unexpected status {other}"),
            }
        }
        allowed.push(ok);
    }
    assert_eq!(allowed, vec![10, 10], "one address, two instances, twice the budget");
    a.stop("-TERM");
    b.stop("-TERM");
}

#[derive(Clone, Default)]
struct Hook {
    ids: Arc<Mutex<Vec<i64>>>,
    arrived: Arc<tokio::sync::Notify>,
}

async fn hook(State(hook): State<Hook>, body: axum::body::Bytes) -> axum::http::StatusCode {
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    hook.ids.lock().unwrap().push(event["id"].as_i64().unwrap_or(-1));
    hook.arrived.notify_waiters();
    axum::http::StatusCode::NO_CONTENT
}

impl Hook {
    /// Waits (at most 30 s) until every id in `expected` has arrived.
    async fn wait_for(&self, expected: &[i64]) {
        let all_there = || {
            let ids = self.ids.lock().unwrap();
            expected.iter().all(|id| ids.contains(id))
        };
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let arrived = self.arrived.notified();
                if all_there() {
                    return;
                }
                arrived.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not delivered: {expected:?}, got {:?}", self.ids.lock().unwrap()));
    }
}

async fn event_ids(database: &TestDatabase) -> Vec<i64> {
    let pool = database.pool().await;
    let ids = sqlx::query_scalar("SELECT id FROM security_events ORDER BY txid, id")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    ids
}

/// A local webhook receiver; returns what it records and its URL.
async fn start_receiver() -> (Hook, String) {
    let received = Hook::default();
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (received, url)
}

/// The settings of an instance that delivers to `url` under a lease of `lease_secs`.
fn webhook_env<'a>(url: &'a str, lease_secs: &'a str) -> [(&'static str, &'a str); 4] {
    [
        ("TESSERA_IP_RATE_LIMIT_PER_MINUTE", "0"),
        ("TESSERA_EVENTS_WEBHOOK_URL", url),
        (
            "TESSERA_EVENTS_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
        ("TESSERA_EVENTS_WEBHOOK_LEASE_SECS", lease_secs),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_webhook_delivers_each_event_from_one_instance_and_survives_the_holder_dying() {
    if postgres_or_skip().is_none() {
        return;
    }
    let (received, url) = start_receiver().await;
    let env = webhook_env(&url, "3");
    let database = TestDatabase::create().await;
    let key = MasterKey::generate().to_base64();
    let dir = tempfile::tempdir().unwrap();
    // A starts alone and takes the lease; B joins while A holds it.
    let mut a = Server::start(instance(&database.url, &key, &dir.path().join("a"), &env));
    a.wait_for_line("holding the webhook delivery lease");
    let b = Server::start(instance(&database.url, &key, &dir.path().join("b"), &env));

    for (n, server) in [&a, &b, &a, &b].into_iter().enumerate() {
        assert_eq!(server.register(&format!("user{n}@example.com")).await.status, 201);
    }
    let before = event_ids(&database).await;
    assert_eq!(before.len(), 4);
    received.wait_for(&before).await;
    {
        let ids = received.ids.lock().unwrap();
        assert_eq!(*ids, before, "each event once, in order, while the holder lives");
    }

    // The holder dies without a word; B takes the lease over once it has expired.
    let mut holder = a.child;
    holder.0.kill().unwrap();
    holder.0.wait().unwrap();
    for n in 4..7 {
        assert_eq!(b.register(&format!("user{n}@example.com")).await.status, 201);
    }
    let after = event_ids(&database).await;
    received.wait_for(&after).await;
    let ids = received.ids.lock().unwrap().clone();
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(
        distinct, after,
        "in order; at most a repeat of the event in flight at the death"
    );
    b.stop("-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gracefully_stopped_holder_hands_the_webhook_over_at_once() {
    if postgres_or_skip().is_none() {
        return;
    }
    let (received, url) = start_receiver().await;
    // A lease of ten minutes: B can only take over within this test if A gives the lease back.
    let env = webhook_env(&url, "600");
    let database = TestDatabase::create().await;
    let key = MasterKey::generate().to_base64();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Server::start(instance(&database.url, &key, &dir.path().join("a"), &env));
    a.wait_for_line("holding the webhook delivery lease");
    let mut b = Server::start(instance(&database.url, &key, &dir.path().join("b"), &env));
    assert_eq!(a.register("first@example.com").await.status, 201);
    let first = event_ids(&database).await;
    received.wait_for(&first).await;

    a.stop("-TERM");
    b.wait_for_line("holding the webhook delivery lease");
    assert_eq!(b.register("second@example.com").await.status, 201);
    let all = event_ids(&database).await;
    received.wait_for(&all).await;
    let mut ids = received.ids.lock().unwrap().clone();
    ids.dedup();
    assert_eq!(ids, all, "each event once, in order, across the hand-over");
    b.stop("-TERM");
}
