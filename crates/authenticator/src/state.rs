//! Volatile ("power-cycle") state: what a real key keeps in RAM and loses when unplugged.

use std::collections::HashMap;

use keyward_ctap::ctap2::GetAssertionRequest;
use zeroize::Zeroizing;

use crate::crypto::SigningKey;
use crate::pin_protocol::{KeyAgreement, PinUvAuthProtocol};
use crate::{Env, StoredCredential};

/// How long a stateful command (getNextAssertion, credMgmt enumerations) stays valid (§6.3).
pub(crate) const STATEFUL_COMMAND_TIMEOUT_MS: u64 = 30_000;
/// reset is only allowed this soon after power-up (§6.6).
pub(crate) const RESET_WINDOW_MS: u64 = 10_000;
/// A token unused for this long after issue expires (initial usage time limit, §6.5.2.1).
pub(crate) const TOKEN_INITIAL_USAGE_MS: u64 = 30_000;
/// No token lives longer than this (maximum usage time period).
pub(crate) const TOKEN_MAX_USAGE_MS: u64 = 600_000;
/// Opened credential keys kept in RAM; beyond this the cache starts over.
const KEY_CACHE_CAPACITY: usize = 256;

/// The pinUvAuthToken in use and what it grants.
pub(crate) struct PinUvAuthToken {
    pub token: Zeroizing<[u8; 32]>,
    pub protocol: PinUvAuthProtocol,
    pub permissions: u8,
    pub rp_id: Option<String>,
    pub issued_ms: u64,
    pub used: bool,
    pub user_verified: bool,
}

pub(crate) struct AssertionCursor {
    pub request: GetAssertionRequest,
    pub remaining: Vec<StoredCredential>,
    pub user_present: bool,
    pub user_verified: bool,
    pub deadline_ms: u64,
}

pub(crate) enum CredMgmtCursor {
    Rps {
        remaining: Vec<(String, Option<String>)>,
        deadline_ms: u64,
    },
    Credentials {
        remaining: Vec<StoredCredential>,
        deadline_ms: u64,
    },
}

/// An opened key and the sealed blob it came from, so that a row whose key changed is reopened.
pub(crate) struct CachedKey {
    pub sealed: Vec<u8>,
    pub key: SigningKey,
}

pub(crate) struct Volatile {
    pub power_up_ms: u64,
    pub key_agreement: KeyAgreement,
    pub token: Option<PinUvAuthToken>,
    pub assertion: Option<AssertionCursor>,
    pub cred_mgmt: Option<CredMgmtCursor>,
    key_cache: HashMap<Vec<u8>, CachedKey>,
}

impl Volatile {
    pub(crate) fn power_up(env: &mut dyn Env) -> Self {
        Self {
            power_up_ms: env.now_ms(),
            key_agreement: KeyAgreement::generate(env),
            token: None,
            assertion: None,
            cred_mgmt: None,
            key_cache: HashMap::new(),
        }
    }

    /// Drops a token whose usage window has passed.
    pub(crate) fn expire_token(&mut self, now_ms: u64) {
        if let Some(token) = &self.token {
            let age = now_ms.saturating_sub(token.issued_ms);
            if age > TOKEN_MAX_USAGE_MS || (!token.used && age > TOKEN_INITIAL_USAGE_MS) {
                self.token = None;
            }
        }
    }

    pub(crate) fn cached_key(&self, id: &[u8], sealed: &[u8]) -> Option<&SigningKey> {
        self.key_cache
            .get(id)
            .filter(|cached| cached.sealed == sealed)
            .map(|cached| &cached.key)
    }

    pub(crate) fn cache_key(&mut self, id: &[u8], sealed: &[u8], key: SigningKey) {
        if self.key_cache.len() >= KEY_CACHE_CAPACITY {
            self.key_cache.clear();
        }
        self.key_cache.insert(
            id.to_vec(),
            CachedKey {
                sealed: sealed.to_vec(),
                key,
            },
        );
    }

    pub(crate) fn forget_key(&mut self, id: &[u8]) {
        self.key_cache.remove(id);
    }
}
