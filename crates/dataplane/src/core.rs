//! The forwarding core: endpoint tables and the per-packet decisions made over
//! them. No IO, no clock, no allocation per packet.
//!
//! A packet from a local endpoint's TUN goes through [`Tables::egress`]; a VXLAN
//! datagram from the underlay through [`Tables::ingress`]. Each returns what to
//! do with the bytes; the driver does it. Tables are values: the driver builds
//! a new one for every change and swaps it in, so lookups never lock.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_wire::ethernet::{EthernetRepr, HEADER_LEN as ETHERNET_LEN};
use shoal_wire::ip::Ipv4Cidr;
use shoal_wire::vxlan::{HEADER_LEN as VXLAN_LEN, VxlanRepr};
use shoal_wire::{ENCAP_HEADROOM, EtherType, EthernetAddress, EthernetFrame, IpPacket, Vni, VxlanPacket};

/// A local endpoint: one task's interface on one network, on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u32);

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ep{}", self.0)
    }
}

/// Where an overlay address lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// On this node, behind the given endpoint's TUN.
    Local(EndpointId),
    /// On another node, reached at this underlay address.
    Remote(Ipv4Addr),
}

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
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 16] = [
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
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// What to do with a packet read from a local endpoint's TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a verdict to carry out: write the packet, send the frame, or count the drop"]
pub enum Egress {
    /// Write `packet` (a range of the buffer) into another local endpoint.
    Local {
        /// The receiving endpoint.
        to: EndpointId,
        /// The IP packet.
        packet: Range<usize>,
    },
    /// Send `frame` (VXLAN header onwards, written in the headroom) over UDP to
    /// `node`.
    Remote {
        /// Underlay address of the node hosting the destination.
        node: Ipv4Addr,
        /// Hash of the inner flow: picks the outer source port.
        flow: u32,
        /// The UDP payload.
        frame: Range<usize>,
    },
    /// Count it and forget it.
    Drop(DropReason),
}

/// What to do with a datagram received on the VXLAN port.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a verdict to carry out: deliver the packet or count the drop"]
pub enum Ingress {
    /// Write `packet` (a range of the datagram) into a local endpoint.
    Deliver {
        /// The receiving endpoint.
        to: EndpointId,
        /// The inner IP packet.
        packet: Range<usize>,
    },
    /// Count it and forget it.
    Drop(DropReason),
}

/// Why a table change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The VNI is already in use by a network with another subnet.
    #[error("vni {vni} is already used by network {existing}")]
    VniInUse {
        /// The VNI asked for.
        vni: Vni,
        /// The subnet that holds it.
        existing: Ipv4Cidr,
    },
    /// No network has this VNI.
    #[error("no network with vni {0}")]
    UnknownNetwork(Vni),
    /// The address is outside the network's subnet.
    #[error("{ip} is outside network {subnet}")]
    OutsideSubnet {
        /// The address asked for.
        ip: Ipv4Addr,
        /// The network's subnet.
        subnet: Ipv4Cidr,
    },
    /// The address is held by a local endpoint already.
    #[error("{ip} is already attached on this node in vni {vni}")]
    AddressInUse {
        /// The network.
        vni: Vni,
        /// The address.
        ip: Ipv4Addr,
    },
}

#[derive(Debug, Clone)]
struct Network {
    subnet: Ipv4Cidr,
    routes: HashMap<Ipv4Addr, Location>,
}

#[derive(Debug, Clone, Copy)]
struct LocalEndpoint {
    vni: Vni,
    ip: Ipv4Addr,
}

/// Networks, their endpoints, and where each endpoint lives.
#[derive(Debug, Clone)]
pub struct Tables {
    networks: HashMap<Vni, Network>,
    local: HashMap<EndpointId, LocalEndpoint>,
    mtu: usize,
}

impl Tables {
    /// Empty tables for an overlay whose interfaces have this MTU: the
    /// largest inner packet forwarded.
    pub fn new(mtu: u16) -> Tables {
        Tables { networks: HashMap::new(), local: HashMap::new(), mtu: usize::from(mtu) }
    }

    /// The overlay MTU.
    pub fn mtu(&self) -> u16 {
        self.mtu as u16
    }

    /// Adds a network. Adding the same network twice is a no-op.
    pub fn add_network(&mut self, vni: Vni, subnet: Ipv4Cidr) -> Result<(), TableError> {
        match self.networks.get(&vni) {
            Some(n) if n.subnet == subnet => Ok(()),
            Some(n) => Err(TableError::VniInUse { vni, existing: n.subnet }),
            None => {
                self.networks.insert(vni, Network { subnet, routes: HashMap::new() });
                Ok(())
            }
        }
    }

    /// Removes a network with all its routes and local endpoints.
    pub fn remove_network(&mut self, vni: Vni) {
        self.networks.remove(&vni);
        self.local.retain(|_, ep| ep.vni != vni);
    }

    /// How many networks the tables hold.
    pub fn network_count(&self) -> usize {
        self.networks.len()
    }

    /// The subnet of a network.
    pub fn subnet(&self, vni: Vni) -> Option<Ipv4Cidr> {
        self.networks.get(&vni).map(|n| n.subnet)
    }

    fn network_for(&mut self, vni: Vni, ip: Ipv4Addr) -> Result<&mut Network, TableError> {
        let network = self.networks.get_mut(&vni).ok_or(TableError::UnknownNetwork(vni))?;
        if !network.subnet.contains(ip) {
            return Err(TableError::OutsideSubnet { ip, subnet: network.subnet });
        }
        Ok(network)
    }

    /// Attaches a local endpoint holding `ip` on network `vni`.
    pub fn attach(&mut self, id: EndpointId, vni: Vni, ip: Ipv4Addr) -> Result<(), TableError> {
        let network = self.network_for(vni, ip)?;
        if let Some(Location::Local(_)) = network.routes.get(&ip) {
            return Err(TableError::AddressInUse { vni, ip });
        }
        network.routes.insert(ip, Location::Local(id));
        self.local.insert(id, LocalEndpoint { vni, ip });
        Ok(())
    }

    /// Detaches a local endpoint; returns whether it was attached.
    pub fn detach(&mut self, id: EndpointId) -> bool {
        let Some(ep) = self.local.remove(&id) else { return false };
        if let Some(network) = self.networks.get_mut(&ep.vni)
            && network.routes.get(&ep.ip) == Some(&Location::Local(id))
        {
            network.routes.remove(&ep.ip);
        }
        true
    }

    /// Records that `ip` on network `vni` lives on the node at `node`.
    /// A local endpoint's address is never overwritten by a remote claim.
    pub fn set_remote(&mut self, vni: Vni, ip: Ipv4Addr, node: Ipv4Addr) -> Result<(), TableError> {
        let network = self.network_for(vni, ip)?;
        if let Some(Location::Local(_)) = network.routes.get(&ip) {
            return Err(TableError::AddressInUse { vni, ip });
        }
        network.routes.insert(ip, Location::Remote(node));
        Ok(())
    }

    /// Forgets a remote address; returns whether it was known.
    pub fn remove_remote(&mut self, vni: Vni, ip: Ipv4Addr) -> bool {
        let Some(network) = self.networks.get_mut(&vni) else { return false };
        match network.routes.get(&ip) {
            Some(Location::Remote(_)) => network.routes.remove(&ip).is_some(),
            _ => false,
        }
    }

    /// Where `ip` lives on network `vni`.
    pub fn lookup(&self, vni: Vni, ip: Ipv4Addr) -> Option<Location> {
        self.networks.get(&vni)?.routes.get(&ip).copied()
    }

    /// The local endpoints, with their network and address.
    pub fn local_endpoints(&self) -> impl Iterator<Item = (EndpointId, Vni, Ipv4Addr)> + '_ {
        self.local.iter().map(|(id, ep)| (*id, ep.vni, ep.ip))
    }

    /// Decides what to do with a packet that local endpoint `from` wrote into
    /// its TUN. The packet is `buf[at..at + len]`; `at` must leave
    /// [`ENCAP_HEADROOM`] bytes in front, where a remote verdict has written
    /// the VXLAN and inner Ethernet headers.
    pub fn egress(&self, from: EndpointId, buf: &mut [u8], at: usize, len: usize) -> Egress {
        debug_assert!(at >= ENCAP_HEADROOM && at + len <= buf.len());
        let Some(ep) = self.local.get(&from) else { return Egress::Drop(DropReason::UnknownEndpoint) };
        let Ok(packet) = IpPacket::parse(&buf[at..at + len]) else {
            return Egress::Drop(DropReason::Malformed);
        };
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (packet.src, packet.dst) else {
            return Egress::Drop(DropReason::UnsupportedProtocol);
        };
        if packet.bytes.len() > self.mtu {
            return Egress::Drop(DropReason::Oversized);
        }
        if src != ep.ip {
            return Egress::Drop(DropReason::SpoofedSource);
        }
        let Some(network) = self.networks.get(&ep.vni) else { return Egress::Drop(DropReason::UnknownVni) };
        if !network.subnet.contains(dst) {
            return Egress::Drop(DropReason::CrossNetwork);
        }
        let ip_len = packet.bytes.len();
        match network.routes.get(&dst) {
            None => Egress::Drop(DropReason::UnknownDestination),
            Some(Location::Local(to)) => Egress::Local { to: *to, packet: at..at + ip_len },
            Some(Location::Remote(node)) => {
                let flow = packet.flow_key().hash();
                let start = at - ENCAP_HEADROOM;
                encapsulate(&mut buf[start..at], ep.vni, src, dst);
                Egress::Remote { node: *node, flow, frame: start..at + ip_len }
            }
        }
    }

    /// Decides what to do with a datagram that `from` (an underlay address)
    /// sent to the VXLAN port.
    pub fn ingress(&self, from: Ipv4Addr, datagram: &[u8]) -> Ingress {
        let Ok(vxlan) = VxlanPacket::new_checked(datagram) else {
            return Ingress::Drop(DropReason::Truncated);
        };
        let Ok(repr) = VxlanRepr::parse(&vxlan) else { return Ingress::Drop(DropReason::BadVxlanFlags) };
        let Some(network) = self.networks.get(&repr.vni) else {
            return Ingress::Drop(DropReason::UnknownVni);
        };
        let Ok(frame) = EthernetFrame::new_checked(vxlan.payload()) else {
            return Ingress::Drop(DropReason::Truncated);
        };
        if frame.ethertype() != EtherType::Ipv4 {
            return Ingress::Drop(DropReason::UnsupportedProtocol);
        }
        let Ok(packet) = IpPacket::parse(frame.payload()) else {
            return Ingress::Drop(DropReason::Malformed);
        };
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (packet.src, packet.dst) else {
            return Ingress::Drop(DropReason::Malformed);
        };
        if packet.bytes.len() > self.mtu {
            return Ingress::Drop(DropReason::Oversized);
        }
        if network.routes.get(&src) != Some(&Location::Remote(from)) {
            return Ingress::Drop(DropReason::SpoofedSource);
        }
        match network.routes.get(&dst) {
            Some(Location::Local(to)) => {
                let start = VXLAN_LEN + ETHERNET_LEN;
                Ingress::Deliver { to: *to, packet: start..start + packet.bytes.len() }
            }
            Some(Location::Remote(_)) => Ingress::Drop(DropReason::Misdirected),
            None if network.subnet.contains(dst) => Ingress::Drop(DropReason::UnknownDestination),
            None => Ingress::Drop(DropReason::CrossNetwork),
        }
    }
}

/// Writes the VXLAN and inner Ethernet headers into `headroom`, which is
/// exactly [`ENCAP_HEADROOM`] bytes long.
fn encapsulate(headroom: &mut [u8], vni: Vni, src: Ipv4Addr, dst: Ipv4Addr) {
    let (vxlan, ethernet) = headroom.split_at_mut(VXLAN_LEN);
    VxlanRepr { vni }.emit(&mut VxlanPacket::new_unchecked(vxlan));
    let repr = EthernetRepr {
        src_addr: EthernetAddress::from_ipv4(src),
        dst_addr: EthernetAddress::from_ipv4(dst),
        ethertype: EtherType::Ipv4,
    };
    repr.emit(&mut EthernetFrame::new_unchecked(ethernet));
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
    /// Drops per reason, by [`DropReason::name`].
    pub drops: std::collections::BTreeMap<String, u64>,
}

impl CounterSnapshot {
    /// Drops counted under `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.name()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
