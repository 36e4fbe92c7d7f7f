//! Canonical CTAP2 CBOR.
//!
//! CTAP 2.1 §8 requires the *CTAP2 canonical CBOR encoding form*: shortest integer and length
//! encodings, definite lengths only, no tags, no floats, and map keys sorted by major type, then by
//! encoded length, then bytewise (so integer keys run `1, 3, -1, -2, -3` and text keys
//! `"rk" < "up" < "plat"`). A Rust `BTreeMap<i64, _>` gets this wrong (it puts negative keys
//! first), and general-purpose CBOR crates keep insertion order, so [`encode`] sorts every map by
//! the encoded bytes of its keys itself.
//!
//! Decoding is deliberately strict and checks the same rules from the other side: shortest
//! lengths, definite lengths, keys strictly increasing in canonical order (which also refuses
//! duplicates), no tags, floats or `undefined`, nothing after the item, and bounded nesting. So
//! `encode(decode(x)) == x` for every accepted `x`. The reader is our own rather than `sk-cbor`'s:
//! that crate's `Value` is opaque (converting out of it costs a clone per level) and it orders
//! array- and map-typed keys semantically rather than by encoding; its reader serves as an
//! independent oracle in the property tests instead.

use crate::status::StatusCode;

/// The deepest container nesting accepted in a request, counted as in OpenSK
/// (`MAX_CBOR_NESTING_DEPTH = 4`): a scalar may sit inside at most four containers below the
/// top-level item. The deepest legitimate request, getAssertion with hmac-secret
/// (`{4: {"hmac-secret": {1: {1: 2, ...}}}}`), needs exactly that.
pub const MAX_NESTING_DEPTH: i8 = 4;

/// A CBOR data item of the subset CTAP uses.
///
/// `Negative` carries the actual (negative) value, e.g. `Negative(-7)` for ES256. Values outside
/// `i64` are refused by [`decode`], as no CTAP field needs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Unsigned(u64),
    Negative(i64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Bool(bool),
    Null,
}

impl Value {
    /// An integer value: `Unsigned` for non-negative numbers, `Negative` otherwise.
    pub fn int(i: i64) -> Value {
        if i >= 0 {
            Value::Unsigned(i.unsigned_abs())
        } else {
            Value::Negative(i)
        }
    }

    /// A text value.
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }

    /// A byte-string value.
    pub fn bytes(b: impl Into<Vec<u8>>) -> Value {
        Value::Bytes(b.into())
    }

    /// The entries of a map, in the order they were decoded or built.
    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value stored under an integer key of a map (`None` if `self` is not a map or the key
    /// is absent).
    pub fn map_get_int(&self, key: i64) -> Option<&Value> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_int() == Some(key))
            .map(|(_, v)| v)
    }

    /// The value stored under a text key of a map.
    pub fn map_get_text(&self, key: &str) -> Option<&Value> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_text() == Some(key))
            .map(|(_, v)| v)
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The value as an `i64` if it is an integer that fits.
    pub fn as_int(&self) -> Option<i64> {
        match *self {
            Value::Unsigned(u) => i64::try_from(u).ok(),
            Value::Negative(n) => Some(n),
            _ => None,
        }
    }

    /// The value as a `u64` if it is an unsigned integer.
    pub fn as_unsigned(&self) -> Option<u64> {
        match *self {
            Value::Unsigned(u) => Some(u),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// Like [`Value::as_map`], but with the CTAP error a parser returns for a mistyped field.
    pub fn expect_map(&self) -> Result<&[(Value, Value)], StatusCode> {
        self.as_map().ok_or(StatusCode::CborUnexpectedType)
    }

    /// Like [`Value::as_bytes`], but with the CTAP error for a mistyped field.
    pub fn expect_bytes(&self) -> Result<&[u8], StatusCode> {
        self.as_bytes().ok_or(StatusCode::CborUnexpectedType)
    }

    /// Like [`Value::as_text`], but with the CTAP error for a mistyped field.
    pub fn expect_text(&self) -> Result<&str, StatusCode> {
        self.as_text().ok_or(StatusCode::CborUnexpectedType)
    }

    /// Like [`Value::as_int`], but with the CTAP error for a mistyped field.
    pub fn expect_int(&self) -> Result<i64, StatusCode> {
        self.as_int().ok_or(StatusCode::CborUnexpectedType)
    }

    /// Like [`Value::as_unsigned`], but with the CTAP error for a mistyped field.
    pub fn expect_unsigned(&self) -> Result<u64, StatusCode> {
        self.as_unsigned().ok_or(StatusCode::CborUnexpectedType)
    }

    /// Like [`Value::as_bool`], but with the CTAP error for a mistyped field.
    pub fn expect_bool(&self) -> Result<bool, StatusCode> {
        self.as_bool().ok_or(StatusCode::CborUnexpectedType)
    }

    /// Like [`Value::as_array`], but with the CTAP error for a mistyped field.
    pub fn expect_array(&self) -> Result<&[Value], StatusCode> {
        self.as_array().ok_or(StatusCode::CborUnexpectedType)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Bytes(b)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::int(i)
    }
}

/// A CBOR map with integer keys, the shape of every CTAP request and response.
/// The order of `entries` does not matter: [`encode`] sorts canonically.
pub fn int_map(entries: Vec<(i64, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::int(k), v))
            .collect(),
    )
}

/// A CBOR map with text keys (options, extensions, WebAuthn entities).
pub fn text_map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::text(k), v))
            .collect(),
    )
}

/// Encode `value` in CTAP2 canonical form.
///
/// Map keys are sorted by major type, encoded length, then bytes. A map built with the same key
/// twice is a programming error; the first entry is kept and the later ones are dropped, so the
/// output is always valid canonical CBOR that [`decode`] accepts.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

fn write_head(major: u8, argument: u64, out: &mut Vec<u8>) {
    let major = major << 5;
    // Shortest form: the argument inline below 24, else the smallest of 1, 2, 4 or 8 bytes.
    // The `as` casts below only ever narrow values already checked to fit.
    if argument < 24 {
        out.push(major | argument as u8);
    } else if argument <= u64::from(u8::MAX) {
        out.extend_from_slice(&[major | 24, argument as u8]);
    } else if argument <= u64::from(u16::MAX) {
        out.push(major | 25);
        out.extend_from_slice(&(argument as u16).to_be_bytes());
    } else if argument <= u64::from(u32::MAX) {
        out.push(major | 26);
        out.extend_from_slice(&(argument as u32).to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&argument.to_be_bytes());
    }
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Unsigned(u) => write_head(0, *u, out),
        // CBOR stores -1 - n; for n < 0 that is |n| - 1, which always fits in u64.
        Value::Negative(n) => write_head(1, (n + 1).unsigned_abs(), out),
        Value::Bytes(b) => {
            write_head(2, b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Value::Text(t) => {
            write_head(3, t.len() as u64, out);
            out.extend_from_slice(t.as_bytes());
        }
        Value::Array(items) => {
            write_head(4, items.len() as u64, out);
            for item in items {
                write(item, out);
            }
        }
        Value::Map(entries) => {
            let mut encoded: Vec<(Vec<u8>, &Value)> =
                entries.iter().map(|(k, v)| (encode(k), v)).collect();
            // Stable sort, so with duplicate keys the first one stays first and survives dedup.
            encoded.sort_by(|(a, _), (b, _)| canonical_key_order(a, b));
            encoded.dedup_by(|later, earlier| later.0 == earlier.0);
            write_head(5, encoded.len() as u64, out);
            for (key, v) in encoded {
                out.extend_from_slice(&key);
                write(v, out);
            }
        }
        Value::Bool(false) => out.push(0xF4),
        Value::Bool(true) => out.push(0xF5),
        Value::Null => out.push(0xF6),
    }
}

/// CTAP2 canonical key order on encoded keys: major type, then encoded length, then bytes.
fn canonical_key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let major = |k: &[u8]| k.first().map(|b| b >> 5);
    major(a)
        .cmp(&major(b))
        .then(a.len().cmp(&b.len()))
        .then_with(|| a.cmp(b))
}

/// Decode one CBOR data item that must be the whole of `bytes` and in canonical form.
///
/// Every refusal is [`StatusCode::InvalidCbor`]: malformed or incomplete data, trailing bytes,
/// non-shortest encodings, indefinite lengths, keys out of canonical order or repeated, tags,
/// floats, `undefined` and other simple values, negative integers below `i64::MIN`, invalid
/// UTF-8, and nesting deeper than [`MAX_NESTING_DEPTH`]. (Type mismatches *inside* a well-formed
/// message are the parser's business and map to [`StatusCode::CborUnexpectedType`], see
/// `Value::expect_*`.)
///
/// Because every length, key order and simple value is checked against canonical form, an
/// accepted input always satisfies `encode(&decode(x)?) == x`.
pub fn decode(bytes: &[u8]) -> Result<Value, StatusCode> {
    let mut reader = Reader {
        data: bytes,
        pos: 0,
    };
    let value = reader.item(MAX_NESTING_DEPTH)?;
    if reader.pos != bytes.len() {
        return Err(StatusCode::InvalidCbor);
    }
    Ok(value)
}

/// A strict, recursive-descent reader. Recursion is bounded by the nesting limit, so hostile
/// input cannot exhaust the stack.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

const INVALID: StatusCode = StatusCode::InvalidCbor;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StatusCode> {
        let end = self.pos.checked_add(n).ok_or(INVALID)?;
        let slice = self.data.get(self.pos..end).ok_or(INVALID)?;
        self.pos = end;
        Ok(slice)
    }

    /// Reads an item head: (major type, additional info, argument), refusing non-shortest forms.
    fn head(&mut self) -> Result<(u8, u8, u64), StatusCode> {
        let first = self.take(1)?[0];
        let (major, info) = (first >> 5, first & 0x1F);
        let (width, minimum) = match info {
            0..=23 => return Ok((major, info, u64::from(info))),
            24 => (1, 24),
            25 => (2, 0x100),
            26 => (4, 0x1_0000),
            27 => (8, 0x1_0000_0000),
            // 28..=30 are reserved; 31 is an indefinite length, which CTAP forbids.
            _ => return Err(INVALID),
        };
        let argument = self
            .take(width)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        // Major type 7 uses info 24..27 for simple values and floats, both refused below, so
        // the shortest-form check only needs to hold for the other types.
        if argument < minimum && major != 7 {
            return Err(INVALID);
        }
        Ok((major, info, argument))
    }

    fn length(&self, argument: u64) -> Result<usize, StatusCode> {
        let len = usize::try_from(argument).map_err(|_| INVALID)?;
        // Every element takes at least one byte, so a count beyond the input is malformed;
        // checking early keeps a hostile count from driving a long loop.
        if len > self.data.len() - self.pos {
            return Err(INVALID);
        }
        Ok(len)
    }

    fn item(&mut self, depth: i8) -> Result<Value, StatusCode> {
        if depth < 0 {
            return Err(INVALID);
        }
        let (major, info, argument) = self.head()?;
        match major {
            0 => Ok(Value::Unsigned(argument)),
            1 => {
                let magnitude = i64::try_from(argument).map_err(|_| INVALID)?;
                Ok(Value::Negative(-1 - magnitude))
            }
            2 => {
                let len = self.length(argument)?;
                Ok(Value::Bytes(self.take(len)?.to_vec()))
            }
            3 => {
                let len = self.length(argument)?;
                let text = std::str::from_utf8(self.take(len)?).map_err(|_| INVALID)?;
                Ok(Value::Text(text.to_owned()))
            }
            4 => {
                let count = self.length(argument)?;
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.item(depth - 1)?);
                }
                Ok(Value::Array(items))
            }
            5 => {
                let count = self.length(argument)?;
                let mut entries = Vec::new();
                let mut previous_key: Option<&[u8]> = None;
                for _ in 0..count {
                    let key_start = self.pos;
                    let key = self.item(depth - 1)?;
                    // The key was read strictly, so its raw bytes are its canonical encoding.
                    let raw_key = &self.data[key_start..self.pos];
                    if let Some(previous) = previous_key
                        && canonical_key_order(previous, raw_key) != std::cmp::Ordering::Less
                    {
                        return Err(INVALID);
                    }
                    previous_key = Some(raw_key);
                    let value = self.item(depth - 1)?;
                    entries.push((key, value));
                }
                Ok(Value::Map(entries))
            }
            // Tags never appear in CTAP messages.
            6 => Err(INVALID),
            _ => match info {
                20 => Ok(Value::Bool(false)),
                21 => Ok(Value::Bool(true)),
                22 => Ok(Value::Null),
                // undefined, other simple values and floats.
                _ => Err(INVALID),
            },
        }
    }
}

#[cfg(test)]
mod tests;
