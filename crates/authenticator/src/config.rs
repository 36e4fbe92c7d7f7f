//! authenticatorConfig (0x0D), §6.11: toggleAlwaysUv and setMinPINLength.

use keyward_ctap::cbor::{self, Value};
use keyward_ctap::ctap2::config::subcommand;
use keyward_ctap::ctap2::{ConfigRequest, permission};
use keyward_ctap::status::StatusCode;

use crate::get_info::MAX_RP_IDS_FOR_SET_MIN_PIN_LENGTH;
use crate::pin_protocol::PinUvAuthProtocol;
use crate::{Authenticator, Context, CtapResult};

impl Authenticator {
    pub(crate) fn authenticator_config(
        &mut self,
        ctx: &mut Context<'_>,
        params: Option<&Value>,
    ) -> CtapResult<()> {
        let request = ConfigRequest::parse(params)?;
        let mut state = ctx.store.load_state()?;
        match &request.pin_uv_auth_param {
            Some(param) => {
                let protocol = PinUvAuthProtocol::required(request.pin_uv_auth_protocol)?;
                // authenticate(token, 32×0xFF ‖ 0x0D ‖ subCommand ‖ CBOR(subCommandParams)).
                let mut message = vec![0xFF; 32];
                message.push(keyward_ctap::ctap2::command::CONFIG);
                message.push(request.sub_command);
                if let Some(sub) = &request.sub_command_params {
                    message.extend_from_slice(&cbor::encode(sub));
                }
                self.use_token(
                    protocol,
                    &message,
                    param,
                    permission::AUTHENTICATOR_CONFIG,
                    None,
                )?;
            }
            // A key without PIN and without alwaysUv has no way to verify anyone (§6.11.1).
            None if state.pin_verifier.is_some() || state.always_uv => {
                return Err(StatusCode::PuatRequired);
            }
            None => {}
        }
        match request.sub_command {
            subcommand::TOGGLE_ALWAYS_UV => {
                state.always_uv = !state.always_uv;
            }
            subcommand::SET_MIN_PIN_LENGTH => {
                let new_min = request.new_min_pin_length.unwrap_or(state.min_pin_length);
                // The minimum can only grow (short of a reset).
                if new_min < state.min_pin_length {
                    return Err(StatusCode::PinPolicyViolation);
                }
                if let Some(rp_ids) = &request.min_pin_length_rp_ids {
                    if rp_ids.len() > MAX_RP_IDS_FOR_SET_MIN_PIN_LENGTH {
                        return Err(StatusCode::InvalidParameter);
                    }
                    state.min_pin_length_rp_ids = rp_ids.clone();
                }
                if request.force_change_pin && state.pin_verifier.is_none() {
                    return Err(StatusCode::PinNotSet);
                }
                state.min_pin_length = new_min;
                if request.force_change_pin
                    || (state.pin_verifier.is_some() && state.pin_code_points < new_min)
                {
                    state.force_pin_change = true;
                    // Tokens issued under the now-insufficient PIN stop working.
                    self.state.token = None;
                }
            }
            _ => return Err(StatusCode::InvalidSubcommand),
        }
        ctx.store.save_state(&state)?;
        Ok(())
    }
}
