//! This node's place in a swarm: inactive, the manager, or a worker; and
//! the verbs that change it (`swarm init`, `join`, `leave`) or bring it
//! back after a restart.
//!
//! The swarm does not start gossip or tasks itself: it reports each role
//! change to the node as a [`RoleEvent`] and waits for the node to act on
//! it, so arrows go from the node down to the swarm, never back up.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_control::ca::{self, ClusterCa, Role, Subject};
use shoal_control::token::JoinToken;
use shoal_control::transport;
use shoal_control::{ClusterState, NodeInfo, Report, Request, Response, Store};
use shoal_gossip::KeyRing;
use shoal_orch::Assignments;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::config::{self, SwarmConfig};
use super::dispatch::Outbox;
use super::manager::{self, DEFAULT_HEARTBEAT, LocalRunner, Manager};
use super::records::new_id;
use super::worker;
use crate::clock::now_ms;
use crate::error::Error;
use crate::keys;
use crate::metrics::Metrics;
use crate::settings::Settings;

/// Upper bounds on `swarm init` settings, so no arithmetic on them overflows.
const MAX_HEARTBEAT_SECS: u64 = 3600;
const MAX_CERT_EXPIRY_SECS: u64 = 20 * 365 * 86_400;

/// A role change, for the node to act on.
#[derive(Debug)]
pub enum RoleEvent {
    /// This node is in a swarm now: gossip with `keys` (joining through
    /// `seeds`) and run the tasks `assignments` lists, reporting to
    /// `reports`. The node answers on `done` once it does.
    Joined {
        /// The swarm's gossip key ring.
        keys: KeyRing,
        /// Gossip addresses to join through.
        seeds: Vec<SocketAddrV4>,
        /// This node's tasks.
        assignments: watch::Receiver<Assignments>,
        /// Where the task runner reports.
        reports: mpsc::UnboundedSender<Report>,
        /// Whether the node could.
        done: oneshot::Sender<Result<(), Error>>,
    },
    /// The swarm's gossip key ring changed (a rotation's step): gossip
    /// with `keys` from now on. The node answers on `done` once it does.
    GossipKeys {
        /// The new ring.
        keys: KeyRing,
        /// Done.
        done: oneshot::Sender<()>,
    },
    /// This node left its swarm: stop its tasks (waiting for them) and
    /// leave gossip. The node answers on `done` once it did.
    Left {
        /// Done.
        done: oneshot::Sender<()>,
    },
}

/// Gossips with the swarm's key ring `keys` from now on: tells the node
/// (over `events`) and records it in `dir`'s `swarm.json`.
pub(super) async fn apply_gossip_keys(
    events: &mpsc::Sender<RoleEvent>,
    dir: &std::path::Path,
    keys: &shoal_control::GossipKeys,
) -> Result<(), Error> {
    let ring = keys::parse(&keys.keys, "the manager's gossip keys")?;
    let (done, answer) = oneshot::channel();
    events
        .send(RoleEvent::GossipKeys { keys: ring, done })
        .await
        .map_err(|_| Error::Internal("the node is stopping".into()))?;
    answer.await.map_err(|_| Error::Internal("the node is stopping".into()))?;
    config::record_gossip_keys(dir, &keys.keys, keys.version)
}

/// This node's part in a swarm.
#[derive(Debug)]
enum Part {
    Inactive,
    Manager(Arc<Manager>),
    Worker { config: SwarmConfig, session: JoinHandle<()> },
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

/// What `swarm init` answers.
#[derive(Debug, Serialize)]
pub struct Initialized {
    /// This node's id.
    pub node_id: String,
    /// The worker join token.
    pub worker_token: String,
    /// Where workers join.
    pub addr: String,
}

/// What `swarm join` answers.
#[derive(Debug, Serialize)]
pub struct Joined {
    /// This node's id.
    pub node_id: String,
    /// Its role.
    pub role: Role,
}

/// Where this node stands, as `GET /v1/swarm` answers.
#[derive(Debug, Serialize)]
pub struct SwarmInfo {
    /// `inactive` or `active`.
    pub state: &'static str,
    /// The role, when active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// This node's id, when active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The cluster's id, when active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The manager's control address, when active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
}

/// This node's swarm membership.
#[derive(Debug)]
pub struct Swarm {
    part: Mutex<Part>,
    settings: Arc<Settings>,
    metrics: Metrics,
    events: mpsc::Sender<RoleEvent>,
}

/// This node as the manager records it.
fn local_info(settings: &Settings) -> NodeInfo {
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    NodeInfo {
        hostname: settings.hostname.clone(),
        addr: settings.advertise_addr.to_string(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes,
    }
}

fn already_in_a_swarm() -> Error {
    Error::Unavailable(
        "this node is already part of a swarm: use `shoal swarm leave` to leave it first".into(),
    )
}

impl Swarm {
    /// Outside any swarm; role changes go to `events`.
    pub fn new(settings: Arc<Settings>, metrics: Metrics, events: mpsc::Sender<RoleEvent>) -> Swarm {
        Swarm { part: Mutex::new(Part::Inactive), settings, metrics, events }
    }

    /// Tells the node it is in a swarm, and waits until it acted on it.
    async fn joined(
        &self,
        config: &SwarmConfig,
        seeds: Vec<SocketAddrV4>,
        runner: LocalRunner,
    ) -> Result<(), Error> {
        let keys = keys::parse(&config.gossip_keys, "swarm state")?;
        let (done, answer) = oneshot::channel();
        let event =
            RoleEvent::Joined { keys, seeds, assignments: runner.assignments, reports: runner.reports, done };
        self.events.send(event).await.map_err(|_| Error::Internal("the node is stopping".into()))?;
        answer.await.map_err(|_| Error::Internal("the node is stopping".into()))?
    }

    /// Tells the node it left its swarm, and waits until it stopped its
    /// tasks and gossip.
    async fn left(&self) {
        let (done, answer) = oneshot::channel();
        if self.events.send(RoleEvent::Left { done }).await.is_ok() {
            let _ = answer.await;
        }
    }

    async fn start_manager(&self, config: SwarmConfig) -> Result<Arc<Manager>, Error> {
        let (manager, runner) =
            Manager::start(&self.settings, config.clone(), self.metrics.clone(), self.events.clone())?;
        if let Err(e) = self.joined(&config, Vec::new(), runner).await {
            manager.stop();
            return Err(e);
        }
        Ok(manager)
    }

    async fn start_worker(&self, config: SwarmConfig) -> Result<Part, Error> {
        let (assign_tx, assign_rx) = watch::channel(Assignments::default());
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let outbox = Arc::new(Mutex::new(Outbox::new(report_rx)));
        let dir = config::swarm_dir(&self.settings.data_dir);
        let keys = worker::Keys { events: self.events.clone(), applied: config.gossip_keys_version };
        let session = tokio::spawn(worker::session(dir, config.manager, Arc::new(assign_tx), outbox, keys));
        let runner = LocalRunner { assignments: assign_rx, reports: report_tx };
        if let Err(e) = self.joined(&config, vec![config.gossip_seed], runner).await {
            session.abort();
            return Err(e);
        }
        Ok(Part::Worker { config, session })
    }

    /// `swarm init`: creates the cluster with this node as its manager.
    pub async fn init(&self, req: InitRequest) -> Result<Initialized, Error> {
        let mut part = self.part.lock().await;
        if !matches!(*part, Part::Inactive) {
            return Err(already_in_a_swarm());
        }
        let s = &self.settings;
        // Addresses and ports are the daemon's: init can only confirm them.
        let differs = |given: &Option<String>, own: std::net::Ipv4Addr| {
            let host = given.as_deref().map(|a| a.split(':').next().unwrap_or(a).to_owned());
            host.filter(|h| *h != own.to_string())
        };
        if let Some(host) = differs(&req.advertise_addr, s.advertise_addr) {
            return Err(Error::Invalid(format!(
                "the daemon advertises {}; restart it with --advertise-addr {host} to advertise that address",
                s.advertise_addr
            )));
        }
        if let Some(host) = differs(&req.listen_addr, s.listen_addr) {
            return Err(Error::Invalid(format!(
                "the daemon listens on {}; restart it with --listen-addr {host} to listen there",
                s.listen_addr
            )));
        }
        if let Some(port) = req.data_path_port
            && port != s.data_port
        {
            return Err(Error::Invalid(format!(
                "the daemon's VXLAN port is {}; restart it with --data-path-port {port}",
                s.data_port
            )));
        }
        let pool = req.default_addr_pool.unwrap_or_else(|| "10.0.0.0/8".into());
        pool.parse::<shoal_wire::ip::Ipv4Cidr>().map_err(|e| Error::Invalid(e.to_string()))?;
        let heartbeat_secs = req.dispatcher_heartbeat_secs.unwrap_or(DEFAULT_HEARTBEAT.as_secs());
        if !(1..=MAX_HEARTBEAT_SECS).contains(&heartbeat_secs) {
            return Err(Error::Invalid("--dispatcher-heartbeat must be between 1s and 1h".into()));
        }
        let cert_expiry_secs = req.cert_expiry_secs.unwrap_or(ca::NODE_CERT_VALIDITY.as_secs());
        if !(10..=MAX_CERT_EXPIRY_SECS).contains(&cert_expiry_secs) {
            return Err(Error::Invalid("--cert-expiry must be between 10s and 20 years".into()));
        }
        if s.gossip_key_file.is_some() {
            return Err(Error::Unavailable(
                "this daemon already gossips with --gossip-key-file: restart it without that flag to use a swarm".into(),
            ));
        }
        let cluster_id = new_id()?;
        let node_id = new_id()?;
        let ca = ClusterCa::create(&cluster_id)?;
        let validity = Duration::from_secs(cert_expiry_secs);
        let subject = Subject { node_id: &node_id, role: Role::Manager, cluster_id: &cluster_id, validity };
        let (cert, key) = ca.issue(subject)?;
        let gossip_keys = keys::keygen()?;
        let dir = config::swarm_dir(&s.data_dir);
        config::private_dir(&dir)?;
        let cluster = ClusterState {
            id: cluster_id.clone(),
            ca: ca.clone(),
            worker_secret: ca::random()?,
            manager_secret: ca::random()?,
            gossip_keys: gossip_keys.clone(),
            gossip_keys_version: 0,
            default_addr_pool: pool,
            data_path_port: s.data_port,
            cert_expiry_secs,
            created_at: (now_ms() / 1000) as i64,
        };
        let worker_secret = cluster.worker_secret;
        {
            let store = Store::open(&dir.join("state.redb"))?;
            store.put_cluster(&cluster)?;
            store.put_node(&manager::new_record(&node_id, Role::Manager, &local_info(s), true))?;
        }
        let config = SwarmConfig {
            cluster_id,
            node_id: node_id.clone(),
            role: Role::Manager,
            manager: SocketAddr::from((s.advertise_addr, s.control_port)),
            gossip_seed: s.gossip_addr(),
            gossip_keys,
            gossip_keys_version: 0,
            heartbeat_secs,
        };
        let started = match config::write_files(&dir, &config, &cert, &key, &ca.cert_pem) {
            Ok(()) => self.start_manager(config).await,
            Err(e) => Err(e),
        };
        let manager = match started {
            Ok(m) => m,
            Err(e) => {
                // Nothing of a swarm that never started may be resumed later.
                self.left().await;
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let token = JoinToken::new(ca.digest(), worker_secret).to_string();
        let addr = manager.addr().to_string();
        *part = Part::Manager(manager);
        Ok(Initialized { node_id, worker_token: token, addr })
    }

    /// `swarm join`: joins the swarm of the manager at `remote` with `token`.
    pub async fn join(&self, token: &str, remote: &str) -> Result<Joined, Error> {
        let mut part = self.part.lock().await;
        if !matches!(*part, Part::Inactive) {
            return Err(already_in_a_swarm());
        }
        let token: JoinToken =
            token.parse().map_err(|e: shoal_control::TokenError| Error::Invalid(e.to_string()))?;
        let remote_addr = manager_addr(remote)?;
        let client = transport::join_client_config(token.ca_digest).map_err(Error::internal)?;
        let conn = worker::connect(client, remote_addr).await?;
        let (csr, key) = ca::new_csr()?;
        let request = Request::Join { secret: token.secret, csr, info: local_info(&self.settings) };
        let answer: Response =
            transport::call(&conn, &request).await.map_err(|e| Error::Unavailable(e.to_string()))?;
        conn.close(0u32.into(), b"joined");
        let (node_id, role_given, cert, ca_pem, cluster_id, gossip_keys, gossip_seed, heartbeat_secs) =
            match answer {
                Response::Joined {
                    node_id,
                    role,
                    cert,
                    ca,
                    cluster_id,
                    gossip_keys,
                    gossip_seed,
                    heartbeat_secs,
                } => (node_id, role, cert, ca, cluster_id, gossip_keys, gossip_seed, heartbeat_secs),
                Response::Error { message } => return Err(Error::Invalid(message)),
                _ => return Err(Error::Internal("unexpected answer from the manager".into())),
            };
        let config = SwarmConfig {
            cluster_id,
            node_id: node_id.clone(),
            role: role_given,
            manager: remote_addr,
            gossip_seed,
            gossip_keys,
            gossip_keys_version: 0,
            heartbeat_secs,
        };
        let dir = config::swarm_dir(&self.settings.data_dir);
        let started = match config::write_files(&dir, &config, &cert, &key, &ca_pem) {
            Ok(()) => self.start_worker(config).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(worker) => *part = worker,
            Err(e) => {
                self.left().await;
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        }
        Ok(Joined { node_id, role: role_given })
    }

    /// Resumes the swarm role recorded on disk after a restart.
    pub async fn resume(&self) -> Result<(), Error> {
        let Some(config) = config::read(&self.settings.data_dir)? else { return Ok(()) };
        let mut part = self.part.lock().await;
        *part = match config.role {
            Role::Manager => Part::Manager(self.start_manager(config).await?),
            Role::Worker => self.start_worker(config).await?,
        };
        Ok(())
    }

    /// `swarm leave`: stops this node's part, its tasks and gossip, and
    /// forgets the swarm.
    pub async fn leave(&self, force: bool) -> Result<(), Error> {
        let mut part = self.part.lock().await;
        match &*part {
            Part::Inactive => return Err(Error::Unavailable("this node is not part of a swarm".into())),
            Part::Manager(m) => {
                if !force {
                    return Err(Error::Invalid(
                        "you are attempting to leave the swarm on a node that is its manager: the swarm and its state would be lost; use --force to ignore this message".into(),
                    ));
                }
                m.stop();
            }
            Part::Worker { session, .. } => session.abort(),
        }
        self.left().await;
        let _ = std::fs::remove_dir_all(config::swarm_dir(&self.settings.data_dir));
        *part = Part::Inactive;
        Ok(())
    }

    /// Where this node stands.
    pub async fn info(&self) -> SwarmInfo {
        let active = |config: &SwarmConfig, role| SwarmInfo {
            state: "active",
            role: Some(role),
            node_id: Some(config.node_id.clone()),
            cluster_id: Some(config.cluster_id.clone()),
            manager: Some(config.manager.to_string()),
        };
        match &*self.part.lock().await {
            Part::Inactive => {
                SwarmInfo { state: "inactive", role: None, node_id: None, cluster_id: None, manager: None }
            }
            Part::Manager(m) => active(m.config(), Role::Manager),
            Part::Worker { config, .. } => active(config, Role::Worker),
        }
    }

    /// The manager, or the error docker gives elsewhere.
    pub async fn manager(&self) -> Result<Arc<Manager>, Error> {
        match &*self.part.lock().await {
            Part::Manager(m) => Ok(m.clone()),
            Part::Worker { .. } => Err(Error::Unavailable(
                "this node is not a swarm manager: worker nodes can't be used to view or modify cluster state; run this command on a manager node".into(),
            )),
            Part::Inactive => Err(Error::Unavailable(
                "this node is not a swarm manager: use `shoal swarm init` or `shoal swarm join` to connect this node to a swarm and try again".into(),
            )),
        }
    }
}

/// A manager's control address, `IP[:PORT]` (port 2377 if left out).
fn manager_addr(remote: &str) -> Result<SocketAddr, Error> {
    let with_port = if remote.contains(':') { remote.to_owned() } else { format!("{remote}:2377") };
    with_port.parse().map_err(|_| {
        Error::Invalid(format!("invalid manager address {remote:?}: use IP:PORT, such as 192.0.2.1:2377"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_addresses() {
        assert_eq!(manager_addr("192.0.2.1").unwrap(), "192.0.2.1:2377".parse().unwrap());
        assert_eq!(manager_addr("192.0.2.1:3000").unwrap(), "192.0.2.1:3000".parse().unwrap());
        assert!(manager_addr("manager").unwrap_err().to_string().contains("use IP:PORT"));
    }
}
