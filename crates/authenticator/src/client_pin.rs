//! authenticatorClientPIN (0x06): PIN set/change, retries, and pinUvAuthToken issue (§6.5.5).
//!
//! Security invariants held here: a PIN retry is spent durably (`Store::spend_pin_retry`) BEFORE
//! the PIN is compared; the comparison is constant time against the keyed verifier; three wrong
//! PINs in a row block until power cycle, and zero retries block for good.

use keyward_ctap::cbor::Value;
use keyward_ctap::ctap2::client_pin::{self as msg, subcommand};
use keyward_ctap::ctap2::{ClientPinRequest, CoseEcdhKey, permission};
use keyward_ctap::status::StatusCode;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::sha256;
use crate::pin_protocol::{KeyAgreement, PinUvAuthProtocol, SharedSecret};
use crate::state::PinUvAuthToken;
use crate::{Authenticator, Context, CtapResult, KeyState, MAX_PIN_RETRIES};

/// Wrong PINs in a row before the key demands a power cycle.
pub(crate) const MAX_CONSECUTIVE_PIN_FAILURES: u8 = 3;
/// The padded PIN block is 64 bytes; the PIN itself at most 63 (§6.5.5.5).
const PADDED_PIN_LENGTH: usize = 64;

impl Authenticator {
    pub(crate) fn client_pin(
        &mut self,
        ctx: &mut Context<'_>,
        params: Option<&Value>,
    ) -> CtapResult<Option<Value>> {
        let request = ClientPinRequest::parse(params)?;
        if ctx.policy.registration_only
            && matches!(
                request.sub_command,
                subcommand::SET_PIN | subcommand::CHANGE_PIN
            )
        {
            return Err(StatusCode::OperationDenied);
        }
        match request.sub_command {
            subcommand::GET_PIN_RETRIES => {
                let state = ctx.store.load_state()?;
                Ok(Some(msg::retries_response(
                    state.pin_retries,
                    state.consecutive_pin_failures >= MAX_CONSECUTIVE_PIN_FAILURES,
                )))
            }
            subcommand::GET_KEY_AGREEMENT => {
                PinUvAuthProtocol::required(request.pin_uv_auth_protocol)?;
                Ok(Some(msg::key_agreement_response(
                    self.state.key_agreement.public(),
                )))
            }
            subcommand::SET_PIN => self.set_pin(ctx, &request).map(|()| None),
            subcommand::CHANGE_PIN => self.change_pin(ctx, &request).map(|()| None),
            subcommand::GET_PIN_TOKEN => {
                if request.permissions.is_some() || request.rp_id.is_some() {
                    return Err(StatusCode::InvalidParameter);
                }
                // The legacy token is good for makeCredential and getAssertion (§6.5.5.7.1).
                let permissions = permission::MAKE_CREDENTIAL | permission::GET_ASSERTION;
                self.get_token(ctx, &request, permissions, None).map(Some)
            }
            subcommand::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS => {
                let permissions = request.permissions.ok_or(StatusCode::MissingParameter)?;
                if permissions == 0 {
                    return Err(StatusCode::InvalidParameter);
                }
                // No built-in UV (bio enrollment) and no largeBlobs: those cannot be granted.
                if permissions & (permission::BIO_ENROLLMENT | permission::LARGE_BLOB_WRITE) != 0 {
                    return Err(StatusCode::UnauthorizedPermission);
                }
                let rp_scoped = permission::MAKE_CREDENTIAL | permission::GET_ASSERTION;
                if permissions & rp_scoped != 0 && request.rp_id.is_none() {
                    return Err(StatusCode::MissingParameter);
                }
                let rp_id = request.rp_id.clone();
                self.get_token(ctx, &request, permissions, rp_id).map(Some)
            }
            // No built-in user verification method: the UV sub-commands do not exist here.
            _ => Err(StatusCode::InvalidSubcommand),
        }
    }

    fn shared_secret(
        &self,
        request: &ClientPinRequest,
    ) -> CtapResult<(PinUvAuthProtocol, SharedSecret)> {
        let protocol = PinUvAuthProtocol::required(request.pin_uv_auth_protocol)?;
        let platform: &CoseEcdhKey = request
            .key_agreement
            .as_ref()
            .ok_or(StatusCode::MissingParameter)?;
        let secret = self.state.key_agreement.shared_secret(protocol, platform)?;
        Ok((protocol, secret))
    }

    fn set_pin(&mut self, ctx: &mut Context<'_>, request: &ClientPinRequest) -> CtapResult<()> {
        let (_, secret) = self.shared_secret(request)?;
        let param = request
            .pin_uv_auth_param
            .as_ref()
            .ok_or(StatusCode::MissingParameter)?;
        let new_pin_enc = request
            .new_pin_enc
            .as_ref()
            .ok_or(StatusCode::MissingParameter)?;
        let mut state = ctx.store.load_state()?;
        if state.pin_verifier.is_some() {
            return Err(StatusCode::NotAllowed);
        }
        if !secret.verify(new_pin_enc, param) {
            return Err(StatusCode::PinAuthInvalid);
        }
        let pin = decrypt_new_pin(&secret, new_pin_enc, &state)?;
        state.pin_verifier = Some(ctx.protection.pin_verifier(&pin_hash16(&pin))?);
        state.pin_code_points = code_points(&pin)?;
        state.pin_retries = MAX_PIN_RETRIES;
        state.consecutive_pin_failures = 0;
        ctx.store.save_state(&state)?;
        Ok(())
    }

    fn change_pin(&mut self, ctx: &mut Context<'_>, request: &ClientPinRequest) -> CtapResult<()> {
        let (_, secret) = self.shared_secret(request)?;
        let param = request
            .pin_uv_auth_param
            .as_ref()
            .ok_or(StatusCode::MissingParameter)?;
        let new_pin_enc = request
            .new_pin_enc
            .as_ref()
            .ok_or(StatusCode::MissingParameter)?;
        let pin_hash_enc = request
            .pin_hash_enc
            .as_ref()
            .ok_or(StatusCode::MissingParameter)?;
        let state = ctx.store.load_state()?;
        check_pin_usable(&state)?;
        let message = [new_pin_enc.as_slice(), pin_hash_enc.as_slice()].concat();
        if !secret.verify(&message, param) {
            return Err(StatusCode::PinAuthInvalid);
        }
        let mut state = self.verify_pin_hash(ctx, &secret, pin_hash_enc)?;
        let pin = decrypt_new_pin(&secret, new_pin_enc, &state)?;
        let verifier = ctx.protection.pin_verifier(&pin_hash16(&pin))?;
        if state.force_pin_change
            && state
                .pin_verifier
                .is_some_and(|current| bool::from(current.ct_eq(&verifier)))
        {
            // A forced change must actually change the PIN (§6.5.5.6).
            return Err(StatusCode::PinPolicyViolation);
        }
        state.pin_verifier = Some(verifier);
        state.pin_code_points = code_points(&pin)?;
        state.force_pin_change = false;
        ctx.store.save_state(&state)?;
        // A new PIN invalidates every token issued under the old one.
        self.state.token = None;
        Ok(())
    }

    fn get_token(
        &mut self,
        ctx: &mut Context<'_>,
        request: &ClientPinRequest,
        permissions: u8,
        rp_id: Option<String>,
    ) -> CtapResult<Value> {
        let (protocol, secret) = self.shared_secret(request)?;
        let pin_hash_enc = request
            .pin_hash_enc
            .as_ref()
            .ok_or(StatusCode::MissingParameter)?;
        let state = ctx.store.load_state()?;
        check_pin_usable(&state)?;
        let state = self.verify_pin_hash(ctx, &secret, pin_hash_enc)?;
        if state.force_pin_change {
            return Err(StatusCode::PinPolicyViolation);
        }
        // Each token request replaces the token (resetPinUvAuthToken, §6.5.5.7).
        let mut token = Zeroizing::new([0u8; 32]);
        ctx.env.fill_random(token.as_mut());
        let encrypted = secret.encrypt(ctx.env, token.as_ref())?;
        self.state.token = Some(PinUvAuthToken {
            token,
            protocol,
            permissions,
            rp_id,
            issued_ms: ctx.env.now_ms(),
            used: false,
            user_verified: true,
        });
        Ok(msg::token_response(encrypted))
    }

    /// Spends a retry (durably), then compares in constant time. On a match the counters are
    /// restored; on a mismatch the keyAgreement key is replaced and the right error returned.
    fn verify_pin_hash(
        &mut self,
        ctx: &mut Context<'_>,
        secret: &SharedSecret,
        pin_hash_enc: &[u8],
    ) -> CtapResult<KeyState> {
        let mut state = ctx.store.spend_pin_retry()?;
        let pin_hash = secret.decrypt(pin_hash_enc)?;
        let hash16: [u8; 16] = pin_hash
            .as_slice()
            .try_into()
            .map_err(|_| StatusCode::InvalidParameter)?;
        let candidate = ctx.protection.pin_verifier(&hash16)?;
        let matches = state
            .pin_verifier
            .is_some_and(|stored| bool::from(stored.ct_eq(&candidate)));
        if !matches {
            self.state.key_agreement = KeyAgreement::generate(ctx.env);
            if state.pin_retries == 0 {
                return Err(StatusCode::PinBlocked);
            }
            if state.consecutive_pin_failures >= MAX_CONSECUTIVE_PIN_FAILURES {
                return Err(StatusCode::PinAuthBlocked);
            }
            return Err(StatusCode::PinInvalid);
        }
        state.pin_retries = MAX_PIN_RETRIES;
        state.consecutive_pin_failures = 0;
        ctx.store.save_state(&state)?;
        Ok(state)
    }
}

fn check_pin_usable(state: &KeyState) -> CtapResult<()> {
    if state.pin_verifier.is_none() {
        return Err(StatusCode::PinNotSet);
    }
    if state.pin_retries == 0 {
        return Err(StatusCode::PinBlocked);
    }
    if state.consecutive_pin_failures >= MAX_CONSECUTIVE_PIN_FAILURES {
        return Err(StatusCode::PinAuthBlocked);
    }
    Ok(())
}

/// Decrypts newPinEnc, strips the zero padding and checks the PIN policy.
fn decrypt_new_pin(
    secret: &SharedSecret,
    new_pin_enc: &[u8],
    state: &KeyState,
) -> CtapResult<Zeroizing<Vec<u8>>> {
    let padded = secret.decrypt(new_pin_enc)?;
    if padded.len() != PADDED_PIN_LENGTH {
        return Err(StatusCode::InvalidParameter);
    }
    let len = padded
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(PADDED_PIN_LENGTH);
    if len == PADDED_PIN_LENGTH {
        // No terminating zero: the PIN would be 64 bytes, one more than allowed.
        return Err(StatusCode::PinPolicyViolation);
    }
    let pin = Zeroizing::new(padded[..len].to_vec());
    if code_points(&pin)? < state.min_pin_length {
        return Err(StatusCode::PinPolicyViolation);
    }
    Ok(pin)
}

/// The PIN's length in Unicode code points; a PIN that is not UTF-8 violates the policy.
fn code_points(pin: &[u8]) -> CtapResult<u8> {
    let text = std::str::from_utf8(pin).map_err(|_| StatusCode::PinPolicyViolation)?;
    u8::try_from(text.chars().count()).map_err(|_| StatusCode::PinPolicyViolation)
}

fn pin_hash16(pin: &[u8]) -> [u8; 16] {
    let hash = Zeroizing::new(sha256(pin));
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash[..16]);
    out
}

#[cfg(test)]
#[path = "client_pin_tests.rs"]
mod tests;
