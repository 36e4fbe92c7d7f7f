//! Organisation settings (`GET`/`PUT /api/v1/settings`) and the users `source` filter, on SQLite
//! and PostgreSQL: who may read and change settings, that bad input changes nothing, that every
//! change is audited with its old and new values, and that new keys really get the settings
//! (AAGUID, minimum PIN length, packed or none attestation in makeCredential).

mod api_common;

use api_common::*;
use axum::http::{Method, StatusCode};
use keyward_ctap::cbor::{self, Value};
use keyward_entra::AuthenticatorRequest;
use keyward_server::auth::Role;
use serde_json::{Value as Json, json};
use uuid::Uuid;

const NEW_AAGUID: &str = "5b7f3c1e-2a4d-4e8f-9c61-0d2e3f4a5b6c";

fn default_aaguid() -> String {
    Uuid::from_bytes(keyward_server::serve::KEYWARD_AAGUID)
        .hyphenated()
        .to_string()
}

async fn settings(ctx: &Ctx, token: &str) -> Resp {
    call(ctx, Method::GET, "/api/v1/settings", token, None).await
}

async fn put(ctx: &Ctx, token: &str, body: Json) -> Resp {
    call(ctx, Method::PUT, "/api/v1/settings", token, Some(body)).await
}

async fn audit_of_settings(ctx: &Ctx, org: &Org) -> Vec<Json> {
    let r = call(
        ctx,
        Method::GET,
        "/api/v1/audit?action=settings.update",
        &org.tokens[&Role::Owner],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()["items"].as_array().cloned().unwrap_or_default()
}

/// Runs makeCredential on a key through `POST /keys/{id}/ctap` and returns (fmt, AAGUID of the
/// authData, attStmt).
async fn make_credential(ctx: &Ctx, org: &Org, key: Uuid, rp: &str) -> (String, Uuid, Value) {
    let req = AuthenticatorRequest {
        client_data_hash: [7; 32],
        rp_id: rp.into(),
        rp_name: None,
        user_id: vec![1, 2, 3, 4],
        user_name: "someone".into(),
        user_display_name: "Someone".into(),
        algorithms: vec![-7],
        exclude_list: vec![],
        resident_key: true,
        user_verification: false,
        cred_protect: 1,
        hmac_secret: false,
    };
    let bytes = keyward_server::provisioning::ctap::make_credential_request(&req);
    let r = send(
        &ctx.app,
        request(
            Method::POST,
            &format!("/api/v1/keys/{key}/ctap"),
            Some(&org.tokens[&Role::Owner]),
            Some("application/octet-stream"),
            bytes,
        ),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.body[0], 0x00, "CTAP status {:#04x}", r.body[0]);
    let v = cbor::decode(&r.body[1..]).expect("cbor");
    let fmt = v
        .map_get_int(1)
        .and_then(Value::as_text)
        .expect("fmt")
        .to_owned();
    let auth_data = v
        .map_get_int(2)
        .and_then(Value::as_bytes)
        .expect("authData");
    let aaguid = Uuid::from_slice(&auth_data[37..53]).expect("aaguid");
    (fmt, aaguid, v.map_get_int(3).expect("attStmt").clone())
}

#[tokio::test]
async fn owners_change_settings_and_new_keys_get_them() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let owner = &org.tokens[&Role::Owner];

        let r = settings(&ctx, owner).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["aaguid"], json!(default_aaguid()));
        assert_eq!(v["attestation"], json!("none"));
        assert_eq!(v["min_pin_length"], json!(4));
        assert_eq!(v["pin_policy"], json!("user"));
        assert_eq!(v["pin_policies"], json!(["user", "admin_one_time"]));
        assert_eq!(v["delegated_session_minutes"], json!(15));
        assert_eq!(v["attestation_ca_pem"], Json::Null);

        // A key made before the change keeps its AAGUID and, under packed, gets a batch
        // certificate of its own.
        let (_, old_key) = user_with_key(&ctx, &org, "before@a.test").await;

        let r = put(
            &ctx,
            owner,
            json!({"aaguid": NEW_AAGUID.to_uppercase(), "attestation": "packed",
                   "min_pin_length": 6, "delegated_session_minutes": 5}),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["aaguid"], json!(NEW_AAGUID));
        assert_eq!(v["attestation"], json!("packed"));
        assert_eq!(v["min_pin_length"], json!(6));
        assert_eq!(v["delegated_session_minutes"], json!(5));
        assert!(
            v["attestation_ca_pem"]
                .as_str()
                .is_some_and(|p| p.starts_with("-----BEGIN CERTIFICATE-----")),
            "{v}"
        );
        assert_eq!(
            v["updated_by"],
            json!(format!("admin:{}", org.emails[&Role::Owner]))
        );
        assert_eq!(settings(&ctx, owner).await.json(), v);

        // Audited with what changed, from and to; unchanged fields are not listed.
        let audit = audit_of_settings(&ctx, &org).await;
        assert_eq!(audit.len(), 1, "{audit:?}");
        let changed = &audit[0]["detail"]["changed"];
        assert_eq!(
            changed["aaguid"],
            json!({"from": default_aaguid(), "to": NEW_AAGUID})
        );
        assert_eq!(
            changed["attestation"],
            json!({"from": "none", "to": "packed"})
        );
        assert_eq!(changed["min_pin_length"], json!({"from": 4, "to": 6}));
        assert_eq!(
            changed["delegated_session_minutes"],
            json!({"from": 15, "to": 5})
        );
        assert!(changed.get("pin_policy").is_none(), "{changed}");

        // New keys: the new AAGUID and minimum PIN length; packed attestation naming the AAGUID.
        let (_, key) = user_with_key(&ctx, &org, "after@a.test").await;
        let k = call(
            &ctx,
            Method::GET,
            &format!("/api/v1/keys/{key}"),
            owner,
            None,
        )
        .await
        .json();
        assert_eq!(k["aaguid"], json!(NEW_AAGUID.replace('-', "")));
        let rec = ctx
            .state
            .store
            .key_by_id(org.id, key)
            .await
            .expect("key")
            .expect("row");
        assert_eq!(rec.min_pin_length, 6);
        let (fmt, aaguid, stmt) = make_credential(&ctx, &org, key, "one.example").await;
        assert_eq!(fmt, "packed");
        assert_eq!(aaguid.hyphenated().to_string(), NEW_AAGUID);
        let x5c = stmt
            .map_get_text("x5c")
            .and_then(Value::as_array)
            .expect("x5c");
        assert_eq!(x5c.len(), 1);
        let cert = x5c[0].as_bytes().expect("certificate");
        let needle = Uuid::parse_str(NEW_AAGUID).expect("uuid");
        assert!(
            cert.windows(16).any(|w| w == needle.as_bytes()),
            "the batch certificate names the key's AAGUID"
        );

        // The key made before: old AAGUID, and a packed statement whose certificate names it.
        let (fmt, aaguid, stmt) = make_credential(&ctx, &org, old_key, "one.example").await;
        assert_eq!(fmt, "packed");
        assert_eq!(aaguid.hyphenated().to_string(), default_aaguid());
        let cert = stmt
            .map_get_text("x5c")
            .and_then(Value::as_array)
            .expect("x5c")[0]
            .as_bytes()
            .expect("certificate")
            .to_vec();
        assert!(
            cert.windows(16)
                .any(|w| w == keyward_server::serve::KEYWARD_AAGUID)
        );

        // Back to none: the same (cached) key now attests none.
        let r = put(&ctx, owner, json!({"attestation": "none"})).await;
        assert_eq!(r.status, StatusCode::OK);
        let (fmt, _, stmt) = make_credential(&ctx, &org, key, "two.example").await;
        assert_eq!(fmt, "none");
        assert_eq!(stmt, Value::Map(vec![]));
        assert_eq!(audit_of_settings(&ctx, &org).await.len(), 2);

        // Another organisation is untouched.
        let other = org_named(&ctx, "B").await;
        let v = settings(&ctx, &other.tokens[&Role::Owner]).await.json();
        assert_eq!(v["aaguid"], json!(default_aaguid()));
        assert_eq!(v["attestation"], json!("none"));
    }
}

async fn org_named(ctx: &Ctx, name: &str) -> Org {
    org(ctx, name).await
}

#[tokio::test]
async fn only_owners_change_settings_and_helpdesk_cannot_read_them() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        for role in [Role::Owner, Role::Admin, Role::Auditor] {
            assert_eq!(
                settings(&ctx, &org.tokens[&role]).await.status,
                StatusCode::OK
            );
        }
        assert_eq!(
            settings(&ctx, &org.tokens[&Role::Helpdesk]).await.status,
            StatusCode::FORBIDDEN
        );
        for role in [Role::Admin, Role::Helpdesk, Role::Auditor] {
            let r = put(
                &ctx,
                &org.tokens[&role],
                json!({"delegated_session_minutes": 1}),
            )
            .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{role:?}");
        }
        let v = settings(&ctx, &org.tokens[&Role::Owner]).await.json();
        assert_eq!(v["delegated_session_minutes"], json!(15));
        assert!(audit_of_settings(&ctx, &org).await.is_empty());
    }
}

#[tokio::test]
async fn bad_settings_are_refused_with_a_reason_and_change_nothing() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let owner = &org.tokens[&Role::Owner];
        let r = put(&ctx, owner, json!({"delegated_session_minutes": 10})).await;
        assert_eq!(r.status, StatusCode::OK);
        let before = settings(&ctx, owner).await.json();
        let cases = [
            (json!({"aaguid": "not-a-uuid"}), "aaguid"),
            (json!({"aaguid": "0011223344556677"}), "aaguid"),
            (
                json!({"aaguid": "00000000-0000-0000-0000-000000000000"}),
                "aaguid",
            ),
            (json!({"attestation": "tpm"}), "attestation"),
            (json!({"min_pin_length": 3}), "min_pin_length"),
            (json!({"min_pin_length": 64}), "min_pin_length"),
            (
                json!({"delegated_session_minutes": 0}),
                "delegated_session_minutes",
            ),
            (
                json!({"delegated_session_minutes": 16}),
                "delegated_session_minutes",
            ),
            (json!({"pin_policy": "admin"}), "pin_policy"),
            // A valid field next to an invalid one: nothing of the request is applied.
            (
                json!({"delegated_session_minutes": 3, "min_pin_length": 2}),
                "min_pin_length",
            ),
            (json!({"colour": "blue"}), "unknown field"),
            (json!({"min_pin_length": "six"}), "min_pin_length"),
        ];
        for (body, mentions) in cases {
            let r = put(&ctx, owner, body.clone()).await;
            assert!(
                r.status == StatusCode::UNPROCESSABLE_ENTITY || r.status == StatusCode::BAD_REQUEST,
                "{body} -> {}",
                r.status
            );
            assert!(r.content_type().starts_with("application/problem+json"));
            let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
            assert!(detail.contains(mentions), "{body}: {detail}");
        }
        let r = send(
            &ctx.app,
            request(
                Method::PUT,
                "/api/v1/settings",
                Some(owner),
                Some("text/plain"),
                b"min_pin_length=8".to_vec(),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(settings(&ctx, owner).await.json(), before);
        assert_eq!(audit_of_settings(&ctx, &org).await.len(), 1);
    }
}

#[tokio::test]
async fn users_filter_by_source() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let owner = &org.tokens[&Role::Owner];
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/users",
            owner,
            Some(json!({"upn": "api-user@a.test"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let r = send(
            &ctx.app,
            request(
                Method::POST,
                "/api/v1/users/import-csv",
                Some(owner),
                Some("text/csv"),
                b"upn\ncsv-one@a.test\ncsv-two@a.test\n".to_vec(),
            ),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let upns = |v: Json| -> Vec<String> {
            v["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|u| u["upn"].as_str().expect("upn").to_owned())
                .collect()
        };
        let r = call(&ctx, Method::GET, "/api/v1/users?source=csv", owner, None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(upns(r.json()), ["csv-one@a.test", "csv-two@a.test"]);
        let r = call(&ctx, Method::GET, "/api/v1/users?source=api", owner, None).await;
        assert_eq!(upns(r.json()), ["api-user@a.test"]);
        let r = call(&ctx, Method::GET, "/api/v1/users?source=entra", owner, None).await;
        assert!(upns(r.json()).is_empty());
        // Combined with search and paging.
        let r = call(
            &ctx,
            Method::GET,
            "/api/v1/users?source=csv&q=two",
            owner,
            None,
        )
        .await;
        assert_eq!(upns(r.json()), ["csv-two@a.test"]);
        let r = call(
            &ctx,
            Method::GET,
            "/api/v1/users?source=csv&limit=1",
            owner,
            None,
        )
        .await;
        let page = r.json();
        assert_eq!(upns(page.clone()), ["csv-one@a.test"]);
        let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
        let r = call(
            &ctx,
            Method::GET,
            &format!("/api/v1/users?source=csv&limit=1&cursor={cursor}"),
            owner,
            None,
        )
        .await;
        assert_eq!(upns(r.json()), ["csv-two@a.test"]);
        let r = call(&ctx, Method::GET, "/api/v1/users?source=ldap", owner, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(
            r.json()["detail"]
                .as_str()
                .is_some_and(|d| d.contains("source"))
        );
    }
}

#[test]
fn the_openapi_document_lists_settings_and_the_source_filter() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(keyward_server::api::ApiDoc::openapi()).expect("json");
    let settings = &doc["paths"]["/api/v1/settings"];
    assert!(
        settings["get"].is_object() && settings["put"].is_object(),
        "{settings}"
    );
    let params = doc["paths"]["/api/v1/users"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    assert!(params.iter().any(|p| p["name"] == "source"));
}

/// Keys that provisioning assigns on its own (`assign_missing_keys`, through `KeyOps::create_key`)
/// get the organisation's settings too, not the server's defaults.
#[tokio::test]
async fn keys_created_by_key_operations_follow_the_settings() {
    for db in keyward_store::testing::all().await {
        let ctx = ctx(db).await;
        let org = org(&ctx, "A").await;
        let owner = &org.tokens[&Role::Owner];
        let r = put(
            &ctx,
            owner,
            json!({"aaguid": NEW_AAGUID, "min_pin_length": 8}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let r = call(
            &ctx,
            Method::POST,
            "/api/v1/users",
            owner,
            Some(json!({"upn": "job@a.test"})),
        )
        .await;
        let user: Uuid = r.json()["id"].as_str().expect("id").parse().expect("uuid");
        let keyops = keyward_server::keyops::KeyOps::new(
            ctx.state.store.clone(),
            ctx.state.vault.clone(),
            keyward_authenticator::Config::new(keyward_server::serve::KEYWARD_AAGUID),
        );
        let key = keyops
            .create_key(org.id, user, "job:test")
            .await
            .expect("key");
        assert_eq!(
            Uuid::from_slice(&key.aaguid)
                .expect("aaguid")
                .hyphenated()
                .to_string(),
            NEW_AAGUID
        );
        assert_eq!(key.min_pin_length, 8);
    }
}
