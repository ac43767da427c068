//! The NetKAN pipeline on a real cluster: a NetKAN repository (the corpus' mods and a few
//! generated ones) and a metadata repository behind `git daemon`, the scheduler (held back by a low GitHub rate limit, then running),
//! inflate jobs on two workers, the indexer's commits and its pull requests for staged mods,
//! the mirror of the redistributable new versions to an archive, the status page, signed
//! GitHub webhooks, and a webhook that overtakes a full scheduled batch.

mod common;
mod corpus;
mod upstream;

use common::apps::GitServer;
use common::netkan::*;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use upstream::{docker_bridge_ip, Answer, Upstream};

const SECRET: &str = "hook-secret";
const PIPELINE: &str = "{ netkanPipeline { inflateQueuedMods indexQueue rounds roundsSkipped inflated indexed pushesRefused pullRequests } }";

/// A `.ckan`'s version as its file name writes it.
fn version_of(ckan: &Value) -> String {
    ckan["version"].as_str().unwrap().replace(':', "-")
}

async fn pipeline(client: &kraken::client::Client) -> Value {
    client.graphql(PIPELINE, json!({})).await.unwrap()["netkanPipeline"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netkan_repo_to_metadata_repo_with_webhooks_and_status() {
    if !real_parts_present() {
        return;
    }
    let Some(corpus_dir) = corpus::corpus() else {
        return;
    };
    let up = Upstream::start_on(&docker_bridge_ip()).await;
    let root = tempfile::tempdir().unwrap();
    let git = GitServer::start(root.path());
    let bare_meta: PathBuf = git.bare("CKAN-meta");

    // the corpus' 25 mods (two of them staged), served as their hosts answered; four
    // generated ones (Gen2 under a restricted license), one whose host is gone, one frozen
    let mods = corpus::load_mods(&corpus_dir);
    let ups = corpus::corpus_upstreams(&up, &mods);
    let mut files: Vec<(String, String)> = Vec::new();
    for m in &mods {
        corpus::serve_mod(&up, &ups, m, &corpus_dir);
        files.push((format!("NetKAN/{}.netkan", m.id), m.netkan.clone()));
    }
    // WildBlueTools asks for review; ETT sorts below its previous version and gets a new
    // epoch, which is staged too
    let staged: Vec<&corpus::Mod> = mods.iter().filter(|m| m.staged()).collect();
    assert_eq!(staged.len(), 2, "the corpus' staged mods");
    let mut expected: Vec<String> = mods
        .iter()
        .filter(|m| !m.staged())
        .map(|m| format!("NetKAN added mod - {}-{}", m.id, version_of(&m.ckan)))
        .collect();
    for n in 0..4 {
        let (id, mut text) = up.generated_mod(n);
        if n == 2 {
            text = text.replace("license: MIT", "license: restricted");
        }
        files.push((format!("NetKAN/{id}.netkan"), text));
        expected.push(format!("NetKAN added mod - {id}-1.{n}"));
    }
    files.push((
        "NetKAN/Gone.netkan".into(),
        "identifier: Gone\n$kref: '#/ckan/github/gen/Gone'\nlicense: MIT\n".into(),
    ));
    let (cold, text) = up.generated_mod(4);
    files.push((format!("NetKAN/{cold}.netkan"), text));
    files.push((format!("NetKAN/{cold}.frozen"), String::new()));
    let not_frozen = files.iter().filter(|(p, _)| p.ends_with(".netkan")).count() - 1;
    // the archive takes every upload
    up.route("PUT /ia/*", Answer::json(&json!({})));
    let archived = |id: &str, n: usize, version: &str| {
        let zip = upstream::generated_zip(id, n);
        let sha1 = hex::encode(<sha1::Sha1 as sha1::Digest>::digest(&zip));
        format!("/ia/{id}-{version}/{}-{id}-{version}.zip", &sha1[..8])
    };
    let list: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    let netkan_url = git.publish("NetKAN", &list);
    // the metadata repository holds each corpus mod's version before this one, so the
    // out-of-order check sees what the official inflator saw
    let mut meta_files: Vec<(String, String)> =
        vec![("README.md".into(), "CKAN metadata\n".into())];
    for m in &mods {
        if let Some(before) = &m.highest {
            let ckan = json!({"spec_version": 1, "identifier": m.id, "version": before});
            let path = format!("{0}/{0}-{1}.ckan", m.id, before.replace(':', "-"));
            meta_files.push((path, format!("{ckan:#}\n")));
        }
    }
    let meta_list: Vec<(&str, String)> = meta_files
        .iter()
        .map(|(p, t)| (p.as_str(), t.clone()))
        .collect();
    let meta_url = git.publish("CKAN-meta", &meta_list);
    // the indexer's first push finds that someone pushed first
    git.push_first_next_time("CKAN-meta");

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
    let spacedock = format!("{}/sd", up.base);
    let rewrite: Vec<String> = ups.extra.iter().map(|(p, r)| format!("{p}={r}")).collect();
    let rewrite = rewrite.join(",");
    let upstream_env = [
        ("KRAKEN_GITHUB_API", api.as_str()),
        ("KRAKEN_GITHUB_WEB", web.as_str()),
        ("KRAKEN_SPACEDOCK_URL", spacedock.as_str()),
        ("KRAKEN_NETKAN_REWRITE", rewrite.as_str()),
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
    let deadline = std::time::Instant::now() + Duration::from_secs(200);
    loop {
        let s = subjects(&bare_meta);
        let missing: Vec<&String> = expected.iter().filter(|e| !s.contains(e)).collect();
        if missing.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "not committed within 200 s: {missing:?}\ncommitted: {s:?}\n{}",
                orch.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // the next round inflates them all again and indexes nothing new
    let inflatable = not_frozen as u64 - 1;
    wait_until_async(
        "a second round is indexed",
        Duration::from_secs(60),
        || async {
            let p = pipeline(&client).await;
            (p["inflated"].as_u64() >= Some(2 * inflatable) && p["indexQueue"] == 0).then_some(())
        },
    )
    .await;
    let s = subjects(&bare_meta);
    assert_eq!(
        s.iter().filter(|s| s.starts_with("NetKAN ")).count(),
        expected.len(),
        "one commit per mod, none twice though rounds repeat: {s:?}"
    );
    // the indexer redid its commits on top of the other push, and kept it
    assert!(s.contains(&"Someone else pushed first".to_owned()), "{s:?}");
    assert!(
        bare_git(&bare_meta, &["show", "main:SOMEONE_ELSE.md"]).is_some(),
        "the other push's file stays"
    );
    assert!(
        pipeline(&client).await["pushesRefused"].as_u64() >= Some(1),
        "the refused push is counted"
    );
    // Gen3's repository gets a new description: the same version, other bytes, a new commit
    let ups = up.upstreams(None, vec![]);
    up.route_url(
        &ups.reach("https://api.github.com/repos/gen/Gen3"),
        Answer::json(&json!({
            "name": "Gen3", "html_url": "https://github.com/gen/Gen3",
            "description": "Generated mod number 3, described anew", "has_issues": true,
            "license": {"spdx_id": "MIT"}, "owner": {"login": "gen", "type": "User"}})),
    );
    wait_until(
        "the changed .ckan is committed",
        Duration::from_secs(60),
        || {
            subjects(&bare_meta)
                .contains(&"NetKAN updated mod - Gen3-1.3".to_owned())
                .then_some(())
        },
    );
    let gen3: Value = serde_json::from_str(
        &bare_git(&bare_meta, &["show", "main:Gen3/Gen3-1.3.ckan"]).expect("Gen3's .ckan"),
    )
    .unwrap();
    assert_eq!(gen3["abstract"], "Generated mod number 3, described anew");
    let ckan: Value = serde_json::from_str(
        &bare_git(&bare_meta, &["show", "main:Gen0/Gen0-1.0.ckan"]).expect("Gen0's .ckan"),
    )
    .unwrap();
    assert_eq!(ckan["identifier"], "Gen0");
    assert_eq!(ckan["version"], "1.0");
    for m in mods.iter().filter(|m| !m.staged()) {
        let path = format!("main:{0}/{0}-{1}.ckan", m.id, version_of(&m.ckan));
        let text = bare_git(&bare_meta, &["show", &path]).expect("a corpus mod's .ckan");
        let got: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got["version"], m.ckan["version"], "{}", m.id);
        assert_eq!(got["license"], m.ckan["license"], "{}", m.id);
    }
    assert!(
        bare_git(&bare_meta, &["show", &format!("main:{cold}")]).is_none(),
        "frozen: not inflated"
    );

    // the staged mods are a branch and a pull request each, not on main
    for m in &staged {
        let branch = format!("add/{}-{}", m.id, version_of(&m.ckan));
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
        let path = format!("main:{0}/{0}-{1}.ckan", m.id, version_of(&m.ckan));
        assert!(bare_git(&bare_meta, &["show", &path]).is_none(), "{path}");
        assert!(
            bare_git(&bare_meta, &["show", &format!("{branch}:{}", &path[5..])]).is_some(),
            "{path} on {branch}"
        );
    }
    let pulls: Vec<Value> = wait_until(
        "the pull requests are opened",
        Duration::from_secs(30),
        || {
            let b = up.bodies.lock().unwrap().clone();
            let p: Vec<Value> = b
                .iter()
                .filter(|(hit, _)| hit == "POST /gh-api/repos/test/CKAN-meta/pulls")
                .map(|(_, body)| serde_json::from_slice(body).unwrap())
                .collect();
            (p.len() >= staged.len()).then_some(p)
        },
    );
    assert_eq!(
        pulls.len(),
        staged.len(),
        "one pull request each: {pulls:?}"
    );
    for m in &staged {
        let pull = pulls
            .iter()
            .find(|p| p["title"] == format!("NetKAN inflated: {}", m.id))
            .unwrap_or_else(|| panic!("a pull request for {}: {pulls:?}", m.id));
        assert_eq!(
            pull["head"],
            format!("add/{}-{}", m.id, version_of(&m.ckan))
        );
        assert_eq!(pull["base"], "main");
        let body = pull["body"].as_str().unwrap();
        match kraken::netkan::transform::parse(&m.netkan).unwrap()[0].get("x_netkan_staging_reason")
        {
            Some(reason) => assert_eq!(body, reason.as_str().unwrap()),
            None => assert!(
                body.contains("Auto-epoching out of order version"),
                "{}: {body}",
                m.id
            ),
        }
    }
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
    let mut expected_puts: Vec<String> = [0, 1, 3]
        .iter()
        .map(|&n| format!("PUT {}", archived(&format!("Gen{n}"), n, &format!("1.{n}"))))
        .collect();
    // and the corpus mods that may be copied (their zips, not GitHub source archives)
    for m in mods.iter().filter(|m| !m.staged()) {
        let ckan = m.ckan.as_object().unwrap();
        if kraken::netkan::ckan::redistributable(ckan)
            && m.ckan["download_content_type"] != "application/vnd.github+json"
        {
            let item: String = format!("{}-{}", m.id, version_of(&m.ckan))
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            expected_puts.push(format!("PUT /ia/{item}/"));
        }
    }
    assert!(expected_puts.len() > 10, "{expected_puts:?}");
    wait_until(
        "the new versions are in the archive",
        Duration::from_secs(120),
        || {
            let done = puts(&up);
            expected_puts
                .iter()
                .all(|e| done.iter().any(|(hit, _)| hit.starts_with(e.as_str())))
                .then_some(())
        },
    );
    let done = puts(&up);
    assert!(
        !done.iter().any(|(hit, _)| hit.contains("/Gen2-")),
        "restricted: not mirrored"
    );
    let (_, gen7) = done
        .iter()
        .find(|(hit, _)| hit.contains("/Gen1-1.1/"))
        .unwrap();
    assert_eq!(
        *gen7,
        upstream::generated_zip("Gen1", 1),
        "the verified download is what was uploaded"
    );
    assert!(up
        .auth
        .lock()
        .unwrap()
        .iter()
        .any(|(t, a)| t.starts_with("/ia/") && a == "LOW ia-access:ia-secret"));

    // a push to the metadata repository mirrors what it added; what is there is skipped
    let gen1_path = archived("Gen1", 1, "1.1");
    up.route(&format!("HEAD {gen1_path}"), Answer::json(&json!({})));
    let mirror_job = mirror_push(&orch.url(), &["Gen1/Gen1-1.1.ckan"], SECRET).await;
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
        p["indexed"].as_u64() >= Some(expected.len() as u64) && p["pullRequests"] == staged.len(),
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
            (pipeline(&client).await["inflateQueuedMods"].as_u64() >= Some(not_frozen as u64))
                .then_some(())
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

/// A hand-written `.ckan` pushed to the metadata repository.
fn handmade_ckan(id: &str, version: &str, sha1: &str, sha256: &str) -> String {
    let ckan = json!({
        "spec_version": 1, "identifier": id, "name": id, "abstract": "Made by hand",
        "author": "gen", "license": "MIT", "version": version,
        "download": format!("https://github.com/gen/{id}/releases/download/{version}/{id}.zip"),
        "download_hash": {"sha1": sha1, "sha256": sha256},
        "download_content_type": "application/zip",
    });
    format!("{ckan:#}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_reports_a_hash_mismatch_and_retries_an_upload_cut_off() {
    if !real_parts_present() {
        return;
    }
    let up = Upstream::start_on(&docker_bridge_ip()).await;
    let root = tempfile::tempdir().unwrap();
    let git = GitServer::start(root.path());
    // Gen5's .ckan says what its host serves; Gen6's hashes are not those of its download
    let (good, _) = up.generated_mod(5);
    let (bad, _) = up.generated_mod(6);
    let zip = upstream::generated_zip(&good, 5);
    let sha1 = hex::encode(<sha1::Sha1 as sha1::Digest>::digest(&zip));
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&zip));
    let good_path = format!("{good}/{good}-1.5.ckan");
    let bad_path = format!("{bad}/{bad}-1.6.ckan");
    let meta_url = git.publish(
        "CKAN-meta",
        &[
            (&good_path, handmade_ckan(&good, "1.5", &sha1, &sha256)),
            (
                &bad_path,
                handmade_ckan(&bad, "1.6", &"0".repeat(40), &"0".repeat(64)),
            ),
        ],
    );
    // the archive takes uploads, but cuts the first one of Gen5 off halfway
    let stored = format!("/ia/{good}-1.5/{}-{good}-1.5.zip", &sha1[..8]);
    up.route("PUT /ia/*", Answer::json(&json!({})));
    up.route_once(&format!("PUT {stored}"), Answer::cut());

    let archive = format!("{}/ia", up.base);
    let web = format!("{}/gh-web", up.base);
    let orch = Agent::orchestrator(
        root.path(),
        0,
        &[
            ("KRAKEN_NETKAN_META_URL", &meta_url),
            ("KRAKEN_NETKAN_META_GITHUB", "test/CKAN-meta"),
            ("KRAKEN_NETKAN_WEBHOOK_SECRET", SECRET),
            ("KRAKEN_NETKAN_ARCHIVE_URL", &archive),
            ("KRAKEN_ORCHESTRATOR_RETRY_BACKOFF_MS", "200"),
            ("KRAKEN_CLUSTER_VOTERS", "1"),
        ],
    );
    let _w = Agent::worker(
        root.path(),
        "w1",
        &orch,
        1,
        &[
            ("KRAKEN_GITHUB_WEB", web.as_str()),
            ("KRAKEN_NETKAN_ARCHIVE_URL", archive.as_str()),
            ("KRAKEN_NETKAN_ARCHIVE_ACCESS", "ia-access"),
            ("KRAKEN_NETKAN_ARCHIVE_SECRET", "ia-secret"),
            ("KRAKEN_CLUSTER_VOTERS", "1"),
        ],
    );
    orch.wait_ready(1).await;
    let client = orch.client();

    // whoever watches Gen6's status hears of the mismatch
    let (ready, registered) = tokio::sync::oneshot::channel();
    let events = tokio::spawn(collect_events(
        format!("{}/graphql/ws", orch.url().replace("http://", "ws://")),
        orch.operator_token(),
        "subscription { netkanStatusEvents(identifier: \"Gen6\") { identifier lastError } }",
        "netkanStatusEvents",
        ready,
        |events| !events.is_empty(),
    ));
    registered.await.unwrap();

    let id = mirror_push(&orch.url(), &[&good_path, &bad_path], SECRET).await;
    let j = wait_final(&client, std::slice::from_ref(&id), Duration::from_secs(120)).await;
    let j = &j[0];
    // the cut-off upload failed the first attempt; the second uploaded it
    assert_eq!(j["state"], "SUCCEEDED", "{j}");
    assert_eq!(j["attempts"].as_array().map(Vec::len), Some(2), "{j}");
    assert_eq!(j["result"]["mirrored"][0]["identifier"], good, "{j}");
    let uploads: Vec<Vec<u8>> = up
        .bodies
        .lock()
        .unwrap()
        .iter()
        .filter(|(hit, _)| *hit == format!("PUT {stored}"))
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(uploads, vec![zip], "Gen5's download, whole, once");
    // Gen6 is never uploaded, and its status says why
    let error = j["result"]["failed"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.starts_with("hash mismatch"), "{j}");
    assert!(!up
        .hits
        .lock()
        .unwrap()
        .iter()
        .any(|h| h.starts_with("PUT /ia/Gen6")));
    let status = client.get("/status/netkan.json").await.unwrap();
    let last_error = status[&bad]["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.starts_with("mirroring: hash mismatch"),
        "{}",
        status[&bad]
    );
    assert!(status[&good]["last_error"].is_null(), "{}", status[&good]);
    let events = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("a status event")
        .unwrap();
    assert_eq!(events[0]["identifier"], "Gen6");
    assert!(events[0]["lastError"]
        .as_str()
        .unwrap()
        .contains("hash mismatch"));
    let p = client
        .graphql("{ netkanPipeline { mirrored mirrorFailed } }", json!({}))
        .await
        .unwrap();
    assert_eq!(
        p["netkanPipeline"],
        json!({"mirrored": 1, "mirrorFailed": 1})
    );
    assert!(orch.log().contains("not mirrored"), "the log says so");
}
