//! Data keys: the per-security-key secret that seals credential private keys and keys the PIN
//! verifier. A data key never leaves this module in the clear; callers only get sealing and
//! verifying operations.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::VaultError;

/// Length of a data key and of a key-encryption key, in bytes (AES-256).
pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// Domain-separation labels for HKDF. Changing one makes every stored blob unreadable.
const SEAL_INFO: &[u8] = b"keyward/data-key/seal/v1";
const PIN_INFO: &[u8] = b"keyward/data-key/pin-verifier/v1";
const SEAL_AAD_LABEL: &[u8] = b"keyward/seal/v1";

/// Where a sealed blob belongs. Everything here goes into the AEAD additional data, so a blob
/// copied to another row (another organisation, user, key, credential or key version) fails to
/// open (design.md, security invariant 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealAad<'a> {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub key_id: Uuid,
    /// The credential the blob belongs to (its CTAP credential id), or empty for key-wide data.
    pub credential_id: &'a [u8],
    /// The generation of the data key. KEK rotation re-wraps the data key without changing it,
    /// so this stays the same across rotations; it changes only if a key's data key is replaced.
    pub key_version: u32,
}

impl SealAad<'_> {
    /// A fixed-layout, unambiguous encoding: fixed-width fields first, the one variable-length
    /// field last and length-prefixed, so no two bindings encode to the same bytes.
    fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(SEAL_AAD_LABEL.len() + 16 * 3 + 4 + 2 + self.credential_id.len());
        out.extend_from_slice(SEAL_AAD_LABEL);
        out.extend_from_slice(self.org_id.as_bytes());
        out.extend_from_slice(self.user_id.as_bytes());
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&self.key_version.to_be_bytes());
        // Credential ids are at most a few hundred bytes (CTAP caps them well below 64 KiB).
        let len = u16::try_from(self.credential_id.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.credential_id);
        out
    }
}

/// `KeyType` for HKDF outputs of a fixed byte length.
struct Len(usize);
impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// One security key's data key, unwrapped. It holds only derived keys (the raw bytes are
/// zeroized as soon as they have been expanded) and has no `Debug` output of key material.
pub struct DataKey {
    seal: LessSafeKey,
    pin_mac: hmac::Key,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// Derives the sealing and PIN-verifier keys from the raw data key. Two independent keys
    /// from HKDF means a weakness in one use cannot leak the other.
    pub(crate) fn from_bytes(raw: &[u8]) -> Result<Self, VaultError> {
        if raw.len() != KEY_LEN {
            return Err(VaultError::Integrity);
        }
        let prk = Salt::new(HKDF_SHA256, &[]).extract(raw);
        let mut seal_key = Zeroizing::new([0u8; KEY_LEN]);
        let mut mac_key = Zeroizing::new([0u8; KEY_LEN]);
        prk.expand(&[SEAL_INFO], Len(KEY_LEN))
            .and_then(|okm| okm.fill(&mut seal_key[..]))
            .map_err(|_| VaultError::Crypto("hkdf expand"))?;
        prk.expand(&[PIN_INFO], Len(KEY_LEN))
            .and_then(|okm| okm.fill(&mut mac_key[..]))
            .map_err(|_| VaultError::Crypto("hkdf expand"))?;
        let unbound = UnboundKey::new(&AES_256_GCM, &seal_key[..])
            .map_err(|_| VaultError::Crypto("aes key"))?;
        Ok(DataKey {
            seal: LessSafeKey::new(unbound),
            pin_mac: hmac::Key::new(hmac::HMAC_SHA256, &mac_key[..]),
        })
    }

    pub(crate) fn seal_key(&self) -> &LessSafeKey {
        &self.seal
    }

    /// Seals `plaintext` for the row described by `aad`: `nonce ‖ ciphertext ‖ tag`, with a
    /// random 96-bit nonce (a key seals a handful of values, far below the random-nonce limit).
    pub fn seal(&self, aad: &SealAad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        seal_with(&self.seal, &aad.encode(), plaintext)
    }

    /// Opens a blob sealed by [`DataKey::seal`] for the same row. A failure means the blob was
    /// moved from another row or tampered with; it is logged (ids only, never contents).
    pub fn open(&self, aad: &SealAad<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        open_with(&self.seal, &aad.encode(), sealed).inspect_err(|_| {
            tracing::warn!(
                org_id = %aad.org_id,
                user_id = %aad.user_id,
                key_id = %aad.key_id,
                credential_id = %hex::encode(aad.credential_id),
                key_version = aad.key_version,
                "sealed data failed to open: it belongs to another row or was altered"
            );
        })
    }

    /// The keyed PIN verifier: HMAC-SHA256 over the CTAP PIN hash (the first 16 bytes of
    /// SHA-256(PIN)) under a key derived from this data key. Without the KEK a database dump
    /// gives no way to test PIN guesses offline.
    pub fn pin_verifier(&self, pin_hash16: &[u8; 16]) -> [u8; 32] {
        let tag = hmac::sign(&self.pin_mac, pin_hash16);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// AES-256-GCM with a random nonce, output `nonce ‖ ciphertext ‖ tag`.
pub(crate) fn seal_with(
    key: &LessSafeKey,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| VaultError::Crypto("random"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| VaultError::Crypto("seal"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Inverse of [`seal_with`]. Every failure is [`VaultError::Integrity`].
pub(crate) fn open_with(
    key: &LessSafeKey,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(VaultError::Integrity);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError::Integrity)?;
    let mut buf = Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf[..])
        .map_err(|_| VaultError::Integrity)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// Fresh random key material of [`KEY_LEN`] bytes.
pub(crate) fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(&mut k[..])
        .map_err(|_| VaultError::Crypto("random"))?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aad(cred: &[u8]) -> SealAad<'_> {
        SealAad {
            org_id: Uuid::from_u128(1),
            user_id: Uuid::from_u128(2),
            key_id: Uuid::from_u128(3),
            credential_id: cred,
            key_version: 1,
        }
    }

    #[test]
    fn seal_open_round_trip_and_row_binding() {
        let dk = DataKey::from_bytes(&[7u8; 32]).expect("key");
        let sealed = dk
            .seal(&aad(b"cred-a"), b"private key bytes")
            .expect("seal");
        assert_eq!(
            &dk.open(&aad(b"cred-a"), &sealed).expect("open")[..],
            b"private key bytes"
        );
        // Every field of the binding matters.
        assert!(matches!(
            dk.open(&aad(b"cred-b"), &sealed),
            Err(VaultError::Integrity)
        ));
        for change in 0..4 {
            let mut other = aad(b"cred-a");
            match change {
                0 => other.org_id = Uuid::from_u128(9),
                1 => other.user_id = Uuid::from_u128(9),
                2 => other.key_id = Uuid::from_u128(9),
                _ => other.key_version = 2,
            }
            assert!(
                matches!(dk.open(&other, &sealed), Err(VaultError::Integrity)),
                "field {change}"
            );
        }
    }

    #[test]
    fn open_rejects_tampering_truncation_and_other_keys() {
        let dk = DataKey::from_bytes(&[7u8; 32]).expect("key");
        let mut sealed = dk.seal(&aad(b"c"), b"secret").expect("seal");
        let other = DataKey::from_bytes(&[8u8; 32]).expect("key");
        assert!(other.open(&aad(b"c"), &sealed).is_err());
        assert!(dk.open(&aad(b"c"), &sealed[..20]).is_err());
        assert!(dk.open(&aad(b"c"), &[]).is_err());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(dk.open(&aad(b"c"), &sealed).is_err());
    }

    #[test]
    fn seal_uses_fresh_nonces() {
        let dk = DataKey::from_bytes(&[7u8; 32]).expect("key");
        let a = dk.seal(&aad(b"c"), b"same").expect("seal");
        let b = dk.seal(&aad(b"c"), b"same").expect("seal");
        assert_ne!(a, b);
    }

    #[test]
    fn pin_verifier_is_keyed_and_deterministic() {
        let dk = DataKey::from_bytes(&[7u8; 32]).expect("key");
        let other = DataKey::from_bytes(&[8u8; 32]).expect("key");
        let h = [0x11u8; 16];
        assert_eq!(dk.pin_verifier(&h), dk.pin_verifier(&h));
        assert_ne!(dk.pin_verifier(&h), other.pin_verifier(&h));
        assert_ne!(dk.pin_verifier(&h), dk.pin_verifier(&[0x12u8; 16]));
        // Not the bare hash, nor an unkeyed digest of it.
        assert_ne!(&dk.pin_verifier(&h)[..16], &h[..]);
    }

    #[test]
    fn wrong_length_key_is_rejected_and_debug_hides_key() {
        assert!(DataKey::from_bytes(&[1u8; 31]).is_err());
        let dk = DataKey::from_bytes(&[0xabu8; 32]).expect("key");
        assert_eq!(format!("{dk:?}"), "DataKey(..)");
    }
}
