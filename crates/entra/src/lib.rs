//! Microsoft Graph client for Keyward: app-only tokens (client secret or certificate), users
//! import (paging, delta, groups), passkey provisioning (creationOptions → registration),
//! Temporary Access Passes and the FIDO2 policy pre-flight; 429/503 honour Retry-After, other
//! failures retry with backoff; sovereign clouds and simulators through `authority_url` and
//! `graph_url`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyward_entra::EntraError> {
//! use keyward_entra::*;
//! let config = EntraConfig::new("tenant-id", "client-id", ClientCredential::Secret(Secret::new("…")));
//! let graph = GraphClient::new(config)?;
//! let mut pages = graph.users(UserSource::Delta { delta_link: None });
//! while let Some(page) = pages.next_page().await {
//!     let page = page?;
//!     // upsert page.users, mark page.removed; store page.delta_link when page.last
//! }
//! # Ok(()) }
//! ```

mod auth;
mod client;
mod config;
mod error;
mod methods;
mod passkeys;
mod users;

pub use client::{ApiVersion, GraphClient};
pub use config::{
    AssertionAlg, CertificateCredential, ClientCredential, DEFAULT_AUTHORITY_URL,
    DEFAULT_GRAPH_URL, EntraConfig, RetryPolicy, Secret, validate_base_url,
};
pub use error::{EntraError, ErrorKind};
pub use methods::{
    Fido2Policy, KeyRestrictions, OurAuthenticator, PolicyTarget, Preflight, TapRequest,
    TemporaryAccessPass,
};
pub use passkeys::{
    AuthenticatorRequest, CreationOptions, Fido2Method, Registration, SUPPORTED_ALGORITHMS,
    client_data_json, decode_credential_id,
};
pub use users::{DirectoryUser, USER_SELECT, UserPage, UserPages, UserSource};
