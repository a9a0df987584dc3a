//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//!
//! Handlers declare their own success and specific problem responses; `complete` adds what
//! every operation shares (500, 503, and for JSON bodies 400/408/413/415, for authenticated
//! routes 401, for authenticated writes the per-address 429) and the `Retry-After` header of
//! every 429, so no route can forget them. The document is snapshot-tested.

use super::AppState;
use super::problem::ProblemBody;
use super::routes::{auth, mfa, ops, profile, sessions};
use std::sync::LazyLock;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Object, OpenApi as Document, Ref, RefOr, Response, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera",
        description = "Accounts, sessions and TOTP multi-factor authentication with one-time backup codes. \
Every error is an RFC 7807 problem (`application/problem+json`) with the legacy members `error` and \
`details` and the `requestId` of the request.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(ProblemBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "Registration, login and sessions"),
        (name = "profile", description = "The signed-in user's profile"),
        (name = "mfa", description = "TOTP multi-factor authentication and backup codes"),
        (name = "operations", description = "Health, readiness, this document, problem types"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A session token (`tsr_...`) from a login."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "__Host-tessera_session",
                "The session cookie set at login for the web page; state-changing requests must be same-origin.",
            ))),
        );
    }
}

/// All routes with their documentation, before state and layers.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::login_mfa))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::session))
        .routes(routes!(profile::profile))
        .routes(routes!(profile::change_password))
        .routes(routes!(profile::security_events))
        .routes(routes!(sessions::list_sessions))
        .routes(routes!(sessions::end_session))
        .routes(routes!(sessions::revoke_other_sessions))
        .routes(routes!(mfa::status))
        .routes(routes!(mfa::setup))
        .routes(routes!(mfa::verify))
        .routes(routes!(mfa::regenerate_backup_codes))
        .routes(routes!(mfa::disable))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::openapi_json))
        .routes(routes!(ops::problem_type))
}

fn problem_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build(),
    )
}

/// The `Retry-After` header of a 429.
fn retry_after_header() -> Header {
    HeaderBuilder::new()
        .schema(Some(Object::with_type(Type::Integer)))
        .description(Some(
            "Seconds to wait before retrying; the same number as `retry_after` in the body.",
        ))
        .build()
}

/// Adds the problem responses every operation shares.
fn complete(mut doc: Document) -> Document {
    for item in doc.paths.paths.values_mut() {
        let writes = [&mut item.post, &mut item.delete].into_iter().flatten();
        let operations = [&mut item.get].into_iter().flatten().map(|op| (op, false));
        for (operation, write) in operations.chain(writes.map(|op| (op, true))) {
            let has_body = operation.request_body.is_some();
            let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let responses = &mut operation.responses.responses;
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem_response(description));
            };
            if has_body {
                add(
                    "400",
                    "The body is not JSON of the documented shape, or a member is invalid (`details` names it).",
                );
                add(
                    "408",
                    "The body did not arrive within the body-read timeout (10 s by default).",
                );
                add("413", "The body is larger than 16 KiB.");
                add("415", "The body is not `application/json`.");
            }
            if secured {
                add("401", "Authentication is required or the supplied token is invalid.");
            }
            if secured && write {
                add("429", "Too many requests from this address (`Retry-After`).");
            }
            add("500", "Internal server error");
            add("503", "The database is unavailable or the request timed out.");
            if let Some(RefOr::T(throttled)) = responses.get_mut("429") {
                throttled
                    .headers
                    .entry("Retry-After".to_owned())
                    .or_insert_with(|| RefOr::T(retry_after_header()));
            }
        }
    }
    doc
}

/// The document as served at `/api/openapi.json`.
pub fn document() -> Document {
    complete(api_router().into_openapi())
}

/// The serialised document, built once.
pub static DOCUMENT_JSON: LazyLock<String> =
    LazyLock::new(|| document().to_pretty_json().unwrap_or_else(|_| "{}".to_owned()));
