//! NetKAN's webhook routes (NetKAN-Infra's paths) and its status page:
//! `POST /inflate` (operator token), `/sd/inflate` and `/sd/add` (SpaceDock; `?secret=` the webhook
//! secret, or the operator token), `/gh/inflate`, `/gh/release` and `/gh/mirror` (GitHub, signed with
//! `X-Hub-Signature-256`), and `GET /status/netkan.json`.

use super::{is_operator, ApiError, ApiResult, ApiState, Operator, Reader};
use crate::identity;
use crate::netkan::webhook::{self, WebhookError};
use crate::orchestrator::Orchestrator;
use crate::store::JobRecord;
use rocket::data::Capped;
use rocket::http::Status;
use rocket::request::{FromRequest, Outcome};
use rocket::serde::json::Json;
use rocket::{get, post, Request, State};
use serde_json::{json, Value};
use std::sync::Arc;

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Forbidden(why) => Self::Forbidden(why),
            WebhookError::Malformed(why) => Self::BadRequest(why),
        }
    }
}

/// GitHub's headers of a webhook delivery.
pub struct GithubDelivery {
    signature: Option<String>,
    event: Option<String>,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for GithubDelivery {
    type Error = ApiError;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ApiError> {
        let h = req.headers();
        Outcome::Success(Self {
            signature: h.get_one("X-Hub-Signature-256").map(str::to_owned),
            event: h.get_one("X-GitHub-Event").map(str::to_owned),
        })
    }
}

impl GithubDelivery {
    /// The orchestrator, once the body's signature is checked; `Ok(None)` for GitHub's
    /// `ping` (answered with 200 and nothing done).
    fn check(
        &self,
        s: &ApiState,
        body: &str,
        expected: &str,
    ) -> ApiResult<Option<Arc<Orchestrator>>> {
        let o = s.orch()?;
        webhook::verify_signature(
            &o.config().netkan.webhook_secret,
            body.as_bytes(),
            self.signature.as_deref(),
        )?;
        match self.event.as_deref() {
            Some("ping") => Ok(None),
            Some(e) if e == expected => Ok(Some(o)),
            Some(e) => Err(ApiError::BadRequest(format!(
                "this route takes `{expected}` events, not `{e}`"
            ))),
            None => Err(ApiError::BadRequest(
                "the X-GitHub-Event header is missing".into(),
            )),
        }
    }
}

fn queued(jobs: &[JobRecord], what: &str) -> (Status, Json<Value>) {
    let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
    let mods: usize = jobs
        .iter()
        .filter_map(|j| j.spec.get("mods").and_then(Value::as_array))
        .map(Vec::len)
        .sum();
    let message = if jobs.is_empty() {
        format!("{what}: nothing new to queue (already queued, frozen or unknown)")
    } else {
        format!("{what}: {mods} mods queued")
    };
    (
        Status::Accepted,
        Json(json!({ "message": message, "jobs": ids, "mods": mods })),
    )
}

/// The body, unless it was cut at the size limit (`limits.string`, 1 MiB).
fn whole(body: Capped<&str>) -> ApiResult<&str> {
    if body.is_complete() {
        Ok(body.into_inner())
    } else {
        Err(ApiError::TooLarge(format!(
            "the body is larger than the limit of {} bytes",
            body.n.written
        )))
    }
}

/// A push payload, refused when it went to another repository than `ours` (when set).
fn push_to(body: &str, ours: &str, what: &str) -> ApiResult<webhook::Push> {
    let push = webhook::push(body.as_bytes())?;
    if !ours.is_empty() && !push.repository.eq_ignore_ascii_case(ours) {
        return Err(ApiError::BadRequest(format!(
            "a push to {}, not to {what} {ours}",
            push.repository
        )));
    }
    Ok(push)
}

/// 204: understood, and nothing to do.
fn ignored(why: &str) -> (Status, Json<Value>) {
    (Status::NoContent, Json(json!({ "message": why })))
}

fn pong() -> (Status, Json<Value>) {
    (Status::Ok, Json(json!({ "message": "pong" })))
}

#[post("/inflate", data = "<body>")]
pub async fn inflate(
    _op: Operator,
    s: &State<ApiState>,
    body: Capped<&str>,
) -> ApiResult<(Status, Json<Value>)> {
    let body = whole(body)?;
    let ids = webhook::inflate_list(body.as_bytes())?;
    let jobs = s.orch()?.inflate_now(&ids, false).await?;
    Ok(queued(&jobs, "inflate"))
}

#[post("/gh/inflate", data = "<body>")]
pub async fn gh_inflate(
    gh: GithubDelivery,
    s: &State<ApiState>,
    body: Capped<&str>,
) -> ApiResult<(Status, Json<Value>)> {
    let body = whole(body)?;
    let Some(o) = gh.check(s, body, "push")? else {
        return Ok(pong());
    };
    let push = push_to(
        body,
        &o.config().netkan.repo_github,
        "the NetKAN repository",
    )?;
    if !push.default_branch {
        return Ok(ignored("not the default branch: ignored"));
    }
    if push.netkans.is_empty() {
        // frozen or thawed mods only: the checkout is brought up to date all the same
        o.sync_netkan().await?;
        return Ok(queued(&[], "push"));
    }
    let jobs = o.inflate_now(&push.netkans, true).await?;
    Ok(queued(&jobs, "push"))
}

#[post("/gh/release?<identifier>", data = "<body>")]
pub async fn gh_release(
    gh: GithubDelivery,
    s: &State<ApiState>,
    identifier: Option<&str>,
    body: Capped<&str>,
) -> ApiResult<(Status, Json<Value>)> {
    let body = whole(body)?;
    let Some(o) = gh.check(s, body, "release")? else {
        return Ok(pong());
    };
    let id =
        identifier.ok_or_else(|| ApiError::BadRequest("give the mod as ?identifier=".into()))?;
    if !webhook::release(body.as_bytes())? {
        return Ok(ignored("not a publication: ignored"));
    }
    let jobs = o.inflate_now(&[id.to_owned()], false).await?;
    Ok(queued(&jobs, "release"))
}

#[post("/gh/mirror", data = "<body>")]
pub async fn gh_mirror(
    gh: GithubDelivery,
    s: &State<ApiState>,
    body: Capped<&str>,
) -> ApiResult<(Status, Json<Value>)> {
    let body = whole(body)?;
    let Some(o) = gh.check(s, body, "push")? else {
        return Ok(pong());
    };
    let push = push_to(
        body,
        &o.config().netkan.meta_github,
        "the metadata repository",
    )?;
    if !push.default_branch || push.ckans.is_empty() {
        return Ok(ignored(
            "no .ckan added on the default branch: nothing to mirror",
        ));
    }
    let jobs = o.mirror_pushed(&push.ckans).await?;
    let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
    Ok((
        Status::Accepted,
        Json(
            json!({ "message": format!("mirror: {} files queued", push.ckans.len()), "jobs": ids }),
        ),
    ))
}

/// SpaceDock cannot sign: it is given a URL with `?secret=<netkan.webhook_secret>`.
pub struct SpaceDockAuth;

#[rocket::async_trait]
impl<'r> FromRequest<'r> for SpaceDockAuth {
    type Error = ApiError;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ApiError> {
        let Some(s) = req.rocket().state::<ApiState>() else {
            return Outcome::Forward(Status::InternalServerError);
        };
        let secret = s
            .live()
            .map(|l| l.orch.config().netkan.webhook_secret.clone())
            .unwrap_or_default();
        let given = req.query_value::<&str>("secret").and_then(Result::ok);
        let ok = is_operator(req, s)
            || (!secret.is_empty() && given.is_some_and(|g| identity::macs_equal(g, &secret)));
        if ok {
            Outcome::Success(Self)
        } else {
            let why =
                "SpaceDock webhooks need ?secret=<netkan.webhook_secret> or the operator token";
            req.local_cache(|| why.to_owned());
            Outcome::Error((Status::Forbidden, ApiError::Forbidden(why.into())))
        }
    }
}

#[post("/sd/inflate", data = "<body>")]
pub async fn sd_inflate(
    _auth: SpaceDockAuth,
    s: &State<ApiState>,
    body: Capped<&str>,
) -> ApiResult<(Status, Json<Value>)> {
    let body = whole(body)?;
    let mod_id = webhook::spacedock_mod(body.as_bytes())?;
    let o = s.orch()?;
    let ids = o.spacedock_mods(mod_id).await?;
    if ids.is_empty() {
        return Err(ApiError::NotFound(format!(
            "No such module: no netkan has $kref #/ckan/spacedock/{mod_id}"
        )));
    }
    let jobs = o.inflate_now(&ids, true).await?;
    Ok(queued(&jobs, "spacedock"))
}

#[post("/sd/add", data = "<body>")]
pub async fn sd_add(
    _auth: SpaceDockAuth,
    s: &State<ApiState>,
    body: Capped<&str>,
) -> ApiResult<(Status, Json<Value>)> {
    let body = whole(body)?;
    let add = webhook::SpaceDockAdd::parse(body.as_bytes())?;
    let branch = s.orch()?.spacedock_add(&add).await?;
    Ok((
        Status::Accepted,
        Json(json!({ "message": format!("pull request opened from {branch}"), "branch": branch })),
    ))
}

/// NetKAN's status page: every mod's status, keyed by identifier.
#[get("/status/netkan.json")]
pub async fn status(_r: Reader, s: &State<ApiState>) -> ApiResult<Json<Value>> {
    let o = s.orch()?;
    let mut out = serde_json::Map::new();
    for (id, status) in o.store().mod_statuses()? {
        out.insert(id, serde_json::to_value(status).unwrap_or_default());
    }
    Ok(Json(Value::Object(out)))
}
