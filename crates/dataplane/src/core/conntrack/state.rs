//! A tracked flow's state: the bits packets set, and the timeout each state
//! gets.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

/// How long a flow lives without a packet, by state: every timeout of the
/// data plane, in one place. Linux's conntrack defaults where they fit.
pub mod timeouts {
    use std::time::Duration;

    /// TCP without a reply yet (a SYN nobody answered).
    pub const TCP_UNREPLIED: Duration = Duration::from_secs(30);
    /// TCP that has seen both directions and no FIN or RST. Far beyond
    /// IPVS's 900 s that breaks Swarm's idle connections (moby#31208): a
    /// connection with TCP keepalive (2 h by default) never expires, and
    /// one idle for a whole day is reset when next used, not left hanging.
    pub const TCP_ESTABLISHED: Duration = Duration::from_secs(24 * 60 * 60);
    /// TCP after a FIN in one direction: the other may still send.
    pub const TCP_HALF_CLOSED: Duration = Duration::from_secs(120);
    /// TCP after FINs both ways, or an RST.
    pub const TCP_CLOSED: Duration = Duration::from_secs(10);
    /// UDP without a reply yet.
    pub const UDP_UNREPLIED: Duration = Duration::from_secs(30);
    /// UDP that has seen a reply.
    pub const UDP_REPLIED: Duration = Duration::from_secs(180);
}

const fn millis(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;
pub(super) const TCP_FIN: u8 = 0x01;
pub(super) const TCP_SYN: u8 = 0x02;
pub(super) const TCP_RST: u8 = 0x04;
pub(super) const TCP_ACK: u8 = 0x10;

// A flow's state bits.
pub(super) const REPLIED: u8 = 1;
pub(super) const FIN_CLIENT: u8 = 2;
pub(super) const FIN_BACKEND: u8 = 4;
pub(super) const RESET: u8 = 8;
/// Created under client-IP affinity: counts towards the client's pin.
pub(super) const PINNED: u8 = 16;

/// Records a packet at `now` in `last_seen`, writing only if it moves: a
/// busy flow's entries are not written once per packet.
pub(super) fn touch(last_seen: &AtomicU64, now: u64) {
    if last_seen.load(Relaxed) < now {
        last_seen.store(now, Relaxed);
    }
}

/// Sets `bits` in `state`; returns those that were not set yet.
pub(super) fn record(state: &AtomicU8, bits: u8) -> u8 {
    let old = state.load(Relaxed);
    if old & bits == bits {
        return 0;
    }
    bits & !state.fetch_or(bits, Relaxed)
}

pub(super) fn closed(state: u8) -> bool {
    state & RESET != 0 || state & (FIN_CLIENT | FIN_BACKEND) == FIN_CLIENT | FIN_BACKEND
}

/// The timeout of a flow of protocol `proto` in `state`, in milliseconds.
pub(super) fn timeout_ms(proto: u8, state: u8) -> u64 {
    use timeouts::*;
    let timeout = match (proto, state) {
        (TCP, s) if closed(s) => TCP_CLOSED,
        (TCP, s) if s & (FIN_CLIENT | FIN_BACKEND) != 0 => TCP_HALF_CLOSED,
        (TCP, s) if s & REPLIED != 0 => TCP_ESTABLISHED,
        (TCP, _) => TCP_UNREPLIED,
        (_, s) if s & REPLIED != 0 => UDP_REPLIED,
        _ => UDP_UNREPLIED,
    };
    millis(timeout)
}

/// State bits a packet from the client sets.
pub(super) fn client_bits(proto: u8, tcp_flags: u8) -> u8 {
    if proto != TCP {
        return 0;
    }
    (if tcp_flags & TCP_FIN != 0 { FIN_CLIENT } else { 0 })
        | (if tcp_flags & TCP_RST != 0 { RESET } else { 0 })
}

/// State bits a reply sets.
pub(super) fn backend_bits(proto: u8, tcp_flags: u8) -> u8 {
    if proto != TCP {
        return REPLIED;
    }
    REPLIED
        | (if tcp_flags & TCP_FIN != 0 { FIN_BACKEND } else { 0 })
        | (if tcp_flags & TCP_RST != 0 { RESET } else { 0 })
}
