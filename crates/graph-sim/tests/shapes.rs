//! The simulator answers in Graph's and Entra's shapes (raw HTTP, no Keyward client involved).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use keyward_graph_sim::{Fault, RunningSim, SimConfig, spawn};
use serde_json::Value;

async fn sim_and_token(users: usize) -> (RunningSim, reqwest::Client, String) {
    let sim = spawn(SimConfig {
        users,
        ..SimConfig::default()
    })
    .await
    .expect("binds");
    let cfg = sim.control.simulator().config().clone();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/{}/oauth2/v2.0/token", sim.url(), cfg.tenant_id))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", cfg.client_id.as_str()),
            ("client_secret", cfg.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    let token = body["access_token"].as_str().expect("token").to_string();
    (sim, http, token)
}

#[tokio::test]
async fn token_errors_carry_aadsts_codes() {
    let sim = spawn(SimConfig::default()).await.expect("binds");
    let cfg = sim.control.simulator().config().clone();
    let http = reqwest::Client::new();
    let post = |tenant: String, form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = format!("{}/{tenant}/oauth2/v2.0/token", sim.url());
        async move { http.post(url).form(&form).send().await.expect("sent") }
    };
    let base = |secret: &str, scope: &str| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", cfg.client_id.clone()),
            ("client_secret", secret.to_string()),
            ("scope", scope.to_string()),
        ]
    };
    let cases = [
        (
            cfg.tenant_id.clone(),
            base("wrong", "https://graph.microsoft.com/.default"),
            401,
            "invalid_client",
            7000215,
        ),
        (
            "not-a-tenant".to_string(),
            base(&cfg.client_secret, "https://graph.microsoft.com/.default"),
            400,
            "invalid_request",
            90002,
        ),
        (
            cfg.tenant_id.clone(),
            base(&cfg.client_secret, "User.Read.All"),
            400,
            "invalid_scope",
            1002012,
        ),
    ];
    for (tenant, form, status, error, code) in cases {
        let resp = post(tenant, form).await;
        assert_eq!(resp.status(), status);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"], error);
        assert_eq!(body["error_codes"][0], code);
        assert!(
            body["error_description"]
                .as_str()
                .expect("text")
                .starts_with(&format!("AADSTS{code}:"))
        );
        assert!(body["trace_id"].is_string() && body["correlation_id"].is_string());
    }
}

#[tokio::test]
async fn graph_errors_match_the_request_id_header() {
    let (sim, http, _) = sim_and_token(3).await;
    let resp = http
        .get(format!("{}/v1.0/users", sim.url()))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);
    let rid = resp
        .headers()
        .get("request-id")
        .expect("request-id")
        .to_str()
        .expect("ascii")
        .to_string();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(body["error"]["innerError"]["request-id"], rid.as_str());
    assert!(body["error"]["innerError"]["date"].is_string());
}

#[tokio::test]
async fn users_listing_follows_graph_rules() {
    let (sim, http, token) = sim_and_token(30).await;
    let get = |path: &str| {
        http.get(format!("{}{path}", sim.url()))
            .bearer_auth(&token)
            .send()
    };
    let resp = get("/v1.0/users?$top=1000").await.expect("sent");
    assert_eq!(resp.status(), 400);
    let resp = get("/v1.0/users?$select=id,nosuch").await.expect("sent");
    assert_eq!(resp.status(), 400);

    let body: Value = get("/v1.0/users?$top=10")
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(
        body["@odata.context"],
        "https://graph.microsoft.com/v1.0/$metadata#users"
    );
    assert_eq!(body["value"].as_array().expect("array").len(), 10);
    assert!(
        body["value"][0].get("accountEnabled").is_none(),
        "not in the default property set"
    );
    let next = body["@odata.nextLink"]
        .as_str()
        .expect("nextLink")
        .to_string();
    assert!(next.starts_with(&sim.url()) && next.contains("$skiptoken="));

    let body: Value =
        get("/v1.0/users?$select=id,accountEnabled&$filter=accountEnabled%20eq%20true")
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
    let v = body["value"].as_array().expect("array");
    assert!(
        v.iter()
            .all(|u| u["accountEnabled"] == true && u.as_object().expect("obj").len() == 2)
    );
    assert_eq!(v.len(), 30, "none of the first 49 seeded users is disabled");

    let admin = sim.control.simulator().config().consenting_admin.clone();
    let body: Value = get(&format!(
        "/v1.0/users?$filter=userPrincipalName%20eq%20'{admin}'"
    ))
    .await
    .expect("sent")
    .json()
    .await
    .expect("json");
    assert_eq!(body["value"].as_array().expect("array").len(), 1);
}

#[tokio::test]
async fn creation_options_versions_and_timeouts() {
    let (sim, http, token) = sim_and_token(5).await;
    let admin = sim.control.simulator().config().consenting_admin.clone();
    let user = (0..5)
        .filter_map(|i| sim.control.nth_user(i))
        .find(|(_, upn)| *upn != admin)
        .map(|u| u.0)
        .expect("user");
    let get = |path: String| {
        http.get(format!("{}{path}", sim.url()))
            .bearer_auth(&token)
            .send()
    };
    let base = format!("/users/{user}/authentication/fido2Methods/creationOptions");
    assert_eq!(
        get(format!("/v1.0{base}(challengeTimeoutInMinutes=60)"))
            .await
            .expect("sent")
            .status(),
        400
    );
    assert_eq!(
        get(format!("/beta{base}(challengeTimeoutInMinutes=43201)"))
            .await
            .expect("sent")
            .status(),
        400
    );
    assert_eq!(
        get(format!("/beta{base}?challengeTimeoutInMinutes=60"))
            .await
            .expect("sent")
            .status(),
        200
    );
    let body: Value = get(format!("/beta{base}(challengeTimeoutInMinutes=43200)"))
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let pk = &body["publicKey"];
    assert_eq!(pk["rp"]["id"], "login.microsoft.com");
    assert_eq!(pk["authenticatorSelection"]["userVerification"], "required");
    assert_eq!(
        pk["extensions"]["credentialProtectionPolicy"],
        "userVerificationOptional"
    );
    assert!(pk["challenge"].as_str().expect("challenge").len() > 6000);
}

#[tokio::test]
async fn write_throttling_sends_graph_headers() {
    let (sim, http, token) = sim_and_token(5).await;
    sim.control
        .set_write_limit(1, std::time::Duration::from_secs(150));
    let (user, _) = sim.control.nth_user(1).expect("user");
    let url = format!(
        "{}/v1.0/users/{user}/authentication/temporaryAccessPassMethods",
        sim.url()
    );
    let first = http
        .post(&url)
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(first.status(), 201);
    let second = http
        .post(&url)
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(second.status(), 429);
    let h = second.headers();
    let retry: u64 = h["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((140..=150).contains(&retry), "{retry}");
    assert_eq!(h["x-ms-throttle-information"], "WriteLimitExceeded");
    assert!(
        h["x-ms-throttle-scope"]
            .to_str()
            .expect("ascii")
            .starts_with("Tenant_Application/Write/")
    );
    // Reads are not writes.
    let list = http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(list.status(), 200);
    let body: Value = list.json().await.expect("json");
    assert!(
        body["value"][0]["temporaryAccessPass"].is_null(),
        "the pass is shown only once"
    );
}

#[tokio::test]
async fn control_api_injects_faults_over_http() {
    let (sim, http, token) = sim_and_token(5).await;
    let resp = http
        .post(format!("{}/_sim/faults", sim.url()))
        .json(&serde_json::json!({"fault": {"kind": "status", "status": 503, "retry_after": 7}, "count": 1}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 204);
    let resp = http
        .get(format!("{}/v1.0/users", sim.url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "serviceNotAvailable");
    sim.control.push_fault(Fault::Drop, 1);
    let dropped = async {
        http.get(format!("{}/v1.0/users", sim.url()))
            .bearer_auth(&token)
            .send()
            .await?
            .bytes()
            .await
    };
    assert!(dropped.await.is_err(), "the body never completes");
    let resp = http
        .get(format!("{}/_sim/signin/challenge?user=nobody@x", sim.url()))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 404);
}

#[test]
fn binary_prints_its_address() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyward-graph-sim"))
        .args(["--listen", "127.0.0.1:0", "--users", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reads");
    child.kill().expect("stops");
    let _ = child.wait();
    assert!(
        line.starts_with("keyward-graph-sim listening on http://127.0.0.1:"),
        "{line}"
    );
}

#[tokio::test]
async fn read_budget_is_in_resource_units() {
    let sim = spawn(SimConfig {
        users: 5,
        read_limit: Some(3),
        ..SimConfig::default()
    })
    .await
    .expect("binds");
    let cfg = sim.control.simulator().config().clone();
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}/{}/oauth2/v2.0/token", sim.url(), cfg.tenant_id))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", cfg.client_id.as_str()),
            ("client_secret", cfg.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let token = token["access_token"].as_str().expect("token").to_string();
    let get = || {
        http.get(format!("{}/v1.0/users?$select=id", sim.url()))
            .bearer_auth(&token)
            .send()
    };
    for i in 0..3 {
        let resp = get().await.expect("sent");
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.headers()["x-ms-resource-unit"], "1");
        if i == 2 {
            assert_eq!(resp.headers()["x-ms-throttle-limit-percentage"], "1.0");
        }
    }
    let resp = get().await.expect("sent");
    assert_eq!(resp.status(), 429);
    assert_eq!(
        resp.headers()["x-ms-throttle-information"],
        "ResourceUnitLimitExceeded"
    );
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!((1..=10).contains(&wait), "{wait}");
}
