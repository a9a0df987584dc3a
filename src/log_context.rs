//! The request a log line belongs to.
//!
//! Every line logged while a request is served (a warning, an error, the access line) carries
//! that request's id, as the `request{request_id=...}` span around the line. The span is made
//! only for the lines that are written: the HTTP edge runs each request inside [`scope`], which
//! keeps the id in a task-local, and the code that logs during a request writes through
//! [`in_request`], which opens the span around that one line. A span per request instead cost
//! every request ~2,500 instructions of span bookkeeping and field formatting (about 4 % of a
//! session introspection) for the rare request that logs (BENCHMARKS.md).
//!
//! A line logged during a request without [`in_request`] has no request id: log through it.
//! The security events a request records take the same id ([`request_id`], read by the
//! `http::extract::Meta` extractor).

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// Runs `future` as the request `request_id`.
pub async fn scope<F: Future>(request_id: Arc<str>, future: F) -> F::Output {
    REQUEST_ID.scope(request_id, future).await
}

/// The id of the request being served on this task, if any.
pub fn request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// Runs `log` (a `tracing` macro) inside the span of the current request: the line carries its
/// request id. Outside a request it runs as is.
pub fn in_request<T>(log: impl FnOnce() -> T) -> T {
    match REQUEST_ID.try_with(|id| tracing::info_span!("request", request_id = %id)) {
        Ok(span) => span.in_scope(log),
        Err(_) => log(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_request_id_is_known_inside_the_scope_only() {
        assert_eq!(request_id(), None);
        let inside = scope(Arc::from("req-1"), async {
            tokio::task::yield_now().await;
            request_id()
        })
        .await;
        assert_eq!(inside.as_deref(), Some("req-1"));
        assert_eq!(request_id(), None);
        assert_eq!(in_request(|| 7), 7);
    }
}
