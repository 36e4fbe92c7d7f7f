//! authenticatorGetInfo (0x04): advertises exactly what this engine implements.

use keyward_ctap::cbor::Value;
use keyward_ctap::ctap2::{AuthenticatorInfo, alg};

use crate::{Authenticator, Context, CtapResult};

/// Largest CTAPHID message (57 + 128 × 59 bytes).
pub(crate) const MAX_MSG_SIZE: u64 = 7609;
pub(crate) const MAX_CREDENTIAL_COUNT_IN_LIST: u64 = 16;
/// The largest credential id accepted in lists; ours are 32 bytes, others' may be longer.
pub(crate) const MAX_CREDENTIAL_ID_LENGTH: u64 = 128;
pub(crate) const MAX_RP_IDS_FOR_SET_MIN_PIN_LENGTH: usize = 8;
pub(crate) const EXTENSIONS: [&str; 4] = ["credProtect", "hmac-secret", "credBlob", "minPinLength"];

impl Authenticator {
    pub(crate) fn get_info(&mut self, ctx: &mut Context<'_>) -> CtapResult<Value> {
        let state = ctx.store.load_state()?;
        let discoverable = ctx.store.discoverable_credentials()?.len();
        let options = vec![
            ("plat", false),
            ("rk", true),
            ("up", true),
            ("clientPin", state.pin_verifier.is_some()),
            ("pinUvAuthToken", true),
            ("credMgmt", true),
            ("authnrCfg", true),
            ("setMinPINLength", true),
            // alwaysUv and makeCredUvNotRqd exclude each other (§6.11.2).
            ("makeCredUvNotRqd", !state.always_uv),
            ("alwaysUv", state.always_uv),
        ];
        let info = AuthenticatorInfo {
            versions: vec!["FIDO_2_0".into(), "FIDO_2_1".into()],
            extensions: EXTENSIONS.iter().map(|s| (*s).to_owned()).collect(),
            aaguid: self.config.aaguid,
            options: options
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            max_msg_size: MAX_MSG_SIZE,
            pin_uv_auth_protocols: vec![2, 1],
            max_credential_count_in_list: MAX_CREDENTIAL_COUNT_IN_LIST,
            max_credential_id_length: MAX_CREDENTIAL_ID_LENGTH,
            transports: vec!["usb".into()],
            algorithms: vec![alg::ES256, alg::EDDSA],
            force_pin_change: state.force_pin_change,
            min_pin_length: state.min_pin_length,
            firmware_version: u64::from(self.config.firmware_version),
            max_cred_blob_length: self.config.max_cred_blob_len as u64,
            max_rp_ids_for_set_min_pin_length: MAX_RP_IDS_FOR_SET_MIN_PIN_LENGTH as u64,
            remaining_discoverable_credentials: self
                .config
                .max_discoverable
                .saturating_sub(discoverable)
                as u64,
        };
        Ok(info.to_value())
    }
}
