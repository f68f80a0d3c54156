//! The service directory as the resolver reads it.
//!
//! The agent implements [`Directory`] over the gossip rows of the networks the
//! node is on; the resolver only ever asks through a [`Scope`], so a task never
//! learns a name from a network it is not attached to.

use std::net::Ipv4Addr;

/// A network (VXLAN network id) a sandbox is attached to.
pub type NetworkId = u32;

/// What the asking sandbox can see: the networks it is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The networks of the asking sandbox; the directory answers from these only.
    pub networks: Vec<NetworkId>,
}

/// Transport protocol of an SRV query (`_<port>._tcp.<service>` or `._udp.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// `_tcp`
    Tcp,
    /// `_udp`
    Udp,
}

/// One answer set for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// The addresses, in the directory's order; the resolver shuffles them.
    pub addrs: Vec<Ipv4Addr>,
    /// Seconds a client may cache the answer.
    pub ttl: u32,
}

/// One SRV target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// A name this resolver answers A for, e.g. `web.1.abcd` (the task name).
    pub target: String,
    /// The port the target listens on.
    pub port: u16,
    /// The target's address, sent along as an additional A record so that the
    /// client needs no second query.
    pub addr: Ipv4Addr,
    /// Seconds a client may cache the SRV and A records.
    pub ttl: u32,
}

/// The service directory as the resolver reads it (the agent implements it over gossip rows).
///
/// Names are lowercase ASCII without the trailing dot. Every method answers only
/// from networks in `scope`. The resolver calls these methods on its receive
/// path, so they should answer from memory without blocking.
pub trait Directory: Send + Sync + 'static {
    /// `web`, `stack_web`, an alias -> the VIP (one address), or with dnsrr the
    /// healthy task addresses; `tasks.web` -> healthy task addresses; a task name
    /// `web.1.<task id>` -> that task's address.
    ///
    /// `None`: not a name of the directory (the resolver forwards it). `Some`
    /// with empty `addrs`: a known name with no healthy task (the resolver
    /// answers NOERROR with no records, because the service does exist).
    fn lookup(&self, scope: &Scope, name: &str) -> Option<Addresses>;

    /// PTR: the name of a VIP (`web`) or task address (`web.1.<id>`), with its TTL.
    fn reverse(&self, scope: &Scope, addr: Ipv4Addr) -> Option<(String, u32)>;

    /// SRV for `_<port>._tcp|_udp.<service>`: `port` is the port as written (a
    /// number, or a port name); `None` if the service or port is unknown.
    fn srv(&self, scope: &Scope, service: &str, port: &str, proto: Proto) -> Option<Vec<SrvTarget>>;
}
