//! A software passkey authenticator for the admin sign-in tests: it answers the server's WebAuthn
//! options the way a browser and a platform authenticator together would (clientDataJSON, an
//! attestation object with `none` attestation, ES256 assertions with a counter), so the server's
//! webauthn_rp verification runs against real signatures.
#![allow(dead_code)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_ctap::cbor::{self, Value};
use serde_json::{Value as Json, json};

pub const ORIGIN: &str = "http://localhost:8080";
pub const RP_ID: &str = "localhost";

pub fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

pub fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("base64url")
}

fn sha256(b: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

/// One discoverable credential.
pub struct SoftPasskey {
    pub credential_id: Vec<u8>,
    pub user_handle: Vec<u8>,
    key: EcdsaKeyPair,
    pub counter: u32,
    pub origin: String,
}

fn client_data(kind: &str, challenge: &str, origin: &str) -> Vec<u8> {
    format!(
        r#"{{"type":"{kind}","challenge":"{challenge}","origin":"{origin}","crossOrigin":false}}"#
    )
    .into_bytes()
}

impl SoftPasskey {
    /// Creates a credential for creation options (`{publicKey: …}`) and returns it with the
    /// RegistrationResponseJSON to send back.
    pub fn create(options: &Json, origin: &str) -> (SoftPasskey, Json) {
        let pk = &options["publicKey"];
        assert_eq!(pk["rp"]["id"], RP_ID, "options name the relying party");
        assert_eq!(
            pk["authenticatorSelection"]["residentKey"], "required",
            "admin passkeys are discoverable"
        );
        let challenge = pk["challenge"].as_str().expect("challenge");
        let user_handle = unb64(pk["user"]["id"].as_str().expect("user id"));
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
        let mut credential_id = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut credential_id).expect("rng");
        let point = key.public_key().as_ref().to_vec();
        let cose = cbor::encode(&cbor::int_map(vec![
            (1, Value::Unsigned(2)),
            (3, Value::int(-7)),
            (-1, Value::Unsigned(1)),
            (-2, Value::Bytes(point[1..33].to_vec())),
            (-3, Value::Bytes(point[33..65].to_vec())),
        ]));
        let mut auth_data = sha256(RP_ID.as_bytes());
        auth_data.push(0x45); // UP | UV | AT
        auth_data.extend_from_slice(&0u32.to_be_bytes());
        auth_data.extend_from_slice(&[0u8; 16]);
        auth_data.extend_from_slice(&(credential_id.len() as u16).to_be_bytes());
        auth_data.extend_from_slice(&credential_id);
        auth_data.extend_from_slice(&cose);
        let attestation_object = cbor::encode(&cbor::text_map(vec![
            ("fmt", Value::text("none")),
            ("attStmt", cbor::text_map(vec![])),
            ("authData", Value::Bytes(auth_data)),
        ]));
        let cdj = client_data("webauthn.create", challenge, origin);
        let response = json!({
            "id": b64(&credential_id),
            "rawId": b64(&credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64(&cdj),
                "attestationObject": b64(&attestation_object),
                "transports": ["internal"],
            },
            "clientExtensionResults": {},
        });
        (
            SoftPasskey {
                credential_id,
                user_handle,
                key,
                counter: 0,
                origin: origin.to_owned(),
            },
            response,
        )
    }

    /// Signs request options (`{publicKey: …}`) and returns the AuthenticationResponseJSON; the
    /// counter grows by one each time.
    pub fn get(&mut self, options: &Json) -> Json {
        self.counter += 1;
        self.assert_with_counter(options, self.counter)
    }

    /// An assertion with a chosen counter (to test counter enforcement).
    pub fn assert_with_counter(&self, options: &Json, counter: u32) -> Json {
        let pk = &options["publicKey"];
        let challenge = pk["challenge"].as_str().expect("challenge");
        let cdj = client_data("webauthn.get", challenge, &self.origin);
        let mut auth_data = sha256(RP_ID.as_bytes());
        auth_data.push(0x05); // UP | UV
        auth_data.extend_from_slice(&counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&sha256(&cdj));
        let signature = self
            .key
            .sign(&SystemRandom::new(), &signed)
            .expect("sign")
            .as_ref()
            .to_vec();
        json!({
            "id": b64(&self.credential_id),
            "rawId": b64(&self.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64(&cdj),
                "authenticatorData": b64(&auth_data),
                "signature": b64(&signature),
                "userHandle": b64(&self.user_handle),
            },
            "clientExtensionResults": {},
        })
    }
}
