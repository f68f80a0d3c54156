//! UDP ports on loopback: a flow per client, idle flows ending, the flow
//! bound, and flows without a backend.

mod common;

use std::time::Duration;

use common::*;
use shoal_mesh::{Limits, PortKey, Protocol};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

async fn receive(socket: &UdpSocket) -> Vec<u8> {
    let mut buffer = vec![0u8; 65_536];
    let len = timeout(PATIENCE, socket.recv(&mut buffer)).await.expect("a reply in time").unwrap();
    buffer.truncate(len);
    buffer
}

/// Sends `message` until its echo comes back: the first datagram of a flow
/// waits in a queue and is not lost, but loopback may still drop under load.
async fn exchange(socket: &UdpSocket, key: PortKey, message: &[u8]) {
    socket.send_to(message, address(key)).await.unwrap();
    let reply = receive(socket).await;
    assert_eq!(reply, [b"echo:", message].concat());
}

#[tokio::test]
async fn two_clients_get_their_own_replies_through_one_port() {
    let key = PortKey::udp(free_port(Protocol::Udp));
    let upstream = TestUpstream::new(Backend::Fail, Backend::At(udp_echo().await));
    let mesh = mesh_on(upstream.clone(), test_limits(), &[key]);

    let (alice, bob) = (client().await, client().await);
    for round in 0..5 {
        exchange(&alice, key, format!("alice {round}").as_bytes()).await;
        exchange(&bob, key, format!("bob {round}").as_bytes()).await;
    }
    // Large datagrams pass whole.
    exchange(&alice, key, &pattern(60_000, 5)).await;

    let mut asked = upstream.asked();
    asked.sort();
    let mut expected = [(key, alice.local_addr().unwrap()), (key, bob.local_addr().unwrap())];
    expected.sort();
    assert_eq!(asked, expected, "one flow per client");
    let stats = stats_of(&mesh, key).unwrap();
    assert_eq!((stats.flows_created, stats.flows_active), (2, 2));
    assert_eq!((stats.datagrams_to_backend, stats.datagrams_to_client, stats.dropped.total()), (11, 11, 0));
}

#[tokio::test]
async fn an_idle_flow_ends_and_the_next_datagram_starts_another() {
    let key = PortKey::udp(free_port(Protocol::Udp));
    let udp_idle_timeout = Duration::from_millis(200);
    let limits = Limits { udp_idle_timeout, ..test_limits() };
    let mesh = mesh_on(TestUpstream::new(Backend::Fail, Backend::At(udp_echo().await)), limits, &[key]);

    let alice = client().await;
    exchange(&alice, key, b"first").await;
    let last_reply = Instant::now();
    eventually("the idle flow to end", || stats_of(&mesh, key).filter(|stats| stats.flows_active == 0)).await;
    assert!(
        last_reply.elapsed() >= udp_idle_timeout,
        "ended {:?} after the last reply",
        last_reply.elapsed()
    );

    exchange(&alice, key, b"again").await;
    let stats = stats_of(&mesh, key).unwrap();
    assert_eq!((stats.flows_created, stats.flows_active), (2, 1));
}

#[tokio::test]
async fn datagrams_beyond_the_flow_limit_are_dropped_and_counted() {
    let key = PortKey::udp(free_port(Protocol::Udp));
    let limits = Limits { max_udp_flows_per_port: 1, ..test_limits() };
    let mesh = mesh_on(TestUpstream::new(Backend::Fail, Backend::At(udp_echo().await)), limits, &[key]);

    let (alice, bob) = (client().await, client().await);
    exchange(&alice, key, b"mine").await;
    for _ in 0..3 {
        bob.send_to(b"no room", address(key)).await.unwrap();
    }
    eventually("bob's datagrams dropped", || {
        stats_of(&mesh, key).filter(|stats| stats.dropped.flow_limit == 3)
    })
    .await;
    exchange(&alice, key, b"still mine").await;
    let stats = stats_of(&mesh, key).unwrap();
    assert_eq!((stats.flows_created, stats.flows_active, stats.dropped.total()), (1, 1, 3));
}

#[tokio::test]
async fn a_flow_without_backend_drops_its_datagrams_and_is_forgotten() {
    let key = PortKey::udp(free_port(Protocol::Udp));
    let mesh = mesh_on(TestUpstream::new(Backend::Fail, Backend::Fail), test_limits(), &[key]);

    let alice = client().await;
    alice.send_to(b"anyone?", address(key)).await.unwrap();
    let stats = eventually("the flow to fail and be forgotten", || {
        stats_of(&mesh, key).filter(|stats| stats.failed == 1 && stats.flows_active == 0)
    })
    .await;
    assert_eq!((stats.dropped.no_backend, stats.flows_created, stats.timed_out), (1, 0, 0));
}

#[tokio::test]
async fn a_backend_socket_that_never_opens_times_out() {
    let key = PortKey::udp(free_port(Protocol::Udp));
    let limits = Limits { connect_timeout: Duration::from_millis(200), ..test_limits() };
    let mesh = mesh_on(TestUpstream::new(Backend::Fail, Backend::Hang), limits, &[key]);

    let alice = client().await;
    alice.send_to(b"one", address(key)).await.unwrap();
    alice.send_to(b"two", address(key)).await.unwrap();
    let stats = eventually("the flow to time out", || {
        stats_of(&mesh, key).filter(|stats| stats.timed_out == 1 && stats.flows_active == 0)
    })
    .await;
    assert_eq!((stats.failed, stats.dropped.no_backend), (1, 2));
}
