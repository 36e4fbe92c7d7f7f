//! `keyward vault rotate`: a new key-encryption key version, and every data key re-wrapped under
//! it while servers keep running.
//!
//! Safe alongside running servers because each row is replaced with a compare-and-swap on its KEK
//! version (`Store::replace_wrapped_dek`): a key operation only ever *reads* the wrapped data key,
//! and the data key itself does not change, so an operation that unwrapped the old wrapping
//! before the swap still seals and verifies correctly. Servers on a key file or a PKCS#11 token
//! notice the new version by themselves (they re-read the file or the token when they meet an
//! unknown version or wrap a new key). Servers on `KEYWARD_VAULT_KEK` cannot: restart them with
//! `KEYWARD_VAULT_KEK_NEXT` set *before* rotating.
//!
//! Sealed organisation secrets (directory client secrets) carry their own wrapped data key; they
//! are re-wrapped the same way, in every organisation whether it has keys or not, each row
//! replaced only if its blob is still the one that was read (an admin re-saving the secret
//! meanwhile wins, and the row is picked up again on the next pass).
//!
//! Old KEK versions are retired (dropped from the key file, destroyed on the token) only with
//! `retire_old`, after every data key and every sealed secret is on the new version.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use keyward_store::{DirectoryRecord, Store};
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
    /// Sealed secrets (directory client secrets) re-wrapped by this run.
    pub rewrapped_secrets: usize,
    /// Sealed secrets still wrapped under an older KEK version after the run (they keep old
    /// versions alive).
    pub stale_secrets: usize,
}

/// How long to wait before the final scan, so a key created by a server that had not yet seen
/// the new version (it wraps under the old one) is caught by this run.
const GRACE: Duration = Duration::from_secs(2);
/// Passes over the table before giving up on rows that keep changing.
const MAX_PASSES: usize = 20;

/// Re-wraps every data key under a new KEK version; see the module documentation.
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
        rewrapped_secrets: 0,
        stale_secrets: 0,
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

    report.rewrapped_secrets = rewrap_directory_secrets(store, vault).await?;
    report.stale_secrets = stale_directory_secrets(store, new_version).await?;
    if retire_old {
        if report.stale_secrets > 0 {
            bail!(
                "{} directory client secrets are still wrapped under an older KEK version; run the rotation again, then retire",
                report.stale_secrets
            );
        }
        vault
            .finish_rotation()
            .context("retiring the old key-encryption key versions")?;
        report.retired = true;
    }
    Ok(report)
}

/// Re-wraps every directory client secret (in every organisation) not yet on the vault's current
/// version, with a
/// compare-and-swap per row, passing over the table until none is left or [`MAX_PASSES`].
/// Returns how many it re-wrapped.
async fn rewrap_directory_secrets(store: &Store, vault: &Vault) -> anyhow::Result<usize> {
    let mut rewrapped = 0;
    for _ in 0..MAX_PASSES {
        let rows = store
            .all_sealed_directory_secrets()
            .await
            .context("listing sealed directory secrets")?;
        let mut pending = 0usize;
        for (org_id, id, blob) in rows {
            let context = DirectoryRecord::secret_context(org_id, id);
            let Some(new_blob) = vault.rewrap_secret(&context, &blob).with_context(|| {
                format!("re-wrapping the client secret of directory {id} (organisation {org_id})")
            })?
            else {
                continue;
            };
            pending += 1;
            if store
                .replace_sealed_directory_secret(org_id, id, &blob, &new_blob)
                .await
                .context("storing a re-wrapped directory secret")?
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

/// Counts directory secrets (of every organisation) not yet on `version`.
async fn stale_directory_secrets(store: &Store, version: i32) -> anyhow::Result<usize> {
    let rows = store
        .all_sealed_directory_secrets()
        .await
        .context("listing sealed directory secrets")?;
    Ok(rows
        .iter()
        .filter(|(_, _, blob)| !matches!(Vault::secret_kek_version(blob), Ok(v) if v == version))
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
        "vault ({}) now on KEK version {}: {} data keys re-wrapped ({} retried), {} sealed secrets re-wrapped",
        vault.source_kind(),
        report.new_version,
        report.rewrapped,
        report.raced,
        report.rewrapped_secrets
    );
    if report.retired {
        println!("older KEK versions retired");
    } else {
        println!(
            "older KEK versions kept; run again with --retire-old once every server runs with the new version"
        );
    }
    if report.stale_secrets > 0 {
        println!(
            "{} directory client secrets still use an older version: run the rotation again before retiring",
            report.stale_secrets
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
    use super::*;
    use keyward_store::NewUser;
    use keyward_store::testing;
    use keyward_vault::{KekSource, Uuid};

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

    /// Directory client secrets are re-wrapped in every organisation, including one that has no
    /// security key at all, on SQLite and PostgreSQL; they still open to the same secret, the
    /// old KEK versions can then be retired, and a blob re-saved meanwhile is not overwritten.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotation_rewraps_directory_secrets_of_every_organisation() {
        for db in testing::all().await {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("vault.key");
            let server = Vault::open(KekSource::KeyFile(path.clone())).expect("server vault");
            // One organisation with keys, one with only a directory.
            let keys = key_rows(&db.store, &server, 2).await;
            let mut tx = db.store.begin().await.expect("begin");
            let lone = tx.insert_organisation("no-keys").await.expect("org");
            tx.commit().await.expect("commit");
            let mut dirs = Vec::new();
            for (org_id, secret) in [(keys[0].0, "secret-a"), (lone.id, "secret-b")] {
                let id = Uuid::now_v7();
                let sealed = server
                    .seal_secret(
                        &DirectoryRecord::secret_context(org_id, id),
                        secret.as_bytes(),
                    )
                    .expect("seal");
                let new = keyward_store::NewDirectory {
                    id,
                    name: format!("dir {secret}"),
                    tenant_id: "tenant".into(),
                    client_id: "client".into(),
                    sealed_client_secret: sealed,
                    authority_url: "https://login.microsoftonline.com".into(),
                    graph_url: "https://graph.microsoft.com".into(),
                    group_id: None,
                    consenting_upn: None,
                };
                let mut tx = db.store.begin().await.expect("begin");
                tx.insert_directory(org_id, &new).await.expect("directory");
                tx.commit().await.expect("commit");
                dirs.push((org_id, id, secret));
            }

            let rotator = Vault::open(KekSource::KeyFile(path.clone())).expect("rotator vault");
            let report = rotate(&db.store, &rotator, true).await.expect("rotate");
            assert_eq!(
                (
                    report.rewrapped,
                    report.rewrapped_secrets,
                    report.stale_secrets
                ),
                (2, 2, 0),
                "{:?}",
                db.backend()
            );
            assert!(
                report.retired,
                "every sealed value moved, so old versions retire"
            );
            for (org_id, id, secret) in &dirs {
                let rec = db
                    .store
                    .directory(*org_id, *id)
                    .await
                    .expect("read")
                    .expect("directory");
                assert_eq!(
                    Vault::secret_kek_version(&rec.sealed_client_secret).expect("blob"),
                    report.new_version
                );
                // The running server opens it under the new version (the old one is gone).
                let opened = server
                    .open_secret(
                        &DirectoryRecord::secret_context(*org_id, *id),
                        &rec.sealed_client_secret,
                    )
                    .expect("open after rotation");
                assert_eq!(&opened[..], secret.as_bytes());
            }

            // Compare-and-swap: a replacement based on a stale blob does not land.
            let (org_id, id, _) = dirs[1];
            let current = db
                .store
                .directory(org_id, id)
                .await
                .expect("read")
                .expect("directory")
                .sealed_client_secret;
            let swapped = db
                .store
                .replace_sealed_directory_secret(org_id, id, b"not the stored blob", b"x")
                .await
                .expect("cas");
            assert!(!swapped);
            let after = db
                .store
                .directory(org_id, id)
                .await
                .expect("read")
                .expect("directory")
                .sealed_client_secret;
            assert_eq!(after, current);
        }
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
