//! Who a gossip member is: a stable node id, where it listens, which process
//! lifetime (epoch) and which rejoin (incarnation) of it this is.

use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

/// A node's stable identity across restarts, kept in its data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A member of the gossip cluster as SWIM sees it.
///
/// `epoch` changes on every start of the node's process: rows written under
/// an older epoch are gone with that process. `incarnation` changes when the
/// same process rejoins after being declared down (a false death): its rows
/// stay valid, so they come back as soon as it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Stable node id.
    pub id: NodeId,
    /// Gossip address (UDP and TCP).
    pub addr: SocketAddrV4,
    /// Process lifetime.
    pub epoch: u64,
    /// Rejoin count within the epoch.
    pub incarnation: u16,
}

impl Member {
    /// A placeholder for a seed known only by address: SWIM announces to
    /// it and learns its real identity from the answer.
    pub fn seed(addr: SocketAddrV4) -> Member {
        Member { id: NodeId(0), addr, epoch: 0, incarnation: 0 }
    }
}

/// SWIM keys members by address: a seed is known only by its address, and
/// an announce reaches whoever holds it. Among identities of one address,
/// the newer epoch (then incarnation) wins.
impl foca::Identity for Member {
    type Addr = SocketAddrV4;

    fn renew(&self) -> Option<Self> {
        Some(Member { incarnation: self.incarnation.wrapping_add(1), ..*self })
    }

    fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.epoch, self.incarnation) > (adversary.epoch, adversary.incarnation)
    }
}
