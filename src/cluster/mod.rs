//! The cluster's Raft (openraft 0.9): who leads, who votes, and the commitment of the
//! store's writes on a majority of voters.
//!
//! Every agent runs a Raft node over its own store; a founder initializes it with itself as
//! the only voter. The leader is the orchestrator, but only while a majority of voters
//! answers it ([`Cluster::leading`]): a leader cut off with a minority stops orchestrating
//! and its writes fail with "no quorum". The leader grows the voters from one to three (or
//! five, `cluster.voters`) as live nodes join, always to an odd number, and replaces a voter
//! silent for `cluster.voter_grace_ms` by a live node when there is one. Nodes that are not
//! voters are plain workers and take no part in Raft.
//!
//! Elections use a pre-vote (Raft thesis §9.6): openraft's own election timer is off, and a
//! voter that has heard from no leader for `cluster.election_ms` first asks the other voters
//! whether they would elect it. Only when a majority says yes (none of them hears from a
//! leader either, and its log is as long as theirs) does it start a real election. A voter
//! cut off by a partition therefore never raises its term, and cannot depose the leader when
//! it comes back.
//!
//! Raft node ids are 64-bit hashes of the node ids; the membership keeps the node id itself
//! ([`Member`]), which is all the network needs (addresses are found at each call).

pub mod network;

use crate::config::ClusterConfig;
use crate::identity;
use crate::store::raft::{LogStore, StateMachine};
use crate::store::{Op, Replicator, Store, StoreError};
use futures::future::BoxFuture;
use network::{Network, Resolve};
use openraft::raft::AppendEntriesResponse;
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

openraft::declare_raft_types!(
    /// Kraken's Raft: batches of store writes between nodes named by [`Member`].
    pub TypeConfig:
        D = Batch,
        R = (),
        Node = Member,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// A Raft member: the agent's node id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.node)
    }
}

/// One log entry's writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub ops: Vec<Op>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("raft: {0}")]
    Raft(String),
    #[error("raft rpc refused: {0}")]
    Unauthorized(String),
    #[error("raft rpc malformed: {0}")]
    Malformed(String),
}

/// The Raft id of a node id.
pub fn raft_id(node: &str) -> u64 {
    let digest = sha2::Sha256::digest(node.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}

/// The node id of a member (a raft id without a node, which never happens here, shows as
/// the number).
fn node_of(membership: &openraft::Membership<u64, Member>, id: &u64) -> String {
    membership
        .get_node(id)
        .map_or_else(|| id.to_string(), |n| n.node.clone())
}

/// The node ids of the voters.
fn voter_nodes(m: &openraft::RaftMetrics<u64, Member>) -> Vec<String> {
    let membership = m.membership_config.membership();
    membership
        .voter_ids()
        .map(|id| node_of(membership, &id))
        .collect()
}

/// The cluster as this node's Raft sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub leader: Option<String>,
    pub term: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: &'static str,
    /// Whether this node leads with a majority answering it.
    pub leading: bool,
    /// Whether the cluster survives its leader's death (three voters or more).
    pub failover: bool,
}

/// Time a write may wait for a majority before it fails with "no quorum".
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// "Would you elect me?", asked before a real election.
#[derive(Debug, Serialize, Deserialize)]
struct PreVote {
    /// The term the election would start.
    term: u64,
    /// The candidate's last log entry.
    last_log: Option<openraft::LogId<u64>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PreVoteAnswer {
    granted: bool,
}

/// A log position's rank: term first, then index (`None`: an empty log).
fn log_rank(log: &Option<openraft::LogId<u64>>) -> Option<(u64, u64)> {
    log.as_ref().map(|l| (l.leader_id.term, l.index))
}

pub struct Cluster {
    raft: Raft,
    net: Network,
    store: Store,
    resolve: Resolve,
    self_id: String,
    token: String,
    settings: ClusterConfig,
    leading: watch::Sender<Option<u64>>,
    /// When a leader was last heard from (an append or a snapshot accepted).
    heard_leader: Mutex<Instant>,
}

impl Cluster {
    /// Starts this node's Raft over `store`; `token` is the cluster token that signs RPCs,
    /// `resolve` finds a peer's API by node id.
    pub async fn start(
        settings: &ClusterConfig,
        store: Store,
        self_id: &str,
        token: &str,
        resolve: Resolve,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<Self>, ClusterError> {
        let election = settings.election_ms;
        let config = openraft::Config {
            cluster_name: "kraken".into(),
            heartbeat_interval: (election / 4).max(50),
            // elections are started by `campaign` after a pre-vote; openraft's timeouts only
            // set the leader lease (`max`): a voter refuses votes for that long after a
            // leader's last word
            enable_elect: false,
            election_timeout_min: election / 2,
            election_timeout_max: election,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let net = Network {
            self_id: self_id.to_owned(),
            token: token.to_owned(),
            resolve: resolve.clone(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_millis(election / 2))
                .build()
                .map_err(|e| ClusterError::Raft(e.to_string()))?,
            unreachable: Default::default(),
        };
        let raft = Raft::new(
            raft_id(self_id),
            Arc::new(config),
            net.clone(),
            LogStore(store.clone()),
            StateMachine(store.clone()),
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let cluster = Arc::new(Self {
            raft,
            net,
            store,
            heard_leader: Mutex::new(Instant::now()),
            resolve,
            self_id: self_id.to_owned(),
            token: token.to_owned(),
            settings: settings.clone(),
            leading: watch::channel(None).0,
        });
        let me = cluster.clone();
        let token = shutdown.clone();
        tasks.spawn(async move { me.campaign(token).await });
        let me = cluster.clone();
        tasks.spawn(async move { me.watch_leadership(shutdown).await });
        Ok(cluster)
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// Where a node's API is now (`http://host:port`).
    pub fn api_url_of(&self, node: &str) -> Option<String> {
        (self.resolve)(node)
    }

    /// Makes this node the only voter of a new cluster (nothing when it already is a member).
    pub async fn found(&self) -> Result<(), ClusterError> {
        if self.raft.is_initialized().await.unwrap_or(true) {
            return Ok(());
        }
        let mut members = BTreeMap::new();
        members.insert(
            raft_id(&self.self_id),
            Member {
                node: self.self_id.clone(),
            },
        );
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))
    }

    /// `Some(term)` while this node leads with a majority answering it.
    pub fn leading(&self) -> watch::Receiver<Option<u64>> {
        self.leading.subscribe()
    }

    /// Waits until this leader has applied everything committed before its term.
    pub async fn caught_up(&self) -> Result<(), ClusterError> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::Raft(e.to_string()))
    }

    /// Follows Raft's metrics and says when this node starts and stops leading.
    async fn watch_leadership(self: Arc<Self>, shutdown: CancellationToken) {
        let mut metrics = self.raft.metrics();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let now = self.leading_term();
            self.leading.send_if_modified(|old| {
                let changed = *old != now;
                if changed {
                    match now {
                        Some(term) => tracing::info!(term, "this node leads the cluster"),
                        None if old.is_some() => {
                            tracing::warn!("this node no longer leads (a newer leader, or no majority answers)")
                        }
                        None => {}
                    }
                    *old = now;
                }
                changed
            });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = metrics.changed() => if r.is_err() { break },
                _ = tick.tick() => {}
            }
        }
        self.leading.send_replace(None);
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not shut down cleanly");
        }
    }

    /// Starts an election when this voter has heard from no leader for `election_ms` (plus
    /// a random part, so voters do not all stand at once) and a majority of the voters
    /// would elect it.
    async fn campaign(self: Arc<Self>, shutdown: CancellationToken) {
        let election = Duration::from_millis(self.settings.election_ms);
        let jitter = || {
            use rand::Rng;
            let half = self.settings.election_ms / 2;
            Duration::from_millis(rand::rng().random_range(0..=half))
        };
        let mut not_before = Instant::now() + jitter();
        let mut tick = tokio::time::interval(election / 4);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let m = self.raft.metrics().borrow().clone();
            let mut voters = voter_nodes(&m);
            let is_voter = voters.contains(&self.self_id);
            voters.retain(|v| *v != self.self_id);
            if m.state == ServerState::Leader || !is_voter {
                continue;
            }
            let silent = self.heard_leader().elapsed();
            // a sole voter needs nobody's word
            if !voters.is_empty() && (silent < election || Instant::now() < not_before) {
                continue;
            }
            not_before = Instant::now() + election + jitter();
            let ask = PreVote {
                term: m.current_term + 1,
                last_log: match self.store.raft_last_log_id() {
                    Ok(l) => l,
                    Err(error) => {
                        tracing::error!(%error, "cannot read the raft log");
                        continue;
                    }
                },
            };
            let answers = futures::future::join_all(
                voters
                    .iter()
                    .map(|v| self.net.post(v, "prevote", &ask, election / 2)),
            )
            .await;
            let granted = 1 + answers
                .iter()
                .filter(|a| {
                    a.as_ref().is_ok_and(|body| {
                        serde_json::from_slice::<PreVoteAnswer>(body).is_ok_and(|a| a.granted)
                    })
                })
                .count();
            let total = voters.len() + 1;
            if granted * 2 <= total {
                tracing::debug!(granted, total, "pre-vote lost; not standing");
                continue;
            }
            tracing::info!(
                silent_ms = silent.as_millis() as u64,
                granted,
                total,
                term = ask.term,
                "no word from a leader; standing for election"
            );
            if let Err(error) = self.raft.trigger().elect().await {
                tracing::warn!(%error, "cannot start an election");
            }
        }
    }

    fn heard_leader(&self) -> Instant {
        *self.heard_leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this node would elect the asker: it hears from no leader itself (nor is one
    /// with a majority), the term would be new to it, and the asker's log is not behind.
    fn grants_pre_vote(&self, ask: &PreVote) -> Result<bool, ClusterError> {
        if self.leading.borrow().is_some()
            || self.heard_leader().elapsed() < Duration::from_millis(self.settings.election_ms)
        {
            return Ok(false);
        }
        let term = self.raft.metrics().borrow().current_term;
        let mine = self
            .store
            .raft_last_log_id()
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        Ok(ask.term > term && log_rank(&ask.last_log) >= log_rank(&mine))
    }

    fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return None;
        }
        let voters = m.membership_config.membership().voter_ids().count();
        // `None` right after an election or a membership change: not yet a reason to doubt
        let answered = m
            .millis_since_quorum_ack
            .is_none_or(|ms| ms < 2 * self.settings.election_ms);
        (voters <= 1 || answered).then_some(m.current_term)
    }

    /// The cluster as this node sees it.
    pub fn view(&self) -> ClusterView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let name = |id: &u64| node_of(membership, id);
        let voters = voter_nodes(&m);
        let learners = membership.learner_ids().map(|id| name(&id)).collect();
        ClusterView {
            leader: m.current_leader.as_ref().map(name),
            term: m.current_term,
            failover: voters.len() >= 3,
            voters,
            learners,
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            leading: self.leading.borrow().is_some(),
        }
    }

    /// Commits writes through Raft (for [`Store::start_recording`]).
    pub fn replicator(self: &Arc<Self>) -> Arc<dyn Replicator> {
        Arc::new(RaftReplicator(self.raft.clone()))
    }

    /// Grows the voters to the configured number as live nodes allow, and replaces voters
    /// silent for longer than the grace period. `silent_for` says how long a node has not
    /// been heard from (`None`: alive); `candidates` are live non-voters, best first.
    pub async fn tend_voters(
        &self,
        silent_for: impl Fn(&str) -> Option<Duration>,
        candidates: &[String],
    ) -> Result<(), ClusterError> {
        let m = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<String> = voter_nodes(&m).into_iter().collect();
        let grace = Duration::from_millis(self.settings.voter_grace_ms);
        let mut free: Vec<&String> = candidates.iter().filter(|c| !voters.contains(*c)).collect();
        free.reverse();
        let mut next = voters.clone();
        for voter in &voters {
            if voter == &self.self_id || silent_for(voter).is_none_or(|s| s < grace) {
                continue;
            }
            let Some(replacement) = free.pop() else { break };
            tracing::warn!(dead = %voter, new = %replacement, "replacing a silent voter");
            next.remove(voter);
            next.insert(replacement.clone());
        }
        while next.len() + 2 <= self.settings.voters as usize && free.len() >= 2 {
            for _ in 0..2 {
                if let Some(c) = free.pop() {
                    next.insert(c.clone());
                }
            }
        }
        if next == voters {
            return Ok(());
        }
        for node in next.difference(&voters) {
            let add = self
                .raft
                .add_learner(raft_id(node), Member { node: node.clone() }, true);
            match tokio::time::timeout(Duration::from_secs(20), add).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ClusterError::Raft(e.to_string())),
                Err(_) => {
                    return Err(ClusterError::Raft(format!(
                        "node {node} did not catch up with the log within 20 s"
                    )))
                }
            }
        }
        let ids: BTreeSet<u64> = next.iter().map(|n| raft_id(n)).collect();
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(ids), false)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        tracing::info!(voters = ?next, "voters changed");
        Ok(())
    }

    /// Serves one signed Raft RPC (`op` is `append`, `vote`, `snapshot` or `prevote`).
    pub async fn serve_rpc(
        &self,
        op: &str,
        sender: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, ClusterError> {
        let path = format!("/raft/{op}");
        if !identity::plain_id(sender, 1) {
            return Err(ClusterError::Unauthorized("no sender node named".into()));
        }
        let expected = identity::rpc_signature(&self.token, sender, &path, body);
        if !identity::macs_equal(&expected, signature) {
            return Err(ClusterError::Unauthorized(format!(
                "bad signature from `{sender}`"
            )));
        }
        fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ClusterError> {
            serde_json::from_slice(body).map_err(|e| ClusterError::Malformed(e.to_string()))
        }
        let heard =
            || *self.heard_leader.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let out = match op {
            "append" => {
                let answer = self.raft.append_entries(parse(body)?).await;
                if matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
                    heard();
                }
                serde_json::to_vec(&answer)
            }
            "snapshot" => {
                let answer = self.raft.install_snapshot(parse(body)?).await;
                if answer.is_ok() {
                    heard();
                }
                serde_json::to_vec(&answer)
            }
            "vote" => {
                let answer = self.raft.vote(parse(body)?).await;
                // a vote given restarts the wait, as a leader's word does: the candidate
                // gets its time to win before this node stands itself
                if answer.as_ref().is_ok_and(|a| a.vote_granted) {
                    heard();
                }
                serde_json::to_vec(&answer)
            }
            "prevote" => serde_json::to_vec(&PreVoteAnswer {
                granted: self.grants_pre_vote(&parse(body)?)?,
            }),
            _ => return Err(ClusterError::Malformed(format!("no raft operation `{op}`"))),
        };
        out.map_err(|e| ClusterError::Malformed(e.to_string()))
    }
}

struct RaftReplicator(Raft);

impl Replicator for RaftReplicator {
    fn replicate(&self, ops: Vec<Op>) -> BoxFuture<'static, Result<(), StoreError>> {
        let raft = self.0.clone();
        Box::pin(async move {
            match tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(Batch { ops })).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(StoreError::NoQuorum(format!(
                    "the write was not committed: {e}"
                ))),
                Err(_) => Err(StoreError::NoQuorum(format!(
                    "no majority of voters confirmed the write within {} s",
                    COMMIT_TIMEOUT.as_secs()
                ))),
            }
        })
    }
}
