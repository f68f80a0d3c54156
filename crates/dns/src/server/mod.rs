//! The tokio glue: per-sandbox socket loops around [`respond`], and a bounded
//! forwarder for the names the directory does not know.
//!
//! One [`Server`] per node holds the directory, the configuration, the
//! counters and the forwarding bound; [`Server::serve`] starts one UDP loop and
//! one TCP accept loop per sandbox, which is how an answer knows its
//! [`Scope`]. Every queue is bounded: one receive buffer per UDP loop, at most
//! `max_tcp_connections` connections per sandbox (one message buffer each),
//! and at most `max_forwards` forwards in flight across the node.

mod forward;
mod tcp;
mod udp;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{Instrument, info_span};

use crate::resolv_conf::MAX_UPSTREAMS;
use crate::stats::Counters;
use crate::{DEFAULT_MAX_UDP_PAYLOAD, Directory, Outcome, Rcode, Scope, Stats};

/// Default for [`Config::upstream_timeout`].
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Default for [`Config::max_forwards`].
pub const DEFAULT_MAX_FORWARDS: usize = 256;
/// Default for [`Config::max_tcp_connections`].
pub const DEFAULT_MAX_TCP_CONNECTIONS: usize = 16;
/// Default for [`Tuning::tcp_idle_timeout`].
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The resolver's main tunables; [`Config::default`] holds their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Upstream resolvers for names the directory does not know, tried in
    /// order; at most the first [`MAX_UPSTREAMS`] are used. Empty: unknown
    /// names get SERVFAIL. Default: none (see
    /// [`upstreams_from_resolv_conf`](crate::upstreams_from_resolv_conf)).
    pub upstreams: Vec<SocketAddr>,
    /// Time for one forward across all upstreams, each getting an equal share
    /// of what is left; the client gets SERVFAIL within it, never a hang.
    /// Default 2 s: below glibc's 5 s retry, so the client hears our SERVFAIL.
    pub upstream_timeout: Duration,
    /// Forwards in flight across all sandboxes; a query beyond it gets
    /// SERVFAIL at once and is counted. Default 256.
    pub max_forwards: usize,
    /// TCP connections per sandbox; further connections are closed at once
    /// and counted. Default 16.
    pub max_tcp_connections: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            upstreams: Vec::new(),
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            max_forwards: DEFAULT_MAX_FORWARDS,
            max_tcp_connections: DEFAULT_MAX_TCP_CONNECTIONS,
        }
    }
}

/// Transport tunables that rarely need changing, apart from [`Config`] so
/// that the common case stays four fields; [`Tuning::default`] holds the
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// A TCP connection is closed when its next message, or the write of an
    /// answer, takes longer than this. Default 10 s: a stub resolver sends its
    /// query right after connecting.
    pub tcp_idle_timeout: Duration,
    /// Largest UDP answer sent and advertised in EDNS (at least 512 is used).
    /// Default [`DEFAULT_MAX_UDP_PAYLOAD`].
    pub max_udp_payload: u16,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning { tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT, max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD }
    }
}

/// The node's resolver: a cheap handle shared by every sandbox it serves.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

/// What every loop of every sandbox reads.
struct Shared {
    /// The server's own thread, where every sandbox's loops run.
    thread: ServerThread,
    directory: Arc<dyn Directory>,
    config: Config,
    tuning: Tuning,
    counters: Counters,
    /// One permit per forward in flight, node-wide.
    forwards: Arc<Semaphore>,
    entropy: Entropy,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.shared.config)
            .field("tuning", &self.shared.tuning)
            .field("forwards_available", &self.shared.forwards.available_permits())
            .finish_non_exhaustive()
    }
}

/// The thread every sandbox's loops run on: a current-thread tokio runtime
/// of its own. Under load a query and its answer stay on one thread, with
/// none of a work-stealing runtime's cross-thread wake-ups (which cost more
/// than answering), and the agent's other work does not delay answers.
struct ServerThread {
    handle: tokio::runtime::Handle,
    /// Dropped with the server: the thread's runtime ends.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ServerThread {
    fn start() -> ServerThread {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the DNS server");
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("shoal-dns".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .expect("a thread for the DNS server");
        ServerThread { handle, _stop: stop }
    }
}

// === impl Server ===

impl Server {
    /// A resolver over `directory` with the default [`Tuning`].
    /// `config.upstreams` beyond the first [`MAX_UPSTREAMS`] are ignored.
    pub fn new(directory: Arc<dyn Directory>, config: Config) -> Server {
        Server::with_tuning(directory, config, Tuning::default())
    }

    /// A resolver over `directory` with explicit transport tunables.
    pub fn with_tuning(directory: Arc<dyn Directory>, mut config: Config, mut tuning: Tuning) -> Server {
        config.upstreams.truncate(MAX_UPSTREAMS);
        tuning.max_udp_payload = tuning.max_udp_payload.max(512);
        let permits = config.max_forwards.min(Semaphore::MAX_PERMITS);
        let shared = Shared {
            thread: ServerThread::start(),
            directory,
            forwards: Arc::new(Semaphore::new(permits)),
            config,
            tuning,
            counters: Counters::default(),
            entropy: Entropy::new(),
        };
        Server { shared: Arc::new(shared) }
    }

    /// Serves one sandbox: a UDP socket and a TCP listener already bound (by
    /// the caller, inside the sandbox's network namespace) to 127.0.0.11:53.
    /// The sockets are made non-blocking here. Must be called within a tokio
    /// runtime; serving runs until the returned guard is dropped.
    ///
    /// Forwarding sockets are opened by the runtime's threads, so queries go
    /// upstream from whatever namespace those threads are in (the node's).
    pub fn serve(
        &self,
        scope: Scope,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
    ) -> io::Result<Serving> {
        let runtime = self.shared.thread.handle.clone();
        let _in_runtime = runtime.enter();
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let udp = Arc::new(tokio::net::UdpSocket::from_std(udp)?);
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let span = info_span!("dns", networks = ?scope.networks);
        let scope = Arc::new(scope);
        let udp_loop = udp::run(self.shared.clone(), scope.clone(), udp, self.shared.entropy.rng());
        let tcp_loop = tcp::run(self.shared.clone(), scope, tcp, self.shared.entropy.rng());
        Ok(Serving {
            udp: runtime.spawn(udp_loop.instrument(span.clone())),
            tcp: runtime.spawn(tcp_loop.instrument(span)),
        })
    }

    /// A snapshot of the counters, summed over every sandbox served.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// The configuration in use (upstreams cut to [`MAX_UPSTREAMS`]).
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The transport tunables in use.
    pub fn tuning(&self) -> &Tuning {
        &self.shared.tuning
    }
}

/// One sandbox being served; dropping it stops the loops, their TCP
/// connections and their forwards.
#[derive(Debug)]
#[must_use = "serving stops when the guard is dropped"]
pub struct Serving {
    udp: JoinHandle<()>,
    tcp: JoinHandle<()>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.udp.abort();
        self.tcp.abort();
    }
}

// === impl Shared ===

/// What a loop does next with a message, once counted.
enum Step {
    /// Send these bytes back.
    Send(Vec<u8>),
    /// Forward the query upstream.
    Forward,
    /// Nothing goes back.
    Nothing,
}

impl Shared {
    /// Counts the resolver's outcome for one message and says what to do.
    fn account(&self, outcome: Outcome) -> Step {
        match outcome {
            Outcome::Answer(answer) => {
                if let Some(kind) = answer.kind {
                    self.counters.query(kind);
                }
                self.counters.response(answer.rcode, answer.truncated);
                Step::Send(answer.message)
            }
            Outcome::Forward(kind) => {
                self.counters.query(kind);
                Step::Forward
            }
            Outcome::Drop(reason) => {
                tracing::trace!(reason = reason.as_str(), "dropped a message");
                self.counters.drop(reason);
                Step::Nothing
            }
        }
    }

    /// Counts a response that did not come from [`respond`](crate::respond):
    /// relayed from upstream or a forwarding SERVFAIL.
    fn count_relayed(&self, message: &[u8]) {
        self.counters.response(Rcode::of_message(message).unwrap_or(Rcode::Other), false);
    }
}

/// Unpredictable numbers without a dependency: SipHash, keyed at random by
/// the standard library, over a counter. Upstream query ids come from here (an
/// off-path attacker must guess id and source port to spoof a reply), and so
/// do the seeds of the loops' shuffling generators.
struct Entropy {
    keys: RandomState,
    counter: AtomicU64,
}

impl Entropy {
    fn new() -> Entropy {
        Entropy { keys: RandomState::new(), counter: AtomicU64::new(0) }
    }

    fn next_u64(&self) -> u64 {
        self.keys.hash_one(self.counter.fetch_add(1, Ordering::Relaxed))
    }

    fn next_id(&self) -> u16 {
        (self.next_u64() >> 48) as u16
    }

    fn rng(&self) -> crate::Rng {
        crate::Rng::new(self.next_u64())
    }
}
