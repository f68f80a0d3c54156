//! Where tasks run: Swarm's scheduler as pure functions over a snapshot of
//! the nodes.
//!
//! Filters, in Swarm's order: the node is ready and active; it has the
//! resources the task reserves; it satisfies the service's constraints
//! (`==`/`!=` on `node.id`, `node.hostname`, `node.role`,
//! `node.platform.os`, `node.platform.arch`, `node.labels.*`); it runs fewer
//! than the service's maximum replicas per node; its host-mode ports are
//! free. Among the nodes left, the strategy spreads: first across the values
//! of each `spread` placement preference, then to the node with the fewest
//! tasks of the service, then the fewest tasks in all. A task no node passes
//! stays pending with the reason of every filter that stopped nodes, most
//! nodes first (swarmkit's wording).
//!
//! Invariants: no IO, no clock, no randomness (ties break by node order);
//! placing N tasks costs O(N log M + M) for M nodes.

#![forbid(unsafe_code)]

mod constraint;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

pub use constraint::{Constraint, ConstraintError};

/// A node's availability, as `node update --availability` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    /// Takes new tasks.
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks move away.
    Drain,
}

/// What the scheduler knows of a node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node id.
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// OS (`linux`).
    pub os: String,
    /// Architecture (`x86_64`).
    pub arch: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the node is up.
    pub ready: bool,
    /// Availability.
    pub availability: Availability,
    /// CPU not yet reserved, in nano-CPUs.
    pub free_nano_cpus: u64,
    /// Memory not yet reserved, in bytes.
    pub free_memory: u64,
    /// Tasks on the node, all services.
    pub tasks: usize,
    /// Tasks on the node per service.
    pub tasks_by_service: HashMap<String, usize>,
    /// Host-mode ports in use, as (protocol, port).
    pub host_ports: HashSet<(String, u16)>,
}

impl Node {
    /// Counts one more task of `service` on this node: what it reserves
    /// and the host-mode ports it holds.
    pub fn take(&mut self, service: &str, nano_cpus: u64, memory: u64, host_ports: &[(String, u16)]) {
        self.free_nano_cpus = self.free_nano_cpus.saturating_sub(nano_cpus);
        self.free_memory = self.free_memory.saturating_sub(memory);
        self.tasks += 1;
        *self.tasks_by_service.entry(service.to_owned()).or_default() += 1;
        self.host_ports.extend(host_ports.iter().cloned());
    }
}

/// What a service asks of the nodes its tasks run on.
#[derive(Debug, Clone, Default)]
pub struct Requirements {
    /// The service.
    pub service: String,
    /// Placement constraints.
    pub constraints: Vec<Constraint>,
    /// Label keys to spread over, in order (`spread=node.labels.zone`).
    pub spread: Vec<String>,
    /// CPU reserved per task, in nano-CPUs.
    pub reserve_nano_cpus: u64,
    /// Memory reserved per task, in bytes.
    pub reserve_memory: u64,
    /// At most this many tasks of the service per node.
    pub max_replicas_per_node: Option<usize>,
    /// Host-mode published ports, as (protocol, port).
    pub host_ports: Vec<(String, u16)>,
}

/// Why a task could not be placed: each filter that stopped nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The message Swarm users know, such as `no suitable node (scheduling
    /// constraints not satisfied on 3 nodes)`.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Filter {
    Unavailable,
    Resources,
    Constraints,
    MaxReplicas,
    HostPorts,
}

impl Filter {
    fn explain(self, n: usize) -> String {
        let nodes = if n == 1 { "1 node".to_owned() } else { format!("{n} nodes") };
        match self {
            Filter::Unavailable => format!("{nodes} not available for new tasks"),
            Filter::Resources => format!("insufficient resources on {nodes}"),
            Filter::Constraints => format!("scheduling constraints not satisfied on {nodes}"),
            Filter::MaxReplicas => format!("max replicas per node limit exceed on {nodes}"),
            Filter::HostPorts => format!("host-mode port already in use on {nodes}"),
        }
    }
}

/// The first filter `node` fails for `req`, or none.
fn fails(node: &Node, req: &Requirements) -> Option<Filter> {
    if !node.ready || node.availability != Availability::Active {
        return Some(Filter::Unavailable);
    }
    if node.free_nano_cpus < req.reserve_nano_cpus || node.free_memory < req.reserve_memory {
        return Some(Filter::Resources);
    }
    if !req.constraints.iter().all(|c| c.matches(node)) {
        return Some(Filter::Constraints);
    }
    if let Some(max) = req.max_replicas_per_node
        && node.tasks_by_service.get(&req.service).copied().unwrap_or(0) >= max
    {
        return Some(Filter::MaxReplicas);
    }
    if req.host_ports.iter().any(|p| node.host_ports.contains(p)) {
        return Some(Filter::HostPorts);
    }
    None
}

/// Whether `node` passes every filter for one more task of `req` (what a
/// global service asks of each node).
#[must_use]
pub fn eligible(node: &Node, req: &Requirements) -> bool {
    fails(node, req).is_none()
}

fn pending(nodes: &[Node], req: &Requirements) -> Pending {
    let mut counts: BTreeMap<Filter, usize> = BTreeMap::new();
    for node in nodes {
        if let Some(f) = fails(node, req) {
            *counts.entry(f).or_default() += 1;
        }
    }
    // As swarmkit: every filter that stopped a node, most nodes first.
    let mut failed: Vec<(Filter, usize)> = counts.into_iter().collect();
    failed.sort_by_key(|(f, n)| (Reverse(*n), *f));
    let reason = if failed.is_empty() {
        "no nodes in the swarm".to_owned()
    } else {
        failed.iter().map(|(f, n)| f.explain(*n)).collect::<Vec<_>>().join("; ")
    };
    Pending { reason: format!("no suitable node ({reason})") }
}

/// A node as a spread candidate: (tasks of the service, tasks in all, index);
/// the smallest wins.
type Candidate = (usize, usize, usize);

/// The nodes sharing one set of spread-preference label values.
struct SpreadGroup {
    /// Tasks of the service in the group.
    service_tasks: usize,
    /// Its nodes that passed the filters, best first (entries may be stale:
    /// they are checked when popped).
    candidates: BinaryHeap<Reverse<Candidate>>,
}

/// Places `count` tasks of the service `req` describes, updating `nodes`
/// (free resources, task counts, ports) as each is placed. Returns, per
/// task, the index of its node or why it stays pending.
#[must_use = "`nodes` already count the placed tasks: assign each to its node or mark it pending"]
pub fn place(nodes: &mut [Node], req: &Requirements, count: usize) -> Vec<Result<usize, Pending>> {
    // Spread groups: nodes by their values of the preference labels; a node
    // without the label goes in the "" group, as in Swarm.
    let mut groups: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        if fails(node, req).is_none() {
            let key = req.spread.iter().map(|k| node.labels.get(k).cloned().unwrap_or_default()).collect();
            groups.entry(key).or_default().push(i);
        }
    }
    // Per group: a heap of candidates by (service tasks, total tasks, index),
    // and the group's count of service tasks.
    let service_tasks = |n: &Node| n.tasks_by_service.get(&req.service).copied().unwrap_or(0);
    let mut heaps: Vec<SpreadGroup> = groups
        .values()
        .map(|members| SpreadGroup {
            service_tasks: members.iter().map(|&i| service_tasks(&nodes[i])).sum(),
            candidates: members
                .iter()
                .map(|&i| Reverse((service_tasks(&nodes[i]), nodes[i].tasks, i)))
                .collect(),
        })
        .collect();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut placed = None;
        // The group with the fewest tasks of the service that can still take one.
        let mut order: Vec<usize> = (0..heaps.len()).collect();
        order.sort_by_key(|&g| (heaps[g].service_tasks, g));
        'groups: for g in order {
            let heap = &mut heaps[g].candidates;
            while let Some(Reverse((svc, total, i))) = heap.pop() {
                let node = &nodes[i];
                if (svc, total) != (service_tasks(node), node.tasks) {
                    // Stale entry: the node changed since it was pushed.
                    heap.push(Reverse((service_tasks(node), node.tasks, i)));
                    continue;
                }
                if fails(node, req).is_some() {
                    continue; // full now: drop it from this group
                }
                placed = Some((g, i));
                break 'groups;
            }
        }
        match placed {
            Some((g, i)) => {
                let node = &mut nodes[i];
                node.take(&req.service, req.reserve_nano_cpus, req.reserve_memory, &req.host_ports);
                heaps[g].service_tasks += 1;
                heaps[g].candidates.push(Reverse((service_tasks(node), node.tasks, i)));
                out.push(Ok(i));
            }
            None => out.push(Err(pending(nodes, req))),
        }
    }
    out
}

#[cfg(test)]
mod tests;
