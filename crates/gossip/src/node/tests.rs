use std::net::Ipv4Addr;

use super::*;

fn addr(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 7946)
}

fn node(i: u8, now: Instant) -> GossipNode {
    let me = Member { id: NodeId(u64::from(i)), addr: addr(i), epoch: 1, incarnation: 0 };
    GossipNode::new(me, GossipConfig::default(), KeyRing::new(1, [3; 32]), u64::from(i), now)
}

/// Delivers every pending datagram between the two nodes until quiet.
fn exchange(now: Instant, a: &mut GossipNode, b: &mut GossipNode) {
    for _ in 0..20 {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            b.handle_datagram(now, a.me().addr, &t.data);
            moved = true;
        }
        while let Some(t) = b.poll_transmit() {
            a.handle_datagram(now, b.me().addr, &t.data);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn a_replayed_datagram_is_dropped_and_counted() {
    let now = Instant::now();
    let mut a = node(1, now);
    let mut b = node(2, now);
    b.join(now, &[addr(1)]);
    let first = b.poll_transmit().expect("an announce");
    a.handle_datagram(now, addr(2), &first.data);
    a.handle_datagram(now, addr(2), &first.data);
    assert_eq!(a.stats().dropped.get("replayed"), Some(&1));
}

#[test]
fn garbage_is_dropped_and_counted() {
    let now = Instant::now();
    let mut a = node(1, now);
    a.handle_datagram(now, addr(9), b"\x01\x01too short");
    a.handle_datagram(now, addr(9), &[0u8; 200]);
    let stats = a.stats();
    assert_eq!(stats.dropped.get("bad_length"), Some(&1));
    assert_eq!(stats.dropped.get("bad_version"), Some(&1));
    assert!(a.handle_frame(now, &[1, 1, 0]).is_err());
}

#[test]
fn two_nodes_join_and_a_write_reaches_the_other() {
    let mut now = Instant::now();
    let mut a = node(1, now);
    let mut b = node(2, now);
    b.join(now, &[addr(1)]);
    exchange(now, &mut a, &mut b);
    assert_eq!((a.live_members(), b.live_members()), (1, 1));
    a.write(now, 4096, RowKey::new("endpoints", "10.0.1.2"), Some(b"h1".to_vec()));
    now += Duration::from_millis(250);
    a.handle_timeout(now);
    exchange(now, &mut a, &mut b);
    let mut upserts = 0;
    while let Some(e) = b.poll_event() {
        if matches!(e, Event::Table(Change::Upsert { .. })) {
            upserts += 1;
        }
    }
    assert_eq!(upserts, 1);
    assert_eq!(b.tables().visible_rows().len(), 1);
}

#[test]
fn anti_entropy_frames_carry_rows_both_ways() {
    let now = Instant::now();
    let mut a = node(1, now);
    let mut b = node(2, now);
    a.write(now, 1, RowKey::new("t", "from-a"), Some(vec![1]));
    b.write(now, 1, RowKey::new("t", "from-b"), Some(vec![2]));
    let request = a.start_sync();
    let reply = b.handle_frame(now, &request).unwrap().expect("a reply");
    let last = a.handle_frame(now, &reply).unwrap().expect("a final frame");
    assert_eq!(b.handle_frame(now, &last).unwrap(), None);
    assert_eq!(a.tables().visible_rows().len(), 2);
    assert_eq!(b.tables().visible_rows().len(), 2);
    assert!(b.handle_frame(now, &last).is_err(), "a replayed frame ends the stream");
}
