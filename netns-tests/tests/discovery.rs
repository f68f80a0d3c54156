//! Service discovery on a 3-node swarm of real daemons: names resolve in
//! every task through 127.0.0.11 (glibc, dig, Python), a VIP balances real
//! connections across tasks on all nodes, and tasks that go (killed,
//! scaled down, drained, unhealthy, their node dead) stop getting new
//! connections while the others keep theirs.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use netns_tests::cluster::Cluster;
use netns_tests::wait_until;
use serde_json::Value;
use shoal_lab::Lab;

/// A backend: HTTP on 8000 answering its hostname; on 7000, its hostname
/// line and then an echo of whatever the client sends, until it closes; on
/// 7001, its hostname line and a close (the server closes first, so the
/// client can reuse its port at once).
const BACKEND: &str = r#"
import http.server, socket, threading
name = socket.gethostname()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
def echo(c):
    c.sendall((name + "\n").encode())
    while True:
        d = c.recv(4096)
        if not d:
            break
        c.sendall(d)
    c.close()
def hold():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7000))
    s.listen(256)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
def tell():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7001))
    s.listen(256)
    while True:
        c, _ = s.accept()
        c.sendall((name + "\n").encode())
        c.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 7002))
    while True:
        _, peer = s.recvfrom(2048)
        s.sendto(name.encode(), peer)
threading.Thread(target=hold, daemon=True).start()
threading.Thread(target=tell, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"#;

fn swarm_with(args: &[&str]) -> Cluster {
    let c = Cluster::start_swarm_with(3, args);
    c.cli(0, &["network", "create", "-d", "overlay", "front"]);
    c
}

/// Creates a service and waits until it converged.
fn create(c: &Cluster, args: &[&str]) {
    let mut all = vec!["service", "create", "--update-monitor", "0s"];
    all.extend_from_slice(args);
    c.cli(0, &all);
}

/// Running tasks of `service`: (id, node index, address).
fn running(c: &Cluster, service: &str) -> Vec<(String, usize, String)> {
    let rows = c.cli(0, &["service", "ps", "--no-trunc", "--format", "json", service]);
    rows.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a row"))
        .filter(|r| {
            r["DesiredState"] == "Running" && r["CurrentState"].as_str().unwrap_or("").starts_with("Running")
        })
        .map(|r| {
            let id = r["ID"].as_str().unwrap().to_owned();
            let node = r["Node"].as_str().unwrap().trim_start_matches("node").parse::<usize>().unwrap() - 1;
            let t: Value = serde_json::from_str(&c.cli(0, &["task", "inspect", &id])).unwrap();
            let addr = t[0]["NetworksAttachments"][0]["Addresses"][0].as_str().unwrap();
            (id, node, addr.split('/').next().unwrap().to_owned())
        })
        .collect()
}

/// A service's VIP on its first network.
fn vip(c: &Cluster, service: &str) -> String {
    let s: Value = serde_json::from_str(&c.cli(0, &["service", "inspect", service])).unwrap();
    s[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap().split('/').next().unwrap().to_owned()
}

/// Runs `argv` inside task `task` on node `node`; its stdout, or a panic.
fn exec(c: &Cluster, (task, node): (&str, usize), argv: &[&str]) -> String {
    let mut args = vec!["task", "exec", task, "--"];
    args.extend_from_slice(argv);
    let out = c.try_cli(node, &args);
    assert!(out.status.success(), "{argv:?} in {task}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(c: &Cluster, at: (&str, usize), script: &str) -> String {
    exec(c, at, &["sh", "-c", script])
}

/// Whether `argv` succeeds inside task `task` on node `node`.
fn succeeds(c: &Cluster, (task, node): (&str, usize), argv: &[&str]) -> bool {
    let mut args = vec!["task", "exec", task, "--"];
    args.extend_from_slice(argv);
    c.try_cli(node, &args).status.success()
}

/// The hostnames (task short ids) that answered `n` fresh connections to
/// `url` from `at`, counted.
fn spread(c: &Cluster, at: (&str, usize), url: &str, n: usize) -> BTreeMap<String, usize> {
    let out = sh(c, at, &format!("for i in $(seq {n}); do curl -s --max-time 5 {url}; echo; done"));
    let mut counts = BTreeMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    counts
}

/// The hostname a task answers with: the first 12 characters of its id.
fn host_of(task: &str) -> String {
    task[..12].to_owned()
}

#[test]
fn names_resolve_in_every_task_and_unknown_ones_go_upstream() {
    // An upstream resolver inside the lab, on node1's underlay address.
    let c = swarm_with(&["--dns", "198.18.0.1"]);
    let upstream = c.lab.host(0).clone();
    let mut dnsmasq = Lab::command_in(&upstream.netns, "dnsmasq");
    dnsmasq
        .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces", "--port=53"])
        .arg(format!("--listen-address={}", upstream.underlay))
        .args(["--address=/external.test/192.0.2.7", "--pid-file="])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let dnsmasq = c.lab.spawn(&mut dnsmasq).expect("run dnsmasq (install dnsmasq-base)");

    c.cli(0, &["network", "create", "-d", "overlay", "back"]);
    let backend = ["python3", "-c", BACKEND];
    let mut web = vec![
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "name=front,alias=www",
        "--dns-ttl",
        "7s",
        "--publish",
        "published=8080,target=8000,name=http",
    ];
    web.extend(backend);
    create(&c, &web);
    create(
        &c,
        &[
            "--name",
            "db",
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "front",
            "sleep",
            "600",
        ],
    );
    create(&c, &["--name", "hidden", "--network", "back", "sleep", "600"]);
    // A service of stack `demo`, as `stack deploy` names it: its short name
    // answers too.
    let stack = ["--label", "com.docker.stack.namespace=demo"];
    create(&c, &[&["--name", "demo_cache", "--network", "front"][..], &stack, &["sleep", "600"]].concat());
    let on_node2 = ["--constraint", "node.hostname==node2"];
    create(&c, &[&["--name", "client", "--network", "front"][..], &on_node2, &["sleep", "600"]].concat());
    let (client, node, _) = running(&c, "client").remove(0);
    let at = (client.as_str(), node);
    let web_vip = vip(&c, "web");
    let web_tasks: BTreeSet<String> = running(&c, "web").into_iter().map(|(_, _, ip)| ip).collect();
    let db_tasks: BTreeSet<String> = running(&c, "db").into_iter().map(|(_, _, ip)| ip).collect();
    let lines = |text: String| -> BTreeSet<String> { text.lines().map(str::to_owned).collect() };

    // The resolver every task has, and docker's resolv.conf.
    let resolv = exec(&c, at, &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 127.0.0.11") && resolv.contains("options ndots:0"), "{resolv}");

    // Names, over UDP and TCP; the VIP, dnsrr, tasks., aliases, task names.
    let eventually = |script: &str, want: &BTreeSet<String>| {
        wait_until(Duration::from_secs(15), || lines(sh(&c, at, script)) == *want)
    };
    let vip_set: BTreeSet<String> = [web_vip.clone()].into();
    assert!(eventually("dig +short web", &vip_set), "web: {}", sh(&c, at, "dig web"));
    assert_eq!(lines(sh(&c, at, "dig +short +tcp web")), vip_set, "over TCP");
    assert_eq!(lines(sh(&c, at, "dig +short WWW.")), vip_set, "an alias, any case, with the dot");
    assert!(eventually("dig +short tasks.web", &web_tasks), "tasks.web: {}", sh(&c, at, "dig tasks.web"));
    assert!(eventually("dig +short db", &db_tasks), "dnsrr: {}", sh(&c, at, "dig db"));
    let cache: BTreeSet<String> = [vip(&c, "demo_cache")].into();
    assert!(eventually("dig +short cache", &cache), "a stack's short name: {}", sh(&c, at, "dig cache"));
    assert_eq!(lines(sh(&c, at, "dig +short demo_cache")), cache);
    let (web1, _, web1_ip) = running(&c, "web").remove(0);
    let slot = c.cli(0, &["service", "ps", "--no-trunc", "--format", "{{.Name}} {{.ID}}", "web"]);
    let name = slot.lines().find(|l| l.ends_with(&web1)).unwrap().replace(' ', ".");
    assert_eq!(lines(sh(&c, at, &format!("dig +short {name}"))), [web1_ip].into(), "a task name");

    // The service's TTL, PTR, SRV with its port, and AAAA answered at once.
    let answer = sh(&c, at, "dig +noall +answer web");
    assert!(answer.split_whitespace().nth(1) == Some("7"), "TTL 7: {answer}");
    assert_eq!(sh(&c, at, &format!("dig +short -x {web_vip}")).trim(), "web.");
    assert_eq!(sh(&c, at, "dig +short SRV _http._tcp.web").trim(), "0 1 8000 web.");
    let aaaa = sh(&c, at, "dig AAAA web");
    assert!(aaaa.contains("status: NOERROR") && aaaa.contains("ANSWER: 0"), "{aaaa}");

    // glibc and Python, AF_UNSPEC: the VIP, with no stall on AAAA.
    assert!(sh(&c, at, "getent hosts web").starts_with(&web_vip));
    assert!(sh(&c, at, "timeout 5 getent ahosts web").lines().all(|l| l.starts_with(&web_vip)));
    let py = "import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('web', 8000)}))";
    assert_eq!(exec(&c, at, &["python3", "-c", py]).trim(), format!("['{web_vip}']"));

    // Another network's service is not visible; unknown names go upstream.
    assert_eq!(sh(&c, at, "dig +short hidden").trim(), "", "hidden is on another network");
    assert_eq!(sh(&c, at, "dig +short external.test").trim(), "192.0.2.7", "answered by the upstream");

    // With the upstream gone: SERVFAIL, not a hang (dig would wait 5 s).
    c.lab.stop(dnsmasq, Duration::from_secs(5)).expect("stop dnsmasq");
    let down = sh(&c, at, "dig +tries=1 +time=5 external.test");
    assert!(down.contains("status: SERVFAIL"), "{down}");

    // The counters saw it all.
    let i = node;
    assert!(c.metric(i, "shoal_dns_queries_total{type=\"A\"}") > 0.0);
    assert!(c.metric(i, "shoal_dns_forwarded_total") >= 1.0);
    assert!(c.metric(i, "shoal_dns_responses_total{rcode=\"SERVFAIL\"}") >= 1.0);

    // The VIP answers pings itself, and carries UDP.
    assert!(succeeds(&c, at, &["ping", "-c", "1", "-W", "2", "web"]), "ping web");
    let udp = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b'?', ('web', 7002)); print(s.recv(100).decode())";
    let answered = wait_until(Duration::from_secs(10), || succeeds(&c, at, &["python3", "-c", udp]));
    assert!(answered, "UDP through the VIP");
    let names: BTreeSet<String> = running(&c, "web").iter().map(|(id, _, _)| host_of(id)).collect();
    assert!(names.contains(exec(&c, at, &["python3", "-c", udp]).trim()));

    // `network inspect --verbose` and `debug directory` show the services.
    let net: Value = serde_json::from_str(&c.cli(0, &["network", "inspect", "--verbose", "front"])).unwrap();
    assert_eq!(net[0]["Services"]["web"]["VIP"], web_vip.as_str(), "{net}");
    assert_eq!(net[0]["Services"]["web"]["Tasks"].as_array().unwrap().len(), 3);
    let dir = c.cli(1, &["debug", "directory"]);
    assert!(dir.contains("\"web\""), "{dir}");

    // With the manager gone, names still resolve and the VIP still
    // balances over the tasks left (node1's died with its daemon).
    let mut c = c;
    c.kill_daemon(0);
    assert_eq!(lines(sh(&c, at, "dig +short web")), vip_set);
    let serving = wait_until(Duration::from_secs(20), || {
        succeeds(
            &c,
            at,
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8 9 10; do curl -sf --max-time 2 http://web:8000/ || exit 1; done",
            ],
        )
    });
    assert!(serving, "the VIP balances without the manager");
}

#[test]
fn a_vip_balances_across_nodes_and_follows_tasks_that_go() {
    let mut c = swarm_with(&[]);
    let mut web = vec!["--name", "web", "--replicas", "5", "--network", "front", "python3", "-c"];
    web.push(BACKEND);
    create(&c, &web);
    create(&c, &["--name", "client", "--mode", "global", "--network", "front", "sleep", "600"]);
    create(
        &c,
        &[
            "--name",
            "redis",
            "--network",
            "front",
            "redis-server",
            "--port",
            "6379",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    let clients: BTreeMap<usize, String> =
        running(&c, "client").into_iter().map(|(id, node, _)| (node, id)).collect();
    assert_eq!(clients.len(), 3, "one client per node");
    let client = |i: usize| (clients[&i].as_str(), i);

    // Real redis through its VIP, from the nodes that do not run it.
    let redis_node = running(&c, "redis")[0].1;
    for i in (0..3).filter(|i| *i != redis_node) {
        let pong = wait_until(Duration::from_secs(15), || {
            succeeds(&c, client(i), &["sh", "-c", "redis-cli -h redis ping | grep -qx PONG"])
        });
        assert!(pong, "redis from node{}", i + 1);
        assert_eq!(sh(&c, client(i), &format!("redis-cli -h redis set k{i} v{i}")).trim(), "OK");
    }
    assert_eq!(
        sh(&c, client(redis_node), "redis-cli -h redis get k0 ; redis-cli -h redis get k1").lines().count(),
        2
    );

    // Round-robin: 1000 new connections spread within ±20 % per task.
    let tasks = running(&c, "web");
    assert!(wait_until(Duration::from_secs(15), || spread(&c, client(0), "http://web:8000/", 10).len() == 5));
    let counts = spread(&c, client(0), "http://web:8000/", 1000);
    let expected: BTreeSet<String> = tasks.iter().map(|(id, _, _)| host_of(id)).collect();
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every task, on every node: {counts:?}"
    );
    for (task, n) in &counts {
        assert!((160..=240).contains(n), "{task} got {n} of 1000: {counts:?}");
    }

    // A connection held through the VIP to one of node1's tasks (node2 gets
    // drained and node3 killed below), across everything that follows.
    let open_hold = |c: &Cluster| -> Holder {
        let mut reached = Vec::new();
        for _ in 0..20 {
            let h = Holder::open(c, client(0));
            let on_node1 = running(c, "web").iter().any(|(id, n, _)| *n == 0 && host_of(id) == h.held);
            if on_node1 {
                return h;
            }
            reached.push(h.held.clone());
        }
        panic!("no connection reached a task on node1: reached {reached:?}, tasks {:?}", running(c, "web"));
    };
    let mut hold = open_hold(&c);
    assert_eq!(hold.echo("hello"), "hello");
    let held = hold.held.clone();

    // Kill another task's process: once the directory knows, no new
    // connection reaches it; the held one is untouched.
    let (victim, victim_node, _) = tasks.iter().find(|(id, _, _)| host_of(id) != held).cloned().unwrap();
    let cgroup =
        shoal_runtime::Cgroup::open(&format!("{}-t{}", c.lab.host(victim_node).netns, &victim[..10]));
    for pid in cgroup.pids() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let victim_host = host_of(&victim);
    assert!(
        wait_until(Duration::from_secs(20), || !spread(&c, client(0), "http://web:8000/", 50)
            .contains_key(&victim_host)),
        "the killed task still gets connections"
    );
    assert_eq!(hold.echo("still"), "still", "the held connection survived");

    // Scale down: the removed tasks get nothing new.
    c.cli(0, &["service", "scale", "web=3"]);
    let kept: BTreeSet<String> = running(&c, "web").into_iter().map(|(id, _, _)| host_of(&id)).collect();
    assert!(wait_until(Duration::from_secs(20), || spread(&c, client(2), "http://web:8000/", 60)
        .keys()
        .all(|k| kept.contains(k))));
    if kept.contains(&hold.held) {
        assert_eq!(hold.echo("scaled"), "scaled", "the held connection survived");
    } else {
        hold = open_hold(&c); // its task was one of those removed
    }

    // Drain node2: its tasks move away and get nothing new.
    let leaving: BTreeSet<String> =
        running(&c, "web").into_iter().filter(|(_, n, _)| *n == 1).map(|(id, _, _)| host_of(&id)).collect();
    c.cli(0, &["node", "update", "--availability", "drain", "node2"]);
    assert!(wait_until(Duration::from_secs(30), || {
        let seen = spread(&c, client(2), "http://web:8000/", 30);
        seen.len() == 3 && seen.keys().all(|k| !leaving.contains(k))
    }));
    c.cli(0, &["node", "update", "--availability", "active", "node2"]);
    assert_eq!(hold.echo("drained"), "drained", "the held connection survived");

    // A dead node's tasks leave at once: kill node3's daemon (its tasks die
    // with it) and the VIP stops sending there.
    let doomed: BTreeSet<String> =
        running(&c, "web").into_iter().filter(|(_, n, _)| *n == 2).map(|(id, _, _)| host_of(&id)).collect();
    c.kill_daemon(2);
    assert!(wait_until(Duration::from_secs(20), || {
        let seen = spread(&c, client(0), "http://web:8000/", 30);
        !seen.is_empty() && seen.keys().all(|k| !doomed.contains(k))
    }));
    assert_eq!(hold.echo("last"), "last", "the held connection survived");
}

/// A connection held through a VIP from a task: the hostname of the task it
/// reached, and an echo over it.
struct Holder {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
    held: String,
}

impl Holder {
    /// Opens a connection to `web:7000` from task `task` on node `node`.
    fn open(c: &Cluster, (task, node): (&str, usize)) -> Holder {
        let script = r#"
import socket, sys
s = socket.create_connection(("web", 7000), timeout=5)
print(s.makefile().readline().strip(), flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    s.sendall(line.encode())
    print(s.recv(4096).decode().strip(), flush=True)
"#;
        let mut child = std::process::Command::new(netns_tests::shoal_bin())
            .arg("-H")
            .arg(format!("unix://{}", c.socket(node).display()))
            .args(["task", "exec", task, "--", "python3", "-u", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("hold a connection");
        let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
        let input = child.stdin.take().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut output, &mut line).unwrap();
        Holder { child, input, output, held: line.trim().to_owned() }
    }

    /// Sends `word` and reads what comes back.
    fn echo(&mut self, word: &str) -> String {
        use std::io::{BufRead, Write};
        writeln!(self.input, "{word}").unwrap();
        let mut reply = String::new();
        self.output.read_line(&mut reply).unwrap();
        reply.trim().to_owned()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn policies_pin_hash_and_prefer_the_idle_task() {
    let c = swarm_with(&[]);
    let mut base = vec!["--replicas", "4", "--network", "front"];
    base.extend(["python3", "-c", BACKEND]);
    let service = |name: &str, extra: &[&str]| {
        let mut args = vec!["--name", name];
        args.extend_from_slice(extra);
        args.extend(base.iter().copied());
        create(&c, &args);
    };
    service("sticky", &["--lb-affinity", "client-ip"]);
    service("hash", &["--lb", "maglev"]);
    create(&c, &["--name", "client", "--network", "front", "sleep", "600"]);
    let (client, node, _) = running(&c, "client").remove(0);
    let at = (client.as_str(), node);
    assert!(wait_until(Duration::from_secs(15), || !spread(&c, at, "http://sticky:8000/", 1).is_empty()));

    // Client-IP affinity: one client, one task.
    let pinned = spread(&c, at, "http://sticky:8000/", 50);
    assert_eq!(pinned.len(), 1, "{pinned:?}");

    // Maglev: the same flows (same source ports) keep their task when one
    // of four goes, except the flows of the one that went.
    let by_port = |at| -> BTreeMap<u16, String> {
        let script = r#"
import socket
for port in range(41000, 41200):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", port))
    s.settimeout(5)
    s.connect(("hash", 7001))
    print(port, s.makefile().readline().strip())
    s.close()
"#;
        let out = exec(&c, at, &["python3", "-c", script]);
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(p, h)| (p.parse().unwrap(), h.to_owned()))
            .collect()
    };
    let before = by_port(at);
    assert_eq!(before.len(), 200);
    let names: BTreeSet<&String> = before.values().collect();
    assert_eq!(names.len(), 4, "maglev spreads: {names:?}");
    // Closed flows leave the connection table before the second round.
    assert!(wait_until(Duration::from_secs(30), || c.metric(node, "shoal_conntrack_entries") == 0.0));
    c.cli(0, &["service", "scale", "hash=3"]);
    // The client's node knows the task went (its directory, hence its VIP).
    assert!(wait_until(Duration::from_secs(15), || sh(&c, at, "dig +short tasks.hash").lines().count() == 3));
    let after = by_port(at);
    assert_eq!(after.len(), 200, "every connection answered");
    let gone: BTreeSet<&String> =
        names.iter().copied().filter(|n| !after.values().any(|a| a == *n)).collect();
    assert_eq!(gone.len(), 1, "one task went: {gone:?}");
    let moved = before.iter().filter(|(p, h)| !gone.contains(h) && after[*p] != **h).count();
    assert!(moved <= 200 / 4 / 5, "flows of the remaining tasks moved: {moved} of 200");

    // Least connections: with connections held on one task, the next goes
    // to an idle one.
    create(
        &c,
        &[
            "--name",
            "lc",
            "--replicas",
            "2",
            "--lb",
            "least-conn",
            "--network",
            "front",
            "python3",
            "-c",
            BACKEND,
        ],
    );
    let script = r#"
import socket
held = []
for i in range(3):
    s = socket.create_connection(("lc", 7000), timeout=5)
    held.append((s, s.makefile().readline().strip()))
names = [n for _, n in held]
fresh = socket.create_connection(("lc", 7000), timeout=5)
print(" ".join(names), fresh.makefile().readline().strip())
"#;
    let connect = "import socket; socket.create_connection(('lc', 7000), timeout=2)";
    assert!(wait_until(Duration::from_secs(15), || succeeds(&c, at, &["python3", "-c", connect])));
    let out = exec(&c, at, &["python3", "-c", script]);
    let names: Vec<&str> = out.split_whitespace().collect();
    let held: BTreeMap<&str, usize> = names[..3].iter().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(*n).or_default() += 1;
        m
    });
    assert_eq!(held.len(), 2, "held connections go to both tasks: {out}");
    let busiest = held.iter().max_by_key(|(_, n)| **n).map(|(name, _)| *name).unwrap();
    assert_ne!(names[3], busiest, "the fresh connection went to the busier task: {out}");
}

#[test]
fn an_unhealthy_task_leaves_dns_and_the_vip_and_bad_queries_are_counted() {
    let c = swarm_with(&[]);
    let mut hc = vec![
        "--name",
        "hc",
        "--replicas",
        "2",
        "--network",
        "front",
        "--health-cmd",
        "test ! -f /tmp/sick",
        "--health-interval",
        "500ms",
        "--health-retries",
        "1",
        "--restart-delay",
        "30s",
    ];
    hc.extend(["python3", "-c", BACKEND]);
    create(&c, &hc);
    create(&c, &["--name", "client", "--network", "front", "sleep", "600"]);
    let (client, node, _) = running(&c, "client").remove(0);
    let at = (client.as_str(), node);
    assert!(
        wait_until(Duration::from_secs(20), || spread(&c, at, "http://hc:8000/", 20).len() == 2),
        "both healthy"
    );
    let (sick, sick_node, sick_ip) = running(&c, "hc").remove(0);
    exec(&c, (&sick, sick_node), &["touch", "/tmp/sick"]);
    assert!(
        wait_until(Duration::from_secs(20), || !spread(&c, at, "http://hc:8000/", 20)
            .contains_key(&host_of(&sick))),
        "the unhealthy task still gets connections"
    );
    assert!(!sh(&c, at, "dig +short tasks.hc").contains(&sick_ip), "the unhealthy task is out of DNS");

    // Garbage at the resolver is dropped and counted; it keeps answering.
    let garbage = r#"
import socket, os
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in [0, 5, 11, 40, 600, 3000]:
    s.sendto(os.urandom(n), ("127.0.0.11", 53))
s.sendto(b"\x12\x34\x81\x80" + b"\x00" * 8, ("127.0.0.11", 53))  # a response
"#;
    exec(&c, at, &["python3", "-c", garbage]);
    let before = c.metric(node, "shoal_dns_dropped_total{reason=\"response\"}");
    assert!(
        wait_until(Duration::from_secs(5), || c.metric(node, "shoal_dns_dropped_total{reason=\"response\"}")
            >= 1.0),
        "{before}"
    );
    assert!(!sh(&c, at, "dig +short hc").trim().is_empty(), "the resolver still answers");

    // A flood of unknown names (no upstream answers in a lab) is bounded.
    let flood = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5000):
    name = b"".join(bytes([len(p)]) + p for p in [b"n%d" % i, b"example", b"invalid"]) + b"\x00"
    s.sendto(struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01", ("127.0.0.11", 53))
"#;
    exec(&c, at, &["python3", "-c", flood]);
    assert!(!sh(&c, at, "dig +short hc").trim().is_empty(), "the resolver still answers after a flood");
    assert!(
        c.metric(node, "shoal_dns_forwards_refused_total")
            + c.metric(node, "shoal_dns_forward_failures_total")
            > 0.0
    );
}
