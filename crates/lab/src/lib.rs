//! Labs: several hosts on one machine, each a network namespace, joined by
//! veth to a bridge that lives in a switch namespace of its own.
//!
//! Safety rules this crate enforces, so that no lab can touch the machine's
//! own network: every namespace is named `<prefix>-<pid>-<seq>-<role>`, unique
//! per run; nothing is ever added to the root namespace (links are created
//! inside the switch namespace, with the host end moved straight into the
//! host's namespace); the underlay is 198.18.0.0/15 (RFC 2544 benchmarking
//! space); a lab deletes its namespaces and stops its processes when dropped,
//! panics included; and at start it deletes namespaces of its own prefix left
//! by runs whose process is gone, and only those.

#![forbid(unsafe_code)]

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shoal_runtime::{NetNs, NetnsError};

/// The namespace prefix labs use unless told otherwise.
pub const DEFAULT_PREFIX: &str = "shoal-lab";

/// The underlay prefix length: 198.18.0.0/15.
pub const UNDERLAY_PREFIX: u8 = 15;

/// Why a lab could not be built or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// Labs need root to create namespaces and links.
    #[error("labs create network namespaces and links and need root: run as root (for example with sudo)")]
    NotRoot,
    /// A lab has 1 to 200 hosts.
    #[error("a lab has 1 to 200 hosts, not {0}")]
    HostCount(usize),
    /// A namespace operation failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// An `ip` command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A process could not be started or stopped.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// One host of a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Short name: `h1`, `h2`, ...
    pub name: String,
    /// The host's network namespace.
    pub netns: String,
    /// The host's underlay address (on its `eth0`).
    pub underlay: Ipv4Addr,
}

/// A running lab. Dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    name: String,
    switch: String,
    hosts: Vec<Host>,
    children: Mutex<Vec<Child>>,
    /// Kept after this process exits (`shoal lab up`): drop does nothing.
    kept: bool,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds a lab of `hosts` hosts under [`DEFAULT_PREFIX`].
    pub fn new(hosts: usize) -> Result<Lab, LabError> {
        Lab::with_prefix(DEFAULT_PREFIX, hosts)
    }

    /// Builds a lab of `hosts` hosts, its namespaces named `<prefix>-...`.
    pub fn with_prefix(prefix: &str, hosts: usize) -> Result<Lab, LabError> {
        check_request(hosts)?;
        remove_stale(prefix);
        let name = format!("{prefix}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        Lab::build(name, hosts)
    }

    /// Builds a lab with exactly this name (namespaces `<name>-sw`,
    /// `<name>-h1`, ...), for labs that outlive the process that made them;
    /// fails if any namespace of that name exists.
    pub fn named(name: &str, hosts: usize) -> Result<Lab, LabError> {
        check_request(hosts)?;
        let own = format!("{name}-");
        if let Some(existing) = NetNs::list().into_iter().find(|n| n.starts_with(&own)) {
            return Err(LabError::Netns(NetnsError::Exists(existing)));
        }
        Lab::build(name.to_owned(), hosts)
    }

    fn build(name: String, hosts: usize) -> Result<Lab, LabError> {
        let switch = format!("{name}-sw");
        let mut lab = Lab { name, switch, hosts: Vec::new(), children: Mutex::new(Vec::new()), kept: false };
        // From here on, Drop cleans up whatever was made if a step fails.
        NetNs::create(&lab.switch)?;
        ip(&lab.switch, &["link", "set", "lo", "up"])?;
        ip(&lab.switch, &["link", "add", "br0", "type", "bridge"])?;
        ip(&lab.switch, &["link", "set", "br0", "up"])?;
        for i in 1..=hosts {
            let host = Host {
                name: format!("h{i}"),
                netns: format!("{}-h{i}", lab.name),
                underlay: Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8),
            };
            NetNs::create(&host.netns)?;
            lab.hosts.push(host.clone());
            let port = host.name.as_str();
            ip(
                &lab.switch,
                &["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &host.netns],
            )?;
            ip(&lab.switch, &["link", "set", port, "master", "br0", "up"])?;
            let addr = format!("{}/{UNDERLAY_PREFIX}", host.underlay);
            ip(&host.netns, &["addr", "add", &addr, "dev", "eth0"])?;
            ip(&host.netns, &["link", "set", "eth0", "up"])?;
            ip(&host.netns, &["link", "set", "lo", "up"])?;
        }
        tracing::info!(lab = %lab.name, hosts, "lab up");
        Ok(lab)
    }

    /// The lab's unique name; every namespace it owns starts with it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The switch namespace, holding the underlay bridge `br0`.
    pub fn switch(&self) -> &str {
        &self.switch
    }

    /// The hosts, `h1` first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`, counting from 0.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// A namespace name owned by this lab, for sandboxes and the like: the
    /// lab removes it at teardown.
    pub fn netns_name(&self, role: &str) -> String {
        format!("{}-{role}", self.name)
    }

    /// Names of every namespace of this lab that exists now.
    pub fn namespaces(&self) -> Vec<String> {
        let own = format!("{}-", self.name);
        NetNs::list().into_iter().filter(|n| n.starts_with(&own)).collect()
    }

    /// A command that runs `program` inside namespace `netns`, entering only
    /// its network namespace (so mounts under /run/netns stay shared).
    pub fn command_in(netns: &str, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}")).arg("--").arg(program);
        cmd
    }

    /// Runs a command to completion inside `netns` and returns its output.
    pub fn run_in(netns: &str, program: &str, args: &[&str]) -> Result<Output, LabError> {
        Lab::command_in(netns, program)
            .args(args)
            .output()
            .map_err(|source| LabError::Io { what: format!("run {program} in {netns}"), source })
    }

    /// Starts a long-running process; the lab stops it at teardown. Returns
    /// its pid.
    pub fn spawn(&self, command: &mut Command) -> Result<u32, LabError> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Io { what: format!("start {command:?}"), source })?;
        let pid = child.id();
        self.children.lock().unwrap_or_else(|e| e.into_inner()).push(child);
        Ok(pid)
    }

    /// Stops a process started with [`spawn`](Self::spawn): SIGTERM, then
    /// SIGKILL after `grace`. Returns how it exited.
    pub fn stop(&self, pid: u32, grace: Duration) -> Result<ExitStatus, LabError> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let Some(at) = children.iter().position(|c| c.id() == pid) else {
            return Err(LabError::Io {
                what: format!("stop process {pid}"),
                source: io::Error::new(io::ErrorKind::NotFound, "not started by this lab"),
            });
        };
        let child = children.swap_remove(at);
        stop_child(child, grace)
    }

    /// Kills a process started with [`spawn`](Self::spawn) at once with
    /// SIGKILL, as a crash would, and reaps it.
    pub fn kill(&self, pid: u32) -> Result<ExitStatus, LabError> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let Some(at) = children.iter().position(|c| c.id() == pid) else {
            return Err(LabError::Io {
                what: format!("kill process {pid}"),
                source: io::Error::new(io::ErrorKind::NotFound, "not started by this lab"),
            });
        };
        let mut child = children.swap_remove(at);
        let _ = child.kill();
        child.wait().map_err(|source| LabError::Io { what: format!("wait for process {pid}"), source })
    }

    /// Whether a process started with [`spawn`](Self::spawn) is still running.
    pub fn is_running(&self, pid: u32) -> bool {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.iter_mut().any(|c| c.id() == pid && matches!(c.try_wait(), Ok(None)))
    }
}

impl Lab {
    /// Keeps the lab after this value is dropped: its namespaces stay and
    /// its processes are left running; [`Lab::remove`] takes it down later.
    pub fn keep(mut self) {
        self.kept = true;
        // The children are not ours to wait for any more.
        self.children.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Takes down a kept lab by name: stops the given processes (SIGTERM,
    /// then SIGKILL after `grace`) and deletes every namespace of the lab.
    pub fn remove(name: &str, pids: &[u32], grace: Duration) {
        // A pid may have been reused since: signal only processes whose
        // command line names one of the lab's own namespaces, or Shoal.
        let own = format!("/run/netns/{name}-");
        let pids: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split('\0').any(|arg| arg.contains(&own)) || c.contains("shoal"))
            })
            .collect();
        let pids = &pids[..];
        for &pid in pids {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        for &pid in pids {
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let own = format!("{name}-");
        for ns in NetNs::list().into_iter().filter(|n| n.starts_with(&own)) {
            let _ = NetNs::delete_by_name(&ns);
        }
        // Task cgroups of the lab's daemons are named after their hosts.
        for root in ["memory", "cpu", "pids", ""] {
            let dir = Path::new("/sys/fs/cgroup").join(root).join("shoal");
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&own) {
                    let cgroup = shoal_runtime::Cgroup::open(&entry.file_name().to_string_lossy());
                    cgroup.kill_all();
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let children = std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for child in children {
            let _ = stop_child(child, Duration::from_secs(3));
        }
        // Hosts and switch first, then anything else the lab's users made
        // under its name (sandboxes).
        let mut names: Vec<String> = self.hosts.iter().map(|h| h.netns.clone()).collect();
        names.push(self.switch.clone());
        names.extend(self.namespaces());
        for name in names {
            match NetNs::delete_by_name(&name) {
                Ok(()) | Err(NetnsError::NotFound(_)) => {}
                Err(e) => tracing::warn!(netns = %name, error = %e, "could not delete lab namespace"),
            }
        }
        tracing::info!(lab = %self.name, "lab down");
    }
}

/// Labs need root, and 1 to 200 hosts.
fn check_request(hosts: usize) -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    if !(1..=200).contains(&hosts) {
        return Err(LabError::HostCount(hosts));
    }
    Ok(())
}

fn stop_child(mut child: Child, grace: Duration) -> Result<ExitStatus, LabError> {
    let pid = Pid::from_raw(child.id() as i32);
    if let Ok(Some(status)) = child.try_wait() {
        return Ok(status);
    }
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().map_err(|source| LabError::Io { what: format!("wait for process {pid}"), source })
}

/// Runs `ip -n NETNS ARGS...`.
pub fn ip(netns: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new("ip")
        .arg("-n")
        .arg(netns)
        .args(args)
        .output()
        .map_err(|source| LabError::Io { what: "run ip (install iproute2)".into(), source })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("ip -n {netns} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes namespaces `<prefix>-<pid>-...` whose creating process is gone.
fn remove_stale(prefix: &str) {
    let own = format!("{prefix}-");
    for name in NetNs::list() {
        let Some(rest) = name.strip_prefix(&own) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(netns = %name, "removing stale lab namespace");
            let _ = NetNs::delete_by_name(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_reach_each_other_and_teardown_is_complete() {
        assert!(nix::unistd::geteuid().is_root(), "lab tests need root");
        let lab = Lab::with_prefix("shoal-labtest", 3).unwrap();
        let names = lab.namespaces();
        assert_eq!(names.len(), 4, "{names:?}");
        let h1 = lab.host(0);
        let h3 = lab.host(2);
        let out = Lab::run_in(&h1.netns, "ping", &["-c", "1", "-W", "2", &h3.underlay.to_string()]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let pid = lab.spawn(Lab::command_in(&h1.netns, "sleep").arg("60")).unwrap();
        assert!(lab.is_running(pid));
        let prefix = lab.name().to_owned();
        drop(lab);
        assert!(NetNs::list().iter().all(|n| !n.starts_with(&prefix)));
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie_free(pid));
    }

    fn is_zombie_free(pid: u32) -> bool {
        // A reaped pid may be reused by an unrelated process; it is then not a
        // `sleep 60` of ours.
        std::fs::read_to_string(format!("/proc/{pid}/cmdline")).map_or(true, |c| !c.contains("sleep"))
    }

    #[test]
    fn bad_host_counts_are_refused() {
        assert!(matches!(Lab::with_prefix("shoal-labtest", 0), Err(LabError::HostCount(0))));
        assert!(matches!(Lab::with_prefix("shoal-labtest", 201), Err(LabError::HostCount(201))));
    }
}
