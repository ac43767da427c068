//! The persistent state of the cluster: nodes, jobs and job log lines, behind our own types,
//! and the Raft log and replicated state machine that carry them to the other voters
//! ([`raft`]).
//!
//! sled (0.34) is the engine today; nothing outside this module names it, so swapping in
//! redb or fjall changes this module only. Writes that a caller is told about are flushed
//! first ([`Store::flush`]). Flushes are group commits: callers that arrive while a flush
//! runs share the next one (sled 0.34's `flush_async`, which deadlocks under concurrency,
//! is never used).
//!
//! Two copies of the records live here. The *working* trees are what the orchestrator
//! reads and writes; the *replica* trees are Raft's state machine, written only by
//! committed log entries. While this node leads, every write to the working trees is
//! recorded, and [`Store::flush`] returns only once the recorded writes are committed by a
//! majority of voters (a [`Replicator`]). When a node starts to lead it rebuilds its working
//! trees from its replica ([`Store::adopt_replica`]): whatever an earlier term wrote
//! locally and never committed is gone with it.

pub mod raft;

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Engine(#[from] sled::Error),
    #[error("store record {key} is damaged: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("store: cannot encode record: {0}")]
    Encode(serde_json::Error),
    #[error("store: flush failed: {0}")]
    Flush(String),
    /// The writes could not be committed by a majority of the cluster's voters.
    #[error("no quorum: {0}")]
    NoQuorum(String),
}

/// The record kinds, as named in replicated writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TreeName {
    Nodes,
    Jobs,
    Logs,
    Settings,
    Deployments,
    /// The NetKAN pipeline: mod status (`status/<id>`) and the indexer's queue
    /// (`index/<job id>`).
    Netkan,
}

impl TreeName {
    const ALL: [TreeName; 6] = [
        Self::Nodes,
        Self::Jobs,
        Self::Logs,
        Self::Settings,
        Self::Deployments,
        Self::Netkan,
    ];
}

/// One write to a tree: a value to put, or `None` to remove the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub tree: TreeName,
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64_opt", default)]
    pub value: Option<Vec<u8>>,
}

/// Commits recorded writes on a majority of voters (the cluster module's Raft).
pub trait Replicator: Send + Sync {
    fn replicate(
        &self,
        ops: Vec<Op>,
    ) -> futures::future::BoxFuture<'static, Result<(), StoreError>>;
}

/// Writes recorded since the last flush, while this node leads.
#[derive(Default)]
struct Recording {
    to: Option<Arc<dyn Replicator>>,
    pending: Vec<Op>,
}

impl Recording {
    /// Keeps `ops` for the next flush, if this node leads.
    fn record(&mut self, ops: impl IntoIterator<Item = Op>) {
        if self.to.is_some() {
            self.pending.extend(ops);
        }
    }
}

/// The life of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Stored, waiting for a free slot (or for its retry backoff).
    Queued,
    /// Sent to a worker, not yet started there.
    Assigned,
    /// Running on a worker.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    pub const ALL: [JobState; 6] = [
        Self::Queued,
        Self::Assigned,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];
}

/// Where a job runs: in its own container (the default) or inside the worker process, a fast
/// path only kinds that declare themselves safe for it may take.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, async_graphql::Enum,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Isolation {
    #[default]
    Container,
    InProcess,
}

/// Resource limits of one job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_mb: u64,
    pub cpus: f64,
    pub timeout_secs: u64,
}

/// One try of a job on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub node: String,
    pub assigned_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// How it ended: `succeeded`, an error, or `lost: …` when its node died.
    pub outcome: Option<String>,
}

/// A job and everything known about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: Uuid,
    pub kind: String,
    pub spec: serde_json::Value,
    pub priority: i32,
    pub state: JobState,
    pub isolation: Isolation,
    pub limits: Limits,
    pub max_attempts: u32,
    /// The current attempt number (1-based; 0 before the first placement).
    pub attempt: u32,
    pub node: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Not placed before this time (retry backoff).
    pub not_before: i64,
    pub exit_code: Option<i64>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempts: Vec<Attempt>,
    /// Attempts lost with their worker (it went silent); they do not count against
    /// `max_attempts`, but a job that loses too many fails.
    #[serde(default)]
    pub lost: u32,
}

impl JobRecord {
    /// Attempts that ran and failed or are running: those `max_attempts` limits.
    pub fn counted_attempts(&self) -> u32 {
        self.attempt.saturating_sub(self.lost)
    }
}

/// The life of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeployStatus {
    /// Stored, waiting for a node.
    Requested,
    /// A worker clones the repository and builds the image.
    Building,
    /// The container started; its health check has not passed yet.
    Starting,
    Running,
    /// It cannot run (the reason says why); nothing restarts it but a redeploy.
    Failed,
    /// An operator stopped it.
    Stopped,
}

impl DeployStatus {
    /// Whether a worker holds (or should hold) a container for it.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Building | Self::Starting | Self::Running)
    }
}

/// An app deployment and everything known about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: Uuid,
    pub git_url: String,
    pub branch: String,
    pub status: DeployStatus,
    /// Why it failed (or why it is not running yet).
    pub reason: Option<String>,
    /// Bumped at each placement: events of an older generation are stale.
    pub generation: u32,
    pub node: Option<String>,
    /// The app's name and port, from its manifest (known once a worker read it).
    pub app: Option<String>,
    pub port: Option<u16>,
    /// The commit that runs.
    pub commit: Option<String>,
    /// Where it answers (`http://<node address>:<port>/`).
    pub url: Option<String>,
    /// Memory it may use, in MiB.
    pub memory_mb: u64,
    /// The generation that serves on its node now (during a redeploy, the one before).
    #[serde(default)]
    pub serving_generation: Option<u32>,
    /// Whether a new commit on the branch is deployed by itself.
    #[serde(default)]
    pub auto_redeploy: bool,
    /// A label the node must carry (`worker.labels`).
    #[serde(default)]
    pub label: Option<String>,
    /// The CPU architecture the node must have (`x86_64`, `aarch64`, `arm`).
    #[serde(default)]
    pub arch: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl DeploymentRecord {
    /// The node that holds it, or is to: placed there and neither failed nor stopped.
    pub fn holder(&self) -> Option<&str> {
        let held = self.status.is_active() || self.status == DeployStatus::Requested;
        self.node.as_deref().filter(|_| held)
    }
}

/// What the NetKAN pipeline knows of one mod (NetKAN's status page fields; times are
/// RFC 3339 UTC).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModStatus {
    pub last_checked: Option<String>,
    pub last_inflated: Option<String>,
    pub last_indexed: Option<String>,
    pub last_downloaded: Option<String>,
    pub last_error: Option<String>,
    pub last_warnings: Option<String>,
    pub release_date: Option<String>,
    pub success: bool,
    pub frozen: bool,
    #[serde(default)]
    pub resources: serde_json::Map<String, serde_json::Value>,
}

/// A node as the orchestrator knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    /// Address other nodes reach it at.
    pub address: String,
    pub api_port: u16,
    pub version: String,
    pub joined_at: i64,
    pub last_seen: i64,
    pub slots: u32,
    pub stats: Option<NodeStats>,
    /// Drained by an operator: nothing new is placed on it and its apps move elsewhere.
    #[serde(default)]
    pub drained: bool,
}

/// A node's resources, from its latest heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize, async_graphql::SimpleObject)]
#[graphql(rename_fields = "camelCase")]
pub struct NodeStats {
    pub cpus: u32,
    pub cpu_percent: f64,
    pub load1: f64,
    pub memory_total_mb: u64,
    pub memory_used_mb: u64,
    pub disk_total_mb: u64,
    pub disk_free_mb: u64,
    /// Kraken containers running on the node.
    pub containers: Vec<String>,
    /// Jobs the node is running (`id/attempt`).
    pub running_jobs: Vec<String>,
    /// Deployments the node holds (`id/generation`), building or running.
    #[serde(default)]
    pub apps: Vec<String>,
    pub docker_ok: bool,
    /// The node's CPU architecture (`x86_64`, `aarch64`, `arm`).
    #[serde(default)]
    pub arch: String,
    /// Its `worker.labels`.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// One captured line of a job's output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    pub at: i64,
    pub attempt: u32,
    /// `stdout`, `stderr` or `kraken` (lines the agent adds).
    pub stream: String,
    pub text: String,
}

/// The store: one sled database with a tree per record kind (working and replica), and
/// Raft's log.
#[derive(Clone)]
pub struct Store {
    nodes: sled::Tree,
    jobs: sled::Tree,
    logs: sled::Tree,
    settings: sled::Tree,
    deployments: sled::Tree,
    netkan: sled::Tree,
    /// The state machine's copies, by [`TreeName`] order.
    replica: [sled::Tree; 6],
    raft_log: sled::Tree,
    raft_meta: sled::Tree,
    db: sled::Db,
    flusher: Arc<Flusher>,
    recording: Arc<std::sync::Mutex<Recording>>,
}

/// Group commit: writers take a ticket, one flush at a time runs, and a flush that started
/// after a ticket was taken covers it, so concurrent callers share one fsync.
#[derive(Default)]
struct Flusher {
    requested: std::sync::atomic::AtomicU64,
    flushed: tokio::sync::Mutex<u64>,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(StoreError::Encode)
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// One record of `tree` by its text key.
fn get<T: for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    key: &str,
) -> Result<Option<T>, StoreError> {
    tree.get(key.as_bytes())?
        .map(|v| decode(key.as_bytes(), &v))
        .transpose()
}

impl Store {
    /// Opens (or creates) the store in `dir`. A previous process of this agent may still be
    /// letting go of the files; its lock is waited for a few seconds.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let config = sled::Config::new().path(dir).cache_capacity(8 << 20);
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // sled wraps the lock's EWOULDBLOCK in an `Other` error naming it
                Err(sled::Error::Io(e))
                    if tries < 50
                        && (e.kind() == std::io::ErrorKind::WouldBlock
                            || e.to_string().contains("could not acquire lock")) =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Self {
            nodes: db.open_tree("nodes")?,
            jobs: db.open_tree("jobs")?,
            logs: db.open_tree("logs")?,
            settings: db.open_tree("settings")?,
            deployments: db.open_tree("deployments")?,
            netkan: db.open_tree("netkan")?,
            replica: [
                db.open_tree("r_nodes")?,
                db.open_tree("r_jobs")?,
                db.open_tree("r_logs")?,
                db.open_tree("r_settings")?,
                db.open_tree("r_deployments")?,
                db.open_tree("r_netkan")?,
            ],
            raft_log: db.open_tree("raft_log")?,
            raft_meta: db.open_tree("raft_meta")?,
            db,
            flusher: Default::default(),
            recording: Default::default(),
        })
    }

    fn working(&self, tree: TreeName) -> &sled::Tree {
        match tree {
            TreeName::Nodes => &self.nodes,
            TreeName::Jobs => &self.jobs,
            TreeName::Logs => &self.logs,
            TreeName::Settings => &self.settings,
            TreeName::Deployments => &self.deployments,
            TreeName::Netkan => &self.netkan,
        }
    }

    fn replica(&self, tree: TreeName) -> &sled::Tree {
        &self.replica[tree as usize]
    }

    fn recording(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.recording.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts one value in a working tree and records it (under the recording lock, so the
    /// recorded order is the order the tree saw).
    fn put(&self, tree: TreeName, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let mut rec = self.recording();
        self.working(tree).insert(key, value.clone())?;
        rec.record([Op {
            tree,
            key: key.to_vec(),
            value: Some(value),
        }]);
        Ok(())
    }

    /// From now on, writes are committed through `to` at each flush (this node leads).
    pub fn start_recording(&self, to: Arc<dyn Replicator>) {
        let mut rec = self.recording();
        rec.to = Some(to);
        rec.pending.clear();
    }

    /// Writes are local only again (this node stopped leading); unflushed ones are dropped
    /// from replication.
    pub fn stop_recording(&self) {
        let mut rec = self.recording();
        rec.to = None;
        rec.pending.clear();
    }

    /// Whether writes wait to be flushed to the replicas.
    pub fn has_pending(&self) -> bool {
        !self.recording().pending.is_empty()
    }

    /// Replaces the working trees with the replicated state (this node starts to lead).
    pub fn adopt_replica(&self) -> Result<(), StoreError> {
        let _rec = self.recording();
        for tree in TreeName::ALL {
            let working = self.working(tree);
            working.clear()?;
            for kv in self.replica(tree).iter() {
                let (k, v) = kv?;
                working.insert(k, v)?;
            }
        }
        Ok(())
    }

    /// Every working record as writes, to seed a new cluster's replicas with the records a
    /// data dir had before it replicated anything.
    pub fn working_ops(&self) -> Result<Vec<Op>, StoreError> {
        let mut ops = Vec::new();
        for tree in TreeName::ALL {
            for kv in self.working(tree).iter() {
                let (k, v) = kv?;
                ops.push(Op {
                    tree,
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                });
            }
        }
        Ok(ops)
    }

    /// Records every working record for the next flush (seeds a new cluster's replicas).
    pub fn record_working(&self) -> Result<(), StoreError> {
        let ops = self.working_ops()?;
        self.recording().record(ops);
        Ok(())
    }

    /// Test support, never called by the agent: makes the replicated state what the working
    /// trees hold, as if every write so far had been committed. Tests use it to fabricate
    /// what a crash leaves behind in a stopped agent's data dir.
    #[doc(hidden)]
    pub fn commit_working_offline(&self) -> Result<(), StoreError> {
        let ops = self.working_ops()?;
        self.apply_ops(&ops)
    }

    /// Whether the replicated state holds no records at all.
    pub fn replica_is_empty(&self) -> bool {
        self.replica.iter().all(|t| t.is_empty())
    }

    /// A node record as the replicated state has it (what a follower knows).
    pub fn replica_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        get(self.replica(TreeName::Nodes), id)
    }

    /// The node ids the replicated state knows.
    pub fn replica_node_ids(&self) -> Result<Vec<String>, StoreError> {
        self.replica(TreeName::Nodes)
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    /// A setting as the replicated state has it.
    pub fn replica_setting<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        get(self.replica(TreeName::Settings), key)
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let ticket = self.flusher.requested.fetch_add(1, SeqCst) + 1;
        let mut flushed = self.flusher.flushed.lock().await;
        if *flushed >= ticket {
            return Ok(());
        }
        let covers = self.flusher.requested.load(SeqCst);
        let (ops, to) = {
            let mut rec = self.recording();
            (std::mem::take(&mut rec.pending), rec.to.clone())
        };
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Flush(e.to_string()))??;
        if let (Some(to), false) = (to, ops.is_empty()) {
            if let Err(e) = to.replicate(ops.clone()).await {
                // kept, in order, ahead of later writes: the next flush tries them again
                let mut rec = self.recording();
                if rec.to.is_some() {
                    let later = std::mem::replace(&mut rec.pending, ops);
                    rec.pending.extend(later);
                }
                return Err(e);
            }
        }
        *flushed = covers;
        Ok(())
    }

    pub fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.put(TreeName::Jobs, job.id.as_bytes(), encode(job)?)
    }

    pub fn job(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        self.jobs
            .get(id.as_bytes())?
            .map(|v| decode(id.to_string().as_bytes(), &v))
            .transpose()
    }

    /// Reads, changes and writes one job atomically with respect to other updates of it.
    /// `change` returns whether it changed anything; the new record is returned when it did.
    pub fn update_job(
        &self,
        id: Uuid,
        change: impl FnMut(&mut JobRecord) -> bool,
    ) -> Result<Option<JobRecord>, StoreError> {
        self.update(TreeName::Jobs, id, change)
    }

    /// Compare-and-swap update of one record keyed by a UUID (see [`Store::update_job`]).
    fn update<T: Serialize + for<'de> Deserialize<'de>>(
        &self,
        tree: TreeName,
        id: Uuid,
        mut change: impl FnMut(&mut T) -> bool,
    ) -> Result<Option<T>, StoreError> {
        let working = self.working(tree);
        loop {
            let Some(old) = working.get(id.as_bytes())? else {
                return Ok(None);
            };
            let mut record: T = decode(id.to_string().as_bytes(), &old)?;
            if !change(&mut record) {
                return Ok(None);
            }
            let new = encode(&record)?;
            let mut rec = self.recording();
            if working
                .compare_and_swap(id.as_bytes(), Some(old), Some(new.clone()))?
                .is_ok()
            {
                rec.record([Op {
                    tree,
                    key: id.as_bytes().to_vec(),
                    value: Some(new),
                }]);
                return Ok(Some(record));
            }
        }
    }

    pub fn put_deployment(&self, d: &DeploymentRecord) -> Result<(), StoreError> {
        self.put(TreeName::Deployments, d.id.as_bytes(), encode(d)?)
    }

    pub fn deployment(&self, id: Uuid) -> Result<Option<DeploymentRecord>, StoreError> {
        self.deployments
            .get(id.as_bytes())?
            .map(|v| decode(id.to_string().as_bytes(), &v))
            .transpose()
    }

    /// Changes one deployment atomically (see [`Store::update_job`]).
    pub fn update_deployment(
        &self,
        id: Uuid,
        change: impl FnMut(&mut DeploymentRecord) -> bool,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        self.update(TreeName::Deployments, id, change)
    }

    /// Every deployment, oldest first.
    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.deployments
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Every job, oldest first (ids are time-ordered UUIDv7).
    pub fn jobs(&self) -> impl Iterator<Item = Result<JobRecord, StoreError>> + '_ {
        self.jobs.iter().map(|kv| {
            let (k, v) = kv?;
            decode(&k, &v)
        })
    }

    /// Stores a piece of cluster state that is not a record (the enrollment window, …).
    pub fn put_setting<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.put(TreeName::Settings, key.as_bytes(), encode(value)?)
    }

    pub fn setting<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        get(&self.settings, key)
    }

    pub fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.put(TreeName::Nodes, node.id.as_bytes(), encode(node)?)
    }

    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        get(&self.nodes, id)
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.nodes
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// One mod's pipeline status.
    pub fn mod_status(&self, id: &str) -> Result<Option<ModStatus>, StoreError> {
        get(&self.netkan, &format!("status/{id}"))
    }

    /// Every mod's status, by identifier.
    pub fn mod_statuses(&self) -> Result<Vec<(String, ModStatus)>, StoreError> {
        self.netkan
            .scan_prefix(b"status/")
            .map(|kv| {
                let (k, v) = kv?;
                let id = String::from_utf8_lossy(&k["status/".len()..]).into_owned();
                Ok((id, decode(&k, &v)?))
            })
            .collect()
    }

    /// Changes one mod's status (a default one when it has none); returns the new status.
    /// Only the pipeline's single writer (the orchestrator) calls it.
    pub fn update_mod_status(
        &self,
        id: &str,
        change: impl FnOnce(&mut ModStatus),
    ) -> Result<ModStatus, StoreError> {
        let mut status = self.mod_status(id)?.unwrap_or_default();
        change(&mut status);
        self.put(
            TreeName::Netkan,
            format!("status/{id}").as_bytes(),
            encode(&status)?,
        )?;
        Ok(status)
    }

    /// Puts an entry on the indexer's queue (keys are time-ordered job ids).
    pub fn push_index<T: Serialize>(&self, job: Uuid, entry: &T) -> Result<(), StoreError> {
        let mut key = b"index/".to_vec();
        key.extend_from_slice(job.as_bytes());
        self.put(TreeName::Netkan, &key, encode(entry)?)
    }

    /// The oldest entries of the indexer's queue, `most` at the most, oldest first (entries
    /// are keyed by their inflate job's id, which grows with time).
    pub fn next_indexes<T: for<'de> Deserialize<'de>>(
        &self,
        most: usize,
    ) -> Result<Vec<(Uuid, T)>, StoreError> {
        self.netkan
            .scan_prefix(b"index/")
            .take(most)
            .map(|kv| {
                let (k, v) = kv?;
                let id = Uuid::from_slice(&k["index/".len()..]).unwrap_or_default();
                Ok((id, decode(&k, &v)?))
            })
            .collect()
    }

    /// Entries waiting on the indexer's queue.
    pub fn index_depth(&self) -> usize {
        self.netkan.scan_prefix(b"index/").count()
    }

    /// Takes an entry off the indexer's queue.
    pub fn pop_index(&self, job: Uuid) -> Result<(), StoreError> {
        let mut key = b"index/".to_vec();
        key.extend_from_slice(job.as_bytes());
        let mut rec = self.recording();
        self.netkan.remove(&key)?;
        rec.record([Op {
            tree: TreeName::Netkan,
            key,
            value: None,
        }]);
        Ok(())
    }

    /// Appends log lines of a job, keeping at most `keep` lines (the oldest go first).
    pub fn append_logs(&self, job: Uuid, lines: &[LogLine], keep: u32) -> Result<(), StoreError> {
        let prefix = job.as_bytes();
        let next = match self.logs.scan_prefix(prefix).next_back() {
            Some(kv) => seq_of(&kv?.0) + 1,
            None => 0,
        };
        let mut ops = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            ops.push(Op {
                tree: TreeName::Logs,
                key: log_key(job, next + i as u64),
                value: Some(encode(line)?),
            });
        }
        let end = next + lines.len() as u64;
        if end > keep as u64 {
            let first_kept = end - keep as u64;
            for kv in self.logs.range(log_key(job, 0)..log_key(job, first_kept)) {
                ops.push(Op {
                    tree: TreeName::Logs,
                    key: kv?.0.to_vec(),
                    value: None,
                });
            }
        }
        let mut rec = self.recording();
        self.logs.apply_batch(batch_of(&ops))?;
        rec.record(ops);
        Ok(())
    }

    pub fn logs(&self, job: Uuid) -> Result<Vec<LogLine>, StoreError> {
        self.logs
            .scan_prefix(job.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }
}

/// The writes to one tree as a sled batch.
fn batch_of<'a>(ops: impl IntoIterator<Item = &'a Op>) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for op in ops {
        match &op.value {
            Some(v) => batch.insert(op.key.as_slice(), v.as_slice()),
            None => batch.remove(op.key.as_slice()),
        }
    }
    batch
}

/// Bytes as base64 text in replicated writes (JSON arrays of numbers would triple them).
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::b64::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

fn log_key(job: Uuid, seq: u64) -> Vec<u8> {
    let mut key = job.as_bytes().to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn seq_of(key: &[u8]) -> u64 {
    key.get(16..24)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobRecord {
        JobRecord {
            id: Uuid::now_v7(),
            kind: "echo".into(),
            spec: serde_json::json!({"message": "hi"}),
            priority: 0,
            state: JobState::Queued,
            isolation: Isolation::Container,
            limits: Limits {
                memory_mb: 64,
                cpus: 1.0,
                timeout_secs: 10,
            },
            max_attempts: 3,
            attempt: 0,
            node: None,
            created_at: 1,
            started_at: None,
            finished_at: None,
            not_before: 0,
            exit_code: None,
            result: None,
            error: None,
            attempts: vec![],
            lost: 0,
        }
    }

    #[tokio::test]
    async fn jobs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let j = job();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_job(&j).unwrap();
            store
                .update_job(j.id, |j| {
                    j.state = JobState::Succeeded;
                    true
                })
                .unwrap();
            store.flush().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.job(j.id).unwrap().unwrap().state, JobState::Succeeded);
        assert_eq!(store.jobs().count(), 1);
    }

    /// sled's own `flush_async` deadlocks when many tasks flush at once; ours must not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.put_job(&job()).unwrap();
                    store.flush().await.unwrap();
                })
            })
            .collect();
        let all = futures::future::join_all(tasks);
        tokio::time::timeout(std::time::Duration::from_secs(30), all)
            .await
            .expect("every flush completes");
        assert_eq!(store.jobs().count(), 200);
    }

    #[test]
    fn logs_are_bounded_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = Uuid::now_v7();
        let line = |i: usize| LogLine {
            at: i as i64,
            attempt: 1,
            stream: "stdout".into(),
            text: format!("line {i}"),
        };
        let lines: Vec<_> = (0..7).map(line).collect();
        store.append_logs(id, &lines[..4], 5).unwrap();
        store.append_logs(id, &lines[4..], 5).unwrap();
        let kept = store.logs(id).unwrap();
        assert_eq!(kept, lines[2..].to_vec());
    }
}
