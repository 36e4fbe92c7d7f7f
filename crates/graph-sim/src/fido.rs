//! Passkey provisioning endpoints (creationOptions, fido2Methods), Temporary Access Passes and
//! the authentication methods policy.

use std::time::Duration;

use aws_lc_rs::aead::{Aad, Nonce};
use aws_lc_rs::digest;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Utc;
use serde_json::{Value, json};

use crate::RP_ID;
use crate::error::GraphError;
use crate::http::{ApiVersion, odata};
use crate::state::{Data, SimUser, Simulator, StoredMethod, StoredTap};
use crate::webauthn::{self, FLAG_BE, FLAG_UP, FLAG_UV, aaguid_string};

type Params = Vec<(String, String)>;

/// Decodes base64url with or without padding (clients differ; both mean the same bytes).
pub fn b64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn user_not_found(user: &str) -> GraphError {
    GraphError::not_found(format!(
        "Resource '{user}' does not exist or one of its queried reference-property objects are not present."
    ))
}

/// The checks Entra applies before it lets anyone provision a passkey for `user`.
fn provisioning_allowed(data: &Data, user: &SimUser) -> Result<(), GraphError> {
    if user
        .user_principal_name
        .eq_ignore_ascii_case(&data.consenting_admin)
    {
        return Err(GraphError::method_not_allowed());
    }
    let p = &data.policy;
    if p.state != "enabled" || !data.user_in_policy_scope(&user.id) {
        return Err(GraphError::bad_request(
            "The FIDO2 authentication method is not enabled for this user by the authentication methods policy.",
        ));
    }
    if !p.is_self_service_registration_allowed {
        return Err(GraphError::bad_request(
            "Passkey (FIDO2) self-service setup is not allowed by the authentication methods policy.",
        ));
    }
    Ok(())
}

/// Seals the challenge the way Entra's is sealed (an encrypted, self-describing blob), padded to
/// Entra's size so clients meet a ~7 KB challenge here too.
fn seal_challenge(sim: &Simulator, user_id: &str, expires: i64) -> Result<String, GraphError> {
    let mut nonce = [0u8; 12];
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| GraphError::bad_request("RNG failure"))?;
    aws_lc_rs::rand::fill(&mut id).map_err(|_| GraphError::bad_request("RNG failure"))?;
    let body = json!({"u": user_id, "x": expires, "n": hex::encode(id), "p": "A".repeat(4800)});
    let mut buf = serde_json::to_vec(&body).unwrap_or_default();
    sim.inner
        .challenge_key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(b"creationOptions"),
            &mut buf,
        )
        .map_err(|_| GraphError::bad_request("sealing failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(URL_SAFE_NO_PAD.encode(out))
}

/// Opens a challenge: (user id, expiry as unix seconds, unique id).
fn open_challenge(sim: &Simulator, raw: &[u8]) -> Option<(String, i64, String)> {
    if raw.len() < 12 + 16 {
        return None;
    }
    let nonce = Nonce::try_assume_unique_for_key(&raw[..12]).ok()?;
    let mut buf = raw[12..].to_vec();
    let plain = sim
        .inner
        .challenge_key
        .open_in_place(nonce, Aad::from(b"creationOptions"), &mut buf)
        .ok()?;
    let v: Value = serde_json::from_slice(plain).ok()?;
    Some((
        v["u"].as_str()?.to_string(),
        v["x"].as_i64()?,
        v["n"].as_str()?.to_string(),
    ))
}

/// The WebAuthn user handle Entra uses: 51 bytes starting `OF:`.
pub(crate) fn user_handle(sim: &Simulator, user_id: &str) -> Vec<u8> {
    let mut out = b"OF:".to_vec();
    let d = digest::digest(
        &digest::SHA256,
        format!("{}|{user_id}", sim.config().tenant_id).as_bytes(),
    );
    out.extend_from_slice(d.as_ref());
    out.extend_from_slice(
        &uuid::Uuid::parse_str(user_id)
            .map(|u| *u.as_bytes())
            .unwrap_or([0; 16]),
    );
    out
}

fn timeout_param(method: &str, q: &Params) -> Result<Option<u32>, GraphError> {
    let bad =
        || GraphError::bad_request("Invalid value for parameter 'challengeTimeoutInMinutes'.");
    if let Some(args) = method.strip_prefix("creationOptions(") {
        let inner = args.strip_suffix(')').ok_or_else(bad)?;
        if inner.is_empty() {
            return Ok(None);
        }
        let v = inner
            .strip_prefix("challengeTimeoutInMinutes=")
            .ok_or_else(bad)?;
        return v.parse().map(Some).map_err(|_| bad());
    }
    match q.iter().find(|(k, _)| k == "challengeTimeoutInMinutes") {
        Some((_, v)) => v.parse().map(Some).map_err(|_| bad()),
        None => Ok(None),
    }
}

fn method_json(m: &StoredMethod, version: ApiVersion) -> Value {
    let mut v = json!({
        "@odata.type": "#microsoft.graph.fido2AuthenticationMethod",
        "id": m.id,
        "displayName": m.display_name,
        "createdDateTime": m.created.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "aaGuid": aaguid_string(&m.aaguid),
        "model": Value::Null,
        "attestationCertificates": m.attestation_thumbprints,
        "attestationLevel": if m.attested { "attested" } else { "notAttested" },
    });
    if version == ApiVersion::V1 {
        v["passkeyType"] = json!(if m.backup_eligible {
            "synced"
        } else {
            "deviceBound"
        });
    }
    v
}

pub async fn get_method_or_options(
    State(sim): State<Simulator>,
    Extension(version): Extension<ApiVersion>,
    Path((user, method)): Path<(String, String)>,
    Query(q): Query<Params>,
) -> Result<Response, GraphError> {
    if method == "creationOptions" || method.starts_with("creationOptions(") {
        return creation_options(&sim, version, &user, &method, &q);
    }
    let data = sim.data();
    let u = data.find_user(&user).ok_or_else(|| user_not_found(&user))?;
    let m = data
        .methods
        .get(&u.id)
        .and_then(|ms| ms.iter().find(|m| m.id == method))
        .ok_or_else(GraphError::item_not_found)?;
    let mut body = method_json(m, version);
    body["@odata.context"] = json!(format!(
        "https://graph.microsoft.com/{}/$metadata#users('{}')/authentication/fido2Methods/$entity",
        version.path(),
        u.id
    ));
    Ok(odata(StatusCode::OK, body))
}

fn creation_options(
    sim: &Simulator,
    version: ApiVersion,
    user: &str,
    method: &str,
    q: &Params,
) -> Result<Response, GraphError> {
    let timeout = timeout_param(method, q)?;
    let minutes = match (version, timeout) {
        (ApiVersion::V1, Some(_)) => {
            return Err(GraphError::bad_request(
                "Custom challenge timeouts are not supported in v1.0; the timeout is 5 minutes.",
            ));
        }
        (_, None) => 5,
        (ApiVersion::Beta, Some(m @ 5..=43200)) => m,
        (ApiVersion::Beta, Some(_)) => {
            return Err(GraphError::bad_request(
                "challengeTimeoutInMinutes must be between 5 and 43200.",
            ));
        }
    };
    let (user_id, upn, display, exclude) = {
        let data = sim.data();
        let u = data.find_user(user).ok_or_else(|| user_not_found(user))?;
        provisioning_allowed(&data, u)?;
        let exclude: Vec<Vec<u8>> = data
            .methods
            .get(&u.id)
            .map(|ms| ms.iter().map(|m| m.credential_id.clone()).collect())
            .unwrap_or_default();
        (
            u.id.clone(),
            u.user_principal_name.clone(),
            u.display_name.clone(),
            exclude,
        )
    };
    let expires = Utc::now() + Duration::from_secs(u64::from(minutes) * 60);
    let challenge = seal_challenge(sim, &user_id, expires.timestamp())?;
    // The captured beta answer encodes excluded ids in standard base64 with padding; v1.0 documents
    // base64url. Clients must cope with both, so the simulator serves each as observed.
    let encode_id = |id: &Vec<u8>| match version {
        ApiVersion::Beta => STANDARD.encode(id),
        ApiVersion::V1 => URL_SAFE_NO_PAD.encode(id),
    };
    let excluded: Vec<Value> = exclude
        .iter()
        .map(|id| json!({"type": "public-key", "id": encode_id(id), "transports": ["usb", "nfc"]}))
        .collect();
    let mut public_key = json!({
        "rp": {"id": RP_ID, "name": "Microsoft"},
        "user": {"id": URL_SAFE_NO_PAD.encode(user_handle(sim, &user_id)), "name": upn, "displayName": display},
        "challenge": challenge,
        "pubKeyCredParams": [{"type": "public-key", "alg": -7}, {"type": "public-key", "alg": -257}],
        "timeout": 60000,
        "excludeCredentials": excluded,
        "authenticatorSelection": {"authenticatorAttachment": "cross-platform", "requireResidentKey": true, "userVerification": "required"},
        "attestation": "direct",
        "extensions": {"hmacCreateSecret": true, "enforceCredentialProtectionPolicy": true, "credentialProtectionPolicy": "userVerificationOptional"},
    });
    if version == ApiVersion::V1 {
        // v1.0 annotates nested objects; parsers must ignore `@odata.*` keys.
        public_key["@odata.type"] =
            json!("microsoft.graph.webauthnPublicKeyCredentialCreationOptions");
        public_key["rp"]["@odata.type"] =
            json!("microsoft.graph.webauthnPublicKeyCredentialRpEntity");
        public_key["user"]["@odata.type"] =
            json!("microsoft.graph.webauthnPublicKeyCredentialUserEntity");
    }
    let body = json!({
        "@odata.context": format!("https://graph.microsoft.com/{}/$metadata#microsoft.graph.webauthnCredentialCreationOptions", version.path()),
        "challengeTimeoutDateTime": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "publicKey": public_key,
    });
    Ok(odata(StatusCode::OK, body))
}

fn reject(detail: impl std::fmt::Display) -> GraphError {
    GraphError::bad_request(format!(
        "The passkey registration could not be verified: {detail}"
    ))
}

pub async fn register(
    State(sim): State<Simulator>,
    Extension(version): Extension<ApiVersion>,
    Path(user): Path<String>,
    body: Bytes,
) -> Result<Response, GraphError> {
    let missing =
        || GraphError::bad_request("The request is missing a fido2AuthenticationMethod entity.");
    let body: Value = serde_json::from_slice(&body).map_err(|_| missing())?;
    let pkc = body
        .get("publicKeyCredential")
        .filter(|v| v.is_object())
        .ok_or_else(missing)?;
    let display_name = body
        .get("displayName")
        .and_then(Value::as_str)
        .unwrap_or("Passkey")
        .to_string();
    if display_name.chars().count() > 200 {
        return Err(GraphError::bad_request("displayName is too long."));
    }
    let field = |v: &Value, name: &str| -> Result<Vec<u8>, GraphError> {
        v.get(name)
            .and_then(Value::as_str)
            .and_then(b64url)
            .ok_or_else(|| reject(format!("{name} is missing or not base64url")))
    };
    let cred_id = field(pkc, "id")?;
    let response = pkc
        .get("response")
        .ok_or_else(|| reject("response is missing"))?;
    let client_data = field(response, "clientDataJSON")?;
    let att_raw = field(response, "attestationObject")?;

    let user_id = {
        let data = sim.data();
        let u = data.find_user(&user).ok_or_else(|| user_not_found(&user))?;
        provisioning_allowed(&data, u)?;
        u.id.clone()
    };

    // clientDataJSON: what the browser (or our client) claims about the ceremony.
    let cd: Value =
        serde_json::from_slice(&client_data).map_err(|_| reject("clientDataJSON is not JSON"))?;
    if cd["type"] != "webauthn.create" {
        return Err(reject("clientDataJSON.type must be webauthn.create"));
    }
    let expected_origin = format!("https://{RP_ID}");
    if cd["origin"].as_str() != Some(expected_origin.as_str()) {
        return Err(reject(format!(
            "clientDataJSON.origin must be {expected_origin}"
        )));
    }
    if cd
        .get("crossOrigin")
        .is_some_and(|v| v != &Value::Bool(false))
    {
        return Err(reject("cross-origin registration is not allowed"));
    }
    let challenge = cd["challenge"]
        .as_str()
        .and_then(b64url)
        .ok_or_else(|| reject("clientDataJSON.challenge is missing"))?;
    let (ch_user, ch_exp, ch_id) = open_challenge(&sim, &challenge)
        .ok_or_else(|| reject("the challenge was not issued by this service"))?;
    if ch_user != user_id {
        return Err(reject("the challenge was issued for another user"));
    }
    if ch_exp < Utc::now().timestamp() {
        return Err(reject(
            "the challenge has expired; request new creation options",
        ));
    }

    let att = webauthn::parse_attestation_object(&att_raw).map_err(reject)?;
    let ad = &att.auth_data;
    if ad.rp_id_hash.as_slice() != digest::digest(&digest::SHA256, RP_ID.as_bytes()).as_ref() {
        return Err(reject(format!("rpIdHash is not SHA-256 of {RP_ID}")));
    }
    if ad.flags & FLAG_UP == 0 || ad.flags & FLAG_UV == 0 {
        return Err(reject(
            "user presence and user verification flags must both be set",
        ));
    }
    let cred = ad
        .attested
        .as_ref()
        .ok_or_else(|| reject("no attested credential data"))?;
    if cred.credential_id != cred_id {
        return Err(reject(
            "publicKeyCredential.id differs from the credential id in authenticator data",
        ));
    }
    if !matches!(cred.public_key.alg(), -7 | -257) {
        return Err(reject(
            "the credential algorithm is not one of the offered pubKeyCredParams (ES256, RS256)",
        ));
    }
    let cdh = digest::digest(&digest::SHA256, &client_data);
    let verified = webauthn::verify_attestation(&att, cdh.as_ref()).map_err(reject)?;

    let mut data = sim.data();
    let policy = data.policy.clone();
    if policy.is_attestation_enforced {
        // Enforced attestation needs a chain to a trusted root (FIDO MDS for Entra). With no roots
        // configured every registration fails, as a software authenticator does against Entra.
        let chained = match &att.att_stmt {
            webauthn::AttStmt::Packed { x5c, .. } if verified.attested => {
                webauthn::chains_to(x5c, &data.attestation_roots)
            }
            _ => false,
        };
        if !chained {
            return Err(GraphError::bad_request(
                "Attestation is enforced by the authentication methods policy and the authenticator's attestation could not be validated against the FIDO metadata service.",
            ));
        }
    }
    let aaguid = aaguid_string(&cred.aaguid);
    let kr = &policy.key_restrictions;
    if kr.is_enforced {
        let listed = kr.aa_guids.iter().any(|g| g.eq_ignore_ascii_case(&aaguid));
        let allowed = if kr.enforcement_type == "allow" {
            listed
        } else {
            !listed
        };
        if !allowed {
            return Err(GraphError::bad_request(format!(
                "The authenticator (AAGUID {aaguid}) is not allowed by the key restriction policy."
            )));
        }
    }
    if data
        .methods
        .values()
        .flatten()
        .any(|m| m.credential_id == cred.credential_id)
    {
        return Err(reject("this credential is already registered"));
    }
    if !data.used_challenges.insert(ch_id.into_bytes()) {
        return Err(reject("the challenge has already been used"));
    }
    let mut raw_id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut raw_id).map_err(|_| GraphError::bad_request("RNG failure"))?;
    // Method ids look like .NET UrlTokenEncode output: base64url plus a padding-count digit.
    let method = StoredMethod {
        id: format!("{}2", URL_SAFE_NO_PAD.encode(raw_id)),
        display_name,
        created: Utc::now(),
        aaguid: cred.aaguid,
        credential_id: cred.credential_id.clone(),
        public_key: cred.public_key.clone(),
        counter: ad.counter,
        attested: verified.attested,
        attestation_thumbprints: verified.thumbprints,
        backup_eligible: ad.flags & FLAG_BE != 0,
    };
    let mut out = method_json(&method, version);
    out["@odata.context"] = json!(format!(
        "https://graph.microsoft.com/{}/$metadata#users('{user_id}')/authentication/fido2Methods/$entity",
        version.path()
    ));
    data.methods.entry(user_id).or_default().push(method);
    Ok(odata(StatusCode::CREATED, out))
}

pub async fn list_methods(
    State(sim): State<Simulator>,
    Extension(version): Extension<ApiVersion>,
    Path(user): Path<String>,
) -> Result<Response, GraphError> {
    let data = sim.data();
    let u = data.find_user(&user).ok_or_else(|| user_not_found(&user))?;
    let value: Vec<Value> = data
        .methods
        .get(&u.id)
        .map(|ms| ms.iter().map(|m| method_json(m, version)).collect())
        .unwrap_or_default();
    Ok(odata(
        StatusCode::OK,
        json!({
            "@odata.context": format!("https://graph.microsoft.com/{}/$metadata#users('{}')/authentication/fido2Methods", version.path(), u.id),
            "value": value,
        }),
    ))
}

pub async fn delete_method(
    State(sim): State<Simulator>,
    Path((user, method)): Path<(String, String)>,
) -> Result<Response, GraphError> {
    let mut data = sim.data();
    let id = data
        .find_user(&user)
        .ok_or_else(|| user_not_found(&user))?
        .id
        .clone();
    let ms = data.methods.entry(id).or_default();
    let before = ms.len();
    ms.retain(|m| m.id != method);
    if ms.len() == before {
        return Err(GraphError::item_not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

const TAP_MIN: u32 = 60;
const TAP_MAX: u32 = 480;
const TAP_DEFAULT: u32 = 60;

fn tap_json(t: &StoredTap, pass: Option<&str>) -> Value {
    let end = t.start + Duration::from_secs(u64::from(t.lifetime_minutes) * 60);
    let now = Utc::now();
    let (usable, reason) = if now < t.start {
        (false, "NotYetValid")
    } else if now > end {
        (false, "Expired")
    } else {
        (true, "EnabledByPolicy")
    };
    json!({
        "@odata.type": "#microsoft.graph.temporaryAccessPassAuthenticationMethod",
        "id": t.id,
        "temporaryAccessPass": pass,
        "createdDateTime": t.created.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "startDateTime": t.start.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "lifetimeInMinutes": t.lifetime_minutes,
        "isUsableOnce": t.usable_once,
        "isUsable": usable,
        "methodUsabilityReason": reason,
    })
}

pub async fn create_tap(
    State(sim): State<Simulator>,
    Extension(version): Extension<ApiVersion>,
    Path(user): Path<String>,
    body: Bytes,
) -> Result<Response, GraphError> {
    let req: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| GraphError::bad_request("The request body is not valid JSON."))?
    };
    let lifetime = match req.get("lifetimeInMinutes") {
        None | Some(Value::Null) => TAP_DEFAULT,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| GraphError::bad_request("lifetimeInMinutes must be an integer."))?,
    };
    if !(TAP_MIN..=TAP_MAX).contains(&lifetime) {
        return Err(GraphError::bad_request(format!(
            "The requested lifetime {lifetime} is outside the range allowed by the Temporary Access Pass policy ({TAP_MIN}-{TAP_MAX} minutes)."
        )));
    }
    let start = match req.get("startDateTime").and_then(Value::as_str) {
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|_| GraphError::bad_request("startDateTime is not a valid date and time."))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let usable_once = req
        .get("isUsableOnce")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut data = sim.data();
    let u = data.find_user(&user).ok_or_else(|| user_not_found(&user))?;
    if u.user_type != "Member" {
        return Err(GraphError::bad_request(
            "Temporary Access Pass cannot be added to an external guest user.",
        ));
    }
    let user_id = u.id.clone();
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789+@#$%&*";
    let mut raw = [0u8; 8];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| GraphError::bad_request("RNG failure"))?;
    let pass: String = raw
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    let tap = StoredTap {
        id: uuid::Uuid::new_v4().to_string(),
        created: Utc::now(),
        start,
        lifetime_minutes: lifetime,
        usable_once,
    };
    let mut out = tap_json(&tap, Some(&pass));
    out["@odata.context"] = json!(format!(
        "https://graph.microsoft.com/{}/$metadata#users('{user_id}')/authentication/temporaryAccessPassMethods/$entity",
        version.path()
    ));
    // One pass per user: a new one replaces the old.
    data.taps.insert(user_id, tap);
    Ok(odata(StatusCode::CREATED, out))
}

pub async fn list_taps(
    State(sim): State<Simulator>,
    Extension(version): Extension<ApiVersion>,
    Path(user): Path<String>,
) -> Result<Response, GraphError> {
    let data = sim.data();
    let u = data.find_user(&user).ok_or_else(|| user_not_found(&user))?;
    let value: Vec<Value> = data
        .taps
        .get(&u.id)
        .map(|t| vec![tap_json(t, None)])
        .unwrap_or_default();
    Ok(odata(
        StatusCode::OK,
        json!({
            "@odata.context": format!("https://graph.microsoft.com/{}/$metadata#users('{}')/authentication/temporaryAccessPassMethods", version.path(), u.id),
            "value": value,
        }),
    ))
}

pub async fn policy_config(
    State(sim): State<Simulator>,
    Extension(version): Extension<ApiVersion>,
    Path(method): Path<String>,
) -> Result<Response, GraphError> {
    let ctx = format!(
        "https://graph.microsoft.com/{}/$metadata#policies/authenticationMethodsPolicy/authenticationMethodConfigurations/$entity",
        version.path()
    );
    match method.to_ascii_lowercase().as_str() {
        "fido2" => {
            let policy = sim.data().policy.clone();
            let mut v = serde_json::to_value(&policy).unwrap_or_default();
            v["@odata.context"] = json!(ctx);
            v["@odata.type"] = json!("#microsoft.graph.fido2AuthenticationMethodConfiguration");
            v["id"] = json!("Fido2");
            Ok(odata(StatusCode::OK, v))
        }
        "temporaryaccesspass" => Ok(odata(
            StatusCode::OK,
            json!({
                "@odata.context": ctx,
                "@odata.type": "#microsoft.graph.temporaryAccessPassAuthenticationMethodConfiguration",
                "id": "TemporaryAccessPass",
                "state": "enabled",
                "defaultLifetimeInMinutes": TAP_DEFAULT,
                "minimumLifetimeInMinutes": TAP_MIN,
                "maximumLifetimeInMinutes": TAP_MAX,
                "defaultLength": 8,
                "isUsableOnce": false,
                "includeTargets": [{"targetType": "group", "id": "all_users", "isRegistrationRequired": false}],
                "excludeTargets": [],
            }),
        )),
        _ => Err(GraphError::not_found(format!(
            "Authentication method configuration '{method}' was not found."
        ))),
    }
}
