//! RP provisioning jobs (Microsoft Entra ID): one item per user.
//!
//! **Automated**: creationOptions → makeCredential on the user's key inside the server (the
//! admin's job is the presence; UV is the server's explicit, audited authorisation) → register
//! through Graph → record the registration with Entra's method id.
//!
//! **Crash safety.** Before Graph is called, the item records the local credential id (its
//! *intent*), in the transaction that creates the credential (and the user's key, when the job
//! assigns one). The passkey's display name in Entra is derived from that id, because Graph never
//! lists credential ids. A resumed item therefore asks Graph for the user's passkeys: if ours is
//! there it records it and is done; if not, it deletes the local credential and starts over. Any
//! automated credential for the RP that has neither a registration nor an intent was never sent
//! to Graph and is deleted before a new one is made. So a kill -9 at any point leaves each user
//! with exactly one Keyward passkey in Entra and locally.
//!
//! **Cost.** An item reads its user once, writes its key operation and its registration as two
//! operations of the SQLite group committer (shared with other items' commits), and makes two
//! Graph calls: about eight SQL statements per user.
//!
//! **Manual**: a Temporary Access Pass is created through Graph and kept only sealed by the
//! vault until an admin reveals it once (`POST /jobs/{id}/items/{user_id}/tap`).

pub mod api;
pub mod ctap;
mod manual;

use std::sync::Arc;
use std::time::Duration;

use keyward_entra::{
    ApiVersion, EntraError, ErrorKind, GraphClient, OurAuthenticator, Preflight, Registration,
};
use keyward_store::{
    DirectoryRecord, ItemRegistration, JobItemRecord, JobRecord, ProvisioningSubject,
    RpRegistration, Store, UserRecord,
};
use keyward_vault::Vault;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::directories::graph_client;
use crate::jobs::{BoxFut, ItemOutcome, JobKind, JobRun};
use crate::keyops::{KeyOps, ProvisionOp};

pub const PROVISION_KIND: &str = "provision";
/// The `rp_registrations.rp` of Microsoft Entra ID.
pub const RP_MICROSOFT: &str = "microsoft";

/// What the provisioning job kind needs.
#[derive(Clone)]
pub struct ProvisionDeps {
    pub store: Store,
    pub vault: Arc<Vault>,
    pub keyops: Arc<KeyOps>,
    /// The AAGUID of Keyward's keys, for the policy pre-flight.
    pub aaguid: [u8; 16],
}

/// The `provision` job kind. Params: `{rp, mode, directory_id, assign_missing_keys}`.
pub struct ProvisionKind {
    deps: ProvisionDeps,
}

impl ProvisionKind {
    pub fn new(deps: ProvisionDeps) -> Self {
        ProvisionKind { deps }
    }
}

/// The passkey's display name in Entra: names the credential, since Graph never lists ids.
pub fn display_name_for(credential_id: &[u8]) -> String {
    let h = Sha256::digest(credential_id);
    format!("Keyward {}", hex::encode(&h[..6]))
}

/// Maps a Graph failure onto the runner's outcomes.
pub(crate) fn outcome_of(e: &EntraError) -> ItemOutcome {
    let request_id = e.request_id.clone();
    match &e.kind {
        ErrorKind::Throttled { retry_after } => ItemOutcome::Throttled {
            after: retry_after.unwrap_or(Duration::from_secs(30)),
            reason: e.reason(),
            request_id,
        },
        ErrorKind::Transport => ItemOutcome::Transient {
            reason: e.reason(),
            request_id,
        },
        _ => ItemOutcome::Failed {
            reason: e.reason(),
            request_id,
        },
    }
}

pub(crate) struct Run {
    pub(crate) deps: ProvisionDeps,
    pub(crate) job: JobRecord,
    pub(crate) dir: DirectoryRecord,
    pub(crate) graph: GraphClient,
    /// Set when the tenant's policy (or the connection) makes every item fail: the reason.
    pub(crate) blocked: Option<(String, Option<String>)>,
    pub(crate) manual: bool,
    pub(crate) assign_missing_keys: bool,
}

impl JobKind for ProvisionKind {
    fn kind(&self) -> &'static str {
        PROVISION_KIND
    }

    fn start<'a>(&'a self, job: &'a JobRecord) -> BoxFut<'a, Result<Arc<dyn JobRun>, String>> {
        Box::pin(async move {
            let p = &job.params;
            if p.get("rp").and_then(Value::as_str) != Some(RP_MICROSOFT) {
                return Err("only the Microsoft RP can be provisioned".into());
            }
            let manual = p.get("mode").and_then(Value::as_str) == Some("manual");
            let dir_id: Uuid = p
                .get("directory_id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or("the provisioning job names no directory")?;
            let dir = self
                .deps
                .store
                .directory(job.org_id, dir_id)
                .await
                .map_err(|e| format!("database unavailable: {e}"))?
                .ok_or("the directory no longer exists")?;
            let graph = graph_client(&self.deps.vault, &dir).map_err(|e| e.to_string())?;
            // Pre-flight once per job: bad credentials or a policy that refuses our keys fail
            // every item with the same plain reason instead of 500 identical Graph errors.
            let mut blocked = None;
            if let Err(e) = graph.check_credentials().await {
                blocked = Some((e.reason(), e.request_id.clone()));
            } else if !manual {
                // New keys get the organisation's AAGUID (its settings); that is the one the
                // policy's AAGUID restrictions must allow.
                let aaguid =
                    crate::api::settings::effective(&self.deps.store, job.org_id, self.deps.aaguid)
                        .await
                        .map_err(|e| format!("database unavailable: {e}"))?
                        .aaguid;
                let ours = OurAuthenticator {
                    aaguid: Uuid::from_bytes(aaguid).hyphenated().to_string(),
                    mds_attested: false,
                };
                match graph.fido2_policy().await {
                    Ok(policy) => {
                        if let Preflight::Blocked { reason } = policy.check(&ours) {
                            blocked = Some((reason, None));
                        }
                    }
                    // Without Policy.Read.All the registration itself will tell.
                    Err(e) => tracing::info!(error = %e, "FIDO2 policy pre-flight skipped"),
                }
            }
            Ok(Arc::new(Run {
                deps: self.deps.clone(),
                job: job.clone(),
                graph,
                blocked,
                manual,
                assign_missing_keys: p
                    .get("assign_missing_keys")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                dir,
            }) as Arc<dyn JobRun>)
        })
    }
}

impl JobRun for Run {
    fn bucket(&self) -> String {
        self.dir.tenant_id.clone()
    }

    fn run_item<'a>(&'a self, item: &'a JobItemRecord) -> BoxFut<'a, ItemOutcome> {
        Box::pin(async move {
            if let Some((reason, request_id)) = &self.blocked {
                return ItemOutcome::Failed {
                    reason: reason.clone(),
                    request_id: request_id.clone(),
                };
            }
            match self.item(item).await {
                Ok(o) | Err(o) => o,
            }
        })
    }
}

fn fail(reason: impl Into<String>) -> ItemOutcome {
    ItemOutcome::Failed {
        reason: reason.into(),
        request_id: None,
    }
}

fn unavailable(e: impl std::fmt::Display) -> ItemOutcome {
    ItemOutcome::Transient {
        reason: format!("Keyward's database or vault is unavailable: {e}"),
        request_id: None,
    }
}

impl Run {
    async fn item(&self, item: &JobItemRecord) -> Result<ItemOutcome, ItemOutcome> {
        let store = &self.deps.store;
        let org = self.job.org_id;
        // The user, their Entra id, key and registrations in one read.
        let subject = store
            .provisioning_subject(org, item.user_id, RP_MICROSOFT)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| fail("The user no longer exists in Keyward."))?;
        let user = &subject.user;
        if user.status == "disabled" {
            return Err(fail(
                "The user is disabled in Keyward; enable them before provisioning.",
            ));
        }
        if self
            .dir
            .consenting_upn
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case(&user.upn))
        {
            return Err(fail(
                "This is the account that granted Keyward's app its permissions in Entra ID; Entra refuses to \
                 provision passkeys for it (405). Register this user's passkey by hand instead.",
            ));
        }
        // The id Graph knows the user by: the object id for users imported from this
        // directory, else the UPN.
        let graph_user = match &subject.directory_user {
            Some((dir, ext)) if *dir == self.dir.id => ext.clone(),
            _ => user.upn.clone(),
        };
        if self.manual {
            return manual::run(self, item, user, &graph_user).await;
        }
        let key_id = self.key_of(&subject, item).await?;
        self.automated(item, &subject, key_id, &graph_user).await
    }

    /// The user's active key; `None` when it is to be created with the credential.
    async fn key_of(
        &self,
        subject: &ProvisioningSubject,
        item: &JobItemRecord,
    ) -> Result<Option<Uuid>, ItemOutcome> {
        match &subject.key {
            Some((id, status)) if status == "active" => Ok(Some(*id)),
            Some((_, status)) => Err(fail(format!(
                "The user's security key is {status}; resume it before provisioning."
            ))),
            // Something to reconcile for a user without a key (their key was revoked since): the
            // reconciliation needs a key, so it is created on its own first.
            None if self.assign_missing_keys
                && (item.intent_credential_id.is_some()
                    || subject.registrations > 0
                    || subject.unregistered_automated > 0) =>
            {
                let k = self
                    .deps
                    .keyops
                    .create_key(self.job.org_id, subject.user.id, &self.job.created_by)
                    .await
                    .map_err(unavailable)?;
                Ok(Some(k.id))
            }
            None if self.assign_missing_keys => Ok(None),
            None => Err(fail(
                "The user has no security key. Assign one first, or start the job with assign_missing_keys.",
            )),
        }
    }

    /// Deletes a local credential (with its audit entry) that Entra does not have.
    async fn drop_local(
        &self,
        key_id: Uuid,
        credential_id: &[u8],
        why: &str,
    ) -> Result<(), ItemOutcome> {
        let store = &self.deps.store;
        let mut tx = store
            .begin_key(self.job.org_id, key_id)
            .await
            .map_err(unavailable)?;
        if tx
            .delete_credential(credential_id)
            .await
            .map_err(unavailable)?
        {
            tx.append_audit(
                self.job.org_id,
                &self.job.created_by,
                "credential.delete",
                &format!("key:{key_id}"),
                json!({ "credential_id": hex::encode(credential_id), "reason": why, "job_id": self.job.id }),
            )
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(())
    }

    /// Records the registration and finishes the item `done` in one transaction (which also
    /// drops the item's intent), group-committed with other items on SQLite: the runner has
    /// nothing left to write.
    async fn record(
        &self,
        item: &JobItemRecord,
        user: &UserRecord,
        key_id: Uuid,
        credential_id: &[u8],
        method_id: &str,
    ) -> Result<ItemOutcome, ItemOutcome> {
        let registration = RpRegistration {
            org_id: self.job.org_id,
            user_id: user.id,
            key_id,
            credential_id: credential_id.to_vec(),
            rp: RP_MICROSOFT.into(),
            directory_id: Some(self.dir.id),
            external_id: method_id.to_owned(),
            created_by: self.job.created_by.clone(),
            created_at: keyward_store::now(),
        };
        let audit_detail = json!({ "rp": RP_MICROSOFT, "method_id": method_id, "credential_id": hex::encode(credential_id),
                                   "key_id": key_id, "job_id": self.job.id });
        let result = json!({ "method_id": method_id, "credential_id": hex::encode(credential_id) });
        self.deps
            .keyops
            .record_registration(ItemRegistration {
                registration,
                job_id: item.job_id,
                audit_detail,
                result: Some(result),
            })
            .await
            .map_err(unavailable)?;
        Ok(ItemOutcome::Recorded)
    }

    async fn automated(
        &self,
        item: &JobItemRecord,
        subject: &ProvisioningSubject,
        key_id: Option<Uuid>,
        graph_user: &str,
    ) -> Result<ItemOutcome, ItemOutcome> {
        let store = &self.deps.store;
        let org = self.job.org_id;
        let user = &subject.user;
        let regs = if subject.registrations > 0 {
            store
                .rp_registrations(org, user.id, RP_MICROSOFT)
                .await
                .map_err(unavailable)?
        } else {
            Vec::new()
        };
        // Reconcile with Entra whenever something may already be there. (An intent names a
        // credential on an existing key: the two are written together.)
        if let Some(key_id) = key_id
            && (item.intent_credential_id.is_some() || !regs.is_empty())
        {
            let methods = self
                .graph
                .list_passkeys(graph_user)
                .await
                .map_err(|e| outcome_of(&e))?;
            if let Some(cid) = &item.intent_credential_id {
                let name = display_name_for(cid);
                if let Some(m) = methods
                    .iter()
                    .find(|m| m.display_name.as_deref() == Some(name.as_str()))
                {
                    return self.record(item, user, key_id, cid, &m.id).await;
                }
                // Graph never accepted it: drop it locally and start over.
                self.drop_local(key_id, cid, "not registered in Entra")
                    .await?;
                store
                    .set_item_intent(item.job_id, item.user_id, None)
                    .await
                    .map_err(unavailable)?;
            }
            for r in &regs {
                if methods.iter().any(|m| m.id == r.external_id) {
                    return Ok(ItemOutcome::Done(Some(json!({
                        "method_id": r.external_id, "credential_id": hex::encode(&r.credential_id), "already_provisioned": true,
                    }))));
                }
                // Removed from Entra since: the local credential is an orphan.
                self.drop_local(r.key_id, &r.credential_id, "removed from Entra")
                    .await?;
            }
        }

        let opts = self
            .graph
            .creation_options(graph_user, None)
            .await
            .map_err(|e| {
                if e.kind == ErrorKind::ConsentingAdmin {
                    self.remember_consenting(user);
                }
                outcome_of(&e)
            })?;
        let request = opts.authenticator_request().map_err(|e| outcome_of(&e))?;
        // Automated credentials with no registration were never sent to Graph: leftovers of an
        // attempt cut short before its intent was written (older versions wrote the two apart)
        // or of one whose intent was cleared. Only read when there are any.
        if let Some(key_id) = key_id
            && subject.unregistered_automated > 0
        {
            let registered: Vec<Vec<u8>> = regs.iter().map(|r| r.credential_id.clone()).collect();
            for c in store
                .credentials_of_user(org, user.id)
                .await
                .map_err(unavailable)?
            {
                if c.rp_id == opts.rp_id
                    && c.via == "automated"
                    && !registered.contains(&c.credential_id)
                {
                    self.drop_local(key_id, &c.credential_id, "never registered in Entra")
                        .await?;
                }
            }
        }
        // The key (if new), the credential and the intent naming it commit together, before
        // Graph hears of the credential.
        let provisioned = self
            .deps
            .keyops
            .provision_credential(ProvisionOp {
                org_id: org,
                user_id: user.id,
                key_id,
                actor: self.job.created_by.clone(),
                request: ctap::make_credential_request(&request),
                job_id: item.job_id,
            })
            .await
            .map_err(|e| {
                if e.is_unavailable() {
                    unavailable(e)
                } else {
                    fail(format!(
                        "The user's security key refused the operation: {e}"
                    ))
                }
            })?;
        let key_id = provisioned.key_id;
        let made = ctap::parse_make_credential(&provisioned.response).map_err(|e| match e {
            ctap::CtapAnswerError::Status(ctap::CREDENTIAL_EXCLUDED) => fail(
                "The user's key already holds a passkey that Entra lists for this user; remove it in Entra or Keyward first.",
            ),
            other => fail(format!("The user's security key failed: {other}")),
        })?;
        let reg = Registration {
            display_name: display_name_for(&made.credential_id),
            credential_id: made.credential_id.clone(),
            client_data_json: opts.client_data_json(),
            attestation_object: made.attestation_object.clone(),
            client_extension_results: json!({}),
        };
        match self
            .graph
            .register_passkey(graph_user, &reg, ApiVersion::V1)
            .await
        {
            Ok(method) => {
                self.record(item, user, key_id, &made.credential_id, &method.id)
                    .await
            }
            // Ambiguous (the request may have reached Graph): keep the intent; the next attempt
            // reconciles by listing the user's passkeys.
            Err(e) if e.is_transient() => Err(outcome_of(&e)),
            // An answer we could not read may still mean "registered": reconcile next attempt.
            Err(e) if matches!(e.kind, ErrorKind::BadResponse { .. }) => {
                Err(ItemOutcome::Transient {
                    reason: e.reason(),
                    request_id: e.request_id.clone(),
                })
            }
            Err(e) => {
                // A definite refusal: nothing is registered, so nothing is kept.
                self.drop_local(key_id, &made.credential_id, "refused by Entra")
                    .await?;
                store
                    .set_item_intent(item.job_id, item.user_id, None)
                    .await
                    .map_err(unavailable)?;
                if e.kind == ErrorKind::ConsentingAdmin {
                    self.remember_consenting(user);
                }
                Err(outcome_of(&e))
            }
        }
    }

    /// Entra refused with 405: remember the account so later jobs refuse it up front.
    fn remember_consenting(&self, user: &UserRecord) {
        let (store, org, dir, upn) = (
            self.deps.store.clone(),
            self.job.org_id,
            self.dir.id,
            user.upn.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = store.set_consenting_upn(org, dir, &upn).await {
                tracing::warn!(error = %e, "could not remember the consenting account");
            }
        });
    }
}
