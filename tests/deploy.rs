//! App deployments end to end: a real agent (orchestrator and worker), real git repositories
//! served by `git daemon` on loopback, real image builds and containers on the real dockerd.

mod common;

use common::apps::*;
use common::lan::Lan;
use common::*;
use serde_json::json;

use std::process::Command;
use std::time::Duration;

/// A static site and a Python app, each from its git repository through the mutation, are
/// built, started, health-checked and served at the URL the API gives; their build and run
/// output is kept with them; stopping one removes its container and it stops answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_site_and_a_python_app_are_deployed_and_served() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let git = GitServer::start(root.path());
    let (site_port, py_port) = (free_port(false), free_port(false));
    let site = git.publish("site", &fixture("static-site", site_port));
    let py = git.publish("py", &fixture("python", py_port));
    let orch = Agent::orchestrator(root.path(), 1, &[]);
    orch.wait_ready(1).await;
    let client = orch.client();

    // every change of the site, as it happens
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let ws_url = format!("ws://127.0.0.1:{}/graphql/ws", orch.api_port);
    let events = tokio::spawn(collect_events(
        ws_url,
        orch.operator_token(),
        "subscription { deploymentEvents { id app status } }",
        "deploymentEvents",
        ready_tx,
        |evs| evs.iter().filter(|e| e["status"] == "RUNNING").count() >= 2,
    ));
    ready_rx.await.unwrap();

    let s = create(&client, &site, "").await;
    let p = create(&client, &py, ", branch: \"main\"").await;
    let (sid, pid) = (s["id"].as_str().unwrap(), p["id"].as_str().unwrap());
    let cold = Duration::from_secs(600);
    let s = wait_status(&client, sid, &["RUNNING", "FAILED"], cold).await;
    assert_eq!(s["status"], "RUNNING", "static site: {s}");
    assert_eq!(s["app"], "hello-site");
    assert_eq!(s["node"], orch.node_id());
    assert_eq!(s["commit"].as_str().map(str::len), Some(40));
    let url = s["url"]
        .as_str()
        .expect("a running app has a URL")
        .to_owned();
    assert!(url.ends_with(&format!(":{site_port}/")), "{url}");
    let page = fetch(&url).await.expect("the site answers at its URL");
    assert!(
        page.contains("hello from a static site, version 1"),
        "{page}"
    );

    let p = wait_status(&client, pid, &["RUNNING", "FAILED"], cold).await;
    assert_eq!(p["status"], "RUNNING", "python app: {p}");
    let url = p["url"].as_str().unwrap().to_owned();
    let text = fetch(&url).await.expect("the python app answers");
    assert_eq!(text.trim(), format!("hello from python on port {py_port}"));

    // the subscription saw the site go through its states, in order
    let events = tokio::time::timeout(Duration::from_secs(30), events)
        .await
        .expect("the subscription saw both apps run")
        .unwrap();
    let site_states: Vec<&str> = events
        .iter()
        .filter(|e| e["id"] == sid)
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    let order = ["REQUESTED", "BUILDING", "STARTING", "RUNNING"];
    let mut last = 0;
    for state in &site_states {
        let at = order
            .iter()
            .position(|s| s == state)
            .expect("a known state");
        assert!(at >= last, "states in order: {site_states:?}");
        last = at;
    }
    for state in &order[1..] {
        assert!(site_states.contains(state), "{state} seen: {site_states:?}");
    }

    // an app that does not speak HTTP (`health = "running"`) is healthy while it stays up,
    // and its port carries its own protocol
    let echo_port = free_port(false);
    let echo = git.publish("echo", &fixture("tcp-echo", echo_port));
    let e = create(&client, &echo, "").await;
    let e = wait_status(
        &client,
        e["id"].as_str().unwrap(),
        &["RUNNING", "FAILED"],
        cold,
    )
    .await;
    assert_eq!(e["status"], "RUNNING", "tcp echo: {e}");
    {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", echo_port))
            .await
            .expect("the echo app's port is open");
        conn.write_all(b"ping over tcp\n").await.unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(conn)
            .read_line(&mut line)
            .await
            .unwrap();
        assert_eq!(line, "ping over tcp\n");
    }

    // build and run output, for the operator
    // (log lines travel apart from the status: they may come a moment later)
    let q = "query($id: ID!) { deployment(id: $id) { log { text } } }";
    let log = wait_until_async(
        "the log says the app is healthy",
        Duration::from_secs(10),
        || async {
            let data = client.graphql(q, json!({ "id": pid })).await.ok()?;
            let log: String = data["deployment"]["log"]
                .as_array()?
                .iter()
                .map(|l| format!("{}\n", l["text"].as_str().unwrap_or("")))
                .collect();
            log.contains("healthy").then_some(log)
        },
    )
    .await;
    assert!(log.contains("cloning git://127.0.0.1"), "{log}");
    assert!(
        log.contains("Step 1/"),
        "the build's output is there: {log}"
    );

    // the CLI lists both
    let out = Command::new(env!("CARGO_BIN_EXE_kraken"))
        .args([
            "app",
            "list",
            "--api",
            &orch.url(),
            "--token",
            &orch.operator_token(),
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listed.contains("hello-site") && listed.contains("hello-python"),
        "{listed}"
    );

    // stopped: the container goes and the URL stops answering
    let q = "mutation($id: ID!) { stopDeployment(id: $id) { status } }";
    let data = client.graphql(q, json!({ "id": sid })).await.unwrap();
    assert_eq!(data["stopDeployment"]["status"], "STOPPED");
    wait_until(
        "the stopped site's container is gone",
        Duration::from_secs(30),
        || containers_of(sid).is_empty().then_some(()),
    );
    assert!(fetch(&format!("http://127.0.0.1:{site_port}/"))
        .await
        .is_none());
    assert_eq!(containers_of(pid).len(), 1, "the other app runs on");
}

/// Each bad deployment ends FAILED with a reason that says what is wrong, and the cluster
/// runs the good one next to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deployments_fail_with_the_reason() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let git = GitServer::start(root.path());
    let orch = Agent::orchestrator(root.path(), 1, &[]);
    orch.wait_ready(1).await;
    let client = orch.client();

    // refused at once: not a URL a worker may clone, a bad branch, a negative size
    for (args, says) in [
        (json!({"url": "file:///etc"}), "not a git URL"),
        (json!({"url": "/srv/app"}), "not a git URL"),
    ] {
        let q = "mutation($url: String!) { createDeployment(gitUrl: $url) { id } }";
        let err = client.graphql(q, args).await.unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
    let q =
        "mutation { createDeployment(gitUrl: \"git://127.0.0.1/x.git\", branch: \"a..b\") { id } }";
    let err = client.graphql(q, json!({})).await.unwrap_err().to_string();
    assert!(err.contains("not a valid git branch name"), "{err}");

    let port = free_port(false);
    let no_manifest = git.publish("nomanifest", &[("index.html", "hi".into())]);
    let mut unknown = fixture("static-site", port);
    for f in unknown.iter_mut().filter(|f| f.0 == "kraken.toml") {
        f.1 = f.1.replace("static-site", "cobol");
    }
    let unknown = git.publish("unknown", &unknown);
    let mut failing = fixture("static-site", free_port(false));
    for f in failing.iter_mut().filter(|f| f.0 == "kraken.toml") {
        f.1.push_str("\ntest = \"echo the tests fail; exit 3\"\n");
    }
    let failing = git.publish("failing", &failing);
    // a port something else on the node listens on
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let clash = git.publish("clash", &fixture("static-site", taken_port));
    // an app that exits at once, every time Docker restarts it
    let mut crashing = fixture("python", free_port(false));
    for f in crashing.iter_mut().filter(|f| f.0 == "kraken.toml") {
        f.1 = f.1.replace(
            "run = \"python3 app.py\"",
            "run = \"echo starting; exit 3\"",
        );
    }
    let crashing = git.publish("crashing", &crashing);
    let dead = format!("git://127.0.0.1:{}/gone.git", free_port(false));
    let missing = format!("git://127.0.0.1:{}/missing.git", git.port);

    let cases = [
        (create(&client, &dead, "").await, "cannot clone"),
        (create(&client, &missing, "").await, "cannot clone"),
        (create(&client, &no_manifest, "").await, "kraken.toml"),
        (create(&client, &unknown, "").await, "cobol"),
        (create(&client, &failing, "").await, "the build failed"),
        (create(&client, &clash, "").await, "already in use"),
        (
            create(&client, &crashing, "").await,
            "kept exiting (code 3)",
        ),
        (
            create(&client, &no_manifest, ", memoryMb: 1000000").await,
            "the largest node has",
        ),
    ];
    for (d, says) in &cases {
        let id = d["id"].as_str().unwrap();
        let d = wait_status(
            &client,
            id,
            &["FAILED", "RUNNING"],
            Duration::from_secs(600),
        )
        .await;
        assert_eq!(d["status"], "FAILED", "{d}");
        let reason = d["reason"].as_str().unwrap_or("");
        assert!(reason.contains(says), "{says:?} not in {reason:?}");
        assert!(
            containers_of(id).is_empty(),
            "nothing left running for {id}"
        );
    }
    // the cluster is fine: a good deployment next to them runs
    let good = git.publish("good", &fixture("static-site", port));
    let d = create(&client, &good, "").await;
    let d = wait_status(
        &client,
        d["id"].as_str().unwrap(),
        &["RUNNING", "FAILED"],
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(d["status"], "RUNNING", "{d}");
}

/// What a powered-off device loses here: its app containers and their images (they live on
/// this machine's shared dockerd).
fn remove_containers_of_node(node: &str) {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=kraken.app-node={node}"),
        ])
        .args(["--format", "{{.ID}} {{.Image}}"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.split_whitespace();
        if let (Some(c), Some(image)) = (parts.next(), parts.next()) {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

/// Two apps on a cluster of two workers land one on each (the least-loaded); the worker of
/// one is killed (its device powered off: its containers go too) and that app comes back on
/// the other worker; the orchestrator restarts and adopts the containers still running
/// instead of starting them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_spread_move_off_a_dead_worker_and_survive_a_restart() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let git = GitServer::start(root.path());
    let grace = [("KRAKEN_ORCHESTRATOR_GRACE_MS", "3000")];
    let mut orch = Agent::orchestrator(root.path(), 1, &grace);
    let mut w1 = Agent::worker(root.path(), "w1", &orch, 1, &grace);
    orch.wait_ready(2).await;
    let client = orch.client();
    let (pa, pb) = (free_port(false), free_port(false));
    let a = git.publish("a", &fixture("static-site", pa));
    let b = git.publish("b", &fixture("static-site", pb));
    let a = create(&client, &a, "").await;
    let b = create(&client, &b, "").await;
    let within = Duration::from_secs(600);
    let a = wait_status(
        &client,
        a["id"].as_str().unwrap(),
        &["RUNNING", "FAILED"],
        within,
    )
    .await;
    let b = wait_status(
        &client,
        b["id"].as_str().unwrap(),
        &["RUNNING", "FAILED"],
        within,
    )
    .await;
    assert_eq!(
        (a["status"].as_str(), b["status"].as_str()),
        (Some("RUNNING"), Some("RUNNING"))
    );
    assert_ne!(a["node"], b["node"], "one app on each worker: {a} {b}");

    // the worker of one of them dies with its containers
    let (on_w1, on_orch) = if a["node"] == w1.node_id() {
        (a, b)
    } else {
        (b, a)
    };
    let w1_id = w1.node_id();
    w1.kill9();
    remove_containers_of_node(&w1_id);
    let id = on_w1["id"].as_str().unwrap();
    let moved = wait_until_async("the app is back on the other worker", within, || async {
        let d = deployment(&client, id).await;
        (d["status"] == "RUNNING" && d["node"] == orch.node_id()).then_some(d)
    })
    .await;
    assert!(moved["generation"].as_i64() > on_w1["generation"].as_i64());
    let url = moved["url"].as_str().unwrap();
    assert!(fetch(url)
        .await
        .unwrap()
        .contains("hello from a static site"));

    // an orchestrator restart adopts what runs
    let before: Vec<String> = [id, on_orch["id"].as_str().unwrap()]
        .iter()
        .flat_map(|id| containers_of(id))
        .collect();
    assert_eq!(before.len(), 2);
    // an app image of this node that nothing uses (a build cut off, say) goes at the start
    let orphan = "kraken-app-orphan:0123456789ab-1";
    labelled_base_image(
        orphan,
        &[
            ("kraken.app-node", orch.node_id()),
            ("kraken.deployment", uuid::Uuid::now_v7().to_string()),
            ("kraken.generation", "1".into()),
        ],
    );
    orch.restart();
    orch.wait_ready(1).await;
    let client = orch.client();
    for d in [&moved, &on_orch] {
        let now = deployment(&client, d["id"].as_str().unwrap()).await;
        assert_eq!(now["status"], "RUNNING", "{now}");
        assert_eq!(now["generation"], d["generation"]);
        assert!(fetch(now["url"].as_str().unwrap()).await.is_some());
    }
    // a few heartbeats later, still the same containers: none started again, none stopped
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after: Vec<String> = [id, on_orch["id"].as_str().unwrap()]
        .iter()
        .flat_map(|id| containers_of(id))
        .collect();
    assert_eq!(before, after, "the running containers were adopted");
    let gone = |image: &str| {
        !Command::new("docker")
            .args(["image", "inspect", image])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(gone(orphan), "the unused app image was removed");
    assert!(
        !gone("debian:bookworm-slim"),
        "the base image below it stays"
    );
}

/// A redeploy on a new commit: the new version is built and takes over the app's port only
/// once healthy, so a client polling the URL throughout never fails; a redeploy whose build
/// fails leaves the running version serving and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_has_no_downtime_and_a_failed_one_keeps_the_old_version() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let git = GitServer::start(root.path());
    let port = free_port(false);
    let files = fixture("static-site", port);
    let url = git.publish("site", &files);
    let orch = Agent::orchestrator(root.path(), 1, &[]);
    orch.wait_ready(1).await;
    let client = orch.client();
    let d = create(&client, &url, "").await;
    let id = d["id"].as_str().unwrap().to_owned();
    let within = Duration::from_secs(600);
    let v1 = wait_status(&client, &id, &["RUNNING", "FAILED"], within).await;
    assert_eq!(v1["status"], "RUNNING", "{v1}");
    let app_url = v1["url"].as_str().unwrap().to_owned();

    // poll the URL throughout the redeploy
    let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let (polling, app_url) = (polling.clone(), app_url.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed, mut v2) = (0u32, 0u32, false);
            while polling.load(std::sync::atomic::Ordering::Relaxed) {
                match fetch(&app_url).await {
                    Some(page) => {
                        ok += 1;
                        v2 |= page.contains("version 2");
                    }
                    None => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ok, failed, v2)
        })
    };
    let mut v2_files = files.clone();
    for f in v2_files.iter_mut().filter(|f| f.0 == "index.html") {
        f.1 = f.1.replace("version 1", "version 2");
    }
    git.publish("site", &v2_files);
    let q = "mutation($id: ID!) { redeploy(id: $id) { generation } }";
    client.graphql(q, json!({ "id": id })).await.unwrap();
    wait_until_async("version 2 serves", within, || async {
        fetch(&app_url).await.filter(|p| p.contains("version 2"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    polling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, v2) = poller.await.unwrap();
    assert!(v2 && ok > 10, "the poller saw version 2 ({ok} answers)");
    assert_eq!(
        failed, 0,
        "no request failed during the redeploy ({ok} answered)"
    );
    let now = wait_status(&client, &id, &["RUNNING"], within).await;
    assert_ne!(now["commit"], v1["commit"]);
    assert_eq!(now["url"], v1["url"], "same URL");
    wait_until("the old container is gone", Duration::from_secs(30), || {
        (containers_of(&id).len() == 1).then_some(())
    });

    // a broken version: the build fails, version 2 serves on
    let mut broken = v2_files.clone();
    for f in broken.iter_mut().filter(|f| f.0 == "kraken.toml") {
        f.1.push_str("\ntest = \"exit 1\"\n");
    }
    git.publish("site", &broken);
    client.graphql(q, json!({ "id": id })).await.unwrap();
    let kept = wait_until_async("the failed redeploy is reported", within, || async {
        let d = deployment(&client, &id).await;
        d["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the new version failed"))
            .then_some(d)
    })
    .await;
    assert_eq!(kept["status"], "RUNNING", "{kept}");
    assert!(fetch(&app_url).await.unwrap().contains("version 2"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(containers_of(&id).len(), 1, "version 2 still runs, alone");
    assert!(fetch(&app_url).await.unwrap().contains("version 2"));
}

/// With `autoRedeploy`, a new commit on the branch is deployed by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_commit_is_deployed_by_itself_with_auto_redeploy() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let git = GitServer::start(root.path());
    let files = fixture("static-site", free_port(false));
    let url = git.publish("auto", &files);
    let orch = Agent::orchestrator(
        root.path(),
        1,
        &[("KRAKEN_ORCHESTRATOR_APP_POLL_MS", "1000")],
    );
    orch.wait_ready(1).await;
    let client = orch.client();
    let d = create(&client, &url, ", autoRedeploy: true").await;
    let id = d["id"].as_str().unwrap().to_owned();
    let within = Duration::from_secs(600);
    let v1 = wait_status(&client, &id, &["RUNNING", "FAILED"], within).await;
    assert_eq!(v1["status"], "RUNNING", "{v1}");
    let mut v2 = files.clone();
    for f in v2.iter_mut().filter(|f| f.0 == "index.html") {
        f.1 = f.1.replace("version 1", "version 2");
    }
    git.publish("auto", &v2);
    let app_url = v1["url"].as_str().unwrap().to_owned();
    wait_until_async("the new commit serves", within, || async {
        fetch(&app_url).await.filter(|p| p.contains("version 2"))
    })
    .await;
    let now = wait_status(&client, &id, &["RUNNING"], within).await;
    assert_eq!(now["generation"], 2);
    assert_ne!(now["commit"], v1["commit"]);
}

/// On a test LAN (network namespaces, a bridge, real multicast) the app a worker serves is
/// published as `<app>.local`: a third-party mDNS client (avahi) on another host resolves it
/// to the worker's address, and the app answers there on its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_is_reachable_on_the_lan_by_its_name() {
    if !real_parts_present() || !common::lan::lan_tools_present() {
        return;
    }
    let mut lan = Lan::new(2);
    let bridge = lan.bridge_address();
    let git = GitServer::start_at(lan.root(), &bridge);
    let url = git.publish("named", &fixture("static-site", 8088));
    // the containers' ports are published on this machine's bridge address, where the
    // agent in its namespace reaches them
    let env = [("KRAKEN_WORKER_APP_BACKEND_ADDRESS", bridge.as_str())];
    let agent = Agent::on_lan(&lan, 0, 1, &env);
    agent.wait_ready(1).await;
    let client = agent.client();
    let d = create(&client, &url, "").await;
    let id = d["id"].as_str().unwrap();
    let d = wait_status(
        &client,
        id,
        &["RUNNING", "FAILED"],
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(d["status"], "RUNNING", "{d}");
    assert_eq!(d["url"], format!("http://{}:8088/", lan.ip(0)));
    let page = fetch(d["url"].as_str().unwrap())
        .await
        .expect("the app answers on the LAN");
    assert!(page.contains("hello from a static site"));

    let bus = lan.start_avahi(1);
    let resolved = wait_until(
        "avahi resolves hello-site.local",
        Duration::from_secs(30),
        || {
            let out = lan
                .command(1, "avahi-resolve")
                .args(["-4", "-n", "hello-site.local"])
                .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains(&lan.ip(0)).then_some(text)
        },
    );
    assert!(resolved.starts_with("hello-site.local"), "{resolved}");
    let browsed = lan
        .command(1, "avahi-browse")
        .args(["-rtp", "_http._tcp"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&browsed.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("=;") && l.contains("hello-site") && l.contains(";8088;")),
        "{text}"
    );
}

/// Where apps may run: a deployment asking for a label or an architecture goes to a node
/// that has it (and fails at once, saying what the cluster has, when none does); a drained
/// node gets no new apps or jobs and its apps move; a deployment with nowhere to go waits,
/// saying why, and is placed when a node is back in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_architectures_and_drains_decide_where_apps_run() {
    if !real_parts_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let git = GitServer::start(root.path());
    let orch = Agent::orchestrator(root.path(), 1, &[]);
    let w1 = Agent::worker(
        root.path(),
        "w1",
        &orch,
        1,
        &[("KRAKEN_WORKER_LABELS", "ssd, kitchen")],
    );
    orch.wait_ready(2).await;
    let client = orch.client();
    let (orch_id, w1_id) = (orch.node_id(), w1.node_id());
    let nodes = client
        .graphql("{ nodes { id drained stats { arch labels } } }", json!({}))
        .await
        .unwrap();
    let w1_view = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == json!(w1_id))
        .cloned()
        .unwrap();
    assert_eq!(w1_view["stats"]["labels"], json!(["ssd", "kitchen"]));
    assert_eq!(w1_view["stats"]["arch"], std::env::consts::ARCH);
    assert_eq!(w1_view["drained"], false);

    let within = Duration::from_secs(600);
    let (pa, pb) = (free_port(false), free_port(false));
    let site_a = git.publish("a", &fixture("static-site", pa));
    let site_b = git.publish("b", &fixture("static-site", pb));
    // asks for a label only w1 has
    let a = create(&client, &site_a, ", label: \"ssd\"").await;
    let a_id = a["id"].as_str().unwrap().to_owned();
    let a = wait_status(&client, &a_id, &["RUNNING", "FAILED"], within).await;
    assert_eq!(a["status"], "RUNNING", "{a}");
    assert_eq!(a["node"], json!(w1_id));

    // a label or an architecture no node has fails at once and says what there is
    let gpu = create(&client, &site_a, ", label: \"gpu\"").await;
    let gpu = wait_status(&client, gpu["id"].as_str().unwrap(), &["FAILED"], within).await;
    let why = gpu["reason"].as_str().unwrap();
    assert!(why.contains("no node is labelled `gpu`"), "{why}");
    assert!(why.contains("kitchen, ssd"), "{why}");
    let other = if std::env::consts::ARCH == "riscv64" {
        "aarch64"
    } else {
        "riscv64"
    };
    let far = create(&client, &site_a, &format!(", arch: \"{other}\"")).await;
    let far = wait_status(&client, far["id"].as_str().unwrap(), &["FAILED"], within).await;
    assert!(
        far["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("no node is of arch {other}")),
        "{far}"
    );
    // and what cannot be a label or an architecture is refused by the mutation
    for (extra, words) in [
        (", arch: \"sparc\"", "arch `sparc`"),
        (", label: \"two words\"", "`two words` is not a label"),
    ] {
        let q =
            format!("mutation($url: String!) {{ createDeployment(gitUrl: $url{extra}) {{ id }} }}");
        let err = client
            .graphql(&q, json!({ "url": site_a }))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(words), "{err}");
    }

    // b goes where there are fewer apps: the orchestrator's own worker
    let b = create(&client, &site_b, "").await;
    let b_id = b["id"].as_str().unwrap().to_owned();
    let b = wait_status(&client, &b_id, &["RUNNING", "FAILED"], within).await;
    assert_eq!(b["node"], json!(orch_id), "{b}");

    // draining the orchestrator's node moves b to w1, and jobs go there too
    let drain = |id: String, on: bool| {
        let client = &client;
        async move {
            client
                .graphql(
                    "mutation($id: String!, $on: Boolean!) { drainNode(id: $id, drain: $on) }",
                    json!({ "id": id, "on": on }),
                )
                .await
        }
    };
    assert_eq!(
        drain(orch_id.clone(), true).await.unwrap()["drainNode"],
        true
    );
    let moved = wait_until_async("b moves off the drained node", within, || async {
        let d = deployment(&client, &b_id).await;
        (d["status"] == "RUNNING" && d["node"] == json!(w1_id)).then_some(d)
    })
    .await;
    assert!(fetch(moved["url"].as_str().unwrap())
        .await
        .unwrap()
        .contains("hello from a static site"));
    wait_until(
        "the drained node's copy is stopped",
        Duration::from_secs(60),
        || (containers_of(&b_id).len() == 1).then_some(()),
    );
    let job = enqueue(&client, "echo", json!({"message": "where"}), "").await;
    let done = wait_final(&client, std::slice::from_ref(&job), Duration::from_secs(60)).await;
    assert_eq!(done[0]["node"], json!(w1_id), "no jobs on a drained node");

    // with every node drained, a new app waits and says why; back in service, it runs
    assert_eq!(drain(w1_id.clone(), true).await.unwrap()["drainNode"], true);
    let site_c = git.publish("c", &fixture("static-site", free_port(false)));
    let c = create(&client, &site_c, ", label: \"kitchen\"").await;
    let c_id = c["id"].as_str().unwrap().to_owned();
    let waiting = wait_until_async("c waits, saying why", Duration::from_secs(30), || async {
        let d = deployment(&client, &c_id).await;
        d["reason"]
            .as_str()
            .is_some_and(|r| r.contains("undrained") && r.contains("labelled `kitchen`"))
            .then_some(d)
    })
    .await;
    assert_eq!(waiting["status"], "REQUESTED", "{waiting}");
    assert_eq!(
        drain(w1_id.clone(), false).await.unwrap()["drainNode"],
        false
    );
    let c = wait_status(&client, &c_id, &["RUNNING", "FAILED"], within).await;
    assert_eq!(c["node"], json!(w1_id), "{c}");
    let err = drain("n0nexistent".into(), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no node `n0nexistent`"), "{err}");
}
