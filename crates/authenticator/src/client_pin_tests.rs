use keyward_ctap::cbor::{self, Value};
use keyward_ctap::ctap2::{command, permission};
use keyward_ctap::status::StatusCode;

use crate::testing::{Harness, pad_pin, secret_auth};

const MC_GA: u8 = permission::MAKE_CREDENTIAL | permission::GET_ASSERTION;

#[test]
fn set_pin_then_token_with_both_protocols() {
    for protocol in [1u8, 2] {
        let mut h = Harness::new();
        assert_eq!(
            h.token("1234", protocol, None, None),
            Err(StatusCode::PinNotSet)
        );
        h.set_pin("1234", protocol).expect("setPIN");
        assert!(h.store.state.pin_verifier.is_some());
        assert_eq!(h.store.state.pin_code_points, 4);
        let token = h
            .token("1234", protocol, Some(MC_GA), Some("example.com"))
            .expect("token");
        assert_eq!(token.len(), 32);
        let legacy = h.token("1234", protocol, None, None).expect("legacy token");
        assert_ne!(token, legacy, "every request makes a new token");
        // A second setPIN is refused: changePIN is the way.
        assert_eq!(h.set_pin("5678", protocol), Err(StatusCode::NotAllowed));
    }
}

#[test]
fn set_pin_rejects_short_long_and_badly_authenticated_pins() {
    let mut h = Harness::new();
    assert_eq!(h.set_pin("123", 2), Err(StatusCode::PinPolicyViolation));
    let long: String = "9".repeat(64);
    assert_eq!(h.set_pin(&long, 2), Err(StatusCode::PinPolicyViolation));
    // Four code points in multi-byte UTF-8 are long enough.
    h.set_pin("äöüß", 2).expect("4 code points");

    let mut h = Harness::new();
    let (key, secret) = h.shared_secret(2);
    let new_pin_enc = secret.encrypt(&mut h.env, &pad_pin("1234")).expect("enc");
    let mut bad = secret_auth(&secret, &new_pin_enc);
    bad[0] ^= 1;
    let result = h.call(
        command::CLIENT_PIN,
        Some(cbor::int_map(vec![
            (1, Value::Unsigned(2)),
            (2, Value::Unsigned(3)),
            (3, key),
            (4, Value::Bytes(bad)),
            (5, Value::Bytes(new_pin_enc)),
        ])),
    );
    assert_eq!(result, Err(StatusCode::PinAuthInvalid));
    assert!(h.store.state.pin_verifier.is_none());
}

#[test]
fn wrong_pins_spend_retries_block_after_three_and_for_good_at_zero() {
    let mut h = Harness::new();
    h.set_pin("1234", 2).expect("setPIN");
    assert_eq!(h.pin_retries(), (8, false));
    assert_eq!(h.token("0000", 2, None, None), Err(StatusCode::PinInvalid));
    assert_eq!(h.token("0000", 2, None, None), Err(StatusCode::PinInvalid));
    assert_eq!(
        h.token("0000", 2, None, None),
        Err(StatusCode::PinAuthBlocked)
    );
    assert_eq!(h.pin_retries(), (5, true));
    // Even the right PIN is refused until a power cycle, and no retry is spent for it.
    assert_eq!(
        h.token("1234", 2, None, None),
        Err(StatusCode::PinAuthBlocked)
    );
    assert_eq!(h.store.state.pin_retries, 5);
    // The softkey's power cycle resets the soft block through its store.
    h.store.state.consecutive_pin_failures = 0;
    h.auth.power_cycle(&mut h.env);
    h.token("1234", 2, None, None)
        .expect("right PIN restores retries");
    assert_eq!(h.pin_retries(), (8, false));

    for _ in 0..7 {
        h.store.state.consecutive_pin_failures = 0;
        assert_eq!(h.token("0000", 2, None, None), Err(StatusCode::PinInvalid));
    }
    h.store.state.consecutive_pin_failures = 0;
    assert_eq!(h.token("0000", 2, None, None), Err(StatusCode::PinBlocked));
    assert_eq!(h.token("1234", 2, None, None), Err(StatusCode::PinBlocked));
}

#[test]
fn a_store_that_cannot_spend_the_retry_fails_closed_without_a_token() {
    // The retry must be committed before the comparison: a store that cannot commit it refuses.
    let mut h = Harness::new();
    h.set_pin("1234", 2).expect("setPIN");
    let (key, secret) = h.shared_secret(2);
    h.store.fail = true;
    let hash = crate::crypto::sha256(b"1234");
    let enc = secret.encrypt(&mut h.env, &hash[..16]).expect("enc");
    let result = h.call(
        command::CLIENT_PIN,
        Some(cbor::int_map(vec![
            (1, Value::Unsigned(2)),
            (2, Value::Unsigned(5)),
            (3, key),
            (6, Value::Bytes(enc)),
        ])),
    );
    assert_eq!(result, Err(StatusCode::Other));
    assert!(h.auth.state.token.is_none());
}

#[test]
fn change_pin_and_force_pin_change() {
    let mut h = Harness::new();
    h.set_pin("1234", 1).expect("setPIN");
    h.store.state.force_pin_change = true;
    assert_eq!(
        h.token("1234", 2, Some(MC_GA), Some("example.com")),
        Err(StatusCode::PinPolicyViolation)
    );
    let change = |h: &mut Harness, old: &str, new: &str| {
        let (key, secret) = h.shared_secret(2);
        let new_pin_enc = secret.encrypt(&mut h.env, &pad_pin(new)).expect("enc");
        let hash = crate::crypto::sha256(old.as_bytes());
        let pin_hash_enc = secret.encrypt(&mut h.env, &hash[..16]).expect("enc");
        let param = secret_auth(&secret, &[new_pin_enc.as_slice(), &pin_hash_enc].concat());
        h.call(
            command::CLIENT_PIN,
            Some(cbor::int_map(vec![
                (1, Value::Unsigned(2)),
                (2, Value::Unsigned(4)),
                (3, key),
                (4, Value::Bytes(param)),
                (5, Value::Bytes(new_pin_enc)),
                (6, Value::Bytes(pin_hash_enc)),
            ])),
        )
    };
    assert_eq!(
        change(&mut h, "1234", "1234"),
        Err(StatusCode::PinPolicyViolation)
    );
    assert_eq!(change(&mut h, "9999", "5678"), Err(StatusCode::PinInvalid));
    change(&mut h, "1234", "5678").expect("changePIN");
    assert!(!h.store.state.force_pin_change);
    h.token("5678", 2, Some(MC_GA), Some("example.com"))
        .expect("new PIN works");
    assert_eq!(h.token("1234", 2, None, None), Err(StatusCode::PinInvalid));
}

#[test]
fn malformed_requests_get_the_spec_errors() {
    let mut h = Harness::new();
    h.set_pin("1234", 2).expect("setPIN");
    // No subCommand.
    assert_eq!(
        h.call(
            command::CLIENT_PIN,
            Some(cbor::int_map(vec![(1, Value::Unsigned(2))]))
        ),
        Err(StatusCode::MissingParameter)
    );
    // getKeyAgreement without protocol; with an unknown one.
    assert_eq!(
        h.call(
            command::CLIENT_PIN,
            Some(cbor::int_map(vec![(2, Value::Unsigned(2))]))
        ),
        Err(StatusCode::MissingParameter)
    );
    assert_eq!(
        h.call(
            command::CLIENT_PIN,
            Some(cbor::int_map(vec![
                (1, Value::Unsigned(3)),
                (2, Value::Unsigned(2))
            ]))
        ),
        Err(StatusCode::InvalidParameter)
    );
    // Wrong type for the sub-command.
    assert_eq!(
        h.call(
            command::CLIENT_PIN,
            Some(cbor::int_map(vec![(2, Value::text("x"))]))
        ),
        Err(StatusCode::CborUnexpectedType)
    );
    // Permissions 0, bio enrollment, largeBlobs, and mc without an RP id.
    assert_eq!(
        h.token("1234", 2, Some(0), None),
        Err(StatusCode::InvalidParameter)
    );
    assert_eq!(
        h.token("1234", 2, Some(permission::BIO_ENROLLMENT), None),
        Err(StatusCode::UnauthorizedPermission)
    );
    assert_eq!(
        h.token("1234", 2, Some(permission::LARGE_BLOB_WRITE), None),
        Err(StatusCode::UnauthorizedPermission)
    );
    assert_eq!(
        h.token("1234", 2, Some(permission::MAKE_CREDENTIAL), None),
        Err(StatusCode::MissingParameter)
    );
    // No built-in UV.
    assert_eq!(
        h.call(
            command::CLIENT_PIN,
            Some(cbor::int_map(vec![
                (1, Value::Unsigned(2)),
                (2, Value::Unsigned(7))
            ]))
        ),
        Err(StatusCode::InvalidSubcommand)
    );
    // None of these spent a retry.
    assert_eq!(h.store.state.pin_retries, 8);
}

#[test]
fn registration_only_allows_token_requests_but_not_pin_changes() {
    let mut h = Harness::new();
    h.set_pin("1234", 2).expect("setPIN");
    h.policy.registration_only = true;
    h.token(
        "1234",
        2,
        Some(permission::MAKE_CREDENTIAL),
        Some("example.com"),
    )
    .expect("token");
    assert_eq!(h.set_pin("5678", 2), Err(StatusCode::OperationDenied));
    let (key, _) = h.shared_secret(2);
    assert_eq!(
        h.call(
            command::CLIENT_PIN,
            Some(cbor::int_map(vec![
                (1, Value::Unsigned(2)),
                (2, Value::Unsigned(4)),
                (3, key)
            ]))
        ),
        Err(StatusCode::OperationDenied)
    );
}
