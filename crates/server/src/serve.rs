//! Running the server: data directory, database, vault, TLS, health and metrics endpoints, and
//! graceful shutdown (in-flight requests finish).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use keyward_store::Store;
use keyward_vault::Vault;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, AppState};
use crate::auth::RateLimiter;
use crate::config::Config;
use crate::error::problem_response;
use crate::metrics::Metrics;

/// The AAGUID of Keyward's virtual keys unless the key-operations layer configures another.
pub const KEYWARD_AAGUID: [u8; 16] = *b"KEYWARD-VKEY-V1\0";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("database: {0}")]
    Store(#[from] keyward_store::StoreError),
    #[error("vault: {0}")]
    Vault(#[from] keyward_vault::VaultError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("public_url: {0}")]
    PublicUrl(String),
}

/// Builds the state from a configuration: creates the data directory, opens the database (running
/// migrations) and the vault.
pub async fn open_state(config: &Config) -> Result<AppState, ServeError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| ServeError::DataDir(config.data_dir.display().to_string(), e))?;
    let store = Store::connect(config.database_url.expose()).await?;
    let vault = Arc::new(Vault::from_env_or_data_dir(&config.data_dir)?);
    let keyops = Arc::new(crate::keyops::KeyOps::new(
        store.clone(),
        vault.clone(),
        keyward_authenticator::Config::new(KEYWARD_AAGUID),
    ));
    let relay = crate::relay::RelayHub::new(store.clone(), keyops.clone());
    let relying_party = match config.effective_public_url() {
        Some(url) => Some(Arc::new(
            crate::auth::RelyingParty::from_public_url(&url).map_err(ServeError::PublicUrl)?,
        )),
        None => {
            tracing::warn!(
                "no public_url is set for this non-loopback address: admin passkeys are off and \
                 no set-up link can be printed. Set public_url (KEYWARD_PUBLIC_URL)."
            );
            None
        }
    };
    Ok(AppState {
        relying_party,
        store,
        vault,
        metrics: Arc::new(Metrics::default()),
        login_limiter: Arc::new(RateLimiter::new(10, Duration::from_secs(60))),
        session_hours: config.session_hours,
        secure_cookies: !config.is_loopback() || config.tls_cert.is_some(),
        aaguid: KEYWARD_AAGUID,
        relay: Some(relay),
        ctap: Some(keyops),
    })
}

/// The whole HTTP application: the API plus `/healthz`, `/readyz` and `/metrics`.
pub fn app(state: AppState) -> Router {
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state.clone());
    let mut app = ops
        .merge(api::router(state.clone()))
        .merge(keyward_panel::router());
    if let Some(hub) = &state.relay {
        // The relay WebSocket and activation authenticate by device key and activation code, so
        // they live outside the route table.
        app = app.merge(crate::relay::router(hub.clone()));
    }
    app.fallback(|| async { api::not_found_response() })
        .layer(middleware::from_fn_with_state(state, count_requests))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

async fn readyz(State(s): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready").into_response(),
        _ => problem_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Not ready",
            "the database is not reachable".into(),
        ),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Counts requests by route template (never the concrete path, which holds ids).
async fn count_requests(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    s.metrics
        .record_request(&method, &route, resp.status().as_u16());
    resp
}

fn tls_config(config: &Config) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (certs, key) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => {
            let certs = CertificateDer::pem_file_iter(c)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ServeError::Tls(format!("certificate {}: {e}", c.display())))?;
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| ServeError::Tls(format!("key {}: {e}", k.display())))?;
            (certs, key)
        }
        _ => {
            tracing::warn!(
                "listening on a non-loopback address without tls_cert/tls_key: using a generated self-signed \
                 certificate; clients will not trust it. Configure a real certificate."
            );
            let host = config.listen.ip().to_string();
            let ck = rcgen::generate_simple_self_signed(vec![host, "localhost".into()])
                .map_err(|e| ServeError::Tls(e.to_string()))?;
            save_self_signed(&config.data_dir, &ck.cert.pem());
            let key = PrivateKeyDer::try_from(ck.key_pair.serialize_der())
                .map_err(|e| ServeError::Tls(e.to_string()))?;
            (vec![ck.cert.der().clone()], key)
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// Leaves the generated certificate (not its key) in the data directory so clients can pin it.
fn save_self_signed(dir: &Path, pem: &str) {
    let path = dir.join("self-signed.crt");
    if let Err(e) = std::fs::write(&path, pem) {
        tracing::warn!(error = %e, "could not save the self-signed certificate");
    } else {
        tracing::warn!(path = %path.display(), "self-signed certificate written");
    }
}

/// Runs the server until `shutdown` completes, then lets in-flight requests finish.
/// `ready` is called with the URL once the socket accepts connections.
pub async fn run(
    config: Config,
    state: AppState,
    ready: impl FnOnce(&str),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tcp = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Bind(config.listen, e))?;
    let local = tcp
        .local_addr()
        .map_err(|e| ServeError::Bind(config.listen, e))?;
    let tls = !config.is_loopback() || config.tls_cert.is_some();
    let app = app(state.clone());
    // Imports and provisioning resume here after a restart; dropped with the server.
    let jobs = crate::jobs::start(&state, std::future::pending());
    let result = if tls {
        let acceptor = TlsAcceptor::from(tls_config(&config)?);
        ready(&format!("https://{local}"));
        let listener = crate::tls::TlsListener::new(tcp, acceptor, crate::tls::HANDSHAKE_TIMEOUT)
            .map_err(|e| ServeError::Bind(local, e))?
            .tap_io(|_| {});
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    } else {
        ready(&format!("http://{local}"));
        axum::serve(tcp, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await
    };
    jobs.abort();
    state.store.close().await;
    result.map_err(|e| ServeError::Bind(local, e))
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
