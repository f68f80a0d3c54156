//! `make bench-discovery`: service discovery on a 3-node lab swarm of real
//! daemons, each figure against a baseline measured in the same run, in
//! interleaved rounds, medians reported:
//!
//! 1. DNS: dnsperf against a task's resolver (127.0.0.11) vs dnsmasq
//!    serving the same names from a hosts file in the same namespace:
//!    queries per second and average latency.
//! 2. VIP: redis-benchmark through a service VIP vs straight to the task's
//!    address (one task, so both reach the same redis-server): requests per
//!    second on kept connections, and with a new connection per request.
//! 3. Convergence: from a task turning healthy to connections through the
//!    VIP reaching it from every node: p50 and p99 over new tasks.
//!
//! The last line is `dns_qps_ratio_vs_dnsmasq=<ratio>`.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use benches::median;
use netns_tests::cluster::Cluster;
use netns_tests::wait_until;
use shoal_lab::Lab;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Running tasks of `service`: (id, node index, address).
fn running(c: &Cluster, service: &str) -> Vec<(String, usize, String)> {
    let rows = c.cli(0, &["service", "ps", "--no-trunc", "--format", "json", service]);
    rows.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| {
            r["DesiredState"] == "Running" && r["CurrentState"].as_str().unwrap_or("").starts_with("Running")
        })
        .map(|r| {
            let id = r["ID"].as_str().unwrap().to_owned();
            let node = r["Node"].as_str().unwrap().trim_start_matches("node").parse::<usize>().unwrap() - 1;
            let t: serde_json::Value = serde_json::from_str(&c.cli(0, &["task", "inspect", &id])).unwrap();
            let addr = t[0]["NetworksAttachments"][0]["Addresses"][0].as_str().unwrap();
            (id, node, addr.split('/').next().unwrap().to_owned())
        })
        .collect()
}

/// The network namespace of a task on host `node`.
fn sandbox(c: &Cluster, node: usize, task: &str) -> String {
    format!("{}-t{}", c.lab.host(node).netns, &task[..10])
}

fn vip(c: &Cluster, service: &str) -> String {
    let s: serde_json::Value = serde_json::from_str(&c.cli(0, &["service", "inspect", service])).unwrap();
    s[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap().split('/').next().unwrap().to_owned()
}

/// The number after `label` in `text` (`Queries per second:   1234.5`).
fn figure(text: &str, label: &str) -> f64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in:\n{text}"))
}

/// One dnsperf run of `seconds` against `server` from `netns`: (queries/s,
/// average latency in microseconds).
fn dnsperf(netns: &str, server: &str, queries: &Path, seconds: u32) -> (f64, f64) {
    let out = Lab::run_in(
        netns,
        "dnsperf",
        &["-s", server, "-d", queries.to_str().unwrap(), "-l", &seconds.to_string(), "-c", "4", "-q", "200"],
    )
    .expect("run dnsperf (install dnsperf)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dnsperf: {text}{}", String::from_utf8_lossy(&out.stderr));
    let lost = figure(&text, "Queries lost:");
    assert!(lost <= figure(&text, "Queries sent:") * 0.01, "dnsperf lost queries:\n{text}");
    (figure(&text, "Queries per second:"), figure(&text, "Average Latency (s):") * 1e6)
}

/// redis-benchmark PING from `netns` to `host`: requests per second, with
/// kept connections or a new connection per request.
fn redis_rps(netns: &str, host: &str, new_connections: bool) -> f64 {
    let keep = if new_connections { "0" } else { "1" };
    let n = if new_connections { "10000" } else { "200000" };
    let out = Lab::run_in(
        netns,
        "redis-benchmark",
        &["-h", host, "-t", "ping_inline", "-n", n, "-c", "20", "-k", keep, "-q"],
    )
    .expect("run redis-benchmark (install redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    // `PING_INLINE: 81234.12 requests per second, p50=0.1 msec`
    text.split(['\r', '\n'])
        .filter_map(|l| l.split_once(": ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no result from redis-benchmark:\n{text}"))
}

fn main() {
    let rounds = env_or("ROUNDS", 5);
    let c = Cluster::start_swarm(3);
    c.cli(0, &["network", "create", "-d", "overlay", "front"]);
    let create = |args: &[&str]| {
        let mut all = vec!["service", "create", "--update-monitor", "0s", "--network", "front"];
        all.extend_from_slice(args);
        c.cli(0, &all);
    };
    // Not under /tmp: tasks have a private /tmp, and the probers write here.
    let dir = std::path::PathBuf::from(format!("/var/tmp/shoal-bench-discovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // === DNS: the task's resolver vs dnsmasq, same names, same namespace ===
    create(&["--name", "web", "--replicas", "3", "sleep", "600"]);
    create(&["--name", "client", "sleep", "600"]);
    let (client, node, _) = running(&c, "client").remove(0);
    let ns = sandbox(&c, node, &client);
    let web_vip = vip(&c, "web");
    let tasks = running(&c, "web");
    let mut hosts = format!("{web_vip} web\n");
    for (_, _, ip) in &tasks {
        hosts.push_str(&format!("{ip} tasks.web\n"));
    }
    let hosts_file = dir.join("hosts");
    std::fs::write(&hosts_file, hosts).unwrap();
    let queries = dir.join("queries");
    std::fs::write(&queries, "web A\ntasks.web A\nweb AAAA\n").unwrap();
    let mut dnsmasq = Lab::command_in(&ns, "dnsmasq");
    dnsmasq
        .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces", "--port=53"])
        .args(["--listen-address=127.0.0.12", "--pid-file=", "--cache-size=1000", "--local-ttl=5"])
        .arg(format!("--addn-hosts={}", hosts_file.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let dnsmasq = c.lab.spawn(&mut dnsmasq).expect("run dnsmasq (install dnsmasq-base)");
    assert!(wait_until(Duration::from_secs(10), || {
        Lab::run_in(&ns, "dig", &["+short", "@127.0.0.12", "web"]).is_ok_and(|o| !o.stdout.is_empty())
    }));
    assert!(wait_until(Duration::from_secs(10), || {
        Lab::run_in(&ns, "dig", &["+short", "@127.0.0.11", "tasks.web"])
            .is_ok_and(|o| o.stdout.split(|b| *b == b'\n').count() > 3)
    }));
    let (mut shoal_qps, mut base_qps, mut shoal_lat, mut base_lat) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let (q, l) = dnsperf(&ns, "127.0.0.11", &queries, 5);
        let (bq, bl) = dnsperf(&ns, "127.0.0.12", &queries, 5);
        println!("round {round}: dns: shoal {q:.0} q/s {l:.0} us, dnsmasq {bq:.0} q/s {bl:.0} us");
        shoal_qps.push(q);
        shoal_lat.push(l);
        base_qps.push(bq);
        base_lat.push(bl);
    }
    let _ = c.lab.stop(dnsmasq, Duration::from_secs(2));

    // === VIP: redis through the VIP vs to the task's address ===
    create(&[
        "--name",
        "redis",
        "redis-server",
        "--port",
        "6379",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let (_, _, redis_ip) = running(&c, "redis").remove(0);
    let redis_vip = vip(&c, "redis");
    // A new connection per request leaves a TIME_WAIT socket per request:
    // let the client reuse their ports (redis-benchmark asks for it too),
    // in the client's namespace only.
    let reuse = Lab::run_in(&ns, "sysctl", &["-qw", "net.ipv4.tcp_tw_reuse=1"]).expect("sysctl");
    assert!(reuse.status.success(), "sysctl: {}", String::from_utf8_lossy(&reuse.stderr));
    assert!(wait_until(Duration::from_secs(15), || {
        Lab::run_in(&ns, "redis-cli", &["-h", &redis_vip, "ping"])
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
    }));
    let mut vip_rows: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for round in 0..rounds {
        for (label, fresh) in [("kept connections", false), ("a new connection per request", true)] {
            let through = redis_rps(&ns, &redis_vip, fresh);
            let direct = redis_rps(&ns, &redis_ip, fresh);
            println!("round {round}: redis, {label}: VIP {through:.0} req/s, direct {direct:.0} req/s");
            let row = vip_rows.entry(label).or_default();
            row.0.push(through);
            row.1.push(direct);
        }
    }

    // === Convergence: healthy to reached from every node ===
    let log_dir = dir.join("seen");
    std::fs::create_dir_all(&log_dir).unwrap();
    let backend = "import socket\nname = socket.gethostname().encode()\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 7000))\ns.listen(512)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(name + b'\\n')\n    c.close()\n";
    create(&["--name", "hc", "--health-cmd", "true", "--health-interval", "1s", "python3", "-c", backend]);
    // A prober per node: a new connection to the VIP every 10 ms, logging
    // the first time each task answers.
    let prober = String::from(
        "import socket, time, sys\nseen = set()\nout = open(sys.argv[1], 'a')\nwhile True:\n    try:\n        s = socket.create_connection(('hc', 7000), timeout=1)\n        n = s.makefile().readline().strip()\n        s.close()\n        if n and n not in seen:\n            seen.add(n)\n            out.write('%d %s\\n' % (time.time() * 1000, n))\n            out.flush()\n    except OSError:\n        pass\n    time.sleep(0.01)\n",
    );
    create(&[
        "--name",
        "prober",
        "--mode",
        "global",
        "sh",
        "-c",
        &format!("exec python3 -c \"$0\" {}/$(hostname)", log_dir.display()),
        &prober,
    ]);
    let samples = env_or("NEW_TASKS", 8);
    let mut latencies = Vec::new();
    for n in 2..samples + 2 {
        c.cli(0, &["service", "scale", "--detach", &format!("hc={n}")]);
        // The new task, once it is healthy.
        let new = wait_until(Duration::from_secs(30), || running(&c, "hc").len() == n);
        assert!(new, "hc did not scale to {n}");
        let mut healthy_ms = None;
        let mut task = String::new();
        assert!(wait_until(Duration::from_secs(30), || {
            for (id, _, _) in running(&c, "hc") {
                let t: serde_json::Value =
                    serde_json::from_str(&c.cli(0, &["task", "inspect", &id])).unwrap();
                let logs: Vec<String> = std::fs::read_dir(&log_dir)
                    .unwrap()
                    .flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect();
                let host = &id[..12];
                let reached = logs.len() == 3 && logs.iter().all(|l| l.contains(host));
                if t[0]["Status"]["Health"] == "healthy" && !reached {
                    task = id.clone();
                    healthy_ms =
                        shoal_agent::clock::parse_rfc3339(t[0]["Status"]["Timestamp"].as_str().unwrap());
                }
            }
            healthy_ms.is_some()
        }));
        let host = task[..12].to_owned();
        let reached_by_all = wait_until(Duration::from_secs(30), || {
            let logs: Vec<String> = std::fs::read_dir(&log_dir)
                .unwrap()
                .flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect();
            logs.len() == 3 && logs.iter().all(|l| l.contains(&host))
        });
        assert!(reached_by_all, "task {host} never reached from every node");
        let last = std::fs::read_dir(&log_dir)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                text.lines()
                    .find(|l| l.ends_with(&host))
                    .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            })
            .max()
            .unwrap();
        let took = last.saturating_sub(healthy_ms.unwrap());
        println!("task {host}: healthy to reached from every node in {took} ms");
        latencies.push(took as f64);
    }
    latencies.sort_by(f64::total_cmp);
    let p = |values: &[f64], q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    let _ = std::fs::remove_dir_all(&dir);

    // === Convergence: a task dies, every node's directory forgets it ===
    let knows = |i: usize, host: &str| c.cli(i, &["debug", "directory"]).contains(host);
    let mut forgotten = Vec::new();
    for (id, node, _) in running(&c, "hc").into_iter().take(samples) {
        let host = &id[..12];
        assert!(wait_until(Duration::from_secs(10), || (0..3).all(|i| knows(i, host))));
        let cgroup = shoal_runtime::Cgroup::open(&sandbox(&c, node, &id));
        let killed = std::time::Instant::now();
        for pid in cgroup.pids() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let mut pending: Vec<usize> = (0..3).collect();
        let mut last = Duration::ZERO;
        assert!(wait_until(Duration::from_secs(30), || {
            pending.retain(|i| knows(*i, host));
            last = killed.elapsed();
            pending.is_empty()
        }));
        println!("task {host}: killed to forgotten by every node in {} ms", last.as_millis());
        forgotten.push(last.as_secs_f64() * 1000.0);
    }
    forgotten.sort_by(f64::total_cmp);

    // === Report ===
    // Ratios are medians of each round's ratio: a round's two runs are
    // taken back to back, so the machine's drift cancels within a pair.
    let paired = |a: &[f64], b: &[f64]| median(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>());
    let (sq, bq) = (median(&shoal_qps), median(&base_qps));
    println!();
    println!("| figure | Shoal | baseline | ratio |");
    println!("|---|---|---|---|");
    let dns_ratio = paired(&shoal_qps, &base_qps);
    println!("| DNS queries/s (dnsperf, 4 clients) | {sq:.0} | dnsmasq {bq:.0} | {dns_ratio:.2} |");
    println!(
        "| DNS average latency (us) | {:.0} | dnsmasq {:.0} | {:.2} |",
        median(&shoal_lat),
        median(&base_lat),
        paired(&shoal_lat, &base_lat)
    );
    for (label, (through, direct)) in &vip_rows {
        let (t, d) = (median(through), median(direct));
        println!(
            "| redis PING req/s, {label} | VIP {t:.0} | task address {d:.0} | {:.2} |",
            paired(through, direct)
        );
    }
    println!(
        "| healthy to reached from all 3 nodes (ms), {} new tasks | p50 {:.0}, p99 {:.0} | | |",
        latencies.len(),
        p(&latencies, 0.5),
        p(&latencies, 0.99)
    );
    println!(
        "| killed to forgotten by all 3 directories (ms), {} tasks | p50 {:.0}, p99 {:.0} | | |",
        forgotten.len(),
        p(&forgotten, 0.5),
        p(&forgotten, 0.99)
    );
    println!("(medians of {rounds} interleaved rounds; ratios: medians of the rounds' ratios)");
    println!("dns_qps_ratio_vs_dnsmasq={dns_ratio:.2}");
}
