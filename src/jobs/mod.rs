//! The job kinds. A kind is one module implementing [`JobKind`], listed once in [`KINDS`];
//! the orchestrator validates specs with it, the worker runs it in-process or the job
//! container runs it through `kraken job run`.

mod echo;
mod fail;
pub mod inflate;
mod memhog;
pub mod mirror;
mod sleep;

use futures::future::BoxFuture;
use serde_json::Value;

/// Why a job did not produce a result.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum JobError {
    /// The spec is wrong: retrying cannot help.
    #[error("bad spec: {0}")]
    BadSpec(String),
    /// The job ran and failed; a retry may succeed.
    #[error("{0}")]
    Failed(String),
    #[error("unknown job kind `{0}` (known: {known})", known = names().join(", "))]
    UnknownKind(String),
}

impl JobError {
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Failed(_))
    }
}

/// Where a running job writes its log lines.
pub struct JobContext {
    log: Box<dyn Fn(&str) + Send + Sync>,
}

impl JobContext {
    pub fn new(log: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self { log: Box::new(log) }
    }

    /// Logs one line of the job's output.
    pub fn log(&self, line: &str) {
        (self.log)(line)
    }
}

/// One kind of job.
pub trait JobKind: Send + Sync {
    fn name(&self) -> &'static str;
    /// Checks a spec before the job is accepted; the error is shown to the operator.
    fn validate(&self, spec: &Value) -> Result<(), JobError>;
    /// Runs the job, returning its result.
    fn run<'a>(
        &'a self,
        spec: &'a Value,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Value, JobError>>;
    /// Whether the worker may run it inside its own process (the fast path): only kinds that
    /// cannot harm the agent.
    fn in_process_safe(&self) -> bool {
        false
    }
    /// What its container is given from the worker's configuration: a network, settings,
    /// writable directories. Nothing by default.
    fn container_setup(&self, _config: &crate::config::Config) -> ContainerSetup {
        ContainerSetup::default()
    }
}

/// The settings inside a job container: those its kind's `container_setup` put in the
/// environment.
fn settings_inside() -> Result<crate::config::Config, JobError> {
    crate::config::Config::load(None, std::env::vars(), &crate::config::Overrides::default())
        .map_err(|e| JobError::Failed(format!("settings: {e}")))
}

/// What a kind's container gets beyond the job itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSetup {
    /// A network (Docker's default bridge); without it the container has none.
    pub network: bool,
    /// `NAME=value` environment entries (settings, never the worker's own secrets).
    pub env: Vec<String>,
    /// Host directories mounted writable at a path in the container; the runtime creates
    /// them and makes them writable by the container's unprivileged user.
    pub binds: Vec<(std::path::PathBuf, String)>,
}

/// Every kind this agent knows.
pub const KINDS: &[&dyn JobKind] = &[
    &echo::Echo,
    &sleep::Sleep,
    &fail::Fail,
    &memhog::MemHog,
    &inflate::Inflate,
    &mirror::Mirror,
];

pub fn find(name: &str) -> Result<&'static dyn JobKind, JobError> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.name() == name)
        .ok_or_else(|| JobError::UnknownKind(name.to_owned()))
}

pub fn names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name()).collect()
}

/// The spec as an object, or a clear error.
fn object(spec: &Value) -> Result<&serde_json::Map<String, Value>, JobError> {
    spec.as_object()
        .ok_or_else(|| JobError::BadSpec(format!("spec must be a JSON object, got {spec}")))
}

/// Rejects fields a kind does not know, so typos are caught at enqueue.
fn only_fields(spec: &Value, known: &[&str]) -> Result<(), JobError> {
    for key in object(spec)?.keys() {
        if !known.contains(&key.as_str()) {
            return Err(JobError::BadSpec(format!(
                "unknown field `{key}` (expected one of: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// An optional unsigned field no larger than `max`.
fn u64_field(spec: &Value, key: &str, max: u64) -> Result<Option<u64>, JobError> {
    match object(spec)?.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(JobError::BadSpec(format!(
                "`{key}` must be a whole number from 0 to {max}, got {v}"
            ))),
        },
    }
}

/// An optional string field.
fn str_field<'a>(spec: &'a Value, key: &str) -> Result<Option<&'a str>, JobError> {
    match object(spec)?.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(JobError::BadSpec(format!(
            "`{key}` must be a string, got {v}"
        ))),
    }
}

/// The entry of a job container (`kraken job run`): runs the kind named by `KRAKEN_JOB_KIND`
/// with the spec in `KRAKEN_JOB_SPEC`, logs to stdout and ends with the result line the
/// runtime reads. Returns the process exit code.
pub async fn run_from_env() -> i32 {
    use crate::runtime::{ContainerResult, RESULT_MARKER};
    let outcome = async {
        let kind = std::env::var("KRAKEN_JOB_KIND")
            .map_err(|_| JobError::BadSpec("KRAKEN_JOB_KIND is not set".into()))?;
        let spec = std::env::var("KRAKEN_JOB_SPEC").unwrap_or_else(|_| "{}".into());
        let spec: Value = serde_json::from_str(&spec)
            .map_err(|e| JobError::BadSpec(format!("KRAKEN_JOB_SPEC is not JSON: {e}")))?;
        let kind = find(&kind)?;
        kind.validate(&spec)?;
        let ctx = JobContext::new(|line| {
            // a job's own output must never pass for the result line
            match line.strip_prefix(RESULT_MARKER) {
                Some(rest) => println!("KRAKEN_RESULT: {rest}"),
                None => println!("{line}"),
            }
        });
        kind.run(&spec, &ctx).await
    }
    .await;
    let (code, result) = match outcome {
        Ok(v) => (
            0,
            ContainerResult {
                ok: true,
                result: Some(v),
                error: None,
                retryable: false,
            },
        ),
        Err(e) => (
            1,
            ContainerResult {
                ok: false,
                result: None,
                error: Some(e.to_string()),
                retryable: e.retryable(),
            },
        ),
    };
    let line = serde_json::to_string(&result)
        .unwrap_or_else(|_| "{\"ok\":false,\"retryable\":false}".into());
    println!("{RESULT_MARKER}{line}");
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kind_lists_the_known_ones() {
        let err = find("ecko").err().unwrap().to_string();
        assert!(err.contains("ecko") && err.contains("echo"), "{err}");
    }

    #[test]
    fn specs_are_checked() {
        let echo = find("echo").unwrap();
        assert!(echo.validate(&serde_json::json!({"message": "hi"})).is_ok());
        assert!(echo.validate(&serde_json::json!("hi")).is_err());
        assert!(echo.validate(&serde_json::json!({"mesage": "hi"})).is_err());
        let sleep = find("sleep").unwrap();
        assert!(sleep.validate(&serde_json::json!({"ms": -1})).is_err());
    }

    #[tokio::test]
    async fn echo_returns_its_message() {
        let ctx = JobContext::new(|_| {});
        let out = find("echo")
            .unwrap()
            .run(&serde_json::json!({"message": "hi"}), &ctx)
            .await
            .unwrap();
        assert_eq!(out, serde_json::json!({"message": "hi"}));
    }
}
