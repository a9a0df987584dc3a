//! The HTTP edge: routes, extractors, problems, request ids, cookies and the OpenAPI document.
//!
//! Handlers are thin: extract, call one service function, shape the response. Everything that
//! can fail becomes a [`problem::Problem`], rendered by [`edge::EdgeLayer`].
//!
//! - [`edge`]: request ids, timeout, access log, problem rendering, panic response.
//! - [`problem`]: the RFC 7807 envelope and the one mapping from service errors.
//! - [`extract`]: JSON bodies, authentication (bearer or cookie), client address, audit metadata.
//! - [`client_addr`]: the client's address behind trusted proxies, and the key it is counted under.
//! - [`rate_limit`]: per-address token buckets for unauthenticated endpoints and authenticated writes.
//! - [`routes`]: the handlers with their OpenAPI annotations.
//! - [`openapi`]: the generated document and what is added to every operation.
//! - [`page`]: the end-user web page (embedded static files over the JSON API).
//! - [`metrics`]: request counts and durations by route template (when metrics are enabled).

pub mod client_addr;
pub mod edge;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod problem;
pub mod rate_limit;
pub mod routes;

use crate::service::Service;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::Response;
use client_addr::IpRange;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tower_http::catch_panic::CatchPanicLayer;

/// Largest accepted request body (16 KiB).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Settings of the HTTP layer (their defaults are in `config.rs`, the one table of settings).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub request_timeout: Duration,
    /// Time a client has to send a whole request body (408 after it).
    pub body_read_timeout: Duration,
    pub trusted_proxies: Vec<IpRange>,
    pub ip_rate_limit_per_minute: u32,
    /// One info line per request (see [`edge::EdgeConfig::access_log`]).
    pub access_log: bool,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub http: Arc<HttpSettings>,
    pub limiter: Arc<rate_limit::RateLimiter>,
}

impl AppState {
    pub fn new(service: Arc<Service>, http: HttpSettings) -> Self {
        let limiter = Arc::new(rate_limit::RateLimiter::new(http.ip_rate_limit_per_minute));
        Self {
            service,
            http: Arc::new(http),
            limiter,
        }
    }
}

/// The whole application: the edge around the router, one service for
/// [`crate::server::run`].
pub fn router(state: AppState) -> impl App {
    router_with(state, Router::new())
}

/// What [`router`] returns: a cloneable service answering every request.
pub trait App:
    tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static> + Clone + Send + Sync + 'static
{
}

impl<S> App for S where
    S: tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The application with `extra` routes merged in under the same edge (tests use this to
/// mount a handler that panics or blocks).
pub fn router_with(state: AppState, extra: Router<AppState>) -> impl App {
    let (api, _) = openapi::api_router().split_for_parts();
    let edge_config = edge::EdgeConfig {
        request_timeout: state.http.request_timeout,
        access_log: state.http.access_log,
    };
    // The edge and its two helpers wrap the router once, from outside: a layer added with
    // `Router::layer` is applied to every route and cloned, boxed and called per request at each
    // level (BENCHMARKS.md: 13 boxed clones per introspection with four such layers). Inside the
    // router only `RouteLabel` remains, which tells the metrics the route template.
    let traffic = state.service.traffic().clone();
    let app = api
        .merge(page::router())
        .merge(extra)
        .route_layer(metrics::RouteLabelLayer)
        .with_state(state);
    tower::ServiceBuilder::new()
        // Outermost: the edge, with the metrics around it (they count the status the client
        // gets: problems, timeouts, panics).
        .layer(edge::EdgeLayer::new(edge_config, traffic))
        .layer(CatchPanicLayer::custom(edge::panic_response))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .service(app)
}
