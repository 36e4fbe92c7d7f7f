//! A pairing tool of organisation Alpha and a key of organisation Beta: the admin's API calls on
//! Beta's user answer 404 (as for a user that does not exist) and are audited; a relayed request
//! naming Beta's key is refused and audited in both organisations; the tool's own key keeps
//! working. SQLite, and PostgreSQL when configured.

mod api_common;
mod relay_common;

use axum::http::{Method, StatusCode};
use keyward_pair::protocol::ServerMessage;
use keyward_server::auth::Role;
use keyward_store::testing;
use relay_common::{admin_tool, audit, ctap, next_message, replica};
use std::time::Duration;
use uuid::Uuid;

const GET_INFO: u8 = 0x04;
const CTAP2_ERR_NOT_ALLOWED: u8 = 0x30;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tool_of_one_organisation_never_reaches_another_organisations_key() {
    for db in testing::all().await {
        let backend = db.backend();
        let ctx = api_common::ctx(db).await;
        let server = replica(&ctx.state, ctx.state.store.clone()).await;
        let alpha = api_common::org(&ctx, "Alpha").await;
        let beta = api_common::org(&ctx, "Beta").await;
        let (ua, ka) = api_common::user_with_key(&ctx, &alpha, "a@alpha.test").await;
        let (ub, kb) = api_common::user_with_key(&ctx, &beta, "b@beta.test").await;
        let token = alpha.tokens[&Role::Owner].clone();
        let mut tool = admin_tool(&server, &token, &server).await;

        // The API: Beta's user does not exist for Alpha's admin; the attempt is audited in Alpha.
        for method in [Method::POST, Method::DELETE] {
            let r = server
                .call(
                    method.clone(),
                    &format!("/api/v1/users/{ub}/connect"),
                    &token,
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{backend:?} {method}");
        }
        let refused = audit(&ctx.state.store, alpha.id, "relay.connect_refused").await;
        assert_eq!(refused.len(), 1, "{backend:?}: {refused:?}");
        assert_eq!(refused[0].detail["requested"], ub.to_string());
        assert!(
            ctx.state
                .store
                .open_delegated_sessions_of_user(beta.id, ub)
                .await
                .expect("db")
                .is_empty(),
            "nothing was started on Beta's key"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(200), tool.events.recv())
                .await
                .is_err(),
            "{backend:?}: nothing reached the tool"
        );

        // The relay: with Alpha's own user connected, a request naming Beta's key is refused.
        let r = server
            .call(
                Method::POST,
                &format!("/api/v1/users/{ua}/connect"),
                &token,
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
        assert!(
            matches!(m, ServerMessage::Attach { ref key_id, .. } if *key_id == ka.to_string()),
            "{m:?}"
        );
        let answer = ctap(&mut tool, 1, vec![GET_INFO], Some(kb.to_string())).await;
        assert_eq!(answer, vec![CTAP2_ERR_NOT_ALLOWED], "{backend:?}");
        for (org, target) in [
            (alpha.id, format!("device:{}", tool.device_id)),
            (beta.id, format!("key:{kb}")),
        ] {
            let entries = audit(&ctx.state.store, org, "relay.cross_org_refused").await;
            assert_eq!(entries.len(), 1, "{backend:?}: {entries:?}");
            assert_eq!(entries[0].target, target);
            assert_eq!(entries[0].detail["key_id"], kb.to_string());
        }
        // A key id that names nothing (or a stale one of its own organisation) is refused quietly.
        let answer = ctap(
            &mut tool,
            2,
            vec![GET_INFO],
            Some(Uuid::now_v7().to_string()),
        )
        .await;
        assert_eq!(answer, vec![CTAP2_ERR_NOT_ALLOWED]);
        assert_eq!(
            audit(&ctx.state.store, alpha.id, "relay.cross_org_refused")
                .await
                .len(),
            1
        );
        // The attached key still works.
        let answer = ctap(&mut tool, 3, vec![GET_INFO], Some(ka.to_string())).await;
        assert_eq!(answer[0], 0x00, "{backend:?}");
    }
}
