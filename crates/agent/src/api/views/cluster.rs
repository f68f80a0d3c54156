//! Nodes and networks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_control::{Availability, NetworkRecord, NodeRecord, NodeState, Role};

use crate::clock::rfc3339;

// === Nodes ===

/// A node, as `docker node inspect` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    /// Node id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Whether it is the node that answered (Shoal's addition; docker's
    /// CLI works it out).
    #[serde(rename = "Self")]
    pub is_self: bool,
    /// When it joined.
    pub created_at: String,
    /// When its record last changed.
    pub updated_at: String,
    /// What can be changed.
    pub spec: NodeSpec,
    /// What it is.
    pub description: NodeDescription,
    /// How it is.
    pub status: NodeStatus,
    /// Present on managers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_status: Option<ManagerStatus>,
}

/// `Node.Spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeSpec {
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `manager` or `worker`.
    pub role: Role,
    /// `active`, `pause` or `drain`.
    pub availability: Availability,
}

/// `Node.Description`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeDescription {
    /// Hostname.
    pub hostname: String,
    /// OS and architecture.
    pub platform: Platform,
    /// CPUs and memory.
    pub resources: NodeResources,
    /// The Shoal build.
    pub engine: Engine,
}

/// `Node.Description.Platform`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`.
    #[serde(rename = "OS")]
    pub os: String,
    /// `x86_64`...
    #[serde(rename = "Architecture")]
    pub architecture: String,
}

/// `Node.Description.Resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeResources {
    /// CPUs in billionths.
    #[serde(rename = "NanoCPUs")]
    pub nano_cpus: u64,
    /// Memory in bytes.
    #[serde(rename = "MemoryBytes")]
    pub memory_bytes: u64,
}

/// `Node.Description.Engine`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Engine {
    /// The Shoal version.
    #[serde(rename = "EngineVersion")]
    pub engine_version: String,
}

/// `Node.Status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeStatus {
    /// `ready` or `down`.
    pub state: NodeState,
    /// Underlay address.
    pub addr: String,
}

/// `Node.ManagerStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManagerStatus {
    /// Whether it leads.
    pub leader: bool,
    /// `reachable`.
    pub reachability: String,
    /// Control address.
    pub addr: String,
}

impl Node {
    /// `record` as seen from the manager `self_id`.
    pub fn new(record: &NodeRecord, self_id: &str) -> Node {
        let n = record;
        Node {
            id: n.id.clone(),
            is_self: n.id == self_id,
            created_at: rfc3339(n.created_at.max(0) as u64 * 1000),
            updated_at: rfc3339(n.updated_at.max(0) as u64 * 1000),
            spec: NodeSpec { labels: n.labels.clone(), role: n.role, availability: n.availability },
            description: NodeDescription {
                hostname: n.hostname.clone(),
                platform: Platform { os: n.os.clone(), architecture: n.arch.clone() },
                resources: NodeResources {
                    nano_cpus: u64::from(n.cpus) * 1_000_000_000,
                    memory_bytes: n.memory_bytes,
                },
                engine: Engine { engine_version: n.engine_version.clone() },
            },
            status: NodeStatus { state: n.state, addr: n.addr.clone() },
            manager_status: (n.role == Role::Manager).then(|| ManagerStatus {
                leader: n.leader,
                reachability: "reachable".into(),
                addr: format!("{}:2377", n.addr),
            }),
        }
    }
}

// === Networks ===

/// A network, as `docker network inspect` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Network {
    /// Network id.
    #[serde(rename = "Id")]
    pub id: String,
    /// Name.
    pub name: String,
    /// When it was made.
    pub created: String,
    /// `swarm`.
    pub scope: String,
    /// `overlay`.
    pub driver: String,
    /// Whether standalone tasks may attach.
    pub attachable: bool,
    /// Whether it is the routing mesh's network.
    #[serde(default)]
    pub ingress: bool,
    /// Address management.
    #[serde(rename = "IPAM")]
    pub ipam: NetworkIpam,
    /// Driver options: the VNI.
    pub options: BTreeMap<String, String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// With `--verbose`: its services, their VIPs and tasks, as this node's
    /// directory knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<BTreeMap<String, NetworkService>>,
}

/// `Network.Services[name]` (`network inspect --verbose`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkService {
    /// The VIP, empty in dnsrr mode.
    #[serde(rename = "VIP")]
    pub vip: String,
    /// Published ports, `*:8080->80/tcp`.
    pub ports: Vec<String>,
    /// Its tasks on this network.
    pub tasks: Vec<NetworkTask>,
}

/// `Network.Services[name].Tasks[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkTask {
    /// DNS name.
    pub name: String,
    /// Its address.
    #[serde(rename = "EndpointIP")]
    pub endpoint_ip: String,
    /// `Host IP`: its node.
    pub info: BTreeMap<String, String>,
}

impl NetworkService {
    /// A service of the directory's index.
    pub fn new(s: &crate::directory::ServiceEntry) -> NetworkService {
        NetworkService {
            vip: s.vip.map(|v| v.to_string()).unwrap_or_default(),
            ports: s
                .ports
                .iter()
                .map(|p| format!("*:{}->{}/{}", p.published, p.target, p.protocol))
                .collect(),
            tasks: s
                .tasks
                .iter()
                .map(|t| NetworkTask {
                    name: t.name.clone(),
                    endpoint_ip: t.ip.to_string(),
                    info: BTreeMap::from([("Host IP".to_owned(), t.node.to_string())]),
                })
                .collect(),
        }
    }
}

/// `Network.IPAM`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkIpam {
    /// `default`.
    pub driver: String,
    /// One subnet.
    pub config: Vec<IpamConfig>,
}

/// `Network.IPAM.Config[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfig {
    /// CIDR.
    pub subnet: String,
    /// `.1`.
    pub gateway: String,
}

/// The driver option docker names a network's VNI with.
pub const VXLAN_ID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

impl From<&NetworkRecord> for Network {
    fn from(n: &NetworkRecord) -> Network {
        Network {
            id: n.id.clone(),
            name: n.name.clone(),
            created: rfc3339(n.created_at.max(0) as u64 * 1000),
            scope: "swarm".into(),
            driver: n.driver.clone(),
            attachable: n.attachable,
            ingress: n.ingress,
            ipam: NetworkIpam {
                driver: "default".into(),
                config: vec![IpamConfig { subnet: n.subnet.clone(), gateway: n.gateway.clone() }],
            },
            options: BTreeMap::from([(VXLAN_ID_OPTION.to_owned(), n.vni.to_string())]),
            labels: n.labels.clone(),
            services: None,
        }
    }
}
