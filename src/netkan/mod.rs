//! NetKAN: turns a hand-written `.netkan` into the `.ckan` the CKAN mod manager installs
//! from, with the semantics of NetKAN's own inflator.
//!
//! - [`version`]: CKAN's version ordering (public; the out-of-order check uses it).
//! - [`fetch`]: the HTTP client, upstream base URLs and the download cache.
//! - [`sources`]: the GitHub and SpaceDock APIs.
//! - [`archive`]: what is read inside a download (install stanzas, `.version`, `.cfg`).
//! - [`transform`]: the transformer pipeline, in NetKAN's order, and the outcome.
//! - [`ckan`]: canonical property order, `spec_version`, validation, the output text.
//! - [`repo`]: a NetKAN repository on disk (`.netkan` files by identifier, frozen mods).
//! - [`webhook`]: the webhooks' payloads (GitHub push and release, SpaceDock forms) and signatures.
//! - [`index`]: writing `.ckan` files into a metadata repository checkout (CKAN-meta layout).

pub mod archive;
pub mod ckan;
pub mod fetch;
pub mod index;
pub mod repo;
pub mod sources;
pub mod transform;
pub mod version;
pub mod webhook;

pub use fetch::{Fetcher, Upstreams};
pub use transform::{inflate, Options, Outcome};

/// Why a netkan could not be inflated; every message names what to fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetkanError {
    /// The `.netkan` itself is wrong.
    #[error("{0}")]
    BadNetkan(String),
    /// The mod's host failed or answered something unusable.
    #[error("{0}")]
    Upstream(String),
    /// The download could not be fetched.
    #[error("download failed: {0}")]
    Download(String),
    /// The download is not an archive we can read safely.
    #[error("{0}")]
    Archive(String),
    /// The result breaks CKAN's rules.
    #[error("{0}")]
    Validation(String),
}

/// A property written as one string or as a list of strings (non-strings in the list are
/// ignored); absent or any other shape is empty.
pub(crate) fn string_list(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => vec![],
    }
}

impl NetkanError {
    /// Whether trying again later may help (a host or network problem).
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Upstream(_) | Self::Download(_))
    }
}

/// Inflates the netkan in `file` and writes the `.ckan` into `out_dir` when it succeeds.
pub async fn inflate_file(
    fetcher: &Fetcher,
    file: &std::path::Path,
    mut opts: Options,
    out_dir: &std::path::Path,
) -> Result<Outcome, NetkanError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| NetkanError::BadNetkan(format!("cannot read {}: {e}", file.display())))?;
    opts.file_name = file.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    let outcome = inflate(&text, &opts, fetcher).await;
    if let (Some(name), Some(ckan)) = (&outcome.file_name, &outcome.ckan) {
        let path = out_dir.join(name);
        std::fs::create_dir_all(out_dir)
            .and_then(|_| std::fs::write(&path, ckan))
            .map_err(|e| {
                NetkanError::Validation(format!("cannot write {}: {e}", path.display()))
            })?;
    }
    Ok(outcome)
}
