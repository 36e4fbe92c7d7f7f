//! `keyward-graph-sim`: a Microsoft Graph and Entra ID token endpoint simulator.
//!
//! It serves the endpoints Keyward uses, shaped as real Graph answers them (see
//! `shared/protocol/graph.md`): the client-credentials token endpoint (secret or certificate
//! assertion), users and groups with paging and delta, passkey creation options and registration
//! (verified as a relying party would: clientDataJSON, rpIdHash, flags, attestation signature,
//! AAGUID policy), Temporary Access Passes and the FIDO2 policy. A control API under `/_sim`
//! injects faults (latency, 5xx, 429, dropped connections, malformed JSON, missing permission,
//! token expiry) and proves a registered passkey works through a sign-in ceremony.
//!
//! Control API (no authentication; loopback only):
//!
//! | request | effect |
//! |---|---|
//! | `POST /_sim/users {userPrincipalName, displayName?}` | add a user (201 `{id}`) |
//! | `PATCH /_sim/users/{id} {displayName?, accountEnabled?}` / `DELETE /_sim/users/{id}` | change / remove (delta reports it) |
//! | `POST /_sim/faults {latency_ms?, forbid?, fault?, count?, attestation_enforced?}` | `fault` is `{"kind":"status","status":503,"retry_after":2}`, `{"kind":"throttle","retry_after":2}`, `{"kind":"drop"}` or `{"kind":"malformed"}`, queued `count` times |
//! | `POST /_sim/tokens/expire` | every issued access token expires |
//! | `POST /_sim/delta/expire {code: "syncStateNotFound"\|"resyncRequired"}` | every delta token answers 410 |
//! | `GET` / `PUT /_sim/policy` | the FIDO2 policy (Graph's JSON shape) |
//! | `GET /_sim/signin/challenge?user=UPN`, `POST /_sim/signin {user, id, clientDataJSON, authenticatorData, signature, userHandle?}` | prove a registered passkey signs in |
//! | `GET /_sim/stats` | request and user counts |
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let sim = keyward_graph_sim::spawn(keyward_graph_sim::SimConfig::default()).await?;
//! println!("authority and graph url: http://{}", sim.addr);
//! # Ok(()) }
//! ```

mod control;
mod directory;
mod error;
mod fido;
mod http;
mod state;
mod token;
pub mod webauthn;

use std::net::SocketAddr;
use std::time::Duration;

pub use control::{SigninAssertion, SigninOk, SimControl};
pub use state::{DeltaReset, Fault, Fido2Policy, KeyRestrictions, PolicyTarget, Simulator};

/// The relying party id Entra puts in creation options; the origin is `https://` + this.
pub const RP_ID: &str = "login.microsoft.com";

/// How the simulated tenant is set up.
#[derive(Clone)]
pub struct SimConfig {
    pub tenant_id: String,
    /// The tenant's primary domain; UPNs are made in it, and the token endpoint accepts it too.
    pub domain: String,
    pub client_id: String,
    pub client_secret: String,
    /// DER certificates registered on the app, for client assertions.
    pub client_certificates: Vec<Vec<u8>>,
    /// Number of seeded users (user 0 is the consenting admin).
    pub users: usize,
    pub seed: u64,
    /// Added to every Graph request.
    pub latency: Duration,
    /// UPN of the account that granted the app its permissions: Entra refuses to provision it (405).
    pub consenting_admin: String,
    /// Graph's identity write limit per app and tenant: 3,000 per 150 s.
    pub write_limit: u32,
    pub write_window: Duration,
    /// Resource units per 10 s per app and tenant; `None` takes Graph's figure for the tenant's
    /// size (3,500 under 50 users, 5,000 up to 500, 8,000 above).
    pub read_limit: Option<u32>,
    pub token_lifetime: Duration,
    pub policy: Fido2Policy,
    /// DER certificates trusted as attestation roots when the policy enforces attestation (the
    /// simulator's stand-in for FIDO MDS); empty means every registration fails enforcement, as a
    /// software authenticator does against real Entra.
    pub attestation_roots: Vec<Vec<u8>>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            tenant_id: "6b1f3c2e-9d4a-4c1b-8a51-2f7e0d9c4b10".into(),
            domain: "contoso.example".into(),
            client_id: "3f5a2c8e-1b7d-4e6f-9a0b-c1d2e3f4a5b6".into(),
            client_secret: "sim~secret.value-0123456789".into(),
            client_certificates: Vec::new(),
            users: 100,
            seed: 1,
            latency: Duration::ZERO,
            consenting_admin: "admin@contoso.example".into(),
            write_limit: 3000,
            write_window: Duration::from_secs(150),
            read_limit: None,
            token_lifetime: Duration::from_secs(3599),
            policy: Fido2Policy::default(),
            attestation_roots: Vec::new(),
        }
    }
}

impl std::fmt::Debug for SimConfig {
    // The client secret is left out: it is a credential, even a simulated one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("tenant_id", &self.tenant_id)
            .field("domain", &self.domain)
            .field("client_id", &self.client_id)
            .field("users", &self.users)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// A simulator serving on a loopback socket.
pub struct RunningSim {
    pub addr: SocketAddr,
    pub handle: tokio::task::JoinHandle<()>,
    pub control: SimControl,
}

impl RunningSim {
    /// `http://ADDR`: use it as both `authority_url` and `graph_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Builds the axum router of a simulator (for embedding, or `tower::ServiceExt::oneshot` tests).
pub fn router(sim: Simulator) -> axum::Router {
    http::router(sim)
}

/// Binds 127.0.0.1 on an ephemeral port and serves a new simulator in the background.
pub async fn spawn(config: SimConfig) -> std::io::Result<RunningSim> {
    spawn_on(
        "127.0.0.1:0".parse().expect("invariant: literal address"),
        config,
    )
    .await
}

/// Binds `addr` and serves a new simulator in the background.
pub async fn spawn_on(addr: SocketAddr, config: SimConfig) -> std::io::Result<RunningSim> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let sim = Simulator::new(config);
    let control = SimControl::new(sim.clone());
    let app = router(sim);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "graph simulator stopped");
        }
    });
    Ok(RunningSim {
        addr,
        handle,
        control,
    })
}
