//! authenticatorMakeCredential (0x01), §6.1.

use super::parse::{self, Result};
use super::types::{PublicKeyCredentialDescriptor, PublicKeyCredentialUserEntity, parse_options};
use crate::cbor::Value;
use crate::status::StatusCode;

/// The makeCredential extension inputs Keyward understands; others are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MakeCredentialExtensions {
    /// credProtect level 1..=3.
    pub cred_protect: Option<u8>,
    pub hmac_secret: bool,
    pub cred_blob: Option<Vec<u8>>,
    pub min_pin_length: bool,
}

impl MakeCredentialExtensions {
    pub fn parse(value: &Value) -> Result<Self> {
        let entries = parse::map(value)?;
        let mut out = Self::default();
        for (key, value) in entries {
            match parse::text(key)?.as_str() {
                "credProtect" => {
                    let level = parse::small_unsigned(value)?;
                    if !(1..=3).contains(&level) {
                        return Err(StatusCode::InvalidParameter);
                    }
                    out.cred_protect = Some(level);
                }
                "hmac-secret" => out.hmac_secret = parse::boolean(value)?,
                "credBlob" => out.cred_blob = Some(parse::bytes(value)?),
                "minPinLength" => out.min_pin_length = parse::boolean(value)?,
                _ => {}
            }
        }
        Ok(out)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MakeCredentialRequest {
    /// Exactly 32 bytes; another length is CTAP1_ERR_INVALID_LENGTH.
    pub client_data_hash: [u8; 32],
    pub rp_id: String,
    pub rp_name: Option<String>,
    pub user: PublicKeyCredentialUserEntity,
    /// COSE algorithms of the "public-key" entries, in the RP's order of preference.
    pub algorithms: Vec<i64>,
    pub exclude_list: Vec<PublicKeyCredentialDescriptor>,
    pub extensions: MakeCredentialExtensions,
    pub rk: bool,
    /// `Some(false)` is answered with INVALID_OPTION by the engine.
    pub up: Option<bool>,
    pub uv: bool,
    pub pin_uv_auth_param: Option<Vec<u8>>,
    pub pin_uv_auth_protocol: Option<u8>,
    pub enterprise_attestation: Option<u64>,
}

impl MakeCredentialRequest {
    pub fn parse(params: Option<&Value>) -> Result<Self> {
        let entries = parse::int_keyed_map(params)?;
        let client_data_hash =
            parse::fixed_bytes::<32>(parse::required(parse::member(entries, 1))?)?;

        let rp = parse::map(parse::required(parse::member(entries, 2))?)?;
        let rp_id = parse::text(parse::required(parse::text_member(rp, "id"))?)?;
        let rp_name = parse::optional(parse::text_member(rp, "name"), parse::text)?;

        let user =
            PublicKeyCredentialUserEntity::parse(parse::required(parse::member(entries, 3))?)?;

        let mut algorithms = Vec::new();
        for param in parse::array(parse::required(parse::member(entries, 4))?)? {
            let param = parse::map(param)?;
            let alg = parse::integer(parse::required(parse::text_member(param, "alg"))?)?;
            let kind = parse::text(parse::required(parse::text_member(param, "type"))?)?;
            if kind == "public-key" {
                algorithms.push(alg);
            }
        }

        let exclude_list = parse::optional(
            parse::member(entries, 5),
            PublicKeyCredentialDescriptor::parse_list,
        )?
        .unwrap_or_default();
        let extensions =
            parse::optional(parse::member(entries, 6), MakeCredentialExtensions::parse)?
                .unwrap_or_default();

        let mut rk = false;
        let mut up = None;
        let mut uv = false;
        if let Some(options) = parse::member(entries, 7) {
            for (name, value) in parse_options(options)? {
                match name.as_str() {
                    "rk" => rk = value,
                    "up" => up = Some(value),
                    "uv" => uv = value,
                    _ => {}
                }
            }
        }

        Ok(Self {
            client_data_hash,
            rp_id,
            rp_name,
            user,
            algorithms,
            exclude_list,
            extensions,
            rk,
            up,
            uv,
            pin_uv_auth_param: parse::optional(parse::member(entries, 8), parse::bytes)?,
            pin_uv_auth_protocol: parse::optional(
                parse::member(entries, 9),
                parse::small_unsigned,
            )?,
            enterprise_attestation: parse::optional(parse::member(entries, 10), parse::unsigned)?,
        })
    }
}

/// The makeCredential response `{1: fmt, 2: authData, 3: attStmt}`.
pub fn response(fmt: &str, auth_data: Vec<u8>, att_stmt: Value) -> Value {
    Value::Map(vec![
        (Value::Unsigned(1), Value::Text(fmt.into())),
        (Value::Unsigned(2), Value::Bytes(auth_data)),
        (Value::Unsigned(3), att_stmt),
    ])
}
