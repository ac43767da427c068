//! The orchestrator's own `rabbitmq-server`, run as a supervised child process with its own
//! node name, ports and directories under the data dir.
//!
//! Users, the vhost and permissions come from a definitions file that RabbitMQ loads at boot
//! and that [`RabbitServer::set_users`] re-imports when a node joins, so the default `guest`
//! user never exists and a fresh broker needs no `rabbitmqctl` round trips to start.

use super::BrokerError;
use base64::Engine;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How long a change of users waits for a booting broker.
const BOOT_WAIT: Duration = Duration::from_secs(60);

/// The administrator user the orchestrator itself connects as.
pub const ADMIN_USER: &str = "kraken-admin";

/// One broker user: a node, or the administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUser {
    pub name: String,
    pub password: String,
    pub admin: bool,
}

/// How to run the broker.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub node_name: String,
    pub amqp_port: u16,
    pub dist_port: u16,
    pub dir: PathBuf,
    pub vhost: String,
    pub server_bin: String,
    pub ctl_bin: String,
}

/// The supervised broker.
pub struct RabbitServer {
    spec: ServerSpec,
    users: tokio::sync::Mutex<Vec<BrokerUser>>,
    /// Whether the AMQP port answers (what `supervise` last saw).
    up: tokio::sync::watch::Sender<bool>,
}

impl BrokerUser {
    /// A cluster's users: the administrator (the orchestrator) and one per node id, with
    /// passwords derived from the cluster's join token.
    pub fn for_cluster(join_token: &str, nodes: impl IntoIterator<Item = String>) -> Vec<Self> {
        let mut users = vec![BrokerUser {
            name: ADMIN_USER.into(),
            password: crate::identity::broker_password(join_token, ADMIN_USER),
            admin: true,
        }];
        users.extend(nodes.into_iter().map(|id| BrokerUser {
            password: crate::identity::broker_password(join_token, &id),
            name: id,
            admin: false,
        }));
        users
    }
}

impl RabbitServer {
    pub fn new(spec: ServerSpec, users: Vec<BrokerUser>) -> Result<Self, BrokerError> {
        let server = Self {
            spec,
            users: tokio::sync::Mutex::new(users),
            up: tokio::sync::watch::channel(false).0,
        };
        server.prepare_dirs()?;
        Ok(server)
    }

    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    fn file(&self, name: &str) -> PathBuf {
        self.spec.dir.join(name)
    }

    fn prepare_dirs(&self) -> Result<(), BrokerError> {
        let io =
            |e: std::io::Error| BrokerError::Server(format!("{}: {e}", self.spec.dir.display()));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(self.spec.dir.join(sub)).map_err(io)?;
        }
        let conf = format!(
            "load_definitions = {defs}\nloopback_users = none\nlog.console = false\nlog.file.level = warning\n",
            defs = self.file("definitions.json").display()
        );
        std::fs::write(self.file("rabbitmq.conf"), conf).map_err(io)?;
        std::fs::write(self.file("enabled_plugins"), "[].\n").map_err(io)?;
        Ok(())
    }

    /// Writes the definitions file for `users` (readable only by the broker).
    fn write_definitions(&self, users: &[BrokerUser]) -> Result<PathBuf, BrokerError> {
        let vhost = &self.spec.vhost;
        let defs = json!({
            "vhosts": [{ "name": vhost }],
            "users": users.iter().map(|u| json!({
                "name": u.name,
                "password_hash": password_hash(&u.password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": if u.admin { vec!["administrator"] } else { vec![] },
            })).collect::<Vec<_>>(),
            "permissions": users.iter().map(|u| if u.admin {
                json!({"user": u.name, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"})
            } else {
                json!({
                    "user": u.name, "vhost": vhost, "configure": "^$",
                    "write": format!("^{}$", regex_escape(super::UP_EXCHANGE)),
                    "read": format!("^{}$", regex_escape(&super::work_queue(&u.name))),
                })
            }).collect::<Vec<_>>(),
        });
        let path = self.file("definitions.json");
        crate::identity::write_secret(&path, &defs.to_string())
            .map_err(|e| BrokerError::Server(e.to_string()))?;
        hand_to_broker_user(&self.spec.dir);
        Ok(path)
    }

    /// Sets the broker's users (adding a joined node, say) and applies them to the running
    /// broker.
    pub async fn set_users(&self, users: Vec<BrokerUser>) -> Result<(), BrokerError> {
        let mut current = self.users.lock().await;
        if *current == users {
            return Ok(());
        }
        let path = self.write_definitions(&users)?;
        *current = users;
        // a broker still booting loads the file itself, but may have read it already: the
        // import waits until it answers
        let mut up = self.up.subscribe();
        tokio::time::timeout(BOOT_WAIT, up.wait_for(|up| *up))
            .await
            .map_err(|_| {
                BrokerError::Server(format!(
                    "the broker is not up after {} s; see {}",
                    BOOT_WAIT.as_secs(),
                    self.spec.dir.join("log").display()
                ))
            })?
            .map_err(|_| BrokerError::Server("the broker is stopping".into()))?;
        self.ctl(&["import_definitions", &path.to_string_lossy()])
            .await
            .map(|_| ())
    }

    /// Tells `ready` and this server's own waiters whether the AMQP port answers.
    fn announce(&self, ready: &tokio::sync::watch::Sender<bool>, open: bool) {
        self.up.send_replace(open);
        let _ = ready.send(open);
    }

    async fn ctl(&self, args: &[&str]) -> Result<String, BrokerError> {
        let out = Command::new(&self.spec.ctl_bin)
            .arg("-n")
            .arg(&self.spec.node_name)
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| BrokerError::Server(format!("cannot run {}: {e}", self.spec.ctl_bin)))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(BrokerError::Server(format!(
                "{} {}: {}",
                self.spec.ctl_bin,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    async fn amqp_port_open(&self) -> bool {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.spec.amqp_port));
        matches!(
            tokio::time::timeout(
                Duration::from_millis(300),
                tokio::net::TcpStream::connect(addr)
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// Runs the broker until `shutdown`: starts it (or adopts an instance of ours left running
    /// by a previous agent process), restarts it with backoff when it dies, and stops it
    /// gracefully at the end. `ready` is set whenever the AMQP port answers.
    pub async fn supervise(
        &self,
        shutdown: CancellationToken,
        ready: tokio::sync::watch::Sender<bool>,
    ) {
        let mut backoff = Duration::from_millis(500);
        while !shutdown.is_cancelled() {
            if self.amqp_port_open().await {
                tracing::info!(port = self.spec.amqp_port, "adopting the running broker");
                self.announce(&ready, true);
                self.watch_port(&shutdown).await;
                self.announce(&ready, false);
                continue;
            }
            let users = self.users.lock().await.clone();
            if let Err(error) = self.write_definitions(&users) {
                tracing::error!(%error, "cannot write broker definitions");
            }
            tracing::info!(node = %self.spec.node_name, port = self.spec.amqp_port, "starting rabbitmq-server");
            let mut child = match self.spawn() {
                Ok(child) => child,
                Err(error) => {
                    tracing::error!(%error, "cannot start rabbitmq-server");
                    if sleep_or_cancel(&shutdown, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            let started = std::time::Instant::now();
            loop {
                tokio::select! {
                    status = child.wait() => {
                        self.announce(&ready, false);
                        tracing::warn!(?status, log = %self.spec.dir.join("log").display(), "rabbitmq-server exited; restarting");
                        break;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        let open = self.amqp_port_open().await;
                        if open != *ready.borrow() {
                            if open { tracing::info!(port = self.spec.amqp_port, elapsed_ms = started.elapsed().as_millis() as u64, "broker ready"); }
                            self.announce(&ready, open);
                        }
                        if open { backoff = Duration::from_millis(500); }
                    }
                    _ = shutdown.cancelled() => {
                        self.announce(&ready, false);
                        self.stop(&mut child).await;
                        return;
                    }
                }
            }
            if sleep_or_cancel(&shutdown, backoff).await {
                break;
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        // an adopted broker is stopped too: it is ours
        if self.amqp_port_open().await {
            let _ = self.ctl(&["stop"]).await;
        }
    }

    async fn watch_port(&self, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if !self.amqp_port_open().await {
                        tracing::warn!("adopted broker is gone");
                        return;
                    }
                }
            }
        }
    }

    fn spawn(&self) -> Result<tokio::process::Child, BrokerError> {
        let d = &self.spec.dir;
        let log = std::fs::File::create(d.join("log/console.log"))
            .map_err(|e| BrokerError::Server(e.to_string()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| BrokerError::Server(e.to_string()))?;
        Command::new(&self.spec.server_bin)
            .env("RABBITMQ_NODENAME", &self.spec.node_name)
            .env("RABBITMQ_NODE_PORT", self.spec.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.spec.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("rabbitmq.pid"))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            // its own process group: the Erlang VM runs under a wrapper (and `su`), and a
            // stop that has to kill must reach the VM too
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BrokerError::Server(format!("cannot run {}: {e}", self.spec.server_bin)))
    }

    async fn stop(&self, child: &mut tokio::process::Child) {
        tracing::info!("stopping rabbitmq-server");
        let graceful = tokio::time::timeout(Duration::from_secs(20), self.ctl(&["stop"])).await;
        if !matches!(graceful, Ok(Ok(_))) {
            tracing::warn!("graceful broker stop failed; killing it");
            if let Some(pid) = child.id() {
                // the whole group: the wrapper, `su` and the Erlang VM under them
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status()
                    .await;
            }
            let _ = child.kill().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
}

/// Sleeps, returning true when cancelled first.
async fn sleep_or_cancel(token: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = token.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ sha256(salt ‖ password)).
fn password_hash(password: &str) -> String {
    let mut salt = [0u8; 4];
    rand::rng().fill_bytes(&mut salt);
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut bytes = salt.to_vec();
    bytes.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = ".^$*+?()[]{}|\\".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// When we run as root, Debian's `rabbitmq-server` drops to the `rabbitmq` user: hand it the
/// broker's directory and let it traverse the data dir above.
fn hand_to_broker_user(dir: &Path) {
    if !is_root() {
        return;
    }
    let Some((uid, gid)) = user_ids("rabbitmq") else {
        return;
    };
    // the broker user must traverse (not list) every directory above its own
    for ancestor in dir.ancestors().skip(1) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(ancestor) {
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                let _ = std::fs::set_permissions(
                    ancestor,
                    std::fs::Permissions::from_mode(mode | 0o001),
                );
            }
        }
    }
    chown_tree(dir, uid, gid);
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    if let Err(error) = std::os::unix::fs::chown(path, Some(uid), Some(gid)) {
        tracing::warn!(%error, path = %path.display(), "chown for the broker failed");
    }
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => chown_tree(&entry.path(), uid, gid),
                Ok(_) => {
                    let _ = std::os::unix::fs::chown(entry.path(), Some(uid), Some(gid));
                }
                Err(_) => {}
            }
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_is_salted_sha256() {
        let h = password_hash("secret");
        let bytes = base64::engine::general_purpose::STANDARD.decode(h).unwrap();
        assert_eq!(bytes.len(), 36);
        let mut d = Sha256::new();
        d.update(&bytes[..4]);
        d.update(b"secret");
        assert_eq!(&bytes[4..], d.finalize().as_slice());
    }

    #[test]
    fn regex_escape_escapes_dots() {
        assert_eq!(regex_escape("work.n1"), "work\\.n1");
    }
}
