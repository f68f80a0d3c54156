//! Connection tracking for service VIPs: which backend each flow to a VIP was
//! given, and how to know its replies.
//!
//! One [`Conntrack`] is shared by every task of a node's data plane: endpoint
//! tasks create and follow flows (client to VIP) and reverse the replies of
//! local backends; the receive task reverses the replies of remote ones. It
//! is sharded: `flows` by forward tuple (client to VIP) and `replies` by reply
//! tuple (backend to client), two `dashmap`s whose shards each sit behind a
//! reader-writer lock. A packet of a known flow reads one entry: each
//! direction keeps its own last-seen time, and a reply touches the forward
//! entry only when it brings news (the first reply, a FIN, an RST). What
//! keeps it sound:
//! - no code holds a guard of one map while it locks another, except removal
//!   (sweep, eviction, purge), which holds a `flows` shard while it locks
//!   `replies` and `affinity` shards, and never the other way round;
//! - at most `capacity` flows: a new flow at the bound first evicts the flows
//!   closest to their timeout, a sixteenth of the table at a time;
//! - time is a coarse clock in milliseconds that the driver advances
//!   ([`Conntrack::advance`]); nothing here reads a clock.

use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, TryLockError};

use dashmap::DashMap;
use shoal_wire::Vni;

use super::counters::{ConntrackCounters, DropReason};
use super::hash::FastHash;
use super::lb::{Service, Slot};

mod state;

pub use state::timeouts;
use state::*;
pub(crate) use state::{TCP, UDP};

/// Flows a data plane tracks unless told otherwise. A flow is two hash-table
/// entries (88 bytes) plus the tables' slack: 25 to 47 MiB when full.
pub const DEFAULT_CAPACITY: usize = 262_144;

/// Shards per map: small shards keep a sweep's lock on each one short.
const SHARDS: usize = 64;
/// The client gate has 2^GATE_BITS counters.
const GATE_BITS: u32 = 10;
/// Eviction frees this fraction of the capacity at a time.
const EVICT_FRACTION: usize = 16;

/// One direction of a flow on one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuple {
    pub(crate) vni: Vni,
    pub(crate) proto: u8,
    pub(crate) src: Ipv4Addr,
    pub(crate) sport: u16,
    pub(crate) dst: Ipv4Addr,
    pub(crate) dport: u16,
}

impl Hash for Tuple {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(u32::from(self.src)) << 32 | u64::from(u32::from(self.dst)));
        state.write_u64(
            u64::from(self.vni.get()) << 40
                | u64::from(self.proto) << 32
                | u64::from(self.sport) << 16
                | u64::from(self.dport),
        );
    }
}

impl Tuple {
    /// The replies of this forward tuple once its destination became
    /// `backend` (the port stays).
    fn reply(&self, backend: Ipv4Addr) -> Tuple {
        Tuple { src: backend, sport: self.dport, dst: self.src, dport: self.sport, ..*self }
    }

    /// The forward tuple of this reply tuple, whose flow went to `vip`.
    fn forward(&self, vip: Ipv4Addr) -> Tuple {
        Tuple { src: self.dst, sport: self.dport, dst: vip, dport: self.sport, ..*self }
    }
}

/// A tracked flow, under its forward tuple.
#[derive(Debug)]
struct Flow {
    backend: Ipv4Addr,
    /// The backend's flow count, taken off when the flow ends.
    backend_flows: Arc<AtomicU64>,
    /// The last packet from the client.
    last_seen: AtomicU64,
    /// Every state bit, from either direction.
    state: AtomicU8,
}

impl Flow {
    /// When the flow times out if its replies are older than its last
    /// packet from the client (a lower bound of its deadline).
    fn client_deadline(&self, proto: u8) -> u64 {
        self.last_seen.load(Relaxed).saturating_add(timeout_ms(proto, self.state.load(Relaxed)))
    }

    fn closed(&self) -> bool {
        closed(self.state.load(Relaxed))
    }
}

/// The reply side of a flow, under its reply tuple.
#[derive(Debug)]
struct Reply {
    vip: Ipv4Addr,
    /// The last reply (0 before the first).
    last_seen: AtomicU64,
    /// The state bits replies have brought so far.
    seen: AtomicU8,
}

/// A client's pin to a backend under client-IP affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientKey {
    vni: Vni,
    vip: Ipv4Addr,
    client: Ipv4Addr,
}

impl ClientKey {
    fn of(forward: &Tuple) -> ClientKey {
        ClientKey { vni: forward.vni, vip: forward.dst, client: forward.src }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pin {
    backend: Ipv4Addr,
    /// The client's pinned flows to the VIP, whatever backend they are on.
    flows: u32,
    /// When its last flow ended (or the pin was made).
    last_end: u64,
    timeout: u64,
}

impl Pin {
    fn holds(&self, now: u64) -> bool {
        self.flows > 0 || now < self.last_end.saturating_add(self.timeout)
    }
}

/// Why a flow left the table.
#[derive(Debug, Clone, Copy)]
enum Removal {
    Expired,
    Evicted,
    Removed,
}

#[derive(Debug, Default)]
struct Stats {
    created: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
    removed: AtomicU64,
    nat_forward: AtomicU64,
    nat_reverse: AtomicU64,
    echo_replies: AtomicU64,
}

/// A tracked VIP flow as a daemon saves it for the next one (live
/// restore): the task that opened it outlives the daemon, and its next
/// packets must reach the same backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedFlow {
    /// Network.
    pub vni: u32,
    /// IP protocol (TCP or UDP).
    pub proto: u8,
    /// The client's address and port.
    pub client: (Ipv4Addr, u16),
    /// The VIP and port it connected to.
    pub vip: (Ipv4Addr, u16),
    /// The backend it went to.
    pub backend: Ipv4Addr,
    /// Its state bits.
    pub state: u8,
}

/// How long flows a previous daemon saved wait for their next packet.
const RESTORED_FOR_MS: u64 = 120_000;

/// The connection-tracking table of one node's data plane.
pub struct Conntrack {
    flows: DashMap<Tuple, Flow, FastHash>,
    replies: DashMap<Tuple, Reply, FastHash>,
    affinity: DashMap<ClientKey, Pin, FastHash>,
    /// Live flows per client address (hashed into 2^GATE_BITS counters): a
    /// delivered packet is looked up as a reply only if its destination's
    /// counter is not zero.
    gate: [AtomicU32; 1 << GATE_BITS],
    len: AtomicUsize,
    capacity: usize,
    now: AtomicU64,
    /// Sweeps still to check every flow's backend against the tables: set
    /// by a purge, whose racing packets (holding tables from just before
    /// the change) may have created flows to a backend it removed.
    rechecks: AtomicU32,
    evicting: Mutex<()>,
    stats: Stats,
    /// Flows a previous daemon saved, by forward tuple: (backend, state).
    /// The first packet either way turns one back into a flow.
    restored: DashMap<Tuple, (Ipv4Addr, u8), FastHash>,
    /// The same, by reply tuple: the forward tuple.
    restored_replies: DashMap<Tuple, Tuple, FastHash>,
    /// Any restored flow waits: the new-flow path looks.
    has_restored: std::sync::atomic::AtomicBool,
    /// When the restored flows not taken up are dropped.
    restored_until: AtomicU64,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("now_ms", &self.now_ms())
            .finish_non_exhaustive()
    }
}

impl Conntrack {
    /// An empty table for at most `capacity` flows (at least one). `seed`
    /// keys its hash, so that local tasks cannot aim flows at one shard.
    pub fn new(capacity: usize, seed: u64) -> Conntrack {
        let hash = FastHash(seed);
        Conntrack {
            flows: DashMap::with_capacity_and_hasher_and_shard_amount(0, hash, SHARDS),
            replies: DashMap::with_capacity_and_hasher_and_shard_amount(0, hash, SHARDS),
            affinity: DashMap::with_capacity_and_hasher_and_shard_amount(0, hash, SHARDS),
            gate: std::array::from_fn(|_| AtomicU32::new(0)),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            now: AtomicU64::new(0),
            rechecks: AtomicU32::new(0),
            evicting: Mutex::new(()),
            stats: Stats::default(),
            restored: DashMap::with_hasher_and_shard_amount(hash, SHARDS),
            restored_replies: DashMap::with_hasher_and_shard_amount(hash, SHARDS),
            has_restored: std::sync::atomic::AtomicBool::new(false),
            restored_until: AtomicU64::new(0),
        }
    }

    /// Moves the clock to `now_ms` (milliseconds since any fixed start); it
    /// never goes back.
    pub fn advance(&self, now_ms: u64) {
        self.now.fetch_max(now_ms, Relaxed);
    }

    /// The clock, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now.load(Relaxed)
    }

    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most flows tracked at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The counters now.
    pub fn counters(&self) -> ConntrackCounters {
        let s = &self.stats;
        ConntrackCounters {
            entries: self.len() as u64,
            capacity: self.capacity as u64,
            created: s.created.load(Relaxed),
            expired: s.expired.load(Relaxed),
            evicted: s.evicted.load(Relaxed),
            removed: s.removed.load(Relaxed),
            nat_forward: s.nat_forward.load(Relaxed),
            nat_reverse: s.nat_reverse.load(Relaxed),
            echo_replies: s.echo_replies.load(Relaxed),
        }
    }

    /// Removes flows past their timeout and pins past their affinity
    /// timeout; in the two sweeps after a purge, also flows whose backend
    /// `listed(vni, vip, backend)` denies (flows that packets created from
    /// tables a moment older than the change). Returns how many flows it
    /// removed. Locks each shard in turn for a scan of it.
    pub fn sweep(&self, mut listed: impl FnMut(Vni, Ipv4Addr, Ipv4Addr) -> bool) -> usize {
        let now = self.now_ms();
        let recheck = self.rechecks.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_ok();
        let mut removed = 0;
        if !self.is_empty() {
            self.flows.retain(|key, flow| {
                let why = if now >= flow.client_deadline(key.proto) && now >= self.deadline(key, flow) {
                    Removal::Expired
                } else if recheck && !listed(key.vni, key.dst, flow.backend) {
                    Removal::Removed
                } else {
                    return true;
                };
                self.forget(key, flow, why);
                removed += 1;
                false
            });
        }
        self.affinity.retain(|_, pin| pin.holds(now));
        if self.has_restored.load(Relaxed) && now >= self.restored_until.load(Relaxed) {
            self.has_restored.store(false, Relaxed);
            self.restored.retain(|key, _| {
                self.gate[gate_slot(key.src)].fetch_sub(1, Relaxed);
                false
            });
            self.restored_replies.clear();
        }
        removed
    }

    /// The flows tracked now, for the next daemon (live restore).
    pub fn save(&self) -> Vec<SavedFlow> {
        self.flows
            .iter()
            .map(|entry| {
                let (key, flow) = (entry.key(), entry.value());
                SavedFlow {
                    vni: key.vni.get(),
                    proto: key.proto,
                    client: (key.src, key.sport),
                    vip: (key.dst, key.dport),
                    backend: flow.backend,
                    state: flow.state.load(Relaxed) & !PINNED,
                }
            })
            .collect()
    }

    /// Takes the flows a previous daemon saved: each becomes a flow again,
    /// to the same backend, at its first packet either way (the client's,
    /// or the backend's reply), if that backend is still listed; those
    /// with no packet for two minutes are forgotten. At most the table's
    /// capacity are kept.
    pub fn restore(&self, flows: &[SavedFlow]) {
        for f in flows.iter().take(self.capacity) {
            let Some(vni) = Vni::new(f.vni) else { continue };
            let key = Tuple {
                vni,
                proto: f.proto,
                src: f.client.0,
                sport: f.client.1,
                dst: f.vip.0,
                dport: f.vip.1,
            };
            if self.restored.insert(key, (f.backend, f.state & !PINNED)).is_none() {
                self.gate[gate_slot(key.src)].fetch_add(1, Relaxed);
            }
            self.restored_replies.insert(key.reply(f.backend), key);
        }
        self.restored_until.store(self.now_ms().saturating_add(RESTORED_FOR_MS), Relaxed);
        self.has_restored.store(!self.restored.is_empty(), Relaxed);
    }

    /// The restored flow `key` (client to VIP), if one waits: taken up.
    fn take_restored(&self, key: &Tuple) -> Option<(Ipv4Addr, u8)> {
        if !self.has_restored.load(Relaxed) {
            return None;
        }
        let (_, (backend, state)) = self.restored.remove(key)?;
        self.restored_replies.remove(&key.reply(backend));
        self.gate[gate_slot(key.src)].fetch_sub(1, Relaxed);
        Some((backend, state))
    }

    /// The VIP of the reply `key` (backend to client) whose flow was
    /// restored and not yet taken up: the flow is tracked again (to the
    /// backend `slot_of` finds for its VIP) and the reply follows it.
    pub(crate) fn restored_reply<'s>(
        &self,
        key: &Tuple,
        tcp_flags: u8,
        slot_of: impl FnOnce(Ipv4Addr) -> Option<&'s Slot>,
    ) -> Option<Ipv4Addr> {
        if !self.has_restored.load(Relaxed) {
            return None;
        }
        let forward = *self.restored_replies.get(key)?;
        let (backend, state) = self.take_restored(&forward)?;
        let slot = slot_of(forward.dst).filter(|s| s.ip == backend)?;
        self.insert(&forward, slot, false, state, self.now_ms()).ok()?;
        self.reply(key, tcp_flags)
    }

    pub(crate) fn count_echo_reply(&self) {
        self.stats.echo_replies.fetch_add(1, Relaxed);
    }

    /// Whether `client` may have tracked flows: when not, a packet to it is
    /// no reply to un-NAT. One relaxed load; a hash collision (or a client
    /// of the same address on another network) only costs a lookup.
    #[inline]
    pub(crate) fn has_flows_of(&self, client: Ipv4Addr) -> bool {
        self.gate[gate_slot(client)].load(Relaxed) != 0
    }

    /// The backend of the flow `key` (client to VIP) belongs to, following
    /// it with this packet's `tcp_flags`; a new flow picks one by `service`'s
    /// policy and affinity (`flow_hash` for Maglev).
    pub(crate) fn forward(
        &self,
        key: &Tuple,
        tcp_flags: u8,
        service: &Service,
        flow_hash: u32,
    ) -> Result<Ipv4Addr, DropReason> {
        let now = self.now_ms();
        let bits = client_bits(key.proto, tcp_flags);
        let reopens = key.proto == TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let known = self.flows.get(key).map(|flow| {
            // A flow past its timeout is gone even before a sweep removes it;
            // a SYN on a closed flow's ports starts a new one.
            let live = (now < flow.client_deadline(key.proto) || now < self.deadline(key, &flow))
                && !(reopens && flow.closed());
            if live {
                touch(&flow.last_seen, now);
                record(&flow.state, bits);
            }
            live.then_some(flow.backend)
        });
        match known {
            Some(Some(backend)) => {
                self.stats.nat_forward.fetch_add(1, Relaxed);
                return Ok(backend);
            }
            Some(None) => self.remove(key, Removal::Expired),
            None => {
                // A flow a previous daemon tracked goes on to its backend.
                if let Some((backend, state)) = self.take_restored(key)
                    && let Some(slot) = service.slot(backend)
                {
                    self.insert(key, slot, false, state | bits, now)?;
                    self.stats.nat_forward.fetch_add(1, Relaxed);
                    return Ok(backend);
                }
            }
        }
        let slot = self.choose(key, service, flow_hash, now).ok_or(DropReason::NoBackend)?;
        self.insert(key, slot, service.affinity_ms.is_some(), bits, now)?;
        self.stats.nat_forward.fetch_add(1, Relaxed);
        Ok(slot.ip)
    }

    /// The VIP whose flow the reply `key` (backend to client) belongs to,
    /// following the flow with this packet's `tcp_flags`.
    pub(crate) fn reply(&self, key: &Tuple, tcp_flags: u8) -> Option<Ipv4Addr> {
        let (vip, news) = {
            let reply = self.replies.get(key)?;
            touch(&reply.last_seen, self.now_ms());
            (reply.vip, record(&reply.seen, backend_bits(key.proto, tcp_flags)))
        };
        if news != 0
            && let Some(flow) = self.flows.get(&key.forward(vip))
        {
            record(&flow.state, news);
        }
        self.stats.nat_reverse.fetch_add(1, Relaxed);
        Some(vip)
    }

    /// A local client sends a connection's first packet (a TCP SYN) or a
    /// datagram straight to a backend, from the ports whose replies a
    /// tracked VIP flow rewrites (`reply_key`): the client's kernel reused
    /// them for this other destination (a closing VIP flow lingers here
    /// after its ports are free again). The backend cannot tell the two
    /// apart either, so the VIP flow goes and this connection's replies
    /// keep their source.
    pub(crate) fn direct(&self, reply_key: &Tuple) {
        let Some(vip) = self.replies.get(reply_key).map(|reply| reply.vip) else { return };
        self.remove(&reply_key.forward(vip), Removal::Removed);
    }

    /// Removes the flows `doomed(forward tuple, backend)` names.
    pub(crate) fn purge(&self, mut doomed: impl FnMut(&Tuple, Ipv4Addr) -> bool) {
        self.rechecks.store(2, Relaxed);
        if self.is_empty() {
            return;
        }
        self.flows.retain(|key, flow| {
            let keep = !doomed(key, flow.backend);
            if !keep {
                self.forget(key, flow, Removal::Removed);
            }
            keep
        });
    }

    /// Removes the affinity pins to VIPs `doomed(vni, vip)` names.
    pub(crate) fn purge_pins(&self, mut doomed: impl FnMut(Vni, Ipv4Addr) -> bool) {
        self.affinity.retain(|key, _| !doomed(key.vni, key.vip));
    }

    fn choose<'s>(&self, key: &Tuple, service: &'s Service, flow_hash: u32, now: u64) -> Option<&'s Slot> {
        let Some(timeout) = service.affinity_ms else { return service.pick_for(key.src, flow_hash) };
        let client = ClientKey::of(key);
        let pinned = self.affinity.get(&client).filter(|pin| pin.holds(now)).map(|pin| pin.backend);
        if let Some(slot) = pinned.and_then(|ip| service.active_slot(ip)) {
            return Some(slot);
        }
        let slot = service.pick_for(key.src, flow_hash)?;
        // The pin keeps counting the client's flows on its old backend.
        self.affinity
            .entry(client)
            .and_modify(|pin| {
                pin.backend = slot.ip;
                pin.timeout = timeout;
            })
            .or_insert(Pin { backend: slot.ip, flows: 0, last_end: now, timeout });
        Some(slot)
    }

    fn insert(&self, key: &Tuple, slot: &Slot, pinned: bool, bits: u8, now: u64) -> Result<(), DropReason> {
        if !self.reserve() {
            return Err(DropReason::ConntrackFull);
        }
        let reply = key.reply(slot.ip);
        // A reply tuple names one flow: one that would get the same replies
        // (the client reaching the backend through two VIPs from one port)
        // gives way.
        if let Some((_, old)) = self.replies.remove(&reply) {
            self.remove(&reply.forward(old.vip), Removal::Removed);
        }
        slot.flows.fetch_add(1, Relaxed);
        self.gate[gate_slot(key.src)].fetch_add(1, Relaxed);
        if pinned && let Some(mut pin) = self.affinity.get_mut(&ClientKey::of(key)) {
            pin.flows += 1;
        }
        let flow = Flow {
            backend: slot.ip,
            backend_flows: slot.flows.clone(),
            last_seen: AtomicU64::new(now),
            state: AtomicU8::new(bits | if pinned { PINNED } else { 0 }),
        };
        // Only the client's own endpoint task creates its flows, so the key
        // is still free; if not, the old flow is accounted for all the same.
        if let Some(old) = self.flows.insert(*key, flow) {
            self.forget(key, &old, Removal::Removed);
        }
        let reply_side = Reply { vip: key.dst, last_seen: AtomicU64::new(0), seen: AtomicU8::new(0) };
        self.replies.insert(reply, reply_side);
        self.stats.created.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Counts one more flow if the bound allows, evicting first at the bound.
    fn reserve(&self) -> bool {
        let fits = || {
            let fits = self.len.fetch_add(1, Relaxed) < self.capacity;
            if !fits {
                self.len.fetch_sub(1, Relaxed);
            }
            fits
        };
        fits() || (self.evict() && fits())
    }

    /// Frees a batch of the flows closest to their timeout (unreplied and
    /// closing flows before established ones). Two passes over the table:
    /// a histogram of time left, in power-of-two buckets, then removal up to
    /// the batch. `false` if another task is evicting already.
    ///
    /// A flow removed here whose client side is past its timeout counts as
    /// expired, even if its replies would have kept it a little longer.
    fn evict(&self) -> bool {
        let _one = match self.evicting.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if self.len() < self.capacity {
            return true;
        }
        let now = self.now_ms();
        // By the client side alone, which sees every TCP flow's ACKs: one
        // lookup per flow instead of two, for a choice that is approximate
        // anyway.
        let bucket = |key: &Tuple, flow: &Flow| {
            (64 - flow.client_deadline(key.proto).saturating_sub(now).leading_zeros()) as usize
        };
        let target = (self.capacity / EVICT_FRACTION).max(1);
        let mut histogram = [0usize; 65];
        for entry in self.flows.iter() {
            histogram[bucket(entry.key(), entry.value())] += 1;
        }
        // If the table shrank meanwhile below the batch, only expired flows go.
        let (mut threshold, mut below) = (0, 0);
        for (b, n) in histogram.iter().enumerate() {
            if below + n >= target {
                threshold = b;
                break;
            }
            below += n;
        }
        let mut quota = target.saturating_sub(below);
        self.flows.retain(|key, flow| {
            let b = bucket(key, flow);
            let evict = b < threshold || (b == threshold && quota > 0);
            if b == threshold && evict {
                quota -= 1;
            }
            if evict {
                self.forget(key, flow, if b == 0 { Removal::Expired } else { Removal::Evicted });
            }
            !evict
        });
        true
    }

    fn remove(&self, key: &Tuple, why: Removal) {
        if let Some((key, flow)) = self.flows.remove(key) {
            self.forget(&key, &flow, why);
        }
    }

    /// When the flow `key` times out: its timeout after the later of its
    /// last packet each way. Takes a `replies` shard lock.
    fn deadline(&self, key: &Tuple, flow: &Flow) -> u64 {
        let replied = self
            .replies
            .get(&key.reply(flow.backend))
            .filter(|reply| reply.vip == key.dst)
            .map_or(0, |reply| reply.last_seen.load(Relaxed));
        let last_seen = flow.last_seen.load(Relaxed).max(replied);
        last_seen.saturating_add(timeout_ms(key.proto, flow.state.load(Relaxed)))
    }

    /// Accounts for a flow leaving `flows`: its reply tuple, counts, pin.
    fn forget(&self, key: &Tuple, flow: &Flow, why: Removal) {
        let now = self.now_ms();
        let replied = self
            .replies
            .remove_if(&key.reply(flow.backend), |_, reply| reply.vip == key.dst)
            .map_or(0, |(_, reply)| reply.last_seen.load(Relaxed));
        flow.backend_flows.fetch_sub(1, Relaxed);
        self.gate[gate_slot(key.src)].fetch_sub(1, Relaxed);
        self.len.fetch_sub(1, Relaxed);
        if flow.state.load(Relaxed) & PINNED != 0
            && let Some(mut pin) = self.affinity.get_mut(&ClientKey::of(key))
        {
            // A timed-out flow ended at its deadline, however late the sweep.
            let ended = match why {
                Removal::Expired => {
                    let last_seen = flow.last_seen.load(Relaxed).max(replied);
                    last_seen.saturating_add(timeout_ms(key.proto, flow.state.load(Relaxed))).min(now)
                }
                Removal::Evicted | Removal::Removed => now,
            };
            pin.flows = pin.flows.saturating_sub(1);
            pin.last_end = pin.last_end.max(ended);
        }
        let counter = match why {
            Removal::Expired => &self.stats.expired,
            Removal::Evicted => &self.stats.evicted,
            Removal::Removed => &self.stats.removed,
        };
        counter.fetch_add(1, Relaxed);
    }
}

fn gate_slot(client: Ipv4Addr) -> usize {
    (u32::from(client).wrapping_mul(0x9e37_79b1) >> (32 - GATE_BITS)) as usize
}
