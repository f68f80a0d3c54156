//! `shoal gossip keygen`, `shoal debug ...` (gossip state and hand-made
//! endpoints) and `shoal dataplane run|stats` (the static-file data plane).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::client::Client;
use super::{out, print_json};

/// `shoal gossip`.
#[derive(Debug, Subcommand)]
pub enum GossipCommand {
    /// Print a new random gossip key line (`1:HEX`) for a key file
    Keygen,
}

/// `shoal debug`.
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// List gossip members and their state
    Members,
    /// Dump the replicated tables with versions (like Docker's network diagnostic)
    Tables,
    /// Print the daemon's metrics (Prometheus text)
    Metrics,
    /// Print this node's service directory: names, VIPs and tasks per network
    Directory,
    /// Print this node's routing mesh: published ports, where each goes, and the backends' flows
    Mesh,
    /// Create or remove endpoints on this node
    #[command(subcommand)]
    Endpoint(EndpointCommand),
}

/// `shoal debug endpoint`.
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Create an endpoint: a sandbox with eth0 on an overlay network
    Add {
        /// Sandbox (network namespace) name
        #[arg(long)]
        sandbox: String,
        /// Network VNI
        #[arg(long)]
        vni: u32,
        /// Network subnet, such as 10.0.1.0/24
        #[arg(long)]
        subnet: String,
        /// Address in the network
        #[arg(long)]
        ip: Ipv4Addr,
    },
    /// Remove an endpoint by sandbox name
    Rm {
        /// Sandbox name
        sandbox: String,
    },
    /// List this node's endpoints
    Ls,
}

/// `shoal dataplane`.
#[derive(Debug, Subcommand)]
pub enum DataplaneCommand {
    /// Run this node's data plane: create sandboxes for the endpoints on this
    /// node, route to the others, until SIGTERM or SIGINT
    Run {
        /// JSON file listing networks and endpoints (the same file on every node)
        #[arg(long)]
        config: PathBuf,
        /// This node's underlay address; endpoints whose node is this address are local
        #[arg(long)]
        underlay: Ipv4Addr,
        /// Unix socket to serve counters on; it appears once the data plane is ready
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Print a running data plane's counters and endpoints as JSON
    Stats {
        /// The data plane's control socket
        #[arg(long)]
        control: PathBuf,
    },
}

/// Runs `gossip keygen`.
pub fn gossip(command: GossipCommand) -> anyhow::Result<()> {
    match command {
        GossipCommand::Keygen => writeln!(out(), "{}", shoal_agent::keys::keygen()?)?,
    }
    Ok(())
}

/// Runs a `debug` verb.
pub fn debug(client: &Client, command: DebugCommand) -> anyhow::Result<()> {
    match command {
        DebugCommand::Members => print_json(&client.call("GET", "/v1/members", None)?),
        DebugCommand::Tables => print_json(&client.call("GET", "/v1/tables", None)?),
        DebugCommand::Directory => print_json(&client.call("GET", "/v1/directory", None)?),
        DebugCommand::Mesh => print_json(&client.call("GET", "/v1/mesh", None)?),
        DebugCommand::Metrics => {
            write!(out(), "{}", client.call_text("GET", "/metrics", None)?)?;
            Ok(())
        }
        DebugCommand::Endpoint(EndpointCommand::Add { sandbox, vni, subnet, ip }) => {
            let body = json!({ "sandbox": sandbox, "vni": vni, "subnet": subnet, "ip": ip });
            print_json(&client.call("POST", "/v1/endpoints", Some(&body))?)
        }
        DebugCommand::Endpoint(EndpointCommand::Rm { sandbox }) => {
            client.call("DELETE", &format!("/v1/endpoints/{sandbox}"), None)?;
            Ok(())
        }
        DebugCommand::Endpoint(EndpointCommand::Ls) => {
            print_json(&client.call("GET", "/v1/endpoints", None)?)
        }
    }
}

/// Runs a `dataplane` verb.
pub fn dataplane(command: DataplaneCommand) -> anyhow::Result<()> {
    match command {
        DataplaneCommand::Run { config, underlay, control } => {
            shoal_agent::standalone::run(&config, underlay, control.as_deref())
        }
        DataplaneCommand::Stats { control } => print_json(&shoal_agent::standalone::stats(&control)?),
    }
}
