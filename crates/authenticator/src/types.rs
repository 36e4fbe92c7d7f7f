//! The contract between the engine and the code that hosts it: configuration, policy, the
//! `Store` / `KeyProtection` / `Presence` / `Env` traits and the persistent records they carry.
//!
//! The softkey and the server implement these traits; the engine only ever sees them, so the same
//! CTAP logic runs against a state file, a database transaction or the in-memory store of the tests.

use keyward_ctap::status::StatusCode;
use zeroize::Zeroizing;

/// The default number of PIN retries of a fresh key (CTAP 2.1 §6.5.2.1).
pub const MAX_PIN_RETRIES: u8 = 8;
/// The default minimum PIN length in Unicode code points.
pub const DEFAULT_MIN_PIN_LENGTH: u8 = 4;

/// Static configuration of one security key: what getInfo advertises and how credentials are made.
#[derive(Clone)]
pub struct Config {
    /// The authenticator's AAGUID, written into attested credential data and the batch certificate.
    pub aaguid: [u8; 16],
    /// Which attestation statement makeCredential returns.
    pub attestation: Attestation,
    /// The BE flag for new credentials. Fixed per credential at creation.
    pub backup_eligible: bool,
    /// The BS flag for new credentials. Fixed per credential at creation.
    pub backup_state: bool,
    /// maxCredBlobLength advertised and enforced; the spec requires at least 32.
    pub max_cred_blob_len: usize,
    /// firmwareVersion in getInfo.
    pub firmware_version: u32,
    /// remainingDiscoverableCredentials = this - the number of discoverable credentials stored.
    pub max_discoverable: usize,
}

impl Config {
    /// A configuration with `none` attestation and the defaults the design asks for
    /// (BE=0, BS=0, 32-byte credBlob, room for 100 discoverable credentials).
    pub fn new(aaguid: [u8; 16]) -> Self {
        Self {
            aaguid,
            attestation: Attestation::None,
            backup_eligible: false,
            backup_state: false,
            max_cred_blob_len: 32,
            firmware_version: 1,
            max_discoverable: 100,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("aaguid", &self.aaguid)
            .field("attestation", &self.attestation)
            .field("backup_eligible", &self.backup_eligible)
            .field("backup_state", &self.backup_state)
            .field("max_cred_blob_len", &self.max_cred_blob_len)
            .field("firmware_version", &self.firmware_version)
            .field("max_discoverable", &self.max_discoverable)
            .finish()
    }
}

/// The attestation statement format of new credentials.
#[derive(Clone)]
pub enum Attestation {
    /// `fmt: "none"`, empty attStmt, AAGUID still set.
    None,
    /// `fmt: "packed"` with a batch certificate chain (basic attestation).
    Packed(AttestationKey),
}

impl std::fmt::Debug for Attestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attestation::None => f.write_str("None"),
            Attestation::Packed(key) => f.debug_tuple("Packed").field(key).finish(),
        }
    }
}

/// The batch attestation key and its certificate chain.
#[derive(Clone)]
pub struct AttestationKey {
    /// DER certificates, the batch certificate first (x5c order).
    pub cert_chain_der: Vec<Vec<u8>>,
    /// The batch private key (P-256) as PKCS#8 DER.
    pub pkcs8_der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for AttestationKey {
    // The private key never appears in Debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestationKey")
            .field("certificates", &self.cert_chain_der.len())
            .finish_non_exhaustive()
    }
}

/// Per-call policy decided by the caller (the server), never by the remote side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Delegated session: only getInfo, selection, clientPIN token requests (subcommands
    /// 1, 2, 5, 6, 7, 9) and makeCredential are allowed; everything else is refused with
    /// CTAP2_ERR_OPERATION_DENIED.
    pub registration_only: bool,
    /// Server-side automated provisioning: the server has authorised user verification
    /// explicitly and audits it, so makeCredential may set UV without a pinUvAuthParam.
    pub preauthorized_uv: bool,
}

/// Time and randomness, passed in so that the engine stays pure and testable.
pub trait Env {
    /// Milliseconds on a monotonic clock (only differences are used).
    fn now_ms(&self) -> u64;
    /// Fills `buf` with cryptographically secure random bytes.
    fn fill_random(&mut self, buf: &mut [u8]);
}

/// What the user is asked to confirm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceKind {
    MakeCredential,
    GetAssertion,
    Reset,
    Selection,
    /// The legacy "touch to select" of a zero-length pinUvAuthParam: the platform asks which
    /// key to use; nothing is created or signed.
    PinUvAuthProbe,
    /// Reserved: credentialManagement and authenticatorConfig are authorised by a PIN token and
    /// do not ask for presence today.
    CredentialManagement,
    /// Reserved, as `CredentialManagement`.
    Config,
}

/// A request for user presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceRequest {
    /// The relying party concerned, when there is one.
    pub rp_id: Option<String>,
    pub kind: PresenceKind,
}

/// Test of user presence (a click, a touch, an admin's action).
pub trait Presence {
    /// `Ok(())` = the user is present. `Err(OperationDenied | UserActionTimeout | KeepaliveCancel)`
    /// is returned to the host as is.
    fn confirm(&mut self, request: &PresenceRequest) -> Result<(), StatusCode>;
}

/// Errors of a [`KeyProtection`] implementation.
#[derive(Debug, thiserror::Error)]
pub enum ProtectionError {
    #[error("key protection unavailable: {0}")]
    Unavailable(String),
    #[error("sealed data failed to open")]
    Integrity,
}

/// Sealing of private key material and the keyed PIN verifier.
pub trait KeyProtection {
    /// Seals `plaintext` for the credential `credential_id`. The implementation adds its own
    /// binding (organisation, key, version) to the AEAD additional data.
    fn seal(&self, credential_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ProtectionError>;
    /// Opens what [`KeyProtection::seal`] produced for the same credential id.
    fn open(
        &self,
        credential_id: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ProtectionError>;
    /// A keyed verifier (HMAC under a secret) of LEFT(SHA-256(PIN), 16), so that a database dump
    /// alone cannot be used to brute-force the PIN.
    fn pin_verifier(&self, pin_hash16: &[u8; 16]) -> Result<[u8; 32], ProtectionError>;
}

/// Errors of a [`Store`] implementation. The engine answers CTAP2_ERR_OTHER for all of them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("conflict: {0}")]
    Conflict(String),
}

/// Persistent state of one security key. Every write must be durable when the call returns.
pub trait Store {
    fn load_state(&mut self) -> Result<KeyState, StoreError>;
    /// Must be durable when it returns.
    fn save_state(&mut self, state: &KeyState) -> Result<(), StoreError>;
    /// Durably decrements `pin_retries` (not below 0) AND increments `consecutive_pin_failures`,
    /// returning the new state. The engine calls it BEFORE comparing a PIN and restores the
    /// counters with `save_state` when the PIN matched.
    fn spend_pin_retry(&mut self) -> Result<KeyState, StoreError>;
    fn credentials_for_rp(
        &mut self,
        rp_id_hash: &[u8; 32],
    ) -> Result<Vec<StoredCredential>, StoreError>;
    fn credential(&mut self, id: &[u8]) -> Result<Option<StoredCredential>, StoreError>;
    /// All discoverable credentials, for credentialManagement.
    fn discoverable_credentials(&mut self) -> Result<Vec<StoredCredential>, StoreError>;
    /// Durable.
    fn insert_credential(&mut self, cred: &StoredCredential) -> Result<(), StoreError>;
    /// Replaces the user entity of a credential; `false` when there is no such credential.
    fn update_user(&mut self, id: &[u8], user: &UserEntity) -> Result<bool, StoreError>;
    /// `false` when there is no such credential.
    fn delete_credential(&mut self, id: &[u8]) -> Result<bool, StoreError>;
    /// Durably increments the credential's counter and returns the NEW value (never repeats).
    /// Called before a signature is released.
    fn next_sign_count(&mut self, id: &[u8]) -> Result<u32, StoreError>;
    /// authenticatorReset: deletes all credentials and resets the PIN state to a fresh key's.
    fn wipe(&mut self) -> Result<(), StoreError>;
}

/// The persistent PIN and configuration state of a key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyState {
    /// Keyed verifier of LEFT(SHA-256(PIN), 16); `None` = no PIN set.
    pub pin_verifier: Option<[u8; 32]>,
    /// The PIN's length in Unicode code points, checked against minPINLength (forcePINChange).
    pub pin_code_points: u8,
    pub pin_retries: u8,
    /// Wrong PINs in a row since the last power cycle or correct PIN; 3 blocks until power cycle.
    pub consecutive_pin_failures: u8,
    pub min_pin_length: u8,
    pub min_pin_length_rp_ids: Vec<String>,
    pub force_pin_change: bool,
    pub always_uv: bool,
}

impl Default for KeyState {
    fn default() -> Self {
        Self {
            pin_verifier: None,
            pin_code_points: 0,
            pin_retries: MAX_PIN_RETRIES,
            consecutive_pin_failures: 0,
            min_pin_length: DEFAULT_MIN_PIN_LENGTH,
            min_pin_length_rp_ids: Vec::new(),
            force_pin_change: false,
            always_uv: false,
        }
    }
}

impl std::fmt::Debug for KeyState {
    // The PIN verifier is written as "set"/"unset" only: it is an offline-guessable secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyState")
            .field("pin_set", &self.pin_verifier.is_some())
            .field("pin_code_points", &self.pin_code_points)
            .field("pin_retries", &self.pin_retries)
            .field("consecutive_pin_failures", &self.consecutive_pin_failures)
            .field("min_pin_length", &self.min_pin_length)
            .field("min_pin_length_rp_ids", &self.min_pin_length_rp_ids)
            .field("force_pin_change", &self.force_pin_change)
            .field("always_uv", &self.always_uv)
            .finish()
    }
}

/// A WebAuthn user entity as stored with a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntity {
    /// The user handle (at most 64 bytes).
    pub id: Vec<u8>,
    pub name: Option<String>,
    pub display_name: Option<String>,
}

/// One credential (discoverable or not) with its sealed private key.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCredential {
    /// The credential id: 32 random bytes.
    pub id: Vec<u8>,
    pub rp_id: String,
    pub rp_id_hash: [u8; 32],
    pub rp_name: Option<String>,
    pub user: UserEntity,
    /// COSE algorithm: -7 (ES256) or -8 (EdDSA).
    pub alg: i64,
    /// The canonical COSE_Key of the public key.
    pub public_key_cose: Vec<u8>,
    /// `KeyProtection::seal(id, private key)`: the key as PKCS#8 DER (ES256 and EdDSA alike).
    pub sealed_private_key: Vec<u8>,
    /// hmac-secret: sealed CredRandomWithUV ‖ CredRandomWithoutUV (64 bytes).
    pub sealed_cred_random: Option<Vec<u8>>,
    pub discoverable: bool,
    /// credProtect level 1..=3.
    pub cred_protect: u8,
    pub cred_blob: Option<Vec<u8>>,
    pub sign_count: u32,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub created_at_ms: u64,
}

impl std::fmt::Debug for StoredCredential {
    // Sealed blobs are not secret on their own, but they are noise in logs; keep Debug small.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredential")
            .field("id", &self.id)
            .field("rp_id", &self.rp_id)
            .field("user", &self.user)
            .field("alg", &self.alg)
            .field("discoverable", &self.discoverable)
            .field("cred_protect", &self.cred_protect)
            .field("sign_count", &self.sign_count)
            .field("backup_eligible", &self.backup_eligible)
            .field("backup_state", &self.backup_state)
            .finish_non_exhaustive()
    }
}

/// Everything the engine reaches for one call.
pub struct Context<'a> {
    pub store: &'a mut dyn Store,
    pub protection: &'a dyn KeyProtection,
    pub presence: &'a mut dyn Presence,
    pub env: &'a mut dyn Env,
    pub policy: Policy,
}

/// Errors of the engine's non-CTAP operations (attestation CA, key generation).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    #[error("cryptographic operation failed")]
    Crypto,
}
