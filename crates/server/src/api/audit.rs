//! The audit log, newest first.

use axum::extract::State;
use chrono::{DateTime, Utc};
use keyward_store::AuditFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AppState, Query, decode_cursor, encode_cursor, page_limit};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Problem};

#[derive(Serialize, ToSchema)]
pub struct AuditItem {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// The entry's chain hash, hex.
    pub hash: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditItem>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub user_id: Option<Uuid>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<AuditQuery>,
) -> ApiResult<axum::Json<AuditPage>> {
    let limit = page_limit(q.limit)?;
    let before_seq = match &q.cursor {
        Some(c) => Some(
            decode_cursor(c)?
                .parse::<i64>()
                .map_err(|_| ApiError::BadRequest("invalid cursor".into()))?,
        ),
        None => None,
    };
    let filter = AuditFilter {
        actor: q.actor.clone(),
        user_id: q.user_id,
        action: q.action.clone(),
        since: q.since,
        before_seq,
        limit: limit + 1,
    };
    let mut rows = s.store.list_audit(p.org_id, &filter).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|e| encode_cursor(&e.seq.to_string()))
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(|e| AuditItem {
            seq: e.seq,
            at: e.at,
            actor: e.actor,
            action: e.action,
            target: e.target,
            detail: e.detail,
            hash: hex::encode(e.hash),
        })
        .collect();
    Ok(axum::Json(AuditPage { items, next_cursor }))
}
