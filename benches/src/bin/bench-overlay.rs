//! `make bench-overlay`: one 2-host lab, three paths between the hosts,
//! measured in interleaved rounds so that machine noise hits all alike:
//!
//! - bare veth: host to host over the underlay;
//! - kernel VXLAN: a Linux `vxlan` device on each host (VNI 100, port 4790),
//!   default offloads;
//! - Shoal: task to task through `shoal dataplane run` on each host;
//! - with `BASELINE_SHOAL=<path to another shoal binary>`, the same in a
//!   second lab with that build, for a before/after in one run.
//!
//! iperf3 TCP throughput with one stream (5 rounds of 10 s) and with 4
//! parallel streams (3 rounds), with the CPU each path costs: the whole
//! machine's busy time per GB moved (senders, receivers, softirqs, and
//! Shoal's daemons) and Shoal's daemons' own; sockperf UDP ping-pong
//! round-trip time; and iperf3 UDP datagrams per second with 1400-byte
//! payloads, two ways: what arrives of an unlimited offer, and the highest
//! rate carried with under 1 % loss. Prints medians and ratios; the last line is
//! `overlay_tcp_ratio_vs_kernel_vxlan=<ratio>`.
//!
//! `PARTS` picks measures for a quicker run while working (a comma list of
//! `tcp`, `tcp4`, `rtt`, `udp`, `udp-rate`; all by default); the summary then shows
//! only what was measured, and no ratio line if `tcp` was left out.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use benches::{
    iperf_tcp_streams, iperf_udp_lossless_pps, iperf_udp_pps, machine_busy_seconds, median,
    process_cpu_seconds, sockperf_rtt,
};
use netns_tests::{Overlay, TaskSpec};
use shoal_lab::{Lab, ip};

struct Path {
    name: &'static str,
    client: String,
    server: String,
    server_ip: String,
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let rounds = env_or("ROUNDS", 5);
    let seconds = env_or("SECONDS", 10);
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "tcp,tcp4,rtt,udp,udp-rate".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    let tasks = [
        TaskSpec::new("t1", 0, 4096, Ipv4Addr::new(10, 0, 1, 2)),
        TaskSpec::new("t2", 1, 4096, Ipv4Addr::new(10, 0, 1, 3)),
    ];
    let overlay = Overlay::start(2, &[(4096, "10.0.1.0/24")], &tasks, &[]);
    let lab = &overlay.lab;
    let (h1, h2) = (lab.host(0).clone(), lab.host(1).clone());
    kernel_vxlan(&h1.netns, h1.underlay, h2.underlay, "10.9.0.1/24");
    kernel_vxlan(&h2.netns, h2.underlay, h1.underlay, "10.9.0.2/24");

    let baseline = std::env::var_os("BASELINE_SHOAL").map(|bin| {
        let tasks = [
            TaskSpec::new("b1", 0, 4096, Ipv4Addr::new(10, 0, 1, 2)),
            TaskSpec::new("b2", 1, 4096, Ipv4Addr::new(10, 0, 1, 3)),
        ];
        Overlay::start_with(std::path::Path::new(&bin), 2, &[(4096, "10.0.1.0/24")], &tasks, &[])
    });
    let mut paths = vec![
        Path {
            name: "bare veth",
            client: h1.netns.clone(),
            server: h2.netns.clone(),
            server_ip: h2.underlay.to_string(),
        },
        Path {
            name: "kernel vxlan",
            client: h1.netns.clone(),
            server: h2.netns.clone(),
            server_ip: "10.9.0.2".into(),
        },
        Path {
            name: "shoal",
            client: overlay.sandbox("t1"),
            server: overlay.sandbox("t2"),
            server_ip: "10.0.1.3".into(),
        },
    ];
    if let Some(b) = &baseline {
        paths.push(Path {
            name: "shoal baseline",
            client: b.sandbox("b1"),
            server: b.sandbox("b2"),
            server_ip: "10.0.1.3".into(),
        });
    }
    print_machine(lab, &h1.netns, &overlay.sandbox("t1"));

    let daemons = |name: &str| match (name, &baseline) {
        ("shoal", _) => vec![overlay.pid(0), overlay.pid(1)],
        ("shoal baseline", Some(b)) => vec![b.pid(0), b.pid(1)],
        _ => Vec::new(),
    };
    let daemon_cpu = |name: &str| daemons(name).iter().map(|&pid| process_cpu_seconds(pid)).sum::<f64>();
    let mut tcp: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut tcp4: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    // CPU seconds per GB moved: the machine's, Shoal's daemons'.
    let mut cpu: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut rtt: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut pps: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut lossless: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in (1..=rounds).filter(|_| part("tcp")) {
        for (i, p) in paths.iter().enumerate() {
            let (machine, shoal) = (machine_busy_seconds(), daemon_cpu(p.name));
            let gbps =
                iperf_tcp_streams(lab, &p.client, &p.server, &p.server_ip, 5201 + i as u16, seconds, 1);
            let gb = gbps * f64::from(seconds) / 8.0;
            let per_gb = ((machine_busy_seconds() - machine) / gb, (daemon_cpu(p.name) - shoal) / gb);
            println!(
                "round {round} tcp {:<13} {gbps:6.2} Gbit/s  cpu {:.2} s/GB (shoal's daemons {:.2})",
                p.name, per_gb.0, per_gb.1
            );
            tcp.entry(p.name).or_default().push(gbps);
            cpu.entry(p.name).or_default().push(per_gb);
        }
    }
    for round in (1..=rounds.min(3)).filter(|_| part("tcp4")) {
        for (i, p) in paths.iter().enumerate() {
            let gbps =
                iperf_tcp_streams(lab, &p.client, &p.server, &p.server_ip, 5201 + i as u16, seconds, 4);
            println!("round {round} tcp x4 {:<13} {gbps:6.2} Gbit/s", p.name);
            tcp4.entry(p.name).or_default().push(gbps);
        }
    }
    for round in 1..=3 {
        for (i, p) in paths.iter().enumerate() {
            if part("rtt") {
                let r = sockperf_rtt(lab, &p.client, &p.server, &p.server_ip, 11111 + i as u16, 3);
                println!("round {round} rtt {:<13} p50 {:6.1} us  p99 {:6.1} us", p.name, r.0, r.1);
                rtt.entry(p.name).or_default().push(r);
            }
            if part("udp") {
                let (rate, sent) =
                    iperf_udp_pps(lab, &p.client, &p.server, &p.server_ip, 5301 + i as u16, 1400);
                println!(
                    "round {round} udp {:<13} {rate:8.0} datagrams/s received of {sent:8.0} sent",
                    p.name
                );
                pps.entry(p.name).or_default().push(rate);
            }
            if part("udp-rate") {
                let rate =
                    iperf_udp_lossless_pps(lab, &p.client, &p.server, &p.server_ip, 5401 + i as u16, 1400);
                println!("round {round} udp under 1% loss {:<13} {rate:8.0} datagrams/s", p.name);
                lossless.entry(p.name).or_default().push(rate);
            }
        }
    }

    let udp = Udp { flood: pps, lossless };
    summary(&paths, &tcp, &tcp4, &cpu, &rtt, &udp, baseline.is_some());
}

/// The median of each measure taken, or "-" where none was.
fn cell(values: Option<&Vec<f64>>, scale: f64, digits: usize) -> String {
    match values {
        Some(v) if !v.is_empty() => format!("{:.digits$}", median(v) / scale),
        _ => "-".into(),
    }
}

type Series<'a, T> = BTreeMap<&'a str, Vec<T>>;

/// Datagrams per second: what arrived of an unlimited offer, and the most
/// carried with under 1 % loss.
struct Udp<'a> {
    flood: Series<'a, f64>,
    lossless: Series<'a, f64>,
}

fn summary(
    paths: &[Path],
    tcp: &Series<'_, f64>,
    tcp4: &Series<'_, f64>,
    cpu: &Series<'_, (f64, f64)>,
    rtt: &Series<'_, (f64, f64)>,
    udp: &Udp<'_>,
    baseline: bool,
) {
    let firsts =
        |s: &Series<'_, (f64, f64)>, name: &str| s.get(name).map(|v| v.iter().map(|x| x.0).collect());
    let seconds =
        |s: &Series<'_, (f64, f64)>, name: &str| s.get(name).map(|v| v.iter().map(|x| x.1).collect());
    println!();
    println!(
        "| path | TCP Gbit/s, 1 stream | TCP Gbit/s, 4 streams | machine CPU s/GB | Shoal daemons CPU s/GB | RTT p50 us | RTT p99 us | UDP 1400 B kpps, unlimited offer | UDP 1400 B kpps, < 1 % loss |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for p in paths {
        let n = p.name;
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(tcp.get(n), 1.0, 2),
            cell(tcp4.get(n), 1.0, 2),
            cell(firsts(cpu, n).as_ref(), 1.0, 2),
            cell(seconds(cpu, n).as_ref(), 1.0, 2),
            cell(firsts(rtt, n).as_ref(), 1.0, 1),
            cell(seconds(rtt, n).as_ref(), 1.0, 1),
            cell(udp.flood.get(n), 1e3, 0),
            cell(udp.lossless.get(n), 1e3, 0),
        );
    }
    println!();
    let ratio = |s: &Series<'_, f64>, a: &str, b: &str| match (s.get(a), s.get(b)) {
        (Some(a), Some(b)) => Some(median(a) / median(b)),
        _ => None,
    };
    let mut lines = vec![
        ("tcp ratio shoal/bare veth", ratio(tcp, "shoal", "bare veth")),
        ("tcp ratio kernel vxlan/bare veth", ratio(tcp, "kernel vxlan", "bare veth")),
        ("udp pps ratio shoal/kernel vxlan", ratio(&udp.flood, "shoal", "kernel vxlan")),
        ("udp pps under 1% loss ratio shoal/kernel vxlan", ratio(&udp.lossless, "shoal", "kernel vxlan")),
        ("tcp x4 ratio shoal/kernel vxlan", ratio(tcp4, "shoal", "kernel vxlan")),
    ];
    if baseline {
        lines.extend([
            ("tcp ratio shoal/shoal baseline", ratio(tcp, "shoal", "shoal baseline")),
            ("tcp x4 ratio shoal/shoal baseline", ratio(tcp4, "shoal", "shoal baseline")),
            ("tcp ratio shoal baseline/kernel vxlan", ratio(tcp, "shoal baseline", "kernel vxlan")),
            ("udp pps ratio shoal/shoal baseline", ratio(&udp.flood, "shoal", "shoal baseline")),
            (
                "udp pps under 1% loss ratio shoal/shoal baseline",
                ratio(&udp.lossless, "shoal", "shoal baseline"),
            ),
        ]);
    }
    for (name, value) in lines {
        if let Some(value) = value {
            println!("{name} = {value:.3}");
        }
    }
    let rtt50 = |name: &str| firsts(rtt, name).map(|v: Vec<f64>| median(&v));
    if let (Some(shoal), Some(kernel)) = (rtt50("shoal"), rtt50("kernel vxlan")) {
        println!("rtt p50 shoal - kernel vxlan = {:+.1} us", shoal - kernel);
    }
    if let (true, Some(shoal), Some(old)) = (baseline, rtt50("shoal"), rtt50("shoal baseline")) {
        println!("rtt p50 shoal - shoal baseline = {:+.1} us", shoal - old);
    }
    if let Some(r) = ratio(tcp, "shoal", "kernel vxlan") {
        println!("overlay_tcp_ratio_vs_kernel_vxlan={r:.3}");
    }
}

/// A kernel vxlan device `vxk` in `netns`, pointing at `remote`, holding `cidr`.
fn kernel_vxlan(netns: &str, local: Ipv4Addr, remote: Ipv4Addr, cidr: &str) {
    let (local, remote) = (local.to_string(), remote.to_string());
    ip(
        netns,
        &[
            "link", "add", "vxk", "type", "vxlan", "id", "100", "local", &local, "remote", &remote,
            "dstport", "4790",
        ],
    )
    .unwrap();
    ip(netns, &["link", "set", "vxk", "mtu", "1450", "up"]).unwrap();
    ip(netns, &["addr", "add", cidr, "dev", "vxk"]).unwrap();
}

fn print_machine(lab: &Lab, host: &str, task: &str) {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo").lines().find(|l| l.starts_with("model name")).unwrap_or("").to_owned();
    let kernel = read("/proc/sys/kernel/osrelease");
    println!(
        "machine: {} | {} cpus | kernel {}",
        cpu.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    );
    for (what, netns, dev) in
        [("underlay veth", host, "eth0"), ("kernel vxlan", host, "vxk"), ("shoal task TUN", task, "eth0")]
    {
        let out = Lab::run_in(netns, "ethtool", &["-k", dev]).ok();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let wanted = [
            "tcp-segmentation-offload",
            "generic-segmentation-offload",
            "generic-receive-offload",
            "tx-checksumming",
            "tx-udp-segmentation",
            "rx-gro-list",
            "rx-udp-gro-forwarding",
        ];
        let flags: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.trim().split_once(": ")?;
                wanted.contains(&k).then(|| format!("{k}={}", v.split_whitespace().next().unwrap_or("")))
            })
            .collect();
        println!("offloads {what}: {}", flags.join(" "));
    }
    let _ = lab;
}
