//! Server-side key operations: the one place where the server makes a security key act.
//!
//! [`KeyOps::ctap`] runs one CTAP2 message on one key. Per operation:
//! 1. an in-process async mutex per key guards the key's volatile engine state (the
//!    "power-cycle" state: PIN tokens, assertion cursors);
//! 2. the operation runs inside a transaction that holds the key's lock, ordering replicas
//!    (PostgreSQL `SELECT … FOR UPDATE`, SQLite `BEGIN IMMEDIATE`);
//! 3. the vault unwraps the key's data key; the engine runs against the transaction
//!    ([`tx_store::TxStore`]) and the data key ([`host::VaultProtection`]);
//! 4. the audit entry is appended in the same transaction and the transaction commits; only then
//!    is the response released. Any storage or vault failure rolls back and refuses the operation
//!    (fail closed, design.md invariant 6): a counter is never released without being durable.
//!
//! On SQLite, operations go through a group committer ([`batch`]): one thread per `KeyOps` takes
//! whatever operations are queued, runs them one after another in a single `BEGIN IMMEDIATE`
//! transaction (each in its own savepoint, so a failed operation rolls back alone) and answers
//! them only after the one `COMMIT`, so N operations share one WAL fsync. On PostgreSQL each
//! operation has its own transaction and row lock.

mod batch;
mod host;
mod tx_store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keyward_authenticator::{Authenticator, Config, Context, Policy};
use keyward_store::{Backend, KeyTx, NewSecurityKey, OpMark, SecurityKeyRecord, Store, StoreError};
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
    /// The operation was refused because the batch it ran in could not be committed (SQLite
    /// group commit): nothing of it was released.
    #[error("key storage unavailable: {0}")]
    Unavailable(String),
}

impl KeyOpsError {
    /// True for failures of the database or vault (HTTP 503).
    pub fn is_unavailable(&self) -> bool {
        match self {
            KeyOpsError::Store(e) => e.is_unavailable(),
            KeyOpsError::Vault(_) | KeyOpsError::Internal(_) | KeyOpsError::Unavailable(_) => true,
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

/// The stored form of a PIN that the server sets: the key's keyed verifier of the PIN's SHA-256
/// truncated to 16 bytes (CTAP's pinHash), the same value the engine computes from a client's
/// pinHashEnc, so the PIN works through CTAP afterwards.
pub fn pin_verifier(data_key: &keyward_vault::DataKey, pin: &str) -> Vec<u8> {
    let digest = Sha256::digest(pin.as_bytes());
    let mut hash16 = Zeroizing::new([0u8; 16]);
    hash16.copy_from_slice(&digest[..16]);
    data_key.pin_verifier(&hash16).to_vec()
}

/// Server-side key operations. Cheap to share behind an `Arc`.
pub struct KeyOps {
    shared: Arc<Shared>,
    /// SQLite's group committer, started on first use (it needs the caller's runtime).
    committer: Option<batch::Committer>,
}

/// What key operations need, shared with the group committer's thread.
struct Shared {
    store: Store,
    vault: Arc<Vault>,
    config: Config,
    slots: Mutex<HashMap<Uuid, Slot>>,
    /// SQLite admits one writer at a time and makes the others sleep-and-retry (busy_timeout backs
    /// off in steps of milliseconds). Queueing this process's writers here instead keeps the
    /// database lock handed over without sleeps; PostgreSQL locks rows and needs no such queue.
    /// Always taken before a key's slot, never after, so the two locks cannot deadlock.
    sqlite_writer: Option<tokio::sync::Mutex<()>>,
    epoch: Instant,
    /// Each organisation's attestation setting as last read, and when: read again after
    /// [`SETTINGS_TTL`], or at once after [`KeyOps::forget_settings`].
    org_attestations: Mutex<HashMap<Uuid, CachedAttestation>>,
}

type CachedAttestation = (Instant, Option<Arc<crate::api::settings::OrgAttestation>>);

/// How long a key operation may use an organisation's attestation setting without reading it
/// again: a change saved through another process (the job runner's engine, another replica)
/// applies within this time; one saved through this engine's own API applies at once.
pub const SETTINGS_TTL: std::time::Duration = std::time::Duration::from_secs(2);

impl std::fmt::Debug for KeyOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyOps")
            .field("store", &self.shared.store)
            .field("vault", &self.shared.vault)
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

/// One CTAP request for one key, as the caller gave it.
struct Op {
    /// The organisation's attestation setting, when it has one.
    attestation: Option<std::sync::Arc<crate::api::settings::OrgAttestation>>,
    org_id: Uuid,
    key_id: Uuid,
    actor: String,
    policy: Policy,
    request: Vec<u8>,
}

/// Counters of SQLite's group committer: how many batches committed and how many operations
/// they answered (failed ones included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    pub batches: u64,
    pub operations: u64,
}

impl Shared {
    fn slot(&self, key_id: Uuid) -> Slot {
        // A poisoned map only means another thread panicked while inserting; the map is valid.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key_id).or_default().clone()
    }

    /// Runs one operation's engine and audit entry on `tx`, which already holds the key's lock
    /// and whose key row is `rec`. Synchronous: each database call is driven with
    /// `handle.block_on`, so this runs on a thread that may block. Hands the transaction back
    /// whatever happens, for the caller to commit or roll back; on failure it has written
    /// nothing the caller should keep, and the key's volatile state is dropped (a power cycle),
    /// since the engine may have acted on writes that will not stand.
    fn execute(
        &self,
        handle: &tokio::runtime::Handle,
        tx: KeyTx,
        mark: OpMark,
        rec: SecurityKeyRecord,
        op: &Op,
        volatile: &mut Option<Authenticator>,
    ) -> (Option<KeyTx>, OpMark, Result<Vec<u8>, KeyOpsError>) {
        let (org_id, key_id) = (op.org_id, op.key_id);
        if rec.status != "active" {
            return (Some(tx), mark, Err(KeyOpsError::KeyNotActive(rec.status)));
        }
        let data_key = match self.vault.unwrap(
            &KeyBinding { org_id, key_id },
            &rec.wrapped_dek,
            rec.kek_version,
        ) {
            Ok(k) => k,
            Err(e) => return (Some(tx), mark, Err(e.into())),
        };
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
        // The organisation's attestation setting (read by `ctap` before the key was locked). A
        // key whose cached engine attests otherwise is power-cycled so the new choice applies;
        // that happens only on the key's first operation after the setting changed.
        if let Some(org_attestation) = &op.attestation {
            config.attestation = org_attestation.for_aaguid(&rec.aaguid);
            if volatile.as_ref().is_some_and(|a| {
                !crate::api::settings::same_attestation(
                    &a.config().attestation,
                    &config.attestation,
                )
            }) {
                *volatile = None;
            }
        }
        let mut env = ServerEnv { epoch: self.epoch };
        let mut tx_store = TxStore::new(
            handle.clone(),
            mark,
            tx,
            rec,
            &op.actor,
            via_for(&op.policy),
        );
        // A panic in the engine becomes an error, not a dead connection or committer.
        let response = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let authenticator =
                volatile.get_or_insert_with(|| Authenticator::new(config, &mut env));
            let mut presence = CallerPresence;
            let mut ctx = Context {
                store: &mut tx_store,
                protection: &protection,
                presence: &mut presence,
                env: &mut env,
                policy: op.policy,
            };
            authenticator.process(&mut ctx, &op.request)
        }));
        let (tx, mark, effects, failure) = tx_store.into_parts();
        let fail = |volatile: &mut Option<Authenticator>, e: KeyOpsError| {
            *volatile = None;
            Err(e)
        };
        let response = match (response, failure) {
            (Err(_), _) => {
                return (
                    tx,
                    mark,
                    fail(
                        volatile,
                        KeyOpsError::Internal("key operation aborted".into()),
                    ),
                );
            }
            (Ok(_), Some(e)) => return (tx, mark, fail(volatile, KeyOpsError::Store(e))),
            (Ok(r), None) => r,
        };
        let Some(mut tx) = tx else {
            return (
                None,
                mark,
                fail(
                    volatile,
                    KeyOpsError::Internal("key transaction lost".into()),
                ),
            );
        };
        let command = op.request.first().copied().unwrap_or(0);
        if !UNAUDITED_COMMANDS.contains(&command) {
            let status = response.first().copied().unwrap_or(0x7F);
            let detail = serde_json::json!({
                "status": status,
                "registration_only": op.policy.registration_only,
                // An admin-authorised UV (automated provisioning) is recorded as such (invariant 4).
                "uv_preauthorized": op.policy.preauthorized_uv,
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
            let target = format!("key:{key_id}");
            if let Err(e) =
                handle.block_on(tx.append_audit(org_id, &op.actor, &action, &target, detail))
            {
                return (Some(tx), mark, fail(volatile, e.into()));
            }
        }
        (Some(tx), mark, Ok(response))
    }
}

impl KeyOps {
    /// `config` is the engine configuration shared by every key (attestation, limits); each key's
    /// own AAGUID from its row replaces `config.aaguid`.
    pub fn new(store: Store, vault: Arc<Vault>, config: Config) -> Self {
        let sqlite = store.backend() == Backend::Sqlite;
        let shared = Arc::new(Shared {
            store,
            vault,
            config,
            slots: Mutex::new(HashMap::new()),
            sqlite_writer: sqlite.then(|| tokio::sync::Mutex::new(())),
            epoch: Instant::now(),
            org_attestations: Mutex::new(HashMap::new()),
        });
        KeyOps {
            shared,
            committer: sqlite.then(batch::Committer::default),
        }
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.shared.vault
    }

    /// Drops the cached settings of an organisation, so its next key operation reads them.
    pub fn forget_settings(&self, org_id: Uuid) {
        let mut cache = self
            .shared
            .org_attestations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache.remove(&org_id);
    }

    /// The organisation's attestation setting: read before the key is locked and outside any
    /// batch (no database read happens while a key operation holds the write lock), and reused
    /// for [`SETTINGS_TTL`] so a key operation costs no extra query.
    async fn org_attestation(
        &self,
        org_id: Uuid,
    ) -> Result<Option<Arc<crate::api::settings::OrgAttestation>>, KeyOpsError> {
        {
            let cache = self
                .shared
                .org_attestations
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((at, cached)) = cache.get(&org_id)
                && at.elapsed() < SETTINGS_TTL
            {
                return Ok(cached.clone());
            }
        }
        let read_at = Instant::now();
        let fresh =
            crate::api::settings::org_attestation(&self.shared.store, &self.shared.vault, org_id)
                .await
                .map_err(|e| match e {
                    crate::api::settings::AttestationError::Store(e) => KeyOpsError::Store(e),
                    crate::api::settings::AttestationError::Vault(e) => e.into(),
                })?
                .map(Arc::new);
        let mut cache = self
            .shared
            .org_attestations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache.insert(org_id, (read_at, fresh.clone()));
        Ok(fresh)
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The group committer's counters (SQLite; `None` on PostgreSQL).
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.committer.as_ref().map(batch::Committer::stats)
    }

    /// Waits for this process's turn to write on SQLite (no-op on PostgreSQL).
    async fn writer_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.shared.sqlite_writer {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    /// Forgets a key's volatile state (a re-plug): PIN tokens and cursors are dropped. Persistent
    /// state, including a remote soft-block of the PIN, is not touched.
    pub async fn power_cycle(&self, key_id: Uuid) {
        let slot = self.shared.slot(key_id);
        *slot.lock().await = None;
    }

    /// The material of a new key, for callers that insert the row in their own transaction
    /// (`Tx::insert_security_key`): a fresh id and a fresh data key wrapped by the vault.
    pub fn new_key_material(&self, org_id: Uuid) -> Result<NewSecurityKey, KeyOpsError> {
        let id = Uuid::now_v7();
        let (wrapped_dek, kek_version) = self
            .shared
            .vault
            .new_data_key(&KeyBinding { org_id, key_id: id })?;
        Ok(NewSecurityKey {
            id,
            aaguid: self.shared.config.aaguid.to_vec(),
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
        let mut new = self.new_key_material(org_id)?;
        let _turn = self.writer_turn().await;
        let mut tx = self.shared.store.begin().await?;
        // The organisation's settings decide the new key's AAGUID and minimum PIN length.
        let settings =
            crate::api::settings::effective_in(&mut tx, org_id, self.shared.config.aaguid).await?;
        new.aaguid = settings.aaguid.to_vec();
        new.min_pin_length = settings.min_pin_length;
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
        self.shared
            .store
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
        let _turn = self.writer_turn().await;
        let slot = self.shared.slot(key_id);
        let mut volatile = slot.lock().await;
        let mut tx = self.shared.store.begin_key(org_id, key_id).await?;
        let mut rec = tx.key().await?;
        if rec.status != "active" {
            return Err(KeyOpsError::KeyNotActive(rec.status));
        }
        if code_points < usize::try_from(rec.min_pin_length).unwrap_or(usize::MAX) {
            return Err(KeyOpsError::InvalidRequest(
                "PIN shorter than the key's minimum PIN length",
            ));
        }
        let data_key = self.shared.vault.unwrap(
            &KeyBinding { org_id, key_id },
            &rec.wrapped_dek,
            rec.kek_version,
        )?;
        rec.pin_verifier = Some(pin_verifier(&data_key, pin));
        rec.pin_code_points = i32::try_from(code_points).unwrap_or(i32::MAX);
        // A new PIN unblocks the key: full retries, no soft block. Nothing else changes (the
        // credentials stay).
        rec.pin_retries = i32::from(keyward_authenticator::MAX_PIN_RETRIES);
        rec.consecutive_pin_failures = 0;
        rec.force_pin_change = force_change;
        tx.save_key_state(&rec).await?;
        // Who set a PIN on whose key, never the PIN.
        let detail = serde_json::json!({ "user_id": rec.user_id, "force_change": force_change });
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
        if request.is_empty() {
            return Err(KeyOpsError::InvalidRequest("empty CTAP request"));
        }
        let attestation = self.org_attestation(org_id).await?;
        let op = Op {
            attestation,
            org_id,
            key_id,
            actor: actor.to_owned(),
            policy,
            request,
        };
        match &self.committer {
            Some(committer) => committer.submit(&self.shared, op).await,
            None => self.ctap_alone(op).await,
        }
    }

    /// One operation in its own transaction (PostgreSQL).
    async fn ctap_alone(&self, op: Op) -> Result<Vec<u8>, KeyOpsError> {
        let mut volatile = self.shared.slot(op.key_id).lock_owned().await;
        let _turn = self.writer_turn().await;
        let mut tx = self.shared.store.begin_key(op.org_id, op.key_id).await?;
        let rec = tx.key().await?;
        let mark = tx.mark();
        let shared = self.shared.clone();
        let handle = tokio::runtime::Handle::current();
        let engine = move || {
            let r = shared.execute(&handle, tx, mark, rec, &op, &mut volatile);
            (r, volatile)
        };
        // The engine is synchronous and blocks on each database call. On a multi-threaded runtime
        // it runs in place (the worker hands its other tasks off), which saves a thread hop per
        // operation; a current-thread runtime cannot block in place, so it goes to the blocking
        // pool there.
        let ((tx, _mark, result), volatile) = if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(engine)
        } else {
            tokio::task::spawn_blocking(engine)
                .await
                .map_err(|e| KeyOpsError::Internal(format!("key operation aborted: {e}")))?
        };
        // On failure, dropping the transaction rolls back whatever the engine wrote.
        let response = result?;
        let tx = tx.ok_or_else(|| KeyOpsError::Internal("key transaction lost".into()))?;
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
