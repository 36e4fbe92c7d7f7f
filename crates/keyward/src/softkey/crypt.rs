//! The softkey's file key and what it protects: credential private keys, hmac-secret randoms and
//! the attestation keys (AES-256-GCM), and the PIN verifier (HMAC-SHA-256).
//!
//! The 32-byte file key comes either from a passphrase (`KEYWARD_SOFTKEY_PASSPHRASE`, stretched
//! with PBKDF2-HMAC-SHA-256 and a random salt kept in the state file) or from a generated key
//! file beside the state (mode 0600). Separate subkeys for encryption and for the PIN verifier
//! are derived from it with HKDF, so neither use can be turned against the other.

use std::num::NonZeroU32;

use anyhow::{Context as _, bail};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{hkdf, hmac, pbkdf2};
use keyward_authenticator::{KeyProtection, ProtectionError};
use zeroize::Zeroizing;

/// The AEAD additional data prefix: a sealed blob opens only in a softkey, only for the
/// credential (or purpose) it was sealed for.
pub const AAD_PREFIX: &[u8] = b"keyward-softkey";
/// PBKDF2 iterations for a new state file (OWASP's 2023 figure for PBKDF2-HMAC-SHA-256). Stored
/// in the file, so it can be raised later without breaking existing keys.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Refuse absurdly low counts from a tampered file, which would make the passphrase cheap to
/// guess offline.
const MIN_PBKDF2_ITERATIONS: u32 = 100_000;

/// The root secret of one state file. Never printed.
pub struct FileKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(..)")
    }
}

impl FileKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Stretches a passphrase with PBKDF2-HMAC-SHA-256.
    pub fn from_passphrase(
        passphrase: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> anyhow::Result<Self> {
        if iterations < MIN_PBKDF2_ITERATIONS {
            bail!("the state file asks for only {iterations} PBKDF2 iterations; refusing");
        }
        let iterations = NonZeroU32::new(iterations).context("zero PBKDF2 iterations")?;
        let mut key = Zeroizing::new([0u8; 32]);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            salt,
            passphrase,
            key.as_mut(),
        );
        Ok(Self(key))
    }

    /// A fresh random key.
    pub fn generate() -> anyhow::Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(key.as_mut())
            .map_err(|_| anyhow::anyhow!("system random number generator unavailable"))?;
        Ok(Self(key))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// HKDF-SHA-256 output length marker.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn derive(file_key: &FileKey, label: &[u8]) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, AAD_PREFIX).extract(file_key.as_bytes());
    let info = [label];
    let okm = prk
        .expand(&info, Len32)
        .map_err(|_| anyhow::anyhow!("HKDF expand failed"))?;
    let mut out = Zeroizing::new([0u8; 32]);
    okm.fill(out.as_mut())
        .map_err(|_| anyhow::anyhow!("HKDF fill failed"))?;
    Ok(out)
}

/// The softkey's [`KeyProtection`]: AES-256-GCM under a subkey of the file key, additional data
/// `"keyward-softkey" ‖ credential id`; the PIN verifier is HMAC-SHA-256 under another subkey.
pub struct SoftProtection {
    aead: LessSafeKey,
    pin_mac: hmac::Key,
    rng: SystemRandom,
}

impl std::fmt::Debug for SoftProtection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SoftProtection(..)")
    }
}

impl SoftProtection {
    pub fn new(file_key: &FileKey) -> anyhow::Result<Self> {
        let enc = derive(file_key, b"aes-256-gcm v1")?;
        let mac = derive(file_key, b"pin-verifier hmac-sha-256 v1")?;
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, enc.as_ref()).map_err(|_| anyhow::anyhow!("AES key"))?,
        );
        Ok(Self {
            aead,
            pin_mac: hmac::Key::new(hmac::HMAC_SHA256, mac.as_ref()),
            rng: SystemRandom::new(),
        })
    }

    fn aad(binding: &[u8]) -> Vec<u8> {
        [AAD_PREFIX, binding].concat()
    }

    /// Seals `plaintext` bound to `binding` (a credential id, or a purpose label for the
    /// attestation keys): `nonce ‖ ciphertext ‖ tag`.
    pub fn seal_bound(&self, binding: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ProtectionError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| ProtectionError::Unavailable("random number generator".into()))?;
        let mut buffer = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(binding)),
                &mut buffer,
            )
            .map_err(|_| ProtectionError::Unavailable("AES-GCM seal".into()))?;
        let mut out = nonce.to_vec();
        out.append(&mut buffer);
        Ok(out)
    }

    /// Opens what [`SoftProtection::seal_bound`] produced for the same binding.
    pub fn open_bound(
        &self,
        binding: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ProtectionError> {
        if sealed.len() < NONCE_LEN {
            return Err(ProtectionError::Integrity);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| ProtectionError::Integrity)?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let plaintext_len = self
            .aead
            .open_in_place(nonce, Aad::from(Self::aad(binding)), buffer.as_mut())
            .map_err(|_| ProtectionError::Integrity)?
            .len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }
}

impl KeyProtection for SoftProtection {
    fn seal(&self, credential_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ProtectionError> {
        self.seal_bound(credential_id, plaintext)
    }

    fn open(
        &self,
        credential_id: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ProtectionError> {
        self.open_bound(credential_id, sealed)
    }

    fn pin_verifier(&self, pin_hash16: &[u8; 16]) -> Result<[u8; 32], ProtectionError> {
        let tag = hmac::sign(&self.pin_mac, pin_hash16);
        <[u8; 32]>::try_from(tag.as_ref())
            .map_err(|_| ProtectionError::Unavailable("HMAC length".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protection(byte: u8) -> SoftProtection {
        SoftProtection::new(&FileKey::from_bytes([byte; 32])).expect("protection")
    }

    #[test]
    fn sealed_keys_open_only_for_their_credential_and_key() {
        let p = protection(1);
        let sealed = p.seal(b"cred-a", b"secret key").expect("seal");
        assert!(
            !sealed.windows(10).any(|w| w == b"secret key"),
            "plaintext must not appear"
        );
        assert_eq!(
            p.open(b"cred-a", &sealed).expect("open").as_slice(),
            b"secret key"
        );
        assert!(matches!(
            p.open(b"cred-b", &sealed),
            Err(ProtectionError::Integrity)
        ));
        assert!(matches!(
            protection(2).open(b"cred-a", &sealed),
            Err(ProtectionError::Integrity)
        ));
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN] ^= 1;
        assert!(matches!(
            p.open(b"cred-a", &tampered),
            Err(ProtectionError::Integrity)
        ));
        assert!(matches!(
            p.open(b"cred-a", &sealed[..5]),
            Err(ProtectionError::Integrity)
        ));
    }

    #[test]
    fn two_seals_of_the_same_plaintext_differ() {
        let p = protection(1);
        assert_ne!(
            p.seal(b"id", b"x").expect("seal"),
            p.seal(b"id", b"x").expect("seal")
        );
    }

    #[test]
    fn pin_verifier_is_keyed() {
        let hash = [7u8; 16];
        let a = protection(1).pin_verifier(&hash).expect("verifier");
        assert_eq!(a, protection(1).pin_verifier(&hash).expect("verifier"));
        assert_ne!(a, protection(2).pin_verifier(&hash).expect("verifier"));
        assert_ne!(a, protection(1).pin_verifier(&[8u8; 16]).expect("verifier"));
    }

    #[test]
    fn passphrase_derivation_depends_on_salt_and_refuses_weak_counts() {
        let a = FileKey::from_passphrase(b"pw", b"salt-1", MIN_PBKDF2_ITERATIONS).expect("derive");
        let b = FileKey::from_passphrase(b"pw", b"salt-2", MIN_PBKDF2_ITERATIONS).expect("derive");
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert!(FileKey::from_passphrase(b"pw", b"salt-1", 1000).is_err());
        assert_eq!(format!("{a:?}"), "FileKey(..)");
    }
}
