//! Admin passkeys (WebAuthn, verified by `webauthn_rp`): an admin registers passkeys for their own
//! account, lists, renames and deletes them, and signs in with one without typing an e-mail
//! address (a discoverable credential names its admin), or restrict a sign-in to one organisation
//! or one admin's e-mail address.
//!
//! The server side of every ceremony is stored in the database under its challenge and taken out
//! (spent) when the ceremony finishes, so a ceremony is single-use, expires after five minutes,
//! and may finish on another replica than the one that began it. A registration ceremony is bound
//! to the admin who began it. A sign-in checks the signature counter (it must grow unless the
//! authenticator keeps none) and the backup state (fixed at registration) as webauthn_rp requires,
//! and writes the new state only if nobody else used the same state meanwhile.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use keyward_store::{AdminPasskeyRecord, NewAdminPasskey, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;
use webauthn_rp::bin::{Decode, Encode};
use webauthn_rp::request::PublicKeyCredentialDescriptor;
use webauthn_rp::request::auth::AuthenticationVerificationOptions;
use webauthn_rp::request::register::CredProtect;
use webauthn_rp::request::register::{
    PublicKeyCredentialUserEntity, RegistrationVerificationOptions, UserHandle64, Username,
};
use webauthn_rp::request::{ExtensionInfo, TimedCeremony};
use webauthn_rp::response::register::{CompressedPubKey, DynamicState, StaticState};
use webauthn_rp::response::{AuthTransports, CredentialId};
use webauthn_rp::{
    AuthenticatedCredential, DiscoverableAuthentication64, DiscoverableAuthenticationServerState,
    DiscoverableCredentialRequestOptions, PublicKeyCredentialCreationOptions, Registration,
    RegistrationServerState,
};

use super::auth_routes::{ClientIp, LoginResponse, start_session};
use super::{AppState, IdPath, Json};
use crate::auth::{Principal, RelyingParty};
use crate::error::{ApiError, ApiResult, Problem};

/// How long a begun ceremony may be finished (webauthn_rp's own timeout is the same).
const CEREMONY_MS: i64 = 5 * 60 * 1000;
const REGISTER: &str = "register";
const AUTHENTICATE: &str = "authenticate";

type StoredKey = CompressedPubKey<[u8; 32], [u8; 32], [u8; 48], Vec<u8>>;

/// Options for `navigator.credentials.create()` / `.get()`, as WebAuthn's JSON forms
/// (`PublicKeyCredential.parseCreationOptionsFromJSON` reads `publicKey`).
#[derive(Serialize, ToSchema)]
pub struct CeremonyOptions {
    #[schema(value_type = Object)]
    #[serde(rename = "publicKey")]
    pub public_key: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct Passkey {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct PasskeyList {
    pub items: Vec<Passkey>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBegin {}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterFinish {
    /// A label for the list, e.g. "Laptop"; default "Passkey".
    #[serde(default)]
    pub name: Option<String>,
    /// The `PublicKeyCredential` as its `toJSON()` gives it (RegistrationResponseJSON).
    #[schema(value_type = Object)]
    pub credential: serde_json::Value,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenamePasskey {
    /// The new label (required).
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInBegin {
    /// Accept only a passkey of an admin of this organisation.
    #[serde(default)]
    pub org: Option<String>,
    /// Accept only a passkey of the admin with this e-mail address (with `org` when the address
    /// is an admin in several organisations).
    #[serde(default)]
    pub email: Option<String>,
}

fn relying_party(s: &AppState) -> ApiResult<&RelyingParty> {
    s.relying_party
        .as_deref()
        .ok_or_else(|| ApiError::Conflict("passkeys need the server's public_url setting".into()))
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn passkey_of(r: AdminPasskeyRecord) -> Passkey {
    Passkey {
        id: r.id,
        name: r.name,
        created_at: r.created_at,
        last_used_at: r.last_used_at,
    }
}

fn clean_name(name: Option<&str>) -> ApiResult<String> {
    let name = name
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or("Passkey");
    if name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable(
            "name must be 1 to 100 printable characters".into(),
        ));
    }
    Ok(name.to_owned())
}

fn user_handle(bytes: &[u8]) -> ApiResult<UserHandle64> {
    let arr: [u8; 64] = bytes
        .try_into()
        .map_err(|_| ApiError::Internal("stored user handle has the wrong length".into()))?;
    UserHandle64::decode(arr).map_err(|_| ApiError::Internal("stored user handle".into()))
}

fn internal<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> ApiError {
    move |e| ApiError::Internal(format!("{what}: {e:?}"))
}

#[utoipa::path(get, path = "/api/v1/account/passkeys",
    responses((status = 200, body = PasskeyList), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn list(State(s): State<AppState>, p: Principal) -> ApiResult<axum::Json<PasskeyList>> {
    let items = s.store.admin_passkeys(p.admin_id).await?;
    Ok(axum::Json(PasskeyList {
        items: items.into_iter().map(passkey_of).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/account/passkeys/begin", request_body = RegisterBegin,
    responses((status = 200, body = CeremonyOptions), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn register_begin(
    State(s): State<AppState>,
    p: Principal,
    Json(_begin): Json<RegisterBegin>,
) -> ApiResult<axum::Json<CeremonyOptions>> {
    let rp = relying_party(&s)?;
    let existing = s.store.admin_passkeys(p.admin_id).await?;
    // One user handle per admin: new passkeys reuse the one their first passkey got.
    let handle = match existing.first() {
        Some(r) => user_handle(&r.user_handle)?,
        None => UserHandle64::new(),
    };
    let exclude = existing
        .iter()
        .map(|r| {
            CredentialId::try_from(r.credential_id.clone()).map(|id| {
                PublicKeyCredentialDescriptor {
                    id,
                    transports: AuthTransports::NONE,
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(internal("stored credential id"))?;
    let name = Username::try_from(p.email.as_str()).map_err(|_| {
        ApiError::Unprocessable("the e-mail address is not a valid user name".into())
    })?;
    let user = PublicKeyCredentialUserEntity {
        name,
        id: &handle,
        display_name: None,
    };
    let mut options = PublicKeyCredentialCreationOptions::passkey(&rp.rp_id, user, exclude);
    // Ask for credProtect level 3 but let authenticators without it register (Chromium's
    // virtual and many platform authenticators lack it): every sign-in requires UV anyway.
    options.extensions.cred_protect =
        CredProtect::UserVerificationRequired(ExtensionInfo::AllowDontEnforceValue);
    let (server, client) = options
        .start_ceremony()
        .map_err(internal("creation options"))?;
    let options = serde_json::to_value(&client).map_err(internal("creation options JSON"))?;
    let state = server.encode().map_err(internal("ceremony state"))?;
    s.store
        .put_ceremony(
            &server.sent_challenge().0.to_le_bytes(),
            REGISTER,
            Some(p.admin_id),
            Some(p.org_id),
            &state,
            now_ms() + CEREMONY_MS,
        )
        .await?;
    Ok(axum::Json(CeremonyOptions {
        public_key: options,
    }))
}

#[utoipa::path(post, path = "/api/v1/account/passkeys", request_body = RegisterFinish,
    responses((status = 201, body = Passkey), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn register_finish(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<RegisterFinish>,
) -> ApiResult<(StatusCode, axum::Json<Passkey>)> {
    let rp = relying_party(&s)?;
    let name = clean_name(req.name.as_deref())?;
    let raw = serde_json::to_vec(&req.credential).map_err(internal("credential JSON"))?;
    let registration = Registration::from_json_relaxed(&raw).map_err(|_| {
        ApiError::BadRequest("credential is not a WebAuthn registration response".into())
    })?;
    let challenge = registration
        .challenge_relaxed()
        .map_err(|_| ApiError::BadRequest("clientDataJSON carries no challenge".into()))?;
    let ceremony = s
        .store
        .take_ceremony(&challenge.0.to_le_bytes(), REGISTER)
        .await?;
    let outcome = match ceremony {
        None => Err("unknown or already used challenge"),
        // Bound to the admin who began it: nobody else can finish it.
        Some(c) if c.admin_id != Some(p.admin_id) => Err("the ceremony belongs to someone else"),
        Some(c) if c.expires_at < now_ms() => Err("the ceremony expired"),
        Some(c) => RegistrationServerState::<64>::decode(c.state.as_slice())
            .map_err(|_| "stored ceremony state is unreadable"),
    };
    let verified = outcome.and_then(|server| {
        let origins = [rp.origin.as_str()];
        server
            .verify(
                &rp.rp_id,
                &registration,
                &RegistrationVerificationOptions::<&str, &str> {
                    allowed_origins: &origins,
                    ..RegistrationVerificationOptions::default()
                },
            )
            .map_err(|e| {
                tracing::info!(error = %e, "admin passkey registration refused");
                "the passkey could not be verified"
            })
    });
    let registered = match verified {
        Ok(r) => r,
        Err(reason) => {
            audit(
                &s,
                &p,
                "admin.passkey.register_failed",
                json!({"reason": reason}),
            )
            .await?;
            return Err(ApiError::Unprocessable(format!(
                "passkey registration refused: {reason}"
            )));
        }
    };
    let credential_id = registered.id().as_ref().to_vec();
    let user_handle = registered
        .user_id()
        .encode()
        .map_err(internal("user handle"))?;
    let static_state = registered
        .static_state()
        .encode()
        .map_err(internal("static state"))?;
    let dynamic_state = registered
        .dynamic_state()
        .encode()
        .map_err(internal("dynamic state"))?;
    let mut tx = s.store.begin().await?;
    let rec = tx
        .insert_admin_passkey(&NewAdminPasskey {
            org_id: p.org_id,
            admin_id: p.admin_id,
            credential_id: &credential_id,
            user_handle: user_handle.as_slice(),
            name: &name,
            static_state: &static_state,
            dynamic_state: dynamic_state.as_slice(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                ApiError::Conflict("this passkey is already registered".into())
            }
            other => other.into(),
        })?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "admin.passkey.register",
        &format!("admin:{}", p.admin_id),
        json!({"passkey_id": rec.id, "name": rec.name}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(passkey_of(rec))))
}

async fn audit(
    s: &AppState,
    p: &Principal,
    action: &str,
    detail: serde_json::Value,
) -> ApiResult<()> {
    let mut tx = s.store.begin().await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        action,
        &format!("admin:{}", p.admin_id),
        detail,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[utoipa::path(patch, path = "/api/v1/account/passkeys/{id}", request_body = RenamePasskey,
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn rename(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
    Json(req): Json<RenamePasskey>,
) -> ApiResult<StatusCode> {
    // Another admin's (or organisation's) passkey is not found, whatever the body says.
    let own = s.store.admin_passkeys(p.admin_id).await?;
    if !own.iter().any(|r| r.id == id && r.org_id == p.org_id) {
        return Err(ApiError::NotFound);
    }
    let Some(name) = req.name.as_deref() else {
        return Err(ApiError::Unprocessable("name is required".into()));
    };
    let name = clean_name(Some(name))?;
    let mut tx = s.store.begin().await?;
    tx.rename_admin_passkey(p.org_id, p.admin_id, id, &name)
        .await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "admin.passkey.rename",
        &format!("admin:{}", p.admin_id),
        json!({"passkey_id": id, "name": name}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/account/passkeys/{id}", params(("id" = Uuid, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    let mut tx = s.store.begin().await?;
    let rec = tx.delete_admin_passkey(p.org_id, p.admin_id, id).await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "admin.passkey.delete",
        &format!("admin:{}", p.admin_id),
        json!({"passkey_id": rec.id, "name": rec.name}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/auth/passkey/begin", request_body = SignInBegin, security(),
    responses((status = 200, body = CeremonyOptions), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn sign_in_begin(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<SignInBegin>,
) -> ApiResult<axum::Json<CeremonyOptions>> {
    // Each begin writes a row: the same limit as sign-ins keeps that bounded.
    s.login_limiter
        .check(&s.store, &format!("passkey-begin|{ip}"))
        .await?;
    let rp = relying_party(&s)?;
    // An unknown organisation or e-mail address is not revealed: the options look the same, but
    // nothing is stored, so no answer can finish the ceremony.
    let unknown = || -> ApiResult<axum::Json<CeremonyOptions>> {
        Ok(axum::Json(CeremonyOptions {
            public_key: unanswerable(rp)?,
        }))
    };
    let org_id = match req.org.as_deref().map(str::trim).filter(|o| !o.is_empty()) {
        Some(name) => match s.store.organisation_by_name(name).await? {
            Some(o) => Some(o.id),
            None => return unknown(),
        },
        None => None,
    };
    let admin_id = match req
        .email
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        Some(email) => match s.store.admins_by_email(org_id, email).await?.as_slice() {
            [one] => Some(one.id),
            // None, or several organisations' admins without `org` to choose between them.
            _ => return unknown(),
        },
        None => None,
    };
    let (server, client) = DiscoverableCredentialRequestOptions::passkey(&rp.rp_id)
        .start_ceremony()
        .map_err(internal("request options"))?;
    let options = serde_json::to_value(&client).map_err(internal("request options JSON"))?;
    let state = server.encode().map_err(internal("ceremony state"))?;
    s.store
        .put_ceremony(
            &server.sent_challenge().0.to_le_bytes(),
            AUTHENTICATE,
            admin_id,
            org_id,
            &state,
            now_ms() + CEREMONY_MS,
        )
        .await?;
    Ok(axum::Json(CeremonyOptions {
        public_key: options,
    }))
}

/// Sign-in options whose ceremony is not stored.
fn unanswerable(rp: &RelyingParty) -> ApiResult<serde_json::Value> {
    let (_, client) = DiscoverableCredentialRequestOptions::passkey(&rp.rp_id)
        .start_ceremony()
        .map_err(internal("request options"))?;
    serde_json::to_value(&client).map_err(internal("request options JSON"))
}

/// Why a passkey sign-in failed, for the audit log of the passkey's organisation.
async fn refuse(s: &AppState, rec: &AdminPasskeyRecord, email: &str, reason: &str) -> ApiError {
    tracing::info!(reason, "admin passkey sign-in refused");
    let result = async {
        let mut tx = s.store.begin().await?;
        tx.append_audit(
            rec.org_id,
            &format!("admin:{email}"),
            "auth.login_failed",
            &format!("admin:{}", rec.admin_id),
            json!({"method": "passkey", "passkey_id": rec.id, "reason": reason}),
        )
        .await?;
        tx.commit().await
    }
    .await;
    match result {
        Ok(()) => ApiError::Unauthenticated,
        Err(e) => e.into(),
    }
}

#[utoipa::path(post, path = "/api/v1/auth/passkey/finish", security(),
    request_body(content = Object, description = "The PublicKeyCredential as its toJSON() gives it (AuthenticationResponseJSON)"),
    responses((status = 200, body = LoginResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn sign_in_finish(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<serde_json::Value>,
) -> ApiResult<Response> {
    s.login_limiter
        .check(&s.store, &format!("login|{ip}|passkey"))
        .await?;
    let rp = relying_party(&s)?;
    let raw = serde_json::to_vec(&body).map_err(internal("credential JSON"))?;
    let authentication = DiscoverableAuthentication64::from_json_relaxed(&raw).map_err(|_| {
        ApiError::BadRequest("body is not a WebAuthn authentication response".into())
    })?;
    let challenge = authentication
        .challenge_relaxed()
        .map_err(|_| ApiError::BadRequest("clientDataJSON carries no challenge".into()))?;
    // Spend the challenge first, whatever follows: a refused attempt cannot be retried with it.
    let ceremony = s
        .store
        .take_ceremony(&challenge.0.to_le_bytes(), AUTHENTICATE)
        .await?;
    let Some(rec) = s
        .store
        .admin_passkey_by_credential_id(authentication.raw_id().as_ref())
        .await?
    else {
        tracing::info!("admin passkey sign-in with an unknown credential");
        return Err(ApiError::Unauthenticated);
    };
    let admin = s
        .store
        .admin(rec.admin_id)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let ceremony = match ceremony {
        None => {
            return Err(refuse(&s, &rec, &admin.email, "unknown or already used challenge").await);
        }
        Some(c) if c.expires_at < now_ms() => {
            return Err(refuse(&s, &rec, &admin.email, "the ceremony expired").await);
        }
        Some(c) if c.org_id.is_some_and(|o| o != rec.org_id) => {
            return Err(refuse(&s, &rec, &admin.email, "passkey of another organisation").await);
        }
        Some(c) if c.admin_id.is_some_and(|a| a != rec.admin_id) => {
            return Err(refuse(&s, &rec, &admin.email, "passkey of another admin").await);
        }
        Some(c) => c,
    };
    if admin.disabled {
        return Err(refuse(&s, &rec, &admin.email, "the admin is disabled").await);
    }
    let Ok(server) = DiscoverableAuthenticationServerState::decode(ceremony.state.as_slice())
    else {
        return Err(ApiError::Internal(
            "stored ceremony state is unreadable".into(),
        ));
    };
    let handle = user_handle(&rec.user_handle)?;
    let static_state = StaticState::<StoredKey>::decode(rec.static_state.as_slice())
        .map_err(internal("static state"))?;
    let stored: [u8; 7] = rec
        .dynamic_state
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::Internal("stored dynamic state has the wrong length".into()))?;
    let dynamic = DynamicState::decode(stored).map_err(internal("dynamic state"))?;
    let credential_id =
        CredentialId::try_from(rec.credential_id.as_slice()).map_err(internal("credential id"))?;
    let mut credential =
        AuthenticatedCredential::new(credential_id, &handle, static_state, dynamic)
            .map_err(internal("stored credential"))?;
    let origins = [rp.origin.as_str()];
    let verified = server.verify(
        &rp.rp_id,
        &authentication,
        &mut credential,
        &AuthenticationVerificationOptions::<&str, &str> {
            allowed_origins: &origins,
            // The UV flag is recorded as the authenticator reports it; the backup state must
            // stay what it was at registration (the default), and the counter must grow.
            update_uv: true,
            ..AuthenticationVerificationOptions::default()
        },
    );
    if let Err(e) = verified {
        tracing::info!(error = %e, "admin passkey assertion refused");
        return Err(refuse(
            &s,
            &rec,
            &admin.email,
            "the assertion could not be verified",
        )
        .await);
    }
    let new_state = credential
        .dynamic_state()
        .encode()
        .map_err(internal("dynamic state"))?;
    let mut tx = s.store.begin().await?;
    if !tx
        .update_admin_passkey_state(rec.id, &rec.dynamic_state, new_state.as_slice())
        .await?
    {
        drop(tx);
        return Err(refuse(&s, &rec, &admin.email, "used concurrently").await);
    }
    tx.commit().await?;
    start_session(&s, admin, "passkey", json!({"passkey_id": rec.id})).await
}
