//! The `inflate` job kind on a real cluster: an orchestrator with a NetKAN repository on
//! disk, a worker running the batches in job containers that reach the test's GitHub on the
//! docker bridge, through the worker's shared download cache.

mod common;
mod upstream;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use upstream::{docker_bridge_ip, Answer, Upstream};

const ENQUEUE: &str =
    "mutation($ids: [String!]!) { enqueueInflate(identifiers: $ids) { id kind state } }";

fn outcomes(jobs: &[Value]) -> Vec<Value> {
    jobs.iter()
        .flat_map(|j| {
            j["result"]["outcomes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn downloads(up: &Upstream) -> usize {
    up.hits
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with("GET ") && h.contains("/releases/download/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_inflate_runs_batches_in_containers_with_a_shared_cache() {
    if !real_parts_present() {
        return;
    }
    let up = Upstream::start_on(&docker_bridge_ip()).await;
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("NetKAN-repo");
    let netkans = repo.join("NetKAN");
    std::fs::create_dir_all(&netkans).unwrap();
    let mut good = Vec::new();
    for n in 0..10 {
        let (id, text) = up.generated_mod(n);
        std::fs::write(netkans.join(format!("{id}.netkan")), text).unwrap();
        good.push(id);
    }
    // a mod whose host fails, one whose download is not a zip, one frozen
    std::fs::write(
        netkans.join("Gone.netkan"),
        "identifier: Gone\n$kref: '#/ckan/github/gen/Gone'\nlicense: MIT\n",
    )
    .unwrap();
    std::fs::write(
        netkans.join("NotZip.netkan"),
        "identifier: NotZip\n$kref: '#/ckan/github/gen/NotZip'\nlicense: MIT\n",
    )
    .unwrap();
    up.route(
        "/gh-api/repos/gen/NotZip",
        Answer::json(&json!({"name": "NotZip", "html_url": "https://github.com/gen/NotZip",
            "description": "d", "license": {"spdx_id": "MIT"}, "owner": {"login": "gen", "type": "User"}})),
    );
    up.route(
        "/gh-api/repos/gen/NotZip/releases",
        Answer::json(&json!([{"tag_name": "1.0", "author": {"login": "gen", "type": "User"},
            "published_at": "2025-01-01T00:00:00Z",
            "assets": [{"name": "NotZip.zip", "updated_at": "2025-01-01T00:00:00Z",
                "browser_download_url": "https://github.com/gen/NotZip/releases/download/1.0/NotZip.zip"}]}])),
    );
    up.route(
        "/gh-web/gen/NotZip/releases/download/1.0/NotZip.zip",
        Answer::bytes("text/html", b"<html>rate limited</html>".to_vec()),
    );
    std::fs::write(netkans.join("Cold.netkan"), "identifier: Cold\n").unwrap();
    std::fs::write(netkans.join("Cold.frozen"), "").unwrap();

    let repo_dir = repo.display().to_string();
    let orch = Agent::orchestrator(
        root.path(),
        0,
        &[
            ("KRAKEN_NETKAN_REPO_DIR", &repo_dir),
            ("KRAKEN_NETKAN_INFLATE_BATCH", "4"),
        ],
    );
    let api = format!("{}/gh-api", up.base);
    let web = format!("{}/gh-web", up.base);
    let w1 = Agent::worker(
        root.path(),
        "w1",
        &orch,
        2,
        &[
            ("KRAKEN_GITHUB_API", &api),
            ("KRAKEN_GITHUB_WEB", &web),
            ("KRAKEN_GITHUB_TOKEN", "gh-secret"),
        ],
    );
    orch.wait_ready(1).await;
    let client = orch.client();

    // refused as a whole, naming every problem, with nothing queued
    let err = client
        .graphql(ENQUEUE, json!({"ids": ["Gen0", "Cold", "Nope"]}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Cold is frozen"), "{err}");
    assert!(err.contains("Nope has no Nope.netkan"), "{err}");
    let none = client
        .graphql("{ jobs(kind: \"inflate\") { id } }", json!({}))
        .await
        .unwrap();
    assert_eq!(none["jobs"], json!([]));

    // 12 mods in batches of 4: three jobs
    let mut ids: Vec<String> = good.clone();
    ids.extend(["Gone".to_string(), "NotZip".to_string()]);
    let data = client.graphql(ENQUEUE, json!({"ids": ids})).await.unwrap();
    let jobs: Vec<String> = job_ids(&data, "enqueueInflate");
    assert_eq!(jobs.len(), 3);
    let done = wait_final(&client, &jobs, Duration::from_secs(180)).await;
    for j in &done {
        assert_eq!(j["state"], "SUCCEEDED", "{j}");
        assert!(
            j["log"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["text"].as_str().unwrap().contains(": inflated ")),
            "the job log says what was inflated: {j}"
        );
    }
    let all = outcomes(&done);
    assert_eq!(all.len(), 12);
    for (n, id) in good.iter().enumerate() {
        let o = all.iter().find(|o| o["ModIdentifier"] == *id).unwrap();
        assert_eq!(o["Success"], true, "{o}");
        assert_eq!(o["FileName"], format!("{id}-1.{n}.ckan"));
        assert_eq!(o["GameId"], "KSP");
        let ckan: Value = serde_json::from_str(o["Ckan"].as_str().unwrap()).unwrap();
        assert_eq!(ckan["version"], format!("1.{n}"));
        assert_eq!(
            ckan["download"],
            format!("https://github.com/gen/{id}/releases/download/1.{n}/{id}.zip"),
            "the public URL, not the test server's"
        );
        let zip = upstream::generated_zip(id, n);
        assert_eq!(ckan["download_size"], zip.len());
        assert_eq!(
            ckan["download_hash"]["sha256"],
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&zip)).to_uppercase()
        );
    }
    let gone = all.iter().find(|o| o["ModIdentifier"] == "Gone").unwrap();
    assert_eq!(gone["Success"], false);
    assert!(
        gone["ErrorMessage"].as_str().unwrap().contains("gen/Gone"),
        "{gone}"
    );
    let not_zip = all.iter().find(|o| o["ModIdentifier"] == "NotZip").unwrap();
    assert_eq!(not_zip["Success"], false);
    assert!(
        not_zip["ErrorMessage"].as_str().unwrap().contains("zip"),
        "{not_zip}"
    );

    // the worker's GitHub token reached the API from inside the container
    let auth = up.auth.lock().unwrap().clone();
    assert!(
        auth.iter()
            .any(|(target, a)| target.starts_with("/gh-api/") && a == "Bearer gh-secret"),
        "{auth:?}"
    );
    let cache = w1.data_dir().join("netkan-cache");
    let cached = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_none())
        .count();
    assert_eq!(
        cached,
        10,
        "ten zips in the worker's cache at {}",
        cache.display()
    );

    // again, all ten in one job: every download comes from the cache, in a new container
    let err = client
        .graphql(
            "mutation($ids: [String!]!) { enqueueInflate(identifiers: $ids, batch: 0) { id } }",
            json!({"ids": good}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch must be between 1 and 200"), "{err}");
    let before = downloads(&up);
    let data = client
        .graphql(
            "mutation($ids: [String!]!) { enqueueInflate(identifiers: $ids, batch: 10) { id } }",
            json!({"ids": good}),
        )
        .await
        .unwrap();
    let again: Vec<String> = job_ids(&data, "enqueueInflate");
    assert_eq!(again.len(), 1);
    let done = wait_final(&client, &again, Duration::from_secs(120)).await;
    assert!(outcomes(&done).iter().all(|o| o["Success"] == true));
    assert_eq!(downloads(&up), before, "a warm cache downloads nothing");

    // the worker is still healthy and takes other work
    let echo = enqueue(&client, "echo", json!({"message": "after"}), "").await;
    let done = wait_final(&client, &[echo], Duration::from_secs(60)).await;
    assert_eq!(done[0]["state"], "SUCCEEDED");
}
