//! The Graph client: one per tenant connection. Sends requests with the cached token, retries
//! throttled and failed requests, and maps Graph's errors onto [`EntraError`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::auth::{CachedToken, refresh_margin, request_token, without_url};
use crate::config::{EntraConfig, RetryPolicy, validate_base_url};
use crate::error::{EntraError, ErrorKind};

/// Which Graph API version to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    Beta,
}

impl ApiVersion {
    pub fn path(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1.0",
            ApiVersion::Beta => "beta",
        }
    }
}

/// Whether repeating a request after an ambiguous failure (a 500, a dropped answer) is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    Safe,
    /// Retried only where Graph says it did nothing: connection refused, 429, 503.
    Unsafe,
}

pub(crate) struct GraphResponse {
    pub request_id: Option<String>,
    pub body: Vec<u8>,
}

struct Inner {
    http: reqwest::Client,
    config: EntraConfig,
    token_url: String,
    graph_url: String,
    graph_origin: Url,
    scope: String,
    token: Mutex<Option<CachedToken>>,
}

/// A Microsoft Graph client for one tenant; cheap to clone.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("tenant_id", &self.inner.config.tenant_id)
            .field("graph_url", &self.inner.graph_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct GraphErrorEnvelope {
    error: GraphErrorBody,
}

#[derive(Deserialize)]
struct GraphErrorBody {
    code: Option<String>,
    message: Option<String>,
    #[serde(rename = "innerError")]
    inner_error: Option<serde_json::Value>,
}

impl GraphClient {
    /// Validates the settings and builds the client (no network traffic yet).
    pub fn new(config: EntraConfig) -> Result<Self, EntraError> {
        let authority = validate_base_url("authority_url", &config.authority_url)?;
        let graph_url = validate_base_url("graph_url", &config.graph_url)?;
        if config.tenant_id.is_empty() || config.tenant_id.contains(['/', '?', '#']) {
            return Err(EntraError::config(
                "tenant_id must be a tenant id or domain name",
            ));
        }
        if config.client_id.is_empty() {
            return Err(EntraError::config("client_id is empty"));
        }
        let graph_origin = Url::parse(&graph_url).map_err(|e| EntraError::config(e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .https_only(false)
            .user_agent(concat!("Keyward/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EntraError::config(format!("HTTP client: {e}")))?;
        Ok(GraphClient {
            inner: Arc::new(Inner {
                token_url: format!("{authority}/{}/oauth2/v2.0/token", config.tenant_id),
                scope: format!("{graph_url}/.default"),
                graph_url,
                graph_origin,
                http,
                config,
                token: Mutex::new(None),
            }),
        })
    }

    pub fn config(&self) -> &EntraConfig {
        &self.inner.config
    }

    /// `{graph_url}/{version}{path}`.
    pub(crate) fn url(&self, version: ApiVersion, path: &str) -> String {
        format!("{}/{}{path}", self.inner.graph_url, version.path())
    }

    /// Gets a token now (cached or new): a cheap way to test the connection settings.
    pub async fn check_credentials(&self) -> Result<(), EntraError> {
        self.token().await.map(|_| ())
    }

    async fn token(&self) -> Result<crate::config::Secret, EntraError> {
        let mut cached = self.inner.token.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.token.clone());
        }
        let retry = &self.inner.config.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let c = &self.inner.config;
            match request_token(
                &self.inner.http,
                &self.inner.token_url,
                &c.client_id,
                &self.inner.scope,
                &c.credential,
            )
            .await
            {
                Ok((token, lifetime)) => {
                    let refresh_at =
                        Instant::now() + lifetime.saturating_sub(refresh_margin(lifetime));
                    *cached = Some(CachedToken {
                        token: token.clone(),
                        refresh_at,
                    });
                    return Ok(token);
                }
                Err(e) if e.kind == ErrorKind::Transport && attempt < retry.max_attempts => {
                    tokio::time::sleep(backoff(retry, attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn forget_token(&self) {
        *self.inner.token.lock().await = None;
    }

    /// Checks that a link Graph gave us (nextLink, deltaLink) points at the configured Graph, so
    /// the bearer token is never sent anywhere else.
    pub(crate) fn check_link(&self, link: &str) -> Result<(), EntraError> {
        let url =
            Url::parse(link).map_err(|_| EntraError::bad_response("a paging link is not a URL"))?;
        let o = &self.inner.graph_origin;
        if url.scheme() != o.scheme()
            || url.host_str() != o.host_str()
            || url.port_or_known_default() != o.port_or_known_default()
        {
            return Err(EntraError::bad_response(format!(
                "a paging link points outside the configured Graph ({})",
                url.host_str().unwrap_or("?")
            )));
        }
        Ok(())
    }

    /// Sends one Graph request with retries; returns the successful response or the mapped error.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, &str)],
        idempotency: Idempotency,
    ) -> Result<GraphResponse, EntraError> {
        let retry = &self.inner.config.retry;
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let token = self.token().await?;
            let mut req = self
                .inner
                .http
                .request(method.clone(), url)
                .bearer_auth(token.expose())
                .header("client-request-id", uuid::Uuid::new_v4().to_string());
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let last = attempt >= retry.max_attempts;
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    // A refused connection never reached Graph, so even unsafe requests may retry.
                    let may_retry = idempotency == Idempotency::Safe || e.is_connect();
                    if may_retry && !last {
                        tracing::debug!(error = %without_url(&e), attempt, "graph request failed; retrying");
                        tokio::time::sleep(backoff(retry, attempt)).await;
                        continue;
                    }
                    return Err(transport_error(&e, idempotency));
                }
            };
            let status = resp.status();
            let request_id = header(&resp, "request-id");
            let retry_after = header(&resp, "retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = match resp.bytes().await {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    if idempotency == Idempotency::Safe && !last {
                        tokio::time::sleep(backoff(retry, attempt)).await;
                        continue;
                    }
                    return Err(transport_error(&e, idempotency).with_request_id(request_id));
                }
            };
            if status.is_success() {
                return Ok(GraphResponse { request_id, body });
            }
            let err = map_graph_error(status, &body, request_id.clone(), retry_after);
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                // The token may have expired or been revoked early; get a fresh one once.
                refreshed = true;
                self.forget_token().await;
                continue;
            }
            let throttled = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE;
            let retryable = throttled
                || (idempotency == Idempotency::Safe
                    && (status.is_server_error() || status == StatusCode::GATEWAY_TIMEOUT));
            if !retryable || last {
                return Err(err);
            }
            let delay = match retry_after {
                Some(d) if d > retry.max_retry_after => {
                    let mut e = err;
                    e.kind = ErrorKind::Throttled {
                        retry_after: Some(d),
                    };
                    return Err(e);
                }
                // Graph's Retry-After is the wait it wants; no jitter below it.
                Some(d) => d,
                None => backoff(retry, attempt),
            };
            tracing::info!(
                status = status.as_u16(),
                request_id = request_id.as_deref().unwrap_or("-"),
                delay_ms = delay.as_millis() as u64,
                "graph asked us to wait; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// GET and parse JSON.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(T, Option<String>), EntraError> {
        let resp = self
            .send(Method::GET, url, None, headers, Idempotency::Safe)
            .await?;
        let v = parse_json(&resp)?;
        Ok((v, resp.request_id))
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    resp: &GraphResponse,
) -> Result<T, EntraError> {
    serde_json::from_slice(&resp.body).map_err(|e| {
        EntraError::bad_response(format!("the response is not the expected JSON ({e})"))
            .with_request_id(resp.request_id.clone())
    })
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn transport_error(e: &reqwest::Error, idempotency: Idempotency) -> EntraError {
    let mut msg = without_url(e);
    if idempotency == Idempotency::Unsafe && !e.is_connect() {
        msg.push_str(" (the request may have been applied; check before repeating it)");
    }
    EntraError::transport(msg)
}

/// Exponential backoff with jitter: a random delay in [d/2, d], d = base × 2^(attempt-1), capped.
pub(crate) fn backoff(retry: &RetryPolicy, attempt: u32) -> Duration {
    let exp = retry
        .base_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let d = exp.min(retry.max_delay);
    let half = d / 2;
    let jitter_ms = rand::thread_rng().gen_range(0..=half.as_millis().max(1) as u64);
    half + Duration::from_millis(jitter_ms)
}

/// Maps a Graph error answer onto an [`EntraError`], branching on status and `error.code`.
pub(crate) fn map_graph_error(
    status: StatusCode,
    body: &[u8],
    request_id: Option<String>,
    retry_after: Option<Duration>,
) -> EntraError {
    let parsed: Option<GraphErrorEnvelope> = serde_json::from_slice(body).ok();
    let (code, message, inner_id) = match parsed {
        Some(p) => (
            p.error.code,
            p.error.message.unwrap_or_default(),
            p.error
                .inner_error
                .as_ref()
                .and_then(|i| i.get("request-id"))
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        ),
        None => (
            None,
            format!("HTTP {status} without a Graph error body"),
            None,
        ),
    };
    let kind = match (status.as_u16(), code.as_deref()) {
        (_, Some("syncStateNotFound" | "resyncRequired")) => ErrorKind::DeltaExpired,
        (401, _) => ErrorKind::Auth,
        (403, _) => ErrorKind::Permission,
        (404, _) => ErrorKind::NotFound,
        (405, _) => ErrorKind::ConsentingAdmin,
        (429, _) => ErrorKind::Throttled { retry_after },
        (s, _) if s >= 500 => ErrorKind::Transport,
        _ => ErrorKind::Rejected,
    };
    EntraError {
        kind,
        status: Some(status.as_u16()),
        code,
        message,
        request_id: request_id.or(inner_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let d1 = backoff(&r, 1);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d10 = backoff(&r, 10);
            assert!(
                d10 >= Duration::from_millis(500) && d10 <= Duration::from_millis(1000),
                "{d10:?}"
            );
        }
    }

    #[test]
    fn graph_errors_map_by_status_and_code() {
        let body = br#"{"error":{"code":"methodNotAllowed","message":"The method is not supported for this URL.","innerError":{"request-id":"rid-1"}}}"#;
        let e = map_graph_error(StatusCode::METHOD_NOT_ALLOWED, body, None, None);
        assert_eq!(e.kind, ErrorKind::ConsentingAdmin);
        assert_eq!(
            e.request_id.as_deref(),
            Some("rid-1"),
            "falls back to innerError's id"
        );
        let gone = br#"{"error":{"code":"resyncRequired","message":"x"}}"#;
        assert_eq!(
            map_graph_error(StatusCode::GONE, gone, None, None).kind,
            ErrorKind::DeltaExpired
        );
        let e = map_graph_error(StatusCode::BAD_GATEWAY, b"<html>", Some("h".into()), None);
        assert_eq!(e.kind, ErrorKind::Transport);
        assert_eq!(e.request_id.as_deref(), Some("h"));
    }
}
