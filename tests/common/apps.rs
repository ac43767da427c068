//! For the deployment and NetKAN tests and benchmarks: a `git daemon` serving bare
//! repositories (pushes allowed), the
//! fixture apps under `tests/fixtures/apps`, and the GraphQL calls on deployments.

use super::{free_port, wait_until, wait_until_async};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `git daemon` on loopback serving the bare repositories under its root.
pub struct GitServer {
    child: Child,
    pub port: u16,
    root: PathBuf,
    address: String,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Kraken tests",
            "-c",
            "user.email=tests@kraken.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl GitServer {
    pub fn start(root: &Path) -> GitServer {
        Self::start_at(root, "127.0.0.1")
    }

    /// Listening at `address` (a test LAN's bridge, say).
    pub fn start_at(root: &Path, address: &str) -> GitServer {
        let root = root.join("git");
        std::fs::create_dir_all(&root).unwrap();
        let port = free_port(false);
        // runs before each connection is served: a `before-<service>` script the test left
        // runs once, with the repository's path
        let hook = root.join("access-hook");
        std::fs::write(
            &hook,
            "#!/bin/sh\nunset GIT_DIR\nnext=\"$(dirname \"$0\")/before-$1\"\n\
             if [ -x \"$next\" ]; then mv \"$next\" \"$next.ran\"; \"$next.ran\" \"$2\" >/dev/null 2>&1; fi\n\
             exit 0\n",
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                // the NetKAN indexer pushes to its metadata repository
                "--enable=receive-pack",
                &format!("--access-hook={}", hook.display()),
                &format!("--listen={address}"),
                &format!("--port={port}"),
                &format!("--base-path={}", root.display()),
                &root.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        wait_until("git daemon listens", Duration::from_secs(10), || {
            std::net::TcpStream::connect((address, port)).ok()
        });
        GitServer {
            child,
            port,
            root,
            address: address.to_owned(),
        }
    }

    /// The bare repository `name` on disk.
    pub fn bare(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.git"))
    }

    /// Someone else pushes to `name`'s `main` just before the next push reaches the server
    /// (the pusher then finds its push refused as not a fast-forward).
    pub fn push_first_next_time(&self, name: &str) {
        let bare = self.bare(name);
        let script = format!(
            "#!/bin/sh\nset -e\ntmp=$(mktemp -d)\ngit clone -q {bare} \"$tmp\"\ncd \"$tmp\"\n\
             echo 'pushed by someone else' > SOMEONE_ELSE.md\ngit add SOMEONE_ELSE.md\n\
             git -c user.name=Someone -c user.email=someone@kraken.invalid commit -q -m 'Someone else pushed first'\n\
             git push -q origin HEAD:main\nrm -rf \"$tmp\"\n",
            bare = bare.display()
        );
        let path = self.root.join("before-receive-pack");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }

    /// Publishes `files` (path, content) as the `main` branch of repository `name`; returns
    /// its clone URL. Publishing again adds a commit.
    pub fn publish(&self, name: &str, files: &[(&str, String)]) -> String {
        let work = self.root.join(format!("{name}.work"));
        let bare = self.root.join(format!("{name}.git"));
        if !bare.exists() {
            std::fs::create_dir_all(&work).unwrap();
            git(&work, &["init", "-q", "-b", "main"]);
            git(
                &self.root,
                &["init", "-q", "--bare", "-b", "main", &format!("{name}.git")],
            );
        }
        for (path, content) in files {
            let file = work.join(path);
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).unwrap();
            }
            std::fs::write(file, content).unwrap();
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "publish"]);
        git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
        format!("git://{}:{}/{name}.git", self.address, self.port)
    }
}

/// The files of a fixture app, with its manifest's port replaced.
pub fn fixture(name: &str, port: u16) -> Vec<(&'static str, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/apps")
        .join(name);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let file: &'static str = entry.file_name().to_string_lossy().into_owned().leak();
        let mut text = std::fs::read_to_string(entry.path()).unwrap();
        if file == "kraken.toml" {
            text = text
                .lines()
                .map(|l| {
                    if l.starts_with("port = ") {
                        format!("port = {port}")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        files.push((file, text));
    }
    files
}

pub const FIELDS: &str = "id status reason node app port url commit generation";

pub async fn create(client: &kraken::client::Client, git_url: &str, extra: &str) -> Value {
    let q = format!(
        "mutation($url: String!) {{ createDeployment(gitUrl: $url{extra}) {{ {FIELDS} }} }}"
    );
    let data = client
        .graphql(&q, json!({ "url": git_url }))
        .await
        .unwrap_or_else(|e| panic!("createDeployment {git_url}: {e}"));
    let d = data["createDeployment"].clone();
    assert_eq!(d["status"], "REQUESTED", "a new deployment is stored first");
    d
}

pub async fn deployment(client: &kraken::client::Client, id: &str) -> Value {
    let q = format!("query($id: ID!) {{ deployment(id: $id) {{ {FIELDS} }} }}");
    client.graphql(&q, json!({ "id": id })).await.unwrap()["deployment"].clone()
}

/// Waits until a deployment is in one of `states`, returning it.
pub async fn wait_status(
    client: &kraken::client::Client,
    id: &str,
    states: &[&str],
    within: Duration,
) -> Value {
    let what = format!("deployment {id} is one of {states:?}");
    wait_until_async(&what, within, || async {
        let d = deployment(client, id).await;
        states
            .contains(&d["status"].as_str().unwrap_or(""))
            .then_some(d)
    })
    .await
}

pub async fn fetch(url: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?;
    client.get(url).send().await.ok()?.text().await.ok()
}

pub fn containers_of(id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=kraken.deployment={id}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Builds image `tag`: `debian:bookworm-slim` with `labels` (another image id than the base,
/// on which dockerd has cached nothing).
pub fn labelled_base_image(tag: &str, labels: &[(&str, String)]) {
    use std::io::Write;
    let mut cmd = Command::new("docker");
    cmd.args(["build", "-q", "-t", tag]);
    for (k, v) in labels {
        cmd.arg("--label").arg(format!("{k}={v}"));
    }
    let mut build = cmd
        .arg("-")
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("docker runs");
    build
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM debian:bookworm-slim\n")
        .unwrap();
    assert!(build.wait().unwrap().success(), "docker built {tag}");
}
