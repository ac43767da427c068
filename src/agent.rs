//! The agent's startup story: load identity, decide the role, start the store, the broker,
//! the orchestrator, the API and the worker, each a task under one cancellation token, and
//! wait for them at shutdown.
//!
//! The role, in order: `--join URL` (or `join.url`) makes a worker of that orchestrator; an
//! earlier membership rejoins its cluster (at the address discovery finds it now, else the
//! one it had); a data dir holding a cluster's secrets orchestrates it again; otherwise the
//! agent looks over mDNS for a cluster to enroll in ([`form`]), and founds one when there is
//! none and no lower-numbered newcomer in view. Every agent with free slots is also a
//! worker.

use crate::client::Client;
use crate::config::Config;
use crate::discovery::{Advert, Discovery, Role};
use crate::enrollment::EnrollRequest;
use crate::identity::{self, DataDir};
use crate::member::{self, MemberSpec};
use crate::orchestrator::ClusterSecrets;
use crate::runtime::Runtime;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error(transparent)]
    Orchestrator(#[from] crate::orchestrator::OrchestratorError),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    #[error("cannot join {url}: {message}")]
    Join { url: String, message: String },
    #[error(transparent)]
    Discovery(#[from] crate::discovery::DiscoveryError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot take over as orchestrator: {0}")]
    TakeOver(String),
}

/// Where a worker found its orchestrator; kept so a restart rejoins without flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Membership {
    url: String,
    token: String,
    /// The cluster it belongs to (pinned at its first admission).
    #[serde(default)]
    cluster: String,
}

/// What an agent becomes.
enum Decision {
    Orchestrate,
    Join(Membership),
    /// Shut down before deciding.
    Stopped,
}

/// Runs an agent until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    let dir = DataDir(config.node.data_dir.clone());
    std::fs::create_dir_all(&dir.0).map_err(|source| AgentError::DataDir {
        path: dir.0.clone(),
        source,
    })?;
    let node_id = dir.node_id()?;
    tracing::info!(node = %node_id, name = %config.node.name, version = crate::VERSION, data_dir = %dir.0.display(), "starting kraken agent");
    let tasks = TaskTracker::new();
    let runtime = Arc::new(Runtime::new(
        &config.worker.docker_host,
        &node_id,
        &config.worker.base_image,
    ));
    let discovery = if config.discovery.enabled {
        let me = Advert {
            node: node_id.clone(),
            cluster: String::new(),
            role: Role::Candidate,
            term: 0,
            api_port: config.api.port,
            version: crate::VERSION.to_owned(),
        };
        Some(Discovery::start(
            &config.discovery,
            me,
            shutdown.child_token(),
            &tasks,
        )?)
    } else {
        None
    };
    let result = loop {
        // one life in one cluster; a lone founder that yields to a cluster formed at the
        // same moment starts another
        let life = shutdown.child_token();
        let life_tasks = TaskTracker::new();
        let abandon = CancellationToken::new();
        let result = match decide(&config, &dir, &node_id, discovery.as_deref(), &life).await {
            Ok(Decision::Orchestrate) => {
                let ctx = Life {
                    shutdown: &life,
                    tasks: &life_tasks,
                    abandon: abandon.clone(),
                };
                found(
                    &config,
                    &dir,
                    &node_id,
                    runtime.clone(),
                    discovery.clone(),
                    ctx,
                )
                .await
            }
            Ok(Decision::Join(m)) => {
                join(
                    &config,
                    &dir,
                    &node_id,
                    m,
                    runtime.clone(),
                    discovery.clone(),
                    &life,
                    &life_tasks,
                )
                .await
            }
            Ok(Decision::Stopped) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(error) = &result {
            tracing::error!(%error, "agent failed");
            shutdown.cancel();
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = abandon.cancelled() => {}
        }
        life.cancel();
        life_tasks.close();
        if tokio::time::timeout(Duration::from_secs(30), life_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 30 s");
        }
        if shutdown.is_cancelled() {
            break result;
        }
        // yielded: this node's own cluster (it alone, with nothing in it) is dropped
        for file in [
            dir.cluster_id_file(),
            dir.join_token_file(),
            dir.operator_token_file(),
        ] {
            let _ = std::fs::remove_file(file);
        }
        for d in [dir.store_dir(), dir.broker_dir()] {
            let _ = std::fs::remove_dir_all(d);
        }
        if let Some(d) = &discovery {
            d.update(|a| {
                a.role = Role::Candidate;
                a.cluster = String::new();
                a.term = 0;
            });
        }
    };
    tracing::info!("shutting down");
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(30), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 30 s");
    }
    tracing::info!("stopped");
    result
}

/// Decides the role (see the module's doc).
async fn decide(
    config: &Config,
    dir: &DataDir,
    node_id: &str,
    discovery: Option<&Discovery>,
    shutdown: &CancellationToken,
) -> Result<Decision, AgentError> {
    let saved = std::fs::read_to_string(dir.membership_file())
        .ok()
        .and_then(|text| serde_json::from_str::<Membership>(&text).ok());
    if !config.join.url.is_empty() && (!config.join.token.is_empty() || saved.is_none()) {
        if config.join.token.is_empty() {
            // no token: this orchestrator is asked to admit the device
            return enroll_at(config, node_id, &config.join.url, shutdown).await;
        }
        return Ok(Decision::Join(Membership {
            url: config.join.url.clone(),
            token: config.join.token.clone(),
            cluster: String::new(),
        }));
    }
    if let Some(mut m) = saved {
        // the orchestrator may have a new address since: look for it by its cluster
        if let (Some(d), false) = (discovery, m.cluster.is_empty()) {
            let wait = Duration::from_millis(config.discovery.browse_ms);
            if let Some(url) = find_orchestrator_of(d, &m.cluster, wait, shutdown).await {
                m.url = url;
            }
        }
        return Ok(Decision::Join(m));
    }
    match discovery {
        Some(d) if !dir.join_token_file().exists() => form(config, node_id, d, shutdown).await,
        _ => Ok(Decision::Orchestrate),
    }
}

/// The API of an orchestrator of `cluster` in view within `wait`.
async fn find_orchestrator_of(
    d: &Discovery,
    cluster: &str,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = d.watch();
    loop {
        if let Some(url) = d
            .orchestrators(Some(cluster))
            .first()
            .and_then(|o| o.api_url())
        {
            return Some(url);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = changes.changed() => {}
        }
    }
}

/// A new device finds its cluster: it enrolls with an orchestrator in view, or, when there
/// is none after the browse window, the newcomer with the lowest node id founds one and
/// the others enroll with it.
async fn form(
    config: &Config,
    node_id: &str,
    d: &Discovery,
    shutdown: &CancellationToken,
) -> Result<Decision, AgentError> {
    let window = Duration::from_millis(config.discovery.browse_ms);
    let started = tokio::time::Instant::now();
    // how long orchestrators that never answer are tried before they count as none
    let patience = window * 10;
    let mut changes = d.watch();
    let mut asking = Enrolling::default();
    tracing::info!(
        window_ms = window.as_millis() as u64,
        "looking for a cluster over mDNS"
    );
    loop {
        // every orchestrator in view, the highest term first: one that does not answer (gone,
        // or a forged advert) does not keep this device from the others
        let orchestrators = d.orchestrators(None);
        let mut answered = false;
        for orch in &orchestrators {
            let Some(url) = orch.api_url() else { continue };
            match asking.ask(config, node_id, &url).await {
                Asked::Admitted(m) => return Ok(Decision::Join(m)),
                Asked::Pending => answered = true,
                Asked::Failed => {}
            }
        }
        // orchestrators that never answer (forged adverts, dead hosts) count as none once
        // this device has been patient
        let give_up = !answered && started.elapsed() >= patience;
        if !orchestrators.is_empty() && !give_up {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Decision::Stopped),
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            continue;
        }
        let elapsed = started.elapsed();
        if elapsed >= window {
            let lowest = d
                .devices()
                .into_iter()
                .filter(|x| x.advert.role == Role::Candidate)
                .map(|x| x.advert.node)
                .chain(std::iter::once(node_id.to_owned()))
                .min();
            // a lower newcomer that never founds (gone without a goodbye) is waited for
            // twice as long as unanswering orchestrators, so that when both happen the
            // lowest founds first and the others see it
            if lowest.as_deref() == Some(node_id) || elapsed >= 2 * patience {
                tracing::info!("no cluster in view: founding one");
                return Ok(Decision::Orchestrate);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Decision::Stopped),
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Asks the orchestrator at `url` to admit this device until it does.
async fn enroll_at(
    config: &Config,
    node_id: &str,
    url: &str,
    shutdown: &CancellationToken,
) -> Result<Decision, AgentError> {
    let mut asking = Enrolling::default();
    loop {
        if let Asked::Admitted(m) = asking.ask(config, node_id, url).await {
            return Ok(Decision::Join(m));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Decision::Stopped),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// How one request to be admitted went.
enum Asked {
    Admitted(Membership),
    Pending,
    Failed,
}

/// Asking orchestrators to admit this device, saying once per orchestrator that it waits
/// for approval or cannot be reached.
#[derive(Default)]
struct Enrolling {
    told_pending: std::collections::HashSet<String>,
    failed: std::collections::HashSet<String>,
}

impl Enrolling {
    async fn ask(&mut self, config: &Config, node_id: &str, url: &str) -> Asked {
        match enroll(config, node_id, url).await {
            Ok(Some(m)) => {
                tracing::info!(cluster = %m.cluster, %url, "admitted to the cluster");
                Asked::Admitted(m)
            }
            Ok(None) => {
                if self.told_pending.insert(url.to_owned()) {
                    tracing::info!(%url, node = %node_id, "waiting for approval: run `kraken nodes approve {node_id}` on the orchestrator (or open its enrollment window)");
                }
                Asked::Pending
            }
            Err(error) => {
                if self.failed.insert(url.to_owned()) {
                    tracing::warn!(%error, %url, "cannot enroll there; trying again later");
                }
                Asked::Failed
            }
        }
    }
}

/// Asks the orchestrator at `url` to admit this device: its membership once admitted,
/// `None` while it waits for approval.
async fn enroll(
    config: &Config,
    node_id: &str,
    url: &str,
) -> Result<Option<Membership>, crate::client::ClientError> {
    let req = EnrollRequest {
        node_id: node_id.to_owned(),
        name: config.node.name.clone(),
        version: crate::VERSION.to_owned(),
    };
    let body = serde_json::to_value(&req).unwrap_or_default();
    let resp = Client::new(url, None).post("/api/v1/enroll", &body).await?;
    let token = resp.get("join_token").and_then(|t| t.as_str());
    Ok(token.map(|token| Membership {
        url: url.to_owned(),
        token: token.to_owned(),
        cluster: resp
            .get("cluster_id")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_owned(),
    }))
}

/// One life of the agent in one cluster: what stops it, and where its tasks run.
struct Life<'a> {
    shutdown: &'a CancellationToken,
    tasks: &'a TaskTracker,
    /// Cancelled by a lone founder that yields its new cluster to another.
    abandon: CancellationToken,
}

/// Founds a cluster (or runs the one this data dir founded): this node is its first voter.
async fn found(
    config: &Config,
    dir: &DataDir,
    node_id: &str,
    runtime: Arc<Runtime>,
    discovery: Option<Arc<Discovery>>,
    life: Life<'_>,
) -> Result<(), AgentError> {
    let newborn = !dir.join_token_file().exists();
    let secrets = ClusterSecrets {
        cluster_id: identity::load_or_create(&dir.cluster_id_file(), || identity::random_hex(4))?,
        join_token: identity::load_or_create(&dir.join_token_file(), identity::random_secret)?,
        operator_token: identity::load_or_create(
            &dir.operator_token_file(),
            identity::random_secret,
        )?,
    };
    let store = Store::open(&dir.store_dir())?;
    tracing::info!(path = %dir.store_dir().display(), "store open");
    let spec = MemberSpec {
        cluster_id: secrets.cluster_id.clone(),
        join_token: secrets.join_token.clone(),
        founder: Some(secrets),
        newborn,
        orchestrator_url: None,
        amqp_url: None,
        abandon: newborn.then_some(life.abandon),
    };
    member::run(
        config,
        dir,
        node_id,
        store,
        runtime,
        discovery,
        spec,
        life.shutdown,
        life.tasks,
    )
    .await
}

/// Joins the cluster of `membership` (the first time, the join handshake happens here and
/// the membership is saved; later the member finds the orchestrator wherever it is now).
#[allow(clippy::too_many_arguments)]
async fn join(
    config: &Config,
    dir: &DataDir,
    node_id: &str,
    mut membership: Membership,
    runtime: Arc<Runtime>,
    discovery: Option<Arc<Discovery>>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), AgentError> {
    let mut amqp = None;
    if membership.cluster.is_empty() {
        let client = Client::new(&membership.url, None);
        let request = member::join_request(config, node_id);
        let mut backoff = Duration::from_millis(250);
        let joined = loop {
            match client.join(&membership.token, request.clone()).await {
                Ok(resp) => break resp,
                Err(crate::client::ClientError::Refused {
                    status: 401,
                    message,
                    ..
                }) => {
                    return Err(AgentError::Join {
                        url: membership.url.clone(),
                        message,
                    })
                }
                Err(e @ crate::client::ClientError::Impostor(_)) => {
                    return Err(AgentError::Join {
                        url: membership.url.clone(),
                        message: e.to_string(),
                    })
                }
                Err(error) => {
                    tracing::warn!(%error, url = %membership.url, "join failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        membership.cluster = joined.cluster_id.clone();
        tracing::info!(cluster = %joined.cluster_id, url = %membership.url, "joined the cluster");
        amqp = Some(member::amqp_url(
            config,
            &membership.url,
            node_id,
            &membership.token,
            &joined,
        ));
    }
    identity::write_secret(
        &dir.membership_file(),
        &serde_json::to_string(&membership).unwrap_or_default(),
    )?;
    let store = Store::open(&dir.store_dir())?;
    let spec = MemberSpec {
        cluster_id: membership.cluster.clone(),
        join_token: membership.token.clone(),
        founder: None,
        newborn: false,
        orchestrator_url: Some(membership.url.clone()),
        amqp_url: amqp,
        abandon: None,
    };
    member::run(
        config, dir, node_id, store, runtime, discovery, spec, shutdown, tasks,
    )
    .await
}
