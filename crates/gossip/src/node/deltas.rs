//! Delta gossip: every delta written here, or received and new here, is
//! queued and sent each round to `gossip_fanout` random members, batched
//! into datagrams of length-prefixed (u16, big-endian) encoded deltas, for
//! `retransmit_mult * ceil(log10(N + 1))` rounds.
//!
//! Invariant: a delta leaves the queue only once it has gone out in all its
//! rounds, and a received delta is queued again only when it was new here,
//! so gossip of each change dies out.

use std::cmp::Reverse;
use std::time::Instant;

use super::{Event, GossipNode, kind};
use crate::table::Delta;

pub(super) struct Queued {
    encoded: Vec<u8>,
    remaining: u32,
}

// === impl GossipNode: delta gossip ===

impl GossipNode {
    fn retransmit_limit(&self) -> u32 {
        let n = f64::from(self.cluster_size + 1);
        self.config.retransmit_mult * (n.log10().ceil() as u32).max(1)
    }

    pub(super) fn enqueue(&mut self, delta: &Delta) {
        let encoded = postcard::to_allocvec(delta).expect("encodable");
        let remaining = self.retransmit_limit();
        self.queue.push(Queued { encoded, remaining });
    }

    pub(super) fn gossip_deltas(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let peers = self.random_members(self.config.gossip_fanout);
        if peers.is_empty() {
            return;
        }
        // Fewest-sent first, so new deltas go out before old ones repeat. A
        // round sends what fits to every chosen peer and counts once.
        self.queue.sort_by_key(|q| Reverse(q.remaining));
        let mut body = Vec::with_capacity(self.config.max_datagram);
        for q in self.queue.iter_mut() {
            // A delta larger than a datagram budget goes alone (UDP carries
            // up to 64 KiB), never skipped for ever.
            let fits = body.len() + 2 + q.encoded.len() <= self.config.max_datagram;
            if !fits && !body.is_empty() {
                continue;
            }
            body.extend_from_slice(&(q.encoded.len() as u16).to_be_bytes());
            body.extend_from_slice(&q.encoded);
            q.remaining -= 1;
        }
        for peer in peers {
            self.send(peer.addr, kind::DELTAS, &body);
        }
        self.queue.retain(|q| q.remaining > 0);
    }

    pub(super) fn handle_deltas(&mut self, now: Instant, mut body: &[u8]) {
        let mut changes = Vec::new();
        while !body.is_empty() {
            let Some((len, rest)) = body.split_first_chunk::<2>() else {
                self.drop_input("malformed");
                break;
            };
            let len = usize::from(u16::from_be_bytes(*len));
            if rest.len() < len {
                self.drop_input("malformed");
                break;
            }
            let (encoded, rest) = rest.split_at(len);
            body = rest;
            let Ok(delta) = postcard::from_bytes::<Delta>(encoded) else {
                self.drop_input("malformed");
                continue;
            };
            if self.tables.apply_delta(now, &delta, &mut changes) {
                self.stats.deltas_applied += 1;
                let remaining = self.retransmit_limit();
                self.queue.push(Queued { encoded: encoded.to_vec(), remaining });
            }
        }
        self.events.extend(changes.into_iter().map(Event::Table));
    }
}
