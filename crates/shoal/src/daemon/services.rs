//! The manager's services: the orchestrator's [`World`] kept in the state
//! store, reconciled on a timer and after every change; the dispatcher
//! that hands each node its tasks and takes their reports; task output.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use shoal_control::ipam::Ipam;
use shoal_orch::{Allocator, Attachment, Env, Service, ServiceSpec, Task, World};
use shoal_sched::Availability;

use super::agent::{LogLine, Report, now_ms};
use super::cluster::{Manager, internal, new_id, pick};
use super::state::ApiError;

/// Lines of output kept per task.
const LOG_LINES: usize = 1000;

/// The most replicas one service may ask for.
const MAX_REPLICAS: u64 = 10_000;

/// The orchestrator's record in the store.
const WORLD: &str = "world";

/// The manager's IPAM as the orchestrator's allocator.
struct Addresses<'a> {
    ipam: &'a mut Ipam,
    networks: &'a [shoal_control::NetworkRecord],
    changed: bool,
}

impl Allocator for Addresses<'_> {
    fn allocate(&mut self, network: &str) -> Result<Attachment, String> {
        let record = self
            .networks
            .iter()
            .find(|n| n.name == network)
            .ok_or_else(|| format!("network {network} not found"))?;
        let ip = self.ipam.allocate(network, None).map_err(|e| e.to_string())?;
        self.changed = true;
        Ok(Attachment { network: network.to_owned(), vni: record.vni, subnet: record.subnet.clone(), ip })
    }

    fn release(&mut self, a: &Attachment) {
        self.changed |= self.ipam.release(&a.network, a.ip);
    }
}

/// The nodes as the scheduler sees them.
fn sched_nodes(nodes: &[shoal_control::NodeRecord]) -> Vec<shoal_sched::Node> {
    nodes
        .iter()
        .map(|n| shoal_sched::Node {
            id: n.id.clone(),
            hostname: n.hostname.clone(),
            role: n.role.to_string(),
            os: n.os.clone(),
            arch: n.arch.clone(),
            labels: n.labels.clone(),
            ready: n.state == "ready",
            availability: match n.availability.as_str() {
                "pause" => Availability::Pause,
                "drain" => Availability::Drain,
                _ => Availability::Active,
            },
            free_nano_cpus: u64::from(n.cpus) * 1_000_000_000,
            free_memory: n.memory_bytes,
            tasks: 0,
            tasks_by_service: HashMap::new(),
            host_ports: Default::default(),
        })
        .collect()
}

/// The manager's orchestration state.
pub struct Orchestration {
    world: std::sync::Mutex<World>,
    /// Bumped after every change of the world: dispatchers wait on it.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// The world changed since it was last stored (status reports and the
    /// orchestrator's own moves are stored at the next tick, not each one).
    unsaved: std::sync::atomic::AtomicBool,
    logs: std::sync::Mutex<HashMap<String, VecDeque<LogLine>>>,
}

impl Orchestration {
    /// Loads the world from the store.
    pub fn load(store: &shoal_control::Store) -> anyhow::Result<Orchestration> {
        let world: World = store.load(WORLD)?.unwrap_or_default();
        Ok(Orchestration {
            world: std::sync::Mutex::new(world),
            changed: tokio::sync::watch::channel(0).0,
            unsaved: std::sync::atomic::AtomicBool::new(false),
            logs: std::sync::Mutex::new(HashMap::new()),
        })
    }
}

/// Reconciles every 250 ms while the manager lives.
pub async fn orchestrate_loop(manager: std::sync::Weak<Manager>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(m) = manager.upgrade() else { return };
        if let Err(e) = m.reconcile(true) {
            tracing::warn!(error = ?e, "reconciliation failed");
        }
    }
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid service name {name:?}: use up to 63 letters, digits, '-' or '_', starting with a letter or digit"
        )))
    }
}

impl Manager {
    /// Runs the orchestrator once over the world, the nodes and the IPAM,
    /// and announces what changed; stores the world if `store` (or marks it
    /// unsaved for the next tick).
    pub fn reconcile(&self, store: bool) -> Result<(), ApiError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.reconcile_locked(store, |_| Ok(())).map(|_| ())
    }

    /// Applies `change` to the world, reconciles, and stores it (now if
    /// `store`, else at the next tick), all under the writer lock. Runs with
    /// `writer` held.
    fn reconcile_locked<R>(
        &self,
        store: bool,
        change: impl FnOnce(&mut World) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let orch = &self.orch;
        let mut world = orch.world.lock().unwrap_or_else(|e| e.into_inner());
        let before = world.clone();
        let result = change(&mut world)?;
        let nodes = sched_nodes(&self.store.nodes().map_err(internal)?);
        let networks = self.store.networks().map_err(internal)?;
        let mut ipam = self.ipam()?;
        let mut alloc = Addresses { ipam: &mut ipam, networks: &networks, changed: false };
        let mut ids = || new_id().unwrap_or_else(|_| format!("{:x}", now_ms()));
        let mut env = Env { now: now_ms(), nodes: &nodes, alloc: &mut alloc, new_id: &mut ids };
        world.reconcile(&mut env);
        // Addresses and the tasks holding them are stored together, so a
        // crash cannot leak one without the other.
        let store = store || alloc.changed;
        if alloc.changed {
            self.store.put_ipam(&ipam).map_err(internal)?;
        }
        let changed = *world != before;
        if changed {
            orch.unsaved.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if store && orch.unsaved.swap(false, std::sync::atomic::Ordering::Relaxed) {
            self.store.save(WORLD, &*world).map_err(internal)?;
        }
        if changed {
            let live: std::collections::HashSet<&String> = world.tasks.keys().collect();
            orch.logs.lock().unwrap_or_else(|e| e.into_inner()).retain(|id, _| live.contains(id));
            orch.changed.send_modify(|v| *v += 1);
        }
        Ok(result)
    }

    fn ipam(&self) -> Result<Ipam, ApiError> {
        match self.store.ipam().map_err(internal)? {
            Some(ipam) => Ok(ipam),
            None => {
                let cs = self.store.cluster().map_err(internal)?.ok_or_else(|| internal("no cluster"))?;
                Ok(Ipam::new(cs.default_addr_pool.parse().map_err(internal)?, 24))
            }
        }
    }

    /// Reads the world under its lock (copying only what `f` takes).
    fn read<R>(&self, f: impl FnOnce(&World) -> R) -> R {
        f(&self.orch.world.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every service, by name.
    pub fn services(&self) -> Vec<Service> {
        let mut all: Vec<Service> = self.read(|w| w.services.values().cloned().collect());
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        all
    }

    /// One service by id, name or id prefix.
    pub fn find_service(&self, name: &str) -> Result<Service, ApiError> {
        pick(self.services(), name, "service", |s| (&s.id, &s.spec.name))
    }

    /// Checks a spec against the cluster: networks exist (names are
    /// normalised), constraints parse.
    fn check_spec(&self, spec: &mut ServiceSpec) -> Result<(), ApiError> {
        validate_name(&spec.name)?;
        for c in &spec.task.placement.constraints {
            c.parse::<shoal_sched::Constraint>().map_err(|e| ApiError::BadRequest(e.to_string()))?;
        }
        let networks = self.networks()?;
        for n in &mut spec.task.networks {
            let found = pick(networks.clone(), n, "network", |r| (&r.id, &r.name))?;
            *n = found.name;
        }
        let mut seen = std::collections::HashSet::new();
        spec.task.networks.retain(|n| seen.insert(n.clone()));
        if let shoal_orch::Mode::Replicated { replicas } = spec.mode
            && replicas > MAX_REPLICAS
        {
            return Err(ApiError::BadRequest(format!(
                "{replicas} replicas is more than this manager takes ({MAX_REPLICAS}): use fewer"
            )));
        }
        Ok(())
    }

    /// `service create`.
    pub fn create_service(&self, mut spec: ServiceSpec) -> Result<Service, ApiError> {
        self.check_spec(&mut spec)?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let id = new_id()?;
        self.reconcile_locked(true, |world| {
            if world.services.values().any(|s| s.spec.name == spec.name) {
                return Err(ApiError::Conflict(format!("service {} already exists", spec.name)));
            }
            let mut ipam = self.ipam()?;
            let mut vips = Vec::new();
            for name in &spec.task.networks {
                let network = self.store.networks().map_err(internal)?.into_iter().find(|n| &n.name == name);
                let network =
                    network.ok_or_else(|| ApiError::NotFound(format!("network {name} not found")))?;
                let ip = ipam.allocate(name, None).map_err(|e| ApiError::Conflict(e.to_string()))?;
                vips.push(Attachment { network: name.clone(), vni: network.vni, subnet: network.subnet, ip });
            }
            self.store.put_ipam(&ipam).map_err(internal)?;
            let now = now_ms();
            let service = Service {
                id,
                version: 1,
                spec,
                previous: None,
                vips,
                update_status: None,
                created_ms: now,
                updated_ms: now,
            };
            world.create_service(service.clone());
            Ok(service)
        })
    }

    /// `service update`, `scale` and `rollback`: a new spec for `id`.
    pub fn update_service(
        &self,
        id: &str,
        mut spec: ServiceSpec,
        rollback: bool,
    ) -> Result<Service, ApiError> {
        self.check_spec(&mut spec)?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.reconcile_locked(true, |world| {
            let current = world
                .services
                .get(id)
                .ok_or_else(|| ApiError::NotFound(format!("service {id} not found")))?;
            if current.spec.task.networks != spec.task.networks {
                return Err(ApiError::BadRequest(
                    "changing a service's networks is not supported yet: remove and create the service"
                        .into(),
                ));
            }
            if current.spec.name != spec.name {
                return Err(ApiError::BadRequest("a service cannot be renamed".into()));
            }
            world.update_service(id, spec, now_ms(), rollback);
            Ok(world.services[id].clone())
        })
    }

    /// `service rm`: its tasks stop and its addresses are freed.
    pub fn remove_service(&self, id: &str) -> Result<Service, ApiError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.reconcile_locked(true, |world| {
            let service = world
                .remove_service(id)
                .ok_or_else(|| ApiError::NotFound(format!("service {id} not found")))?;
            let mut ipam = self.ipam()?;
            for vip in &service.vips {
                ipam.release(&vip.network, vip.ip);
            }
            self.store.put_ipam(&ipam).map_err(internal)?;
            Ok(service)
        })
    }

    /// The services using a network (`network rm` refuses while any does).
    pub fn network_users(&self, network: &str) -> Vec<String> {
        self.read(|w| {
            w.services
                .values()
                .filter(|s| s.spec.task.networks.iter().any(|n| n == network))
                .map(|s| s.spec.name.clone())
                .collect()
        })
    }

    /// The tasks of a service, newest first within each slot.
    pub fn service_tasks(&self, service_id: &str) -> Vec<Task> {
        let mut tasks: Vec<Task> =
            self.read(|w| w.tasks.values().filter(|t| t.service_id == service_id).cloned().collect());
        tasks.sort_by(|a, b| {
            (a.slot, a.node_id.clone(), std::cmp::Reverse(a.created_ms)).cmp(&(
                b.slot,
                b.node_id.clone(),
                std::cmp::Reverse(b.created_ms),
            ))
        });
        tasks
    }

    /// One task by id or id prefix.
    pub fn find_task(&self, id: &str) -> Result<Task, ApiError> {
        // Tasks have no names: only ids that start with `id` can match.
        let tasks: Vec<Task> =
            self.read(|w| w.tasks.values().filter(|t| t.id.starts_with(id)).cloned().collect());
        pick(tasks, id, "task", |t| (&t.id, &t.id))
    }

    /// The tasks assigned to `node`, and a digest of them for long polls.
    pub fn assignments(&self, node: &str) -> (u64, Vec<Task>) {
        let tasks: Vec<Task> = self.read(|w| w.assigned_to(node).cloned().collect());
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for t in &tasks {
            (&t.id, t.desired, t.status.state).hash(&mut h);
        }
        (h.finish(), tasks)
    }

    /// The tasks assigned to `node` once they differ from the digest
    /// `known`, or after `limit` (a long poll).
    pub async fn assignments_after(&self, node: &str, known: u64, limit: Duration) -> (u64, Vec<Task>) {
        // Subscribe before looking, so a change in between is not missed.
        let mut changes = self.orch.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (digest, tasks) = self.assignments(node);
            if digest != known {
                return (digest, tasks);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return (digest, tasks),
            }
        }
    }

    /// Applies reports from `node`'s agent: output into the logs, status
    /// into the world (reconciled at once, so a task that ended is replaced
    /// now and waiting dispatchers wake; stored at the next tick).
    pub fn apply_reports(&self, node: &str, reports: Vec<Report>) {
        let orch = &self.orch;
        let mut statuses = Vec::new();
        {
            let world = orch.world.lock().unwrap_or_else(|e| e.into_inner());
            let mut logs = orch.logs.lock().unwrap_or_else(|e| e.into_inner());
            for report in reports {
                match report {
                    Report::Status { task, status } => statuses.push((task, status)),
                    Report::Logs { task, lines } => {
                        if world.tasks.get(&task).and_then(|t| t.node_id.as_deref()) != Some(node) {
                            continue;
                        }
                        let ring = logs.entry(task).or_default();
                        ring.extend(lines);
                        while ring.len() > LOG_LINES {
                            ring.pop_front();
                        }
                    }
                }
            }
        }
        if statuses.is_empty() {
            return;
        }
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let applied = self.reconcile_locked(false, |world| {
            for (task, status) in statuses {
                world.report(&task, node, status);
            }
            Ok(())
        });
        if let Err(e) = applied {
            tracing::warn!(error = ?e, "reconciliation after reports failed");
        }
    }

    /// Output of the given tasks, in time order: (task id, line).
    pub fn logs(&self, tasks: &[String]) -> Vec<(String, LogLine)> {
        let logs = self.orch.logs.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, LogLine)> = tasks
            .iter()
            .flat_map(|t| logs.get(t).into_iter().flatten().map(move |l| (t.clone(), l.clone())))
            .collect();
        out.sort_by_key(|(_, l)| l.ts_ms);
        out
    }
}

/// Feeds this manager's own agent: its assignments in, its reports out.
pub async fn local_agent_loop(
    manager: std::sync::Weak<Manager>,
    node: String,
    assignments: tokio::sync::watch::Sender<Vec<Task>>,
    mut reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
) {
    let mut changes = match manager.upgrade() {
        Some(m) => m.orch.changed.subscribe(),
        None => return,
    };
    let mut last = None;
    loop {
        let Some(m) = manager.upgrade() else { return };
        let (digest, tasks) = m.assignments(&node);
        if last != Some(digest) {
            last = Some(digest);
            if assignments.send(tasks).is_err() {
                return;
            }
        }
        drop(m);
        tokio::select! {
            _ = changes.changed() => {}
            report = reports.recv() => {
                let Some(report) = report else { return };
                let mut batch = vec![report];
                while let Ok(r) = reports.try_recv() {
                    batch.push(r);
                }
                if let Some(m) = manager.upgrade() {
                    m.apply_reports(&node, batch);
                }
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A worker's reports not yet taken by the manager.
pub struct Outbox {
    /// From the agent.
    pub rx: tokio::sync::mpsc::UnboundedReceiver<Report>,
    /// Sent but not acknowledged.
    pub pending: Vec<Report>,
}

/// Keeps a worker's agent fed over its session: long-polls assignments
/// and pushes reports, until the connection fails.
pub async fn worker_agent_session(
    conn: quinn::Connection,
    assignments: Arc<tokio::sync::watch::Sender<Vec<Task>>>,
    outbox: Arc<tokio::sync::Mutex<Outbox>>,
) {
    let poll = async {
        let mut known = 0u64;
        loop {
            let request = super::cluster::Request::Assignments { known };
            match shoal_control::transport::call::<_, super::cluster::Response>(&conn, &request).await {
                Ok(super::cluster::Response::Assignments { digest, tasks }) => {
                    if digest != known {
                        known = digest;
                        if assignments.send(tasks).is_err() {
                            return;
                        }
                    }
                }
                _ => return,
            }
        }
    };
    let push = async {
        let mut outbox = outbox.lock().await;
        loop {
            if outbox.pending.is_empty() {
                let Some(report) = outbox.rx.recv().await else { return };
                outbox.pending.push(report);
            }
            while outbox.pending.len() < 512
                && let Ok(r) = outbox.rx.try_recv()
            {
                outbox.pending.push(r);
            }
            let request = super::cluster::Request::Report { reports: outbox.pending.clone() };
            if !matches!(
                shoal_control::transport::call::<_, super::cluster::Response>(&conn, &request).await,
                Ok(super::cluster::Response::Ok { .. })
            ) {
                return; // kept in the outbox for the next session
            }
            outbox.pending.clear();
        }
    };
    tokio::select! {
        () = poll => {}
        () = push => {}
    }
}
