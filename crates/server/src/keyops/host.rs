//! What the server supplies to the engine besides storage: key protection by the vault, the
//! clock and randomness, and presence.

use std::time::Instant;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use keyward_authenticator::{Env, KeyProtection, Presence, PresenceRequest, ProtectionError};
use keyward_ctap::status::StatusCode;
use keyward_vault::{DataKey, SealAad, VaultError};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The generation of a key's data key in the seal binding. Data keys are never replaced while a
/// key exists (KEK rotation re-wraps the same data key), so it is constant for now; a future
/// re-keying would store a per-key generation and bind that instead.
pub(super) const DATA_KEY_VERSION: u32 = 1;

/// Seals under one key's data key, binding organisation, user, key, credential and key version.
pub(super) struct VaultProtection {
    pub(super) data_key: DataKey,
    pub(super) org_id: Uuid,
    pub(super) user_id: Uuid,
    pub(super) key_id: Uuid,
}

impl VaultProtection {
    fn aad<'a>(&self, credential_id: &'a [u8]) -> SealAad<'a> {
        SealAad {
            org_id: self.org_id,
            user_id: self.user_id,
            key_id: self.key_id,
            credential_id,
            key_version: DATA_KEY_VERSION,
        }
    }
}

fn protection_error(e: VaultError) -> ProtectionError {
    match e {
        VaultError::Integrity => ProtectionError::Integrity,
        other => ProtectionError::Unavailable(other.to_string()),
    }
}

impl KeyProtection for VaultProtection {
    fn seal(&self, credential_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ProtectionError> {
        self.data_key
            .seal(&self.aad(credential_id), plaintext)
            .map_err(protection_error)
    }

    fn open(
        &self,
        credential_id: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ProtectionError> {
        self.data_key
            .open(&self.aad(credential_id), sealed)
            .map_err(protection_error)
    }

    fn pin_verifier(&self, pin_hash16: &[u8; 16]) -> Result<[u8; 32], ProtectionError> {
        Ok(self.data_key.pin_verifier(pin_hash16))
    }
}

/// Monotonic milliseconds since the server's key operations started, and the system RNG.
#[derive(Clone, Copy)]
pub(super) struct ServerEnv {
    pub(super) epoch: Instant,
}

impl Env for ServerEnv {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn fill_random(&mut self, buf: &mut [u8]) {
        // The trait cannot fail; the OS RNG failing is not something a key may continue through.
        SystemRandom::new()
            .fill(buf)
            .expect("invariant: the operating system's random number generator works");
    }
}

/// Presence for server-side operations: the authorised caller's request *is* the user's action
/// (an admin's click in the panel, a provisioning job an admin started). Callers that need a
/// person's confirmation (the pairing tool) confirm before the request reaches the server.
pub(super) struct CallerPresence;

impl Presence for CallerPresence {
    fn confirm(&mut self, _request: &PresenceRequest) -> Result<(), StatusCode> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_vault::{KekSource, KeyBinding, Vault};

    fn protection(vault: &Vault, user: u128) -> VaultProtection {
        let b = KeyBinding {
            org_id: Uuid::from_u128(1),
            key_id: Uuid::from_u128(3),
        };
        let (w, v) = vault.new_data_key(&b).expect("dek");
        VaultProtection {
            data_key: vault.unwrap(&b, &w, v).expect("unwrap"),
            org_id: b.org_id,
            user_id: Uuid::from_u128(user),
            key_id: b.key_id,
        }
    }

    #[test]
    fn sealed_keys_are_bound_to_credential_and_user() {
        let vault = Vault::open(KekSource::Env {
            current: Zeroizing::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
            next: None,
        })
        .expect("vault");
        let p = protection(&vault, 2);
        let sealed = p.seal(b"cred-1", b"pkcs8").expect("seal");
        assert_eq!(&p.open(b"cred-1", &sealed).expect("open")[..], b"pkcs8");
        assert!(matches!(
            p.open(b"cred-2", &sealed),
            Err(ProtectionError::Integrity)
        ));
        let moved = VaultProtection {
            user_id: Uuid::from_u128(9),
            ..p
        };
        assert!(matches!(
            moved.open(b"cred-1", &sealed),
            Err(ProtectionError::Integrity)
        ));
    }

    #[test]
    fn env_clock_is_monotonic_and_random_fills() {
        let mut env = ServerEnv {
            epoch: Instant::now(),
        };
        let a = env.now_ms();
        assert!(env.now_ms() >= a);
        let mut buf = [0u8; 32];
        env.fill_random(&mut buf);
        assert_ne!(buf, [0u8; 32]);
    }
}
