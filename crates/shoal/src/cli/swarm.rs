//! `shoal swarm init|join|join-token|update|leave`.

use std::io::Write;

use clap::Subcommand;
use serde_json::json;

use super::client::Client;
use super::flags::{self, Role};
use super::out;

/// `shoal swarm`.
#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Create a swarm with this node as its manager
    Init {
        /// Address other nodes reach this one at (must be the daemon's)
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Address to listen on (must be the daemon's)
        #[arg(long)]
        listen_addr: Option<String>,
        /// Address pool networks are carved from
        #[arg(long, default_value = "10.0.0.0/8")]
        default_addr_pool: String,
        /// VXLAN port (must be the daemon's)
        #[arg(long)]
        data_path_port: Option<u16>,
        /// Time between heartbeats (such as 5s); a node is Down after three missed
        #[arg(long, default_value = "5s", value_parser = flags::duration_secs)]
        dispatcher_heartbeat: u64,
        /// Validity of node certificates (such as 2160h); nodes renew at 50-80 %
        #[arg(long, default_value = "2160h", value_parser = flags::duration_secs)]
        cert_expiry: u64,
    },
    /// Join a swarm as a node
    Join {
        /// Token from `shoal swarm join-token`
        #[arg(long)]
        token: String,
        /// A manager's address, IP:PORT (port 2377 if left out)
        remote_addr: String,
    },
    /// Manage join tokens
    JoinToken {
        /// Only print the token
        #[arg(short, long)]
        quiet: bool,
        /// Replace the token; the old one stops working
        #[arg(long)]
        rotate: bool,
        /// Which token
        role: Role,
    },
    /// Update the swarm
    Update {
        /// Replace the gossip encryption key, without a gap: every node holds both keys, then
        /// seals with the new one, then drops the old (Shoal's addition; docker rotates on its own)
        #[arg(long)]
        rotate_gossip_key: bool,
    },
    /// Leave the swarm
    Leave {
        /// Leave even as the manager (the swarm's state is lost)
        #[arg(short, long)]
        force: bool,
    },
}

/// Runs a `swarm` verb.
pub fn run(client: &Client, command: SwarmCommand) -> anyhow::Result<()> {
    match command {
        SwarmCommand::Init {
            advertise_addr,
            listen_addr,
            default_addr_pool,
            data_path_port,
            dispatcher_heartbeat,
            cert_expiry,
        } => {
            let body = json!({
                "advertise_addr": advertise_addr, "listen_addr": listen_addr, "default_addr_pool": default_addr_pool,
                "data_path_port": data_path_port, "dispatcher_heartbeat_secs": dispatcher_heartbeat,
                "cert_expiry_secs": cert_expiry,
            });
            let answer = client.call("POST", "/v1/swarm/init", Some(&body))?;
            let mut o = out();
            writeln!(
                o,
                "Swarm initialized: current node ({}) is now a manager.\n",
                answer["node_id"].as_str().unwrap_or("")
            )?;
            writeln!(o, "To add a worker to this swarm, run the following command:\n")?;
            writeln!(
                o,
                "    shoal swarm join --token {} {}\n",
                answer["worker_token"].as_str().unwrap_or(""),
                answer["addr"].as_str().unwrap_or("")
            )?;
            writeln!(
                o,
                "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions."
            )?;
        }
        SwarmCommand::Join { token, remote_addr } => {
            let body = json!({ "token": token, "remote_addr": remote_addr });
            let answer = client.call("POST", "/v1/swarm/join", Some(&body))?;
            writeln!(
                out(),
                "This node joined a swarm as a {}.",
                answer["role"].as_str().unwrap_or("worker")
            )?;
        }
        SwarmCommand::JoinToken { quiet, rotate, role } => {
            let role = role.name();
            let path = format!("/v1/swarm/join-token/{role}{}", if rotate { "/rotate" } else { "" });
            let answer = client.call(if rotate { "POST" } else { "GET" }, &path, None)?;
            let token = answer["token"].as_str().unwrap_or("");
            let mut o = out();
            if quiet {
                writeln!(o, "{token}")?;
            } else {
                if rotate {
                    writeln!(o, "Successfully rotated {role} join token.\n")?;
                }
                writeln!(o, "To add a {role} to this swarm, run the following command:\n")?;
                writeln!(
                    o,
                    "    shoal swarm join --token {token} {}\n",
                    answer["addr"].as_str().unwrap_or("")
                )?;
            }
        }
        SwarmCommand::Update { rotate_gossip_key } => {
            anyhow::ensure!(
                rotate_gossip_key,
                "nothing to update: give --rotate-gossip-key (see `shoal swarm update --help`)"
            );
            client.call("POST", "/v1/swarm/rotate-gossip-key", None)?;
            writeln!(out(), "Swarm updated.")?;
        }
        SwarmCommand::Leave { force } => {
            client.call("POST", "/v1/swarm/leave", Some(&json!({ "force": force })))?;
            writeln!(out(), "Node left the swarm.")?;
        }
    }
    Ok(())
}
