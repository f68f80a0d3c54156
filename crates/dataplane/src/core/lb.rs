//! Service VIPs and how each picks a backend for a new flow: round-robin,
//! least connections, Maglev consistent hashing.
//!
//! A [`Service`] is built once per change (`Tables::set_vip`) and only read
//! by the packet path. Its per-backend flow counts and its round-robin
//! cursor are atomics that the service's next versions share, so a change of
//! backends loses no count and restarts no rotation.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use shoal_wire::Vni;

use super::hash::splitmix64;

/// How a service picks a backend for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Each active backend in turn (Swarm's default).
    #[default]
    RoundRobin,
    /// The active backend with the fewest tracked flows; ties in turn.
    LeastConn,
    /// Maglev consistent hashing of the flow (client address and port, VIP,
    /// port, protocol): every node and every restart picks the same backend
    /// for the same flow, and removing one of N backends moves only about
    /// 1/N of new flows.
    Maglev,
}

/// A backend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// Takes new flows.
    Active,
    /// Stopping: keeps its tracked flows, takes no new ones.
    Draining,
}

/// One backend of a service: a task's address on the VIP's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// The task's overlay address.
    pub ip: Ipv4Addr,
    /// Whether it takes new flows.
    pub state: BackendState,
}

impl Backend {
    /// An active backend.
    pub const fn active(ip: Ipv4Addr) -> Backend {
        Backend { ip, state: BackendState::Active }
    }

    /// A draining backend.
    pub const fn draining(ip: Ipv4Addr) -> Backend {
        Backend { ip, state: BackendState::Draining }
    }
}

/// A service's virtual IP on one network and the backends behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipService {
    /// The VIP: an address of the network's subnet that no endpoint holds.
    pub vip: Ipv4Addr,
    /// How new flows pick a backend.
    pub policy: Policy,
    /// Client-IP affinity: a client address keeps its backend while it has
    /// flows to the VIP, and for this long after its last one ended.
    pub affinity: Option<Duration>,
    /// The backends, in any order; at most [`MAX_BACKENDS`].
    pub backends: Vec<Backend>,
}

/// One backend's tracked flows, as `Dataplane::lb_stats` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendFlows {
    /// The network.
    pub vni: Vni,
    /// The service's VIP.
    pub vip: Ipv4Addr,
    /// The backend.
    pub backend: Ipv4Addr,
    /// Its state.
    pub state: BackendState,
    /// Flows tracked to it now.
    pub flows: u64,
}

/// Entries of a Maglev lookup table: a prime, so every skip visits every
/// entry; about 100 times the backends Maglev balances well (the paper's
/// rule), so spread stays within a few percent up to ~650 backends.
pub const MAGLEV_TABLE_SIZE: usize = 65_537;

/// The most backends a service may have (indices are 16 bits).
pub const MAX_BACKENDS: usize = u16::MAX as usize - 1;

const NO_BACKEND: u16 = u16::MAX;

/// One backend as the packet path reads it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) ip: Ipv4Addr,
    pub(crate) state: BackendState,
    /// Flows tracked to this backend; each flow holds a clone and takes
    /// itself off when it ends, whichever version of the service is current.
    pub(crate) flows: Arc<AtomicU64>,
}

/// A VIP as the packet path reads it.
pub(crate) struct Service {
    pub(crate) vip: Ipv4Addr,
    pub(crate) policy: Policy,
    /// Client-IP affinity timeout in milliseconds.
    pub(crate) affinity_ms: Option<u64>,
    slots: Vec<Slot>,
    /// (address, slot index), sorted: membership by binary search.
    by_ip: Vec<(Ipv4Addr, u16)>,
    /// Indices of active slots, in address order.
    active: Vec<u16>,
    /// Slot index per Maglev table entry; empty unless the policy is Maglev
    /// and some backend is active.
    maglev: Box<[u16]>,
    cursor: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("vip", &self.vip)
            .field("policy", &self.policy)
            .field("affinity_ms", &self.affinity_ms)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Builds a service from its spec (already validated: distinct backends,
    /// at most [`MAX_BACKENDS`]), sharing the flow counts of backends that
    /// `previous` had and its round-robin cursor.
    pub(crate) fn build(spec: &VipService, previous: Option<&Service>) -> Service {
        let slots: Vec<Slot> = spec
            .backends
            .iter()
            .map(|b| Slot {
                ip: b.ip,
                state: b.state,
                flows: previous.and_then(|p| p.slot(b.ip)).map_or_else(Arc::default, |s| s.flows.clone()),
            })
            .collect();
        let mut by_ip: Vec<(Ipv4Addr, u16)> =
            slots.iter().enumerate().map(|(i, s)| (s.ip, i as u16)).collect();
        by_ip.sort_unstable();
        let active: Vec<u16> = by_ip
            .iter()
            .filter(|(_, i)| slots[usize::from(*i)].state == BackendState::Active)
            .map(|(_, i)| *i)
            .collect();
        let maglev = match spec.policy {
            Policy::Maglev if !active.is_empty() => {
                let members: Vec<(Ipv4Addr, u16)> =
                    active.iter().map(|i| (slots[usize::from(*i)].ip, *i)).collect();
                maglev_table(&members)
            }
            _ => Box::default(),
        };
        Service {
            vip: spec.vip,
            policy: spec.policy,
            affinity_ms: spec.affinity.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            slots,
            by_ip,
            active,
            maglev,
            cursor: previous.map_or_else(Arc::default, |p| p.cursor.clone()),
        }
    }

    /// The backends, as listed.
    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The backend at `ip`, active or draining.
    pub(crate) fn slot(&self, ip: Ipv4Addr) -> Option<&Slot> {
        let i = self.by_ip.binary_search_by_key(&ip, |(ip, _)| *ip).ok()?;
        self.slots.get(usize::from(self.by_ip[i].1))
    }

    /// The backend at `ip` if it takes new flows.
    pub(crate) fn active_slot(&self, ip: Ipv4Addr) -> Option<&Slot> {
        self.slot(ip).filter(|s| s.state == BackendState::Active)
    }

    /// The backend the policy gives a new flow from `client` (`flow_hash`
    /// is the flow's stable [`FlowKey::hash`](shoal_wire::FlowKey::hash)),
    /// or `None` without an active backend. The client itself is never
    /// chosen while another backend is active: its kernel would drop a
    /// packet from its own address (hairpin needs a source NAT, which the
    /// data plane does not do).
    pub(crate) fn pick_for(&self, client: Ipv4Addr, flow_hash: u32) -> Option<&Slot> {
        let n = self.active.len();
        if n == 0 {
            return None;
        }
        let avoid = |i: u16| n > 1 && self.slots[usize::from(i)].ip == client;
        let index = match self.policy {
            Policy::RoundRobin => {
                let mut i = self.active[self.cursor.fetch_add(1, Ordering::Relaxed) % n];
                if avoid(i) {
                    i = self.active[self.cursor.fetch_add(1, Ordering::Relaxed) % n];
                }
                i
            }
            Policy::LeastConn => {
                // Scan from a rotating start, keep the first minimum: ties
                // go round-robin.
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let mut best = (NO_BACKEND, u64::MAX);
                for k in 0..n {
                    let i = self.active[(start + k) % n];
                    let flows = self.slots[usize::from(i)].flows.load(Ordering::Relaxed);
                    if !avoid(i) && (flows < best.1 || best.0 == NO_BACKEND) {
                        best = (i, flows);
                    }
                }
                best.0
            }
            Policy::Maglev => {
                // The next entries of the table soon name another backend.
                let at =
                    |k: u32| self.maglev.get(flow_hash.wrapping_add(k) as usize % MAGLEV_TABLE_SIZE).copied();
                (0..MAGLEV_TABLE_SIZE as u32).filter_map(at).find(|i| !avoid(*i))?
            }
        };
        self.slots.get(usize::from(index))
    }
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016, section 3.4) over
/// `members` (address, slot index), in address order so that the table
/// depends only on the set. Each member walks its own permutation of the
/// entries, from an offset and a skip derived from its address, and the
/// members take turns claiming their next free entry until all are taken.
fn maglev_table(members: &[(Ipv4Addr, u16)]) -> Box<[u16]> {
    let size = MAGLEV_TABLE_SIZE as u64;
    let mut table = vec![NO_BACKEND; MAGLEV_TABLE_SIZE].into_boxed_slice();
    let permutations: Vec<(u64, u64)> = members
        .iter()
        .map(|(ip, _)| {
            let ip = u64::from(u32::from(*ip));
            let offset = splitmix64(ip ^ 0x6d61_676c_6576_3031) % size;
            let skip = splitmix64(ip ^ 0x6d61_676c_6576_3032) % (size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut filled = 0;
    while filled < MAGLEV_TABLE_SIZE {
        for (m, &(offset, skip)) in permutations.iter().enumerate() {
            let mut entry = ((offset + next[m] * skip) % size) as usize;
            while table[entry] != NO_BACKEND {
                next[m] += 1;
                entry = ((offset + next[m] * skip) % size) as usize;
            }
            table[entry] = members[m].1;
            next[m] += 1;
            filled += 1;
            if filled == MAGLEV_TABLE_SIZE {
                break;
            }
        }
    }
    table
}
