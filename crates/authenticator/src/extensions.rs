//! Extensions: credProtect, hmac-secret, credBlob and minPinLength (CTAP 2.1 §12).

use aws_lc_rs::hmac;
use keyward_ctap::cbor::{self, Value};
use keyward_ctap::ctap2::get_assertion::GetAssertionExtensions;
use keyward_ctap::ctap2::make_credential::MakeCredentialExtensions;
use keyward_ctap::status::StatusCode;
use zeroize::Zeroizing;

use crate::pin_protocol::PinUvAuthProtocol;
use crate::{Authenticator, Config, Context, CtapResult, KeyState, StoredCredential};

/// What makeCredential stores and reports for the requested extensions.
pub(crate) struct MakeCredentialOutcome {
    pub cred_protect: u8,
    pub cred_random: Option<Zeroizing<Vec<u8>>>,
    pub cred_blob: Option<Vec<u8>>,
    pub outputs: Option<Value>,
}

pub(crate) fn make_credential(
    input: &MakeCredentialExtensions,
    config: &Config,
    state: &KeyState,
    rp_id: &str,
    ctx: &mut Context<'_>,
) -> MakeCredentialOutcome {
    let mut outputs: Vec<(&str, Value)> = Vec::new();
    let cred_protect = input.cred_protect.unwrap_or(1);
    if let Some(level) = input.cred_protect {
        outputs.push(("credProtect", Value::Unsigned(u64::from(level))));
    }
    let cred_random = input.hmac_secret.then(|| {
        // CredRandomWithUV ‖ CredRandomWithoutUV.
        let mut random = Zeroizing::new(vec![0u8; 64]);
        ctx.env.fill_random(random.as_mut_slice());
        outputs.push(("hmac-secret", Value::Bool(true)));
        random
    });
    let mut cred_blob = None;
    if let Some(blob) = &input.cred_blob {
        let fits = blob.len() <= config.max_cred_blob_len;
        if fits {
            cred_blob = Some(blob.clone());
        }
        outputs.push(("credBlob", Value::Bool(fits)));
    }
    if input.min_pin_length && state.min_pin_length_rp_ids.iter().any(|id| id == rp_id) {
        outputs.push((
            "minPinLength",
            Value::Unsigned(u64::from(state.min_pin_length)),
        ));
    }
    MakeCredentialOutcome {
        cred_protect,
        cred_random,
        cred_blob,
        outputs: (!outputs.is_empty()).then(|| cbor::text_map(outputs)),
    }
}

impl Authenticator {
    /// The getAssertion extension outputs for one credential, or `None` when there are none.
    pub(crate) fn get_assertion_extensions(
        &self,
        ctx: &mut Context<'_>,
        input: &GetAssertionExtensions,
        credential: &StoredCredential,
        user_verified: bool,
    ) -> CtapResult<Option<Value>> {
        let mut outputs: Vec<(&str, Value)> = Vec::new();
        if input.get_cred_blob {
            let blob = credential.cred_blob.clone().unwrap_or_default();
            outputs.push(("credBlob", Value::Bytes(blob)));
        }
        if let (Some(hmac_input), Some(sealed)) =
            (&input.hmac_secret, &credential.sealed_cred_random)
        {
            let protocol = PinUvAuthProtocol::from_number(hmac_input.pin_uv_auth_protocol)?;
            let secret = self
                .state
                .key_agreement
                .shared_secret(protocol, &hmac_input.key_agreement)?;
            if !secret.verify(&hmac_input.salt_enc, &hmac_input.salt_auth) {
                return Err(StatusCode::PinAuthInvalid);
            }
            let salts = secret.decrypt(&hmac_input.salt_enc)?;
            if salts.len() != 32 && salts.len() != 64 {
                return Err(StatusCode::InvalidLength);
            }
            let cred_random = ctx.protection.open(&credential.id, sealed)?;
            if cred_random.len() != 64 {
                return Err(StatusCode::Other);
            }
            let random = if user_verified {
                &cred_random[..32]
            } else {
                &cred_random[32..]
            };
            let key = hmac::Key::new(hmac::HMAC_SHA256, random);
            let mut output = Zeroizing::new(Vec::with_capacity(64));
            for salt in salts.chunks(32) {
                output.extend_from_slice(hmac::sign(&key, salt).as_ref());
            }
            outputs.push((
                "hmac-secret",
                Value::Bytes(secret.encrypt(ctx.env, &output)?),
            ));
        }
        Ok((!outputs.is_empty()).then(|| cbor::text_map(outputs)))
    }
}
