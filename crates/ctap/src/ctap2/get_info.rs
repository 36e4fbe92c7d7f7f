//! authenticatorGetInfo (0x04), §6.4: the response builder.

use crate::cbor::Value;

/// What an authenticator advertises. Every field is emitted; options in `options` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatorInfo {
    pub versions: Vec<String>,
    pub extensions: Vec<String>,
    pub aaguid: [u8; 16],
    pub options: Vec<(String, bool)>,
    pub max_msg_size: u64,
    pub pin_uv_auth_protocols: Vec<u8>,
    pub max_credential_count_in_list: u64,
    pub max_credential_id_length: u64,
    pub transports: Vec<String>,
    /// COSE algorithm ids, each advertised as `{alg, type: "public-key"}`.
    pub algorithms: Vec<i64>,
    pub force_pin_change: bool,
    pub min_pin_length: u8,
    pub firmware_version: u64,
    pub max_cred_blob_length: u64,
    pub max_rp_ids_for_set_min_pin_length: u64,
    pub remaining_discoverable_credentials: u64,
}

fn texts(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| Value::Text(s.clone())).collect())
}

impl AuthenticatorInfo {
    pub fn to_value(&self) -> Value {
        let u = Value::Unsigned;
        Value::Map(vec![
            (u(0x01), texts(&self.versions)),
            (u(0x02), texts(&self.extensions)),
            (u(0x03), Value::Bytes(self.aaguid.to_vec())),
            (
                u(0x04),
                Value::Map(
                    self.options
                        .iter()
                        .map(|(k, v)| (Value::Text(k.clone()), Value::Bool(*v)))
                        .collect(),
                ),
            ),
            (u(0x05), u(self.max_msg_size)),
            (
                u(0x06),
                Value::Array(
                    self.pin_uv_auth_protocols
                        .iter()
                        .map(|p| u(u64::from(*p)))
                        .collect(),
                ),
            ),
            (u(0x07), u(self.max_credential_count_in_list)),
            (u(0x08), u(self.max_credential_id_length)),
            (u(0x09), texts(&self.transports)),
            (
                u(0x0A),
                Value::Array(
                    self.algorithms
                        .iter()
                        .map(|alg| {
                            Value::Map(vec![
                                (Value::Text("alg".into()), Value::int(*alg)),
                                (Value::Text("type".into()), Value::Text("public-key".into())),
                            ])
                        })
                        .collect(),
                ),
            ),
            (u(0x0C), Value::Bool(self.force_pin_change)),
            (u(0x0D), u(u64::from(self.min_pin_length))),
            (u(0x0E), u(self.firmware_version)),
            (u(0x0F), u(self.max_cred_blob_length)),
            (u(0x10), u(self.max_rp_ids_for_set_min_pin_length)),
            (u(0x14), u(self.remaining_discoverable_credentials)),
        ])
    }
}
