//! The relay protocol between `keyward-pair` and a Keyward server: its one definition, used by
//! both ends (the tool and the server's relay), so they cannot drift apart.
//!
//! # Transport
//! One WebSocket per pairing tool, at [`RELAY_PATH`] on the server (`wss://` — or `ws://` on a
//! loopback host only). Every message is one **JSON text frame**: an object whose `type` field names
//! the message (snake_case). CTAP payloads travel inside the JSON as **base64url without padding**;
//! we chose that over binary frames so every message is self-describing, ordering between control
//! and data messages is trivially the frame order, and one set of JSON fixtures
//! (`tests/fixtures/*.json` in this crate) can test both ends. A CTAP message is at most 7,609
//! bytes, so the base64 overhead (a third) is irrelevant next to a network round trip. Binary frames
//! are a protocol error. WebSocket ping/pong frames keep idle connections alive through proxies.
//!
//! # Whole messages, not HID reports
//! The tool terminates CTAP-HID locally (channels, INIT, PING, WINK, reassembly, KEEPALIVE every
//! ~100 ms) and relays only complete CTAP2 requests: `payload` is the command byte followed by the
//! CBOR parameters, exactly the body of a CTAPHID_CBOR request; the reply payload is the status byte
//! followed by the optional CBOR response. Network jitter therefore never trips the host's
//! inter-packet timeouts.
//!
//! # Authentication (on every connection)
//! 1. tool → `hello {version, device_id}`
//! 2. server → `challenge {nonce}` (32 random bytes, fresh per connection)
//! 3. tool → `response {signature}`: ECDSA P-256 / SHA-256, ASN.1 DER, by the device key over
//!    [`auth_message`]`(device_id, nonce)`; the public key was registered by `login`/`activate`.
//! 4. server → `welcome {device_id, principal}` — or `error {code, message}` and close.
//!
//! The signed message is domain-separated and names the device so a signature cannot be replayed
//! as anything else. It does not bind the server's name: the tool only ever talks to the server
//! (and certificate) recorded at login, over TLS, so a man in the middle cannot collect challenges.
//!
//! # Session messages
//! - server → `attach {key_id, session_id, mode, expires_at}`: a key is now connected to this tool
//!   (`mode` = `delegated` for an admin's registration-only session, `user` for a user's own key).
//!   A new attach is the key's power cycle. At most one key is attached at a time; a second attach
//!   replaces the first.
//! - server → `detach {session_id, reason}`: the key disappears (Disconnect, expiry, logout,
//!   revocation).
//! - tool → `ctap {id, payload, user_present}`: one CTAP2 request; `id` is chosen by the tool,
//!   unique per connection. `user_present` says the local user confirmed the operation (or the tool
//!   runs with `--presence auto`); the server decides what that is worth under its policy.
//! - server → `keepalive {id, status}` (optional hints: `processing` or `up_needed`), then exactly
//!   one `ctap_result {id, payload}`.
//! - tool → `cancel {id}`: the host cancelled; the server answers the request with
//!   CTAP2_ERR_KEEPALIVE_CANCEL if it has not finished it yet (the tool has already answered the host).
//! - tool → `logout`: revoke this device; the server answers `logged_out` and closes.
//! - server → `error {code, message}`: a fatal condition for this connection (see [`ErrorCode`]).

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterDeviceRequest {
    /// The uncompressed SEC1 P-256 point (65 bytes), base64url without padding.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(with = "b64")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
            "client" => include_str!("../tests/fixtures/client_messages.json"),
            "server" => include_str!("../tests/fixtures/server_messages.json"),
            _ => include_str!("../tests/fixtures/invalid_messages.json"),
        };
        serde_json::from_str(text).expect("fixture json")
    }

    #[test]
    fn fixtures_parse_and_round_trip() {
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
                "client accepted {v}"
            );
            assert!(
                serde_json::from_value::<ServerMessage>(v.clone()).is_err(),
                "server accepted {v}"
            );
        }
    }

    #[test]
    fn auth_message_is_fixed() {
        assert_eq!(
            auth_message("d", &[1, 2]),
            b"keyward-relay-auth-v1\0d\0\x01\x02".to_vec()
        );
    }

    #[test]
    fn ctap_message_uses_base64url_without_padding() {
        let m = ClientMessage::Ctap {
            id: 7,
            payload: vec![0x04, 0xff, 0xfe],
            user_present: true,
            key_id: None,
        };
        let json = serde_json::to_string(&m).expect("serialise");
        assert_eq!(
            json,
            r#"{"type":"ctap","id":7,"payload":"BP_-","user_present":true}"#
        );
        assert_eq!(
            serde_json::from_str::<ClientMessage>(&json).expect("parse"),
            m
        );
    }

    #[test]
    fn padded_or_standard_base64_is_rejected() {
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"ctap","id":1,"payload":"BP/+"}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"ctap","id":1,"payload":"BA=="}"#)
                .is_err()
        );
    }

    #[test]
    fn unknown_message_type_is_rejected() {
        assert!(serde_json::from_str::<ServerMessage>(r#"{"type":"format_disk"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"hello","version":1}"#).is_err());
    }

    #[test]
    fn auth_message_separates_device_and_nonce() {
        // Without the separator, device "ab" + nonce "c…" would equal device "a" + nonce "bc…".
        assert_ne!(auth_message("ab", b"c"), auth_message("a", b"bc"));
        assert!(auth_message("d", &[1; 32]).starts_with(b"keyward-relay-auth-v1\0d\0"));
    }

    #[test]
    fn fatal_error_codes() {
        assert!(ErrorCode::Revoked.is_fatal());
        assert!(ErrorCode::BadSignature.is_fatal());
        assert!(!ErrorCode::Unavailable.is_fatal());
        assert!(!ErrorCode::Protocol.is_fatal());
    }

    #[test]
    fn activation_code_is_not_in_debug_output() {
        let r = ActivateRequest {
            code: "SECRET-CODE".into(),
            public_key: vec![4; 65],
            name: "pc".into(),
        };
        assert!(!format!("{r:?}").contains("SECRET"));
    }
}
