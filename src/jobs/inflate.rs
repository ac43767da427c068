//! `inflate`: inflates a batch of netkans into `.ckan` texts, in a job container with a
//! network and the worker's download cache mounted at `/cache`.
//!
//! Spec: `{"mods": [{"netkan": "<text>", "identifier": "Id", "highest_version": "1.2"}],
//! "game_id": "KSP"}`. The result holds one NetKAN outcome per mod, in order
//! (`{"outcomes": [{"Success": …, "Ckan": …}], "succeeded": N, "failed": M}`). A mod that
//! fails to inflate is an outcome with `Success=false`, not a failed job: the job fails only
//! when it cannot run at all.

use super::{object, only_fields, str_field, ContainerSetup, JobContext, JobError, JobKind};
use crate::config::Config;
use crate::netkan::repo::RepoMod;
use crate::netkan::{Fetcher, Options, Outcome};
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::{json, Value};

pub struct Inflate;

/// Most mods in one job.
pub const MAX_MODS: usize = 200;
/// Checks a number of mods per job: 1 to [`MAX_MODS`].
pub fn check_batch(batch: usize) -> Result<usize, String> {
    if (1..=MAX_MODS).contains(&batch) {
        Ok(batch)
    } else {
        Err(format!("must be between 1 and {MAX_MODS}, got {batch}"))
    }
}

/// Largest netkan text accepted, bytes.
const MAX_NETKAN: usize = 256 * 1024;
/// Where the worker's download cache is mounted in the container.
const CACHE_MOUNT: &str = "/cache";
/// Mods of one batch inflated at once (their time is mostly spent waiting on hosts).
const CONCURRENCY: usize = 4;

/// One mod of a batch, as read from the spec.
struct ModSpec<'a> {
    netkan: &'a str,
    identifier: Option<&'a str>,
    highest_version: Option<&'a str>,
}

fn mods(spec: &Value) -> Result<Vec<ModSpec<'_>>, JobError> {
    let list = match object(spec)?.get("mods") {
        Some(Value::Array(list)) => list,
        Some(v) => return Err(JobError::BadSpec(format!("`mods` must be a list, got {v}"))),
        None => return Err(JobError::BadSpec("`mods` is missing".into())),
    };
    if list.is_empty() || list.len() > MAX_MODS {
        return Err(JobError::BadSpec(format!(
            "`mods` must hold 1 to {MAX_MODS} mods, got {}",
            list.len()
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = |e: JobError| match e {
                JobError::BadSpec(msg) => JobError::BadSpec(format!("mods[{i}]: {msg}")),
                other => other,
            };
            only_fields(m, &["netkan", "identifier", "highest_version"]).map_err(at)?;
            let netkan = str_field(m, "netkan").map_err(at)?.ok_or_else(|| {
                at(JobError::BadSpec(
                    "`netkan` (the file's text) is missing".into(),
                ))
            })?;
            if netkan.len() > MAX_NETKAN {
                return Err(at(JobError::BadSpec(format!(
                    "`netkan` is {} bytes; the limit is {MAX_NETKAN}",
                    netkan.len()
                ))));
            }
            let identifier = str_field(m, "identifier").map_err(at)?;
            if let Some(id) = identifier {
                if !crate::netkan::ckan::valid_identifier(id) {
                    return Err(at(JobError::BadSpec(format!(
                        "`{id}` is not a CKAN identifier (letters, digits and dashes)"
                    ))));
                }
            }
            Ok(ModSpec {
                netkan,
                identifier,
                highest_version: str_field(m, "highest_version").map_err(at)?,
            })
        })
        .collect()
}

impl JobKind for Inflate {
    fn name(&self) -> &'static str {
        "inflate"
    }

    fn validate(&self, spec: &Value) -> Result<(), JobError> {
        only_fields(spec, &["mods", "game_id"])?;
        str_field(spec, "game_id")?;
        mods(spec).map(drop)
    }

    fn run<'a>(
        &'a self,
        spec: &'a Value,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(async move {
            let mods = mods(spec)?;
            let game_id = str_field(spec, "game_id")?.unwrap_or("KSP");
            let config = super::settings_inside()?;
            let fetcher =
                Fetcher::from_config(&config).map_err(|e| JobError::Failed(e.to_string()))?;
            let prereleases = config.netkan.prereleases;
            // a window of CONCURRENCY mods at a time, outcomes in the batch's order
            let mut window = futures::stream::FuturesOrdered::new();
            let mut outcomes: Vec<Outcome> = Vec::with_capacity(mods.len());
            for m in mods {
                if window.len() >= CONCURRENCY {
                    outcomes.extend(window.next().await);
                }
                window.push_back(inflate_one(m, game_id, prereleases, &fetcher, ctx));
            }
            while let Some(outcome) = window.next().await {
                outcomes.push(outcome);
            }
            let succeeded = outcomes.iter().filter(|o| o.success).count();
            Ok(json!({
                "succeeded": succeeded,
                "failed": outcomes.len() - succeeded,
                "outcomes": outcomes,
            }))
        })
    }

    fn container_setup(&self, config: &Config) -> ContainerSetup {
        let mut env = vec![
            format!("KRAKEN_GITHUB_API={}", config.github.api),
            format!("KRAKEN_GITHUB_WEB={}", config.github.web),
            format!("KRAKEN_SPACEDOCK_URL={}", config.spacedock.url),
            format!("KRAKEN_NETKAN_REWRITE={}", config.netkan.rewrite),
            format!("KRAKEN_NETKAN_PRERELEASES={}", config.netkan.prereleases),
            format!("KRAKEN_NETKAN_CACHE_MAX_MB={}", config.netkan.cache_max_mb),
            format!("KRAKEN_NETKAN_CACHE_DIR={CACHE_MOUNT}"),
        ];
        if !config.github.token.is_empty() {
            env.push(format!("KRAKEN_GITHUB_TOKEN={}", config.github.token));
        }
        ContainerSetup {
            network: true,
            env,
            binds: vec![(config.netkan_cache_dir(), CACHE_MOUNT.into())],
        }
    }
}

/// Inflates one mod of the batch and logs how it went.
async fn inflate_one(
    m: ModSpec<'_>,
    game_id: &str,
    prereleases: bool,
    fetcher: &Fetcher,
    ctx: &JobContext,
) -> Outcome {
    let opts = Options {
        highest_version: m.highest_version.map(str::to_owned),
        game_id: Some(game_id.to_owned()),
        prereleases,
        file_name: m.identifier.map(|id| format!("{id}.netkan")),
    };
    let outcome = crate::netkan::inflate(m.netkan, &opts, fetcher).await;
    let id = outcome
        .mod_identifier
        .as_deref()
        .or(m.identifier)
        .unwrap_or("?");
    match (&outcome.file_name, &outcome.error_message) {
        (Some(file), _) => ctx.log(&format!("{id}: inflated {file}")),
        (None, Some(error)) => ctx.log(&format!("{id}: failed: {error}")),
        (None, None) => ctx.log(&format!("{id}: failed")),
    }
    for warning in &outcome.warning_messages {
        ctx.log(&format!("{id}: warning: {warning}"));
    }
    outcome
}

/// Job specs inflating `mods`, `batch` mods a job; `indexed` tells the highest version of
/// a mod already in the metadata repository (for the out-of-order check).
pub fn specs(
    mods: &[RepoMod],
    batch: usize,
    game_id: &str,
    indexed: impl Fn(&str) -> Option<String>,
) -> Vec<Value> {
    mods.chunks(batch.clamp(1, MAX_MODS))
        .map(|chunk| {
            let mods: Vec<Value> = chunk
                .iter()
                .map(|m| {
                    let mut spec = json!({ "identifier": m.identifier, "netkan": m.text });
                    if let Some(v) = indexed(&m.identifier) {
                        spec["highest_version"] = Value::String(v);
                    }
                    spec
                })
                .collect();
            json!({ "mods": mods, "game_id": game_id })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    #[test]
    fn specs_are_checked_with_the_mod_named() {
        let ok = json!({"mods": [{"netkan": "identifier: A1", "identifier": "A1"}]});
        assert!(Inflate.validate(&ok).is_ok());
        for (spec, expected) in [
            (json!({}), "`mods` is missing"),
            (json!({"mods": []}), "1 to 200 mods"),
            (json!({"mods": "x"}), "must be a list"),
            (json!({"mods": [{}]}), "mods[0]: `netkan`"),
            (
                json!({"mods": [{"netkan": 1}]}),
                "mods[0]: `netkan` must be a string",
            ),
            (
                json!({"mods": [{"netkan": "", "identifier": "../x"}]}),
                "mods[0]: `../x` is not a CKAN identifier",
            ),
            (
                json!({"mods": [{"netkan": "", "idenitfier": "x"}]}),
                "unknown field `idenitfier`",
            ),
            (
                json!({"mods": [{"netkan": ""}], "game": "KSP"}),
                "unknown field `game`",
            ),
        ] {
            let err = Inflate.validate(&spec).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{spec}: `{err}` should say `{expected}`"
            );
        }
        let big = "x".repeat(MAX_NETKAN + 1);
        let err = Inflate
            .validate(&json!({"mods": [{"netkan": big}]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("the limit is"), "{err}");
    }

    #[test]
    fn batches_keep_order_and_size() {
        let mods: Vec<_> = (0..5)
            .map(|i| RepoMod {
                identifier: format!("M{i}"),
                text: format!("identifier: M{i}"),
            })
            .collect();
        let specs = specs(&mods, 2, "KSP", |id| (id == "M4").then(|| "1.0".into()));
        assert_eq!(specs[2]["mods"][0]["highest_version"], "1.0");
        assert!(specs[0]["mods"][0].get("highest_version").is_none());
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[2]["mods"][0]["identifier"], "M4");
        assert!(specs.iter().all(|s| Inflate.validate(s).is_ok()));
    }

    #[test]
    fn the_container_gets_the_upstreams_and_the_cache() {
        let mut config = Config::default();
        config.github.api = "http://10.0.0.1:9/api".into();
        config.github.token = "t".into();
        let setup = Inflate.container_setup(&config);
        assert!(setup.network);
        assert!(setup
            .env
            .contains(&"KRAKEN_GITHUB_API=http://10.0.0.1:9/api".to_string()));
        assert!(setup.env.contains(&"KRAKEN_GITHUB_TOKEN=t".to_string()));
        assert_eq!(
            setup.binds,
            vec![(config.netkan_cache_dir(), "/cache".into())]
        );
        // what the container is given must load as a valid configuration there
        let env = setup
            .env
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())));
        let inside = Config::load(None, env, &Overrides::default()).unwrap();
        assert_eq!(inside.github.api, "http://10.0.0.1:9/api");
        assert_eq!(
            inside.netkan_cache_dir(),
            std::path::PathBuf::from("/cache")
        );
    }
}
