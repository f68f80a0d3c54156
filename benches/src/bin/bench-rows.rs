//! `make bench-rows`: the node agent's memory, idle and holding 100,000
//! endpoint rows. A 2-host lab runs a daemon on host 1; on host 2, this
//! program joins its gossip as a member of its own (port 7947, the lab's
//! key) and writes ROWS endpoint rows, which the daemon replicates as it
//! would any node's. The daemon's resident memory is read from
//! `/proc/PID/status` idle, once it holds every row, and once the member
//! deleted them again. Targets (ANCHORS): under 20 MB idle, under 100 MB
//! with 100k rows.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use netns_tests::cluster::Cluster;
use shoal_agent::routes::{ENDPOINTS, EndpointRecord};
use shoal_gossip::{GossipConfig, Member, NodeId, RowKey};
use shoal_runtime::NetNs;

const VNI: u32 = 4096;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Waits until `done` or `limit`; returns the time taken, if done.
fn wait(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

fn main() {
    let rows = env_or("ROWS", 100_000);
    let c = Cluster::start(2);
    let key = c.key_file().expect("a gossip cluster has a key");
    let ring = shoal_agent::keys::read_file(key).expect("the lab's key");
    std::thread::sleep(Duration::from_secs(5));
    let idle_kib = c.daemon_kib(0, "VmRSS");
    let seed = SocketAddrV4::new(c.lab.host(0).underlay, 7946);
    let me = SocketAddrV4::new(c.lab.host(1).underlay, 7947);
    let live = |c: &Cluster| c.metric(0, "shoal_table_rows{kind=\"live\"}") as usize;
    let base = live(&c);

    // The member runs on a thread inside host 2's namespace, with a
    // runtime of its own, until told to delete its rows and stop.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let ns = NetNs::open(&c.lab.host(1).netns).expect("host 2");
    let member = std::thread::spawn(move || {
        ns.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let id = Member { id: NodeId(0x5eed_0000_0000_0001), addr: me, epoch: 1, incarnation: 0 };
                let (gossip, mut driver) =
                    shoal_agent::gossip_driver::start(id, me, GossipConfig::default(), ring, &[seed])
                        .await
                        .expect("start the member's gossip");
                tokio::spawn(async move { while driver.events.recv().await.is_some() {} });
                let subnet = "10.128.0.0/9".parse().expect("subnet");
                let ips: Vec<Ipv4Addr> = (0..rows as u32)
                    .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 2)) + i))
                    .collect();
                for ip in &ips {
                    let record = EndpointRecord { ip: *ip, subnet, node: *me.ip() };
                    let value = serde_json::to_vec(&record).expect("serialisable");
                    gossip.write(VNI, RowKey::new(ENDPOINTS, ip.to_string()), Some(value)).await;
                }
                let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
                for ip in &ips {
                    gossip.write(VNI, RowKey::new(ENDPOINTS, ip.to_string()), None).await;
                }
                let _ = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(60))).await;
                gossip.stop().await;
            });
        })
        .expect("enter host 2")
    });

    let took = wait(Duration::from_secs(300), || live(&c) >= base + rows);
    let held = live(&c);
    std::thread::sleep(Duration::from_secs(5));
    let full_kib = c.daemon_kib(0, "VmRSS");
    let anon_kib = c.daemon_kib(0, "RssAnon");
    let _ = tx.send(());
    let gone = wait(Duration::from_secs(120), || live(&c) <= base);
    std::thread::sleep(Duration::from_secs(12));
    let after_kib = c.daemon_kib(0, "VmRSS");
    drop(member);

    let mb = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!("| daemon memory | RSS (MB) | target |");
    println!("|---|---|---|");
    println!("| idle, 1 peer | {:.1} | < 20 |", mb(idle_kib));
    println!(
        "| holding {held} endpoint rows (replicated in {:.1} s) | {:.1} (anonymous {:.1}) | < 100 |",
        took.map_or(f64::NAN, |d| d.as_secs_f64()),
        mb(full_kib),
        mb(anon_kib)
    );
    println!(
        "| rows deleted again (tombstones kept; {} s) | {:.1} | |",
        gone.map_or(f64::NAN, |d| d.as_secs_f64()),
        mb(after_kib)
    );
    println!();
    println!(
        "bytes per row = {:.0}",
        (full_kib.saturating_sub(idle_kib) * 1024) as f64 / held.saturating_sub(base).max(1) as f64
    );
    println!("ratio idle RSS / 20 MB target = {:.3}", mb(idle_kib) / 20.0);
    println!("ratio 100k-row RSS / 100 MB target = {:.3}", mb(full_kib) / 100.0);
    assert!(took.is_some(), "the daemon did not take in {rows} rows within 300 s (held {held})");
}
