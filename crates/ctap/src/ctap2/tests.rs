//! Request parsing: required members, wrong types and impossible values get the CTAP codes.

use super::*;
use crate::cbor::{Value, int_map, text_map};
use crate::status::StatusCode;

fn mc_params() -> Vec<(i64, Value)> {
    vec![
        (1, Value::Bytes(vec![1; 32])),
        (
            2,
            text_map(vec![
                ("id", Value::text("example.com")),
                ("name", Value::text("Ex")),
            ]),
        ),
        (
            3,
            text_map(vec![
                ("id", Value::Bytes(vec![7; 8])),
                ("name", Value::text("alice")),
                ("displayName", Value::text("Alice")),
            ]),
        ),
        (
            4,
            Value::Array(vec![
                text_map(vec![
                    ("alg", Value::int(-7)),
                    ("type", Value::text("public-key")),
                ]),
                text_map(vec![
                    ("alg", Value::int(-8)),
                    ("type", Value::text("other")),
                ]),
            ]),
        ),
    ]
}

fn with(mut params: Vec<(i64, Value)>, key: i64, value: Value) -> Value {
    params.retain(|(k, _)| *k != key);
    params.push((key, value));
    int_map(params)
}

fn without(params: Vec<(i64, Value)>, key: i64) -> Value {
    int_map(params.into_iter().filter(|(k, _)| *k != key).collect())
}

#[test]
fn make_credential_parses_a_full_request() {
    let params = with(
        with(
            mc_params().into_iter().collect(),
            6,
            text_map(vec![
                ("credProtect", Value::Unsigned(2)),
                ("hmac-secret", Value::Bool(true)),
                ("credBlob", Value::Bytes(vec![1, 2])),
                ("minPinLength", Value::Bool(true)),
                ("unknownExt", Value::Null),
            ]),
        )
        .as_map()
        .expect("map")
        .iter()
        .map(|(k, v)| (k.as_int().expect("int"), v.clone()))
        .collect(),
        7,
        text_map(vec![
            ("rk", Value::Bool(true)),
            ("up", Value::Bool(true)),
            ("x", Value::Bool(true)),
        ]),
    );
    let request = MakeCredentialRequest::parse(Some(&params)).expect("parse");
    assert_eq!(request.rp_id, "example.com");
    assert_eq!(request.rp_name.as_deref(), Some("Ex"));
    assert_eq!(request.user.display_name.as_deref(), Some("Alice"));
    assert_eq!(
        request.algorithms,
        vec![-7],
        "non public-key types are skipped"
    );
    assert_eq!(request.extensions.cred_protect, Some(2));
    assert!(request.extensions.hmac_secret && request.extensions.min_pin_length);
    assert_eq!(request.extensions.cred_blob, Some(vec![1, 2]));
    assert!(request.rk);
    assert_eq!(request.up, Some(true));
}

#[test]
fn make_credential_errors() {
    for key in [1, 2, 3, 4] {
        assert_eq!(
            MakeCredentialRequest::parse(Some(&without(mc_params(), key))),
            Err(StatusCode::MissingParameter),
            "member {key}"
        );
    }
    let cases = [
        (1, Value::text("x"), StatusCode::CborUnexpectedType),
        (
            2,
            text_map(vec![("name", Value::text("x"))]),
            StatusCode::MissingParameter,
        ),
        (2, Value::Array(vec![]), StatusCode::CborUnexpectedType),
        (
            3,
            text_map(vec![("id", Value::text("x"))]),
            StatusCode::CborUnexpectedType,
        ),
        (
            3,
            text_map(vec![("id", Value::Bytes(vec![0; 65]))]),
            StatusCode::InvalidLength,
        ),
        (
            4,
            Value::Array(vec![text_map(vec![("type", Value::text("public-key"))])]),
            StatusCode::MissingParameter,
        ),
        (
            4,
            Value::Array(vec![text_map(vec![
                ("alg", Value::text("-7")),
                ("type", Value::text("public-key")),
            ])]),
            StatusCode::CborUnexpectedType,
        ),
        (
            5,
            Value::Array(vec![text_map(vec![("type", Value::text("public-key"))])]),
            StatusCode::MissingParameter,
        ),
        (
            6,
            text_map(vec![("credProtect", Value::Unsigned(0))]),
            StatusCode::InvalidParameter,
        ),
        (
            6,
            text_map(vec![("hmac-secret", Value::Unsigned(1))]),
            StatusCode::CborUnexpectedType,
        ),
        (
            7,
            text_map(vec![("rk", Value::Unsigned(1))]),
            StatusCode::CborUnexpectedType,
        ),
        (8, Value::Bool(true), StatusCode::CborUnexpectedType),
        (9, Value::Unsigned(300), StatusCode::InvalidParameter),
    ];
    for (key, value, status) in cases {
        assert_eq!(
            MakeCredentialRequest::parse(Some(&with(mc_params(), key, value.clone()))),
            Err(status),
            "member {key} = {value:?}"
        );
    }
    assert_eq!(
        MakeCredentialRequest::parse(None),
        Err(StatusCode::MissingParameter)
    );
    assert_eq!(
        MakeCredentialRequest::parse(Some(&Value::Bytes(vec![]))),
        Err(StatusCode::CborUnexpectedType)
    );
    let text_keys = text_map(vec![("clientDataHash", Value::Bytes(vec![]))]);
    assert_eq!(
        MakeCredentialRequest::parse(Some(&text_keys)),
        Err(StatusCode::CborUnexpectedType)
    );
}

#[test]
fn get_assertion_parses_and_rejects() {
    let key = CoseEcdhKey {
        x: [1; 32],
        y: [2; 32],
    };
    let params = int_map(vec![
        (1, Value::text("example.com")),
        (2, Value::Bytes(vec![0; 32])),
        (
            3,
            Value::Array(vec![text_map(vec![
                ("id", Value::Bytes(vec![9])),
                ("type", Value::text("public-key")),
            ])]),
        ),
        (
            4,
            text_map(vec![
                (
                    "hmac-secret",
                    int_map(vec![
                        (1, key.to_value()),
                        (2, Value::Bytes(vec![0; 32])),
                        (3, Value::Bytes(vec![0; 16])),
                    ]),
                ),
                ("credBlob", Value::Bool(true)),
            ]),
        ),
        (5, text_map(vec![("up", Value::Bool(false))])),
    ]);
    let request = GetAssertionRequest::parse(Some(&params)).expect("parse");
    assert!(!request.up && !request.uv);
    assert_eq!(request.allow_list[0].id, vec![9]);
    let hmac = request.extensions.hmac_secret.expect("hmac-secret");
    assert_eq!(hmac.key_agreement, key);
    assert_eq!(hmac.pin_uv_auth_protocol, 1, "defaults to protocol 1");
    assert!(request.extensions.get_cred_blob);

    let defaults = GetAssertionRequest::parse(Some(&int_map(vec![
        (1, Value::text("a")),
        (2, Value::Bytes(vec![3; 32])),
    ])))
    .expect("parse");
    assert!(defaults.up, "up defaults to true");
    assert_eq!(
        GetAssertionRequest::parse(Some(&int_map(vec![(1, Value::text("a"))]))),
        Err(StatusCode::MissingParameter)
    );
    let bad_hmac = int_map(vec![
        (1, Value::text("a")),
        (2, Value::Bytes(vec![3; 32])),
        (
            4,
            text_map(vec![(
                "hmac-secret",
                int_map(vec![(2, Value::Bytes(vec![]))]),
            )]),
        ),
    ]);
    assert_eq!(
        GetAssertionRequest::parse(Some(&bad_hmac)),
        Err(StatusCode::MissingParameter)
    );
}

#[test]
fn client_data_hash_must_be_32_bytes() {
    for len in [0, 1, 16, 31, 33, 64] {
        assert_eq!(
            MakeCredentialRequest::parse(Some(&with(mc_params(), 1, Value::Bytes(vec![1; len])))),
            Err(StatusCode::InvalidLength),
            "makeCredential, {len} bytes"
        );
        let params = int_map(vec![(1, Value::text("a")), (2, Value::Bytes(vec![1; len]))]);
        assert_eq!(
            GetAssertionRequest::parse(Some(&params)),
            Err(StatusCode::InvalidLength),
            "getAssertion, {len} bytes"
        );
    }
    let request = MakeCredentialRequest::parse(Some(&int_map(mc_params()))).expect("parse");
    assert_eq!(request.client_data_hash, [1; 32]);
}

#[test]
fn cose_key_agreement_checks_curve_and_lengths() {
    let good = CoseEcdhKey {
        x: [3; 32],
        y: [4; 32],
    };
    assert_eq!(CoseEcdhKey::parse(&good.to_value()), Ok(good.clone()));
    assert_eq!(good.to_sec1()[0], 4);
    let ed = int_map(vec![
        (1, Value::Unsigned(1)),
        (3, Value::int(-25)),
        (-1, Value::Unsigned(6)),
        (-2, Value::Bytes(vec![0; 32])),
        (-3, Value::Bytes(vec![0; 32])),
    ]);
    assert_eq!(CoseEcdhKey::parse(&ed), Err(StatusCode::InvalidParameter));
    let short = int_map(vec![
        (1, Value::Unsigned(2)),
        (3, Value::int(-25)),
        (-1, Value::Unsigned(1)),
        (-2, Value::Bytes(vec![0; 31])),
        (-3, Value::Bytes(vec![0; 32])),
    ]);
    assert_eq!(
        CoseEcdhKey::parse(&short),
        Err(StatusCode::InvalidParameter)
    );
    let missing = int_map(vec![
        (1, Value::Unsigned(2)),
        (3, Value::int(-25)),
        (-1, Value::Unsigned(1)),
    ]);
    assert_eq!(
        CoseEcdhKey::parse(&missing),
        Err(StatusCode::MissingParameter)
    );
}

#[test]
fn client_pin_cred_mgmt_and_config_parse() {
    let pin = ClientPinRequest::parse(Some(&int_map(vec![
        (1, Value::Unsigned(2)),
        (2, Value::Unsigned(9)),
        (9, Value::Unsigned(3)),
        (10, Value::text("example.com")),
    ])))
    .expect("parse");
    assert_eq!((pin.sub_command, pin.permissions), (9, Some(3)));
    assert_eq!(pin.rp_id.as_deref(), Some("example.com"));
    assert_eq!(
        ClientPinRequest::parse(Some(&int_map(vec![
            (2, Value::Unsigned(9)),
            (9, Value::Unsigned(256))
        ]))),
        Err(StatusCode::InvalidParameter)
    );
    assert_eq!(
        ClientPinRequest::parse(Some(&int_map(vec![(2, Value::int(-1))]))),
        Err(StatusCode::CborUnexpectedType)
    );

    let cm = CredentialManagementRequest::parse(Some(&int_map(vec![
        (1, Value::Unsigned(4)),
        (2, int_map(vec![(1, Value::Bytes(vec![5; 32]))])),
        (3, Value::Unsigned(2)),
        (4, Value::Bytes(vec![1; 32])),
    ])))
    .expect("parse");
    assert_eq!(cm.rp_id_hash, Some([5; 32]));
    assert!(cm.sub_command_params.is_some());
    assert_eq!(
        CredentialManagementRequest::parse(Some(&int_map(vec![
            (1, Value::Unsigned(4)),
            (2, int_map(vec![(1, Value::Bytes(vec![5; 31]))])),
        ]))),
        Err(StatusCode::InvalidParameter)
    );

    let config = ConfigRequest::parse(Some(&int_map(vec![
        (1, Value::Unsigned(3)),
        (
            2,
            int_map(vec![
                (1, Value::Unsigned(6)),
                (2, Value::Array(vec![Value::text("a")])),
                (3, Value::Bool(true)),
            ]),
        ),
    ])))
    .expect("parse");
    assert_eq!(config.new_min_pin_length, Some(6));
    assert_eq!(config.min_pin_length_rp_ids, Some(vec!["a".to_owned()]));
    assert!(config.force_change_pin);
    assert_eq!(
        ConfigRequest::parse(Some(&int_map(vec![
            (1, Value::Unsigned(3)),
            (2, int_map(vec![(3, Value::Unsigned(1))]))
        ]))),
        Err(StatusCode::CborUnexpectedType)
    );
}

#[test]
fn request_framing_and_info_encoding() {
    assert_eq!(split_request(&[]), Err(StatusCode::InvalidLength));
    assert_eq!(split_request(&[4]), Ok((4, None)));
    assert_eq!(split_request(&[1, 0xa1]), Err(StatusCode::InvalidCbor));
    assert_eq!(success(None), vec![0]);
    assert_eq!(failure(StatusCode::PinInvalid), vec![0x31]);
    let info = AuthenticatorInfo {
        versions: vec!["FIDO_2_1".into()],
        extensions: vec![],
        aaguid: [0; 16],
        options: vec![
            ("rk".into(), true),
            ("up".into(), true),
            ("plat".into(), false),
        ],
        max_msg_size: 1200,
        pin_uv_auth_protocols: vec![2, 1],
        max_credential_count_in_list: 8,
        max_credential_id_length: 128,
        transports: vec!["usb".into()],
        algorithms: vec![-7],
        force_pin_change: false,
        min_pin_length: 4,
        firmware_version: 1,
        max_cred_blob_length: 32,
        max_rp_ids_for_set_min_pin_length: 8,
        remaining_discoverable_credentials: 10,
    };
    let encoded = crate::cbor::encode(&info.to_value());
    let decoded = crate::cbor::decode(&encoded).expect("canonical");
    assert_eq!(decoded.map_get_int(0x14), Some(&Value::Unsigned(10)));
    // Canonical option order: "rk" < "up" < "plat".
    let options = decoded
        .map_get_int(4)
        .and_then(Value::as_map)
        .expect("options");
    let names: Vec<_> = options
        .iter()
        .map(|(k, _)| k.as_text().expect("text"))
        .collect();
    assert_eq!(names, ["rk", "up", "plat"]);
}
