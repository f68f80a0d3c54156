//! `make bench-services`: how long a service takes to converge on a 3-node
//! lab swarm of real daemons, from `service create` to every task running,
//! against a baseline run in the same rounds: the same number of processes
//! started in fresh network, mount, UTS and PID namespaces by util-linux
//! `unshare` (the kernel's floor for "a process in its own namespaces").
//! Rounds interleave Shoal and baseline; medians are reported. The last
//! line is `service_converge_10_ratio_vs_unshare=<ratio>`.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benches::median;
use netns_tests::cluster::Cluster;
use netns_tests::wait_until;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Every task of `service` wanted running is running.
fn converged(c: &Cluster, service: &str, replicas: usize) -> bool {
    let out = c.cli(0, &["service", "ps", "--format", "json", "--filter", "desired-state=running", service]);
    let running = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|t| t["CurrentState"].as_str().is_some_and(|s| s.starts_with("Running")))
        .count();
    running == replicas
}

/// Seconds from `service create --detach` to all `replicas` tasks running.
fn shoal_round(c: &Cluster, name: &str, replicas: usize) -> f64 {
    let n = replicas.to_string();
    let start = Instant::now();
    c.cli(
        0,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--replicas",
            &n,
            "--network",
            "front",
            "sleep",
            "600",
        ],
    );
    let mut shown = false;
    assert!(
        wait_until(Duration::from_secs(60), || {
            if !shown && start.elapsed() > Duration::from_secs(3) && std::env::var_os("DEBUG").is_some() {
                shown = true;
                println!("{}", c.cli(0, &["service", "ps", name]));
            }
            converged(c, name, replicas)
        }),
        "service {name} did not converge"
    );
    let took = start.elapsed().as_secs_f64();
    c.cli(0, &["service", "rm", name]);
    // Not timed: wait for the tasks to be gone before the next round.
    let gone = wait_until(Duration::from_secs(60), || {
        (0..3).all(|i| {
            std::fs::read_dir(c.data_dir(i).join("tasks")).into_iter().flatten().flatten().next().is_none()
        })
    });
    assert!(gone, "tasks of {name} were not removed");
    took
}

/// Seconds to run `count` processes, concurrently, each in fresh network,
/// mount, UTS and PID namespaces (with its own /proc), to completion.
fn unshare_round(count: usize) -> f64 {
    let start = Instant::now();
    let children: Vec<_> = (0..count)
        .map(|_| {
            Command::new("unshare")
                .args(["--net", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "true"])
                .stdout(Stdio::null())
                .spawn()
                .expect("run unshare (util-linux)")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("unshare").success());
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let rounds = env_or("ROUNDS", 5);
    let c = Cluster::start_swarm(3);
    c.cli(0, &["network", "create", "-d", "overlay", "front"]);

    let mut rows = Vec::new();
    for replicas in [1, 10] {
        let (mut shoal, mut base) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            shoal.push(shoal_round(&c, &format!("b{replicas}x{round}"), replicas));
            base.push(unshare_round(replicas));
            println!(
                "round {round}: {replicas} tasks: shoal {:.3} s, unshare {:.4} s",
                shoal[round], base[round]
            );
        }
        let (s, b) = (median(&shoal) * 1000.0, median(&base) * 1000.0);
        println!(
            "replicas={replicas} shoal_ms={s:.0} unshare_ms={b:.1} (medians of {rounds} interleaved rounds)"
        );
        rows.push((replicas, s, b));
    }
    println!();
    println!("| tasks | Shoal: create to all running (ms) | baseline: unshare, same count (ms) | ratio |");
    println!("|---|---|---|---|");
    for (replicas, s, b) in &rows {
        println!("| {replicas} | {s:.0} | {b:.1} | {:.0}x |", s / b);
    }
    let (_, s, b) = rows[1];
    println!("service_converge_10_ratio_vs_unshare={:.1}", s / b);
}
