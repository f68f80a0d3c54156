//! SWIM membership: the glue between foca and the node. Each foca call gets
//! a fresh `AccumulatingRuntime`, drained into the node's datagrams, timers
//! and events; foca's notifications suspend and restore owners' rows, and
//! queue anti-entropy with the first member met, members that come back and
//! members that fail a probe. Foca's timings follow `GossipConfig`, the
//! cluster size and the local-health score. Delta gossip and anti-entropy
//! rounds pick their peers here, among live members.
//!
//! Invariant: every foca call that takes a runtime is followed by
//! `drain_swim`, which re-tunes foca whenever the cluster size changed.

use std::num::NonZeroU32;
use std::time::Instant;

use foca::{Config, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use rand::RngExt;
use rand::rngs::StdRng;

use super::{Due, Event, GossipConfig, GossipNode, kind};
use crate::identity::Member;

pub(super) type Swim = Foca<Member, PostcardCodec, StdRng, NoCustomBroadcast>;

// === impl GossipNode: SWIM membership ===

impl GossipNode {
    pub(super) fn announce_to_seeds(&mut self, now: Instant) {
        let mut runtime = foca::AccumulatingRuntime::new();
        for seed in self.seeds.clone() {
            let _ = self.swim.announce(Member::seed(seed), &mut runtime);
        }
        self.drain_swim(now, runtime);
    }

    pub(super) fn drain_swim(&mut self, now: Instant, mut runtime: foca::AccumulatingRuntime<Member>) {
        while let Some((to, data)) = runtime.to_send() {
            self.send(to.addr, kind::SWIM, &data);
        }
        while let Some((after, timer)) = runtime.to_schedule() {
            self.schedule(now, after, Due::Foca(timer));
        }
        while let Some(note) = runtime.to_notify() {
            self.notified(now, note);
        }
        let size = (self.live_members() + 1) as u32;
        if size != self.cluster_size {
            self.cluster_size = size;
            self.apply_swim_config();
        }
    }

    pub(super) fn apply_swim_config(&mut self) {
        let config = swim_config(&self.config, self.cluster_size, self.local_health());
        let _ = self.swim.set_config(config);
    }

    fn notified(&mut self, now: Instant, note: OwnedNotification<Member>) {
        let mut changes = Vec::new();
        match note {
            OwnedNotification::MemberUp(m) => {
                self.tables.owner_up(m.id, m.epoch, &mut changes);
                self.events.push_back(Event::MemberUp(m));
                // Reconcile at once with the first member met since this
                // process started (joining, or restarting: a whole view may
                // arrive at once, so counting live members would miss it) and
                // with members that come back; others reconcile with the
                // periodic round.
                let first = !std::mem::replace(&mut self.met_anyone, true);
                if first || self.seen_down.remove(&m.addr) {
                    self.syncs.push_back(m.addr);
                }
            }
            OwnedNotification::MemberDown(m) => {
                self.stats.member_downs += 1;
                self.seen_down.insert(m.addr);
                self.tables.owner_down(now, m.id, m.epoch, &mut changes);
                self.events.push_back(Event::MemberDown(m));
            }
            OwnedNotification::Rename(old, new) => {
                if old.id != new.id {
                    // Another node now holds the address: the old one is gone.
                    self.tables.owner_down(now, old.id, old.epoch, &mut changes);
                }
                // The same address under a new identity: a rejoin (same
                // epoch, rows come back) or a restart (new epoch, rows go).
                self.tables.owner_up(new.id, new.epoch, &mut changes);
                self.events.push_back(Event::MemberUp(new));
                if self.seen_down.remove(&new.addr) {
                    self.syncs.push_back(new.addr);
                }
            }
            OwnedNotification::Rejoin(me) => self.me = me,
            OwnedNotification::ProbeFailed(_, m) => {
                self.failed_probes.push_back((now, m.addr));
                // A reliable check before the suspicion runs out (memberlist's
                // TCP fallback, Lifeguard's buddy system): an anti-entropy
                // stream carries our view, with the member suspect, to the
                // member itself, which refutes in its answer if it lives.
                if !self.syncs.contains(&m.addr) {
                    self.syncs.push_back(m.addr);
                }
            }
            _ => {}
        }
        self.events.extend(changes.into_iter().map(Event::Table));
    }

    pub(super) fn random_members(&mut self, n: usize) -> Vec<Member> {
        let mut members: Vec<Member> = self.swim.iter_members().map(|m| *m.id()).collect();
        members.sort_by_key(|m| m.id);
        let mut chosen = Vec::with_capacity(n);
        while chosen.len() < n && !members.is_empty() {
            let i = self.rng.random_range(0..members.len());
            chosen.push(members.swap_remove(i));
        }
        chosen
    }
}

pub(super) fn swim_config(config: &GossipConfig, cluster_size: u32, local_health: u32) -> Config {
    let mut swim = Config::new_lan(NonZeroU32::new(cluster_size.max(1)).expect("at least one"));
    swim.probe_period = config.probe_period;
    swim.probe_rtt = config.probe_rtt;
    swim.num_indirect_probes = std::num::NonZeroUsize::new(config.indirect_probes.max(1)).expect("non-zero");
    let log = f64::max(1.0, f64::from(cluster_size).log10());
    let suspicion = config.probe_period.mul_f64(config.suspicion_mult * log);
    swim.suspect_to_down_after = suspicion * (1 + local_health);
    swim.max_packet_size = std::num::NonZeroUsize::new(config.max_datagram).expect("non-zero");
    // Twice foca's LAN count (4 * log10(N + 1)): with fewer, a "down" or
    // "alive" update missed one member of ten in about 1 % of simulated
    // failures, leaving it to find out by its own probe seconds later.
    let twice = swim.max_transmissions.get().saturating_mul(2);
    swim.max_transmissions = std::num::NonZeroU8::new(twice).expect("non-zero");
    swim.remove_down_after = Some(config.retention.down_owners);
    swim
}
