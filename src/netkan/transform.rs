//! The inflation pipeline: parsing (JSON, YAML, several documents), then the transformers in
//! NetKAN's order (staging, metanetkan, the kref's host, the version file and localizations,
//! version edits, forced `v`, epochs and the out-of-order check, overrides, download
//! attributes, install size, `x_generated_by`, stripping netkan-only properties), merging
//! the documents, `spec_version`, canonical order, validation, and the outcome record.

use super::archive::{self, Archive, AvcFile, KspVersion};
use super::ckan;
use super::fetch::{Fetcher, GITHUB_API};
use super::sources;
use super::version::Version;
use super::NetkanError;
use serde::Serialize;
use serde_json::{Map, Value};
use sha1::Digest as _;

type Json = Map<String, Value>;

/// Where the host's "updated" time waits until it becomes `release_date`.
const UPDATED: &str = "x_netkan_kraken_updated";

/// Options of one inflation.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The highest version already indexed, for the out-of-order check.
    pub highest_version: Option<String>,
    /// The game (`KSP`); kept in the outcome.
    pub game_id: Option<String>,
    /// Take GitHub pre-releases (also `x_netkan_github.prereleases`).
    pub prereleases: bool,
    /// The file name the netkan came from; its stem must be the identifier.
    pub file_name: Option<String>,
}

/// The result of one inflation, with NetKAN's attribute names.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Outcome {
    pub success: bool,
    pub staged: bool,
    pub staging_reason: Option<String>,
    pub error_message: Option<String>,
    pub warning_messages: Vec<String>,
    pub check_time: String,
    pub file_name: Option<String>,
    pub mod_identifier: Option<String>,
    pub game_id: String,
    /// The `.ckan` text.
    pub ckan: Option<String>,
}

impl Outcome {
    /// `<identifier>-<version>.ckan`, a `:` in the version written as `-`.
    pub fn ckan_file_name(identifier: &str, version: &str) -> String {
        format!("{identifier}-{}.ckan", version.replace(':', "-"))
    }
}

/// State shared by the transformers of one inflation.
#[derive(Default)]
struct Ctx {
    warnings: Vec<String>,
    staged: bool,
    staging_reason: Option<String>,
    /// The downloads this inflation fetched; dropped from the cache when one turns out not
    /// to be a readable archive.
    downloaded: Vec<String>,
}

/// Inflates a netkan; never fails: problems are in the outcome.
pub async fn inflate(text: &str, opts: &Options, f: &Fetcher) -> Outcome {
    let mut ctx = Ctx::default();
    let game_id = opts.game_id.clone().unwrap_or_else(|| "KSP".into());
    let check_time = crate::now_rfc3339();
    let docs = parse(text);
    let identifier = docs
        .as_ref()
        .ok()
        .and_then(|d| d.first())
        .and_then(|d| d.get("identifier"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let result = match docs {
        Ok(docs) => inflate_docs(docs, opts, f, &mut ctx).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(module) => {
            let id = module
                .get("identifier")
                .and_then(Value::as_str)
                .unwrap_or("");
            let version = version_text(&module);
            Outcome {
                success: true,
                staged: ctx.staged,
                staging_reason: ctx.staging_reason,
                error_message: None,
                warning_messages: ctx.warnings,
                check_time,
                file_name: Some(Outcome::ckan_file_name(id, version)),
                mod_identifier: Some(id.to_owned()),
                game_id,
                ckan: Some(ckan::to_text(&module)),
            }
        }
        Err(error) => {
            // a download that led nowhere is not kept for the next try
            if matches!(error, NetkanError::Archive(_)) {
                for url in &ctx.downloaded {
                    f.forget(url);
                }
            }
            Outcome {
                success: false,
                staged: ctx.staged,
                staging_reason: ctx.staging_reason,
                error_message: Some(error.to_string()),
                warning_messages: ctx.warnings,
                check_time,
                file_name: None,
                mod_identifier: identifier,
                game_id,
                ckan: None,
            }
        }
    }
}

/// Parses a netkan: JSON, or YAML with one or more documents; each must be an object.
pub fn parse(text: &str) -> Result<Vec<Json>, NetkanError> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let values: Vec<Value> = if trimmed.starts_with('{') {
        vec![serde_json::from_str(trimmed)
            .map_err(|e| NetkanError::BadNetkan(format!("the netkan is not valid JSON: {e}")))?]
    } else {
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(trimmed) {
            let v = <serde_json::Value as serde::Deserialize>::deserialize(doc).map_err(|e| {
                NetkanError::BadNetkan(format!("the netkan is not valid YAML: {e}"))
            })?;
            if !v.is_null() {
                docs.push(yaml_numbers_as_strings(v));
            }
        }
        docs
    };
    if values.is_empty() {
        return Err(NetkanError::BadNetkan("the netkan is empty".into()));
    }
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(o) => Ok(o),
            _ => Err(NetkanError::BadNetkan(format!(
                "document {} of the netkan is not an object of properties",
                i + 1
            ))),
        })
        .collect()
}

/// YAML numbers become strings, as in NetKAN's YAML reading (`ksp_version: 1.12` is the
/// version "1.12", not a float).
fn yaml_numbers_as_strings(v: Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Array(a) => Value::Array(a.into_iter().map(yaml_numbers_as_strings).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, yaml_numbers_as_strings(v)))
                .collect(),
        ),
        v => v,
    }
}

/// A flag that may be written as a boolean or as a string.
fn flag(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// `#/ckan/<source>/<id>`.
fn reference(json: &Json, key: &str) -> Result<Option<(String, String)>, NetkanError> {
    let Some(v) = json.get(key) else {
        return Ok(None);
    };
    let s = v
        .as_str()
        .ok_or_else(|| NetkanError::BadNetkan(format!("`{key}` must be a string")))?;
    let rest = s.strip_prefix("#/ckan/").ok_or_else(|| {
        NetkanError::BadNetkan(format!("`{key}` `{s}` does not start with `#/ckan/`"))
    })?;
    let (source, id) = rest.split_once('/').unwrap_or((rest, ""));
    Ok(Some((source.to_owned(), id.to_owned())))
}

fn safe_add(json: &mut Json, key: &str, value: impl Into<Value>) {
    let value = value.into();
    if value.is_null() {
        return;
    }
    if !json.contains_key(key) {
        json.insert(key.to_owned(), value);
    }
}

fn resources(json: &mut Json) -> &mut Json {
    if !json.get("resources").is_some_and(Value::is_object) {
        json.insert("resources".into(), Value::Object(Map::new()));
    }
    match json.get_mut("resources") {
        Some(Value::Object(r)) => r,
        // just made sure it is an object
        _ => unreachable!("resources is an object"),
    }
}

fn is_netkan_only(key: &str) -> bool {
    key.starts_with('$') || key.starts_with("x_netkan")
}

async fn inflate_docs(
    mut docs: Vec<Json>,
    opts: &Options,
    f: &Fetcher,
    ctx: &mut Ctx,
) -> Result<Json, NetkanError> {
    let identifier = docs[0]
        .get("identifier")
        .and_then(Value::as_str)
        .ok_or_else(|| NetkanError::BadNetkan("the netkan has no `identifier`".into()))?
        .to_owned();
    for (i, d) in docs.iter().enumerate() {
        if d.get("identifier").and_then(Value::as_str) != Some(identifier.as_str()) {
            return Err(NetkanError::BadNetkan(format!(
                "document {} has identifier {}, not `{identifier}`",
                i + 1,
                d.get("identifier").cloned().unwrap_or(Value::Null)
            )));
        }
    }
    if let Some(stem) = opts
        .file_name
        .as_deref()
        .and_then(|n| std::path::Path::new(n).file_stem())
        .and_then(|s| s.to_str())
    {
        if stem != identifier {
            return Err(NetkanError::BadNetkan(format!(
                "the file is named `{stem}` but the identifier is `{identifier}`"
            )));
        }
    }
    if docs.len() > 1 {
        // properties that are not netkan-only are shared between the documents
        let shared: Vec<Json> = docs
            .iter()
            .map(|d| {
                d.iter()
                    .filter(|(k, _)| !is_netkan_only(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .collect();
        for d in docs.iter_mut() {
            for other in &shared {
                for (k, v) in other {
                    safe_add(d, k, v.clone());
                }
            }
        }
    }
    let mut results = Vec::new();
    for doc in docs {
        results.push(inflate_one(doc, opts, f, ctx).await?);
    }
    // documents giving the same version become one module with several downloads
    let best = results
        .iter()
        .map(|m| Version::new(version_text(m)))
        .max()
        .ok_or_else(|| NetkanError::BadNetkan("nothing to inflate".into()))?;
    let (same, other): (Vec<Json>, Vec<Json>) = results
        .into_iter()
        .partition(|m| Version::new(version_text(m)) == best);
    for m in other {
        ctx.warnings.push(format!(
            "another host offers version {} (not the newest); it is left out",
            m.get("version").cloned().unwrap_or(Value::Null)
        ));
    }
    let mut module = merge(same);
    let spec = ckan::minimum_spec_version(&module);
    module.insert("spec_version".into(), spec);
    let module = ckan::canonical(&module);
    ckan::validate(&module)?;
    Ok(module)
}

/// A module's version text, empty when it has none.
fn version_text(m: &Json) -> &str {
    m.get("version").and_then(Value::as_str).unwrap_or("")
}

/// Merges modules of one version: later documents' values win, objects merge, lists are
/// united, and every document's download is kept.
fn merge(mut modules: Vec<Json>) -> Json {
    if modules.len() == 1 {
        return modules.remove(0);
    }
    let mut downloads: Vec<Value> = Vec::new();
    for m in &modules {
        match m.get("download") {
            Some(Value::Array(a)) => downloads.extend(a.iter().cloned()),
            Some(v) => downloads.push(v.clone()),
            None => {}
        }
    }
    downloads.dedup();
    let mut out = modules.remove(0);
    for m in modules {
        merge_into(&mut out, m);
    }
    out.insert("download".into(), Value::Array(downloads));
    out
}

fn merge_into(into: &mut Json, from: Json) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge_into(a, b),
            (Some(Value::Array(a)), Value::Array(b)) => {
                for item in b {
                    if !a.contains(&item) {
                        a.push(item);
                    }
                }
            }
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Runs the transformers on one document.
async fn inflate_one(
    mut json: Json,
    opts: &Options,
    f: &Fetcher,
    ctx: &mut Ctx,
) -> Result<Json, NetkanError> {
    let overrides = Overrides::parse(&json)?;
    overrides.apply(&mut json, Hook::Before("staging"))?;
    staging(&json, ctx);
    overrides.apply(&mut json, Hook::After("staging"))?;

    metanetkan(&mut json, f).await?;
    // the metanetkan's target may bring overrides of its own
    let overrides = Overrides::parse(&json)?;
    overrides.apply(&mut json, Hook::After("metanetkan"))?;

    match reference(&json, "$kref")? {
        Some((source, id)) => match source.as_str() {
            "github" => github(&mut json, &id, opts, f).await?,
            "spacedock" => spacedock(&mut json, &id, f).await?,
            "http" => http(&mut json, &id, f).await?,
            "netkan" => {
                return Err(NetkanError::BadNetkan(
                    "a metanetkan may not point at another metanetkan".into(),
                ))
            }
            other => {
                return Err(NetkanError::BadNetkan(format!(
                    "unknown kref `#/ckan/{other}/{id}`: this inflator knows github, spacedock, http and netkan"
                )))
            }
        },
        None => {
            if !json.contains_key("download") {
                return Err(NetkanError::BadNetkan(
                    "the netkan has neither a `$kref` nor a `download`".into(),
                ));
            }
        }
    }
    for host in ["github", "spacedock", "http"] {
        overrides.apply(&mut json, Hook::After(host))?;
    }

    let vref = reference(&json, "$vref")?;
    if let Some((source, _)) = &vref {
        if source != "ksp-avc" {
            return Err(NetkanError::BadNetkan(format!(
                "unknown vref `#/ckan/{source}`: this inflator knows ksp-avc"
            )));
        }
    }
    let download = first_download(&json)?;
    ctx.downloaded.push(download.clone());
    let file = f.download(&download).await?;
    let mut archive = Archive::open(&file.path)?;
    let identifier = json
        .get("identifier")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let installable = archive::installable(&archive, &identifier, json.get("install"))?;

    overrides.apply(&mut json, Hook::Before("avc"))?;
    if let Some((_, path)) = &vref {
        avc(&mut json, &mut archive, &installable, path, f).await?;
    }
    overrides.apply(&mut json, Hook::After("avc"))?;

    let langs = archive::localizations(&mut archive, &installable)?;
    if !langs.is_empty() {
        safe_add(&mut json, "localizations", langs);
    }
    overrides.apply(&mut json, Hook::After("localizations"))?;

    if !json.get("version").is_some_and(Value::is_string) {
        return Err(NetkanError::BadNetkan(
            "no version: the host gave none and no version file set one".into(),
        ));
    }
    version_edit(&mut json)?;
    overrides.apply(&mut json, Hook::After("version_edit"))?;
    forced_v(&mut json);
    overrides.apply(&mut json, Hook::After("forced_v"))?;
    epoch(&mut json, opts, ctx)?;
    overrides.apply(&mut json, Hook::After("epoch"))?;
    overrides.apply(&mut json, Hook::Default)?;

    // download attributes
    let (sha1, sha256) = hashes(&file.path)?;
    safe_add(&mut json, "download_size", file.size);
    safe_add(
        &mut json,
        "download_hash",
        serde_json::json!({ "sha1": sha1, "sha256": sha256 }),
    );
    safe_add(
        &mut json,
        "download_content_type",
        content_type(&file.path, file.content_type.as_deref()),
    );
    if let Some(Value::String(updated)) = json.remove(UPDATED) {
        safe_add(&mut json, "release_date", normalize_date(&updated));
    }
    overrides.apply(&mut json, Hook::After("download_attributes"))?;

    let install_size: u64 = installable.iter().map(|&i| archive.files[i].size).sum();
    safe_add(&mut json, "install_size", install_size);
    overrides.apply(&mut json, Hook::After("install_size"))?;

    exclusive_game_versions(&mut json);
    json.insert("x_generated_by".into(), "netkan".into());
    json.retain(|k, _| !is_netkan_only(k));
    Ok(json)
}

/// `ksp_version` excludes `ksp_version_min`/`_max`: when an override set a bound next to a
/// `ksp_version` from the host, that version becomes the other bound.
fn exclusive_game_versions(json: &mut Json) {
    let Some(v) = json.get("ksp_version").cloned() else {
        return;
    };
    let (has_min, has_max) = (
        json.contains_key("ksp_version_min"),
        json.contains_key("ksp_version_max"),
    );
    if !has_min && !has_max {
        return;
    }
    json.remove("ksp_version");
    if !has_min {
        json.insert("ksp_version_min".into(), v);
    } else if !has_max {
        json.insert("ksp_version_max".into(), v);
    }
}

fn first_download(json: &Json) -> Result<String, NetkanError> {
    match json.get("download") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) => a
            .iter()
            .find_map(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| NetkanError::BadNetkan("`download` is an empty list".into())),
        _ => Err(NetkanError::Upstream(
            "the host gave no download for the newest release".into(),
        )),
    }
}

fn staging(json: &Json, ctx: &mut Ctx) {
    if flag(json.get("x_netkan_staging")) {
        ctx.staged = true;
        ctx.staging_reason = Some(
            json.get("x_netkan_staging_reason")
                .and_then(Value::as_str)
                .unwrap_or("x_netkan_staging is set")
                .to_owned(),
        );
    }
}

async fn metanetkan(json: &mut Json, f: &Fetcher) -> Result<(), NetkanError> {
    let Some((source, url)) = reference(json, "$kref")? else {
        return Ok(());
    };
    if source != "netkan" {
        return Ok(());
    }
    let (text, _) = f.get_text(&url).await?.ok_or_else(|| {
        NetkanError::Upstream(format!("the metanetkan target {url} does not exist (404)"))
    })?;
    let mut target = parse(&text)
        .map_err(|e| NetkanError::BadNetkan(format!("the metanetkan target {url}: {e}")))?;
    if target.len() != 1 {
        return Err(NetkanError::BadNetkan(format!(
            "the metanetkan target {url} has {} documents; one is supported",
            target.len()
        )));
    }
    let target = target.remove(0);
    json.remove("$kref");
    for (k, v) in target {
        match (json.get_mut(&k), v) {
            (Some(Value::Object(local)), Value::Object(remote)) if k == "resources" => {
                for (rk, rv) in remote {
                    local.entry(rk).or_insert(rv);
                }
            }
            (Some(_), _) => {}
            (None, v) => {
                json.insert(k, v);
            }
        }
    }
    resources(json).insert("metanetkan".into(), Value::String(url));
    Ok(())
}

/// `Ferram-Aerospace-Research` → `Ferram Aerospace Research`, `HUDReplacer` → `HUD Replacer`.
fn name_from_project(project: &str) -> String {
    for sep in ['_', '-', '.'] {
        if project.contains(sep) {
            return project.replace(sep, " ");
        }
    }
    let mut chars: Vec<char> = project.chars().collect();
    let mut i = 1;
    while i + 1 < chars.len() {
        let (prev, cur, next) = (chars[i - 1], chars[i], chars[i + 1]);
        if (prev.is_lowercase() && cur.is_uppercase())
            || (prev != ' ' && cur.is_uppercase() && next.is_lowercase())
        {
            chars.insert(i, ' ');
            i += 1;
        }
        i += 1;
    }
    chars.into_iter().collect()
}

fn set_repo_resources(repo: &sources::GhRepo, r: &mut Json) {
    safe_add(r, "repository", repo.html_url.clone());
    if let Some(h) = repo.homepage.as_deref().filter(|h| !h.trim().is_empty()) {
        safe_add(r, "homepage", h.to_owned());
    }
    if repo.has_issues {
        safe_add(r, "bugtracker", format!("{}/issues", repo.html_url));
    }
    if repo.has_discussions {
        safe_add(r, "discussions", format!("{}/discussions", repo.html_url));
    }
    if repo.has_wiki {
        safe_add(r, "manual", format!("{}/wiki", repo.html_url));
    }
}

async fn github(json: &mut Json, id: &str, opts: &Options, f: &Fetcher) -> Result<(), NetkanError> {
    let parts: Vec<&str> = id.splitn(4, '/').collect();
    let (owner, project) = match parts.as_slice() {
        [o, p, ..] if !o.is_empty() && !p.is_empty() => (*o, *p),
        _ => {
            return Err(NetkanError::BadNetkan(format!(
                "kref `#/ckan/github/{id}` needs an owner and a repository"
            )))
        }
    };
    let asset_re = match parts.as_slice() {
        [_, _, "asset_match", re] => regex::Regex::new(re)
            .map_err(|e| NetkanError::BadNetkan(format!("asset_match `{re}`: {e}")))?,
        [_, _, other, ..] => {
            return Err(NetkanError::BadNetkan(format!(
                "kref `#/ckan/github/{id}`: unknown option `{other}` (known: asset_match)"
            )))
        }
        _ => regex::Regex::new(r"\.zip$").map_err(|e| NetkanError::BadNetkan(e.to_string()))?,
    };
    let conf = json.get("x_netkan_github").and_then(Value::as_object);
    let source_archive = flag(conf.and_then(|c| c.get("use_source_archive")));
    let prereleases = opts.prereleases || flag(conf.and_then(|c| c.get("prereleases")));
    let full = format!("{owner}/{project}");
    let repo = sources::github_repo(f, &full).await?;
    let release = sources::github_releases(f, &full, prereleases, |r| {
        source_archive || r.assets.iter().any(|a| asset_re.is_match(&a.name))
    })
    .await?
    .ok_or_else(|| {
        NetkanError::Upstream(format!(
            "GitHub repository {full} has no release with an asset matching `{}`",
            asset_re.as_str()
        ))
    })?;
    let tag = release.tag_name.clone().unwrap_or_default();
    if let Some(d) = repo.description.as_deref().filter(|d| !d.trim().is_empty()) {
        safe_add(json, "abstract", d.to_owned());
    }
    if let Some(spdx) = repo
        .license
        .as_ref()
        .and_then(|l| l.spdx_id.as_deref())
        .filter(|s| !s.trim().is_empty() && *s != "NOASSERTION")
    {
        safe_add(json, "license", spdx.to_owned());
    }
    set_repo_resources(&repo, resources(json));
    safe_add(json, "version", tag.clone());
    if !json.contains_key("author") {
        let authors = github_authors(f, &repo, &release).await?;
        match authors.len() {
            0 => {}
            1 => safe_add(json, "author", authors[0].clone()),
            _ => safe_add(json, "author", authors),
        }
    }
    json.remove("$kref");
    if source_archive {
        let url = release
            .zipball_url
            .clone()
            .unwrap_or_else(|| format!("{GITHUB_API}/repos/{full}/zipball/{tag}"));
        safe_add(json, "download", url);
        safe_add(json, "download_content_type", "application/vnd.github+json");
        if let Some(p) = &release.published_at {
            safe_add(json, UPDATED, p.clone());
        }
    } else if let Some(asset) = release.assets.iter().find(|a| asset_re.is_match(&a.name)) {
        safe_add(json, "download", asset.browser_download_url.clone());
        if let Some(u) = &asset.updated_at {
            safe_add(json, UPDATED, u.clone());
        }
    }
    safe_add(json, "name", name_from_project(project));
    if release.prerelease {
        safe_add(json, "release_status", "testing");
    }
    Ok(())
}

/// The owners of the repository and its forks' parents (root first), then the releaser;
/// organisations stand for their public members, bots for nobody.
async fn github_authors(
    f: &Fetcher,
    repo: &sources::GhRepo,
    release: &sources::GhRelease,
) -> Result<Vec<String>, NetkanError> {
    let mut owners = vec![repo.owner.clone()];
    let mut parent = repo.parent.clone();
    let mut hops = 0;
    while let Some(p) = parent.take().filter(|_| hops < 5) {
        hops += 1;
        let r = sources::github_repo(f, &p.full_name).await?;
        owners.push(r.owner.clone());
        parent = r.parent.clone();
    }
    owners.reverse();
    owners.push(release.author.clone());
    let mut out: Vec<String> = Vec::new();
    for user in owners.into_iter().flatten() {
        let logins = match user.kind.as_str() {
            "Organization" => sources::github_org_members(f, &user.login).await?,
            "Bot" => vec![],
            _ => vec![user.login],
        };
        for l in logins {
            if !out.contains(&l) {
                out.push(l);
            }
        }
    }
    Ok(out)
}

async fn spacedock(json: &mut Json, id: &str, f: &Fetcher) -> Result<(), NetkanError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NetkanError::BadNetkan(format!(
            "kref `#/ckan/spacedock/{id}` needs a numeric mod id"
        )));
    }
    let sd = sources::spacedock_mod(f, id).await?;
    let v = sd
        .newest()
        .ok_or_else(|| NetkanError::Upstream(format!("SpaceDock mod {id} has no versions")))?
        .clone();
    if !json.contains_key("ksp_version_min")
        && !json.contains_key("ksp_version_max")
        && !json.contains_key("ksp_version")
    {
        if let Some(gv) = v.game_version.as_deref().and_then(KspVersion::parse) {
            let without_build = KspVersion(gv.0.into_iter().take(3).collect());
            json.insert("ksp_version".into(), without_build.to_string().into());
        }
    }
    safe_add(json, "name", sd.name.clone());
    if let Some(a) = &sd.short_description {
        safe_add(json, "abstract", a.clone());
    }
    if let Some(fv) = &v.friendly_version {
        safe_add(json, "version", fv.clone());
    }
    json.remove("$kref");
    if let Some(p) = &v.download_path {
        safe_add(json, "download", format!("{}{p}", super::fetch::SPACEDOCK));
    }
    if let Some(c) = &v.created {
        safe_add(json, UPDATED, c.clone());
    }
    let mut authors = vec![sd.author.clone()];
    authors.extend(sd.shared_authors.iter().map(|u| u.username.clone()));
    if authors.len() == 1 {
        safe_add(json, "author", sd.author.clone());
    } else {
        safe_add(json, "author", authors);
    }
    if let Some(l) = &sd.license {
        let l = l.trim().replace(' ', "-");
        let license = match l.as_str() {
            "GPLv2" => "GPL-2.0".to_owned(),
            "GPLv3" => "GPL-3.0".to_owned(),
            "Other" => "unknown".to_owned(),
            "ARR" | "All-Rights-Reserved" | "All-rights-reserved" => "restricted".to_owned(),
            _ => l,
        };
        safe_add(json, "license", license);
    }
    let page = sd.page_url();
    let r = resources(json);
    safe_add(r, "spacedock", page);
    if let Some(w) = sd.website.as_deref().filter(|w| !w.trim().is_empty()) {
        safe_add(r, "homepage", w.trim().to_owned());
    }
    if let Some(b) = sd.background.as_deref().filter(|b| !b.trim().is_empty()) {
        safe_add(r, "x_screenshot", b.trim().to_owned());
    }
    let source = sd.source_code.clone().filter(|s| !s.trim().is_empty());
    if let Some(src) = &source {
        if let Some(rest) = src
            .trim()
            .strip_prefix("https://github.com/")
            .or_else(|| src.trim().strip_prefix("http://github.com/"))
        {
            let mut it = rest.split('/');
            if let (Some(o), Some(p)) = (it.next(), it.next()) {
                let p = p.trim_end_matches(".git");
                // the repository's resources are a bonus: a failure is not an error
                if let Ok(repo) = sources::github_repo(f, &format!("{o}/{p}")).await {
                    // GitHub's canonical URL replaces a deep link into the repository
                    resources(json).insert("repository".into(), repo.html_url.clone().into());
                    set_repo_resources(&repo, resources(json));
                }
            }
        }
        safe_add(resources(json), "repository", src.trim().to_owned());
    }
    Ok(())
}

async fn http(json: &mut Json, url: &str, f: &Fetcher) -> Result<(), NetkanError> {
    if !crate::config::is_http_url(url) {
        return Err(NetkanError::BadNetkan(format!(
            "kref `#/ckan/http/{url}` needs an http(s) URL"
        )));
    }
    let resolved = f.resolve_redirects(url).await?;
    json.remove("$kref");
    safe_add(json, "download", resolved);
    Ok(())
}

async fn avc(
    json: &mut Json,
    archive: &mut Archive,
    installable: &[usize],
    path: &str,
    f: &Fetcher,
) -> Result<(), NetkanError> {
    let Some(entry) =
        archive::find_version_file(archive, installable, Some(path).filter(|p| !p.is_empty()))?
            .cloned()
    else {
        return Err(NetkanError::Validation(
            "the vref asks for a KSP-AVC version file, but the download installs none".into(),
        ));
    };
    let text = archive.read_text(&entry)?;
    let local = AvcFile::parse(&entry.path, &text)?;
    let remote_url = local.url.clone();
    let mut avc = local;
    // the remote file is preferred when it describes the same version (it is where authors
    // fix game version bounds after a release); any trouble with it is no error
    if let Some(remote) = remote_avc(f, &avc).await {
        avc = remote;
    }
    let existing = |k: &str| {
        json.get(k)
            .and_then(Value::as_str)
            .and_then(KspVersion::parse)
    };
    let ex_min = existing("ksp_version_min").or_else(|| existing("ksp_version"));
    let ex_max = existing("ksp_version_max").or_else(|| existing("ksp_version"));
    let avc_min = avc.ksp_min.clone().or_else(|| avc.ksp_version.clone());
    let avc_max = avc.ksp_max.clone().or_else(|| avc.ksp_version.clone());
    let min = [ex_min, avc_min].into_iter().flatten().min();
    let max = [ex_max, avc_max].into_iter().flatten().max();
    if min.is_some() || max.is_some() {
        for k in ["ksp_version", "ksp_version_min", "ksp_version_max"] {
            json.remove(k);
        }
        match (min, max) {
            (Some(a), Some(b)) if a == b => {
                json.insert("ksp_version".into(), a.to_string().into());
            }
            (a, b) => {
                if let Some(a) = a {
                    json.insert("ksp_version_min".into(), a.to_string().into());
                }
                if let Some(b) = b {
                    json.insert("ksp_version_max".into(), b.to_string().into());
                }
            }
        }
    }
    if let Some(v) = avc.version {
        if flag(json.get("x_netkan_trust_version_file")) {
            json.insert("version".into(), v.into());
        } else {
            safe_add(json, "version", v);
        }
    }
    if let Some(url) = remote_url.filter(|u| crate::config::is_http_url(u)) {
        safe_add(resources(json), "remote-avc", url);
    }
    Ok(())
}

/// The version file at the local one's `URL`, when it describes the same version.
async fn remote_avc(f: &Fetcher, local: &AvcFile) -> Option<AvcFile> {
    let url = local
        .url
        .as_deref()
        .filter(|u| crate::config::is_http_url(u))?;
    let local_version = local.version.as_deref()?;
    let url = raw_github_url(url);
    let text = match f.get_text(&url).await {
        Ok(Some((text, _))) => text,
        Ok(None) => {
            tracing::info!(%url, "the remote version file is missing; using the local one");
            return None;
        }
        Err(error) => {
            tracing::info!(%url, %error, "the remote version file could not be fetched; using the local one");
            return None;
        }
    };
    let remote = AvcFile::parse(&url, &text)
        .inspect_err(|error| tracing::info!(%error, "using the local version file"))
        .ok()?;
    let same = remote
        .version
        .as_deref()
        .is_some_and(|v| super::version::cmp_str(v, local_version).is_eq());
    same.then_some(remote)
}

/// A GitHub page URL of a file (`https://github.com/<owner>/<repo>/blob|tree/<ref>/<path>`)
/// as the raw file URL, as KSP-AVC itself reads it; any other URL as it is.
pub fn raw_github_url(url: &str) -> String {
    let Some(rest) = url
        .strip_prefix("https://github.com/")
        .or_else(|| url.strip_prefix("http://github.com/"))
    else {
        return url.to_owned();
    };
    let parts: Vec<&str> = rest.splitn(5, '/').collect();
    match parts.as_slice() {
        [owner, repo, "blob" | "tree", reference, path] if !path.is_empty() => {
            format!("https://raw.githubusercontent.com/{owner}/{repo}/{reference}/{path}")
        }
        _ => url.to_owned(),
    }
}

fn version_edit(json: &mut Json) -> Result<(), NetkanError> {
    let Some(edit) = json.get("x_netkan_version_edit").cloned() else {
        return Ok(());
    };
    let (find, replace, strict) = match &edit {
        Value::String(s) => (s.clone(), "${version}".to_owned(), true),
        Value::Object(o) => (
            o.get("find")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            o.get("replace")
                .and_then(Value::as_str)
                .unwrap_or("${version}")
                .to_owned(),
            o.get("strict").and_then(Value::as_bool).unwrap_or(true),
        ),
        _ => {
            return Err(NetkanError::BadNetkan(
                "`x_netkan_version_edit` must be a string or an object".into(),
            ))
        }
    };
    let re = regex::Regex::new(&find)
        .map_err(|e| NetkanError::BadNetkan(format!("x_netkan_version_edit `{find}`: {e}")))?;
    let version = json
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match re.captures(&version) {
        Some(caps) => {
            let mut out = String::new();
            caps.expand(&replace, &mut out);
            json.insert("version".into(), out.into());
        }
        None if strict => {
            return Err(NetkanError::BadNetkan(format!(
                "x_netkan_version_edit `{find}` does not match the version `{version}`"
            )))
        }
        None => {}
    }
    Ok(())
}

fn forced_v(json: &mut Json) {
    if !flag(json.get("x_netkan_force_v")) {
        return;
    }
    if let Some(Value::String(v)) = json.get("version") {
        if !v.starts_with('v') {
            let forced = format!("v{v}");
            json.insert("version".into(), forced.into());
        }
    }
}

fn epoch(json: &mut Json, opts: &Options, ctx: &mut Ctx) -> Result<(), NetkanError> {
    if let Some(e) = json.get("x_netkan_epoch") {
        let n: u32 = match e {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            NetkanError::BadNetkan(format!("x_netkan_epoch {e} is not a whole number"))
        })?;
        if n != 0 {
            let v = json
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let with = format!("{n}:{v}");
            json.insert("version".into(), with.into());
        }
    }
    if flag(json.get("x_netkan_allow_out_of_order")) {
        return Ok(());
    }
    if let Some(highest) = opts.highest_version.as_deref().map(Version::new) {
        let mut current = Version::new(
            json.get("version")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        );
        let mut bumps = 0;
        while current < highest && bumps < 1000 {
            ctx.staged = true;
            ctx.staging_reason = Some(format!(
                "Auto-epoching out of order version: {current} < {highest}"
            ));
            current = current.with_epoch(current.epoch() + 1);
            bumps += 1;
        }
        json.insert("version".into(), current.as_str().into());
    }
    Ok(())
}

fn hashes(path: &std::path::Path) -> Result<(String, String), NetkanError> {
    let mut file = std::fs::File::open(path).map_err(|e| NetkanError::Download(e.to_string()))?;
    let mut s1 = sha1::Sha1::new();
    let mut s256 = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)
            .map_err(|e| NetkanError::Download(e.to_string()))?;
        if n == 0 {
            break;
        }
        s1.update(&buf[..n]);
        s256.update(&buf[..n]);
    }
    Ok((
        hex::encode_upper(s1.finalize()),
        hex::encode_upper(s256.finalize()),
    ))
}

/// The download's type from its first bytes; the server's word only when they say nothing
/// (CDNs often answer `application/octet-stream` for a zip).
fn content_type(path: &std::path::Path, header: Option<&str>) -> String {
    let mut magic = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
        .unwrap_or(0);
    let m = &magic[..n];
    if m.starts_with(b"PK\x03\x04") || m.starts_with(b"PK\x05\x06") {
        "application/zip".into()
    } else if m.starts_with(&[0x1f, 0x8b]) {
        "application/gzip".into()
    } else if m.starts_with(b"7z\xbc\xaf\x27\x1c") {
        "application/x-7z-compressed".into()
    } else if m.starts_with(b"Rar!") {
        "application/vnd.rar".into()
    } else {
        header
            .and_then(|h| h.split(';').next())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "application/octet-stream".into())
    }
}

/// Dates as CKAN writes them: UTC with a `Z`.
fn normalize_date(s: &str) -> String {
    s.strip_suffix("+00:00")
        .map(|d| format!("{d}Z"))
        .unwrap_or_else(|| s.to_owned())
}

// ---- x_netkan_override -------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Hook {
    Before(&'static str),
    After(&'static str),
    Default,
}

struct Override {
    versions: Vec<(String, Version)>,
    before: Option<String>,
    after: Option<String>,
    delete: Vec<String>,
    set: Json,
}

struct Overrides(Vec<Override>);

impl Overrides {
    fn parse(json: &Json) -> Result<Self, NetkanError> {
        let Some(v) = json.get("x_netkan_override") else {
            return Ok(Self(vec![]));
        };
        let list = v
            .as_array()
            .ok_or_else(|| NetkanError::BadNetkan("`x_netkan_override` must be a list".into()))?;
        let mut out = Vec::new();
        for (i, o) in list.iter().enumerate() {
            let bad = |m: &str| NetkanError::BadNetkan(format!("x_netkan_override {}: {m}", i + 1));
            let o = o.as_object().ok_or_else(|| bad("must be an object"))?;
            let constraints = match o.get("version") {
                v @ Some(Value::String(_) | Value::Array(_)) => super::string_list(v),
                _ => return Err(bad("needs a `version` (a string or a list)")),
            };
            let versions = constraints
                .iter()
                .map(|c| {
                    let c = c.trim();
                    let op_len = c.chars().take_while(|ch| "<>=".contains(*ch)).count();
                    let (op, v) = c.split_at(op_len);
                    match op {
                        "" | "=" | "<" | "<=" | ">" | ">=" => {
                            Ok((op.to_owned(), Version::new(v.trim())))
                        }
                        _ => Err(bad(&format!("unknown comparison `{op}`"))),
                    }
                })
                .collect::<Result<_, _>>()?;
            let delete = super::string_list(o.get("delete"));
            out.push(Override {
                versions,
                before: o.get("before").and_then(Value::as_str).map(str::to_owned),
                after: o.get("after").and_then(Value::as_str).map(str::to_owned),
                delete,
                set: o
                    .get("override")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            });
        }
        Ok(Self(out))
    }

    fn apply(&self, json: &mut Json, hook: Hook) -> Result<(), NetkanError> {
        for o in &self.0 {
            let fires = match hook {
                Hook::Default => o.before.is_none() && o.after.is_none(),
                Hook::Before(n) => o.before.as_deref() == Some(n),
                Hook::After(n) => o.after.as_deref() == Some(n),
            };
            if !fires {
                continue;
            }
            let Some(version) = json
                .get("version")
                .and_then(Value::as_str)
                .map(Version::new)
            else {
                continue;
            };
            let matches = o.versions.iter().all(|(op, v)| match op.as_str() {
                "<" => version < *v,
                "<=" => version <= *v,
                ">" => version > *v,
                ">=" => version >= *v,
                _ => version == *v,
            });
            if !matches {
                continue;
            }
            for (k, v) in &o.set {
                json.insert(k.clone(), v.clone());
            }
            for k in &o.delete {
                json.remove(k);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_projects() {
        assert_eq!(
            name_from_project("Ferram-Aerospace-Research"),
            "Ferram Aerospace Research"
        );
        assert_eq!(name_from_project("HUDReplacer"), "HUD Replacer");
        assert_eq!(name_from_project("KerbalAlarmClock"), "Kerbal Alarm Clock");
        assert_eq!(name_from_project("TestLite"), "Test Lite");
        assert_eq!(name_from_project("a_b"), "a b");
    }

    #[test]
    fn parses_json_yaml_and_documents() {
        assert_eq!(parse(r#"{"identifier": "A"}"#).unwrap().len(), 1);
        assert_eq!(
            parse("identifier: A\n---\nidentifier: A\n").unwrap().len(),
            2
        );
        assert!(matches!(parse("{ nope"), Err(NetkanError::BadNetkan(m)) if m.contains("JSON")));
        assert!(matches!(parse("a: [b"), Err(NetkanError::BadNetkan(m)) if m.contains("YAML")));
        assert!(parse("- a\n- b\n").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn version_edits_epochs_and_forced_v() {
        let mut j = Json::new();
        j.insert("version".into(), "v1.2_beta".into());
        j.insert(
            "x_netkan_version_edit".into(),
            r"^[vV]?(?<version>[\d.]+)".into(),
        );
        version_edit(&mut j).unwrap();
        assert_eq!(j["version"], "1.2");
        j.insert("x_netkan_force_v".into(), true.into());
        forced_v(&mut j);
        assert_eq!(j["version"], "v1.2");
        j.insert("x_netkan_epoch".into(), 2.into());
        let mut ctx = Ctx::default();
        let opts = Options {
            highest_version: Some("3:v1.0".into()),
            ..Default::default()
        };
        epoch(&mut j, &opts, &mut ctx).unwrap();
        assert_eq!(j["version"], "3:v1.2");
        assert!(ctx.staged);
        let mut strict = Json::new();
        strict.insert("version".into(), "abc".into());
        strict.insert("x_netkan_version_edit".into(), r"^\d+$".into());
        assert!(version_edit(&mut strict).is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(
            normalize_date("2025-05-30T14:46:05.062685+00:00"),
            "2025-05-30T14:46:05.062685Z"
        );
        assert_eq!(crate::now_rfc3339().len(), 20);
    }
}
