//! The pairing tool's network side against the in-test relay server in `common`: registration,
//! challenge–response, attach, a relayed CTAP request, revocation, reconnect after a server
//! restart, logout.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyward_pair::enroll::{self, EnrollError};
use keyward_pair::protocol::*;
use keyward_pair::relay::{RelayClient, RelayError, RelayEvent, logout};
use keyward_pair::state::{Home, ServerUrl};

#[tokio::test]
async fn login_connects_authenticates_and_relays_a_request() {
    let (addr, _app) = start_fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
    let reg = enroll::login(&home, &target(addr), TOKEN)
        .await
        .expect("login");
    assert!(matches!(reg.principal, Principal::Admin { .. }));

    let (client, mut events) = RelayClient::spawn(relay_config(&home));
    assert!(matches!(
        next_event(&mut events).await,
        RelayEvent::Connected {
            principal: Principal::Admin { .. }
        }
    ));
    let RelayEvent::Message(ServerMessage::Attach { key_id, mode, .. }) =
        next_event(&mut events).await
    else {
        panic!("expected attach")
    };
    assert_eq!((key_id.as_str(), mode), ("k1", SessionMode::Delegated));

    client.send(ClientMessage::Ctap {
        id: 1,
        payload: vec![0x04],
        user_present: false,
        key_id: Some("k1".into()),
    });
    assert_eq!(
        next_event(&mut events).await,
        RelayEvent::Message(ServerMessage::Keepalive {
            id: 1,
            status: KeepaliveStatus::Processing
        })
    );
    assert_eq!(
        next_event(&mut events).await,
        RelayEvent::Message(ServerMessage::CtapResult {
            id: 1,
            payload: vec![0x00, 0x04]
        })
    );
}

#[tokio::test]
async fn wrong_token_and_wrong_code_are_reported_clearly() {
    let (addr, _app) = start_fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
    let err = enroll::login(&home, &target(addr), "wrong")
        .await
        .expect_err("bad token");
    assert!(matches!(err, EnrollError::BadToken(401)), "{err:?}");
    assert!(
        !err.to_string().contains("wrong"),
        "the token must not be echoed"
    );
    let err = enroll::activate(&home, &target(addr), "NOPE")
        .await
        .expect_err("bad code");
    assert!(matches!(err, EnrollError::BadCode(410)), "{err:?}");
    assert!(!err.to_string().contains("NOPE"));
    assert!(
        home.load().is_err(),
        "nothing saved after a failed registration"
    );

    let reg = enroll::activate(&home, &target(addr), CODE)
        .await
        .expect("activate");
    assert!(matches!(reg.principal, Principal::User { .. }));
}

#[tokio::test]
async fn a_server_that_is_not_keyward_or_not_running_is_named() {
    let (addr, _app) = start_fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
    let mut t = target(addr);
    t.server = ServerUrl::parse(&format!("http://{addr}/not-here")).expect("url");
    assert!(matches!(
        enroll::login(&home, &t, TOKEN).await,
        Err(EnrollError::NotKeyward { .. })
    ));

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let err = enroll::login(&home, &target(closed), TOKEN)
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, EnrollError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn reconnects_with_backoff_after_the_server_drops_connections() {
    let (addr, app) = start_fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
    enroll::login(&home, &target(addr), TOKEN)
        .await
        .expect("login");
    let (client, mut events) = RelayClient::spawn(relay_config(&home));
    assert!(matches!(
        next_event(&mut events).await,
        RelayEvent::Connected { .. }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        RelayEvent::Message(ServerMessage::Attach { .. })
    ));

    app.generation.send_modify(|g| *g += 1);
    let RelayEvent::Disconnected { retry_in, .. } = next_event(&mut events).await else {
        panic!("expected disconnect")
    };
    assert!(
        retry_in >= Duration::from_millis(50) && retry_in <= Duration::from_millis(60),
        "{retry_in:?}"
    );
    assert!(matches!(
        next_event(&mut events).await,
        RelayEvent::Connected { .. }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        RelayEvent::Message(ServerMessage::Attach { .. })
    ));
    assert_eq!(app.fake.lock().expect("lock").connections, 2);

    // The new connection works.
    client.send(ClientMessage::Ctap {
        id: 9,
        payload: vec![0x01],
        user_present: true,
        key_id: None,
    });
    next_event(&mut events).await; // keepalive
    assert_eq!(
        next_event(&mut events).await,
        RelayEvent::Message(ServerMessage::CtapResult {
            id: 9,
            payload: vec![0x00, 0x01]
        })
    );
}

#[tokio::test]
async fn keeps_retrying_while_the_server_is_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
    let (_, der) = keyward_pair::state::DeviceKey::generate().expect("key");
    let state = keyward_pair::state::PairState {
        server: format!("http://{port}"),
        device_id: "dev-x".into(),
        principal: Principal::User {
            id: "u".into(),
            upn: "u@x".into(),
        },
        cert_pin: None,
    };
    home.save(&der, &state).expect("save");
    let (_client, mut events) = RelayClient::spawn(relay_config(&home));
    let mut delays = Vec::new();
    for _ in 0..4 {
        let RelayEvent::Disconnected { reason, retry_in } = next_event(&mut events).await else {
            panic!("expected retry")
        };
        assert!(reason.contains("cannot reach"), "{reason}");
        delays.push(retry_in);
    }
    // 50, 100, 200, 200 ms (+ up to 20 % jitter): doubling, capped.
    assert!(
        delays[1] >= Duration::from_millis(100) && delays[2] >= Duration::from_millis(200),
        "{delays:?}"
    );
    assert!(delays[3] <= Duration::from_millis(240), "{delays:?}");
}

#[tokio::test]
async fn revoked_or_unknown_device_stops_with_a_clear_error() {
    let (addr, app) = start_fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
    let reg = enroll::login(&home, &target(addr), TOKEN)
        .await
        .expect("login");
    app.fake
        .lock()
        .expect("lock")
        .devices
        .get_mut(&reg.device_id)
        .expect("device")
        .1 = true;
    let (_client, mut events) = RelayClient::spawn(relay_config(&home));
    let RelayEvent::Fatal(e) = next_event(&mut events).await else {
        panic!("expected fatal")
    };
    assert!(matches!(
        e,
        RelayError::Rejected {
            code: ErrorCode::Revoked,
            ..
        }
    ));
    assert!(e.to_string().contains("keyward-pair login"), "{e}");

    app.fake.lock().expect("lock").devices.clear();
    let (_client, mut events) = RelayClient::spawn(relay_config(&home));
    assert!(matches!(
        next_event(&mut events).await,
        RelayEvent::Fatal(RelayError::Rejected {
            code: ErrorCode::UnknownDevice,
            ..
        })
    ));
}

#[tokio::test]
async fn a_different_device_key_is_refused() {
    let (addr, _app) = start_fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
    enroll::login(&home, &target(addr), TOKEN)
        .await
        .expect("login");
    let mut config = relay_config(&home);
    let (other, _) = keyward_pair::state::DeviceKey::generate().expect("key");
    config.key = Arc::new(other);
    let (_client, mut events) = RelayClient::spawn(config);
    assert!(matches!(
        next_event(&mut events).await,
        RelayEvent::Fatal(RelayError::Rejected {
            code: ErrorCode::BadSignature,
            ..
        })
    ));
}

#[tokio::test]
async fn logout_revokes_at_the_server() {
    let (addr, app) = start_fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
    let reg = enroll::login(&home, &target(addr), TOKEN)
        .await
        .expect("login");
    logout(&relay_config(&home)).await.expect("logout");
    assert!(
        app.fake.lock().expect("lock").devices[&reg.device_id].1,
        "device revoked"
    );
    // A second logout with the same key is refused: the device no longer exists for the server.
    assert!(logout(&relay_config(&home)).await.is_err());
}
