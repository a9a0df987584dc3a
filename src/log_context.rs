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

use axum::http::HeaderValue;
use std::future::Future;

tokio::task_local! {
    /// Kept as the header value it is answered with (the edge checks it is visible ASCII).
    static REQUEST_ID: HeaderValue;
}

/// Runs `future` as the request `request_id`; gives the id back with the output, for the
/// response header (the same value, neither copied nor shared).
pub async fn scope<F: Future>(request_id: HeaderValue, future: F) -> (F::Output, Option<HeaderValue>) {
    let mut scoped = std::pin::pin!(REQUEST_ID.scope(request_id, future));
    let output = scoped.as_mut().await;
    (output, scoped.as_mut().take_value())
}

/// The id of the request being served on this task, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| text(id).to_owned()).ok()
}

fn text(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("")
}

/// Runs `log` (a `tracing` macro) inside the span of the current request: the line carries its
/// request id. Outside a request it runs as is.
pub fn in_request<T>(log: impl FnOnce() -> T) -> T {
    match REQUEST_ID.try_with(|id| tracing::info_span!("request", request_id = %text(id))) {
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
        let (inside, given_back) = scope(HeaderValue::from_static("req-1"), async {
            tokio::task::yield_now().await;
            request_id()
        })
        .await;
        assert_eq!(inside.as_deref(), Some("req-1"));
        assert_eq!(given_back, Some(HeaderValue::from_static("req-1")));
        assert_eq!(request_id(), None);
        assert_eq!(in_request(|| 7), 7);
    }
}
