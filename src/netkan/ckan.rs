//! The `.ckan` as CKAN writes it: canonical property order, the minimal `spec_version` for
//! the features used, validation, and the text layout (4-space indent, trailing newline).

use super::NetkanError;
use serde_json::{Map, Value};

/// Top-level properties in CKAN's order; others follow sorted, then `x_*`, then
/// `x_generated_by`.
const ORDER: &[&str] = &[
    "spec_version",
    "comment",
    "identifier",
    "name",
    "abstract",
    "description",
    "author",
    "version",
    "ksp_version",
    "ksp_version_min",
    "ksp_version_max",
    "ksp_version_strict",
    "license",
    "release_status",
    "resources",
    "tags",
    "localizations",
    "provides",
    "depends",
    "recommends",
    "suggests",
    "supports",
    "conflicts",
    "install",
    "download",
    "download_size",
    "download_hash",
    "download_content_type",
    "install_size",
    "release_date",
];

const RESOURCE_ORDER: &[&str] = &[
    "homepage",
    "spacedock",
    "curse",
    "repository",
    "bugtracker",
    "ci",
    "license",
    "manual",
];

fn sort_by(obj: &Map<String, Value>, order: &[&str], top: bool) -> Map<String, Value> {
    let rank = |k: &str| -> (usize, u8, String) {
        if let Some(i) = order.iter().position(|o| *o == k) {
            (i, 0, String::new())
        } else if top && k == "x_generated_by" {
            (order.len(), 3, String::new())
        } else if k.starts_with("x_") {
            (order.len(), 2, k.to_owned())
        } else {
            (order.len(), 1, k.to_owned())
        }
    };
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort_by_key(|k| rank(k));
    keys.into_iter()
        .map(|k| (k.clone(), obj[k].clone()))
        .collect()
}

/// Puts the properties (and those of `resources`) in CKAN's canonical order.
pub fn canonical(module: &Map<String, Value>) -> Map<String, Value> {
    let mut out = sort_by(module, ORDER, true);
    if let Some(Value::Object(r)) = out.get("resources") {
        let sorted = sort_by(r, RESOURCE_ORDER, false);
        out.insert("resources".into(), Value::Object(sorted));
    }
    out
}

/// The `.ckan` text: JSON with a 4-space indent and a trailing newline.
pub fn to_text(module: &Map<String, Value>) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    // a Map of Values always serializes
    let _ = serde::Serialize::serialize(module, &mut ser);
    let mut s = String::from_utf8_lossy(&buf).into_owned();
    s.push('\n');
    s
}

fn stanzas(m: &Map<String, Value>) -> impl Iterator<Item = &Map<String, Value>> {
    m.get("install")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
}

fn relationships(m: &Map<String, Value>) -> impl Iterator<Item = &Map<String, Value>> {
    ["depends", "recommends", "suggests", "conflicts", "supports"]
        .into_iter()
        .filter_map(|k| m.get(k).and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_object)
}

fn has_license(m: &Map<String, Value>, name: &str) -> bool {
    match m.get("license") {
        Some(Value::Array(a)) => a.iter().any(|l| l.as_str() == Some(name)),
        Some(Value::String(s)) => s == name,
        _ => false,
    }
}

/// The lowest spec version that has every feature the module uses (CKAN's table).
pub fn minimum_spec_version(m: &Map<String, Value>) -> Value {
    let s = |st: &Map<String, Value>, k: &str| st.get(k).and_then(Value::as_str).map(str::to_owned);
    let install_to = |pred: &dyn Fn(&str) -> bool| {
        stanzas(m).any(|st| s(st, "install_to").as_deref().is_some_and(pred))
    };
    let stanza_has = |k: &str| stanzas(m).any(|st| st.contains_key(k));
    let last = |v: Option<String>| v.and_then(|p| p.rsplit('/').next().map(str::to_owned));
    let minor = if m
        .get("download_hash")
        .and_then(Value::as_object)
        .is_some_and(|h| !h.contains_key("sha256") || !h.contains_key("sha1"))
    {
        35
    } else if m.get("download").is_some_and(Value::is_array) {
        34
    } else if relationships(m)
        .any(|r| r.contains_key("any_of") && r.contains_key("choice_help_text"))
    {
        31
    } else if has_license(m, "MPL-2.0") {
        30
    } else if stanzas(m).any(|st| {
        let to = s(st, "install_to").unwrap_or_default();
        to.starts_with("Ships/Script")
            || (to == "Ships"
                && (last(s(st, "find")).as_deref() == Some("Script")
                    || last(s(st, "file")).as_deref() == Some("Script")
                    || s(st, "as").is_some_and(|a| a.ends_with("Script"))))
    }) {
        29
    } else if m.get("kind").and_then(Value::as_str) == Some("dlc") {
        28
    } else if m.contains_key("replaced_by") || relationships(m).any(|r| r.contains_key("any_of")) {
        26
    } else if install_to(&|t| t == "Missions") {
        25
    } else if stanza_has("include_only") || stanza_has("include_only_regexp") {
        24
    } else if has_license(m, "Unlicense") || stanza_has("as") {
        18
    } else if m.contains_key("ksp_version_strict")
        || install_to(&|t| t.starts_with("Ships/@thumbs"))
        || stanza_has("find_matches_files")
    {
        16
    } else if install_to(&|t| t == "Scenarios") {
        14
    } else if install_to(&|t| t.starts_with("Ships/")) {
        12
    } else if stanza_has("find_regexp") || stanza_has("filter_regexp") {
        10
    } else if m.get("license").is_some_and(Value::is_array) {
        8
    } else if m.get("kind").and_then(Value::as_str) == Some("metapackage") {
        6
    } else if stanza_has("find") {
        4
    } else if has_license(m, "WTFPL")
        || m.contains_key("supports")
        || install_to(&|t| t.starts_with("GameData/"))
    {
        2
    } else {
        0
    };
    if minor == 0 {
        Value::from(1)
    } else {
        Value::from(format!("v1.{minor}"))
    }
}

/// License names CKAN knows.
pub const LICENSES: &[&str] = &[
    "public-domain",
    "AFL-3.0",
    "AGPL-3.0",
    "Apache",
    "Apache-1.0",
    "Apache-2.0",
    "APSL-2.0",
    "Artistic",
    "Artistic-1.0",
    "Artistic-2.0",
    "BSD-2-clause",
    "BSD-3-clause",
    "BSD-4-clause",
    "ISC",
    "CC-BY",
    "CC-BY-1.0",
    "CC-BY-2.0",
    "CC-BY-2.5",
    "CC-BY-3.0",
    "CC-BY-4.0",
    "CC-BY-SA",
    "CC-BY-SA-1.0",
    "CC-BY-SA-2.0",
    "CC-BY-SA-2.5",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "CC-BY-NC",
    "CC-BY-NC-1.0",
    "CC-BY-NC-2.0",
    "CC-BY-NC-2.5",
    "CC-BY-NC-3.0",
    "CC-BY-NC-4.0",
    "CC-BY-NC-SA",
    "CC-BY-NC-SA-1.0",
    "CC-BY-NC-SA-2.0",
    "CC-BY-NC-SA-2.5",
    "CC-BY-NC-SA-3.0",
    "CC-BY-NC-SA-4.0",
    "CC-BY-NC-ND",
    "CC-BY-NC-ND-1.0",
    "CC-BY-NC-ND-2.0",
    "CC-BY-NC-ND-2.5",
    "CC-BY-NC-ND-3.0",
    "CC-BY-NC-ND-4.0",
    "CC-BY-ND",
    "CC-BY-ND-1.0",
    "CC-BY-ND-2.0",
    "CC-BY-ND-2.5",
    "CC-BY-ND-3.0",
    "CC-BY-ND-4.0",
    "CC0",
    "CDDL",
    "CPL",
    "EFL-1.0",
    "EFL-2.0",
    "Expat",
    "MIT",
    "GPL-1.0",
    "GPL-2.0",
    "GPL-3.0",
    "LGPL-2.0",
    "LGPL-2.1",
    "LGPL-3.0",
    "GFDL-1.0",
    "GFDL-1.1",
    "GFDL-1.2",
    "GFDL-1.3",
    "GFDL-NIV-1.0",
    "GFDL-NIV-1.1",
    "GFDL-NIV-1.2",
    "GFDL-NIV-1.3",
    "LPPL-1.0",
    "LPPL-1.1",
    "LPPL-1.2",
    "LPPL-1.3c",
    "MPL-1.1",
    "MPL-2.0",
    "Ms-PL",
    "Ms-RL",
    "Perl",
    "Python-2.0",
    "QPL-1.0",
    "W3C",
    "WTFPL",
    "Zlib",
    "Zope",
    "open-source",
    "restricted",
    "unrestricted",
    "unknown",
    "Unlicense",
];

/// Whether the module may be copied to an archive: any license other than `restricted` and
/// `unknown` allows it.
pub fn redistributable(m: &Map<String, Value>) -> bool {
    let names: Vec<&str> = match m.get("license") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => vec![s.as_str()],
        _ => vec![],
    };
    names.iter().any(|l| *l != "restricted" && *l != "unknown")
}

/// Whether `id` is a CKAN identifier: `^[A-Za-z0-9][A-Za-z0-9-]+$`.
pub fn valid_identifier(id: &str) -> bool {
    id.len() >= 2
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Checks a finished module against CKAN's rules for a package.
pub fn validate(m: &Map<String, Value>) -> Result<(), NetkanError> {
    let invalid = |s: String| Err(NetkanError::Validation(s));
    let identifier = m.get("identifier").and_then(Value::as_str).unwrap_or("");
    if !valid_identifier(identifier) {
        return invalid(format!(
            "identifier `{identifier}` is not valid (letters, digits and `-`, at least two characters, not starting with `-`)"
        ));
    }
    let kind = m.get("kind").and_then(Value::as_str).unwrap_or("package");
    let mut required = vec![
        "spec_version",
        "name",
        "abstract",
        "identifier",
        "license",
        "version",
        "author",
    ];
    if kind == "package" {
        required.push("download");
    }
    for key in required {
        match m.get(key) {
            None | Some(Value::Null) => {
                return invalid(format!("required property `{key}` is missing"))
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                return invalid(format!("required property `{key}` is empty"))
            }
            _ => {}
        }
    }
    let licenses: Vec<&Value> = match &m["license"] {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    for l in licenses {
        match l.as_str() {
            Some(name) if LICENSES.contains(&name) => {}
            _ => return invalid(format!("license {l} is not one CKAN knows")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_order_and_layout() {
        let m = json!({"x_generated_by": "netkan", "zzz": 1, "x_a": 2, "version": "1", "identifier": "A",
            "spec_version": 1, "resources": {"x_s": "s", "remote-avc": "r", "homepage": "h", "manual": "m"}});
        let c = canonical(m.as_object().unwrap());
        let keys: Vec<&str> = c.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "spec_version",
                "identifier",
                "version",
                "resources",
                "zzz",
                "x_a",
                "x_generated_by"
            ]
        );
        let r: Vec<&str> = c["resources"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(r, ["homepage", "manual", "remote-avc", "x_s"]);
        assert_eq!(to_text(&c).lines().nth(1), Some("    \"spec_version\": 1,"));
        assert!(to_text(&c).ends_with("}\n"));
    }

    #[test]
    fn spec_versions() {
        let v = |j: Value| minimum_spec_version(j.as_object().unwrap());
        assert_eq!(v(json!({"license": "MIT"})), json!(1));
        assert_eq!(v(json!({"license": ["MIT", "GPL-2.0"]})), json!("v1.8"));
        assert_eq!(v(json!({"download": ["a", "b"]})), json!("v1.34"));
        assert_eq!(
            v(json!({"install": [{"find": "X", "install_to": "GameData"}]})),
            json!("v1.4")
        );
        assert_eq!(
            v(json!({"install": [{"file": "X", "install_to": "GameData/X"}]})),
            json!("v1.2")
        );
        assert_eq!(v(json!({"license": "Unlicense"})), json!("v1.18"));
    }

    #[test]
    fn licenses() {
        let m = |j: Value| j.as_object().unwrap().clone();
        assert!(redistributable(&m(
            json!({"license": ["GPL-2.0", "restricted"]})
        )));
        assert!(!redistributable(&m(json!({"license": "restricted"}))));
        assert!(!redistributable(&m(json!({"license": "unknown"}))));
    }
}
