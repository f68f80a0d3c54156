//! `shoal network create|ls|inspect|rm`.

use std::io::Write;

use clap::Subcommand;
use serde::Serialize;
use serde_json::json;
use shoal_agent::api::views::Network;

use super::client::Client;
use super::{Format, LabelFilter, Listing, out, print_json, short};

/// `shoal network`.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network
    Create {
        /// Driver: overlay
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Subnet in CIDR form (default: the next free /24 of the swarm's pool)
        #[arg(long)]
        subnet: Option<String>,
        /// Let standalone tasks attach
        #[arg(long)]
        attachable: bool,
        /// Set metadata on a network (KEY=VALUE)
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Network name
        name: String,
    },
    /// List networks
    Ls {
        /// Filter output (name=NAME, label=KEY[=VALUE])
        #[arg(short, long)]
        filter: Vec<String>,
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate the output
        #[arg(long)]
        no_trunc: bool,
        /// Output format: table, json (one object per line), or a template such as '{{.Name}}'
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Display detailed information on one or more networks
    Inspect {
        /// Also list the network's services, their VIPs and tasks
        #[arg(short, long)]
        verbose: bool,
        /// Network names or ids
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove one or more networks
    Rm {
        /// Network names or ids
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// A `network ls` row, with the field names of `docker network ls --format`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    driver: String,
    scope: String,
    #[serde(rename = "IPv6")]
    ipv6: String,
    internal: String,
    labels: String,
    created_at: String,
}

/// `network ls` filters: `name=` (a part of the name, as docker's) and
/// `label=KEY[=VALUE]`.
#[derive(Debug, Default)]
struct Filter {
    name: Vec<String>,
    label: LabelFilter,
}

impl Filter {
    fn parse(filters: &[String]) -> anyhow::Result<Filter> {
        let mut f = Filter::default();
        for text in filters {
            match text.split_once('=') {
                Some(("name", v)) => f.name.push(v.to_owned()),
                Some(("label", v)) if f.label.add(v) => {}
                _ => anyhow::bail!("invalid filter {text:?}: use name=NAME or label=KEY[=VALUE]"),
            }
        }
        Ok(f)
    }

    fn admits(&self, n: &Network) -> bool {
        (self.name.is_empty() || self.name.iter().any(|p| n.name.contains(p.as_str())))
            && self.label.admits(&n.labels)
    }
}

/// Runs a `network` verb.
pub fn run(client: &Client, command: NetworkCommand) -> anyhow::Result<()> {
    match command {
        NetworkCommand::Create { driver, subnet, attachable, labels, name } => {
            let labels = super::parse_labels(&labels);
            let body = json!({
                "name": name, "driver": driver, "subnet": subnet, "attachable": attachable, "labels": labels,
            });
            let network: Network = client.post("/v1/networks", &body)?;
            writeln!(out(), "{}", network.id)?;
        }
        NetworkCommand::Ls { filter, quiet, no_trunc, format } => {
            let filter = Filter::parse(&filter)?;
            let mut list: Vec<Network> = client.get("/v1/networks")?;
            list.retain(|n| filter.admits(n));
            let id = |n: &Network| if no_trunc { n.id.clone() } else { short(&n.id).to_owned() };
            if quiet {
                for n in &list {
                    writeln!(out(), "{}", id(n))?;
                }
                return Ok(());
            }
            let rows = list
                .iter()
                .map(|n| Row {
                    id: id(n),
                    name: n.name.clone(),
                    driver: n.driver.clone(),
                    scope: n.scope.clone(),
                    ipv6: "false".into(),
                    internal: "false".into(),
                    labels: n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                    created_at: n.created.clone(),
                })
                .collect();
            let listing = Listing {
                rows,
                headers: &["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                cells: |r: &Row| vec![r.id.clone(), r.name.clone(), r.driver.clone(), r.scope.clone()],
            };
            listing.print(&format)?;
        }
        NetworkCommand::Inspect { verbose, networks } => {
            let mut all = Vec::new();
            for name in &networks {
                all.push(client.get::<Network>(&format!("/v1/networks/{name}?verbose={verbose}"))?);
            }
            print_json(&all)?;
        }
        NetworkCommand::Rm { networks } => {
            for name in &networks {
                client.call("DELETE", &format!("/v1/networks/{name}"), None)?;
                writeln!(out(), "{name}")?;
            }
        }
    }
    Ok(())
}
