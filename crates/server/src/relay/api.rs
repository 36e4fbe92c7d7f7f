//! HTTP side of the relay: registering pairing tools, and starting and ending delegated sessions.
//!
//! Route-table rows (crates/server/src/api/mod.rs) for the authenticated ones:
//! - `POST /pair/devices` — `Authenticated` — [`register_device`]
//! - `POST /users/{id}/connect` — `UseKeys` — [`connect`]
//! - `DELETE /users/{id}/connect` — `UseKeys` — [`disconnect`]
//! - `GET /pair/devices` — `Authenticated` — [`list_devices`] (the caller's own tools)
//! - `DELETE /pair/devices/{id}` — `Authenticated` — [`revoke`] (own tools; `ManageUsers` roles may
//!   revoke any tool in the organisation, e.g. a user's lost laptop)
//!
//! `POST /api/v1/pair/activate` is public (the activation code is the credential) and served by
//! [`super::router`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use keyward_store::{
    DelegatedSessionRecord, DeviceOwner, NewDelegatedSession, StoreError, UserPatch,
};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::protocol::{
    ActivateRequest, DeviceRegistered, ErrorCode, Principal as WirePrincipal,
    RegisterDeviceRequest, SessionMode,
};
use super::{AttachOutcome, Attached, RelayHub};
use crate::api::Permission;
use crate::api::{AppState, IdPath, Json};
use crate::auth::{Principal, Role, secret_hash};
use crate::error::{ApiError, ApiResult, Problem};

/// An uncompressed SEC1 P-256 point: 0x04 ‖ x ‖ y.
fn check_public_key(k: &[u8]) -> Result<(), ApiError> {
    if k.len() == 65 && k[0] == 0x04 {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "public_key must be an uncompressed P-256 point (65 bytes, base64url)".into(),
        ))
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::BadRequest(
            "name must be 1 to 200 characters".into(),
        ));
    }
    Ok(())
}

/// Registers an admin's pairing tool (`keyward-pair login`).
#[utoipa::path(post, path = "/api/v1/pair/devices", request_body = RegisterDeviceRequest,
    responses((status = 201, body = DeviceRegistered), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn register_device(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<RegisterDeviceRequest>,
) -> ApiResult<(StatusCode, axum::Json<DeviceRegistered>)> {
    check_public_key(&req.public_key)?;
    check_name(&req.name)?;
    let mut tx = s.store.begin().await?;
    let dev = tx
        .insert_pair_device(
            p.org_id,
            DeviceOwner::Admin(p.admin_id),
            req.name.trim(),
            &req.public_key,
        )
        .await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "pair.device_registered",
        &format!("device:{}", dev.id),
        json!({"name": dev.name}),
    )
    .await?;
    tx.commit().await?;
    let principal = WirePrincipal::Admin {
        id: p.admin_id.to_string(),
        email: p.email.clone(),
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(DeviceRegistered {
            device_id: dev.id.to_string(),
            principal,
        }),
    ))
}

/// Registers a user's pairing tool with a one-time activation code (`keyward-pair activate`).
/// Every failure of the code answers the same 410, so codes cannot be probed.
pub async fn activate(
    State(hub): State<Arc<RelayHub>>,
    Json(req): Json<ActivateRequest>,
) -> ApiResult<(StatusCode, axum::Json<DeviceRegistered>)> {
    check_public_key(&req.public_key)?;
    check_name(&req.name)?;
    let code = req.code.trim().to_ascii_uppercase();
    let mut tx = hub.store.begin().await?;
    let Some((org_id, user_id)) = tx
        .redeem_activation_code(&secret_hash(&code), keyward_store::now())
        .await?
    else {
        return Err(gone());
    };
    let user = tx.user(org_id, user_id).await?.ok_or_else(gone)?;
    if user.status == "disabled" {
        return Err(gone());
    }
    let dev = tx
        .insert_pair_device(
            org_id,
            DeviceOwner::User(user_id),
            req.name.trim(),
            &req.public_key,
        )
        .await?;
    if user.status == "assigned" {
        tx.update_user(
            org_id,
            user_id,
            &UserPatch {
                status: Some("active".into()),
                ..Default::default()
            },
        )
        .await?;
    }
    let actor = format!("user:{}", user.upn);
    tx.append_audit(
        org_id,
        &actor,
        "pair.activated",
        &format!("device:{}", dev.id),
        json!({"user_id": user_id, "name": dev.name}),
    )
    .await?;
    tx.commit().await?;
    let principal = WirePrincipal::User {
        id: user_id.to_string(),
        upn: user.upn,
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(DeviceRegistered {
            device_id: dev.id.to_string(),
            principal,
        }),
    ))
}

/// The relay hub, or 501 in a server built without it.
fn hub_of(s: &AppState) -> Result<Arc<RelayHub>, ApiError> {
    s.relay
        .clone()
        .ok_or_else(|| ApiError::NotImplemented("the relay is not enabled on this server".into()))
}

fn gone() -> ApiError {
    // A 4xx that names no detail: unknown, used and expired codes look alike.
    ApiError::Conflict("the activation code is invalid, expired or already used".into())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectSession {
    pub session_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Connects the calling admin's online pairing tool to a user's key for registration.
#[utoipa::path(post, path = "/api/v1/users/{id}/connect", params(("id" = Uuid, Path)),
    responses((status = 201, body = ConnectSession), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn connect(
    State(s): State<AppState>,
    p: Principal,
    IdPath(user_id): IdPath,
) -> ApiResult<(StatusCode, axum::Json<ConnectSession>)> {
    let session = start_delegated_session(&s, &p, user_id).await?;
    Ok((StatusCode::CREATED, axum::Json(session)))
}

/// Starts a delegated session of admin `p` on `user_id`'s key and shows the key on the admin's
/// online pairing tool, on whichever replica it is connected. Shared by `POST /users/{id}/connect`
/// and manual provisioning. A user of another organisation is a 404, audited in the caller's
/// organisation; a tool that is not online is a 409 naming `keyward-pair`.
pub async fn start_delegated_session(
    s: &AppState,
    p: &Principal,
    user_id: Uuid,
) -> Result<ConnectSession, ApiError> {
    let hub = &hub_of(s)?;
    let Some(user) = hub.store.user(p.org_id, user_id).await? else {
        let mut tx = hub.store.begin().await?;
        tx.append_audit(
            p.org_id,
            &p.actor(),
            "relay.connect_refused",
            // Not `user:<id>`: the id names no user of this organisation, and the audit log's
            // per-user view must not list another organisation's user.
            &format!("admin:{}", p.admin_id),
            json!({"requested": user_id, "reason": "no such user in this organisation"}),
        )
        .await?;
        tx.commit().await?;
        return Err(ApiError::NotFound);
    };
    if user.status == "disabled" {
        return Err(ApiError::Conflict("the user is disabled".into()));
    }
    let key = hub
        .store
        .key_for_user(p.org_id, user_id)
        .await?
        .ok_or_else(|| ApiError::Conflict("the user has no security key".into()))?;
    if key.status != "active" {
        return Err(ApiError::Conflict("the user's key is not active".into()));
    }
    let device_id = hub
        .online_device_of_admin(p.org_id, p.admin_id)
        .await?
        .ok_or_else(|| ApiError::Conflict(NOT_ONLINE.into()))?;
    let ttl = chrono::Duration::from_std(hub.delegated_ttl)
        .unwrap_or_else(|_| chrono::Duration::minutes(15));
    // The organisation's setting may only shorten the server's limit.
    let minutes = crate::api::settings::effective(&s.store, p.org_id, s.aaguid)
        .await?
        .delegated_session_minutes;
    let ttl = ttl.min(chrono::Duration::minutes(i64::from(minutes)));
    let expires_at = keyward_store::now() + ttl;
    let new = NewDelegatedSession {
        org_id: p.org_id,
        admin_id: p.admin_id,
        user_id,
        key_id: key.id,
        device_id,
        expires_at,
    };
    let mut tx = hub.store.begin().await?;
    let (session, replaced) = tx.insert_delegated_session(&new).await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "relay.connect",
        &format!("user:{user_id}"),
        json!({"session_id": session.id, "key_id": key.id, "device_id": device_id, "expires_at": expires_at,
               "replaced": replaced.iter().map(|r| r.id).collect::<Vec<_>>()}),
    )
    .await?;
    tx.commit().await?;
    for r in &replaced {
        hub.detach(r.device_id, r.id, "replaced by a new session")
            .await?;
    }
    let attached = Attached {
        session_id: session.id,
        key_id: key.id,
        org_id: p.org_id,
        actor: p.actor(),
        registration_only: true,
        expires_at: Some(expires_at),
    };
    // Disabled (or demoted) while this request ran: the update ended the admin's sessions before
    // this one was written, so it is ended here instead and the key is never shown.
    let still_allowed = hub.store.admin(p.admin_id).await?.is_some_and(|a| {
        !a.disabled && Role::parse(&a.role).is_some_and(|r| Permission::UseKeys.allows(r))
    });
    let why = if !still_allowed {
        Some(("admin disabled", ApiError::Forbidden))
    } else {
        match hub
            .attach(device_id, attached, SessionMode::Delegated)
            .await?
        {
            AttachOutcome::Shown => None,
            // The tool went away between the presence check and now.
            AttachOutcome::NotConnected => {
                Some(("tool offline", ApiError::Conflict(NOT_ONLINE.into())))
            }
            // The replica holding the tool did not acknowledge: killed (its lease has not run
            // out) or stalled. Nobody shows the key, so it must not look connected.
            AttachOutcome::NoAnswer => Some((
                "the tool's server did not answer",
                ApiError::Conflict(NO_ANSWER.into()),
            )),
        }
    };
    if let Some((reason, answer)) = why {
        let mut tx = hub.store.begin().await?;
        let ended = tx
            .end_delegated_session(p.org_id, session.id, reason)
            .await?;
        if !ended.is_empty() {
            tx.append_audit(
                p.org_id,
                &p.actor(),
                "relay.connect_failed",
                &format!("user:{user_id}"),
                json!({"session_id": session.id, "device_id": device_id, "reason": reason}),
            )
            .await?;
        }
        tx.commit().await?;
        // A replica that answers late must not go on showing the ended session.
        hub.detach(device_id, session.id, "ended").await?;
        return Err(answer);
    }
    Ok(ConnectSession {
        session_id: session.id,
        expires_at,
    })
}

/// The outcome of trying to start a delegated session where the caller need not fail (manual
/// provisioning): started, or why not, in words an admin can act on.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DelegatedConnection {
    /// `connected`, `tool_offline` (the admin's keyward-pair is not running: press Connect on the
    /// user's page once it is) or `not_started` (see `detail`).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    pub detail: String,
}

/// [`start_delegated_session`], with "cannot start now" as an answer rather than an error.
/// Database and server failures are still errors.
pub async fn try_start_delegated_session(
    s: &AppState,
    p: &Principal,
    user_id: Uuid,
) -> Result<DelegatedConnection, ApiError> {
    let not = |status: &str, detail: String| DelegatedConnection {
        status: status.into(),
        session_id: None,
        expires_at: None,
        detail,
    };
    match start_delegated_session(s, p, user_id).await {
        Ok(c) => Ok(DelegatedConnection {
            status: "connected".into(),
            session_id: Some(c.session_id),
            expires_at: Some(c.expires_at),
            detail: "the user's key is connected to your keyward-pair until the session expires or you press Disconnect".into(),
        }),
        Err(ApiError::Conflict(m)) if m == NOT_ONLINE => Ok(not(
            "tool_offline",
            "your keyward-pair is not connected: run `keyward-pair run`, then press Connect on the user's page".into(),
        )),
        Err(ApiError::Conflict(m)) if m == NO_ANSWER => Ok(not("tool_offline", m)),
        Err(ApiError::Conflict(m)) => Ok(not("not_started", m)),
        Err(ApiError::NotImplemented(m)) => Ok(not("not_started", m)),
        Err(e) => Err(e),
    }
}

/// Why a connection cannot start: the admin's tool is not connected to any replica.
pub const NOT_ONLINE: &str = "your keyward-pair is not connected: run `keyward-pair run` first";
/// Why a connection cannot start: the server replica holding the admin's tool did not confirm
/// showing the key (it stopped or stalled); the tool reconnects to a live replica by itself.
pub const NO_ANSWER: &str = "the server your keyward-pair is connected to did not answer: \
     it may have stopped; keyward-pair reconnects by itself, press Connect again in a few seconds";

/// Ends the delegated sessions on a user's key; the key disappears from the tool at once.
#[utoipa::path(delete, path = "/api/v1/users/{id}/connect", params(("id" = Uuid, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn disconnect(
    State(s): State<AppState>,
    p: Principal,
    IdPath(user_id): IdPath,
) -> ApiResult<StatusCode> {
    let hub = hub_of(&s)?;
    s.store
        .user(p.org_id, user_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut tx = s.store.begin().await?;
    let ended = tx
        .end_delegated_sessions_of_user(p.org_id, user_id, "disconnected")
        .await?;
    if !ended.is_empty() {
        tx.append_audit(
            p.org_id,
            &p.actor(),
            "relay.disconnect",
            &format!("user:{user_id}"),
            json!({"sessions": ended.iter().map(|r| r.id).collect::<Vec<_>>()}),
        )
        .await?;
    }
    tx.commit().await?;
    for r in &ended {
        hub.detach(r.device_id, r.id, "disconnected").await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Device {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Whether the tool is connected to this server right now.
    pub online: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    pub items: Vec<Device>,
}

/// The calling admin's registered pairing tools.
#[utoipa::path(get, path = "/api/v1/pair/devices",
    responses((status = 200, body = DeviceList), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn list_devices(
    State(s): State<AppState>,
    p: Principal,
) -> ApiResult<axum::Json<DeviceList>> {
    let hub = hub_of(&s)?;
    let online = hub.online_device_of_admin(p.org_id, p.admin_id).await?;
    let items = s
        .store
        .pair_devices_of_admin(p.org_id, p.admin_id)
        .await?
        .into_iter()
        .map(|d| Device {
            online: online == Some(d.id),
            id: d.id,
            name: d.name,
            created_at: d.created_at,
            last_seen_at: d.last_seen_at,
        })
        .collect();
    Ok(axum::Json(DeviceList { items }))
}

/// Revokes a pairing tool: its sessions end, its connection closes, it can never connect again.
#[utoipa::path(delete, path = "/api/v1/pair/devices/{id}", params(("id" = Uuid, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn revoke(
    State(s): State<AppState>,
    p: Principal,
    IdPath(device_id): IdPath,
) -> ApiResult<StatusCode> {
    let hub = hub_of(&s)?;
    let device = s
        .store
        .pair_device(device_id)
        .await?
        .filter(|d| d.org_id == p.org_id)
        .ok_or(ApiError::NotFound)?;
    let own = device.owner() == Some(DeviceOwner::Admin(p.admin_id));
    if !own && !crate::api::Permission::ManageUsers.allows(p.role) {
        return Err(ApiError::Forbidden);
    }
    if device.revoked_at.is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let mut tx = s.store.begin().await?;
    tx.revoke_pair_device(p.org_id, device_id).await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "pair.device_revoked",
        &format!("device:{device_id}"),
        json!({"name": device.name}),
    )
    .await?;
    tx.commit().await?;
    hub.disconnect_device(
        device_id,
        ErrorCode::Revoked,
        "this device was revoked by an admin",
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends an admin's delegated sessions; call it from admin logout (and when disabling an admin).
pub async fn end_admin_sessions(
    hub: &RelayHub,
    org_id: Uuid,
    admin_id: Uuid,
    reason: &str,
) -> Result<(), StoreError> {
    let mut tx = hub.store.begin().await?;
    let ended = tx
        .end_delegated_sessions_of_admin(org_id, admin_id, reason)
        .await?;
    tx.commit().await?;
    for r in &ended {
        hub.detach(r.device_id, r.id, reason).await?;
    }
    Ok(())
}

/// An admin was disabled or moved to a role that may not use keys, in a transaction that ended
/// their delegated sessions (`ended`): each session's key leaves its tool, on whichever replica,
/// and the admin's `tools` (when disabled) are closed; they are refused at login while the admin
/// stays disabled.
pub async fn admin_lost_access(
    hub: &RelayHub,
    ended: &[DelegatedSessionRecord],
    tools: &[Uuid],
    reason: &str,
) -> Result<(), StoreError> {
    for r in ended {
        hub.detach(r.device_id, r.id, reason).await?;
    }
    for device_id in tools {
        hub.disconnect_device(*device_id, ErrorCode::Revoked, OWNER_DISABLED)
            .await?;
    }
    Ok(())
}

/// Why a disabled admin's pairing tool is closed or refused.
pub const OWNER_DISABLED: &str = "the device's owner is no longer active";

/// Revokes a device (logout, or an admin's revocation), ending its sessions and its connection.
pub async fn revoke_device(
    hub: &RelayHub,
    org_id: Uuid,
    device_id: Uuid,
    reason: &str,
) -> Result<(), StoreError> {
    let mut tx = hub.store.begin().await?;
    if tx.revoke_pair_device(org_id, device_id).await? {
        tx.append_audit(
            org_id,
            "system",
            "pair.device_revoked",
            &format!("device:{device_id}"),
            json!({"reason": reason}),
        )
        .await?;
    }
    tx.commit().await?;
    if reason != "device logged out" {
        hub.disconnect_device(device_id, ErrorCode::Revoked, reason)
            .await?;
    }
    Ok(())
}
