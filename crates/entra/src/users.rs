//! Users import: all users, a group's transitive members, or delta rounds, as a pager that holds
//! one page at a time so memory does not grow with the directory.

use futures::Stream;
use serde::Deserialize;

use crate::client::{ApiVersion, GraphClient};
use crate::error::{EntraError, ErrorKind};

/// The properties an import asks for (`accountEnabled` is only returned when selected).
pub const USER_SELECT: &str = "id,userPrincipalName,mail,displayName,accountEnabled,userType";

/// A directory user, as imported.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryUser {
    pub id: String,
    pub user_principal_name: Option<String>,
    pub mail: Option<String>,
    pub display_name: Option<String>,
    pub account_enabled: Option<bool>,
    pub user_type: Option<String>,
}

/// What to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSource {
    /// Every user of the tenant.
    All,
    /// Users reached through a group, nested groups included.
    Group { group_id: String },
    /// Changes since `delta_link` (the link the last round returned), or a first full round.
    Delta { delta_link: Option<String> },
}

/// One page of an import.
#[derive(Debug, Clone, Default)]
pub struct UserPage {
    pub users: Vec<DirectoryUser>,
    /// Ids of users removed since the last delta round.
    pub removed: Vec<String>,
    /// True on the first page of a round that lists *every* user in scope (not just changes):
    /// the caller should forget which users it has seen so far, and after the round's last page
    /// may treat users it did not see as gone. Set for list and group imports, the first delta
    /// round, and a delta round restarted because Graph expired the link.
    pub full_round_starts: bool,
    /// On the last page of a delta round: the link to store for the next round.
    pub delta_link: Option<String>,
    /// True on the last page.
    pub last: bool,
    /// Graph's request-id of this page, for support.
    pub request_id: Option<String>,
}

#[derive(Deserialize)]
struct RawPage {
    #[serde(default)]
    value: Vec<serde_json::Value>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

/// Pages through users; call [`UserPages::next_page`] until it returns `None`.
pub struct UserPages {
    client: GraphClient,
    source: UserSource,
    next: Option<String>,
    /// The next page starts a full round.
    full_start: bool,
    resets: u32,
    done: bool,
}

impl GraphClient {
    /// Starts an import; no request is made until the first page is asked for.
    pub fn users(&self, source: UserSource) -> UserPages {
        let (next, full_start) = match &source {
            UserSource::All => (Some(self.url(ApiVersion::V1, &format!("/users?$select={USER_SELECT}&$top=999"))), true),
            UserSource::Group { group_id } => (
                Some(self.url(
                    ApiVersion::V1,
                    &format!("/groups/{}/transitiveMembers/microsoft.graph.user?$select={USER_SELECT}&$top=999", encode_segment(group_id)),
                )),
                true,
            ),
            UserSource::Delta { delta_link: Some(link) } => (Some(link.clone()), false),
            UserSource::Delta { delta_link: None } => (Some(self.initial_delta_url()), true),
        };
        UserPages {
            client: self.clone(),
            source,
            next,
            full_start,
            resets: 0,
            done: false,
        }
    }

    fn initial_delta_url(&self) -> String {
        self.url(
            ApiVersion::V1,
            &format!("/users/delta?$select={USER_SELECT}"),
        )
    }
}

/// Percent-encodes one path segment (ids are GUIDs, UPNs may hold `#`, `'`, `$`, `/`…).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl UserPages {
    /// The next page, or `None` after the last one (or after an error).
    pub async fn next_page(&mut self) -> Option<Result<UserPage, EntraError>> {
        if self.done {
            return None;
        }
        let url = self.next.take()?;
        match self.fetch(&url).await {
            Ok(page) => Some(Ok(page)),
            Err(e)
                if e.kind == ErrorKind::DeltaExpired
                    && matches!(self.source, UserSource::Delta { .. })
                    && self.resets < 2 =>
            {
                // Graph forgot the sync state: start a full round, as its documentation says.
                tracing::info!(
                    request_id = e.request_id.as_deref().unwrap_or("-"),
                    "delta link expired; starting a full sync"
                );
                self.resets += 1;
                self.full_start = true;
                let url = self.client.initial_delta_url();
                match self.fetch(&url).await {
                    Ok(page) => Some(Ok(page)),
                    Err(e) => {
                        self.done = true;
                        Some(Err(e))
                    }
                }
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    async fn fetch(&mut self, url: &str) -> Result<UserPage, EntraError> {
        self.client.check_link(url)?;
        let headers: &[(&str, &str)] = match self.source {
            // Delta honours a page-size preference instead of $top.
            UserSource::Delta { .. } => &[("Prefer", "odata.maxpagesize=999")],
            _ => &[],
        };
        let (raw, request_id): (RawPage, _) = self.client.get_json(url, headers).await?;
        let mut page = UserPage {
            full_round_starts: self.full_start,
            request_id,
            ..UserPage::default()
        };
        self.full_start = false;
        for v in raw.value {
            if v.get("@removed").is_some() {
                let id = v
                    .get("id")
                    .and_then(|i| i.as_str())
                    .ok_or_else(|| EntraError::bad_response("a removed entry has no id"))?;
                page.removed.push(id.to_string());
                continue;
            }
            // Group listings may still hold other object types; the cast should prevent it.
            if let Some(t) = v.get("@odata.type").and_then(|t| t.as_str())
                && t != "#microsoft.graph.user"
            {
                continue;
            }
            let user: DirectoryUser = serde_json::from_value(v).map_err(|e| {
                EntraError::bad_response(format!("a user entry is malformed ({e})"))
                    .with_request_id(page.request_id.clone())
            })?;
            page.users.push(user);
        }
        match (raw.next_link, raw.delta_link) {
            (Some(next), _) => {
                self.client.check_link(&next)?;
                self.next = Some(next);
            }
            (None, delta) => {
                if let Some(d) = &delta {
                    self.client.check_link(d)?;
                }
                if matches!(self.source, UserSource::Delta { .. }) && delta.is_none() {
                    return Err(EntraError::bad_response(
                        "the last delta page has no @odata.deltaLink",
                    ));
                }
                page.delta_link = delta;
                page.last = true;
                self.done = true;
            }
        }
        Ok(page)
    }

    /// The pager as a `Stream` of pages.
    pub fn into_stream(self) -> impl Stream<Item = Result<UserPage, EntraError>> {
        futures::stream::unfold(self, |mut pages| async move {
            pages.next_page().await.map(|p| (p, pages))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(
            encode_segment("o'reilly#1@contoso.com"),
            "o%27reilly%231@contoso.com"
        );
        assert_eq!(encode_segment("a/b"), "a%2Fb");
    }
}
