//! The `kraken` command: parses the command line, sets up logging and config, and hands over
//! to the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kraken::client::Client;
use kraken::config::{Config, Overrides};
use serde_json::{json, Value};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "kraken",
    version,
    about = "A self-organizing cluster agent for a home LAN"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// The orchestrator's API.
    #[arg(long, env = "KRAKEN_API_URL", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// The operator token (default: read from the data dir).
    #[arg(long, env = "KRAKEN_OPERATOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data dir holding the operator token.
    #[arg(long, env = "KRAKEN_NODE_DATA_DIR", default_value = "/var/lib/kraken")]
    data_dir: PathBuf,
}

impl ApiArgs {
    fn client(&self) -> Client {
        let token = self.token.clone().or_else(|| {
            std::fs::read_to_string(self.data_dir.join("operator-token"))
                .ok()
                .map(|t| t.trim().to_owned())
        });
        Client::new(&self.api, token)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (orchestrator and/or worker).
    Agent {
        /// Config file (default: ./kraken.toml when present).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        api_port: Option<u16>,
        #[arg(long)]
        amqp_port: Option<u16>,
        /// The orchestrator's API URL to join.
        #[arg(long)]
        join: Option<String>,
        /// The cluster join token (`kraken token` on the orchestrator).
        #[arg(long, env = "KRAKEN_JOIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Jobs this node runs at once (0: orchestrate only).
        #[arg(long)]
        slots: Option<u32>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the cluster join token (or the operator token).
    Token {
        #[arg(long, env = "KRAKEN_NODE_DATA_DIR", default_value = "/var/lib/kraken")]
        data_dir: PathBuf,
        /// Print the operator token instead.
        #[arg(long)]
        operator: bool,
    },
    /// List the cluster's nodes and the devices waiting for approval; approve devices.
    Nodes {
        #[command(subcommand)]
        command: Option<NodesCommand>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Submit, inspect and run jobs.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// The NetKAN mod-index pipeline.
    Netkan {
        #[command(subcommand)]
        command: NetkanCommand,
    },
    /// Deploy the app of a git repository (its kraken.toml says how) on the cluster.
    Deploy {
        git_url: String,
        #[arg(long, default_value = "main")]
        branch: String,
        /// Memory the app may use, MiB (default 256).
        #[arg(long)]
        memory_mb: Option<u32>,
        /// Deploy new commits of the branch by themselves.
        #[arg(long)]
        auto_redeploy: bool,
        /// Only on a node with this label (its `worker.labels`).
        #[arg(long)]
        label: Option<String>,
        /// Only on a node of this CPU architecture (x86_64, aarch64, arm).
        #[arg(long)]
        arch: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Apps deployed on the cluster.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
}

#[derive(Subcommand)]
enum AppCommand {
    /// Check an app's manifest (kraken.toml at the repository's root) and print what it says.
    Check {
        /// The app's checkout.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// List the deployments.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Build the branch's newest commit and switch to it once healthy.
    Redeploy {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop an app and remove its container and image.
    Stop {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print an app's build and run output.
    Logs {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// The deployment fields the CLI prints.
const DEPLOYMENT_FIELDS: &str =
    "id app status reason node url commit generation gitUrl branch autoRedeploy label arch";

#[derive(Subcommand)]
enum NodesCommand {
    /// Admit a device that is waiting for approval.
    Approve { id: String },
    /// Drain a node: no new jobs or apps go there, its jobs finish, its apps move.
    Drain {
        id: String,
        /// Put the node back in service instead.
        #[arg(long)]
        undo: bool,
    },
    /// Admit new devices by themselves for a while (0 closes the window).
    Enroll {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
}

#[derive(Subcommand)]
enum NetkanCommand {
    /// Inflate .netkan files into .ckan files, here, one after the other, and print each
    /// outcome (exit status 1 when any failed).
    Inflate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The highest version already indexed (for the out-of-order check).
        #[arg(long)]
        highest_version: Option<String>,
        #[arg(long, default_value = "KSP")]
        game_id: String,
        /// Where to write `<identifier>-<version>.ckan` (default: the current directory).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Config file with the upstream URLs (default: ./kraken.toml when present).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Inflate mods of the orchestrator's NetKAN repository on the cluster; prints the jobs.
    Enqueue {
        #[arg(required = true)]
        identifiers: Vec<String>,
        /// Ahead of jobs with a lower priority.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Enqueue a job.
    Submit {
        kind: String,
        /// The job's spec, JSON.
        #[arg(long, default_value = "{}")]
        spec: String,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Run inside the worker process (kinds that allow it).
        #[arg(long)]
        in_process: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one job.
    Get {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List jobs.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a job's log.
    Log {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a job.
    Cancel {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Run the job described by KRAKEN_JOB_KIND and KRAKEN_JOB_SPEC (inside a job container).
    Run,
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // colours for a terminal; none in files and the journal
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

#[rocket::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Agent {
            config,
            data_dir,
            api_port,
            amqp_port,
            join,
            token,
            slots,
            name,
        } => {
            let overrides = Overrides {
                data_dir,
                api_port,
                amqp_port,
                join_url: join,
                join_token: token,
                slots,
                name,
            };
            let config = Config::load(config.as_deref(), std::env::vars(), &overrides)
                .context("invalid configuration")?;
            init_tracing(&config.node.log);
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                signal.cancel();
            });
            kraken::agent::run(config, shutdown).await?;
        }
        Command::Netkan {
            command:
                NetkanCommand::Inflate {
                    files,
                    highest_version,
                    game_id,
                    out,
                    config,
                },
        } => {
            let config = Config::load(config.as_deref(), std::env::vars(), &Overrides::default())
                .context("invalid configuration")?;
            init_tracing(&config.node.log);
            let fetcher = kraken::netkan::Fetcher::from_config(&config)?;
            let mut failed = false;
            for file in files {
                let opts = kraken::netkan::Options {
                    highest_version: highest_version.clone(),
                    game_id: Some(game_id.clone()),
                    prereleases: config.netkan.prereleases,
                    file_name: None,
                };
                let outcome = kraken::netkan::inflate_file(&fetcher, &file, opts, &out).await?;
                let mut shown = serde_json::to_value(&outcome)?;
                if let Some(o) = shown.as_object_mut() {
                    o.remove("Ckan");
                }
                print(&shown);
                failed |= !outcome.success;
            }
            if failed {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Netkan {
            command:
                NetkanCommand::Enqueue {
                    identifiers,
                    priority,
                    api,
                },
        } => {
            let data = api
                .client()
                .graphql(
                    "mutation($ids: [String!]!, $p: Int!) { enqueueInflate(identifiers: $ids, priority: $p) { id } }",
                    json!({ "ids": identifiers, "p": priority }),
                )
                .await?;
            for job in data["enqueueInflate"].as_array().into_iter().flatten() {
                println!("{}", job["id"].as_str().unwrap_or_default());
            }
        }
        Command::Token { data_dir, operator } => {
            let file = if operator {
                "operator-token"
            } else {
                "cluster-token"
            };
            let path = data_dir.join(file);
            let token = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read {} (is this the orchestrator's data dir?)",
                    path.display()
                )
            })?;
            println!("{}", token.trim());
        }
        Command::Nodes {
            command: Some(NodesCommand::Approve { id }),
            api,
        } => {
            let device = api
                .client()
                .post(&format!("/api/v1/nodes/{id}/approve"), &json!({}))
                .await?;
            println!(
                "approved {id} ({}); it joins at its next try",
                device["name"].as_str().unwrap_or_default()
            );
        }
        Command::Nodes {
            command: Some(NodesCommand::Drain { id, undo }),
            api,
        } => {
            api.client()
                .post(
                    &format!("/api/v1/nodes/{id}/drain"),
                    &json!({ "drain": !undo }),
                )
                .await?;
            if undo {
                println!("{id} is back in service");
            } else {
                println!("{id} is drained: nothing new goes there, its apps move to other workers");
            }
        }
        Command::Nodes {
            command: Some(NodesCommand::Enroll { seconds }),
            api,
        } => {
            let e = api
                .client()
                .post("/api/v1/enrollment", &json!({ "seconds": seconds }))
                .await?;
            match e["remaining_secs"].as_u64() {
                Some(left) => println!("new devices are admitted by themselves for {left} s"),
                None => println!("enrollment closed: new devices wait for approval"),
            }
        }
        Command::Nodes { command: None, api } => {
            let nodes = api.client().get("/api/v1/nodes").await?;
            println!(
                "{:<14} {:<16} {:<18} {:<6} {:>5} {:>7} {:>6} {:>9}",
                "ID", "NAME", "ROLE", "ALIVE", "SLOTS", "RUNNING", "LOAD1", "MEM MiB"
            );
            for n in nodes.as_array().into_iter().flatten() {
                let s = |k: &str| {
                    n.get(k)
                        .map(|v| {
                            v.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .unwrap_or_default()
                };
                let stats = n.get("stats").cloned().unwrap_or(Value::Null);
                println!(
                    "{:<14} {:<16} {:<18} {:<6} {:>5} {:>7} {:>6.2} {:>9}",
                    s("id"),
                    s("name"),
                    if n["drained"] == true {
                        format!("{} (drained)", s("role"))
                    } else {
                        s("role")
                    },
                    s("alive"),
                    s("slots"),
                    s("running_jobs"),
                    stats.get("load1").and_then(|v| v.as_f64()).unwrap_or(0.0),
                    stats
                        .get("memory_used_mb")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                );
            }
            // devices on the LAN that are not in this cluster: newcomers, other clusters
            let cluster = api.client().get("/api/v1/cluster").await?;
            let raft = &cluster["raft"];
            if let Some(leader) = raft["leader"].as_str() {
                let voters: Vec<&str> = raft["voters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .collect();
                println!(
                    "
leader {leader} (term {}), voters {}; {}",
                    raft["term"],
                    voters.join(", "),
                    if raft["failover"] == true {
                        "it survives the orchestrator's death"
                    } else {
                        "no failover with fewer than 3 voters"
                    }
                );
            }
            let members: Vec<&str> = nodes
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["id"].as_str())
                .collect();
            let strangers: Vec<&Value> = cluster["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| !members.contains(&d["node"].as_str().unwrap_or_default()))
                .collect();
            if !strangers.is_empty() {
                println!("\nother devices in view over mDNS:");
                for d in strangers {
                    let cluster = d["cluster"].as_str().unwrap_or_default();
                    println!(
                        "{:<14} {:<13} {:<10} {}",
                        d["node"].as_str().unwrap_or_default(),
                        d["role"].as_str().unwrap_or_default(),
                        if cluster.is_empty() {
                            "(none)"
                        } else {
                            cluster
                        },
                        d["addresses"][0].as_str().unwrap_or_default()
                    );
                }
            }
            let e = api.client().get("/api/v1/enrollment").await?;
            let pending = e["pending"].as_array().cloned().unwrap_or_default();
            if !pending.is_empty() {
                println!("\nwaiting for approval (`kraken nodes approve ID`):");
                for p in pending {
                    println!(
                        "{:<14} {:<16} {}",
                        p["node_id"].as_str().unwrap_or_default(),
                        p["name"].as_str().unwrap_or_default(),
                        p["address"].as_str().unwrap_or_default()
                    );
                }
            }
            match e["remaining_secs"].as_u64() {
                Some(left) => println!(
                    "\nenrollment open: new devices are admitted by themselves for {left} s"
                ),
                None => println!("\nenrollment closed (`kraken nodes enroll` reopens it)"),
            }
        }
        Command::Job { command } => return job_command(command).await,
        Command::Deploy {
            git_url,
            branch,
            memory_mb,
            auto_redeploy,
            label,
            arch,
            api,
        } => {
            let q = format!(
                "mutation($url: String!, $branch: String!, $mem: Int, $auto: Boolean!, $label: String, $arch: String) {{ \
                 createDeployment(gitUrl: $url, branch: $branch, memoryMb: $mem, autoRedeploy: $auto, label: $label, arch: $arch) \
                 {{ {DEPLOYMENT_FIELDS} }} }}"
            );
            let vars = json!({ "url": git_url, "branch": branch, "mem": memory_mb, "auto": auto_redeploy, "label": label, "arch": arch });
            print(&api.client().graphql(&q, vars).await?["createDeployment"]);
        }
        Command::App {
            command: AppCommand::List { api },
        } => {
            let q = format!("{{ deployments {{ {DEPLOYMENT_FIELDS} }} }}");
            print(&api.client().graphql(&q, json!({})).await?["deployments"]);
        }
        Command::App {
            command: AppCommand::Redeploy { id, api },
        } => {
            let q = format!("mutation($id: ID!) {{ redeploy(id: $id) {{ {DEPLOYMENT_FIELDS} }} }}");
            print(&api.client().graphql(&q, json!({ "id": id })).await?["redeploy"]);
        }
        Command::App {
            command: AppCommand::Stop { id, api },
        } => {
            let q = format!(
                "mutation($id: ID!) {{ stopDeployment(id: $id) {{ {DEPLOYMENT_FIELDS} }} }}"
            );
            print(&api.client().graphql(&q, json!({ "id": id })).await?["stopDeployment"]);
        }
        Command::App {
            command: AppCommand::Logs { id, api },
        } => {
            let q = "query($id: ID!) { deployment(id: $id) { log { stream text } } }";
            let data = api.client().graphql(q, json!({ "id": id })).await?;
            let Some(lines) = data["deployment"]["log"].as_array() else {
                eprintln!("no deployment {id}");
                return Ok(std::process::ExitCode::FAILURE);
            };
            for l in lines {
                println!("{}", l["text"].as_str().unwrap_or_default());
            }
        }
        Command::App {
            command: AppCommand::Check { dir },
        } => match kraken::deploy::manifest::Manifest::read(&dir) {
            Ok(m) => print(&json!({
                "name": m.name,
                "version": m.version,
                "author": m.author,
                "endpoint": m.endpoint,
                "port": m.port,
                "lang": m.lang.as_str(),
                "dockerfile": m.lang.dockerfile().unwrap_or_else(|| "Dockerfile (the app's own)".into()),
                "test": m.test,
                "run": m.run,
            })),
            Err(error) => {
                eprintln!("{}: {error}", dir.display());
                return Ok(std::process::ExitCode::FAILURE);
            }
        },
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn job_command(command: JobCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        JobCommand::Submit {
            kind,
            spec,
            priority,
            max_attempts,
            in_process,
            api,
        } => {
            let spec: Value = serde_json::from_str(&spec).context("--spec is not JSON")?;
            let mut body = json!({ "kind": kind, "spec": spec, "priority": priority });
            if let Some(n) = max_attempts {
                body["max_attempts"] = json!(n);
            }
            if in_process {
                body["isolation"] = json!("IN_PROCESS");
            }
            let job = api.client().post("/api/v1/jobs", &body).await?;
            println!(
                "{}",
                job.get("id").and_then(|v| v.as_str()).unwrap_or_default()
            );
        }
        JobCommand::Get { id, api } => {
            print(&api.client().get(&format!("/api/v1/jobs/{id}")).await?)
        }
        JobCommand::List { status, kind, api } => {
            let mut q = vec![];
            if let Some(s) = status {
                q.push(format!("status={s}"));
            }
            if let Some(k) = kind {
                q.push(format!("kind={k}"));
            }
            let jobs = api
                .client()
                .get(&format!("/api/v1/jobs?{}", q.join("&")))
                .await?;
            for j in jobs.as_array().into_iter().flatten() {
                let s = |k: &str| j.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
                println!(
                    "{}  {:<10} {:<10} {}",
                    s("id"),
                    s("kind"),
                    s("state"),
                    s("node")
                );
            }
        }
        JobCommand::Log { id, api } => match api.client().get(&format!("/log/{id}")).await? {
            Value::String(text) => print!("{text}"),
            other => print(&other),
        },
        JobCommand::Cancel { id, api } => print(
            &api.client()
                .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
                .await?,
        ),
        JobCommand::Run => {
            let code = kraken::jobs::run_from_env().await;
            if code != 0 {
                return Ok(std::process::ExitCode::from(code as u8));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
