//! This node's endpoints: sandboxes (network namespaces) with one TUN
//! interface per overlay network, attached to the data plane and announced
//! by gossip.
//!
//! Invariants: a network is in the data plane exactly while a local
//! endpoint uses it (added with the first, removed with the last, both
//! under the one sandboxes lock); every local endpoint has a gossiped row,
//! withdrawn when it goes; `<data dir>/sandboxes` lists the sandboxes that
//! exist, so the next start after a crash removes what this one left.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use shoal_dataplane::{Dataplane, EndpointId};
use shoal_gossip::RowKey;
use shoal_runtime::{InterfaceSpec, NetNs, NetnsError, Sandbox, SandboxError};
use shoal_wire::Vni;
use shoal_wire::ip::Ipv4Cidr;
use tokio::sync::Mutex;

use crate::dns::Dns;
use crate::error::Error;
use crate::gossip_driver::GossipSlot;
use crate::metrics::{Metrics, Op};
use crate::routes::{ENDPOINTS, EndpointRecord, Routes};
use crate::vips::Vips;

/// One interface a sandbox is asked for, parsed and checked once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    /// Network.
    pub vni: Vni,
    /// The network's subnet.
    pub subnet: Ipv4Cidr,
    /// The endpoint's address in it.
    pub ip: Ipv4Addr,
}

impl Interface {
    /// Checks an interface given as text: the VNI fits in 24 bits, the
    /// subnet parses, the address is inside it.
    pub fn parse(vni: u32, subnet: &str, ip: Ipv4Addr) -> Result<Interface, Error> {
        let vni =
            Vni::new(vni).ok_or_else(|| Error::Invalid(format!("vni {vni} does not fit in 24 bits")))?;
        let subnet: Ipv4Cidr = subnet.parse().map_err(|e| Error::Invalid(format!("{e}")))?;
        if !subnet.contains(ip) {
            return Err(Error::Invalid(format!("{ip} is outside subnet {subnet}")));
        }
        Ok(Interface { vni, subnet, ip })
    }
}

/// A local endpoint, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointInfo {
    /// Sandbox name.
    pub sandbox: String,
    /// Network VNI.
    pub vni: u32,
    /// Subnet.
    #[serde(with = "crate::serde_text")]
    pub subnet: Ipv4Cidr,
    /// Address.
    pub ip: Ipv4Addr,
}

#[derive(Debug)]
struct Local {
    interfaces: Vec<(Interface, EndpointId)>,
    /// Taken when unplugged.
    sandbox: Option<Sandbox>,
    /// The sandbox's resolver at 127.0.0.11; stops when dropped.
    dns: Option<shoal_dns::Serving>,
    /// Its TUNs persist: its task outlives the daemon (live restore).
    persistent: bool,
}

/// What endpoints plug into.
#[derive(Debug)]
pub struct Plumbing {
    /// The data plane.
    pub dataplane: Arc<Dataplane>,
    /// Remote endpoints' routes.
    pub routes: Arc<Routes>,
    /// Service VIPs.
    pub vips: Arc<Vips>,
    /// The tasks' resolver.
    pub dns: Dns,
    /// Gossip, for the endpoint rows.
    pub gossip: GossipSlot,
    /// Failures carried on from.
    pub metrics: Metrics,
    /// This node's underlay address, which its rows name.
    pub node: Ipv4Addr,
    /// Overlay MTU.
    pub mtu: u16,
    /// Where the list of sandboxes is kept.
    pub data_dir: PathBuf,
}

/// This node's sandboxes.
#[derive(Debug)]
pub struct Endpoints {
    p: Plumbing,
    sandboxes: Mutex<BTreeMap<String, Local>>,
}

impl Endpoints {
    /// No endpoints yet.
    pub fn new(plumbing: Plumbing) -> Endpoints {
        Endpoints { p: plumbing, sandboxes: Mutex::default() }
    }

    fn specs(&self, ifaces: &[Interface]) -> Vec<InterfaceSpec> {
        ifaces
            .iter()
            .enumerate()
            .map(|(i, iface)| InterfaceSpec {
                name: format!("eth{i}"),
                ip: iface.ip,
                prefix: iface.subnet.prefix(),
                mtu: self.p.mtu,
                queues: shoal_runtime::default_queues(),
            })
            .collect()
    }

    /// Creates the sandbox `name` with one TUN per interface (`eth0`,
    /// `eth1`...), attaches them to the data plane and gossips their rows.
    /// A `persistent` sandbox outlives the daemon (see [`keep_all`](Self::keep_all)).
    pub async fn create(
        &self,
        name: &str,
        ifaces: &[Interface],
        persistent: bool,
    ) -> Result<Vec<EndpointInfo>, Error> {
        self.plug(name, ifaces, Plug::Create { persistent }).await
    }

    /// Takes back the sandbox `name` that a previous daemon left to its
    /// running task: reattaches its persistent TUNs, serves its resolver
    /// again and gossips its rows, as [`create`](Self::create) made them.
    pub async fn adopt(&self, name: &str, ifaces: &[Interface]) -> Result<Vec<EndpointInfo>, Error> {
        self.plug(name, ifaces, Plug::Adopt).await
    }

    async fn plug(&self, name: &str, ifaces: &[Interface], how: Plug) -> Result<Vec<EndpointInfo>, Error> {
        let specs = self.specs(ifaces);
        let gossip = self.p.gossip.get()?;
        let mut sandboxes = self.sandboxes.lock().await;
        if sandboxes.contains_key(name) {
            return Err(Error::Conflict(format!("sandbox {name} already exists on this node")));
        }
        for iface in ifaces {
            self.p
                .dataplane
                .add_network(iface.vni, iface.subnet)
                .map_err(|e| Error::Conflict(e.to_string()))?;
        }
        let created = match how {
            Plug::Create { persistent } => Sandbox::create(name, &specs, persistent),
            Plug::Adopt => Sandbox::reattach(name, &specs),
        };
        if created.is_err() {
            let used = local_vnis(&sandboxes);
            for iface in ifaces {
                if !used.contains(&iface.vni) {
                    self.p.dataplane.remove_network(iface.vni);
                }
            }
        }
        let (sandbox, devices) = created.map_err(|e| match e {
            SandboxError::Netns(NetnsError::Exists(_)) => {
                Error::Conflict(format!("a network namespace named {name} exists already"))
            }
            SandboxError::Netns(NetnsError::InvalidName(_)) => Error::Invalid(e.to_string()),
            other => Error::internal(other),
        })?;
        let persistent = matches!(how, Plug::Adopt | Plug::Create { persistent: true });
        let mut local = Local { interfaces: Vec::new(), sandbox: Some(sandbox), dns: None, persistent };
        for (iface, queues) in ifaces.iter().zip(devices) {
            match self.p.dataplane.attach(iface.vni, iface.ip, queues) {
                Ok(id) => local.interfaces.push((*iface, id)),
                Err(e) => {
                    self.unplug(&mut local, &local_vnis(&sandboxes));
                    return Err(Error::Conflict(e.to_string()));
                }
            }
        }
        let networks = ifaces.iter().map(|i| i.vni.get()).collect();
        match self.p.dns.serve(local.sandbox.as_ref().expect("just made").netns(), networks) {
            Ok(serving) => local.dns = Some(serving),
            Err(e) => {
                self.unplug(&mut local, &local_vnis(&sandboxes));
                return Err(e);
            }
        }
        sandboxes.insert(name.to_owned(), local);
        self.record(&sandboxes);
        self.p.vips.sync();
        for iface in ifaces {
            self.p.routes.program_network(iface.vni);
            let record = EndpointRecord { ip: iface.ip, subnet: iface.subnet, node: self.p.node };
            let value = serde_json::to_vec(&record).expect("serialisable");
            gossip.write(iface.vni.get(), RowKey::new(ENDPOINTS, iface.ip.to_string()), Some(value)).await;
        }
        Ok(ifaces.iter().map(|i| info(name, i)).collect())
    }

    /// Removes a sandbox and withdraws its rows.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        let mut sandboxes = self.sandboxes.lock().await;
        let mut local = sandboxes
            .remove(name)
            .ok_or_else(|| Error::NotFound(format!("no endpoint with sandbox {name} on this node")))?;
        self.record(&sandboxes);
        // Unplug under the lock: a sandbox being created on the same network
        // must not see its network removed by this one's teardown.
        self.unplug(&mut local, &local_vnis(&sandboxes));
        drop(sandboxes);
        self.withdraw(&local).await;
        Ok(())
    }

    /// Removes every sandbox (at shutdown).
    pub async fn remove_all(&self) {
        let mut sandboxes = self.sandboxes.lock().await;
        let mut all = std::mem::take(&mut *sandboxes);
        for local in all.values_mut() {
            self.unplug(local, &BTreeSet::new());
        }
        self.record(&sandboxes);
        drop(sandboxes);
        for local in all.values() {
            self.withdraw(local).await;
        }
    }

    /// Lets go of every sandbox as the daemon exits with live restore:
    /// persistent ones stay, with their namespaces and TUNs, for the next
    /// daemon to adopt, and keep their gossiped rows (that daemon writes
    /// them again in the same epoch); the others are removed.
    pub async fn keep_all(&self) {
        let mut sandboxes = self.sandboxes.lock().await;
        let (kept, removed): (BTreeMap<String, Local>, BTreeMap<String, Local>) =
            std::mem::take(&mut *sandboxes).into_iter().partition(|(_, l)| l.persistent);
        for (_, mut local) in removed {
            self.unplug(&mut local, &BTreeSet::new());
            self.withdraw(&local).await;
        }
        for (_, mut local) in kept {
            local.dns = None;
            for (_, id) in &local.interfaces {
                self.p.dataplane.detach(*id);
            }
            if let Some(sandbox) = local.sandbox.take() {
                sandbox.keep();
            }
        }
        // The record still names the kept sandboxes: the next start adopts
        // them, or removes them if their task is gone.
    }

    /// The local endpoints.
    pub async fn list(&self) -> Vec<EndpointInfo> {
        self.sandboxes
            .lock()
            .await
            .iter()
            .flat_map(|(name, l)| l.interfaces.iter().map(move |(i, _)| info(name, i)))
            .collect()
    }

    /// Detaches the TUNs, deletes the namespace, and removes from the data
    /// plane the networks no other local endpoint uses. Call with the
    /// sandboxes lock held.
    fn unplug(&self, local: &mut Local, still_used: &BTreeSet<Vni>) {
        local.dns = None;
        for (_, id) in &local.interfaces {
            self.p.dataplane.detach(*id);
        }
        if let Some(sandbox) = local.sandbox.take()
            && let Err(e) = sandbox.remove()
        {
            tracing::warn!(error = %e, "cannot remove a sandbox");
            self.p.metrics.failed(Op::RemoveSandbox);
        }
        for (iface, _) in &local.interfaces {
            if !still_used.contains(&iface.vni) {
                self.p.dataplane.remove_network(iface.vni);
                self.p.vips.forget(iface.vni);
            }
        }
    }

    /// Withdraws the gossiped rows of an unplugged sandbox.
    async fn withdraw(&self, local: &Local) {
        if let Ok(gossip) = self.p.gossip.get() {
            for (iface, _) in &local.interfaces {
                gossip.write(iface.vni.get(), RowKey::new(ENDPOINTS, iface.ip.to_string()), None).await;
            }
        }
    }

    /// Records which sandboxes exist, so a restart after a crash removes
    /// what the crashed process left.
    fn record(&self, sandboxes: &BTreeMap<String, Local>) {
        let names: Vec<&str> = sandboxes.keys().map(String::as_str).collect();
        let path = self.p.data_dir.join("sandboxes");
        if let Err(e) = std::fs::write(&path, names.join("\n")) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the sandboxes: a crash now would leave them behind");
            self.p.metrics.failed(Op::RecordSandboxes);
        }
    }
}

/// How [`Endpoints::plug`] gets a sandbox.
#[derive(Debug, Clone, Copy)]
enum Plug {
    Create { persistent: bool },
    Adopt,
}

fn info(sandbox: &str, iface: &Interface) -> EndpointInfo {
    EndpointInfo { sandbox: sandbox.to_owned(), vni: iface.vni.get(), subnet: iface.subnet, ip: iface.ip }
}

fn local_vnis(sandboxes: &BTreeMap<String, Local>) -> BTreeSet<Vni> {
    sandboxes.values().flat_map(|l| l.interfaces.iter().map(|(i, _)| i.vni)).collect()
}

/// Deletes the sandboxes a previous process of this node left behind,
/// except those of the tasks it will adopt (`adopted`).
pub fn remove_stale(data_dir: &Path, adopted: &BTreeSet<String>) {
    let Ok(text) = std::fs::read_to_string(data_dir.join("sandboxes")) else { return };
    for name in text.lines().filter(|l| !l.is_empty() && !adopted.contains(*l)) {
        if NetNs::exists(name) {
            tracing::info!(sandbox = name, "removing a sandbox left by the previous run");
            if let Err(e) = NetNs::delete_by_name(name) {
                tracing::warn!(sandbox = name, error = %e, "cannot remove a sandbox left by the previous run");
            }
        }
    }
    let _ = std::fs::remove_file(data_dir.join("sandboxes"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_are_checked_once() {
        let i = Interface::parse(4096, "10.0.1.0/24", [10, 0, 1, 2].into()).unwrap();
        assert_eq!((i.vni.get(), i.subnet.prefix()), (4096, 24));
        assert!(
            Interface::parse(1 << 24, "10.0.1.0/24", [10, 0, 1, 2].into())
                .unwrap_err()
                .to_string()
                .contains("24 bits")
        );
        assert!(
            Interface::parse(1, "10.0.1.0/24", [10, 0, 2, 2].into())
                .unwrap_err()
                .to_string()
                .contains("outside subnet")
        );
        assert!(Interface::parse(1, "10.0.1.0/33", [10, 0, 1, 2].into()).is_err());
    }
}
