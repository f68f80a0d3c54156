//! The manager: the cluster state store, the QUIC server on the control
//! port (joins, heartbeats, certificate renewals, dispatch), the monitor
//! that marks nodes down, and the node, network and token verbs.
//! Services are the orchestration's (`orchestration`).
//!
//! Invariants: a node's id and role are what its certificate says, never
//! what it claims; a node is Down once three heartbeats are missed and
//! Ready at the next; every read-modify-write of records holds the writer
//! lock.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use shoal_control::ca::{self, Role, Subject};
use shoal_control::ipam::{Ipam, IpamError, NetworkAlloc};
use shoal_control::token::JoinToken;
use shoal_control::transport;
use shoal_control::{
    Availability, GossipKeys, NetworkRecord, NodeInfo, NodeRecord, NodeState, Report, Request, Response,
};
use shoal_orch::{Assignments, INGRESS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::config::{self, SwarmConfig};
use super::dispatch::{self, LONG_POLL};
use super::orchestration::Orchestration;
use super::records::{Records, new_id};
use crate::clock::now_ms;
use crate::error::Error;
use crate::metrics::{Metrics, Op};
use crate::names::{self, Kind};
use crate::settings::Settings;

/// Heartbeat period unless `swarm init` says otherwise (Swarm: 5 s).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Missed heartbeats before a node is Down (about 15 s by default).
const MISSED_BEFORE_DOWN: u32 = 3;
/// How often the monitor looks for silent nodes.
const MONITOR_EVERY: Duration = Duration::from_millis(500);
/// How often (in monitor rounds) the manager checks its own certificate.
const RENEW_CHECK_ROUNDS: u64 = 20;

/// The manager's running services and state.
#[derive(Debug)]
pub struct Manager {
    config: SwarmConfig,
    dir: PathBuf,
    records: Arc<Records>,
    orch: Arc<Orchestration>,
    metrics: Metrics,
    last_seen: Mutex<HashMap<String, Instant>>,
    started: Instant,
    endpoint: quinn::Endpoint,
    loops: Mutex<Vec<JoinHandle<()>>>,
    /// Tells this node (its gossip) about new key rings.
    events: mpsc::Sender<super::membership::RoleEvent>,
    /// The gossip key ring version each node said it gossips with.
    key_acks: Mutex<HashMap<String, u64>>,
    /// One gossip key rotation at a time.
    rotating: tokio::sync::Mutex<()>,
}

/// Why a request that needs a member of the swarm is refused.
#[derive(Debug, Clone, Copy)]
enum Refused {
    /// The peer presented no certificate.
    NoCertificate,
    /// Its node was removed.
    Removed,
}

impl Refused {
    /// The answer, with `missing` saying what a request without a
    /// certificate lacks.
    fn answer(self, missing: &str) -> Response {
        let message = match self {
            Refused::NoCertificate => missing.to_owned(),
            Refused::Removed => "this node was removed from the swarm".into(),
        };
        Response::Error { message }
    }
}

/// The manager node's own task runner's ends of dispatch.
#[derive(Debug)]
pub struct LocalRunner {
    /// Its assignments.
    pub assignments: watch::Receiver<Assignments>,
    /// Where it reports.
    pub reports: mpsc::UnboundedSender<Report>,
}

/// What `node update` changes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    /// Labels to add or change, `KEY` or `KEY=VALUE`.
    #[serde(default)]
    pub label_add: Vec<String>,
    /// Label keys to remove.
    #[serde(default)]
    pub label_rm: Vec<String>,
    /// New availability.
    pub availability: Option<Availability>,
    /// New role (`node promote`/`demote`).
    pub role: Option<Role>,
}

/// A new node record for a node that just joined (or created) the swarm.
pub fn new_record(id: &str, role: Role, info: &NodeInfo, leader: bool) -> NodeRecord {
    let now = (now_ms() / 1000) as i64;
    NodeRecord {
        id: id.to_owned(),
        hostname: info.hostname.clone(),
        role,
        availability: Availability::Active,
        labels: BTreeMap::new(),
        addr: info.addr.clone(),
        state: NodeState::Ready,
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        cpus: info.cpus,
        memory_bytes: info.memory_bytes,
        engine_version: env!("CARGO_PKG_VERSION").into(),
        leader,
        created_at: now,
        updated_at: now,
    }
}

impl Manager {
    /// Starts what a manager runs: the store, the QUIC server, the monitor,
    /// the orchestrator, and the feed of this node's own task runner.
    pub fn start(
        settings: &Settings,
        config: SwarmConfig,
        metrics: Metrics,
        events: mpsc::Sender<super::membership::RoleEvent>,
    ) -> Result<(Arc<Manager>, LocalRunner), Error> {
        let dir = config::swarm_dir(&settings.data_dir);
        let records = Arc::new(Records::new(shoal_control::Store::open(&dir.join("state.redb"))?));
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(Error::io(format!("read {}", dir.join(name).display())))
        };
        let (cert, key) = (read("node.crt")?, read("node.key")?);
        let cs = records.cluster()?;
        let server = transport::server_config(&cs.ca.cert_der(), &cert, &key).map_err(Error::internal)?;
        let listen = SocketAddr::from((settings.listen_addr, settings.control_port));
        let endpoint = quinn::Endpoint::server(server, listen)
            .map_err(Error::io(format!("listen on the control port {listen}")))?;
        let orch = Arc::new(Orchestration::load(records.clone(), metrics.clone())?);
        let (assign_tx, assign_rx) = watch::channel(Assignments::default());
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let node_id = config.node_id.clone();
        let manager = Arc::new(Manager {
            config,
            dir,
            records,
            orch: orch.clone(),
            metrics,
            last_seen: Mutex::new(HashMap::new()),
            started: Instant::now(),
            endpoint: endpoint.clone(),
            loops: Mutex::new(Vec::new()),
            events,
            key_acks: Mutex::new(HashMap::new()),
            rotating: tokio::sync::Mutex::new(()),
        });
        if let Err(e) = manager.ensure_ingress() {
            tracing::warn!(error = %e, "manager: no ingress network: published ports will not answer");
        }
        let weak = Arc::downgrade(&manager);
        *manager.loops.lock().unwrap_or_else(|e| e.into_inner()) = vec![
            tokio::spawn(accept_loop(endpoint, weak.clone())),
            tokio::spawn(monitor_loop(weak)),
            tokio::spawn(Orchestration::run(Arc::downgrade(&orch))),
            tokio::spawn(dispatch::feed_local(Arc::downgrade(&orch), node_id, assign_tx, report_rx)),
        ];
        tracing::info!(addr = %listen, "manager: control plane listening");
        Ok((manager, LocalRunner { assignments: assign_rx, reports: report_tx }))
    }

    /// Stops serving: the control port closes and every loop ends.
    pub fn stop(&self) {
        self.endpoint.close(0u32.into(), b"leaving");
        for t in self.loops.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.abort();
        }
    }

    /// The services and tasks.
    pub fn orchestration(&self) -> &Orchestration {
        &self.orch
    }

    /// The swarm this manager runs.
    pub fn config(&self) -> &SwarmConfig {
        &self.config
    }

    /// This manager's node id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The control address workers join.
    pub fn addr(&self) -> SocketAddr {
        self.config.manager
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.config.heartbeat_secs)
    }

    /// The node a request comes from: it must hold a certificate of a node
    /// still in the swarm.
    fn member<'a>(&self, peer: Option<&'a (String, Role)>) -> Result<&'a (String, Role), Refused> {
        let peer = peer.ok_or(Refused::NoCertificate)?;
        match self.records.store.node(&peer.0) {
            Ok(Some(_)) => Ok(peer),
            _ => Err(Refused::Removed),
        }
    }

    /// Answers one control request.
    async fn handle(&self, request: Request, peer: Option<&(String, Role)>) -> Response {
        match request {
            Request::Join { secret, csr, info } => self.join(secret, &csr, &info),
            Request::Assignments { known } => match self.member(peer) {
                Ok((node, _)) => {
                    let (digest, assigned) =
                        dispatch::assignments_after(&self.orch, node, known, LONG_POLL).await;
                    Response::Assignments { digest, tasks: assigned.tasks, mesh: assigned.mesh }
                }
                Err(refused) => refused.answer("dispatching needs the node's certificate"),
            },
            Request::Report { reports } => match self.member(peer) {
                Ok((node, _)) => {
                    self.orch.apply_reports(node, reports);
                    Response::Ok { heartbeat_secs: self.config.heartbeat_secs, gossip_keys: None }
                }
                Err(refused) => refused.answer("dispatching needs the node's certificate"),
            },
            Request::Renew { csr } => match self.member(peer) {
                Ok((id, role)) => self.renew(id, *role, &csr),
                Err(refused) => refused.answer("renewal needs the node's current certificate"),
            },
            Request::Heartbeat => match self.member(peer) {
                Ok((id, _)) => self.heartbeat_from(id),
                Err(refused) => refused.answer("heartbeats need the node's certificate"),
            },
            Request::KeysApplied { version } => match self.member(peer) {
                Ok((id, _)) => {
                    self.key_acks.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), version);
                    Response::Ok { heartbeat_secs: self.config.heartbeat_secs, gossip_keys: None }
                }
                Err(refused) => refused.answer("heartbeats need the node's certificate"),
            },
        }
    }

    fn renew(&self, id: &str, role: Role, csr: &str) -> Response {
        let Ok(cs) = self.records.cluster() else {
            return Response::Error { message: "the manager has no cluster state".into() };
        };
        let validity = Duration::from_secs(cs.cert_expiry_secs);
        let subject = Subject { node_id: id, role, cluster_id: &cs.id, validity };
        match cs.ca.sign_csr(csr, subject) {
            Ok(cert) => {
                tracing::info!(node = %id, "certificate renewed");
                Response::Renewed { cert }
            }
            Err(e) => Response::Error { message: format!("cannot sign the certificate request: {e}") },
        }
    }

    fn heartbeat_from(&self, id: &str) -> Response {
        let _writer = self.records.write();
        let Ok(Some(mut node)) = self.records.store.node(id) else {
            return Response::Error { message: "this node was removed from the swarm".into() };
        };
        self.last_seen.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), Instant::now());
        if node.state != NodeState::Ready {
            node.state = NodeState::Ready;
            node.updated_at = (now_ms() / 1000) as i64;
            match self.records.store.put_node(&node) {
                Ok(()) => tracing::info!(node = %id, "node ready"),
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "cannot record that the node is ready");
                    self.metrics.failed(Op::StoreNode);
                }
            }
        }
        drop(_writer);
        // A rotation under way: the ring, until the node says it has it.
        let gossip_keys =
            self.records.cluster().ok().filter(|cs| cs.gossip_keys_version > 0).and_then(|cs| {
                let acked = self.key_acks.lock().unwrap_or_else(|e| e.into_inner()).get(id).copied();
                (acked != Some(cs.gossip_keys_version))
                    .then_some(GossipKeys { version: cs.gossip_keys_version, keys: cs.gossip_keys })
            });
        Response::Ok { heartbeat_secs: self.config.heartbeat_secs, gossip_keys }
    }

    /// Rotates the swarm's gossip key without a gap: every node first gets
    /// a ring holding the old key (still sealing) and a new one; once all
    /// have it, the new key seals; once all seal with it, the old key goes.
    /// Each step waits until every Ready node applied it (they learn it
    /// from their next heartbeat's answer), or for 10 heartbeats: a node
    /// that misses a step gets the ring when it next reaches the manager.
    pub async fn rotate_gossip_key(&self) -> Result<(), Error> {
        let _one = self.rotating.lock().await;
        let cs = self.records.cluster()?;
        let lines: Vec<&str> =
            cs.gossip_keys.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        let old = *lines.first().ok_or_else(|| Error::Internal("the swarm has no gossip key".into()))?;
        let used: Vec<u8> = lines.iter().filter_map(|l| l.split_once(':')?.0.parse().ok()).collect();
        let id = (1..=255u8)
            .map(|n| used.iter().max().copied().unwrap_or(0).wrapping_add(n))
            .find(|id| !used.contains(id))
            .unwrap_or(1);
        let key = crate::keys::keygen()?;
        let new = format!("{id}:{}", key.split_once(':').map_or(key.as_str(), |(_, hex)| hex));
        for ring in [format!("{old}\n{new}\n"), format!("{new}\n{old}\n"), format!("{new}\n")] {
            let version = self.set_gossip_keys(&ring).await?;
            self.wait_for_key_acks(version).await;
        }
        tracing::info!(key = id, "gossip key rotated");
        Ok(())
    }

    /// Makes `ring` the swarm's key ring (a new version), on this node first.
    async fn set_gossip_keys(&self, ring: &str) -> Result<u64, Error> {
        let keys = {
            let _writer = self.records.write();
            let mut cs = self.records.cluster()?;
            cs.gossip_keys = ring.to_owned();
            cs.gossip_keys_version += 1;
            self.records.store.put_cluster(&cs)?;
            GossipKeys { version: cs.gossip_keys_version, keys: cs.gossip_keys }
        };
        super::membership::apply_gossip_keys(&self.events, &self.dir, &keys).await?;
        self.key_acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.config.node_id.clone(), keys.version);
        Ok(keys.version)
    }

    /// Waits until every Ready node gossips with the ring of `version`, or
    /// for 10 heartbeat periods.
    async fn wait_for_key_acks(&self, version: u64) {
        let limit = Instant::now() + self.heartbeat() * 10;
        while Instant::now() < limit {
            let acks = self.key_acks.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let nodes = self.records.store.nodes().unwrap_or_default();
            let missing: Vec<&str> = nodes
                .iter()
                .filter(|n| n.state == NodeState::Ready && acks.get(&n.id).is_none_or(|v| *v < version))
                .map(|n| n.id.as_str())
                .collect();
            if missing.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(version, "gossip key rotation: not every node confirmed this step; going on");
    }

    fn join(&self, secret: [u8; 16], csr: &str, info: &NodeInfo) -> Response {
        let Ok(cs) = self.records.cluster() else {
            return Response::Error { message: "the manager has no cluster state".into() };
        };
        if ca::same_secret(&secret, &cs.manager_secret) {
            return Response::Error {
                message: "joining as a manager needs replicated manager state, which Shoal does not have yet: join with the worker token".into(),
            };
        }
        if !ca::same_secret(&secret, &cs.worker_secret) {
            return Response::Error {
                message: "invalid join token: it may have been rotated; get the current one with `shoal swarm join-token worker` on a manager".into(),
            };
        }
        let Ok(node_id) = new_id() else {
            return Response::Error { message: "the manager has no randomness for a node id".into() };
        };
        let validity = Duration::from_secs(cs.cert_expiry_secs);
        let subject = Subject { node_id: &node_id, role: Role::Worker, cluster_id: &cs.id, validity };
        let cert = match cs.ca.sign_csr(csr, subject) {
            Ok(cert) => cert,
            Err(e) => {
                return Response::Error { message: format!("cannot sign the certificate request: {e}") };
            }
        };
        if let Err(e) = self.records.store.put_node(&new_record(&node_id, Role::Worker, info, false)) {
            return Response::Error { message: e.to_string() };
        }
        self.last_seen.lock().unwrap_or_else(|e| e.into_inner()).insert(node_id.clone(), Instant::now());
        tracing::info!(node = %node_id, hostname = %info.hostname, "node joined");
        Response::Joined {
            node_id,
            role: Role::Worker,
            cert,
            ca: cs.ca.cert_pem.clone(),
            cluster_id: cs.id,
            gossip_keys: cs.gossip_keys,
            gossip_seed: self.config.gossip_seed,
            heartbeat_secs: self.config.heartbeat_secs,
        }
    }

    /// Reissues the manager's own certificate once 60 % of its validity has
    /// passed, and serves with it from then on.
    fn renew_own_certificate(&self) -> Result<(), Error> {
        let (issued, end) = config::certificate_life(&self.dir)?;
        let life = end.duration_since(issued).unwrap_or_default();
        if crate::clock::now() < issued + life.mul_f64(0.6) {
            return Ok(());
        }
        let cs = self.records.cluster()?;
        let validity = Duration::from_secs(cs.cert_expiry_secs);
        let subject =
            Subject { node_id: &self.config.node_id, role: Role::Manager, cluster_id: &cs.id, validity };
        let (cert, key) = cs.ca.issue(subject)?;
        config::replace_key_pair(&self.dir, &cert, &key)
            .map_err(Error::io("replace the manager's key pair"))?;
        let server = transport::server_config(&cs.ca.cert_der(), &cert, &key).map_err(Error::internal)?;
        self.endpoint.set_server_config(Some(server));
        tracing::info!("manager certificate renewed");
        Ok(())
    }

    /// Marks down every worker whose heartbeats stopped.
    fn mark_down(&self) {
        let limit = self.heartbeat() * MISSED_BEFORE_DOWN;
        let _writer = self.records.write();
        let seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Ok(nodes) = self.records.store.nodes() else { return };
        for mut node in nodes {
            if node.id == self.config.node_id || node.state == NodeState::Down {
                continue;
            }
            let last = seen.get(&node.id).copied().unwrap_or(self.started);
            if last.elapsed() > limit {
                node.state = NodeState::Down;
                node.updated_at = (now_ms() / 1000) as i64;
                match self.records.store.put_node(&node) {
                    Ok(()) => tracing::info!(node = %node.id, "node down: heartbeats stopped"),
                    Err(e) => {
                        tracing::warn!(node = %node.id, error = %e, "cannot record that the node is down");
                        self.metrics.failed(Op::StoreNode);
                    }
                }
            }
        }
    }

    /// Every node record.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        self.records.nodes()
    }

    /// One node by id, id prefix or hostname, as docker finds them.
    pub fn find_node(&self, name: &str) -> Result<NodeRecord, Error> {
        self.records.find_node(name)
    }

    /// `node update`, `promote` and `demote`.
    pub fn update_node(&self, name: &str, update: &NodeUpdate) -> Result<NodeRecord, Error> {
        let _writer = self.records.write();
        let mut node = self.records.find_node(name)?;
        for label in &update.label_add {
            let (k, v) = label.split_once('=').unwrap_or((label, ""));
            if k.is_empty() {
                return Err(Error::Invalid(format!("invalid label {label:?}: use KEY or KEY=VALUE")));
            }
            node.labels.insert(k.to_owned(), v.to_owned());
        }
        for k in &update.label_rm {
            if node.labels.remove(k).is_none() {
                return Err(Error::Invalid(format!("key {k} doesn't exist in node's labels")));
            }
        }
        if let Some(a) = update.availability {
            node.availability = a;
        }
        if let Some(wanted) = update.role
            && wanted != node.role
        {
            return Err(Error::Unavailable(match wanted {
                Role::Manager => format!(
                    "cannot promote {}: a second manager needs replicated manager state, which Shoal does not have yet",
                    node.hostname
                ),
                Role::Worker => {
                    format!("cannot demote {}: the swarm would be left without a manager", node.hostname)
                }
            }));
        }
        node.updated_at = (now_ms() / 1000) as i64;
        self.records.store.put_node(&node)?;
        Ok(node)
    }

    /// `node rm`: only a down node, unless `force`; never the manager.
    pub fn remove_node(&self, name: &str, force: bool) -> Result<NodeRecord, Error> {
        let _writer = self.records.write();
        let node = self.records.find_node(name)?;
        if node.id == self.config.node_id {
            return Err(Error::Invalid(format!(
                "rejected removal of node {}: it is the manager; use `shoal swarm leave --force` on it instead",
                node.id
            )));
        }
        if node.state != NodeState::Down && !force {
            return Err(Error::Invalid(format!(
                "node {} is not down and can't be removed: stop its daemon first, or use --force",
                node.id
            )));
        }
        self.records.store.remove_node(&node.id)?;
        self.last_seen.lock().unwrap_or_else(|e| e.into_inner()).remove(&node.id);
        Ok(node)
    }

    /// Creates an overlay network: a subnet (asked or from the pool) and a
    /// VNI from the IPAM, recorded in the store.
    pub fn create_network(
        &self,
        name: &str,
        subnet: Option<&str>,
        attachable: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<NetworkRecord, Error> {
        names::check(Kind::Network, name)?;
        let subnet = subnet
            .map(|s| s.parse::<shoal_wire::ip::Ipv4Cidr>().map_err(|e| Error::Invalid(e.to_string())))
            .transpose()?;
        let _writer = self.records.write();
        self.create_network_locked(name, attachable, labels, |ipam| ipam.create(name, subnet))
    }

    /// Creates the routing mesh's network if there is none (at every start:
    /// a swarm made before the mesh gets it too).
    fn ensure_ingress(&self) -> Result<(), Error> {
        let _writer = self.records.write();
        if self.records.store.networks()?.iter().any(|n| n.ingress || n.name == INGRESS) {
            return Ok(());
        }
        let record =
            self.create_network_locked(INGRESS, false, BTreeMap::new(), |ipam| ipam.create_ingress(INGRESS))?;
        tracing::info!(subnet = %record.subnet, vni = record.vni, "manager: created the ingress network");
        Ok(())
    }

    /// Records a network whose subnet and VNI `allocate` takes from the
    /// IPAM. Call with the writer lock held.
    fn create_network_locked(
        &self,
        name: &str,
        attachable: bool,
        labels: BTreeMap<String, String>,
        allocate: impl FnOnce(&mut Ipam) -> Result<NetworkAlloc, IpamError>,
    ) -> Result<NetworkRecord, Error> {
        if self.records.store.networks()?.iter().any(|n| n.name == name) {
            return Err(Error::Conflict(format!("network with name {name} already exists")));
        }
        let mut ipam = self.records.ipam()?;
        let alloc = allocate(&mut ipam).map_err(|e| Error::Invalid(e.to_string()))?;
        let record = NetworkRecord {
            id: new_id()?,
            name: name.to_owned(),
            driver: "overlay".into(),
            attachable,
            subnet: alloc.subnet.clone(),
            gateway: alloc.gateway().to_string(),
            vni: alloc.vni,
            created_at: (now_ms() / 1000) as i64,
            ingress: name == INGRESS,
            labels,
        };
        self.records.store.put_ipam(&ipam)?;
        self.records.store.put_network(&record)?;
        Ok(record)
    }

    /// Every network, by name.
    pub fn networks(&self) -> Result<Vec<NetworkRecord>, Error> {
        self.records.networks()
    }

    /// One network by name, id or id prefix.
    pub fn find_network(&self, name: &str) -> Result<NetworkRecord, Error> {
        self.records.find_network(name)
    }

    /// Removes a network and frees its subnet and VNI; refused while a
    /// service uses it.
    pub fn remove_network(&self, name: &str) -> Result<NetworkRecord, Error> {
        let _writer = self.records.write();
        let network = self.records.find_network(name)?;
        if network.ingress {
            return Err(Error::Invalid(format!(
                "{} is the routing mesh's network and cannot be removed",
                network.name
            )));
        }
        let users = self.orch.network_users(&network.name);
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "network {} is in use by service {}: remove the service first",
                network.name,
                users.join(", ")
            )));
        }
        if let Some(mut ipam) = self.records.store.ipam()? {
            // A network the IPAM does not know has nothing to free.
            let _ = ipam.remove(&network.name);
            self.records.store.put_ipam(&ipam)?;
        }
        self.records.store.remove_network(&network.name)?;
        Ok(network)
    }

    /// The join token for `role`, after a new secret if `rotate`.
    pub fn join_token(&self, role: Role, rotate: bool) -> Result<String, Error> {
        let _writer = self.records.write();
        let mut cs = self.records.cluster()?;
        if rotate {
            let secret = ca::random()?;
            match role {
                Role::Worker => cs.worker_secret = secret,
                Role::Manager => cs.manager_secret = secret,
            }
            self.records.store.put_cluster(&cs)?;
        }
        let secret = match role {
            Role::Worker => cs.worker_secret,
            Role::Manager => cs.manager_secret,
        };
        Ok(JoinToken::new(cs.ca.digest(), secret).to_string())
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, manager: Weak<Manager>) {
    while let Some(incoming) = endpoint.accept().await {
        let manager = manager.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let peer = transport::peer_node(&conn);
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let Some(m) = manager.upgrade() else { return };
                let peer = peer.clone();
                // One task per stream: a long poll must not hold up heartbeats.
                tokio::spawn(async move {
                    let answer = match transport::read_message::<Request>(&mut recv).await {
                        Ok(request) => m.handle(request, peer.as_ref()).await,
                        Err(e) => Response::Error { message: e.to_string() },
                    };
                    drop(m);
                    // A peer gone meanwhile gets no answer.
                    let _ = transport::write_message(&mut send, &answer).await;
                    let _ = send.finish();
                });
            }
        });
    }
}

async fn monitor_loop(manager: Weak<Manager>) {
    let mut rounds = 0u64;
    loop {
        tokio::time::sleep(MONITOR_EVERY).await;
        let Some(m) = manager.upgrade() else { return };
        m.mark_down();
        rounds += 1;
        if rounds.is_multiple_of(RENEW_CHECK_ROUNDS)
            && let Err(e) = m.renew_own_certificate()
        {
            tracing::warn!(error = %e, "cannot renew the manager's certificate");
        }
    }
}
