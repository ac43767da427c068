//! Docker through bollard: the job image (`kraken-job:<version>-<build hash>`, built from
//! `dockerfiles/job.Dockerfile` with this agent's own executable inside), job containers with
//! memory, CPU, process and time limits, log capture, and cleanup.
//!
//! Job containers run as `nobody`, with every capability dropped, `no-new-privileges`, a
//! read-only root, no network unless the kind needs one, and never the docker socket.

use crate::broker::messages::{JobAssignment, JobOutcome};
use crate::jobs::ContainerSetup;
use crate::store::LogLine;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

/// The Dockerfile of the job image, compiled in so a lone binary can build it.
pub const JOB_DOCKERFILE: &str = include_str!("../dockerfiles/job.Dockerfile");
/// The prefix of the line by which a job container reports its outcome on stdout.
pub const RESULT_MARKER: &str = "KRAKEN_RESULT ";
/// Longest log line kept; longer lines are cut and say so.
pub const MAX_LOG_LINE: usize = 16 * 1024;
/// Longest result a job container may report.
pub const MAX_RESULT_LINE: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("building the job image: {0}")]
    Build(String),
    #[error("reading this agent's executable: {0}")]
    Exe(std::io::Error),
    #[error("preparing {0} for job containers: {1}")]
    Bind(std::path::PathBuf, std::io::Error),
}

/// The unprivileged user and group job containers run as.
pub const JOB_UID: u32 = 65534;

/// Creates `dir` and lets the job containers' user write to it. As root the directory is
/// given to that user; otherwise it is opened to everyone, which only matters where its
/// parent (the agent's data dir) is itself reachable by other users.
fn writable_by_jobs(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() == JOB_UID {
        return Ok(());
    }
    match std::os::unix::fs::chown(dir, Some(JOB_UID), Some(JOB_UID)) {
        Ok(()) => Ok(()),
        Err(_) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)),
    }
}

/// The Docker side of one worker.
pub struct Runtime {
    host: String,
    node: String,
    base_image: String,
    docker: tokio::sync::Mutex<Option<Docker>>,
    /// The id of the job image this process built or verified, so a tag moved by another
    /// agent on the same dockerd never changes what we run.
    job_image: tokio::sync::Mutex<Option<String>>,
}

impl Runtime {
    pub fn new(host: &str, node: &str, base_image: &str) -> Self {
        Self {
            host: host.to_owned(),
            node: node.to_owned(),
            base_image: base_image.to_owned(),
            docker: tokio::sync::Mutex::new(None),
            job_image: tokio::sync::Mutex::new(None),
        }
    }

    /// The image job and app images are built from.
    pub fn base_image(&self) -> &str {
        &self.base_image
    }

    /// A connected client, reconnecting (and renegotiating the API version) when needed.
    pub(crate) async fn docker(&self) -> Result<Docker, RuntimeError> {
        let mut guard = self.docker.lock().await;
        if let Some(d) = guard.as_ref() {
            return Ok(d.clone());
        }
        let d = if self.host.is_empty() {
            Docker::connect_with_local_defaults()?
        } else {
            Docker::connect_with_socket(&self.host, 120, bollard::API_DEFAULT_VERSION)?
        };
        let d = d.negotiate_version().await?;
        *guard = Some(d.clone());
        Ok(d)
    }

    async fn forget_client(&self) {
        *self.docker.lock().await = None;
    }

    /// Whether dockerd answers.
    pub async fn ping(&self) -> bool {
        match self.docker().await {
            Ok(d) => {
                let ok = d.ping().await.is_ok();
                if !ok {
                    self.forget_client().await;
                }
                ok
            }
            Err(_) => false,
        }
    }

    /// Names of this node's running job containers.
    pub async fn running_containers(&self) -> Vec<String> {
        let Ok(d) = self.docker().await else {
            return vec![];
        };
        let filters = self.own_containers();
        let opts = ListContainersOptionsBuilder::new()
            .filters(&filters)
            .build();
        match d.list_containers(Some(opts)).await {
            Ok(list) => list
                .into_iter()
                .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
                .map(|n| n.trim_start_matches('/').to_owned())
                .collect(),
            Err(_) => {
                self.forget_client().await;
                vec![]
            }
        }
    }

    /// The label filter that selects this node's job containers.
    fn own_containers(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![format!("kraken.node={}", self.node)],
        )])
    }

    /// Removes job containers a previous run of this node left behind (after a crash).
    pub async fn remove_leftovers(&self) {
        let Ok(d) = self.docker().await else {
            return;
        };
        let filters = self.own_containers();
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        if let Ok(list) = d.list_containers(Some(opts)).await {
            for id in list.into_iter().filter_map(|c| c.id) {
                tracing::info!(container = %id, "removing a leftover job container");
                force_remove(&d, &id).await;
            }
        }
    }

    /// The job image for this executable, built when missing or stale.
    pub async fn ensure_job_image(&self) -> Result<String, RuntimeError> {
        let mut cached = self.job_image.lock().await;
        if let Some(id) = cached.as_ref() {
            return Ok(id.clone());
        }
        let d = self.docker().await?;
        let exe = std::env::current_exe().map_err(RuntimeError::Exe)?;
        // hashed as a stream: the usual case (the image is current) never holds the
        // executable in memory
        let exe2 = exe.clone();
        let hash = blocking(move || context_hash(&exe2)).await?;
        // one tag per build: agents of other builds on the same dockerd never move it
        let tag = format!("kraken-job:{}-{}", crate::VERSION, &hash[..12]);
        if let Ok(image) = d.inspect_image(&tag).await {
            if let Some(id) = image.id {
                *cached = Some(id.clone());
                return Ok(id);
            }
        }
        tracing::info!(%tag, base = %self.base_image, "building the job image");
        let context = blocking(move || build_context(&exe)).await?;
        let labels = HashMap::from([("kraken.context-sha256".to_string(), hash.clone())]);
        let args = HashMap::from([("BASE_IMAGE".to_string(), self.base_image.clone())]);
        let opts = BuildImageOptionsBuilder::new()
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .labels(&labels)
            .buildargs(&args)
            .build();
        let mut stream = d.build_image(opts, None, Some(bollard::body_full(context.into())));
        while let Some(step) = stream.next().await {
            let step = step.map_err(|e| RuntimeError::Build(e.to_string()))?;
            if let Some(detail) = step.error_detail {
                return Err(RuntimeError::Build(detail.message.unwrap_or_default()));
            }
        }
        let id = d
            .inspect_image(&tag)
            .await?
            .id
            .ok_or_else(|| RuntimeError::Build("built image has no id".into()))?;
        tracing::info!(%tag, %id, "job image ready");
        remove_old_job_images(&d, &id).await;
        *cached = Some(id.clone());
        Ok(id)
    }

    /// Runs one job attempt in a container and reports how it ended. Docker failures are an
    /// outcome too (retryable), never a panic.
    pub async fn run_job(
        &self,
        job: &JobAssignment,
        setup: &ContainerSetup,
        log: &(dyn Fn(LogLine) + Send + Sync),
    ) -> JobOutcome {
        match self.try_run_job(job, setup, log).await {
            Ok(outcome) => outcome,
            Err(error) => {
                self.forget_client().await;
                JobOutcome {
                    success: false,
                    exit_code: None,
                    result: None,
                    error: Some(error.to_string()),
                    retryable: true,
                }
            }
        }
    }

    async fn try_run_job(
        &self,
        job: &JobAssignment,
        setup: &ContainerSetup,
        log: &(dyn Fn(LogLine) + Send + Sync),
    ) -> Result<JobOutcome, RuntimeError> {
        let image = self.ensure_job_image().await?;
        let d = self.docker().await?;
        let name = format!("kraken-{}-{}-{}", self.node, job.job.simple(), job.attempt);
        let memory = (job.limits.memory_mb as i64) << 20;
        let mut binds = Vec::with_capacity(setup.binds.len());
        for (host, inside) in &setup.binds {
            writable_by_jobs(host).map_err(|e| RuntimeError::Bind(host.clone(), e))?;
            binds.push(format!("{}:{inside}:rw", host.display()));
        }
        let mut env = vec![
            format!("KRAKEN_JOB_KIND={}", job.kind),
            format!("KRAKEN_JOB_SPEC={}", job.spec),
        ];
        env.extend(setup.env.iter().cloned());
        let body = ContainerCreateBody {
            image: Some(image),
            cmd: Some(vec!["job".into(), "run".into()]),
            env: Some(env),
            user: Some(format!("{JOB_UID}:{JOB_UID}")),
            labels: Some(HashMap::from([
                ("kraken.job".to_string(), job.job.to_string()),
                ("kraken.attempt".to_string(), job.attempt.to_string()),
                ("kraken.node".to_string(), self.node.clone()),
            ])),
            host_config: Some(HostConfig {
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some((job.limits.cpus * 1e9) as i64),
                pids_limit: Some(256),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                privileged: Some(false),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    "size=64m".to_string(),
                )])),
                network_mode: Some(if setup.network { "bridge" } else { "none" }.into()),
                binds: Some(binds),
                ..Default::default()
            }),
            ..Default::default()
        };
        // a container of the same name is a leftover of this very attempt: replace it
        force_remove(&d, &name).await;
        let create = |body: ContainerCreateBody| {
            d.create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
        };
        let created = match create(body.clone()).await {
            Ok(created) => created,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                // the image was removed under us (an operator's prune): build it again and
                // try once more, within this attempt
                tracing::warn!("the job image is gone; building it again");
                *self.job_image.lock().await = None;
                let mut body = body;
                body.image = Some(self.ensure_job_image().await?);
                create(body).await?
            }
            Err(e) => return Err(e.into()),
        };
        let id = created.id;
        let result = self.start_and_wait(&d, &id, job, log).await;
        force_remove(&d, &id).await;
        result
    }

    async fn start_and_wait(
        &self,
        d: &Docker,
        id: &str,
        job: &JobAssignment,
        log: &(dyn Fn(LogLine) + Send + Sync),
    ) -> Result<JobOutcome, RuntimeError> {
        d.start_container(id, None).await?;
        let opts = LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut logs = d.logs(id, Some(opts));
        let mut lines = LineSplitter::default();
        let mut marker: Option<String> = None;
        let attempt = job.attempt;
        let mut emit = |stream: &str, text: String| {
            if stream == "stdout" {
                if let Some(rest) = text.strip_prefix(RESULT_MARKER) {
                    marker = Some(rest.to_owned());
                    return;
                }
            }
            log(LogLine {
                at: crate::now_ms(),
                attempt,
                stream: stream.to_owned(),
                text: clip_line(&text),
            });
        };
        let deadline = tokio::time::sleep(Duration::from_secs(job.limits.timeout_secs));
        tokio::pin!(deadline);
        let mut timed_out = false;
        loop {
            tokio::select! {
                chunk = logs.next() => match chunk {
                    Some(Ok(bollard::container::LogOutput::StdOut { message })) => {
                        for l in lines.push("stdout", &message) { emit("stdout", l) }
                    }
                    Some(Ok(bollard::container::LogOutput::StdErr { message })) => {
                        for l in lines.push("stderr", &message) { emit("stderr", l) }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::debug!(%error, "log stream ended");
                        break;
                    }
                    None => break,
                },
                _ = &mut deadline => {
                    timed_out = true;
                    let _ = d.kill_container(id, Some(KillContainerOptionsBuilder::new().signal("KILL").build())).await;
                    break;
                }
            }
        }
        for (stream, l) in lines.finish() {
            emit(stream, l);
        }
        // the log stream ends when the container does; wait for its final state
        let mut wait = d.wait_container(id, None);
        let _ = tokio::time::timeout(Duration::from_secs(10), wait.next()).await;
        let state = d
            .inspect_container(id, None)
            .await?
            .state
            .unwrap_or_default();
        let exit_code = state.exit_code;
        let fail = |error: String, retryable: bool| JobOutcome {
            success: false,
            exit_code,
            result: None,
            error: Some(error),
            retryable,
        };
        if timed_out {
            return Ok(fail(
                format!(
                    "timed out after {} s and was killed",
                    job.limits.timeout_secs
                ),
                true,
            ));
        }
        if state.oom_killed == Some(true) {
            return Ok(fail(
                format!(
                    "exceeded its memory limit of {} MiB and was killed",
                    job.limits.memory_mb
                ),
                false,
            ));
        }
        match marker.map(|m| serde_json::from_str::<ContainerResult>(&m)) {
            Some(Ok(r)) if r.ok => Ok(JobOutcome {
                success: true,
                exit_code,
                result: r.result,
                error: None,
                retryable: false,
            }),
            Some(Ok(r)) => Ok(fail(
                r.error.unwrap_or_else(|| "failed".into()),
                r.retryable,
            )),
            Some(Err(e)) => Ok(fail(format!("unreadable result line: {e}"), true)),
            None if exit_code == Some(137) => Ok(fail(
                format!(
                    "killed (exit code 137), probably over its memory limit of {} MiB",
                    job.limits.memory_mb
                ),
                false,
            )),
            None => Ok(fail(
                format!(
                    "job container exited with code {} without a result",
                    exit_code.map_or("?".into(), |c| c.to_string())
                ),
                true,
            )),
        }
    }
}

/// What `kraken job run` prints after [`RESULT_MARKER`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ContainerResult {
    pub ok: bool,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub retryable: bool,
}

/// Where hosts keep their bundle of trusted CA certificates, in order of preference.
const CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Job images of other builds older than this are removed when a new one is built (an
/// agent of that build on the same dockerd would have rebuilt it long since).
const OLD_JOB_IMAGE_SECS: i64 = 24 * 3600;

/// Removes job images of other builds that are more than a day old; one a container still
/// uses is refused by docker and stays.
async fn remove_old_job_images(d: &Docker, keep: &str) {
    let filters = HashMap::from([(
        "label".to_string(),
        // every job image carries this label (whatever its hash)
        vec!["kraken.context-sha256".to_string()],
    )]);
    let opts = bollard::query_parameters::ListImagesOptionsBuilder::new()
        .filters(&filters)
        .build();
    let Ok(images) = d.list_images(Some(opts)).await else {
        return;
    };
    let now = crate::now_ms() / 1000;
    for image in images {
        if image.id == keep || now - image.created < OLD_JOB_IMAGE_SECS {
            continue;
        }
        let opts = RemoveImageOptionsBuilder::new().build();
        if d.remove_image(&image.id, Some(opts), None).await.is_ok() {
            tracing::info!(image = %image.id, "removed an old job image");
        }
    }
}

/// Reads files off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Build(e.to_string()))?
        .map_err(RuntimeError::Exe)
}

/// The host's CA bundle (empty when it has none).
fn ca_bundle() -> Vec<u8> {
    CA_BUNDLES
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .unwrap_or_default()
}

/// The hash of what goes into the job image: this executable and the host's CA bundle.
fn context_hash(exe: &std::path::Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(exe)?, &mut hasher)?;
    hasher.update(ca_bundle());
    Ok(hex::encode(hasher.finalize()))
}

/// The tar build context: the Dockerfile, this executable, and the host's CA bundle so jobs
/// can speak HTTPS on a base image without one.
fn build_context(exe: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(exe)?.read_to_end(&mut bytes)?;
    let certs = ca_bundle();
    if certs.is_empty() {
        tracing::warn!("no CA bundle on this host: jobs will not trust HTTPS servers");
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, name, data)
    };
    add("Dockerfile", JOB_DOCKERFILE.as_bytes(), 0o644)?;
    add("kraken", &bytes, 0o755)?;
    add("ca-certificates.crt", &certs, 0o644)?;
    tar.into_inner()
}

/// Splits a byte stream into lines per stream, clipping oversized lines.
#[derive(Default)]
pub(crate) struct LineSplitter {
    partial: HashMap<&'static str, Vec<u8>>,
}

impl LineSplitter {
    pub(crate) fn push(&mut self, stream: &'static str, bytes: &[u8]) -> Vec<String> {
        let buf = self.partial.entry(stream).or_default();
        buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            out.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        // a line that never ends must not grow without bound; the result line may be long
        let limit = if buf.starts_with(RESULT_MARKER.as_bytes()) {
            MAX_RESULT_LINE
        } else {
            4 * MAX_LOG_LINE
        };
        if buf.len() > limit {
            out.push(clip_line(&String::from_utf8_lossy(buf)));
            buf.clear();
        }
        out
    }

    pub(crate) fn finish(&mut self) -> Vec<(&'static str, String)> {
        self.partial
            .drain()
            .filter(|(_, b)| !b.is_empty())
            .map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
            .collect()
    }
}

/// Removes a container whether it runs or not; a container already gone is no error.
pub(crate) async fn force_remove(d: &Docker, id: &str) {
    let opts = RemoveContainerOptionsBuilder::new().force(true).build();
    let _ = d.remove_container(id, Some(opts)).await;
}

/// Cuts a line to [`MAX_LOG_LINE`] bytes (on a char boundary), saying how much was cut.
pub fn clip_line(line: &str) -> String {
    let line = line.trim_end_matches('\r');
    if line.len() <= MAX_LOG_LINE {
        return line.to_owned();
    }
    let mut end = MAX_LOG_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… [line cut, {} bytes dropped]",
        &line[..end],
        line.len() - end
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks() {
        let mut s = LineSplitter::default();
        assert!(s.push("stdout", b"hel").is_empty());
        assert_eq!(s.push("stdout", b"lo\nwor"), vec!["hello".to_string()]);
        assert_eq!(s.finish(), vec![("stdout", "wor".to_string())]);
    }

    #[test]
    fn oversized_lines_are_clipped() {
        let long = "é".repeat(MAX_LOG_LINE);
        let clipped = clip_line(&long);
        assert!(clipped.len() < MAX_LOG_LINE + 64);
        assert!(clipped.ends_with("bytes dropped]"));
    }
}
