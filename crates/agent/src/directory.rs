//! The service directory: which names, VIPs and task addresses each
//! network has, derived on every node from gossip, as Swarm's NetworkDB.
//!
//! The node running a task gossips one [`TaskRow`] per network the task is
//! on (table `services`, keyed by task id): its service, names, address,
//! VIP, state and health. Every node keeps the rows of every network
//! ([`ServiceDirectory`]) and derives an [`Index`] from them: names to
//! services, services to their tasks, addresses to names. DNS answers from
//! the index and the VIP balancer takes its backends from it, so both keep
//! working while the manager is down and follow gossip as fast as it
//! converges.
//!
//! Invariants: a row is written only by the node running its task (remote
//! rows come from gossip, local ones from the task runner); a row removed
//! by its owner, or suspended with a dead owner, leaves the index at once;
//! the index is an immutable snapshot swapped whole, so readers never lock.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use shoal_gossip::{Change, NodeId};
use shoal_orch::{EndpointConfig, EndpointMode, PortConfig};
use tokio::sync::watch;

/// The table task rows are gossiped in.
pub const SERVICES: &str = "services";

/// The table where each node gossips the published ports it could not
/// open (one row per node, keyed by its underlay address, on `ingress`).
pub const MESH: &str = "mesh";

/// A published port a node could not open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortProblem {
    /// The published port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// What failed, as the system says it: `address in use`.
    pub error: String,
    /// Who holds the port, when known: `nginx (pid 4242)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// Where a task is in its life, as the directory sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowState {
    /// Running: a backend when healthy.
    Running,
    /// Being stopped: keeps its connections, takes no new ones.
    Stopping,
}

/// What a node announces about one of its tasks on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    /// Service id.
    pub service_id: String,
    /// Service name.
    pub service: String,
    /// The service's stack, if deployed by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// More names of the service on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Task id.
    pub task_id: String,
    /// `<service>.<slot>.<task id>`, the task's DNS name.
    pub task: String,
    /// The task's address.
    pub ip: Ipv4Addr,
    /// The underlay address of the task's node.
    pub node: Ipv4Addr,
    /// The service's VIP on this network (none in `dnsrr` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
    /// Its local VIP on `ingress` (ports with `traffic-policy=local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_vip: Option<Ipv4Addr>,
    /// Running or stopping.
    pub state: RowState,
    /// Whether it passes its healthcheck (true without one).
    pub healthy: bool,
    /// Mode, TTL, balancing.
    pub endpoint: EndpointConfig,
    /// The service's ports (SRV answers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
}

impl TaskRow {
    /// Whether the task takes new connections and appears in DNS answers.
    pub fn serves(&self) -> bool {
        self.state == RowState::Running && self.healthy
    }
}

/// A task of a service, as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskEntry {
    /// Its DNS name.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its node's underlay address.
    pub node: Ipv4Addr,
    /// Running or stopping.
    pub state: RowState,
    /// Whether it passes its healthcheck.
    pub healthy: bool,
}

impl TaskEntry {
    /// Whether it takes new connections and appears in DNS answers.
    pub fn serves(&self) -> bool {
        self.state == RowState::Running && self.healthy
    }
}

/// A service on one network, as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceEntry {
    /// Service id.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Its VIP here (vip mode).
    pub vip: Option<Ipv4Addr>,
    /// Its local VIP here (`ingress`, ports with `traffic-policy=local`).
    pub local_vip: Option<Ipv4Addr>,
    /// Mode, TTL, balancing (from its newest row).
    pub endpoint: EndpointConfig,
    /// Its ports.
    pub ports: Vec<PortConfig>,
    /// Every name it answers to here: its name, `<stack>_<name>` forms,
    /// aliases.
    pub names: Vec<String>,
    /// Its tasks here, by name.
    pub tasks: Vec<TaskEntry>,
}

impl ServiceEntry {
    /// The addresses of tasks that serve.
    pub fn serving(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.tasks.iter().filter(|t| t.serves()).map(|t| t.ip)
    }

    /// What the service's name answers: its VIP, or (dnsrr) its serving
    /// tasks.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        match (self.endpoint.mode, self.vip) {
            (EndpointMode::Vip, Some(vip)) => vec![vip],
            _ => self.serving().collect(),
        }
    }
}

/// One network's part of the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkIndex {
    /// By service id.
    pub services: BTreeMap<String, ServiceEntry>,
    /// Names and aliases (lowercase) to service ids.
    #[serde(skip)]
    names: HashMap<String, String>,
    /// Task names (lowercase) to addresses.
    #[serde(skip)]
    tasks: HashMap<String, Ipv4Addr>,
    /// VIPs and task addresses to their names.
    #[serde(skip)]
    addresses: HashMap<Ipv4Addr, String>,
}

/// What a name stands for on a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'a> {
    /// A service name or alias.
    Service(&'a ServiceEntry),
    /// `tasks.<service>`.
    Tasks(&'a ServiceEntry),
    /// A task name.
    Task(Ipv4Addr, &'a ServiceEntry),
}

impl NetworkIndex {
    /// What `name` (lowercase, no trailing dot) stands for here.
    pub fn find(&self, name: &str) -> Option<Found<'_>> {
        if let Some(id) = self.names.get(name) {
            return Some(Found::Service(&self.services[id]));
        }
        if let Some(service) = name.strip_prefix("tasks.").and_then(|s| self.names.get(s)) {
            return Some(Found::Tasks(&self.services[service]));
        }
        let ip = self.tasks.get(name)?;
        let service = self.services.values().find(|s| s.tasks.iter().any(|t| t.ip == *ip))?;
        Some(Found::Task(*ip, service))
    }

    /// The service named `name` here.
    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.names.get(name).map(|id| &self.services[id])
    }

    /// The name of a VIP or task address here, and the TTL of its service.
    pub fn reverse(&self, ip: Ipv4Addr) -> Option<(&str, u32)> {
        let name = self.addresses.get(&ip)?;
        let ttl = self
            .services
            .values()
            .find(|s| s.vip == Some(ip) || s.tasks.iter().any(|t| t.ip == ip))
            .map_or(0, |s| s.endpoint.dns_ttl_secs);
        Some((name, ttl))
    }
}

/// The directory's derived view, per network (VNI).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Index {
    /// By VNI.
    pub networks: BTreeMap<u32, NetworkIndex>,
}

impl Index {
    /// Builds the index from rows: (network, row).
    pub fn build<'a>(rows: impl IntoIterator<Item = (u32, &'a TaskRow)>) -> Index {
        let mut index = Index::default();
        // Newest settings win: rows of tasks made from a newer spec carry
        // them; the task id breaks ties deterministically.
        let mut rows: Vec<(u32, &TaskRow)> = rows.into_iter().collect();
        rows.sort_by(|a, b| (a.0, &a.1.service_id, &a.1.task).cmp(&(b.0, &b.1.service_id, &b.1.task)));
        for (vni, row) in rows {
            let network = index.networks.entry(vni).or_default();
            let entry = network.services.entry(row.service_id.clone()).or_insert_with(|| ServiceEntry {
                id: row.service_id.clone(),
                name: row.service.clone(),
                vip: row.vip,
                local_vip: row.local_vip,
                endpoint: row.endpoint,
                ports: row.ports.clone(),
                names: Vec::new(),
                tasks: Vec::new(),
            });
            entry.vip = entry.vip.or(row.vip);
            entry.local_vip = entry.local_vip.or(row.local_vip);
            entry.endpoint = row.endpoint;
            entry.ports.clone_from(&row.ports);
            let mut names = vec![row.service.to_ascii_lowercase()];
            if let Some(stack) = &row.stack {
                // A stack's services are named `<stack>_<name>`; the short
                // name answers too, as docker's stack alias does.
                let prefix = format!("{stack}_");
                match row.service.strip_prefix(&prefix) {
                    Some(short) => names.push(short.to_ascii_lowercase()),
                    None => names.push(format!("{prefix}{}", row.service).to_ascii_lowercase()),
                }
            }
            names.extend(row.aliases.iter().map(|a| a.to_ascii_lowercase()));
            for name in names {
                if !entry.names.contains(&name) {
                    entry.names.push(name);
                }
            }
            entry.tasks.push(TaskEntry {
                name: row.task.clone(),
                ip: row.ip,
                node: row.node,
                state: row.state,
                healthy: row.healthy,
            });
        }
        for network in index.networks.values_mut() {
            for service in network.services.values_mut() {
                service.tasks.sort_by(|a, b| a.name.cmp(&b.name));
                for name in &service.names {
                    network.names.entry(name.clone()).or_insert_with(|| service.id.clone());
                }
                if let Some(vip) = service.vip {
                    network.addresses.insert(vip, service.name.clone());
                }
                for task in &service.tasks {
                    network.tasks.insert(task.name.to_ascii_lowercase(), task.ip);
                    network.addresses.insert(task.ip, task.name.clone());
                }
            }
        }
        index
    }
}

/// Where a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// This node's task runner.
    Local,
    /// Gossip, from its owner.
    Remote(NodeId),
}

/// Every task row this node knows, and the index derived from them.
#[derive(Debug)]
pub struct ServiceDirectory {
    rows: Mutex<HashMap<(u32, String), (TaskRow, Origin)>>,
    /// The ports each node (by underlay address) could not open.
    problems: Mutex<BTreeMap<Ipv4Addr, Vec<PortProblem>>>,
    index: ArcSwap<Index>,
    changed: watch::Sender<u64>,
}

impl Default for ServiceDirectory {
    fn default() -> ServiceDirectory {
        ServiceDirectory {
            rows: Mutex::new(HashMap::new()),
            problems: Mutex::new(BTreeMap::new()),
            index: ArcSwap::from_pointee(Index::default()),
            changed: watch::channel(0).0,
        }
    }
}

impl ServiceDirectory {
    /// The current index.
    pub fn index(&self) -> Arc<Index> {
        self.index.load_full()
    }

    /// Reads the current index without taking a reference to it (the DNS
    /// hot path).
    pub fn read<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        f(&self.index.load())
    }

    /// Wakes when the index changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn rebuild(&self, rows: &HashMap<(u32, String), (TaskRow, Origin)>) {
        let index = Index::build(rows.iter().map(|((vni, _), (row, _))| (*vni, row)));
        if **self.index.load() != index {
            self.index.store(Arc::new(index));
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// The published ports each node (by underlay address) could not
    /// open.
    pub fn port_problems(&self) -> BTreeMap<Ipv4Addr, Vec<PortProblem>> {
        self.problems.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the ports the node at `node` could not open (this node's,
    /// or another's from gossip); none removes its entry.
    pub fn set_port_problems(&self, node: Ipv4Addr, problems: Vec<PortProblem>) {
        let mut all = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if problems.is_empty() {
            all.remove(&node);
        } else {
            all.insert(node, problems);
        }
    }

    /// Applies a change of another node's rows; other tables are ignored.
    pub fn apply(&self, change: &Change) {
        match change {
            Change::Upsert { key, value, owner, .. } if key.table == MESH => {
                let (Ok(node), Ok(problems)) =
                    (key.key.parse(), serde_json::from_slice::<Vec<PortProblem>>(value))
                else {
                    tracing::warn!(%owner, key = %key.key, "undecodable mesh row");
                    return;
                };
                return self.set_port_problems(node, problems);
            }
            Change::Remove { key, .. } if key.table == MESH => {
                if let Ok(node) = key.key.parse() {
                    self.set_port_problems(node, Vec::new());
                }
                return;
            }
            _ => {}
        }
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        match change {
            Change::Upsert { network, key, value, owner } if key.table == SERVICES => {
                let Ok(row) = serde_json::from_slice::<TaskRow>(value) else {
                    tracing::warn!(%owner, key = %key.key, "undecodable service row");
                    return;
                };
                rows.insert((*network, key.key.clone()), (row, Origin::Remote(*owner)));
            }
            Change::Remove { network, key, owner } if key.table == SERVICES => {
                let k = (*network, key.key.clone());
                // Only its owner removes a row (a task id runs on one node).
                if rows.get(&k).is_some_and(|(_, o)| *o == Origin::Remote(*owner)) {
                    rows.remove(&k);
                }
            }
            _ => return,
        }
        self.rebuild(&rows);
    }

    /// Sets (or with `None` removes) one of this node's rows.
    pub fn set_local(&self, network: u32, task_id: &str, row: Option<TaskRow>) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let key = (network, task_id.to_owned());
        match row {
            Some(row) => {
                rows.insert(key, (row, Origin::Local));
            }
            None => {
                if rows.get(&key).is_some_and(|(_, o)| *o == Origin::Local) {
                    rows.remove(&key);
                }
            }
        }
        self.rebuild(&rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_gossip::RowKey;

    fn row(service: &str, slot: u32, ip: [u8; 4], state: RowState, healthy: bool) -> TaskRow {
        TaskRow {
            service_id: format!("id-{service}"),
            service: service.into(),
            stack: None,
            aliases: Vec::new(),
            task_id: format!("t{slot}{service}"),
            task: format!("{service}.{slot}.t{slot}{service}"),
            ip: ip.into(),
            node: [198, 18, 0, 1].into(),
            vip: Some([10, 0, 1, 2].into()),
            local_vip: None,
            state,
            healthy,
            endpoint: EndpointConfig::default(),
            ports: Vec::new(),
        }
    }

    fn upsert(network: u32, row: &TaskRow, owner: u64) -> Change {
        Change::Upsert {
            owner: NodeId(owner),
            network,
            key: RowKey::new(SERVICES, row.task_id.clone()),
            value: serde_json::to_vec(row).unwrap(),
        }
    }

    #[test]
    fn names_answer_the_vip_or_the_serving_tasks() {
        let web1 = row("web", 1, [10, 0, 1, 10], RowState::Running, true);
        let web2 = row("web", 2, [10, 0, 1, 11], RowState::Running, false);
        let web3 = row("web", 3, [10, 0, 1, 12], RowState::Stopping, true);
        let index = Index::build([(4096, &web1), (4096, &web2), (4096, &web3)]);
        let net = &index.networks[&4096];
        let Some(Found::Service(web)) = net.find("web") else { panic!("web is a service") };
        assert_eq!(web.addresses(), [Ipv4Addr::new(10, 0, 1, 2)], "the VIP");
        let Some(Found::Tasks(tasks)) = net.find("tasks.web") else { panic!("tasks.web") };
        assert_eq!(
            tasks.serving().collect::<Vec<_>>(),
            [Ipv4Addr::new(10, 0, 1, 10)],
            "healthy and running only"
        );
        assert_eq!(net.find("web.1.t1web"), Some(Found::Task([10, 0, 1, 10].into(), web)));
        assert_eq!(net.reverse([10, 0, 1, 2].into()), Some(("web", 5)));
        assert_eq!(net.reverse([10, 0, 1, 11].into()), Some(("web.2.t2web", 5)));
        assert_eq!(net.find("db"), None);
        // dnsrr: the name answers the serving tasks.
        let mut rr = web1.clone();
        rr.endpoint.mode = EndpointMode::Dnsrr;
        rr.vip = None;
        let index = Index::build([(4096, &rr)]);
        let Some(Found::Service(s)) = index.networks[&4096].find("web") else { panic!() };
        assert_eq!(s.addresses(), [Ipv4Addr::new(10, 0, 1, 10)]);
    }

    #[test]
    fn stacks_and_aliases_add_names() {
        let mut web = row("demo_web", 1, [10, 0, 1, 10], RowState::Running, true);
        web.stack = Some("demo".into());
        web.aliases = vec!["Frontend".into()];
        let index = Index::build([(7, &web)]);
        let net = &index.networks[&7];
        for name in ["demo_web", "web", "frontend", "tasks.web", "tasks.frontend"] {
            assert!(net.find(name).is_some(), "{name}");
        }
        assert!(!index.networks.contains_key(&8), "names are per network");
    }

    #[test]
    fn rows_follow_their_owner() {
        let dir = ServiceDirectory::default();
        let mut changes = dir.subscribe();
        let web1 = row("web", 1, [10, 0, 1, 10], RowState::Running, true);
        dir.apply(&upsert(4096, &web1, 2));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(dir.index().networks[&4096].find("web").is_some());
        // Another node cannot remove it; its owner can (or its death does).
        let remove = |owner| Change::Remove {
            owner: NodeId(owner),
            network: 4096,
            key: RowKey::new(SERVICES, "t1web"),
        };
        dir.apply(&remove(3));
        assert!(dir.index().networks[&4096].find("web").is_some());
        assert!(!changes.has_changed().unwrap(), "nothing changed");
        dir.apply(&remove(2));
        assert!(dir.index().networks.is_empty());
        // Local rows come from the task runner.
        dir.set_local(4096, "t1web", Some(web1));
        assert!(dir.index().networks[&4096].find("tasks.web").is_some());
        dir.set_local(4096, "t1web", None);
        assert!(dir.index().networks.is_empty());
        // Garbage is ignored.
        dir.apply(&Change::Upsert {
            owner: NodeId(2),
            network: 4096,
            key: RowKey::new(SERVICES, "x"),
            value: b"{".to_vec(),
        });
        assert!(dir.index().networks.is_empty());
    }
}
