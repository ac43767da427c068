//! The hosts a kref points at: GitHub's REST API (repositories, paginated releases,
//! organisation members) and SpaceDock's mod API, read as the real services answer.

use super::fetch::{Fetcher, GITHUB_API, SPACEDOCK};
use super::NetkanError;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct GhUser {
    pub login: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GhLicense {
    pub spdx_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GhParent {
    pub full_name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GhRepo {
    pub html_url: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub homepage: Option<String>,
    #[serde(default)]
    pub has_issues: bool,
    #[serde(default)]
    pub has_wiki: bool,
    #[serde(default)]
    pub has_discussions: bool,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub license: Option<GhLicense>,
    pub owner: Option<GhUser>,
    #[serde(default)]
    pub parent: Option<GhParent>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GhAsset {
    pub name: String,
    pub browser_download_url: String,
    #[serde(default)]
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GhRelease {
    pub tag_name: Option<String>,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub prerelease: bool,
    #[serde(default)]
    pub published_at: Option<String>,
    pub author: Option<GhUser>,
    #[serde(default)]
    pub zipball_url: Option<String>,
    #[serde(default)]
    pub assets: Vec<GhAsset>,
}

/// The error for an answer that does not have the API's shape.
fn unexpected(url: &str) -> impl Fn(serde_json::Error) -> NetkanError + '_ {
    move |e| NetkanError::Upstream(format!("unexpected answer from {url}: {e}"))
}

/// At most this many release pages are read before giving up on finding a usable one.
const MAX_RELEASE_PAGES: usize = 10;

pub async fn github_repo(f: &Fetcher, full_name: &str) -> Result<GhRepo, NetkanError> {
    let url = format!("{GITHUB_API}/repos/{full_name}");
    let value = f.json(&url).await?.ok_or_else(|| {
        NetkanError::Upstream(format!("GitHub repository {full_name} does not exist"))
    })?;
    serde_json::from_value(value).map_err(unexpected(&url))
}

/// Releases newest first, drafts left out, pre-releases only when asked for; pages are
/// followed through the `Link` header until `stop` says enough.
pub async fn github_releases(
    f: &Fetcher,
    full_name: &str,
    prereleases: bool,
    mut stop: impl FnMut(&GhRelease) -> bool,
) -> Result<Option<GhRelease>, NetkanError> {
    let mut url = format!("{GITHUB_API}/repos/{full_name}/releases?per_page=100");
    for _ in 0..MAX_RELEASE_PAGES {
        let Some((text, link)) = f.get_text(&url).await? else {
            return Err(NetkanError::Upstream(format!(
                "GitHub repository {full_name} does not exist"
            )));
        };
        let page: Vec<GhRelease> = serde_json::from_str(&text).map_err(unexpected(&url))?;
        for rel in page {
            if rel.draft || (rel.prerelease && !prereleases) || rel.tag_name.is_none() {
                continue;
            }
            if stop(&rel) {
                return Ok(Some(rel));
            }
        }
        match link.as_deref().and_then(next_link) {
            // the next page's URL is the API's own; map it back to the public form
            Some(next) => url = f.upstreams.public(&next),
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// The public members of an organisation.
pub async fn github_org_members(f: &Fetcher, org: &str) -> Result<Vec<String>, NetkanError> {
    let url = format!("{GITHUB_API}/orgs/{org}/public_members");
    let Some(value) = f.json(&url).await? else {
        return Ok(vec![]);
    };
    let users: Vec<GhUser> = serde_json::from_value(value).map_err(unexpected(&url))?;
    Ok(users.into_iter().map(|u| u.login).collect())
}

#[derive(Debug, Clone, Deserialize)]
pub struct SdUser {
    pub username: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SdVersion {
    pub id: i64,
    pub friendly_version: Option<String>,
    #[serde(default)]
    pub game_version: Option<String>,
    pub download_path: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SdMod {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub short_description: Option<String>,
    pub author: String,
    #[serde(default)]
    pub shared_authors: Vec<SdUser>,
    #[serde(default)]
    pub license: Option<String>,
    #[serde(default)]
    pub website: Option<String>,
    #[serde(default)]
    pub source_code: Option<String>,
    #[serde(default)]
    pub background: Option<String>,
    #[serde(default)]
    pub default_version_id: Option<i64>,
    #[serde(default)]
    pub versions: Vec<SdVersion>,
}

impl SdMod {
    /// The newest version: the one SpaceDock names as default, else the first listed.
    pub fn newest(&self) -> Option<&SdVersion> {
        self.default_version_id
            .and_then(|id| self.versions.iter().find(|v| v.id == id))
            .or_else(|| self.versions.first())
    }

    /// The mod's page, `https://spacedock.info/mod/<id>/<name>`.
    pub fn page_url(&self) -> String {
        format!("{SPACEDOCK}/mod/{}/{}", self.id, escape_path(&self.name))
    }
}

pub async fn spacedock_mod(f: &Fetcher, id: &str) -> Result<SdMod, NetkanError> {
    let url = format!("{SPACEDOCK}/api/mod/{id}");
    let value = f
        .json(&url)
        .await?
        .ok_or_else(|| NetkanError::Upstream(format!("SpaceDock mod {id} does not exist")))?;
    if let Some(err) = value.get("reason").and_then(|r| r.as_str()) {
        if value.get("error").and_then(|e| e.as_bool()) == Some(true) {
            return Err(NetkanError::Upstream(format!("SpaceDock mod {id}: {err}")));
        }
    }
    serde_json::from_value(value).map_err(unexpected(&url))
}

/// Escapes a path segment the way .NET's `Uri` does for the characters mod names hold.
pub fn escape_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'/'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'@'
            | b'%' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next() {
        let h = r#"<https://api.github.com/repositories/1/releases?per_page=100&page=2>; rel="next", <https://api.github.com/repositories/1/releases?per_page=100&page=5>; rel="last""#;
        assert_eq!(
            next_link(h).as_deref(),
            Some("https://api.github.com/repositories/1/releases?per_page=100&page=2")
        );
        assert_eq!(next_link(r#"<https://x/?page=1>; rel="prev""#), None);
    }

    #[test]
    fn escapes_like_uri() {
        assert_eq!(
            escape_path("Engineering Tech Tree"),
            "Engineering%20Tech%20Tree"
        );
        assert_eq!(escape_path("A#b"), "A%23b");
    }
}
