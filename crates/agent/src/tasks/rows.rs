//! What this node announces about its running tasks: one [`TaskRow`] per
//! task per network, gossiped (table `services`) and put in this node's own
//! directory.
//!
//! A task is announced once it runs, healthy when it has no healthcheck or
//! passed one, as stopping while it drains (its stop grace period), and
//! withdrawn when its process is gone. Invariants: a withdrawn task's rows
//! are gone from gossip and from this node's directory; the rows follow the
//! service's endpoint (mode, TTL, balancing, VIP) without the task being
//! replaced; changes are published in the order they were made (one at a
//! time), so a slower publication never overwrites a newer one.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use shoal_gossip::RowKey;
use shoal_orch::{EndpointMode, Task};
use tokio::sync::watch;

use crate::directory::{RowState, SERVICES, ServiceDirectory, TaskRow};
use crate::gossip_driver::GossipSlot;

/// The DNS name of a task: `<service>.<slot>.<task id>`, or for a global
/// task `<service>.<node id>.<task id>`, as docker names task records.
pub fn dns_name(task: &Task) -> String {
    let slot = if task.slot == 0 { task.node_id.clone().unwrap_or_default() } else { task.slot.to_string() };
    format!("{}.{slot}.{}", task.service_name, task.id)
}

/// The rows of `task` in `state` on the node at `node`, one per network:
/// (VNI, row).
pub fn rows(task: &Task, node: Ipv4Addr, state: RowState, healthy: bool) -> Vec<(u32, TaskRow)> {
    let name = dns_name(task);
    task.attachments
        .iter()
        .map(|a| {
            let row = TaskRow {
                service_id: task.service_id.clone(),
                service: task.service_name.clone(),
                stack: task.endpoint.stack.clone(),
                aliases: task.spec.aliases.get(&a.network).cloned().unwrap_or_default(),
                task_id: task.id.clone(),
                task: name.clone(),
                ip: a.ip,
                node,
                vip: a.vip.filter(|_| task.endpoint.config.mode == EndpointMode::Vip),
                local_vip: a.local_vip,
                state,
                healthy,
                endpoint: task.endpoint.config,
                ports: task.endpoint.ports.clone(),
            };
            (a.vni, row)
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Announced {
    task: Task,
    state: RowState,
    healthy: bool,
}

/// The announcements of this node's running tasks.
#[derive(Debug)]
pub struct Announcer {
    node: Ipv4Addr,
    directory: Arc<ServiceDirectory>,
    gossip: GossipSlot,
    announced: Mutex<HashMap<String, Announced>>,
    /// Held from a change to `announced` until it is published: gossip
    /// writes await, and a task starting while the manager's newer view
    /// of it arrives must not see the older rows published last.
    publishing: tokio::sync::Mutex<()>,
    /// Bumped whenever `announced` changes.
    changed: watch::Sender<u64>,
}

impl Announcer {
    /// Announces the tasks of the node at `node` into `directory` and
    /// through `gossip`.
    pub fn new(node: Ipv4Addr, directory: Arc<ServiceDirectory>, gossip: GossipSlot) -> Announcer {
        Announcer {
            node,
            directory,
            gossip,
            announced: Mutex::new(HashMap::new()),
            publishing: tokio::sync::Mutex::new(()),
            changed: watch::channel(0).0,
        }
    }

    /// The tasks announced, and whether each takes new connections (the
    /// routing mesh's `mode: host` ports).
    pub fn local(&self) -> Vec<(Task, bool)> {
        let announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        announced.values().map(|a| (a.task.clone(), a.state == RowState::Running && a.healthy)).collect()
    }

    /// Wakes when a task is announced, changes or is withdrawn.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    async fn publish(&self, rows: Vec<(u32, TaskRow)>) {
        let gossip = self.gossip.get().ok();
        for (vni, row) in rows {
            if let Some(gossip) = &gossip {
                let value = serde_json::to_vec(&row).expect("serialisable");
                gossip.write(vni, RowKey::new(SERVICES, row.task_id.clone()), Some(value)).await;
            }
            let task_id = row.task_id.clone();
            self.directory.set_local(vni, &task_id, Some(row));
        }
    }

    /// Changes what is known of a task and republishes it if anything
    /// changed. Networks the task left lose its rows.
    async fn update(&self, id: &str, change: impl FnOnce(&mut Announced)) {
        let _order = self.publishing.lock().await;
        let (rows, left) = {
            let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
            let Some(a) = announced.get_mut(id) else { return };
            let before = (a.state, a.healthy, a.task.endpoint.clone(), a.task.attachments.clone());
            change(a);
            if before == (a.state, a.healthy, a.task.endpoint.clone(), a.task.attachments.clone()) {
                return;
            }
            let left: Vec<u32> = before
                .3
                .iter()
                .map(|b| b.vni)
                .filter(|vni| a.task.attachments.iter().all(|n| n.vni != *vni))
                .collect();
            (rows(&a.task, self.node, a.state, a.healthy), left)
        };
        self.changed.send_modify(|v| *v += 1);
        self.withdraw(id, &left).await;
        self.publish(rows).await;
    }

    /// Deletes the task's rows on the networks `vnis`.
    async fn withdraw(&self, id: &str, vnis: &[u32]) {
        let gossip = self.gossip.get().ok();
        for &vni in vnis {
            if let Some(gossip) = &gossip {
                gossip.write(vni, RowKey::new(SERVICES, id.to_owned()), None).await;
            }
            self.directory.set_local(vni, id, None);
        }
    }

    /// `task` runs; `healthy` unless its healthcheck has yet to pass.
    pub async fn running(&self, task: &Task, healthy: bool) {
        let _order = self.publishing.lock().await;
        let rows = rows(task, self.node, RowState::Running, healthy);
        let a = Announced { task: task.clone(), state: RowState::Running, healthy };
        self.announced.lock().unwrap_or_else(|e| e.into_inner()).insert(task.id.clone(), a);
        self.changed.send_modify(|v| *v += 1);
        self.publish(rows).await;
    }

    /// The task's healthcheck verdict changed.
    pub async fn health(&self, id: &str, healthy: bool) {
        self.update(id, |a| a.healthy = healthy).await;
    }

    /// The task is being stopped: it keeps its connections, takes no new
    /// ones. True if it was a backend until now (running, healthy, on a
    /// network), so peers are yet to hear that it drains.
    pub async fn stopping(&self, id: &str) -> bool {
        let mut served = false;
        self.update(id, |a| {
            served = a.state == RowState::Running && a.healthy && !a.task.attachments.is_empty();
            a.state = RowState::Stopping;
        })
        .await;
        served
    }

    /// The manager's newer view of a running task (its service's endpoint
    /// or VIP changed).
    pub async fn refresh(&self, task: &Task) {
        self.update(&task.id, |a| {
            a.task.endpoint.clone_from(&task.endpoint);
            a.task.attachments.clone_from(&task.attachments);
        })
        .await;
    }

    /// Tasks a previous daemon of this node left, gone before this one
    /// could adopt them: their rows (task and endpoint) are deleted, so no
    /// peer keeps them while this node resumes the epoch they were
    /// written in.
    pub async fn withdraw_lost(&self, lost: &[Task]) {
        let Ok(gossip) = self.gossip.get() else { return };
        for task in lost {
            for a in &task.attachments {
                gossip.write(a.vni, RowKey::new(SERVICES, task.id.clone()), None).await;
                gossip.write(a.vni, RowKey::new(crate::routes::ENDPOINTS, a.ip.to_string()), None).await;
            }
        }
    }

    /// The task's process is gone: its rows go.
    pub async fn ended(&self, id: &str) {
        let _order = self.publishing.lock().await;
        let Some(a) = self.announced.lock().unwrap_or_else(|e| e.into_inner()).remove(id) else { return };
        self.changed.send_modify(|v| *v += 1);
        let vnis: Vec<u32> = a.task.attachments.iter().map(|n| n.vni).collect();
        self.withdraw(id, &vnis).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_orch::{Attachment, TaskSpec, TaskState, TaskStatus};

    fn task() -> Task {
        let mut spec = TaskSpec::default();
        spec.aliases.insert("front".into(), vec!["www".into()]);
        Task {
            id: "abc".into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 3,
            node_id: Some("n1".into()),
            spec,
            service_version: 1,
            desired: TaskState::Running,
            status: TaskStatus::new(TaskState::Running, 0, ""),
            attachments: vec![
                Attachment {
                    network: "front".into(),
                    vni: 4096,
                    subnet: "10.0.1.0/24".into(),
                    ip: [10, 0, 1, 5].into(),
                    vip: Some([10, 0, 1, 2].into()),
                    local_vip: None,
                },
                Attachment {
                    network: "back".into(),
                    vni: 4097,
                    subnet: "10.0.2.0/24".into(),
                    ip: [10, 0, 2, 5].into(),
                    vip: Some([10, 0, 2, 2].into()),
                    local_vip: None,
                },
            ],
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
    fn a_row_per_network_with_its_names() {
        let t = task();
        assert_eq!(dns_name(&t), "web.3.abc");
        let rows = rows(&t, [198, 18, 0, 1].into(), RowState::Running, true);
        assert_eq!(rows.len(), 2);
        let (vni, front) = &rows[0];
        assert_eq!((*vni, front.ip, front.vip), (4096, [10, 0, 1, 5].into(), Some([10, 0, 1, 2].into())));
        assert_eq!(front.aliases, ["www"]);
        assert!(rows[1].1.aliases.is_empty(), "aliases are per network");
        let mut global = t.clone();
        global.slot = 0;
        assert_eq!(dns_name(&global), "web.n1.abc");
        let mut rr = t;
        rr.endpoint.config.mode = EndpointMode::Dnsrr;
        assert!(
            super::rows(&rr, [198, 18, 0, 1].into(), RowState::Running, true)
                .iter()
                .all(|(_, r)| r.vip.is_none()),
            "no VIP in dnsrr"
        );
    }

    #[tokio::test]
    async fn announcements_follow_the_task() {
        let directory = Arc::new(ServiceDirectory::default());
        let announcer = Announcer::new([198, 18, 0, 1].into(), directory.clone(), GossipSlot::default());
        let t = task();
        announcer.running(&t, false).await;
        let serving = |d: &ServiceDirectory| {
            let index = d.index();
            index.networks.get(&4096).and_then(|n| n.service("web")).map_or(0, |s| s.serving().count())
        };
        assert_eq!(serving(&directory), 0, "not healthy yet");
        announcer.health("abc", true).await;
        assert_eq!(serving(&directory), 1);
        announcer.stopping("abc").await;
        assert_eq!(serving(&directory), 0, "draining");
        assert!(directory.index().networks[&4096].service("web").is_some(), "still known while it drains");
        announcer.ended("abc").await;
        assert!(directory.index().networks.is_empty());
    }

    #[tokio::test]
    async fn a_network_the_task_leaves_loses_its_row() {
        let directory = Arc::new(ServiceDirectory::default());
        let announcer = Announcer::new([198, 18, 0, 1].into(), directory.clone(), GossipSlot::default());
        let t = task();
        announcer.running(&t, true).await;
        let mut fewer = t.clone();
        fewer.attachments.truncate(1);
        announcer.refresh(&fewer).await;
        let index = directory.index();
        assert!(index.networks[&4096].service("web").is_some(), "still on front");
        assert!(!index.networks.contains_key(&4097), "gone from back");
        let mut none = t;
        none.attachments.clear();
        announcer.refresh(&none).await;
        announcer.ended("abc").await;
        assert!(directory.index().networks.is_empty(), "nothing left after it ends");
    }
}
