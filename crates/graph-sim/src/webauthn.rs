//! WebAuthn verification as a relying party does it: attestation objects (`none` and `packed`),
//! authenticator data, COSE public keys and assertion signatures.
//!
//! CBOR is decoded with `sk-cbor`, which insists on CTAP's canonical form; authenticators and
//! browsers emit that form, so a non-canonical attestation object is a sign of a broken client.

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use sk_cbor::Value;
use x509_parser::prelude::*;

/// Why a WebAuthn object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WebauthnError(pub String);

fn err(m: impl Into<String>) -> WebauthnError {
    WebauthnError(m.into())
}

/// AUTHENTICATOR DATA flags.
pub const FLAG_UP: u8 = 0x01;
pub const FLAG_UV: u8 = 0x04;
pub const FLAG_BE: u8 = 0x08;
pub const FLAG_AT: u8 = 0x40;

/// A credential public key from COSE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CosePublicKey {
    Es256 { x: Vec<u8>, y: Vec<u8> },
    EdDsa { x: Vec<u8> },
    Rs256 { n: Vec<u8>, e: Vec<u8> },
}

impl CosePublicKey {
    pub fn alg(&self) -> i64 {
        match self {
            CosePublicKey::Es256 { .. } => -7,
            CosePublicKey::EdDsa { .. } => -8,
            CosePublicKey::Rs256 { .. } => -257,
        }
    }

    /// Verifies a WebAuthn signature (DER ECDSA, raw Ed25519, PKCS#1 v1.5 RSA) over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            CosePublicKey::Es256 { x, y } => {
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            CosePublicKey::EdDsa { x } => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(msg, sig)
                .is_ok(),
            CosePublicKey::Rs256 { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
        }
    }

    /// Parses a COSE_Key map (kty, alg, crv and coordinates must agree).
    pub fn from_cbor(value: Value) -> Result<CosePublicKey, WebauthnError> {
        let map = value
            .extract_map()
            .ok_or_else(|| err("credential public key is not a CBOR map"))?;
        let get = |k: i64| {
            map.iter()
                .find(|(key, _)| *key == Value::integer(k))
                .map(|(_, v)| v.clone())
        };
        let int = |k: i64| get(k).and_then(|v| v.extract_integer());
        let bytes = |k: i64| get(k).and_then(|v| v.extract_byte_string());
        match (int(1), int(3)) {
            (Some(2), Some(-7)) => {
                let (Some(1), Some(x), Some(y)) = (int(-1), bytes(-2), bytes(-3)) else {
                    return Err(err("ES256 key must be on P-256 with 32-byte coordinates"));
                };
                if x.len() != 32 || y.len() != 32 {
                    return Err(err("ES256 key coordinates must be 32 bytes"));
                }
                Ok(CosePublicKey::Es256 { x, y })
            }
            (Some(1), Some(-8)) => match (int(-1), bytes(-2)) {
                (Some(6), Some(x)) if x.len() == 32 => Ok(CosePublicKey::EdDsa { x }),
                _ => Err(err("EdDSA key must be Ed25519 with a 32-byte key")),
            },
            (Some(3), Some(-257)) => match (bytes(-1), bytes(-2)) {
                (Some(n), Some(e)) if n.len() >= 256 => Ok(CosePublicKey::Rs256 { n, e }),
                _ => Err(err("RS256 key must have a modulus of at least 2048 bits")),
            },
            _ => Err(err("unsupported credential public key algorithm")),
        }
    }
}

/// Parsed authenticator data.
#[derive(Debug, Clone)]
pub struct AuthData {
    pub rp_id_hash: [u8; 32],
    pub flags: u8,
    pub counter: u32,
    pub attested: Option<AttestedCredential>,
}

#[derive(Debug, Clone)]
pub struct AttestedCredential {
    pub aaguid: [u8; 16],
    pub credential_id: Vec<u8>,
    pub public_key: CosePublicKey,
}

/// Length of the one CBOR data item at the start of `buf` (definite lengths only).
fn cbor_item_len(buf: &[u8], depth: u8) -> Option<usize> {
    if depth > 16 {
        return None;
    }
    let first = *buf.first()?;
    let (major, info) = (first >> 5, first & 0x1f);
    let (arg, head) = match info {
        0..=23 => (u64::from(info), 1),
        24 => (u64::from(*buf.get(1)?), 2),
        25 => (
            u64::from(u16::from_be_bytes(buf.get(1..3)?.try_into().ok()?)),
            3,
        ),
        26 => (
            u64::from(u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?)),
            5,
        ),
        27 => (u64::from_be_bytes(buf.get(1..9)?.try_into().ok()?), 9),
        _ => return None,
    };
    let arg = usize::try_from(arg).ok()?;
    match major {
        0 | 1 | 7 => Some(head),
        2 | 3 => head.checked_add(arg).filter(|end| *end <= buf.len()),
        4 | 5 => {
            let items = if major == 5 { arg.checked_mul(2)? } else { arg };
            let mut pos = head;
            for _ in 0..items {
                pos += cbor_item_len(buf.get(pos..)?, depth + 1)?;
            }
            Some(pos)
        }
        6 => Some(head + cbor_item_len(buf.get(head..)?, depth + 1)?),
        _ => None,
    }
}

pub fn parse_auth_data(raw: &[u8]) -> Result<AuthData, WebauthnError> {
    if raw.len() < 37 {
        return Err(err("authenticator data is shorter than 37 bytes"));
    }
    let mut rp_id_hash = [0u8; 32];
    rp_id_hash.copy_from_slice(&raw[..32]);
    let flags = raw[32];
    let counter = u32::from_be_bytes([raw[33], raw[34], raw[35], raw[36]]);
    let mut attested = None;
    let mut pos = 37;
    if flags & FLAG_AT != 0 {
        let rest = &raw[pos..];
        if rest.len() < 18 {
            return Err(err("attested credential data is truncated"));
        }
        let mut aaguid = [0u8; 16];
        aaguid.copy_from_slice(&rest[..16]);
        let id_len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        let id_end = 18 + id_len;
        if id_len == 0 || id_len > 1023 || rest.len() < id_end {
            return Err(err("credential id length is invalid"));
        }
        let credential_id = rest[18..id_end].to_vec();
        let key_len = cbor_item_len(&rest[id_end..], 0)
            .ok_or_else(|| err("credential public key is not valid CBOR"))?;
        let key_bytes = &rest[id_end..id_end + key_len];
        let value = sk_cbor::reader::read_nested(key_bytes, Some(2)).map_err(|e| {
            err(format!(
                "credential public key is not canonical CBOR: {e:?}"
            ))
        })?;
        let public_key = CosePublicKey::from_cbor(value)?;
        attested = Some(AttestedCredential {
            aaguid,
            credential_id,
            public_key,
        });
        pos += id_end + key_len;
    }
    if pos < raw.len() {
        // Extension outputs (ED flag); they must be one well-formed CBOR map.
        let len =
            cbor_item_len(&raw[pos..], 0).ok_or_else(|| err("extension data is not valid CBOR"))?;
        if pos + len != raw.len() {
            return Err(err("authenticator data has trailing bytes"));
        }
    }
    Ok(AuthData {
        rp_id_hash,
        flags,
        counter,
        attested,
    })
}

/// The attestation statement.
#[derive(Debug, Clone)]
pub enum AttStmt {
    None,
    Packed {
        alg: i64,
        sig: Vec<u8>,
        x5c: Vec<Vec<u8>>,
    },
}

#[derive(Debug, Clone)]
pub struct AttestationObject {
    pub fmt: String,
    pub raw_auth_data: Vec<u8>,
    pub auth_data: AuthData,
    pub att_stmt: AttStmt,
}

pub fn parse_attestation_object(raw: &[u8]) -> Result<AttestationObject, WebauthnError> {
    let value = sk_cbor::reader::read_nested(raw, Some(4))
        .map_err(|e| err(format!("attestationObject is not canonical CBOR: {e:?}")))?;
    let map = value
        .extract_map()
        .ok_or_else(|| err("attestationObject is not a CBOR map"))?;
    let mut fmt = None;
    let mut auth = None;
    let mut stmt = None;
    for (k, v) in map {
        match k.extract_text_string().as_deref() {
            Some("fmt") => fmt = v.extract_text_string(),
            Some("authData") => auth = v.extract_byte_string(),
            Some("attStmt") => stmt = v.extract_map(),
            _ => return Err(err("attestationObject has an unknown member")),
        }
    }
    let (Some(fmt), Some(raw_auth_data), Some(stmt)) = (fmt, auth, stmt) else {
        return Err(err("attestationObject must have fmt, attStmt and authData"));
    };
    let auth_data = parse_auth_data(&raw_auth_data)?;
    let att_stmt = match fmt.as_str() {
        "none" if stmt.is_empty() => AttStmt::None,
        "none" => return Err(err("attestation format 'none' must have an empty attStmt")),
        "packed" => {
            let (mut alg, mut sig, mut x5c) = (None, None, Vec::new());
            for (k, v) in stmt {
                match k.extract_text_string().as_deref() {
                    Some("alg") => alg = v.extract_integer(),
                    Some("sig") => sig = v.extract_byte_string(),
                    Some("x5c") => {
                        for c in v
                            .extract_array()
                            .ok_or_else(|| err("x5c is not an array"))?
                        {
                            x5c.push(
                                c.extract_byte_string()
                                    .ok_or_else(|| err("x5c entry is not bytes"))?,
                            );
                        }
                        if x5c.is_empty() {
                            return Err(err("x5c is empty"));
                        }
                    }
                    _ => {
                        return Err(err(
                            "packed attStmt has an unknown member (ECDAA is not supported)",
                        ));
                    }
                }
            }
            let (Some(alg), Some(sig)) = (alg, sig) else {
                return Err(err("packed attStmt needs alg and sig"));
            };
            AttStmt::Packed { alg, sig, x5c }
        }
        other => {
            return Err(err(format!(
                "attestation format '{other}' is not supported; only packed or none"
            )));
        }
    };
    Ok(AttestationObject {
        fmt,
        raw_auth_data,
        auth_data,
        att_stmt,
    })
}

/// The public key of an X.509 certificate, in the form aws-lc-rs verifies with.
#[derive(Debug, Clone)]
pub enum CertKey {
    /// PKCS#1 RSAPublicKey DER.
    Rsa(Vec<u8>),
    /// Uncompressed P-256 point.
    P256(Vec<u8>),
}

impl CertKey {
    pub fn bytes(&self) -> &[u8] {
        match self {
            CertKey::Rsa(b) | CertKey::P256(b) => b,
        }
    }
}

pub fn cert_public_key(der: &[u8]) -> Result<CertKey, WebauthnError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|_| err("certificate is not valid DER"))?;
    let spki = cert.public_key();
    let raw = spki.subject_public_key.data.to_vec();
    let oid = &spki.algorithm.algorithm;
    if *oid == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
        Ok(CertKey::Rsa(raw))
    } else if *oid == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY && raw.len() == 65 {
        Ok(CertKey::P256(raw))
    } else {
        Err(err("certificate key type is not supported"))
    }
}

/// The outcome of a verified attestation.
#[derive(Debug, Clone)]
pub struct Verified {
    /// True when a certificate chain (x5c) vouches for the authenticator.
    pub attested: bool,
    /// SHA-1 thumbprints (hex) of the attestation certificates, as Graph lists them.
    pub thumbprints: Vec<String>,
}

const AAGUID_EXT: &str = "1.3.6.1.4.1.45724.1.1.4";

/// Verifies the attestation statement over `authData ‖ clientDataHash` (WebAuthn §8.2 for packed).
pub fn verify_attestation(
    att: &AttestationObject,
    client_data_hash: &[u8],
) -> Result<Verified, WebauthnError> {
    let cred = att
        .auth_data
        .attested
        .as_ref()
        .ok_or_else(|| err("authenticator data has no attested credential"))?;
    let mut signed = att.raw_auth_data.clone();
    signed.extend_from_slice(client_data_hash);
    match &att.att_stmt {
        AttStmt::None => Ok(Verified {
            attested: false,
            thumbprints: Vec::new(),
        }),
        AttStmt::Packed { alg, sig, x5c } if x5c.is_empty() => {
            if *alg != cred.public_key.alg() {
                return Err(err(
                    "self attestation alg differs from the credential's algorithm",
                ));
            }
            if !cred.public_key.verify(&signed, sig) {
                return Err(err("attestation signature is invalid"));
            }
            Ok(Verified {
                attested: false,
                thumbprints: Vec::new(),
            })
        }
        AttStmt::Packed { alg, sig, x5c } => {
            let leaf = &x5c[0];
            let (_, cert) = X509Certificate::from_der(leaf)
                .map_err(|_| err("attestation certificate is not valid DER"))?;
            if cert.version() != X509Version::V3 {
                return Err(err("attestation certificate must be X.509 v3"));
            }
            let ou_ok = cert
                .subject()
                .iter_organizational_unit()
                .any(|ou| ou.as_str().ok() == Some("Authenticator Attestation"));
            if !ou_ok {
                return Err(err(
                    "attestation certificate OU must be 'Authenticator Attestation'",
                ));
            }
            if let Ok(Some(bc)) = cert.basic_constraints()
                && bc.value.ca
            {
                return Err(err("attestation certificate must not be a CA"));
            }
            for ext in cert.extensions() {
                if ext.oid.to_id_string() == AAGUID_EXT {
                    // The extension value is an OCTET STRING wrapping the 16 AAGUID bytes.
                    let v = ext.value;
                    if v.len() != 18 || v[0] != 0x04 || v[1] != 16 || v[2..] != cred.aaguid {
                        return Err(err(
                            "attestation certificate AAGUID differs from authenticator data",
                        ));
                    }
                }
            }
            let key = cert_public_key(leaf)?;
            let alg: &'static dyn signature::VerificationAlgorithm = match (alg, &key) {
                (-7, CertKey::P256(_)) => &signature::ECDSA_P256_SHA256_ASN1,
                (-257, CertKey::Rsa(_)) => &signature::RSA_PKCS1_2048_8192_SHA256,
                _ => return Err(err("attestation alg does not match the certificate key")),
            };
            UnparsedPublicKey::new(alg, key.bytes())
                .verify(&signed, sig)
                .map_err(|_| err("attestation signature is invalid"))?;
            let thumbprints = x5c
                .iter()
                .map(|c| {
                    hex::encode(aws_lc_rs::digest::digest(
                        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                        c,
                    ))
                })
                .collect();
            Ok(Verified {
                attested: true,
                thumbprints,
            })
        }
    }
}

/// Whether `x5c` chains to one of `roots`: each certificate is signed by the next, and the last
/// is a root or is signed by one. (This stands in for FIDO MDS, which lists the roots.)
pub fn chains_to(x5c: &[Vec<u8>], roots: &[Vec<u8>]) -> bool {
    let Some(last) = x5c.last() else { return false };
    let linked = x5c.windows(2).all(|w| signed_by(&w[0], &w[1]));
    linked && roots.iter().any(|r| r == last || signed_by(last, r))
}

/// Whether `cert` carries a valid signature by `issuer`'s key (ECDSA P-256 or RSA, SHA-256).
fn signed_by(cert: &[u8], issuer: &[u8]) -> bool {
    let (Ok((_, c)), Ok(key)) = (X509Certificate::from_der(cert), cert_public_key(issuer)) else {
        return false;
    };
    let alg: &'static dyn signature::VerificationAlgorithm = match (
        c.signature_algorithm.algorithm.to_id_string().as_str(),
        &key,
    ) {
        ("1.2.840.10045.4.3.2", CertKey::P256(_)) => &signature::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.113549.1.1.11", CertKey::Rsa(_)) => &signature::RSA_PKCS1_2048_8192_SHA256,
        _ => return false,
    };
    UnparsedPublicKey::new(alg, key.bytes())
        .verify(c.tbs_certificate.as_ref(), &c.signature_value.data)
        .is_ok()
}

/// Formats 16 AAGUID bytes as a lowercase UUID string.
pub fn aaguid_string(aaguid: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*aaguid).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_length_walks_nested_maps() {
        // {1: 2, 3: [1, h'aabb']} followed by a trailing byte.
        let buf = [0xa2, 0x01, 0x02, 0x03, 0x82, 0x01, 0x42, 0xaa, 0xbb, 0xff];
        assert_eq!(cbor_item_len(&buf, 0), Some(9));
        assert_eq!(
            cbor_item_len(&buf[..8], 0),
            None,
            "truncated input has no length"
        );
        assert_eq!(
            cbor_item_len(&[0x5f], 0),
            None,
            "indefinite lengths are refused"
        );
    }

    #[test]
    fn short_auth_data_is_refused() {
        assert!(parse_auth_data(&[0u8; 36]).is_err());
        let ok = parse_auth_data(&[0u8; 37]).expect("37 bytes is minimal authData");
        assert_eq!(ok.counter, 0);
        assert!(ok.attested.is_none());
    }

    #[test]
    fn unknown_format_is_refused() {
        let mut out = Vec::new();
        let v = Value::map(vec![
            (
                Value::text_string("fmt".into()),
                Value::text_string("tpm".into()),
            ),
            (Value::text_string("attStmt".into()), Value::map(vec![])),
            (
                Value::text_string("authData".into()),
                Value::byte_string(vec![0; 37]),
            ),
        ]);
        sk_cbor::writer::write(v, &mut out).expect("encodes");
        let e = parse_attestation_object(&out).expect_err("tpm is not accepted");
        assert!(e.0.contains("tpm"), "{e}");
    }
}
