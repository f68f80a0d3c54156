use super::*;
use etherparse::PacketBuilder;
use proptest::prelude::*;

pub(super) const VNI: Vni = Vni::new(4096).unwrap();
const OTHER_VNI: Vni = Vni::new(4097).unwrap();
pub(super) const NODE_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub(super) const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub(super) const T1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
pub(super) const T2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
pub(super) const T3: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 4);
pub(super) const EP1: EndpointId = EndpointId(1);
pub(super) const EP2: EndpointId = EndpointId(2);
pub(super) const EP3: EndpointId = EndpointId(3);

/// Node A hosts T1 (EP1) and T2 (EP2); T3 lives on node B. A second network
/// with VNI 4097 holds 10.0.2.0/24.
pub(super) fn node_a() -> Tables {
    let mut t = Tables::new(1450);
    t.add_network(VNI, "10.0.1.0/24".parse().unwrap()).unwrap();
    t.add_network(OTHER_VNI, "10.0.2.0/24".parse().unwrap()).unwrap();
    t.attach(EP1, VNI, T1).unwrap();
    t.attach(EP2, VNI, T2).unwrap();
    t.set_remote(VNI, T3, NODE_B).unwrap();
    t
}

/// Node B's view of the same network: T3 (EP3) is local.
pub(super) fn node_b() -> Tables {
    let mut t = Tables::new(1450);
    t.add_network(VNI, "10.0.1.0/24".parse().unwrap()).unwrap();
    t.attach(EP3, VNI, T3).unwrap();
    t.set_remote(VNI, T1, NODE_A).unwrap();
    t.set_remote(VNI, T2, NODE_A).unwrap();
    t
}

pub(super) fn udp(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(40000, 7);
    let mut out = Vec::new();
    builder.write(&mut out, payload).unwrap();
    out
}

/// A TUN read buffer: junk headroom, then the packet.
pub(super) fn with_headroom(packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0x5a; ENCAP_HEADROOM];
    buf.extend_from_slice(packet);
    buf
}

#[test]
fn egress_to_remote_writes_vxlan_and_ethernet_in_headroom() {
    let packet = udp(T1, T3, b"hello");
    let mut buf = with_headroom(&packet);
    let verdict = node_a().egress(EP1, &mut buf, ENCAP_HEADROOM, packet.len());
    let Egress::Remote { node, frame, .. } = verdict else { panic!("{verdict:?}") };
    assert_eq!(node, NODE_B);
    assert_eq!(frame, 0..buf.len());
    #[rustfmt::skip]
    let expected_headers = [
        0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0, // VXLAN, VNI 4096
        0x02, 0x42, 10, 0, 1, 4, // dst MAC from 10.0.1.4
        0x02, 0x42, 10, 0, 1, 2, // src MAC from 10.0.1.2
        0x08, 0x00,
    ];
    assert_eq!(&buf[..ENCAP_HEADROOM], &expected_headers);
    assert_eq!(&buf[ENCAP_HEADROOM..], &packet[..]);
}

#[test]
fn encapsulated_frame_decapsulates_on_the_peer() {
    let packet = udp(T1, T3, b"round trip");
    let mut buf = with_headroom(&packet);
    let Egress::Remote { frame, .. } = node_a().egress(EP1, &mut buf, ENCAP_HEADROOM, packet.len()) else {
        panic!()
    };
    let datagram = &buf[frame];
    let verdict = node_b().ingress(NODE_A, datagram);
    let Ingress::Deliver { to, packet: range, nat } = verdict else { panic!("{verdict:?}") };
    assert_eq!((to, nat), (EP3, None));
    assert_eq!(&datagram[range], &packet[..]);
}

#[test]
fn flow_hash_separates_flows() {
    let tables = node_a();
    let mut flows = std::collections::HashSet::new();
    for port in 0..16u16 {
        let builder = PacketBuilder::ipv4(T1.octets(), T3.octets(), 64).tcp(30000 + port, 80, 1, 100);
        let mut packet = Vec::new();
        builder.write(&mut packet, &[]).unwrap();
        let mut buf = with_headroom(&packet);
        let Egress::Remote { flow, .. } = tables.egress(EP1, &mut buf, ENCAP_HEADROOM, packet.len()) else {
            panic!()
        };
        flows.insert(flow);
    }
    assert_eq!(flows.len(), 16);
}

#[test]
fn egress_within_node_is_not_encapsulated() {
    let packet = udp(T1, T2, b"local");
    let mut buf = with_headroom(&packet);
    let verdict = node_a().egress(EP1, &mut buf, ENCAP_HEADROOM, packet.len());
    assert_eq!(verdict, Egress::Local { to: EP2, packet: ENCAP_HEADROOM..buf.len() });
    assert!(buf[..ENCAP_HEADROOM].iter().all(|b| *b == 0x5a), "headroom untouched");
}

#[test]
fn egress_drops_are_classified() {
    let tables = node_a();
    let cases: [(EndpointId, Vec<u8>, DropReason); 6] = [
        (EP1, udp(Ipv4Addr::new(10, 0, 1, 99), T3, b"x"), DropReason::SpoofedSource),
        (EP1, udp(T1, Ipv4Addr::new(10, 0, 2, 5), b"x"), DropReason::CrossNetwork),
        (EP1, udp(T1, Ipv4Addr::new(10, 0, 1, 200), b"x"), DropReason::UnknownDestination),
        (EP1, udp(T1, T3, &[0u8; 1500]), DropReason::Oversized),
        (EP1, vec![0x45, 0, 0], DropReason::Malformed),
        (EndpointId(77), udp(T1, T3, b"x"), DropReason::UnknownEndpoint),
    ];
    for (from, packet, reason) in cases {
        let mut buf = with_headroom(&packet);
        assert_eq!(tables.egress(from, &mut buf, ENCAP_HEADROOM, packet.len()), Egress::Drop(reason));
    }
}

#[test]
fn egress_ipv6_is_unsupported() {
    let builder = PacketBuilder::ipv6([0xfe; 16], [0xff; 16], 1).udp(1, 2);
    let mut packet = Vec::new();
    builder.write(&mut packet, b"v6").unwrap();
    let mut buf = with_headroom(&packet);
    assert_eq!(
        node_a().egress(EP1, &mut buf, ENCAP_HEADROOM, packet.len()),
        Egress::Drop(DropReason::UnsupportedProtocol)
    );
}

/// A well-formed datagram from node A to T3 on node B, to corrupt.
fn good_datagram() -> Vec<u8> {
    let packet = udp(T1, T3, b"payload");
    let mut buf = with_headroom(&packet);
    let Egress::Remote { frame, .. } = node_a().egress(EP1, &mut buf, ENCAP_HEADROOM, packet.len()) else {
        panic!()
    };
    buf[frame].to_vec()
}

#[test]
fn ingress_drops_are_classified() {
    let tables = node_b();
    let good = good_datagram();
    let mut cases: Vec<(Ipv4Addr, Vec<u8>, DropReason)> = vec![
        (NODE_A, good[..5].to_vec(), DropReason::Truncated),
        (NODE_A, good[..20].to_vec(), DropReason::Truncated),
        (NODE_A, good[..30].to_vec(), DropReason::Malformed),
        (NODE_B, good.clone(), DropReason::SpoofedSource),
    ];
    let mut no_flag = good.clone();
    no_flag[0] = 0;
    cases.push((NODE_A, no_flag, DropReason::BadVxlanFlags));
    let mut unknown_vni = good.clone();
    unknown_vni[6] = 0x01;
    cases.push((NODE_A, unknown_vni, DropReason::UnknownVni));
    let mut arp = good.clone();
    arp[20..22].copy_from_slice(&[0x08, 0x06]);
    cases.push((NODE_A, arp, DropReason::UnsupportedProtocol));
    for (from, datagram, reason) in cases {
        assert_eq!(tables.ingress(from, &datagram), Ingress::Drop(reason), "{reason:?}");
    }
}

#[test]
fn ingress_for_an_address_elsewhere_is_misdirected() {
    // Node A receives a frame for T3, which lives on node B.
    let packet = udp(T1, T3, b"x");
    let mut frame = vec![0u8; ENCAP_HEADROOM];
    encapsulate(&mut frame, VNI, T1, T3);
    frame.extend_from_slice(&packet);
    let mut tables = node_a();
    tables.detach(EP1);
    tables.set_remote(VNI, T1, NODE_B).unwrap();
    assert_eq!(tables.ingress(NODE_B, &frame), Ingress::Drop(DropReason::Misdirected));
}

#[test]
fn ingress_oversized_inner_packet_is_dropped() {
    let packet = udp(T1, T3, &[7u8; 2000]);
    let mut frame = vec![0u8; ENCAP_HEADROOM];
    encapsulate(&mut frame, VNI, T1, T3);
    frame.extend_from_slice(&packet);
    assert_eq!(node_b().ingress(NODE_A, &frame), Ingress::Drop(DropReason::Oversized));
}

#[test]
fn table_changes_are_checked() {
    let mut t = node_a();
    assert_eq!(
        t.add_network(VNI, "10.0.9.0/24".parse().unwrap()),
        Err(TableError::VniInUse { vni: VNI, existing: "10.0.1.0/24".parse().unwrap() })
    );
    assert!(matches!(
        t.attach(EndpointId(9), VNI, Ipv4Addr::new(10, 0, 9, 1)),
        Err(TableError::OutsideSubnet { .. })
    ));
    assert_eq!(t.attach(EndpointId(9), VNI, T1), Err(TableError::AddressInUse { vni: VNI, ip: T1 }));
    assert_eq!(t.set_remote(VNI, T2, NODE_B), Err(TableError::AddressInUse { vni: VNI, ip: T2 }));
    assert_eq!(
        t.attach(EndpointId(9), Vni::new(5).unwrap(), T1),
        Err(TableError::UnknownNetwork(Vni::new(5).unwrap()))
    );
    assert!(t.detach(EP2));
    assert_eq!(t.lookup(VNI, T2), None);
    assert!(!t.detach(EP2));
    assert!(t.remove_remote(VNI, T3));
    assert_eq!(t.lookup(VNI, T3), None);
    t.remove_network(VNI);
    assert_eq!(t.local_endpoints().count(), 0);
}

#[test]
fn counters_count_per_reason() {
    let counters = Counters::default();
    counters.drop(DropReason::SpoofedSource, 3);
    counters.encapsulated(2, 3000);
    let snap = counters.snapshot();
    assert_eq!(snap.dropped(DropReason::SpoofedSource), 3);
    assert_eq!(snap.dropped(DropReason::UnknownVni), 0);
    assert_eq!((snap.encapsulated, snap.encapsulated_bytes), (2, 3000));
    assert_eq!(snap.drops.len(), DropReason::ALL.len());
}

#[test]
fn every_reason_has_a_counter_and_a_name_of_its_own() {
    let counters = Counters::default();
    for (n, reason) in (1..).zip(DropReason::ALL) {
        counters.drop(reason, n);
    }
    let snap = counters.snapshot();
    assert_eq!(snap.drops.len(), DropReason::ALL.len(), "two reasons share a name");
    for (n, reason) in (1..).zip(DropReason::ALL) {
        assert_eq!(snap.dropped(reason), n, "{}", reason.name());
    }
}

proptest! {
    #[test]
    fn ingress_never_panics(from in any::<u32>(), bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let _ = node_b().ingress(Ipv4Addr::from(from), &bytes);
    }

    #[test]
    fn ingress_of_mutated_frames_never_panics(flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..8)) {
        let mut datagram = good_datagram();
        for (at, value) in flips {
            let at = at % datagram.len();
            datagram[at] = value;
        }
        let _ = node_b().ingress(NODE_A, &datagram);
    }

    #[test]
    fn egress_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let mut buf = with_headroom(&bytes);
        let _ = node_a().egress(EP1, &mut buf, ENCAP_HEADROOM, bytes.len());
    }
}
