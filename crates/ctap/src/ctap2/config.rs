//! authenticatorConfig (0x0D), §6.11.

use super::parse::{self, Result};
use crate::cbor::Value;

pub mod subcommand {
    pub const ENABLE_ENTERPRISE_ATTESTATION: u8 = 0x01;
    pub const TOGGLE_ALWAYS_UV: u8 = 0x02;
    pub const SET_MIN_PIN_LENGTH: u8 = 0x03;
    pub const VENDOR_PROTOTYPE: u8 = 0xFF;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigRequest {
    pub sub_command: u8,
    /// Kept as received: pinUvAuthParam covers its canonical encoding.
    pub sub_command_params: Option<Value>,
    pub new_min_pin_length: Option<u8>,
    pub min_pin_length_rp_ids: Option<Vec<String>>,
    pub force_change_pin: bool,
    pub pin_uv_auth_protocol: Option<u8>,
    pub pin_uv_auth_param: Option<Vec<u8>>,
}

impl ConfigRequest {
    pub fn parse(params: Option<&Value>) -> Result<Self> {
        let entries = parse::int_keyed_map(params)?;
        let sub_command = parse::small_unsigned(parse::required(parse::member(entries, 1))?)?;
        let sub_command_params = parse::member(entries, 2).cloned();
        let (mut new_min_pin_length, mut min_pin_length_rp_ids, mut force_change_pin) =
            (None, None, false);
        if let Some(sub) = &sub_command_params {
            let sub = parse::int_keyed_map(Some(sub))?;
            new_min_pin_length = parse::optional(parse::member(sub, 1), parse::small_unsigned)?;
            min_pin_length_rp_ids = parse::optional(parse::member(sub, 2), |v| {
                parse::array(v)?.iter().map(parse::text).collect()
            })?;
            force_change_pin =
                parse::optional(parse::member(sub, 3), parse::boolean)?.unwrap_or(false);
        }
        Ok(Self {
            sub_command,
            sub_command_params,
            new_min_pin_length,
            min_pin_length_rp_ids,
            force_change_pin,
            pin_uv_auth_protocol: parse::optional(
                parse::member(entries, 3),
                parse::small_unsigned,
            )?,
            pin_uv_auth_param: parse::optional(parse::member(entries, 4), parse::bytes)?,
        })
    }
}
