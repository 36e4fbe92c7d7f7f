//! The one mapping from failures to HTTP answers: `application/problem+json` bodies with a stable
//! `type` URI and a safe `detail`. Internal details are logged, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyward_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A stable URI naming the kind of problem, e.g. `https://keyward.dev/problems/not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthenticated")]
    Unauthenticated,
    #[error("forbidden")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("payload too large")]
    TooLarge,
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("invalid: {0}")]
    Unprocessable(String),
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// A dependency (database, vault, audit log) failed: refuse, fail closed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("not implemented: {0}")]
    NotImplemented(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            ),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "Invalid request",
            ),
            ApiError::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::NotImplemented(_) => (
                StatusCode::NOT_IMPLEMENTED,
                "not-implemented",
                "Not implemented",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// What the client may see. Dependency and internal failures say only that they happened.
    fn safe_detail(&self) -> String {
        match self {
            ApiError::BadRequest(d) | ApiError::Conflict(d) | ApiError::Unprocessable(d) => {
                d.clone()
            }
            ApiError::UnsupportedMediaType(d) | ApiError::NotImplemented(d) => d.clone(),
            ApiError::Unauthenticated => {
                "a valid session cookie or bearer token is required".into()
            }
            ApiError::Forbidden => "your role does not allow this action".into(),
            ApiError::NotFound => "no such resource".into(),
            ApiError::TooLarge => "the request body exceeds the limit".into(),
            ApiError::RateLimited { retry_after_secs } => {
                format!("try again in {retry_after_secs} s")
            }
            ApiError::Unavailable(_) => "a dependency is unavailable; nothing was changed".into(),
            ApiError::Internal(_) => "an internal error occurred".into(),
        }
    }
}

pub fn problem_response(status: StatusCode, slug: &str, title: &str, detail: String) -> Response {
    let body = Problem {
        kind: format!("https://keyward.dev/problems/{slug}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
    };
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        match &self {
            ApiError::Unavailable(d) | ApiError::Internal(d) => {
                tracing::error!(error = %d, "request failed")
            }
            _ => tracing::debug!(error = %self, "request refused"),
        }
        let mut resp = problem_response(status, slug, title, self.safe_detail());
        if let ApiError::RateLimited { retry_after_secs } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Conflict(c) => ApiError::Conflict(format!("already exists ({c})")),
            StoreError::Invalid(r) => ApiError::Unprocessable(r),
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

impl From<keyward_vault::VaultError> for ApiError {
    fn from(e: keyward_vault::VaultError) -> Self {
        ApiError::Unavailable(format!("vault: {e}"))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
