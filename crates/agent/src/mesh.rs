//! The routing mesh on this node: every published port of the swarm
//! listens here, in the node's own namespace, and each connection or UDP
//! flow goes to a backend through the overlay.
//!
//! The listeners and relays are `shoal-mesh`'s; this module decides what
//! they listen on and where each connection goes ([`Backends`], its
//! [`Upstream`]):
//!
//! - an `ingress` port (on every node): from the node's mesh sandbox
//!   (`<prefix>-mesh`, this node's address on `ingress`, handed out by the
//!   manager) to the service's VIP on `ingress`, so the data plane's VIP
//!   balancer picks the task, on any node, health-aware and draining; with
//!   `traffic-policy=local`, to the service's local VIP instead, which each
//!   node balances over its own tasks (refused at once without one);
//! - a `host` port (only where a task of the service runs): to the task's
//!   port on its own loopback, from inside its namespace.
//!
//! Mesh ports come from the directory's `ingress` network (every node
//! knows them from gossip, also while the manager is down); host ports
//! from this node's announced tasks. A port this node cannot open is
//! logged, counted and gossiped (table `mesh`), so `service ps` and
//! `service inspect` name the node and the holder; other nodes serve on,
//! and this one tries again at every sync.
//!
//! Invariants: the listeners are exactly the published ports (a failed
//! one retried every [`RETRY`]); sockets to backends are made in the
//! namespace of the route that takes them, by a thread living there
//! ([`Dialer`]); the mesh sandbox exists exactly while the manager gives
//! this node an `ingress` address.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;
use shoal_control::ipam::INGRESS_VNI;
use shoal_gossip::RowKey;
use shoal_mesh::{Limits, Mesh, PortKey, PortSpec, PortStats, Protocol, Relay, Upstream};
use shoal_orch::{Assignments, Attachment};
use shoal_runtime::NetNs;
use socket2::{Domain, Socket, Type};
use tokio::sync::{oneshot, watch};

use crate::directory::{MESH, PortProblem, ServiceDirectory};
use crate::endpoints::{Endpoints, Interface};
use crate::error::Error;
use crate::gossip_driver::GossipSlot;
use crate::settings::Settings;
use crate::tasks::prepare::sandbox_name;
use crate::tasks::rows::Announcer;

/// How often the mesh syncs when nothing wakes it (a port that could not
/// be opened is tried again then).
const RETRY: Duration = Duration::from_secs(5);

/// Connects tried per client connection while a backend refuses (a task
/// that died a moment ago), each to the balancer's next pick.
const CONNECT_ATTEMPTS: u32 = 5;

/// Threads the mesh's connections are spread over: one per core, up to
/// this many.
const MAX_MESH_THREADS: usize = 4;

/// Sockets a [`Dialer`] keeps made ahead.
const SPARE_SOCKETS: usize = 32;

/// Where one published port's connections go.
#[derive(Debug, Clone)]
enum Route {
    /// Through the mesh sandbox to a VIP on `ingress` (the service's, or
    /// its local one); `None` when a local-only port has no serving task
    /// on this node.
    Ingress { to: Option<SocketAddrV4> },
    /// To a local task's own port, from inside its namespace.
    Host { dialer: Arc<Dialer>, target: u16 },
}

/// The mesh's [`Upstream`]: a route per published port.
#[derive(Debug, Default)]
pub struct Backends {
    routes: ArcSwap<HashMap<PortKey, Route>>,
    /// Makes sockets in the mesh sandbox, while there is one.
    ingress: ArcSwapOption<Dialer>,
}

impl Backends {
    fn route(&self, port: &PortKey) -> io::Result<(Arc<Dialer>, SocketAddr)> {
        let refused = |why: &str| io::Error::new(io::ErrorKind::ConnectionRefused, why.to_owned());
        match self.routes.load().get(port) {
            Some(Route::Ingress { to: Some(to) }) => {
                let dialer =
                    self.ingress.load_full().ok_or_else(|| refused("this node has no mesh sandbox"))?;
                Ok((dialer, SocketAddr::V4(*to)))
            }
            Some(Route::Ingress { to: None }) => Err(refused("no task of the service on this node")),
            Some(Route::Host { dialer, target }) => {
                Ok((dialer.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, *target))))
            }
            None => Err(refused("the port is not published")),
        }
    }
}

impl Upstream for Backends {
    async fn connect(&self, port: &PortKey, _client: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let (dialer, to) = self.route(port)?;
        let mut attempt = 1;
        loop {
            let socket = dialer.tcp().await?;
            match tokio::net::TcpSocket::from_std_stream(socket.into()).connect(to).await {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                // A task that died before the directory knew: each new flow
                // to a VIP gets the balancer's next pick, so try again.
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        && !to.ip().is_loopback()
                        && attempt < CONNECT_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn udp(&self, port: &PortKey, _client: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        let (dialer, to) = self.route(port)?;
        let socket = dialer.udp().await?;
        socket.connect(&to.into())?;
        tokio::net::UdpSocket::from_std(socket.into())
    }
}

/// What a [`Dialer`]'s thread is asked for.
enum Ask {
    Tcp(oneshot::Sender<io::Result<Socket>>),
    Udp(oneshot::Sender<io::Result<Socket>>),
    /// Make spare TCP sockets.
    Refill,
}

/// Makes sockets inside one network namespace, from a thread that lives
/// there (a socket belongs to the namespace it was made in and works from
/// any thread after), keeping a few TCP sockets made ahead so a new
/// connection does not wait for the thread. The thread ends with the last
/// handle.
#[derive(Debug)]
pub struct Dialer {
    asks: std::sync::mpsc::Sender<Ask>,
    spare: Arc<Mutex<Vec<Socket>>>,
}

impl std::fmt::Debug for Ask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ask::Tcp(_) => "Tcp",
            Ask::Udp(_) => "Udp",
            Ask::Refill => "Refill",
        })
    }
}

fn new_socket(kind: Type) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, kind, None)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

impl Dialer {
    /// A dialer in `netns`.
    pub fn start(netns: &NetNs) -> Result<Arc<Dialer>, Error> {
        let (asks, rx) = std::sync::mpsc::channel::<Ask>();
        let spare = Arc::new(Mutex::new(Vec::with_capacity(SPARE_SOCKETS)));
        let pool = spare.clone();
        netns
            .spawn("shoal-dialer", move || {
                while let Ok(ask) = rx.recv() {
                    match ask {
                        Ask::Tcp(reply) => drop(reply.send(new_socket(Type::STREAM))),
                        Ask::Udp(reply) => drop(reply.send(new_socket(Type::DGRAM))),
                        Ask::Refill => {
                            let missing =
                                SPARE_SOCKETS - pool.lock().unwrap_or_else(|e| e.into_inner()).len();
                            let made: Vec<Socket> =
                                (0..missing).map_while(|_| new_socket(Type::STREAM).ok()).collect();
                            pool.lock().unwrap_or_else(|e| e.into_inner()).extend(made);
                        }
                    }
                }
            })
            .map_err(Error::internal)?;
        let dialer = Arc::new(Dialer { asks, spare });
        let _ = dialer.asks.send(Ask::Refill);
        Ok(dialer)
    }

    /// A TCP socket, not yet connected.
    async fn tcp(&self) -> io::Result<Socket> {
        let spare = {
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            let socket = spare.pop();
            if spare.len() == SPARE_SOCKETS / 2 {
                let _ = self.asks.send(Ask::Refill);
            }
            socket
        };
        match spare {
            Some(socket) => Ok(socket),
            None => {
                let _ = self.asks.send(Ask::Refill);
                self.ask(Ask::Tcp).await
            }
        }
    }

    /// A UDP socket, not yet connected.
    async fn udp(&self) -> io::Result<Socket> {
        self.ask(Ask::Udp).await
    }

    async fn ask(&self, ask: fn(oneshot::Sender<io::Result<Socket>>) -> Ask) -> io::Result<Socket> {
        let gone = || io::Error::other("the namespace's socket thread is gone");
        let (tx, rx) = oneshot::channel();
        self.asks.send(ask(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// A listener as `shoal debug mesh` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerView {
    /// `8080/tcp`.
    pub port: String,
    /// `ingress` or `host`.
    pub mode: &'static str,
    /// The service.
    pub service: String,
    /// Where connections go: `10.255.0.5:80 (VIP)`, `local VIP ...`,
    /// `task <id> 127.0.0.1:80`, or why nowhere.
    pub to: String,
    /// Whether the port is open here; if not, why.
    pub error: Option<String>,
}

/// What this node's mesh does, for `shoal debug mesh`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MeshView {
    /// This node's address on `ingress`, once the manager gave one.
    pub address: Option<Ipv4Addr>,
    /// Every published port.
    pub listeners: Vec<ListenerView>,
    /// The backends of each VIP the mesh reaches, with their flows, as the
    /// data plane balances them.
    pub backends: Vec<BackendView>,
}

/// A backend of a VIP on `ingress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendView {
    /// The VIP (a service's, or its local one).
    pub vip: Ipv4Addr,
    /// The task's address on `ingress`.
    pub backend: Ipv4Addr,
    /// `active` or `draining`.
    pub state: String,
    /// Connections and flows tracked to it now.
    pub flows: u64,
}

/// The mesh sandbox and its dialer.
#[derive(Debug)]
struct Sandbox {
    attachment: Attachment,
    name: String,
}

/// What one sync decided.
#[derive(Debug, Default)]
struct Wanted {
    routes: HashMap<PortKey, Route>,
    specs: Vec<PortSpec>,
    views: BTreeMap<PortKey, ListenerView>,
}

/// A thread of the mesh: a current-thread tokio runtime of its own. Each
/// TCP connection lives on one such thread, so its two sides wake the
/// thread that moves their bytes, with none of a work-stealing runtime's
/// cross-thread wake-ups, and the agent's other work does not delay them.
#[derive(Debug)]
struct MeshThread {
    handle: tokio::runtime::Handle,
    /// Dropped with the mesh: the thread's runtime ends.
    _stop: oneshot::Sender<()>,
}

impl MeshThread {
    fn start(index: usize) -> MeshThread {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the routing mesh");
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("shoal-mesh-{index}"))
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .expect("a thread for the routing mesh");
        MeshThread { handle, _stop: stop }
    }
}

/// The routing mesh of this node.
#[derive(Debug)]
pub struct RoutingMesh {
    settings: Arc<Settings>,
    endpoints: Arc<Endpoints>,
    directory: Arc<ServiceDirectory>,
    announcer: Arc<Announcer>,
    gossip: GossipSlot,
    backends: Arc<Backends>,
    mesh: Mesh<Backends>,
    /// The threads the mesh's listeners and relays run on (the first has
    /// the listeners and UDP flows; TCP connections go to each in turn).
    _threads: Vec<MeshThread>,
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    /// Dialers of local tasks with host ports, by sandbox name.
    host_dialers: Mutex<HashMap<String, Arc<Dialer>>>,
    /// What the last sync made: for the API and to log changes only.
    view: Mutex<(Vec<ListenerView>, Vec<PortProblem>)>,
}

impl RoutingMesh {
    /// A mesh with no port open, on the current runtime, listening on
    /// every address of the node's namespace.
    pub fn new(
        settings: Arc<Settings>,
        endpoints: Arc<Endpoints>,
        directory: Arc<ServiceDirectory>,
        announcer: Arc<Announcer>,
        gossip: GossipSlot,
    ) -> Arc<RoutingMesh> {
        let backends = Arc::new(Backends::default());
        let limits = Limits {
            max_connections_per_port: settings.mesh_connection_limit,
            max_udp_flows_per_port: settings.mesh_connection_limit,
            ..Limits::default()
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from).min(MAX_MESH_THREADS);
        let threads: Vec<MeshThread> = (0..cores).map(MeshThread::start).collect();
        let mesh = {
            let _runtime = threads[0].handle.enter();
            let workers = threads.iter().map(|t| t.handle.clone()).collect();
            let listen = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            Mesh::with_workers(backends.clone(), listen, limits, Relay::default(), workers)
        };
        Arc::new(RoutingMesh {
            settings,
            endpoints,
            directory,
            announcer,
            gossip,
            backends,
            mesh,
            _threads: threads,
            sandbox: tokio::sync::Mutex::new(None),
            host_dialers: Mutex::new(HashMap::new()),
            view: Mutex::new((Vec::new(), Vec::new())),
        })
    }

    /// Follows the node's assignments (its `ingress` address), the
    /// directory and the local tasks until `assignments` closes (the node
    /// left the swarm), then closes every port and the mesh sandbox.
    pub async fn follow(self: Arc<Self>, mut assignments: watch::Receiver<Assignments>) {
        let mut directory = self.directory.subscribe();
        let mut local = self.announcer.subscribe();
        loop {
            let attachment = assignments.borrow_and_update().mesh.clone();
            self.sync(attachment).await;
            tokio::select! {
                changed = assignments.changed() => if changed.is_err() { break },
                _ = directory.changed() => {}
                _ = local.changed() => {}
                () = tokio::time::sleep(RETRY) => {}
            }
        }
        self.close().await;
    }

    /// Closes every port and removes the mesh sandbox.
    async fn close(&self) {
        let _ = self.mesh.set(Vec::new());
        self.backends.routes.store(Arc::default());
        self.backends.ingress.store(None);
        self.host_dialers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if let Some(old) = self.sandbox.lock().await.take()
            && let Err(e) = self.endpoints.remove(&old.name).await
        {
            tracing::warn!(sandbox = %old.name, error = %e, "mesh: cannot remove the mesh sandbox");
        }
        self.publish_problems(Vec::new()).await;
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
    }

    /// Makes the sandbox, routes and listeners what the node's state says.
    async fn sync(&self, attachment: Option<Attachment>) {
        self.sync_sandbox(attachment).await;
        let wanted = self.wanted();
        self.backends.routes.store(Arc::new(wanted.routes));
        let errors = self.mesh.set(wanted.specs);
        let mut views = wanted.views;
        let problems: Vec<PortProblem> = errors
            .iter()
            .map(|e| PortProblem {
                port: e.key.port,
                protocol: e.key.protocol.as_str().to_owned(),
                error: e.error.clone(),
                holder: e.holder.as_ref().map(ToString::to_string),
            })
            .collect();
        for (e, p) in errors.iter().zip(&problems) {
            if let Some(view) = views.get_mut(&e.key) {
                view.error = Some(describe(p));
            }
        }
        let listeners: Vec<ListenerView> = views.into_values().collect();
        let changed = {
            let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            let changed = view.1 != problems;
            *view = (listeners, problems.clone());
            changed
        };
        if changed {
            for p in &problems {
                tracing::warn!(port = p.port, protocol = %p.protocol, problem = %describe(p), "mesh: cannot open a published port on this node");
            }
            self.publish_problems(problems).await;
        }
    }

    /// Creates, replaces or removes the mesh sandbox to match `attachment`.
    async fn sync_sandbox(&self, attachment: Option<Attachment>) {
        let mut sandbox = self.sandbox.lock().await;
        if sandbox.as_ref().map(|s| &s.attachment) == attachment.as_ref() {
            return;
        }
        if let Some(old) = sandbox.take() {
            self.backends.ingress.store(None);
            if let Err(e) = self.endpoints.remove(&old.name).await {
                tracing::warn!(sandbox = %old.name, error = %e, "mesh: cannot remove the mesh sandbox");
            }
        }
        let Some(a) = attachment else { return };
        let name = format!("{}-mesh", self.settings.task_prefix);
        let made = async {
            let iface = Interface::parse(a.vni, &a.subnet, a.ip)?;
            self.endpoints.create(&name, &[iface], false).await?;
            let netns = NetNs::open(&name).map_err(Error::internal)?;
            Dialer::start(&netns)
        };
        match made.await {
            Ok(dialer) => {
                tracing::info!(sandbox = %name, ip = %a.ip, "mesh: sandbox on ingress");
                self.backends.ingress.store(Some(dialer));
                *sandbox = Some(Sandbox { attachment: a, name });
            }
            Err(e) => {
                tracing::warn!(sandbox = %name, error = %e, "mesh: cannot make the mesh sandbox: mesh ports will refuse");
                let _ = self.endpoints.remove(&name).await;
            }
        }
    }

    /// The routes and listeners the directory and the local tasks ask for.
    fn wanted(&self) -> Wanted {
        let mut w = Wanted::default();
        let me = self.settings.advertise_addr;
        let index = self.directory.index();
        if let Some(ingress) = index.networks.get(&INGRESS_VNI) {
            for s in ingress.services.values() {
                let local_serving = s.tasks.iter().any(|t| t.node == me && t.serves());
                for p in s.ports.iter().filter(|p| p.mode == "ingress") {
                    let Some(key) = port_key(p.published, &p.protocol) else { continue };
                    if w.views.contains_key(&key) {
                        continue; // the manager never publishes a port twice
                    }
                    let (to, shown) = match (p.local_only, s.vip, s.local_vip) {
                        (false, Some(vip), _) => {
                            (Some(SocketAddrV4::new(vip, p.target)), format!("{vip}:{} (VIP)", p.target))
                        }
                        (true, _, Some(local)) if local_serving => (
                            Some(SocketAddrV4::new(local, p.target)),
                            format!("{local}:{} (local VIP)", p.target),
                        ),
                        (true, _, _) => (None, "nowhere: no task of the service on this node".to_owned()),
                        (false, None, _) => continue,
                    };
                    w.routes.insert(key, Route::Ingress { to });
                    w.specs.push(PortSpec { key, proxy_protocol: p.proxy_protocol });
                    w.views.insert(
                        key,
                        ListenerView {
                            port: key.to_string(),
                            mode: "ingress",
                            service: s.name.clone(),
                            to: shown,
                            error: None,
                        },
                    );
                }
            }
        }
        let mut dialers = self.host_dialers.lock().unwrap_or_else(|e| e.into_inner());
        let mut used = Vec::new();
        let mut local = self.announcer.local();
        local.sort_by(|a, b| (!a.1, &a.0.id).cmp(&(!b.1, &b.0.id))); // serving tasks first
        for (task, serves) in local {
            for p in task.endpoint.ports.iter().filter(|p| p.mode == "host") {
                let Some(key) = port_key(p.published, &p.protocol) else { continue };
                if w.views.contains_key(&key) || !serves {
                    continue;
                }
                let sandbox = sandbox_name(&self.settings.task_prefix, &task);
                let dialer = match dialers.get(&sandbox) {
                    Some(d) => d.clone(),
                    None => {
                        match NetNs::open(&sandbox).map_err(Error::internal).and_then(|ns| Dialer::start(&ns))
                        {
                            Ok(d) => {
                                dialers.insert(sandbox.clone(), d.clone());
                                d
                            }
                            Err(e) => {
                                tracing::warn!(task = %task.id, error = %e, "mesh: cannot reach a task's namespace");
                                continue;
                            }
                        }
                    }
                };
                used.push(sandbox);
                w.routes.insert(key, Route::Host { dialer, target: p.target });
                w.specs.push(PortSpec { key, proxy_protocol: p.proxy_protocol });
                let short = &task.id[..task.id.len().min(12)];
                w.views.insert(
                    key,
                    ListenerView {
                        port: key.to_string(),
                        mode: "host",
                        service: task.service_name.clone(),
                        to: format!("task {short} 127.0.0.1:{}", p.target),
                        error: None,
                    },
                );
            }
        }
        dialers.retain(|name, _| used.contains(name));
        w
    }

    /// Gossips (and records) the ports this node could not open.
    async fn publish_problems(&self, problems: Vec<PortProblem>) {
        let me = self.settings.advertise_addr;
        self.directory.set_port_problems(me, problems.clone());
        if let Ok(gossip) = self.gossip.get() {
            let key = RowKey::new(MESH, me.to_string());
            let value = (!problems.is_empty()).then(|| serde_json::to_vec(&problems).expect("serialisable"));
            gossip.write(INGRESS_VNI, key, value).await;
        }
    }

    /// The listeners and the counters of every port, for metrics.
    pub fn stats(&self) -> Vec<PortStats> {
        self.mesh.stats()
    }

    /// What `shoal debug mesh` shows.
    pub async fn view(&self, backends: Vec<shoal_dataplane::BackendFlows>) -> MeshView {
        let address = self.sandbox.lock().await.as_ref().map(|s| s.attachment.ip);
        let listeners = self.view.lock().unwrap_or_else(|e| e.into_inner()).0.clone();
        let backends = backends
            .into_iter()
            .filter(|b| b.vni.get() == INGRESS_VNI)
            .map(|b| BackendView {
                vip: b.vip,
                backend: b.backend,
                state: format!("{:?}", b.state).to_lowercase(),
                flows: b.flows,
            })
            .collect();
        MeshView { address, listeners, backends }
    }
}

fn port_key(port: u16, protocol: &str) -> Option<PortKey> {
    match protocol {
        "tcp" => Some(PortKey { port, protocol: Protocol::Tcp }),
        "udp" => Some(PortKey { port, protocol: Protocol::Udp }),
        _ => None,
    }
}

/// `address in use (held by nginx (pid 4242))`.
pub fn describe(p: &PortProblem) -> String {
    match &p.holder {
        Some(holder) => format!("{} (held by {holder})", p.error),
        None => p.error.clone(),
    }
}
