//! `/api/user/profile/mfa*`: status, setup, the two seed endpoints (verify, backup-codes), and
//! disable.

use super::SuccessMessage;
use crate::clock::rfc3339;
use crate::http::AppState;
use crate::http::extract::{ApiJson, Auth, Meta};
use crate::http::problem::{Problem, ProblemBody};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Serialize, Deserialize, ToSchema)]
pub struct MfaStatusResponse {
    pub enabled: bool,
    #[schema(format = DateTime)]
    pub enabled_at: Option<String>,
    /// A setup was started and not yet verified (it expires after 10 minutes).
    pub pending_setup: bool,
    /// Unused backup codes left.
    pub backup_codes_remaining: i64,
}

#[derive(Deserialize, ToSchema)]
pub struct SetupRequest {
    /// The account password (re-authentication).
    pub password: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SetupResponse {
    /// The TOTP secret, base32 without padding, for manual entry.
    pub secret: String,
    /// `otpauth://totp/...` URL for authenticator apps.
    pub otpauth_url: String,
    /// The same URL as an SVG QR code.
    pub qr_code_svg: String,
    pub issuer: String,
    pub account_name: String,
    /// Always `SHA1`.
    pub algorithm: String,
    pub digits: u32,
    pub period: u64,
    /// The pending setup must be verified before this time.
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// Request of `POST /api/user/profile/mfa/verify`. The seed documents the body as an open object.
#[derive(Deserialize, ToSchema)]
pub struct VerifyRequest {
    /// The current 6-digit code of the pending secret. Aliases: `totp_code`, `mfa_code`, `otp`.
    #[serde(alias = "totp_code", alias = "mfa_code", alias = "otp")]
    #[schema(example = "123456", pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// Response from POST /api/user/profile/mfa/verify. Returned after the user enters a valid TOTP
/// code against a pending MFA secret; MFA becomes enabled and backup codes are returned.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct VerifyResponse {
    pub success: bool,
    pub message: String,
    /// One-time backup codes generated (or echoed) at MFA enable.
    pub backup_codes: Vec<String>,
}

/// Request of the backup-code regeneration and of disable: password and current code.
#[derive(Deserialize, ToSchema)]
pub struct PasswordAndCode {
    pub password: String,
    /// A 6-digit TOTP code or an unused backup code (consumed on success).
    /// Aliases: `totp_code`, `mfa_code`, `otp`.
    #[serde(alias = "totp_code", alias = "mfa_code", alias = "otp")]
    #[schema(
        pattern = "^[0-9]{6}$|^[a-km-np-zA-KM-NP-Z2-9]{4}-?[a-km-np-zA-KM-NP-Z2-9]{4}-?[a-km-np-zA-KM-NP-Z2-9]{5}$"
    )]
    pub code: String,
}

/// Response from POST /api/user/profile/mfa/backup-codes. Returns the freshly-generated MFA
/// backup codes.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BackupCodesResponse {
    /// Newly issued one-time backup codes. Caller must store these.
    pub backup_codes: Vec<String>,
}

/// MFA status of the signed-in user.
#[utoipa::path(get, path = "/api/user/profile/mfa", tag = "mfa",
    security(("session_token" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The MFA status.", body = MfaStatusResponse)))]
pub async fn status(State(state): State<AppState>, Auth(auth): Auth) -> Result<Json<MfaStatusResponse>, Problem> {
    let status = state.service.mfa_status(&auth).await?;
    Ok(Json(MfaStatusResponse {
        enabled: status.enabled,
        enabled_at: status.enabled_at.map(rfc3339),
        pending_setup: status.pending_setup,
        backup_codes_remaining: status.backup_codes_remaining,
    }))
}

/// Start an MFA setup: a new pending secret, its otpauth URL and QR code.
#[utoipa::path(post, path = "/api/user/profile/mfa/setup", tag = "mfa", request_body = SetupRequest,
    security(("session_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The pending secret; verify it within 10 minutes.", body = SetupResponse),
        (status = 400, description = "Invalid request or wrong password.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Cookie-authenticated request from another origin.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "MFA is already enabled.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed password or code attempts, or re-authentications, for this account (the password counts like a code), or too many requests from this address (`Retry-After`).", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn setup(
    State(state): State<AppState>,
    Auth(auth): Auth,
    Meta(meta): Meta,
    ApiJson(body): ApiJson<SetupRequest>,
) -> Result<Json<SetupResponse>, Problem> {
    let setup = state.service.mfa_setup(&auth, body.password, &meta).await?;
    Ok(Json(SetupResponse {
        secret: setup.secret,
        otpauth_url: setup.otpauth_url,
        qr_code_svg: setup.qr_code_svg,
        issuer: setup.issuer,
        account_name: setup.account_name,
        algorithm: "SHA1".into(),
        digits: setup.digits,
        period: setup.period,
        expires_at: rfc3339(setup.expires_at),
    }))
}

/// Verifies MFA setup with TOTP code and enables MFA
///
/// Returned after the user enters a valid TOTP code against a pending MFA secret; MFA becomes
/// enabled and backup codes are returned. The calling session stays valid; the user's other
/// sessions are revoked.
#[utoipa::path(post, path = "/api/user/profile/mfa/verify", tag = "mfa", request_body = VerifyRequest,
    security(("session_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "MFA enabled", body = VerifyResponse),
        (status = 400, description = "The request body or parameters failed validation, or the code is wrong (MFA stays off).", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Cookie-authenticated request from another origin.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "No setup is pending, or MFA is already enabled.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed password or code attempts for this account, or too many requests from this address (`Retry-After`).", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn verify(
    State(state): State<AppState>,
    Auth(auth): Auth,
    Meta(meta): Meta,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<Json<VerifyResponse>, Problem> {
    let codes = state.service.mfa_verify(&auth, &body.code, &meta).await?;
    Ok(Json(VerifyResponse {
        success: true,
        message: "MFA enabled. Store these backup codes now: they are shown only once.".into(),
        backup_codes: codes.0,
    }))
}

/// Regenerates MFA backup codes. Requires password and current MFA code
///
/// Returns a fresh set of 10 codes; every earlier code stops working at once. On a wrong
/// password or code nothing changes: the old codes keep working.
#[utoipa::path(post, path = "/api/user/profile/mfa/backup-codes", tag = "mfa", request_body = PasswordAndCode,
    security(("session_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Backup codes regenerated", body = BackupCodesResponse),
        (status = 400, description = "The request body or parameters failed validation, or the password or code is wrong.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Cookie-authenticated request from another origin, or authenticator codes are suspended after 50 consecutive failures (a backup code still works).", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "MFA is not enabled, or the account changed while the request ran (nothing changed).", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed password or code attempts, or re-authentications, for this account, or too many requests from this address (`Retry-After`).", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn regenerate_backup_codes(
    State(state): State<AppState>,
    Auth(auth): Auth,
    Meta(meta): Meta,
    ApiJson(body): ApiJson<PasswordAndCode>,
) -> Result<Json<BackupCodesResponse>, Problem> {
    let codes = state
        .service
        .regenerate_backup_codes(&auth, body.password, &body.code, &meta)
        .await?;
    Ok(Json(BackupCodesResponse { backup_codes: codes.0 }))
}

/// Turn MFA off: secret and backup codes are deleted; other sessions are revoked.
#[utoipa::path(post, path = "/api/user/profile/mfa/disable", tag = "mfa", request_body = PasswordAndCode,
    security(("session_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "MFA disabled.", body = SuccessMessage),
        (status = 400, description = "Invalid request, or the password or code is wrong.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Cookie-authenticated request from another origin, or authenticator codes are suspended after 50 consecutive failures (a backup code still works).", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "MFA is not enabled, or the account changed while the request ran (nothing changed).", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed password or code attempts, or re-authentications, for this account, or too many requests from this address (`Retry-After`).", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn disable(
    State(state): State<AppState>,
    Auth(auth): Auth,
    Meta(meta): Meta,
    ApiJson(body): ApiJson<PasswordAndCode>,
) -> Result<Json<SuccessMessage>, Problem> {
    state
        .service
        .mfa_disable(&auth, body.password, &body.code, &meta)
        .await?;
    Ok(Json(SuccessMessage::new(
        "MFA disabled. Other sessions were signed out.",
    )))
}
