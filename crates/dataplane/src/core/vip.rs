//! Service VIPs in the tables, and the NAT of their flows.
//!
//! A packet from a local task to a VIP is DNAT'ed here, on the client's
//! node, to the backend its flow has (or a new flow picks), then forwarded as
//! any packet to that address. A reply (backend address and port to client
//! address and port of a tracked flow) gets its source rewritten back to the
//! VIP just before it is written into the client's TUN, whether it came from
//! another node or from a local backend. Ports never change: a VIP maps each
//! of its ports to the same port of the backend, as Swarm's does.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use shoal_wire::checksum::{Checksums, Side};
use shoal_wire::{FlowKey, IpPacket, IpProtocol, Vni, icmp};

use super::conntrack::{TCP, Tuple, UDP};
use super::lb::{BackendFlows, MAX_BACKENDS, Service, VipService};
use super::{DropReason, Egress, EndpointId, Location, Network, TableError, Tables, to_node};

/// Rewrites a reply's source back to its flow's VIP: what an
/// [`Ingress::Deliver`](super::Ingress::Deliver) asks of the writer of the
/// packet (egress replies are rewritten in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceNat {
    vip: Ipv4Addr,
    checksums: Checksums,
}

impl SourceNat {
    /// The VIP the source becomes.
    pub fn vip(&self) -> Ipv4Addr {
        self.vip
    }

    /// Rewrites the source address of `packet` (the packet this was decided
    /// for, or a copy of it) to the VIP, updating the IP and TCP/UDP
    /// checksums incrementally. Fails, changing nothing, on a shorter buffer.
    pub fn apply(&self, packet: &mut [u8]) -> shoal_wire::Result<()> {
        self.checksums.rewrite_ipv4_addr(packet, Side::Source, self.vip)
    }
}

/// What NAT reads from a TCP or UDP packet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transport {
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    checksums: Checksums,
}

impl Transport {
    /// `None` for other protocols, fragments, and headers cut short.
    fn of(packet: &IpPacket<'_>) -> Option<Transport> {
        let (proto, header) = match packet.protocol {
            IpProtocol::Tcp => (TCP, 20),
            IpProtocol::Udp => (UDP, 8),
            _ => return None,
        };
        let payload = packet.payload();
        if packet.fragment || payload.len() < header {
            return None;
        }
        Some(Transport {
            proto,
            sport: u16::from_be_bytes([payload[0], payload[1]]),
            dport: u16::from_be_bytes([payload[2], payload[3]]),
            tcp_flags: if proto == TCP { payload[13] } else { 0 },
            checksums: Checksums::of(packet).ok()?,
        })
    }
}

/// A packet to a VIP, classified before its buffer is rewritten.
#[derive(Debug, Clone, Copy)]
pub(super) enum VipPacket {
    /// A ping: answered on the VIP's behalf.
    EchoRequest,
    /// A TCP or UDP packet: NAT'ed.
    Flow(Transport, FlowKey),
    /// A TCP or UDP header cut short.
    Malformed,
    /// Anything else, fragments included.
    Unsupported,
}

impl VipPacket {
    pub(super) fn of(packet: &IpPacket<'_>) -> VipPacket {
        match packet.protocol {
            IpProtocol::Icmp if icmp::is_echo_request(packet) => VipPacket::EchoRequest,
            IpProtocol::Tcp | IpProtocol::Udp if !packet.fragment => match Transport::of(packet) {
                Some(transport) => VipPacket::Flow(transport, packet.flow_key()),
                None => VipPacket::Malformed,
            },
            _ => VipPacket::Unsupported,
        }
    }
}

impl Network {
    /// Lists the backends of every VIP again, after a change.
    fn list_backends(&mut self) {
        self.backends = self.vips.values().flat_map(|s| s.slots().iter().map(|slot| slot.ip)).collect();
    }
}

impl Tables {
    /// Sets (or replaces) the VIP `service.vip` on network `vni`: new flows
    /// to it go to its active backends. Existing flows keep their backend
    /// while it is listed, active or draining; the flows of a backend no
    /// longer listed are removed at once.
    pub fn set_vip(&mut self, vni: Vni, service: VipService) -> Result<(), TableError> {
        let vip = service.vip;
        let network = self.network_for(vni, vip)?;
        if network.routes.contains_key(&vip) {
            return Err(TableError::AddressInUse { vni, ip: vip });
        }
        if service.backends.len() > MAX_BACKENDS {
            return Err(TableError::TooManyBackends { vip, count: service.backends.len() });
        }
        let mut seen = HashSet::with_capacity(service.backends.len());
        for backend in &service.backends {
            if !network.subnet.contains(backend.ip) {
                return Err(TableError::OutsideSubnet { ip: backend.ip, subnet: network.subnet });
            }
            if !seen.insert(backend.ip) {
                return Err(TableError::DuplicateBackend { vip, backend: backend.ip });
            }
        }
        let previous = network.vips.get(&vip).cloned();
        let next = Arc::new(Service::build(&service, previous.as_deref()));
        network.vips.insert(vip, next.clone());
        network.list_backends();
        let dropped_some = previous.is_some_and(|p| p.slots().iter().any(|s| next.slot(s.ip).is_none()));
        if dropped_some {
            self.conntrack
                .purge(|key, backend| key.vni == vni && key.dst == vip && next.slot(backend).is_none());
        }
        Ok(())
    }

    /// Removes a VIP and its flows; returns whether it was set.
    pub fn remove_vip(&mut self, vni: Vni, vip: Ipv4Addr) -> bool {
        let Some(network) = self.networks.get_mut(&vni) else { return false };
        if network.vips.remove(&vip).is_none() {
            return false;
        }
        network.list_backends();
        self.conntrack.purge(|key, _| key.vni == vni && key.dst == vip);
        self.conntrack.purge_pins(|v, ip| v == vni && ip == vip);
        true
    }

    /// Whether `ip` is a VIP on network `vni`.
    pub fn is_vip(&self, vni: Vni, ip: Ipv4Addr) -> bool {
        self.networks.get(&vni).is_some_and(|n| n.vips.contains_key(&ip))
    }

    /// Whether `backend` is listed (active or draining) for `vip` on `vni`.
    pub fn backend_listed(&self, vni: Vni, vip: Ipv4Addr, backend: Ipv4Addr) -> bool {
        self.networks.get(&vni).and_then(|n| n.vips.get(&vip)).is_some_and(|s| s.slot(backend).is_some())
    }

    /// Every backend of every VIP with the flows tracked to it, ordered by
    /// network, VIP and backend.
    pub fn lb_stats(&self) -> Vec<BackendFlows> {
        let mut stats: Vec<BackendFlows> = self
            .networks
            .iter()
            .flat_map(|(vni, network)| network.vips.values().map(move |service| (*vni, service)))
            .flat_map(|(vni, service)| {
                service.slots().iter().map(move |slot| BackendFlows {
                    vni,
                    vip: service.vip,
                    backend: slot.ip,
                    state: slot.state,
                    flows: slot.flows.load(std::sync::atomic::Ordering::Relaxed),
                })
            })
            .collect();
        stats.sort_by_key(|s| (s.vni, s.vip, s.backend));
        stats
    }

    /// Sweeps the connection-tracking table against these tables (see
    /// [`Conntrack::sweep`](super::Conntrack::sweep)).
    pub fn sweep(&self) -> usize {
        self.conntrack.sweep(|vni, vip, backend| self.backend_listed(vni, vip, backend))
    }

    /// The source rewrite that the IP packet `ip` (delivered on `network`,
    /// `vni`) needs if it is the reply of a tracked flow. The caller asks
    /// only if its destination [has flows](super::Conntrack::has_flows_of).
    /// Out of line, and parsing the packet again: anything more in the
    /// callers' hot path measurably slowed every packet (+10 to 15 ns).
    #[inline(never)]
    pub(super) fn reply_nat(&self, network: &Network, vni: Vni, ip: &[u8]) -> Option<SourceNat> {
        let packet = IpPacket::parse(ip).ok()?;
        let (IpAddr::V4(backend), IpAddr::V4(client)) = (packet.src, packet.dst) else { return None };
        // Only a backend's packets can be replies: from anyone else, no lock.
        if !network.backends.contains(&backend) {
            return None;
        }
        let t = Transport::of(&packet)?;
        let reply = Tuple { vni, proto: t.proto, src: backend, sport: t.sport, dst: client, dport: t.dport };
        let vip = self.conntrack.reply(&reply, t.tcp_flags).or_else(|| {
            self.conntrack.restored_reply(&reply, t.tcp_flags, |vip| network.vips.get(&vip)?.slot(backend))
        })?;
        Some(SourceNat { vip, checksums: t.checksums })
    }

    /// A packet from a local client straight to a backend: if it opens a
    /// connection (or is a datagram) from ports a VIP flow's replies use,
    /// that flow goes (see [`Conntrack::direct`](super::conntrack::Conntrack::direct)).
    pub(super) fn direct_to_backend(&self, network: &Network, vni: Vni, packet: &IpPacket<'_>) {
        let (IpAddr::V4(client), IpAddr::V4(backend)) = (packet.src, packet.dst) else { return };
        if !network.backends.contains(&backend) {
            return;
        }
        let Some(t) = Transport::of(packet) else { return };
        const SYN: u8 = 0x02;
        const ACK: u8 = 0x10;
        if t.proto == TCP && t.tcp_flags & (SYN | ACK) != SYN {
            return;
        }
        let reply = Tuple { vni, proto: t.proto, src: backend, sport: t.dport, dst: client, dport: t.sport };
        self.conntrack.direct(&reply);
    }

    /// The egress of a packet from local endpoint `from` (address `client`
    /// on `vni`) to `service`'s VIP: `buf[at..at + len]` is the packet.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn egress_vip(
        &self,
        (from, vni, client): (EndpointId, Vni, Ipv4Addr),
        network: &Network,
        service: &Service,
        what: VipPacket,
        buf: &mut [u8],
        at: usize,
        len: usize,
    ) -> Egress {
        let (t, flow) = match what {
            VipPacket::EchoRequest => {
                return match icmp::echo_reply_in_place(&mut buf[at..at + len]) {
                    Ok(()) => {
                        self.conntrack.count_echo_reply();
                        Egress::Local { to: from, packet: at..at + len }
                    }
                    Err(_) => Egress::Drop(DropReason::Malformed),
                };
            }
            VipPacket::Flow(t, flow) => (t, flow),
            VipPacket::Malformed => return Egress::Drop(DropReason::Malformed),
            VipPacket::Unsupported => return Egress::Drop(DropReason::VipUnsupported),
        };
        let key =
            Tuple { vni, proto: t.proto, src: client, sport: t.sport, dst: service.vip, dport: t.dport };
        // The flow hash (as the client sent it) picks the Maglev entry and the
        // outer source port alike.
        let hash = flow.hash();
        let backend = match self.conntrack.forward(&key, t.tcp_flags, service, hash) {
            Ok(backend) => backend,
            Err(reason) => return Egress::Drop(reason),
        };
        if t.checksums.rewrite_ipv4_addr(&mut buf[at..at + len], Side::Destination, backend).is_err() {
            return Egress::Drop(DropReason::Malformed);
        }
        match network.routes.get(&backend) {
            Some(Location::Local(to)) => Egress::Local { to: *to, packet: at..at + len },
            Some(Location::Remote(node)) => to_node(buf, at..at + len, (vni, client, backend), *node, hash),
            None => Egress::Drop(DropReason::UnknownDestination),
        }
    }
}
