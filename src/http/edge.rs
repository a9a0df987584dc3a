//! The outermost middleware: request ids, the request timeout, the access log, and the
//! rendering of every error response into the problem envelope.
//!
//! Order of work for each request: take or make the request id and keep it in the log context
//! (`crate::log_context`: every line logged during the request carries it), run the rest of the
//! stack under the timeout, then render: a [`Problem`] left in the response extensions becomes
//! the envelope, and any other error status (404, 405, 413 from the body limit, the 500 of a
//! caught panic) becomes the generic problem for that status. Every response carries
//! `X-Request-Id`.
//!
//! It also sets what a client or intermediary may keep and how it may read a response
//! ([`protect`]): `/api` answers are never cached (they carry tokens, TOTP secrets and backup
//! codes), nothing is content-sniffed, and the documents a browser might open (problem bodies
//! and pages, the OpenAPI document) may load nothing and be framed by no one.

use super::problem::{Problem, ProblemKind};
use crate::log_context::in_request;
use crate::service::hashing::Traffic;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::{Layer, Service};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Largest accepted sum of header names and values. Larger heads that hyper still parses (up
/// to its ~400 KiB buffer) are answered 431 here, in the problem envelope.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Keeps an incoming id of 1..=128 visible ASCII characters; anything else is replaced.
pub fn accept_request_id(incoming: Option<&HeaderValue>) -> Option<HeaderValue> {
    let value = incoming?;
    let bytes = value.as_bytes();
    let valid = (1..=128).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic);
    valid.then(|| value.clone())
}

/// A fresh request id: a UUIDv7 (time-ordered) whose random bits come from the thread's
/// generator. `Uuid::now_v7` reads the operating system's generator, one `getrandom` system call
/// per request (BENCHMARKS.md); a request id is a label for logs, not a secret.
pub fn new_request_id() -> HeaderValue {
    let mut random = [0u8; 10];
    rand::fill(&mut random[..]);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut text);
    // Hex digits and hyphens: always a valid header value.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("request"))
}

/// Settings of the edge.
#[derive(Debug, Clone, Copy)]
pub struct EdgeConfig {
    pub request_timeout: Duration,
    /// Write the "request finished" line (status, latency) of every request. Off by default:
    /// it is the largest cost of a session introspection after the database read (see
    /// BENCHMARKS.md), and warnings and errors keep their request id either way.
    pub access_log: bool,
}

/// The edge as one tower layer wrapped around the whole router (see `http::router_with`), with
/// the request metrics of [`super::metrics`] outermost, so they count the status the client
/// gets. A hand-written service rather than `axum::middleware::from_fn`: each `from_fn` layer
/// clones and boxes the inner service and boxes two futures per request; here the inner
/// future is awaited inside the one boxed future of this layer (BENCHMARKS.md).
///
/// Every request is counted in `traffic` while it is in flight: the hashing pool gives way to
/// requests that are not waiting on a hash (see [`crate::service::hashing::Traffic`]).
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    config: EdgeConfig,
    traffic: Traffic,
}

impl EdgeLayer {
    pub fn new(config: EdgeConfig, traffic: Traffic) -> Self {
        Self { config, traffic }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            config: self.config,
            traffic: self.traffic.clone(),
        }
    }
}

/// The service of [`EdgeLayer`].
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    config: EdgeConfig,
    traffic: Traffic,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Error = Infallible> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The service that was polled ready answers; a clone takes its place (tower's rule).
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let config = self.config;
        let in_flight = self.traffic.enter();
        Box::pin(async move {
            let _in_flight = in_flight;
            let response = super::metrics::track(request, |request| edge(config, request, ready)).await;
            Ok(response)
        })
    }
}

async fn edge<S>(config: EdgeConfig, request: Request, mut inner: S) -> Response
where
    S: Service<Request, Error = Infallible>,
    S::Response: IntoResponse,
{
    let request_id = accept_request_id(request.headers().get(&X_REQUEST_ID)).unwrap_or_else(new_request_id);
    // A clone of the URI shares its bytes (no allocation), where the path as a String did not.
    let uri = request.uri().clone();
    let path = uri.path();
    // No span per request: the lines logged during it open one with its id (see
    // `crate::log_context`). Method and path go on the lines that need them: the access line
    // and the timeout warning.
    let method = request.method().clone();
    let work = async move {
        // Read only for the access line (a clock read per request otherwise).
        let started = config.access_log.then(Instant::now);
        let header_bytes: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let outcome = if header_bytes > MAX_HEADER_BYTES {
            Ok(Problem::new(
                ProblemKind::Http(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                "The request headers are larger than 32 KiB.",
            )
            .into_response())
        } else {
            tokio::time::timeout(config.request_timeout, async move {
                match inner.call(request).await {
                    Ok(response) => response.into_response(),
                    Err(never) => match never {},
                }
            })
            .await
        };
        let mut response = match outcome {
            Ok(response) => response,
            Err(_) => {
                in_request(|| {
                    tracing::warn!(
                        %method,
                        path = %path,
                        timeout_ms = config.request_timeout.as_millis() as u64,
                        "request timed out"
                    )
                });
                Problem::new(
                    ProblemKind::RequestTimeout,
                    "The request did not complete in time and was abandoned.",
                )
                .into_response()
            }
        };
        render_problem(&mut response, path);
        protect(&mut response, path);
        if config.access_log {
            in_request(|| {
                tracing::info!(
                    %method,
                    path = %path,
                    status = response.status().as_u16(),
                    latency_ms = started.map_or(0, |started| started.elapsed().as_millis() as u64),
                    "request finished"
                )
            });
        }
        response
    };
    // The id comes back from the log context as the response header: one value per request.
    let (mut response, request_id) = crate::log_context::scope(request_id, work).await;
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.unwrap_or_else(new_request_id));
    response
}

fn is_problem_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/problem+json"))
}

/// `Content-Security-Policy` of documents that need nothing beyond their own text.
pub const RESTRICTIVE_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Caching, sniffing and content-security headers, by path and content type.
fn protect(response: &mut Response, path: &str) {
    let documents = is_problem_json(response) || path.starts_with("/problems/") || path == "/api/openapi.json";
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if path == "/api" || path.starts_with("/api/") {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if documents {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(RESTRICTIVE_CSP),
        );
    }
}

/// Inside the request's log context: the problem body carries its request id.
fn render_problem(response: &mut Response, instance: &str) {
    let problem = match response.extensions_mut().remove::<Problem>() {
        Some(problem) => problem,
        None if response.status().as_u16() >= 400 && !is_problem_json(response) => {
            Problem::for_status(response.status())
        }
        None => return,
    };
    let request_id = crate::log_context::request_id().unwrap_or_default();
    let body = problem.body(instance, &request_id);
    let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    *response.status_mut() = problem.kind.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.remove(header::CONTENT_LENGTH);
    if let Some(seconds) = problem.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    *response.body_mut() = Body::from(json);
}

/// The response of a handler that panicked: logged here (inside the request span, so with the
/// request id), rendered as a generic 500 by [`edge`]. The panic payload is not logged: it may
/// quote request data.
pub fn panic_response(_payload: Box<dyn Any + Send + 'static>) -> Response {
    in_request(|| tracing::error!("handler panicked"));
    Problem::internal().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fresh_request_ids_are_distinct_uuid_v7_in_time_order() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ids: Vec<HeaderValue> = (0..1000).map(|_| new_request_id()).collect();
        let ids: Vec<&str> = ids.iter().map(|id| id.to_str().unwrap()).collect();
        let distinct: std::collections::HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len());
        for &id in &ids {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 7, "{id}");
            assert_eq!(id, parsed.hyphenated().to_string(), "lower-case, hyphenated");
            let (seconds, nanos) = parsed.get_timestamp().unwrap().to_unix();
            let millis = seconds * 1000 + u64::from(nanos) / 1_000_000;
            assert!(
                millis >= before && millis <= before + 60_000,
                "{id}: {millis} vs {before}"
            );
        }
    }

    #[test]
    fn request_ids_of_1_to_128_visible_ascii_are_kept() {
        let keep = |s: &str| {
            accept_request_id(Some(&HeaderValue::from_str(s).unwrap())).map(|id| id.to_str().unwrap().to_owned())
        };
        assert_eq!(keep("abc-123").as_deref(), Some("abc-123"));
        assert_eq!(keep(&"x".repeat(128)).as_deref(), Some("x".repeat(128).as_str()));
        assert_eq!(keep(&"x".repeat(129)), None);
        assert_eq!(keep(""), None);
        assert_eq!(keep("has space"), None);
        assert_eq!(accept_request_id(None), None);
    }

    proptest! {
        #[test]
        fn accepted_ids_are_always_short_visible_ascii(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let accepted = HeaderValue::from_bytes(&bytes).ok().and_then(|value| accept_request_id(Some(&value)));
            if let Some(id) = accepted {
                prop_assert!(!id.is_empty() && id.len() <= 128);
                prop_assert!(id.as_bytes().iter().all(u8::is_ascii_graphic));
                prop_assert!(id.to_str().is_ok());
            }
        }
    }
}
