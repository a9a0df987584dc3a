//! The sessions a user can see and end: list them, end one by its public id, end all but the
//! calling one. Sessions are named by a random public id, never by the token or its hash.

use super::accounts::Authenticated;
use super::{RequestMeta, Service, ServiceError, ServiceResult};

/// One of the user's live sessions, as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub mfa: bool,
    /// The session this request is authenticated by.
    pub current: bool,
}

/// What ending a session by its id did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedSession {
    /// Another session of the user ended.
    Other,
    /// The calling session ended (a logout).
    Current,
}

/// A session id as the store holds it (a lower-case hyphenated UUID), or `None` for anything
/// else, which cannot name a session and needs no database round trip.
fn parse_session_id(input: &str) -> Option<String> {
    uuid::Uuid::try_parse(input).ok().map(|id| id.hyphenated().to_string())
}

impl Service {
    /// `GET /api/user/profile/sessions`: the user's live sessions, newest first.
    pub async fn list_sessions(&self, auth: &Authenticated) -> ServiceResult<Vec<SessionView>> {
        let sessions = self
            .store
            .list_sessions(&auth.user.id, self.now(), self.config.session_idle_secs)
            .await?;
        Ok(sessions
            .into_iter()
            .map(|session| SessionView {
                current: session.token_hash == auth.session.token_hash,
                id: session.public_id,
                created_at: session.created_at,
                last_seen_at: session.last_seen_at,
                expires_at: session.expires_at,
                ip: session.ip,
                user_agent: session.user_agent,
                mfa: session.mfa,
            })
            .collect())
    }

    /// `DELETE /api/user/profile/sessions/{id}`: ends one of the user's live sessions (the
    /// calling one too). Any other id, malformed or another user's, is `SessionNotFound` and
    /// changes nothing.
    pub async fn end_session(&self, auth: &Authenticated, id: &str, meta: &RequestMeta) -> ServiceResult<EndedSession> {
        let id = parse_session_id(id).ok_or(ServiceError::SessionNotFound)?;
        let now = self.now();
        let event = meta.event(&auth.user.id, "session_revoked", now);
        let ended = self
            .store
            .delete_user_session(&auth.user.id, &id, now, self.config.session_idle_secs, &event)
            .await?;
        match ended {
            false => Err(ServiceError::SessionNotFound),
            true if id == auth.session.public_id => Ok(EndedSession::Current),
            true => Ok(EndedSession::Other),
        }
    }

    /// `POST /api/user/profile/sessions/revoke-others`: ends every session of the user but the
    /// calling one (and pending `mfa_token`s); returns how many live sessions ended.
    pub async fn revoke_other_sessions(&self, auth: &Authenticated, meta: &RequestMeta) -> ServiceResult<u64> {
        let now = self.now();
        let event = meta.event(&auth.user.id, "other_sessions_revoked", now);
        Ok(self
            .store
            .revoke_other_sessions(
                &auth.user.id,
                &auth.session.token_hash,
                now,
                self.config.session_idle_secs,
                &event,
            )
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_session_id;

    #[test]
    fn only_uuids_name_sessions_and_they_are_normalised() {
        let id = "0193a3c4-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
        assert_eq!(parse_session_id(id).as_deref(), Some(id));
        assert_eq!(parse_session_id(&id.to_uppercase()).as_deref(), Some(id));
        for bad in [
            "",
            "revoke-others",
            "1",
            "tsr_abc",
            &"a".repeat(200),
            "0193a3c4-5e6f-4a7b-8c9d",
        ] {
            assert_eq!(parse_session_id(bad), None, "{bad}");
        }
    }
}
