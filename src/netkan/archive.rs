//! What the inflator reads inside a download: the zip's entries (refusing path traversal and
//! zip bombs), which files the install stanzas select, the KSP-AVC `.version` file, the
//! localizations in `.cfg` files, and the installed size.

use super::{string_list, NetkanError};
use regex::Regex;
use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// Entries and uncompressed bytes a download may hold.
const MAX_ENTRIES: usize = 100_000;
const MAX_UNCOMPRESSED: u64 = 8 << 30;
/// A text file read for metadata (`.version`, `.cfg`) is at most this big.
const MAX_TEXT: u64 = 4 << 20;

/// One file of the archive.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    index: usize,
}

/// An opened zip download.
pub struct Archive {
    zip: zip::ZipArchive<std::fs::File>,
    pub files: Vec<Entry>,
    /// Directories, explicit or implied by file paths.
    pub dirs: Vec<String>,
}

fn bad(m: impl Into<String>) -> NetkanError {
    NetkanError::Archive(m.into())
}

impl Archive {
    pub fn open(path: &Path) -> Result<Self, NetkanError> {
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut zip = zip::ZipArchive::new(file)
            .map_err(|e| bad(format!("the download is not a readable zip archive: {e}")))?;
        if zip.len() > MAX_ENTRIES {
            return Err(bad(format!(
                "the archive has {} entries, more than the limit of {MAX_ENTRIES}",
                zip.len()
            )));
        }
        let mut files = Vec::new();
        let mut dirs = std::collections::BTreeSet::new();
        let mut total = 0u64;
        for index in 0..zip.len() {
            let e = zip.by_index_raw(index).map_err(|e| bad(e.to_string()))?;
            let name = e.name().replace('\\', "/");
            if name.starts_with('/') || name.split('/').any(|c| c == "..") || name.contains(':') {
                return Err(bad(format!(
                    "the archive holds an unsafe path `{name}` (absolute or leaving its folder)"
                )));
            }
            total = total.saturating_add(e.size());
            if total > MAX_UNCOMPRESSED {
                return Err(bad(format!(
                    "the archive unpacks to more than {} GiB (a zip bomb?)",
                    MAX_UNCOMPRESSED >> 30
                )));
            }
            let trimmed = name.trim_end_matches('/').to_owned();
            let mut parent = trimmed.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                dirs.insert(p.to_owned());
                parent = p;
            }
            if e.is_dir() {
                dirs.insert(trimmed);
            } else {
                files.push(Entry {
                    path: trimmed,
                    size: e.size(),
                    index,
                });
            }
        }
        Ok(Self {
            zip,
            files,
            dirs: dirs.into_iter().collect(),
        })
    }

    /// The text of a file, bounded.
    pub fn read_text(&mut self, entry: &Entry) -> Result<String, NetkanError> {
        let f = self
            .zip
            .by_index(entry.index)
            .map_err(|e| bad(format!("{}: {e}", entry.path)))?;
        let mut bytes = Vec::new();
        f.take(MAX_TEXT)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{}: {e}", entry.path)))?;
        // strip a UTF-8 byte order mark, common in .version files
        let text = String::from_utf8_lossy(&bytes);
        Ok(text.trim_start_matches('\u{feff}').to_owned())
    }
}

/// Names CKAN never installs.
const ALWAYS_FILTERED: &[&str] = &[
    "__MACOSX",
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    ".git",
    ".gitignore",
    ".gitattributes",
];

fn regexes(v: Option<&Value>, key: &str) -> Result<Vec<Regex>, NetkanError> {
    string_list(v)
        .iter()
        .map(|r| Regex::new(r).map_err(|e| NetkanError::BadNetkan(format!("`{key}` `{r}`: {e}"))))
        .collect()
}

/// The files (indices into `archive.files`) that a module's install stanzas select, with
/// an error naming the first stanza that selects nothing.
pub fn installable(
    archive: &Archive,
    identifier: &str,
    install: Option<&Value>,
) -> Result<Vec<usize>, NetkanError> {
    let default = serde_json::json!([{ "find": identifier, "install_to": "GameData" }]);
    let stanzas = match install {
        Some(Value::Array(a)) if !a.is_empty() => a.clone(),
        Some(Value::Array(_)) | None => default.as_array().cloned().unwrap_or_default(),
        Some(_) => return Err(NetkanError::BadNetkan("`install` must be a list".into())),
    };
    let mut chosen = std::collections::BTreeSet::new();
    for (n, stanza) in stanzas.iter().enumerate() {
        let matched = stanza_files(archive, stanza)?;
        if matched.is_empty() {
            return Err(NetkanError::Validation(format!(
                "install stanza {} ({}) matches no files in the download",
                n + 1,
                describe(stanza)
            )));
        }
        chosen.extend(matched);
    }
    Ok(chosen.into_iter().collect())
}

fn describe(stanza: &Value) -> String {
    for key in ["file", "find", "find_regexp"] {
        if let Some(v) = stanza.get(key).and_then(Value::as_str) {
            return format!("{key}: {v}");
        }
    }
    stanza.to_string()
}

fn stanza_files(archive: &Archive, stanza: &Value) -> Result<Vec<usize>, NetkanError> {
    let matches_files = stanza
        .get("find_matches_files")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // the archive path everything installed lives under
    let root: Option<String> = if let Some(file) = stanza.get("file").and_then(Value::as_str) {
        Some(file.trim_end_matches('/').to_owned())
    } else if let Some(find) = stanza.get("find").and_then(Value::as_str) {
        let find = find.trim_end_matches('/');
        let named = |p: &&String| p == &find || p.ends_with(&format!("/{find}"));
        let mut candidates: Vec<&String> = archive.dirs.iter().filter(named).collect();
        if matches_files {
            candidates.extend(archive.files.iter().map(|f| &f.path).filter(named));
        }
        shallowest(candidates)
    } else if let Some(re) = stanza.get("find_regexp").and_then(Value::as_str) {
        let re = Regex::new(re)
            .map_err(|e| NetkanError::BadNetkan(format!("`find_regexp` `{re}`: {e}")))?;
        let mut candidates: Vec<&String> = archive.dirs.iter().filter(|d| re.is_match(d)).collect();
        if matches_files {
            candidates.extend(
                archive
                    .files
                    .iter()
                    .map(|f| &f.path)
                    .filter(|p| re.is_match(p)),
            );
        }
        shallowest(candidates)
    } else {
        return Err(NetkanError::BadNetkan(format!(
            "install stanza {} needs one of `file`, `find`, `find_regexp`",
            stanza
        )));
    };
    let Some(root) = root else {
        return Ok(vec![]);
    };
    let filters = string_list(stanza.get("filter"));
    let filter_res = regexes(stanza.get("filter_regexp"), "filter_regexp")?;
    let only = string_list(stanza.get("include_only"));
    let only_res = regexes(stanza.get("include_only_regexp"), "include_only_regexp")?;
    let prefix = format!("{root}/");
    Ok(archive
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.path == root || f.path.starts_with(&prefix))
        .filter(|(_, f)| {
            let comps: Vec<&str> = f.path.split('/').collect();
            let named = |names: &[String]| {
                comps
                    .iter()
                    .any(|c| names.iter().any(|n| n.eq_ignore_ascii_case(c)))
            };
            if comps.iter().any(|c| ALWAYS_FILTERED.contains(c)) {
                return false;
            }
            if named(&filters) || filter_res.iter().any(|r| r.is_match(&f.path)) {
                return false;
            }
            let restricted = !only.is_empty() || !only_res.is_empty();
            !restricted || named(&only) || only_res.iter().any(|r| r.is_match(&f.path))
        })
        .map(|(i, _)| i)
        .collect())
}

fn shallowest(mut candidates: Vec<&String>) -> Option<String> {
    candidates.sort_by_key(|p| (p.matches('/').count(), p.len()));
    candidates.first().map(|s| (*s).clone())
}

/// The KSP-AVC `.version` file among the installable files: the one at `path` when the vref
/// names one, else the only one.
pub fn find_version_file<'a>(
    archive: &'a Archive,
    installable: &[usize],
    path: Option<&str>,
) -> Result<Option<&'a Entry>, NetkanError> {
    let candidates: Vec<&Entry> = installable
        .iter()
        .map(|&i| &archive.files[i])
        .filter(|e| e.path.to_ascii_lowercase().ends_with(".version"))
        .collect();
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        let path = path.trim_start_matches('/');
        let found = candidates
            .iter()
            .find(|e| e.path == path || e.path.ends_with(&format!("/{path}")))
            .copied();
        return match found {
            Some(e) => Ok(Some(e)),
            None => Err(NetkanError::Validation(format!(
                "the vref names the version file `{path}`, which is not among the installed files"
            ))),
        };
    }
    match candidates.len() {
        0 => Ok(None),
        1 => Ok(Some(candidates[0])),
        n => {
            Err(NetkanError::Validation(format!(
            "{n} .version files are installed ({}); name one in the vref, e.g. `#/ckan/ksp-avc/{}`",
            candidates.iter().map(|e| e.path.as_str()).collect::<Vec<_>>().join(", "),
            candidates[0].path.rsplit('/').next().unwrap_or_default()
        )))
        }
    }
}

/// A KSP-AVC version file.
#[derive(Debug, Default)]
pub struct AvcFile {
    pub version: Option<String>,
    pub url: Option<String>,
    pub ksp_version: Option<KspVersion>,
    pub ksp_min: Option<KspVersion>,
    pub ksp_max: Option<KspVersion>,
}

/// A game version: up to four numeric parts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KspVersion(pub Vec<u32>);

impl std::fmt::Display for KspVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

impl KspVersion {
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Option<Vec<u32>> = s.trim().split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty() && p.len() <= 4).map(Self)
    }

    /// From a `.version` file's object or string form.
    fn from_avc(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Self::parse(s),
            Value::Object(o) => {
                let mut parts = Vec::new();
                for key in ["MAJOR", "MINOR", "PATCH", "BUILD"] {
                    match o.get(key).and_then(number) {
                        Some(n) if n >= 0 => parts.push(n as u32),
                        _ => break,
                    }
                }
                (!parts.is_empty()).then_some(Self(parts))
            }
            _ => None,
        }
    }
}

fn number(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl AvcFile {
    /// Parses a `.version` file, with an error an author can act on.
    pub fn parse(path: &str, text: &str) -> Result<Self, NetkanError> {
        let v: Value = serde_json::from_str(text).map_err(|e| {
            NetkanError::Validation(format!("the version file {path} is not valid JSON: {e}"))
        })?;
        let Value::Object(o) = &v else {
            return Err(NetkanError::Validation(format!(
                "the version file {path} is not a JSON object"
            )));
        };
        let version = match o.get("VERSION") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(obj @ Value::Object(_)) => KspVersion::from_avc(obj).map(|v| v.to_string()),
            _ => None,
        };
        Ok(Self {
            version,
            url: o.get("URL").and_then(Value::as_str).map(str::to_owned),
            ksp_version: o.get("KSP_VERSION").and_then(KspVersion::from_avc),
            ksp_min: o.get("KSP_VERSION_MIN").and_then(KspVersion::from_avc),
            ksp_max: o.get("KSP_VERSION_MAX").and_then(KspVersion::from_avc),
        })
    }
}

/// Languages of the `Localization` nodes in the installable `.cfg` files, sorted.
pub fn localizations(
    archive: &mut Archive,
    installable: &[usize],
) -> Result<Vec<String>, NetkanError> {
    let cfgs: Vec<Entry> = installable
        .iter()
        .map(|&i| archive.files[i].clone())
        .filter(|e| e.path.to_ascii_lowercase().ends_with(".cfg"))
        .collect();
    let mut langs = std::collections::BTreeSet::new();
    for e in cfgs {
        let text = archive.read_text(&e)?;
        langs.extend(cfg_languages(&text));
    }
    Ok(langs.into_iter().collect())
}

/// The child node names of top-level `Localization` nodes of a ConfigNode text.
fn cfg_languages(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut in_loc = false;
    let mut pending: Option<String> = None;
    for raw in text.lines() {
        let line = raw.split("//").next().unwrap_or("").trim();
        let mut word = String::new();
        for c in line.chars().chain(std::iter::once('\n')) {
            match c {
                '{' => {
                    let name = if word.trim().is_empty() {
                        pending.take()
                    } else {
                        Some(word.trim().to_owned())
                    };
                    word.clear();
                    if depth == 0 {
                        in_loc = name.as_deref() == Some("Localization");
                    } else if depth == 1 && in_loc {
                        if let Some(n) = name.filter(|n| !n.contains('=')) {
                            out.push(n);
                        }
                    }
                    depth += 1;
                    pending = None;
                }
                '}' => {
                    depth = depth.saturating_sub(1);
                    word.clear();
                    pending = None;
                }
                '\n' => {
                    let w = word.trim();
                    pending = (!w.is_empty() && !w.contains('=')).then(|| w.to_owned());
                    word.clear();
                }
                c => word.push(c),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localization_nodes() {
        let cfg = "Localization\n{\n    en-us\n    {\n        #a = b\n    }\n    de-de { #c = d }\n}\nOther { fr-fr { } }\n";
        assert_eq!(cfg_languages(cfg), vec!["en-us", "de-de"]);
    }

    #[test]
    fn ksp_versions() {
        let avc = AvcFile::parse(
            "x.version",
            r#"{"NAME":"X","URL":"https://e/x.version","VERSION":{"MAJOR":1,"MINOR":2,"PATCH":3,"BUILD":0},
               "KSP_VERSION_MIN":{"MAJOR":1,"MINOR":8,"PATCH":0},"KSP_VERSION_MAX":"1.12.99"}"#,
        )
        .unwrap();
        assert_eq!(avc.version.as_deref(), Some("1.2.3.0"));
        assert_eq!(avc.ksp_min.unwrap().to_string(), "1.8.0");
        assert_eq!(avc.ksp_max.unwrap().to_string(), "1.12.99");
        assert!(AvcFile::parse("y.version", "not json").is_err());
        assert!(KspVersion::parse("1.12.5") > KspVersion::parse("1.12"));
    }
}
