//! The NetKAN corpus (`../shared/netkan-corpus`, or `$NETKAN_CORPUS`: third-party data read
//! in place, never copied) and a test server answering what its mods' upstreams answered
//! when the official inflator made the corpus' `.ckan` files, in GitHub's and SpaceDock's
//! real API shapes.

#![allow(dead_code)]

use crate::upstream::{Answer, Upstream};
use kraken::netkan::Upstreams;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;

/// The corpus, or `None` (with the reason printed) where it is absent outside CI.
pub fn corpus() -> Option<PathBuf> {
    let dir = std::env::var("NETKAN_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/netkan-corpus"
            ))
        });
    if dir.join("manifest.tsv").exists() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "the NetKAN corpus is missing at {} (set NETKAN_CORPUS)",
            dir.display()
        );
    }
    eprintln!(
        "skipped: no NetKAN corpus at {} (set NETKAN_CORPUS)",
        dir.display()
    );
    None
}

pub fn tsv(path: &std::path::Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// What the test served for one mod, to check the download-derived fields against.
pub struct Served {
    pub zip: Vec<u8>,
    pub install_size: u64,
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// The directory every stanza installs from, in archive paths.
fn roots(ckan: &Value) -> Vec<(String, Vec<String>)> {
    let id = s(ckan, "identifier").unwrap();
    match ckan.get("install").and_then(Value::as_array) {
        None => vec![(format!("GameData/{id}"), vec![])],
        Some(stanzas) => stanzas
            .iter()
            .map(|st| {
                let root = if let Some(f) = s(st, "file") {
                    f.to_owned()
                } else {
                    format!("GameData/{}", s(st, "find").unwrap())
                };
                let filters = match st.get("filter") {
                    Some(Value::String(f)) => vec![f.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect(),
                    _ => vec![],
                };
                (root, filters)
            })
            .collect(),
    }
}

fn avc_version(v: &str) -> Value {
    let parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap()).collect();
    let mut o = Map::new();
    for (k, p) in ["MAJOR", "MINOR", "PATCH", "BUILD"].iter().zip(parts) {
        o.insert((*k).into(), p.into());
    }
    Value::Object(o)
}

/// Builds the mod's zip: files under every install root, a `.version` file and localization
/// `.cfg` when the `.ckan` says the inflator found them, decoys the stanzas must leave out.
fn build_zip(ckan: &Value, netkan_docs: &[Value]) -> Served {
    let id = s(ckan, "identifier").unwrap();
    let mut files: Vec<(String, Vec<u8>, bool)> = Vec::new(); // path, bytes, installed
    let roots = roots(ckan);
    for (i, (root, filters)) in roots.iter().enumerate() {
        files.push((
            format!("{root}/Plugins/{id}{i}.dll"),
            vec![b'x'; 1000 + i * 37],
            true,
        ));
        files.push((
            format!("{root}/Parts/part{i}.cfg"),
            b"PART\n{\n    name = p\n}\n".to_vec(),
            true,
        ));
        for f in filters {
            if f.contains('.') {
                files.push((format!("{root}/{f}"), vec![b'f'; 333], false));
            }
        }
    }
    let (root0, _) = &roots[0];
    let vref = netkan_docs.iter().find_map(|d| s(d, "$vref"));
    if let Some(vref) = vref {
        let name = vref
            .strip_prefix("#/ckan/ksp-avc")
            .unwrap()
            .trim_start_matches('/')
            .to_owned();
        let name = if name.is_empty() {
            format!("{id}.version")
        } else {
            name
        };
        let mut avc = json!({ "NAME": id });
        // the version from the .version file only counts where no host gave one
        let version = s(ckan, "version").unwrap();
        avc["VERSION"] = json!(version.rsplit(':').next().unwrap());
        if let Some(url) = ckan["resources"].get("remote-avc").and_then(Value::as_str) {
            avc["URL"] = json!(url);
        }
        if let Some(v) = s(ckan, "ksp_version") {
            avc["KSP_VERSION"] = avc_version(v);
        }
        if let Some(v) = s(ckan, "ksp_version_min") {
            avc["KSP_VERSION_MIN"] = avc_version(v);
        }
        if let Some(v) = s(ckan, "ksp_version_max") {
            avc["KSP_VERSION_MAX"] = avc_version(v);
        }
        let mut text = vec![0xEF, 0xBB, 0xBF]; // a byte order mark, as many authors' editors write
        text.extend(serde_json::to_vec_pretty(&avc).unwrap());
        files.push((format!("{root0}/{name}"), text, true));
    }
    if let Some(langs) = ckan.get("localizations").and_then(Value::as_array) {
        let mut cfg = String::from("// localization\nLocalization\n{\n");
        for l in langs {
            cfg.push_str(&format!(
                "    {}\n    {{\n        #LOC_x = y\n    }}\n",
                l.as_str().unwrap()
            ));
        }
        cfg.push_str("}\n");
        files.push((
            format!("{root0}/Localization/strings.cfg"),
            cfg.into_bytes(),
            true,
        ));
    }
    files.push(("README.md".into(), b"read me".to_vec(), false));
    files.push((format!("__MACOSX/{root0}/._x"), b"junk".to_vec(), false));
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default());
        for (path, bytes, _) in &files {
            zip.start_file(path.as_str(), opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }
    Served {
        zip: buf.into_inner(),
        install_size: files.iter().filter(|f| f.2).map(|f| f.1.len() as u64).sum(),
    }
}

fn first_author(ckan: &Value) -> String {
    match &ckan["author"] {
        Value::String(a) => a.clone(),
        Value::Array(a) => a[0].as_str().unwrap().to_owned(),
        _ => "someone".into(),
    }
}

/// The GitHub repository answer for `html_url`, consistent with the expected resources.
fn github_repo(ckan: &Value, owner: &str, repo: &str, license_from_host: bool) -> Value {
    let r = &ckan["resources"];
    // a moved repository answers with its new home, which the bugtracker link shows
    let html = r
        .get("bugtracker")
        .and_then(Value::as_str)
        .and_then(|b| b.strip_suffix("/issues"))
        .filter(|b| b.starts_with("https://github.com/"))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("https://github.com/{owner}/{repo}"));
    let has = |k: &str, suffix: &str| {
        r.get(k).and_then(Value::as_str) == Some(&format!("{html}/{suffix}"))
    };
    let authors: Vec<Value> = match &ckan["author"] {
        Value::Array(a) => a.clone(),
        v => vec![v.clone()],
    };
    let owner_json = if authors.len() > 1 {
        json!({"login": owner, "type": "Organization"})
    } else {
        json!({"login": first_author(ckan), "type": "User"})
    };
    json!({
        "id": 1, "name": repo, "full_name": format!("{owner}/{repo}"),
        "html_url": html,
        "description": s(ckan, "abstract"),
        "homepage": r.get("homepage").cloned().unwrap_or(Value::Null),
        "has_issues": has("bugtracker", "issues"),
        "has_wiki": has("manual", "wiki"),
        "has_discussions": has("discussions", "discussions"),
        "archived": false,
        "license": if license_from_host { json!({"key": "x", "spdx_id": ckan["license"]}) } else { json!({"key": "other", "spdx_id": "NOASSERTION"}) },
        "owner": owner_json,
        "_authors": authors,
    })
}

pub struct Mod {
    pub id: String,
    pub netkan: String,
    pub ckan: Value,
    pub highest: Option<String>,
    /// NetKAN moved it to a new epoch because it sorted below `highest`: a staged release.
    pub auto_epoch: bool,
}

impl Mod {
    /// Whether the indexer holds this release back for review (a branch and a pull
    /// request), as the official indexer did.
    pub fn staged(&self) -> bool {
        self.netkan.contains("x_netkan_staging: true") || self.auto_epoch
    }
}

pub fn load_mods(dir: &std::path::Path) -> Vec<Mod> {
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in tsv(&dir.join("ckan-meta-versions.tsv")) {
        versions
            .entry(row[0].clone())
            .or_default()
            .push(row[1].clone());
    }
    tsv(&dir.join("manifest.tsv"))
        .into_iter()
        .map(|row| {
            let id = row[0].clone();
            let netkan = std::fs::read_to_string(dir.join(format!("{id}.netkan"))).unwrap();
            let ckan: Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join(format!("{id}.ckan"))).unwrap(),
            )
            .unwrap();
            // the highest version indexed before this release
            let list = versions.get(&id).cloned().unwrap_or_default();
            let highest = (list.len() >= 2).then(|| list[list.len() - 2].clone());
            Mod {
                auto_epoch: row.get(11).is_some_and(|e| e.starts_with("auto")),
                id,
                netkan,
                ckan,
                highest,
            }
        })
        .collect()
}

/// Registers every answer the inflation of `m` needs.
pub fn serve_mod(up: &Upstream, ups: &Upstreams, m: &Mod, corpus: &std::path::Path) -> Served {
    let docs: Vec<Value> = kraken::netkan::transform::parse(&m.netkan)
        .unwrap()
        .into_iter()
        .map(Value::Object)
        .collect();
    // a metanetkan's target supplies the kref
    let mut docs_effective = docs.clone();
    for d in docs_effective.iter_mut() {
        if let Some(url) = s(d, "$kref")
            .and_then(|k| k.strip_prefix("#/ckan/netkan/"))
            .map(str::to_owned)
        {
            let rel = url.split_once("://").unwrap().1;
            let text =
                std::fs::read_to_string(corpus.join("metanetkan-targets").join(rel)).unwrap();
            up.route_url(
                &ups.reach(&url),
                Answer::bytes("text/plain", text.clone().into_bytes()),
            );
            let target = kraken::netkan::transform::parse(&text).unwrap().remove(0);
            for (k, v) in target {
                if k == "$kref" || d.get(&k).is_none() {
                    d[k] = v;
                }
            }
        }
    }
    let served = build_zip(&m.ckan, &docs_effective);
    let ckan = &m.ckan;
    let downloads: Vec<String> = match &ckan["download"] {
        Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_owned()).collect(),
        v => vec![v.as_str().unwrap().to_owned()],
    };
    for url in &downloads {
        // a CDN that does not know what it serves
        up.route_url(
            &ups.reach(url),
            Answer::bytes("application/octet-stream", served.zip.clone()),
        );
    }
    let release_date = s(ckan, "release_date").map(str::to_owned);
    for d in &docs_effective {
        let Some(kref) = s(d, "$kref") else { continue };
        let local_license = d.get("license").is_some();
        if let Some(rest) = kref.strip_prefix("#/ckan/github/") {
            let mut parts = rest.splitn(3, '/');
            let (owner, repo) = (parts.next().unwrap(), parts.next().unwrap());
            let repo_json = github_repo(ckan, owner, repo, !local_license);
            let authors = repo_json["_authors"].clone();
            up.route_url(
                &ups.reach(&format!("https://api.github.com/repos/{owner}/{repo}")),
                Answer::json(&repo_json),
            );
            if repo_json["owner"]["type"] == "Organization" {
                let members: Vec<Value> = authors
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| json!({"login": a, "type": "User"}))
                    .collect();
                up.route_url(
                    &ups.reach(&format!(
                        "https://api.github.com/orgs/{owner}/public_members"
                    )),
                    Answer::json(&Value::Array(members)),
                );
            }
            let source_archive = d["x_netkan_github"]["use_source_archive"] == json!(true);
            let download = downloads
                .iter()
                .find(|u| u.contains("github.com/"))
                .unwrap()
                .clone();
            let tag = if source_archive {
                download.rsplit('/').next().unwrap().to_owned()
            } else {
                let after = download.split("/releases/download/").nth(1).unwrap();
                after.rsplit_once('/').unwrap().0.to_owned()
            };
            let asset_name = download.rsplit('/').next().unwrap().to_owned();
            let author = json!({"login": first_author(ckan), "type": "User"});
            let release = json!({
                "tag_name": tag, "name": tag, "draft": false, "prerelease": false,
                "published_at": release_date, "author": author,
                "zipball_url": if source_archive { json!(download) } else { json!(format!("https://api.github.com/repos/{owner}/{repo}/zipball/{tag}")) },
                "assets": [
                    {"name": "Source.txt", "browser_download_url": "https://github.com/x/y/releases/download/z/Source.txt", "updated_at": "2020-01-01T00:00:00Z"},
                    {"name": asset_name, "browser_download_url": download, "updated_at": release_date, "content_type": "application/octet-stream"}
                ]
            });
            // page 1: a draft and a pre-release that must be passed over; page 2: the release
            let page1 = json!([
                {"tag_name": "v999-draft", "draft": true, "prerelease": false, "author": author, "assets": [{"name": "x.zip", "browser_download_url": "https://github.com/x/draft.zip"}]},
                {"tag_name": "v999-pre", "draft": false, "prerelease": true, "author": author, "assets": [{"name": "x.zip", "browser_download_url": "https://github.com/x/pre.zip"}]}
            ]);
            let list = format!("https://api.github.com/repos/{owner}/{repo}/releases?per_page=100");
            // a repository's second page is under its numeric id, one per repository (FNV-1a
            // of its name), so the mods can all be served at once
            let repo_id = format!("{owner}/{repo}")
                .bytes()
                .fold(0x811c_9dc5_u32, |h, b| {
                    (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
                });
            let page2_public = format!(
                "https://api.github.com/repositories/{repo_id}/releases?per_page=100&page=2"
            );
            let next = ups.reach(&page2_public);
            up.route_url(
                &ups.reach(&list),
                Answer::json(&page1).header(
                    "Link",
                    &format!("<{next}>; rel=\"next\", <{next}>; rel=\"last\""),
                ),
            );
            up.route_url(&next, Answer::json(&json!([release])));
        } else if let Some(sd_id) = kref.strip_prefix("#/ckan/spacedock/") {
            let download = downloads
                .iter()
                .find(|u| u.contains("spacedock.info/"))
                .unwrap()
                .clone();
            let path = download
                .strip_prefix("https://spacedock.info")
                .unwrap()
                .to_owned();
            let friendly = percent_decode(path.rsplit('/').next().unwrap());
            let page = ckan["resources"]["spacedock"].as_str().unwrap();
            let name = percent_decode(page.rsplit('/').next().unwrap());
            let authors: Vec<String> = match &ckan["author"] {
                Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_owned()).collect(),
                Value::String(a) => vec![a.clone()],
                _ => vec![],
            };
            let r = &ckan["resources"];
            let created = release_date.clone().map(|d| d.replace('Z', "+00:00"));
            let sd = json!({
                "id": sd_id.parse::<i64>().unwrap(), "name": name,
                "short_description": s(ckan, "abstract"),
                "author": authors.first(),
                "shared_authors": authors.iter().skip(1).map(|a| json!({"username": a})).collect::<Vec<_>>(),
                "license": if local_license { json!("Other") } else { ckan["license"].clone() },
                "website": r.get("homepage"),
                "source_code": r.get("repository"),
                "background": r.get("x_screenshot"),
                "default_version_id": 20,
                "versions": [
                    {"id": 21, "friendly_version": "0.0.1-newer-but-not-default", "game_version": "1.0.0", "download_path": "/mod/0/x/download/0.0.1", "created": "2030-01-01T00:00:00+00:00"},
                    {"id": 20, "friendly_version": friendly, "game_version": s(ckan, "ksp_version").or(s(ckan, "ksp_version_max")).unwrap_or("1.12.5"), "download_path": path, "created": created},
                    {"id": 19, "friendly_version": "0.0.0", "game_version": "1.0.0", "download_path": "/mod/0/x/download/0.0.0", "created": "2001-01-01T00:00:00+00:00"}
                ]
            });
            up.route_url(
                &ups.reach(&format!("https://spacedock.info/api/mod/{sd_id}")),
                Answer::json(&sd),
            );
            if let Some(src) = r.get("repository").and_then(Value::as_str) {
                if let Some(rest) = src.strip_prefix("https://github.com/") {
                    let mut it = rest.split('/');
                    let (o, p) = (it.next().unwrap(), it.next().unwrap());
                    let repo_json = github_repo(ckan, o, p, false);
                    up.route_url(
                        &ups.reach(&format!("https://api.github.com/repos/{o}/{p}")),
                        Answer::json(&repo_json),
                    );
                }
            }
        } else if let Some(url) = kref.strip_prefix("#/ckan/http/") {
            let reach = ups.reach(url.split('#').next().unwrap());
            up.route_url(&reach, Answer::redirect(&ups.reach(&downloads[0])));
        }
    }
    served
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// The upstreams with every host the corpus' downloads name reached through `up`, besides
/// GitHub and SpaceDock.
pub fn corpus_upstreams(up: &Upstream, mods: &[Mod]) -> Upstreams {
    let mut hosts = BTreeSet::new();
    for m in mods {
        let downloads = match &m.ckan["download"] {
            Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        };
        for d in downloads {
            let d = d.as_str().unwrap();
            let host = d.split('/').take(3).collect::<Vec<_>>().join("/");
            hosts.insert(host);
        }
    }
    let extra: Vec<(String, String)> = hosts
        .into_iter()
        .filter(|h| !h.ends_with("github.com") && !h.ends_with("spacedock.info"))
        .map(|h| {
            let name = h.split("://").nth(1).unwrap().to_owned();
            (h, format!("{}/ext/{name}", up.base))
        })
        .collect();
    up.upstreams(None, extra)
}
