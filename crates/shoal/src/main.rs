//! `shoal`: one binary for the CLI and the node agent.

mod overlay;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Docker Swarm's networking, rebuilt: overlay, gossip, routing mesh, DNS.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run or inspect a data plane programmed from a static file (no gossip)
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
}

#[derive(Debug, Subcommand)]
enum DataplaneCommand {
    /// Run this node's data plane: create sandboxes for the endpoints on this
    /// node, route to the others, until SIGTERM or SIGINT
    Run {
        /// JSON file listing networks and endpoints (the same file on every node)
        #[arg(long)]
        config: PathBuf,
        /// This node's underlay address; endpoints whose node is this address are local
        #[arg(long)]
        underlay: std::net::Ipv4Addr,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Dataplane(DataplaneCommand::Run { config, underlay, control }) => {
            overlay::run(&config, underlay, control.as_deref())
        }
        Command::Dataplane(DataplaneCommand::Stats { control }) => overlay::stats(&control),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("Error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
