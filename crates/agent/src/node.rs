//! The node agent assembled: the data plane, endpoints and routes, gossip,
//! the task runner and the swarm, with their start-up and shutdown.
//!
//! The node acts on the swarm's [`RoleEvent`]s: joining a swarm starts
//! gossip (with the key ring only the control channel hands out) and the
//! task runner; leaving stops both. The swarm never calls back up.

use std::net::SocketAddrV4;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context as _;
use shoal_dataplane::{Dataplane, DataplaneConfig};
use shoal_gossip::{GossipConfig, KeyRing, Member, NodeId};
use tokio::sync::mpsc;

use crate::directory::ServiceDirectory;
use crate::dns::Dns;
use crate::endpoints::{self, Endpoints, Plumbing};
use crate::error::Error;
use crate::gossip_driver::{self, GossipSlot};
use crate::keys;
use crate::mesh::RoutingMesh;
use crate::metrics::{Metrics, Snapshot};
use crate::routes::Routes;
use crate::settings::Settings;
use crate::swarm::{RoleEvent, Swarm};
use crate::tasks::rows::Announcer;
use crate::tasks::{self, TaskRunner};
use crate::vips::Vips;
use crate::volumes::Volumes;

/// How long stopping tasks may take when the node leaves a swarm or stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// One node's agent.
#[derive(Debug)]
pub struct Node {
    /// This node in gossip: id, address, epoch of this start.
    pub me: Member,
    /// Its settings.
    pub settings: Arc<Settings>,
    /// Its data plane.
    pub dataplane: Arc<Dataplane>,
    /// Gossip, while it runs.
    pub gossip: GossipSlot,
    /// Its sandboxes.
    pub endpoints: Arc<Endpoints>,
    /// Its place in a swarm.
    pub swarm: Swarm,
    /// Failures carried on from.
    pub metrics: Metrics,
    /// Which names, VIPs and tasks every network has.
    pub directory: Arc<ServiceDirectory>,
    /// The tasks' resolver.
    pub dns: Dns,
    /// Its routing mesh: the published ports.
    pub mesh: Arc<RoutingMesh>,
    /// Its named volumes.
    pub volumes: Arc<Volumes>,
    routes: Arc<Routes>,
    announcer: Arc<Announcer>,
    runner: Mutex<Option<Arc<TaskRunner>>>,
    /// Where gossip numbering resumes (live restore), or 0.
    resume_base: u64,
    /// What the previous daemon left, for the task runner's start: tasks
    /// to adopt, and tasks gone whose rows to withdraw.
    left: Mutex<Option<(Vec<tasks::adopt::Survivor>, Vec<shoal_orch::Task>)>>,
}

impl Node {
    /// Starts the agent: removes what a crash left, starts the data plane,
    /// gossip (with `ring`, outside any swarm) and the swarm recorded on
    /// disk.
    pub async fn start(settings: Settings, ring: Option<KeyRing>) -> anyhow::Result<Arc<Node>> {
        let settings = Arc::new(settings);
        let id = node_id(&settings.data_dir)?;
        // Live restore: tasks the previous daemon left running are adopted,
        // and this process resumes its epoch, so peers see no restart.
        let survivors =
            if settings.live_restore { tasks::adopt::survivors(&settings.data_dir) } else { Vec::new() };
        let (epoch, resume_base) = if survivors.is_empty() {
            (next_epoch(&settings.data_dir)?, 0)
        } else {
            resume_epoch(&settings.data_dir)?
        };
        let adopted = tasks::adopt::ids(&survivors);
        let lost = tasks::prepare::remove_leftovers(&settings.data_dir, &adopted);
        let sandboxes: std::collections::BTreeSet<String> =
            survivors.iter().map(|s| tasks::prepare::sandbox_name(&settings.task_prefix, &s.task)).collect();
        endpoints::remove_stale(&settings.data_dir, &sandboxes);
        if !survivors.is_empty() {
            tracing::info!(tasks = survivors.len(), epoch, "live restore: adopting the tasks left running");
        }
        let dataplane = Dataplane::start(&DataplaneConfig {
            port: settings.data_port,
            mtu: settings.mtu,
            listen: settings.listen_addr,
            ..DataplaneConfig::new(settings.advertise_addr)
        })
        .with_context(|| format!("bind the VXLAN port {}:{}", settings.listen_addr, settings.data_port))?;
        let dataplane = Arc::new(dataplane);
        // The VIP flows the adopted tasks had open go on to their backends.
        let flows_file = settings.data_dir.join(FLOWS_FILE);
        if !survivors.is_empty()
            && let Ok(text) = std::fs::read(&flows_file)
            && let Ok(flows) = serde_json::from_slice::<Vec<shoal_dataplane::SavedFlow>>(&text)
        {
            tracing::info!(flows = flows.len(), "live restore: taking up the VIP flows the tasks had open");
            dataplane.restore_flows(&flows);
        }
        let _ = std::fs::remove_file(&flows_file);
        if settings.live_restore {
            tokio::spawn(save_flows_every(Arc::downgrade(&dataplane), flows_file));
        }
        let me = Member { id, addr: settings.gossip_addr(), epoch, incarnation: 0 };
        let metrics = Metrics::default();
        let gossip = GossipSlot::default();
        let routes = Arc::new(Routes::new(dataplane.clone()));
        let directory = Arc::new(ServiceDirectory::default());
        let announcer = Arc::new(Announcer::new(settings.advertise_addr, directory.clone(), gossip.clone()));
        let vips = Arc::new(Vips::new(settings.advertise_addr, dataplane.clone(), directory.clone()));
        tokio::spawn(Vips::follow(Arc::downgrade(&vips)));
        let dns = Dns::new(directory.clone(), settings.upstreams());
        let endpoints = Arc::new(Endpoints::new(Plumbing {
            dataplane: dataplane.clone(),
            routes: routes.clone(),
            vips,
            dns: dns.clone(),
            gossip: gossip.clone(),
            metrics: metrics.clone(),
            node: settings.advertise_addr,
            mtu: settings.mtu,
            data_dir: settings.data_dir.clone(),
        }));
        let mesh = RoutingMesh::new(
            settings.clone(),
            endpoints.clone(),
            directory.clone(),
            announcer.clone(),
            gossip.clone(),
        );
        let (events_tx, events) = mpsc::channel(4);
        let volumes = Arc::new(Volumes::new(&settings.data_dir));
        let node = Arc::new(Node {
            me,
            swarm: Swarm::new(settings.clone(), metrics.clone(), events_tx),
            settings,
            dataplane,
            gossip,
            endpoints,
            metrics,
            directory,
            dns,
            mesh,
            volumes,
            routes,
            announcer,
            runner: Mutex::new(None),
            resume_base,
            left: Mutex::new(Some((survivors, lost))),
        });
        tokio::spawn(follow_roles(Arc::downgrade(&node), events));
        if let Some(ring) = ring {
            let seeds = node.settings.join.clone();
            node.start_gossip(ring, &seeds).await?;
        }
        node.swarm.resume().await.context("resume this node's swarm")?;
        // Not in a swarm (any more): no one wants what was left running.
        if let Some((survivors, _)) = node.left.lock().unwrap_or_else(|e| e.into_inner()).take() {
            for s in &survivors {
                tracing::info!(task = %s.task.id, "stopping a task left running: this node is in no swarm");
            }
            drop(survivors);
            tasks::prepare::remove_leftovers(&node.settings.data_dir, &Default::default());
            endpoints::remove_stale(&node.settings.data_dir, &Default::default());
        }
        Ok(node)
    }

    /// Starts gossip with `ring`, joining through `seeds`, and routes its
    /// events into the data plane.
    async fn start_gossip(&self, ring: KeyRing, seeds: &[SocketAddrV4]) -> Result<(), Error> {
        let listen = SocketAddrV4::new(self.settings.listen_addr, self.settings.gossip_port);
        let config = GossipConfig { resume_base: self.resume_base, ..GossipConfig::default() };
        let (handle, driver) = gossip_driver::start(self.me, listen, config, ring, seeds)
            .await
            .map_err(Error::io(format!("bind the gossip port {listen}")))?;
        self.gossip.set(Some(handle));
        tokio::spawn(follow_gossip(driver.events, self.routes.clone(), self.directory.clone()));
        Ok(())
    }

    /// Leaves gossip and stops its driver, freeing the gossip port.
    async fn stop_gossip(&self) {
        if let Ok(gossip) = self.gossip.get() {
            gossip.leave().await;
            gossip.stop().await;
        }
        self.gossip.set(None);
    }

    /// Stops every task and waits (a while) for them to be gone.
    async fn stop_tasks(&self) {
        let runner = self.runner.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(runner) = runner {
            runner.stop_all();
            runner.drained(DRAIN_LIMIT).await;
        }
    }

    async fn on_role(&self, event: RoleEvent) {
        match event {
            RoleEvent::Joined { keys, seeds, assignments, reports, done } => {
                let started =
                    if self.gossip.is_running() { Ok(()) } else { self.start_gossip(keys, &seeds).await };
                if started.is_ok() {
                    let ctx = tasks::Context {
                        endpoints: self.endpoints.clone(),
                        settings: self.settings.clone(),
                        reports,
                        metrics: self.metrics.clone(),
                        announcer: self.announcer.clone(),
                        volumes: self.volumes.clone(),
                        released: Arc::new(tokio::sync::watch::channel(false).0),
                    };
                    tokio::spawn(self.mesh.clone().follow(assignments.clone()));
                    let (survivors, lost) =
                        self.left.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
                    *self.runner.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(TaskRunner::start(ctx, assignments, survivors, lost));
                }
                let _ = done.send(started);
            }
            RoleEvent::GossipKeys { keys, done } => {
                if let Ok(gossip) = self.gossip.get() {
                    gossip.set_ring(keys).await;
                }
                let _ = done.send(());
            }
            RoleEvent::Left { done } => {
                self.stop_tasks().await;
                self.stop_gossip().await;
                let _ = done.send(());
            }
        }
    }

    /// The task runner, while this node is in a swarm.
    pub fn task_runner(&self) -> Result<Arc<TaskRunner>, Error> {
        self.runner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Error::Unavailable("this node is not part of a swarm: it runs no tasks".into()))
    }

    /// The volumes that tasks running on this node mount, each with those
    /// tasks' ids; none outside a swarm (no task runs).
    pub fn volumes_in_use(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        self.task_runner().map(|r| r.volumes_in_use()).unwrap_or_default()
    }

    /// The counters of the data plane and gossip, now.
    pub async fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            networks: self.dataplane.tables().network_count(),
            dataplane: self.dataplane.counters(),
            dns: self.dns.stats(),
            backends: self.dataplane.lb_stats(),
            mesh: self.mesh.stats(),
            ..Snapshot::default()
        };
        if let Ok(g) = self.gossip.get() {
            snapshot.gossip = g.stats().await.0;
            snapshot.members = g.members().await;
            snapshot.rows = g.row_counts().await;
        }
        snapshot
    }

    /// Lets the daemon exit with its tasks left running (live restore):
    /// their sandboxes stay, gossip is not left (the next daemon resumes
    /// this epoch), and nothing of theirs is withdrawn.
    pub async fn release(&self) {
        save_flows(&self.dataplane, &self.settings.data_dir.join(FLOWS_FILE));
        if let Ok(runner) = self.task_runner() {
            runner.release().await;
        }
        self.endpoints.keep_all().await;
    }

    /// Stops the node: its tasks, its endpoints, then gossip after one
    /// round for the withdrawn rows to go out.
    pub async fn shutdown(&self) {
        self.stop_tasks().await;
        self.endpoints.remove_all().await;
        if let Ok(gossip) = self.gossip.get() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            gossip.leave().await;
        }
    }
}

/// Follows gossip's events until the driver stops: membership to the log,
/// table changes to the routes and the service directory.
async fn follow_gossip(
    mut events: mpsc::UnboundedReceiver<shoal_gossip::Event>,
    routes: Arc<Routes>,
    directory: Arc<ServiceDirectory>,
) {
    use shoal_gossip::Event;
    while let Some(event) = events.recv().await {
        match event {
            Event::MemberUp(m) => tracing::info!(node = %m.id, addr = %m.addr, epoch = m.epoch, "member up"),
            Event::MemberDown(m) => tracing::info!(node = %m.id, addr = %m.addr, "member down"),
            Event::Table(change) => {
                routes.apply(&change);
                directory.apply(&change);
            }
        }
    }
}

/// Acts on the swarm's role changes while the node lives.
async fn follow_roles(node: Weak<Node>, mut events: mpsc::Receiver<RoleEvent>) {
    while let Some(event) = events.recv().await {
        let Some(node) = node.upgrade() else { return };
        node.on_role(event).await;
    }
}

/// The node's stable id, created on first start.
fn node_id(dir: &Path) -> anyhow::Result<NodeId> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16)
            .map(NodeId)
            .with_context(|| format!("{} is corrupt: remove it to get a new node id", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = NodeId(keys::random_u64()?);
            std::fs::write(&path, format!("{id}\n")).with_context(|| format!("write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Where the VIP flows are saved for the next daemon (live restore).
const FLOWS_FILE: &str = "flows.json";

/// How often the VIP flows are saved, for a daemon that dies without
/// notice: the flows younger than this are lost then.
const SAVE_FLOWS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Saves the VIP flows tracked now (written beside, then renamed over).
fn save_flows(dataplane: &Dataplane, path: &Path) {
    let flows = dataplane.save_flows();
    let next = path.with_extension("new");
    let written = std::fs::write(&next, serde_json::to_vec(&flows).expect("serialisable"))
        .and_then(|()| std::fs::rename(&next, path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot save the VIP flows for live restore");
    }
}

/// Saves the VIP flows every [`SAVE_FLOWS_EVERY`] while the data plane lives.
async fn save_flows_every(dataplane: std::sync::Weak<Dataplane>, path: std::path::PathBuf) {
    let mut saved = 0;
    loop {
        tokio::time::sleep(SAVE_FLOWS_EVERY).await;
        let Some(dataplane) = dataplane.upgrade() else { return };
        // Unchanged and empty: nothing to write.
        let live = dataplane.counters().conntrack.entries;
        if live == 0 && saved == 0 {
            continue;
        }
        let path = path.clone();
        let _ = tokio::task::spawn_blocking(move || save_flows(&dataplane, &path)).await;
        saved = live;
    }
}

/// The epoch of the previous start, resumed by a daemon that adopts its
/// tasks, with where its gossip numbering starts: above anything the
/// previous processes of the epoch used (they cannot have sent a million
/// frames or writes a millisecond), and above the previous resume.
fn resume_epoch(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let read = |name: &str| -> u64 {
        std::fs::read_to_string(dir.join(name)).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
    };
    let epoch = read("epoch");
    if epoch == 0 {
        return Ok((next_epoch(dir)?, 0));
    }
    let since = crate::clock::now_ms().saturating_sub(epoch).max(1);
    let base = since.saturating_mul(1_000_000).max(read("resumed").saturating_add(1 << 40));
    let path = dir.join("resumed");
    std::fs::write(&path, format!("{base}\n")).with_context(|| format!("write {}", path.display()))?;
    Ok((epoch, base))
}

/// A new epoch for this start: the wall clock in milliseconds, and always
/// above the last one recorded, so a restart is always newer.
fn next_epoch(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("epoch");
    let last: u64 = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    let epoch = crate::clock::now_ms().max(last.saturating_add(1));
    std::fs::write(&path, format!("{epoch}\n")).with_context(|| format!("write {}", path.display()))?;
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_always_increase_and_ids_stay() {
        let dir = std::env::temp_dir().join(format!("shoal-epochtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("epoch"), format!("{}\n", u64::MAX / 2)).unwrap();
        let a = next_epoch(&dir).unwrap();
        let b = next_epoch(&dir).unwrap();
        assert!(b > a && a > u64::MAX / 2);
        let id = node_id(&dir).unwrap();
        assert_eq!(node_id(&dir).unwrap(), id, "the node id is stable");
        std::fs::write(dir.join("node-id"), "zz\n").unwrap();
        assert!(format!("{:#}", node_id(&dir).unwrap_err()).contains("is corrupt"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
