//! What the mesh tests share: an [`Upstream`] over loopback backends, the
//! backends themselves, and waiting for a condition with a deadline.
#![allow(dead_code, reason = "each test file uses its own part")]

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_mesh::{Limits, Mesh, PortKey, PortSpec, PortStats, Protocol, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::Instant;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Where the test upstream sends a new connection or flow.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// Connect to this address.
    At(SocketAddr),
    /// Never answer (a backend whose SYN goes nowhere).
    Hang,
    /// Fail at once (no backend for the service).
    Fail,
}

/// An upstream that sends every port to the same backend and records the
/// clients it was asked for.
#[derive(Debug)]
pub struct TestUpstream {
    pub tcp: Backend,
    pub udp: Backend,
    pub asked: Mutex<Vec<(PortKey, SocketAddr)>>,
}

impl TestUpstream {
    pub fn new(tcp: Backend, udp: Backend) -> Arc<TestUpstream> {
        Arc::new(TestUpstream { tcp, udp, asked: Mutex::new(Vec::new()) })
    }

    pub fn asked(&self) -> Vec<(PortKey, SocketAddr)> {
        self.asked.lock().unwrap().clone()
    }
}

impl Upstream for TestUpstream {
    fn connect(
        &self,
        port: &PortKey,
        client: SocketAddr,
    ) -> impl Future<Output = io::Result<TcpStream>> + Send {
        self.asked.lock().unwrap().push((*port, client));
        let backend = self.tcp;
        async move {
            match backend {
                Backend::At(address) => TcpStream::connect(address).await,
                Backend::Hang => std::future::pending().await,
                Backend::Fail => Err(io::Error::new(io::ErrorKind::ConnectionRefused, "no backend")),
            }
        }
    }

    fn udp(&self, port: &PortKey, client: SocketAddr) -> impl Future<Output = io::Result<UdpSocket>> + Send {
        self.asked.lock().unwrap().push((*port, client));
        let backend = self.udp;
        async move {
            match backend {
                Backend::At(address) => {
                    let socket = UdpSocket::bind("127.0.0.1:0").await?;
                    socket.connect(address).await?;
                    Ok(socket)
                }
                Backend::Hang => std::future::pending().await,
                Backend::Fail => Err(io::Error::new(io::ErrorKind::ConnectionRefused, "no backend")),
            }
        }
    }
}

/// Limits small enough for tests, short timeouts.
pub fn test_limits() -> Limits {
    Limits {
        max_connections_per_port: 64,
        connect_timeout: Duration::from_secs(5),
        max_udp_flows_per_port: 64,
        udp_idle_timeout: Duration::from_secs(30),
    }
}

/// A port nobody holds right now: bound on port 0 and let go.
pub fn free_port(protocol: Protocol) -> u16 {
    match protocol {
        Protocol::Tcp => std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
        Protocol::Udp => std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
    }
}

pub fn spec(key: PortKey) -> PortSpec {
    PortSpec { key, proxy_protocol: false }
}

/// Opens `keys` on a fresh mesh over `upstream`, asserting that all opened.
pub fn mesh_on(upstream: Arc<TestUpstream>, limits: Limits, keys: &[PortKey]) -> Mesh<TestUpstream> {
    let mesh = Mesh::new(upstream, LOOPBACK, limits);
    let errors = mesh.set(keys.iter().copied().map(spec).collect());
    assert!(errors.is_empty(), "{errors:?}");
    mesh
}

pub fn address(key: PortKey) -> SocketAddr {
    SocketAddr::new(LOOPBACK, key.port)
}

pub fn stats_of<U: Upstream>(mesh: &Mesh<U>, key: PortKey) -> Option<PortStats> {
    mesh.stats().into_iter().find(|stats| stats.key == key)
}

/// Waits until `probe` gives something, or fails the test after
/// [`PATIENCE`] naming `what`.
pub async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP server that sends back what it receives and closes its writing
/// side when the client closes its own.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                    let _ = write.shutdown().await;
                }
            });
        }
    });
    address
}

/// A UDP server that answers each datagram with `echo:` and the datagram.
pub async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_536];
        let mut reply = Vec::new();
        while let Ok((len, peer)) = socket.recv_from(&mut buffer).await {
            reply.clear();
            reply.extend_from_slice(b"echo:");
            reply.extend_from_slice(&buffer[..len]);
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    address
}

/// Sends a line and reads its echo back, within [`PATIENCE`].
pub async fn round_trip(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.unwrap();
    let mut echoed = vec![0u8; message.len()];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut echoed)).await.expect("an echo in time").unwrap();
    assert_eq!(echoed, message);
}

/// Reads until the peer closes (or resets), within [`PATIENCE`]: what the
/// client saw before the end.
pub async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    });
    read.await.expect("the connection to end in time");
    received
}

/// `len` bytes that do not repeat with any short period (xorshift), so a
/// lost, doubled or reordered chunk cannot go unnoticed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}
