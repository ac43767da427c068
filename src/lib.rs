//! Kraken: a self-organizing cluster agent for a home LAN.
//!
//! # Layout
//!
//! Every device runs the same agent ([`agent::run`]). One agent is the
//! orchestrator; every agent is a worker.
//!
//! - [`config`]: `kraken.toml` + `KRAKEN_*` environment + flags, one validated [`config::Config`].
//! - [`discovery`]: mDNS: this agent's advert (`_kraken._tcp.local.`) and the devices in view.
//! - [`enrollment`]: admission of devices without a token (enrollment window, approvals).
//! - [`identity`]: the node id and the cluster's secrets in the data dir (join and operator
//!   tokens, mode 0600), and the HMAC proofs of the join handshake.
//! - [`store`]: the persistent state (nodes, jobs, job logs) behind our own types; sled today.
//! - [`broker`]: RabbitMQ: the supervised `rabbitmq-server` child, users and vhost, the AMQP
//!   topology and the typed messages that cross it.
//! - [`orchestrator`]: accepts jobs, places them on the least-loaded worker with a free slot,
//!   applies the workers' events to the store, watches liveness and retries.
//! - [`worker`]: joins the orchestrator, sends heartbeats (CPU, memory, disk, load, containers),
//!   runs the jobs it is given and reports events and log lines back.
//! - [`runtime`]: Docker through bollard: the job image, containers with limits, logs, cleanup.
//! - [`jobs`]: the job kinds; each kind is one module implementing [`jobs::JobKind`].
//! - [`netkan`]: the NetKAN inflator (`.netkan` → `.ckan`) and CKAN's version ordering.
//! - [`api`]: REST + GraphQL (queries, mutations, subscriptions) + `/metrics` + join endpoints.
//! - [`client`]: the HTTP client the CLI and joining workers use.
//! - [`git`]: git as a child process that never prompts, and checkouts kept at their remote's tip.
//! - [`netkan`] also holds the pipeline's pure parts (webhooks, index layout); the orchestrator
//!   runs the scheduler and the indexer.
//!
//! Data flow: operator → `api` → `orchestrator` (stored first, then placed) → AMQP
//! `work.<node>` → `worker` → `runtime` (container) → AMQP `events`/`logs` → `orchestrator`
//! → `store` → `api` (queries and subscriptions).
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod deploy;
pub mod discovery;
pub mod enrollment;
pub mod git;
pub mod identity;
pub mod jobs;
pub mod member;
pub mod netkan;
pub mod orchestrator;
pub mod runtime;
pub mod store;
pub mod worker;

/// The agent's version, also the tag of the job image.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch, the one clock every record uses.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Now as RFC 3339 UTC to the second (`2026-11-25T03:17:24Z`).
pub fn now_rfc3339() -> String {
    rfc3339(now_ms())
}

/// Milliseconds since the epoch as RFC 3339 UTC to the second; strings of this one shape
/// order as their times do.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
