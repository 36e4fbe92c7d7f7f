//! Login, logout, the caller's identity and API tokens.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, Json};
use crate::auth::{self, Principal, Role, SESSION_COOKIE};
use crate::error::{ApiError, ApiResult, Problem};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The organisation's name; needed only when the e-mail address is an admin in several.
    #[serde(default)]
    pub org: Option<String>,
    pub email: String,
    #[schema(format = Password)]
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub id: Uuid,
    pub org_id: Uuid,
    pub email: String,
    pub role: Role,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// Send this in `X-CSRF-Token` with every unsafe request made with the session cookie.
    pub csrf_token: String,
    pub admin: Me,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub id: Uuid,
    pub name: String,
    /// Shown once; Keyward stores only its hash.
    pub token: String,
}

/// The client's IP address, when the server runs with connection info (router tests without it
/// share one bucket). X-Forwarded-For is not trusted: nothing says a proxy is in front.
pub struct ClientIp(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        Ok(ClientIp(ip.unwrap_or_else(|| "local".into())))
    }
}

#[utoipa::path(post, path = "/api/v1/auth/login", request_body = LoginRequest, security(),
    responses((status = 200, body = LoginResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn login(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Response> {
    s.login_limiter
        .check(
            &s.store,
            &format!("login|{ip}|{}", req.email.to_lowercase()),
        )
        .await?;
    let org_id = match &req.org {
        Some(name) => match s.store.organisation_by_name(name).await? {
            Some(o) => Some(o.id),
            None => {
                auth::burn_password_time(&req.password);
                return Err(ApiError::Unauthenticated);
            }
        },
        None => None,
    };
    let candidates = s.store.admins_by_email(org_id, &req.email).await?;
    if candidates.is_empty() {
        auth::burn_password_time(&req.password);
        // No admin, so no organisation whose audit log could hold the attempt.
        tracing::info!(email = %req.email, "admin login failed: no such admin");
        return Err(ApiError::Unauthenticated);
    }
    // Every candidate's password is checked, disabled or not, so the answer takes as long for a
    // disabled admin as for a wrong password.
    let checked: Vec<_> = candidates
        .into_iter()
        .map(|a| {
            let matches = auth::verify_password(&req.password, &a.password_hash);
            (a, matches)
        })
        .collect();
    if let Some((admin, _)) = checked.iter().find(|(a, matches)| *matches && !a.disabled) {
        return start_session(&s, admin.clone(), "password", json!({})).await;
    }
    tracing::info!(email = %req.email, "admin login failed");
    // The entries are written after the answer rather than before it: waiting for a commit
    // here would make a refusal for an admin's address slower than one for an unknown address,
    // telling which addresses are admins.
    let refusals: Vec<FailedLogin> = checked
        .into_iter()
        .map(|(admin, password_matched)| FailedLogin {
            reason: if password_matched {
                "the admin is disabled"
            } else {
                "wrong password"
            },
            admin,
        })
        .collect();
    tokio::spawn(audit_failed_login(s.store.clone(), refusals, ip));
    Err(ApiError::Unauthenticated)
}

/// A refused password sign-in of one admin.
struct FailedLogin {
    admin: keyward_store::AdminRecord,
    reason: &'static str,
}

/// Records a refused password sign-in as `auth.login_failed` in the organisation of each admin
/// the e-mail address named, with the reason and the client's address (never the password).
async fn audit_failed_login(store: keyward_store::Store, refusals: Vec<FailedLogin>, ip: String) {
    let written = async {
        let mut tx = store.begin().await?;
        for FailedLogin { admin, reason } in &refusals {
            tx.append_audit(
                admin.org_id,
                &format!("admin:{}", admin.email),
                "auth.login_failed",
                &format!("admin:{}", admin.id),
                json!({"method": "password", "reason": reason, "ip": ip}),
            )
            .await?;
        }
        tx.commit().await
    }
    .await;
    if let Err(e) = written {
        tracing::error!(error = %e, "a refused admin login could not be audited");
    }
}

/// Signs an admin in: a session row, its audit entry (`auth.login` with how), the HttpOnly
/// session cookie and the CSRF token in the answer. Every sign-in path (password, passkey, set-up,
/// sign-in link) ends here, so sessions are alike whichever way they began.
pub(crate) async fn start_session(
    s: &AppState,
    admin: keyward_store::AdminRecord,
    method: &str,
    mut detail: serde_json::Value,
) -> ApiResult<Response> {
    if admin.disabled {
        return Err(ApiError::Unauthenticated);
    }
    let role = Role::parse(&admin.role).ok_or_else(|| ApiError::Internal("unknown role".into()))?;
    let session = auth::new_secret("kws_");
    let csrf = auth::new_secret("kwc_");
    let expires = chrono::Utc::now() + chrono::Duration::hours(s.session_hours);
    if let Some(map) = detail.as_object_mut() {
        map.insert("method".into(), json!(method));
    }
    let mut tx = s.store.begin().await?;
    tx.append_audit(
        admin.org_id,
        &format!("admin:{}", admin.email),
        "auth.login",
        &format!("admin:{}", admin.id),
        detail,
    )
    .await?;
    tx.commit().await?;
    s.store
        .insert_session(
            &auth::secret_hash(&session),
            admin.id,
            &auth::secret_hash(&csrf),
            expires,
        )
        .await?;
    let secure = if s.secure_cookies { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        s.session_hours * 3600
    );
    let body = LoginResponse {
        csrf_token: csrf,
        admin: Me {
            id: admin.id,
            org_id: admin.org_id,
            email: admin.email,
            role,
        },
    };
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|_| ApiError::Internal("cookie header".into()))?,
    );
    Ok(resp)
}

#[utoipa::path(post, path = "/api/v1/auth/logout",
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn logout(
    State(s): State<AppState>,
    p: Principal,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // Logging out ends the admin's delegated sessions: the user's key leaves their PC at once.
    if let Some(hub) = &s.relay {
        crate::relay::api::end_admin_sessions(hub, p.org_id, p.admin_id, "admin logged out")
            .await?;
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned());
    if let Some(c) = cookie {
        s.store.delete_session(&auth::secret_hash(&c)).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("keyward_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    Ok(resp)
}

#[utoipa::path(get, path = "/api/v1/auth/me",
    responses((status = 200, body = Me), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn me(p: Principal) -> axum::Json<Me> {
    axum::Json(Me {
        id: p.admin_id,
        org_id: p.org_id,
        email: p.email,
        role: p.role,
    })
}

#[utoipa::path(post, path = "/api/v1/tokens", request_body = TokenRequest,
    responses((status = 201, body = TokenResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn create_token(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<TokenRequest>,
) -> ApiResult<(StatusCode, axum::Json<TokenResponse>)> {
    s.login_limiter
        .check(&s.store, &format!("token|{}", p.admin_id))
        .await?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::Unprocessable(
            "name must be 1 to 100 characters".into(),
        ));
    }
    let (rec, token) = create_api_token(&s.store, &p, name).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenResponse {
            id: rec.id,
            name: rec.name,
            token,
        }),
    ))
}

/// Creates a token for an admin with its audit entry; returns the record and the token (once).
pub async fn create_api_token(
    store: &keyward_store::Store,
    p: &Principal,
    name: &str,
) -> ApiResult<(keyward_store::ApiTokenRecord, String)> {
    let token = auth::new_secret("kwt_");
    let mut tx = store.begin().await?;
    let rec = tx
        .insert_api_token(p.admin_id, name, &auth::secret_hash(&token))
        .await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "token.create",
        &format!("admin:{}", p.admin_id),
        json!({"token_id": rec.id, "name": name}),
    )
    .await?;
    tx.commit().await?;
    Ok((rec, token))
}
