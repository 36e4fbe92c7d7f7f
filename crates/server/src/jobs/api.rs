//! `/jobs/{id}`: progress, the SSE progress stream, retry and cancel.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use keyward_store::{JobItemRecord, JobRecord, job_state};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::{AppState, IdPath, Query};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Problem};

#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct JobItem {
    pub user_id: Uuid,
    /// `queued`, `running`, `retrying`, `done`, `failed` or `cancelled`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The Graph request-id of the failed call, for Microsoft support.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub attempts: i32,
    /// What the item produced (e.g. the Entra method id); never a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl From<JobItemRecord> for JobItem {
    fn from(mut i: JobItemRecord) -> Self {
        // A sealed Temporary Access Pass is revealed only through its own endpoint.
        if let Some(obj) = i.result.as_mut().and_then(|r| r.as_object_mut())
            && obj
                .remove(keyward_store::JobItemRecord::TAP_SEALED_FIELD)
                .is_some()
        {
            obj.insert("tap_available".into(), serde_json::Value::Bool(true));
        }
        JobItem {
            user_id: i.user_id,
            state: i.state,
            error: i.error,
            request_id: i.request_id,
            attempts: i.attempts,
            result: i.result,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Job {
    pub id: Uuid,
    /// `import` or `provision`.
    pub kind: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    pub total: i32,
    pub done: i32,
    pub failed: i32,
    /// Why the whole job failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    pub items: Vec<JobItem>,
    /// Present when more items follow: pass it as `cursor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The counts the SSE stream sends.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Clone)]
pub struct JobProgress {
    pub id: Uuid,
    pub state: String,
    pub total: i32,
    pub done: i32,
    pub failed: i32,
}

impl From<&JobRecord> for JobProgress {
    fn from(j: &JobRecord) -> Self {
        JobProgress {
            id: j.id,
            state: j.state.clone(),
            total: j.total,
            done: j.done,
            failed: j.failed,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Items per page: 1,000 by default, at most 10,000.
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobCreated {
    pub job_id: Uuid,
}

#[derive(Serialize, ToSchema)]
pub struct RetryResult {
    pub job_id: Uuid,
    /// Items put back in the queue.
    pub retried: u64,
}

pub(crate) fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        job_state::DONE | job_state::FAILED | job_state::CANCELLED
    )
}

/// Progress and items of a job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = Uuid, Path), JobQuery),
    responses((status = 200, body = Job), (status = 404, body = Problem)))]
pub async fn get_job(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
    Query(q): Query<JobQuery>,
) -> ApiResult<axum::Json<Job>> {
    let limit = match q.limit {
        None => 1000,
        Some(l) if (1..=10_000).contains(&l) => l,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "limit must be between 1 and 10000".into(),
            ));
        }
    };
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            c.parse::<i32>()
                .map_err(|_| ApiError::BadRequest("invalid cursor".into()))?,
        ),
    };
    let job = s.store.job(p.org_id, id).await?.ok_or(ApiError::NotFound)?;
    let items = s.store.job_items(p.org_id, id, after, limit + 1).await?;
    let more = items.len() as i64 > limit;
    let items: Vec<JobItemRecord> = items.into_iter().take(limit as usize).collect();
    let next_cursor = if more {
        items.last().map(|i| i.seq.to_string())
    } else {
        None
    };
    Ok(axum::Json(Job {
        id: job.id,
        kind: job.kind,
        state: job.state,
        total: job.total,
        done: job.done,
        failed: job.failed,
        error: job.error,
        result: job.result,
        items: items.into_iter().map(JobItem::from).collect(),
        next_cursor,
    }))
}

/// A server-sent event stream of the job's counts: one `progress` event now and one at each
/// change, ending after the job reaches a final state.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = Uuid, Path)),
    responses((status = 200, description = "text/event-stream of JobProgress"), (status = 404, body = Problem)))]
pub async fn events(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let first = s.store.job(p.org_id, id).await?.ok_or(ApiError::NotFound)?;
    let org = p.org_id;
    let store = s.store.clone();
    // Polling the row (not an in-process channel) works the same with several replicas.
    let stream = futures::stream::unfold(
        (Some(JobProgress::from(&first)), None::<JobProgress>, false),
        move |(pending, last, ended)| {
            let store = store.clone();
            async move {
                if ended {
                    return None;
                }
                let mut pending = pending;
                let mut last = last;
                loop {
                    if let Some(p) = pending.take() {
                        let end = is_terminal(&p.state);
                        let ev = Event::default()
                            .event("progress")
                            .json_data(&p)
                            .unwrap_or_else(|_| Event::default().event("error"));
                        return Some((Ok(ev), (None, Some(p), end)));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    match store.job(org, id).await {
                        Ok(Some(j)) => {
                            let now = JobProgress::from(&j);
                            if last.as_ref() != Some(&now) {
                                pending = Some(now);
                            }
                        }
                        Ok(None) => return None,
                        Err(e) => {
                            tracing::warn!(error = %e, "job events: database unavailable");
                            let ev = Event::default().event("error").data("database unavailable");
                            last = None;
                            return Some((Ok(ev), (None, last, true)));
                        }
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Puts the job's failed items back in the queue.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = Uuid, Path)),
    responses((status = 202, body = RetryResult), (status = 404, body = Problem)))]
pub async fn retry(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, axum::Json<RetryResult>)> {
    // The change and its audit entry commit together.
    let mut tx = s.store.begin().await?;
    let retried = tx
        .retry_job(p.org_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let detail = json!({ "retried": retried });
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "job.retry",
        &format!("job:{id}"),
        detail,
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RetryResult {
            job_id: id,
            retried,
        }),
    ))
}

/// Cancels a queued or running job; items already running finish their attempt.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = JobProgress), (status = 404, body = Problem)))]
pub async fn cancel(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<JobProgress>> {
    if s.store.job(p.org_id, id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let mut tx = s.store.begin().await?;
    let changed = tx.cancel_job(p.org_id, id).await?;
    let detail = json!({ "changed": changed });
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "job.cancel",
        &format!("job:{id}"),
        detail,
    )
    .await?;
    tx.commit().await?;
    let job = s.store.job(p.org_id, id).await?.ok_or(ApiError::NotFound)?;
    Ok(axum::Json(JobProgress::from(&job)))
}
