//! A lab whose hosts run `shoal daemon`, joined by gossip through host 1.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shoal_lab::Lab;

use crate::{shoal_bin, wait_until};

/// A running daemon.
#[derive(Debug)]
struct Daemon {
    pid: u32,
}

/// A lab of hosts each running `shoal daemon`.
#[derive(Debug)]
pub struct Cluster {
    /// The lab; dropping the cluster tears it down.
    pub lab: Lab,
    dir: PathBuf,
    /// Gossip key file, for daemons that gossip outside a swarm.
    key: Option<PathBuf>,
    /// More flags every daemon starts with.
    daemon_args: Vec<String>,
    daemons: Vec<Option<Daemon>>,
}

impl Cluster {
    /// Builds a lab of `hosts` hosts and starts a daemon on each; host 1
    /// (index 0) is the seed the others join through.
    pub fn start(hosts: usize) -> Cluster {
        Cluster::start_with(hosts, 0, true, &[])
    }

    /// Builds a lab of `hosts` hosts whose daemons are in no swarm and do not
    /// gossip until `shoal swarm init` or `join` (hostnames node1, node2...).
    pub fn start_bare(hosts: usize) -> Cluster {
        Cluster::start_with(hosts, 0, false, &[])
    }

    /// A swarm: host 1 inits it (heartbeats every second) and the other
    /// hosts join as workers.
    pub fn start_swarm(hosts: usize) -> Cluster {
        Cluster::start_swarm_with(hosts, &[])
    }

    /// A swarm whose daemons also get `daemon_args`.
    pub fn start_swarm_with(hosts: usize, daemon_args: &[&str]) -> Cluster {
        Cluster::start_swarm_with_clients(hosts, 0, daemon_args)
    }

    /// A swarm of `hosts` nodes whose daemons get `daemon_args`, and
    /// `clients` more lab hosts on the same underlay that run no daemon
    /// (hosts `hosts..hosts + clients`): machines outside the swarm.
    pub fn start_swarm_with_clients(hosts: usize, clients: usize, daemon_args: &[&str]) -> Cluster {
        let c = Cluster::start_with(hosts, clients, false, daemon_args);
        c.cli(0, &["swarm", "init", "--dispatcher-heartbeat", "1s"]);
        let token = c.cli(0, &["swarm", "join-token", "-q", "worker"]).trim().to_owned();
        let manager = format!("{}:2377", c.lab.host(0).underlay);
        for i in 1..hosts {
            c.cli(i, &["swarm", "join", "--token", &token, &manager]);
        }
        c
    }

    fn start_with(hosts: usize, clients: usize, gossip: bool, daemon_args: &[&str]) -> Cluster {
        crate::require_root();
        let lab = Lab::new(hosts + clients).expect("build lab");
        // Outside /tmp, as /var/lib/shoal is: a task has a /tmp of its own,
        // so only the daemon's masks hide its data directory and socket.
        let dir = PathBuf::from("/var/tmp").join(lab.name());
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = gossip.then(|| {
            let key = dir.join("gossip.key");
            let out = Command::new(shoal_bin())
                .args(["gossip", "keygen"])
                .output()
                .expect("run shoal gossip keygen");
            std::fs::write(&key, &out.stdout).expect("write key");
            key
        });
        let mut daemon_args: Vec<String> = daemon_args.iter().map(|a| (*a).to_owned()).collect();
        // A test's tasks go with its daemons, unless it tests live restore.
        if !daemon_args.iter().any(|a| a.starts_with("--live-restore")) {
            daemon_args.push("--live-restore=false".into());
        }
        let mut cluster =
            Cluster { lab, dir, key, daemon_args, daemons: (0..hosts + clients).map(|_| None).collect() };
        for i in 0..hosts {
            cluster.start_daemon(i);
        }
        cluster
    }

    /// The gossip key file of a cluster that gossips outside a swarm.
    pub fn key_file(&self) -> Option<&std::path::Path> {
        self.key.as_deref()
    }

    /// The daemon socket of host `i`.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{}.sock", i + 1))
    }

    /// The data directory of host `i`'s daemon.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{}.data", i + 1))
    }

    /// What the daemon on host `i` has logged (all its runs).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("h{}.log", i + 1))).unwrap_or_default()
    }

    /// Starts (or restarts) the daemon on host `i`, with its data directory
    /// kept across restarts, and waits until its API answers.
    pub fn start_daemon(&mut self, i: usize) {
        assert!(self.daemons[i].is_none(), "a daemon already runs on host {i}");
        let host = self.lab.host(i).clone();
        let seed = self.lab.host(0).underlay;
        let data = self.dir.join(format!("h{}.data", i + 1));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("h{}.log", i + 1)))
            .expect("log file");
        let mut cmd = Lab::command_in(&host.netns, shoal_bin().to_str().expect("utf-8 path"));
        cmd.args(["daemon", "--advertise-addr", &host.underlay.to_string(), "--data-dir"])
            .arg(&data)
            .arg("--socket")
            .arg(self.socket(i))
            .args(["--hostname", &format!("node{}", i + 1)])
            .args(["--task-prefix", &host.netns])
            .args(&self.daemon_args)
            .env("SHOAL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(key) = &self.key {
            cmd.arg("--gossip-key-file").arg(key);
            if i != 0 {
                cmd.args(["--join", &format!("{seed}:7946")]);
            }
        }
        let pid = self.lab.spawn(&mut cmd).expect("start shoal daemon");
        self.daemons[i] = Some(Daemon { pid });
        let up = wait_until(Duration::from_secs(15), || {
            !self.lab.is_running(pid)
                || self.socket(i).exists() && self.try_cli(i, &["debug", "metrics"]).status.success()
        });
        assert!(up && self.lab.is_running(pid), "daemon on h{} did not come up:\n{}", i + 1, self.log(i));
    }

    /// The task sandboxes the daemon on host `i` holds (its routing mesh's
    /// own aside), by name; none if it does not answer.
    pub fn task_sandboxes(&self, i: usize) -> std::collections::BTreeSet<String> {
        let out = self.try_cli(i, &["debug", "endpoint", "ls"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["sandbox"].as_str())
            .filter(|s| !s.ends_with("-mesh"))
            .map(str::to_owned)
            .collect()
    }

    /// The task sandboxes on host `i` that still exist, as its daemon's data
    /// directory names them: with live restore, they outlive the daemon.
    pub fn task_sandboxes_left(&self, i: usize) -> usize {
        let Ok(entries) = std::fs::read_dir(self.data_dir(i).join("tasks")) else { return 0 };
        entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("leftovers.json")).ok())
            .filter_map(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
            .filter(|left| left["name"].as_str().is_some_and(shoal_runtime::NetNs::exists))
            .count()
    }

    /// A memory figure of the daemon on host `i`, in KiB, from its
    /// `/proc/PID/status` (`VmRSS`, `RssAnon`...); 0 if unreadable.
    pub fn daemon_kib(&self, i: usize, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.daemon_pid(i))).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The pid of the daemon on host `i`.
    pub fn daemon_pid(&self, i: usize) -> u32 {
        self.daemons[i].as_ref().expect("a daemon runs there").pid
    }

    /// Kills the daemon on host `i` with SIGKILL.
    pub fn kill_daemon(&mut self, i: usize) {
        let daemon = self.daemons[i].take().expect("a daemon runs there");
        self.lab.kill(daemon.pid).expect("kill daemon");
    }

    /// Stops the daemon on host `i` with SIGTERM; returns whether it exited 0.
    pub fn stop_daemon(&mut self, i: usize) -> bool {
        let daemon = self.daemons[i].take().expect("a daemon runs there");
        self.lab.stop(daemon.pid, Duration::from_secs(10)).expect("stop daemon").success()
    }

    /// Runs `shoal -H <host i's socket> ARGS`.
    pub fn try_cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(shoal_bin())
            .arg("-H")
            .arg(format!("unix://{}", self.socket(i).display()))
            .args(args)
            .output()
            .expect("run shoal")
    }

    /// Runs a CLI command that must succeed and returns its stdout.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let out = self.try_cli(i, args);
        assert!(
            out.status.success(),
            "shoal {args:?} on h{}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a CLI command that must fail and returns its stderr.
    pub fn cli_err(&self, i: usize, args: &[&str]) -> String {
        let out = self.try_cli(i, args);
        assert!(!out.status.success(), "shoal {args:?} on h{} succeeded", i + 1);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs a CLI command that must succeed and returns its JSON output.
    pub fn json(&self, i: usize, args: &[&str]) -> serde_json::Value {
        let out = self.try_cli(i, args);
        assert!(
            out.status.success(),
            "shoal {args:?} on h{}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// (node id, gossip address, state) of every member host `i` knows.
    pub fn members(&self, i: usize) -> Vec<(String, String, String)> {
        let value = self.json(i, &["debug", "members"]);
        value
            .as_array()
            .expect("a list")
            .iter()
            .map(|m| {
                let id = m["member"]["id"].as_u64().map(|v| format!("{v:016x}")).unwrap_or_default();
                (
                    id,
                    m["member"]["addr"].as_str().unwrap_or("").to_owned(),
                    m["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// How host `i` sees the member whose gossip address is on host `j`.
    pub fn state_of(&self, i: usize, j: usize) -> Option<String> {
        let addr = format!("{}:7946", self.lab.host(j).underlay);
        self.members(i).into_iter().find(|(_, a, _)| *a == addr).map(|(_, _, s)| s)
    }

    /// The value of a metric line starting with `name` (labels included) on
    /// host `i`, or 0.
    pub fn metric(&self, i: usize, name: &str) -> f64 {
        let out = self.try_cli(i, &["debug", "metrics"]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Creates an endpoint on host `i` through its API; returns the sandbox.
    pub fn add_endpoint(&self, i: usize, role: &str, vni: u32, subnet: &str, ip: Ipv4Addr) -> String {
        let sandbox = self.lab.netns_name(role);
        let ip = ip.to_string();
        let args = [
            "debug",
            "endpoint",
            "add",
            "--sandbox",
            &sandbox,
            "--vni",
            &vni.to_string(),
            "--subnet",
            subnet,
            "--ip",
            &ip,
        ];
        let out = self.try_cli(i, &args);
        assert!(out.status.success(), "endpoint add on h{}: {}", i + 1, String::from_utf8_lossy(&out.stderr));
        sandbox
    }

    /// The endpoint-table rows host `i` holds.
    pub fn rows(&self, i: usize) -> Vec<serde_json::Value> {
        self.json(i, &["debug", "tables"]).as_array().expect("a list").clone()
    }

    /// Runs `nft` in host `i`'s namespace (to drop traffic).
    pub fn nft(&self, i: usize, rules: &str) {
        let mut child = Lab::command_in(&self.lab.host(i).netns, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft (install nftables)");
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(rules.as_bytes()).expect("write rules");
        let out = child.wait_with_output().expect("nft");
        assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The daemons first (as the lab would, after): a daemon stopping
        // still writes into its data directory.
        for daemon in self.daemons.iter_mut().filter_map(Option::take) {
            let _ = self.lab.stop(daemon.pid, Duration::from_secs(3));
        }
        // With live restore, tasks outlive their daemons: remove them.
        for i in 0..self.daemons.len() {
            remove_tasks_left(&self.data_dir(i));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills the tasks a stopped daemon left running (live restore) and
/// removes their cgroups and namespaces, named in its data directory.
pub fn remove_tasks_left(data_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("tasks")) else { return };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read(entry.path().join("leftovers.json")) else { continue };
        let Ok(left) = serde_json::from_slice::<serde_json::Value>(&text) else { continue };
        let Some(name) = left["name"].as_str() else { continue };
        let cgroup = shoal_runtime::Cgroup::open(name);
        cgroup.kill_all();
        for _ in 0..50 {
            if cgroup.remove().is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if shoal_runtime::NetNs::exists(name) {
            let _ = shoal_runtime::NetNs::delete_by_name(name);
        }
    }
}
