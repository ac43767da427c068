//! The cluster on a test LAN of network namespaces (real veths, a real bridge, real
//! multicast): agents with no flags on three hosts form one cluster at their LAN addresses,
//! and a third-party mDNS stack (avahi) on a fourth host sees every one of them.

mod common;
mod upstream;

use common::lan::Lan;
use common::*;
use kraken::client::Client;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_without_flags_form_one_cluster_that_avahi_sees() {
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    let mut lan = Lan::new(4);
    let agents: Vec<Agent> = (0..3).map(|i| Agent::on_lan(&lan, i, 1, &[])).collect();
    let lead = wait_for_leader(&agents);
    let orch = &agents[lead];
    orch.wait_ready(3).await;

    // every node is known at its LAN address, never a loopback or container one
    let nodes = orch.client().get("/api/v1/nodes").await.unwrap();
    let mut addresses: Vec<String> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["address"].as_str().unwrap().to_owned())
        .collect();
    addresses.sort();
    assert_eq!(addresses, vec![lan.ip(0), lan.ip(1), lan.ip(2)], "{nodes}");
    let cluster = orch.client().get("/api/v1/cluster").await.unwrap();
    let devices = cluster["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3, "{cluster}");
    for d in devices {
        let addrs: Vec<&str> = d["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        // IPv4 first (the API is reached there); IPv6 only link-local; no loopback
        assert!(addresses.contains(&addrs[0].to_string()), "{d}");
        assert!(addrs[1..].iter().all(|a| a.starts_with("fe80:")), "{d}");
    }

    // a job runs on the LAN cluster
    let client = orch.client();
    let id = enqueue(&client, "echo", json!({"message": "lan"}), "").await;
    assert_eq!(
        wait_final(&client, &[id], Duration::from_secs(60)).await[0]["state"],
        "SUCCEEDED"
    );

    // avahi-browse on the fourth host lists the three agents with their TXT records
    let bus = lan.start_avahi(3);
    let ids: Vec<String> = agents.iter().map(|a| a.node_id()).collect();
    let cluster_id = cluster["id"].as_str().unwrap().to_owned();
    let seen = wait_until(
        "avahi-browse sees every agent",
        Duration::from_secs(30),
        || {
            let out = lan
                .command(3, "avahi-browse")
                .args(["-rtp", "_kraken._tcp"])
                .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let resolved: Vec<&str> = text.lines().filter(|l| l.starts_with("=;")).collect();
            ids.iter()
                .all(|id| resolved.iter().any(|l| l.contains(&format!(";{id};"))))
                .then_some(resolved.join("\n"))
        },
    );
    for (i, id) in ids.iter().enumerate() {
        let line = seen
            .lines()
            .find(|l| l.contains(&format!(";{id};")))
            .unwrap();
        // =;eth0;IPv4;<instance>;_kraken._tcp;local;<host>;<address>;<port>;"k=v" …
        let fields: Vec<&str> = line.splitn(10, ';').collect();
        assert_eq!(fields[7], lan.ip(i), "{line}");
        assert_eq!(fields[8], "8080", "{line}");
        let role = if i == lead { "orchestrator" } else { "worker" };
        for txt in [
            format!("\"role={role}\""),
            format!("\"cluster={cluster_id}\""),
            format!("\"node={id}\""),
            "\"api=8080\"".to_string(),
        ] {
            assert!(fields[9].contains(&txt), "{txt} in {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_and_a_worker_get_new_addresses_and_the_cluster_carries_on() {
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    let lan = Lan::new(3);
    let mut agents: Vec<Agent> = (0..3).map(|i| Agent::on_lan(&lan, i, 1, &[])).collect();
    let lead = wait_for_leader(&agents);
    agents[lead].wait_ready(3).await;
    let ids: Vec<String> = agents.iter().map(|a| a.node_id()).collect();

    // the orchestrator's lease changes under the running cluster (its peers may elect
    // another leader meanwhile: its connections died with the old address)
    let new_ip = lan.readdress(lead, 200);
    agents[lead].set_host(&new_ip);
    let all: Vec<usize> = (0..3).collect();
    let all_alive = |client: Client| {
        let ids = ids.clone();
        async move {
            let nodes = client.get("/api/v1/nodes").await.ok()?;
            let alive: Vec<String> = nodes
                .as_array()?
                .iter()
                .filter(|n| n["alive"] == json!(true))
                .map(|n| n["id"].as_str().unwrap_or_default().to_owned())
                .collect();
            ids.iter().all(|id| alive.contains(id)).then_some(())
        }
    };
    // whoever leads once it settles (the re-addressed leader may still claim the lead for a
    // moment before its peers elect another): every node alive there, and if it is the
    // re-addressed one, the workers found it at its new address
    let leader = wait_until_async(
        "the cluster settles with every node alive",
        Duration::from_secs(90),
        || async {
            let leader = wait_for_raft_leader(&agents, &all, Duration::from_secs(60)).await;
            all_alive(agents[leader].client()).await?;
            if leader == lead {
                let followed = (0..3).filter(|&i| i != lead).all(|i| {
                    agents[i].log().lines().any(|l| {
                        l.contains("following the orchestrator")
                            && l.contains(&format!("//{new_ip}:"))
                    })
                });
                followed.then_some(())?;
            }
            Some(leader)
        },
    )
    .await;
    let client = agents[leader].client();
    let worker = (0..3).find(|&i| i != lead && i != leader).unwrap();
    // work still reaches every worker: enough jobs that each node gets some
    let mut jobs = Vec::new();
    for i in 0..6 {
        jobs.push(enqueue(&client, "sleep", json!({"ms": 1500 + i}), "").await);
    }
    let done = wait_final(&client, &jobs, Duration::from_secs(120)).await;
    assert!(done.iter().all(|j| j["state"] == "SUCCEEDED"), "{done:?}");

    // a worker's lease changes: it reconnects from its new address
    let worker_ip = lan.readdress(worker, 201);
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_until_async(
        "the re-addressed worker is back",
        Duration::from_secs(60),
        || all_alive(agents[leader].client()),
    )
    .await;
    let id = enqueue(&client, "echo", json!({"message": "still here"}), "").await;
    let done = wait_final(&client, &[id], Duration::from_secs(60)).await;
    assert_eq!(done[0]["state"], "SUCCEEDED", "{}", done[0]);
    let nodes = client.get("/api/v1/nodes").await.unwrap();
    assert_eq!(
        nodes.as_array().unwrap().len(),
        3,
        "the same three nodes: {nodes}"
    );
    // and the nodes' records know where they are now
    wait_until_async(
        "the records show the new addresses",
        Duration::from_secs(20),
        || async {
            let nodes = client.get("/api/v1/nodes").await.ok()?;
            let addresses: Vec<&str> = nodes
                .as_array()?
                .iter()
                .filter_map(|n| n["address"].as_str())
                .collect();
            (addresses.contains(&new_ip.as_str()) && addresses.contains(&worker_ip.as_str()))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hosts_booted_at_once_end_as_one_cluster() {
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    let lan = Lan::new(5);
    let agents: Vec<Agent> = (0..5).map(|i| Agent::on_lan(&lan, i, 1, &[])).collect();
    let lead = wait_for_leader(&agents);
    agents[lead].wait_ready(5).await;
    // settled: still exactly one cluster, and every host in it
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(agents.iter().filter(|a| a.leads()).count(), 1);
    // (usually the lowest node id founds; when two founded at once, one gave its empty
    // cluster up for the other: either way one leader)
    let all: Vec<usize> = (0..5).collect();
    assert_eq!(
        wait_for_raft_leader(&agents, &all, Duration::from_secs(30)).await,
        lead
    );
    let cluster = agents[lead].client().get("/api/v1/cluster").await.unwrap();
    for a in &agents {
        let m = std::fs::read_to_string(a.data_dir().join("membership.json"));
        if a.leads() {
            assert!(m.is_err(), "the founder is nobody's member");
        } else {
            let m: serde_json::Value = serde_json::from_str(&m.unwrap()).unwrap();
            assert_eq!(
                m["cluster"], cluster["id"],
                "{} joined the one cluster",
                a.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_loses_its_jobs_to_the_others_and_comes_back() {
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    let lan = Lan::new(3);
    let agents: Vec<Agent> = (0..3).map(|i| Agent::on_lan(&lan, i, 2, &[])).collect();
    let lead = wait_for_leader(&agents);
    let orch = &agents[lead];
    orch.wait_ready(3).await;
    let client = orch.client();
    let victim = (lead + 1) % 3;
    let victim_id = agents[victim].node_id();

    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(enqueue(&client, "sleep", json!({"ms": 6000}), ", maxAttempts: 1").await);
    }
    let on_victim: Vec<String> =
        wait_until_async("the victim runs jobs", Duration::from_secs(60), || async {
            let mut mine = Vec::new();
            for id in &ids {
                let j = job(&client, id).await;
                if j["state"] == "RUNNING" && j["node"] == json!(victim_id) {
                    mine.push(id.clone());
                }
            }
            (!mine.is_empty()).then_some(mine)
        })
        .await;
    // its cable is pulled: after the grace period its jobs run elsewhere
    lan.cut(victim);
    let done = wait_final(&client, &ids, Duration::from_secs(120)).await;
    for j in &done {
        assert_eq!(j["state"], "SUCCEEDED", "{j}");
        if on_victim.contains(&j["id"].as_str().unwrap().to_owned()) {
            assert_ne!(j["node"], json!(victim_id), "finished elsewhere: {j}");
            let first = &j["attempts"][0]["outcome"];
            assert!(first.as_str().unwrap().starts_with("lost"), "{j}");
        }
    }
    // plugged back in, it is a healthy worker again, with the same identity
    lan.heal(victim);
    wait_alive(
        &client,
        &[victim_id.as_str()],
        "the victim is back",
        Duration::from_secs(60),
    )
    .await;
    // and the attempts it finished while cut off changed nothing: each job succeeded once
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        let j = job(&client, id).await;
        let succeeded = j["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["outcome"] == "succeeded")
            .count();
        assert_eq!(succeeded, 1, "{j}");
    }
}

/// Each job's attempts that succeeded.
fn successes(job: &serde_json::Value) -> usize {
    job["attempts"].as_array().map_or(0, |a| {
        a.iter().filter(|a| a["outcome"] == "succeeded").count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_powered_off_with_jobs_in_flight_loses_nothing() {
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    let lan = Lan::new(3);
    let mut agents: Vec<Agent> = (0..3).map(|i| Agent::on_lan(&lan, i, 2, &[])).collect();
    let lead = wait_for_leader(&agents);
    agents[lead].wait_ready(3).await;
    wait_for_voters(&agents[lead], 3).await;
    let ids: Vec<String> = agents.iter().map(|a| a.node_id()).collect();
    let client = agents[lead].client();
    let term_before = client.get("/api/v1/leader").await.unwrap()["term"]
        .as_u64()
        .unwrap();

    // work that finished before the power cut, and work still running or queued at it
    let mut finished = Vec::new();
    for i in 0..2 {
        finished.push(
            enqueue(
                &client,
                "echo",
                json!({"message": format!("early {i}")}),
                "",
            )
            .await,
        );
    }
    wait_final(&client, &finished, Duration::from_secs(60)).await;
    let mut in_flight = Vec::new();
    for i in 0..9 {
        in_flight.push(enqueue(&client, "sleep", json!({"ms": 3000 + i}), "").await);
    }
    wait_until_async(
        "jobs run on every host",
        Duration::from_secs(60),
        || async {
            let mut nodes = std::collections::BTreeSet::new();
            for id in &in_flight {
                let j = job(&client, id).await;
                if j["state"] == "RUNNING" {
                    nodes.insert(j["node"].as_str()?.to_owned());
                }
            }
            (nodes.len() == 3).then_some(())
        },
    )
    .await;

    lan.power_off(lead, &ids[lead]);
    agents[lead].kill9();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != lead).collect();
    let new_lead = wait_for_raft_leader(&agents, &survivors, Duration::from_secs(30)).await;
    let client = agents[new_lead].client();
    let view = client.get("/api/v1/leader").await.unwrap();
    assert!(view["term"].as_u64().unwrap() > term_before, "{view}");
    // the surviving workers reconnect to the new broker by themselves
    let survivor_ids: Vec<&str> = survivors.iter().map(|&i| ids[i].as_str()).collect();
    wait_alive(
        &client,
        &survivor_ids,
        "the survivors are healthy workers",
        Duration::from_secs(30),
    )
    .await;
    // a follower asked by the operator says where the orchestrator is, and the CLI's
    // client goes there
    let follower = survivors.iter().copied().find(|&i| i != new_lead).unwrap();
    let token = agents[new_lead].operator_token();
    let refused = reqwest::Client::new()
        .get(format!("{}/api/v1/nodes", agents[follower].url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let why = refused.text().await.unwrap();
    assert!(why.contains(&agents[new_lead].url()), "{why}");
    let followed = Client::new(&agents[follower].url(), Some(token))
        .get("/api/v1/nodes")
        .await
        .expect("the client follows the 503 to the orchestrator");
    assert!(
        followed
            .as_array()
            .is_some_and(|nodes| nodes.iter().any(|n| n["id"] == json!(ids[new_lead]))),
        "{followed}"
    );
    let gql = client
        .graphql("{ cluster { leader term voters } }", json!({}))
        .await
        .unwrap();
    assert_eq!(gql["cluster"]["leader"], json!(ids[new_lead]), "{gql}");

    // everything acknowledged is there; the queued and the interrupted work ran; what had
    // finished did not run again
    let all: Vec<String> = finished.iter().chain(&in_flight).cloned().collect();
    let done = wait_final(&client, &all, Duration::from_secs(120)).await;
    for j in &done {
        assert_eq!(j["state"], "SUCCEEDED", "{j}");
        assert_eq!(successes(j), 1, "succeeded once: {j}");
    }
    for j in &done[..finished.len()] {
        assert_eq!(j["attempts"].as_array().unwrap().len(), 1, "ran once: {j}");
    }
    let listed = client.get("/api/v1/jobs").await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), all.len(), "{listed}");

    // powered on again, the old leader rejoins as a follower: still one orchestrator
    agents[lead].restart();
    wait_alive(
        &client,
        &[ids[lead].as_str()],
        "the old leader is back as a worker",
        Duration::from_secs(60),
    )
    .await;
    let all_hosts: Vec<usize> = (0..3).collect();
    assert_eq!(
        wait_for_raft_leader(&agents, &all_hosts, Duration::from_secs(30)).await,
        new_lead
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_with_a_minority_stops_and_the_majority_carries_on() {
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    let lan = Lan::new(3);
    let agents: Vec<Agent> = (0..3).map(|i| Agent::on_lan(&lan, i, 1, &[])).collect();
    let lead = wait_for_leader(&agents);
    agents[lead].wait_ready(3).await;
    wait_for_voters(&agents[lead], 3).await;
    let ids: Vec<String> = agents.iter().map(|a| a.node_id()).collect();
    let client = agents[lead].client();
    let before = enqueue(&client, "echo", json!({"message": "before"}), "").await;
    wait_final(
        &client,
        std::slice::from_ref(&before),
        Duration::from_secs(60),
    )
    .await;
    let operator_token = agents[lead].operator_token();

    lan.cut(lead);
    // the cut-off side refuses writes, saying why, and runs no orchestrator
    let submit_there = || {
        lan.command(lead, env!("CARGO_BIN_EXE_kraken"))
            .args(["job", "submit", "echo", "--spec", r#"{"message":"lost?"}"#])
            .args(["--api", "http://127.0.0.1:8080", "--token", &operator_token])
            .output()
            .unwrap()
    };
    let refused = wait_until(
        "the cut-off leader refuses writes",
        Duration::from_secs(20),
        || {
            let out = submit_there();
            (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
        },
    );
    assert!(refused.contains("no quorum"), "{refused}");
    // the majority elects a leader of its own, which takes work
    let majority: Vec<usize> = (0..3).filter(|&i| i != lead).collect();
    let new_lead = wait_for_raft_leader(&agents, &majority, Duration::from_secs(30)).await;
    let client = agents[new_lead].client();
    let during = enqueue(&client, "echo", json!({"message": "during"}), "").await;
    assert_eq!(
        wait_final(
            &client,
            std::slice::from_ref(&during),
            Duration::from_secs(60)
        )
        .await[0]["state"],
        "SUCCEEDED"
    );
    let still_refused = submit_there();
    assert!(!still_refused.status.success(), "never two orchestrators");

    // healed: one cluster, one orchestrator, and nothing acknowledged is lost
    lan.heal(lead);
    let all_hosts: Vec<usize> = (0..3).collect();
    let leader = wait_for_raft_leader(&agents, &all_hosts, Duration::from_secs(30)).await;
    assert_eq!(
        leader, new_lead,
        "the healed node does not depose the leader"
    );
    let client = agents[leader].client();
    for id in [&before, &during] {
        assert_eq!(job(&client, id).await["state"], "SUCCEEDED");
    }
    wait_alive(
        &client,
        &[ids[lead].as_str()],
        "the healed node is a worker again",
        Duration::from_secs(60),
    )
    .await;
    let log = agents[lead].log();
    assert!(log.contains("this node no longer leads"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_founded_alone_while_unplugged_joins_the_lans_cluster() {
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    let lan = Lan::new(3);
    // host2's cable is out at its first boot: it founds a cluster of its own
    lan.cut(2);
    let agents: Vec<Agent> = (0..3).map(|i| Agent::on_lan(&lan, i, 1, &[])).collect();
    wait_until("both sides founded", Duration::from_secs(30), || {
        (agents[2].leads() && (agents[0].leads() || agents[1].leads())).then_some(())
    });
    let lead = wait_for_raft_leader(&agents, &[0, 1], Duration::from_secs(30)).await;
    agents[lead].wait_ready(2).await;
    let cluster = agents[lead].client().get("/api/v1/cluster").await.unwrap()["id"].clone();

    // plugged in, it finds the bigger cluster, gives its empty one up and joins
    lan.heal(2);
    agents[lead].wait_ready(3).await;
    let log = agents[2].log();
    assert!(
        log.contains("another cluster was founded at the same moment"),
        "{log}"
    );
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agents[2].data_dir().join("membership.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["cluster"], cluster);
    let all: Vec<usize> = (0..3).collect();
    assert_eq!(
        wait_for_raft_leader(&agents, &all, Duration::from_secs(30)).await,
        lead,
        "one cluster, one orchestrator"
    );
    let client = agents[lead].client();
    let id = enqueue(&client, "echo", json!({"message": "one"}), "").await;
    assert_eq!(
        wait_final(&client, &[id], Duration::from_secs(60)).await[0]["state"],
        "SUCCEEDED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_voter_is_replaced_and_the_cluster_still_survives_its_leader() {
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    let lan = Lan::new(4);
    let grace = [("KRAKEN_CLUSTER_VOTER_GRACE_MS", "4000")];
    let mut agents: Vec<Agent> = (0..4).map(|i| Agent::on_lan(&lan, i, 1, &grace)).collect();
    let lead = wait_for_leader(&agents);
    agents[lead].wait_ready(4).await;
    wait_for_voters(&agents[lead], 3).await;
    let ids: Vec<String> = agents.iter().map(|a| a.node_id()).collect();
    let public = Client::new(&agents[lead].url(), None);
    let voters = |view: &serde_json::Value| -> Vec<String> {
        view["voters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let before = voters(&public.get("/api/v1/leader").await.unwrap());
    let spare = (0..4).find(|&i| !before.contains(&ids[i])).unwrap();
    let dead = (0..4)
        .find(|&i| i != lead && before.contains(&ids[i]))
        .unwrap();

    // a voter dies for good: after the grace the spare node votes in its place
    lan.power_off(dead, &ids[dead]);
    agents[dead].kill9();
    wait_until_async(
        "the spare replaces the dead voter",
        Duration::from_secs(60),
        || async {
            let now = voters(&public.get("/api/v1/leader").await.ok()?);
            (now.len() == 3 && now.contains(&ids[spare]) && !now.contains(&ids[dead])).then_some(())
        },
    )
    .await;
    assert!(agents[lead].log().contains("replacing a silent voter"));

    // so the cluster still survives its leader's death
    lan.power_off(lead, &ids[lead]);
    agents[lead].kill9();
    let left: Vec<usize> = (0..4).filter(|&i| i != lead && i != dead).collect();
    let new_lead = wait_for_raft_leader(&agents, &left, Duration::from_secs(30)).await;
    let client = agents[new_lead].client();
    let id = enqueue(&client, "echo", json!({"message": "still"}), "").await;
    assert_eq!(
        wait_final(&client, &[id], Duration::from_secs(60)).await[0]["state"],
        "SUCCEEDED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_cluster_on_the_lan_is_ignored_and_a_pending_device_is_approved() {
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    let lan = Lan::new(3);
    let closed = [("KRAKEN_ORCHESTRATOR_ENROLLMENT_SECS", "0")];
    // cluster B: host2, founded while unplugged, then rebooted (no longer a new cluster)
    lan.cut(2);
    let mut b = Agent::on_lan(&lan, 2, 1, &closed);
    wait_until("B founded", Duration::from_secs(30), || {
        b.leads().then_some(())
    });
    b.restart();
    // cluster A: host0, with work done (not an empty new cluster either)
    let mut agents = vec![Agent::on_lan(&lan, 0, 1, &closed)];
    agents[0].wait_ready(1).await;
    let client = agents[0].client();
    let job_id = enqueue(&client, "echo", json!({"message": "A"}), "").await;
    wait_final(&client, &[job_id], Duration::from_secs(60)).await;
    let a_cluster = client.get("/api/v1/cluster").await.unwrap()["id"].clone();
    lan.heal(2);
    b.wait_ready(1).await;
    let b_client = b.client();
    let b_cluster = b_client.get("/api/v1/cluster").await.unwrap()["id"].clone();
    assert_ne!(a_cluster, b_cluster);

    // a new device sees two clusters, both closed: it waits at both; A's operator approves
    agents.push(Agent::on_lan(&lan, 1, 1, &[]));
    let id = agents[1].node_id();
    for c in [&client, &b_client] {
        wait_until_async("the device is pending", Duration::from_secs(60), || async {
            let e = c.get("/api/v1/enrollment").await.ok()?;
            e["pending"]
                .as_array()?
                .iter()
                .any(|p| p["node_id"] == json!(id))
                .then_some(())
        })
        .await;
    }
    client
        .post(&format!("/api/v1/nodes/{id}/approve"), &json!({}))
        .await
        .unwrap();
    wait_alive(
        &client,
        &[id.as_str()],
        "the device works in A",
        Duration::from_secs(60),
    )
    .await;
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agents[1].data_dir().join("membership.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["cluster"], a_cluster);

    // after a reboot it comes back to A, and says it ignores B
    agents[1].restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_alive(
        &client,
        &[id.as_str()],
        "the device is back in A",
        Duration::from_secs(60),
    )
    .await;
    let nodes = b_client.get("/api/v1/nodes").await.unwrap();
    assert!(
        !nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == json!(id)),
        "never in B: {nodes}"
    );
    let log = agents[1].log();
    assert!(
        log.contains("ignoring the orchestrator of another cluster"),
        "{log}"
    );
}

/// Apps live through their orchestrator's death: the new leader finds the deployment in the
/// replicated store as it was, and the worker serving it keeps the very same container,
/// neither built nor started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_keeps_serving_through_a_failover() {
    use common::apps::{containers_of, create, deployment, fetch, fixture, wait_status, GitServer};
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    let lan = Lan::new(3);
    let bridge = lan.bridge_address();
    let git = GitServer::start_at(lan.root(), &bridge);
    let url = git.publish("kept", &fixture("static-site", 8089));
    // the containers' ports are published on the bridge address, where the agents reach them
    let env = [("KRAKEN_WORKER_APP_BACKEND_ADDRESS", bridge.as_str())];
    let mut agents: Vec<Agent> = (0..3).map(|i| Agent::on_lan(&lan, i, 1, &env)).collect();
    let lead = wait_for_leader(&agents);
    agents[lead].wait_ready(3).await;
    wait_for_voters(&agents[lead], 3).await;
    let ids: Vec<String> = agents.iter().map(|a| a.node_id()).collect();
    let client = agents[lead].client();
    // the leader is drained, so the app runs on a worker that outlives it
    client
        .graphql(
            "mutation($id: String!) { drainNode(id: $id) }",
            json!({ "id": ids[lead] }),
        )
        .await
        .unwrap();
    let d = create(&client, &url, "").await;
    let id = d["id"].as_str().unwrap().to_owned();
    let d = wait_status(
        &client,
        &id,
        &["RUNNING", "FAILED"],
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(d["status"], "RUNNING", "{d}");
    assert_ne!(d["node"], json!(ids[lead]), "not on the drained leader");
    let serving = containers_of(&id);
    assert_eq!(serving.len(), 1, "{serving:?}");

    lan.power_off(lead, &ids[lead]);
    agents[lead].kill9();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != lead).collect();
    let new_lead = wait_for_raft_leader(&agents, &survivors, Duration::from_secs(30)).await;
    let client = agents[new_lead].client();
    let after = wait_until_async(
        "the new orchestrator answers for the app",
        Duration::from_secs(30),
        || async {
            let q = "query($id: ID!) { deployment(id: $id) { status node generation url } }";
            client.graphql(q, json!({ "id": id })).await.ok()
        },
    )
    .await;
    let after = &after["deployment"];
    assert_eq!(after["status"], "RUNNING", "{after}");
    assert_eq!(after["node"], d["node"]);
    assert_eq!(after["generation"], d["generation"]);
    let page = fetch(after["url"].as_str().unwrap()).await;
    assert!(
        page.is_some_and(|p| p.contains("hello from a static site")),
        "it serves on"
    );
    // several heartbeats on: the same container, nothing placed again
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(containers_of(&id), serving);
    let settled = deployment(&client, &id).await;
    assert_eq!(settled["generation"], d["generation"], "{settled}");
    assert_eq!(settled["status"], "RUNNING", "{settled}");
}

/// The NetKAN pipeline lives through its orchestrator's death: mods asked for just before
/// the leader is powered off are inflated and committed by the new leader, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netkan_work_asked_of_a_dying_leader_is_committed_once_by_the_next() {
    use common::apps::GitServer;
    use common::netkan::{publish_repositories, subjects};
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    const MODS: usize = 12;
    let lan = Lan::new(3);
    let bridge = lan.bridge_address();
    // the upstream hosts and the repositories, where the hosts and their containers reach them
    let up = upstream::Upstream::start_on(&bridge).await;
    let git = GitServer::start_at(lan.root(), &bridge);
    let (netkan_url, meta_url, bare_meta) =
        publish_repositories(&git, (0..MODS).map(|n| up.generated_mod(n)));
    let api = format!("{}/gh-api", up.base);
    let web = format!("{}/gh-web", up.base);
    // every agent may come to lead, so every one knows the pipeline's settings
    let env = [
        ("KRAKEN_NETKAN_REPO_URL", netkan_url.as_str()),
        ("KRAKEN_NETKAN_META_URL", meta_url.as_str()),
        ("KRAKEN_NETKAN_SCHEDULE_SECS", "0"),
        ("KRAKEN_NETKAN_INFLATE_BATCH", "2"),
        ("KRAKEN_GITHUB_API", api.as_str()),
        ("KRAKEN_GITHUB_WEB", web.as_str()),
    ];
    let mut agents: Vec<Agent> = (0..3).map(|i| Agent::on_lan(&lan, i, 1, &env)).collect();
    let lead = wait_for_leader(&agents);
    agents[lead].wait_ready(3).await;
    wait_for_voters(&agents[lead], 3).await;
    let ids: Vec<String> = agents.iter().map(|a| a.node_id()).collect();
    let all: Vec<String> = (0..MODS).map(|n| format!("Gen{n}")).collect();
    let asked = agents[lead]
        .client()
        .post("/inflate", &json!(all))
        .await
        .unwrap();
    assert_eq!(
        asked["jobs"].as_array().map(Vec::len),
        Some(MODS / 2),
        "{asked}"
    );

    // the leader dies with the work just asked
    lan.power_off(lead, &ids[lead]);
    agents[lead].kill9();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != lead).collect();
    let new_lead = wait_for_raft_leader(&agents, &survivors, Duration::from_secs(30)).await;
    let expected: Vec<String> = (0..MODS)
        .map(|n| format!("NetKAN added mod - Gen{n}-1.{n}"))
        .collect();
    wait_until("every mod is committed", Duration::from_secs(120), || {
        let s = subjects(&bare_meta);
        expected.iter().all(|e| s.contains(e)).then_some(())
    });
    // a few moments on: nothing was committed twice
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = subjects(&bare_meta);
    let netkan: Vec<&String> = s.iter().filter(|s| s.starts_with("NetKAN ")).collect();
    assert_eq!(netkan.len(), MODS, "each mod once: {netkan:?}");
    let p = agents[new_lead]
        .client()
        .graphql(
            "{ netkanPipeline { indexQueue inflateQueuedMods } }",
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        p["netkanPipeline"],
        json!({"indexQueue": 0, "inflateQueuedMods": 0})
    );
    assert!(
        agents[new_lead].log().contains("indexed"),
        "the new leader wrote the commits"
    );
}
