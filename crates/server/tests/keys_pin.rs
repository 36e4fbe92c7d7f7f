//! Admin one-time PINs (design.md "Flows" step 2): the `admin_one_time` PIN policy, one-time PINs
//! on assignment (one key and bulk), and `POST /keys/{id}/pin` for a forgotten or blocked PIN.
//!
//! Proves that the PIN is returned once and kept nowhere else (logs at every level, the audit
//! log, the database bytes), that the key demands a change before it verifies the user (CTAP
//! forcePINChange: getInfo reports it, a token request with the one-time PIN answers
//! CTAP2_ERR_PIN_POLICY_VIOLATION until changePIN), and that resetting a blocked PIN unblocks it
//! without touching the key's credentials. On SQLite and PostgreSQL.

mod api_common;
mod relay_common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use api_common::*;
use axum::http::{Method, StatusCode};
use keyward_authenticator::Policy;
use keyward_ctap::cbor::{self, Value, int_map, text_map};
use keyward_server::auth::Role;
use keyward_server::keyops::KeyOps;
use keyward_store::testing::TestDb;
use keyward_testkit::pin::{self, Shared, agree, change_pin_request, key_agreement_request};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const PIN_INVALID: u8 = 0x31;
const PIN_BLOCKED: u8 = 0x32;
const PIN_AUTH_INVALID: u8 = 0x33;
const PIN_AUTH_BLOCKED: u8 = 0x34;
const PIN_POLICY_VIOLATION: u8 = 0x37;
const RP_ID: &str = "example.org";

// ---- every log line of this test binary, at every level ----------------------------------------

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Installs one global TRACE subscriber writing into memory (global, so the SQLite group
/// committer's thread and the runtime's workers are captured too).
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let c = Captured::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(c.clone())
            .try_init()
            .expect("the only subscriber of this test binary");
        c
    })
}

fn logged() -> Vec<u8> {
    logs().0.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

// ---- the platform side of PIN/UV auth protocol 2 -----------------------------------------------

/// getPinUvAuthTokenUsingPinWithPermissions (makeCredential on [`RP_ID`]).
fn token_request(ours: Value, shared: &Shared, pin: &str) -> Vec<u8> {
    pin::token_request(ours, shared, pin, pin::PERMISSION_MC, RP_ID)
}

/// authenticatorMakeCredential for ES256, verified with a PIN/UV auth token (protocol 2).
fn make_credential_with_token(user_handle: &[u8], token: &[u8]) -> Vec<u8> {
    let client_data_hash = Sha256::digest(b"make").to_vec();
    let mut req = make_credential(user_handle);
    let mut params = cbor::decode(&req[1..]).expect("cbor");
    if let Value::Map(entries) = &mut params {
        entries.push((
            Value::int(8),
            Value::bytes(pin::authenticate(token, &client_data_hash)),
        ));
        entries.push((Value::int(9), Value::int(2)));
    }
    req.truncate(1);
    req.extend(cbor::encode(&params));
    req
}

/// authenticatorMakeCredential for ES256, without user verification.
fn make_credential(user_handle: &[u8]) -> Vec<u8> {
    let params = int_map(vec![
        (1, Value::bytes(Sha256::digest(b"make").to_vec())),
        (2, text_map(vec![("id", Value::text(RP_ID))])),
        (
            3,
            text_map(vec![
                ("id", Value::bytes(user_handle)),
                ("name", Value::text("pin@example.org")),
            ]),
        ),
        (
            4,
            Value::Array(vec![text_map(vec![
                ("alg", Value::int(-7)),
                ("type", Value::text("public-key")),
            ])]),
        ),
    ]);
    let mut req = vec![0x01];
    req.extend(cbor::encode(&params));
    req
}

// ---- the key as the user's own tool sees it, and as the API sees it ------------------------------

/// A test bench: the API app, plus a second `KeyOps` on the same database and vault that acts as
/// the user's own pairing tool (user mode: changePIN is allowed there, unlike the API's
/// registration-only CTAP endpoint).
struct Bench {
    ctx: Ctx,
    org: Org,
    user_ops: KeyOps,
}

const USER: Policy = Policy {
    registration_only: false,
    preauthorized_uv: false,
};

async fn bench(db: TestDb) -> Bench {
    logs();
    let ctx = ctx(db).await;
    let org = org(&ctx, "PinCo").await;
    let user_ops = KeyOps::new(
        ctx.state.store.clone(),
        ctx.state.vault.clone(),
        keyward_authenticator::Config::new(keyward_server::serve::KEYWARD_AAGUID),
    );
    Bench { ctx, org, user_ops }
}

impl Bench {
    fn token(&self, role: Role) -> &str {
        &self.org.tokens[&role]
    }

    async fn put_settings(&self, body: Json) -> Resp {
        call(
            &self.ctx,
            Method::PUT,
            "/api/v1/settings",
            self.token(Role::Owner),
            Some(body),
        )
        .await
    }

    async fn new_user(&self, upn: &str) -> Uuid {
        let r = call(
            &self.ctx,
            Method::POST,
            "/api/v1/users",
            self.token(Role::Owner),
            Some(json!({ "upn": upn })),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", body(&r));
        r.json()["id"].as_str().expect("id").parse().expect("uuid")
    }

    /// Assigns a key to a new user; returns the key id and the answer.
    async fn assign(&self, upn: &str) -> (Uuid, Resp) {
        let user = self.new_user(upn).await;
        let r = call(
            &self.ctx,
            Method::POST,
            &format!("/api/v1/users/{user}/key"),
            self.token(Role::Admin),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", body(&r));
        let key = r.json()["key_id"]
            .as_str()
            .expect("key")
            .parse()
            .expect("uuid");
        (key, r)
    }

    async fn set_pin(&self, key: Uuid, role: Role) -> Resp {
        call(
            &self.ctx,
            Method::POST,
            &format!("/api/v1/keys/{key}/pin"),
            self.token(role),
            None,
        )
        .await
    }

    async fn key(&self, key: Uuid) -> Json {
        call(
            &self.ctx,
            Method::GET,
            &format!("/api/v1/keys/{key}"),
            self.token(Role::Auditor),
            None,
        )
        .await
        .json()
    }

    /// One CTAP request through the API's CTAP endpoint (registration-only).
    async fn api_ctap(&self, key: Uuid, req: Vec<u8>) -> Vec<u8> {
        let r = send(
            &self.ctx.app,
            request(
                Method::POST,
                &format!("/api/v1/keys/{key}/ctap"),
                Some(self.token(Role::Admin)),
                Some("application/octet-stream"),
                req,
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", body(&r));
        r.body
    }

    /// One CTAP request from the user's own tool.
    async fn user_ctap(&self, key: Uuid, req: Vec<u8>) -> Vec<u8> {
        self.user_ops
            .ctap(self.org.id, key, "user:test", USER, req)
            .await
            .expect("key operation")
    }

    async fn force_pin_change_in_get_info(&self, key: Uuid) -> bool {
        let info = self.api_ctap(key, vec![0x04]).await;
        assert_eq!(info[0], 0, "getInfo status");
        let v = cbor::decode(&info[1..]).expect("getInfo CBOR");
        // 0x0C forcePINChange: absent means false.
        matches!(v.map_get_int(0x0C), Some(Value::Bool(true)))
    }

    /// The status of a token request with `pin`, through the API (clientPIN token requests are
    /// allowed in registration-only mode).
    async fn token_status(&self, key: Uuid, pin: &str) -> u8 {
        let (ours, shared) = agree(&self.api_ctap(key, key_agreement_request()).await);
        let r = self.api_ctap(key, token_request(ours, &shared, pin)).await;
        if r[0] == 0 {
            let v = cbor::decode(&r[1..]).expect("cbor");
            let token = shared.decrypt(v.map_get_int(2).and_then(Value::as_bytes).expect("token"));
            assert_eq!(token.len(), 32);
        }
        r[0]
    }

    async fn change_pin(&self, key: Uuid, old: &str, new: &str) -> u8 {
        let (ours, shared) = agree(&self.user_ctap(key, key_agreement_request()).await);
        self.user_ctap(key, change_pin_request(ours, &shared, old, new))
            .await[0]
    }

    async fn audit(&self, action: &str) -> Vec<Json> {
        let r = call(
            &self.ctx,
            Method::GET,
            &if action.is_empty() {
                "/api/v1/audit?limit=200".to_owned()
            } else {
                format!("/api/v1/audit?action={action}&limit=200")
            },
            self.token(Role::Owner),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", body(&r));
        r.json()["items"].as_array().cloned().unwrap_or_default()
    }
}

fn body(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn pin_of(r: &Resp) -> String {
    r.json()["one_time_pin"]
        .as_str()
        .unwrap_or_else(|| panic!("no one_time_pin in {}", body(r)))
        .to_owned()
}

fn no_store(r: &Resp) -> bool {
    r.headers
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("no-store"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---- the tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_policy_is_validated_and_audited() {
    for db in keyward_store::testing::all().await {
        let b = bench(db).await;
        let r = b
            .put_settings(json!({"pin_policy": "admin_one_time"}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", body(&r));
        assert_eq!(r.json()["pin_policy"], "admin_one_time");
        assert_eq!(r.json()["pin_policies"], json!(["user", "admin_one_time"]));
        let audit = b.audit("settings.update").await;
        assert_eq!(
            audit[0]["detail"]["changed"]["pin_policy"],
            json!({"from": "user", "to": "admin_one_time"})
        );
        assert!(audit[0]["actor"].as_str().unwrap_or("").contains("owner@"));

        for bad in ["admin", "", "ADMIN_ONE_TIME", "none"] {
            let r = b.put_settings(json!({"pin_policy": bad})).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
            assert!(body(&r).contains("admin_one_time"), "{}", body(&r));
        }
        // Only owners choose it.
        for role in [Role::Admin, Role::Helpdesk, Role::Auditor] {
            let r = call(
                &b.ctx,
                Method::PUT,
                "/api/v1/settings",
                b.token(role),
                Some(json!({"pin_policy": "user"})),
            )
            .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{role:?}");
        }
        let r = call(
            &b.ctx,
            Method::GET,
            "/api/v1/settings",
            b.token(Role::Owner),
            None,
        )
        .await;
        assert_eq!(r.json()["pin_policy"], "admin_one_time");
        assert_eq!(
            b.audit("settings.update").await.len(),
            1,
            "refusals write nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_a_key_gives_a_one_time_pin_only_under_the_admin_policy() {
    for db in keyward_store::testing::all().await {
        let b = bench(db).await;
        // The default policy: the user sets the PIN; no PIN in the answer, none on the key.
        let (key, r) = b.assign("plain@pinco.test").await;
        assert!(r.json().get("one_time_pin").is_none(), "{}", body(&r));
        let k = b.key(key).await;
        assert_eq!(k["pin_set"], false);
        assert_eq!(k["force_pin_change"], false);

        // admin_one_time: eight digits at the CTAP minimum length, set with forcePINChange.
        assert_eq!(
            b.put_settings(json!({"pin_policy": "admin_one_time"}))
                .await
                .status,
            StatusCode::OK
        );
        let (key, r) = b.assign("onetime@pinco.test").await;
        assert!(no_store(&r), "an answer with a PIN must not be cached");
        let pin = pin_of(&r);
        assert_eq!(pin.len(), 8, "{pin}");
        assert!(pin.bytes().all(|c| c.is_ascii_digit()), "{pin}");
        let k = b.key(key).await;
        assert_eq!(k["pin_set"], true);
        assert_eq!(k["force_pin_change"], true);
        assert_eq!(k["pin_retries"], 8);
        // The key's minimum PIN length sets the length when it is longer than eight.
        assert_eq!(
            b.put_settings(json!({"min_pin_length": 12})).await.status,
            StatusCode::OK
        );
        let (_, r) = b.assign("longer@pinco.test").await;
        assert_eq!(pin_of(&r).len(), 12);

        // Bulk: one PIN per assigned user, none for a failure.
        let u1 = b.new_user("bulk1@pinco.test").await;
        let u2 = b.new_user("bulk2@pinco.test").await;
        let r = call(
            &b.ctx,
            Method::POST,
            "/api/v1/keys/assign",
            b.token(Role::Admin),
            Some(json!({"user_ids": [u1, u2, Uuid::new_v4(), u1]})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", body(&r));
        assert!(no_store(&r));
        let items = r.json()["items"].as_array().cloned().expect("items");
        let p1 = items[0]["one_time_pin"].as_str().expect("pin 1").to_owned();
        let p2 = items[1]["one_time_pin"].as_str().expect("pin 2").to_owned();
        assert_eq!((p1.len(), p2.len()), (12, 12));
        assert_ne!(p1, p2, "each key gets its own PIN");
        for failed in &items[2..] {
            assert!(failed["error"].is_string(), "{failed}");
            assert!(failed.get("one_time_pin").is_none(), "{failed}");
        }

        // The audit log says who set a one-time PIN on whose key, and never the PIN.
        let set = b.audit("key.pin_set").await;
        assert_eq!(set.len(), 4, "{set:?}");
        for e in &set {
            assert!(e["actor"].as_str().unwrap_or("").contains("admin@"), "{e}");
            assert_eq!(e["detail"]["force_change"], true);
            assert_eq!(e["detail"]["one_time"], true);
            assert!(e["detail"]["user_id"].is_string());
        }
        let assigned = b.audit("key.assign").await;
        assert_eq!(assigned.len(), 5);
        let all_audit = serde_json::to_string(&b.audit("").await).expect("json");
        for p in [&pin, &p1, &p2] {
            assert!(!all_audit.contains(p.as_str()), "PIN in the audit log");
        }
        // Back to the user policy: no PIN again.
        assert_eq!(
            b.put_settings(json!({"pin_policy": "user"})).await.status,
            StatusCode::OK
        );
        let (_, r) = b.assign("after@pinco.test").await;
        assert!(r.json().get("one_time_pin").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_endpoint_serves_owner_admin_and_helpdesk_only() {
    for db in keyward_store::testing::all().await {
        let b = bench(db).await;
        let (key, _) = b.assign("roles@pinco.test").await;
        let mut pins = Vec::new();
        for role in [Role::Owner, Role::Admin, Role::Helpdesk] {
            let r = b.set_pin(key, role).await;
            assert_eq!(r.status, StatusCode::OK, "{role:?}: {}", body(&r));
            assert!(no_store(&r));
            let v = r.json();
            assert_eq!(v["key_id"], json!(key));
            assert_eq!(v["force_pin_change"], true);
            assert_eq!(v["pin_retries"], 8);
            pins.push(pin_of(&r));
        }
        pins.sort();
        pins.dedup();
        assert_eq!(pins.len(), 3, "every call sets a fresh PIN");
        let r = b.set_pin(key, Role::Auditor).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(b.audit("key.pin_set").await.len(), 3);
        let helpdesk = &b.audit("key.pin_set").await[0];
        assert!(
            helpdesk["actor"]
                .as_str()
                .unwrap_or("")
                .contains("helpdesk@")
        );
        assert_eq!(helpdesk["target"], format!("key:{key}"));

        // Another organisation's key, and no key at all: 404.
        let other = org(&b.ctx, "Elsewhere").await;
        let (_, other_key) = user_with_key(&b.ctx, &other, "x@elsewhere.test").await;
        assert_eq!(
            b.set_pin(other_key, Role::Owner).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            b.set_pin(Uuid::new_v4(), Role::Owner).await.status,
            StatusCode::NOT_FOUND
        );
        let theirs = call(
            &b.ctx,
            Method::GET,
            &format!("/api/v1/keys/{other_key}"),
            &other.tokens[&Role::Owner],
            None,
        )
        .await
        .json();
        assert_eq!(
            theirs["pin_set"], false,
            "the other organisation's key is untouched"
        );

        // A suspended key takes no PIN until it is resumed; a revoked key never again.
        let owner = b.token(Role::Owner);
        let path = |what: &str| format!("/api/v1/keys/{key}/{what}");
        assert_eq!(
            call(&b.ctx, Method::POST, &path("suspend"), owner, None)
                .await
                .status,
            StatusCode::OK
        );
        let r = b.set_pin(key, Role::Helpdesk).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert!(body(&r).contains("suspended"), "{}", body(&r));
        assert_eq!(
            call(&b.ctx, Method::POST, &path("resume"), owner, None)
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(b.set_pin(key, Role::Helpdesk).await.status, StatusCode::OK);
        assert_eq!(
            call(&b.ctx, Method::POST, &path("revoke"), owner, None)
                .await
                .status,
            StatusCode::OK
        );
        let r = b.set_pin(key, Role::Owner).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert!(body(&r).contains("revoked"), "{}", body(&r));
        assert!(r.content_type().starts_with("application/problem+json"));
        assert_eq!(
            b.audit("key.pin_set").await.len(),
            4,
            "refusals write nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_forces_a_change_of_the_one_time_pin() {
    for db in keyward_store::testing::all().await {
        let b = bench(db).await;
        assert_eq!(
            b.put_settings(json!({"pin_policy": "admin_one_time"}))
                .await
                .status,
            StatusCode::OK
        );
        let (key, r) = b.assign("force@pinco.test").await;
        let one_time = pin_of(&r);
        assert!(b.force_pin_change_in_get_info(key).await);
        // The one-time PIN is right, but the key will not verify the user with it.
        assert_eq!(b.token_status(key, &one_time).await, PIN_POLICY_VIOLATION);
        assert_eq!(b.token_status(key, &one_time).await, PIN_POLICY_VIOLATION);
        // A wrong PIN is still a wrong PIN (and costs a retry).
        assert_eq!(b.token_status(key, "99999999").await, PIN_INVALID);
        assert_eq!(b.key(key).await["pin_retries"], 7);
        // A forced change must change the PIN.
        assert_eq!(
            b.change_pin(key, &one_time, &one_time).await,
            PIN_POLICY_VIOLATION
        );
        assert_eq!(b.change_pin(key, &one_time, "my own pin 2026").await, 0);
        assert!(!b.force_pin_change_in_get_info(key).await);
        assert_eq!(b.token_status(key, "my own pin 2026").await, 0);
        assert_eq!(b.token_status(key, &one_time).await, PIN_INVALID);
        let k = b.key(key).await;
        assert_eq!(k["force_pin_change"], false);

        // The helpdesk path on a key whose PIN the user chose: forced again.
        let r = b.set_pin(key, Role::Helpdesk).await;
        let again = pin_of(&r);
        assert!(b.force_pin_change_in_get_info(key).await);
        assert_eq!(b.token_status(key, "my own pin 2026").await, PIN_INVALID);
        assert_eq!(b.token_status(key, &again).await, PIN_POLICY_VIOLATION);
        assert_eq!(b.change_pin(key, &again, "another pin 77").await, 0);
        assert_eq!(b.token_status(key, "another pin 77").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_pin_is_unblocked_and_the_credentials_stay() {
    for db in keyward_store::testing::all().await {
        let b = bench(db).await;
        let (key, _) = b.assign("blocked@pinco.test").await;
        // A credential made before the PIN is lost (automated provisioning needs no PIN).
        let automated = Policy {
            registration_only: false,
            preauthorized_uv: true,
        };
        let made = b
            .user_ops
            .ctap(
                b.org.id,
                key,
                "admin:test",
                automated,
                make_credential(b"u1"),
            )
            .await
            .expect("makeCredential");
        assert_eq!(made[0], 0, "makeCredential status {:02x}", made[0]);
        let first = pin_of(&b.set_pin(key, Role::Admin).await);
        assert_eq!(b.change_pin(key, &first, "users own pin").await, 0);

        // Three wrong PINs soft-block the key until it is power-cycled, which a remote caller
        // cannot do (design.md invariant 2).
        for _ in 0..2 {
            assert_eq!(b.token_status(key, "wrong pin").await, PIN_INVALID);
        }
        assert_eq!(b.token_status(key, "wrong pin").await, PIN_AUTH_BLOCKED);
        assert_eq!(b.token_status(key, "users own pin").await, PIN_AUTH_BLOCKED);
        // And a key whose retries are spent is blocked for good.
        let mut rec = b
            .ctx
            .state
            .store
            .key_by_id(b.org.id, key)
            .await
            .expect("db")
            .expect("key");
        rec.pin_retries = 0;
        b.ctx
            .state
            .store
            .update_key_pin_state(b.org.id, key, &rec)
            .await
            .expect("block");
        b.user_ops.power_cycle(key).await;
        assert_eq!(b.token_status(key, "users own pin").await, PIN_BLOCKED);
        assert_eq!(b.key(key).await["pin_retries"], 0);

        // The helpdesk sets a one-time PIN: retries are back, the key works again after the
        // forced change, and the credential is still there.
        let r = b.set_pin(key, Role::Helpdesk).await;
        assert_eq!(r.status, StatusCode::OK, "{}", body(&r));
        assert_eq!(r.json()["pin_retries"], 8);
        let pin = pin_of(&r);
        assert_eq!(b.token_status(key, &pin).await, PIN_POLICY_VIOLATION);
        assert_eq!(b.change_pin(key, &pin, "a fresh start").await, 0);
        assert_eq!(b.token_status(key, "a fresh start").await, 0);
        let user = b.key(key).await["user_id"]
            .as_str()
            .expect("user")
            .to_owned();
        let creds = call(
            &b.ctx,
            Method::GET,
            &format!("/api/v1/users/{user}/credentials"),
            b.token(Role::Auditor),
            None,
        )
        .await
        .json();
        assert_eq!(creds["items"].as_array().map(Vec::len), Some(1), "{creds}");
        assert_eq!(b.key(key).await["status"], "active");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_pins_are_in_no_log_audit_entry_or_database_byte() {
    for db in keyward_store::testing::all().await {
        let b = bench(db).await;
        // Twenty digits, so no PIN can turn up by chance in the database bytes.
        assert_eq!(
            b.put_settings(json!({"pin_policy": "admin_one_time", "min_pin_length": 20}))
                .await
                .status,
            StatusCode::OK
        );
        let (key, r) = b.assign("secret@pinco.test").await;
        let mut pins = vec![pin_of(&r)];
        let u = b.new_user("secret2@pinco.test").await;
        let r = call(
            &b.ctx,
            Method::POST,
            "/api/v1/keys/assign",
            b.token(Role::Owner),
            Some(json!({ "user_ids": [u] })),
        )
        .await;
        pins.push(
            r.json()["items"][0]["one_time_pin"]
                .as_str()
                .expect("pin")
                .to_owned(),
        );
        pins.push(pin_of(&b.set_pin(key, Role::Helpdesk).await));
        // Use the last one through CTAP too, so the engine's paths see it.
        assert_eq!(b.token_status(key, &pins[2]).await, PIN_POLICY_VIOLATION);
        for p in &pins {
            assert_eq!(p.len(), 20);
        }

        let audit = serde_json::to_vec(&b.audit("").await).expect("json");
        let logs = logged();
        let dump = b.ctx.db.bytes_on_disk();
        // Positive controls: the scans see what is there.
        assert!(
            contains(&logs, key.to_string().as_bytes()),
            "no logs captured"
        );
        assert!(contains(&dump, key.as_bytes()) || contains(&dump, key.to_string().as_bytes()));
        assert!(contains(&audit, b"key.pin_set"));
        for p in &pins {
            let hash16 = &Sha256::digest(p.as_bytes())[..16];
            for (what, bytes) in [("logs", &logs), ("audit", &audit), ("database", &dump)] {
                assert!(
                    !contains(bytes, p.as_bytes()),
                    "a one-time PIN in the {what}"
                );
                assert!(!contains(bytes, hash16), "a PIN hash in the {what}");
                assert!(
                    !contains(bytes, hex::encode(hash16).as_bytes()),
                    "a hex PIN hash in the {what}"
                );
            }
        }
    }
}

/// With several replicas on one PostgreSQL, a PIN token that one replica issued under the old PIN
/// stops working as soon as an admin sets a one-time PIN through another replica: the reset is a
/// power cycle of the key on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_set_through_one_replica_voids_the_tokens_of_the_others() {
    let Some(db) = keyward_store::testing::postgres().await else {
        return;
    };
    let url = db.url.clone();
    let ctx = ctx(db).await;
    // Replica A, keeping its engine: the user's own tool is served there (user mode).
    let store_a = keyward_store::Store::connect(&url).await.expect("A's pool");
    let on_a = Arc::new(KeyOps::new(
        store_a.clone(),
        ctx.state.vault.clone(),
        keyward_authenticator::Config::new(keyward_server::serve::KEYWARD_AAGUID),
    ));
    let mut state = ctx.state.clone();
    state.store = store_a.clone();
    state.relay = Some(keyward_server::relay::RelayHub::new(store_a, on_a.clone()));
    state.ctap = Some(on_a.clone());
    let _a = relay_common::serve(state).await;
    let b = relay_common::replica(
        &ctx.state,
        keyward_store::Store::connect(&url).await.expect("B's pool"),
    )
    .await;
    let org = org(&ctx, "Replicas").await;
    let owner = org.tokens[&Role::Owner].as_str();

    let r = b
        .call(
            Method::POST,
            "/api/v1/users",
            owner,
            Some(json!({"upn": "two@replicas.test"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", body(&r));
    let user = r.json()["id"].as_str().expect("id").to_owned();
    let r = b
        .call(
            Method::POST,
            &format!("/api/v1/users/{user}/key"),
            owner,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", body(&r));
    let key: Uuid = r.json()["key_id"]
        .as_str()
        .expect("key")
        .parse()
        .expect("uuid");
    let first = pin_of(
        &b.call(
            Method::POST,
            &format!("/api/v1/keys/{key}/pin"),
            owner,
            None,
        )
        .await,
    );

    // The user's tool, served by replica A: changes the one-time PIN and holds a token.
    let user_ctap = |req: Vec<u8>| {
        let on_a = on_a.clone();
        async move {
            on_a.ctap(org.id, key, "user:test", USER, req)
                .await
                .expect("key operation")
        }
    };
    let (ours, shared) = agree(&user_ctap(key_agreement_request()).await);
    let changed = user_ctap(change_pin_request(
        ours,
        &shared,
        &first,
        "the users own pin",
    ))
    .await;
    assert_eq!(changed[0], 0, "changePIN");
    let token = |pin: &'static str| {
        let user_ctap = &user_ctap;
        async move {
            let ka = user_ctap(key_agreement_request()).await;
            let (ours, shared) = agree(&ka);
            let r = user_ctap(token_request(ours, &shared, pin)).await;
            assert_eq!(r[0], 0, "token status {:02x}", r[0]);
            let v = cbor::decode(&r[1..]).expect("cbor");
            let token = shared.decrypt(v.map_get_int(2).and_then(Value::as_bytes).expect("token"));
            (ka, token)
        }
    };
    // A token works once (CTAP 2.1 clears its permissions after use) …
    let (_, used) = token("the users own pin").await;
    let made = user_ctap(make_credential_with_token(b"u1", &used)).await;
    assert_eq!(made[0], 0, "the token works on A: {:02x}", made[0]);
    // … so the one to outlive the reset is fresh.
    let (agreement, kept) = token("the users own pin").await;

    // The helpdesk sets a new one-time PIN through replica B.
    let r = b
        .call(
            Method::POST,
            &format!("/api/v1/keys/{key}/pin"),
            owner,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", body(&r));
    // A power cycle gives the key a new key-agreement key: wait until A's has changed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while user_ctap(key_agreement_request()).await == agreement {
        assert!(
            std::time::Instant::now() < deadline,
            "replica A never forgot the key's volatile state"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let status = user_ctap(make_credential_with_token(b"u2", &kept)).await[0];
    assert_eq!(
        status, PIN_AUTH_INVALID,
        "a token issued under the old PIN: {status:02x}"
    );
}
