//! Users, groups and delta queries, with `$select`, `$top`, `$filter` and `@odata.nextLink` paging.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GraphError;
use crate::http::{ApiVersion, base_url, encode_query_value, odata};
use crate::state::{Data, Member, SimUser, Simulator};

type Params = Vec<(String, String)>;

const USER_PROPS: &[&str] = &[
    "id",
    "userPrincipalName",
    "mail",
    "displayName",
    "givenName",
    "surname",
    "jobTitle",
    "accountEnabled",
    "userType",
    "businessPhones",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
];
/// What Graph returns for a user when no `$select` is given (note: no `accountEnabled`).
const DEFAULT_PROPS: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
];

fn param<'a>(q: &'a Params, name: &str) -> Option<&'a str> {
    q.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn parse_select(q: &Params) -> Result<Option<Vec<String>>, GraphError> {
    let Some(sel) = param(q, "$select") else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for p in sel.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some(known) = USER_PROPS.iter().find(|k| k.eq_ignore_ascii_case(p)) else {
            return Err(GraphError::new(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                format!("Could not find a property named '{p}' on type 'microsoft.graph.user'."),
            ));
        };
        out.push((*known).to_string());
    }
    Ok(Some(out))
}

fn parse_top(q: &Params, default: usize) -> Result<usize, GraphError> {
    let Some(top) = param(q, "$top") else {
        return Ok(default);
    };
    match top.parse::<usize>() {
        Ok(n @ 1..=999) => Ok(n),
        _ => Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            format!("Invalid page size specified: '{top}'. Must be between 1 and 999 inclusive."),
        )),
    }
}

pub fn user_json(u: &SimUser, select: Option<&[String]>) -> Value {
    let mut m = Map::new();
    let props: Vec<&str> = match select {
        Some(s) => s.iter().map(String::as_str).collect(),
        None => DEFAULT_PROPS.to_vec(),
    };
    for p in props {
        let v = match p {
            "id" => json!(u.id),
            "userPrincipalName" => json!(u.user_principal_name),
            "mail" => json!(u.mail),
            "displayName" => json!(u.display_name),
            "givenName" => json!(u.given_name),
            "surname" => json!(u.surname),
            "jobTitle" => json!(u.job_title),
            "accountEnabled" => json!(u.account_enabled),
            "userType" => json!(u.user_type),
            "businessPhones" => json!([]),
            _ => Value::Null,
        };
        m.insert(p.to_string(), v);
    }
    Value::Object(m)
}

/// One clause of the `$filter` subset Graph allows on users without advanced query headers.
#[derive(Debug, Clone, PartialEq)]
enum Clause {
    Eq(String, String),
    StartsWith(String, String),
    Bool(String, bool),
}

fn unquote(s: &str) -> Option<String> {
    let s = s.trim();
    let inner = s.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

fn parse_filter(f: &str) -> Result<Vec<Clause>, GraphError> {
    let unsupported = || {
        GraphError::unsupported_query(format!(
            "Unsupported or invalid query filter clause specified: '{f}'."
        ))
    };
    let mut out = Vec::new();
    for part in f.split(" and ") {
        let part = part.trim();
        if let Some(rest) = part.strip_prefix("startswith(") {
            let rest = rest.strip_suffix(')').ok_or_else(unsupported)?;
            let (prop, val) = rest.split_once(',').ok_or_else(unsupported)?;
            out.push(Clause::StartsWith(
                prop.trim().to_string(),
                unquote(val).ok_or_else(unsupported)?,
            ));
        } else if let Some((prop, val)) = part.split_once(" eq ") {
            let prop = prop.trim().to_string();
            match val.trim() {
                "true" => out.push(Clause::Bool(prop, true)),
                "false" => out.push(Clause::Bool(prop, false)),
                v => out.push(Clause::Eq(prop, unquote(v).ok_or_else(unsupported)?)),
            }
        } else {
            return Err(unsupported());
        }
    }
    for c in &out {
        let prop = match c {
            Clause::Eq(p, _) | Clause::StartsWith(p, _) | Clause::Bool(p, _) => p,
        };
        if ![
            "id",
            "userPrincipalName",
            "mail",
            "displayName",
            "userType",
            "accountEnabled",
        ]
        .contains(&prop.as_str())
        {
            return Err(unsupported());
        }
    }
    Ok(out)
}

fn text_prop<'a>(u: &'a SimUser, p: &str) -> Option<&'a str> {
    match p {
        "id" => Some(&u.id),
        "userPrincipalName" => Some(&u.user_principal_name),
        "mail" => u.mail.as_deref(),
        "displayName" => Some(&u.display_name),
        "userType" => Some(&u.user_type),
        _ => None,
    }
}

fn matches(u: &SimUser, clauses: &[Clause]) -> bool {
    clauses.iter().all(|c| match c {
        Clause::Eq(p, v) => text_prop(u, p).is_some_and(|t| t.eq_ignore_ascii_case(v)),
        Clause::StartsWith(p, v) => {
            text_prop(u, p).is_some_and(|t| t.to_lowercase().starts_with(&v.to_lowercase()))
        }
        Clause::Bool(p, b) => p == "accountEnabled" && u.account_enabled == *b,
    })
}

fn context(version: ApiVersion, entity: &str, select: Option<&[String]>) -> String {
    match select {
        Some(s) => format!(
            "https://graph.microsoft.com/{}/$metadata#{entity}({})",
            version.path(),
            s.join(",")
        ),
        None => format!(
            "https://graph.microsoft.com/{}/$metadata#{entity}",
            version.path()
        ),
    }
}

/// The link to the next page: the same query with a new `$skiptoken`.
fn next_link(
    headers: &HeaderMap,
    version: ApiVersion,
    path: &str,
    q: &Params,
    skiptoken: &str,
) -> String {
    let mut query: Vec<String> = q
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("$skiptoken"))
        .map(|(k, v)| format!("{}={}", encode_query_value(k), encode_query_value(v)))
        .collect();
    query.push(format!("$skiptoken={skiptoken}"));
    format!(
        "{}/{}{path}?{}",
        base_url(headers),
        version.path(),
        query.join("&")
    )
}

fn after_from_skiptoken(q: &Params) -> Result<Option<String>, GraphError> {
    let Some(tok) = param(q, "$skiptoken") else {
        return Ok(None);
    };
    let bad = || GraphError::bad_request("The skip token is invalid or has expired.");
    let raw = URL_SAFE_NO_PAD.decode(tok).map_err(|_| bad())?;
    String::from_utf8(raw).map(Some).map_err(|_| bad())
}

pub async fn list_users(
    State(sim): State<Simulator>,
    Extension(version): Extension<ApiVersion>,
    headers: HeaderMap,
    Query(q): Query<Params>,
) -> Result<Response, GraphError> {
    let select = parse_select(&q)?;
    let top = parse_top(&q, 100)?;
    let clauses = match param(&q, "$filter") {
        Some(f) => parse_filter(f)?,
        None => Vec::new(),
    };
    if param(&q, "$count").is_some()
        || param(&q, "$search").is_some()
        || param(&q, "$orderby").is_some()
    {
        let eventual = headers
            .get("consistencylevel")
            .and_then(|v| v.to_str().ok())
            == Some("eventual");
        if !eventual {
            return Err(GraphError::unsupported_query(
                "This query needs the ConsistencyLevel: eventual header and $count=true (advanced query).",
            ));
        }
    }
    let after = after_from_skiptoken(&q)?;
    let data = sim.data();
    let range: Box<dyn Iterator<Item = &SimUser>> = match &after {
        Some(a) => Box::new(
            data.users
                .range::<String, _>((
                    std::ops::Bound::Excluded(a.clone()),
                    std::ops::Bound::Unbounded,
                ))
                .map(|(_, u)| u),
        ),
        None => Box::new(data.users.values()),
    };
    let mut page: Vec<&SimUser> = range
        .filter(|u| matches(u, &clauses))
        .take(top + 1)
        .collect();
    let more = page.len() > top;
    page.truncate(top);
    let mut body = json!({
        "@odata.context": context(version, "users", select.as_deref()),
        "value": page.iter().map(|u| user_json(u, select.as_deref())).collect::<Vec<_>>(),
    });
    if more && let Some(last) = page.last() {
        body["@odata.nextLink"] = json!(next_link(
            &headers,
            version,
            "/users",
            &q,
            &URL_SAFE_NO_PAD.encode(&last.id)
        ));
    }
    Ok(odata(StatusCode::OK, body))
}

pub async fn get_user(
    State(sim): State<Simulator>,
    Extension(version): Extension<ApiVersion>,
    Path(user): Path<String>,
    Query(q): Query<Params>,
) -> Result<Response, GraphError> {
    let select = parse_select(&q)?;
    let data = sim.data();
    let u = data.find_user(&user).ok_or_else(|| {
        GraphError::not_found(format!("Resource '{user}' does not exist or one of its queried reference-property objects are not present."))
    })?;
    let mut body = user_json(u, select.as_deref());
    body["@odata.context"] = json!(context(version, "users/$entity", select.as_deref()));
    Ok(odata(StatusCode::OK, body))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckMemberGroups {
    group_ids: Vec<String>,
}

/// `POST /users/{id}/checkMemberGroups`: which of up to 20 groups the user belongs to, transitively.
pub async fn check_member_groups(
    State(sim): State<Simulator>,
    Extension(version): Extension<ApiVersion>,
    Path(user): Path<String>,
    axum::Json(body): axum::Json<CheckMemberGroups>,
) -> Result<Response, GraphError> {
    if body.group_ids.len() > 20 {
        return Err(GraphError::bad_request(
            "At most 20 group ids can be checked in one request.",
        ));
    }
    let data = sim.data();
    let u = data.find_user(&user).ok_or_else(|| {
        GraphError::not_found(format!("Resource '{user}' does not exist or one of its queried reference-property objects are not present."))
    })?;
    let value: Vec<&String> = body
        .group_ids
        .iter()
        .filter(|g| {
            data.transitive_users(g)
                .is_some_and(|set| set.contains(&u.id))
        })
        .collect();
    Ok(odata(
        StatusCode::OK,
        json!({"@odata.context": format!("https://graph.microsoft.com/{}/$metadata#Collection(Edm.String)", version.path()), "value": value}),
    ))
}

pub async fn list_groups(
    State(sim): State<Simulator>,
    Extension(version): Extension<ApiVersion>,
    Query(q): Query<Params>,
) -> Result<Response, GraphError> {
    let name = match param(&q, "$filter") {
        Some(f) => match f.split_once(" eq ") {
            Some((p, v)) if p.trim() == "displayName" => {
                Some(unquote(v).ok_or_else(|| GraphError::unsupported_query("Invalid filter."))?)
            }
            _ => {
                return Err(GraphError::unsupported_query(format!(
                    "Unsupported query filter: '{f}'."
                )));
            }
        },
        None => None,
    };
    let data = sim.data();
    let value: Vec<Value> = data
        .groups
        .values()
        .filter(|g| name.as_ref().is_none_or(|n| g.display_name.eq_ignore_ascii_case(n)))
        .map(|g| json!({"id": g.id, "displayName": g.display_name, "securityEnabled": true, "mailEnabled": false}))
        .collect();
    Ok(odata(
        StatusCode::OK,
        json!({"@odata.context": context(version, "groups", None), "value": value}),
    ))
}

/// Pages through a group's members; `transitive` includes nested groups' users, `users_only` is
/// the `microsoft.graph.user` cast.
fn members_page(
    sim: &Simulator,
    version: ApiVersion,
    headers: &HeaderMap,
    q: &Params,
    group_id: &str,
    transitive: bool,
    users_only: bool,
) -> Result<Response, GraphError> {
    let select = parse_select(q)?;
    let top = parse_top(q, 100)?;
    let after = after_from_skiptoken(q)?;
    let data = sim.data();
    let group = data.groups.get(group_id).ok_or_else(|| {
        GraphError::not_found(format!("Resource '{group_id}' does not exist or one of its queried reference-property objects are not present."))
    })?;
    let mut members: Vec<Member> = if transitive {
        let users = data.transitive_users(group_id).unwrap_or_default();
        let mut all: Vec<Member> = users.into_iter().map(Member::User).collect();
        let mut stack = vec![group.clone()];
        while let Some(g) = stack.pop() {
            for m in &g.members {
                if let Member::Group(inner) = m
                    && let Some(ig) = data.groups.get(inner)
                {
                    all.push(m.clone());
                    stack.push(ig.clone());
                }
            }
        }
        all
    } else {
        group.members.clone()
    };
    if users_only {
        members.retain(|m| matches!(m, Member::User(_)));
    }
    let key = |m: &Member| match m {
        Member::User(id) | Member::Group(id) => id.clone(),
    };
    members.sort_by_key(key);
    members.dedup();
    let start = after
        .as_ref()
        .map_or(0, |a| members.partition_point(|m| key(m) <= *a));
    let slice = &members[start.min(members.len())..];
    let page = &slice[..top.min(slice.len())];
    let value: Vec<Value> = page
        .iter()
        .filter_map(|m| render_member(&data, m, select.as_deref(), users_only))
        .collect();
    let entity = if users_only {
        "users"
    } else {
        "directoryObjects"
    };
    let mut body =
        json!({"@odata.context": context(version, entity, select.as_deref()), "value": value});
    if slice.len() > top
        && let Some(last) = page.last()
    {
        let kind = if transitive {
            "transitiveMembers"
        } else {
            "members"
        };
        let cast = if users_only {
            "/microsoft.graph.user"
        } else {
            ""
        };
        let path = format!("/groups/{group_id}/{kind}{cast}");
        body["@odata.nextLink"] = json!(next_link(
            headers,
            version,
            &path,
            q,
            &URL_SAFE_NO_PAD.encode(key(last))
        ));
    }
    Ok(odata(StatusCode::OK, body))
}

fn render_member(
    data: &Data,
    m: &Member,
    select: Option<&[String]>,
    users_only: bool,
) -> Option<Value> {
    match m {
        Member::User(id) => {
            let mut v = user_json(data.users.get(id)?, select);
            if !users_only {
                v["@odata.type"] = json!("#microsoft.graph.user");
            }
            Some(v)
        }
        Member::Group(id) => {
            let g = data.groups.get(id)?;
            Some(
                json!({"@odata.type": "#microsoft.graph.group", "id": g.id, "displayName": g.display_name}),
            )
        }
    }
}

fn check_cast(cast: &str) -> Result<(), GraphError> {
    if cast == "microsoft.graph.user" {
        Ok(())
    } else {
        Err(GraphError::bad_request(format!(
            "Unsupported type cast segment '{cast}'."
        )))
    }
}

pub async fn group_members(
    State(sim): State<Simulator>,
    Extension(v): Extension<ApiVersion>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<Params>,
) -> Result<Response, GraphError> {
    members_page(&sim, v, &headers, &q, &id, false, false)
}

pub async fn group_members_cast(
    State(sim): State<Simulator>,
    Extension(v): Extension<ApiVersion>,
    headers: HeaderMap,
    Path((id, cast)): Path<(String, String)>,
    Query(q): Query<Params>,
) -> Result<Response, GraphError> {
    check_cast(&cast)?;
    members_page(&sim, v, &headers, &q, &id, false, true)
}

pub async fn group_transitive(
    State(sim): State<Simulator>,
    Extension(v): Extension<ApiVersion>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<Params>,
) -> Result<Response, GraphError> {
    members_page(&sim, v, &headers, &q, &id, true, false)
}

pub async fn group_transitive_cast(
    State(sim): State<Simulator>,
    Extension(v): Extension<ApiVersion>,
    headers: HeaderMap,
    Path((id, cast)): Path<(String, String)>,
    Query(q): Query<Params>,
) -> Result<Response, GraphError> {
    check_cast(&cast)?;
    members_page(&sim, v, &headers, &q, &id, true, true)
}

/// State carried in delta `$skiptoken` / `$deltatoken` values (opaque to clients).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeltaToken {
    /// Epoch the token was issued in; the control API bumps it to expire every token.
    e: u64,
    /// Changes after this sequence number...
    s: u64,
    /// ...up to and including this one belong to the round.
    u: u64,
    /// Last user id returned in this round.
    a: Option<String>,
    sel: Option<Vec<String>>,
    ids: Option<Vec<String>>,
}

fn encode_token(t: &DeltaToken) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(t).unwrap_or_default())
}

fn delta_filter(f: &str) -> Result<Vec<String>, GraphError> {
    let bad = || {
        GraphError::unsupported_query(
            "Delta queries support only $filter=id eq '…' (up to 50, joined by 'or').",
        )
    };
    let ids: Vec<String> = f
        .split(" or ")
        .map(|c| {
            c.trim()
                .strip_prefix("id eq ")
                .and_then(unquote)
                .ok_or_else(bad)
        })
        .collect::<Result<_, _>>()?;
    if ids.is_empty() || ids.len() > 50 {
        return Err(bad());
    }
    Ok(ids)
}

fn max_page_size(headers: &HeaderMap) -> usize {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            p.trim()
                .strip_prefix("odata.maxpagesize=")?
                .parse::<usize>()
                .ok()
        })
        .map_or(100, |n| n.clamp(1, 999))
}

pub async fn users_delta(
    State(sim): State<Simulator>,
    Extension(version): Extension<ApiVersion>,
    headers: HeaderMap,
    Query(q): Query<Params>,
) -> Result<Response, GraphError> {
    let page_size = max_page_size(&headers);
    let data = sim.data();
    let decode = |t: &str| -> Result<DeltaToken, GraphError> {
        URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|raw| serde_json::from_slice::<DeltaToken>(&raw).ok())
            .ok_or_else(|| GraphError::bad_request("The delta token is malformed."))
    };
    let expired = |data: &Data| {
        let reset = data.delta_reset;
        GraphError::new(
            StatusCode::GONE,
            reset.code(),
            "The sync state is no longer valid; restart the synchronization without a token.",
        )
    };
    let token = if let Some(t) = param(&q, "$skiptoken") {
        let t = decode(t)?;
        if t.e != data.delta_epoch {
            return Err(expired(&data));
        }
        t
    } else if let Some(t) = param(&q, "$deltatoken") {
        let t = decode(t)?;
        if t.e != data.delta_epoch {
            return Err(expired(&data));
        }
        DeltaToken {
            s: t.u,
            u: data.seq,
            a: None,
            ..t
        }
    } else {
        let sel = parse_select(&q)?;
        let ids = param(&q, "$filter").map(delta_filter).transpose()?;
        DeltaToken {
            e: data.delta_epoch,
            s: 0,
            u: data.seq,
            a: None,
            sel,
            ids,
        }
    };
    let in_round = |u: &SimUser| {
        u.seq > token.s
            && u.seq <= token.u
            && token.ids.as_ref().is_none_or(|ids| ids.contains(&u.id))
    };
    let iter: Box<dyn Iterator<Item = &SimUser>> = match &token.a {
        Some(a) => Box::new(
            data.users
                .range::<String, _>((
                    std::ops::Bound::Excluded(a.clone()),
                    std::ops::Bound::Unbounded,
                ))
                .map(|(_, u)| u),
        ),
        None => Box::new(data.users.values()),
    };
    let mut page: Vec<&SimUser> = iter.filter(|u| in_round(u)).take(page_size + 1).collect();
    let more = page.len() > page_size;
    page.truncate(page_size);
    let mut value: Vec<Value> = page
        .iter()
        .map(|u| user_json(u, token.sel.as_deref()))
        .collect();
    let mut body = json!({"@odata.context": context(version, "users", token.sel.as_deref())});
    let path = "/users/delta";
    if more && let Some(last) = page.last() {
        let next = DeltaToken {
            a: Some(last.id.clone()),
            ..token.clone()
        };
        body["@odata.nextLink"] = json!(format!(
            "{}/{}{path}?$skiptoken={}",
            base_url(&headers),
            version.path(),
            encode_token(&next)
        ));
    } else {
        // An initial round reports the current state only; later rounds also report removals.
        if token.s > 0 {
            for (seq, id) in &data.tombstones {
                if *seq > token.s
                    && *seq <= token.u
                    && token.ids.as_ref().is_none_or(|ids| ids.contains(id))
                {
                    value.push(json!({"@odata.type": "#microsoft.graph.user", "id": id, "@removed": {"reason": "changed"}}));
                }
            }
        }
        let next = DeltaToken {
            s: token.u,
            a: None,
            ..token.clone()
        };
        body["@odata.deltaLink"] = json!(format!(
            "{}/{}{path}?$deltatoken={}",
            base_url(&headers),
            version.path(),
            encode_token(&next)
        ));
    }
    body["value"] = Value::Array(value);
    Ok(odata(StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parses_the_supported_subset() {
        assert_eq!(
            parse_filter("userPrincipalName eq 'o''reilly@x'").expect("eq"),
            vec![Clause::Eq("userPrincipalName".into(), "o'reilly@x".into())]
        );
        assert_eq!(
            parse_filter("startswith(mail,'ada') and accountEnabled eq true").expect("and"),
            vec![
                Clause::StartsWith("mail".into(), "ada".into()),
                Clause::Bool("accountEnabled".into(), true)
            ]
        );
        assert!(parse_filter("jobTitle eq 'x'").is_err(), "unknown property");
        assert!(
            parse_filter("userPrincipalName ne 'x'").is_err(),
            "unsupported operator"
        );
    }

    #[test]
    fn top_is_bounded() {
        let q = |v: &str| vec![("$top".to_string(), v.to_string())];
        assert_eq!(parse_top(&q("999"), 100).expect("max"), 999);
        assert!(parse_top(&q("1000"), 100).is_err());
        assert!(parse_top(&q("0"), 100).is_err());
    }

    #[test]
    fn delta_filter_limits_ids() {
        assert_eq!(
            delta_filter("id eq 'a' or id eq 'b'").expect("two"),
            vec!["a", "b"]
        );
        let many = (0..51)
            .map(|i| format!("id eq '{i}'"))
            .collect::<Vec<_>>()
            .join(" or ");
        assert!(delta_filter(&many).is_err());
    }
}
