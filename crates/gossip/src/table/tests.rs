use super::*;
use proptest::prelude::*;

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);
const NET: NetworkId = 4096;

fn key(k: &str) -> RowKey {
    RowKey::new("endpoints", k)
}

fn tables(id: NodeId) -> Tables {
    Tables::new(id, 1, Retention::default())
}

fn upsert(owner: NodeId, k: &str, v: &[u8]) -> Change {
    Change::Upsert { owner, network: NET, key: key(k), value: v.to_vec() }
}

fn remove(owner: NodeId, k: &str) -> Change {
    Change::Remove { owner, network: NET, key: key(k) }
}

/// Runs one anti-entropy exchange in both directions.
fn sync(now: Instant, a: &mut Tables, a_id: NodeId, b: &mut Tables, b_id: NodeId) -> Vec<Change> {
    let mut changes = Vec::new();
    for item in b.answer(a_id, &a.digest()) {
        a.apply_sync(now, item, &mut changes);
    }
    for item in a.answer(b_id, &b.digest()) {
        b.apply_sync(now, item, &mut changes);
    }
    changes
}

#[test]
fn deltas_apply_once_and_report_changes() {
    let now = Instant::now();
    let mut a = tables(A);
    let mut b = tables(B);
    let d1 = a.write(now, NET, key("10.0.1.2"), Some(b"x".to_vec()));
    let mut changes = Vec::new();
    assert!(b.apply_delta(now, &d1, &mut changes));
    assert_eq!(changes, [upsert(A, "10.0.1.2", b"x")]);
    changes.clear();
    assert!(!b.apply_delta(now, &d1, &mut changes), "a replayed delta is a no-op");
    assert!(changes.is_empty());
    let d2 = a.write(now, NET, key("10.0.1.2"), None);
    assert!(b.apply_delta(now, &d2, &mut changes));
    assert_eq!(changes, [remove(A, "10.0.1.2")]);
    changes.clear();
    assert!(!b.apply_delta(now, &d1, &mut changes), "the old write cannot bring the row back");
    assert!(b.visible_rows().is_empty());
}

#[test]
fn a_peer_claiming_the_top_sequence_number_is_taken_without_overflow() {
    // Found by the gossip_frame fuzz target: `known` at u64::MAX, then
    // the number above it looked up.
    let now = Instant::now();
    let mut b = tables(B);
    let mut changes = Vec::new();
    for (known, seq) in [(u64::MAX - 1, u64::MAX), (u64::MAX, u64::MAX)] {
        let rows = vec![(key("10.0.1.2"), seq, Some(b"x".to_vec()))];
        b.apply_sync(now, SyncItem::Rows { owner: A, network: NET, epoch: 1, known, rows }, &mut changes);
    }
    assert_eq!(changes, [upsert(A, "10.0.1.2", b"x")]);
    assert_eq!(b.visible_rows().len(), 1);
}

#[test]
fn out_of_order_deltas_converge_and_known_fills_in() {
    let now = Instant::now();
    let mut a = tables(A);
    let mut b = tables(B);
    let deltas: Vec<Delta> =
        (0..5).map(|i| a.write(now, NET, key(&format!("k{i}")), Some(vec![i]))).collect();
    let mut changes = Vec::new();
    for i in [4, 2, 0, 3, 1] {
        b.apply_delta(now, &deltas[i], &mut changes);
    }
    assert_eq!(b.digest(), a.digest());
    assert_eq!(b.visible_rows(), a.visible_rows());
}

#[test]
fn anti_entropy_sends_missing_rows_and_tombstones() {
    let now = Instant::now();
    let mut a = tables(A);
    let mut b = tables(B);
    let mut changes = Vec::new();
    b.apply_delta(now, &a.write(now, NET, key("k1"), Some(b"1".to_vec())), &mut changes);
    // Writes whose deltas never reach b: anti-entropy must bring them.
    let _ = a.write(now, NET, key("k2"), Some(b"2".to_vec()));
    let _ = a.write(now, NET, key("k1"), None);
    let _ = a.write(now, NET, key("k3"), Some(b"3".to_vec()));
    changes = sync(now, &mut b, B, &mut a, A);
    assert!(changes.contains(&remove(A, "k1")));
    assert!(changes.contains(&upsert(A, "k3", b"3")));
    assert_eq!(b.digest(), a.digest());
    assert_eq!(b.visible_rows(), a.visible_rows());
    assert!(sync(now, &mut b, B, &mut a, A).is_empty(), "nothing left to exchange");
}

#[test]
fn a_replica_behind_the_tombstone_floor_gets_a_snapshot() {
    let t0 = Instant::now();
    let retention = Retention { tombstones: Duration::from_secs(10), down_owners: Duration::from_secs(100) };
    let mut a = Tables::new(A, 1, retention);
    let mut b = Tables::new(B, 1, retention);
    let mut c = Tables::new(C, 1, retention);
    let mut changes = Vec::new();
    let d = a.write(t0, NET, key("gone"), Some(b"v".to_vec()));
    b.apply_delta(t0, &d, &mut changes);
    c.apply_delta(t0, &d, &mut changes);
    let del = a.write(t0, NET, key("gone"), None);
    b.apply_delta(t0, &del, &mut changes);
    let later = t0 + Duration::from_secs(11);
    a.collect_garbage(later);
    b.collect_garbage(later);
    assert_eq!(b.len(), 0, "tombstone collected");
    // c missed the delete and the tombstone is gone everywhere: it must not
    // push the row back, and must learn of the delete from a snapshot.
    changes.clear();
    let items = b.answer(C, &c.digest());
    assert!(matches!(items[..], [SyncItem::Snapshot { .. }]), "{items:?}");
    sync(later, &mut c, C, &mut b, B);
    assert!(c.visible_rows().is_empty());
    assert!(b.visible_rows().is_empty(), "b did not take the stale row back");
    assert_eq!(c.digest(), b.digest());
}

#[test]
fn a_new_epoch_replaces_the_owners_rows() {
    let now = Instant::now();
    let mut a1 = Tables::new(A, 1, Retention::default());
    let mut b = tables(B);
    let mut changes = Vec::new();
    b.apply_delta(now, &a1.write(now, NET, key("old"), Some(b"o".to_vec())), &mut changes);
    let mut a2 = Tables::new(A, 2, Retention::default());
    changes.clear();
    b.apply_delta(now, &a2.write(now, NET, key("new"), Some(b"n".to_vec())), &mut changes);
    assert_eq!(changes, [remove(A, "old"), upsert(A, "new", b"n")]);
    changes.clear();
    b.apply_delta(now, &a1.write(now, NET, key("late"), Some(b"l".to_vec())), &mut changes);
    assert!(changes.is_empty(), "writes of the old epoch are stale");
}

#[test]
fn a_down_owner_is_suspended_and_restored_with_the_same_epoch() {
    let now = Instant::now();
    let mut a = tables(A);
    let mut b = tables(B);
    let mut changes = Vec::new();
    b.apply_delta(now, &a.write(now, NET, key("k"), Some(b"v".to_vec())), &mut changes);
    changes.clear();
    b.owner_down(now, A, 1, &mut changes);
    assert_eq!(changes, [remove(A, "k")]);
    assert!(b.visible_rows().is_empty());
    assert!(b.rows()[0].suspended);
    changes.clear();
    b.owner_up(A, 1, &mut changes);
    assert_eq!(changes, [upsert(A, "k", b"v")]);
    changes.clear();
    b.owner_down(now, A, 1, &mut changes);
    b.owner_up(A, 2, &mut changes);
    assert_eq!(changes, [remove(A, "k")], "a restart (new epoch) drops the rows, once");
    assert!(b.rows().is_empty());
}

#[test]
fn down_owners_are_forgotten_after_retention() {
    let t0 = Instant::now();
    let retention = Retention { tombstones: Duration::from_secs(10), down_owners: Duration::from_secs(100) };
    let mut a = Tables::new(A, 1, retention);
    let mut b = Tables::new(B, 1, retention);
    let mut changes = Vec::new();
    b.apply_delta(t0, &a.write(t0, NET, key("k"), Some(b"v".to_vec())), &mut changes);
    b.owner_down(t0, A, 1, &mut changes);
    b.collect_garbage(t0 + Duration::from_secs(99));
    assert_eq!(b.len(), 1);
    b.collect_garbage(t0 + Duration::from_secs(100));
    assert_eq!(b.len(), 0);
}

#[test]
fn a_tombstone_above_known_outlives_its_ttl() {
    let t0 = Instant::now();
    let retention = Retention { tombstones: Duration::from_secs(10), down_owners: Duration::from_secs(100) };
    let mut a = Tables::new(A, 1, retention);
    let mut b = Tables::new(B, 1, retention);
    let mut changes = Vec::new();
    let d1 = a.write(t0, NET, key("x"), Some(b"1".to_vec()));
    b.apply_delta(t0, &d1, &mut changes);
    let d2 = a.write(t0, NET, key("k"), Some(b"v".to_vec())); // missed by b
    let d3 = a.write(t0, NET, key("k"), None); // the delete arrives first
    b.apply_delta(t0, &d3, &mut changes);
    b.collect_garbage(t0 + Duration::from_secs(60));
    changes.clear();
    assert!(!b.apply_delta(t0, &d2, &mut changes), "the late write must not bring k back");
    assert!(b.visible_rows().iter().all(|r| r.key != "k"));
}

#[test]
fn forgotten_owners_are_not_handed_back() {
    let t0 = Instant::now();
    let retention = Retention { tombstones: Duration::from_secs(10), down_owners: Duration::from_secs(100) };
    let mut a = Tables::new(A, 1, retention);
    let mut b = Tables::new(B, 1, retention);
    let mut c = Tables::new(C, 1, retention);
    let mut changes = Vec::new();
    let d = a.write(t0, NET, key("k"), Some(b"v".to_vec()));
    b.apply_delta(t0, &d, &mut changes);
    c.apply_delta(t0, &d, &mut changes);
    b.owner_down(t0, A, 1, &mut changes);
    b.collect_garbage(t0 + Duration::from_secs(100));
    assert_eq!(b.len(), 0);
    // c has not forgotten A yet and answers b's digest with A's stream.
    sync(t0, &mut b, B, &mut c, C);
    assert_eq!(b.len(), 0, "the forgotten owner's rows came back: {:?}", b.rows());
}

#[test]
fn a_newer_epoch_already_down_arrives_suspended() {
    let now = Instant::now();
    let mut a1 = Tables::new(A, 1, Retention::default());
    let mut a2 = Tables::new(A, 2, Retention::default());
    let mut b = tables(B);
    let mut changes = Vec::new();
    b.apply_delta(now, &a1.write(now, NET, key("old"), Some(b"o".to_vec())), &mut changes);
    changes.clear();
    b.owner_down(now, A, 2, &mut changes);
    assert_eq!(changes, [remove(A, "old")]);
    changes.clear();
    b.apply_delta(now, &a2.write(now, NET, key("new"), Some(b"n".to_vec())), &mut changes);
    assert!(changes.is_empty(), "rows of a down epoch are not visible");
    assert!(b.visible_rows().is_empty());
}

/// One step of a random history over three nodes.
#[derive(Debug, Clone)]
enum Op {
    Write { node: usize, key: u8, value: Option<u8> },
    Deliver { from: usize, to: usize, index: usize },
    Sync { a: usize, b: usize },
    Collect { node: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..6u8, proptest::option::of(any::<u8>())).prop_map(|(node, key, value)| Op::Write {
            node,
            key,
            value
        }),
        (0..3usize, 0..3usize, any::<usize>()).prop_map(|(from, to, index)| Op::Deliver { from, to, index }),
        (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Sync { a, b }),
        (0..3usize).prop_map(|node| Op::Collect { node }),
    ]
}

proptest! {
    /// Any interleaving of writes, lossy out-of-order delivery, garbage
    /// collection and anti-entropy converges, after a final round of syncs,
    /// to every owner's own view of its rows; nothing deleted comes back.
    #[test]
    fn replicas_converge_to_the_owners(ops in proptest::collection::vec(op(), 1..120)) {
        let ids = [A, B, C];
        let retention = Retention { tombstones: Duration::from_secs(5), down_owners: Duration::from_secs(1000) };
        let mut nodes: Vec<Tables> = ids.iter().map(|id| Tables::new(*id, 1, retention)).collect();
        let mut sent: Vec<Vec<Delta>> = vec![Vec::new(); 3];
        let mut now = Instant::now();
        let mut changes = Vec::new();
        for op in ops {
            now += Duration::from_secs(1);
            match op {
                Op::Write { node, key: k, value } => {
                    let d = nodes[node].write(now, NET, key(&k.to_string()), value.map(|v| vec![v]));
                    sent[node].push(d);
                }
                Op::Deliver { from, to, index } => {
                    if from != to && !sent[from].is_empty() {
                        let d = sent[from][index % sent[from].len()].clone();
                        nodes[to].apply_delta(now, &d, &mut changes);
                    }
                }
                Op::Sync { a, b } if a != b => {
                    let (x, y) = if a < b { (a, b) } else { (b, a) };
                    let (left, right) = nodes.split_at_mut(y);
                    sync(now, &mut left[x], ids[x], &mut right[0], ids[y]);
                }
                Op::Sync { .. } => {}
                Op::Collect { node } => nodes[node].collect_garbage(now),
            }
        }
        for _ in 0..2 {
            for (x, y) in [(0, 1), (1, 2), (0, 2)] {
                let (left, right) = nodes.split_at_mut(y);
                sync(now, &mut left[x], ids[x], &mut right[0], ids[y]);
            }
        }
        let truth: Vec<RowView> = (0..3)
            .flat_map(|i| nodes[i].visible_rows().into_iter().filter(|r| r.owner == ids[i]).collect::<Vec<_>>())
            .collect::<Vec<_>>();
        let mut truth = truth;
        truth.sort_by(|a, b| (a.owner, &a.key).cmp(&(b.owner, &b.key)));
        for n in &nodes {
            let mut seen = n.visible_rows();
            seen.sort_by(|a, b| (a.owner, &a.key).cmp(&(b.owner, &b.key)));
            prop_assert_eq!(&seen, &truth);
        }
    }
}

#[test]
fn a_resumed_epoch_keeps_rows_visible_and_drops_what_it_did_not_write_again() {
    let now = Instant::now();
    let other: NetworkId = NET + 1;
    let mut old = tables(A);
    let mut b = tables(B);
    let mut changes = Vec::new();
    for (net, k) in [(NET, "kept"), (NET, "died"), (other, "alone")] {
        let d = old.write(now, net, key(k), Some(b"v".to_vec()));
        b.apply_delta(now, &d, &mut changes);
    }
    changes.clear();
    // A new process of A in the same epoch, its task "kept" adopted.
    let mut new = tables(A);
    new.resume_at(1_000_000);
    let d = new.write(now, NET, key("kept"), Some(b"v".to_vec()));
    assert!(d.seq > 1_000_000, "numbered above the old process");
    assert!(b.apply_delta(now, &d, &mut changes), "a resumed write is new to replicas");
    assert_eq!(changes, [upsert(A, "kept", b"v")], "the same value: no row disappeared meanwhile");
    changes.clear();
    // Anti-entropy: the replica knew only the old writes, so it gets
    // snapshots, which drop the rows (and streams) the new process left.
    for item in new.answer(B, &b.digest()) {
        b.apply_sync(now, item, &mut changes);
    }
    let mut removed: Vec<Change> = changes.clone();
    removed.sort_by_key(|c| format!("{c:?}"));
    assert!(removed.contains(&remove(A, "died")), "{removed:?}");
    assert!(removed.contains(&Change::Remove { owner: A, network: other, key: key("alone") }), "{removed:?}");
    assert!(!removed.contains(&remove(A, "kept")), "{removed:?}");
    let visible: Vec<String> = b.visible_rows().into_iter().map(|r| r.key).collect();
    assert_eq!(visible, ["kept"]);
    assert!(new.answer(B, &b.digest()).is_empty(), "converged");
}
