//! For the NetKAN pipeline's tests and benchmark: reading a bare metadata repository, and
//! GitHub webhook deliveries in GitHub's shapes, signed as GitHub signs them.

use super::apps::GitServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `git --git-dir <bare> args…`, its output.
pub fn bare_git(bare: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The subjects of the commits on `main`, newest first.
pub fn subjects(bare: &Path) -> Vec<String> {
    bare_git(bare, &["log", "--format=%s", "main"])
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Posts a GitHub webhook delivery signed with `secret` (or unsigned).
pub async fn deliver(url: &str, event: &str, body: &Value, secret: Option<&str>) -> (u16, Value) {
    let body = body.to_string();
    let mut req = reqwest::Client::new()
        .post(url)
        .header("X-GitHub-Event", event)
        .header("Content-Type", "application/json")
        .body(body.clone());
    if let Some(secret) = secret {
        req = req.header(
            "X-Hub-Signature-256",
            kraken::netkan::webhook::sign(secret, body.as_bytes()),
        );
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A GitHub `push` of one commit to `branch` of `repo` that modified `modified`.
pub fn push_payload(branch: &str, repo: &str, modified: &[&str]) -> Value {
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0".repeat(40),
        "after": "1".repeat(40),
        "repository": {"full_name": repo, "name": "NetKAN", "default_branch": "main"},
        "pusher": {"name": "someone"},
        "commits": [{"id": "1".repeat(40), "message": "Update", "added": [], "removed": [],
                     "modified": modified}],
    })
}

/// Delivers a signed push to the metadata repository `test/CKAN-meta` that added `added` to
/// `{orchestrator}/gh/mirror`; the mirror job it queued.
pub async fn mirror_push(orchestrator: &str, added: &[&str], secret: &str) -> String {
    let mut push = push_payload("main", "test/CKAN-meta", &[]);
    push["commits"][0]["added"] = json!(added);
    let url = format!("{orchestrator}/gh/mirror");
    let (code, body) = deliver(&url, "push", &push, Some(secret)).await;
    assert_eq!(code, 202, "{body}");
    body["jobs"][0].as_str().unwrap().to_owned()
}

/// Publishes `mods` (identifier, `.netkan` text) as the NetKAN repository
/// (`NetKAN/<id>.netkan`) and an empty metadata repository: their clone URLs, and the
/// metadata repository's bare path.
pub fn publish_repositories(
    git: &GitServer,
    mods: impl IntoIterator<Item = (String, String)>,
) -> (String, String, PathBuf) {
    let files: Vec<(String, String)> = mods
        .into_iter()
        .map(|(id, text)| (format!("NetKAN/{id}.netkan"), text))
        .collect();
    let list: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    let netkan_url = git.publish("NetKAN", &list);
    let meta_url = git.publish("CKAN-meta", &[("README.md", "CKAN metadata\n".into())]);
    (netkan_url, meta_url, git.bare("CKAN-meta"))
}
