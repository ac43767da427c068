//! The NetKAN pipeline around the inflate jobs, run by the orchestrator: the NetKAN
//! repository's checkout, inflate requests with priorities and without duplicates, the
//! scheduler, each mod's status, and the indexer that writes inflated `.ckan` files into
//! the metadata repository. The indexer runs here rather than as a job: it is one writer
//! working in order, and it holds the push credentials, which never go to a worker.

use super::{lock, JobRequest, Orchestrator, OrchestratorError};
use crate::git::{Checkout, GitError, Identity};
use crate::netkan::index::{self, Change, IndexItem};
use crate::netkan::repo::NetkanRepo;
use crate::netkan::webhook::SpaceDockAdd;
use crate::netkan::Outcome;
use crate::store::{JobRecord, JobState, ModStatus};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Priority of inflates asked for by a webhook or an operator's `/inflate`.
pub const WEBHOOK_PRIORITY: i32 = 100;
/// Priority of the scheduler's rounds.
pub const SCHEDULED_PRIORITY: i32 = 0;
/// Pushes tried per index entry before it waits for the next pass.
const PUSH_TRIES: u32 = 5;
/// Longest wait between attempts at an index entry that keeps failing.
const MAX_INDEX_BACKOFF: Duration = Duration::from_secs(120);
/// Most inflate jobs' results written with one fetch and one push.
const INDEX_ENTRIES_PER_PUSH: usize = 64;

/// One change of a mod's status, for subscriptions.
#[derive(Debug, Clone)]
pub struct ModNotice {
    pub identifier: String,
    pub status: ModStatus,
}

/// The pipeline's state on the orchestrator.
pub struct Pipeline {
    /// Held while the NetKAN checkout is synced or inflates are queued.
    queueing: tokio::sync::Mutex<()>,
    /// Held while the metadata checkout is in use (indexing, reading for the mirror).
    meta: tokio::sync::Mutex<()>,
    /// Wakes the indexer.
    indexer: Notify,
    notices: broadcast::Sender<ModNotice>,
    pub counters: PipelineCounters,
}

/// Counters for `/metrics` and GraphQL.
#[derive(Default)]
pub struct PipelineCounters {
    pub rounds: AtomicU64,
    pub rounds_skipped: AtomicU64,
    pub inflated: AtomicU64,
    pub inflate_failed: AtomicU64,
    pub indexed: AtomicU64,
    pub index_failures: AtomicU64,
    pub pushes_refused: AtomicU64,
    pub pull_requests: AtomicU64,
    pub mirrored: AtomicU64,
    pub mirror_failed: AtomicU64,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self {
            queueing: Default::default(),
            meta: Default::default(),
            indexer: Notify::new(),
            notices: broadcast::channel(1024).0,
            counters: Default::default(),
        }
    }
}

/// What a scheduled round did.
#[derive(Debug, PartialEq)]
pub enum Round {
    Queued { mods: usize, jobs: usize },
    Skipped(String),
}

impl Orchestrator {
    pub fn subscribe_mods(&self) -> broadcast::Receiver<ModNotice> {
        self.pipeline.notices.subscribe()
    }

    fn git_identity(&self) -> Identity {
        let n = &self.config.netkan;
        Identity {
            name: n.git_name.clone(),
            email: n.git_email.clone(),
            credentials: n.git_credentials.clone(),
        }
    }

    /// Where the indexer keeps its checkout of the metadata repository.
    fn meta_dir(&self) -> PathBuf {
        self.config.node.data_dir.join("ckan-meta")
    }

    fn netkan_repo(&self) -> Result<NetkanRepo, OrchestratorError> {
        let dir = self.config.netkan_repo_dir().ok_or_else(|| {
            OrchestratorError::Invalid(
                "no NetKAN repository is configured (netkan.repo_url or netkan.repo_dir)".into(),
            )
        })?;
        NetkanRepo::open(&dir).map_err(|e| OrchestratorError::Invalid(e.to_string()))
    }

    /// Brings the NetKAN checkout to its remote's tip (when `netkan.repo_url` is set) and
    /// records which mods are frozen.
    pub async fn sync_netkan(&self) -> Result<(), OrchestratorError> {
        let _held = self.pipeline.queueing.lock().await;
        self.sync_netkan_held().await
    }

    async fn sync_netkan_held(&self) -> Result<(), OrchestratorError> {
        let url = &self.config.netkan.repo_url;
        if !url.is_empty() {
            let Some(dir) = self.config.netkan_repo_dir() else {
                return Ok(());
            };
            Checkout::sync(url, &dir, &self.git_identity()).await?;
        }
        let repo = self.netkan_repo()?;
        let frozen = repo
            .frozen()
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        for id in &frozen {
            if !self.store.mod_status(id)?.is_some_and(|s| s.frozen) {
                self.set_mod_status(id, |s| s.frozen = true)?;
            }
        }
        for (id, status) in self.store.mod_statuses()? {
            if status.frozen && !frozen.contains(&id) {
                self.set_mod_status(&id, |s| s.frozen = false)?;
            }
        }
        Ok(())
    }

    /// Changes a mod's status and tells the subscribers.
    fn set_mod_status(
        &self,
        id: &str,
        change: impl FnOnce(&mut ModStatus),
    ) -> Result<ModStatus, OrchestratorError> {
        let status = self.store.update_mod_status(id, change)?;
        let _ = self.pipeline.notices.send(ModNotice {
            identifier: id.to_owned(),
            status: status.clone(),
        });
        Ok(status)
    }

    /// The inflate jobs waiting for a slot, with the mods each names.
    fn queued_inflates(&self) -> Result<Vec<(JobRecord, Vec<String>)>, OrchestratorError> {
        let ids: Vec<Uuid> = lock(&self.sched).queued.iter().map(|(_, id)| *id).collect();
        let mut out = Vec::new();
        for id in ids {
            let Some(job) = self.store.job(id)? else {
                continue;
            };
            if job.kind == "inflate" && job.state == JobState::Queued {
                let mods = spec_identifiers(&job.spec);
                out.push((job, mods));
            }
        }
        Ok(out)
    }

    /// Mods in inflate jobs that are placed and not finished.
    fn inflating_mods(&self) -> Result<BTreeSet<String>, OrchestratorError> {
        let ids: Vec<Uuid> = lock(&self.sched).active.keys().copied().collect();
        let mut out = BTreeSet::new();
        for id in ids {
            if let Some(job) = self.store.job(id)? {
                if job.kind == "inflate" && !job.state.is_final() {
                    out.extend(spec_identifiers(&job.spec));
                }
            }
        }
        Ok(out)
    }

    /// Mods waiting in queued inflate jobs.
    pub fn queued_inflate_mods(&self) -> usize {
        self.queued_inflates()
            .map(|jobs| jobs.iter().map(|(_, m)| m.len()).sum())
            .unwrap_or(0)
    }

    /// Queues `inflate` jobs for mods of the NetKAN repository, in batches of `batch` mods
    /// (`netkan.inflate_batch` by default); every mod must exist and not be frozen, or
    /// nothing is queued. A mod already waiting at this priority or higher is not queued
    /// again; one waiting at a lower priority is taken out of its batch and queued here.
    pub async fn enqueue_inflate(
        &self,
        identifiers: &[String],
        priority: i32,
        batch: Option<usize>,
    ) -> Result<Vec<JobRecord>, OrchestratorError> {
        let _held = self.pipeline.queueing.lock().await;
        self.enqueue_inflate_held(identifiers, priority, batch)
            .await
    }

    async fn enqueue_inflate_held(
        &self,
        identifiers: &[String],
        priority: i32,
        batch: Option<usize>,
    ) -> Result<Vec<JobRecord>, OrchestratorError> {
        let n = &self.config.netkan;
        if identifiers.is_empty() || identifiers.len() > super::MAX_INFLATE {
            return Err(OrchestratorError::Invalid(format!(
                "give 1 to {} identifiers, got {}",
                super::MAX_INFLATE,
                identifiers.len()
            )));
        }
        let batch = crate::jobs::inflate::check_batch(batch.unwrap_or(n.inflate_batch as usize))
            .map_err(|why| OrchestratorError::Invalid(format!("batch {why}")))?;
        let mods = self
            .netkan_repo()?
            .read(identifiers)
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        // what is already waiting
        let mut waiting_high = BTreeSet::new();
        let mut waiting_low: HashMap<String, Vec<Uuid>> = HashMap::new();
        for (job, ids) in self.queued_inflates()? {
            for id in ids {
                if job.priority >= priority {
                    waiting_high.insert(id);
                } else {
                    waiting_low.entry(id).or_default().push(job.id);
                }
            }
        }
        let mods: Vec<_> = mods
            .into_iter()
            .filter(|m| !waiting_high.contains(&m.identifier))
            .collect();
        // take them out of the lower batches; a batch left empty is cancelled
        let mut taken: HashMap<Uuid, BTreeSet<String>> = HashMap::new();
        for m in &mods {
            for job in waiting_low.get(&m.identifier).into_iter().flatten() {
                taken.entry(*job).or_default().insert(m.identifier.clone());
            }
        }
        for (job, ids) in taken {
            self.take_out_of(job, &ids).await?;
        }
        if mods.is_empty() {
            return Ok(vec![]);
        }
        let timeout = self
            .config
            .worker
            .job_timeout_secs
            .max(super::INFLATE_SECS_PER_MOD * batch as u64);
        let meta = self.meta_dir();
        let indexed = |id: &str| {
            (!self.config.netkan.meta_url.is_empty())
                .then(|| index::highest_version(&meta, id))
                .flatten()
        };
        let mut jobs = Vec::new();
        for spec in crate::jobs::inflate::specs(&mods, batch, &n.game_id, indexed) {
            let req = JobRequest {
                kind: "inflate".into(),
                spec: Some(spec),
                priority,
                timeout_secs: Some(timeout),
                ..Default::default()
            };
            jobs.push(self.enqueue(req).await?);
        }
        Ok(jobs)
    }

    /// Inflates mods ahead of the scheduled ones (a webhook, `/inflate`), after pulling the
    /// NetKAN repository. With `only_known`, mods the repository does not have or has frozen
    /// are passed over instead of refused (a push names every file it touched).
    pub async fn inflate_now(
        &self,
        identifiers: &[String],
        only_known: bool,
    ) -> Result<Vec<JobRecord>, OrchestratorError> {
        self.refresh_meta().await;
        let _held = self.pipeline.queueing.lock().await;
        self.sync_netkan_held().await?;
        let mut ids = identifiers.to_vec();
        if only_known {
            let repo = self.netkan_repo()?;
            let known = repo
                .identifiers()
                .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
            let frozen = repo
                .frozen()
                .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
            ids.retain(|id| known.contains(id) && !frozen.contains(id));
            if ids.is_empty() {
                return Ok(vec![]);
            }
        }
        self.enqueue_inflate_held(&ids, WEBHOOK_PRIORITY, None)
            .await
    }

    /// The mods of the NetKAN repository whose `$kref` is SpaceDock mod `mod_id`.
    pub async fn spacedock_mods(&self, mod_id: u64) -> Result<Vec<String>, OrchestratorError> {
        self.sync_netkan().await?;
        let repo = self.netkan_repo()?;
        let bad = |e: crate::netkan::NetkanError| OrchestratorError::Invalid(e.to_string());
        let frozen = repo.frozen().map_err(bad)?;
        let ids: Vec<String> = repo
            .identifiers()
            .map_err(bad)?
            .into_iter()
            .filter(|id| !frozen.contains(id))
            .collect();
        let mods = repo.read(&ids).map_err(bad)?;
        Ok(mods
            .into_iter()
            .filter(|m| crate::netkan::webhook::krefs_spacedock(&m.text, mod_id))
            .map(|m| m.identifier)
            .collect())
    }

    /// Brings the metadata checkout to its remote's tip, so the highest versions read from
    /// it for the out-of-order check are current; a failure is logged and the last state used.
    async fn refresh_meta(&self) {
        let n = &self.config.netkan;
        if n.meta_url.is_empty() {
            return;
        }
        let _held = self.pipeline.meta.lock().await;
        if let Err(error) =
            Checkout::sync(&n.meta_url, &self.meta_dir(), &self.git_identity()).await
        {
            tracing::warn!(%error, "cannot bring the metadata repository up to date");
        }
    }

    /// Removes mods from a queued inflate job; cancels it when none are left. A job that
    /// was placed meanwhile is left alone.
    async fn take_out_of(
        &self,
        job: Uuid,
        ids: &BTreeSet<String>,
    ) -> Result<(), OrchestratorError> {
        let mut left = usize::MAX;
        let changed = self.store.update_job(job, |j| {
            if j.state != JobState::Queued {
                return false;
            }
            let Some(Value::Array(mods)) = j.spec.get_mut("mods") else {
                return false;
            };
            mods.retain(|m| {
                !m.get("identifier")
                    .and_then(Value::as_str)
                    .is_some_and(|id| ids.contains(id))
            });
            left = mods.len();
            left > 0
        })?;
        if changed.is_none() && left == 0 {
            self.cancel(job).await?;
        }
        Ok(())
    }

    /// Applies a finished mirror job to the status of the mods it named: an upload that
    /// failed for good (a hash mismatch, say) is the mod's `last_error`, prefixed
    /// `mirroring:`; a mod mirrored or found in the archive loses such an error. Called
    /// once per job, when it succeeded or failed for good.
    pub(super) fn mirror_finished(&self, job: &JobRecord) -> Result<(), OrchestratorError> {
        const PREFIX: &str = "mirroring: ";
        let c = &self.pipeline.counters;
        let mut errors: Vec<(String, String)> = Vec::new();
        let mut fine: Vec<String> = Vec::new();
        match (&job.state, job.result.as_ref()) {
            (JobState::Succeeded, Some(result)) => {
                let list = |k: &str| result.get(k).and_then(Value::as_array).cloned();
                let mirrored = list("mirrored").unwrap_or_default();
                c.mirrored.fetch_add(mirrored.len() as u64, Relaxed);
                for entry in mirrored
                    .iter()
                    .chain(list("skipped").unwrap_or_default().iter())
                {
                    if let Some(id) = entry.get("identifier").and_then(Value::as_str) {
                        fine.push(id.to_owned());
                    }
                }
                for f in list("failed").unwrap_or_default() {
                    if let (Some(id), Some(e)) = (
                        f.get("identifier").and_then(Value::as_str),
                        f.get("error").and_then(Value::as_str),
                    ) {
                        errors.push((id.to_owned(), e.to_owned()));
                    }
                }
            }
            (JobState::Failed, _) => {
                let why = job.error.clone().unwrap_or_else(|| "the job failed".into());
                for text in job
                    .spec
                    .get("ckans")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let id = text
                        .as_str()
                        .and_then(|t| serde_json::from_str::<Value>(t).ok())
                        .and_then(|m| {
                            m.get("identifier")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        });
                    if let Some(id) = id {
                        errors.push((id, why.clone()));
                    }
                }
            }
            _ => return Ok(()),
        }
        c.mirror_failed.fetch_add(errors.len() as u64, Relaxed);
        for (id, error) in errors {
            tracing::warn!(job = %job.id, identifier = %id, %error, "not mirrored");
            self.set_mod_status(&id, |s| s.last_error = Some(format!("{PREFIX}{error}")))?;
        }
        for id in fine {
            let stale = self
                .store
                .mod_status(&id)?
                .and_then(|s| s.last_error)
                .is_some_and(|e| e.starts_with(PREFIX));
            if stale {
                self.set_mod_status(&id, |s| s.last_error = None)?;
            }
        }
        Ok(())
    }

    /// Applies a finished inflate job: each mod's status, and the new `.ckan` files onto
    /// the indexer's queue. Called once per job (when it is first recorded as finished).
    pub(super) fn inflate_finished(&self, job: &JobRecord) -> Result<(), OrchestratorError> {
        let Some(outcomes) = job.result.as_ref().and_then(|r| r.get("outcomes")) else {
            return Ok(());
        };
        let outcomes: Vec<Outcome> = match serde_json::from_value(outcomes.clone()) {
            Ok(o) => o,
            Err(error) => {
                tracing::warn!(job = %job.id, %error, "an inflate result that cannot be read");
                return Ok(());
            }
        };
        let asked = spec_identifiers(&job.spec);
        let mut items = Vec::new();
        for (i, o) in outcomes.into_iter().enumerate() {
            let Some(id) = o.mod_identifier.clone().or_else(|| asked.get(i).cloned()) else {
                continue;
            };
            let c = &self.pipeline.counters;
            if o.success {
                &c.inflated
            } else {
                &c.inflate_failed
            }
            .fetch_add(1, Relaxed);
            let ckan: Option<Value> = o.ckan.as_deref().and_then(|t| serde_json::from_str(t).ok());
            self.set_mod_status(&id, |s| {
                s.last_checked = Some(o.check_time.clone());
                s.success = o.success;
                s.last_error = o.error_message.clone();
                s.last_warnings =
                    (!o.warning_messages.is_empty()).then(|| o.warning_messages.join("; "));
                if o.success {
                    s.last_inflated = Some(o.check_time.clone());
                    // the download was read (fetched or from the cache) to inflate it
                    s.last_downloaded = Some(o.check_time.clone());
                }
                if let Some(ckan) = &ckan {
                    if let Some(date) = ckan.get("release_date").and_then(Value::as_str) {
                        s.release_date = Some(date.to_owned());
                    }
                    if let Some(Value::Object(r)) = ckan.get("resources") {
                        s.resources = r.clone();
                    }
                }
            })?;
            if let (true, Some(file_name), Some(text)) = (o.success, o.file_name, o.ckan) {
                let item = IndexItem {
                    identifier: id.clone(),
                    file_name,
                    ckan: text,
                    staged: o.staged,
                    staging_reason: o.staging_reason,
                };
                if item.safe() {
                    items.push(item);
                } else {
                    self.set_mod_status(&id, |s| {
                        s.last_error =
                            Some(format!("`{}` is not a .ckan name of {id}", item.file_name));
                        s.success = false;
                    })?;
                }
            }
        }
        if !items.is_empty() && !self.config.netkan.meta_url.is_empty() {
            self.store.push_index(job.id, &items)?;
            self.pipeline.indexer.notify_one();
        }
        Ok(())
    }

    // ---- the scheduler ------------------------------------------------------------------

    pub(super) async fn scheduler_loop(&self, shutdown: CancellationToken) {
        let secs = self.config.netkan.schedule_secs;
        if secs == 0 || self.config.netkan_repo_dir().is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
            }
            if self.broker().is_none() {
                continue;
            }
            match self.schedule_round().await {
                Ok(Round::Queued { mods, jobs }) => {
                    tracing::info!(mods, jobs, "scheduled round queued")
                }
                Ok(Round::Skipped(why)) => tracing::info!(%why, "scheduled round skipped"),
                Err(error) => tracing::warn!(%error, "scheduled round failed"),
            }
        }
    }

    /// One round: pull the NetKAN repository and queue every mod that is not frozen,
    /// unless the inflate queue is long or GitHub's rate limit is low.
    pub async fn schedule_round(&self) -> Result<Round, OrchestratorError> {
        let n = &self.config.netkan;
        let c = &self.pipeline.counters;
        let waiting = self.queued_inflate_mods();
        if waiting > n.schedule_max_queue as usize {
            c.rounds_skipped.fetch_add(1, Relaxed);
            return Ok(Round::Skipped(format!(
                "{waiting} mods wait to be inflated (more than netkan.schedule_max_queue = {})",
                n.schedule_max_queue
            )));
        }
        match self.github_calls_left().await {
            Ok(left) if left < u64::from(n.schedule_min_rate) => {
                c.rounds_skipped.fetch_add(1, Relaxed);
                return Ok(Round::Skipped(format!(
                    "GitHub allows {left} more calls (fewer than netkan.schedule_min_rate = {})",
                    n.schedule_min_rate
                )));
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot ask GitHub's rate limit; going on"),
        }
        self.refresh_meta().await;
        let _held = self.pipeline.queueing.lock().await;
        self.sync_netkan_held().await?;
        let repo = self.netkan_repo()?;
        let frozen = repo
            .frozen()
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        // a mod being inflated right now is left for the next round
        let inflating = self.inflating_mods()?;
        let ids: Vec<String> = repo
            .identifiers()
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))?
            .into_iter()
            .filter(|id| !frozen.contains(id) && !inflating.contains(id))
            .collect();
        c.rounds.fetch_add(1, Relaxed);
        if ids.is_empty() {
            return Ok(Round::Queued { mods: 0, jobs: 0 });
        }
        let jobs = self
            .enqueue_inflate_held(&ids, SCHEDULED_PRIORITY, None)
            .await?;
        let mods = jobs.iter().map(|j| spec_identifiers(&j.spec).len()).sum();
        Ok(Round::Queued {
            mods,
            jobs: jobs.len(),
        })
    }

    /// GitHub's core API calls left (`GET {api}/rate_limit`).
    async fn github_calls_left(&self) -> Result<u64, String> {
        let g = &self.config.github;
        let mut req = github_client()?.get(format!("{}/rate_limit", g.api.trim_end_matches('/')));
        if !g.token.is_empty() {
            req = req.bearer_auth(&g.token);
        }
        let body: Value = req
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        body.pointer("/resources/core/remaining")
            .and_then(Value::as_u64)
            .ok_or_else(|| "the rate limit answer has no resources.core.remaining".into())
    }

    // ---- the indexer --------------------------------------------------------------------

    pub(super) async fn indexer_loop(&self, shutdown: CancellationToken) {
        if self.config.netkan.meta_url.is_empty() {
            return;
        }
        let mut backoff = Duration::from_secs(2);
        loop {
            // every entry waiting (up to a bound) goes in with one fetch and one push
            let waiting = match self
                .store
                .next_indexes::<Vec<IndexItem>>(INDEX_ENTRIES_PER_PUSH)
            {
                Ok(waiting) => waiting,
                Err(error) => {
                    tracing::error!(%error, "cannot read the index queue");
                    Vec::new()
                }
            };
            if waiting.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.pipeline.indexer.notified() => continue,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => continue,
                }
            }
            let entries: Vec<Uuid> = waiting.iter().map(|(entry, _)| *entry).collect();
            let items: Vec<IndexItem> = waiting.into_iter().flat_map(|(_, items)| items).collect();
            match self.index(&items).await {
                Ok(()) => {
                    backoff = Duration::from_secs(2);
                    for entry in entries {
                        if let Err(error) = self.store.pop_index(entry) {
                            tracing::error!(%error, "cannot take an entry off the index queue");
                        }
                    }
                    continue;
                }
                Err(error) => {
                    self.pipeline.counters.index_failures.fetch_add(1, Relaxed);
                    tracing::warn!(%error, entries = entries.len(), retry_in = ?backoff, "indexing failed; the entries stay queued");
                    for item in &items {
                        let why = format!("indexing: {error}");
                        let _ = self.set_mod_status(&item.identifier, |s| s.last_error = Some(why));
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_INDEX_BACKOFF);
        }
    }

    /// Writes one entry's `.ckan` files into the metadata repository: a commit per changed
    /// file and one push, redone from the new tip when someone pushed first; a staged file
    /// goes to its own branch and a pull request instead.
    async fn index(&self, items: &[IndexItem]) -> Result<(), OrchestratorError> {
        let n = &self.config.netkan;
        let _held = self.pipeline.meta.lock().await;
        let co = Checkout::sync(&n.meta_url, &self.meta_dir(), &self.git_identity()).await?;
        let (staged, direct): (Vec<&IndexItem>, Vec<&IndexItem>) =
            items.iter().partition(|i| i.staged);
        let mut changed = Vec::new();
        let mut tries = 0;
        loop {
            changed.clear();
            for item in &direct {
                let change = index::write(co.dir(), item)
                    .map_err(|e| OrchestratorError::Invalid(format!("{}: {e}", item.path())))?;
                if let Some(message) = change.message(item.stem()) {
                    co.commit_file(&item.path(), &message).await?;
                    changed.push((*item, change));
                }
            }
            if changed.is_empty() || co.push(co.branch(), co.branch(), false).await? {
                break;
            }
            self.pipeline.counters.pushes_refused.fetch_add(1, Relaxed);
            tries += 1;
            if tries >= PUSH_TRIES {
                co.reset().await?;
                return Err(GitError::Invalid(format!(
                    "the push was refused {PUSH_TRIES} times (others keep pushing first)"
                ))
                .into());
            }
            // someone pushed first: start again from their tip
            co.refresh().await?;
        }
        let now = crate::now_rfc3339();
        for (item, change) in &changed {
            tracing::info!(file = %item.path(), ?change, "indexed");
            self.pipeline.counters.indexed.fetch_add(1, Relaxed);
            self.set_mod_status(&item.identifier, |s| {
                s.last_indexed = Some(now.clone());
                if s.last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("indexing: "))
                {
                    s.last_error = None;
                }
            })?;
        }
        for item in staged {
            self.stage(&co, item).await?;
        }
        let added: Vec<String> = changed
            .iter()
            .filter(|(_, c)| *c == Change::Added)
            .map(|(i, _)| i.ckan.clone())
            .collect();
        if let Err(error) = self.enqueue_mirror(added).await {
            tracing::warn!(%error, "cannot queue the mirror of the new versions");
        }
        Ok(())
    }

    /// Queues a `mirror` job for new `.ckan` texts, when an archive is configured.
    async fn enqueue_mirror(
        &self,
        ckans: Vec<String>,
    ) -> Result<Vec<JobRecord>, OrchestratorError> {
        if self.config.netkan.archive_url.is_empty() || ckans.is_empty() {
            return Ok(vec![]);
        }
        let mut jobs = Vec::new();
        for chunk in ckans.chunks(100) {
            let req = JobRequest {
                kind: "mirror".into(),
                spec: Some(serde_json::json!({ "ckans": chunk })),
                timeout_secs: Some(
                    self.config
                        .worker
                        .job_timeout_secs
                        .max(600 * chunk.len() as u64),
                ),
                ..Default::default()
            };
            jobs.push(self.enqueue(req).await?);
        }
        Ok(jobs)
    }

    /// A push to the metadata repository (`/gh/mirror`): mirrors the `.ckan` files it
    /// added, read from the pushed tip.
    pub async fn mirror_pushed(
        &self,
        paths: &[String],
    ) -> Result<Vec<JobRecord>, OrchestratorError> {
        let n = &self.config.netkan;
        if n.archive_url.is_empty() {
            return Err(OrchestratorError::Invalid(
                "no archive is configured (netkan.archive_url)".into(),
            ));
        }
        if n.meta_url.is_empty() {
            return Err(OrchestratorError::Invalid(
                "no metadata repository is configured (netkan.meta_url)".into(),
            ));
        }
        let texts = {
            let _held = self.pipeline.meta.lock().await;
            let co = Checkout::sync(&n.meta_url, &self.meta_dir(), &self.git_identity()).await?;
            let mut texts = Vec::new();
            for path in paths {
                if path.starts_with('-') || path.contains("..") {
                    continue;
                }
                let at = format!("origin/{}:{path}", co.branch());
                match co.git(&["show", &at]).await {
                    Ok(text) => texts.push(text),
                    Err(error) => {
                        tracing::warn!(%path, %error, "a pushed .ckan is not on the branch")
                    }
                }
            }
            texts
        };
        self.enqueue_mirror(texts).await
    }

    /// A staged `.ckan` goes to branch `add/<id>-<version>` and a pull request.
    async fn stage(&self, co: &Checkout, item: &IndexItem) -> Result<(), OrchestratorError> {
        let branch = format!("add/{}", item.stem());
        // staged before with these very bytes: the branch and its pull request stand
        let there = format!("origin/{branch}:{}", item.path());
        if co.git(&["show", &there]).await.ok().as_deref() == Some(item.ckan.as_str()) {
            return Ok(());
        }
        let tip = format!("origin/{}", co.branch());
        co.git(&["checkout", "--quiet", "--force", "-B", &branch, &tip])
            .await?;
        let change = index::write(co.dir(), item)
            .map_err(|e| OrchestratorError::Invalid(format!("{}: {e}", item.path())))?;
        let pushed = match change.message(item.stem()) {
            Some(message) => {
                co.commit(&[&item.path()], &message).await?;
                co.push(&branch, &branch, true).await?
            }
            None => false,
        };
        co.reset().await?;
        if !pushed {
            return Ok(());
        }
        tracing::info!(%branch, "staged for review");
        let repo = &self.config.netkan.meta_github;
        if repo.is_empty() {
            tracing::warn!(%branch, "staged, but netkan.meta_github is not set: no pull request");
            return Ok(());
        }
        let title = format!("NetKAN inflated: {}", item.identifier);
        let body = item
            .staging_reason
            .as_deref()
            .unwrap_or("Staged for review.");
        self.open_pull_request(repo, &title, &branch, co.branch(), body)
            .await
    }

    /// `POST {github.api}/repos/{repo}/pulls`; one that is open already is fine.
    async fn open_pull_request(
        &self,
        repo: &str,
        title: &str,
        head: &str,
        base: &str,
        body: &str,
    ) -> Result<(), OrchestratorError> {
        let g = &self.config.github;
        let pull = serde_json::json!({ "title": title, "head": head, "base": base, "body": body });
        let mut req = github_client()
            .map_err(OrchestratorError::Invalid)?
            .post(format!(
                "{}/repos/{repo}/pulls",
                g.api.trim_end_matches('/')
            ))
            .json(&pull);
        if !g.token.is_empty() {
            req = req.bearer_auth(&g.token);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| OrchestratorError::Invalid(format!("pull request: {e}")))?;
        let status = resp.status();
        // 422: a pull request for this branch is open already
        if status.is_success() || status.as_u16() == 422 {
            self.pipeline.counters.pull_requests.fetch_add(1, Relaxed);
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(OrchestratorError::Invalid(format!(
            "pull request for {head}: GitHub answered {status}: {}",
            text.chars().take(300).collect::<String>()
        )))
    }

    /// SpaceDock's `/sd/add`: the generated netkan on branch `add/<identifier>` of the NetKAN
    /// repository, and a pull request for it. Returns the branch.
    pub async fn spacedock_add(&self, add: &SpaceDockAdd) -> Result<String, OrchestratorError> {
        let n = &self.config.netkan;
        let bad =
            |e: crate::netkan::webhook::WebhookError| OrchestratorError::Invalid(e.to_string());
        let id = add.identifier().map_err(bad)?;
        let text = add.netkan().map_err(bad)?;
        if n.repo_url.is_empty() || n.repo_github.is_empty() {
            return Err(OrchestratorError::Invalid(
                "adding mods needs netkan.repo_url and netkan.repo_github".into(),
            ));
        }
        let dir = self.config.netkan_repo_dir().ok_or_else(|| {
            OrchestratorError::Invalid("no NetKAN repository is configured".into())
        })?;
        let branch = format!("add/{id}");
        let _held = self.pipeline.queueing.lock().await;
        let co = Checkout::sync(&n.repo_url, &dir, &self.git_identity()).await?;
        let sub = if co.dir().join("NetKAN").is_dir() {
            "NetKAN/"
        } else {
            ""
        };
        let path = format!("{sub}{id}.netkan");
        if co.dir().join(&path).exists() {
            return Err(OrchestratorError::Invalid(format!(
                "{id} is in the NetKAN repository already ({path})"
            )));
        }
        let tip = format!("origin/{}", co.branch());
        let pushed = async {
            co.git(&["checkout", "--quiet", "--force", "-B", &branch, &tip])
                .await?;
            std::fs::write(co.dir().join(&path), &text).map_err(GitError::Spawn)?;
            co.commit(&[&path], &format!("Add {} from SpaceDock", add.name))
                .await?;
            co.push(&branch, &branch, true).await
        }
        .await;
        co.reset().await?;
        if !pushed? {
            return Err(OrchestratorError::Invalid(format!(
                "the push of {branch} was refused"
            )));
        }
        let title = format!("Add {} from SpaceDock", add.name);
        self.open_pull_request(
            &n.repo_github,
            &title,
            &branch,
            co.branch(),
            &add.description(),
        )
        .await?;
        Ok(branch)
    }
}

/// The identifiers an inflate job's spec names.
fn spec_identifiers(spec: &Value) -> Vec<String> {
    spec.get("mods")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            m.get("identifier")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

fn github_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .user_agent(concat!("kraken/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}
