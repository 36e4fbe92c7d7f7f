//! PIN/UV auth protocols 1 and 2 (CTAP 2.1 §6.5.6, §6.5.7): the authenticator's reusable
//! keyAgreement key, the shared secret derived from it, encryption and authentication.

use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::cipher::{
    AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::{digest, hkdf, hmac};
use keyward_ctap::ctap2::CoseEcdhKey;
use keyward_ctap::status::StatusCode;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::Env;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PinUvAuthProtocol {
    One,
    Two,
}

impl PinUvAuthProtocol {
    /// Unsupported protocol numbers are INVALID_PARAMETER (§6.5.5.1).
    pub(crate) fn from_number(n: u8) -> Result<Self, StatusCode> {
        match n {
            1 => Ok(Self::One),
            2 => Ok(Self::Two),
            _ => Err(StatusCode::InvalidParameter),
        }
    }

    /// Required parameter: absent is MISSING_PARAMETER.
    pub(crate) fn required(n: Option<u8>) -> Result<Self, StatusCode> {
        Self::from_number(n.ok_or(StatusCode::MissingParameter)?)
    }

    /// authenticate(key, message): v1 truncates HMAC-SHA-256 to 16 bytes, v2 keeps all 32.
    pub(crate) fn authenticate(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message);
        match self {
            Self::One => tag.as_ref()[..16].to_vec(),
            Self::Two => tag.as_ref().to_vec(),
        }
    }

    /// verify(key, message, signature) in constant time. A signature of the wrong length fails.
    pub(crate) fn verify(self, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let expected = self.authenticate(key, message);
        expected.len() == signature.len() && bool::from(expected.ct_eq(signature))
    }
}

/// The per-protocol shared secret (v1: 32 bytes; v2: HMAC key ‖ AES key, 64 bytes).
pub(crate) struct SharedSecret {
    pub(crate) protocol: PinUvAuthProtocol,
    secret: Zeroizing<Vec<u8>>,
}

impl SharedSecret {
    fn hmac_key(&self) -> &[u8] {
        &self.secret[..32]
    }

    fn aes_key(&self) -> &[u8] {
        match self.protocol {
            PinUvAuthProtocol::One => &self.secret[..32],
            PinUvAuthProtocol::Two => &self.secret[32..],
        }
    }

    /// Encrypts a whole number of AES blocks; v2 prepends a random IV taken from `env`.
    pub(crate) fn encrypt(
        &self,
        env: &mut dyn Env,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StatusCode> {
        if !plaintext.len().is_multiple_of(16) {
            return Err(StatusCode::Other);
        }
        let mut iv = [0u8; 16];
        if self.protocol == PinUvAuthProtocol::Two {
            env.fill_random(&mut iv);
        }
        let key = UnboundCipherKey::new(&AES_256, self.aes_key()).map_err(|_| StatusCode::Other)?;
        let key = EncryptingKey::cbc(key).map_err(|_| StatusCode::Other)?;
        let mut buf = plaintext.to_vec();
        key.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv)))
            .map_err(|_| StatusCode::Other)?;
        Ok(match self.protocol {
            PinUvAuthProtocol::One => buf,
            PinUvAuthProtocol::Two => [iv.as_slice(), &buf].concat(),
        })
    }

    /// Decrypts; a ciphertext that is not a whole number of blocks (after the v2 IV) is
    /// INVALID_PARAMETER.
    pub(crate) fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, StatusCode> {
        let (iv, body) = match self.protocol {
            PinUvAuthProtocol::One => ([0u8; 16], ciphertext),
            PinUvAuthProtocol::Two => {
                if ciphertext.len() < 16 {
                    return Err(StatusCode::InvalidParameter);
                }
                let (iv, body) = ciphertext.split_at(16);
                (
                    <[u8; 16]>::try_from(iv).map_err(|_| StatusCode::InvalidParameter)?,
                    body,
                )
            }
        };
        if body.is_empty() || !body.len().is_multiple_of(16) {
            return Err(StatusCode::InvalidParameter);
        }
        let key = UnboundCipherKey::new(&AES_256, self.aes_key()).map_err(|_| StatusCode::Other)?;
        let key = DecryptingKey::cbc(key).map_err(|_| StatusCode::Other)?;
        let mut buf = Zeroizing::new(body.to_vec());
        key.decrypt(
            buf.as_mut_slice(),
            DecryptionContext::Iv128(FixedLength::from(iv)),
        )
        .map_err(|_| StatusCode::Other)?;
        Ok(buf)
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.protocol.verify(self.hmac_key(), message, signature)
    }

    #[cfg(test)]
    pub(crate) fn hmac_key_for_tests(&self) -> &[u8] {
        self.hmac_key()
    }
}

/// The authenticator's keyAgreement key: reused across calls until power-up or a PIN mismatch.
pub(crate) struct KeyAgreement {
    private: PrivateKey,
    public: CoseEcdhKey,
}

impl KeyAgreement {
    /// Draws the scalar from `env` so that the engine's randomness has one source.
    pub(crate) fn generate(env: &mut dyn Env) -> Self {
        loop {
            let mut scalar = Zeroizing::new([0u8; 32]);
            env.fill_random(scalar.as_mut());
            // A random 256-bit string is outside [1, n-1] with probability ~2^-32: draw again.
            let Ok(private) = PrivateKey::from_private_key(&ECDH_P256, scalar.as_ref()) else {
                continue;
            };
            let Ok(public) = private.compute_public_key() else {
                continue;
            };
            let point = public.as_ref();
            if point.len() != 65 {
                continue;
            }
            let mut x = [0u8; 32];
            let mut y = [0u8; 32];
            x.copy_from_slice(&point[1..33]);
            y.copy_from_slice(&point[33..65]);
            return Self {
                private,
                public: CoseEcdhKey { x, y },
            };
        }
    }

    pub(crate) fn public(&self) -> &CoseEcdhKey {
        &self.public
    }

    /// ECDH with the platform's key, then the protocol's KDF. A point off the curve is
    /// INVALID_PARAMETER.
    pub(crate) fn shared_secret(
        &self,
        protocol: PinUvAuthProtocol,
        peer: &CoseEcdhKey,
    ) -> Result<SharedSecret, StatusCode> {
        let point = peer.to_sec1();
        let peer = UnparsedPublicKey::new(&ECDH_P256, point.as_slice());
        let secret = agreement::agree(&self.private, peer, StatusCode::InvalidParameter, |z| {
            Ok(kdf(protocol, z))
        })?;
        Ok(SharedSecret { protocol, secret })
    }
}

fn kdf(protocol: PinUvAuthProtocol, z: &[u8]) -> Zeroizing<Vec<u8>> {
    match protocol {
        PinUvAuthProtocol::One => {
            Zeroizing::new(digest::digest(&digest::SHA256, z).as_ref().to_vec())
        }
        PinUvAuthProtocol::Two => {
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[0u8; 32]).extract(z);
            let mut out = Zeroizing::new(vec![0u8; 64]);
            for (info, chunk) in [b"CTAP2 HMAC key".as_slice(), b"CTAP2 AES key"]
                .into_iter()
                .zip(out.chunks_mut(32))
            {
                let infos = [info];
                prk.expand(&infos, hkdf::HKDF_SHA256)
                    .and_then(|okm| okm.fill(chunk))
                    .expect("invariant: 32 bytes is a valid HKDF-SHA-256 output length");
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::ManualEnv;

    /// Plays the platform's side: its own ECDH key and the same KDF.
    pub(crate) fn platform_secret(
        authenticator: &CoseEcdhKey,
        protocol: PinUvAuthProtocol,
        env: &mut ManualEnv,
    ) -> (CoseEcdhKey, SharedSecret) {
        let platform = KeyAgreement::generate(env);
        let secret = platform
            .shared_secret(protocol, authenticator)
            .expect("valid point");
        (platform.public().clone(), secret)
    }

    #[test]
    fn both_sides_derive_the_same_secret_and_round_trip() {
        let mut env = ManualEnv::default();
        let ours = KeyAgreement::generate(&mut env);
        for protocol in [PinUvAuthProtocol::One, PinUvAuthProtocol::Two] {
            let (theirs, platform) = platform_secret(ours.public(), protocol, &mut env);
            let mine = ours.shared_secret(protocol, &theirs).expect("agree");
            assert_eq!(mine.secret.as_slice(), platform.secret.as_slice());
            let ct = platform.encrypt(&mut env, &[7u8; 32]).expect("encrypt");
            assert_eq!(
                ct.len(),
                if protocol == PinUvAuthProtocol::One {
                    32
                } else {
                    48
                }
            );
            assert_eq!(mine.decrypt(&ct).expect("decrypt").as_slice(), &[7u8; 32]);
            let tag = protocol.authenticate(platform.hmac_key(), b"msg");
            assert!(mine.verify(b"msg", &tag));
            assert!(!mine.verify(b"other", &tag));
            assert!(!mine.verify(b"msg", &tag[..tag.len() - 1]));
        }
    }

    #[test]
    fn rejects_bad_points_protocols_and_lengths() {
        let mut env = ManualEnv::default();
        let ours = KeyAgreement::generate(&mut env);
        let off_curve = CoseEcdhKey {
            x: [1; 32],
            y: [2; 32],
        };
        assert!(matches!(
            ours.shared_secret(PinUvAuthProtocol::Two, &off_curve),
            Err(StatusCode::InvalidParameter)
        ));
        assert_eq!(
            PinUvAuthProtocol::from_number(3),
            Err(StatusCode::InvalidParameter)
        );
        assert_eq!(
            PinUvAuthProtocol::required(None),
            Err(StatusCode::MissingParameter)
        );
        let (theirs, _) = platform_secret(ours.public(), PinUvAuthProtocol::Two, &mut env);
        let mine = ours
            .shared_secret(PinUvAuthProtocol::Two, &theirs)
            .expect("agree");
        assert!(matches!(
            mine.decrypt(&[0u8; 20]),
            Err(StatusCode::InvalidParameter)
        ));
        assert!(matches!(
            mine.decrypt(&[0u8; 16]),
            Err(StatusCode::InvalidParameter)
        ));
    }
}
