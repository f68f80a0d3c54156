//! The daemon's shared state: the data plane, the local endpoints (each a
//! sandbox), and the handle to the gossip driver.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_dataplane::{Dataplane, EndpointId};
use shoal_gossip::{Change, Member, RowKey};
use shoal_runtime::{InterfaceSpec, NetNs, Sandbox};
use shoal_wire::Vni;
use shoal_wire::ip::Ipv4Cidr;
use tokio::sync::Mutex;

use super::gossip::GossipHandle;

/// The table endpoints are gossiped in.
pub const ENDPOINTS: &str = "endpoints";

/// An endpoint row's value: where an overlay address lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The overlay address.
    pub ip: Ipv4Addr,
    /// The network's subnet.
    pub subnet: String,
    /// The underlay address of the node hosting it.
    pub node: Ipv4Addr,
}

/// What the API is asked to create.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// Sandbox (network namespace) name.
    pub sandbox: String,
    /// Network VNI.
    pub vni: u32,
    /// Network subnet.
    pub subnet: String,
    /// Address in the network.
    pub ip: Ipv4Addr,
}

/// A local endpoint, as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    /// Sandbox name.
    pub sandbox: String,
    /// Network VNI.
    pub vni: u32,
    /// Subnet.
    pub subnet: String,
    /// Address.
    pub ip: Ipv4Addr,
}

struct Local {
    view: EndpointView,
    id: EndpointId,
    sandbox: Sandbox,
}

/// Why an API request failed; the status tells the client which.
#[derive(Debug)]
pub enum ApiError {
    /// The request is wrong (400).
    BadRequest(String),
    /// No such thing (404).
    NotFound(String),
    /// It exists already (409).
    Conflict(String),
    /// Something failed here (500).
    Internal(String),
    /// The node is not in the state the request needs (503).
    Unavailable(String),
}

/// Shared by the API handlers and the gossip event loop.
pub struct State {
    /// This node.
    pub me: Member,
    /// Overlay MTU.
    pub mtu: u16,
    data_dir: PathBuf,
    /// The data plane.
    pub dataplane: Dataplane,
    /// The gossip driver, once this node is in a cluster.
    gossip: std::sync::RwLock<Option<GossipHandle>>,
    endpoints: Mutex<BTreeMap<String, Local>>,
    /// This node's place in a swarm.
    pub cluster: Mutex<super::cluster::Cluster>,
    /// Daemon settings the control plane needs.
    pub settings: super::Settings,
    /// Which owner's row each remote route came from: a removal by another
    /// owner (an address that moved) must not delete it.
    claims: std::sync::Mutex<std::collections::HashMap<(u32, Ipv4Addr), shoal_gossip::NodeId>>,
}

impl State {
    /// Assembles the state.
    pub fn new(me: Member, data_dir: PathBuf, dataplane: Dataplane, settings: super::Settings) -> State {
        State {
            me,
            mtu: settings.mtu,
            data_dir,
            dataplane,
            gossip: std::sync::RwLock::new(None),
            endpoints: Mutex::new(BTreeMap::new()),
            cluster: Mutex::new(super::cluster::Cluster::Inactive),
            settings,
            claims: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The gossip driver, or an error saying this node is in no swarm yet.
    pub fn gossip(&self) -> Result<GossipHandle, ApiError> {
        self.gossip.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or_else(|| {
            ApiError::Unavailable(
                "this node is not part of a swarm: run `shoal swarm init` or `shoal swarm join` first".into(),
            )
        })
    }

    /// Installs the gossip driver (when the node joins or creates a swarm).
    pub fn set_gossip(&self, handle: Option<GossipHandle>) {
        *self.gossip.write().unwrap_or_else(|e| e.into_inner()) = handle;
    }

    /// The directory of this node's state.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Creates a local endpoint: sandbox, TUN, data plane, gossiped row.
    pub async fn create_endpoint(&self, req: EndpointRequest) -> Result<EndpointView, ApiError> {
        let vni = Vni::new(req.vni)
            .ok_or_else(|| ApiError::BadRequest(format!("vni {} does not fit in 24 bits", req.vni)))?;
        let subnet: Ipv4Cidr = req.subnet.parse().map_err(|e| ApiError::BadRequest(format!("{e}")))?;
        if !subnet.contains(req.ip) {
            return Err(ApiError::BadRequest(format!("{} is outside subnet {subnet}", req.ip)));
        }
        let gossip = self.gossip()?;
        let mut endpoints = self.endpoints.lock().await;
        if endpoints.contains_key(&req.sandbox) {
            return Err(ApiError::Conflict(format!("sandbox {} already exists on this node", req.sandbox)));
        }
        self.dataplane.add_network(vni, subnet).map_err(|e| ApiError::Conflict(e.to_string()))?;
        let spec = InterfaceSpec { name: "eth0".into(), ip: req.ip, prefix: subnet.prefix(), mtu: self.mtu };
        let (sandbox, devices) = Sandbox::create(&req.sandbox, &[spec]).map_err(|e| match e {
            shoal_runtime::SandboxError::Netns(shoal_runtime::NetnsError::Exists(_)) => {
                ApiError::Conflict(format!("a network namespace named {} exists already", req.sandbox))
            }
            shoal_runtime::SandboxError::Netns(shoal_runtime::NetnsError::InvalidName(_)) => {
                ApiError::BadRequest(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        })?;
        let device = devices.into_iter().next().expect("one interface asked for");
        let id = self.dataplane.attach(vni, req.ip, device).map_err(|e| ApiError::Conflict(e.to_string()))?;
        let view = EndpointView {
            sandbox: req.sandbox.clone(),
            vni: req.vni,
            subnet: subnet.to_string(),
            ip: req.ip,
        };
        endpoints.insert(req.sandbox.clone(), Local { view: view.clone(), id, sandbox });
        self.record_sandboxes(&endpoints);
        let record = EndpointRecord { ip: req.ip, subnet: subnet.to_string(), node: *self.me.addr.ip() };
        let value = serde_json::to_vec(&record).expect("serialisable");
        gossip.write(req.vni, RowKey::new(ENDPOINTS, req.ip.to_string()), Some(value)).await;
        Ok(view)
    }

    /// Removes a local endpoint and withdraws its row.
    pub async fn remove_endpoint(&self, sandbox: &str) -> Result<(), ApiError> {
        let mut endpoints = self.endpoints.lock().await;
        let local = endpoints
            .remove(sandbox)
            .ok_or_else(|| ApiError::NotFound(format!("no endpoint with sandbox {sandbox} on this node")))?;
        self.record_sandboxes(&endpoints);
        drop(endpoints);
        self.teardown(local).await;
        Ok(())
    }

    async fn teardown(&self, local: Local) {
        self.dataplane.detach(local.id);
        let _ = local.sandbox.remove();
        if let Ok(gossip) = self.gossip() {
            gossip.write(local.view.vni, RowKey::new(ENDPOINTS, local.view.ip.to_string()), None).await;
        }
    }

    /// Removes every local endpoint (at shutdown).
    pub async fn remove_all_endpoints(&self) {
        let all = std::mem::take(&mut *self.endpoints.lock().await);
        for (_, local) in all {
            self.teardown(local).await;
        }
        self.record_sandboxes(&BTreeMap::new());
    }

    /// The local endpoints.
    pub async fn endpoints(&self) -> Vec<EndpointView> {
        self.endpoints.lock().await.values().map(|l| l.view.clone()).collect()
    }

    /// Programs the data plane from a visible-row change of another node.
    pub fn apply_change(&self, change: Change) {
        match change {
            Change::Upsert { network, key, value, owner } if key.table == ENDPOINTS => {
                let Some(vni) = Vni::new(network) else { return };
                let Ok(record) = serde_json::from_slice::<EndpointRecord>(&value) else {
                    tracing::warn!(%owner, key = %key.key, "undecodable endpoint row");
                    return;
                };
                let Ok(subnet) = record.subnet.parse::<Ipv4Cidr>() else { return };
                let programmed = self
                    .dataplane
                    .add_network(vni, subnet)
                    .and_then(|()| self.dataplane.set_remote(vni, record.ip, record.node));
                match programmed {
                    Ok(()) => {
                        self.claims
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert((network, record.ip), owner);
                    }
                    Err(e) => {
                        tracing::warn!(%owner, ip = %record.ip, error = %e, "cannot route to remote endpoint")
                    }
                }
            }
            Change::Remove { network, key, owner } if key.table == ENDPOINTS => {
                if let (Some(vni), Ok(ip)) = (Vni::new(network), key.key.parse::<Ipv4Addr>()) {
                    let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
                    if claims.get(&(network, ip)) == Some(&owner) {
                        claims.remove(&(network, ip));
                        self.dataplane.remove_remote(vni, ip);
                    }
                }
            }
            _ => {}
        }
    }

    /// Remembers which sandboxes exist, so a restart after a crash removes
    /// what the crashed process left.
    fn record_sandboxes(&self, endpoints: &BTreeMap<String, Local>) {
        let names: Vec<&str> = endpoints.keys().map(String::as_str).collect();
        let _ = std::fs::write(self.data_dir.join("sandboxes"), names.join("\n"));
    }
}

/// Deletes the sandboxes a previous process of this node left behind.
pub fn remove_stale_sandboxes(data_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(data_dir.join("sandboxes")) else { return };
    for name in text.lines().filter(|l| !l.is_empty()) {
        if NetNs::exists(name) {
            tracing::info!(sandbox = name, "removing a sandbox left by the previous run");
            let _ = NetNs::delete_by_name(name);
        }
    }
    let _ = std::fs::remove_file(data_dir.join("sandboxes"));
}
