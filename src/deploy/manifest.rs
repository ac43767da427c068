//! The app manifest: `kraken.toml` at the root of an app's repository.
//!
//! ```toml
//! [app]
//! name = "hello"          # the app's name: `hello.local` on the LAN (a DNS label)
//! version = "1.0.0"
//! author = "Ada"
//! endpoint = "/health"    # the path the health check asks (default "/")
//! health = "http"         # http: it answers at `endpoint`; running: it stays up (any protocol)
//!
//! [config]
//! port = 8000             # the port the app listens on in its container
//! lang = "python"         # python, node, static-site, or dockerfile (the app's own)
//! test = "pytest -q"      # run after the build; a failure fails the deployment
//! run = "python app.py"   # how the app starts (python and node)
//! ```
//!
//! Parsing never panics; every error names the key and why.

use serde::Deserialize;
use std::path::Path;

/// The languages the platform builds, each from its own Dockerfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Python,
    Node,
    StaticSite,
    /// The app's own `Dockerfile`.
    Dockerfile,
}

impl Lang {
    pub const ALL: [Lang; 4] = [Lang::Python, Lang::Node, Lang::StaticSite, Lang::Dockerfile];

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Node => "node",
            Lang::StaticSite => "static-site",
            Lang::Dockerfile => "dockerfile",
        }
    }

    /// The Dockerfile an app of this language is built with: one of the project's
    /// `dockerfiles/app-<lang>.Dockerfile`, or `None` for the app's own.
    pub fn dockerfile(self) -> Option<String> {
        (self != Lang::Dockerfile).then(|| format!("app-{}.Dockerfile", self.as_str()))
    }

    /// The text of [`Lang::dockerfile`] (compiled in, so a lone binary can build apps).
    pub fn dockerfile_text(self) -> Option<&'static str> {
        match self {
            Lang::Python => Some(include_str!("../../dockerfiles/app-python.Dockerfile")),
            Lang::Node => Some(include_str!("../../dockerfiles/app-node.Dockerfile")),
            Lang::StaticSite => Some(include_str!("../../dockerfiles/app-static-site.Dockerfile")),
            Lang::Dockerfile => None,
        }
    }

    /// Whether an app of this language must say how it starts (`config.run`).
    fn needs_run(self) -> bool {
        matches!(self, Lang::Python | Lang::Node)
    }
}

/// A checked manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: Option<String>,
    pub author: Option<String>,
    /// The health check's path, starting with `/`.
    pub endpoint: String,
    /// What makes the app healthy.
    pub health: Health,
    pub port: u16,
    pub lang: Lang,
    pub test: Option<String>,
    pub run: Option<String>,
}

/// What the health check asks of a started app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answers HTTP at `endpoint` with anything but a server error.
    Http,
    /// Its container stays up (an app that does not speak HTTP).
    Running,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Http => "http",
            Health::Running => "running",
        }
    }

    pub fn parse(s: &str) -> Option<Health> {
        [Health::Http, Health::Running]
            .into_iter()
            .find(|h| h.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the repository has no kraken.toml at its root")]
    Missing,
    #[error("kraken.toml is not valid TOML: {0}")]
    Syntax(String),
    #[error("kraken.toml: `{key}` is missing ({why})")]
    MissingKey {
        key: &'static str,
        why: &'static str,
    },
    #[error("kraken.toml: `{key}` {why}")]
    Invalid { key: String, why: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    app: Option<RawApp>,
    config: Option<RawConfig>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Option<String>,
    version: Option<String>,
    author: Option<String>,
    endpoint: Option<String>,
    health: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    port: Option<i64>,
    lang: Option<String>,
    test: Option<String>,
    run: Option<String>,
}

fn invalid(key: &str, why: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        key: key.to_owned(),
        why: why.into(),
    }
}

/// A non-empty, single-line command, or none.
fn command(key: &str, value: Option<String>) -> Result<Option<String>, ManifestError> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Err(invalid(key, "is empty")),
        Some(v) if v.contains(['\n', '\r', '\0']) => {
            Err(invalid(key, "must be one line (a command)"))
        }
        Some(v) => Ok(Some(v.trim().to_owned())),
    }
}

impl Manifest {
    /// Reads `kraken.toml` from a checkout's root.
    pub fn read(repo: &Path) -> Result<Manifest, ManifestError> {
        let path = repo.join("kraken.toml");
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8(bytes)
                .map_err(|_| ManifestError::Syntax("the file is not UTF-8 text".into()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError::Missing)
            }
            Err(e) => return Err(ManifestError::Syntax(format!("cannot read it: {e}"))),
        };
        Self::parse(&text)
    }

    /// Parses and checks a manifest's text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            // toml's message names the key and the line; keep it on one line
            ManifestError::Syntax(
                e.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })?;
        let app = raw.app.ok_or(ManifestError::MissingKey {
            key: "app",
            why: "the [app] table names the app",
        })?;

        let name = app.name.ok_or(ManifestError::MissingKey {
            key: "app.name",
            why: "the app is reached as <name>.local",
        })?;
        let label_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !label_ok {
            return Err(invalid(
                "app.name",
                format!(
                    "`{name}` is not a DNS label: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
                ),
            ));
        }
        let short = |key: &str, v: Option<String>| match v {
            Some(v) if v.len() > 200 || v.contains(['\n', '\r', '\0']) => {
                Err(invalid(key, "must be one line of at most 200 characters"))
            }
            v => Ok(v),
        };
        let version = short("app.version", app.version)?;
        let author = short("app.author", app.author)?;
        let endpoint = app.endpoint.unwrap_or_else(|| "/".into());
        if !endpoint.starts_with('/') || endpoint.contains(char::is_whitespace) {
            return Err(invalid(
                "app.endpoint",
                format!("`{endpoint}` is not a URL path (it starts with '/', without spaces)"),
            ));
        }
        let health = match app.health.as_deref() {
            None => Health::Http,
            Some(h) => Health::parse(h).ok_or_else(|| {
                invalid(
                    "app.health",
                    format!("`{h}` is not \"http\" or \"running\""),
                )
            })?,
        };

        let config = raw.config.ok_or(ManifestError::MissingKey {
            key: "config",
            why: "the [config] table says how to build and run it",
        })?;

        let port = config.port.ok_or(ManifestError::MissingKey {
            key: "config.port",
            why: "the port the app listens on",
        })?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid("config.port", format!("{port} is not a port (1 to 65535)")))?;
        let lang_name = config.lang.ok_or(ManifestError::MissingKey {
            key: "config.lang",
            why: "python, node, static-site or dockerfile",
        })?;
        let lang = Lang::ALL
            .into_iter()
            .find(|l| l.as_str() == lang_name)
            .ok_or_else(|| {
                let known: Vec<&str> = Lang::ALL.iter().map(|l| l.as_str()).collect();
                invalid(
                    "config.lang",
                    format!("`{lang_name}` is not one of {}", known.join(", ")),
                )
            })?;
        let test = command("config.test", config.test)?;
        let run = command("config.run", config.run)?;
        if lang.needs_run() && run.is_none() {
            return Err(ManifestError::MissingKey {
                key: "config.run",
                why: "how a python or node app starts",
            });
        }
        Ok(Manifest {
            name,
            version,
            author,
            endpoint,
            health,
            port,
            lang,
            test,
            run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in the docs is a valid app.
    #[test]
    fn the_documented_example_app_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/example-app");
        let m = Manifest::read(&dir).expect("docs/example-app/kraken.toml is valid");
        assert_eq!(
            (m.name.as_str(), m.port, m.lang),
            ("guestbook", 8000, Lang::Python)
        );
    }

    const GOOD: &str = r#"
[app]
name = "hello"
version = "1.0.0"
author = "Ada"
endpoint = "/health"

[config]
port = 8000
lang = "python"
test = "python -m pytest -q"
run = "python app.py"
"#;

    #[test]
    fn a_full_manifest_reads() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.name, "hello");
        assert_eq!(m.endpoint, "/health");
        assert_eq!(m.port, 8000);
        assert_eq!(m.lang, Lang::Python);
        assert_eq!(
            m.lang.dockerfile().as_deref(),
            Some("app-python.Dockerfile")
        );
        assert_eq!(m.run.as_deref(), Some("python app.py"));
        let site = Manifest::parse(
            "[app]\nname = \"site\"\n[config]\nport = 80\nlang = \"static-site\"\n",
        )
        .unwrap();
        assert_eq!(site.endpoint, "/");
        assert_eq!(site.run, None);
        assert_eq!(Lang::Dockerfile.dockerfile(), None);
    }

    #[test]
    fn every_problem_names_its_key() {
        let cases: &[(&str, &str)] = &[
            ("[app\nname = 1", "not valid TOML"),
            ("[config]\nport = 80\nlang = \"node\"\nrun = \"x\"", "`app` is missing"),
            ("[app]\nname = \"a\"", "`config` is missing"),
            ("[app]\n[config]\nport = 1\nlang = \"static-site\"", "`app.name` is missing"),
            ("[app]\nname = \"Hello_World\"\n[config]\nport = 1\nlang = \"static-site\"", "`app.name` `Hello_World` is not a DNS label"),
            ("[app]\nname = \"a\"\nendpoint = \"health\"\n[config]\nport = 1\nlang = \"static-site\"", "`app.endpoint`"),
            ("[app]\nname = \"a\"\nhealth = \"tcp\"\n[config]\nport = 1\nlang = \"static-site\"", "`app.health`"),
            ("[app]\nname = \"a\"\n[config]\nlang = \"static-site\"", "`config.port` is missing"),
            ("[app]\nname = \"a\"\n[config]\nport = 70000\nlang = \"static-site\"", "70000 is not a port"),
            ("[app]\nname = \"a\"\n[config]\nport = \"80\"\nlang = \"static-site\"", "invalid type"),
            ("[app]\nname = \"a\"\n[config]\nport = 80\nlang = \"cobol\"", "`cobol` is not one of python, node, static-site, dockerfile"),
            ("[app]\nname = \"a\"\n[config]\nport = 80\nlang = \"node\"", "`config.run` is missing"),
            ("[app]\nname = \"a\"\n[config]\nport = 80\nlang = \"node\"\nrun = \"  \"", "`config.run` is empty"),
            ("[app]\nname = \"a\"\n[config]\nport = 80\nlang = \"node\"\nrun = \"a\\nb\"", "must be one line"),
            ("[app]\nname = \"a\"\nnmae = \"b\"\n[config]\nport = 80\nlang = \"static-site\"", "unknown field `nmae`"),
            ("[app]\nname = \"a\"\n[config]\nport = 80\nlang = \"static-site\"\n[extra]\n", "unknown field `extra`"),
        ];
        for (text, expected) in cases {
            let err = Manifest::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn a_repository_without_a_manifest_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(dir.path()), Err(ManifestError::Missing));
        std::fs::write(dir.path().join("kraken.toml"), b"\xff\xfe").unwrap();
        assert!(matches!(
            Manifest::read(dir.path()),
            Err(ManifestError::Syntax(_))
        ));
        std::fs::write(dir.path().join("kraken.toml"), GOOD).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap().name, "hello");
    }

    #[test]
    fn health_is_http_unless_the_app_says_running() {
        let site = "[app]\nname = \"a\"\n[config]\nport = 1\nlang = \"static-site\"";
        assert_eq!(Manifest::parse(site).unwrap().health, Health::Http);
        let tcp = site.replace("[config]", "health = \"running\"\n[config]");
        assert_eq!(Manifest::parse(&tcp).unwrap().health, Health::Running);
    }
}
