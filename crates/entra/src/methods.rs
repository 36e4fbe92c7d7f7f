//! Temporary Access Passes and the FIDO2 policy pre-flight.

use std::fmt;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use crate::client::{ApiVersion, GraphClient, Idempotency, parse_json};
use crate::config::Secret;
use crate::error::{EntraError, ErrorKind};
use crate::users::encode_segment;

/// Options for a new Temporary Access Pass (all optional: the tenant policy's defaults apply).
#[derive(Debug, Clone, Default)]
pub struct TapRequest {
    pub start: Option<DateTime<Utc>>,
    /// 10–43200, within the policy's minimum and maximum.
    pub lifetime_minutes: Option<u32>,
    pub usable_once: Option<bool>,
}

/// A created Temporary Access Pass. The pass itself is shown once; it never prints.
#[derive(Clone)]
pub struct TemporaryAccessPass {
    pub id: String,
    pub pass: Secret,
    pub start: Option<DateTime<Utc>>,
    pub lifetime_minutes: Option<u32>,
    pub usable_once: Option<bool>,
    pub is_usable: Option<bool>,
    pub method_usability_reason: Option<String>,
}

impl fmt::Debug for TemporaryAccessPass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemporaryAccessPass")
            .field("id", &self.id)
            .field("pass", &"<redacted>")
            .field("start", &self.start)
            .field("lifetime_minutes", &self.lifetime_minutes)
            .field("usable_once", &self.usable_once)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTap {
    id: String,
    temporary_access_pass: Option<String>,
    start_date_time: Option<DateTime<Utc>>,
    lifetime_in_minutes: Option<u32>,
    is_usable_once: Option<bool>,
    is_usable: Option<bool>,
    method_usability_reason: Option<String>,
}

/// The FIDO2 authentication method configuration (only what the pre-flight reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fido2Policy {
    pub state: Option<String>,
    pub is_self_service_registration_allowed: Option<bool>,
    pub is_attestation_enforced: Option<bool>,
    pub key_restrictions: Option<KeyRestrictions>,
    #[serde(default)]
    pub include_targets: Vec<PolicyTarget>,
    #[serde(default)]
    pub exclude_targets: Vec<PolicyTarget>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRestrictions {
    pub is_enforced: Option<bool>,
    pub enforcement_type: Option<String>,
    #[serde(default)]
    pub aa_guids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTarget {
    pub target_type: Option<String>,
    pub id: String,
}

/// The authenticator Keyward will present.
#[derive(Debug, Clone)]
pub struct OurAuthenticator {
    pub aaguid: String,
    /// True only when the attestation chains to FIDO MDS (never for a software key today).
    pub mds_attested: bool,
}

/// The outcome of a pre-flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preflight {
    Ready,
    /// Provisioning would fail; the reason is written for an admin.
    Blocked {
        reason: String,
    },
}

impl Fido2Policy {
    /// The checks that do not depend on the user (graph.md §7.2).
    pub fn check(&self, ours: &OurAuthenticator) -> Preflight {
        let blocked = |r: &str| Preflight::Blocked {
            reason: r.to_string(),
        };
        if self.state.as_deref() != Some("enabled") {
            return blocked(
                "Passkeys (FIDO2 security keys) are turned off in the tenant's authentication methods policy. Enable the Passkey (FIDO2) method in the Entra admin center.",
            );
        }
        if self.is_self_service_registration_allowed != Some(true) {
            return blocked(
                "The Passkey (FIDO2) policy has 'Allow self-service setup' turned off; Entra refuses provisioning on behalf of users until it is on.",
            );
        }
        if self.is_attestation_enforced == Some(true) && !ours.mds_attested {
            return blocked(
                "The Passkey (FIDO2) policy enforces attestation, which only FIDO-certified hardware keys listed in the FIDO metadata service can pass. Turn 'Enforce attestation' off to use Keyward's keys.",
            );
        }
        if let Some(kr) = &self.key_restrictions
            && kr.is_enforced == Some(true)
        {
            let listed = kr
                .aa_guids
                .iter()
                .any(|g| g.eq_ignore_ascii_case(&ours.aaguid));
            match kr.enforcement_type.as_deref() {
                Some("allow") if !listed => {
                    return Preflight::Blocked {
                        reason: format!(
                            "The Passkey (FIDO2) key restrictions allow only listed AAGUIDs; add Keyward's AAGUID {} to the allow list.",
                            ours.aaguid
                        ),
                    };
                }
                Some("block") if listed => {
                    return Preflight::Blocked {
                        reason: format!(
                            "The Passkey (FIDO2) key restrictions block Keyward's AAGUID {}; remove it from the block list.",
                            ours.aaguid
                        ),
                    };
                }
                _ => {}
            }
        }
        Preflight::Ready
    }
}

#[derive(Deserialize)]
struct StringList {
    value: Vec<String>,
}

impl GraphClient {
    /// `POST …/temporaryAccessPassMethods`. A new pass replaces the user's previous one, so a
    /// retry after an ambiguous failure is harmless and allowed.
    pub async fn create_temporary_access_pass(
        &self,
        user: &str,
        req: &TapRequest,
    ) -> Result<TemporaryAccessPass, EntraError> {
        let mut body = json!({});
        if let Some(s) = req.start {
            body["startDateTime"] = json!(s.to_rfc3339());
        }
        if let Some(l) = req.lifetime_minutes {
            body["lifetimeInMinutes"] = json!(l);
        }
        if let Some(o) = req.usable_once {
            body["isUsableOnce"] = json!(o);
        }
        let url = self.url(
            ApiVersion::V1,
            &format!(
                "/users/{}/authentication/temporaryAccessPassMethods",
                encode_segment(user)
            ),
        );
        let resp = self
            .send(Method::POST, &url, Some(&body), &[], Idempotency::Safe)
            .await
            .map_err(|mut e| {
                if e.kind == ErrorKind::Rejected {
                    e.kind = ErrorKind::Policy;
                }
                e
            })?;
        let raw: RawTap = parse_json(&resp)?;
        let pass = raw
            .temporary_access_pass
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                EntraError::bad_response("the new Temporary Access Pass has no pass text")
                    .with_request_id(resp.request_id.clone())
            })?;
        Ok(TemporaryAccessPass {
            id: raw.id,
            pass: Secret::new(pass),
            start: raw.start_date_time,
            lifetime_minutes: raw.lifetime_in_minutes,
            usable_once: raw.is_usable_once,
            is_usable: raw.is_usable,
            method_usability_reason: raw.method_usability_reason,
        })
    }

    /// Reads the FIDO2 method configuration (needs `Policy.Read.All`).
    pub async fn fido2_policy(&self) -> Result<Fido2Policy, EntraError> {
        let url = self.url(
            ApiVersion::V1,
            "/policies/authenticationMethodsPolicy/authenticationMethodConfigurations/fido2",
        );
        let (p, _): (Fido2Policy, _) = self.get_json(&url, &[]).await?;
        Ok(p)
    }

    /// Pre-flight for one user: the policy checks, then whether the policy targets the user.
    pub async fn preflight(
        &self,
        user_id: &str,
        ours: &OurAuthenticator,
    ) -> Result<Preflight, EntraError> {
        let policy = self.fido2_policy().await?;
        if let Preflight::Blocked { reason } = policy.check(ours) {
            return Ok(Preflight::Blocked { reason });
        }
        let group_ids = |ts: &[PolicyTarget]| -> Vec<String> {
            ts.iter()
                .filter(|t| t.id != "all_users" && t.target_type.as_deref() != Some("user"))
                .map(|t| t.id.clone())
                .collect()
        };
        let direct =
            |ts: &[PolicyTarget]| ts.iter().any(|t| t.id == "all_users" || t.id == user_id);
        let member_of = |ids: Vec<String>| async move {
            let mut hit = Vec::new();
            // checkMemberGroups takes at most 20 ids per call.
            for chunk in ids.chunks(20) {
                let url = self.url(
                    ApiVersion::V1,
                    &format!("/users/{}/checkMemberGroups", encode_segment(user_id)),
                );
                let body = json!({"groupIds": chunk});
                let resp = self
                    .send(Method::POST, &url, Some(&body), &[], Idempotency::Safe)
                    .await?;
                let list: StringList = parse_json(&resp)?;
                hit.extend(list.value);
            }
            Ok::<_, EntraError>(hit)
        };
        let included = direct(&policy.include_targets)
            || !member_of(group_ids(&policy.include_targets))
                .await?
                .is_empty();
        if !included {
            return Ok(Preflight::Blocked {
                reason: "The Passkey (FIDO2) policy does not include this user: add the user (or one of their groups) to the policy's targets.".into(),
            });
        }
        let excluded = direct(&policy.exclude_targets)
            || !member_of(group_ids(&policy.exclude_targets))
                .await?
                .is_empty();
        if excluded {
            return Ok(Preflight::Blocked {
                reason: "The user is excluded from the Passkey (FIDO2) policy through an excluded group.".into(),
            });
        }
        Ok(Preflight::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    fn policy(v: Value) -> Fido2Policy {
        serde_json::from_value(v).expect("policy JSON")
    }

    #[test]
    fn policy_checks_give_reasons() {
        let ours = OurAuthenticator {
            aaguid: "11111111-2222-3333-4444-555555555555".into(),
            mds_attested: false,
        };
        let base = json!({"state": "enabled", "isSelfServiceRegistrationAllowed": true, "isAttestationEnforced": false,
            "keyRestrictions": {"isEnforced": false, "enforcementType": "block", "aaGuids": []}});
        assert_eq!(policy(base.clone()).check(&ours), Preflight::Ready);
        let mut v = base.clone();
        v["isAttestationEnforced"] = json!(true);
        assert!(
            matches!(policy(v).check(&ours), Preflight::Blocked { reason } if reason.contains("attestation"))
        );
        let mut v = base.clone();
        v["keyRestrictions"] =
            json!({"isEnforced": true, "enforcementType": "allow", "aaGuids": ["aaaa"]});
        assert!(
            matches!(policy(v).check(&ours), Preflight::Blocked { reason } if reason.contains(&ours.aaguid))
        );
        let mut v = base.clone();
        v["isSelfServiceRegistrationAllowed"] = json!(false);
        assert!(
            matches!(policy(v).check(&ours), Preflight::Blocked { reason } if reason.contains("self-service"))
        );
        let mut v = base;
        v["state"] = json!("disabled");
        assert!(matches!(policy(v).check(&ours), Preflight::Blocked { .. }));
    }

    #[test]
    fn tap_debug_hides_the_pass() {
        let t = TemporaryAccessPass {
            id: "x".into(),
            pass: Secret::new("+drkzqAD"),
            start: None,
            lifetime_minutes: Some(60),
            usable_once: None,
            is_usable: None,
            method_usability_reason: None,
        };
        assert!(!format!("{t:?}").contains("drkzq"));
    }
}
