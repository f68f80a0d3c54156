//! TCP ports on loopback: bytes both ways through either relay, half-closes,
//! the PROXY v2 header, the connection bound and the backend timeout.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use shoal_mesh::{Limits, Mesh, PortKey, PortSpec, Protocol, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

const TEN_MB: usize = 10 * 1024 * 1024;

fn mesh_with(
    relay: Relay,
    upstream: Arc<TestUpstream>,
    limits: Limits,
    spec: PortSpec,
) -> Mesh<TestUpstream> {
    let mesh = Mesh::with_relay(upstream, LOOPBACK, limits, relay);
    let errors = mesh.set(vec![spec]);
    assert!(errors.is_empty(), "{errors:?}");
    mesh
}

async fn ten_megabytes_each_way(relay: Relay) {
    let key = PortKey::tcp(free_port(Protocol::Tcp));
    let upstream = TestUpstream::new(Backend::At(tcp_echo().await), Backend::Fail);
    let mesh = mesh_with(relay, upstream.clone(), test_limits(), spec(key));

    let client = TcpStream::connect(address(key)).await.unwrap();
    let client_address = client.local_addr().unwrap();
    let (mut read, mut write) = client.into_split();
    let sent = pattern(TEN_MB, 7);
    let writer = tokio::spawn({
        let sent = sent.clone();
        async move {
            write.write_all(&sent).await.unwrap();
            // The echo server stops once it sees this end: the rest must
            // still come back.
            write.shutdown().await.unwrap();
        }
    });
    let mut received = Vec::with_capacity(TEN_MB);
    timeout(PATIENCE, read.read_to_end(&mut received)).await.expect("the echo in time").unwrap();
    writer.await.unwrap();
    assert!(received == sent, "{} bytes came back, not the {} sent", received.len(), sent.len());

    assert_eq!(upstream.asked(), [(key, client_address)]);
    let stats = eventually("the relay's end counted", || {
        stats_of(&mesh, key).filter(|stats| stats.active == 0 && stats.bytes_to_client == TEN_MB as u64)
    })
    .await;
    assert_eq!((stats.accepted, stats.bytes_to_backend, stats.relay_errors), (1, TEN_MB as u64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_relays_ten_megabytes_each_way_intact() {
    ten_megabytes_each_way(Relay::Splice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_relays_ten_megabytes_each_way_intact() {
    ten_megabytes_each_way(Relay::Copy).await;
}

/// A backend that reads the whole request (to its end: the client's
/// half-close), then answers with its length and `reply_len` bytes, then
/// closes.
async fn request_then_reply_server(reply_len: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                if stream.read_to_end(&mut request).await.is_err() {
                    return;
                }
                let mut reply = format!("got {} bytes\n", request.len()).into_bytes();
                reply.extend_from_slice(&pattern(reply_len, 11));
                let _ = stream.write_all(&reply).await;
            });
        }
    });
    address
}

async fn half_close_propagates(relay: Relay) {
    let key = PortKey::tcp(free_port(Protocol::Tcp));
    let upstream = TestUpstream::new(Backend::At(request_then_reply_server(1 << 20).await), Backend::Fail);
    let _mesh = mesh_with(relay, upstream, test_limits(), spec(key));

    let mut client = TcpStream::connect(address(key)).await.unwrap();
    client.write_all(&pattern(100_000, 3)).await.unwrap();
    client.shutdown().await.unwrap();
    let mut reply = Vec::new();
    timeout(PATIENCE, client.read_to_end(&mut reply)).await.expect("the reply in time").unwrap();
    let mut expected = b"got 100000 bytes\n".to_vec();
    expected.extend_from_slice(&pattern(1 << 20, 11));
    assert!(reply == expected, "a reply of {} bytes, not the {} expected", reply.len(), expected.len());
}

#[tokio::test]
async fn splice_passes_half_closes_on() {
    half_close_propagates(Relay::Splice).await;
}

#[tokio::test]
async fn copy_passes_half_closes_on() {
    half_close_propagates(Relay::Copy).await;
}

/// The PROXY v2 header as the test reads it, by the spec's text rather than
/// the crate's code.
#[derive(Debug, PartialEq, Eq)]
struct ParsedHeader {
    version_command: u8,
    family: u8,
    source: SocketAddr,
    destination: SocketAddr,
}

async fn read_proxy_header(stream: &mut TcpStream) -> ParsedHeader {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await.unwrap();
    assert_eq!(&fixed[..12], b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A", "signature");
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut addresses = vec![0u8; len];
    stream.read_exact(&mut addresses).await.unwrap();
    let (source, destination) = match fixed[13] {
        0x11 => {
            assert_eq!(len, 12);
            let ip = |at: usize| {
                std::net::Ipv4Addr::new(
                    addresses[at],
                    addresses[at + 1],
                    addresses[at + 2],
                    addresses[at + 3],
                )
            };
            let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
            (SocketAddr::from((ip(0), port(8))), SocketAddr::from((ip(4), port(10))))
        }
        family => panic!("family {family:#04x}"),
    };
    ParsedHeader { version_command: fixed[12], family: fixed[13], source, destination }
}

#[tokio::test]
async fn proxy_protocol_sends_the_client_and_listener_addresses_first() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let key = PortKey::tcp(free_port(Protocol::Tcp));
    let upstream = TestUpstream::new(Backend::At(backend.local_addr().unwrap()), Backend::Fail);
    let _mesh = mesh_with(Relay::default(), upstream, test_limits(), PortSpec { key, proxy_protocol: true });

    let mut client = TcpStream::connect(address(key)).await.unwrap();
    client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let (mut accepted, _) = timeout(PATIENCE, backend.accept()).await.expect("a backend connection").unwrap();
    let header = timeout(PATIENCE, read_proxy_header(&mut accepted)).await.expect("a header in time");
    let expected = ParsedHeader {
        version_command: 0x21,
        family: 0x11,
        source: client.local_addr().unwrap(),
        destination: address(key),
    };
    assert_eq!(header, expected);
    let mut request = [0u8; 18];
    accepted.read_exact(&mut request).await.unwrap();
    assert_eq!(&request, b"GET / HTTP/1.0\r\n\r\n", "the client's bytes follow the header untouched");
    accepted.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await.unwrap();
    drop(accepted);
    assert_eq!(read_to_end(&mut client).await, b"HTTP/1.0 200 OK\r\n\r\n");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_counted() {
    let key = PortKey::tcp(free_port(Protocol::Tcp));
    let upstream = TestUpstream::new(Backend::At(tcp_echo().await), Backend::Fail);
    let limits = Limits { max_connections_per_port: 2, ..test_limits() };
    let mesh = mesh_on(upstream, limits, &[key]);

    let mut first = TcpStream::connect(address(key)).await.unwrap();
    let mut second = TcpStream::connect(address(key)).await.unwrap();
    round_trip(&mut first, b"one").await;
    round_trip(&mut second, b"two").await;

    let mut third = TcpStream::connect(address(key)).await.unwrap();
    let _ = third.write_all(b"three").await;
    assert_eq!(read_to_end(&mut third).await, b"", "the third connection gets nothing back");
    let stats = stats_of(&mesh, key).unwrap();
    assert_eq!((stats.refused, stats.accepted, stats.active), (1, 2, 2));

    // A slot frees when a connection ends.
    drop(first);
    eventually("a free slot", || stats_of(&mesh, key).filter(|stats| stats.active == 1)).await;
    let mut fourth = TcpStream::connect(address(key)).await.unwrap();
    round_trip(&mut fourth, b"four").await;
    round_trip(&mut second, b"still two").await;
}

#[tokio::test]
async fn a_backend_that_never_connects_times_out_and_the_client_is_closed() {
    let key = PortKey::tcp(free_port(Protocol::Tcp));
    let connect_timeout = Duration::from_millis(300);
    let limits = Limits { connect_timeout, ..test_limits() };
    let mesh = mesh_on(TestUpstream::new(Backend::Hang, Backend::Fail), limits, &[key]);

    let started = Instant::now();
    let mut client = TcpStream::connect(address(key)).await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"");
    assert!(started.elapsed() >= connect_timeout, "closed after {:?}, before the timeout", started.elapsed());
    let stats = eventually("the slot back", || stats_of(&mesh, key).filter(|stats| stats.active == 0)).await;
    assert_eq!((stats.failed, stats.timed_out, stats.accepted), (1, 1, 1));
}

#[tokio::test]
async fn a_failing_upstream_closes_the_client_and_counts() {
    let key = PortKey::tcp(free_port(Protocol::Tcp));
    let mesh = mesh_on(TestUpstream::new(Backend::Fail, Backend::Fail), test_limits(), &[key]);

    let mut client = TcpStream::connect(address(key)).await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"");
    let stats = eventually("the slot back", || stats_of(&mesh, key).filter(|stats| stats.active == 0)).await;
    assert_eq!((stats.failed, stats.timed_out), (1, 0));
}

#[tokio::test]
async fn a_reset_client_ends_the_relay_and_counts_an_error() {
    let key = PortKey::tcp(free_port(Protocol::Tcp));
    let upstream = TestUpstream::new(Backend::At(tcp_echo().await), Backend::Fail);
    let mesh = mesh_on(upstream, test_limits(), &[key]);

    let mut client = TcpStream::connect(address(key)).await.unwrap();
    round_trip(&mut client, b"hello").await;
    // Linger 0: close sends a reset.
    client.set_zero_linger().unwrap();
    drop(client);
    let stats =
        eventually("the relay to end", || stats_of(&mesh, key).filter(|stats| stats.active == 0)).await;
    assert_eq!(stats.relay_errors, 1);
}

/// A current-thread runtime on a thread of its own, as the agent gives the
/// mesh per core; it ends when the sender drops.
fn worker_runtime() -> (tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || runtime.block_on(async { drop(stopped.await) }));
    (handle, stop)
}

#[tokio::test]
async fn connections_dealt_to_worker_runtimes_relay_intact() {
    let (one, _stop_one) = worker_runtime();
    let (two, _stop_two) = worker_runtime();
    let key = PortKey::tcp(free_port(Protocol::Tcp));
    let upstream = TestUpstream::new(Backend::At(tcp_echo().await), Backend::Fail);
    let mesh = Mesh::with_workers(upstream, LOOPBACK, test_limits(), Relay::Splice, vec![one, two]);
    assert!(mesh.set(vec![spec(key)]).is_empty());

    // Small messages first (copied), then a megabyte (spliced), on 4
    // connections at once, dealt to both workers.
    let clients = (0..4u64).map(|seed| {
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(address(key)).await.unwrap();
            round_trip(&mut stream, b"hello").await;
            let (mut read, mut write) = stream.into_split();
            let sent = pattern(1 << 20, seed);
            let writer = tokio::spawn({
                let sent = sent.clone();
                async move {
                    write.write_all(&sent).await.unwrap();
                    write.shutdown().await.unwrap();
                }
            });
            let mut received = Vec::new();
            timeout(PATIENCE, read.read_to_end(&mut received)).await.expect("the echo in time").unwrap();
            writer.await.unwrap();
            assert!(received == sent, "connection {seed}: {} bytes came back", received.len());
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    let stats = eventually("every relay's end counted", || {
        stats_of(&mesh, key).filter(|stats| stats.active == 0 && stats.accepted == 4)
    })
    .await;
    assert_eq!(stats.relay_errors, 0);
    assert_eq!(stats.bytes_to_backend, 4 * ((1 << 20) + 5));
}
