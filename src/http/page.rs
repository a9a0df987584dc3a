//! The end-user web page: one HTML shell, one script module, one style sheet and an icon,
//! embedded in the binary from `web/` and served at `/` and `/assets/*`.
//!
//! The page is static: it talks to the JSON API with the session cookie, so it holds no rules
//! and this module only serves bytes with the headers that keep them safe. The one dynamic part
//! is the product name (the operator's MFA issuer), escaped into the shell. Page routes are not
//! API routes: they stay out of the OpenAPI document, and like `/healthz` they skip the per-IP
//! limit (three static files per page load would otherwise eat a login's budget).
//! Unknown paths under `/assets/` are the ordinary problem 404.

use super::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");
const ICON_SVG: &str = include_str!("../../web/icon.svg");

/// Where the issuer's name goes in the shell.
const PRODUCT_PLACEHOLDER: &str = "{{product}}";

/// No inline script or style, nothing from another origin, no framing. `blob:` images carry
/// the QR code, which the page turns from the setup response's SVG text into an image (an
/// `<img>` never runs script, unlike SVG markup put into the document).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// The routes of the page, merged beside the API under the same edge.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/assets/icon.svg", get(icon_svg))
}

async fn index(State(state): State<AppState>) -> Response {
    let product = escape_html(&state.service.config().mfa_issuer);
    page_response(
        "text/html; charset=utf-8",
        INDEX_HTML.replace(PRODUCT_PLACEHOLDER, &product),
    )
}

async fn app_js() -> Response {
    page_response("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    page_response("text/css; charset=utf-8", APP_CSS)
}

async fn icon_svg() -> Response {
    page_response("image/svg+xml", ICON_SVG)
}

/// A page response with its security headers. `no-cache` (revalidate every time) rather than
/// long caching: the asset names carry no version, and a new binary must never run an old script.
fn page_response(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-cache"),
        (HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Escapes text for an HTML text node or a quoted attribute.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_are_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_html("Acme Corp"), "Acme Corp");
    }
}
