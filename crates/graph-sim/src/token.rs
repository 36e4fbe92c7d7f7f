//! The identity platform's v2.0 token endpoint, client-credentials grant only.
//!
//! Accepts a client secret (form field or HTTP Basic) or a certificate-signed client assertion
//! (RS256, PS256 or ES256; the certificate picked by its `x5t` or `x5t#S256` thumbprint among the
//! app's registered certificates). Errors carry the AADSTS codes Entra uses.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;

use crate::error::TokenError;
use crate::state::Simulator;
use crate::webauthn::{CertKey, cert_public_key};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub async fn token(
    State(sim): State<Simulator>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match issue(&sim, &tenant, &headers, &form) {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn issue(
    sim: &Simulator,
    tenant: &str,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<serde_json::Value, TokenError> {
    let cfg = sim.config();
    if !tenant.eq_ignore_ascii_case(&cfg.tenant_id) && !tenant.eq_ignore_ascii_case(&cfg.domain) {
        return Err(TokenError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ));
    }
    let grant = form
        .get("grant_type")
        .map(String::as_str)
        .unwrap_or_default();
    if grant != "client_credentials" {
        return Err(TokenError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type. This simulator supports only 'client_credentials'.",
        ));
    }
    let basic = basic_auth(headers);
    let client_id = form
        .get("client_id")
        .cloned()
        .or_else(|| basic.as_ref().map(|b| b.0.clone()))
        .unwrap_or_default();
    if client_id != cfg.client_id {
        return Err(TokenError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
            ),
        ));
    }
    let scope = form.get("scope").map(String::as_str).unwrap_or_default();
    if !scope.ends_with("/.default")
        || !(scope.starts_with("https://graph.microsoft") || scope.starts_with("http"))
    {
        return Err(TokenError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    }
    let secret = form
        .get("client_secret")
        .cloned()
        .or_else(|| basic.map(|b| b.1));
    if let Some(secret) = secret {
        let expected = sim.data().client_secret.clone();
        // Compare digests so the comparison time does not depend on where the strings differ.
        let a = digest::digest(&digest::SHA256, secret.as_bytes());
        let b = digest::digest(&digest::SHA256, expected.as_bytes());
        if a.as_ref() != b.as_ref() {
            return Err(TokenError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            ));
        }
    } else if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
            return Err(TokenError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "Invalid client_assertion_type; expected urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            ));
        }
        verify_assertion(sim, tenant, headers, &client_id, assertion)?;
    } else {
        return Err(TokenError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    let mut raw = [0u8; 48];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| {
        TokenError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "temporarily_unavailable",
            50000,
            "RNG failure.",
        )
    })?;
    let access_token = format!(
        "eyJ0eXAiOiJKV1QiLCJzaW0iOnRydWV9.{}",
        URL_SAFE_NO_PAD.encode(raw)
    );
    let lifetime = {
        let mut data = sim.data();
        let lifetime = data.token_lifetime;
        let now = Instant::now();
        data.tokens.retain(|_, exp| *exp > now);
        data.tokens.insert(access_token.clone(), now + lifetime);
        data.tokens_issued += 1;
        lifetime
    };
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "ext_expires_in": lifetime.as_secs(),
        "access_token": access_token,
    }))
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(v.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

fn assertion_error(aadsts: u32, msg: impl Into<String>) -> TokenError {
    TokenError::new(StatusCode::UNAUTHORIZED, "invalid_client", aadsts, msg)
}

fn verify_assertion(
    sim: &Simulator,
    tenant: &str,
    headers: &HeaderMap,
    client_id: &str,
    jwt: &str,
) -> Result<(), TokenError> {
    let malformed = || {
        TokenError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        )
    };
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).map_err(|_| malformed())?)
            .map_err(|_| malformed())?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).map_err(|_| malformed())?)
            .map_err(|_| malformed())?;
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| malformed())?;

    let certs = sim.data().client_certificates.clone();
    let x5t = header.get("x5t").and_then(|v| v.as_str());
    let x5t256 = header.get("x5t#S256").and_then(|v| v.as_str());
    let cert = certs.iter().find(|der| {
        let sha1 = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der));
        let sha256 = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, der));
        x5t == Some(sha1.as_str()) || x5t256 == Some(sha256.as_str())
    });
    let Some(cert) = cert else {
        return Err(assertion_error(
            700027,
            "The certificate with identifier used to sign the client assertion is not registered on application.",
        ));
    };
    let key = cert_public_key(cert)
        .map_err(|_| assertion_error(700027, "The registered certificate cannot be parsed."))?;
    let alg: &'static dyn signature::VerificationAlgorithm = match (
        header.get("alg").and_then(|v| v.as_str()),
        &key,
    ) {
        (Some("RS256"), CertKey::Rsa(_)) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (Some("PS256"), CertKey::Rsa(_)) => &signature::RSA_PSS_2048_8192_SHA256,
        (Some("ES256"), CertKey::P256(_)) => &signature::ECDSA_P256_SHA256_FIXED,
        _ => {
            return Err(assertion_error(
                700027,
                "Client assertion contains an unsupported signing algorithm for the registered key.",
            ));
        }
    };
    let signed = &jwt[..h.len() + 1 + c.len()];
    UnparsedPublicKey::new(alg, key.bytes())
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| assertion_error(700027, "Client assertion failed signature validation."))?;

    let claim = |n: &str| {
        claims
            .get(n)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    if claim("iss") != client_id || claim("sub") != client_id {
        return Err(assertion_error(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    let aud = claim("aud");
    let own = format!(
        "{}/{tenant}/oauth2/v2.0/token",
        crate::http::base_url(headers)
    );
    let real = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token");
    if aud != own && aud != real {
        return Err(assertion_error(
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{aud}'."
            ),
        ));
    }
    if claim("jti").is_empty() {
        return Err(assertion_error(
            700023,
            "Client assertion is missing the 'jti' claim.",
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let exp = claims.get("exp").and_then(|v| v.as_i64()).unwrap_or(0);
    let nbf = claims.get("nbf").and_then(|v| v.as_i64()).unwrap_or(now);
    let skew = Duration::from_secs(300).as_secs() as i64;
    if exp <= now - skew || nbf > now + skew {
        return Err(assertion_error(
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    Ok(())
}
