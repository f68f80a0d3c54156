//! `shoal stack deploy|ls|ps|services|rm`: compose files deployed as
//! docker's CLI deploys them. The stack lives in its objects' labels
//! (`com.docker.stack.namespace`); the manager knows services and
//! networks, and nothing about stacks.

mod load;
mod wait;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use serde::Serialize;
use serde_json::json;
use shoal_agent::api::views::{self as api, Network};
use shoal_orch::{STACK_LABEL, ServiceSpec};

use super::client::Client;
use super::service::{LsOptions, PsOptions};
use super::{Format, Listing, out};

/// `shoal stack`.
#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Deploy a new stack or update an existing stack
    Deploy {
        /// Path to a Compose file, or "-" to read from stdin (repeat to merge several, later ones win)
        #[arg(short = 'c', long = "compose-file", required = true)]
        files: Vec<PathBuf>,
        /// Prune services that are no longer referenced
        #[arg(long)]
        prune: bool,
        /// Exit immediately instead of waiting for the stack services to converge
        #[arg(short, long)]
        detach: bool,
        /// Suppress progress output
        #[arg(short, long)]
        quiet: bool,
        /// Accepted so docker's scripts run; Shoal pulls no images
        #[arg(long)]
        with_registry_auth: bool,
        /// Accepted so docker's scripts run (always, changed, never); Shoal pulls no images
        #[arg(long, value_parser = ["always", "changed", "never"])]
        resolve_image: Option<String>,
        /// Stack name
        name: String,
    },
    /// List stacks
    Ls {
        /// Output format: table, json (one object per line), or a template such as '{{.Name}}'
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// List the tasks in the stack
    Ps {
        #[command(flatten)]
        options: PsOptions,
        /// Stack name
        name: String,
    },
    /// List the services in the stack
    Services {
        #[command(flatten)]
        options: LsOptions,
        /// Stack name
        name: String,
    },
    /// Remove one or more stacks
    Rm {
        /// Stack names
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs a `stack` verb.
pub fn run(client: &Client, command: StackCommand) -> anyhow::Result<()> {
    match command {
        StackCommand::Deploy { files, prune, detach, quiet, name, .. } => {
            deploy(client, &files, &name, prune, detach, quiet)
        }
        StackCommand::Ls { format } => ls(client, &format),
        StackCommand::Ps { options, name } => {
            let services = stack_services(client, &name)?;
            if services.is_empty() {
                return nothing_found(&name);
            }
            let names: Vec<String> = services.iter().map(|s| s.spec.name.clone()).collect();
            super::service::ps(client, &names, &options)
        }
        StackCommand::Services { options, name } => {
            if stack_services(client, &name)?.is_empty() {
                return nothing_found(&name);
            }
            super::service::ls(client, &options, Some((STACK_LABEL, &name)))
        }
        StackCommand::Rm { names } => {
            for name in &names {
                remove(client, name)?;
            }
            Ok(())
        }
    }
}

/// Docker's answer for a stack with no services.
fn nothing_found(name: &str) -> anyhow::Result<()> {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("Nothing found in stack: {name}");
    }
    Ok(())
}

/// The services of stack `name`.
fn stack_services(client: &Client, name: &str) -> anyhow::Result<Vec<api::Service>> {
    let mut services: Vec<api::Service> = client.get("/v1/services")?;
    services.retain(|s| s.spec.labels.get(STACK_LABEL).is_some_and(|n| n == name));
    Ok(services)
}

/// The networks of stack `name`.
fn stack_networks(client: &Client, name: &str) -> anyhow::Result<Vec<Network>> {
    let mut networks: Vec<Network> = client.get("/v1/networks")?;
    networks.retain(|n| n.labels.get(STACK_LABEL).is_some_and(|s| s == name));
    Ok(networks)
}

/// Docker's rule for stack names (they prefix service names).
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 40
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
    if !valid {
        bail!(
            "invalid stack name {name:?}: use up to 40 letters, digits, '-' or '_', starting with a letter or digit"
        );
    }
    Ok(())
}

/// `stack deploy`: creates the stack's networks, then creates or updates
/// its services (dependencies first); with `prune`, removes the services
/// the files no longer name. Nothing is changed when the files are wrong.
fn deploy(
    client: &Client,
    files: &[PathBuf],
    name: &str,
    prune: bool,
    detach: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    check_name(name)?;
    let loaded = load::load(files)?;
    let stack = &loaded.stack;
    let networks = load::networks(name, stack);
    // Every spec is built (and so checked) before anything is sent.
    let mut specs: Vec<ServiceSpec> = Vec::new();
    for key in stack.start_order() {
        let def = &stack.services[key];
        specs.push(load::service_spec(name, key, def, stack, &networks, &loaded.dir)?);
    }
    #[allow(clippy::print_stderr)]
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let existing: Vec<Network> = client.get("/v1/networks")?;
    for n in networks.values() {
        let found = existing.iter().any(|e| e.name == n.name);
        match &n.create {
            None if !found => bail!(
                "network {:?} is declared as external, but could not be found. You need to create a swarm-scoped network before the stack is deployed",
                n.name
            ),
            Some(def) if !found => {
                writeln!(out(), "Creating network {}", n.name)?;
                let body = json!({
                    "name": n.name, "driver": "overlay", "subnet": def.subnet,
                    "attachable": def.attachable, "labels": def.labels,
                });
                client.call("POST", "/v1/networks", Some(&body))?;
            }
            _ => {}
        }
    }
    let current = stack_services(client, name)?;
    let mut changed = Vec::new();
    for spec in &specs {
        let body = serde_json::to_value(api::ServiceSpec::from(spec))?;
        match current.iter().find(|s| s.spec.name == spec.name) {
            None => {
                writeln!(out(), "Creating service {}", spec.name)?;
                let answer = client.call("POST", "/v1/services", Some(&body))?;
                changed.push(answer["ID"].as_str().unwrap_or_default().to_owned());
            }
            Some(s) => {
                writeln!(out(), "Updating service {} (id: {})", spec.name, s.id)?;
                let now = ServiceSpec::try_from(&s.spec)?;
                if !same_spec(&now, spec) {
                    let path = format!("/v1/services/{}/update?version={}", s.id, s.version.index);
                    client.call("POST", &path, Some(&body))?;
                    changed.push(s.id.clone());
                }
            }
        }
    }
    if prune {
        for s in &current {
            if !specs.iter().any(|spec| spec.name == s.spec.name) {
                writeln!(out(), "Removing service {}", s.spec.name)?;
                client.call("DELETE", &format!("/v1/services/{}", s.id), None)?;
            }
        }
    }
    if detach {
        return Ok(());
    }
    wait::converge(client, &changed, quiet)
}

/// Whether a deployed spec already is what the files ask for: ports the
/// manager picked (published 0 in the file) count as asked.
fn same_spec(now: &ServiceSpec, wanted: &ServiceSpec) -> bool {
    let mut wanted = wanted.clone();
    for p in &mut wanted.ports {
        if p.published == 0
            && let Some(picked) = now.ports.iter().find(|q| q.target == p.target && q.protocol == p.protocol)
        {
            p.published = picked.published;
        }
    }
    // Forced updates are the manager's count, not the file's.
    wanted.task.force_update = now.task.force_update;
    *now == wanted
}

/// A `stack ls` row, with the field names of `docker stack ls --format`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct LsRow {
    name: String,
    services: String,
}

/// `stack ls`: stacks are the namespaces of the services' labels.
fn ls(client: &Client, format: &Format) -> anyhow::Result<()> {
    let services: Vec<api::Service> = client.get("/v1/services")?;
    let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
    for s in &services {
        if let Some(name) = s.spec.labels.get(STACK_LABEL) {
            *stacks.entry(name.clone()).or_default() += 1;
        }
    }
    let rows = stacks.into_iter().map(|(name, n)| LsRow { name, services: n.to_string() }).collect();
    let listing = Listing {
        rows,
        headers: &["NAME", "SERVICES"],
        cells: |r: &LsRow| vec![r.name.clone(), r.services.clone()],
    };
    listing.print(format)
}

/// `stack rm NAME`: its services, then the networks it made.
fn remove(client: &Client, name: &str) -> anyhow::Result<()> {
    let services = stack_services(client, name)?;
    let networks = stack_networks(client, name)?;
    if services.is_empty() && networks.is_empty() {
        return nothing_found(name);
    }
    for s in &services {
        writeln!(out(), "Removing service {}", s.spec.name)?;
        client.call("DELETE", &format!("/v1/services/{}", s.id), None)?;
    }
    for n in &networks {
        writeln!(out(), "Removing network {}", n.name)?;
        client.call("DELETE", &format!("/v1/networks/{}", n.id), None)?;
    }
    Ok(())
}
