//! The task runner: runs the tasks the manager assigns to this node, with
//! the `exec` runtime, and reports their status and output.
//!
//! [`plan`] decides, as a pure function, what a new set of assignments
//! means (tasks to start, to stop, and statuses to report for tasks this
//! node cannot run); the runner starts one supervisor per task
//! (`supervisor`), which owns it until its final status is reported.
//! Reports go out on one channel, which the manager drains directly (on the
//! manager's node) or the worker's session forwards.
//!
//! With live restore, tasks outlive the daemon: the next one adopts those
//! still running (`adopt`) before it follows any assignment, so the plan
//! sees them running, keeps those still assigned and stops the others.
//!
//! Invariants: a task id runs at most once on a node, and never again once
//! it ended here, even while the manager's view still lags; a task that
//! reached a final state has no process, namespace, TUN, cgroup or mount
//! left.

pub mod adopt;
pub mod health;
pub mod prepare;
pub mod rows;
pub mod supervisor;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shoal_control::Report;
use shoal_orch::{Assignments, Task, TaskState, TaskStatus};
use shoal_runtime::exec::EnterSpec;
use tokio::sync::{mpsc, watch};

use crate::clock::now_ms;
use crate::endpoints::Endpoints;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::volumes::{self, Volumes};

/// What `task exec` needs of a running task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecInfo {
    /// Task id.
    pub task: String,
    /// How to enter it (argv empty).
    pub enter: EnterSpec,
}

/// What supervisors share.
#[derive(Debug, Clone)]
pub struct Context {
    /// This node's sandboxes.
    pub endpoints: Arc<Endpoints>,
    /// The agent's settings (data directory, task prefix).
    pub settings: Arc<Settings>,
    /// Where reports go.
    pub reports: mpsc::UnboundedSender<Report>,
    /// Failures carried on from.
    pub metrics: Metrics,
    /// What this node announces about its running tasks.
    pub announcer: Arc<rows::Announcer>,
    /// This node's volumes, which tasks make at first use.
    pub volumes: Arc<Volumes>,
    /// Set as the daemon exits with its tasks left running: their output
    /// stays in their FIFOs for the next daemon.
    pub released: Arc<watch::Sender<bool>>,
}

impl Context {
    fn report(&self, task: &str, status: TaskStatus) {
        let _ = self.reports.send(Report::Status { task: task.to_owned(), status });
    }
}

/// What a new set of assignments asks of this node.
#[derive(Debug, Default, PartialEq)]
#[must_use]
pub struct Plan {
    /// Running tasks to stop: no longer assigned, or asked to stop.
    pub stop: Vec<String>,
    /// Tasks to start.
    pub start: Vec<Task>,
    /// Statuses of tasks this node will not run.
    pub reports: Vec<(String, TaskStatus)>,
}

/// Decides what `assigned` asks, given the tasks `running` here and those
/// that `ended` here.
pub fn plan(assigned: &[Task], running: &HashSet<&str>, ended: &HashSet<String>, now: u64) -> Plan {
    let by_id: HashMap<&str, &Task> = assigned.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut plan = Plan::default();
    for id in running {
        let keep = by_id.get(id).is_some_and(|t| t.desired <= TaskState::Running);
        if !keep {
            plan.stop.push((*id).to_owned());
        }
    }
    plan.stop.sort();
    for task in assigned {
        if running.contains(task.id.as_str()) || task.status.state.is_terminal() || ended.contains(&task.id) {
            continue;
        }
        if task.desired > TaskState::Running {
            // Never started here (or lost): it is stopped already.
            plan.reports.push((task.id.clone(), TaskStatus::new(TaskState::Shutdown, now, "shutdown")));
        } else if task.status.state > TaskState::Assigned {
            let status = TaskStatus::new(TaskState::Failed, now, "task lost")
                .with_err("the task is no longer running on this node (its daemon restarted)");
            plan.reports.push((task.id.clone(), status));
        } else {
            plan.start.push(task.clone());
        }
    }
    plan
}

#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    exec: Arc<Mutex<Option<ExecInfo>>>,
    /// The volumes it mounts, counted from before they are made.
    volumes: Vec<String>,
}

/// The node's task runner.
#[derive(Debug)]
pub struct TaskRunner {
    ctx: Context,
    running: Mutex<HashMap<String, Running>>,
    /// Tasks that ran here and ended (forgotten once no longer assigned).
    ended: Mutex<HashSet<String>>,
    /// A task ended since the heap was last trimmed.
    trim_due: AtomicBool,
}

/// How long a daemon exiting with live restore gives the output it read
/// to reach the manager.
const RELEASE_FLUSH: Duration = Duration::from_millis(300);

/// The least time between two trims of the heap after tasks end.
const TRIM_EVERY: Duration = Duration::from_secs(10);

impl TaskRunner {
    /// Starts the runner: it adopts the `survivors` a previous daemon left
    /// running, withdraws the rows of the `lost` tasks it left that did
    /// not survive, then follows `assignments` until the sender is dropped,
    /// and stops every task.
    pub fn start(
        ctx: Context,
        mut assignments: watch::Receiver<Assignments>,
        survivors: Vec<adopt::Survivor>,
        lost: Vec<Task>,
    ) -> Arc<TaskRunner> {
        let runner = Arc::new(TaskRunner {
            ctx,
            running: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashSet::new()),
            trim_due: AtomicBool::new(false),
        });
        if !lost.is_empty() {
            let announcer = runner.ctx.announcer.clone();
            tokio::spawn(async move { announcer.withdraw_lost(&lost).await });
        }
        for survivor in survivors {
            let id = survivor.task.id.clone();
            let volumes = volumes::task_volumes(&survivor.task);
            runner.supervise(id, volumes, move |ctx, stop, exec| async move {
                supervisor::adopt(&ctx, survivor, stop, exec).await
            });
        }
        let me = runner.clone();
        tokio::spawn(async move {
            // Only assignments the manager sent: the channel's first value
            // is empty, and would stop every adopted task.
            if assignments.changed().await.is_err() {
                me.stop_all();
                return;
            }
            let mut trimmed = tokio::time::Instant::now();
            loop {
                let tasks = assignments.borrow_and_update().tasks.clone();
                me.reconcile(&tasks);
                // Tasks ended: what their supervisors held goes back to the
                // kernel, at most every TRIM_EVERY.
                if trimmed.elapsed() >= TRIM_EVERY && me.trim_due.swap(false, Ordering::Relaxed) {
                    trimmed = tokio::time::Instant::now();
                    tokio::task::spawn_blocking(shoal_runtime::trim_heap);
                }
                tokio::select! {
                    changed = assignments.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            me.stop_all();
        });
        runner
    }

    fn reconcile(self: &Arc<Self>, assigned: &[Task]) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended.retain(|id| assigned.iter().any(|t| &t.id == id));
        let ids: HashSet<&str> = running.keys().map(String::as_str).collect();
        let plan = plan(assigned, &ids, &ended, now_ms());
        drop(ended);
        for id in &plan.stop {
            if let Some(r) = running.get(id) {
                let _ = r.stop.send(true);
            }
        }
        for (id, status) in plan.reports {
            self.ctx.report(&id, status);
        }
        // Running tasks follow their service's endpoint without a restart;
        // one being stopped keeps its rows as they are until it ends (the
        // manager may have released its addresses already).
        let refresh: Vec<Task> = assigned
            .iter()
            .filter(|t| running.contains_key(&t.id) && !plan.stop.contains(&t.id))
            .cloned()
            .collect();
        if !refresh.is_empty() {
            let announcer = self.ctx.announcer.clone();
            tokio::spawn(async move {
                for task in &refresh {
                    announcer.refresh(task).await;
                }
            });
        }
        drop(running);
        for task in plan.start {
            let volumes = volumes::task_volumes(&task);
            self.supervise(task.id.clone(), volumes, move |ctx, stop, exec| async move {
                supervisor::supervise(&ctx, task, stop, exec).await
            });
        }
    }

    /// Runs one task's supervisor (`run`), registered as running until it
    /// returns the task's final status, which is then reported.
    fn supervise<F, Fut>(self: &Arc<Self>, id: String, volumes: Vec<String>, run: F)
    where
        F: FnOnce(Context, watch::Receiver<bool>, Arc<Mutex<Option<ExecInfo>>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = TaskStatus> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let exec = Arc::new(Mutex::new(None));
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), Running { stop, exec: exec.clone(), volumes });
        let me = self.clone();
        tokio::spawn(async move {
            let end = run(me.ctx.clone(), stopped, exec).await;
            me.ended.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone());
            me.trim_due.store(true, Ordering::Relaxed);
            me.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            me.ctx.report(&id, end);
        });
    }

    /// Lets go of the tasks as the daemon exits with them left running:
    /// output already read is sent (and given a moment to reach the
    /// manager); what is not read yet stays in the FIFOs for the next
    /// daemon.
    pub async fn release(&self) {
        let _ = self.ctx.released.send(true);
        tokio::time::sleep(RELEASE_FLUSH).await;
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

    /// The volumes that tasks running here (or starting) mount, each with
    /// those tasks' ids, sorted.
    pub fn volumes_in_use(&self) -> BTreeMap<String, Vec<String>> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, r) in running.iter() {
            for volume in &r.volumes {
                users.entry(volume.clone()).or_default().push(id.clone());
            }
        }
        for ids in users.values_mut() {
            ids.sort();
            ids.dedup();
        }
        users
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_orch::TaskSpec;

    fn task(id: &str, desired: TaskState, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: Some("n1".into()),
            spec: TaskSpec::default(),
            service_version: 1,
            desired,
            status: TaskStatus::new(state, 0, ""),
            attachments: Vec::new(),
            start_at_ms: 0,
            restarts: 0,
            window_start_ms: 0,
            after: None,
            handled: false,
            endpoint: Default::default(),
            created_ms: 0,
        }
    }

    #[test]
    fn new_assignments_start_and_gone_ones_stop() {
        let assigned = [
            task("new", TaskState::Running, TaskState::Assigned),
            task("kept", TaskState::Running, TaskState::Running),
            task("stopping", TaskState::Shutdown, TaskState::Running),
        ];
        let running: HashSet<&str> = ["kept", "stopping", "unassigned"].into();
        let p = plan(&assigned, &running, &HashSet::new(), 7);
        assert_eq!(p.stop, ["stopping", "unassigned"]);
        assert_eq!(p.start.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["new"]);
        assert!(p.reports.is_empty());
    }

    #[test]
    fn a_tasks_volumes_are_named_or_take_its_id() {
        use shoal_orch::{Mount, MountKind};
        let mut t = task("t1", TaskState::Running, TaskState::Assigned);
        let mount = |kind, source: &str, target: &str| Mount {
            kind,
            source: source.into(),
            target: target.into(),
            readonly: false,
        };
        t.spec.mounts = vec![
            mount(MountKind::Volume, "data", "/data"),
            mount(MountKind::Volume, "", "/cache"),
            mount(MountKind::Bind, "/srv", "/srv"),
            mount(MountKind::Tmpfs, "", "/tmp/x"),
        ];
        assert_eq!(volumes::task_volumes(&t), ["data", "t1"], "binds and tmpfs mounts are no volumes");
    }

    #[test]
    fn tasks_this_node_cannot_run_are_reported_not_started() {
        let assigned = [
            // Asked to stop before it ever started here.
            task("never", TaskState::Shutdown, TaskState::Assigned),
            // Past Assigned but not running here: the daemon restarted.
            task("lost", TaskState::Running, TaskState::Running),
            // Ended here already: never again, whatever the manager says.
            task("ended", TaskState::Running, TaskState::Assigned),
            // Final already: nothing to do.
            task("done", TaskState::Shutdown, TaskState::Complete),
        ];
        let ended: HashSet<String> = ["ended".to_owned()].into();
        let p = plan(&assigned, &HashSet::new(), &ended, 7);
        assert!(p.start.is_empty() && p.stop.is_empty());
        let states: Vec<(&str, TaskState)> = p.reports.iter().map(|(id, s)| (id.as_str(), s.state)).collect();
        assert_eq!(states, [("never", TaskState::Shutdown), ("lost", TaskState::Failed)]);
        assert!(p.reports[1].1.err.as_deref().unwrap().contains("its daemon restarted"));
    }
}
