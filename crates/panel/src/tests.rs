//! Router tests: every page and asset answers with the right type, headers and markup, and the
//! shells and scripts stay consistent with each other (ids, imports, labels).

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

use crate::{ASSETS, CONTENT_SECURITY_POLICY, PAGES, asset_version, router};

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn get(path: &str) -> Answer {
    get_with(path, None).await
}

async fn get_with(path: &str, if_none_match: Option<&str>) -> Answer {
    let app: Router = router();
    let mut req = Request::get(path);
    if let Some(tag) = if_none_match {
        req = req.header(header::IF_NONE_MATCH, tag);
    }
    let res = app
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 4 << 20)
        .await
        .expect("body");
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).expect("utf-8 body"),
    }
}

fn header(a: &Answer, name: header::HeaderName) -> &str {
    a.headers
        .get(&name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The concrete URL of a page (a sample id for parameterised routes).
fn url_of(path: &str) -> String {
    path.replace("{id}", "0190f5a0-0000-7000-8000-000000000001")
}

async fn page_html(id: &str) -> String {
    let page = PAGES.iter().find(|p| p.id == id).expect("page exists");
    get(&url_of(page.path)).await.body
}

/// Every value of `attr="…"` in `html`.
fn attr_values(html: &str, attr: &str) -> Vec<String> {
    let needle = format!(" {attr}=\"");
    html.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest[..rest.find('"').expect("closed attribute")].to_owned()
        })
        .collect()
}

/// Every opening tag `<name …>` in `html`, as its full text.
fn tags<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}");
    html.match_indices(&open)
        .filter(|(i, _)| {
            let next = html.as_bytes().get(i + open.len()).copied();
            matches!(next, Some(b' ' | b'>' | b'/'))
        })
        .map(|(i, _)| {
            let end = html[i..].find('>').expect("closed tag");
            &html[i..=i + end]
        })
        .collect()
}

#[tokio::test]
async fn every_page_answers_200_with_its_title_heading_and_headers() {
    for page in PAGES {
        let a = get(&url_of(page.path)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", page.path);
        assert!(
            header(&a, header::CONTENT_TYPE).starts_with("text/html"),
            "{}",
            page.path
        );
        assert_eq!(
            header(&a, header::CONTENT_SECURITY_POLICY),
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(header(&a, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(header(&a, header::X_FRAME_OPTIONS), "DENY");
        assert_eq!(header(&a, header::CACHE_CONTROL), "no-store");
        let title = format!("<title>{} · Keyward</title>", page.title);
        assert!(a.body.contains(&title), "{} lacks {title}", page.path);
        assert_eq!(
            a.body.matches("<h1>").count(),
            1,
            "{} has one h1",
            page.path
        );
        assert!(
            a.body.contains(&format!("<h1>{}</h1>", page.heading)),
            "{}",
            page.path
        );
        assert!(a.body.starts_with("<!DOCTYPE html>"), "{}", page.path);
        assert!(
            a.body.contains(&format!("data-page=\"{}\"", page.id)),
            "{}",
            page.path
        );
    }
}

#[tokio::test]
async fn pages_show_the_issue_s_sections() {
    let users = page_html("users").await;
    for text in [
        "<h2>Users</h2>",
        ">Assign key</button>",
        ">Automated RP Provisioning</button>",
        ">Disable</button>",
        "Select all users on this page",
        ">Retry failed</button>",
        "<progress",
        "<dialog",
        " Microsoft (Entra ID)",
        ">Submit</button>",
        "id=\"pin-dialog\"",
    ] {
        assert!(users.contains(text), "users page lacks {text}");
    }
    let user = page_html("user").await;
    for text in [
        ">Connect to register passkeys</button>",
        ">Disconnect</button>",
        ">Create activation code</button>",
        ">Create a Temporary Access Pass</button>",
        ">Set one-time PIN</button>",
        ">Yes, set a new PIN</button>",
        ">Download CSV</button>",
        ">History</h2>",
        ">Passkeys</h2>",
    ] {
        assert!(user.contains(text), "user page lacks {text}");
    }
    let dirs = page_html("directories").await;
    assert!(dirs.contains("Import from Azure AD"));
    assert!(dirs.contains("Save and test connection"));
    let audit = page_html("audit").await;
    assert!(audit.contains(">Export CSV</button>"));
    let settings = page_html("settings").await;
    for name in [
        "attestation",
        "aaguid",
        "pin_policy",
        "min_pin_length",
        "delegated_session_minutes",
    ] {
        assert!(
            settings.contains(&format!("name=\"{name}\"")),
            "settings lack {name}"
        );
    }
}

#[tokio::test]
async fn public_pages_have_no_navigation_and_private_ones_do() {
    for page in PAGES {
        let html = get(&url_of(page.path)).await.body;
        assert_eq!(
            html.contains("aria-label=\"Main\""),
            !page.public,
            "{}",
            page.path
        );
        assert_eq!(html.contains("data-public"), page.public, "{}", page.path);
    }
}

#[tokio::test]
async fn root_redirects_to_the_users_page() {
    let a = get("/").await;
    assert!(a.status.is_redirection());
    assert_eq!(header(&a, header::LOCATION), "/users");
    assert_eq!(
        header(&a, header::CONTENT_SECURITY_POLICY),
        CONTENT_SECURITY_POLICY
    );
}

#[tokio::test]
async fn unknown_paths_are_not_the_panel_s() {
    assert_eq!(get("/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get("/users/a/b").await.status,
        StatusCode::NOT_FOUND,
        "no catch-all"
    );
}

#[tokio::test]
async fn no_inline_script_style_or_event_handler_in_any_page() {
    for page in PAGES {
        let html = get(&url_of(page.path)).await.body;
        let scripts = tags(&html, "script");
        assert_eq!(scripts.len(), 1, "{}: one entry script", page.path);
        for tag in scripts {
            assert!(tag.contains(" src=\"/assets/"), "{}: {tag}", page.path);
            assert!(tag.contains("type=\"module\""), "{}: {tag}", page.path);
        }
        assert_eq!(
            html.matches("<script").count(),
            html.matches("></script>").count(),
            "{}: every script element is empty",
            page.path
        );
        assert!(!html.contains("<style"), "{}", page.path);
        assert!(!html.contains(" style=\""), "{}", page.path);
        assert!(!html.contains("javascript:"), "{}", page.path);
        for tag in html.split('<').skip(1) {
            let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
            for attr in tag.split_whitespace().skip(1) {
                assert!(
                    !(attr.starts_with("on") && attr.contains('=')),
                    "{}: inline handler {attr}",
                    page.path
                );
            }
        }
    }
}

#[tokio::test]
async fn every_asset_is_served_with_its_type_csp_and_long_cache() {
    for asset in ASSETS {
        let a = get(&format!("/assets/{}/{}", asset_version(), asset.name)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", asset.name);
        assert_eq!(header(&a, header::CONTENT_TYPE), asset.content_type);
        assert_eq!(
            header(&a, header::CACHE_CONTROL),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            header(&a, header::CONTENT_SECURITY_POLICY),
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(header(&a, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(a.body, asset.body);
        assert!(!header(&a, header::ETAG).is_empty());
    }
    let js = ASSETS.iter().find(|a| a.name == "app.js").expect("app.js");
    assert!(js.content_type.starts_with("text/javascript"));
    let css = ASSETS
        .iter()
        .find(|a| a.name == "panel.css")
        .expect("panel.css");
    assert!(css.content_type.starts_with("text/css"));
}

#[tokio::test]
async fn stale_versions_are_served_uncached_and_unknown_files_are_404() {
    let stale = get("/assets/000000000000/app.js").await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(header(&stale, header::CACHE_CONTROL), "no-cache");
    let missing = get(&format!("/assets/{}/secret.txt", asset_version())).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let traversal = get(&format!("/assets/{}/..%2Fsrc%2Flib.rs", asset_version())).await;
    assert_eq!(traversal.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_matching_etag_answers_304_without_a_body() {
    let url = format!("/assets/{}/panel.css", asset_version());
    let etag = header(&get(&url).await, header::ETAG).to_owned();
    let again = get_with(&url, Some(&etag)).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    let other = get_with(&url, Some("\"something-else\"")).await;
    assert_eq!(other.status, StatusCode::OK);
}

#[tokio::test]
async fn pages_link_only_to_assets_that_exist() {
    for page in PAGES {
        let html = get(&url_of(page.path)).await.body;
        let mut urls = attr_values(&html, "src");
        urls.extend(
            attr_values(&html, "href")
                .into_iter()
                .filter(|h| h.starts_with("/assets/")),
        );
        assert!(urls.len() >= 3, "{}: icon, styles and script", page.path);
        for url in urls {
            let a = get(&url).await;
            assert_eq!(a.status, StatusCode::OK, "{}: {url}", page.path);
            assert!(url.contains(asset_version()), "{url} is versioned");
        }
    }
}

fn asset_body(name: &str) -> &'static str {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.body)
        .expect("asset")
}

/// The relative modules a script imports, statically (`from "./x.js"`) or by name in a table.
fn imports(js: &str) -> Vec<String> {
    js.match_indices("\"./")
        .map(|(i, _)| {
            let rest = &js[i + 1..];
            rest[..rest.find('"').expect("closed string")]
                .trim_start_matches("./")
                .to_owned()
        })
        .collect()
}

#[test]
fn every_module_import_resolves_to_an_embedded_asset() {
    for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
        for import in imports(asset.body) {
            assert!(
                ASSETS.iter().any(|a| a.name == import),
                "{} imports {import}, which is not embedded",
                asset.name
            );
        }
    }
    assert!(imports(asset_body("app.js")).len() >= 8);
}

#[test]
fn scripts_never_write_html_or_evaluate_strings() {
    for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "console.log",
        ] {
            assert!(!asset.body.contains(banned), "{} uses {banned}", asset.name);
        }
    }
}

/// Ids a script looks up with a `"#id"` selector.
fn selector_ids(js: &str) -> Vec<String> {
    js.match_indices("\"#")
        .map(|(i, _)| {
            js[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|id| !id.is_empty())
        .collect()
}

#[tokio::test]
async fn every_id_a_script_uses_exists_in_the_pages_that_load_it() {
    let uses: &[(&str, &[&str])] = &[
        ("signin.js", &["signin", "setup"]),
        ("account.js", &["account"]),
        ("users.js", &["users"]),
        ("user.js", &["user"]),
        ("directories.js", &["directories"]),
        ("admins.js", &["admins"]),
        ("audit.js", &["audit"]),
        ("settings.js", &["settings"]),
        ("jobs.js", &["users"]),
        ("jobs.js", &["user"]),
        ("jobs.js", &["directories"]),
        ("pins.js", &["users"]),
        ("pins.js", &["user"]),
        ("app.js", &["users"]),
        ("ui.js", &["audit"]),
    ];
    for (script, pages) in uses {
        let mut html = String::new();
        for page in *pages {
            html.push_str(&page_html(page).await);
        }
        let ids = attr_values(&html, "id");
        for id in selector_ids(asset_body(script)) {
            assert!(
                ids.contains(&id),
                "{script} uses #{id}, missing from {pages:?}"
            );
        }
    }
}

#[tokio::test]
async fn form_controls_are_labelled_and_header_cells_scoped() {
    for page in PAGES {
        let html = get(&url_of(page.path)).await.body;
        let label_targets = attr_values(&html, "for");
        for tag in tags(&html, "input")
            .into_iter()
            .chain(tags(&html, "select"))
        {
            let labelled = tag.contains("aria-label=\"")
                || attr_values(tag, "id")
                    .first()
                    .is_some_and(|id| label_targets.contains(id));
            // Radio buttons and checkboxes sit inside their <label class="choice">.
            let wrapped = tag.contains("type=\"radio\"") || tag.contains("type=\"checkbox\"");
            assert!(labelled || wrapped, "{}: unlabelled {tag}", page.path);
        }
        for th in tags(&html, "th") {
            assert!(th.contains(" scope=\""), "{}: {th} needs scope", page.path);
        }
        for tag in tags(&html, "button") {
            assert!(
                tag.contains(" type=\""),
                "{}: {tag} needs a type",
                page.path
            );
        }
    }
}

#[test]
fn the_router_merges_into_a_stateful_server_router() {
    // The server mounts the panel with `.merge(keyward_panel::router())` on its own state type.
    #[derive(Clone)]
    struct ServerState;
    let api: Router<ServerState> =
        Router::new().route("/api/v1/ping", axum::routing::get(|| async { "pong" }));
    let _app: Router = api.merge(router()).with_state(ServerState);
}
