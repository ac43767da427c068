//! A small HTTP/1.1 server on loopback that plays the upstream hosts (GitHub's API and web
//! host, SpaceDock, plain download hosts) with canned answers in their real shapes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(v: &serde_json::Value) -> Self {
        Self {
            status: 200,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: serde_json::to_vec(v).unwrap(),
        }
    }
    pub fn bytes(content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: vec![],
        }
    }
    pub fn redirect(to: &str) -> Self {
        Self {
            status: 302,
            headers: vec![("Location".into(), to.into())],
            body: vec![],
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// The server: answers by exact path-and-query, then by path alone; 404 otherwise.
#[derive(Clone)]
pub struct Upstream {
    pub base: String,
    routes: Arc<Mutex<HashMap<String, Answer>>>,
    pub hits: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let me = Self {
            base,
            routes: Arc::default(),
            hits: Arc::default(),
        };
        let server = me.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let s = server.clone();
                tokio::spawn(async move {
                    let _ = s.serve(sock).await;
                });
            }
        });
        me
    }

    /// The inflator's upstream settings with GitHub (API and web) and SpaceDock on this
    /// server, plus `extra` public → reachable prefixes.
    pub fn upstreams(
        &self,
        github_token: Option<String>,
        extra: Vec<(String, String)>,
    ) -> kraken::netkan::Upstreams {
        kraken::netkan::Upstreams {
            github_api: format!("{}/gh-api", self.base),
            github_web: format!("{}/gh-web", self.base),
            spacedock: format!("{}/sd", self.base),
            github_token,
            extra,
        }
    }

    /// Answers `path` (a path with optional query, below the server's root).
    pub fn route(&self, path: &str, answer: Answer) {
        self.routes.lock().unwrap().insert(path.to_owned(), answer);
    }

    /// Answers the reachable URL `url` (which must be on this server).
    pub fn route_url(&self, url: &str, answer: Answer) {
        let path = url
            .strip_prefix(&self.base)
            .unwrap_or_else(|| panic!("{url} is not on the test server {}", self.base));
        self.route(path, answer);
    }

    async fn serve(&self, mut sock: tokio::net::TcpStream) -> std::io::Result<()> {
        loop {
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") {
                if sock.read(&mut byte).await? == 0 {
                    return Ok(());
                }
                buf.push(byte[0]);
                if buf.len() > 64 * 1024 {
                    return Ok(());
                }
            }
            let head = String::from_utf8_lossy(&buf).into_owned();
            let mut lines = head.lines();
            let request = lines.next().unwrap_or_default().to_owned();
            let mut parts = request.split(' ');
            let method = parts.next().unwrap_or_default().to_owned();
            let target = parts.next().unwrap_or_default().to_owned();
            let length: usize = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            sock.read_exact(&mut body).await?;
            self.hits.lock().unwrap().push(format!("{method} {target}"));
            let answer = {
                let routes = self.routes.lock().unwrap();
                let path_only = target.split('?').next().unwrap_or_default();
                routes
                    .get(&target)
                    .or_else(|| routes.get(path_only))
                    .cloned()
                    .unwrap_or_else(|| Answer::status(404))
            };
            let mut out = format!("HTTP/1.1 {} X\r\n", answer.status);
            for (k, v) in &answer.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str(&format!("Content-Length: {}\r\n\r\n", answer.body.len()));
            sock.write_all(out.as_bytes()).await?;
            if method != "HEAD" {
                sock.write_all(&answer.body).await?;
            }
        }
    }
}
