//! `/api/user/profile*`: the profile, password change and the security-event log.

use super::{SuccessMessage, UserDto};
use crate::clock::rfc3339;
use crate::http::AppState;
use crate::http::extract::{ApiJson, Auth, Meta};
use crate::http::problem::{Problem, ProblemBody};
use crate::service::accounts::UserView;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    /// 8 to 256 characters; not a commonly used or breached password (checked without regard
    /// to case against the 30,000 most common), not containing the local part of the email.
    #[schema(min_length = 8, max_length = 256)]
    pub new_password: String,
    /// Required while MFA is enabled: a TOTP code or an unused backup code (consumed).
    /// Aliases: `totp_code`, `mfa_code`, `otp`.
    #[serde(default, alias = "totp_code", alias = "mfa_code", alias = "otp")]
    #[schema(
        pattern = "^[0-9]{6}$|^[a-km-np-zA-KM-NP-Z2-9]{4}-?[a-km-np-zA-KM-NP-Z2-9]{4}-?[a-km-np-zA-KM-NP-Z2-9]{5}$"
    )]
    pub code: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// How many events, newest first (1 to 200, default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SecurityEvent {
    /// What happened, e.g. `login_succeeded`, `login_failed`, `mfa_enabled`, `backup_code_used`,
    /// `mfa_lockout`, `password_changed`.
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(format = DateTime)]
    pub at: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SecurityEvents {
    pub events: Vec<SecurityEvent>,
}

/// The signed-in user's profile.
#[utoipa::path(get, path = "/api/user/profile", tag = "profile",
    security(("session_token" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The profile.", body = UserDto)))]
pub async fn profile(Auth(auth): Auth) -> Json<UserDto> {
    Json(UserView::from(&auth.user).into())
}

/// Change the password. Every other session of the user is revoked.
#[utoipa::path(post, path = "/api/user/profile/password", tag = "profile", request_body = ChangePasswordRequest,
    security(("session_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The password is changed.", body = SuccessMessage),
        (status = 400, description = "Invalid request, or the current password or code is wrong.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Cookie-authenticated request from another origin, or authenticator codes are suspended after 50 consecutive failures (a backup code still works).", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The password was changed by another request meanwhile; nothing changed.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed password or code attempts, or re-authentications, for this account, or too many requests from this address (`Retry-After`).", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn change_password(
    State(state): State<AppState>,
    Auth(auth): Auth,
    Meta(meta): Meta,
    ApiJson(body): ApiJson<ChangePasswordRequest>,
) -> Result<Json<SuccessMessage>, Problem> {
    state
        .service
        .change_password(&auth, body.current_password, body.new_password, body.code, &meta)
        .await?;
    Ok(Json(SuccessMessage::new(
        "Password changed. Other sessions were signed out.",
    )))
}

/// The security events of the signed-in user, newest first.
#[utoipa::path(get, path = "/api/user/profile/security-events", tag = "profile", params(EventsQuery),
    security(("session_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The events.", body = SecurityEvents),
        (status = 400, description = "`limit` is not an integer from 1 to 200.", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn security_events(
    State(state): State<AppState>,
    Auth(auth): Auth,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<SecurityEvents>, Problem> {
    let Ok(Query(query)) = query else {
        return Err(Problem::validation(BTreeMap::from([(
            "limit".to_owned(),
            "must be an integer between 1 and 200".to_owned(),
        )])));
    };
    let events = state.service.security_events(&auth, query.limit).await?;
    Ok(Json(SecurityEvents {
        events: events
            .into_iter()
            .map(|event| SecurityEvent {
                kind: event.kind,
                at: rfc3339(event.at),
                ip: event.ip,
                user_agent: event.user_agent,
                request_id: event.request_id,
            })
            .collect(),
    }))
}
