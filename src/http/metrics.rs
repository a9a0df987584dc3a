//! Request metrics: `tessera_http_requests_total{route, status_class}` and
//! `tessera_http_request_duration_seconds{route}`, counted by one middleware around every route.
//!
//! The route label is the matched template (`/api/auth/session`, `/api/user/sessions/{id}`),
//! never the raw path: a scanner probing random paths lands in the one `unmatched` series
//! instead of creating a series per path.
//!
//! This runs on the hot path, so the cost is kept to a flag check when metrics are off, and to a
//! clock read, a read-locked map lookup and two atomic updates when on: the counter and
//! histogram handles of each route are registered once and reused, so a request allocates
//! nothing here.

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::response::Response;
use metrics::{Counter, Histogram};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

/// The route label of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// The label of each status class, indexed by the first digit of the status minus one.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The handles of one route template; a status class's counter is registered when first seen,
/// so a route that never failed shows no `5xx` series.
struct RouteHandles {
    route: &'static str,
    requests: [OnceLock<Counter>; 5],
    duration: Histogram,
}

impl RouteHandles {
    fn new(route: &'static str) -> Self {
        Self {
            route,
            requests: Default::default(),
            duration: metrics::histogram!("tessera_http_request_duration_seconds", "route" => route),
        }
    }

    fn observe(&self, status: StatusCode, seconds: f64) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[class]
            .get_or_init(|| {
                metrics::counter!(
                    "tessera_http_requests_total",
                    "route" => self.route,
                    "status_class" => STATUS_CLASSES[class]
                )
            })
            .increment(1);
        self.duration.record(seconds);
    }
}

/// Handles by route template. The templates are the router's, a fixed and small set, so the
/// map (and the strings leaked for its keys, once per template) stays bounded.
fn routes() -> &'static RwLock<HashMap<&'static str, RouteHandles>> {
    static ROUTES: OnceLock<RwLock<HashMap<&'static str, RouteHandles>>> = OnceLock::new();
    ROUTES.get_or_init(Default::default)
}

fn observe(route: &str, status: StatusCode, seconds: f64) {
    let map = routes();
    {
        let read = map.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(handles) = read.get(route) {
            handles.observe(status, seconds);
            return;
        }
    }
    let mut write = map.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !write.contains_key(route) {
        let route: &'static str = if route == UNMATCHED {
            UNMATCHED
        } else {
            Box::leak(route.to_owned().into_boxed_str())
        };
        write.insert(route, RouteHandles::new(route));
    }
    if let Some(handles) = write.get(route) {
        handles.observe(status, seconds);
    }
}

/// Runs `next` (the rest of the edge, see [`super::edge::EdgeLayer`]), timing the request and
/// counting its response under its route template and status class. Does nothing while
/// metrics are off.
///
/// The edge wraps the router from outside (a layer inside the router is cloned, boxed and
/// called per route and request), so the route template is not known here: a [`RouteSlot`]
/// travels with the request, [`RouteLabel`] (the one layer inside the router, on every route)
/// fills it as the route is entered, and it is read here whatever the outcome (a response, a
/// problem, a timeout, a caught panic). A request that matched no route leaves it empty.
pub async fn track<F, Fut>(mut request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if !crate::metrics::enabled() {
        return next(request).await;
    }
    let slot = RouteSlot::default();
    request.extensions_mut().insert(slot.clone());
    let started = Instant::now();
    let response = next(request).await;
    let route = slot.0.get().map_or(UNMATCHED, MatchedPath::as_str);
    observe(route, response.status(), started.elapsed().as_secs_f64());
    response
}

/// Where [`RouteLabel`] leaves the matched route template for [`track`].
#[derive(Debug, Clone, Default)]
pub struct RouteSlot(Arc<OnceLock<MatchedPath>>);

/// The layer of [`RouteLabel`], applied inside the router with `route_layer`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteLabelLayer;

impl<S> Layer<S> for RouteLabelLayer {
    type Service = RouteLabel<S>;

    fn layer(&self, inner: S) -> RouteLabel<S> {
        RouteLabel { inner }
    }
}

/// Copies the matched route template into the request's [`RouteSlot`] (present only while
/// metrics are on), then calls the route: no future of its own, nothing allocated.
#[derive(Debug, Clone)]
pub struct RouteLabel<S> {
    inner: S,
}

impl<S> Service<Request> for RouteLabel<S>
where
    S: Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if let (Some(slot), Some(route)) = (
            request.extensions().get::<RouteSlot>(),
            request.extensions().get::<MatchedPath>(),
        ) {
            let _ = slot.0.set(route.clone());
        }
        self.inner.call(request)
    }
}
