//! [`World::reconcile`] and its steps.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use shoal_sched::{Availability, Constraint, Node, Requirements};

use crate::model::*;

/// Tasks kept per slot (or per node, for global services), current included.
pub const TASK_HISTORY: usize = 5;

/// Hands out and takes back task addresses (the manager's IPAM).
pub trait Allocator {
    /// An address on `network` for a task.
    fn allocate(&mut self, network: &str) -> Result<Attachment, String>;
    /// Frees an address.
    fn release(&mut self, attachment: &Attachment);
}

/// What a reconciliation needs from outside.
pub struct Env<'a> {
    /// Now, in ms.
    pub now: u64,
    /// Nodes as the scheduler sees them, without tasks counted (the world
    /// counts its own).
    pub nodes: &'a [Node],
    /// Task addresses.
    pub alloc: &'a mut dyn Allocator,
    /// Fresh ids.
    pub new_id: &'a mut dyn FnMut() -> String,
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").field("now", &self.now).field("nodes", &self.nodes.len()).finish()
    }
}

/// Every service and task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct World {
    /// By id.
    pub services: BTreeMap<String, Service>,
    /// By id.
    pub tasks: BTreeMap<String, Task>,
    /// Each node's routing-mesh address on the [`INGRESS`] network, by node id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mesh: BTreeMap<String, Attachment>,
}

fn requirements(service: &Service) -> Requirements {
    let task = &service.spec.task;
    Requirements {
        service: service.id.clone(),
        constraints: task.placement.constraints.iter().filter_map(|c| c.parse::<Constraint>().ok()).collect(),
        spread: task.placement.spread.clone(),
        reserve_nano_cpus: task.resources.reserve_nano_cpus,
        reserve_memory: task.resources.reserve_memory,
        max_replicas_per_node: (task.placement.max_replicas > 0)
            .then_some(task.placement.max_replicas as usize),
        host_ports: host_ports(service),
    }
}

/// The host-mode ports a service's tasks hold, as (protocol, port).
fn host_ports(service: &Service) -> Vec<(String, u16)> {
    service
        .spec
        .ports
        .iter()
        .filter(|p| p.mode == "host")
        .map(|p| (p.protocol.clone(), p.published))
        .collect()
}

/// A service's VIP and local VIP on `network`, as its tasks' attachments
/// there carry them.
fn service_vips(service: &Service, network: &str) -> (Option<Ipv4Addr>, Option<Ipv4Addr>) {
    let on = |v: &&Attachment| v.network == network;
    (service.vips.iter().find(on).map(|v| v.ip), service.local_vip.as_ref().filter(on).map(|v| v.ip))
}

/// Whether a node may keep (not take) tasks of `req`: up, not drained, and
/// satisfying the constraints.
fn may_keep(node: &Node, req: &Requirements) -> bool {
    node.ready && node.availability != Availability::Drain && req.constraints.iter().all(|c| c.matches(node))
}

impl World {
    /// Records what a node says about a task; a report that would move the
    /// state backward (or repeats it) changes nothing. Returns whether it
    /// changed the task.
    pub fn report(&mut self, task_id: &str, node_id: &str, status: TaskStatus) -> bool {
        let Some(task) = self.tasks.get_mut(task_id) else { return false };
        if task.node_id.as_deref() != Some(node_id) {
            return false;
        }
        let current = &task.status;
        let forward = status.state > current.state;
        let same_news = status.state == current.state
            && (status.health != current.health || status.message != current.message);
        if !(forward || same_news) || current.state.is_terminal() {
            return false;
        }
        task.status = status;
        true
    }

    /// Adds a service; reconciliation makes its tasks.
    pub fn create_service(&mut self, service: Service) {
        self.services.insert(service.id.clone(), service);
    }

    /// Replaces a service's spec (`service update`, `service scale`): a
    /// changed task spec starts a rolling update; `rollback` marks it as a
    /// rollback.
    pub fn update_service(&mut self, id: &str, spec: ServiceSpec, now: u64, rollback: bool) -> bool {
        let Some(service) = self.services.get_mut(id) else { return false };
        if service.spec == spec {
            return false;
        }
        let rolls = service.spec.task != spec.task;
        service.previous = Some(std::mem::replace(&mut service.spec, spec));
        service.version += 1;
        service.updated_ms = now;
        if rolls {
            let state = if rollback { UpdateState::RollbackStarted } else { UpdateState::Updating };
            let message = if rollback { "manually requested rollback" } else { "update in progress" };
            service.update_status = Some(UpdateStatus::started(state, message.into(), now));
        }
        true
    }

    /// Removes a service: its tasks are stopped, then dropped. Returns the
    /// service, whose VIPs the caller releases; `None` if there was none.
    #[must_use = "the removed service's VIPs must be released"]
    pub fn remove_service(&mut self, id: &str) -> Option<Service> {
        let service = self.services.remove(id)?;
        for task in self.tasks.values_mut().filter(|t| t.service_id == id) {
            task.desired = TaskState::Remove;
            task.handled = true;
        }
        Some(service)
    }

    /// The tasks a node should know about: those assigned to it, while the
    /// manager still tracks them.
    pub fn assigned_to<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.node_id.as_deref() == Some(node_id) && t.status.state >= TaskState::Assigned)
    }

    /// One reconciliation pass (see the crate documentation).
    pub fn reconcile(&mut self, env: &mut Env<'_>) {
        self.sync_endpoints();
        self.sync_mesh(env);
        self.handle_lost_nodes(env);
        self.release_ended(env);
        self.restart_ended(env);
        let ids: Vec<String> = self.services.keys().cloned().collect();
        for id in &ids {
            match self.services[id].spec.mode {
                Mode::Replicated { replicas } => self.reconcile_replicated(id, replicas, env),
                Mode::Global => self.reconcile_global(id, env),
            }
            self.roll(id, env);
            self.one_per_slot(id);
        }
        self.shut_unassigned(env);
        self.schedule(env);
        self.prune(env);
    }

    /// Keeps every task's endpoint (and the VIPs on each attachment) as its
    /// service's: the directory follows the service without replacing
    /// tasks.
    fn sync_endpoints(&mut self) {
        for task in self.tasks.values_mut() {
            let Some(service) = self.services.get(&task.service_id) else { continue };
            let endpoint = TaskEndpoint::of(&service.spec);
            if task.endpoint != endpoint {
                task.endpoint = endpoint;
            }
            for a in &mut task.attachments {
                (a.vip, a.local_vip) = service_vips(service, &a.network);
            }
        }
    }

    /// Frees the addresses of ended tasks; an orphaned task keeps its own
    /// until its node is back (it may still run behind a partition).
    fn release_ended(&mut self, env: &mut Env<'_>) {
        let ready: BTreeSet<&str> = env.nodes.iter().filter(|n| n.ready).map(|n| n.id.as_str()).collect();
        let known: BTreeSet<&str> = env.nodes.iter().map(|n| n.id.as_str()).collect();
        for task in self.tasks.values_mut() {
            let node = task.node_id.as_deref().unwrap_or("");
            let unreachable = known.contains(node) && !ready.contains(node);
            if task.status.state.is_terminal() && !(task.status.state == TaskState::Orphaned && unreachable) {
                for a in task.attachments.drain(..) {
                    env.alloc.release(&a);
                }
            }
        }
    }

    fn new_task(&self, service: &Service, slot: u64, node: Option<String>, env: &mut Env<'_>) -> Task {
        Task {
            id: (env.new_id)(),
            service_id: service.id.clone(),
            service_name: service.spec.name.clone(),
            slot,
            node_id: node,
            spec: service.spec.task.clone(),
            service_version: service.version,
            desired: TaskState::Running,
            status: TaskStatus::new(TaskState::New, env.now, "created"),
            attachments: Vec::new(),
            start_at_ms: env.now,
            restarts: 0,
            window_start_ms: env.now,
            after: None,
            handled: false,
            endpoint: TaskEndpoint::of(&service.spec),
            created_ms: env.now,
        }
    }

    /// Tasks on nodes that are down, gone or drained are stopped and (for
    /// replicated services) replaced elsewhere at once.
    fn handle_lost_nodes(&mut self, env: &mut Env<'_>) {
        let nodes: HashMap<&str, &Node> = env.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let mut replace = Vec::new();
        for task in self.tasks.values_mut() {
            let Some(node_id) = task.node_id.as_deref() else { continue };
            if task.status.state.is_terminal() || task.status.state < TaskState::Assigned {
                continue;
            }
            let node = nodes.get(node_id);
            let down = node.is_none_or(|n| !n.ready);
            let drained = node.is_some_and(|n| n.availability == Availability::Drain);
            if !(down || drained) {
                continue;
            }
            let runnable = task.is_runnable();
            if down {
                // Whatever it was asked, a down node cannot say it stopped.
                task.status =
                    TaskStatus::new(TaskState::Orphaned, env.now, "task belongs to a node that is down");
            }
            if !runnable {
                continue;
            }
            task.desired = TaskState::Shutdown;
            task.handled = true;
            if task.slot > 0 {
                replace.push(task.id.clone());
            }
        }
        for id in replace {
            let old = self.tasks[&id].clone();
            let Some(service) = self.services.get(&old.service_id) else { continue };
            let mut task = self.new_task(service, old.slot, None, env);
            task.restarts = old.restarts;
            task.window_start_ms = old.window_start_ms;
            self.tasks.insert(task.id.clone(), task);
        }
    }

    /// Applies the restart policy to tasks that ended on their own.
    fn restart_ended(&mut self, env: &mut Env<'_>) {
        let ended: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.desired <= TaskState::Running && t.status.state.is_terminal() && !t.handled)
            .map(|t| t.id.clone())
            .collect();
        for id in ended {
            let task = self.tasks.get_mut(&id).expect("listed");
            task.handled = true;
            let Some(service) = self.services.get(&task.service_id) else { continue };
            let policy = &service.spec.task.restart;
            let failed = matches!(task.status.state, TaskState::Failed | TaskState::Rejected);
            let wanted = match policy.condition {
                RestartCondition::None => false,
                RestartCondition::OnFailure => failed,
                RestartCondition::Any => true,
            };
            let (mut restarts, mut window_start) = (task.restarts, task.window_start_ms);
            if policy.window_ms > 0 && env.now.saturating_sub(window_start) > policy.window_ms {
                restarts = 0;
                window_start = env.now;
            }
            if !wanted || (policy.max_attempts > 0 && restarts >= policy.max_attempts) {
                continue; // the slot stays with its ended task
            }
            task.desired = TaskState::Shutdown;
            let old = task.clone();
            let service = &self.services[&old.service_id];
            let node = (old.slot == 0).then(|| old.node_id.clone()).flatten();
            let mut new = self.new_task(service, old.slot, node, env);
            new.start_at_ms = env.now + policy.delay_ms;
            new.restarts = restarts + 1;
            new.window_start_ms = window_start;
            if new.start_at_ms > env.now {
                new.status.message = "restart delayed".into();
            }
            self.tasks.insert(new.id.clone(), new);
        }
    }

    fn reconcile_replicated(&mut self, id: &str, replicas: u64, env: &mut Env<'_>) {
        let occupied: BTreeSet<u64> = self
            .tasks
            .values()
            .filter(|t| t.service_id == id && t.desired <= TaskState::Running)
            .map(|t| t.slot)
            .collect();
        for task in self.tasks.values_mut() {
            if task.service_id == id && task.slot > replicas && task.desired <= TaskState::Running {
                task.desired = TaskState::Remove;
                task.handled = true;
            }
        }
        let service = self.services[id].clone();
        for slot in (1..=replicas).filter(|s| !occupied.contains(s)) {
            let task = self.new_task(&service, slot, None, env);
            self.tasks.insert(task.id.clone(), task);
        }
    }

    fn reconcile_global(&mut self, id: &str, env: &mut Env<'_>) {
        let service = self.services[id].clone();
        let req = requirements(&service);
        let keep: BTreeSet<&str> =
            env.nodes.iter().filter(|n| may_keep(n, &req)).map(|n| n.id.as_str()).collect();
        let mut covered = BTreeSet::new();
        for task in self.tasks.values_mut() {
            if task.service_id != id || task.desired > TaskState::Running {
                continue;
            }
            let node = task.node_id.clone().unwrap_or_default();
            if keep.contains(node.as_str()) {
                covered.insert(node);
            } else {
                task.desired = TaskState::Shutdown;
                task.handled = true;
            }
        }
        let available: Vec<String> = env
            .nodes
            .iter()
            .filter(|n| n.availability == Availability::Active && keep.contains(n.id.as_str()))
            .filter(|n| !covered.contains(&n.id))
            .map(|n| n.id.clone())
            .collect();
        for node in available {
            let task = self.new_task(&service, 0, Some(node), env);
            self.tasks.insert(task.id.clone(), task);
        }
    }

    /// Rolling update (or rollback) of `id`'s stale tasks, batch by batch.
    fn roll(&mut self, id: &str, env: &mut Env<'_>) {
        let service = self.services[id].clone();
        let current = &service.spec.task;
        // Runnable tasks with a stale spec, one per slot (node for global).
        let mut stale: BTreeMap<(u64, String), String> = BTreeMap::new();
        for t in self.tasks.values() {
            if t.service_id == id && t.desired <= TaskState::Running && t.spec != *current {
                let key =
                    (t.slot, if t.slot == 0 { t.node_id.clone().unwrap_or_default() } else { String::new() });
                stale.insert(key, t.id.clone());
            }
        }
        let mut status = match service.update_status.clone() {
            Some(s) if s.active() => s,
            Some(s) if matches!(s.state, UpdateState::Paused | UpdateState::RollbackPaused) => return,
            _ if stale.is_empty() => return,
            _ => UpdateStatus::started(UpdateState::Updating, "update in progress".into(), env.now),
        };
        let rollback = status.state == UpdateState::RollbackStarted;
        let config = if rollback { &service.spec.rollback } else { &service.spec.update };
        if status.total == 0 {
            status.total = stale.len() as u64;
        }
        // Watch the batch in flight.
        let had_flight = !status.in_flight.is_empty();
        let mut failed_task = None;
        status.in_flight.retain_mut(|flight| {
            let Some(task) = self.tasks.get(&flight.new) else { return false };
            if matches!(task.status.state, TaskState::Failed | TaskState::Rejected | TaskState::Complete) {
                status.failures += 1;
                failed_task = Some(task.id.clone());
                return false;
            }
            if task.status.state.is_terminal() || task.desired > TaskState::Running {
                return false; // stopped by the orchestrator (scale, drain, node down): not the update's fault
            }
            if task.status.state == TaskState::Running {
                let since = *flight.running_since.get_or_insert(env.now);
                if let Some(old) = flight.old.take()
                    && let Some(old) = self.tasks.get_mut(&old)
                {
                    old.desired = TaskState::Shutdown;
                    old.handled = true;
                }
                return env.now < since + config.monitor_ms;
            }
            true
        });
        if let Some(task) = failed_task
            && status.failures as f64 / status.total.max(1) as f64 > config.max_failure_ratio
        {
            let why = format!("due to failure or early termination of task {task}");
            let previous = self.services[id].previous.clone();
            match (config.failure_action, previous) {
                (FailureAction::Continue, _) => {}
                (FailureAction::Rollback, Some(previous)) if !rollback => {
                    self.update_service(id, previous, env.now, true);
                    if let Some(u) = &mut self.services.get_mut(id).expect("exists").update_status {
                        u.message = format!("update rolled back {why}");
                    }
                    return;
                }
                // Pause (a rollback that fails pauses too).
                _ => {
                    status.state = if rollback { UpdateState::RollbackPaused } else { UpdateState::Paused };
                    status.message = format!("{} paused {why}", if rollback { "rollback" } else { "update" });
                    self.services.get_mut(id).expect("exists").update_status = Some(status);
                    return;
                }
            }
        }
        if had_flight && status.in_flight.is_empty() {
            status.next_batch_ms = env.now + config.delay_ms;
        }
        if status.in_flight.is_empty() && env.now >= status.next_batch_ms {
            if stale.is_empty() {
                status.state = if rollback { UpdateState::RollbackCompleted } else { UpdateState::Completed };
                status.message = if rollback { "rollback completed" } else { "update completed" }.into();
                status.completed_ms = Some(env.now);
            } else {
                let batch = if config.parallelism == 0 { stale.len() } else { config.parallelism as usize };
                for old_id in stale.values().take(batch) {
                    let old = self.tasks.get_mut(old_id).expect("listed");
                    let node = (old.slot == 0).then(|| old.node_id.clone()).flatten();
                    let slot = old.slot;
                    let mut flight = InFlight { new: String::new(), old: None, running_since: None };
                    let after = match config.order {
                        UpdateOrder::StopFirst => {
                            old.desired = TaskState::Shutdown;
                            old.handled = true;
                            Some(old.id.clone())
                        }
                        UpdateOrder::StartFirst => {
                            flight.old = Some(old.id.clone());
                            None
                        }
                    };
                    let svc = &self.services[id];
                    let mut task = self.new_task(svc, slot, node, env);
                    task.after = after;
                    flight.new = task.id.clone();
                    status.in_flight.push(flight);
                    status.updated += 1;
                    self.tasks.insert(task.id.clone(), task);
                }
            }
        }
        self.services.get_mut(id).expect("exists").update_status = Some(status);
    }

    /// Keeps one runnable task per slot (per node for global services): the
    /// newest with the current spec, plus the old half of a start-first
    /// pair still in flight. Anything else (left over by a failed or
    /// interrupted update) is stopped.
    fn one_per_slot(&mut self, id: &str) {
        let service = &self.services[id];
        let paired: BTreeSet<&str> = service
            .update_status
            .iter()
            .filter(|u| u.active())
            .flat_map(|u| u.in_flight.iter().filter_map(|f| f.old.as_deref()))
            .collect();
        let mut slots: BTreeMap<(u64, &str), Vec<&Task>> = BTreeMap::new();
        for t in self.tasks.values().filter(|t| t.service_id == id && t.is_runnable()) {
            let node = if t.slot == 0 { t.node_id.as_deref().unwrap_or("") } else { "" };
            slots.entry((t.slot, node)).or_default().push(t);
        }
        let mut surplus = Vec::new();
        for tasks in slots.values().filter(|ts| ts.len() > 1) {
            let keep = tasks
                .iter()
                .filter(|t| t.spec == service.spec.task)
                .chain(tasks.iter())
                .max_by_key(|t| (t.spec == service.spec.task, t.created_ms, t.id.clone()))
                .map(|t| t.id.clone());
            for t in tasks {
                if Some(&t.id) != keep.as_ref() && !paired.contains(t.id.as_str()) {
                    surplus.push(t.id.clone());
                }
            }
        }
        for id in surplus {
            let task = self.tasks.get_mut(&id).expect("listed");
            task.desired = TaskState::Shutdown;
            task.handled = true;
        }
    }

    /// A task stopped before any node had it is simply shut down.
    fn shut_unassigned(&mut self, env: &mut Env<'_>) {
        for task in self.tasks.values_mut() {
            if task.desired > TaskState::Running && task.status.state < TaskState::Assigned {
                task.status =
                    TaskStatus::new(TaskState::Shutdown, env.now, "shut down before it was assigned");
            }
        }
    }

    /// Places new tasks whose start time has come and whose predecessor (in
    /// a stop-first update) has stopped.
    fn schedule(&mut self, env: &mut Env<'_>) {
        let mut nodes: Vec<Node> = env.nodes.to_vec();
        let index: HashMap<String, usize> =
            nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
        let ports: HashMap<&str, Vec<(String, u16)>> =
            self.services.iter().map(|(id, s)| (id.as_str(), host_ports(s))).collect();
        for task in self.tasks.values().filter(|t| t.is_runnable()) {
            if let Some(&i) = task.node_id.as_ref().and_then(|n| index.get(n)) {
                let r = &task.spec.resources;
                let held = ports.get(task.service_id.as_str()).map_or(&[][..], Vec::as_slice);
                nodes[i].take(&task.service_id, r.reserve_nano_cpus, r.reserve_memory, held);
            }
        }
        let ready: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.desired == TaskState::Running && t.status.state < TaskState::Assigned)
            .filter(|t| t.start_at_ms <= env.now)
            .filter(|t| {
                t.after.as_ref().is_none_or(|a| {
                    self.tasks.get(a).is_none_or(|old| {
                        old.status.state.is_terminal() || old.status.state < TaskState::Assigned
                    })
                })
            })
            .map(|t| t.id.clone())
            .collect();
        for id in ready {
            let task = &self.tasks[&id];
            let Some(service) = self.services.get(&task.service_id) else { continue };
            if let Err(waiting) = self.dependencies_ready(service) {
                let task = self.tasks.get_mut(&id).expect("listed");
                if task.status.err.as_deref() != Some(waiting.as_str()) {
                    task.status = TaskStatus::new(TaskState::Pending, env.now, "waiting for dependencies")
                        .with_err(waiting);
                }
                continue;
            }
            let mut req = requirements(service);
            let placed = match &task.node_id {
                // Global tasks come with their node: it only has to be usable.
                Some(node) => match index.get(node) {
                    Some(&i)
                        if shoal_sched::eligible(
                            &nodes[i],
                            &Requirements { max_replicas_per_node: None, ..req.clone() },
                        ) =>
                    {
                        nodes[i].take(
                            &service.id,
                            req.reserve_nano_cpus,
                            req.reserve_memory,
                            &req.host_ports,
                        );
                        Ok(i)
                    }
                    _ => Err("no suitable node (the node of this global task is not available)".to_owned()),
                },
                None => {
                    req.service = service.id.clone();
                    shoal_sched::place(&mut nodes, &req, 1).remove(0).map_err(|p| p.reason)
                }
            };
            let networks = service.spec.attached_networks();
            let task = self.tasks.get_mut(&id).expect("listed");
            match placed {
                Ok(i) => {
                    let mut attachments = Vec::new();
                    let mut error = None;
                    for network in &networks {
                        match env.alloc.allocate(network) {
                            Ok(a) => attachments.push(a),
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(e) = error {
                        for a in &attachments {
                            env.alloc.release(a);
                        }
                        task.status = TaskStatus::new(TaskState::Pending, env.now, "pending task scheduling")
                            .with_err(e);
                        continue;
                    }
                    // Complete from the first assignment: a node starting the
                    // task announces what it was given.
                    for a in &mut attachments {
                        (a.vip, a.local_vip) = service_vips(service, &a.network);
                    }
                    task.node_id = Some(nodes[i].id.clone());
                    task.attachments = attachments;
                    task.status =
                        TaskStatus::new(TaskState::Assigned, env.now, "scheduler assigned task to node");
                }
                Err(reason) => {
                    if task.status.err.as_deref() != Some(reason.as_str())
                        || task.status.state != TaskState::Pending
                    {
                        task.status = TaskStatus::new(TaskState::Pending, env.now, "pending task scheduling")
                            .with_err(reason);
                    }
                }
            }
        }
    }

    /// Whether every service `service` depends on is up: it has a running
    /// task (healthy, when it has a healthcheck), and none of its placed
    /// tasks is still starting. Tasks it cannot place do not hold the
    /// dependents back, nor does a dependency that does not exist (any
    /// more). `Err` says which one is awaited.
    fn dependencies_ready(&self, service: &Service) -> Result<(), String> {
        for name in &service.spec.depends_on {
            let Some(dep) = self.services.values().find(|s| s.spec.name == *name) else { continue };
            let up = |t: &Task| {
                t.status.state == TaskState::Running
                    && (t.spec.health.is_none() || t.status.health.as_deref() == Some("healthy"))
            };
            let placed: Vec<&Task> = self
                .tasks
                .values()
                .filter(|t| {
                    t.service_id == dep.id && t.is_runnable() && t.status.state >= TaskState::Assigned
                })
                .collect();
            if placed.is_empty() || !placed.iter().all(|t| up(t)) {
                let how = if dep.spec.task.health.is_some() { "running and healthy" } else { "running" };
                return Err(format!("waiting for service {name} to be {how} (depends_on)"));
            }
        }
        Ok(())
    }

    /// Drops removed tasks once stopped, and history beyond [`TASK_HISTORY`].
    fn prune(&mut self, env: &mut Env<'_>) {
        let ready: BTreeSet<&str> = env.nodes.iter().filter(|n| n.ready).map(|n| n.id.as_str()).collect();
        let mut drop: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.desired == TaskState::Remove)
            .filter(|t| {
                t.status.state.is_terminal()
                    || t.status.state < TaskState::Assigned
                    || t.node_id.as_deref().is_none_or(|n| !ready.contains(n))
            })
            .map(|t| t.id.clone())
            .collect();
        let mut history: BTreeMap<(&str, u64, &str), Vec<&Task>> = BTreeMap::new();
        for t in self.tasks.values() {
            let node = if t.slot == 0 { t.node_id.as_deref().unwrap_or("") } else { "" };
            history.entry((t.service_id.as_str(), t.slot, node)).or_default().push(t);
        }
        for tasks in history.values_mut() {
            tasks.sort_by_key(|t| std::cmp::Reverse((t.created_ms, t.id.clone())));
            for old in tasks.iter().skip(TASK_HISTORY) {
                if old.desired > TaskState::Running && old.status.state.is_terminal() {
                    drop.push(old.id.clone());
                }
            }
        }
        for id in drop {
            if let Some(task) = self.tasks.remove(&id) {
                for a in &task.attachments {
                    env.alloc.release(a);
                }
            }
        }
    }
}
