//! Faults under load, through the routing mesh of a 3-node swarm, from a
//! client host outside it: a worker's daemon killed (without live
//! restore, restarted with it, and killed for good with it), a worker
//! frozen (SIGSTOP) for 20 s, the manager killed during a rolling update,
//! tasks killed, partitions, datagram loss. For each: the requests that
//! failed and when, and the state after (every slot one running task,
//! every node running exactly what the manager says and holding a
//! directory row for exactly the running tasks, the manager's records as
//! they were).
//!
//! `make soak` runs the suite several times with longer loads.
//!
//! Bounded: each load runs for a fixed time, each wait has a limit. The
//! scenarios share one lock, so that only one cluster is under load at a
//! time on a small machine. Figures print with `--nocapture`.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // the figures, for `--nocapture`

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netns_tests::cluster::Cluster;
use netns_tests::wait_until;
use serde_json::Value;
use shoal_lab::Lab;

/// One scenario at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The client host: the lab host after the three nodes.
const CLIENT: usize = 3;
/// Tasks of the service under load.
const REPLICAS: usize = 6;

/// A load of HTTP/1.0 requests, each on a new connection (2 s timeout),
/// for a fixed time: prints `[[unix time, ok], ...]`.
const LOAD: &str = r#"
import json, socket, sys, time
host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.time() + duration
out = []
while time.time() < end:
    start = time.time()
    ok = False
    try:
        s = socket.create_connection((host, port), timeout=2)
        s.settimeout(2)
        s.sendall(b"GET / HTTP/1.0\r\nHost: chaos\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        ok = data.startswith(b"HTTP/1.0 200")
    except OSError:
        pass
    out.append([round(start, 3), ok])
    if not ok:
        time.sleep(0.02)
print(json.dumps(out))
"#;

/// A load running on the client host.
struct Load(Child);

/// Seconds of load added to every scenario (`make soak` sets
/// `SHOAL_CHAOS_EXTRA_SECONDS`): a longer steady state after each fault.
fn extra_seconds() -> u32 {
    std::env::var("SHOAL_CHAOS_EXTRA_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl Load {
    fn start(c: &Cluster, node: usize, port: u16, seconds: u32) -> Load {
        let seconds = seconds + extra_seconds();
        let host = c.lab.host(node).underlay.to_string();
        let child = Lab::command_in(&c.lab.host(CLIENT).netns, "python3")
            .args(["-c", LOAD, &host, &port.to_string(), &seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the load");
        Load(child)
    }

    /// Waits for the load to end: each request's start time and outcome.
    fn results(self) -> Vec<(f64, bool)> {
        self.at_least(50)
    }

    /// The same, from a load that ran at least `min` requests.
    fn at_least(self, min: usize) -> Vec<(f64, bool)> {
        let out = self.0.wait_with_output().expect("the load ran");
        let rows: Vec<(f64, bool)> = serde_json::from_slice(&out.stdout).expect("the load's results");
        assert!(rows.len() >= min, "the load ran too few requests: {}", rows.len());
        rows
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

/// What a scenario measured.
struct Figures {
    total: usize,
    failed: usize,
    /// From the fault to the last failed request, seconds (0: none failed
    /// after it).
    last_failure_after: f64,
}

fn figures(rows: &[(f64, bool)], fault_at: f64) -> Figures {
    let failed: Vec<f64> = rows.iter().filter(|(_, ok)| !ok).map(|(t, _)| *t).collect();
    Figures {
        total: rows.len(),
        failed: failed.len(),
        last_failure_after: failed.iter().map(|t| t - fault_at).fold(0.0, f64::max),
    }
}

fn report(name: &str, f: &Figures) {
    println!(
        "chaos {name}: {} of {} requests failed; last failure {:.2} s after the fault",
        f.failed, f.total, f.last_failure_after
    );
}

/// A 3-node swarm with a client host, running `web` (Python's HTTP
/// server, REPLICAS tasks) published on 8080.
fn swarm() -> Cluster {
    swarm_with(&[])
}

/// The same, with more flags for every daemon.
fn swarm_with(daemon_args: &[&str]) -> Cluster {
    let c = Cluster::start_swarm_with_clients(3, 1, daemon_args);
    c.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            &REPLICAS.to_string(),
            "-p",
            "8080:8000",
            "--update-monitor",
            "0s",
            "--restart-delay",
            "1s",
            "python3",
            "-m",
            "http.server",
            "8000",
        ],
    );
    // Every node's mesh answers before the load starts.
    for i in 0..3 {
        let url = format!("http://{}:8080/", c.lab.host(i).underlay);
        let answers = || {
            Lab::run_in(
                &c.lab.host(CLIENT).netns,
                "curl",
                &["-s", "-o", "/dev/null", "--max-time", "2", &url],
            )
            .is_ok_and(|o| o.status.success())
        };
        assert!(wait_until(Duration::from_secs(20), answers), "{url} does not answer");
    }
    c
}

/// The manager's running tasks of `web`: (task id, slot, node hostname).
fn running(c: &Cluster, manager: usize) -> Vec<(String, u64, String)> {
    let out = c.cli(manager, &["service", "ps", "--no-trunc", "--format", "json", "web"]);
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a row"))
        .filter(|r| {
            r["DesiredState"] == "Running" && r["CurrentState"].as_str().unwrap_or("").starts_with("Running")
        })
        .map(|r| {
            let slot =
                r["Name"].as_str().unwrap_or("").rsplit('.').next().and_then(|s| s.parse().ok()).unwrap_or(0);
            (r["ID"].as_str().unwrap_or("").to_owned(), slot, r["Node"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

/// Task sandboxes each node holds (its own mesh's aside).
fn sandboxes(c: &Cluster, i: usize) -> usize {
    c.task_sandboxes(i).len()
}

/// The tasks whose rows node `i` holds, live and visible, in the gossiped
/// service directory (table `services`; only `web` runs); `None` if it
/// does not answer.
fn rows_of(c: &Cluster, i: usize) -> Option<BTreeSet<String>> {
    let out = c.try_cli(i, &["debug", "tables"]);
    let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        rows.as_array()?
            .iter()
            .filter(|r| r["table"] == "services" && !r["value"].is_null() && r["suspended"] != true)
            .filter_map(|r| r["key"].as_str())
            .map(str::to_owned)
            .collect(),
    )
}

/// The state after a fault, once settled: each slot has one running task,
/// each node runs exactly the tasks the manager places there, and every
/// node that answers holds a directory row for exactly the running tasks
/// (none lost, none resurrected).
fn accounted_for(c: &Cluster, manager: usize) -> bool {
    let tasks = running(c, manager);
    let ids: BTreeSet<String> = tasks.iter().map(|t| t.0.clone()).collect();
    // A node that does not answer (its daemon killed for good) is left
    // out; the manager must answer.
    let rows: Vec<_> = (0..3).map(|i| rows_of(c, i)).collect();
    if rows[manager].is_none() || rows.iter().flatten().any(|r| *r != ids) {
        return false;
    }
    let slots: BTreeSet<u64> = tasks.iter().map(|t| t.1).collect();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tasks {
        *per_node.entry(t.2.clone()).or_default() += 1;
    }
    tasks.len() == REPLICAS
        && slots.len() == REPLICAS
        && (0..3).all(|i| sandboxes(c, i) == per_node.get(&format!("node{}", i + 1)).copied().unwrap_or(0))
}

fn settle(c: &Cluster, manager: usize, what: &str) {
    assert!(
        wait_until(Duration::from_secs(60), || accounted_for(c, manager)),
        "after {what}: running {:?}, sandboxes {:?}, directory rows {:?}\n{}",
        running(c, manager),
        (0..3).map(|i| sandboxes(c, i)).collect::<Vec<_>>(),
        (0..3).map(|i| rows_of(c, i)).collect::<Vec<_>>(),
        (0..3).map(|i| log_tail(c, i)).collect::<Vec<_>>().join("\n")
    );
}

/// The end of node `i`'s log, for a failure's message.
fn log_tail(c: &Cluster, i: usize) -> String {
    let log = c.log(i);
    let lines: Vec<&str> = log.lines().collect();
    format!("--- node{} ---\n{}", i + 1, lines[lines.len().saturating_sub(25)..].join("\n"))
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

#[test]
fn a_killed_worker_fails_only_its_own_requests_and_its_tasks_move() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = swarm();
    let load = Load::start(&c, 0, 8080, 20);
    std::thread::sleep(Duration::from_secs(5));
    let fault = now();
    c.kill_daemon(2);
    let f = figures(&load.results(), fault);
    report("kill -9 of a worker's daemon", &f);
    assert!(f.failed < f.total / 4, "most requests were served");
    assert!(
        f.last_failure_after < 10.0,
        "no failure once the node's death is known: {:.2} s",
        f.last_failure_after
    );
    settle(&c, 0, "a worker's death");
    assert!(running(&c, 0).iter().all(|t| t.2 != "node3"), "node3's tasks moved");
    // It comes back, and runs nothing it should not.
    c.start_daemon(2);
    settle(&c, 0, "the worker's return");
}

#[test]
fn a_worker_restarted_with_live_restore_keeps_its_tasks_and_fails_no_request() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = swarm_with(&["--live-restore"]);
    let before = running(&c, 0);
    let on_node3 = |tasks: &[(String, u64, String)]| -> BTreeSet<String> {
        tasks.iter().filter(|t| t.2 == "node3").map(|t| t.0.clone()).collect()
    };
    assert!(!on_node3(&before).is_empty(), "node3 runs some of the tasks");
    // A restart after kill -9, then one after SIGTERM (an upgrade).
    let load = Load::start(&c, 0, 8080, 20);
    std::thread::sleep(Duration::from_secs(5));
    let fault = now();
    c.kill_daemon(2);
    std::thread::sleep(Duration::from_millis(500));
    c.start_daemon(2);
    std::thread::sleep(Duration::from_secs(5));
    assert!(c.stop_daemon(2), "SIGTERM: the daemon exits 0");
    std::thread::sleep(Duration::from_millis(500));
    c.start_daemon(2);
    let f = figures(&load.results(), fault);
    report("a worker's daemon restarted with live restore (kill -9, then SIGTERM)", &f);
    assert!(f.failed <= 2, "{} of {} requests failed across the restarts", f.failed, f.total);
    settle(&c, 0, "the restarts");
    assert_eq!(running(&c, 0), before, "the same tasks run, none replaced");

    // Killed for good: its tasks live on, unreachable to the manager,
    // which replaces them; when the daemon returns it stops the old ones.
    let load = Load::start(&c, 0, 8080, 20);
    std::thread::sleep(Duration::from_secs(3));
    let fault = now();
    c.kill_daemon(2);
    let f = figures(&load.results(), fault);
    report("kill -9 of a worker's daemon, live restore on (not restarted)", &f);
    assert!(f.failed < f.total / 4, "most requests were served");
    settle(&c, 0, "a worker's death with live restore");
    assert!(on_node3(&running(&c, 0)).is_empty(), "node3's tasks moved");
    let left = before.iter().filter(|t| t.2 == "node3").count();
    let orphans = c.task_sandboxes_left(2);
    assert_eq!(orphans, left, "its tasks ran on without their daemon");
    c.start_daemon(2);
    settle(&c, 0, "the worker's return: it stops what was replaced");
}

#[test]
fn a_frozen_worker_is_replaced_and_stops_its_old_tasks_when_it_thaws() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = swarm();
    let load = Load::start(&c, 0, 8080, 35);
    std::thread::sleep(Duration::from_secs(5));
    let fault = now();
    signal(c.daemon_pid(1), "-STOP");
    std::thread::sleep(Duration::from_secs(20));
    signal(c.daemon_pid(1), "-CONT");
    let f = figures(&load.results(), fault);
    report("SIGSTOP of a worker's daemon for 20 s", &f);
    assert!(f.failed < f.total / 4, "most requests were served");
    // Failures come when the freeze is found and at the thaw (the
    // replaced tasks stop), not after.
    assert!(f.last_failure_after < 30.0, "a failure 10 s after the thaw: {:.2} s", f.last_failure_after);
    settle(&c, 0, "a frozen worker's thaw");
}

#[test]
fn the_manager_killed_during_a_rolling_update_keeps_its_records_and_finishes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = swarm();
    // The load goes through node2: node1 (the manager) goes down.
    let load = Load::start(&c, 1, 8080, 25);
    std::thread::sleep(Duration::from_secs(3));
    c.cli(0, &["service", "update", "--detach", "--env-add", "ROUND=2", "--update-delay", "1s", "web"]);
    std::thread::sleep(Duration::from_secs(2));
    let before = c.json(0, &["service", "inspect", "web"])[0].clone();
    let networks = c.cli(0, &["network", "ls", "-q"]);
    let nodes = c.cli(0, &["node", "ls", "-q"]);
    let fault = now();
    c.kill_daemon(0);
    std::thread::sleep(Duration::from_secs(3));
    let down_for = Instant::now();
    c.start_daemon(0);
    let manages = || c.try_cli(0, &["service", "inspect", "web"]).status.success();
    assert!(wait_until(Duration::from_secs(30), manages), "the manager is back");
    let after = c.json(0, &["service", "inspect", "web"])[0].clone();
    println!(
        "chaos manager restart: its API answered {:.2} s after its start",
        down_for.elapsed().as_secs_f64()
    );
    assert_eq!((&after["ID"], &after["Spec"]), (&before["ID"], &before["Spec"]), "the service as it was");
    assert!(after["Version"]["Index"].as_u64() >= before["Version"]["Index"].as_u64());
    assert_eq!(c.cli(0, &["network", "ls", "-q"]), networks);
    assert_eq!(c.cli(0, &["node", "ls", "-q"]), nodes);
    let f = figures(&load.results(), fault);
    report("kill -9 of the manager during a rolling update (load through a worker)", &f);
    assert!(f.failed < f.total / 4, "most requests were served");
    // The update finishes, with every task on the new spec.
    let updated = || {
        let s = c.json(0, &["service", "inspect", "web"]);
        s[0]["UpdateStatus"]["State"] == "completed" && accounted_for(&c, 0)
    };
    assert!(wait_until(Duration::from_secs(90), updated), "{}", c.cli(0, &["service", "ps", "web"]));
    for (id, _, _) in running(&c, 0) {
        let t: Value = serde_json::from_str(&c.cli(0, &["task", "inspect", &id])).unwrap();
        let env = &t[0]["Spec"]["ContainerSpec"]["Env"];
        assert_eq!(env, &serde_json::json!(["ROUND=2"]), "task {id} runs the new spec");
    }
}

#[test]
fn killed_tasks_fail_only_their_own_requests_and_are_replaced() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = swarm();
    let load = Load::start(&c, 0, 8080, 20);
    std::thread::sleep(Duration::from_secs(5));
    let fault = now();
    // One task on each node, killed outright (every process of its cgroup).
    let tasks = running(&c, 0);
    for node in ["node1", "node2", "node3"] {
        let Some((id, _, _)) = tasks.iter().find(|t| t.2 == node) else { continue };
        let i: usize = node[4..].parse::<usize>().unwrap() - 1;
        shoal_runtime::Cgroup::open(&format!("{}-t{}", c.lab.host(i).netns, &id[..10])).kill_all();
        std::thread::sleep(Duration::from_secs(2));
    }
    let f = figures(&load.results(), fault);
    report("3 tasks killed, 2 s apart", &f);
    assert!(f.failed < f.total / 10, "most requests were served");
    settle(&c, 0, "killed tasks");
}

/// What a partition cuts between a node and the others.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Everything.
    All,
    /// The control plane only (UDP 2377).
    Control,
    /// Gossip only (UDP and TCP 7946, either end).
    Gossip,
}

/// nftables rules on host `i` dropping what `cut` names of its traffic
/// with the other nodes.
fn partition(c: &Cluster, i: usize, cut: Cut) {
    let others: Vec<String> =
        (0..3).filter(|&j| j != i).map(|j| c.lab.host(j).underlay.to_string()).collect();
    let peers = format!("{{ {} }}", others.join(", "));
    let (inbound, outbound) = match cut {
        Cut::All => (vec![format!("ip saddr {peers}")], vec![format!("ip daddr {peers}")]),
        Cut::Control => (
            vec![format!("ip saddr {peers} udp sport 2377")],
            vec![format!("ip daddr {peers} udp dport 2377")],
        ),
        Cut::Gossip => (
            vec![format!("ip saddr {peers} th sport 7946"), format!("ip saddr {peers} th dport 7946")],
            vec![format!("ip daddr {peers} th sport 7946"), format!("ip daddr {peers} th dport 7946")],
        ),
    };
    let rules =
        |matches: Vec<String>| matches.iter().map(|m| format!("{m} drop;")).collect::<Vec<_>>().join(" ");
    c.nft(
        i,
        &format!(
            "table inet chaos {{\n chain in {{ type filter hook input priority 0; {} }}\n \
             chain out {{ type filter hook output priority 0; {} }}\n}}\n",
            rules(inbound),
            rules(outbound)
        ),
    );
}

fn heal(c: &Cluster, i: usize) {
    c.nft(i, "delete table inet chaos\n");
}

#[test]
fn partitions_of_a_worker_heal_without_duplicate_tasks() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = swarm();
    let cuts = [
        ("a worker cut off for 15 s", Cut::All),
        ("a worker's control plane (2377) cut for 15 s", Cut::Control),
        ("a worker's gossip (7946) cut for 15 s", Cut::Gossip),
    ];
    for (name, cut) in cuts {
        let load = Load::start(&c, 0, 8080, 30);
        std::thread::sleep(Duration::from_secs(5));
        let fault = now();
        partition(&c, 2, cut);
        std::thread::sleep(Duration::from_secs(10));
        // The cut is real: the manager lost the node, or gossip did.
        let node3 = format!("{}:7946", c.lab.host(2).underlay);
        let gossip_lost = c
            .json(0, &["debug", "members"])
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["member"]["addr"] == node3.as_str() && m["state"] != "alive");
        let manager_lost =
            c.cli(0, &["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]).contains("node3 Down");
        match cut {
            Cut::All => assert!(gossip_lost && manager_lost, "{name}: gossip and the manager lost node3"),
            Cut::Control => assert!(manager_lost && !gossip_lost, "{name}: only the manager lost node3"),
            Cut::Gossip => assert!(gossip_lost && !manager_lost, "{name}: only gossip lost node3"),
        }
        std::thread::sleep(Duration::from_secs(5));
        heal(&c, 2);
        let f = figures(&load.results(), fault);
        report(name, &f);
        assert!(f.failed < f.total / 4, "most requests were served");
        // Failures come when the cut is found and when it heals (the
        // replaced tasks stop), not after.
        assert!(f.last_failure_after < 25.0, "a failure 10 s after the heal: {:.2} s", f.last_failure_after);
        settle(&c, 0, name);
    }
}

/// Drops `percent` % of the UDP datagrams every node receives (VXLAN,
/// gossip and the control plane's QUIC alike).
fn lose_datagrams(c: &Cluster, percent: u32) {
    for i in 0..3 {
        c.nft(
            i,
            &format!(
                "table inet chaos {{\n chain in {{ type filter hook input priority 0; \
                 meta l4proto udp numgen random mod 100 < {percent} drop; }}\n}}\n"
            ),
        );
    }
}

#[test]
fn datagram_loss_kills_no_node_and_moves_no_task() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = swarm();
    for percent in [10, 30] {
        let before: BTreeSet<String> = running(&c, 0).into_iter().map(|t| t.0).collect();
        let load = Load::start(&c, 0, 8080, 20);
        let fault = now();
        lose_datagrams(&c, percent);
        // Each lost SYN costs a second: far fewer requests get through.
        let rows = load.at_least(10);
        let nodes = c.cli(0, &["node", "ls", "--format", "{{.Status}}"]);
        let after: BTreeSet<String> = running(&c, 0).into_iter().map(|t| t.0).collect();
        for i in 0..3 {
            heal(&c, i);
        }
        let f = figures(&rows, fault);
        report(&format!("{percent} % of datagrams lost on every node for 20 s"), &f);
        if percent == 10 {
            // SWIM's indirect probes and QUIC's retransmissions ride it out.
            assert_eq!(nodes.lines().collect::<Vec<_>>(), ["Ready"; 3], "no node marked down at 10 %");
            assert_eq!(after, before, "no task replaced at 10 %");
            assert!(f.failed < f.total / 10, "most requests were served at 10 %");
        }
        settle(&c, 0, &format!("{percent} % loss"));
    }
}
