//! Service VIPs: DNAT, its reverse on both paths, ping, policies, backend
//! states, table checks.

use super::tests::{EP1, EP2, EP3, NODE_A, NODE_B, T1, T2, T3, VNI, node_a, node_b, with_headroom};
use super::*;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

pub(super) const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
pub(super) const SYN: u8 = 0x02;
pub(super) const ACK: u8 = 0x10;
pub(super) const FIN: u8 = 0x01;
pub(super) const RST: u8 = 0x04;

/// The i-th backend placed on node B.
pub(super) fn remote(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, 10 + i)
}

pub(super) fn active(ips: impl IntoIterator<Item = Ipv4Addr>) -> Vec<Backend> {
    ips.into_iter().map(Backend::active).collect()
}

pub(super) fn service(policy: Policy, backends: Vec<Backend>) -> VipService {
    VipService { vip: VIP, policy, affinity: None, backends }
}

/// Node A of `tests::node_a` (clients T1 and T2, T3 on node B), with forty
/// more addresses on node B to be backends, and `service` set.
pub(super) fn node_a_with(conntrack: Arc<Conntrack>, service: VipService) -> Tables {
    let mut t = Tables::with_conntrack(1450, conntrack);
    t.add_network(VNI, "10.0.1.0/24".parse().unwrap()).unwrap();
    t.attach(EP1, VNI, T1).unwrap();
    t.attach(EP2, VNI, T2).unwrap();
    t.set_remote(VNI, T3, NODE_B).unwrap();
    for i in 0..40 {
        t.set_remote(VNI, remote(i), NODE_B).unwrap();
    }
    t.set_vip(VNI, service).unwrap();
    t
}

pub(super) fn with_vip(policy: Policy, backends: Vec<Backend>) -> Tables {
    node_a_with(Arc::new(Conntrack::new(DEFAULT_CONNTRACK_CAPACITY, 0)), service(policy, backends))
}

pub(super) fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let mut builder = PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64).tcp(src.1, dst.1, 1000, 65535);
    if flags & SYN != 0 {
        builder = builder.syn();
    }
    if flags & ACK != 0 {
        builder = builder.ack(1);
    }
    if flags & FIN != 0 {
        builder = builder.fin();
    }
    if flags & RST != 0 {
        builder = builder.rst();
    }
    let mut out = Vec::new();
    builder.write(&mut out, if flags & SYN != 0 { b"" } else { b"some data" }).unwrap();
    out
}

pub(super) fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64).udp(src.1, dst.1);
    let mut out = Vec::new();
    builder.write(&mut out, b"query").unwrap();
    out
}

/// Egress of `packet` from `from`: the verdict and the IP packet as it
/// leaves (empty if dropped).
pub(super) fn send(t: &Tables, from: EndpointId, packet: &[u8]) -> (Egress, Vec<u8>) {
    let mut buf = with_headroom(packet);
    let verdict = t.egress(from, &mut buf, ENCAP_HEADROOM, packet.len());
    let out = match &verdict {
        Egress::Local { packet, .. } => buf[packet.clone()].to_vec(),
        Egress::Remote { frame, .. } => buf[frame.start + ENCAP_HEADROOM..frame.end].to_vec(),
        Egress::Drop(_) => Vec::new(),
    };
    (verdict, out)
}

pub(super) fn addrs(packet: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let p = IpPacket::parse(packet).unwrap();
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (p.src, p.dst) else { panic!("not ipv4") };
    (src, dst)
}

/// The backend a client's packet to the VIP was sent to.
pub(super) fn backend_of(t: &Tables, from: EndpointId, packet: &[u8]) -> Ipv4Addr {
    let (verdict, out) = send(t, from, packet);
    assert!(!matches!(verdict, Egress::Drop(_)), "{verdict:?}");
    addrs(&out).1
}

/// A VXLAN datagram from node B carrying `packet`.
pub(super) fn from_node_b(packet: &[u8]) -> Vec<u8> {
    let (src, dst) = addrs(packet);
    let mut frame = vec![0u8; ENCAP_HEADROOM];
    encapsulate(&mut frame, VNI, src, dst);
    frame.extend_from_slice(packet);
    frame
}

/// Every checksum of an IPv4 TCP, UDP or ICMP packet, recomputed in full.
pub(super) fn assert_checksums_valid(bytes: &[u8]) {
    let sliced = SlicedPacket::from_ip(bytes).unwrap();
    let Some(NetSlice::Ipv4(ip)) = sliced.net else { panic!("not ipv4") };
    let header = ip.header().to_header();
    assert_eq!(header.header_checksum, header.calc_header_checksum(), "ip header");
    match sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let expected = tcp.to_header().calc_checksum_ipv4(&header, tcp.payload()).unwrap();
            assert_eq!(tcp.checksum(), expected, "tcp");
        }
        Some(TransportSlice::Udp(udp)) if udp.checksum() != 0 => {
            let expected = udp.to_header().calc_checksum_ipv4(&header, udp.payload()).unwrap();
            assert_eq!(udp.checksum(), expected, "udp");
        }
        Some(TransportSlice::Udp(_)) => {}
        Some(TransportSlice::Icmpv4(icmp)) => {
            assert_eq!(icmp.checksum(), icmp.header().icmp_type.calc_checksum(icmp.payload()), "icmp");
        }
        other => panic!("unexpected transport {other:?}"),
    }
}

fn ports(packet: &[u8]) -> (u16, u16) {
    let flow = IpPacket::parse(packet).unwrap().flow_key();
    (flow.src_port, flow.dst_port)
}

#[test]
fn tcp_to_a_vip_goes_to_a_remote_backend_with_valid_checksums() {
    let a = with_vip(Policy::RoundRobin, active([T3]));
    let packet = tcp((T1, 40000), (VIP, 80), SYN);
    let mut buf = with_headroom(&packet);
    let verdict = a.egress(EP1, &mut buf, ENCAP_HEADROOM, packet.len());
    let Egress::Remote { node, frame, .. } = verdict else { panic!("{verdict:?}") };
    assert_eq!(node, NODE_B);
    let inner = &buf[frame.start + ENCAP_HEADROOM..frame.end];
    assert_eq!(addrs(inner), (T1, T3));
    assert_eq!(ports(inner), (40000, 80), "ports stay");
    assert_checksums_valid(inner);
    assert_eq!(
        &buf[frame.start + 8..frame.start + 14],
        &EthernetAddress::from_ipv4(T3).0,
        "inner MAC of the backend"
    );
    // On node B it is a plain packet from T1 to T3.
    let datagram = buf[frame].to_vec();
    assert!(matches!(node_b().ingress(NODE_A, &datagram), Ingress::Deliver { to: EP3, nat: None, .. }));
    assert_eq!(a.conntrack().counters().nat_forward, 1);
}

#[test]
fn udp_to_a_vip_goes_to_a_local_backend_with_valid_checksums() {
    let a = with_vip(Policy::RoundRobin, active([T2]));
    let (verdict, out) = send(&a, EP1, &udp((T1, 5353), (VIP, 53)));
    assert_eq!(verdict, Egress::Local { to: EP2, packet: ENCAP_HEADROOM..ENCAP_HEADROOM + out.len() });
    assert_eq!(addrs(&out), (T1, T2));
    assert_eq!(ports(&out), (5353, 53));
    assert_checksums_valid(&out);
    // A zero UDP checksum means none, and stays zero.
    let mut unchecked = udp((T1, 5354), (VIP, 53));
    unchecked[26..28].copy_from_slice(&[0, 0]);
    let (_, out) = send(&a, EP1, &unchecked);
    assert_eq!(&out[26..28], &[0, 0]);
    assert_checksums_valid(&out);
}

#[test]
fn a_remote_backends_reply_comes_from_the_vip_on_ingress() {
    let a = with_vip(Policy::RoundRobin, active([T3]));
    let b = node_b();
    assert_eq!(backend_of(&a, EP1, &tcp((T1, 40000), (VIP, 80), SYN)), T3);
    // T3 answers on node B, which sends the reply to node A as it is.
    let reply = tcp((T3, 80), (T1, 40000), SYN | ACK);
    let mut buf = with_headroom(&reply);
    let Egress::Remote { node: NODE_A, frame, .. } = b.egress(EP3, &mut buf, ENCAP_HEADROOM, reply.len())
    else {
        panic!("not sent to node A")
    };
    let datagram = buf[frame].to_vec();
    let verdict = a.ingress(NODE_B, &datagram);
    let Ingress::Deliver { to: EP1, packet, nat: Some(nat) } = verdict else { panic!("{verdict:?}") };
    assert_eq!(nat.vip(), VIP);
    let mut written = datagram[packet].to_vec();
    nat.apply(&mut written).unwrap();
    assert_eq!(addrs(&written), (VIP, T1));
    assert_eq!(ports(&written), (80, 40000));
    assert_checksums_valid(&written);
    // From another port, T3 is just T3.
    let other = from_node_b(&tcp((T3, 81), (T1, 40000), ACK));
    assert!(matches!(a.ingress(NODE_B, &other), Ingress::Deliver { nat: None, .. }));
    assert_eq!(a.conntrack().counters().nat_reverse, 1);
}

#[test]
fn a_local_backends_reply_comes_from_the_vip_on_egress() {
    let a = with_vip(Policy::RoundRobin, active([T2]));
    assert_eq!(backend_of(&a, EP1, &udp((T1, 5353), (VIP, 53))), T2);
    let (verdict, out) = send(&a, EP2, &udp((T2, 53), (T1, 5353)));
    assert!(matches!(verdict, Egress::Local { to: EP1, .. }), "{verdict:?}");
    assert_eq!(addrs(&out), (VIP, T1));
    assert_eq!(ports(&out), (53, 5353));
    assert_checksums_valid(&out);
    let (_, out) = send(&a, EP2, &udp((T2, 54), (T1, 5353)));
    assert_eq!(addrs(&out), (T2, T1), "not a reply: left alone");
}

#[test]
fn a_vip_answers_ping_itself() {
    let a = with_vip(Policy::RoundRobin, Vec::new());
    let mut ping = Vec::new();
    PacketBuilder::ipv4(T1.octets(), VIP.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut ping, b"ping")
        .unwrap();
    let (verdict, out) = send(&a, EP1, &ping);
    assert!(matches!(verdict, Egress::Local { to: EP1, .. }), "{verdict:?}");
    assert_eq!(addrs(&out), (VIP, T1));
    assert_checksums_valid(&out);
    assert_eq!(out[20], 0, "echo reply");
    assert_eq!(a.conntrack().counters().echo_replies, 1);
    assert_eq!(a.conntrack().len(), 0, "ICMP is not tracked");
}

#[test]
fn a_vip_drops_what_it_does_not_carry() {
    let a = with_vip(Policy::RoundRobin, active([T3]));
    let mut timestamp = Vec::new();
    PacketBuilder::ipv4(T1.octets(), VIP.octets(), 64)
        .icmpv4_raw(13, 0, [0; 4])
        .write(&mut timestamp, &[0; 12])
        .unwrap();
    let mut gre = Vec::new();
    PacketBuilder::ipv4(T1.octets(), VIP.octets(), 64)
        .write(&mut gre, etherparse::IpNumber(47), b"gre")
        .unwrap();
    let mut fragment = udp((T1, 5353), (VIP, 53));
    fragment[6] |= 0x20; // more fragments
    let mut short_tcp = tcp((T1, 1), (VIP, 80), SYN);
    short_tcp.truncate(30);
    short_tcp[2..4].copy_from_slice(&30u16.to_be_bytes());
    for (packet, reason) in [
        (timestamp, DropReason::VipUnsupported),
        (gre, DropReason::VipUnsupported),
        (fragment, DropReason::VipUnsupported),
        (short_tcp, DropReason::Malformed),
    ] {
        assert_eq!(send(&a, EP1, &packet).0, Egress::Drop(reason));
    }
    let none = with_vip(Policy::RoundRobin, vec![Backend::draining(T3)]);
    assert_eq!(send(&none, EP1, &udp((T1, 1), (VIP, 53))).0, Egress::Drop(DropReason::NoBackend));
}

#[test]
fn round_robin_spreads_evenly() {
    let a = with_vip(Policy::RoundRobin, active((0..4).map(remote)));
    let mut counts = HashMap::new();
    for port in 0..400 {
        *counts.entry(backend_of(&a, EP1, &tcp((T1, 10_000 + port), (VIP, 80), SYN))).or_insert(0) += 1;
    }
    assert_eq!(counts, (0..4).map(|i| (remote(i), 100)).collect());
    assert!(
        a.lb_stats().iter().all(|s| s.flows == 100 && s.vip == VIP && s.vni == VNI),
        "{:?}",
        a.lb_stats()
    );
}

#[test]
fn least_conn_prefers_the_idle_backend() {
    let mut a = with_vip(Policy::LeastConn, active([remote(0), remote(1)]));
    for port in 0..4 {
        backend_of(&a, EP1, &tcp((T1, 10_000 + port), (VIP, 80), SYN));
    }
    a.set_vip(VNI, service(Policy::LeastConn, active([remote(0), remote(1), remote(2)]))).unwrap();
    let next: Vec<_> =
        (4..6).map(|port| backend_of(&a, EP1, &tcp((T1, 10_000 + port), (VIP, 80), SYN))).collect();
    assert_eq!(next, [remote(2), remote(2)]);
    // All even now: ties take turns.
    let mut ties: Vec<_> =
        (6..9).map(|port| backend_of(&a, EP1, &tcp((T1, 10_000 + port), (VIP, 80), SYN))).collect();
    ties.sort();
    assert_eq!(ties, [remote(0), remote(1), remote(2)]);
}

fn maglev_choices(backends: &[Ipv4Addr], flows: u16) -> Vec<Ipv4Addr> {
    let a = with_vip(Policy::Maglev, active(backends.iter().copied()));
    (0..flows)
        .map(|i| {
            let (from, client) = if i % 2 == 0 { (EP1, T1) } else { (EP2, T2) };
            backend_of(&a, from, &tcp((client, 1024 + i), (VIP, 443), SYN))
        })
        .collect()
}

#[test]
fn maglev_spreads_evenly_and_removing_a_backend_moves_few_flows() {
    const FLOWS: u16 = 20_000;
    let five: Vec<Ipv4Addr> = (0..5).map(remote).collect();
    let before = maglev_choices(&five, FLOWS);
    for backend in &five {
        let n = before.iter().filter(|b| *b == backend).count();
        assert!((3_800..=4_200).contains(&n), "{backend}: {n} of {FLOWS} flows, expected 4000 +- 5%");
    }
    let gone = remote(2);
    let four: Vec<Ipv4Addr> = five.iter().copied().filter(|b| *b != gone).collect();
    let after = maglev_choices(&four, FLOWS);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let orphaned = before.iter().filter(|b| **b == gone).count();
    assert!(after.iter().all(|b| *b != gone));
    // Flows of the removed backend must move; of the others, a few may.
    let limit = usize::from(FLOWS) / 5 + usize::from(FLOWS) * 3 / 100;
    assert!(moved <= limit, "{moved} of {FLOWS} flows moved ({orphaned} were on the removed backend)");
    // The same flow maps to the same backend in another, independent table.
    assert_eq!(maglev_choices(&five, 100), before[..100]);
}

#[test]
fn client_ip_affinity_pins_a_client_until_its_timeout() {
    let backends = active((0..3).map(remote));
    let spec = VipService {
        affinity: Some(std::time::Duration::from_secs(60)),
        ..service(Policy::RoundRobin, backends)
    };
    let a = node_a_with(Arc::new(Conntrack::new(1024, 0)), spec);
    let ct = a.conntrack().clone();
    let pinned: Vec<_> = (0..10).map(|p| backend_of(&a, EP1, &udp((T1, 5000 + p), (VIP, 53)))).collect();
    assert!(pinned.iter().all(|b| *b == remote(0)), "{pinned:?}");
    assert_eq!(backend_of(&a, EP2, &udp((T2, 5000), (VIP, 53))), remote(1), "another client moves on");
    // T1's flows end at 30 s (UDP, unreplied); within the affinity timeout
    // after that it keeps its backend.
    ct.advance(31_000);
    a.sweep();
    assert_eq!(ct.len(), 0);
    ct.advance(80_000);
    a.sweep();
    assert_eq!(backend_of(&a, EP1, &udp((T1, 6000), (VIP, 53))), remote(0));
    // That flow ends at 110 s; past 170 s the client is scheduled afresh
    // (round-robin's next).
    ct.advance(171_000);
    a.sweep();
    assert_eq!(backend_of(&a, EP1, &udp((T1, 6001), (VIP, 53))), remote(2));
}

#[test]
fn a_draining_backend_keeps_its_flows_and_takes_no_new_ones() {
    let mut a = with_vip(Policy::RoundRobin, active([remote(0), remote(1)]));
    let first = (T1, 10_000);
    assert_eq!(backend_of(&a, EP1, &tcp(first, (VIP, 80), SYN)), remote(0));
    assert_eq!(backend_of(&a, EP1, &tcp((T1, 10_001), (VIP, 80), SYN)), remote(1));
    let draining = vec![Backend::draining(remote(0)), Backend::active(remote(1))];
    a.set_vip(VNI, service(Policy::RoundRobin, draining)).unwrap();
    assert_eq!(backend_of(&a, EP1, &tcp(first, (VIP, 80), ACK)), remote(0), "the flow stays");
    for port in 0..4 {
        assert_eq!(backend_of(&a, EP1, &tcp((T1, 20_000 + port), (VIP, 80), SYN)), remote(1));
    }
    let flows: Vec<_> = a.lb_stats().iter().map(|s| (s.backend, s.state, s.flows)).collect();
    assert_eq!(flows, [(remote(0), BackendState::Draining, 1), (remote(1), BackendState::Active, 5)]);
}

#[test]
fn a_removed_backend_loses_its_flows_at_once() {
    let mut a = with_vip(Policy::RoundRobin, active([remote(0), remote(1)]));
    let first = (T1, 10_000);
    assert_eq!(backend_of(&a, EP1, &tcp(first, (VIP, 80), SYN)), remote(0));
    assert_eq!(backend_of(&a, EP1, &tcp((T1, 10_001), (VIP, 80), SYN)), remote(1));
    a.set_vip(VNI, service(Policy::RoundRobin, active([remote(1)]))).unwrap();
    let counters = a.conntrack().counters();
    assert_eq!((counters.entries, counters.removed), (1, 1));
    let flows: Vec<_> = a.lb_stats().iter().map(|s| (s.backend, s.flows)).collect();
    assert_eq!(flows, [(remote(1), 1)]);
    // Its next packet starts over with a listed backend.
    assert_eq!(backend_of(&a, EP1, &tcp(first, (VIP, 80), ACK)), remote(1));
    assert!(a.remove_vip(VNI, VIP));
    assert_eq!(a.conntrack().len(), 0);
    assert_eq!(send(&a, EP1, &tcp(first, (VIP, 80), ACK)).0, Egress::Drop(DropReason::UnknownDestination));
}

#[test]
fn a_flow_created_from_tables_older_than_a_change_is_swept() {
    let mut a = with_vip(Policy::RoundRobin, active([remote(0), remote(1)]));
    // A packet still holding the tables from before the change...
    let before = a.clone();
    a.set_vip(VNI, service(Policy::RoundRobin, active([remote(1)]))).unwrap();
    assert_eq!(backend_of(&before, EP1, &tcp((T1, 10_000), (VIP, 80), SYN)), remote(0));
    assert_eq!(a.conntrack().len(), 1);
    // ...made a flow that the next sweep removes, long before it times out.
    a.sweep();
    assert_eq!(a.conntrack().counters().removed, 1);
    assert_eq!(backend_of(&a, EP1, &tcp((T1, 10_000), (VIP, 80), ACK)), remote(1));
}

#[test]
fn vip_changes_are_checked() {
    let mut t = node_a();
    let set = |t: &mut Tables, vip: Ipv4Addr, backends: Vec<Backend>| {
        t.set_vip(VNI, VipService { vip, ..service(Policy::Maglev, backends) })
    };
    let outside = Ipv4Addr::new(10, 0, 2, 9);
    assert_eq!(
        set(&mut t, outside, Vec::new()),
        Err(TableError::OutsideSubnet { ip: outside, subnet: "10.0.1.0/24".parse().unwrap() })
    );
    assert_eq!(set(&mut t, T1, Vec::new()), Err(TableError::AddressInUse { vni: VNI, ip: T1 }));
    assert_eq!(set(&mut t, T3, Vec::new()), Err(TableError::AddressInUse { vni: VNI, ip: T3 }));
    assert_eq!(
        set(&mut t, VIP, active([T3, T2, T3])),
        Err(TableError::DuplicateBackend { vip: VIP, backend: T3 })
    );
    assert!(matches!(set(&mut t, VIP, active([outside])), Err(TableError::OutsideSubnet { .. })));
    assert_eq!(
        t.set_vip(Vni::new(5).unwrap(), service(Policy::Maglev, Vec::new())),
        Err(TableError::UnknownNetwork(Vni::new(5).unwrap()))
    );
    assert!(!t.is_vip(VNI, VIP), "refused changes change nothing");
    set(&mut t, VIP, active([T3])).unwrap();
    assert!(t.is_vip(VNI, VIP));
    assert_eq!(t.attach(EndpointId(9), VNI, VIP), Err(TableError::AddressInUse { vni: VNI, ip: VIP }));
    assert_eq!(t.set_remote(VNI, VIP, NODE_B), Err(TableError::AddressInUse { vni: VNI, ip: VIP }));
    assert!(!t.remove_vip(VNI, Ipv4Addr::new(10, 0, 1, 101)));
    t.remove_network(VNI);
    assert!(!t.is_vip(VNI, VIP));
}

#[test]
fn a_client_is_never_its_own_backend_while_another_is_active() {
    for policy in [Policy::RoundRobin, Policy::LeastConn, Policy::Maglev] {
        // T1 (the sender) is one of the two backends: every flow goes to the other.
        let a = with_vip(policy, active([T1, remote(0)]));
        for port in 0..50 {
            let to = backend_of(&a, EP1, &tcp((T1, 20_000 + port), (VIP, 80), SYN));
            assert_eq!(to, remote(0), "{policy:?}: flow {port} went back to its own sender");
        }
    }
}

#[test]
fn a_direct_connection_from_a_vip_flows_ports_is_not_rewritten() {
    let a = with_vip(Policy::RoundRobin, active([T3]));
    assert_eq!(backend_of(&a, EP1, &tcp((T1, 40000), (VIP, 80), SYN)), T3);
    let reply = from_node_b(&tcp((T3, 80), (T1, 40000), SYN | ACK));
    assert!(
        matches!(a.ingress(NODE_B, &reply), Ingress::Deliver { nat: Some(_), .. }),
        "the VIP flow's reply"
    );
    // The client's kernel reuses port 40000 to reach T3 directly (the VIP
    // connection closed): the VIP flow goes, its replies keep their source.
    let (verdict, _) = send(&a, EP1, &tcp((T1, 40000), (T3, 80), SYN));
    assert!(matches!(verdict, Egress::Remote { .. }));
    assert!(matches!(a.ingress(NODE_B, &reply), Ingress::Deliver { nat: None, .. }), "a direct reply");
    assert_eq!(a.conntrack().counters().removed, 1);
    // Later packets of a direct connection change nothing.
    assert_eq!(backend_of(&a, EP1, &tcp((T1, 40001), (VIP, 80), SYN)), T3);
    let (_, _) = send(&a, EP1, &tcp((T1, 40001), (T3, 80), ACK));
    let reply = from_node_b(&tcp((T3, 80), (T1, 40001), ACK));
    assert!(matches!(a.ingress(NODE_B, &reply), Ingress::Deliver { nat: Some(_), .. }));
}

#[test]
fn saved_flows_go_on_to_their_backends_in_a_new_table_either_way_first() {
    let backends = || active([remote(0), remote(1), remote(2)]);
    let old = with_vip(Policy::RoundRobin, backends());
    let chosen: Vec<Ipv4Addr> =
        (0..3).map(|i| backend_of(&old, EP1, &tcp((T1, 40000 + i), (VIP, 80), SYN))).collect();
    let saved = old.conntrack().save();
    assert_eq!(saved.len(), 3);

    // The next daemon: a fresh table, its round robin where it starts.
    let new = with_vip(Policy::RoundRobin, backends());
    new.conntrack().restore(&saved);
    // Mid-flow packets from the client go where they went.
    assert_eq!(backend_of(&new, EP1, &tcp((T1, 40002), (VIP, 80), ACK)), chosen[2]);
    assert_eq!(backend_of(&new, EP1, &tcp((T1, 40001), (VIP, 80), ACK)), chosen[1]);
    // A backend's retransmission first: still un-NATed to the VIP.
    let reply = from_node_b(&tcp((chosen[0], 80), (T1, 40000), ACK));
    let Ingress::Deliver { nat: Some(nat), .. } = new.ingress(NODE_B, &reply) else { panic!("not un-NATed") };
    assert_eq!(nat.vip(), VIP);
    assert_eq!(backend_of(&new, EP1, &tcp((T1, 40000), (VIP, 80), ACK)), chosen[0]);
    assert_eq!(new.conntrack().len(), 3, "each restored flow is tracked again, once");
    // Restored flows no packet claimed are forgotten after two minutes.
    let unclaimed = with_vip(Policy::RoundRobin, backends());
    unclaimed.conntrack().restore(&saved);
    unclaimed.conntrack().advance(121_000);
    unclaimed.sweep();
    let fresh = backend_of(&unclaimed, EP1, &tcp((T1, 40000), (VIP, 80), SYN));
    assert!(backends().iter().any(|b| b.ip == fresh), "a new flow after they are gone");
    let late = from_node_b(&tcp((chosen[1], 80), (T1, 40001), ACK));
    assert!(matches!(unclaimed.ingress(NODE_B, &late), Ingress::Deliver { nat: None, .. }));
}

#[test]
fn a_packet_read_whole_takes_one_decision_only_on_plain_routes() {
    let a = with_vip(Policy::RoundRobin, active([T3]));
    let whole = |t: &Tables, from, packet: &[u8], largest| {
        let mut buf = with_headroom(packet);
        let verdict = t.egress_whole(from, &mut buf, ENCAP_HEADROOM, packet.len(), largest);
        (verdict, buf)
    };
    // To another node: the same verdict and headroom as `egress`.
    let packet = tcp((T1, 40000), (T3, 80), ACK);
    let (verdict, buf) = whole(&a, EP1, &packet, 1450);
    let mut exact = with_headroom(&packet);
    assert_eq!(verdict, Some(a.egress(EP1, &mut exact, ENCAP_HEADROOM, packet.len())));
    assert_eq!(buf, exact);
    assert!(matches!(
        whole(&a, EP1, &tcp((T1, 40000), (T2, 80), ACK), 1450).0,
        Some(Egress::Local { to: EP2, .. })
    ));
    // Segments larger than the MTU, a VIP, a forged source: segment by
    // segment, where `egress` decides and counts.
    assert_eq!(whole(&a, EP1, &packet, 1451).0, None);
    assert_eq!(whole(&a, EP1, &tcp((T1, 40000), (VIP, 80), SYN), 100).0, None);
    assert_eq!(whole(&a, EP2, &packet, 1450).0, None);
    // Once T1 has a VIP flow, its other packets may need its NAT too.
    let syn = tcp((T1, 40001), (VIP, 80), SYN);
    let mut buf = with_headroom(&syn);
    assert!(matches!(a.egress(EP1, &mut buf, ENCAP_HEADROOM, syn.len()), Egress::Remote { .. }));
    assert_eq!(whole(&a, EP1, &packet, 1450).0, None);
}
