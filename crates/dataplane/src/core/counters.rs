//! Drop reasons and packet counters: what the data plane reports.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped. Every drop is counted under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// A datagram too short for its VXLAN or inner Ethernet header.
    Truncated,
    /// A VXLAN header without the I flag (RFC 7348).
    BadVxlanFlags,
    /// A VNI this node has no network for.
    UnknownVni,
    /// An inner frame or packet that is not IPv4 (ARP, IPv6, others): the
    /// overlay carries IPv4 today.
    UnsupportedProtocol,
    /// An IP header that does not parse or states more bytes than arrived.
    Malformed,
    /// An inner packet longer than the overlay MTU.
    Oversized,
    /// A source address that is not the sender's own: from a local task, not
    /// its endpoint's address; from the underlay, not an address that the
    /// sending node hosts on that network.
    SpoofedSource,
    /// A destination outside the sender's network: networks are isolated.
    CrossNetwork,
    /// A destination inside the network that no endpoint holds.
    UnknownDestination,
    /// A datagram for an endpoint that is not on this node.
    Misdirected,
    /// A packet from an endpoint that has just been detached.
    UnknownEndpoint,
    /// Reading a TUN device failed (for example a packet longer than the
    /// read buffer).
    TunReadFailed,
    /// Writing to a TUN device failed.
    TunWriteFailed,
    /// Sending on the underlay socket failed.
    UdpSendFailed,
    /// Receiving on the VXLAN socket failed: counted once per failed
    /// receive, since how many datagrams it cost is unknown.
    UdpReceiveFailed,
    /// A datagram from an underlay sender that is not IPv4: the underlay is
    /// IPv4, and so are the node addresses the tables hold.
    NonIpv4Underlay,
    /// A new flow to a service VIP that has no active backend.
    NoBackend,
    /// A new flow to a service VIP while the connection-tracking table was
    /// full and another task was already evicting: the sender retries.
    ConntrackFull,
    /// A packet to a service VIP that is neither TCP, UDP nor an ICMP echo
    /// request, or is a fragment: VIPs carry TCP and UDP flows and answer
    /// ping.
    VipUnsupported,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 19] = [
        DropReason::Truncated,
        DropReason::BadVxlanFlags,
        DropReason::UnknownVni,
        DropReason::UnsupportedProtocol,
        DropReason::Malformed,
        DropReason::Oversized,
        DropReason::SpoofedSource,
        DropReason::CrossNetwork,
        DropReason::UnknownDestination,
        DropReason::Misdirected,
        DropReason::UnknownEndpoint,
        DropReason::TunReadFailed,
        DropReason::TunWriteFailed,
        DropReason::UdpSendFailed,
        DropReason::UdpReceiveFailed,
        DropReason::NonIpv4Underlay,
        DropReason::NoBackend,
        DropReason::ConntrackFull,
        DropReason::VipUnsupported,
    ];

    /// The snake_case name used in stats and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadVxlanFlags => "bad_vxlan_flags",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::Malformed => "malformed",
            DropReason::Oversized => "oversized",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::CrossNetwork => "cross_network",
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::Misdirected => "misdirected",
            DropReason::UnknownEndpoint => "unknown_endpoint",
            DropReason::TunReadFailed => "tun_read_failed",
            DropReason::TunWriteFailed => "tun_write_failed",
            DropReason::UdpSendFailed => "udp_send_failed",
            DropReason::UdpReceiveFailed => "udp_receive_failed",
            DropReason::NonIpv4Underlay => "non_ipv4_underlay",
            DropReason::NoBackend => "no_backend",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::VipUnsupported => "vip_unsupported",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Packet counters, shared by every driver task; relaxed atomics, because
/// each counter is read on its own.
#[derive(Debug, Default)]
pub struct Counters {
    drops: [AtomicU64; DropReason::ALL.len()],
    encapsulated: [AtomicU64; 2],
    decapsulated: [AtomicU64; 2],
    delivered_locally: [AtomicU64; 2],
    tun_reads: AtomicU64,
}

fn add(counter: &[AtomicU64; 2], packets: u64, bytes: u64) {
    counter[0].fetch_add(packets, Ordering::Relaxed);
    counter[1].fetch_add(bytes, Ordering::Relaxed);
}

impl Counters {
    /// Counts `n` packets dropped for `reason`.
    pub fn drop(&self, reason: DropReason, n: u64) {
        self.drops[reason.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts packets (and their inner IP bytes) sent to another node.
    pub fn encapsulated(&self, packets: u64, bytes: u64) {
        add(&self.encapsulated, packets, bytes);
    }

    /// Counts packets (and their inner IP bytes) received from another node
    /// and delivered.
    pub fn decapsulated(&self, packets: u64, bytes: u64) {
        add(&self.decapsulated, packets, bytes);
    }

    /// Counts packets (and bytes) delivered between endpoints of this node.
    pub fn delivered_locally(&self, packets: u64, bytes: u64) {
        add(&self.delivered_locally, packets, bytes);
    }

    /// Counts reads from a TUN device that were processed (one read can be
    /// a super-packet of many segments): the kernel's TX packet count of
    /// the endpoints' TUNs must match it.
    pub fn tun_read(&self) {
        self.tun_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> CounterSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            encapsulated: load(&self.encapsulated[0]),
            encapsulated_bytes: load(&self.encapsulated[1]),
            decapsulated: load(&self.decapsulated[0]),
            decapsulated_bytes: load(&self.decapsulated[1]),
            delivered_locally: load(&self.delivered_locally[0]),
            delivered_locally_bytes: load(&self.delivered_locally[1]),
            tun_reads: load(&self.tun_reads),
            conntrack: ConntrackCounters::default(),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_owned(), load(&self.drops[r.index()])))
                .collect(),
        }
    }
}

/// Counter values at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    /// Packets sent to other nodes.
    pub encapsulated: u64,
    /// Their inner IP bytes.
    pub encapsulated_bytes: u64,
    /// Packets received from other nodes and delivered.
    pub decapsulated: u64,
    /// Their inner IP bytes.
    pub decapsulated_bytes: u64,
    /// Packets delivered between endpoints of this node.
    pub delivered_locally: u64,
    /// Their IP bytes.
    pub delivered_locally_bytes: u64,
    /// Reads from endpoints' TUN devices that were processed.
    pub tun_reads: u64,
    /// Drops per reason, by [`DropReason::name`] (`no_backend` is the load
    /// balancer's: new flows to a VIP without an active backend).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Connection tracking and VIP NAT (zero from [`Counters::snapshot`]
    /// alone: the driver fills them in from its [`Conntrack`](super::Conntrack)).
    #[serde(default)]
    pub conntrack: ConntrackCounters,
}

impl CounterSnapshot {
    /// Drops counted under `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.name()).copied().unwrap_or(0)
    }
}

/// Connection tracking and VIP NAT figures at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConntrackCounters {
    /// Flows tracked now.
    pub entries: u64,
    /// The most flows the table holds.
    pub capacity: u64,
    /// Flows created.
    pub created: u64,
    /// Flows removed because they timed out (or were closed and a SYN
    /// reused their ports).
    pub expired: u64,
    /// Flows removed early to make room for new ones at the capacity.
    pub evicted: u64,
    /// Flows removed because their VIP, backend, network or client went.
    pub removed: u64,
    /// Packets to a VIP whose destination was rewritten to a backend.
    pub nat_forward: u64,
    /// Replies whose source was rewritten back to the VIP.
    pub nat_reverse: u64,
    /// Pings to a VIP answered by the data plane.
    pub echo_replies: u64,
}
