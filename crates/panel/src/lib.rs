//! Keyward's admin panel.
//!
//! The panel is a set of server-rendered HTML *shells* (one per page, rendered with maud) and a small
//! embedded vanilla JavaScript module that loads and changes everything through the documented REST
//! API (`/api/v1/…`, session cookie plus `X-CSRF-Token`). The shells carry no data at all, so every
//! permission check stays in the server's API; the script only hides what the signed-in admin's role
//! may not do, as a convenience.
//!
//! The crate knows nothing about the server's state: [`router`] is generic over it, so the server
//! mounts the panel with one line, `.merge(keyward_panel::router())`.
//!
//! Every response from this router carries a strict Content-Security-Policy (`default-src 'self'`, no
//! inline scripts or styles), `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and a
//! frame-ancestors/X-Frame-Options pair so the panel cannot be framed for click-jacking.

mod assets;
mod pages;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{Redirect, Response};
use axum::routing::get;

pub use assets::{ASSETS, Asset, asset_version};
pub use pages::{PAGES, Page};

/// The Content-Security-Policy of every panel response.
///
/// `default-src 'self'` is the base; the rest only narrows it: no plugins, no `<base>` tricks, forms
/// post only here, and no other site may frame the panel. `connect-src 'self'` covers both `fetch`
/// and the server-sent job events.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The panel's routes: every page shell, the embedded assets, and `/` sending the browser to the
/// users page (the panel's home).
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut router = Router::new()
        .route("/", get(|| async { Redirect::to("/users") }))
        .route("/assets/{version}/{file}", get(assets::serve));
    for page in PAGES {
        router = router.route(page.path, get(move || async move { pages::render(page) }));
    }
    router.layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 5] = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests;
