//! What NetKAN's webhooks carry, read and checked: GitHub's `X-Hub-Signature-256`, push and
//! release payloads, the `/inflate` list and SpaceDock's forms. Pure functions; the API
//! serves the routes and the orchestrator acts on what they say.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Why a webhook was refused; the message is what the sender is told.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WebhookError {
    /// The signature is missing or wrong (403).
    #[error("{0}")]
    Forbidden(String),
    /// The body is not what the route takes (400).
    #[error("{0}")]
    Malformed(String),
}

/// Checks GitHub's `X-Hub-Signature-256: sha256=<hex>` over the raw body, in constant time.
pub fn verify_signature(
    secret: &str,
    body: &[u8],
    header: Option<&str>,
) -> Result<(), WebhookError> {
    if secret.is_empty() {
        return Err(WebhookError::Forbidden(
            "GitHub webhooks are off: netkan.webhook_secret is not set".into(),
        ));
    }
    let header = header.ok_or_else(|| {
        WebhookError::Forbidden("unsigned: the X-Hub-Signature-256 header is missing".into())
    })?;
    let given = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h.trim()).ok())
        .ok_or_else(|| {
            WebhookError::Forbidden("X-Hub-Signature-256 is not `sha256=<hex>`".into())
        })?;
    // HMAC takes a key of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| WebhookError::Forbidden(e.to_string()))?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| WebhookError::Forbidden("the signature does not match the body".into()))
}

/// `sha256=<hex>` of `body` under `secret`, as GitHub sends it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length: this cannot fail
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn json(body: &[u8]) -> Result<Value, WebhookError> {
    serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(format!("not JSON: {e}")))
}

fn identifiers(list: &[Value]) -> Result<Vec<String>, WebhookError> {
    let ids = list
        .iter()
        .map(|v| match v.as_str() {
            Some(id) if super::ckan::valid_identifier(id) => Ok(id.to_owned()),
            _ => Err(WebhookError::Malformed(format!(
                "{v} is not a mod identifier (letters, digits and dashes)"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err(WebhookError::Malformed("no identifiers given".into()));
    }
    Ok(ids)
}

/// The `/inflate` body: `{"identifiers": ["A", "B"]}` (NetKAN-Infra's) or `["A", "B"]`.
pub fn inflate_list(body: &[u8]) -> Result<Vec<String>, WebhookError> {
    match json(body)? {
        Value::Array(list) => identifiers(&list),
        Value::Object(o) => match o.get("identifiers") {
            Some(Value::Array(list)) => identifiers(list),
            _ => Err(WebhookError::Malformed(
                "expected {\"identifiers\": [\"ModId\", …]}".into(),
            )),
        },
        _ => Err(WebhookError::Malformed(
            "expected {\"identifiers\": [\"ModId\", …]}".into(),
        )),
    }
}

/// What a push to a repository changed, as far as NetKAN cares.
#[derive(Debug, Default, PartialEq)]
pub struct Push {
    /// `owner/name`.
    pub repository: String,
    /// Whether it went to the repository's default branch (others are ignored).
    pub default_branch: bool,
    /// Stems of `.netkan` files added or modified, in order, once each.
    pub netkans: Vec<String>,
    /// Stems of `.frozen` files added (frozen) or removed (thawed).
    pub frozen: Vec<String>,
    pub thawed: Vec<String>,
    /// Paths of `.ckan` files added (for the mirror).
    pub ckans: Vec<String>,
}

/// Reads a GitHub `push` payload.
pub fn push(body: &[u8]) -> Result<Push, WebhookError> {
    let v = json(body)?;
    let text = |p: &str| v.pointer(p).and_then(Value::as_str);
    let reference = text("/ref")
        .ok_or_else(|| WebhookError::Malformed("not a push payload: `ref` is missing".into()))?;
    let repository = text("/repository/full_name")
        .ok_or_else(|| WebhookError::Malformed("`repository.full_name` is missing".into()))?;
    let branch = text("/repository/default_branch").unwrap_or("main");
    let commits = v
        .get("commits")
        .and_then(Value::as_array)
        .ok_or_else(|| WebhookError::Malformed("`commits` is missing".into()))?;
    let mut out = Push {
        repository: repository.to_owned(),
        default_branch: reference == format!("refs/heads/{branch}"),
        ..Default::default()
    };
    let paths = |c: &Value, key: &str| -> Vec<String> {
        c.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect()
    };
    let add = |list: &mut Vec<String>, s: String| {
        if !list.contains(&s) {
            list.push(s);
        }
    };
    for c in commits {
        let changed = paths(c, "added").into_iter().chain(paths(c, "modified"));
        for path in changed {
            if let Some(stem) = stem(&path, ".netkan") {
                add(&mut out.netkans, stem);
            } else if let Some(stem) = stem(&path, ".frozen") {
                add(&mut out.frozen, stem);
            }
        }
        for path in paths(c, "added") {
            if path.ends_with(".ckan") {
                add(&mut out.ckans, path);
            }
        }
        for path in paths(c, "removed") {
            if let Some(stem) = stem(&path, ".frozen") {
                add(&mut out.thawed, stem);
            }
        }
    }
    Ok(out)
}

/// The identifier of a `<dir>/<Identifier><ext>` path, when it is one.
fn stem(path: &str, ext: &str) -> Option<String> {
    let name = path.rsplit('/').next()?.strip_suffix(ext)?;
    super::ckan::valid_identifier(name).then(|| name.to_owned())
}

/// Reads a GitHub `release` payload: whether it is a publication NetKAN should act on.
pub fn release(body: &[u8]) -> Result<bool, WebhookError> {
    let v = json(body)?;
    let action = v.get("action").and_then(Value::as_str).ok_or_else(|| {
        WebhookError::Malformed("not a release payload: `action` is missing".into())
    })?;
    if v.get("release").is_none() {
        return Err(WebhookError::Malformed(
            "not a release payload: `release` is missing".into(),
        ));
    }
    Ok(matches!(
        action,
        "published" | "released" | "edited" | "prereleased"
    ))
}

/// An `application/x-www-form-urlencoded` body as (name, value) pairs.
pub fn form(body: &[u8]) -> Result<Vec<(String, String)>, WebhookError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| WebhookError::Malformed("the form is not UTF-8".into()))?;
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Result<String, WebhookError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| WebhookError::Malformed(format!("bad escape in `{s}`")))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| WebhookError::Malformed("the form is not UTF-8".into()))
}

/// SpaceDock's `/sd/inflate` form: the mod's SpaceDock id.
pub fn spacedock_mod(body: &[u8]) -> Result<u64, WebhookError> {
    let form = form(body)?;
    let id = form
        .iter()
        .find(|(k, _)| k == "mod_id")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| WebhookError::Malformed("the form has no mod_id".into()))?;
    id.trim()
        .parse()
        .map_err(|_| WebhookError::Malformed(format!("mod_id `{id}` is not a number")))
}

/// SpaceDock's `/sd/add` form: a mod just created there, to be added to the NetKAN
/// repository.
#[derive(Debug, Clone, PartialEq)]
pub struct SpaceDockAdd {
    pub name: String,
    pub id: u64,
    pub license: String,
    pub username: String,
    pub short_description: String,
    pub external_link: String,
    pub source_link: String,
    pub mod_url: String,
}

impl SpaceDockAdd {
    /// Reads the form; `name`, `id` and `license` are required.
    pub fn parse(body: &[u8]) -> Result<Self, WebhookError> {
        let form = form(body)?;
        let field = |k: &str| {
            form.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let required = |k: &str| {
            let v = field(k);
            if v.is_empty() {
                Err(WebhookError::Malformed(format!("the form has no {k}")))
            } else {
                Ok(v)
            }
        };
        let id = required("id")?;
        Ok(Self {
            name: required("name")?,
            id: id
                .parse()
                .map_err(|_| WebhookError::Malformed(format!("id `{id}` is not a number")))?,
            license: required("license")?,
            username: field("username"),
            short_description: field("short_description"),
            external_link: field("external_link"),
            source_link: field("source_link"),
            mod_url: field("mod_url"),
        })
    }

    /// The mod's identifier: the letters and digits of its name.
    pub fn identifier(&self) -> Result<String, WebhookError> {
        let id: String = self
            .name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        if super::ckan::valid_identifier(&id) {
            Ok(id)
        } else {
            Err(WebhookError::Malformed(format!(
                "no identifier can be made from the name `{}` (it needs two ASCII letters or digits)",
                self.name
            )))
        }
    }

    /// The `.netkan` for it (JSON, which is also YAML).
    pub fn netkan(&self) -> Result<String, WebhookError> {
        let mut n = serde_json::Map::new();
        n.insert("spec_version".into(), "v1.4".into());
        n.insert("identifier".into(), self.identifier()?.into());
        n.insert(
            "$kref".into(),
            format!("#/ckan/spacedock/{}", self.id).into(),
        );
        n.insert("license".into(), self.license.clone().into());
        let mut resources = serde_json::Map::new();
        for (key, url) in [
            ("homepage", &self.external_link),
            ("repository", &self.source_link),
        ] {
            if url.starts_with("https://") || url.starts_with("http://") {
                resources.insert(key.into(), url.clone().into());
            }
        }
        if !resources.is_empty() {
            n.insert("resources".into(), Value::Object(resources));
        }
        n.insert(
            "x_via".into(),
            "Automated SpaceDock submission (Kraken)".into(),
        );
        let mut text = serde_json::to_string_pretty(&Value::Object(n))
            .map_err(|e| WebhookError::Malformed(e.to_string()))?;
        text.push('\n');
        Ok(text)
    }

    /// The pull request's text.
    pub fn description(&self) -> String {
        let mut body = format!(
            "{} added **{}** to SpaceDock",
            if self.username.is_empty() {
                "Someone"
            } else {
                &self.username
            },
            self.name
        );
        if !self.mod_url.is_empty() {
            body.push_str(&format!(" ({})", self.mod_url));
        }
        body.push_str(".\n\n");
        if !self.short_description.is_empty() {
            body.push_str(&format!("> {}\n\n", self.short_description));
        }
        body.push_str("Please check the generated netkan before merging.");
        body
    }
}

/// Whether a netkan's `$kref` is `#/ckan/spacedock/<id>`.
pub fn krefs_spacedock(netkan: &str, id: u64) -> bool {
    let Ok(docs) = super::transform::parse(netkan) else {
        return false;
    };
    let kref = format!("#/ckan/spacedock/{id}");
    docs.first()
        .and_then(|d| d.get("$kref"))
        .and_then(Value::as_str)
        == Some(kref.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_against_the_body() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = sign("s3cret", body);
        assert!(verify_signature("s3cret", body, Some(&good)).is_ok());
        for (secret, header, says) in [
            ("s3cret", None, "missing"),
            ("s3cret", Some("sha1=00"), "not `sha256=<hex>`"),
            ("s3cret", Some("sha256=zz"), "not `sha256=<hex>`"),
            ("other", Some(good.as_str()), "does not match"),
            ("", Some(good.as_str()), "webhook_secret is not set"),
        ] {
            let err = verify_signature(secret, body, header)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{err}");
        }
        assert!(verify_signature("s3cret", b"{}", Some(&good)).is_err());
    }

    #[test]
    fn a_push_names_netkans_frozen_mods_and_ckans() {
        let body = serde_json::json!({
            "ref": "refs/heads/trunk",
            "repository": {"full_name": "KSP-CKAN/NetKAN", "default_branch": "trunk"},
            "commits": [
                {"added": ["NetKAN/Aa.netkan", "NetKAN/Bb.frozen"], "modified": ["README.md"], "removed": []},
                {"added": [], "modified": ["NetKAN/Aa.netkan", "NetKAN/Cc.netkan"], "removed": ["NetKAN/Dd.frozen"]},
                {"added": ["E/E-1.0.ckan", "NetKAN/../x.netkan"], "modified": [], "removed": []}
            ]
        });
        let p = push(body.to_string().as_bytes()).unwrap();
        assert!(p.default_branch);
        assert_eq!(p.repository, "KSP-CKAN/NetKAN");
        assert_eq!(p.netkans, ["Aa", "Cc"]);
        assert_eq!(p.frozen, ["Bb"]);
        assert_eq!(p.thawed, ["Dd"]);
        assert_eq!(p.ckans, ["E/E-1.0.ckan"]);
        let other = body
            .to_string()
            .replace("refs/heads/trunk", "refs/heads/feature");
        assert!(!push(other.as_bytes()).unwrap().default_branch);
        assert!(push(b"[]")
            .unwrap_err()
            .to_string()
            .contains("`ref` is missing"));
        assert!(push(b"{").unwrap_err().to_string().contains("not JSON"));
    }

    #[test]
    fn inflate_lists_and_forms() {
        assert_eq!(
            inflate_list(br#"{"identifiers":["Aa","B-c"]}"#).unwrap(),
            ["Aa", "B-c"]
        );
        assert_eq!(inflate_list(br#"["Aa"]"#).unwrap(), ["Aa"]);
        for bad in [
            &br#"{"identifiers":[]}"#[..],
            br#"["../x"]"#,
            br#"{"mods":["Aa"]}"#,
            b"7",
        ] {
            assert!(matches!(inflate_list(bad), Err(WebhookError::Malformed(_))));
        }
        assert_eq!(spacedock_mod(b"mod_id=42&event_type=update").unwrap(), 42);
        assert!(spacedock_mod(b"event_type=update").is_err());
        assert!(spacedock_mod(b"mod_id=x%2").is_err());
        assert_eq!(
            form(b"name=A+b%21").unwrap(),
            [("name".into(), "A b!".into())]
        );
        assert!(krefs_spacedock(
            r##"{"$kref": "#/ckan/spacedock/42", "x": 1}"##,
            42
        ));
        assert!(krefs_spacedock(
            "identifier: X\n$kref: '#/ckan/spacedock/42'\n",
            42
        ));
        assert!(!krefs_spacedock("$kref: '#/ckan/spacedock/420'\n", 42));
        let add = SpaceDockAdd::parse(
            b"name=Better+Parts%21&id=77&license=MIT&username=ann&external_link=https%3A%2F%2Fforum.example%2Ft&source_link=javascript%3Ax",
        )
        .unwrap();
        assert_eq!(add.identifier().unwrap(), "BetterParts");
        let netkan: Value = serde_json::from_str(&add.netkan().unwrap()).unwrap();
        assert_eq!(netkan["$kref"], "#/ckan/spacedock/77");
        assert_eq!(
            netkan["resources"],
            serde_json::json!({"homepage": "https://forum.example/t"})
        );
        assert!(krefs_spacedock(&add.netkan().unwrap(), 77));
        assert!(add
            .description()
            .starts_with("ann added **Better Parts!** to SpaceDock"));
        assert!(SpaceDockAdd::parse(b"name=X&id=1")
            .unwrap_err()
            .to_string()
            .contains("license"));
        let unnamed = SpaceDockAdd::parse("name=%E2%9C%93&id=1&license=MIT".as_bytes()).unwrap();
        assert!(unnamed.identifier().is_err());
        assert!(release(br#"{"action":"published","release":{}}"#).unwrap());
        assert!(!release(br#"{"action":"deleted","release":{}}"#).unwrap());
        assert!(release(br#"{"zen":"ping"}"#).is_err());
    }
}
