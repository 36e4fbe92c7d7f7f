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
//! Old KEK versions are retired (dropped from the key file, destroyed on the token) only with
//! `retire_old`, after every data key is on the new version and no directory client secret the
//! command can see still uses an old one.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use keyward_store::{DirectoryRecord, Store};
use keyward_vault::{KeyBinding, Uuid, Vault};

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
    /// Directory client secrets still wrapped under an older KEK version (they keep old
    /// versions alive; re-save the directory's secret to move it).
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
        stale_secrets: 0,
    };
    let mut orgs = BTreeSet::new();
    let mut waited = false;
    for _ in 0..MAX_PASSES {
        let rows = store
            .all_wrapped_deks()
            .await
            .context("listing wrapped data keys")?;
        let mut pending = 0usize;
        for (org_id, key_id, wrapped, version) in rows {
            orgs.insert(org_id);
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

    report.stale_secrets = stale_directory_secrets(store, &orgs, new_version).await?;
    if retire_old {
        if report.stale_secrets > 0 {
            bail!(
                "{} directory client secrets are still wrapped under an older KEK version; re-save them, then retire",
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

/// Counts directory secrets (of the organisations seen) not yet on `version`.
async fn stale_directory_secrets(
    store: &Store,
    orgs: &BTreeSet<Uuid>,
    version: i32,
) -> anyhow::Result<usize> {
    let mut stale = 0;
    for org in orgs {
        let dirs: Vec<DirectoryRecord> = store
            .directories(*org)
            .await
            .context("listing directories")?;
        for d in dirs {
            match Vault::secret_kek_version(&d.sealed_client_secret) {
                Ok(v) if v == version => {}
                _ => stale += 1,
            }
        }
    }
    Ok(stale)
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
        "vault ({}) now on KEK version {}: {} data keys re-wrapped ({} retried)",
        vault.source_kind(),
        report.new_version,
        report.rewrapped,
        report.raced
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
            "{} directory client secrets still use an older version: re-save them before retiring",
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
    use keyward_vault::KekSource;

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
