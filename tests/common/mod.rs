//! The integration-test harness: real agent processes (the built `kraken` binary), each with
//! its own data dir and ports, on loopback; a real dockerd and real `rabbitmq-server`s.
#![allow(dead_code)]

pub mod apps;
pub mod lan;
pub mod netkan;

use kraken::client::Client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the real parts are here. Under `CI=true` their absence fails the test; elsewhere
/// the test says so and is skipped.
pub fn real_parts_present() -> bool {
    let docker = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let rabbit = Command::new("sh")
        .args(["-c", "command -v rabbitmq-server"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let base = Command::new("docker")
        .args(["image", "inspect", "debian:bookworm-slim"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if docker && rabbit && base {
        return true;
    }
    let missing = format!(
        "missing real parts: dockerd running={docker}, rabbitmq-server installed={rabbit}, base image={base} (run scripts/test.sh)"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{missing}");
    }
    eprintln!("SKIPPED: {missing}");
    false
}

/// A free TCP port on loopback (and, for AMQP, its distribution port + 20000 too).
pub fn free_port(with_dist: bool) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        if !with_dist {
            return port;
        }
        if port < 45000 && std::net::TcpListener::bind(("127.0.0.1", port + 20000)).is_ok() {
            return port;
        }
    }
}

/// The mDNS port of this test process's agents (nextest runs each test in its own process,
/// so each test's agents see each other and no other test's).
pub fn mdns_port() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(free_udp_port)
}

/// A free UDP port on loopback.
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// One agent process.
pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    pub api_port: u16,
    pub amqp_port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// The network namespace it runs in (a host of a test LAN), and its address there.
    netns: Option<String>,
    host: String,
}

impl Agent {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_kraken")]);
                c
            }
            None => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_kraken"));
                // mDNS stays on loopback, on a port of this test's own
                c.env("KRAKEN_DISCOVERY_INTERFACES", "lo")
                    .env("KRAKEN_DISCOVERY_PORT", mdns_port().to_string())
                    // agents on one machine share it: no idle brokers beside the leader's
                    .env("KRAKEN_BROKER_STANDBY", "false");
                c
            }
        };
        cmd.arg("agent")
            .args(&self.args)
            .env(
                "RUST_LOG",
                "info,rocket=error,lapin=off,mdns_sd=off,openraft=off",
            )
            .env_remove("KRAKEN_API_URL")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start kraken agent"));
    }

    /// Starts an orchestrator (which is also a worker with `slots` slots): an agent with no
    /// role flags, alone on its test's mDNS, founds a cluster.
    pub fn orchestrator(root: &Path, slots: u32, env: &[(&str, &str)]) -> Agent {
        Self::bare(root, "orchestrator", slots, env)
    }

    /// Starts an agent with no role flags: it finds its cluster over mDNS (or founds one).
    pub fn bare(root: &Path, name: &str, slots: u32, env: &[(&str, &str)]) -> Agent {
        let api_port = free_port(false);
        let amqp_port = free_port(true);
        let flags = vec![
            "--api-port".into(),
            api_port.to_string(),
            "--amqp-port".into(),
            amqp_port.to_string(),
        ];
        Self::launch(root, name, slots, flags, env, (api_port, amqp_port), None)
    }

    /// Starts an agent with no flags on host `i` of a test LAN: the defaults of a real
    /// device (mDNS on every interface at 5353, API on 8080, AMQP on 5672).
    pub fn on_lan(lan: &lan::Lan, i: usize, slots: u32, env: &[(&str, &str)]) -> Agent {
        let host = Some((lan.netns(i), lan.ip(i)));
        Self::launch(
            lan.root(),
            &format!("host{i}"),
            slots,
            vec![],
            env,
            (8080, 5672),
            host,
        )
    }

    /// Starts an agent named `name` with its own data dir under `root`, `--slots`,
    /// `--name` and `flags`; `host` is the test LAN namespace and address it runs at.
    fn launch(
        root: &Path,
        name: &str,
        slots: u32,
        flags: Vec<String>,
        env: &[(&str, &str)],
        (api_port, amqp_port): (u16, u16),
        host: Option<(String, String)>,
    ) -> Agent {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
            "--data-dir".to_string(),
            dir.join("data").display().to_string(),
            "--slots".into(),
            slots.to_string(),
            "--name".into(),
            name.into(),
        ];
        args.extend(flags);
        let (netns, host) = match host {
            Some((ns, ip)) => (Some(ns), ip),
            None => (None, "127.0.0.1".to_string()),
        };
        let mut a = Agent {
            name: name.into(),
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
            api_port,
            amqp_port,
            child: None,
            netns,
            host,
        };
        a.spawn();
        a
    }

    /// The address its API is reached at, after the host got a new one.
    pub fn set_host(&mut self, ip: &str) {
        self.host = ip.to_owned();
    }

    /// Whether this agent holds a cluster's secrets (it founded or leads one).
    pub fn leads(&self) -> bool {
        self.data_dir().join("operator-token").exists()
    }

    /// Starts a worker joining `orch`.
    pub fn worker(
        root: &Path,
        name: &str,
        orch: &Agent,
        slots: u32,
        env: &[(&str, &str)],
    ) -> Agent {
        let api_port = free_port(false);
        let flags = vec![
            "--api-port".into(),
            api_port.to_string(),
            "--join".into(),
            orch.url(),
            "--token".into(),
            orch.join_token(),
        ];
        Self::launch(root, name, slots, flags, env, (api_port, 0), None)
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.api_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A file the agent writes into its data dir at start, waited for and trimmed.
    fn data_file(&self, name: &str) -> String {
        wait_until(&format!("{name} exists"), Duration::from_secs(10), || {
            std::fs::read_to_string(self.data_dir().join(name)).ok()
        })
        .trim()
        .to_owned()
    }

    pub fn join_token(&self) -> String {
        self.data_file("cluster-token")
    }

    pub fn operator_token(&self) -> String {
        self.data_file("operator-token")
    }

    pub fn node_id(&self) -> String {
        self.data_file("node-id")
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url(), Some(self.operator_token()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Resident memory of the agent process (not of its broker child), KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid().unwrap())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits for the process to exit by itself, returning its exit status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same agent again (same data dir and ports).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Waits until the API answers and, for an orchestrator, the node `count` are alive.
    pub async fn wait_ready(&self, alive_nodes: usize) {
        let client = self.client();
        wait_until_async("the cluster is up", Duration::from_secs(90), || async {
            let nodes = client.get("/api/v1/nodes").await.ok()?;
            let alive = nodes
                .as_array()?
                .iter()
                .filter(|n| n["alive"] == json!(true))
                .count();
            (alive >= alive_nodes).then_some(())
        })
        .await;
    }
}

/// Kills every process whose environment says it is a RabbitMQ with its files under `dir`
/// (a broker left booting by an agent that was killed, where `rabbitmqctl stop` cannot reach).
fn kill_brokers_under(dir: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let needle = format!("RABBITMQ_MNESIA_BASE={}", dir.display());
    for p in procs.flatten() {
        // epmd inherits the environment of the broker that happened to start it, but every
        // Erlang node on the machine registers with it: killing it made a broker that was
        // booting for another test at that moment exit
        let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        if comm.trim() == "epmd" {
            continue;
        }
        let Ok(env) = std::fs::read(p.path().join("environ")) else {
            continue;
        };
        let ours = env
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(needle.as_bytes()));
        if ours {
            let _ = Command::new("kill")
                .args(["-9", &p.file_name().to_string_lossy()])
                .status();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        // the job containers it left (a killed agent does not remove them)
        // (and its app containers)
        if let Ok(id) = std::fs::read_to_string(self.data_dir().join("node-id")) {
            for key in ["kraken.node", "kraken.app-node"] {
                let label = format!("label={key}={}", id.trim());
                if let Ok(out) = Command::new("docker")
                    .args([
                        "ps",
                        "-a",
                        "--filter",
                        &label,
                        "--format",
                        "{{.ID}} {{.Image}}",
                    ])
                    .output()
                {
                    for line in String::from_utf8_lossy(&out.stdout).lines() {
                        let mut parts = line.split_whitespace();
                        let (Some(c), image) = (parts.next(), parts.next()) else {
                            continue;
                        };
                        let _ = Command::new("docker")
                            .args(["rm", "-f", c])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                        // an app's image goes with it (a job image is shared: it stays)
                        if let (Some(image), "kraken.app-node") = (image, key) {
                            let _ = Command::new("docker")
                                .args(["rmi", "-f", image])
                                .stdout(Stdio::null())
                                .stderr(Stdio::null())
                                .status();
                        }
                    }
                }
            }
        }
        if self.amqp_port != 0 {
            // a broker orphaned by a kill -9 of its agent
            let node = format!("kraken-{}@localhost", self.amqp_port);
            let mut cmd = match &self.netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "rabbitmqctl"]);
                    c
                }
                None => Command::new("rabbitmqctl"),
            };
            let _ = cmd
                .args(["-n", &node, "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        kill_brokers_under(&self.data_dir().join("rabbitmq"));
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, tail(&self.log(), 80));
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Polls `f` until it returns Some, panicking with `what` after `within`.
pub fn wait_until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub async fn wait_until_async<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Enqueues a job through the GraphQL mutation, returning its id.
pub async fn enqueue(client: &Client, kind: &str, spec: Value, extra: &str) -> String {
    let q = format!(
        "mutation($kind: String!, $spec: JSON) {{ enqueueJob(kind: $kind, spec: $spec{extra}) {{ id state }} }}"
    );
    let data = client
        .graphql(&q, json!({ "kind": kind, "spec": spec }))
        .await
        .unwrap_or_else(|e| panic!("enqueue {kind}: {e}"));
    assert_eq!(data["enqueueJob"]["state"], "QUEUED");
    data["enqueueJob"]["id"].as_str().unwrap().to_owned()
}

/// The ids of the jobs a GraphQL mutation answered with in `field`.
pub fn job_ids(data: &Value, field: &str) -> Vec<String> {
    data[field]
        .as_array()
        .unwrap_or_else(|| panic!("no list `{field}` in {data}"))
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until exactly one of `agents` leads a cluster, and returns its index.
pub fn wait_for_leader(agents: &[Agent]) -> usize {
    wait_until(
        "one agent founded the cluster",
        Duration::from_secs(30),
        || {
            let leading: Vec<usize> = (0..agents.len()).filter(|&i| agents[i].leads()).collect();
            (leading.len() == 1).then(|| leading[0])
        },
    )
}

/// The one agent among `alive` whose Raft leads with a majority, once every one of them
/// that knows a leader names it; waits up to `within`.
pub async fn wait_for_raft_leader(agents: &[Agent], alive: &[usize], within: Duration) -> usize {
    wait_until_async("the live agents agree on one leader", within, || async {
        let mut leading = Vec::new();
        let mut named = std::collections::BTreeSet::new();
        for &i in alive {
            let view = Client::new(&agents[i].url(), None)
                .get("/api/v1/leader")
                .await
                .ok()?;
            if view["leading"] == json!(true) {
                leading.push(i);
            }
            // a plain worker (no voter, no learner) knows no leader
            if let Some(leader) = view["leader"].as_str() {
                named.insert(leader.to_owned());
            }
        }
        if leading.len() != 1 || named.len() != 1 || !named.contains(&agents[leading[0]].node_id())
        {
            return None;
        }
        // and it has taken over: its API serves the operator
        let token = std::fs::read_to_string(agents[leading[0]].data_dir().join("operator-token"));
        Client::new(
            &agents[leading[0]].url(),
            Some(token.ok()?.trim().to_owned()),
        )
        .get("/api/v1/nodes")
        .await
        .ok()?;
        Some(leading[0])
    })
    .await
}

/// Waits until the cluster `client` talks to counts every node of `ids` alive.
pub async fn wait_alive(client: &Client, ids: &[&str], what: &str, within: Duration) {
    wait_until_async(what, within, || async {
        let nodes = client.get("/api/v1/nodes").await.ok()?;
        let nodes = nodes.as_array()?;
        ids.iter()
            .all(|id| {
                nodes
                    .iter()
                    .any(|n| n["id"] == json!(id) && n["alive"] == json!(true))
            })
            .then_some(())
    })
    .await
}

/// Waits until `leader` counts `n` voters.
pub async fn wait_for_voters(leader: &Agent, n: usize) {
    let client = Client::new(&leader.url(), None);
    wait_until_async(&format!("{n} voters"), Duration::from_secs(60), || async {
        let view = client.get("/api/v1/leader").await.ok()?;
        (view["voters"].as_array()?.len() == n).then_some(())
    })
    .await;
}

/// Seconds since the epoch of a log line's leading timestamp (`2026-11-24T18:21:52.417664Z`).
pub fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    // days from the civil date (Howard Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

/// Seconds since the epoch, now.
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// When `agent` first logged a line containing `what` at or after `since` (epoch seconds).
pub fn logged_at(agent: &Agent, what: &str, since: f64) -> Option<f64> {
    agent
        .log()
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(log_time)
        .find(|t| *t >= since)
}

/// A job through GraphQL.
pub async fn job(client: &Client, id: &str) -> Value {
    let q = "query($id: ID!) { job(id: $id) { id kind state attempt node error result exitCode log { text stream } attempts { number node outcome } } }";
    client.graphql(q, json!({ "id": id })).await.unwrap()["job"].clone()
}

/// Waits until every job in `ids` is in a final state, returning them.
pub async fn wait_final(client: &Client, ids: &[String], within: Duration) -> Vec<Value> {
    wait_until_async("every job has finished", within, || async {
        let mut out = Vec::new();
        for id in ids {
            let j = job(client, id).await;
            if !matches!(
                j["state"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "CANCELLED")
            ) {
                return None;
            }
            out.push(j);
        }
        Some(out)
    })
    .await
}

/// Subscribes over the GraphQL websocket (`graphql-transport-ws`) and collects the `field`
/// of each event until `done` says so; `ready` fires once the subscription is registered.
pub async fn collect_events(
    url: String,
    token: String,
    query: &'static str,
    field: &'static str,
    ready: tokio::sync::oneshot::Sender<()>,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket connects");
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap()),
        Some("graphql-transport-ws")
    );
    let init =
        json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {token}")}});
    ws.send(Message::Text(init.to_string())).await.unwrap();
    let ack = ws.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("connection_ack"), "{ack:?}");
    let sub = json!({"id": "1", "type": "subscribe", "payload": {"query": query}});
    ws.send(Message::Text(sub.to_string())).await.unwrap();
    // the server registers the subscription on receipt; give it a moment before jobs start
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = ready.send(());
    let mut events = Vec::new();
    while let Some(Ok(msg)) = ws.next().await {
        let Ok(text) = msg.to_text() else { continue };
        let v: Value = serde_json::from_str(text).unwrap_or_default();
        if v["type"] == "next" {
            events.push(v["payload"]["data"][field].clone());
            if done(&events) {
                break;
            }
        }
    }
    events
}
