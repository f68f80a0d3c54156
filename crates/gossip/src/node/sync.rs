//! Anti-entropy, memberlist's push-pull, over a stream the driver opens: the
//! asker sends a `SyncRequest` (its digest and membership view), the answerer
//! a `SyncReply` (the rows the asker lacks, its own digest and view), and the
//! asker a final frame (the rows the answerer lacks). A stream the driver
//! cannot open because nothing listens there may declare a suspect down.
//!
//! Invariant: frames are sealed and opened like datagrams, and a frame that
//! does not open or parse, a replay included, ends the stream; each side
//! counts the exchange once it has applied the other's rows, and counts
//! every visible row the exchange changed as a repair.

use std::net::SocketAddrV4;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Event, GossipNode, kind};
use crate::identity::Member;
use crate::table::{DigestEntry, SyncItem};

/// The first frame of anti-entropy: what the asker holds.
#[derive(Debug, Serialize, Deserialize)]
struct SyncRequest {
    digest: Vec<DigestEntry>,
    members: Vec<foca::Member<Member>>,
}

/// The answer: what the asker lacks, and what the answerer holds.
#[derive(Debug, Serialize, Deserialize)]
struct SyncReply {
    items: Vec<SyncItem>,
    digest: Vec<DigestEntry>,
    members: Vec<foca::Member<Member>>,
}

/// An anti-entropy frame that did not open or parse; the stream is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid gossip stream frame")]
pub struct FrameError;

// === impl GossipNode: anti-entropy ===

impl GossipNode {
    /// Handles one anti-entropy stream frame; returns the frame to answer
    /// with, if any. A frame that does not open or parse ends the stream.
    #[must_use = "a reply frame must be written back on the stream; an error ends the stream"]
    pub fn handle_frame(&mut self, now: Instant, data: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        self.stats.frames_in += 1;
        let (sender, payload) = self.open(data).ok_or(FrameError)?;
        let Some((&kind, body)) = payload.split_first() else {
            self.drop_input("malformed");
            return Err(FrameError);
        };
        let reply = match kind {
            kind::SYNC_REQUEST => {
                let request: SyncRequest = self.decode(body)?;
                self.apply_members(now, request.members);
                let reply = SyncReply {
                    items: self.tables.answer(sender.id, &request.digest),
                    digest: self.tables.digest(),
                    members: self.membership(),
                };
                Some(self.seal_message(kind::SYNC_REPLY, &postcard::to_allocvec(&reply).expect("encodable")))
            }
            kind::SYNC_REPLY => {
                let reply: SyncReply = self.decode(body)?;
                self.apply_members(now, reply.members);
                self.apply_items(now, reply.items);
                let back = self.tables.answer(sender.id, &reply.digest);
                self.stats.syncs += 1;
                Some(self.seal_message(kind::SYNC_FINAL, &postcard::to_allocvec(&back).expect("encodable")))
            }
            kind::SYNC_FINAL => {
                let items: Vec<SyncItem> = self.decode(body)?;
                self.apply_items(now, items);
                self.stats.syncs += 1;
                None
            }
            _ => {
                self.drop_input("malformed");
                return Err(FrameError);
            }
        };
        if reply.is_some() {
            self.stats.frames_out += 1;
        }
        Ok(reply)
    }

    /// The first frame of an anti-entropy stream this node opens.
    #[must_use = "the frame must be written on the stream just opened"]
    pub fn start_sync(&mut self) -> Vec<u8> {
        self.stats.frames_out += 1;
        let request = SyncRequest { digest: self.tables.digest(), members: self.membership() };
        self.seal_message(kind::SYNC_REQUEST, &postcard::to_allocvec(&request).expect("encodable"))
    }

    /// The driver could not open an anti-entropy stream to `peer` because
    /// nothing listens there (connection refused): no gossip process runs at
    /// that address. If SWIM suspects the member there and its port has
    /// refused for [`restart_grace`](crate::GossipConfig::restart_grace)
    /// (it is tried again then), declare it down now instead of waiting out
    /// the suspicion: a daemon restarting with live restore is back within
    /// the grace, and its running tasks are not taken for dead. A timeout
    /// proves nothing (it may be a partition) and is not reported.
    pub fn handle_sync_refused(&mut self, now: Instant, peer: SocketAddrV4) {
        let since = *self.refused_since.entry(peer).or_insert(now);
        let waited = now.duration_since(since);
        if waited < self.config.restart_grace {
            self.schedule(now, self.config.restart_grace - waited, super::Due::Refused(peer));
            return;
        }
        self.refused_since.remove(&peer);
        let suspect = self
            .swim
            .iter_members()
            .find(|m| m.id().addr == peer && m.state() == foca::State::Suspect)
            .map(|m| foca::Member::new(*m.id(), m.incarnation(), foca::State::Down));
        if let Some(down) = suspect {
            let mut runtime = foca::AccumulatingRuntime::new();
            let _ = self.swim.apply_many(std::iter::once(down), true, &mut runtime);
            self.drain_swim(now, runtime);
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&mut self, body: &[u8]) -> Result<T, FrameError> {
        postcard::from_bytes(body).map_err(|_| {
            self.drop_input("malformed");
            FrameError
        })
    }

    /// This node's whole membership view, itself included, as SWIM updates.
    fn membership(&self) -> Vec<foca::Member<Member>> {
        let mut members: Vec<foca::Member<Member>> = self.swim.iter_membership_state().cloned().collect();
        members.push(foca::Member::alive(self.me));
        members
    }

    /// Merges a peer's membership view (memberlist's push-pull).
    fn apply_members(&mut self, now: Instant, members: Vec<foca::Member<Member>>) {
        let mut runtime = foca::AccumulatingRuntime::new();
        let _ = self.swim.apply_many(members.into_iter(), false, &mut runtime);
        self.drain_swim(now, runtime);
        // SWIM reports no change for a member first learnt as down: suspend
        // its rows here, before any row of it can show.
        let down: Vec<Member> = self
            .swim
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Down)
            .map(|m| *m.id())
            .collect();
        let mut changes = Vec::new();
        for m in down {
            self.tables.owner_down(now, m.id, m.epoch, &mut changes);
        }
        self.events.extend(changes.into_iter().map(Event::Table));
    }

    fn apply_items(&mut self, now: Instant, items: Vec<SyncItem>) {
        let mut changes = Vec::new();
        for item in items {
            self.tables.apply_sync(now, item, &mut changes);
        }
        self.stats.sync_repairs += changes.len() as u64;
        self.events.extend(changes.into_iter().map(Event::Table));
    }
}
