//! The manager's services: the orchestrator's [`World`] kept in the state
//! store, reconciled on a timer and after every change; task output.
//!
//! Invariants: every change of the world happens under the records' writer
//! lock and is followed by a reconciliation; addresses and the tasks holding
//! them are stored together (a crash cannot leak one without the other);
//! status reports are stored at the next tick, not one write each; every
//! change wakes the dispatchers (`changed`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_control::ipam::Ipam;
use shoal_control::{LogLine, NetworkRecord, NodeRecord, NodeState, Report};
use shoal_orch::{
    Allocator, Assignments, Attachment, EndpointMode, Env, INGRESS, Mode, Service, ServiceSpec, Task, World,
};
use tokio::sync::watch;

use super::records::{Records, new_id, pick};
use crate::clock::now_ms;
use crate::error::Error;
use crate::metrics::{Metrics, Op};
use crate::names::{self, Kind};

/// Lines of output kept per task.
const LOG_LINES: usize = 1000;

/// The most replicas one service may ask for.
const MAX_REPLICAS: u64 = 10_000;

/// The orchestrator's record in the store.
const WORLD: &str = "world";

/// How often the world is reconciled when nothing else wakes it.
const TICK: Duration = Duration::from_millis(250);

/// The manager's IPAM as the orchestrator's allocator.
struct Addresses<'a> {
    ipam: &'a mut Ipam,
    networks: &'a [NetworkRecord],
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
        Ok(Attachment {
            network: network.to_owned(),
            vni: record.vni,
            subnet: record.subnet.clone(),
            ip,
            vip: None,
            local_vip: None,
        })
    }

    fn release(&mut self, a: &Attachment) {
        self.changed |= self.ipam.release(&a.network, a.ip);
    }
}

/// The nodes as the scheduler sees them.
fn sched_nodes(nodes: &[NodeRecord]) -> Vec<shoal_sched::Node> {
    nodes
        .iter()
        .map(|n| shoal_sched::Node {
            id: n.id.clone(),
            hostname: n.hostname.clone(),
            role: n.role.to_string(),
            os: n.os.clone(),
            arch: n.arch.clone(),
            labels: n.labels.clone(),
            ready: n.state == NodeState::Ready,
            availability: n.availability,
            free_nano_cpus: u64::from(n.cpus) * 1_000_000_000,
            free_memory: n.memory_bytes,
            tasks: 0,
            tasks_by_service: HashMap::new(),
            host_ports: Default::default(),
        })
        .collect()
}

/// The manager's orchestration state.
#[derive(Debug)]
pub struct Orchestration {
    records: Arc<Records>,
    metrics: Metrics,
    world: Mutex<World>,
    /// Bumped after every change of the world: dispatchers wait on it.
    changed: watch::Sender<u64>,
    /// The world changed since it was last stored.
    unsaved: AtomicBool,
    logs: Mutex<HashMap<String, VecDeque<LogLine>>>,
}

impl Orchestration {
    /// Loads the world from the store.
    pub fn load(records: Arc<Records>, metrics: Metrics) -> Result<Orchestration, Error> {
        let world: World = records.store.load(WORLD)?.unwrap_or_default();
        Ok(Orchestration {
            records,
            metrics,
            world: Mutex::new(world),
            changed: watch::channel(0).0,
            unsaved: AtomicBool::new(false),
            logs: Mutex::new(HashMap::new()),
        })
    }

    /// Wakes when the world changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Reconciles every [`TICK`] while the orchestration lives.
    pub async fn run(orch: std::sync::Weak<Orchestration>) {
        loop {
            tokio::time::sleep(TICK).await;
            let Some(o) = orch.upgrade() else { return };
            if let Err(e) = o.reconcile(true) {
                tracing::warn!(error = %e, "reconciliation failed");
                o.metrics.failed(Op::StoreWorld);
            }
        }
    }

    /// Runs the orchestrator once over the world, the nodes and the IPAM,
    /// and announces what changed; stores the world if `store` (or at the
    /// next tick).
    pub fn reconcile(&self, store: bool) -> Result<(), Error> {
        let _writer = self.records.write();
        self.reconcile_locked(store, |_| Ok(()))
    }

    /// Applies `change` to the world, reconciles, and stores it (now if
    /// `store`, else at the next tick). Call with the writer lock held.
    fn reconcile_locked<R>(
        &self,
        store: bool,
        change: impl FnOnce(&mut World) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut world = self.world.lock().unwrap_or_else(|e| e.into_inner());
        let before = world.clone();
        let result = change(&mut world)?;
        let nodes = sched_nodes(&self.records.store.nodes()?);
        let networks = self.records.store.networks()?;
        let mut ipam = self.records.ipam()?;
        let mut alloc = Addresses { ipam: &mut ipam, networks: &networks, changed: false };
        let mut ids = || new_id().unwrap_or_else(|_| format!("{:x}", now_ms()));
        let mut env = Env { now: now_ms(), nodes: &nodes, alloc: &mut alloc, new_id: &mut ids };
        world.reconcile(&mut env);
        // Addresses and the tasks holding them are stored together.
        let store = store || alloc.changed;
        if alloc.changed {
            self.records.store.put_ipam(&ipam)?;
        }
        let changed = *world != before;
        if changed {
            self.unsaved.store(true, Ordering::Relaxed);
        }
        if store && self.unsaved.swap(false, Ordering::Relaxed) {
            self.records.store.save(WORLD, &*world)?;
        }
        if changed {
            let live: HashSet<&String> = world.tasks.keys().collect();
            self.logs.lock().unwrap_or_else(|e| e.into_inner()).retain(|id, _| live.contains(id));
            self.changed.send_modify(|v| *v += 1);
        }
        Ok(result)
    }

    /// Reads the world under its lock (copying only what `f` takes).
    fn read<R>(&self, f: impl FnOnce(&World) -> R) -> R {
        f(&self.world.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every service, by name.
    pub fn services(&self) -> Vec<Service> {
        let mut all: Vec<Service> = self.read(|w| w.services.values().cloned().collect());
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        all
    }

    /// One service by id, name or id prefix.
    pub fn find_service(&self, name: &str) -> Result<Service, Error> {
        pick(self.services(), name, "service", |s| (&s.id, &s.spec.name))
    }

    /// Checks a spec against the cluster: the name, networks exist (names
    /// are normalised), constraints parse, replicas are bounded.
    fn check_spec(&self, spec: &mut ServiceSpec) -> Result<(), Error> {
        names::check(Kind::Service, &spec.name)?;
        for c in &spec.task.placement.constraints {
            c.parse::<shoal_sched::Constraint>().map_err(|e| Error::Invalid(e.to_string()))?;
        }
        let networks = self.records.networks()?;
        for n in &mut spec.task.networks {
            *n = pick(networks.clone(), n, "network", |r| (&r.id, &r.name))?.name;
            if n == INGRESS {
                return Err(Error::Invalid(format!(
                    "service cannot be explicitly attached to the ingress network \"{INGRESS}\""
                )));
            }
        }
        let mut seen = HashSet::new();
        spec.task.networks.retain(|n| seen.insert(n.clone()));
        if let Mode::Replicated { replicas } = spec.mode
            && replicas > MAX_REPLICAS
        {
            return Err(Error::Invalid(format!(
                "{replicas} replicas is more than this manager takes ({MAX_REPLICAS}): use fewer"
            )));
        }
        Ok(())
    }

    /// `service create`: the service, with a VIP on each of its networks.
    pub fn create_service(&self, mut spec: ServiceSpec) -> Result<Service, Error> {
        self.check_spec(&mut spec)?;
        let _writer = self.records.write();
        let id = new_id()?;
        self.reconcile_locked(true, |world| {
            if world.services.values().any(|s| s.spec.name == spec.name) {
                return Err(Error::Conflict(format!("service {} already exists", spec.name)));
            }
            world.publish(&mut spec, None).map_err(Error::Invalid)?;
            let (vips, local_vip) = self.sync_vips(&[], None, &spec)?;
            let now = now_ms();
            let service = Service {
                id,
                version: 1,
                spec,
                previous: None,
                vips,
                local_vip,
                update_status: None,
                created_ms: now,
                updated_ms: now,
            };
            world.create_service(service.clone());
            Ok(service)
        })
    }

    /// `service update`, `scale` and `rollback`: a new spec for service
    /// `id`, refused if the service changed since version `expected` was
    /// read.
    pub fn update_service(
        &self,
        id: &str,
        expected: Option<u64>,
        mut spec: ServiceSpec,
        rollback: bool,
    ) -> Result<Service, Error> {
        self.check_spec(&mut spec)?;
        let _writer = self.records.write();
        self.reconcile_locked(true, |world| {
            let current =
                world.services.get(id).ok_or_else(|| Error::NotFound(format!("service {id} not found")))?;
            if let Some(expected) = expected
                && current.version != expected
            {
                return Err(Error::Conflict(format!(
                    "update out of sequence: service {} changed since it was read (version {} now, {expected} given); try again",
                    current.spec.name, current.version
                )));
            }
            if current.spec.task.networks != spec.task.networks {
                return Err(Error::Invalid(
                    "changing a service's networks is not supported yet: remove and create the service".into(),
                ));
            }
            if current.spec.name != spec.name {
                return Err(Error::Invalid("a service cannot be renamed".into()));
            }
            world.publish(&mut spec, Some(id)).map_err(Error::Invalid)?;
            // Tasks join or leave the ingress network with the service's
            // first or last mesh port: they are replaced.
            let current = &world.services[id];
            if current.spec.uses_ingress() != spec.uses_ingress() {
                spec.task.force_update = spec.task.force_update.max(current.spec.task.force_update) + 1;
            }
            // A change of endpoint mode or of ingress gives or takes VIPs.
            let (vips, local_vip) = self.sync_vips(&current.vips, current.local_vip.as_ref(), &spec)?;
            world.update_service(id, spec, now_ms(), rollback);
            let service = world.services.get_mut(id).expect("updated");
            service.vips = vips;
            service.local_vip = local_vip;
            Ok(service.clone())
        })
    }

    /// `service rm`: its tasks stop and its addresses are freed.
    pub fn remove_service(&self, id: &str) -> Result<Service, Error> {
        let _writer = self.records.write();
        self.reconcile_locked(true, |world| {
            let service =
                world.remove_service(id).ok_or_else(|| Error::NotFound(format!("service {id} not found")))?;
            self.release_vips(service.vips.iter().chain(&service.local_vip))?;
            Ok(service)
        })
    }

    /// The VIPs `spec` needs: one per attached network in `vip` mode, and
    /// a local VIP on `ingress` for `traffic-policy=local` ports. Those of
    /// `current` still needed are kept, the others freed in the IPAM. Call
    /// with the writer lock held.
    fn sync_vips(
        &self,
        current: &[Attachment],
        current_local: Option<&Attachment>,
        spec: &ServiceSpec,
    ) -> Result<(Vec<Attachment>, Option<Attachment>), Error> {
        let wanted = match spec.endpoint.mode {
            EndpointMode::Vip => spec.attached_networks(),
            EndpointMode::Dnsrr => Vec::new(),
        };
        let mut ipam = self.records.ipam()?;
        let records = self.records.store.networks()?;
        let mut allocate = |name: &str| -> Result<Attachment, Error> {
            let network = records.iter().find(|n| n.name == name).ok_or_else(|| {
                Error::NotFound(if name == INGRESS {
                    "service needs ingress network, but no ingress network is present".into()
                } else {
                    format!("network {name} not found")
                })
            })?;
            let ip = ipam.allocate(name, None).map_err(|e| Error::Conflict(e.to_string()))?;
            Ok(Attachment {
                network: name.to_owned(),
                vni: network.vni,
                subnet: network.subnet.clone(),
                ip,
                vip: None,
                local_vip: None,
            })
        };
        let mut vips = Vec::new();
        for name in &wanted {
            match current.iter().find(|v| &v.network == name) {
                Some(kept) => vips.push(kept.clone()),
                None => vips.push(allocate(name)?),
            }
        }
        let local = match (current_local, spec.uses_local_policy()) {
            (Some(kept), true) => Some(kept.clone()),
            (None, true) => Some(allocate(INGRESS)?),
            (_, false) => None,
        };
        let gone = current.iter().filter(|v| !wanted.contains(&v.network));
        for vip in gone.chain(current_local.filter(|_| local.is_none())) {
            ipam.release(&vip.network, vip.ip);
        }
        self.records.store.put_ipam(&ipam)?;
        Ok((vips, local))
    }

    /// Frees VIPs in the IPAM. Call with the writer lock held.
    fn release_vips<'a>(&self, vips: impl IntoIterator<Item = &'a Attachment>) -> Result<(), Error> {
        let mut ipam = self.records.ipam()?;
        for vip in vips {
            ipam.release(&vip.network, vip.ip);
        }
        self.records.store.put_ipam(&ipam)?;
        Ok(())
    }

    /// The services using a network (`network rm` refuses while any does).
    pub fn network_users(&self, network: &str) -> Vec<String> {
        self.read(|w| {
            w.services
                .values()
                .filter(|s| s.spec.attached_networks().iter().any(|n| n == network))
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
    pub fn find_task(&self, id: &str) -> Result<Task, Error> {
        // Tasks have no names: only ids that start with `id` can match.
        let tasks: Vec<Task> =
            self.read(|w| w.tasks.values().filter(|t| t.id.starts_with(id)).cloned().collect());
        pick(tasks, id, "task", |t| (&t.id, &t.id))
    }

    /// What `node` runs, and a digest of it for long polls.
    pub fn assignments(&self, node: &str) -> (u64, Assignments) {
        let assigned = self.read(|w| Assignments {
            tasks: w.assigned_to(node).cloned().collect(),
            mesh: w.mesh.get(node).cloned(),
        });
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for t in &assigned.tasks {
            (&t.id, t.desired, t.status.state, &t.endpoint, &t.attachments).hash(&mut h);
        }
        assigned.mesh.hash(&mut h);
        (h.finish(), assigned)
    }

    /// Applies reports from `node`'s task runner: output into the logs,
    /// status into the world (reconciled at once, so a task that ended is
    /// replaced now and waiting dispatchers wake; stored at the next tick).
    pub fn apply_reports(&self, node: &str, reports: Vec<Report>) {
        let mut statuses = Vec::new();
        {
            let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
            let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
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
        let _writer = self.records.write();
        let applied = self.reconcile_locked(false, |world| {
            for (task, status) in statuses {
                // A report of another node's task, or a step back, is ignored.
                let _ = world.report(&task, node, status);
            }
            Ok(())
        });
        if let Err(e) = applied {
            tracing::warn!(error = %e, "reconciliation after reports failed");
            self.metrics.failed(Op::StoreWorld);
        }
    }

    /// Output of the given tasks, in time order: (task id, line).
    pub fn logs(&self, tasks: &[String]) -> Vec<(String, LogLine)> {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, LogLine)> = tasks
            .iter()
            .flat_map(|t| logs.get(t).into_iter().flatten().map(move |l| (t.clone(), l.clone())))
            .collect();
        out.sort_by_key(|(_, l)| l.ts_ms);
        out
    }
}
