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
    interfaces: Vec<(EndpointView, EndpointId)>,
    /// Taken when unplugged.
    sandbox: Option<Sandbox>,
}

/// One interface a sandbox is asked for.
#[derive(Debug, Clone)]
pub struct Interface {
    /// Network VNI.
    pub vni: u32,
    /// Network subnet.
    pub subnet: String,
    /// Address.
    pub ip: Ipv4Addr,
}

/// What gossip said about a remote address: the row and its owner.
type RemoteRow = (EndpointRecord, shoal_gossip::NodeId);

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
    /// The task runner, once this node is in a swarm.
    agent: std::sync::Mutex<Option<std::sync::Arc<super::agent::Agent>>>,
    /// Every remote endpoint row gossip delivered, per network, and which
    /// owner it came from (a removal by another owner, after an address
    /// moved, must not delete it). Routes are programmed only for networks
    /// with a local endpoint: a network's data plane exists only on nodes
    /// with tasks on it.
    remotes: std::sync::Mutex<std::collections::HashMap<u32, std::collections::HashMap<Ipv4Addr, RemoteRow>>>,
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
            agent: std::sync::Mutex::new(None),
            remotes: std::sync::Mutex::new(std::collections::HashMap::new()),
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

    /// Installs the task runner.
    pub fn set_agent(&self, agent: Option<std::sync::Arc<super::agent::Agent>>) {
        *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = agent;
    }

    /// Takes the task runner away (leaving the swarm, stopping).
    pub fn take_agent(&self) -> Option<std::sync::Arc<super::agent::Agent>> {
        self.agent.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The task runner.
    pub fn agent(&self) -> Result<std::sync::Arc<super::agent::Agent>, ApiError> {
        self.agent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| ApiError::Unavailable("this node is not part of a swarm: it runs no tasks".into()))
    }

    /// The directory of this node's state.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Creates a local endpoint: sandbox, TUN, data plane, gossiped row.
    pub async fn create_endpoint(&self, req: EndpointRequest) -> Result<EndpointView, ApiError> {
        let iface = Interface { vni: req.vni, subnet: req.subnet, ip: req.ip };
        let mut views = self.create_sandbox(&req.sandbox, &[iface]).await?;
        Ok(views.remove(0))
    }

    /// Creates the sandbox `name` with one TUN per interface (`eth0`,
    /// `eth1`...), attaches them to the data plane and gossips their rows.
    pub async fn create_sandbox(
        &self,
        name: &str,
        ifaces: &[Interface],
    ) -> Result<Vec<EndpointView>, ApiError> {
        let mut specs = Vec::new();
        let mut parsed = Vec::new();
        for (i, iface) in ifaces.iter().enumerate() {
            let vni = Vni::new(iface.vni)
                .ok_or_else(|| ApiError::BadRequest(format!("vni {} does not fit in 24 bits", iface.vni)))?;
            let subnet: Ipv4Cidr = iface.subnet.parse().map_err(|e| ApiError::BadRequest(format!("{e}")))?;
            if !subnet.contains(iface.ip) {
                return Err(ApiError::BadRequest(format!("{} is outside subnet {subnet}", iface.ip)));
            }
            specs.push(InterfaceSpec {
                name: format!("eth{i}"),
                ip: iface.ip,
                prefix: subnet.prefix(),
                mtu: self.mtu,
            });
            parsed.push((vni, subnet, iface.ip));
        }
        let gossip = self.gossip()?;
        let mut endpoints = self.endpoints.lock().await;
        if endpoints.contains_key(name) {
            return Err(ApiError::Conflict(format!("sandbox {name} already exists on this node")));
        }
        for (vni, subnet, _) in &parsed {
            self.dataplane.add_network(*vni, *subnet).map_err(|e| ApiError::Conflict(e.to_string()))?;
        }
        let created = Sandbox::create(name, &specs);
        if created.is_err() {
            let used = local_vnis(&endpoints);
            for (vni, _, _) in &parsed {
                if !used.contains(&vni.get()) {
                    self.dataplane.remove_network(*vni);
                }
            }
        }
        let (sandbox, devices) = created.map_err(|e| match e {
            shoal_runtime::SandboxError::Netns(shoal_runtime::NetnsError::Exists(_)) => {
                ApiError::Conflict(format!("a network namespace named {name} exists already"))
            }
            shoal_runtime::SandboxError::Netns(shoal_runtime::NetnsError::InvalidName(_)) => {
                ApiError::BadRequest(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        })?;
        let mut local = Local { interfaces: Vec::new(), sandbox: Some(sandbox) };
        for ((vni, subnet, ip), device) in parsed.iter().zip(devices) {
            match self.dataplane.attach(*vni, *ip, device) {
                Ok(id) => {
                    let view = EndpointView {
                        sandbox: name.to_owned(),
                        vni: vni.get(),
                        subnet: subnet.to_string(),
                        ip: *ip,
                    };
                    local.interfaces.push((view, id));
                }
                Err(e) => {
                    self.unplug(&mut local, &local_vnis(&endpoints));
                    return Err(ApiError::Conflict(e.to_string()));
                }
            }
        }
        let views: Vec<EndpointView> = local.interfaces.iter().map(|(v, _)| v.clone()).collect();
        endpoints.insert(name.to_owned(), local);
        self.record_sandboxes(&endpoints);
        for view in &views {
            self.program_remotes(view.vni);
            let record =
                EndpointRecord { ip: view.ip, subnet: view.subnet.clone(), node: *self.me.addr.ip() };
            let value = serde_json::to_vec(&record).expect("serialisable");
            gossip.write(view.vni, RowKey::new(ENDPOINTS, view.ip.to_string()), Some(value)).await;
        }
        Ok(views)
    }

    /// Removes a local endpoint (a sandbox) and withdraws its rows.
    pub async fn remove_endpoint(&self, sandbox: &str) -> Result<(), ApiError> {
        let mut endpoints = self.endpoints.lock().await;
        let mut local = endpoints
            .remove(sandbox)
            .ok_or_else(|| ApiError::NotFound(format!("no endpoint with sandbox {sandbox} on this node")))?;
        self.record_sandboxes(&endpoints);
        // Unplug under the lock: a sandbox being created on the same network
        // must not see its network removed by this one's teardown.
        self.unplug(&mut local, &local_vnis(&endpoints));
        drop(endpoints);
        self.withdraw(&local).await;
        Ok(())
    }

    /// Detaches the TUNs, deletes the namespace, and removes from the data
    /// plane the networks no other local endpoint uses. Call with the
    /// endpoints lock held.
    fn unplug(&self, local: &mut Local, still_used: &std::collections::BTreeSet<u32>) {
        for (_, id) in &local.interfaces {
            self.dataplane.detach(*id);
        }
        if let Some(sandbox) = local.sandbox.take() {
            let _ = sandbox.remove();
        }
        for (view, _) in &local.interfaces {
            if !still_used.contains(&view.vni)
                && let Some(vni) = Vni::new(view.vni)
            {
                self.dataplane.remove_network(vni);
            }
        }
    }

    /// Withdraws the gossiped rows of an unplugged sandbox.
    async fn withdraw(&self, local: &Local) {
        if let Ok(gossip) = self.gossip() {
            for (view, _) in &local.interfaces {
                gossip.write(view.vni, RowKey::new(ENDPOINTS, view.ip.to_string()), None).await;
            }
        }
    }

    /// Removes every local endpoint (at shutdown).
    pub async fn remove_all_endpoints(&self) {
        let all = std::mem::take(&mut *self.endpoints.lock().await);
        for (_, mut local) in all {
            self.unplug(&mut local, &Default::default());
            self.withdraw(&local).await;
        }
        self.record_sandboxes(&BTreeMap::new());
    }

    /// The local endpoints.
    pub async fn endpoints(&self) -> Vec<EndpointView> {
        self.endpoints
            .lock()
            .await
            .values()
            .flat_map(|l| l.interfaces.iter().map(|(v, _)| v.clone()))
            .collect()
    }

    /// Routes every known remote address of `vni` (when it gains its first
    /// local endpoint).
    fn program_remotes(&self, vni: u32) {
        let remotes = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rows) = remotes.get(&vni) else { return };
        for (record, owner) in rows.values() {
            self.route(vni, record, *owner);
        }
    }

    fn route(&self, network: u32, record: &EndpointRecord, owner: shoal_gossip::NodeId) {
        let Some(vni) = Vni::new(network) else { return };
        let Some(local) = self.dataplane.subnet(vni) else {
            return; // no local endpoint on this network
        };
        if record.subnet.parse::<Ipv4Cidr>() != Ok(local) {
            tracing::warn!(%owner, ip = %record.ip, subnet = %record.subnet, %local, "remote endpoint on another subnet");
            return;
        }
        if let Err(e) = self.dataplane.set_remote(vni, record.ip, record.node) {
            tracing::warn!(%owner, ip = %record.ip, error = %e, "cannot route to remote endpoint");
        }
    }

    /// Records a visible-row change of another node, and programs the data
    /// plane if the network has local endpoints.
    pub fn apply_change(&self, change: Change) {
        match change {
            Change::Upsert { network, key, value, owner } if key.table == ENDPOINTS => {
                let Ok(record) = serde_json::from_slice::<EndpointRecord>(&value) else {
                    tracing::warn!(%owner, key = %key.key, "undecodable endpoint row");
                    return;
                };
                self.remotes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(network)
                    .or_default()
                    .insert(record.ip, (record.clone(), owner));
                self.route(network, &record, owner);
            }
            Change::Remove { network, key, owner } if key.table == ENDPOINTS => {
                let Ok(ip) = key.key.parse::<Ipv4Addr>() else { return };
                let mut remotes = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
                let Some(rows) = remotes.get_mut(&network) else { return };
                if rows.get(&ip).is_some_and(|(_, o)| *o == owner) {
                    rows.remove(&ip);
                    if let Some(vni) = Vni::new(network) {
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

fn local_vnis(endpoints: &BTreeMap<String, Local>) -> std::collections::BTreeSet<u32> {
    endpoints.values().flat_map(|l| l.interfaces.iter().map(|(v, _)| v.vni)).collect()
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
