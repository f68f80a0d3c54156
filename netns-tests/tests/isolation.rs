//! What a task cannot reach, and what the API refuses: a task sees its own
//! networks and nothing of its node (the underlay, the daemon's data
//! directory with the swarm's keys, the API socket) or of other networks;
//! malformed and oversized API bodies get JSON errors.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // the figures, for `--nocapture`

use std::process::Command;
use std::time::Duration;

use netns_tests::cluster::Cluster;
use netns_tests::wait_until;
use serde_json::Value;
use shoal_lab::Lab;

/// Probes what it is given, and prints what it could reach as JSON:
/// argv: other task's address, underlay addresses (comma-separated), the
/// data directory, the API socket.
const PROBE: &str = r#"
import json, os, socket, sys
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False
def resolves(name):
    try:
        socket.gethostbyname(name)
        return True
    except OSError:
        return False
api = socket.socket(socket.AF_UNIX)
try:
    api.connect(sys.argv[4])
    reached_api = True
except OSError:
    reached_api = False
data = sys.argv[3]
print(json.dumps({
    "web": tcp("web", 8000),
    "other_ip": tcp(sys.argv[1], 8000),
    "other_name": resolves("other"),
    "underlay": [tcp(a, 7946) for a in sys.argv[2].split(",")],
    "data_dir": sorted(os.listdir(data)) if os.path.isdir(data) else None,
    "api": reached_api,
}))
"#;

fn first_task_ip(c: &Cluster, service: &str) -> String {
    let ps = c.cli(0, &["service", "ps", "-q", "--no-trunc", service]);
    let id = ps.lines().next().expect("a task").to_owned();
    let t: Value = serde_json::from_str(&c.cli(0, &["task", "inspect", &id])).unwrap();
    t[0]["NetworksAttachments"][0]["Addresses"][0].as_str().unwrap().split('/').next().unwrap().to_owned()
}

#[test]
fn a_task_reaches_its_network_and_nothing_of_its_node_or_other_networks() {
    let c = Cluster::start_swarm(2);
    for n in ["front", "back"] {
        c.cli(0, &["network", "create", "-d", "overlay", n]);
    }
    c.cli(
        0,
        &["service", "create", "--name", "web", "--network", "front", "python3", "-m", "http.server", "8000"],
    );
    c.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "other",
            "--network",
            "back",
            "python3",
            "-m",
            "http.server",
            "8000",
        ],
    );
    c.cli(
        0,
        &["service", "create", "--name", "probe", "--mode", "global", "--network", "front", "sleep", "1000"],
    );
    let other_ip = first_task_ip(&c, "other");
    let underlay: Vec<String> = (0..2).map(|i| c.lab.host(i).underlay.to_string()).collect();
    let underlay = underlay.join(",");

    for i in 0..2 {
        let data = c.data_dir(i).display().to_string();
        let socket = c.socket(i).display().to_string();
        let args = ["python3", "-c", PROBE, &other_ip, &underlay, &data, &socket];
        // The same probe on the node itself reaches all of it: the probe can
        // tell.
        let node = Lab::run_in(&c.lab.host(i).netns, args[0], &args[1..]).expect("probe on the node");
        let seen: Value = serde_json::from_slice(&node.stdout).expect("probe output");
        assert_eq!(seen["underlay"], serde_json::json!([true, true]), "{seen}");
        assert_eq!(seen["api"], true, "{seen}");
        assert!(seen["data_dir"].as_array().is_some_and(|d| !d.is_empty()), "{seen}");

        let ps = c.cli(
            0,
            &["service", "ps", "-q", "--no-trunc", "--filter", &format!("node=node{}", i + 1), "probe"],
        );
        let task = ps.lines().next().expect("a probe task on each node").to_owned();
        let mut seen = Value::Null;
        let ran = wait_until(Duration::from_secs(20), || {
            let mut all = vec!["task", "exec", &task, "--"];
            all.extend_from_slice(&args);
            let out = c.try_cli(i, &all);
            seen = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            seen["web"] == true
        });
        assert!(ran, "the probe reaches web on its own network: {seen}");
        assert_eq!(seen["other_ip"], false, "another network's task: {seen}");
        assert_eq!(seen["other_name"], false, "another network's name: {seen}");
        assert_eq!(seen["underlay"], serde_json::json!([false, false]), "the nodes' underlay: {seen}");
        assert_eq!(seen["api"], false, "the daemon's API socket: {seen}");
        assert_eq!(seen["data_dir"], serde_json::json!([]), "the daemon's data directory: {seen}");
    }
}

/// `curl` to the daemon's API on host 1: (status, body).
fn api(c: &Cluster, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let file = std::env::temp_dir().join(format!("{}-body", c.lab.name()));
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-X", method, "-H", "Content-Type: application/json"])
        .arg("--unix-socket")
        .arg(c.socket(0))
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .args(["-w", "\n%{http_code}", &format!("http://shoal{path}")])
        .output()
        .expect("run curl");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("a status line");
    (status.parse().expect("a status"), serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())))
}

#[test]
fn malformed_and_oversized_api_bodies_get_json_errors_and_change_nothing() {
    let c = Cluster::start_swarm(1);
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("/v1/services", b"{".to_vec(), 400),
        ("/v1/services", br#"{"Name": 5}"#.to_vec(), 400),
        ("/v1/networks", br#"{"name": "n", "colour": "blue"}"#.to_vec(), 400),
        ("/v1/services", vec![b' '; 3 << 20], 413),
    ];
    for (path, body, status) in cases {
        let (got, answer) = api(&c, "POST", path, &body);
        assert_eq!(got, status, "{path} {}: {answer}", String::from_utf8_lossy(&body[..body.len().min(40)]));
        let message = answer["message"].as_str().unwrap_or_else(|| panic!("a JSON error: {answer}"));
        assert!(!message.is_empty());
    }
    assert!(c.cli(0, &["service", "ls", "-q"]).trim().is_empty(), "nothing was created");
    assert!(!c.cli(0, &["network", "ls"]).contains(" n "), "nothing was created");
}

#[test]
fn a_task_printing_in_a_tight_loop_is_bounded_and_counted() {
    let c = Cluster::start_swarm(1);
    let before = c.daemon_kib(0, "VmRSS");
    // `yes` prints millions of lines a second.
    c.cli(0, &["service", "create", "--detach", "--name", "loud", "yes", "flood"]);
    assert!(wait_until(Duration::from_secs(20), || c.metric(0, "shoal_task_log_lines_dropped_total") > 0.0));
    std::thread::sleep(Duration::from_secs(10));
    let during = c.daemon_kib(0, "VmRSS");
    let dropped = c.metric(0, "shoal_task_log_lines_dropped_total");
    let logs = c.cli(0, &["service", "logs", "--tail", "2000", "loud"]);
    c.cli(0, &["service", "rm", "loud"]);
    assert!(dropped > 1_000_000.0, "millions of lines dropped, not queued: {dropped}");
    assert!(logs.contains("shoal: dropped "), "the log says lines were dropped");
    assert!(logs.lines().filter(|l| l.ends_with("| flood")).count() >= 500, "a second's worth is kept");
    // The node holds at most a second's budget at a time, not the flood.
    let grown = during.saturating_sub(before);
    assert!(grown < 64 * 1024, "the daemon grew by {grown} KiB under the flood");
}

/// A bounded fork bomb: 400 children wanted, each sleeping a minute; it
/// says how many forks the kernel refused, then waits.
const BOMB: &str = r#"
import os, time
made, refused = 0, 0
for _ in range(400):
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        made += 1
    except OSError:
        refused += 1
print("forked %d, refused %d" % (made, refused), flush=True)
time.sleep(600)
"#;

#[test]
fn a_fork_bomb_stops_at_its_tasks_pids_limit() {
    let c = Cluster::start_swarm(1);
    c.cli(
        0,
        &["service", "create", "--detach", "--name", "bomb", "--limit-pids", "64", "python3", "-c", BOMB],
    );
    let said = || c.cli(0, &["service", "logs", "bomb"]);
    assert!(wait_until(Duration::from_secs(30), || said().contains("refused")), "the bomb ran: {}", said());
    let id =
        c.cli(0, &["service", "ps", "-q", "--no-trunc", "bomb"]).lines().next().expect("a task").to_owned();
    let cgroup = format!("/sys/fs/cgroup/pids/shoal/{}-t{}", c.lab.host(0).netns, &id[..10]);
    let read = |file: &str| std::fs::read_to_string(format!("{cgroup}/{file}")).unwrap_or_default();
    let line = said();
    let refused: u64 = line.rsplit("refused ").next().and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    let current: u64 = read("pids.current").trim().parse().expect("the task runs on, in its cgroup");
    println!("fork bomb: {current} processes in the task, {refused} of 400 forks refused");
    assert!(refused > 300, "the kernel refused the forks past the limit: {line}");
    assert_eq!(read("pids.max").trim(), "64");
    assert!(current <= 64, "{current} processes in the task");
    assert!(read("pids.events").starts_with("max "), "the limit was hit: {}", read("pids.events"));
    // The node is unharmed: its daemon answers and starts other tasks.
    c.cli(0, &["service", "create", "--name", "calm", "sleep", "600"]);
    c.cli(0, &["service", "rm", "bomb", "calm"]);
    assert!(
        wait_until(Duration::from_secs(20), || !std::path::Path::new(&cgroup).exists()),
        "the bomb's cgroup is gone, with its processes"
    );
}
