//! The store contract: what every `Store` implementation must guarantee, checked on SQLite
//! always and on PostgreSQL when `TESSERA_TEST_DATABASE_URL` is set (each test on its own new
//! database). Concurrency cases use two stores (two pools) on one database, as two Tessera
//! instances would, and fire their calls at the same time: exactly one may win.

mod common;

use common::{TestDatabase, postgres_url};
use std::sync::Arc;
use tessera::domain::throttle::lock_after;
use tessera::domain::token::TokenHash;
use tessera::store::postgres::{PgSettings, PgStore};
use tessera::store::sqlite::SqliteStore;
use tessera::store::*;

/// Two handles (separate pools) on one fresh database of one backend.
struct Backend {
    name: &'static str,
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    _database: Option<TestDatabase>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let a = SqliteStore::open_file(&path).await.unwrap();
    a.migrate().await.unwrap();
    let b = SqliteStore::open_file(&path).await.unwrap();
    Backend {
        name: "sqlite",
        a: Arc::new(a),
        b: Arc::new(b),
        _dir: Some(dir),
        _database: None,
    }
}

async fn postgres() -> Backend {
    let database = TestDatabase::create().await;
    let a = PgStore::connect(&database.url, PgSettings::default()).await.unwrap();
    a.migrate().await.unwrap();
    let b = PgStore::connect(&database.url, PgSettings::default()).await.unwrap();
    Backend {
        name: "postgres",
        a: Arc::new(a),
        b: Arc::new(b),
        _dir: None,
        _database: Some(database),
    }
}

/// The outbox test needs a cluster without other writers (PostgreSQL's snapshot horizon is
/// cluster-wide): it takes this lock exclusively, every other test shares it.
static CLUSTER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// SQLite, and PostgreSQL when configured (required when `TESSERA_REQUIRE_POSTGRES` is set).
async fn backends() -> Vec<Backend> {
    let mut all = vec![sqlite().await];
    if postgres_url().is_some() {
        all.push(postgres().await);
    } else {
        assert!(
            std::env::var("TESSERA_REQUIRE_POSTGRES").is_err(),
            "TESSERA_REQUIRE_POSTGRES is set but TESSERA_TEST_DATABASE_URL is not"
        );
    }
    all
}

fn event(user_id: &str, kind: &'static str, at: i64) -> NewEvent {
    NewEvent {
        user_id: Some(user_id.to_owned()),
        kind,
        at,
        ip: Some("127.0.0.1".into()),
        user_agent: None,
        request_id: None,
    }
}

const NOW: i64 = 1_800_000_000;
const HASH: &str = "$argon2id$placeholder";
const CODES: LockPolicy = LockPolicy {
    lock_secs: lock_after,
    max_secs: 900,
};

async fn user(store: &dyn Store, id: &str) {
    store
        .insert_user(
            &NewUser {
                id: id.into(),
                email: format!("{id}@example.com"),
                password_hash: HASH.into(),
                created_at: NOW,
            },
            &event(id, "user_registered", NOW),
        )
        .await
        .unwrap();
}

fn token(n: u8) -> TokenHash {
    TokenHash([n; 32])
}

fn session(user_id: &str, n: u8, mfa: bool) -> SessionRecord {
    SessionRecord {
        token_hash: token(n),
        public_id: public_id(user_id, u32::from(n)),
        user_id: user_id.into(),
        created_at: NOW,
        last_seen_at: NOW,
        expires_at: NOW + 3600,
        mfa,
        ip: Some(format!("192.0.2.{n}")),
        user_agent: Some(format!("agent {n}")),
    }
}

/// A distinct, well-formed public id per (user, n).
fn public_id(user_id: &str, n: u32) -> String {
    let user: u32 = user_id.bytes().map(u32::from).sum();
    format!("{user:08x}-0000-4000-8000-{n:012x}")
}

/// A user with MFA on (last accepted step 100) and backup codes [1; 32] .. [10; 32].
async fn user_with_mfa(store: &dyn Store, id: &str) {
    user(store, id).await;
    let setup = PendingSetupRecord {
        sealed_secret: vec![7; 48],
        created_at: NOW,
        expires_at: NOW + 600,
    };
    store
        .insert_session(&session(id, 200, false), &event(id, "login_succeeded", NOW))
        .await
        .unwrap();
    let put = store
        .put_pending_setup(id, &setup, &token(200), &event(id, "mfa_setup_started", NOW))
        .await
        .unwrap();
    assert_eq!(put, Consumed::Yes);
    let enabled = store
        .enable_mfa(&EnableMfa {
            user_id: id.into(),
            sealed_secret: vec![7; 48],
            step: 100,
            codes: BackupCodeHashes {
                salt: vec![1; 16],
                hashes: (1..=10).map(|n| [n; 32]).collect(),
            },
            keep_session: token(200),
            now: NOW,
            event: event(id, "mfa_enabled", NOW),
        })
        .await
        .unwrap();
    assert_eq!(enabled, Consumed::Yes);
}

/// Runs `count` calls at once, alternating between the two stores; returns their results.
async fn race<T, F, Fut>(backend: &Backend, count: usize, call: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<dyn Store>, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(count));
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let store = if i % 2 == 0 {
                backend.a.clone()
            } else {
                backend.b.clone()
            };
            let barrier = barrier.clone();
            let future = call(store, i);
            tokio::spawn(async move {
                barrier.wait().await;
                future.await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_email_belongs_to_one_account() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user(backend.a.as_ref(), "ann").await;
        let again = backend
            .b
            .insert_user(
                &NewUser {
                    id: "other".into(),
                    email: "ann@example.com".into(),
                    password_hash: "x".into(),
                    created_at: NOW,
                },
                &event("other", "user_registered", NOW),
            )
            .await;
        assert!(
            matches!(again, Err(StoreError::Conflict)),
            "{}: {again:?}",
            backend.name
        );
        assert!(
            backend.a.user_by_id("other").await.unwrap().is_none(),
            "{}",
            backend.name
        );
        let found = backend.b.user_by_email("ann@example.com").await.unwrap().unwrap();
        assert_eq!(found.id, "ann");
        assert!(found.mfa.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lean_session_lookup_follows_the_rules_of_the_full_one() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let name = backend.name;
        user(backend.a.as_ref(), "dee").await;
        backend
            .a
            .insert_session(&session("dee", 1, true), &event("dee", "login_succeeded", NOW))
            .await
            .unwrap();
        let found = backend
            .b
            .active_session_summary(&token(1), NOW + 10, 1800)
            .await
            .unwrap();
        let expected = SessionSummary {
            user_id: "dee".into(),
            created_at: NOW,
            last_seen_at: NOW,
            expires_at: NOW + 3600,
            mfa: true,
            email: "dee@example.com".into(),
            user_created_at: NOW,
            user_mfa_enabled: false,
        };
        assert_eq!(found, Some(expected.clone()), "{name}");
        // Under a minute since last seen: nothing written (the full lookup still reads NOW).
        let summary = backend
            .a
            .active_session_summary(&token(1), NOW + 59, 1800)
            .await
            .unwrap();
        assert_eq!(summary.map(|s| s.last_seen_at), Some(NOW), "{name}");
        let (full, _) = backend
            .b
            .active_session(&token(1), NOW + 30, 1800)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(full.last_seen_at, NOW, "{name}");
        // A minute or more: refreshed in the database, seen by the other instance's full lookup.
        let summary = backend
            .a
            .active_session_summary(&token(1), NOW + 1000, 1800)
            .await
            .unwrap();
        assert_eq!(summary.map(|s| s.last_seen_at), Some(NOW + 1000), "{name}");
        let (full, _) = backend
            .b
            .active_session(&token(1), NOW + 1030, 1800)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(full.last_seen_at, NOW + 1000, "{name}");
        // Idle past the limit, and past the absolute end: gone, and nothing refreshed.
        assert_eq!(
            backend
                .b
                .active_session_summary(&token(1), NOW + 2801, 1800)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            backend
                .b
                .active_session_summary(&token(1), NOW + 3600, 100_000)
                .await
                .unwrap(),
            None,
            "{name}: absolute"
        );
        let (full, _) = backend
            .b
            .active_session(&token(1), NOW + 1030, 1800)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(full.last_seen_at, NOW + 1000, "{name}");
        // An unknown token: none.
        assert_eq!(
            backend.b.active_session_summary(&token(99), NOW, 1800).await.unwrap(),
            None
        );
        // MFA on the account (its session opened without the second factor).
        user_with_mfa(backend.a.as_ref(), "eve").await;
        let summary = backend
            .b
            .active_session_summary(&token(200), NOW, 1800)
            .await
            .unwrap()
            .unwrap();
        assert!(summary.user_mfa_enabled && !summary.mfa, "{name}");
        assert_eq!(summary.email, "eve@example.com");
        // Disabling the account revokes its sessions: the lean lookup finds none.
        backend
            .a
            .set_disabled(
                "dee",
                Some(NOW + 1040),
                &event("dee", "account_disabled_by_operator", NOW + 1040),
            )
            .await
            .unwrap();
        assert_eq!(
            backend
                .b
                .active_session_summary(&token(1), NOW + 1040, 1800)
                .await
                .unwrap(),
            None
        );
        // The lean lookup also checks the copy of `disabled_at` on the session row itself: a
        // row that says so (written here behind the store's back) is not a live session.
        user(backend.a.as_ref(), "zed").await;
        backend
            .a
            .insert_session(&session("zed", 77, false), &event("zed", "login_succeeded", NOW))
            .await
            .unwrap();
        assert!(
            backend
                .b
                .active_session_summary(&token(77), NOW, 1800)
                .await
                .unwrap()
                .is_some(),
            "{name}"
        );
        let mark = "UPDATE sessions SET user_disabled_at = 1800000000 WHERE user_id = 'zed'";
        match (&backend._dir, &backend._database) {
            (Some(dir), _) => {
                let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                sqlx::query(mark).execute(&pool).await.unwrap();
                pool.close().await;
            }
            (None, Some(database)) => {
                let pool = database.pool().await;
                sqlx::query(mark).execute(&pool).await.unwrap();
                pool.close().await;
            }
            (None, None) => unreachable!("every backend has a directory or a database"),
        }
        assert_eq!(
            backend.b.active_session_summary(&token(77), NOW, 1800).await.unwrap(),
            None,
            "{name}"
        );
    }
}

/// The limits at their exact boundaries, the same for the lean lookup and the full one: a
/// session is live while `expires_at > now` and `last_seen_at > now - idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_session_lookups_end_a_session_exactly_at_its_limits() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let name = backend.name;
        let store = backend.b.as_ref();
        user(backend.a.as_ref(), "ida").await;
        // Each session seen at NOW, expiring at NOW + 3600 (a session per check: a hit a
        // minute or more after it was last seen refreshes `last_seen_at`).
        for n in 5..=8 {
            backend
                .a
                .insert_session(&session("ida", n, false), &event("ida", "login_succeeded", NOW))
                .await
                .unwrap();
        }
        let lean = |n: u8, at: i64, idle: i64| async move {
            store
                .active_session_summary(&token(n), at, idle)
                .await
                .unwrap()
                .is_some()
        };
        let full = |n: u8, at: i64, idle: i64| async move {
            store.active_session(&token(n), at, idle).await.unwrap().is_some()
        };
        // Idle limit 1800 s: over exactly 1800 s after it was last seen, live a second before.
        assert!(
            !lean(5, NOW + 1800, 1800).await && !full(5, NOW + 1800, 1800).await,
            "{name}"
        );
        assert!(lean(6, NOW + 1799, 1800).await, "{name}");
        assert!(full(6, NOW + 1799, 1800).await, "{name}");
        // Absolute limit (a longer idle limit): over at NOW + 3600, live a second before.
        assert!(
            !lean(7, NOW + 3600, 7200).await && !full(7, NOW + 3600, 7200).await,
            "{name}"
        );
        assert!(lean(8, NOW + 3599, 7200).await, "{name}");
        assert!(full(8, NOW + 3599, 7200).await, "{name}");
    }
}

/// Introspection reads the user's public facts from the session row (migration 0009): every
/// change of the user row that alters one must reach every session of the user, in the same
/// transaction, and agree with the full lookup (which reads the user row itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_user_facts_on_a_session_follow_the_user_row() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let name = backend.name;
        let (a, b) = (backend.a.as_ref(), backend.b.as_ref());
        let agree = |tag: &'static str, token_hash: TokenHash, mfa_on: bool| async move {
            let summary = b
                .active_session_summary(&token_hash, NOW, 1800)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{name} {tag}: no session"));
            let (_, user) = b.active_session(&token_hash, NOW, 1800).await.unwrap().unwrap();
            assert_eq!(summary.user_mfa_enabled, mfa_on, "{name} {tag}");
            assert_eq!(user.mfa.is_some(), mfa_on, "{name} {tag}: full lookup");
            assert_eq!(summary.email, user.email, "{name} {tag}");
            assert_eq!(summary.user_created_at, user.created_at, "{name} {tag}");
        };
        // Opened while MFA was off, kept by the enabling transaction: now says MFA on.
        user_with_mfa(a, "fay").await;
        agree("kept by enable", token(200), true).await;
        // Opened while MFA is on.
        a.insert_session(&session("fay", 201, true), &event("fay", "login_succeeded", NOW))
            .await
            .unwrap();
        agree("opened with MFA on", token(201), true).await;
        // Disabling MFA keeps the acting session and rewrites its facts.
        let disabled = a
            .disable_mfa(
                "fay",
                SecondFactorProof::BackupCode([3; 32]),
                &token(201),
                &event("fay", "mfa_disabled", NOW),
            )
            .await
            .unwrap();
        assert_eq!(disabled, Consumed::Yes, "{name}");
        agree("kept by disable", token(201), false).await;
        assert_eq!(
            b.active_session_summary(&token(200), NOW, 1800).await.unwrap(),
            None,
            "{name}"
        );
        // Another user's sessions are untouched by fay's changes.
        user(a, "gil").await;
        a.insert_session(&session("gil", 202, false), &event("gil", "login_succeeded", NOW))
            .await
            .unwrap();
        user_with_mfa(a, "hal").await;
        agree("another user", token(202), false).await;
    }
}

/// Introspection reads abandoned at any point (the request dropped mid-read) leave the store
/// answering: on SQLite they run on connections kept outside sqlx's pool, and a connection whose
/// read was abandoned must be dropped, never handed to the next read half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_introspection_reads_leave_later_reads_right() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let name = backend.name;
        user(backend.a.as_ref(), "ivy").await;
        backend
            .a
            .insert_session(&session("ivy", 1, true), &event("ivy", "login_succeeded", NOW))
            .await
            .unwrap();
        for micros in (0..400).step_by(10) {
            let _ = tokio::time::timeout(
                std::time::Duration::from_micros(micros),
                backend.b.active_session_summary(&token(1), NOW + 10, 1800),
            )
            .await;
        }
        for _ in 0..8 {
            let found = backend
                .b
                .active_session_summary(&token(1), NOW + 10, 1800)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: the session is gone"));
            assert_eq!(found.email, "ivy@example.com", "{name}");
            assert_eq!(
                backend
                    .b
                    .active_session_summary(&token(9), NOW + 10, 1800)
                    .await
                    .unwrap(),
                None,
                "{name}"
            );
        }
    }
}

/// Rows written under the schema of migration 0008 (before the user's facts moved onto the
/// session row and `mfa_challenges` was rebuilt) come through migrations 0009 and 0010 intact:
/// the session answers introspection with its user's facts, the challenge still leads to its
/// user, and new sessions are written as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_and_challenges_of_an_older_schema_survive_the_upgrade() {
    let _shared = CLUSTER.read().await;
    // Literal values, so the same statements run on both backends.
    let seed = [
        "INSERT INTO users (id, email, password_hash, created_at, mfa_secret, mfa_enabled_at, mfa_last_step) \
         VALUES ('old', 'old@example.com', '$argon2id$placeholder', 1700000000, x'070707', 1700000100, 5)",
        "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, expires_at, mfa, public_id, seq) \
         VALUES (x'0101010101010101010101010101010101010101010101010101010101010101', 'old', 1800000000, \
         1800000000, 1800003600, TRUE, 'f4c1b3a2-0000-4000-8000-000000000001', 1)",
        "INSERT INTO mfa_challenges (token_hash, user_id, created_at, expires_at) \
         VALUES (x'0202020202020202020202020202020202020202020202020202020202020202', 'old', 1800000000, 1800000300)",
    ];
    let mut upgraded: Vec<Backend> = Vec::new();
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.db");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        tessera::store::sqlite::MIGRATOR.run_to(8, &pool).await.unwrap();
        for statement in seed {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;
        let store = SqliteStore::open_file(&path).await.unwrap();
        store.migrate().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        upgraded.push(Backend {
            name: "sqlite",
            a: store.clone(),
            b: store,
            _dir: Some(dir),
            _database: None,
        });
    }
    if postgres_url().is_some() {
        let database = TestDatabase::create().await;
        let pool = database.pool().await;
        tessera::store::postgres::MIGRATOR.run_to(8, &pool).await.unwrap();
        for statement in seed {
            sqlx::query(sqlx::AssertSqlSafe(statement.replace("x'", "'\\x")))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
        let store = PgStore::connect(&database.url, PgSettings::default()).await.unwrap();
        store.migrate().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        upgraded.push(Backend {
            name: "postgres",
            a: store.clone(),
            b: store,
            _dir: None,
            _database: Some(database),
        });
    }
    for backend in &upgraded {
        let (name, store) = (backend.name, &backend.a);
        let summary = store
            .active_session_summary(&token(1), NOW + 10, 1800)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: the old session is gone"));
        assert_eq!(summary.email, "old@example.com", "{name}");
        assert_eq!(summary.user_created_at, 1_700_000_000, "{name}");
        assert!(summary.user_mfa_enabled && summary.mfa, "{name}");
        let found = store.challenge_user_record(&token(2), NOW + 10).await.unwrap();
        assert_eq!(
            found.map(|found| found.id).as_deref(),
            Some("old"),
            "{name}: the challenge"
        );
        // New sessions after the upgrade carry their user's facts too.
        user(store.as_ref(), "new").await;
        store
            .insert_session(&session("new", 3, false), &event("new", "login_succeeded", NOW))
            .await
            .unwrap();
        let fresh = store
            .active_session_summary(&token(3), NOW + 10, 1800)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fresh.email, "new@example.com", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_made_through_one_instance_is_seen_by_the_other_until_it_expires_or_idles() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user(backend.a.as_ref(), "bo").await;
        backend
            .a
            .insert_session(&session("bo", 1, true), &event("bo", "login_succeeded", NOW))
            .await
            .unwrap();
        let (found, owner) = backend
            .b
            .active_session(&token(1), NOW + 10, 1800)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(owner.id, "bo");
        assert!(found.mfa, "{}", backend.name);
        // Idle past the limit: gone; a refresh within the limit moves last_seen_at.
        assert!(
            backend
                .b
                .active_session(&token(1), NOW + 1801, 1800)
                .await
                .unwrap()
                .is_none()
        );
        let (refreshed, _) = backend
            .a
            .active_session(&token(1), NOW + 1000, 1800)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(refreshed.last_seen_at, NOW + 1000);
        assert!(
            backend
                .b
                .active_session(&token(1), NOW + 2000, 1800)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            backend
                .b
                .active_session(&token(1), NOW + 3600, 1800)
                .await
                .unwrap()
                .is_none(),
            "absolute"
        );
        assert!(
            backend
                .a
                .delete_session(&token(1), &event("bo", "logout", NOW))
                .await
                .unwrap()
        );
        assert!(
            !backend
                .b
                .delete_session(&token(1), &event("bo", "logout", NOW))
                .await
                .unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_attempts_are_all_counted_and_the_lock_holds_across_instances() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user(backend.a.as_ref(), "cy").await;
        let results = race(&backend, 20, |store, _| async move {
            store
                .reserve_attempt("cy", AttemptKind::SecondFactor, NOW, CODES)
                .await
                .unwrap()
        })
        .await;
        let granted: Vec<u32> = results
            .iter()
            .filter_map(|r| match r {
                AttemptReservation::Granted { failures } => Some(*failures),
                AttemptReservation::Locked { .. } => None,
            })
            .collect();
        // The 5th failure locks; nothing after it is evaluated until the lock ends.
        let mut sorted = granted.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![1, 2, 3, 4, 5], "{}: {results:?}", backend.name);
        let until = NOW + lock_after(5);
        assert!(
            results.contains(&AttemptReservation::Locked { until }),
            "{}",
            backend.name
        );
        let user = backend.b.user_by_id("cy").await.unwrap().unwrap();
        assert_eq!(user.throttle.failures, 5);
        assert_eq!(user.throttle.locked_until, Some(until));
        assert_eq!(
            backend
                .a
                .reserve_attempt("cy", AttemptKind::SecondFactor, until, CODES)
                .await
                .unwrap(),
            AttemptReservation::Granted { failures: 6 }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_backup_code_used_fifty_times_at_once_wins_once() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user_with_mfa(backend.a.as_ref(), "di").await;
        let results = race(&backend, 50, |store, i| async move {
            let challenge = token(100 + u8::try_from(i).unwrap());
            store
                .insert_challenge(
                    &challenge,
                    "di",
                    NOW,
                    NOW + 300,
                    HASH,
                    None,
                    &event("di", "login_password_ok_mfa_required", NOW),
                )
                .await
                .unwrap();
            store
                .complete_challenge(
                    &challenge,
                    SecondFactorProof::BackupCode([3; 32]),
                    &session("di", 10 + u8::try_from(i).unwrap(), true),
                    &event("di", "login_succeeded", NOW),
                )
                .await
                .unwrap()
        })
        .await;
        let winners = results.iter().filter(|r| **r == Consumed::Yes).count();
        assert_eq!(winners, 1, "{}: {results:?}", backend.name);
        assert_eq!(backend.a.backup_codes_remaining("di").await.unwrap(), 9);
        let used = backend
            .b
            .list_events("di", 200)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == "backup_code_used")
            .count();
        assert_eq!(used, 1, "{}", backend.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_totp_step_sent_to_both_instances_at_once_logs_in_once_and_never_again() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user_with_mfa(backend.a.as_ref(), "ed").await;
        let results = race(&backend, 20, |store, i| async move {
            let challenge = token(100 + u8::try_from(i).unwrap());
            store
                .insert_challenge(
                    &challenge,
                    "ed",
                    NOW,
                    NOW + 300,
                    HASH,
                    None,
                    &event("ed", "login_password_ok_mfa_required", NOW),
                )
                .await
                .unwrap();
            store
                .complete_challenge(
                    &challenge,
                    SecondFactorProof::TotpStep(101),
                    &session("ed", 10 + u8::try_from(i).unwrap(), true),
                    &event("ed", "login_succeeded", NOW),
                )
                .await
                .unwrap()
        })
        .await;
        assert_eq!(
            results.iter().filter(|r| **r == Consumed::Yes).count(),
            1,
            "{}",
            backend.name
        );
        let user = backend.b.user_by_id("ed").await.unwrap().unwrap();
        assert_eq!(user.mfa.unwrap().last_step, Some(101));
        // An older step is refused too; the challenge of a refused attempt stays unused.
        backend
            .b
            .insert_challenge(&token(250), "ed", NOW, NOW + 300, HASH, None, &event("ed", "x", NOW))
            .await
            .unwrap();
        let older = backend
            .b
            .complete_challenge(
                &token(250),
                SecondFactorProof::TotpStep(100),
                &session("ed", 251, true),
                &event("ed", "login_succeeded", NOW),
            )
            .await
            .unwrap();
        assert_eq!(older, Consumed::Rejected);
        assert_eq!(
            backend.a.challenge_user(&token(250), NOW).await.unwrap().as_deref(),
            Some("ed")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_mfa_token_is_single_use_and_expires() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user_with_mfa(backend.a.as_ref(), "flo").await;
        let store = backend.a.as_ref();
        store
            .insert_challenge(&token(1), "flo", NOW, NOW + 300, HASH, None, &event("flo", "x", NOW))
            .await
            .unwrap();
        assert!(
            store.challenge_user(&token(1), NOW + 300).await.unwrap().is_none(),
            "expired"
        );
        let late = SessionRecord {
            created_at: NOW + 300,
            ..session("flo", 2, true)
        };
        let expired = store
            .complete_challenge(
                &token(1),
                SecondFactorProof::TotpStep(105),
                &late,
                &event("flo", "x", NOW),
            )
            .await
            .unwrap();
        assert_eq!(expired, Consumed::Rejected, "{}", backend.name);
        let first = store
            .complete_challenge(
                &token(1),
                SecondFactorProof::TotpStep(105),
                &session("flo", 3, true),
                &event("flo", "x", NOW),
            )
            .await
            .unwrap();
        assert_eq!(first, Consumed::Yes);
        let second = backend
            .b
            .complete_challenge(
                &token(1),
                SecondFactorProof::TotpStep(106),
                &session("flo", 4, true),
                &event("flo", "x", NOW),
            )
            .await
            .unwrap();
        assert_eq!(second, Consumed::Rejected, "{}", backend.name);
        assert!(backend.b.active_session(&token(4), NOW, 1800).await.unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_change_changes_nothing_and_a_regeneration_replaces_the_whole_set() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user_with_mfa(backend.a.as_ref(), "gus").await;
        let store = backend.a.as_ref();
        store
            .insert_session(&session("gus", 201, true), &event("gus", "login_succeeded", NOW))
            .await
            .unwrap();
        let fresh = BackupCodeHashes {
            salt: vec![2; 16],
            hashes: (21..=30).map(|n| [n; 32]).collect(),
        };
        // A replayed step (100 was the enabling step): nothing changes.
        let replayed = store
            .replace_backup_codes(
                "gus",
                SecondFactorProof::TotpStep(100),
                &fresh,
                &token(200),
                &event("gus", "x", NOW),
            )
            .await
            .unwrap();
        assert_eq!(replayed, Consumed::Rejected, "{}", backend.name);
        assert_eq!(store.backup_codes_remaining("gus").await.unwrap(), 10);
        assert!(store.active_session(&token(201), NOW, 1800).await.unwrap().is_some());
        let replaced = backend
            .b
            .replace_backup_codes(
                "gus",
                SecondFactorProof::BackupCode([4; 32]),
                &fresh,
                &token(200),
                &event("gus", "backup_codes_regenerated", NOW),
            )
            .await
            .unwrap();
        assert_eq!(replaced, Consumed::Yes);
        let user = store.user_by_id("gus").await.unwrap().unwrap();
        assert_eq!(user.mfa.unwrap().backup_salt, vec![2; 16]);
        assert_eq!(store.backup_codes_remaining("gus").await.unwrap(), 10);
        // The old set is dead, the new one works; the other session was revoked, ours kept.
        let old = store
            .disable_mfa(
                "gus",
                SecondFactorProof::BackupCode([5; 32]),
                &token(200),
                &event("gus", "x", NOW),
            )
            .await
            .unwrap();
        assert_eq!(old, Consumed::Rejected, "{}", backend.name);
        assert!(store.active_session(&token(201), NOW, 1800).await.unwrap().is_none());
        assert!(store.active_session(&token(200), NOW, 1800).await.unwrap().is_some());
        let disabled = store
            .disable_mfa(
                "gus",
                SecondFactorProof::BackupCode([25; 32]),
                &token(200),
                &event("gus", "mfa_disabled", NOW),
            )
            .await
            .unwrap();
        assert_eq!(disabled, Consumed::Yes);
        let user = store.user_by_id("gus").await.unwrap().unwrap();
        assert!(user.mfa.is_none());
        assert_eq!(store.backup_codes_remaining("gus").await.unwrap(), 0);
        assert!(store.any_sealed_secret().await.unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_setup_enables_once_and_only_while_it_is_the_current_one() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user(backend.a.as_ref(), "hal").await;
        let store = backend.a.as_ref();
        let setup = |byte: u8| PendingSetupRecord {
            sealed_secret: vec![byte; 48],
            created_at: NOW,
            expires_at: NOW + 600,
        };
        store
            .insert_session(&session("hal", 1, false), &event("hal", "login_succeeded", NOW))
            .await
            .unwrap();
        for secret in [1, 2] {
            let put = store
                .put_pending_setup("hal", &setup(secret), &token(1), &event("hal", "x", NOW))
                .await
                .unwrap();
            assert_eq!(put, Consumed::Yes);
        }
        assert_eq!(
            store.pending_setup("hal", NOW).await.unwrap().unwrap().sealed_secret,
            vec![2; 48]
        );
        assert!(
            store.pending_setup("hal", NOW + 600).await.unwrap().is_none(),
            "expired"
        );
        let enable = |secret: u8| EnableMfa {
            user_id: "hal".into(),
            sealed_secret: vec![secret; 48],
            step: 50,
            codes: BackupCodeHashes {
                salt: vec![1; 16],
                hashes: vec![[9; 32]],
            },
            keep_session: token(1),
            now: NOW,
            event: event("hal", "mfa_enabled", NOW),
        };
        assert_eq!(
            store.enable_mfa(&enable(1)).await.unwrap(),
            Consumed::Rejected,
            "replaced setup"
        );
        let results = race(&backend, 10, move |store, _| {
            let request = enable(2);
            async move { store.enable_mfa(&request).await.unwrap() }
        })
        .await;
        assert_eq!(
            results.iter().filter(|r| **r == Consumed::Yes).count(),
            1,
            "{}",
            backend.name
        );
        assert!(store.pending_setup("hal", NOW).await.unwrap().is_none());
        assert_eq!(store.any_sealed_secret().await.unwrap(), Some(vec![2; 48]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_change_revokes_the_other_sessions_and_resets_the_throttle() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user(backend.a.as_ref(), "ivy").await;
        let store = backend.a.as_ref();
        for n in 1..=3 {
            store
                .insert_session(&session("ivy", n, false), &event("ivy", "login_succeeded", NOW))
                .await
                .unwrap();
        }
        store
            .reserve_attempt("ivy", AttemptKind::SecondFactor, NOW, CODES)
            .await
            .unwrap();
        let changed = backend
            .b
            .change_password(
                "ivy",
                None,
                HASH,
                "$argon2id$new",
                &token(1),
                &event("ivy", "password_changed", NOW),
            )
            .await
            .unwrap();
        assert_eq!(changed, Consumed::Yes);
        let user = store.user_by_id("ivy").await.unwrap().unwrap();
        assert_eq!(user.password_hash, "$argon2id$new");
        assert_eq!(user.throttle, ThrottleRecord::default(), "{}", backend.name);
        assert!(store.active_session(&token(1), NOW, 1800).await.unwrap().is_some());
        assert!(store.active_session(&token(2), NOW, 1800).await.unwrap().is_none());
        // The parameter upgrade only replaces the hash it was computed from.
        store
            .upgrade_password_hash("ivy", "$argon2id$old", "$argon2id$up")
            .await
            .unwrap();
        assert_eq!(
            store.user_by_id("ivy").await.unwrap().unwrap().password_hash,
            "$argon2id$new"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_webhook_lease_has_one_holder_and_passes_on_when_it_expires() {
    // It reads the outbox, which on PostgreSQL only shows events older than every running
    // transaction: the racing writers of other tests must not be running meanwhile.
    let _alone = CLUSTER.write().await;
    for backend in backends().await {
        user(backend.a.as_ref(), "jo").await;
        let start = backend.a.webhook_cursor().await.unwrap();
        assert!(start.id > 0, "enabling the webhook does not replay history");
        assert_eq!(backend.b.webhook_cursor().await.unwrap(), start);
        assert!(backend.a.acquire_webhook_lease("A", NOW, 30).await.unwrap());
        assert!(
            !backend.b.acquire_webhook_lease("B", NOW + 29, 30).await.unwrap(),
            "{}",
            backend.name
        );
        assert!(
            backend.a.acquire_webhook_lease("A", NOW + 29, 30).await.unwrap(),
            "renewed"
        );
        assert!(!backend.b.acquire_webhook_lease("B", NOW + 58, 30).await.unwrap());
        for n in 0..3 {
            backend
                .a
                .insert_event(&event("jo", "login_failed", NOW + n))
                .await
                .unwrap();
        }
        let events = outbox(backend.b.as_ref(), start, 3).await;
        assert!(events.windows(2).all(|w| w[0].position < w[1].position));
        assert!(
            !backend.b.set_webhook_cursor("B", events[0].position).await.unwrap(),
            "not the holder"
        );
        assert!(backend.a.set_webhook_cursor("A", events[0].position).await.unwrap());
        // A stops renewing (it died): once the lease has run out, B takes over from the cursor.
        assert!(backend.b.acquire_webhook_lease("B", NOW + 59, 30).await.unwrap());
        assert!(
            !backend.a.set_webhook_cursor("A", events[1].position).await.unwrap(),
            "lease lost"
        );
        let cursor = backend.b.webhook_cursor().await.unwrap();
        assert_eq!(cursor, events[0].position);
        let rest = outbox(backend.b.as_ref(), cursor, 2).await;
        assert_eq!(
            rest.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![events[1].id, events[2].id]
        );
    }
}

/// The outbox past `after` once it holds `count` events. On PostgreSQL an event is handed out
/// only when every transaction older than it has ended, cluster-wide, so a transaction of a
/// concurrent test (or of anything else on the server) can hold it back for a moment: wait for
/// that, boundedly, instead of failing.
async fn outbox(store: &dyn Store, after: OutboxPosition, count: usize) -> Vec<StoredEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let events = store.events_after(after, 100).await.unwrap();
        if events.len() >= count || std::time::Instant::now() > deadline {
            assert_eq!(events.len(), count, "{events:?}");
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// PostgreSQL hands out identity values before commit, so an event can commit after one with a
/// larger id. The outbox must not deliver past an event that is still being written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_committed_late_is_not_skipped_by_the_outbox() {
    let Some(_) = postgres_url() else { return };
    let _alone = CLUSTER.write().await;
    let backend = postgres().await;
    user(backend.a.as_ref(), "kim").await;
    let start = backend.a.webhook_cursor().await.unwrap();
    let database = backend._database.as_ref().unwrap();
    let pool = database.pool().await;
    let mut slow = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO security_events (user_id, kind, at) VALUES ('kim', 'slow', 1)")
        .execute(&mut *slow)
        .await
        .unwrap();
    backend.a.insert_event(&event("kim", "fast", NOW)).await.unwrap();
    let visible = backend.b.events_after(start, 100).await.unwrap();
    assert!(visible.is_empty(), "nothing past a running writer: {visible:?}");
    slow.commit().await.unwrap();
    let kinds: Vec<String> = outbox(backend.b.as_ref(), start, 2)
        .await
        .into_iter()
        .map(|e| e.record.kind)
        .collect();
    assert_eq!(kinds, vec!["slow", "fast"]);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_database_is_reported_as_unavailable() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        backend.a.close().await;
        assert!(
            matches!(backend.a.ping().await, Err(StoreError::Unavailable(_))),
            "{}",
            backend.name
        );
        assert!(matches!(
            backend.a.user_by_email("x@example.com").await,
            Err(StoreError::Unavailable(_))
        ));
        backend.b.ping().await.unwrap();
    }
}

/// `sslmode` in the URL is honoured: with `require` the connection is encrypted (rustls).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_use_tls_when_the_url_requires_it() {
    let Some(_) = postgres_url() else { return };
    let _shared = CLUSTER.read().await;
    let database = TestDatabase::create().await;
    for (mode, encrypted) in [("require", true), ("disable", false)] {
        let url = format!("{}?sslmode={mode}", database.url);
        let store = PgStore::connect(&url, PgSettings::default()).await.unwrap();
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(ssl, encrypted, "sslmode={mode}");
        pool.close().await;
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_login_only_counts_while_the_verified_hash_and_mfa_state_are_current() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user(store, "kay").await;
        store
            .reserve_attempt("kay", AttemptKind::Password { network: None }, NOW, CODES)
            .await
            .unwrap();
        let first = store
            .login_session(
                &session("kay", 1, false),
                HASH,
                Some("10.0.0.0/24"),
                &event("kay", "login_succeeded", NOW),
            )
            .await
            .unwrap();
        assert_eq!(first, Consumed::Yes, "{}", backend.name);
        let user = store.user_by_id("kay").await.unwrap().unwrap();
        assert_eq!(
            user.password_throttle,
            ThrottleRecord::default(),
            "a success resets the count"
        );
        // The password changes between another login's check and its commit: no session.
        let changed = backend
            .b
            .change_password(
                "kay",
                None,
                HASH,
                "$argon2id$other",
                &token(1),
                &event("kay", "password_changed", NOW),
            )
            .await
            .unwrap();
        assert_eq!(changed, Consumed::Yes);
        let stale = store
            .login_session(
                &session("kay", 2, false),
                HASH,
                None,
                &event("kay", "login_succeeded", NOW),
            )
            .await
            .unwrap();
        assert_eq!(stale, Consumed::Stale, "{}", backend.name);
        assert!(store.active_session(&token(2), NOW, 1800).await.unwrap().is_none());
        let challenge = store
            .insert_challenge(
                &token(3),
                "kay",
                NOW,
                NOW + 300,
                "$argon2id$other",
                None,
                &event("kay", "x", NOW),
            )
            .await
            .unwrap();
        assert_eq!(challenge, Consumed::Stale, "MFA is off: no mfa_token");
        // A second password change checked against the old hash loses too.
        let late = backend
            .b
            .change_password(
                "kay",
                None,
                HASH,
                "$argon2id$third",
                &token(1),
                &event("kay", "password_changed", NOW),
            )
            .await
            .unwrap();
        assert_eq!(late, Consumed::Stale, "{}", backend.name);
        // With MFA on, a one-factor session is refused even with the current hash.
        user_with_mfa(store, "lou").await;
        let one_factor = store
            .login_session(
                &session("lou", 4, false),
                HASH,
                None,
                &event("lou", "login_succeeded", NOW),
            )
            .await
            .unwrap();
        assert_eq!(one_factor, Consumed::Stale, "{}", backend.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_made_through_a_session_that_ended_write_nothing() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user_with_mfa(store, "max").await;
        assert!(
            store
                .delete_session(&token(200), &event("max", "logout", NOW))
                .await
                .unwrap()
        );
        let fresh = BackupCodeHashes {
            salt: vec![2; 16],
            hashes: vec![[40; 32]],
        };
        let replaced = store
            .replace_backup_codes(
                "max",
                SecondFactorProof::BackupCode([1; 32]),
                &fresh,
                &token(200),
                &event("max", "x", NOW),
            )
            .await
            .unwrap();
        assert_eq!(replaced, Consumed::SessionGone, "{}", backend.name);
        let disabled = store
            .disable_mfa(
                "max",
                SecondFactorProof::BackupCode([1; 32]),
                &token(200),
                &event("max", "x", NOW),
            )
            .await
            .unwrap();
        assert_eq!(disabled, Consumed::SessionGone);
        let changed = store
            .change_password(
                "max",
                Some(SecondFactorProof::BackupCode([1; 32])),
                HASH,
                "$new",
                &token(200),
                &event("max", "x", NOW),
            )
            .await
            .unwrap();
        assert_eq!(changed, Consumed::SessionGone);
        assert_eq!(
            store.backup_codes_remaining("max").await.unwrap(),
            10,
            "no code was consumed"
        );
        assert!(store.backup_code_exists("max", &[1; 32]).await.unwrap());
        assert!(!store.backup_code_exists("max", &[40; 32]).await.unwrap());
        let user = store.user_by_id("max").await.unwrap().unwrap();
        assert_eq!(user.password_hash, HASH);
        assert!(user.mfa.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_password_lock_spares_the_network_of_the_last_login_and_distrusts_locks_from_the_future() {
    let _shared = CLUSTER.read().await;
    let passwords = LockPolicy {
        lock_secs: tessera::domain::throttle::password_lock_after,
        max_secs: 900,
    };
    for backend in backends().await {
        let store = backend.a.as_ref();
        user(store, "ned").await;
        let home = Some("192.0.2.0/24");
        store
            .login_session(
                &session("ned", 1, false),
                HASH,
                home,
                &event("ned", "login_succeeded", NOW),
            )
            .await
            .unwrap();
        let elsewhere = AttemptKind::Password {
            network: Some("203.0.113.0/24"),
        };
        for n in 1..=10 {
            assert_eq!(
                store.reserve_attempt("ned", elsewhere, NOW, passwords).await.unwrap(),
                AttemptReservation::Granted { failures: n },
                "{}",
                backend.name
            );
        }
        assert_eq!(
            store
                .reserve_attempt("ned", elsewhere, NOW + 1, passwords)
                .await
                .unwrap(),
            AttemptReservation::Locked { until: NOW + 30 }
        );
        assert_eq!(
            store
                .reserve_attempt("ned", AttemptKind::Password { network: None }, NOW + 1, passwords)
                .await
                .unwrap(),
            AttemptReservation::Locked { until: NOW + 30 }
        );
        assert_eq!(
            store
                .reserve_attempt("ned", AttemptKind::Password { network: home }, NOW + 1, passwords)
                .await
                .unwrap(),
            AttemptReservation::Granted { failures: 11 },
            "the owner's network is not locked out"
        );
        // The clock went back an hour: a lock ending more than the maximum from now is not honoured.
        let user = store.user_by_id("ned").await.unwrap().unwrap();
        let until = user.password_throttle.locked_until.unwrap();
        assert_eq!(until, NOW + 1 + 60);
        assert!(matches!(
            store
                .reserve_attempt("ned", elsewhere, until - 901, passwords)
                .await
                .unwrap(),
            AttemptReservation::Granted { .. }
        ));
        // The second-factor count is a separate one.
        assert_eq!(
            store.user_by_id("ned").await.unwrap().unwrap().throttle,
            ThrottleRecord::default()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn totp_suspension_is_recorded_once_and_lifted_by_a_backup_code_login() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user(store, "oz").await;
        assert!(
            !store
                .suspend_totp("oz", &event("oz", "mfa_totp_suspended", NOW))
                .await
                .unwrap(),
            "MFA is off"
        );
        user_with_mfa(store, "pia").await;
        assert!(
            store
                .suspend_totp("pia", &event("pia", "mfa_totp_suspended", NOW))
                .await
                .unwrap()
        );
        assert!(
            !backend
                .b
                .suspend_totp("pia", &event("pia", "mfa_totp_suspended", NOW))
                .await
                .unwrap()
        );
        let suspended = store.user_by_id("pia").await.unwrap().unwrap();
        assert_eq!(suspended.mfa.unwrap().totp_suspended_at, Some(NOW), "{}", backend.name);
        store
            .insert_challenge(&token(1), "pia", NOW, NOW + 300, HASH, None, &event("pia", "x", NOW))
            .await
            .unwrap();
        let login = store
            .complete_challenge(
                &token(1),
                SecondFactorProof::BackupCode([2; 32]),
                &session("pia", 2, true),
                &event("pia", "x", NOW),
            )
            .await
            .unwrap();
        assert_eq!(login, Consumed::Yes);
        let lifted = store.user_by_id("pia").await.unwrap().unwrap();
        assert_eq!(lifted.mfa.unwrap().totp_suspended_at, None, "{}", backend.name);
        let events = store.list_events("pia", 50).await.unwrap();
        assert_eq!(events.iter().filter(|e| e.kind == "mfa_totp_suspended").count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reauthentication_budget_is_per_minute_and_not_refilled_by_success() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user(backend.a.as_ref(), "quy").await;
        let results = race(&backend, 12, |store, _| async move {
            store.take_reauth("quy", NOW, 60, 10).await.unwrap()
        })
        .await;
        let granted = results
            .iter()
            .filter(|r| matches!(r, AttemptReservation::Granted { .. }))
            .count();
        assert_eq!(granted, 10, "{}: {results:?}", backend.name);
        assert!(results.contains(&AttemptReservation::Locked { until: NOW + 60 }));
        assert_eq!(
            backend.b.take_reauth("quy", NOW + 60, 60, 10).await.unwrap(),
            AttemptReservation::Granted { failures: 1 },
            "a new window"
        );
        // A window that starts in the future (the clock went back) is replaced, not trusted.
        assert_eq!(
            backend.b.take_reauth("quy", NOW - 3600, 60, 10).await.unwrap(),
            AttemptReservation::Granted { failures: 1 }
        );
    }
}

// ---- sessions the user sees and ends ----

async fn kinds_of(store: &dyn Store, user_id: &str, kind: &str) -> usize {
    let events = store.list_events(user_id, 200).await.unwrap();
    events.iter().filter(|e| e.kind == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_session_cap_evicts_the_oldest_and_records_each_eviction() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user(store, "cap").await;
        // An expired session is dropped by the next insert without counting as an eviction.
        let expired = SessionRecord {
            created_at: NOW - 7200,
            last_seen_at: NOW - 7200,
            expires_at: NOW - 3600,
            ..session("cap", 250, false)
        };
        store
            .insert_session(&expired, &event("cap", "login_succeeded", NOW))
            .await
            .unwrap();
        // All in the same second: the order of creation still decides which is the oldest.
        for n in 1..=100u8 {
            store
                .insert_session(&session("cap", n, false), &event("cap", "login_succeeded", NOW))
                .await
                .unwrap();
        }
        assert_eq!(store.list_sessions("cap", NOW, 1800).await.unwrap().len(), 100);
        assert_eq!(kinds_of(store, "cap", "session_evicted").await, 0, "{}", backend.name);
        store
            .insert_session(&session("cap", 101, false), &event("cap", "login_succeeded", NOW))
            .await
            .unwrap();
        let listed = store.list_sessions("cap", NOW, 1800).await.unwrap();
        assert_eq!(listed.len() as i64, MAX_SESSIONS_PER_USER, "{}", backend.name);
        assert!(
            store.active_session(&token(1), NOW, 1800).await.unwrap().is_none(),
            "{}",
            backend.name
        );
        assert!(store.active_session(&token(2), NOW, 1800).await.unwrap().is_some());
        assert!(store.active_session(&token(101), NOW, 1800).await.unwrap().is_some());
        assert_eq!(listed[0].public_id, public_id("cap", 101), "newest first");
        assert_eq!(listed[99].public_id, public_id("cap", 2));
        assert_eq!(kinds_of(store, "cap", "session_evicted").await, 1, "{}", backend.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_factor_login_is_capped_like_a_password_login() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        // Session 200 (opened while enabling MFA) is the oldest of 100.
        user_with_mfa(store, "cam").await;
        for n in 1..=99u8 {
            store
                .insert_session(&session("cam", n, true), &event("cam", "login_succeeded", NOW))
                .await
                .unwrap();
        }
        store
            .insert_challenge(&token(250), "cam", NOW, NOW + 300, HASH, None, &event("cam", "x", NOW))
            .await
            .unwrap();
        let completed = store
            .complete_challenge(
                &token(250),
                SecondFactorProof::TotpStep(101),
                &session("cam", 150, true),
                &event("cam", "login_succeeded", NOW),
            )
            .await
            .unwrap();
        assert_eq!(completed, Consumed::Yes, "{}", backend.name);
        assert_eq!(store.list_sessions("cam", NOW, 1800).await.unwrap().len(), 100);
        assert!(
            store.active_session(&token(200), NOW, 1800).await.unwrap().is_none(),
            "{}",
            backend.name
        );
        assert!(store.active_session(&token(150), NOW, 1800).await.unwrap().is_some());
        assert_eq!(kinds_of(store, "cam", "session_evicted").await, 1, "{}", backend.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_right_totp_step_is_capped_like_a_password_login() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        let name = backend.name;
        // Session 200 (opened while enabling MFA) is the oldest of 100; an expired one goes
        // with the next login without counting as an eviction.
        user_with_mfa(store, "cat").await;
        let expired = SessionRecord {
            created_at: NOW - 7200,
            last_seen_at: NOW - 7200,
            expires_at: NOW - 3600,
            ..session("cat", 251, true)
        };
        store
            .insert_session(&expired, &event("cat", "login_succeeded", NOW))
            .await
            .unwrap();
        for n in 1..=99u8 {
            store
                .insert_session(&session("cat", n, true), &event("cat", "login_succeeded", NOW))
                .await
                .unwrap();
        }
        store
            .insert_challenge(&token(250), "cat", NOW, NOW + 300, HASH, None, &event("cat", "x", NOW))
            .await
            .unwrap();
        let before = kinds_of(store, "cat", "login_succeeded").await;
        let completed = store
            .complete_challenge_with_totp(
                &token(250),
                101,
                CODES,
                &session("cat", 150, true),
                &event("cat", "login_succeeded", NOW),
            )
            .await
            .unwrap();
        assert_eq!(completed, TotpCompletion::Completed, "{name}");
        let listed = store.list_sessions("cat", NOW, 1800).await.unwrap();
        assert_eq!(listed.len() as i64, MAX_SESSIONS_PER_USER, "{name}");
        assert_eq!(listed[0].public_id, public_id("cat", 150), "newest first ({name})");
        assert!(
            store.active_session(&token(200), NOW, 1800).await.unwrap().is_none(),
            "{name}"
        );
        assert!(
            store.active_session(&token(1), NOW, 1800).await.unwrap().is_some(),
            "{name}"
        );
        assert_eq!(kinds_of(store, "cat", "session_evicted").await, 1, "{name}");
        assert_eq!(kinds_of(store, "cat", "login_succeeded").await, before + 1, "{name}");
        // The expired session's row is gone, not merely hidden.
        let expired_left = store
            .active_session(&token(251), NOW - 7100, i64::MAX / 4)
            .await
            .unwrap();
        assert!(expired_left.is_none(), "{name}");
        let state = totp_state(store, "cat", 250).await;
        assert_eq!(
            (state.0, state.1),
            (false, Some(101)),
            "the mfa_token used, the step advanced ({name})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_totp_completion_is_all_or_nothing_and_writes_go_on() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        let name = backend.name;
        user_with_mfa(store, "abe").await;
        for n in 1..=6u8 {
            store
                .insert_challenge(&token(n), "abe", NOW, NOW + 300, HASH, None, &event("abe", "x", NOW))
                .await
                .unwrap();
        }
        // Requests abandoned after 0 to 400 microseconds: before, during or after the store's
        // work (on SQLite the batch may still be running on the writer's thread).
        for n in 1..=5u8 {
            let session = session("abe", 10 + n, true);
            let login = event("abe", "login_succeeded", NOW);
            let challenge = token(n);
            let completion =
                store.complete_challenge_with_totp(&challenge, 100 + i64::from(n), CODES, &session, &login);
            let wait = std::time::Duration::from_micros(100 * u64::from(n - 1));
            let _ = tokio::time::timeout(wait, completion).await;
        }
        // The writer goes on: the next completion succeeds...
        let done = store
            .complete_challenge_with_totp(
                &token(6),
                200,
                CODES,
                &session("abe", 16, true),
                &event("abe", "login_succeeded", NOW),
            )
            .await
            .unwrap();
        assert_eq!(done, TotpCompletion::Completed, "{name}");
        // ...and each abandoned one happened completely or not at all: its session exists
        // exactly when its `mfa_token` is gone.
        for n in 1..=5u8 {
            let opened = store.active_session(&token(10 + n), NOW, 1800).await.unwrap().is_some();
            let left = store.challenge_user(&token(n), NOW).await.unwrap().is_some();
            assert_ne!(opened, left, "completion {n} was half done ({name})");
        }
        assert_eq!(totp_state(store, "abe", 6).await.1, Some(200), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_moves_the_whole_write_ahead_log_into_the_database_file() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let (a, b) = (backend.a.as_ref(), backend.b.as_ref());
        let name = backend.name;
        user(a, "chk").await;
        for n in 1..=20u8 {
            a.insert_session(&session("chk", n, false), &event("chk", "login_succeeded", NOW))
                .await
                .unwrap();
        }
        // From the other instance's connections, as `tessera serve` runs it beside its writer.
        let (frames, done) = b.checkpoint().await.unwrap();
        if name == "sqlite" {
            assert!(frames > 0, "the writes are in the log ({name})");
            assert_eq!(done, frames, "all of the log is in the database file ({name})");
        } else {
            assert_eq!((frames, done), (0, 0), "PostgreSQL checkpoints by itself");
        }
        // Nothing was lost on the way.
        assert_eq!(b.list_sessions("chk", NOW, 1800).await.unwrap().len(), 20, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_logins_through_both_instances_never_exceed_the_cap() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user(backend.a.as_ref(), "par").await;
        for n in 1..=90u8 {
            backend
                .a
                .insert_session(&session("par", n, false), &event("par", "login_succeeded", NOW))
                .await
                .unwrap();
        }
        let results = race(&backend, 40, |store, i| async move {
            let n = 100 + u8::try_from(i).unwrap();
            store
                .insert_session(&session("par", n, false), &event("par", "login_succeeded", NOW))
                .await
        })
        .await;
        assert!(results.iter().all(Result::is_ok), "{}: {results:?}", backend.name);
        let listed = backend.a.list_sessions("par", NOW, 1800).await.unwrap();
        assert_eq!(listed.len(), 100, "{}", backend.name);
        // The 30 evicted are the oldest: sessions 1..=30.
        for n in 1..=30u8 {
            assert!(backend.b.active_session(&token(n), NOW, 1800).await.unwrap().is_none());
        }
        assert!(backend.b.active_session(&token(31), NOW, 1800).await.unwrap().is_some());
        assert_eq!(
            kinds_of(backend.a.as_ref(), "par", "session_evicted").await,
            30,
            "{}",
            backend.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_lists_only_their_own_live_sessions_newest_first() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user(store, "lu").await;
        user(store, "max").await;
        let idle = SessionRecord {
            created_at: NOW - 1900,
            last_seen_at: NOW - 1900,
            ..session("lu", 3, false)
        };
        let expired = SessionRecord {
            created_at: NOW - 7200,
            last_seen_at: NOW - 10,
            expires_at: NOW,
            ..session("lu", 4, false)
        };
        for record in [
            session("lu", 1, false),
            idle,
            session("lu", 2, true),
            expired,
            session("max", 9, false),
        ] {
            store
                .insert_session(&record, &event(&record.user_id, "login_succeeded", NOW))
                .await
                .unwrap();
        }
        let listed = backend.b.list_sessions("lu", NOW, 1800).await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|s| s.public_id.as_str()).collect();
        assert_eq!(ids, [public_id("lu", 2), public_id("lu", 1)], "{}", backend.name);
        let newest = &listed[0];
        assert_eq!(newest.token_hash, token(2));
        assert_eq!(newest.user_id, "lu");
        assert_eq!(newest.ip.as_deref(), Some("192.0.2.2"));
        assert_eq!(newest.user_agent.as_deref(), Some("agent 2"));
        assert!(newest.mfa);
        assert_eq!(
            (newest.created_at, newest.last_seen_at, newest.expires_at),
            (NOW, NOW, NOW + 3600)
        );
        // The session lookup carries the same details.
        let (found, _) = store.active_session(&token(1), NOW, 1800).await.unwrap().unwrap();
        assert_eq!(found.public_id, public_id("lu", 1));
        assert_eq!(found.ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(found.user_agent.as_deref(), Some("agent 1"));
        assert!(store.list_sessions("nobody", NOW, 1800).await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_is_ended_by_id_only_by_its_owner_and_only_once() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user(store, "ned").await;
        user(store, "ola").await;
        let idle = SessionRecord {
            created_at: NOW - 1900,
            last_seen_at: NOW - 1900,
            ..session("ned", 3, false)
        };
        for record in [
            session("ned", 1, false),
            session("ned", 2, false),
            idle,
            session("ola", 9, false),
        ] {
            store
                .insert_session(&record, &event(&record.user_id, "login_succeeded", NOW))
                .await
                .unwrap();
        }
        // Another user's id: nothing happens, nothing is recorded.
        let ended = store
            .delete_user_session(
                "ned",
                &public_id("ola", 9),
                NOW,
                1800,
                &event("ned", "session_revoked", NOW),
            )
            .await
            .unwrap();
        assert!(!ended, "{}", backend.name);
        assert!(store.active_session(&token(9), NOW, 1800).await.unwrap().is_some());
        // An idle (dead) session is not listed, so it cannot be ended either.
        assert!(
            !store
                .delete_user_session(
                    "ned",
                    &public_id("ned", 3),
                    NOW,
                    1800,
                    &event("ned", "session_revoked", NOW)
                )
                .await
                .unwrap()
        );
        assert_eq!(kinds_of(store, "ned", "session_revoked").await, 0);
        // Twenty requests through both instances end it once.
        let results = race(&backend, 20, |store, _| async move {
            store
                .delete_user_session(
                    "ned",
                    &public_id("ned", 1),
                    NOW,
                    1800,
                    &event("ned", "session_revoked", NOW),
                )
                .await
                .unwrap()
        })
        .await;
        assert_eq!(results.iter().filter(|ended| **ended).count(), 1, "{}", backend.name);
        assert!(store.active_session(&token(1), NOW, 1800).await.unwrap().is_none());
        assert!(store.active_session(&token(2), NOW, 1800).await.unwrap().is_some());
        assert_eq!(kinds_of(store, "ned", "session_revoked").await, 1, "{}", backend.name);
        assert_eq!(kinds_of(store, "ola", "session_revoked").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_the_other_sessions_keeps_the_callers_and_counts_the_live_ones() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user(store, "pia").await;
        user(store, "quy").await;
        let idle = SessionRecord {
            created_at: NOW - 1900,
            last_seen_at: NOW - 1900,
            ..session("pia", 4, false)
        };
        for record in [
            session("pia", 1, false),
            session("pia", 2, false),
            session("pia", 3, true),
            idle,
            session("quy", 9, false),
        ] {
            store
                .insert_session(&record, &event(&record.user_id, "login_succeeded", NOW))
                .await
                .unwrap();
        }
        store
            .insert_challenge(&token(50), "pia", NOW, NOW + 300, HASH, None, &event("pia", "x", NOW))
            .await
            .unwrap();
        let revoked = backend
            .b
            .revoke_other_sessions(
                "pia",
                &token(1),
                NOW,
                1800,
                &event("pia", "other_sessions_revoked", NOW),
            )
            .await
            .unwrap();
        assert_eq!(revoked, 2, "{}: the idle one is deleted but not counted", backend.name);
        let listed = store.list_sessions("pia", NOW, 1800).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].token_hash, token(1));
        assert!(
            store.challenge_user(&token(50), NOW).await.unwrap().is_none(),
            "pending mfa_token ended"
        );
        assert!(
            store.active_session(&token(9), NOW, 1800).await.unwrap().is_some(),
            "other users untouched"
        );
        assert_eq!(kinds_of(store, "pia", "other_sessions_revoked").await, 1);
        let again = store
            .revoke_other_sessions(
                "pia",
                &token(1),
                NOW,
                1800,
                &event("pia", "other_sessions_revoked", NOW),
            )
            .await
            .unwrap();
        assert_eq!(again, 0);
        assert!(store.active_session(&token(1), NOW, 1800).await.unwrap().is_some());
    }
}

/// Sessions that exist when migration 0005 runs get a distinct random UUID each and a creation
/// order, keep working, and later logins number on from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_opened_before_the_session_details_migration_get_ids_and_keep_working() {
    let _shared = CLUSTER.read().await;
    let before: &[(&str, u8, i64)] = &[
        ("old", 1, NOW - 20),
        ("old", 2, NOW - 30),
        ("old", 3, NOW - 10),
        ("eve", 4, NOW),
    ];
    let mut stores: Vec<Backend> = Vec::new();
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.db");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        tessera::store::sqlite::MIGRATOR.run_to(4, &pool).await.unwrap();
        for user in ["old", "eve"] {
            sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES (?, ?, 'x', 0)")
                .bind(user)
                .bind(format!("{user}@example.com"))
                .execute(&pool)
                .await
                .unwrap();
        }
        for (user, n, created_at) in before {
            sqlx::query(
                "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, expires_at, mfa) \
                 VALUES (?, ?, ?, ?, ?, 0)",
            )
            .bind(&token(*n).0[..])
            .bind(*user)
            .bind(created_at)
            .bind(NOW)
            .bind(NOW + 3600)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_file(&path).await.unwrap());
        stores.push(Backend {
            name: "sqlite",
            a: store.clone(),
            b: store,
            _dir: Some(dir),
            _database: None,
        });
    }
    if postgres_url().is_some() {
        let database = TestDatabase::create().await;
        let pool = database.pool().await;
        tessera::store::postgres::MIGRATOR.run_to(4, &pool).await.unwrap();
        for user in ["old", "eve"] {
            sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, 'x', 0)")
                .bind(user)
                .bind(format!("{user}@example.com"))
                .execute(&pool)
                .await
                .unwrap();
        }
        for (user, n, created_at) in before {
            sqlx::query(
                "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, expires_at, mfa) \
                 VALUES ($1, $2, $3, $4, $5, false)",
            )
            .bind(&token(*n).0[..])
            .bind(*user)
            .bind(created_at)
            .bind(NOW)
            .bind(NOW + 3600)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(&database.url, PgSettings::default()).await.unwrap());
        stores.push(Backend {
            name: "postgres",
            a: store.clone(),
            b: store,
            _dir: None,
            _database: Some(database),
        });
    }
    for backend in stores {
        let (name, store) = (backend.name, backend.a.as_ref());
        store.migrate().await.unwrap();
        let listed = store.list_sessions("old", NOW, 1800).await.unwrap();
        let order: Vec<TokenHash> = listed.iter().map(|s| s.token_hash).collect();
        assert_eq!(
            order,
            [token(3), token(1), token(2)],
            "{name}: newest first by creation"
        );
        let mut ids: Vec<String> = listed.iter().map(|s| s.public_id.clone()).collect();
        ids.push(
            store.list_sessions("eve", NOW, 1800).await.unwrap()[0]
                .public_id
                .clone(),
        );
        for id in &ids {
            let parsed = uuid::Uuid::try_parse(id).unwrap_or_else(|_| panic!("{name}: {id}"));
            assert_eq!(parsed.get_version_num(), 4, "{name}: {id}");
            assert_eq!(&parsed.hyphenated().to_string(), id, "{name}: lower-case hyphenated");
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4, "{name}: distinct ids");
        assert!(listed.iter().all(|s| s.ip.is_none() && s.user_agent.is_none()));
        assert!(store.active_session(&token(1), NOW, 1800).await.unwrap().is_some());
        // A new login is the newest, and ending an old session by its new id works.
        store
            .insert_session(&session("old", 5, false), &event("old", "login_succeeded", NOW))
            .await
            .unwrap();
        let listed = store.list_sessions("old", NOW, 1800).await.unwrap();
        assert_eq!(listed[0].token_hash, token(5), "{name}");
        let oldest = listed.last().unwrap().public_id.clone();
        assert!(
            store
                .delete_user_session("old", &oldest, NOW, 1800, &event("old", "session_revoked", NOW))
                .await
                .unwrap()
        );
        assert!(
            store.active_session(&token(2), NOW, 1800).await.unwrap().is_none(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_pool_status_counts_open_connections_and_none_after_close() {
    let _cluster = CLUSTER.read().await;
    for backend in backends().await {
        let (name, store) = (backend.name, backend.a.clone());
        store.ping().await.unwrap();
        let open = store.pool_status();
        assert!(open.size >= 1, "{name}: a query opened a connection: {open:?}");
        assert!(open.idle <= open.size, "{name}: {open:?}");
        assert_eq!(open.in_use(), open.size - open.idle, "{name}");
        store.close().await;
        let closed = store.pool_status();
        assert_eq!(
            (closed.size, closed.idle, closed.in_use()),
            (0, 0, 0),
            "{name}: {closed:?}"
        );
    }
}
// ---------------------------------------------------------------- dead webhook events, housekeeping

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_event_moves_the_cursor_past_it_and_is_queued_for_redelivery_once() {
    // It reads the outbox (see the lease test): no racing writers meanwhile.
    let _alone = CLUSTER.write().await;
    for backend in backends().await {
        let name = backend.name;
        let (a, b) = (backend.a.as_ref(), backend.b.as_ref());
        user(a, "dee").await;
        let start = a.webhook_cursor().await.unwrap();
        a.insert_event(&event("dee", "login_failed", NOW)).await.unwrap();
        a.insert_event(&event("dee", "login_failed", NOW + 1)).await.unwrap();
        let events = outbox(b, start, 2).await;
        assert!(
            !b.bury_webhook_event("B", &events[0], 10, "HTTP 503", NOW)
                .await
                .unwrap(),
            "{name}: not the lease holder"
        );
        assert!(a.dead_webhook_events(false, 10).await.unwrap().is_empty(), "{name}");
        assert_eq!(a.webhook_cursor().await.unwrap(), start, "{name}: nothing written");

        assert!(a.acquire_webhook_lease("A", NOW, 30).await.unwrap());
        assert!(
            a.bury_webhook_event("A", &events[0], 10, "HTTP 503", NOW)
                .await
                .unwrap()
        );
        assert_eq!(b.webhook_cursor().await.unwrap(), events[0].position, "{name}");
        let dead = b.dead_webhook_events(false, 10).await.unwrap();
        assert_eq!(dead.len(), 1, "{name}");
        assert_eq!(dead[0].event.id, events[0].id);
        assert_eq!(dead[0].event.record.kind, "login_failed");
        assert_eq!(
            (
                dead[0].attempts,
                dead[0].last_error.as_str(),
                dead[0].dead_at,
                dead[0].requeued_at
            ),
            (10, "HTTP 503", NOW, None)
        );
        assert_eq!(
            b.webhook_backlog().await.unwrap(),
            WebhookBacklog { pending: 1, dead: 1 },
            "{name}"
        );
        assert_eq!(
            outbox(b, events[0].position, 1).await[0].id,
            events[1].id,
            "the next event is no longer held back"
        );

        assert_eq!(
            b.requeue_dead_event(events[0].id, NOW + 5).await.unwrap(),
            Redelivery::Queued
        );
        assert_eq!(
            b.requeue_dead_event(events[0].id, NOW + 6).await.unwrap(),
            Redelivery::AlreadyQueued
        );
        assert_eq!(
            b.requeue_dead_event(events[1].id, NOW).await.unwrap(),
            Redelivery::NotDead
        );
        assert_eq!(
            b.requeue_dead_event(987_654_321, NOW).await.unwrap(),
            Redelivery::Unknown
        );
        let queued = a.dead_webhook_events(true, 10).await.unwrap();
        assert_eq!(queued.len(), 1, "{name}");
        assert_eq!(queued[0].requeued_at, Some(NOW + 5), "the first request's time");
        assert_eq!(
            a.webhook_backlog().await.unwrap(),
            WebhookBacklog { pending: 2, dead: 0 }
        );

        // The redelivery fails again: dead again, with the attempts added up; the cursor stays.
        assert!(!b.settle_redelivery("B", events[0].id).await.unwrap(), "not the holder");
        assert!(
            a.bury_webhook_event("A", &events[0], 13, "HTTP 500", NOW + 60)
                .await
                .unwrap()
        );
        assert_eq!(a.webhook_cursor().await.unwrap(), events[0].position, "{name}");
        let dead = a.dead_webhook_events(false, 10).await.unwrap();
        assert_eq!(
            (
                dead[0].attempts,
                dead[0].last_error.as_str(),
                dead[0].dead_at,
                dead[0].requeued_at
            ),
            (13, "HTTP 500", NOW + 60, None)
        );
        assert!(a.dead_webhook_events(true, 10).await.unwrap().is_empty());

        // Queued again and delivered this time: the row goes.
        assert_eq!(
            a.requeue_dead_event(events[0].id, NOW + 70).await.unwrap(),
            Redelivery::Queued
        );
        assert!(a.settle_redelivery("A", events[0].id).await.unwrap());
        assert!(b.dead_webhook_events(false, 10).await.unwrap().is_empty(), "{name}");
        assert_eq!(
            a.requeue_dead_event(events[0].id, NOW).await.unwrap(),
            Redelivery::NotDead
        );

        // A graceful stop releases the lease: another instance takes it at once.
        b.release_webhook_lease("B").await.unwrap();
        assert!(
            !b.acquire_webhook_lease("B", NOW + 1, 30).await.unwrap(),
            "only the holder releases"
        );
        a.release_webhook_lease("A").await.unwrap();
        assert!(b.acquire_webhook_lease("B", NOW + 1, 30).await.unwrap(), "{name}");
    }
}

fn housekeeping_at(
    now: i64,
    keep_undelivered_events: bool,
) -> (tessera::clock::ManualClock, tessera::housekeeping::HousekeepingConfig) {
    let clock = tessera::clock::ManualClock::new(time::OffsetDateTime::from_unix_timestamp(now).unwrap());
    let config = tessera::housekeeping::HousekeepingConfig {
        interval: std::time::Duration::from_secs(300),
        event_retention_days: 400,
        session_idle_secs: 1800,
        keep_undelivered_events,
    };
    (clock, config)
}

/// A session of user number `user` with a token and public id of its own.
fn numbered_session(user: u8, n: u8, created_at: i64, expires_at: i64) -> SessionRecord {
    let mut hash = [0u8; 32];
    hash[0] = 0xA0 + user;
    hash[1] = n;
    SessionRecord {
        token_hash: TokenHash(hash),
        public_id: format!("{user:08x}-0000-4000-8000-{n:012x}"),
        user_id: format!("sweep{user}"),
        created_at,
        last_seen_at: created_at,
        expires_at,
        mfa: false,
        ip: None,
        user_agent: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sweep_deletes_expired_sessions_tokens_and_setups_in_batches_and_keeps_live_ones() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let name = backend.name;
        let store = backend.a.as_ref();
        // 1,200 sessions that expire at NOW + 3600: more than two batches of 500.
        for u in 0..12u8 {
            let id = format!("sweep{u}");
            user(store, &id).await;
            for n in 0..100u8 {
                store
                    .insert_session(
                        &numbered_session(u, n, NOW, NOW + 3600),
                        &event(&id, "login_succeeded", NOW),
                    )
                    .await
                    .unwrap();
            }
        }
        // Live at NOW + 3600: one active session; one session idle since NOW is not.
        user(store, "sweep12").await;
        let live = numbered_session(12, 0, NOW + 3000, NOW + 7200);
        store.insert_session(&live, &event("sweep12", "x", NOW)).await.unwrap();
        let idle = numbered_session(12, 1, NOW, NOW + 7200);
        store.insert_session(&idle, &event("sweep12", "x", NOW)).await.unwrap();
        // An expired and a live mfa_token (the MFA user's own session expires at NOW + 3600 too).
        user_with_mfa(store, "cha").await;
        for (n, expires_at) in [(1, NOW + 300), (2, NOW + 7200)] {
            store
                .insert_challenge(&token(n), "cha", NOW, expires_at, HASH, None, &event("cha", "x", NOW))
                .await
                .unwrap();
        }
        // An expired and a live pending setup, each kept by a live session.
        for (u, expires_at) in [(13u8, NOW + 600), (14, NOW + 7200)] {
            let id = format!("sweep{u}");
            user(store, &id).await;
            let keep = numbered_session(u, 0, NOW + 3000, NOW + 7200);
            store.insert_session(&keep, &event(&id, "x", NOW)).await.unwrap();
            let setup = PendingSetupRecord {
                sealed_secret: vec![u; 48],
                created_at: NOW,
                expires_at,
            };
            let put = store
                .put_pending_setup(&id, &setup, &keep.token_hash, &event(&id, "x", NOW))
                .await
                .unwrap();
            assert_eq!(put, Consumed::Yes, "{name}");
        }

        let (clock, config) = housekeeping_at(NOW + 3600, false);
        let report = tessera::housekeeping::sweep(store, &clock, &config, None)
            .await
            .unwrap();
        assert_eq!(
            (report.sessions, report.mfa_tokens, report.pending_setups),
            (1200 + 1 + 1, 1, 1),
            "{name}: expired sessions, the idle one and the MFA user's; one token; one setup"
        );
        for u in 0..12u8 {
            // Had they survived, these would be listed: they were live at NOW + 10.
            let left = store.list_sessions(&format!("sweep{u}"), NOW + 10, 1800).await.unwrap();
            assert!(left.is_empty(), "{name}: sweep{u} keeps {} sessions", left.len());
        }
        let kept = store.list_sessions("sweep12", NOW + 3600, 1800).await.unwrap();
        assert_eq!(kept.len(), 1, "{name}");
        assert_eq!(kept[0].public_id, live.public_id);
        assert!(
            store.list_sessions("sweep12", NOW + 10, 1800).await.unwrap().len() == 1,
            "the idle one is gone"
        );
        assert!(store.challenge_user(&token(1), NOW).await.unwrap().is_none(), "{name}");
        assert_eq!(
            store.challenge_user(&token(2), NOW + 3600).await.unwrap().as_deref(),
            Some("cha")
        );
        assert!(store.pending_setup("sweep13", NOW).await.unwrap().is_none(), "{name}");
        assert!(
            store.pending_setup("sweep14", NOW + 3600).await.unwrap().is_some(),
            "{name}"
        );

        let again = tessera::housekeeping::sweep(store, &clock, &config, None)
            .await
            .unwrap();
        assert_eq!(
            again,
            tessera::housekeeping::SweepReport::default(),
            "{name}: nothing left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_events_go_after_the_retention_unless_the_webhook_has_not_delivered_them() {
    // It reads the outbox (see the lease test): no racing writers meanwhile.
    let _alone = CLUSTER.write().await;
    const DAY: i64 = 86_400;
    for backend in backends().await {
        let name = backend.name;
        let store = backend.a.as_ref();
        user(store, "eve").await;
        let (clock, with_webhook) = housekeeping_at(NOW, true);
        let (_, without_webhook) = housekeeping_at(NOW, false);
        let start = store.webhook_cursor().await.unwrap();
        for kind in ["old_delivered", "old_dead", "old_pending"] {
            store.insert_event(&event("eve", kind, NOW - 401 * DAY)).await.unwrap();
        }
        store
            .insert_event(&event("eve", "recent", NOW - 399 * DAY))
            .await
            .unwrap();
        let events = outbox(store, start, 4).await;
        assert!(store.acquire_webhook_lease("A", NOW, 30).await.unwrap());
        assert!(store.set_webhook_cursor("A", events[0].position).await.unwrap());
        assert!(
            store
                .bury_webhook_event("A", &events[1], 10, "HTTP 503", NOW)
                .await
                .unwrap()
        );

        let kinds = || async {
            let mut kinds: Vec<String> = store
                .list_events("eve", 100)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.kind)
                .collect();
            kinds.sort();
            kinds
        };
        let report = tessera::housekeeping::sweep(store, &clock, &with_webhook, None)
            .await
            .unwrap();
        assert_eq!(report.security_events, 1, "{name}");
        assert_eq!(
            kinds().await,
            ["old_dead", "old_pending", "recent", "user_registered"],
            "{name}: only the delivered old event went"
        );
        // Without a webhook, age alone decides (the dead event's row goes with it).
        let report = tessera::housekeeping::sweep(store, &clock, &without_webhook, None)
            .await
            .unwrap();
        assert_eq!(report.security_events, 2, "{name}");
        assert_eq!(kinds().await, ["recent", "user_registered"], "{name}");
        assert!(store.dead_webhook_events(false, 10).await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_webhook_but_no_cursor_yet_no_event_is_deleted() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user(store, "ivy").await;
        store
            .insert_event(&event("ivy", "ancient", NOW - 1000 * 86_400))
            .await
            .unwrap();
        let (clock, config) = housekeeping_at(NOW, true);
        let report = tessera::housekeeping::sweep(store, &clock, &config, None)
            .await
            .unwrap();
        assert_eq!(report.security_events, 0, "{}", backend.name);
        assert_eq!(store.list_events("ivy", 10).await.unwrap().len(), 2);
    }
}

// ---- operator commands (`tessera user set-password|revoke-sessions|unlock|delete`) ----

fn lock_at_once(_failures: u32) -> i64 {
    60
}

/// A policy that locks after the first counted failure, for 60 s.
const LOCK_AT_ONCE: LockPolicy = LockPolicy {
    lock_secs: lock_at_once,
    max_secs: 900,
};

/// Locks both throttles of `user_id` (one failure each, each locked for 60 s).
async fn lock_both(store: &dyn Store, user_id: &str) {
    for kind in [AttemptKind::SecondFactor, AttemptKind::Password { network: None }] {
        store.reserve_attempt(user_id, kind, NOW, LOCK_AT_ONCE).await.unwrap();
        assert_eq!(
            store.reserve_attempt(user_id, kind, NOW, LOCK_AT_ONCE).await.unwrap(),
            AttemptReservation::Locked { until: NOW + 60 }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_password_revokes_every_session_and_login_and_clears_both_throttles() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user_with_mfa(store, "opa").await;
        store
            .insert_session(&session("opa", 3, true), &event("opa", "login_succeeded", NOW))
            .await
            .unwrap();
        store
            .insert_challenge(&token(4), "opa", NOW, NOW + 300, HASH, None, &event("opa", "x", NOW))
            .await
            .unwrap();
        lock_both(store, "opa").await;

        let set = backend
            .b
            .operator_set_password("opa", "$argon2id$new", &event("opa", "password_set_by_operator", NOW))
            .await
            .unwrap();
        assert!(set, "{}", backend.name);

        let after = store.user_by_id("opa").await.unwrap().unwrap();
        assert_eq!(after.password_hash, "$argon2id$new");
        assert_eq!(after.throttle, ThrottleRecord::default(), "{}", backend.name);
        assert_eq!(after.password_throttle, ThrottleRecord::default(), "{}", backend.name);
        assert!(after.mfa.is_some(), "MFA stays on");
        for n in [3, 200] {
            assert!(store.active_session(&token(n), NOW, 1800).await.unwrap().is_none());
        }
        assert_eq!(store.challenge_user(&token(4), NOW).await.unwrap(), None);
        assert_eq!(kinds_of(store, "opa", "password_set_by_operator").await, 1);

        let unknown = store
            .operator_set_password(
                "nobody",
                "$argon2id$x",
                &event("nobody", "password_set_by_operator", NOW),
            )
            .await
            .unwrap();
        assert!(!unknown, "{}", backend.name);
        assert_eq!(
            kinds_of(store, "nobody", "password_set_by_operator").await,
            0,
            "no event"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_all_sessions_ends_every_session_and_pending_login_and_counts_them() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user_with_mfa(store, "orv").await;
        user(store, "other").await;
        for n in [1, 2, 3] {
            store
                .insert_session(&session("orv", n, false), &event("orv", "login_succeeded", NOW))
                .await
                .unwrap();
        }
        store
            .insert_session(&session("other", 9, false), &event("other", "login_succeeded", NOW))
            .await
            .unwrap();
        store
            .insert_challenge(&token(5), "orv", NOW, NOW + 300, HASH, None, &event("orv", "x", NOW))
            .await
            .unwrap();

        let revoked = backend
            .b
            .operator_revoke_sessions("orv", &event("orv", "sessions_revoked_by_operator", NOW))
            .await
            .unwrap()
            .expect("the account exists");
        // Session 200 is the one `user_with_mfa` logged in with.
        assert_eq!(
            revoked,
            RevokedSessions {
                sessions: 4,
                challenges: 1
            },
            "{}",
            backend.name
        );
        for n in [1, 2, 3, 200] {
            assert!(store.active_session(&token(n), NOW, 1800).await.unwrap().is_none());
        }
        assert!(
            store.active_session(&token(9), NOW, 1800).await.unwrap().is_some(),
            "another account's session stays"
        );
        assert_eq!(store.challenge_user(&token(5), NOW).await.unwrap(), None);
        assert_eq!(kinds_of(store, "orv", "sessions_revoked_by_operator").await, 1);

        let again = store
            .operator_revoke_sessions("orv", &event("orv", "sessions_revoked_by_operator", NOW))
            .await
            .unwrap();
        assert_eq!(again, Some(RevokedSessions::default()), "{}", backend.name);
        let unknown = store
            .operator_revoke_sessions("nobody", &event("nobody", "sessions_revoked_by_operator", NOW))
            .await
            .unwrap();
        assert_eq!(unknown, None);
        assert_eq!(kinds_of(store, "nobody", "sessions_revoked_by_operator").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlocking_clears_both_throttles_and_lifts_a_totp_suspension_only_when_asked() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user_with_mfa(store, "oul").await;
        lock_both(store, "oul").await;
        assert!(
            store
                .suspend_totp("oul", &event("oul", "mfa_totp_suspended", NOW))
                .await
                .unwrap()
        );

        let unlocked = backend
            .b
            .operator_unlock("oul", false, &event("oul", "account_unlocked_by_operator", NOW))
            .await
            .unwrap();
        assert!(unlocked);
        let after = store.user_by_id("oul").await.unwrap().unwrap();
        assert_eq!(after.throttle, ThrottleRecord::default(), "{}", backend.name);
        assert_eq!(after.password_throttle, ThrottleRecord::default(), "{}", backend.name);
        assert_eq!(after.mfa.unwrap().totp_suspended_at, Some(NOW), "the suspension stays");
        assert_eq!(
            store
                .reserve_attempt("oul", AttemptKind::SecondFactor, NOW, LOCK_AT_ONCE)
                .await
                .unwrap(),
            AttemptReservation::Granted { failures: 1 },
            "an attempt is evaluated again"
        );

        assert!(
            store
                .operator_unlock("oul", true, &event("oul", "account_unlocked_by_operator", NOW))
                .await
                .unwrap()
        );
        let lifted = store.user_by_id("oul").await.unwrap().unwrap();
        assert_eq!(lifted.mfa.unwrap().totp_suspended_at, None, "{}", backend.name);
        assert_eq!(kinds_of(store, "oul", "account_unlocked_by_operator").await, 2);

        let unknown = store
            .operator_unlock("nobody", true, &event("nobody", "account_unlocked_by_operator", NOW))
            .await
            .unwrap();
        assert!(!unknown);
        assert_eq!(kinds_of(store, "nobody", "account_unlocked_by_operator").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_an_account_removes_everything_it_owns_but_keeps_its_events() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let store = backend.a.as_ref();
        user_with_mfa(store, "odl").await;
        store
            .insert_challenge(&token(6), "odl", NOW, NOW + 300, HASH, None, &event("odl", "x", NOW))
            .await
            .unwrap();
        // An account with a pending setup (MFA off) and a session.
        user(store, "opd").await;
        store
            .insert_session(&session("opd", 7, false), &event("opd", "login_succeeded", NOW))
            .await
            .unwrap();
        let setup = PendingSetupRecord {
            sealed_secret: vec![8; 48],
            created_at: NOW,
            expires_at: NOW + 600,
        };
        let put = store
            .put_pending_setup("opd", &setup, &token(7), &event("opd", "mfa_setup_started", NOW))
            .await
            .unwrap();
        assert_eq!(put, Consumed::Yes);
        user(store, "keep").await;
        store
            .insert_session(&session("keep", 8, false), &event("keep", "login_succeeded", NOW))
            .await
            .unwrap();

        for id in ["odl", "opd"] {
            let deleted = backend
                .b
                .operator_delete_user(id, &event(id, "user_deleted", NOW + 1))
                .await
                .unwrap();
            assert!(deleted, "{}: {id}", backend.name);
            assert!(store.user_by_id(id).await.unwrap().is_none());
            assert!(
                store
                    .user_by_email(&format!("{id}@example.com"))
                    .await
                    .unwrap()
                    .is_none()
            );
            assert_eq!(store.backup_codes_remaining(id).await.unwrap(), 0);
            assert!(store.pending_setup(id, NOW).await.unwrap().is_none());
            // The audit trail stays, ending with the deletion.
            let events = store.list_events(id, 50).await.unwrap();
            assert_eq!(events[0].kind, "user_deleted", "{}: {events:?}", backend.name);
            assert!(events.iter().any(|e| e.kind == "user_registered"));
        }
        for n in [6, 7, 200] {
            assert!(store.active_session(&token(n), NOW, 1800).await.unwrap().is_none());
        }
        assert_eq!(store.challenge_user(&token(6), NOW).await.unwrap(), None);
        assert!(
            store.any_sealed_secret().await.unwrap().is_none(),
            "no sealed secret is left"
        );
        assert!(store.user_by_id("keep").await.unwrap().is_some(), "other accounts stay");
        assert!(store.active_session(&token(8), NOW, 1800).await.unwrap().is_some());
        let ids: Vec<String> = store.list_users().await.unwrap().into_iter().map(|u| u.id).collect();
        assert_eq!(ids, ["keep"]);

        // The email is free again; a second delete finds nothing and writes nothing.
        store
            .insert_user(
                &NewUser {
                    id: "odl-again".into(),
                    email: "odl@example.com".into(),
                    password_hash: HASH.into(),
                    created_at: NOW,
                },
                &event("odl-again", "user_registered", NOW),
            )
            .await
            .unwrap();
        assert!(
            !store
                .operator_delete_user("nobody", &event("nobody", "user_deleted", NOW))
                .await
                .unwrap()
        );
        assert_eq!(kinds_of(store, "nobody", "user_deleted").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_recorded_before_migration_6_survive_it_in_order_and_outlive_their_account() {
    let _shared = CLUSTER.read().await;
    // SQLite rebuilds the table: ids, order and the AUTOINCREMENT sequence must survive (an id
    // is never handed out twice, even the one of a deleted last row).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    tessera::store::sqlite::MIGRATOR.run_to(5, &pool).await.unwrap();
    sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES ('mig', 'mig@example.com', 'x', 0)")
        .execute(&pool)
        .await
        .unwrap();
    for kind in ["first", "second", "third"] {
        sqlx::query("INSERT INTO security_events (user_id, kind, at) VALUES ('mig', ?, 0)")
            .bind(kind)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("DELETE FROM security_events WHERE kind = 'third'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = SqliteStore::open_file(&path).await.unwrap();
    store.migrate().await.unwrap();
    store.insert_event(&event("mig", "after", NOW)).await.unwrap();
    let outbox = store.events_after(OutboxPosition::default(), 10).await.unwrap();
    let ids: Vec<(i64, &str)> = outbox.iter().map(|e| (e.id, e.record.kind.as_str())).collect();
    assert_eq!(ids, [(1, "first"), (2, "second"), (4, "after")], "id 3 is not reused");
    assert!(
        store
            .operator_delete_user("mig", &event("mig", "user_deleted", NOW))
            .await
            .unwrap()
    );
    let kinds: Vec<String> = store
        .list_events("mig", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["user_deleted", "after", "second", "first"]);

    if postgres_url().is_some() {
        let database = TestDatabase::create().await;
        let pool = database.pool().await;
        tessera::store::postgres::MIGRATOR.run_to(5, &pool).await.unwrap();
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, created_at) VALUES ('mig', 'mig@example.com', 'x', 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO security_events (user_id, kind, at) VALUES ('mig', 'first', 0)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let store = PgStore::connect(&database.url, PgSettings::default()).await.unwrap();
        store.migrate().await.unwrap();
        assert!(
            store
                .operator_delete_user("mig", &event("mig", "user_deleted", NOW))
                .await
                .unwrap()
        );
        let kinds: Vec<String> = store
            .list_events("mig", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["user_deleted", "first"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_racing_a_deletion_leave_no_session_behind() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user(backend.a.as_ref(), "gone").await;
        let results = race(&backend, 12, |store, i| async move {
            if i == 0 {
                store
                    .operator_delete_user("gone", &event("gone", "user_deleted", NOW))
                    .await
                    .map(|_| ())
            } else {
                let n = u8::try_from(i).unwrap();
                store
                    .insert_session(&session("gone", n, false), &event("gone", "login_succeeded", NOW))
                    .await
            }
        })
        .await;
        assert!(results[0].is_ok(), "{}: {:?}", backend.name, results[0]);
        assert!(backend.a.user_by_id("gone").await.unwrap().is_none());
        for n in 1..12u8 {
            assert!(
                backend.b.active_session(&token(n), NOW, 1800).await.unwrap().is_none(),
                "{}: session {n} outlived its account",
                backend.name
            );
        }
    }
}

// ---- the second login step with a right TOTP code, in one change ----

/// Whether `user_id` still has the challenge `n`, its step, failures and lock, and its sessions.
async fn totp_state(store: &dyn Store, user_id: &str, n: u8) -> (bool, Option<i64>, u32, Option<i64>, usize) {
    let user = store.user_by_id(user_id).await.unwrap().unwrap();
    (
        store.challenge_user(&token(n), NOW).await.unwrap().is_some(),
        user.mfa.unwrap().last_step,
        user.throttle.failures,
        user.throttle.locked_until,
        store.list_sessions(user_id, NOW, 1800).await.unwrap().len(),
    )
}

/// `complete_challenge_with_totp` of gus's challenge `n` with `step`, at `at`.
async fn complete(store: &dyn Store, n: u8, step: i64, at: i64) -> TotpCompletion {
    let session = SessionRecord {
        created_at: at,
        last_seen_at: at,
        ..session("gus", 10 + n, true)
    };
    store
        .complete_challenge_with_totp(&token(n), step, CODES, &session, &event("gus", "login_succeeded", at))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_right_totp_step_completes_the_login_only_while_unlocked_unsuspended_and_newer() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let (a, b) = (backend.a.as_ref(), backend.b.as_ref());
        let name = backend.name;
        user_with_mfa(a, "gus").await;
        a.insert_challenge(&token(1), "gus", NOW, NOW + 300, HASH, None, &event("gus", "x", NOW))
            .await
            .unwrap();
        // One read: the challenge's user, while the challenge is valid.
        let read = b.challenge_user_record(&token(1), NOW).await.unwrap().unwrap();
        assert_eq!(
            (read.id.as_str(), read.mfa.unwrap().last_step),
            ("gus", Some(100)),
            "{name}"
        );
        assert!(
            b.challenge_user_record(&token(1), NOW + 300).await.unwrap().is_none(),
            "{name}"
        );
        assert!(
            b.challenge_user_record(&token(9), NOW).await.unwrap().is_none(),
            "{name}"
        );
        let sessions = totp_state(a, "gus", 1).await.4;
        // Locked: refused with the lock's end, and nothing changes.
        a.reserve_attempt("gus", AttemptKind::SecondFactor, NOW, LOCK_AT_ONCE)
            .await
            .unwrap();
        assert_eq!(
            complete(b, 1, 101, NOW).await,
            TotpCompletion::Locked { until: NOW + 60 },
            "{name}"
        );
        assert_eq!(
            totp_state(a, "gus", 1).await,
            (true, Some(100), 1, Some(NOW + 60), sessions),
            "{name}"
        );
        // A lock longer than the policy's maximum (a clock gone back) is not honoured.
        assert_eq!(complete(b, 1, 100, NOW - 900).await, TotpCompletion::Rejected, "{name}");
        // Unlocked but a replayed step: refused, nothing changes.
        assert_eq!(complete(b, 1, 100, NOW + 60).await, TotpCompletion::Rejected, "{name}");
        assert_eq!(
            totp_state(a, "gus", 1).await,
            (true, Some(100), 1, Some(NOW + 60), sessions),
            "{name}"
        );
        // A newer step: the step advances, the throttle resets, the challenge is used, and the
        // session and its event exist.
        assert_eq!(complete(b, 1, 101, NOW + 60).await, TotpCompletion::Completed, "{name}");
        assert_eq!(
            totp_state(a, "gus", 1).await,
            (false, Some(101), 0, None, sessions + 1),
            "{name}"
        );
        assert!(a.active_session(&token(11), NOW + 60, 1800).await.unwrap().is_some());
        assert_eq!(kinds_of(a, "gus", "login_succeeded").await, 2, "{name}");
        // The used challenge opens nothing more, even with a newer step.
        assert_eq!(complete(a, 1, 102, NOW + 60).await, TotpCompletion::Rejected, "{name}");
        assert_eq!(totp_state(a, "gus", 1).await.1, Some(101), "{name}");
        // A newer step on a valid challenge of an account whose TOTP codes are suspended.
        a.insert_challenge(&token(2), "gus", NOW, NOW + 300, HASH, None, &event("gus", "x", NOW))
            .await
            .unwrap();
        assert!(
            a.suspend_totp("gus", &event("gus", "mfa_totp_suspended", NOW))
                .await
                .unwrap()
        );
        assert_eq!(complete(b, 2, 103, NOW + 60).await, TotpCompletion::Rejected, "{name}");
        assert_eq!(
            totp_state(a, "gus", 2).await,
            (true, Some(101), 0, None, sessions + 1),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_right_totp_step_on_many_challenges_at_once_opens_one_session() {
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        user_with_mfa(backend.a.as_ref(), "hal").await;
        for n in 0..20u8 {
            backend
                .a
                .insert_challenge(
                    &token(100 + n),
                    "hal",
                    NOW,
                    NOW + 300,
                    HASH,
                    None,
                    &event("hal", "x", NOW),
                )
                .await
                .unwrap();
        }
        let before = backend.a.list_sessions("hal", NOW, 1800).await.unwrap().len();
        let results = race(&backend, 20, |store, i| async move {
            let n = u8::try_from(i).unwrap();
            store
                .complete_challenge_with_totp(
                    &token(100 + n),
                    101,
                    CODES,
                    &session("hal", 10 + n, true),
                    &event("hal", "login_succeeded", NOW),
                )
                .await
                .unwrap()
        })
        .await;
        let won = results.iter().filter(|r| **r == TotpCompletion::Completed).count();
        assert_eq!(won, 1, "{}: {results:?}", backend.name);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, TotpCompletion::Completed | TotpCompletion::Rejected))
        );
        let after = backend.b.list_sessions("hal", NOW, 1800).await.unwrap().len();
        assert_eq!(after, before + 1, "{}", backend.name);
        let left = challenges_left(&backend, 20).await;
        assert_eq!(left, 19, "only the winner's challenge is used ({})", backend.name);
    }
}

/// Second steps of many users at once (on SQLite they share transactions: the group commit,
/// several steps to one query): a step whose `mfa_token` is gone fails after its `UPDATE`
/// already advanced the step, a replayed step fails at its first statement; each must leave no
/// trace, while the others in the same transaction (and the same query) complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_steps_of_many_users_at_once_complete_or_fail_each_alone() {
    const USERS: u8 = 40;
    // Which users' steps fail, and how: spread so that failures fall at the start, middle and
    // end of the chunks a group is cut into, and next to each other.
    fn no_challenge(n: u8) -> bool {
        n % 3 == 1
    }
    fn replayed(n: u8) -> bool {
        !no_challenge(n) && n % 5 == 2
    }
    let _shared = CLUSTER.read().await;
    for backend in backends().await {
        let name = backend.name;
        let a = backend.a.as_ref();
        for n in 0..USERS {
            let id = format!("many{n}");
            user_with_mfa(a, &id).await;
            a.delete_session(&token(200), &event(&id, "logout", NOW)).await.unwrap();
            if !no_challenge(n) {
                a.insert_challenge(&token(100 + n), &id, NOW, NOW + 300, HASH, None, &event(&id, "x", NOW))
                    .await
                    .unwrap();
            }
        }
        let results = race(&backend, usize::from(USERS), |store, i| async move {
            let n = u8::try_from(i).unwrap();
            let id = format!("many{n}");
            // `user_with_mfa` leaves the last accepted step at 100: 100 again is a replay.
            let step = if replayed(n) { 100 } else { 101 };
            store
                .complete_challenge_with_totp(
                    &token(100 + n),
                    step,
                    CODES,
                    &session(&id, 20 + n, true),
                    &event(&id, "login_succeeded", NOW),
                )
                .await
                .unwrap()
        })
        .await;
        for (i, result) in results.iter().enumerate() {
            let n = u8::try_from(i).unwrap();
            let id = format!("many{n}");
            let user = a.user_by_id(&id).await.unwrap().unwrap();
            let live = a.list_sessions(&id, NOW, 1800).await.unwrap().len();
            let challenge_left = a.challenge_user(&token(100 + n), NOW).await.unwrap().is_some();
            if no_challenge(n) || replayed(n) {
                assert_eq!(*result, TotpCompletion::Rejected, "{name} {id}");
                assert_eq!(user.mfa.unwrap().last_step, Some(100), "{name} {id}: step kept");
                assert_eq!(live, 0, "{name} {id}");
                assert!(a.active_session(&token(20 + n), NOW, 1800).await.unwrap().is_none());
                assert_eq!(challenge_left, replayed(n), "{name} {id}: the challenge is kept");
            } else {
                assert_eq!(*result, TotpCompletion::Completed, "{name} {id}");
                assert_eq!(user.mfa.unwrap().last_step, Some(101), "{name} {id}");
                assert_eq!(live, 1, "{name} {id}");
                assert!(!challenge_left, "{name} {id}");
            }
            // One from `user_with_mfa`'s session, one more for a completed second step.
            let expected = if no_challenge(n) || replayed(n) { 1 } else { 2 };
            assert_eq!(kinds_of(a, &id, "login_succeeded").await, expected, "{name} {id}");
        }
    }
}

/// How many of the challenges 100..100+count are still unused.
async fn challenges_left(backend: &Backend, count: u8) -> usize {
    let mut left = 0;
    for n in 0..count {
        if backend.b.challenge_user(&token(100 + n), NOW).await.unwrap().is_some() {
            left += 1;
        }
    }
    left
}
