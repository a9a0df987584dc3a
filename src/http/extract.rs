//! Extractors whose rejections are our problems: JSON bodies, the authenticated session,
//! the client's address and the audit metadata of a request.

use super::AppState;
use super::client_addr::client_ip;
use super::problem::{Problem, ProblemKind};
use crate::service::RequestMeta;
use crate::service::accounts::Authenticated;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Name of the session cookie of the web page.
pub const SESSION_COOKIE: &str = "__Host-tessera_session";

/// A JSON body. Wrong content type is 415, an oversized body 413, broken JSON 400, and a
/// missing or mistyped member a 400 validation problem whose `details` names the member.
/// Error texts never quote the submitted values (they may be passwords or codes).
pub struct ApiJson<T>(pub T);

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Turns a serde error into a problem without echoing input values.
fn json_problem(err: serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let path = err.path().to_string();
    let inner = err.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return Problem::new(
            ProblemKind::MalformedBody,
            format!(
                "The body is not valid JSON (line {}, column {}).",
                inner.line(),
                inner.column()
            ),
        );
    }
    let message = inner.to_string();
    let (member, text) = if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        (join_path(&path, name), "is required".to_owned())
    } else if let Some(rest) = message.strip_prefix("duplicate field `") {
        let name = rest.split('`').next().unwrap_or_default();
        (join_path(&path, name), "is given more than once".to_owned())
    } else if message.starts_with("invalid type") {
        let expected = message
            .split(", expected ")
            .nth(1)
            .and_then(|tail| tail.split(" at line").next())
            .unwrap_or("another type");
        (path.clone(), format!("has the wrong type (expected {expected})"))
    } else {
        (
            if path == "." { "body".to_owned() } else { path.clone() },
            "has an invalid value".to_owned(),
        )
    };
    Problem::validation(BTreeMap::from([(member, text)]))
}

fn join_path(path: &str, name: &str) -> String {
    if path == "." || path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

impl<T> FromRequest<AppState> for ApiJson<T>
where
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(request.headers()) {
            return Err(Problem::new(
                ProblemKind::Http(axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE),
                "The request body must be JSON with Content-Type: application/json.",
            ));
        }
        // The whole body must arrive within the body-read timeout, however it trickles in: a
        // client that sends a byte now and then must not hold a connection slot for the
        // length of the request timeout. The unread rest makes hyper close the connection.
        let timeout = state.http.body_read_timeout;
        let bytes = tokio::time::timeout(timeout, Bytes::from_request(request, state))
            .await
            .map_err(|_| {
                Problem::new(
                    ProblemKind::BodyReadTimeout,
                    format!(
                        "The request body did not arrive within {} seconds.",
                        timeout.as_secs_f64()
                    ),
                )
            })?
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::for_status(rejection.status())
                } else {
                    Problem::new(ProblemKind::MalformedBody, "The request body could not be read.")
                }
            })?;
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => return Err(Problem::new(ProblemKind::MalformedBody, "A JSON body is required.")),
            // Serde would accept an array for a struct (as a tuple); the API takes objects only.
            Some(b'{') => {}
            Some(_) => {
                let details = BTreeMap::from([("body".to_owned(), "must be a JSON object".to_owned())]);
                return Err(Problem::validation(details));
            }
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(json_problem)?;
        deserializer
            .end()
            .map_err(|_| Problem::new(ProblemKind::MalformedBody, "Unexpected data after the JSON body."))?;
        Ok(ApiJson(value))
    }
}

/// Where the session token came from: the cookie needs the same-origin check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Bearer,
    Cookie,
}

/// A request authenticated by a live session.
pub struct Auth(pub Authenticated);

/// The token of an `Authorization: Bearer` header, borrowed from the header (no copy).
fn bearer_token(headers: &HeaderMap) -> Option<Result<&str, ()>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let parsed = value.to_str().ok().and_then(|text| {
        let (scheme, token) = text.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    Some(parsed.ok_or(()))
}

pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// A cookie-authenticated state-changing request must come from our own origin: the browser
/// says so in `Sec-Fetch-Site`, or (older browsers) its `Origin` names the host it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "same-origin";
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        _ => false,
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        // Authenticated writes (password re-authentication, code checks, logout) share the
        // client's per-address budget with the unauthenticated routes: a stolen or scripted
        // session must not be an unmetered way to make the server hash. Reads stay unmetered,
        // they are the host application's hot path.
        if !safe {
            super::rate_limit::take_token(parts, state)?;
        }
        let (token, source) = request_token(&parts.headers)?;
        let authenticated = state.service.authenticate(token).await?;
        if source == TokenSource::Cookie && !safe && !same_origin(&parts.headers) {
            return Err(Problem::new(
                ProblemKind::CrossSiteRequest,
                "Requests authenticated by the session cookie must come from the same origin.",
            ));
        }
        Ok(Auth(authenticated))
    }
}

/// The session token of a request: the bearer token, else the session cookie.
fn request_token(headers: &HeaderMap) -> Result<(&str, TokenSource), Problem> {
    match bearer_token(headers) {
        Some(Ok(token)) => Ok((token, TokenSource::Bearer)),
        Some(Err(())) => Err(crate::service::ServiceError::Unauthenticated.into()),
        None => match session_cookie(headers) {
            Some(token) => Ok((token, TokenSource::Cookie)),
            None => Err(crate::service::ServiceError::Unauthenticated.into()),
        },
    }
}

/// The live session of a read-only request and the public facts of its user, read lean
/// ([`crate::service::Service::introspect`]): for `GET /api/auth/session`, the host
/// applications' hot path. Same tokens and rules as [`Auth`]; only for safe methods, so neither
/// the rate limit nor the same-origin check applies.
pub struct SessionAuth(pub crate::store::SessionSummary);

impl FromRequestParts<AppState> for SessionAuth {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (token, _) = request_token(&parts.headers)?;
        Ok(SessionAuth(state.service.introspect(token).await?))
    }
}

tokio::task_local! {
    /// The client address of the connection whose task this is (see [`with_peer`]).
    static PEER: SocketAddr;
}

/// Runs a connection's future (every request it serves is handled on its task) with its
/// client's address at hand for [`peer_ip`]: set once per connection, where a `ConnectInfo`
/// request extension cost every request an allocation and a map insertion (BENCHMARKS.md).
pub async fn with_peer<F: std::future::Future>(peer: SocketAddr, connection: F) -> F::Output {
    PEER.scope(peer, connection).await
}

/// The client address of the connection: from [`with_peer`], or from a `ConnectInfo` request
/// extension (axum's own way, for a router served by other means).
pub fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    PEER.try_with(SocketAddr::ip).ok().or_else(|| {
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip())
    })
}

/// Audit metadata of a request: client address, user agent, request id. Never rejects.
pub struct Meta(pub RequestMeta);

impl FromRequestParts<AppState> for Meta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let ip = client_ip(&parts.headers, peer_ip(parts), &state.http.trusted_proxies);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().filter(|c| !c.is_control()).take(512).collect());
        // The edge runs every request in its log context (`crate::log_context::scope`).
        let request_id = crate::log_context::request_id();
        Ok(Meta(RequestMeta {
            ip: ip.map(|ip| ip.to_string()),
            user_agent,
            request_id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn same_origin_uses_fetch_metadata_then_origin() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://a"),
            ("host", "a")
        ])));
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080")])));
    }
}
