//! The server on loopback sockets: UDP and TCP answers, forwarding to fake
//! upstreams, the time and concurrency bounds, and counting what is dropped.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use shoal_dns::{Config, DropReason, QueryKind, Rcode, Server, Serving, Tuning};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::{Instant, timeout};

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(5);

struct Running {
    server: Server,
    udp: SocketAddr,
    tcp: SocketAddr,
    _serving: Serving,
}

fn start(dir: FakeDirectory, config: Config) -> Running {
    start_tuned(dir, config, Tuning::default())
}

fn start_tuned(dir: FakeDirectory, config: Config, tuning: Tuning) -> Running {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let server = Server::with_tuning(Arc::new(dir), config, tuning);
    let serving = server.serve(scope(), udp, tcp).unwrap();
    Running { server, udp: udp_addr, tcp: tcp_addr, _serving: serving }
}

fn web() -> FakeDirectory {
    FakeDirectory::default().name("web", &[ip("10.0.1.2")], 7)
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

async fn receive(socket: &UdpSocket) -> Message {
    let mut buffer = vec![0u8; 65_535];
    let len = timeout(PATIENCE, socket.recv(&mut buffer)).await.expect("an answer in time").unwrap();
    Message::from_vec(&buffer[..len]).unwrap()
}

async fn udp_exchange(server: SocketAddr, message: &Message) -> Message {
    let socket = client().await;
    socket.send_to(&bytes(message), server).await.unwrap();
    receive(&socket).await
}

async fn tcp_send(stream: &mut TcpStream, message: &[u8]) {
    let mut frame = u16::try_from(message.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(message);
    stream.write_all(&frame).await.unwrap();
}

async fn tcp_receive(stream: &mut TcpStream) -> Message {
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut message = vec![0u8; usize::from(len)];
        stream.read_exact(&mut message).await.unwrap();
        message
    };
    Message::from_vec(&timeout(PATIENCE, read).await.expect("an answer in time")).unwrap()
}

/// The reply a real resolver would send: the query's id and question, and
/// `answer` as the A record.
fn upstream_reply(query: &Message, answer: &str) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.iter().cloned());
    reply.add_answer(Record::from_rdata(query.queries[0].name().clone(), 60, RData::A(A(ip(answer)))));
    reply
}

/// A UDP upstream answering every query with `answer`; with `stray_first`,
/// each reply is preceded by one under another id, as a spoofer would send.
async fn udp_upstream(answer: &'static str, stray_first: bool) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        loop {
            let (len, peer) = socket.recv_from(&mut buffer).await.unwrap();
            let query = Message::from_vec(&buffer[..len]).unwrap();
            let reply = upstream_reply(&query, answer);
            if stray_first {
                let mut stray = reply.clone();
                stray.metadata.id = query.metadata.id.wrapping_add(1);
                socket.send_to(&bytes(&stray), peer).await.unwrap();
            }
            socket.send_to(&bytes(&reply), peer).await.unwrap();
        }
    });
    addr
}

/// A TCP upstream answering each connection's first query with `answer`.
async fn tcp_upstream(answer: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let len = stream.read_u16().await.unwrap();
            let mut query = vec![0u8; usize::from(len)];
            stream.read_exact(&mut query).await.unwrap();
            let reply = upstream_reply(&Message::from_vec(&query).unwrap(), answer);
            tcp_send(&mut stream, &bytes(&reply)).await;
        }
    });
    addr
}

/// An upstream that reads nothing and answers nothing.
fn silent_upstream() -> (std::net::UdpSocket, SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

#[tokio::test]
async fn udp_queries_are_answered_from_the_directory() {
    let dns = start(web(), Config::default());
    let response = udp_exchange(dns.udp, &query("web", RecordType::A)).await;
    assert_eq!(response.metadata.id, ID);
    assert_eq!(a_records(&response), [ip("10.0.1.2")]);
    let stats = dns.server.stats();
    assert_eq!((stats.queries(QueryKind::A), stats.responses(Rcode::NoError)), (1, 1));
}

#[tokio::test]
async fn tcp_answers_several_queries_on_one_connection() {
    let dns = start(web(), Config::default());
    let mut stream = TcpStream::connect(dns.tcp).await.unwrap();
    tcp_send(&mut stream, &bytes(&query("web", RecordType::A))).await;
    tcp_send(&mut stream, &bytes(&query("web", RecordType::AAAA))).await;
    let first = tcp_receive(&mut stream).await;
    let second = tcp_receive(&mut stream).await;
    assert_eq!(a_records(&first), [ip("10.0.1.2")]);
    assert_eq!((second.metadata.response_code, second.answers.len()), (ResponseCode::NoError, 0));
    assert_eq!(dns.server.stats().queries(QueryKind::Aaaa), 1);
}

#[tokio::test]
async fn unknown_names_are_relayed_from_the_upstream_under_the_client_id() {
    let upstream = udp_upstream("192.0.2.1", false).await;
    let dns = start(web(), Config { upstreams: vec![upstream], ..Config::default() });
    let response = udp_exchange(dns.udp, &query("example.com", RecordType::A)).await;
    assert_eq!(response.metadata.id, ID);
    assert_eq!(a_records(&response), [ip("192.0.2.1")]);
    assert_eq!(dns.server.stats().forwarded, 1);
}

#[tokio::test]
async fn replies_that_do_not_match_the_query_are_ignored_and_counted() {
    let upstream = udp_upstream("192.0.2.1", true).await;
    let dns = start(web(), Config { upstreams: vec![upstream], ..Config::default() });
    let response = udp_exchange(dns.udp, &query("example.com", RecordType::A)).await;
    assert_eq!(a_records(&response), [ip("192.0.2.1")]);
    assert_eq!(dns.server.stats().drops(DropReason::UpstreamMismatch), 1);
}

#[tokio::test]
async fn tcp_queries_are_forwarded_over_tcp() {
    let upstream = tcp_upstream("192.0.2.7").await;
    let dns = start(web(), Config { upstreams: vec![upstream], ..Config::default() });
    let mut stream = TcpStream::connect(dns.tcp).await.unwrap();
    tcp_send(&mut stream, &bytes(&query("example.com", RecordType::A))).await;
    let response = tcp_receive(&mut stream).await;
    assert_eq!(response.metadata.id, ID);
    assert_eq!(a_records(&response), [ip("192.0.2.7")]);
}

#[tokio::test]
async fn a_silent_upstream_gives_servfail_within_the_timeout() {
    let (_socket, upstream) = silent_upstream();
    let upstream_timeout = Duration::from_millis(300);
    let dns = start(web(), Config { upstreams: vec![upstream], upstream_timeout, ..Config::default() });
    let asked = Instant::now();
    let response = udp_exchange(dns.udp, &query("example.com", RecordType::A)).await;
    assert!(asked.elapsed() < upstream_timeout + Duration::from_secs(2), "took {:?}", asked.elapsed());
    assert_eq!((response.metadata.id, response.metadata.response_code), (ID, ResponseCode::ServFail));
    let stats = dns.server.stats();
    assert_eq!((stats.forward_timeouts, stats.responses(Rcode::ServFail)), (1, 1));
}

#[tokio::test]
async fn without_upstreams_unknown_names_get_servfail() {
    let dns = start(web(), Config::default());
    let response = udp_exchange(dns.udp, &query("example.com", RecordType::A)).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(response.queries.len(), 1, "the question is echoed");
    assert_eq!(dns.server.stats().forward_failures, 1);
}

#[tokio::test]
async fn forwards_beyond_the_bound_get_servfail_at_once() {
    let (_socket, upstream) = silent_upstream();
    let config = Config {
        upstreams: vec![upstream],
        max_forwards: 1,
        upstream_timeout: PATIENCE / 2,
        ..Config::default()
    };
    let dns = start(web(), config);
    let socket = client().await;
    let mut first = query("example.com", RecordType::A);
    first.metadata.id = 1;
    let mut second = query("example.org", RecordType::A);
    second.metadata.id = 2;
    // One socket, so the server reads the first before the second: the first
    // holds the only permit while its upstream stays silent.
    socket.send_to(&bytes(&first), dns.udp).await.unwrap();
    socket.send_to(&bytes(&second), dns.udp).await.unwrap();

    let refused = receive(&socket).await;
    assert_eq!((refused.metadata.id, refused.metadata.response_code), (2, ResponseCode::ServFail));
    let stats = dns.server.stats();
    assert_eq!((stats.forwards_refused, stats.forwarded), (1, 1));
    let timed_out = receive(&socket).await;
    assert_eq!((timed_out.metadata.id, timed_out.metadata.response_code), (1, ResponseCode::ServFail));
}

#[tokio::test]
async fn garbage_is_counted_and_the_server_keeps_answering() {
    let dns = start(web(), Config::default());
    let socket = client().await;
    let mut response_message = query("web", RecordType::A);
    response_message.metadata.message_type = hickory_proto::op::MessageType::Response;
    let formerr = [0xAB, 0xCD, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF];
    socket.send_to(&[1, 2, 3], dns.udp).await.unwrap();
    socket.send_to(&bytes(&response_message), dns.udp).await.unwrap();
    socket.send_to(&formerr, dns.udp).await.unwrap();
    socket.send_to(&vec![0u8; 5000], dns.udp).await.unwrap();
    socket.send_to(&bytes(&query("web", RecordType::A)), dns.udp).await.unwrap();

    let first = receive(&socket).await;
    assert_eq!((first.metadata.id, first.metadata.response_code), (0xABCD, ResponseCode::FormErr));
    let second = receive(&socket).await;
    assert_eq!(a_records(&second), [ip("10.0.1.2")]);
    let stats = dns.server.stats();
    assert_eq!(stats.drops(DropReason::TooShort), 1);
    assert_eq!(stats.drops(DropReason::Response), 1);
    assert_eq!(stats.drops(DropReason::TooLong), 1);
    assert_eq!(stats.responses(Rcode::FormErr), 1);
}

#[tokio::test]
async fn tcp_connections_beyond_the_bound_are_closed_and_counted() {
    let dns = start(web(), Config { max_tcp_connections: 1, ..Config::default() });
    let mut held = TcpStream::connect(dns.tcp).await.unwrap();
    tcp_send(&mut held, &bytes(&query("web", RecordType::A))).await;
    tcp_receive(&mut held).await; // accepted and served: it holds the only place

    let mut refused = TcpStream::connect(dns.tcp).await.unwrap();
    let mut byte = [0u8; 1];
    let read = timeout(PATIENCE, refused.read(&mut byte)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(dns.server.stats().drops(DropReason::TcpConnectionLimit), 1);

    tcp_send(&mut held, &bytes(&query("web", RecordType::A))).await;
    assert_eq!(a_records(&tcp_receive(&mut held).await), [ip("10.0.1.2")]);
}

#[tokio::test]
async fn idle_tcp_connections_are_closed() {
    let tcp_idle_timeout = Duration::from_millis(200);
    let dns = start_tuned(web(), Config::default(), Tuning { tcp_idle_timeout, ..Tuning::default() });
    let mut stream = TcpStream::connect(dns.tcp).await.unwrap();
    let mut byte = [0u8; 1];
    let read = timeout(PATIENCE, stream.read(&mut byte)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(dns.server.stats().drops(DropReason::TcpTimeout), 1);
}

#[tokio::test]
async fn a_tcp_connection_cut_inside_a_message_is_counted() {
    let dns = start(web(), Config::default());
    let mut stream = TcpStream::connect(dns.tcp).await.unwrap();
    stream.write_all(&[0, 100, 0x12, 0x34]).await.unwrap();
    drop(stream);
    let deadline = Instant::now() + PATIENCE;
    while dns.server.stats().drops(DropReason::TcpCut) == 0 {
        assert!(Instant::now() < deadline, "the cut message was not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn dropping_the_guard_stops_serving() {
    let dns = start(web(), Config::default());
    let Running { server, tcp, _serving: serving, .. } = dns;
    drop(serving);
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(tcp).await.is_ok() {
        assert!(Instant::now() < deadline, "the listener is still open");
        tokio::task::yield_now().await;
    }
    drop(server);
}
