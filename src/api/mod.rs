//! The agent's HTTP API on one port (rocket): `/ping`, REST under `/api/v1`, `/log/<id>`,
//! `/metrics` (Prometheus text), GraphQL at `/graphql` with `/graphiql` and subscriptions
//! over a websocket at `/graphql/ws`, the join handshake, and NetKAN's webhooks and status
//! page ([`webhooks`]).
//!
//! Authorization is decided here, in one place: mutations need the operator token as a
//! bearer token; reads need it too unless `api.public_reads` is set.

pub mod graphql;
mod webhooks;

use crate::cluster::network::{NODE_HEADER, SIGNATURE_HEADER};
use crate::cluster::{Cluster, ClusterError};
use crate::enrollment::{EnrollRequest, EnrollmentError};
use crate::identity;
use crate::orchestrator::{JobRequest, JoinRequest, Orchestrator, OrchestratorError};
use crate::store::JobState;
use async_graphql_rocket::{GraphQLQuery, GraphQLRequest, GraphQLResponse};
use graphql::{Auth, KrakenSchema};
use rocket::http::{ContentType, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::{self, Responder};
use rocket::serde::json::Json;
use rocket::{catch, catchers, get, post, routes, State};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// A body over its size limit.
    #[error("{0}")]
    TooLarge(String),
    /// A credential was given and is wrong (a webhook's signature).
    #[error("{0}")]
    Forbidden(String),
    /// This node does not orchestrate now; the message says who does, or that there is no
    /// quorum.
    #[error("{0}")]
    NotOrchestrator(String),
    #[error("{0}")]
    Internal(String),
    #[error("cannot start the API: {0}")]
    Launch(String),
}

impl ApiError {
    fn status(&self) -> Status {
        match self {
            Self::Unauthorized(_) => Status::Unauthorized,
            Self::NotFound(_) => Status::NotFound,
            Self::BadRequest(_) => Status::BadRequest,
            Self::Forbidden(_) => Status::Forbidden,
            Self::TooLarge(_) => Status::PayloadTooLarge,
            Self::NotOrchestrator(_) => Status::ServiceUnavailable,
            Self::Internal(_) | Self::Launch(_) => Status::InternalServerError,
        }
    }
}

/// Maps orchestrator errors to HTTP statuses, in one place.
impl From<OrchestratorError> for ApiError {
    fn from(e: OrchestratorError) -> Self {
        match e {
            OrchestratorError::Job(_) | OrchestratorError::Invalid(_) => {
                Self::BadRequest(e.to_string())
            }
            OrchestratorError::NoSuchJob(_) | OrchestratorError::NoSuchDeployment(_) => {
                Self::NotFound(e.to_string())
            }
            OrchestratorError::JoinRefused(_) => {
                Self::Unauthorized("join refused: wrong or expired proof of the cluster token")
            }
            OrchestratorError::AlreadyFinal { .. } => Self::BadRequest(e.to_string()),
            OrchestratorError::Enrollment(EnrollmentError::NotPending(_)) => {
                Self::NotFound(e.to_string())
            }
            OrchestratorError::Enrollment(_) => Self::BadRequest(e.to_string()),
            OrchestratorError::Store(e) => e.into(),
            OrchestratorError::Broker(_) | OrchestratorError::Git(_) => {
                Self::Internal(e.to_string())
            }
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::NoQuorum(_) => Self::NotOrchestrator(e.to_string()),
            _ => Self::Internal(e.to_string()),
        }
    }
}

impl<'r> Responder<'r, 'static> for ApiError {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        if matches!(self, Self::Internal(_)) {
            tracing::error!(error = %self, path = %req.uri(), "request failed");
        }
        let body = json!({ "error": self.to_string() }).to_string();
        response::Response::build_from(body.respond_to(req)?)
            .status(self.status())
            .header(ContentType::JSON)
            .ok()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The orchestrator the API serves while this node leads.
#[derive(Clone)]
pub struct Live {
    pub orch: Arc<Orchestrator>,
    pub schema: KrakenSchema,
    pub operator_token: String,
}

/// Where the leading node puts its orchestrator for the API, and takes it away again.
pub type LiveSlot = Arc<std::sync::RwLock<Option<Live>>>;

/// What the API serves from.
pub struct ApiState {
    pub live: LiveSlot,
    /// This node's Raft: who leads, and the RPCs between voters.
    pub cluster: Option<Arc<Cluster>>,
    pub public_reads: bool,
    /// The devices in view over mDNS, when discovery is on.
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
}

impl ApiState {
    fn live(&self) -> ApiResult<Live> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner()).clone();
        live.ok_or_else(|| ApiError::NotOrchestrator(self.not_leading()))
    }

    fn orch(&self) -> ApiResult<Arc<Orchestrator>> {
        Ok(self.live()?.orch)
    }

    fn operator_token(&self) -> Option<String> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        live.as_ref().map(|l| l.operator_token.clone())
    }

    /// Why this node cannot answer for the cluster, and who can.
    fn not_leading(&self) -> String {
        let Some(cluster) = &self.cluster else {
            return "this node does not orchestrate".into();
        };
        let view = cluster.view();
        match view.leader.as_deref() {
            Some(leader) if leader == cluster.self_id() && !view.leading => {
                "no quorum: this node cannot reach a majority of the cluster's voters; it accepts no writes until it can".into()
            }
            Some(leader) if leader == cluster.self_id() => {
                "this node was just elected and is taking over; try again in a moment".into()
            }
            Some(leader) => match cluster.api_url_of(leader) {
                Some(url) => format!("this node does not orchestrate; the orchestrator is {leader} at {url}"),
                None => format!("this node does not orchestrate; the orchestrator is {leader}"),
            },
            None => "no orchestrator: the cluster is electing one, or this node cannot reach a majority of its voters (no quorum)".into(),
        }
    }
}

fn bearer<'a>(req: &'a Request<'_>) -> Option<&'a str> {
    req.headers()
        .get_one("Authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
}

fn is_operator(req: &Request<'_>, state: &ApiState) -> bool {
    match (bearer(req), state.operator_token()) {
        (Some(given), Some(token)) => identity::macs_equal(given, &token),
        _ => false,
    }
}

/// Why a guarded request is refused: on a node that does not orchestrate now, that (503,
/// naming the leader), since it cannot check the token; else the missing token (401).
fn refuse<T>(
    req: &Request<'_>,
    state: Option<&ApiState>,
    missing: &'static str,
) -> Outcome<T, ApiError> {
    if let Some(s) = state.filter(|s| s.operator_token().is_none()) {
        let why = s.not_leading();
        req.local_cache(|| why.clone());
        return Outcome::Error((Status::ServiceUnavailable, ApiError::NotOrchestrator(why)));
    }
    req.local_cache(|| format!("{missing} (Authorization: Bearer …)"));
    Outcome::Error((Status::Unauthorized, ApiError::Unauthorized(missing)))
}

/// Any caller, with whether it holds the operator token.
pub struct Caller(Auth);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Caller {
    type Error = ApiError;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ApiError> {
        let operator = req
            .rocket()
            .state::<ApiState>()
            .is_some_and(|s| is_operator(req, s));
        Outcome::Success(Caller(Auth { operator }))
    }
}

/// A caller allowed to read.
pub struct Reader;

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Reader {
    type Error = ApiError;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ApiError> {
        match req.rocket().state::<ApiState>() {
            Some(s) if s.public_reads || is_operator(req, s) => Outcome::Success(Reader),
            state => refuse(req, state, "reads need the operator token"),
        }
    }
}

/// A caller holding the operator token.
pub struct Operator;

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Operator {
    type Error = ApiError;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ApiError> {
        match req.rocket().state::<ApiState>() {
            Some(s) if is_operator(req, s) => Outcome::Success(Operator),
            state => refuse(req, state, "this needs the operator token"),
        }
    }
}

#[get("/ping")]
fn ping() -> &'static str {
    "pong"
}

#[get("/api/v1/cluster")]
fn cluster(_r: Reader, s: &State<ApiState>) -> ApiResult<Json<Value>> {
    let o = s.orch()?;
    let devices = s
        .discovery
        .as_ref()
        .map(|d| d.devices())
        .unwrap_or_default();
    Ok(Json(json!({
        "id": o.secrets().cluster_id,
        "orchestrator": o.self_id(),
        "version": crate::VERSION,
        "queued_jobs": o.queued_count(),
        "enrollment_open": o.enrollment.remaining().is_some(),
        "devices": devices,
        "raft": s.cluster.as_ref().map(|c| c.view()),
    })))
}

/// Who leads, as this node's Raft knows it: any node answers, without a token (the same
/// facts every agent publishes over mDNS).
#[get("/api/v1/leader")]
fn leader(s: &State<ApiState>) -> Json<Value> {
    let Some(cluster) = &s.cluster else {
        return Json(json!({ "leader": null }));
    };
    let view = cluster.view();
    let url = view.leader.as_deref().and_then(|l| cluster.api_url_of(l));
    Json(json!({
        "node": cluster.self_id(),
        "leader": view.leader,
        "leader_url": url,
        "term": view.term,
        "leading": view.leading,
        "state": view.state,
        "voters": view.voters,
    }))
}

/// The sender and signature of a Raft RPC.
pub struct RpcAuth {
    node: String,
    signature: String,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for RpcAuth {
    type Error = ApiError;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ApiError> {
        let h = |name| req.headers().get_one(name).unwrap_or_default().to_owned();
        Outcome::Success(RpcAuth {
            node: h(NODE_HEADER),
            signature: h(SIGNATURE_HEADER),
        })
    }
}

/// A Raft RPC from another voter.
#[post("/raft/<op>", data = "<body>")]
async fn raft_rpc(
    s: &State<ApiState>,
    op: &str,
    auth: RpcAuth,
    body: rocket::data::Data<'_>,
    ip: Option<IpAddr>,
) -> ApiResult<(ContentType, Vec<u8>)> {
    let cluster = s
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this node runs no raft".into()))?;
    let body = body
        .open(rocket::data::ByteUnit::Mebibyte(64))
        .into_bytes()
        .await
        .map_err(|e| ApiError::BadRequest(format!("cannot read the request: {e}")))?;
    if !body.is_complete() {
        return Err(ApiError::BadRequest(
            "raft message larger than 64 MiB".into(),
        ));
    }
    match cluster
        .serve_rpc(op, &auth.node, &auth.signature, &body.into_inner())
        .await
    {
        Ok(out) => Ok((ContentType::JSON, out)),
        Err(e @ ClusterError::Unauthorized(_)) => {
            tracing::warn!(error = %e, from = ?ip, "raft rpc refused");
            Err(ApiError::Unauthorized(
                "raft rpc refused: not signed by a member of this cluster",
            ))
        }
        Err(e) => Err(ApiError::BadRequest(e.to_string())),
    }
}

#[get("/api/v1/nodes")]
fn nodes(_r: Reader, s: &State<ApiState>) -> ApiResult<Json<Value>> {
    let o = s.orch()?;
    let active = o.active_per_node();
    let nodes: Vec<Value> = o
        .store()
        .nodes()?
        .into_iter()
        .map(|n| {
            let mut v = serde_json::to_value(&n).unwrap_or_default();
            v["alive"] = json!(o.is_alive(&n.id));
            v["role"] = json!(if n.id == o.self_id() {
                "orchestrator"
            } else {
                "worker"
            });
            v["running_jobs"] = json!(active.get(&n.id).copied().unwrap_or(0));
            v
        })
        .collect();
    Ok(Json(Value::Array(nodes)))
}

fn parse_job_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::BadRequest(format!("`{id}` is not an id")))
}

#[get("/api/v1/jobs?<status>&<kind>&<limit>")]
fn jobs(
    _r: Reader,
    s: &State<ApiState>,
    status: Option<&str>,
    kind: Option<&str>,
    limit: Option<usize>,
) -> ApiResult<Json<Value>> {
    let o = s.orch()?;
    let status = match status {
        None => None,
        Some(v) => Some(
            JobState::ALL
                .into_iter()
                .find(|st| st.as_str().eq_ignore_ascii_case(v))
                .ok_or_else(|| ApiError::BadRequest(format!("unknown status `{v}`")))?,
        ),
    };
    let mut out = Vec::new();
    for job in o.store().jobs() {
        let job = job?;
        if status.is_some_and(|st| st != job.state) || kind.is_some_and(|k| k != job.kind) {
            continue;
        }
        out.push(serde_json::to_value(&job).unwrap_or_default());
    }
    out.reverse();
    out.truncate(limit.unwrap_or(100).min(10_000));
    Ok(Json(Value::Array(out)))
}

#[get("/api/v1/jobs/<id>")]
fn job(_r: Reader, s: &State<ApiState>, id: &str) -> ApiResult<Json<Value>> {
    let o = s.orch()?;
    let id = parse_job_id(id)?;
    let job = o
        .store()
        .job(id)?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    Ok(Json(serde_json::to_value(job).unwrap_or_default()))
}

#[post("/api/v1/jobs", data = "<body>")]
async fn enqueue(
    _op: Operator,
    s: &State<ApiState>,
    body: &str,
) -> ApiResult<(Status, Json<Value>)> {
    let o = s.orch()?;
    let req: JobRequest = serde_json::from_str(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed job request: {e}")))?;
    let job = o.enqueue(req).await?;
    Ok((
        Status::Created,
        Json(serde_json::to_value(job).unwrap_or_default()),
    ))
}

#[post("/api/v1/jobs/<id>/cancel")]
async fn cancel(_op: Operator, s: &State<ApiState>, id: &str) -> ApiResult<Json<Value>> {
    let o = s.orch()?;
    let job = o.cancel(parse_job_id(id)?).await?;
    Ok(Json(serde_json::to_value(job).unwrap_or_default()))
}

#[get("/api/v1/deployments")]
fn deployments(_r: Reader, s: &State<ApiState>) -> ApiResult<Json<serde_json::Value>> {
    let o = s.orch()?;
    Ok(Json(
        serde_json::to_value(o.store().deployments()?).unwrap_or_default(),
    ))
}

#[get("/api/v1/deployments/<id>")]
fn deployment(_r: Reader, s: &State<ApiState>, id: &str) -> ApiResult<Json<serde_json::Value>> {
    let o = s.orch()?;
    let d = o.deployment(parse_job_id(id)?)?;
    Ok(Json(serde_json::to_value(d).unwrap_or_default()))
}

#[get("/log/<id>")]
fn log(_r: Reader, s: &State<ApiState>, id: &str) -> ApiResult<(ContentType, String)> {
    let o = s.orch()?;
    let id = parse_job_id(id)?;
    if o.store().job(id)?.is_none() && o.store().deployment(id)?.is_none() {
        return Err(ApiError::NotFound(format!("no job or deployment {id}")));
    }
    let mut text = String::new();
    for line in o.logs(id)? {
        let _ = writeln!(text, "{}", line.text);
    }
    Ok((ContentType::Plain, text))
}

#[get("/api/v1/join/challenge")]
fn join_challenge(s: &State<ApiState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "nonce": s.orch()?.join_challenge() })))
}

#[post("/api/v1/join", data = "<body>")]
async fn join(s: &State<ApiState>, body: &str, ip: Option<IpAddr>) -> ApiResult<Json<Value>> {
    let o = s.orch()?;
    let req: JoinRequest = serde_json::from_str(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed join request: {e}")))?;
    let address = ip.map(|i| i.to_string()).unwrap_or_default();
    let resp = o.join(req, address).await?;
    Ok(Json(serde_json::to_value(resp).unwrap_or_default()))
}

/// A device without a token asks to join (answers 202 while it waits for approval).
#[post("/api/v1/enroll", data = "<body>")]
fn enroll(s: &State<ApiState>, body: &str, ip: Option<IpAddr>) -> ApiResult<(Status, Json<Value>)> {
    let o = s.orch()?;
    let req: EnrollRequest = serde_json::from_str(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed enroll request: {e}")))?;
    let address = ip.map(|i| i.to_string()).unwrap_or_default();
    let resp = o.enroll(&req, &address)?;
    let status = if resp.join_token.is_some() {
        Status::Ok
    } else {
        Status::Accepted
    };
    Ok((status, Json(serde_json::to_value(resp).unwrap_or_default())))
}

/// The enrollment window and the devices waiting for approval.
#[get("/api/v1/enrollment")]
fn enrollment(_r: Reader, s: &State<ApiState>) -> ApiResult<Json<Value>> {
    let e = &s.orch()?.enrollment;
    Ok(Json(json!({
        "open": e.remaining().is_some(),
        "remaining_secs": e.remaining(),
        "pending": e.pending(),
    })))
}

/// Opens the enrollment window for `seconds` (0 closes it).
#[post("/api/v1/enrollment", data = "<body>")]
async fn open_enrollment(_o: Operator, s: &State<ApiState>, body: &str) -> ApiResult<Json<Value>> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed request: {e}")))?;
    let secs = v["seconds"]
        .as_u64()
        .filter(|n| *n <= 7 * 24 * 3600)
        .ok_or_else(|| ApiError::BadRequest("`seconds` must be 0 to 604800".into()))?;
    let left = s.orch()?.open_enrollment(secs).await?;
    Ok(Json(
        json!({ "open": left.is_some(), "remaining_secs": left }),
    ))
}

/// Admits a device that is waiting for approval.
#[post("/api/v1/nodes/<id>/approve")]
async fn approve(_o: Operator, s: &State<ApiState>, id: &str) -> ApiResult<Json<Value>> {
    let device = s.orch()?.approve(id).await?;
    Ok(Json(serde_json::to_value(device).unwrap_or_default()))
}

/// Drains a node (`{"drain": true}`, the default) or puts it back in service
/// (`{"drain": false}`).
#[post("/api/v1/nodes/<id>/drain", data = "<body>")]
async fn drain(
    _o: Operator,
    s: &State<ApiState>,
    id: &str,
    body: Option<Json<Value>>,
) -> ApiResult<Json<Value>> {
    let drain = match body.as_deref().map(|b| b.get("drain")) {
        None | Some(None) => true,
        Some(Some(Value::Bool(b))) => *b,
        Some(Some(other)) => {
            return Err(ApiError::BadRequest(format!(
                "`drain` must be true or false, not {other}"
            )))
        }
    };
    let node = s.orch()?.drain_node(id, drain).await?;
    Ok(Json(serde_json::to_value(node).unwrap_or_default()))
}

/// The installer this agent hands out (`curl -fsSL http://AGENT:8080/install.sh | sudo sh`).
const INSTALL_SCRIPT: &str = include_str!("install.sh");

/// The `Host` a request was sent to, when it is a plain host name or address and port (it
/// is written into a shell script, so nothing else gets through).
pub struct RequestHost(String);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for RequestHost {
    type Error = ApiError;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ApiError> {
        let host = req.headers().get_one("Host").unwrap_or_default();
        let plain = !host.is_empty()
            && host.len() <= 255
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
        if plain {
            Outcome::Success(RequestHost(host.to_owned()))
        } else {
            Outcome::Error((
                Status::BadRequest,
                ApiError::BadRequest(format!("`Host: {host}` is not a host name and port")),
            ))
        }
    }
}

#[get("/install.sh")]
fn install_script(host: RequestHost) -> (ContentType, String) {
    let url = format!("http://{}", host.0);
    (ContentType::Plain, INSTALL_SCRIPT.replace("@URL@", &url))
}

/// This agent's own executable, for machines of its architecture (`kraken-x86_64`,
/// `kraken-aarch64`).
#[get("/download/<file>")]
async fn download(file: &str) -> ApiResult<(ContentType, rocket::fs::NamedFile)> {
    let arch = std::env::consts::ARCH;
    let wanted = file.strip_prefix("kraken-").unwrap_or(file);
    if wanted != arch {
        return Err(ApiError::NotFound(format!(
            "this agent has the build for {arch} only, not for `{wanted}`"
        )));
    }
    let exe = std::env::current_exe()
        .map_err(|e| ApiError::Internal(format!("cannot find this executable: {e}")))?;
    let file = rocket::fs::NamedFile::open(&exe)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot read {}: {e}", exe.display())))?;
    Ok((ContentType::Binary, file))
}

#[get("/metrics")]
async fn metrics(s: &State<ApiState>) -> ApiResult<(ContentType, String)> {
    let o = s.orch()?;
    let mut by_state = std::collections::HashMap::new();
    for job in o.store().jobs() {
        *by_state.entry(job?.state).or_insert(0u64) += 1;
    }
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# HELP kraken_jobs Jobs by state.\n# TYPE kraken_jobs gauge"
    );
    for st in JobState::ALL {
        let _ = writeln!(
            m,
            "kraken_jobs{{state=\"{}\"}} {}",
            st.as_str(),
            by_state.get(&st).unwrap_or(&0)
        );
    }
    let nodes = o.store().nodes()?;
    let alive = nodes.iter().filter(|n| o.is_alive(&n.id)).count();
    let _ = writeln!(
        m,
        "# HELP kraken_nodes Nodes known to the orchestrator.\n# TYPE kraken_nodes gauge"
    );
    let _ = writeln!(m, "kraken_nodes{{alive=\"true\"}} {alive}");
    let _ = writeln!(m, "kraken_nodes{{alive=\"false\"}} {}", nodes.len() - alive);
    let _ = writeln!(m, "# HELP kraken_jobs_dispatched_total Job attempts sent to workers.\n# TYPE kraken_jobs_dispatched_total counter");
    let _ = writeln!(
        m,
        "kraken_jobs_dispatched_total {}",
        o.counters
            .dispatched
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = writeln!(m, "# HELP kraken_jobs_lost_total Job attempts lost with a dead worker.\n# TYPE kraken_jobs_lost_total counter");
    let _ = writeln!(
        m,
        "kraken_jobs_lost_total {}",
        o.counters
            .dead_workers
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = writeln!(m, "# HELP kraken_queue_depth Messages waiting in a broker queue.\n# TYPE kraken_queue_depth gauge");
    if let Some(broker) = o.broker() {
        let mut queues: Vec<String> = [
            "sysinfo",
            "events",
            "logs",
            crate::broker::DEAD_LETTER_QUEUE,
        ]
        .iter()
        .map(|q| q.to_string())
        .collect();
        queues.extend(nodes.iter().map(|n| crate::broker::work_queue(&n.id)));
        for q in queues {
            if let Some(depth) = broker.queue_depth(&q).await {
                let _ = writeln!(m, "kraken_queue_depth{{queue=\"{q}\"}} {depth}");
            }
        }
    }
    let _ = writeln!(m, "# HELP kraken_scheduler_queued Jobs waiting for a slot.\n# TYPE kraken_scheduler_queued gauge");
    let _ = writeln!(m, "kraken_scheduler_queued {}", o.queued_count());
    let p = graphql::PipelineView::of(&o);
    for (name, kind, help, value) in [
        (
            "netkan_inflate_queued_mods",
            "gauge",
            "Mods waiting in queued inflate jobs.",
            p.inflate_queued_mods,
        ),
        (
            "netkan_index_queue",
            "gauge",
            "Inflated results waiting for the indexer.",
            p.index_queue,
        ),
        (
            "netkan_rounds_total",
            "counter",
            "Scheduled rounds that queued mods.",
            p.rounds,
        ),
        (
            "netkan_rounds_skipped_total",
            "counter",
            "Scheduled rounds skipped (long queue, low rate limit).",
            p.rounds_skipped,
        ),
        (
            "netkan_inflated_total",
            "counter",
            "Mods inflated.",
            p.inflated,
        ),
        (
            "netkan_inflate_failed_total",
            "counter",
            "Mods that failed to inflate.",
            p.inflate_failed,
        ),
        (
            "netkan_indexed_total",
            "counter",
            "Files committed to the metadata repository.",
            p.indexed,
        ),
        (
            "netkan_index_failures_total",
            "counter",
            "Index attempts that failed (retried).",
            p.index_failures,
        ),
        (
            "netkan_pushes_refused_total",
            "counter",
            "Pushes refused as not fast-forward (redone).",
            p.pushes_refused,
        ),
        (
            "netkan_pull_requests_total",
            "counter",
            "Staged mods sent as pull requests.",
            p.pull_requests,
        ),
        (
            "netkan_mirrored_total",
            "counter",
            "Downloads uploaded to the archive.",
            p.mirrored,
        ),
        (
            "netkan_mirror_failed_total",
            "counter",
            "Downloads that could not be mirrored.",
            p.mirror_failed,
        ),
    ] {
        let _ = writeln!(
            m,
            "# HELP kraken_{name} {help}\n# TYPE kraken_{name} {kind}\nkraken_{name} {value}"
        );
    }
    Ok((
        ContentType::new("text", "plain").with_params(("version", "0.0.4")),
        m,
    ))
}

#[post("/graphql", data = "<request>", format = "application/json")]
async fn graphql_post(
    caller: Caller,
    s: &State<ApiState>,
    request: GraphQLRequest,
) -> ApiResult<GraphQLResponse> {
    let schema = s.live()?.schema;
    Ok(request.data(caller.0).execute(&schema).await)
}

#[get("/graphql?<query..>")]
async fn graphql_get(
    caller: Caller,
    s: &State<ApiState>,
    query: GraphQLQuery,
) -> ApiResult<GraphQLResponse> {
    let schema = s.live()?.schema;
    let request: GraphQLRequest = query.into();
    Ok(request.data(caller.0).execute(&schema).await)
}

#[get("/graphiql")]
fn graphiql() -> (ContentType, String) {
    (
        ContentType::HTML,
        async_graphql::http::GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
}

/// The websocket answer with the subprotocol header graphql-ws clients require.
struct WithProtocol<R>(R);

impl<'r, 'o: 'r, R: Responder<'r, 'o>> Responder<'r, 'o> for WithProtocol<R> {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'o> {
        let mut resp = self.0.respond_to(req)?;
        resp.set_raw_header("Sec-WebSocket-Protocol", "graphql-transport-ws");
        Ok(resp)
    }
}

#[get("/graphql/ws")]
fn graphql_ws(
    ws: rocket_ws::WebSocket,
    caller: Caller,
    s: &State<ApiState>,
) -> ApiResult<WithProtocol<rocket_ws::Channel<'static>>> {
    use futures::{SinkExt, StreamExt};
    let schema = s.live()?.schema;
    let token = s.operator_token();
    let header_auth = caller.0;
    Ok(WithProtocol(ws.channel(move |stream| {
        Box::pin(async move {
            let (mut sink, source) = stream.split();
            let input = source.filter_map(|m| {
                futures::future::ready(match m {
                    Ok(rocket_ws::Message::Text(t)) => Some(t.into_bytes()),
                    Ok(rocket_ws::Message::Binary(b)) => Some(b),
                    _ => None,
                })
            });
            let mut output = async_graphql::http::WebSocket::new(
                schema,
                input,
                async_graphql::http::WebSocketProtocols::GraphQLWS,
            )
            .on_connection_init(move |payload| async move {
                // a browser cannot set headers on a websocket: the token may come in the payload
                let given = payload
                    .get("authorization")
                    .or_else(|| payload.get("Authorization"))
                    .and_then(|v| v.as_str())
                    .map(|v| v.trim_start_matches("Bearer ").trim().to_owned());
                let operator = header_auth.operator
                    || matches!((given, token), (Some(g), Some(t)) if identity::macs_equal(&g, &t));
                let mut data = async_graphql::Data::default();
                data.insert(Auth { operator });
                Ok(data)
            });
            while let Some(msg) = output.next().await {
                let out = match msg {
                    async_graphql::http::WsMessage::Text(t) => rocket_ws::Message::Text(t),
                    async_graphql::http::WsMessage::Close(code, reason) => {
                        rocket_ws::Message::Close(Some(rocket_ws::frame::CloseFrame {
                            code: rocket_ws::frame::CloseCode::from(code),
                            reason: reason.into(),
                        }))
                    }
                };
                if sink.send(out).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    })))
}

#[catch(default)]
fn default_catcher(status: Status, req: &Request<'_>) -> (Status, (ContentType, String)) {
    let cached: &String = req.local_cache(String::new);
    let message = if cached.is_empty() {
        status.reason().unwrap_or("error").to_lowercase()
    } else {
        cached.clone()
    };
    (
        status,
        (ContentType::JSON, json!({ "error": message }).to_string()),
    )
}

/// Serves the API on `bind:port` until `shutdown`.
pub async fn serve(
    state: ApiState,
    bind: &str,
    port: u16,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let address: IpAddr = bind
        .parse()
        .map_err(|_| ApiError::Launch(format!("api.bind `{bind}` is not an IP address")))?;
    let figment = rocket::Config::figment()
        .merge(("address", address))
        .merge(("port", port))
        .merge(("log_level", rocket::config::LogLevel::Off))
        .merge(("cli_colors", false))
        .merge(("ident", "kraken"))
        .merge(("shutdown.ctrlc", false))
        .merge(("shutdown.signals", Vec::<String>::new()))
        .merge(("shutdown.grace", 2))
        .merge(("shutdown.mercy", 2))
        .merge(("limits.json", "1 MiB"))
        .merge(("limits.string", "1 MiB"));
    let rocket = rocket::custom(figment)
        .manage(state)
        .mount(
            "/",
            routes![
                ping,
                cluster,
                leader,
                raft_rpc,
                nodes,
                jobs,
                job,
                enqueue,
                cancel,
                deployments,
                deployment,
                log,
                join_challenge,
                join,
                enroll,
                install_script,
                download,
                enrollment,
                open_enrollment,
                approve,
                drain,
                metrics,
                graphql_post,
                graphql_get,
                graphiql,
                graphql_ws,
                webhooks::inflate,
                webhooks::gh_inflate,
                webhooks::gh_release,
                webhooks::gh_mirror,
                webhooks::sd_inflate,
                webhooks::sd_add,
                webhooks::status
            ],
        )
        .register("/", catchers![default_catcher])
        .ignite()
        .await
        .map_err(|e| ApiError::Launch(e.to_string()))?;
    let handle = rocket.shutdown();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.notify();
    });
    rocket
        .launch()
        .await
        .map_err(|e| ApiError::Launch(e.to_string()))?;
    Ok(())
}
