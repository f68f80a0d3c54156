//! The forwarding core: endpoint tables, service VIPs, and the per-packet
//! decisions made over them. No IO, no clock, no allocation per packet of a
//! known flow.
//!
//! A packet from a local endpoint's TUN goes through [`Tables::egress`]; a VXLAN
//! datagram from the underlay through [`Tables::ingress`]. Each returns what to
//! do with the bytes; the driver does it. Tables are values: the driver builds
//! a new one for every change and swaps it in, so route and VIP lookups never
//! lock. The one shared, changing part is the connection tracking of VIP
//! flows ([`Conntrack`], sharded), which every version of the tables holds.
//!
//! Submodules: `vip` (VIPs in the tables, DNAT and its reverse), `lb`
//! (backends and policies), `conntrack` (the flow table), `counters`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::sync::Arc;

use shoal_wire::ethernet::{EthernetRepr, HEADER_LEN as ETHERNET_LEN};
use shoal_wire::ip::Ipv4Cidr;
use shoal_wire::vxlan::{HEADER_LEN as VXLAN_LEN, VxlanRepr};
use shoal_wire::{ENCAP_HEADROOM, EtherType, EthernetAddress, EthernetFrame, IpPacket, Vni, VxlanPacket};

mod conntrack;
mod counters;
mod hash;
mod lb;
mod vip;

pub use conntrack::{Conntrack, DEFAULT_CAPACITY as DEFAULT_CONNTRACK_CAPACITY, SavedFlow, timeouts};
pub use counters::{ConntrackCounters, CounterSnapshot, Counters, DropReason};
use hash::FastHash;
pub use lb::{Backend, BackendFlows, BackendState, MAGLEV_TABLE_SIZE, MAX_BACKENDS, Policy, VipService};
pub use vip::SourceNat;
use vip::VipPacket;

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
        /// The reply of a VIP flow: apply this to the copy written, so that
        /// it comes from the VIP.
        nat: Option<SourceNat>,
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
    /// The address is held already: by a local endpoint, or by a VIP (for
    /// an endpoint or route), or by an endpoint (for a VIP).
    #[error("{ip} is already in use in vni {vni}")]
    AddressInUse {
        /// The network.
        vni: Vni,
        /// The address.
        ip: Ipv4Addr,
    },
    /// A VIP lists one backend twice.
    #[error("vip {vip} lists backend {backend} twice")]
    DuplicateBackend {
        /// The VIP.
        vip: Ipv4Addr,
        /// The backend listed twice.
        backend: Ipv4Addr,
    },
    /// A VIP lists more backends than [`MAX_BACKENDS`].
    #[error("vip {vip} lists {count} backends, more than {max}", max = MAX_BACKENDS)]
    TooManyBackends {
        /// The VIP.
        vip: Ipv4Addr,
        /// How many it lists.
        count: usize,
    },
}

#[derive(Debug, Clone)]
struct Network {
    subnet: Ipv4Cidr,
    routes: HashMap<Ipv4Addr, Location, FastHash>,
    /// Service VIPs; never an address `routes` holds.
    vips: HashMap<Ipv4Addr, Arc<lb::Service>, FastHash>,
    /// Every backend of those VIPs: only a packet from one can be a reply.
    backends: HashSet<Ipv4Addr, FastHash>,
}

#[derive(Debug, Clone, Copy)]
struct LocalEndpoint {
    vni: Vni,
    ip: Ipv4Addr,
}

/// Networks, their endpoints and VIPs, where each endpoint lives, and (shared
/// by every clone) the connection tracking of VIP flows.
#[derive(Debug, Clone)]
pub struct Tables {
    networks: HashMap<Vni, Network, FastHash>,
    local: HashMap<EndpointId, LocalEndpoint, FastHash>,
    mtu: usize,
    conntrack: Arc<Conntrack>,
}

impl Tables {
    /// Empty tables for an overlay whose interfaces have this MTU: the
    /// largest inner packet forwarded. Their connection tracking has the
    /// default capacity and a fixed hash seed, for tests and benchmarks; the
    /// driver uses [`Tables::with_conntrack`].
    pub fn new(mtu: u16) -> Tables {
        Tables::with_conntrack(mtu, Arc::new(Conntrack::new(conntrack::DEFAULT_CAPACITY, 0)))
    }

    /// Empty tables that track VIP flows in `conntrack`.
    pub fn with_conntrack(mtu: u16, conntrack: Arc<Conntrack>) -> Tables {
        Tables { networks: HashMap::default(), local: HashMap::default(), mtu: usize::from(mtu), conntrack }
    }

    /// The connection tracking of VIP flows.
    pub fn conntrack(&self) -> &Arc<Conntrack> {
        &self.conntrack
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
                let network = Network {
                    subnet,
                    routes: HashMap::default(),
                    vips: HashMap::default(),
                    backends: HashSet::default(),
                };
                self.networks.insert(vni, network);
                Ok(())
            }
        }
    }

    /// Removes a network with all its routes, VIPs (and their flows) and
    /// local endpoints.
    pub fn remove_network(&mut self, vni: Vni) {
        if let Some(network) = self.networks.remove(&vni)
            && !network.vips.is_empty()
        {
            self.conntrack.purge(|key, _| key.vni == vni);
            self.conntrack.purge_pins(|v, _| v == vni);
        }
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

    /// The network for an endpoint or route holding `ip`: not a VIP.
    fn network_for_endpoint(&mut self, vni: Vni, ip: Ipv4Addr) -> Result<&mut Network, TableError> {
        let network = self.network_for(vni, ip)?;
        if network.vips.contains_key(&ip) {
            return Err(TableError::AddressInUse { vni, ip });
        }
        Ok(network)
    }

    /// Attaches a local endpoint holding `ip` on network `vni`.
    pub fn attach(&mut self, id: EndpointId, vni: Vni, ip: Ipv4Addr) -> Result<(), TableError> {
        let network = self.network_for_endpoint(vni, ip)?;
        if let Some(Location::Local(_)) = network.routes.get(&ip) {
            return Err(TableError::AddressInUse { vni, ip });
        }
        network.routes.insert(ip, Location::Local(id));
        self.local.insert(id, LocalEndpoint { vni, ip });
        Ok(())
    }

    /// Detaches a local endpoint, forgetting the VIP flows it was the client
    /// of; returns whether it was attached.
    pub fn detach(&mut self, id: EndpointId) -> bool {
        let Some(ep) = self.local.remove(&id) else { return false };
        if let Some(network) = self.networks.get_mut(&ep.vni)
            && network.routes.get(&ep.ip) == Some(&Location::Local(id))
        {
            network.routes.remove(&ep.ip);
        }
        if self.conntrack.has_flows_of(ep.ip) {
            self.conntrack.purge(|key, _| key.vni == ep.vni && key.src == ep.ip);
        }
        true
    }

    /// Records that `ip` on network `vni` lives on the node at `node`.
    /// A local endpoint's address is never overwritten by a remote claim.
    pub fn set_remote(&mut self, vni: Vni, ip: Ipv4Addr, node: Ipv4Addr) -> Result<(), TableError> {
        let network = self.network_for_endpoint(vni, ip)?;
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
        let (ep, network, packet, src, dst) = match self.admit(from, &buf[at..at + len], None) {
            Ok(admitted) => admitted,
            Err(reason) => return Egress::Drop(reason),
        };
        let ip_len = packet.bytes.len();
        let route = network.routes.get(&dst);
        // Straight to a backend, from a client with VIP flows: it may reuse
        // a closing VIP flow's ports.
        if route.is_some() && self.conntrack.has_flows_of(src) {
            self.direct_to_backend(network, ep.vni, &packet);
        }
        match route {
            Some(Location::Local(to)) => {
                // A local backend's reply to a local client of its VIP? Only
                // a client with VIP flows is worth a look.
                if self.conntrack.has_flows_of(dst)
                    && let Some(nat) = self.reply_nat(network, ep.vni, &buf[at..at + ip_len])
                    && nat.apply(&mut buf[at..at + ip_len]).is_err()
                {
                    return Egress::Drop(DropReason::Malformed);
                }
                Egress::Local { to: *to, packet: at..at + ip_len }
            }
            Some(Location::Remote(node)) => {
                let flow = packet.flow_key().hash();
                to_node(buf, at..at + ip_len, (ep.vni, src, dst), *node, flow)
            }
            None => match network.vips.get(&dst) {
                Some(service) => {
                    let what = VipPacket::of(&packet);
                    self.egress_vip((from, ep.vni, src), network, service, what, buf, at, ip_len)
                }
                None => Egress::Drop(DropReason::UnknownDestination),
            },
        }
    }

    /// The one decision for every segment of a packet read whole from
    /// `from`'s TUN (a TSO super-packet of `len` bytes at `at`, whose
    /// largest segment is `largest` bytes), where one holds: a route to a
    /// local endpoint or to another node, no VIP flow of either address
    /// involved. For a remote node the headroom is encapsulated as by
    /// [`Tables::egress`]. `None` otherwise (a VIP, a NAT, a drop): the
    /// caller cuts the packet and asks [`Tables::egress`] segment by
    /// segment, which decides and counts exactly.
    pub fn egress_whole(
        &self,
        from: EndpointId,
        buf: &mut [u8],
        at: usize,
        len: usize,
        largest: usize,
    ) -> Option<Egress> {
        let (ep, network, packet, src, dst) = self.admit(from, &buf[at..at + len], Some(largest)).ok()?;
        if self.conntrack.has_flows_of(src) || self.conntrack.has_flows_of(dst) {
            return None;
        }
        let ip_len = packet.bytes.len();
        match network.routes.get(&dst)? {
            Location::Local(to) => Some(Egress::Local { to: *to, packet: at..at + ip_len }),
            Location::Remote(node) => {
                let flow = packet.flow_key().hash();
                Some(to_node(buf, at..at + ip_len, (ep.vni, src, dst), *node, flow))
            }
        }
    }

    /// The checks every packet from local endpoint `from` passes, read whole
    /// or one segment at a time: a known endpoint, IPv4, at most the MTU
    /// (its largest segment, if `largest` says, else the packet), the
    /// endpoint's own source, a destination in its network.
    fn admit<'a>(
        &self,
        from: EndpointId,
        bytes: &'a [u8],
        largest: Option<usize>,
    ) -> Result<(&LocalEndpoint, &Network, IpPacket<'a>, Ipv4Addr, Ipv4Addr), DropReason> {
        let ep = self.local.get(&from).ok_or(DropReason::UnknownEndpoint)?;
        let packet = IpPacket::parse(bytes).map_err(|_| DropReason::Malformed)?;
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (packet.src, packet.dst) else {
            return Err(DropReason::UnsupportedProtocol);
        };
        if largest.unwrap_or(packet.bytes.len()) > self.mtu {
            return Err(DropReason::Oversized);
        }
        if src != ep.ip {
            return Err(DropReason::SpoofedSource);
        }
        let network = self.networks.get(&ep.vni).ok_or(DropReason::UnknownVni)?;
        if !network.subnet.contains(dst) {
            return Err(DropReason::CrossNetwork);
        }
        Ok((ep, network, packet, src, dst))
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
                // A remote backend's reply to a local client of its VIP?
                let ip_len = packet.bytes.len();
                let nat = if self.conntrack.has_flows_of(dst) {
                    self.reply_nat(network, repr.vni, &datagram[start..start + ip_len])
                } else {
                    None
                };
                Ingress::Deliver { to: *to, packet: start..start + ip_len, nat }
            }
            Some(Location::Remote(_)) => Ingress::Drop(DropReason::Misdirected),
            None if network.subnet.contains(dst) => Ingress::Drop(DropReason::UnknownDestination),
            None => Ingress::Drop(DropReason::CrossNetwork),
        }
    }
}

/// The verdict for the packet at `packet` in `buf`, bound for `node`: the
/// VXLAN and inner Ethernet headers (network `vni`, addresses `src` and
/// `dst`) written in the headroom before it.
fn to_node(
    buf: &mut [u8],
    packet: Range<usize>,
    (vni, src, dst): (Vni, Ipv4Addr, Ipv4Addr),
    node: Ipv4Addr,
    flow: u32,
) -> Egress {
    let start = packet.start - ENCAP_HEADROOM;
    encapsulate(&mut buf[start..packet.start], vni, src, dst);
    Egress::Remote { node, flow, frame: start..packet.end }
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_conntrack;
#[cfg(test)]
mod tests_vip;
