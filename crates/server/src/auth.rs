//! Admin authentication: argon2id passwords, cookie sessions with a CSRF token, bearer API tokens
//! (high-entropy, stored as SHA-256), the WebAuthn relying party of admin passkeys, and a login
//! rate limiter whose counts live in the database (shared by every replica).

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::{HeaderMap, Method, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_store::{AdminRecord, Store};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;

pub const SESSION_COOKIE: &str = "keyward_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The roles of design.md "Words".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Helpdesk,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Helpdesk, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Helpdesk => "helpdesk",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub admin_id: Uuid,
    pub org_id: Uuid,
    pub role: Role,
    pub email: String,
}

impl Principal {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("admin:{}", self.email)
    }
}

pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("argon2: {e}")))
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A dummy verification so unknown e-mail addresses cost as much time as wrong passwords.
pub fn burn_password_time(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash_password("keyward-timing-equaliser").unwrap_or_default());
    let _ = verify_password(password, phc);
}

/// A fresh 32-byte random secret, base64url, with a prefix that makes leaked tokens recognisable.
pub fn new_secret(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

/// SHA-256 is enough for 256-bit random secrets: there is nothing to brute-force.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn principal_of(admin: AdminRecord) -> Result<Principal, ApiError> {
    if admin.disabled {
        return Err(ApiError::Unauthenticated);
    }
    let role = Role::parse(&admin.role)
        .ok_or_else(|| ApiError::Internal("unknown role in database".into()))?;
    Ok(Principal {
        admin_id: admin.id,
        org_id: admin.org_id,
        role,
        email: admin.email,
    })
}

/// Authenticates a request by bearer token or by session cookie. Cookie-authenticated requests
/// with unsafe methods must carry the session's CSRF token in `X-CSRF-Token`.
pub async fn authenticate(
    store: &Store,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthenticated)?;
        let admin = store
            .admin_by_token_hash(&secret_hash(token.trim()))
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        return principal_of(admin);
    }
    let cookie = cookie_value(headers, SESSION_COOKIE).ok_or(ApiError::Unauthenticated)?;
    let session = store
        .session(&secret_hash(cookie))
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let csrf = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Forbidden)?;
        let given = secret_hash(csrf);
        if aws_lc_rs::constant_time::verify_slices_are_equal(&given, &session.csrf_hash).is_err() {
            return Err(ApiError::Forbidden);
        }
    }
    let admin = store
        .admin(session.admin_id)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    principal_of(admin)
}

/// Fixed-window limiter keyed by client IP and e-mail: at most `max` attempts per `window`. The
/// buckets are rows in the database, named by the SHA-256 of the key (no e-mail address or IP is
/// stored), so replicas on one PostgreSQL share the count.
pub struct RateLimiter {
    max: u32,
    window: Duration,
}

impl RateLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        RateLimiter { max, window }
    }

    /// Counts an attempt; refuses with the seconds until the window reopens.
    pub async fn check(&self, store: &Store, key: &str) -> Result<(), ApiError> {
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (hits, started) = store
            .rate_limit_hit(&secret_hash(key), now_ms, window_ms)
            .await?;
        if hits > i64::from(self.max) {
            let wait_ms = (started + window_ms - now_ms).max(0);
            return Err(ApiError::RateLimited {
                retry_after_secs: u64::try_from(wait_ms / 1000).unwrap_or(0).max(1),
            });
        }
        Ok(())
    }
}

/// The WebAuthn relying party of admin passkeys, from the public URL: its host is the RP id, the
/// URL itself the only accepted origin.
#[derive(Debug, Clone)]
pub struct RelyingParty {
    pub rp_id: webauthn_rp::request::RpId,
    pub origin: String,
}

impl RelyingParty {
    /// `url` as checked by [`crate::config::parse_public_url`]: scheme, DNS host, optional port.
    pub fn from_public_url(url: &str) -> Result<Self, String> {
        let origin = crate::config::parse_public_url(url).map_err(|e| e.to_string())?;
        let host = origin
            .split_once("://")
            .map(|(_, rest)| rest.split(':').next().unwrap_or(rest))
            .unwrap_or_default();
        let domain = webauthn_rp::request::AsciiDomain::try_from(host.to_owned())
            .map_err(|e| format!("{host} is not a valid relying-party id: {e}"))?;
        Ok(RelyingParty {
            rp_id: webauthn_rp::request::RpId::Domain(domain),
            origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_with_the_right_secret() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("correct horse", "not a phc string"));
    }

    #[tokio::test]
    async fn limiter_refuses_after_max_and_reports_retry_after() {
        let db = keyward_store::testing::sqlite().await;
        let l = RateLimiter::new(2, Duration::from_secs(60));
        assert!(l.check(&db.store, "ip|a").await.is_ok());
        assert!(l.check(&db.store, "ip|a").await.is_ok());
        assert!(matches!(
            l.check(&db.store, "ip|a").await,
            Err(ApiError::RateLimited { retry_after_secs }) if retry_after_secs > 0 && retry_after_secs <= 60
        ));
        assert!(
            l.check(&db.store, "ip|b").await.is_ok(),
            "other keys are independent"
        );
    }

    #[test]
    fn relying_party_comes_from_the_public_url() {
        let rp = RelyingParty::from_public_url("http://localhost:8080").expect("rp");
        assert_eq!(rp.origin, "http://localhost:8080");
        assert!(
            matches!(&rp.rp_id, webauthn_rp::request::RpId::Domain(d) if d.as_ref() == "localhost")
        );
        assert!(RelyingParty::from_public_url("https://127.0.0.1").is_err());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; keyward_session=abc; b=2".parse().expect("header"),
        );
        assert_eq!(cookie_value(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie_value(&h, "zz"), None);
    }
}
