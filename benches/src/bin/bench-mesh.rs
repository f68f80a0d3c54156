//! `make bench-mesh`: the routing mesh on a 3-node lab swarm of real
//! daemons, reached from a fourth lab host (the client), against HAProxy
//! (Debian's) on the same path and against no proxy at all, in interleaved
//! rounds, medians reported:
//!
//! - **mesh**: the client to node1's published port; the mesh relays to the
//!   service's VIP on `ingress`, the data plane picks one of the 5 nginx
//!   tasks (on any node).
//! - **HAProxy**: in node1's namespace, listening on node1's address,
//!   `mode tcp`, round robin over the same 5 tasks' `ingress` addresses,
//!   its server sockets made in a sandbox of its own on `ingress` on node1
//!   (`namespace`), so its packets take the same overlay path as the
//!   mesh's; splice on (`option splice-auto`), as the mesh's relay.
//! - **direct**: the client runs in node2's mesh sandbox and connects to
//!   one task's `ingress` address on another node: the overlay alone, no
//!   proxy.
//!
//! Figures: wrk requests/s and p99 with kept connections, and with a new
//! connection per request; one iperf3 TCP stream for 10 s.
//!
//! The last line is `mesh_rps_ratio_vs_haproxy=<ratio>` (kept connections).

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use benches::median;
use netns_tests::cluster::Cluster;
use netns_tests::wait_until;
use shoal_control::ipam::{INGRESS_SUBNET, INGRESS_VNI};
use shoal_lab::Lab;

const CLIENT: usize = 3;

const NGINX_SERVERS: &str = r#"
    server {
        listen 80 backlog=4096;
        location / { return 200 "ok\n"; }
    }
"#;

/// The benchmark's files (outside `/tmp`, which tasks see privately),
/// removed when the run ends, on a panic too.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Running tasks of `service`: their node's index and their address on
/// `ingress`.
fn ingress_addresses(c: &Cluster, service: &str) -> Vec<(usize, String)> {
    let rows = c.cli(0, &["service", "ps", "--no-trunc", "--format", "json", service]);
    rows.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["CurrentState"].as_str().unwrap_or("").starts_with("Running"))
        .map(|r| {
            let t: serde_json::Value =
                serde_json::from_str(&c.cli(0, &["task", "inspect", r["ID"].as_str().unwrap()])).unwrap();
            let on_ingress = t[0]["NetworksAttachments"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["Network"]["Spec"]["Name"] == "ingress")
                .unwrap_or_else(|| panic!("a task of {service} on ingress: {t}"))
                .clone();
            let node = r["Node"].as_str().unwrap().trim_start_matches("node").parse::<usize>().unwrap() - 1;
            (node, on_ingress["Addresses"][0].as_str().unwrap().split('/').next().unwrap().to_owned())
        })
        .collect()
}

/// A wrk run: (requests/s, p99 latency in ms).
fn wrk(netns: &str, url: &str, seconds: u32, new_connections: bool) -> (f64, f64) {
    let duration = format!("{seconds}s");
    let mut args = vec!["-t", "2", "-c", "32", "-d", &duration, "--timeout", "5s", "--latency"];
    if new_connections {
        args.extend_from_slice(&["-H", "Connection: close"]);
    }
    args.push(url);
    let out = Lab::run_in(netns, "wrk", &args).expect("run wrk (install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk {url}: {text}{}", String::from_utf8_lossy(&out.stderr));
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no Requests/sec from wrk:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| millis(v.trim()))
        .unwrap_or_else(|| panic!("no 99% latency from wrk:\n{text}"));
    let errors = text.lines().any(|l| l.contains("Socket errors") || l.contains("Non-2xx"));
    if errors {
        println!("  (wrk {url} reported errors:\n{text})");
    }
    (rps, p99)
}

/// wrk's `1.23ms`, `456.00us`, `1.01s` in milliseconds.
fn millis(v: &str) -> f64 {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        panic!("a latency without a unit: {v}")
    };
    number.parse::<f64>().unwrap_or_else(|_| panic!("a latency: {v}")) * scale
}

/// One iperf3 TCP stream of `seconds` from `netns` to `host:port`: Gbit/s
/// received.
fn iperf(netns: &str, host: &str, port: u16, seconds: u32) -> f64 {
    let port = port.to_string();
    let seconds = seconds.to_string();
    for _ in 0..5 {
        let out = Lab::run_in(netns, "iperf3", &["-c", host, "-p", &port, "-t", &seconds, "-J"])
            .expect("run iperf3 (install iperf3)");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
            return bps / 1e9;
        }
        // The server is busy with the previous test's end, or not up yet.
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("iperf3 to {host}:{port} gave no result")
}

fn main() {
    let rounds = env_or("ROUNDS", 5);
    let seconds = env_or("SECONDS", 4) as u32;
    let c = Cluster::start_swarm_with_clients(3, 1, &[]);
    let client = c.lab.host(CLIENT).netns.clone();
    let node1 = c.lab.host(0).underlay;
    // Not under /tmp: tasks have a private /tmp.
    let dir = ScratchDir(PathBuf::from(format!("/var/tmp/shoal-bench-mesh-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let dir = &dir.0;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, netns_tests::nginx_conf(NGINX_SERVERS)).unwrap();

    let create = |args: &[&str]| {
        let mut all = vec!["service", "create", "--update-monitor", "0s"];
        all.extend_from_slice(args);
        c.cli(0, &all);
    };
    let nginx =
        format!("mkdir -p /tmp/nginx/tmp && exec nginx -p /tmp/nginx/ -c {} -e stderr", conf.display());
    create(&[
        "--name",
        "web",
        "--replicas",
        "5",
        "--stop-signal",
        "QUIT",
        "-p",
        "8080:80",
        "sh",
        "-c",
        &nginx,
    ]);
    create(&["--name", "iperf", "-p", "5201:5201", "iperf3", "-s"]);
    let web: Vec<String> = ingress_addresses(&c, "web").into_iter().map(|(_, ip)| ip).collect();
    // The direct client runs in node2's mesh sandbox, to a task on another
    // node. Not node1's: its connections would reuse the ports of the
    // mesh's, to the same tasks, with TCP timestamps of another base (a
    // client's timestamps count per destination, the VIP or the task), and
    // a task's TIME_WAIT would refuse the mesh's next SYN on those ports.
    let direct_ns = format!("{}-mesh", c.lab.host(1).netns);
    let direct_web = ingress_addresses(&c, "web")
        .into_iter()
        .find(|(node, _)| *node != 1)
        .map(|(_, ip)| ip)
        .expect("a web task off node2");
    let (iperf_node, iperf_task) = ingress_addresses(&c, "iperf").remove(0);
    let iperf_direct_ns = format!("{}-mesh", c.lab.host(if iperf_node == 1 { 2 } else { 1 }).netns);
    let mesh = c.json(0, &["debug", "mesh"]);
    assert!(mesh["address"].is_string(), "node1 has a mesh sandbox: {mesh}");

    // HAProxy beside the mesh, in node1's namespace, its server sockets in a
    // sandbox of its own on `ingress` (as the mesh's, another address).
    let haproxy_ns =
        c.add_endpoint(0, "haproxy", INGRESS_VNI, INGRESS_SUBNET, Ipv4Addr::new(10, 255, 255, 200));
    let mut haproxy = format!(
        "global\n    maxconn 4096\n    nbthread 2\ndefaults\n    mode tcp\n    option splice-auto\n    \
         timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n    maxconn 4096\n\
         listen web\n    bind {node1}:9080\n    balance roundrobin\n"
    );
    for (i, ip) in web.iter().enumerate() {
        haproxy.push_str(&format!("    server t{i} {ip}:80 namespace {haproxy_ns}\n"));
    }
    haproxy.push_str(&format!(
        "listen iperf\n    bind {node1}:9201\n    server t0 {iperf_task}:5201 namespace {haproxy_ns}\n"
    ));
    let haproxy_cfg = dir.join("haproxy.cfg");
    std::fs::write(&haproxy_cfg, haproxy).unwrap();
    let mut cmd = Lab::command_in(&c.lab.host(0).netns, "haproxy");
    let haproxy_log = dir.join("haproxy.log");
    cmd.args(["-db", "-f", haproxy_cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&haproxy_log).unwrap());
    let haproxy_pid = c.lab.spawn(&mut cmd).expect("run haproxy (install haproxy)");

    let paths: [(&str, &str, String); 3] = [
        ("mesh", client.as_str(), format!("http://{node1}:8080/")),
        ("HAProxy", client.as_str(), format!("http://{node1}:9080/")),
        ("direct", direct_ns.as_str(), format!("http://{direct_web}:80/")),
    ];
    for (name, ns, url) in &paths {
        let up = wait_until(Duration::from_secs(20), || {
            Lab::run_in(ns, "curl", &["-sf", "--max-time", "2", url]).is_ok_and(|o| o.status.success())
        });
        assert!(up, "{name} ({url}) answers\n{}", std::fs::read_to_string(&haproxy_log).unwrap_or_default());
    }
    // New connections leave TIME_WAIT sockets behind: let each client
    // reuse their ports, in its own namespace only.
    for ns in [client.as_str(), direct_ns.as_str(), iperf_direct_ns.as_str()] {
        let reuse = Lab::run_in(ns, "sysctl", &["-qw", "net.ipv4.tcp_tw_reuse=1"]).expect("sysctl");
        assert!(reuse.status.success(), "sysctl: {}", String::from_utf8_lossy(&reuse.stderr));
    }

    type Samples = BTreeMap<(&'static str, &'static str), Vec<f64>>;
    let mut rps: Samples = BTreeMap::new();
    let mut p99: Samples = BTreeMap::new();
    let mut gbps: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for (kind, fresh) in [("kept connections", false), ("a new connection per request", true)] {
            for (name, ns, url) in &paths {
                let (r, p) = wrk(ns, url, seconds, fresh);
                println!("round {round}: {kind}: {name}: {r:.0} req/s, p99 {p:.2} ms");
                rps.entry((kind, name)).or_default().push(r);
                p99.entry((kind, name)).or_default().push(p);
            }
        }
        for (name, ns, host, port) in [
            ("mesh", client.as_str(), node1.to_string(), 5201),
            ("HAProxy", client.as_str(), node1.to_string(), 9201),
            ("direct", iperf_direct_ns.as_str(), iperf_task.clone(), 5201),
        ] {
            let g = iperf(ns, &host, port, 10);
            println!("round {round}: one TCP stream, 10 s: {name}: {g:.2} Gbit/s");
            gbps.entry(name).or_default().push(g);
        }
    }
    let _ = c.lab.stop(haproxy_pid, Duration::from_secs(2));
    let mesh_stats: String = c
        .cli(0, &["debug", "metrics"])
        .lines()
        .filter(|l| l.starts_with("shoal_mesh_") && l.contains("port=\"8080\""))
        .map(|l| format!("  {l}\n"))
        .collect();

    // Ratios are medians of each round's ratio (a round's runs are back to
    // back, so the machine's drift cancels within it).
    let paired = |a: &[f64], b: &[f64]| median(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>());
    println!();
    println!("| figure | mesh | HAProxy | direct (no proxy) | mesh / HAProxy | mesh / direct |");
    println!("|---|---|---|---|---|---|");
    let mut headline = 0.0;
    for kind in ["kept connections", "a new connection per request"] {
        let [m, h, d] = ["mesh", "HAProxy", "direct"].map(|n| rps[&(kind, n)].clone());
        let ratio = paired(&m, &h);
        if kind == "kept connections" {
            headline = ratio;
        }
        println!(
            "| wrk req/s, {kind} (32 connections) | {:.0} | {:.0} | {:.0} | {ratio:.2} | {:.2} |",
            median(&m),
            median(&h),
            median(&d),
            paired(&m, &d)
        );
        let [m, h, d] = ["mesh", "HAProxy", "direct"].map(|n| p99[&(kind, n)].clone());
        println!(
            "| wrk p99 ms, {kind} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            median(&m),
            median(&h),
            median(&d),
            paired(&m, &h),
            paired(&m, &d)
        );
    }
    let [m, h, d] = ["mesh", "HAProxy", "direct"].map(|n| gbps[n].clone());
    println!(
        "| one TCP stream, 10 s (Gbit/s) | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        median(&m),
        median(&h),
        median(&d),
        paired(&m, &h),
        paired(&m, &d)
    );
    println!(
        "(medians of {rounds} interleaved rounds of {seconds} s wrk runs; ratios: medians of the rounds' ratios)"
    );
    println!("node1's mesh counters for 8080:\n{mesh_stats}");
    println!("mesh_rps_ratio_vs_haproxy={headline:.2}");
}
