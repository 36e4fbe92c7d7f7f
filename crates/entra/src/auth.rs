//! App-only tokens (client credentials) with a client secret or a certificate assertion, cached
//! until shortly before they expire.

use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;

use crate::config::{AssertionAlg, CertificateCredential, ClientCredential, Secret};
use crate::error::{EntraError, ErrorKind};

/// A cached access token.
pub(crate) struct CachedToken {
    pub token: Secret,
    pub refresh_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
    trace_id: Option<String>,
}

/// When to fetch a new token: five minutes before expiry, or half-way for short-lived tokens.
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 2).min(Duration::from_secs(300))
}

/// Builds the signed client assertion JWT for a certificate credential.
pub(crate) fn client_assertion(
    cert: &CertificateCredential,
    client_id: &str,
    audience: &str,
) -> Result<String, EntraError> {
    let sha256 = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &cert.cert_der));
    let sha1 = URL_SAFE_NO_PAD.encode(digest::digest(
        &digest::SHA1_FOR_LEGACY_USE_ONLY,
        &cert.cert_der,
    ));
    let header = match cert.alg {
        AssertionAlg::Ps256 => json!({"alg": "PS256", "typ": "JWT", "x5t#S256": sha256}),
        AssertionAlg::Rs256 => json!({"alg": "RS256", "typ": "JWT", "x5t": sha1}),
    };
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now,
        "iat": now,
        // Entra recommends a short life; ten minutes covers clock skew and retries.
        "exp": now + 600,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0u8; cert.key.public_modulus_len()];
    let alg: &'static dyn aws_lc_rs::signature::RsaEncoding = match cert.alg {
        AssertionAlg::Ps256 => &RSA_PSS_SHA256,
        AssertionAlg::Rs256 => &RSA_PKCS1_SHA256,
    };
    cert.key
        .sign(
            alg,
            &aws_lc_rs::rand::SystemRandom::new(),
            signing_input.as_bytes(),
            &mut sig,
        )
        .map_err(|_| EntraError::config("signing the client assertion failed"))?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Asks the token endpoint once. `Err` with kind Transport means "may retry".
pub(crate) async fn request_token(
    http: &reqwest::Client,
    token_url: &str,
    client_id: &str,
    scope: &str,
    credential: &ClientCredential,
) -> Result<(Secret, Duration), EntraError> {
    let assertion;
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("scope", scope),
    ];
    match credential {
        ClientCredential::Secret(s) => form.push(("client_secret", s.expose())),
        ClientCredential::Certificate(cert) => {
            assertion = client_assertion(cert, client_id, token_url)?;
            form.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
            form.push(("client_assertion", &assertion));
        }
    }
    let resp = http
        .post(token_url)
        .form(&form)
        .send()
        .await
        .map_err(|e| EntraError::transport(format!("token endpoint: {}", without_url(&e))))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| EntraError::transport(format!("token endpoint: {}", without_url(&e))))?;
    if status.is_success() {
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| EntraError::bad_response(format!("token response is not JSON: {e}")))?;
        let token = t
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| EntraError::bad_response("token response has no access_token"))?;
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(3599));
        return Ok((Secret::new(token), lifetime));
    }
    let parsed: Option<TokenErrorBody> = serde_json::from_slice(&body).ok();
    let mut err = if status.is_server_error() || status.as_u16() == 429 {
        EntraError::transport(format!("token endpoint answered {status}"))
    } else {
        let (desc, code, trace) = match &parsed {
            Some(p) => (
                // The first line of the description is the human part; the rest is trace ids.
                p.error_description
                    .as_deref()
                    .unwrap_or_default()
                    .split(" Trace ID:")
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                p.error_codes
                    .first()
                    .map(|c| format!("AADSTS{c}"))
                    .or_else(|| p.error.clone()),
                p.trace_id.clone(),
            ),
            None => (format!("token endpoint answered {status}"), None, None),
        };
        let mut e = EntraError::new(ErrorKind::Auth, desc);
        e.code = code;
        e.request_id = trace;
        e
    };
    err.status = Some(status.as_u16());
    Err(err)
}

/// reqwest errors print the URL; ours carry none with secrets, but keep messages short anyway.
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s
            .replace(&format!(" ({url})"), "")
            .replace(url.as_str(), "<url>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
