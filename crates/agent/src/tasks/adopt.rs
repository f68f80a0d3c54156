//! Live restore: the tasks a previous daemon of this node left running,
//! found in `<data dir>/tasks/<id>/` and proved to be those very processes.
//!
//! A task's directory holds what adoption needs: `task.json` (the task as
//! it was started), `spec.json` (what its shim runs), `shim.json` (the
//! shim's pid and start time), `init.pid`, the output FIFOs `stdout` and
//! `stderr`, and `exit` (the code the shim writes as it ends). A task is a
//! survivor when all of these read back and its shim is the same process
//! (pid and start time); anything else is a leftover, removed at start.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_orch::Task;
use shoal_runtime::ExecSpec;
use shoal_runtime::process::{pidfd_if_same, start_time};

/// The shim of a running task, as recorded when it started.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ShimRecord {
    /// Its pid.
    pub pid: i32,
    /// Its start time (clock ticks since boot), which tells it from a later
    /// process under the same pid.
    pub started: u64,
}

/// A running task a previous daemon left.
#[derive(Debug)]
pub struct Survivor {
    /// The task as it was started.
    pub task: Task,
    /// Its directory.
    pub dir: PathBuf,
    /// What its shim runs.
    pub spec: ExecSpec,
    /// Its shim.
    pub shim: ShimRecord,
    /// A pidfd of the shim, proving it is the recorded process.
    pub pidfd: OwnedFd,
}

/// Records the shim of the task in `dir`, once spawned.
pub fn record_shim(dir: &Path, pid: i32) -> std::io::Result<()> {
    let started = start_time(pid).ok_or_else(|| std::io::Error::other("the shim exited at once"))?;
    let record = ShimRecord { pid, started };
    std::fs::write(dir.join("shim.json"), serde_json::to_vec(&record).expect("serialisable"))
}

/// Records the task in `dir`, as it is started.
pub fn record_task(dir: &Path, task: &Task) -> std::io::Result<()> {
    std::fs::write(dir.join("task.json"), serde_json::to_vec(task).expect("serialisable"))
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The survivors among `<data dir>/tasks/*`.
pub fn survivors(data_dir: &Path) -> Vec<Survivor> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("tasks")) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let (Some(task), Some(spec), Some(shim)) = (
            read::<Task>(&dir.join("task.json")),
            read::<ExecSpec>(&dir.join("spec.json")),
            read::<ShimRecord>(&dir.join("shim.json")),
        ) else {
            continue;
        };
        if task.id != entry.file_name().to_string_lossy() {
            continue;
        }
        let Some(pidfd) = pidfd_if_same(shim.pid, shim.started) else { continue };
        found.push(Survivor { task, dir, spec, shim, pidfd });
    }
    found.sort_by(|a, b| a.task.id.cmp(&b.task.id));
    found
}

/// The task ids of `survivors`.
pub fn ids(survivors: &[Survivor]) -> BTreeSet<String> {
    survivors.iter().map(|s| s.task.id.clone()).collect()
}

/// The exit code the shim in `dir` wrote as it ended; 137 if it wrote
/// none (it was killed).
pub fn exit_code(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("exit")).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(137)
}
