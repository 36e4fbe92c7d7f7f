//! `POST /provisioning` (start a job) and the one-time reveal of a manual job's Temporary Access
//! Pass.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use keyward_store::{JobItemRecord, UserRecord, item_state};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::manual::instructions;
use super::{PROVISION_KIND, RP_MICROSOFT};
use crate::api::{AppState, Json};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Problem};
use crate::jobs::api::JobCreated;

/// The most users one job may name.
pub const MAX_USERS_PER_JOB: usize = 100_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartProvisioning {
    /// `microsoft`.
    pub rp: String,
    /// `automated` or `manual`.
    pub mode: String,
    pub user_ids: Vec<Uuid>,
    /// Assign a security key to users that have none (automated mode).
    #[serde(default)]
    pub assign_missing_keys: bool,
    /// The Entra directory to use; the organisation's first one by default.
    #[serde(default)]
    pub directory_id: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct RevealedTap {
    pub user_id: Uuid,
    /// Shown once: Keyward forgets it after this answer.
    pub temporary_access_pass: String,
    pub expires_in_minutes: Option<u64>,
    pub instructions: Vec<String>,
    /// The delegated connection to the user's key, started for the admin revealing the pass
    /// when their pairing tool is online (design flow 4).
    pub connection: crate::relay::api::DelegatedConnection,
}

/// Starts a provisioning job: one item per user.
#[utoipa::path(post, path = "/api/v1/provisioning", tag = "provisioning", request_body = StartProvisioning,
    responses((status = 202, body = JobCreated), (status = 422, body = Problem)))]
pub async fn start(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<StartProvisioning>,
) -> ApiResult<(StatusCode, axum::Json<JobCreated>)> {
    if req.rp != RP_MICROSOFT {
        return Err(ApiError::Unprocessable("rp must be \"microsoft\"".into()));
    }
    if req.mode != "automated" && req.mode != "manual" {
        return Err(ApiError::Unprocessable(
            "mode must be \"automated\" or \"manual\"".into(),
        ));
    }
    if req.user_ids.is_empty() || req.user_ids.len() > MAX_USERS_PER_JOB {
        return Err(ApiError::Unprocessable(format!(
            "user_ids must name 1 to {MAX_USERS_PER_JOB} users"
        )));
    }
    let mut ids = req.user_ids.clone();
    ids.sort();
    ids.dedup();
    if ids.len() != req.user_ids.len() {
        return Err(ApiError::Unprocessable(
            "user_ids contains duplicates".into(),
        ));
    }
    let dir = match req.directory_id {
        Some(id) => s
            .store
            .directory(p.org_id, id)
            .await?
            .ok_or_else(|| ApiError::Unprocessable("no such directory".into()))?,
        None => s
            .store
            .directories(p.org_id)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ApiError::Unprocessable(
                    "register an Entra ID directory first (POST /directories/entra)".into(),
                )
            })?,
    };
    let mut tx = s.store.begin().await?;
    for id in &req.user_ids {
        let u: Option<UserRecord> = tx.user(p.org_id, *id).await?;
        if u.is_none() {
            return Err(ApiError::Unprocessable(format!("no such user: {id}")));
        }
    }
    let params = json!({
        "rp": req.rp, "mode": req.mode, "directory_id": dir.id, "assign_missing_keys": req.assign_missing_keys,
    });
    let job = tx
        .insert_job(p.org_id, PROVISION_KIND, &params, &p.actor(), &req.user_ids)
        .await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "provisioning.start",
        &format!("job:{}", job.id),
        json!({ "rp": req.rp, "mode": req.mode, "users": req.user_ids.len(), "directory_id": dir.id,
                "assign_missing_keys": req.assign_missing_keys }),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(JobCreated { job_id: job.id }),
    ))
}

/// `{id}` and `{user_id}` path parameters; anything else is 404.
pub struct ItemPath(pub Uuid, pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for ItemPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<(Uuid, Uuid)>::from_request_parts(parts, state)
            .await
            .map(|p| ItemPath(p.0.0, p.0.1))
            .map_err(|_| ApiError::NotFound)
    }
}

/// Reveals a manual job item's Temporary Access Pass once, then forgets it.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/items/{user_id}/tap", tag = "provisioning",
    params(("id" = Uuid, Path), ("user_id" = Uuid, Path)),
    responses((status = 200, body = RevealedTap), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub async fn reveal_tap(
    State(s): State<AppState>,
    p: Principal,
    ItemPath(job_id, user_id): ItemPath,
) -> ApiResult<axum::Json<RevealedTap>> {
    let job = s
        .store
        .job(p.org_id, job_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let item = s
        .store
        .job_item(job.id, user_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut result = item.result.clone().unwrap_or(json!({}));
    let sealed = result
        .get(keyward_store::JobItemRecord::TAP_SEALED_FIELD)
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let Some(sealed) = sealed.filter(|_| item.state == item_state::DONE) else {
        return Err(ApiError::Conflict(
            "no Temporary Access Pass to show: none was created, or it was shown already".into(),
        ));
    };
    let blob = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        sealed.as_bytes(),
    )
    .map_err(|_| ApiError::Internal("stored pass is not base64".into()))?;
    let pass = s.vault.open_secret(
        &JobItemRecord::tap_context(p.org_id, job_id, user_id),
        &blob,
    )?;
    let pass = Zeroizing::new(
        String::from_utf8(pass.to_vec())
            .map_err(|_| ApiError::Internal("stored pass is not text".into()))?,
    );
    // The admin now holds the pass: connect their pairing tool to the user's key, through the
    // same path as Connect on the user's page (any replica may hold the tool).
    let connection = crate::relay::api::try_start_delegated_session(&s, &p, user_id).await?;
    // Forget it before answering: shown once means at most once, even if the answer is lost.
    if let Some(obj) = result.as_object_mut() {
        obj.remove(keyward_store::JobItemRecord::TAP_SEALED_FIELD);
        obj.insert("tap_revealed".into(), json!(true));
        obj.insert("connection".into(), json!(connection));
    }
    s.store
        .set_item_result(job_id, user_id, Some(&result))
        .await?;
    let mut tx = s.store.begin().await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "provisioning.tap_revealed",
        &format!("user:{user_id}"),
        json!({ "job_id": job_id }),
    )
    .await?;
    tx.commit().await?;
    let upn = s
        .store
        .user(p.org_id, user_id)
        .await?
        .map(|u| u.upn)
        .unwrap_or_default();
    Ok(axum::Json(RevealedTap {
        user_id,
        temporary_access_pass: pass.to_string(),
        expires_in_minutes: result
            .get("tap_expires_in_minutes")
            .and_then(|v| v.as_u64()),
        instructions: instructions(&upn),
        connection,
    }))
}
