//! getInfo, reset, selection, authenticatorConfig, token lifetime and dispatch.

use keyward_ctap::cbor::{self, Value};
use keyward_ctap::ctap2::{command, permission};
use keyward_ctap::status::StatusCode;

use crate::pin_protocol::PinUvAuthProtocol;
use crate::testing::{CLIENT_DATA_HASH, Harness, make_credential_params};

fn config_call(
    h: &mut Harness,
    token: Option<&[u8]>,
    sub: u8,
    params: Option<Value>,
) -> Result<Option<Value>, StatusCode> {
    let mut request = vec![(1, Value::Unsigned(sub.into()))];
    if let Some(p) = &params {
        request.push((2, p.clone()));
    }
    if let Some(token) = token {
        let mut message = vec![0xFF; 32];
        message.extend_from_slice(&[command::CONFIG, sub]);
        if let Some(p) = &params {
            message.extend_from_slice(&cbor::encode(p));
        }
        request.push((3, Value::Unsigned(2)));
        request.push((
            4,
            Value::Bytes(PinUvAuthProtocol::Two.authenticate(token, &message)),
        ));
    }
    h.call(command::CONFIG, Some(cbor::int_map(request)))
}

#[test]
fn get_info_advertises_what_is_implemented() {
    let mut h = Harness::new();
    let info = h
        .call(command::GET_INFO, None)
        .expect("info")
        .expect("body");
    let texts = |key: i64| -> Vec<String> {
        info.map_get_int(key)
            .and_then(Value::as_array)
            .expect("array")
            .iter()
            .map(|v| v.as_text().expect("text").to_owned())
            .collect()
    };
    assert_eq!(texts(1), ["FIDO_2_0", "FIDO_2_1"]);
    assert_eq!(
        texts(2),
        ["credProtect", "hmac-secret", "credBlob", "minPinLength"]
    );
    assert_eq!(texts(9), ["usb"]);
    assert_eq!(
        info.map_get_int(3).and_then(Value::as_bytes),
        Some(&[0x4B; 16][..])
    );
    let options = info.map_get_int(4).expect("options");
    for (name, expected) in [
        ("rk", true),
        ("up", true),
        ("plat", false),
        ("clientPin", false),
        ("pinUvAuthToken", true),
        ("credMgmt", true),
        ("authnrCfg", true),
        ("setMinPINLength", true),
        ("makeCredUvNotRqd", true),
        ("alwaysUv", false),
    ] {
        assert_eq!(
            options.map_get_text(name),
            Some(&Value::Bool(expected)),
            "{name}"
        );
    }
    assert_eq!(options.map_get_text("uv"), None, "no built-in UV");
    assert_eq!(
        options.map_get_text("largeBlobs"),
        None,
        "largeBlobs not implemented"
    );
    assert_eq!(info.map_get_int(5), Some(&Value::Unsigned(7609)));
    assert_eq!(
        info.map_get_int(6),
        Some(&Value::Array(vec![Value::Unsigned(2), Value::Unsigned(1)]))
    );
    let algs = info
        .map_get_int(10)
        .and_then(Value::as_array)
        .expect("algorithms");
    assert_eq!(algs.len(), 2);
    assert_eq!(algs[0].map_get_text("alg"), Some(&Value::int(-7)));
    assert_eq!(algs[1].map_get_text("alg"), Some(&Value::int(-8)));
    assert_eq!(info.map_get_int(0x0D), Some(&Value::Unsigned(4)));
    assert_eq!(info.map_get_int(0x0F), Some(&Value::Unsigned(32)));
    assert_eq!(info.map_get_int(0x14), Some(&Value::Unsigned(100)));

    h.set_pin("1234", 2).expect("setPIN");
    h.call_map(
        command::MAKE_CREDENTIAL,
        cbor::int_map(make_credential_params("x.example", b"u", false)),
    )
    .expect("non-discoverable needs no UV");
    let info = h
        .call(command::GET_INFO, None)
        .expect("info")
        .expect("body");
    assert_eq!(
        info.map_get_int(4)
            .and_then(|o| o.map_get_text("clientPin")),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        info.map_get_int(0x14),
        Some(&Value::Unsigned(100)),
        "non-discoverables do not count"
    );
}

#[test]
fn reset_only_just_after_power_up_and_with_presence() {
    let mut h = Harness::new();
    h.set_pin("1234", 2).expect("setPIN");
    h.call_map(
        command::MAKE_CREDENTIAL,
        cbor::int_map(make_credential_params("x.example", b"u", false)),
    )
    .expect("mc");
    h.presence.refuse = Some(StatusCode::UserActionTimeout);
    assert_eq!(
        h.call(command::RESET, None),
        Err(StatusCode::UserActionTimeout)
    );
    assert_eq!(h.store.credentials.len(), 1);
    h.presence.refuse = None;
    h.env.advance(10_001);
    assert_eq!(h.call(command::RESET, None), Err(StatusCode::NotAllowed));
    h.auth.power_cycle(&mut h.env);
    h.policy.registration_only = true;
    assert_eq!(
        h.call(command::RESET, None),
        Err(StatusCode::OperationDenied)
    );
    h.policy.registration_only = false;
    h.call(command::RESET, None).expect("reset");
    assert!(h.store.credentials.is_empty());
    assert!(h.store.state.pin_verifier.is_none());
}

#[test]
fn selection_waits_for_presence() {
    let mut h = Harness::new();
    assert_eq!(h.call(command::SELECTION, None), Ok(None));
    h.presence.refuse = Some(StatusCode::KeepaliveCancel);
    assert_eq!(
        h.call(command::SELECTION, None),
        Err(StatusCode::KeepaliveCancel)
    );
}

#[test]
fn config_set_min_pin_length_and_always_uv() {
    let mut h = Harness::new();
    // No PIN, no alwaysUv: config runs without authentication.
    config_call(&mut h, None, 2, None).expect("toggle alwaysUv");
    assert!(h.store.state.always_uv);
    assert_eq!(
        config_call(&mut h, None, 2, None),
        Err(StatusCode::PuatRequired)
    );
    h.store.state.always_uv = false;

    h.set_pin("1234", 2).expect("setPIN");
    let token = h
        .token("1234", 2, Some(permission::AUTHENTICATOR_CONFIG), None)
        .expect("token");
    assert_eq!(
        config_call(&mut h, None, 3, None),
        Err(StatusCode::PuatRequired)
    );
    let mut bad = token.clone();
    bad[0] ^= 1;
    assert_eq!(
        config_call(&mut h, Some(&bad), 2, None),
        Err(StatusCode::PinAuthInvalid)
    );
    let params = cbor::int_map(vec![
        (1, Value::Unsigned(6)),
        (2, Value::Array(vec![Value::text("example.com")])),
    ]);
    config_call(&mut h, Some(&token), 3, Some(params)).expect("setMinPINLength");
    assert_eq!(h.store.state.min_pin_length, 6);
    assert_eq!(
        h.store.state.min_pin_length_rp_ids,
        vec!["example.com".to_owned()]
    );
    assert!(
        h.store.state.force_pin_change,
        "the 4-digit PIN is now too short"
    );
    // Tokens are refused until the PIN is changed, and the minimum cannot shrink.
    assert_eq!(
        h.token("1234", 2, Some(permission::AUTHENTICATOR_CONFIG), None),
        Err(StatusCode::PinPolicyViolation)
    );
    h.store.state.force_pin_change = false;
    let token = h
        .token("1234", 2, Some(permission::AUTHENTICATOR_CONFIG), None)
        .expect("token");
    let shrink = cbor::int_map(vec![(1, Value::Unsigned(4))]);
    assert_eq!(
        config_call(&mut h, Some(&token), 3, Some(shrink)),
        Err(StatusCode::PinPolicyViolation)
    );
    let force = cbor::int_map(vec![(3, Value::Bool(true))]);
    config_call(&mut h, Some(&token), 3, Some(force)).expect("forceChangePin");
    assert!(h.store.state.force_pin_change);
    assert_eq!(
        config_call(&mut h, Some(&token), 1, None),
        Err(StatusCode::PinAuthInvalid),
        "token revoked"
    );

    h.policy.registration_only = true;
    assert_eq!(
        config_call(&mut h, None, 2, None),
        Err(StatusCode::OperationDenied)
    );
}

#[test]
fn tokens_expire_when_unused() {
    let mut h = Harness::new();
    h.set_pin("1234", 2).expect("setPIN");
    let token = h
        .token(
            "1234",
            2,
            Some(permission::MAKE_CREDENTIAL),
            Some("x.example"),
        )
        .expect("token");
    h.env.advance(30_001);
    let mut params = make_credential_params("x.example", b"u", true);
    params.push((
        8,
        Value::Bytes(PinUvAuthProtocol::Two.authenticate(&token, &CLIENT_DATA_HASH)),
    ));
    params.push((9, Value::Unsigned(2)));
    assert_eq!(
        h.call_map(command::MAKE_CREDENTIAL, cbor::int_map(params))
            .err(),
        Some(StatusCode::PinAuthInvalid)
    );
}

#[test]
fn dispatch_rejects_unknown_and_empty_requests() {
    let mut h = Harness::new();
    assert_eq!(h.raw(&[]), vec![StatusCode::InvalidLength.as_u8()]);
    assert_eq!(
        h.raw(&[0x0C]),
        vec![StatusCode::InvalidCommand.as_u8()],
        "largeBlobs not implemented"
    );
    assert_eq!(h.raw(&[0x41]), vec![StatusCode::InvalidCommand.as_u8()]);
    h.policy.registration_only = true;
    assert_eq!(h.raw(&[0x0C]), vec![StatusCode::OperationDenied.as_u8()]);
    assert_eq!(h.raw(&[command::GET_INFO])[0], 0);
}

#[test]
fn debug_output_hides_secrets() {
    let state = crate::KeyState {
        pin_verifier: Some([0xAB; 32]),
        ..crate::KeyState::default()
    };
    let text = format!("{state:?}");
    assert!(text.contains("pin_set: true"));
    assert!(
        !text.contains("171"),
        "verifier bytes (0xAB = 171) must not appear: {text}"
    );
    let key = crate::AttestationKey {
        cert_chain_der: vec![vec![1]],
        pkcs8_der: vec![0xAB; 8].into(),
    };
    assert!(!format!("{key:?}").contains("171"));
    let mut h = Harness::new();
    h.set_pin("1234", 2).expect("setPIN");
    assert!(!format!("{:?}", h.auth).contains("token"));
}

#[test]
fn the_engine_can_move_between_threads() {
    // The server keeps one Authenticator per connected key and runs it on a worker thread.
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<crate::Authenticator>();
    assert_send_sync::<crate::memory::MemoryStore>();
    assert_send_sync::<crate::memory::TestProtection>();
}
