//! Every value sealed by the vault's `seal_secret` that the database keeps, listed across all
//! organisations, and a compare-and-swap to replace one: what `keyward vault rotate` needs to
//! move each of them to a new key-encryption key version.
//!
//! A sealed blob carries its own wrapped data key, bound to a *context* string that names its
//! row; [`SealedValue::context`] rebuilds it from the ids listed with the blob (the same builders
//! the server seals with). A replacement lands only if the stored blob is still the one that was
//! listed, so a value re-saved meanwhile (an admin re-entering a directory secret, a pass revealed
//! and forgotten) is never overwritten with an older one.
//!
//! Adding a kind of sealed value to the schema means adding it here: a rotation that does not
//! know a kind cannot re-wrap it, and retiring the old key-encryption key would then make it
//! unopenable.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    AttestationBatchRecord, DirectoryRecord, JobItemRecord, OrgSettingsRecord, Store, StoreError,
    from_json_text, on_pool, to_json_text,
};

const TAP_SEALED_FIELD: &str = JobItemRecord::TAP_SEALED_FIELD;

/// The kinds of sealed values the database holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealedKind {
    /// An Entra directory's client secret (`directories.sealed_client_secret`).
    DirectorySecret,
    /// An organisation's packed-attestation CA key (`org_settings.attestation_ca_key_sealed`).
    AttestationCaKey,
    /// A batch attestation key per organisation and AAGUID (`attestation_batches.key_sealed`).
    AttestationBatchKey,
    /// A Temporary Access Pass not yet revealed (`job_items.result`, field `tap_sealed`).
    TemporaryAccessPass,
}

impl SealedKind {
    /// Every kind, in the order a rotation re-wraps them.
    pub const ALL: [SealedKind; 4] = [
        SealedKind::DirectorySecret,
        SealedKind::AttestationCaKey,
        SealedKind::AttestationBatchKey,
        SealedKind::TemporaryAccessPass,
    ];

    /// A plural name for reports and messages.
    pub fn name(self) -> &'static str {
        match self {
            SealedKind::DirectorySecret => "directory client secrets",
            SealedKind::AttestationCaKey => "attestation CA keys",
            SealedKind::AttestationBatchKey => "attestation batch keys",
            SealedKind::TemporaryAccessPass => "Temporary Access Passes",
        }
    }
}

/// The row a sealed value is stored in, beyond its organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealedRow {
    Directory { id: Uuid },
    AttestationCa,
    AttestationBatch { aaguid: Vec<u8> },
    TemporaryAccessPass { job_id: Uuid, user_id: Uuid },
}

/// One sealed value as stored, with what is needed to rebuild its vault context and to replace it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue {
    pub org_id: Uuid,
    pub row: SealedRow,
    /// The sealed blob (opaque; the vault's format).
    pub blob: Vec<u8>,
}

// The blob is ciphertext, but there is no reason to print it either.
impl std::fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedValue")
            .field("org_id", &self.org_id)
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

impl SealedValue {
    pub fn kind(&self) -> SealedKind {
        match self.row {
            SealedRow::Directory { .. } => SealedKind::DirectorySecret,
            SealedRow::AttestationCa => SealedKind::AttestationCaKey,
            SealedRow::AttestationBatch { .. } => SealedKind::AttestationBatchKey,
            SealedRow::TemporaryAccessPass { .. } => SealedKind::TemporaryAccessPass,
        }
    }

    /// The vault context the blob was sealed for, byte for byte what the server seals with.
    pub fn context(&self) -> String {
        match &self.row {
            SealedRow::Directory { id } => DirectoryRecord::secret_context(self.org_id, *id),
            SealedRow::AttestationCa => OrgSettingsRecord::ca_key_context(self.org_id),
            SealedRow::AttestationBatch { aaguid } => {
                AttestationBatchRecord::key_context(self.org_id, aaguid)
            }
            SealedRow::TemporaryAccessPass { job_id, user_id } => {
                JobItemRecord::tap_context(self.org_id, *job_id, *user_id)
            }
        }
    }

    /// Where the value is, for messages (ids only).
    pub fn describe(&self) -> String {
        match &self.row {
            SealedRow::Directory { id } => {
                format!("directory {id} of organisation {}", self.org_id)
            }
            SealedRow::AttestationCa => format!("attestation CA of organisation {}", self.org_id),
            SealedRow::AttestationBatch { aaguid } => format!(
                "attestation batch {} of organisation {}",
                hex::encode(aaguid),
                self.org_id
            ),
            SealedRow::TemporaryAccessPass { job_id, user_id } => format!(
                "Temporary Access Pass of user {user_id} in job {job_id} (organisation {})",
                self.org_id
            ),
        }
    }
}

/// The sealed pass in a job item's `result` text, if it holds one.
fn sealed_tap(result: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let value: Value = from_json_text(result)?;
    let Some(encoded) = value.get(TAP_SEALED_FIELD) else {
        return Ok(None);
    };
    let encoded = encoded
        .as_str()
        .ok_or_else(|| StoreError::Corrupt("a sealed pass that is not a string".into()))?;
    STANDARD
        .decode(encoded)
        .map(Some)
        .map_err(|_| StoreError::Corrupt("a sealed pass that is not base64".into()))
}

impl Store {
    /// Every stored value of `kind`, in every organisation.
    pub async fn sealed_values(&self, kind: SealedKind) -> Result<Vec<SealedValue>, StoreError> {
        Ok(match kind {
            SealedKind::DirectorySecret => self
                .all_sealed_directory_secrets()
                .await?
                .into_iter()
                .map(|(org_id, id, blob)| SealedValue {
                    org_id,
                    row: SealedRow::Directory { id },
                    blob,
                })
                .collect(),
            SealedKind::AttestationCaKey => {
                let sql = "SELECT org_id, attestation_ca_key_sealed FROM org_settings \
                           WHERE attestation_ca_key_sealed IS NOT NULL ORDER BY org_id";
                let rows: Vec<(Uuid, Vec<u8>)> =
                    on_pool!(&self.db, p => sqlx::query_as(sql).fetch_all(p).await?);
                rows.into_iter()
                    .map(|(org_id, blob)| SealedValue {
                        org_id,
                        row: SealedRow::AttestationCa,
                        blob,
                    })
                    .collect()
            }
            SealedKind::AttestationBatchKey => {
                let sql = "SELECT org_id, aaguid, key_sealed FROM attestation_batches \
                           ORDER BY org_id, aaguid";
                let rows: Vec<(Uuid, Vec<u8>, Vec<u8>)> =
                    on_pool!(&self.db, p => sqlx::query_as(sql).fetch_all(p).await?);
                rows.into_iter()
                    .map(|(org_id, aaguid, blob)| SealedValue {
                        org_id,
                        row: SealedRow::AttestationBatch { aaguid },
                        blob,
                    })
                    .collect()
            }
            SealedKind::TemporaryAccessPass => {
                // The LIKE only narrows the scan (`_` matches any character); the JSON decides.
                let sql = "SELECT j.org_id, i.job_id, i.user_id, i.result \
                           FROM job_items i JOIN jobs j ON j.id = i.job_id \
                           WHERE i.result LIKE '%tap_sealed%' ORDER BY j.org_id, i.job_id, i.user_id";
                let rows: Vec<(Uuid, Uuid, Uuid, String)> =
                    on_pool!(&self.db, p => sqlx::query_as(sql).fetch_all(p).await?);
                let mut out = Vec::with_capacity(rows.len());
                for (org_id, job_id, user_id, result) in rows {
                    if let Some(blob) = sealed_tap(&result)? {
                        out.push(SealedValue {
                            org_id,
                            row: SealedRow::TemporaryAccessPass { job_id, user_id },
                            blob,
                        });
                    }
                }
                out
            }
        })
    }

    /// Replaces `value`'s blob with `new` if the row still holds exactly `value.blob`
    /// (compare-and-swap). Returns whether the row changed; `false` when it was re-saved,
    /// revealed or deleted meanwhile.
    pub async fn replace_sealed_value(
        &self,
        value: &SealedValue,
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let org_id = value.org_id;
        let old = value.blob.as_slice();
        let n = match &value.row {
            SealedRow::Directory { id } => {
                return self
                    .replace_sealed_directory_secret(org_id, *id, old, new)
                    .await;
            }
            SealedRow::AttestationCa => {
                let sql = "UPDATE org_settings SET attestation_ca_key_sealed = $1 \
                           WHERE org_id = $2 AND attestation_ca_key_sealed = $3";
                on_pool!(&self.db, p => {
                    sqlx::query(sql).bind(new).bind(org_id).bind(old).execute(p).await?.rows_affected()
                })
            }
            SealedRow::AttestationBatch { aaguid } => {
                let sql = "UPDATE attestation_batches SET key_sealed = $1 \
                           WHERE org_id = $2 AND aaguid = $3 AND key_sealed = $4";
                on_pool!(&self.db, p => {
                    sqlx::query(sql).bind(new).bind(org_id).bind(aaguid.as_slice()).bind(old)
                        .execute(p).await?.rows_affected()
                })
            }
            SealedRow::TemporaryAccessPass { job_id, user_id } => {
                return self
                    .replace_sealed_tap(org_id, *job_id, *user_id, old, new)
                    .await;
            }
        };
        Ok(n == 1)
    }

    /// The pass lives inside the item's JSON `result`: the new text is made from the text read,
    /// and written only if the row still holds that very text (and that pass).
    async fn replace_sealed_tap(
        &self,
        org_id: Uuid,
        job_id: Uuid,
        user_id: Uuid,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let read = "SELECT i.result FROM job_items i JOIN jobs j ON j.id = i.job_id \
                    WHERE j.org_id = $1 AND i.job_id = $2 AND i.user_id = $3";
        let row: Option<(Option<String>,)> = on_pool!(&self.db, p => {
            sqlx::query_as(read).bind(org_id).bind(job_id).bind(user_id).fetch_optional(p).await?
        });
        let Some((Some(text),)) = row else {
            return Ok(false);
        };
        if sealed_tap(&text)?.as_deref() != Some(old) {
            return Ok(false);
        }
        let mut result: Value = from_json_text(&text)?;
        if let Some(obj) = result.as_object_mut() {
            obj.insert(TAP_SEALED_FIELD.into(), Value::String(STANDARD.encode(new)));
        }
        let new_text = to_json_text(&result)?;
        // `updated_at` stays: the item did not change for anyone reading it.
        let write = "UPDATE job_items SET result = $1 \
                     WHERE job_id = $2 AND user_id = $3 AND result = $4";
        let n = on_pool!(&self.db, p => {
            sqlx::query(write).bind(&new_text).bind(job_id).bind(user_id).bind(&text)
                .execute(p).await?.rows_affected()
        });
        Ok(n == 1)
    }
}
