//! authenticatorCredentialManagement (0x0A), §6.8: metadata, enumeration, delete, update.

use keyward_ctap::cbor::{self, Value};
use keyward_ctap::ctap2::cred_mgmt::subcommand;
use keyward_ctap::ctap2::{
    CredentialManagementRequest, PublicKeyCredentialDescriptor, PublicKeyCredentialUserEntity,
    permission,
};
use keyward_ctap::status::StatusCode;

use crate::crypto::sha256;
use crate::pin_protocol::PinUvAuthProtocol;
use crate::state::{CredMgmtCursor, STATEFUL_COMMAND_TIMEOUT_MS};
use crate::{Authenticator, Context, CtapResult, StoredCredential, UserEntity};

impl Authenticator {
    pub(crate) fn credential_management(
        &mut self,
        ctx: &mut Context<'_>,
        params: Option<&Value>,
    ) -> CtapResult<Option<Value>> {
        let request = CredentialManagementRequest::parse(params)?;
        let continuation = matches!(
            request.sub_command,
            subcommand::ENUMERATE_RPS_GET_NEXT_RP
                | subcommand::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL
        );
        if !continuation {
            self.state.cred_mgmt = None;
            self.authorise(&request)?;
        }
        let now = ctx.env.now_ms();
        match request.sub_command {
            subcommand::GET_CREDS_METADATA => {
                let count = ctx.store.discoverable_credentials()?.len();
                let remaining = self.config.max_discoverable.saturating_sub(count);
                Ok(Some(cbor::int_map(vec![
                    (1, Value::Unsigned(count as u64)),
                    (2, Value::Unsigned(remaining as u64)),
                ])))
            }
            subcommand::ENUMERATE_RPS_BEGIN => {
                let mut rps: Vec<(String, Option<String>)> = Vec::new();
                for c in ctx.store.discoverable_credentials()? {
                    if !rps.iter().any(|(id, _)| *id == c.rp_id) {
                        rps.push((c.rp_id, c.rp_name));
                    }
                }
                if rps.is_empty() {
                    return Err(StatusCode::NoCredentials);
                }
                let total = rps.len();
                let first = rps.remove(0);
                let mut response = rp_entry(&first);
                push(&mut response, 5, Value::Unsigned(total as u64));
                if !rps.is_empty() {
                    self.state.cred_mgmt = Some(CredMgmtCursor::Rps {
                        remaining: rps,
                        deadline_ms: now + STATEFUL_COMMAND_TIMEOUT_MS,
                    });
                }
                Ok(Some(response))
            }
            subcommand::ENUMERATE_CREDENTIALS_BEGIN => {
                let rp_id_hash = request.rp_id_hash.ok_or(StatusCode::MissingParameter)?;
                let mut creds: Vec<StoredCredential> = ctx
                    .store
                    .credentials_for_rp(&rp_id_hash)?
                    .into_iter()
                    .filter(|c| c.discoverable)
                    .collect();
                if creds.is_empty() {
                    return Err(StatusCode::NoCredentials);
                }
                let total = creds.len();
                let first = creds.remove(0);
                let mut response = credential_entry(&first)?;
                push(&mut response, 9, Value::Unsigned(total as u64));
                if !creds.is_empty() {
                    self.state.cred_mgmt = Some(CredMgmtCursor::Credentials {
                        remaining: creds,
                        deadline_ms: now + STATEFUL_COMMAND_TIMEOUT_MS,
                    });
                }
                Ok(Some(response))
            }
            subcommand::ENUMERATE_RPS_GET_NEXT_RP => match self.state.cred_mgmt.as_mut() {
                Some(CredMgmtCursor::Rps {
                    remaining,
                    deadline_ms,
                }) if now <= *deadline_ms && !remaining.is_empty() => {
                    let next = remaining.remove(0);
                    *deadline_ms = now + STATEFUL_COMMAND_TIMEOUT_MS;
                    Ok(Some(rp_entry(&next)))
                }
                _ => Err(StatusCode::NotAllowed),
            },
            subcommand::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL => {
                match self.state.cred_mgmt.as_mut() {
                    Some(CredMgmtCursor::Credentials {
                        remaining,
                        deadline_ms,
                    }) if now <= *deadline_ms && !remaining.is_empty() => {
                        let next = remaining.remove(0);
                        *deadline_ms = now + STATEFUL_COMMAND_TIMEOUT_MS;
                        Ok(Some(credential_entry(&next)?))
                    }
                    _ => Err(StatusCode::NotAllowed),
                }
            }
            subcommand::DELETE_CREDENTIAL => {
                let id = request
                    .credential_id
                    .ok_or(StatusCode::MissingParameter)?
                    .id;
                self.check_rp_binding(ctx, &id)?;
                if !ctx.store.delete_credential(&id)? {
                    return Err(StatusCode::NoCredentials);
                }
                self.state.forget_key(&id);
                Ok(None)
            }
            subcommand::UPDATE_USER_INFORMATION => {
                let id = request
                    .credential_id
                    .ok_or(StatusCode::MissingParameter)?
                    .id;
                let user = request.user.ok_or(StatusCode::MissingParameter)?;
                let stored = self.check_rp_binding(ctx, &id)?;
                if stored.user.id != user.id {
                    return Err(StatusCode::InvalidParameter);
                }
                // Absent name fields are removed, as the spec asks (§6.8.7).
                let updated = UserEntity {
                    id: user.id,
                    name: user.name,
                    display_name: user.display_name,
                };
                if !ctx.store.update_user(&id, &updated)? {
                    return Err(StatusCode::NoCredentials);
                }
                Ok(None)
            }
            _ => Err(StatusCode::InvalidSubcommand),
        }
    }

    /// pinUvAuthParam = authenticate(token, subCommand ‖ CBOR(subCommandParams)); the token needs
    /// the cm permission. Metadata and RP enumeration span all RPs, so an RP-bound token may not
    /// run them.
    fn authorise(&mut self, request: &CredentialManagementRequest) -> CtapResult<()> {
        let param = request
            .pin_uv_auth_param
            .as_ref()
            .ok_or(StatusCode::PuatRequired)?;
        let protocol = PinUvAuthProtocol::required(request.pin_uv_auth_protocol)?;
        let mut message = vec![request.sub_command];
        if let Some(sub) = &request.sub_command_params {
            message.extend_from_slice(&cbor::encode(sub));
        }
        self.use_token(
            protocol,
            &message,
            param,
            permission::CREDENTIAL_MANAGEMENT,
            None,
        )?;
        let bound = self.state.token.as_ref().and_then(|t| t.rp_id.clone());
        match (request.sub_command, bound) {
            (subcommand::GET_CREDS_METADATA | subcommand::ENUMERATE_RPS_BEGIN, Some(_)) => {
                Err(StatusCode::PinAuthInvalid)
            }
            (subcommand::ENUMERATE_CREDENTIALS_BEGIN, Some(rp_id))
                if request.rp_id_hash != Some(sha256(rp_id.as_bytes())) =>
            {
                Err(StatusCode::PinAuthInvalid)
            }
            _ => Ok(()),
        }
    }

    /// Loads a discoverable credential and checks it against an RP-bound token.
    fn check_rp_binding(&self, ctx: &mut Context<'_>, id: &[u8]) -> CtapResult<StoredCredential> {
        let stored = ctx
            .store
            .credential(id)?
            .filter(|c| c.discoverable)
            .ok_or(StatusCode::NoCredentials)?;
        if let Some(bound) = self.state.token.as_ref().and_then(|t| t.rp_id.as_ref())
            && *bound != stored.rp_id
        {
            return Err(StatusCode::PinAuthInvalid);
        }
        Ok(stored)
    }
}

fn push(map: &mut Value, key: u64, value: Value) {
    if let Value::Map(entries) = map {
        entries.push((Value::Unsigned(key), value));
    }
}

/// `{3: rp, 4: rpIDHash}`.
fn rp_entry((rp_id, rp_name): &(String, Option<String>)) -> Value {
    let mut rp = vec![("id", Value::Text(rp_id.clone()))];
    if let Some(name) = rp_name {
        rp.push(("name", Value::Text(name.clone())));
    }
    cbor::int_map(vec![
        (3, cbor::text_map(rp)),
        (4, Value::Bytes(sha256(rp_id.as_bytes()).to_vec())),
    ])
}

/// `{6: user, 7: credentialID, 8: publicKey, 10: credProtect}`.
fn credential_entry(c: &StoredCredential) -> CtapResult<Value> {
    let user = PublicKeyCredentialUserEntity {
        id: c.user.id.clone(),
        name: c.user.name.clone(),
        display_name: c.user.display_name.clone(),
    };
    let public_key = cbor::decode(&c.public_key_cose).map_err(|_| StatusCode::Other)?;
    Ok(cbor::int_map(vec![
        (6, user.to_value(true)),
        (
            7,
            PublicKeyCredentialDescriptor {
                id: c.id.clone(),
                is_public_key: true,
            }
            .to_value(),
        ),
        (8, public_key),
        (10, Value::Unsigned(u64::from(c.cred_protect))),
    ]))
}

#[cfg(test)]
#[path = "cred_mgmt_tests.rs"]
mod tests;
