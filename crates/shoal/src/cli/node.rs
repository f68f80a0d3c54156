//! `shoal node ls|inspect|update|promote|demote|rm`.

use std::io::Write;

use clap::Subcommand;
use serde::Serialize;
use serde_json::json;
use shoal_agent::api::views::Node;

use super::client::Client;
use super::flags::Availability;
use super::{Format, Listing, out, print_json, title};

/// `shoal node`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes in the swarm
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Output format: table, json (one object per line), or a template such as '{{.Hostname}}'
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Display detailed information on one or more nodes
    Inspect {
        /// Print in a human-friendly format
        #[arg(long)]
        pretty: bool,
        /// Node ids, id prefixes or hostnames
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Update a node
    Update {
        /// Add or update a node label (KEY or KEY=VALUE)
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a node label
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        /// Availability of the node
        #[arg(long)]
        availability: Option<Availability>,
        /// Node id, id prefix or hostname
        node: String,
    },
    /// Promote one or more nodes to manager
    Promote {
        /// Nodes
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Demote one or more nodes from manager
    Demote {
        /// Nodes
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove one or more nodes from the swarm
    Rm {
        /// Remove even if the node is not down
        #[arg(short, long)]
        force: bool,
        /// Nodes
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// A `node ls` row, with the field names of `docker node ls --format`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Self")]
    is_self: bool,
    hostname: String,
    status: String,
    availability: String,
    manager_status: String,
    engine_version: String,
    #[serde(rename = "TLSStatus")]
    tls_status: String,
}

impl From<&Node> for Row {
    fn from(n: &Node) -> Row {
        Row {
            id: n.id.clone(),
            is_self: n.is_self,
            hostname: n.description.hostname.clone(),
            status: n.status.state.title().to_owned(),
            availability: title(&enum_text(&n.spec.availability)),
            manager_status: match &n.manager_status {
                None => String::new(),
                Some(m) if m.leader => "Leader".into(),
                Some(_) => "Reachable".into(),
            },
            engine_version: n.description.engine.engine_version.clone(),
            tls_status: "Ready".into(),
        }
    }
}

/// The serde name of a unit enum value (`drain`).
fn enum_text(value: &impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Runs a `node` verb.
pub fn run(client: &Client, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Ls { quiet, format } => {
            let nodes: Vec<Node> = client.get("/v1/nodes")?;
            if quiet {
                for n in &nodes {
                    writeln!(out(), "{}", n.id)?;
                }
                return Ok(());
            }
            let listing = Listing {
                rows: nodes.iter().map(Row::from).collect(),
                headers: &["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"],
                cells: |r: &Row| {
                    vec![
                        format!("{}{}", r.id, if r.is_self { " *" } else { "" }),
                        r.hostname.clone(),
                        r.status.clone(),
                        r.availability.clone(),
                        r.manager_status.clone(),
                        r.engine_version.clone(),
                    ]
                },
            };
            listing.print(&format)?;
        }
        NodeCommand::Inspect { pretty, nodes } => {
            let mut all = Vec::new();
            for name in &nodes {
                all.push(client.get::<Node>(&format!("/v1/nodes/{name}"))?);
            }
            if !pretty {
                return print_json(&all);
            }
            let mut o = out();
            for n in &all {
                let d = &n.description;
                writeln!(o, "ID:\t\t\t{}", n.id)?;
                writeln!(o, "Hostname:\t\t{}", d.hostname)?;
                writeln!(o, "Joined at:\t\t{}", n.created_at)?;
                writeln!(o, "Status:")?;
                writeln!(o, " State:\t\t\t{}", n.status.state.title())?;
                writeln!(o, " Availability:\t\t{}", title(&enum_text(&n.spec.availability)))?;
                writeln!(o, " Address:\t\t{}", n.status.addr)?;
                if !n.spec.labels.is_empty() {
                    writeln!(o, "Labels:")?;
                    for (k, v) in &n.spec.labels {
                        writeln!(o, " - {k}={v}")?;
                    }
                }
                writeln!(o, "Platform:")?;
                writeln!(o, " Operating System:\t{}", d.platform.os)?;
                writeln!(o, " Architecture:\t\t{}", d.platform.architecture)?;
                writeln!(o, "Resources:")?;
                writeln!(o, " CPUs:\t\t\t{}", d.resources.nano_cpus / 1_000_000_000)?;
                writeln!(o, " Memory:\t\t{} MiB", d.resources.memory_bytes >> 20)?;
                writeln!(o, "Engine Version:\t\t{}", d.engine.engine_version)?;
            }
        }
        NodeCommand::Update { label_add, label_rm, availability, node } => {
            let availability = availability.map(shoal_control::Availability::from);
            let body = json!({ "label_add": label_add, "label_rm": label_rm, "availability": availability });
            client.call("POST", &format!("/v1/nodes/{node}/update"), Some(&body))?;
            writeln!(out(), "{node}")?;
        }
        NodeCommand::Promote { nodes } => role_change(client, &nodes, "manager")?,
        NodeCommand::Demote { nodes } => role_change(client, &nodes, "worker")?,
        NodeCommand::Rm { force, nodes } => {
            for n in &nodes {
                client.call("POST", &format!("/v1/nodes/{n}/remove"), Some(&json!({ "force": force })))?;
                writeln!(out(), "{n}")?;
            }
        }
    }
    Ok(())
}

fn role_change(client: &Client, nodes: &[String], role: &str) -> anyhow::Result<()> {
    for n in nodes {
        client.call("POST", &format!("/v1/nodes/{n}/update"), Some(&json!({ "role": role })))?;
        writeln!(out(), "Node {n} is now a {role} in the swarm.")?;
    }
    Ok(())
}
