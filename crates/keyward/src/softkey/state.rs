//! The softkey's state file and its [`Store`] implementation.
//!
//! The file is JSON with a version field and base64 for bytes. Everything secret in it is sealed
//! with the file key (see `crypt`); the PIN is only present as a keyed verifier.
//!
//! Rare changes (credentials created, deleted or renamed, PIN set or changed, configuration) are
//! applied to a copy of the state, the whole file is written atomically (temporary file in the
//! same directory, fsync, rename, fsync of the directory) and only then the copy is adopted.
//! Frequent small changes (signature counters, PIN retries) go to the journal beside it (see
//! `journal`): one record written in place and `fdatasync`ed before the change is adopted. So a
//! reply never leaves before its state is on disk, a crash mid-write leaves the old or the new
//! state but never a torn one (a torn journal record is discarded on load, and its answer never
//! left), and a failed write leaves memory and disk agreeing or at worst the disk ahead (a counter
//! skipped, never repeated); the engine then fails closed with CTAP2_ERR_OTHER. A signature
//! counter may also be written ahead of its use, synced once an answer has left (its write
//! sometimes started just before: [`FileStore::start_reservation`],
//! [`FileStore::reserve_next_count`]), so that the next signature need not wait for the disk.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::engine::general_purpose::STANDARD as B64;
use keyward_authenticator::{KeyState, Store, StoreError, StoredCredential, UserEntity};
use serde::{Deserialize, Serialize};

use super::journal::{self, Contents, Journal, Record};

/// The format version written by this code: 2 names a counter journal. Version 1 files (no
/// journal) are read and rewritten as version 2.
pub const STATE_VERSION: u32 = 2;
/// The oldest format version this code reads.
const OLDEST_READABLE_VERSION: u32 = 1;

/// base64 (standard alphabet, padded) for `Vec<u8>` fields.
mod b64 {
    use super::B64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::B64;
        use base64::Engine as _;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(b) => s.serialize_some(&B64.encode(b)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| B64.decode(text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// How the file key is obtained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeySource {
    /// PBKDF2-HMAC-SHA-256 over `KEYWARD_SOFTKEY_PASSPHRASE`.
    Passphrase {
        #[serde(with = "b64")]
        salt: Vec<u8>,
        iterations: u32,
    },
    /// A 32-byte key file beside the state file (`<state>.key`).
    KeyFile,
}

/// The attestation CA and batch key, private keys sealed under the file key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredAttestation {
    #[serde(with = "b64")]
    pub ca_cert_der: Vec<u8>,
    pub ca_cert_pem: String,
    #[serde(with = "b64")]
    pub ca_key_sealed: Vec<u8>,
    #[serde(with = "b64")]
    pub batch_cert_der: Vec<u8>,
    #[serde(with = "b64")]
    pub batch_key_sealed: Vec<u8>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKeyState {
    #[serde(with = "b64::option")]
    pub pin_verifier: Option<Vec<u8>>,
    pub pin_code_points: u8,
    pub pin_retries: u8,
    pub consecutive_pin_failures: u8,
    pub min_pin_length: u8,
    pub min_pin_length_rp_ids: Vec<String>,
    pub force_pin_change: bool,
    pub always_uv: bool,
}

impl std::fmt::Debug for StoredKeyState {
    // The PIN verifier is an offline-guessable secret: Debug says only whether a PIN is set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKeyState")
            .field("pin_set", &self.pin_verifier.is_some())
            .field("pin_retries", &self.pin_retries)
            .field("consecutive_pin_failures", &self.consecutive_pin_failures)
            .field("min_pin_length", &self.min_pin_length)
            .field("force_pin_change", &self.force_pin_change)
            .field("always_uv", &self.always_uv)
            .finish_non_exhaustive()
    }
}

impl From<&KeyState> for StoredKeyState {
    fn from(s: &KeyState) -> Self {
        Self {
            pin_verifier: s.pin_verifier.map(|v| v.to_vec()),
            pin_code_points: s.pin_code_points,
            pin_retries: s.pin_retries,
            consecutive_pin_failures: s.consecutive_pin_failures,
            min_pin_length: s.min_pin_length,
            min_pin_length_rp_ids: s.min_pin_length_rp_ids.clone(),
            force_pin_change: s.force_pin_change,
            always_uv: s.always_uv,
        }
    }
}

impl StoredKeyState {
    fn to_key_state(&self) -> Result<KeyState, StoreError> {
        let pin_verifier = self
            .pin_verifier
            .as_deref()
            .map(<[u8; 32]>::try_from)
            .transpose()
            .map_err(|_| StoreError::Unavailable("PIN verifier of the wrong length".into()))?;
        Ok(KeyState {
            pin_verifier,
            pin_code_points: self.pin_code_points,
            pin_retries: self.pin_retries,
            consecutive_pin_failures: self.consecutive_pin_failures,
            min_pin_length: self.min_pin_length,
            min_pin_length_rp_ids: self.min_pin_length_rp_ids.clone(),
            force_pin_change: self.force_pin_change,
            always_uv: self.always_uv,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUser {
    #[serde(with = "b64")]
    pub id: Vec<u8>,
    pub name: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCred {
    #[serde(with = "b64")]
    pub id: Vec<u8>,
    pub rp_id: String,
    #[serde(with = "b64")]
    pub rp_id_hash: Vec<u8>,
    pub rp_name: Option<String>,
    pub user: StoredUser,
    pub alg: i64,
    #[serde(with = "b64")]
    pub public_key_cose: Vec<u8>,
    #[serde(with = "b64")]
    pub sealed_private_key: Vec<u8>,
    #[serde(with = "b64::option")]
    pub sealed_cred_random: Option<Vec<u8>>,
    pub discoverable: bool,
    pub cred_protect: u8,
    #[serde(with = "b64::option")]
    pub cred_blob: Option<Vec<u8>>,
    pub sign_count: u32,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub created_at_ms: u64,
}

fn user_to_stored(u: &UserEntity) -> StoredUser {
    StoredUser {
        id: u.id.clone(),
        name: u.name.clone(),
        display_name: u.display_name.clone(),
    }
}

impl From<&StoredCredential> for StoredCred {
    fn from(c: &StoredCredential) -> Self {
        Self {
            id: c.id.clone(),
            rp_id: c.rp_id.clone(),
            rp_id_hash: c.rp_id_hash.to_vec(),
            rp_name: c.rp_name.clone(),
            user: user_to_stored(&c.user),
            alg: c.alg,
            public_key_cose: c.public_key_cose.clone(),
            sealed_private_key: c.sealed_private_key.clone(),
            sealed_cred_random: c.sealed_cred_random.clone(),
            discoverable: c.discoverable,
            cred_protect: c.cred_protect,
            cred_blob: c.cred_blob.clone(),
            sign_count: c.sign_count,
            backup_eligible: c.backup_eligible,
            backup_state: c.backup_state,
            created_at_ms: c.created_at_ms,
        }
    }
}

impl StoredCred {
    fn to_credential(&self) -> Result<StoredCredential, StoreError> {
        let rp_id_hash = <[u8; 32]>::try_from(self.rp_id_hash.as_slice())
            .map_err(|_| StoreError::Unavailable("rp id hash of the wrong length".into()))?;
        Ok(StoredCredential {
            id: self.id.clone(),
            rp_id: self.rp_id.clone(),
            rp_id_hash,
            rp_name: self.rp_name.clone(),
            user: UserEntity {
                id: self.user.id.clone(),
                name: self.user.name.clone(),
                display_name: self.user.display_name.clone(),
            },
            alg: self.alg,
            public_key_cose: self.public_key_cose.clone(),
            sealed_private_key: self.sealed_private_key.clone(),
            sealed_cred_random: self.sealed_cred_random.clone(),
            discoverable: self.discoverable,
            cred_protect: self.cred_protect,
            cred_blob: self.cred_blob.clone(),
            sign_count: self.sign_count,
            backup_eligible: self.backup_eligible,
            backup_state: self.backup_state,
            created_at_ms: self.created_at_ms,
        })
    }
}

/// The journal that goes with a state file, and how much of it the state file already holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRef {
    #[serde(with = "b64")]
    pub id: Vec<u8>,
    /// Records before this offset are folded into the state file.
    pub covered: u64,
}

/// The whole state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    #[serde(with = "b64")]
    pub aaguid: Vec<u8>,
    pub key_source: KeySource,
    /// A constant sealed under the file key, so that a wrong passphrase or key file is reported
    /// at start-up instead of as CTAP2_ERR_OTHER on first use.
    #[serde(with = "b64")]
    pub key_check: Vec<u8>,
    pub attestation: Option<StoredAttestation>,
    pub key_state: StoredKeyState,
    pub credentials: Vec<StoredCred>,
    /// The counter journal beside the file; absent until the key first runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalRef>,
}

impl StateFile {
    pub fn aaguid(&self) -> anyhow::Result<[u8; 16]> {
        <[u8; 16]>::try_from(self.aaguid.as_slice())
            .context("the state file's AAGUID is not 16 bytes")
    }

    /// Reads and parses a state file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let state: StateFile =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
        if !(OLDEST_READABLE_VERSION..=STATE_VERSION).contains(&state.version) {
            bail!(
                "{} has format version {}, this keyward reads versions \
                 {OLDEST_READABLE_VERSION} to {STATE_VERSION}",
                path.display(),
                state.version
            );
        }
        state.aaguid()?;
        Ok(state)
    }

    /// Writes the file atomically and durably: temporary file in the same directory, fsync,
    /// rename over the old file, fsync of the directory (so the rename itself survives a crash).
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let dir = parent_dir(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(&dir)?.sync_all()
        })();
        if result.is_err() {
            // Best effort: a leftover temporary file is harmless but untidy.
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// The directory holding `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The softkey's [`Store`]: the state in memory; rare changes rewrite the state file, counters
/// go to the journal.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    /// What is on disk: the state file with the journal's records applied.
    state: StateFile,
    /// The journal being appended to; `None` until the first write (or after a failed one), in
    /// which case the next change starts a new journal.
    journal: Option<Journal>,
    journal_capacity: u64,
    /// The next signature counter of the credential that signed last, already on disk but not
    /// yet issued (see [`FileStore::reserve_next_count`]).
    reserved: Option<SignCount>,
    /// The credential that signed in the request being answered, whose next counter is reserved
    /// once the answer has left.
    to_reserve: Option<Vec<u8>>,
    /// A reservation written to the journal and on its way to the disk, not yet synced.
    started: Option<SignCount>,
}

/// A credential's signature counter value.
#[derive(Debug)]
struct SignCount {
    id: Vec<u8>,
    count: u32,
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("writing the state file: {e}"))
}

fn set_sign_count(state: &mut StateFile, id: &[u8], count: u32) {
    if let Some(cred) = state.credentials.iter_mut().find(|c| c.id == id) {
        cred.sign_count = count;
    }
}

/// Applies one journal record to the state read from disk.
fn replay(state: &mut StateFile, record: &Record) -> anyhow::Result<()> {
    match record {
        Record::SignCount { id, count } => {
            let cred = state
                .credentials
                .iter_mut()
                .find(|c| &c.id == id)
                .context("the journal has a counter for a credential the state file lacks")?;
            // Records hold absolute values; a counter only ever grows.
            cred.sign_count = cred.sign_count.max(*count);
        }
        Record::PinRetries {
            retries,
            consecutive_failures,
        } => {
            state.key_state.pin_retries = *retries;
            state.key_state.consecutive_pin_failures = *consecutive_failures;
        }
    }
    Ok(())
}

impl FileStore {
    /// A store over a state that is not on disk yet (or whose journal is not read): the first
    /// change writes the state file and starts a journal.
    pub fn new(path: PathBuf, state: StateFile) -> Self {
        Self {
            path,
            state,
            journal: None,
            journal_capacity: journal::DEFAULT_CAPACITY,
            reserved: None,
            to_reserve: None,
            started: None,
        }
    }

    /// Reads the state file and replays its journal. Writes nothing.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut state = StateFile::read(path)?;
        if let Some(reference) = &state.journal {
            let id = <[u8; journal::ID_LEN]>::try_from(reference.id.as_slice())
                .context("the state file's journal id is not 16 bytes")?;
            match journal::read(path, &id, reference.covered)? {
                None => bail!(
                    "{} is missing: it holds the latest signature counters and PIN retries of                      {}, which would otherwise repeat; restore it from where the state file came                      from",
                    journal::path_for(path).display(),
                    path.display()
                ),
                Some(Contents::Stale) => tracing::info!(
                    journal = %journal::path_for(path).display(),
                    "ignoring a journal already folded into the state file"
                ),
                Some(Contents::Records { records, .. }) => {
                    for record in &records {
                        replay(&mut state, record).with_context(|| {
                            format!("replaying {}", journal::path_for(path).display())
                        })?;
                    }
                }
            }
        }
        Ok(Self::new(path.to_path_buf(), state))
    }

    pub fn state(&self) -> &StateFile {
        &self.state
    }

    /// Sets the size of journals started from now on (tests use small ones).
    #[cfg(test)]
    pub fn set_journal_capacity(&mut self, bytes: u64) {
        self.journal_capacity = bytes;
    }

    /// Starts writing the next signature counter of the credential that signed in the request
    /// being answered to the journal, without waiting for the disk: called just before the answer
    /// is sent to a host that comes back at once (see `softkey::Pacing`), so that the device
    /// writes while the answer travels. [`FileStore::reserve_next_count`] finishes it once the
    /// answer has left. Does nothing when no credential signed, or when the journal is full (the
    /// reservation then folds it).
    pub fn start_reservation(&mut self) {
        if self.started.is_some() {
            return;
        }
        let Some((id, count)) = self.next_reservation() else {
            return;
        };
        let record = Record::SignCount {
            id: id.clone(),
            count,
        };
        if let Some(journal) = &mut self.journal
            && journal.has_room(&record)
        {
            match journal.write_unsynced(&record) {
                Ok(()) => self.started = Some(SignCount { id, count }),
                Err(e) => {
                    // Whether the record reached the file is unknown: start afresh next time.
                    self.journal = None;
                    tracing::warn!(error = %e, "could not reserve the next signature counter");
                }
            }
        }
    }

    /// Makes the next signature counter of the credential that signed in the request just
    /// answered durable ahead of its use: syncs what [`FileStore::start_reservation`] wrote, or
    /// writes and syncs it now. That credential's next signature then takes the value without a
    /// disk write of its own. Called once the answer has left, so the host's next request
    /// arrives while the sync is under way instead of waiting behind it.
    ///
    /// Every counter value is still on disk before an answer carrying it leaves: a signature
    /// takes either a reserved value, synced here, or a value it writes and syncs itself. On
    /// disk a credential's counter is the last value issued or one more; after a crash the key
    /// continues above it, so a reserved value never issued is skipped, never repeated. One
    /// credential holds the reservation at a time (a key serves one sign-in after another); a
    /// signature by another credential writes its own counter.
    ///
    /// Returns whether it wrote or synced a reservation (false when the answer carried no
    /// signature).
    pub fn reserve_next_count(&mut self) -> bool {
        let started = self.started.is_some();
        let result = match self.finish_started() {
            Ok(()) if started => Ok(true),
            Ok(()) => self.reserve_now(),
            Err(e) => Err(e),
        };
        self.to_reserve = None;
        result.unwrap_or_else(|e| {
            // The next signature writes its own counter, as without a reservation.
            tracing::warn!(error = %e, "could not reserve the next signature counter");
            true
        })
    }

    /// The credential to reserve for and its next counter value.
    fn next_reservation(&self) -> Option<(Vec<u8>, u32)> {
        let id = self.to_reserve.as_ref()?;
        let count = self
            .state
            .credentials
            .iter()
            .find(|c| &c.id == id)?
            .sign_count
            .checked_add(1)?;
        Some((id.clone(), count))
    }

    /// Writes and syncs the reservation (folding a full journal first); false when no
    /// credential signed.
    fn reserve_now(&mut self) -> Result<bool, StoreError> {
        let Some((id, count)) = self.next_reservation() else {
            return Ok(false);
        };
        let record = Record::SignCount {
            id: id.clone(),
            count,
        };
        self.journal_change(record, |s| set_sign_count(s, &id, count))?;
        self.reserved = Some(SignCount { id, count });
        Ok(true)
    }

    /// Syncs a reservation [`FileStore::start_reservation`] wrote and adopts it. Every other
    /// change of the store calls it first, so the journal never has more than its last record
    /// unsynced and a reserved value is never used before it is on disk.
    fn finish_started(&mut self) -> Result<(), StoreError> {
        let Some(value) = self.started.take() else {
            return Ok(());
        };
        let synced = match &mut self.journal {
            Some(journal) => journal.sync(),
            None => Err(std::io::Error::other("the journal was closed")),
        };
        match synced {
            Ok(()) => {
                set_sign_count(&mut self.state, &value.id, value.count);
                self.to_reserve = None;
                self.reserved = Some(value);
                Ok(())
            }
            Err(e) => {
                // Whether the record reached the disk is unknown: start afresh next time.
                self.journal = None;
                Err(io_error(e))
            }
        }
    }

    /// Folds the journal into the state file and starts a new, empty journal.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        self.finish_started()?;
        let next = self.state.clone();
        self.commit_with_new_journal(next)
    }

    /// Writes `next` as the state file, naming the journal in use and how far it is folded in,
    /// then adopts it. Without a journal in use, starts one.
    fn commit(&mut self, mut next: StateFile) -> Result<(), StoreError> {
        let Some(journal) = &self.journal else {
            return self.commit_with_new_journal(next);
        };
        next.version = STATE_VERSION;
        next.journal = Some(JournalRef {
            id: journal.id().to_vec(),
            covered: journal.end(),
        });
        next.write_atomic(&self.path).map_err(io_error)?;
        self.state = next;
        Ok(())
    }

    /// Writes `next` as the state file together with a new, empty journal. The order keeps every
    /// crash point consistent: where the state file names a journal, that journal stays in place
    /// until the new state file (naming the new journal) is on disk, and is stale from then on;
    /// where it names none, the new journal goes in place first, unnamed and so ignored.
    fn commit_with_new_journal(&mut self, mut next: StateFile) -> Result<(), StoreError> {
        let mut id = [0u8; journal::ID_LEN];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| StoreError::Unavailable("random number generator".into()))?;
        let new = Journal::create(&self.path, id, self.journal_capacity).map_err(io_error)?;
        next.version = STATE_VERSION;
        next.journal = Some(JournalRef {
            id: id.to_vec(),
            covered: journal::HEADER_LEN,
        });
        // Whatever happens now, the journal in use (if any) is no longer appended to.
        self.journal = None;
        if self.state.journal.is_some() {
            if let Err(e) = next.write_atomic(&self.path) {
                new.discard();
                return Err(io_error(e));
            }
            self.state = next;
            self.journal = Some(new.install().map_err(io_error)?);
        } else {
            let journal = new.install().map_err(io_error)?;
            next.write_atomic(&self.path).map_err(io_error)?;
            self.state = next;
            self.journal = Some(journal);
        }
        Ok(())
    }

    /// Applies `change` to a copy, persists it, then adopts it. Nothing changes on error.
    fn update<T>(
        &mut self,
        change: impl FnOnce(&mut StateFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.finish_started()?;
        let mut next = self.state.clone();
        let out = change(&mut next)?;
        self.commit(next)?;
        Ok(out)
    }

    /// Records a small change in the journal (durably), then applies it in memory. A full
    /// journal is folded into the state file together with the change.
    fn journal_change(
        &mut self,
        record: Record,
        apply: impl FnOnce(&mut StateFile),
    ) -> Result<(), StoreError> {
        self.finish_started()?;
        match &mut self.journal {
            Some(journal) if journal.has_room(&record) => {
                if let Err(e) = journal.append(&record) {
                    // Whether the record reached the disk is unknown: start afresh next time.
                    self.journal = None;
                    return Err(io_error(e));
                }
                apply(&mut self.state);
                Ok(())
            }
            _ => {
                let mut next = self.state.clone();
                apply(&mut next);
                self.commit_with_new_journal(next)
            }
        }
    }

    fn set_pin_retries(&mut self, retries: u8, consecutive_failures: u8) -> Result<(), StoreError> {
        self.journal_change(
            Record::PinRetries {
                retries,
                consecutive_failures,
            },
            |s| {
                s.key_state.pin_retries = retries;
                s.key_state.consecutive_pin_failures = consecutive_failures;
            },
        )
    }

    /// The power cycle of a process start: wrong PINs in a row no longer count
    /// (CTAP 2.1 §6.5.5.5: the three-strikes block lasts until the next power cycle).
    pub fn power_cycle(&mut self) -> Result<(), StoreError> {
        if self.state.key_state.consecutive_pin_failures == 0 {
            return Ok(());
        }
        self.set_pin_retries(self.state.key_state.pin_retries, 0)
    }

    /// Persists the state as it is (used once a new file has been put together).
    pub fn persist(&mut self) -> Result<(), StoreError> {
        self.update(|_| Ok(()))
    }

    pub fn set_attestation(&mut self, attestation: StoredAttestation) -> Result<(), StoreError> {
        self.update(|s| {
            s.attestation = Some(attestation);
            Ok(())
        })
    }

    fn find<'a>(state: &'a mut StateFile, id: &[u8]) -> Option<&'a mut StoredCred> {
        state.credentials.iter_mut().find(|c| c.id == id)
    }
}

impl Store for FileStore {
    fn load_state(&mut self) -> Result<KeyState, StoreError> {
        self.state.key_state.to_key_state()
    }

    fn save_state(&mut self, state: &KeyState) -> Result<(), StoreError> {
        let stored = StoredKeyState::from(state);
        let current = &self.state.key_state;
        if stored == *current {
            return Ok(());
        }
        let counters_only = StoredKeyState {
            pin_retries: current.pin_retries,
            consecutive_pin_failures: current.consecutive_pin_failures,
            ..stored.clone()
        } == *current;
        if counters_only {
            return self.set_pin_retries(stored.pin_retries, stored.consecutive_pin_failures);
        }
        self.update(|s| {
            s.key_state = stored;
            Ok(())
        })
    }

    fn spend_pin_retry(&mut self) -> Result<KeyState, StoreError> {
        let current = &self.state.key_state;
        let retries = current.pin_retries.saturating_sub(1);
        let failures = current.consecutive_pin_failures.saturating_add(1);
        self.set_pin_retries(retries, failures)?;
        self.state.key_state.to_key_state()
    }

    fn credentials_for_rp(
        &mut self,
        rp_id_hash: &[u8; 32],
    ) -> Result<Vec<StoredCredential>, StoreError> {
        self.state
            .credentials
            .iter()
            .filter(|c| c.rp_id_hash == rp_id_hash)
            .map(StoredCred::to_credential)
            .collect()
    }

    fn credential(&mut self, id: &[u8]) -> Result<Option<StoredCredential>, StoreError> {
        self.state
            .credentials
            .iter()
            .find(|c| c.id == id)
            .map(StoredCred::to_credential)
            .transpose()
    }

    fn discoverable_credentials(&mut self) -> Result<Vec<StoredCredential>, StoreError> {
        self.state
            .credentials
            .iter()
            .filter(|c| c.discoverable)
            .map(StoredCred::to_credential)
            .collect()
    }

    fn insert_credential(&mut self, cred: &StoredCredential) -> Result<(), StoreError> {
        let stored = StoredCred::from(cred);
        self.update(|s| {
            if s.credentials.iter().any(|c| c.id == stored.id) {
                return Err(StoreError::Conflict("credential id already stored".into()));
            }
            // A discoverable credential replaces the one for the same RP and user handle
            // (CTAP 2.1 §6.1.2 step 17).
            if stored.discoverable {
                s.credentials.retain(|c| {
                    !(c.discoverable
                        && c.rp_id_hash == stored.rp_id_hash
                        && c.user.id == stored.user.id)
                });
            }
            s.credentials.push(stored);
            Ok(())
        })
    }

    fn update_user(&mut self, id: &[u8], user: &UserEntity) -> Result<bool, StoreError> {
        if self.state.credentials.iter().all(|c| c.id != id) {
            return Ok(false);
        }
        let user = user_to_stored(user);
        self.update(|s| {
            if let Some(c) = Self::find(s, id) {
                c.user = user;
            }
            Ok(true)
        })
    }

    fn delete_credential(&mut self, id: &[u8]) -> Result<bool, StoreError> {
        if self.state.credentials.iter().all(|c| c.id != id) {
            return Ok(false);
        }
        self.finish_started()?;
        self.reserved.take_if(|r| r.id == id);
        self.update(|s| {
            s.credentials.retain(|c| c.id != id);
            Ok(true)
        })
    }

    fn next_sign_count(&mut self, id: &[u8]) -> Result<u32, StoreError> {
        // Normally done already, once the last answer left.
        self.finish_started()?;
        if let Some(reserved) = self.reserved.take_if(|r| r.id == id) {
            // Synced when it was reserved; the state in memory already holds it.
            self.to_reserve = Some(reserved.id);
            return Ok(reserved.count);
        }
        let cred = self
            .state
            .credentials
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| StoreError::Conflict("no such credential".into()))?;
        // A counter that would wrap must not be reused: refuse to sign instead.
        let count = cred
            .sign_count
            .checked_add(1)
            .ok_or_else(|| StoreError::Conflict("signature counter exhausted".into()))?;
        self.journal_change(
            Record::SignCount {
                id: id.to_vec(),
                count,
            },
            |s| set_sign_count(s, id, count),
        )?;
        self.to_reserve = Some(id.to_vec());
        Ok(count)
    }

    fn wipe(&mut self) -> Result<(), StoreError> {
        self.finish_started()?;
        self.reserved = None;
        self.to_reserve = None;
        self.update(|s| {
            s.credentials.clear();
            s.key_state = StoredKeyState::from(&KeyState::default());
            Ok(())
        })
    }
}

/// Encodes bytes as the state file does (tests look for leaked plaintext with it).
#[cfg(test)]
pub fn to_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    B64.encode(bytes)
}
