//! One gossip node: SWIM membership (foca), the replicated [`Tables`], delta
//! gossip, anti-entropy and sealing, as a sans-IO state machine.
//!
//! Calls, in the order a driver makes them:
//! - input: [`GossipNode::handle_datagram`] for every UDP datagram,
//!   [`GossipNode::handle_frame`] for every anti-entropy stream frame,
//!   [`GossipNode::handle_timeout`] when [`GossipNode::poll_timeout`] passes,
//!   and the commands [`GossipNode::join`], [`GossipNode::write`],
//!   [`GossipNode::leave`];
//! - output, drained after every input: [`GossipNode::poll_transmit`]
//!   (datagrams), [`GossipNode::poll_sync`] (peers to open an anti-entropy
//!   stream with, starting with [`GossipNode::start_sync`]),
//!   [`GossipNode::poll_event`] (membership and table changes).
//!
//! Time and randomness are arguments: the same inputs give the same outputs.
//!
//! Each job has its own submodule: `membership` (the foca glue), `deltas`
//! (delta gossip), `sync` (anti-entropy); this file holds the public types,
//! the datagram and timer inputs, the outputs, the timers and the sealing.

mod deltas;
mod membership;
mod sync;

pub use sync::FrameError;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use foca::{Foca, PostcardCodec, Timer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::identity::{Member, NodeId};
use crate::seal::{self, KeyRing, OpenError, ReplayWindow, Sender};
use crate::table::{Change, NetworkId, Retention, RowKey, Tables};
use deltas::Queued;
use membership::{Swim, swim_config};

/// Settings, with memberlist's LAN defaults.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// How often a random member is probed (memberlist: 1 s).
    pub probe_period: Duration,
    /// How long to wait for a direct ack before indirect probes (500 ms).
    pub probe_rtt: Duration,
    /// Members asked to probe indirectly (5; memberlist uses 3, but at 10 %
    /// loss 5 cut simulated false deaths from 0.36 to 0.04 per node-hour).
    pub indirect_probes: usize,
    /// Suspicion lasts `suspicion_mult * max(1, log10 N) * probe_period` (4).
    pub suspicion_mult: f64,
    /// How often table deltas are gossiped (200 ms).
    pub gossip_interval: Duration,
    /// To how many members each round goes (3).
    pub gossip_fanout: usize,
    /// A delta goes out in `retransmit_mult * ceil(log10(N + 1))` rounds (4).
    pub retransmit_mult: u32,
    /// Mean time between anti-entropy rounds, jittered by +-50 % (15 s).
    pub sync_interval: Duration,
    /// How often a node alone re-announces itself to its seeds (5 s).
    pub rejoin_interval: Duration,
    /// The highest local-health score; suspicion timeouts are stretched by
    /// `1 + score` (Lifeguard; 8).
    pub max_local_health: u32,
    /// Tombstone and down-owner retention.
    pub retention: Retention,
    /// Largest datagram payload before sealing (1350 bytes).
    pub max_datagram: usize,
    /// 0 for a fresh epoch. A process that resumes its node's epoch (its
    /// tasks outlived the previous daemon) numbers its frames and row
    /// writes from here, above what the previous process used, so peers
    /// neither take its frames for replays nor its writes for old ones.
    pub resume_base: u64,
    /// How long a suspect's gossip port must keep refusing connections
    /// before it is declared down without waiting out the suspicion (1 s):
    /// a daemon restarting with live restore is back within it, and its
    /// tasks, which never stopped, must not be taken for dead.
    pub restart_grace: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(500),
            indirect_probes: 5,
            suspicion_mult: 4.0,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            retransmit_mult: 4,
            sync_interval: Duration::from_secs(15),
            rejoin_interval: Duration::from_secs(5),
            max_local_health: 8,
            retention: Retention::default(),
            resume_base: 0,
            restart_grace: Duration::from_secs(1),
            max_datagram: 1350,
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination gossip address.
    pub to: SocketAddrV4,
    /// Sealed bytes.
    pub data: Vec<u8>,
}

/// Something the owner of the node may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member joined or came back.
    MemberUp(Member),
    /// A member was declared down (or left).
    MemberDown(Member),
    /// A visible row changed.
    Table(Change),
}

/// A member's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; not yet declared down.
    Suspect,
    /// Declared down.
    Down,
}

/// A member and its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Identity.
    pub member: Member,
    /// State.
    pub state: MemberState,
}

/// Counters, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Datagrams received (before opening).
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes received in datagrams.
    pub bytes_in: u64,
    /// Bytes sent in datagrams.
    pub bytes_out: u64,
    /// Stream frames received.
    pub frames_in: u64,
    /// Stream frames sent.
    pub frames_out: u64,
    /// Inputs dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Deltas that were new here.
    pub deltas_applied: u64,
    /// Anti-entropy exchanges this node took part in.
    pub syncs: u64,
    /// Visible rows that anti-entropy changed: what delta gossip had missed
    /// (a measure of how far replicas drift between rounds).
    pub sync_repairs: u64,
    /// Deltas still being gossiped (not yet sent in all their rounds).
    pub pending_deltas: u64,
    /// Times a member was declared down.
    pub member_downs: u64,
    /// Current local-health score (0 is healthy).
    pub local_health: u32,
}

/// Kinds of sealed payloads.
mod kind {
    pub const SWIM: u8 = 0;
    pub const DELTAS: u8 = 1;
    pub const SYNC_REQUEST: u8 = 2;
    pub const SYNC_REPLY: u8 = 3;
    pub const SYNC_FINAL: u8 = 4;
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Tick {
    Gossip,
    Sync,
    Rejoin,
    Health,
    Collect,
}

#[derive(Debug)]
enum Due {
    Foca(Timer<Member>),
    Tick(Tick),
    /// Try a suspect's refusing gossip port again, once its grace ended.
    Refused(SocketAddrV4),
}

/// One node's gossip state machine.
pub struct GossipNode {
    me: Member,
    config: GossipConfig,
    ring: KeyRing,
    counter: u64,
    rng: StdRng,
    swim: Swim,
    tables: Tables,
    /// Per sender: its newest epoch seen and that epoch's replay window;
    /// frames of older epochs are replays of a dead process.
    windows: HashMap<NodeId, (u64, ReplayWindow)>,
    seeds: Vec<SocketAddrV4>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    due: HashMap<u64, Due>,
    next_timer: u64,
    queue: Vec<Queued>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    syncs: VecDeque<SocketAddrV4>,
    stats: Stats,
    /// Members whose probes failed recently, with when.
    failed_probes: VecDeque<(Instant, SocketAddrV4)>,
    cluster_size: u32,
    seen_down: std::collections::HashSet<SocketAddrV4>,
    /// Suspects whose gossip port refused a connection, since when.
    refused_since: HashMap<SocketAddrV4, Instant>,
    /// A member was met since this process started (the first one is
    /// reconciled with at once).
    met_anyone: bool,
}

impl std::fmt::Debug for GossipNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipNode").field("me", &self.me).finish_non_exhaustive()
    }
}

impl GossipNode {
    /// A node that is not yet in any cluster; [`join`](Self::join) next.
    pub fn new(me: Member, config: GossipConfig, ring: KeyRing, seed: u64, now: Instant) -> GossipNode {
        let swim_config = swim_config(&config, 1, 0);
        let swim = Foca::new(me, swim_config, StdRng::seed_from_u64(seed), PostcardCodec);
        let mut tables = Tables::new(me.id, me.epoch, config.retention);
        if config.resume_base > 0 {
            tables.resume_at(config.resume_base);
        }
        let mut node = GossipNode {
            me,
            tables,
            counter: config.resume_base,
            config,
            ring,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed),
            swim,
            windows: HashMap::new(),
            seeds: Vec::new(),
            timers: BinaryHeap::new(),
            due: HashMap::new(),
            next_timer: 0,
            queue: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            syncs: VecDeque::new(),
            stats: Stats::default(),
            failed_probes: VecDeque::new(),
            cluster_size: 1,
            seen_down: std::collections::HashSet::new(),
            refused_since: HashMap::new(),
            met_anyone: false,
        };
        let gossip = node.config.gossip_interval;
        let health = node.config.probe_period;
        let rejoin = node.config.rejoin_interval;
        node.schedule(now, gossip, Due::Tick(Tick::Gossip));
        node.schedule(now, health, Due::Tick(Tick::Health));
        node.schedule(now, rejoin, Due::Tick(Tick::Rejoin));
        node.schedule(now, Duration::from_secs(10), Due::Tick(Tick::Collect));
        let first_sync = node.jittered_sync_interval();
        node.schedule(now, first_sync, Due::Tick(Tick::Sync));
        node
    }

    /// Seals with `ring`'s primary key and opens with any of its keys from
    /// now on: one step of a key rotation (every node first holds both
    /// keys, then seals with the new one, then drops the old).
    pub fn set_ring(&mut self, ring: KeyRing) {
        self.ring = ring;
    }

    /// This node's identity.
    pub fn me(&self) -> Member {
        self.me
    }

    /// The replicated tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.local_health = self.local_health();
        stats.pending_deltas = self.queue.len() as u64;
        stats
    }

    /// Every member known, this node included.
    pub fn members(&self) -> Vec<MemberView> {
        let mut out: Vec<MemberView> = self
            .swim
            .iter_membership_state()
            .map(|m| MemberView {
                member: *m.id(),
                state: match m.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => MemberState::Down,
                },
            })
            .collect();
        out.push(MemberView { member: self.me, state: MemberState::Alive });
        out.sort_by_key(|m| m.member.id);
        out
    }

    /// Number of live (alive or suspect) members besides this node.
    pub fn live_members(&self) -> usize {
        self.swim.iter_members().count()
    }

    // === inputs ===

    /// Joins through `seeds` (gossip addresses); they are remembered, and
    /// announced to again whenever this node finds itself alone.
    pub fn join(&mut self, now: Instant, seeds: &[SocketAddrV4]) {
        self.seeds = seeds.iter().copied().filter(|s| *s != self.me.addr).collect();
        self.announce_to_seeds(now);
    }

    /// Writes one of this node's rows (`None` deletes) and gossips it.
    pub fn write(&mut self, now: Instant, network: NetworkId, key: RowKey, value: Option<Vec<u8>>) {
        let delta = self.tables.write(now, network, key, value);
        self.enqueue(&delta);
    }

    /// Leaves the cluster gracefully: members mark this node down at once.
    pub fn leave(&mut self, now: Instant) {
        let mut runtime = foca::AccumulatingRuntime::new();
        let _ = self.swim.leave_cluster(&mut runtime);
        self.drain_swim(now, runtime);
    }

    /// Handles one UDP datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddrV4, data: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let Some((_sender, payload)) = self.open(data) else { return };
        // It answers: whatever refused before was a restart, now over.
        self.refused_since.remove(&from);
        let Some((&kind, body)) = payload.split_first() else {
            return self.drop_input("malformed");
        };
        match kind {
            kind::SWIM => {
                let mut runtime = foca::AccumulatingRuntime::new();
                if self.swim.handle_data(body, &mut runtime).is_err() {
                    self.drop_input("malformed");
                }
                self.drain_swim(now, runtime);
            }
            kind::DELTAS => self.handle_deltas(now, body),
            _ => self.drop_input("malformed"),
        }
        let _ = from;
    }

    // The anti-entropy inputs (`handle_frame`, `start_sync`,
    // `handle_sync_refused`) are in `sync.rs`.

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(due) = self.due.remove(&id) else { continue };
            match due {
                Due::Foca(timer) => {
                    let mut runtime = foca::AccumulatingRuntime::new();
                    let _ = self.swim.handle_timer(timer, &mut runtime);
                    self.drain_swim(now, runtime);
                }
                Due::Tick(tick) => self.tick(now, tick),
                Due::Refused(peer) => {
                    if self.refused_since.contains_key(&peer) && !self.syncs.contains(&peer) {
                        self.syncs.push_back(peer);
                    }
                }
            }
        }
    }

    // === outputs ===

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// The next datagram to send.
    #[must_use = "a polled datagram is gone from the queue: send it"]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front()?;
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += t.data.len() as u64;
        Some(t)
    }

    /// The next peer to open an anti-entropy stream with.
    #[must_use = "a polled peer is gone from the queue: open a stream to it"]
    pub fn poll_sync(&mut self) -> Option<SocketAddrV4> {
        self.syncs.pop_front()
    }

    /// The next event.
    #[must_use = "a polled event is gone from the queue: act on it"]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // === internals ===

    fn schedule(&mut self, now: Instant, after: Duration, due: Due) {
        let id = self.next_timer;
        self.next_timer += 1;
        self.timers.push(Reverse((now + after, id)));
        self.due.insert(id, due);
    }

    fn jittered_sync_interval(&mut self) -> Duration {
        self.config.sync_interval.mul_f64(self.rng.random_range(0.5..1.5))
    }

    fn local_health(&self) -> u32 {
        self.stats.local_health
    }

    fn drop_input(&mut self, reason: &str) {
        *self.stats.dropped.entry(reason.to_owned()).or_default() += 1;
    }

    fn open(&mut self, data: &[u8]) -> Option<(Sender, Vec<u8>)> {
        let (sender, payload) = match seal::open(&self.ring, data) {
            Ok(opened) => opened,
            Err(e) => {
                self.drop_input(e.name());
                return None;
            }
        };
        let (epoch, window) =
            self.windows.entry(sender.id).or_insert((sender.epoch, ReplayWindow::default()));
        if sender.epoch < *epoch {
            self.drop_input(OpenError::Replayed.name());
            return None;
        }
        if sender.epoch > *epoch {
            *epoch = sender.epoch;
            *window = ReplayWindow::default();
        }
        if !window.accept(sender.counter) {
            self.drop_input(OpenError::Replayed.name());
            return None;
        }
        Some((sender, payload))
    }

    fn seal_message(&mut self, kind: u8, body: &[u8]) -> Vec<u8> {
        self.counter += 1;
        let mut payload = Vec::with_capacity(1 + body.len());
        payload.push(kind);
        payload.extend_from_slice(body);
        let sender = Sender { id: self.me.id, epoch: self.me.epoch, counter: self.counter };
        let nonce: [u8; 24] = self.rng.random();
        seal::seal(&self.ring, sender, nonce, &payload)
    }

    fn send(&mut self, to: SocketAddrV4, kind: u8, body: &[u8]) {
        let data = self.seal_message(kind, body);
        self.transmits.push_back(Transmit { to, data });
    }

    fn tick(&mut self, now: Instant, tick: Tick) {
        let next = match tick {
            Tick::Gossip => {
                self.gossip_deltas();
                self.config.gossip_interval
            }
            Tick::Sync => {
                if let Some(peer) = self.random_members(1).first() {
                    self.syncs.push_back(peer.addr);
                }
                self.jittered_sync_interval()
            }
            Tick::Rejoin => {
                if self.live_members() == 0 && !self.seeds.is_empty() {
                    self.announce_to_seeds(now);
                }
                self.config.rejoin_interval
            }
            Tick::Health => {
                // Lifeguard, without nacks: failed probes of one member say
                // little (it may be dead), failed probes of several members
                // within a few periods say that this node is the slow one;
                // then stretch its suspicion of others until probes succeed.
                let window = self.config.probe_period * 4;
                while self.failed_probes.front().is_some_and(|(t, _)| now.duration_since(*t) > window) {
                    self.failed_probes.pop_front();
                }
                let mut targets: Vec<SocketAddrV4> = self.failed_probes.iter().map(|(_, a)| *a).collect();
                targets.sort();
                targets.dedup();
                let before = self.stats.local_health;
                self.stats.local_health = if targets.len() >= 2 {
                    (before + 1).min(self.config.max_local_health)
                } else {
                    before.saturating_sub(1)
                };
                if self.stats.local_health != before {
                    self.apply_swim_config();
                }
                self.config.probe_period
            }
            Tick::Collect => {
                self.tables.collect_garbage(now);
                let stale = self.config.restart_grace * 10;
                self.refused_since.retain(|_, since| now.duration_since(*since) < stale);
                Duration::from_secs(10)
            }
        };
        self.schedule(now, next, Due::Tick(tick));
    }
}

#[cfg(test)]
mod tests;
