//! Server-side key operations: the one place where the server makes a security key act.
//!
//! [`KeyOps::ctap`] runs one CTAP2 message on one key. Per operation:
//! 1. an in-process async mutex per key orders callers in this replica and guards the key's
//!    volatile engine state (the "power-cycle" state: PIN tokens, assertion cursors);
//! 2. [`keyward_store::Store::begin_key`] opens the operation's transaction and locks the key row,
//!    ordering replicas (PostgreSQL `FOR UPDATE`, SQLite `BEGIN IMMEDIATE`);
//! 3. the vault unwraps the key's data key; the engine runs on a blocking thread against the
//!    transaction ([`tx_store::TxStore`]) and the data key ([`host::VaultProtection`]);
//! 4. the audit entry is appended in the same transaction and the transaction commits; only then
//!    is the response released. Any storage or vault failure rolls back and refuses the operation
//!    (fail closed, design.md invariant 6): a counter is never released without being durable.

mod host;
mod tx_store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keyward_authenticator::{Authenticator, Config, Context, Policy};
use keyward_store::{Backend, NewSecurityKey, SecurityKeyRecord, Store, StoreError};
use keyward_vault::{KeyBinding, Vault, VaultError};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use host::{CallerPresence, ServerEnv, VaultProtection};
use tx_store::TxStore;

/// Errors of key operations. Messages carry no secret; [`KeyOpsError::is_unavailable`] tells the
/// HTTP layer to answer 503 (fail closed) rather than blame the request.
#[derive(Debug, thiserror::Error)]
pub enum KeyOpsError {
    /// No such key in this organisation (or the user does not exist).
    #[error("security key not found")]
    NotFound,
    /// The key is suspended or revoked.
    #[error("security key is {0}")]
    KeyNotActive(String),
    /// The request is malformed before it reaches the engine (empty, or a PIN that breaks the
    /// key's rules).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    #[error("key storage unavailable: {0}")]
    Store(#[source] StoreError),
    #[error("key vault unavailable: {0}")]
    Vault(#[source] VaultError),
    /// The key's data key did not open under its row: the row was tampered with or moved.
    #[error("the key's protected data failed its integrity check")]
    Integrity,
    #[error("key operation failed: {0}")]
    Internal(String),
}

impl KeyOpsError {
    /// True for failures of the database or vault (HTTP 503).
    pub fn is_unavailable(&self) -> bool {
        match self {
            KeyOpsError::Store(e) => e.is_unavailable(),
            KeyOpsError::Vault(_) | KeyOpsError::Internal(_) => true,
            _ => false,
        }
    }
}

impl From<StoreError> for KeyOpsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => KeyOpsError::NotFound,
            other => KeyOpsError::Store(other),
        }
    }
}

impl From<VaultError> for KeyOpsError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Integrity => KeyOpsError::Integrity,
            other => KeyOpsError::Vault(other),
        }
    }
}

/// A key's volatile state in this process. `None` until first use, and after a power cycle.
type Slot = Arc<tokio::sync::Mutex<Option<Authenticator>>>;

/// The CTAP commands that never write or sign (authenticatorGetInfo, authenticatorSelection):
/// they are not audited, everything else is.
const UNAUDITED_COMMANDS: [u8; 2] = [0x04, 0x0B];

/// Server-side key operations. Cheap to share behind an `Arc`.
pub struct KeyOps {
    store: Store,
    vault: Arc<Vault>,
    config: Config,
    slots: Mutex<HashMap<Uuid, Slot>>,
    /// SQLite admits one writer at a time and makes the others sleep-and-retry (busy_timeout backs
    /// off in steps of milliseconds). Queueing writers here instead keeps the database lock
    /// handed over without sleeps; PostgreSQL locks rows and needs no such queue.
    sqlite_writer: Option<tokio::sync::Mutex<()>>,
    epoch: Instant,
}

impl std::fmt::Debug for KeyOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyOps")
            .field("store", &self.store)
            .field("vault", &self.vault)
            .finish_non_exhaustive()
    }
}

/// A stable name for a CTAP command in audit entries.
fn command_name(cmd: u8) -> &'static str {
    match cmd {
        0x01 => "make_credential",
        0x02 => "get_assertion",
        0x04 => "get_info",
        0x06 => "client_pin",
        0x07 => "reset",
        0x08 => "get_next_assertion",
        0x09 | 0x0A => "credential_management",
        0x0B => "selection",
        0x0C => "large_blobs",
        0x0D => "config",
        _ => "unknown",
    }
}

/// How credentials made under `policy` were created, for the credential rows.
fn via_for(policy: &Policy) -> &'static str {
    if policy.registration_only {
        "delegated"
    } else if policy.preauthorized_uv {
        "automated"
    } else {
        "user"
    }
}

impl KeyOps {
    /// `config` is the engine configuration shared by every key (attestation, limits); each key's
    /// own AAGUID from its row replaces `config.aaguid`.
    pub fn new(store: Store, vault: Arc<Vault>, config: Config) -> Self {
        let sqlite_writer =
            (store.backend() == Backend::Sqlite).then(|| tokio::sync::Mutex::new(()));
        KeyOps {
            store,
            vault,
            config,
            slots: Mutex::new(HashMap::new()),
            sqlite_writer,
            epoch: Instant::now(),
        }
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn slot(&self, key_id: Uuid) -> Slot {
        // A poisoned map only means another thread panicked while inserting; the map is valid.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key_id).or_default().clone()
    }

    /// Waits for this process's turn to write on SQLite (no-op on PostgreSQL). Always taken after
    /// a key's slot, never before, so the two locks cannot deadlock.
    async fn writer_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    /// Forgets a key's volatile state (a re-plug): PIN tokens and cursors are dropped. Persistent
    /// state, including a remote soft-block of the PIN, is not touched.
    pub async fn power_cycle(&self, key_id: Uuid) {
        let slot = self.slot(key_id);
        *slot.lock().await = None;
    }

    /// The material of a new key, for callers that insert the row in their own transaction
    /// (`Tx::insert_security_key`): a fresh id and a fresh data key wrapped by the vault.
    pub fn new_key_material(&self, org_id: Uuid) -> Result<NewSecurityKey, KeyOpsError> {
        let id = Uuid::now_v7();
        let (wrapped_dek, kek_version) = self
            .vault
            .new_data_key(&KeyBinding { org_id, key_id: id })?;
        Ok(NewSecurityKey {
            id,
            aaguid: self.config.aaguid.to_vec(),
            wrapped_dek,
            kek_version,
            min_pin_length: i32::from(keyward_authenticator::DEFAULT_MIN_PIN_LENGTH),
            force_pin_change: false,
        })
    }

    /// Creates a security key for a user (who becomes `assigned`), audited as `key.create`.
    pub async fn create_key(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        actor: &str,
    ) -> Result<SecurityKeyRecord, KeyOpsError> {
        let new = self.new_key_material(org_id)?;
        let _turn = self.writer_turn().await;
        let mut tx = self.store.begin().await?;
        tx.insert_security_key(org_id, user_id, &new).await?;
        let detail = serde_json::json!({ "user_id": user_id, "kek_version": new.kek_version });
        tx.append_audit(
            org_id,
            actor,
            "key.create",
            &format!("key:{}", new.id),
            detail,
        )
        .await?;
        tx.commit().await?;
        self.store
            .key_by_id(org_id, new.id)
            .await?
            .ok_or(KeyOpsError::NotFound)
    }

    /// Sets a key's PIN from the server (an admin's one-time PIN; with `force_change` the key
    /// demands a new PIN before it verifies the user, CTAP forcePINChange). Resets the retry
    /// counters and drops the key's PIN tokens. The PIN is kept only as its keyed verifier.
    pub async fn set_pin(
        &self,
        org_id: Uuid,
        key_id: Uuid,
        actor: &str,
        pin: &Zeroizing<String>,
        force_change: bool,
    ) -> Result<(), KeyOpsError> {
        let code_points = pin.chars().count();
        // CTAP: at most 63 bytes of UTF-8, at least minPINLength code points.
        if pin.len() > 63 {
            return Err(KeyOpsError::InvalidRequest("PIN longer than 63 bytes"));
        }
        let slot = self.slot(key_id);
        let mut volatile = slot.lock().await;
        let _turn = self.writer_turn().await;
        let mut tx = self.store.begin_key(org_id, key_id).await?;
        let mut rec = tx.key().await?;
        if rec.status != "active" {
            return Err(KeyOpsError::KeyNotActive(rec.status));
        }
        if code_points < usize::try_from(rec.min_pin_length).unwrap_or(usize::MAX) {
            return Err(KeyOpsError::InvalidRequest(
                "PIN shorter than the key's minimum PIN length",
            ));
        }
        let data_key = self.vault.unwrap(
            &KeyBinding { org_id, key_id },
            &rec.wrapped_dek,
            rec.kek_version,
        )?;
        let digest = Sha256::digest(pin.as_bytes());
        let mut hash16 = Zeroizing::new([0u8; 16]);
        hash16.copy_from_slice(&digest[..16]);
        rec.pin_verifier = Some(data_key.pin_verifier(&hash16).to_vec());
        rec.pin_code_points = i32::try_from(code_points).unwrap_or(i32::MAX);
        rec.pin_retries = i32::from(keyward_authenticator::MAX_PIN_RETRIES);
        rec.consecutive_pin_failures = 0;
        rec.force_pin_change = force_change;
        tx.save_key_state(&rec).await?;
        let detail = serde_json::json!({ "force_change": force_change });
        tx.append_audit(
            org_id,
            actor,
            "key.pin_set",
            &format!("key:{key_id}"),
            detail,
        )
        .await?;
        tx.commit().await?;
        *volatile = None;
        Ok(())
    }

    /// Runs one CTAP2 message (command byte ‖ CBOR) on a key and returns the response (status
    /// byte ‖ CBOR). Whatever the engine wrote, and the audit entry, are committed before this
    /// returns; on any storage or vault failure nothing is committed and an error is returned
    /// instead of the response.
    pub async fn ctap(
        &self,
        org_id: Uuid,
        key_id: Uuid,
        actor: &str,
        policy: Policy,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, KeyOpsError> {
        let command = *request
            .first()
            .ok_or(KeyOpsError::InvalidRequest("empty CTAP request"))?;
        let volatile = self.slot(key_id).lock_owned().await;
        let _turn = self.writer_turn().await;
        let mut tx = self.store.begin_key(org_id, key_id).await?;
        let rec = tx.key().await?;
        if rec.status != "active" {
            return Err(KeyOpsError::KeyNotActive(rec.status));
        }
        let data_key = self.vault.unwrap(
            &KeyBinding { org_id, key_id },
            &rec.wrapped_dek,
            rec.kek_version,
        )?;
        let protection = VaultProtection {
            data_key,
            org_id,
            user_id: rec.user_id,
            key_id,
        };
        let mut config = self.config.clone();
        if let Ok(aaguid) = <[u8; 16]>::try_from(rec.aaguid.as_slice()) {
            config.aaguid = aaguid;
        }
        let env = ServerEnv { epoch: self.epoch };
        let handle = tokio::runtime::Handle::current();
        let mut tx_store =
            TxStore::new(handle, self.store.clone(), tx, rec, actor, via_for(&policy));

        let engine = move || {
            let mut volatile = volatile;
            let mut env = env;
            let authenticator =
                volatile.get_or_insert_with(|| Authenticator::new(config, &mut env));
            let mut presence = CallerPresence;
            let mut ctx = Context {
                store: &mut tx_store,
                protection: &protection,
                presence: &mut presence,
                env: &mut env,
                policy,
            };
            let response = authenticator.process(&mut ctx, &request);
            (volatile, tx_store, response)
        };
        // The engine is synchronous and blocks on each database call. On a multi-threaded runtime
        // it runs in place (the worker hands its other tasks off), which saves a thread hop per
        // operation; a current-thread runtime cannot block in place, so it goes to the blocking
        // pool there. A panic in the engine becomes an error, not a dead connection.
        let aborted = |_| KeyOpsError::Internal("key operation aborted".into());
        let (volatile, tx_store, response) = if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(engine))
            })
            .map_err(aborted)?
        } else {
            tokio::task::spawn_blocking(engine)
                .await
                .map_err(|e| KeyOpsError::Internal(format!("key operation aborted: {e}")))?
        };

        let (tx, effects, failure) = tx_store.into_parts();
        if let Some(e) = failure {
            // Dropping the transaction rolls back whatever the engine wrote.
            return Err(KeyOpsError::Store(e));
        }
        let mut tx = tx.ok_or_else(|| KeyOpsError::Internal("key transaction lost".into()))?;
        let status = response.first().copied().unwrap_or(0x7F);
        if !UNAUDITED_COMMANDS.contains(&command) {
            let detail = serde_json::json!({
                "status": status,
                "registration_only": policy.registration_only,
                // An admin-authorised UV (automated provisioning) is recorded as such (invariant 4).
                "uv_preauthorized": policy.preauthorized_uv,
                "created": effects.created.iter().map(|(rp, user, id)| serde_json::json!({
                    "rp_id": rp, "user_name": user, "credential_id": hex::encode(id),
                })).collect::<Vec<_>>(),
                "signed": effects.signed.iter().map(|(id, n)| serde_json::json!({
                    "credential_id": hex::encode(id), "sign_count": n,
                })).collect::<Vec<_>>(),
                "deleted": effects.deleted.iter().map(hex::encode).collect::<Vec<_>>(),
                "pin_state_changed": effects.pin_state_changed,
                "wiped": effects.wiped,
            });
            let action = format!("key.ctap.{}", command_name(command));
            tx.append_audit(org_id, actor, &action, &format!("key:{key_id}"), detail)
                .await?;
        }
        tx.commit().await?;
        drop(volatile);
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_classify_for_http() {
        assert!(!KeyOpsError::from(StoreError::NotFound).is_unavailable());
        assert!(matches!(
            KeyOpsError::from(StoreError::NotFound),
            KeyOpsError::NotFound
        ));
        assert!(KeyOpsError::from(VaultError::Pkcs11("down".into())).is_unavailable());
        assert!(matches!(
            KeyOpsError::from(VaultError::Integrity),
            KeyOpsError::Integrity
        ));
        assert!(!KeyOpsError::InvalidRequest("x").is_unavailable());
    }

    #[test]
    fn via_follows_policy() {
        assert_eq!(
            via_for(&Policy {
                registration_only: true,
                preauthorized_uv: false
            }),
            "delegated"
        );
        assert_eq!(
            via_for(&Policy {
                registration_only: false,
                preauthorized_uv: true
            }),
            "automated"
        );
        assert_eq!(via_for(&Policy::default()), "user");
        assert_eq!(command_name(0x02), "get_assertion");
        assert_eq!(command_name(0x55), "unknown");
    }
}
