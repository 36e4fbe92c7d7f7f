//! authenticatorCredentialManagement (0x0A, and the 2.1 preview 0x41), §6.8.

use super::parse::{self, Result};
use super::types::{PublicKeyCredentialDescriptor, PublicKeyCredentialUserEntity};
use crate::cbor::Value;
use crate::status::StatusCode;

pub mod subcommand {
    pub const GET_CREDS_METADATA: u8 = 0x01;
    pub const ENUMERATE_RPS_BEGIN: u8 = 0x02;
    pub const ENUMERATE_RPS_GET_NEXT_RP: u8 = 0x03;
    pub const ENUMERATE_CREDENTIALS_BEGIN: u8 = 0x04;
    pub const ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL: u8 = 0x05;
    pub const DELETE_CREDENTIAL: u8 = 0x06;
    pub const UPDATE_USER_INFORMATION: u8 = 0x07;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialManagementRequest {
    pub sub_command: u8,
    /// The sub-command parameters as received: pinUvAuthParam covers their exact encoding.
    pub sub_command_params: Option<Value>,
    pub rp_id_hash: Option<[u8; 32]>,
    pub credential_id: Option<PublicKeyCredentialDescriptor>,
    pub user: Option<PublicKeyCredentialUserEntity>,
    pub pin_uv_auth_protocol: Option<u8>,
    pub pin_uv_auth_param: Option<Vec<u8>>,
}

impl CredentialManagementRequest {
    pub fn parse(params: Option<&Value>) -> Result<Self> {
        let entries = parse::int_keyed_map(params)?;
        let sub_command = parse::small_unsigned(parse::required(parse::member(entries, 1))?)?;
        let sub_command_params = parse::member(entries, 2).cloned();
        let (mut rp_id_hash, mut credential_id, mut user) = (None, None, None);
        if let Some(sub) = &sub_command_params {
            let sub = parse::int_keyed_map(Some(sub))?;
            rp_id_hash = parse::optional(parse::member(sub, 1), |v| {
                let bytes = parse::bytes(v)?;
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| StatusCode::InvalidParameter)
            })?;
            credential_id =
                parse::optional(parse::member(sub, 2), PublicKeyCredentialDescriptor::parse)?;
            user = parse::optional(parse::member(sub, 3), PublicKeyCredentialUserEntity::parse)?;
        }
        Ok(Self {
            sub_command,
            sub_command_params,
            rp_id_hash,
            credential_id,
            user,
            pin_uv_auth_protocol: parse::optional(
                parse::member(entries, 3),
                parse::small_unsigned,
            )?,
            pin_uv_auth_param: parse::optional(parse::member(entries, 4), parse::bytes)?,
        })
    }
}
