//! Raft's RPCs between agents: JSON over the agent's HTTP port (`POST /raft/<op>`), each
//! signed with the sender's node secret. A peer is named by its node id; its address is
//! looked up at every call (discovery first, then the replicated node record), so a voter
//! that comes back with a new address is simply reached there.

use super::{Member, TypeConfig};
use crate::identity;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

type Nid = u64;

/// Finds a node's API base URL (`http://host:port`) by its id.
pub type Resolve = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Header naming the sending node.
pub const NODE_HEADER: &str = "x-kraken-node";
/// Header carrying the RPC's signature.
pub const SIGNATURE_HEADER: &str = "x-kraken-signature";

/// Makes a client per peer.
#[derive(Clone)]
pub struct Network {
    pub(super) self_id: String,
    pub(super) token: String,
    pub(super) resolve: Resolve,
    pub(super) http: reqwest::Client,
    /// Peers the last call could not reach (said once, not at every heartbeat).
    pub(super) unreachable: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: Nid, node: &Member) -> Peer {
        Peer {
            net: self.clone(),
            target,
            node: node.node.clone(),
        }
    }
}

/// One peer.
pub struct Peer {
    net: Network,
    target: Nid,
    node: String,
}

/// A transport failure, for openraft's error types.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Transport(String);

impl Peer {
    /// Logs when a peer stops or starts answering.
    fn reached(&self, ok: bool, why: impl FnOnce() -> String) {
        let mut set = self
            .net
            .unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if ok {
            if set.remove(&self.node) {
                tracing::info!(node = %self.node, "voter reachable again");
            }
        } else if set.insert(self.node.clone()) {
            tracing::warn!(node = %self.node, error = %why(), "cannot reach voter");
        }
    }

    async fn call<Req, Resp, E>(
        &self,
        op: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<Nid, Member, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result = async {
            let bytes = self
                .net
                .post(&self.node, op, req, option.hard_ttl())
                .await
                .map_err(|e| match e {
                    PostError::Unreachable(why) => RPCError::Unreachable(Unreachable::new(&why)),
                    PostError::Network(why) => RPCError::Network(NetworkError::new(&why)),
                })?;
            let answer: Result<Resp, E> = serde_json::from_slice(&bytes)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
        }
        .await;
        match &result {
            Ok(_) | Err(RPCError::RemoteError(_)) => self.reached(true, String::new),
            Err(e) => self.reached(false, || e.to_string()),
        }
        result
    }
}

/// Why a signed RPC got no answer.
#[derive(Debug)]
pub(super) enum PostError {
    /// The peer is not there (no address, no connection, a timeout, an error status).
    Unreachable(Transport),
    /// The exchange itself failed.
    Network(Transport),
}

impl Network {
    /// Posts one signed RPC to `node` and returns the answer's body.
    pub(super) async fn post(
        &self,
        node: &str,
        op: &str,
        req: &impl Serialize,
        ttl: std::time::Duration,
    ) -> Result<bytes::Bytes, PostError> {
        let Some(base) = (self.resolve)(node) else {
            return Err(PostError::Unreachable(Transport(format!(
                "no address known for node {node}"
            ))));
        };
        let path = format!("/raft/{op}");
        let body =
            serde_json::to_vec(req).map_err(|e| PostError::Network(Transport(e.to_string())))?;
        let signature = identity::rpc_signature(&self.token, &self.self_id, &path, &body);
        let resp = self
            .http
            .post(format!("{base}{path}"))
            .timeout(ttl)
            .header(NODE_HEADER, &self.self_id)
            .header(SIGNATURE_HEADER, signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let why = Transport(format!("{e}: {}", source_chain(&e)));
                if e.is_connect() || e.is_timeout() {
                    PostError::Unreachable(why)
                } else {
                    PostError::Network(why)
                }
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| PostError::Network(Transport(e.to_string())))?;
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
            return Err(PostError::Unreachable(Transport(format!(
                "node {node} answered {status}: {text}"
            ))));
        }
        Ok(bytes)
    }
}

/// An error's causes, innermost last (reqwest hides the useful part there).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push(cause.to_string());
        next = cause.source();
    }
    out.join(": ")
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<Nid>, RPCError<Nid, Member, RaftError<Nid>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<Nid>,
        RPCError<Nid, Member, RaftError<Nid, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<Nid>,
        option: RPCOption,
    ) -> Result<VoteResponse<Nid>, RPCError<Nid, Member, RaftError<Nid>>> {
        self.call("vote", &rpc, &option).await
    }
}
