//! Bad input of every kind gets a clear error where the user looks, and nothing else is lost.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kraken"));
        cmd.env("KRAKEN_DISCOVERY_INTERFACES", "lo")
            .env("KRAKEN_DISCOVERY_PORT", mdns_port().to_string())
            .arg("agent")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[("KRAKEN_API_PORT", "eighty")], &[]);
    assert!(err.contains("api.port") && err.contains("eighty"), "{err}");
    let toml = dir.path().join("kraken.toml");
    std::fs::write(&toml, "[worker]\nslotz = 2\n").unwrap();
    let err = run(&[], &["--config", toml.to_str().unwrap()]);
    assert!(err.contains("slotz"), "{err}");
    let err = run(&[], &["--join", "127.0.0.1:1"]);
    assert!(
        err.contains("join.url") && err.contains("not an http"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_lose_nothing() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let orch = Agent::orchestrator(root.path(), 2, &[]);
    orch.wait_ready(1).await;
    let client = orch.client();
    let good = enqueue(&client, "sleep", json!({"ms": 1500}), "").await;

    let gql_err = |q: &'static str, vars: serde_json::Value| {
        let client = orch.client();
        async move { client.graphql(q, vars).await.unwrap_err().to_string() }
    };
    let enqueue_q = "mutation($k: String!, $s: JSON, $m: Int) { enqueueJob(kind: $k, spec: $s, maxAttempts: $m) { id } }";
    let e = gql_err(enqueue_q, json!({"k": "ecko", "s": {}})).await;
    assert!(
        e.contains("unknown job kind `ecko`") && e.contains("echo"),
        "{e}"
    );
    let e = gql_err(enqueue_q, json!({"k": "echo", "s": "hello"})).await;
    assert!(e.contains("spec must be a JSON object"), "{e}");
    let e = gql_err(enqueue_q, json!({"k": "echo", "s": {"mesage": "x"}})).await;
    assert!(e.contains("unknown field `mesage`"), "{e}");
    let e = gql_err(enqueue_q, json!({"k": "sleep", "s": {"ms": "long"}})).await;
    assert!(e.contains("`ms` must be a whole number"), "{e}");
    let e = gql_err(enqueue_q, json!({"k": "echo", "s": {}, "m": -1})).await;
    assert!(e.contains("maxAttempts must not be negative"), "{e}");
    let e = gql_err("{ job(id: \"not-a-uuid\") { id } }", json!({})).await;
    assert!(e.contains("`not-a-uuid` is not an id"), "{e}");

    // wrong or missing operator token
    let intruder = kraken::client::Client::new(&orch.url(), Some("wrong".into()));
    let e = intruder
        .graphql(enqueue_q, json!({"k": "echo", "s": {}}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("unauthorized"), "{e}");
    let e = intruder.get("/api/v1/jobs").await.unwrap_err().to_string();
    assert!(e.contains("401"), "{e}");
    let anonymous = kraken::client::Client::new(&orch.url(), None);
    let e = anonymous
        .post("/api/v1/jobs", &json!({"kind": "echo"}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("401") && e.contains("operator token"), "{e}");
    // malformed REST body
    let e = client
        .post("/api/v1/jobs", &json!({"kind": "echo", "colour": 1}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("400") && e.contains("colour"), "{e}");

    // a container over its memory limit fails with the reason, not retried
    let hog = enqueue(&client, "memhog", json!({"mb": 300}), ", memoryMb: 64").await;
    // an oversized log line is cut, not dropped, and does not hurt the job
    let long = "x".repeat(100_000);
    let loud = enqueue(&client, "echo", json!({"message": long}), "").await;
    let jobs = wait_final(&client, &[hog, loud, good], Duration::from_secs(120)).await;
    assert_eq!(jobs[0]["state"], "FAILED");
    assert!(
        jobs[0]["error"]
            .as_str()
            .unwrap()
            .contains("memory limit of 64 MiB"),
        "{}",
        jobs[0]
    );
    assert_eq!(
        jobs[0]["attempts"].as_array().unwrap().len(),
        1,
        "not retried"
    );
    assert_eq!(jobs[1]["state"], "SUCCEEDED");
    let line = jobs[1]["log"][0]["text"].as_str().unwrap();
    assert!(
        line.len() < 20_000 && line.contains("line cut"),
        "{}",
        &line[line.len() - 60..]
    );
    assert_eq!(jobs[2]["state"], "SUCCEEDED", "the good job is unharmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_amqp_messages_are_dead_lettered() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut orch = Agent::orchestrator(root.path(), 2, &[]);
    orch.wait_ready(1).await;
    let cluster = std::fs::read_to_string(orch.data_dir().join("cluster-id")).unwrap();
    let password = kraken::identity::broker_password(&orch.join_token(), "kraken-admin");
    let url = format!(
        "amqp://kraken-admin:{password}@127.0.0.1:{}/kraken-{}",
        orch.amqp_port,
        cluster.trim()
    );
    let conn = lapin::Connection::connect(&url, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let node = orch.node_id();
    for (exchange, key) in [
        ("kraken.up", "events"),
        ("kraken.up", "logs"),
        ("kraken.up", "sysinfo"),
        ("kraken.work", node.as_str()),
    ] {
        ch.basic_publish(
            exchange.into(),
            key.into(),
            Default::default(),
            b"{not json",
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let client = orch.client();
    let metrics = wait_until_async(
        "garbage is dead-lettered",
        Duration::from_secs(30),
        || async {
            let m = reqwest::get(format!("{}/metrics", orch.url()))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            m.contains("kraken_queue_depth{queue=\"dead-letter\"} 4")
                .then_some(m)
        },
    )
    .await;
    assert!(
        metrics.contains("kraken_queue_depth{queue=\"events\"} 0"),
        "{metrics}"
    );
    assert!(orch.is_running());
    assert!(
        orch.log().contains("undecodable message"),
        "the garbage is logged"
    );
    // and the cluster still works
    let id = enqueue(&client, "echo", json!({"message": "still here"}), "").await;
    let done = wait_final(&client, &[id], Duration::from_secs(60)).await;
    assert_eq!(done[0]["state"], "SUCCEEDED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_join_token_is_refused() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let orch = Agent::orchestrator(root.path(), 0, &[]);
    orch.wait_ready(0).await;
    let dir = root.path().join("intruder");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kraken"))
        .args([
            "agent",
            "--data-dir",
            dir.to_str().unwrap(),
            "--api-port",
            &free_port(false).to_string(),
        ])
        .args(["--join", &orch.url(), "--token", "not-the-token"])
        // mDNS stays on loopback, on this test's port, like every test agent's
        .env("KRAKEN_DISCOVERY_INTERFACES", "lo")
        .env("KRAKEN_DISCOVERY_PORT", mdns_port().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong") && err.contains("token"), "{err}");
    let nodes = orch.client().get("/api/v1/nodes").await.unwrap();
    assert_eq!(
        nodes.as_array().unwrap().len(),
        1,
        "only the orchestrator: {nodes}"
    );
    assert!(orch.log().contains("join refused: wrong cluster token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_broker_is_restarted_and_no_job_is_lost() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let orch = Agent::orchestrator(root.path(), 2, &[("KRAKEN_ORCHESTRATOR_GRACE_MS", "30000")]);
    orch.wait_ready(1).await;
    let client = orch.client();
    let running = enqueue(&client, "sleep", json!({"ms": 6000}), "").await;
    wait_until_async("the job runs", Duration::from_secs(60), || async {
        (job(&client, &running).await["state"] == "RUNNING").then_some(())
    })
    .await;
    // RabbitMQ dies under the running agent
    let pid = std::fs::read_to_string(orch.data_dir().join("rabbitmq/rabbitmq.pid")).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let after = wait_until_async(
        "the API accepts jobs again",
        Duration::from_secs(60),
        || async {
            client
                .graphql(
                    "mutation { enqueueJob(kind: \"echo\", spec: {message: \"after\"}) { id } }",
                    json!({}),
                )
                .await
                .ok()
                .map(|d| d["enqueueJob"]["id"].as_str().unwrap().to_owned())
        },
    )
    .await;
    let jobs = wait_final(&client, &[running, after], Duration::from_secs(120)).await;
    assert_eq!(jobs[0]["state"], "SUCCEEDED", "{}", jobs[0]);
    assert_eq!(jobs[1]["state"], "SUCCEEDED", "{}", jobs[1]);
    assert!(orch.log().contains("rabbitmq-server exited; restarting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_while_docker_is_unavailable() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let orch = Agent::orchestrator(root.path(), 0, &[]);
    let _blind = Agent::worker(
        root.path(),
        "blind",
        &orch,
        2,
        &[(
            "KRAKEN_WORKER_DOCKER_HOST",
            "unix:///nonexistent/docker.sock",
        )],
    );
    orch.wait_ready(2).await;
    let client = orch.client();
    let nodes = client
        .graphql("{ nodes { name stats { dockerOk } } }", json!({}))
        .await
        .unwrap();
    let blind = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "blind")
        .unwrap()
        .clone();
    assert_eq!(blind["stats"]["dockerOk"], false, "{blind}");
    let id = enqueue(&client, "echo", json!({"message": "patient"}), "").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        job(&client, &id).await["state"],
        "QUEUED",
        "not placed on a node without docker"
    );
    let _good = Agent::worker(root.path(), "good", &orch, 2, &[]);
    let done = wait_final(&client, &[id], Duration::from_secs(90)).await;
    assert_eq!(done[0]["state"], "SUCCEEDED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpcs_without_a_valid_signature_are_refused() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let orch = Agent::orchestrator(root.path(), 0, &[]);
    orch.wait_ready(0).await;
    let public = kraken::client::Client::new(&orch.url(), None);
    let before = public.get("/api/v1/leader").await.unwrap();
    assert_eq!(before["leading"], true, "{before}");

    let http = reqwest::Client::new();
    // a vote that would depose the leader, were it believed
    let vote = json!({
        "vote": {"leader_id": {"term": 1_000_000, "node_id": 42}, "committed": false},
        "last_log_id": {"leader_id": {"term": 1_000_000, "node_id": 42}, "index": 1_000_000}
    })
    .to_string();
    let token = orch.join_token();
    let signed = |node: &str, key: &str, body: &str| {
        kraken::identity::rpc_signature(key, node, "/raft/vote", body.as_bytes())
    };
    let cases = [
        ("unsigned", None, vote.clone()),
        (
            "signed with another cluster's token",
            Some(signed("n0123456789", "not-the-token", &vote)),
            vote.clone(),
        ),
        (
            "a signature for another body",
            Some(signed("n0123456789", &token, "{}")),
            vote.clone(),
        ),
    ];
    for (what, signature, body) in cases {
        let mut req = http
            .post(format!("{}/raft/vote", orch.url()))
            .header("content-type", "application/json")
            .body(body);
        if let Some(sig) = signature {
            req = req
                .header("x-kraken-node", "n0123456789")
                .header("x-kraken-signature", sig);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("not signed by a member"), "{what}: {text}");
    }
    // signed, but not a Raft message: a clear error, no crash
    let garbage = "{\"vote\": 7}";
    let resp = http
        .post(format!("{}/raft/append", orch.url()))
        .header("x-kraken-node", "n0123456789")
        .header(
            "x-kraken-signature",
            kraken::identity::rpc_signature(
                &token,
                "n0123456789",
                "/raft/append",
                garbage.as_bytes(),
            ),
        )
        .body(garbage)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("raft rpc malformed"));

    // nothing changed: the same leader, the same term
    let after = public.get("/api/v1/leader").await.unwrap();
    assert_eq!(after["leading"], true, "{after}");
    assert_eq!(after["term"], before["term"], "{after}");
    assert!(orch.log().contains("raft rpc refused"));
    let client = orch.client();
    assert_eq!(
        client
            .get("/api/v1/nodes")
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
