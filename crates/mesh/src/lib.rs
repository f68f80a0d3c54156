//! The routing mesh's listeners and relays: every node listens on each
//! published port, TCP and UDP, and relays each connection or datagram flow
//! to a backend that the agent picks and connects.
//!
//! The agent implements [`Upstream`] (which backend, and a socket to it
//! opened in the right namespace: the node's mesh sandbox on the `ingress`
//! overlay, or a task's own namespace for `mode: host`) and drives a
//! [`Mesh`]: [`Mesh::set`] makes the listeners exactly the published ports,
//! [`Mesh::stats`] reads the counters. This crate knows nothing of services,
//! namespaces or load balancing.
//!
//! - TCP (`tcp.rs`): an accept loop per port; each connection asks
//!   [`Upstream::connect`] for a backend within
//!   [`Limits::connect_timeout`], writes a PROXY protocol v2 header first
//!   if the port asks for it (`proxy.rs`), then relays both ways until both
//!   sides have closed, half-closes passed on (`relay.rs`: `splice(2)`
//!   through a pipe per direction by default, see [`Relay`]).
//! - UDP (`udp.rs`): one socket per port and one flow per client address;
//!   the first datagram asks [`Upstream::udp`] for a connected socket, later
//!   ones go straight to it, and a task per flow (never per datagram) sends
//!   the backend's replies back from the listening socket until the flow has
//!   been idle for [`Limits::udp_idle_timeout`].
//! - `holder.rs`: when a port is taken, who holds it ([`Holder`]), from
//!   `/proc/net/{tcp,udp}{,6}` and `/proc/*/fd`.
//!
//! Invariants:
//!
//! - **Bounded.** At most [`Limits::max_connections_per_port`] connections
//!   per TCP port (beyond: accepted and closed at once) and
//!   [`Limits::max_udp_flows_per_port`] flows per UDP port (beyond: the
//!   datagram is dropped); one 64 KiB receive buffer per UDP port, one per
//!   runtime thread for replies, a few datagrams queued per flow while its
//!   backend socket opens (at most 1 MiB of them per port); two pipes of
//!   64 KiB per TCP connection. Nothing grows with traffic.
//! - **Every error counted.** Each refusal, failed or timed-out backend,
//!   relay error, accept or receive error and dropped datagram has a counter
//!   in [`PortStats`]; nothing that arrives on a socket can panic.
//! - **Closing a port stops only the listener.** A removed TCP port stops
//!   accepting before [`Mesh::set`] returns (new connections are refused);
//!   its established relays run on until both sides close and stay in
//!   [`Mesh::stats`] (`listening: false`) meanwhile. A UDP port has no
//!   connections to finish: its flows end with it.
//! - **Runs on the caller's runtime.** [`Mesh::new`] captures the current
//!   tokio runtime; every loop and relay is a task there, and dropping the
//!   last [`Mesh`] handle closes every listener (relays still finish).
//!
//! `splice(2)` to a socket whose peer is gone raises `SIGPIPE` unless the
//! process ignores it, as every Rust program does by default.
#![forbid(unsafe_code)]

mod holder;
mod mesh;
mod proxy;
mod relay;
mod stats;
mod tcp;
mod udp;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

pub use holder::Holder;
pub use mesh::{Mesh, PortError};
pub use relay::Relay;
pub use stats::{PortStats, UdpDrops};

/// Default for [`Limits::max_connections_per_port`].
pub const DEFAULT_MAX_CONNECTIONS_PER_PORT: usize = 16_384;
/// Default for [`Limits::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`Limits::max_udp_flows_per_port`].
pub const DEFAULT_MAX_UDP_FLOWS_PER_PORT: usize = 16_384;
/// Default for [`Limits::udp_idle_timeout`].
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The name docker prints: `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A published port on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub port: u16,
    pub protocol: Protocol,
}

impl PortKey {
    pub fn tcp(port: u16) -> PortKey {
        PortKey { port, protocol: Protocol::Tcp }
    }

    pub fn udp(port: u16) -> PortKey {
        PortKey { port, protocol: Protocol::Udp }
    }
}

/// As docker writes it: `8080/tcp`.
impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// What the agent asks this node to listen on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub key: PortKey,
    /// Send a PROXY protocol v2 header first on each TCP connection (the
    /// backend learns the client's address). Ignored for UDP. Changing it on
    /// an open port applies to the connections accepted from then on.
    pub proxy_protocol: bool,
}

/// How the agent reaches backends. It picks the backend (service load
/// balancing, local-only policy, host mode) and opens the socket in the right
/// namespace.
///
/// Both calls run on the mesh's runtime, one per new connection or flow, and
/// are abandoned (dropped) after [`Limits::connect_timeout`].
pub trait Upstream: Send + Sync + 'static {
    /// A connected TCP stream to a backend for a client of `port`; an error
    /// if there is none (counted as failed, the client is closed).
    fn connect(
        &self,
        port: &PortKey,
        client: SocketAddr,
    ) -> impl Future<Output = io::Result<tokio::net::TcpStream>> + Send;

    /// A UDP socket connected to a backend, for a new flow of `port` from
    /// `client`; an error if there is none (counted as failed, the flow's
    /// datagrams are dropped).
    fn udp(
        &self,
        port: &PortKey,
        client: SocketAddr,
    ) -> impl Future<Output = io::Result<tokio::net::UdpSocket>> + Send;
}

/// The mesh's bounds, per port; [`Limits::default`] holds the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// TCP connections per port, from accept until both sides closed;
    /// further connections are accepted and closed at once, counted
    /// `refused`. Default 16 384.
    pub max_connections_per_port: usize,
    /// Time for [`Upstream::connect`] or [`Upstream::udp`] (and the PROXY
    /// header's write). A client waiting on it is a half-open connection, so
    /// it stays short. Default 5 s.
    pub connect_timeout: Duration,
    /// UDP flows per port, those whose backend socket is still opening
    /// included; a datagram that would start one more is dropped and
    /// counted. Default 16 384.
    pub max_udp_flows_per_port: usize,
    /// A UDP flow with no datagram either way for this long ends (its
    /// backend socket is closed). Default 30 s, as conntrack's unreplied UDP.
    pub udp_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections_per_port: DEFAULT_MAX_CONNECTIONS_PER_PORT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_udp_flows_per_port: DEFAULT_MAX_UDP_FLOWS_PER_PORT,
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
        }
    }
}

/// The address as an IPv4 address if it is an IPv4-mapped IPv6 one (what a
/// dual-stack socket reports for an IPv4 peer).
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
