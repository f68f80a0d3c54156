//! Gossip rows to data-plane routes.
//!
//! Every node gossips one row per local endpoint in the `endpoints` table
//! of its network. [`RouteTable`] keeps every remote row, per network, with
//! the owner it came from, and turns changes into [`RouteOp`]s; [`Routes`]
//! applies them to the data plane.
//!
//! Invariants: a network's routes exist only on nodes with a local endpoint
//! on it (rows of other networks are kept, and programmed when the first
//! local endpoint appears); a row is routed only if its subnet is the
//! network's; a route is removed only by the owner whose row made it, so an
//! address that moved to another node keeps its new route.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use shoal_dataplane::Dataplane;
use shoal_gossip::{Change, NodeId};
use shoal_wire::Vni;
use shoal_wire::ip::Ipv4Cidr;

/// The table endpoints are gossiped in.
pub const ENDPOINTS: &str = "endpoints";

/// An endpoint row's value: where an overlay address lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The overlay address.
    pub ip: Ipv4Addr,
    /// The network's subnet.
    #[serde(with = "crate::serde_text")]
    pub subnet: Ipv4Cidr,
    /// The underlay address of the node hosting it.
    pub node: Ipv4Addr,
}

/// A change for the data plane.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp {
    /// Send packets for `ip` on `vni` to `node`.
    Set {
        /// Network.
        vni: Vni,
        /// Overlay address.
        ip: Ipv4Addr,
        /// Underlay address of its node.
        node: Ipv4Addr,
    },
    /// Forget the route to `ip` on `vni`.
    Remove {
        /// Network.
        vni: Vni,
        /// Overlay address.
        ip: Ipv4Addr,
    },
}

/// Every remote endpoint row, per network, and its owner. No IO.
#[derive(Debug, Default)]
pub struct RouteTable {
    remotes: HashMap<Vni, HashMap<Ipv4Addr, (EndpointRecord, NodeId)>>,
}

impl RouteTable {
    /// Records a visible-row change of another node; returns the route to
    /// program, given `local`, the subnet of each network with a local
    /// endpoint.
    pub fn apply(&mut self, change: &Change, local: impl Fn(Vni) -> Option<Ipv4Cidr>) -> Option<RouteOp> {
        match change {
            Change::Upsert { network, key, value, owner } if key.table == ENDPOINTS => {
                let vni = Vni::new(*network)?;
                let Ok(record) = serde_json::from_slice::<EndpointRecord>(value) else {
                    tracing::warn!(%owner, key = %key.key, "undecodable endpoint row");
                    return None;
                };
                let op = route(vni, &record, *owner, local(vni));
                self.remotes.entry(vni).or_default().insert(record.ip, (record, *owner));
                op
            }
            Change::Remove { network, key, owner } if key.table == ENDPOINTS => {
                let vni = Vni::new(*network)?;
                let ip = key.key.parse::<Ipv4Addr>().ok()?;
                let rows = self.remotes.get_mut(&vni)?;
                if rows.get(&ip).is_some_and(|(_, o)| o == owner) {
                    rows.remove(&ip);
                    return Some(RouteOp::Remove { vni, ip });
                }
                None
            }
            _ => None,
        }
    }

    /// The routes of every known remote address of `vni`, for when it gains
    /// its first local endpoint, on `local`.
    pub fn network(&self, vni: Vni, local: Ipv4Cidr) -> Vec<RouteOp> {
        self.remotes
            .get(&vni)
            .into_iter()
            .flat_map(|rows| rows.values())
            .filter_map(|(record, owner)| route(vni, record, *owner, Some(local)))
            .collect()
    }
}

fn route(vni: Vni, record: &EndpointRecord, owner: NodeId, local: Option<Ipv4Cidr>) -> Option<RouteOp> {
    let local = local?; // no local endpoint on this network
    if record.subnet != local {
        tracing::warn!(%owner, ip = %record.ip, subnet = %record.subnet, %local, "remote endpoint on another subnet");
        return None;
    }
    Some(RouteOp::Set { vni, ip: record.ip, node: record.node })
}

/// The route table, applied to this node's data plane.
#[derive(Debug)]
pub struct Routes {
    dataplane: Arc<Dataplane>,
    table: Mutex<RouteTable>,
}

impl Routes {
    /// Routes into `dataplane`.
    pub fn new(dataplane: Arc<Dataplane>) -> Routes {
        Routes { dataplane, table: Mutex::new(RouteTable::default()) }
    }

    fn run(&self, op: RouteOp) {
        match op {
            RouteOp::Set { vni, ip, node } => {
                if let Err(e) = self.dataplane.set_remote(vni, ip, node) {
                    tracing::warn!(%ip, error = %e, "cannot route to remote endpoint");
                }
            }
            RouteOp::Remove { vni, ip } => {
                self.dataplane.remove_remote(vni, ip);
            }
        }
    }

    /// Applies a change of another node's rows.
    pub fn apply(&self, change: &Change) {
        // The table stays locked while the data plane is programmed, so
        // changes reach it in the order the table took them.
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(op) = table.apply(change, |v| self.dataplane.subnet(v)) {
            self.run(op);
        }
    }

    /// Programs every known route of `vni` (it just gained its first local
    /// endpoint).
    pub fn program_network(&self, vni: Vni) {
        let Some(local) = self.dataplane.subnet(vni) else { return };
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        for op in table.network(vni, local) {
            self.run(op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_gossip::RowKey;

    const VNI: u32 = 4096;

    fn vni() -> Vni {
        Vni::new(VNI).unwrap()
    }

    fn subnet() -> Ipv4Cidr {
        "10.0.1.0/24".parse().unwrap()
    }

    fn upsert(ip: [u8; 4], node: [u8; 4], owner: u64, subnet: &str) -> Change {
        let value = format!(
            r#"{{"ip":"{}","subnet":"{subnet}","node":"{}"}}"#,
            Ipv4Addr::from(ip),
            Ipv4Addr::from(node)
        );
        Change::Upsert {
            network: VNI,
            key: RowKey::new(ENDPOINTS, Ipv4Addr::from(ip).to_string()),
            value: value.into_bytes(),
            owner: NodeId(owner),
        }
    }

    fn remove(ip: [u8; 4], owner: u64) -> Change {
        Change::Remove {
            network: VNI,
            key: RowKey::new(ENDPOINTS, Ipv4Addr::from(ip).to_string()),
            owner: NodeId(owner),
        }
    }

    #[test]
    fn rows_become_routes_only_where_the_network_is_local() {
        let mut t = RouteTable::default();
        let none = |_| None;
        assert_eq!(t.apply(&upsert([10, 0, 1, 2], [198, 18, 0, 2], 2, "10.0.1.0/24"), none), None);
        assert_eq!(t.apply(&upsert([10, 0, 1, 3], [198, 18, 0, 3], 3, "10.0.1.0/24"), none), None);
        // The first local endpoint: every kept row is routed.
        let mut ops = t.network(vni(), subnet());
        ops.sort_by_key(|op| format!("{op:?}"));
        assert_eq!(
            ops,
            [
                RouteOp::Set { vni: vni(), ip: [10, 0, 1, 2].into(), node: [198, 18, 0, 2].into() },
                RouteOp::Set { vni: vni(), ip: [10, 0, 1, 3].into(), node: [198, 18, 0, 3].into() },
            ]
        );
        let local = |_| Some(subnet());
        assert_eq!(
            t.apply(&upsert([10, 0, 1, 4], [198, 18, 0, 4], 4, "10.0.1.0/24"), local),
            Some(RouteOp::Set { vni: vni(), ip: [10, 0, 1, 4].into(), node: [198, 18, 0, 4].into() })
        );
    }

    #[test]
    fn a_moved_address_keeps_its_new_route() {
        let mut t = RouteTable::default();
        let local = |_| Some(subnet());
        let _ = t.apply(&upsert([10, 0, 1, 2], [198, 18, 0, 2], 2, "10.0.1.0/24"), local);
        // The address moves to node 3; node 2's late removal must not undo it.
        assert!(t.apply(&upsert([10, 0, 1, 2], [198, 18, 0, 3], 3, "10.0.1.0/24"), local).is_some());
        assert_eq!(t.apply(&remove([10, 0, 1, 2], 2), local), None);
        assert_eq!(
            t.apply(&remove([10, 0, 1, 2], 3), local),
            Some(RouteOp::Remove { vni: vni(), ip: [10, 0, 1, 2].into() })
        );
        assert!(t.network(vni(), subnet()).is_empty());
    }

    #[test]
    fn rows_of_another_subnet_and_garbage_are_not_routed() {
        let mut t = RouteTable::default();
        let local = |_| Some(subnet());
        assert_eq!(t.apply(&upsert([10, 0, 2, 2], [198, 18, 0, 2], 2, "10.0.2.0/24"), local), None);
        let garbage = Change::Upsert {
            network: VNI,
            key: RowKey::new(ENDPOINTS, "10.0.1.9"),
            value: b"{not json".to_vec(),
            owner: NodeId(2),
        };
        assert_eq!(t.apply(&garbage, local), None);
        let other_table = Change::Upsert {
            network: VNI,
            key: RowKey::new("services", "web"),
            value: b"{}".to_vec(),
            owner: NodeId(2),
        };
        assert_eq!(t.apply(&other_table, local), None);
        assert!(t.network(vni(), subnet()).is_empty());
    }
}
