//! Services on a 3-node swarm of real daemons: real `python3 -m
//! http.server` tasks in their own namespaces on the overlay, placed,
//! scaled, rolled, restarted, rescheduled and removed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use netns_tests::cluster::Cluster;
use netns_tests::wait_until;
use serde_json::Value;

/// A swarm of node1 (manager) and node2, node3 (workers), heartbeats 1 s,
/// with the overlay network `front`.
fn swarm() -> Cluster {
    let c = Cluster::start_swarm(3);
    c.cli(0, &["network", "create", "-d", "overlay", "front"]);
    c
}

/// The tasks of `service`, newest first per slot: docker's task object
/// (`task inspect`), with the hostname of its node under `Node`, as
/// `service ps --format json` names it.
fn tasks(c: &Cluster, service: &str) -> Vec<Value> {
    let rows: Vec<Value> = c
        .cli(0, &["service", "ps", "--no-trunc", "--format", "json", service])
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let mut args = vec!["task", "inspect"];
    args.extend(rows.iter().map(|r| r["ID"].as_str().expect("an ID")));
    if rows.is_empty() {
        return Vec::new();
    }
    // A task dropped from history meanwhile is left out (and named on stderr).
    let out = c.try_cli(0, &args);
    let objects: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    objects
        .into_iter()
        .map(|mut t| {
            let row = rows.iter().find(|r| r["ID"] == t["ID"]).expect("listed");
            t["Node"] = row["Node"].clone();
            t
        })
        .collect()
}

/// Running tasks wanted running: (id, node hostname).
fn running(c: &Cluster, service: &str) -> Vec<(String, String)> {
    tasks(c, service)
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .map(|t| (t["ID"].as_str().unwrap().to_owned(), t["Node"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn per_node(c: &Cluster, service: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, node) in running(c, service) {
        *counts.entry(node).or_default() += 1;
    }
    counts
}

fn host_of(node: &str) -> usize {
    node.trim_start_matches("node").parse::<usize>().expect("nodeN") - 1
}

/// A task's overlay address.
fn ip_of(c: &Cluster, task: &str) -> String {
    let t: Value = serde_json::from_str(&c.cli(0, &["task", "inspect", task])).unwrap();
    let addr = t[0]["NetworksAttachments"][0]["Addresses"][0].as_str().expect("an address");
    addr.split('/').next().unwrap().to_owned()
}

/// The cgroup name of a task on host `i` (the daemon's task prefix is the
/// host's namespace name).
fn cgroup_of(c: &Cluster, i: usize, task: &str) -> shoal_runtime::Cgroup {
    shoal_runtime::Cgroup::open(&format!("{}-t{}", c.lab.host(i).netns, &task[..10]))
}

/// HTTP GET from inside task `from` (on host `i`) to `url`: the status.
/// Retried for a while: a task is running once its process started, which
/// may be before the server listens.
fn http_from(c: &Cluster, i: usize, from: &str, url: &str) -> String {
    let code = format!("import urllib.request as u; print(u.urlopen({url:?}, timeout=5).status)");
    let mut last = None;
    wait_until(Duration::from_secs(20), || {
        let out = c.try_cli(i, &["task", "exec", from, "--", "python3", "-c", &code]);
        let done = out.status.success();
        last = Some(out);
        done
    });
    let out = last.expect("tried once");
    assert!(out.status.success(), "GET {url} from {from}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything a task leaves is gone: namespaces, cgroups, processes.
fn nothing_left(c: &Cluster) -> bool {
    let prefixes: Vec<String> = (0..3).map(|i| format!("{}-t", c.lab.host(i).netns)).collect();
    let namespaces =
        shoal_runtime::NetNs::list().into_iter().any(|n| prefixes.iter().any(|p| n.starts_with(p)));
    let cgroups = ["memory", "cpu", "pids"].iter().any(|ctrl| {
        std::fs::read_dir(format!("/sys/fs/cgroup/{ctrl}/shoal"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| prefixes.iter().any(|p| e.file_name().to_string_lossy().starts_with(p.as_str())))
    });
    let data = (0..3).any(|i| {
        std::fs::read_dir(c.data_dir(i).join("tasks")).into_iter().flatten().flatten().next().is_some()
    });
    !namespaces && !cgroups && !data
}

#[test]
fn replicas_spread_talk_scale_roll_restart_and_leave_nothing() {
    let c = swarm();
    let out = c.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "5",
            "--network",
            "front",
            "--update-monitor",
            "1s",
            "--restart-delay",
            "1s",
            "python3",
            "-m",
            "http.server",
            "8000",
        ],
    );
    assert!(out.contains("overall progress: 5 out of 5 tasks"), "{out}");
    assert!(out.contains("verify: Waiting 1 seconds to verify that tasks are stable..."), "{out}");
    assert!(out.contains("verify: Service converged"), "{out}");
    let mut counts: Vec<usize> = per_node(&c, "web").into_values().collect();
    counts.sort();
    assert_eq!(counts, vec![1, 2, 2], "five replicas spread 2/2/1");
    let ls = c.cli(0, &["service", "ls"]);
    assert!(
        ls.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"])
    );
    assert!(
        ls.contains("web") && ls.contains("replicated") && ls.contains("5/5") && ls.contains("python3"),
        "{ls}"
    );

    let inspect: Value = serde_json::from_str(&c.cli(0, &["service", "inspect", "web"])).unwrap();
    assert_eq!(inspect[0]["Spec"]["Name"], "web", "docker's shape: {inspect}");
    assert_eq!(inspect[0]["Spec"]["Mode"]["Replicated"]["Replicas"], 5);
    assert_eq!(inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"], "python3");
    assert_eq!(inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"], 10_000_000_000u64);
    assert!(inspect[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap().ends_with("/24"), "{inspect}");

    // From a task on one node to a task on another, by overlay address.
    let all = running(&c, "web");
    let (from, from_node) = all[0].clone();
    let (to, _) = all.iter().find(|(_, n)| *n != from_node).expect("tasks on two nodes").clone();
    let url = format!("http://{}:8000/", ip_of(&c, &to));
    assert_eq!(http_from(&c, host_of(&from_node), &from, &url), "200");
    let logs = c.cli(0, &["service", "logs", "web"]);
    assert!(logs.contains("\"GET / HTTP/1.1\" 200"), "the request shows in the server's log:\n{logs}");

    // Inside a task: its own hostname, private /tmp, the generated hosts file.
    let inside = c.cli(
        host_of(&from_node),
        &[
            "task",
            "exec",
            &from,
            "--",
            "sh",
            "-c",
            "hostname; ls -A /tmp | wc -l; cat /etc/hosts; cat /proc/1/cmdline | tr '\\0' ' '",
        ],
    );
    assert!(inside.starts_with(&from[..12]), "{inside}");
    assert!(inside.lines().nth(1) == Some("0"), "a fresh /tmp:\n{inside}");
    assert!(inside.contains(&ip_of(&c, &from)), "{inside}");

    // Scale down and up again.
    let out = c.cli(0, &["service", "scale", "web=2"]);
    assert!(out.contains("web scaled to 2") && out.contains("verify: Service converged"), "{out}");
    assert_eq!(running(&c, "web").len(), 2);
    c.cli(0, &["service", "scale", "web=5"]);
    assert_eq!(running(&c, "web").len(), 5);

    // A rolling update goes one task at a time (parallelism 1, stop-first).
    let before: Vec<String> = running(&c, "web").into_iter().map(|(id, _)| id).collect();
    c.cli(0, &["service", "update", "--detach", "--env-add", "COLOUR=blue", "web"]);
    let start = Instant::now();
    let mut max_down = 0;
    loop {
        let ts = tasks(&c, "web");
        let inspect: Value = serde_json::from_str(&c.cli(0, &["service", "inspect", "web"])).unwrap();
        let current = &inspect[0]["Spec"]["TaskTemplate"];
        let wanted: Vec<&Value> = ts.iter().filter(|t| t["DesiredState"] == "running").collect();
        let down = 5 - wanted.iter().filter(|t| t["Status"]["State"] == "running").count();
        max_down = max_down.max(down);
        let updated =
            wanted.iter().filter(|t| t["Status"]["State"] == "running" && t["Spec"] == *current).count();
        if updated == 5 && inspect[0]["UpdateStatus"]["State"] == "completed" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "the update did not complete: {ts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(max_down <= 1, "at most one task down at a time, saw {max_down}");
    let after: Vec<String> = running(&c, "web").into_iter().map(|(id, _)| id).collect();
    assert!(after.iter().all(|id| !before.contains(id)), "every task was replaced");
    let env = c.cli(
        host_of(&running(&c, "web")[0].1),
        &["task", "exec", &after[0][..12], "--", "sh", "-c", "echo $COLOUR"],
    );
    let first = &running(&c, "web")[0];
    let env = if env.trim() == "blue" {
        env
    } else {
        c.cli(host_of(&first.1), &["task", "exec", &first.0, "--", "sh", "-c", "echo $COLOUR"])
    };
    assert_eq!(env.trim(), "blue");
    let ps = c.cli(0, &["service", "ps", "web"]);
    assert!(ps.contains(" \\_ web."), "history shows the replaced tasks:\n{ps}");

    // A task whose process is killed is restarted.
    let (victim, node) = running(&c, "web")[0].clone();
    let cgroup = cgroup_of(&c, host_of(&node), &victim);
    let server = cgroup
        .pids()
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains("http.server"))
        })
        .expect("the server process is in the task's cgroup");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || running(&c, "web").len() == 5
            && !running(&c, "web").iter().any(|(id, _)| *id == victim)),
        "the killed task was replaced: {:?}",
        tasks(&c, "web")
    );
    let dead = tasks(&c, "web").into_iter().find(|t| t["ID"] == victim.as_str()).unwrap();
    assert_eq!(dead["Status"]["State"], "failed");
    assert_eq!(dead["Status"]["Err"], "task: non-zero exit (137)");

    // A label constraint places tasks only on labelled nodes.
    c.cli(0, &["node", "update", "--label-add", "disk=ssd", "node3"]);
    c.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "ssd",
            "--replicas",
            "3",
            "--constraint",
            "node.labels.disk==ssd",
            "sleep",
            "600",
        ],
    );
    assert_eq!(per_node(&c, "ssd").into_iter().collect::<Vec<_>>(), vec![("node3".to_owned(), 3)]);
    let out = c.try_cli(
        0,
        &["service", "create", "--name", "nowhere", "--constraint", "node.labels.disk==nvme", "sleep", "600"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no suitable node (scheduling constraints not satisfied on 3 nodes)"), "{err}");

    // A memory limit is enforced: the task is killed and says why.
    let out = c.try_cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "hog",
            "--limit-memory",
            "32M",
            "--restart-condition",
            "none",
            "python3",
            "-c",
            "x = bytearray(256 << 20); import time; time.sleep(60)",
        ],
    );
    assert!(!out.status.success(), "a task over its memory limit does not converge");
    let hog = tasks(&c, "hog");
    assert_eq!(hog[0]["Status"]["State"], "failed", "{hog:?}");
    assert!(hog[0]["Status"]["Err"].as_str().unwrap().contains("out of memory"), "{hog:?}");
    assert_eq!(hog[0]["Status"]["ContainerStatus"]["ExitCode"], 137);

    // Removing the services leaves nothing behind.
    let out = c.cli(0, &["service", "rm", "web", "ssd", "nowhere", "hog"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["web", "ssd", "nowhere", "hog"]);
    assert!(wait_until(Duration::from_secs(30), || nothing_left(&c)), "tasks left something behind");
    assert!(c.cli(0, &["service", "ls", "-q"]).trim().is_empty());
    // With no service on it, the network can go.
    c.cli(0, &["network", "rm", "front"]);
}

#[test]
fn worker_down_and_drain_move_tasks() {
    let mut c = swarm();
    c.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            "--network",
            "front",
            "python3",
            "-m",
            "http.server",
            "8000",
        ],
    );
    assert_eq!(per_node(&c, "web").values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    let err = c.cli_err(0, &["network", "rm", "front"]);
    assert!(err.contains("network front is in use by service web"), "{err}");
    for i in 0..3 {
        // front, and ingress: every node's routing mesh is on it.
        assert_eq!(c.metric(i, "shoal_dataplane_networks"), 2.0, "node{} has tasks on front", i + 1);
    }

    // A global service: one task per node.
    c.cli(0, &["service", "create", "--detach", "--name", "agent", "--mode", "global", "sleep", "600"]);
    assert!(
        wait_until(Duration::from_secs(20), || per_node(&c, "agent").values().copied().collect::<Vec<_>>()
            == [1, 1, 1]),
        "one global task per node: {:?}",
        tasks(&c, "agent")
    );

    // node3's daemon dies: after it is Down, its tasks run elsewhere.
    let task_dirs = |c: &Cluster| -> Vec<String> {
        std::fs::read_dir(c.data_dir(2).join("tasks"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let dead = task_dirs(&c);
    assert!(!dead.is_empty(), "node3 ran tasks");
    c.kill_daemon(2);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let counts = per_node(&c, "web");
            counts.values().sum::<usize>() == 6 && !counts.contains_key("node3")
        }),
        "tasks of the down node were not rescheduled: {:?}",
        tasks(&c, "web")
    );
    assert!(c.cli(0, &["node", "ls"]).lines().any(|l| l.contains("node3") && l.contains("Down")));
    let orphaned = tasks(&c, "web").into_iter().filter(|t| t["Status"]["State"] == "orphaned").count();
    assert_eq!(orphaned, 2, "the down node's tasks are marked orphaned");
    assert!(!per_node(&c, "agent").contains_key("node3"), "a global task is not moved off a down node");
    assert_eq!(per_node(&c, "agent").len(), 2);

    // The daemon comes back: what its predecessor left is removed.
    c.start_daemon(2);
    assert!(wait_until(Duration::from_secs(20), || c
        .cli(0, &["node", "ls"])
        .lines()
        .any(|l| l.contains("node3") && l.contains("Ready"))));
    // (The node may run a new task already: its global one.)
    let left: Vec<String> = task_dirs(&c).into_iter().filter(|d| dead.contains(d)).collect();
    assert!(left.is_empty(), "the restarted daemon removed the dead tasks' leftovers: {left:?}");
    assert!(
        wait_until(Duration::from_secs(20), || per_node(&c, "agent").contains_key("node3")),
        "the node is back: it gets its global task again"
    );

    // Drain empties a node.
    c.cli(0, &["node", "update", "--availability", "drain", "node2"]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let counts = per_node(&c, "web");
            counts.values().sum::<usize>() == 6 && !counts.contains_key("node2")
        }),
        "drain did not move the tasks: {:?}",
        tasks(&c, "web")
    );
    assert!(
        wait_until(Duration::from_secs(10), || c.metric(1, "shoal_dataplane_networks") == 1.0),
        "a network's data plane exists only on nodes with its tasks (and ingress's on every node)"
    );
    assert!(
        wait_until(Duration::from_secs(20), || !per_node(&c, "agent").contains_key("node2")),
        "drain stops the node's global task"
    );
    c.cli(0, &["service", "rm", "web", "agent"]);
    assert!(wait_until(Duration::from_secs(30), || nothing_left(&c)), "tasks left something behind");
}

#[test]
fn bad_flags_and_unknown_names_fail_clearly() {
    let c = swarm();
    let cases: [(&[&str], &str); 10] = [
        (&["service", "create", "--replicas", "many", "sleep", "1"], "invalid value 'many' for '--replicas"),
        (
            &["service", "create", "--restart-condition", "sometimes", "sleep", "1"],
            "[possible values: none, on-failure, any]",
        ),
        (&["service", "create", "--limit-memory", "lots", "sleep", "1"], "invalid size \"lots\""),
        (&["service", "create", "-p", "8080:http", "sleep", "1"], "use [PUBLISHED:]TARGET"),
        (&["service", "create", "--constraint", "node.colour=red", "sleep", "1"], "invalid constraint"),
        (&["service", "create", "--network", "nope", "sleep", "1"], "network nope not found"),
        (
            &["service", "create", "--mode", "global", "--replicas", "2", "sleep", "1"],
            "replicas can only be used with replicated mode",
        ),
        (&["service", "scale", "ghost=2"], "service ghost not found"),
        (&["service", "ps", "ghost"], "service ghost not found"),
        (&["service", "scale", "web"], "invalid scale specifier \"web\""),
    ];
    for (args, expected) in cases {
        let err = c.cli_err(0, args);
        assert!(err.contains(expected), "shoal {args:?}: {err}");
    }
    // Everything after the program is the program's, `-h` and `-q` too.
    c.cli(0, &["service", "create", "--detach", "--name", "flags", "sh", "-c", "sleep 600", "-h", "-q"]);
    let inspect: Value = serde_json::from_str(&c.cli(0, &["service", "inspect", "flags"])).unwrap();
    let spec = &inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert_eq!(spec["Image"], "sh");
    assert_eq!(spec["Args"], serde_json::json!(["-c", "sleep 600", "-h", "-q"]), "{inspect}");
    // `--format json` rows carry docker's field names, nothing else.
    let keys = |args: &[&str]| -> Vec<String> {
        let out = c.cli(0, args);
        let first: Value = serde_json::from_str(out.lines().next().expect("a row")).unwrap();
        first.as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(
        keys(&["service", "ls", "--format", "json"]),
        ["ID", "Image", "Mode", "Name", "Ports", "Replicas"]
    );
    assert_eq!(
        keys(&["service", "ps", "--format", "json", "flags"]),
        ["CurrentState", "DesiredState", "Error", "ID", "Image", "Name", "Node", "Ports"]
    );
    let names = c.cli(0, &["service", "ls", "--format", "{{.Name}}: {{.Mode}}"]);
    assert_eq!(names.trim(), "flags: replicated");
    c.cli(0, &["service", "rm", "flags"]);

    // A program that does not exist is rejected with docker's reason.
    let err = c.cli_err(
        0,
        &["service", "create", "--name", "ghost", "--restart-condition", "none", "no-such-program-here"],
    );
    assert!(err.contains("executable file not found in $PATH"), "{err}");
    // Nothing was created but that one service.
    let ls = c.cli(0, &["service", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 1, "{ls}");
    // Workers cannot manage services.
    let err = c.cli_err(1, &["service", "ls"]);
    assert!(err.contains("this node is not a swarm manager"), "{err}");
}

#[test]
fn task_runtime_user_workdir_env_health_and_stop() {
    let c = swarm();
    c.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "box",
            "--user",
            "nobody",
            "--workdir",
            "/var",
            "--hostname",
            "boxy",
            "-e",
            "GREETING=hello world",
            "--health-cmd",
            "test -d /proc/1",
            "--health-interval",
            "300ms",
            "--limit-pids",
            "50",
            "--limit-cpu",
            "0.5",
            "sleep",
            "600",
        ],
    );
    let (id, node) = running(&c, "box")[0].clone();
    let i = host_of(&node);
    let inside = c.cli(
        i,
        &[
            "task",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "id -un; pwd; hostname; echo $GREETING; cat /proc/1/status | grep -c NSpid",
        ],
    );
    let lines: Vec<&str> = inside.lines().collect();
    assert_eq!(&lines[..4], ["nobody", "/var", "boxy", "hello world"], "{inside}");
    assert!(
        wait_until(Duration::from_secs(10), || tasks(&c, "box")[0]["Status"]["Health"] == "healthy"),
        "the healthcheck reports healthy: {:?}",
        tasks(&c, "box")
    );
    let cgroup = cgroup_of(&c, i, &id);
    assert_eq!(cgroup.pids().len(), 3, "shim, init and the program are in the task's cgroup");
    let pids_max = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/pids/shoal/{}-t{}/pids.max",
        c.lab.host(i).netns,
        &id[..10]
    ));
    if let Ok(max) = pids_max {
        assert_eq!(max.trim(), "50");
    }

    // A failing healthcheck makes the task unhealthy: it is killed and replaced.
    c.cli(
        0,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "sick",
            "--health-cmd",
            "exit 1",
            "--health-interval",
            "200ms",
            "--health-retries",
            "2",
            "--restart-delay",
            "0s",
            "sleep",
            "600",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(20), || tasks(&c, "sick")
            .iter()
            .any(|t| t["Status"]["State"] == "failed")),
        "the unhealthy task failed: {:?}",
        tasks(&c, "sick")
    );
    let failed = tasks(&c, "sick").into_iter().find(|t| t["Status"]["State"] == "failed").unwrap();
    assert_eq!(failed["Status"]["Health"], "unhealthy");
    assert!(failed["Status"]["Err"].as_str().unwrap().contains("healthcheck failed 2 times"), "{failed}");

    // A task that ignores its stop signal is killed after the grace period.
    c.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "stubborn",
            "--stop-grace-period",
            "1s",
            "sh",
            "-c",
            "trap '' TERM; while true; do sleep 1; done",
        ],
    );
    let (stubborn, _) = running(&c, "stubborn")[0].clone();
    c.cli(0, &["service", "update", "--detach", "--force", "stubborn"]);
    assert!(
        wait_until(Duration::from_secs(20), || tasks(&c, "stubborn")
            .iter()
            .any(|t| t["ID"] == stubborn.as_str() && t["Status"]["State"] == "shutdown")),
        "the stubborn task was stopped: {:?}",
        tasks(&c, "stubborn")
    );
    c.cli(0, &["service", "rm", "box", "sick", "stubborn"]);
    assert!(wait_until(Duration::from_secs(30), || nothing_left(&c)), "tasks left something behind");
}
