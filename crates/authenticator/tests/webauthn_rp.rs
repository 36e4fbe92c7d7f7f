//! Relying-party check: a full WebAuthn registration and authentication ceremony, verified by an
//! independent implementation (`webauthn_rp`), with the engine as the authenticator and this test
//! as the client (it writes clientDataJSON and speaks CTAP to the engine).
//!
//! webauthn_rp 0.3 verifies only `none` and packed *self* attestation (a two-entry attStmt); it
//! refuses packed statements with an x5c chain as `PackedFormat`. So the ceremony runs with `none`
//! attestation, and a second test shows that refusal so a future version that accepts x5c is
//! noticed. The batch-certificate attestation is verified in the engine's unit tests instead
//! (signature under the x5c certificate, FIDO certificate fields with x509-parser).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_authenticator::attestation::{generate_ca, issue_batch_certificate};
use keyward_authenticator::memory::{AutoPresence, ManualEnv, MemoryStore, TestProtection};
use keyward_authenticator::{Attestation, Authenticator, Config, Context, Policy};
use keyward_ctap::cbor::{self, Value};
use webauthn_rp::request::auth::AuthenticationVerificationOptions;
use webauthn_rp::request::register::{
    PublicKeyCredentialUserEntity, RegistrationVerificationOptions, UserHandle64, Username,
};
use webauthn_rp::request::{AsciiDomain, RpId, TimedCeremony};
use webauthn_rp::response::auth::AuthenticatorAssertion;
use webauthn_rp::response::register::error::{AttestationErr, RegCeremonyErr};
use webauthn_rp::response::register::{
    AuthenticatorAttestation, ClientExtensionsOutputs, CompressedP256PubKey, CompressedPubKey,
    StaticState, UncompressedPubKey,
};
use webauthn_rp::response::{AuthTransports, AuthenticatorAttachment, CredentialId, SentChallenge};
use webauthn_rp::{
    AuthenticatedCredential, DiscoverableAuthentication64, DiscoverableCredentialRequestOptions,
    PublicKeyCredentialCreationOptions, Registration,
};

const RP: &str = "example.com";
const ORIGIN: &str = "https://example.com";

struct Key {
    auth: Authenticator,
    store: MemoryStore,
    protection: TestProtection,
    presence: AutoPresence,
    env: ManualEnv,
}

impl Key {
    fn call(&mut self, policy: Policy, command: u8, params: Value) -> Value {
        let mut request = vec![command];
        request.extend_from_slice(&cbor::encode(&params));
        let mut ctx = Context {
            store: &mut self.store,
            protection: &self.protection,
            presence: &mut self.presence,
            env: &mut self.env,
            policy,
        };
        let response = self.auth.process(&mut ctx, &request);
        assert_eq!(response[0], 0, "CTAP status");
        cbor::decode(&response[1..]).expect("response CBOR")
    }
}

fn client_data(kind: &str, challenge: SentChallenge) -> Vec<u8> {
    let challenge = URL_SAFE_NO_PAD.encode(challenge.0.to_le_bytes());
    format!(
        r#"{{"type":"{kind}","challenge":"{challenge}","origin":"{ORIGIN}","crossOrigin":false}}"#
    )
    .into_bytes()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn new_key(attestation: Attestation) -> Key {
    let mut config = Config::new([0x4B; 16]);
    config.attestation = attestation;
    let mut env = ManualEnv { now_ms: 0 };
    Key {
        auth: Authenticator::new(config, &mut env),
        store: MemoryStore::new(),
        protection: TestProtection::new(),
        presence: AutoPresence::default(),
        env,
    }
}

#[test]
fn webauthn_rp_refuses_packed_statements_with_x5c() {
    let ca = generate_ca("Example Org").expect("ca");
    let batch = issue_batch_certificate(&ca, [0x4B; 16], "Example Org").expect("batch");
    let mut key = new_key(Attestation::Packed(batch));
    let rp_id = RpId::Domain(AsciiDomain::try_from(RP.to_owned()).expect("domain"));
    let user_id = UserHandle64::new();
    let (registration, server) = register(&mut key, &rp_id, &user_id);
    let origins = [ORIGIN];
    let result = server.verify(
        &rp_id,
        &registration,
        &RegistrationVerificationOptions::<&str, &str> {
            allowed_origins: &origins,
            ..RegistrationVerificationOptions::default()
        },
    );
    assert!(matches!(
        result,
        Err(RegCeremonyErr::AttestationObject(
            webauthn_rp::response::register::error::AttestationObjectErr::Attestation(
                AttestationErr::PackedFormat
            )
        ))
    ));
}

#[test]
fn register_and_authenticate_with_webauthn_rp() {
    let mut key = new_key(Attestation::None);
    let rp_id = RpId::Domain(AsciiDomain::try_from(RP.to_owned()).expect("domain"));
    let user_id = UserHandle64::new();
    let (registration, server) = register(&mut key, &rp_id, &user_id);
    let origins = [ORIGIN];
    let registered = server
        .verify(
            &rp_id,
            &registration,
            &RegistrationVerificationOptions::<&str, &str> {
                allowed_origins: &origins,
                ..RegistrationVerificationOptions::default()
            },
        )
        .expect("webauthn_rp accepts the registration");
    assert_eq!(registered.user_id(), &user_id);
    authenticate(&mut key, &rp_id, &user_id, &registered);
}

/// makeCredential for a passkey as webauthn_rp's `first_passkey` options ask: discoverable, UV
/// required (the server's audited authorisation stands in for the user's PIN here), credProtect 3.
fn register(
    key: &mut Key,
    rp_id: &RpId,
    user_id: &UserHandle64,
) -> (Registration, webauthn_rp::RegistrationServerState<64>) {
    let user = PublicKeyCredentialUserEntity {
        name: Username::try_from("alice").expect("name"),
        id: user_id,
        display_name: None,
    };
    let (server, _client) = PublicKeyCredentialCreationOptions::first_passkey(rp_id, user)
        .start_ceremony()
        .expect("options");
    let client_data_json = client_data("webauthn.create", server.sent_challenge());
    let policy = Policy {
        registration_only: false,
        preauthorized_uv: true,
    };
    let response = key.call(
        policy,
        0x01,
        cbor::int_map(vec![
            (1, Value::Bytes(sha256(&client_data_json))),
            (2, cbor::text_map(vec![("id", Value::text(RP))])),
            (
                3,
                cbor::text_map(vec![
                    ("id", Value::Bytes(user_id.as_ref().to_vec())),
                    ("name", Value::text("alice")),
                ]),
            ),
            (
                4,
                Value::Array(vec![cbor::text_map(vec![
                    ("alg", Value::int(-7)),
                    ("type", Value::text("public-key")),
                ])]),
            ),
            (6, cbor::text_map(vec![("credProtect", Value::Unsigned(3))])),
            (7, cbor::text_map(vec![("rk", Value::Bool(true))])),
        ]),
    );
    // The WebAuthn attestation object is the CTAP response re-keyed with text keys.
    let attestation_object = cbor::encode(&cbor::text_map(vec![
        ("fmt", response.map_get_int(1).expect("fmt").clone()),
        ("attStmt", response.map_get_int(3).expect("attStmt").clone()),
        (
            "authData",
            response.map_get_int(2).expect("authData").clone(),
        ),
    ]));
    let registration = Registration::new(
        AuthenticatorAttestation::new(client_data_json, attestation_object, AuthTransports::NONE),
        AuthenticatorAttachment::CrossPlatform,
        ClientExtensionsOutputs {
            cred_props: None,
            prf: None,
        },
    );
    (registration, server)
}

/// Two discoverable authentications with a PIN token (credProtect 3 needs UV); webauthn_rp
/// checks the signature, flags, RP id hash and the increasing counter.
fn authenticate(
    key: &mut Key,
    rp_id: &RpId,
    user_id: &UserHandle64,
    registered: &webauthn_rp::RegisteredCredential<'_, 64>,
) {
    let origins = [ORIGIN];
    let id = CredentialId::<Vec<u8>>::from(registered.id());
    let static_state = registered.static_state();
    let UncompressedPubKey::P256(point) = static_state.credential_public_key else {
        panic!("ES256 key expected");
    };
    let compressed = CompressedP256PubKey::try_from((point.x(), point.y_is_odd())).expect("point");
    let mut credential = AuthenticatedCredential::new(
        (&id).into(),
        user_id,
        StaticState {
            credential_public_key: CompressedPubKey::<&[u8], &[u8], &[u8], &[u8]>::P256(compressed),
            extensions: static_state.extensions,
        },
        registered.dynamic_state(),
    )
    .expect("credential");

    for round in 0..2 {
        let (server, _client) = DiscoverableCredentialRequestOptions::passkey(rp_id)
            .start_ceremony()
            .expect("options");
        let client_data_json = client_data("webauthn.get", server.sent_challenge());
        let token = pin_token(key);
        let client_data_hash = sha256(&client_data_json);
        let param = hmac(&token, &client_data_hash);
        let response = key.call(
            Policy::default(),
            0x02,
            cbor::int_map(vec![
                (1, Value::text(RP)),
                (2, Value::Bytes(client_data_hash)),
                (6, Value::Bytes(param)),
                (7, Value::Unsigned(2)),
            ]),
        );
        let user_handle = response
            .map_get_int(4)
            .and_then(|u| u.map_get_text("id"))
            .and_then(Value::as_bytes)
            .expect("user handle");
        assert_eq!(user_handle, user_id.as_ref());
        let authentication = DiscoverableAuthentication64::new(
            CredentialId::<Vec<u8>>::from(credential.id()),
            AuthenticatorAssertion::new(
                client_data_json,
                response
                    .map_get_int(2)
                    .and_then(Value::as_bytes)
                    .expect("authData")
                    .to_vec(),
                response
                    .map_get_int(3)
                    .and_then(Value::as_bytes)
                    .expect("sig")
                    .to_vec(),
                *user_id,
            ),
            AuthenticatorAttachment::CrossPlatform,
        );
        server
            .verify(
                rp_id,
                &authentication,
                &mut credential,
                &AuthenticationVerificationOptions::<&str, &str> {
                    allowed_origins: &origins,
                    ..AuthenticationVerificationOptions::default()
                },
            )
            .expect("webauthn_rp accepts the assertion");
        assert_eq!(credential.dynamic_state().sign_count, round + 1);
    }
}

/// setPIN (first time) and getPinUvAuthTokenUsingPinWithPermissions(ga) over protocol 2, as a
/// platform would; returns the token.
fn pin_token(key: &mut Key) -> Vec<u8> {
    use aws_lc_rs::agreement::{
        ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral,
    };
    use aws_lc_rs::cipher::{
        AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
        UnboundCipherKey,
    };
    use aws_lc_rs::iv::FixedLength;
    use aws_lc_rs::rand::SystemRandom;

    let pin = b"123456";
    let exchange = |key: &mut Key| -> (Value, Vec<u8>) {
        let response = key.call(
            Policy::default(),
            0x06,
            cbor::int_map(vec![(1, Value::Unsigned(2)), (2, Value::Unsigned(2))]),
        );
        let theirs = response.map_get_int(1).expect("keyAgreement");
        let x = theirs.map_get_int(-2).and_then(Value::as_bytes).expect("x");
        let y = theirs.map_get_int(-3).and_then(Value::as_bytes).expect("y");
        let point = [&[4u8][..], x, y].concat();
        let rng = SystemRandom::new();
        let mine = EphemeralPrivateKey::generate(&ECDH_P256, &rng).expect("key");
        let public = mine.compute_public_key().expect("public");
        let shared = agree_ephemeral(mine, UnparsedPublicKey::new(&ECDH_P256, point), (), |z| {
            let prk = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, &[0; 32]).extract(z);
            let mut out = vec![0u8; 64];
            for (info, chunk) in [b"CTAP2 HMAC key".as_slice(), b"CTAP2 AES key"]
                .iter()
                .zip(out.chunks_mut(32))
            {
                prk.expand(&[info], aws_lc_rs::hkdf::HKDF_SHA256)
                    .expect("expand")
                    .fill(chunk)
                    .expect("fill");
            }
            Ok(out)
        })
        .expect("agree");
        let p = public.as_ref();
        let cose = cbor::int_map(vec![
            (1, Value::Unsigned(2)),
            (3, Value::int(-25)),
            (-1, Value::Unsigned(1)),
            (-2, Value::Bytes(p[1..33].to_vec())),
            (-3, Value::Bytes(p[33..65].to_vec())),
        ]);
        (cose, shared)
    };
    let encrypt = |shared: &[u8], plaintext: &[u8]| -> Vec<u8> {
        let iv = [9u8; 16];
        let k = EncryptingKey::cbc(UnboundCipherKey::new(&AES_256, &shared[32..]).expect("key"))
            .expect("cbc");
        let mut buf = plaintext.to_vec();
        k.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv)))
            .expect("enc");
        [iv.as_slice(), &buf].concat()
    };
    if key.store.state.pin_verifier.is_none() {
        let (cose, shared) = exchange(key);
        let mut padded = pin.to_vec();
        padded.resize(64, 0);
        let new_pin_enc = encrypt(&shared, &padded);
        let param = hmac(&shared[..32], &new_pin_enc);
        let mut request = vec![0x06];
        request.extend_from_slice(&cbor::encode(&cbor::int_map(vec![
            (1, Value::Unsigned(2)),
            (2, Value::Unsigned(3)),
            (3, cose),
            (4, Value::Bytes(param)),
            (5, Value::Bytes(new_pin_enc)),
        ])));
        let mut ctx = Context {
            store: &mut key.store,
            protection: &key.protection,
            presence: &mut key.presence,
            env: &mut key.env,
            policy: Policy::default(),
        };
        assert_eq!(key.auth.process(&mut ctx, &request), vec![0], "setPIN");
    }
    let (cose, shared) = exchange(key);
    let pin_hash_enc = encrypt(&shared, &sha256(pin)[..16]);
    let response = key.call(
        Policy::default(),
        0x06,
        cbor::int_map(vec![
            (1, Value::Unsigned(2)),
            (2, Value::Unsigned(9)),
            (3, cose),
            (6, Value::Bytes(pin_hash_enc)),
            (9, Value::Unsigned(0x02)),
            (10, Value::text(RP)),
        ]),
    );
    let enc = response
        .map_get_int(2)
        .and_then(Value::as_bytes)
        .expect("token");
    let (iv, body) = enc.split_at(16);
    let k = DecryptingKey::cbc(UnboundCipherKey::new(&AES_256, &shared[32..]).expect("key"))
        .expect("cbc");
    let mut buf = body.to_vec();
    let iv: [u8; 16] = iv.try_into().expect("iv");
    k.decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
        .expect("dec");
    buf
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&key, message).as_ref().to_vec()
}
