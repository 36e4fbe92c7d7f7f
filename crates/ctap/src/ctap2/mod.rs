//! CTAP 2.1 commands (§6): command bytes, request types parsed from [`Value`] with the status
//! codes the spec prescribes, and response builders.
//!
//! Parsing follows one rule set for every command: the parameters must be a map with unsigned
//! integer keys; a required member that is absent is `MissingParameter`; a member of the wrong
//! CBOR type is `CborUnexpectedType`; a well-typed member with an impossible value is
//! `InvalidParameter`. Unknown keys are ignored, as the spec asks for forward compatibility.

pub mod client_pin;
pub mod config;
pub mod cred_mgmt;
pub mod get_assertion;
pub mod get_info;
pub mod make_credential;
mod parse;
pub mod types;

pub use client_pin::ClientPinRequest;
pub use config::ConfigRequest;
pub use cred_mgmt::CredentialManagementRequest;
pub use get_assertion::GetAssertionRequest;
pub use get_info::AuthenticatorInfo;
pub use make_credential::MakeCredentialRequest;
pub use types::{CoseEcdhKey, PublicKeyCredentialDescriptor, PublicKeyCredentialUserEntity};

/// CTAP2 command bytes (the first byte of a CTAPHID_CBOR request).
pub mod command {
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    pub const GET_ASSERTION: u8 = 0x02;
    pub const GET_INFO: u8 = 0x04;
    pub const CLIENT_PIN: u8 = 0x06;
    pub const RESET: u8 = 0x07;
    pub const GET_NEXT_ASSERTION: u8 = 0x08;
    pub const BIO_ENROLLMENT: u8 = 0x09;
    pub const CREDENTIAL_MANAGEMENT: u8 = 0x0A;
    pub const SELECTION: u8 = 0x0B;
    pub const LARGE_BLOBS: u8 = 0x0C;
    pub const CONFIG: u8 = 0x0D;
    pub const BIO_ENROLLMENT_PREVIEW: u8 = 0x40;
    pub const CREDENTIAL_MANAGEMENT_PREVIEW: u8 = 0x41;
}

/// pinUvAuthToken permissions (§6.5.5.7).
pub mod permission {
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    pub const GET_ASSERTION: u8 = 0x02;
    pub const CREDENTIAL_MANAGEMENT: u8 = 0x04;
    pub const BIO_ENROLLMENT: u8 = 0x08;
    pub const LARGE_BLOB_WRITE: u8 = 0x10;
    pub const AUTHENTICATOR_CONFIG: u8 = 0x20;
}

/// COSE algorithm identifiers used by Keyward.
pub mod alg {
    pub const ES256: i64 = -7;
    pub const EDDSA: i64 = -8;
    /// The fixed label of the keyAgreement key (ECDH-ES+HKDF-256), §6.5.6.
    pub const ECDH_ES_HKDF_256: i64 = -25;
}

/// Splits a CTAPHID_CBOR request into its command byte and decoded parameters. An absent
/// parameter block (a bare command byte) yields `None`.
pub fn split_request(
    request: &[u8],
) -> Result<(u8, Option<crate::cbor::Value>), crate::status::StatusCode> {
    let (&command, params) = request
        .split_first()
        .ok_or(crate::status::StatusCode::InvalidLength)?;
    if params.is_empty() {
        return Ok((command, None));
    }
    Ok((command, Some(crate::cbor::decode(params)?)))
}

/// A success response: the OK status byte followed by the encoded map, if any.
pub fn success(body: Option<&crate::cbor::Value>) -> Vec<u8> {
    let mut out = vec![crate::status::StatusCode::Ok.as_u8()];
    if let Some(body) = body {
        out.extend_from_slice(&crate::cbor::encode(body));
    }
    out
}

/// An error response: only the status byte.
pub fn failure(status: crate::status::StatusCode) -> Vec<u8> {
    vec![status.as_u8()]
}

#[cfg(test)]
mod tests;
