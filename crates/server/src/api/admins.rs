//! Administrators of the caller's organisation: owners add admins, change roles and disable them;
//! admins and auditors may read the list.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use keyward_store::{AdminRecord, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, IdPath, Json};
use crate::auth::{self, Principal, Role};
use crate::error::{ApiError, ApiResult, Problem};

#[derive(Serialize, ToSchema)]
pub struct Admin {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

impl TryFrom<AdminRecord> for Admin {
    type Error = ApiError;
    fn try_from(a: AdminRecord) -> Result<Self, ApiError> {
        let role = Role::parse(&a.role).ok_or_else(|| ApiError::Internal("unknown role".into()))?;
        Ok(Admin {
            id: a.id,
            email: a.email,
            role,
            disabled: a.disabled,
            created_at: a.created_at,
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct AdminList {
    pub items: Vec<Admin>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdmin {
    pub email: String,
    pub role: Role,
    /// At least 12 characters; stored only as an argon2id hash.
    #[schema(format = Password)]
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAdmin {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/admins",
    responses((status = 200, body = AdminList), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn list(State(s): State<AppState>, p: Principal) -> ApiResult<axum::Json<AdminList>> {
    let items = s
        .store
        .list_admins(p.org_id)
        .await?
        .into_iter()
        .map(Admin::try_from)
        .collect::<Result<_, _>>()?;
    Ok(axum::Json(AdminList { items }))
}

#[utoipa::path(post, path = "/api/v1/admins", request_body = CreateAdmin,
    responses((status = 201, body = Admin), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<CreateAdmin>,
) -> ApiResult<(StatusCode, axum::Json<Admin>)> {
    let email = req.email.trim().to_owned();
    let plausible = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty());
    if !plausible {
        return Err(ApiError::Unprocessable(
            "email must look like name@domain".into(),
        ));
    }
    let length = req.password.chars().count();
    if !(12..=1024).contains(&length) {
        return Err(ApiError::Unprocessable(
            "the password must have 12 to 1024 characters".into(),
        ));
    }
    if !s
        .store
        .admins_by_email(Some(p.org_id), &email)
        .await?
        .is_empty()
    {
        return Err(ApiError::Conflict(
            "an admin with this e-mail address exists".into(),
        ));
    }
    // Hashing is deliberately slow; keep it off the async workers.
    let password = req.password;
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let mut tx = s.store.begin().await?;
    let admin = tx
        .insert_admin(p.org_id, &email, req.role.as_str(), &hash)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                ApiError::Conflict("an admin with this e-mail address exists".into())
            }
            other => other.into(),
        })?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "admin.create",
        &format!("admin:{}", admin.id),
        json!({"email": email, "role": req.role.as_str()}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(admin.try_into()?)))
}

#[utoipa::path(patch, path = "/api/v1/admins/{id}", params(("id" = Uuid, Path)), request_body = UpdateAdmin,
    responses((status = 200, body = Admin), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn update(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
    Json(req): Json<UpdateAdmin>,
) -> ApiResult<axum::Json<Admin>> {
    let mut tx = s.store.begin().await?;
    let admins = tx.list_admins(p.org_id).await?;
    let target = admins
        .iter()
        .find(|a| a.id == id)
        .ok_or(ApiError::NotFound)?;
    let stays_owner = req
        .role
        .map_or(target.role == "owner", |r| r == Role::Owner)
        && req.disabled != Some(true);
    let other_owners = admins
        .iter()
        .filter(|a| a.id != id && a.role == "owner" && !a.disabled)
        .count();
    if target.role == "owner" && !target.disabled && !stays_owner && other_owners == 0 {
        return Err(ApiError::Conflict(
            "an organisation keeps at least one active owner".into(),
        ));
    }
    tx.update_admin(p.org_id, id, req.role.map(Role::as_str), req.disabled)
        .await?;
    // A disabled admin, or one whose new role may not use keys, loses their delegated sessions
    // in this transaction (the store also drops a disabled admin's cookie sessions and API
    // tokens); a disabled admin's pairing tools are closed too. Re-enabling restores none of it.
    let disabled_after = req.disabled.unwrap_or(target.disabled);
    let role_after = match req.role {
        Some(r) => Some(r),
        None => Role::parse(&target.role),
    };
    let may_connect =
        !disabled_after && role_after.is_some_and(|r| super::Permission::UseKeys.allows(r));
    let reason = if disabled_after {
        "admin disabled"
    } else {
        "admin's role may not use keys"
    };
    let ended = if may_connect {
        Vec::new()
    } else {
        tx.end_delegated_sessions_of_admin(p.org_id, id, reason)
            .await?
    };
    let tools: Vec<Uuid> = if disabled_after {
        s.store
            .pair_devices_of_admin(p.org_id, id)
            .await?
            .into_iter()
            .filter(|d| d.revoked_at.is_none())
            .map(|d| d.id)
            .collect()
    } else {
        Vec::new()
    };
    let mut detail = json!({"role": req.role.map(Role::as_str), "disabled": req.disabled});
    if !ended.is_empty() {
        detail["sessions_ended"] = json!(ended.iter().map(|r| r.id).collect::<Vec<_>>());
    }
    if !tools.is_empty() {
        detail["tools_closed"] = json!(tools);
    }
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "admin.update",
        &format!("admin:{id}"),
        detail,
    )
    .await?;
    tx.commit().await?;
    if let Some(hub) = &s.relay {
        crate::relay::api::admin_lost_access(hub, &ended, &tools, reason).await?;
    }
    let admin = s.store.admin(id).await?.ok_or(ApiError::NotFound)?;
    Ok(axum::Json(admin.try_into()?))
}
