//! The engine's synchronous [`Store`] over one key operation's database transaction.
//!
//! The engine runs on a blocking thread (`spawn_blocking`) and each trait call drives one async
//! [`KeyTx`] call to completion with [`Handle::block_on`]. Everything the engine writes goes into
//! the operation's transaction, which the caller commits together with the audit entry *before*
//! the CTAP response is released: "durable when it returns" holds for anything the host can see.
//!
//! The exception is [`Store::spend_pin_retry`]: a spent retry must survive even if the operation
//! later fails or the process dies while comparing, so it commits the transaction so far and
//! goes on in a new one that holds the key's lock again ([`KeyTx::checkpoint`]). In a batch
//! (SQLite group commit) that commits the batch's earlier operations as well.

use keyward_authenticator::{KeyState, StoreError, StoredCredential, UserEntity};
use keyward_store::{CredentialRecord, KeyTx, OpMark, SecurityKeyRecord};
use tokio::runtime::Handle;
use uuid::Uuid;

/// What the operation did, for its audit entry.
#[derive(Default, Debug)]
pub(super) struct Effects {
    /// (rp id, user name, credential id) of credentials created.
    pub created: Vec<(String, Option<String>, Vec<u8>)>,
    /// (credential id, new counter) of signatures released.
    pub signed: Vec<(Vec<u8>, u32)>,
    pub deleted: Vec<Vec<u8>>,
    pub pin_state_changed: bool,
    pub pin_retry_spent: bool,
    pub wiped: bool,
    /// Credentials created on a key created in the same operation, not written yet: the caller
    /// writes them with the operation's last writes ([`keyward_store::KeyTx::finish_op`]).
    pub deferred: Vec<CredentialRecord>,
}

pub(super) struct TxStore {
    handle: Handle,
    /// What rolling the operation back restores in a batch (see [`KeyTx::mark`]).
    mark: OpMark,
    org_id: Uuid,
    key_id: Uuid,
    tx: Option<KeyTx>,
    /// The key row as last read or written in this operation.
    rec: SecurityKeyRecord,
    /// Whether `rec` is known to match the row: true while this transaction holds the row lock
    /// (nobody else can write it, and our own writes update `rec`), false after re-locking.
    rec_fresh: bool,
    actor: String,
    via: &'static str,
    pub(super) effects: Effects,
    /// The first storage failure: the operation must then be rolled back and refused.
    pub(super) failure: Option<keyward_store::StoreError>,
    /// For a key created in this operation's transaction: all its credentials, which are the ones
    /// inserted since (the engine's reads are answered from here, and its inserts held back in
    /// `effects.deferred`, without a round trip). `None` for a key that existed before.
    new_key: Option<Vec<StoredCredential>>,
}

/// Runs one `KeyTx` call on the runtime, recording a failure so the caller can refuse the result.
macro_rules! on_tx {
    ($s:ident, $tx:ident => $call:expr) => {{
        match $s.tx.as_mut() {
            None => Err($s.fail(keyward_store::StoreError::Invalid(
                "key transaction is closed".into(),
            ))),
            Some($tx) => {
                let r = $s.handle.block_on($call);
                r.map_err(|e| $s.fail(e))
            }
        }
    }};
}

impl TxStore {
    pub(super) fn new(
        handle: Handle,
        mark: OpMark,
        tx: KeyTx,
        rec: SecurityKeyRecord,
        actor: &str,
        via: &'static str,
    ) -> Self {
        TxStore {
            handle,
            mark,
            org_id: rec.org_id,
            key_id: rec.id,
            tx: Some(tx),
            rec,
            rec_fresh: true,
            actor: actor.to_owned(),
            via,
            effects: Effects::default(),
            failure: None,
            new_key: None,
        }
    }

    /// Marks the key as created in this operation's transaction (it has no credentials yet).
    pub(super) fn set_new_key(&mut self) {
        self.new_key = Some(Vec::new());
    }

    /// Hands the transaction (and its operation's mark) back for the audit entry and commit.
    pub(super) fn into_parts(
        self,
    ) -> (
        Option<KeyTx>,
        OpMark,
        Effects,
        Option<keyward_store::StoreError>,
    ) {
        (self.tx, self.mark, self.effects, self.failure)
    }

    fn fail(&mut self, e: keyward_store::StoreError) -> StoreError {
        let msg = e.to_string();
        tracing::error!(org_id = %self.org_id, key_id = %self.key_id, error = %msg, "key operation storage failure");
        if self.failure.is_none() {
            self.failure = Some(e);
        }
        StoreError::Unavailable(msg)
    }

    fn corrupt(&mut self, what: &str) -> StoreError {
        self.fail(keyward_store::StoreError::Corrupt(what.to_owned()))
    }

    /// Writes the held-back credentials now, for a call that needs them in the database.
    fn flush_deferred(&mut self) -> Result<(), StoreError> {
        for rec in std::mem::take(&mut self.effects.deferred) {
            on_tx!(self, tx => tx.insert_credential(&rec))?;
        }
        Ok(())
    }

    fn stored(&mut self, r: CredentialRecord) -> Result<StoredCredential, StoreError> {
        stored_from_record(r).map_err(|what| self.corrupt(what))
    }

    fn stored_all(
        &mut self,
        rs: Vec<CredentialRecord>,
    ) -> Result<Vec<StoredCredential>, StoreError> {
        rs.into_iter().map(|r| self.stored(r)).collect()
    }
}

pub(super) fn state_from_record(r: &SecurityKeyRecord) -> Result<KeyState, &'static str> {
    let pin_verifier = match &r.pin_verifier {
        None => None,
        Some(v) => Some(<[u8; 32]>::try_from(v.as_slice()).map_err(|_| "pin verifier length")?),
    };
    let small = |v: i32, what: &'static str| u8::try_from(v).map_err(|_| what);
    Ok(KeyState {
        pin_verifier,
        pin_code_points: small(r.pin_code_points, "pin length")?,
        pin_retries: small(r.pin_retries, "pin retries")?,
        consecutive_pin_failures: small(r.consecutive_pin_failures, "pin failures")?,
        min_pin_length: small(r.min_pin_length, "min pin length")?,
        min_pin_length_rp_ids: r.min_pin_length_rp_ids.clone(),
        force_pin_change: r.force_pin_change,
        always_uv: r.always_uv,
    })
}

pub(super) fn apply_state(r: &mut SecurityKeyRecord, s: &KeyState) {
    r.pin_verifier = s.pin_verifier.map(|v| v.to_vec());
    r.pin_code_points = i32::from(s.pin_code_points);
    r.pin_retries = i32::from(s.pin_retries);
    r.consecutive_pin_failures = i32::from(s.consecutive_pin_failures);
    r.min_pin_length = i32::from(s.min_pin_length);
    r.min_pin_length_rp_ids = s.min_pin_length_rp_ids.clone();
    r.force_pin_change = s.force_pin_change;
    r.always_uv = s.always_uv;
}

fn stored_from_record(r: CredentialRecord) -> Result<StoredCredential, &'static str> {
    Ok(StoredCredential {
        rp_id_hash: <[u8; 32]>::try_from(r.rp_id_hash.as_slice())
            .map_err(|_| "rp id hash length")?,
        id: r.credential_id,
        rp_id: r.rp_id,
        rp_name: r.rp_name,
        user: UserEntity {
            id: r.user_handle,
            name: r.user_name,
            display_name: r.user_display_name,
        },
        alg: r.alg,
        public_key_cose: r.public_key_cose,
        sealed_private_key: r.sealed_private_key,
        sealed_cred_random: r.sealed_cred_random,
        discoverable: r.discoverable,
        cred_protect: u8::try_from(r.cred_protect).map_err(|_| "cred protect")?,
        cred_blob: r.cred_blob,
        sign_count: u32::try_from(r.sign_count).map_err(|_| "sign count")?,
        backup_eligible: r.backup_eligible,
        backup_state: r.backup_state,
        created_at_ms: u64::try_from(r.created_at.timestamp_millis()).unwrap_or(0),
    })
}

fn record_from_stored(c: &StoredCredential, actor: &str, via: &str) -> CredentialRecord {
    CredentialRecord {
        credential_id: c.id.clone(),
        rp_id: c.rp_id.clone(),
        rp_id_hash: c.rp_id_hash.to_vec(),
        rp_name: c.rp_name.clone(),
        user_handle: c.user.id.clone(),
        user_name: c.user.name.clone(),
        user_display_name: c.user.display_name.clone(),
        alg: c.alg,
        public_key_cose: c.public_key_cose.clone(),
        sealed_private_key: c.sealed_private_key.clone(),
        sealed_cred_random: c.sealed_cred_random.clone(),
        discoverable: c.discoverable,
        cred_protect: i32::from(c.cred_protect),
        cred_blob: c.cred_blob.clone(),
        sign_count: i64::from(c.sign_count),
        backup_eligible: c.backup_eligible,
        backup_state: c.backup_state,
        // The engine's clock is monotonic, not wall time; the row records when it was stored.
        created_at: keyward_store::now(),
        created_by: Some(actor.to_owned()),
        via: via.to_owned(),
    }
}

impl keyward_authenticator::Store for TxStore {
    fn load_state(&mut self) -> Result<KeyState, StoreError> {
        if !self.rec_fresh {
            self.rec = on_tx!(self, tx => tx.key())?;
            self.rec_fresh = true;
        }
        state_from_record(&self.rec).map_err(|what| self.corrupt(what))
    }

    fn save_state(&mut self, state: &KeyState) -> Result<(), StoreError> {
        let mut rec = self.rec.clone();
        apply_state(&mut rec, state);
        on_tx!(self, tx => tx.save_key_state(&rec))?;
        self.rec = rec;
        self.effects.pin_state_changed = true;
        Ok(())
    }

    fn spend_pin_retry(&mut self) -> Result<KeyState, StoreError> {
        // The checkpoint below commits: what the operation created so far goes with it.
        self.flush_deferred()?;
        let mut state = self.load_state()?;
        state.pin_retries = state.pin_retries.saturating_sub(1);
        state.consecutive_pin_failures = state.consecutive_pin_failures.saturating_add(1);
        let mut rec = self.rec.clone();
        apply_state(&mut rec, &state);
        on_tx!(self, tx => tx.save_key_state(&rec))?;
        let detail = serde_json::json!({ "pin_retries": state.pin_retries });
        let (org, actor, target) = (
            self.org_id,
            self.actor.clone(),
            format!("key:{}", self.key_id),
        );
        on_tx!(self, tx => tx.append_audit(org, &actor, "key.pin_retry_spent", &target, detail))?;
        // Commit now: a crash between here and the comparison must not give the retry back. The
        // key's lock is taken again for the rest of the operation, and its state re-read: another
        // replica may have changed it in between.
        let mut mark = std::mem::take(&mut self.mark);
        let r = on_tx!(self, tx => tx.checkpoint(&mut mark));
        self.mark = mark;
        r?;
        self.rec_fresh = false;
        self.effects.pin_retry_spent = true;
        self.load_state()
    }

    fn credentials_for_rp(
        &mut self,
        rp_id_hash: &[u8; 32],
    ) -> Result<Vec<StoredCredential>, StoreError> {
        if let Some(known) = &self.new_key {
            return Ok(known
                .iter()
                .filter(|c| &c.rp_id_hash == rp_id_hash)
                .cloned()
                .collect());
        }
        let rs = on_tx!(self, tx => tx.credentials_for_rp(rp_id_hash))?;
        self.stored_all(rs)
    }

    fn credential(&mut self, id: &[u8]) -> Result<Option<StoredCredential>, StoreError> {
        if let Some(known) = &self.new_key {
            return Ok(known.iter().find(|c| c.id == id).cloned());
        }
        match on_tx!(self, tx => tx.credential(id))? {
            Some(r) => self.stored(r).map(Some),
            None => Ok(None),
        }
    }

    fn discoverable_credentials(&mut self) -> Result<Vec<StoredCredential>, StoreError> {
        if let Some(known) = &self.new_key {
            return Ok(known.iter().filter(|c| c.discoverable).cloned().collect());
        }
        let rs = on_tx!(self, tx => tx.discoverable_credentials())?;
        self.stored_all(rs)
    }

    fn insert_credential(&mut self, cred: &StoredCredential) -> Result<(), StoreError> {
        let rec = record_from_stored(cred, &self.actor, self.via);
        match &mut self.new_key {
            // A new key holds no other credential, so the insert cannot conflict: it is written
            // with the operation's last writes.
            Some(known) => {
                known.push(cred.clone());
                self.effects.deferred.push(rec);
            }
            None => on_tx!(self, tx => tx.insert_credential(&rec))?,
        }
        self.effects
            .created
            .push((cred.rp_id.clone(), cred.user.name.clone(), cred.id.clone()));
        Ok(())
    }

    fn update_user(&mut self, id: &[u8], user: &UserEntity) -> Result<bool, StoreError> {
        self.flush_deferred()?;
        let updated = on_tx!(self, tx => tx.update_credential_user(id, &user.id, user.name.as_deref(), user.display_name.as_deref()))?;
        if let Some(c) = self
            .new_key
            .as_mut()
            .and_then(|known| known.iter_mut().find(|c| c.id == id))
        {
            c.user = user.clone();
        }
        Ok(updated)
    }

    fn delete_credential(&mut self, id: &[u8]) -> Result<bool, StoreError> {
        self.flush_deferred()?;
        let deleted = on_tx!(self, tx => tx.delete_credential(id))?;
        if let Some(known) = &mut self.new_key {
            known.retain(|c| c.id != id);
        }
        if deleted {
            self.effects.deleted.push(id.to_vec());
        }
        Ok(deleted)
    }

    fn next_sign_count(&mut self, id: &[u8]) -> Result<u32, StoreError> {
        self.flush_deferred()?;
        let n = on_tx!(self, tx => tx.next_sign_count(id))?;
        self.effects.signed.push((id.to_vec(), n));
        Ok(n)
    }

    fn wipe(&mut self) -> Result<(), StoreError> {
        self.effects.deferred.clear();
        on_tx!(self, tx => tx.wipe_credentials())?;
        if let Some(known) = &mut self.new_key {
            known.clear();
        }
        // A reset key keeps its row (and data key) but forgets its PIN and options.
        self.save_state(&KeyState::default())?;
        self.effects.wiped = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> SecurityKeyRecord {
        SecurityKeyRecord {
            id: Uuid::from_u128(1),
            org_id: Uuid::from_u128(2),
            user_id: Uuid::from_u128(3),
            status: "active".into(),
            aaguid: vec![0; 16],
            wrapped_dek: vec![],
            kek_version: 1,
            pin_verifier: Some(vec![7; 32]),
            pin_code_points: 6,
            pin_retries: 5,
            consecutive_pin_failures: 1,
            min_pin_length: 4,
            min_pin_length_rp_ids: vec!["example.com".into()],
            force_pin_change: true,
            always_uv: false,
        }
    }

    /// A spent PIN retry is committed before the engine compares the PIN: even if the rest of
    /// the operation is rolled back (a crash, a storage error), the retry stays spent and the
    /// failure is audited.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spent_pin_retry_survives_a_rolled_back_operation() {
        let db = keyward_store::testing::sqlite().await;
        let store = db.store.clone();
        let mut tx = store.begin().await.expect("begin");
        let org = tx.insert_organisation("spend").await.expect("org");
        let user = keyward_store::NewUser {
            upn: "u@example.com".into(),
            email: None,
            display_name: None,
            source: "api".into(),
            external_id: None,
        };
        let user = tx.insert_user(org.id, &user).await.expect("user");
        let key_id = Uuid::now_v7();
        let new = keyward_store::NewSecurityKey {
            id: key_id,
            aaguid: vec![0; 16],
            wrapped_dek: vec![1; 60],
            kek_version: 1,
            min_pin_length: 4,
            force_pin_change: false,
        };
        tx.insert_security_key(org.id, user.id, &new)
            .await
            .expect("key");
        tx.commit().await.expect("commit");

        let mut key_tx = store.begin_key(org.id, key_id).await.expect("lock");
        let rec = key_tx.key().await.expect("row");
        let handle = Handle::current();
        let (state, tx_store) = tokio::task::spawn_blocking(move || {
            let mut ts = TxStore::new(handle, OpMark::default(), key_tx, rec, "user:test", "user");
            let state = keyward_authenticator::Store::spend_pin_retry(&mut ts).expect("spend");
            // Something else in the same operation, then the operation is abandoned.
            keyward_authenticator::Store::save_state(
                &mut ts,
                &KeyState {
                    always_uv: true,
                    ..state.clone()
                },
            )
            .expect("save");
            (state, ts)
        })
        .await
        .expect("blocking");
        assert_eq!((state.pin_retries, state.consecutive_pin_failures), (7, 1));
        assert!(tx_store.effects.pin_retry_spent);
        drop(tx_store); // rolls back the re-opened transaction

        let after = store
            .key_by_id(org.id, key_id)
            .await
            .expect("read")
            .expect("row");
        assert_eq!(
            (after.pin_retries, after.consecutive_pin_failures),
            (7, 1),
            "spent retry was lost"
        );
        assert!(
            !after.always_uv,
            "the abandoned rest of the operation must roll back"
        );
        let audit = store.verify_audit().await.expect("audit").expect("chain");
        assert!(audit.entries >= 1);
    }

    #[test]
    fn key_state_round_trips_through_the_row() {
        let r = rec();
        let s = state_from_record(&r).expect("state");
        assert_eq!(s.pin_verifier, Some([7; 32]));
        let mut back = rec();
        back.pin_retries = 0;
        apply_state(&mut back, &s);
        assert_eq!(back, r);
    }

    #[test]
    fn corrupt_rows_are_refused() {
        let mut r = rec();
        r.pin_verifier = Some(vec![1; 31]);
        assert!(state_from_record(&r).is_err());
        let mut r = rec();
        r.pin_retries = 300;
        assert!(state_from_record(&r).is_err());
        let mut r = rec();
        r.pin_retries = -1;
        assert!(state_from_record(&r).is_err());
    }
}
