//! `keyward vault rotate`: a new key-encryption key version, and every data key and every sealed
//! value re-wrapped under it while servers keep running.
//!
//! Safe alongside running servers because each row is replaced with a compare-and-swap on its KEK
//! version (`Store::replace_wrapped_dek`): a key operation only ever *reads* the wrapped data key,
//! and the data key itself does not change, so an operation that unwrapped the old wrapping
//! before the swap still seals and verifies correctly. Servers on a key file or a PKCS#11 token
//! notice the new version by themselves (they re-read the file or the token when they meet an
//! unknown version or wrap a new key). Servers on `KEYWARD_VAULT_KEK` cannot: restart them with
//! `KEYWARD_VAULT_KEK_NEXT` set *before* rotating.
//!
//! Values sealed with `Vault::seal_secret` carry their own wrapped data key: directory client
//! secrets, each organisation's attestation CA key and batch keys, and Temporary Access Passes
//! not yet revealed ([`SealedKind`] lists them; `keyward_store::rotation` finds them in every
//! organisation, whether it has keys or not). One routine re-wraps every kind the same way, each
//! value replaced only if the stored blob is still the one that was read: a value re-saved
//! meanwhile (an admin re-entering a secret, a pass revealed) wins, and is picked up again on the
//! next pass if it is still on an old version. The data sealed inside does not change, so a
//! server holding an opened value (a cached batch key) keeps working.
//!
//! Old KEK versions are retired (dropped from the key file, destroyed on the token) only with
//! `retire_old`, and only after every data key and every sealed value of every kind is on the new
//! version: otherwise the values left behind could never be opened again.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use keyward_store::{SealedKind, Store};
use keyward_vault::{KeyBinding, Vault};

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateReport {
    pub new_version: i32,
    /// Data keys re-wrapped by this run.
    pub rewrapped: usize,
    /// Rows whose version changed under us (another rotation, a re-created key); retried.
    pub raced: usize,
    /// Whether the old versions were retired.
    pub retired: bool,
    /// Per kind of sealed value (in [`SealedKind::ALL`] order), what this run did.
    pub sealed: Vec<SealedCount>,
}

/// One kind of sealed value in a [`RotateReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedCount {
    pub kind: SealedKind,
    /// Values re-wrapped by this run.
    pub rewrapped: usize,
    /// Values still wrapped under an older KEK version after the run (they keep old versions
    /// alive).
    pub stale: usize,
}

impl RotateReport {
    /// The counts of one kind of sealed value.
    pub fn sealed(&self, kind: SealedKind) -> SealedCount {
        self.sealed
            .iter()
            .copied()
            .find(|c| c.kind == kind)
            .unwrap_or(SealedCount {
                kind,
                rewrapped: 0,
                stale: 0,
            })
    }

    /// Sealed values of every kind re-wrapped by this run.
    pub fn rewrapped_sealed(&self) -> usize {
        self.sealed.iter().map(|c| c.rewrapped).sum()
    }

    /// Why the old versions may not be retired yet: every kind with values left behind, or
    /// `None` when nothing is.
    fn left_behind(&self) -> Option<String> {
        let stale: Vec<String> = self
            .sealed
            .iter()
            .filter(|c| c.stale > 0)
            .map(|c| format!("{} {}", c.stale, c.kind.name()))
            .collect();
        (!stale.is_empty()).then(|| stale.join(", "))
    }
}

/// How long to wait before the final scan, so a key created by a server that had not yet seen
/// the new version (it wraps under the old one) is caught by this run.
const GRACE: Duration = Duration::from_secs(2);
/// Passes over the table before giving up on rows that keep changing.
const MAX_PASSES: usize = 20;

/// Re-wraps every data key and sealed value under a new KEK version; see the module
/// documentation.
pub async fn rotate(
    store: &Store,
    vault: &Vault,
    retire_old: bool,
) -> anyhow::Result<RotateReport> {
    let new_version = vault
        .prepare_rotation()
        .context("creating the new key-encryption key version")?;
    let mut report = RotateReport {
        new_version,
        rewrapped: 0,
        raced: 0,
        retired: false,
        sealed: Vec::new(),
    };
    let mut waited = false;
    for _ in 0..MAX_PASSES {
        let rows = store
            .all_wrapped_deks()
            .await
            .context("listing wrapped data keys")?;
        let mut pending = 0usize;
        for (org_id, key_id, wrapped, version) in rows {
            if version == new_version {
                continue;
            }
            pending += 1;
            let binding = KeyBinding { org_id, key_id };
            let Some((rewrapped, v)) =
                vault.rewrap(&binding, &wrapped, version).with_context(|| {
                    format!("re-wrapping the data key of key {key_id} (organisation {org_id})")
                })?
            else {
                continue;
            };
            if store
                .replace_wrapped_dek(org_id, key_id, version, &rewrapped, v)
                .await
                .context("storing a re-wrapped data key")?
            {
                report.rewrapped += 1;
            } else {
                report.raced += 1;
            }
        }
        if pending == 0 {
            if waited {
                break;
            }
            tokio::time::sleep(GRACE).await;
            waited = true;
            continue;
        }
    }
    let left = store
        .all_wrapped_deks()
        .await
        .context("listing wrapped data keys")?
        .into_iter()
        .filter(|r| r.3 != new_version)
        .count();
    if left > 0 {
        bail!(
            "{left} data keys are still on older KEK versions after {MAX_PASSES} passes; run the rotation again"
        );
    }

    for kind in SealedKind::ALL {
        let rewrapped = rewrap_sealed(store, vault, kind).await?;
        let stale = stale_sealed(store, kind, new_version).await?;
        report.sealed.push(SealedCount {
            kind,
            rewrapped,
            stale,
        });
    }
    if retire_old {
        if let Some(left) = report.left_behind() {
            bail!(
                "not retiring the old KEK versions: {left} still wrapped under an older version (changed while rotating); run the rotation again, then retire"
            );
        }
        vault
            .finish_rotation()
            .context("retiring the old key-encryption key versions")?;
        report.retired = true;
    }
    Ok(report)
}

/// Re-wraps every sealed value of `kind` (in every organisation) not yet on the vault's current
/// version, with a compare-and-swap per row, passing over them until none is left or
/// [`MAX_PASSES`]. Returns how many it re-wrapped. A value that does not open (altered, or
/// moved to another row) stops the rotation: nothing is retired while it cannot be re-wrapped.
async fn rewrap_sealed(store: &Store, vault: &Vault, kind: SealedKind) -> anyhow::Result<usize> {
    let mut rewrapped = 0;
    for _ in 0..MAX_PASSES {
        let values = store
            .sealed_values(kind)
            .await
            .with_context(|| format!("listing sealed {}", kind.name()))?;
        let mut pending = 0usize;
        for value in values {
            let Some(new_blob) = vault
                .rewrap_secret(&value.context(), &value.blob)
                .with_context(|| format!("re-wrapping the {}", value.describe()))?
            else {
                continue;
            };
            pending += 1;
            if store
                .replace_sealed_value(&value, &new_blob)
                .await
                .with_context(|| format!("storing the re-wrapped {}", value.describe()))?
            {
                rewrapped += 1;
            }
        }
        if pending == 0 {
            break;
        }
    }
    Ok(rewrapped)
}

/// Counts the sealed values of `kind` (of every organisation) not yet on `version`.
async fn stale_sealed(store: &Store, kind: SealedKind, version: i32) -> anyhow::Result<usize> {
    let values = store
        .sealed_values(kind)
        .await
        .with_context(|| format!("listing sealed {}", kind.name()))?;
    Ok(values
        .iter()
        .filter(|v| !matches!(Vault::secret_kek_version(&v.blob), Ok(n) if n == version))
        .count())
}

/// The CLI entry point: opens the configured database and vault (the same configuration as
/// `keyward serve`), rotates, and prints what happened. No secret is printed.
pub fn run_rotate(config_file: Option<&Path>, retire_old: bool) -> anyhow::Result<()> {
    crate::serve::init_logging("text");
    let config = crate::serve::load_config(config_file)?;
    let vault = Vault::from_env_or_data_dir(&config.data_dir).context("opening the vault")?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = rt.block_on(async {
        let store = Store::connect(config.database_url.expose())
            .await
            .context("opening the database")?;
        let out = rotate(&store, &vault, retire_old).await;
        store.close().await;
        out
    })?;
    println!(
        "vault ({}) now on KEK version {}: {} data keys re-wrapped ({} retried), {} sealed values re-wrapped",
        vault.source_kind(),
        report.new_version,
        report.rewrapped,
        report.raced,
        report.rewrapped_sealed(),
    );
    for kind in SealedKind::ALL {
        println!(
            "  {}: {} re-wrapped",
            kind.name(),
            report.sealed(kind).rewrapped
        );
    }
    if report.retired {
        println!("older KEK versions retired");
    } else {
        println!(
            "older KEK versions kept; run again with --retire-old once every server runs with the new version"
        );
    }
    if let Some(left) = report.left_behind() {
        println!(
            "still on an older version (changed while rotating): {left}; run the rotation again before retiring"
        );
    }
    if vault.source_kind() == "environment" {
        println!(
            "environment KEK: set KEYWARD_VAULT_KEK to `{}:<new key>` and unset KEYWARD_VAULT_KEK_NEXT on every server",
            report.new_version
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use axum::http::{Method, Request, StatusCode};
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use keyward_store::{DirectoryRecord, JobItemRecord, NewUser, testing};
    use keyward_vault::{KekSource, Uuid};
    use tower::ServiceExt;

    use super::*;

    async fn key_rows(store: &Store, vault: &Vault, n: usize) -> Vec<(Uuid, Uuid)> {
        let mut tx = store.begin().await.expect("begin");
        let org = tx.insert_organisation("rotate-test").await.expect("org");
        let mut out = Vec::new();
        for i in 0..n {
            let user = NewUser {
                upn: format!("u{i}@example.com"),
                email: None,
                display_name: None,
                source: "api".into(),
                external_id: None,
            };
            let user = tx.insert_user(org.id, &user).await.expect("user");
            let key_id = Uuid::now_v7();
            let (wrapped_dek, kek_version) = vault
                .new_data_key(&KeyBinding {
                    org_id: org.id,
                    key_id,
                })
                .expect("dek");
            let key = keyward_store::NewSecurityKey {
                id: key_id,
                aaguid: vec![0; 16],
                wrapped_dek,
                kek_version,
                min_pin_length: 4,
                force_pin_change: false,
            };
            tx.insert_security_key(org.id, user.id, &key)
                .await
                .expect("key");
            out.push((org.id, key_id));
        }
        tx.commit().await.expect("commit");
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotation_rewraps_every_key_and_keeps_data_keys() {
        let db = testing::sqlite().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vault.key");
        let server = Vault::open(KekSource::KeyFile(path.clone())).expect("server vault");
        let keys = key_rows(&db.store, &server, 5).await;
        let before: Vec<[u8; 32]> = {
            let mut v = Vec::new();
            for (org_id, key_id) in &keys {
                let rec = db
                    .store
                    .key_by_id(*org_id, *key_id)
                    .await
                    .expect("read")
                    .expect("row");
                let dk = server
                    .unwrap(
                        &KeyBinding {
                            org_id: *org_id,
                            key_id: *key_id,
                        },
                        &rec.wrapped_dek,
                        rec.kek_version,
                    )
                    .expect("unwrap");
                v.push(dk.pin_verifier(&[7; 16]));
            }
            v
        };

        let rotator = Vault::open(KekSource::KeyFile(path.clone())).expect("rotator vault");
        let report = rotate(&db.store, &rotator, true).await.expect("rotate");
        assert_eq!(report.new_version, 2);
        assert_eq!(report.rewrapped, 5);
        assert!(report.retired);

        // Every row is on v2, and the still-running server opens them to the same data keys.
        for ((org_id, key_id), verifier) in keys.iter().zip(before) {
            let rec = db
                .store
                .key_by_id(*org_id, *key_id)
                .await
                .expect("read")
                .expect("row");
            assert_eq!(rec.kek_version, 2);
            let dk = server
                .unwrap(
                    &KeyBinding {
                        org_id: *org_id,
                        key_id: *key_id,
                    },
                    &rec.wrapped_dek,
                    2,
                )
                .expect("server unwraps v2");
            assert_eq!(
                dk.pin_verifier(&[7; 16]),
                verifier,
                "rotation changed a data key"
            );
        }
        // A second rotation starts from v2 and moves to v3.
        let again = rotate(&db.store, &rotator, false)
            .await
            .expect("rotate again");
        assert_eq!(
            (again.new_version, again.rewrapped, again.retired),
            (3, 5, false)
        );
    }

    /// A server's state and router on `store` with `vault`, as `keyward serve` builds them.
    fn server(store: &Store, vault: Arc<Vault>) -> axum::Router {
        let keyops = Arc::new(keyward_server::keyops::KeyOps::new(
            store.clone(),
            vault.clone(),
            keyward_authenticator::Config::new(keyward_server::serve::KEYWARD_AAGUID),
        ));
        keyward_server::serve::app(keyward_server::api::AppState {
            store: store.clone(),
            vault,
            metrics: Arc::new(keyward_server::metrics::Metrics::default()),
            login_limiter: Arc::new(keyward_server::auth::RateLimiter::new(
                10,
                Duration::from_secs(60),
            )),
            session_hours: 1,
            secure_cookies: false,
            aaguid: keyward_server::serve::KEYWARD_AAGUID,
            ctap: Some(keyops),
            relay: None,
            relying_party: None,
        })
    }

    /// Sends a request with the owner's token; returns the status and body.
    async fn call(
        app: &axum::Router,
        token: &str,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", content_type)
            .body(axum::body::Body::from(body))
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body")
            .to_vec();
        (status, body)
    }

    async fn call_json(
        app: &axum::Router,
        token: &str,
        method: Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let (status, body) = call(
            app,
            token,
            method,
            path,
            "application/json",
            serde_json::to_vec(&body).expect("json"),
        )
        .await;
        assert!(
            status.is_success(),
            "{path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).expect("json answer")
    }

    /// Runs makeCredential on a key through `POST /keys/{id}/ctap`; returns the attestation
    /// format and whether the statement carries a certificate.
    async fn make_credential(app: &axum::Router, token: &str, key: Uuid) -> (String, bool) {
        use keyward_ctap::cbor::{self, Value, int_map, text_map};
        let request = int_map(vec![
            (1, Value::bytes(vec![7; 32])),
            (2, text_map(vec![("id", Value::text("rotate.example"))])),
            (
                3,
                text_map(vec![
                    ("id", Value::bytes(vec![1, 2, 3])),
                    ("name", Value::text("someone")),
                    ("displayName", Value::text("Someone")),
                ]),
            ),
            (
                4,
                Value::Array(vec![text_map(vec![
                    ("alg", Value::int(-7)),
                    ("type", Value::text("public-key")),
                ])]),
            ),
            (7, text_map(vec![("rk", Value::Bool(true))])),
        ]);
        let mut bytes = vec![0x01];
        bytes.extend(cbor::encode(&request));
        let (status, body) = call(
            app,
            token,
            Method::POST,
            &format!("/api/v1/keys/{key}/ctap"),
            "application/octet-stream",
            bytes,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body[0], 0x00, "CTAP status {:#04x}", body[0]);
        let v = cbor::decode(&body[1..]).expect("cbor");
        let fmt = v
            .map_get_int(1)
            .and_then(Value::as_text)
            .expect("fmt")
            .to_owned();
        let x5c = v
            .map_get_int(3)
            .and_then(|s| s.map_get_text("x5c"))
            .is_some();
        (fmt, x5c)
    }

    /// Every sealed value, by context, opened with `vault`.
    async fn open_all(store: &Store, vault: &Vault) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for kind in SealedKind::ALL {
            for v in store.sealed_values(kind).await.expect("list") {
                let opened = vault
                    .open_secret(&v.context(), &v.blob)
                    .unwrap_or_else(|e| panic!("{}: {e}", v.describe()));
                out.insert(v.context(), opened.to_vec());
            }
        }
        out
    }

    /// An organisation without keys or settings, with a directory secret and a manual
    /// provisioning item holding a sealed pass (as `provisioning::manual` leaves it).
    async fn lone_org_with_secret_and_pass(store: &Store, vault: &Vault) -> (Uuid, Uuid, Uuid) {
        let mut tx = store.begin().await.expect("begin");
        let org = tx.insert_organisation("no-keys").await.expect("org");
        let user = NewUser {
            upn: "tap@example.com".into(),
            email: None,
            display_name: None,
            source: "api".into(),
            external_id: None,
        };
        let user = tx.insert_user(org.id, &user).await.expect("user");
        let job = tx
            .insert_job(
                org.id,
                "provision",
                &serde_json::json!({"rp": "microsoft", "mode": "manual"}),
                "admin:owner@example.com",
                &[user.id],
            )
            .await
            .expect("job");
        let id = Uuid::now_v7();
        let sealed = vault
            .seal_secret(&DirectoryRecord::secret_context(org.id, id), b"secret-b")
            .expect("seal");
        let new = keyward_store::NewDirectory {
            id,
            name: "dir b".into(),
            tenant_id: "tenant".into(),
            client_id: "client".into(),
            sealed_client_secret: sealed,
            authority_url: "https://login.microsoftonline.com".into(),
            graph_url: "https://graph.microsoft.com".into(),
            group_id: None,
            consenting_upn: None,
        };
        tx.insert_directory(org.id, &new).await.expect("directory");
        tx.commit().await.expect("commit");
        let tap = vault
            .seal_secret(
                &JobItemRecord::tap_context(org.id, job.id, user.id),
                b"TAP-pass-1234",
            )
            .expect("seal");
        let result = serde_json::json!({
            "tap_id": "tap-1",
            "tap_sealed": STANDARD.encode(tap),
            "usable_once": true,
        });
        store
            .set_item_result(job.id, user.id, Some(&result))
            .await
            .expect("result");
        (org.id, job.id, user.id)
    }

    /// Every kind of sealed value (directory client secrets, the attestation CA key and batch
    /// keys made by the real settings path, a sealed Temporary Access Pass), in every
    /// organisation, on SQLite and PostgreSQL: re-wrapped, the old KEK version retired, and then
    /// each opens to the same plaintext under a vault that has only the new version; a
    /// server-side makeCredential still attests with the re-wrapped batch key; and a value
    /// re-saved after it was listed is not overwritten by the stale listing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotation_rewraps_every_sealed_value_of_every_organisation() {
        for db in testing::all().await {
            let backend = db.backend();
            let store = &db.store;
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("vault.key");
            let vault = Arc::new(Vault::open(KekSource::KeyFile(path.clone())).expect("vault"));
            let app = server(store, vault.clone());

            // An organisation set up through the API: a user with a key, a directory, and packed
            // attestation (the CA key and a batch key, sealed by the server).
            let org = keyward_server::bootstrap::create_org(store, "Rotate")
                .await
                .expect("org");
            keyward_server::bootstrap::create_admin(
                store,
                "Rotate",
                "owner@rotate.test",
                keyward_server::auth::Role::Owner,
                "a long test password",
            )
            .await
            .expect("admin");
            let token = keyward_server::bootstrap::create_token(
                store,
                Some("Rotate"),
                "owner@rotate.test",
                "test",
            )
            .await
            .expect("token");
            let user = call_json(
                &app,
                &token,
                Method::POST,
                "/api/v1/users",
                serde_json::json!({"upn": "someone@rotate.test"}),
            )
            .await;
            let user_id = user["id"].as_str().expect("user id");
            let key = call_json(
                &app,
                &token,
                Method::POST,
                &format!("/api/v1/users/{user_id}/key"),
                serde_json::json!({}),
            )
            .await;
            let key_id: Uuid = key["key_id"]
                .as_str()
                .expect("key id")
                .parse()
                .expect("uuid");
            call_json(
                &app,
                &token,
                Method::POST,
                "/api/v1/directories/entra",
                serde_json::json!({"name": "dir a", "tenant_id": "tenant", "client_id": "client",
                                   "client_secret": "secret-a"}),
            )
            .await;
            call_json(
                &app,
                &token,
                Method::PUT,
                "/api/v1/settings",
                serde_json::json!({"attestation": "packed"}),
            )
            .await;
            assert_eq!(
                make_credential(&app, &token, key_id).await,
                ("packed".to_owned(), true)
            );
            let (lone_org, job_id, tap_user) = lone_org_with_secret_and_pass(store, &vault).await;

            let before = open_all(store, &vault).await;
            let expected = [
                (SealedKind::DirectorySecret, 2),
                (SealedKind::AttestationCaKey, 1),
                (SealedKind::AttestationBatchKey, 1),
                (SealedKind::TemporaryAccessPass, 1),
            ];
            assert_eq!(before.len(), 5, "{backend:?}: {:?}", before.keys());
            assert!(before.contains_key(&keyward_store::OrgSettingsRecord::ca_key_context(org.id)));
            let old_blob = store
                .sealed_values(SealedKind::AttestationBatchKey)
                .await
                .expect("list")
                .remove(0);

            let rotator = Vault::open(KekSource::KeyFile(path.clone())).expect("rotator vault");
            let report = rotate(store, &rotator, true).await.expect("rotate");
            assert_eq!(report.rewrapped, 1, "{backend:?}");
            for (kind, n) in expected {
                assert_eq!(
                    report.sealed(kind),
                    SealedCount {
                        kind,
                        rewrapped: n,
                        stale: 0
                    },
                    "{backend:?}"
                );
            }
            assert!(
                report.retired,
                "every sealed value moved, so old versions retire"
            );

            // A server started now has only the new version, and opens everything to the same
            // plaintext; a blob from before the rotation no longer opens.
            let fresh = Arc::new(Vault::open(KekSource::KeyFile(path.clone())).expect("fresh"));
            for kind in SealedKind::ALL {
                for v in store.sealed_values(kind).await.expect("list") {
                    assert_eq!(
                        Vault::secret_kek_version(&v.blob).expect("blob"),
                        report.new_version,
                        "{}",
                        v.describe()
                    );
                }
            }
            assert_eq!(open_all(store, &fresh).await, before, "{backend:?}");
            assert!(
                fresh
                    .open_secret(&old_blob.context(), &old_blob.blob)
                    .is_err(),
                "the old KEK version is gone"
            );
            let tap_ctx = JobItemRecord::tap_context(lone_org, job_id, tap_user);
            assert_eq!(before[&tap_ctx], b"TAP-pass-1234");
            // The item's other fields survive the re-wrap.
            let item = store
                .job_item(job_id, tap_user)
                .await
                .expect("item")
                .expect("row");
            let result = item.result.expect("result");
            assert_eq!(result["tap_id"], "tap-1");
            assert_eq!(result["usable_once"], true);

            // makeCredential with packed attestation on a server started after the retirement.
            let restarted = server(store, fresh.clone());
            assert_eq!(
                make_credential(&restarted, &token, key_id).await,
                ("packed".to_owned(), true),
                "{backend:?}"
            );

            // Compare-and-swap: a value re-saved after a rotation listed it keeps the new save.
            for kind in SealedKind::ALL {
                for listed in store.sealed_values(kind).await.expect("list") {
                    let resaved = fresh
                        .seal_secret(&listed.context(), b"re-saved")
                        .expect("seal");
                    assert!(
                        store
                            .replace_sealed_value(&listed, &resaved)
                            .await
                            .expect("save"),
                        "{}",
                        listed.describe()
                    );
                    assert!(
                        !store
                            .replace_sealed_value(&listed, b"stale")
                            .await
                            .expect("cas"),
                        "{backend:?}: stale replacement of {} landed",
                        listed.describe()
                    );
                }
            }
            for (context, plaintext) in open_all(store, &fresh).await {
                assert_eq!(plaintext, b"re-saved", "{context}");
            }
        }
    }

    /// A sealed value that does not open (here a pass copied to another job item) stops the
    /// rotation with a message naming it, and nothing is retired: every other value still opens
    /// with the old version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_value_that_does_not_open_stops_the_rotation_before_retiring() {
        let db = testing::sqlite().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vault.key");
        let server = Vault::open(KekSource::KeyFile(path.clone())).expect("vault");
        let (org_id, job_id, user_id) = lone_org_with_secret_and_pass(&db.store, &server).await;
        let moved = server
            .seal_secret(
                &JobItemRecord::tap_context(org_id, Uuid::now_v7(), user_id),
                b"elsewhere",
            )
            .expect("seal");
        db.store
            .set_item_result(
                job_id,
                user_id,
                Some(&serde_json::json!({"tap_sealed": STANDARD.encode(&moved)})),
            )
            .await
            .expect("result");
        let rotator = Vault::open(KekSource::KeyFile(path.clone())).expect("rotator");
        let err = rotate(&db.store, &rotator, true)
            .await
            .expect_err("cannot re-wrap");
        assert!(
            format!("{err:#}").contains(&format!("Temporary Access Pass of user {user_id}")),
            "{err:#}"
        );
        let fresh = Vault::open(KekSource::KeyFile(path)).expect("fresh");
        let dirs = db
            .store
            .sealed_values(SealedKind::DirectorySecret)
            .await
            .expect("list");
        assert_eq!(
            &fresh
                .open_secret(&dirs[0].context(), &dirs[0].blob)
                .expect("still opens")[..],
            b"secret-b"
        );
    }

    /// The refusal to retire names each kind left behind and how many.
    #[test]
    fn retiring_names_what_is_left_behind() {
        let mut report = RotateReport {
            new_version: 2,
            rewrapped: 0,
            raced: 0,
            retired: false,
            sealed: SealedKind::ALL
                .iter()
                .map(|&kind| SealedCount {
                    kind,
                    rewrapped: 1,
                    stale: 0,
                })
                .collect(),
        };
        assert_eq!(report.left_behind(), None);
        report.sealed[1].stale = 1;
        report.sealed[3].stale = 2;
        assert_eq!(
            report.left_behind().as_deref(),
            Some("1 attestation CA keys, 2 Temporary Access Passes")
        );
        assert_eq!(report.rewrapped_sealed(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn environment_rotation_without_next_is_refused() {
        let db = testing::sqlite().await;
        let vault = Vault::open(KekSource::Env {
            current: zeroize::Zeroizing::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
            next: None,
        })
        .expect("vault");
        key_rows(&db.store, &vault, 1).await;
        let err = rotate(&db.store, &vault, false)
            .await
            .expect_err("no NEXT key");
        assert!(
            format!("{err:#}").contains("KEYWARD_VAULT_KEK_NEXT"),
            "{err:#}"
        );
    }
}
