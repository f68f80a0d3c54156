//! `shoal`: one binary for the CLI and the node agent (`shoal daemon`,
//! which `shoal-agent` runs).

#![forbid(unsafe_code)]

mod cli;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use cli::client::Client;

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
    Swarm(cli::swarm::SwarmCommand),
    /// Manage swarm nodes: ls, inspect, update, promote, demote, rm
    #[command(subcommand)]
    Node(cli::node::NodeCommand),
    /// Manage overlay networks: create, ls, inspect, rm
    #[command(subcommand)]
    Network(cli::network::NetworkCommand),
    /// Manage services: create, ls, ps, inspect, scale, update, rollback, logs, rm
    #[command(subcommand)]
    Service(cli::service::ServiceCommand),
    /// Manage stacks (compose files): deploy, ls, ps, services, rm
    #[command(subcommand)]
    Stack(cli::stack::StackCommand),
    /// Run commands in tasks of this node: exec, inspect
    #[command(subcommand)]
    Task(cli::task::TaskCommand),
    /// Manage this node's volumes: create, ls, inspect, rm
    #[command(subcommand)]
    Volume(cli::volume::VolumeCommand),
    /// A local multi-node cluster in network namespaces: up, ls, exec, down
    #[command(subcommand)]
    Lab(cli::lab::LabCommand),
    /// Gossip key management
    #[command(subcommand)]
    Gossip(cli::debug::GossipCommand),
    /// Inspect a daemon's gossip state and manage endpoints by hand
    #[command(subcommand)]
    Debug(cli::debug::DebugCommand),
    /// Run or inspect a data plane programmed from a static file, without gossip or a swarm
    #[command(subcommand)]
    Dataplane(cli::debug::DataplaneCommand),
}

/// `shoal daemon`'s flags: every setting of the node agent, with its
/// default.
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
    /// Upstream DNS server for names tasks ask that are not services (repeat, up to 3;
    /// default: the nameservers of /etc/resolv.conf)
    #[arg(long = "dns", env = "SHOAL_DNS", value_delimiter = ',')]
    dns: Vec<Ipv4Addr>,
    /// TCP connections (and UDP flows) each published port relays at once on this node;
    /// beyond, new ones are closed (dropped) and counted
    #[arg(long, env = "SHOAL_MESH_CONNECTION_LIMIT", default_value_t = 16384,
          value_parser = clap::value_parser!(u32).range(1..))]
    mesh_connection_limit: u32,
    /// Keep tasks running while the daemon is down: a restarted (or upgraded) daemon adopts
    /// them; `--live-restore=false` stops them with the daemon
    #[arg(long, env = "SHOAL_LIVE_RESTORE", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    live_restore: bool,
}

impl From<DaemonOptions> for shoal_agent::Settings {
    fn from(o: DaemonOptions) -> shoal_agent::Settings {
        shoal_agent::Settings {
            data_dir: o.data_dir,
            advertise_addr: o.advertise_addr,
            listen_addr: o.listen_addr.unwrap_or(o.advertise_addr),
            gossip_port: o.gossip_port,
            data_port: o.data_path_port,
            control_port: o.control_port,
            join: o.join,
            gossip_key_file: o.gossip_key_file,
            socket: o.socket,
            mtu: o.mtu,
            hostname: o.hostname.unwrap_or_else(shoal_agent::Settings::kernel_hostname),
            task_prefix: o.task_prefix,
            dns: o.dns,
            mesh_connection_limit: o.mesh_connection_limit as usize,
            live_restore: o.live_restore,
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let client = || Client::new(&cli.host);
    match cli.command {
        Command::Daemon(o) => shoal_agent::daemon::run(o.into()),
        Command::Swarm(c) => cli::swarm::run(&client()?, c),
        Command::Node(c) => cli::node::run(&client()?, c),
        Command::Network(c) => cli::network::run(&client()?, c),
        Command::Service(c) => cli::service::run(&client()?, c),
        Command::Stack(c) => cli::stack::run(&client()?, c),
        Command::Task(c) => cli::task::run(&client()?, c),
        Command::Volume(c) => cli::volume::run(&client()?, c),
        Command::Lab(c) => cli::lab::run(c),
        Command::Gossip(c) => cli::debug::gossip(c),
        Command::Debug(c) => cli::debug::debug(&client()?, c),
        Command::Dataplane(c) => cli::debug::dataplane(c),
    }
}

fn main() -> ExitCode {
    // The task runtime's helpers: single-threaded, before anything else.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("__task-shim") if args.len() == 3 => {
            shoal_runtime::exec::shim_main(std::path::Path::new(&args[2]))
        }
        Some("__enter") if args.len() == 3 => match serde_json::from_str(&args[2].to_string_lossy()) {
            Ok(spec) => shoal_runtime::exec::enter_main(&spec),
            Err(e) => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("Error: bad enter spec: {e}");
                }
                return ExitCode::FAILURE;
            }
        },
        _ => {}
    }
    let cli = Cli::parse();
    // Agents log what they do; client verbs only what went wrong.
    let agent = matches!(
        cli.command,
        Command::Daemon(_) | Command::Dataplane(cli::debug::DataplaneCommand::Run { .. })
    );
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
