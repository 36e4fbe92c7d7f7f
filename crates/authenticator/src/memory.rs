//! In-memory implementations of the engine's traits: a [`MemoryStore`], a [`TestProtection`]
//! (AES-256-GCM under a random in-memory key), an [`AutoPresence`], a [`SystemEnv`] for binaries
//! and a [`ManualEnv`] whose clock tests move by hand. They serve tests, benchmarks and tools;
//! production hosts bring their own durable `Store` and vault-backed `KeyProtection`.

use std::time::Instant;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use keyward_ctap::status::StatusCode;
use zeroize::Zeroizing;

use crate::{
    Env, KeyProtection, KeyState, Presence, PresenceRequest, ProtectionError, Store, StoreError,
    StoredCredential, UserEntity,
};

/// A `Store` held in memory. `fail` makes every call fail, to prove that the engine fails closed.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub state: KeyState,
    pub credentials: Vec<StoredCredential>,
    pub fail: bool,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.fail {
            Err(StoreError::Unavailable("memory store set to fail".into()))
        } else {
            Ok(())
        }
    }
}

impl Store for MemoryStore {
    fn load_state(&mut self) -> Result<KeyState, StoreError> {
        self.check()?;
        Ok(self.state.clone())
    }

    fn save_state(&mut self, state: &KeyState) -> Result<(), StoreError> {
        self.check()?;
        self.state = state.clone();
        Ok(())
    }

    fn spend_pin_retry(&mut self) -> Result<KeyState, StoreError> {
        self.check()?;
        self.state.pin_retries = self.state.pin_retries.saturating_sub(1);
        self.state.consecutive_pin_failures = self.state.consecutive_pin_failures.saturating_add(1);
        Ok(self.state.clone())
    }

    fn credentials_for_rp(
        &mut self,
        rp_id_hash: &[u8; 32],
    ) -> Result<Vec<StoredCredential>, StoreError> {
        self.check()?;
        Ok(self
            .credentials
            .iter()
            .filter(|c| &c.rp_id_hash == rp_id_hash)
            .cloned()
            .collect())
    }

    fn credential(&mut self, id: &[u8]) -> Result<Option<StoredCredential>, StoreError> {
        self.check()?;
        Ok(self.credentials.iter().find(|c| c.id == id).cloned())
    }

    fn discoverable_credentials(&mut self) -> Result<Vec<StoredCredential>, StoreError> {
        self.check()?;
        Ok(self
            .credentials
            .iter()
            .filter(|c| c.discoverable)
            .cloned()
            .collect())
    }

    fn insert_credential(&mut self, cred: &StoredCredential) -> Result<(), StoreError> {
        self.check()?;
        if cred.discoverable {
            // A discoverable credential replaces the one for the same RP and user handle.
            self.credentials.retain(|c| {
                !(c.discoverable && c.rp_id_hash == cred.rp_id_hash && c.user.id == cred.user.id)
            });
        }
        if self.credentials.iter().any(|c| c.id == cred.id) {
            return Err(StoreError::Conflict("credential id exists".into()));
        }
        self.credentials.push(cred.clone());
        Ok(())
    }

    fn update_user(&mut self, id: &[u8], user: &UserEntity) -> Result<bool, StoreError> {
        self.check()?;
        match self.credentials.iter_mut().find(|c| c.id == id) {
            Some(c) => {
                c.user = user.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn delete_credential(&mut self, id: &[u8]) -> Result<bool, StoreError> {
        self.check()?;
        let before = self.credentials.len();
        self.credentials.retain(|c| c.id != id);
        Ok(self.credentials.len() != before)
    }

    fn next_sign_count(&mut self, id: &[u8]) -> Result<u32, StoreError> {
        self.check()?;
        let cred = self
            .credentials
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| StoreError::Conflict("no such credential".into()))?;
        cred.sign_count = cred
            .sign_count
            .checked_add(1)
            .ok_or_else(|| StoreError::Conflict("sign counter exhausted".into()))?;
        Ok(cred.sign_count)
    }

    fn wipe(&mut self) -> Result<(), StoreError> {
        self.check()?;
        self.credentials.clear();
        self.state = KeyState::default();
        Ok(())
    }
}

/// AES-256-GCM sealing under a random key that lives only in this process, and an HMAC PIN
/// verifier under a second random key. Sealed blobs are `nonce ‖ ciphertext ‖ tag`, bound to the
/// credential id through the additional data.
pub struct TestProtection {
    aead: LessSafeKey,
    verifier_key: hmac::Key,
}

impl TestProtection {
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        let mut key = Zeroizing::new([0u8; 32]);
        let mut mac = Zeroizing::new([0u8; 32]);
        // A failing system RNG leaves nothing sensible to do in a test helper.
        rng.fill(key.as_mut())
            .expect("invariant: system RNG available");
        rng.fill(mac.as_mut())
            .expect("invariant: system RNG available");
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_ref())
            .expect("invariant: 32-byte key fits AES-256-GCM");
        Self {
            aead: LessSafeKey::new(unbound),
            verifier_key: hmac::Key::new(hmac::HMAC_SHA256, mac.as_ref()),
        }
    }

    fn aad(credential_id: &[u8]) -> Vec<u8> {
        let mut aad = b"keyward-test-seal\0".to_vec();
        aad.extend_from_slice(credential_id);
        aad
    }
}

impl Default for TestProtection {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TestProtection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestProtection { .. }")
    }
}

impl KeyProtection for TestProtection {
    fn seal(&self, credential_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ProtectionError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| ProtectionError::Unavailable("random source".into()))?;
        let mut buf = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(credential_id)),
                &mut buf,
            )
            .map_err(|_| ProtectionError::Unavailable("seal".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    fn open(
        &self,
        credential_id: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ProtectionError> {
        if sealed.len() < NONCE_LEN {
            return Err(ProtectionError::Integrity);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| ProtectionError::Integrity)?;
        let mut buf = Zeroizing::new(body.to_vec());
        let len = self
            .aead
            .open_in_place(
                nonce,
                Aad::from(Self::aad(credential_id)),
                buf.as_mut_slice(),
            )
            .map_err(|_| ProtectionError::Integrity)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    fn pin_verifier(&self, pin_hash16: &[u8; 16]) -> Result<[u8; 32], ProtectionError> {
        let tag = hmac::sign(&self.verifier_key, pin_hash16);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }
}

/// Presence that is always confirmed; counts the confirmations so tests can assert them.
#[derive(Debug, Default)]
pub struct AutoPresence {
    pub confirmations: usize,
    pub requests: Vec<PresenceRequest>,
}

impl Presence for AutoPresence {
    fn confirm(&mut self, request: &PresenceRequest) -> Result<(), StatusCode> {
        self.confirmations += 1;
        self.requests.push(request.clone());
        Ok(())
    }
}

/// Presence that is always refused with the given status (e.g. `OperationDenied`).
#[derive(Debug)]
pub struct DenyPresence(pub StatusCode);

impl Presence for DenyPresence {
    fn confirm(&mut self, _request: &PresenceRequest) -> Result<(), StatusCode> {
        Err(self.0)
    }
}

/// The real monotonic clock and the system's CSPRNG, for binaries.
#[derive(Debug)]
pub struct SystemEnv {
    start: Instant,
    rng: SystemRandom,
}

impl SystemEnv {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            rng: SystemRandom::new(),
        }
    }
}

impl Default for SystemEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Env for SystemEnv {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn fill_random(&mut self, buf: &mut [u8]) {
        // Without randomness no key or token may be made; the trait has no error path, so stop.
        self.rng.fill(buf).expect("invariant: system RNG available");
    }
}

/// The system CSPRNG with a clock that only moves when a test advances it.
#[derive(Debug, Default)]
pub struct ManualEnv {
    pub now_ms: u64,
}

impl ManualEnv {
    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }
}

impl Env for ManualEnv {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn fill_random(&mut self, buf: &mut [u8]) {
        SystemRandom::new()
            .fill(buf)
            .expect("invariant: system RNG available");
    }
}
