//! authenticatorReset (0x07): wipes the key, only just after power-up and with presence.

use keyward_ctap::status::StatusCode;

use crate::state::RESET_WINDOW_MS;
use crate::{Authenticator, Context, CtapResult, PresenceKind, PresenceRequest};

impl Authenticator {
    pub(crate) fn reset(&mut self, ctx: &mut Context<'_>) -> CtapResult<()> {
        if ctx.env.now_ms().saturating_sub(self.state.power_up_ms) > RESET_WINDOW_MS {
            return Err(StatusCode::NotAllowed);
        }
        ctx.presence.confirm(&PresenceRequest {
            rp_id: None,
            kind: PresenceKind::Reset,
        })?;
        ctx.store.wipe()?;
        // Everything derived from the old key state goes with it.
        let power_up_ms = self.state.power_up_ms;
        self.state = crate::state::Volatile::power_up(ctx.env);
        self.state.power_up_ms = power_up_ms;
        Ok(())
    }
}
