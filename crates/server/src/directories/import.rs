//! The `import` job: pages users from Entra (all, or a group's members), creates or updates them by
//! object id, disables the ones Entra disabled or removed, and keeps the delta link so the next
//! import only reads changes.

use std::sync::{Arc, Mutex};

use keyward_entra::{DirectoryUser, UserSource};
use keyward_store::{ExternalUser, ImportCounts, JobItemRecord, JobRecord};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{DirectoryDeps, graph_client};
use crate::jobs::{BoxFut, ItemOutcome, JobKind, JobRun};

pub const IMPORT_KIND: &str = "import";

/// The import job kind. Job params: `{"directory_id": "<uuid>", "full": bool}`; `full` ignores the
/// stored delta link.
pub struct ImportKind {
    deps: DirectoryDeps,
}

impl ImportKind {
    pub fn new(deps: DirectoryDeps) -> Self {
        ImportKind { deps }
    }
}

struct Imported {
    tenant: String,
    summary: Mutex<Value>,
}

impl JobRun for Imported {
    fn bucket(&self) -> String {
        self.tenant.clone()
    }
    fn run_item<'a>(&'a self, _item: &'a JobItemRecord) -> BoxFut<'a, ItemOutcome> {
        // Imports have no per-user items.
        Box::pin(async {
            ItemOutcome::Failed {
                reason: "import jobs have no items".into(),
                request_id: None,
            }
        })
    }
    fn summary(&self) -> Option<Value> {
        Some(
            self.summary
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn to_external(u: &DirectoryUser) -> Option<ExternalUser> {
    let upn = u.user_principal_name.clone().filter(|s| !s.is_empty())?;
    Some(ExternalUser {
        external_id: u.id.clone(),
        upn,
        email: u.mail.clone().filter(|s| !s.is_empty()),
        display_name: u.display_name.clone().filter(|s| !s.is_empty()),
        enabled: u.account_enabled.unwrap_or(true),
    })
}

impl JobKind for ImportKind {
    fn kind(&self) -> &'static str {
        IMPORT_KIND
    }

    fn start<'a>(&'a self, job: &'a JobRecord) -> BoxFut<'a, Result<Arc<dyn JobRun>, String>> {
        Box::pin(async move {
            let store = &self.deps.store;
            let dir_id: Uuid = job
                .params
                .get("directory_id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or("the import job names no directory")?;
            let full_requested = job
                .params
                .get("full")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let unavailable = |e: keyward_store::StoreError| format!("database unavailable: {e}");
            let dir = store
                .directory(job.org_id, dir_id)
                .await
                .map_err(unavailable)?
                .ok_or("the directory no longer exists")?;
            let graph = graph_client(&self.deps.vault, &dir).map_err(|e| e.to_string())?;
            let source = match &dir.group_id {
                Some(g) => UserSource::Group {
                    group_id: g.clone(),
                },
                None if full_requested => UserSource::Delta { delta_link: None },
                None => UserSource::Delta {
                    delta_link: dir.delta_link.clone(),
                },
            };
            let mut pages = graph.users(source);
            let mut counts = ImportCounts::default();
            let mut full = false;
            let mut seen: i64 = 0;
            let mut removed_total: u64 = 0;
            let mut delta_link = None;
            while let Some(page) = pages.next_page().await {
                // A failed page fails the job; pages already written stay (they are upserts),
                // and the delta link is not advanced, so a retry reads them again.
                let page = page.map_err(|e| e.to_string())?;
                if page.full_round_starts {
                    full = true;
                }
                let users: Vec<ExternalUser> = page.users.iter().filter_map(to_external).collect();
                let nameless = page.users.len() - users.len();
                seen += i64::try_from(page.users.len()).unwrap_or(i64::MAX);
                let mut tx = store.begin().await.map_err(unavailable)?;
                let mut c = tx
                    .import_users(job.org_id, dir.id, job.id, &users)
                    .await
                    .map_err(unavailable)?;
                c.skipped += nameless as u64;
                if !page.removed.is_empty() {
                    let n = tx
                        .disable_directory_users(dir.id, &page.removed)
                        .await
                        .map_err(unavailable)?;
                    c.disabled += n;
                    removed_total += page.removed.len() as u64;
                }
                tx.commit().await.map_err(unavailable)?;
                counts.add(&c);
                let total = i32::try_from(seen).unwrap_or(i32::MAX);
                let failed = i32::try_from(counts.skipped).unwrap_or(i32::MAX);
                store
                    .set_job_progress(job.id, total, total.saturating_sub(failed), failed)
                    .await
                    .map_err(unavailable)?;
                if page.last {
                    delta_link = page.delta_link;
                }
            }
            let mut tx = store.begin().await.map_err(unavailable)?;
            if full {
                counts.disabled += tx
                    .disable_unseen_directory_users(dir.id, job.id)
                    .await
                    .map_err(unavailable)?;
            }
            tx.set_delta_link(dir.id, delta_link.as_deref())
                .await
                .map_err(unavailable)?;
            tx.append_audit(
                job.org_id,
                &job.created_by,
                "directory.imported",
                &format!("directory:{}", dir.id),
                json!({
                    "job_id": job.id, "full": full, "created": counts.created, "updated": counts.updated,
                    "disabled": counts.disabled, "skipped": counts.skipped,
                }),
            )
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            // Skipped users (no UPN, or a UPN held by a user of another directory) are reported
            // in the summary; they do not fail the job.
            store
                .set_job_progress(
                    job.id,
                    i32::try_from(seen).unwrap_or(i32::MAX),
                    i32::try_from(seen).unwrap_or(i32::MAX),
                    0,
                )
                .await
                .map_err(unavailable)?;
            tracing::info!(job_id = %job.id, directory_id = %dir.id, full, created = counts.created,
                updated = counts.updated, disabled = counts.disabled, "directory import finished");
            Ok(Arc::new(Imported {
                tenant: dir.tenant_id.clone(),
                summary: Mutex::new(json!({
                    "full": full,
                    "seen": seen,
                    "created": counts.created,
                    "updated": counts.updated,
                    "unchanged": counts.unchanged,
                    "disabled": counts.disabled,
                    "removed": removed_total,
                    "skipped": counts.skipped,
                    "incremental_next": delta_link.is_some(),
                })),
            }) as Arc<dyn JobRun>)
        })
    }
}
