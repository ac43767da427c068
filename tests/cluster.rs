//! The cluster end to end: one orchestrator and two workers as real processes, jobs in real
//! containers through a real RabbitMQ, a worker killed mid-job, an orchestrator restarted.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Subscribes to `jobEvents` over the websocket and collects events until `done` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_container_jobs_spread_over_two_workers() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let orch = Agent::orchestrator(root.path(), 0, &[]);
    let w1 = Agent::worker(root.path(), "w1", &orch, 3, &[]);
    let w2 = Agent::worker(root.path(), "w2", &orch, 3, &[]);
    orch.wait_ready(2).await;
    let client = orch.client();

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let ws_url = format!("ws://127.0.0.1:{}/graphql/ws", orch.api_port);
    let events = tokio::spawn(collect_events(
        ws_url,
        orch.operator_token(),
        "subscription { jobEvents { jobId state attempt node } }",
        "jobEvents",
        ready_tx,
        |evs| evs.iter().filter(|e| e["state"] == "SUCCEEDED").count() >= 40,
    ));
    ready_rx.await.unwrap();

    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            enqueue(
                &client,
                "echo",
                json!({"message": format!("job {i}"), "lines": 2}),
                "",
            )
            .await,
        );
    }
    let jobs = wait_final(&client, &ids, Duration::from_secs(240)).await;

    let (n1, n2) = (w1.node_id(), w2.node_id());
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j["state"], "SUCCEEDED", "{j}");
        assert_eq!(j["result"]["message"], format!("job {i}"));
        assert_eq!(j["exitCode"], 0, "ran in a container: {j}");
        let lines: Vec<&str> = j["log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["text"].as_str().unwrap())
            .collect();
        assert_eq!(lines, vec![format!("job {i} 0"), format!("job {i} 1")]);
        *per_node
            .entry(j["node"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(
        per_node.get(&n1).copied().unwrap_or(0) > 0 && per_node.get(&n2).copied().unwrap_or(0) > 0,
        "jobs spread over both workers: {per_node:?}"
    );

    // the same results through REST
    let rest = client
        .get(&format!("/api/v1/jobs/{}", ids[0]))
        .await
        .unwrap();
    assert_eq!(rest["state"], "SUCCEEDED");
    let log = client.get(&format!("/log/{}", ids[0])).await.unwrap();
    assert_eq!(log, Value::String("job 0 0\njob 0 1\n".into()));
    let listed = client
        .graphql(
            "{ jobs(status: SUCCEEDED, kind: \"echo\") { id } }",
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 40);

    // each job succeeded exactly once on the subscription
    let events = tokio::time::timeout(Duration::from_secs(30), events)
        .await
        .unwrap()
        .unwrap();
    let mut succeeded: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e["state"] == "SUCCEEDED") {
        *succeeded
            .entry(e["jobId"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(succeeded.len(), 40);
    assert!(succeeded.values().all(|&n| n == 1), "{succeeded:?}");

    // nodes report their resources
    let nodes = client
        .graphql(
            "{ nodes { id role alive slots stats { cpus memoryTotalMb diskTotalMb dockerOk } } }",
            json!({}),
        )
        .await
        .unwrap();
    let nodes = nodes["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes.iter().filter(|n| n["role"] == "worker") {
        assert_eq!(n["alive"], true);
        assert!(n["stats"]["cpus"].as_i64().unwrap() > 0, "{n}");
        assert!(n["stats"]["memoryTotalMb"].as_i64().unwrap() > 0, "{n}");
        assert!(n["stats"]["diskTotalMb"].as_i64().unwrap() > 0, "{n}");
        assert_eq!(n["stats"]["dockerOk"], true);
    }
    let metrics = reqwest::get(format!("{}/metrics", orch.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kraken_jobs{state=\"succeeded\"} 40"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kraken_nodes{alive=\"true\"} 3"),
        "{metrics}"
    );
    // no job container is left behind
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=kraken.node={n1}")])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_killed_worker_finish_on_the_other() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let grace = [("KRAKEN_ORCHESTRATOR_GRACE_MS", "3000")];
    let orch = Agent::orchestrator(root.path(), 0, &grace);
    let mut w1 = Agent::worker(root.path(), "w1", &orch, 3, &[]);
    let w2 = Agent::worker(root.path(), "w2", &orch, 3, &[]);
    orch.wait_ready(2).await;
    let client = orch.client();
    let n1 = w1.node_id();

    let mut ids = Vec::new();
    for _ in 0..6 {
        // one attempt only: an attempt lost with its worker does not count as a failure
        ids.push(enqueue(&client, "sleep", json!({"ms": 4000}), ", maxAttempts: 1").await);
    }
    // wait until w1 runs some of them, then kill it without warning
    let on_w1: Vec<String> = wait_until_async("w1 runs jobs", Duration::from_secs(60), || async {
        let mut running = Vec::new();
        for id in &ids {
            let j = job(&client, id).await;
            if j["state"] == "RUNNING" && j["node"] == n1.as_str() {
                running.push(id.clone());
            }
        }
        (!running.is_empty()).then_some(running)
    })
    .await;
    w1.kill9();

    let jobs = wait_final(&client, &ids, Duration::from_secs(120)).await;
    let n2 = w2.node_id();
    for j in &jobs {
        assert_eq!(j["state"], "SUCCEEDED", "{j}");
        let outcomes: Vec<&Value> = j["attempts"].as_array().unwrap().iter().collect();
        let succeeded = outcomes
            .iter()
            .filter(|a| a["outcome"] == "succeeded")
            .count();
        assert_eq!(succeeded, 1, "succeeded exactly once: {j}");
        if on_w1.contains(&j["id"].as_str().unwrap().to_owned()) {
            assert_eq!(
                j["node"],
                n2.as_str(),
                "finished on the surviving worker: {j}"
            );
            assert!(
                outcomes[0]["outcome"].as_str().unwrap().starts_with("lost"),
                "{j}"
            );
        }
    }
    let nodes = client.get("/api/v1/nodes").await.unwrap();
    let dead = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == n1.as_str())
        .unwrap();
    assert_eq!(dead["alive"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_restart_keeps_job_history() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut orch = Agent::orchestrator(root.path(), 2, &[]);
    orch.wait_ready(1).await;
    let client = orch.client();
    let ok = enqueue(&client, "echo", json!({"message": "before"}), "").await;
    let bad = enqueue(
        &client,
        "fail",
        json!({"message": "nope"}),
        ", maxAttempts: 1",
    )
    .await;
    let before = wait_final(
        &client,
        &[ok.clone(), bad.clone()],
        Duration::from_secs(120),
    )
    .await;
    // one more that is still queued when the orchestrator stops (a huge priority queue is not
    // needed: no worker slot is free while it restarts)
    orch.restart();
    orch.wait_ready(1).await;
    let client = orch.client();
    let after = vec![job(&client, &ok).await, job(&client, &bad).await];
    assert_eq!(before, after, "history unchanged across a restart");
    assert_eq!(after[0]["state"], "SUCCEEDED");
    assert_eq!(after[1]["state"], "FAILED");
    assert_eq!(after[1]["error"], "nope");
    // and the cluster works on
    let next = enqueue(&client, "echo", json!({"message": "after"}), "").await;
    let done = wait_final(&client, &[next], Duration::from_secs(60)).await;
    assert_eq!(done[0]["result"]["message"], "after");
}

/// An orchestrator that crashed between storing an assignment and publishing it leaves a job
/// `ASSIGNED` to a live worker that never heard of it; the worker's heartbeats, which list
/// the jobs it holds, give it away and the job is placed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_request_lost_in_a_crash_is_placed_again() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // long enough for the restarted worker to be back before its old silence counts
    let grace = [("KRAKEN_ORCHESTRATOR_GRACE_MS", "10000")];
    let mut orch = Agent::orchestrator(root.path(), 0, &grace);
    let mut w1 = Agent::worker(root.path(), "w1", &orch, 2, &[]);
    orch.wait_ready(1).await;
    let worker_id = w1.node_id();
    w1.stop();
    let client = orch.client();
    // once the orchestrator counts w1 as gone, a new job has nowhere to go
    wait_until_async("w1 is seen as gone", Duration::from_secs(30), || async {
        let nodes = client.get("/api/v1/nodes").await.ok()?;
        nodes
            .as_array()?
            .iter()
            .any(|n| n["id"] == worker_id.as_str() && n["alive"] == json!(false))
            .then_some(())
    })
    .await;
    let id = enqueue(&client, "echo", json!({"message": "lost and found"}), "").await;
    assert_eq!(job(&client, &id).await["state"], "QUEUED");
    orch.stop();

    // what the crash left behind: the job assigned to w1, no work request anywhere
    {
        let store = kraken::store::Store::open(&orch.data_dir().join("store")).unwrap();
        let now = kraken::now_ms();
        let uuid = id.parse().unwrap();
        store
            .update_job(uuid, |j| {
                j.state = kraken::store::JobState::Assigned;
                j.attempt = 1;
                j.node = Some(worker_id.clone());
                j.attempts.push(kraken::store::Attempt {
                    number: 1,
                    node: worker_id.clone(),
                    assigned_at: now,
                    started_at: None,
                    finished_at: None,
                    outcome: None,
                });
                true
            })
            .unwrap()
            .unwrap();
        store.commit_working_offline().unwrap();
        store.flush().await.unwrap();
    }

    orch.restart();
    w1.restart();
    orch.wait_ready(1).await;
    let client = orch.client();
    let done = wait_final(&client, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    assert_eq!(done[0]["state"], "SUCCEEDED", "{}", done[0]);
    assert_eq!(done[0]["result"]["message"], "lost and found");
    let attempts = done[0]["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "the lost attempt does not count: {attempts:?}"
    );
    assert_eq!(attempts[0]["node"], worker_id.as_str());
    assert!(
        orch.log().contains("the worker does not have its job"),
        "the orchestrator says why it placed the job again"
    );
}
