//! A cluster member's life once it knows its cluster: its Raft node, the worker, following
//! the orchestrator wherever it is, and running the orchestrator (broker, scheduler, API)
//! while this node leads.
//!
//! Leading is Raft's word, kept only while a majority of voters answers ([`Cluster::leading`]).
//! On taking the lead the node rebuilds its working store from the replicated one, records
//! every write for replication, starts RabbitMQ and the orchestrator, and advertises itself
//! with its term; on losing it (a newer leader, or no quorum) it stops all of that, so two
//! orchestrators never run for long. Every member, leading or not, follows the orchestrator:
//! the Raft leader when this node votes, else the orchestrator of its cluster with the
//! highest term in view over mDNS; a candidate must pass the join handshake (it proves it
//! knows the cluster token) before the worker's AMQP session moves there.

use crate::agent::AgentError;
use crate::api::{self, ApiState, Live, LiveSlot};
use crate::broker::server::{BrokerUser, RabbitServer, ServerSpec};
use crate::client::{Client, ClientError};
use crate::cluster::network::Resolve;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::discovery::{Discovery, Role};
use crate::identity::{self, DataDir};
use crate::orchestrator::{ClusterSecrets, JoinRequest, JoinResponse, Orchestrator};
use crate::runtime::Runtime;
use crate::store::{NodeRecord, Store};
use crate::worker::{Worker, WorkerSettings};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the cluster's identity and secrets live in the replicated store (any voter may
/// lead next).
const SECRETS_KEY: &str = "cluster-secrets";

/// What a member starts from.
pub struct MemberSpec {
    pub cluster_id: String,
    pub join_token: String,
    /// This node founds the cluster (or founded it): it holds the operator token, and its
    /// Raft starts with itself as the only voter.
    pub founder: Option<ClusterSecrets>,
    /// A new cluster: its enrollment window opens when it first leads.
    pub newborn: bool,
    /// The orchestrator's API as last known (from joining).
    pub orchestrator_url: Option<String>,
    /// The broker URL the join handshake gave, if it just happened.
    pub amqp_url: Option<String>,
    /// A new cluster's founder cancels this to give its cluster up for another one formed
    /// at the same moment (see [`Member::yield_to_a_twin`]).
    pub abandon: Option<CancellationToken>,
}

/// Everything the member's tasks share.
struct Member {
    config: Config,
    dir: DataDir,
    node_id: String,
    store: Store,
    cluster: Arc<Cluster>,
    discovery: Option<Arc<Discovery>>,
    spec: MemberSpec,
    live: LiveSlot,
    /// The AMQP URL the worker uses.
    access: watch::Sender<Option<String>>,
    /// This node's RabbitMQ while it runs (leading, or a voter on standby).
    broker: tokio::sync::Mutex<Option<RunningBroker>>,
    /// The agent's shutdown, and its tasks: a broker outlives an orchestrator's stack.
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A supervised RabbitMQ of this node.
struct RunningBroker {
    server: Arc<RabbitServer>,
    ready: watch::Receiver<bool>,
    /// Stops it.
    stop: CancellationToken,
}

/// Runs a member until `shutdown` (its tasks are spawned on `tasks`).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: &Config,
    dir: &DataDir,
    node_id: &str,
    store: Store,
    runtime: Arc<Runtime>,
    discovery: Option<Arc<Discovery>>,
    spec: MemberSpec,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), AgentError> {
    let resolve = resolver(discovery.clone(), store.clone());
    // Raft outlives the orchestrator: a leader that stops commits its last writes first.
    let raft_stop = CancellationToken::new();
    let cluster = Cluster::start(
        &config.cluster,
        store.clone(),
        node_id,
        &spec.join_token,
        resolve,
        raft_stop.clone(),
        tasks,
    )
    .await?;
    // cancels Raft when dropped: on an early return here, else once the leader's part ends
    let raft_guard = raft_stop.drop_guard();
    if spec.founder.is_some() {
        cluster.found().await?;
    }
    if let Some(d) = &discovery {
        d.update(|a| {
            a.role = Role::Worker;
            a.cluster = spec.cluster_id.clone();
        });
    }
    let live: LiveSlot = Default::default();
    let state = ApiState {
        live: live.clone(),
        cluster: Some(cluster.clone()),
        public_reads: config.api.public_reads,
        discovery: discovery.clone(),
    };
    spawn_api(config, state, shutdown, tasks);

    let (access, access_rx) = watch::channel(spec.amqp_url.clone());
    let member = Arc::new(Member {
        config: config.clone(),
        dir: dir.clone(),
        node_id: node_id.to_owned(),
        store,
        cluster,
        discovery,
        spec,
        live,
        access,
        broker: Default::default(),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
    });
    let worker = Worker::new(worker_settings(config, node_id), runtime);
    worker.start(access_rx, shutdown.child_token(), tasks);
    if let Some(d) = member.discovery.clone() {
        let mut served = worker.served();
        let token = shutdown.child_token();
        tasks.spawn(async move {
            loop {
                let names = served
                    .borrow_and_update()
                    .values()
                    .cloned()
                    .collect::<std::collections::BTreeMap<String, u16>>();
                d.publish_apps(&names);
                tokio::select! {
                    _ = token.cancelled() => return,
                    r = served.changed() => if r.is_err() { return },
                }
            }
        });
    }
    let m = member.clone();
    let token = shutdown.child_token();
    tasks.spawn(async move {
        m.lead_when_elected(token).await;
        drop(raft_guard);
    });
    let m = member.clone();
    let token = shutdown.child_token();
    tasks.spawn(async move { m.follow_orchestrator(token).await });
    if let (Some(abandon), true) = (member.spec.abandon.clone(), member.discovery.is_some()) {
        let m = member.clone();
        let token = shutdown.child_token();
        tasks.spawn(async move { m.yield_to_a_twin(abandon, token).await });
    }
    if config.broker.standby && config.broker.url.is_empty() {
        let m = member.clone();
        let token = shutdown.child_token();
        tasks.spawn(async move { m.keep_standby(token).await });
    }
    Ok(())
}

/// Finds a node's API: where discovery sees it now, else its replicated record.
fn resolver(discovery: Option<Arc<Discovery>>, store: Store) -> Resolve {
    Arc::new(move |node: &str| {
        if let Some(url) = discovery
            .as_ref()
            .and_then(|d| d.device(node))
            .and_then(|d| d.api_url())
        {
            return Some(url);
        }
        let record = store.replica_node(node).ok().flatten()?;
        (!record.address.is_empty())
            .then(|| format!("http://{}:{}", record.address, record.api_port))
    })
}

impl Member {
    /// Runs the orchestrator while this node leads.
    async fn lead_when_elected(self: Arc<Self>, shutdown: CancellationToken) {
        let mut leading = self.cluster.leading();
        let mut first = true;
        loop {
            let term = *leading.borrow_and_update();
            if let Some(term) = term {
                let stack = shutdown.child_token();
                let tasks = TaskTracker::new();
                match self.take_over(term, first, &stack, &tasks).await {
                    Ok(()) => {
                        first = false;
                        // until the lead is lost (or the agent stops)
                        loop {
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                r = leading.changed() => {
                                    if r.is_err() || *leading.borrow() != Some(term) {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, term, "cannot take over as orchestrator; stepping back");
                    }
                }
                self.step_down(&stack, &tasks).await;
                if shutdown.is_cancelled() {
                    return;
                }
                if self.cluster.leading().borrow().is_some() {
                    // still leading after a failed take-over: try again shortly
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = leading.changed() => if r.is_err() { return },
            }
        }
    }

    /// Becomes the orchestrator for `term`.
    async fn take_over(
        self: &Arc<Self>,
        term: u64,
        first: bool,
        stack: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<(), AgentError> {
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), self.cluster.caught_up())
            .await
            .map_err(|_| AgentError::TakeOver("the log did not catch up within 10 s".into()))??;
        let store = &self.store;
        if store.replica_is_empty() {
            // a new cluster (or a data dir from before replication): its records seed it
            store.start_recording(self.cluster.replicator());
            store.record_working()?;
        } else {
            store.adopt_replica()?;
            store.start_recording(self.cluster.replicator());
        }
        let secrets = self.secrets()?;
        let now = crate::now_ms();
        let previous = store.node(&self.node_id)?;
        store.put_node(&NodeRecord {
            id: self.node_id.clone(),
            name: self.config.node.name.clone(),
            address: crate::discovery::own_address(&self.config.api.advertise),
            api_port: self.config.api.port,
            version: crate::VERSION.to_owned(),
            joined_at: previous.as_ref().map_or(now, |p| p.joined_at),
            last_seen: now,
            slots: self.config.worker.slots,
            // a node that rejoins stays drained until an operator says otherwise
            drained: previous.as_ref().is_some_and(|p| p.drained),
            stats: previous.and_then(|p| p.stats),
        })?;
        store.flush().await?;
        tracing::info!(term, cluster = %secrets.cluster_id, "orchestrating (join token: `kraken token`)");

        let nodes = store.nodes()?.into_iter().map(|n| n.id);
        let users = BrokerUser::for_cluster(&secrets.join_token, nodes);
        let (rabbit, ready) = self.broker(&secrets.cluster_id, users.clone()).await?;
        if let Some(r) = &rabbit {
            // a standby broker may lack the newest nodes' users
            let r = r.clone();
            tasks.spawn(async move {
                if let Err(error) = r.set_users(users).await {
                    tracing::warn!(%error, "cannot update the broker's users");
                }
            });
        }
        let orch = Orchestrator::new(
            self.config.clone(),
            store.clone(),
            secrets.clone(),
            self.node_id.clone(),
            rabbit,
        )?;
        orch.clone().run(ready, stack.clone(), tasks).await;
        if first && self.spec.newborn && self.config.orchestrator.enrollment_secs > 0 {
            orch.open_enrollment(self.config.orchestrator.enrollment_secs)
                .await?;
            tracing::info!(
                secs = self.config.orchestrator.enrollment_secs,
                "new cluster: devices that find it over mDNS are admitted by themselves for now"
            );
        }
        let me = self.clone();
        let o = orch.clone();
        let token = stack.clone();
        tasks.spawn(async move { me.keep_replicating(o, token).await });
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Some(Live {
            schema: api::graphql::schema(
                orch.clone(),
                self.discovery.clone(),
                Some(self.cluster.clone()),
            ),
            orch: orch.clone(),
            operator_token: secrets.operator_token.clone(),
        });
        if let Some(d) = &self.discovery {
            d.update(|a| {
                a.role = Role::Orchestrator;
                a.term = term;
            });
        }
        self.access.send_replace(Some(orch.amqp_url(&self.node_id)));
        tracing::info!(
            term,
            ms = started.elapsed().as_millis() as u64,
            "took over as orchestrator"
        );
        Ok(())
    }

    /// Stops orchestrating: the API, the scheduler and the broker go; writes stay local.
    async fn step_down(&self, stack: &CancellationToken, tasks: &TaskTracker) {
        let was = self
            .live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        if let Some(d) = &self.discovery {
            d.update(|a| a.role = Role::Worker);
        }
        stack.cancel();
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(30), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("the orchestrator's tasks did not stop within 30 s");
        }
        // Writes nobody flushed yet (log lines, heartbeats of the last half second) are
        // committed while this node may still lead: a clean stop loses none of them. A
        // leader that lost its majority cannot commit; it gives up after a moment.
        if was && self.store.has_pending() {
            match tokio::time::timeout(Duration::from_secs(3), self.store.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot commit the last records"),
                Err(_) => tracing::warn!("the last records were not committed within 3 s"),
            }
        }
        self.store.stop_recording();
        let standby =
            self.config.broker.standby && self.cluster.view().voters.contains(&self.node_id);
        if !standby {
            self.stop_broker().await;
        }
        if was {
            self.access.send_replace(None);
            tracing::info!("stopped orchestrating");
        }
    }

    /// The cluster's secrets: a founder's own files, else the replicated copy (which the
    /// founder wrote). A new orchestrator also writes them to its data dir, for `kraken token`.
    fn secrets(&self) -> Result<ClusterSecrets, AgentError> {
        if let Some(s) = &self.spec.founder {
            self.store.put_setting(SECRETS_KEY, s)?;
            return Ok(s.clone());
        }
        let kept: ClusterSecrets = self.store.setting(SECRETS_KEY)?.ok_or_else(|| {
            AgentError::TakeOver("the replicated store holds no cluster secrets".into())
        })?;
        identity::write_secret(&self.dir.join_token_file(), &kept.join_token)?;
        identity::write_secret(&self.dir.operator_token_file(), &kept.operator_token)?;
        Ok(kept)
    }

    /// This node's broker for the cluster `cluster_id`, started with `users` if it is not
    /// running (`None`: the external `broker.url`).
    async fn broker(
        &self,
        cluster_id: &str,
        users: Vec<BrokerUser>,
    ) -> Result<(Option<Arc<RabbitServer>>, watch::Receiver<bool>), AgentError> {
        let config = &self.config;
        if !config.broker.url.is_empty() {
            tracing::info!("using the external broker from broker.url");
            return Ok((None, watch::channel(true).1));
        }
        let mut slot = self.broker.lock().await;
        if let Some(b) = &*slot {
            return Ok((Some(b.server.clone()), b.ready.clone()));
        }
        let spec = ServerSpec {
            node_name: format!("kraken-{}@localhost", config.broker.amqp_port),
            amqp_port: config.broker.amqp_port,
            dist_port: config.dist_port(),
            dir: self.dir.broker_dir(),
            vhost: format!("kraken-{cluster_id}"),
            server_bin: config.broker.server_bin.clone(),
            ctl_bin: config.broker.ctl_bin.clone(),
        };
        let server = Arc::new(RabbitServer::new(spec, users)?);
        let (ready_tx, ready) = watch::channel(false);
        let stop = self.shutdown.child_token();
        let (s, token) = (server.clone(), stop.clone());
        self.tasks
            .spawn(async move { s.supervise(token, ready_tx).await });
        *slot = Some(RunningBroker {
            server: server.clone(),
            ready: ready.clone(),
            stop,
        });
        Ok((Some(server), ready))
    }

    /// Stops this node's broker, if it runs.
    async fn stop_broker(&self) {
        if let Some(b) = self.broker.lock().await.take() {
            b.stop.cancel();
        }
    }

    /// While this node votes but does not lead, keeps its broker running with the cluster's
    /// users, so that a take-over finds it up; stops it when the node stops voting.
    async fn keep_standby(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.cluster.leading().borrow().is_some() {
                continue;
            }
            let votes = self.cluster.view().voters.contains(&self.node_id);
            if !votes {
                if self.broker.lock().await.is_some() {
                    tracing::info!("no longer a voter: stopping the standby broker");
                    self.stop_broker().await;
                }
                continue;
            }
            let Ok(Some(secrets)) = self.store.replica_setting::<ClusterSecrets>(SECRETS_KEY)
            else {
                continue;
            };
            let Ok(nodes) = self.store.replica_node_ids() else {
                continue;
            };
            let users = BrokerUser::for_cluster(&secrets.join_token, nodes);
            let was_running = self.broker.lock().await.is_some();
            match self.broker(&secrets.cluster_id, users.clone()).await {
                Ok((Some(server), _)) => {
                    if !was_running {
                        tracing::info!("a voter: keeping a standby broker ready for a take-over");
                    }
                    // new nodes get their users before this node may need them
                    let token = shutdown.clone();
                    tokio::select! {
                        _ = token.cancelled() => return,
                        r = server.set_users(users) => if let Err(error) = r {
                            tracing::warn!(%error, "cannot update the standby broker's users");
                        }
                    }
                }
                Ok((None, _)) => {}
                Err(error) => tracing::warn!(%error, "cannot start the standby broker"),
            }
        }
    }

    /// While leading: commits writes nobody flushed (heartbeats, log lines) twice a second,
    /// and tends the voters every two seconds.
    async fn keep_replicating(&self, orch: Arc<Orchestrator>, stack: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = stack.cancelled() => return,
                _ = tick.tick() => {}
            }
            n += 1;
            if self.store.has_pending() {
                if let Err(error) = self.store.flush().await {
                    tracing::warn!(%error, "cannot commit the cluster's latest records");
                }
            }
            if n % 4 == 0 {
                let candidates = match orch.live_nodes() {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(%error, "cannot list live nodes");
                        continue;
                    }
                };
                let silent = |node: &str| orch.silent_for(node);
                if let Err(error) = self.cluster.tend_voters(silent, &candidates).await {
                    tracing::warn!(%error, "cannot change the voters");
                }
            }
        }
    }

    /// Agents booted together may found two clusters when one does not see the other in
    /// time. While this new cluster holds nothing but its founder (no other node, no job),
    /// the founder gives it up for a twin: another cluster's orchestrator in view that
    /// answers as its leader and has more devices, or as many and a lower node id. Only one
    /// of two twins yields, and a cluster with members never does.
    async fn yield_to_a_twin(&self, abandon: CancellationToken, shutdown: CancellationToken) {
        let Some(d) = &self.discovery else { return };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.cluster.leading().borrow().is_none() {
                continue;
            }
            let alone = self.store.nodes().is_ok_and(|n| n.len() <= 1)
                && self.store.jobs().next().is_none();
            if !alone {
                return;
            }
            let devices = d.devices();
            let size = |cluster: &str| {
                devices
                    .iter()
                    .filter(|x| x.advert.cluster == cluster)
                    .count()
            };
            for twin in d.orchestrators(None) {
                let cluster = &twin.advert.cluster;
                if cluster.is_empty() || *cluster == self.spec.cluster_id {
                    continue;
                }
                let theirs = size(cluster);
                if theirs <= 1 && twin.advert.node.as_str() >= self.node_id.as_str() {
                    continue;
                }
                let Some(url) = twin.api_url() else { continue };
                // a forged advert does not make a founder give its cluster up
                let leads = Client::with_timeout(&url, None, Duration::from_secs(2))
                    .get("/api/v1/leader")
                    .await
                    .is_ok_and(|v| v["leading"] == true && v["node"] == twin.advert.node.as_str());
                if !leads {
                    continue;
                }
                tracing::warn!(
                    twin = %cluster,
                    orchestrator = %twin.advert.node,
                    devices = theirs,
                    "another cluster was founded at the same moment; this new cluster holds nothing yet, so it is given up and this device joins the other"
                );
                abandon.cancel();
                return;
            }
        }
    }

    /// Keeps the worker's broker URL pointing at the orchestrator.
    async fn follow_orchestrator(self: Arc<Self>, shutdown: CancellationToken) {
        let mut following: Option<String> = self.spec.orchestrator_url.clone();
        // candidates that failed the handshake, not asked again until the given time: an
        // impostor for a long while, one that is down or busy electing only briefly
        let mut refused: HashMap<String, Instant> = HashMap::new();
        let mut told: Option<String> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.cluster.leading().borrow().is_some() {
                following = None;
                continue;
            }
            refused.retain(|_, until| Instant::now() < *until);
            let candidates = self.orchestrator_candidates();
            let Some(best) = candidates.iter().find(|c| !refused.contains_key(*c)) else {
                continue;
            };
            if following.as_deref() == Some(best.as_str()) && self.access.borrow().is_some() {
                continue;
            }
            match self.handshake(best).await {
                Ok(url) => {
                    if told.as_deref() != Some(best.as_str()) {
                        tracing::info!(orchestrator = %best, "following the orchestrator");
                        told = Some(best.clone());
                    }
                    following = Some(best.clone());
                    self.access.send_if_modified(|old| {
                        let changed = old.as_deref() != Some(url.as_str());
                        *old = Some(url);
                        changed
                    });
                }
                Err(error) => {
                    let distrusted = matches!(
                        &error,
                        ClientError::Impostor(_)
                            | ClientError::Refused {
                                status: 401 | 403,
                                ..
                            }
                    );
                    let pause = if distrusted { 30_000 } else { 1_000 };
                    refused.insert(best.clone(), Instant::now() + Duration::from_millis(pause));
                    if distrusted {
                        tracing::warn!(%error, candidate = %best, "not following it");
                    } else {
                        // down, or still taking over: asked again in a second
                        tracing::debug!(%error, candidate = %best, "not following it yet");
                    }
                }
            }
        }
    }

    /// Where the orchestrator may be, best first: Raft's leader (when this node votes or
    /// hears from it), then the orchestrators of this cluster in view by term, then the URL
    /// this node joined at.
    fn orchestrator_candidates(&self) -> Vec<String> {
        let mut out = Vec::new();
        let view = self.cluster.view();
        if let Some(leader) = view.leader.filter(|l| *l != self.node_id) {
            out.extend(self.cluster.api_url_of(&leader));
        }
        if let Some(d) = &self.discovery {
            out.extend(
                d.orchestrators(Some(&self.spec.cluster_id))
                    .into_iter()
                    .filter(|o| o.advert.node != self.node_id)
                    .filter_map(|o| o.api_url()),
            );
        }
        out.extend(self.spec.orchestrator_url.clone());
        let mut seen = std::collections::HashSet::new();
        out.retain(|u| seen.insert(u.clone()));
        out
    }

    /// The join handshake with the orchestrator at `url` (it must prove it knows the
    /// cluster token); the AMQP URL of its broker.
    async fn handshake(&self, url: &str) -> Result<String, ClientError> {
        // a candidate may be a powered-off host that answers nothing: do not wait long
        let resp = Client::with_timeout(url, None, Duration::from_secs(5))
            .join(
                &self.spec.join_token,
                join_request(&self.config, &self.node_id),
            )
            .await?;
        if !self.spec.cluster_id.is_empty() && resp.cluster_id != self.spec.cluster_id {
            return Err(ClientError::Impostor(format!(
                "{url} leads cluster {}, not this node's cluster {}",
                resp.cluster_id, self.spec.cluster_id
            )));
        }
        Ok(amqp_url(
            &self.config,
            url,
            &self.node_id,
            &self.spec.join_token,
            &resp,
        ))
    }
}

/// What this node says about itself when it joins.
pub fn join_request(config: &Config, node_id: &str) -> JoinRequest {
    JoinRequest {
        node_id: node_id.to_owned(),
        name: config.node.name.clone(),
        version: crate::VERSION.to_owned(),
        api_port: config.api.port,
        slots: config.worker.slots,
        server_nonce: String::new(),
        client_nonce: String::new(),
        proof: String::new(),
    }
}

/// The AMQP URL of the broker of the orchestrator at `api_url`.
pub fn amqp_url(
    config: &Config,
    api_url: &str,
    node_id: &str,
    token: &str,
    joined: &JoinResponse,
) -> String {
    match joined.amqp_port {
        Some(port) => {
            let host = reqwest::Url::parse(api_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| "127.0.0.1".into());
            let password = identity::broker_password(token, node_id);
            format!("amqp://{node_id}:{password}@{host}:{port}/{}", joined.vhost)
        }
        None => config.broker.url.clone(),
    }
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
