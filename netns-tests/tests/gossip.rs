//! Gossip on 7946 between real daemons in a lab: membership through one
//! seed, endpoints learnt with no static configuration, crash detection,
//! restarts, partitions, loss, and sealing.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use netns_tests::cluster::Cluster;
use netns_tests::{ping_from, wait_until};
use shoal_gossip::NodeId;
use shoal_gossip::seal::{self, KeyRing, Sender};
use shoal_runtime::NetNs;

const VNI: u32 = 4096;
const SUBNET: &str = "10.0.1.0/24";
const HOSTS: usize = 5;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, last)
}

fn all_alive(c: &Cluster, hosts: &[usize]) -> bool {
    hosts.iter().all(|&i| {
        let m = c.members(i);
        hosts.iter().all(|&j| {
            let addr = format!("{}:7946", c.lab.host(j).underlay);
            m.iter().any(|(_, a, s)| *a == addr && s == "alive")
        })
    })
}

fn formed() -> Cluster {
    let c = Cluster::start(HOSTS);
    let all: Vec<usize> = (0..HOSTS).collect();
    assert!(
        wait_until(Duration::from_secs(30), || all_alive(&c, &all)),
        "membership did not converge:\n{}",
        c.log(1)
    );
    c
}

fn live_rows(c: &Cluster, i: usize) -> Vec<String> {
    let mut rows: Vec<String> = c
        .rows(i)
        .into_iter()
        .filter(|r| !r["value"].is_null() && r["suspended"] == false)
        .map(|r| format!("{}/{}/{}", r["owner"], r["key"], r["epoch"]))
        .collect();
    rows.sort();
    rows
}

#[test]
fn daemons_find_each_other_and_tasks_reach_each_other_without_static_routes() {
    let c = formed();
    let sandboxes: Vec<String> = (0..HOSTS)
        .map(|i| c.add_endpoint(i, &format!("t{}", i + 1), VNI, SUBNET, ip(10 + i as u8)))
        .collect();
    // Every task reaches the one on h1, and h1's reaches every other.
    for (i, sandbox) in sandboxes.iter().enumerate().skip(1) {
        let reached = wait_until(Duration::from_secs(10), || ping_from(sandbox, ip(10), 1));
        assert!(reached, "t{} on h{} cannot reach t1 on h1", i + 1, i + 1);
        assert!(ping_from(&sandboxes[0], ip(10 + i as u8), 1));
    }
    // Every node holds the same rows.
    let reference = live_rows(&c, 0);
    assert_eq!(reference.len(), HOSTS);
    for i in 1..HOSTS {
        assert_eq!(live_rows(&c, i), reference, "h{} differs from h1", i + 1);
    }
    // A removed endpoint disappears everywhere.
    let out = c.try_cli(2, &["debug", "endpoint", "rm", &sandboxes[2]]);
    assert!(out.status.success());
    assert!(!NetNs::exists(&sandboxes[2]));
    assert!(wait_until(Duration::from_secs(10), || (0..HOSTS).all(|i| live_rows(&c, i).len() == HOSTS - 1)));
}

#[test]
fn a_killed_daemon_is_detected_and_its_endpoints_suspended_then_replaced_on_restart() {
    let mut c = formed();
    let t3 = c.add_endpoint(2, "t3", VNI, SUBNET, ip(3));
    let t1 = c.add_endpoint(0, "t1", VNI, SUBNET, ip(1));
    assert!(wait_until(Duration::from_secs(10), || ping_from(&t1, ip(3), 1)));
    let old_epoch = c.rows(0).into_iter().find(|r| r["key"] == "10.0.1.3").expect("row")["epoch"].clone();

    c.kill_daemon(2);
    let others = [0, 1, 3, 4];
    let detected = wait_until(Duration::from_secs(15), || {
        others.iter().all(|&i| c.state_of(i, 2).as_deref() == Some("down"))
    });
    assert!(detected, "not every node marked h3 down within 15 s");
    for &i in &others {
        let row = c.rows(i).into_iter().find(|r| r["key"] == "10.0.1.3").expect("kept, not deleted");
        assert_eq!(row["suspended"], true, "h{} still uses the dead node's endpoint", i + 1);
    }
    assert!(!ping_from(&t1, ip(3), 1), "the dead node's endpoint is no longer routed");

    // Restart: a new epoch; the old rows go, the sandbox left by the crash
    // is cleaned, and a new endpoint of the new epoch spreads.
    c.start_daemon(2);
    assert!(!NetNs::exists(&t3), "the restarted daemon removes the sandbox its crashed run left");
    let _t3b = c.add_endpoint(2, "t3b", VNI, SUBNET, ip(33));
    let replaced = wait_until(Duration::from_secs(20), || {
        others.iter().all(|&i| {
            let rows = c.rows(i);
            !rows.iter().any(|r| r["key"] == "10.0.1.3")
                && rows
                    .iter()
                    .any(|r| r["key"] == "10.0.1.33" && r["epoch"] != old_epoch && r["suspended"] == false)
        })
    });
    assert!(replaced, "the new epoch did not replace h3's rows everywhere");
    assert!(wait_until(Duration::from_secs(10), || ping_from(&t1, ip(33), 1)));
}

#[test]
fn a_partition_heals_and_tables_converge() {
    let c = formed();
    let t1 = c.add_endpoint(0, "t1", VNI, SUBNET, ip(1));
    let t4 = c.add_endpoint(3, "t4", VNI, SUBNET, ip(4));
    assert!(wait_until(Duration::from_secs(10), || ping_from(&t1, ip(4), 1)));
    // Cut h4 off: drop everything in and out of its underlay interface.
    c.nft(
        3,
        "table inet cut {\n chain in { type filter hook input priority 0; iifname \"eth0\" drop; }\n \
         chain out { type filter hook output priority 0; oifname \"eth0\" drop; }\n}\n",
    );
    let split = wait_until(Duration::from_secs(20), || {
        [0, 1, 2, 4].iter().all(|&i| c.state_of(i, 3).as_deref() == Some("down"))
    });
    assert!(split, "the others did not mark the cut-off node down");
    // Changes on both sides while split.
    let t2 = c.add_endpoint(1, "t2", VNI, SUBNET, ip(2));
    let _t4b = c.add_endpoint(3, "t4b", VNI, SUBNET, ip(44));
    c.nft(3, "delete table inet cut");
    let all: Vec<usize> = (0..HOSTS).collect();
    let healed = wait_until(Duration::from_secs(60), || {
        all_alive(&c, &all) && {
            let reference = live_rows(&c, 0);
            reference.len() == 4 && (1..HOSTS).all(|i| live_rows(&c, i) == reference)
        }
    });
    assert!(healed, "after the heal, members and tables did not converge");
    assert!(ping_from(&t2, ip(44), 1) && ping_from(&t4, ip(2), 1));
}

#[test]
fn ten_percent_loss_on_every_link_causes_no_false_deaths() {
    let c = formed();
    for i in 0..HOSTS {
        c.nft(
            i,
            "table inet loss {\n chain in { type filter hook input priority 0; \
             iifname \"eth0\" numgen random mod 10 0 drop; }\n}\n",
        );
    }
    let t1 = c.add_endpoint(0, "t1", VNI, SUBNET, ip(1));
    let _t5 = c.add_endpoint(4, "t5", VNI, SUBNET, ip(5));
    // Watch for 30 s: no node may ever be declared down.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        for i in 0..HOSTS {
            assert_eq!(
                c.metric(i, "shoal_gossip_member_downs_total"),
                0.0,
                "a false death seen by h{}",
                i + 1
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        wait_until(Duration::from_secs(10), || ping_from(&t1, ip(5), 1)),
        "endpoints still spread under loss"
    );
}

#[test]
fn a_frame_sealed_with_another_key_is_rejected_and_counted() {
    let c = formed();
    let h1 = c.lab.host(0).clone();
    let h2 = c.lab.host(1).clone();
    let socket = NetNs::open(&h2.netns).unwrap().run(|| UdpSocket::bind((h2.underlay, 0))).unwrap().unwrap();
    let wrong = KeyRing::new(1, [0x42; 32]);
    for counter in 1..=5 {
        let frame = seal::seal(
            &wrong,
            Sender { id: NodeId(99), epoch: 1, counter },
            [counter as u8; 24],
            b"\x00hello",
        );
        socket.send_to(&frame, (h1.underlay, 7946)).unwrap();
    }
    let name = "shoal_gossip_dropped_total{reason=\"unauthenticated\"}";
    assert!(wait_until(Duration::from_secs(5), || c.metric(0, name) >= 5.0), "rejections not counted");
    let all: Vec<usize> = (0..HOSTS).collect();
    assert!(all_alive(&c, &all), "the cluster is unaffected");
    assert!(c.members(0).len() == HOSTS, "no stranger joined");
}

#[test]
fn bad_requests_get_clear_errors() {
    let c = Cluster::start(1);
    let out = c.try_cli(
        0,
        &[
            "debug",
            "endpoint",
            "add",
            "--sandbox",
            "x",
            "--vni",
            "1",
            "--subnet",
            "10.0.1.0/24",
            "--ip",
            "10.0.2.1",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outside subnet"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.try_cli(0, &["debug", "endpoint", "rm", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no endpoint with sandbox nope"));
    let out = std::process::Command::new(netns_tests::shoal_bin())
        .args(["-H", "unix:///nonexistent.sock", "debug", "members"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `shoal daemon` running?"));
}
