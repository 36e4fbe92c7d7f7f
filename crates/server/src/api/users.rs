//! Users: create, edit, disable, search and page, CSV import, activation codes.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use chrono::{DateTime, Utc};
use keyward_store::{NewUser, StoreError, UserFilter, UserPatch, UserRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    AppState, IdPath, Json, Query, bytes_rejection, decode_cursor, encode_cursor, page_limit,
};
use crate::auth::{self, Principal};
use crate::error::{ApiError, ApiResult, Problem};

#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct User {
    pub id: Uuid,
    pub upn: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// `new`, `assigned`, `active` or `disabled`.
    pub status: String,
    /// `csv`, `api` or `entra`.
    pub source: String,
    pub external_id: Option<String>,
    pub key_id: Option<Uuid>,
}

impl From<UserRecord> for User {
    fn from(u: UserRecord) -> Self {
        User {
            id: u.id,
            upn: u.upn,
            email: u.email,
            display_name: u.display_name,
            status: u.status,
            source: u.source,
            external_id: u.external_id,
            key_id: u.key_id,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<User>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    /// Substring of upn, e-mail or display name (case-insensitive).
    pub q: Option<String>,
    pub status: Option<String>,
    /// Where the users came from: `entra`, `csv` or `api`.
    pub source: Option<String>,
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub upn: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// An empty string clears the address.
    #[serde(default)]
    pub email: Option<String>,
    /// An empty string clears the name.
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ImportError {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct ImportResult {
    pub created: u64,
    pub updated: u64,
    pub errors: Vec<ImportError>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Import the valid lines even when others are invalid.
    #[serde(default)]
    pub skip_invalid: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ActivationCode {
    /// Shown once; Keyward stores only its hash.
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

const STATUSES: [&str; 4] = ["new", "assigned", "active", "disabled"];
/// The sources a user can come from (the `users.source` CHECK constraint).
const SOURCES: [&str; 3] = ["entra", "csv", "api"];

fn valid_upn(upn: &str) -> Result<(), String> {
    let ok = !upn.is_empty()
        && upn.len() <= 254
        && !upn.chars().any(|c| c.is_whitespace() || c.is_control())
        && upn
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'));
    if ok {
        Ok(())
    } else {
        Err("upn must look like name@domain (no spaces, at most 254 bytes)".into())
    }
}

fn valid_email(email: &str) -> Result<(), String> {
    valid_upn(email).map_err(|_| "email must look like name@domain".into())
}

fn valid_display_name(name: &str) -> Result<(), String> {
    if name.chars().count() > 256 || name.chars().any(char::is_control) {
        Err("display_name must be at most 256 characters, without control characters".into())
    } else {
        Ok(())
    }
}

/// Trims a field and maps empty to `None`.
fn opt(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

async fn user_or_404(s: &AppState, p: &Principal, id: Uuid) -> ApiResult<UserRecord> {
    s.store.user(p.org_id, id).await?.ok_or(ApiError::NotFound)
}

#[utoipa::path(get, path = "/api/v1/users", params(UserQuery),
    responses((status = 200, body = UserPage), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<UserQuery>,
) -> ApiResult<axum::Json<UserPage>> {
    let limit = page_limit(q.limit)?;
    if let Some(st) = &q.status
        && !STATUSES.contains(&st.as_str())
    {
        return Err(ApiError::BadRequest(
            "status must be new, assigned, active or disabled".into(),
        ));
    }
    if let Some(src) = &q.source
        && !SOURCES.contains(&src.as_str())
    {
        return Err(ApiError::BadRequest(
            "source must be entra, csv or api".into(),
        ));
    }
    let after = match &q.cursor {
        Some(c) => Some(
            decode_cursor(c)?
                .parse::<Uuid>()
                .map_err(|_| ApiError::BadRequest("invalid cursor".into()))?,
        ),
        None => None,
    };
    let filter = UserFilter {
        q: q.q.clone(),
        status: q.status.clone(),
        source: q.source.clone(),
        after,
        limit: limit + 1,
    };
    let mut rows = s.store.list_users(p.org_id, &filter).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|u| encode_cursor(&u.id.to_string()))
    } else {
        None
    };
    Ok(axum::Json(UserPage {
        items: rows.into_iter().map(User::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUser,
    responses((status = 201, body = User), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<CreateUser>,
) -> ApiResult<(StatusCode, axum::Json<User>)> {
    let upn = req.upn.trim().to_owned();
    valid_upn(&upn).map_err(ApiError::Unprocessable)?;
    let email = opt(req.email.as_deref());
    if let Some(e) = &email {
        valid_email(e).map_err(ApiError::Unprocessable)?;
    }
    let display_name = opt(req.display_name.as_deref());
    if let Some(d) = &display_name {
        valid_display_name(d).map_err(ApiError::Unprocessable)?;
    }
    let mut tx = s.store.begin().await?;
    let user = tx
        .insert_user(
            p.org_id,
            &NewUser {
                upn,
                email,
                display_name,
                source: "api".into(),
                external_id: None,
            },
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                ApiError::Conflict("a user with this upn already exists".into())
            }
            other => other.into(),
        })?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "user.create",
        &format!("user:{}", user.id),
        json!({"upn": user.upn}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(user.into())))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn get_one(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<User>> {
    Ok(axum::Json(user_or_404(&s, &p, id).await?.into()))
}

#[utoipa::path(patch, path = "/api/v1/users/{id}", params(("id" = Uuid, Path)), request_body = UpdateUser,
    responses((status = 200, body = User), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn update(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
    Json(req): Json<UpdateUser>,
) -> ApiResult<axum::Json<User>> {
    let mut patch = UserPatch::default();
    if let Some(e) = &req.email {
        let e = opt(Some(e));
        if let Some(v) = &e {
            valid_email(v).map_err(ApiError::Unprocessable)?;
        }
        patch.email = Some(e);
    }
    if let Some(d) = &req.display_name {
        let d = opt(Some(d));
        if let Some(v) = &d {
            valid_display_name(v).map_err(ApiError::Unprocessable)?;
        }
        patch.display_name = Some(d);
    }
    let mut tx = s.store.begin().await?;
    let user = tx.update_user(p.org_id, id, &patch).await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "user.update",
        &format!("user:{id}"),
        json!({"email": user.email, "display_name": user.display_name}),
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(user.into()))
}

async fn set_disabled(
    s: &AppState,
    p: &Principal,
    id: Uuid,
    disabled: bool,
) -> ApiResult<axum::Json<User>> {
    let mut tx = s.store.begin().await?;
    let current = tx.user(p.org_id, id).await?.ok_or(ApiError::NotFound)?;
    let status = match (disabled, current.key_id) {
        (true, _) => "disabled",
        (false, Some(_)) => "assigned",
        (false, None) => "new",
    };
    if disabled == (current.status == "disabled") {
        return Ok(axum::Json(current.into()));
    }
    let user = tx
        .update_user(
            p.org_id,
            id,
            &UserPatch {
                status: Some(status.into()),
                ..Default::default()
            },
        )
        .await?;
    let action = if disabled {
        "user.disable"
    } else {
        "user.enable"
    };
    tx.append_audit(
        p.org_id,
        &p.actor(),
        action,
        &format!("user:{id}"),
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(user.into()))
}

#[utoipa::path(post, path = "/api/v1/users/{id}/disable", params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn disable(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<User>> {
    set_disabled(&s, &p, id, true).await
}

#[utoipa::path(post, path = "/api/v1/users/{id}/enable", params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn enable(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<User>> {
    set_disabled(&s, &p, id, false).await
}

struct CsvRow {
    line: u64,
    upn: String,
    email: Option<String>,
    display_name: Option<String>,
}

/// Parses and validates the whole file first, so a file with errors imports nothing (unless the
/// caller asks to skip invalid lines).
fn parse_csv(body: &[u8]) -> (Vec<CsvRow>, Vec<ImportError>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            errors.push(ImportError {
                line: 1,
                reason: format!("unreadable header: {e}"),
            });
            return (rows, errors);
        }
    };
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(upn_i), email_i, name_i) = (col("upn"), col("email"), col("display_name")) else {
        errors.push(ImportError {
            line: 1,
            reason: "header must have a upn column (and optionally email, display_name)".into(),
        });
        return (rows, errors);
    };
    if let Some(unknown) = headers
        .iter()
        .find(|h| !["upn", "email", "display_name"].contains(&h.to_lowercase().as_str()))
    {
        errors.push(ImportError {
            line: 1,
            reason: format!("unknown column {unknown:?}"),
        });
        return (rows, errors);
    }
    let mut seen = std::collections::HashMap::new();
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                errors.push(ImportError {
                    line,
                    reason: format!("malformed line: {e}"),
                });
                continue;
            }
        };
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let upn = rec.get(upn_i).unwrap_or("").to_owned();
        let email = opt(email_i.and_then(|i| rec.get(i)));
        let display_name = opt(name_i.and_then(|i| rec.get(i)));
        let check = valid_upn(&upn)
            .and_then(|_| email.as_deref().map(valid_email).unwrap_or(Ok(())))
            .and_then(|_| {
                display_name
                    .as_deref()
                    .map(valid_display_name)
                    .unwrap_or(Ok(()))
            });
        if let Err(reason) = check {
            errors.push(ImportError { line, reason });
            continue;
        }
        if let Some(first) = seen.insert(upn.to_lowercase(), line) {
            errors.push(ImportError {
                line,
                reason: format!("duplicate upn (first on line {first})"),
            });
            continue;
        }
        rows.push(CsvRow {
            line,
            upn,
            email,
            display_name,
        });
    }
    (rows, errors)
}

#[utoipa::path(post, path = "/api/v1/users/import-csv", params(ImportQuery),
    request_body(content = String, content_type = "text/csv", description = "Header upn,email,display_name"),
    responses((status = 200, body = ImportResult), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn import_csv(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<ImportQuery>,
    req: Request,
) -> ApiResult<axum::Json<ImportResult>> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("text/csv") {
        return Err(ApiError::UnsupportedMediaType("expected text/csv".into()));
    }
    let body = Bytes::from_request(req, &())
        .await
        .map_err(bytes_rejection)?;
    let (rows, errors) = parse_csv(&body);
    if !errors.is_empty() && !q.skip_invalid {
        return Ok(axum::Json(ImportResult {
            created: 0,
            updated: 0,
            errors,
        }));
    }
    let (mut created, mut updated) = (0u64, 0u64);
    let mut tx = s.store.begin().await?;
    for row in &rows {
        match tx.user_by_upn(p.org_id, &row.upn).await? {
            Some(existing) => {
                if existing.email != row.email || existing.display_name != row.display_name {
                    let patch = UserPatch {
                        email: Some(row.email.clone()),
                        display_name: Some(row.display_name.clone()),
                        status: None,
                    };
                    tx.update_user(p.org_id, existing.id, &patch).await?;
                    updated += 1;
                }
            }
            None => {
                let nu = NewUser {
                    upn: row.upn.clone(),
                    email: row.email.clone(),
                    display_name: row.display_name.clone(),
                    source: "csv".into(),
                    external_id: None,
                };
                tx.insert_user(p.org_id, &nu).await?;
                created += 1;
            }
        }
        let _ = row.line;
    }
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "user.import_csv",
        "users",
        json!({"created": created, "updated": updated, "skipped": errors.len()}),
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(ImportResult {
        created,
        updated,
        errors,
    }))
}

/// Activation codes are typed by people: 20 characters of Crockford base32 (100 bits) in groups.
fn new_activation_code() -> String {
    use rand::RngCore;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut b = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let chars: Vec<char> = b
        .iter()
        .map(|x| ALPHABET[(*x & 31) as usize] as char)
        .collect();
    chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

#[utoipa::path(post, path = "/api/v1/users/{id}/activation", params(("id" = Uuid, Path)),
    responses((status = 201, body = ActivationCode), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn activation(
    State(s): State<AppState>,
    p: Principal,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, axum::Json<ActivationCode>)> {
    let mut tx = s.store.begin().await?;
    let user = tx.user(p.org_id, id).await?.ok_or(ApiError::NotFound)?;
    if user.status == "disabled" {
        return Err(ApiError::Conflict("the user is disabled".into()));
    }
    let code = new_activation_code();
    let expires_at = keyward_store::now() + chrono::Duration::hours(72);
    let rec = tx
        .insert_activation_code(p.org_id, id, &auth::secret_hash(&code), expires_at)
        .await?;
    tx.append_audit(
        p.org_id,
        &p.actor(),
        "user.activation_code",
        &format!("user:{id}"),
        json!({"activation_id": rec.id, "expires_at": expires_at}),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(ActivationCode { code, expires_at }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_reports_every_bad_line_with_its_number() {
        let csv = "upn,email,display_name\nok@a.test,,Ok\nnot-an-upn,,X\nb@a.test,bad,Y\nok@a.test,,dup\n\"unterminated,,\n";
        let (rows, errors) = parse_csv(csv.as_bytes());
        assert_eq!(rows.len(), 1);
        let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(
            &lines[..3],
            &[3, 4, 5],
            "{:?}",
            errors.iter().map(|e| &e.reason).collect::<Vec<_>>()
        );
        assert!(errors.len() >= 4, "the broken quote must be reported too");
    }

    #[test]
    fn csv_header_must_be_known() {
        let (_, errors) = parse_csv(b"mail\nx@y\n");
        assert_eq!(errors[0].line, 1);
        let (_, errors) = parse_csv(b"upn,phone\nx@y,1\n");
        assert!(errors[0].reason.contains("unknown column"));
    }

    #[test]
    fn activation_codes_are_grouped_base32() {
        let c = new_activation_code();
        assert_eq!(c.len(), 23);
        assert_eq!(c.split('-').count(), 4);
        assert_ne!(c, new_activation_code());
    }
}
