//! The panel's static files, embedded in the binary so a Keyward installation is one file.
//!
//! Assets are served under `/assets/{version}/{file}`, where `version` is a digest of all of them.
//! A page therefore always asks for the script and styles it was rendered with, and browsers may
//! keep them forever (`immutable`). A request for another version (a page rendered by an older
//! binary, during an upgrade) still gets the current file, but with `no-cache`, so it is never
//! pinned in a cache under a name that does not describe it. The JavaScript modules import each
//! other by relative path, so they stay within one version too.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("../assets/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the panel serves. `app.js` is the entry module; the others are imported by it.
pub static ASSETS: &[Asset] = &[
    asset!("panel.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("jobs.js", JS),
    asset!("pins.js", JS),
    asset!("signin.js", JS),
    asset!("account.js", JS),
    asset!("webauthn.js", JS),
    asset!("users.js", JS),
    asset!("user.js", JS),
    asset!("directories.js", JS),
    asset!("admins.js", JS),
    asset!("audit.js", JS),
    asset!("settings.js", JS),
];

static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut digest = Sha256::new();
    for asset in ASSETS {
        digest.update(asset.name.as_bytes());
        digest.update([0]);
        digest.update(asset.body.as_bytes());
        digest.update([0]);
    }
    hex::encode(&digest.finalize()[..6])
});

/// The digest that names the current set of assets in their URLs.
pub fn asset_version() -> &'static str {
    &VERSION
}

/// The URL of an embedded asset at the current version.
pub(crate) fn url(name: &str) -> String {
    format!("/assets/{}/{name}", asset_version())
}

pub(crate) async fn serve(
    Path((version, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    // The strong ETag is the set's version plus the name: both change whenever the bytes could.
    let etag = format!("\"{}-{}\"", asset_version(), asset.name);
    let cache = if version == asset_version() {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response
}
