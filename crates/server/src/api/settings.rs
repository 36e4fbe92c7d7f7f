//! Organisation settings: the AAGUID and attestation of new keys, their minimum PIN length and
//! PIN policy, and the longest a delegated session may last.
//!
//! Settings are read where they take effect, never cached: key assignment (`keys.rs`,
//! `KeyOps::create_key`), each key operation (attestation), the relay's connect (session length)
//! and the Entra policy pre-flight (AAGUID). An organisation that never saved settings uses the
//! defaults in [`Effective::defaults`].

use axum::extract::State;
use chrono::{DateTime, Utc};
use keyward_authenticator::{Attestation, AttestationKey};
use keyward_store::{AttestationBatchRecord, OrgSettingsRecord, Store, StoreError, Tx};
use keyward_vault::Vault;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, Json};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Problem};

/// The longest delegated session (design.md invariant 1: "15 minutes by default; shorter by
/// setting").
pub const MAX_DELEGATED_MINUTES: i32 = 15;
/// CTAP 2.1: minPINLength is at least 4 code points; a PIN is at most 63 bytes.
pub const MIN_PIN_LENGTH_RANGE: std::ops::RangeInclusive<i32> = 4..=63;
/// The PIN policies of new keys: `user` (the user sets the PIN when activating the key) and
/// `admin_one_time` (assigning a key sets a generated one-time PIN, shown once to the admin, that
/// the key forces the user to change before it verifies them: CTAP forcePINChange).
pub const PIN_POLICIES: [&str; 2] = ["user", "admin_one_time"];
/// The policy under which assigning a key sets a one-time PIN.
pub const PIN_POLICY_ADMIN_ONE_TIME: &str = "admin_one_time";
const ATTESTATIONS: [&str; 2] = ["none", "packed"];
/// The organisation name written into attestation certificates.
const ATTESTATION_ORGANISATION: &str = "Keyward";

/// The settings in force for one organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub aaguid: [u8; 16],
    pub attestation: String,
    pub min_pin_length: i32,
    pub pin_policy: String,
    pub delegated_session_minutes: i32,
}

impl Effective {
    /// What an organisation gets before an owner saves anything: the server's AAGUID, `none`
    /// attestation, the CTAP minimum PIN length, users set their own PIN, 15-minute sessions.
    pub fn defaults(server_aaguid: [u8; 16]) -> Self {
        Effective {
            aaguid: server_aaguid,
            attestation: "none".into(),
            min_pin_length: i32::from(keyward_authenticator::DEFAULT_MIN_PIN_LENGTH),
            pin_policy: "user".into(),
            delegated_session_minutes: MAX_DELEGATED_MINUTES,
        }
    }

    fn from_record(r: &OrgSettingsRecord, server_aaguid: [u8; 16]) -> Self {
        Effective {
            aaguid: <[u8; 16]>::try_from(r.aaguid.as_slice()).unwrap_or(server_aaguid),
            attestation: r.attestation.clone(),
            min_pin_length: r.min_pin_length,
            pin_policy: r.pin_policy.clone(),
            delegated_session_minutes: r.delegated_session_minutes,
        }
    }
}

/// The organisation's settings, or the defaults when it has none.
pub async fn effective(
    store: &Store,
    org_id: Uuid,
    server_aaguid: [u8; 16],
) -> Result<Effective, StoreError> {
    Ok(match store.org_settings(org_id).await? {
        Some(r) => Effective::from_record(&r, server_aaguid),
        None => Effective::defaults(server_aaguid),
    })
}

/// The same, read inside a write transaction.
pub async fn effective_in(
    tx: &mut Tx,
    org_id: Uuid,
    server_aaguid: [u8; 16],
) -> Result<Effective, StoreError> {
    Ok(match tx.org_settings(org_id).await? {
        Some(r) => Effective::from_record(&r, server_aaguid),
        None => Effective::defaults(server_aaguid),
    })
}

/// Why a key's attestation could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("vault: {0}")]
    Vault(#[from] keyward_vault::VaultError),
}

/// An organisation's attestation choice, loaded once per key operation before the key is locked
/// (so no database read happens while a key operation holds the write lock).
pub enum OrgAttestation {
    None,
    /// Packed, with the organisation's batch key for each AAGUID its keys carry.
    Packed(Vec<(Vec<u8>, AttestationKey)>),
}

impl OrgAttestation {
    /// The statement a key with `aaguid` gives. A packed organisation without a batch for this
    /// AAGUID (a key assigned while the setting changed) attests `none` rather than with a
    /// certificate that names another AAGUID.
    pub fn for_aaguid(&self, aaguid: &[u8]) -> Attestation {
        match self {
            OrgAttestation::None => Attestation::None,
            OrgAttestation::Packed(batches) => {
                match batches.iter().find(|(a, _)| a.as_slice() == aaguid) {
                    Some((_, key)) => Attestation::Packed(key.clone()),
                    None => {
                        tracing::warn!(aaguid = %hex::encode(aaguid), "no batch attestation certificate for this AAGUID; attesting none");
                        Attestation::None
                    }
                }
            }
        }
    }
}

/// The organisation's attestation choice, or `None` when it saved no settings (the server's
/// configuration then applies). Packed batch keys are opened from the vault here.
pub async fn org_attestation(
    store: &Store,
    vault: &Vault,
    org_id: Uuid,
) -> Result<Option<OrgAttestation>, AttestationError> {
    let Some(settings) = store.org_settings(org_id).await? else {
        return Ok(None);
    };
    if settings.attestation != "packed" {
        return Ok(Some(OrgAttestation::None));
    }
    let mut batches = Vec::new();
    for b in store.attestation_batches(org_id).await? {
        let pkcs8_der = vault.open_secret(
            &AttestationBatchRecord::key_context(org_id, &b.aaguid),
            &b.key_sealed,
        )?;
        batches.push((
            b.aaguid,
            AttestationKey {
                cert_chain_der: vec![b.cert_der],
                pkcs8_der,
            },
        ));
    }
    Ok(Some(OrgAttestation::Packed(batches)))
}

/// Whether two attestation choices are the same (same format, same certificates).
pub fn same_attestation(a: &Attestation, b: &Attestation) -> bool {
    match (a, b) {
        (Attestation::None, Attestation::None) => true,
        (Attestation::Packed(x), Attestation::Packed(y)) => x.cert_chain_der == y.cert_chain_der,
        _ => false,
    }
}

#[derive(Serialize, ToSchema)]
pub struct Settings {
    /// The AAGUID of new security keys, as a hyphenated UUID.
    pub aaguid: String,
    /// `none` or `packed`: the attestation statement keys return for new credentials.
    pub attestation: String,
    /// The minimum PIN length (code points) of new keys, 4 to 63.
    pub min_pin_length: i32,
    /// `user`: the user sets the key's PIN when activating it; `admin_one_time`: assigning a key
    /// sets a generated one-time PIN (returned once) that the user must change at first use.
    pub pin_policy: String,
    /// The PIN policies this server supports.
    pub pin_policies: Vec<String>,
    /// The longest a delegated session lasts, 1 to 15 minutes.
    pub delegated_session_minutes: i32,
    /// The organisation's attestation CA (PEM), for relying parties that check attestation;
    /// present once packed attestation has been chosen.
    pub attestation_ca_pem: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
}

/// New settings. Fields left out keep their current value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    pub aaguid: Option<String>,
    pub attestation: Option<String>,
    pub min_pin_length: Option<i32>,
    pub pin_policy: Option<String>,
    pub delegated_session_minutes: Option<i32>,
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn to_view(e: &Effective, r: Option<&OrgSettingsRecord>) -> Settings {
    Settings {
        aaguid: Uuid::from_bytes(e.aaguid).hyphenated().to_string(),
        attestation: e.attestation.clone(),
        min_pin_length: e.min_pin_length,
        pin_policy: e.pin_policy.clone(),
        pin_policies: PIN_POLICIES.iter().map(|p| (*p).to_owned()).collect(),
        delegated_session_minutes: e.delegated_session_minutes,
        attestation_ca_pem: r.and_then(|r| r.attestation_ca_cert.as_deref()).map(pem),
        updated_at: r.map(|r| r.updated_at),
        updated_by: r.and_then(|r| r.updated_by.clone()),
    }
}

#[utoipa::path(get, path = "/api/v1/settings",
    responses((status = 200, body = Settings), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn get(State(s): State<AppState>, p: Principal) -> ApiResult<axum::Json<Settings>> {
    let rec = s.store.org_settings(p.org_id).await?;
    let e = match &rec {
        Some(r) => Effective::from_record(r, s.aaguid),
        None => Effective::defaults(s.aaguid),
    };
    Ok(axum::Json(to_view(&e, rec.as_ref())))
}

/// Checks a request against the current settings and returns the new ones; nothing is written.
fn validate(current: &Effective, req: &UpdateSettings) -> ApiResult<Effective> {
    let mut next = current.clone();
    if let Some(a) = &req.aaguid {
        let id = Uuid::try_parse(a.trim()).map_err(|_| {
            ApiError::Unprocessable(
                "aaguid must be a UUID of 16 bytes, e.g. 8c97a730-3f7b-11ef-9a1b-0242ac120002"
                    .into(),
            )
        })?;
        if id.is_nil() {
            return Err(ApiError::Unprocessable(
                "aaguid must not be the nil UUID: relying parties read it as \"unknown authenticator\""
                    .into(),
            ));
        }
        next.aaguid = *id.as_bytes();
    }
    if let Some(a) = &req.attestation {
        if !ATTESTATIONS.contains(&a.as_str()) {
            return Err(ApiError::Unprocessable(
                "attestation must be none or packed".into(),
            ));
        }
        next.attestation = a.clone();
    }
    if let Some(n) = req.min_pin_length {
        if !MIN_PIN_LENGTH_RANGE.contains(&n) {
            return Err(ApiError::Unprocessable(
                "min_pin_length must be between 4 and 63".into(),
            ));
        }
        next.min_pin_length = n;
    }
    if let Some(pp) = &req.pin_policy {
        if !PIN_POLICIES.contains(&pp.as_str()) {
            return Err(ApiError::Unprocessable(
                "pin_policy must be user (the user sets the PIN when activating the key) or admin_one_time (assigning a key sets a one-time PIN that the user must change)".into(),
            ));
        }
        next.pin_policy = pp.clone();
    }
    if let Some(m) = req.delegated_session_minutes {
        if !(1..=MAX_DELEGATED_MINUTES).contains(&m) {
            return Err(ApiError::Unprocessable(
                "delegated_session_minutes must be between 1 and 15".into(),
            ));
        }
        next.delegated_session_minutes = m;
    }
    Ok(next)
}

/// The settings as audit detail (nothing secret in them).
fn audit_view(e: &Effective) -> serde_json::Value {
    json!({
        "aaguid": Uuid::from_bytes(e.aaguid).hyphenated().to_string(),
        "attestation": e.attestation,
        "min_pin_length": e.min_pin_length,
        "pin_policy": e.pin_policy,
        "delegated_session_minutes": e.delegated_session_minutes,
    })
}

#[utoipa::path(put, path = "/api/v1/settings", request_body = UpdateSettings,
    responses((status = 200, body = Settings), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn put(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<UpdateSettings>,
) -> ApiResult<axum::Json<Settings>> {
    let mut tx = s.store.begin().await?;
    let current_rec = tx.org_settings(p.org_id).await?;
    let current = match &current_rec {
        Some(r) => Effective::from_record(r, s.aaguid),
        None => Effective::defaults(s.aaguid),
    };
    let next = validate(&current, &req)?;
    let mut rec = current_rec.clone().unwrap_or(OrgSettingsRecord {
        org_id: p.org_id,
        aaguid: Vec::new(),
        attestation: String::new(),
        min_pin_length: 0,
        pin_policy: String::new(),
        delegated_session_minutes: 0,
        attestation_ca_cert: None,
        attestation_ca_key_sealed: None,
        updated_at: keyward_store::now(),
        updated_by: None,
    });
    rec.aaguid = next.aaguid.to_vec();
    rec.attestation = next.attestation.clone();
    rec.min_pin_length = next.min_pin_length;
    rec.pin_policy = next.pin_policy.clone();
    rec.delegated_session_minutes = next.delegated_session_minutes;
    rec.updated_by = Some(p.actor());
    if next.attestation == "packed" {
        prepare_packed(&s, &mut tx, &mut rec).await?;
    }
    tx.put_org_settings(&rec).await?;
    let changed: serde_json::Map<String, serde_json::Value> = {
        let (old, new) = (audit_view(&current), audit_view(&next));
        let (old, new) = (
            old.as_object().cloned().unwrap_or_default(),
            new.as_object().cloned().unwrap_or_default(),
        );
        new.into_iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .map(|(k, v)| (k.clone(), json!({"from": old.get(&k), "to": v})))
            .collect()
    };
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "settings.update",
        &format!("org:{}", p.org_id),
        json!({ "changed": changed }),
    )
    .await?;
    tx.commit().await?;
    // This process's key operations use the new settings from their next operation on; other
    // processes within `keyops::SETTINGS_TTL`.
    if let Some(engine) = &s.ctap {
        engine.settings_changed(p.org_id);
    }
    let saved = s.store.org_settings(p.org_id).await?;
    Ok(axum::Json(to_view(&next, saved.as_ref())))
}

/// Packed attestation needs the organisation's CA and a batch certificate for every AAGUID its
/// keys carry, including the new one; the missing ones are made here, their keys sealed by the
/// vault, in the settings' transaction.
async fn prepare_packed(s: &AppState, tx: &mut Tx, rec: &mut OrgSettingsRecord) -> ApiResult<()> {
    use keyward_authenticator::attestation::{AttestationCa, generate_ca, issue_batch_certificate};
    let internal = |e: keyward_authenticator::Error| ApiError::Internal(e.to_string());
    let org_id = rec.org_id;
    let ca = match (&rec.attestation_ca_cert, &rec.attestation_ca_key_sealed) {
        (Some(cert), Some(sealed)) => {
            let key = s
                .vault
                .open_secret(&OrgSettingsRecord::ca_key_context(org_id), sealed)?;
            AttestationCa {
                cert_der: cert.clone(),
                cert_pem: pem(cert),
                pkcs8_der: key,
            }
        }
        _ => {
            let ca = generate_ca(ATTESTATION_ORGANISATION).map_err(internal)?;
            rec.attestation_ca_key_sealed = Some(
                s.vault
                    .seal_secret(&OrgSettingsRecord::ca_key_context(org_id), &ca.pkcs8_der)?,
            );
            rec.attestation_ca_cert = Some(ca.cert_der.clone());
            ca
        }
    };
    let mut aaguids = tx.key_aaguids(org_id).await?;
    aaguids.push(rec.aaguid.clone());
    aaguids.sort();
    aaguids.dedup();
    for aaguid in aaguids {
        let Ok(fixed) = <[u8; 16]>::try_from(aaguid.as_slice()) else {
            continue;
        };
        if tx.has_attestation_batch(org_id, &aaguid).await? {
            continue;
        }
        let batch =
            issue_batch_certificate(&ca, fixed, ATTESTATION_ORGANISATION).map_err(internal)?;
        let cert = batch
            .cert_chain_der
            .first()
            .ok_or_else(|| ApiError::Internal("empty attestation chain".into()))?;
        let sealed = s.vault.seal_secret(
            &AttestationBatchRecord::key_context(org_id, &aaguid),
            &batch.pkcs8_der,
        )?;
        tx.insert_attestation_batch(org_id, &aaguid, cert, &sealed)
            .await?;
    }
    Ok(())
}
