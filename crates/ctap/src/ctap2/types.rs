//! WebAuthn structures shared by several commands.

use super::parse::{self, Result};
use crate::cbor::Value;
use crate::status::StatusCode;

/// Maximum user handle length (WebAuthn §5.4.3).
pub const MAX_USER_ID_LENGTH: usize = 64;

/// PublicKeyCredentialDescriptor `{type, id}`. Descriptors of unknown types are kept with
/// `is_public_key = false` so callers can skip them, as WebAuthn requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyCredentialDescriptor {
    pub id: Vec<u8>,
    pub is_public_key: bool,
}

impl PublicKeyCredentialDescriptor {
    pub fn parse(value: &Value) -> Result<Self> {
        let entries = parse::map(value)?;
        let kind = parse::text(parse::required(parse::text_member(entries, "type"))?)?;
        let id = parse::bytes(parse::required(parse::text_member(entries, "id"))?)?;
        Ok(Self {
            id,
            is_public_key: kind == "public-key",
        })
    }

    pub fn parse_list(value: &Value) -> Result<Vec<Self>> {
        parse::array(value)?.iter().map(Self::parse).collect()
    }

    pub fn to_value(&self) -> Value {
        Value::Map(vec![
            (Value::Text("id".into()), Value::Bytes(self.id.clone())),
            (Value::Text("type".into()), Value::Text("public-key".into())),
        ])
    }
}

/// PublicKeyCredentialUserEntity `{id, name?, displayName?}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyCredentialUserEntity {
    pub id: Vec<u8>,
    pub name: Option<String>,
    pub display_name: Option<String>,
}

impl PublicKeyCredentialUserEntity {
    pub fn parse(value: &Value) -> Result<Self> {
        let entries = parse::map(value)?;
        let id = parse::bytes(parse::required(parse::text_member(entries, "id"))?)?;
        if id.len() > MAX_USER_ID_LENGTH {
            return Err(StatusCode::InvalidLength);
        }
        let name = parse::optional(parse::text_member(entries, "name"), parse::text)?;
        let display_name =
            parse::optional(parse::text_member(entries, "displayName"), parse::text)?;
        Ok(Self {
            id,
            name,
            display_name,
        })
    }

    /// The user entity as returned by getAssertion and credentialManagement. `with_names` is
    /// false where the spec returns only the id (getAssertion without UV).
    pub fn to_value(&self, with_names: bool) -> Value {
        let mut entries = vec![(Value::Text("id".into()), Value::Bytes(self.id.clone()))];
        if with_names {
            if let Some(name) = &self.name {
                entries.push((Value::Text("name".into()), Value::Text(name.clone())));
            }
            if let Some(display_name) = &self.display_name {
                entries.push((
                    Value::Text("displayName".into()),
                    Value::Text(display_name.clone()),
                ));
            }
        }
        Value::Map(entries)
    }
}

/// The platform's keyAgreement key: a COSE_Key `{1: 2, 3: -25, -1: 1, -2: x, -3: y}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoseEcdhKey {
    pub x: [u8; 32],
    pub y: [u8; 32],
}

impl CoseEcdhKey {
    pub fn parse(value: &Value) -> Result<Self> {
        let entries = parse::map(value)?;
        let get = |label: i64| {
            entries
                .iter()
                .find(|(k, _)| parse::integer(k).ok() == Some(label))
                .map(|(_, v)| v)
        };
        let kty = parse::integer(parse::required(get(1))?)?;
        let alg = parse::integer(parse::required(get(3))?)?;
        let crv = parse::integer(parse::required(get(-1))?)?;
        let x = parse::bytes(parse::required(get(-2))?)?;
        let y = parse::bytes(parse::required(get(-3))?)?;
        // alg is a fixed label; platforms send -25, but some send other values, so only the
        // curve and key type decide whether the point is usable.
        let _ = alg;
        if kty != 2 || crv != 1 {
            return Err(StatusCode::InvalidParameter);
        }
        let x: [u8; 32] = x.try_into().map_err(|_| StatusCode::InvalidParameter)?;
        let y: [u8; 32] = y.try_into().map_err(|_| StatusCode::InvalidParameter)?;
        Ok(Self { x, y })
    }

    pub fn to_value(&self) -> Value {
        Value::Map(vec![
            (Value::Unsigned(1), Value::Unsigned(2)),
            (
                Value::Unsigned(3),
                Value::Negative(super::alg::ECDH_ES_HKDF_256),
            ),
            (Value::Negative(-1), Value::Unsigned(1)),
            (Value::Negative(-2), Value::Bytes(self.x.to_vec())),
            (Value::Negative(-3), Value::Bytes(self.y.to_vec())),
        ])
    }

    /// The SEC1 uncompressed point `04 ‖ x ‖ y`.
    pub fn to_sec1(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[0] = 0x04;
        out[1..33].copy_from_slice(&self.x);
        out[33..].copy_from_slice(&self.y);
        out
    }
}

/// Parses an options map (`{"rk": bool, "up": bool, "uv": bool}`); values must be booleans.
pub(crate) fn parse_options(value: &Value) -> Result<Vec<(String, bool)>> {
    parse::map(value)?
        .iter()
        .map(|(k, v)| Ok((parse::text(k)?, parse::boolean(v)?)))
        .collect()
}
