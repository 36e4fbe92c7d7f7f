//! The bootstrap operations behind `keyward org|admin|token|audit`, working on the database
//! directly (the server may or may not be running). Each write is audited like an API write.

use keyward_store::{AuditVerifyError, AuditVerifyReport, OrganisationRecord, Store, StoreError};
use serde_json::json;

use crate::auth::{self, Principal, Role};

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("an organisation named {0:?} already exists")]
    OrgExists(String),
    #[error("no organisation named {0:?}")]
    NoSuchOrg(String),
    #[error("no admin with e-mail {0:?}")]
    NoSuchAdmin(String),
    #[error("e-mail {0:?} is an admin in several organisations; pass --org")]
    AmbiguousAdmin(String),
    #[error("an admin with e-mail {0:?} already exists in this organisation")]
    AdminExists(String),
    #[error("invalid: {0}")]
    Invalid(String),
}

pub async fn create_org(store: &Store, name: &str) -> Result<OrganisationRecord, BootstrapError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(BootstrapError::Invalid(
            "organisation name must be 1 to 200 characters".into(),
        ));
    }
    let mut tx = store.begin().await?;
    let org = tx.insert_organisation(name).await.map_err(|e| match e {
        StoreError::Conflict(_) => BootstrapError::OrgExists(name.to_owned()),
        other => other.into(),
    })?;
    tx.append_audit(
        org.id,
        "cli",
        "org.create",
        &format!("org:{}", org.id),
        json!({"name": name}),
    )
    .await?;
    tx.commit().await?;
    Ok(org)
}

pub async fn create_admin(
    store: &Store,
    org_name: &str,
    email: &str,
    role: Role,
    password: &str,
) -> Result<keyward_store::AdminRecord, BootstrapError> {
    let email = email.trim();
    if !email.contains('@') || email.len() > 254 {
        return Err(BootstrapError::Invalid(
            "email must look like name@domain".into(),
        ));
    }
    if password.chars().count() < 12 {
        return Err(BootstrapError::Invalid(
            "the password must have at least 12 characters".into(),
        ));
    }
    let org = store
        .organisation_by_name(org_name)
        .await?
        .ok_or_else(|| BootstrapError::NoSuchOrg(org_name.into()))?;
    if !store.admins_by_email(Some(org.id), email).await?.is_empty() {
        return Err(BootstrapError::AdminExists(email.into()));
    }
    let hash = auth::hash_password(password).map_err(|e| BootstrapError::Invalid(e.to_string()))?;
    let mut tx = store.begin().await?;
    let admin = tx.insert_admin(org.id, email, role.as_str(), &hash).await?;
    tx.append_audit(
        org.id,
        "cli",
        "admin.create",
        &format!("admin:{}", admin.id),
        json!({"email": email, "role": role.as_str()}),
    )
    .await?;
    tx.commit().await?;
    Ok(admin)
}

/// The one admin with this e-mail address, in the named organisation when one is given.
async fn find_admin(
    store: &Store,
    org_name: Option<&str>,
    email: &str,
) -> Result<keyward_store::AdminRecord, BootstrapError> {
    let org_id = match org_name {
        Some(n) => Some(
            store
                .organisation_by_name(n)
                .await?
                .ok_or_else(|| BootstrapError::NoSuchOrg(n.into()))?
                .id,
        ),
        None => None,
    };
    let mut admins = store.admins_by_email(org_id, email).await?;
    match admins.len() {
        0 => Err(BootstrapError::NoSuchAdmin(email.into())),
        1 => Ok(admins.remove(0)),
        _ => Err(BootstrapError::AmbiguousAdmin(email.into())),
    }
}

/// Creates an API token for an admin and returns it (the only time it exists in the clear).
pub async fn create_token(
    store: &Store,
    org_name: Option<&str>,
    email: &str,
    name: &str,
) -> Result<String, BootstrapError> {
    let admin = find_admin(store, org_name, email).await?;
    let role =
        Role::parse(&admin.role).ok_or_else(|| BootstrapError::Invalid("unknown role".into()))?;
    let p = Principal {
        admin_id: admin.id,
        org_id: admin.org_id,
        role,
        email: admin.email,
    };
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(BootstrapError::Invalid(
            "token name must be 1 to 100 characters".into(),
        ));
    }
    let (_, token) = crate::api::create_api_token(store, &p, name)
        .await
        .map_err(|e| BootstrapError::Invalid(e.to_string()))?;
    Ok(token)
}

/// How long the first-run set-up link works.
pub const SETUP_LINK_HOURS: i64 = 24;
/// How long a sign-in link works.
pub const SIGNIN_LINK_MINUTES: i64 = 15;

/// While no admin exists, makes a fresh one-time set-up link under `base_url` (the public URL)
/// and returns it; any link made before stops working. `None` once an admin exists.
pub async fn setup_link(store: &Store, base_url: &str) -> Result<Option<String>, BootstrapError> {
    if store.admin_count().await? > 0 {
        return Ok(None);
    }
    let token = zeroize::Zeroizing::new(auth::new_secret("kwsetup_"));
    let expires = chrono::Utc::now() + chrono::Duration::hours(SETUP_LINK_HOURS);
    store
        .replace_setup_token(&auth::secret_hash(&token), expires.timestamp_millis())
        .await?;
    // In the fragment: browsers never send it to the server, so it reaches no access log.
    Ok(Some(format!(
        "{}/setup#token={}",
        base_url.trim_end_matches('/'),
        token.as_str()
    )))
}

/// Makes a one-time sign-in link for an existing, enabled admin (audited); it works once, for
/// [`SIGNIN_LINK_MINUTES`] minutes.
pub async fn login_link(
    store: &Store,
    org_name: Option<&str>,
    email: &str,
    base_url: &str,
) -> Result<String, BootstrapError> {
    let admin = find_admin(store, org_name, email).await?;
    if admin.disabled {
        return Err(BootstrapError::Invalid(format!(
            "the admin {email} is disabled"
        )));
    }
    let token = zeroize::Zeroizing::new(auth::new_secret("kwlink_"));
    let expires = chrono::Utc::now() + chrono::Duration::minutes(SIGNIN_LINK_MINUTES);
    let mut tx = store.begin().await?;
    tx.insert_one_time_token(
        &auth::secret_hash(&token),
        keyward_store::token_kind::SIGNIN,
        Some(admin.id),
        expires.timestamp_millis(),
    )
    .await?;
    tx.append_audit(
        admin.org_id,
        "cli",
        "auth.link_issued",
        &format!("admin:{}", admin.id),
        json!({"email": admin.email, "expires_at": expires}),
    )
    .await?;
    tx.commit().await?;
    Ok(format!(
        "{}/sign-in#link={}",
        base_url.trim_end_matches('/'),
        token.as_str()
    ))
}

pub async fn verify_audit(
    store: &Store,
) -> Result<Result<AuditVerifyReport, AuditVerifyError>, BootstrapError> {
    Ok(store.verify_audit().await?)
}
