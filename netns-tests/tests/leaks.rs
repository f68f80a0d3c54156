//! Two thousand task runs leave nothing behind: the daemon's file
//! descriptors, network namespaces, cgroups, mounts and task directories
//! are back where they started, and its memory does not grow with the
//! runs once its allocator has grown to the load.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use netns_tests::cluster::Cluster;
use netns_tests::wait_until;

/// Task runs to churn through.
const RUNS: f64 = 1000.0;
/// Tasks running at once.
const REPLICAS: &str = "8";

/// What a node holds for its tasks, and the daemon's own resources.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    fds: usize,
    namespaces: usize,
    cgroups: usize,
    mounts: usize,
    task_dirs: usize,
    rss_kib: u64,
    anon_kib: u64,
}

fn held(c: &Cluster) -> Held {
    let pid = c.daemon_pid(0);
    let prefix = format!("{}-t", c.lab.host(0).netns);
    let count = |path: String| std::fs::read_dir(path).map_or(0, |d| d.count());
    let cgroups = ["memory", "cpu", "pids"]
        .iter()
        .map(|ctrl| {
            std::fs::read_dir(format!("/sys/fs/cgroup/{ctrl}/shoal"))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .sum();
    Held {
        fds: count(format!("/proc/{pid}/fd")),
        namespaces: shoal_runtime::NetNs::list().iter().filter(|n| n.starts_with(&prefix)).count(),
        cgroups,
        mounts: std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).map_or(0, |m| m.lines().count()),
        task_dirs: count(c.data_dir(0).join("tasks").display().to_string()),
        rss_kib: c.daemon_kib(0, "VmRSS"),
        anon_kib: c.daemon_kib(0, "RssAnon"),
    }
}

#[test]
#[allow(clippy::print_stdout)] // the figures, for `--nocapture`
fn two_thousand_task_runs_leave_nothing_behind() {
    let c = Cluster::start_swarm(1);
    c.cli(0, &["network", "create", "-d", "overlay", "churn"]);
    // A first run of everything (the network in the data plane, the
    // resolver's thread, allocator arenas) before the baseline.
    let warm = [
        "service",
        "create",
        "--detach",
        "--name",
        "warm",
        "--network",
        "churn",
        "--restart-condition",
        "none",
    ];
    c.cli(0, &[&warm[..], &["true"]].concat());
    assert!(wait_until(Duration::from_secs(20), || c.metric(0, "shoal_tasks_started_total") >= 1.0));
    c.cli(0, &["service", "rm", "warm"]);
    let idle = |c: &Cluster| {
        let h = held(c);
        h.namespaces == 0 && h.cgroups == 0 && h.task_dirs == 0
    };
    assert!(wait_until(Duration::from_secs(20), || idle(&c)), "the warm-up task left {:?}", held(&c));
    let before = held(&c);

    // Tasks that exit at once and are restarted at once: a new task (a
    // sandbox, cgroup, shim, gossip row) for every run.
    let started = c.metric(0, "shoal_tasks_started_total");
    let clock = Instant::now();
    c.cli(
        0,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "churn",
            "--network",
            "churn",
            "--replicas",
            REPLICAS,
            "--restart-delay",
            "0s",
            "--restart-condition",
            "any",
            "sh",
            "-c",
            "exit 0",
        ],
    );
    // Memory is read twice under the same load, after RUNS runs (once the
    // allocator's arenas and caches have grown to the load) and after
    // RUNS more: a leak grows between the two; caches do not.
    let runs_so_far = |c: &Cluster| c.metric(0, "shoal_tasks_started_total") - started;
    let limit = Duration::from_secs(600);
    let warmed = wait_until(limit, || runs_so_far(&c) >= RUNS);
    let middle = held(&c);
    let done = warmed && wait_until(limit, || runs_so_far(&c) >= 2.0 * RUNS);
    let end = held(&c);
    let runs = c.metric(0, "shoal_tasks_started_total") - started;
    let elapsed = clock.elapsed();
    c.cli(0, &["service", "rm", "churn"]);
    assert!(done, "only {runs} runs in {elapsed:?}");
    assert!(wait_until(Duration::from_secs(60), || idle(&c)), "after the churn: {:?}", held(&c));
    // File descriptors and mounts settle once the last tasks are reaped.
    let settled = wait_until(Duration::from_secs(20), || {
        let h = held(&c);
        h.fds <= before.fds && h.mounts <= before.mounts
    });
    let after = held(&c);
    println!(
        "{runs} task runs in {elapsed:.1?} ({:.0}/s); before {before:?}, after {after:?}",
        runs / elapsed.as_secs_f64()
    );
    assert!(settled, "the daemon holds more than before: before {before:?}, after {after:?}");
    // Memory: at most 8 KiB a run between the two readings (a leak of
    // anything per task, a row, a log buffer, a cgroup handle, shows).
    let grown = end.anon_kib.saturating_sub(middle.anon_kib);
    assert!(
        (grown as f64) < 8.0 * RUNS,
        "anonymous memory grew by {grown} KiB over the second {RUNS} runs: {middle:?} -> {end:?}"
    );
    println!("memory over the second {RUNS} runs: {middle:?} -> {end:?}");
    // Once idle, the runner gives the heap's free memory back (at most
    // every 10 s): a figure, not asserted.
    std::thread::sleep(Duration::from_secs(12));
    println!("idle again after 12 s: {:?}", held(&c));
}
