//! Key protection for Keyward: per-key data keys sealed under a key-encryption key.
//!
//! Every security key has its own random data key (DEK). The DEK seals that key's credential
//! private keys (AES-256-GCM, additional data binding organisation, user, key, credential and key
//! version: see [`SealAad`]) and keys its PIN verifier (HMAC-SHA256). The DEK is stored in the
//! database only *wrapped* by a key-encryption key (KEK), together with the KEK's version; the
//! wrap binds organisation and key id, so a wrapped DEK copied to another row does not unwrap.
//!
//! The KEK comes from one of three places ([`KekSource`]):
//! - a key file (`<data dir>/vault.key` by default, created with mode 0600 on first start);
//! - the environment: `KEYWARD_VAULT_KEK` (base64 of 32 bytes, optionally `<version>:` first),
//!   with `KEYWARD_VAULT_KEK_NEXT` during a rotation;
//! - a PKCS#11 token, where wrapping and unwrapping run on the token (CKM_AES_GCM).
//!
//! Rotation ([`Vault::prepare_rotation`], [`Vault::rewrap`], [`Vault::finish_rotation`]) adds a
//! new KEK version, re-wraps every DEK (the caller does a compare-and-swap per row), then retires
//! the old versions. A running server picks up new key-file or token versions on its own.

mod datakey;
mod local;
mod pkcs11;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use cryptoki::object::ObjectHandle;
use zeroize::Zeroizing;

pub use datakey::{DataKey, KEY_LEN, SealAad};
pub use pkcs11::Pkcs11Config;
/// Re-exported because [`KeyBinding`] and [`SealAad`] are keyed by it.
pub use uuid::Uuid;

use local::LocalKek;
use pkcs11::TokenKeks;

/// Errors of the vault. None carries key material, PINs or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Sealed or wrapped data did not authenticate: it belongs to another row, was altered, or
    /// was wrapped under a different KEK with the same version number.
    #[error("sealed data failed to open")]
    Integrity,
    /// Data wrapped under a KEK version this vault does not hold.
    #[error("key-encryption key version {0} is not available")]
    UnknownKekVersion(i32),
    #[error("vault key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bad configuration (a malformed key, a missing variable, loose file permissions).
    #[error("vault configuration: {0}")]
    Config(String),
    #[error("PKCS#11 token: {0}")]
    Pkcs11(String),
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

impl VaultError {
    /// True when the vault itself is unavailable (as opposed to bad data): callers fail closed
    /// with "service unavailable" rather than blaming the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            VaultError::KeyFile { .. }
                | VaultError::Pkcs11(_)
                | VaultError::Crypto(_)
                | VaultError::UnknownKekVersion(_)
        )
    }
}

/// The row a wrapped data key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyBinding {
    pub org_id: Uuid,
    pub key_id: Uuid,
}

/// Where the key-encryption key comes from.
#[derive(Clone)]
pub enum KekSource {
    /// A key file; created with one fresh KEK (mode 0600) if missing.
    KeyFile(PathBuf),
    /// Base64 KEKs from the environment, `[<version>:]<base64>`. Without a version prefix the
    /// current KEK is version 1 and the next one is the current version + 1.
    Env {
        current: Zeroizing<String>,
        next: Option<Zeroizing<String>>,
    },
    /// AES-256 KEK objects on a PKCS#11 token; created on first start if none exists.
    Pkcs11(Pkcs11Config),
}

impl std::fmt::Debug for KekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KekSource::KeyFile(p) => f.debug_tuple("KeyFile").field(p).finish(),
            KekSource::Env { next, .. } => f
                .debug_struct("Env")
                .field("next", &next.is_some())
                .finish_non_exhaustive(),
            KekSource::Pkcs11(c) => f.debug_tuple("Pkcs11").field(c).finish(),
        }
    }
}

/// Environment variables the vault reads.
pub const ENV_KEK: &str = "KEYWARD_VAULT_KEK";
pub const ENV_KEK_NEXT: &str = "KEYWARD_VAULT_KEK_NEXT";
pub const ENV_KEY_FILE: &str = "KEYWARD_VAULT_KEY_FILE";
pub const ENV_PKCS11_MODULE: &str = "KEYWARD_VAULT_PKCS11_MODULE";
pub const ENV_PKCS11_TOKEN: &str = "KEYWARD_VAULT_PKCS11_TOKEN";
pub const ENV_PKCS11_PIN: &str = "KEYWARD_VAULT_PKCS11_PIN";
pub const ENV_PKCS11_KEY_LABEL: &str = "KEYWARD_VAULT_PKCS11_KEY_LABEL";

impl KekSource {
    /// Chooses the source from environment-style settings, looked up through `var`:
    /// PKCS#11 if `KEYWARD_VAULT_PKCS11_MODULE` is set, else the environment KEK if
    /// `KEYWARD_VAULT_KEK` is set, else the key file (`KEYWARD_VAULT_KEY_FILE`, default
    /// `<data_dir>/vault.key`).
    pub fn from_settings(
        data_dir: &Path,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, VaultError> {
        if let Some(module) = var(ENV_PKCS11_MODULE) {
            let need = |name: &str| {
                var(name).ok_or_else(|| {
                    VaultError::Config(format!("{name} must be set with {ENV_PKCS11_MODULE}"))
                })
            };
            return Ok(KekSource::Pkcs11(Pkcs11Config {
                module: PathBuf::from(module),
                token_label: need(ENV_PKCS11_TOKEN)?,
                pin: Zeroizing::new(need(ENV_PKCS11_PIN)?),
                key_label: var(ENV_PKCS11_KEY_LABEL).unwrap_or_else(|| "keyward-kek".to_owned()),
            }));
        }
        if let Some(current) = var(ENV_KEK) {
            return Ok(KekSource::Env {
                current: Zeroizing::new(current),
                next: var(ENV_KEK_NEXT).map(Zeroizing::new),
            });
        }
        Ok(KekSource::KeyFile(
            var(ENV_KEY_FILE)
                .map(PathBuf::from)
                .unwrap_or_else(|| data_dir.join("vault.key")),
        ))
    }
}

/// Labels separating the uses of a KEK, so a wrapped DEK cannot be replayed as a wrapped secret.
const DEK_WRAP_LABEL: &[u8] = b"keyward/wrap/key-dek/v1";
const SECRET_WRAP_LABEL: &[u8] = b"keyward/wrap/secret-dek/v1";
const SECRET_SEAL_LABEL: &[u8] = b"keyward/seal/secret/v1";
const SECRET_MAGIC: &[u8; 4] = b"KWS1";

/// What a wrapped DEK is bound to; encoded into the KEK's AEAD additional data with the version.
enum WrapBinding<'a> {
    Key(&'a KeyBinding),
    Secret(&'a str),
}

impl WrapBinding<'_> {
    fn aad(&self, kek_version: i32) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            WrapBinding::Key(b) => {
                out.extend_from_slice(DEK_WRAP_LABEL);
                out.extend_from_slice(b.org_id.as_bytes());
                out.extend_from_slice(b.key_id.as_bytes());
            }
            WrapBinding::Secret(context) => {
                out.extend_from_slice(SECRET_WRAP_LABEL);
                out.extend_from_slice(context.as_bytes());
                out.push(0);
            }
        }
        out.extend_from_slice(&kek_version.to_be_bytes());
        out
    }
}

/// The KEKs the vault holds, by source.
enum Keks {
    Memory {
        keys: BTreeMap<i32, LocalKek>,
        current: i32,
        file: Option<FileState>,
    },
    Token {
        token: TokenKeks,
        keys: BTreeMap<i32, ObjectHandle>,
        current: i32,
    },
}

struct FileState {
    path: PathBuf,
    /// Modification time and length when last read: a cheap way to notice a rotation done by
    /// `keyward vault rotate` in another process.
    stamp: Option<(SystemTime, u64)>,
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

impl Keks {
    fn current(&self) -> i32 {
        match self {
            Keks::Memory { current, .. } | Keks::Token { current, .. } => *current,
        }
    }

    fn has(&self, version: i32) -> bool {
        match self {
            Keks::Memory { keys, .. } => keys.contains_key(&version),
            Keks::Token { keys, .. } => keys.contains_key(&version),
        }
    }

    /// Re-reads versions from the key file or the token. Versions already loaded are kept, so a
    /// running server can still unwrap rows that a rotation has not reached yet.
    fn reload(&mut self) -> Result<(), VaultError> {
        match self {
            Keks::Memory {
                keys,
                current,
                file: Some(fs),
            } => {
                let fresh = local::read_key_file(&fs.path)?;
                fs.stamp = file_stamp(&fs.path);
                *current = fresh.keys().next_back().copied().unwrap_or(*current);
                keys.extend(fresh);
            }
            Keks::Memory { file: None, .. } => {}
            Keks::Token {
                token,
                keys,
                current,
            } => {
                for (v, h) in token.versions()? {
                    keys.insert(v, h);
                }
                *current = keys.keys().next_back().copied().unwrap_or(*current);
            }
        }
        Ok(())
    }

    fn wrap(&self, binding: &WrapBinding<'_>, raw: &[u8]) -> Result<(Vec<u8>, i32), VaultError> {
        let version = self.current();
        let aad = binding.aad(version);
        let wrapped = match self {
            Keks::Memory { keys, .. } => {
                let kek = keys
                    .get(&version)
                    .ok_or(VaultError::UnknownKekVersion(version))?;
                datakey::seal_with(&kek.key, &aad, raw)?
            }
            Keks::Token { token, keys, .. } => {
                let h = keys
                    .get(&version)
                    .ok_or(VaultError::UnknownKekVersion(version))?;
                token.encrypt(*h, &aad, raw)?
            }
        };
        Ok((wrapped, version))
    }

    fn unwrap(
        &self,
        binding: &WrapBinding<'_>,
        wrapped: &[u8],
        version: i32,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let aad = binding.aad(version);
        match self {
            Keks::Memory { keys, .. } => {
                let kek = keys
                    .get(&version)
                    .ok_or(VaultError::UnknownKekVersion(version))?;
                datakey::open_with(&kek.key, &aad, wrapped)
            }
            Keks::Token { token, keys, .. } => {
                let h = keys
                    .get(&version)
                    .ok_or(VaultError::UnknownKekVersion(version))?;
                token.decrypt(*h, &aad, wrapped)
            }
        }
    }
}

/// Keyward's key vault. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Vault {
    keks: RwLock<Keks>,
    source: &'static str,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("source", &self.source)
            .field("kek_version", &self.current_version())
            .finish()
    }
}

impl Vault {
    /// Opens the vault on `source`. A missing key file is created with a fresh KEK (mode 0600);
    /// a token without a KEK object gets one generated on it.
    pub fn open(source: KekSource) -> Result<Vault, VaultError> {
        let (keks, name) = match source {
            KekSource::KeyFile(path) => {
                if local::create_key_file_if_missing(&path)? {
                    tracing::info!(path = %path.display(), "created a new vault key file; back it up apart from the database");
                }
                let keys = local::read_key_file(&path)?;
                let current = *keys
                    .keys()
                    .next_back()
                    .ok_or_else(|| VaultError::Config("empty key file".into()))?;
                let stamp = file_stamp(&path);
                (
                    Keks::Memory {
                        keys,
                        current,
                        file: Some(FileState { path, stamp }),
                    },
                    "key-file",
                )
            }
            KekSource::Env { current, next } => {
                let (cv, ck) = local::parse_env_kek(&current, 1)?;
                let mut keys = BTreeMap::from([(cv, ck)]);
                let mut cur = cv;
                if let Some(next) = next {
                    let (nv, nk) = local::parse_env_kek(&next, cv.saturating_add(1))?;
                    if nv <= cv {
                        return Err(VaultError::Config(format!(
                            "{ENV_KEK_NEXT} must have a higher version than {ENV_KEK}"
                        )));
                    }
                    keys.insert(nv, nk);
                    cur = nv;
                }
                (
                    Keks::Memory {
                        keys,
                        current: cur,
                        file: None,
                    },
                    "environment",
                )
            }
            KekSource::Pkcs11(cfg) => {
                let token = TokenKeks::open(&cfg)?;
                let mut keys: BTreeMap<i32, ObjectHandle> = token.versions()?.into_iter().collect();
                if keys.is_empty() {
                    keys.insert(1, token.generate(1)?);
                    tracing::info!(label = %cfg.key_label, "generated key-encryption key version 1 on the PKCS#11 token");
                }
                let current = *keys
                    .keys()
                    .next_back()
                    .ok_or_else(|| VaultError::Pkcs11("no KEK on token".into()))?;
                (
                    Keks::Token {
                        token,
                        keys,
                        current,
                    },
                    "pkcs11",
                )
            }
        };
        Ok(Vault {
            keks: RwLock::new(keks),
            source: name,
        })
    }

    /// Opens the vault configured by the process environment (see [`KekSource::from_settings`]),
    /// with the key file `<data_dir>/vault.key` as the default.
    pub fn from_env_or_data_dir(data_dir: &Path) -> Result<Vault, VaultError> {
        Vault::open(KekSource::from_settings(data_dir, |name| {
            std::env::var(name).ok()
        })?)
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, Keks>, VaultError> {
        self.keks
            .read()
            .map_err(|_| VaultError::Config("vault lock poisoned".into()))
    }

    fn write(&self) -> Result<std::sync::RwLockWriteGuard<'_, Keks>, VaultError> {
        self.keks
            .write()
            .map_err(|_| VaultError::Config("vault lock poisoned".into()))
    }

    /// Which kind of source backs this vault: `key-file`, `environment` or `pkcs11`.
    pub fn source_kind(&self) -> &'static str {
        self.source
    }

    /// The KEK version new data keys are wrapped under.
    pub fn current_version(&self) -> i32 {
        self.keks.read().map(|k| k.current()).unwrap_or(0)
    }

    /// Picks up a rotation done by another process (a new key-file or token version) before
    /// wrapping anything new, so keys created during a rotation are not left on the old KEK.
    fn refresh_for_wrap(&self) -> Result<(), VaultError> {
        let stale = match &*self.read()? {
            Keks::Memory { file: Some(fs), .. } => file_stamp(&fs.path) != fs.stamp,
            Keks::Memory { file: None, .. } => false,
            Keks::Token { token, current, .. } => {
                token.versions()?.last().is_some_and(|(v, _)| v > current)
            }
        };
        if stale {
            self.write()?.reload()?;
        }
        Ok(())
    }

    fn wrap(&self, binding: &WrapBinding<'_>, raw: &[u8]) -> Result<(Vec<u8>, i32), VaultError> {
        self.refresh_for_wrap()?;
        self.read()?.wrap(binding, raw)
    }

    fn unwrap_raw(
        &self,
        binding: &WrapBinding<'_>,
        wrapped: &[u8],
        version: i32,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if !self.read()?.has(version) {
            // A rotation in another process may have added it since we loaded.
            self.write()?.reload()?;
        }
        self.read()?.unwrap(binding, wrapped, version)
    }

    /// Generates a fresh data key for a security key and wraps it under the current KEK.
    /// Returns the wrapped bytes and the KEK version to store with them.
    pub fn new_data_key(&self, binding: &KeyBinding) -> Result<(Vec<u8>, i32), VaultError> {
        let raw = datakey::random_key()?;
        self.wrap(&WrapBinding::Key(binding), &raw[..])
    }

    /// Unwraps a security key's data key. Fails with [`VaultError::Integrity`] if the wrapped
    /// bytes belong to another row (logged, without contents).
    pub fn unwrap(
        &self,
        binding: &KeyBinding,
        wrapped: &[u8],
        kek_version: i32,
    ) -> Result<DataKey, VaultError> {
        let raw = self
            .unwrap_raw(&WrapBinding::Key(binding), wrapped, kek_version)
            .inspect_err(|e| {
                if matches!(e, VaultError::Integrity) {
                    tracing::warn!(org_id = %binding.org_id, key_id = %binding.key_id, kek_version,
                    "wrapped data key failed to open: it belongs to another row or was altered");
                }
            })?;
        DataKey::from_bytes(&raw)
    }

    /// Re-wraps a data key under the current KEK, or `None` if it already is. The caller stores
    /// the result with a compare-and-swap on the old version.
    pub fn rewrap(
        &self,
        binding: &KeyBinding,
        wrapped: &[u8],
        kek_version: i32,
    ) -> Result<Option<(Vec<u8>, i32)>, VaultError> {
        if kek_version == self.current_version() {
            return Ok(None);
        }
        let raw = self.unwrap_raw(&WrapBinding::Key(binding), wrapped, kek_version)?;
        self.read()?
            .wrap(&WrapBinding::Key(binding), &raw)
            .map(Some)
    }

    /// Seals a small organisation secret (a Graph client secret, …) for `context`, which must
    /// name where it is stored (e.g. `directory/<org id>/<directory id>/client_secret`): a blob
    /// moved to another context fails to open. The blob carries its own wrapped data key and
    /// KEK version.
    pub fn seal_secret(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let raw = datakey::random_key()?;
        let (wrapped, version) = self.wrap(&WrapBinding::Secret(context), &raw[..])?;
        let key = DataKey::from_bytes(&raw[..])?;
        let sealed = datakey::seal_with(key.seal_key(), &secret_seal_aad(context), plaintext)?;
        let wrapped_len =
            u16::try_from(wrapped.len()).map_err(|_| VaultError::Crypto("wrapped key too long"))?;
        let mut out = Vec::with_capacity(4 + 4 + 2 + wrapped.len() + sealed.len());
        out.extend_from_slice(SECRET_MAGIC);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&wrapped_len.to_be_bytes());
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a blob made by [`Vault::seal_secret`] for the same `context`.
    pub fn open_secret(
        &self,
        context: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let (version, wrapped, sealed) = parse_secret_blob(blob)?;
        let raw = self.unwrap_raw(&WrapBinding::Secret(context), wrapped, version)?;
        let key = DataKey::from_bytes(&raw)?;
        datakey::open_with(key.seal_key(), &secret_seal_aad(context), sealed).inspect_err(|_| {
            tracing::warn!(
                context,
                "sealed secret failed to open: it belongs to another context or was altered"
            );
        })
    }

    /// Re-wraps a secret blob's data key under the current KEK, or `None` if it already is.
    pub fn rewrap_secret(&self, context: &str, blob: &[u8]) -> Result<Option<Vec<u8>>, VaultError> {
        let (version, wrapped, sealed) = parse_secret_blob(blob)?;
        if version == self.current_version() {
            return Ok(None);
        }
        let raw = self.unwrap_raw(&WrapBinding::Secret(context), wrapped, version)?;
        let (new_wrapped, new_version) = self.read()?.wrap(&WrapBinding::Secret(context), &raw)?;
        let wrapped_len = u16::try_from(new_wrapped.len())
            .map_err(|_| VaultError::Crypto("wrapped key too long"))?;
        let mut out = Vec::with_capacity(blob.len() + 16);
        out.extend_from_slice(SECRET_MAGIC);
        out.extend_from_slice(&new_version.to_be_bytes());
        out.extend_from_slice(&wrapped_len.to_be_bytes());
        out.extend_from_slice(&new_wrapped);
        out.extend_from_slice(sealed);
        Ok(Some(out))
    }

    /// The KEK version a secret blob is wrapped under.
    pub fn secret_kek_version(blob: &[u8]) -> Result<i32, VaultError> {
        parse_secret_blob(blob).map(|(v, _, _)| v)
    }

    /// Starts a rotation: creates a new KEK version and makes it current for this vault. Key file:
    /// a new line is added and the old keys stay until [`Vault::finish_rotation`]. Token: a new
    /// object `<label>-v<n>`. Environment: `KEYWARD_VAULT_KEK_NEXT` must already be loaded (the
    /// vault was opened with it); its version is returned. Returns the new current version.
    pub fn prepare_rotation(&self) -> Result<i32, VaultError> {
        let mut keks = self.write()?;
        match &mut *keks {
            Keks::Memory { file: Some(fs), .. } => {
                let path = fs.path.clone();
                local::add_key_file_version(&path)?;
                keks.reload()?;
            }
            Keks::Memory {
                keys,
                current,
                file: None,
            } => {
                if keys.len() < 2 || keys.keys().next_back() != Some(current) {
                    return Err(VaultError::Config(format!(
                        "set {ENV_KEK_NEXT} to the new key to rotate an environment KEK"
                    )));
                }
            }
            Keks::Token {
                token,
                keys,
                current,
            } => {
                let next = keys
                    .keys()
                    .next_back()
                    .copied()
                    .unwrap_or(*current)
                    .checked_add(1)
                    .ok_or_else(|| VaultError::Config("KEK version overflow".into()))?;
                let h = token.generate(next)?;
                keys.insert(next, h);
                *current = next;
            }
        }
        Ok(keks.current())
    }

    /// Ends a rotation once every wrapped key is on the current version: the key file drops the
    /// older keys and the token destroys the older KEK objects. For the environment source there
    /// is nothing to delete; the operator moves `KEYWARD_VAULT_KEK_NEXT` to `KEYWARD_VAULT_KEK`.
    pub fn finish_rotation(&self) -> Result<(), VaultError> {
        let mut keks = self.write()?;
        let current = keks.current();
        match &mut *keks {
            Keks::Memory {
                keys,
                file: Some(fs),
                ..
            } => {
                local::retire_key_file_versions(&fs.path, current)?;
                keys.retain(|v, _| *v >= current);
                fs.stamp = file_stamp(&fs.path);
            }
            Keks::Memory { file: None, .. } => {}
            Keks::Token { token, keys, .. } => {
                for (v, h) in token.versions()? {
                    if v < current {
                        token.destroy(h)?;
                        keys.remove(&v);
                    }
                }
            }
        }
        Ok(())
    }
}

fn secret_seal_aad(context: &str) -> Vec<u8> {
    let mut aad = SECRET_SEAL_LABEL.to_vec();
    aad.extend_from_slice(context.as_bytes());
    aad
}

fn parse_secret_blob(blob: &[u8]) -> Result<(i32, &[u8], &[u8]), VaultError> {
    let rest = blob
        .strip_prefix(SECRET_MAGIC.as_slice())
        .ok_or(VaultError::Integrity)?;
    if rest.len() < 6 {
        return Err(VaultError::Integrity);
    }
    let version = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
    let rest = &rest[6..];
    if rest.len() < len {
        return Err(VaultError::Integrity);
    }
    let (wrapped, sealed) = rest.split_at(len);
    Ok((version, wrapped, sealed))
}

#[cfg(test)]
mod tests;
