//! Delivery of security events to `TESSERA_EVENTS_WEBHOOK_URL`, signed with HMAC-SHA256.
//!
//! The `security_events` table is the outbox: requests only insert rows (inside their own
//! transactions), and one background task per process reads rows past a stored cursor and posts
//! them in order, retrying a failed delivery with exponential backoff. So delivery never blocks
//! or fails a request, and an event committed before a crash is still delivered after restart
//! (at least once: the event in flight at a crash may be posted twice; receivers dedupe on
//! `X-Tessera-Event-Id`).
//!
//! Each request: `POST` with the JSON event as body, `X-Tessera-Event-Id`, `X-Tessera-Timestamp`
//! (unix seconds) and `X-Tessera-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.

use crate::clock::{Clock, rfc3339};
use crate::store::{OutboxPosition, Store, StoreError, StoredEvent};
use data_encoding::HEXLOWER;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// Where and how to deliver.
#[derive(Clone)]
pub struct WebhookConfig {
    pub url: reqwest::Url,
    pub secret: Zeroizing<String>,
    /// First retry delay; doubles per failed attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// How often the outbox is checked for new events.
    pub poll_interval: Duration,
    /// How long the delivery lease lasts without renewal: how soon another instance takes over
    /// from one that died.
    pub lease_ttl: Duration,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("host", &self.url.host_str())
            .field("secret", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// An `http(s)` URL and the signing secret (`TESSERA_EVENTS_WEBHOOK_SECRET`, required).
    pub fn new(url: &str, secret: Option<String>) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|err| format!("not a URL: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        let secret = secret
            .filter(|s| s.len() >= 16)
            .ok_or("TESSERA_EVENTS_WEBHOOK_SECRET must be set to at least 16 characters to sign events")?;
        Ok(Self {
            url,
            secret: Zeroizing::new(secret),
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(30),
        })
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

/// `sha256=<hex>` over `"<timestamp>.<body>"`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", HEXLOWER.encode(&mac.finalize().into_bytes()))
}

/// Makes ring the process's TLS provider (reqwest is built without one, so that no C crypto
/// library is needed); idempotent. Must run before any HTTP client is built.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Starts the delivery task. It runs until the returned handle is aborted.
///
/// With several instances on one database, only the holder of the delivery lease (a row next to
/// the cursor) delivers; it renews the lease at every poll and before every attempt, and another
/// instance takes over once the lease has expired, from the stored cursor. So each event is
/// delivered by one instance at a time, in order, and at least once.
pub fn spawn(store: Arc<dyn Store>, config: WebhookConfig, clock: Arc<dyn Clock>) -> JoinHandle<()> {
    install_crypto_provider();
    if config.is_cleartext_off_host() {
        // Only the host: the URL may carry credentials or a secret path.
        tracing::warn!(
            host = config.url.host_str().unwrap_or_default(),
            "the events webhook URL is plain http to a host that is not loopback: events travel unencrypted; use https"
        );
    }
    tokio::spawn(async move {
        // No redirects: a signed event goes to the configured URL or nowhere, never to a
        // location a compromised or misconfigured receiver names.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        let client = match client.build() {
            Ok(client) => client,
            Err(err) => {
                tracing::error!(error = %err, "webhook client could not be built; events will not be delivered");
                return;
            }
        };
        let courier = Courier {
            store,
            client,
            config,
            clock,
            holder: uuid::Uuid::now_v7().to_string(),
        };
        // Read when this instance takes the lease, then kept here: while it holds the lease no
        // one else moves the cursor, so the poll loop only reads new events.
        let mut cursor = None;
        loop {
            if let Err(err) = courier.deliver_pending(&mut cursor).await {
                cursor = None;
                tracing::warn!(error = %err, "webhook outbox unavailable; retrying");
            }
            tokio::time::sleep(courier.config.poll_interval).await;
        }
    })
}

struct Courier {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    config: WebhookConfig,
    clock: Arc<dyn Clock>,
    /// This process's name on the lease.
    holder: String,
}

impl Courier {
    async fn hold_lease(&self) -> Result<bool, StoreError> {
        let now = self.clock.now().unix_timestamp();
        let ttl = i64::try_from(self.config.lease_ttl.as_secs()).unwrap_or(i64::MAX);
        self.store.acquire_webhook_lease(&self.holder, now, ttl).await
    }

    /// Delivers every event past the cursor while this instance holds the lease. `cursor` is
    /// reset to `None` whenever the lease is not held, so a later takeover re-reads it.
    async fn deliver_pending(&self, cursor: &mut Option<OutboxPosition>) -> Result<(), StoreError> {
        let mut position = match *cursor {
            Some(position) => position,
            // Creates the cursor row on first use, which the lease lives in.
            None => self.store.webhook_cursor().await?,
        };
        if !self.hold_lease().await? {
            *cursor = None;
            return Ok(());
        }
        if cursor.is_none() {
            // Taken just now: another instance may have moved the cursor since it was read.
            position = self.store.webhook_cursor().await?;
            *cursor = Some(position);
            tracing::info!("holding the webhook delivery lease: this instance delivers security events");
        }
        loop {
            let events = self.store.events_after(position, 100).await?;
            if events.is_empty() {
                return Ok(());
            }
            for event in &events {
                if !self.deliver_with_retry(event).await?
                    || !self.store.set_webhook_cursor(&self.holder, event.position).await?
                {
                    tracing::info!("webhook delivery lease taken over by another instance");
                    *cursor = None;
                    return Ok(());
                }
                position = event.position;
                *cursor = Some(position);
            }
        }
    }

    /// Posts one event until the receiver accepts it; false if the lease was lost meanwhile.
    async fn deliver_with_retry(&self, event: &StoredEvent) -> Result<bool, StoreError> {
        let config = &self.config;
        let payload = EventPayload {
            id: event.id,
            kind: &event.record.kind,
            user_id: event.user_id.as_deref(),
            at: rfc3339(event.record.at),
            ip: event.record.ip.as_deref(),
            user_agent: event.record.user_agent.as_deref(),
            request_id: event.record.request_id.as_deref(),
        };
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        let mut delay = config.base_backoff;
        for attempt in 1u32.. {
            if attempt > 1 && !self.hold_lease().await? {
                return Ok(false);
            }
            let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
            let result = self
                .client
                .post(config.url.clone())
                .header("content-type", "application/json")
                .header("x-tessera-event-id", event.id)
                .header("x-tessera-timestamp", timestamp)
                .header("x-tessera-signature", signature(&config.secret, timestamp, &body))
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => return Ok(true),
                Ok(response) => {
                    tracing::warn!(
                        event_id = event.id,
                        attempt,
                        status = response.status().as_u16(),
                        "webhook refused event"
                    )
                }
                // `without_url`: the URL may carry credentials or a secret path; it is never logged.
                Err(err) => {
                    tracing::warn!(event_id = event.id, attempt, error = %err.without_url(), "webhook delivery failed")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(config.max_backoff);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_and_body() {
        // Independent check: HMAC-SHA256 test case 2 of RFC 4231 (key "Jefe").
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            signature("Jefe", 0, b"what do ya want for nothing?").len(),
            "sha256=".len() + expected.len()
        );
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(HEXLOWER.encode(&mac.finalize().into_bytes()), expected);
        assert_eq!(
            signature("secret", 42, b"{}"),
            signature("secret", 42, b"{}"),
            "deterministic"
        );
        assert_ne!(signature("secret", 42, b"{}"), signature("secret", 43, b"{}"));
    }

    #[test]
    fn configuration_needs_an_http_url_and_a_secret_and_hides_the_secret() {
        assert!(WebhookConfig::new("ftp://x", Some("0123456789abcdef".into())).is_err());
        assert!(WebhookConfig::new("http://127.0.0.1:9/hook", None).is_err());
        let config = WebhookConfig::new("http://127.0.0.1:9/hook", Some("0123456789abcdef".into())).unwrap();
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn plain_http_is_flagged_unless_it_stays_on_this_host() {
        let secret = || Some("0123456789abcdef".to_owned());
        let flagged = |url: &str| WebhookConfig::new(url, secret()).unwrap().is_cleartext_off_host();
        assert!(flagged("http://hooks.example.com/events"));
        assert!(flagged("http://192.0.2.10:8080/events"));
        assert!(!flagged("https://hooks.example.com/events"));
        assert!(!flagged("http://127.0.0.1:9000/events"));
        assert!(!flagged("http://[::1]:9000/events"));
        assert!(!flagged("http://LocalHost/events"));
    }
}
