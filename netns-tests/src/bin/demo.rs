//! `make demo`: a 3-host lab running `shoal daemon` on each host. The
//! daemons find each other by gossip through host 1; tasks created on any
//! host reach tasks on every other, with no static routes anywhere; then
//! the lab is torn down.

#![allow(clippy::print_stdout)]

use std::net::Ipv4Addr;
use std::time::Duration;

use netns_tests::cluster::Cluster;
use netns_tests::{ping_from, tcp_transfer, wait_until};
use shoal_lab::Lab;

fn show(netns: &str, label: &str, program: &str, args: &[&str]) -> bool {
    println!("\n[{label}] $ {program} {}", args.join(" "));
    let out = Lab::run_in(netns, program, args).unwrap_or_else(|e| panic!("{e}"));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    print!("{}", String::from_utf8_lossy(&out.stderr));
    out.status.success()
}

fn main() {
    let ip = |last| Ipv4Addr::new(10, 0, 1, last);
    println!("== Shoal demo: gossip and the overlay ==");
    println!("Building a 3-host lab; `shoal daemon` on each, h2 and h3 joining through h1...");
    let c = Cluster::start(3);
    for h in c.lab.hosts() {
        println!("  host {} in namespace {}, underlay {}", h.name, h.netns, h.underlay);
    }
    let formed =
        wait_until(Duration::from_secs(30), || c.members(0).iter().filter(|m| m.2 == "alive").count() == 3);
    println!("\n[h1] $ shoal debug members   (the daemons found each other: {formed})");
    for (id, addr, state) in c.members(0) {
        println!("  {id}  {addr:<20} {state}");
    }

    println!("\nCreating two tasks per host through each daemon's API (shoal debug endpoint add)...");
    let mut tasks = Vec::new();
    for (i, host) in [0usize, 0, 1, 1, 2, 2].into_iter().enumerate() {
        let addr = ip(2 + i as u8);
        let sandbox = c.add_endpoint(host, &format!("t{}", i + 1), 4096, "10.0.1.0/24", addr);
        println!("  task t{} on h{} at {addr} (namespace {sandbox})", i + 1, host + 1);
        tasks.push((sandbox, addr));
    }
    let learnt = wait_until(Duration::from_secs(10), || {
        (0..3).all(|h| c.rows(h).iter().filter(|r| !r["value"].is_null()).count() == 6)
    });
    println!("\nEvery daemon learnt all 6 endpoints by gossip: {learnt}");
    println!("[h3] $ shoal debug tables   (owner, key, version)");
    for r in c.rows(2) {
        println!(
            "  owner {} epoch {} seq {} {} -> node {}",
            r["owner"], r["epoch"], r["seq"], r["key"], r["value"]["node"]
        );
    }

    let t1 = &tasks[0].0;
    let mut ok = formed && learnt;
    ok &= show(t1, "t1", "ip", &["route"]);
    ok &= show(t1, "t1 on h1 -> t5 on h3", "ping", &["-c", "3", "-i", "0.2", "10.0.1.6"]);
    ok &= show(&tasks[3].0, "t4 on h2 -> t2 on h1", "ping", &["-c", "3", "-i", "0.2", "10.0.1.3"]);
    ok &= ping_from(t1, ip(3), 1);

    println!("\n[t1 -> t6] TCP transfer of 64 MiB with content check");
    let started = std::time::Instant::now();
    tcp_transfer(t1, &tasks[5].0, tasks[5].1, 64 << 20);
    let secs = started.elapsed().as_secs_f64();
    println!("  64 MiB arrived intact in {secs:.2} s ({:.2} Gbit/s)", 64.0 * 8.0 * 1.048_576 / 1000.0 / secs);

    println!("\n[t1 -> t6] iperf3, 3 seconds");
    let mut server = Lab::command_in(&tasks[5].0, "iperf3");
    server.args(["-s", "-1", "-B", "10.0.1.7"]).stdout(std::process::Stdio::null());
    let pid = c.lab.spawn(&mut server).expect("start iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let out = Lab::run_in(t1, "iperf3", &["-c", "10.0.1.7", "-t", "3"]).expect("run iperf3");
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("sender") || l.contains("receiver"))
    {
        println!("  {line}");
    }
    let _ = c.lab.stop(pid, Duration::from_secs(2));

    println!("\n[h1] $ shoal debug metrics | grep -E 'members|rows|dropped'");
    let out = c.try_cli(0, &["debug", "metrics"]);
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with('#')) {
        if line.contains("members") || line.contains("table_rows") || line.contains("gossip_dropped") {
            println!("  {line}");
        }
    }

    println!("\nTearing the lab down...");
    let name = c.lab.name().to_owned();
    drop(c);
    let left = shoal_runtime::NetNs::list().into_iter().filter(|n| n.starts_with(&name)).count();
    println!("done: {left} namespaces left");
    if !ok || left != 0 {
        std::process::exit(1);
    }
}
