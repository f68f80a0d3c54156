use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use super::*;

#[test]
fn underlay_senders_are_ipv4_or_ipv4_mapped() {
    let v4 = Ipv4Addr::new(198, 18, 0, 1);
    assert_eq!(underlay_sender(SocketAddr::from((v4, 4789))), Some(v4));
    assert_eq!(underlay_sender(SocketAddr::from((v4.to_ipv6_mapped(), 4789))), Some(v4));
    assert_eq!(underlay_sender(SocketAddr::from((Ipv6Addr::LOCALHOST, 4789))), None);
}

#[test]
fn a_receive_splits_into_its_gro_segments_and_an_empty_datagram_counts() {
    let buf = [1u8; 10];
    let lens: Vec<usize> = datagrams(&buf, 4).map(|(_, d)| d.len()).collect();
    assert_eq!(lens, [4, 4, 2]);
    assert_eq!(datagrams(&buf, 10).count(), 1);
    assert_eq!(datagrams(&[], 0).map(|(_, d)| d.len()).collect::<Vec<_>>(), [0]);
}

/// The clock task moves the conntrack's clock and sweeps: an unanswered
/// UDP flow leaves the table 30 s (virtual) after its packet, not before.
#[tokio::test(start_paused = true)]
async fn the_clock_task_times_flows_out() {
    use crate::core::{Backend, Egress, Policy};
    let dataplane =
        Dataplane::start(&DataplaneConfig { port: 0, ..DataplaneConfig::new(Ipv4Addr::LOCALHOST) }).unwrap();
    let vni = Vni::new(4096).unwrap();
    let (client, backend, vip) =
        (Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 100));
    dataplane.add_network(vni, "10.0.1.0/24".parse().unwrap()).unwrap();
    dataplane.set_remote(vni, backend, Ipv4Addr::new(127, 0, 0, 2)).unwrap();
    let service =
        VipService { vip, policy: Policy::Maglev, affinity: None, backends: vec![Backend::active(backend)] };
    dataplane.set_vip(vni, service).unwrap();
    // The packet path without a TUN: a copy of the tables (sharing the
    // conntrack) with the client attached.
    let mut tables = dataplane.tables();
    tables.attach(EndpointId(99), vni, client).unwrap();
    let mut packet = vec![0u8; ENCAP_HEADROOM];
    etherparse::PacketBuilder::ipv4(client.octets(), vip.octets(), 64)
        .udp(5353, 53)
        .write(&mut packet, b"query")
        .unwrap();
    let len = packet.len() - ENCAP_HEADROOM;
    let verdict = tables.egress(EndpointId(99), &mut packet, ENCAP_HEADROOM, len);
    assert!(matches!(verdict, Egress::Remote { .. }), "{verdict:?}");
    assert_eq!(dataplane.counters().conntrack.entries, 1);
    assert_eq!(dataplane.lb_stats().iter().map(|s| s.flows).sum::<u64>(), 1);
    let start = tokio::time::Instant::now();
    while dataplane.counters().conntrack.entries > 0 {
        assert!(start.elapsed() < Duration::from_secs(40), "not swept: {:?}", dataplane.counters());
        tokio::time::sleep(CLOCK_TICK).await;
    }
    assert!(start.elapsed() >= Duration::from_secs(30), "swept early, at {:?}", start.elapsed());
    assert_eq!(dataplane.counters().conntrack.expired, 1);
    assert_eq!(dataplane.lb_stats().iter().map(|s| s.flows).sum::<u64>(), 0);
}

/// The simplest receive failure to provoke without privileges: with
/// `IP_RECVERR` on, the ICMP port unreachable that answers a datagram
/// the socket sent to a closed port fails its next receive with
/// ECONNREFUSED.
#[tokio::test]
async fn a_failed_receive_is_counted() {
    let loopback = Ipv4Addr::LOCALHOST;
    // One receiving socket: the error and the datagrams after it meet there.
    let config = DataplaneConfig { port: 0, receive_sockets: 1, ..DataplaneConfig::new(loopback) };
    let dataplane = Dataplane::start(&config).expect("start a data plane on loopback");
    let receiver = &dataplane.shared.receivers[0].socket;
    nix::sys::socket::setsockopt(receiver, nix::sys::socket::sockopt::Ipv4RecvErr, &true).unwrap();
    let peer = tokio::net::UdpSocket::bind((loopback, 0)).await.unwrap();
    let closed = std::net::UdpSocket::bind((loopback, 0)).unwrap().local_addr().unwrap();
    receiver.send_to(b"x", closed).await.unwrap();
    // The receive loop wakes for datagrams only, so keep sending until
    // one arrives after the ICMP error and the receive reports it.
    let to = receiver.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while dataplane.counters().dropped(DropReason::UdpReceiveFailed) == 0 {
        assert!(Instant::now() < deadline, "no failed receive counted: {:?}", dataplane.counters());
        peer.send_to(b"x", to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(dataplane.counters().dropped(DropReason::UdpReceiveFailed), 1);
    assert!(dataplane.counters().dropped(DropReason::Truncated) >= 1, "receiving went on");
}

/// Several receiving sockets share the VXLAN port (also a port the system
/// picked), and whichever gets a datagram handles it.
#[tokio::test]
async fn every_receiving_socket_shares_the_port_and_is_read() {
    let loopback = Ipv4Addr::LOCALHOST;
    let config = DataplaneConfig { port: 0, receive_sockets: 3, ..DataplaneConfig::new(loopback) };
    let dataplane = Dataplane::start(&config).expect("start a data plane on loopback");
    let ports: Vec<u16> =
        dataplane.shared.receivers.iter().map(|r| r.socket.local_addr().unwrap().port()).collect();
    assert_eq!(ports.len(), 3);
    assert!(ports.iter().all(|p| *p == ports[0]), "{ports:?}");
    // Datagrams from many source ports: the kernel spreads them over the
    // sockets, and each is dropped (too short for VXLAN) and counted.
    let to = SocketAddr::from((loopback, ports[0]));
    for _ in 0..32 {
        let peer = tokio::net::UdpSocket::bind((loopback, 0)).await.unwrap();
        peer.send_to(b"x", to).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while dataplane.counters().dropped(DropReason::Truncated) < 32 {
        assert!(Instant::now() < deadline, "not every datagram was read: {:?}", dataplane.counters());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
