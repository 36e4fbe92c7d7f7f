//! The REST API under `/api/v1`, built from one route table.
//!
//! Every route is declared in [`routes`] with the permission it needs, and [`router`] wraps each
//! one in the guard that authenticates the caller and checks that permission (design.md invariant
//! 8). Handlers get the caller through the [`Principal`] extractor, which only the guard can
//! satisfy, so a route added outside the table cannot run as anyone. Objects are always looked up
//! with the caller's organisation, so another organisation's ids answer 404.

mod admins;
mod audit;
mod auth_routes;
mod keys;
mod passkeys;
pub mod settings;
mod setup;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::MethodRouter;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_store::Store;
use keyward_vault::Vault;
use utoipa::OpenApi;

use crate::auth::{Principal, RateLimiter, Role, authenticate};
use crate::error::{ApiError, problem_response};
use crate::metrics::Metrics;

pub use auth_routes::create_api_token;
pub use keys::{CtapError, CtapService};

/// JSON bodies are small; CSV imports may be larger.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;
pub const CSV_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Everything a handler may use; passed explicitly, no globals.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub vault: Arc<Vault>,
    pub metrics: Arc<Metrics>,
    pub login_limiter: Arc<RateLimiter>,
    pub session_hours: i64,
    /// Whether session cookies get the `Secure` attribute (the server speaks TLS).
    pub secure_cookies: bool,
    /// The AAGUID of new security keys.
    pub aaguid: [u8; 16],
    /// The key-operations engine behind `POST /keys/{id}/ctap`; absent in builds without it.
    pub ctap: Option<Arc<dyn CtapService>>,
    /// The relay hub for pairing tools; absent in builds and tests without it.
    pub relay: Option<Arc<crate::relay::RelayHub>>,
    /// The WebAuthn relying party of admin passkeys (from `public_url`); without it the passkey
    /// routes answer 409.
    pub relying_party: Option<Arc<crate::auth::RelyingParty>>,
}

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// No authentication (login, the OpenAPI document).
    Public,
    /// Any authenticated admin.
    Authenticated,
    /// Read users, keys and credentials: every role.
    ViewUsers,
    /// Create, edit, disable and import users; assign, suspend, resume and revoke keys.
    ManageUsers,
    /// Issue activation codes (helping a user set up their key).
    IssueActivation,
    /// Set a one-time PIN on a user's key (a forgotten or blocked PIN): owners, admins and
    /// helpdesk.
    ResetPins,
    /// Read the audit log.
    ViewAudit,
    /// Send CTAP messages to a key (registration on a user's behalf).
    UseKeys,
    /// Organisation settings such as directory connections: owners only.
    ManageSettings,
    /// See the organisation's admins: everyone but helpdesk.
    ViewAdmins,
    /// Read organisation settings (AAGUID, attestation, PIN policy, session length): everyone
    /// but helpdesk; only owners change them (`ManageSettings`).
    ViewSettings,
    /// Add admins, change roles, disable admins: owners only.
    ManageAdmins,
}

impl Permission {
    /// The role matrix of design.md "Words": owner everything; admin users, keys and
    /// provisioning; helpdesk view and help; auditor read-only including the audit log.
    pub fn allows(self, role: Role) -> bool {
        use Role::*;
        match self {
            Permission::Public | Permission::Authenticated | Permission::ViewUsers => true,
            Permission::ManageUsers | Permission::UseKeys => matches!(role, Owner | Admin),
            Permission::IssueActivation | Permission::ResetPins => {
                matches!(role, Owner | Admin | Helpdesk)
            }
            Permission::ViewAudit => matches!(role, Owner | Admin | Auditor),
            Permission::ManageSettings | Permission::ManageAdmins => matches!(role, Owner),
            Permission::ViewAdmins => matches!(role, Owner | Admin | Auditor),
            Permission::ViewSettings => matches!(role, Owner | Admin | Auditor),
        }
    }
}

/// One row of the route table.
pub struct RouteSpec {
    pub method: Method,
    /// The path under `/api/v1`, in axum syntax (`/users/{id}`).
    pub path: &'static str,
    pub permission: Permission,
    pub handler: MethodRouter<AppState>,
    /// A body limit other than [`JSON_BODY_LIMIT`].
    pub body_limit: Option<usize>,
}

fn route(
    method: Method,
    path: &'static str,
    permission: Permission,
    handler: MethodRouter<AppState>,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        permission,
        handler,
        body_limit: None,
    }
}

/// The route table: the only place API routes are declared.
pub fn routes() -> Vec<RouteSpec> {
    use Permission::*;
    use axum::routing::{get, patch, post};
    vec![
        route(Method::GET, "/openapi.json", Public, get(openapi_json)),
        route(
            Method::POST,
            "/auth/login",
            Public,
            post(auth_routes::login),
        ),
        route(
            Method::POST,
            "/auth/logout",
            Authenticated,
            post(auth_routes::logout),
        ),
        route(Method::GET, "/auth/me", Authenticated, get(auth_routes::me)),
        route(
            Method::POST,
            "/auth/passkey/begin",
            Public,
            post(passkeys::sign_in_begin),
        ),
        route(
            Method::POST,
            "/auth/passkey/finish",
            Public,
            post(passkeys::sign_in_finish),
        ),
        route(
            Method::POST,
            "/auth/link",
            Public,
            post(setup::sign_in_with_link),
        ),
        route(Method::GET, "/setup", Public, get(setup::status)),
        route(Method::POST, "/setup", Public, post(setup::setup)),
        // Every role manages its own passkeys: it is their own account, not the organisation's.
        route(
            Method::GET,
            "/account/passkeys",
            Authenticated,
            get(passkeys::list),
        ),
        route(
            Method::POST,
            "/account/passkeys",
            Authenticated,
            post(passkeys::register_finish),
        ),
        route(
            Method::POST,
            "/account/passkeys/begin",
            Authenticated,
            post(passkeys::register_begin),
        ),
        route(
            Method::PATCH,
            "/account/passkeys/{id}",
            Authenticated,
            patch(passkeys::rename),
        ),
        route(
            Method::DELETE,
            "/account/passkeys/{id}",
            Authenticated,
            axum::routing::delete(passkeys::delete),
        ),
        route(
            Method::POST,
            "/tokens",
            Authenticated,
            post(auth_routes::create_token),
        ),
        route(Method::GET, "/users", ViewUsers, get(users::list)),
        route(Method::POST, "/users", ManageUsers, post(users::create)),
        RouteSpec {
            body_limit: Some(CSV_BODY_LIMIT),
            ..route(
                Method::POST,
                "/users/import-csv",
                ManageUsers,
                post(users::import_csv),
            )
        },
        route(Method::GET, "/users/{id}", ViewUsers, get(users::get_one)),
        route(
            Method::PATCH,
            "/users/{id}",
            ManageUsers,
            patch(users::update),
        ),
        route(
            Method::POST,
            "/users/{id}/disable",
            ManageUsers,
            post(users::disable),
        ),
        route(
            Method::POST,
            "/users/{id}/enable",
            ManageUsers,
            post(users::enable),
        ),
        route(
            Method::GET,
            "/users/{id}/credentials",
            ViewUsers,
            get(keys::credentials),
        ),
        route(
            Method::POST,
            "/users/{id}/key",
            ManageUsers,
            post(keys::assign_one),
        ),
        route(
            Method::POST,
            "/users/{id}/activation",
            IssueActivation,
            post(users::activation),
        ),
        route(
            Method::POST,
            "/users/{id}/connect",
            UseKeys,
            post(crate::relay::api::connect),
        ),
        route(
            Method::DELETE,
            "/users/{id}/connect",
            UseKeys,
            axum::routing::delete(crate::relay::api::disconnect),
        ),
        route(
            Method::POST,
            "/pair/devices",
            Authenticated,
            post(crate::relay::api::register_device),
        ),
        route(
            Method::GET,
            "/pair/devices",
            Authenticated,
            get(crate::relay::api::list_devices),
        ),
        route(
            Method::DELETE,
            "/pair/devices/{id}",
            Authenticated,
            axum::routing::delete(crate::relay::api::revoke),
        ),
        route(
            Method::POST,
            "/keys/assign",
            ManageUsers,
            post(keys::assign_many),
        ),
        route(Method::GET, "/keys/{id}", ViewUsers, get(keys::get_one)),
        route(
            Method::POST,
            "/keys/{id}/suspend",
            ManageUsers,
            post(keys::suspend),
        ),
        route(
            Method::POST,
            "/keys/{id}/resume",
            ManageUsers,
            post(keys::resume),
        ),
        route(
            Method::POST,
            "/keys/{id}/revoke",
            ManageUsers,
            post(keys::revoke),
        ),
        route(
            Method::POST,
            "/keys/{id}/pin",
            ResetPins,
            post(keys::set_one_time_pin),
        ),
        route(Method::POST, "/keys/{id}/ctap", UseKeys, post(keys::ctap)),
        route(Method::GET, "/audit", ViewAudit, get(audit::list)),
        route(Method::GET, "/admins", ViewAdmins, get(admins::list)),
        route(Method::POST, "/admins", ManageAdmins, post(admins::create)),
        route(
            Method::PATCH,
            "/admins/{id}",
            ManageAdmins,
            patch(admins::update),
        ),
        route(
            Method::GET,
            "/jobs/{id}",
            ViewUsers,
            get(crate::jobs::api::get_job),
        ),
        route(
            Method::GET,
            "/jobs/{id}/events",
            ViewUsers,
            get(crate::jobs::api::events),
        ),
        route(
            Method::POST,
            "/jobs/{id}/retry",
            ManageUsers,
            post(crate::jobs::api::retry),
        ),
        route(
            Method::POST,
            "/jobs/{id}/cancel",
            ManageUsers,
            post(crate::jobs::api::cancel),
        ),
        route(
            Method::GET,
            "/directories",
            ViewUsers,
            get(crate::directories::api::list),
        ),
        route(
            Method::POST,
            "/directories/entra",
            ManageSettings,
            post(crate::directories::api::create),
        ),
        route(
            Method::POST,
            "/directories/{id}/import",
            ManageUsers,
            post(crate::directories::api::import),
        ),
        route(
            Method::POST,
            "/directories/{id}/test",
            ManageUsers,
            post(crate::directories::api::test),
        ),
        route(
            Method::POST,
            "/provisioning",
            ManageUsers,
            post(crate::provisioning::api::start),
        ),
        route(
            Method::POST,
            "/jobs/{id}/items/{user_id}/tap",
            ManageUsers,
            post(crate::provisioning::api::reveal_tap),
        ),
        route(Method::GET, "/settings", ViewSettings, get(settings::get)),
        route(
            Method::PUT,
            "/settings",
            ManageSettings,
            axum::routing::put(settings::put),
        ),
    ]
}

#[derive(Clone)]
struct Guard {
    state: AppState,
    permission: Permission,
}

/// Authenticates and authorises one request against its route's permission.
async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    if g.permission != Permission::Public {
        let principal = authenticate(&g.state.store, req.method(), req.headers()).await?;
        if !g.permission.allows(principal.role) {
            return Err(ApiError::Forbidden);
        }
        req.extensions_mut().insert(principal);
    }
    Ok(next.run(req).await)
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Only the guard inserts a principal; a handler reached without it is a wiring bug, and
        // refusing is the safe answer.
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(ApiError::Unauthenticated)
    }
}

/// The `/api/v1` router. Each route's method router gets its guard before being merged.
pub fn router(state: AppState) -> Router {
    let mut r: Router<AppState> = Router::new();
    for spec in routes() {
        let g = Guard {
            state: state.clone(),
            permission: spec.permission,
        };
        let limit = spec.body_limit.unwrap_or(JSON_BODY_LIMIT);
        let mr = spec
            .handler
            .layer(DefaultBodyLimit::max(limit))
            .route_layer(middleware::from_fn_with_state(g, guard));
        r = r.route(spec.path, mr);
    }
    Router::new()
        .nest("/api/v1", r.fallback(api_not_found))
        .with_state(state)
}

async fn api_not_found() -> ApiError {
    ApiError::NotFound
}

/// `Json` whose rejections are problem+json.
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(e) => Err(match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    ApiError::UnsupportedMediaType("expected application/json".into())
                }
                StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(e.body_text()),
                _ => ApiError::BadRequest(e.body_text()),
            }),
        }
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `Query` whose rejections are problem+json.
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}

/// A UUID path parameter; anything else is 404 (it cannot name an object).
pub struct IdPath(pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<uuid::Uuid>::from_request_parts(parts, state)
            .await
            .map(|p| IdPath(p.0))
            .map_err(|_| ApiError::NotFound)
    }
}

pub(crate) fn bytes_rejection(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge
    } else {
        ApiError::BadRequest(e.body_text())
    }
}

/// Page size: 50 by default, 1 to 200.
pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(50),
        Some(l) if (1..=200).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::BadRequest(
            "limit must be between 1 and 200".into(),
        )),
    }
}

pub(crate) fn encode_cursor(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

pub(crate) fn decode_cursor(c: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::BadRequest("invalid cursor".into()))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Keyward API", description = "Manage users, their security keys and the audit log."),
    paths(
        auth_routes::login, auth_routes::logout, auth_routes::me, auth_routes::create_token,
        passkeys::sign_in_begin, passkeys::sign_in_finish, setup::sign_in_with_link, setup::status,
        setup::setup, passkeys::list, passkeys::register_finish, passkeys::register_begin,
        passkeys::rename, passkeys::delete,
        users::list, users::create, users::import_csv, users::get_one, users::update, users::disable,
        users::enable, users::activation,
        crate::relay::api::connect, crate::relay::api::disconnect, crate::relay::api::register_device,
        crate::relay::api::list_devices, crate::relay::api::revoke,
        keys::credentials, keys::assign_one, keys::assign_many, keys::get_one, keys::suspend,
        keys::resume, keys::revoke, keys::set_one_time_pin, keys::ctap,
        audit::list,
        admins::list, admins::create, admins::update,
        crate::jobs::api::get_job, crate::jobs::api::events, crate::jobs::api::retry, crate::jobs::api::cancel,
        crate::directories::api::list, crate::directories::api::create, crate::directories::api::import,
        crate::directories::api::test, crate::provisioning::api::start, crate::provisioning::api::reveal_tap,
        settings::get, settings::put,
    ),
    components(schemas(crate::error::Problem)),
    modifiers(&SecurityAddon),
    security(("bearer" = []), ("session" = [])),
)]
pub struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::SESSION_COOKIE,
            ))),
        );
        document_problems(openapi);
    }
}

/// Every error of every operation is a problem+json body (the one mapping in `error.rs`), so the
/// document says so for all of them, including operations whose annotations forgot: each error
/// response gets the `Problem` schema under `application/problem+json`, and a `4XX` catch-all is
/// added where none is documented (authentication, authorisation, body limits and media types
/// apply to every route).
fn document_problems(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
    let problem = || Content::new(Some(Ref::from_schema_name("Problem")));
    for item in openapi.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for op in ops.into_iter().flatten() {
            let responses = &mut op.responses.responses;
            for (status, resp) in responses.iter_mut() {
                if (status.starts_with('4') || status.starts_with('5'))
                    && let RefOr::T(r) = resp
                {
                    r.content.clear();
                    r.content
                        .insert("application/problem+json".into(), problem());
                }
            }
            if !responses.contains_key("4XX") {
                let r = ResponseBuilder::new()
                    .description("The request was refused; see the problem details")
                    .content("application/problem+json", problem())
                    .build();
                responses.insert("4XX".into(), RefOr::T(r));
            }
        }
    }
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// A problem response for layers outside the handlers (e.g. unmatched paths).
pub fn not_found_response() -> Response {
    problem_response(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such resource".into(),
    )
}
