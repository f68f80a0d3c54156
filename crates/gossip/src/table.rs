//! Replicated endpoint tables with one writer per row.
//!
//! Rows are grouped in *streams*, one per (owner, network): only the owner
//! writes them, numbering its writes 1, 2, 3... within its epoch. A replica
//! keeps, per stream, the epoch, `known` (every write numbered up to it is
//! reflected here) and the rows. A write is applied only if it is newer than
//! both `known` and the row it replaces, so a late or replayed copy of an old
//! write is a no-op and a deleted row cannot come back.
//!
//! Deltas spread by gossip and may arrive in any order. Anti-entropy compares
//! digests (`known` per stream): the side that is ahead sends every row, live
//! or tombstone, newer than the other's `known`, and its own `known`; when the
//! other is behind the tombstones this side has already forgotten (`floor`),
//! it sends a snapshot of the live rows instead, which replaces the stream.
//!
//! A down owner's rows are *suspended*: kept, but not visible, until it comes
//! back with the same epoch. Rows of an older epoch are dropped as soon as a
//! newer epoch of their owner is seen. Visibility changes are reported as
//! [`Change`]s, which is what programs the data plane.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;

/// A network's id (its VNI).
pub type NetworkId = u32;

/// A row's key within its network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RowKey {
    /// Table name, such as `endpoints`.
    pub table: String,
    /// Key within the table.
    pub key: String,
}

impl RowKey {
    /// A key in `table`.
    pub fn new(table: impl Into<String>, key: impl Into<String>) -> RowKey {
        RowKey { table: table.into(), key: key.into() }
    }
}

/// One write: a new value, or a deletion (`value: None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The writer, the only node that writes this row.
    pub owner: NodeId,
    /// The owner's epoch when it wrote.
    pub epoch: u64,
    /// The row's network.
    pub network: NetworkId,
    /// The write's number in the (owner, network) stream.
    pub seq: u64,
    /// The row.
    pub key: RowKey,
    /// The new value; `None` deletes.
    pub value: Option<Vec<u8>>,
}

/// What a replica holds of one stream, as sent in anti-entropy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    /// Stream owner.
    pub owner: NodeId,
    /// Stream network.
    pub network: NetworkId,
    /// Owner epoch held.
    pub epoch: u64,
    /// Every write up to this number is reflected.
    pub known: u64,
}

/// What one side sends the other in anti-entropy for one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncItem {
    /// Every row (tombstones included) newer than the asker's `known`.
    Rows {
        /// Stream owner.
        owner: NodeId,
        /// Stream network.
        network: NetworkId,
        /// Owner epoch.
        epoch: u64,
        /// The sender's `known`: after applying `rows`, the asker reflects it.
        known: u64,
        /// (key, seq, value or tombstone).
        rows: Vec<(RowKey, u64, Option<Vec<u8>>)>,
    },
    /// The live rows of the stream: they replace what the asker has.
    Snapshot {
        /// Stream owner.
        owner: NodeId,
        /// Stream network.
        network: NetworkId,
        /// Owner epoch.
        epoch: u64,
        /// The sender's `known`.
        known: u64,
        /// (key, seq, value).
        rows: Vec<(RowKey, u64, Vec<u8>)>,
    },
}

/// A change of what is visible: live rows of owners that are up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A row appeared or changed.
    Upsert {
        /// Owner.
        owner: NodeId,
        /// Network.
        network: NetworkId,
        /// Row.
        key: RowKey,
        /// Value.
        value: Vec<u8>,
    },
    /// A row disappeared (deleted, suspended, or replaced by a new epoch).
    Remove {
        /// Owner.
        owner: NodeId,
        /// Network.
        network: NetworkId,
        /// Row.
        key: RowKey,
    },
}

#[derive(Debug, Clone)]
struct Row {
    seq: u64,
    value: Option<Vec<u8>>,
    /// When the tombstone was made (or learnt), for garbage collection.
    deleted_at: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
struct Stream {
    epoch: u64,
    known: u64,
    /// Writes seen above `known` (deltas out of order).
    seen_above: BTreeSet<u64>,
    /// Tombstones numbered up to here may have been forgotten.
    floor: u64,
    rows: BTreeMap<RowKey, Row>,
}

impl Stream {
    fn new(epoch: u64) -> Stream {
        Stream { epoch, ..Stream::default() }
    }

    fn mark_seen(&mut self, seq: u64) {
        if seq <= self.known {
            return;
        }
        self.seen_above.insert(seq);
        self.fill_in();
    }

    fn raise_known(&mut self, known: u64) {
        if known > self.known {
            self.known = known;
            self.seen_above.retain(|s| *s > known);
            self.fill_in();
        }
    }

    /// Moves `known` over the numbers seen right above it; a peer's claim
    /// may have put it at the very top already.
    fn fill_in(&mut self) {
        while let Some(next) = self.known.checked_add(1)
            && self.seen_above.remove(&next)
        {
            self.known = next;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct OwnerState {
    epoch: u64,
    /// Since when it is down, if it is.
    down_since: Option<Instant>,
}

/// One row as [`Tables::rows`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowView {
    /// Owner.
    pub owner: NodeId,
    /// Owner epoch.
    pub epoch: u64,
    /// Network.
    pub network: NetworkId,
    /// Table.
    pub table: String,
    /// Key.
    pub key: String,
    /// Write number.
    pub seq: u64,
    /// Value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Whether the owner is down.
    pub suspended: bool,
}

/// How many rows a replica holds, by kind (see [`Tables::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Live rows of owners that are up.
    pub live: usize,
    /// Rows of owners that are down (tombstones included).
    pub suspended: usize,
    /// Tombstones.
    pub tombstones: usize,
}

/// Garbage-collection settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// How long a tombstone is kept (Swarm: 30 min).
    pub tombstones: Duration,
    /// How long a down owner's rows are kept (Swarm: 24 h).
    pub down_owners: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { tombstones: Duration::from_secs(30 * 60), down_owners: Duration::from_secs(24 * 3600) }
    }
}

/// This node's replica of every stream, its own included.
#[derive(Debug, Clone)]
pub struct Tables {
    local: NodeId,
    epoch: u64,
    streams: HashMap<(NodeId, NetworkId), Stream>,
    owners: HashMap<NodeId, OwnerState>,
    /// Owners forgotten after their retention, with the last epoch held:
    /// rows of that epoch or older are refused.
    forgotten: HashMap<NodeId, u64>,
    retention: Retention,
    /// Where this node's own streams start numbering: 0 in a fresh epoch;
    /// in a resumed one, above every number the epoch's earlier process
    /// can have used (see [`resume_at`](Self::resume_at)).
    base: u64,
}

impl Tables {
    /// Empty tables for node `local` in its `epoch`.
    pub fn new(local: NodeId, epoch: u64, retention: Retention) -> Tables {
        let mut owners = HashMap::new();
        owners.insert(local, OwnerState { epoch, down_since: None });
        Tables {
            local,
            epoch,
            streams: HashMap::new(),
            owners,
            forgotten: HashMap::new(),
            retention,
            base: 0,
        }
    }

    /// Resumes this node's epoch in a new process (its tasks outlived the
    /// old one): own writes are numbered from `base` up, above every
    /// number the old process used, and everything below `base` counts as
    /// forgotten, so a replica that knows only the old process's writes
    /// gets a snapshot, in which rows the new process did not write again
    /// are gone. A stream the old process had and this one never writes
    /// is answered with an empty snapshot.
    pub fn resume_at(&mut self, base: u64) {
        self.base = base;
    }

    /// Writes one of this node's own rows; returns the delta to gossip.
    #[must_use = "the delta must be gossiped, or no other node learns the write"]
    pub fn write(&mut self, now: Instant, network: NetworkId, key: RowKey, value: Option<Vec<u8>>) -> Delta {
        let (epoch, base) = (self.epoch, self.base);
        let stream = self.streams.entry((self.local, network)).or_insert_with(|| Stream {
            known: base,
            floor: base,
            ..Stream::new(epoch)
        });
        stream.known += 1;
        let seq = stream.known;
        let deleted_at = value.is_none().then_some(now);
        stream.rows.insert(key.clone(), Row { seq, value: value.clone(), deleted_at });
        Delta { owner: self.local, epoch, network, seq, key, value }
    }

    /// Whether this node holds a live row of its own under `key`.
    pub fn has_own(&self, network: NetworkId, key: &RowKey) -> bool {
        self.streams
            .get(&(self.local, network))
            .and_then(|s| s.rows.get(key))
            .is_some_and(|r| r.value.is_some())
    }

    fn visible(&self, owner: NodeId) -> bool {
        self.owners.get(&owner).is_none_or(|o| o.down_since.is_none())
    }

    /// Makes sure the stream exists at `epoch` or newer; returns false if
    /// `epoch` is older than what is held (the input is stale).
    fn stream_at(
        &mut self,
        owner: NodeId,
        network: NetworkId,
        epoch: u64,
        changes: &mut Vec<Change>,
    ) -> bool {
        if self.forgotten.get(&owner).is_some_and(|e| epoch <= *e) {
            return false;
        }
        let state = self.owners.entry(owner).or_insert(OwnerState { epoch, down_since: None });
        if epoch < state.epoch {
            return false;
        }
        if epoch > state.epoch {
            // The owner restarted: everything of its older epoch is gone
            // (and was already invisible if the owner was down).
            let was_visible = state.down_since.is_none();
            *state = OwnerState { epoch, down_since: None };
            self.drop_streams(owner, was_visible, changes);
        }
        self.streams.entry((owner, network)).or_insert_with(|| Stream::new(epoch));
        true
    }

    fn put(
        &mut self,
        now: Instant,
        (owner, network): (NodeId, NetworkId),
        key: RowKey,
        seq: u64,
        value: Option<Vec<u8>>,
        changes: &mut Vec<Change>,
    ) -> bool {
        let visible = self.visible(owner);
        let stream = self.streams.get_mut(&(owner, network)).expect("stream_at first");
        if seq <= stream.known || stream.rows.get(&key).is_some_and(|r| r.seq >= seq) {
            return false;
        }
        let was_live = stream.rows.get(&key).is_some_and(|r| r.value.is_some());
        if visible {
            match &value {
                Some(v) => {
                    changes.push(Change::Upsert { owner, network, key: key.clone(), value: v.clone() })
                }
                None if was_live => changes.push(Change::Remove { owner, network, key: key.clone() }),
                None => {}
            }
        }
        let deleted_at = value.is_none().then_some(now);
        stream.rows.insert(key, Row { seq, value, deleted_at });
        true
    }

    /// Drops every stream of `owner` (its process is gone), reporting the
    /// live rows as removed if they were visible.
    fn drop_streams(&mut self, owner: NodeId, were_visible: bool, changes: &mut Vec<Change>) {
        let old: Vec<NetworkId> = self.streams.keys().filter(|(o, _)| *o == owner).map(|(_, n)| *n).collect();
        for n in old {
            let stream = self.streams.remove(&(owner, n)).expect("listed");
            for (key, row) in stream.rows {
                if were_visible && row.value.is_some() {
                    changes.push(Change::Remove { owner, network: n, key });
                }
            }
        }
    }

    /// Applies a gossiped write; returns whether it was new (and so worth
    /// passing on).
    pub fn apply_delta(&mut self, now: Instant, delta: &Delta, changes: &mut Vec<Change>) -> bool {
        if delta.owner == self.local || delta.seq == 0 {
            return false;
        }
        if !self.stream_at(delta.owner, delta.network, delta.epoch, changes) {
            return false;
        }
        let new = self.put(
            now,
            (delta.owner, delta.network),
            delta.key.clone(),
            delta.seq,
            delta.value.clone(),
            changes,
        );
        let stream = self.streams.get_mut(&(delta.owner, delta.network)).expect("exists");
        stream.mark_seen(delta.seq);
        new
    }

    /// What this replica holds, stream by stream.
    pub fn digest(&self) -> Vec<DigestEntry> {
        let mut digest: Vec<DigestEntry> = self
            .streams
            .iter()
            .map(|((owner, network), s)| DigestEntry {
                owner: *owner,
                network: *network,
                epoch: s.epoch,
                known: s.known,
            })
            .collect();
        digest.sort_by_key(|d| (d.owner, d.network));
        digest
    }

    /// What `asker` lacks, given its digest: rows newer than what it knows,
    /// or snapshots where it is too far behind or on an older epoch.
    pub fn answer(&self, asker: NodeId, digest: &[DigestEntry]) -> Vec<SyncItem> {
        let theirs: HashMap<(NodeId, NetworkId), (u64, u64)> =
            digest.iter().map(|d| ((d.owner, d.network), (d.epoch, d.known))).collect();
        let mut items = Vec::new();
        let mut streams: Vec<_> = self.streams.iter().collect();
        streams.sort_by_key(|(k, _)| **k);
        for (&(owner, network), s) in streams {
            if owner == asker || s.known == 0 {
                continue;
            }
            let snapshot = || SyncItem::Snapshot {
                owner,
                network,
                epoch: s.epoch,
                known: s.known,
                rows: s
                    .rows
                    .iter()
                    .filter_map(|(k, r)| r.value.clone().map(|v| (k.clone(), r.seq, v)))
                    .collect(),
            };
            match theirs.get(&(owner, network)) {
                None => items.push(snapshot()),
                Some(&(epoch, _)) if epoch < s.epoch => items.push(snapshot()),
                Some(&(epoch, known)) if epoch == s.epoch && known < s.known => {
                    if known < s.floor {
                        items.push(snapshot());
                    } else {
                        let rows = s
                            .rows
                            .iter()
                            .filter(|(_, r)| r.seq > known)
                            .map(|(k, r)| (k.clone(), r.seq, r.value.clone()))
                            .collect();
                        items.push(SyncItem::Rows { owner, network, epoch: s.epoch, known: s.known, rows });
                    }
                }
                Some(_) => {}
            }
        }
        if self.base > 0 {
            // Streams of this epoch that only the old process wrote: gone.
            for d in digest {
                if d.owner == self.local
                    && d.epoch == self.epoch
                    && d.known < self.base
                    && !self.streams.contains_key(&(self.local, d.network))
                {
                    items.push(SyncItem::Snapshot {
                        owner: self.local,
                        network: d.network,
                        epoch: self.epoch,
                        known: self.base,
                        rows: Vec::new(),
                    });
                }
            }
        }
        items
    }

    /// Applies what a peer sent in anti-entropy.
    pub fn apply_sync(&mut self, now: Instant, item: SyncItem, changes: &mut Vec<Change>) {
        match item {
            SyncItem::Rows { owner, network, epoch, known, rows } => {
                if owner == self.local || !self.stream_at(owner, network, epoch, changes) {
                    return;
                }
                let mut seen = Vec::with_capacity(rows.len());
                for (key, seq, value) in rows {
                    self.put(now, (owner, network), key, seq, value, changes);
                    seen.push(seq);
                }
                let stream = self.streams.get_mut(&(owner, network)).expect("exists");
                stream.raise_known(known);
                for seq in seen {
                    stream.mark_seen(seq);
                }
            }
            SyncItem::Snapshot { owner, network, epoch, known, rows } => {
                if owner == self.local || !self.stream_at(owner, network, epoch, changes) {
                    return;
                }
                let visible = self.visible(owner);
                let stream = self.streams.get_mut(&(owner, network)).expect("exists");
                if known <= stream.known {
                    return;
                }
                // Rows the snapshot covers but does not hold were deleted.
                let listed: BTreeSet<&RowKey> = rows.iter().map(|(k, _, _)| k).collect();
                let gone: Vec<RowKey> = stream
                    .rows
                    .iter()
                    .filter(|(k, r)| r.seq <= known && !listed.contains(k))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in gone {
                    let row = stream.rows.remove(&key).expect("listed");
                    if visible && row.value.is_some() {
                        changes.push(Change::Remove { owner, network, key });
                    }
                }
                stream.floor = stream.floor.max(known);
                for (key, seq, value) in rows {
                    self.put(now, (owner, network), key, seq, Some(value), changes);
                }
                self.streams.get_mut(&(owner, network)).expect("exists").raise_known(known);
            }
        }
    }

    /// Membership says `owner` (in `epoch`) is down: suspend its rows.
    pub fn owner_down(&mut self, now: Instant, owner: NodeId, epoch: u64, changes: &mut Vec<Change>) {
        if owner == self.local {
            return;
        }
        let state = self.owners.entry(owner).or_insert(OwnerState { epoch, down_since: None });
        if epoch < state.epoch || (epoch == state.epoch && state.down_since.is_some()) {
            return;
        }
        if epoch > state.epoch {
            // A newer epoch, already down: the older rows are gone with their
            // process, and rows of the new one arrive suspended.
            let was_visible = state.down_since.is_none();
            *state = OwnerState { epoch, down_since: Some(now) };
            self.drop_streams(owner, was_visible, changes);
            return;
        }
        state.down_since = Some(now);
        for ((o, network), s) in &self.streams {
            if *o == owner {
                for (key, row) in &s.rows {
                    if row.value.is_some() {
                        changes.push(Change::Remove { owner, network: *network, key: key.clone() });
                    }
                }
            }
        }
    }

    /// Membership says `owner` is up in `epoch`: restore its rows if the
    /// epoch is the one they were written in, drop them if it is newer.
    pub fn owner_up(&mut self, owner: NodeId, epoch: u64, changes: &mut Vec<Change>) {
        if owner == self.local {
            return;
        }
        let state = *self.owners.entry(owner).or_insert(OwnerState { epoch, down_since: None });
        if epoch > state.epoch {
            // stream_at drops the old epoch; make sure it runs even without a
            // stream of the new epoch yet.
            self.owners.insert(owner, OwnerState { epoch, down_since: None });
            self.drop_streams(owner, state.down_since.is_none(), changes);
            return;
        }
        if epoch < state.epoch || state.down_since.is_none() {
            return;
        }
        self.owners.get_mut(&owner).expect("present").down_since = None;
        for ((o, network), s) in &self.streams {
            if *o == owner {
                for (key, row) in &s.rows {
                    if let Some(value) = &row.value {
                        changes.push(Change::Upsert {
                            owner,
                            network: *network,
                            key: key.clone(),
                            value: value.clone(),
                        });
                    }
                }
            }
        }
    }

    /// Forgets tombstones and down owners past their retention.
    pub fn collect_garbage(&mut self, now: Instant) {
        let expired: Vec<NodeId> = self
            .owners
            .iter()
            .filter(|(_, o)| {
                o.down_since.is_some_and(|t| now.duration_since(t) >= self.retention.down_owners)
            })
            .map(|(id, _)| *id)
            .collect();
        for owner in expired {
            if let Some(state) = self.owners.remove(&owner) {
                // Peers that have not forgotten yet must not hand the rows back.
                self.forgotten.insert(owner, state.epoch);
            }
            self.streams.retain(|(o, _), _| *o != owner);
        }
        let ttl = self.retention.tombstones;
        for stream in self.streams.values_mut() {
            let mut floor = stream.floor;
            let known = stream.known;
            // A tombstone above `known` still guards against the write it
            // replaced arriving late: keep it until `known` passes it.
            stream.rows.retain(|_, row| match row.deleted_at {
                Some(t) if now.duration_since(t) >= ttl && row.seq <= known => {
                    floor = floor.max(row.seq);
                    false
                }
                _ => true,
            });
            stream.floor = floor;
        }
    }

    /// Every row held, for debugging and for comparing replicas.
    pub fn rows(&self) -> Vec<RowView> {
        let mut out = Vec::new();
        for (&(owner, network), s) in &self.streams {
            let suspended = !self.visible(owner);
            for (key, row) in &s.rows {
                out.push(RowView {
                    owner,
                    epoch: s.epoch,
                    network,
                    table: key.table.clone(),
                    key: key.key.clone(),
                    seq: row.seq,
                    value: row.value.clone(),
                    suspended,
                });
            }
        }
        out.sort_by(|a, b| {
            (a.owner, a.network, &a.table, &a.key).cmp(&(b.owner, b.network, &b.table, &b.key))
        });
        out
    }

    /// The live rows of owners that are up: what the data plane should use.
    pub fn visible_rows(&self) -> Vec<RowView> {
        self.rows().into_iter().filter(|r| r.value.is_some() && !r.suspended).collect()
    }

    /// Rows held, counted without copying them: (live and visible,
    /// suspended, tombstones).
    pub fn counts(&self) -> RowCounts {
        let mut counts = RowCounts::default();
        for (&(owner, _), s) in &self.streams {
            let suspended = !self.visible(owner);
            for row in s.rows.values() {
                match (&row.value, suspended) {
                    (_, true) => counts.suspended += 1,
                    (Some(_), false) => counts.live += 1,
                    (None, false) => {}
                }
                if row.value.is_none() {
                    counts.tombstones += 1;
                }
            }
        }
        counts
    }

    /// Number of rows held (tombstones included).
    pub fn len(&self) -> usize {
        self.streams.values().map(|s| s.rows.len()).sum()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This node's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests;
