//! The relay protocol's wire types, server side. The protocol is specified in the pairing tool's
//! `keyward_pair::protocol` module; these are the same serde structs, duplicated so the server does
//! not pull the tool's network client into its dependencies. Both sides are tested against the
//! JSON fixtures in `crates/pair/tests/fixtures/relay/`.
#![allow(dead_code)] // some constants and variants are only used by the tool side

use serde::{Deserialize, Serialize};

/// The relay protocol version spoken by this tool.
pub const PROTOCOL_VERSION: u32 = 1;

/// Where the relay WebSocket lives on a Keyward server.
pub const RELAY_PATH: &str = "/api/v1/relay";

/// Where an admin's tool registers its device key (bearer API token).
pub const REGISTER_DEVICE_PATH: &str = "/api/v1/pair/devices";

/// Where a user's tool registers its device key with a one-time activation code.
pub const ACTIVATE_PATH: &str = "/api/v1/pair/activate";

/// Length of the server's challenge nonce in bytes.
pub const NONCE_LEN: usize = 32;

/// The domain-separation prefix of the signed authentication message.
const AUTH_DOMAIN: &[u8] = b"keyward-relay-auth-v1\0";

/// The bytes the device key signs to answer a challenge.
pub fn auth_message(device_id: &str, nonce: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_DOMAIN.len() + device_id.len() + 1 + nonce.len());
    m.extend_from_slice(AUTH_DOMAIN);
    m.extend_from_slice(device_id.as_bytes());
    m.push(0);
    m.extend_from_slice(nonce);
    m
}

/// Messages from the pairing tool to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Hello {
        version: u32,
        device_id: String,
    },
    Response {
        #[serde(with = "b64")]
        signature: Vec<u8>,
    },
    Ctap {
        id: u64,
        #[serde(with = "b64")]
        payload: Vec<u8>,
        #[serde(default)]
        user_present: bool,
        /// The key the tool believes it shows (from `attach`); the server refuses the request if
        /// another key is attached. Optional for tools that predate it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
    },
    Cancel {
        id: u64,
    },
    Logout,
}

/// Messages from the server to the pairing tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Challenge {
        #[serde(with = "b64")]
        nonce: Vec<u8>,
    },
    Welcome {
        device_id: String,
        principal: Principal,
    },
    Attach {
        key_id: String,
        session_id: String,
        mode: SessionMode,
        /// RFC 3339; absent for a user's own key, which does not expire.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    Detach {
        session_id: String,
        reason: String,
    },
    CtapResult {
        id: u64,
        #[serde(with = "b64")]
        payload: Vec<u8>,
    },
    Keepalive {
        id: u64,
        status: KeepaliveStatus,
    },
    LoggedOut,
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Who a device belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    Admin { id: String, email: String },
    User { id: String, upn: String },
}

/// What a connected key may do; the server enforces it, the tool only displays it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// An admin registering passkeys for a user: registration only, time-limited, audited.
    Delegated,
    /// A user's own key on their own PC.
    User,
}

/// A progress hint for a pending request, turned into CTAPHID_KEEPALIVE status bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepaliveStatus {
    Processing,
    UpNeeded,
}

impl KeepaliveStatus {
    /// The CTAPHID_KEEPALIVE status byte.
    pub fn hid_status(self) -> u8 {
        match self {
            KeepaliveStatus::Processing => 1,
            KeepaliveStatus::UpNeeded => 2,
        }
    }
}

/// Why the server refused or ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The device id is not registered (never was, or the server's database was replaced).
    UnknownDevice,
    /// The device was revoked (logout, or an admin revoked it from the API).
    Revoked,
    /// The challenge signature did not verify with the registered public key.
    BadSignature,
    /// The tool speaks a protocol version the server does not.
    UnsupportedVersion,
    /// A malformed or unexpected message.
    Protocol,
    /// The server cannot serve right now (database or vault unavailable); retry later.
    Unavailable,
}

impl ErrorCode {
    /// True when retrying the same connection cannot succeed: the tool stops and says why.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::UnknownDevice
                | ErrorCode::Revoked
                | ErrorCode::BadSignature
                | ErrorCode::UnsupportedVersion
        )
    }
}

/// Registration request body for [`REGISTER_DEVICE_PATH`] (with a bearer API token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisterDeviceRequest {
    /// The uncompressed SEC1 P-256 point (65 bytes), base64url without padding.
    #[serde(with = "b64")]
    #[schema(value_type = String)]
    pub public_key: Vec<u8>,
    /// A label shown in the panel, e.g. the host name.
    pub name: String,
}

/// Activation request body for [`ACTIVATE_PATH`]. The code is secret: this type prints it redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateRequest {
    pub code: String,
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    pub name: String,
}

impl std::fmt::Debug for ActivateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivateRequest")
            .field("code", &"<redacted>")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The server's answer to a registration or activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceRegistered {
    pub device_id: String,
    pub principal: Principal,
}

/// serde helper: bytes as base64url without padding.
pub mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures(name: &str) -> Vec<serde_json::Value> {
        let text = match name {
            "client" => include_str!("../../../pair/tests/fixtures/relay/client_messages.json"),
            "server" => include_str!("../../../pair/tests/fixtures/relay/server_messages.json"),
            _ => include_str!("../../../pair/tests/fixtures/relay/invalid_messages.json"),
        };
        serde_json::from_str(text).expect("fixture json")
    }

    #[test]
    fn same_wire_format_as_the_tool() {
        for v in fixtures("client") {
            let m: ClientMessage =
                serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(serde_json::to_value(&m).expect("json"), v);
        }
        for v in fixtures("server") {
            let m: ServerMessage =
                serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(serde_json::to_value(&m).expect("json"), v);
        }
        for v in fixtures("invalid") {
            assert!(
                serde_json::from_value::<ClientMessage>(v.clone()).is_err(),
                "{v}"
            );
            assert!(
                serde_json::from_value::<ServerMessage>(v.clone()).is_err(),
                "{v}"
            );
        }
    }

    #[test]
    fn auth_message_matches_the_tool() {
        assert_eq!(
            auth_message("d", &[1, 2]),
            b"keyward-relay-auth-v1\0d\0\x01\x02".to_vec()
        );
    }
}
