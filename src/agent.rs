//! The agent's startup story: load identity, decide the role, start the store, the broker,
//! the orchestrator, the API and the worker, each a task under one cancellation token, and
//! wait for them at shutdown.
//!
//! An agent with no orchestrator to join (no `--join`, no earlier membership) founds a
//! cluster and orchestrates it; every agent with free slots is also a worker. Discovery
//! (the next step) plugs in at [`find_orchestrator`].

use crate::api::{self, ApiState};
use crate::broker::server::{BrokerUser, RabbitServer, ServerSpec, ADMIN_USER};
use crate::client::Client;
use crate::config::Config;
use crate::identity::{self, DataDir};
use crate::orchestrator::{ClusterSecrets, JoinRequest, Orchestrator};
use crate::runtime::Runtime;
use crate::store::{NodeRecord, Store};
use crate::worker::{BrokerAccess, Worker, WorkerSettings};
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
    Api(#[from] api::ApiError),
    #[error("cannot join {url}: {message}")]
    Join { url: String, message: String },
}

/// Where a worker found its orchestrator; kept so a restart rejoins without flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Membership {
    url: String,
    token: String,
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
    let result = match find_orchestrator(&config, &dir)? {
        None => run_orchestrator(&config, &dir, &node_id, runtime, &shutdown, &tasks).await,
        Some(m) => run_worker(&config, &dir, &node_id, m, runtime, &shutdown, &tasks).await,
    };
    if let Err(error) = &result {
        tracing::error!(%error, "agent failed");
        shutdown.cancel();
    }
    shutdown.cancelled().await;
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

/// The orchestrator to join, if any: from flags or config, else from an earlier membership.
fn find_orchestrator(config: &Config, dir: &DataDir) -> Result<Option<Membership>, AgentError> {
    if !config.join.url.is_empty() {
        return Ok(Some(Membership {
            url: config.join.url.clone(),
            token: config.join.token.clone(),
        }));
    }
    match std::fs::read_to_string(dir.membership_file()) {
        Ok(text) => Ok(serde_json::from_str(&text).ok()),
        Err(_) => Ok(None),
    }
}

async fn run_orchestrator(
    config: &Config,
    dir: &DataDir,
    node_id: &str,
    runtime: Arc<Runtime>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), AgentError> {
    let secrets = ClusterSecrets {
        cluster_id: identity::load_or_create(&dir.0.join("cluster-id"), || {
            identity::random_hex(4)
        })?,
        join_token: identity::load_or_create(&dir.join_token_file(), identity::random_secret)?,
        operator_token: identity::load_or_create(
            &dir.operator_token_file(),
            identity::random_secret,
        )?,
    };
    tracing::info!(cluster = %secrets.cluster_id, "orchestrating (join token: `kraken token`)");
    let store = Store::open(&dir.store_dir())?;
    tracing::info!(path = %dir.store_dir().display(), "store open");
    let now = crate::now_ms();
    let previous = store.node(node_id)?;
    store.put_node(&NodeRecord {
        id: node_id.to_owned(),
        name: config.node.name.clone(),
        address: advertise_address(config),
        api_port: config.api.port,
        version: crate::VERSION.to_owned(),
        joined_at: previous.as_ref().map_or(now, |p| p.joined_at),
        last_seen: now,
        slots: config.worker.slots,
        stats: previous.and_then(|p| p.stats),
    })?;
    store.flush().await?;

    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let rabbit = if config.broker.url.is_empty() {
        let mut users = vec![BrokerUser {
            name: ADMIN_USER.into(),
            password: identity::broker_password(&secrets.join_token, ADMIN_USER),
            admin: true,
        }];
        users.extend(store.nodes()?.into_iter().map(|n| BrokerUser {
            password: identity::broker_password(&secrets.join_token, &n.id),
            name: n.id,
            admin: false,
        }));
        let spec = ServerSpec {
            node_name: format!("kraken-{}@localhost", config.broker.amqp_port),
            amqp_port: config.broker.amqp_port,
            dist_port: config.dist_port(),
            dir: dir.broker_dir(),
            vhost: format!("kraken-{}", secrets.cluster_id),
            server_bin: config.broker.server_bin.clone(),
            ctl_bin: config.broker.ctl_bin.clone(),
        };
        let rabbit = Arc::new(RabbitServer::new(spec, users)?);
        let r = rabbit.clone();
        let token = shutdown.child_token();
        tasks.spawn(async move { r.supervise(token, ready_tx).await });
        Some(rabbit)
    } else {
        tracing::info!("using the external broker from broker.url");
        let _ = ready_tx.send(true);
        None
    };

    let orch = Orchestrator::new(
        config.clone(),
        store,
        secrets.clone(),
        node_id.to_owned(),
        rabbit,
    )?;
    orch.clone()
        .run(ready_rx, shutdown.child_token(), tasks)
        .await;

    let state = ApiState {
        schema: Some(api::graphql::schema(orch.clone())),
        orch: Some(orch.clone()),
        operator_token: Some(secrets.operator_token.clone()),
        public_reads: config.api.public_reads,
    };
    spawn_api(config, state, shutdown, tasks);

    let worker = Worker::new(worker_settings(config, node_id), runtime);
    worker.start(
        BrokerAccess {
            url: orch.amqp_url(node_id),
        },
        shutdown.child_token(),
        tasks,
    );
    Ok(())
}

async fn run_worker(
    config: &Config,
    dir: &DataDir,
    node_id: &str,
    membership: Membership,
    runtime: Arc<Runtime>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), AgentError> {
    let state = ApiState {
        orch: None,
        schema: None,
        operator_token: None,
        public_reads: false,
    };
    spawn_api(config, state, shutdown, tasks);

    let client = Client::new(&membership.url, None);
    let request = JoinRequest {
        node_id: node_id.to_owned(),
        name: config.node.name.clone(),
        version: crate::VERSION.to_owned(),
        api_port: config.api.port,
        slots: config.worker.slots,
        server_nonce: String::new(),
        client_nonce: String::new(),
        proof: String::new(),
    };
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
    tracing::info!(cluster = %joined.cluster_id, url = %membership.url, "joined the cluster");
    identity::write_secret(
        &dir.membership_file(),
        &serde_json::to_string(&membership).unwrap_or_default(),
    )?;
    let url = match joined.amqp_port {
        Some(port) => {
            let host = reqwest::Url::parse(&membership.url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| "127.0.0.1".into());
            let password = identity::broker_password(&membership.token, node_id);
            format!("amqp://{node_id}:{password}@{host}:{port}/{}", joined.vhost)
        }
        None => config.broker.url.clone(),
    };
    let worker = Worker::new(worker_settings(config, node_id), runtime);
    worker.start(BrokerAccess { url }, shutdown.child_token(), tasks);
    Ok(())
}

fn spawn_api(config: &Config, state: ApiState, shutdown: &CancellationToken, tasks: &TaskTracker) {
    let bind = config.api.bind.clone();
    let port = config.api.port;
    let token = shutdown.clone();
    tasks.spawn(async move {
        tracing::info!(%bind, port, "api listening");
        if let Err(error) = api::serve(state, &bind, port, token.clone()).await {
            tracing::error!(%error, "api stopped");
            token.cancel();
        }
    });
}

fn worker_settings(config: &Config, node_id: &str) -> WorkerSettings {
    WorkerSettings {
        node_id: node_id.to_owned(),
        slots: config.worker.slots,
        heartbeat: Duration::from_millis(config.worker.heartbeat_ms),
        prefetch: config.broker.prefetch,
        data_dir: config.node.data_dir.clone(),
        config: Arc::new(config.clone()),
    }
}

fn advertise_address(config: &Config) -> String {
    if !config.api.advertise.is_empty() {
        return config.api.advertise.clone();
    }
    // the address of the interface that routes outwards; no packet is sent
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}
