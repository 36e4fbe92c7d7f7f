//! The Keyward security key engine: a CTAP 2.1 authenticator over storage and key-protection
//! traits.
//!
//! The engine does no I/O and never reads the clock or the RNG directly: persistent state goes
//! through [`Store`], key material through [`KeyProtection`], presence through [`Presence`], time
//! and randomness through [`Env`]. Volatile ("power-cycle") state lives in [`Authenticator`]; a new
//! `Authenticator` (or [`Authenticator::power_cycle`]) is a re-plug.
//!
//! ```text
//! request = command byte ‖ CBOR parameters  ──process()──▶  status byte ‖ CBOR response
//! ```

pub mod attestation;
mod client_pin;
mod config;
mod cred_mgmt;
mod crypto;
mod extensions;
mod get_assertion;
mod get_info;
mod make_credential;
pub mod memory;
mod pin_protocol;
mod reset;
mod state;
mod types;

#[cfg(test)]
mod testing;

pub use types::*;

use keyward_ctap::cbor::Value;
use keyward_ctap::ctap2::{self, command};
use keyward_ctap::status::StatusCode;

use crate::crypto::SigningKey;
use crate::pin_protocol::PinUvAuthProtocol;
use crate::state::Volatile;

impl From<StoreError> for StatusCode {
    /// Fail closed: a store that cannot answer or commit refuses the operation.
    fn from(_: StoreError) -> Self {
        StatusCode::Other
    }
}

impl From<ProtectionError> for StatusCode {
    fn from(_: ProtectionError) -> Self {
        StatusCode::Other
    }
}

pub(crate) type CtapResult<T> = Result<T, StatusCode>;

/// One security key: its configuration and volatile state.
pub struct Authenticator {
    config: Config,
    state: Volatile,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Powers the key up: fresh keyAgreement key, no token, no cursors, reset window opens.
    pub fn new(config: Config, env: &mut dyn Env) -> Self {
        Self {
            config,
            state: Volatile::power_up(env),
        }
    }

    /// A re-plug: resets all volatile state. The persistent `consecutive_pin_failures` counter
    /// is the caller's to reset through its `Store` (a softkey does; the server keeps a soft
    /// block set by a remote caller).
    pub fn power_cycle(&mut self, env: &mut dyn Env) {
        self.state = Volatile::power_up(env);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Executes one CTAP2 request (`command byte ‖ CBOR parameters`) and returns the response
    /// (`status byte ‖ CBOR`).
    pub fn process(&mut self, ctx: &mut Context<'_>, request: &[u8]) -> Vec<u8> {
        match self.dispatch(ctx, request) {
            Ok(body) => ctap2::success(body.as_ref()),
            Err(status) => ctap2::failure(status),
        }
    }

    fn dispatch(&mut self, ctx: &mut Context<'_>, request: &[u8]) -> CtapResult<Option<Value>> {
        let &cmd = request.first().ok_or(StatusCode::InvalidLength)?;
        // The policy gate comes before parsing: a refused command must not touch any state,
        // and a silent getAssertion probe must learn nothing, not even a parse error.
        if ctx.policy.registration_only && !registration_allows(cmd) {
            return Err(StatusCode::OperationDenied);
        }
        self.state.expire_token(ctx.env.now_ms());
        // Stateful sequences end as soon as another command arrives (§6.3, §6.8).
        if cmd != command::GET_NEXT_ASSERTION {
            self.state.assertion = None;
        }
        if cmd != command::CREDENTIAL_MANAGEMENT {
            self.state.cred_mgmt = None;
        }
        let (_, params) = ctap2::split_request(request)?;
        let params = params.as_ref();
        match cmd {
            command::MAKE_CREDENTIAL => self.make_credential(ctx, params).map(Some),
            command::GET_ASSERTION => self.get_assertion(ctx, params).map(Some),
            command::GET_NEXT_ASSERTION => self.get_next_assertion(ctx).map(Some),
            command::GET_INFO => self.get_info(ctx).map(Some),
            command::CLIENT_PIN => self.client_pin(ctx, params),
            command::RESET => self.reset(ctx).map(|()| None),
            command::SELECTION => self.selection(ctx).map(|()| None),
            command::CREDENTIAL_MANAGEMENT => self.credential_management(ctx, params),
            command::CONFIG => self.authenticator_config(ctx, params).map(|()| None),
            _ => Err(StatusCode::InvalidCommand),
        }
    }

    /// Verifies `pin_uv_auth_param` over `message` with the current pinUvAuthToken and checks
    /// that the token grants `permission` (and, for an RP-scoped permission, `rp_id`, binding the
    /// token to it on first use). Returns whether the token carries user verification.
    pub(crate) fn use_token(
        &mut self,
        protocol: PinUvAuthProtocol,
        message: &[u8],
        param: &[u8],
        permission: u8,
        rp_id: Option<&str>,
    ) -> CtapResult<bool> {
        let token = self
            .state
            .token
            .as_mut()
            .ok_or(StatusCode::PinAuthInvalid)?;
        if token.protocol != protocol || !protocol.verify(token.token.as_ref(), message, param) {
            return Err(StatusCode::PinAuthInvalid);
        }
        if token.permissions & permission == 0 {
            return Err(StatusCode::PinAuthInvalid);
        }
        if let Some(rp_id) = rp_id {
            match &token.rp_id {
                Some(bound) if bound != rp_id => return Err(StatusCode::PinAuthInvalid),
                Some(_) => {}
                None => token.rp_id = Some(rp_id.to_owned()),
            }
        }
        token.used = true;
        Ok(token.user_verified)
    }

    /// After a makeCredential or getAssertion authorised by the token, the token may not
    /// authorise another one (§6.1.2, §6.2.2: clearPinUvAuthTokenPermissionsExceptLbw).
    pub(crate) fn spend_token_permissions(&mut self) {
        if let Some(token) = &mut self.state.token {
            token.permissions &= ctap2::permission::LARGE_BLOB_WRITE;
        }
    }

    /// The legacy "touch to select" of a zero-length pinUvAuthParam (§6.1.2 step 1).
    pub(crate) fn pin_probe(&mut self, ctx: &mut Context<'_>, rp_id: &str) -> StatusCode {
        let request = PresenceRequest {
            rp_id: Some(rp_id.to_owned()),
            kind: PresenceKind::PinUvAuthProbe,
        };
        if let Err(status) = ctx.presence.confirm(&request) {
            return status;
        }
        match ctx.store.load_state() {
            Ok(state) if state.pin_verifier.is_some() => StatusCode::PinInvalid,
            Ok(_) => StatusCode::PinNotSet,
            Err(_) => StatusCode::Other,
        }
    }

    /// Signs with a credential's key, opening (and caching) it on first use. The cache is keyed
    /// by credential id and checked against the sealed blob so a changed row is reopened.
    pub(crate) fn sign(
        &mut self,
        ctx: &mut Context<'_>,
        credential: &StoredCredential,
        message: &[u8],
    ) -> CtapResult<Vec<u8>> {
        if let Some(key) = self
            .state
            .cached_key(&credential.id, &credential.sealed_private_key)
        {
            return key.sign(message);
        }
        let pkcs8 = ctx
            .protection
            .open(&credential.id, &credential.sealed_private_key)?;
        let key = SigningKey::from_pkcs8(credential.alg, &pkcs8)?;
        let signature = key.sign(message)?;
        self.state
            .cache_key(&credential.id, &credential.sealed_private_key, key);
        Ok(signature)
    }

    fn selection(&mut self, ctx: &mut Context<'_>) -> CtapResult<()> {
        ctx.presence.confirm(&PresenceRequest {
            rp_id: None,
            kind: PresenceKind::Selection,
        })
    }
}

/// Commands a delegated (registration-only) session may run; clientPIN is narrowed further to
/// its token sub-commands in `client_pin`.
fn registration_allows(cmd: u8) -> bool {
    matches!(
        cmd,
        command::GET_INFO | command::SELECTION | command::CLIENT_PIN | command::MAKE_CREDENTIAL
    )
}

#[cfg(test)]
#[path = "lib_tests.rs"]
mod tests;
