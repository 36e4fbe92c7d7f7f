//! Manual provisioning: a Temporary Access Pass the admin uses to sign in as the user and register
//! the user's Keyward key through the pairing tool. The pass is sealed by the vault at once; the
//! job item keeps only the sealed blob until an admin reveals it, once. Revealing it also starts
//! the delegated connection to the user's key on that admin's pairing tool when it is online
//! (`provisioning::api::reveal_tap`, through `relay::api::start_delegated_session`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use keyward_entra::TapRequest;
use keyward_store::{JobItemRecord, UserRecord};
use serde_json::json;

use super::{Run, outcome_of, unavailable};
use crate::jobs::ItemOutcome;

/// How long a pass lasts: long enough to connect the pairing tool and sign in, short enough to
/// be worthless soon after.
pub const TAP_LIFETIME_MINUTES: u32 = 60;

/// Step-by-step instructions shown with the pass.
pub fn instructions(upn: &str) -> Vec<String> {
    vec![
        "Run `keyward-pair run` on this PC. Revealing the pass connects it to this user's key; if it was not running then, press Connect on the user's page (POST /api/v1/users/{id}/connect).".into(),
        format!("In a private browser window, go to https://aka.ms/mysecurityinfo and sign in as {upn}."),
        "When asked for a password, choose 'Use a Temporary Access Pass' and enter the pass shown once here.".into(),
        "Choose 'Add sign-in method' → 'Passkey' (security key) → 'USB device', and confirm on the pairing tool.".into(),
        "Name the passkey 'Keyward', finish, and sign out. The pass expires on its own; Disconnect the pairing tool.".into(),
    ]
}

pub(super) async fn run(
    run: &Run,
    item: &JobItemRecord,
    user: &UserRecord,
    graph_user: &str,
) -> Result<ItemOutcome, ItemOutcome> {
    let req = TapRequest {
        start: None,
        lifetime_minutes: Some(TAP_LIFETIME_MINUTES),
        usable_once: Some(true),
    };
    let tap = run
        .graph
        .create_temporary_access_pass(graph_user, &req)
        .await
        .map_err(|e| outcome_of(&e))?;
    let context = JobItemRecord::tap_context(run.job.org_id, item.job_id, item.user_id);
    let sealed = run
        .deps
        .vault
        .seal_secret(&context, tap.pass.expose().as_bytes())
        .map_err(unavailable)?;
    let mut tx = run.deps.store.begin().await.map_err(unavailable)?;
    tx.append_audit(
        run.job.org_id,
        &run.job.created_by,
        "provisioning.tap_created",
        &format!("user:{}", user.id),
        json!({ "job_id": run.job.id, "tap_id": tap.id, "lifetime_minutes": tap.lifetime_minutes }),
    )
    .await
    .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    Ok(ItemOutcome::Done(Some(json!({
        "tap_id": tap.id,
        (keyward_store::JobItemRecord::TAP_SEALED_FIELD): STANDARD.encode(sealed),
        "tap_expires_in_minutes": tap.lifetime_minutes.unwrap_or(TAP_LIFETIME_MINUTES),
        "usable_once": tap.usable_once,
        "instructions": instructions(&user.upn),
        // The job runner has no pairing tool to talk to: the delegated connection starts for the
        // admin who reveals the pass (POST /jobs/{id}/items/{user_id}/tap), when their tool is
        // online; the reveal's answer and this item then carry its session id and expiry.
        "connect": "Revealing the pass connects your running keyward-pair to the user's key; otherwise press Connect on the user's page.",
    }))))
}
