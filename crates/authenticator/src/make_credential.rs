//! authenticatorMakeCredential (0x01), CTAP 2.1 §6.1.2.

use keyward_ctap::cbor::{self, Value};
use keyward_ctap::ctap2::make_credential::{self as msg, MakeCredentialRequest};
use keyward_ctap::ctap2::{alg, permission};
use keyward_ctap::status::StatusCode;

use crate::crypto::{self, AttestedCredential, SigningKey, flags, sha256};
use crate::pin_protocol::PinUvAuthProtocol;
use crate::{
    Attestation, Authenticator, Context, CtapResult, PresenceKind, PresenceRequest,
    StoredCredential, UserEntity, extensions,
};

impl Authenticator {
    pub(crate) fn make_credential(
        &mut self,
        ctx: &mut Context<'_>,
        params: Option<&Value>,
    ) -> CtapResult<Value> {
        let request = MakeCredentialRequest::parse(params)?;
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
        let algorithm = *request
            .algorithms
            .iter()
            .find(|a| crypto::supported(**a))
            .ok_or(StatusCode::UnsupportedAlgorithm)?;
        if request.up == Some(false) {
            return Err(StatusCode::InvalidOption);
        }
        // No built-in user verification: "uv" can only be satisfied by a pinUvAuthParam (which
        // supersedes the option) or the server's explicit, audited authorisation.
        if request.uv && request.pin_uv_auth_param.is_none() && !ctx.policy.preauthorized_uv {
            return Err(StatusCode::InvalidOption);
        }
        if request.enterprise_attestation.is_some() {
            return Err(StatusCode::InvalidParameter);
        }
        let state = ctx.store.load_state()?;
        let pin_set = state.pin_verifier.is_some();

        let user_verified = match (&request.pin_uv_auth_param, protocol) {
            (Some(param), Some(protocol)) => {
                let uv = self.use_token(
                    protocol,
                    &request.client_data_hash,
                    param,
                    permission::MAKE_CREDENTIAL,
                    Some(&request.rp_id),
                )?;
                if !uv {
                    return Err(StatusCode::PinAuthInvalid);
                }
                true
            }
            _ if ctx.policy.preauthorized_uv => true,
            _ => {
                if state.always_uv {
                    return Err(if pin_set {
                        StatusCode::PuatRequired
                    } else {
                        StatusCode::OperationDenied
                    });
                }
                // makeCredUvNotRqd covers only non-discoverable credentials.
                if pin_set && request.rk {
                    return Err(StatusCode::PuatRequired);
                }
                false
            }
        };

        let rp_id_hash = sha256(request.rp_id.as_bytes());
        let presence = PresenceRequest {
            rp_id: Some(request.rp_id.clone()),
            kind: PresenceKind::MakeCredential,
        };
        for descriptor in request.exclude_list.iter().filter(|d| d.is_public_key) {
            let Some(existing) = ctx.store.credential(&descriptor.id)? else {
                continue;
            };
            // A credProtect=3 credential does not exist for a caller without UV (§12.1).
            if existing.rp_id_hash != rp_id_hash || (existing.cred_protect == 3 && !user_verified) {
                continue;
            }
            ctx.presence.confirm(&presence)?;
            return Err(StatusCode::CredentialExcluded);
        }

        if request.rk {
            let discoverable = ctx.store.discoverable_credentials()?;
            let replaces = discoverable
                .iter()
                .any(|c| c.rp_id_hash == rp_id_hash && c.user.id == request.user.id);
            if !replaces && discoverable.len() >= self.config.max_discoverable {
                return Err(StatusCode::KeyStoreFull);
            }
        }

        ctx.presence.confirm(&presence)?;
        if protocol.is_some() {
            self.spend_token_permissions();
        }

        let key = crypto::generate(algorithm)?;
        let mut id = vec![0u8; 32];
        ctx.env.fill_random(&mut id);
        let outcome = extensions::make_credential(
            &request.extensions,
            &self.config,
            &state,
            &request.rp_id,
            ctx,
        );
        let sealed_cred_random = outcome
            .cred_random
            .as_ref()
            .map(|random| ctx.protection.seal(&id, random))
            .transpose()?;
        let credential = StoredCredential {
            id: id.clone(),
            rp_id: request.rp_id.clone(),
            rp_id_hash,
            rp_name: request.rp_name.clone(),
            user: UserEntity {
                id: request.user.id.clone(),
                name: request.user.name.clone(),
                display_name: request.user.display_name.clone(),
            },
            alg: algorithm,
            public_key_cose: key.public_key_cose.clone(),
            sealed_private_key: ctx.protection.seal(&id, &key.pkcs8)?,
            sealed_cred_random,
            discoverable: request.rk,
            cred_protect: outcome.cred_protect,
            cred_blob: outcome.cred_blob,
            sign_count: 0,
            backup_eligible: self.config.backup_eligible,
            backup_state: self.config.backup_state,
            created_at_ms: ctx.env.now_ms(),
        };
        // Durable before the attestation leaves: no credential is reported that was not kept.
        ctx.store.insert_credential(&credential)?;

        let mut flag_bits = flags::UP;
        if user_verified {
            flag_bits |= flags::UV;
        }
        if credential.backup_eligible {
            flag_bits |= flags::BE;
        }
        if credential.backup_state {
            flag_bits |= flags::BS;
        }
        let auth_data = crypto::auth_data(
            &rp_id_hash,
            flag_bits,
            0,
            Some(AttestedCredential {
                aaguid: &self.config.aaguid,
                credential_id: &id,
                public_key_cose: &key.public_key_cose,
            }),
            outcome.outputs.as_ref(),
        );
        let signed = [auth_data.as_slice(), &request.client_data_hash].concat();
        let (fmt, att_stmt) = match &self.config.attestation {
            Attestation::None => ("none", Value::Map(Vec::new())),
            Attestation::Packed(batch) => {
                let batch_key = SigningKey::from_pkcs8(alg::ES256, &batch.pkcs8_der)?;
                let sig = batch_key.sign(&signed)?;
                let x5c = batch
                    .cert_chain_der
                    .iter()
                    .cloned()
                    .map(Value::Bytes)
                    .collect();
                (
                    "packed",
                    cbor::text_map(vec![
                        ("alg", Value::int(alg::ES256)),
                        ("sig", Value::Bytes(sig)),
                        ("x5c", Value::Array(x5c)),
                    ]),
                )
            }
        };
        self.state
            .cache_key(&id, &credential.sealed_private_key, key.signing);
        Ok(msg::response(fmt, auth_data, att_stmt))
    }
}

#[cfg(test)]
#[path = "make_credential_tests.rs"]
mod tests;
