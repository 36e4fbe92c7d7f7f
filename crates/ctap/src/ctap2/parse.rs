//! Typed access to CBOR members with CTAP's error codes.

use crate::cbor::Value;
use crate::status::StatusCode;

pub(crate) type Result<T> = std::result::Result<T, StatusCode>;

/// The parameters of a command: a map whose keys are all unsigned integers.
pub(crate) fn int_keyed_map(value: Option<&Value>) -> Result<&[(Value, Value)]> {
    let value = value.ok_or(StatusCode::MissingParameter)?;
    let Value::Map(entries) = value else {
        return Err(StatusCode::CborUnexpectedType);
    };
    if entries
        .iter()
        .any(|(k, _)| !matches!(k, Value::Unsigned(_)))
    {
        return Err(StatusCode::CborUnexpectedType);
    }
    Ok(entries)
}

pub(crate) fn member(entries: &[(Value, Value)], key: u64) -> Option<&Value> {
    entries
        .iter()
        .find(|(k, _)| matches!(k, Value::Unsigned(n) if *n == key))
        .map(|(_, v)| v)
}

pub(crate) fn text_member<'a>(entries: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
        .map(|(_, v)| v)
}

pub(crate) fn required(value: Option<&Value>) -> Result<&Value> {
    value.ok_or(StatusCode::MissingParameter)
}

pub(crate) fn bytes(value: &Value) -> Result<Vec<u8>> {
    match value {
        Value::Bytes(b) => Ok(b.clone()),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

/// A byte string of exactly `N` bytes; any other length is CTAP1_ERR_INVALID_LENGTH, as hardware
/// keys answer a clientDataHash that is not 32 bytes (SoloKeys' `parse_fixed_byte_string`).
pub(crate) fn fixed_bytes<const N: usize>(value: &Value) -> Result<[u8; N]> {
    match value {
        Value::Bytes(b) => <[u8; N]>::try_from(b.as_slice()).map_err(|_| StatusCode::InvalidLength),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

pub(crate) fn text(value: &Value) -> Result<String> {
    match value {
        Value::Text(t) => Ok(t.clone()),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

pub(crate) fn unsigned(value: &Value) -> Result<u64> {
    match value {
        Value::Unsigned(n) => Ok(*n),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

pub(crate) fn integer(value: &Value) -> Result<i64> {
    match value {
        Value::Unsigned(n) => i64::try_from(*n).map_err(|_| StatusCode::InvalidParameter),
        Value::Negative(n) => Ok(*n),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

pub(crate) fn boolean(value: &Value) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

pub(crate) fn array(value: &Value) -> Result<&[Value]> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

pub(crate) fn map(value: &Value) -> Result<&[(Value, Value)]> {
    match value {
        Value::Map(entries) => Ok(entries),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

/// An unsigned integer that must fit in a byte (protocol numbers, sub-commands, permissions).
pub(crate) fn small_unsigned(value: &Value) -> Result<u8> {
    u8::try_from(unsigned(value)?).map_err(|_| StatusCode::InvalidParameter)
}

/// Applies `f` to an optional member.
pub(crate) fn optional<T>(
    value: Option<&Value>,
    f: impl FnOnce(&Value) -> Result<T>,
) -> Result<Option<T>> {
    value.map(f).transpose()
}
