//! Counters of everything the server received, answered, forwarded and dropped.
//!
//! Counters are plain relaxed atomics shared by every sandbox's loops: they are
//! read for `inspect` and tests, never used to decide anything. Each event is
//! counted before its response is sent, so a client that has its answer can
//! rely on the count.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{DropReason, QueryKind, Rcode};

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    queries: [AtomicU64; QueryKind::COUNT],
    responses: [AtomicU64; Rcode::COUNT],
    drops: [AtomicU64; DropReason::COUNT],
    forwarded: AtomicU64,
    forward_timeouts: AtomicU64,
    forward_failures: AtomicU64,
    forwards_refused: AtomicU64,
    truncated: AtomicU64,
}

/// Which forwarding counter to bump.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ForwardEvent {
    /// A query sent upstream.
    Sent,
    /// SERVFAIL because the upstreams did not answer within the timeout.
    TimedOut,
    /// SERVFAIL because there are no upstreams or all of them failed.
    Failed,
    /// SERVFAIL at once because `max_forwards` forwards were in flight.
    Refused,
}

impl Counters {
    pub(crate) fn query(&self, kind: QueryKind) {
        self.queries[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn response(&self, rcode: Rcode, truncated: bool) {
        self.responses[rcode.index()].fetch_add(1, Ordering::Relaxed);
        if truncated {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn forward(&self, event: ForwardEvent) {
        let counter = match event {
            ForwardEvent::Sent => &self.forwarded,
            ForwardEvent::TimedOut => &self.forward_timeouts,
            ForwardEvent::Failed => &self.forward_failures,
            ForwardEvent::Refused => &self.forwards_refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            queries: self.queries.each_ref().map(load),
            responses: self.responses.each_ref().map(load),
            drops: self.drops.each_ref().map(load),
            forwarded: load(&self.forwarded),
            forward_timeouts: load(&self.forward_timeouts),
            forward_failures: load(&self.forward_failures),
            forwards_refused: load(&self.forwards_refused),
            truncated: load(&self.truncated),
        }
    }
}

/// A snapshot of the server's counters, summed over every sandbox it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    queries: [u64; QueryKind::COUNT],
    responses: [u64; Rcode::COUNT],
    drops: [u64; DropReason::COUNT],
    /// Queries sent upstream (each once, however many upstreams were tried).
    pub forwarded: u64,
    /// Forwards answered SERVFAIL because no upstream answered in time.
    pub forward_timeouts: u64,
    /// Forwards answered SERVFAIL because there were no upstreams or every one
    /// failed (refused, unreachable, mismatched TCP reply).
    pub forward_failures: u64,
    /// Queries answered SERVFAIL at once because `max_forwards` were in flight.
    pub forwards_refused: u64,
    /// Answers cut to the client's UDP limit, with TC set.
    pub truncated: u64,
}

impl Stats {
    /// Queries received, by the type asked (well-formed queries only).
    pub fn queries(&self, kind: QueryKind) -> u64 {
        self.queries[kind.index()]
    }

    /// Responses sent, ours and relayed, by response code.
    pub fn responses(&self, rcode: Rcode) -> u64 {
        self.responses[rcode.index()]
    }

    /// Messages dropped (or responses not sent), by reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// Every drop, whatever the reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::{Counters, ForwardEvent};
    use crate::{DropReason, QueryKind, Rcode};

    #[test]
    fn snapshot_reports_each_counter_apart() {
        let counters = Counters::default();
        counters.query(QueryKind::Srv);
        counters.response(Rcode::ServFail, false);
        counters.response(Rcode::NoError, true);
        counters.drop(DropReason::Response);
        counters.drop(DropReason::Response);
        counters.forward(ForwardEvent::Refused);
        let stats = counters.snapshot();
        assert_eq!((stats.queries(QueryKind::Srv), stats.queries(QueryKind::A)), (1, 0));
        assert_eq!((stats.responses(Rcode::ServFail), stats.responses(Rcode::NoError)), (1, 1));
        assert_eq!((stats.drops(DropReason::Response), stats.total_drops()), (2, 2));
        assert_eq!((stats.forwards_refused, stats.forwarded, stats.truncated), (1, 0, 1));
    }
}
