//! Fixtures for the black-box tests: labs running the real `shoal` binary,
//! sandboxes reached with real tools (`ping`) and real sockets opened inside
//! them, counters read through the binary's own control socket.
//!
//! Every test calls [`require_root`] first: without root it fails with a
//! message saying so.

#![forbid(unsafe_code)]

pub mod cluster;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_dataplane::{CounterSnapshot, DropReason};
use shoal_lab::Lab;
use shoal_runtime::NetNs;

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "netns tests create network namespaces, veth pairs and TUN devices and need root: \
         run them as root (for example `sudo make test`)"
    );
}

/// The `shoal` binary of the same build as the running executable: next to
/// it (a binary in `target/<profile>/`), or one level up (a test in
/// `target/<profile>/deps/`). `SHOAL_BIN` overrides.
pub fn shoal_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SHOAL_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [dir.join("shoal"), dir.parent().map(|d| d.join("shoal")).unwrap_or_default()];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "{} is missing: build it with `cargo build -p shoal` (make test does)",
            candidates[1].display()
        )
    })
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A task for [`Overlay::start`]: a sandbox on a host, attached to networks.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Short name; the sandbox is the lab's namespace of that role.
    pub name: &'static str,
    /// Host index, from 0.
    pub host: usize,
    /// `(vni, address)` per network joined; the first is `eth0`.
    pub attachments: Vec<(u32, Ipv4Addr)>,
}

impl TaskSpec {
    /// A task on one network.
    pub fn new(name: &'static str, host: usize, vni: u32, ip: Ipv4Addr) -> TaskSpec {
        TaskSpec { name, host, attachments: vec![(vni, ip)] }
    }
}

/// An endpoint that lives on a host but is served by something other than
/// Shoal (a kernel vxlan device): only routed to.
#[derive(Debug, Clone)]
pub struct ForeignEndpoint {
    /// Host index, from 0.
    pub host: usize,
    /// Network.
    pub vni: u32,
    /// Address.
    pub ip: Ipv4Addr,
}

/// A lab whose hosts run `shoal dataplane run` from one static overlay file.
#[derive(Debug)]
pub struct Overlay {
    /// The lab; dropping the overlay tears it down.
    pub lab: Lab,
    dir: PathBuf,
    nodes: Vec<Option<Node>>,
    tasks: Vec<TaskSpec>,
}

#[derive(Debug)]
struct Node {
    pid: u32,
    control: PathBuf,
    log: PathBuf,
}

impl Overlay {
    /// Builds a lab of `hosts` hosts and starts Shoal on each host that has a
    /// task (hosts with only foreign endpoints run no Shoal).
    pub fn start(
        hosts: usize,
        networks: &[(u32, &str)],
        tasks: &[TaskSpec],
        foreign: &[ForeignEndpoint],
    ) -> Overlay {
        Overlay::start_with(&shoal_bin(), hosts, networks, tasks, foreign)
    }

    /// The same with the `shoal` binary at `bin` (a benchmark's baseline
    /// build).
    pub fn start_with(
        bin: &std::path::Path,
        hosts: usize,
        networks: &[(u32, &str)],
        tasks: &[TaskSpec],
        foreign: &[ForeignEndpoint],
    ) -> Overlay {
        require_root();
        let lab = Lab::new(hosts).expect("build lab");
        let dir = std::env::temp_dir().join(lab.name());
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut endpoints = Vec::new();
        for task in tasks {
            for (vni, ip) in &task.attachments {
                endpoints.push(serde_json::json!({
                    "vni": vni, "ip": ip, "node": lab.host(task.host).underlay,
                    "sandbox": lab.netns_name(task.name),
                }));
            }
        }
        for f in foreign {
            endpoints.push(serde_json::json!({"vni": f.vni, "ip": f.ip, "node": lab.host(f.host).underlay}));
        }
        let networks: Vec<_> =
            networks.iter().map(|(vni, subnet)| serde_json::json!({"vni": vni, "subnet": subnet})).collect();
        let config = dir.join("overlay.json");
        let mut file = serde_json::json!({"networks": networks, "endpoints": endpoints});
        // A kernel vxlan peer checks inner checksums; Shoal's do not. (Only
        // when set, so that a build from before the key reads the file.)
        if !foreign.is_empty() {
            file["inner_checksums"] = true.into();
        }
        std::fs::write(&config, serde_json::to_vec_pretty(&file).unwrap()).unwrap();

        let mut overlay = Overlay { lab, dir, nodes: Vec::new(), tasks: tasks.to_vec() };
        for i in 0..hosts {
            if !tasks.iter().any(|t| t.host == i) {
                overlay.nodes.push(None);
                continue;
            }
            let host = overlay.lab.host(i).clone();
            let control = overlay.dir.join(format!("{}.sock", host.name));
            let log = overlay.dir.join(format!("{}.log", host.name));
            let mut cmd = Lab::command_in(&host.netns, bin.to_str().expect("a UTF-8 path"));
            cmd.args(["dataplane", "run", "--config"])
                .arg(&config)
                .arg("--underlay")
                .arg(host.underlay.to_string())
                .arg("--control")
                .arg(&control)
                .env("SHOAL_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            let pid = overlay.lab.spawn(&mut cmd).expect("start shoal");
            overlay.nodes.push(Some(Node { pid, control, log }));
        }
        for i in 0..hosts {
            let Some(node) = &overlay.nodes[i] else { continue };
            let ready = wait_until(Duration::from_secs(15), || {
                node.control.exists() || !overlay.lab.is_running(node.pid)
            });
            assert!(
                ready && node.control.exists(),
                "shoal on {} did not become ready:\n{}",
                overlay.lab.host(i).name,
                overlay.log(i)
            );
        }
        overlay
    }

    /// The sandbox (namespace) of task `name`.
    pub fn sandbox(&self, name: &str) -> String {
        assert!(self.tasks.iter().any(|t| t.name == name), "no task {name}");
        self.lab.netns_name(name)
    }

    /// The first address of task `name`.
    pub fn ip(&self, name: &str) -> Ipv4Addr {
        self.tasks.iter().find(|t| t.name == name).expect("task").attachments[0].1
    }

    /// What Shoal on host `i` has logged.
    pub fn log(&self, i: usize) -> String {
        self.nodes[i]
            .as_ref()
            .map(|n| std::fs::read_to_string(&n.log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The pid of Shoal on host `i`.
    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].as_ref().expect("shoal runs on this host").pid
    }

    /// The counters of Shoal on host `i`, read with `shoal dataplane stats`.
    pub fn counters(&self, i: usize) -> CounterSnapshot {
        let node = self.nodes[i].as_ref().expect("shoal runs on this host");
        let out = Command::new(shoal_bin())
            .args(["dataplane", "stats", "--control"])
            .arg(&node.control)
            .output()
            .expect("run shoal dataplane stats");
        assert!(out.status.success(), "stats: {}", String::from_utf8_lossy(&out.stderr));
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        serde_json::from_value(value["counters"].clone()).expect("counters")
    }

    /// Drops counted for `reason` on host `i`.
    pub fn dropped(&self, i: usize, reason: DropReason) -> u64 {
        self.counters(i).dropped(reason)
    }

    /// Whether `count` pings from task `from` to `to` all get answers.
    pub fn ping(&self, from: &str, to: Ipv4Addr, count: u32) -> bool {
        ping_from(&self.sandbox(from), to, count)
    }

    /// Stops Shoal on host `i` with SIGTERM; returns whether it exited 0.
    pub fn stop_node(&mut self, i: usize) -> bool {
        let node = self.nodes[i].take().expect("shoal runs on this host");
        let status = self.lab.stop(node.pid, Duration::from_secs(10)).expect("stop shoal");
        status.success()
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `count` pings from namespace `netns` to `to` all get answers.
pub fn ping_from(netns: &str, to: Ipv4Addr, count: u32) -> bool {
    let out =
        Lab::run_in(netns, "ping", &["-c", &count.to_string(), "-i", "0.2", "-W", "2", &to.to_string()])
            .expect("run ping (install iputils-ping)");
    out.status.success()
}

/// An nginx configuration (Debian's nginx) for a task: in the foreground,
/// logging errors to stderr, its files under the prefix it runs with
/// (`nginx -p`), with `servers` (`server { ... }` blocks) in `http`.
pub fn nginx_conf(servers: &str) -> String {
    format!(
        "daemon off;\nworker_processes 1;\npid nginx.pid;\nerror_log stderr;\n\
         events {{ worker_connections 8192; }}\nhttp {{\n    access_log off;\n\
         \x20   client_body_temp_path tmp/body;\n    proxy_temp_path tmp/proxy;\n\
         \x20   fastcgi_temp_path tmp/fastcgi;\n    uwsgi_temp_path tmp/uwsgi;\n\
         \x20   scgi_temp_path tmp/scgi;\n    keepalive_requests 1000000;\n{servers}}}\n"
    )
}

/// The command that runs nginx in a task with the configuration at `conf`,
/// its files in the task's own `/tmp`.
pub fn nginx_command(conf: &std::path::Path) -> String {
    format!("mkdir -p /tmp/nginx/tmp && exec nginx -p /tmp/nginx/ -c {} -e stderr", conf.display())
}

/// Deterministic bytes for transfers: a xorshift stream from `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `len` bytes over TCP from a socket opened in namespace `client` to
/// a listener opened in namespace `server` on `server_ip`, and checks that
/// every byte arrives intact, in order.
pub fn tcp_transfer(client: &str, server: &str, server_ip: Ipv4Addr, len: usize) {
    let timeout = Duration::from_secs(60);
    let listener = NetNs::open(server)
        .expect("server namespace")
        .run(|| TcpListener::bind((server_ip, 0)))
        .expect("enter server namespace")
        .expect("bind listener");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let receiver = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut received = Vec::with_capacity(len);
        stream.read_to_end(&mut received)?;
        Ok(received)
    });
    let data = pattern(len, len as u64 ^ u64::from(server_ip.to_bits()));
    let addr = SocketAddr::from((server_ip, port));
    let sent = NetNs::open(client)
        .expect("client namespace")
        .run(|| -> std::io::Result<()> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_write_timeout(Some(timeout))?;
            stream.write_all(&data)?;
            stream.shutdown(std::net::Shutdown::Write)
        })
        .expect("enter client namespace");
    sent.unwrap_or_else(|e| panic!("send {len} bytes from {client} to {addr}: {e}"));
    let received = receiver.join().unwrap().unwrap_or_else(|e| panic!("receive at {addr}: {e}"));
    assert_eq!(received.len(), len, "bytes received at {addr}");
    assert!(received == data, "content received at {addr} differs from what was sent");
}

/// How many packets the kernel has handed from `interface` in `netns` to the
/// process reading it (a TUN's TX count), from `ip -s -j link`.
pub fn tx_packets(netns: &str, interface: &str) -> u64 {
    let out = shoal_lab::ip(netns, &["-s", "-j", "link", "show", interface]).expect("ip link");
    let json: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    json[0]["stats64"]["tx"]["packets"].as_u64().expect("tx packets")
}

/// The link names of the namespace this process runs in, to check that labs
/// leave it untouched.
pub fn own_links() -> Vec<String> {
    let mut names: Vec<String> = nix::net::if_::if_nameindex()
        .expect("list links")
        .iter()
        .map(|i| i.name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
