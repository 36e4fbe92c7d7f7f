//! authenticatorGetAssertion (0x02) and authenticatorGetNextAssertion (0x08), §6.2–6.3.

use super::parse::{self, Result};
use super::types::{
    CoseEcdhKey, PublicKeyCredentialDescriptor, PublicKeyCredentialUserEntity, parse_options,
};
use crate::cbor::Value;
use crate::status::StatusCode;

/// hmac-secret getAssertion input `{1: keyAgreement, 2: saltEnc, 3: saltAuth, 4: protocol}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HmacSecretInput {
    pub key_agreement: CoseEcdhKey,
    pub salt_enc: Vec<u8>,
    pub salt_auth: Vec<u8>,
    /// Defaults to 1 when absent, as the spec says.
    pub pin_uv_auth_protocol: u8,
}

impl HmacSecretInput {
    pub fn parse(value: &Value) -> Result<Self> {
        let entries = parse::map(value)?;
        let get = |label: u64| {
            entries
                .iter()
                .find(|(k, _)| matches!(k, Value::Unsigned(n) if *n == label))
                .map(|(_, v)| v)
        };
        Ok(Self {
            key_agreement: CoseEcdhKey::parse(parse::required(get(1))?)?,
            salt_enc: parse::bytes(parse::required(get(2))?)?,
            salt_auth: parse::bytes(parse::required(get(3))?)?,
            pin_uv_auth_protocol: parse::optional(get(4), parse::small_unsigned)?.unwrap_or(1),
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetAssertionExtensions {
    pub hmac_secret: Option<HmacSecretInput>,
    pub get_cred_blob: bool,
}

impl GetAssertionExtensions {
    pub fn parse(value: &Value) -> Result<Self> {
        let mut out = Self::default();
        for (key, value) in parse::map(value)? {
            match parse::text(key)?.as_str() {
                "hmac-secret" => out.hmac_secret = Some(HmacSecretInput::parse(value)?),
                "credBlob" => out.get_cred_blob = parse::boolean(value)?,
                _ => {}
            }
        }
        Ok(out)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetAssertionRequest {
    pub rp_id: String,
    /// Exactly 32 bytes; another length is CTAP1_ERR_INVALID_LENGTH.
    pub client_data_hash: [u8; 32],
    pub allow_list: Vec<PublicKeyCredentialDescriptor>,
    pub extensions: GetAssertionExtensions,
    /// Defaults to true.
    pub up: bool,
    pub uv: bool,
    /// `rk` in getAssertion options is answered with UNSUPPORTED_OPTION by the engine.
    pub rk: bool,
    pub pin_uv_auth_param: Option<Vec<u8>>,
    pub pin_uv_auth_protocol: Option<u8>,
}

impl GetAssertionRequest {
    pub fn parse(params: Option<&Value>) -> Result<Self> {
        let entries = parse::int_keyed_map(params)?;
        let rp_id = parse::text(parse::required(parse::member(entries, 1))?)?;
        let client_data_hash =
            parse::fixed_bytes::<32>(parse::required(parse::member(entries, 2))?)?;
        let allow_list = parse::optional(
            parse::member(entries, 3),
            PublicKeyCredentialDescriptor::parse_list,
        )?
        .unwrap_or_default();
        let extensions = parse::optional(parse::member(entries, 4), GetAssertionExtensions::parse)?
            .unwrap_or_default();
        let (mut up, mut uv, mut rk) = (true, false, false);
        if let Some(options) = parse::member(entries, 5) {
            for (name, value) in parse_options(options)? {
                match name.as_str() {
                    "up" => up = value,
                    "uv" => uv = value,
                    "rk" => rk = value,
                    _ => {}
                }
            }
        }
        Ok(Self {
            rp_id,
            client_data_hash,
            allow_list,
            extensions,
            up,
            uv,
            rk,
            pin_uv_auth_param: parse::optional(parse::member(entries, 6), parse::bytes)?,
            pin_uv_auth_protocol: parse::optional(
                parse::member(entries, 7),
                parse::small_unsigned,
            )?,
        })
    }
}

/// One assertion: `{1: credential, 2: authData, 3: signature, 4: user?, 5: numberOfCredentials?}`.
pub fn response(
    credential_id: &[u8],
    auth_data: Vec<u8>,
    signature: Vec<u8>,
    user: Option<(&PublicKeyCredentialUserEntity, bool)>,
    number_of_credentials: Option<usize>,
) -> Value {
    let mut entries = vec![
        (
            Value::Unsigned(1),
            PublicKeyCredentialDescriptor {
                id: credential_id.to_vec(),
                is_public_key: true,
            }
            .to_value(),
        ),
        (Value::Unsigned(2), Value::Bytes(auth_data)),
        (Value::Unsigned(3), Value::Bytes(signature)),
    ];
    if let Some((user, with_names)) = user {
        entries.push((Value::Unsigned(4), user.to_value(with_names)));
    }
    if let Some(n) = number_of_credentials {
        entries.push((Value::Unsigned(5), Value::Unsigned(n as u64)));
    }
    Value::Map(entries)
}

/// Guards against a platform sending an empty RP id, which cannot match any credential.
pub fn check_rp_id(rp_id: &str) -> Result<()> {
    if rp_id.is_empty() {
        return Err(StatusCode::InvalidParameter);
    }
    Ok(())
}
