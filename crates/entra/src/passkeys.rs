//! Passkey provisioning: creation options, the exact clientDataJSON, what our authenticator must
//! be asked for, registration, and listing/deleting fido2 methods (graph.md §1 and §7).

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{ApiVersion, GraphClient, Idempotency, parse_json};
use crate::error::{EntraError, ErrorKind};
use crate::users::encode_segment;

/// Algorithms our authenticator can create, in our order of preference.
pub const SUPPORTED_ALGORITHMS: &[i64] = &[-7, -8];

/// What Graph's `creationOptions` returned, decoded.
#[derive(Debug, Clone)]
pub struct CreationOptions {
    /// After this, Graph refuses the registration.
    pub challenge_timeout: Option<DateTime<Utc>>,
    pub rp_id: String,
    pub rp_name: Option<String>,
    /// The WebAuthn user handle: send these exact bytes as the CTAP `user.id`.
    pub user_id: Vec<u8>,
    pub user_name: String,
    pub user_display_name: String,
    /// The challenge string exactly as given (it goes back byte for byte in clientDataJSON).
    pub challenge: String,
    pub algorithms: Vec<i64>,
    /// Excluded credential ids; every plausible decoding of each id (see [`decode_credential_id`]).
    pub exclude_credentials: Vec<Vec<u8>>,
    pub resident_key_required: bool,
    pub user_verification: Option<String>,
    pub attestation: Option<String>,
    /// The `extensions` object as Graph sent it.
    pub extensions: Value,
}

/// The makeCredential our authenticator must run for Entra (graph.md §7.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatorRequest {
    pub client_data_hash: [u8; 32],
    pub rp_id: String,
    pub rp_name: Option<String>,
    pub user_id: Vec<u8>,
    pub user_name: String,
    pub user_display_name: String,
    /// COSE algorithms to offer, in order; a subset of what Entra accepts and we support.
    pub algorithms: Vec<i64>,
    pub exclude_list: Vec<Vec<u8>>,
    pub resident_key: bool,
    pub user_verification: bool,
    /// credProtect level 1 (`userVerificationOptional`): higher levels break Windows sign-in.
    pub cred_protect: u8,
    pub hmac_secret: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawOptions {
    challenge_timeout_date_time: Option<DateTime<Utc>>,
    public_key: RawPublicKey,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPublicKey {
    rp: RawRp,
    user: RawUser,
    challenge: String,
    #[serde(default)]
    pub_key_cred_params: Vec<RawParam>,
    #[serde(default)]
    exclude_credentials: Option<Vec<RawDescriptor>>,
    authenticator_selection: Option<Value>,
    attestation: Option<String>,
    #[serde(default)]
    extensions: Option<Value>,
}

#[derive(Deserialize)]
struct RawRp {
    id: String,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawUser {
    id: String,
    name: String,
    display_name: Option<String>,
}

#[derive(Deserialize)]
struct RawParam {
    alg: i64,
}

#[derive(Deserialize)]
struct RawDescriptor {
    id: String,
}

/// Decodes a credential id in any of the three forms Graph has used: base64url without padding
/// (v1.0), standard base64 with `+/=` (captured beta), and .NET UrlTokenEncode (base64url plus
/// a digit counting the stripped `=`). Some strings are valid in two forms; all readings are
/// returned (an extra id in an exclude list is harmless), the likeliest first.
pub fn decode_credential_id(s: &str) -> Result<Vec<Vec<u8>>, EntraError> {
    let s = s.trim();
    let mut out: Vec<Vec<u8>> = Vec::new();
    if s.contains(['+', '/']) || s.ends_with('=') {
        if let Ok(b) = STANDARD.decode(s).or_else(|_| STANDARD_NO_PAD.decode(s)) {
            out.push(b);
        }
    } else {
        if let Ok(b) = URL_SAFE_NO_PAD.decode(s) {
            out.push(b);
        }
        if let Some(last) = s.chars().last()
            && let Some(pad) = last.to_digit(10).filter(|d| *d <= 2)
        {
            let body = &s[..s.len() - 1];
            if (body.len() + pad as usize).is_multiple_of(4)
                && let Ok(b) = URL_SAFE_NO_PAD.decode(body)
                && !out.contains(&b)
            {
                out.push(b);
            }
        }
    }
    if out.is_empty() {
        return Err(EntraError::bad_response(format!(
            "credential id '{s}' is not base64 in any known form"
        )));
    }
    Ok(out)
}

/// The exact clientDataJSON bytes Entra accepts: type, challenge as given, origin
/// `https://` + rp id, crossOrigin false, in this order.
pub fn client_data_json(challenge: &str, rp_id: &str) -> Vec<u8> {
    // serde_json escapes as JSON requires; the challenge is base64url so nothing needs escaping.
    format!(
        "{{\"type\":\"webauthn.create\",\"challenge\":{},\"origin\":{},\"crossOrigin\":false}}",
        Value::String(challenge.to_string()),
        Value::String(format!("https://{rp_id}"))
    )
    .into_bytes()
}

impl CreationOptions {
    fn from_raw(raw: RawOptions) -> Result<Self, EntraError> {
        let pk = raw.public_key;
        let user_id = URL_SAFE_NO_PAD
            .decode(pk.user.id.trim_end_matches('='))
            .or_else(|_| STANDARD.decode(&pk.user.id))
            .map_err(|_| EntraError::bad_response("creationOptions user.id is not base64url"))?;
        if URL_SAFE_NO_PAD
            .decode(pk.challenge.trim_end_matches('='))
            .is_err()
        {
            return Err(EntraError::bad_response(
                "creationOptions challenge is not base64url",
            ));
        }
        let mut exclude = Vec::new();
        for d in pk.exclude_credentials.unwrap_or_default() {
            exclude.extend(decode_credential_id(&d.id)?);
        }
        let sel = pk.authenticator_selection.unwrap_or(Value::Null);
        Ok(CreationOptions {
            challenge_timeout: raw.challenge_timeout_date_time,
            rp_id: pk.rp.id,
            rp_name: pk.rp.name,
            user_id,
            user_display_name: pk.user.display_name.unwrap_or_else(|| pk.user.name.clone()),
            user_name: pk.user.name,
            challenge: pk.challenge,
            algorithms: pk.pub_key_cred_params.iter().map(|p| p.alg).collect(),
            exclude_credentials: exclude,
            resident_key_required: sel
                .get("requireResidentKey")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                || sel.get("residentKey").and_then(Value::as_str) == Some("required"),
            user_verification: sel
                .get("userVerification")
                .and_then(Value::as_str)
                .map(str::to_owned),
            attestation: pk.attestation,
            extensions: pk.extensions.unwrap_or(Value::Null),
        })
    }

    /// `https://` + rp id.
    pub fn origin(&self) -> String {
        format!("https://{}", self.rp_id)
    }

    /// The clientDataJSON to sign for these options.
    pub fn client_data_json(&self) -> Vec<u8> {
        client_data_json(&self.challenge, &self.rp_id)
    }

    /// The makeCredential parameters for our authenticator: rk, uv, credProtect 1, hmac-secret,
    /// an algorithm both sides support, and the exclude list.
    pub fn authenticator_request(&self) -> Result<AuthenticatorRequest, EntraError> {
        let algorithms: Vec<i64> = if self.algorithms.is_empty() {
            vec![-7]
        } else {
            self.algorithms
                .iter()
                .copied()
                .filter(|a| SUPPORTED_ALGORITHMS.contains(a))
                .collect()
        };
        if algorithms.is_empty() {
            return Err(EntraError::new(
                ErrorKind::Policy,
                format!(
                    "Entra offers only algorithms {:?}; the key supports ES256 and EdDSA",
                    self.algorithms
                ),
            ));
        }
        let hash = digest::digest(&digest::SHA256, &self.client_data_json());
        let mut client_data_hash = [0u8; 32];
        client_data_hash.copy_from_slice(hash.as_ref());
        Ok(AuthenticatorRequest {
            client_data_hash,
            rp_id: self.rp_id.clone(),
            rp_name: self.rp_name.clone(),
            user_id: self.user_id.clone(),
            user_name: self.user_name.clone(),
            user_display_name: self.user_display_name.clone(),
            algorithms,
            exclude_list: self.exclude_credentials.clone(),
            resident_key: true,
            user_verification: true,
            cred_protect: 1,
            hmac_secret: true,
        })
    }
}

/// What to send to register a credential.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Shown in the user's security info; Entra tools keep it to 1–30 characters.
    pub display_name: String,
    pub credential_id: Vec<u8>,
    pub client_data_json: Vec<u8>,
    pub attestation_object: Vec<u8>,
    /// Authenticator extension outputs, e.g. `{"credProtect":1,"hmac-secret":true}`; `{}` is fine.
    pub client_extension_results: Value,
}

/// A registered passkey as Graph lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fido2Method {
    pub id: String,
    pub display_name: Option<String>,
    pub created_date_time: Option<DateTime<Utc>>,
    pub aa_guid: Option<String>,
    pub model: Option<String>,
    #[serde(default)]
    pub attestation_certificates: Vec<String>,
    pub attestation_level: Option<String>,
    pub passkey_type: Option<String>,
}

#[derive(Deserialize)]
struct MethodList {
    value: Vec<Fido2Method>,
}

impl GraphClient {
    /// `GET …/fido2Methods/creationOptions`: v1.0 (fixed 5-minute challenge) when
    /// `challenge_timeout_minutes` is `None`, beta with `(challengeTimeoutInMinutes=N)` otherwise.
    pub async fn creation_options(
        &self,
        user: &str,
        challenge_timeout_minutes: Option<u32>,
    ) -> Result<CreationOptions, EntraError> {
        let base = format!(
            "/users/{}/authentication/fido2Methods/creationOptions",
            encode_segment(user)
        );
        let url = match challenge_timeout_minutes {
            None => self.url(ApiVersion::V1, &base),
            Some(m) if (5..=43200).contains(&m) => self.url(
                ApiVersion::Beta,
                &format!("{base}(challengeTimeoutInMinutes={m})"),
            ),
            Some(m) => {
                return Err(EntraError::config(format!(
                    "challenge timeout {m} is outside 5–43200 minutes"
                )));
            }
        };
        let (raw, _): (RawOptions, _) = self.get_json(&url, &[]).await.map_err(|mut e| {
            // A 400 here is Entra's policy speaking: FIDO2 disabled, self-service off, scope.
            if e.kind == ErrorKind::Rejected {
                e.kind = ErrorKind::Policy;
            }
            e
        })?;
        CreationOptions::from_raw(raw)
    }

    /// `POST …/fido2Methods`. Not retried after an ambiguous failure: a credential must not be
    /// registered twice; on a Transport error, list the user's methods before trying again.
    pub async fn register_passkey(
        &self,
        user: &str,
        reg: &Registration,
        version: ApiVersion,
    ) -> Result<Fido2Method, EntraError> {
        let body = json!({
            "displayName": reg.display_name,
            "publicKeyCredential": {
                "id": URL_SAFE_NO_PAD.encode(&reg.credential_id),
                "response": {
                    "clientDataJSON": URL_SAFE_NO_PAD.encode(&reg.client_data_json),
                    "attestationObject": URL_SAFE_NO_PAD.encode(&reg.attestation_object),
                },
                "clientExtensionResults": reg.client_extension_results,
            }
        });
        let url = self.url(
            version,
            &format!(
                "/users/{}/authentication/fido2Methods",
                encode_segment(user)
            ),
        );
        let resp = self
            .send(Method::POST, &url, Some(&body), &[], Idempotency::Unsafe)
            .await?;
        parse_json(&resp)
    }

    pub async fn list_passkeys(&self, user: &str) -> Result<Vec<Fido2Method>, EntraError> {
        let url = self.url(
            ApiVersion::V1,
            &format!(
                "/users/{}/authentication/fido2Methods",
                encode_segment(user)
            ),
        );
        let (list, _): (MethodList, _) = self.get_json(&url, &[]).await?;
        Ok(list.value)
    }

    /// Deletes a passkey; deleting one that is already gone answers NotFound.
    pub async fn delete_passkey(&self, user: &str, method_id: &str) -> Result<(), EntraError> {
        let url = self.url(
            ApiVersion::V1,
            &format!(
                "/users/{}/authentication/fido2Methods/{}",
                encode_segment(user),
                encode_segment(method_id)
            ),
        );
        self.send(Method::DELETE, &url, None, &[], Idempotency::Safe)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_ids_in_all_three_forms() {
        let bytes: Vec<u8> = (0u8..16)
            .map(|i| i.wrapping_mul(37).wrapping_add(250))
            .collect();
        let url = URL_SAFE_NO_PAD.encode(&bytes);
        let std = STANDARD.encode(&bytes);
        let token = format!("{url}2"); // 16 bytes -> two '=' stripped
        assert!(
            decode_credential_id(&url)
                .expect("base64url")
                .contains(&bytes)
        );
        assert_eq!(decode_credential_id(&std).expect("standard")[0], bytes);
        assert!(
            decode_credential_id(&token)
                .expect("UrlToken")
                .contains(&bytes)
        );
        assert!(decode_credential_id("!!!").is_err());
    }

    #[test]
    fn client_data_is_exact() {
        let cd = client_data_json("abc-_", "login.microsoft.com");
        assert_eq!(
            String::from_utf8(cd).expect("utf8"),
            r#"{"type":"webauthn.create","challenge":"abc-_","origin":"https://login.microsoft.com","crossOrigin":false}"#
        );
    }

    #[test]
    fn authenticator_request_follows_entra() {
        let raw: RawOptions = serde_json::from_value(json!({
            "challengeTimeoutDateTime": "2024-06-13T11:26:35Z",
            "publicKey": {
                "@odata.type": "x",
                "rp": {"id": "login.microsoft.com", "name": "Microsoft", "@odata.type": "y"},
                "user": {"id": URL_SAFE_NO_PAD.encode(b"OF:123"), "name": "a@b", "displayName": "A B"},
                "challenge": "Y2hhbGxlbmdl",
                "pubKeyCredParams": [{"type": "public-key", "alg": -257}, {"type": "public-key", "alg": -7}],
                "excludeCredentials": [{"type": "public-key", "id": "AQID"}],
                "authenticatorSelection": {"requireResidentKey": true, "userVerification": "required"},
                "extensions": {"hmacCreateSecret": true}
            }
        }))
        .expect("parses, ignoring @odata keys");
        let o = CreationOptions::from_raw(raw).expect("valid");
        let r = o.authenticator_request().expect("ES256 is offered");
        assert_eq!(r.algorithms, vec![-7], "RS256 is not ours to offer");
        assert_eq!(r.user_id, b"OF:123");
        assert!(r.resident_key && r.user_verification && r.hmac_secret);
        assert_eq!(r.cred_protect, 1);
        assert_eq!(r.exclude_list, vec![vec![1, 2, 3]]);
        let expected = digest::digest(&digest::SHA256, &o.client_data_json());
        assert_eq!(r.client_data_hash.as_slice(), expected.as_ref());
        let mut only_rsa = o.clone();
        only_rsa.algorithms = vec![-257];
        assert_eq!(
            only_rsa
                .authenticator_request()
                .expect_err("no common alg")
                .kind,
            ErrorKind::Policy
        );
    }
}
