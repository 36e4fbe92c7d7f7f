//! authenticatorGetAssertion (0x02) and authenticatorGetNextAssertion (0x08), §6.2–6.3.

use keyward_ctap::cbor::Value;
use keyward_ctap::ctap2::get_assertion::{self as msg, GetAssertionRequest};
use keyward_ctap::ctap2::{PublicKeyCredentialUserEntity, permission};
use keyward_ctap::status::StatusCode;

use crate::crypto::{self, flags, sha256};
use crate::pin_protocol::PinUvAuthProtocol;
use crate::state::{AssertionCursor, STATEFUL_COMMAND_TIMEOUT_MS};
use crate::{Authenticator, Context, CtapResult, PresenceKind, PresenceRequest, StoredCredential};

impl Authenticator {
    pub(crate) fn get_assertion(
        &mut self,
        ctx: &mut Context<'_>,
        params: Option<&Value>,
    ) -> CtapResult<Value> {
        let request = GetAssertionRequest::parse(params)?;
        if request
            .pin_uv_auth_param
            .as_ref()
            .is_some_and(Vec::is_empty)
        {
            return Err(self.pin_probe(ctx, &request.rp_id));
        }
        let protocol = match &request.pin_uv_auth_param {
            Some(_) => Some(PinUvAuthProtocol::required(request.pin_uv_auth_protocol)?),
            None => None,
        };
        if request.rk {
            return Err(StatusCode::UnsupportedOption);
        }
        if request.uv && request.pin_uv_auth_param.is_none() {
            return Err(StatusCode::InvalidOption);
        }
        let state = ctx.store.load_state()?;
        let user_verified = match (&request.pin_uv_auth_param, protocol) {
            (Some(param), Some(protocol)) => {
                let uv = self.use_token(
                    protocol,
                    &request.client_data_hash,
                    param,
                    permission::GET_ASSERTION,
                    Some(&request.rp_id),
                )?;
                if !uv {
                    return Err(StatusCode::PinAuthInvalid);
                }
                true
            }
            _ => {
                if state.always_uv {
                    return Err(if state.pin_verifier.is_some() {
                        StatusCode::PuatRequired
                    } else {
                        StatusCode::OperationDenied
                    });
                }
                false
            }
        };

        let rp_id_hash = sha256(request.rp_id.as_bytes());
        let mut credentials = self.locate(ctx, &request, &rp_id_hash, user_verified)?;
        if credentials.is_empty() {
            return Err(StatusCode::NoCredentials);
        }
        if request.up {
            ctx.presence.confirm(&PresenceRequest {
                rp_id: Some(request.rp_id.clone()),
                kind: PresenceKind::GetAssertion,
            })?;
        }
        // CTAP 2.1 §6.2.2: the token's permissions are cleared only once user presence was
        // collected. Clients probe the allow list silently (up=false) with the same token first.
        if protocol.is_some() && request.up {
            self.spend_token_permissions();
        }

        let from_allow_list = !request.allow_list.is_empty();
        let total = credentials.len();
        let first = credentials.remove(0);
        let response = self.assert_one(
            ctx,
            &request,
            &first,
            request.up,
            user_verified,
            (!from_allow_list).then_some(total),
        )?;
        if !from_allow_list && total > 1 {
            let user_present = request.up;
            self.state.assertion = Some(AssertionCursor {
                request,
                remaining: credentials,
                user_present,
                user_verified,
                deadline_ms: ctx.env.now_ms() + STATEFUL_COMMAND_TIMEOUT_MS,
            });
        }
        Ok(response)
    }

    pub(crate) fn get_next_assertion(&mut self, ctx: &mut Context<'_>) -> CtapResult<Value> {
        let mut cursor = self.state.assertion.take().ok_or(StatusCode::NotAllowed)?;
        let now = ctx.env.now_ms();
        if now > cursor.deadline_ms || cursor.remaining.is_empty() {
            return Err(StatusCode::NotAllowed);
        }
        let next = cursor.remaining.remove(0);
        // Re-read the row: a credential deleted meanwhile is not served from the cursor.
        let current = ctx
            .store
            .credential(&next.id)?
            .ok_or(StatusCode::NoCredentials)?;
        let response = self.assert_one(
            ctx,
            &cursor.request,
            &current,
            cursor.user_present,
            cursor.user_verified,
            None,
        )?;
        cursor.deadline_ms = now + STATEFUL_COMMAND_TIMEOUT_MS;
        if !cursor.remaining.is_empty() {
            self.state.assertion = Some(cursor);
        }
        Ok(response)
    }

    /// The applicable credentials, newest first, after credProtect filtering (§12.1).
    fn locate(
        &mut self,
        ctx: &mut Context<'_>,
        request: &GetAssertionRequest,
        rp_id_hash: &[u8; 32],
        user_verified: bool,
    ) -> CtapResult<Vec<StoredCredential>> {
        if request.allow_list.is_empty() {
            let mut found: Vec<StoredCredential> = ctx
                .store
                .credentials_for_rp(rp_id_hash)?
                .into_iter()
                .filter(|c| c.discoverable && (c.cred_protect == 1 || user_verified))
                .collect();
            found.sort_by_key(|c| std::cmp::Reverse(c.created_at_ms));
            return Ok(found);
        }
        let mut found = Vec::new();
        for descriptor in request.allow_list.iter().filter(|d| d.is_public_key) {
            if let Some(c) = ctx.store.credential(&descriptor.id)?
                && &c.rp_id_hash == rp_id_hash
                && (c.cred_protect < 3 || user_verified)
            {
                found.push(c);
                // With an allowList the authenticator answers with one credential.
                break;
            }
        }
        Ok(found)
    }

    /// Signs one assertion: the counter is taken (durably) from the store before signing.
    fn assert_one(
        &mut self,
        ctx: &mut Context<'_>,
        request: &GetAssertionRequest,
        credential: &StoredCredential,
        user_present: bool,
        user_verified: bool,
        number_of_credentials: Option<usize>,
    ) -> CtapResult<Value> {
        let extensions =
            self.get_assertion_extensions(ctx, &request.extensions, credential, user_verified)?;
        let mut flag_bits = 0;
        if user_present {
            flag_bits |= flags::UP;
        }
        if user_verified {
            flag_bits |= flags::UV;
        }
        if credential.backup_eligible {
            flag_bits |= flags::BE;
        }
        if credential.backup_state {
            flag_bits |= flags::BS;
        }
        let sign_count = ctx.store.next_sign_count(&credential.id)?;
        let auth_data = crypto::auth_data(
            &credential.rp_id_hash,
            flag_bits,
            sign_count,
            None,
            extensions.as_ref(),
        );
        let signed = [auth_data.as_slice(), &request.client_data_hash].concat();
        let signature = self.sign(ctx, credential, &signed)?;
        let user = credential
            .discoverable
            .then(|| PublicKeyCredentialUserEntity {
                id: credential.user.id.clone(),
                name: credential.user.name.clone(),
                display_name: credential.user.display_name.clone(),
            });
        // Names identify the user: only after user verification (§6.2.2).
        Ok(msg::response(
            &credential.id,
            auth_data,
            signature,
            user.as_ref().map(|u| (u, user_verified)),
            number_of_credentials,
        ))
    }
}

#[cfg(test)]
#[path = "get_assertion_tests.rs"]
mod tests;
