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
    /// No answer: the connection is closed after the request's head, before its body is
    /// read (an upload cut off in the middle).
    pub fn cut() -> Self {
        Self::status(0)
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// A request's method and target, and its body.
pub type Delivered = (String, Vec<u8>);

/// The server: answers by exact path-and-query, then by path alone; 404 otherwise.
#[derive(Clone)]
pub struct Upstream {
    pub base: String,
    routes: Arc<Mutex<HashMap<String, Answer>>>,
    /// Answers given once each, before `routes`.
    once: Arc<Mutex<HashMap<String, Answer>>>,
    pub hits: Arc<Mutex<Vec<String>>>,
    /// `(target, Authorization header)` of every request that carried one.
    pub auth: Arc<Mutex<Vec<(String, String)>>>,
    /// `(method and target, body)` of every request that carried a body.
    pub bodies: Arc<Mutex<Vec<Delivered>>>,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1").await
    }

    /// A server on `ip` (loopback, or the docker bridge's own address so job containers
    /// reach it).
    pub async fn start_on(ip: &str) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let me = Self {
            base,
            routes: Arc::default(),
            once: Arc::default(),
            hits: Arc::default(),
            auth: Arc::default(),
            bodies: Arc::default(),
        };
        let server = me.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let s = server.clone();
                let _ = sock.set_nodelay(true);
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

    /// Serves a generated GitHub-hosted mod `Gen<n>` (repository `gen/Gen<n>`, one release
    /// `1.<n>` with a zip asset) and returns its identifier and `.netkan` text.
    pub fn generated_mod(&self, n: usize) -> (String, String) {
        let id = format!("Gen{n}");
        let ups = self.upstreams(None, vec![]);
        let serve = |public: &str, answer: Answer| self.route_url(&ups.reach(public), answer);
        serve(
            &format!("https://api.github.com/repos/gen/{id}"),
            Answer::json(&serde_json::json!({
                "name": id, "html_url": format!("https://github.com/gen/{id}"),
                "description": format!("Generated mod number {n}"), "has_issues": true,
                "license": {"spdx_id": "MIT"}, "owner": {"login": "gen", "type": "User"}})),
        );
        let url = format!("https://github.com/gen/{id}/releases/download/1.{n}/{id}.zip");
        serve(
            &format!("https://api.github.com/repos/gen/{id}/releases"),
            Answer::json(&serde_json::json!([{
                "tag_name": format!("1.{n}"), "author": {"login": "gen", "type": "User"},
                "published_at": "2025-01-01T00:00:00Z",
                "assets": [{"name": format!("{id}.zip"), "browser_download_url": url,
                            "updated_at": "2025-01-01T00:00:00Z"}]}])),
        );
        serve(
            &url,
            Answer::bytes("application/octet-stream", generated_zip(&id, n)),
        );
        let netkan = format!("identifier: {id}\n$kref: '#/ckan/github/gen/{id}'\nlicense: MIT\n");
        (id, netkan)
    }

    /// Answers `path` (a path with optional query, below the server's root), or
    /// `METHOD /path` for that method only; a trailing `*` makes it a prefix.
    pub fn route(&self, path: &str, answer: Answer) {
        self.routes.lock().unwrap().insert(path.to_owned(), answer);
    }

    /// Answers the next request for `path` (as [`Upstream::route`] names it) with `answer`;
    /// the ones after it as before.
    pub fn route_once(&self, path: &str, answer: Answer) {
        self.once.lock().unwrap().insert(path.to_owned(), answer);
    }

    /// Answers the reachable URL `url` (which must be on this server).
    pub fn route_url(&self, url: &str, answer: Answer) {
        let path = url
            .strip_prefix(&self.base)
            .unwrap_or_else(|| panic!("{url} is not on the test server {}", self.base));
        self.route(path, answer);
    }

    async fn serve(&self, sock: tokio::net::TcpStream) -> std::io::Result<()> {
        // the head is read a byte at a time, from this buffer rather than the socket
        let mut sock = tokio::io::BufReader::new(sock);
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
            let headers: Vec<(&str, &str)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k, v.trim()))
                .collect();
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| *v)
            };
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if let Some(a) = header("authorization") {
                self.auth
                    .lock()
                    .unwrap()
                    .push((target.clone(), a.to_owned()));
            }
            let path_only = target.split('?').next().unwrap_or_default().to_owned();
            let once = {
                let mut once = self.once.lock().unwrap();
                let key = find(&once, &method, &target, &path_only);
                key.and_then(|k| once.remove(&k))
            };
            let answer = once.unwrap_or_else(|| {
                let routes = self.routes.lock().unwrap();
                find(&routes, &method, &target, &path_only)
                    .and_then(|k| routes.get(&k).cloned())
                    .unwrap_or_else(|| Answer::status(404))
            });
            self.hits.lock().unwrap().push(format!("{method} {target}"));
            if answer.status == 0 {
                return Ok(());
            }
            let mut body = vec![0u8; length];
            sock.read_exact(&mut body).await?;
            if !body.is_empty() {
                let hit = format!("{method} {target}");
                self.bodies.lock().unwrap().push((hit, body.clone()));
            }
            let mut out = format!("HTTP/1.1 {} X\r\n", answer.status);
            for (k, v) in &answer.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str(&format!("Content-Length: {}\r\n\r\n", answer.body.len()));
            // one write per answer: a head and a body written apart would wait out the
            // client's delayed ACK (Nagle), 40 ms an answer
            let mut bytes = out.into_bytes();
            if method != "HEAD" {
                bytes.extend_from_slice(&answer.body);
            }
            sock.write_all(&bytes).await?;
        }
    }
}

/// The route of `routes` that answers a request: `METHOD /path` first (a route for one
/// method), then the target with its query, then the path alone, then a route ending in `*`
/// that is a prefix of either.
fn find(
    routes: &HashMap<String, Answer>,
    method: &str,
    target: &str,
    path_only: &str,
) -> Option<String> {
    let full = format!("{method} {path_only}");
    let exact = [full.as_str(), target, path_only]
        .into_iter()
        .find(|k| routes.contains_key(*k))
        .map(str::to_owned);
    exact.or_else(|| {
        routes
            .keys()
            .find(|k| {
                k.strip_suffix('*')
                    .is_some_and(|p| full.starts_with(p) || path_only.starts_with(p))
            })
            .cloned()
    })
}

/// A mod's zip: a plugin and a few parts under `GameData/<id>`, about 40 KiB.
pub fn generated_zip(id: &str, n: usize) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        z.start_file(format!("GameData/{id}/Plugins/{id}.dll"), opts)
            .unwrap();
        // bytes that do not compress away, different per mod
        let mut x = n as u64 + 1;
        let dll: Vec<u8> = (0..32 * 1024)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        z.write_all(&dll).unwrap();
        for part in 0..4 {
            z.start_file(format!("GameData/{id}/Parts/part{part}.cfg"), opts)
                .unwrap();
            z.write_all(format!("PART\n{{\n    name = {id}_{part}\n}}\n").as_bytes())
                .unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

/// The address of this host on Docker's default bridge, where job containers can reach a
/// test server.
pub fn docker_bridge_ip() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .expect("run ip");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("docker0 has no IPv4 address: {text}"))
}
