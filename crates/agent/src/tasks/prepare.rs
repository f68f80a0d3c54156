//! Preparing a task (program, user, mounts and their volumes, cgroup,
//! sandbox with one interface per network, generated `/etc` files, the
//! shim's spec) and removing all of it.
//!
//! Invariant: a task that failed to prepare, or ended, leaves no cgroup,
//! namespace, TUN or directory; `tasks/<id>/leftovers.json` names what a
//! crash would leave, and the next start removes it. Volumes are not the
//! task's: they outlive it (see `crate::volumes`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_orch::{Mount, MountKind, Task};
use shoal_runtime::exec::{self, ExecSpec, MountSpec};
use shoal_runtime::{Cgroup, Limits, NetNs};

use super::Context;
use crate::endpoints::Interface;
use crate::error::Error;
use crate::metrics::Op;

/// The PATH programs are looked up on and tasks start with, unless the
/// task sets its own.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a task could not be prepared: the task's error, as the user reads it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// The program is not on the node's PATH, or not executable.
    #[error("{0}")]
    Program(String),
    /// The user or group does not exist on the node.
    #[error("{0}")]
    User(String),
    /// A mount is invalid or cannot be made on this node.
    #[error("{0}")]
    Mount(String),
    /// The cgroup could not be made.
    #[error("cgroup: {0}")]
    Cgroup(#[source] std::io::Error),
    /// The sandbox could not be made.
    #[error("network sandbox: {0}")]
    Sandbox(#[source] Error),
    /// A file of the task could not be written.
    #[error("{what}: {source}")]
    File {
        /// Which.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a prepared task holds on the node.
#[derive(Debug)]
pub struct Prepared {
    /// `<data dir>/tasks/<id>`.
    pub dir: PathBuf,
    /// The sandbox's (and cgroup's) name.
    pub sandbox: String,
    /// The task's cgroup.
    pub cgroup: Cgroup,
    /// What the shim runs.
    pub spec: ExecSpec,
}

/// What a task leaves on the node, recorded so a restarted daemon can
/// remove what a crashed one left.
#[derive(Debug, Serialize, Deserialize)]
struct Leftovers {
    /// The task's sandbox (network namespace) and cgroup, which share it.
    name: String,
}

fn tasks_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tasks")
}

/// The sandbox and cgroup name of a task.
pub fn sandbox_name(prefix: &str, task: &Task) -> String {
    format!("{prefix}-t{}", &task.id[..task.id.len().min(10)])
}

/// Prepares a task; on failure, removes whatever was made already.
pub async fn prepare(ctx: &Context, task: &Task) -> Result<Prepared, PrepareError> {
    let result = try_prepare(ctx, task).await;
    if result.is_err() {
        let sandbox = sandbox_name(&ctx.settings.task_prefix, task);
        let _ = ctx.endpoints.remove(&sandbox).await; // absent if it failed before
        let cgroup = Cgroup::open(&sandbox);
        let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await; // likewise
        let _ = std::fs::remove_dir_all(tasks_dir(&ctx.settings.data_dir).join(&task.id));
    }
    result
}

async fn try_prepare(ctx: &Context, task: &Task) -> Result<Prepared, PrepareError> {
    // The task's own PATH (its `PATH=`, else the default it runs with), as
    // a container's image PATH is: not whatever PATH the daemon was
    // started with (a shell's pyenv shims, say).
    let path = task.spec.env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    let program = exec::lookup(&task.spec.image, path).map_err(PrepareError::Program)?;
    let (uid, gid) = exec::resolve_user(task.spec.user.as_deref()).map_err(PrepareError::User)?;
    let mounts = task_mounts(ctx, task)?;
    let file = |what: &str| {
        let what = what.to_owned();
        move |source| PrepareError::File { what, source }
    };
    let short = &task.id[..task.id.len().min(12)];
    let sandbox = sandbox_name(&ctx.settings.task_prefix, task);
    let dir = tasks_dir(&ctx.settings.data_dir).join(&task.id);
    std::fs::create_dir_all(&dir).map_err(file("task directory"))?;
    super::adopt::record_task(&dir, task).map_err(file("task record"))?;
    let leftovers = Leftovers { name: sandbox.clone() };
    if let Err(e) =
        std::fs::write(dir.join("leftovers.json"), serde_json::to_vec(&leftovers).expect("serialisable"))
    {
        tracing::warn!(task = %task.id, error = %e, "cannot record the task's leftovers: a crash now would leave them");
        ctx.metrics.failed(Op::RecordTask);
    }
    let r = &task.spec.resources;
    let limits = Limits { nano_cpus: r.limit_nano_cpus, memory: r.limit_memory, pids: r.limit_pids };
    let cgroup = Cgroup::create(&sandbox, &limits).map_err(PrepareError::Cgroup)?;
    let ifaces = task
        .attachments
        .iter()
        .map(|a| Interface::parse(a.vni, &a.subnet, a.ip))
        .collect::<Result<Vec<_>, _>>()
        .map_err(PrepareError::Sandbox)?;
    ctx.endpoints
        .create(&sandbox, &ifaces, ctx.settings.live_restore)
        .await
        .map_err(PrepareError::Sandbox)?;
    let hostname = task.spec.hostname.clone().unwrap_or_else(|| short.to_owned());
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for a in &task.attachments {
        hosts.push_str(&format!("{}\t{hostname}\n", a.ip));
    }
    let node_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let files = [
        ("hosts", hosts),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", crate::dns::task_resolv_conf(&node_resolv)),
    ];
    for (name, text) in &files {
        std::fs::write(dir.join(name), text).map_err(file(name))?;
    }
    let home = if uid == 0 { "/root".to_owned() } else { "/".to_owned() };
    let mut env =
        vec![format!("PATH={DEFAULT_PATH}"), format!("HOSTNAME={hostname}"), format!("HOME={home}")];
    for kv in &task.spec.env {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    let netns = NetNs::open(&sandbox).map_err(|e| PrepareError::Sandbox(Error::internal(e)))?;
    let spec = ExecSpec {
        netns: netns.path().to_owned(),
        hostname,
        program,
        args: task.spec.args.clone(),
        env,
        workdir: task.spec.workdir.clone().unwrap_or_else(|| "/".into()),
        uid,
        gid,
        binds: files.iter().map(|(name, _)| (dir.join(name), Path::new("/etc").join(name))).collect(),
        mounts,
        cgroup_procs: cgroup.procs_files(),
        masks: masks(&ctx.settings.data_dir, &ctx.settings.socket),
        init_pid_file: dir.join("init.pid"),
        exit_file: Some(dir.join("exit")),
        die_with_daemon: !ctx.settings.live_restore,
        hold: if ctx.settings.live_restore { output_fifos(&dir).to_vec() } else { Vec::new() },
    };
    std::fs::write(dir.join("spec.json"), serde_json::to_vec(&spec).expect("serialisable"))
        .map_err(file("task spec"))?;
    Ok(Prepared { dir, sandbox, cgroup, spec })
}

/// The FIFOs of a task's stdout and stderr, in its directory.
pub fn output_fifos(dir: &Path) -> [PathBuf; 2] {
    [dir.join("stdout"), dir.join("stderr")]
}

/// What a task must not see of its node: the daemon's data directory (the
/// swarm's keys, state, other tasks' files) and its API socket. Those
/// under `/tmp` or `/run` are hidden already (the task has its own), and
/// the filesystem's root is never masked.
fn masks(data_dir: &Path, socket: &Path) -> Vec<PathBuf> {
    [data_dir, socket]
        .into_iter()
        .map(|p| p.canonicalize().unwrap_or_else(|_| p.to_owned()))
        .filter(|p| p.is_absolute() && p.parent().is_some() && !exec::in_task_tmpfs(p))
        .collect()
}

/// The task's mounts, checked, with their volumes made, in mount order (a
/// parent before what is mounted inside it).
fn task_mounts(ctx: &Context, task: &Task) -> Result<Vec<MountSpec>, PrepareError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for mount in &task.spec.mounts {
        check_mount(mount, &ctx.settings.hostname).map_err(PrepareError::Mount)?;
        if !seen.insert(Path::new(&mount.target)) {
            return Err(PrepareError::Mount(format!("duplicate mount point: {}", mount.target)));
        }
        let source = match crate::volumes::volume_name(task, mount) {
            Some(name) => Some(ctx.volumes.ensure(&name).map_err(|e| PrepareError::Mount(e.to_string()))?),
            None if mount.kind == MountKind::Bind => Some(PathBuf::from(&mount.source)),
            None => None,
        };
        out.push(MountSpec { source, target: PathBuf::from(&mount.target), readonly: mount.readonly });
    }
    out.sort_by_key(|m| m.target.components().count());
    Ok(out)
}

/// Checks a mount against this node (`hostname`), with docker's wording
/// where docker has one: an absolute target that exists here (or lies in
/// the task's own `/tmp` or `/run`), a valid volume name, an absolute bind
/// source that exists, and no source for a tmpfs.
pub fn check_mount(mount: &Mount, hostname: &str) -> Result<(), String> {
    let target = Path::new(&mount.target);
    if !target.is_absolute() {
        return Err(format!("invalid mount target, must be an absolute path: {}", mount.target));
    }
    if target.parent().is_none() {
        return Err("invalid mount target: the destination can't be '/'".into());
    }
    let source = Path::new(&mount.source);
    match mount.kind {
        MountKind::Volume if !mount.source.is_empty() => crate::volumes::check_name(&mount.source)?,
        MountKind::Volume => {}
        MountKind::Bind if !source.is_absolute() => {
            return Err(format!(
                "invalid mount config for type \"bind\": invalid mount path: '{}' mount path must be absolute",
                mount.source
            ));
        }
        MountKind::Bind if !source.exists() => {
            return Err(format!(
                "invalid mount config for type \"bind\": bind source path does not exist: {}",
                mount.source
            ));
        }
        MountKind::Bind => {}
        MountKind::Tmpfs if !mount.source.is_empty() => {
            return Err("invalid mount config for type \"tmpfs\": source must not be specified".into());
        }
        MountKind::Tmpfs => {}
    }
    if !target.exists() && !exec::in_task_tmpfs(target) {
        return Err(format!(
            "mount target {} does not exist on node {hostname}: tasks share the node's filesystem, so mount \
             onto an existing directory (such as /srv or /mnt) or under /tmp or /run",
            mount.target
        ));
    }
    if mount.kind == MountKind::Bind && target.exists() && source.is_dir() != target.is_dir() {
        let kind = |p: &Path| if p.is_dir() { "a directory" } else { "a file" };
        return Err(format!(
            "invalid mount config for type \"bind\": {} is {} but the target {} is {}",
            mount.source,
            kind(source),
            mount.target,
            kind(target)
        ));
    }
    Ok(())
}

/// Kills what is left of a task and removes its cgroup, sandbox and
/// directory.
pub async fn cleanup(ctx: &Context, prepared: &Prepared) {
    prepared.cgroup.kill_all();
    let cgroup = prepared.cgroup.clone();
    match tokio::task::spawn_blocking(move || cgroup.remove()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(cgroup = %prepared.sandbox, error = %e, "cannot remove the task's cgroup");
            ctx.metrics.failed(Op::RemoveTask);
        }
        Err(e) => tracing::warn!(error = %e, "cgroup removal panicked"),
    }
    if let Err(e) = ctx.endpoints.remove(&prepared.sandbox).await {
        tracing::warn!(sandbox = %prepared.sandbox, error = %e, "cannot remove the task's sandbox");
        ctx.metrics.failed(Op::RemoveTask);
    }
    if let Err(e) = std::fs::remove_dir_all(&prepared.dir) {
        tracing::warn!(dir = %prepared.dir.display(), error = %e, "cannot remove the task's directory");
        ctx.metrics.failed(Op::RemoveTask);
    }
}

/// Removes what tasks of a crashed daemon left (processes, cgroups,
/// sandboxes, task directories), except the tasks in `adopted`, which
/// this daemon takes over (live restore).
/// Returns the removed tasks that were recorded, whose gossiped rows the
/// daemon withdraws once gossip runs.
pub fn remove_leftovers(data_dir: &Path, adopted: &std::collections::BTreeSet<String>) -> Vec<Task> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(tasks_dir(data_dir)) else { return removed };
    for entry in entries.flatten().filter(|e| !adopted.contains(&*e.file_name().to_string_lossy())) {
        if let Ok(text) = std::fs::read(entry.path().join("leftovers.json"))
            && let Ok(left) = serde_json::from_slice::<Leftovers>(&text)
        {
            tracing::info!(task = %entry.file_name().to_string_lossy(), "removing a task left by the previous run");
            let cgroup = Cgroup::open(&left.name);
            cgroup.kill_all();
            if let Err(e) = cgroup.remove() {
                tracing::warn!(cgroup = %left.name, error = %e, "cannot remove a cgroup left by the previous run");
            }
            if NetNs::exists(&left.name)
                && let Err(e) = NetNs::delete_by_name(&left.name)
            {
                tracing::warn!(sandbox = %left.name, error = %e, "cannot remove a sandbox left by the previous run");
            }
        }
        if let Ok(text) = std::fs::read(entry.path().join("task.json"))
            && let Ok(task) = serde_json::from_slice::<Task>(&text)
        {
            removed.push(task);
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_and_socket_are_hidden_unless_already_private() {
        let masked = masks(Path::new("/var/lib/shoal-none"), Path::new("/srv/shoal-none.sock"));
        assert_eq!(masked, [PathBuf::from("/var/lib/shoal-none"), PathBuf::from("/srv/shoal-none.sock")]);
        assert!(masks(Path::new("/tmp/lab/h1.data"), Path::new("/run/shoal/shoal.sock")).is_empty());
        assert!(
            masks(Path::new("/"), Path::new("relative.sock")).is_empty(),
            "never the root, never relative"
        );
    }

    fn mount(kind: MountKind, source: &str, target: &str) -> Mount {
        Mount { kind, source: source.into(), target: target.into(), readonly: false }
    }

    fn error(m: &Mount) -> String {
        check_mount(m, "node1").unwrap_err()
    }

    #[test]
    fn mounts_are_checked_against_the_node() {
        let file = std::env::temp_dir().join(format!("shoal-mount-check-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let file_source = file.display().to_string();
        let ok = [
            mount(MountKind::Volume, "data", "/usr"),
            mount(MountKind::Volume, "", "/usr"),
            mount(MountKind::Bind, "/usr", "/usr"),
            mount(MountKind::Tmpfs, "", "/usr"),
            // Missing targets are fine in the task's own /tmp and /run.
            mount(MountKind::Volume, "data", "/run/shoal-no-such-dir/data"),
            mount(MountKind::Bind, &file_source, "/tmp/shoal-no-such-dir/app.conf"),
        ];
        let bad = [
            (
                mount(MountKind::Volume, "data", "data"),
                "invalid mount target, must be an absolute path: data",
            ),
            (mount(MountKind::Volume, "data", "/"), "the destination can't be '/'"),
            (mount(MountKind::Volume, "./data", "/usr"), "\"./data\" includes invalid characters"),
            (
                mount(MountKind::Bind, "/shoal-no-such-dir", "/usr"),
                "invalid mount config for type \"bind\": bind source path does not exist: /shoal-no-such-dir",
            ),
            (mount(MountKind::Bind, "srv", "/usr"), "'srv' mount path must be absolute"),
            (mount(MountKind::Tmpfs, "x", "/usr"), "source must not be specified"),
            (mount(MountKind::Bind, &file_source, "/usr"), "is a file but the target /usr is a directory"),
        ];
        let checked: Vec<_> = ok.iter().map(|m| (m, check_mount(m, "node1"))).collect();
        let refused: Vec<_> = bad.iter().map(|(m, wanted)| (m, error(m), wanted)).collect();
        let missing = error(&mount(MountKind::Volume, "data", "/shoal-no-such-dir"));
        let _ = std::fs::remove_file(&file);
        for (m, result) in checked {
            assert_eq!(result, Ok(()), "{m:?}");
        }
        for (m, err, wanted) in refused {
            assert!(err.contains(wanted), "{m:?}: {err}");
        }
        assert_eq!(
            missing,
            "mount target /shoal-no-such-dir does not exist on node node1: tasks share the node's filesystem, \
             so mount onto an existing directory (such as /srv or /mnt) or under /tmp or /run"
        );
    }
}
