//! The tool's state home: device key, server URL, certificate pin.
//!
//! Layout of the home directory (`--home`, `KEYWARD_PAIR_HOME`, or the platform config dir):
//! - `device-key.p8` — the P-256 device key as PKCS#8 DER, mode 0600, created by `login`/`activate`.
//! - `state.json` — server URL, device id, who the device belongs to, optional certificate pin.
//!
//! Both files are written to a temporary name and renamed, so a crash never leaves half a key.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::protocol::{Principal, RELAY_PATH};

const KEY_FILE: &str = "device-key.p8";
const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("not logged in: run `keyward-pair login` or `keyward-pair activate` first")]
    NotLoggedIn,
    #[error("no state directory: pass --home or set KEYWARD_PAIR_HOME")]
    NoHome,
    #[error("could not generate the device key")]
    KeyGeneration,
}

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairState {
    /// The server's base URL as given to `login`/`activate` (validated by [`ServerUrl::parse`]).
    pub server: String,
    pub device_id: String,
    pub principal: Principal,
    /// Lower-case hex SHA-256 of the server's end-entity certificate (DER), when pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pin: Option<String>,
}

/// The device key. Its `Debug` output shows only the public key.
pub struct DeviceKey {
    pair: EcdsaKeyPair,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey")
            .field("public_key", &hex_lower(self.public_key()))
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// Generates a fresh key, returning it with its PKCS#8 encoding (to be written to disk).
    pub fn generate() -> Result<(Self, Vec<u8>), StateError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| StateError::KeyGeneration)?;
        let der = pkcs8.as_ref().to_vec();
        let key = Self::from_pkcs8(&der).ok_or(StateError::KeyGeneration)?;
        Ok((key, der))
    }

    fn from_pkcs8(der: &[u8]) -> Option<Self> {
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .ok()
            .map(|pair| Self { pair })
    }

    /// The uncompressed SEC1 public point (65 bytes) registered with the server.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Signs `message` (ECDSA P-256 SHA-256, ASN.1 DER).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        // Signing with a valid key and the system RNG only fails if the RNG is broken, in which
        // case no signature can be trusted and stopping is right.
        self.pair
            .sign(&rng, message)
            .expect("invariant: system RNG available for ECDSA signing")
            .as_ref()
            .to_vec()
    }
}

/// The state home directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// `explicit` (from `--home` or `KEYWARD_PAIR_HOME`, which clap merges) or the platform default.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Self, StateError> {
        match explicit {
            Some(dir) => Ok(Self { dir }),
            None => default_config_dir()
                .map(|d| Self {
                    dir: d.join("keyward-pair"),
                })
                .ok_or(StateError::NoHome),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path, source: std::io::Error) -> StateError {
        let _ = self;
        StateError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Writes a new device key and state, replacing any previous login.
    pub fn save(&self, key_pkcs8: &[u8], state: &PairState) -> Result<(), StateError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        restrict_dir(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        self.write_atomic(KEY_FILE, key_pkcs8)?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| StateError::Corrupt {
            path: self.dir.join(STATE_FILE),
            reason: e.to_string(),
        })?;
        self.write_atomic(STATE_FILE, &json)
    }

    /// Loads the device key and state written by `login`/`activate`.
    pub fn load(&self) -> Result<(DeviceKey, PairState), StateError> {
        let state_path = self.dir.join(STATE_FILE);
        let key_path = self.dir.join(KEY_FILE);
        let state_bytes = match fs::read(&state_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotLoggedIn);
            }
            Err(e) => return Err(self.io(&state_path, e)),
        };
        let state: PairState =
            serde_json::from_slice(&state_bytes).map_err(|e| StateError::Corrupt {
                path: state_path.clone(),
                reason: e.to_string(),
            })?;
        let der = match fs::read(&key_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotLoggedIn);
            }
            Err(e) => return Err(self.io(&key_path, e)),
        };
        let key = DeviceKey::from_pkcs8(&der).ok_or_else(|| StateError::Corrupt {
            path: key_path,
            reason: "not a P-256 PKCS#8 key".into(),
        })?;
        Ok((key, state))
    }

    /// Deletes the device key and state. Missing files are not an error.
    pub fn clear(&self) -> Result<(), StateError> {
        for name in [KEY_FILE, STATE_FILE] {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(&path, e)),
            }
        }
        Ok(())
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Created 0600 from the start: the key must never be readable by others, not even for
            // the moment between creation and a chmod.
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(|e| self.io(&tmp, e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| self.io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| self.io(&path, e))
    }
}

#[cfg(unix)]
fn restrict_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn restrict_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// The platform's per-user configuration directory, without pulling in a crate for it.
fn default_config_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if cfg!(windows) {
        env("APPDATA")
    } else if cfg!(target_os = "macos") {
        env("HOME").map(|h| h.join("Library").join("Application Support"))
    } else {
        env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config")))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("invalid server URL: {0}")]
    Invalid(String),
    #[error(
        "server URL must use https:// (http:// is accepted only for loopback hosts such as 127.0.0.1)"
    )]
    InsecureRemote,
    #[error("server URL must start with https:// or http://")]
    Scheme,
}

/// A validated Keyward server base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(Url);

impl ServerUrl {
    /// Accepts `https://…`, and `http://…` only for loopback hosts: a relay carries a live
    /// security key, so it never crosses a network unencrypted.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let url = Url::parse(text.trim()).map_err(|e| UrlError::Invalid(e.to_string()))?;
        if url.cannot_be_a_base() || url.host().is_none() {
            return Err(UrlError::Invalid("no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Invalid(
                "credentials in the URL are not allowed".into(),
            ));
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => return Err(UrlError::InsecureRemote),
            _ => return Err(UrlError::Scheme),
        }
        Ok(Self(url))
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    pub fn is_tls(&self) -> bool {
        self.0.scheme() == "https"
    }

    /// An endpoint below the base URL, e.g. `/api/v1/pair/devices`.
    pub fn endpoint(&self, path: &str) -> Url {
        let mut u = self.0.clone();
        let base = u.path().trim_end_matches('/').to_owned();
        u.set_path(&format!("{base}{path}"));
        u.set_query(None);
        u.set_fragment(None);
        u
    }

    /// The relay WebSocket URL (`ws://` or `wss://`).
    pub fn relay_url(&self) -> String {
        let u = self.endpoint(RELAY_PATH);
        let rest = u
            .as_str()
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or_default();
        format!("{}://{rest}", if self.is_tls() { "wss" } else { "ws" })
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // IPv6 hosts come bracketed; a domain name never parses as an address.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Lower-case hex, for certificate pins and log lines with public data.
pub fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a certificate pin given as hex (optionally `sha256:` prefixed, `:` separators allowed).
pub fn parse_pin(text: &str) -> Option<String> {
    let t = text.trim();
    let t = t.strip_prefix("sha256:").unwrap_or(t);
    let hex: String = t
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_only_for_loopback() {
        assert!(ServerUrl::parse("http://127.0.0.1:8080").is_ok());
        assert!(ServerUrl::parse("http://127.5.5.5").is_ok());
        assert!(ServerUrl::parse("http://localhost:8080/").is_ok());
        assert!(ServerUrl::parse("http://[::1]:9000").is_ok());
        assert_eq!(
            ServerUrl::parse("http://keyward.example.com"),
            Err(UrlError::InsecureRemote)
        );
        assert_eq!(
            ServerUrl::parse("http://10.0.0.1:8080"),
            Err(UrlError::InsecureRemote)
        );
        // A name that merely starts like loopback must not pass.
        assert_eq!(
            ServerUrl::parse("http://127.0.0.1.example.com"),
            Err(UrlError::InsecureRemote)
        );
        assert_eq!(ServerUrl::parse("ftp://127.0.0.1"), Err(UrlError::Scheme));
        assert!(ServerUrl::parse("https://keyward.example.com").is_ok());
        assert!(matches!(
            ServerUrl::parse("https://u:p@keyward.example.com"),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(
            ServerUrl::parse("not a url"),
            Err(UrlError::Invalid(_))
        ));
    }

    #[test]
    fn relay_url_follows_scheme_and_base_path() {
        let u = ServerUrl::parse("https://k.example.com/keyward/").expect("valid");
        assert_eq!(u.relay_url(), "wss://k.example.com/keyward/api/v1/relay");
        let u = ServerUrl::parse("http://127.0.0.1:8080").expect("valid");
        assert_eq!(u.relay_url(), "ws://127.0.0.1:8080/api/v1/relay");
        assert_eq!(
            u.endpoint("/api/v1/pair/activate").as_str(),
            "http://127.0.0.1:8080/api/v1/pair/activate"
        );
    }

    #[test]
    fn pin_parsing() {
        let h = "AB".repeat(32);
        assert_eq!(parse_pin(&format!("sha256:{h}")), Some("ab".repeat(32)));
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_pin(&colons), Some("ab".repeat(32)));
        assert_eq!(parse_pin("abcd"), None);
        assert_eq!(parse_pin(&"zz".repeat(32)), None);
    }

    #[test]
    fn save_load_clear_round_trip_with_private_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::resolve(Some(dir.path().join("h"))).expect("home");
        assert!(matches!(home.load(), Err(StateError::NotLoggedIn)));
        let (key, der) = DeviceKey::generate().expect("key");
        let state = PairState {
            server: "http://127.0.0.1:1".into(),
            device_id: "dev-1".into(),
            principal: Principal::User {
                id: "u".into(),
                upn: "u@example.com".into(),
            },
            cert_pin: None,
        };
        home.save(&der, &state).expect("save");
        let (loaded, st) = home.load().expect("load");
        assert_eq!(st, state);
        assert_eq!(loaded.public_key(), key.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("h").join(KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        home.clear().expect("clear");
        assert!(matches!(home.load(), Err(StateError::NotLoggedIn)));
    }

    #[test]
    fn damaged_key_file_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
        let state = PairState {
            server: "http://127.0.0.1:1".into(),
            device_id: "d".into(),
            principal: Principal::Admin {
                id: "a".into(),
                email: "a@example.com".into(),
            },
            cert_pin: None,
        };
        home.save(b"not a key", &state).expect("save");
        assert!(matches!(home.load(), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn device_key_debug_hides_private_part() {
        let (key, der) = DeviceKey::generate().expect("key");
        let dbg = format!("{key:?}");
        assert!(dbg.contains(&hex_lower(key.public_key())));
        // ECPrivateKey: version 1, then the 32-byte private scalar as an OCTET STRING.
        let at = der
            .windows(5)
            .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
            .expect("ECPrivateKey in PKCS#8");
        let scalar = &der[at + 5..at + 37];
        assert!(!dbg.contains(&hex_lower(scalar)));
        assert!(!dbg.contains(&hex_lower(&scalar[..8])));
    }
}
