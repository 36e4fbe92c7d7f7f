//! Key-encryption keys on a PKCS#11 token (an HSM; SoftHSM2 in tests).
//!
//! Each KEK version is a non-extractable AES-256 secret-key object labelled `<label>-v<version>`.
//! Data keys are wrapped and unwrapped on the token with CKM_AES_GCM (C_Encrypt / C_Decrypt), so
//! the KEK itself never exists in Keyward's memory.

use std::path::Path;
use std::sync::Mutex;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::VaultError;
use crate::datakey::KEY_LEN;

const NONCE_LEN: usize = 12;
const TAG_BITS: u64 = 128;

/// How to reach the token.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: std::path::PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The user PIN of the token.
    pub pin: Zeroizing<String>,
    /// Prefix of the KEK objects' labels; version `n` is `<key_label>-v<n>`.
    pub key_label: String,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

/// An open, logged-in session to the token. PKCS#11 sessions must not be used from two threads at
/// once, hence the mutex; KEK operations are short (one AES-GCM of 32 bytes).
pub(crate) struct TokenKeks {
    // Kept so the library stays initialised while the session lives; dropped last.
    _ctx: Pkcs11,
    session: Mutex<Session>,
    key_label: String,
}

fn p11(what: &'static str) -> impl Fn(cryptoki::error::Error) -> VaultError {
    // The cryptoki error carries the PKCS#11 return value only, never key or PIN bytes.
    move |e| VaultError::Pkcs11(format!("{what}: {e}"))
}

impl TokenKeks {
    pub(crate) fn open(cfg: &Pkcs11Config) -> Result<Self, VaultError> {
        let ctx = Pkcs11::new(Path::new(&cfg.module)).map_err(p11("load module"))?;
        ctx.initialize(CInitializeArgs::OsThreads)
            .map_err(p11("initialise"))?;
        let mut slot = None;
        for s in ctx.get_slots_with_token().map_err(p11("list slots"))? {
            let info = ctx.get_token_info(s).map_err(p11("token info"))?;
            if info.label().trim_end() == cfg.token_label {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| {
            VaultError::Pkcs11(format!("no token labelled {:?}", cfg.token_label))
        })?;
        let session = ctx.open_rw_session(slot).map_err(p11("open session"))?;
        let pin = AuthPin::new(cfg.pin.as_str().to_owned());
        session
            .login(UserType::User, Some(&pin))
            .map_err(p11("login"))?;
        Ok(TokenKeks {
            _ctx: ctx,
            session: Mutex::new(session),
            key_label: cfg.key_label.clone(),
        })
    }

    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>, VaultError> {
        self.session
            .lock()
            .map_err(|_| VaultError::Pkcs11("session lock poisoned".into()))
    }

    /// Every KEK version on the token, from the labels `<key_label>-v<n>`.
    pub(crate) fn versions(&self) -> Result<Vec<(i32, ObjectHandle)>, VaultError> {
        let session = self.session()?;
        let handles = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
            ])
            .map_err(p11("find keys"))?;
        let prefix = format!("{}-v", self.key_label);
        let mut out = Vec::new();
        for h in handles {
            let attrs = session
                .get_attributes(h, &[AttributeType::Label])
                .map_err(p11("read label"))?;
            for a in attrs {
                if let Attribute::Label(bytes) = a
                    && let Ok(label) = std::str::from_utf8(&bytes)
                    && let Some(v) = label
                        .strip_prefix(&prefix)
                        .and_then(|v| v.parse::<i32>().ok())
                {
                    out.push((v, h));
                }
            }
        }
        out.sort_by_key(|(v, _)| *v);
        Ok(out)
    }

    /// Generates KEK `version` on the token: AES-256, sensitive, never extractable, usable only
    /// for encrypt/decrypt.
    pub(crate) fn generate(&self, version: i32) -> Result<ObjectHandle, VaultError> {
        let label = format!("{}-v{version}", self.key_label);
        let template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::ValueLen((KEY_LEN as u64).into()),
            Attribute::Label(label.into_bytes()),
        ];
        self.session()?
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(p11("generate KEK"))
    }

    /// Destroys a retired KEK object.
    pub(crate) fn destroy(&self, key: ObjectHandle) -> Result<(), VaultError> {
        self.session()?
            .destroy_object(key)
            .map_err(p11("destroy KEK"))
    }

    /// AES-256-GCM on the token: output `nonce ‖ ciphertext ‖ tag`.
    pub(crate) fn encrypt(
        &self,
        key: ObjectHandle,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| VaultError::Crypto("random"))?;
        let params = GcmParams::new(&nonce, aad, TAG_BITS.into());
        let ct = self
            .session()?
            .encrypt(&Mechanism::AesGcm(params), key, plaintext)
            .map_err(p11("wrap"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Inverse of [`TokenKeks::encrypt`]. A tag mismatch (the token answers
    /// CKR_ENCRYPTED_DATA_INVALID or similar) is reported as [`VaultError::Integrity`].
    pub(crate) fn decrypt(
        &self,
        key: ObjectHandle,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(VaultError::Integrity);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let params = GcmParams::new(nonce, aad, TAG_BITS.into());
        let result = self.session()?.decrypt(&Mechanism::AesGcm(params), key, ct);
        match result {
            Ok(pt) => Ok(Zeroizing::new(pt)),
            Err(cryptoki::error::Error::Pkcs11(rv, _)) if is_integrity_failure(rv) => {
                Err(VaultError::Integrity)
            }
            Err(e) => Err(p11("unwrap")(e)),
        }
    }
}

fn is_integrity_failure(rv: cryptoki::error::RvError) -> bool {
    use cryptoki::error::RvError::*;
    matches!(
        rv,
        EncryptedDataInvalid | EncryptedDataLenRange | DataInvalid | DataLenRange | GeneralError
    )
}
