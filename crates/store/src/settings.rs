//! Organisation settings (what new keys are made with, how long delegated sessions last) and the
//! organisation's packed-attestation material. Private keys arrive here already sealed by the
//! vault; this module never sees them in the clear.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Store, StoreError, Tx, now, on_pool, on_tx};

/// One organisation's settings row. An organisation without a row uses the server's defaults.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrgSettingsRecord {
    pub org_id: Uuid,
    /// 16 bytes.
    pub aaguid: Vec<u8>,
    /// `none` or `packed`.
    pub attestation: String,
    pub min_pin_length: i32,
    /// `user`: the user sets the PIN when activating the key.
    pub pin_policy: String,
    pub delegated_session_minutes: i32,
    pub attestation_ca_cert: Option<Vec<u8>>,
    pub attestation_ca_key_sealed: Option<Vec<u8>>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: Option<String>,
}

impl OrgSettingsRecord {
    /// The vault context that binds the sealed attestation CA key to its organisation.
    pub fn ca_key_context(org_id: Uuid) -> String {
        format!("attestation/{org_id}/ca_key")
    }
}

/// A batch attestation certificate for one AAGUID and its sealed private key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AttestationBatchRecord {
    pub org_id: Uuid,
    pub aaguid: Vec<u8>,
    pub cert_der: Vec<u8>,
    pub key_sealed: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

impl AttestationBatchRecord {
    /// The vault context that binds a sealed batch key to its organisation and AAGUID.
    pub fn key_context(org_id: Uuid, aaguid: &[u8]) -> String {
        format!("attestation/{org_id}/{}/batch_key", hex::encode(aaguid))
    }
}

const SETTINGS_COLUMNS: &str = "org_id, aaguid, attestation, min_pin_length, pin_policy, \
     delegated_session_minutes, attestation_ca_cert, attestation_ca_key_sealed, updated_at, updated_by";
const BATCH_COLUMNS: &str = "org_id, aaguid, cert_der, key_sealed, created_at";

impl Store {
    pub async fn org_settings(
        &self,
        org_id: Uuid,
    ) -> Result<Option<OrgSettingsRecord>, StoreError> {
        let sql = format!("SELECT {SETTINGS_COLUMNS} FROM org_settings WHERE org_id = $1");
        Ok(on_pool!(&self.db, p => sqlx::query_as(&sql).bind(org_id).fetch_optional(p).await?))
    }

    /// Every batch attestation certificate of the organisation (one per AAGUID its keys carry).
    pub async fn attestation_batches(
        &self,
        org_id: Uuid,
    ) -> Result<Vec<AttestationBatchRecord>, StoreError> {
        let sql = format!("SELECT {BATCH_COLUMNS} FROM attestation_batches WHERE org_id = $1");
        Ok(on_pool!(&self.db, p => sqlx::query_as(&sql).bind(org_id).fetch_all(p).await?))
    }
}

impl Tx {
    pub async fn org_settings(
        &mut self,
        org_id: Uuid,
    ) -> Result<Option<OrgSettingsRecord>, StoreError> {
        let sql = format!("SELECT {SETTINGS_COLUMNS} FROM org_settings WHERE org_id = $1");
        Ok(
            on_tx!(&mut self.inner, c => sqlx::query_as(&sql).bind(org_id).fetch_optional(&mut *c).await?),
        )
    }

    /// Writes the whole row (insert or replace); `updated_at` is set to now. The sealed CA key is
    /// kept as stored while the CA certificate stays the same: it is the same key, and the stored
    /// blob may have been re-wrapped by `keyward vault rotate` since `s` was read.
    pub async fn put_org_settings(&mut self, s: &OrgSettingsRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO org_settings ({SETTINGS_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (org_id) DO UPDATE SET aaguid = excluded.aaguid, attestation = excluded.attestation, \
             min_pin_length = excluded.min_pin_length, pin_policy = excluded.pin_policy, \
             delegated_session_minutes = excluded.delegated_session_minutes, \
             attestation_ca_cert = excluded.attestation_ca_cert, \
             attestation_ca_key_sealed = CASE WHEN org_settings.attestation_ca_cert = excluded.attestation_ca_cert \
                 THEN org_settings.attestation_ca_key_sealed ELSE excluded.attestation_ca_key_sealed END, \
             updated_at = excluded.updated_at, updated_by = excluded.updated_by"
        );
        on_tx!(&mut self.inner, c => {
            sqlx::query(&sql)
                .bind(s.org_id)
                .bind(&s.aaguid)
                .bind(&s.attestation)
                .bind(s.min_pin_length)
                .bind(&s.pin_policy)
                .bind(s.delegated_session_minutes)
                .bind(&s.attestation_ca_cert)
                .bind(&s.attestation_ca_key_sealed)
                .bind(now())
                .bind(&s.updated_by)
                .execute(&mut *c)
                .await?;
        });
        Ok(())
    }

    /// The AAGUIDs that the organisation's keys carry (each needs its own batch certificate).
    pub async fn key_aaguids(&mut self, org_id: Uuid) -> Result<Vec<Vec<u8>>, StoreError> {
        let sql = "SELECT DISTINCT aaguid FROM security_keys WHERE org_id = $1";
        let rows: Vec<(Vec<u8>,)> = on_tx!(&mut self.inner, c => {
            sqlx::query_as(sql).bind(org_id).fetch_all(&mut *c).await?
        });
        Ok(rows.into_iter().map(|(a,)| a).collect())
    }

    pub async fn has_attestation_batch(
        &mut self,
        org_id: Uuid,
        aaguid: &[u8],
    ) -> Result<bool, StoreError> {
        let sql = "SELECT 1 FROM attestation_batches WHERE org_id = $1 AND aaguid = $2";
        let row: Option<(i32,)> = on_tx!(&mut self.inner, c => {
            sqlx::query_as(sql).bind(org_id).bind(aaguid).fetch_optional(&mut *c).await?
        });
        Ok(row.is_some())
    }

    pub async fn insert_attestation_batch(
        &mut self,
        org_id: Uuid,
        aaguid: &[u8],
        cert_der: &[u8],
        key_sealed: &[u8],
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO attestation_batches ({BATCH_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
        );
        on_tx!(&mut self.inner, c => {
            sqlx::query(&sql)
                .bind(org_id)
                .bind(aaguid)
                .bind(cert_der)
                .bind(key_sealed)
                .bind(now())
                .execute(&mut *c)
                .await?;
        });
        Ok(())
    }
}
