//! The worker's side of one deployment: clone the branch, read `kraken.toml`, build the image,
//! run the container with the app's port published, check its health, follow its output and
//! watch it until it is stopped or replaced; then remove its container, image and checkout.
//!
//! App containers run as `nobody` with every capability dropped, `no-new-privileges`, a memory
//! and process limit, Docker's `on-failure` restarts (with Docker's growing delay) for a
//! bounded number of crashes, and never the docker socket.

use super::manifest::{Health, Manifest, ManifestError};
use super::proxy::{Proxies, Proxy, ProxyError};
use crate::broker::messages::DeployAssignment;
use crate::git::command as git;
use crate::runtime::{force_remove, LineSplitter, Runtime, RuntimeError, JOB_UID};
use crate::store::DeployStatus;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, LogsOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a started app has to answer on its port.
const HEALTH_WINDOW: Duration = Duration::from_secs(60);
/// Crashes Docker restarts (with its growing delay) before the app counts as failed.
const MAX_RESTARTS: i64 = 3;
/// How long an app checked by `health = "running"` must stay up to be healthy.
const STAY_UP: Duration = Duration::from_secs(5);
/// How long cloning may take.
const CLONE_TIMEOUT: Duration = Duration::from_secs(180);
/// The name the platform's Dockerfile gets inside the build context.
const PLATFORM_DOCKERFILE: &str = ".kraken.Dockerfile";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot clone {url} (branch {branch}): {detail}")]
    Clone {
        url: String,
        branch: String,
        detail: String,
    },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("lang = \"dockerfile\" but the repository has no Dockerfile at its root")]
    NoDockerfile,
    /// The reason, and the last layer the build made.
    #[error("the build failed: {0}")]
    Build(String, Option<String>),
    #[error("cannot start the app: {0}")]
    Start(String),
    #[error("{0}")]
    Unhealthy(String),
    #[error("{0}")]
    Port(#[from] ProxyError),
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("preparing the build: {0}")]
    Io(#[from] std::io::Error),
}

/// What a worker tells the orchestrator about a deployment.
#[derive(Debug, Clone)]
pub struct Report {
    pub status: DeployStatus,
    pub reason: Option<String>,
    pub app: Option<String>,
    pub port: Option<u16>,
    pub commit: Option<String>,
}

/// What one run of a deployment reports to and works with.
pub struct Sinks<'a> {
    pub report: &'a (dyn Fn(Report) + Send + Sync),
    /// `(stream, line)`: `build`, `stdout`, `stderr` or `kraken`.
    pub log: &'a (dyn Fn(&str, String) + Send + Sync),
    /// The node's app ports.
    pub proxies: &'a Proxies,
    /// Cancelled once this generation serves on the app's port (the one before it can go).
    pub serving: CancellationToken,
}

/// What was built and started, for cleanup.
#[derive(Default)]
struct Made {
    checkout: Option<PathBuf>,
    image: Option<String>,
    container: Option<String>,
}

/// Runs one generation of a deployment on this node until `stop` (an operator stopped it or
/// a newer generation replaces it) or until it fails; what it made is then removed. When
/// the agent itself stops (`shutdown`), a running app is left running: the agent's next
/// run adopts it ([`adopt`]).
pub async fn run(
    rt: &Runtime,
    node: &str,
    work: &Path,
    a: &DeployAssignment,
    sinks: &Sinks<'_>,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut made = Made::default();
    let mut known = Report {
        status: DeployStatus::Building,
        reason: None,
        app: None,
        port: None,
        commit: None,
    };
    (sinks.report)(known.clone());
    let outcome = tokio::select! {
        r = deploy(rt, node, work, a, sinks, &mut made, &mut known) => r,
        _ = stop.cancelled() => Ok(()),
        _ = shutdown.cancelled() => {
            if known.status == DeployStatus::Running {
                tracing::info!(id = %a.id, "the agent stops; the app runs on");
                return;
            }
            Ok(())
        }
    };
    if let Err(error) = outcome {
        fail(a, sinks, &mut known, error);
    }
    remove(rt, &made).await;
}

fn fail(a: &DeployAssignment, sinks: &Sinks<'_>, known: &mut Report, error: AppError) {
    let reason = error.to_string();
    (sinks.log)("kraken", format!("deployment failed: {reason}"));
    tracing::warn!(id = %a.id, generation = a.generation, %reason, "deployment failed");
    known.status = DeployStatus::Failed;
    known.reason = Some(reason);
    (sinks.report)(known.clone());
}

/// An app container a previous run of this agent left running.
#[derive(Debug, Clone)]
pub struct Found {
    pub container: String,
    pub id: uuid::Uuid,
    pub generation: u32,
    pub image: String,
    pub running: bool,
    /// The app's port, name, commit and health-check path.
    pub port: Option<u16>,
    pub endpoint: Option<String>,
    /// `kraken.health`: absent in containers of earlier builds, which meant HTTP.
    pub health: Health,
    pub app: Option<String>,
    pub commit: Option<String>,
}

/// This node's app containers (running or not), from their labels.
pub async fn found(rt: &Runtime, node: &str) -> Vec<Found> {
    let Ok(d) = rt.docker().await else {
        return vec![];
    };
    let filters = HashMap::from([("label".to_string(), vec![format!("kraken.app-node={node}")])]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(list) = d.list_containers(Some(opts)).await else {
        return vec![];
    };
    list.into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            Some(Found {
                container: c.id?,
                id: labels.get("kraken.deployment")?.parse().ok()?,
                generation: labels.get("kraken.generation")?.parse().ok()?,
                image: c.image.unwrap_or_default(),
                port: labels.get("kraken.port").and_then(|p| p.parse().ok()),
                app: labels.get("kraken.app").cloned(),
                endpoint: labels.get("kraken.endpoint").cloned(),
                health: labels
                    .get("kraken.health")
                    .and_then(|h| Health::parse(h))
                    .unwrap_or(Health::Http),
                commit: labels.get("kraken.commit").cloned(),
                running: c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            })
        })
        .collect()
}

/// Watches an app a previous run of this agent started, as [`run`] would have: follows its
/// output, reports it failed when it stops for good, removes it when stopped.
pub async fn adopt(
    rt: &Runtime,
    a: &DeployAssignment,
    f: &Found,
    sinks: &Sinks<'_>,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    let made = Made {
        checkout: None,
        image: Some(f.image.clone()),
        container: Some(f.container.clone()),
    };
    let mut known = Report {
        status: DeployStatus::Running,
        reason: None,
        app: f.app.clone(),
        port: f.port,
        commit: f.commit.clone(),
    };
    (sinks.log)(
        "kraken",
        "adopted the running app after an agent restart".into(),
    );
    let watched = async {
        let d = rt.docker().await?;
        let port = f
            .port
            .ok_or_else(|| AppError::Start("the container does not say its app's port".into()))?;
        let proxy = sinks.proxies.get(a.id, port).await?;
        let endpoint = f.endpoint.as_deref().unwrap_or("/");
        let check = Check::of(f.health, endpoint);
        let backend = healthy(&d, &f.container, port, sinks.proxies.backend(), check).await?;
        serve(&proxy, backend, sinks);
        (sinks.report)(known.clone());
        tokio::select! {
            r = watch(&d, &f.container, &proxy) => r,
            _ = follow_logs(&d, &f.container, sinks) => Ok(()),
        }
    };
    let outcome = tokio::select! {
        r = watched => r,
        _ = stop.cancelled() => Ok(()),
        _ = shutdown.cancelled() => return,
    };
    if let Err(error) = outcome {
        fail(a, sinks, &mut known, error);
    }
    remove(rt, &made).await;
}

/// Removes a container (and its image) nobody holds any more.
pub async fn remove_found(rt: &Runtime, f: &Found) {
    remove(
        rt,
        &Made {
            checkout: None,
            image: Some(f.image.clone()),
            container: Some(f.container.clone()),
        },
    )
    .await;
}

async fn remove(rt: &Runtime, made: &Made) {
    if let Ok(d) = rt.docker().await {
        if let Some(c) = &made.container {
            force_remove(&d, c).await;
        }
        if let Some(image) = &made.image {
            remove_app_image(&d, image).await;
        }
    }
    if let Some(dir) = &made.checkout {
        let _ = tokio::fs::remove_dir_all(dir).await;
    }
}

/// Removes this node's app images that no container uses and no app of `held`
/// (`(deployment, generation)`, building or serving here) will: what an agent killed
/// mid-build, or a removal that failed, left behind. Images of other nodes sharing the
/// dockerd are not this node's to judge. Returns how many went.
pub async fn sweep_images(rt: &Runtime, node: &str, held: &[(uuid::Uuid, u32)]) -> usize {
    let Ok(d) = rt.docker().await else {
        return 0;
    };
    let key = |labels: &HashMap<String, String>| {
        Some((
            labels
                .get("kraken.deployment")?
                .parse::<uuid::Uuid>()
                .ok()?,
            labels.get("kraken.generation")?.parse::<u32>().ok()?,
        ))
    };
    let mine = HashMap::from([("label".to_string(), vec![format!("kraken.app-node={node}")])]);
    let containers = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&mine)
        .build();
    let Ok(containers) = d.list_containers(Some(containers)).await else {
        return 0;
    };
    let mut wanted: std::collections::HashSet<(uuid::Uuid, u32)> = held.iter().copied().collect();
    wanted.extend(containers.iter().filter_map(|c| key(c.labels.as_ref()?)));
    let images = bollard::query_parameters::ListImagesOptionsBuilder::new()
        .filters(&mine)
        .build();
    let Ok(images) = d.list_images(Some(images)).await else {
        return 0;
    };
    let mut removed = 0;
    for image in images {
        if key(&image.labels).is_some_and(|k| wanted.contains(&k)) {
            continue;
        }
        let name = image.repo_tags.first().cloned().unwrap_or(image.id.clone());
        tracing::info!(image = %name, "removing an app image nothing uses");
        remove_app_image(&d, &name).await;
        removed += 1;
    }
    removed
}

/// Removes an app image (a tag, or the layer a failed build stopped at) and the layers only
/// it used, from the top down to the one that copied the app in: the language's layers
/// below stay as the next build's cache, and a layer another image builds on stays too.
async fn remove_app_image(d: &Docker, image: &str) {
    let history = d.image_history(image).await.unwrap_or_default();
    let forced = RemoveImageOptionsBuilder::new().force(true).build();
    let _ = d.remove_image(image, Some(forced), None).await;
    if history
        .first()
        .is_some_and(|top| top.created_by.contains("COPY"))
    {
        return;
    }
    for layer in history.iter().skip(1) {
        if layer.id == "<missing>" || !layer.tags.is_empty() {
            return;
        }
        let plain = RemoveImageOptionsBuilder::new().build();
        if d.remove_image(&layer.id, Some(plain), None).await.is_err()
            || layer.created_by.contains("COPY")
        {
            return;
        }
    }
}

async fn deploy(
    rt: &Runtime,
    node: &str,
    work: &Path,
    a: &DeployAssignment,
    sinks: &Sinks<'_>,
    made: &mut Made,
    known: &mut Report,
) -> Result<(), AppError> {
    let dir = work.join(format!("{}-{}", a.id.simple(), a.generation));
    let _ = tokio::fs::remove_dir_all(&dir).await;
    tokio::fs::create_dir_all(work).await?;
    made.checkout = Some(dir.clone());
    (sinks.log)(
        "kraken",
        format!("cloning {} (branch {})", a.git_url, a.branch),
    );
    let commit = clone(&a.git_url, &a.branch, &dir).await?;
    let manifest = Manifest::read(&dir)?;
    // the app's port is taken before anything is built: a port in use fails at once
    let proxy = sinks.proxies.get(a.id, manifest.port).await?;
    known.app = Some(manifest.name.clone());
    known.port = Some(manifest.port);
    known.commit = Some(commit.clone());
    (sinks.report)(known.clone());
    (sinks.log)(
        "kraken",
        format!(
            "building {} ({}) at {commit} for port {}",
            manifest.name,
            manifest.lang.as_str(),
            manifest.port
        ),
    );
    let d = rt.docker().await?;
    let tag = format!(
        "kraken-app-{}:{}-{}",
        manifest.name,
        &a.id.simple().to_string()[..12],
        a.generation
    );
    made.image = Some(tag.clone());
    let mut built = build(rt, &dir, &manifest, &tag, a, node, sinks).await;
    if matches!(&built, Err(AppError::Build(why, _)) if why.contains("failed to get digest")) {
        // a cached layer went while the build used it (an agent sharing this dockerd removed
        // the same app's previous image): building again makes the layer anew
        (sinks.log)("kraken", "a cached layer vanished; building again".into());
        built = build(rt, &dir, &manifest, &tag, a, node, sinks).await;
    }
    if let Err(e) = built {
        // what the failed build left is removed from where it stopped
        made.image = match &e {
            AppError::Build(_, Some(layer)) => Some(layer.clone()),
            _ => None,
        };
        return Err(e);
    }
    let _ = tokio::fs::remove_dir_all(&dir).await;
    made.checkout = None;

    known.status = DeployStatus::Starting;
    (sinks.report)(known.clone());
    let name = format!(
        "kraken-app-{}-{}-g{}",
        manifest.name,
        &a.id.simple().to_string()[..12],
        a.generation
    );
    force_remove(&d, &name).await;
    let at = sinks.proxies.backend();
    let launch = Launch {
        node,
        name: &name,
        image: &tag,
        commit: &commit,
        at,
    };
    let container = start(&d, launch, &manifest, a).await?;
    made.container = Some(container.clone());
    (sinks.log)("kraken", "started; waiting for it to answer HTTP".into());

    let logs = follow_logs(&d, &container, sinks);
    let watched = async {
        let at = sinks.proxies.backend();
        let check = Check::of(manifest.health, &manifest.endpoint);
        let backend = healthy(&d, &container, manifest.port, at, check).await?;
        serve(&proxy, backend, sinks);
        known.status = DeployStatus::Running;
        (sinks.report)(known.clone());
        watch(&d, &container, &proxy).await
    };
    tokio::select! {
        r = watched => r,
        _ = logs => std::future::pending().await,
    }
}

/// Points the app's port at this generation's container.
fn serve(proxy: &Proxy, backend: u16, sinks: &Sinks<'_>) {
    proxy.point_to(backend);
    sinks.serving.cancel();
    (sinks.log)("kraken", format!("healthy: serving on port {}", proxy.port));
}

/// The commit a remote branch points at now (`git ls-remote`).
pub async fn remote_head(url: &str, branch: &str) -> Result<String, String> {
    if url.starts_with('-') || branch.starts_with('-') {
        return Err("neither the URL nor the branch may start with '-'".into());
    }
    let refname = format!("refs/heads/{branch}");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        git(&["ls-remote", "--", url, &refname]).output(),
    )
    .await
    .map_err(|_| "no answer within 30 s".to_string())?
    .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| format!("the repository has no branch {branch}"))
}

/// Clones one branch, shallow, and returns its commit. Git never asks for a password: a
/// private repository fails with git's own message.
async fn clone(url: &str, branch: &str, dir: &Path) -> Result<String, AppError> {
    let fail = |detail: String| AppError::Clone {
        url: url.to_owned(),
        branch: branch.to_owned(),
        detail,
    };
    if url.starts_with('-') || branch.starts_with('-') {
        return Err(fail(
            "neither the URL nor the branch may start with '-'".into(),
        ));
    }
    let dir_s = dir.to_string_lossy().into_owned();
    let out = tokio::time::timeout(
        CLONE_TIMEOUT,
        git(&[
            "clone",
            "--quiet",
            "--depth",
            "1",
            "--single-branch",
            "--branch",
            branch,
            "--",
            url,
            &dir_s,
        ])
        .output(),
    )
    .await
    .map_err(|_| fail(format!("no answer within {} s", CLONE_TIMEOUT.as_secs())))?
    .map_err(|e| fail(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let detail = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(fail(if detail.is_empty() {
            format!("git exited with {}", out.status)
        } else {
            detail
        }));
    }
    let head = git(&["-C", &dir_s, "rev-parse", "HEAD"])
        .output()
        .await
        .map_err(|e| fail(format!("cannot run git: {e}")))?;
    Ok(String::from_utf8_lossy(&head.stdout).trim().to_owned())
}

/// The build context: the checkout without `.git`, plus the platform's Dockerfile.
fn context(dir: &Path, dockerfile: Option<&str>) -> Result<Vec<u8>, AppError> {
    let _ = std::fs::remove_dir_all(dir.join(".git"));
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)?;
    if let Some(text) = dockerfile {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, PLATFORM_DOCKERFILE, text.as_bytes())?;
    }
    Ok(tar.into_inner()?)
}

async fn build(
    rt: &Runtime,
    dir: &Path,
    manifest: &Manifest,
    tag: &str,
    a: &DeployAssignment,
    node: &str,
    sinks: &Sinks<'_>,
) -> Result<(), AppError> {
    let platform = manifest.lang.dockerfile_text();
    if platform.is_none() && !dir.join("Dockerfile").is_file() {
        return Err(AppError::NoDockerfile);
    }
    let d = rt.docker().await?;
    let dir2 = dir.to_owned();
    let ctx = crate::runtime::blocking(move || {
        context(&dir2, platform).map_err(|e| std::io::Error::other(e.to_string()))
    })
    .await?;
    let mut args = HashMap::from([("BASE_IMAGE".to_string(), rt.base_image().to_owned())]);
    if let Some(test) = &manifest.test {
        args.insert("KRAKEN_TEST".into(), test.clone());
    }
    let labels = HashMap::from([
        ("kraken.deployment".to_string(), a.id.to_string()),
        ("kraken.generation".to_string(), a.generation.to_string()),
        ("kraken.app-node".to_string(), node.to_owned()),
    ]);
    let opts = BuildImageOptionsBuilder::new()
        .t(tag)
        .dockerfile(if platform.is_some() {
            PLATFORM_DOCKERFILE
        } else {
            "Dockerfile"
        })
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .buildargs(&args)
        .memory((a.memory_mb.max(512) as i32) << 20)
        .build();
    let mut stream = d.build_image(opts, None, Some(bollard::body_full(ctx.into())));
    let mut last = Vec::<String>::new();
    let mut layer: Option<String> = None;
    while let Some(step) = stream.next().await {
        let step = step.map_err(|e| AppError::Build(e.to_string(), layer.clone()))?;
        if let Some(text) = step.stream {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                // the classic builder names each layer it made: ` ---> <id>`
                if let Some(id) = line.trim().strip_prefix("---> ") {
                    if id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                        layer = Some(id.to_owned());
                    }
                }
                (sinks.log)("build", line.to_owned());
                last.push(line.to_owned());
                if last.len() > 3 {
                    last.remove(0);
                }
            }
        }
        if let Some(detail) = step.error_detail {
            let message = detail.message.unwrap_or_default();
            (sinks.log)("build", message.clone());
            return Err(AppError::Build(
                format!("{message} (last output: {})", last.join(" | ")),
                layer,
            ));
        }
    }
    Ok(())
}

/// One app container to create.
struct Launch<'a> {
    node: &'a str,
    name: &'a str,
    image: &'a str,
    commit: &'a str,
    /// Where its port is published (at a port Docker picks).
    at: std::net::IpAddr,
}

/// Creates and starts the container, its port published at `l.at` on a port Docker picks
/// (again at each of Docker's restarts of it: see [`backend_port`]).
async fn start(
    d: &Docker,
    l: Launch<'_>,
    manifest: &Manifest,
    a: &DeployAssignment,
) -> Result<String, AppError> {
    let Launch {
        node,
        name,
        image,
        commit,
        at,
    } = l;
    let port = format!("{}/tcp", manifest.port);
    let memory = (a.memory_mb as i64) << 20;
    let mut env = vec![format!("PORT={}", manifest.port)];
    if let Some(run) = &manifest.run {
        env.push(format!("KRAKEN_RUN={run}"));
    }
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        env: Some(env),
        user: Some(format!("{JOB_UID}:{JOB_UID}")),
        exposed_ports: Some(vec![port.clone()]),
        labels: Some(HashMap::from([
            ("kraken.deployment".to_string(), a.id.to_string()),
            ("kraken.generation".to_string(), a.generation.to_string()),
            ("kraken.app-node".to_string(), node.to_owned()),
            ("kraken.app".to_string(), manifest.name.clone()),
            ("kraken.port".to_string(), manifest.port.to_string()),
            ("kraken.endpoint".to_string(), manifest.endpoint.clone()),
            (
                "kraken.health".to_string(),
                manifest.health.as_str().to_owned(),
            ),
            ("kraken.commit".to_string(), commit.to_owned()),
        ])),
        host_config: Some(HostConfig {
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(512),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            privileged: Some(false),
            port_bindings: Some(HashMap::from([(
                port,
                Some(vec![PortBinding {
                    host_ip: Some(at.to_string()),
                    host_port: Some(String::new()),
                }]),
            )])),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: Some(MAX_RESTARTS),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = d
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(name).build()),
            body,
        )
        .await
        .map_err(|e| AppError::Start(docker_message(e)))?;
    if let Err(e) = d.start_container(&created.id, None).await {
        force_remove(d, &created.id).await;
        return Err(AppError::Start(docker_message(e)));
    }
    Ok(created.id)
}

/// The loopback port Docker published a container's `port` at (only while it runs).
fn backend_port(info: &ContainerInspectResponse, port: u16) -> Option<u16> {
    let ports = info.network_settings.as_ref()?.ports.as_ref()?;
    let bindings = ports.get(&format!("{port}/tcp"))?.as_ref()?;
    bindings
        .iter()
        .find_map(|b| b.host_port.as_deref()?.parse().ok())
}

/// Docker's own message, without the status code around it.
fn docker_message(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    }
}

/// What a started app must do to be healthy.
#[derive(Clone, Copy)]
enum Check<'a> {
    /// Answer HTTP at this path with anything but a server error.
    Http(&'a str),
    /// Stay up, without a restart, this long.
    StaysUp(Duration),
}

impl<'a> Check<'a> {
    fn of(health: Health, endpoint: &'a str) -> Self {
        match health {
            Health::Http => Check::Http(endpoint),
            Health::Running => Check::StaysUp(STAY_UP),
        }
    }
}

/// Waits until the app passes its check, or fails when the container gives up or the
/// window passes; the loopback port it is published on.
async fn healthy(
    d: &Docker,
    container: &str,
    port: u16,
    at: std::net::IpAddr,
    check: Check<'_>,
) -> Result<u16, AppError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| AppError::Unhealthy(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + HEALTH_WINDOW;
    // since when it runs, with how many restarts
    let mut up: Option<(tokio::time::Instant, i64)> = None;
    loop {
        let info = inspect_live(d, container).await?;
        // published only while the container runs
        if let Some(backend) = backend_port(&info, port) {
            match check {
                Check::Http(endpoint) => {
                    let url = format!(
                        "http://{}{endpoint}",
                        std::net::SocketAddr::new(at, backend)
                    );
                    if client
                        .get(&url)
                        .send()
                        .await
                        .is_ok_and(|r| !r.status().is_server_error())
                    {
                        return Ok(backend);
                    }
                }
                Check::StaysUp(long) => {
                    let running = info.state.as_ref().and_then(|s| s.running) == Some(true);
                    let restarts = info.restart_count.unwrap_or(0);
                    match up {
                        Some((since, r)) if running && r == restarts => {
                            if since.elapsed() >= long {
                                return Ok(backend);
                            }
                        }
                        _ if running => up = Some((tokio::time::Instant::now(), restarts)),
                        _ => up = None,
                    }
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(AppError::Unhealthy(match check {
                Check::Http(_) => format!(
                    "it did not answer HTTP on its port within {} s",
                    HEALTH_WINDOW.as_secs()
                ),
                Check::StaysUp(long) => format!(
                    "it did not stay up for {} s within {} s",
                    long.as_secs(),
                    HEALTH_WINDOW.as_secs()
                ),
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The container as Docker sees it now; `AppError::Unhealthy` with the reason once it
/// stopped for good (it exited and Docker's restarts are used up, or it was removed under
/// us).
async fn inspect_live(d: &Docker, container: &str) -> Result<ContainerInspectResponse, AppError> {
    let info = match d.inspect_container(container, None).await {
        Ok(info) => info,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => return Err(AppError::Unhealthy("its container was removed".into())),
        Err(e) => return Err(e.into()),
    };
    match given_up(&info) {
        Some(reason) => Err(AppError::Unhealthy(reason)),
        None => Ok(info),
    }
}

/// `Some(reason)` once the container stopped for good: it exited and Docker's restarts are
/// used up.
fn given_up(info: &ContainerInspectResponse) -> Option<String> {
    let restarts = info.restart_count.unwrap_or(0);
    let state = info.state.clone().unwrap_or_default();
    if state.running == Some(true) || state.restarting == Some(true) {
        return None;
    }
    // between a crash and Docker's restart the container shows as exited for a moment
    if restarts < MAX_RESTARTS && state.exit_code != Some(0) {
        return None;
    }
    let code = state.exit_code.unwrap_or(-1);
    Some(if state.oom_killed == Some(true) {
        "it went over its memory limit and was killed".into()
    } else if restarts == 0 {
        format!("the app exited at once (code {code})")
    } else {
        format!("the app kept exiting (code {code}); gave up after {restarts} restarts")
    })
}

/// Watches a running app until it stops for good; when Docker restarts it (on another
/// loopback port), the app's port follows.
async fn watch(d: &Docker, container: &str, proxy: &Proxy) -> Result<(), AppError> {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let info = inspect_live(d, container).await?;
        if let Some(backend) = backend_port(&info, proxy.port) {
            if proxy.target() != Some(backend) {
                proxy.point_to(backend);
            }
        }
    }
}

/// Follows the app's output across Docker's restarts of it (never returns on its own).
async fn follow_logs(d: &Docker, container: &str, sinks: &Sinks<'_>) {
    let mut since = 0i32;
    loop {
        let opts = LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .since(since)
            .build();
        let mut lines = LineSplitter::default();
        let mut stream = d.logs(container, Some(opts));
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bollard::container::LogOutput::StdOut { message }) => {
                    for l in lines.push("stdout", &message) {
                        (sinks.log)("stdout", l);
                    }
                }
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    for l in lines.push("stderr", &message) {
                        (sinks.log)("stderr", l);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for (stream, l) in lines.finish() {
            (sinks.log)(stream, l);
        }
        since = (crate::now_ms() / 1000) as i32;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
