//! Handlers, grouped by resource, with the request and response shapes they document.

pub mod auth;
pub mod mfa;
pub mod ops;
pub mod profile;
pub mod sessions;

use super::AppState;
use super::extract::{client_ip, peer_ip};
use super::problem::{Problem, ProblemKind};
use crate::clock::rfc3339;
use crate::service::accounts::UserView;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Serialize;
use utoipa::ToSchema;

/// An account as the API shows it.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
#[schema(as = User)]
pub struct UserDto {
    /// The account id (UUIDv7).
    pub id: String,
    /// The normalised (trimmed, lower-cased) email.
    pub email: String,
    pub mfa_enabled: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<UserView> for UserDto {
    fn from(user: UserView) -> Self {
        Self {
            id: user.id,
            email: user.email,
            mfa_enabled: user.mfa_enabled,
            created_at: rfc3339(user.created_at),
        }
    }
}

/// `{success: true, message}`.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct SuccessMessage {
    pub success: bool,
    pub message: String,
}

impl SuccessMessage {
    pub fn new(message: &str) -> Self {
        Self {
            success: true,
            message: message.to_owned(),
        }
    }
}

/// Guard of the unauthenticated endpoints: one token of the client address's bucket, or 429.
/// Declared first among a handler's extractors, so a refused request costs no body parsing.
pub struct IpRateLimit;

impl FromRequestParts<AppState> for IpRateLimit {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(ip) = client_ip(&parts.headers, peer_ip(parts), &state.http.trusted_proxies) else {
            return Ok(IpRateLimit);
        };
        let now = state.service.clock().now().unix_timestamp_nanos() as f64 / 1e9;
        match state.limiter.check(ip, now) {
            Ok(()) => Ok(IpRateLimit),
            Err(retry_after) => Err(Problem {
                retry_after: Some(retry_after),
                ..Problem::new(
                    ProblemKind::RateLimited,
                    format!("Too many requests from this address; try again in {retry_after} seconds."),
                )
            }),
        }
    }
}
