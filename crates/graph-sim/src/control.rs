//! The `/_sim` control API and its in-process twin, [`SimControl`]: change the directory, inject
//! faults, change the policy, and prove a registered passkey works with a sign-in ceremony.

use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, routing::patch};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;

use crate::RP_ID;
use crate::fido::{b64url, user_handle};
use crate::state::{DeltaReset, Fault, Fido2Policy, SigninChallenge, SimUser, Simulator};
use crate::webauthn::{FLAG_UP, FLAG_UV, aaguid_string, parse_auth_data};

/// Controls a running simulator from the same process (tests, benchmarks).
#[derive(Clone)]
pub struct SimControl {
    sim: Simulator,
}

/// A WebAuthn assertion presented to the sign-in endpoint (all binary fields base64url).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigninAssertion {
    /// The user's UPN or object id.
    pub user: String,
    /// Credential id.
    pub id: String,
    #[serde(rename = "clientDataJSON")]
    pub client_data_json: String,
    pub authenticator_data: String,
    pub signature: String,
    #[serde(default)]
    pub user_handle: Option<String>,
}

/// A successful sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigninOk {
    pub method_id: String,
    pub sign_count: u32,
}

impl SimControl {
    pub fn new(sim: Simulator) -> Self {
        SimControl { sim }
    }

    pub fn simulator(&self) -> &Simulator {
        &self.sim
    }

    /// Creates a user; returns its object id.
    pub fn add_user(&self, upn: &str, display_name: &str) -> String {
        let mut data = self.sim.data();
        let id = uuid::Uuid::new_v4().to_string();
        let (given, surname) = display_name.split_once(' ').unwrap_or((display_name, ""));
        data.insert_user(SimUser {
            id: id.clone(),
            user_principal_name: upn.to_string(),
            mail: Some(upn.to_string()),
            display_name: display_name.to_string(),
            given_name: given.to_string(),
            surname: surname.to_string(),
            job_title: None,
            account_enabled: true,
            user_type: "Member".into(),
            seq: 0,
        });
        id
    }

    /// Changes a user (a delta round will report it); false when there is no such user.
    pub fn update_user(
        &self,
        id: &str,
        display_name: Option<&str>,
        account_enabled: Option<bool>,
    ) -> bool {
        let mut data = self.sim.data();
        let seq = data.next_seq();
        let Some(u) = data.users.get_mut(id) else {
            return false;
        };
        if let Some(d) = display_name {
            u.display_name = d.to_string();
        }
        if let Some(e) = account_enabled {
            u.account_enabled = e;
        }
        u.seq = seq;
        true
    }

    pub fn remove_user(&self, id: &str) -> bool {
        self.sim.data().remove_user(id)
    }

    /// The object id of the user with this UPN (or id).
    pub fn user_id(&self, upn: &str) -> Option<String> {
        self.sim.data().find_user(upn).map(|u| u.id.clone())
    }

    /// The UPN of the `n`th user in id order (what a listing returns first).
    pub fn nth_user(&self, n: usize) -> Option<(String, String)> {
        self.sim
            .data()
            .users
            .values()
            .nth(n)
            .map(|u| (u.id.clone(), u.user_principal_name.clone()))
    }

    pub fn user_count(&self) -> usize {
        self.sim.data().users.len()
    }

    /// The id of the group with this display name ("Keyward Pilot" and "Keyward Pilot - Nested" are seeded).
    pub fn group_id(&self, name: &str) -> Option<String> {
        self.sim
            .data()
            .groups
            .values()
            .find(|g| g.display_name == name)
            .map(|g| g.id.clone())
    }

    /// Users a group reaches transitively.
    pub fn group_user_count(&self, group_id: &str) -> usize {
        self.sim
            .data()
            .transitive_users(group_id)
            .map_or(0, |s| s.len())
    }

    pub fn set_latency(&self, latency: Duration) {
        self.sim.data().latency = latency;
    }

    /// Queues `count` copies of a fault; each is spent by one Graph request.
    pub fn push_fault(&self, fault: Fault, count: usize) {
        let mut data = self.sim.data();
        for _ in 0..count {
            data.faults.push_back(fault.clone());
        }
    }

    pub fn clear_faults(&self) {
        self.sim.data().faults.clear();
    }

    /// Makes every Graph call answer 403 Authorization_RequestDenied (a missing permission).
    pub fn set_forbidden(&self, forbidden: bool) {
        self.sim.data().forbid = forbidden;
    }

    /// Expires every access token issued so far (Graph answers 401 InvalidAuthenticationToken).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for exp in self.sim.data().tokens.values_mut() {
            *exp = now;
        }
    }

    /// Invalidates every delta token; the next use answers 410 with this code.
    pub fn expire_delta_tokens(&self, reason: DeltaReset) {
        let mut data = self.sim.data();
        data.delta_epoch += 1;
        data.delta_reset = reason;
    }

    pub fn policy(&self) -> Fido2Policy {
        self.sim.data().policy.clone()
    }

    pub fn set_policy(&self, policy: Fido2Policy) {
        self.sim.data().policy = policy;
    }

    /// Sets the write limit (Graph's is 3,000 per 150 s per app and tenant).
    pub fn set_write_limit(&self, limit: u32, window: Duration) {
        let mut data = self.sim.data();
        data.write_limit = limit;
        data.write_window = window;
        data.writes.clear();
    }

    /// Trusts these DER certificates as attestation roots when attestation is enforced.
    pub fn set_attestation_roots(&self, roots: Vec<Vec<u8>>) {
        self.sim.data().attestation_roots = roots;
    }

    pub fn register_certificate(&self, der: Vec<u8>) {
        self.sim.data().client_certificates.push(der);
    }

    pub fn set_consenting_admin(&self, upn: &str) {
        self.sim.data().consenting_admin = upn.to_lowercase();
    }

    /// Access tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.sim.data().tokens_issued
    }

    /// Graph requests seen so far.
    pub fn request_count(&self) -> u64 {
        self.sim.data().requests
    }

    /// (method id, AAGUID, sign counter) of each passkey registered for a user.
    pub fn passkeys(&self, user: &str) -> Vec<(String, String, u32)> {
        let data = self.sim.data();
        let Some(u) = data.find_user(user) else {
            return Vec::new();
        };
        data.methods
            .get(&u.id)
            .map(|ms| {
                ms.iter()
                    .map(|m| (m.id.clone(), aaguid_string(&m.aaguid), m.counter))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The user handle Entra's creation options give this user.
    pub fn user_handle(&self, user_id: &str) -> Vec<u8> {
        user_handle(&self.sim, user_id)
    }

    /// Starts a sign-in: a fresh 32-byte challenge for the user, valid five minutes.
    pub fn signin_challenge(&self, user: &str) -> Option<Vec<u8>> {
        let mut data = self.sim.data();
        let id = data.find_user(user)?.id.clone();
        let mut challenge = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut challenge).ok()?;
        data.signin.insert(
            id,
            SigninChallenge {
                challenge: challenge.clone(),
                expires: Instant::now() + Duration::from_secs(300),
            },
        );
        Some(challenge)
    }

    /// Verifies an assertion as Entra would at sign-in: the pending challenge, origin, rpIdHash,
    /// UP and UV, the signature with the stored public key, a counter that increases, and the
    /// key restrictions (which apply at sign-in too).
    pub fn verify_signin(&self, a: &SigninAssertion) -> Result<SigninOk, String> {
        let decode =
            |name: &str, v: &str| b64url(v).ok_or_else(|| format!("{name} is not base64url"));
        let cred_id = decode("id", &a.id)?;
        let client_data = decode("clientDataJSON", &a.client_data_json)?;
        let auth_raw = decode("authenticatorData", &a.authenticator_data)?;
        let sig = decode("signature", &a.signature)?;
        let mut data = self.sim.data();
        let user_id = data.find_user(&a.user).ok_or("no such user")?.id.clone();
        let pending = data
            .signin
            .remove(&user_id)
            .ok_or("no sign-in is pending for this user")?;
        if pending.expires < Instant::now() {
            return Err("the sign-in challenge has expired".into());
        }
        let cd: serde_json::Value =
            serde_json::from_slice(&client_data).map_err(|_| "clientDataJSON is not JSON")?;
        if cd["type"] != "webauthn.get" {
            return Err("clientDataJSON.type must be webauthn.get".into());
        }
        if cd["challenge"].as_str() != Some(URL_SAFE_NO_PAD.encode(&pending.challenge).as_str()) {
            return Err("the challenge does not match".into());
        }
        if cd["origin"].as_str() != Some(format!("https://{RP_ID}").as_str()) {
            return Err("the origin is wrong".into());
        }
        let ad = parse_auth_data(&auth_raw).map_err(|e| e.to_string())?;
        if ad.rp_id_hash.as_slice() != digest::digest(&digest::SHA256, RP_ID.as_bytes()).as_ref() {
            return Err("rpIdHash is wrong".into());
        }
        if ad.flags & FLAG_UP == 0 || ad.flags & FLAG_UV == 0 {
            return Err("user presence and verification are required".into());
        }
        if let Some(h) = &a.user_handle
            && b64url(h).as_deref() != Some(user_handle(&self.sim, &user_id).as_slice())
        {
            return Err("the user handle belongs to another user".into());
        }
        let policy = data.policy.clone();
        let method = data
            .methods
            .get_mut(&user_id)
            .and_then(|ms| ms.iter_mut().find(|m| m.credential_id == cred_id))
            .ok_or("no passkey with this credential id is registered for the user")?;
        let kr = &policy.key_restrictions;
        if kr.is_enforced {
            let listed = kr
                .aa_guids
                .iter()
                .any(|g| g.eq_ignore_ascii_case(&aaguid_string(&method.aaguid)));
            if listed != (kr.enforcement_type == "allow") {
                return Err("the authenticator is blocked by the key restriction policy".into());
            }
        }
        let mut signed = auth_raw.clone();
        signed.extend_from_slice(digest::digest(&digest::SHA256, &client_data).as_ref());
        if !method.public_key.verify(&signed, &sig) {
            return Err("the signature is invalid".into());
        }
        if (ad.counter != 0 || method.counter != 0) && ad.counter <= method.counter {
            return Err(format!(
                "the signature counter did not increase ({} after {}): the key may be cloned",
                ad.counter, method.counter
            ));
        }
        method.counter = ad.counter;
        Ok(SigninOk {
            method_id: method.id.clone(),
            sign_count: ad.counter,
        })
    }
}

pub fn routes() -> Router<Simulator> {
    Router::new()
        .route("/users", post(add_user))
        .route("/users/{id}", patch(update_user).delete(remove_user))
        .route("/faults", post(faults))
        .route("/tokens/expire", post(expire_tokens))
        .route("/delta/expire", post(expire_delta))
        .route("/policy", get(get_policy).put(put_policy))
        .route("/signin/challenge", get(signin_challenge))
        .route("/signin", post(signin))
        .route("/stats", get(stats))
}

fn ctl(sim: Simulator) -> SimControl {
    SimControl::new(sim)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewUser {
    user_principal_name: String,
    display_name: Option<String>,
}

async fn add_user(State(sim): State<Simulator>, Json(u): Json<NewUser>) -> Response {
    let id = ctl(sim).add_user(
        &u.user_principal_name,
        u.display_name.as_deref().unwrap_or(&u.user_principal_name),
    );
    (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserPatch {
    display_name: Option<String>,
    account_enabled: Option<bool>,
}

async fn update_user(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    Json(p): Json<UserPatch>,
) -> StatusCode {
    if ctl(sim).update_user(&id, p.display_name.as_deref(), p.account_enabled) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn remove_user(State(sim): State<Simulator>, Path(id): Path<String>) -> StatusCode {
    if ctl(sim).remove_user(&id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(Deserialize)]
struct FaultRequest {
    latency_ms: Option<u64>,
    forbid: Option<bool>,
    fault: Option<Fault>,
    #[serde(default = "one")]
    count: usize,
    attestation_enforced: Option<bool>,
}

fn one() -> usize {
    1
}

/// `POST /_sim/faults {"latency_ms":200, "forbid":true, "fault":{"kind":"throttle","retry_after":2}, "count":3, "attestation_enforced":true}`.
async fn faults(State(sim): State<Simulator>, Json(f): Json<FaultRequest>) -> StatusCode {
    let c = ctl(sim);
    if let Some(ms) = f.latency_ms {
        c.set_latency(Duration::from_millis(ms));
    }
    if let Some(b) = f.forbid {
        c.set_forbidden(b);
    }
    if let Some(fault) = f.fault {
        c.push_fault(fault, f.count);
    }
    if let Some(enforced) = f.attestation_enforced {
        let mut p = c.policy();
        p.is_attestation_enforced = enforced;
        c.set_policy(p);
    }
    StatusCode::NO_CONTENT
}

async fn expire_tokens(State(sim): State<Simulator>) -> StatusCode {
    ctl(sim).expire_tokens();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct ExpireDelta {
    code: Option<DeltaReset>,
}

async fn expire_delta(State(sim): State<Simulator>, body: Option<Json<ExpireDelta>>) -> StatusCode {
    let code = body
        .and_then(|b| b.0.code)
        .unwrap_or(DeltaReset::SyncStateNotFound);
    ctl(sim).expire_delta_tokens(code);
    StatusCode::NO_CONTENT
}

async fn get_policy(State(sim): State<Simulator>) -> Json<Fido2Policy> {
    Json(ctl(sim).policy())
}

async fn put_policy(State(sim): State<Simulator>, Json(p): Json<Fido2Policy>) -> StatusCode {
    ctl(sim).set_policy(p);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct ChallengeQuery {
    user: String,
}

async fn signin_challenge(
    State(sim): State<Simulator>,
    Query(q): Query<ChallengeQuery>,
) -> Response {
    let c = ctl(sim.clone());
    let Some(challenge) = c.signin_challenge(&q.user) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "userNotFound", "message": "No such user."}})),
        )
            .into_response();
    };
    let allow: Vec<String> = {
        let data = sim.data();
        data.find_user(&q.user)
            .and_then(|u| data.methods.get(&u.id))
            .map(|ms| {
                ms.iter()
                    .map(|m| URL_SAFE_NO_PAD.encode(&m.credential_id))
                    .collect()
            })
            .unwrap_or_default()
    };
    Json(json!({
        "challenge": URL_SAFE_NO_PAD.encode(challenge),
        "rpId": RP_ID,
        "allowCredentials": allow,
        "userVerification": "required",
    }))
    .into_response()
}

async fn signin(State(sim): State<Simulator>, Json(a): Json<SigninAssertion>) -> Response {
    match ctl(sim).verify_signin(&a) {
        Ok(ok) => {
            Json(json!({"result": "success", "methodId": ok.method_id, "signCount": ok.sign_count}))
                .into_response()
        }
        Err(reason) => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"code": "signInFailed", "message": reason}})),
        )
            .into_response(),
    }
}

async fn stats(State(sim): State<Simulator>) -> Json<serde_json::Value> {
    let data = sim.data();
    Json(json!({"requests": data.requests, "users": data.users.len(), "groups": data.groups.len()}))
}
