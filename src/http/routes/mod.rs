//! Handlers, grouped by resource, with the request and response shapes they document.

pub mod auth;
pub mod mfa;
pub mod ops;
pub mod profile;
pub mod sessions;

pub use super::rate_limit::IpRateLimit;
use crate::clock::rfc3339;
use crate::service::accounts::UserView;
use serde::Serialize;
use utoipa::ToSchema;

/// An account as the API shows it.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
#[schema(as = User)]
pub struct UserDto {
    /// The account id (UUIDv7).
    pub id: String,
    /// The normalised (trimmed, NFC, lower-cased) email.
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
