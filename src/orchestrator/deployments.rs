//! The orchestrator's side of app deployments: the requests operators make
//! (`createDeployment`, `redeploy`, `stopDeployment`), placement on the least-loaded live
//! worker with room for the app, the workers' reports, and moving the deployments of a
//! worker that went silent.
//!
//! Every placement bumps the deployment's generation and is committed before the worker
//! hears of it; a worker's report of an older generation is stale and ignored.

use super::{lock, Orchestrator, OrchestratorError};
use crate::broker::messages::{DeployAssignment, DeployEvent, WorkRequest};
use crate::store::{DeployStatus, DeploymentRecord, NodeRecord};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// Memory an app may use unless it asks for another amount, MiB.
pub const DEFAULT_APP_MEMORY_MB: u64 = 256;

/// What an operator asks for.
#[derive(Debug, Clone, Default)]
pub struct DeploymentRequest {
    pub git_url: String,
    pub branch: String,
    pub memory_mb: Option<u64>,
    pub auto_redeploy: bool,
    /// Only on a node with this label.
    pub label: Option<String>,
    /// Only on a node of this CPU architecture.
    pub arch: Option<String>,
}

/// Architecture names as Rust (and `uname -m`) spell them; Docker's and Debian's names are
/// taken too.
fn check_arch(arch: &str) -> Result<String, String> {
    Ok(match arch.trim() {
        "x86_64" | "amd64" => "x86_64",
        "aarch64" | "arm64" => "aarch64",
        "arm" | "armhf" | "armv7" | "armv7l" => "arm",
        "x86" | "i386" | "i686" => "x86",
        "riscv64" => "riscv64",
        other => {
            return Err(format!(
                "arch `{other}` is not one Kraken knows (x86_64, aarch64, arm, x86, riscv64)"
            ))
        }
    }
    .to_owned())
}

/// Git URLs a worker may clone: network transports only (a `file://` path would read the
/// worker's own disk).
fn check_git_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("gitUrl is empty".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("gitUrl holds whitespace".into());
    }
    let scheme_ok = ["http://", "https://", "git://", "ssh://"]
        .iter()
        .any(|s| url.starts_with(s) && url.len() > s.len());
    // scp-like `user@host:path`
    let scp_ok = !url.contains("://")
        && url
            .split_once(':')
            .is_some_and(|(host, path)| host.contains('@') && !path.is_empty());
    if scheme_ok || scp_ok {
        Ok(())
    } else {
        Err(format!(
            "gitUrl `{url}` is not a git URL the workers can clone (http://, https://, git://, ssh:// or user@host:path)"
        ))
    }
}

/// Branch names git accepts (the parts of `git check-ref-format` that matter here).
fn check_branch(branch: &str) -> Result<(), String> {
    let bad = branch.is_empty()
        || branch.starts_with('-')
        || branch.starts_with('/')
        || branch.ends_with('/')
        || branch.ends_with(".lock")
        || branch.contains("..")
        || branch.contains("@{")
        || branch.len() > 200
        || branch
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    if bad {
        Err(format!("branch `{branch}` is not a valid git branch name"))
    } else {
        Ok(())
    }
}

impl Orchestrator {
    /// Stores a new deployment as `REQUESTED` (committed) and wakes the placement.
    pub async fn create_deployment(
        &self,
        req: DeploymentRequest,
    ) -> Result<DeploymentRecord, OrchestratorError> {
        check_git_url(&req.git_url).map_err(OrchestratorError::Invalid)?;
        check_branch(&req.branch).map_err(OrchestratorError::Invalid)?;
        let memory_mb = req.memory_mb.unwrap_or(DEFAULT_APP_MEMORY_MB);
        if !(16..=1 << 20).contains(&memory_mb) {
            return Err(OrchestratorError::Invalid(format!(
                "memoryMb must be between 16 and {}, not {memory_mb}",
                1 << 20
            )));
        }
        if let Some(label) = &req.label {
            crate::config::check_label(label).map_err(OrchestratorError::Invalid)?;
        }
        let arch = req
            .arch
            .as_deref()
            .map(check_arch)
            .transpose()
            .map_err(OrchestratorError::Invalid)?;
        let now = crate::now_ms();
        let record = DeploymentRecord {
            id: Uuid::now_v7(),
            git_url: req.git_url.trim().to_owned(),
            branch: req.branch,
            status: DeployStatus::Requested,
            reason: None,
            generation: 0,
            node: None,
            app: None,
            port: None,
            commit: None,
            url: None,
            memory_mb,
            serving_generation: None,
            auto_redeploy: req.auto_redeploy,
            label: req.label,
            arch,
            created_at: now,
            updated_at: now,
        };
        self.store.put_deployment(&record)?;
        self.store.flush().await?;
        self.deployment_changed(&record);
        self.wake.notify_one();
        Ok(record)
    }

    pub fn deployment(&self, id: Uuid) -> Result<DeploymentRecord, OrchestratorError> {
        self.store
            .deployment(id)?
            .ok_or(OrchestratorError::NoSuchDeployment(id))
    }

    /// Builds and starts the deployment again (the branch's newest commit). Where it
    /// serves on a live node, the new version is built there and takes over the app's port
    /// only once healthy (no downtime; if it fails the old one serves on); otherwise it is
    /// placed afresh.
    pub async fn redeploy(&self, id: Uuid) -> Result<DeploymentRecord, OrchestratorError> {
        let old = self.deployment(id)?;
        let in_place = old
            .node
            .as_deref()
            .filter(|n| self.is_alive(n) && !self.is_drained(n) && old.serving_generation.is_some())
            .map(str::to_owned);
        let record = self
            .store
            .update_deployment(id, |d| {
                d.status = DeployStatus::Requested;
                d.reason = None;
                d.updated_at = crate::now_ms();
                match &in_place {
                    Some(node) => {
                        d.generation += 1;
                        d.node = Some(node.clone());
                    }
                    None => {
                        d.node = None;
                        d.url = None;
                        d.serving_generation = None;
                    }
                }
                true
            })?
            .ok_or(OrchestratorError::NoSuchDeployment(id))?;
        self.store.flush().await?;
        // told before the worker can report on it: subscribers see the changes in order
        self.deployment_changed(&record);
        match in_place {
            Some(node) => self.dispatch(&record, &node).await?,
            None => {
                self.tell_to_stop(&old).await;
                self.wake.notify_one();
            }
        }
        Ok(record)
    }

    /// Sends a committed placement to its node.
    async fn dispatch(
        &self,
        record: &DeploymentRecord,
        node: &str,
    ) -> Result<(), OrchestratorError> {
        let broker = self.broker().ok_or_else(|| {
            OrchestratorError::Broker(crate::broker::BrokerError::Server(
                "no broker connection".into(),
            ))
        })?;
        let a = DeployAssignment {
            id: record.id,
            generation: record.generation,
            git_url: record.git_url.clone(),
            branch: record.branch.clone(),
            memory_mb: record.memory_mb,
        };
        tracing::info!(id = %record.id, %node, generation = record.generation, "placing deployment");
        broker
            .send(&WorkRequest::Deploy(a), Some(node))
            .await?
            .confirmed()
            .await?;
        Ok(())
    }

    /// Stops a deployment for good: its container and image are removed.
    pub async fn stop_deployment(&self, id: Uuid) -> Result<DeploymentRecord, OrchestratorError> {
        let old = self.deployment(id)?;
        let record = self
            .store
            .update_deployment(id, |d| {
                d.status = DeployStatus::Stopped;
                d.reason = Some("stopped by an operator".into());
                d.url = None;
                d.updated_at = crate::now_ms();
                true
            })?
            .ok_or(OrchestratorError::NoSuchDeployment(id))?;
        self.store.flush().await?;
        self.tell_to_stop(&old).await;
        self.deployment_changed(&record);
        Ok(record)
    }

    /// Asks the node holding a deployment's current generation to stop it (best effort: a
    /// dead node has nothing running).
    async fn tell_to_stop(&self, d: &DeploymentRecord) {
        let (Some(node), Some(broker)) = (&d.node, self.broker()) else {
            return;
        };
        let msg = WorkRequest::StopDeployment {
            id: d.id,
            generation: d.generation,
        };
        if let Err(error) = broker.publish(&msg, Some(node)).await {
            tracing::warn!(%error, id = %d.id, %node, "cannot tell the node to stop the app");
        }
    }

    /// Places every `REQUESTED` deployment that has no node yet.
    pub(super) async fn place_deployments(&self) -> Result<(), OrchestratorError> {
        if self.broker().is_none() {
            return Ok(());
        }
        let all = self.store.deployments()?;
        let waiting: Vec<DeploymentRecord> = all
            .iter()
            .filter(|d| d.status == DeployStatus::Requested && d.node.is_none())
            .cloned()
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let nodes = self.store.nodes()?;
        let mut apps_per_node: HashMap<String, u32> = HashMap::new();
        for d in &all {
            if let Some(node) = d.holder() {
                *apps_per_node.entry(node.to_owned()).or_default() += 1;
            }
        }
        for d in waiting {
            let node = match self.pick_app_node(&d, &nodes, &apps_per_node) {
                Ok(node) => node,
                Err(why) => {
                    self.hold(&d, why).await?;
                    continue;
                }
            };
            let Some(record) = self.store.update_deployment(d.id, |r| {
                if r.status != DeployStatus::Requested || r.node.is_some() {
                    return false;
                }
                r.generation += 1;
                r.node = Some(node.id.clone());
                r.reason = None;
                r.updated_at = crate::now_ms();
                true
            })?
            else {
                continue;
            };
            // committed before the worker hears of it: a new leader knows where it went
            self.store.flush().await?;
            *apps_per_node.entry(node.id.clone()).or_default() += 1;
            self.deployment_changed(&record);
            if let Err(error) = self.dispatch(&record, &node.id).await {
                tracing::warn!(%error, id = %record.id, "deployment not dispatched; placing it again");
                self.store.update_deployment(record.id, |r| {
                    let mine = r.generation == record.generation;
                    if mine {
                        r.node = None;
                    }
                    mine
                })?;
                self.store.flush().await?;
                continue;
            }
        }
        Ok(())
    }

    /// Keeps a deployment waiting with the reason, or fails it when no node could ever
    /// hold it.
    async fn hold(
        &self,
        d: &DeploymentRecord,
        why: Result<String, String>,
    ) -> Result<(), OrchestratorError> {
        let (status, reason) = match why {
            Ok(wait) => (DeployStatus::Requested, wait),
            Err(never) => (DeployStatus::Failed, never),
        };
        if d.status == status && d.reason.as_deref() == Some(reason.as_str()) {
            return Ok(());
        }
        if let Some(record) = self.store.update_deployment(d.id, |r| {
            if r.status != DeployStatus::Requested || r.node.is_some() {
                return false;
            }
            r.status = status;
            r.reason = Some(reason.clone());
            r.updated_at = crate::now_ms();
            true
        })? {
            self.store.flush().await?;
            self.deployment_changed(&record);
        }
        Ok(())
    }

    /// The least-loaded live node that may hold the app (not drained, with its label and
    /// architecture) and has room for it: fewest deployments, then least CPU load, then
    /// most free memory, then fewest jobs. `Err(Ok(why))`: none now (it waits);
    /// `Err(Err(why))`: none ever (it fails).
    #[allow(clippy::type_complexity)]
    fn pick_app_node(
        &self,
        d: &DeploymentRecord,
        nodes: &[NodeRecord],
        apps_per_node: &HashMap<String, u32>,
    ) -> Result<NodeRecord, Result<String, String>> {
        let fits = |n: &NodeRecord| {
            n.stats.as_ref().is_some_and(|s| {
                d.label.as_ref().is_none_or(|l| s.labels.contains(l))
                    && d.arch.as_ref().is_none_or(|a| s.arch == *a)
            })
        };
        // what it asks of a node besides memory, as the reasons below say it
        let mut wants = Vec::new();
        if let Some(l) = &d.label {
            wants.push(format!("labelled `{l}`"));
        }
        if let Some(a) = &d.arch {
            wants.push(format!("of arch {a}"));
        }
        let known: Vec<&NodeRecord> = nodes.iter().filter(|n| n.stats.is_some()).collect();
        if !known.is_empty() {
            if !known.iter().any(|n| fits(n)) {
                let mut labels: Vec<&str> = known
                    .iter()
                    .filter_map(|n| n.stats.as_ref())
                    .flat_map(|s| s.labels.iter().map(String::as_str))
                    .collect();
                labels.sort_unstable();
                labels.dedup();
                let mut arches: Vec<&str> = known
                    .iter()
                    .filter_map(|n| n.stats.as_ref().map(|s| s.arch.as_str()))
                    .filter(|a| !a.is_empty())
                    .collect();
                arches.sort_unstable();
                arches.dedup();
                return Err(Err(format!(
                    "no node is {} (labels in the cluster: {}; architectures: {})",
                    wants.join(" and "),
                    if labels.is_empty() {
                        "none".into()
                    } else {
                        labels.join(", ")
                    },
                    arches.join(", ")
                )));
            }
            let largest = known
                .iter()
                .filter(|n| fits(n))
                .filter_map(|n| n.stats.as_ref().map(|s| s.memory_total_mb))
                .max()
                .unwrap_or(0);
            if largest > 0 && d.memory_mb > largest {
                let which = if wants.is_empty() {
                    "the largest node".to_owned()
                } else {
                    format!("the largest node {}", wants.join(" and "))
                };
                return Err(Err(format!(
                    "it asks for {} MiB of memory; {which} has {largest} MiB",
                    d.memory_mb
                )));
            }
        }
        let jobs = self.active_per_node();
        let best = nodes
            .iter()
            .filter(|n| self.is_alive(&n.id) && !self.is_drained(&n.id) && fits(n))
            .filter_map(|n| {
                let s = n.stats.as_ref().filter(|s| s.docker_ok)?;
                let free = s.memory_total_mb.saturating_sub(s.memory_used_mb);
                (free >= d.memory_mb).then_some((n, s, free))
            })
            .min_by_key(|(n, s, free)| {
                // load per core, in tenths: small differences do not outweigh memory
                let load = (s.load1 / f64::from(s.cpus.max(1)) * 10.0).round() as u64;
                (
                    apps_per_node.get(&n.id).copied().unwrap_or(0),
                    load,
                    std::cmp::Reverse(*free),
                    jobs.get(&n.id).copied().unwrap_or(0),
                    n.id.clone(),
                )
            });
        match best {
            Some((n, _, _)) => Ok(n.clone()),
            None => Err(Ok(format!(
                "waiting for a live, undrained worker with Docker and {} MiB of free memory{}",
                d.memory_mb,
                wants.iter().map(|w| format!(", {w}")).collect::<String>()
            ))),
        }
    }

    /// A worker's report on a deployment (stale generations are ignored).
    pub(super) fn apply_deploy_event(&self, ev: DeployEvent) -> Result<(), OrchestratorError> {
        let address = self
            .store
            .node(&ev.node)?
            .map(|n| n.address)
            .filter(|a| !a.is_empty());
        let updated = self.store.update_deployment(ev.id, |d| {
            if d.generation != ev.generation || d.holder() != Some(ev.node.as_str()) {
                return false;
            }
            d.status = ev.status;
            d.reason = ev.reason.clone();
            d.app = ev.app.clone().or(d.app.take());
            d.port = ev.port.or(d.port);
            d.commit = ev.commit.clone().or(d.commit.take());
            match (ev.status, ev.serving) {
                (DeployStatus::Running, _) => d.serving_generation = Some(ev.generation),
                (DeployStatus::Failed, Some(old)) => {
                    // a redeploy that failed: the version before it serves on
                    d.status = DeployStatus::Running;
                    d.reason = Some(format!(
                        "the new version failed: {}; the previous one (generation {old}) serves on",
                        ev.reason.as_deref().unwrap_or("?")
                    ));
                    d.serving_generation = Some(old);
                }
                (DeployStatus::Failed, None) => d.serving_generation = None,
                _ => {}
            }
            d.url = match (d.serving_generation, &address, d.port) {
                (Some(_), Some(a), Some(p)) => Some(format!("http://{}:{p}/", host(a))),
                _ => None,
            };
            d.updated_at = ev.at;
            true
        })?;
        if let Some(d) = updated {
            tracing::info!(id = %d.id, status = ?d.status, reason = ?d.reason, "deployment changed");
            self.deployment_changed(&d);
        }
        Ok(())
    }

    /// Deployments of nodes silent past the grace period, or drained, are placed again
    /// elsewhere.
    pub(super) fn move_lost_apps(&self) -> Result<(), OrchestratorError> {
        let grace = Duration::from_millis(self.config.orchestrator.grace_ms);
        let deployments = self.store.deployments()?;
        for d in deployments {
            let Some(node) = d.holder().map(str::to_owned) else {
                continue;
            };
            let (silent, drained) = lock(&self.sched)
                .live
                .get(node.as_str())
                .map_or((true, false), |l| {
                    (l.last_seen.elapsed() >= grace, l.drained)
                });
            let reason = if drained {
                tracing::info!(id = %d.id, %node, "the node of a deployment is drained; moving it");
                format!("moving: node {node} is drained")
            } else if silent {
                tracing::warn!(id = %d.id, %node, "the node of a deployment went silent; moving it");
                format!("moving: node {node} stopped sending heartbeats")
            } else {
                continue;
            };
            self.place_again(d.id, &node, d.generation, reason)?;
        }
        Ok(())
    }

    /// Compares the deployments a node lists (`id/generation`) with those it should hold:
    /// one it holds that is stopped, replaced or placed elsewhere is stopped there; one it
    /// should hold but has not listed for a grace period (its agent restarted mid-build, say)
    /// is placed again.
    pub(super) fn reconcile_apps(
        &self,
        node: &str,
        reported: &[String],
    ) -> Result<(), OrchestratorError> {
        let mut listed = std::collections::HashSet::new();
        for entry in reported {
            let Some((id, generation)) = entry
                .split_once('/')
                .and_then(|(i, g)| Some((i.parse::<Uuid>().ok()?, g.parse::<u32>().ok()?)))
            else {
                continue;
            };
            listed.insert(id);
            let wanted = self.store.deployment(id)?.is_some_and(|d| {
                d.holder() == Some(node)
                    && (d.generation == generation || d.serving_generation == Some(generation))
            });
            if !wanted {
                if let Some(broker) = self.broker() {
                    tracing::info!(%id, generation, %node, "a node holds an app nobody wants; stopping it");
                    let node = node.to_owned();
                    tokio::spawn(async move {
                        let msg = WorkRequest::StopDeployment { id, generation };
                        let _ = broker.publish(&msg, Some(&node)).await;
                    });
                }
            }
        }
        let grace = Duration::from_millis(self.config.orchestrator.grace_ms);
        for d in self.store.deployments()? {
            let holds = d.holder() == Some(node);
            let mut missing = lock(&self.apps_missing);
            if !holds || listed.contains(&d.id) {
                missing.remove(&d.id);
                continue;
            }
            let since = *missing.entry(d.id).or_insert_with(std::time::Instant::now);
            if since.elapsed() < grace {
                continue;
            }
            missing.remove(&d.id);
            drop(missing);
            tracing::warn!(id = %d.id, %node, "the node does not hold its app; placing it again");
            let reason = format!("placing again: node {node} does not hold it");
            self.place_again(d.id, node, d.generation, reason)?;
        }
        Ok(())
    }

    /// Redeploys, every `app_poll_ms`, the running deployments with `autoRedeploy` whose
    /// branch has moved to another commit.
    pub(super) async fn poll_branches(&self, shutdown: tokio_util::sync::CancellationToken) {
        let every = Duration::from_millis(self.config.orchestrator.app_poll_ms.max(1000));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let Ok(deployments) = self.store.deployments() else {
                continue;
            };
            for d in deployments {
                let watched = d.auto_redeploy
                    && d.status == DeployStatus::Running
                    && d.serving_generation == Some(d.generation);
                let Some(commit) = d.commit.as_deref().filter(|_| watched) else {
                    continue;
                };
                match crate::deploy::app::remote_head(&d.git_url, &d.branch).await {
                    Ok(head) if head != commit => {
                        tracing::info!(id = %d.id, %head, "new commit on the branch; redeploying");
                        if let Err(error) = self.redeploy(d.id).await {
                            tracing::warn!(%error, id = %d.id, "automatic redeploy failed");
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, id = %d.id, "cannot check the branch"),
                }
            }
        }
    }

    /// Puts a deployment that `node` held (at `generation`) back in the queue for placement.
    fn place_again(
        &self,
        id: Uuid,
        node: &str,
        generation: u32,
        reason: String,
    ) -> Result<(), OrchestratorError> {
        if let Some(record) = self.store.update_deployment(id, |r| {
            if r.node.as_deref() != Some(node) || r.generation != generation {
                return false;
            }
            r.status = DeployStatus::Requested;
            r.reason = Some(reason.clone());
            r.node = None;
            r.url = None;
            r.serving_generation = None;
            r.updated_at = crate::now_ms();
            true
        })? {
            self.deployment_changed(&record);
        }
        Ok(())
    }

    fn deployment_changed(&self, d: &DeploymentRecord) {
        let _ = self.deploy_notices.send(d.clone());
    }

    /// Changes of deployments, as they happen.
    pub fn subscribe_deployments(&self) -> tokio::sync::broadcast::Receiver<DeploymentRecord> {
        self.deploy_notices.subscribe()
    }
}

/// An address as the host part of a URL (IPv6 in brackets).
fn host(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_and_branches_are_checked() {
        for ok in [
            "http://127.0.0.1:9418/app.git",
            "https://github.com/KSP-CKAN/NetKAN-Infra",
            "git://host/repo",
            "ssh://git@host/repo",
            "git@github.com:owner/repo.git",
        ] {
            assert!(check_git_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "file:///etc",
            "/srv/repo",
            "https://",
            "http://a b",
            "-uhttp://x",
        ] {
            assert!(check_git_url(bad).is_err(), "{bad}");
        }
        for ok in ["main", "release/1.2", "feature-x"] {
            assert!(check_branch(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-f", "a..b", "a b", "x.lock", "a:b", "/x"] {
            assert!(check_branch(bad).is_err(), "{bad}");
        }
    }
}
