//! Manual provisioning starts the delegated connection (design flow 4): revealing a manual job's
//! Temporary Access Pass connects the revealing admin's online pairing tool to the user's key,
//! and the answer and the job item carry the session id and expiry. With the tool offline the
//! answer says so plainly, and Connect on the user's page works later.

mod api_common;
mod jobs_common;
mod relay_common;

use std::time::Duration;

use api_common::call;
use axum::http::{Method, StatusCode};
use jobs_common::env;
use keyward_graph_sim::SimConfig;
use keyward_pair::protocol::ServerMessage;
use keyward_store::SealedKind;
use relay_common::{admin_tool, next_message, serve};
use serde_json::Value;
use uuid::Uuid;

async fn manual_job_for(env: &jobs_common::Env, user: Uuid) -> String {
    let r = call(
        &env.ctx,
        Method::POST,
        &format!("/api/v1/users/{user}/key"),
        &env.org.tokens[&keyward_server::auth::Role::Owner],
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let job = env.provision("manual", &[user], false).await;
    assert_eq!(env.wait(&job, 60).await["state"], "done");
    job
}

async fn reveal(env: &jobs_common::Env, job: &str, user: Uuid) -> Value {
    let r = call(
        &env.ctx,
        Method::POST,
        &format!("/api/v1/jobs/{job}/items/{user}/tap"),
        env.admin(),
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

async fn item_result(env: &jobs_common::Env, job: &str) -> Value {
    let r = call(
        &env.ctx,
        Method::GET,
        &format!("/api/v1/jobs/{job}"),
        env.admin(),
        None,
    )
    .await;
    r.json()["items"][0]["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revealing_the_pass_connects_the_admins_tool_or_says_it_is_offline() {
    let sim = keyward_graph_sim::spawn(SimConfig {
        users: 4,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let env = env(&sim, 4).await;
    env.import().await;
    let consenting = sim.control.simulator().config().consenting_admin.clone();
    let users: Vec<Uuid> = env
        .users()
        .await
        .into_iter()
        .filter(|u| u.upn != consenting)
        .map(|u| u.id)
        .take(2)
        .collect();
    let server = serve(env.ctx.state.clone()).await;

    // Offline: the pass is shown, the connection is not started, and the answer says why.
    let job = manual_job_for(&env, users[0]).await;
    // The pass waits sealed on the item, where `keyward vault rotate` finds it …
    let sealed_passes = || async {
        env.ctx
            .state
            .store
            .sealed_values(SealedKind::TemporaryAccessPass)
            .await
            .expect("sealed passes")
            .len()
    };
    assert_eq!(
        sealed_passes().await,
        1,
        "the sealed pass is found for rotation"
    );
    let revealed = reveal(&env, &job, users[0]).await;
    // … until it is revealed, which removes it.
    assert_eq!(sealed_passes().await, 0);
    assert!(
        revealed["temporary_access_pass"]
            .as_str()
            .is_some_and(|p| !p.is_empty())
    );
    let c = &revealed["connection"];
    assert_eq!(c["status"], "tool_offline", "{revealed}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap_or("")
            .contains("keyward-pair run"),
        "{c}"
    );
    assert!(c.get("session_id").is_none());
    assert_eq!(
        item_result(&env, &job).await["connection"]["status"],
        "tool_offline"
    );
    // Connect on the user's page works once the tool runs.
    let mut tool = admin_tool(&server, env.admin(), &server).await;
    let r = call(
        &env.ctx,
        Method::POST,
        &format!("/api/v1/users/{}/connect", users[0]),
        env.admin(),
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let (m, _) = next_message(&mut tool, Duration::from_secs(1)).await;
    assert!(matches!(m, ServerMessage::Attach { .. }), "{m:?}");

    // Online: revealing connects the tool to the user's key at once.
    let job = manual_job_for(&env, users[1]).await;
    let revealed = reveal(&env, &job, users[1]).await;
    let c = &revealed["connection"];
    assert_eq!(c["status"], "connected", "{revealed}");
    let session: Uuid = c["session_id"]
        .as_str()
        .expect("session id")
        .parse()
        .expect("uuid");
    assert!(c["expires_at"].as_str().is_some(), "{c}");
    let (m, took) = next_message(&mut tool, Duration::from_secs(1)).await;
    // The previous session on this tool is replaced first (one key at a time per tool).
    let m = match m {
        ServerMessage::Detach { .. } => next_message(&mut tool, Duration::from_secs(1)).await.0,
        other => other,
    };
    let ServerMessage::Attach {
        session_id, key_id, ..
    } = m
    else {
        panic!("expected attach, got {m:?}")
    };
    assert_eq!(session_id, session.to_string());
    let key = env
        .ctx
        .state
        .store
        .key_for_user(env.org.id, users[1])
        .await
        .expect("db")
        .expect("key");
    assert_eq!(key_id, key.id.to_string());
    eprintln!("the key reached the tool {took:?} after the reveal answered");
    let stored = item_result(&env, &job).await;
    assert_eq!(
        stored["connection"]["session_id"],
        session.to_string(),
        "{stored}"
    );
    assert_eq!(stored["connection"]["expires_at"], c["expires_at"]);
    let open = env
        .ctx
        .state
        .store
        .open_delegated_sessions_of_user(env.org.id, users[1])
        .await
        .expect("db");
    assert_eq!(open.iter().map(|s| s.id).collect::<Vec<_>>(), vec![session]);
    assert!(
        !stored
            .to_string()
            .contains(revealed["temporary_access_pass"].as_str().expect("pass"))
    );
}
