//! The routing mesh on a 3-node swarm of real daemons, reached from a
//! fourth lab host that runs no daemon (a client on the underlay): real
//! nginx, Python and dnsmasq behind published ports, curl, dig and wrk in
//! front.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use netns_tests::cluster::Cluster;
use netns_tests::{pattern, wait_until};
use serde_json::Value;
use shoal_lab::Lab;
use shoal_runtime::NetNs;

/// The client host: the lab host after the three nodes.
const CLIENT: usize = 3;
/// Size of the download checked byte for byte.
const BIG: usize = 10 << 20;

/// nginx as the tasks run it: on 80 it answers its hostname (the task's
/// short id) and the address the connection came from, and serves `/big`;
/// on 81 it expects a PROXY header and answers the address in it.
const NGINX_SERVERS: &str = r#"
    server {
        listen 80;
        location / { return 200 "$hostname $remote_addr\n"; }
        location = /big { alias WWW/big; }
    }
    server {
        listen 81 proxy_protocol;
        location / { return 200 "$hostname $proxy_protocol_addr\n"; }
    }
"#;

/// A directory the tasks' nginx reads (config, `/big`), outside `/tmp`
/// (each task has a `/tmp` of its own); removed at the end.
struct Www(PathBuf);

impl Www {
    fn new(c: &Cluster) -> Www {
        let dir = PathBuf::from("/var/tmp").join(format!("{}-www", c.lab.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = netns_tests::nginx_conf(&NGINX_SERVERS.replace("WWW", dir.to_str().unwrap()));
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        std::fs::write(dir.join("big"), pattern(BIG, 11)).unwrap();
        Www(dir)
    }

    /// The task's command: nginx, its files in the task's own `/tmp`.
    fn nginx(&self) -> String {
        netns_tests::nginx_command(&self.0.join("nginx.conf"))
    }
}

impl Drop for Www {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A swarm of 3 nodes with a client host beside them.
fn swarm(daemon_args: &[&str]) -> Cluster {
    Cluster::start_swarm_with_clients(3, 1, daemon_args)
}

/// Creates a service running nginx (stopped gracefully, as docker's nginx
/// image is) with `args` before the command, and waits for it.
fn nginx_service(c: &Cluster, www: &Www, args: &[&str]) {
    let mut all = vec!["service", "create", "--stop-signal", "QUIT", "--update-monitor", "0s"];
    all.extend_from_slice(args);
    let command = www.nginx();
    all.extend_from_slice(&["sh", "-c", &command]);
    let out = c.try_cli(0, &all);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.cli(0, &["service", "logs", args[1]])
    );
}

/// Node `i`'s underlay address, where the client reaches it.
fn node(c: &Cluster, i: usize) -> Ipv4Addr {
    c.lab.host(i).underlay
}

/// Runs `program` in the client's namespace.
fn client(c: &Cluster, program: &str, args: &[&str]) -> Output {
    Lab::run_in(&c.lab.host(CLIENT).netns, program, args).expect("run a client program")
}

/// `curl -s` from the client: the body, or None if curl failed.
fn curl(c: &Cluster, url: &str) -> Option<String> {
    let out = client(c, "curl", &["-s", "--max-time", "5", url]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first word of `n` answers to fresh connections to `url` (nginx:
/// the task that answered), an empty string for each failure.
fn answers(c: &Cluster, url: &str, n: usize) -> Vec<String> {
    let script = format!("for i in $(seq {n}); do curl -s --max-time 5 {url} || echo; done");
    let out = client(c, "sh", &["-c", &script]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(' ').next().unwrap_or("").to_owned())
        .collect()
}

/// Running tasks of `service`: (short id, node index).
fn running(c: &Cluster, service: &str) -> Vec<(String, usize)> {
    let rows = c.cli(0, &["service", "ps", "--format", "json", service]);
    rows.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a row"))
        .filter(|r| {
            r["DesiredState"] == "Running" && r["CurrentState"].as_str().unwrap_or("").starts_with("Running")
        })
        .map(|r| {
            let node = r["Node"].as_str().unwrap().trim_start_matches("node").parse::<usize>().unwrap() - 1;
            (r["ID"].as_str().unwrap().to_owned(), node)
        })
        .collect()
}

/// Whether a task of `service` runs on node `i`, one being stopped too.
fn runs_on(c: &Cluster, service: &str, i: usize) -> bool {
    let rows = c.cli(0, &["service", "ps", "--format", "json", service]);
    rows.lines().map(|l| serde_json::from_str::<Value>(l).expect("a row")).any(|r| {
        r["Node"] == format!("node{}", i + 1)
            && r["CurrentState"].as_str().unwrap_or("").starts_with("Running")
    })
}

/// The short ids of `service`'s running tasks.
fn task_names(c: &Cluster, service: &str) -> BTreeSet<String> {
    running(c, service).into_iter().map(|(id, _)| id).collect()
}

/// Node `i`'s mesh sandbox address on `ingress`.
fn mesh_address(c: &Cluster, i: usize) -> String {
    c.json(i, &["debug", "mesh"])["address"].as_str().expect("a mesh address").to_owned()
}

fn inspect(c: &Cluster, service: &str) -> Value {
    let v: Value = serde_json::from_str(&c.cli(0, &["service", "inspect", service])).unwrap();
    v[0].clone()
}

#[test]
fn published_ports_answer_on_every_node_and_reach_every_task() {
    let c = swarm(&[]);
    let www = Www::new(&c);
    nginx_service(
        &c,
        &www,
        &[
            "--name",
            "web",
            "--replicas",
            "5",
            "-p",
            "8080:80",
            "--publish",
            "published=8081,target=81,proxy-protocol=v2",
        ],
    );
    let tasks = task_names(&c, "web");
    assert_eq!(tasks.len(), 5);
    let ls = c.cli(0, &["service", "ls"]);
    assert!(ls.contains("*:8080->80/tcp, *:8081->81/tcp"), "{ls}");
    let ports = &inspect(&c, "web")["Endpoint"]["Ports"];
    assert_eq!(ports[0]["PublishedPort"], 8080, "{ports}");
    assert_eq!(ports[0]["TargetPort"], 80);
    assert_eq!(ports[0]["Protocol"], "tcp");
    assert_eq!(ports[0]["PublishMode"], "ingress");

    // A node with none of web's tasks answers too: node3 is drained first.
    c.cli(0, &["node", "update", "--availability", "drain", "node3"]);
    assert!(
        wait_until(Duration::from_secs(30), || running(&c, "web").len() == 5 && !runs_on(&c, "web", 2)),
        "drain moves web's tasks off node3"
    );
    let tasks = task_names(&c, "web");
    for i in 0..3 {
        let url = format!("http://{}:8080/", node(&c, i));
        assert!(
            wait_until(Duration::from_secs(20), || curl(&c, &url).is_some()),
            "8080 answers on node{}",
            i + 1
        );
        let got: BTreeSet<String> = answers(&c, &url, 15).into_iter().collect();
        assert_eq!(got, tasks, "every task answers through node{}", i + 1);

        // The task sees the mesh's address (as in Swarm); through 8081 and
        // its PROXY header, the client's.
        let mesh = mesh_address(&c, i);
        let plain = curl(&c, &url).unwrap();
        assert_eq!(plain.split_whitespace().nth(1), Some(mesh.as_str()), "{plain}");
        let proxied = curl(&c, &format!("http://{}:8081/", node(&c, i))).expect("8081 answers");
        let client_ip = node(&c, CLIENT).to_string();
        assert_eq!(proxied.split_whitespace().nth(1), Some(client_ip.as_str()), "{proxied}");

        // Keep-alive: three requests on one connection, to one task.
        let out = client(&c, "curl", &["-s", "-w", "%{num_connects}\n", &url, &url, &url]);
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        let connects: u32 = lines.iter().skip(1).step_by(2).map(|n| n.parse::<u32>().unwrap()).sum();
        assert_eq!(connects, 1, "one connection: {text}");
        let hosts: BTreeSet<&str> = lines.iter().step_by(2).map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(hosts.len(), 1, "{text}");

        // 10 MB, byte for byte.
        let file = www.0.join(format!("download-{i}"));
        let out = client(
            &c,
            "curl",
            &[
                "-sf",
                "--max-time",
                "60",
                "-o",
                file.to_str().unwrap(),
                &format!("http://{}:8080/big", node(&c, i)),
            ],
        );
        assert!(out.status.success(), "download through node{}", i + 1);
        assert!(
            std::fs::read(&file).unwrap() == pattern(BIG, 11),
            "the download through node{} differs",
            i + 1
        );
    }
    c.cli(0, &["node", "update", "--availability", "active", "node3"]);

    // The seed's shape: Python's HTTP server on 8000, on every node.
    c.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "counter",
            "-p",
            "8000:8000",
            "python3",
            "-m",
            "http.server",
            "8000",
        ],
    );
    for i in 0..3 {
        let url = format!("http://{}:8000/", node(&c, i));
        let ok = wait_until(Duration::from_secs(20), || {
            let out =
                client(&c, "curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", &url]);
            String::from_utf8_lossy(&out.stdout) == "200"
        });
        assert!(ok, "8000 answers 200 on node{}", i + 1);
    }

    // UDP: dnsmasq answers through every node; each replica names itself.
    let dnsmasq = "exec dnsmasq -k --port 5353 --no-resolv --no-hosts --user=root --log-facility=- \
                   --pid-file=/tmp/dnsmasq.pid --address=/mesh.test/10.9.9.9 --txt-record=whoami.test,$(hostname)";
    c.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "dns",
            "--replicas",
            "2",
            "-p",
            "5353:5353/udp",
            "sh",
            "-c",
            dnsmasq,
        ],
    );
    let dns_tasks = task_names(&c, "dns");
    for i in 0..3 {
        let server = format!("@{}", node(&c, i));
        let dig = |args: &[&str]| {
            let mut all = vec![server.as_str(), "-p", "5353", "+short", "+time=2", "+tries=3"];
            all.extend_from_slice(args);
            String::from_utf8_lossy(&client(&c, "dig", &all).stdout).trim().to_owned()
        };
        assert!(
            wait_until(Duration::from_secs(20), || dig(&["a.mesh.test"]) == "10.9.9.9"),
            "dnsmasq answers through node{}",
            i + 1
        );
        let who = dig(&["TXT", "whoami.test"]);
        assert!(dns_tasks.contains(who.trim_matches('"')), "{who} is one of {dns_tasks:?}");
    }

    // traffic-policy=local: only a node with a task answers, from that task.
    nginx_service(
        &c,
        &www,
        &[
            "--name",
            "near",
            "--constraint",
            "node.hostname==node2",
            "--publish",
            "published=8082,target=80,traffic-policy=local",
        ],
    );
    let near = task_names(&c, "near");
    let url = format!("http://{}:8082/", node(&c, 1));
    assert!(
        wait_until(Duration::from_secs(20), || curl(&c, &url).is_some()),
        "8082 on node2: {}\n{}\n{}\ncurl: {}",
        c.cli(1, &["debug", "mesh"]),
        c.cli(1, &["debug", "directory"]),
        c.cli(0, &["service", "ps", "--no-trunc", "near"]),
        String::from_utf8_lossy(&client(&c, "curl", &["-sS", "-v", "--max-time", "5", &url]).stderr)
    );
    let at_node2 = curl(&c, &url);
    assert!(at_node2.as_deref().is_some_and(|a| near.contains(a.split(' ').next().unwrap())), "{at_node2:?}");
    assert_eq!(curl(&c, &format!("http://{}:8082/", node(&c, 0))), None, "node1 runs no task of near");

    // Host mode: only node3 listens, and its own task answers.
    nginx_service(
        &c,
        &www,
        &[
            "--name",
            "pinned",
            "--constraint",
            "node.hostname==node3",
            "--publish",
            "published=8083,target=80,mode=host",
        ],
    );
    let pinned = task_names(&c, "pinned");
    let url = format!("http://{}:8083/", node(&c, 2));
    assert!(wait_until(Duration::from_secs(10), || curl(&c, &url).is_some()), "8083 on node3");
    let at_node3 = curl(&c, &url).unwrap();
    assert!(pinned.contains(at_node3.split(' ').next().unwrap()), "{at_node3}");
    let refused = client(&c, "curl", &["-s", "--max-time", "5", &format!("http://{}:8083/", node(&c, 0))]);
    assert_eq!(refused.status.code(), Some(7), "nothing listens on node1's 8083");
    // A second task of the port cannot go to the same node.
    c.cli(0, &["service", "scale", "--detach", "pinned=2"]);
    assert!(
        wait_until(Duration::from_secs(10), || c
            .cli(0, &["service", "ps", "--no-trunc", "pinned"])
            .contains("host-mode port already in use on 1 node")),
        "{}",
        c.cli(0, &["service", "ps", "--no-trunc", "pinned"])
    );

    // What the node shows and counts.
    let mesh = c.json(0, &["debug", "mesh"]);
    let listeners = mesh["listeners"].as_array().unwrap();
    for port in ["8080/tcp", "8081/tcp", "8000/tcp", "5353/udp", "8082/tcp"] {
        assert!(listeners.iter().any(|l| l["port"] == port), "{port} in {mesh}");
    }
    assert!(!listeners.iter().any(|l| l["port"] == "8083/tcp"), "host port 8083 is node3's only");
    // Node1 relayed every connection the client opened to its 8080: 15
    // answers, one each for the address, keep-alive and the download, and
    // the first answer waited for.
    let connections = c.metric(0, "shoal_mesh_connections_total{port=\"8080\",protocol=\"tcp\"}");
    assert!(connections >= 19.0, "{connections}");
    let bytes = c.metric(0, "shoal_mesh_bytes_total{port=\"8080\",protocol=\"tcp\",direction=\"to_client\"}");
    assert!(bytes >= BIG as f64, "{bytes}");
    assert!(
        c.metric(0, "shoal_mesh_datagrams_total{port=\"5353\",protocol=\"udp\",direction=\"to_backend\"}")
            >= 2.0
    );

    // A worker that leaves the swarm serves none of its ports any more.
    assert!(c.cli(2, &["swarm", "leave"]).contains("left the swarm"));
    let url = format!("http://{}:8080/", node(&c, 2));
    let refused = || client(&c, "curl", &["-s", "--max-time", "5", &url]).status.code() == Some(7);
    assert!(
        wait_until(Duration::from_secs(20), refused),
        "node3 answers on 8080 after leaving the swarm: {}",
        String::from_utf8_lossy(&c.try_cli(2, &["debug", "mesh"]).stdout)
    );
}

/// What wrk reported: requests, and failures of any kind.
#[derive(Debug)]
struct Load {
    requests: u64,
    failures: u64,
    /// wrk's own words, for a failure's message.
    report: String,
}

/// wrk from the client at `url` for `seconds`, each request on a new
/// connection (so every request meets the balancer).
fn wrk(c: &Cluster, url: &str, seconds: u32) -> Child {
    Lab::command_in(&c.lab.host(CLIENT).netns, "wrk")
        .args(["-t", "2", "-c", "16", "-d", &format!("{seconds}s"), "--timeout", "5s"])
        .args(["-H", "Connection: close", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wrk (install wrk)")
}

fn finish(child: Child) -> Load {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk: {text}{}", String::from_utf8_lossy(&out.stderr));
    let number = |s: &str| s.trim().trim_end_matches(',').parse::<u64>().unwrap_or(0);
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .map(|l| number(l.split_whitespace().next().unwrap()))
        .expect("wrk's request count");
    let mut failures = 0;
    for line in text.lines() {
        if let Some(errors) = line.trim().strip_prefix("Socket errors:") {
            failures +=
                errors.split(',').filter_map(|e| e.split_whitespace().last()).map(number).sum::<u64>();
        }
        if let Some(n) = line.trim().strip_prefix("Non-2xx or 3xx responses:") {
            failures += number(n);
        }
    }
    Load { requests, failures, report: text.into_owned() }
}

/// Node1's mesh counters, to explain a failure.
fn mesh_metrics(c: &Cluster) -> String {
    c.cli(0, &["debug", "metrics"])
        .lines()
        .filter(|l| l.starts_with("shoal_mesh"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn load_through_the_mesh_survives_a_killed_task_a_drain_and_a_start_first_update() {
    let mut c = swarm(&[]);
    let www = Www::new(&c);
    nginx_service(&c, &www, &["--name", "web", "--replicas", "5", "-p", "8080:80"]);
    let url = format!("http://{}:8080/", node(&c, 0));
    assert!(wait_until(Duration::from_secs(20), || curl(&c, &url).is_some()));

    // A killed task: only connections open on it may fail.
    let load = wrk(&c, &url, 8);
    std::thread::sleep(Duration::from_secs(2));
    let (victim, at) = running(&c, "web").into_iter().find(|(_, n)| *n == 1).expect("a task on node2");
    let cgroup = shoal_runtime::Cgroup::open(&format!("{}-t{}", c.lab.host(at).netns, &victim[..10]));
    for pid in cgroup.pids() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let killed = finish(load);
    assert!(killed.requests > 100, "{killed:?}");
    assert!(
        killed.failures <= 16,
        "at most the 16 connections open on the killed task fail:\n{}",
        killed.report
    );

    // A drained node: nothing fails.
    assert!(wait_until(Duration::from_secs(20), || running(&c, "web").len() == 5));
    let load = wrk(&c, &url, 10);
    std::thread::sleep(Duration::from_secs(2));
    c.cli(0, &["node", "update", "--availability", "drain", "node2"]);
    let drained = finish(load);
    assert!(drained.requests > 100, "{drained:?}");
    assert_eq!(drained.failures, 0, "{}\n{}", drained.report, mesh_metrics(&c));
    assert!(running(&c, "web").iter().all(|(_, n)| *n != 1), "node2 is empty");
    c.cli(0, &["node", "update", "--availability", "active", "node2"]);

    // A start-first rolling update: nothing fails.
    let load = wrk(&c, &url, 15);
    std::thread::sleep(Duration::from_secs(2));
    c.cli(0, &["service", "update", "--update-order", "start-first", "--force", "web"]);
    let updated = finish(load);
    assert!(updated.requests > 100, "{updated:?}");
    assert_eq!(updated.failures, 0, "{}\n{}", updated.report, mesh_metrics(&c));
    assert_eq!(running(&c, "web").len(), 5);

    // The daemon of node1 goes: the other nodes keep serving.
    c.kill_daemon(0);
    for i in 1..3 {
        assert!(curl(&c, &format!("http://{}:8080/", node(&c, i))).is_some(), "node{} serves", i + 1);
    }
}

#[test]
fn conflicts_and_bad_input_are_refused_and_floods_bounded() {
    let c = swarm(&["--mesh-connection-limit", "64"]);
    let www = Www::new(&c);
    nginx_service(&c, &www, &["--name", "web", "--replicas", "2", "-p", "8080:80"]);
    let web_id = inspect(&c, "web")["ID"].as_str().unwrap().to_owned();

    // The same port for another service: docker's error, nothing made.
    let err = c.cli_err(0, &["service", "create", "--name", "other", "-p", "8080:81", "sleep", "600"]);
    assert!(
        err.contains(&format!(
            "port '8080' is already in use by service 'web' ({web_id}) as an ingress port"
        )),
        "{err}"
    );
    assert!(!c.cli(0, &["service", "ls"]).contains("other"));
    c.cli(0, &["service", "create", "--detach", "--name", "other", "sleep", "600"]);
    let err = c.cli_err(0, &["service", "update", "--publish-add", "8080:80", "other"]);
    assert!(err.contains("is already in use by service 'web'"), "{err}");

    // Malformed specs.
    for spec in
        ["8080:http", "70000:80", "8080:80/sctp", "published=1,target=2,mode=bridge", "published=9000"]
    {
        let err = c.cli_err(0, &["service", "create", "--name", "bad", "-p", spec, "sleep", "1"]);
        assert!(
            err.contains(&format!("invalid argument \"{spec}\" for \"--publish\" flag")),
            "{spec}: {err}"
        );
    }
    assert!(!c.cli(0, &["service", "ls"]).contains("bad"));

    // A port something else holds on node3: node3 says so, the others serve.
    let squatter = NetNs::open(&c.lab.host(2).netns)
        .unwrap()
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8090)))
        .unwrap()
        .expect("hold 8090 on node3");
    nginx_service(&c, &www, &["--name", "late", "--replicas", "3", "-p", "8090:80"]);
    let problem = wait_until(Duration::from_secs(20), || {
        inspect(&c, "late")["Endpoint"]["PortErrors"].as_array().is_some_and(|e| !e.is_empty())
    });
    assert!(problem, "{}", inspect(&c, "late"));
    let errors = inspect(&c, "late")["Endpoint"]["PortErrors"].clone();
    assert_eq!(errors[0]["Hostname"], "node3", "{errors}");
    assert_eq!(errors[0]["PublishedPort"], 8090, "{errors}");
    let error = errors[0]["Error"].as_str().unwrap();
    assert!(error.contains("address in use (held by") && error.contains("pid"), "{error}");
    let ps = c.cli(0, &["service", "ps", "--no-trunc", "late"]);
    assert!(ps.lines().any(|l| l.contains("node3") && l.contains("8090")), "{ps}");
    for i in 0..2 {
        assert!(curl(&c, &format!("http://{}:8090/", node(&c, i))).is_some(), "node{} serves 8090", i + 1);
    }
    // Once the port is free, node3 opens it at its next try.
    drop(squatter);
    assert!(
        wait_until(Duration::from_secs(15), || curl(&c, &format!("http://{}:8090/", node(&c, 2))).is_some()),
        "node3 serves 8090 once it is free"
    );
    assert!(wait_until(Duration::from_secs(10), || inspect(&c, "late")["Endpoint"]["PortErrors"].is_null()));

    // --publish-rm (by target port, as docker) frees the port on every node.
    c.cli(0, &["service", "update", "--publish-rm", "8090:80", "late"]);
    for i in 0..3 {
        let ns = NetNs::open(&c.lab.host(i).netns).unwrap();
        let free = wait_until(Duration::from_secs(15), || {
            ns.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8090)).is_ok()).unwrap()
        });
        assert!(
            free,
            "8090 is free on node{}: {}\n{}",
            i + 1,
            c.json(i, &["debug", "mesh"]),
            c.cli(0, &["service", "ps", "late"])
        );
    }

    // A flood of connections that send nothing: 64 are relayed, the rest
    // closed at once and counted; the port serves again after.
    let target = SocketAddr::from((node(&c, 0), 8080));
    let flood: Vec<TcpStream> = NetNs::open(&c.lab.host(CLIENT).netns)
        .unwrap()
        .run(|| {
            (0..200)
                .filter_map(|_| TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok())
                .collect()
        })
        .unwrap();
    assert_eq!(flood.len(), 200, "the kernel accepts them all");
    assert!(
        wait_until(Duration::from_secs(10), || c
            .metric(0, "shoal_mesh_refused_total{port=\"8080\",protocol=\"tcp\"}")
            >= 136.0),
        "refusals counted: {}",
        c.metric(0, "shoal_mesh_refused_total{port=\"8080\",protocol=\"tcp\"}")
    );
    assert_eq!(c.metric(0, "shoal_mesh_active_connections{port=\"8080\",protocol=\"tcp\"}"), 64.0);
    assert_eq!(curl(&c, &format!("http://{target}/")), None, "at the limit, a new connection is closed");
    drop(flood);
    assert!(
        wait_until(Duration::from_secs(10), || curl(&c, &format!("http://{target}/")).is_some()),
        "the port serves again"
    );
}
