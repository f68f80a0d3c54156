//! Service VIPs in this node's data plane: for every network with a local
//! endpoint, each VIP of the directory is programmed with its backends —
//! the service's tasks that run and pass their healthcheck (new flows), and
//! those stopping (their flows only). [`Vips::sync`] diffs what the
//! directory says against what is programmed; it runs on every directory
//! change and when a network gains its first local endpoint. A service's
//! local VIP (mesh ports with `traffic-policy=local`) is programmed on
//! each node with that node's tasks only.
//!
//! Invariant: a VIP is programmed only on networks in the data plane, with
//! exactly the backends the directory lists for it there.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_dataplane::{Backend, BackendState, Dataplane, Policy, VipService};
use shoal_orch::{EndpointMode, LbPolicy};
use shoal_wire::Vni;

use crate::directory::{Index, RowState, ServiceDirectory};

/// What one VIP is programmed with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Programmed {
    policy: LbPolicy,
    affinity_ms: Option<u64>,
    backends: Vec<(Ipv4Addr, bool)>,
}

/// The VIPs the directory wants on `networks`: (vni, vip) -> what to
/// program. A service's local VIP gets only the tasks of `node`.
fn desired(index: &Index, networks: &[Vni], node: Ipv4Addr) -> HashMap<(Vni, Ipv4Addr), Programmed> {
    let mut out = HashMap::new();
    for vni in networks {
        let Some(net) = index.networks.get(&vni.get()) else { continue };
        for s in net.services.values() {
            let (EndpointMode::Vip, Some(vip)) = (s.endpoint.mode, s.vip) else { continue };
            let backends = |only: Option<Ipv4Addr>| {
                s.tasks
                    .iter()
                    .filter(|t| only.is_none_or(|node| t.node == node))
                    .filter_map(|t| match t.state {
                        RowState::Running if t.healthy => Some((t.ip, true)),
                        RowState::Stopping => Some((t.ip, false)),
                        RowState::Running => None,
                    })
                    .collect()
            };
            let programmed = |backends| Programmed {
                policy: s.endpoint.lb,
                affinity_ms: s.endpoint.affinity_ms,
                backends,
            };
            out.insert((*vni, vip), programmed(backends(None)));
            if let Some(local) = s.local_vip {
                out.insert((*vni, local), programmed(backends(Some(node))));
            }
        }
    }
    out
}

/// The VIPs programmed into this node's data plane.
#[derive(Debug)]
pub struct Vips {
    /// This node's underlay address: local VIPs balance over its tasks.
    node: Ipv4Addr,
    dataplane: Arc<Dataplane>,
    directory: Arc<ServiceDirectory>,
    programmed: Mutex<HashMap<(Vni, Ipv4Addr), Programmed>>,
}

impl Vips {
    /// Programs the data plane of the node at `node` from `directory`.
    pub fn new(node: Ipv4Addr, dataplane: Arc<Dataplane>, directory: Arc<ServiceDirectory>) -> Vips {
        Vips { node, dataplane, directory, programmed: Mutex::new(HashMap::new()) }
    }

    /// Makes the data plane's VIPs what the directory says, on the networks
    /// the data plane has.
    pub fn sync(&self) {
        // The directory and the networks are read under the lock: two syncs
        // may run at once (the directory's follower, an endpoint plugged
        // in), and the later one must not program an older view.
        let mut programmed = self.programmed.lock().unwrap_or_else(|e| e.into_inner());
        let index = self.directory.index();
        let dp = &self.dataplane;
        let mut networks: Vec<Vni> =
            index.networks.keys().filter_map(|v| Vni::new(*v)).filter(|v| dp.subnet(*v).is_some()).collect();
        networks.sort();
        let want = desired(&index, &networks, self.node);
        // Gone, or their network is: forget them (a network removed from the
        // data plane took its VIPs with it).
        programmed.retain(|key, _| {
            if want.contains_key(key) {
                return true;
            }
            if dp.subnet(key.0).is_some() {
                self.dataplane.remove_vip(key.0, key.1);
            }
            false
        });
        for (key, p) in want {
            if programmed.get(&key) == Some(&p) {
                continue;
            }
            let service = VipService {
                vip: key.1,
                policy: match p.policy {
                    LbPolicy::RoundRobin => Policy::RoundRobin,
                    LbPolicy::LeastConn => Policy::LeastConn,
                    LbPolicy::Maglev => Policy::Maglev,
                },
                affinity: p.affinity_ms.map(Duration::from_millis),
                backends: p
                    .backends
                    .iter()
                    .map(|(ip, active)| Backend {
                        ip: *ip,
                        state: if *active { BackendState::Active } else { BackendState::Draining },
                    })
                    .collect(),
            };
            match self.dataplane.set_vip(key.0, service) {
                Ok(()) => {
                    programmed.insert(key, p);
                }
                Err(e) => tracing::warn!(vni = %key.0, vip = %key.1, error = %e, "cannot program a VIP"),
            }
        }
    }

    /// Forgets the VIPs of a network the data plane dropped (with them).
    pub fn forget(&self, vni: Vni) {
        self.programmed.lock().unwrap_or_else(|e| e.into_inner()).retain(|(v, _), _| *v != vni);
    }

    /// Syncs on every change of the directory, while the node lives.
    pub async fn follow(vips: std::sync::Weak<Vips>) {
        let mut changes = match vips.upgrade() {
            Some(v) => v.directory.subscribe(),
            None => return,
        };
        while changes.changed().await.is_ok() {
            let Some(v) = vips.upgrade() else { return };
            v.sync();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::TaskRow;
    use shoal_orch::EndpointConfig;

    fn row(slot: u32, ip: [u8; 4], state: RowState, healthy: bool, mode: EndpointMode) -> TaskRow {
        TaskRow {
            service_id: "s1".into(),
            service: "web".into(),
            stack: None,
            aliases: Vec::new(),
            task_id: format!("t{slot}"),
            task: format!("web.{slot}.t{slot}"),
            ip: ip.into(),
            node: [198, 18, 0, 1].into(),
            vip: (mode == EndpointMode::Vip).then(|| [10, 0, 1, 2].into()),
            local_vip: None,
            state,
            healthy,
            endpoint: EndpointConfig { mode, lb: LbPolicy::Maglev, ..EndpointConfig::default() },
            ports: Vec::new(),
        }
    }

    #[test]
    fn backends_are_the_serving_and_the_draining_tasks() {
        let rows = [
            row(1, [10, 0, 1, 10], RowState::Running, true, EndpointMode::Vip),
            row(2, [10, 0, 1, 11], RowState::Running, false, EndpointMode::Vip),
            row(3, [10, 0, 1, 12], RowState::Stopping, true, EndpointMode::Vip),
        ];
        let index = Index::build(rows.iter().map(|r| (4096, r)));
        let vni = Vni::new(4096).unwrap();
        let want = desired(&index, &[vni], [198, 18, 0, 1].into());
        let p = &want[&(vni, [10, 0, 1, 2].into())];
        assert_eq!(p.policy, LbPolicy::Maglev);
        assert_eq!(p.backends, [([10, 0, 1, 10].into(), true), ([10, 0, 1, 12].into(), false)]);
        assert!(
            desired(&index, &[Vni::new(4097).unwrap()], [198, 18, 0, 1].into()).is_empty(),
            "only networks asked for"
        );
        let rr = [row(1, [10, 0, 1, 10], RowState::Running, true, EndpointMode::Dnsrr)];
        let rr = Index::build(rr.iter().map(|r| (4096, r)));
        assert!(desired(&rr, &[vni], [198, 18, 0, 1].into()).is_empty(), "no VIP in dnsrr");
    }
}
