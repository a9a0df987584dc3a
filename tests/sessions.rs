//! The sessions a user can see and end, over a real socket: the list (address, user agent,
//! `current`), ending one by id, ending all others, the cap of 100 per account, and every
//! error as a problem. Run on SQLite here and on PostgreSQL by `tests/postgres_journeys.rs`.

mod common;

use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tessera::domain::token::TokenHash;
use tessera::store::{NewEvent, SessionRecord};

const SESSIONS: &str = "/api/user/profile/sessions";
const REVOKE_OTHERS: &str = "/api/user/profile/sessions/revoke-others";

/// An app that believes the loopback proxy's `X-Forwarded-For`, so each login can come from
/// its own address.
async fn app_behind_a_proxy() -> TestApp {
    spawn_with(Options {
        configure: Box::new(|config| config.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")]),
        ..Options::default()
    })
    .await
}

async fn login_from(app: &TestApp, email: &str, ip: &str, user_agent: &str) -> String {
    let reply = app
        .send(
            app.client
                .post(app.url("/api/auth/login"))
                .header("x-forwarded-for", ip)
                .header("user-agent", user_agent)
                .json(&json!({"email": email, "password": PASSWORD})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["token"].as_str().expect("token").to_owned()
}

async fn sessions_of(app: &TestApp, token: &str) -> Vec<Value> {
    let reply = app.get(SESSIONS, Some(token)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["sessions"].as_array().expect("sessions").clone()
}

/// The id of the session `token` is, as the list shows it.
async fn own_session_id(app: &TestApp, token: &str) -> String {
    let sessions = sessions_of(app, token).await;
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "{sessions:?}");
    current[0]["id"].as_str().expect("id").to_owned()
}

async fn end(app: &TestApp, token: &str, id: &str) -> Reply {
    app.send(
        app.client
            .delete(app.url(&format!("{SESSIONS}/{id}")))
            .bearer_auth(token),
    )
    .await
}

async fn event_types(app: &TestApp, token: &str) -> Vec<String> {
    let reply = app.get("/api/user/profile/security-events", Some(token)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_owned())
        .collect()
}

fn is_uuid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

#[tokio::test]
async fn the_list_shows_each_login_with_its_address_and_user_agent_and_marks_the_current_one() {
    let app = app_behind_a_proxy().await;
    assert_eq!(app.register("olga@example.com").await.status, 201);
    let laptop = login_from(&app, "olga@example.com", "203.0.113.7", "Laptop/1.0").await;
    app.clock.advance(time::Duration::seconds(5));
    let phone = login_from(&app, "olga@example.com", "2001:db8::9", "Phone/2.0").await;
    let other = app.user_with_session("pete@example.com").await;

    let sessions = sessions_of(&app, &laptop).await;
    assert_eq!(sessions.len(), 2, "only Olga's sessions: {sessions:?}");
    let (newest, oldest) = (&sessions[0], &sessions[1]);
    assert_eq!(newest["ip"], "2001:db8::9");
    assert_eq!(newest["user_agent"], "Phone/2.0");
    assert_eq!(newest["current"], false);
    assert_eq!(oldest["ip"], "203.0.113.7");
    assert_eq!(oldest["user_agent"], "Laptop/1.0");
    assert_eq!(oldest["current"], true);
    for session in &sessions {
        assert!(is_uuid(session["id"].as_str().unwrap()), "{session}");
        assert_eq!(session["mfa"], false);
        for member in ["created_at", "last_seen_at", "expires_at"] {
            assert!(session[member].as_str().unwrap().ends_with('Z'), "{member}: {session}");
        }
        assert_eq!(
            session.as_object().unwrap().len(),
            8,
            "exactly the documented members: {session}"
        );
    }
    assert_ne!(newest["id"], oldest["id"]);
    assert!(newest["created_at"].as_str() > oldest["created_at"].as_str());

    // The same list seen from the phone marks the phone.
    let from_phone = sessions_of(&app, &phone).await;
    assert_eq!(from_phone[0]["current"], true);
    assert_eq!(from_phone[1]["current"], false);
    assert_eq!(sessions_of(&app, &other).await.len(), 1);
}

#[tokio::test]
async fn a_session_id_is_neither_the_token_nor_its_hash() {
    let app = spawn_app().await;
    let token = app.user_with_session("quinn@example.com").await;
    let id = own_session_id(&app, &token).await;
    let hash = Sha256::digest(token.as_bytes());
    let hash_hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!token.contains(&id) && !id.contains(&token[4..]), "{id}");
    assert!(!hash_hex.contains(&id.replace('-', "")), "{id}");
    let db = app.db().await;
    assert_eq!(db.bytes("SELECT token_hash FROM sessions").await, vec![hash.to_vec()]);
    assert_eq!(db.text("SELECT public_id FROM sessions").await, id);
    db.close().await;
    // Nor does the id work as a token.
    app.get(SESSIONS, Some(&id))
        .await
        .assert_problem(401, "/problems/unauthenticated");
}

#[tokio::test]
async fn ending_a_session_by_id_signs_it_out_and_records_an_event() {
    let app = spawn_app().await;
    let keep = app.user_with_session("rosa@example.com").await;
    let stolen = app.session_for("rosa@example.com").await;
    let stolen_id = own_session_id(&app, &stolen).await;

    let reply = end(&app, &keep, &stolen_id).await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    assert!(reply.text.is_empty());
    assert!(reply.header("set-cookie").is_none(), "the caller stays signed in");
    app.get("/api/auth/session", Some(&stolen))
        .await
        .assert_problem(401, "/problems/unauthenticated");
    assert_eq!(app.get("/api/auth/session", Some(&keep)).await.status, 200);
    assert_eq!(sessions_of(&app, &keep).await.len(), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM sessions").await, 1);
    assert_eq!(event_types(&app, &keep).await[0], "session_revoked");

    // Once ended, the id names nothing.
    end(&app, &keep, &stolen_id)
        .await
        .assert_problem(404, "/problems/session-not-found");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM security_events WHERE kind = 'session_revoked'")
            .await,
        1
    );
}

#[tokio::test]
async fn ending_the_calling_session_by_id_is_a_logout() {
    let app = spawn_app().await;
    let token = app.user_with_session("sven@example.com").await;
    let id = own_session_id(&app, &token).await;
    let reply = end(&app, &token, &id.to_uppercase()).await;
    assert_eq!(reply.status, 204, "ids are UUIDs, in any case: {}", reply.text);
    assert!(reply.header("set-cookie").unwrap().contains("Max-Age=0"));
    app.get(SESSIONS, Some(&token))
        .await
        .assert_problem(401, "/problems/unauthenticated");
}

#[tokio::test]
async fn another_users_session_id_is_not_found_and_changes_nothing() {
    let app = spawn_app().await;
    let mallory = app.user_with_session("mallory@example.com").await;
    let victim = app.user_with_session("tina@example.com").await;
    let victim_id = own_session_id(&app, &victim).await;

    end(&app, &mallory, &victim_id)
        .await
        .assert_problem(404, "/problems/session-not-found");
    assert_eq!(app.get("/api/auth/session", Some(&victim)).await.status, 200);
    assert_eq!(app.count("SELECT COUNT(*) FROM sessions").await, 2);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM security_events WHERE kind = 'session_revoked'")
            .await,
        0
    );
    // Revoking "the others" only ever touches the caller's own sessions.
    let reply = app.post(REVOKE_OTHERS, Some(&mallory), json!({})).await;
    assert_eq!(reply.body, json!({"revoked": 0}), "{}", reply.text);
    assert_eq!(app.get("/api/auth/session", Some(&victim)).await.status, 200);
}

#[tokio::test]
async fn revoke_others_ends_every_other_session_and_keeps_the_caller() {
    let app = spawn_app().await;
    let caller = app.user_with_session("uma@example.com").await;
    let others = [
        app.session_for("uma@example.com").await,
        app.session_for("uma@example.com").await,
    ];
    let bystander = app.user_with_session("vic@example.com").await;

    let reply = app
        .send(app.client.post(app.url(REVOKE_OTHERS)).bearer_auth(&caller))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body, json!({"revoked": 2}));
    for token in &others {
        app.get("/api/auth/session", Some(token))
            .await
            .assert_problem(401, "/problems/unauthenticated");
    }
    let left = sessions_of(&app, &caller).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["current"], true);
    assert_eq!(app.get("/api/auth/session", Some(&bystander)).await.status, 200);
    assert_eq!(event_types(&app, &caller).await[0], "other_sessions_revoked");

    let again = app.post(REVOKE_OTHERS, Some(&caller), json!({})).await;
    assert_eq!(again.body, json!({"revoked": 0}), "{}", again.text);
}

#[tokio::test]
async fn the_101st_login_evicts_the_oldest_session() {
    let app = spawn_app().await;
    let registered = app.register("walt@example.com").await;
    let user_id = registered.body["user"]["id"].as_str().unwrap().to_owned();
    let oldest = app.session_for("walt@example.com").await;
    let second = app.session_for("walt@example.com").await;
    // 98 more sessions straight through the store (a login each would only cost argon2 time).
    let now = app.now();
    for n in 0..98u8 {
        let record = SessionRecord {
            token_hash: TokenHash([n; 32]),
            public_id: format!("00000000-0000-4000-8000-{n:012x}"),
            user_id: user_id.clone(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + 3600,
            mfa: false,
            ip: None,
            user_agent: None,
        };
        let event = NewEvent {
            user_id: Some(user_id.clone()),
            kind: "login_succeeded",
            at: now,
            ip: None,
            user_agent: None,
            request_id: None,
        };
        app.store.insert_session(&record, &event).await.unwrap();
    }
    assert_eq!(sessions_of(&app, &second).await.len(), 100);
    assert_eq!(app.get("/api/auth/session", Some(&oldest)).await.status, 200);

    let newest = app.session_for("walt@example.com").await;
    app.get("/api/auth/session", Some(&oldest))
        .await
        .assert_problem(401, "/problems/unauthenticated");
    assert_eq!(app.get("/api/auth/session", Some(&second)).await.status, 200);
    let sessions = sessions_of(&app, &newest).await;
    assert_eq!(sessions.len(), 100);
    assert_eq!(sessions[0]["current"], true);
    let events = event_types(&app, &newest).await;
    assert!(events.contains(&"session_evicted".to_owned()), "{events:?}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM security_events WHERE kind = 'session_evicted'")
            .await,
        1
    );
}

#[tokio::test]
async fn malformed_ids_wrong_methods_and_missing_sessions_are_clean_problems() {
    let app = spawn_app().await;
    let token = app.user_with_session("xena@example.com").await;
    let id = own_session_id(&app, &token).await;

    // An id that is not a UUID names no session: the same 404 as an unknown one.
    for bad in [
        "not-a-session",
        "1",
        "%FF%FE",
        &"a".repeat(300),
        "00000000-0000-4000-8000-000000000000",
    ] {
        end(&app, &token, bad)
            .await
            .assert_problem(404, "/problems/session-not-found");
    }
    // Wrong methods on each path.
    let wrong = [
        app.client.get(app.url(&format!("{SESSIONS}/{id}"))),
        app.client.post(app.url(&format!("{SESSIONS}/{id}"))),
        app.client.delete(app.url(SESSIONS)),
        app.client.post(app.url(SESSIONS)),
        app.client.get(app.url(REVOKE_OTHERS)),
        app.client.delete(app.url(REVOKE_OTHERS)),
    ];
    for request in wrong {
        app.send(request.bearer_auth(&token))
            .await
            .assert_problem(405, "about:blank");
    }
    // No session, or a dead one.
    let anonymous = [
        app.client.get(app.url(SESSIONS)),
        app.client.delete(app.url(&format!("{SESSIONS}/{id}"))),
        app.client.post(app.url(REVOKE_OTHERS)),
    ];
    for request in anonymous {
        app.send(request).await.assert_problem(401, "/problems/unauthenticated");
    }
    app.get(SESSIONS, Some("tsr_not-a-real-token"))
        .await
        .assert_problem(401, "/problems/unauthenticated");
    // Cookie-authenticated state changes must be same-origin.
    let cookie = format!("__Host-tessera_session={token}");
    for request in [
        app.client.delete(app.url(&format!("{SESSIONS}/{id}"))),
        app.client.post(app.url(REVOKE_OTHERS)),
    ] {
        app.send(
            request
                .header("cookie", cookie.as_str())
                .header("origin", "https://evil.example"),
        )
        .await
        .assert_problem(403, "/problems/cross-site-request");
    }
    let listed = app
        .send(app.client.get(app.url(SESSIONS)).header("cookie", cookie.as_str()))
        .await;
    assert_eq!(listed.status, 200, "reading by cookie needs no origin: {}", listed.text);
    assert_eq!(
        app.get("/api/auth/session", Some(&token)).await.status,
        200,
        "nothing ended"
    );
    let same_origin = app
        .send(
            app.client
                .delete(app.url(&format!("{SESSIONS}/{id}")))
                .header("cookie", cookie.as_str())
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert_eq!(same_origin.status, 204, "{}", same_origin.text);
}

#[tokio::test]
async fn a_session_opened_with_a_second_factor_is_marked_mfa() {
    let app = spawn_app().await;
    let first = app.user_with_session("yara@example.com").await;
    let (secret, _codes) = app.enable_mfa(&first).await;
    app.next_step();
    let mfa_token = app.mfa_token("yara@example.com").await;
    let reply = app.login_mfa(&mfa_token, &totp_code(&secret, app.now())).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let second = reply.body["token"].as_str().unwrap();
    let sessions = sessions_of(&app, second).await;
    assert_eq!(sessions.len(), 2);
    assert_eq!(
        (&sessions[0]["current"], &sessions[0]["mfa"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(
        (&sessions[1]["current"], &sessions[1]["mfa"]),
        (&json!(false), &json!(false))
    );
    assert_eq!(sessions[0]["ip"], "127.0.0.1");
}
