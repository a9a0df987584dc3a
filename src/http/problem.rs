//! RFC 7807 / RFC 9457 problems in the envelope the seed documents define: `type`, `title`,
//! `status`, `detail`, `instance`, plus the legacy `error` (same text as `detail`) and `details`
//! (member -> message), and `requestId`.
//!
//! Handlers and extractors return a [`Problem`]; its `IntoResponse` only sets the status and
//! stashes the problem in the response extensions. The edge middleware ([`super::edge`]) renders
//! every problem, and every bare error status the framework produced by itself, into the
//! envelope, because only it knows the request id and the path.

use crate::service::ServiceError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// The kinds of problem this API answers with. `type` is `/problems/<slug>`, or `about:blank`
/// for plain HTTP errors (unknown route, wrong method, oversized body, wrong content type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    Validation,
    MalformedBody,
    InvalidMfaCode,
    InvalidPasswordOrCode,
    InvalidCredentials,
    Unauthenticated,
    InvalidMfaToken,
    SecondFactorRejected,
    CrossSiteRequest,
    AccountDisabled,
    RegistrationClosed,
    EmailTaken,
    MfaAlreadyEnabled,
    MfaNotEnabled,
    NoPendingSetup,
    TotpSuspended,
    StateChanged,
    SessionNotFound,
    TooManyAttempts,
    RateLimited,
    BodyReadTimeout,
    RequestTimeout,
    ServiceUnavailable,
    Internal,
    /// A plain HTTP error with `type: about:blank`.
    Http(StatusCode),
}

/// Every typed kind, for the `/problems/<slug>` pages and the tests.
pub const TYPED_KINDS: [ProblemKind; 24] = [
    ProblemKind::Validation,
    ProblemKind::MalformedBody,
    ProblemKind::InvalidMfaCode,
    ProblemKind::InvalidPasswordOrCode,
    ProblemKind::InvalidCredentials,
    ProblemKind::Unauthenticated,
    ProblemKind::InvalidMfaToken,
    ProblemKind::SecondFactorRejected,
    ProblemKind::CrossSiteRequest,
    ProblemKind::AccountDisabled,
    ProblemKind::RegistrationClosed,
    ProblemKind::EmailTaken,
    ProblemKind::MfaAlreadyEnabled,
    ProblemKind::MfaNotEnabled,
    ProblemKind::NoPendingSetup,
    ProblemKind::TotpSuspended,
    ProblemKind::StateChanged,
    ProblemKind::SessionNotFound,
    ProblemKind::TooManyAttempts,
    ProblemKind::RateLimited,
    ProblemKind::BodyReadTimeout,
    ProblemKind::RequestTimeout,
    ProblemKind::ServiceUnavailable,
    ProblemKind::Internal,
];

impl ProblemKind {
    /// (status, slug, title, explanation). The explanation is served at `/problems/<slug>`.
    fn parts(self) -> (StatusCode, &'static str, &'static str, &'static str) {
        use ProblemKind::*;
        match self {
            Validation => (
                StatusCode::BAD_REQUEST,
                "validation-error",
                "Request validation failed",
                "One or more request members are missing or invalid; `details` names each one.",
            ),
            MalformedBody => (
                StatusCode::BAD_REQUEST,
                "malformed-request",
                "Malformed request body",
                "The body is not a JSON object of the documented shape.",
            ),
            InvalidMfaCode => (
                StatusCode::BAD_REQUEST,
                "invalid-mfa-code",
                "Invalid MFA code",
                "The code does not match the pending authenticator secret, or was already used. MFA stays off.",
            ),
            InvalidPasswordOrCode => (
                StatusCode::BAD_REQUEST,
                "invalid-password-or-code",
                "Invalid password or code",
                "The password or the code is wrong. Nothing was changed; codes were not consumed.",
            ),
            InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                "Invalid email or password",
                "The email and password do not match an account.",
            ),
            Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
                "The session token is missing, malformed, expired or revoked. Log in again.",
            ),
            InvalidMfaToken => (
                StatusCode::UNAUTHORIZED,
                "invalid-mfa-token",
                "Invalid or expired MFA token",
                "The mfa_token is unknown, expired (5 minutes) or already used. Log in with the password again.",
            ),
            SecondFactorRejected => (
                StatusCode::UNAUTHORIZED,
                "invalid-second-factor",
                "Invalid second factor",
                "The TOTP or backup code is wrong or was already used. The mfa_token stays valid until it expires.",
            ),
            CrossSiteRequest => (
                StatusCode::FORBIDDEN,
                "cross-site-request",
                "Cross-site request refused",
                "A state-changing request authenticated by the session cookie must come from the same origin.",
            ),
            AccountDisabled => (
                StatusCode::FORBIDDEN,
                "account-disabled",
                "Account disabled",
                "An operator disabled this account.",
            ),
            RegistrationClosed => (
                StatusCode::FORBIDDEN,
                "registration-closed",
                "Registration closed",
                "This instance does not accept new registrations.",
            ),
            EmailTaken => (
                StatusCode::CONFLICT,
                "email-taken",
                "Email already registered",
                "An account with this email exists.",
            ),
            MfaAlreadyEnabled => (
                StatusCode::CONFLICT,
                "mfa-already-enabled",
                "MFA already enabled",
                "Multi-factor authentication is already on for this account.",
            ),
            MfaNotEnabled => (
                StatusCode::CONFLICT,
                "mfa-not-enabled",
                "MFA not enabled",
                "Multi-factor authentication is off for this account.",
            ),
            NoPendingSetup => (
                StatusCode::CONFLICT,
                "no-pending-setup",
                "No MFA setup in progress",
                "There is no pending MFA setup (none started, expired after 10 minutes, or already completed).",
            ),
            TotpSuspended => (
                StatusCode::FORBIDDEN,
                "totp-suspended",
                "Authenticator codes suspended",
                "After 50 consecutive failed codes, authenticator (TOTP) codes are refused for this account. \
                 A backup code still works (and lifts the suspension at login); otherwise an operator can reset MFA.",
            ),
            StateChanged => (
                StatusCode::CONFLICT,
                "state-changed",
                "Account changed meanwhile",
                "The account changed while the request was processed (for instance its password was changed by \
                 another request). Nothing was changed; read the current state and retry.",
            ),
            SessionNotFound => (
                StatusCode::NOT_FOUND,
                "session-not-found",
                "Session not found",
                "The id names none of your live sessions: it is malformed, the session has ended, or it belongs to another account.",
            ),
            TooManyAttempts => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-attempts",
                "Too many attempts",
                "Too many failed password or second-factor attempts, or re-authentications, on this account; \
                 wait `retry_after` seconds.",
            ),
            RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                "Too many requests from this address; wait `retry_after` seconds.",
            ),
            BodyReadTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "body-read-timeout",
                "Request body too slow",
                "The request body did not arrive within the body-read timeout; nothing was changed. Send it again, at once.",
            ),
            RequestTimeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "request-timeout",
                "Request timed out",
                "The request did not complete in time and was abandoned; nothing was changed.",
            ),
            ServiceUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service-unavailable",
                "Service unavailable",
                "The database cannot be reached. Retry later.",
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal-error",
                "Internal server error",
                "An unexpected error occurred. It was logged with the request id.",
            ),
            Http(status) => (status, "", "", ""),
        }
    }

    pub fn status(self) -> StatusCode {
        self.parts().0
    }

    pub fn slug(self) -> Option<&'static str> {
        match self {
            ProblemKind::Http(_) => None,
            other => Some(other.parts().1),
        }
    }

    pub fn type_uri(self) -> String {
        self.slug()
            .map_or_else(|| "about:blank".to_owned(), |slug| format!("/problems/{slug}"))
    }

    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::Http(status) => status.canonical_reason().unwrap_or("Error"),
            other => other.parts().2,
        }
    }

    pub fn explanation(self) -> &'static str {
        self.parts().3
    }

    pub fn from_slug(slug: &str) -> Option<Self> {
        TYPED_KINDS.iter().copied().find(|kind| kind.slug() == Some(slug))
    }
}

/// A problem about to be answered.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemKind,
    pub detail: String,
    pub details: BTreeMap<String, String>,
    pub retry_after: Option<i64>,
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            details: BTreeMap::new(),
            retry_after: None,
        }
    }

    /// The generic problem for a bare status the framework produced.
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::INTERNAL_SERVER_ERROR => Self::internal(),
            StatusCode::SERVICE_UNAVAILABLE => {
                Self::new(ProblemKind::ServiceUnavailable, "The service is unavailable.")
            }
            StatusCode::NOT_FOUND => Self::new(ProblemKind::Http(status), "No resource at this path."),
            StatusCode::METHOD_NOT_ALLOWED => {
                Self::new(ProblemKind::Http(status), "This method is not allowed on this path.")
            }
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                ProblemKind::Http(status),
                "The request body is larger than 16384 bytes.",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::new(ProblemKind::Http(status), "The request body must be application/json.")
            }
            other => Self::new(ProblemKind::Http(other), other.canonical_reason().unwrap_or("Error")),
        }
    }

    pub fn internal() -> Self {
        Self::new(
            ProblemKind::Internal,
            "An unexpected error occurred; it has been logged with the request id.",
        )
    }

    pub fn validation(details: BTreeMap<String, String>) -> Self {
        let summary = details
            .iter()
            .map(|(member, message)| format!("{member} {message}"))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            details,
            ..Self::new(ProblemKind::Validation, format!("Invalid request: {summary}."))
        }
    }

    /// The envelope, with the members only the edge knows.
    pub fn body(&self, instance: &str, request_id: &str) -> ProblemBody {
        ProblemBody {
            r#type: self.kind.type_uri(),
            title: self.kind.title().to_owned(),
            status: self.kind.status().as_u16(),
            detail: self.detail.clone(),
            instance: instance.to_owned(),
            error: self.detail.clone(),
            details: self.details.clone(),
            request_id: request_id.to_owned(),
            retry_after: self.retry_after,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = self.kind.status().into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// Standardised error envelope per RFC 7807, as the seed documents define it.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody {
    /// A URI reference that identifies the problem type.
    #[serde(rename = "type")]
    #[schema(format = "uri-reference", default = "about:blank")]
    pub r#type: String,
    /// A short human-readable summary of the problem.
    pub title: String,
    /// The HTTP status code generated by the origin server.
    #[schema(minimum = 100, maximum = 599)]
    pub status: u16,
    /// A human-readable explanation specific to this occurrence.
    pub detail: String,
    /// A URI reference that identifies the specific occurrence.
    #[schema(format = "uri-reference")]
    pub instance: String,
    /// Legacy error message field. Will be removed once handlers are migrated.
    pub error: String,
    /// Legacy per-field error details. Will be removed once handlers are migrated.
    pub details: BTreeMap<String, String>,
    /// The request id middleware-assigned identifier for tracing.
    #[serde(rename = "requestId")]
    pub request_id: String,
    /// Seconds to wait before retrying (429 only), equal to the `Retry-After` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<i64>,
}

/// The one mapping from service errors to problems. No `_` arm: a new variant must be placed.
impl From<ServiceError> for Problem {
    fn from(err: ServiceError) -> Self {
        use ProblemKind as K;
        match err {
            ServiceError::Validation(members) => Problem::validation(
                members
                    .into_iter()
                    .map(|(member, message)| (member.to_owned(), message))
                    .collect(),
            ),
            ServiceError::EmailTaken => Problem::new(K::EmailTaken, "An account with this email already exists."),
            ServiceError::RegistrationClosed => {
                Problem::new(K::RegistrationClosed, "Registration is closed on this instance.")
            }
            ServiceError::InvalidCredentials => Problem::new(K::InvalidCredentials, "Invalid email or password."),
            ServiceError::AccountDisabled => Problem::new(K::AccountDisabled, "This account is disabled."),
            ServiceError::Unauthenticated => {
                Problem::new(K::Unauthenticated, "A valid session is required for this request.")
            }
            ServiceError::InvalidMfaToken => {
                Problem::new(K::InvalidMfaToken, "The mfa_token is invalid, expired or already used.")
            }
            ServiceError::SecondFactorRejected => {
                Problem::new(K::SecondFactorRejected, "The code is not valid for this account.")
            }
            ServiceError::InvalidMfaCode => Problem::new(K::InvalidMfaCode, "The code is not valid for this account."),
            ServiceError::InvalidPasswordOrCode => Problem::new(
                K::InvalidPasswordOrCode,
                "The password or code is not valid for this account.",
            ),
            ServiceError::MfaAlreadyEnabled => {
                Problem::new(K::MfaAlreadyEnabled, "Multi-factor authentication is already enabled.")
            }
            ServiceError::MfaNotEnabled => {
                Problem::new(K::MfaNotEnabled, "Multi-factor authentication is not enabled.")
            }
            ServiceError::NoPendingSetup => Problem::new(
                K::NoPendingSetup,
                "No MFA setup is in progress; start one with POST /api/user/profile/mfa/setup.",
            ),
            ServiceError::TotpSuspended => Problem::new(
                K::TotpSuspended,
                "Authenticator codes are suspended for this account after too many failed attempts; use a backup code.",
            ),
            ServiceError::StateChanged => Problem::new(
                K::StateChanged,
                "The account changed while this request was processed; nothing was changed.",
            ),
            ServiceError::SessionNotFound => {
                Problem::new(K::SessionNotFound, "No live session of this account has this id.")
            }
            ServiceError::Throttled { retry_after_secs } => Problem {
                retry_after: Some(retry_after_secs),
                ..Problem::new(
                    K::TooManyAttempts,
                    format!("Too many failed attempts; try again in {retry_after_secs} seconds."),
                )
            },
            ServiceError::Unavailable => {
                crate::log_context::in_request(|| tracing::error!("database unavailable"));
                Problem::new(K::ServiceUnavailable, "The database is unavailable; retry later.")
            }
            ServiceError::Internal(cause) => {
                crate::log_context::in_request(|| tracing::error!(%cause, "internal error"));
                Problem::internal()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_typed_kind_has_a_distinct_slug_title_and_explanation() {
        let mut slugs: Vec<_> = TYPED_KINDS.iter().filter_map(|k| k.slug()).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), TYPED_KINDS.len());
        for kind in TYPED_KINDS {
            assert!(!kind.title().is_empty() && !kind.explanation().is_empty());
            assert_eq!(ProblemKind::from_slug(kind.slug().unwrap_or_default()), Some(kind));
        }
    }

    #[test]
    fn plain_http_errors_are_about_blank_with_the_reason_phrase() {
        let problem = Problem::for_status(StatusCode::NOT_FOUND);
        let body = problem.body("/nowhere", "rid");
        assert_eq!(body.r#type, "about:blank");
        assert_eq!(body.title, "Not Found");
        assert_eq!(body.status, 404);
        assert_eq!(body.error, body.detail);
    }
}
