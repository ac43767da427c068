//! The persistent state of the cluster: nodes, jobs and job log lines, behind our own types.
//!
//! sled (0.34) is the engine today; nothing outside this module names it, so swapping in
//! redb or fjall changes this file only. Writes that a caller is told about are flushed
//! first ([`Store::flush`]). Flushes are group commits: callers that arrive while a flush
//! runs share the next one (sled 0.34's `flush_async`, which deadlocks under concurrency,
//! is never used).

use serde::{Deserialize, Serialize};
use std::path::Path;
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
    pub docker_ok: bool,
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

/// The store: one sled database with a tree per record kind.
#[derive(Clone)]
pub struct Store {
    nodes: sled::Tree,
    jobs: sled::Tree,
    logs: sled::Tree,
    settings: sled::Tree,
    db: sled::Db,
    flusher: std::sync::Arc<Flusher>,
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
            db,
            flusher: Default::default(),
        })
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
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Flush(e.to_string()))??;
        *flushed = covers;
        Ok(())
    }

    pub fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.jobs.insert(job.id.as_bytes(), encode(job)?)?;
        Ok(())
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
        mut change: impl FnMut(&mut JobRecord) -> bool,
    ) -> Result<Option<JobRecord>, StoreError> {
        loop {
            let Some(old) = self.jobs.get(id.as_bytes())? else {
                return Ok(None);
            };
            let mut job: JobRecord = decode(id.to_string().as_bytes(), &old)?;
            if !change(&mut job) {
                return Ok(None);
            }
            let new = encode(&job)?;
            if self
                .jobs
                .compare_and_swap(id.as_bytes(), Some(old), Some(new))?
                .is_ok()
            {
                return Ok(Some(job));
            }
        }
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
        self.settings.insert(key.as_bytes(), encode(value)?)?;
        Ok(())
    }

    pub fn setting<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        self.settings
            .get(key.as_bytes())?
            .map(|v| decode(key.as_bytes(), &v))
            .transpose()
    }

    pub fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.nodes.insert(node.id.as_bytes(), encode(node)?)?;
        Ok(())
    }

    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.nodes
            .get(id.as_bytes())?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
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

    /// Appends log lines of a job, keeping at most `keep` lines (the oldest go first).
    pub fn append_logs(&self, job: Uuid, lines: &[LogLine], keep: u32) -> Result<(), StoreError> {
        let prefix = job.as_bytes();
        let next = match self.logs.scan_prefix(prefix).next_back() {
            Some(kv) => seq_of(&kv?.0) + 1,
            None => 0,
        };
        let mut batch = sled::Batch::default();
        for (i, line) in lines.iter().enumerate() {
            batch.insert(log_key(job, next + i as u64), encode(line)?);
        }
        let end = next + lines.len() as u64;
        if end > keep as u64 {
            let first_kept = end - keep as u64;
            for kv in self.logs.range(log_key(job, 0)..log_key(job, first_kept)) {
                batch.remove(kv?.0);
            }
        }
        self.logs.apply_batch(batch)?;
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
