//! [`Mesh`]: the set of listening ports, opened and closed by
//! [`Mesh::set`], each with its loop on the runtime and its counters.
//!
//! The ports sit behind one mutex, taken only by `set`, `stats` and drop;
//! the loops and relays never take it. Each port's state ([`PortShared`]:
//! its key, its PROXY setting, its counters) is shared by its loop and its
//! relays; when the port closes, the mesh keeps a weak reference to it, so
//! that `stats` still shows the relays that are running, and a port opened
//! again before they end keeps counting on the same counters (and under the
//! same connection bound).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tracing::{Instrument, debug, info, info_span};

use crate::stats::Counters;
use crate::{Holder, Limits, PortKey, PortSpec, PortStats, Protocol, Relay, Upstream, holder, tcp, udp};

/// Pending connections a TCP listener queues before accepting.
const LISTEN_BACKLOG: i32 = 1024;

/// The node's routing-mesh listeners. A cheap handle: clones share the same
/// listeners, and dropping the last one closes them all (their relays still
/// finish).
pub struct Mesh<U: Upstream> {
    inner: Arc<Inner<U>>,
}

/// A port that could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortError {
    pub key: PortKey,
    /// What went wrong, e.g. [`io::ErrorKind::AddrInUse`].
    pub kind: io::ErrorKind,
    /// The same, as a user reads it: "address in use".
    pub error: String,
    /// The process holding the port, when it is in use and the holder could
    /// be found.
    pub holder: Option<Holder>,
}

/// What every loop and relay of every port reads.
pub(crate) struct Context<U> {
    pub(crate) upstream: Arc<U>,
    pub(crate) limits: Limits,
    pub(crate) relay: Relay,
    /// Runtimes that TCP connections are dealt to, in turn; none: they run
    /// where their port's loop runs.
    workers: Vec<Handle>,
    next_worker: AtomicUsize,
}

impl<U> Context<U> {
    /// The runtime the next TCP connection runs on, if not the loop's.
    pub(crate) fn next_worker(&self) -> Option<&Handle> {
        if self.workers.is_empty() {
            return None;
        }
        let turn = self.next_worker.fetch_add(1, Ordering::Relaxed);
        self.workers.get(turn % self.workers.len())
    }
}

/// One port's state, shared by its loop and its relays.
#[derive(Debug)]
pub(crate) struct PortShared {
    pub(crate) key: PortKey,
    pub(crate) proxy_protocol: AtomicBool,
    pub(crate) counters: Counters,
}

/// Held by the [`Mesh`] handles only, never by a task, so that dropping the
/// last handle drops it and closes the listeners.
struct Inner<U> {
    context: Arc<Context<U>>,
    listen: IpAddr,
    runtime: Handle,
    ports: Mutex<Ports>,
}

#[derive(Default)]
struct Ports {
    open: HashMap<PortKey, Listener>,
    /// Closed ports whose state some relay (or a loop not yet reaped) holds.
    closed: HashMap<PortKey, Closed>,
}

/// An open port.
struct Listener {
    port: Arc<PortShared>,
    socket: Bound,
    task: AbortHandle,
}

enum Bound {
    Tcp(Arc<TcpListener>),
    Udp(Arc<UdpSocket>),
}

/// What remains of a closed port.
struct Closed {
    port: Weak<PortShared>,
    /// A UDP socket lives until the runtime has dropped its aborted loop;
    /// opening the port again meanwhile takes it back instead of failing
    /// on our own bind.
    udp: Weak<UdpSocket>,
}

// === impl Mesh ===

impl<U: Upstream> Mesh<U> {
    /// A mesh with no port open, which binds `listen` (the node's address,
    /// or `0.0.0.0`) and relays with [`Relay::default`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: the mesh runs its loops on the current one.
    pub fn new(upstream: Arc<U>, listen: IpAddr, limits: Limits) -> Self {
        Mesh::with_relay(upstream, listen, limits, Relay::default())
    }

    /// [`Mesh::new`] with the relay of TCP connections chosen.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn with_relay(upstream: Arc<U>, listen: IpAddr, limits: Limits, relay: Relay) -> Self {
        Mesh::with_workers(upstream, listen, limits, relay, Vec::new())
    }

    /// [`Mesh::with_relay`] whose TCP connections are dealt in turn to the
    /// runtimes of `workers` (each connection then lives on one of them),
    /// while the ports' loops and UDP flows stay on the current runtime.
    /// With a current-thread runtime per core, connections spread over the
    /// cores with no cross-thread wake-ups.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn with_workers(
        upstream: Arc<U>,
        listen: IpAddr,
        limits: Limits,
        relay: Relay,
        workers: Vec<Handle>,
    ) -> Self {
        let context = Context { upstream, limits, relay, workers, next_worker: AtomicUsize::new(0) };
        let inner =
            Inner { context: Arc::new(context), listen, runtime: Handle::current(), ports: Mutex::default() };
        Mesh { inner: Arc::new(inner) }
    }

    /// Makes the listeners exactly `ports`: opens new ones, closes removed
    /// ones (their open connections finish), keeps the rest untouched (a
    /// changed `proxy_protocol` applies to their next connections). A key
    /// given twice counts once, the last one.
    ///
    /// Returns the ports that could not be opened, with why and, for a port
    /// in use, what holds it; they are not listening, and the next `set`
    /// that lists them tries again. Sockets are bound in the calling
    /// thread's network namespace.
    pub fn set(&self, ports: Vec<PortSpec>) -> Vec<PortError> {
        let wanted: BTreeMap<PortKey, bool> =
            ports.into_iter().map(|spec| (spec.key, spec.proxy_protocol)).collect();
        let mut state = self.inner.lock();
        let removed: Vec<PortKey> =
            state.open.keys().filter(|key| !wanted.contains_key(key)).copied().collect();
        for key in removed {
            if let Some(listener) = state.open.remove(&key) {
                info!(port = %key, "closing published port");
                let closed = listener.close();
                state.closed.insert(key, closed);
            }
        }
        state.closed.retain(|_, closed| closed.port.strong_count() > 0 || closed.udp.strong_count() > 0);

        let mut errors = Vec::new();
        for (key, proxy_protocol) in wanted {
            if let Some(listener) = state.open.get(&key) {
                listener.port.proxy_protocol.store(proxy_protocol, Ordering::Relaxed);
                continue;
            }
            let closed = state.closed.remove(&key);
            match self.inner.open(key, proxy_protocol, closed.as_ref()) {
                Ok(listener) => {
                    info!(port = %key, proxy_protocol, "listening on published port");
                    state.open.insert(key, listener);
                }
                Err(error) => {
                    let error = PortError::new(key, &error);
                    info!(port = %key, %error, "cannot listen on published port");
                    errors.push(error);
                    if let Some(closed) = closed {
                        state.closed.insert(key, closed);
                    }
                }
            }
        }
        errors
    }

    /// Per port, ordered by port then protocol: the open ports, and the
    /// closed ones whose relays are still running (`listening: false`).
    pub fn stats(&self) -> Vec<PortStats> {
        let state = self.inner.lock();
        let open =
            state.open.values().map(|listener| listener.port.counters.snapshot(listener.port.key, true));
        let closed = state
            .closed
            .values()
            .filter_map(|closed| closed.port.upgrade())
            .map(|port| port.counters.snapshot(port.key, false));
        let mut stats: Vec<PortStats> = open.chain(closed).collect();
        stats.sort_by_key(|stats| stats.key);
        stats
    }

    /// The bounds in use.
    pub fn limits(&self) -> &Limits {
        &self.inner.context.limits
    }

    /// How TCP connections are relayed.
    pub fn relay(&self) -> Relay {
        self.inner.context.relay
    }

    /// The address the listeners bind.
    pub fn listen(&self) -> IpAddr {
        self.inner.listen
    }
}

impl<U: Upstream> Clone for Mesh<U> {
    fn clone(&self) -> Self {
        Mesh { inner: self.inner.clone() }
    }
}

impl<U: Upstream> fmt::Debug for Mesh<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let open: Vec<PortKey> = self.inner.lock().open.keys().copied().collect();
        f.debug_struct("Mesh")
            .field("listen", &self.inner.listen)
            .field("limits", &self.inner.context.limits)
            .field("relay", &self.inner.context.relay)
            .field("open", &open)
            .finish_non_exhaustive()
    }
}

// === impl Inner ===

impl<U: Upstream> Inner<U> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ports> {
        // The lock guards plain maps that every operation leaves whole.
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Binds `key` and starts its loop.
    fn open(&self, key: PortKey, proxy_protocol: bool, closed: Option<&Closed>) -> io::Result<Listener> {
        let port = match closed.and_then(|closed| closed.port.upgrade()) {
            Some(port) => {
                port.proxy_protocol.store(proxy_protocol, Ordering::Relaxed);
                port
            }
            None => Arc::new(PortShared {
                key,
                proxy_protocol: AtomicBool::new(proxy_protocol),
                counters: Counters::default(),
            }),
        };
        let address = SocketAddr::new(self.listen, key.port);
        let span = info_span!("mesh", port = %key);
        // Tokio sockets register with the runtime they are made in.
        let _runtime = self.runtime.enter();
        let (socket, task) = match key.protocol {
            Protocol::Tcp => {
                let listener = Arc::new(TcpListener::from_std(bind_tcp(address)?.into())?);
                let accept = tcp::accept_loop(listener.clone(), port.clone(), self.context.clone());
                (Bound::Tcp(listener), self.runtime.spawn(accept.instrument(span)))
            }
            Protocol::Udp => {
                let socket = match closed.and_then(|closed| closed.udp.upgrade()) {
                    Some(socket) => socket,
                    None => Arc::new(UdpSocket::from_std(bind_udp(address)?.into())?),
                };
                let flows = udp::run(socket.clone(), port.clone(), self.context.clone());
                (Bound::Udp(socket), self.runtime.spawn(flows.instrument(span)))
            }
        };
        Ok(Listener { port, socket, task: task.abort_handle() })
    }
}

impl<U> Drop for Inner<U> {
    fn drop(&mut self) {
        let ports = std::mem::take(self.ports.get_mut().unwrap_or_else(PoisonError::into_inner));
        for (_, listener) in ports.open {
            listener.close();
        }
    }
}

// === impl Listener ===

impl Listener {
    /// Stops the port's loop. A TCP listener is shut down here, so it
    /// refuses connections from now on rather than once the runtime drops
    /// the loop; its accepted connections are separate tasks and go on. A
    /// UDP port's flows end with its loop.
    fn close(self) -> Closed {
        self.task.abort();
        let udp = match &self.socket {
            Bound::Tcp(listener) => {
                // Linux turns a listening socket that is shut down for
                // reading into a closed one and resets its queued connections.
                if let Err(error) = SockRef::from(&**listener).shutdown(std::net::Shutdown::Read) {
                    debug!(%error, "shutting down a listener");
                }
                Weak::new()
            }
            Bound::Udp(socket) => Arc::downgrade(socket),
        };
        Closed { port: Arc::downgrade(&self.port), udp }
    }
}

fn bind_tcp(address: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(socket2::Protocol::TCP))?;
    // Lets the port be bound again while connections accepted from an
    // earlier listener on it are still open or in TIME_WAIT. It never lets
    // two sockets listen on one port.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

fn bind_udp(address: SocketAddr) -> io::Result<Socket> {
    // No SO_REUSEADDR: for UDP it would let us share the port with another
    // process's socket instead of reporting it.
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, Some(socket2::Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

// === impl PortError ===

impl PortError {
    fn new(key: PortKey, error: &io::Error) -> PortError {
        let kind = error.kind();
        let text = match kind {
            io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable | io::ErrorKind::PermissionDenied => {
                kind.to_string()
            }
            _ => error.to_string(),
        };
        let holder = if kind == io::ErrorKind::AddrInUse { holder::find(key) } else { None };
        PortError { key, kind, error: text, holder }
    }
}

/// `port 8080/tcp: address in use (held by nginx (pid 1234))`.
impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {}: {}", self.key, self.error)?;
        if let Some(holder) = &self.holder {
            write!(f, " (held by {holder})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PortError {}
