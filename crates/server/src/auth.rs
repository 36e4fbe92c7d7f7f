//! Admin authentication: argon2id passwords, cookie sessions with a CSRF token, bearer API tokens
//! (high-entropy, stored as SHA-256), and a login rate limiter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Fixed-window limiter keyed by client IP and e-mail: at most `max` attempts per `window`.
pub struct RateLimiter {
    max: u32,
    window: Duration,
    hits: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        RateLimiter {
            max,
            window,
            hits: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt; refuses with the seconds until the window reopens.
    pub fn check(&self, key: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        if hits.len() > 100_000 {
            hits.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let entry = hits.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.max {
            let wait = self
                .window
                .saturating_sub(now.duration_since(entry.0))
                .as_secs()
                .max(1);
            return Err(ApiError::RateLimited {
                retry_after_secs: wait,
            });
        }
        entry.1 += 1;
        Ok(())
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

    #[test]
    fn limiter_refuses_after_max_and_reports_retry_after() {
        let l = RateLimiter::new(2, Duration::from_secs(60));
        assert!(l.check("ip|a").is_ok());
        assert!(l.check("ip|a").is_ok());
        assert!(
            matches!(l.check("ip|a"), Err(ApiError::RateLimited { retry_after_secs }) if retry_after_secs > 0)
        );
        assert!(l.check("ip|b").is_ok(), "other keys are independent");
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
