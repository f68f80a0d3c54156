//! A task's control group: CPU, memory and pids limits, the out-of-memory
//! kill count, and killing every process in it.
//!
//! cgroup v2 when `/sys/fs/cgroup` is the unified hierarchy, else the v1
//! `memory`, `cpu` and `pids` hierarchies. Groups live under `shoal/`.

use std::io;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// Limits of one task; zero is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU in nano-CPUs (1e9 is one CPU).
    pub nano_cpus: u64,
    /// Memory in bytes (no swap beyond it).
    pub memory: u64,
    /// Processes.
    pub pids: u64,
}

/// One task's group (a directory per hierarchy).
#[derive(Debug, Clone)]
pub struct Cgroup {
    v2: bool,
    dirs: Vec<PathBuf>,
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

/// Whether the unified (v2) hierarchy is the one mounted at the root.
pub fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// A counter line `key N` of a flat-keyed cgroup file.
fn counter(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Cgroup {
    /// The group `name` as it would be (exists or not).
    pub fn open(name: &str) -> Cgroup {
        if is_v2() {
            Cgroup { v2: true, dirs: vec![Path::new(ROOT).join("shoal").join(name)] }
        } else {
            let dirs = ["memory", "cpu", "pids"]
                .iter()
                .map(|c| Path::new(ROOT).join(c).join("shoal").join(name))
                .filter(|d| d.parent().and_then(Path::parent).is_some_and(Path::exists))
                .collect();
            Cgroup { v2: false, dirs }
        }
    }

    /// Creates the group `name` with `limits`.
    pub fn create(name: &str, limits: &Limits) -> io::Result<Cgroup> {
        let group = Cgroup::open(name);
        if group.v2 {
            let parent = Path::new(ROOT).join("shoal");
            std::fs::create_dir_all(&parent)?;
            // Delegate the controllers down to the task's group.
            let _ = write(Path::new(ROOT), "cgroup.subtree_control", "+memory +cpu +pids");
            let _ = write(&parent, "cgroup.subtree_control", "+memory +cpu +pids");
        }
        for dir in &group.dirs {
            std::fs::create_dir_all(dir)?;
        }
        let result = group.limit(limits);
        if let Err(e) = result {
            let _ = group.remove();
            return Err(e);
        }
        Ok(group)
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        if self.v2 {
            return self.dirs.first().map(PathBuf::as_path);
        }
        self.dirs.iter().find(|d| d.iter().any(|c| c == controller)).map(PathBuf::as_path)
    }

    fn limit(&self, limits: &Limits) -> io::Result<()> {
        const PERIOD: u64 = 100_000;
        if limits.nano_cpus > 0 {
            let quota = (limits.nano_cpus * PERIOD / 1_000_000_000).max(1_000);
            let dir = self.dir("cpu").ok_or_else(|| io::Error::other("no cpu controller"))?;
            if self.v2 {
                write(dir, "cpu.max", &format!("{quota} {PERIOD}"))?;
            } else {
                write(dir, "cpu.cfs_period_us", &PERIOD.to_string())?;
                write(dir, "cpu.cfs_quota_us", &quota.to_string())?;
            }
        }
        if limits.memory > 0 {
            let dir = self.dir("memory").ok_or_else(|| io::Error::other("no memory controller"))?;
            if self.v2 {
                write(dir, "memory.max", &limits.memory.to_string())?;
                let _ = write(dir, "memory.swap.max", "0");
            } else {
                write(dir, "memory.limit_in_bytes", &limits.memory.to_string())?;
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(dir, "memory.memsw.limit_in_bytes", &limits.memory.to_string())?;
                }
            }
        }
        if limits.pids > 0 {
            let dir = self.dir("pids").ok_or_else(|| io::Error::other("no pids controller"))?;
            write(dir, "pids.max", &limits.pids.to_string())?;
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes itself into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The processes in the group.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// How many times the kernel's OOM killer killed a process of the group.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = self.dir("memory") else { return 0 };
        if self.v2 {
            counter(&dir.join("memory.events"), "oom_kill")
        } else {
            counter(&dir.join("memory.oom_control"), "oom_kill")
        }
    }

    /// Sends SIGKILL to every process in the group.
    pub fn kill_all(&self) {
        if self.v2
            && let Some(dir) = self.dirs.first()
            && write(dir, "cgroup.kill", "1").is_ok()
        {
            return;
        }
        for pid in self.pids() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Removes the group; it must be empty. Kills what is left and retries
    /// for up to a second.
    pub fn remove(&self) -> io::Result<()> {
        let mut last = Ok(());
        for _ in 0..50 {
            last = Ok(());
            for dir in &self.dirs {
                if dir.exists()
                    && let Err(e) = std::fs::remove_dir(dir)
                {
                    last = Err(e);
                }
            }
            if last.is_ok() {
                return Ok(());
            }
            self.kill_all();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        last
    }

    /// Whether any of the group's directories exist.
    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|d| d.exists())
    }
}
