//! The Graph client against the simulator, over real HTTP on loopback: tokens, imports, retries.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use keyward_entra::{
    ApiVersion, AssertionAlg, CertificateCredential, ClientCredential, EntraConfig, ErrorKind,
    GraphClient, OurAuthenticator, Secret, TapRequest, UserSource,
};
use keyward_graph_sim::{DeltaReset, Fault};
use support::{Attest, SoftKey, client, config, sim};

fn ours() -> OurAuthenticator {
    OurAuthenticator {
        aaguid: uuid::Uuid::from_bytes(support::AAGUID).to_string(),
        mds_attested: false,
    }
}

#[tokio::test]
async fn imports_ten_thousand_users_through_paging() {
    let sim = sim(10_000).await;
    let graph = client(&sim);
    let mut pages = graph.users(UserSource::All);
    let (mut n_pages, mut ids, mut disabled) = (0, HashSet::new(), 0);
    while let Some(page) = pages.next_page().await {
        let page = page.expect("page");
        n_pages += 1;
        assert_eq!(page.full_round_starts, n_pages == 1);
        assert!(page.users.len() <= 999);
        for u in page.users {
            assert!(u.user_principal_name.is_some());
            let enabled = u.account_enabled.expect("accountEnabled is selected");
            disabled += usize::from(!enabled);
            assert!(ids.insert(u.id), "no user twice");
        }
        if page.last {
            assert!(page.delta_link.is_none());
        }
    }
    assert_eq!(ids.len(), 10_000);
    assert_eq!(n_pages, 11, "999 per page");
    assert_eq!(disabled, 200, "every 50th seeded account is disabled");
}

#[tokio::test]
async fn group_import_follows_nested_groups() {
    let sim = sim(2_500).await;
    let graph = client(&sim);
    let group = sim.control.group_id("Keyward Pilot").expect("seeded group");
    let expected = sim.control.group_user_count(&group);
    let pages: Vec<_> = graph
        .users(UserSource::Group { group_id: group })
        .into_stream()
        .collect()
        .await;
    let users: HashSet<String> = pages
        .into_iter()
        .flat_map(|p| p.expect("page").users)
        .map(|u| u.id)
        .collect();
    assert_eq!(users.len(), expected);
    assert!(expected > 999, "the group spans several pages ({expected})");
    let missing = graph
        .users(UserSource::Group {
            group_id: "00000000-0000-0000-0000-000000000000".into(),
        })
        .next_page()
        .await;
    assert_eq!(
        missing
            .expect("one answer")
            .expect_err("unknown group")
            .kind,
        ErrorKind::NotFound
    );
}

async fn delta_round(
    graph: &GraphClient,
    link: Option<String>,
) -> (Vec<keyward_entra::UserPage>, String) {
    let mut pages = graph.users(UserSource::Delta { delta_link: link });
    let mut out = Vec::new();
    while let Some(p) = pages.next_page().await {
        out.push(p.expect("delta page"));
    }
    let link = out
        .last()
        .and_then(|p| p.delta_link.clone())
        .expect("last page has a delta link");
    (out, link)
}

#[tokio::test]
async fn delta_reports_added_changed_and_removed_users() {
    let sim = sim(1_500).await;
    let graph = client(&sim);
    let (first, link) = delta_round(&graph, None).await;
    assert!(first[0].full_round_starts);
    assert_eq!(first.iter().map(|p| p.users.len()).sum::<usize>(), 1_500);
    assert!(first.len() >= 2, "delta pages too");

    let added = sim.control.add_user("new.hire@contoso.example", "New Hire");
    let (changed, _) = support::user(&sim, 10).expect("user");
    let (removed, _) = support::user(&sim, 20).expect("user");
    assert!(sim.control.update_user(&changed, None, Some(false)));
    assert!(sim.control.remove_user(&removed));

    let (second, link2) = delta_round(&graph, Some(link)).await;
    assert!(!second[0].full_round_starts, "an incremental round");
    let users: Vec<_> = second.iter().flat_map(|p| p.users.clone()).collect();
    let ids: HashSet<_> = users.iter().map(|u| u.id.clone()).collect();
    assert_eq!(ids, HashSet::from([added.clone(), changed.clone()]));
    assert_eq!(
        users
            .iter()
            .find(|u| u.id == changed)
            .and_then(|u| u.account_enabled),
        Some(false)
    );
    let removed_ids: Vec<_> = second.iter().flat_map(|p| p.removed.clone()).collect();
    assert_eq!(removed_ids, vec![removed]);

    // Nothing changed: an empty round with a fresh link.
    let (third, _) = delta_round(&graph, Some(link2.clone())).await;
    assert!(
        third
            .iter()
            .all(|p| p.users.is_empty() && p.removed.is_empty())
    );

    // Graph forgets the sync state: the pager starts a full round by itself.
    sim.control.expire_delta_tokens(DeltaReset::ResyncRequired);
    let (fourth, _) = delta_round(&graph, Some(link2)).await;
    assert!(fourth[0].full_round_starts);
    assert_eq!(fourth.iter().map(|p| p.users.len()).sum::<usize>(), 1_500);
}

fn rsa_cert() -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let cert = rcgen::CertificateParams::new(vec!["keyward-entra-test".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    (cert.der().to_vec(), key.serialize_der())
}

#[tokio::test]
async fn tokens_with_secret_and_certificate() {
    let sim = sim(5).await;
    client(&sim)
        .check_credentials()
        .await
        .expect("secret works");

    let (cert, key) = rsa_cert();
    sim.control.register_certificate(cert.clone());
    for alg in [AssertionAlg::Ps256, AssertionAlg::Rs256] {
        let cred = CertificateCredential::from_der(cert.clone(), &key, alg).expect("credential");
        let graph = GraphClient::new(config(&sim, ClientCredential::Certificate(Box::new(cred))))
            .expect("config");
        graph.check_credentials().await.expect("certificate works");
        graph
            .list_passkeys(&support::user(&sim, 1).expect("user").0)
            .await
            .expect("the token is accepted by Graph");
    }

    let (other_cert, other_key) = rsa_cert();
    let cred = CertificateCredential::from_der(other_cert, &other_key, AssertionAlg::Ps256)
        .expect("credential");
    let graph = GraphClient::new(config(&sim, ClientCredential::Certificate(Box::new(cred))))
        .expect("config");
    let e = graph
        .check_credentials()
        .await
        .expect_err("unregistered certificate");
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(e.code.as_deref(), Some("AADSTS700027"));

    let graph = GraphClient::new(config(
        &sim,
        ClientCredential::Secret(Secret::new("not-the-secret")),
    ))
    .expect("config");
    let e = graph.check_credentials().await.expect_err("wrong secret");
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(e.code.as_deref(), Some("AADSTS7000215"));
    let text = format!("{e} {e:?}");
    assert!(e.reason().contains("client secret"), "{}", e.reason());
    assert!(
        !text.contains("not-the-secret"),
        "the secret never appears in errors"
    );
}

#[tokio::test]
async fn throttling_honours_retry_after() {
    let sim = sim(5).await;
    let graph = client(&sim);
    sim.control
        .push_fault(Fault::Throttle { retry_after: 1 }, 2);
    let start = Instant::now();
    let (user, _) = support::user(&sim, 1).expect("user");
    graph
        .list_passkeys(&user)
        .await
        .expect("succeeds after waiting");
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "waited Retry-After twice: {:?}",
        start.elapsed()
    );

    // The write limit: Retry-After beyond what we sleep comes back as Throttled.
    sim.control.set_write_limit(1, Duration::from_secs(150));
    graph
        .create_temporary_access_pass(&user, &TapRequest::default())
        .await
        .expect("first write");
    let e = graph
        .create_temporary_access_pass(&user, &TapRequest::default())
        .await
        .expect_err("over the limit");
    match e.kind {
        ErrorKind::Throttled {
            retry_after: Some(d),
        } => assert!(d > Duration::from_secs(100), "{d:?}"),
        other => panic!("expected Throttled, got {other:?}"),
    }
    assert!(e.request_id.is_some());
}

#[tokio::test]
async fn server_errors_and_dropped_connections_are_retried() {
    let sim = sim(5).await;
    let graph = client(&sim);
    let (user, _) = support::user(&sim, 1).expect("user");
    sim.control.push_fault(
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        2,
    );
    sim.control.push_fault(Fault::Drop, 1);
    graph
        .list_passkeys(&user)
        .await
        .expect("retried through two 500s and a dropped connection");

    sim.control.push_fault(
        Fault::Status {
            status: 502,
            retry_after: None,
        },
        10,
    );
    let e = graph
        .list_passkeys(&user)
        .await
        .expect_err("bounded attempts");
    assert_eq!(e.kind, ErrorKind::Transport);
    assert_eq!(e.status, Some(502));
    sim.control.clear_faults();

    // A registration is never repeated after an ambiguous 500 ...
    let options = graph.creation_options(&user, None).await.expect("options");
    let key = SoftKey::new();
    let reg = key.register(&options, Attest::None);
    sim.control.push_fault(
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        1,
    );
    let e = graph
        .register_passkey(&user, &reg, ApiVersion::V1)
        .await
        .expect_err("not retried");
    assert_eq!(e.kind, ErrorKind::Transport);
    // ... but a 503 with Retry-After means Graph did nothing, so it is.
    sim.control.push_fault(
        Fault::Status {
            status: 503,
            retry_after: Some(1),
        },
        1,
    );
    graph
        .register_passkey(&user, &reg, ApiVersion::V1)
        .await
        .expect("retried after 503");
}

#[tokio::test]
async fn malformed_json_is_a_bad_response() {
    let sim = sim(5).await;
    let graph = client(&sim);
    sim.control.push_fault(Fault::Malformed, 1);
    let e = graph
        .users(UserSource::All)
        .next_page()
        .await
        .expect("answer")
        .expect_err("malformed");
    assert!(matches!(e.kind, ErrorKind::BadResponse { .. }), "{e:?}");
    assert!(e.request_id.is_some());
}

#[tokio::test]
async fn missing_permission_and_expired_tokens() {
    let sim = sim(5).await;
    let graph = client(&sim);
    let (user, _) = support::user(&sim, 1).expect("user");
    graph.list_passkeys(&user).await.expect("works");
    sim.control.expire_tokens();
    graph
        .list_passkeys(&user)
        .await
        .expect("a new token is fetched after a 401");
    sim.control.set_forbidden(true);
    let e = graph.list_passkeys(&user).await.expect_err("403");
    assert_eq!(e.kind, ErrorKind::Permission);
    assert!(e.reason().contains("permission"));
}

#[test]
fn plain_http_is_only_for_loopback() {
    let cfg = EntraConfig::new("t", "c", ClientCredential::Secret(Secret::new("s")))
        .with_graph_url("http://graph.example.com");
    assert_eq!(
        GraphClient::new(cfg).expect_err("refused").kind,
        ErrorKind::Config
    );
    let cfg = EntraConfig::new("t", "c", ClientCredential::Secret(Secret::new("s")))
        .with_authority_url("http://login.example.com");
    assert_eq!(
        GraphClient::new(cfg).expect_err("refused").kind,
        ErrorKind::Config
    );
}

#[tokio::test]
async fn tokens_are_cached_until_shortly_before_expiry() {
    let sim = keyward_graph_sim::spawn(keyward_graph_sim::SimConfig {
        users: 5,
        token_lifetime: Duration::from_secs(2),
        ..keyward_graph_sim::SimConfig::default()
    })
    .await
    .expect("binds");
    let graph = client(&sim);
    let (user, _) = support::user(&sim, 1).expect("user");
    for _ in 0..3 {
        graph.list_passkeys(&user).await.expect("call");
    }
    assert_eq!(
        sim.control.tokens_issued(),
        1,
        "one token serves several calls"
    );
    // A 2 s token is refreshed half-way, before Graph would refuse it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    graph.list_passkeys(&user).await.expect("call");
    assert_eq!(sim.control.tokens_issued(), 2);
}

#[test]
fn client_futures_can_run_on_spawned_tasks() {
    // The server's jobs run these on `tokio::spawn`, which needs Send futures.
    fn assert_send<T: Send>(_: &T) {}
    fn assert_sync<T: Send + Sync + Clone>() {}
    assert_sync::<GraphClient>();
    let graph = GraphClient::new(EntraConfig::new(
        "t",
        "c",
        ClientCredential::Secret(Secret::new("s")),
    ))
    .expect("config");
    assert_send(&graph.preflight("u", &ours()));
    assert_send(&graph.creation_options("u", None));
    let reg = keyward_entra::Registration {
        display_name: String::new(),
        credential_id: vec![],
        client_data_json: vec![],
        attestation_object: vec![],
        client_extension_results: serde_json::json!({}),
    };
    assert_send(&graph.register_passkey("u", &reg, ApiVersion::V1));
    assert_send(&graph.create_temporary_access_pass("u", &TapRequest::default()));
    let mut pages = graph.users(UserSource::All);
    assert_send(&pages.next_page());
}
