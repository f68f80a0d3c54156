//! Durable cluster state in an embedded redb database in the manager's data
//! directory. One manager writes it today; [`Store`]'s few operations are
//! what a Raft-replicated store (openraft) will implement when several
//! managers come (see ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use shoal_sched::Availability;

use crate::ca::{ClusterCa, Role};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("cluster state store: {0}")]
    Db(String),
    /// A record does not decode (the file is from another version or damaged).
    #[error("cluster state store holds an undecodable record: {0}")]
    Corrupt(String),
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// What a cluster is: created once by `swarm init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    /// Cluster id.
    pub id: String,
    /// The root CA.
    pub ca: ClusterCa,
    /// Secret of the worker join token.
    pub worker_secret: [u8; 16],
    /// Secret of the manager join token.
    pub manager_secret: [u8; 16],
    /// The gossip key ring file contents (`ID:HEX` lines).
    pub gossip_keys: String,
    /// Bumped at every step of a gossip key rotation.
    #[serde(default)]
    pub gossip_keys_version: u64,
    /// Address pool networks are carved from.
    pub default_addr_pool: String,
    /// VXLAN port of every node.
    pub data_path_port: u16,
    /// Validity of node certificates, in seconds.
    #[serde(default = "default_cert_expiry")]
    pub cert_expiry_secs: u64,
    /// Unix seconds.
    pub created_at: i64,
}

fn default_cert_expiry() -> u64 {
    crate::ca::NODE_CERT_VALIDITY.as_secs()
}

/// Whether a node's heartbeats arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeating.
    #[default]
    Ready,
    /// Three heartbeats missed.
    Down,
}

impl NodeState {
    /// The name docker prints: `Ready`, `Down`.
    pub fn title(self) -> &'static str {
        match self {
            NodeState::Ready => "Ready",
            NodeState::Down => "Down",
        }
    }
}

/// A node as the manager records it (docker's node object, simplified).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// Role.
    pub role: Role,
    /// Whether it takes tasks.
    pub availability: Availability,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Underlay address.
    pub addr: String,
    /// Whether it heartbeats.
    pub state: NodeState,
    /// OS, as docker prints it.
    pub os: String,
    /// Architecture.
    pub arch: String,
    /// CPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Shoal version.
    pub engine_version: String,
    /// Whether this node leads the managers.
    pub leader: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// An overlay network as the manager records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Network id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Driver (`overlay`).
    pub driver: String,
    /// Whether standalone tasks may attach.
    pub attachable: bool,
    /// Subnet.
    pub subnet: String,
    /// Gateway address.
    pub gateway: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// The routing mesh's network (`ingress`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ingress: bool,
    /// Labels (a stack's networks carry `com.docker.stack.namespace`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The cluster state store.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let database = Database::create(path).map_err(db)?;
        let txn = database.begin_write().map_err(db)?;
        txn.open_table(META).map_err(db)?;
        txn.open_table(NODES).map_err(db)?;
        txn.open_table(NETWORKS).map_err(db)?;
        txn.commit().map_err(db)?;
        Ok(Store { db: database })
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(table).map_err(db)?;
        match t.get(key).map_err(db)? {
            None => Ok(None),
            Some(v) => {
                serde_json::from_slice(v.value()).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
            }
        }
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).expect("serialisable");
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut t = txn.open_table(table).map_err(db)?;
            t.insert(key, bytes.as_slice()).map_err(db)?;
        }
        txn.commit().map_err(db)
    }

    fn list<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(table).map_err(db)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db)? {
            let (_, v) = entry.map_err(db)?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    fn remove(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db)?;
        let existed = {
            let mut t = txn.open_table(table).map_err(db)?;
            t.remove(key).map_err(db)?.is_some()
        };
        txn.commit().map_err(db)?;
        Ok(existed)
    }

    /// The cluster, if this node created or joined one as a manager.
    pub fn cluster(&self) -> Result<Option<ClusterState>, StoreError> {
        self.get(META, "cluster")
    }

    /// Records the cluster.
    pub fn put_cluster(&self, cluster: &ClusterState) -> Result<(), StoreError> {
        self.put(META, "cluster", cluster)
    }

    /// A record of the META table by key (such as the orchestrator's world).
    pub fn load<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.get(META, key)
    }

    /// Stores a record of the META table.
    pub fn save<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.put(META, key, value)
    }

    /// One node.
    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.get(NODES, id)
    }

    /// Every node, by id.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.list(NODES)
    }

    /// Creates or replaces a node.
    pub fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.put(NODES, &node.id, node)
    }

    /// The address allocations, if any network was ever made.
    pub fn ipam(&self) -> Result<Option<crate::ipam::Ipam>, StoreError> {
        self.get(META, "ipam")
    }

    /// Records the address allocations.
    pub fn put_ipam(&self, ipam: &crate::ipam::Ipam) -> Result<(), StoreError> {
        self.put(META, "ipam", ipam)
    }

    /// Every network.
    pub fn networks(&self) -> Result<Vec<NetworkRecord>, StoreError> {
        self.list(NETWORKS)
    }

    /// Creates or replaces a network, keyed by name.
    pub fn put_network(&self, network: &NetworkRecord) -> Result<(), StoreError> {
        self.put(NETWORKS, &network.name, network)
    }

    /// Removes a network by name; returns whether it existed.
    pub fn remove_network(&self, name: &str) -> Result<bool, StoreError> {
        self.remove(NETWORKS, name)
    }

    /// Removes a node; returns whether it existed.
    pub fn remove_node(&self, id: &str) -> Result<bool, StoreError> {
        self.remove(NODES, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            hostname: "node1".into(),
            role: Role::Manager,
            availability: Availability::Active,
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            addr: "198.18.0.1".into(),
            state: NodeState::Ready,
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            engine_version: "0.1.0".into(),
            leader: true,
            created_at: 1,
            updated_at: 2,
        }
    }

    #[test]
    fn state_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("shoal-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            assert!(store.cluster().unwrap().is_none());
            let cluster = ClusterState {
                id: "c1".into(),
                ca: ClusterCa::create("c1").unwrap(),
                worker_secret: [1; 16],
                manager_secret: [2; 16],
                gossip_keys: "1:00".into(),
                gossip_keys_version: 0,
                default_addr_pool: "10.0.0.0/8".into(),
                data_path_port: 4789,
                cert_expiry_secs: 3600,
                created_at: 5,
            };
            store.put_cluster(&cluster).unwrap();
            store.put_node(&node("a")).unwrap();
            store.put_node(&node("b")).unwrap();
            assert!(store.remove_node("b").unwrap());
            assert!(!store.remove_node("b").unwrap());
        }
        let store = Store::open(&path).unwrap();
        let cluster = store.cluster().unwrap().unwrap();
        assert_eq!((cluster.id.as_str(), cluster.worker_secret), ("c1", [1; 16]));
        assert_eq!(store.nodes().unwrap(), vec![node("a")]);
        assert_eq!(store.node("a").unwrap().unwrap().labels["zone"], "a");
        // The typed fields keep the stored spelling of earlier builds.
        let text = serde_json::to_string(&node("a")).unwrap();
        assert!(text.contains(r#""availability":"active""#) && text.contains(r#""state":"ready""#), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
