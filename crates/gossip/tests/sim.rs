//! Deterministic simulations of whole gossip clusters: membership, table
//! replication, failures, partitions and loss. Every scenario is seeded;
//! a failure names the seed that reproduces it.

#![forbid(unsafe_code)]

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shoal_gossip::sim::{Links, Sim};
use shoal_gossip::{GossipConfig, MemberState, RowKey};

const NET: u32 = 4096;

fn key(k: &str) -> RowKey {
    RowKey::new("endpoints", k)
}

fn formed(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(n, seed, GossipConfig::default());
    sim.start_all();
    let took = sim.run_until(Duration::from_secs(60), Sim::membership_converged);
    assert!(took.is_some(), "seed {seed}: {n} nodes did not converge on membership in 60 s");
    sim
}

#[test]
fn a_cluster_forms_through_one_seed_and_replicates_a_row() {
    let mut sim = formed(5, 1);
    sim.write(3, NET, key("10.0.1.2"), Some(b"h4".to_vec()));
    let took = sim.run_until(Duration::from_secs(5), |s| s.holders(3, NET, &key("10.0.1.2")) == 5);
    assert!(took.is_some(), "the row did not reach every node");
}

#[test]
fn a_crashed_node_is_declared_down_and_its_rows_suspended() {
    let mut sim = formed(10, 2);
    sim.write(4, NET, key("a"), Some(b"1".to_vec()));
    assert!(sim.run_until(Duration::from_secs(5), |s| s.holders(4, NET, &key("a")) == 10).is_some());
    let id = sim.id(4);
    let crashed_at = sim.elapsed();
    sim.crash(4);
    let took = sim.run_until(Duration::from_secs(30), |s| {
        s.running().iter().all(|&i| {
            s.node(i).unwrap().members().iter().any(|m| m.member.id == id && m.state == MemberState::Down)
        })
    });
    let took = took.expect("every node marks the crashed node down within 30 s");
    // A refused stream to the suspect confirms the death before the
    // suspicion runs out.
    assert!(took < Duration::from_secs(6), "detection took {took:?}");
    assert!(sim.tables_converged(), "rows of the crashed node must be suspended everywhere");
    let rows = sim.node(0).unwrap().tables().rows();
    assert!(rows.iter().any(|r| r.owner == id && r.suspended), "suspended, not deleted");
    let _ = crashed_at;
}

#[test]
fn a_restart_with_a_new_epoch_replaces_the_rows() {
    let mut sim = formed(8, 3);
    sim.write(2, NET, key("old"), Some(b"o".to_vec()));
    assert!(sim.run_until(Duration::from_secs(5), |s| s.holders(2, NET, &key("old")) == 8).is_some());
    sim.crash(2);
    sim.run_for(Duration::from_secs(1));
    sim.start(2, 0);
    sim.write(2, NET, key("new"), Some(b"n".to_vec()));
    let done = sim.run_until(Duration::from_secs(30), |s| {
        s.holders(2, NET, &key("new")) == 8 && s.holders(2, NET, &key("old")) == 0 && s.membership_converged()
    });
    assert!(done.is_some(), "old-epoch rows must go, new ones arrive");
}

#[test]
fn a_falsely_dead_node_comes_back_with_its_rows() {
    let mut sim = formed(8, 4);
    sim.write(5, NET, key("k"), Some(b"v".to_vec()));
    assert!(sim.run_until(Duration::from_secs(5), |s| s.holders(5, NET, &key("k")) == 8).is_some());
    let others: Vec<usize> = (0..8).filter(|i| *i != 5).collect();
    sim.partition(&[others, vec![5]]);
    let isolated = sim.run_until(Duration::from_secs(30), |s| s.holders(5, NET, &key("k")) == 1);
    assert!(isolated.is_some(), "the isolated node is declared down and its row suspended");
    sim.heal();
    let back = sim.run_until(Duration::from_secs(60), |s| s.membership_converged() && s.tables_converged());
    assert!(back.is_some(), "after the heal, membership and tables converge");
    assert_eq!(sim.holders(5, NET, &key("k")), 8, "same epoch: the row is restored, not lost");
}

#[test]
fn ten_percent_loss_causes_no_false_deaths() {
    let mut sim = formed(20, 5);
    sim.links = Links { loss: 0.10, ..Links::default() };
    sim.downs.clear();
    for i in 0..20 {
        sim.write(i, NET, key(&format!("n{i}")), Some(vec![i as u8]));
    }
    sim.run_for(Duration::from_secs(120));
    assert!(sim.downs.is_empty(), "false deaths at 10% loss: {:?}", sim.downs);
    assert!(sim.tables_converged());
}

#[test]
fn a_node_with_another_key_cannot_join() {
    use shoal_gossip::{GossipNode, KeyRing, Member, NodeId};
    use std::net::{Ipv4Addr, SocketAddrV4};
    let now = std::time::Instant::now();
    let addr = |i| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 7946);
    let member = |i: u8| Member { id: NodeId(u64::from(i)), addr: addr(i), epoch: 1, incarnation: 0 };
    let mut good = GossipNode::new(member(1), GossipConfig::default(), KeyRing::new(1, [1; 32]), 1, now);
    let mut evil = GossipNode::new(member(2), GossipConfig::default(), KeyRing::new(1, [2; 32]), 2, now);
    evil.join(now, &[addr(1)]);
    let mut sent = 0;
    while let Some(t) = evil.poll_transmit() {
        good.handle_datagram(now, addr(2), &t.data);
        sent += 1;
    }
    assert!(sent > 0);
    assert_eq!(good.stats().dropped.get("unauthenticated"), Some(&sent));
    assert_eq!(good.live_members(), 0);
    assert!(good.poll_transmit().is_none(), "nothing is answered");
}

/// Random joins, leaves, crashes, restarts, writes, deletes, partitions and
/// heals on 200 nodes; then everything heals and every live node must hold
/// exactly the live rows of the live owners: nothing lost, nothing deleted
/// come back.
#[test]
fn two_hundred_nodes_converge_after_random_chaos() {
    for seed in [11, 12] {
        chaos(200, seed);
    }
}

fn chaos(n: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sim = Sim::new(n, seed, GossipConfig::default());
    // Most nodes start; some join later.
    for i in 0..n * 3 / 4 {
        sim.start(i, 0);
    }
    sim.links = Links { loss: 0.02, ..Links::default() };
    let mut written: Vec<Vec<String>> = vec![Vec::new(); n];
    for step in 0..60 {
        let i = rng.random_range(0..n);
        match rng.random_range(0..100) {
            0..=44 => {
                let k = format!("s{step}");
                sim.write(i, NET, key(&k), Some(vec![step as u8]));
                written[i].push(k);
            }
            45..=59 => {
                if let Some(k) = written[i].pop() {
                    sim.write(i, NET, key(&k), None);
                }
            }
            60..=69 => {
                if sim.node(i).is_none() {
                    sim.start(i, rng.random_range(0..n / 2));
                    written[i].clear();
                }
            }
            70..=76 => {
                if i != 0 {
                    sim.crash(i);
                }
            }
            77..=81 => {
                if i != 0 {
                    sim.leave(i);
                }
            }
            82..=89 => {
                let cut = rng.random_range(1..n);
                sim.partition(&[(0..cut).collect(), (cut..n).collect()]);
            }
            _ => sim.heal(),
        }
        let pause = Duration::from_millis(rng.random_range(50..2000));
        sim.run_for(pause);
    }
    sim.heal();
    sim.links = Links::default();
    let converged =
        sim.run_until(Duration::from_secs(180), |s| s.membership_converged() && s.tables_converged());
    assert!(
        converged.is_some(),
        "seed {seed}: {} running nodes did not converge within 180 s after healing",
        sim.running().len()
    );
}

/// Time until every node of 200 applies a new row (virtual time).
#[test]
fn a_new_row_reaches_two_hundred_nodes_quickly() {
    let mut sim = formed(200, 21);
    sim.write(17, NET, key("fresh"), Some(b"x".to_vec()));
    let took = sim.run_until(Duration::from_secs(30), |s| s.holders(17, NET, &key("fresh")) == 200);
    let took = took.expect("the row reaches all 200 nodes");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}
