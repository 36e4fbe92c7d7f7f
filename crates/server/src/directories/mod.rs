//! Entra ID directories: the connection (client secret sealed by the vault), its pre-flight, and
//! the import job that brings its users in.

pub mod api;
mod import;

pub use import::{IMPORT_KIND, ImportKind};

use std::sync::Arc;

use keyward_entra::{ClientCredential, EntraConfig, GraphClient, Secret};
use keyward_store::DirectoryRecord;
use keyward_vault::Vault;

/// Why a directory connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The sealed client secret did not open (vault unavailable, or the row was tampered with).
    #[error("the directory's client secret could not be opened: {0}")]
    Vault(#[from] keyward_vault::VaultError),
    #[error("{}", .0.reason())]
    Entra(#[from] keyward_entra::EntraError),
}

/// Opens a Graph client for a stored directory; the secret is unsealed only into the client.
pub fn graph_client(vault: &Vault, dir: &DirectoryRecord) -> Result<GraphClient, DirectoryError> {
    let context = DirectoryRecord::secret_context(dir.org_id, dir.id);
    let secret = vault.open_secret(&context, &dir.sealed_client_secret)?;
    let secret = String::from_utf8(secret.to_vec()).map_err(|_| {
        keyward_entra::EntraError::new(
            keyward_entra::ErrorKind::Config,
            "the stored client secret is not text",
        )
    })?;
    let config = EntraConfig::new(
        &dir.tenant_id,
        &dir.client_id,
        ClientCredential::Secret(Secret::new(secret)),
    )
    .with_authority_url(&dir.authority_url)
    .with_graph_url(&dir.graph_url);
    Ok(GraphClient::new(config)?)
}

/// The vault and store a directory needs, shared by the API and the job kinds.
#[derive(Clone)]
pub struct DirectoryDeps {
    pub store: keyward_store::Store,
    pub vault: Arc<Vault>,
}
