//! Shared set-up for the job tests: an API context with a job runner (imports and provisioning)
//! over a Graph simulator, and helpers to drive jobs and prove passkeys sign in.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_graph_sim::RunningSim;
use keyward_graph_sim::SigninAssertion;
use keyward_server::auth::Role;
use keyward_server::directories::{DirectoryDeps, ImportKind};
use keyward_server::jobs::{JobRunner, RunnerConfig};
use keyward_server::keyops::KeyOps;
use keyward_server::provisioning::{ProvisionDeps, ProvisionKind, ctap};
use keyward_store::UserFilter;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::api_common::*;

pub struct Env {
    pub ctx: Ctx,
    pub org: Org,
    pub keyops: Arc<KeyOps>,
    pub dir: Uuid,
    runner: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.runner.abort();
    }
}

/// An environment on a fresh SQLite database.
pub async fn env(sim: &RunningSim, per_bucket: usize) -> Env {
    env_on(keyward_store::testing::sqlite().await, sim, per_bucket).await
}

/// An environment on the given test database (SQLite or PostgreSQL).
pub async fn env_on(
    db: keyward_store::testing::TestDb,
    sim: &RunningSim,
    per_bucket: usize,
) -> Env {
    let ctx = ctx(db).await;
    let org = org(&ctx, "Contoso").await;
    let keyops = Arc::new(KeyOps::new(
        ctx.state.store.clone(),
        ctx.state.vault.clone(),
        keyward_authenticator::Config::new(keyward_server::serve::KEYWARD_AAGUID),
    ));
    let cfg = RunnerConfig {
        poll: Duration::from_millis(50),
        per_bucket,
        backoff: Duration::from_millis(100),
        single_process: true,
        ..RunnerConfig::default()
    };
    let mut runner = JobRunner::new(ctx.state.store.clone(), cfg);
    let store = ctx.state.store.clone();
    let vault = ctx.state.vault.clone();
    runner.register(Arc::new(ImportKind::new(DirectoryDeps {
        store: store.clone(),
        vault: vault.clone(),
    })));
    runner.register(Arc::new(ProvisionKind::new(ProvisionDeps {
        store,
        vault,
        keyops: keyops.clone(),
        aaguid: keyward_server::serve::KEYWARD_AAGUID,
    })));
    let runner = Arc::new(runner).spawn(std::future::pending());
    let cfg = sim.control.simulator().config().clone();
    let body = json!({
        "name": "Contoso", "tenant_id": cfg.tenant_id, "client_id": cfg.client_id, "client_secret": cfg.client_secret,
        "authority_url": sim.url(), "graph_url": sim.url(),
    });
    let r = call(
        &ctx,
        Method::POST,
        "/api/v1/directories/entra",
        &org.tokens[&Role::Owner],
        Some(body),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let dir = r.json()["id"].as_str().expect("id").parse().expect("uuid");
    Env {
        ctx,
        org,
        keyops,
        dir,
        runner,
    }
}

impl Env {
    pub fn admin(&self) -> &str {
        &self.org.tokens[&Role::Admin]
    }

    pub async fn wait(&self, job: &str, secs: u64) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let r = call(
                &self.ctx,
                Method::GET,
                &format!("/api/v1/jobs/{job}?limit=10000"),
                self.admin(),
                None,
            )
            .await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            let j = r.json();
            if matches!(j["state"].as_str(), Some("done" | "failed" | "cancelled")) {
                return j;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job did not finish: {}",
                json!({
                "state": j["state"], "done": j["done"], "failed": j["failed"], "total": j["total"]})
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn import(&self) -> Value {
        let r = call(
            &self.ctx,
            Method::POST,
            &format!("/api/v1/directories/{}/import", self.dir),
            self.admin(),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        let job = r.json()["job_id"].as_str().expect("job").to_owned();
        self.wait(&job, 120).await
    }

    /// Users by UPN after an import.
    pub async fn user_id(&self, upn: &str) -> Uuid {
        self.ctx
            .state
            .store
            .user_by_upn(self.org.id, upn)
            .await
            .expect("user")
            .expect("imported")
            .id
    }

    pub async fn users(&self) -> Vec<keyward_store::UserRecord> {
        let f = UserFilter {
            limit: 100_000,
            ..Default::default()
        };
        self.ctx
            .state
            .store
            .list_users(self.org.id, &f)
            .await
            .expect("users")
    }

    /// Starts a provisioning job; returns the job id.
    pub async fn provision(&self, mode: &str, users: &[Uuid], assign: bool) -> String {
        let body = json!({"rp": "microsoft", "mode": mode, "user_ids": users, "assign_missing_keys": assign});
        let r = call(
            &self.ctx,
            Method::POST,
            "/api/v1/provisioning",
            self.admin(),
            Some(body),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::ACCEPTED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["job_id"].as_str().expect("job").to_owned()
    }

    /// Signs in at the simulator with the user's Keyward passkey; returns the method id.
    pub async fn sign_in(
        &self,
        sim: &RunningSim,
        user: &keyward_store::UserRecord,
    ) -> Result<String, String> {
        let creds = self
            .ctx
            .state
            .store
            .credentials_of_user(self.org.id, user.id)
            .await
            .expect("creds");
        let cred = creds
            .iter()
            .find(|c| c.rp_id == keyward_graph_sim::RP_ID)
            .ok_or("no credential")?;
        let challenge = sim
            .control
            .signin_challenge(&user.upn)
            .ok_or("no challenge")?;
        let cdj = format!(
            r#"{{"type":"webauthn.get","challenge":"{}","origin":"https://{}","crossOrigin":false}}"#,
            URL_SAFE_NO_PAD.encode(&challenge),
            keyward_graph_sim::RP_ID
        );
        let hash: [u8; 32] = Sha256::digest(cdj.as_bytes()).into();
        let key = user.key_id.ok_or("no key")?;
        // User verification by PIN, as the user's own pairing tool would do it.
        let policy = keyward_authenticator::Policy::default();
        let ops = &self.keyops;
        let k = |e: keyward_server::keyops::KeyOpsError| e.to_string();
        let pin = zeroize::Zeroizing::new("483920".to_owned());
        ops.set_pin(self.org.id, key, "test:user", &pin, false)
            .await
            .map_err(k)?;
        let ka = ops
            .ctap(
                self.org.id,
                key,
                "test:user",
                policy,
                pin::key_agreement_request(),
            )
            .await
            .map_err(k)?;
        let (ours, shared) = pin::agree(&ka);
        let tr = pin::token_request(
            ours,
            &shared,
            &pin,
            pin::PERMISSION_GA,
            keyward_graph_sim::RP_ID,
        );
        let token = pin::token(
            &ops.ctap(self.org.id, key, "test:user", policy, tr)
                .await
                .map_err(k)?,
            &shared,
        );
        let param = pin::authenticate(&token, &hash);
        let mut req =
            ctap::get_assertion_request(keyward_graph_sim::RP_ID, &hash, &cred.credential_id);
        let mut body = keyward_ctap::cbor::decode(&req[1..]).map_err(|e| format!("{e:?}"))?;
        if let keyward_ctap::cbor::Value::Map(m) = &mut body {
            m.push((
                keyward_ctap::cbor::Value::int(6),
                keyward_ctap::cbor::Value::bytes(param),
            ));
            m.push((
                keyward_ctap::cbor::Value::int(7),
                keyward_ctap::cbor::Value::int(2),
            ));
        }
        req.truncate(1);
        req.extend(keyward_ctap::cbor::encode(&body));
        let resp = ops
            .ctap(self.org.id, key, "test:signin", policy, req)
            .await
            .map_err(k)?;
        let ctap::Assertion {
            auth_data,
            signature: sig,
            user_handle: handle,
        } = ctap::parse_get_assertion(&resp).map_err(|e| e.to_string())?;
        let a = SigninAssertion {
            user: user.upn.clone(),
            id: URL_SAFE_NO_PAD.encode(&cred.credential_id),
            client_data_json: URL_SAFE_NO_PAD.encode(cdj.as_bytes()),
            authenticator_data: URL_SAFE_NO_PAD.encode(auth_data),
            signature: URL_SAFE_NO_PAD.encode(sig),
            user_handle: handle.map(|h| URL_SAFE_NO_PAD.encode(h)),
        };
        sim.control.verify_signin(&a).map(|ok| ok.method_id)
    }
}

/// The platform side of CTAP PIN/UV auth protocol 2, enough to get a pinUvAuthToken with the
/// getAssertion permission: Entra's sign-in requires UV, and a Keyward key verifies users by PIN.
pub use keyward_testkit::pin;
