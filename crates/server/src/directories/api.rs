//! `/directories`: register an Entra connection, test it, start an import.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use keyward_entra::{OurAuthenticator, validate_base_url};
use keyward_store::{DirectoryRecord, NewDirectory};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{IMPORT_KIND, graph_client};
use crate::api::{AppState, IdPath, Json};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Problem};
use crate::jobs::api::JobCreated;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDirectory {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    /// Sealed by the vault at once; never returned or logged.
    pub client_secret: String,
    /// Default `https://login.microsoftonline.com`; `http://` only for loopback hosts.
    #[serde(default)]
    pub authority_url: Option<String>,
    /// Default `https://graph.microsoft.com`; `http://` only for loopback hosts.
    #[serde(default)]
    pub graph_url: Option<String>,
    /// Import only this group's members (nested groups included).
    #[serde(default)]
    pub group_id: Option<String>,
    /// The account that granted the app its permissions, if known: Entra refuses to provision
    /// passkeys for it, so Keyward refuses up front. Learned automatically on the first refusal.
    #[serde(default)]
    pub consenting_upn: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Directory {
    pub id: Uuid,
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    pub authority_url: String,
    pub graph_url: String,
    pub group_id: Option<String>,
    pub consenting_upn: Option<String>,
    /// Whether the next import is incremental.
    pub incremental: bool,
    pub last_import_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<DirectoryRecord> for Directory {
    fn from(d: DirectoryRecord) -> Self {
        Directory {
            id: d.id,
            name: d.name,
            tenant_id: d.tenant_id,
            client_id: d.client_id,
            authority_url: d.authority_url,
            graph_url: d.graph_url,
            group_id: d.group_id,
            consenting_upn: d.consenting_upn,
            incremental: d.delta_link.is_some(),
            last_import_at: d.last_import_at,
            created_at: d.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct StartImport {
    /// Read every user again instead of only the changes since the last import.
    #[serde(default)]
    pub full: bool,
}

#[derive(Serialize, ToSchema)]
pub struct PreflightResult {
    /// True when provisioning can proceed.
    pub ok: bool,
    /// Plain-language reasons it cannot, each one an admin can act on.
    pub reasons: Vec<String>,
    /// The Graph request-id of a failed call, for Microsoft support.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

fn required(name: &str, v: &str, max: usize) -> ApiResult<()> {
    if v.trim().is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable(format!(
            "{name} must be 1 to {max} printable characters"
        )));
    }
    Ok(())
}

/// Registers an Entra ID connection. The client secret is sealed by the vault, bound to this row.
#[utoipa::path(post, path = "/api/v1/directories/entra", tag = "directories", request_body = CreateDirectory,
    responses((status = 201, body = Directory), (status = 422, body = Problem)))]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<CreateDirectory>,
) -> ApiResult<(StatusCode, axum::Json<Directory>)> {
    required("name", &req.name, 200)?;
    required("tenant_id", &req.tenant_id, 200)?;
    required("client_id", &req.client_id, 200)?;
    required("client_secret", &req.client_secret, 4096)?;
    let authority_url = validate_base_url(
        "authority_url",
        req.authority_url
            .as_deref()
            .unwrap_or(keyward_entra::DEFAULT_AUTHORITY_URL),
    )
    .map_err(|e| ApiError::Unprocessable(e.reason()))?;
    let graph_url = validate_base_url(
        "graph_url",
        req.graph_url
            .as_deref()
            .unwrap_or(keyward_entra::DEFAULT_GRAPH_URL),
    )
    .map_err(|e| ApiError::Unprocessable(e.reason()))?;
    let id = Uuid::now_v7();
    let sealed = s.vault.seal_secret(
        &DirectoryRecord::secret_context(p.org_id, id),
        req.client_secret.as_bytes(),
    )?;
    let new = NewDirectory {
        id,
        name: req.name.trim().to_owned(),
        tenant_id: req.tenant_id.trim().to_owned(),
        client_id: req.client_id.trim().to_owned(),
        sealed_client_secret: sealed,
        authority_url,
        graph_url,
        group_id: req.group_id.filter(|g| !g.trim().is_empty()),
        consenting_upn: req.consenting_upn.filter(|u| !u.trim().is_empty()),
    };
    let mut tx = s.store.begin().await?;
    let rec = tx.insert_directory(p.org_id, &new).await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "directory.create",
        &format!("directory:{id}"),
        json!({ "name": rec.name, "tenant_id": rec.tenant_id, "client_id": rec.client_id,
                "authority_url": rec.authority_url, "graph_url": rec.graph_url }),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(Directory::from(rec))))
}

/// The organisation's directories.
#[utoipa::path(get, path = "/api/v1/directories", tag = "directories",
    responses((status = 200, body = [Directory])))]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
) -> ApiResult<axum::Json<Vec<Directory>>> {
    let dirs = s.store.directories(p.org_id).await?;
    Ok(axum::Json(dirs.into_iter().map(Directory::from).collect()))
}

/// Starts an import job (incremental when a delta link is stored, unless `full`).
#[utoipa::path(post, path = "/api/v1/directories/{id}/import", tag = "directories",
    params(("id" = Uuid, Path)), request_body(content = Option<StartImport>),
    responses((status = 202, body = JobCreated), (status = 404, body = Problem)))]
pub async fn import(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, axum::Json<JobCreated>)> {
    // The body is optional: no body means an incremental import.
    let full = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        serde_json::from_slice::<StartImport>(&body)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?
            .full
    };
    let dir = s
        .store
        .directory(p.org_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut tx = s.store.begin().await?;
    let params = json!({ "directory_id": dir.id, "full": full });
    let job = tx
        .insert_job(p.org_id, IMPORT_KIND, &params, &p.actor(), &[])
        .await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "directory.import",
        &format!("directory:{id}"),
        json!({ "job_id": job.id, "full": full }),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(JobCreated { job_id: job.id }),
    ))
}

/// Pre-flight: signs in with the app's credentials and checks the tenant's passkey policy,
/// answering the reasons provisioning would fail in words an admin can act on.
#[utoipa::path(post, path = "/api/v1/directories/{id}/test", tag = "directories",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = PreflightResult), (status = 404, body = Problem)))]
pub async fn test(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<PreflightResult>> {
    let dir = s
        .store
        .directory(p.org_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let graph = match graph_client(&s.vault, &dir) {
        Ok(g) => g,
        Err(super::DirectoryError::Vault(e)) => return Err(e.into()),
        Err(e) => {
            return Ok(axum::Json(PreflightResult {
                ok: false,
                reasons: vec![e.to_string()],
                request_id: None,
            }));
        }
    };
    let fail = |e: keyward_entra::EntraError| PreflightResult {
        ok: false,
        reasons: vec![e.reason()],
        request_id: e.request_id.clone(),
    };
    if let Err(e) = graph.check_credentials().await {
        return Ok(axum::Json(fail(e)));
    }
    let policy = match graph.fido2_policy().await {
        Ok(pol) => pol,
        Err(e) => return Ok(axum::Json(fail(e))),
    };
    // The AAGUID the organisation's keys are made with (its settings), which the policy's
    // AAGUID restrictions must allow.
    let aaguid = crate::api::settings::effective(&s.store, p.org_id, s.aaguid)
        .await?
        .aaguid;
    let ours = OurAuthenticator {
        aaguid: aaguid_string(&aaguid),
        mds_attested: false,
    };
    let mut reasons = Vec::new();
    if let keyward_entra::Preflight::Blocked { reason } = policy.check(&ours) {
        reasons.push(reason);
    }
    Ok(axum::Json(PreflightResult {
        ok: reasons.is_empty(),
        reasons,
        request_id: None,
    }))
}

/// The AAGUID in Graph's textual form (lower-case, hyphenated).
pub fn aaguid_string(a: &[u8; 16]) -> String {
    Uuid::from_bytes(*a).hyphenated().to_string()
}
