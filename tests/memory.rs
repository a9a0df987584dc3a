//! Memory of the real `tessera serve` under a flood of password logins: argon2's 19 MiB a hash
//! must stay bounded by the hashing pool's size however many logins arrive or are abandoned by
//! their clients, and must be given back to the operating system once the pool is idle.
//! (A bound on memory, not a timing: speed is measured by bench/hashing.sh, never asserted.)

mod common;

use common::PASSWORD;
use common::process::*;
use serde_json::json;
use std::time::Duration;

/// argon2's working memory per hash (m = 19456 KiB).
const BLOCK_KIB: u64 = 19_456;
/// The pool size the server is started with.
const THREADS: u64 = 2;
/// What else may grow under the flood (measured on the debug binary: 2.8 MiB above the two
/// blocks at the peak, 2.8 MiB above the baseline once idle): SQLite's page caches (2 MiB per
/// pooled connection at most), the buffers of 48 open connections, the first heaps of the
/// allocator arenas of threads that first allocate during the flood. Less than one argon2
/// block, so a third block held anywhere fails the test.
const SLACK_KIB: u64 = 16 * 1024;
/// Concurrent logins per wave: many more than the pool has threads.
const CONCURRENT: usize = 48;
/// Of each wave, the clients that give up after 150 ms (their hashes are queued or running).
const IMPATIENT: usize = 16;
/// The hashing threads free their memory after 30 s without work (hashing::IDLE_RELEASE).
const IDLE_RELEASE: Duration = Duration::from_secs(30);

/// A field of /proc/PID/status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_flood_holds_at_most_one_argon2_block_per_hashing_thread_and_gives_them_back() {
    let data = tempfile::tempdir().expect("temporary directory");
    let mut command = tessera(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().expect("UTF-8 path"),
        "--hashing-threads",
        &THREADS.to_string(),
    ]);
    command
        .env("TESSERA_IP_RATE_LIMIT_PER_MINUTE", "0")
        .env("TESSERA_MAX_CONNECTIONS_PER_IP", "1024");
    let server = Server::start(command);
    // Logins in flight count against their account's password throttle until they succeed, so
    // the flood spreads over 16 accounts (3 logins of each at once).
    let pid = server.child.0.id();
    let emails: Vec<String> = (0..16).map(|n| format!("flood-{n}@example.com")).collect();
    for email in &emails {
        assert_eq!(server.register(email).await.status, 201);
    }
    // Idle: the registrations' blocks given back (the dummy hash of the start never kept one).
    tokio::time::sleep(IDLE_RELEASE + Duration::from_secs(3)).await;
    let baseline = status_kib(pid, "VmRSS");

    let client = common::http_client();
    let mut answered = 0;
    let mut abandoned = 0;
    for _wave in 0..3 {
        let requests: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let mut request = client
                    .post(format!("{}/api/auth/login", server.base))
                    .json(&json!({"email": emails[i % emails.len()], "password": PASSWORD}));
                if i < IMPATIENT {
                    request = request.timeout(Duration::from_millis(150));
                }
                tokio::spawn(request.send())
            })
            .collect();
        for request in requests {
            match request.await.expect("task") {
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    assert_eq!(status, 200, "{body}");
                    answered += 1;
                }
                Err(err) => {
                    assert!(err.is_timeout(), "{err}");
                    abandoned += 1;
                }
            }
        }
    }
    assert!(answered >= 3 * (CONCURRENT - IMPATIENT), "{answered} answered");
    assert!(abandoned > 0, "no client gave up: the flood tested nothing abandoned");

    let peak = status_kib(pid, "VmHWM");
    let after = status_kib(pid, "VmRSS");
    eprintln!(
        "RSS KiB: baseline {baseline}, peak {peak}, after the flood {after}; {answered} answered, {abandoned} abandoned"
    );
    let bound = baseline + THREADS * BLOCK_KIB + SLACK_KIB;
    assert!(
        peak <= bound,
        "peak RSS {peak} KiB > baseline {baseline} KiB + {THREADS} x {BLOCK_KIB} KiB + {SLACK_KIB} KiB"
    );
    assert!(after <= bound, "RSS after the flood {after} KiB > {bound} KiB");

    // Idle again: both threads give their block back to the operating system.
    tokio::time::sleep(IDLE_RELEASE + Duration::from_secs(3)).await;
    let released = status_kib(pid, "VmRSS");
    eprintln!("RSS KiB once idle: {released}");
    assert!(
        released <= baseline + SLACK_KIB,
        "RSS {released} KiB after the pool went idle > baseline {baseline} KiB + {SLACK_KIB} KiB"
    );
    // And the server still serves logins.
    assert_eq!(server.login(&emails[0]).await.status, 200);
}
