//! Connection settings: tenant, app credentials, endpoints (sovereign clouds, simulators), retries.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use aws_lc_rs::signature::RsaKeyPair;
use base64::Engine;
use reqwest::Url;
use zeroize::Zeroizing;

use crate::error::EntraError;

/// The public cloud's identity platform.
pub const DEFAULT_AUTHORITY_URL: &str = "https://login.microsoftonline.com";
/// The public cloud's Graph.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";

/// A secret string that never prints and is wiped when dropped.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(Zeroizing::new(s.into()))
    }
    /// The secret text; call only where it is sent to its one destination.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Signature algorithm of the client assertion. Entra's current documentation uses PS256 with
/// `x5t#S256`; MSAL and older documentation use RS256 with `x5t`. Both are accepted by Entra.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionAlg {
    #[default]
    Ps256,
    Rs256,
}

/// An app certificate and its RSA private key, for certificate credentials.
pub struct CertificateCredential {
    pub(crate) cert_der: Vec<u8>,
    pub(crate) key: RsaKeyPair,
    pub(crate) alg: AssertionAlg,
}

impl CertificateCredential {
    /// From a DER certificate and an unencrypted PKCS#8 DER RSA private key.
    pub fn from_der(
        cert_der: Vec<u8>,
        key_pkcs8_der: &[u8],
        alg: AssertionAlg,
    ) -> Result<Self, EntraError> {
        let key = RsaKeyPair::from_pkcs8(key_pkcs8_der).map_err(|e| {
            EntraError::config(format!(
                "the certificate's private key is not a usable RSA PKCS#8 key ({e})"
            ))
        })?;
        if cert_der.first() != Some(&0x30) {
            return Err(EntraError::config("the certificate is not DER"));
        }
        Ok(CertificateCredential { cert_der, key, alg })
    }

    /// From PEM text: a `CERTIFICATE` block and a `PRIVATE KEY` (PKCS#8) block.
    pub fn from_pem(cert_pem: &str, key_pem: &str, alg: AssertionAlg) -> Result<Self, EntraError> {
        let cert = pem_block(cert_pem, "CERTIFICATE")?;
        let key = Zeroizing::new(pem_block(key_pem, "PRIVATE KEY")?);
        Self::from_der(cert, &key, alg)
    }
}

impl fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn pem_block(text: &str, label: &str) -> Result<Vec<u8>, EntraError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| EntraError::config(format!("no {label} PEM block found")))?;
    let body = &text[start + begin.len()..];
    let stop = body
        .find(&end)
        .ok_or_else(|| EntraError::config(format!("the {label} PEM block has no end line")))?;
    let b64: Zeroizing<String> = Zeroizing::new(
        body[..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect(),
    );
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| EntraError::config(format!("the {label} PEM block is not base64")))
}

/// How the app proves its identity to the token endpoint.
#[derive(Debug)]
pub enum ClientCredential {
    Secret(Secret),
    Certificate(Box<CertificateCredential>),
}

/// Retry behaviour for throttling (429/503 with Retry-After), other 5xx and dropped connections.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First backoff delay; doubled per attempt, with jitter.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A Retry-After longer than this is not slept through: the error goes back to the caller
    /// (a job can reschedule the item instead of holding a worker).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// Everything needed to talk to one tenant.
#[derive(Debug)]
pub struct EntraConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub credential: ClientCredential,
    /// `https://login.microsoftonline.com` by default; the token endpoint is
    /// `{authority_url}/{tenant_id}/oauth2/v2.0/token`.
    pub authority_url: String,
    /// `https://graph.microsoft.com` by default; calls go to `{graph_url}/v1.0/…` or `/beta/…`.
    pub graph_url: String,
    pub retry: RetryPolicy,
    /// Limit for one HTTP exchange.
    pub request_timeout: Duration,
}

impl EntraConfig {
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        credential: ClientCredential,
    ) -> Self {
        EntraConfig {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            credential,
            authority_url: DEFAULT_AUTHORITY_URL.into(),
            graph_url: DEFAULT_GRAPH_URL.into(),
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(60),
        }
    }

    pub fn with_authority_url(mut self, url: impl Into<String>) -> Self {
        self.authority_url = url.into();
        self
    }

    pub fn with_graph_url(mut self, url: impl Into<String>) -> Self {
        self.graph_url = url.into();
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// Parses a base URL: `https://` anywhere, `http://` only for loopback hosts (simulators, tests),
/// no query or fragment. Returns it without a trailing slash.
pub fn validate_base_url(name: &str, raw: &str) -> Result<String, EntraError> {
    let url = Url::parse(raw.trim())
        .map_err(|e| EntraError::config(format!("{name} is not a URL: {e}")))?;
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(EntraError::config(format!(
            "{name} must be a plain base URL (no query, fragment or credentials)"
        )));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(EntraError::config(format!(
                "{name} must use https:// (plain http:// is accepted only for loopback hosts)"
            )));
        }
        other => {
            return Err(EntraError::config(format!(
                "{name} has an unsupported scheme '{other}'"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(EntraError::config(format!("{name} has no host")));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

pub(crate) fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_only_for_loopback() {
        assert_eq!(
            validate_base_url("graph_url", "http://127.0.0.1:8080/").expect("loopback v4"),
            "http://127.0.0.1:8080"
        );
        assert!(validate_base_url("graph_url", "http://[::1]:9/").is_ok());
        assert!(validate_base_url("graph_url", "http://localhost:9").is_ok());
        let e = validate_base_url("graph_url", "http://graph.microsoft.com")
            .expect_err("plain http to a real host");
        assert!(e.reason().contains("https"), "{}", e.reason());
        assert!(validate_base_url("graph_url", "http://127.0.0.1.evil.example").is_err());
        assert!(validate_base_url("graph_url", "ftp://127.0.0.1").is_err());
        assert!(validate_base_url("graph_url", "https://graph.microsoft.us?x=1").is_err());
        assert_eq!(
            validate_base_url("authority_url", "https://login.microsoftonline.us")
                .expect("sovereign"),
            "https://login.microsoftonline.us"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let c = ClientCredential::Secret(s);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
