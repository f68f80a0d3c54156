//! The gossip driver: one task owns the [`GossipNode`] and feeds it from the
//! UDP socket, the TCP listener (anti-entropy streams), its timer and the
//! agent's commands; it sends what the node produces and passes events on.

use std::net::SocketAddrV4;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use shoal_gossip::seal::MAX_FRAME;
use shoal_gossip::{
    Event, GossipConfig, GossipNode, KeyRing, Member, MemberView, RowCounts, RowKey, RowView, Stats,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;

#[derive(Debug)]
enum Command {
    Write { network: u32, key: RowKey, value: Option<Vec<u8>>, done: oneshot::Sender<()> },
    Members(oneshot::Sender<Vec<MemberView>>),
    Rows(oneshot::Sender<Vec<RowView>>),
    Counts(oneshot::Sender<RowCounts>),
    Stats(oneshot::Sender<(Stats, usize)>),
    Frame { data: Vec<u8>, reply: oneshot::Sender<Option<Vec<u8>>> },
    Refused(SocketAddrV4),
    Leave(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
    SetRing(KeyRing, oneshot::Sender<()>),
}

/// The agent's handle on the gossip driver.
#[derive(Debug, Clone)]
pub struct GossipHandle {
    commands: mpsc::Sender<Command>,
}

/// Where the running driver's handle is kept: empty while this node is in
/// no swarm (and was given no key file).
#[derive(Debug, Clone, Default)]
pub struct GossipSlot(Arc<RwLock<Option<GossipHandle>>>);

impl GossipSlot {
    /// The driver, or an error saying this node is in no swarm yet.
    pub fn get(&self) -> Result<GossipHandle, Error> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or_else(|| {
            Error::Unavailable(
                "this node is not part of a swarm: run `shoal swarm init` or `shoal swarm join` first".into(),
            )
        })
    }

    /// Whether gossip runs.
    pub fn is_running(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Installs (or, with `None`, forgets) the driver.
    pub fn set(&self, handle: Option<GossipHandle>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = handle;
    }
}

/// What [`start`] returns besides the handle.
#[derive(Debug)]
pub struct Driver {
    /// Events from the gossip node, in order.
    pub events: mpsc::UnboundedReceiver<Event>,
}

/// Binds UDP and TCP on `listen`, joins through `seeds`, and starts the
/// driver task.
pub async fn start(
    me: Member,
    listen: SocketAddrV4,
    config: GossipConfig,
    ring: KeyRing,
    seeds: &[SocketAddrV4],
) -> std::io::Result<(GossipHandle, Driver)> {
    let udp = UdpSocket::bind(listen).await?;
    let tcp = TcpListener::bind(listen).await?;
    let seed = crate::keys::random_u64().unwrap_or(me.epoch);
    let mut node = GossipNode::new(me, config, ring, seed, Instant::now());
    node.join(Instant::now(), seeds);
    let (commands, rx) = mpsc::channel(256);
    let (events_tx, events) = mpsc::unbounded_channel();
    let handle = GossipHandle { commands };
    tokio::spawn(drive(node, udp, tcp, rx, handle.clone(), events_tx));
    Ok((handle, Driver { events }))
}

impl GossipHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Writes one of this node's rows.
    pub async fn write(&self, network: u32, key: RowKey, value: Option<Vec<u8>>) {
        self.ask(|done| Command::Write { network, key, value, done }).await;
    }

    /// Every member known.
    pub async fn members(&self) -> Vec<MemberView> {
        self.ask(Command::Members).await.unwrap_or_default()
    }

    /// Every row held, with versions.
    pub async fn rows(&self) -> Vec<RowView> {
        self.ask(Command::Rows).await.unwrap_or_default()
    }

    /// The rows held, counted (no copy: a metrics scrape asks).
    pub async fn row_counts(&self) -> RowCounts {
        self.ask(Command::Counts).await.unwrap_or_default()
    }

    /// Counters, and the number of live members.
    pub async fn stats(&self) -> (Stats, usize) {
        self.ask(Command::Stats).await.unwrap_or_default()
    }

    /// Leaves the cluster, giving the goodbye a moment to go out.
    pub async fn leave(&self) {
        self.ask(Command::Leave).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Seals and opens with `ring` from now on (a key rotation's step).
    pub async fn set_ring(&self, ring: KeyRing) {
        self.ask(|done| Command::SetRing(ring, done)).await;
    }

    /// Stops the driver: its sockets close and no event follows.
    pub async fn stop(&self) {
        self.ask(Command::Stop).await;
    }

    async fn frame(&self, data: Vec<u8>) -> Option<Vec<u8>> {
        self.ask(|reply| Command::Frame { data, reply }).await.flatten()
    }
}

async fn drive(
    mut node: GossipNode,
    udp: UdpSocket,
    tcp: TcpListener,
    mut commands: mpsc::Receiver<Command>,
    handle: GossipHandle,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut buf = vec![0u8; 65_536];
    let streams = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
    loop {
        let deadline = node.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            received = udp.recv_from(&mut buf) => match received {
                Ok((n, std::net::SocketAddr::V4(from))) => node.handle_datagram(Instant::now(), from, &buf[..n]),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "gossip receive failed"),
            },
            _ = tokio::time::sleep_until(deadline.into()) => node.handle_timeout(Instant::now()),
            accepted = tcp.accept() => match accepted {
                Ok((stream, _)) => match streams.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let handle = handle.clone();
                        tokio::spawn(async move {
                            answer_stream(stream, handle).await;
                            drop(permit);
                        });
                    }
                    Err(_) => tracing::debug!("too many anti-entropy streams: refusing one"),
                },
                Err(e) => {
                    // Out of descriptors or similar: do not spin.
                    tracing::warn!(error = %e, "gossip accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            command = commands.recv() => match command {
                None => return,
                Some(Command::Write { network, key, value, done }) => {
                    node.write(Instant::now(), network, key, value);
                    let _ = done.send(());
                }
                Some(Command::Members(reply)) => { let _ = reply.send(node.members()); }
                Some(Command::Rows(reply)) => { let _ = reply.send(node.tables().rows()); }
                Some(Command::Counts(reply)) => { let _ = reply.send(node.tables().counts()); }
                Some(Command::Stats(reply)) => { let _ = reply.send((node.stats(), node.live_members())); }
                Some(Command::SetRing(ring, done)) => { node.set_ring(ring); let _ = done.send(()); }
                Some(Command::Frame { data, reply }) => {
                    let _ = reply.send(node.handle_frame(Instant::now(), &data).ok().flatten());
                }
                Some(Command::Refused(peer)) => node.handle_sync_refused(Instant::now(), peer),
                Some(Command::Stop(done)) => {
                    let _ = done.send(());
                    return;
                }
                Some(Command::Leave(done)) => {
                    node.leave(Instant::now());
                    flush(&mut node, &udp, &handle, &events).await;
                    let _ = done.send(());
                    continue;
                }
            },
        }
        flush(&mut node, &udp, &handle, &events).await;
    }
}

async fn flush(
    node: &mut GossipNode,
    udp: &UdpSocket,
    handle: &GossipHandle,
    events: &mpsc::UnboundedSender<Event>,
) {
    while let Some(t) = node.poll_transmit() {
        if let Err(e) = udp.send_to(&t.data, t.to).await {
            tracing::debug!(to = %t.to, error = %e, "gossip send failed");
        }
    }
    while let Some(peer) = node.poll_sync() {
        let first = node.start_sync();
        tokio::spawn(open_stream(peer, first, handle.clone()));
    }
    while let Some(event) = node.poll_event() {
        let _ = events.send(event);
    }
}

const STREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Anti-entropy streams served at once; more wait for a slot.
const MAX_STREAMS: usize = 16;

/// Reads one length-prefixed frame. Memory grows only as bytes arrive, not
/// to the length a peer merely claims (frames are authenticated only once
/// whole).
async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = tokio::time::timeout(STREAM_TIMEOUT, stream.read_u32()).await?? as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too long"));
    }
    let mut frame = Vec::new();
    let mut limited = (&mut *stream).take(len as u64);
    tokio::time::timeout(STREAM_TIMEOUT, limited.read_to_end(&mut frame)).await??;
    if frame.len() != len {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "stream ended inside a frame"));
    }
    Ok(frame)
}

async fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| std::io::Error::other("frame too long"))?;
    tokio::time::timeout(STREAM_TIMEOUT, async {
        stream.write_u32(len).await?;
        stream.write_all(frame).await
    })
    .await?
}

/// The asking side of anti-entropy: request, reply, final.
async fn open_stream(peer: SocketAddrV4, first: Vec<u8>, handle: GossipHandle) {
    let exchange = async {
        let mut stream = match tokio::time::timeout(STREAM_TIMEOUT, TcpStream::connect(peer)).await? {
            Ok(stream) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                // Nothing listens there: tell the node, which may then
                // declare a suspect down at once.
                let _ = handle.commands.send(Command::Refused(peer)).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        write_frame(&mut stream, &first).await?;
        let reply = read_frame(&mut stream).await?;
        if let Some(last) = handle.frame(reply).await {
            write_frame(&mut stream, &last).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    if let Err(e) = exchange.await {
        tracing::debug!(%peer, error = %e, "anti-entropy stream failed");
    }
}

/// The answering side: request in, reply out, final in.
async fn answer_stream(mut stream: TcpStream, handle: GossipHandle) {
    let exchange = async {
        let request = read_frame(&mut stream).await?;
        let Some(reply) = handle.frame(request).await else { return Ok(()) };
        write_frame(&mut stream, &reply).await?;
        let last = read_frame(&mut stream).await?;
        handle.frame(last).await;
        Ok::<_, std::io::Error>(())
    };
    if let Err(e) = exchange.await {
        tracing::debug!(error = %e, "anti-entropy stream failed");
    }
}
