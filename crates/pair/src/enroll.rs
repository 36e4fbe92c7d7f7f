//! `login` and `activate`: generate a device key and register its public half with the server.

use crate::protocol::{
    ACTIVATE_PATH, ActivateRequest, DeviceRegistered, REGISTER_DEVICE_PATH, RegisterDeviceRequest,
};
use crate::state::{DeviceKey, Home, PairState, ServerUrl, StateError};
use crate::tls::pinned_config;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error(
        "the server rejected the API token (HTTP {0}); create a new one with `keyward token create`"
    )]
    BadToken(u16),
    #[error(
        "the activation code is invalid, expired or already used (HTTP {0}); ask an admin for a new one"
    )]
    BadCode(u16),
    #[error(
        "{url} has no Keyward pairing endpoint (HTTP 404): is --server the Keyward server's address?"
    )]
    NotKeyward { url: String },
    #[error("the server refused the registration (HTTP {status}): {body}")]
    Refused { status: u16, body: String },
    #[error("the server's answer was not understood: {0}")]
    BadAnswer(String),
    #[error("invalid certificate pin configuration: {0}")]
    Tls(String),
}

/// How to reach the server for registration.
#[derive(Debug, Clone)]
pub struct EnrollTarget {
    pub server: ServerUrl,
    /// Hex SHA-256 of the server certificate to trust instead of public CAs.
    pub cert_pin: Option<String>,
    /// The label the panel shows for this device.
    pub name: String,
}

fn http_client(target: &EnrollTarget) -> Result<reqwest::Client, EnrollError> {
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(pin) = &target.cert_pin {
        let (cfg, _) = pinned_config(pin).map_err(|e| EnrollError::Tls(e.to_string()))?;
        b = b.use_preconfigured_tls((*cfg).clone());
    }
    b.build().map_err(|e| EnrollError::Tls(e.to_string()))
}

/// Registers an admin's device with an API token and stores the new state in `home`.
pub async fn login(
    home: &Home,
    target: &EnrollTarget,
    api_token: &str,
) -> Result<DeviceRegistered, EnrollError> {
    let (key, der) = DeviceKey::generate()?;
    let url = target.server.endpoint(REGISTER_DEVICE_PATH);
    let body = RegisterDeviceRequest {
        public_key: key.public_key().to_vec(),
        name: target.name.clone(),
    };
    let req = http_client(target)?
        .post(url.clone())
        .bearer_auth(api_token)
        .json(&body);
    let reg = send(req, url.as_str(), EnrollError::BadToken).await?;
    save(home, target, &der, &reg)?;
    Ok(reg)
}

/// Registers a user's device with a one-time activation code and stores the new state in `home`.
pub async fn activate(
    home: &Home,
    target: &EnrollTarget,
    code: &str,
) -> Result<DeviceRegistered, EnrollError> {
    let (key, der) = DeviceKey::generate()?;
    let url = target.server.endpoint(ACTIVATE_PATH);
    let body = ActivateRequest {
        code: code.trim().to_owned(),
        public_key: key.public_key().to_vec(),
        name: target.name.clone(),
    };
    let req = http_client(target)?.post(url.clone()).json(&body);
    let reg = send(req, url.as_str(), EnrollError::BadCode).await?;
    save(home, target, &der, &reg)?;
    Ok(reg)
}

fn save(
    home: &Home,
    target: &EnrollTarget,
    der: &[u8],
    reg: &DeviceRegistered,
) -> Result<(), EnrollError> {
    let state = PairState {
        server: target.server.as_url().to_string(),
        device_id: reg.device_id.clone(),
        principal: reg.principal.clone(),
        cert_pin: target.cert_pin.clone(),
    };
    home.save(der, &state)?;
    Ok(())
}

async fn send(
    req: reqwest::RequestBuilder,
    url: &str,
    credential_error: impl Fn(u16) -> EnrollError,
) -> Result<DeviceRegistered, EnrollError> {
    let resp = req.send().await.map_err(|e| EnrollError::Unreachable {
        url: url.to_owned(),
        detail: describe(&e),
    })?;
    let status = resp.status().as_u16();
    match status {
        200 | 201 => resp
            .json()
            .await
            .map_err(|e| EnrollError::BadAnswer(e.to_string())),
        401 | 403 => Err(credential_error(status)),
        // Activation answers 4xx (the server uses 409) for an unknown, used or expired code.
        400 | 409 | 410 if url.ends_with(ACTIVATE_PATH) => Err(credential_error(status)),
        404 => Err(EnrollError::NotKeyward {
            url: url.to_owned(),
        }),
        _ => {
            // problem+json bodies are safe to show: the server never puts secrets in them.
            let body = resp.text().await.unwrap_or_default();
            Err(EnrollError::Refused {
                status,
                body: body.chars().take(400).collect(),
            })
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    if s.contains("certificate") || s.contains("UnknownIssuer") {
        s.push_str(
            " — if the server uses a self-signed certificate, pass --pin sha256:<fingerprint> \
             (printed by `keyward serve` when it starts)",
        );
    }
    s
}

/// A label for this device: the host name when known.
pub fn default_device_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "keyward-pair".to_owned())
}
