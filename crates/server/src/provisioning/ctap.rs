//! The CTAP messages provisioning sends to a user's key, and reading their answers: the server is
//! the WebAuthn client here, so it builds makeCredential from Graph's creation options and turns
//! the response into a WebAuthn attestationObject.

use keyward_ctap::cbor::{self, Value, int_map, text_map};
use keyward_entra::AuthenticatorRequest;

/// authenticatorMakeCredential.
const MAKE_CREDENTIAL: u8 = 0x01;
/// authenticatorGetAssertion.
const GET_ASSERTION: u8 = 0x02;
/// CTAP2_OK.
const OK: u8 = 0x00;
/// CTAP2_ERR_CREDENTIAL_EXCLUDED.
pub const CREDENTIAL_EXCLUDED: u8 = 0x19;

/// Why the key's answer cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CtapAnswerError {
    #[error("the key answered with CTAP status 0x{0:02x}")]
    Status(u8),
    #[error("the key's answer is malformed: {0}")]
    Malformed(&'static str),
}

/// The parts of a makeCredential answer Graph needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    pub credential_id: Vec<u8>,
    pub aaguid: [u8; 16],
    /// The WebAuthn attestationObject (text keys `fmt`, `attStmt`, `authData`).
    pub attestation_object: Vec<u8>,
    pub auth_data: Vec<u8>,
}

fn descriptor(id: &[u8]) -> Value {
    text_map(vec![
        ("id", Value::bytes(id.to_vec())),
        ("type", Value::text("public-key")),
    ])
}

/// makeCredential for Entra: resident, UV (the server's audited authorisation), credProtect 1,
/// hmac-secret, the exclude list from the options.
pub fn make_credential_request(r: &AuthenticatorRequest) -> Vec<u8> {
    let mut rp = vec![("id", Value::text(r.rp_id.clone()))];
    if let Some(name) = &r.rp_name {
        rp.push(("name", Value::text(name.clone())));
    }
    let user = text_map(vec![
        ("id", Value::bytes(r.user_id.clone())),
        ("name", Value::text(r.user_name.clone())),
        ("displayName", Value::text(r.user_display_name.clone())),
    ]);
    let params = r
        .algorithms
        .iter()
        .map(|a| {
            text_map(vec![
                ("alg", Value::int(*a)),
                ("type", Value::text("public-key")),
            ])
        })
        .collect();
    let mut entries = vec![
        (1, Value::bytes(r.client_data_hash.to_vec())),
        (2, text_map(rp)),
        (3, user),
        (4, Value::Array(params)),
    ];
    if !r.exclude_list.is_empty() {
        entries.push((
            5,
            Value::Array(r.exclude_list.iter().map(|id| descriptor(id)).collect()),
        ));
    }
    let mut ext = vec![("credProtect", Value::int(i64::from(r.cred_protect)))];
    if r.hmac_secret {
        ext.push(("hmac-secret", Value::Bool(true)));
    }
    entries.push((6, text_map(ext)));
    entries.push((
        7,
        text_map(vec![
            ("rk", Value::Bool(r.resident_key)),
            ("uv", Value::Bool(r.user_verification)),
        ]),
    ));
    let mut out = vec![MAKE_CREDENTIAL];
    out.extend(cbor::encode(&int_map(entries)));
    out
}

fn body(response: &[u8]) -> Result<Value, CtapAnswerError> {
    let (&status, rest) = response
        .split_first()
        .ok_or(CtapAnswerError::Malformed("empty response"))?;
    if status != OK {
        return Err(CtapAnswerError::Status(status));
    }
    cbor::decode(rest).map_err(|_| CtapAnswerError::Malformed("response is not CBOR"))
}

/// Reads a makeCredential answer and builds the attestationObject.
pub fn parse_make_credential(response: &[u8]) -> Result<MadeCredential, CtapAnswerError> {
    let v = body(response)?;
    let fmt = v
        .map_get_int(1)
        .and_then(Value::as_text)
        .ok_or(CtapAnswerError::Malformed("no fmt"))?;
    let auth_data = v
        .map_get_int(2)
        .and_then(Value::as_bytes)
        .ok_or(CtapAnswerError::Malformed("no authData"))?;
    let att_stmt = v
        .map_get_int(3)
        .ok_or(CtapAnswerError::Malformed("no attStmt"))?;
    // authData: rpIdHash 32 | flags 1 | counter 4 | AAGUID 16 | credIdLen 2 | credId …
    if auth_data.len() < 55 || auth_data[32] & 0x40 == 0 {
        return Err(CtapAnswerError::Malformed(
            "authData has no attested credential",
        ));
    }
    let mut aaguid = [0u8; 16];
    aaguid.copy_from_slice(&auth_data[37..53]);
    let len = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
    let credential_id = auth_data
        .get(55..55 + len)
        .ok_or(CtapAnswerError::Malformed(
            "credential id runs past authData",
        ))?
        .to_vec();
    let attestation_object = cbor::encode(&text_map(vec![
        ("fmt", Value::text(fmt)),
        ("attStmt", att_stmt.clone()),
        ("authData", Value::bytes(auth_data.to_vec())),
    ]));
    Ok(MadeCredential {
        credential_id,
        aaguid,
        attestation_object,
        auth_data: auth_data.to_vec(),
    })
}

/// getAssertion for one credential (used to prove a provisioned passkey signs in).
pub fn get_assertion_request(
    rp_id: &str,
    client_data_hash: &[u8; 32],
    credential_id: &[u8],
) -> Vec<u8> {
    let entries = vec![
        (1, Value::text(rp_id)),
        (2, Value::bytes(client_data_hash.to_vec())),
        (3, Value::Array(vec![descriptor(credential_id)])),
        (5, text_map(vec![("up", Value::Bool(true))])),
    ];
    let mut out = vec![GET_ASSERTION];
    out.extend(cbor::encode(&int_map(entries)));
    out
}

/// An assertion's parts a relying party checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub auth_data: Vec<u8>,
    pub signature: Vec<u8>,
    pub user_handle: Option<Vec<u8>>,
}

/// Reads a getAssertion answer.
pub fn parse_get_assertion(response: &[u8]) -> Result<Assertion, CtapAnswerError> {
    let v = body(response)?;
    let auth_data = v
        .map_get_int(2)
        .and_then(Value::as_bytes)
        .ok_or(CtapAnswerError::Malformed("no authData"))?;
    let sig = v
        .map_get_int(3)
        .and_then(Value::as_bytes)
        .ok_or(CtapAnswerError::Malformed("no signature"))?;
    let handle = v
        .map_get_int(4)
        .and_then(|u| u.map_get_text("id"))
        .and_then(Value::as_bytes)
        .map(<[u8]>::to_vec);
    Ok(Assertion {
        auth_data: auth_data.to_vec(),
        signature: sig.to_vec(),
        user_handle: handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AuthenticatorRequest {
        AuthenticatorRequest {
            client_data_hash: [7; 32],
            rp_id: "login.microsoft.com".into(),
            rp_name: Some("Microsoft".into()),
            user_id: b"OF:user".to_vec(),
            user_name: "a@b".into(),
            user_display_name: "A".into(),
            algorithms: vec![-7],
            exclude_list: vec![vec![1, 2, 3]],
            resident_key: true,
            user_verification: true,
            cred_protect: 1,
            hmac_secret: true,
        }
    }

    #[test]
    fn make_credential_carries_what_entra_asks_for() {
        let bytes = make_credential_request(&request());
        assert_eq!(bytes[0], MAKE_CREDENTIAL);
        let parsed = keyward_ctap::ctap2::make_credential::MakeCredentialRequest::parse(Some(
            &cbor::decode(&bytes[1..]).expect("cbor"),
        ))
        .expect("the engine's own parser accepts it");
        assert_eq!(parsed.rp_id, "login.microsoft.com");
        assert!(parsed.rk && parsed.uv);
        assert_eq!(parsed.extensions.cred_protect, Some(1));
        assert!(parsed.extensions.hmac_secret);
        assert_eq!(parsed.exclude_list.len(), 1);
        assert_eq!(parsed.algorithms, vec![-7]);
    }

    #[test]
    fn answers_are_checked() {
        assert_eq!(
            parse_make_credential(&[CREDENTIAL_EXCLUDED]),
            Err(CtapAnswerError::Status(0x19))
        );
        assert!(matches!(
            parse_make_credential(&[]),
            Err(CtapAnswerError::Malformed(_))
        ));
        assert!(matches!(
            parse_make_credential(&[0, 0xff]),
            Err(CtapAnswerError::Malformed(_))
        ));
        // authData without the attested-credential flag.
        let resp = int_map(vec![
            (1, Value::text("none")),
            (2, Value::bytes(vec![0u8; 60])),
            (3, text_map(vec![])),
        ]);
        let mut bytes = vec![0];
        bytes.extend(cbor::encode(&resp));
        assert!(matches!(
            parse_make_credential(&bytes),
            Err(CtapAnswerError::Malformed(_))
        ));
        // A credential id that runs past the end.
        let mut ad = vec![0u8; 55];
        ad[32] = 0x45;
        ad[54] = 9;
        let resp = int_map(vec![
            (1, Value::text("none")),
            (2, Value::bytes(ad)),
            (3, text_map(vec![])),
        ]);
        let mut bytes = vec![0];
        bytes.extend(cbor::encode(&resp));
        assert!(matches!(
            parse_make_credential(&bytes),
            Err(CtapAnswerError::Malformed(_))
        ));
    }
}
