use keyward_ctap::cbor::{self, Value};
use keyward_ctap::ctap2::{command, permission};
use keyward_ctap::status::StatusCode;

use crate::crypto::sha256;
use crate::pin_protocol::PinUvAuthProtocol;
use crate::testing::{Harness, credential_id, make_credential_params};

/// Sends a credMgmt sub-command authenticated with `token` (or continuation without auth).
fn cm(
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
        let mut message = vec![sub];
        if let Some(p) = &params {
            message.extend_from_slice(&cbor::encode(p));
        }
        request.push((3, Value::Unsigned(2)));
        request.push((
            4,
            Value::Bytes(PinUvAuthProtocol::Two.authenticate(token, &message)),
        ));
    }
    h.call(command::CREDENTIAL_MANAGEMENT, Some(cbor::int_map(request)))
}

fn setup() -> (Harness, Vec<u8>, Vec<Vec<u8>>) {
    let mut h = Harness::new();
    let mut ids = Vec::new();
    h.set_pin("1234", 2).expect("setPIN");
    for (rp, user) in [
        ("a.example", b"alice"),
        ("a.example", b"bobby"),
        ("b.example", b"carol"),
    ] {
        let token = h
            .token("1234", 2, Some(permission::MAKE_CREDENTIAL), Some(rp))
            .expect("token");
        let mut params = make_credential_params(rp, user, true);
        params.push((
            8,
            Value::Bytes(
                PinUvAuthProtocol::Two.authenticate(&token, &crate::testing::CLIENT_DATA_HASH),
            ),
        ));
        params.push((9, Value::Unsigned(2)));
        let response = h
            .call_map(command::MAKE_CREDENTIAL, cbor::int_map(params))
            .expect("mc");
        ids.push(credential_id(&response));
    }
    let token = h
        .token("1234", 2, Some(permission::CREDENTIAL_MANAGEMENT), None)
        .expect("cm token");
    (h, token, ids)
}

#[test]
fn metadata_and_enumeration() {
    let (mut h, token, _) = setup();
    let meta = cm(&mut h, Some(&token), 1, None)
        .expect("metadata")
        .expect("body");
    assert_eq!(meta.map_get_int(1), Some(&Value::Unsigned(3)));
    assert_eq!(meta.map_get_int(2), Some(&Value::Unsigned(97)));

    let rp = cm(&mut h, Some(&token), 2, None)
        .expect("rps")
        .expect("body");
    assert_eq!(rp.map_get_int(5), Some(&Value::Unsigned(2)));
    assert_eq!(
        rp.map_get_int(3).and_then(|r| r.map_get_text("id")),
        Some(&Value::text("a.example"))
    );
    let next = cm(&mut h, None, 3, None).expect("next rp").expect("body");
    assert_eq!(
        next.map_get_int(4).and_then(Value::as_bytes),
        Some(&sha256(b"b.example")[..])
    );
    assert_eq!(cm(&mut h, None, 3, None), Err(StatusCode::NotAllowed));

    let params = cbor::int_map(vec![(1, Value::Bytes(sha256(b"a.example").to_vec()))]);
    let first = cm(&mut h, Some(&token), 4, Some(params))
        .expect("creds")
        .expect("body");
    assert_eq!(first.map_get_int(9), Some(&Value::Unsigned(2)));
    assert_eq!(first.map_get_int(10), Some(&Value::Unsigned(1)));
    assert!(
        first
            .map_get_int(8)
            .and_then(|k| k.map_get_int(-2))
            .is_some(),
        "public key map"
    );
    cm(&mut h, None, 5, None).expect("second cred");
    assert_eq!(cm(&mut h, None, 5, None), Err(StatusCode::NotAllowed));
}

#[test]
fn delete_and_update_user() {
    let (mut h, token, ids) = setup();
    let descriptor = |id: &[u8]| {
        cbor::text_map(vec![
            ("id", Value::Bytes(id.to_vec())),
            ("type", Value::text("public-key")),
        ])
    };
    let update = cbor::int_map(vec![
        (2, descriptor(&ids[0])),
        (
            3,
            cbor::text_map(vec![
                ("id", Value::Bytes(b"alice".to_vec())),
                ("name", Value::text("new")),
            ]),
        ),
    ]);
    cm(&mut h, Some(&token), 7, Some(update)).expect("update");
    let stored = h
        .store
        .credentials
        .iter()
        .find(|c| c.id == ids[0])
        .expect("stored");
    assert_eq!(stored.user.name.as_deref(), Some("new"));
    assert_eq!(stored.user.display_name, None, "absent fields are removed");
    let wrong_user = cbor::int_map(vec![
        (2, descriptor(&ids[0])),
        (
            3,
            cbor::text_map(vec![("id", Value::Bytes(b"mallory".to_vec()))]),
        ),
    ]);
    assert_eq!(
        cm(&mut h, Some(&token), 7, Some(wrong_user)),
        Err(StatusCode::InvalidParameter)
    );

    cm(
        &mut h,
        Some(&token),
        6,
        Some(cbor::int_map(vec![(2, descriptor(&ids[1]))])),
    )
    .expect("delete");
    assert_eq!(h.store.credentials.len(), 2);
    assert_eq!(
        cm(
            &mut h,
            Some(&token),
            6,
            Some(cbor::int_map(vec![(2, descriptor(&ids[1]))]))
        ),
        Err(StatusCode::NoCredentials)
    );
    assert_eq!(
        cm(&mut h, Some(&token), 6, Some(cbor::int_map(vec![]))),
        Err(StatusCode::MissingParameter)
    );
}

#[test]
fn authorisation_rules() {
    let (mut h, token, _) = setup();
    assert_eq!(cm(&mut h, None, 1, None), Err(StatusCode::PuatRequired));
    let mut bad = token.clone();
    bad[0] ^= 1;
    assert_eq!(
        cm(&mut h, Some(&bad), 1, None),
        Err(StatusCode::PinAuthInvalid)
    );
    assert_eq!(
        cm(&mut h, Some(&token), 0x42, None),
        Err(StatusCode::InvalidSubcommand)
    );
    // A token without the cm permission.
    let mc_token = h
        .token(
            "1234",
            2,
            Some(permission::MAKE_CREDENTIAL),
            Some("a.example"),
        )
        .expect("token");
    assert_eq!(
        cm(&mut h, Some(&mc_token), 1, None),
        Err(StatusCode::PinAuthInvalid)
    );
    // An RP-bound cm token may not list all RPs, nor another RP's credentials.
    let bound = h
        .token(
            "1234",
            2,
            Some(permission::CREDENTIAL_MANAGEMENT | permission::MAKE_CREDENTIAL),
            Some("a.example"),
        )
        .expect("token");
    assert_eq!(
        cm(&mut h, Some(&bound), 2, None),
        Err(StatusCode::PinAuthInvalid)
    );
    let other = cbor::int_map(vec![(1, Value::Bytes(sha256(b"b.example").to_vec()))]);
    assert_eq!(
        cm(&mut h, Some(&bound), 4, Some(other)),
        Err(StatusCode::PinAuthInvalid)
    );
    let own = cbor::int_map(vec![(1, Value::Bytes(sha256(b"a.example").to_vec()))]);
    cm(&mut h, Some(&bound), 4, Some(own)).expect("own RP");
    // Registration-only refuses the whole command.
    h.policy.registration_only = true;
    let fresh = h
        .token("1234", 2, Some(permission::CREDENTIAL_MANAGEMENT), None)
        .expect("token");
    assert_eq!(
        cm(&mut h, Some(&fresh), 1, None),
        Err(StatusCode::OperationDenied)
    );
}
