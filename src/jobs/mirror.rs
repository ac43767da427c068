//! `mirror`: copies the downloads of new `.ckan` versions to an archive with the Internet
//! Archive's S3-like API, in a job container with a network, the worker's download cache
//! and its `netkan.archive_*` settings.
//!
//! Spec: `{"ckans": ["<.ckan text>", …]}`. Per module: a package with a redistributable
//! license and a known download type is fetched (through the cache), its sha1 and sha256
//! checked, and `PUT` as `{archive}/<id>-<version>/<sha1[:8]>-<id>-<version>.<ext>` with the
//! item's metadata headers, unless the archive has that file already. The result lists
//! what was mirrored, skipped (and why) and failed. A failed upload fails the job so it is
//! retried; the files already there are skipped on the next attempt.

use super::{object, only_fields, ContainerSetup, JobContext, JobError, JobKind};
use crate::config::Config;
use crate::netkan::Fetcher;
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use sha1::Digest;
use std::time::Duration;

pub struct Mirror;

/// Most modules in one job.
const MAX_CKANS: usize = 500;
/// Largest `.ckan` text accepted, bytes.
const MAX_CKAN: usize = 1 << 20;

fn ckans(spec: &Value) -> Result<Vec<Map<String, Value>>, JobError> {
    let list = match object(spec)?.get("ckans") {
        Some(Value::Array(list)) if (1..=MAX_CKANS).contains(&list.len()) => list,
        Some(Value::Array(list)) => {
            return Err(JobError::BadSpec(format!(
                "`ckans` must hold 1 to {MAX_CKANS} modules, got {}",
                list.len()
            )))
        }
        Some(v) => {
            return Err(JobError::BadSpec(format!(
                "`ckans` must be a list, got {v}"
            )))
        }
        None => return Err(JobError::BadSpec("`ckans` is missing".into())),
    };
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let bad = |m: String| JobError::BadSpec(format!("ckans[{i}]: {m}"));
            let text = c
                .as_str()
                .ok_or_else(|| bad("must be the .ckan's text".into()))?;
            if text.len() > MAX_CKAN {
                return Err(bad(format!(
                    "{} bytes; the limit is {MAX_CKAN}",
                    text.len()
                )));
            }
            match serde_json::from_str(text) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err(bad("not a JSON object".into())),
                Err(e) => Err(bad(format!("not JSON: {e}"))),
            }
        })
        .collect()
}

/// The archive's file extension for a download's content type.
fn extension(content_type: &str) -> Option<&'static str> {
    Some(match content_type.split(';').next()?.trim() {
        "application/zip" | "application/x-zip-compressed" => "zip",
        "application/x-gzip" | "application/gzip" => "gz",
        "application/x-tar" => "tar",
        "application/x-compressed-tar" => "tar.gz",
        "application/x-7z-compressed" => "7z",
        _ => return None,
    })
}

/// Letters, digits, `.`, `_` and `-` only (what archive item names allow).
fn item_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// What one module is stored as, or why it is not mirrored.
#[derive(Debug, PartialEq)]
pub struct Target {
    pub item: String,
    pub file: String,
    pub download: String,
    pub sha1: String,
    pub sha256: String,
    pub content_type: String,
}

/// Where a module goes in the archive; `Err` says why it is skipped.
pub fn target(m: &Map<String, Value>) -> Result<Target, String> {
    let s = |k: &str| m.get(k).and_then(Value::as_str);
    let id = s("identifier").ok_or("no identifier")?;
    let version = s("version").ok_or("no version")?;
    if !matches!(s("kind"), None | Some("package")) {
        return Err("not a package (nothing to download)".into());
    }
    if !crate::netkan::ckan::redistributable(m) {
        return Err("its license does not allow redistribution".into());
    }
    let download = match m.get("download") {
        Some(Value::String(u)) => u.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .find_map(Value::as_str)
            .ok_or("no download URL")?
            .to_owned(),
        _ => return Err("no download URL".into()),
    };
    let hash = |k: &str| {
        m.get("download_hash")
            .and_then(|h| h.get(k))
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
    };
    let (Some(sha1), Some(sha256)) = (hash("sha1"), hash("sha256")) else {
        return Err("no download_hash to check the download against".into());
    };
    if sha1.len() < 8 {
        return Err("download_hash.sha1 is too short".into());
    }
    let content_type = s("download_content_type").unwrap_or_default().to_owned();
    let ext = extension(&content_type)
        .ok_or_else(|| format!("download type `{content_type}` is not one the archive takes"))?;
    let name = item_safe(&format!("{id}-{}", version.replace(':', "-")));
    Ok(Target {
        file: format!("{}-{name}.{ext}", &sha1[..8]),
        item: name,
        download,
        sha1,
        sha256,
        content_type,
    })
}

/// A header value the archive reads as UTF-8 (`uri(…)` when it is not plain ASCII).
fn header_value(s: &str) -> String {
    let plain = s.chars().all(|c| c.is_ascii() && !c.is_ascii_control());
    if plain {
        return s.to_owned();
    }
    let mut out = String::from("uri(");
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~ ".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push(')');
    out
}

/// The item's metadata, as `x-archive-meta-*` headers.
pub fn metadata(m: &Map<String, Value>, collection: &str) -> Vec<(String, String)> {
    let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or_default();
    let authors = crate::netkan::string_list(m.get("author")).join(", ");
    let licenses = crate::netkan::string_list(m.get("license")).join(", ");
    let mut out = vec![
        ("title", format!("{} - {}", s("name"), s("version"))),
        (
            "description",
            format!("{} (license: {licenses})", s("abstract")),
        ),
        ("creator", authors),
        ("collection", collection.to_owned()),
        ("mediatype", "software".into()),
        ("subject", "ksp;kerbal space program;mod".into()),
    ];
    if let Some(url) = m
        .get("resources")
        .and_then(|r| r.get("homepage"))
        .and_then(Value::as_str)
    {
        out.push(("source", url.to_owned()));
    }
    out.into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (format!("x-archive-meta-{k}"), header_value(&v)))
        .collect()
}

impl JobKind for Mirror {
    fn name(&self) -> &'static str {
        "mirror"
    }

    fn validate(&self, spec: &Value) -> Result<(), JobError> {
        only_fields(spec, &["ckans"])?;
        ckans(spec).map(drop)
    }

    fn run<'a>(
        &'a self,
        spec: &'a Value,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(async move {
            let ckans = ckans(spec)?;
            let config = super::settings_inside()?;
            let n = &config.netkan;
            if n.archive_url.is_empty() || n.archive_access.is_empty() {
                return Err(JobError::Failed(
                    "this worker has no archive: set netkan.archive_url, archive_access and archive_secret".into(),
                ));
            }
            let fetcher =
                Fetcher::from_config(&config).map_err(|e| JobError::Failed(e.to_string()))?;
            let http = reqwest::Client::builder()
                .user_agent(concat!("kraken-mirror/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(3600))
                .build()
                .map_err(|e| JobError::Failed(e.to_string()))?;
            let archive = Archive {
                http,
                base: n.archive_url.trim_end_matches('/').to_owned(),
                auth: format!("LOW {}:{}", n.archive_access, n.archive_secret),
                collection: n.archive_collection.clone(),
            };
            let (mut mirrored, mut skipped, mut failed) = (vec![], vec![], vec![]);
            let mut retry = false;
            for m in &ckans {
                let id = m.get("identifier").and_then(Value::as_str).unwrap_or("?");
                let t = match target(m) {
                    Ok(t) => t,
                    Err(why) => {
                        ctx.log(&format!("{id}: skipped: {why}"));
                        skipped.push(json!({"identifier": id, "reason": why}));
                        continue;
                    }
                };
                match archive.mirror(m, &t, &fetcher).await {
                    Ok(true) => {
                        ctx.log(&format!("{id}: mirrored as {}/{}", t.item, t.file));
                        mirrored.push(json!({"identifier": id, "item": t.item, "file": t.file}));
                    }
                    Ok(false) => {
                        ctx.log(&format!("{id}: already in the archive"));
                        skipped.push(json!({"identifier": id, "reason": "already in the archive"}));
                    }
                    Err((why, retryable)) => {
                        ctx.log(&format!("{id}: failed: {why}"));
                        retry |= retryable;
                        failed.push(json!({"identifier": id, "item": t.item, "error": why}));
                    }
                }
            }
            if retry {
                return Err(JobError::Failed(format!(
                    "{} of {} uploads failed; retried later: {}",
                    failed.len(),
                    ckans.len(),
                    failed
                        .iter()
                        .filter_map(|f| f["error"].as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
            Ok(json!({"mirrored": mirrored, "skipped": skipped, "failed": failed}))
        })
    }

    fn container_setup(&self, config: &Config) -> ContainerSetup {
        let n = &config.netkan;
        let mut setup = super::inflate::Inflate.container_setup(config);
        setup.env.extend([
            format!("KRAKEN_NETKAN_ARCHIVE_URL={}", n.archive_url),
            format!("KRAKEN_NETKAN_ARCHIVE_ACCESS={}", n.archive_access),
            format!("KRAKEN_NETKAN_ARCHIVE_SECRET={}", n.archive_secret),
            format!("KRAKEN_NETKAN_ARCHIVE_COLLECTION={}", n.archive_collection),
        ]);
        setup
    }
}

struct Archive {
    http: reqwest::Client,
    base: String,
    auth: String,
    collection: String,
}

impl Archive {
    /// Uploads one module's download; `Ok(false)` when the archive has it already. An error
    /// says whether trying again may help.
    async fn mirror(
        &self,
        m: &Map<String, Value>,
        t: &Target,
        fetcher: &Fetcher,
    ) -> Result<bool, (String, bool)> {
        let url = format!("{}/{}/{}", self.base, t.item, t.file);
        let head = self
            .http
            .head(&url)
            .header("authorization", &self.auth)
            .send()
            .await
            .map_err(|e| (format!("asking the archive: {e}"), true))?;
        if head.status().is_success() {
            return Ok(false);
        }
        let download = fetcher
            .download(&t.download)
            .await
            .map_err(|e| (e.to_string(), e.retryable()))?;
        let bytes = tokio::fs::read(&download.path)
            .await
            .map_err(|e| (format!("reading the download: {e}"), true))?;
        let sha1 = hex::encode(sha1::Sha1::digest(&bytes));
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        if sha1 != t.sha1 || sha256 != t.sha256 {
            // the host serves other bytes than were indexed: neither is kept
            fetcher.forget(&t.download);
            return Err((
                format!(
                    "hash mismatch: {} has sha1 {sha1}, sha256 {sha256}; the .ckan says {}, {}",
                    t.download, t.sha1, t.sha256
                ),
                false,
            ));
        }
        let mut put = self
            .http
            .put(&url)
            .header("authorization", &self.auth)
            .header("content-type", &t.content_type)
            .header("content-length", bytes.len())
            .header("x-amz-auto-make-bucket", "1")
            .header("x-archive-queue-derive", "0");
        for (k, v) in metadata(m, &self.collection) {
            put = put.header(k, v);
        }
        let resp = put
            .body(bytes)
            .send()
            .await
            .map_err(|e| (format!("uploading: {e}"), true))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err((
                format!(
                    "the archive answered {status}: {}",
                    text.chars().take(300).collect::<String>()
                ),
                true,
            ));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ckan(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn targets_follow_the_archive_names_and_skip_what_may_not_be_copied() {
        let m = ckan(json!({
            "identifier": "Astro", "version": "1:2.0+b", "license": "MIT", "name": "Aströ",
            "download": "https://example.com/a.zip", "download_content_type": "application/zip",
            "download_hash": {"sha1": "ABCDEF0123456789", "sha256": "00FF"},
        }));
        let t = target(&m).unwrap();
        assert_eq!(t.item, "Astro-1-2.0-b");
        assert_eq!(t.file, "abcdef01-Astro-1-2.0-b.zip");
        assert_eq!(t.sha256, "00ff");
        let meta = metadata(&m, "kspckanmods");
        assert!(meta.contains(&("x-archive-meta-collection".into(), "kspckanmods".into())));
        assert!(meta.contains(&(
            "x-archive-meta-title".into(),
            "uri(Astr%C3%B6 - 1%3A2.0%2Bb)".into()
        )));
        for (change, why) in [
            (json!({"license": "restricted"}), "license"),
            (json!({"license": ["unknown"]}), "license"),
            (json!({"kind": "metapackage"}), "not a package"),
            (json!({"download_content_type": "text/html"}), "text/html"),
            (json!({"download_hash": null}), "download_hash"),
        ] {
            let mut m = m.clone();
            for (k, v) in change.as_object().unwrap() {
                m.insert(k.clone(), v.clone());
            }
            let err = target(&m).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn specs_are_checked() {
        assert!(Mirror.validate(&json!({"ckans": ["{}"]})).is_ok());
        for (spec, says) in [
            (json!({}), "`ckans` is missing"),
            (json!({"ckans": []}), "1 to 500"),
            (json!({"ckans": [1]}), "ckans[0]: must be the .ckan's text"),
            (json!({"ckans": ["{"]}), "ckans[0]: not JSON"),
            (json!({"ckans": ["{}"], "x": 1}), "unknown field `x`"),
        ] {
            let err = Mirror.validate(&spec).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }
}

#[cfg(test)]
mod setup_tests {
    use super::*;
    use crate::config::Overrides;

    #[test]
    fn the_container_gets_the_archive() {
        let mut config = Config::default();
        config.netkan.archive_url = "http://10.0.0.1:9/ia".into();
        config.netkan.archive_access = "a".into();
        config.netkan.archive_secret = "s".into();
        let setup = Mirror.container_setup(&config);
        let env = setup
            .env
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())));
        let inside = Config::load(None, env, &Overrides::default()).unwrap();
        assert_eq!(inside.netkan.archive_url, "http://10.0.0.1:9/ia");
        assert_eq!(inside.netkan.archive_access, "a");
        assert_eq!(inside.netkan.archive_secret, "s");
    }
}
