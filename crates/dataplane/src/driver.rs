//! The data plane's IO: TUN devices of local endpoints on one side, the
//! node's VXLAN UDP sockets on the other, the [`core`](crate::core) deciding
//! in between.
//!
//! One task per queue of each local endpoint's TUN reads it whole (virtio-net
//! header and TSO super-packet) and decides it: see
//! [`EgressBatches::forward_read`] for the fast and exact paths. One task
//! per VXLAN socket (`SO_REUSEPORT`) reads with `recvmmsg` and UDP GRO,
//! asks [`Tables::ingress`] per datagram, joins TCP segments
//! ([`Coalescer`]) and writes the packets into the TUNs, each flow through
//! one queue ([`Snapshot::queue_of`]). Every buffer is allocated once per
//! task. Tables are an immutable snapshot behind
//! an [`ArcSwap`], replaced on every change, so routing takes no lock; only
//! packets of VIP flows take a shard lock of the shared [`Conntrack`] (see
//! ARCHITECTURE.md). A clock task advances the conntrack's coarse clock every
//! [`CLOCK_TICK`] and sweeps it every [`SWEEP_INTERVAL`].
//!
//! The outer UDP source port follows the inner flow: frames leave from one of
//! a small pool of sockets bound to ephemeral ports, picked by the flow hash,
//! so one flow keeps one outer 5-tuple and different flows spread.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrIn, sendmsg};
use quinn_udp::{RecvMeta, UdpSocketState};
use shoal_wire::ip::Ipv4Cidr;
use shoal_wire::{ENCAP_HEADROOM, Vni};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tun_rs::{AsyncDevice, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN, VirtioNetHdr};

use crate::core::{
    BackendFlows, Conntrack, CounterSnapshot, Counters, DEFAULT_CONNTRACK_CAPACITY, DropReason, Egress,
    EndpointId, Ingress, SavedFlow, TableError, Tables, VipService,
};

mod tun_writer;

use crate::offload::{
    self, Coalescer, GSO_NONE, GSO_TCPV4, NEEDS_CSUM, Segments, VNET_LEN, VnetHeader, complete_checksum,
};

use tun_writer::{Delivery, TunWriter};

/// Settings of one node's data plane. Defaults: port 4789, MTU 1450, eight
/// outer source ports, 262 144 tracked VIP flows.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// This node's underlay address: VXLAN is sent from it (an explicit
    /// source, whatever the routing table prefers).
    pub underlay: Ipv4Addr,
    /// Where VXLAN is received: the underlay address, or 0.0.0.0 for all.
    pub listen: Ipv4Addr,
    /// The VXLAN UDP port, the same on every node.
    pub port: u16,
    /// The overlay MTU: the largest inner packet.
    pub mtu: u16,
    /// How many outer source ports flows are spread over.
    pub source_ports: usize,
    /// The most VIP flows tracked at once (100 to 180 bytes each); at the
    /// bound, new flows evict those closest to their timeout.
    pub conntrack_capacity: usize,
    /// Complete the inner TCP checksum of every packet sent. Shoal's
    /// receivers do not need it (see [`crate::offload`]); a peer that
    /// checks it does, such as the kernel's vxlan device.
    pub inner_checksums: bool,
    /// How many sockets receive VXLAN, each with a task of its own
    /// (`SO_REUSEPORT`: the kernel keeps each outer flow on one).
    pub receive_sockets: usize,
}

impl DataplaneConfig {
    /// The defaults for a node at `underlay`.
    pub fn new(underlay: Ipv4Addr) -> DataplaneConfig {
        DataplaneConfig {
            underlay,
            listen: underlay,
            port: shoal_wire::vxlan::DEFAULT_PORT,
            mtu: 1450,
            source_ports: 8,
            conntrack_capacity: DEFAULT_CONNTRACK_CAPACITY,
            inner_checksums: false,
            receive_sockets: std::thread::available_parallelism().map_or(1, |n| n.get()).min(4),
        }
    }
}

/// Socket buffer size asked for on every underlay socket.
const SOCKET_BUFFER: usize = 4 << 20;
/// How long a VXLAN send waits for room in a full socket buffer before the
/// datagrams are dropped and counted.
const SEND_TIMEOUT: Duration = Duration::from_millis(10);
/// The most UDP GSO segments one `sendmsg` carries.
const MAX_GSO_SEGMENTS: usize = 64;
/// The largest UDP payload one `sendmsg` may carry over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// Datagrams read per `recvmmsg`.
const RX_BATCH: usize = 8;
/// Room for one GRO-coalesced datagram.
const RX_BUFFER: usize = 65_536;
/// TUN reads tried without waiting after a wake-up, to fill batches.
const READS_PER_WAKE: usize = 8;
/// Where a TUN read lands in an endpoint's buffer: its virtio-net header
/// ends where the encapsulation headroom does, so that the packet after it
/// is encapsulated in place.
const READ_AT: usize = ENCAP_HEADROOM - VNET_LEN;
/// Capacity of a TUN write buffer: room to coalesce a 64 KiB super-packet.
const TUN_WRITE_CAPACITY: usize = VIRTIO_NET_HDR_LEN * 2 + 65_535;
/// How often the conntrack's coarse clock moves: the precision of flow
/// timestamps.
pub const CLOCK_TICK: Duration = Duration::from_millis(100);
/// How often timed-out flows are swept: how late past its timeout a flow
/// may still be in the table (a packet never revives an expired flow).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why an endpoint could not be attached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The tables refused the endpoint.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The TUN device could not be registered with the runtime.
    #[error("register TUN device: {0}")]
    Device(#[source] io::Error),
    /// No TUN queue was given.
    #[error("an endpoint needs at least one TUN queue")]
    NoQueue,
}

/// What the packet path reads: tables plus the TUN queues their endpoints
/// map to.
#[derive(Clone)]
struct Snapshot {
    tables: Tables,
    devices: HashMap<EndpointId, Arc<[Arc<AsyncDevice>]>>,
}

impl Snapshot {
    /// Which of endpoint `to`'s queues a packet is written to: one per flow
    /// (see [`offload::symmetric_flow_hash`]), so that the kernel sends the
    /// flow's replies through the same queue and they are read on one core.
    fn queue_of(&self, to: EndpointId, packet: &[u8]) -> usize {
        self.devices.get(&to).map_or(0, |queues| pick_queue(queues.len(), packet))
    }

    /// Endpoint `to`'s queue `queue`.
    fn queue(&self, to: EndpointId, queue: usize) -> Option<&AsyncDevice> {
        self.devices.get(&to).and_then(|q| q.get(queue)).map(|d| &**d)
    }

    /// The queue of endpoint `to` that `packet` is written to, found with
    /// one lookup.
    fn queue_for(&self, to: EndpointId, packet: &[u8]) -> Option<&AsyncDevice> {
        let queues = self.devices.get(&to)?;
        queues.get(pick_queue(queues.len(), packet)).map(|d| &**d)
    }
}

/// The queue of `queues` a packet's flow takes (no hashing for one).
fn pick_queue(queues: usize, packet: &[u8]) -> usize {
    match queues {
        0 | 1 => 0,
        n => offload::symmetric_flow_hash(packet) as usize % n,
    }
}

/// A socket VXLAN is received on.
struct UdpPort {
    socket: UdpSocket,
    state: UdpSocketState,
}

/// A socket VXLAN is sent from: blocking, and not registered with the
/// runtime. The kernel wakes a socket's epoll waiters each time it frees
/// one of its datagrams (write space), so a registered sender would wake
/// the runtime's poller once per send for nothing. A send that finds the
/// buffer full waits for room instead, for at most [`SEND_TIMEOUT`].
struct SendPort {
    socket: std::net::UdpSocket,
    /// The most UDP GSO segments the kernel takes in one send.
    max_gso_segments: usize,
}

struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Serialises writers of `snapshot`; readers never take it.
    writer: Mutex<()>,
    counters: Counters,
    /// The VIP flows; every snapshot's tables hold it too.
    conntrack: Arc<Conntrack>,
    receivers: Vec<UdpPort>,
    senders: Vec<SendPort>,
    port: u16,
    inner_checksums: bool,
}

/// One node's running data plane. Dropping it stops every task.
pub struct Dataplane {
    shared: Arc<Shared>,
    receivers: Vec<JoinHandle<()>>,
    clock: JoinHandle<()>,
    /// One reader per TUN queue of each endpoint.
    endpoint_tasks: Mutex<HashMap<EndpointId, Vec<JoinHandle<()>>>>,
    next_id: AtomicU32,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane").field("port", &self.shared.port).finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Binds the VXLAN sockets on `config.listen` and the source-port pool
    /// on `config.underlay`, in the calling thread's network namespace, and
    /// starts receiving. Must be called inside a tokio runtime.
    pub fn start(config: &DataplaneConfig) -> io::Result<Dataplane> {
        let first = bind_udp(SocketAddrV4::new(config.listen, config.port), true)?;
        // Port 0 asks for any: the others share the one the first got.
        let port = first.socket.local_addr()?.port();
        let mut receivers = vec![first];
        for _ in 1..config.receive_sockets.max(1) {
            receivers.push(bind_udp(SocketAddrV4::new(config.listen, port), true)?);
        }
        let senders = (0..config.source_ports.max(1))
            .map(|_| bind_sender(SocketAddrV4::new(config.underlay, 0)))
            .collect::<io::Result<Vec<_>>>()?;
        let seed = std::collections::hash_map::RandomState::new().hash_one(config.port);
        let conntrack = Arc::new(Conntrack::new(config.conntrack_capacity, seed));
        let tables = Tables::with_conntrack(config.mtu, conntrack.clone());
        let snapshot = Snapshot { tables, devices: HashMap::new() };
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(()),
            counters: Counters::default(),
            conntrack,
            receivers,
            senders,
            port: config.port,
            inner_checksums: config.inner_checksums,
        });
        let receivers =
            (0..shared.receivers.len()).map(|i| tokio::spawn(receive_loop(shared.clone(), i))).collect();
        let clock = tokio::spawn(clock_loop(shared.clone()));
        Ok(Dataplane {
            shared,
            receivers,
            clock,
            endpoint_tasks: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
        })
    }

    fn update<R>(&self, change: impl FnOnce(&mut Snapshot) -> R) -> R {
        let _writer = self.shared.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Snapshot::clone(&self.shared.snapshot.load());
        let result = change(&mut next);
        self.shared.snapshot.store(Arc::new(next));
        result
    }

    /// Adds a network (idempotent).
    pub fn add_network(&self, vni: Vni, subnet: Ipv4Cidr) -> Result<(), TableError> {
        self.update(|s| s.tables.add_network(vni, subnet))
    }

    /// Removes a network with its routes and local endpoints (idempotent).
    pub fn remove_network(&self, vni: Vni) {
        self.update(|s| s.tables.remove_network(vni))
    }

    /// Attaches a local endpoint: `queues` are its TUN's queues, holding
    /// `ip` on network `vni`. Starts reading each queue in a task of its own.
    pub fn attach(&self, vni: Vni, ip: Ipv4Addr, queues: Vec<SyncDevice>) -> Result<EndpointId, AttachError> {
        if queues.is_empty() {
            return Err(AttachError::NoQueue);
        }
        let id = EndpointId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let queues = queues
            .into_iter()
            .map(|q| AsyncDevice::new(q).map(Arc::new))
            .collect::<io::Result<Arc<[_]>>>()
            .map_err(AttachError::Device)?;
        self.update(|s| {
            s.tables.attach(id, vni, ip)?;
            s.devices.insert(id, queues.clone());
            Ok::<_, TableError>(())
        })?;
        let tasks =
            queues.iter().map(|q| tokio::spawn(endpoint_loop(self.shared.clone(), id, q.clone()))).collect();
        self.endpoint_tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tasks);
        tracing::debug!(endpoint = %id, %vni, %ip, queues = queues.len(), "attached");
        Ok(id)
    }

    /// Detaches a local endpoint and stops reading its TUN; returns whether it
    /// was attached.
    pub fn detach(&self, id: EndpointId) -> bool {
        for task in
            self.endpoint_tasks.lock().unwrap_or_else(|e| e.into_inner()).remove(&id).into_iter().flatten()
        {
            task.abort();
        }
        self.update(|s| {
            s.devices.remove(&id);
            s.tables.detach(id)
        })
    }

    /// Records that `ip` on network `vni` lives on the node at `node`.
    pub fn set_remote(&self, vni: Vni, ip: Ipv4Addr, node: Ipv4Addr) -> Result<(), TableError> {
        self.update(|s| s.tables.set_remote(vni, ip, node))
    }

    /// Forgets a remote address; returns whether it was known.
    pub fn remove_remote(&self, vni: Vni, ip: Ipv4Addr) -> bool {
        self.update(|s| s.tables.remove_remote(vni, ip))
    }

    /// The subnet of network `vni`, if this data plane carries it.
    pub fn subnet(&self, vni: Vni) -> Option<Ipv4Cidr> {
        self.shared.snapshot.load().tables.subnet(vni)
    }

    /// The current tables.
    pub fn tables(&self) -> Tables {
        self.shared.snapshot.load().tables.clone()
    }

    /// Sets (or replaces) the VIP `service.vip` on network `vni`: new flows
    /// to it go to its active backends. Existing flows keep their backend
    /// while it is listed, active or draining; a backend no longer listed
    /// loses its flows at once.
    pub fn set_vip(&self, vni: Vni, service: VipService) -> Result<(), TableError> {
        let vip = service.vip;
        self.update(|s| s.tables.set_vip(vni, service))?;
        tracing::debug!(%vni, %vip, "vip set");
        Ok(())
    }

    /// Removes a VIP and its flows; returns whether it was set.
    pub fn remove_vip(&self, vni: Vni, vip: Ipv4Addr) -> bool {
        self.update(|s| s.tables.remove_vip(vni, vip))
    }

    /// The VIP flows tracked now, for the next daemon (live restore).
    pub fn save_flows(&self) -> Vec<SavedFlow> {
        self.shared.conntrack.save()
    }

    /// Takes the VIP flows a previous daemon saved (see
    /// [`Conntrack::restore`]).
    pub fn restore_flows(&self, flows: &[SavedFlow]) {
        self.shared.conntrack.restore(flows);
    }

    /// Every backend of every VIP with the flows tracked to it now.
    pub fn lb_stats(&self) -> Vec<BackendFlows> {
        self.shared.snapshot.load().tables.lb_stats()
    }

    /// The packet counters now, connection tracking included.
    pub fn counters(&self) -> CounterSnapshot {
        let mut snapshot = self.shared.counters.snapshot();
        snapshot.conntrack = self.shared.conntrack.counters();
        snapshot
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        for receiver in &self.receivers {
            receiver.abort();
        }
        self.clock.abort();
        for (_, tasks) in self.endpoint_tasks.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

/// A receiving socket: non-blocking, registered with the runtime.
fn bind_udp(addr: SocketAddrV4, reuse_port: bool) -> io::Result<UdpPort> {
    let socket = bind_socket(addr, reuse_port)?;
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket.into())?;
    let state = UdpSocketState::new((&socket).into())?;
    Ok(UdpPort { socket, state })
}

/// A sending socket: blocking, with [`SEND_TIMEOUT`].
fn bind_sender(addr: SocketAddrV4) -> io::Result<SendPort> {
    let socket = bind_socket(addr, false)?;
    socket.set_write_timeout(Some(SEND_TIMEOUT))?;
    let socket = std::net::UdpSocket::from(socket);
    let max_gso_segments = UdpSocketState::new((&socket).into())?.max_gso_segments();
    Ok(SendPort { socket, max_gso_segments })
}

/// A UDP socket bound to `addr`, with [`SOCKET_BUFFER`] each way.
fn bind_socket(addr: SocketAddrV4, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&SocketAddr::V4(addr).into())?;
    // Root may exceed the namespace's rmem_max/wmem_max; others get what they may.
    let fd = std::os::fd::AsFd::as_fd(&socket);
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    }
    if setsockopt(&fd, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        socket.set_send_buffer_size(SOCKET_BUFFER)?;
    }
    Ok(socket)
}

// === impl clock ===

/// Advances the conntrack's clock every [`CLOCK_TICK`] and sweeps it every
/// [`SWEEP_INTERVAL`], until the task is aborted.
async fn clock_loop(shared: Arc<Shared>) {
    let start = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(CLOCK_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut swept = Duration::ZERO;
    loop {
        ticks.tick().await;
        let elapsed = start.elapsed();
        shared.conntrack.advance(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        if elapsed.saturating_sub(swept) < SWEEP_INTERVAL {
            continue;
        }
        swept = elapsed;
        let shared = shared.clone();
        // A sweep scans the whole table: off the runtime's workers. Each
        // flow is checked against the tables current when it is reached, so
        // that a flow created from newer tables than the sweep started with
        // is not taken for one to a removed backend.
        let sweep = tokio::task::spawn_blocking(move || {
            shared
                .conntrack
                .sweep(|vni, vip, backend| shared.snapshot.load().tables.backend_listed(vni, vip, backend))
        });
        if let Ok(removed) = sweep.await
            && removed > 0
        {
            tracing::trace!(removed, "conntrack swept");
        }
    }
}

// === impl endpoint loop ===

/// Reads one queue of an endpoint's TUN until the task is aborted.
async fn endpoint_loop(shared: Arc<Shared>, id: EndpointId, device: Arc<AsyncDevice>) {
    let mtu = usize::from(shared.snapshot.load().tables.mtu());
    let mut read = vec![0u8; READ_AT + VIRTIO_NET_HDR_LEN + 65_535];
    let max_segments =
        shared.senders.iter().map(|s| s.max_gso_segments).min().unwrap_or(1).clamp(1, MAX_GSO_SEGMENTS);
    let mut out = EgressBatches {
        remote: GsoBatch::new(max_segments),
        local: TunWriter::default(),
        cut: Segments::default(),
        segments: vec![vec![0u8; ENCAP_HEADROOM + mtu]; IDEAL_BATCH_SIZE],
        sizes: vec![0usize; IDEAL_BATCH_SIZE],
    };
    loop {
        // Wait for one read, then take what else is ready without waiting, up
        // to READS_PER_WAKE reads, so that batches fill before they are sent.
        let mut result = device.recv(&mut read[READ_AT..]).await;
        let snapshot = shared.snapshot.load();
        for n in 1..=READS_PER_WAKE {
            match result {
                Ok(len) => {
                    shared.counters.tun_read();
                    out.forward_read(&shared, &snapshot, id, &mut read, len).await
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(endpoint = %id, error = %e, "TUN read failed");
                    shared.counters.drop(DropReason::TunReadFailed, 1);
                    if is_fatal(&e) {
                        return;
                    }
                }
            }
            if n == READS_PER_WAKE {
                break;
            }
            result = device.try_recv(&mut read[READ_AT..]);
        }
        out.flush(&shared, &snapshot).await;
    }
}

/// Where an endpoint's packets wait to be sent: towards other nodes, or to
/// endpoints on this one; and the room to cut super-packets.
struct EgressBatches {
    remote: GsoBatch,
    local: TunWriter,
    /// A super-packet's segment headers (the fast path).
    cut: Segments,
    /// A super-packet's segments, whole (the exact path).
    segments: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl EgressBatches {
    /// Sends what waits.
    async fn flush(&mut self, shared: &Shared, snapshot: &Snapshot) {
        self.remote.flush(shared);
        self.local.flush(snapshot, &shared.counters, Delivery::Local).await;
    }

    /// Decides and sends (or queues) one TUN read of `len` bytes at
    /// [`READ_AT`] in `read`: a virtio-net header, then a packet, which may
    /// be a TSO super-packet.
    ///
    /// Fast path, where one decision holds for the whole read
    /// ([`Tables::egress_whole`]): to a local endpoint, the read is written
    /// as it came; to another node, a super-packet is cut into segment
    /// headers and sent with its payloads where they are. Exact path
    /// (VIPs, NAT, drops): the packet is cut into whole segments, each
    /// decided by [`Tables::egress`].
    async fn forward_read(
        &mut self,
        shared: &Shared,
        snapshot: &Snapshot,
        id: EndpointId,
        read: &mut [u8],
        len: usize,
    ) {
        let Some(header) = VnetHeader::parse(&read[READ_AT..READ_AT + len]).filter(|_| len > VNET_LEN) else {
            shared.counters.drop(DropReason::Malformed, 1);
            return;
        };
        let at = ENCAP_HEADROOM;
        let packet_len = len - VNET_LEN;
        let gso_size = usize::from(header.gso_size);
        let headers = offload::tcp4_headers(&read[at..at + packet_len]);
        let largest = match header.gso_type {
            GSO_NONE => Some(packet_len),
            GSO_TCPV4 => headers.map(|h| h + gso_size),
            _ => None,
        };
        let whole =
            largest.and_then(|largest| snapshot.tables.egress_whole(id, read, at, packet_len, largest));
        match whole {
            Some(Egress::Local { to, .. }) => {
                self.flush(shared, snapshot).await;
                let segments = segment_count(packet_len, headers, &header);
                // The read as it came: the kernel cuts or completes it there
                // if it must.
                let raw = [IoSlice::new(&read[READ_AT..READ_AT + len])];
                write_tun(snapshot, &shared.counters, to, &raw, segments, packet_len, Delivery::Local).await;
            }
            Some(Egress::Remote { node, flow, frame }) if header.gso_type == GSO_TCPV4 => {
                let to = SocketAddrV4::new(node, shared.port);
                let sender = flow as usize % shared.senders.len();
                let prefix = &read[frame.start..at];
                if !self.cut.cut(&read[at..at + packet_len], gso_size, prefix, shared.inner_checksums) {
                    shared.counters.drop(DropReason::Malformed, 1);
                    return;
                }
                self.remote.flush(shared);
                self.remote.send_cut(shared, to, sender, &self.cut, &read[at..at + packet_len]);
            }
            Some(Egress::Remote { node, flow, frame }) => {
                // A TCP/IPv4 packet (`headers`) may stay partial.
                let partial_ok = !shared.inner_checksums && headers.is_some();
                let packet = &mut read[at..at + packet_len];
                if header.flags & NEEDS_CSUM != 0 && !partial_ok && !complete_checksum(packet, &header) {
                    shared.counters.drop(DropReason::Malformed, 1);
                    return;
                }
                self.queue_remote(shared, node, flow, &read[frame]);
            }
            _ => self.forward_exact(shared, snapshot, id, read, len, header, headers).await,
        }
    }

    /// The exact path of [`EgressBatches::forward_read`]: every segment
    /// whole, with its checksum complete, decided alone.
    #[allow(clippy::too_many_arguments)]
    async fn forward_exact(
        &mut self,
        shared: &Shared,
        snapshot: &Snapshot,
        id: EndpointId,
        read: &mut [u8],
        len: usize,
        header: VnetHeader,
        headers: Option<usize>,
    ) {
        let at = ENCAP_HEADROOM;
        let packet = &mut read[at..at + len - VNET_LEN];
        if header.gso_type == GSO_NONE {
            if header.flags & NEEDS_CSUM != 0 && !complete_checksum(packet, &header) {
                shared.counters.drop(DropReason::Malformed, 1);
                return;
            }
            let len = packet.len();
            self.forward_packet(shared, snapshot, id, read, at, len).await;
            return;
        }
        // tun-rs cuts it (TCP or UDP), given the real header length: the
        // kernel's `hdr_len` is only the read's linear part.
        let hdr_len = match header.gso_type {
            GSO_TCPV4 => headers,
            _ => Some(usize::from(header.csum_start) + 8),
        };
        let Some(hdr_len) = hdr_len.and_then(|h| u16::try_from(h).ok()) else {
            shared.counters.drop(DropReason::Malformed, 1);
            return;
        };
        let tun_header = VirtioNetHdr {
            flags: header.flags,
            gso_type: header.gso_type,
            hdr_len,
            gso_size: header.gso_size,
            csum_start: header.csum_start,
            csum_offset: header.csum_offset,
        };
        let mut segments = std::mem::take(&mut self.segments);
        let mut sizes = std::mem::take(&mut self.sizes);
        match tun_rs::gso_split(packet, tun_header, &mut segments, &mut sizes, ENCAP_HEADROOM, false) {
            Ok(n) => {
                for (segment, &len) in segments.iter_mut().zip(&sizes).take(n) {
                    self.forward_packet(shared, snapshot, id, segment, ENCAP_HEADROOM, len).await;
                }
            }
            Err(e) => {
                tracing::trace!(endpoint = %id, error = %e, "cannot cut a TUN read");
                shared.counters.drop(DropReason::Malformed, 1);
            }
        }
        self.segments = segments;
        self.sizes = sizes;
    }

    /// Queues a frame for `node`, from the source port of its inner `flow`.
    fn queue_remote(&mut self, shared: &Shared, node: Ipv4Addr, flow: u32, frame: &[u8]) {
        let to = SocketAddrV4::new(node, shared.port);
        let sender = flow as usize % shared.senders.len();
        if !self.remote.fits(to, sender, frame.len()) {
            self.remote.flush(shared);
        }
        self.remote.push(to, sender, frame);
    }

    /// Decides and queues one packet of `len` bytes at `at` in `buf`
    /// (with [`ENCAP_HEADROOM`] before it).
    async fn forward_packet(
        &mut self,
        shared: &Shared,
        snapshot: &Snapshot,
        id: EndpointId,
        buf: &mut [u8],
        at: usize,
        len: usize,
    ) {
        match snapshot.tables.egress(id, buf, at, len) {
            Egress::Remote { node, flow, frame } => self.queue_remote(shared, node, flow, &buf[frame]),
            Egress::Local { to, packet } => {
                self.local.push(snapshot, to, &buf[packet], None, false);
                if self.local.is_full() {
                    self.local.flush(snapshot, &shared.counters, Delivery::Local).await;
                }
            }
            Egress::Drop(reason) => {
                tracing::trace!(endpoint = %id, reason = reason.name(), "egress drop");
                shared.counters.drop(reason, 1);
            }
        }
    }
}

/// How many packets a TUN read stands for: its segments if it is a TSO
/// super-packet.
fn segment_count(packet_len: usize, headers: Option<usize>, header: &VnetHeader) -> u64 {
    match (header.gso_type, headers) {
        (GSO_TCPV4, Some(h)) if header.gso_size > 0 => {
            packet_len.saturating_sub(h).div_ceil(usize::from(header.gso_size)).max(1) as u64
        }
        _ => 1,
    }
}

/// Writes one packet, virtio-net header first, given as `iov` (whose first
/// slice holds the packet's headers), into endpoint `to`'s TUN, through the
/// queue of its flow, and counts it as `packets` packets of `bytes`.
async fn write_tun(
    snapshot: &Snapshot,
    counters: &Counters,
    to: EndpointId,
    iov: &[IoSlice<'_>],
    packets: u64,
    bytes: usize,
    delivery: Delivery,
) {
    let headers = iov.first().map_or(&[][..], |first| first.get(VNET_LEN..).unwrap_or_default());
    let Some(device) = snapshot.queue_for(to, headers) else {
        counters.drop(DropReason::UnknownEndpoint, packets);
        return;
    };
    match device.send_vectored(iov).await {
        Ok(_) => delivery.count(counters, packets, bytes as u64),
        Err(e) => {
            tracing::debug!(endpoint = %to, error = %e, "TUN write failed");
            counters.drop(DropReason::TunWriteFailed, packets);
        }
    }
}

fn is_fatal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc_errno) if libc_errno == nix::libc::EBADF || libc_errno == nix::libc::EBADFD)
}

/// Frames for one destination and source port, contiguous, to leave in one
/// UDP GSO send: all segments the same length but the last, which may be
/// shorter.
struct GsoBatch {
    buf: Vec<u8>,
    to: SocketAddrV4,
    sender: usize,
    segment: usize,
    count: usize,
    max_segments: usize,
}

impl GsoBatch {
    fn new(max_segments: usize) -> GsoBatch {
        GsoBatch {
            buf: Vec::with_capacity(MAX_UDP_PAYLOAD),
            to: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            sender: 0,
            segment: 0,
            count: 0,
            max_segments,
        }
    }

    fn fits(&self, to: SocketAddrV4, sender: usize, len: usize) -> bool {
        self.count == 0
            || (to == self.to
                && sender == self.sender
                && len <= self.segment
                && self.buf.len() == self.segment * self.count
                && self.count < self.max_segments
                && self.buf.len() + len <= MAX_UDP_PAYLOAD)
    }

    fn push(&mut self, to: SocketAddrV4, sender: usize, frame: &[u8]) {
        if self.count == 0 {
            self.to = to;
            self.sender = sender;
            self.segment = frame.len();
        }
        self.buf.extend_from_slice(frame);
        self.count += 1;
    }

    fn flush(&mut self, shared: &Shared) {
        if self.count == 0 {
            return;
        }
        let port = &shared.senders[self.sender];
        let segment_size = (self.count > 1).then_some(self.segment);
        match send(port, self.to, &[IoSlice::new(&self.buf)], segment_size) {
            Ok(()) => {
                let inner = self.buf.len() - self.count * ENCAP_HEADROOM;
                shared.counters.encapsulated(self.count as u64, inner as u64)
            }
            Err(e) if self.count > 1 => {
                // The kernel or NIC refuses GSO: send this batch one
                // datagram at a time, and build no batches from now on.
                tracing::debug!(to = %self.to, error = %e, "VXLAN GSO send failed; sending one by one");
                self.max_segments = 1;
                for frame in self.buf.chunks(self.segment) {
                    match send(port, self.to, &[IoSlice::new(frame)], None) {
                        Ok(()) => shared.counters.encapsulated(1, (frame.len() - ENCAP_HEADROOM) as u64),
                        Err(_) => shared.counters.drop(DropReason::UdpSendFailed, 1),
                    }
                }
            }
            Err(e) => {
                tracing::debug!(to = %self.to, error = %e, "VXLAN send failed");
                shared.counters.drop(DropReason::UdpSendFailed, 1);
            }
        }
        self.buf.clear();
        self.count = 0;
    }

    /// Sends the segments of `cut`, whose payloads lie in `packet`, to `to`
    /// from source port `sender`: UDP GSO sends of at most `max_segments`
    /// segments and [`MAX_UDP_PAYLOAD`] bytes, each an iovec of headers and
    /// payloads (no copy in userspace).
    fn send_cut(&mut self, shared: &Shared, to: SocketAddrV4, sender: usize, cut: &Segments, packet: &[u8]) {
        let port = &shared.senders[sender];
        let segment = cut.segment_len();
        let per_send = (MAX_UDP_PAYLOAD / segment).clamp(1, self.max_segments);
        let mut slices = [IoSlice::new(&[]); 2 * MAX_GSO_SEGMENTS];
        let mut first = 0;
        while first < cut.len() {
            let last = (first + per_send).min(cut.len());
            let mut inner = 0;
            for (pair, i) in slices.chunks_exact_mut(2).zip(first..last) {
                let (header, payload) = (cut.header(i), &packet[cut.payload(i)]);
                inner += header.len() - ENCAP_HEADROOM + payload.len();
                pair[0] = IoSlice::new(header);
                pair[1] = IoSlice::new(payload);
            }
            let iov = &slices[..2 * (last - first)];
            let count = (last - first) as u64;
            match send(port, to, iov, (count > 1).then_some(segment)) {
                Ok(()) => shared.counters.encapsulated(count, inner as u64),
                Err(e) if count > 1 => {
                    // As in `flush`: one by one, and no GSO from now on.
                    tracing::debug!(%to, error = %e, "VXLAN GSO send failed; sending one by one");
                    self.max_segments = 1;
                    for pair in iov.chunks(2) {
                        match send(port, to, pair, None) {
                            Ok(()) => shared
                                .counters
                                .encapsulated(1, (pair[0].len() - ENCAP_HEADROOM + pair[1].len()) as u64),
                            Err(_) => shared.counters.drop(DropReason::UdpSendFailed, 1),
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(%to, error = %e, "VXLAN send failed");
                    shared.counters.drop(DropReason::UdpSendFailed, 1);
                }
            }
            first = last;
        }
    }
}

/// One `sendmsg` of an iovec, as UDP GSO segments of `segment_size` bytes
/// if given, waiting for room in the socket buffer (see [`SendPort`]).
fn send(
    port: &SendPort,
    to: SocketAddrV4,
    iov: &[IoSlice<'_>],
    segment_size: Option<usize>,
) -> io::Result<()> {
    let addr = SockaddrIn::from(to);
    let size = segment_size.map(|s| u16::try_from(s).unwrap_or(u16::MAX));
    let gso;
    let cmsgs: &[ControlMessage<'_>] = match &size {
        Some(size) => {
            gso = [ControlMessage::UdpGsoSegments(size)];
            &gso
        }
        None => &[],
    };
    loop {
        match sendmsg(port.socket.as_raw_fd(), iov, cmsgs, MsgFlags::empty(), Some(&addr)) {
            Err(nix::errno::Errno::EINTR) => continue,
            sent => return sent.map(|_| ()).map_err(io::Error::from),
        }
    }
}

// === impl receive loop ===

/// Reads VXLAN socket `index` until the task is aborted.
async fn receive_loop(shared: Arc<Shared>, index: usize) {
    let mut storage: Vec<Vec<u8>> = (0..RX_BATCH).map(|_| vec![0u8; RX_BUFFER]).collect();
    let mut metas = [RecvMeta::default(); RX_BATCH];
    let mut writer = TunWriter::default();
    let mut joiner = Coalescer::default();
    let port = &shared.receivers[index];
    loop {
        let received = port
            .socket
            .async_io(Interest::READABLE, || {
                let mut slices: [IoSliceMut<'_>; RX_BATCH] = {
                    let mut it = storage.iter_mut();
                    std::array::from_fn(|_| IoSliceMut::new(it.next().expect("RX_BATCH buffers")))
                };
                port.state.recv((&port.socket).into(), &mut slices, &mut metas)
            })
            .await;
        let n = match received {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "VXLAN receive failed");
                shared.counters.drop(DropReason::UdpReceiveFailed, 1);
                continue;
            }
        };
        let snapshot = shared.snapshot.load();
        for (i, (meta, buf)) in metas.iter().zip(&storage).take(n).enumerate() {
            let received = &buf[..meta.len.min(buf.len())];
            let Some(from) = underlay_sender(meta.addr) else {
                tracing::trace!(from = %meta.addr, reason = DropReason::NonIpv4Underlay.name(), "ingress drop");
                let n = datagrams(received, meta.stride).count();
                shared.counters.drop(DropReason::NonIpv4Underlay, n as u64);
                continue;
            };
            for (offset, datagram) in datagrams(received, meta.stride) {
                match snapshot.tables.ingress(from, datagram) {
                    Ingress::Deliver { to, packet, nat: None }
                        if joiner.push(to, &datagram[packet.clone()], i, offset + packet.start) => {}
                    Ingress::Deliver { to, packet, nat } => {
                        if !writer.push(&snapshot, to, &datagram[packet], nat, true) {
                            shared.counters.drop(DropReason::Malformed, 1);
                            continue;
                        }
                        if writer.is_full() {
                            writer.flush(&snapshot, &shared.counters, Delivery::Decapsulated).await;
                        }
                    }
                    Ingress::Drop(reason) => {
                        tracing::trace!(%from, reason = reason.name(), "ingress drop");
                        shared.counters.drop(reason, 1);
                    }
                }
            }
        }
        write_joined(&mut joiner, &storage, &snapshot, &shared.counters).await;
        writer.flush(&snapshot, &shared.counters, Delivery::Decapsulated).await;
    }
}

/// Writes the TCP packets joined from a receive into their TUNs, each as
/// one iovec: Shoal's headers, then the payloads where they were received.
async fn write_joined(joiner: &mut Coalescer, storage: &[Vec<u8>], snapshot: &Snapshot, counters: &Counters) {
    let mut slices = [IoSlice::new(&[]); 1 + offload::MAX_JOINED];
    for (to, header, pieces) in joiner.drain() {
        slices[0] = IoSlice::new(header);
        for (slice, p) in slices[1..].iter_mut().zip(pieces) {
            *slice = IoSlice::new(&storage[p.buf][p.range.clone()]);
        }
        let iov = &slices[..1 + pieces.len()];
        let bytes = iov.iter().map(|s| s.len()).sum::<usize>() - VNET_LEN;
        write_tun(snapshot, counters, to, iov, pieces.len() as u64, bytes, Delivery::Decapsulated).await;
    }
}

/// The IPv4 address of a datagram's sender (unmapped, if the socket reports
/// it as IPv4-mapped IPv6), or `None` for an IPv6 sender.
fn underlay_sender(addr: SocketAddr) -> Option<Ipv4Addr> {
    match addr.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// The datagrams of one receive: UDP GRO coalesces datagrams of `stride`
/// bytes (the last may be shorter) into one buffer. An empty datagram is
/// one datagram too, so that it is counted.
/// Each comes with its offset in the buffer.
fn datagrams(received: &[u8], stride: usize) -> impl Iterator<Item = (usize, &[u8])> {
    let stride = stride.max(1);
    received
        .chunks(stride)
        .enumerate()
        .map(move |(i, d)| (i * stride, d))
        .chain(received.is_empty().then_some((0, received)))
}

#[cfg(test)]
mod tests;
