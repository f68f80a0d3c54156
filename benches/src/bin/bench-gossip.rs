//! `make bench-gossip`: how fast gossip spreads and detects, on real daemons
//! in a lab (10 nodes) and in the deterministic simulation (200 and 1000
//! nodes, and loss). Each figure is printed beside its target, taken from
//! Serf's model (99.9 % of 1000 nodes in about 2 s) and memberlist's
//! suspicion. The last line is `gossip_p99_learn_ms_n10=<ms>`.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::median;
use netns_tests::cluster::Cluster;
use shoal_gossip::sim::{Links, Sim};
use shoal_gossip::{GossipConfig, RowKey};

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[rank.min(v.len() - 1)]
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let trials = env_or("TRIALS", 10);
    let (p50_real, p99_real, kill_real, idle) = real(10, trials);
    let sims: Vec<(usize, f64, f64)> = [200, 1000].iter().map(|&n| simulated_learn(n, trials)).collect();
    let false_deaths: Vec<(f64, f64)> =
        [0.10, 0.30].iter().map(|&loss| (loss, simulated_false_deaths(50, loss))).collect();

    println!();
    println!("| scenario | p50 | p99 | target |");
    println!("|---|---|---|---|");
    println!("| learn a new endpoint, 10 daemons (ms) | {p50_real:.0} | {p99_real:.0} | p99 < 1000 |");
    for (n, p50, p99) in &sims {
        println!("| learn a new row, {n} simulated nodes (ms) | {p50:.0} | {p99:.0} | p99 < 2500 |");
    }
    println!(
        "| all mark a killed daemon dead, 10 daemons (s) | {:.1} | max {:.1} | < 6 |",
        median(&kill_real),
        kill_real.iter().cloned().fold(0.0, f64::max)
    );
    for (loss, rate) in &false_deaths {
        println!(
            "| false deaths per node-hour at {:.0} % loss, 50 simulated nodes | {rate:.2} | | 0 at 10 % |",
            loss * 100.0
        );
    }
    println!("| idle gossip, bytes/s per node, 10 daemons | {idle:.0} | | |");
    println!();
    println!("ratio p99 learn n10 / 1000 ms target = {:.3}", p99_real / 1000.0);
    println!("ratio p99 learn n1000 / 2500 ms target = {:.3}", sims[1].2 / 2500.0);
    println!("gossip_p99_learn_ms_n10={p99_real:.0}");
}

/// Whether every daemon of `c` sees all `hosts` members alive.
fn converged(c: &Cluster, hosts: usize) -> bool {
    (0..hosts).all(|i| c.members(i).iter().filter(|m| m.2 == "alive").count() == hosts)
}

/// Learn latency, kill detection and idle traffic on real daemons.
fn real(hosts: usize, trials: usize) -> (f64, f64, Vec<f64>, f64) {
    let c = Cluster::start(hosts);
    let all: Vec<usize> = (0..hosts).collect();
    let formed = netns_tests::wait_until(Duration::from_secs(60), || converged(&c, hosts));
    assert!(formed, "the cluster did not form");

    // Idle traffic: 20 s with nothing changing.
    let sent = |c: &Cluster| all.iter().map(|&i| c.metric(i, "shoal_gossip_bytes_sent_total")).sum::<f64>();
    let before = sent(&c);
    std::thread::sleep(Duration::from_secs(20));
    let idle = (sent(&c) - before) / 20.0 / hosts as f64;
    println!("idle: {idle:.0} bytes/s per node");

    // Learn latency: an endpoint created on one host, seen in every other's tables.
    let c = Arc::new(c);
    let mut learn = Vec::new();
    for t in 0..trials {
        let owner = t % hosts;
        let ip = Ipv4Addr::new(10, 0, 1, 10 + t as u8);
        let started = Instant::now();
        c.add_endpoint(owner, &format!("b{t}"), 4096, "10.0.1.0/24", ip);
        let key = ip.to_string();
        let watchers: Vec<_> = (0..hosts)
            .filter(|i| *i != owner)
            .map(|i| {
                let c = c.clone();
                let key = key.clone();
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while Instant::now() < deadline {
                        if c.rows(i).iter().any(|r| r["key"] == key.as_str() && !r["value"].is_null()) {
                            return Instant::now();
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    panic!("host {i} never learnt {key}");
                })
            })
            .collect();
        let last = watchers.into_iter().map(|w| w.join().expect("watcher")).max().expect("watchers");
        let ms = (last - started).as_secs_f64() * 1000.0;
        println!("trial {t}: all {hosts} daemons learnt {key} in {ms:.0} ms");
        learn.push(ms);
    }
    let mut c = Arc::try_unwrap(c).expect("watchers done");

    // Kill detection.
    let mut kills = Vec::new();
    for round in 0..3 {
        let victim = 1 + round;
        c.kill_daemon(victim);
        let started = Instant::now();
        let others: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();
        let done = netns_tests::wait_until(Duration::from_secs(30), || {
            others.iter().all(|&i| c.state_of(i, victim).as_deref() == Some("down"))
        });
        assert!(done, "the killed daemon was not marked dead");
        let s = started.elapsed().as_secs_f64();
        println!("kill {round}: all {} others marked h{} dead in {s:.1} s", others.len(), victim + 1);
        kills.push(s);
        c.start_daemon(victim);
        // The next round measures from a whole cluster again.
        let rejoined = netns_tests::wait_until(Duration::from_secs(30), || converged(&c, hosts));
        assert!(rejoined, "the restarted h{} did not rejoin", victim + 1);
    }
    (median(&learn), percentile(&learn, 99.0), kills, idle)
}

/// Learn latency in a simulated cluster of `n` (virtual time).
fn simulated_learn(n: usize, trials: usize) -> (usize, f64, f64) {
    let started = Instant::now();
    let mut sim = Sim::new(n, 7, GossipConfig::default());
    sim.start_all();
    let formed = sim.run_until(Duration::from_secs(600), Sim::membership_converged);
    let formed = formed.expect("the simulated cluster forms");
    let mut learn = Vec::new();
    for t in 0..trials {
        let owner = (t * 37) % n;
        let key = RowKey::new("endpoints", format!("r{t}"));
        sim.write(owner, 4096, key.clone(), Some(vec![1]));
        let took = sim.run_until(Duration::from_secs(30), |s| s.holders(owner, 4096, &key) == n);
        learn.push(took.expect("the row spreads").as_secs_f64() * 1000.0);
        sim.run_for(Duration::from_secs(1));
    }
    println!(
        "simulated {n}: formed in {:.1} s virtual; learn p50 {:.0} ms p99 {:.0} ms ({:.1} s of CPU)",
        formed.as_secs_f64(),
        median(&learn),
        percentile(&learn, 99.0),
        started.elapsed().as_secs_f64()
    );
    (n, median(&learn), percentile(&learn, 99.0))
}

/// False deaths per node-hour among `n` simulated nodes at `loss`: a false
/// death is a live node declared down, counted once however many members
/// declare it (declarations of one node within 30 s are one death).
fn simulated_false_deaths(n: usize, loss: f64) -> f64 {
    let mut sim = Sim::new(n, 9, GossipConfig::default());
    sim.start_all();
    sim.run_until(Duration::from_secs(120), Sim::membership_converged).expect("forms");
    sim.links = Links { loss, ..Links::default() };
    sim.downs.clear();
    let span = Duration::from_secs(1800);
    sim.run_for(span);
    let mut downs: Vec<_> = sim.downs.iter().map(|(_, victim, at)| (*victim, *at)).collect();
    downs.sort();
    let mut deaths = 0;
    let mut last = None;
    for (victim, at) in downs {
        if last.is_none_or(|(v, t)| v != victim || at > t + Duration::from_secs(30)) {
            deaths += 1;
        }
        last = Some((victim, at));
    }
    let node_hours = n as f64 * span.as_secs_f64() / 3600.0;
    println!(
        "simulated loss {:.0} %: {deaths} false deaths ({} declarations) in {node_hours} node-hours",
        loss * 100.0,
        sim.downs.len()
    );
    deaths as f64 / node_hours
}
