//! The worker: keeps an AMQP session to the orchestrator's broker, sends heartbeats with the
//! node's resources, runs the job attempts it is given (in a container, or in-process for
//! kinds that allow it) and the app deployments it is given (see [`crate::deploy::app`]), and
//! reports their events and log lines.
//!
//! Events and log lines go through an outbox that survives broker outages: they are
//! published, in order, once a session is back.

use crate::broker::messages::{
    DeployAssignment, DeployEvent, Heartbeat, JobAssignment, JobChange, JobEvent, JobOutcome,
    LogBatch, WorkRequest,
};
use crate::broker::{work_queue, Broker};
use crate::deploy::app;
use crate::deploy::proxy::Proxies;
use crate::jobs::{self, JobContext};
use crate::runtime::{clip_line, Runtime};
use crate::store::{DeployStatus, Isolation, LogLine, NodeStats};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Where the worker finds its cluster's broker now: the AMQP URL of the orchestrator it
/// follows (`None` while there is none). When it changes (a new leader, a new address) the
/// worker reconnects there.
pub type BrokerAccess = watch::Receiver<Option<String>>;

/// Settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub node_id: String,
    pub slots: u32,
    pub heartbeat: Duration,
    pub prefetch: u16,
    pub data_dir: PathBuf,
    /// The node's configuration, from which each kind takes its container's setup.
    pub config: Arc<crate::config::Config>,
}

enum Outgoing {
    Event(JobEvent),
    Logs(LogBatch),
    Deploy(DeployEvent),
}

/// One deployment this node runs: its generation, what stops it, and its task.
struct AppSlot {
    generation: u32,
    /// Stops it for good (an operator, or a newer generation); the agent's own shutdown
    /// leaves a running app running.
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

/// How often app images nothing uses are looked for.
const IMAGE_SWEEP: Duration = Duration::from_secs(600);

pub struct Worker {
    settings: WorkerSettings,
    runtime: Arc<Runtime>,
    /// Attempts running here, with the token that cancels each.
    running: Mutex<HashMap<(Uuid, u32), CancellationToken>>,
    /// Deployments running here, by id.
    apps: Mutex<HashMap<Uuid, AppSlot>>,
    /// The ports the apps here serve on.
    proxies: Proxies,
    /// The apps serving here: deployment → (name, port), for `<name>.local`.
    served: watch::Sender<std::collections::BTreeMap<Uuid, (String, u16)>>,
    /// Attempts that finished here but whose `Finished` event the broker has not confirmed;
    /// heartbeats list them with the running ones, so the orchestrator never takes a job
    /// that is merely on its way back for lost.
    finishing: Mutex<HashSet<(Uuid, u32)>>,
    outbox: Mutex<VecDeque<Outgoing>>,
    outbox_ready: Notify,
    broker: watch::Sender<Option<Arc<Broker>>>,
    stats: Mutex<StatsReader>,
}

impl Worker {
    pub fn new(settings: WorkerSettings, runtime: Arc<Runtime>) -> Arc<Self> {
        Arc::new(Self {
            stats: Mutex::new(StatsReader::new(settings.data_dir.clone())),
            proxies: Proxies::new(settings.config.worker.app_backend_address),
            served: watch::channel(Default::default()).0,
            settings,
            runtime,
            running: Mutex::new(HashMap::new()),
            apps: Mutex::new(HashMap::new()),
            finishing: Mutex::new(HashSet::new()),
            outbox: Mutex::new(VecDeque::new()),
            outbox_ready: Notify::new(),
            broker: watch::channel(None).0,
        })
    }

    /// The apps serving on this node: deployment → (name, port).
    pub fn served(&self) -> watch::Receiver<std::collections::BTreeMap<Uuid, (String, u16)>> {
        self.served.subscribe()
    }

    pub fn running_count(&self) -> usize {
        lock(&self.running).len()
    }

    /// Runs the worker until `shutdown`: sessions with the broker, heartbeats, the outbox.
    pub fn start(
        self: &Arc<Self>,
        access: BrokerAccess,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) {
        let me = self.clone();
        let token = shutdown.clone();
        let (inner, token0) = (tasks.clone(), shutdown.clone());
        tasks.spawn(async move {
            me.runtime.remove_leftovers().await;
            me.adopt_apps(&inner, &token0).await;
            me.sweep_app_images_every(IMAGE_SWEEP, token0.clone());
            if me.settings.slots > 0 {
                // build the job image up front, so the first job does not pay for it
                if let Err(error) = me.runtime.ensure_job_image().await {
                    tracing::warn!(%error, "job image not ready yet");
                }
            }
        });
        let me = self.clone();
        let token2 = token.clone();
        let inner = tasks.clone();
        tasks.spawn(async move { me.session_loop(access, token2, inner).await });
        let me = self.clone();
        let token3 = token.clone();
        tasks.spawn(async move { me.heartbeat_loop(token3).await });
        let me = self.clone();
        tasks.spawn(async move { me.outbox_loop(token).await });
    }

    async fn session_loop(
        self: Arc<Self>,
        mut access: BrokerAccess,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        let mut backoff = Duration::from_millis(200);
        let name = format!("kraken-worker-{}", self.settings.node_id);
        while !shutdown.is_cancelled() {
            let current = access.borrow_and_update().clone();
            let Some(url) = current else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = access.changed() => if r.is_err() { shutdown.cancelled().await; return },
                }
                continue;
            };
            let connected = async {
                let broker = Arc::new(Broker::connect(&url, &name).await?);
                let queue = work_queue(&self.settings.node_id);
                let consumer = broker
                    .consume::<WorkRequest>(&queue, self.settings.prefetch)
                    .await?;
                Ok::<_, crate::broker::BrokerError>((broker, consumer))
            };
            let (broker, mut consumer) = match connected.await {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(%error, "cannot reach the broker; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                        _ = access.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            tracing::info!(node = %self.settings.node_id, "worker connected to the broker");
            self.broker.send_replace(Some(broker.clone()));
            self.outbox_ready.notify_one();
            loop {
                let delivery = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    d = consumer.next() => d,
                    r = access.changed() => {
                        if r.is_err() {
                            continue;
                        }
                        if access.borrow().as_deref() != Some(url.as_str()) {
                            tracing::info!("the cluster's broker moved (a new orchestrator or address); reconnecting there");
                            break;
                        }
                        continue;
                    }
                };
                let Some(delivery) = delivery else {
                    tracing::warn!("lost the broker session; reconnecting");
                    break;
                };
                match delivery.msg.clone() {
                    WorkRequest::RunJob(job) => self.accept(job, &tasks, &shutdown),
                    WorkRequest::Deploy(a) => self.deploy(a, &tasks, &shutdown),
                    WorkRequest::StopDeployment { id, generation } => self.stop_app(id, generation),
                    WorkRequest::CancelJob { job, attempt } => {
                        if let Some(token) = lock(&self.running).get(&(job, attempt)) {
                            tracing::info!(%job, attempt, "cancelling job");
                            token.cancel();
                        }
                    }
                }
                // the orchestrator keeps the job durable; the delivery is done once accepted
                if let Err(error) = delivery.ack().await {
                    tracing::warn!(%error, "ack failed");
                }
            }
            self.broker.send_replace(None);
            broker.close().await;
        }
    }

    fn accept(
        self: &Arc<Self>,
        job: JobAssignment,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let key = (job.job, job.attempt);
        let token = shutdown.child_token();
        {
            let mut running = lock(&self.running);
            if running.contains_key(&key) {
                tracing::info!(job = %job.job, attempt = job.attempt, "duplicate delivery ignored");
                return;
            }
            running.insert(key, token.clone());
        }
        let me = self.clone();
        tasks.spawn(async move {
            let span =
                tracing::info_span!("job", id = %job.job, attempt = job.attempt, kind = %job.kind);
            let running = me.clone();
            tracing::Instrument::instrument(me.run_attempt(job, token), span).await;
            lock(&running.running).remove(&key);
        });
    }

    /// Starts a deployment's generation; an older one of the same deployment is stopped
    /// (and its container gone) first, and a repeated or older assignment is ignored.
    fn deploy(
        self: &Arc<Self>,
        a: DeployAssignment,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        self.hold_app(a, None, tasks, shutdown);
    }

    /// Takes on one deployment generation: a new one to build (`found` is `None`) or an app
    /// container a previous run of this agent left running.
    fn hold_app(
        self: &Arc<Self>,
        a: DeployAssignment,
        found: Option<app::Found>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let stop = CancellationToken::new();
        let mut apps = lock(&self.apps);
        let before = match apps.get(&a.id) {
            Some(slot) if slot.generation >= a.generation => {
                tracing::info!(id = %a.id, generation = a.generation, "stale or repeated deployment ignored");
                return;
            }
            Some(_) => apps.remove(&a.id),
            None => None,
        };
        let me = self.clone();
        let token = stop.clone();
        let shutdown = shutdown.clone();
        let (id, generation) = (a.id, a.generation);
        // the generation before serves until this one does
        let done = tasks.spawn(async move {
            let span = tracing::info_span!("deployment", id = %a.id, generation = a.generation);
            let run = me.run_app(a, found, before, token, shutdown);
            tracing::Instrument::instrument(run, span).await;
        });
        apps.insert(
            id,
            AppSlot {
                generation,
                stop,
                done,
            },
        );
    }

    /// Removes app images nothing uses now and then after every `period`, so the disk
    /// holds one image per app this node serves.
    fn sweep_app_images_every(self: &Arc<Self>, period: Duration, shutdown: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let held: Vec<(Uuid, u32)> = lock(&me.apps)
                    .iter()
                    .map(|(id, slot)| (*id, slot.generation))
                    .collect();
                app::sweep_images(&me.runtime, &me.settings.node_id, &held).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
            }
        });
    }

    /// Adopts the app containers a previous run of this agent left running (the
    /// orchestrator stops those that are no longer wanted when the heartbeats list them),
    /// and removes those that stopped.
    async fn adopt_apps(self: &Arc<Self>, tasks: &TaskTracker, shutdown: &CancellationToken) {
        for f in app::found(&self.runtime, &self.settings.node_id).await {
            if !f.running {
                app::remove_found(&self.runtime, &f).await;
                continue;
            }
            tracing::info!(id = %f.id, generation = f.generation, "adopting a running app");
            let a = DeployAssignment {
                id: f.id,
                generation: f.generation,
                git_url: String::new(),
                branch: String::new(),
                memory_mb: 0,
            };
            self.hold_app(a, Some(f), tasks, shutdown);
        }
    }

    async fn run_app(
        self: Arc<Self>,
        a: DeployAssignment,
        found: Option<app::Found>,
        before: Option<AppSlot>,
        stop: CancellationToken,
        shutdown: CancellationToken,
    ) {
        let (log_tx, log_rx) = mpsc::unbounded_channel::<LogLine>();
        let batcher = tokio::spawn(batch_logs(self.clone(), a.id, a.generation, log_rx));
        let serving = CancellationToken::new();
        // once this generation serves, the one before goes
        let before = Arc::new(Mutex::new(before));
        let retire = {
            let (serving, before) = (serving.clone(), before.clone());
            tokio::spawn(async move {
                serving.cancelled().await;
                let old = lock(&before).take();
                if let Some(old) = old {
                    old.stop.cancel();
                    let _ = old.done.await;
                }
            })
        };
        let old_generation = lock(&before).as_ref().map(|s| s.generation);
        let report = |r: app::Report| {
            // a failed redeploy leaves the generation before it serving
            let serving_before = (r.status == DeployStatus::Failed && !serving.is_cancelled())
                .then_some(old_generation)
                .flatten();
            if let (DeployStatus::Running, Some(name), Some(port)) = (r.status, &r.app, r.port) {
                self.served.send_modify(|s| {
                    s.insert(a.id, (name.clone(), port));
                });
            }
            self.send(Outgoing::Deploy(DeployEvent {
                id: a.id,
                generation: a.generation,
                node: self.settings.node_id.clone(),
                at: crate::now_ms(),
                status: r.status,
                reason: r.reason,
                app: r.app,
                port: r.port,
                commit: r.commit,
                serving: serving_before,
            }))
        };
        let generation = a.generation;
        let log = move |stream: &str, text: String| {
            let _ = log_tx.send(LogLine {
                at: crate::now_ms(),
                attempt: generation,
                stream: stream.to_owned(),
                text: clip_line(&text),
            });
        };
        let work = self.settings.data_dir.join("apps");
        let sinks = app::Sinks {
            report: &report,
            log: &log,
            proxies: &self.proxies,
            serving: serving.clone(),
        };
        match &found {
            Some(f) => app::adopt(&self.runtime, &a, f, &sinks, stop, shutdown).await,
            None => {
                let node = &self.settings.node_id;
                app::run(&self.runtime, node, &work, &a, &sinks, stop, shutdown).await
            }
        }
        drop(log);
        let _ = batcher.await;
        retire.abort();
        let old = lock(&before).take();
        let mut apps = lock(&self.apps);
        if old.is_none() && apps.get(&a.id).is_none_or(|s| s.generation == a.generation) {
            self.served.send_modify(|s| {
                s.remove(&a.id);
            });
        }
        if apps
            .get(&a.id)
            .is_some_and(|s| s.generation == a.generation)
        {
            apps.remove(&a.id);
            // this one failed before it served: the one before it serves on (unless the
            // deployment was stopped, which took this one out of the map)
            if let Some(old) = old {
                apps.insert(a.id, old);
            }
        } else if let Some(old) = old {
            old.stop.cancel();
        }
    }

    /// Stops a deployment's generations up to `generation`.
    fn stop_app(&self, id: Uuid, generation: u32) {
        let mut apps = lock(&self.apps);
        if apps.get(&id).is_some_and(|s| s.generation <= generation) {
            if let Some(slot) = apps.remove(&id) {
                tracing::info!(%id, generation, "stopping deployment");
                slot.stop.cancel();
            }
        }
    }

    async fn run_attempt(self: Arc<Self>, job: JobAssignment, cancel: CancellationToken) {
        self.send(Outgoing::Event(self.event(&job, JobChange::Started)));
        let (log_tx, log_rx) = mpsc::unbounded_channel::<LogLine>();
        let batcher = tokio::spawn(batch_logs(self.clone(), job.job, job.attempt, log_rx));
        let outcome = tokio::select! {
            outcome = self.execute(&job, log_tx) => outcome,
            _ = cancel.cancelled() => JobOutcome {
                success: false, exit_code: None, result: None,
                error: Some("cancelled".into()), retryable: false,
            },
        };
        let _ = batcher.await;
        tracing::info!(success = outcome.success, error = ?outcome.error, "job attempt finished");
        lock(&self.finishing).insert((job.job, job.attempt));
        self.send(Outgoing::Event(
            self.event(&job, JobChange::Finished(outcome)),
        ));
    }

    async fn execute(
        &self,
        job: &JobAssignment,
        log_tx: mpsc::UnboundedSender<LogLine>,
    ) -> JobOutcome {
        let kind = match jobs::find(&job.kind) {
            Ok(k) => k,
            Err(e) => return failed(e.to_string(), false),
        };
        let attempt = job.attempt;
        match job.isolation {
            Isolation::InProcess if kind.in_process_safe() => {
                let tx = log_tx.clone();
                let ctx = JobContext::new(move |line| {
                    let _ = tx.send(LogLine {
                        at: crate::now_ms(),
                        attempt,
                        stream: "stdout".into(),
                        text: clip_line(line),
                    });
                });
                let limit = Duration::from_secs(job.limits.timeout_secs);
                match tokio::time::timeout(limit, kind.run(&job.spec, &ctx)).await {
                    Ok(Ok(result)) => JobOutcome {
                        success: true,
                        exit_code: None,
                        result: Some(result),
                        error: None,
                        retryable: false,
                    },
                    Ok(Err(e)) => failed(e.to_string(), e.retryable()),
                    Err(_) => failed(
                        format!("timed out after {} s", job.limits.timeout_secs),
                        true,
                    ),
                }
            }
            Isolation::InProcess => {
                failed(format!("kind `{}` cannot run in-process", job.kind), false)
            }
            Isolation::Container => {
                let log = move |line: LogLine| {
                    let _ = log_tx.send(line);
                };
                let setup = kind.container_setup(&self.settings.config);
                self.runtime.run_job(job, &setup, &log).await
            }
        }
    }

    fn event(&self, job: &JobAssignment, change: JobChange) -> JobEvent {
        JobEvent {
            job: job.job,
            attempt: job.attempt,
            node: self.settings.node_id.clone(),
            at: crate::now_ms(),
            change,
        }
    }

    fn send(&self, msg: Outgoing) {
        let mut outbox = lock(&self.outbox);
        // bounded: under a very long outage, old log batches go first, events never
        if outbox.len() > 100_000 {
            if let Some(pos) = outbox.iter().position(|m| matches!(m, Outgoing::Logs(_))) {
                outbox.remove(pos);
            }
        }
        outbox.push_back(msg);
        drop(outbox);
        self.outbox_ready.notify_one();
    }

    /// Publishes the outbox in order whenever a session is up: a batch at a time, every
    /// message of it in flight at once; a batch that is not wholly confirmed goes back to the
    /// front (the orchestrator applies events idempotently, so a resend is harmless).
    async fn outbox_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut broker_rx = self.broker.subscribe();
        loop {
            let batch: Vec<Outgoing> = {
                let mut outbox = lock(&self.outbox);
                let n = outbox.len().min(OUTBOX_BATCH);
                outbox.drain(..n).collect()
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.outbox_ready.notified() => continue,
                }
            }
            loop {
                let broker = broker_rx.borrow_and_update().clone();
                let sent = match &broker {
                    Some(b) => publish_all(b, &batch).await,
                    None => Err(crate::broker::BrokerError::Server("not connected".into())),
                };
                match sent {
                    Ok(()) => {
                        let mut finishing = lock(&self.finishing);
                        for msg in &batch {
                            if let Outgoing::Event(e) = msg {
                                if matches!(e.change, JobChange::Finished(_)) {
                                    finishing.remove(&(e.job, e.attempt));
                                }
                            }
                        }
                        break;
                    }
                    Err(error) => {
                        if broker.is_some() {
                            tracing::warn!(%error, "publish failed; keeping the messages");
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = broker_rx.changed() => {}
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(broker) = self.broker.borrow().clone() else {
                continue;
            };
            let hb = self.heartbeat().await;
            if let Err(error) = broker.publish(&hb, None).await {
                tracing::debug!(%error, "heartbeat not sent");
            }
        }
    }

    /// The current heartbeat of this node.
    pub async fn heartbeat(&self) -> Heartbeat {
        let docker_ok = self.runtime.ping().await;
        let containers = if docker_ok {
            self.runtime.running_containers().await
        } else {
            vec![]
        };
        let mut stats = lock(&self.stats).read();
        stats.containers = containers;
        stats.docker_ok = docker_ok;
        stats.arch = std::env::consts::ARCH.to_owned();
        stats.labels = self.settings.config.worker.labels.clone();
        let finishing = lock(&self.finishing).clone();
        stats.running_jobs = lock(&self.running)
            .keys()
            .chain(finishing.iter())
            .collect::<HashSet<_>>()
            .into_iter()
            .map(|(id, a)| format!("{id}/{a}"))
            .collect();
        stats.apps = lock(&self.apps)
            .iter()
            .map(|(id, slot)| format!("{id}/{}", slot.generation))
            .collect();
        Heartbeat {
            node: self.settings.node_id.clone(),
            address: Some(crate::discovery::own_address(
                &self.settings.config.api.advertise,
            )),
            sent_at: crate::now_ms(),
            // a node without docker can still run in-process jobs, but takes none by default
            slots: if docker_ok { self.settings.slots } else { 0 },
            stats,
        }
    }
}

/// Collects an attempt's log lines into batches: every 100 ms or 500 lines.
async fn batch_logs(
    worker: Arc<Worker>,
    job: Uuid,
    attempt: u32,
    mut rx: mpsc::UnboundedReceiver<LogLine>,
) {
    let mut lines = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let (flush, done) = tokio::select! {
            line = rx.recv() => match line {
                Some(l) => { lines.push(l); (lines.len() >= 500, false) }
                None => (true, true),
            },
            _ = tick.tick() => (true, false),
        };
        if flush && !lines.is_empty() {
            worker.send(Outgoing::Logs(LogBatch {
                job,
                attempt,
                node: worker.settings.node_id.clone(),
                lines: std::mem::take(&mut lines),
            }));
        }
        if done {
            return;
        }
    }
}

fn failed(error: String, retryable: bool) -> JobOutcome {
    JobOutcome {
        success: false,
        exit_code: None,
        result: None,
        error: Some(error),
        retryable,
    }
}

/// Reads CPU, memory, load and disk with sysinfo, keeping state between reads (CPU usage
/// is a difference of two reads).
struct StatsReader {
    system: Option<sysinfo::System>,
    data_dir: PathBuf,
}

impl StatsReader {
    fn new(data_dir: PathBuf) -> Self {
        Self {
            system: sysinfo::System::new().ok(),
            data_dir,
        }
    }

    fn read(&mut self) -> NodeStats {
        let mut stats = NodeStats::default();
        if let Some(sys) = self.system.as_mut() {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            stats.cpus = sys.cpus().len() as u32;
            stats.cpu_percent = sys.global_cpu_usage() as f64;
            stats.memory_total_mb = sys.total_memory() >> 20;
            stats.memory_used_mb = sys.used_memory() >> 20;
        }
        if let Ok(load) = sysinfo::System::load_average() {
            stats.load1 = load.one;
        }
        if let Ok(disks) = sysinfo::Disks::new_with_refreshed_list() {
            let dir =
                std::fs::canonicalize(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
            if let Some(disk) = disks
                .iter()
                .filter(|d| dir.starts_with(d.mount_point()))
                .max_by_key(|d| d.mount_point().as_os_str().len())
            {
                stats.disk_total_mb = disk.total_space() >> 20;
                stats.disk_free_mb = disk.available_space() >> 20;
            }
        }
        stats
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Messages of the outbox in flight at once.
const OUTBOX_BATCH: usize = 64;

/// Publishes `batch` in order with every message in flight, then waits for every confirm.
async fn publish_all(
    broker: &crate::broker::Broker,
    batch: &[Outgoing],
) -> Result<(), crate::broker::BrokerError> {
    let mut pending = Vec::with_capacity(batch.len());
    for msg in batch {
        pending.push(match msg {
            Outgoing::Event(e) => broker.send(e, None).await?,
            Outgoing::Logs(l) => broker.send(l, None).await?,
            Outgoing::Deploy(e) => broker.send(e, None).await?,
        });
    }
    for p in pending {
        p.confirmed().await?;
    }
    Ok(())
}
