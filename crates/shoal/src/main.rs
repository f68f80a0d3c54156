//! `shoal`: one binary for the CLI and the node agent.

mod client;
mod cluster_cli;
mod daemon;
mod lab_cli;
mod overlay;
mod service_cli;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Docker Swarm's networking, rebuilt: overlay, gossip, routing mesh, DNS.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    /// Daemon socket to talk to, like DOCKER_HOST
    #[arg(short = 'H', long = "host", env = "SHOAL_HOST", global = true,
          default_value = concat!("unix://", "/run/shoal/shoal.sock"))]
    host: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent: data plane, gossip on 7946, control plane, local API
    Daemon(DaemonOptions),
    /// Manage the swarm: init, join, join-token, leave
    #[command(subcommand)]
    Swarm(cluster_cli::SwarmCommand),
    /// Manage swarm nodes: ls, inspect, update, promote, demote, rm
    #[command(subcommand)]
    Node(cluster_cli::NodeCommand),
    /// Manage overlay networks: create, ls, inspect, rm
    #[command(subcommand)]
    Network(cluster_cli::NetworkCommand),
    /// Manage services: create, ls, ps, inspect, scale, update, rollback, logs, rm
    #[command(subcommand)]
    Service(service_cli::ServiceCommand),
    /// Run commands in tasks of this node: exec, inspect
    #[command(subcommand)]
    Task(service_cli::TaskCommand),
    /// A local multi-node cluster in network namespaces: up, ls, exec, down
    #[command(subcommand)]
    Lab(lab_cli::LabCommand),
    /// Gossip key management
    #[command(subcommand)]
    Gossip(GossipCommand),
    /// Inspect a daemon's gossip state and manage endpoints by hand
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Run or inspect a data plane programmed from a static file (no gossip)
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
}

#[derive(Debug, Args)]
struct DaemonOptions {
    /// State directory
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "/var/lib/shoal")]
    data_dir: PathBuf,
    /// This node's underlay address, which other nodes reach it at (gossip and VXLAN)
    #[arg(long, env = "SHOAL_ADVERTISE_ADDR")]
    advertise_addr: Ipv4Addr,
    /// Address to listen on for gossip and VXLAN (default: the advertise address; 0.0.0.0 for all)
    #[arg(long, env = "SHOAL_LISTEN_ADDR")]
    listen_addr: Option<Ipv4Addr>,
    /// Gossip port (UDP and TCP)
    #[arg(long, env = "SHOAL_GOSSIP_PORT", default_value_t = 7946)]
    gossip_port: u16,
    /// VXLAN port
    #[arg(long, env = "SHOAL_DATA_PATH_PORT", default_value_t = 4789)]
    data_path_port: u16,
    /// Gossip address of a node to join through (repeat, or comma-separate in SHOAL_JOIN)
    #[arg(long = "join", env = "SHOAL_JOIN", value_delimiter = ',', value_name = "ADDR:PORT")]
    join: Vec<SocketAddrV4>,
    /// Control-plane port (QUIC) a manager listens on
    #[arg(long, env = "SHOAL_CONTROL_PORT", default_value_t = 2377)]
    control_port: u16,
    /// Start gossip at once with this key file, outside any swarm (`shoal gossip keygen > FILE`);
    /// without it, gossip starts with `shoal swarm init` or `join`
    #[arg(long, env = "SHOAL_GOSSIP_KEY_FILE")]
    gossip_key_file: Option<PathBuf>,
    /// Hostname this node reports (default: the kernel's)
    #[arg(long, env = "SHOAL_HOSTNAME")]
    hostname: Option<String>,
    /// Local API socket
    #[arg(long, env = "SHOAL_SOCKET", default_value = "/run/shoal/shoal.sock")]
    socket: PathBuf,
    /// Overlay MTU
    #[arg(long, env = "SHOAL_MTU", default_value_t = 1450)]
    mtu: u16,
    /// Prefix of the names of task network namespaces and cgroups
    #[arg(long, env = "SHOAL_TASK_PREFIX", default_value = "shoal")]
    task_prefix: String,
}

#[derive(Debug, Subcommand)]
enum GossipCommand {
    /// Print a new random gossip key line (`1:HEX`) for a key file
    Keygen,
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// List gossip members and their state
    Members,
    /// Dump the replicated tables with versions (like Docker's network diagnostic)
    Tables,
    /// Print the daemon's metrics (Prometheus text)
    Metrics,
    /// Create or remove endpoints on this node
    #[command(subcommand)]
    Endpoint(EndpointCommand),
}

#[derive(Debug, Subcommand)]
enum EndpointCommand {
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

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let client = || client::Client::new(&cli.host);
    match cli.command {
        Command::Daemon(o) => daemon::run(daemon::DaemonArgs {
            data_dir: o.data_dir,
            advertise_addr: o.advertise_addr,
            listen_addr: o.listen_addr.unwrap_or(o.advertise_addr),
            gossip_port: o.gossip_port,
            data_port: o.data_path_port,
            join: o.join,
            gossip_key_file: o.gossip_key_file,
            control_port: o.control_port,
            hostname: o.hostname,
            socket: o.socket,
            mtu: o.mtu,
            task_prefix: o.task_prefix,
        }),
        Command::Swarm(c) => cluster_cli::swarm(&client()?, c),
        Command::Node(c) => cluster_cli::node(&client()?, c),
        Command::Network(c) => cluster_cli::network(&client()?, c),
        Command::Service(c) => service_cli::service(&client()?, c),
        Command::Task(c) => service_cli::task(&client()?, c),
        Command::Lab(c) => lab_cli::run(c),
        Command::Gossip(GossipCommand::Keygen) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{}", daemon::keygen()?);
            }
            Ok(())
        }
        Command::Debug(DebugCommand::Members) => print_json(&client()?.call("GET", "/v1/members", None)?),
        Command::Debug(DebugCommand::Tables) => print_json(&client()?.call("GET", "/v1/tables", None)?),
        Command::Debug(DebugCommand::Metrics) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{}", client()?.call_text("GET", "/metrics", None)?);
            }
            Ok(())
        }
        Command::Debug(DebugCommand::Endpoint(EndpointCommand::Add { sandbox, vni, subnet, ip })) => {
            let body = serde_json::json!({ "sandbox": sandbox, "vni": vni, "subnet": subnet, "ip": ip });
            print_json(&client()?.call("POST", "/v1/endpoints", Some(&body))?)
        }
        Command::Debug(DebugCommand::Endpoint(EndpointCommand::Rm { sandbox })) => {
            client()?.call("DELETE", &format!("/v1/endpoints/{sandbox}"), None)?;
            Ok(())
        }
        Command::Debug(DebugCommand::Endpoint(EndpointCommand::Ls)) => {
            print_json(&client()?.call("GET", "/v1/endpoints", None)?)
        }
        Command::Dataplane(DataplaneCommand::Run { config, underlay, control }) => {
            overlay::run(&config, underlay, control.as_deref())
        }
        Command::Dataplane(DataplaneCommand::Stats { control }) => overlay::stats(&control),
    }
}

fn main() -> ExitCode {
    // The task runtime's helpers: single-threaded, before anything else.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("__task-shim") if args.len() == 3 => {
            shoal_runtime::exec::shim_main(std::path::Path::new(&args[2]))
        }
        Some("__enter") if args.len() == 3 => {
            let spec = serde_json::from_str(&args[2].to_string_lossy());
            match spec {
                Ok(spec) => shoal_runtime::exec::enter_main(&spec),
                Err(e) => {
                    #[allow(clippy::print_stderr)]
                    {
                        eprintln!("Error: bad enter spec: {e}");
                    }
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => {}
    }
    let cli = Cli::parse();
    // Agents log what they do; client verbs only what went wrong.
    let agent = matches!(cli.command, Command::Daemon(_) | Command::Dataplane(DataplaneCommand::Run { .. }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if agent { "info" } else { "warn" })),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
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
