//! Key-encryption keys held in process memory: from the key file or from the environment.
//!
//! Key file format (text, mode 0600): comment lines start with `#`; every other line is
//! `<version> <base64 of 32 bytes>`. The highest version is current; older versions stay in the
//! file while a rotation re-wraps data keys, and are dropped when it completes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::VaultError;
use crate::datakey::{KEY_LEN, random_key};

/// One in-memory KEK.
pub(crate) struct LocalKek {
    pub(crate) key: LessSafeKey,
}

impl LocalKek {
    pub(crate) fn from_bytes(raw: &[u8]) -> Result<Self, VaultError> {
        if raw.len() != KEY_LEN {
            return Err(VaultError::Config(format!(
                "a key-encryption key must be {KEY_LEN} bytes"
            )));
        }
        let unbound =
            UnboundKey::new(&AES_256_GCM, raw).map_err(|_| VaultError::Crypto("aes key"))?;
        Ok(LocalKek {
            key: LessSafeKey::new(unbound),
        })
    }
}

/// Parses an environment KEK: `base64` (version 1) or `<version>:base64`.
pub(crate) fn parse_env_kek(
    value: &str,
    default_version: i32,
) -> Result<(i32, LocalKek), VaultError> {
    let value = value.trim();
    let (version, b64) = match value.split_once(':') {
        Some((v, rest)) => (
            v.trim()
                .parse::<i32>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    VaultError::Config("KEK version must be a positive integer".into())
                })?,
            rest,
        ),
        None => (default_version, value),
    };
    // Never echo the value: it is the secret.
    let raw = Zeroizing::new(
        STANDARD
            .decode(b64.trim())
            .map_err(|_| VaultError::Config("KEK is not valid base64".into()))?,
    );
    Ok((version, LocalKek::from_bytes(&raw)?))
}

/// Reads a key file. Refuses a file readable by group or others: a KEK that anyone can read
/// protects nothing, and an operator should learn that at start-up rather than after a breach.
pub(crate) fn read_key_file(path: &Path) -> Result<BTreeMap<i32, LocalKek>, VaultError> {
    let io = |source| VaultError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(VaultError::Config(format!(
            "key file {} must not be accessible by group or others (chmod 600)",
            path.display()
        )));
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
    let mut keys = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            VaultError::Config(format!(
                "key file {} line {}: expected `<version> <base64>`",
                path.display(),
                n + 1
            ))
        };
        let (v, b64) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
        let version: i32 = v.parse().ok().filter(|v| *v > 0).ok_or_else(bad)?;
        let raw = Zeroizing::new(STANDARD.decode(b64.trim()).map_err(|_| bad())?);
        if keys.insert(version, LocalKek::from_bytes(&raw)?).is_some() {
            return Err(VaultError::Config(format!(
                "key file {} repeats version {version}",
                path.display()
            )));
        }
    }
    if keys.is_empty() {
        return Err(VaultError::Config(format!(
            "key file {} holds no key",
            path.display()
        )));
    }
    Ok(keys)
}

/// The raw key lines of a key file, kept so a rewrite preserves keys byte for byte.
fn read_key_lines(path: &Path) -> Result<BTreeMap<i32, Zeroizing<String>>, VaultError> {
    let text = Zeroizing::new(
        fs::read_to_string(path).map_err(|source| VaultError::KeyFile {
            path: path.to_owned(),
            source,
        })?,
    );
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((v, b64)) = line.split_once(char::is_whitespace)
            && let Ok(v) = v.parse::<i32>()
        {
            out.insert(v, Zeroizing::new(b64.trim().to_owned()));
        }
    }
    Ok(out)
}

const KEY_FILE_HEADER: &str = "# Keyward vault key-encryption keys: `<version> <base64>`, the highest version is current.\n\
     # Whoever holds this file and the database can sign as every user. Back it up apart from\n\
     # the database; never share it.\n";

/// The key file's text, built in one buffer sized up front so that no reallocation leaves a copy
/// of a key behind un-zeroized.
fn key_file_text<'a>(keys: impl Iterator<Item = (i32, &'a str)> + Clone) -> Zeroizing<String> {
    let len = KEY_FILE_HEADER.len() + keys.clone().map(|(_, b64)| b64.len() + 16).sum::<usize>();
    let mut text = Zeroizing::new(String::with_capacity(len));
    text.push_str(KEY_FILE_HEADER);
    for (v, b64) in keys {
        text.push_str(&v.to_string());
        text.push(' ');
        text.push_str(b64);
        text.push('\n');
    }
    text
}

/// Writes the key file atomically (temp file with mode 0600, fsync, rename, fsync directory), so a
/// crash leaves either the old or the new file, never a torn one that would lose every key.
fn write_key_file(path: &Path, keys: &BTreeMap<i32, Zeroizing<String>>) -> Result<(), VaultError> {
    let io = |source| VaultError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let text = key_file_text(keys.iter().map(|(v, b64)| (*v, b64.as_str())));
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("vault.key"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` applies only on creation; a stale temp file may have other bits.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Creates the key file with one fresh version-1 KEK if it does not exist yet (first start).
/// Returns whether it created it. `create_new` makes two processes starting at once agree on one
/// key instead of overwriting each other's.
pub(crate) fn create_key_file_if_missing(path: &Path) -> Result<bool, VaultError> {
    let io = |source| VaultError::KeyFile {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let key = random_key()?;
    let b64 = Zeroizing::new(STANDARD.encode(&key[..]));
    let text = key_file_text(std::iter::once((1, b64.as_str())));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(e)),
    }
}

/// Adds a fresh KEK with the next version to the key file, keeping the older ones. Returns it.
pub(crate) fn add_key_file_version(path: &Path) -> Result<i32, VaultError> {
    let mut lines = read_key_lines(path)?;
    let next = lines
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0)
        .checked_add(1)
        .ok_or_else(|| VaultError::Config("KEK version overflow".into()))?;
    let key = random_key()?;
    lines.insert(next, Zeroizing::new(STANDARD.encode(&key[..])));
    write_key_file(path, &lines)?;
    Ok(next)
}

/// Drops every version below `keep` from the key file (the end of a rotation).
pub(crate) fn retire_key_file_versions(path: &Path, keep: i32) -> Result<(), VaultError> {
    let mut lines = read_key_lines(path)?;
    if !lines.contains_key(&keep) {
        return Err(VaultError::UnknownKekVersion(keep));
    }
    lines.retain(|v, _| *v >= keep);
    write_key_file(path, &lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_kek_parsing() {
        let b64 = STANDARD.encode([5u8; 32]);
        assert_eq!(parse_env_kek(&b64, 1).expect("plain").0, 1);
        assert_eq!(
            parse_env_kek(&format!("3:{b64}"), 1).expect("versioned").0,
            3
        );
        assert!(parse_env_kek("0:AAAA", 1).is_err());
        assert!(parse_env_kek("x:AAAA", 1).is_err());
        assert!(parse_env_kek("not base64!", 1).is_err());
        assert!(
            parse_env_kek(&STANDARD.encode([5u8; 16]), 1).is_err(),
            "AES-128 key accepted"
        );
    }

    #[test]
    fn key_file_lifecycle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/vault.key");
        assert!(create_key_file_if_missing(&path).expect("create"));
        assert!(
            !create_key_file_if_missing(&path).expect("exists"),
            "second start must keep the key"
        );
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let before = fs::read_to_string(&path).expect("read");
        assert_eq!(
            read_key_file(&path)
                .expect("read")
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![1]
        );

        assert_eq!(add_key_file_version(&path).expect("add"), 2);
        let after = fs::read_to_string(&path).expect("read");
        let v1 = before
            .lines()
            .find(|l| l.starts_with("1 "))
            .expect("v1 line");
        assert!(
            after.contains(v1),
            "rotation must keep the old key until it completes"
        );
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_key_file(&path).expect("read").len(), 2);

        retire_key_file_versions(&path, 2).expect("retire");
        assert_eq!(
            read_key_file(&path)
                .expect("read")
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert!(retire_key_file_versions(&path, 7).is_err());
    }

    #[test]
    fn key_file_rejects_loose_permissions_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vault.key");
        create_key_file_if_missing(&path).expect("create");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(read_key_file(&path), Err(VaultError::Config(_))));

        let bad = dir.path().join("bad.key");
        for body in [
            "",
            "# only a comment\n",
            "1\n",
            "one AAAA\n",
            "1 !!!\n",
            "1 AAAA\n",
        ] {
            fs::write(&bad, body).expect("write");
            fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).expect("chmod");
            assert!(read_key_file(&bad).is_err(), "accepted {body:?}");
        }
        let k = STANDARD.encode([1u8; 32]);
        fs::write(&bad, format!("1 {k}\n1 {k}\n")).expect("write");
        assert!(read_key_file(&bad).is_err(), "accepted a repeated version");
    }
}
