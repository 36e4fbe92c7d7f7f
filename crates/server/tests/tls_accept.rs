//! TLS handshakes run off the accept loop: a client that opens a connection and never sends its
//! ClientHello neither delays other clients nor lingers past the handshake timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use keyward_server::tls::{HANDSHAKE_TIMEOUT, TlsListener};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// An HTTPS server answering `/healthz` on a free loopback port, and a client that trusts it.
async fn server(handshake_timeout: Duration) -> (std::net::SocketAddr, TlsConnector) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::try_from(ck.key_pair.serialize_der()).expect("key");
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let listener = TlsListener::new(
        tcp,
        TlsAcceptor::from(Arc::new(server_cfg)),
        handshake_timeout,
    )
    .expect("listener");
    let addr = axum::serve::Listener::local_addr(&listener).expect("addr");
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (addr, TlsConnector::from(Arc::new(client_cfg)))
}

async fn healthz(addr: std::net::SocketAddr, connector: &TlsConnector) -> String {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    // A peer closing without close_notify is fine for this check.
    let _ = tls.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_does_not_delay_others() {
    let (addr, connector) = server(HANDSHAKE_TIMEOUT).await;
    // Several connections that never send a ClientHello, opened first and kept open.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).await.expect("silent connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(3), healthz(addr, &connector))
        .await
        .expect("a normal client is served while silent ones wait");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert!(
        started.elapsed() < HANDSHAKE_TIMEOUT / 2,
        "served in {:?}",
        started.elapsed()
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let timeout = Duration::from_millis(300);
    let (addr, connector) = server(timeout).await;
    let mut silent = TcpStream::connect(addr).await.expect("silent connect");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the server closes a silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without data");
    assert!(started.elapsed() >= timeout, "closed too early");
    // The server still serves afterwards.
    let answer = healthz(addr, &connector).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
