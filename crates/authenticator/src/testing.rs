//! Test harness: an authenticator over the in-memory store, and a platform side that speaks the
//! PIN protocols, so command tests read like the spec's flows.

use keyward_ctap::cbor::{self, Value};
use keyward_ctap::ctap2::command;
use keyward_ctap::status::StatusCode;

use crate::memory::{ManualEnv, MemoryStore, TestProtection};
use crate::pin_protocol::{KeyAgreement, PinUvAuthProtocol, SharedSecret};
use crate::{Authenticator, Config, Context, Policy, Presence, PresenceRequest};

/// Presence that counts requests and can be told to refuse.
#[derive(Default)]
pub(crate) struct TestPresence {
    pub requests: Vec<PresenceRequest>,
    pub refuse: Option<StatusCode>,
}

impl Presence for TestPresence {
    fn confirm(&mut self, request: &PresenceRequest) -> Result<(), StatusCode> {
        self.requests.push(request.clone());
        match self.refuse {
            Some(status) => Err(status),
            None => Ok(()),
        }
    }
}

pub(crate) struct Harness {
    pub auth: Authenticator,
    pub store: MemoryStore,
    pub protection: TestProtection,
    pub presence: TestPresence,
    pub env: ManualEnv,
    pub policy: Policy,
}

pub(crate) const CLIENT_DATA_HASH: [u8; 32] = [0xCD; 32];

impl Harness {
    pub fn new() -> Self {
        Self::with_config(Config::new([0x4B; 16]))
    }

    pub fn with_config(config: Config) -> Self {
        let mut env = ManualEnv { now_ms: 1_000 };
        let auth = Authenticator::new(config, &mut env);
        Self {
            auth,
            store: MemoryStore::new(),
            protection: TestProtection::new(),
            presence: TestPresence::default(),
            env,
            policy: Policy::default(),
        }
    }

    pub fn raw(&mut self, request: &[u8]) -> Vec<u8> {
        let mut ctx = Context {
            store: &mut self.store,
            protection: &self.protection,
            presence: &mut self.presence,
            env: &mut self.env,
            policy: self.policy,
        };
        self.auth.process(&mut ctx, request)
    }

    /// Sends a command; `Ok(None)` is a success without body.
    pub fn call(&mut self, cmd: u8, params: Option<Value>) -> Result<Option<Value>, StatusCode> {
        let mut request = vec![cmd];
        if let Some(params) = &params {
            request.extend_from_slice(&cbor::encode(params));
        }
        let response = self.raw(&request);
        let status = StatusCode::from_u8(response[0]).expect("known status");
        if status != StatusCode::Ok {
            assert_eq!(response.len(), 1, "errors carry no body");
            return Err(status);
        }
        if response.len() == 1 {
            return Ok(None);
        }
        Ok(Some(
            cbor::decode(&response[1..]).expect("canonical response"),
        ))
    }

    pub fn call_map(&mut self, cmd: u8, params: Value) -> Result<Value, StatusCode> {
        self.call(cmd, Some(params))
            .map(|v| v.expect("response body"))
    }

    /// getKeyAgreement + the platform's half of the ECDH.
    pub fn shared_secret(&mut self, protocol: u8) -> (Value, SharedSecret) {
        let response = self
            .call_map(
                command::CLIENT_PIN,
                cbor::int_map(vec![
                    (1, Value::Unsigned(protocol.into())),
                    (2, Value::Unsigned(2)),
                ]),
            )
            .expect("getKeyAgreement");
        let theirs =
            keyward_ctap::ctap2::CoseEcdhKey::parse(response.map_get_int(1).expect("keyAgreement"))
                .expect("cose key");
        let platform = KeyAgreement::generate(&mut self.env);
        let secret = platform
            .shared_secret(
                PinUvAuthProtocol::from_number(protocol).expect("protocol"),
                &theirs,
            )
            .expect("agree");
        (platform.public().to_value(), secret)
    }

    pub fn set_pin(&mut self, pin: &str, protocol: u8) -> Result<(), StatusCode> {
        let (key, secret) = self.shared_secret(protocol);
        let new_pin_enc = secret
            .encrypt(&mut self.env, &pad_pin(pin))
            .expect("encrypt");
        let param = secret_auth(&secret, &new_pin_enc);
        self.call(
            command::CLIENT_PIN,
            Some(cbor::int_map(vec![
                (1, Value::Unsigned(protocol.into())),
                (2, Value::Unsigned(3)),
                (3, key),
                (4, Value::Bytes(param)),
                (5, Value::Bytes(new_pin_enc)),
            ])),
        )
        .map(|_| ())
    }

    /// getPinUvAuthTokenUsingPinWithPermissions (or legacy getPinToken when `permissions` is
    /// `None`); returns the decrypted token.
    pub fn token(
        &mut self,
        pin: &str,
        protocol: u8,
        permissions: Option<u8>,
        rp_id: Option<&str>,
    ) -> Result<Vec<u8>, StatusCode> {
        let (key, secret) = self.shared_secret(protocol);
        let hash = crate::crypto::sha256(pin.as_bytes());
        let pin_hash_enc = secret.encrypt(&mut self.env, &hash[..16]).expect("encrypt");
        let mut params = vec![
            (1, Value::Unsigned(protocol.into())),
            (
                2,
                Value::Unsigned(if permissions.is_some() { 9 } else { 5 }),
            ),
            (3, key),
            (6, Value::Bytes(pin_hash_enc)),
        ];
        if let Some(p) = permissions {
            params.push((9, Value::Unsigned(p.into())));
        }
        if let Some(rp) = rp_id {
            params.push((10, Value::text(rp)));
        }
        let response = self.call_map(command::CLIENT_PIN, cbor::int_map(params))?;
        let enc = response
            .map_get_int(2)
            .and_then(Value::as_bytes)
            .expect("token");
        Ok(secret.decrypt(enc).expect("decrypt").to_vec())
    }

    pub fn pin_retries(&mut self) -> (u64, bool) {
        let r = self
            .call_map(
                command::CLIENT_PIN,
                cbor::int_map(vec![(2, Value::Unsigned(1))]),
            )
            .expect("retries");
        (
            r.map_get_int(3)
                .and_then(Value::as_unsigned)
                .expect("retries"),
            r.map_get_int(4)
                .and_then(Value::as_bool)
                .expect("powerCycleState"),
        )
    }
}

pub(crate) fn secret_auth(secret: &SharedSecret, message: &[u8]) -> Vec<u8> {
    // The platform authenticates with the same HMAC key the authenticator verifies with.
    let key = secret.hmac_key_for_tests();
    secret.protocol.authenticate(key, message)
}

pub(crate) fn pad_pin(pin: &str) -> Vec<u8> {
    let mut padded = pin.as_bytes().to_vec();
    padded.resize(64, 0);
    padded
}

/// A makeCredential request map for `rp_id` and user handle `user_id`.
pub(crate) fn make_credential_params(rp_id: &str, user_id: &[u8], rk: bool) -> Vec<(i64, Value)> {
    vec![
        (1, Value::Bytes(CLIENT_DATA_HASH.to_vec())),
        (
            2,
            cbor::text_map(vec![
                ("id", Value::text(rp_id)),
                ("name", Value::text("Example")),
            ]),
        ),
        (
            3,
            cbor::text_map(vec![
                ("id", Value::Bytes(user_id.to_vec())),
                ("name", Value::text("alice@example.com")),
                ("displayName", Value::text("Alice")),
            ]),
        ),
        (
            4,
            Value::Array(vec![cbor::text_map(vec![
                ("alg", Value::int(-7)),
                ("type", Value::text("public-key")),
            ])]),
        ),
        (7, cbor::text_map(vec![("rk", Value::Bool(rk))])),
    ]
}

pub(crate) fn get_assertion_params(rp_id: &str, allow: &[&[u8]]) -> Vec<(i64, Value)> {
    let mut params = vec![
        (1, Value::text(rp_id)),
        (2, Value::Bytes(CLIENT_DATA_HASH.to_vec())),
    ];
    if !allow.is_empty() {
        params.push((
            3,
            Value::Array(
                allow
                    .iter()
                    .map(|id| {
                        cbor::text_map(vec![
                            ("id", Value::Bytes(id.to_vec())),
                            ("type", Value::text("public-key")),
                        ])
                    })
                    .collect(),
            ),
        ));
    }
    params
}

/// The credential id inside a makeCredential response's authData.
pub(crate) fn credential_id(mc_response: &Value) -> Vec<u8> {
    let auth_data = mc_response
        .map_get_int(2)
        .and_then(Value::as_bytes)
        .expect("authData");
    let len = u16::from_be_bytes([auth_data[53], auth_data[54]]) as usize;
    auth_data[55..55 + len].to_vec()
}
