//! Delivery of security events to `TESSERA_EVENTS_WEBHOOK_URL`, signed the Standard Webhooks
//! way (<https://www.standardwebhooks.com/>), so a receiver verifies it with a stock library.
//!
//! The `security_events` table is the outbox: requests only insert rows (inside their own
//! transactions), and one background task per process reads rows past a stored cursor and posts
//! them in order. So delivery never blocks or fails a request, and an event committed before a
//! crash is still delivered after restart (at least once: the event in flight at a crash may be
//! posted twice; receivers dedupe on `webhook-id`).
//!
//! Each request: `POST` with the JSON event as body and the headers `webhook-id` (the event's
//! id, the same on every attempt), `webhook-timestamp` (unix seconds of the attempt, from the
//! service's [`Clock`]) and `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`,
//! where the secret is `whsec_<base64 key>`.
//!
//! A failed attempt is retried after a backoff that doubles up to `max_backoff`, timed by the
//! [`Clock`] (the task polls; a due retry is made at the next poll). After `max_attempts` failed
//! attempts the event is recorded as dead and the cursor moves past it, in one transaction, so
//! it no longer holds back the events behind it; `tessera events redeliver ID` queues it again.
//!
//! Must not: follow redirects, log the URL (it may carry credentials) or the secret, or move the
//! cursor past an event that was neither accepted by the receiver nor recorded as dead.

use crate::clock::{Clock, rfc3339};
use crate::store::{DeadEvent, OutboxPosition, Store, StoreError, StoredEvent};
use data_encoding::{BASE64, BASE64_NOPAD};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The one line shown for a secret that is not a usable `whsec_` secret (never the value).
pub const SECRET_HELP: &str = "TESSERA_EVENTS_WEBHOOK_SECRET must be whsec_ followed by the base64 of 24 to 64 \
random bytes; make one with: echo whsec_$(head -c 32 /dev/urandom | base64)";

/// Where and how to deliver.
#[derive(Clone)]
pub struct WebhookConfig {
    pub url: reqwest::Url,
    /// The HMAC key: the base64-decoded part of the `whsec_` secret.
    key: Zeroizing<Vec<u8>>,
    /// Wait before the second attempt; doubles per failed attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Attempts before an event is recorded as dead.
    pub max_attempts: u32,
    /// How often the outbox is checked for new events and due retries.
    pub poll_interval: Duration,
    /// How long the delivery lease lasts without renewal: how soon another instance takes over
    /// from one that died.
    pub lease_ttl: Duration,
    /// Longest one delivery attempt may take.
    pub request_timeout: Duration,
    /// At a graceful stop, how long an attempt in flight may still take before it is abandoned
    /// (and the event is delivered again later: it was not recorded as delivered).
    pub shutdown_grace: Duration,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("host", &self.url.host_str())
            .field("secret", &"[redacted]")
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// Decodes a `whsec_<base64>` secret into its key: 24 to 64 bytes, base64 with or without
/// padding (as the reference libraries accept it). Errors never include the value.
pub fn parse_secret(secret: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let encoded = secret
        .trim()
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| SECRET_HELP.to_owned())?;
    let unpadded = encoded.trim_end_matches('=');
    let key = BASE64_NOPAD
        .decode(unpadded.as_bytes())
        .map_err(|_| SECRET_HELP.to_owned())?;
    if !(24..=64).contains(&key.len()) {
        return Err(SECRET_HELP.to_owned());
    }
    Ok(Zeroizing::new(key))
}

impl WebhookConfig {
    /// An `http(s)` URL and the signing secret (`TESSERA_EVENTS_WEBHOOK_SECRET`, required, a
    /// Standard Webhooks `whsec_` secret).
    pub fn new(url: &str, secret: Option<String>) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|err| format!("not a URL: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        let secret = Zeroizing::new(secret.ok_or_else(|| SECRET_HELP.to_owned())?);
        let key = parse_secret(&secret)?;
        Ok(Self {
            url,
            key,
            base_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(3600),
            max_attempts: 10,
            poll_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        })
    }

    /// The `webhook-signature` value of a delivery under this configuration's key.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        signature(&self.key, id, timestamp, body)
    }

    /// True when events would cross a network in clear text: plain `http` to anything but a
    /// loopback host. Allowed (a receiver on a private network may have no certificate), but
    /// warned about at start, because every event then travels readable and unprotected.
    pub fn is_cleartext_off_host(&self) -> bool {
        let host = self.url.host_str().unwrap_or_default();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        self.url.scheme() == "http" && !loopback
    }

    /// The wait after the `failed`-th failed attempt: `base_backoff` doubled per earlier
    /// failure, at most `max_backoff`.
    pub fn backoff(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(31);
        self.base_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// The body of one delivery.
#[derive(Debug, Serialize)]
pub struct EventPayload<'a> {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub user_id: Option<&'a str>,
    pub at: String,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(&mac.finalize().into_bytes()))
}

/// Makes ring the process's TLS provider (reqwest is built without one, so that no C crypto
/// library is needed); idempotent. Must run before any HTTP client is built.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The running delivery task.
pub struct WebhookTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
    store: Arc<dyn Store>,
    holder: String,
    grace: Duration,
}

impl WebhookTask {
    /// Ends the task at once (an attempt in flight is abandoned and the lease is left to
    /// expire). For tests; `serve` uses [`WebhookTask::shutdown`].
    pub fn abort(&self) {
        self.handle.abort();
    }

    /// A graceful stop: no new attempt starts; an attempt in flight may finish within
    /// `shutdown_grace` (and its event is recorded as delivered only if the receiver accepted
    /// it); then the lease is released so another instance takes over at once.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(self.grace, &mut self.handle).await.is_err() {
            tracing::warn!("webhook delivery still in flight at shutdown; abandoned, it will be delivered again");
            self.handle.abort();
            let _ = (&mut self.handle).await;
        }
        // The task has ended, so nothing of this holder can move the cursor any more.
        if let Err(err) = self.store.release_webhook_lease(&self.holder).await {
            tracing::warn!(error = %err, "could not release the webhook delivery lease; it expires on its own");
        }
    }
}

/// Starts the delivery task; it runs until [`WebhookTask::shutdown`] (or `abort`).
///
/// With several instances on one database, only the holder of the delivery lease (a row next to
/// the cursor) delivers; it renews the lease at every poll and before every attempt, and another
/// instance takes over once the lease has expired or was released, from the stored cursor. So
/// each event is delivered by one instance at a time, in order, and at least once.
pub fn spawn(store: Arc<dyn Store>, config: WebhookConfig, clock: Arc<dyn Clock>) -> WebhookTask {
    install_crypto_provider();
    if config.is_cleartext_off_host() {
        // Only the host: the URL may carry credentials or a secret path.
        tracing::warn!(
            host = config.url.host_str().unwrap_or_default(),
            "the events webhook URL is plain http to a host that is not loopback: events travel unencrypted; use https"
        );
    }
    let holder = uuid::Uuid::now_v7().to_string();
    let (stop, mut stopped) = watch::channel(false);
    let grace = config.shutdown_grace;
    let task_store = store.clone();
    let task_holder = holder.clone();
    let handle = tokio::spawn(async move {
        // No redirects: a signed event goes to the configured URL or nowhere, never to a
        // location a compromised or misconfigured receiver names.
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        let client = match client.build() {
            Ok(client) => client,
            Err(err) => {
                tracing::error!(error = %err, "webhook client could not be built; events will not be delivered");
                return;
            }
        };
        let courier = Courier {
            store: task_store,
            client,
            config,
            clock,
            holder: task_holder,
            stopped: stopped.clone(),
        };
        let mut progress = Progress::default();
        loop {
            if let Err(err) = courier.deliver_pending(&mut progress).await {
                progress = Progress::default();
                tracing::warn!(error = %err, "webhook outbox unavailable; retrying");
            }
            courier.report_backlog().await;
            if courier.stopping() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(courier.config.poll_interval) => {}
                _ = stopped.changed() => {}
            }
            if courier.stopping() {
                return;
            }
        }
    });
    WebhookTask {
        stop,
        handle,
        store,
        holder,
        grace,
    }
}

/// A failed event waiting for its next attempt.
#[derive(Debug, Clone)]
struct Retry {
    event_id: i64,
    /// Failed attempts so far (in this round, for a redelivery).
    failed: u32,
    next_at: OffsetDateTime,
}

/// What the courier remembers between polls while it holds the lease.
#[derive(Debug, Default)]
struct Progress {
    /// Read when this instance takes the lease, then kept here: while it holds the lease no one
    /// else moves the cursor, so the poll loop only reads new events.
    cursor: Option<OutboxPosition>,
    /// The retry state of the event right after the cursor, if its delivery failed.
    head: Option<Retry>,
    /// Retry states of dead events queued for redelivery, by event id.
    redeliveries: HashMap<i64, Retry>,
}

/// The outcome of one attempt at one event.
enum Attempt {
    Delivered,
    /// Failed (or not due yet): try again at a later poll.
    Later,
    /// The last allowed attempt failed.
    Dead {
        failed: u32,
        last_error: String,
    },
    /// The lease was lost before the attempt: nothing was sent.
    LeaseLost,
}

struct Courier {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    config: WebhookConfig,
    clock: Arc<dyn Clock>,
    /// This process's name on the lease.
    holder: String,
    stopped: watch::Receiver<bool>,
}

impl Courier {
    fn stopping(&self) -> bool {
        *self.stopped.borrow()
    }

    async fn hold_lease(&self) -> Result<bool, StoreError> {
        let now = self.clock.now().unix_timestamp();
        let ttl = i64::try_from(self.config.lease_ttl.as_secs()).unwrap_or(i64::MAX);
        self.store.acquire_webhook_lease(&self.holder, now, ttl).await
    }

    /// Sets the backlog and dead-event gauges from the database (every instance reports the
    /// same database-wide numbers).
    async fn report_backlog(&self) {
        if let Ok(backlog) = self.store.webhook_backlog().await {
            metrics::gauge!("tessera_webhook_backlog").set(backlog.pending as f64);
            metrics::gauge!("tessera_webhook_dead_events").set(backlog.dead as f64);
        }
    }

    fn lost(progress: &mut Progress) {
        tracing::info!("webhook delivery lease taken over by another instance");
        *progress = Progress::default();
    }

    /// Delivers what is due while this instance holds the lease: dead events queued for
    /// redelivery, then every event past the cursor, in order, until one fails.
    async fn deliver_pending(&self, progress: &mut Progress) -> Result<(), StoreError> {
        let mut position = match progress.cursor {
            Some(position) => position,
            // Creates the cursor row on first use, which the lease lives in.
            None => self.store.webhook_cursor().await?,
        };
        if !self.hold_lease().await? {
            *progress = Progress::default();
            return Ok(());
        }
        if progress.cursor.is_none() {
            // Taken just now: another instance may have moved the cursor since it was read.
            position = self.store.webhook_cursor().await?;
            progress.cursor = Some(position);
            tracing::info!("holding the webhook delivery lease: this instance delivers security events");
        }
        if !self.redeliver(progress).await? {
            Self::lost(progress);
            return Ok(());
        }
        loop {
            let events = self.store.events_after(position, 100).await?;
            if events.is_empty() {
                return Ok(());
            }
            for event in &events {
                if self.stopping() {
                    return Ok(());
                }
                let kept = match self.attempt(event, &mut progress.head).await? {
                    Attempt::Delivered => self.store.set_webhook_cursor(&self.holder, event.position).await?,
                    Attempt::Later => return Ok(()),
                    Attempt::Dead { failed, last_error } => self.bury(event, failed, &last_error).await?,
                    Attempt::LeaseLost => false,
                };
                if !kept {
                    Self::lost(progress);
                    return Ok(());
                }
                position = event.position;
                progress.cursor = Some(position);
            }
        }
    }

    /// Tries each due dead event queued by `tessera events redeliver`; false if the lease was lost.
    async fn redeliver(&self, progress: &mut Progress) -> Result<bool, StoreError> {
        let queued: Vec<DeadEvent> = self.store.dead_webhook_events(true, 100).await?;
        progress
            .redeliveries
            .retain(|id, _| queued.iter().any(|dead| dead.event.id == *id));
        for dead in &queued {
            if self.stopping() {
                return Ok(true);
            }
            let mut slot = progress.redeliveries.remove(&dead.event.id);
            let kept = match self.attempt(&dead.event, &mut slot).await? {
                Attempt::Delivered => self.store.settle_redelivery(&self.holder, dead.event.id).await?,
                Attempt::Later => true,
                Attempt::Dead { failed, last_error } => {
                    self.bury(&dead.event, dead.attempts.saturating_add(failed), &last_error)
                        .await?
                }
                Attempt::LeaseLost => false,
            };
            if !kept {
                return Ok(false);
            }
            if let Some(retry) = slot {
                progress.redeliveries.insert(dead.event.id, retry);
            }
        }
        Ok(true)
    }

    async fn bury(&self, event: &StoredEvent, attempts: u32, last_error: &str) -> Result<bool, StoreError> {
        let now = self.clock.now().unix_timestamp();
        let buried = self
            .store
            .bury_webhook_event(&self.holder, event, attempts, last_error, now)
            .await?;
        if buried {
            tracing::warn!(
                event_id = event.id,
                attempts,
                last_error,
                "webhook event is dead after its last attempt; `tessera events redeliver` sends it again"
            );
        }
        Ok(buried)
    }

    /// Makes one attempt at `event` if it is due; `slot` holds its retry state between polls.
    async fn attempt(&self, event: &StoredEvent, slot: &mut Option<Retry>) -> Result<Attempt, StoreError> {
        let now = self.clock.now();
        let failed_before = match slot {
            Some(retry) if retry.event_id == event.id => {
                if now < retry.next_at {
                    return Ok(Attempt::Later);
                }
                retry.failed
            }
            _ => 0,
        };
        if !self.hold_lease().await? {
            return Ok(Attempt::LeaseLost);
        }
        match self.send(event, now.unix_timestamp()).await {
            Ok(()) => {
                metrics::counter!("tessera_webhook_deliveries_total", "result" => "ok").increment(1);
                *slot = None;
                Ok(Attempt::Delivered)
            }
            Err(last_error) => {
                metrics::counter!("tessera_webhook_deliveries_total", "result" => "failed").increment(1);
                let failed = failed_before.saturating_add(1);
                tracing::warn!(event_id = event.id, attempt = failed, error = %last_error, "webhook delivery failed");
                if failed >= self.config.max_attempts {
                    *slot = None;
                    return Ok(Attempt::Dead { failed, last_error });
                }
                let wait = time::Duration::try_from(self.config.backoff(failed)).unwrap_or(time::Duration::HOUR);
                *slot = Some(Retry {
                    event_id: event.id,
                    failed,
                    next_at: now.saturating_add(wait),
                });
                Ok(Attempt::Later)
            }
        }
    }

    /// Posts the event once; the error says why it was not accepted (never the URL).
    async fn send(&self, event: &StoredEvent, timestamp: i64) -> Result<(), String> {
        let payload = EventPayload {
            id: event.id,
            kind: &event.record.kind,
            user_id: event.user_id.as_deref(),
            at: rfc3339(event.record.at),
            ip: event.record.ip.as_deref(),
            user_agent: event.record.user_agent.as_deref(),
            request_id: event.record.request_id.as_deref(),
        };
        let body = serde_json::to_vec(&payload).map_err(|err| err.to_string())?;
        let id = event.id.to_string();
        let result = self
            .client
            .post(self.config.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature(&self.config.key, &id, timestamp, &body))
            .body(body)
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
            // `without_url`: the URL may carry credentials or a secret path; it is never kept.
            Err(err) => Err(transport_error(err.without_url())),
        }
    }
}

/// A transport failure in one line: the error and its causes, without the URL, bounded.
fn transport_error(err: reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn the_signature_matches_the_standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks libraries' own tests and docs.
        let key = parse_secret(SECRET).unwrap();
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_ne!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_331,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn only_whsec_secrets_of_24_to_64_bytes_are_accepted_and_never_echoed() {
        assert_eq!(parse_secret(SECRET).unwrap().len(), 24);
        let padded = format!("whsec_{}", BASE64.encode(&[7u8; 32]));
        assert_eq!(parse_secret(&padded).unwrap().as_slice(), &[7u8; 32]);
        for bad in [
            "webhook-secret-0123456789",                     // the old plain secrets
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",              // no prefix
            "whsec_c2hvcnQ=",                                // 5 bytes
            "whsec_not base64 at all!!!!!!!!!!!!!",          // not base64
            &format!("whsec_{}", BASE64.encode(&[1u8; 65])), // too long
        ] {
            let err = parse_secret(bad).unwrap_err();
            assert_eq!(err, SECRET_HELP);
            assert!(!err.contains(bad.trim_start_matches("whsec_")));
        }
    }

    #[test]
    fn configuration_needs_an_http_url_and_a_secret_and_hides_the_secret() {
        assert!(WebhookConfig::new("ftp://x", Some(SECRET.into())).is_err());
        assert_eq!(
            WebhookConfig::new("http://127.0.0.1:9/hook", None).unwrap_err(),
            SECRET_HELP
        );
        let config = WebhookConfig::new("http://127.0.0.1:9/hook", Some(SECRET.into())).unwrap();
        assert!(!format!("{config:?}").contains("MfKQ9r8G"));
    }

    #[test]
    fn retries_back_off_doubling_up_to_the_cap() {
        let config = WebhookConfig::new("http://127.0.0.1:9/hook", Some(SECRET.into())).unwrap();
        let waits: Vec<u64> = (1..10).map(|n| config.backoff(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1280, 2560]);
        assert_eq!(config.backoff(12).as_secs(), 3600);
        assert_eq!(config.backoff(u32::MAX).as_secs(), 3600);
        assert_eq!(config.max_attempts, 10);
    }

    #[test]
    fn plain_http_is_flagged_unless_it_stays_on_this_host() {
        let secret = || Some(SECRET.to_owned());
        let flagged = |url: &str| WebhookConfig::new(url, secret()).unwrap().is_cleartext_off_host();
        assert!(flagged("http://hooks.example.com/events"));
        assert!(flagged("http://192.0.2.10:8080/events"));
        assert!(!flagged("https://hooks.example.com/events"));
        assert!(!flagged("http://127.0.0.1:9000/events"));
        assert!(!flagged("http://[::1]:9000/events"));
        assert!(!flagged("http://LocalHost/events"));
    }
}
