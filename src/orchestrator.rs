//! The orchestrator: accepts jobs (stored before they are acknowledged), places each on the
//! least-loaded live worker with a free slot, applies the workers' events to the store
//! exactly once per attempt, retries with backoff, and re-places the jobs of a worker whose
//! heartbeats stopped for longer than the grace period. It also admits joining nodes, and
//! places app deployments ([`deployments`]).

use crate::broker::messages::{
    DeployEvent, Heartbeat, JobAssignment, JobChange, JobEvent, JobOutcome, LogBatch, WorkRequest,
};
use crate::broker::server::{BrokerUser, RabbitServer, ADMIN_USER};
use crate::broker::{Broker, BrokerError};
use crate::config::Config;
use crate::enrollment::{Admission, EnrollRequest, Enrollment, EnrollmentError, PendingDevice};
use crate::identity;
use crate::jobs::{self, JobError};
use crate::store::{
    Attempt, Isolation, JobRecord, JobState, Limits, LogLine, NodeRecord, Store, StoreError,
};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

mod deployments;
mod pipeline;
pub use deployments::{DeploymentRequest, DEFAULT_APP_MEMORY_MB};
pub use pipeline::{ModNotice, PipelineCounters, Round, SCHEDULED_PRIORITY, WEBHOOK_PRIORITY};

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("no job {0}")]
    NoSuchJob(Uuid),
    #[error("no deployment {0}")]
    NoSuchDeployment(Uuid),
    #[error("{0}")]
    Invalid(String),
    #[error("join refused: {0}")]
    JoinRefused(String),
    #[error("job {id} is already {state}")]
    AlreadyFinal { id: Uuid, state: &'static str },
    #[error(transparent)]
    Enrollment(#[from] EnrollmentError),
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
}

/// What an operator asks for when enqueueing a job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub kind: String,
    #[serde(default)]
    pub spec: Option<serde_json::Value>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub isolation: Option<Isolation>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// A change to show on the event subscription.
#[derive(Debug, Clone, Serialize)]
pub struct JobNotice {
    pub job: Uuid,
    pub kind: String,
    pub state: JobState,
    pub attempt: u32,
    pub node: Option<String>,
    pub error: Option<String>,
    pub at: i64,
}

/// The join handshake's request (see [`crate::identity`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: String,
    pub name: String,
    pub version: String,
    pub api_port: u16,
    pub slots: u32,
    pub server_nonce: String,
    pub client_nonce: String,
    pub proof: String,
}

/// The orchestrator's answer to a good join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub vhost: String,
    /// AMQP port on the orchestrator's address; absent when the cluster uses an external
    /// broker the node must be configured with.
    pub amqp_port: Option<u16>,
    pub accept_proof: String,
}

/// The cluster's identity and secrets, as the orchestrator holds them (and the replicated
/// store keeps them, for whichever voter leads next).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterSecrets {
    pub cluster_id: String,
    pub join_token: String,
    pub operator_token: String,
}

/// In-memory scheduling state, rebuilt from the store at start.
#[derive(Default)]
struct Sched {
    /// Jobs waiting for a slot, by priority (high first), then age.
    queued: BTreeSet<(Reverse<i32>, Uuid)>,
    /// Jobs assigned or running → their node.
    active: HashMap<Uuid, String>,
    /// Liveness and load of nodes, from heartbeats.
    live: HashMap<String, Live>,
    /// Active jobs their node's heartbeats do not list, since when: a work request lost on
    /// the way (an orchestrator crash between storing and publishing it) shows up here.
    missing: HashMap<Uuid, Instant>,
}

struct Live {
    /// Whether a heartbeat arrived during this process's life (not just remembered).
    heard: bool,
    last_seen: Instant,
    slots: u32,
    load: f64,
    memory_used: f64,
    /// Drained by an operator: no new jobs.
    drained: bool,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub dispatched: std::sync::atomic::AtomicU64,
    pub dead_workers: std::sync::atomic::AtomicU64,
}

pub struct Orchestrator {
    config: Config,
    store: Store,
    secrets: ClusterSecrets,
    self_id: String,
    rabbit: Option<Arc<RabbitServer>>,
    broker: watch::Sender<Option<Arc<Broker>>>,
    sched: Mutex<Sched>,
    wake: Notify,
    notices: broadcast::Sender<JobNotice>,
    deploy_notices: broadcast::Sender<crate::store::DeploymentRecord>,
    /// Deployments a node should hold but has not listed in its heartbeats, since when.
    apps_missing: Mutex<HashMap<Uuid, Instant>>,
    nonces: Mutex<HashMap<String, Instant>>,
    /// Whether the work queues were emptied at this orchestrator's first connection.
    purged: std::sync::atomic::AtomicBool,
    pub counters: Counters,
    /// Admission of devices without a token.
    pub enrollment: Enrollment,
    /// The NetKAN pipeline's state.
    pub pipeline: pipeline::Pipeline,
}

/// What an enrolling device is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub cluster_id: String,
    /// The join token, once admitted.
    pub join_token: Option<String>,
    pub message: String,
}

const NONCE_TTL: Duration = Duration::from_secs(60);
/// Work requests published before their confirms are awaited together.
const DISPATCH_BATCH: usize = 128;
/// Job events applied under one store flush before they are acknowledged.
const EVENT_BATCH: usize = 256;
/// How a job goes back to the queue.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Requeue {
    /// The attempt ran and failed: it counts against `max_attempts`.
    Failed,
    /// Its worker went silent: placed again without counting, up to [`MAX_LOST`] times.
    Lost,
    /// It never reached its worker: as if it had not been placed.
    Undelivered,
}

/// Attempts a job may lose with silent workers before it fails (a job that takes down
/// every worker it lands on must not go round forever).
const MAX_LOST: u32 = 5;

/// Where the enrollment window and approvals are kept in the store.
const ENROLLMENT_KEY: &str = "enrollment";
/// Most mods one `enqueueInflate` may name.
const MAX_INFLATE: usize = 100_000;
/// Time allowed per mod of an `inflate` job, seconds.
const INFLATE_SECS_PER_MOD: u64 = 120;

impl Orchestrator {
    pub fn new(
        config: Config,
        store: Store,
        secrets: ClusterSecrets,
        self_id: String,
        rabbit: Option<Arc<RabbitServer>>,
    ) -> Result<Arc<Self>, OrchestratorError> {
        let mut sched = Sched::default();
        let started = Instant::now();
        for job in store.jobs() {
            let job = job?;
            match job.state {
                JobState::Queued => {
                    sched.queued.insert((Reverse(job.priority), job.id));
                }
                JobState::Assigned | JobState::Running => {
                    if let Some(node) = job.node {
                        sched.active.insert(job.id, node);
                    }
                }
                _ => {}
            }
        }
        // after a restart every known node gets a full grace period to show up again
        for node in store.nodes()? {
            sched.live.insert(
                node.id.clone(),
                Live {
                    heard: false,
                    last_seen: started,
                    slots: node.slots,
                    load: 0.0,
                    memory_used: 0.0,
                    drained: node.drained,
                },
            );
        }
        let (broker, _) = watch::channel(None);
        let enrollment = Enrollment::default();
        if let Some(kept) = store.setting(ENROLLMENT_KEY)? {
            enrollment.restore(kept);
        }
        Ok(Arc::new(Self {
            config,
            store,
            secrets,
            self_id,
            rabbit,
            broker,
            sched: Mutex::new(sched),
            wake: Notify::new(),
            notices: broadcast::channel(4096).0,
            deploy_notices: broadcast::channel(1024).0,
            apps_missing: Default::default(),
            nonces: Mutex::new(HashMap::new()),
            purged: Default::default(),
            counters: Counters::default(),
            enrollment,
            pipeline: Default::default(),
        }))
    }

    /// Opens the enrollment window for `secs` (0 closes it), durably.
    pub async fn open_enrollment(&self, secs: u64) -> Result<Option<u64>, OrchestratorError> {
        self.enrollment.open(secs);
        self.keep_enrollment().await?;
        Ok(self.enrollment.remaining())
    }

    /// Approves a pending device, durably.
    pub async fn approve(&self, node_id: &str) -> Result<PendingDevice, OrchestratorError> {
        let device = self.enrollment.approve(node_id)?;
        self.keep_enrollment().await?;
        tracing::info!(node = %node_id, name = %device.name, "device approved by the operator");
        Ok(device)
    }

    async fn keep_enrollment(&self) -> Result<(), OrchestratorError> {
        self.store
            .put_setting(ENROLLMENT_KEY, &self.enrollment.kept())?;
        self.store.flush().await?;
        Ok(())
    }

    /// A device that knows no token asks to join: inside the enrollment window, or once an
    /// operator approved it, it is handed the join token; otherwise it waits.
    pub fn enroll(
        &self,
        req: &EnrollRequest,
        address: &str,
    ) -> Result<EnrollResponse, OrchestratorError> {
        let admitted = self.enrollment.ask(req, address)? == Admission::Admitted;
        if admitted {
            tracing::info!(node = %req.node_id, name = %req.name, %address, "device admitted");
        }
        Ok(EnrollResponse {
            cluster_id: self.secrets.cluster_id.clone(),
            join_token: admitted.then(|| self.secrets.join_token.clone()),
            message: if admitted {
                "admitted".into()
            } else {
                format!(
                    "waiting for approval: run `kraken nodes approve {}` on the orchestrator",
                    req.node_id
                )
            },
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn secrets(&self) -> &ClusterSecrets {
        &self.secrets
    }
    pub fn self_id(&self) -> &str {
        &self.self_id
    }
    pub fn vhost(&self) -> String {
        format!("kraken-{}", self.secrets.cluster_id)
    }
    pub fn subscribe(&self) -> broadcast::Receiver<JobNotice> {
        self.notices.subscribe()
    }
    pub fn broker(&self) -> Option<Arc<Broker>> {
        self.broker.borrow().clone()
    }

    /// Whether a node's heartbeats are recent.
    pub fn is_alive(&self, node: &str) -> bool {
        let grace = Duration::from_millis(self.config.orchestrator.grace_ms);
        lock(&self.sched)
            .live
            .get(node)
            .is_some_and(|l| l.heard && l.last_seen.elapsed() < grace)
    }

    /// Whether an operator drained the node.
    pub fn is_drained(&self, node: &str) -> bool {
        lock(&self.sched).live.get(node).is_some_and(|l| l.drained)
    }

    /// How long a node has not been heard from (`None`: heard within the grace period).
    /// Nodes never heard by this orchestrator count from its start.
    pub fn silent_for(&self, node: &str) -> Option<Duration> {
        if node == self.self_id {
            return None;
        }
        let grace = Duration::from_millis(self.config.orchestrator.grace_ms);
        let s = lock(&self.sched);
        match s.live.get(node) {
            Some(l) if l.heard && l.last_seen.elapsed() < grace => None,
            Some(l) => Some(l.last_seen.elapsed()),
            None => Some(Duration::MAX),
        }
    }

    /// Live nodes other than this one, longest members first (who may become voters).
    pub fn live_nodes(&self) -> Result<Vec<String>, OrchestratorError> {
        let mut nodes = self.store.nodes()?;
        nodes.sort_by_key(|n| n.joined_at);
        Ok(nodes
            .into_iter()
            .filter(|n| n.id != self.self_id && self.silent_for(&n.id).is_none())
            .map(|n| n.id)
            .collect())
    }

    /// Jobs assigned to or running on each node.
    pub fn active_per_node(&self) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        for node in lock(&self.sched).active.values() {
            *out.entry(node.clone()).or_default() += 1;
        }
        out
    }

    pub fn queued_count(&self) -> usize {
        lock(&self.sched).queued.len()
    }

    /// The broker users: the administrator and every known node.
    fn broker_users(&self) -> Result<Vec<BrokerUser>, OrchestratorError> {
        let nodes = self.store.nodes()?.into_iter().map(|n| n.id);
        Ok(BrokerUser::for_cluster(&self.secrets.join_token, nodes))
    }

    /// The AMQP URL of `user` on the supervised broker, or the external one.
    pub fn amqp_url(&self, user: &str) -> String {
        if !self.config.broker.url.is_empty() {
            return self.config.broker.url.clone();
        }
        let password = identity::broker_password(&self.secrets.join_token, user);
        format!(
            "amqp://{user}:{password}@127.0.0.1:{}/{}",
            self.config.broker.amqp_port,
            self.vhost()
        )
    }

    // ---- jobs ---------------------------------------------------------------------------

    /// Validates, stores (durably) and queues a job; only then is it acknowledged.
    pub async fn enqueue(&self, req: JobRequest) -> Result<JobRecord, OrchestratorError> {
        let kind = jobs::find(&req.kind)?;
        let spec = req.spec.unwrap_or_else(|| serde_json::json!({}));
        kind.validate(&spec)?;
        let isolation = req.isolation.unwrap_or_default();
        if isolation == Isolation::InProcess && !kind.in_process_safe() {
            return Err(OrchestratorError::Invalid(format!(
                "kind `{}` cannot run in-process; use CONTAINER isolation",
                req.kind
            )));
        }
        let w = &self.config.worker;
        let max_attempts = req
            .max_attempts
            .unwrap_or(self.config.orchestrator.max_attempts);
        if !(1..=100).contains(&max_attempts) {
            return Err(OrchestratorError::Invalid(
                "maxAttempts must be between 1 and 100".into(),
            ));
        }
        let memory_mb = req.memory_mb.unwrap_or(w.job_memory_mb);
        if !(6..=1 << 20).contains(&memory_mb) {
            return Err(OrchestratorError::Invalid(
                "memoryMb must be between 6 and 1048576".into(),
            ));
        }
        let timeout_secs = req.timeout_secs.unwrap_or(w.job_timeout_secs);
        if !(1..=7 * 24 * 3600).contains(&timeout_secs) {
            return Err(OrchestratorError::Invalid(
                "timeoutSecs must be between 1 and 604800".into(),
            ));
        }
        let job = JobRecord {
            id: Uuid::now_v7(),
            kind: req.kind,
            spec,
            priority: req.priority,
            state: JobState::Queued,
            isolation,
            limits: Limits {
                memory_mb,
                cpus: w.job_cpus,
                timeout_secs,
            },
            max_attempts,
            attempt: 0,
            node: None,
            created_at: crate::now_ms(),
            started_at: None,
            finished_at: None,
            not_before: 0,
            exit_code: None,
            result: None,
            error: None,
            attempts: vec![],
            lost: 0,
        };
        self.store.put_job(&job)?;
        self.store.flush().await?;
        lock(&self.sched)
            .queued
            .insert((Reverse(job.priority), job.id));
        self.notify(&job);
        self.wake.notify_one();
        Ok(job)
    }

    /// Cancels a job that has not finished.
    pub async fn cancel(&self, id: Uuid) -> Result<JobRecord, OrchestratorError> {
        let mut was: Option<(JobState, u32, Option<String>)> = None;
        let job = self.store.update_job(id, |j| {
            if j.state.is_final() {
                return false;
            }
            was = Some((j.state, j.attempt, j.node.clone()));
            j.state = JobState::Cancelled;
            j.finished_at = Some(crate::now_ms());
            j.error = Some("cancelled by the operator".into());
            true
        })?;
        let Some(job) = job else {
            let job = self
                .store
                .job(id)?
                .ok_or(OrchestratorError::NoSuchJob(id))?;
            return Err(OrchestratorError::AlreadyFinal {
                id,
                state: job.state.as_str(),
            });
        };
        self.store.flush().await?;
        {
            let mut s = lock(&self.sched);
            s.queued.remove(&(Reverse(job.priority), id));
            s.active.remove(&id);
        }
        if let Some((JobState::Assigned | JobState::Running, attempt, Some(node))) = was {
            if let Some(broker) = self.broker() {
                let msg = WorkRequest::CancelJob { job: id, attempt };
                if let Err(error) = broker.publish(&msg, Some(&node)).await {
                    tracing::warn!(%error, job = %id, "cannot tell the worker to cancel");
                }
            }
        }
        self.notify(&job);
        self.wake.notify_one();
        Ok(job)
    }

    fn notify(&self, job: &JobRecord) {
        let _ = self.notices.send(JobNotice {
            job: job.id,
            kind: job.kind.clone(),
            state: job.state,
            attempt: job.attempt,
            node: job.node.clone(),
            error: job.error.clone(),
            at: crate::now_ms(),
        });
    }

    /// Picks the least-loaded live node with a free slot.
    fn pick_node(&self, s: &Sched) -> Option<String> {
        let grace = Duration::from_millis(self.config.orchestrator.grace_ms);
        let mut used: HashMap<&str, u32> = HashMap::new();
        for node in s.active.values() {
            *used.entry(node.as_str()).or_default() += 1;
        }
        s.live
            .iter()
            .filter(|(_, l)| l.heard && l.last_seen.elapsed() < grace && l.slots > 0 && !l.drained)
            .filter_map(|(id, l)| {
                let u = used.get(id.as_str()).copied().unwrap_or(0);
                (u < l.slots).then(|| {
                    let occupancy = u as f64 / l.slots as f64;
                    (id, (occupancy, l.load, l.memory_used))
                })
            })
            .min_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal))
            .map(|(id, _)| id.clone())
    }

    /// Places every due queued job that has a slot somewhere.
    async fn place_jobs(&self) -> Result<(), OrchestratorError> {
        let Some(broker) = self.broker() else {
            return Ok(());
        };
        let now = crate::now_ms();
        let mut skipped_not_due = Vec::new();
        let mut exhausted = false;
        while !exhausted {
            // 1. assign a batch in the store
            let mut batch = Vec::new();
            while batch.len() < DISPATCH_BATCH {
                let Some((job, node, assignment)) = self.assign_next(now, &mut skipped_not_due)?
                else {
                    exhausted = true;
                    break;
                };
                batch.push((job, node, assignment));
            }
            if batch.is_empty() {
                break;
            }
            // 2. commit the assignments before any worker hears of them: a new leader then
            // knows every attempt that may be running (one that never got out is found by
            // the heartbeats and placed again without counting)
            self.store.flush().await?;
            // 3. dispatch
            let mut in_flight = Vec::new();
            let mut undelivered = false;
            for (job, node, assignment) in batch {
                if undelivered {
                    self.requeue(job.id, job.attempt, "dispatch failed", Requeue::Undelivered)?;
                    continue;
                }
                match broker
                    .send(&WorkRequest::RunJob(assignment), Some(&node))
                    .await
                {
                    Ok(pending) => in_flight.push((job, node, pending)),
                    Err(error) => {
                        tracing::warn!(%error, job = %job.id, %node, "dispatch failed; job stays queued");
                        self.requeue(job.id, job.attempt, "dispatch failed", Requeue::Undelivered)?;
                        undelivered = true;
                    }
                }
            }
            self.confirm_dispatches(in_flight).await?;
            if undelivered {
                break;
            }
        }
        if !skipped_not_due.is_empty() {
            lock(&self.sched).queued.extend(skipped_not_due);
        }
        Ok(())
    }

    /// Takes the next queued job that is due and a node for it, and marks it `ASSIGNED` in
    /// the store (not yet flushed); `None` when no job or no node is left.
    #[allow(clippy::type_complexity)]
    fn assign_next(
        &self,
        now: i64,
        skipped_not_due: &mut Vec<(Reverse<i32>, Uuid)>,
    ) -> Result<Option<(JobRecord, String, JobAssignment)>, OrchestratorError> {
        loop {
            let (key, node) = {
                let mut s = lock(&self.sched);
                let Some(node) = self.pick_node(&s) else {
                    return Ok(None);
                };
                let Some(key) = s.queued.pop_first() else {
                    return Ok(None);
                };
                s.active.insert(key.1, node.clone());
                (key, node)
            };
            let mut assignment = None;
            let updated = self.store.update_job(key.1, |j| {
                if j.state != JobState::Queued {
                    return false;
                }
                if j.not_before > now {
                    return false;
                }
                j.state = JobState::Assigned;
                j.attempt += 1;
                j.node = Some(node.clone());
                j.attempts.push(Attempt {
                    number: j.attempt,
                    node: node.clone(),
                    assigned_at: now,
                    started_at: None,
                    finished_at: None,
                    outcome: None,
                });
                assignment = Some(JobAssignment {
                    job: j.id,
                    attempt: j.attempt,
                    kind: j.kind.clone(),
                    spec: j.spec.clone(),
                    isolation: j.isolation,
                    limits: j.limits,
                });
                true
            })?;
            match (updated, assignment) {
                (Some(job), Some(assignment)) => return Ok(Some((job, node, assignment))),
                _ => {
                    let mut s = lock(&self.sched);
                    s.active.remove(&key.1);
                    if let Some(j) = self.store.job(key.1)? {
                        if j.state == JobState::Queued {
                            skipped_not_due.push(key);
                        }
                    }
                }
            }
        }
    }

    /// Waits for the broker to confirm dispatched work requests; a refused one puts its job
    /// back in the queue.
    async fn confirm_dispatches(
        &self,
        in_flight: Vec<(JobRecord, String, crate::broker::Pending)>,
    ) -> Result<(), OrchestratorError> {
        for (job, node, pending) in in_flight {
            match pending.confirmed().await {
                Ok(()) => {
                    self.counters
                        .dispatched
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.notify(&job);
                }
                Err(error) => {
                    tracing::warn!(%error, job = %job.id, %node, "dispatch not confirmed; job stays queued");
                    self.requeue(job.id, job.attempt, "dispatch failed", Requeue::Undelivered)?;
                }
            }
        }
        Ok(())
    }

    /// Puts an attempt's job back in the queue (or fails it when out of attempts).
    fn requeue(
        &self,
        id: Uuid,
        attempt: u32,
        reason: &str,
        how: Requeue,
    ) -> Result<Option<JobRecord>, OrchestratorError> {
        let backoff = self.config.orchestrator.retry_backoff_ms as i64;
        let now = crate::now_ms();
        let job = self.store.update_job(id, |j| {
            if j.attempt != attempt || !matches!(j.state, JobState::Assigned | JobState::Running) {
                return false;
            }
            if let Some(a) = j.attempts.last_mut() {
                a.finished_at = Some(now);
                a.outcome = Some(reason.to_owned());
            }
            match how {
                Requeue::Undelivered => {
                    j.attempt -= 1;
                    j.attempts.pop();
                }
                Requeue::Lost => j.lost += 1,
                Requeue::Failed => {}
            }
            j.error = Some(reason.to_owned());
            j.node = None;
            let exhausted = match how {
                Requeue::Failed => j.counted_attempts() >= j.max_attempts,
                Requeue::Lost => j.lost >= MAX_LOST,
                Requeue::Undelivered => false,
            };
            if exhausted {
                j.state = JobState::Failed;
                j.finished_at = Some(now);
                if how == Requeue::Lost {
                    j.error = Some(format!(
                        "{reason} (lost with its worker {MAX_LOST} times; not placed again)"
                    ));
                }
            } else {
                j.state = JobState::Queued;
                j.not_before = if how == Requeue::Failed {
                    now + backoff * (1 << j.counted_attempts().saturating_sub(1).min(10))
                } else {
                    now
                };
            }
            true
        })?;
        let mut s = lock(&self.sched);
        s.active.remove(&id);
        if let Some(j) = &job {
            if j.state == JobState::Queued {
                s.queued.insert((Reverse(j.priority), j.id));
            }
        }
        drop(s);
        if let Some(j) = &job {
            self.notify(j);
        }
        self.wake.notify_one();
        Ok(job)
    }

    /// Applies one worker event; stale attempts and finished jobs are left alone, so a job is
    /// never reported succeeded twice.
    async fn apply_event(&self, ev: JobEvent) -> Result<(), OrchestratorError> {
        match ev.change {
            JobChange::Started => {
                let job = self.store.update_job(ev.job, |j| {
                    if j.attempt != ev.attempt
                        || j.state != JobState::Assigned
                        || j.node.as_deref() != Some(ev.node.as_str())
                    {
                        return false;
                    }
                    j.state = JobState::Running;
                    j.started_at.get_or_insert(ev.at);
                    if let Some(a) = j.attempts.last_mut() {
                        a.started_at = Some(ev.at);
                    }
                    true
                })?;
                if let Some(job) = job {
                    self.notify(&job);
                }
            }
            JobChange::Finished(outcome) => {
                self.apply_outcome(ev.job, ev.attempt, &ev.node, ev.at, outcome)?
            }
        }
        Ok(())
    }

    fn apply_outcome(
        &self,
        id: Uuid,
        attempt: u32,
        node: &str,
        at: i64,
        outcome: JobOutcome,
    ) -> Result<(), OrchestratorError> {
        let Some(current) = self.store.job(id)? else {
            return Ok(());
        };
        // an event of an attempt that is no longer the job's (a late one from a node whose
        // work was placed elsewhere) changes nothing
        if current.attempt != attempt || current.node.as_deref() != Some(node) {
            return Ok(());
        }
        if !outcome.success
            && outcome.retryable
            && current.counted_attempts() < current.max_attempts
        {
            let reason = outcome.error.clone().unwrap_or_else(|| "failed".into());
            self.requeue(id, attempt, &reason, Requeue::Failed)?;
            return Ok(());
        }
        let job = self.store.update_job(id, |j| {
            if j.attempt != attempt
                || j.node.as_deref() != Some(node)
                || !matches!(j.state, JobState::Assigned | JobState::Running)
            {
                return false;
            }
            j.state = if outcome.success {
                JobState::Succeeded
            } else {
                JobState::Failed
            };
            j.finished_at = Some(at);
            j.started_at.get_or_insert(at);
            j.exit_code = outcome.exit_code;
            j.result = outcome.result.clone();
            j.error = outcome.error.clone();
            if let Some(a) = j.attempts.last_mut() {
                a.finished_at = Some(at);
                a.outcome = Some(match &outcome.error {
                    None => "succeeded".into(),
                    Some(e) => e.clone(),
                });
            }
            true
        })?;
        if let Some(job) = job {
            lock(&self.sched).active.remove(&id);
            self.notify(&job);
            self.wake.notify_one();
            match (job.kind.as_str(), &job.state) {
                ("inflate", JobState::Succeeded) => self.inflate_finished(&job)?,
                ("mirror", JobState::Succeeded | JobState::Failed) => self.mirror_finished(&job)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn apply_heartbeat(&self, hb: Heartbeat) -> Result<(), OrchestratorError> {
        let Some(mut node) = self.store.node(&hb.node)? else {
            tracing::warn!(node = %hb.node, "heartbeat from a node that never joined");
            return Ok(());
        };
        let load = if hb.stats.cpus > 0 {
            hb.stats.load1 / hb.stats.cpus as f64
        } else {
            hb.stats.load1
        };
        let memory_used = if hb.stats.memory_total_mb > 0 {
            hb.stats.memory_used_mb as f64 / hb.stats.memory_total_mb as f64
        } else {
            0.0
        };
        let was_alive = self.is_alive(&hb.node);
        lock(&self.sched).live.insert(
            hb.node.clone(),
            Live {
                heard: true,
                last_seen: Instant::now(),
                slots: hb.slots,
                load,
                memory_used,
                drained: node.drained,
            },
        );
        if !was_alive {
            tracing::info!(node = %hb.node, name = %node.name, "worker is alive");
            self.wake.notify_one();
        }
        self.reconcile(&hb.node, &hb.stats.running_jobs)?;
        self.reconcile_apps(&hb.node, &hb.stats.apps)?;
        node.last_seen = hb.sent_at;
        node.slots = hb.slots;
        node.stats = Some(hb.stats);
        if let Some(address) = hb.address.filter(|a| !a.is_empty() && *a != node.address) {
            tracing::info!(node = %hb.node, from = %node.address, to = %address, "node has a new address");
            node.address = address;
        }
        self.store.put_node(&node)?;
        Ok(())
    }

    /// Compares the jobs a node says it has (`id/attempt`) with those assigned to it; one
    /// missing from its heartbeats for a whole grace period never reached it and is placed
    /// again (that attempt does not count against the job).
    fn reconcile(&self, node: &str, reported: &[String]) -> Result<(), OrchestratorError> {
        let grace = Duration::from_millis(self.config.orchestrator.grace_ms);
        let assigned: Vec<Uuid> = {
            let mut guard = lock(&self.sched);
            let Sched {
                active, missing, ..
            } = &mut *guard;
            missing.retain(|id, _| active.contains_key(id));
            active
                .iter()
                .filter(|(_, n)| n.as_str() == node)
                .map(|(id, _)| *id)
                .collect()
        };
        let mut lost = Vec::new();
        for id in assigned {
            let Some(job) = self.store.job(id)? else {
                continue;
            };
            let mut s = lock(&self.sched);
            let holds = job.node.as_deref() == Some(node)
                && matches!(job.state, JobState::Assigned | JobState::Running);
            if !holds || reported.contains(&format!("{id}/{}", job.attempt)) {
                s.missing.remove(&id);
                continue;
            }
            let since = *s.missing.entry(id).or_insert_with(Instant::now);
            if since.elapsed() >= grace {
                s.missing.remove(&id);
                lost.push((id, job.attempt));
            }
        }
        for (id, attempt) in lost {
            tracing::warn!(job = %id, attempt, %node, "the worker does not have its job; placing it again");
            let reason = format!("lost: worker {node} never received the job");
            if self
                .requeue(id, attempt, &reason, Requeue::Undelivered)?
                .is_none()
            {
                lock(&self.sched).active.remove(&id);
            }
        }
        Ok(())
    }

    fn apply_logs(&self, batch: LogBatch) -> Result<(), OrchestratorError> {
        self.store.append_logs(
            batch.job,
            &batch.lines,
            self.config.orchestrator.max_log_lines,
        )?;
        Ok(())
    }

    /// Re-places the jobs of nodes silent for longer than the grace period.
    fn check_liveness(&self) -> Result<(), OrchestratorError> {
        let grace = Duration::from_millis(self.config.orchestrator.grace_ms);
        let lost: Vec<(Uuid, String)> = {
            let s = lock(&self.sched);
            s.active
                .iter()
                .filter(|(_, node)| {
                    s.live
                        .get(node.as_str())
                        .is_none_or(|l| l.last_seen.elapsed() >= grace)
                })
                .map(|(id, node)| (*id, node.clone()))
                .collect()
        };
        for (id, node) in lost {
            let Some(job) = self.store.job(id)? else {
                continue;
            };
            tracing::warn!(job = %id, %node, "worker stopped sending heartbeats; placing its job again");
            self.counters
                .dead_workers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let reason = format!("lost: worker {node} stopped sending heartbeats");
            if self
                .requeue(id, job.attempt, &reason, Requeue::Lost)?
                .is_none()
            {
                lock(&self.sched).active.remove(&id);
            }
        }
        Ok(())
    }

    // ---- joining ------------------------------------------------------------------------

    /// A fresh single-use nonce for the join handshake.
    pub fn join_challenge(&self) -> String {
        let nonce = identity::random_hex(16);
        let mut nonces = lock(&self.nonces);
        nonces.retain(|_, t| t.elapsed() < NONCE_TTL);
        if nonces.len() < 10_000 {
            nonces.insert(nonce.clone(), Instant::now());
        }
        nonce
    }

    /// Admits a node that proved it knows the join token.
    pub async fn join(
        &self,
        req: JoinRequest,
        address: String,
    ) -> Result<JoinResponse, OrchestratorError> {
        let fresh = lock(&self.nonces)
            .remove(&req.server_nonce)
            .is_some_and(|t| t.elapsed() < NONCE_TTL);
        if !fresh {
            return Err(OrchestratorError::JoinRefused(
                "unknown or expired challenge".into(),
            ));
        }
        let expected = identity::join_proof(
            &self.secrets.join_token,
            &req.server_nonce,
            &req.node_id,
            &req.client_nonce,
        );
        if !identity::macs_equal(&expected, &req.proof) {
            tracing::warn!(node = %req.node_id, %address, "join refused: wrong cluster token");
            return Err(OrchestratorError::JoinRefused("wrong cluster token".into()));
        }
        if !identity::plain_id(&req.node_id, 1) {
            return Err(OrchestratorError::JoinRefused(format!(
                "node id `{}` must be 1-40 of a-z, 0-9 and -",
                req.node_id
            )));
        }
        self.register_node(
            &req.node_id,
            &req.name,
            &address,
            req.api_port,
            &req.version,
            req.slots,
        )
        .await?;
        tracing::info!(node = %req.node_id, name = %req.name, %address, "node joined");
        Ok(JoinResponse {
            cluster_id: self.secrets.cluster_id.clone(),
            vhost: self.vhost(),
            amqp_port: self
                .config
                .broker
                .url
                .is_empty()
                .then_some(self.config.broker.amqp_port),
            accept_proof: identity::accept_proof(
                &self.secrets.join_token,
                &req.client_nonce,
                &req.node_id,
            ),
        })
    }

    /// Records a node and gives it a broker user and a work queue.
    pub async fn register_node(
        &self,
        id: &str,
        name: &str,
        address: &str,
        api_port: u16,
        version: &str,
        slots: u32,
    ) -> Result<(), OrchestratorError> {
        let now = crate::now_ms();
        let previous = self.store.node(id)?;
        let node = NodeRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            address: address.to_owned(),
            api_port,
            version: version.to_owned(),
            joined_at: previous.as_ref().map_or(now, |p| p.joined_at),
            last_seen: now,
            slots,
            // a node that rejoins stays drained until an operator says otherwise
            drained: previous.as_ref().is_some_and(|p| p.drained),
            stats: previous.and_then(|p| p.stats),
        };
        self.store.put_node(&node)?;
        self.store.flush().await?;
        if let Some(rabbit) = &self.rabbit {
            rabbit.set_users(self.broker_users()?).await?;
        }
        if let Some(broker) = self.broker() {
            broker.declare_work_queue(id).await?;
        }
        Ok(())
    }

    /// Drains a node (`drained`) or puts it back in service. A drained node gets no new jobs
    /// or apps; the jobs it runs finish there, and its apps are placed on other workers (the
    /// old copy stops once the node hears it is no longer wanted). It stays drained across
    /// restarts and rejoins.
    pub async fn drain_node(
        &self,
        id: &str,
        drained: bool,
    ) -> Result<NodeRecord, OrchestratorError> {
        let mut node = self
            .store
            .node(id)?
            .ok_or_else(|| OrchestratorError::Invalid(format!("no node `{id}` in the cluster")))?;
        node.drained = drained;
        self.store.put_node(&node)?;
        self.store.flush().await?;
        if let Some(l) = lock(&self.sched).live.get_mut(id) {
            l.drained = drained;
        }
        tracing::info!(node = %id, drained, "node drain changed");
        if drained {
            self.move_lost_apps()?;
        }
        self.wake.notify_one();
        Ok(node)
    }

    // ---- running ------------------------------------------------------------------------

    /// Runs the orchestrator's loops until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        broker_ready: watch::Receiver<bool>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) {
        let me = self.clone();
        let token = shutdown.clone();
        tasks.spawn(async move { me.connection_loop(broker_ready, token).await });
        let me = self.clone();
        let token = shutdown.clone();
        tasks.spawn(async move { me.placement_loop(token).await });
        let me = self.clone();
        let token = shutdown.clone();
        tasks.spawn(async move { me.poll_branches(token).await });
        let me = self.clone();
        let token = shutdown.clone();
        tasks.spawn(async move { me.scheduler_loop(token).await });
        let me = self.clone();
        let token = shutdown.clone();
        tasks.spawn(async move { me.indexer_loop(token).await });
    }

    async fn placement_loop(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tick.tick() => {
                    if self.broker().is_none() {
                        continue;
                    }
                    if let Err(error) = self.check_liveness() {
                        tracing::error!(%error, "liveness check failed");
                    }
                    if let Err(error) = self.move_lost_apps() {
                        tracing::error!(%error, "moving the apps of silent nodes failed");
                    }
                }
            }
            if let Err(error) = self.place_jobs().await {
                tracing::error!(%error, "placement failed");
            }
            if let Err(error) = self.place_deployments().await {
                tracing::error!(%error, "placing deployments failed");
            }
        }
    }

    /// Keeps an admin connection to the broker, declares the topology and consumes the
    /// workers' queues; reconnects whenever the broker goes away.
    async fn connection_loop(
        self: Arc<Self>,
        mut broker_ready: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            if !*broker_ready.borrow() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = broker_ready.changed() => continue,
                }
            }
            let url = self.amqp_url(ADMIN_USER);
            let first = !self.purged.load(std::sync::atomic::Ordering::Relaxed);
            let session = async {
                let broker = Arc::new(Broker::connect(&url, "kraken-orchestrator").await?);
                broker.declare_topology().await?;
                for node in self.store.nodes()? {
                    broker.declare_work_queue(&node.id).await?;
                    // work requests left from an earlier term would run jobs the store
                    // has since placed elsewhere or finished: the store decides alone
                    if first {
                        let n = broker.purge_work_queue(&node.id).await?;
                        if n > 0 {
                            tracing::info!(node = %node.id, dropped = n, "dropped work requests of an earlier term; their jobs are placed again");
                        }
                    }
                }
                Ok::<_, OrchestratorError>(broker)
            };
            let broker = match session.await {
                Ok(b) => b,
                Err(error) => {
                    tracing::warn!(%error, "broker connection failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            self.purged
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("orchestrator connected to the broker");
            // no heartbeat could arrive while we had no broker: nobody is late yet
            for live in lock(&self.sched).live.values_mut() {
                live.last_seen = Instant::now();
            }
            self.broker.send_replace(Some(broker.clone()));
            self.wake.notify_one();
            let session = CancellationToken::new();
            let consumers = tokio::join!(
                self.consume_events(&broker, &session),
                self.consume_logs(&broker, &session),
                self.consume_deploy_events(&broker, &session),
                self.consume_heartbeats(&broker, &session),
                async {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = session.cancelled() => {}
                    }
                    session.cancel();
                }
            );
            let _ = consumers;
            self.broker.send_replace(None);
            broker.close().await;
            if !shutdown.is_cancelled() {
                tracing::warn!("lost the broker connection; reconnecting");
            }
        }
    }

    async fn consume_events(&self, broker: &Broker, session: &CancellationToken) {
        let prefetch = self.config.broker.prefetch;
        let mut c = match broker.consume::<JobEvent>("events", prefetch).await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "cannot consume events");
                session.cancel();
                return;
            }
        };
        loop {
            let batch = tokio::select! {
                _ = session.cancelled() => return,
                b = c.next_batch(EVENT_BATCH) => b,
            };
            if batch.is_empty() {
                session.cancel();
                return;
            }
            for d in &batch {
                if let Err(error) = self.apply_event(d.msg.clone()).await {
                    tracing::error!(%error, job = %d.msg.job, "cannot apply job event");
                }
            }
            // an outcome is acknowledged to the worker only once it is durable here
            if let Err(error) = self.store.flush().await {
                tracing::error!(%error, "cannot flush job events; they will be delivered again");
                session.cancel();
                return;
            }
            for d in batch {
                if let Err(error) = d.ack().await {
                    tracing::warn!(%error, "ack failed");
                }
            }
        }
    }

    async fn consume_deploy_events(&self, broker: &Broker, session: &CancellationToken) {
        // acknowledged once durable, like job events
        self.consume_each(broker, session, true, |me, ev: DeployEvent| {
            me.apply_deploy_event(ev)
        })
        .await
    }

    async fn consume_logs(&self, broker: &Broker, session: &CancellationToken) {
        self.consume_each(broker, session, false, |me, batch: LogBatch| {
            me.apply_logs(batch)
        })
        .await
    }

    /// Applies the messages of `T`'s queue one at a time, acknowledging each once applied
    /// (and, with `durable`, once committed); ends the session when the queue goes.
    async fn consume_each<T: crate::broker::messages::Message + Clone>(
        &self,
        broker: &Broker,
        session: &CancellationToken,
        durable: bool,
        apply: impl Fn(&Self, T) -> Result<(), OrchestratorError>,
    ) {
        let prefetch = self.config.broker.prefetch;
        let mut c = match broker.consume::<T>(T::QUEUE, prefetch).await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, queue = T::QUEUE, "cannot consume");
                session.cancel();
                return;
            }
        };
        loop {
            let d = tokio::select! {
                _ = session.cancelled() => return,
                d = c.next() => d,
            };
            let Some(d) = d else {
                session.cancel();
                return;
            };
            if let Err(error) = apply(self, d.msg.clone()) {
                tracing::error!(%error, queue = T::QUEUE, "cannot apply a message");
            }
            if durable {
                if let Err(error) = self.store.flush().await {
                    tracing::error!(%error, queue = T::QUEUE, "cannot flush; the message will be delivered again");
                    session.cancel();
                    return;
                }
            }
            let _ = d.ack().await;
        }
    }

    async fn consume_heartbeats(&self, broker: &Broker, session: &CancellationToken) {
        let mut c = match broker.consume::<Heartbeat>("sysinfo", 64).await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "cannot consume heartbeats");
                session.cancel();
                return;
            }
        };
        loop {
            let d = tokio::select! {
                _ = session.cancelled() => return,
                d = c.next() => d,
            };
            let Some(d) = d else {
                session.cancel();
                return;
            };
            if let Err(error) = self.apply_heartbeat(d.msg.clone()) {
                tracing::error!(%error, "cannot apply heartbeat");
            }
            let _ = d.ack().await;
        }
    }

    /// Log lines of a job.
    pub fn logs(&self, id: Uuid) -> Result<Vec<LogLine>, OrchestratorError> {
        Ok(self.store.logs(id)?)
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (our sections only
/// update plain maps, which stay consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
