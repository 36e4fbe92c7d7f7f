use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use keyward_ctap::cbor::{self, Value};
use keyward_ctap::ctap2::{command, permission};
use keyward_ctap::status::StatusCode;

use crate::crypto::flags;
use crate::pin_protocol::PinUvAuthProtocol;
use crate::testing::{
    CLIENT_DATA_HASH, Harness, credential_id, get_assertion_params, make_credential_params,
    secret_auth,
};

fn register(h: &mut Harness, rp: &str, user: &[u8], rk: bool, ext: Option<Value>) -> Vec<u8> {
    let mut params = make_credential_params(rp, user, rk);
    if let Some(ext) = ext {
        params.push((6, ext));
    }
    let response = h
        .call_map(command::MAKE_CREDENTIAL, cbor::int_map(params))
        .expect("mc");
    credential_id(&response)
}

fn ga(h: &mut Harness, params: Vec<(i64, Value)>) -> Result<Value, StatusCode> {
    h.call_map(command::GET_ASSERTION, cbor::int_map(params))
}

fn public_point(h: &Harness, id: &[u8]) -> Vec<u8> {
    let cred = h
        .store
        .credentials
        .iter()
        .find(|c| c.id == id)
        .expect("stored");
    let key = cbor::decode(&cred.public_key_cose).expect("cose");
    let x = key.map_get_int(-2).and_then(Value::as_bytes).expect("x");
    let y = key.map_get_int(-3).and_then(Value::as_bytes).expect("y");
    [&[4u8][..], x, y].concat()
}

#[test]
fn asserts_with_allow_list_verifiable_signature_and_increasing_counter() {
    let mut h = Harness::new();
    let id = register(&mut h, "example.com", b"u", false, None);
    let point = public_point(&h, &id);
    let mut last = 0;
    for _ in 0..3 {
        let response = ga(&mut h, get_assertion_params("example.com", &[&id])).expect("ga");
        let data = response
            .map_get_int(2)
            .and_then(Value::as_bytes)
            .expect("authData");
        assert_eq!(data[32], flags::UP);
        let count = u32::from_be_bytes([data[33], data[34], data[35], data[36]]);
        assert!(count > last, "counter strictly increases");
        last = count;
        let sig = response
            .map_get_int(3)
            .and_then(Value::as_bytes)
            .expect("sig");
        let signed = [data, &CLIENT_DATA_HASH].concat();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
            .verify(&signed, sig)
            .expect("signature verifies");
        assert_eq!(
            response.map_get_int(4),
            None,
            "no user for a non-discoverable credential"
        );
        assert_eq!(response.map_get_int(5), None);
    }
    assert_eq!(h.store.credentials[0].sign_count, 3);
    // Another RP's id, and an unknown id, find nothing.
    assert_eq!(
        ga(&mut h, get_assertion_params("other.com", &[&id])).err(),
        Some(StatusCode::NoCredentials)
    );
    assert_eq!(
        ga(&mut h, get_assertion_params("example.com", &[&[0; 32]])).err(),
        Some(StatusCode::NoCredentials)
    );
}

#[test]
fn discoverable_credentials_and_get_next_assertion() {
    let mut h = Harness::new();
    register(&mut h, "example.com", b"alice", true, None);
    h.env.advance(10);
    register(&mut h, "example.com", b"bob", true, None);
    register(&mut h, "other.com", b"carol", true, None);
    let first = ga(&mut h, get_assertion_params("example.com", &[])).expect("ga");
    assert_eq!(first.map_get_int(5), Some(&Value::Unsigned(2)));
    let user = first.map_get_int(4).expect("user");
    assert_eq!(
        user.map_get_text("id").and_then(Value::as_bytes),
        Some(&b"bob"[..]),
        "newest first"
    );
    assert_eq!(user.map_get_text("name"), None, "no names without UV");
    let next = h
        .call(command::GET_NEXT_ASSERTION, None)
        .expect("next")
        .expect("body");
    let user = next.map_get_int(4).expect("user");
    assert_eq!(
        user.map_get_text("id").and_then(Value::as_bytes),
        Some(&b"alice"[..])
    );
    assert_eq!(
        next.map_get_int(5),
        None,
        "numberOfCredentials only in the first"
    );
    assert_eq!(
        h.call(command::GET_NEXT_ASSERTION, None),
        Err(StatusCode::NotAllowed)
    );

    // Another command in between, or 30 s, ends the sequence.
    ga(&mut h, get_assertion_params("example.com", &[])).expect("ga");
    h.call(command::GET_INFO, None).expect("info");
    assert_eq!(
        h.call(command::GET_NEXT_ASSERTION, None),
        Err(StatusCode::NotAllowed)
    );
    ga(&mut h, get_assertion_params("example.com", &[])).expect("ga");
    h.env.advance(30_001);
    assert_eq!(
        h.call(command::GET_NEXT_ASSERTION, None),
        Err(StatusCode::NotAllowed)
    );
}

#[test]
fn silent_probe_has_no_up_and_no_presence() {
    let mut h = Harness::new();
    let id = register(&mut h, "example.com", b"u", false, None);
    let before = h.presence.requests.len();
    let mut params = get_assertion_params("example.com", &[&id]);
    params.push((5, cbor::text_map(vec![("up", Value::Bool(false))])));
    let response = ga(&mut h, params).expect("ga");
    let data = response
        .map_get_int(2)
        .and_then(Value::as_bytes)
        .expect("authData");
    assert_eq!(data[32] & flags::UP, 0);
    assert_eq!(h.presence.requests.len(), before);
}

#[test]
fn registration_only_refuses_assertions_including_silent_probes() {
    let mut h = Harness::new();
    let id = register(&mut h, "example.com", b"u", false, None);
    h.policy.registration_only = true;
    let mut params = get_assertion_params("example.com", &[&id]);
    params.push((5, cbor::text_map(vec![("up", Value::Bool(false))])));
    assert_eq!(ga(&mut h, params).err(), Some(StatusCode::OperationDenied));
    assert_eq!(
        h.call(command::GET_NEXT_ASSERTION, None),
        Err(StatusCode::OperationDenied)
    );
    assert_eq!(
        h.raw(&[command::GET_ASSERTION, 0xff]),
        vec![StatusCode::OperationDenied.as_u8()]
    );
    assert_eq!(h.store.credentials[0].sign_count, 0, "nothing was signed");
}

#[test]
fn cred_protect_levels_are_enforced() {
    let mut h = Harness::new();
    let level = |n: u64| Some(cbor::text_map(vec![("credProtect", Value::Unsigned(n))]));
    let id2 = register(&mut h, "example.com", b"two", true, level(2));
    let id3 = register(&mut h, "example.com", b"three", true, level(3));
    // Without UV: allowList-less finds neither; with an allowList level 2 is found, 3 is not.
    assert_eq!(
        ga(&mut h, get_assertion_params("example.com", &[])).err(),
        Some(StatusCode::NoCredentials)
    );
    ga(&mut h, get_assertion_params("example.com", &[&id2])).expect("level 2 with allowList");
    assert_eq!(
        ga(&mut h, get_assertion_params("example.com", &[&id3])).err(),
        Some(StatusCode::NoCredentials)
    );

    h.set_pin("1234", 2).expect("setPIN");
    let token = h
        .token(
            "1234",
            2,
            Some(permission::GET_ASSERTION),
            Some("example.com"),
        )
        .expect("token");
    let mut params = get_assertion_params("example.com", &[]);
    params.push((
        6,
        Value::Bytes(PinUvAuthProtocol::Two.authenticate(&token, &CLIENT_DATA_HASH)),
    ));
    params.push((7, Value::Unsigned(2)));
    let response = ga(&mut h, params).expect("with UV all are visible");
    assert_eq!(response.map_get_int(5), Some(&Value::Unsigned(2)));
    let data = response
        .map_get_int(2)
        .and_then(Value::as_bytes)
        .expect("authData");
    assert_eq!(data[32], flags::UP | flags::UV);
    let user = response.map_get_int(4).expect("user");
    assert!(user.map_get_text("name").is_some(), "names after UV");
}

#[test]
fn bad_inputs_and_options() {
    let mut h = Harness::new();
    assert_eq!(
        ga(&mut h, vec![(2, Value::Bytes(vec![0; 32]))]).err(),
        Some(StatusCode::MissingParameter)
    );
    assert_eq!(
        ga(&mut h, vec![(1, Value::text("example.com"))]).err(),
        Some(StatusCode::MissingParameter)
    );
    assert_eq!(
        ga(
            &mut h,
            vec![(1, Value::Bytes(vec![1])), (2, Value::Bytes(vec![0; 32]))]
        )
        .err(),
        Some(StatusCode::CborUnexpectedType)
    );
    let mut rk = get_assertion_params("example.com", &[]);
    rk.push((5, cbor::text_map(vec![("rk", Value::Bool(true))])));
    assert_eq!(ga(&mut h, rk).err(), Some(StatusCode::UnsupportedOption));
    let mut uv = get_assertion_params("example.com", &[]);
    uv.push((5, cbor::text_map(vec![("uv", Value::Bool(true))])));
    assert_eq!(ga(&mut h, uv).err(), Some(StatusCode::InvalidOption));
    let mut bad_opt = get_assertion_params("example.com", &[]);
    bad_opt.push((5, cbor::text_map(vec![("up", Value::Unsigned(1))])));
    assert_eq!(
        ga(&mut h, bad_opt).err(),
        Some(StatusCode::CborUnexpectedType)
    );
}

#[test]
fn always_uv_requires_a_token() {
    let mut h = Harness::new();
    let id = register(&mut h, "example.com", b"u", false, None);
    h.store.state.always_uv = true;
    assert_eq!(
        ga(&mut h, get_assertion_params("example.com", &[&id])).err(),
        Some(StatusCode::OperationDenied)
    );
    h.set_pin("1234", 2).expect("setPIN");
    assert_eq!(
        ga(&mut h, get_assertion_params("example.com", &[&id])).err(),
        Some(StatusCode::PuatRequired)
    );
}

#[test]
fn hmac_secret_and_cred_blob() {
    let mut h = Harness::new();
    let id = register(
        &mut h,
        "example.com",
        b"u",
        false,
        Some(cbor::text_map(vec![
            ("hmac-secret", Value::Bool(true)),
            ("credBlob", Value::Bytes(b"blob".to_vec())),
        ])),
    );
    for protocol in [1u8, 2] {
        let mut outputs = Vec::new();
        for salt in [[1u8; 32], [2u8; 32], [1u8; 32]] {
            let (key, secret) = h.shared_secret(protocol);
            let salt_enc = secret.encrypt(&mut h.env, &salt).expect("enc");
            let salt_auth = secret_auth(&secret, &salt_enc);
            let mut params = get_assertion_params("example.com", &[&id]);
            params.push((
                4,
                cbor::text_map(vec![
                    (
                        "hmac-secret",
                        cbor::int_map(vec![
                            (1, key),
                            (2, Value::Bytes(salt_enc)),
                            (3, Value::Bytes(salt_auth)),
                            (4, Value::Unsigned(protocol.into())),
                        ]),
                    ),
                    ("credBlob", Value::Bool(true)),
                ]),
            ));
            let response = ga(&mut h, params).expect("ga");
            let data = response
                .map_get_int(2)
                .and_then(Value::as_bytes)
                .expect("authData");
            let ext = cbor::decode(&data[37..]).expect("extensions");
            assert_eq!(
                ext.map_get_text("credBlob").and_then(Value::as_bytes),
                Some(&b"blob"[..])
            );
            let enc = ext
                .map_get_text("hmac-secret")
                .and_then(Value::as_bytes)
                .expect("output");
            outputs.push(secret.decrypt(enc).expect("dec").to_vec());
        }
        assert_eq!(outputs[0].len(), 32);
        assert_eq!(outputs[0], outputs[2], "same salt, same secret");
        assert_ne!(outputs[0], outputs[1]);
    }
    // A wrong saltAuth is refused.
    let (key, secret) = h.shared_secret(2);
    let salt_enc = secret.encrypt(&mut h.env, &[1u8; 32]).expect("enc");
    let mut params = get_assertion_params("example.com", &[&id]);
    params.push((
        4,
        cbor::text_map(vec![(
            "hmac-secret",
            cbor::int_map(vec![
                (1, key),
                (2, Value::Bytes(salt_enc)),
                (3, Value::Bytes(vec![0; 32])),
                (4, Value::Unsigned(2)),
            ]),
        )]),
    ));
    assert_eq!(ga(&mut h, params).err(), Some(StatusCode::PinAuthInvalid));
}

#[test]
fn a_tampered_sealed_key_fails_closed_and_store_failure_refuses() {
    let mut h = Harness::new();
    let id = register(&mut h, "example.com", b"u", false, None);
    // A fresh power cycle empties the key cache, so the sealed key must be opened again.
    h.auth.power_cycle(&mut h.env);
    let last = h.store.credentials[0].sealed_private_key.len() - 1;
    h.store.credentials[0].sealed_private_key[last] ^= 1;
    assert_eq!(
        ga(&mut h, get_assertion_params("example.com", &[&id])).err(),
        Some(StatusCode::Other)
    );
    h.store.fail = true;
    assert_eq!(
        ga(&mut h, get_assertion_params("example.com", &[&id])).err(),
        Some(StatusCode::Other)
    );
}

#[test]
fn eddsa_credentials_sign_raw_ed25519_signatures() {
    use aws_lc_rs::signature::ED25519;
    let mut h = Harness::new();
    let mut params = make_credential_params("example.com", b"u", false);
    params[3].1 = Value::Array(vec![cbor::text_map(vec![
        ("alg", Value::int(-8)),
        ("type", Value::text("public-key")),
    ])]);
    let response = h
        .call_map(command::MAKE_CREDENTIAL, cbor::int_map(params))
        .expect("mc");
    let id = credential_id(&response);
    let cose = cbor::decode(&h.store.credentials[0].public_key_cose).expect("cose");
    assert_eq!(cose.map_get_int(1), Some(&Value::Unsigned(1)), "OKP");
    assert_eq!(cose.map_get_int(-1), Some(&Value::Unsigned(6)), "Ed25519");
    let public = cose
        .map_get_int(-2)
        .and_then(Value::as_bytes)
        .expect("x")
        .to_vec();
    let response = ga(&mut h, get_assertion_params("example.com", &[&id])).expect("ga");
    let data = response
        .map_get_int(2)
        .and_then(Value::as_bytes)
        .expect("authData");
    let sig = response
        .map_get_int(3)
        .and_then(Value::as_bytes)
        .expect("sig");
    assert_eq!(sig.len(), 64);
    UnparsedPublicKey::new(&ED25519, &public)
        .verify(&[data, &CLIENT_DATA_HASH].concat(), sig)
        .expect("Ed25519 signature verifies");
}

#[test]
fn a_client_data_hash_that_is_not_32_bytes_is_invalid_length_and_changes_nothing() {
    let mut h = Harness::new();
    let id = register(&mut h, "example.com", b"u", false, None);
    for len in [0, 31, 33] {
        let mut params = get_assertion_params("example.com", &[&id]);
        params.retain(|(k, _)| *k != 2);
        params.push((2, Value::Bytes(vec![0x11; len])));
        assert_eq!(
            ga(&mut h, params),
            Err(StatusCode::InvalidLength),
            "{len}-byte clientDataHash"
        );
    }
    let cred = h
        .store
        .credentials
        .iter()
        .find(|c| c.id == id)
        .expect("stored");
    assert_eq!(cred.sign_count, 0, "no counter spent on a refused request");
}
