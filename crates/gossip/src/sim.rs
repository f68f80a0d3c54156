//! Deterministic simulation of a gossip cluster in one process: a virtual
//! clock, a seeded RNG, and a network with per-link loss, delay and
//! partitions. Used by the tests and the gossip benchmark; every run is
//! reproducible from its seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::identity::{Member, NodeId};
use crate::node::{Event, GossipConfig, GossipNode, MemberState};
use crate::seal::KeyRing;
use crate::table::{NetworkId, RowKey, RowView};

/// The simulated network.
#[derive(Debug, Clone, Copy)]
pub struct Links {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Smallest one-way delay.
    pub delay_min: Duration,
    /// Largest one-way delay.
    pub delay_max: Duration,
}

impl Default for Links {
    fn default() -> Self {
        Links { loss: 0.0, delay_min: Duration::from_micros(100), delay_max: Duration::from_millis(2) }
    }
}

struct Slot {
    node: Option<GossipNode>,
    addr: SocketAddrV4,
    id: NodeId,
    epoch: u64,
}

struct InFlight {
    from: SocketAddrV4,
    to: usize,
    data: Vec<u8>,
}

/// A simulated cluster.
pub struct Sim {
    start: Instant,
    now: Instant,
    rng: StdRng,
    config: GossipConfig,
    ring: KeyRing,
    slots: Vec<Slot>,
    by_addr: HashMap<SocketAddrV4, usize>,
    flights: BinaryHeap<Reverse<(Instant, u64)>>,
    flight_data: HashMap<u64, InFlight>,
    wakeups: BinaryHeap<Reverse<(Instant, usize)>>,
    next_flight: u64,
    group: Vec<u32>,
    /// The network's behaviour; change it at any time.
    pub links: Links,
    /// Every member-down event seen, as (observer, member, time since start).
    pub downs: Vec<(usize, NodeId, Duration)>,
    /// Bytes sent per node.
    pub bytes_sent: Vec<u64>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("nodes", &self.slots.len()).field("now", &self.elapsed()).finish()
    }
}

impl Sim {
    /// `n` nodes, none joined yet; everything random follows `seed`.
    pub fn new(n: usize, seed: u64, config: GossipConfig) -> Sim {
        let start = Instant::now();
        let slots = (0..n)
            .map(|i| {
                let addr = SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i as u32 + 1), 7946);
                Slot { node: None, addr, id: NodeId(i as u64 + 1), epoch: 0 }
            })
            .collect::<Vec<_>>();
        let by_addr = slots.iter().enumerate().map(|(i, s)| (s.addr, i)).collect();
        Sim {
            start,
            now: start,
            rng: StdRng::seed_from_u64(seed),
            config,
            ring: KeyRing::new(1, [7; 32]),
            slots,
            by_addr,
            flights: BinaryHeap::new(),
            flight_data: HashMap::new(),
            wakeups: BinaryHeap::new(),
            next_flight: 0,
            group: vec![0; n],
            links: Links::default(),
            downs: Vec::new(),
            bytes_sent: vec![0; n],
        }
    }

    /// Time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Number of node slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the simulation has no nodes.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Node `i`, if it runs.
    pub fn node(&self, i: usize) -> Option<&GossipNode> {
        self.slots[i].node.as_ref()
    }

    /// Indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.slots.len()).filter(|i| self.slots[*i].node.is_some()).collect()
    }

    /// Starts node `i` (with a new epoch) and joins it through node `seed`.
    pub fn start(&mut self, i: usize, seed: usize) {
        let slot = &mut self.slots[i];
        slot.epoch += 1;
        let me = Member { id: slot.id, addr: slot.addr, epoch: slot.epoch, incarnation: 0 };
        let node_seed = self.rng.random::<u64>();
        let mut node = GossipNode::new(me, self.config.clone(), self.ring.clone(), node_seed, self.now);
        let seeds = [self.slots[seed].addr];
        node.join(self.now, &seeds);
        self.slots[i].node = Some(node);
        self.after_input(i);
    }

    /// Starts every node, joining through node 0.
    pub fn start_all(&mut self) {
        for i in 0..self.slots.len() {
            self.start(i, 0);
        }
    }

    /// Kills node `i` without a word (its state is lost).
    pub fn crash(&mut self, i: usize) {
        self.slots[i].node = None;
    }

    /// Node `i` leaves gracefully, then stops.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(node) = self.slots[i].node.as_mut() {
            node.leave(now);
            self.after_input(i);
        }
        self.slots[i].node = None;
    }

    /// Writes a row on node `i` (`None` deletes).
    pub fn write(&mut self, i: usize, network: NetworkId, key: RowKey, value: Option<Vec<u8>>) {
        let now = self.now;
        if let Some(node) = self.slots[i].node.as_mut() {
            node.write(now, network, key, value);
            self.after_input(i);
        }
    }

    /// Splits the nodes: datagrams and streams only flow within a group.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        for (g, members) in groups.iter().enumerate() {
            for &i in members {
                self.group[i] = g as u32 + 1;
            }
        }
    }

    /// Ends every partition.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.group[a] == self.group[b]
    }

    /// Runs the cluster for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until_time(until);
    }

    /// Runs until `done` holds (checked every 50 ms of virtual time) or
    /// `limit` passes; returns the time it took, if it held.
    #[must_use = "`None` means the condition never held"]
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> Option<Duration> {
        let start = self.now;
        let step = Duration::from_millis(50);
        loop {
            if done(self) {
                return Some(self.now - start);
            }
            if self.now - start >= limit {
                return None;
            }
            let next = self.now + step;
            self.run_until_time(next);
        }
    }

    fn run_until_time(&mut self, until: Instant) {
        loop {
            let next_flight = self.flights.peek().map(|Reverse((t, _))| *t);
            let next_wake = self.wakeups.peek().map(|Reverse((t, _))| *t);
            let next = match (next_flight, next_wake) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if next_flight == Some(next) {
                let Reverse((_, id)) = self.flights.pop().expect("peeked");
                let flight = self.flight_data.remove(&id).expect("recorded");
                let now = self.now;
                if let Some(node) = self.slots[flight.to].node.as_mut() {
                    node.handle_datagram(now, flight.from, &flight.data);
                    self.after_input(flight.to);
                }
            } else {
                let Reverse((_, i)) = self.wakeups.pop().expect("peeked");
                let now = self.now;
                if let Some(node) = self.slots[i].node.as_mut()
                    && node.poll_timeout().is_some_and(|t| t <= now)
                {
                    node.handle_timeout(now);
                    self.after_input(i);
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Drains node `i`'s outputs into the network and schedules its wake-up.
    fn after_input(&mut self, i: usize) {
        let now = self.now;
        let Some(node) = self.slots[i].node.as_mut() else { return };
        let mut transmits = Vec::new();
        while let Some(t) = node.poll_transmit() {
            transmits.push(t);
        }
        let mut syncs = Vec::new();
        while let Some(peer) = node.poll_sync() {
            syncs.push(peer);
        }
        while let Some(event) = node.poll_event() {
            if let Event::MemberDown(m) = event {
                self.downs.push((i, m.id, now - self.start));
            }
        }
        if let Some(t) = node.poll_timeout() {
            self.wakeups.push(Reverse((t, i)));
        }
        let from = self.slots[i].addr;
        for t in transmits {
            self.bytes_sent[i] += t.data.len() as u64;
            let Some(&to) = self.by_addr.get(&t.to) else { continue };
            if !self.connected(i, to) || self.rng.random_bool(self.links.loss.clamp(0.0, 1.0)) {
                continue;
            }
            let span = self.links.delay_max.saturating_sub(self.links.delay_min);
            let delay = self.links.delay_min + span.mul_f64(self.rng.random::<f64>());
            let id = self.next_flight;
            self.next_flight += 1;
            self.flights.push(Reverse((now + delay, id)));
            self.flight_data.insert(id, InFlight { from, to, data: t.data });
        }
        for peer in syncs {
            self.sync(i, peer);
        }
    }

    /// One anti-entropy stream from `a` to the node at `peer`, run to its
    /// end at once (a reliable stream; none across a partition).
    fn sync(&mut self, a: usize, peer: SocketAddrV4) {
        let Some(&b) = self.by_addr.get(&peer) else { return };
        if a == b || !self.connected(a, b) {
            return;
        }
        if self.slots[b].node.is_none() {
            // The host answers, but nothing listens: connection refused.
            let now = self.now;
            if let Some(node) = self.slots[a].node.as_mut() {
                node.handle_sync_refused(now, peer);
            }
            self.after_input(a);
            return;
        }
        let now = self.now;
        let Some(request) = self.slots[a].node.as_mut().map(|n| n.start_sync()) else { return };
        let reply = self.slots[b].node.as_mut().and_then(|n| n.handle_frame(now, &request).ok().flatten());
        let fin = reply
            .and_then(|r| self.slots[a].node.as_mut().and_then(|n| n.handle_frame(now, &r).ok().flatten()));
        if let (Some(f), Some(n)) = (fin, self.slots[b].node.as_mut()) {
            let _ = n.handle_frame(now, &f);
        }
        self.after_input(b);
        self.after_input(a);
    }

    /// Whether every running node sees every other running node alive and no
    /// stopped node as alive.
    pub fn membership_converged(&self) -> bool {
        let running = self.running();
        running.iter().all(|&i| {
            let members = self.slots[i].node.as_ref().expect("running").members();
            running.iter().all(|&j| {
                let want = self.slots[j].id;
                members.iter().any(|m| {
                    m.member.id == want
                        && m.member.epoch == self.slots[j].epoch
                        && m.state == MemberState::Alive
                })
            }) && members.iter().filter(|m| m.state != MemberState::Down).count() == running.len()
        })
    }

    /// The rows every running node should see: each running node's own
    /// live rows.
    pub fn truth(&self) -> Vec<RowView> {
        let mut rows: Vec<RowView> = self
            .running()
            .into_iter()
            .flat_map(|i| {
                let node = self.slots[i].node.as_ref().expect("running");
                let id = node.me().id;
                node.tables().visible_rows().into_iter().filter(move |r| r.owner == id)
            })
            .collect();
        rows.sort_by(|a, b| (a.owner, a.network, &a.key).cmp(&(b.owner, b.network, &b.key)));
        rows
    }

    /// Whether every running node sees exactly [`truth`](Self::truth).
    pub fn tables_converged(&self) -> bool {
        let truth = self.truth();
        self.running()
            .into_iter()
            .all(|i| self.slots[i].node.as_ref().expect("running").tables().visible_rows() == truth)
    }

    /// How many running nodes see a live row `key` of `owner`'s.
    pub fn holders(&self, owner: usize, network: NetworkId, key: &RowKey) -> usize {
        let id = self.slots[owner].id;
        self.running()
            .into_iter()
            .filter(|&i| {
                self.slots[i].node.as_ref().expect("running").tables().visible_rows().iter().any(|r| {
                    r.owner == id && r.network == network && r.table == key.table && r.key == key.key
                })
            })
            .count()
    }

    /// Node `i`'s id.
    pub fn id(&self, i: usize) -> NodeId {
        self.slots[i].id
    }
}
