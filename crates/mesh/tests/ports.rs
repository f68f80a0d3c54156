//! `Mesh::set`: ports held by another socket, closing a port while its
//! relays run, opening it again, and leaving open ports untouched.

mod common;

use std::io;

use common::*;
use shoal_mesh::{Holder, PortKey, PortSpec, Protocol};
use tokio::net::{TcpStream, UdpSocket};

fn this_process() -> Holder {
    let command = std::fs::read_to_string("/proc/self/comm").unwrap().trim_end().to_owned();
    Holder { pid: std::process::id(), command }
}

#[tokio::test]
async fn a_port_in_use_is_reported_with_its_holder() {
    let tcp_holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp_holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = PortKey::tcp(tcp_holder.local_addr().unwrap().port());
    let udp = PortKey::udp(udp_holder.local_addr().unwrap().port());
    let free = PortKey::tcp(free_port(Protocol::Tcp));
    let mesh =
        shoal_mesh::Mesh::new(TestUpstream::new(Backend::Fail, Backend::Fail), LOOPBACK, test_limits());

    let mut errors = mesh.set(vec![spec(tcp), spec(udp), spec(free)]);
    errors.sort_by_key(|error| error.key);
    let mut expected = [tcp, udp];
    expected.sort();
    assert_eq!(errors.iter().map(|error| error.key).collect::<Vec<_>>(), expected);
    for error in &errors {
        assert_eq!((error.kind, error.error.as_str()), (io::ErrorKind::AddrInUse, "address in use"));
        assert_eq!(error.holder, Some(this_process()), "{error}");
    }
    let listening: Vec<PortKey> =
        mesh.stats().iter().filter(|stats| stats.listening).map(|stats| stats.key).collect();
    assert_eq!(listening, [free], "the free port opened all the same");

    // Once the holder lets go, the next set opens the port.
    drop(tcp_holder);
    let errors = mesh.set(vec![spec(tcp), spec(udp), spec(free)]);
    assert_eq!(errors.iter().map(|error| error.key).collect::<Vec<_>>(), [udp]);
}

#[tokio::test]
async fn closing_a_port_refuses_new_connections_and_keeps_established_relays() {
    let key = PortKey::tcp(free_port(Protocol::Tcp));
    let upstream = TestUpstream::new(Backend::At(tcp_echo().await), Backend::Fail);
    let mesh = mesh_on(upstream, test_limits(), &[key]);
    let mut established = TcpStream::connect(address(key)).await.unwrap();
    round_trip(&mut established, b"before").await;

    assert!(mesh.set(Vec::new()).is_empty());
    let refused = TcpStream::connect(address(key)).await.expect_err("the port is closed");
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    round_trip(&mut established, b"after").await;
    let stats = stats_of(&mesh, key).expect("a closed port with a relay is still listed");
    assert_eq!((stats.listening, stats.active, stats.accepted), (false, 1, 1));

    drop(established);
    eventually("the closed port to leave the stats", || stats_of(&mesh, key).is_none().then_some(())).await;
}

#[tokio::test]
async fn a_port_opened_again_at_once_listens() {
    // On this current-thread runtime the closed ports' loops are not even
    // dropped yet when they are opened again.
    let (tcp, udp) = (PortKey::tcp(free_port(Protocol::Tcp)), PortKey::udp(free_port(Protocol::Udp)));
    let upstream = TestUpstream::new(Backend::At(tcp_echo().await), Backend::At(udp_echo().await));
    let mesh = mesh_on(upstream, test_limits(), &[tcp, udp]);
    let mut established = TcpStream::connect(address(tcp)).await.unwrap();
    round_trip(&mut established, b"first").await;

    assert!(mesh.set(Vec::new()).is_empty());
    let errors = mesh.set(vec![spec(tcp), spec(udp)]);
    assert!(errors.is_empty(), "{errors:?}");

    let mut again = TcpStream::connect(address(tcp)).await.unwrap();
    round_trip(&mut again, b"second").await;
    round_trip(&mut established, b"still first").await;
    let stats = stats_of(&mesh, tcp).unwrap();
    assert_eq!((stats.listening, stats.accepted, stats.active), (true, 2, 2), "one port, counting on");

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"ping", address(udp)).await.unwrap();
    let mut reply = [0u8; 16];
    let len = tokio::time::timeout(PATIENCE, client.recv(&mut reply)).await.expect("a reply").unwrap();
    assert_eq!(&reply[..len], b"echo:ping");
}

#[tokio::test]
async fn set_leaves_open_ports_untouched_and_updates_their_settings() {
    let (first, second) = (PortKey::tcp(free_port(Protocol::Tcp)), PortKey::tcp(free_port(Protocol::Tcp)));
    let upstream = TestUpstream::new(Backend::At(tcp_echo().await), Backend::Fail);
    let mesh = mesh_on(upstream, test_limits(), &[first]);
    let mut established = TcpStream::connect(address(first)).await.unwrap();
    round_trip(&mut established, b"hello").await;

    let errors = mesh.set(vec![spec(first), spec(second), PortSpec { key: second, proxy_protocol: false }]);
    assert!(errors.is_empty(), "{errors:?}");
    round_trip(&mut established, b"hello again").await;
    let mut on_second = TcpStream::connect(address(second)).await.unwrap();
    round_trip(&mut on_second, b"hi").await;
    let keys: Vec<PortKey> = mesh.stats().iter().map(|stats| stats.key).collect();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(stats_of(&mesh, first).unwrap().accepted, 1);
}

#[tokio::test]
async fn dropping_the_mesh_closes_its_ports() {
    let key = PortKey::tcp(free_port(Protocol::Tcp));
    let upstream = TestUpstream::new(Backend::At(tcp_echo().await), Backend::Fail);
    let mesh = mesh_on(upstream, test_limits(), &[key]);
    let mut established = TcpStream::connect(address(key)).await.unwrap();
    round_trip(&mut established, b"hello").await;

    drop(mesh);
    let refused = TcpStream::connect(address(key)).await.expect_err("the port is closed");
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    round_trip(&mut established, b"relays finish on their own").await;
}
