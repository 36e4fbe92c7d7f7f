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
        let tr = pin::token_request(ours, &shared, &pin, keyward_graph_sim::RP_ID);
        let token = pin::token(
            &ops.ctap(self.org.id, key, "test:user", policy, tr)
                .await
                .map_err(k)?,
            &shared,
        );
        let param = pin::Shared::authenticate(&token, &hash);
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
pub mod pin {
    use aws_lc_rs::agreement::{self, ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey};
    use aws_lc_rs::cipher::{
        AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
        UnboundCipherKey,
    };
    use aws_lc_rs::iv::FixedLength;
    use aws_lc_rs::{hkdf, hmac, rand};
    use keyward_ctap::cbor::{self, Value, int_map};
    use sha2::{Digest, Sha256};

    /// Protocol 2 derives an HMAC key too; a token request only needs the AES key.
    pub struct Shared {
        aes_key: Vec<u8>,
    }

    fn kdf(z: &[u8], info: &[u8]) -> Vec<u8> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[0u8; 32]).extract(z);
        let mut out = vec![0u8; 32];
        let infos = [info];
        prk.expand(&infos, hkdf::HKDF_SHA256)
            .and_then(|o| o.fill(&mut out))
            .expect("hkdf");
        out
    }

    impl Shared {
        pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
            let mut iv = [0u8; 16];
            rand::fill(&mut iv).expect("rng");
            let key =
                EncryptingKey::cbc(UnboundCipherKey::new(&AES_256, &self.aes_key).expect("key"))
                    .expect("cbc");
            let mut buf = plain.to_vec();
            key.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv)))
                .expect("encrypt");
            [iv.as_slice(), &buf].concat()
        }
        pub fn decrypt(&self, data: &[u8]) -> Vec<u8> {
            let (iv, body) = data.split_at(16);
            let key =
                DecryptingKey::cbc(UnboundCipherKey::new(&AES_256, &self.aes_key).expect("key"))
                    .expect("cbc");
            let mut buf = body.to_vec();
            let iv: [u8; 16] = iv.try_into().expect("iv");
            key.decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
                .expect("decrypt")
                .to_vec()
        }
        pub fn authenticate(key: &[u8], msg: &[u8]) -> Vec<u8> {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg)
                .as_ref()
                .to_vec()
        }
    }

    /// clientPIN getKeyAgreement request (protocol 2).
    pub fn key_agreement_request() -> Vec<u8> {
        let mut out = vec![0x06];
        out.extend(cbor::encode(&int_map(vec![
            (1, Value::int(2)),
            (2, Value::int(2)),
        ])));
        out
    }

    /// From the getKeyAgreement answer: our COSE key and the shared secret.
    pub fn agree(response: &[u8]) -> (Value, Shared) {
        assert_eq!(response[0], 0, "getKeyAgreement status");
        let v = cbor::decode(&response[1..]).expect("cbor");
        let cose = v.map_get_int(1).expect("key");
        let x = cose.map_get_int(-2).and_then(Value::as_bytes).expect("x");
        let y = cose.map_get_int(-3).and_then(Value::as_bytes).expect("y");
        let peer = [&[4u8][..], x, y].concat();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mine = EphemeralPrivateKey::generate(&ECDH_P256, &rng).expect("key");
        let public = mine.compute_public_key().expect("public");
        let p = public.as_ref();
        let shared =
            agreement::agree_ephemeral(mine, UnparsedPublicKey::new(&ECDH_P256, &peer), (), |z| {
                Ok(Shared {
                    aes_key: kdf(z, b"CTAP2 AES key"),
                })
            })
            .expect("ecdh");
        let ours = int_map(vec![
            (1, Value::int(2)),
            (3, Value::int(-25)),
            (-1, Value::int(1)),
            (-2, Value::bytes(p[1..33].to_vec())),
            (-3, Value::bytes(p[33..65].to_vec())),
        ]);
        (ours, shared)
    }

    /// getPinUvAuthTokenUsingPinWithPermissions for getAssertion on `rp_id`.
    pub fn token_request(ours: Value, shared: &Shared, pin: &str, rp_id: &str) -> Vec<u8> {
        let hash = Sha256::digest(pin.as_bytes());
        let mut out = vec![0x06];
        out.extend(cbor::encode(&int_map(vec![
            (1, Value::int(2)),
            (2, Value::int(9)),
            (3, ours),
            (6, Value::bytes(shared.encrypt(&hash[..16]))),
            (9, Value::int(0x02)),
            (10, Value::text(rp_id)),
        ])));
        out
    }

    /// The pinUvAuthToken from the answer.
    pub fn token(response: &[u8], shared: &Shared) -> Vec<u8> {
        assert_eq!(
            response[0], 0,
            "getPinUvAuthToken status 0x{:02x}",
            response[0]
        );
        let v = cbor::decode(&response[1..]).expect("cbor");
        shared.decrypt(v.map_get_int(2).and_then(Value::as_bytes).expect("token"))
    }
}
