//! PostgreSQL going away and coming back. The service reaches its database through a TCP proxy
//! that the test can cut (dropping every open connection and refusing new ones) and restore:
//! while cut, requests answer a 503 problem within the statement timeout and `/readyz` is 503;
//! once restored, the service recovers by itself. Runs when `TESSERA_TEST_DATABASE_URL` names a
//! PostgreSQL server (required in CI).

mod common;

use common::{Options, PASSWORD, TestDatabase, postgres_or_skip, spawn_with};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A TCP proxy to the PostgreSQL server, with a switch.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<tokio::sync::Mutex<JoinSet<()>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let (switch, tasks) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !switch.load(Ordering::SeqCst) {
                    // Down: the connection is closed at once, as by a server that is gone.
                    drop(client);
                    continue;
                }
                let target = target.clone();
                tasks.lock().await.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Proxy { port, up, connections }
    }

    /// Refuses new connections and cuts every open one.
    async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.connections.lock().await.abort_all();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_fail_fast_with_503_while_the_database_is_away_and_recover_after() {
    if postgres_or_skip().is_none() {
        return;
    }
    let database = Arc::new(TestDatabase::create().await);
    let mut url = reqwest::Url::parse(&database.url).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = Proxy::start(target).await;
    url.set_port(Some(proxy.port)).unwrap();
    let proxied = url.to_string();
    let app = spawn_with(Options {
        database: Some(database.clone()),
        configure: Box::new(move |config| {
            config.database_url = Some(proxied);
            config.postgres.statement_timeout = Duration::from_millis(1000);
        }),
        ..Options::default()
    })
    .await;
    let token = app.user_with_session("olga@example.com").await;
    assert_eq!(app.get("/readyz", None).await.status, 200);

    proxy.cut().await;
    for path in ["/readyz", "/api/auth/session"] {
        let started = Instant::now();
        app.get(path, Some(&token))
            .await
            .assert_problem(503, "/problems/service-unavailable");
        // No hang: the pool gives up after the statement timeout (1 s here); the bound is
        // generous so that a loaded machine does not fail the test.
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    app.login("olga@example.com", PASSWORD)
        .await
        .assert_problem(503, "/problems/service-unavailable");
    assert_eq!(
        app.get("/healthz", None).await.status,
        200,
        "the process itself is alive"
    );

    proxy.restore();
    // The pool reconnects on its own: connections from before the outage are tested before
    // use and replaced, so the very first request after it succeeds.
    assert_eq!(app.get("/readyz", None).await.status, 200);
    assert_eq!(app.get("/api/auth/session", Some(&token)).await.status, 200);
    assert_eq!(app.login("olga@example.com", PASSWORD).await.status, 200);
}
