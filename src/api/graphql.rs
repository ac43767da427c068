//! The GraphQL schema: queries over nodes, jobs and deployments, the `enqueueJob`,
//! `enqueueInflate`, `cancelJob`, `createDeployment`, `redeploy` and `stopDeployment`
//! mutations (operator token), the NetKAN pipeline's `netkanStatus` and `netkanPipeline`, and
//! the `jobEvents`, `deploymentEvents` and `netkanStatusEvents` subscriptions.

use crate::cluster::Cluster;
use crate::discovery::{Discovery, Role};
use crate::orchestrator::{DeploymentRequest, JobNotice, JobRequest, Orchestrator};
use crate::store::{
    Attempt, DeployStatus, DeploymentRecord, Isolation, JobRecord, JobState, LogLine, ModStatus,
    NodeRecord, NodeStats,
};
use async_graphql::{Context, Error, Json, Object, Schema, SimpleObject, Subscription, ID};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use uuid::Uuid;

pub type KrakenSchema = Schema<Query, Mutation, Subscription>;

/// Who is asking, decided from the request's token.
#[derive(Debug, Clone, Copy)]
pub struct Auth {
    pub operator: bool,
}

pub fn schema(
    orch: Arc<Orchestrator>,
    discovery: Option<Arc<Discovery>>,
    cluster: Option<Arc<Cluster>>,
) -> KrakenSchema {
    Schema::build(Query, Mutation, Subscription)
        .data(orch)
        .data(discovery)
        .data(cluster)
        .limit_depth(12)
        .limit_complexity(5000)
        .finish()
}

fn orch<'a>(ctx: &Context<'a>) -> &'a Arc<Orchestrator> {
    // the schema is only ever built with the orchestrator in its data (see `schema`)
    ctx.data_unchecked::<Arc<Orchestrator>>()
}

fn require_read(ctx: &Context<'_>) -> Result<(), Error> {
    let operator = ctx.data_opt::<Auth>().is_some_and(|a| a.operator);
    if operator || orch(ctx).config().api.public_reads {
        Ok(())
    } else {
        Err(Error::new(
            "unauthorized: reads need the operator token (Authorization: Bearer …)",
        ))
    }
}

fn require_operator(ctx: &Context<'_>) -> Result<(), Error> {
    if ctx.data_opt::<Auth>().is_some_and(|a| a.operator) {
        Ok(())
    } else {
        Err(Error::new(
            "unauthorized: mutations need the operator token (Authorization: Bearer …)",
        ))
    }
}

fn parse_id(id: &ID) -> Result<Uuid, Error> {
    Uuid::parse_str(id).map_err(|_| Error::new(format!("`{}` is not an id", id.as_str())))
}

fn non_negative(name: &str, v: Option<i32>) -> Result<Option<u64>, Error> {
    match v {
        Some(n) if n < 0 => Err(Error::new(format!("{name} must not be negative"))),
        Some(n) => Ok(Some(n as u64)),
        None => Ok(None),
    }
}

pub struct Query;

#[Object]
impl Query {
    /// Every node that ever joined, with its health and load.
    async fn nodes(&self, ctx: &Context<'_>) -> Result<Vec<NodeView>, Error> {
        require_read(ctx)?;
        let o = orch(ctx);
        Ok(o.store()
            .nodes()?
            .into_iter()
            .map(|n| NodeView::new(o, n))
            .collect())
    }

    async fn node(&self, ctx: &Context<'_>, id: String) -> Result<Option<NodeView>, Error> {
        require_read(ctx)?;
        let o = orch(ctx);
        Ok(o.store().node(&id)?.map(|n| NodeView::new(o, n)))
    }

    async fn job(&self, ctx: &Context<'_>, id: ID) -> Result<Option<JobView>, Error> {
        require_read(ctx)?;
        Ok(orch(ctx).store().job(parse_id(&id)?)?.map(JobView))
    }

    /// Jobs, newest first, filtered by state and kind.
    async fn jobs(
        &self,
        ctx: &Context<'_>,
        status: Option<JobState>,
        kind: Option<String>,
        #[graphql(default = 100)] limit: i32,
    ) -> Result<Vec<JobView>, Error> {
        require_read(ctx)?;
        if !(1..=10_000).contains(&limit) {
            return Err(Error::new("limit must be between 1 and 10000"));
        }
        let mut out = Vec::new();
        for job in orch(ctx).store().jobs() {
            let job = job?;
            if status.is_some_and(|s| s != job.state)
                || kind.as_ref().is_some_and(|k| *k != job.kind)
            {
                continue;
            }
            out.push(JobView(job));
        }
        out.reverse();
        out.truncate(limit as usize);
        Ok(out)
    }

    /// The cluster as this orchestrator sees it.
    /// Every deployment, oldest first.
    async fn deployments(&self, ctx: &Context<'_>) -> Result<Vec<DeploymentView>, Error> {
        require_read(ctx)?;
        Ok(orch(ctx)
            .store()
            .deployments()?
            .into_iter()
            .map(DeploymentView)
            .collect())
    }

    async fn deployment(&self, ctx: &Context<'_>, id: ID) -> Result<Option<DeploymentView>, Error> {
        require_read(ctx)?;
        let id = parse_id(&id)?;
        Ok(orch(ctx).store().deployment(id)?.map(DeploymentView))
    }

    /// The NetKAN pipeline's status of every mod (or of one), optionally only those
    /// failing, frozen, or not inflated for `staleHours` (48 by default).
    async fn netkan_status(
        &self,
        ctx: &Context<'_>,
        identifier: Option<String>,
        filter: Option<ModFilter>,
        stale_hours: Option<i32>,
    ) -> Result<Vec<ModStatusView>, Error> {
        require_read(ctx)?;
        let hours = non_negative("staleHours", stale_hours)?.unwrap_or(48);
        let cutoff = crate::rfc3339(crate::now_ms() - (hours as i64).saturating_mul(3_600_000));
        let keep = |s: &ModStatus| match filter {
            None => true,
            Some(ModFilter::Failing) => !s.success && s.last_checked.is_some(),
            Some(ModFilter::Frozen) => s.frozen,
            Some(ModFilter::Stale) => {
                !s.frozen
                    && s.last_inflated
                        .as_deref()
                        .is_none_or(|t| t < cutoff.as_str())
            }
        };
        Ok(orch(ctx)
            .store()
            .mod_statuses()?
            .into_iter()
            .filter(|(id, s)| identifier.as_ref().is_none_or(|only| only == id) && keep(s))
            .map(|(identifier, status)| ModStatusView { identifier, status })
            .collect())
    }

    /// The NetKAN pipeline's queues and counts since this orchestrator started.
    async fn netkan_pipeline(&self, ctx: &Context<'_>) -> Result<PipelineView, Error> {
        require_read(ctx)?;
        Ok(PipelineView::of(orch(ctx)))
    }

    async fn cluster(&self, ctx: &Context<'_>) -> Result<ClusterView, Error> {
        require_read(ctx)?;
        let o = orch(ctx);
        let devices = ctx
            .data_opt::<Option<Arc<Discovery>>>()
            .and_then(|d| d.as_ref())
            .map(|d| d.devices())
            .unwrap_or_default();
        let raft = ctx
            .data_opt::<Option<Arc<Cluster>>>()
            .and_then(|c| c.as_ref())
            .map(|c| c.view());
        let voters = raft.as_ref().map(|r| r.voters.clone()).unwrap_or_default();
        Ok(ClusterView {
            id: o.secrets().cluster_id.clone(),
            orchestrator: o.self_id().to_owned(),
            leader: raft.as_ref().and_then(|r| r.leader.clone()),
            term: raft
                .as_ref()
                .map_or(0, |r| r.term.min(i32::MAX as u64) as i32),
            failover_possible: voters.len() >= 3,
            learners: raft.map(|r| r.learners).unwrap_or_default(),
            nodes: o
                .store()
                .nodes()?
                .into_iter()
                .map(|n| {
                    let voter = voters.contains(&n.id);
                    let mut v = NodeView::new(o, n);
                    v.voter = voter;
                    v
                })
                .collect(),
            voters,
            version: crate::VERSION.to_owned(),
            queued_jobs: o.queued_count() as i32,
            enrollment_open: o.enrollment.remaining().is_some(),
            enrollment_remaining_secs: o.enrollment.remaining().map(|s| s as i32),
            devices: devices.into_iter().map(DeviceView::from).collect(),
            pending_nodes: o
                .enrollment
                .pending()
                .into_iter()
                .map(|p| PendingView {
                    node_id: p.node_id,
                    name: p.name,
                    address: p.address,
                    since: p.since as f64,
                })
                .collect(),
        })
    }
}

#[derive(SimpleObject)]
pub struct ClusterView {
    id: String,
    orchestrator: String,
    /// The Raft leader (the orchestrator, once it has taken over).
    leader: Option<String>,
    /// The Raft term: it grows by one at every election.
    term: i32,
    /// The nodes that elect the leader.
    voters: Vec<String>,
    /// Nodes catching up with the log before they vote.
    learners: Vec<String>,
    /// Whether another node takes over when the orchestrator dies (three voters or more;
    /// with fewer, the cluster waits for it to come back).
    failover_possible: bool,
    /// Every node that ever joined, with its health.
    nodes: Vec<NodeView>,
    version: String,
    queued_jobs: i32,
    /// Whether new devices are admitted without approval right now.
    enrollment_open: bool,
    enrollment_remaining_secs: Option<i32>,
    /// Every Kraken device in view over mDNS, joined or not.
    devices: Vec<DeviceView>,
    /// Devices waiting for an operator's approval.
    pending_nodes: Vec<PendingView>,
}

#[derive(SimpleObject)]
pub struct DeviceView {
    node: String,
    /// Its cluster; empty while it has none.
    cluster: String,
    role: Role,
    term: i32,
    api_port: i32,
    version: String,
    addresses: Vec<String>,
}

impl From<crate::discovery::Device> for DeviceView {
    fn from(d: crate::discovery::Device) -> Self {
        Self {
            node: d.advert.node,
            cluster: d.advert.cluster,
            role: d.advert.role,
            term: d.advert.term.min(i32::MAX as u64) as i32,
            api_port: d.advert.api_port as i32,
            version: d.advert.version,
            addresses: d.addresses.iter().map(|a| a.to_string()).collect(),
        }
    }
}

#[derive(SimpleObject)]
pub struct PendingView {
    node_id: String,
    name: String,
    address: String,
    /// When it first asked, ms since the epoch.
    since: f64,
}

pub struct Mutation;

#[Object]
impl Mutation {
    /// Stores a job and queues it; returns once it is durable.
    #[allow(clippy::too_many_arguments)]
    async fn enqueue_job(
        &self,
        ctx: &Context<'_>,
        kind: String,
        spec: Option<Json<serde_json::Value>>,
        #[graphql(default = 0)] priority: i32,
        max_attempts: Option<i32>,
        isolation: Option<Isolation>,
        memory_mb: Option<i32>,
        timeout_secs: Option<i32>,
    ) -> Result<JobView, Error> {
        require_operator(ctx)?;
        let req = JobRequest {
            kind,
            spec: spec.map(|s| s.0),
            priority,
            max_attempts: non_negative("maxAttempts", max_attempts)?.map(|n| n as u32),
            isolation,
            memory_mb: non_negative("memoryMb", memory_mb)?,
            timeout_secs: non_negative("timeoutSecs", timeout_secs)?,
        };
        Ok(JobView(orch(ctx).enqueue(req).await?))
    }

    /// Queues `inflate` jobs for mods of the configured NetKAN repository (batched, one
    /// job per `batch` mods, `netkan.inflate_batch` by default); returns the jobs. Each job's result holds one
    /// NetKAN outcome per mod.
    async fn enqueue_inflate(
        &self,
        ctx: &Context<'_>,
        identifiers: Vec<String>,
        #[graphql(default = 0)] priority: i32,
        batch: Option<i32>,
    ) -> Result<Vec<JobView>, Error> {
        require_operator(ctx)?;
        let batch = non_negative("batch", batch)?.map(|b| b as usize);
        let jobs = orch(ctx)
            .enqueue_inflate(&identifiers, priority, batch)
            .await?;
        Ok(jobs.into_iter().map(JobView).collect())
    }

    /// Drains a node (`drain: true`, the default): no new jobs or apps go there, its jobs
    /// finish, its apps move to other workers. `drain: false` puts it back in service.
    async fn drain_node(
        &self,
        ctx: &Context<'_>,
        id: String,
        #[graphql(default = true)] drain: bool,
    ) -> Result<bool, Error> {
        require_operator(ctx)?;
        Ok(orch(ctx).drain_node(&id, drain).await?.drained)
    }

    /// Admits a device that is waiting for approval.
    async fn approve_node(&self, ctx: &Context<'_>, id: String) -> Result<bool, Error> {
        require_operator(ctx)?;
        orch(ctx).approve(&id).await?;
        Ok(true)
    }

    /// Admits new devices by themselves for `seconds` (0 closes the window); returns the
    /// seconds left.
    async fn open_enrollment(&self, ctx: &Context<'_>, seconds: i32) -> Result<i32, Error> {
        require_operator(ctx)?;
        if !(0..=7 * 24 * 3600).contains(&seconds) {
            return Err(Error::new("seconds must be between 0 and 604800"));
        }
        let left = orch(ctx).open_enrollment(seconds as u64).await?;
        Ok(left.unwrap_or(0) as i32)
    }

    /// Builds and runs the app of a git repository (its `kraken.toml` says how) on the
    /// least-loaded worker that can hold it.
    // each GraphQL argument is a parameter here
    #[allow(clippy::too_many_arguments)]
    async fn create_deployment(
        &self,
        ctx: &Context<'_>,
        git_url: String,
        #[graphql(default_with = "String::from(\"main\")")] branch: String,
        memory_mb: Option<i32>,
        #[graphql(default = false)] auto_redeploy: bool,
        #[graphql(desc = "only on a node with this label (its `worker.labels`)")] label: Option<
            String,
        >,
        #[graphql(desc = "only on a node of this CPU architecture (x86_64, aarch64, arm)")]
        arch: Option<String>,
    ) -> Result<DeploymentView, Error> {
        require_operator(ctx)?;
        let memory_mb = non_negative("memoryMb", memory_mb)?;
        let d = orch(ctx)
            .create_deployment(DeploymentRequest {
                git_url,
                branch,
                memory_mb,
                auto_redeploy,
                label,
                arch,
            })
            .await?;
        Ok(DeploymentView(d))
    }

    /// Builds the branch's newest commit and runs it in place of the current one.
    async fn redeploy(&self, ctx: &Context<'_>, id: ID) -> Result<DeploymentView, Error> {
        require_operator(ctx)?;
        Ok(DeploymentView(orch(ctx).redeploy(parse_id(&id)?).await?))
    }

    /// Stops an app and removes its container and image.
    async fn stop_deployment(&self, ctx: &Context<'_>, id: ID) -> Result<DeploymentView, Error> {
        require_operator(ctx)?;
        Ok(DeploymentView(
            orch(ctx).stop_deployment(parse_id(&id)?).await?,
        ))
    }

    async fn cancel_job(&self, ctx: &Context<'_>, id: ID) -> Result<JobView, Error> {
        require_operator(ctx)?;
        Ok(JobView(orch(ctx).cancel(parse_id(&id)?).await?))
    }
}

pub struct Subscription;

#[Subscription]
impl Subscription {
    /// Every state change of every job (or of one job).
    async fn job_events(
        &self,
        ctx: &Context<'_>,
        id: Option<ID>,
    ) -> Result<impl Stream<Item = JobEventView>, Error> {
        require_read(ctx)?;
        let only = id.as_ref().map(parse_id).transpose()?;
        Ok(of_one(orch(ctx).subscribe(), only, |n| n.job, JobEventView))
    }

    /// Every change of every deployment (or of one): status, node, URL, reason.
    async fn deployment_events(
        &self,
        ctx: &Context<'_>,
        id: Option<ID>,
    ) -> Result<impl Stream<Item = DeploymentView>, Error> {
        require_read(ctx)?;
        let only = id.as_ref().map(parse_id).transpose()?;
        let rx = orch(ctx).subscribe_deployments();
        Ok(of_one(rx, only, |d| d.id, DeploymentView))
    }

    /// Every change of a NetKAN mod's status (or of one mod's).
    async fn netkan_status_events(
        &self,
        ctx: &Context<'_>,
        identifier: Option<String>,
    ) -> Result<impl Stream<Item = ModStatusView>, Error> {
        require_read(ctx)?;
        let rx = orch(ctx).subscribe_mods();
        Ok(
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |n| {
                let keep = n
                    .ok()
                    .filter(|n| identifier.as_ref().is_none_or(|id| *id == n.identifier))
                    .map(|n| ModStatusView {
                        identifier: n.identifier,
                        status: n.status,
                    });
                futures::future::ready(keep)
            }),
        )
    }
}

/// Which mods `netkanStatus` lists.
#[derive(async_graphql::Enum, Clone, Copy, PartialEq, Eq)]
pub enum ModFilter {
    /// The last inflation failed.
    Failing,
    Frozen,
    /// Not frozen and not inflated for `staleHours`.
    Stale,
}

/// One mod as the NetKAN pipeline knows it.
pub struct ModStatusView {
    pub identifier: String,
    pub status: ModStatus,
}

#[Object(name = "ModStatus")]
impl ModStatusView {
    async fn identifier(&self) -> &str {
        &self.identifier
    }
    async fn last_checked(&self) -> Option<&str> {
        self.status.last_checked.as_deref()
    }
    async fn last_inflated(&self) -> Option<&str> {
        self.status.last_inflated.as_deref()
    }
    async fn last_indexed(&self) -> Option<&str> {
        self.status.last_indexed.as_deref()
    }
    async fn last_downloaded(&self) -> Option<&str> {
        self.status.last_downloaded.as_deref()
    }
    async fn last_error(&self) -> Option<&str> {
        self.status.last_error.as_deref()
    }
    async fn last_warnings(&self) -> Option<&str> {
        self.status.last_warnings.as_deref()
    }
    async fn release_date(&self) -> Option<&str> {
        self.status.release_date.as_deref()
    }
    async fn success(&self) -> bool {
        self.status.success
    }
    async fn frozen(&self) -> bool {
        self.status.frozen
    }
    async fn resources(&self) -> Json<&serde_json::Map<String, serde_json::Value>> {
        Json(&self.status.resources)
    }
}

/// The NetKAN pipeline's queues and counts.
#[derive(SimpleObject)]
#[graphql(name = "NetkanPipeline")]
pub struct PipelineView {
    /// Mods waiting in queued inflate jobs.
    pub inflate_queued_mods: u64,
    /// Inflated results waiting for the indexer.
    pub index_queue: u64,
    pub rounds: u64,
    pub rounds_skipped: u64,
    pub inflated: u64,
    pub inflate_failed: u64,
    pub indexed: u64,
    pub index_failures: u64,
    pub pushes_refused: u64,
    pub pull_requests: u64,
    /// Downloads uploaded to the archive.
    pub mirrored: u64,
    /// Downloads that could not be mirrored (a hash mismatch, or failed for good).
    pub mirror_failed: u64,
}

impl PipelineView {
    pub fn of(o: &Orchestrator) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &o.pipeline.counters;
        Self {
            inflate_queued_mods: o.queued_inflate_mods() as u64,
            index_queue: o.store().index_depth() as u64,
            rounds: c.rounds.load(Relaxed),
            rounds_skipped: c.rounds_skipped.load(Relaxed),
            inflated: c.inflated.load(Relaxed),
            inflate_failed: c.inflate_failed.load(Relaxed),
            indexed: c.indexed.load(Relaxed),
            index_failures: c.index_failures.load(Relaxed),
            pushes_refused: c.pushes_refused.load(Relaxed),
            pull_requests: c.pull_requests.load(Relaxed),
            mirrored: c.mirrored.load(Relaxed),
            mirror_failed: c.mirror_failed.load(Relaxed),
        }
    }
}

/// A broadcast as a subscription's stream: every item, or those of one id (`only`); items a
/// slow subscriber missed are skipped.
fn of_one<T: Clone + Send + 'static, V>(
    rx: tokio::sync::broadcast::Receiver<T>,
    only: Option<Uuid>,
    id_of: fn(&T) -> Uuid,
    view: fn(T) -> V,
) -> impl Stream<Item = V> {
    tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| {
        let keep = item
            .ok()
            .filter(|item| only.is_none_or(|id| id == id_of(item)))
            .map(view);
        futures::future::ready(keep)
    })
}

pub struct DeploymentView(pub DeploymentRecord);

#[Object(name = "Deployment")]
impl DeploymentView {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn git_url(&self) -> &str {
        &self.0.git_url
    }
    async fn branch(&self) -> &str {
        &self.0.branch
    }
    async fn status(&self) -> DeployStatus {
        self.0.status
    }
    /// Why it failed, or what it waits for.
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    /// Bumped at each placement.
    async fn generation(&self) -> i32 {
        self.0.generation as i32
    }
    async fn node(&self) -> Option<&str> {
        self.0.node.as_deref()
    }
    /// The app's name (from its manifest).
    async fn app(&self) -> Option<&str> {
        self.0.app.as_deref()
    }
    async fn port(&self) -> Option<i32> {
        self.0.port.map(i32::from)
    }
    async fn commit(&self) -> Option<&str> {
        self.0.commit.as_deref()
    }
    /// Where the app answers while it runs.
    async fn url(&self) -> Option<&str> {
        self.0.url.as_deref()
    }
    async fn memory_mb(&self) -> i32 {
        self.0.memory_mb as i32
    }
    /// Whether a new commit on the branch is deployed by itself.
    async fn auto_redeploy(&self) -> bool {
        self.0.auto_redeploy
    }
    /// The label its node must carry.
    async fn label(&self) -> Option<&str> {
        self.0.label.as_deref()
    }
    /// The CPU architecture its node must have.
    async fn arch(&self) -> Option<&str> {
        self.0.arch.as_deref()
    }
    async fn created_at(&self) -> f64 {
        self.0.created_at as f64
    }
    async fn updated_at(&self) -> f64 {
        self.0.updated_at as f64
    }
    /// Build and run output, oldest first (also at `/log/<id>`).
    async fn log(&self, ctx: &Context<'_>) -> Result<Vec<LogLineView>, Error> {
        Ok(orch(ctx)
            .logs(self.0.id)?
            .into_iter()
            .map(LogLineView)
            .collect())
    }
}

pub struct JobEventView(JobNotice);

#[Object(name = "JobEvent")]
impl JobEventView {
    async fn job_id(&self) -> ID {
        ID(self.0.job.to_string())
    }
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    async fn state(&self) -> JobState {
        self.0.state
    }
    async fn attempt(&self) -> i32 {
        self.0.attempt as i32
    }
    async fn node(&self) -> Option<&str> {
        self.0.node.as_deref()
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    async fn at(&self) -> f64 {
        self.0.at as f64
    }
}

pub struct JobView(pub JobRecord);

#[Object(name = "Job")]
impl JobView {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    async fn spec(&self) -> Json<&serde_json::Value> {
        Json(&self.0.spec)
    }
    async fn priority(&self) -> i32 {
        self.0.priority
    }
    async fn state(&self) -> JobState {
        self.0.state
    }
    async fn isolation(&self) -> Isolation {
        self.0.isolation
    }
    /// The current attempt (1-based).
    async fn attempt(&self) -> i32 {
        self.0.attempt as i32
    }
    async fn max_attempts(&self) -> i32 {
        self.0.max_attempts as i32
    }
    /// The node of the current attempt.
    async fn node(&self) -> Option<&str> {
        self.0.node.as_deref()
    }
    /// Milliseconds since the epoch.
    async fn created_at(&self) -> f64 {
        self.0.created_at as f64
    }
    async fn started_at(&self) -> Option<f64> {
        self.0.started_at.map(|t| t as f64)
    }
    async fn finished_at(&self) -> Option<f64> {
        self.0.finished_at.map(|t| t as f64)
    }
    async fn exit_code(&self) -> Option<i32> {
        self.0.exit_code.map(|c| c as i32)
    }
    async fn result(&self) -> Option<Json<&serde_json::Value>> {
        self.0.result.as_ref().map(Json)
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    async fn attempts(&self) -> Vec<AttemptView> {
        self.0.attempts.iter().cloned().map(AttemptView).collect()
    }
    /// Captured output lines, oldest first.
    async fn log(&self, ctx: &Context<'_>) -> Result<Vec<LogLineView>, Error> {
        Ok(orch(ctx)
            .logs(self.0.id)?
            .into_iter()
            .map(LogLineView)
            .collect())
    }
}

pub struct AttemptView(Attempt);

#[Object(name = "Attempt")]
impl AttemptView {
    async fn number(&self) -> i32 {
        self.0.number as i32
    }
    async fn node(&self) -> &str {
        &self.0.node
    }
    async fn assigned_at(&self) -> f64 {
        self.0.assigned_at as f64
    }
    async fn started_at(&self) -> Option<f64> {
        self.0.started_at.map(|t| t as f64)
    }
    async fn finished_at(&self) -> Option<f64> {
        self.0.finished_at.map(|t| t as f64)
    }
    async fn outcome(&self) -> Option<&str> {
        self.0.outcome.as_deref()
    }
}

pub struct LogLineView(LogLine);

#[Object(name = "LogLine")]
impl LogLineView {
    async fn at(&self) -> f64 {
        self.0.at as f64
    }
    async fn attempt(&self) -> i32 {
        self.0.attempt as i32
    }
    async fn stream(&self) -> &str {
        &self.0.stream
    }
    async fn text(&self) -> &str {
        &self.0.text
    }
}

pub struct NodeView {
    node: NodeRecord,
    alive: bool,
    orchestrator: bool,
    voter: bool,
    running: u32,
}

impl NodeView {
    fn new(o: &Orchestrator, node: NodeRecord) -> Self {
        Self {
            alive: o.is_alive(&node.id),
            orchestrator: node.id == o.self_id(),
            voter: false,
            running: o.active_per_node().get(&node.id).copied().unwrap_or(0),
            node,
        }
    }
}

#[Object(name = "Node")]
impl NodeView {
    async fn id(&self) -> &str {
        &self.node.id
    }
    async fn name(&self) -> &str {
        &self.node.name
    }
    async fn address(&self) -> &str {
        &self.node.address
    }
    async fn api_port(&self) -> i32 {
        self.node.api_port as i32
    }
    async fn version(&self) -> &str {
        &self.node.version
    }
    /// Whether it elects the leader (see `cluster { voters }`).
    async fn voter(&self) -> bool {
        self.voter
    }
    /// `orchestrator` or `worker`.
    async fn role(&self) -> &str {
        if self.orchestrator {
            "orchestrator"
        } else {
            "worker"
        }
    }
    /// Whether its heartbeats arrive within the grace period.
    async fn alive(&self) -> bool {
        self.alive
    }
    async fn joined_at(&self) -> f64 {
        self.node.joined_at as f64
    }
    async fn last_seen(&self) -> f64 {
        self.node.last_seen as f64
    }
    async fn slots(&self) -> i32 {
        self.node.slots as i32
    }
    /// Drained by an operator: nothing new is placed on it.
    async fn drained(&self) -> bool {
        self.node.drained
    }
    /// Jobs assigned to or running on it now.
    async fn running_jobs(&self) -> i32 {
        self.running as i32
    }
    async fn stats(&self) -> Option<&NodeStats> {
        self.node.stats.as_ref()
    }
}
