//! What `shoal daemon` is told, in one place with its defaults (the CLI's
//! flags document them), and what the running agent keeps of it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

/// The node agent's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// State directory: node id, epoch, swarm state, tasks, and the
    /// sandboxes a crash would leave.
    pub data_dir: PathBuf,
    /// This node's address on the underlay: gossip and VXLAN use it.
    pub advertise_addr: Ipv4Addr,
    /// Where gossip, VXLAN and the control plane listen.
    pub listen_addr: Ipv4Addr,
    /// Gossip port (UDP and TCP).
    pub gossip_port: u16,
    /// VXLAN port.
    pub data_port: u16,
    /// Control-plane port (QUIC) of managers.
    pub control_port: u16,
    /// Gossip addresses to join through (with a key file only).
    pub join: Vec<SocketAddrV4>,
    /// Gossip key file: gossip starts at once, outside any swarm (tests,
    /// labs).
    pub gossip_key_file: Option<PathBuf>,
    /// Local API socket.
    pub socket: PathBuf,
    /// Overlay MTU.
    pub mtu: u16,
    /// The hostname this node reports.
    pub hostname: String,
    /// Prefix of task sandbox (network namespace) and cgroup names.
    pub task_prefix: String,
    /// Upstream resolvers for names the service directory does not know
    /// (`--dns`); empty: the node's resolv.conf.
    pub dns: Vec<Ipv4Addr>,
    /// TCP connections and UDP flows each published port relays at once
    /// (`--mesh-connection-limit`).
    pub mesh_connection_limit: usize,
    /// Tasks outlive the daemon, and the next one adopts them
    /// (`--live-restore`, on by default).
    pub live_restore: bool,
}

impl Settings {
    /// The kernel's hostname, for when none is given.
    pub fn kernel_hostname() -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
    }

    /// Where tasks' unknown names are forwarded: `--dns`, else the node's
    /// resolv.conf (loopback resolvers left out: they are the node's own).
    pub fn upstreams(&self) -> Vec<std::net::SocketAddr> {
        if !self.dns.is_empty() {
            return self.dns.iter().take(3).map(|ip| std::net::SocketAddr::from((*ip, 53))).collect();
        }
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        shoal_dns::upstreams_from_resolv_conf(&text)
    }

    /// This node's gossip address, as other nodes reach it.
    pub fn gossip_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.advertise_addr, self.gossip_port)
    }
}
