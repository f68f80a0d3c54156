//! One task's run on this node, from accepted to its final state.
//!
//! [`Lifecycle`] decides every status a task reports, as a pure state
//! machine: the supervisor ([`supervise`]) tells it what happened (prepared,
//! started, a check passed or failed, a stop was asked, the task exited)
//! and does what it answers (report, send the stop signal). The supervisor
//! owns the IO: the shim process, its output, the healthcheck processes and
//! the timers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_control::{LogLine, Report};
use shoal_orch::{HealthCheck, Task, TaskState, TaskStatus};
use shoal_runtime::EnterSpec;
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, BufReader};
use tokio::sync::watch;

use super::health::{Health, HealthMonitor, run_check};
use super::prepare::{self, Prepared};
use super::{Context, ExecInfo, adopt};
use crate::clock::now_ms;
use crate::metrics::Op;

/// How long a serving task is announced as draining before its stop signal:
/// well above the p99 of a directory change reaching every node (275 ms in
/// `bench-discovery`).
const DRAIN_NOTICE: Duration = Duration::from_secs(1);

/// How often an adopted task's shim is checked for its exit.
const ADOPTED_POLL: Duration = Duration::from_millis(100);

/// The longest log line kept; longer ones are cut.
const MAX_LINE: usize = 16 * 1024;

/// Log lines one output stream of a task may send each second; beyond,
/// lines are dropped and counted, so a task printing in a tight loop
/// cannot grow its node's (or the manager's) queues without bound. Half
/// the manager's ring of 1000 lines a task, so the ring always holds the
/// line that says what was dropped (journald's default is about 333).
const LOG_LINES_PER_SEC: u64 = 500;

/// The per-second budget of one output stream.
#[derive(Debug)]
struct LogBudget {
    window: Instant,
    sent: u64,
    dropped: u64,
}

impl LogBudget {
    fn new(now: Instant) -> LogBudget {
        LogBudget { window: now, sent: 0, dropped: 0 }
    }

    /// Whether a line read at `now` may be sent, and the number of lines
    /// dropped in the window that just ended (to say so), if any.
    fn admit(&mut self, now: Instant) -> (bool, Option<u64>) {
        let mut ended = None;
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            ended = (self.dropped > 0).then_some(self.dropped);
            *self = LogBudget::new(now);
        }
        if self.sent < LOG_LINES_PER_SEC {
            self.sent += 1;
            (true, ended)
        } else {
            self.dropped += 1;
            (false, ended)
        }
    }
}

/// How a task's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code (128 + signal when killed), if the shim could be waited for.
    pub code: Option<i32>,
    /// Whether the kernel killed something of the task for memory.
    pub oom: bool,
}

/// The statuses of one task's run. No IO, no clock: times come in.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    health: Option<HealthMonitor>,
    /// The running status last reported (its health changes).
    running: Option<TaskStatus>,
    stopping: bool,
    unhealthy: bool,
}

/// What one healthcheck result means.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Checked {
    /// A status to report (the health changed).
    pub report: Option<TaskStatus>,
    /// Stop the task: it became unhealthy.
    pub stop: bool,
}

impl Lifecycle {
    /// A task with this healthcheck, accepted by this node.
    pub fn new(health: Option<HealthCheck>) -> Lifecycle {
        Lifecycle { health: health.map(HealthMonitor::new), running: None, stopping: false, unhealthy: false }
    }

    /// The statuses of taking a task: accepted, then preparing.
    pub fn accepted(now: u64) -> [TaskStatus; 2] {
        [
            TaskStatus::new(TaskState::Accepted, now, "accepted"),
            TaskStatus::new(TaskState::Preparing, now, "preparing"),
        ]
    }

    /// The end of a task that could not be prepared.
    pub fn rejected(err: impl Into<String>, now: u64) -> TaskStatus {
        TaskStatus::new(TaskState::Rejected, now, "preparing failed").with_err(err)
    }

    /// Prepared.
    pub fn ready(now: u64) -> TaskStatus {
        TaskStatus::new(TaskState::Ready, now, "prepared")
    }

    /// The process is being started.
    pub fn starting(now: u64) -> TaskStatus {
        TaskStatus::new(TaskState::Starting, now, "starting")
    }

    /// The end of a task stopped before it started.
    pub fn shutdown(now: u64) -> TaskStatus {
        TaskStatus::new(TaskState::Shutdown, now, "shutdown")
    }

    /// The end of a task whose process could not be started.
    pub fn start_failed(err: impl std::fmt::Display, now: u64) -> TaskStatus {
        TaskStatus::new(TaskState::Failed, now, "starting failed")
            .with_err(format!("cannot start the task: {err}"))
    }

    /// The process started: running, with health `starting` if checked.
    pub fn started(&mut self, now: u64) -> TaskStatus {
        let mut running = TaskStatus::new(TaskState::Running, now, "started");
        if self.health.is_some() {
            running.health = Some(Health::Starting.as_str().into());
        }
        self.running = Some(running.clone());
        running
    }

    /// The healthcheck, if any.
    pub fn health_policy(&self) -> Option<&HealthCheck> {
        self.health.as_ref().map(HealthMonitor::policy)
    }

    /// One healthcheck result, `since_start` after the task started, at
    /// `now` (the time a changed status carries).
    pub fn checked(&mut self, healthy: bool, since_start: Duration, now: u64) -> Checked {
        let (Some(monitor), Some(running)) = (self.health.as_mut(), self.running.as_mut()) else {
            return Checked { report: None, stop: false };
        };
        if self.stopping {
            return Checked { report: None, stop: false };
        }
        let Some(health) = monitor.observe(healthy, since_start) else {
            return Checked { report: None, stop: false };
        };
        running.health = Some(health.as_str().into());
        running.message = format!("health: {}", health.as_str());
        running.timestamp_ms = now;
        let stop = health == Health::Unhealthy;
        if stop {
            self.unhealthy = true;
            self.stopping = true;
        }
        Checked { report: Some(running.clone()), stop }
    }

    /// A stop was asked: true if this begins stopping (send the stop
    /// signal now, SIGKILL after the grace period).
    pub fn stop(&mut self) -> bool {
        !std::mem::replace(&mut self.stopping, true)
    }

    /// Whether the task is being stopped.
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// The final status, once the process exited.
    pub fn exited(&self, exit: Exit, now: u64) -> TaskStatus {
        let mut status = if self.unhealthy {
            let failures = self.health.as_ref().map_or(0, HealthMonitor::failures);
            TaskStatus::new(TaskState::Failed, now, "unhealthy")
                .with_err(format!("task unhealthy: its healthcheck failed {failures} times in a row"))
        } else if self.stopping {
            TaskStatus::new(TaskState::Shutdown, now, "shutdown")
        } else if exit.oom {
            TaskStatus::new(TaskState::Failed, now, "out of memory").with_err(format!(
                "task: out of memory: killed by the kernel for exceeding its memory limit (exit {})",
                exit.code.unwrap_or(137)
            ))
        } else if exit.code == Some(0) {
            TaskStatus::new(TaskState::Complete, now, "finished")
        } else {
            TaskStatus::new(TaskState::Failed, now, "exited")
                .with_err(format!("task: non-zero exit ({})", exit.code.unwrap_or(-1)))
        };
        status.exit_code = exit.code;
        status.health = self.running.as_ref().and_then(|r| r.health.clone());
        status
    }
}

/// The shim of a running task: a child this daemon spawned, or one a
/// previous daemon left (live restore), which only a pidfd can wait for.
#[derive(Debug)]
enum Shim {
    Child(tokio::process::Child),
    /// Its pidfd, polled (as an adopted shim is not our child, only its
    /// pidfd tells when it exits; its parent reaps it).
    Adopted {
        pid: nix::unistd::Pid,
        pidfd: std::os::fd::OwnedFd,
        dir: PathBuf,
    },
}

impl Shim {
    fn pid(&self) -> Option<nix::unistd::Pid> {
        match self {
            Shim::Child(child) => child.id().map(|p| nix::unistd::Pid::from_raw(p as i32)),
            Shim::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// Waits for the shim to exit: its code (128 + signal if killed).
    async fn wait(&mut self) -> Option<i32> {
        match self {
            Shim::Child(child) => child.wait().await.ok().map(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
            }),
            Shim::Adopted { pidfd, dir, .. } => {
                while !shoal_runtime::process::exited(pidfd) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                Some(adopt::exit_code(dir))
            }
        }
    }

    fn exited(&mut self) -> bool {
        match self {
            Shim::Child(child) => matches!(child.try_wait(), Ok(Some(_))),
            Shim::Adopted { pidfd, .. } => shoal_runtime::process::exited(pidfd),
        }
    }
}

/// A task whose process runs: what the run loop drives.
struct Started {
    prepared: Prepared,
    shim: Shim,
    readers: Vec<tokio::task::JoinHandle<()>>,
    enter: Option<EnterSpec>,
    life: Lifecycle,
    /// When the task started, as its healthcheck's start period counts.
    since: Instant,
}

/// Runs one task to its end; returns its final status. Everything the
/// task made is gone when this returns.
pub async fn supervise(
    ctx: &Context,
    task: Task,
    stop: watch::Receiver<bool>,
    exec_slot: Arc<Mutex<Option<ExecInfo>>>,
) -> TaskStatus {
    let id = task.id.clone();
    let report = |status: TaskStatus| ctx.report(&id, status);
    for status in Lifecycle::accepted(now_ms()) {
        report(status);
    }
    let prepared = match prepare::prepare(ctx, &task).await {
        Ok(p) => p,
        Err(e) => return Lifecycle::rejected(e.to_string(), now_ms()),
    };
    report(Lifecycle::ready(now_ms()));
    if *stop.borrow() {
        prepare::cleanup(ctx, &prepared).await;
        return Lifecycle::shutdown(now_ms());
    }
    report(Lifecycle::starting(now_ms()));
    let (mut shim, readers) = match spawn(ctx, &id, &prepared) {
        Ok(spawned) => spawned,
        Err(e) => {
            prepare::cleanup(ctx, &prepared).await;
            return Lifecycle::start_failed(e, now_ms());
        }
    };
    ctx.metrics.task_started();
    if let Some(pid) = shim.pid()
        && let Err(e) = adopt::record_shim(&prepared.dir, pid.as_raw())
    {
        tracing::warn!(task = %id, error = %e, "cannot record the task's shim: the next daemon will not adopt it");
        ctx.metrics.failed(Op::RecordTask);
    }
    let enter = wait_init(&prepared, &mut shim).await;
    let mut life = Lifecycle::new(task.spec.health.clone());
    report(life.started(now_ms()));
    ctx.announcer.running(&task, life.health_policy().is_none()).await;
    let started = Started { prepared, shim, readers, enter, life, since: Instant::now() };
    run(ctx, &task, started, stop, exec_slot).await
}

/// Takes over a task a previous daemon of this node left running (live
/// restore): its sandbox, output and shim, then runs it to its end as
/// [`supervise`] does. Its status is reported only when it changes: the
/// manager has it running already.
pub async fn adopt(
    ctx: &Context,
    survivor: adopt::Survivor,
    stop: watch::Receiver<bool>,
    exec_slot: Arc<Mutex<Option<ExecInfo>>>,
) -> TaskStatus {
    let adopt::Survivor { task, dir, spec, shim, pidfd } = survivor;
    let sandbox = prepare::sandbox_name(&ctx.settings.task_prefix, &task);
    let prepared = Prepared { dir, cgroup: shoal_runtime::Cgroup::open(&sandbox), sandbox, spec };
    let pid = nix::unistd::Pid::from_raw(shim.pid);
    let failed = |what: String| {
        TaskStatus::new(TaskState::Failed, now_ms(), "adopting failed")
            .with_err(format!("the restarted daemon could not take the task back: {what}"))
    };
    let ifaces = task
        .attachments
        .iter()
        .map(|a| crate::endpoints::Interface::parse(a.vni, &a.subnet, a.ip))
        .collect::<Result<Vec<_>, _>>();
    let adopted = match ifaces {
        Ok(ifaces) => ctx.endpoints.adopt(&prepared.sandbox, &ifaces).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let readers = match adopted {
        Ok(_) => prepare::output_fifos(&prepared.dir)
            .iter()
            .zip([false, true])
            .filter_map(|(path, stderr)| {
                let fd = shoal_runtime::process::open_output(path).ok()?;
                let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()?;
                Some(tokio::spawn(forward_lines(pipe, stderr, task.id.clone(), ctx.clone())))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(task = %task.id, error = %e, "cannot adopt a task left running: stopping it");
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            prepared.cgroup.kill_all();
            prepare::cleanup(ctx, &prepared).await;
            return failed(e);
        }
    };
    tracing::info!(task = %task.id, shim = shim.pid, "adopted a task left running by the previous daemon");
    let mut shim = Shim::Adopted { pid, pidfd, dir: prepared.dir.clone() };
    let enter = wait_init(&prepared, &mut shim).await;
    let mut life = Lifecycle::new(task.spec.health.clone());
    let _ = life.started(now_ms());
    // Health as it is now, before the task is announced: one check.
    let mut serves = true;
    if let (Some(policy), Some(enter)) = (life.health_policy().cloned(), &enter) {
        let healthy = run_check(enter, &policy.cmd, Duration::from_millis(policy.timeout_ms)).await;
        let past_start = Duration::from_millis(policy.start_period_ms) + Duration::from_secs(1);
        let checked = life.checked(healthy, past_start, now_ms());
        serves = healthy;
        if let Some(status) = checked.report {
            ctx.report(&task.id, status);
        }
    }
    ctx.announcer.running(&task, serves).await;
    let started = Started { prepared, shim, readers, enter, life, since: Instant::now() };
    run(ctx, &task, started, stop, exec_slot).await
}

/// Spawns the shim with its output on the task's FIFOs; returns it and
/// the tasks forwarding its output.
fn spawn(
    ctx: &Context,
    id: &str,
    prepared: &Prepared,
) -> std::io::Result<(Shim, Vec<tokio::task::JoinHandle<()>>)> {
    let [out_path, err_path] = prepare::output_fifos(&prepared.dir);
    let (out, out_writer) = shoal_runtime::process::output_fifo(&out_path)?;
    let (err, err_writer) = shoal_runtime::process::output_fifo(&err_path)?;
    let child = tokio::process::Command::new(PathBuf::from("/proc/self/exe"))
        .arg("__task-shim")
        .arg(prepared.dir.join("spec.json"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(out_writer))
        .stderr(std::process::Stdio::from(err_writer))
        .spawn()?;
    let mut readers = Vec::new();
    for (fd, stderr) in [(out, false), (err, true)] {
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
        readers.push(tokio::spawn(forward_lines(pipe, stderr, id.to_owned(), ctx.clone())));
    }
    Ok((Shim::Child(child), readers))
}

/// Runs a started task until its process exits: healthchecks, stop
/// requests, the grace period; then removes what it made.
async fn run(
    ctx: &Context,
    task: &Task,
    started: Started,
    mut stop: watch::Receiver<bool>,
    exec_slot: Arc<Mutex<Option<ExecInfo>>>,
) -> TaskStatus {
    let Started { prepared, mut shim, readers, enter, mut life, since } = started;
    let id = task.id.clone();
    let report = |status: TaskStatus| ctx.report(&id, status);
    *exec_slot.lock().unwrap_or_else(|e| e.into_inner()) =
        enter.clone().map(|enter| ExecInfo { task: id.clone(), enter });
    let pid = shim.pid();
    let check_every = life.health_policy().map(|h| Duration::from_millis(h.interval_ms));
    let check_timeout = life.health_policy().map_or(Duration::ZERO, |h| Duration::from_millis(h.timeout_ms));
    let check_cmd = life.health_policy().map(|h| h.cmd.clone()).unwrap_or_default();
    let mut next_check = check_every.map(|every| Instant::now() + every);
    let mut kill_at: Option<Instant> = None;
    // The stop signal now, SIGKILL after the grace period.
    let begin_stop = || {
        if let Some(pid) = pid {
            let signal = shoal_runtime::exec::signal(&task.spec.stop_signal)
                .unwrap_or(nix::sys::signal::Signal::SIGTERM);
            let _ = nix::sys::signal::kill(pid, signal);
        }
        Some(Instant::now() + Duration::from_millis(task.spec.stop_grace_ms))
    };
    let code = loop {
        let wake = [next_check, kill_at].into_iter().flatten().min();
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            code = shim.wait() => break code,
            changed = stop.changed(), if !life.is_stopping() => {
                if (changed.is_err() || *stop.borrow()) && life.stop() {
                    // Every node hears that the task drains before it gets
                    // its stop signal, so no new connection meets a closing
                    // listener (Swarm waits 2 s for the same reason).
                    if ctx.announcer.stopping(&id).await {
                        tokio::time::sleep(DRAIN_NOTICE).await;
                    }
                    kill_at = begin_stop();
                    next_check = None;
                }
            }
            () = sleep => {
                if kill_at.is_some_and(|at| Instant::now() >= at) {
                    if let Some(pid) = pid {
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                    prepared.cgroup.kill_all();
                    kill_at = None;
                    continue;
                }
                let (Some(every), Some(enter)) = (check_every, &enter) else { next_check = None; continue };
                let healthy = run_check(enter, &check_cmd, check_timeout).await;
                let checked = life.checked(healthy, since.elapsed(), now_ms());
                if let Some(status) = checked.report {
                    let serves = status.health.as_deref() == Some(Health::Healthy.as_str());
                    report(status);
                    ctx.announcer.health(&id, serves).await;
                }
                if checked.stop {
                    ctx.announcer.stopping(&id).await;
                    kill_at = begin_stop();
                    next_check = None;
                } else {
                    next_check = Some(Instant::now() + every);
                }
            }
        }
    };
    *exec_slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    ctx.announcer.ended(&id).await;
    let oom = prepared.cgroup.oom_kills() > 0;
    // The task's processes are gone, but a FIFO's reader sees its end only
    // once every writer closed: the cgroup's last ones are killed first.
    prepared.cgroup.kill_all();
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
    }
    prepare::cleanup(ctx, &prepared).await;
    life.exited(Exit { code, oom }, now_ms())
}

/// Waits for the shim to write init's pid: what `task exec` and the
/// healthcheck enter. None if the shim exited first.
async fn wait_init(prepared: &Prepared, shim: &mut Shim) -> Option<EnterSpec> {
    let mut pid = None;
    // The shim writes it right after its fork; allow for a loaded node.
    for _ in 0..1000 {
        if let Ok(text) = std::fs::read_to_string(prepared.dir.join("init.pid"))
            && let Ok(p) = text.trim().parse::<i32>()
        {
            pid = Some(p);
            break;
        }
        if shim.exited() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pid.map(|pid| EnterSpec {
        pid,
        cgroup_procs: prepared.cgroup.procs_files(),
        uid: prepared.spec.uid,
        gid: prepared.spec.gid,
        workdir: prepared.spec.workdir.clone(),
        env: prepared.spec.env.clone(),
        argv: Vec::new(),
    })
}

/// Sends a task's output stream to the manager line by line, within
/// [`LOG_LINES_PER_SEC`]; what is dropped is counted and said in the log.
/// When the daemon is released (live restore), sends what it read already
/// and stops reading: the rest stays in the FIFO for the next daemon (a
/// line read in part is sent in two).
async fn forward_lines(pipe: impl tokio::io::AsyncRead + Unpin, stderr: bool, task: String, ctx: Context) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    let mut budget = LogBudget::new(Instant::now());
    let mut released = ctx.released.subscribe();
    let send = |text: &[u8]| {
        let text = String::from_utf8_lossy(text).trim_end_matches(['\n', '\r']).to_owned();
        let line = LogLine { ts_ms: now_ms(), stderr, text };
        let _ = ctx.reports.send(Report::Logs { task: task.clone(), lines: vec![line] });
    };
    loop {
        buf.clear();
        let read = {
            let mut limited = (&mut reader).take(MAX_LINE as u64);
            tokio::select! {
                read = limited.read_until(b'\n', &mut buf) => Some(read),
                _ = released.wait_for(|r| *r) => None,
            }
        };
        let Some(read) = read else {
            buf.extend_from_slice(reader.buffer());
            for line in buf.split_inclusive(|b| *b == b'\n') {
                send(line);
            }
            return;
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let (admitted, dropped) = budget.admit(Instant::now());
                if let Some(n) = dropped {
                    ctx.metrics.log_lines_dropped(n);
                    send(
                        format!("shoal: dropped {n} log lines (over {LOG_LINES_PER_SEC} a second)")
                            .as_bytes(),
                    );
                }
                if admitted {
                    send(&buf);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u64) -> HealthCheck {
        HealthCheck { cmd: "true".into(), interval_ms: 1000, timeout_ms: 1000, retries, start_period_ms: 0 }
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn log_lines_beyond_the_budget_are_dropped_and_said() {
        let start = Instant::now();
        let mut budget = LogBudget::new(start);
        let admitted = (0..LOG_LINES_PER_SEC + 500).filter(|_| budget.admit(start).0).count() as u64;
        assert_eq!(admitted, LOG_LINES_PER_SEC);
        let (next, dropped) = budget.admit(start + SEC);
        assert!(next, "a new second, a new budget");
        assert_eq!(dropped, Some(500), "the drops of the second that ended");
        assert_eq!(budget.admit(start + SEC * 2).1, None, "nothing dropped: nothing to say");
    }

    #[test]
    fn a_task_runs_and_ends_by_its_exit() {
        let [a, p] = Lifecycle::accepted(1);
        assert_eq!((a.state, p.state), (TaskState::Accepted, TaskState::Preparing));
        let mut life = Lifecycle::new(None);
        let running = life.started(2);
        assert_eq!((running.state, running.health), (TaskState::Running, None));
        let done = life.exited(Exit { code: Some(0), oom: false }, 3);
        assert_eq!((done.state, done.exit_code, done.err), (TaskState::Complete, Some(0), None));
        let failed = life.exited(Exit { code: Some(3), oom: false }, 3);
        assert_eq!(failed.state, TaskState::Failed);
        assert_eq!(failed.err.as_deref(), Some("task: non-zero exit (3)"));
        let oom = life.exited(Exit { code: Some(137), oom: true }, 3);
        assert!(oom.err.unwrap().starts_with("task: out of memory"), "docker's wording");
        let lost = life.exited(Exit { code: None, oom: false }, 3);
        assert_eq!(lost.err.as_deref(), Some("task: non-zero exit (-1)"));
    }

    #[test]
    fn a_stopped_task_shuts_down_whatever_its_exit() {
        let mut life = Lifecycle::new(None);
        let _ = life.started(1);
        assert!(life.stop(), "the first stop sends the signal");
        assert!(!life.stop(), "a second stop does nothing more");
        let end = life.exited(Exit { code: Some(143), oom: false }, 2);
        assert_eq!((end.state, end.exit_code), (TaskState::Shutdown, Some(143)));
        assert_eq!(Lifecycle::shutdown(3).state, TaskState::Shutdown);
        assert_eq!(Lifecycle::rejected("no such program", 3).state, TaskState::Rejected);
        assert!(Lifecycle::start_failed("ENOMEM", 3).err.unwrap().contains("cannot start the task: ENOMEM"));
    }

    #[test]
    fn health_is_reported_when_it_changes_and_unhealthy_fails_the_task() {
        let mut life = Lifecycle::new(Some(check(2)));
        assert_eq!(life.started(1).health.as_deref(), Some("starting"));
        let c = life.checked(true, SEC, 9);
        assert_eq!(c.report.as_ref().and_then(|s| s.health.as_deref()), Some("healthy"));
        let report = c.report.unwrap();
        assert_eq!((report.message.as_str(), report.timestamp_ms), ("health: healthy", 9), "when it changed");
        assert_eq!(life.checked(true, 2 * SEC, 9), Checked { report: None, stop: false });
        assert_eq!(life.checked(false, 3 * SEC, 9), Checked { report: None, stop: false });
        let c = life.checked(false, 4 * SEC, 9);
        assert!(c.stop);
        assert_eq!(c.report.unwrap().health.as_deref(), Some("unhealthy"));
        assert!(life.is_stopping() && !life.stop(), "stopping already");
        let end = life.exited(Exit { code: Some(143), oom: false }, 5);
        assert_eq!(end.state, TaskState::Failed);
        assert_eq!(end.err.as_deref(), Some("task unhealthy: its healthcheck failed 2 times in a row"));
        assert_eq!(end.health.as_deref(), Some("unhealthy"));
    }

    #[test]
    fn checks_after_a_stop_change_nothing() {
        let mut life = Lifecycle::new(Some(check(1)));
        let _ = life.started(1);
        assert!(life.stop());
        assert_eq!(life.checked(false, SEC, 9), Checked { report: None, stop: false });
        assert_eq!(life.exited(Exit { code: Some(0), oom: false }, 2).state, TaskState::Shutdown);
    }
}
