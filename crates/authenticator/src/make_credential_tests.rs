use keyward_ctap::cbor::{self, Value};
use keyward_ctap::ctap2::{command, permission};
use keyward_ctap::status::StatusCode;

use crate::attestation::{generate_ca, issue_batch_certificate};
use crate::crypto::flags;
use crate::testing::{CLIENT_DATA_HASH, Harness, credential_id, make_credential_params};
use crate::{Attestation, Config, PresenceKind};

fn mc(h: &mut Harness, params: Vec<(i64, Value)>) -> Result<Value, StatusCode> {
    h.call_map(command::MAKE_CREDENTIAL, cbor::int_map(params))
}

fn auth_data(response: &Value) -> Vec<u8> {
    response
        .map_get_int(2)
        .and_then(Value::as_bytes)
        .expect("authData")
        .to_vec()
}

#[test]
fn makes_a_non_discoverable_credential_with_none_attestation() {
    let mut h = Harness::new();
    let response = mc(
        &mut h,
        make_credential_params("example.com", b"user-1", false),
    )
    .expect("mc");
    assert_eq!(
        response.map_get_int(1).and_then(Value::as_text),
        Some("none")
    );
    assert_eq!(response.map_get_int(3), Some(&Value::Map(vec![])));
    let data = auth_data(&response);
    assert_eq!(&data[..32], &crate::crypto::sha256(b"example.com"));
    assert_eq!(
        data[32],
        flags::UP | flags::AT,
        "UP only, no UV, BE/BS off by default"
    );
    assert_eq!(&data[37..53], &[0x4B; 16], "AAGUID");
    let id = credential_id(&response);
    assert_eq!(id.len(), 32);
    let stored = &h.store.credentials[0];
    assert_eq!(stored.id, id);
    assert!(!stored.discoverable);
    assert_eq!(stored.alg, -7);
    assert_ne!(stored.sealed_private_key, Vec::<u8>::new());
    assert_eq!(h.presence.requests.len(), 1);
    assert_eq!(h.presence.requests[0].kind, PresenceKind::MakeCredential);
}

#[test]
fn chooses_the_first_supported_algorithm_and_rejects_unsupported_lists() {
    let mut h = Harness::new();
    let mut params = make_credential_params("example.com", b"u", false);
    params[3].1 = Value::Array(vec![
        cbor::text_map(vec![
            ("alg", Value::int(-257)),
            ("type", Value::text("public-key")),
        ]),
        cbor::text_map(vec![
            ("alg", Value::int(-8)),
            ("type", Value::text("public-key")),
        ]),
        cbor::text_map(vec![
            ("alg", Value::int(-7)),
            ("type", Value::text("public-key")),
        ]),
    ]);
    mc(&mut h, params.clone()).expect("mc");
    assert_eq!(h.store.credentials[0].alg, -8);
    params[3].1 = Value::Array(vec![cbor::text_map(vec![
        ("alg", Value::int(-257)),
        ("type", Value::text("public-key")),
    ])]);
    assert_eq!(
        mc(&mut h, params).err(),
        Some(StatusCode::UnsupportedAlgorithm)
    );
}

#[test]
fn bad_inputs_get_the_spec_errors() {
    let mut h = Harness::new();
    let base = make_credential_params("example.com", b"u", false);
    let without = |key: i64| {
        base.iter()
            .filter(|(k, _)| *k != key)
            .cloned()
            .collect::<Vec<_>>()
    };
    for key in [1, 2, 3, 4] {
        assert_eq!(
            mc(&mut h, without(key)).err(),
            Some(StatusCode::MissingParameter),
            "key {key}"
        );
    }
    let mut wrong = base.clone();
    wrong[0].1 = Value::text("not bytes");
    assert_eq!(
        mc(&mut h, wrong).err(),
        Some(StatusCode::CborUnexpectedType)
    );
    let mut up_false = base.clone();
    up_false[4].1 = cbor::text_map(vec![("up", Value::Bool(false))]);
    assert_eq!(mc(&mut h, up_false).err(), Some(StatusCode::InvalidOption));
    let mut uv = base.clone();
    uv[4].1 = cbor::text_map(vec![("uv", Value::Bool(true))]);
    assert_eq!(mc(&mut h, uv).err(), Some(StatusCode::InvalidOption));
    let mut long_user = base.clone();
    long_user[2].1 = cbor::text_map(vec![("id", Value::Bytes(vec![1; 65]))]);
    assert_eq!(mc(&mut h, long_user).err(), Some(StatusCode::InvalidLength));
    let mut ep = base.clone();
    ep.push((10, Value::Unsigned(1)));
    assert_eq!(mc(&mut h, ep).err(), Some(StatusCode::InvalidParameter));
    let mut protocol_missing = base.clone();
    protocol_missing.push((8, Value::Bytes(vec![1; 32])));
    assert_eq!(
        mc(&mut h, protocol_missing).err(),
        Some(StatusCode::MissingParameter)
    );
    // Not a map at all; invalid CBOR.
    assert_eq!(
        h.call(command::MAKE_CREDENTIAL, Some(Value::Unsigned(1))),
        Err(StatusCode::CborUnexpectedType)
    );
    assert_eq!(
        h.raw(&[command::MAKE_CREDENTIAL, 0xa1]),
        vec![StatusCode::InvalidCbor.as_u8()]
    );
    assert!(h.store.credentials.is_empty());
}

#[test]
fn pin_rules_uv_flag_and_token_binding() {
    let mut h = Harness::new();
    h.set_pin("1234", 2).expect("setPIN");
    // makeCredUvNotRqd: a non-discoverable credential needs no UV; a discoverable one does.
    mc(&mut h, make_credential_params("example.com", b"u", false)).expect("no UV needed");
    assert_eq!(
        mc(&mut h, make_credential_params("example.com", b"u", true)).err(),
        Some(StatusCode::PuatRequired)
    );

    let token = h
        .token(
            "1234",
            2,
            Some(permission::MAKE_CREDENTIAL),
            Some("example.com"),
        )
        .expect("token");
    let param = crate::pin_protocol::PinUvAuthProtocol::Two.authenticate(&token, &CLIENT_DATA_HASH);
    let mut params = make_credential_params("other.com", b"u", true);
    params.push((8, Value::Bytes(param.clone())));
    params.push((9, Value::Unsigned(2)));
    assert_eq!(
        mc(&mut h, params).err(),
        Some(StatusCode::PinAuthInvalid),
        "token bound to example.com"
    );

    let mut params = make_credential_params("example.com", b"u", true);
    params.push((8, Value::Bytes(param.clone())));
    params.push((9, Value::Unsigned(1)));
    assert_eq!(
        mc(&mut h, params.clone()).err(),
        Some(StatusCode::PinAuthInvalid),
        "wrong protocol"
    );
    params[6].1 = Value::Unsigned(2);
    let response = mc(&mut h, params.clone()).expect("mc with token");
    assert_eq!(auth_data(&response)[32], flags::UP | flags::UV | flags::AT);
    // The token's mc permission is spent by that registration.
    assert_eq!(mc(&mut h, params).err(), Some(StatusCode::PinAuthInvalid));
}

#[test]
fn zero_length_pin_uv_auth_param_is_a_touch_probe() {
    let mut h = Harness::new();
    let mut params = make_credential_params("example.com", b"u", false);
    params.push((8, Value::Bytes(vec![])));
    assert_eq!(
        mc(&mut h, params.clone()).err(),
        Some(StatusCode::PinNotSet)
    );
    assert_eq!(h.presence.requests.len(), 1);
    assert_eq!(h.presence.requests[0].kind, PresenceKind::PinUvAuthProbe);
    assert!(h.store.credentials.is_empty());
    h.set_pin("1234", 2).expect("setPIN");
    assert_eq!(mc(&mut h, params).err(), Some(StatusCode::PinInvalid));
}

#[test]
fn preauthorized_uv_sets_uv_without_a_pin_and_presence_refusal_stops_it() {
    let mut h = Harness::new();
    h.set_pin("1234", 2).expect("setPIN");
    h.policy.preauthorized_uv = true;
    let response = mc(
        &mut h,
        make_credential_params("login.microsoft.com", b"u", true),
    )
    .expect("mc");
    assert_eq!(auth_data(&response)[32] & flags::UV, flags::UV);
    h.presence.refuse = Some(StatusCode::OperationDenied);
    assert_eq!(
        mc(
            &mut h,
            make_credential_params("login.microsoft.com", b"v", true)
        )
        .err(),
        Some(StatusCode::OperationDenied)
    );
    assert_eq!(
        h.store.credentials.len(),
        1,
        "nothing stored without presence"
    );
}

#[test]
fn exclude_list_and_cred_protect_three() {
    let mut h = Harness::new();
    let mut params = make_credential_params("example.com", b"u", false);
    params.push((6, cbor::text_map(vec![("credProtect", Value::Unsigned(3))])));
    let response = mc(&mut h, params).expect("mc");
    let id = credential_id(&response);
    let exclude = Value::Array(vec![cbor::text_map(vec![
        ("id", Value::Bytes(id.clone())),
        ("type", Value::text("public-key")),
    ])]);
    // Without UV a credProtect=3 credential is invisible, so it does not exclude.
    let mut params = make_credential_params("example.com", b"u", false);
    params.push((5, exclude.clone()));
    mc(&mut h, params).expect("not excluded without UV");

    // A level-1 credential excludes, after presence.
    let first = mc(&mut h, make_credential_params("example.com", b"w", false)).expect("mc");
    let mut params = make_credential_params("example.com", b"w", false);
    params.push((
        5,
        Value::Array(vec![cbor::text_map(vec![
            ("id", Value::Bytes(credential_id(&first))),
            ("type", Value::text("public-key")),
        ])]),
    ));
    assert_eq!(
        mc(&mut h, params).err(),
        Some(StatusCode::CredentialExcluded)
    );
}

#[test]
fn extensions_outputs_and_storage() {
    let mut h = Harness::new();
    h.store.state.min_pin_length_rp_ids = vec!["example.com".into()];
    let mut params = make_credential_params("example.com", b"u", true);
    params.push((
        6,
        cbor::text_map(vec![
            ("credProtect", Value::Unsigned(2)),
            ("hmac-secret", Value::Bool(true)),
            ("credBlob", Value::Bytes(vec![7; 32])),
            ("minPinLength", Value::Bool(true)),
        ]),
    ));
    let response = mc(&mut h, params).expect("mc");
    let data = auth_data(&response);
    assert_eq!(data[32] & flags::ED, flags::ED);
    let ext_start = 55 + 32 + 77;
    let ext = cbor::decode(&data[ext_start..]).expect("extensions map");
    assert_eq!(ext.map_get_text("credProtect"), Some(&Value::Unsigned(2)));
    assert_eq!(ext.map_get_text("hmac-secret"), Some(&Value::Bool(true)));
    assert_eq!(ext.map_get_text("credBlob"), Some(&Value::Bool(true)));
    assert_eq!(ext.map_get_text("minPinLength"), Some(&Value::Unsigned(4)));
    let stored = &h.store.credentials[0];
    assert_eq!(stored.cred_protect, 2);
    assert_eq!(stored.cred_blob, Some(vec![7; 32]));
    assert!(stored.sealed_cred_random.is_some());

    let mut params = make_credential_params("example.com", b"v", false);
    params.push((
        6,
        cbor::text_map(vec![
            ("credBlob", Value::Bytes(vec![7; 33])),
            ("credProtect", Value::Unsigned(4)),
        ]),
    ));
    assert_eq!(mc(&mut h, params).err(), Some(StatusCode::InvalidParameter));
    let mut params = make_credential_params("example.com", b"v", false);
    params.push((
        6,
        cbor::text_map(vec![("credBlob", Value::Bytes(vec![7; 33]))]),
    ));
    let response = mc(&mut h, params).expect("mc");
    let data = auth_data(&response);
    let ext = cbor::decode(&data[55 + 32 + 77..]).expect("extensions");
    assert_eq!(
        ext.map_get_text("credBlob"),
        Some(&Value::Bool(false)),
        "too long: not stored"
    );
}

#[test]
fn packed_attestation_verifies_against_the_batch_certificate() {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
    use x509_parser::prelude::*;
    let ca = generate_ca("Example Org").expect("ca");
    let batch = issue_batch_certificate(&ca, [0x4B; 16], "Example Org").expect("batch");
    let mut config = Config::new([0x4B; 16]);
    config.attestation = Attestation::Packed(batch.clone());
    config.backup_eligible = true;
    let mut h = Harness::with_config(config);
    let response = mc(&mut h, make_credential_params("example.com", b"u", false)).expect("mc");
    assert_eq!(
        response.map_get_int(1).and_then(Value::as_text),
        Some("packed")
    );
    let stmt = response.map_get_int(3).expect("attStmt");
    assert_eq!(stmt.map_get_text("alg"), Some(&Value::int(-7)));
    let sig = stmt
        .map_get_text("sig")
        .and_then(Value::as_bytes)
        .expect("sig");
    let x5c = stmt
        .map_get_text("x5c")
        .and_then(Value::as_array)
        .expect("x5c");
    let cert_der = x5c[0].as_bytes().expect("cert");
    let (_, cert) = X509Certificate::from_der(cert_der).expect("x509");
    let data = auth_data(&response);
    assert_eq!(data[32], flags::UP | flags::AT | flags::BE);
    let signed = [data.as_slice(), &CLIENT_DATA_HASH].concat();
    UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(&signed, sig)
    .expect("attestation signature verifies");
}

#[test]
fn store_failure_fails_closed_and_full_store_refuses_discoverables() {
    let mut h = Harness::new();
    h.store.fail = true;
    assert_eq!(
        mc(&mut h, make_credential_params("example.com", b"u", false)).err(),
        Some(StatusCode::Other)
    );
    let mut config = Config::new([1; 16]);
    config.max_discoverable = 1;
    let mut h = Harness::with_config(config);
    mc(&mut h, make_credential_params("example.com", b"u", true)).expect("first");
    // Same RP and user handle replaces, so it fits.
    mc(&mut h, make_credential_params("example.com", b"u", true)).expect("replace");
    assert_eq!(h.store.credentials.len(), 1);
    assert_eq!(
        mc(&mut h, make_credential_params("example.com", b"v", true)).err(),
        Some(StatusCode::KeyStoreFull)
    );
}

#[test]
fn a_client_data_hash_that_is_not_32_bytes_is_invalid_length_and_stores_nothing() {
    let mut h = Harness::new();
    for len in [0, 31, 33] {
        let mut params = make_credential_params("example.com", b"user-1", true);
        params.retain(|(k, _)| *k != 1);
        params.push((1, Value::Bytes(vec![0x11; len])));
        assert_eq!(
            mc(&mut h, params),
            Err(StatusCode::InvalidLength),
            "{len}-byte clientDataHash"
        );
    }
    assert!(h.store.credentials.is_empty());
    assert!(
        h.presence.requests.is_empty(),
        "refused before asking for presence"
    );
}
