//! Live restore on a 3-node swarm of real daemons: a worker's daemon is
//! killed (SIGKILL) and started again, then stopped (SIGTERM, an upgrade)
//! and started again, while a client outside the swarm holds one TCP
//! connection to redis-server on that worker, through another node's
//! published port. The tasks are the same processes after, the held
//! connection never fails (its longest pause is printed), the output
//! written while no daemon read is all there, the restarted daemon serves
//! `task exec`, health and removal of its adopted tasks, and no row was
//! lost on the way. With `--live-restore=false` (every other test), tasks
//! die with their daemon, as before.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // the figures, for `--nocapture`

use std::process::{Child, Stdio};
use std::time::Duration;

use netns_tests::cluster::Cluster;
use netns_tests::wait_until;
use serde_json::Value;
use shoal_lab::Lab;

const CLIENT: usize = 3;
const WORKER: usize = 1;

/// One connection to redis, a PING every 20 ms for a fixed time; prints
/// `{"pings": n, "errors": n, "max_ms": x, "error": "..."}`. A failed
/// ping ends it: the connection is not opened again.
const HOLD: &str = r#"
import json, socket, sys, time
host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port), timeout=5)
s.settimeout(30)
end = time.time() + duration
pings, worst, error = 0, 0.0, None
while time.time() < end:
    start = time.time()
    try:
        s.sendall(b"PING\r\n")
        reply = s.recv(64)
        if reply != b"+PONG\r\n":
            error = "reply %r" % reply
            break
    except OSError as e:
        error = str(e)
        break
    pings += 1
    worst = max(worst, time.time() - start)
    time.sleep(0.02)
print(json.dumps({"pings": pings, "errors": 0 if error is None else 1, "max_ms": worst * 1000, "error": error, "at": time.time()}))
"#;

/// An echo server: every line comes back.
const ECHO: &str = r#"
import socketserver
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", 7000), Echo).serve_forever()
"#;

/// A task holding one connection to `echo` through its VIP: a line every
/// 50 ms; says how many came back, or why the connection failed.
const HOLDER: &str = r#"
import socket, sys, time
s = socket.create_connection(("echo", 7000), timeout=5)
s.settimeout(30)
n = 0
while True:
    try:
        s.sendall(b"ping\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                raise OSError("closed by the peer")
            data += chunk
    except OSError as e:
        print("failed: %s" % e, flush=True)
        sys.exit(1)
    n += 1
    if n % 20 == 0:
        print("echoed %d" % n, flush=True)
    time.sleep(0.05)
"#;

struct Held(Child);

impl Held {
    fn start(c: &Cluster, via: usize, seconds: u32) -> Held {
        let host = c.lab.host(via).underlay.to_string();
        let child = Lab::command_in(&c.lab.host(CLIENT).netns, "python3")
            .args(["-c", HOLD, &host, "6379", &seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the held connection");
        Held(child)
    }

    fn result(self) -> Value {
        let out = self.0.wait_with_output().expect("the client ran");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Running tasks of `service`: (task id, node hostname).
fn running(c: &Cluster, service: &str) -> Vec<(String, String)> {
    let out = c.cli(0, &["service", "ps", "--no-trunc", "--format", "json", service]);
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a row"))
        .filter(|r| {
            r["DesiredState"] == "Running" && r["CurrentState"].as_str().unwrap_or("").starts_with("Running")
        })
        .map(|r| (r["ID"].as_str().unwrap().to_owned(), r["Node"].as_str().unwrap().to_owned()))
        .collect()
}

/// Every task of `service` the manager knows, running or not.
fn all_tasks(c: &Cluster, service: &str) -> usize {
    c.cli(0, &["service", "ps", "-q", "--no-trunc", service]).lines().count()
}

/// The shim pid recorded for task `id` on host `i`.
fn shim_pid(c: &Cluster, i: usize, id: &str) -> i64 {
    let text = std::fs::read(c.data_dir(i).join("tasks").join(id).join("shim.json")).expect("shim record");
    serde_json::from_slice::<Value>(&text).unwrap()["pid"].as_i64().unwrap()
}

fn alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The tick numbers `logger` printed, as the manager holds them.
fn ticks(c: &Cluster) -> Vec<u64> {
    c.cli(0, &["service", "logs", "logger"])
        .lines()
        .filter_map(|l| l.rsplit("tick ").next()?.trim().parse().ok())
        .collect()
}

/// The rows every node holds for `id` in table `services`, as
/// (owner epoch, visible).
fn service_rows(c: &Cluster, i: usize, id: &str) -> Vec<(u64, bool)> {
    c.rows(i)
        .iter()
        .filter(|r| r["table"] == "services" && r["key"] == id && !r["value"].is_null())
        .map(|r| (r["epoch"].as_u64().unwrap_or(0), !r["suspended"].as_bool().unwrap_or(false)))
        .collect()
}

/// The worker's gossip epoch, as its data directory records it.
fn epoch_of(c: &Cluster) -> u64 {
    let text = std::fs::read_to_string(c.data_dir(WORKER).join("epoch")).expect("epoch file");
    text.trim().parse().expect("a number")
}

/// Whether redis answers a new connection through `host`'s published port.
fn pong(c: &Cluster, host: &str) -> bool {
    Lab::run_in(&c.lab.host(CLIENT).netns, "timeout", &["0.3", "redis-cli", "-h", host, "-p", "6379", "ping"])
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
}

fn restart(c: &mut Cluster, graceful: bool) {
    if graceful {
        assert!(c.stop_daemon(WORKER), "the daemon exits 0 on SIGTERM:\n{}", c.log(WORKER));
    } else {
        c.kill_daemon(WORKER);
    }
    std::thread::sleep(Duration::from_millis(500));
    c.start_daemon(WORKER);
}

#[test]
fn tasks_outlive_their_daemon_and_the_next_one_adopts_them() {
    let mut c = Cluster::start_swarm_with_clients(3, 1, &["--live-restore"]);
    let on_worker = "node.hostname==node2";
    c.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "redis",
            "--constraint",
            on_worker,
            "-p",
            "6379:6379",
            "--health-cmd",
            "redis-cli ping",
            "--health-interval",
            "500ms",
            "redis-server",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    // Task to task through a VIP: a client on the worker, three echo
    // servers elsewhere, balanced round robin: only the flow's saved state
    // sends its packets to the same server after the restart.
    c.cli(0, &["network", "create", "-d", "overlay", "front"]);
    let elsewhere = "node.hostname!=node2";
    let echo = ["service", "create", "--name", "echo", "--replicas", "3", "--network", "front"];
    c.cli(0, &[&echo[..], &["--constraint", elsewhere, "python3", "-c", ECHO]].concat());
    let holder = ["service", "create", "--name", "holder", "--network", "front", "--constraint", on_worker];
    c.cli(0, &[&holder[..], &["python3", "-c", HOLDER]].concat());
    let echoed = |c: &Cluster| -> u64 {
        c.cli(0, &["service", "logs", "holder"])
            .lines()
            .filter_map(|l| l.rsplit("echoed ").next()?.trim().parse().ok())
            .max()
            .unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(20), || echoed(&c) > 0), "the holder echoes");
    let holder_task = running(&c, "holder");
    let tick = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.05; done";
    c.cli(0, &["service", "create", "--name", "logger", "--constraint", on_worker, "sh", "-c", tick]);
    let redis = running(&c, "redis");
    let logger = running(&c, "logger");
    assert_eq!((redis.len(), logger.len()), (1, 1));
    let (redis_id, logger_id) = (redis[0].0.clone(), logger[0].0.clone());
    let shims = [shim_pid(&c, WORKER, &redis_id), shim_pid(&c, WORKER, &logger_id)];
    let sandboxes = c.task_sandboxes(WORKER);
    let epoch = epoch_of(&c);
    assert!(
        wait_until(Duration::from_secs(20), || service_rows(&c, 0, &redis_id) == [(epoch, true)]),
        "the manager sees redis's row"
    );

    // SIGKILL, then SIGTERM (an upgrade): each time a client outside the
    // swarm holds one connection through node1's published port.
    for graceful in [false, true] {
        let held = Held::start(&c, 0, 12);
        std::thread::sleep(Duration::from_secs(3));
        let how = if graceful { "SIGTERM" } else { "SIGKILL" };
        restart(&mut c, graceful);
        // New connections through node1 (the task is across the overlay)
        // and through node2 itself, from the restarted daemon's start.
        let t0 = std::time::Instant::now();
        let hosts = [c.lab.host(0).underlay.to_string(), c.lab.host(WORKER).underlay.to_string()];
        let mut first = [None, None];
        while t0.elapsed() < Duration::from_secs(10) && first.iter().any(Option::is_none) {
            for (seen, host) in first.iter_mut().zip(&hosts) {
                if seen.is_none() && pong(&c, host) {
                    *seen = Some(t0.elapsed());
                }
            }
        }
        println!(
            "live restore ({how}): first new connection {:?} via node1, {:?} via node2",
            first[0], first[1]
        );
        assert!(first.iter().all(Option::is_some), "new connections work after the restart ({how})");
        let r = held.result();
        println!(
            "live restore ({how}): held connection {} pings, longest pause {:.0} ms, error {}",
            r["pings"], r["max_ms"], r["error"]
        );
        assert_eq!(
            r["errors"],
            0,
            "the held connection failed across the restart ({how}): {r}\n{}",
            c.log(WORKER)
        );

        // The same processes, no replacement, the same epoch in gossip.
        assert_eq!(running(&c, "redis"), redis, "({how})");
        assert_eq!(running(&c, "logger"), logger, "({how})");
        assert_eq!((all_tasks(&c, "redis"), all_tasks(&c, "logger")), (1, 1), "no task was replaced ({how})");
        assert!(shims.iter().all(|p| alive(*p)), "the shims lived on ({how})");
        assert_eq!([shim_pid(&c, WORKER, &redis_id), shim_pid(&c, WORKER, &logger_id)], shims);
        assert_eq!(c.task_sandboxes(WORKER), sandboxes, "the sandboxes were adopted ({how})");
        assert_eq!(epoch_of(&c), epoch, "the epoch was resumed ({how})");
        // The holder's connection through the VIP went on.
        let before = echoed(&c);
        assert!(
            wait_until(Duration::from_secs(10), || echoed(&c) > before + 20),
            "the holder's VIP connection goes on ({how}): {}",
            c.cli(0, &["service", "logs", "holder"])
        );
        let logs = c.cli(0, &["service", "logs", "holder"]);
        assert!(!logs.contains("failed"), "the holder's VIP connection failed ({how}): {logs}");
        assert_eq!(running(&c, "holder"), holder_task, "the holder was not restarted ({how})");
        for i in 0..3 {
            assert_eq!(service_rows(&c, i, &redis_id), [(epoch, true)], "node{} holds redis's row", i + 1);
        }
    }

    // The restarted daemon runs its adopted tasks as its own: exec, health.
    let pong = c.cli(WORKER, &["task", "exec", &redis_id, "--", "redis-cli", "ping"]);
    assert_eq!(pong.trim(), "PONG");
    let health = || {
        let t: Value = serde_json::from_str(&c.cli(0, &["task", "inspect", &redis_id])).unwrap();
        t[0]["Status"]["Health"].as_str().map(str::to_owned)
    };
    let healthy = wait_until(Duration::from_secs(10), || health().as_deref() == Some("healthy"));
    assert!(healthy, "redis is healthy: {:?}", health());

    // Nothing the logger printed while no daemon read was lost.
    let complete = wait_until(Duration::from_secs(10), || {
        let t = ticks(&c);
        t.len() > 100 && t.windows(2).all(|w| w[1] == w[0] + 1)
    });
    let t = ticks(&c);
    let gaps: Vec<_> = t.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert!(complete, "the logger's output has gaps: {gaps:?} in {} lines", t.len());

    // Removing the services stops the adopted tasks and leaves nothing.
    c.cli(0, &["service", "rm", "redis", "logger", "holder", "echo"]);
    let gone = wait_until(Duration::from_secs(30), || {
        c.task_sandboxes(WORKER).is_empty() && shims.iter().all(|p| !alive(*p))
    });
    assert!(gone, "adopted tasks stopped: {:?}", c.task_sandboxes(WORKER));
    for name in &sandboxes {
        assert!(!shoal_runtime::NetNs::exists(name), "{name} was removed");
    }
    let left = std::fs::read_dir(c.data_dir(WORKER).join("tasks")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "no task directory left");
}
