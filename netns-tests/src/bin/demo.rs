//! `make demo`: a 2-host lab, two tasks per host on one overlay network,
//! traffic between them across hosts and within a host, then teardown.

#![allow(clippy::print_stdout)]

use std::net::Ipv4Addr;
use std::time::Duration;

use netns_tests::{Overlay, TaskSpec, tcp_transfer};
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
    let tasks = [
        TaskSpec::new("t1", 0, 4096, ip(2)),
        TaskSpec::new("t2", 0, 4096, ip(3)),
        TaskSpec::new("t3", 1, 4096, ip(4)),
        TaskSpec::new("t4", 1, 4096, ip(5)),
    ];
    println!("== Shoal overlay demo ==");
    println!("Building a 2-host lab and starting `shoal dataplane run` on each host...");
    let overlay = Overlay::start(2, &[(4096, "10.0.1.0/24")], &tasks, &[]);
    for h in overlay.lab.hosts() {
        println!("  host {} in namespace {}, underlay {}", h.name, h.netns, h.underlay);
    }
    for t in &tasks {
        println!(
            "  task {} on {} at {} (namespace {})",
            t.name,
            overlay.lab.host(t.host).name,
            t.attachments[0].1,
            overlay.sandbox(t.name)
        );
    }
    let t1 = overlay.sandbox("t1");
    let mut ok = show(&t1, "t1", "ip", &["-br", "addr", "show", "eth0"]);
    ok &= show(&t1, "t1", "ip", &["route"]);
    ok &= show(&t1, "t1 -> t3, across hosts", "ping", &["-c", "3", "-i", "0.2", "10.0.1.4"]);
    ok &=
        show(&overlay.sandbox("t4"), "t4 -> t2, across hosts", "ping", &["-c", "3", "-i", "0.2", "10.0.1.3"]);
    ok &= show(&t1, "t1 -> t2, same host", "ping", &["-c", "3", "-i", "0.2", "10.0.1.3"]);

    println!("\n[t1 -> t3] TCP transfer of 64 MiB with content check");
    let started = std::time::Instant::now();
    tcp_transfer(&t1, &overlay.sandbox("t3"), ip(4), 64 << 20);
    let secs = started.elapsed().as_secs_f64();
    println!("  64 MiB arrived intact in {secs:.2} s ({:.2} Gbit/s)", 64.0 * 8.0 * 1.048_576 / 1000.0 / secs);

    println!("\n[t1 -> t3] iperf3, 3 seconds");
    let mut server = Lab::command_in(&overlay.sandbox("t3"), "iperf3");
    server.args(["-s", "-1", "-B", "10.0.1.4"]).stdout(std::process::Stdio::null());
    let pid = overlay.lab.spawn(&mut server).expect("start iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let out = Lab::run_in(&t1, "iperf3", &["-c", "10.0.1.4", "-t", "3"]).expect("run iperf3");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| l.contains("sender") || l.contains("receiver")) {
        println!("  {line}");
    }
    let _ = overlay.lab.stop(pid, Duration::from_secs(2));

    let counters = overlay.counters(0);
    println!(
        "\nh1 counters: encapsulated {} decapsulated {} delivered locally {}",
        counters.encapsulated, counters.decapsulated, counters.delivered_locally
    );
    let drops: Vec<String> =
        counters.drops.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
    println!("h1 drops: {}", if drops.is_empty() { "none".to_owned() } else { drops.join(" ") });

    println!("\nTearing the lab down...");
    let name = overlay.lab.name().to_owned();
    drop(overlay);
    let left = shoal_runtime::NetNs::list().into_iter().filter(|n| n.starts_with(&name)).count();
    println!("done: {left} namespaces left");
    if !ok || left != 0 {
        std::process::exit(1);
    }
}
