//! The router and the middleware every Graph request passes: request ids, latency, injected
//! faults, bearer-token and permission checks, and the write throttle.

use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::{GraphError, GraphErrorBody, graph_error_json};
use crate::state::{Fault, Simulator};
use crate::{control, directory, fido, token};

/// Which Graph API version a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    Beta,
}

impl ApiVersion {
    pub fn path(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1.0",
            ApiVersion::Beta => "beta",
        }
    }
}

/// Graph's JSON content type, as it sends it.
pub const ODATA_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// A JSON response with Graph's content type.
pub fn odata(status: StatusCode, value: serde_json::Value) -> Response {
    let mut resp = (status, value.to_string()).into_response();
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static(ODATA_JSON));
    resp
}

/// The base URL clients reached us on, for `@odata.nextLink` and `@odata.deltaLink`.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// Percent-encodes a query value (RFC 3986 unreserved characters and `$` stay as they are).
pub fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'$' | b',') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn graph_routes(sim: Simulator, version: ApiVersion) -> Router<Simulator> {
    let fido2 = "/users/{user}/authentication/fido2Methods";
    let policy = "/authenticationMethodsPolicy/authenticationMethodConfigurations/{method}";
    Router::new()
        .route("/users", get(directory::list_users))
        .route("/users/delta", get(directory::users_delta))
        .route("/users/{user}", get(directory::get_user))
        .route(
            "/users/{user}/checkMemberGroups",
            post(directory::check_member_groups),
        )
        .route("/groups", get(directory::list_groups))
        .route("/groups/{id}/members", get(directory::group_members))
        .route(
            "/groups/{id}/members/{cast}",
            get(directory::group_members_cast),
        )
        .route(
            "/groups/{id}/transitiveMembers",
            get(directory::group_transitive),
        )
        .route(
            "/groups/{id}/transitiveMembers/{cast}",
            get(directory::group_transitive_cast),
        )
        .route(fido2, get(fido::list_methods).post(fido::register))
        .route(
            &format!("{fido2}/{{method}}"),
            get(fido::get_method_or_options).delete(fido::delete_method),
        )
        .route(
            "/users/{user}/authentication/temporaryAccessPassMethods",
            get(fido::list_taps).post(fido::create_tap),
        )
        .route(&format!("/policies{policy}"), get(fido::policy_config))
        .route(policy, get(fido::policy_config))
        .layer(middleware::from_fn_with_state(sim.clone(), graph_layer))
        .layer(axum::Extension(version))
}

pub fn router(sim: Simulator) -> Router {
    Router::new()
        .nest("/v1.0", graph_routes(sim.clone(), ApiVersion::V1))
        .nest("/beta", graph_routes(sim.clone(), ApiVersion::Beta))
        .route("/{tenant}/oauth2/v2.0/token", post(token::token))
        .nest("/_sim", control::routes())
        .with_state(sim)
}

/// A body that fails at once: the client sees the connection end before a complete response.
fn dropped() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("dropped"))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static(ODATA_JSON));
    resp
}

fn bearer_ok(sim: &Simulator, headers: &HeaderMap, now: Instant) -> Result<(), GraphError> {
    let unauthorized =
        |m: &str| GraphError::new(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", m);
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(unauthorized("Access token is empty."));
    };
    let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Err(unauthorized(
            "Access token validation failure. Invalid audience.",
        ));
    };
    match sim.data().tokens.get(token.trim()) {
        None => Err(unauthorized(
            "IDX14100: JWT is not well formed, there are no dots (.).",
        )),
        Some(exp) if *exp <= now => Err(unauthorized(
            "Lifetime validation failed, the token is expired.",
        )),
        Some(_) => Ok(()),
    }
}

async fn graph_layer(State(sim): State<Simulator>, req: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = req
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| request_id.clone());
    let (latency, fault) = {
        let mut data = sim.data();
        data.requests += 1;
        (data.latency, data.faults.pop_front())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let now = Instant::now();
    let mut malformed = false;
    let mut resp = match fault {
        Some(Fault::Drop) => return dropped(),
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let code = if status == StatusCode::SERVICE_UNAVAILABLE {
                "serviceNotAvailable"
            } else {
                "generalException"
            };
            let mut e = GraphError::new(status, code, "The service is temporarily unavailable.");
            e.retry_after = retry_after;
            e.into_response()
        }
        Some(Fault::Throttle { retry_after }) => {
            throttled(&sim, retry_after, "ResourceUnitLimitExceeded", "Read")
        }
        other => {
            malformed = other == Some(Fault::Malformed);
            let check = bearer_ok(&sim, req.headers(), now).and_then(|()| {
                if sim.data().forbid {
                    Err(GraphError::new(
                        StatusCode::FORBIDDEN,
                        "Authorization_RequestDenied",
                        "Insufficient privileges to complete the operation.",
                    ))
                } else {
                    Ok(())
                }
            });
            match check {
                Err(e) => e.into_response(),
                Ok(()) => {
                    // checkMemberGroups is a POST that only reads.
                    let is_write = matches!(
                        *req.method(),
                        Method::POST | Method::PATCH | Method::DELETE | Method::PUT
                    ) && !req.uri().path().ends_with("/checkMemberGroups");
                    let cost =
                        resource_cost(is_write, req.uri().path(), req.uri().query().unwrap_or(""));
                    let spent = sim.data().spend_units(now, cost);
                    let wait = if is_write {
                        sim.data().spend_write(now)
                    } else {
                        None
                    };
                    match (spent, wait) {
                        (Err(secs), _) => {
                            throttled(&sim, secs, "ResourceUnitLimitExceeded", "ReadWrite")
                        }
                        (Ok(_), Some(secs)) => throttled(&sim, secs, "WriteLimitExceeded", "Write"),
                        (Ok(used), None) => {
                            let mut resp = next.run(req).await;
                            let h = resp.headers_mut();
                            if let Ok(v) = HeaderValue::from_str(&cost.to_string()) {
                                h.insert("x-ms-resource-unit", v);
                            }
                            // Graph announces the fraction of the limit once above 80%.
                            if used > 0.8
                                && let Ok(v) = HeaderValue::from_str(&format!("{used:.1}"))
                            {
                                h.insert("x-ms-throttle-limit-percentage", v);
                            }
                            resp
                        }
                    }
                }
            }
        }
    };
    if malformed && resp.status().is_success() {
        resp = odata(StatusCode::OK, serde_json::Value::Null);
        *resp.body_mut() = Body::from("{\"value\":[{\"id\":\"0f3c\",\"displayName\":");
    }
    if let Some(body) = resp.extensions_mut().remove::<GraphErrorBody>() {
        let json = graph_error_json(body.code, &body.message, &request_id, &client_request_id);
        *resp.body_mut() = Body::from(json.to_string());
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static(ODATA_JSON));
    }
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&client_request_id) {
        headers.insert("client-request-id", v);
    }
    headers.insert(
        "x-ms-ags-diagnostic",
        HeaderValue::from_static(r#"{"ServerInfo":{"DataCenter":"Keyward Simulator","Slice":"E","Ring":"5","ScaleUnit":"000","RoleInstance":"SIM"}}"#),
    );
    resp
}

/// Graph's documented resource-unit cost of a request (identity and access limits).
fn resource_cost(is_write: bool, path: &str, query: &str) -> u32 {
    if is_write {
        return 1;
    }
    let base: i32 = if path.ends_with("/users") || path.ends_with("/users/delta") {
        2
    } else if path.contains("/transitiveMembers") {
        5
    } else if path.contains("/members") {
        3
    } else {
        1
    };
    let mut cost = base;
    if query.contains("$select=") || query.contains("%24select=") {
        cost -= 1;
    }
    if query.contains("$expand=") || query.contains("%24expand=") {
        cost += 1;
    }
    let top = query
        .split('&')
        .find_map(|kv| {
            kv.strip_prefix("$top=")
                .or_else(|| kv.strip_prefix("%24top="))
        })
        .and_then(|v| v.parse::<u32>().ok());
    if top.is_some_and(|t| t < 20) {
        cost -= 1;
    }
    cost.max(1) as u32
}

fn throttled(sim: &Simulator, retry_after: u64, information: &'static str, kind: &str) -> Response {
    let cfg = sim.config();
    let mut e = GraphError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        "Too many requests. Retry after the number of seconds in the Retry-After header.",
    );
    e.retry_after = Some(retry_after);
    let mut resp = e.into_response();
    let scope = format!(
        "Tenant_Application/{kind}/{}/{}",
        cfg.client_id, cfg.tenant_id
    );
    if let Ok(v) = HeaderValue::from_str(&scope) {
        resp.headers_mut().insert("x-ms-throttle-scope", v);
    }
    resp.headers_mut().insert(
        "x-ms-throttle-information",
        HeaderValue::from_static(information),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::resource_cost;

    #[test]
    fn resource_costs_follow_graph() {
        assert_eq!(resource_cost(false, "/users", ""), 2);
        assert_eq!(resource_cost(false, "/users", "$select=id&$top=999"), 1);
        assert_eq!(
            resource_cost(
                false,
                "/groups/g/transitiveMembers/microsoft.graph.user",
                "$select=id"
            ),
            4
        );
        assert_eq!(resource_cost(false, "/groups/g/members", "$top=5"), 2);
        assert_eq!(
            resource_cost(
                false,
                "/users/u/authentication/fido2Methods",
                "$top=5&$select=id"
            ),
            1,
            "minimum 1"
        );
        assert_eq!(
            resource_cost(true, "/users/u/authentication/fido2Methods", ""),
            1
        );
    }
}
