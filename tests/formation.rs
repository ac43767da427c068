//! A cluster that forms by itself: agents started with no role flags find each other over
//! mDNS (confined to loopback, on this test's own port), one founds the cluster and the
//! others enroll in it; outside the enrollment window a device waits for approval; a
//! rebooted device rejoins as itself and never follows another cluster's orchestrator.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn alive_nodes(orch: &Agent) -> Vec<Value> {
    let nodes = orch.client().get("/api/v1/nodes").await.unwrap();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["alive"] == json!(true))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_started_together_without_flags_form_one_cluster() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut agents: Vec<Agent> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| Agent::bare(root.path(), name, 1, &[]))
        .collect();
    let lead = wait_for_leader(&agents);
    let orch = &agents[lead];
    orch.wait_ready(4).await;
    // still one leader once everyone settled
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agents.iter().filter(|a| a.leads()).count(), 1);

    // the leader is the newcomer with the lowest node id
    let lowest = agents.iter().map(|a| a.node_id()).min().unwrap();
    assert_eq!(orch.node_id(), lowest);

    let cluster = orch.client().get("/api/v1/cluster").await.unwrap();
    let devices = cluster["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 4, "{cluster}");
    for d in devices {
        let expected = if d["node"] == json!(lowest) {
            "orchestrator"
        } else {
            "worker"
        };
        assert_eq!(d["role"], expected, "{d}");
        assert_eq!(d["cluster"], cluster["id"], "{d}");
    }
    assert_eq!(cluster["enrollment_open"], true);
    let gql = orch
        .client()
        .graphql(
            "{ cluster { id enrollmentOpen devices { node role cluster addresses apiPort } pendingNodes { nodeId } } }",
            json!({}),
        )
        .await
        .unwrap();
    let view = &gql["cluster"];
    assert_eq!(view["devices"].as_array().unwrap().len(), 4, "{view}");
    assert_eq!(view["pendingNodes"], json!([]));
    let me = view["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["node"] == json!(lowest))
        .unwrap();
    assert_eq!(me["role"], "ORCHESTRATOR");
    assert_eq!(me["addresses"], json!(["127.0.0.1"]));
    assert_eq!(me["apiPort"], orch.api_port);

    // jobs run on the formed cluster
    let client = orch.client();
    let id = enqueue(&client, "echo", json!({"message": "formed"}), "").await;
    let done = wait_final(&client, &[id], Duration::from_secs(60)).await;
    assert_eq!(done[0]["state"], "SUCCEEDED");

    // a rebooted worker comes back as itself, with no flags
    let w = (lead + 1) % agents.len();
    let before = agents[w].node_id();
    agents[w].stop();
    agents[w].restart();
    let orch = &agents[lead];
    wait_until_async(
        "the rebooted worker is back",
        Duration::from_secs(30),
        || async {
            // its log holds both lives: following again is the second "following"
            let back = agents[w]
                .log()
                .matches("following the orchestrator")
                .count()
                >= 2;
            let alive = alive_nodes(orch).await;
            (back && alive.len() == 4 && alive.iter().any(|n| n["id"] == json!(before)))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        orch.client()
            .get("/api/v1/nodes")
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        4,
        "no new identity"
    );
    assert_eq!(
        agents[w].log().matches("admitted to the cluster").count(),
        1,
        "the reboot asked for no new admission"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_enrollment_window_a_device_waits_for_approval() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut orch = Agent::orchestrator(
        root.path(),
        0,
        &[("KRAKEN_ORCHESTRATOR_ENROLLMENT_SECS", "0")],
    );
    orch.wait_ready(1).await;
    let client = orch.client();
    let device = Agent::bare(root.path(), "newpi", 1, &[]);
    let id = device.node_id();
    wait_until_async("the device is pending", Duration::from_secs(30), || async {
        let e = client.get("/api/v1/enrollment").await.ok()?;
        assert_eq!(e["open"], false);
        e["pending"]
            .as_array()?
            .iter()
            .any(|p| p["node_id"] == json!(id) && p["name"] == "newpi")
            .then_some(())
    })
    .await;
    assert_eq!(alive_nodes(&orch).await.len(), 1, "not admitted yet");
    assert!(device.log().contains("waiting for approval"));
    assert!(
        !device.leads(),
        "a device that sees a cluster never founds its own"
    );

    // approval needs the operator token
    let anonymous = kraken::client::Client::new(&orch.url(), None);
    let err = anonymous
        .post(&format!("/api/v1/nodes/{id}/approve"), &json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401"), "{err}");
    let err = client
        .post("/api/v1/nodes/nnotpending/approve", &json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no device nnotpending is waiting"), "{err}");

    // the operator sees the device and approves it from the CLI
    let kraken = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kraken"))
            .arg("nodes")
            .args(["--api", &orch.url(), "--token", &orch.operator_token()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let listing = kraken(&[]);
    assert!(
        listing.contains("waiting for approval") && listing.contains(&id),
        "{listing}"
    );
    assert!(listing.contains("enrollment closed"), "{listing}");
    // it is also listed among the devices in view that are not members, as a newcomer
    wait_until("the newcomer is in view", Duration::from_secs(20), || {
        let listing = kraken(&[]);
        let in_view = listing.split("other devices in view over mDNS:").nth(1)?;
        in_view
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("candidate"))
            .then_some(())
    });
    assert!(kraken(&["approve", &id]).contains(&format!("approved {id}")));
    wait_until_async(
        "the approved device joined",
        Duration::from_secs(30),
        || async { (alive_nodes(&orch).await.len() == 2).then_some(()) },
    )
    .await;
    let e = client.get("/api/v1/enrollment").await.unwrap();
    assert_eq!(e["pending"], json!([]));

    // reopening the window admits the next device by itself
    assert!(kraken(&["enroll", "--seconds", "60"]).contains("for 60 s"));
    let _next = Agent::bare(root.path(), "nextpi", 1, &[]);
    wait_until_async(
        "the next device joined",
        Duration::from_secs(30),
        || async { (alive_nodes(&orch).await.len() == 3).then_some(()) },
    )
    .await;

    // the window outlives a restart of the orchestrator (three nodes vote now: the lead may
    // move to another of them, which has the window too)
    orch.restart();
    let public = kraken::client::Client::new(&orch.url(), None);
    let token = orch.operator_token();
    let e = wait_until_async(
        "a leader answers again",
        Duration::from_secs(60),
        || async {
            let view = public.get("/api/v1/leader").await.ok()?;
            let leader =
                kraken::client::Client::new(view["leader_url"].as_str()?, Some(token.clone()));
            leader.get("/api/v1/enrollment").await.ok()
        },
    )
    .await;
    assert_eq!(e["open"], true, "{e}");
    assert!(e["remaining_secs"].as_u64().unwrap() <= 60, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_never_follows_another_clusters_orchestrator() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // cluster B is founded out of sight (another mDNS port), then stopped
    let mut other = Agent::bare(
        root.path(),
        "other",
        0,
        &[("KRAKEN_DISCOVERY_PORT", &free_udp_port().to_string())],
    );
    other.wait_ready(1).await;
    let other_cluster = other.client().get("/api/v1/cluster").await.unwrap()["id"].clone();
    other.stop();

    // cluster A forms with a worker
    let orch = Agent::orchestrator(root.path(), 0, &[]);
    orch.wait_ready(1).await;
    let mut w = Agent::bare(root.path(), "w", 1, &[]);
    orch.wait_ready(2).await;
    let cluster = orch.client().get("/api/v1/cluster").await.unwrap()["id"].clone();
    assert_ne!(cluster, other_cluster);

    // B comes back on the same LAN; A's worker reboots and rejoins A, not B
    w.stop();
    let mut b = Agent::bare(root.path(), "other", 0, &[]);
    b.wait_ready(1).await;
    w.restart();
    let w_id = w.node_id();
    wait_until_async(
        "the worker is back in its cluster",
        Duration::from_secs(30),
        || async {
            let alive = alive_nodes(&orch).await;
            alive.iter().any(|n| n["id"] == json!(w_id)).then_some(())
        },
    )
    .await;
    let membership = std::fs::read_to_string(w.data_dir().join("membership.json")).unwrap();
    let membership: Value = serde_json::from_str(&membership).unwrap();
    assert_eq!(membership["cluster"], cluster);
    wait_until(
        "the worker says why it ignores B",
        Duration::from_secs(20),
        || {
            w.log()
                .contains("ignoring the orchestrator of another cluster")
                .then_some(())
        },
    );
    let b_nodes = b.client().get("/api/v1/nodes").await.unwrap();
    assert_eq!(
        b_nodes.as_array().unwrap().len(),
        1,
        "B admitted no one: {b_nodes}"
    );
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_mdns_records_do_not_stop_formation() {
    if !real_parts_present() {
        return;
    }
    use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};
    // a third party on the same LAN: an "orchestrator" that answers nothing (the lowest
    // node id, the highest term), and records that are not ours
    let forger = ServiceDaemon::new_with_port(mdns_port()).unwrap();
    forger.disable_interface(IfKind::All).unwrap();
    forger.enable_interface(IfKind::LoopbackV4).unwrap();
    let dead_port = free_port(false).to_string();
    let records: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "n0000000000",
            vec![
                ("cluster", "deadbeef"),
                ("node", "n0000000000"),
                ("role", "orchestrator"),
                ("term", "99"),
                ("api", &dead_port),
                ("version", "9.9.9"),
            ],
        ),
        ("garbage1", vec![("node", "N0T;AN;ID"), ("role", "king")]),
        ("garbage2", vec![("hello", "world")]),
    ];
    for (name, txt) in &records {
        let info = ServiceInfo::new(
            "_kraken._tcp.local.",
            name,
            &format!("{name}.local."),
            "127.0.0.1",
            dead_port.parse().unwrap(),
            &txt[..],
        )
        .unwrap();
        forger.register(info).unwrap();
    }

    let root = tempfile::tempdir().unwrap();
    let mut agents: Vec<Agent> = ["a", "b"]
        .iter()
        .map(|name| Agent::bare(root.path(), name, 1, &[]))
        .collect();
    let lead = {
        let agents = &agents;
        wait_until(
            "one agent founded the cluster",
            Duration::from_secs(60),
            || {
                let leading: Vec<usize> = (0..2).filter(|&i| agents[i].leads()).collect();
                (leading.len() == 1).then(|| leading[0])
            },
        )
    };
    agents[lead].wait_ready(2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        agents.iter().filter(|a| a.leads()).count(),
        1,
        "one cluster"
    );
    for a in agents.iter_mut() {
        assert!(a.is_running(), "{} still runs", a.name);
    }
    assert!(
        agents
            .iter()
            .all(|a| a.log().contains("cannot enroll there")),
        "each tried the forged orchestrator and said so"
    );
    let cluster = agents[lead].client().get("/api/v1/cluster").await.unwrap();
    let nodes: Vec<&str> = cluster["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["node"].as_str().unwrap())
        .collect();
    assert!(
        !nodes.iter().any(|n| n.contains(';')),
        "malformed records are not listed: {nodes:?}"
    );
    let _ = forger.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_installs_from_the_cluster_and_joins_by_its_url() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let orch = Agent::orchestrator(root.path(), 0, &[]);
    orch.wait_ready(1).await;
    let http = reqwest::Client::new();

    // the installer names the agent it came from
    let script = http
        .get(format!("{}/install.sh", orch.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(script.starts_with("#!/bin/sh"), "{script}");
    assert!(script.contains(&format!("URL=\"${{KRAKEN_URL:-{}}}\"", orch.url())));
    // a Host header that would inject into the script is refused
    let bad = http
        .get(format!("{}/install.sh", orch.url()))
        .header("Host", "x$(reboot)")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let other = http
        .get(format!("{}/download/kraken-mips", orch.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert!(other.text().await.unwrap().contains("only"));

    // run it: the agent lands in the install dir, the very binary the cluster runs
    let bin = root.path().join("bin");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("KRAKEN_INSTALL_DIR", &bin)
        .env("KRAKEN_START", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("kraken {}", kraken::VERSION)),
        "{stdout}"
    );
    let digest = |p: &std::path::Path| {
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            std::fs::read(p).unwrap(),
        ))
    };
    assert_eq!(
        digest(&bin.join("kraken")),
        digest(std::path::Path::new(env!("CARGO_BIN_EXE_kraken")))
    );

    // a device told only the cluster's URL (no token, no mDNS) is admitted in the window
    let url = orch.url();
    let device = Agent::bare(
        root.path(),
        "by-url",
        1,
        &[
            ("KRAKEN_JOIN_URL", &url),
            ("KRAKEN_DISCOVERY_ENABLED", "false"),
        ],
    );
    orch.wait_ready(2).await;
    let m = std::fs::read_to_string(device.data_dir().join("membership.json")).unwrap();
    let m: Value = serde_json::from_str(&m).unwrap();
    let cluster = orch.client().get("/api/v1/cluster").await.unwrap();
    assert_eq!(m["cluster"], cluster["id"]);
}
