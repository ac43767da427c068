//! Configuration: `kraken.toml`, then `KRAKEN_<SECTION>_<KEY>` environment variables, then
//! command-line flags, merged into one validated [`Config`]. Every error names the key.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A configuration problem, always naming the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: no setting `{key}` in section [{section}]")]
    UnknownEnv {
        var: String,
        section: String,
        key: String,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// The whole agent configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub api: ApiConfig,
    pub broker: BrokerConfig,
    pub worker: WorkerConfig,
    pub orchestrator: OrchestratorConfig,
    pub join: JoinConfig,
    pub github: GithubConfig,
    pub spacedock: SpacedockConfig,
    pub netkan: NetkanConfig,
    pub discovery: DiscoveryConfig,
    pub cluster: ClusterConfig,
}

/// Raft: who votes, how fast a dead leader is replaced.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Voters the cluster grows to: 1, 3 or 5 (3 survives one dead device, 5 two).
    pub voters: u32,
    /// A follower that hears no leader for this long (to twice it) calls an election,
    /// milliseconds.
    pub election_ms: u64,
    /// A voter silent this long is replaced by a live node when one is free, milliseconds.
    pub voter_grace_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            voters: 3,
            election_ms: 1000,
            voter_grace_ms: 30_000,
        }
    }
}

/// Finding the other devices over mDNS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Advertise this agent and browse for the others.
    pub enabled: bool,
    /// Interfaces mDNS uses: `all`, or names (`eth0,wlan0`; `lo` for loopback only).
    pub interfaces: String,
    /// The mDNS port (5353; another only to keep test clusters apart).
    pub port: u16,
    /// How long a new device looks for a cluster before it starts one, milliseconds.
    pub browse_ms: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interfaces: "all".into(),
            port: 5353,
            browse_ms: 1500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Human name of this device; the hostname by default.
    pub name: String,
    /// Where the store, tokens, node id and the supervised broker's files live.
    pub data_dir: PathBuf,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: hostname(),
            data_dir: PathBuf::from("/var/lib/kraken"),
            log: "info,rocket=warn,rocket::launch=warn,lapin=off,openraft=off".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the REST + GraphQL API binds to.
    pub bind: String,
    pub port: u16,
    /// Whether queries (not mutations) are allowed without the operator token.
    pub public_reads: bool,
    /// The address other nodes use to reach this one (its LAN address); guessed when empty.
    pub advertise: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0".into(),
            port: 8080,
            public_reads: false,
            advertise: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// An external AMQP URL; when empty the orchestrator supervises its own `rabbitmq-server`.
    pub url: String,
    /// AMQP port of the supervised broker.
    pub amqp_port: u16,
    /// Erlang distribution port of the supervised broker (default: AMQP port + 20000).
    pub dist_port: u16,
    /// The `rabbitmq-server` executable.
    pub server_bin: String,
    /// The `rabbitmqctl` executable.
    pub ctl_bin: String,
    /// Messages a consumer may hold unacknowledged.
    pub prefetch: u16,
    /// A voter that does not lead keeps its broker running, idle, so that it serves the
    /// cluster at once if it takes over (about 120 MiB of memory; failover seconds faster).
    pub standby: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            amqp_port: 5672,
            dist_port: 0,
            server_bin: "rabbitmq-server".into(),
            ctl_bin: "rabbitmqctl".into(),
            prefetch: 64,
            standby: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs this node runs at once; 0 makes it a pure orchestrator.
    pub slots: u32,
    /// Memory limit of one job container, MiB.
    pub job_memory_mb: u64,
    /// CPU limit of one job container, in cores.
    pub job_cpus: f64,
    /// Time limit of one job, seconds.
    pub job_timeout_secs: u64,
    /// Heartbeat period, milliseconds.
    pub heartbeat_ms: u64,
    /// The Docker endpoint (`unix:///var/run/docker.sock` by default).
    pub docker_host: String,
    /// The image job images build `FROM`.
    pub base_image: String,
    /// The address app containers publish their port on, for this agent to forward to
    /// (loopback by default; only the agent's own port for the app is open to the LAN).
    pub app_backend_address: std::net::IpAddr,
    /// Labels of this node that deployments may ask for (`ssd`, `gpu`, `kitchen`):
    /// letters, digits, `.`, `_`, `-`, `=`, `:`. From the environment, comma-separated.
    pub labels: Vec<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            slots: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
                .max(1),
            job_memory_mb: 256,
            job_cpus: 1.0,
            job_timeout_secs: 600,
            heartbeat_ms: 1000,
            docker_host: String::new(),
            base_image: "debian:bookworm-slim".into(),
            app_backend_address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            labels: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    /// A worker silent this long is dead and its jobs are placed again, milliseconds.
    pub grace_ms: u64,
    /// Attempts of a job before it is `failed`, unless the job says otherwise.
    pub max_attempts: u32,
    /// First retry delay, doubled per attempt, milliseconds.
    pub retry_backoff_ms: u64,
    /// Log lines kept per job; older lines are dropped first.
    pub max_log_lines: u32,
    /// How long a new cluster admits devices without approval, seconds (0: never).
    pub enrollment_secs: u64,
    /// How often the branches of deployments with `autoRedeploy` are checked, milliseconds.
    pub app_poll_ms: u64,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            grace_ms: 5000,
            max_attempts: 3,
            retry_backoff_ms: 1000,
            max_log_lines: 5000,
            enrollment_secs: 600,
            app_poll_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct JoinConfig {
    /// The orchestrator's API URL; empty means "find the cluster over mDNS, or start one".
    pub url: String,
    /// The cluster join token; empty: ask the orchestrator at `url` to admit this device
    /// (inside its enrollment window, or once an operator approves it).
    pub token: String,
}

/// Where GitHub is reached (`KRAKEN_GITHUB_API`, `KRAKEN_GITHUB_WEB`, `KRAKEN_GITHUB_TOKEN`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    /// The REST API base.
    pub api: String,
    /// The web host (release downloads, raw files).
    pub web: String,
    /// A token sent to the API when set (raises the rate limit).
    pub token: String,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            api: crate::netkan::fetch::GITHUB_API.into(),
            web: crate::netkan::fetch::GITHUB_WEB.into(),
            token: String::new(),
        }
    }
}

/// Where SpaceDock is reached (`KRAKEN_SPACEDOCK_URL`; its API is under `/api`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpacedockConfig {
    pub url: String,
}

impl Default for SpacedockConfig {
    fn default() -> Self {
        Self {
            url: crate::netkan::fetch::SPACEDOCK.into(),
        }
    }
}

/// The NetKAN inflator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetkanConfig {
    /// Take GitHub pre-releases for every mod.
    pub prereleases: bool,
    /// The download cache; `<data_dir>/netkan-cache` when empty.
    pub cache_dir: String,
    /// The cache's size bound, MiB.
    pub cache_max_mb: u64,
    /// More `public=reachable` URL prefix pairs, comma-separated (hosts of `#/ckan/http` mods
    /// behind a mirror).
    pub rewrite: String,
    /// A checkout of a NetKAN repository (`NetKAN/<id>.netkan`, or `<id>.netkan` at its
    /// root; `<id>.frozen` marks a frozen mod): where `enqueueInflate` reads mods from.
    pub repo_dir: String,
    /// Mods inflated by one `inflate` job.
    pub inflate_batch: u32,
    /// The game the mods are for.
    pub game_id: String,
    /// The NetKAN repository's git URL: the orchestrator keeps a checkout of it (at
    /// `repo_dir`, or `<data_dir>/netkan-repo`), pulled before each scheduled round and
    /// webhook.
    pub repo_url: String,
    /// The metadata repository's git URL (CKAN-meta: `<id>/<id>-<version>.ckan`), where the
    /// indexer pushes; empty: nothing is indexed.
    pub meta_url: String,
    /// `user:token` for http(s) git remotes (sent as basic authorization), or empty.
    pub git_credentials: String,
    /// The committer of the indexer's commits.
    pub git_name: String,
    pub git_email: String,
    /// The metadata repository on GitHub (`owner/name`): staged mods become pull requests
    /// there, through `github.api` with `github.token`.
    pub meta_github: String,
    /// The NetKAN repository on GitHub (`owner/name`): `/sd/add` opens pull requests there.
    pub repo_github: String,
    /// Seconds between scheduled rounds (every mod that is not frozen); 0: none.
    pub schedule_secs: u64,
    /// A round is skipped while more mods than this wait to be inflated.
    pub schedule_max_queue: u32,
    /// A round is skipped while GitHub's API allows fewer calls than this.
    pub schedule_min_rate: u32,
    /// The secret GitHub signs its webhooks with (`X-Hub-Signature-256`); the GitHub routes
    /// refuse every request while it is empty.
    pub webhook_secret: String,
    /// The archive's S3-like endpoint (the Internet Archive: `https://s3.us.archive.org`);
    /// empty: nothing is mirrored.
    pub archive_url: String,
    pub archive_access: String,
    pub archive_secret: String,
    /// The archive collection items go into.
    pub archive_collection: String,
}

impl Default for NetkanConfig {
    fn default() -> Self {
        Self {
            prereleases: false,
            cache_dir: String::new(),
            cache_max_mb: 2048,
            rewrite: String::new(),
            repo_dir: String::new(),
            inflate_batch: 32,
            game_id: "KSP".into(),
            repo_url: String::new(),
            meta_url: String::new(),
            git_credentials: String::new(),
            git_name: "Kraken NetKAN".into(),
            git_email: "netkan@kraken.invalid".into(),
            meta_github: String::new(),
            repo_github: String::new(),
            schedule_secs: 1800,
            schedule_max_queue: 1000,
            schedule_min_rate: 1000,
            webhook_secret: String::new(),
            archive_url: String::new(),
            archive_access: String::new(),
            archive_secret: String::new(),
            archive_collection: "kspckanmods".into(),
        }
    }
}

impl Config {
    /// The upstream hosts of the NetKAN inflator.
    pub fn upstreams(&self) -> crate::netkan::Upstreams {
        crate::netkan::Upstreams {
            github_api: self.github.api.clone(),
            github_web: self.github.web.clone(),
            spacedock: self.spacedock.url.clone(),
            github_token: Some(self.github.token.clone()).filter(|t| !t.is_empty()),
            extra: rewrite_pairs(&self.netkan.rewrite)
                .filter_map(|(_, urls)| urls)
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
        }
    }

    /// Where the NetKAN repository is read from: `netkan.repo_dir`, else the checkout of
    /// `netkan.repo_url` in the data dir; `None` when neither is set.
    pub fn netkan_repo_dir(&self) -> Option<PathBuf> {
        if !self.netkan.repo_dir.is_empty() {
            Some(PathBuf::from(&self.netkan.repo_dir))
        } else if !self.netkan.repo_url.is_empty() {
            Some(self.node.data_dir.join("netkan-repo"))
        } else {
            None
        }
    }

    /// Where inflation downloads are cached.
    pub fn netkan_cache_dir(&self) -> PathBuf {
        if self.netkan.cache_dir.is_empty() {
            self.node.data_dir.join("netkan-cache")
        } else {
            PathBuf::from(&self.netkan.cache_dir)
        }
    }
}

/// The `public=reachable` pairs of `netkan.rewrite`: each non-empty entry with its two
/// URLs, or `None` when it is not a pair of http(s) URLs.
fn rewrite_pairs(s: &str) -> impl Iterator<Item = (&str, Option<(&str, &str)>)> {
    s.split(',').filter(|p| !p.trim().is_empty()).map(|pair| {
        let urls = pair
            .split_once('=')
            .map(|(a, b)| (a.trim(), b.trim()))
            .filter(|(a, b)| is_http_url(a) && is_http_url(b));
        (pair, urls)
    })
}

/// Whether `s` is an `http://` or `https://` URL.
pub fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Settings given on the command line; they win over file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub api_port: Option<u16>,
    pub amqp_port: Option<u16>,
    pub join_url: Option<String>,
    pub join_token: Option<String>,
    pub slots: Option<u32>,
    pub name: Option<String>,
}

impl Config {
    /// Loads `path` (when given, or `./kraken.toml` when present), applies the `KRAKEN_*`
    /// variables from `env`, then `overrides`, and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let default_path = Path::new("kraken.toml");
        let path = path.or_else(|| default_path.exists().then_some(default_path));
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.to_owned(),
                        message: e.message().to_owned(),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let mut config: Config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                path: path
                    .map(Path::to_owned)
                    .unwrap_or_else(|| "environment".into()),
                message: e.message().to_owned(),
            })?;
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.data_dir {
            self.node.data_dir = v.clone();
        }
        if let Some(v) = o.api_port {
            self.api.port = v;
        }
        if let Some(v) = o.amqp_port {
            self.broker.amqp_port = v;
        }
        if let Some(v) = &o.join_url {
            self.join.url = v.clone();
        }
        if let Some(v) = &o.join_token {
            self.join.token = v.clone();
        }
        if let Some(v) = o.slots {
            self.worker.slots = v;
        }
        if let Some(v) = &o.name {
            self.node.name = v.clone();
        }
    }

    /// Checks every value a typo or a wrong unit could break.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message,
            })
        };
        if self.node.name.trim().is_empty() {
            return invalid("node.name", "must not be empty".into());
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return invalid("node.data_dir", "must not be empty".into());
        }
        if self.api.port == 0 {
            return invalid("api.port", "must be between 1 and 65535".into());
        }
        if self.broker.url.is_empty() && self.broker.amqp_port == 0 {
            return invalid("broker.amqp_port", "must be between 1 and 65535".into());
        }
        let url = &self.broker.url;
        if !(url.is_empty() || url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return invalid(
                "broker.url",
                format!("`{}` is not an amqp:// URL", self.broker.url),
            );
        }
        if self.broker.prefetch == 0 {
            return invalid("broker.prefetch", "must be at least 1".into());
        }
        if self.worker.slots > 1024 {
            return invalid(
                "worker.slots",
                format!("{} is more than 1024", self.worker.slots),
            );
        }
        if self.worker.job_memory_mb < 6 {
            return invalid(
                "worker.job_memory_mb",
                "must be at least 6 (Docker's minimum)".into(),
            );
        }
        if !(self.worker.job_cpus > 0.0 && self.worker.job_cpus <= 1024.0) {
            return invalid("worker.job_cpus", "must be between 0 and 1024".into());
        }
        if self.worker.job_timeout_secs == 0 {
            return invalid("worker.job_timeout_secs", "must be at least 1".into());
        }
        if self.worker.labels.len() > 32 {
            return invalid("worker.labels", "more than 32 labels".into());
        }
        if let Some(why) = self.worker.labels.iter().find_map(|l| check_label(l).err()) {
            return invalid("worker.labels", why);
        }
        if !(50..=60_000).contains(&self.worker.heartbeat_ms) {
            return invalid("worker.heartbeat_ms", "must be between 50 and 60000".into());
        }
        if self.orchestrator.grace_ms < 2 * self.worker.heartbeat_ms {
            return invalid(
                "orchestrator.grace_ms",
                format!(
                    "must be at least two heartbeats ({} ms)",
                    2 * self.worker.heartbeat_ms
                ),
            );
        }
        if ![1, 3, 5].contains(&self.cluster.voters) {
            return invalid(
                "cluster.voters",
                format!("{} is not 1, 3 or 5", self.cluster.voters),
            );
        }
        if !(200..=60_000).contains(&self.cluster.election_ms) {
            return invalid(
                "cluster.election_ms",
                "must be between 200 and 60000".into(),
            );
        }
        if self.orchestrator.max_attempts == 0 {
            return invalid("orchestrator.max_attempts", "must be at least 1".into());
        }
        if !self.join.url.is_empty() && !is_http_url(&self.join.url) {
            return invalid(
                "join.url",
                format!("`{}` is not an http:// URL", self.join.url),
            );
        }
        for (key, url) in [
            ("github.api", &self.github.api),
            ("github.web", &self.github.web),
            ("spacedock.url", &self.spacedock.url),
        ] {
            if !is_http_url(url) {
                return invalid(key, format!("`{url}` is not an http(s) URL"));
            }
        }
        for (pair, urls) in rewrite_pairs(&self.netkan.rewrite) {
            if urls.is_none() {
                return invalid(
                    "netkan.rewrite",
                    format!("`{pair}` is not a `https://public=http://reachable` pair"),
                );
            }
        }
        if let Err(why) = crate::jobs::inflate::check_batch(self.netkan.inflate_batch as usize) {
            return invalid("netkan.inflate_batch", why);
        }
        if self.netkan.game_id.trim().is_empty() {
            return invalid("netkan.game_id", "must not be empty".into());
        }
        for (key, repo) in [
            ("netkan.meta_github", &self.netkan.meta_github),
            ("netkan.repo_github", &self.netkan.repo_github),
        ] {
            let parts: Vec<&str> = repo.split('/').collect();
            let ok = repo.is_empty()
                || (parts.len() == 2
                    && parts.iter().all(|p| {
                        !p.is_empty()
                            && p.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    }));
            if !ok {
                return invalid(key, format!("`{repo}` is not `owner/name`"));
            }
        }
        let archive = &self.netkan.archive_url;
        if !archive.is_empty() && !is_http_url(archive) {
            return invalid(
                "netkan.archive_url",
                format!("`{archive}` is not an http(s) URL"),
            );
        }
        for (key, url) in [
            ("netkan.repo_url", &self.netkan.repo_url),
            ("netkan.meta_url", &self.netkan.meta_url),
        ] {
            if url.starts_with('-') {
                return invalid(key, format!("`{url}` is not a git URL"));
            }
        }
        Ok(())
    }

    /// The AMQP distribution port of the supervised broker.
    pub fn dist_port(&self) -> u16 {
        if self.broker.dist_port != 0 {
            self.broker.dist_port
        } else {
            self.broker.amqp_port.wrapping_add(20000)
        }
    }
}

/// The config sections an environment variable may address.
const SECTIONS: [&str; 11] = [
    "cluster",
    "node",
    "api",
    "broker",
    "worker",
    "orchestrator",
    "join",
    "github",
    "spacedock",
    "netkan",
    "discovery",
];

/// Variables of the CLI that look like settings but are not (where the CLI finds the API).
const CLI_VARS: [&str; 1] = ["KRAKEN_API_URL"];

/// Folds `KRAKEN_<SECTION>_<KEY>=value` into the TOML table. Variables of other prefixes
/// (say `KRAKEN_JOB_SPEC`, used inside job containers) are not settings and are skipped.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let known = toml::Value::try_from(Config::default()).ok();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("KRAKEN_") else {
            continue;
        };
        if CLI_VARS.contains(&var.as_str()) {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = SECTIONS.iter().find_map(|s| {
            rest.strip_prefix(s)
                .and_then(|k| k.strip_prefix('_'))
                .map(|k| (*s, k.to_owned()))
        }) else {
            continue;
        };
        let default = known
            .as_ref()
            .and_then(|k| k.get(section))
            .and_then(|s| s.get(&key));
        let Some(default) = default else {
            return Err(ConfigError::UnknownEnv {
                var,
                section: section.into(),
                key,
            });
        };
        let parsed = parse_like(default, &value).ok_or_else(|| ConfigError::Invalid {
            key: format!("{section}.{key}"),
            message: format!("`{value}` (from {var}) is not a {}", default.type_str()),
        })?;
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = entry {
            t.insert(key, parsed);
        }
    }
    Ok(())
}

/// A node label (`worker.labels`, or one a deployment asks for): 1 to 64 letters, digits,
/// `.`, `_`, `-`, `=`, `:`.
pub fn check_label(label: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&label.len())
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-=:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{label}` is not a label (1 to 64 letters, digits, '.', '_', '-', '=', ':')"
        ))
    }
}

/// Parses an environment string as the same TOML type as the default value.
fn parse_like(default: &toml::Value, value: &str) -> Option<toml::Value> {
    Some(match default {
        toml::Value::String(_) => toml::Value::String(value.to_owned()),
        toml::Value::Integer(_) => toml::Value::Integer(value.trim().parse().ok()?),
        toml::Value::Float(_) => toml::Value::Float(value.trim().parse().ok()?),
        toml::Value::Boolean(_) => toml::Value::Boolean(value.trim().parse().ok()?),
        // a list of strings, comma-separated
        toml::Value::Array(_) => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| toml::Value::String(v.to_owned()))
                .collect(),
        ),
        _ => return None,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kraken".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kraken.toml");
        std::fs::write(&path, toml_text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(Some(&path), env, &Overrides::default())
    }

    #[test]
    fn file_then_env_then_flags() {
        let c = load("[api]\nport = 9000\n", &[("KRAKEN_WORKER_SLOTS", "7")]).unwrap();
        assert_eq!(c.api.port, 9000);
        assert_eq!(c.worker.slots, 7);
        let c = load(
            "[api]\nport = 9000\n",
            &[
                ("KRAKEN_API_PORT", "9100"),
                ("KRAKEN_JOB_SPEC", "{}"),
                ("KRAKEN_API_URL", "http://10.0.0.2:8080"),
            ],
        )
        .unwrap();
        assert_eq!(c.api.port, 9100);
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let err = load("[worker]\nslotz = 3\n", &[]).unwrap_err().to_string();
        assert!(err.contains("slotz"), "{err}");
    }

    #[test]
    fn bad_env_value_is_named() {
        let err = load("", &[("KRAKEN_API_PORT", "eighty")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.port") && err.contains("eighty"), "{err}");
        let err = load("", &[("KRAKEN_API_PROT", "80")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("KRAKEN_API_PROT"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let err = load("[worker]\njob_memory_mb = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("worker.job_memory_mb"), "{err}");
        let err = load("[join]\nurl = \"x:8080\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("join.url"), "{err}");
    }

    #[test]
    fn labels_come_from_toml_or_a_comma_separated_variable() {
        let c = load("[worker]\nlabels = [\"ssd\"]\n", &[]).unwrap();
        assert_eq!(c.worker.labels, ["ssd"]);
        let c = load("", &[("KRAKEN_WORKER_LABELS", "ssd, kitchen,")]).unwrap();
        assert_eq!(c.worker.labels, ["ssd", "kitchen"]);
        let err = load("", &[("KRAKEN_WORKER_LABELS", "ok,not ok")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("worker.labels") && err.contains("`not ok`"),
            "{err}"
        );
    }
}
