//! `/api/user/profile/sessions*`: the signed-in user's sessions, listed and ended.

use super::auth::session_cookie;
use crate::clock::rfc3339;
use crate::http::AppState;
use crate::http::extract::{Auth, Meta};
use crate::http::problem::{Problem, ProblemBody};
use crate::service::ServiceError;
use crate::service::sessions::{EndedSession, SessionView};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One live session of the signed-in user.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ListedSession {
    /// Names the session to end it: a random UUID, neither the token nor derived from it.
    #[schema(format = "uuid")]
    pub id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Last use (updated at most once a minute); the idle timeout (30 minutes) runs from here.
    #[schema(format = DateTime)]
    pub last_seen_at: String,
    /// Absolute end of the session.
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// Client address of the login that opened the session.
    pub ip: Option<String>,
    /// User agent of the login that opened the session.
    pub user_agent: Option<String>,
    /// True when the session was opened with a second factor.
    pub mfa: bool,
    /// True for the session this request is authenticated by.
    pub current: bool,
}

impl From<SessionView> for ListedSession {
    fn from(session: SessionView) -> Self {
        Self {
            id: session.id,
            created_at: rfc3339(session.created_at),
            last_seen_at: rfc3339(session.last_seen_at),
            expires_at: rfc3339(session.expires_at),
            ip: session.ip,
            user_agent: session.user_agent,
            mfa: session.mfa,
            current: session.current,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    /// Newest first; at most 100 (the oldest session is ended when a login would exceed that).
    pub sessions: Vec<ListedSession>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RevokedSessions {
    /// How many live sessions were ended.
    pub revoked: u64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionPath {
    /// The `id` of one of the user's sessions, from the list.
    #[param(format = "uuid")]
    pub id: String,
}

/// The signed-in user's live sessions, newest first.
#[utoipa::path(get, path = "/api/user/profile/sessions", tag = "profile",
    security(("session_token" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The sessions; `current` marks the calling one.", body = SessionList)))]
pub async fn list_sessions(State(state): State<AppState>, Auth(auth): Auth) -> Result<Json<SessionList>, Problem> {
    let sessions = state.service.list_sessions(&auth).await?;
    Ok(Json(SessionList {
        sessions: sessions.into_iter().map(ListedSession::from).collect(),
    }))
}

/// End one of the signed-in user's sessions.
///
/// Ending the calling session is a logout (the session cookie is cleared too).
#[utoipa::path(delete, path = "/api/user/profile/sessions/{id}", tag = "profile", params(SessionPath),
    security(("session_token" = []), ("session_cookie" = [])),
    responses(
        (status = 204, description = "The session is ended."),
        (status = 403, description = "Cookie-authenticated request from another origin.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "The id names none of this user's live sessions (also when it is not a UUID, or another user's); nothing was changed.", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn end_session(
    State(state): State<AppState>,
    Auth(auth): Auth,
    Meta(meta): Meta,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    // A segment that does not even decode (invalid UTF-8) names no session either.
    let Ok(Path(id)) = id else {
        return Err(ServiceError::SessionNotFound.into());
    };
    let ended = state.service.end_session(&auth, &id, &meta).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if ended == EndedSession::Current
        && let Some(cookie) = session_cookie("", 0)
    {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// End every session of the signed-in user except the calling one (pending `mfa_token`s too).
#[utoipa::path(post, path = "/api/user/profile/sessions/revoke-others", tag = "profile",
    security(("session_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The other sessions are ended.", body = RevokedSessions),
        (status = 403, description = "Cookie-authenticated request from another origin.", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn revoke_other_sessions(
    State(state): State<AppState>,
    Auth(auth): Auth,
    Meta(meta): Meta,
) -> Result<Json<RevokedSessions>, Problem> {
    let revoked = state.service.revoke_other_sessions(&auth, &meta).await?;
    Ok(Json(RevokedSessions { revoked }))
}
