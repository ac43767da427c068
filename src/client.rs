//! The HTTP client of the agent's API, used by the CLI and by a joining worker. Asked of a
//! node that does not orchestrate (503), it asks that node who leads and goes there instead,
//! for this request and the ones after it.

use crate::identity;
use crate::orchestrator::{JoinRequest, JoinResponse};
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{0}")]
    GraphQl(String),
    #[error("the orchestrator at {0} could not prove it knows the cluster token; refusing it")]
    Impostor(String),
}

/// A client for one agent's API.
pub struct Client {
    base: String,
    /// The orchestrator's API, once a node that does not orchestrate named it.
    leader: std::sync::Mutex<Option<String>>,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self::with_timeout(base, token, Duration::from_secs(30))
    }

    /// A client whose every request gives up after `timeout` (a peer that may be gone).
    pub fn with_timeout(base: &str, token: Option<String>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            leader: std::sync::Mutex::new(None),
            token,
            http,
        }
    }

    /// Where requests go: the leader once one was named, else the agent asked for.
    fn target(&self) -> String {
        self.leader
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .unwrap_or_else(|| self.base.clone())
    }

    /// Sends `method path` (with a JSON `body`); on a 503 from a node that does not
    /// orchestrate, once more to the leader it names.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let asked = self.target();
        let refused = match self.send(&asked, method.clone(), path, body).await {
            Err(e @ ClientError::Refused { status: 503, .. }) => e,
            other => return other,
        };
        let Some(leader) = self.leader_of(&asked).await.filter(|l| *l != asked) else {
            return Err(refused);
        };
        tracing::info!(%asked, %leader, "following the orchestrator");
        if let Ok(mut l) = self.leader.lock() {
            *l = Some(leader.clone());
        }
        self.send(&leader, method, path, body).await
    }

    /// The API URL of the leader, as the agent at `base` knows it.
    async fn leader_of(&self, base: &str) -> Option<String> {
        let v = self
            .send(base, reqwest::Method::GET, "/api/v1/leader", None)
            .await
            .ok()?;
        let url = v.get("leader_url")?.as_str()?;
        Some(url.trim_end_matches('/').to_owned())
    }

    async fn send(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{base}{path}");
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            return Err(ClientError::Refused {
                url,
                status: status.as_u16(),
                message,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Runs a GraphQL operation, returning its `data` or the errors' messages.
    pub async fn graphql(&self, query: &str, variables: Value) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "query": query, "variables": variables });
        let resp = self.post("/graphql", &body).await?;
        if let Some(errors) = resp.get("errors").and_then(|e| e.as_array()) {
            if !errors.is_empty() {
                let msgs: Vec<String> = errors
                    .iter()
                    .map(|e| {
                        e.get("message")
                            .and_then(|m| m.as_str())
                            .unwrap_or("error")
                            .to_owned()
                    })
                    .collect();
                return Err(ClientError::GraphQl(msgs.join("; ")));
            }
        }
        Ok(resp.get("data").cloned().unwrap_or(Value::Null))
    }

    /// The join handshake: proves the token without sending it, and checks that the
    /// orchestrator knows it too.
    pub async fn join(
        &self,
        token: &str,
        mut req: JoinRequest,
    ) -> Result<JoinResponse, ClientError> {
        let challenge = self.get("/api/v1/join/challenge").await?;
        let nonce = challenge
            .get("nonce")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        req.server_nonce = nonce;
        req.client_nonce = identity::random_hex(16);
        req.proof = identity::join_proof(token, &req.server_nonce, &req.node_id, &req.client_nonce);
        let body = serde_json::to_value(&req).unwrap_or_default();
        let resp = self.post("/api/v1/join", &body).await?;
        let resp: JoinResponse = serde_json::from_value(resp)
            .map_err(|e| ClientError::GraphQl(format!("unexpected join answer: {e}")))?;
        let expected = identity::accept_proof(token, &req.client_nonce, &req.node_id);
        if !identity::macs_equal(&expected, &resp.accept_proof) {
            return Err(ClientError::Impostor(self.base.clone()));
        }
        Ok(resp)
    }
}
