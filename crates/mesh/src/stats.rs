//! Per-port counters: live relaxed atomics that the loops and relays bump,
//! and the [`PortStats`] snapshot that [`Mesh::stats`](crate::Mesh::stats)
//! returns.
//!
//! The counters are read for `inspect` and tests and never decide anything,
//! except `active` and the flows gauge, which the limits are checked
//! against by the one loop that raises them. Each event is counted before
//! the client can see its effect (a refused client is counted before it is
//! closed), so a test that saw the effect can rely on the count.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::PortKey;

/// The live counters of one port.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) active: AtomicUsize,
    pub(crate) refused: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) relay_errors: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) bytes_to_backend: AtomicU64,
    pub(crate) bytes_to_client: AtomicU64,
    pub(crate) flows_active: AtomicUsize,
    pub(crate) flows_created: AtomicU64,
    pub(crate) datagrams_to_backend: AtomicU64,
    pub(crate) datagrams_to_client: AtomicU64,
    pub(crate) receive_errors: AtomicU64,
    drops: [AtomicU64; UdpDrop::COUNT],
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UdpDrop {
    FlowLimit,
    NoBackend,
    QueueFull,
    ToBackend,
    ToClient,
}

impl UdpDrop {
    const COUNT: usize = 5;
}

/// Adds one.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n`.
pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn drop_datagrams(&self, reason: UdpDrop, n: usize) {
        add(&self.drops[reason as usize], n);
    }

    pub(crate) fn snapshot(&self, key: PortKey, listening: bool) -> PortStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let drop = |reason: UdpDrop| load(&self.drops[reason as usize]);
        PortStats {
            key,
            listening,
            accepted: load(&self.accepted),
            active: self.active.load(Ordering::Relaxed) as u64,
            refused: load(&self.refused),
            failed: load(&self.failed),
            timed_out: load(&self.timed_out),
            relay_errors: load(&self.relay_errors),
            accept_errors: load(&self.accept_errors),
            bytes_to_backend: load(&self.bytes_to_backend),
            bytes_to_client: load(&self.bytes_to_client),
            flows_active: self.flows_active.load(Ordering::Relaxed) as u64,
            flows_created: load(&self.flows_created),
            datagrams_to_backend: load(&self.datagrams_to_backend),
            datagrams_to_client: load(&self.datagrams_to_client),
            receive_errors: load(&self.receive_errors),
            dropped: UdpDrops {
                flow_limit: drop(UdpDrop::FlowLimit),
                no_backend: drop(UdpDrop::NoBackend),
                queue_full: drop(UdpDrop::QueueFull),
                to_backend: drop(UdpDrop::ToBackend),
                to_client: drop(UdpDrop::ToClient),
            },
        }
    }
}

/// A snapshot of one port's counters, since the port was first opened (a
/// port closed and opened again while its relays still ran keeps counting).
/// TCP ports leave the UDP fields at zero and the other way round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortStats {
    pub key: PortKey,
    /// Whether the port is listening; `false` for a closed port whose
    /// relays are still running.
    pub listening: bool,
    /// TCP connections accepted and admitted (not counting `refused`).
    pub accepted: u64,
    /// TCP connections open now: connecting to their backend or relaying.
    pub active: u64,
    /// TCP connections closed at once because `active` was at
    /// [`Limits::max_connections_per_port`](crate::Limits::max_connections_per_port).
    pub refused: u64,
    /// Backends that could not be had: [`Upstream`](crate::Upstream) failed
    /// or timed out (`timed_out` included), or the PROXY header could not be
    /// written. TCP: the client was closed; UDP: the flow's datagrams were
    /// dropped.
    pub failed: u64,
    /// Of `failed`, those over [`Limits::connect_timeout`](crate::Limits::connect_timeout).
    pub timed_out: u64,
    /// TCP relays that ended on an error (a reset, a write to a closed
    /// peer) instead of both sides closing.
    pub relay_errors: u64,
    /// Failed accepts (out of file descriptors, typically).
    pub accept_errors: u64,
    /// Bytes relayed from clients to backends (after the PROXY header).
    pub bytes_to_backend: u64,
    /// Bytes relayed from backends to clients.
    pub bytes_to_client: u64,
    /// UDP flows now, those whose backend socket is opening included.
    pub flows_active: u64,
    /// UDP flows that got a backend socket.
    pub flows_created: u64,
    /// Datagrams relayed from clients to backends.
    pub datagrams_to_backend: u64,
    /// Datagrams relayed from backends to clients.
    pub datagrams_to_client: u64,
    /// Errors receiving on the listening or a backend UDP socket (an ICMP
    /// error from a backend, typically).
    pub receive_errors: u64,
    /// Datagrams dropped, by reason.
    pub dropped: UdpDrops,
}

/// Datagrams dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpDrops {
    /// From a new client while the port had
    /// [`Limits::max_udp_flows_per_port`](crate::Limits::max_udp_flows_per_port) flows.
    pub flow_limit: u64,
    /// Queued for a flow whose backend socket could not be had.
    pub no_backend: u64,
    /// Arrived while the flow's backend socket was opening and its queue (or
    /// the port's) was full.
    pub queue_full: u64,
    /// The backend socket refused them (send buffer full, or an error).
    pub to_backend: u64,
    /// Replies the listening socket refused (send buffer full, or an error).
    pub to_client: u64,
}

impl UdpDrops {
    /// Every drop, whatever the reason.
    pub fn total(&self) -> u64 {
        self.flow_limit + self.no_backend + self.queue_full + self.to_backend + self.to_client
    }
}

#[cfg(test)]
mod tests {
    use super::{Counters, UdpDrop, bump};
    use crate::PortKey;

    #[test]
    fn snapshot_reports_each_counter_apart() {
        let counters = Counters::default();
        bump(&counters.refused);
        counters.drop_datagrams(UdpDrop::FlowLimit, 2);
        counters.drop_datagrams(UdpDrop::ToClient, 1);
        let stats = counters.snapshot(PortKey::udp(53), true);
        assert_eq!((stats.refused, stats.accepted, stats.failed), (1, 0, 0));
        assert_eq!((stats.dropped.flow_limit, stats.dropped.to_client, stats.dropped.total()), (2, 1, 3));
    }
}
