//! The one error type of this crate, with the Graph `request-id` kept for support and a plain
//! language reason for admins.

use std::fmt;
use std::time::Duration;

/// What went wrong, coarsely: what an admin or a job runner needs to decide what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The app could not get a token, or Graph refused it (wrong secret, unknown app or tenant,
    /// certificate not registered).
    Auth,
    /// The app lacks a permission or admin consent (403).
    Permission,
    /// Graph kept throttling past the retry budget, or asked to wait longer than we sleep.
    Throttled { retry_after: Option<Duration> },
    /// The tenant's authentication methods policy refuses the operation.
    Policy,
    /// The user, group or method does not exist.
    NotFound,
    /// 405: Entra refuses to provision passkeys for the account that consented to the app.
    ConsentingAdmin,
    /// Graph refused the request as invalid (e.g. a registration that fails verification).
    Rejected,
    /// Graph answered something this client cannot understand.
    BadResponse { detail: String },
    /// The connection failed, dropped, timed out, or Graph kept failing (5xx).
    Transport,
    /// Our own settings are unusable (bad URL, unusable key).
    Config,
    /// A delta link expired (`syncStateNotFound` / `resyncRequired`); the user pager handles it
    /// by starting over, so callers only see it from raw calls.
    DeltaExpired,
}

/// An error from Graph or from talking to it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct EntraError {
    pub kind: ErrorKind,
    /// HTTP status, when Graph answered.
    pub status: Option<u16>,
    /// Graph's `error.code`, or `AADSTS<n>` for token errors.
    pub code: Option<String>,
    /// Graph's message, or ours. Never contains a secret: Graph does not echo them and we never
    /// put one in.
    pub message: String,
    /// Graph's `request-id` (or the token endpoint's trace id), for Microsoft support.
    pub request_id: Option<String>,
}

impl fmt::Display for EntraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason())?;
        if let Some(code) = &self.code {
            write!(f, " [{code}]")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request-id {id})")?;
        }
        Ok(())
    }
}

impl EntraError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        EntraError {
            kind,
            status: None,
            code: None,
            message: message.into(),
            request_id: None,
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn bad_response(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self::new(
            ErrorKind::BadResponse {
                detail: detail.clone(),
            },
            detail,
        )
    }

    pub(crate) fn transport(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transport, message)
    }

    pub(crate) fn with_request_id(mut self, id: Option<String>) -> Self {
        if self.request_id.is_none() {
            self.request_id = id;
        }
        self
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// Whether trying the same thing later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Throttled { .. } | ErrorKind::Transport
        )
    }

    /// A sentence an admin can act on.
    pub fn reason(&self) -> String {
        let m = &self.message;
        match &self.kind {
            ErrorKind::Auth => format!(
                "Keyward could not sign in to Microsoft Entra ID with the app's credentials: {m} Check the tenant id, client id and the client secret or certificate registered on the app."
            ),
            ErrorKind::Permission => format!(
                "The Entra app lacks a permission or admin consent for this operation: {m} Grant User.Read.All, GroupMember.Read.All, Policy.Read.All and UserAuthMethod-Passkey.ReadWrite.All (or UserAuthenticationMethod.ReadWrite.All) with admin consent."
            ),
            ErrorKind::Throttled { retry_after } => match retry_after {
                Some(d) => format!("Microsoft Graph is throttling requests; try again in {} seconds.", d.as_secs().max(1)),
                None => "Microsoft Graph is throttling requests; try again later.".to_string(),
            },
            ErrorKind::Policy => format!("The tenant's authentication methods policy does not allow this: {m}"),
            ErrorKind::NotFound => format!("Entra ID does not know this object: {m}"),
            ErrorKind::ConsentingAdmin => "Entra ID refuses to provision passkeys for this account (405), which happens for the account that granted the app its permissions and for the calling identity itself. Register this user's passkey by hand instead.".to_string(),
            ErrorKind::Rejected => format!("Microsoft Graph rejected the request: {m}"),
            ErrorKind::BadResponse { detail } => format!("Microsoft Graph sent an answer Keyward cannot understand: {detail}"),
            ErrorKind::Transport => format!("Microsoft Graph could not be reached or kept failing: {m}"),
            ErrorKind::Config => format!("The Entra connection settings are not usable: {m}"),
            ErrorKind::DeltaExpired => "The stored directory sync state expired; a full import is needed.".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_carries_code_and_request_id() {
        let mut e = EntraError::new(
            ErrorKind::ConsentingAdmin,
            "The method is not supported for this URL.",
        );
        e.code = Some("methodNotAllowed".into());
        e.request_id = Some("abc-123".into());
        let s = e.to_string();
        assert!(
            s.contains("405") && s.contains("methodNotAllowed") && s.contains("abc-123"),
            "{s}"
        );
        assert!(!e.is_transient());
        assert!(EntraError::transport("x").is_transient());
    }
}
