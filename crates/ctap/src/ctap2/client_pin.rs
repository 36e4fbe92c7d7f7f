//! authenticatorClientPIN (0x06), §6.5.

use super::parse::{self, Result};
use super::types::CoseEcdhKey;
use crate::cbor::Value;
use crate::status::StatusCode;

/// clientPIN sub-commands.
pub mod subcommand {
    pub const GET_PIN_RETRIES: u8 = 0x01;
    pub const GET_KEY_AGREEMENT: u8 = 0x02;
    pub const SET_PIN: u8 = 0x03;
    pub const CHANGE_PIN: u8 = 0x04;
    pub const GET_PIN_TOKEN: u8 = 0x05;
    pub const GET_PIN_UV_AUTH_TOKEN_USING_UV_WITH_PERMISSIONS: u8 = 0x06;
    pub const GET_UV_RETRIES: u8 = 0x07;
    pub const GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS: u8 = 0x09;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPinRequest {
    /// Required by every sub-command except getPINRetries and getUVRetries; the engine checks.
    pub pin_uv_auth_protocol: Option<u8>,
    pub sub_command: u8,
    pub key_agreement: Option<CoseEcdhKey>,
    pub pin_uv_auth_param: Option<Vec<u8>>,
    pub new_pin_enc: Option<Vec<u8>>,
    pub pin_hash_enc: Option<Vec<u8>>,
    pub permissions: Option<u8>,
    pub rp_id: Option<String>,
}

impl ClientPinRequest {
    pub fn parse(params: Option<&Value>) -> Result<Self> {
        let entries = parse::int_keyed_map(params)?;
        Ok(Self {
            pin_uv_auth_protocol: parse::optional(
                parse::member(entries, 1),
                parse::small_unsigned,
            )?,
            sub_command: parse::small_unsigned(parse::required(parse::member(entries, 2))?)?,
            key_agreement: parse::optional(parse::member(entries, 3), CoseEcdhKey::parse)?,
            pin_uv_auth_param: parse::optional(parse::member(entries, 4), parse::bytes)?,
            new_pin_enc: parse::optional(parse::member(entries, 5), parse::bytes)?,
            pin_hash_enc: parse::optional(parse::member(entries, 6), parse::bytes)?,
            permissions: parse::optional(parse::member(entries, 9), |v| {
                // Permissions is a bit set; bits beyond the defined byte are not ours to grant.
                let bits = parse::unsigned(v)?;
                u8::try_from(bits).map_err(|_| StatusCode::InvalidParameter)
            })?,
            rp_id: parse::optional(parse::member(entries, 10), parse::text)?,
        })
    }
}

/// `{1: keyAgreement}`.
pub fn key_agreement_response(key: &CoseEcdhKey) -> Value {
    Value::Map(vec![(Value::Unsigned(1), key.to_value())])
}

/// `{2: pinUvAuthToken (encrypted)}`.
pub fn token_response(encrypted_token: Vec<u8>) -> Value {
    Value::Map(vec![(Value::Unsigned(2), Value::Bytes(encrypted_token))])
}

/// `{3: pinRetries, 4: powerCycleState}`.
pub fn retries_response(retries: u8, power_cycle_state: bool) -> Value {
    Value::Map(vec![
        (Value::Unsigned(3), Value::Unsigned(u64::from(retries))),
        (Value::Unsigned(4), Value::Bool(power_cycle_state)),
    ])
}
