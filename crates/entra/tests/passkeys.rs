//! The Graph client against the simulator, over real HTTP on loopback: passkey provisioning,
//! policy pre-flight and Temporary Access Passes.

mod support;

use futures::StreamExt;
use keyward_entra::{ApiVersion, ErrorKind, OurAuthenticator, Preflight, TapRequest, UserSource};
use keyward_graph_sim::PolicyTarget;
use support::{Attest, SoftKey, client, sim};

fn ours() -> OurAuthenticator {
    OurAuthenticator {
        aaguid: uuid::Uuid::from_bytes(support::AAGUID).to_string(),
        mds_attested: false,
    }
}

#[tokio::test]
async fn registers_passkeys_that_then_sign_in() {
    let sim = sim(5).await;
    let graph = client(&sim);
    let (user, upn) = support::user(&sim, 1).expect("user");

    let options = graph
        .creation_options(&user, None)
        .await
        .expect("v1.0 options");
    assert_eq!(options.rp_id, "login.microsoft.com");
    assert!(options.challenge.len() > 5_000, "Entra-sized challenge");
    assert_eq!(options.user_id, sim.control.user_handle(&user));
    assert!(options.exclude_credentials.is_empty());
    let mut key1 = SoftKey::new();
    let method = graph
        .register_passkey(
            &user,
            &key1.register(&options, Attest::None),
            ApiVersion::V1,
        )
        .await
        .expect("none accepted");
    assert_eq!(method.aa_guid.as_deref(), Some(ours().aaguid.as_str()));
    assert_eq!(method.attestation_level.as_deref(), Some("notAttested"));
    assert_eq!(method.passkey_type.as_deref(), Some("deviceBound"));

    // Beta, with a long challenge: the first credential is now excluded (standard base64 there).
    let options = graph
        .creation_options(&upn, Some(60))
        .await
        .expect("beta options");
    let timeout = options.challenge_timeout.expect("timeout");
    assert!(timeout > chrono::Utc::now() + chrono::Duration::minutes(55));
    assert!(options.exclude_credentials.contains(&key1.credential_id));
    let key2 = SoftKey::new();
    graph
        .register_passkey(
            &upn,
            &key2.register(&options, Attest::PackedSelf),
            ApiVersion::Beta,
        )
        .await
        .expect("packed self accepted");
    // The same challenge cannot register again.
    let key3 = SoftKey::new();
    let e = graph
        .register_passkey(&upn, &key3.register(&options, Attest::None), ApiVersion::V1)
        .await
        .expect_err("reused challenge");
    assert_eq!(e.kind, ErrorKind::Rejected);

    let listed = graph.list_passkeys(&user).await.expect("list");
    assert_eq!(listed.len(), 2);

    // The passkey works: sign in, with the counter increasing each time.
    let challenge = sim.control.signin_challenge(&upn).expect("challenge");
    let ok = sim
        .control
        .verify_signin(&key1.assert(&upn, &challenge, 1))
        .expect("sign-in");
    assert_eq!(ok.method_id, method.id);
    let challenge = sim.control.signin_challenge(&upn).expect("challenge");
    sim.control
        .verify_signin(&key1.assert(&upn, &challenge, 3))
        .expect("second sign-in");
    let challenge = sim.control.signin_challenge(&upn).expect("challenge");
    let e = sim
        .control
        .verify_signin(&key1.assert(&upn, &challenge, 0))
        .expect_err("counter did not increase");
    assert!(e.contains("counter"), "{e}");
    let challenge = sim.control.signin_challenge(&upn).expect("challenge");
    let mut a = key1.assert(&upn, &challenge, 1);
    a.signature = a.signature.replace('A', "B");
    assert!(
        sim.control.verify_signin(&a).is_err(),
        "a tampered signature fails"
    );

    graph
        .delete_passkey(&user, &method.id)
        .await
        .expect("delete");
    assert_eq!(graph.list_passkeys(&user).await.expect("list").len(), 1);
    let e = graph
        .delete_passkey(&user, &method.id)
        .await
        .expect_err("already gone");
    assert_eq!(e.kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn bad_registrations_are_rejected_like_entra() {
    let sim = sim(5).await;
    let graph = client(&sim);
    let (user, _) = support::user(&sim, 2).expect("user");
    let (other, _) = support::user(&sim, 3).expect("user");
    let options = graph.creation_options(&user, None).await.expect("options");
    let key = SoftKey::new();

    let mut bad_sig = key.register(&options, Attest::PackedSelf);
    let at = bad_sig
        .attestation_object
        .windows(4)
        .position(|w| w == b"csig")
        .expect("sig key");
    bad_sig.attestation_object[at + 4 + 2 + 10] ^= 0x01; // a byte inside the DER signature
    let wrong_origin = key.registration_with(
        &keyward_entra::client_data_json(&options.challenge, "login.microsoftonline.com"),
        "login.microsoft.com",
        0x45,
        Attest::None,
    );
    let other_options = graph.creation_options(&other, None).await.expect("options");
    let wrong_challenge = key.register(&other_options, Attest::None);
    let no_uv = key.registration_with(
        &options.client_data_json(),
        "login.microsoft.com",
        0x41,
        Attest::None,
    );
    let wrong_rp = key.registration_with(
        &options.client_data_json(),
        "evil.example",
        0x45,
        Attest::None,
    );

    for (name, reg) in [
        ("bad signature", bad_sig),
        ("wrong origin", wrong_origin),
        ("wrong challenge", wrong_challenge),
        ("no UV", no_uv),
        ("wrong rp", wrong_rp),
    ] {
        let e = graph
            .register_passkey(&user, &reg, ApiVersion::V1)
            .await
            .expect_err(name);
        assert_eq!(e.kind, ErrorKind::Rejected, "{name}: {e}");
        assert_eq!(e.status, Some(400), "{name}");
        assert_eq!(e.code.as_deref(), Some("badRequest"), "{name}");
        assert!(e.request_id.is_some(), "{name}: request-id kept");
    }
    // The good one still works afterwards: rejections did not consume the challenge.
    graph
        .register_passkey(&user, &key.register(&options, Attest::None), ApiVersion::V1)
        .await
        .expect("valid registration");
}

#[tokio::test]
async fn consenting_admin_gets_405() {
    let sim = sim(5).await;
    let graph = client(&sim);
    let admin = sim.control.simulator().config().consenting_admin.clone();
    let e = graph.creation_options(&admin, None).await.expect_err("405");
    assert_eq!(e.kind, ErrorKind::ConsentingAdmin);
    assert_eq!(e.code.as_deref(), Some("methodNotAllowed"));
    assert!(e.reason().contains("405"));
}

#[tokio::test]
async fn preflight_explains_policy_blocks() {
    let sim = sim(50).await;
    let graph = client(&sim);
    let (user, _) = support::user(&sim, 1).expect("user");
    assert_eq!(
        graph.preflight(&user, &ours()).await.expect("preflight"),
        Preflight::Ready
    );

    let mut policy = sim.control.policy();
    policy.is_attestation_enforced = true;
    sim.control.set_policy(policy.clone());
    match graph.preflight(&user, &ours()).await.expect("preflight") {
        Preflight::Blocked { reason } => assert!(reason.contains("attestation"), "{reason}"),
        Preflight::Ready => panic!("attestation enforcement must block"),
    }
    let options = graph
        .creation_options(&user, None)
        .await
        .expect("options still issued");
    let e = graph
        .register_passkey(
            &user,
            &SoftKey::new().register(&options, Attest::PackedSelf),
            ApiVersion::V1,
        )
        .await
        .expect_err("refused");
    assert_eq!(e.kind, ErrorKind::Rejected);

    // Scope: only the nested pilot group is targeted.
    policy.is_attestation_enforced = false;
    let nested = sim
        .control
        .group_id("Keyward Pilot - Nested")
        .expect("group");
    policy.include_targets = vec![PolicyTarget {
        target_type: "group".into(),
        id: nested.clone(),
    }];
    sim.control.set_policy(policy);
    let data_members: Vec<String> = graph
        .users(UserSource::Group { group_id: nested })
        .into_stream()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flat_map(|p| p.expect("page").users)
        .map(|u| u.id)
        .collect();
    let member = &data_members[0];
    let outsider = (0..49)
        .filter_map(|i| support::user(&sim, i))
        .map(|u| u.0)
        .find(|id| !data_members.contains(id))
        .expect("outsider");
    assert_eq!(
        graph.preflight(member, &ours()).await.expect("preflight"),
        Preflight::Ready
    );
    match graph
        .preflight(&outsider, &ours())
        .await
        .expect("preflight")
    {
        Preflight::Blocked { reason } => assert!(reason.contains("does not include"), "{reason}"),
        Preflight::Ready => panic!("user out of scope"),
    }
    let e = graph
        .creation_options(&outsider, None)
        .await
        .expect_err("Entra agrees");
    assert_eq!(e.kind, ErrorKind::Policy);
}

#[tokio::test]
async fn temporary_access_pass() {
    let sim = sim(5).await;
    let graph = client(&sim);
    let (user, _) = support::user(&sim, 1).expect("user");
    let tap = graph
        .create_temporary_access_pass(
            &user,
            &TapRequest {
                lifetime_minutes: Some(120),
                usable_once: Some(true),
                start: None,
            },
        )
        .await
        .expect("TAP");
    assert_eq!(tap.pass.expose().chars().count(), 8);
    assert_eq!(tap.lifetime_minutes, Some(120));
    assert_eq!(tap.usable_once, Some(true));
    assert!(!format!("{tap:?}").contains(tap.pass.expose()));
    let e = graph
        .create_temporary_access_pass(
            &user,
            &TapRequest {
                lifetime_minutes: Some(5),
                ..TapRequest::default()
            },
        )
        .await
        .expect_err("below the policy minimum");
    assert_eq!(e.kind, ErrorKind::Policy);
}

#[tokio::test]
async fn full_attestation_and_key_restrictions() {
    let sim = sim(5).await;
    let graph = client(&sim);
    let (user, _) = support::user(&sim, 1).expect("user");

    let (cert, key) = support::attestation_cert(support::AAGUID);
    let options = graph.creation_options(&user, None).await.expect("options");
    let method = graph
        .register_passkey(
            &user,
            &SoftKey::new().register(
                &options,
                Attest::PackedFull {
                    x5c: vec![cert],
                    key,
                },
            ),
            ApiVersion::V1,
        )
        .await
        .expect("full attestation accepted");
    assert_eq!(method.attestation_level.as_deref(), Some("attested"));
    assert_eq!(method.attestation_certificates.len(), 1);

    // A certificate naming another AAGUID does not vouch for this authenticator.
    let (cert, key) = support::attestation_cert(*b"some-other-model");
    let options = graph.creation_options(&user, None).await.expect("options");
    let e = graph
        .register_passkey(
            &user,
            &SoftKey::new().register(
                &options,
                Attest::PackedFull {
                    x5c: vec![cert],
                    key,
                },
            ),
            ApiVersion::V1,
        )
        .await
        .expect_err("AAGUID mismatch");
    assert!(e.message.contains("AAGUID"), "{e}");

    // An allow list without our AAGUID: the pre-flight says so, and Entra refuses.
    let mut policy = sim.control.policy();
    policy.key_restrictions = keyward_graph_sim::KeyRestrictions {
        is_enforced: true,
        enforcement_type: "allow".into(),
        aa_guids: vec!["cb69481e-8ff7-4039-93ec-0a2729a154a8".into()],
    };
    sim.control.set_policy(policy.clone());
    match graph.preflight(&user, &ours()).await.expect("preflight") {
        Preflight::Blocked { reason } => assert!(reason.contains(&ours().aaguid), "{reason}"),
        Preflight::Ready => panic!("the allow list excludes us"),
    }
    let options = graph.creation_options(&user, None).await.expect("options");
    let e = graph
        .register_passkey(
            &user,
            &SoftKey::new().register(&options, Attest::None),
            ApiVersion::V1,
        )
        .await
        .expect_err("blocked");
    assert!(e.message.contains("key restriction"), "{e}");
    policy.key_restrictions.aa_guids.push(ours().aaguid);
    sim.control.set_policy(policy);
    assert_eq!(
        graph.preflight(&user, &ours()).await.expect("preflight"),
        Preflight::Ready
    );
    graph
        .register_passkey(
            &user,
            &SoftKey::new().register(&options, Attest::None),
            ApiVersion::V1,
        )
        .await
        .expect("now allowed");
}

#[tokio::test]
async fn enforced_attestation_accepts_only_trusted_chains() {
    let sim = sim(5).await;
    let graph = client(&sim);
    let (user, _) = support::user(&sim, 1).expect("user");
    let mut policy = sim.control.policy();
    policy.is_attestation_enforced = true;
    sim.control.set_policy(policy);

    let (cert, key) = support::attestation_cert(support::AAGUID);
    let options = graph.creation_options(&user, None).await.expect("options");
    let reg = SoftKey::new().register(
        &options,
        Attest::PackedFull {
            x5c: vec![cert.clone()],
            key,
        },
    );
    let e = graph
        .register_passkey(&user, &reg, ApiVersion::V1)
        .await
        .expect_err("untrusted chain");
    assert!(e.message.contains("Attestation is enforced"), "{e}");

    let options = graph.creation_options(&user, None).await.expect("options");
    let (cert, key) = support::attestation_cert(support::AAGUID);
    sim.control.set_attestation_roots(vec![cert.clone()]);
    let reg = SoftKey::new().register(
        &options,
        Attest::PackedFull {
            x5c: vec![cert],
            key,
        },
    );
    let method = graph
        .register_passkey(&user, &reg, ApiVersion::V1)
        .await
        .expect("trusted chain");
    assert_eq!(method.attestation_level.as_deref(), Some("attested"));

    let options = graph.creation_options(&user, None).await.expect("options");
    let e = graph
        .register_passkey(
            &user,
            &SoftKey::new().register(&options, Attest::None),
            ApiVersion::V1,
        )
        .await
        .expect_err("none");
    assert!(e.message.contains("Attestation is enforced"), "{e}");
}
