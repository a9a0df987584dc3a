//! Operations: liveness, readiness, the OpenAPI document and the problem-type pages.

use super::IpRateLimit;
use crate::http::AppState;
use crate::http::openapi::DOCUMENT_JSON;
use crate::http::problem::{Problem, ProblemBody, ProblemKind};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

// `/healthz` and `/readyz` are the only unauthenticated routes without the per-IP limit: load
// balancers and orchestrators poll them from a few fixed addresses, and they do trivial work.

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive.", body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok".into() })
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready.", body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> Result<axum::Json<Health>, Problem> {
    state.service.ready().await?;
    Ok(axum::Json(Health { status: "ok".into() }))
}

/// This OpenAPI 3.1 document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI document.", content_type = "application/json", body = Object),
        (status = 429, description = "Too many requests from this address.", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn openapi_json(_limit: IpRateLimit) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT_JSON.as_str())
}

/// A short page explaining a problem type (`type` of an error body).
#[utoipa::path(get, path = "/problems/{slug}", tag = "operations",
    params(("slug" = String, Path, description = "The last segment of a problem `type`.")),
    responses(
        (status = 200, description = "The explanation, as plain text.", content_type = "text/plain", body = String),
        (status = 404, description = "No such problem type.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address.", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn problem_type(_limit: IpRateLimit, Path(slug): Path<String>) -> Result<impl IntoResponse, Problem> {
    let kind = ProblemKind::from_slug(&slug).ok_or_else(|| Problem::for_status(axum::http::StatusCode::NOT_FOUND))?;
    let text = format!(
        "{title}\n\nType: /problems/{slug}\nStatus: {status}\n\n{explanation}\n",
        title = kind.title(),
        status = kind.status().as_u16(),
        explanation = kind.explanation(),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}
