//! Gossip on 7946: SWIM membership (foca) and replicated endpoint tables,
//! every datagram and frame sealed.
//!
//! Invariant: nothing here does IO or reads the clock; time and randomness
//! are arguments. A driver feeds datagrams, stream frames and timeouts in
//! and drains transmissions and events out.

#![forbid(unsafe_code)]

pub mod identity;
pub mod node;
pub mod seal;
pub mod sim;
pub mod table;

pub use identity::{Member, NodeId};
pub use node::{Event, FrameError, GossipConfig, GossipNode, MemberState, MemberView, Stats, Transmit};
pub use seal::{KeyRing, OpenError};
pub use table::{
    Change, Delta, DigestEntry, NetworkId, Retention, RowCounts, RowKey, RowView, SyncItem, Tables,
};
