//! `shoal lab up|ls|exec|down`: a whole cluster on one machine, each node a
//! network namespace running its own `shoal daemon`, like kind for
//! Kubernetes. Labs outlive the command that made them; their state is in
//! `/run/shoal/labs/<name>/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use shoal_lab::Lab;

use super::client::Client;

const LABS: &str = "/run/shoal/labs";

/// `shoal lab`.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab of N nodes, start a daemon on each, init the swarm on node1 and join the rest
    Up {
        /// Number of nodes
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Hosts on the same underlay that run no daemon (client1, ...): machines outside the swarm
        #[arg(long, default_value_t = 0)]
        clients: usize,
        /// Lab name
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// List labs
    Ls,
    /// Run a command inside a lab node (with SHOAL_HOST pointing at its daemon) or client
    Exec {
        /// Lab name
        #[arg(long, default_value = "lab")]
        name: String,
        /// Node (node1, node2, ...) or client (client1, ...)
        node: String,
        /// The command, after `--`
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop a lab's daemons and delete everything it made
    Down {
        /// Lab name
        #[arg(default_value = "lab")]
        name: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct LabRecord {
    name: String,
    netns_prefix: String,
    nodes: Vec<NodeRecord>,
    /// Hosts without a daemon.
    #[serde(default)]
    clients: Vec<ClientRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClientRecord {
    name: String,
    netns: String,
    underlay: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeRecord {
    name: String,
    netns: String,
    underlay: String,
    socket: PathBuf,
    pid: u32,
}

fn dir(name: &str) -> PathBuf {
    Path::new(LABS).join(name)
}

fn load(name: &str) -> anyhow::Result<LabRecord> {
    let path = dir(name).join("lab.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("no lab named {name}: see `shoal lab ls`, or create it with `shoal lab up --name {name}`")
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged: `shoal lab down {name}` removes it", path.display()))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 24
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "invalid lab name {name:?}: use 1-24 characters from a-z, 0-9 and -"
    );
    Ok(())
}

/// Runs a `lab` verb.
pub fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Up { nodes, clients, name } => up(nodes, clients, &name),
        LabCommand::Ls => ls(),
        LabCommand::Exec { name, node, command } => exec(&name, &node, &command),
        LabCommand::Down { name } => down(&name),
    }
}

fn up(nodes: usize, clients: usize, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    ensure!((1..=50).contains(&nodes), "a lab has 1 to 50 nodes, not {nodes}");
    ensure!(clients <= 10, "a lab has at most 10 clients, not {clients}");
    let state = dir(name);
    ensure!(!state.exists(), "lab {name} exists already: `shoal lab down {name}` removes it");
    let prefix = format!("shoal-lab-{name}");
    let lab = Lab::named(&prefix, nodes + clients).with_context(|| format!("build lab {name}"))?;
    std::fs::create_dir_all(&state)?;
    let exe = std::env::current_exe().context("find the shoal binary")?;
    let mut record = LabRecord {
        name: name.to_owned(),
        netns_prefix: prefix.clone(),
        nodes: Vec::new(),
        clients: lab.hosts()[nodes..]
            .iter()
            .enumerate()
            .map(|(i, host)| ClientRecord {
                name: format!("client{}", i + 1),
                netns: host.netns.clone(),
                underlay: host.underlay.to_string(),
            })
            .collect(),
    };
    let mut children = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for (i, host) in lab.hosts()[..nodes].iter().enumerate() {
            let node = format!("node{}", i + 1);
            let socket = state.join(format!("{node}.sock"));
            let log = std::fs::File::create(state.join(format!("{node}.log")))?;
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/run/netns/{}", host.netns))
                .arg("--")
                .arg(&exe)
                .args([
                    "daemon",
                    "--advertise-addr",
                    &host.underlay.to_string(),
                    "--hostname",
                    &node,
                    "--task-prefix",
                    &host.netns,
                    // A lab is torn down whole: its tasks go with its daemons.
                    "--live-restore=false",
                    "--data-dir",
                ])
                .arg(state.join(format!("{node}.data")))
                .arg("--socket")
                .arg(&socket)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd.spawn().context("start shoal daemon")?;
            let pid = child.id();
            children.push(child);
            record.nodes.push(NodeRecord {
                name: node,
                netns: host.netns.clone(),
                underlay: host.underlay.to_string(),
                socket,
                pid,
            });
        }
        std::fs::write(state.join("lab.json"), serde_json::to_vec_pretty(&record)?)?;
        for (node, child) in record.nodes.iter().zip(children.iter_mut()) {
            wait_for_daemon(node, child)?;
        }
        let manager = Client::new(&format!("unix://{}", record.nodes[0].socket.display()))?;
        manager.call("POST", "/v1/swarm/init", Some(&serde_json::json!({})))?;
        let token = manager.call("GET", "/v1/swarm/join-token/worker", None)?;
        let token = token["token"].as_str().context("join token")?;
        let remote = format!("{}:2377", record.nodes[0].underlay);
        for node in &record.nodes[1..] {
            let client = Client::new(&format!("unix://{}", node.socket.display()))?;
            client.call(
                "POST",
                "/v1/swarm/join",
                Some(&serde_json::json!({ "token": token, "remote_addr": remote })),
            )?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let pids: Vec<u32> = record.nodes.iter().map(|n| n.pid).collect();
        drop(lab);
        Lab::remove(&prefix, &pids, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&state);
        return Err(e.context(format!("lab {name} could not be brought up; nothing is left of it")));
    }
    lab.keep();
    let mut out = std::io::stdout().lock();
    writeln!(out, "Lab {name} is up: {nodes} nodes, node1 is the manager, the others joined as workers.")?;
    for c in &record.clients {
        writeln!(out, "{} is a host outside the swarm at {}.", c.name, c.underlay)?;
    }
    writeln!(
        out,
        "Try:  shoal lab exec{} node1 -- shoal node ls",
        if name == "lab" { String::new() } else { format!(" --name {name}") }
    )?;
    writeln!(out, "Then: shoal lab down{}", if name == "lab" { String::new() } else { format!(" {name}") })?;
    Ok(())
}

fn wait_for_daemon(node: &NodeRecord, child: &mut std::process::Child) -> anyhow::Result<()> {
    let client = Client::new(&format!("unix://{}", node.socket.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if client.call("GET", "/v1/swarm", None).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the daemon of {} exited ({status}): see {}",
                node.name,
                node.socket.with_extension("log").display()
            );
        }
        if !Path::new(&format!("/proc/{}", node.pid)).exists() {
            bail!("the daemon of {} exited: see its log next to {}", node.name, node.socket.display());
        }
        if Instant::now() > deadline {
            bail!("the daemon of {} did not answer within 20 s", node.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ls() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<24} {:<6} RUNNING", "NAME", "NODES")?;
    let Ok(entries) = std::fs::read_dir(LABS) else { return Ok(()) };
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    for name in names {
        if let Ok(lab) = load(&name) {
            let running =
                lab.nodes.iter().filter(|n| Path::new(&format!("/proc/{}", n.pid)).exists()).count();
            writeln!(out, "{:<24} {:<6} {running}", lab.name, lab.nodes.len())?;
        }
    }
    Ok(())
}

fn exec(name: &str, node: &str, command: &[String]) -> anyhow::Result<()> {
    let lab = load(name)?;
    let mut cmd = Command::new("nsenter");
    if let Some(n) = lab.nodes.iter().find(|n| n.name == node) {
        cmd.arg(format!("--net=/run/netns/{}", n.netns))
            .env("SHOAL_HOST", format!("unix://{}", n.socket.display()));
    } else if let Some(c) = lab.clients.iter().find(|c| c.name == node) {
        cmd.arg(format!("--net=/run/netns/{}", c.netns));
    } else {
        let names: Vec<&str> = lab
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(lab.clients.iter().map(|c| c.name.as_str()))
            .collect();
        bail!("lab {name} has no node {node}: its nodes are {}", names.join(", "));
    }
    let status = cmd.arg("--").args(command).status().with_context(|| format!("run {}", command[0]))?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

fn down(name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let lab = load(name)?;
    let pids: Vec<u32> = lab.nodes.iter().map(|n| n.pid).collect();
    Lab::remove(&lab.netns_prefix, &pids, Duration::from_secs(10));
    std::fs::remove_dir_all(dir(name))?;
    writeln!(std::io::stdout().lock(), "Lab {name} removed.")?;
    Ok(())
}
