//! This node's place in a swarm: inactive, the manager, or a worker.
//!
//! The manager holds the cluster state (`shoal-control`'s redb [`Store`]),
//! signs certificates for joiners, serves QUIC on the control port with
//! mutual TLS, and marks nodes down when their heartbeats stop. A worker
//! keeps a QUIC session to the manager and heartbeats over it. Both run
//! gossip with the key ring that only the control channel hands out.
//!
//! On disk, under `<data dir>/swarm/`: `swarm.json` (role, ids, manager
//! address, gossip keys), `node.crt`, `node.key`, `ca.crt`, and on the
//! manager `state.redb`.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shoal_control::ca::{self, ClusterCa, Role, Subject};
use shoal_control::ipam::Ipam;
use shoal_control::store::{ClusterState, NetworkRecord, NodeRecord, Store};
use shoal_control::token::JoinToken;
use shoal_control::transport::{self, SERVER_NAME};

use super::state::{ApiError, State};

/// Heartbeat period unless `swarm init` says otherwise (Swarm: 5 s).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Missed heartbeats before a node is Down (about 15 s by default).
const MISSED_BEFORE_DOWN: u32 = 3;

/// What `swarm.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmConfig {
    /// Cluster id.
    pub cluster_id: String,
    /// This node's id in the cluster (its certificate's CN).
    pub node_id: String,
    /// This node's role.
    pub role: Role,
    /// The manager's control address.
    pub manager: SocketAddr,
    /// The manager's gossip address (the gossip seed).
    pub gossip_seed: SocketAddrV4,
    /// The gossip key ring, as key-file text.
    pub gossip_keys: String,
    /// Heartbeat period in seconds.
    pub heartbeat_secs: u64,
}

/// This node's place in a swarm.
pub enum Cluster {
    /// In no swarm.
    Inactive,
    /// The manager.
    Manager(Arc<Manager>),
    /// A worker.
    Worker(Worker),
}

/// A worker's running session.
pub struct Worker {
    config: SwarmConfig,
    session: tokio::task::JoinHandle<()>,
}

/// The manager's running services and state.
pub struct Manager {
    config: SwarmConfig,
    dir: PathBuf,
    /// Serialises read-modify-write of records (heartbeats, the down
    /// monitor, `node update/rm`, token rotation, the orchestrator), so
    /// none undoes another.
    pub writer: Mutex<()>,
    pub(super) store: Store,
    pub(super) orch: super::services::Orchestration,
    last_seen: Mutex<HashMap<String, Instant>>,
    started: Instant,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A node's description, sent with joins and heartbeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Hostname.
    pub hostname: String,
    /// Underlay address.
    pub addr: String,
    /// CPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

/// Control-plane requests on 2377.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    /// Join with a token's secret and a CSR (no client certificate yet).
    Join { secret: [u8; 16], csr: String, info: NodeInfo },
    /// I am alive (mutual TLS: the certificate says who).
    Heartbeat,
    /// A new certificate for the same identity, over a new key.
    Renew { csr: String },
    /// This node's tasks, once they differ from the digest `known` (a long
    /// poll of up to 5 s).
    Assignments { known: u64 },
    /// Task status and output from this node's agent.
    Report { reports: Vec<super::agent::Report> },
}

/// Control-plane answers.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Response {
    Joined {
        node_id: String,
        role: Role,
        cert: String,
        ca: String,
        cluster_id: String,
        gossip_keys: String,
        gossip_seed: SocketAddrV4,
        heartbeat_secs: u64,
    },
    Ok {
        heartbeat_secs: u64,
    },
    Renewed {
        cert: String,
    },
    Assignments {
        digest: u64,
        tasks: Vec<shoal_orch::Task>,
    },
    Error {
        message: String,
    },
}

fn swarm_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("swarm")
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A Swarm-style node or cluster id: 25 base-36 characters.
pub(super) fn new_id() -> Result<String, ApiError> {
    let mut n = u128::from_le_bytes(ca::random().map_err(internal)?);
    Ok((0..25)
        .map(|_| {
            let d = (n % 36) as u32;
            n /= 36;
            char::from_digit(d, 36).expect("below 36")
        })
        .collect())
}

fn random_secret() -> Result<[u8; 16], ApiError> {
    ca::random().map_err(internal)
}

/// Upper bounds on `swarm init` settings, so no arithmetic on them overflows.
const MAX_HEARTBEAT_SECS: u64 = 3600;
const MAX_CERT_EXPIRY_SECS: u64 = 20 * 365 * 86_400;

pub(super) fn internal<E: std::fmt::Display>(e: E) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn local_info(state: &State) -> NodeInfo {
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    NodeInfo {
        hostname: state.settings.hostname.clone(),
        addr: state.settings.advertise_addr.to_string(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes,
    }
}

fn record(id: &str, role: Role, info: &NodeInfo, leader: bool) -> NodeRecord {
    NodeRecord {
        id: id.to_owned(),
        hostname: info.hostname.clone(),
        role,
        availability: "active".into(),
        labels: Default::default(),
        addr: info.addr.clone(),
        state: "ready".into(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        cpus: info.cpus,
        memory_bytes: info.memory_bytes,
        engine_version: env!("CARGO_PKG_VERSION").into(),
        leader,
        created_at: now_unix(),
        updated_at: now_unix(),
    }
}

/// Creates the swarm directory readable by root alone: it holds the node's
/// key and, on the manager, the CA's key in the state store.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

fn write_files(dir: &Path, config: &SwarmConfig, cert: &str, key: &str, ca: &str) -> std::io::Result<()> {
    private_dir(dir)?;
    std::fs::write(dir.join("node.crt"), cert)?;
    std::fs::write(dir.join("node.key"), key)?;
    std::fs::set_permissions(dir.join("node.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::write(dir.join("ca.crt"), ca)?;
    std::fs::write(dir.join("swarm.json"), serde_json::to_vec_pretty(config).expect("serialisable"))
}

/// Replaces the node's key and certificate: both written beside the old
/// ones (the key 0600), then renamed over them, certificate last, so a crash
/// leaves the old pair or a key whose certificate is still the old one's
/// successor to be fetched again, never a half-written file.
fn replace_key_pair(dir: &Path, cert: &str, key: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("node.key.new"))?;
    file.write_all(key.as_bytes())?;
    file.sync_all()?;
    std::fs::write(dir.join("node.crt.new"), cert)?;
    std::fs::rename(dir.join("node.key.new"), dir.join("node.key"))?;
    std::fs::rename(dir.join("node.crt.new"), dir.join("node.crt"))
}

/// What `swarm init` is asked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// Must be the daemon's advertise address if given.
    pub advertise_addr: Option<String>,
    /// Must be the daemon's listen address if given.
    pub listen_addr: Option<String>,
    /// Address pool for networks.
    pub default_addr_pool: Option<String>,
    /// VXLAN port; must be the daemon's if given.
    pub data_path_port: Option<u16>,
    /// Heartbeat period in seconds.
    pub dispatcher_heartbeat_secs: Option<u64>,
    /// Validity of node certificates in seconds.
    pub cert_expiry_secs: Option<u64>,
}

/// `swarm init`: creates the cluster with this node as its manager.
pub async fn init(state: &Arc<State>, req: InitRequest) -> Result<serde_json::Value, ApiError> {
    let mut cluster = state.cluster.lock().await;
    if !matches!(*cluster, Cluster::Inactive) {
        return Err(ApiError::Unavailable(
            "this node is already part of a swarm: use `shoal swarm leave` to leave it first".into(),
        ));
    }
    if let Some(addr) = &req.advertise_addr {
        let own = state.settings.advertise_addr.to_string();
        let host = addr.split(':').next().unwrap_or(addr);
        if host != own {
            return Err(ApiError::BadRequest(format!(
                "the daemon advertises {own}; restart it with --advertise-addr {host} to advertise that address"
            )));
        }
    }
    if let Some(addr) = &req.listen_addr {
        let own = state.settings.listen_addr.to_string();
        let host = addr.split(':').next().unwrap_or(addr);
        if host != own {
            return Err(ApiError::BadRequest(format!(
                "the daemon listens on {own}; restart it with --listen-addr {host} to listen there"
            )));
        }
    }
    if let Some(port) = req.data_path_port
        && port != state.settings.data_port
    {
        return Err(ApiError::BadRequest(format!(
            "the daemon's VXLAN port is {}; restart it with --data-path-port {port}",
            state.settings.data_port
        )));
    }
    let pool = req.default_addr_pool.unwrap_or_else(|| "10.0.0.0/8".into());
    pool.parse::<shoal_wire::ip::Ipv4Cidr>().map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let heartbeat_secs = req.dispatcher_heartbeat_secs.unwrap_or(DEFAULT_HEARTBEAT.as_secs());
    if !(1..=MAX_HEARTBEAT_SECS).contains(&heartbeat_secs) {
        return Err(ApiError::BadRequest("--dispatcher-heartbeat must be between 1s and 1h".into()));
    }
    if state.gossip().is_ok() {
        return Err(ApiError::Unavailable(
            "this daemon already gossips with --gossip-key-file: restart it without that flag to use a swarm"
                .into(),
        ));
    }
    let cluster_id = new_id()?;
    let node_id = new_id()?;
    let ca = ClusterCa::create(&cluster_id).map_err(internal)?;
    let cert_expiry_secs = req.cert_expiry_secs.unwrap_or(ca::NODE_CERT_VALIDITY.as_secs());
    if !(10..=MAX_CERT_EXPIRY_SECS).contains(&cert_expiry_secs) {
        return Err(ApiError::BadRequest("--cert-expiry must be between 10s and 20 years".into()));
    }
    let validity = Duration::from_secs(cert_expiry_secs);
    let subject = Subject { node_id: &node_id, role: Role::Manager, cluster_id: &cluster_id, validity };
    let (cert, key) = ca.issue(subject).map_err(internal)?;
    let gossip_keys = super::keygen().map_err(internal)?;
    let dir = swarm_dir(state.data_dir());
    private_dir(&dir).map_err(internal)?;
    let store = Store::open(&dir.join("state.redb")).map_err(internal)?;
    let cs = ClusterState {
        id: cluster_id.clone(),
        ca: ca.clone(),
        worker_secret: random_secret()?,
        manager_secret: random_secret()?,
        gossip_keys: gossip_keys.clone(),
        default_addr_pool: pool,
        data_path_port: state.settings.data_port,
        cert_expiry_secs,
        created_at: now_unix(),
    };
    store.put_cluster(&cs).map_err(internal)?;
    store.put_node(&record(&node_id, Role::Manager, &local_info(state), true)).map_err(internal)?;
    let config = SwarmConfig {
        cluster_id,
        node_id: node_id.clone(),
        role: Role::Manager,
        manager: SocketAddr::from((state.settings.advertise_addr, state.settings.control_port)),
        gossip_seed: SocketAddrV4::new(state.settings.advertise_addr, state.settings.gossip_port),
        gossip_keys,
        heartbeat_secs,
    };
    write_files(&dir, &config, &cert, &key, &ca.cert_pem).map_err(internal)?;
    drop(store);
    let manager = match start_manager(state, config).await {
        Ok(m) => m,
        Err(e) => {
            // Nothing of a swarm that never started may be resumed later.
            stop_gossip(state).await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(internal(e));
        }
    };
    let token = JoinToken::new(ca.digest(), cs.worker_secret).to_string();
    let addr = manager.config.manager;
    *cluster = Cluster::Manager(manager);
    Ok(serde_json::json!({ "node_id": node_id, "worker_token": token, "addr": addr.to_string() }))
}

/// Starts what a manager runs: store, QUIC server, down-marking, gossip.
async fn start_manager(state: &Arc<State>, config: SwarmConfig) -> anyhow::Result<Arc<Manager>> {
    let dir = swarm_dir(state.data_dir());
    let store = Store::open(&dir.join("state.redb"))?;
    let cert = std::fs::read_to_string(dir.join("node.crt"))?;
    let key = std::fs::read_to_string(dir.join("node.key"))?;
    let cs = store.cluster()?.ok_or_else(|| anyhow::anyhow!("the manager's state store holds no cluster"))?;
    let server = transport::server_config(&cs.ca.cert_der(), &cert, &key)?;
    let listen = SocketAddr::from((state.settings.listen_addr, state.settings.control_port));
    let endpoint = quinn::Endpoint::server(server, listen)?;
    if state.gossip().is_err() {
        super::start_gossip(state, super::parse_keys(&config.gossip_keys, "swarm state")?, &[]).await?;
    }
    let orch = super::services::Orchestration::load(&store)?;
    let node_id = config.node_id.clone();
    let (assign_tx, assign_rx) = tokio::sync::watch::channel(Vec::new());
    let (report_tx, report_rx) = tokio::sync::mpsc::unbounded_channel();
    state.set_agent(Some(super::agent::Agent::start(state.clone(), assign_rx, report_tx)));
    let mut manager = Manager {
        config,
        dir,
        writer: Mutex::new(()),
        store,
        orch,
        last_seen: Mutex::new(HashMap::new()),
        started: Instant::now(),
        endpoint,
        tasks: Vec::new(),
    };
    let weak = Arc::new_cyclic(|weak: &std::sync::Weak<Manager>| {
        let accept = tokio::spawn(accept_loop(manager.endpoint.clone(), weak.clone()));
        let monitor = tokio::spawn(monitor_loop(weak.clone()));
        let orchestrate = tokio::spawn(super::services::orchestrate_loop(weak.clone()));
        let agent =
            tokio::spawn(super::services::local_agent_loop(weak.clone(), node_id, assign_tx, report_rx));
        manager.tasks = vec![accept, monitor, orchestrate, agent];
        manager
    });
    tracing::info!(addr = %listen, "manager: control plane listening");
    Ok(weak)
}

async fn accept_loop(endpoint: quinn::Endpoint, manager: std::sync::Weak<Manager>) {
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
                    let _ = transport::write_message(&mut send, &answer).await;
                    let _ = send.finish();
                });
            }
        });
    }
}

async fn monitor_loop(manager: std::sync::Weak<Manager>) {
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(m) = manager.upgrade() else { return };
        m.mark_down();
        ticks += 1;
        if ticks.is_multiple_of(20)
            && let Err(e) = m.renew_own_certificate()
        {
            tracing::warn!(error = %e, "cannot renew the manager's certificate");
        }
    }
}

impl Manager {
    fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.config.heartbeat_secs)
    }

    /// The node a dispatch request comes from: it must hold a certificate
    /// of a node still in the swarm.
    fn dispatched_node<'a>(&self, peer: Option<&'a (String, Role)>) -> Result<&'a str, String> {
        let Some((id, _)) = peer else {
            return Err("dispatching needs the node's certificate".into());
        };
        if !matches!(self.store.node(id), Ok(Some(_))) {
            return Err("this node was removed from the swarm".into());
        }
        Ok(id)
    }

    async fn handle(&self, request: Request, peer: Option<&(String, Role)>) -> Response {
        match request {
            Request::Assignments { known } => match self.dispatched_node(peer) {
                Ok(node) => {
                    let (digest, tasks) = self.assignments_after(node, known, Duration::from_secs(5)).await;
                    Response::Assignments { digest, tasks }
                }
                Err(message) => Response::Error { message },
            },
            Request::Report { reports } => match self.dispatched_node(peer) {
                Ok(node) => {
                    self.apply_reports(node, reports);
                    Response::Ok { heartbeat_secs: self.config.heartbeat_secs }
                }
                Err(message) => Response::Error { message },
            },
            Request::Join { secret, csr, info } => self.join(secret, &csr, &info),
            Request::Renew { csr } => {
                let Some((id, role)) = peer else {
                    return Response::Error {
                        message: "renewal needs the node's current certificate".into(),
                    };
                };
                let Ok(Some(cs)) = self.store.cluster() else {
                    return Response::Error { message: "the manager has no cluster state".into() };
                };
                if !matches!(self.store.node(id), Ok(Some(_))) {
                    return Response::Error { message: "this node was removed from the swarm".into() };
                }
                let validity = Duration::from_secs(cs.cert_expiry_secs);
                let subject = Subject { node_id: id, role: *role, cluster_id: &cs.id, validity };
                match cs.ca.sign_csr(&csr, subject) {
                    Ok(cert) => {
                        tracing::info!(node = %id, "certificate renewed");
                        Response::Renewed { cert }
                    }
                    Err(e) => {
                        Response::Error { message: format!("cannot sign the certificate request: {e}") }
                    }
                }
            }
            Request::Heartbeat => {
                let Some((id, _)) = peer else {
                    return Response::Error { message: "heartbeats need the node's certificate".into() };
                };
                let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                match self.store.node(id) {
                    Ok(Some(mut node)) => {
                        self.last_seen
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(id.clone(), Instant::now());
                        if node.state != "ready" {
                            node.state = "ready".into();
                            node.updated_at = now_unix();
                            let _ = self.store.put_node(&node);
                            tracing::info!(node = %id, "node ready");
                        }
                        Response::Ok { heartbeat_secs: self.config.heartbeat_secs }
                    }
                    _ => Response::Error { message: "this node was removed from the swarm".into() },
                }
            }
        }
    }

    fn join(&self, secret: [u8; 16], csr: &str, info: &NodeInfo) -> Response {
        let Ok(Some(cs)) = self.store.cluster() else {
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
        if let Err(e) = self.store.put_node(&record(&node_id, Role::Worker, info, false)) {
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
    fn renew_own_certificate(&self) -> anyhow::Result<()> {
        let dir = &self.dir;
        let cert = std::fs::read_to_string(dir.join("node.crt"))?;
        let der = ca::pem_to_der(&cert).ok_or_else(|| anyhow::anyhow!("node.crt is not PEM"))?;
        let (_, _, not_after) = ca::identity(&der)?;
        let issued = std::fs::metadata(dir.join("node.crt"))?.modified()?;
        let end = std::time::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64);
        let life = end.duration_since(issued).unwrap_or_default();
        if std::time::SystemTime::now() < issued + life.mul_f64(0.6) {
            return Ok(());
        }
        let cs = self.store.cluster()?.ok_or_else(|| anyhow::anyhow!("no cluster"))?;
        let validity = Duration::from_secs(cs.cert_expiry_secs);
        let subject =
            Subject { node_id: &self.config.node_id, role: Role::Manager, cluster_id: &cs.id, validity };
        let (cert, key) = cs.ca.issue(subject)?;
        replace_key_pair(dir, &cert, &key)?;
        self.endpoint.set_server_config(Some(transport::server_config(&cs.ca.cert_der(), &cert, &key)?));
        tracing::info!("manager certificate renewed");
        Ok(())
    }

    /// Marks down every worker whose heartbeats stopped.
    fn mark_down(&self) {
        let limit = self.heartbeat() * MISSED_BEFORE_DOWN;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Ok(nodes) = self.store.nodes() else { return };
        for mut node in nodes {
            if node.id == self.config.node_id || node.state == "down" {
                continue;
            }
            let last = seen.get(&node.id).copied().unwrap_or(self.started);
            if last.elapsed() > limit {
                node.state = "down".into();
                node.updated_at = now_unix();
                let _ = self.store.put_node(&node);
                tracing::info!(node = %node.id, "node down: heartbeats stopped");
            }
        }
    }

    /// Every node record.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, ApiError> {
        let mut nodes = self.store.nodes().map_err(internal)?;
        nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
        Ok(nodes)
    }

    /// Finds one node by id, id prefix or hostname, as docker does.
    pub fn find(&self, name: &str) -> Result<NodeRecord, ApiError> {
        pick(self.nodes()?, name, "node", |n| (&n.id, &n.hostname))
    }

    /// Stores a changed node.
    pub fn put(&self, node: &NodeRecord) -> Result<(), ApiError> {
        self.store.put_node(node).map_err(internal)
    }

    /// Removes a node record.
    pub fn remove(&self, id: &str) -> Result<(), ApiError> {
        self.store.remove_node(id).map_err(internal)?;
        self.last_seen.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        Ok(())
    }

    /// Creates an overlay network: a subnet (asked or from the pool) and a
    /// VNI from the IPAM, recorded in the store.
    pub fn create_network(
        &self,
        name: &str,
        subnet: Option<&str>,
        attachable: bool,
    ) -> Result<NetworkRecord, ApiError> {
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err(ApiError::BadRequest(format!(
                "invalid network name {name:?}: use up to 63 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )));
        }
        let subnet = subnet
            .map(|s| s.parse::<shoal_wire::ip::Ipv4Cidr>().map_err(|e| ApiError::BadRequest(e.to_string())))
            .transpose()?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if self.store.networks().map_err(internal)?.iter().any(|n| n.name == name) {
            return Err(ApiError::Conflict(format!("network with name {name} already exists")));
        }
        let mut ipam = match self.store.ipam().map_err(internal)? {
            Some(ipam) => ipam,
            None => {
                let cs = self.store.cluster().map_err(internal)?.ok_or_else(|| internal("no cluster"))?;
                let pool = cs.default_addr_pool.parse().map_err(internal)?;
                Ipam::new(pool, 24)
            }
        };
        let alloc = ipam.create(name, subnet).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let record = NetworkRecord {
            id: new_id()?,
            name: name.to_owned(),
            driver: "overlay".into(),
            attachable,
            subnet: alloc.subnet.clone(),
            gateway: alloc.gateway().to_string(),
            vni: alloc.vni,
            created_at: now_unix(),
        };
        self.store.put_ipam(&ipam).map_err(internal)?;
        self.store.put_network(&record).map_err(internal)?;
        Ok(record)
    }

    /// Every network, by name.
    pub fn networks(&self) -> Result<Vec<NetworkRecord>, ApiError> {
        let mut all = self.store.networks().map_err(internal)?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// One network by name, id or id prefix.
    pub fn find_network(&self, name: &str) -> Result<NetworkRecord, ApiError> {
        pick(self.networks()?, name, "network", |n| (&n.id, &n.name))
    }

    /// Removes a network and frees its subnet and VNI.
    pub fn remove_network(&self, name: &str) -> Result<NetworkRecord, ApiError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let network = self.find_network(name)?;
        let users = self.network_users(&network.name);
        if !users.is_empty() {
            return Err(ApiError::Conflict(format!(
                "network {} is in use by service {}: remove the service first",
                network.name,
                users.join(", ")
            )));
        }
        if let Some(mut ipam) = self.store.ipam().map_err(internal)? {
            let _ = ipam.remove(&network.name);
            self.store.put_ipam(&ipam).map_err(internal)?;
        }
        self.store.remove_network(&network.name).map_err(internal)?;
        Ok(network)
    }

    /// This manager's node id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The join token for `role`, after a new secret if `rotate`.
    pub fn join_token(&self, role: Role, rotate: bool) -> Result<String, ApiError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut cs = self.store.cluster().map_err(internal)?.ok_or_else(|| internal("no cluster"))?;
        if rotate {
            match role {
                Role::Worker => cs.worker_secret = random_secret()?,
                Role::Manager => cs.manager_secret = random_secret()?,
            }
            self.store.put_cluster(&cs).map_err(internal)?;
        }
        let secret = match role {
            Role::Worker => cs.worker_secret,
            Role::Manager => cs.manager_secret,
        };
        Ok(JoinToken::new(cs.ca.digest(), secret).to_string())
    }

    /// The control address workers join.
    pub fn addr(&self) -> SocketAddr {
        self.config.manager
    }

    fn stop(&self) {
        self.endpoint.close(0u32.into(), b"leaving");
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Finds one of `items` as docker does: by exact id, else by name (which
/// must be unique), else by id prefix (which must be unique).
pub(super) fn pick<T: Clone>(
    items: Vec<T>,
    wanted: &str,
    kind: &str,
    keys: impl Fn(&T) -> (&String, &String),
) -> Result<T, ApiError> {
    if let Some(item) = items.iter().find(|i| keys(i).0 == wanted) {
        return Ok(item.clone());
    }
    let by_name: Vec<&T> = items.iter().filter(|i| keys(i).1 == wanted).collect();
    let matches = if by_name.is_empty() {
        items.iter().filter(|i| keys(i).0.starts_with(wanted)).collect()
    } else {
        by_name
    };
    match matches[..] {
        [one] => Ok(one.clone()),
        [] => Err(ApiError::NotFound(format!("{kind} {wanted} not found"))),
        _ => Err(ApiError::BadRequest(format!("{kind} {wanted} is ambiguous ({} matches)", matches.len()))),
    }
}

/// `swarm join`: joins the swarm of the manager at `remote` with `token`.
pub async fn join(state: &Arc<State>, token: &str, remote: &str) -> Result<serde_json::Value, ApiError> {
    let mut cluster = state.cluster.lock().await;
    if !matches!(*cluster, Cluster::Inactive) {
        return Err(ApiError::Unavailable(
            "this node is already part of a swarm: use `shoal swarm leave` to leave it first".into(),
        ));
    }
    let token: JoinToken =
        token.parse().map_err(|e: shoal_control::TokenError| ApiError::BadRequest(e.to_string()))?;
    let remote_addr = resolve(remote)?;
    let client = transport::join_client_config(token.ca_digest).map_err(internal)?;
    let conn = connect(client, remote_addr).await?;
    let (csr, key) = ca::new_csr().map_err(internal)?;
    let request = Request::Join { secret: token.secret, csr, info: local_info(state) };
    let answer: Response =
        transport::call(&conn, &request).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    conn.close(0u32.into(), b"joined");
    let Response::Joined { node_id, role, cert, ca, cluster_id, gossip_keys, gossip_seed, heartbeat_secs } =
        answer
    else {
        return match answer {
            Response::Error { message } => Err(ApiError::BadRequest(message)),
            _ => Err(internal("unexpected answer from the manager")),
        };
    };
    let config = SwarmConfig {
        cluster_id,
        node_id: node_id.clone(),
        role,
        manager: remote_addr,
        gossip_seed,
        gossip_keys,
        heartbeat_secs,
    };
    write_files(&swarm_dir(state.data_dir()), &config, &cert, &key, &ca).map_err(internal)?;
    let worker = start_worker(state, config).await.map_err(internal)?;
    *cluster = Cluster::Worker(worker);
    Ok(serde_json::json!({ "node_id": node_id, "role": role }))
}

fn resolve(remote: &str) -> Result<SocketAddr, ApiError> {
    let with_port = if remote.contains(':') { remote.to_owned() } else { format!("{remote}:2377") };
    with_port.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid manager address {remote:?}: use IP:PORT, such as 192.0.2.1:2377"
        ))
    })
}

async fn connect(config: quinn::ClientConfig, remote: SocketAddr) -> Result<quinn::Connection, ApiError> {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))).map_err(internal)?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint.connect(remote, SERVER_NAME).map_err(internal)?;
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            let text = e.to_string();
            if text.contains(transport::CA_MISMATCH) {
                Err(ApiError::BadRequest(transport::CA_MISMATCH.into()))
            } else {
                Err(ApiError::Unavailable(format!("cannot reach the manager at {remote}: {text}")))
            }
        }
        Err(_) => Err(ApiError::Unavailable(format!(
            "timed out reaching the manager at {remote}: check the address and port 2377"
        ))),
    }
}

async fn start_worker(state: &Arc<State>, config: SwarmConfig) -> anyhow::Result<Worker> {
    if state.gossip().is_err() {
        super::start_gossip(
            state,
            super::parse_keys(&config.gossip_keys, "swarm state")?,
            &[config.gossip_seed],
        )
        .await?;
    }
    let (assign_tx, assign_rx) = tokio::sync::watch::channel(Vec::new());
    let (report_tx, report_rx) = tokio::sync::mpsc::unbounded_channel();
    state.set_agent(Some(super::agent::Agent::start(state.clone(), assign_rx, report_tx)));
    let outbox =
        Arc::new(tokio::sync::Mutex::new(super::services::Outbox { rx: report_rx, pending: Vec::new() }));
    let session =
        tokio::spawn(session_loop(swarm_dir(state.data_dir()), config.manager, Arc::new(assign_tx), outbox));
    Ok(Worker { config, session })
}

/// The client configuration from this node's certificate files, and when the
/// certificate should be renewed: at a random point between 50 % and 80 % of
/// its validity, as Swarm does.
fn session_client(dir: &Path) -> anyhow::Result<(quinn::ClientConfig, std::time::SystemTime)> {
    let cert = std::fs::read_to_string(dir.join("node.crt"))?;
    let key = std::fs::read_to_string(dir.join("node.key"))?;
    let ca = std::fs::read_to_string(dir.join("ca.crt"))?;
    let ca_der = ca::pem_to_der(&ca).ok_or_else(|| anyhow::anyhow!("ca.crt is not PEM"))?;
    let cert_der = ca::pem_to_der(&cert).ok_or_else(|| anyhow::anyhow!("node.crt is not PEM"))?;
    let (_, _, not_after) = ca::identity(&cert_der)?;
    let not_before = std::fs::metadata(dir.join("node.crt"))?.modified()?;
    let end = std::time::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64);
    let life = end.duration_since(not_before).unwrap_or_default();
    let fraction = 0.5 + 0.3 * f64::from(ca::random::<1>().map_or(128, |b| b[0])) / 255.0;
    Ok((transport::client_config(&ca_der, &cert, &key)?, not_before + life.mul_f64(fraction)))
}

/// Keeps a mutual-TLS session to the manager, heartbeats over it, renews
/// the node certificate when due, and reconnects when the session drops.
async fn session_loop(
    dir: PathBuf,
    manager: SocketAddr,
    assignments: Arc<tokio::sync::watch::Sender<Vec<shoal_orch::Task>>>,
    outbox: Arc<tokio::sync::Mutex<super::services::Outbox>>,
) {
    loop {
        let (client, renew_at) = match session_client(&dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot load this node's certificate");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        match connect(client, manager).await {
            Ok(conn) => {
                let dispatch = tokio::spawn(super::services::worker_agent_session(
                    conn.clone(),
                    assignments.clone(),
                    outbox.clone(),
                ));
                heartbeat_until_failure(&conn, &dir, renew_at).await;
                dispatch.abort();
                conn.close(0u32.into(), b"reconnecting");
            }
            Err(e) => tracing::warn!(error = ?e, %manager, "cannot reach the manager"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Heartbeats over `conn` until it fails or the certificate is due for
/// renewal (renewed here; the caller reconnects with it).
async fn heartbeat_until_failure(conn: &quinn::Connection, dir: &Path, renew_at: std::time::SystemTime) {
    loop {
        if std::time::SystemTime::now() >= renew_at {
            match renew(conn, dir).await {
                Ok(()) => tracing::info!("node certificate renewed"),
                Err(e) => tracing::warn!(error = %e, "certificate renewal failed"),
            }
            return;
        }
        match transport::call::<_, Response>(conn, &Request::Heartbeat).await {
            Ok(Response::Ok { heartbeat_secs }) => {
                tokio::time::sleep(Duration::from_secs(heartbeat_secs.max(1))).await;
            }
            Ok(Response::Error { message }) => {
                tracing::warn!(%message, "manager refused the heartbeat");
                return;
            }
            Ok(_) | Err(_) => return,
        }
    }
}

async fn renew(conn: &quinn::Connection, dir: &Path) -> anyhow::Result<()> {
    let (csr, key) = ca::new_csr()?;
    match transport::call::<_, Response>(conn, &Request::Renew { csr }).await? {
        Response::Renewed { cert } => {
            replace_key_pair(dir, &cert, &key)?;
            Ok(())
        }
        Response::Error { message } => anyhow::bail!(message),
        _ => anyhow::bail!("unexpected answer to a renewal"),
    }
}

/// Resumes the swarm role recorded on disk after a restart.
pub async fn resume(state: &Arc<State>) -> anyhow::Result<()> {
    let path = swarm_dir(state.data_dir()).join("swarm.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let config: SwarmConfig = serde_json::from_str(&text)?;
    let mut cluster = state.cluster.lock().await;
    *cluster = match config.role {
        Role::Manager => Cluster::Manager(start_manager(state, config).await?),
        Role::Worker => Cluster::Worker(start_worker(state, config).await?),
    };
    Ok(())
}

/// `swarm leave`.
pub async fn leave(state: &Arc<State>, force: bool) -> Result<(), ApiError> {
    let mut cluster = state.cluster.lock().await;
    match &*cluster {
        Cluster::Inactive => return Err(ApiError::Unavailable("this node is not part of a swarm".into())),
        Cluster::Manager(m) => {
            if !force {
                return Err(ApiError::BadRequest(
                    "you are attempting to leave the swarm on a node that is its manager: the swarm and its state would be lost; use --force to ignore this message".into(),
                ));
            }
            m.stop();
        }
        Cluster::Worker(w) => w.session.abort(),
    }
    stop_agent(state).await;
    stop_gossip(state).await;
    let _ = std::fs::remove_dir_all(swarm_dir(state.data_dir()));
    *cluster = Cluster::Inactive;
    Ok(())
}

/// Stops every task of this node (the assignment channel closed with the
/// manager or session) and waits for them to be gone.
pub async fn stop_agent(state: &State) {
    if let Some(agent) = state.take_agent() {
        agent.stop_all();
        agent.drained(Duration::from_secs(30)).await;
    }
}

/// Leaves gossip and stops its driver, freeing the gossip port.
async fn stop_gossip(state: &State) {
    if let Ok(gossip) = state.gossip() {
        gossip.leave().await;
        gossip.stop().await;
    }
    state.set_gossip(None);
}

/// What `GET /v1/swarm` answers.
pub async fn info(state: &Arc<State>) -> serde_json::Value {
    match &*state.cluster.lock().await {
        Cluster::Inactive => serde_json::json!({ "state": "inactive" }),
        Cluster::Manager(m) => serde_json::json!({
            "state": "active", "role": "manager", "node_id": m.config.node_id, "cluster_id": m.config.cluster_id,
            "manager": m.config.manager.to_string(),
        }),
        Cluster::Worker(w) => serde_json::json!({
            "state": "active", "role": "worker", "node_id": w.config.node_id, "cluster_id": w.config.cluster_id,
            "manager": w.config.manager.to_string(),
        }),
    }
}

/// The manager, or the error docker gives on a worker.
pub async fn manager(state: &Arc<State>) -> Result<Arc<Manager>, ApiError> {
    match &*state.cluster.lock().await {
        Cluster::Manager(m) => Ok(m.clone()),
        Cluster::Worker(_) => Err(ApiError::Unavailable(
            "this node is not a swarm manager: worker nodes can't be used to view or modify cluster state; run this command on a manager node".into(),
        )),
        Cluster::Inactive => Err(ApiError::Unavailable(
            "this node is not a swarm manager: use `shoal swarm init` or `shoal swarm join` to connect this node to a swarm and try again".into(),
        )),
    }
}
