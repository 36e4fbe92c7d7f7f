//! Credential key pairs (ES256, EdDSA), their COSE public keys, signing, and authenticator data.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use keyward_ctap::cbor::{self, Value};
use keyward_ctap::ctap2::alg;
use keyward_ctap::status::StatusCode;
use zeroize::Zeroizing;

/// Authenticator data flags (WebAuthn §6.1).
pub(crate) mod flags {
    pub const UP: u8 = 0x01;
    pub const UV: u8 = 0x04;
    pub const BE: u8 = 0x08;
    pub const BS: u8 = 0x10;
    pub const AT: u8 = 0x40;
    pub const ED: u8 = 0x80;
}

/// Whether the engine can make credentials with this COSE algorithm.
pub(crate) fn supported(algorithm: i64) -> bool {
    algorithm == alg::ES256 || algorithm == alg::EDDSA
}

/// A freshly generated credential key.
pub(crate) struct NewKey {
    pub pkcs8: Zeroizing<Vec<u8>>,
    pub public_key_cose: Vec<u8>,
    pub signing: SigningKey,
}

/// An opened private key, ready to sign. aws-lc frees (and cleanses) the key material on drop.
pub(crate) enum SigningKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl SigningKey {
    pub(crate) fn from_pkcs8(algorithm: i64, pkcs8: &[u8]) -> Result<Self, StatusCode> {
        match algorithm {
            alg::ES256 => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
                .map(Self::Es256)
                .map_err(|_| StatusCode::Other),
            alg::EDDSA => Ed25519KeyPair::from_pkcs8(pkcs8)
                .map(Self::EdDsa)
                .map_err(|_| StatusCode::Other),
            _ => Err(StatusCode::UnsupportedAlgorithm),
        }
    }

    /// ES256: DER ECDSA over SHA-256(message); EdDSA: the raw 64-byte signature.
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, StatusCode> {
        match self {
            // aws-lc-rs draws ECDSA nonces from AWS-LC's own DRBG; the rng argument is unused.
            Self::Es256(key) => key
                .sign(&SystemRandom::new(), message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| StatusCode::Other),
            Self::EdDsa(key) => Ok(key.sign(message).as_ref().to_vec()),
        }
    }

    pub(crate) fn public_key_cose(&self) -> Vec<u8> {
        match self {
            Self::Es256(key) => {
                let point = key.public_key().as_ref();
                cbor::encode(&cbor::int_map(vec![
                    (1, Value::Unsigned(2)),
                    (3, Value::int(alg::ES256)),
                    (-1, Value::Unsigned(1)),
                    (-2, Value::Bytes(point[1..33].to_vec())),
                    (-3, Value::Bytes(point[33..65].to_vec())),
                ]))
            }
            Self::EdDsa(key) => cbor::encode(&cbor::int_map(vec![
                (1, Value::Unsigned(1)),
                (3, Value::int(alg::EDDSA)),
                (-1, Value::Unsigned(6)),
                (-2, Value::Bytes(key.public_key().as_ref().to_vec())),
            ])),
        }
    }
}

/// Generates a key pair. Key generation uses AWS-LC's own DRBG (aws-lc-rs accepts no other
/// random source for it); this is the documented exception to "randomness comes from Env".
pub(crate) fn generate(algorithm: i64) -> Result<NewKey, StatusCode> {
    let rng = SystemRandom::new();
    let document = match algorithm {
        alg::ES256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng),
        alg::EDDSA => Ed25519KeyPair::generate_pkcs8(&rng),
        _ => return Err(StatusCode::UnsupportedAlgorithm),
    }
    .map_err(|_| StatusCode::Other)?;
    let pkcs8 = Zeroizing::new(document.as_ref().to_vec());
    let signing = SigningKey::from_pkcs8(algorithm, &pkcs8)?;
    Ok(NewKey {
        public_key_cose: signing.public_key_cose(),
        pkcs8,
        signing,
    })
}

/// The attested credential data of a new credential.
pub(crate) struct AttestedCredential<'a> {
    pub aaguid: &'a [u8; 16],
    pub credential_id: &'a [u8],
    pub public_key_cose: &'a [u8],
}

/// authData = rpIdHash ‖ flags ‖ signCount (BE) ‖ attestedCredentialData? ‖ extensions?
/// The AT and ED flags are set here from what is present.
pub(crate) fn auth_data(
    rp_id_hash: &[u8; 32],
    mut flag_bits: u8,
    sign_count: u32,
    attested: Option<AttestedCredential<'_>>,
    extensions: Option<&Value>,
) -> Vec<u8> {
    if attested.is_some() {
        flag_bits |= flags::AT;
    }
    if extensions.is_some() {
        flag_bits |= flags::ED;
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(rp_id_hash);
    out.push(flag_bits);
    out.extend_from_slice(&sign_count.to_be_bytes());
    if let Some(attested) = attested {
        out.extend_from_slice(attested.aaguid);
        let len = u16::try_from(attested.credential_id.len())
            .expect("invariant: credential ids are 32 bytes");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(attested.credential_id);
        out.extend_from_slice(attested.public_key_cose);
    }
    if let Some(extensions) = extensions {
        out.extend_from_slice(&cbor::encode(extensions));
    }
    out
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};

    #[test]
    fn generated_keys_sign_verifiably_and_encode_canonical_cose() {
        let es = generate(alg::ES256).expect("es256");
        assert_eq!(es.public_key_cose.len(), 77);
        assert_eq!(
            &es.public_key_cose[..10],
            &[0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20]
        );
        let sig = es.signing.sign(b"hello").expect("sign");
        let EcdsaKeyPairPublic(point) = EcdsaKeyPairPublic::of(&es.signing);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(b"hello", &sig)
            .expect("verifies");

        let ed = generate(alg::EDDSA).expect("eddsa");
        let sig = ed.signing.sign(b"hello").expect("sign");
        assert_eq!(sig.len(), 64);
        let SigningKey::EdDsa(pair) = &ed.signing else {
            panic!("eddsa")
        };
        UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref())
            .verify(b"hello", &sig)
            .expect("verifies");
        assert!(matches!(
            generate(-257),
            Err(StatusCode::UnsupportedAlgorithm)
        ));
        assert!(matches!(
            SigningKey::from_pkcs8(alg::ES256, b"junk"),
            Err(StatusCode::Other)
        ));
    }

    struct EcdsaKeyPairPublic(Vec<u8>);
    impl EcdsaKeyPairPublic {
        fn of(key: &SigningKey) -> Self {
            match key {
                SigningKey::Es256(pair) => Self(pair.public_key().as_ref().to_vec()),
                SigningKey::EdDsa(_) => panic!("not ecdsa"),
            }
        }
    }

    #[test]
    fn auth_data_layout() {
        let data = auth_data(&[9; 32], flags::UP, 5, None, None);
        assert_eq!(data.len(), 37);
        assert_eq!(data[32], flags::UP);
        assert_eq!(&data[33..], &[0, 0, 0, 5]);
        let ext = cbor::text_map(vec![("credProtect", Value::Unsigned(2))]);
        let attested = AttestedCredential {
            aaguid: &[1; 16],
            credential_id: &[2; 32],
            public_key_cose: &[3; 77],
        };
        let data = auth_data(&[9; 32], flags::UP, 0, Some(attested), Some(&ext));
        assert_eq!(data[32], flags::UP | flags::AT | flags::ED);
        assert_eq!(&data[53..55], &[0, 32]);
    }
}
