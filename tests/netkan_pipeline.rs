//! The NetKAN pipeline on a real cluster: a NetKAN repository and a metadata repository
//! behind `git daemon`, the scheduler (held back by a low GitHub rate limit, then running),
//! inflate jobs on two workers, the indexer's commits and its pull request for a staged mod,
//! the mirror of the redistributable new versions to an archive, the status page, signed
//! GitHub webhooks, and a webhook that overtakes a full scheduled batch.

mod common;
mod upstream;

use common::apps::GitServer;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use upstream::{docker_bridge_ip, Answer, Upstream};

const SECRET: &str = "hook-secret";
const PIPELINE: &str = "{ netkanPipeline { inflateQueuedMods indexQueue rounds roundsSkipped inflated indexed pullRequests } }";

/// `git --git-dir <bare> args…`, its output.
fn bare_git(bare: &Path, args: &[&str]) -> Option<String> {
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

fn subjects(bare: &Path) -> Vec<String> {
    bare_git(bare, &["log", "--format=%s", "main"])
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Posts a GitHub webhook delivery signed with `secret` (or unsigned).
async fn deliver(url: &str, event: &str, body: &Value, secret: Option<&str>) -> (u16, Value) {
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

fn push_payload(branch: &str, repo: &str, modified: &[&str]) -> Value {
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

async fn pipeline(client: &kraken::client::Client) -> Value {
    client.graphql(PIPELINE, json!({})).await.unwrap()["netkanPipeline"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netkan_repo_to_metadata_repo_with_webhooks_and_status() {
    if !real_parts_present() {
        return;
    }
    let up = Upstream::start_on(&docker_bridge_ip()).await;
    let root = tempfile::tempdir().unwrap();
    let git = GitServer::start(root.path());
    let bare_meta: PathBuf = root.path().join("git").join("CKAN-meta.git");

    // 27 mods, a staged one, one whose host is gone, a frozen one: 30 files
    let mut files: Vec<(String, String)> = Vec::new();
    let mut good = Vec::new();
    for n in 0..27 {
        let (id, mut text) = up.generated_mod(n);
        if n == 25 {
            text = text.replace("license: MIT", "license: restricted");
        }
        files.push((format!("NetKAN/{id}.netkan"), text));
        good.push(id);
    }
    // the archive takes each redistributable version's file
    let archived = |id: &str, n: usize, version: &str| {
        let zip = upstream::generated_zip(id, n);
        let sha1 = hex::encode(<sha1::Sha1 as sha1::Digest>::digest(&zip));
        format!("/ia/{id}-{version}/{}-{id}-{version}.zip", &sha1[..8])
    };
    for n in 0..27 {
        let path = archived(&format!("Gen{n}"), n, &format!("1.{n}"));
        up.route(&format!("PUT {path}"), Answer::json(&json!({})));
    }
    up.route(
        &format!("PUT {}", archived("Gen3", 3, "2.0")),
        Answer::json(&json!({})),
    );
    let (staged, text) = up.generated_mod(27);
    files.push((
        format!("NetKAN/{staged}.netkan"),
        format!(
            "{text}x_netkan_staging: true\nx_netkan_staging_reason: A new dependency to review\n"
        ),
    ));
    files.push((
        "NetKAN/Gone.netkan".into(),
        "identifier: Gone\n$kref: '#/ckan/github/gen/Gone'\nlicense: MIT\n".into(),
    ));
    let (cold, text) = up.generated_mod(28);
    files.push((format!("NetKAN/{cold}.netkan"), text));
    files.push((format!("NetKAN/{cold}.frozen"), String::new()));
    std::fs::create_dir_all(root.path().join("git/NetKAN.work/NetKAN")).unwrap();
    let list: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    let netkan_url = git.publish("NetKAN", &list);
    let meta_url = git.publish("CKAN-meta", &[("README.md", "CKAN metadata\n".into())]);

    // GitHub's API for the orchestrator: a low rate limit first, and pull requests
    let rate = |left: u64| {
        Answer::json(&json!({"resources": {"core": {"limit": 5000, "remaining": left}}}))
    };
    up.route("/gh-api/rate_limit", rate(10));
    up.route(
        "/gh-api/repos/test/CKAN-meta/pulls",
        Answer::json(&json!({"number": 1, "html_url": "https://github.com/test/CKAN-meta/pull/1"})),
    );
    let api = format!("{}/gh-api", up.base);
    let web = format!("{}/gh-web", up.base);
    let archive = format!("{}/ia", up.base);
    let orch = Agent::orchestrator(
        root.path(),
        0,
        &[
            ("KRAKEN_NETKAN_REPO_URL", &netkan_url),
            ("KRAKEN_NETKAN_META_URL", &meta_url),
            ("KRAKEN_NETKAN_META_GITHUB", "test/CKAN-meta"),
            ("KRAKEN_NETKAN_REPO_GITHUB", "test/NetKAN"),
            ("KRAKEN_NETKAN_WEBHOOK_SECRET", SECRET),
            ("KRAKEN_NETKAN_SCHEDULE_SECS", "3"),
            ("KRAKEN_NETKAN_INFLATE_BATCH", "8"),
            ("KRAKEN_GITHUB_API", &api),
            ("KRAKEN_GITHUB_TOKEN", "orch-token"),
            ("KRAKEN_ORCHESTRATOR_GRACE_MS", "3000"),
            // the workers are killed below: the orchestrator alone keeps the quorum
            ("KRAKEN_CLUSTER_VOTERS", "1"),
            ("KRAKEN_NETKAN_ARCHIVE_URL", &archive),
        ],
    );
    let upstream_env = [
        ("KRAKEN_GITHUB_API", api.as_str()),
        ("KRAKEN_GITHUB_WEB", web.as_str()),
        ("KRAKEN_CLUSTER_VOTERS", "1"),
        ("KRAKEN_NETKAN_ARCHIVE_URL", archive.as_str()),
        ("KRAKEN_NETKAN_ARCHIVE_ACCESS", "ia-access"),
        ("KRAKEN_NETKAN_ARCHIVE_SECRET", "ia-secret"),
    ];
    let mut w1 = Agent::worker(root.path(), "w1", &orch, 2, &upstream_env);
    let mut w2 = Agent::worker(root.path(), "w2", &orch, 1, &upstream_env);
    orch.wait_ready(2).await;
    let client = orch.client();

    // GitHub allows 10 more calls: rounds are skipped and nothing is queued
    wait_until_async("a round is skipped", Duration::from_secs(30), || async {
        (pipeline(&client).await["roundsSkipped"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    let jobs = client
        .graphql("{ jobs(kind: \"inflate\") { id } }", json!({}))
        .await
        .unwrap();
    assert_eq!(
        jobs["jobs"],
        json!([]),
        "no inflate while the rate limit is low"
    );
    assert!(
        orch.log().contains("scheduled round skipped"),
        "the log says why"
    );

    // then the rounds run: every mod but the frozen one is inflated, and indexed
    up.route("/gh-api/rate_limit", rate(5000));
    let expected: Vec<String> = good
        .iter()
        .enumerate()
        .map(|(n, id)| format!("NetKAN added mod - {id}-1.{n}"))
        .collect();
    wait_until(
        "every mod is committed to the metadata repository",
        Duration::from_secs(300),
        || {
            let s = subjects(&bare_meta);
            expected.iter().all(|e| s.contains(e)).then_some(())
        },
    );
    let s = subjects(&bare_meta);
    assert_eq!(
        s.iter().filter(|s| s.starts_with("NetKAN ")).count(),
        27,
        "one commit per mod, none twice though rounds repeat: {s:?}"
    );
    let ckan: Value = serde_json::from_str(
        &bare_git(&bare_meta, &["show", "main:Gen4/Gen4-1.4.ckan"]).expect("Gen4's .ckan"),
    )
    .unwrap();
    assert_eq!(ckan["identifier"], "Gen4");
    assert_eq!(ckan["version"], "1.4");
    assert!(
        bare_git(&bare_meta, &["show", &format!("main:{cold}")]).is_none(),
        "frozen: not inflated"
    );

    // the staged mod is a branch and a pull request, not on main
    let branch = format!("add/{staged}-1.27");
    wait_until(
        "the staged mod's branch is pushed",
        Duration::from_secs(60),
        || {
            bare_git(
                &bare_meta,
                &["rev-parse", "--verify", &format!("refs/heads/{branch}")],
            )
        },
    );
    assert!(bare_git(&bare_meta, &["show", &format!("main:{staged}")]).is_none());
    let pulls: Vec<Value> = wait_until("a pull request is opened", Duration::from_secs(30), || {
        let b = up.bodies.lock().unwrap().clone();
        let p: Vec<Value> = b
            .iter()
            .filter(|(hit, _)| hit == "POST /gh-api/repos/test/CKAN-meta/pulls")
            .map(|(_, body)| serde_json::from_slice(body).unwrap())
            .collect();
        (!p.is_empty()).then_some(p)
    });
    assert_eq!(pulls[0]["title"], format!("NetKAN inflated: {staged}"));
    assert_eq!(pulls[0]["head"], branch);
    assert_eq!(pulls[0]["base"], "main");
    assert_eq!(pulls[0]["body"], "A new dependency to review");
    assert!(up
        .auth
        .lock()
        .unwrap()
        .iter()
        .any(|(t, a)| t.ends_with("/pulls") && a == "Bearer orch-token"));

    // the new versions are mirrored, but not the one whose license forbids it
    let puts = |up: &Upstream| -> Vec<(String, Vec<u8>)> {
        let b = up.bodies.lock().unwrap().clone();
        b.into_iter()
            .filter(|(hit, _)| hit.starts_with("PUT /ia/"))
            .collect()
    };
    let expected_puts: Vec<String> = (0..27)
        .filter(|n| *n != 25)
        .map(|n| format!("PUT {}", archived(&format!("Gen{n}"), n, &format!("1.{n}"))))
        .collect();
    wait_until(
        "the new versions are in the archive",
        Duration::from_secs(120),
        || {
            let done = puts(&up);
            expected_puts
                .iter()
                .all(|e| done.iter().any(|(hit, _)| hit == e))
                .then_some(())
        },
    );
    let done = puts(&up);
    assert!(
        !done.iter().any(|(hit, _)| hit.contains("Gen25")),
        "restricted: not mirrored"
    );
    let (_, gen7) = done
        .iter()
        .find(|(hit, _)| hit.contains("/Gen7-1.7/"))
        .unwrap();
    assert_eq!(
        *gen7,
        upstream::generated_zip("Gen7", 7),
        "the verified download is what was uploaded"
    );
    assert!(up
        .auth
        .lock()
        .unwrap()
        .iter()
        .any(|(t, a)| t.starts_with("/ia/") && a == "LOW ia-access:ia-secret"));

    // a push to the metadata repository mirrors what it added; what is there is skipped
    let gen7_path = archived("Gen7", 7, "1.7");
    up.route(&format!("HEAD {gen7_path}"), Answer::json(&json!({})));
    let mut meta_push = push_payload("main", "test/CKAN-meta", &[]);
    meta_push["commits"][0]["added"] = json!(["Gen7/Gen7-1.7.ckan"]);
    let (code, body) = deliver(
        &format!("{}/gh/mirror", orch.url()),
        "push",
        &meta_push,
        Some(SECRET),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let mirror_job = body["jobs"][0].as_str().unwrap().to_owned();
    let j = wait_final(
        &client,
        std::slice::from_ref(&mirror_job),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(j[0]["state"], "SUCCEEDED", "{}", j[0]);
    assert_eq!(
        j[0]["result"]["skipped"][0]["reason"], "already in the archive",
        "{}",
        j[0]
    );

    // inflated on both workers
    let done = client
        .graphql(
            "{ jobs(kind: \"inflate\", status: SUCCEEDED, limit: 10000) { node } }",
            json!({}),
        )
        .await
        .unwrap();
    let nodes: std::collections::BTreeSet<String> = done["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["node"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(nodes.len(), 2, "both workers inflated: {nodes:?}");

    // the status page, in NetKAN's shape
    let status = client.get("/status/netkan.json").await.unwrap();
    let gen0 = &status["Gen0"];
    assert_eq!(gen0["success"], true, "{gen0}");
    assert!(gen0["last_indexed"].is_string(), "{gen0}");
    assert!(gen0["last_inflated"].is_string(), "{gen0}");
    assert!(gen0["last_checked"].is_string(), "{gen0}");
    assert_eq!(
        gen0["resources"]["repository"], "https://github.com/gen/Gen0",
        "{gen0}"
    );
    assert_eq!(status["Gone"]["success"], false);
    assert!(
        status["Gone"]["last_error"]
            .as_str()
            .unwrap()
            .contains("gen/Gone"),
        "{}",
        status["Gone"]
    );
    assert_eq!(status[cold.as_str()]["frozen"], true);
    let failing = client
        .graphql(
            "{ netkanStatus(filter: FAILING) { identifier lastError } }",
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        failing["netkanStatus"].as_array().unwrap().len(),
        1,
        "{failing}"
    );
    assert_eq!(failing["netkanStatus"][0]["identifier"], "Gone");
    let frozen = client
        .graphql("{ netkanStatus(filter: FROZEN) { identifier } }", json!({}))
        .await
        .unwrap();
    assert_eq!(frozen["netkanStatus"], json!([{"identifier": cold}]));
    let p = pipeline(&client).await;
    assert!(
        p["indexed"].as_u64() >= Some(27) && p["pullRequests"] == 1,
        "{p}"
    );
    let metrics = reqwest::get(format!("{}/metrics", orch.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("kraken_netkan_indexed_total"), "{metrics}");

    // webhooks that are unsigned, wrongly signed, for another repository or branch
    let hook = format!("{}/gh/inflate", orch.url());
    let gen3 = push_payload("main", "test/NetKAN", &["NetKAN/Gen3.netkan"]);
    let (code, body) = deliver(&hook, "push", &gen3, None).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("X-Hub-Signature-256"),
        "{body}"
    );
    let (code, body) = deliver(&hook, "push", &gen3, Some("not-the-secret")).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("does not match"),
        "{body}"
    );
    let (code, body) = deliver(
        &hook,
        "push",
        &push_payload("main", "evil/NetKAN", &["NetKAN/Gen3.netkan"]),
        Some(SECRET),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = deliver(
        &hook,
        "push",
        &push_payload("feature", "test/NetKAN", &["NetKAN/Gen3.netkan"]),
        Some(SECRET),
    )
    .await;
    assert_eq!(code, 204);
    let (code, body) = deliver(&hook, "push", &json!({"zen": 1}), Some(SECRET)).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("`ref` is missing"),
        "{body}"
    );
    let big = json!({"ref": "x".repeat(2 << 20)});
    let (code, _) = deliver(&hook, "push", &big, Some(SECRET)).await;
    assert_eq!(code, 413, "an oversized body is refused");
    let http = reqwest::Client::new();
    let post = |path: &str, body: &str, token: Option<&str>| {
        let mut req = http
            .post(format!("{}{path}", orch.url()))
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let op = orch.operator_token();
    let r = post("/inflate", r#"["Gen1"]"#, None).await.unwrap();
    assert_eq!(r.status(), 401, "/inflate needs the operator token");
    let r = post("/inflate", r#"["Gen1", "Nope"]"#, Some(&op))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Nope has no Nope.netkan"));
    let r = post(
        "/sd/inflate?secret=wrong",
        "mod_id=1&event_type=update",
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let sd = format!("/sd/inflate?secret={SECRET}");
    let r = post(&sd, "mod_id=999&event_type=update", None)
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("No such module"));
    let r = post(&sd, "event_type=update", None).await.unwrap();
    assert_eq!(r.status(), 400);

    // SpaceDock's "add to CKAN": a generated netkan on a branch, and a pull request
    up.route(
        "/gh-api/repos/test/NetKAN/pulls",
        Answer::json(&json!({"number": 2})),
    );
    let add = format!("/sd/add?secret={SECRET}");
    let form = "name=Better+Parts&id=4242&license=MIT&username=ann&short_description=Parts%2C+better&mod_url=https%3A%2F%2Fspacedock.info%2Fmod%2F4242";
    let r = post(&add, form, None).await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let bare_netkan = root.path().join("git").join("NetKAN.git");
    let added = bare_git(
        &bare_netkan,
        &["show", "add/BetterParts:NetKAN/BetterParts.netkan"],
    )
    .expect("the netkan is on branch add/BetterParts");
    assert!(
        kraken::netkan::webhook::krefs_spacedock(&added, 4242),
        "{added}"
    );
    assert!(bare_git(&bare_netkan, &["show", "main:NetKAN/BetterParts.netkan"]).is_none());
    let pr: Value = up
        .bodies
        .lock()
        .unwrap()
        .iter()
        .find(|(hit, _)| hit == "POST /gh-api/repos/test/NetKAN/pulls")
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .expect("a pull request to the NetKAN repository");
    assert_eq!(pr["title"], "Add Better Parts from SpaceDock");
    assert_eq!(pr["head"], "add/BetterParts");
    assert!(
        pr["body"]
            .as_str()
            .unwrap()
            .contains("ann added **Better Parts**"),
        "{pr}"
    );
    let r = post(&add, "name=Gen1&id=1&license=MIT", None)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("already"));
    let (code, _) = deliver(
        &hook,
        "ping",
        &json!({"zen": "Keep it logically awesome."}),
        Some(SECRET),
    )
    .await;
    assert_eq!(code, 200);

    // with both workers gone the next round waits in full; a webhook then overtakes it
    w1.kill9();
    w2.kill9();
    wait_until_async(
        "a full scheduled round waits",
        Duration::from_secs(60),
        || async {
            (pipeline(&client).await["inflateQueuedMods"].as_u64() >= Some(29)).then_some(())
        },
    )
    .await;
    up.route(
        "/gh-web/gen/Gen3/releases/download/2.0/Gen3.zip",
        Answer::bytes(
            "application/octet-stream",
            upstream::generated_zip("Gen3", 3),
        ),
    );
    let gen3_text = &files
        .iter()
        .find(|(p, _)| p == "NetKAN/Gen3.netkan")
        .unwrap()
        .1;
    git.publish(
        "NetKAN",
        &[(
            "NetKAN/Gen3.netkan",
            format!("{gen3_text}x_comment: moved to 2.0\n"),
        )],
    );
    up.route(
        "/gh-api/repos/gen/Gen3/releases",
        Answer::json(&json!([{"tag_name": "2.0", "author": {"login": "gen", "type": "User"},
            "published_at": "2025-06-01T00:00:00Z",
            "assets": [{"name": "Gen3.zip", "updated_at": "2025-06-01T00:00:00Z",
                "browser_download_url": "https://github.com/gen/Gen3/releases/download/2.0/Gen3.zip"}]}])),
    );
    let delivered = epoch_now() * 1000.0;
    let (code, body) = deliver(&hook, "push", &gen3, Some(SECRET)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["mods"], 1, "{body}");
    let hook_job = body["jobs"][0].as_str().unwrap().to_owned();
    let queued = client
        .graphql(
            "{ jobs(kind: \"inflate\", status: QUEUED, limit: 10000) { id priority spec } }",
            json!({}),
        )
        .await
        .unwrap();
    let holding_gen3: Vec<&Value> = queued["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| {
            j["spec"]["mods"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["identifier"] == "Gen3")
        })
        .collect();
    assert_eq!(holding_gen3.len(), 1, "Gen3 is queued once: {queued}");
    assert_eq!(holding_gen3[0]["id"], hook_job);
    assert_eq!(holding_gen3[0]["priority"], 100);
    // the same push again queues nothing new
    let (code, body) = deliver(&hook, "push", &gen3, Some(SECRET)).await;
    assert_eq!((code, body["mods"].as_u64()), (202, Some(0)), "{body}");

    // one worker with one slot comes back: the webhook's job runs first
    w2.restart();
    let first = wait_final(
        &client,
        std::slice::from_ref(&hook_job),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(first[0]["state"], "SUCCEEDED", "{}", first[0]);
    let all = client
        .graphql(
            "{ jobs(kind: \"inflate\", limit: 10000) { id priority startedAt } }",
            json!({}),
        )
        .await
        .unwrap();
    let hook_started = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == hook_job)
        .unwrap()["startedAt"]
        .as_f64()
        .unwrap();
    for j in all["jobs"].as_array().unwrap() {
        if let (true, Some(started)) = (j["priority"] == 0, j["startedAt"].as_f64()) {
            assert!(
                started < delivered || started >= hook_started,
                "a scheduled batch started after the webhook but before its job: {j}"
            );
        }
    }
    wait_until(
        "the webhook's version is committed",
        Duration::from_secs(60),
        || {
            subjects(&bare_meta)
                .contains(&"NetKAN added mod - Gen3-2.0".to_string())
                .then_some(())
        },
    );
    drop(orch);
    drop(w1);
}
