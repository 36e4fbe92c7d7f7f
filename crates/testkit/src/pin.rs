//! The platform side of PIN/UV auth protocol 2 (CTAP 2.1 §6.5.7), written from the specification
//! independently of the engine's own implementation, for tests that talk to a key with a PIN.

use aws_lc_rs::agreement::{self, ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey};
use aws_lc_rs::cipher::{
    AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::{hkdf, hmac, rand};
use keyward_ctap::cbor::{self, Value, int_map};
use sha2::{Digest, Sha256};

/// pinUvAuthToken permissions.
pub const PERMISSION_MC: i64 = 0x01;
pub const PERMISSION_GA: i64 = 0x02;

/// The secret shared with the key after getKeyAgreement.
pub struct Shared {
    hmac_key: Vec<u8>,
    aes_key: Vec<u8>,
}

fn kdf(z: &[u8], info: &[u8]) -> Vec<u8> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[0u8; 32]).extract(z);
    let mut out = vec![0u8; 32];
    let infos = [info];
    prk.expand(&infos, hkdf::HKDF_SHA256)
        .and_then(|o| o.fill(&mut out))
        .expect("hkdf");
    out
}

/// HMAC-SHA-256, the whole 32 bytes (protocol 2's `authenticate`).
pub fn authenticate(key: &[u8], msg: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg)
        .as_ref()
        .to_vec()
}

impl Shared {
    /// AES-256-CBC under a random IV, which leads the output.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let mut iv = [0u8; 16];
        rand::fill(&mut iv).expect("rng");
        let key = EncryptingKey::cbc(UnboundCipherKey::new(&AES_256, &self.aes_key).expect("key"))
            .expect("cbc");
        let mut buf = plain.to_vec();
        key.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv)))
            .expect("encrypt");
        [iv.as_slice(), &buf].concat()
    }

    pub fn decrypt(&self, data: &[u8]) -> Vec<u8> {
        let (iv, body) = data.split_at(16);
        let key = DecryptingKey::cbc(UnboundCipherKey::new(&AES_256, &self.aes_key).expect("key"))
            .expect("cbc");
        let mut buf = body.to_vec();
        let iv: [u8; 16] = iv.try_into().expect("iv");
        key.decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
            .expect("decrypt")
            .to_vec()
    }

    /// `authenticate` under the shared HMAC key.
    pub fn mac(&self, msg: &[u8]) -> Vec<u8> {
        authenticate(&self.hmac_key, msg)
    }

    /// LEFT(SHA-256(pin), 16), encrypted.
    pub fn pin_hash_enc(&self, pin: &str) -> Vec<u8> {
        self.encrypt(&Sha256::digest(pin.as_bytes())[..16])
    }
}

fn client_pin(params: Vec<(i64, Value)>) -> Vec<u8> {
    let mut out = vec![0x06];
    out.extend(cbor::encode(&int_map(params)));
    out
}

/// clientPIN getKeyAgreement (protocol 2).
pub fn key_agreement_request() -> Vec<u8> {
    client_pin(vec![(1, Value::int(2)), (2, Value::int(2))])
}

/// From a getKeyAgreement answer (`status ‖ CBOR`): our COSE key and the shared secret.
pub fn agree(response: &[u8]) -> (Value, Shared) {
    assert_eq!(response[0], 0, "getKeyAgreement status");
    let v = cbor::decode(&response[1..]).expect("cbor");
    let cose = v.map_get_int(1).expect("key");
    let x = cose.map_get_int(-2).and_then(Value::as_bytes).expect("x");
    let y = cose.map_get_int(-3).and_then(Value::as_bytes).expect("y");
    let peer = [&[4u8][..], x, y].concat();
    let rng = rand::SystemRandom::new();
    let mine = EphemeralPrivateKey::generate(&ECDH_P256, &rng).expect("key");
    let public = mine.compute_public_key().expect("public");
    let p = public.as_ref().to_vec();
    let shared =
        agreement::agree_ephemeral(mine, UnparsedPublicKey::new(&ECDH_P256, &peer), (), |z| {
            Ok(Shared {
                hmac_key: kdf(z, b"CTAP2 HMAC key"),
                aes_key: kdf(z, b"CTAP2 AES key"),
            })
        })
        .expect("ecdh");
    let ours = int_map(vec![
        (1, Value::int(2)),
        (3, Value::int(-25)),
        (-1, Value::int(1)),
        (-2, Value::bytes(p[1..33].to_vec())),
        (-3, Value::bytes(p[33..65].to_vec())),
    ]);
    (ours, shared)
}

/// getPinUvAuthTokenUsingPinWithPermissions for `permissions` on `rp_id`.
pub fn token_request(
    ours: Value,
    shared: &Shared,
    pin: &str,
    permissions: i64,
    rp_id: &str,
) -> Vec<u8> {
    client_pin(vec![
        (1, Value::int(2)),
        (2, Value::int(9)),
        (3, ours),
        (6, Value::bytes(shared.pin_hash_enc(pin))),
        (9, Value::int(permissions)),
        (10, Value::text(rp_id)),
    ])
}

/// The pinUvAuthToken from a successful token answer.
pub fn token(response: &[u8], shared: &Shared) -> Vec<u8> {
    assert_eq!(
        response[0], 0,
        "getPinUvAuthToken status 0x{:02x}",
        response[0]
    );
    let v = cbor::decode(&response[1..]).expect("cbor");
    shared.decrypt(v.map_get_int(2).and_then(Value::as_bytes).expect("token"))
}

/// changePIN from `old` to `new`.
pub fn change_pin_request(ours: Value, shared: &Shared, old: &str, new: &str) -> Vec<u8> {
    let mut padded = [0u8; 64];
    padded[..new.len()].copy_from_slice(new.as_bytes());
    let new_pin_enc = shared.encrypt(&padded);
    let old_hash_enc = shared.pin_hash_enc(old);
    let param = shared.mac(&[new_pin_enc.as_slice(), &old_hash_enc].concat());
    client_pin(vec![
        (1, Value::int(2)),
        (2, Value::int(4)),
        (3, ours),
        (4, Value::bytes(param)),
        (5, Value::bytes(new_pin_enc)),
        (6, Value::bytes(old_hash_enc)),
    ])
}
