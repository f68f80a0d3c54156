//! The `exec` task runtime: a task is a process tree in fresh mount, UTS
//! and PID namespaces, inside the network namespace of its sandbox.
//!
//! The daemon starts `shoal __task-shim SPEC`. The shim (a child of the
//! daemon, single-threaded) joins the task's cgroups and network namespace,
//! unshares mount, UTS and PID namespaces, and forks the task's init, pid 1
//! of the new PID namespace. Init makes the mounts private, mounts a fresh
//! `/proc`, private `/tmp` and `/run`, binds the generated `/etc/hosts`,
//! `/etc/hostname` and `/etc/resolv.conf`, mounts the task's volumes, binds
//! and tmpfs mounts (all inside its own mount namespace: nothing is mounted
//! on the node's), sets the hostname, and forks the
//! program, which drops to the task's user, changes directory and execs.
//! Signals sent to the shim are forwarded through init to the program; when
//! the program exits, init exits with its status (128 + signal if killed),
//! which takes every other process of the namespace with it, and the shim
//! exits with the same status, written first to the task's exit file.
//!
//! Init dies with the shim (`PR_SET_PDEATHSIG`). The shim dies with the
//! daemon too, unless the task is to outlive it (live restore): then it
//! holds the read ends of the task's output FIFOs open, so the task's
//! writes neither fail nor stop while no daemon reads (up to the pipe's
//! buffer), and the next daemon adopts it by its pid.
//!
//! `shoal __enter SPEC` (for `task exec` and healthchecks) joins a running
//! task's namespaces and cgroups and runs a command there.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork};
use serde::{Deserialize, Serialize};

/// What the shim runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The sandbox's network namespace (a path under `/run/netns`).
    pub netns: PathBuf,
    /// Hostname inside.
    pub hostname: String,
    /// The program, resolved to a path.
    pub program: PathBuf,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// `KEY=VALUE`, the whole environment.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: String,
    /// User and group ids.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Files bound over paths inside: (source on the node, target).
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// Volumes, binds and tmpfs mounts, mounted in this order (a parent
    /// before what is mounted inside it).
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// `cgroup.procs` files to join.
    pub cgroup_procs: Vec<PathBuf>,
    /// The node's paths the task must not see (the daemon's data directory
    /// with its keys, its API socket): an empty read-only tmpfs over a
    /// directory, `/dev/null` over anything else.
    #[serde(default)]
    pub masks: Vec<PathBuf>,
    /// Where the shim writes init's pid.
    pub init_pid_file: PathBuf,
    /// Where the shim writes the task's exit code when it ends, for a
    /// daemon that adopted it and so cannot wait for it.
    #[serde(default)]
    pub exit_file: Option<PathBuf>,
    /// Whether the shim dies with the daemon that started it; when not,
    /// the task outlives a daemon restart (live restore).
    #[serde(default = "yes")]
    pub die_with_daemon: bool,
    /// FIFOs (the task's output) the shim holds open for reading while it
    /// lives, so the task's writes never meet a pipe without reader.
    #[serde(default)]
    pub hold: Vec<PathBuf>,
}

fn yes() -> bool {
    true
}

/// A directory or a fresh tmpfs mounted into a task, in the task's own
/// mount namespace only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// The node's directory (or file) to bind; `None` for a fresh tmpfs.
    pub source: Option<PathBuf>,
    /// Where it appears inside: an existing directory of the node, or any
    /// path under the task's own `/tmp` or `/run` (made if missing).
    pub target: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
}

/// Whether `path` lies in the task's own tmpfs (`/tmp` or `/run`), where
/// a missing mount target may be made without touching the node.
pub fn in_task_tmpfs(path: &Path) -> bool {
    path.starts_with("/tmp") || path.starts_with("/run")
}

/// What `__enter` runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnterSpec {
    /// The task's init (its namespaces are joined).
    pub pid: i32,
    /// `cgroup.procs` files to join.
    pub cgroup_procs: Vec<PathBuf>,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Working directory.
    pub workdir: String,
    /// Environment.
    pub env: Vec<String>,
    /// The command.
    pub argv: Vec<String>,
}

/// Finds `program` on `path` (a `PATH` value), as docker reports it missing.
pub fn lookup(program: &str, path: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) { Ok(p) } else { Err(format!("{program}: no such executable file")) };
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("executable file not found in $PATH: {program}"))
}

/// Resolves `user[:group]` (names or numbers) to ids; none is root.
pub fn resolve_user(user: Option<&str>) -> Result<(u32, u32), String> {
    let Some(user) = user.filter(|u| !u.is_empty()) else { return Ok((0, 0)) };
    let (name, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, default_gid) = match name.parse::<u32>() {
        Ok(uid) => (
            uid,
            nix::unistd::User::from_uid(Uid::from_raw(uid)).ok().flatten().map_or(uid, |u| u.gid.as_raw()),
        ),
        Err(_) => match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => (u.uid.as_raw(), u.gid.as_raw()),
            _ => return Err(format!("unable to find user {name}: no matching entries in passwd file")),
        },
    };
    let gid = match group {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match nix::unistd::Group::from_name(g) {
                Ok(Some(grp)) => grp.gid.as_raw(),
                _ => return Err(format!("unable to find group {g}: no matching entries in group file")),
            },
        },
    };
    Ok((uid, gid))
}

/// The signal named `name` (`SIGTERM`, `term`, `15`).
pub fn signal(name: &str) -> Option<Signal> {
    use std::str::FromStr;
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&full).ok().or_else(|| name.parse::<i32>().ok().and_then(|n| Signal::try_from(n).ok()))
}

/// An exit status as a shell reports it: the code, or 128 + the signal.
fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    let _ = writeln!(std::io::stderr(), "shoal: {what}: {e}");
    std::process::exit(127)
}

fn cstrings(items: impl IntoIterator<Item = impl AsRef<str>>) -> Vec<CString> {
    items.into_iter().filter_map(|s| CString::new(s.as_ref()).ok()).collect()
}

fn join_cgroups(procs: &[PathBuf]) {
    let me = std::process::id().to_string();
    for p in procs {
        if let Err(e) = std::fs::write(p, &me) {
            die(&format!("join cgroup {}", p.display()), e);
        }
    }
}

/// Waits for signals; forwards all but SIGCHLD to `child`, and returns the
/// child's exit code once it exits. Reaps every other child on the way (init
/// adopts the namespace's orphans).
fn forward_until_exit(child: Pid, signals: &SigSet) -> i32 {
    loop {
        let Ok(sig) = signals.wait() else { continue };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid() == Some(child)
                        && let Some(code) = exit_code(status)
                    {
                        return code;
                    }
                }
            }
        }
    }
}

/// Drops to `uid`/`gid`, changes to `workdir`, and execs; never returns.
fn exec_as(program: &Path, argv: &[CString], env: &[CString], uid: u32, gid: u32, workdir: &str) -> ! {
    let _ = std::fs::write("/proc/self/oom_score_adj", "0");
    if let Err(e) = nix::unistd::setgroups(&[Gid::from_raw(gid)]) {
        die("setgroups", e);
    }
    if let Err(e) = nix::unistd::setgid(Gid::from_raw(gid)) {
        die("setgid", e);
    }
    if let Err(e) = nix::unistd::setuid(Uid::from_raw(uid)) {
        die("setuid", e);
    }
    // Die with the parent (init, or `__enter` for checks and `task exec`):
    // a timed-out healthcheck must not live on inside the task. Set after
    // setuid, which clears it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if let Err(e) = nix::unistd::chdir(workdir) {
        die(&format!("chdir to {workdir}"), e);
    }
    let Ok(path) = CString::new(program.as_os_str().as_encoded_bytes()) else {
        die("program", "NUL in path")
    };
    let e = nix::unistd::execve(&path, argv, env).unwrap_err();
    die(&format!("exec {}", program.display()), e)
}

/// `shoal __task-shim SPEC`: see the module documentation. Never returns.
pub fn shim_main(spec_path: &Path) -> ! {
    let spec: ExecSpec = match std::fs::read(spec_path).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(spec)) => spec,
        Ok(Err(e)) => die("task spec", e),
        Err(e) => die("task spec", e),
    };
    if spec.die_with_daemon {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        if nix::unistd::getppid().as_raw() == 1 {
            std::process::exit(137); // the daemon died before we armed the signal
        }
    }
    // Held for the task's life (close-on-exec: the program never has them).
    let held: Vec<std::fs::File> = spec
        .hold
        .iter()
        .map(|fifo| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(fifo)
                .unwrap_or_else(|e| die(&format!("hold {}", fifo.display()), e))
        })
        .collect();
    join_cgroups(&spec.cgroup_procs);
    let _ = std::fs::write("/proc/self/oom_score_adj", "-998");
    let netns = std::fs::File::open(&spec.netns).unwrap_or_else(|e| die("open network namespace", e));
    if let Err(e) = setns(netns.as_fd(), CloneFlags::CLONE_NEWNET) {
        die("join network namespace", e);
    }
    drop(netns);
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID) {
        die("unshare namespaces", e);
    }
    // Opened now, written after the fork: init's private /tmp and /run may
    // hide the path by then (the daemon's data directory can live there).
    let mut pid_file =
        std::fs::File::create(&spec.init_pid_file).unwrap_or_else(|e| die("create the init pid file", e));
    let mut exit_file = spec
        .exit_file
        .as_ref()
        .map(|path| std::fs::File::create(path).unwrap_or_else(|e| die("create the exit file", e)));
    let all = SigSet::all();
    if let Err(e) = all.thread_block() {
        die("block signals", e);
    }
    // SAFETY: the shim is single-threaded (a freshly exec'd process that
    // started no threads), so the child may run any code after fork.
    match unsafe { fork() } {
        Err(e) => die("fork init", e),
        Ok(ForkResult::Child) => init(&spec),
        Ok(ForkResult::Parent { child }) => {
            let _ = pid_file.write_all(child.as_raw().to_string().as_bytes());
            drop(pid_file);
            let code = forward_until_exit(child, &all);
            if let Some(file) = exit_file.as_mut() {
                let _ = file.write_all(code.to_string().as_bytes());
            }
            drop(held);
            std::process::exit(code)
        }
    }
}

/// Pid 1 of the task: mounts, hostname, then the program.
fn init(spec: &ExecSpec) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let none: Option<&str> = None;
    let step = |what: &str, r: nix::Result<()>| {
        if let Err(e) = r {
            die(what, e);
        }
    };
    step("make mounts private", mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none));
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    step("mount /proc", mount(Some("proc"), "/proc", Some("proc"), hardened | MsFlags::MS_NOEXEC, none));
    // The generated files may live under /tmp or /run on the node: open
    // them before the private mounts hide them, and bind them by descriptor.
    let sources: Vec<std::fs::File> = spec
        .binds
        .iter()
        .map(|(source, _)| {
            std::fs::File::open(source).unwrap_or_else(|e| die(&format!("open {}", source.display()), e))
        })
        .collect();
    let mount_sources: Vec<Option<std::fs::File>> = spec
        .mounts
        .iter()
        .map(|m| {
            m.source.as_ref().map(|source| {
                std::fs::File::open(source).unwrap_or_else(|e| die(&format!("open {}", source.display()), e))
            })
        })
        .collect();
    step("mount /tmp", mount(Some("tmpfs"), "/tmp", Some("tmpfs"), hardened, Some("mode=1777")));
    step("mount /run", mount(Some("tmpfs"), "/run", Some("tmpfs"), hardened, Some("mode=755")));
    for path in &spec.masks {
        mask(path);
    }
    for (file, (_, target)) in sources.iter().zip(&spec.binds) {
        // A target that is a symlink (into /run, say) is bound where it points.
        let target = match std::fs::read_link(target) {
            Ok(link) => target.parent().map_or(link.clone(), |dir| dir.join(link)),
            Err(_) => target.clone(),
        };
        if !target.exists() {
            // Only inside the task's own tmpfs: never create files on the node.
            if !(target.starts_with("/run") || target.starts_with("/tmp")) {
                continue;
            }
            if let Some(dir) = target.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(&target, b"");
        }
        let source = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
        step(
            &format!("bind {}", target.display()),
            mount(Some(source.as_str()), target.as_path(), none, MsFlags::MS_BIND, none),
        );
    }
    drop(sources);
    for (mount, source) in spec.mounts.iter().zip(&mount_sources) {
        mount_one(mount, source.as_ref());
    }
    drop(mount_sources);
    step("set hostname", nix::unistd::sethostname(&spec.hostname));
    let mut argv = cstrings([spec.program.to_string_lossy()]);
    argv.extend(cstrings(&spec.args));
    let env = cstrings(&spec.env);
    let all = SigSet::all();
    // SAFETY: init is single-threaded (forked from the single-threaded shim).
    match unsafe { fork() } {
        Err(e) => die("fork task", e),
        Ok(ForkResult::Child) => {
            let _ = SigSet::empty().thread_set_mask();
            exec_as(&spec.program, &argv, &env, spec.uid, spec.gid, &spec.workdir)
        }
        Ok(ForkResult::Parent { child }) => std::process::exit(forward_until_exit(child, &all)),
    }
}

/// Hides the node's `path` from the task (after every source the task
/// needs was opened): a directory behind an empty read-only tmpfs, a file
/// or socket behind `/dev/null`. A path that does not exist has nothing to
/// hide; one that cannot be hidden stops the task.
fn mask(path: &Path) {
    let none: Option<&str> = None;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    let result = if meta.is_dir() {
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("tmpfs"), path, Some("tmpfs"), flags, Some("mode=000,size=4k"))
    } else {
        mount(Some("/dev/null"), path, none, MsFlags::MS_BIND, none)
    };
    if let Err(e) = result {
        die(&format!("hide {}", path.display()), e);
    }
}

/// Mounts `source` (a directory or file opened before `/tmp` and `/run`
/// were hidden; `None` for a fresh tmpfs) on the mount's target, read-only if
/// asked; dies naming the target on failure.
fn mount_one(spec: &MountSpec, source: Option<&std::fs::File>) {
    let none: Option<&str> = None;
    let target = spec.target.as_path();
    let what = |verb: &str| format!("{verb} {}", target.display());
    if !target.exists() {
        // Only inside the task's own tmpfs: never create anything on the node.
        if !in_task_tmpfs(target) {
            die(&what("mount"), "the target does not exist on this node");
        }
        // A file bound onto a file, anything else onto a directory.
        let file = source.and_then(|s| s.metadata().ok()).is_some_and(|m| !m.is_dir());
        let made = match target.parent() {
            Some(dir) if file => std::fs::create_dir_all(dir).and_then(|()| std::fs::write(target, b"")),
            _ => std::fs::create_dir_all(target),
        };
        if let Err(e) = made {
            die(&what("create mount target"), e);
        }
    }
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let (result, kept) = match source {
        Some(dir) => {
            let fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(dir));
            (
                mount(Some(fd.as_str()), target, none, MsFlags::MS_BIND | MsFlags::MS_REC, none),
                MsFlags::empty(),
            )
        }
        None => (mount(Some("tmpfs"), target, Some("tmpfs"), hardened, Some("mode=1777")), hardened),
    };
    if let Err(e) = result {
        die(&what("mount"), e);
    }
    if spec.readonly {
        // A bind remount changes only this mount's flags; those not named
        // are cleared, so a tmpfs names the ones it keeps.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | kept;
        if let Err(e) = mount(none, target, none, flags, none) {
            die(&what("make read-only"), e);
        }
    }
}

/// `shoal __enter SPEC`: runs a command in a running task. Never returns.
pub fn enter_main(spec: &EnterSpec) -> ! {
    let Some(program) = spec.argv.first() else { die("exec", "no command given") };
    let open = |ns: &str| {
        std::fs::File::open(format!("/proc/{}/ns/{ns}", spec.pid))
            .unwrap_or_else(|e| die(&format!("task namespace {ns} (is the task running?)"), e))
    };
    let namespaces = [
        (open("net"), CloneFlags::CLONE_NEWNET),
        (open("uts"), CloneFlags::CLONE_NEWUTS),
        (open("pid"), CloneFlags::CLONE_NEWPID),
        (open("mnt"), CloneFlags::CLONE_NEWNS),
    ];
    join_cgroups(&spec.cgroup_procs);
    for (file, flag) in &namespaces {
        if let Err(e) = setns(file.as_fd(), *flag) {
            die("join task namespace", e);
        }
    }
    let path =
        spec.env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/usr/sbin:/usr/bin:/sbin:/bin");
    let program = lookup(program, path).unwrap_or_else(|e| die("exec", e));
    let argv = cstrings(&spec.argv);
    let env = cstrings(&spec.env);
    let all = SigSet::all();
    let _ = all.thread_block();
    // SAFETY: `__enter` is single-threaded (a freshly exec'd process).
    match unsafe { fork() } {
        Err(e) => die("fork", e),
        Ok(ForkResult::Child) => {
            let _ = SigSet::empty().thread_set_mask();
            exec_as(&program, &argv, &env, spec.uid, spec.gid, &spec.workdir)
        }
        Ok(ForkResult::Parent { child }) => std::process::exit(forward_until_exit(child, &all)),
    }
}
