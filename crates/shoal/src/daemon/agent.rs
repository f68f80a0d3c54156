//! The agent: runs the tasks the manager assigns to this node, with the
//! `exec` runtime, and reports their status and output.
//!
//! Each assigned task gets a supervisor (a tokio task) that prepares it
//! (program, user, cgroup, sandbox with one overlay interface per network,
//! generated files), starts the shim, runs the healthcheck, forwards the
//! output, stops it on request (the stop signal, then SIGKILL after the
//! grace period), and cleans everything up before it reports the end: a
//! task that reached a final state has no process, namespace, TUN, cgroup
//! or mount left. Reports go out on one channel, which the manager drains
//! directly (on the manager's node) or the worker's session forwards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shoal_orch::{Task, TaskState, TaskStatus};
use shoal_runtime::exec::{self, EnterSpec, ExecSpec};
use shoal_runtime::{Cgroup, Limits, NetNs};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, BufReader};
use tokio::sync::{mpsc, watch};

use super::state::{Interface, State};

/// A line of a task's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    /// When it was read, ms since the epoch.
    pub ts_ms: u64,
    /// Whether it came from stderr.
    pub stderr: bool,
    /// The line, without its newline.
    pub text: String,
}

/// What the agent tells the manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Report {
    /// A task's new status.
    Status {
        /// Task id.
        task: String,
        /// Its status.
        status: TaskStatus,
    },
    /// Output of a task.
    Logs {
        /// Task id.
        task: String,
        /// Lines.
        lines: Vec<LogLine>,
    },
}

/// The longest log line kept; longer ones are cut.
const MAX_LINE: usize = 16 * 1024;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `task exec` needs of a running task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecInfo {
    /// Task id.
    pub task: String,
    /// How to enter it (argv empty).
    pub enter: EnterSpec,
}

struct Running {
    stop: watch::Sender<bool>,
    exec: Arc<Mutex<Option<ExecInfo>>>,
}

/// The node's task runner.
pub struct Agent {
    state: Arc<State>,
    running: Mutex<HashMap<String, Running>>,
    /// Tasks that ran here and ended: never started again, even while the
    /// manager's view still lags (forgotten once no longer assigned).
    ended: Mutex<std::collections::HashSet<String>>,
    reports: mpsc::UnboundedSender<Report>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn tasks_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tasks")
}

/// What a task leaves on the node, recorded so a restarted daemon can
/// remove what a crashed one left.
#[derive(Debug, Serialize, Deserialize)]
struct Leftovers {
    /// The task's sandbox (network namespace) and cgroup, which share it.
    name: String,
}

impl Agent {
    /// Starts the agent: it follows `assignments` until the sender is
    /// dropped, then stops every task.
    pub fn start(
        state: Arc<State>,
        mut assignments: watch::Receiver<Vec<Task>>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Arc<Agent> {
        let agent = Arc::new(Agent {
            state,
            running: Mutex::new(HashMap::new()),
            ended: Mutex::new(Default::default()),
            reports,
        });
        let me = agent.clone();
        tokio::spawn(async move {
            loop {
                let tasks = assignments.borrow_and_update().clone();
                me.reconcile(&tasks);
                tokio::select! {
                    changed = assignments.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            me.stop_all();
        });
        agent
    }

    fn report(&self, task: &str, status: TaskStatus) {
        let _ = self.reports.send(Report::Status { task: task.to_owned(), status });
    }

    fn reconcile(self: &Arc<Self>, tasks: &[Task]) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let assigned: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
        for (id, r) in running.iter() {
            let keep = assigned.get(id.as_str()).is_some_and(|t| t.desired <= TaskState::Running);
            if !keep {
                let _ = r.stop.send(true);
            }
        }
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended.retain(|id| assigned.contains_key(id.as_str()));
        for task in tasks {
            if running.contains_key(&task.id) || task.status.state.is_terminal() || ended.contains(&task.id) {
                continue;
            }
            if task.desired > TaskState::Running {
                // Never started here (or lost): it is stopped already.
                self.report(&task.id, TaskStatus::new(TaskState::Shutdown, now_ms(), "shutdown"));
                continue;
            }
            if task.status.state > TaskState::Assigned {
                let status = TaskStatus::new(TaskState::Failed, now_ms(), "task lost")
                    .with_err("the task is no longer running on this node (its daemon restarted)");
                self.report(&task.id, status);
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let exec = Arc::new(Mutex::new(None));
            running.insert(task.id.clone(), Running { stop, exec: exec.clone() });
            let me = self.clone();
            let task = task.clone();
            tokio::spawn(async move {
                let id = task.id.clone();
                let end = me.supervise(task, stopped, exec).await;
                me.ended.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone());
                me.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                me.report(&id, end);
            });
        }
    }

    /// Asks every task to stop.
    pub fn stop_all(&self) {
        for r in self.running.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let _ = r.stop.send(true);
        }
    }

    /// Waits (up to `limit`) until no task runs.
    pub async fn drained(&self, limit: Duration) {
        let start = Instant::now();
        while !self.running.lock().unwrap_or_else(|e| e.into_inner()).is_empty() && start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How to enter the running task whose id starts with `id`.
    pub fn exec_info(&self, id: &str) -> Option<ExecInfo> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = running.iter().filter(|(t, _)| t.starts_with(id));
        let (_, r) = found.next()?;
        if found.next().is_some() {
            return None;
        }
        r.exec.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs one task to its end; returns its final status.
    async fn supervise(
        self: &Arc<Self>,
        task: Task,
        mut stop: watch::Receiver<bool>,
        exec_slot: Arc<Mutex<Option<ExecInfo>>>,
    ) -> TaskStatus {
        let id = task.id.clone();
        self.report(&id, TaskStatus::new(TaskState::Accepted, now_ms(), "accepted"));
        self.report(&id, TaskStatus::new(TaskState::Preparing, now_ms(), "preparing"));
        let prepared = match self.prepare(&task).await {
            Ok(p) => p,
            Err(e) => return TaskStatus::new(TaskState::Rejected, now_ms(), "preparing failed").with_err(e),
        };
        self.report(&id, TaskStatus::new(TaskState::Ready, now_ms(), "prepared"));
        if *stop.borrow() {
            self.cleanup(&prepared).await;
            return TaskStatus::new(TaskState::Shutdown, now_ms(), "shutdown");
        }
        self.report(&id, TaskStatus::new(TaskState::Starting, now_ms(), "starting"));
        let exe = PathBuf::from("/proc/self/exe");
        let mut child = match tokio::process::Command::new(exe)
            .arg("__task-shim")
            .arg(prepared.dir.join("spec.json"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                self.cleanup(&prepared).await;
                return TaskStatus::new(TaskState::Failed, now_ms(), "starting failed")
                    .with_err(format!("cannot start the task: {e}"));
            }
        };
        let shim = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(forward_lines(out, false, id.clone(), self.reports.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(forward_lines(err, true, id.clone(), self.reports.clone())));
        }
        // Init's pid, once the shim wrote it: what `task exec` and the
        // healthcheck enter.
        let init_pid = {
            let mut pid = None;
            // The shim writes it right after its fork; allow for a loaded node.
            for _ in 0..1000 {
                if let Ok(text) = std::fs::read_to_string(prepared.dir.join("init.pid"))
                    && let Ok(p) = text.trim().parse::<i32>()
                {
                    pid = Some(p);
                    break;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            pid
        };
        let enter = init_pid.map(|pid| EnterSpec {
            pid,
            cgroup_procs: prepared.cgroup.procs_files(),
            uid: prepared.spec.uid,
            gid: prepared.spec.gid,
            workdir: prepared.spec.workdir.clone(),
            env: prepared.spec.env.clone(),
            argv: Vec::new(),
        });
        *exec_slot.lock().unwrap_or_else(|e| e.into_inner()) =
            enter.clone().map(|enter| ExecInfo { task: id.clone(), enter });
        let health = task.spec.health.clone();
        let mut running = TaskStatus::new(TaskState::Running, now_ms(), "started");
        if health.is_some() {
            running.health = Some("starting".into());
        }
        self.report(&id, running.clone());

        let started = Instant::now();
        let mut failures = 0u64;
        let mut unhealthy = false;
        let mut next_check = health.as_ref().map(|h| Instant::now() + Duration::from_millis(h.interval_ms));
        let mut stopping = false;
        let mut kill_at: Option<Instant> = None;
        // The stop signal now, SIGKILL at the returned time.
        let begin_stop = || {
            if let Some(pid) = shim {
                let _ = nix::sys::signal::kill(pid, parse_signal(&task.spec.stop_signal));
            }
            Some(Instant::now() + Duration::from_millis(task.spec.stop_grace_ms))
        };
        let exit = loop {
            let wake = [next_check, kill_at].into_iter().flatten().min();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = child.wait() => break status.ok(),
                changed = stop.changed(), if !stopping => {
                    if changed.is_err() || *stop.borrow() {
                        stopping = true;
                        kill_at = begin_stop();
                        next_check = None;
                    }
                }
                () = sleep => {
                    if kill_at.is_some_and(|at| Instant::now() >= at) {
                        if let Some(pid) = shim {
                            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                        }
                        prepared.cgroup.kill_all();
                        kill_at = None;
                        continue;
                    }
                    let (Some(h), Some(enter)) = (&health, &enter) else { next_check = None; continue };
                    let healthy = run_check(enter, &h.cmd, Duration::from_millis(h.timeout_ms)).await;
                    let in_start = started.elapsed() < Duration::from_millis(h.start_period_ms);
                    let verdict = if healthy {
                        failures = 0;
                        Some("healthy")
                    } else if !in_start {
                        failures += 1;
                        (failures >= h.retries.max(1)).then_some("unhealthy")
                    } else {
                        None
                    };
                    if let Some(v) = verdict && running.health.as_deref() != Some(v) {
                        running.health = Some(v.into());
                        running.message = format!("health: {v}");
                        self.report(&id, running.clone());
                    }
                    if verdict == Some("unhealthy") {
                        unhealthy = true;
                        stopping = true;
                        kill_at = begin_stop();
                        next_check = None;
                    } else {
                        next_check = Some(Instant::now() + Duration::from_millis(h.interval_ms));
                    }
                }
            }
        };
        *exec_slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let oom = prepared.cgroup.oom_kills() > 0;
        self.cleanup(&prepared).await;
        for r in readers {
            let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
        }
        let code = exit.map(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        });
        let mut status = if unhealthy {
            TaskStatus::new(TaskState::Failed, now_ms(), "unhealthy")
                .with_err(format!("task unhealthy: its healthcheck failed {failures} times in a row"))
        } else if stopping {
            TaskStatus::new(TaskState::Shutdown, now_ms(), "shutdown")
        } else if oom {
            TaskStatus::new(TaskState::Failed, now_ms(), "out of memory").with_err(format!(
                "task: out of memory: killed by the kernel for exceeding its memory limit (exit {})",
                code.unwrap_or(137)
            ))
        } else if code == Some(0) {
            TaskStatus::new(TaskState::Complete, now_ms(), "finished")
        } else {
            TaskStatus::new(TaskState::Failed, now_ms(), "exited")
                .with_err(format!("task: non-zero exit ({})", code.unwrap_or(-1)))
        };
        status.exit_code = code;
        status.health = running.health;
        status
    }

    /// Prepares a task; on failure, removes whatever was made already.
    async fn prepare(&self, task: &Task) -> Result<Prepared, String> {
        let result = self.try_prepare(task).await;
        if result.is_err() {
            let sandbox = self.sandbox_name(task);
            let _ = self.state.remove_endpoint(&sandbox).await;
            let cgroup = Cgroup::open(&sandbox);
            let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
            let _ = std::fs::remove_dir_all(tasks_dir(self.state.data_dir()).join(&task.id));
        }
        result
    }

    fn sandbox_name(&self, task: &Task) -> String {
        format!("{}-t{}", self.state.settings.task_prefix, &task.id[..task.id.len().min(10)])
    }

    async fn try_prepare(&self, task: &Task) -> Result<Prepared, String> {
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
        let program = exec::lookup(&task.spec.image, &path)?;
        let (uid, gid) = exec::resolve_user(task.spec.user.as_deref())?;
        let short = &task.id[..task.id.len().min(12)];
        let sandbox = self.sandbox_name(task);
        let dir = tasks_dir(self.state.data_dir()).join(&task.id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("task directory: {e}"))?;
        let leftovers = Leftovers { name: sandbox.clone() };
        let _ =
            std::fs::write(dir.join("leftovers.json"), serde_json::to_vec(&leftovers).expect("serialisable"));
        let r = &task.spec.resources;
        let limits = Limits { nano_cpus: r.limit_nano_cpus, memory: r.limit_memory, pids: r.limit_pids };
        let cgroup = Cgroup::create(&sandbox, &limits).map_err(|e| format!("cgroup: {e}"))?;
        let ifaces: Vec<Interface> = task
            .attachments
            .iter()
            .map(|a| Interface { vni: a.vni, subnet: a.subnet.clone(), ip: a.ip })
            .collect();
        if let Err(e) = self.state.create_sandbox(&sandbox, &ifaces).await {
            return Err(format!("network sandbox: {}", super::api::message(&e)));
        }
        let hostname = task.spec.hostname.clone().unwrap_or_else(|| short.to_owned());
        let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for a in &task.attachments {
            hosts.push_str(&format!("{}\t{hostname}\n", a.ip));
        }
        let files = [("hosts", hosts), ("hostname", format!("{hostname}\n")), ("resolv.conf", resolv_conf())];
        for (name, text) in &files {
            std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))?;
        }
        let home = if uid == 0 { "/root".to_owned() } else { "/".to_owned() };
        let mut env =
            vec![format!("PATH={DEFAULT_PATH}"), format!("HOSTNAME={hostname}"), format!("HOME={home}")];
        for kv in &task.spec.env {
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        let spec = ExecSpec {
            netns: NetNs::open(&sandbox).map(|n| n.path().to_owned()).map_err(|e| e.to_string())?,
            hostname,
            program,
            args: task.spec.args.clone(),
            env,
            workdir: task.spec.workdir.clone().unwrap_or_else(|| "/".into()),
            uid,
            gid,
            binds: files.iter().map(|(name, _)| (dir.join(name), Path::new("/etc").join(name))).collect(),
            cgroup_procs: cgroup.procs_files(),
            init_pid_file: dir.join("init.pid"),
        };
        std::fs::write(dir.join("spec.json"), serde_json::to_vec(&spec).expect("serialisable"))
            .map_err(|e| format!("task spec: {e}"))?;
        Ok(Prepared { dir, sandbox, cgroup, spec })
    }

    async fn cleanup(&self, prepared: &Prepared) {
        prepared.cgroup.kill_all();
        let cgroup = prepared.cgroup.clone();
        match tokio::task::spawn_blocking(move || cgroup.remove()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(cgroup = %prepared.sandbox, error = %e, "cannot remove the task's cgroup")
            }
            Err(e) => tracing::warn!(error = %e, "cgroup removal panicked"),
        }
        let _ = self.state.remove_endpoint(&prepared.sandbox).await;
        let _ = std::fs::remove_dir_all(&prepared.dir);
    }
}

struct Prepared {
    dir: PathBuf,
    sandbox: String,
    cgroup: Cgroup,
    spec: ExecSpec,
}

/// The node's resolvers, without loopback ones (unreachable from a task).
fn resolv_conf() -> String {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            !(words.next() == Some("nameserver")
                && words.next().is_some_and(|a| a.starts_with("127.") || a == "::1"))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn parse_signal(name: &str) -> nix::sys::signal::Signal {
    exec::signal(name).unwrap_or(nix::sys::signal::Signal::SIGTERM)
}

/// Runs the healthcheck inside the task; true when it exits 0 in time.
async fn run_check(enter: &EnterSpec, cmd: &str, timeout: Duration) -> bool {
    let mut spec = enter.clone();
    spec.argv = vec!["/bin/sh".into(), "-c".into(), cmd.into()];
    let exe = PathBuf::from("/proc/self/exe");
    let Ok(mut child) = tokio::process::Command::new(exe)
        .arg("__enter")
        .arg(serde_json::to_string(&spec).expect("serialisable"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
    else {
        return false;
    };
    matches!(tokio::time::timeout(timeout.max(Duration::from_millis(100)), child.wait()).await, Ok(Ok(s)) if s.success())
}

async fn forward_lines(
    pipe: impl tokio::io::AsyncRead + Unpin,
    stderr: bool,
    task: String,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned();
                let line = LogLine { ts_ms: now_ms(), stderr, text };
                let _ = reports.send(Report::Logs { task: task.clone(), lines: vec![line] });
            }
        }
    }
}

/// Removes what tasks of a crashed daemon left: processes, cgroups,
/// sandboxes, task directories.
pub fn remove_leftovers(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(tasks_dir(data_dir)) else { return };
    for entry in entries.flatten() {
        if let Ok(text) = std::fs::read(entry.path().join("leftovers.json"))
            && let Ok(left) = serde_json::from_slice::<Leftovers>(&text)
        {
            tracing::info!(task = %entry.file_name().to_string_lossy(), "removing a task left by the previous run");
            let cgroup = Cgroup::open(&left.name);
            cgroup.kill_all();
            let _ = cgroup.remove();
            if NetNs::exists(&left.name) {
                let _ = NetNs::delete_by_name(&left.name);
            }
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}
