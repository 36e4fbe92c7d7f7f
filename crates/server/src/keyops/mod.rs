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
use keyward_store::{
    Backend, KeyTx, NewSecurityKey, OpEnd, OpMark, SecurityKeyRecord, Store, StoreError,
};
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

/// authenticatorMakeCredential.
const MAKE_CREDENTIAL: u8 = 0x01;

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
    /// Each organisation's settings for new keys (AAGUID, minimum PIN length) as last read, and
    /// when; like `org_attestations`.
    org_key_settings: Mutex<HashMap<Uuid, (Instant, KeySettings)>>,
}

/// What new keys take from their organisation's settings: the AAGUID and the minimum PIN length.
type KeySettings = ([u8; 16], i32);

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

/// The detail of a `key.create` audit entry.
fn create_detail(user_id: Uuid, new: &NewSecurityKey) -> serde_json::Value {
    serde_json::json!({ "user_id": user_id, "kek_version": new.kek_version })
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
    /// Provisioning: the key does not exist yet; the operation creates it (for this user, from
    /// this material) in its own transaction, and `key_id` is the new key's id.
    create: Option<(Uuid, NewSecurityKey)>,
    /// Provisioning: the job item (job id, user id) whose intent names the credential the
    /// operation creates, written in the operation's transaction.
    intent: Option<(Uuid, Uuid)>,
}

/// A makeCredential that a provisioning job item runs on its user's key
/// ([`KeyOps::provision_credential`]).
pub struct ProvisionOp {
    pub org_id: Uuid,
    pub user_id: Uuid,
    /// The user's key, or `None` to create one in the same transaction.
    pub key_id: Option<Uuid>,
    pub actor: String,
    /// The CTAP makeCredential message (command byte ‖ CBOR).
    pub request: Vec<u8>,
    pub job_id: Uuid,
}

/// What [`KeyOps::provision_credential`] did.
#[derive(Debug)]
pub struct Provisioned {
    pub key_id: Uuid,
    /// The CTAP response (status byte ‖ CBOR).
    pub response: Vec<u8>,
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
        if op.create.is_some() {
            // Created in this transaction: the key has no credentials but the ones the engine
            // adds, so its reads need no round trip to the database.
            tx_store.set_new_key();
        }
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
        let audit = (!UNAUDITED_COMMANDS.contains(&command)).then(|| {
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
            (
                format!("key.ctap.{}", command_name(command)),
                format!("key:{key_id}"),
                detail,
            )
        });
        // A provisioning item's intent names the credential created, and commits with it.
        let intent = match (op.intent, effects.created.as_slice()) {
            (Some((job_id, user_id)), [(_, _, credential_id)]) => {
                Some((job_id, user_id, credential_id.as_slice()))
            }
            _ => None,
        };
        let end = OpEnd {
            credentials: &effects.deferred,
            audit: audit.as_ref().map(|(action, target, detail)| {
                (
                    op.actor.as_str(),
                    action.as_str(),
                    target.as_str(),
                    detail.clone(),
                )
            }),
            intent,
        };
        if let Err(e) = handle.block_on(tx.finish_op(org_id, end)) {
            return (Some(tx), mark, fail(volatile, e.into()));
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
            org_key_settings: Mutex::new(HashMap::new()),
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
        drop(cache);
        self.shared
            .org_key_settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&org_id);
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
            create: None,
            intent: None,
        };
        self.run(op).await
    }

    async fn run(&self, op: Op) -> Result<Vec<u8>, KeyOpsError> {
        match &self.committer {
            Some(committer) => match committer
                .submit(&self.shared, batch::Work::Ctap(Box::new(op)))
                .await?
            {
                batch::Answer::Ctap(response) => Ok(response),
                batch::Answer::Recorded(_) => {
                    Err(KeyOpsError::Internal("unexpected committer answer".into()))
                }
            },
            None => self.ctap_alone(op).await,
        }
    }

    /// Runs a provisioning item's makeCredential on its user's key, with what the item must
    /// write alongside in the same transaction (and, on SQLite, the same group commit): the key
    /// itself when the user has none yet (audited `key.create`; the organisation's settings as
    /// read within [`SETTINGS_TTL`]), and the item's intent naming the new credential. So a crash
    /// leaves either all of it or none: never a credential without its intent.
    ///
    /// UV is the server's explicit, audited authorisation (`preauthorized_uv`): an admin started
    /// the job.
    pub async fn provision_credential(&self, p: ProvisionOp) -> Result<Provisioned, KeyOpsError> {
        // The admin's authorisation stands in for UV only to create a credential.
        if p.request.first() != Some(&MAKE_CREDENTIAL) {
            return Err(KeyOpsError::InvalidRequest(
                "provisioning runs only authenticatorMakeCredential",
            ));
        }
        let attestation = self.org_attestation(p.org_id).await?;
        let create = match p.key_id {
            Some(_) => None,
            None => Some((p.user_id, self.new_key_for(p.org_id).await?)),
        };
        let key_id = match (&create, p.key_id) {
            (Some((_, new)), _) => new.id,
            (None, Some(id)) => id,
            (None, None) => return Err(KeyOpsError::NotFound),
        };
        let op = Op {
            attestation,
            org_id: p.org_id,
            key_id,
            actor: p.actor,
            policy: Policy {
                preauthorized_uv: true,
                ..Policy::default()
            },
            request: p.request,
            create,
            intent: Some((p.job_id, p.user_id)),
        };
        let response = self.run(op).await?;
        Ok(Provisioned { key_id, response })
    }

    /// Records a provisioning item's registration at the RP and finishes the item `done`
    /// ([`keyward_store::ItemRegistration`]); on SQLite through the group committer, so many
    /// items share one commit. Returns whether the item was still running.
    pub async fn record_registration(
        &self,
        r: keyward_store::ItemRegistration,
    ) -> Result<bool, KeyOpsError> {
        match &self.committer {
            Some(committer) => {
                match committer
                    .submit(&self.shared, batch::Work::Record(Box::new(r)))
                    .await?
                {
                    batch::Answer::Recorded(running) => Ok(running),
                    batch::Answer::Ctap(_) => {
                        Err(KeyOpsError::Internal("unexpected committer answer".into()))
                    }
                }
            }
            None => {
                let mut tx = self.shared.store.begin().await?;
                let running = tx.record_registration(&r).await?;
                tx.commit().await?;
                Ok(running)
            }
        }
    }

    /// The material of a new key with the organisation's settings (AAGUID, minimum PIN length),
    /// read before any lock is taken and reused for [`SETTINGS_TTL`].
    async fn new_key_for(&self, org_id: Uuid) -> Result<NewSecurityKey, KeyOpsError> {
        let cached = {
            let cache = self
                .shared
                .org_key_settings
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            cache
                .get(&org_id)
                .filter(|(at, _)| at.elapsed() < SETTINGS_TTL)
                .map(|(_, s)| *s)
        };
        let (aaguid, min_pin_length) = match cached {
            Some(s) => s,
            None => {
                let read_at = Instant::now();
                let e = crate::api::settings::effective(
                    &self.shared.store,
                    org_id,
                    self.shared.config.aaguid,
                )
                .await?;
                let s = (e.aaguid, e.min_pin_length);
                self.shared
                    .org_key_settings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(org_id, (read_at, s));
                s
            }
        };
        let mut new = self.new_key_material(org_id)?;
        new.aaguid = aaguid.to_vec();
        new.min_pin_length = min_pin_length;
        Ok(new)
    }

    /// One operation in its own transaction (PostgreSQL).
    async fn ctap_alone(&self, op: Op) -> Result<Vec<u8>, KeyOpsError> {
        let mut volatile = self.shared.slot(op.key_id).lock_owned().await;
        let _turn = self.writer_turn().await;
        let (tx, rec) = match &op.create {
            Some((user_id, new)) => {
                let mut tx = self.shared.store.begin_key_create(op.org_id).await?;
                let rec = tx
                    .create_key(
                        op.org_id,
                        *user_id,
                        new,
                        &op.actor,
                        create_detail(*user_id, new),
                    )
                    .await?;
                (tx, rec)
            }
            None => {
                let mut tx = self.shared.store.begin_key(op.org_id, op.key_id).await?;
                let rec = tx.key().await?;
                (tx, rec)
            }
        };
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

    /// The admin's authorisation that stands in for UV is for creating credentials only: a
    /// provisioning call with any other command is refused before anything is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn provisioning_runs_only_make_credential() {
        let db = keyward_store::testing::sqlite().await;
        let vault = keyward_vault::Vault::open(keyward_vault::KekSource::Env {
            current: Zeroizing::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
            next: None,
        })
        .expect("vault");
        let ops = KeyOps::new(db.store.clone(), Arc::new(vault), Config::new([0; 16]));
        for request in [vec![], vec![0x02, 0xa0], vec![0x06, 0xa0]] {
            let r = ops
                .provision_credential(ProvisionOp {
                    org_id: Uuid::now_v7(),
                    user_id: Uuid::now_v7(),
                    key_id: None,
                    actor: "admin:a".into(),
                    request,
                    job_id: Uuid::now_v7(),
                })
                .await;
            assert!(matches!(r, Err(KeyOpsError::InvalidRequest(_))), "{r:?}");
        }
        assert!(db.store.all_wrapped_deks().await.expect("keys").is_empty());
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
