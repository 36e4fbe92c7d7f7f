//! Server configuration: defaults, then a TOML file, then `KEYWARD_*` environment variables.
//!
//! Secrets (none are required yet; the vault reads its own variables) are wrapped in [`Secret`],
//! which never prints its contents.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration value that must never reach logs or Debug output.
#[derive(Clone, Default)]
pub struct Secret(zeroize::Zeroizing<String>);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(zeroize::Zeroizing::new(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid value for {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// The file form: every field optional, unknown keys rejected so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<Secret>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    log_format: Option<String>,
    session_hours: Option<i64>,
    public_url: Option<String>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// May carry a database password, hence secret.
    pub database_url: Secret,
    /// PEM certificate chain and key; required for non-loopback listening unless a self-signed
    /// certificate is generated (with a warning).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `text` or `json`.
    pub log_format: String,
    pub session_hours: i64,
    /// The URL admins open the panel at (scheme, host, optional port; no path). It is the WebAuthn
    /// origin of admin passkeys, its host their relying-party id, and the base of printed links.
    /// Unset on a loopback address it is `http://localhost:<port>` (an IP address cannot be a
    /// WebAuthn relying-party id).
    pub public_url: Option<String>,
}

/// The environment variables this server reads; any other `KEYWARD_*` earns a warning.
pub const KNOWN_ENV: &[&str] = &[
    "KEYWARD_LISTEN",
    "KEYWARD_DATA_DIR",
    "KEYWARD_DATABASE_URL",
    "KEYWARD_TLS_CERT",
    "KEYWARD_TLS_KEY",
    "KEYWARD_LOG_FORMAT",
    "KEYWARD_SESSION_HOURS",
    "KEYWARD_PUBLIC_URL",
    "KEYWARD_CONFIG",
    "KEYWARD_LOG",
    // Read by other parts (vault, softkey, pairing tool, graph simulator, tests and benchmarks),
    // listed so they are not reported as unknown.
    keyward_vault::ENV_KEK,
    keyward_vault::ENV_KEK_NEXT,
    keyward_vault::ENV_KEY_FILE,
    keyward_vault::ENV_PKCS11_MODULE,
    keyward_vault::ENV_PKCS11_TOKEN,
    keyward_vault::ENV_PKCS11_PIN,
    keyward_vault::ENV_PKCS11_KEY_LABEL,
    "KEYWARD_SOFTKEY_PASSPHRASE",
    "KEYWARD_PAIR_HOME",
    "KEYWARD_PAIR_LOG",
    "KEYWARD_GRAPH_SIM_CLIENT_SECRET",
    "KEYWARD_BIN",
    "KEYWARD_API_EXAMPLES",
    "KEYWARD_TEST_POSTGRES_URL",
    "KEYWARD_TEST_SOFTHSM_DIR",
    "KEYWARD_BENCH_KEYS",
    "KEYWARD_BENCH_OPS",
    "KEYWARD_BENCH_TASKS",
];

impl Config {
    /// Loads the configuration from an optional TOML file and the given environment.
    /// Returns the configuration and the names of unknown `KEYWARD_*` variables (to warn about).
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let fc = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    source: Box::new(e),
                })?
            }
            None => FileConfig::default(),
        };
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let listen_s = get("KEYWARD_LISTEN")
            .or(fc.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen =
            listen_s
                .parse()
                .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
                    name: "KEYWARD_LISTEN",
                    reason: e.to_string(),
                })?;
        let data_dir = get("KEYWARD_DATA_DIR")
            .map(PathBuf::from)
            .or(fc.data_dir)
            .unwrap_or_else(|| "./keyward-data".into());
        let database_url = get("KEYWARD_DATABASE_URL")
            .map(Secret::new)
            .or(fc.database_url)
            .unwrap_or_else(|| {
                Secret::new(format!(
                    "sqlite://{}",
                    data_dir.join("keyward.db").display()
                ))
            });
        let log_format = get("KEYWARD_LOG_FORMAT")
            .or(fc.log_format)
            .unwrap_or_else(|| "text".into());
        if !matches!(log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid {
                name: "KEYWARD_LOG_FORMAT",
                reason: "expected text or json".into(),
            });
        }
        let session_hours = match get("KEYWARD_SESSION_HOURS") {
            Some(v) => v.parse().map_err(|_| ConfigError::Invalid {
                name: "KEYWARD_SESSION_HOURS",
                reason: "expected a whole number of hours".into(),
            })?,
            None => fc.session_hours.unwrap_or(12),
        };
        if !(1..=24 * 30).contains(&session_hours) {
            return Err(ConfigError::Invalid {
                name: "KEYWARD_SESSION_HOURS",
                reason: "expected 1 to 720".into(),
            });
        }
        let public_url = match get("KEYWARD_PUBLIC_URL").or(fc.public_url) {
            Some(u) => Some(parse_public_url(&u)?),
            None => None,
        };
        let config = Config {
            public_url,
            listen,
            data_dir,
            database_url,
            tls_cert: get("KEYWARD_TLS_CERT").map(PathBuf::from).or(fc.tls_cert),
            tls_key: get("KEYWARD_TLS_KEY").map(PathBuf::from).or(fc.tls_key),
            log_format,
            session_hours,
        };
        if config.tls_cert.is_some() != config.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                name: "KEYWARD_TLS_CERT",
                reason: "set both tls_cert and tls_key, or neither".into(),
            });
        }
        let unknown = env
            .keys()
            .filter(|k| k.starts_with("KEYWARD_") && !KNOWN_ENV.contains(&k.as_str()))
            .cloned()
            .collect();
        Ok((config, unknown))
    }

    /// The effective public URL: the configured one, or `http://localhost:<port>` on loopback.
    /// `None` when neither applies; passkey sign-in and printed links then need `public_url`.
    pub fn effective_public_url(&self) -> Option<String> {
        match &self.public_url {
            Some(u) => Some(u.clone()),
            None if self.is_loopback() && self.tls_cert.is_none() => {
                Some(format!("http://localhost:{}", self.listen.port()))
            }
            None if self.is_loopback() => Some(format!("https://localhost:{}", self.listen.port())),
            None => None,
        }
    }

    /// Whether the listening address is loopback (plain HTTP allowed).
    pub fn is_loopback(&self) -> bool {
        self.listen.ip().is_loopback()
    }
}

/// Checks a public URL: `https://host[:port]`, or `http://` for localhost only; no path, query or
/// fragment (a WebAuthn origin has none). Returns it without a trailing slash.
pub fn parse_public_url(url: &str) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        name: "KEYWARD_PUBLIC_URL",
        reason: reason.to_owned(),
    };
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("expected https://host[:port]"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(invalid("expected only scheme, host and port, no path"));
    }
    let host = match rest.split_once(':') {
        Some((h, port)) => {
            port.parse::<u16>()
                .map_err(|_| invalid("the port must be a number"))?;
            h
        }
        None => rest,
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(invalid(
            "the host must be a DNS name (WebAuthn does not accept IP addresses)",
        ));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(invalid(
            "the host must be a DNS name (WebAuthn does not accept IP addresses)",
        ));
    }
    match scheme {
        "https" => {}
        "http" if host == "localhost" => {}
        _ => return Err(invalid("use https (http only for localhost)")),
    }
    Ok(format!("{scheme}://{}", rest.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let (c, unknown) = Config::load(None, &env(&[])).expect("defaults");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./keyward-data"));
        assert_eq!(
            c.database_url.expose(),
            "sqlite://./keyward-data/keyward.db"
        );
        assert!(unknown.is_empty());
    }

    #[test]
    fn env_overrides_file_and_unknown_variables_are_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("k.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:9000\"\ndata_dir = \"/var/kw\"\n").expect("write");
        let (c, unknown) = Config::load(
            Some(&f),
            &env(&[
                ("KEYWARD_LISTEN", "127.0.0.1:9001"),
                ("KEYWARD_LISTN", "x"),
                ("OTHER", "y"),
            ]),
        )
        .expect("load");
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.database_url.expose(), "sqlite:///var/kw/keyward.db");
        assert_eq!(unknown, vec!["KEYWARD_LISTN".to_string()]);
    }

    #[test]
    fn bad_values_and_unknown_file_keys_are_rejected() {
        assert!(Config::load(None, &env(&[("KEYWARD_LISTEN", "nonsense")])).is_err());
        assert!(Config::load(None, &env(&[("KEYWARD_TLS_CERT", "/c.pem")])).is_err());
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("k.toml");
        std::fs::write(&f, "lisen = \"x\"\n").expect("write");
        assert!(matches!(
            Config::load(Some(&f), &env(&[])),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn the_example_config_parses_to_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/keyward.example.toml");
        let (c, _) = Config::load(Some(Path::new(example)), &env(&[])).expect("example config");
        let (d, _) = Config::load(None, &env(&[])).expect("defaults");
        assert_eq!(
            (c.listen, c.data_dir, c.session_hours),
            (d.listen, d.data_dir, d.session_hours)
        );
    }

    #[test]
    fn public_url_defaults_to_localhost_on_loopback_and_is_checked() {
        let (c, _) =
            Config::load(None, &env(&[("KEYWARD_LISTEN", "127.0.0.1:9123")])).expect("load");
        assert_eq!(
            c.effective_public_url().as_deref(),
            Some("http://localhost:9123")
        );
        let (c, _) = Config::load(
            None,
            &env(&[("KEYWARD_PUBLIC_URL", "https://Keys.Example.com:8443/")]),
        )
        .expect("load");
        assert_eq!(
            c.public_url.as_deref(),
            Some("https://keys.example.com:8443")
        );
        for bad in [
            "keys.example.com",
            "http://keys.example.com",
            "https://10.0.0.1",
            "https://keys.example.com/panel",
            "https://keys.example.com:x",
        ] {
            assert!(
                Config::load(None, &env(&[("KEYWARD_PUBLIC_URL", bad)])).is_err(),
                "{bad} must be refused"
            );
        }
        let (c, _) = Config::load(None, &env(&[("KEYWARD_LISTEN", "0.0.0.0:8443")])).expect("load");
        assert_eq!(c.effective_public_url(), None);
    }

    #[test]
    fn secrets_do_not_print() {
        let (c, _) = Config::load(
            None,
            &env(&[("KEYWARD_DATABASE_URL", "postgres://u:hunter2@h/db")]),
        )
        .expect("load");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
