//! Signing in without a password: the first-run owner set-up through the one-time link that
//! `keyward serve` prints while no admin exists, and the one-time sign-in links that the bootstrap
//! CLI (`keyward admin login-link`, `keyward quickstart`) prints for an existing admin.
//!
//! Both links carry their token in the URL fragment, which browsers never send to a server, so it
//! reaches no access log; the page posts it here. Tokens are 256-bit random, stored as SHA-256,
//! spent on first use (deleted in the transaction that uses them) and expire.

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::auth_routes::{ClientIp, LoginResponse, start_session};
use super::{AppState, Json};
use crate::auth::{self, Role};
use crate::error::{ApiError, ApiResult, Problem};
use keyward_store::token_kind;

#[derive(Serialize, ToSchema)]
pub struct SetupStatus {
    /// True while no admin exists: the set-up link printed by `keyward serve` works.
    pub needed: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// The token of the link `keyward serve` printed.
    #[schema(format = Password)]
    pub token: String,
    /// The organisation's name.
    pub org: String,
    /// The owner's e-mail address.
    pub email: String,
    #[schema(format = Password)]
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// The token of a sign-in link.
    #[schema(format = Password)]
    pub token: String,
}

#[utoipa::path(get, path = "/api/v1/setup", security(),
    responses((status = 200, body = SetupStatus), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn status(State(s): State<AppState>) -> ApiResult<axum::Json<SetupStatus>> {
    Ok(axum::Json(SetupStatus {
        needed: s.store.admin_count().await? == 0,
    }))
}

#[utoipa::path(post, path = "/api/v1/setup", request_body = SetupRequest, security(),
    responses((status = 200, body = LoginResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn setup(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<SetupRequest>,
) -> ApiResult<Response> {
    s.login_limiter
        .check(&s.store, &format!("setup|{ip}"))
        .await?;
    let org_name = req.org.trim();
    let email = req.email.trim();
    if org_name.is_empty() || org_name.chars().count() > 200 {
        return Err(ApiError::Unprocessable(
            "the organisation name must be 1 to 200 characters".into(),
        ));
    }
    if !email.contains('@') || email.len() > 254 {
        return Err(ApiError::Unprocessable(
            "email must look like name@domain".into(),
        ));
    }
    if req.password.chars().count() < 12 {
        return Err(ApiError::Unprocessable(
            "the password must have at least 12 characters".into(),
        ));
    }
    if s.store.admin_count().await? > 0 {
        return Err(done());
    }
    let hash = auth::hash_password(&req.password)?;
    // An organisation made with `keyward org create` but never given an admin is adopted.
    let existing_org = s.store.organisation_by_name(org_name).await?;
    let mut tx = s.store.begin().await?;
    // Checked again inside the transaction: two set-ups racing cannot both create an owner.
    if tx.admin_count().await? > 0 {
        return Err(done());
    }
    let token = tx
        .take_one_time_token(&auth::secret_hash(req.token.trim()), token_kind::SETUP)
        .await?;
    match token {
        Some(t) if t.expires_at >= chrono::Utc::now().timestamp_millis() => {}
        _ => {
            return Err(ApiError::Unprocessable(
                "the set-up link is not valid: it was used, replaced by a newer one (restart of keyward serve), or expired"
                    .into(),
            ));
        }
    }
    let org_id = match existing_org {
        Some(o) => o.id,
        None => {
            let org = tx.insert_organisation(org_name).await?;
            tx.append_audit(
                org.id,
                "setup-link",
                "org.create",
                &format!("org:{}", org.id),
                json!({"name": org_name}),
            )
            .await?;
            org.id
        }
    };
    let admin = tx
        .insert_admin(org_id, email, Role::Owner.as_str(), &hash)
        .await?;
    tx.append_audit(
        org_id,
        "setup-link",
        "setup.complete",
        &format!("admin:{}", admin.id),
        json!({"email": email, "role": "owner"}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(org = %org_id, "first-run set-up complete");
    start_session(&s, admin, "setup", json!({})).await
}

fn done() -> ApiError {
    ApiError::Conflict("set-up is done: an admin already exists; sign in instead".into())
}

#[utoipa::path(post, path = "/api/v1/auth/link", request_body = LinkRequest, security(),
    responses((status = 200, body = LoginResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn sign_in_with_link(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<LinkRequest>,
) -> ApiResult<Response> {
    s.login_limiter
        .check(&s.store, &format!("link|{ip}"))
        .await?;
    let mut tx = s.store.begin().await?;
    let token = tx
        .take_one_time_token(&auth::secret_hash(req.token.trim()), token_kind::SIGNIN)
        .await?;
    tx.commit().await?;
    let admin_id = match token {
        Some(t) if t.expires_at >= chrono::Utc::now().timestamp_millis() => t.admin_id,
        _ => None,
    };
    let Some(admin_id) = admin_id else {
        tracing::info!("sign-in link refused: unknown, used or expired");
        return Err(ApiError::Unauthenticated);
    };
    let admin = s
        .store
        .admin(admin_id)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    start_session(&s, admin, "link", json!({})).await
}
