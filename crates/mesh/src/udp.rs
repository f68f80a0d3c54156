//! A UDP port: one listening socket, one flow per client address.
//!
//! The port's loop owns the flow table and is the only reader of the
//! listening socket. A datagram from a known client goes straight to its
//! flow's backend socket (a non-blocking send: dropped and counted if the
//! socket cannot take it, never queued). A datagram from a new client
//! starts a flow: a task that asks [`Upstream::udp`] for a backend socket
//! and then sends the backend's replies to the client from the listening
//! socket, until the flow has been idle (no datagram either way) for
//! [`Limits::udp_idle_timeout`](crate::Limits::udp_idle_timeout). While the
//! backend socket opens, the flow's datagrams wait in a small queue.
//!
//! Memory is bounded whatever arrives: the table holds at most
//! `max_udp_flows_per_port` flows (each one task, one socket and at most
//! [`QUEUED_PER_FLOW`] queued datagrams, [`QUEUED_BYTES_PER_PORT`] for the
//! whole port), the loop has one receive buffer and each runtime thread one
//! reply buffer; a task sends the loop at most two events in its life.
//! Replies leave from the listening socket's address as the kernel routes
//! them: with a wildcard `listen` on a node of several addresses, a reply
//! may leave from another address than the client sent to.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tracing::{Instrument, debug, debug_span, trace};

use crate::mesh::{Context, PortShared};
use crate::stats::{Counters, UdpDrop, bump};
use crate::{Upstream, canonical};

/// Largest UDP payload, and the size of every receive buffer.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams a flow queues while its backend socket opens.
const QUEUED_PER_FLOW: usize = 16;
/// Bytes the port's flows queue, together, while their backend sockets open.
const QUEUED_BYTES_PER_PORT: usize = 1 << 20;
/// Replies a flow relays per wake-up before letting other tasks run.
const REPLIES_PER_WAKE: usize = 64;
/// Pause after a failed receive on the listening socket, so a lasting
/// failure does not spin the loop.
const RECEIVE_BACKOFF: Duration = Duration::from_millis(10);

thread_local! {
    /// Where flows receive replies: one buffer per runtime thread, not per
    /// flow (a reply is sent on before the buffer is lent again).
    static REPLY_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice());
}

/// What a flow's task tells the port's loop.
enum Event {
    /// The backend socket is open: send the queue, then every datagram.
    Opened { client: SocketAddr, backend: Arc<UdpSocket> },
    /// No backend: drop the queue and forget the flow.
    Failed { client: SocketAddr },
    /// The flow idled out.
    Ended { client: SocketAddr },
}

struct Flow {
    state: FlowState,
    /// Milliseconds on the port's [`Clock`] of the last datagram either way.
    last_active: Arc<AtomicU64>,
}

enum FlowState {
    Opening { queue: Vec<Vec<u8>> },
    Open { backend: Arc<UdpSocket> },
}

/// The port's flow table, owned by its loop.
struct Flows<U> {
    listening: Arc<UdpSocket>,
    port: Arc<PortShared>,
    context: Arc<Context<U>>,
    clock: Clock,
    events: mpsc::UnboundedSender<Event>,
    flows: HashMap<SocketAddr, Flow>,
    queued_bytes: usize,
    tasks: JoinSet<()>,
}

pub(crate) async fn run<U: Upstream>(
    listening: Arc<UdpSocket>,
    port: Arc<PortShared>,
    context: Arc<Context<U>>,
) {
    // Unbounded, yet bounded by the table: each flow sends at most two events.
    let (events, mut received_events) = mpsc::unbounded_channel();
    let mut table = Flows {
        listening: listening.clone(),
        port,
        context,
        clock: Clock::new(),
        events,
        flows: HashMap::new(),
        queued_bytes: 0,
        tasks: JoinSet::new(),
    };
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            // Flows first: an opened backend takes its queue before new
            // datagrams, which keeps the client's order.
            biased;
            Some(event) = received_events.recv() => table.on_event(event),
            received = listening.recv_from(&mut buffer) => match received {
                Ok((len, client)) => table.on_datagram(client, &buffer[..len]),
                Err(error) => {
                    bump(&table.port.counters.receive_errors);
                    debug!(%error, "udp receive failed");
                    tokio::time::sleep(RECEIVE_BACKOFF).await;
                }
            },
            // Reap ended flows' tasks.
            Some(_) = table.tasks.join_next(), if !table.tasks.is_empty() => {}
        }
    }
}

// === impl Flows ===

impl<U: Upstream> Flows<U> {
    fn on_datagram(&mut self, client: SocketAddr, datagram: &[u8]) {
        let counters = &self.port.counters;
        if let Some(flow) = self.flows.get_mut(&client) {
            flow.last_active.store(self.clock.now(), Ordering::Relaxed);
            match &mut flow.state {
                FlowState::Open { backend } => send_to_backend(backend, datagram, counters),
                FlowState::Opening { queue } => {
                    if queue.len() < QUEUED_PER_FLOW
                        && self.queued_bytes + datagram.len() <= QUEUED_BYTES_PER_PORT
                    {
                        self.queued_bytes += datagram.len();
                        queue.push(datagram.to_vec());
                    } else {
                        counters.drop_datagrams(UdpDrop::QueueFull, 1);
                    }
                }
            }
            return;
        }
        if self.flows.len() >= self.context.limits.max_udp_flows_per_port {
            counters.drop_datagrams(UdpDrop::FlowLimit, 1);
            trace!(%client, "udp flow limit reached, dropping");
            return;
        }
        if self.queued_bytes + datagram.len() > QUEUED_BYTES_PER_PORT {
            counters.drop_datagrams(UdpDrop::QueueFull, 1);
            return;
        }
        self.queued_bytes += datagram.len();
        let last_active = Arc::new(AtomicU64::new(self.clock.now()));
        let flow = Flow {
            state: FlowState::Opening { queue: vec![datagram.to_vec()] },
            last_active: last_active.clone(),
        };
        self.flows.insert(client, flow);
        counters.flows_active.store(self.flows.len(), Ordering::Relaxed);
        let task = FlowTask {
            client,
            listening: self.listening.clone(),
            port: self.port.clone(),
            context: self.context.clone(),
            clock: self.clock,
            last_active,
            events: self.events.clone(),
        };
        self.tasks.spawn(task.run().instrument(debug_span!("flow", %client)));
    }

    fn on_event(&mut self, event: Event) {
        let counters = &self.port.counters;
        match event {
            Event::Opened { client, backend } => {
                let Some(flow) = self.flows.get_mut(&client) else { return };
                let opening =
                    std::mem::replace(&mut flow.state, FlowState::Open { backend: backend.clone() });
                if let FlowState::Opening { queue } = opening {
                    for datagram in queue {
                        self.queued_bytes -= datagram.len();
                        send_to_backend(&backend, &datagram, counters);
                    }
                }
                bump(&counters.flows_created);
            }
            Event::Failed { client } => {
                if let Some(Flow { state: FlowState::Opening { queue }, .. }) = self.flows.remove(&client) {
                    self.queued_bytes -= queue.iter().map(Vec::len).sum::<usize>();
                    counters.drop_datagrams(UdpDrop::NoBackend, queue.len());
                }
            }
            Event::Ended { client } => {
                self.flows.remove(&client);
            }
        }
        counters.flows_active.store(self.flows.len(), Ordering::Relaxed);
    }
}

/// Sends without waiting: a backend socket that cannot take the datagram
/// now drops it, as a full socket buffer would.
fn send_to_backend(backend: &UdpSocket, datagram: &[u8], counters: &Counters) {
    match SockRef::from(backend).send(datagram) {
        Ok(_) => bump(&counters.datagrams_to_backend),
        Err(error) => {
            counters.drop_datagrams(UdpDrop::ToBackend, 1);
            trace!(%error, "datagram to backend dropped");
        }
    }
}

// === impl FlowTask ===

/// One flow's task: opens the backend socket, then relays its replies
/// until the flow idles out.
struct FlowTask<U> {
    client: SocketAddr,
    listening: Arc<UdpSocket>,
    port: Arc<PortShared>,
    context: Arc<Context<U>>,
    clock: Clock,
    last_active: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<Event>,
}

impl<U: Upstream> FlowTask<U> {
    async fn run(self) {
        let client = self.client;
        let counters = &self.port.counters;
        let limits = &self.context.limits;
        let opened =
            timeout(limits.connect_timeout, self.context.upstream.udp(&self.port.key, canonical(client)));
        let backend = match opened.await {
            Ok(Ok(backend)) => Arc::new(backend),
            Ok(Err(error)) => {
                bump(&counters.failed);
                debug!(%error, "no backend for the flow");
                let _ = self.events.send(Event::Failed { client });
                return;
            }
            Err(_) => {
                bump(&counters.failed);
                bump(&counters.timed_out);
                debug!(timeout = ?limits.connect_timeout, "backend socket timed out");
                let _ = self.events.send(Event::Failed { client });
                return;
            }
        };
        // The loop is gone only if the port closed, which aborts this task.
        let _ = self.events.send(Event::Opened { client, backend: backend.clone() });
        let idle = u64::try_from(limits.udp_idle_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            let idle_from = self.last_active.load(Ordering::Relaxed).saturating_add(idle);
            if self.clock.now() >= idle_from {
                break;
            }
            tokio::select! {
                ready = backend.readable() => match ready {
                    Ok(()) => self.relay_replies(&backend),
                    Err(error) => {
                        bump(&counters.receive_errors);
                        debug!(%error, "backend socket failed, ending the flow");
                        break;
                    }
                },
                () = tokio::time::sleep_until(self.clock.at(idle_from)) => {}
            }
        }
        trace!("flow idle, ending");
        let _ = self.events.send(Event::Ended { client });
    }

    /// Sends the client what the backend has sent, without waiting on the
    /// listening socket: a reply it cannot take now is dropped.
    fn relay_replies(&self, backend: &UdpSocket) {
        let counters = &self.port.counters;
        let client = self.client.into();
        REPLY_BUFFER.with_borrow_mut(|buffer| {
            for _ in 0..REPLIES_PER_WAKE {
                let len = match backend.try_recv(buffer) {
                    Ok(len) => len,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                    Err(error) => {
                        // An ICMP error for an earlier datagram, typically
                        // (the backend's port is closed); the flow goes on.
                        bump(&counters.receive_errors);
                        trace!(%error, "backend receive failed");
                        continue;
                    }
                };
                self.last_active.store(self.clock.now(), Ordering::Relaxed);
                match SockRef::from(&*self.listening).send_to(&buffer[..len], &client) {
                    Ok(_) => bump(&counters.datagrams_to_client),
                    Err(error) => {
                        counters.drop_datagrams(UdpDrop::ToClient, 1);
                        trace!(%error, "reply to client dropped");
                    }
                }
            }
        });
    }
}

/// A port's coarse clock: milliseconds since the loop started, so a flow's
/// last activity fits an atomic.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock { epoch: Instant::now() }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant of `ms` on this clock; a year from now if that is later
    /// (or beyond what an `Instant` holds).
    fn at(&self, ms: u64) -> Instant {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        self.epoch.checked_add(Duration::from_millis(ms)).map_or(far, |at| at.min(far))
    }
}
