//! Everything the inflator asks of the network: API JSON, redirects and downloads, through
//! one HTTP client with a download cache keyed by URL.
//!
//! Upstreams are configured by base URL: a request for `https://api.github.com/…` goes to the
//! configured GitHub API base, and so on (`Upstreams::rewrites`). Metadata always names the
//! public URL, so a cluster pointed at a mirror or a test server writes the same `.ckan`
//! files as one talking to the real hosts.

use super::NetkanError;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the upstream services are, and how to reach them.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub github_api: String,
    pub github_web: String,
    pub spacedock: String,
    pub github_token: Option<String>,
    /// Further `public prefix → reachable prefix` pairs (for hosts of `#/ckan/http` mods).
    pub extra: Vec<(String, String)>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self {
            github_api: GITHUB_API.into(),
            github_web: GITHUB_WEB.into(),
            spacedock: SPACEDOCK.into(),
            github_token: None,
            extra: vec![],
        }
    }
}

pub const GITHUB_API: &str = "https://api.github.com";
pub const GITHUB_WEB: &str = "https://github.com";
pub const GITHUB_RAW: &str = "https://raw.githubusercontent.com";
pub const SPACEDOCK: &str = "https://spacedock.info";

impl Upstreams {
    /// Every `public → reachable` prefix pair, longest public prefix first.
    fn rewrites(&self) -> Vec<(String, String)> {
        let mut pairs = vec![
            (GITHUB_API.to_owned(), self.github_api.clone()),
            (GITHUB_WEB.to_owned(), self.github_web.clone()),
            (SPACEDOCK.to_owned(), self.spacedock.clone()),
        ];
        // raw files and codeload archives live beside the web host
        if self.github_web != GITHUB_WEB {
            let web = self.github_web.trim_end_matches('/');
            pairs.push((GITHUB_RAW.to_owned(), format!("{web}/_raw")));
            pairs.push((
                "https://codeload.github.com".to_owned(),
                format!("{web}/_codeload"),
            ));
        }
        pairs.extend(self.extra.iter().cloned());
        pairs.retain(|(a, b)| a != b);
        pairs.sort_by_key(|(a, _)| std::cmp::Reverse(a.len()));
        pairs
    }

    /// The URL a public URL is fetched from.
    pub fn reach(&self, url: &str) -> String {
        for (public, reach) in self.rewrites() {
            if let Some(rest) = strip_prefix_at_boundary(url, &public) {
                return format!("{}{rest}", reach.trim_end_matches('/'));
            }
        }
        url.to_owned()
    }

    /// The public URL of a reachable one (for redirect targets).
    pub fn public(&self, url: &str) -> String {
        for (public, reach) in self.rewrites() {
            if let Some(rest) = strip_prefix_at_boundary(url, reach.trim_end_matches('/')) {
                return format!("{public}{rest}");
            }
        }
        url.to_owned()
    }
}

fn strip_prefix_at_boundary<'a>(url: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = url.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with(['/', '?', '#'])).then_some(rest)
}

/// A downloaded file in the cache.
#[derive(Debug, Clone)]
pub struct Download {
    pub path: PathBuf,
    pub size: u64,
    pub content_type: Option<String>,
}

/// The HTTP side of inflation.
pub struct Fetcher {
    http: reqwest::Client,
    pub upstreams: Upstreams,
    cache_dir: PathBuf,
    cache_max_bytes: u64,
    /// Largest download accepted.
    pub max_download_bytes: u64,
}

impl Fetcher {
    pub fn new(
        upstreams: Upstreams,
        cache_dir: &Path,
        cache_max_bytes: u64,
    ) -> Result<Self, NetkanError> {
        std::fs::create_dir_all(cache_dir).map_err(|e| {
            NetkanError::Download(format!("cannot create cache {}: {e}", cache_dir.display()))
        })?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("kraken-netkan/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .map_err(|e| NetkanError::Download(e.to_string()))?;
        Ok(Self {
            http,
            upstreams,
            cache_dir: cache_dir.to_owned(),
            cache_max_bytes,
            max_download_bytes: 1 << 30,
        })
    }

    /// The fetcher a node's configuration describes (upstreams, cache and its bound).
    pub fn from_config(config: &crate::config::Config) -> Result<Self, NetkanError> {
        Self::new(
            config.upstreams(),
            &config.netkan_cache_dir(),
            config.netkan.cache_max_mb << 20,
        )
    }

    fn request(&self, public_url: &str) -> reqwest::RequestBuilder {
        let url = self.upstreams.reach(public_url);
        let mut req = self.http.get(&url);
        if public_url.starts_with(GITHUB_API) {
            req = req.header("Accept", "application/vnd.github+json");
            if let Some(token) = &self.upstreams.github_token {
                req = req.header("Authorization", format!("Bearer {token}"));
            }
        }
        req
    }

    /// GETs a JSON document; `None` for a 404.
    pub async fn json(&self, public_url: &str) -> Result<Option<serde_json::Value>, NetkanError> {
        self.get_text(public_url)
            .await?
            .map(|(text, _)| {
                serde_json::from_str(&text).map_err(|e| {
                    NetkanError::Upstream(format!("{public_url} answered with invalid JSON: {e}"))
                })
            })
            .transpose()
    }

    /// GETs a text document and the `Link` header; `None` for a 404.
    pub async fn get_text(
        &self,
        public_url: &str,
    ) -> Result<Option<(String, Option<String>)>, NetkanError> {
        let resp = self
            .request(public_url)
            .send()
            .await
            .map_err(|e| NetkanError::Upstream(format!("{public_url}: {}", plain(&e))))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(upstream_status(public_url, &resp));
        }
        let link = resp
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp
            .text()
            .await
            .map_err(|e| NetkanError::Upstream(format!("{public_url}: {}", plain(&e))))?;
        Ok(Some((text, link)))
    }

    /// Where a URL ends up after redirects (as a public URL).
    pub async fn resolve_redirects(&self, public_url: &str) -> Result<String, NetkanError> {
        let url = self.upstreams.reach(public_url);
        let resp = self
            .http
            .head(&url)
            .send()
            .await
            .map_err(|e| NetkanError::Download(format!("{public_url}: {}", plain(&e))))?;
        if !resp.status().is_success() {
            return Err(NetkanError::Download(format!(
                "{public_url}: the server answered {}",
                resp.status()
            )));
        }
        Ok(self.upstreams.public(resp.url().as_str()))
    }

    fn cache_path(&self, public_url: &str) -> PathBuf {
        let key = hex::encode(sha2::Sha256::digest(public_url.as_bytes()));
        self.cache_dir.join(&key[..32])
    }

    /// Downloads `public_url` into the cache (or finds it there). A failed or partial
    /// download never lands in the cache.
    pub async fn download(&self, public_url: &str) -> Result<Download, NetkanError> {
        let path = self.cache_path(public_url);
        let meta_path = path.with_extension("type");
        if let Ok(meta) = std::fs::metadata(&path) {
            let content_type = std::fs::read_to_string(&meta_path)
                .ok()
                .filter(|s| !s.is_empty());
            // touch, so the cache evicts least recently used files first
            let _ = filetime_now(&path);
            return Ok(Download {
                path,
                size: meta.len(),
                content_type,
            });
        }
        let fail = |m: String| NetkanError::Download(format!("{public_url}: {m}"));
        let mut resp = self
            .request(public_url)
            .send()
            .await
            .map_err(|e| fail(plain(&e)))?;
        if !resp.status().is_success() {
            return Err(fail(format!("the server answered {}", resp.status())));
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // unique per download: job containers sharing the cache all run as pid 1
        let nonce = uuid::Uuid::now_v7().simple();
        let tmp = path.with_extension(format!("{PARTIAL}{nonce}"));
        let mut file = std::fs::File::create(&tmp).map_err(|e| fail(e.to_string()))?;
        let mut size = 0u64;
        let result = async {
            while let Some(chunk) = resp.chunk().await.map_err(|e| fail(plain(&e)))? {
                size += chunk.len() as u64;
                if size > self.max_download_bytes {
                    return Err(fail(format!(
                        "larger than the limit of {} MiB",
                        self.max_download_bytes >> 20
                    )));
                }
                std::io::Write::write_all(&mut file, &chunk).map_err(|e| fail(e.to_string()))?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        drop(file);
        // the content type lands before the file it describes, so a reader that finds the
        // file always finds its type too
        let meta_tmp = path.with_extension(format!("{PARTIAL}type-{nonce}"));
        let _ = std::fs::write(&meta_tmp, content_type.as_deref().unwrap_or(""))
            .and_then(|_| std::fs::rename(&meta_tmp, &meta_path));
        std::fs::rename(&tmp, &path).map_err(|e| fail(e.to_string()))?;
        self.evict();
        Ok(Download {
            path,
            size,
            content_type,
        })
    }

    /// Forgets a cached download (after it turned out to be unusable).
    pub fn forget(&self, public_url: &str) {
        let path = self.cache_path(public_url);
        let _ = std::fs::remove_file(path.with_extension("type"));
        let _ = std::fs::remove_file(path);
    }

    /// Keeps the cache under its size bound, oldest files first.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.cache_dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
        let stale = std::time::SystemTime::now() - STALE_PARTIAL;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some((len, modified)) = entry
                .metadata()
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
            else {
                continue;
            };
            let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
            match ext {
                None => files.push((modified, len, path)),
                // what a download killed midway left behind
                Some(e) if e.starts_with(PARTIAL) && modified < stale => {
                    let _ = std::fs::remove_file(&path);
                }
                Some(_) => {}
            }
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.cache_max_bytes {
                break;
            }
            let _ = std::fs::remove_file(path.with_extension("type"));
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

/// The extension prefix of files still being written.
const PARTIAL: &str = "part-";
/// A partial file this old belongs to a download that died.
const STALE_PARTIAL: Duration = Duration::from_secs(3600);

fn filetime_now(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::options().append(true).open(path)?;
    f.set_modified(std::time::SystemTime::now())
}

fn upstream_status(url: &str, resp: &reqwest::Response) -> NetkanError {
    let status = resp.status();
    let remaining = resp
        .headers()
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok());
    if (status == reqwest::StatusCode::FORBIDDEN
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS)
        && remaining == Some("0")
    {
        return NetkanError::Upstream(format!(
            "{url}: rate limit exceeded (configure a GitHub token to raise it)"
        ));
    }
    NetkanError::Upstream(format!("{url}: the server answered {status}"))
}

/// A reqwest error without the noise of its source chain.
fn plain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_map_both_ways() {
        let u = Upstreams {
            github_api: "http://127.0.0.1:9/api".into(),
            github_web: "http://127.0.0.1:9/web".into(),
            spacedock: "http://127.0.0.1:9/sd".into(),
            github_token: None,
            extra: vec![(
                "https://www.kerbaltek.com".into(),
                "http://127.0.0.1:9/kt".into(),
            )],
        };
        assert_eq!(
            u.reach("https://api.github.com/repos/a/b"),
            "http://127.0.0.1:9/api/repos/a/b"
        );
        assert_eq!(
            u.reach("https://github.com/a/b/releases/download/1/x.zip"),
            "http://127.0.0.1:9/web/a/b/releases/download/1/x.zip"
        );
        assert_eq!(
            u.reach("https://raw.githubusercontent.com/a/b/master/x.netkan"),
            "http://127.0.0.1:9/web/_raw/a/b/master/x.netkan"
        );
        assert_eq!(
            u.reach("https://spacedock.info/api/mod/1"),
            "http://127.0.0.1:9/sd/api/mod/1"
        );
        assert_eq!(
            u.reach("https://github.community/x"),
            "https://github.community/x"
        );
        assert_eq!(
            u.public("http://127.0.0.1:9/kt/_downloads/a.zip"),
            "https://www.kerbaltek.com/_downloads/a.zip"
        );
        let real = Upstreams::default();
        assert_eq!(real.reach("https://github.com/a"), "https://github.com/a");
    }
}
