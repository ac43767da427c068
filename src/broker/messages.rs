//! The typed messages that cross the broker: one Rust type per queue, JSON on the wire.

use crate::store::{Isolation, Limits, NodeStats};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

/// A message type and where it travels.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
    /// The exchange it is published to.
    const EXCHANGE: &'static str;
    /// The queue it lands in (for work requests, the prefix of `work.<node>`).
    const QUEUE: &'static str;
    /// Whether the broker must keep it across its own restarts.
    const PERSISTENT: bool;
}

/// Workers → orchestrator, every heartbeat period, on queue `sysinfo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub sent_at: i64,
    pub slots: u32,
    pub stats: NodeStats,
    /// The node's LAN address now (it may have changed since it joined).
    #[serde(default)]
    pub address: Option<String>,
}

impl Message for Heartbeat {
    const QUEUE: &'static str = "sysinfo";
    const EXCHANGE: &'static str = super::UP_EXCHANGE;
    const PERSISTENT: bool = false;
}

/// Orchestrator → one worker, on queue `work.<node>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WorkRequest {
    RunJob(JobAssignment),
    CancelJob {
        job: Uuid,
        attempt: u32,
    },
    /// Build and run an app (a newer generation replaces an older one of the same id).
    Deploy(DeployAssignment),
    /// Stop and remove an app's container and image (generations up to this one).
    StopDeployment {
        id: Uuid,
        generation: u32,
    },
}

/// One placement of one deployment, as a worker needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployAssignment {
    pub id: Uuid,
    pub generation: u32,
    pub git_url: String,
    pub branch: String,
    pub memory_mb: u64,
}

/// Workers → orchestrator, on queue `deployments`: where a deployment got to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployEvent {
    pub id: Uuid,
    pub generation: u32,
    pub node: String,
    pub at: i64,
    pub status: crate::store::DeployStatus,
    pub reason: Option<String>,
    pub app: Option<String>,
    pub port: Option<u16>,
    pub commit: Option<String>,
    /// With a failure of a redeploy: the generation that keeps serving.
    #[serde(default)]
    pub serving: Option<u32>,
}

impl Message for DeployEvent {
    const QUEUE: &'static str = "deployments";
    const EXCHANGE: &'static str = super::UP_EXCHANGE;
    const PERSISTENT: bool = true;
}

impl Message for WorkRequest {
    const QUEUE: &'static str = "work";
    const EXCHANGE: &'static str = super::WORK_EXCHANGE;
    const PERSISTENT: bool = true;
}

/// One attempt of one job, as a worker needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobAssignment {
    pub job: Uuid,
    pub attempt: u32,
    pub kind: String,
    pub spec: serde_json::Value,
    pub isolation: Isolation,
    pub limits: Limits,
}

/// Workers → orchestrator, on queue `events`: what happened to a job attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEvent {
    pub job: Uuid,
    pub attempt: u32,
    pub node: String,
    pub at: i64,
    pub change: JobChange,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JobChange {
    Started,
    Finished(JobOutcome),
}

/// How an attempt ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobOutcome {
    pub success: bool,
    pub exit_code: Option<i64>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Whether trying again may help (false for a bad spec, say).
    pub retryable: bool,
}

impl Message for JobEvent {
    const QUEUE: &'static str = "events";
    const EXCHANGE: &'static str = super::UP_EXCHANGE;
    const PERSISTENT: bool = true;
}

/// Workers → orchestrator, on queue `logs`: captured output lines of one attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogBatch {
    pub job: Uuid,
    pub attempt: u32,
    pub node: String,
    pub lines: Vec<crate::store::LogLine>,
}

impl Message for LogBatch {
    const QUEUE: &'static str = "logs";
    const EXCHANGE: &'static str = super::UP_EXCHANGE;
    const PERSISTENT: bool = true;
}
