//! A TCP port: the accept loop, and for each connection the backend, the
//! PROXY header and the relay, in a task of its own.
//!
//! The loop only accepts: a connection past the port's bound is closed at
//! once, any other is handed to its own task, so a slow backend never
//! delays the next accept. Connection tasks are not tied to the loop:
//! closing the port leaves them running until both sides close.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::{Instrument, debug, debug_span, trace};

use crate::mesh::{Context, PortShared};
use crate::proxy::ProxyHeader;
use crate::stats::bump;
use crate::{Upstream, canonical, relay};

/// Pause after a failed accept (out of file descriptors, typically), so a
/// lasting failure does not spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Idle time before TCP keepalive probes on both sides of a relay, one
/// every [`KEEPALIVE_INTERVAL`], the kernel's count of them (9 by default):
/// a peer that vanished without a FIN (a node or a task's namespace gone)
/// frees its connection's slot within about 2.5 minutes instead of never.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) async fn accept_loop<U: Upstream>(
    listener: Arc<TcpListener>,
    port: Arc<PortShared>,
    context: Arc<Context<U>>,
) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                if error.kind() == io::ErrorKind::InvalidInput {
                    // The listener was shut down: the port is closing.
                    return;
                }
                bump(&port.counters.accept_errors);
                debug!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&port, context.limits.max_connections_per_port) else {
            bump(&port.counters.refused);
            trace!(%peer, "connection limit reached, closing");
            drop(client);
            continue;
        };
        bump(&port.counters.accepted);
        let peer = canonical(peer);
        let span = debug_span!("connection", client = %peer);
        let Some(worker) = context.next_worker() else {
            tokio::spawn(serve(client, peer, slot, context.clone()).instrument(span));
            continue;
        };
        // A tokio socket belongs to the runtime that registered it: the
        // connection moves to its worker's whole.
        let client = match client.into_std() {
            Ok(client) => client,
            Err(error) => {
                bump(&port.counters.accept_errors);
                debug!(%error, "cannot hand a connection to a worker");
                continue;
            }
        };
        let context = context.clone();
        worker.spawn(
            async move {
                match TcpStream::from_std(client) {
                    Ok(client) => serve(client, peer, slot, context).await,
                    Err(error) => debug!(%error, "a worker cannot take a connection"),
                }
            }
            .instrument(span),
        );
    }
}

/// One admitted connection: counted in `active` while it lives.
struct Slot {
    port: Arc<PortShared>,
}

impl Slot {
    /// A slot if the port has fewer than `max` connections. Only the port's
    /// accept loop takes slots, so checking and then adding cannot overshoot.
    fn take(port: &Arc<PortShared>, max: usize) -> Option<Slot> {
        let active = &port.counters.active;
        if active.load(Ordering::Relaxed) >= max {
            return None;
        }
        active.fetch_add(1, Ordering::Relaxed);
        Some(Slot { port: port.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.port.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connects the backend (and writes the PROXY header) within the connect
/// timeout, then relays; the client is closed if there is no backend.
async fn serve<U: Upstream>(client: TcpStream, peer: SocketAddr, slot: Slot, context: Arc<Context<U>>) {
    let port = &*slot.port;
    let counters = &port.counters;
    let header = if port.proxy_protocol.load(Ordering::Relaxed) {
        match client.local_addr() {
            Ok(local) => Some(ProxyHeader::new(peer, local)),
            Err(error) => {
                // The client is gone already (reset while queued).
                bump(&counters.relay_errors);
                debug!(%error, "no local address for the PROXY header");
                return;
            }
        }
    } else {
        None
    };
    let connect = async {
        let mut backend = context.upstream.connect(&port.key, peer).await?;
        tune(&backend);
        if let Some(header) = header {
            backend.write_all(header.as_bytes()).await?;
        }
        io::Result::Ok(backend)
    };
    let backend = match timeout(context.limits.connect_timeout, connect).await {
        Ok(Ok(backend)) => backend,
        Ok(Err(error)) => {
            bump(&counters.failed);
            debug!(%error, "no backend, closing the client");
            return;
        }
        Err(_) => {
            bump(&counters.failed);
            bump(&counters.timed_out);
            debug!(timeout = ?context.limits.connect_timeout, "backend connect timed out, closing the client");
            return;
        }
    };
    tune(&client);
    match relay::relay(client, backend, context.relay, counters).await {
        Ok(()) => trace!("both sides closed"),
        Err(error) => {
            bump(&counters.relay_errors);
            debug!(%error, "relay ended on an error");
        }
    }
}

/// No Nagle delay (the relay forwards what it has at once; the two ends
/// decide how to batch), and keepalive probes.
fn tune(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        trace!(%error, "setting TCP_NODELAY");
    }
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL);
    if let Err(error) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        trace!(%error, "setting TCP keepalive");
    }
}
