//! `/api/auth/*`: registration, login (both steps), logout, session introspection.

use super::{IpRateLimit, UserDto};
use crate::clock::rfc3339;
use crate::http::AppState;
use crate::http::extract::{ApiJson, Auth, Meta, SESSION_COOKIE, SessionAuth};
use crate::http::problem::{Problem, ProblemBody};
use crate::service::accounts::{IssuedSession, LoginOutcome};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// Trimmed, Unicode-NFC-normalised and lower-cased before use; at most 254 characters, local
    /// part at most 64.
    #[schema(
        example = "alice@example.com",
        max_length = 254,
        pattern = "^[^@\\s<>\\x00-\\x1f\\x7f-\\x9f]{1,64}@[^@\\s<>.\\x00-\\x1f\\x7f-\\x9f]+(\\.[^@\\s<>.\\x00-\\x1f\\x7f-\\x9f]+)*$"
    )]
    pub email: String,
    /// 8 to 256 characters; not a commonly used or breached password (checked without regard
    /// to case against the 30,000 most common), not containing the local part of the email.
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    pub user: UserDto,
}

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

/// A new session.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionResponse {
    /// The session token (`tsr_...`); send it as `Authorization: Bearer <token>`.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Absolute end of the session; it also ends after 30 minutes without use.
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub user: UserDto,
}

/// The password was right and MFA is on: finish with `POST /api/auth/login/mfa`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MfaRequiredResponse {
    /// Always `true`.
    pub mfa_required: bool,
    /// Single-use token for the second step (`tsm_...`), valid 5 minutes. Not a session.
    pub mfa_token: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// `["totp", "backup_code"]`.
    pub methods: Vec<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LoginResponse {
    Session(SessionResponse),
    MfaRequired(MfaRequiredResponse),
}

#[derive(Deserialize, ToSchema)]
pub struct LoginMfaRequest {
    /// The token from `POST /api/auth/login`.
    #[schema(pattern = "^tsm_[A-Za-z0-9_-]{43}$")]
    pub mfa_token: String,
    /// A 6-digit TOTP code or an unused backup code (`xxxx-xxxx-xxxxx`, any case, dashes and
    /// spaces optional). Aliases: `totp_code`, `mfa_code`, `otp`.
    #[serde(alias = "totp_code", alias = "mfa_code", alias = "otp")]
    #[schema(
        pattern = "^[0-9]{6}$|^[a-km-np-zA-KM-NP-Z2-9]{4}-?[a-km-np-zA-KM-NP-Z2-9]{4}-?[a-km-np-zA-KM-NP-Z2-9]{5}$"
    )]
    pub code: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Absolute end of the session.
    #[schema(format = DateTime)]
    pub expires_at: String,
    #[schema(format = DateTime)]
    pub last_seen_at: String,
    /// When the session ends unless it is used again (idle timeout).
    #[schema(format = DateTime)]
    pub idle_expires_at: String,
    /// True when the session was opened with a second factor.
    pub mfa: bool,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionIntrospection {
    pub user: UserDto,
    pub session: SessionInfo,
}

pub(super) fn session_cookie(token: &str, max_age: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .ok()
}

/// The session as JSON, plus the cookie for the web page.
fn issue(session: IssuedSession, now: i64) -> Response {
    let cookie = session_cookie(session.token.expose(), (session.expires_at - now).max(0));
    let body = SessionResponse {
        token: session.token.expose().to_owned(),
        token_type: "Bearer".into(),
        expires_at: rfc3339(session.expires_at),
        user: session.user.into(),
    };
    let mut response = Json(LoginResponse::Session(body)).into_response();
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// Create an account.
#[utoipa::path(post, path = "/api/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "The account was created.", body = RegisterResponse),
        (status = 403, description = "Registration is closed by configuration.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The email is already registered.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address.", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn register(
    _limit: IpRateLimit,
    State(state): State<AppState>,
    Meta(meta): Meta,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), Problem> {
    let user = state.service.register(&body.email, body.password, &meta).await?;
    Ok((StatusCode::CREATED, Json(RegisterResponse { user: user.into() })))
}

/// Log in with email and password.
///
/// Answers a session when MFA is off, or `mfa_required` with a single-use `mfa_token` when it
/// is on. Unknown email and wrong password give the same 401.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "A session, or the demand for a second factor.", body = LoginResponse),
        (status = 401, description = "Invalid email or password.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The account is disabled.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address, or the password step of this account is locked after 10 consecutive wrong passwords (`Retry-After`; the same for an unknown email).", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn login(
    _limit: IpRateLimit,
    State(state): State<AppState>,
    Meta(meta): Meta,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Response, Problem> {
    match state.service.login(&body.email, body.password, &meta).await? {
        LoginOutcome::Session(session) => Ok(issue(session, state.service.now())),
        LoginOutcome::MfaRequired { mfa_token, expires_at } => {
            Ok(Json(LoginResponse::MfaRequired(MfaRequiredResponse {
                mfa_required: true,
                mfa_token: mfa_token.expose().to_owned(),
                expires_at: rfc3339(expires_at),
                methods: vec!["totp".into(), "backup_code".into()],
            }))
            .into_response())
        }
    }
}

/// Finish a login with a second factor (TOTP or backup code).
#[utoipa::path(post, path = "/api/auth/login/mfa", tag = "auth", request_body = LoginMfaRequest,
    responses(
        (status = 200, description = "The session.", body = SessionResponse),
        (status = 401, description = "The mfa_token is invalid, expired or used, or the code is wrong.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The account is disabled, or authenticator codes are suspended after 50 consecutive failures (a backup code still works).", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address, or too many failed codes for this account (`Retry-After`).", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn login_mfa(
    _limit: IpRateLimit,
    State(state): State<AppState>,
    Meta(meta): Meta,
    ApiJson(body): ApiJson<LoginMfaRequest>,
) -> Result<Response, Problem> {
    let session = state
        .service
        .login_second_factor(&body.mfa_token, &body.code, &meta)
        .await?;
    Ok(issue(session, state.service.now()))
}

/// Log out: the session is revoked server-side.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    security(("session_token" = []), ("session_cookie" = [])),
    responses(
        (status = 204, description = "The session is revoked."),
        (status = 403, description = "Cookie-authenticated request from another origin.", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn logout(State(state): State<AppState>, Auth(auth): Auth, Meta(meta): Meta) -> Result<Response, Problem> {
    state.service.logout(&auth, &meta).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(cookie) = session_cookie("", 0) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// Who does this token belong to? Introspection for other services.
#[utoipa::path(get, path = "/api/auth/session", tag = "auth",
    security(("session_token" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The session and its user.", body = SessionIntrospection)))]
pub async fn session(State(state): State<AppState>, SessionAuth(found): SessionAuth) -> Response {
    let idle_expires_at = state.service.idle_deadline_of(found.last_seen_at, found.expires_at);
    let body = introspection_body(&found, idle_expires_at);
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

/// The JSON of [`SessionIntrospection`] for `found`, written directly into one buffer of the
/// right size: the hottest response of the service, where serde's generic path (a growing
/// buffer, a `String` per timestamp, every key escaped) cost about a tenth of the request
/// (BENCHMARKS.md). The strings that come from the database go through `serde_json`'s escaping;
/// a test holds the bytes equal to serializing the struct.
pub fn introspection_body(found: &crate::store::SessionSummary, idle_expires_at: i64) -> Vec<u8> {
    use crate::clock::write_rfc3339;
    let flag = |value: bool| -> &'static [u8] { if value { b"true" } else { b"false" } };
    let mut out = Vec::with_capacity(320 + found.user_id.len() + 2 * found.email.len());
    out.extend_from_slice(b"{\"user\":{\"id\":");
    // Writing JSON into a Vec cannot fail (strings are UTF-8, the Vec grows as needed).
    let _ = serde_json::to_writer(&mut out, found.user_id.as_str());
    out.extend_from_slice(b",\"email\":");
    let _ = serde_json::to_writer(&mut out, found.email.as_str());
    out.extend_from_slice(b",\"mfa_enabled\":");
    out.extend_from_slice(flag(found.user_mfa_enabled));
    out.extend_from_slice(b",\"created_at\":\"");
    write_rfc3339(found.user_created_at, &mut out);
    out.extend_from_slice(b"\"},\"session\":{\"created_at\":\"");
    write_rfc3339(found.created_at, &mut out);
    out.extend_from_slice(b"\",\"expires_at\":\"");
    write_rfc3339(found.expires_at, &mut out);
    out.extend_from_slice(b"\",\"last_seen_at\":\"");
    write_rfc3339(found.last_seen_at, &mut out);
    out.extend_from_slice(b"\",\"idle_expires_at\":\"");
    write_rfc3339(idle_expires_at, &mut out);
    out.extend_from_slice(b"\",\"mfa\":");
    out.extend_from_slice(flag(found.mfa));
    out.extend_from_slice(b"}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SessionSummary;

    fn serialized(found: &SessionSummary, idle_expires_at: i64) -> Vec<u8> {
        serde_json::to_vec(&SessionIntrospection {
            user: UserDto {
                id: found.user_id.clone(),
                email: found.email.clone(),
                mfa_enabled: found.user_mfa_enabled,
                created_at: rfc3339(found.user_created_at),
            },
            session: SessionInfo {
                created_at: rfc3339(found.created_at),
                expires_at: rfc3339(found.expires_at),
                last_seen_at: rfc3339(found.last_seen_at),
                idle_expires_at: rfc3339(idle_expires_at),
                mfa: found.mfa,
            },
        })
        .unwrap()
    }

    #[test]
    fn the_introspection_body_is_the_serialized_struct() {
        let emails = [
            "a@b.org",
            "quote\"back\\slash@x.org",
            "ctl\u{1}\u{1f}\t\n@x.org",
            "ünïcödé-ß@例え.jp",
            "</script>@x.org",
            "",
        ];
        let times = [0, 1_800_000_000, -1, 253_402_300_800, i64::MIN];
        for (index, email) in emails.iter().enumerate() {
            let found = SessionSummary {
                user_id: format!("0190c1d2-0000-7000-8000-00000000000{index}"),
                created_at: times[index % times.len()],
                last_seen_at: 1_800_000_123,
                expires_at: times[(index + 1) % times.len()],
                mfa: index % 2 == 0,
                email: (*email).to_owned(),
                user_created_at: times[(index + 2) % times.len()],
                user_mfa_enabled: index % 3 == 0,
            };
            let idle = times[(index + 3) % times.len()];
            let body = introspection_body(&found, idle);
            assert_eq!(
                String::from_utf8(body.clone()).unwrap(),
                String::from_utf8(serialized(&found, idle)).unwrap()
            );
            let parsed: SessionIntrospection = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed.user.email, *email);
        }
    }
}
