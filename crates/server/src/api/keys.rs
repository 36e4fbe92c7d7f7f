//! Security keys: assign, suspend, resume, revoke, status, credentials, one-time PINs, and the
//! CTAP endpoint.
//!
//! One-time PINs (design.md "Flows" step 2) are generated here, set on the key with CTAP
//! forcePINChange, and returned once in the answer: only the key's keyed PIN verifier is stored,
//! and neither the logs nor the audit log carry the PIN (invariant 7).

use std::future::Future;
use std::pin::Pin;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use keyward_store::{NewSecurityKey, SecurityKeyRecord};
use keyward_vault::KeyBinding;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{AppState, IdPath, Json, bytes_rejection};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Problem};

/// Why a CTAP request could not be served (CTAP-level errors travel inside the response bytes).
#[derive(Debug, thiserror::Error)]
pub enum CtapError {
    #[error("no such key")]
    NotFound,
    #[error("the key is not active")]
    NotActive,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// The key-operations engine as the API sees it: one CTAP2 request in, one response out, durable
/// and audited before it returns. Implemented by `keyops::KeyOps`.
pub trait CtapService: Send + Sync {
    fn ctap<'a>(
        &'a self,
        org_id: Uuid,
        key_id: Uuid,
        actor: &'a str,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, CtapError>> + Send + 'a>>;

    /// Sets a key's PIN from the server, with forcePINChange when `force_change`: resets the PIN
    /// retries and drops the key's PIN tokens; the credentials stay. Durable and audited (by whom,
    /// never the PIN) before it returns.
    fn set_pin<'a>(
        &'a self,
        org_id: Uuid,
        key_id: Uuid,
        actor: &'a str,
        pin: &'a Zeroizing<String>,
        force_change: bool,
    ) -> Pin<Box<dyn Future<Output = Result<(), CtapError>> + Send + 'a>>;

    /// The organisation's settings changed: forget whatever of them is cached.
    fn settings_changed(&self, _org_id: Uuid) {}
}

fn ctap_error(e: crate::keyops::KeyOpsError) -> CtapError {
    use crate::keyops::KeyOpsError;
    match e {
        KeyOpsError::NotFound => CtapError::NotFound,
        KeyOpsError::KeyNotActive(_) => CtapError::NotActive,
        KeyOpsError::InvalidRequest(r) => CtapError::Invalid(r.to_owned()),
        other => CtapError::Unavailable(other.to_string()),
    }
}

/// Admins reach keys through the API in registration-only mode (design.md invariant 1): the
/// server refuses assertions and destructive commands, whoever calls.
impl CtapService for crate::keyops::KeyOps {
    fn ctap<'a>(
        &'a self,
        org_id: Uuid,
        key_id: Uuid,
        actor: &'a str,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, CtapError>> + Send + 'a>> {
        let policy = keyward_authenticator::Policy {
            registration_only: true,
            preauthorized_uv: false,
        };
        Box::pin(async move {
            crate::keyops::KeyOps::ctap(self, org_id, key_id, actor, policy, request)
                .await
                .map_err(ctap_error)
        })
    }

    fn set_pin<'a>(
        &'a self,
        org_id: Uuid,
        key_id: Uuid,
        actor: &'a str,
        pin: &'a Zeroizing<String>,
        force_change: bool,
    ) -> Pin<Box<dyn Future<Output = Result<(), CtapError>> + Send + 'a>> {
        Box::pin(async move {
            crate::keyops::KeyOps::set_pin(self, org_id, key_id, actor, pin, force_change)
                .await
                .map_err(ctap_error)
        })
    }

    fn settings_changed(&self, org_id: Uuid) {
        self.forget_settings(org_id);
    }
}

#[derive(Serialize, ToSchema)]
pub struct Key {
    pub id: Uuid,
    pub user_id: Uuid,
    /// `active`, `suspended` or `revoked`.
    pub status: String,
    /// The AAGUID, hex.
    pub aaguid: String,
    pub pin_set: bool,
    pub pin_retries: i32,
    pub force_pin_change: bool,
}

impl From<SecurityKeyRecord> for Key {
    fn from(k: SecurityKeyRecord) -> Self {
        Key {
            id: k.id,
            user_id: k.user_id,
            status: k.status,
            aaguid: hex::encode(k.aaguid),
            pin_set: k.pin_verifier.is_some(),
            pin_retries: k.pin_retries,
            force_pin_change: k.force_pin_change,
        }
    }
}

/// The fewest digits of a one-time PIN, whatever the organisation's minimum PIN length: eight
/// random digits (about 26.6 bits) against the key's eight PIN retries.
pub const ONE_TIME_PIN_MIN_DIGITS: usize = 8;

/// How many digits a one-time PIN has for a key whose minimum PIN length is `min_pin_length`:
/// that minimum, but at least [`ONE_TIME_PIN_MIN_DIGITS`] and at most 63 (CTAP's limit in
/// bytes; one digit is one byte).
pub fn one_time_pin_length(min_pin_length: i32) -> usize {
    usize::try_from(min_pin_length)
        .unwrap_or(0)
        .clamp(ONE_TIME_PIN_MIN_DIGITS, 63)
}

/// A one-time PIN of `digits` decimal digits from the operating system's CSPRNG. Each digit comes
/// from one random byte below 250 (bytes of 250 and above are drawn again), so every digit is
/// uniform.
pub fn new_one_time_pin(digits: usize) -> Zeroizing<String> {
    use rand::RngCore;
    let mut pin = Zeroizing::new(String::with_capacity(digits));
    let mut buf = Zeroizing::new([0u8; 64]);
    while pin.len() < digits {
        rand::rngs::OsRng.fill_bytes(buf.as_mut());
        for &b in buf.iter() {
            if b < 250 && pin.len() < digits {
                pin.push(char::from(b'0' + b % 10));
            }
        }
    }
    pin
}

/// A one-time PIN on its way to the admin: serialised as a plain string, never printed (no
/// `Debug`), zeroized on drop.
pub struct OneTimePin(Zeroizing<String>);

impl Serialize for OneTimePin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[derive(Serialize, ToSchema)]
pub struct AssignedKey {
    pub key_id: Uuid,
    /// Only when the organisation's PIN policy is `admin_one_time`: the key's one-time PIN,
    /// returned this once. The key forces the user to change it at first use.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub one_time_pin: Option<OneTimePin>,
}

/// A one-time PIN set on a key by `POST /keys/{id}/pin`.
#[derive(Serialize, ToSchema)]
pub struct OneTimePinSet {
    pub key_id: Uuid,
    pub user_id: Uuid,
    /// The new PIN, returned this once: the key refuses to verify the user with it until they
    /// change it (CTAP forcePINChange).
    #[schema(value_type = String)]
    pub one_time_pin: OneTimePin,
    /// Always true: the user must change the PIN at first use.
    pub force_pin_change: bool,
    /// PIN retries left (reset to the maximum).
    pub pin_retries: i32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignMany {
    pub user_ids: Vec<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct AssignOutcome {
    pub user_id: Uuid,
    pub key_id: Option<Uuid>,
    /// This user's one-time PIN, returned this once, under the `admin_one_time` PIN policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub one_time_pin: Option<OneTimePin>,
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AssignManyResult {
    pub items: Vec<AssignOutcome>,
}

#[derive(Serialize, ToSchema)]
pub struct Credential {
    pub id: Uuid,
    pub rp_id: String,
    pub user_name: Option<String>,
    /// base64url without padding.
    pub credential_id: String,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    /// `automated`, `delegated` or `user`.
    pub via: String,
}

#[derive(Serialize, ToSchema)]
pub struct CredentialList {
    pub items: Vec<Credential>,
}

/// Creates a key for one user: a fresh data key from the vault, the row, the user's status, the
/// one-time PIN when the organisation's policy asks for one, and the audit entries in one
/// transaction. Returns the key id and the one-time PIN, if any.
async fn assign(
    s: &AppState,
    p: &Principal,
    user_id: Uuid,
) -> ApiResult<(Uuid, Option<OneTimePin>)> {
    let mut tx = s.store.begin().await?;
    let user = tx
        .user(p.org_id, user_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if user.status == "disabled" {
        return Err(ApiError::Conflict("the user is disabled".into()));
    }
    if user.key_id.is_some() {
        return Err(ApiError::Conflict(
            "the user already has a security key".into(),
        ));
    }
    // The organisation's settings decide what the new key is made with (AAGUID, minimum PIN
    // length); read in the same transaction, so a concurrent settings change is either wholly
    // before or wholly after this key.
    let settings = super::settings::effective_in(&mut tx, p.org_id, s.aaguid).await?;
    let key_id = Uuid::now_v7();
    let (wrapped_dek, kek_version) = s.vault.new_data_key(&KeyBinding {
        org_id: p.org_id,
        key_id,
    })?;
    let key = NewSecurityKey {
        id: key_id,
        aaguid: settings.aaguid.to_vec(),
        wrapped_dek,
        kek_version,
        min_pin_length: settings.min_pin_length,
        force_pin_change: false,
    };
    tx.insert_security_key(p.org_id, user_id, &key).await?;
    let one_time = settings.pin_policy == super::settings::PIN_POLICY_ADMIN_ONE_TIME;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "key.assign",
        &format!("key:{key_id}"),
        json!({"user_id": user_id, "pin_policy": settings.pin_policy}),
    )
    .await?;
    let pin = if one_time {
        let pin = new_one_time_pin(one_time_pin_length(settings.min_pin_length));
        let data_key = s.vault.unwrap(
            &KeyBinding {
                org_id: p.org_id,
                key_id,
            },
            &key.wrapped_dek,
            key.kek_version,
        )?;
        let verifier = crate::keyops::pin_verifier(&data_key, &pin);
        let code_points = i32::try_from(pin.len()).unwrap_or(i32::MAX);
        tx.set_initial_pin(p.org_id, key_id, &verifier, code_points, true)
            .await?;
        // Who set a one-time PIN on whose key; never the PIN.
        tx.append_audit(
            p.org_id,
            &p.actor(),
            "key.pin_set",
            &format!("key:{key_id}"),
            json!({"user_id": user_id, "force_change": true, "one_time": true, "on": "assign"}),
        )
        .await?;
        Some(OneTimePin(pin))
    } else {
        None
    };
    tx.commit().await?;
    s.metrics.record_key_operation("assign", "ok");
    Ok((key_id, pin))
}

/// Answers that carry a one-time PIN must not be kept by any cache.
fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[utoipa::path(post, path = "/api/v1/users/{id}/key", params(("id" = Uuid, Path)),
    responses((status = 201, body = AssignedKey), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn assign_one(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let (key_id, one_time_pin) = assign(&s, &p, id).await?;
    Ok(no_store(
        (
            StatusCode::CREATED,
            axum::Json(AssignedKey {
                key_id,
                one_time_pin,
            }),
        )
            .into_response(),
    ))
}

#[utoipa::path(post, path = "/api/v1/keys/assign", request_body = AssignMany,
    responses((status = 200, body = AssignManyResult), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn assign_many(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<AssignMany>,
) -> ApiResult<Response> {
    if req.user_ids.is_empty() || req.user_ids.len() > 1000 {
        return Err(ApiError::Unprocessable(
            "user_ids must hold 1 to 1000 ids".into(),
        ));
    }
    let mut items = Vec::with_capacity(req.user_ids.len());
    let mut pending = req.user_ids.into_iter();
    while let Some(user_id) = pending.next() {
        match assign(&s, &p, user_id).await {
            Ok((key_id, one_time_pin)) => items.push(AssignOutcome {
                user_id,
                key_id: Some(key_id),
                one_time_pin,
                error: None,
            }),
            // A dependency failure stops the batch: later items would fail the same way. If
            // keys were already assigned, their one-time PINs must still reach the admin (they
            // are shown only in this answer), so the batch answers with what it did and marks
            // this user and the rest as not assigned.
            Err(e @ ApiError::Unavailable(_)) => {
                if !items.iter().any(|i: &AssignOutcome| i.key_id.is_some()) {
                    return Err(e);
                }
                if let ApiError::Unavailable(detail) = &e {
                    tracing::error!(error = %detail, "bulk key assignment stopped");
                }
                let reason =
                    "not assigned: a dependency is unavailable; nothing was changed for this user"
                        .to_owned();
                for user_id in std::iter::once(user_id).chain(pending.by_ref()) {
                    items.push(AssignOutcome {
                        user_id,
                        key_id: None,
                        one_time_pin: None,
                        error: Some(reason.clone()),
                    });
                }
            }
            Err(ApiError::NotFound) => items.push(AssignOutcome {
                user_id,
                key_id: None,
                one_time_pin: None,
                error: Some("no such user".into()),
            }),
            Err(e) => items.push(AssignOutcome {
                user_id,
                key_id: None,
                one_time_pin: None,
                error: Some(e.to_string()),
            }),
        }
    }
    Ok(no_store(
        axum::Json(AssignManyResult { items }).into_response(),
    ))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = Key), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn get_one(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<Key>> {
    let key = s
        .store
        .key_by_id(p.org_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(key.into()))
}

async fn transition(
    s: &AppState,
    p: &Principal,
    id: Uuid,
    from: &[&str],
    to: &str,
    action: &str,
) -> ApiResult<axum::Json<Key>> {
    let current = s
        .store
        .key_by_id(p.org_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if !from.contains(&current.status.as_str()) {
        return Err(ApiError::Conflict(format!("the key is {}", current.status)));
    }
    let mut tx = s.store.begin().await?;
    tx.set_key_status(p.org_id, id, to).await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        action,
        &format!("key:{id}"),
        json!({"user_id": current.user_id, "from": current.status}),
    )
    .await?;
    tx.commit().await?;
    if let Some(hub) = &s.relay {
        if to == "active" {
            // The user's own pairing tools show the key again, on every replica.
            hub.key_available(p.org_id, id).await?;
        } else {
            // The key disappears at once from every pairing tool showing it, on every replica.
            hub.key_unavailable(p.org_id, id, &format!("key {to}"))
                .await?;
        }
    }
    s.metrics.record_key_operation(action, "ok");
    let key = s
        .store
        .key_by_id(p.org_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(key.into()))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/suspend", params(("id" = Uuid, Path)),
    responses((status = 200, body = Key), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn suspend(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<Key>> {
    transition(&s, &p, id, &["active"], "suspended", "key.suspend").await
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/resume", params(("id" = Uuid, Path)),
    responses((status = 200, body = Key), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn resume(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<Key>> {
    transition(&s, &p, id, &["suspended"], "active", "key.resume").await
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/revoke", params(("id" = Uuid, Path)),
    responses((status = 200, body = Key), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn revoke(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<Key>> {
    transition(
        &s,
        &p,
        id,
        &["active", "suspended"],
        "revoked",
        "key.revoke",
    )
    .await
}

/// Sets a new one-time PIN on a user's key.
///
/// Whatever the organisation's PIN policy: the helpdesk's answer to "I forgot my PIN" and "my PIN
/// is blocked". The key forces the user to change it at first use (CTAP forcePINChange); the PIN
/// retries are reset and the key's PIN tokens dropped, and nothing else changes (the credentials
/// stay). A revoked or suspended key is refused (409): a suspended key takes no changes until it
/// is resumed.
#[utoipa::path(post, path = "/api/v1/keys/{id}/pin", params(("id" = Uuid, Path)),
    responses((status = 200, body = OneTimePinSet, description = "The one-time PIN, shown this once (Cache-Control: no-store)"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn set_one_time_pin(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let key = s
        .store
        .key_by_id(p.org_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let not_active = |status: &str| match status {
        "revoked" => {
            ApiError::Conflict("the key is revoked: assign the user a new key instead".into())
        }
        "suspended" => ApiError::Conflict(
            "the key is suspended: resume it before setting a one-time PIN".into(),
        ),
        other => ApiError::Conflict(format!("the key is {other}")),
    };
    if key.status != "active" {
        return Err(not_active(&key.status));
    }
    let engine = s.ctap.as_ref().ok_or_else(|| {
        ApiError::NotImplemented("key operations are not enabled in this build".into())
    })?;
    // The organisation's minimum now, or the key's own if it was made under a longer one.
    let settings = super::settings::effective(&s.store, p.org_id, s.aaguid).await?;
    let pin = new_one_time_pin(one_time_pin_length(
        settings.min_pin_length.max(key.min_pin_length),
    ));
    let result = engine.set_pin(p.org_id, id, &p.actor(), &pin, true).await;
    s.metrics
        .record_key_operation("pin_set", if result.is_ok() { "ok" } else { "error" });
    result.map_err(|e| match e {
        CtapError::NotFound => ApiError::NotFound,
        // Suspended or revoked since it was read above.
        CtapError::NotActive => ApiError::Conflict("the key is no longer active".into()),
        CtapError::Invalid(r) => ApiError::Unprocessable(r),
        CtapError::Unavailable(d) => ApiError::Unavailable(d),
    })?;
    if let Some(hub) = &s.relay
        && let Err(e) = hub.key_pin_reset(p.org_id, id).await
    {
        // The PIN is set and must reach the admin; tokens other replicas issued under the old
        // PIN still expire on their own.
        tracing::warn!(key_id = %id, error = %e, "other replicas were not told to forget the key's PIN tokens");
    }
    let key = s
        .store
        .key_by_id(p.org_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(no_store(
        axum::Json(OneTimePinSet {
            key_id: id,
            user_id: key.user_id,
            one_time_pin: OneTimePin(pin),
            force_pin_change: key.force_pin_change,
            pin_retries: key.pin_retries,
        })
        .into_response(),
    ))
}

#[utoipa::path(get, path = "/api/v1/users/{id}/credentials", params(("id" = Uuid, Path)),
    responses((status = 200, body = CredentialList), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn credentials(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<CredentialList>> {
    s.store
        .user(p.org_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let items = s
        .store
        .credentials_of_user(p.org_id, id)
        .await?
        .into_iter()
        .map(|c| Credential {
            id: c.id,
            rp_id: c.rp_id,
            user_name: c.user_name,
            credential_id: URL_SAFE_NO_PAD.encode(&c.credential_id),
            created_at: c.created_at,
            created_by: c.created_by,
            via: c.via,
        })
        .collect();
    Ok(axum::Json(CredentialList { items }))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/ctap", params(("id" = Uuid, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "One CTAP2 request: command byte then CBOR"),
    responses((status = 200, content_type = "application/octet-stream", description = "The CTAP2 response: status byte then CBOR"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn ctap(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
    req: Request,
) -> ApiResult<Response> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != "application/octet-stream" {
        return Err(ApiError::UnsupportedMediaType(
            "expected application/octet-stream".into(),
        ));
    }
    let body = Bytes::from_request(req, &())
        .await
        .map_err(bytes_rejection)?;
    if body.is_empty() || body.len() > 7609 {
        // 7609 bytes is the CTAPHID maximum message size; nothing larger is a CTAP request.
        return Err(ApiError::BadRequest(
            "a CTAP request is 1 to 7609 bytes".into(),
        ));
    }
    s.store
        .key_by_id(p.org_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let engine = s.ctap.as_ref().ok_or_else(|| {
        ApiError::NotImplemented("key operations are not enabled in this build".into())
    })?;
    let result = engine.ctap(p.org_id, id, &p.actor(), body.to_vec()).await;
    s.metrics
        .record_key_operation("ctap", if result.is_ok() { "ok" } else { "error" });
    let bytes = result.map_err(|e| match e {
        CtapError::NotFound => ApiError::NotFound,
        CtapError::NotActive => ApiError::Conflict("the key is not active".into()),
        CtapError::Invalid(r) => ApiError::BadRequest(r),
        CtapError::Unavailable(d) => ApiError::Unavailable(d),
    })?;
    let mut resp = bytes.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_time_pins_have_at_least_eight_digits_and_at_most_sixty_three() {
        assert_eq!(one_time_pin_length(4), 8);
        assert_eq!(one_time_pin_length(8), 8);
        assert_eq!(one_time_pin_length(12), 12);
        assert_eq!(one_time_pin_length(63), 63);
        assert_eq!(one_time_pin_length(-1), 8);
        assert_eq!(one_time_pin_length(99), 63);
        for len in [8, 12, 63] {
            let pin = new_one_time_pin(len);
            assert_eq!(pin.len(), len);
            assert!(pin.bytes().all(|b| b.is_ascii_digit()), "{}", pin.as_str());
        }
    }

    #[test]
    fn one_time_pin_digits_are_spread_over_all_ten() {
        // 10,000 digits: each of the ten appears 1,000 times give or take 30 (one standard
        // deviation); a stuck or grossly skewed generator falls outside five of them.
        let mut counts = [0u32; 10];
        for _ in 0..1250 {
            for b in new_one_time_pin(8).bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        for (digit, n) in counts.iter().enumerate() {
            assert!((850..=1150).contains(n), "digit {digit} appeared {n} times");
        }
        assert_ne!(new_one_time_pin(8).as_str(), new_one_time_pin(8).as_str());
    }
}
