//! Services and tasks as the manager stores them and the agents run them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A task's state, as SwarmKit's: it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created by the orchestrator.
    New,
    /// Waiting for a node.
    Pending,
    /// Given to a node.
    Assigned,
    /// The node took it.
    Accepted,
    /// The node prepares its sandbox.
    Preparing,
    /// Ready to start.
    Ready,
    /// Starting.
    Starting,
    /// Running.
    Running,
    /// Exited with status 0.
    Complete,
    /// Stopped on request.
    Shutdown,
    /// Exited non-zero or could not run.
    Failed,
    /// The node refused it.
    Rejected,
    /// Being removed.
    Remove,
    /// Its node is gone.
    Orphaned,
}

impl TaskState {
    /// Whether the task has stopped for good.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// The name docker prints (`Running`, `Shutdown`...).
    pub fn title(self) -> &'static str {
        match self {
            TaskState::New => "New",
            TaskState::Pending => "Pending",
            TaskState::Assigned => "Assigned",
            TaskState::Accepted => "Accepted",
            TaskState::Preparing => "Preparing",
            TaskState::Ready => "Ready",
            TaskState::Starting => "Starting",
            TaskState::Running => "Running",
            TaskState::Complete => "Complete",
            TaskState::Shutdown => "Shutdown",
            TaskState::Failed => "Failed",
            TaskState::Rejected => "Rejected",
            TaskState::Remove => "Remove",
            TaskState::Orphaned => "Orphaned",
        }
    }
}

/// When a task that stopped is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never.
    None,
    /// When it failed.
    OnFailure,
    /// Whenever it stopped.
    #[default]
    Any,
}

/// `--restart-*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// When to restart.
    pub condition: RestartCondition,
    /// Wait before the replacement starts, in ms (Swarm: 5 s).
    pub delay_ms: u64,
    /// Restarts allowed within the window; 0 is unlimited.
    pub max_attempts: u64,
    /// The window restarts are counted in, in ms; 0 is forever.
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy { condition: RestartCondition::Any, delay_ms: 5_000, max_attempts: 0, window_ms: 0 }
    }
}

/// `--update-failure-action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop updating.
    #[default]
    Pause,
    /// Keep going.
    Continue,
    /// Go back to the previous spec.
    Rollback,
}

/// `--update-order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one.
    #[default]
    StopFirst,
    /// Start the new task, then stop the old one.
    StartFirst,
}

/// `--update-*` and `--rollback-*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks updated at once; 0 is all.
    pub parallelism: u64,
    /// Wait between batches, in ms.
    pub delay_ms: u64,
    /// What a failed update does.
    pub failure_action: FailureAction,
    /// How long a new task is watched for failure, in ms.
    pub monitor_ms: u64,
    /// Failures tolerated, as a fraction of the tasks updated.
    pub max_failure_ratio: f64,
    /// Stop-first or start-first.
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> UpdateConfig {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// Limits and reservations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU limit in nano-CPUs; 0 is none.
    pub limit_nano_cpus: u64,
    /// Memory limit in bytes; 0 is none.
    pub limit_memory: u64,
    /// Process limit; 0 is none.
    pub limit_pids: u64,
    /// CPU reserved, in nano-CPUs.
    pub reserve_nano_cpus: u64,
    /// Memory reserved, in bytes.
    pub reserve_memory: u64,
}

/// `--health-*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Shell command run inside the task; exit 0 is healthy.
    pub cmd: String,
    /// Between checks, in ms.
    pub interval_ms: u64,
    /// A check taking longer fails, in ms.
    pub timeout_ms: u64,
    /// Consecutive failures before unhealthy.
    pub retries: u64,
    /// Failures in this first period do not count, in ms.
    pub start_period_ms: u64,
}

/// Placement: constraints, preferences, replicas per node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// `node.labels.zone==east`...
    pub constraints: Vec<String>,
    /// Label keys of `spread=node.labels.KEY` preferences.
    pub spread: Vec<String>,
    /// At most this many tasks per node; 0 is unlimited.
    pub max_replicas: u64,
}

/// What a mount brings into a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A named volume: a directory the node keeps under its data directory,
    /// made at first use, kept across task restarts and removals.
    Volume,
    /// A path of the node.
    Bind,
    /// A fresh, empty tmpfs of the task's own.
    Tmpfs,
}

/// A filesystem mounted into each task (`--mount`, a compose file's
/// `volumes:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mount {
    /// Volume, bind or tmpfs.
    pub kind: MountKind,
    /// The volume's name or the node's path; empty for a tmpfs (and for an
    /// anonymous volume, which gets a name of its own per task).
    pub source: String,
    /// Where it appears inside the task (absolute).
    pub target: String,
    /// Mounted read-only.
    pub readonly: bool,
}

/// What each task of a service runs: a change here rolls the tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The program (the "image"), looked up on the node's PATH.
    pub image: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// User (name or uid, optionally `:group`).
    pub user: Option<String>,
    /// Hostname inside the task.
    pub hostname: Option<String>,
    /// Network names.
    pub networks: Vec<String>,
    /// More names of the service, per network (`--network name=N,alias=A`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Placement.
    pub placement: Placement,
    /// Resources.
    pub resources: Resources,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Healthcheck.
    pub health: Option<HealthCheck>,
    /// Stop signal name (`SIGTERM`).
    pub stop_signal: String,
    /// Wait before SIGKILL, in ms.
    pub stop_grace_ms: u64,
    /// Bumped by `service update --force`.
    pub force_update: u64,
    /// Volumes, binds and tmpfs mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

impl Default for TaskSpec {
    fn default() -> TaskSpec {
        TaskSpec {
            image: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            workdir: None,
            user: None,
            hostname: None,
            networks: Vec::new(),
            aliases: BTreeMap::new(),
            placement: Placement::default(),
            resources: Resources::default(),
            restart: RestartPolicy::default(),
            health: None,
            stop_signal: "SIGTERM".into(),
            stop_grace_ms: 10_000,
            force_update: 0,
            mounts: Vec::new(),
        }
    }
}

/// Replicated or global.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// This many tasks.
    Replicated {
        /// Desired tasks.
        replicas: u64,
    },
    /// One task per eligible node.
    Global,
}

/// How a service is reached by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP per network, balanced over the tasks by the data plane.
    #[default]
    Vip,
    /// The name answers the healthy task addresses (DNS round-robin).
    Dnsrr,
}

/// How a VIP picks a task for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbPolicy {
    /// Each in turn.
    #[default]
    RoundRobin,
    /// The task with the fewest connections.
    LeastConn,
    /// Maglev consistent hashing: a task that goes moves only its own flows.
    Maglev,
}

/// How a service is found and balanced: docker's endpoint mode, and what
/// Shoal adds (DNS TTL, balancing policy, client affinity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointConfig {
    /// `vip` or `dnsrr`.
    pub mode: EndpointMode,
    /// TTL of the service's DNS answers, seconds (Swarm's is a fixed 600).
    pub dns_ttl_secs: u32,
    /// How the VIP balances.
    pub lb: LbPolicy,
    /// Client-IP affinity: a client keeps its task this long (ms) after its
    /// last connection; `None` is off.
    pub affinity_ms: Option<u64>,
}

/// The DNS TTL a service gets unless it asks for another.
pub const DEFAULT_DNS_TTL_SECS: u32 = 5;

impl Default for EndpointConfig {
    fn default() -> EndpointConfig {
        EndpointConfig {
            mode: EndpointMode::Vip,
            dns_ttl_secs: DEFAULT_DNS_TTL_SECS,
            lb: LbPolicy::RoundRobin,
            affinity_ms: None,
        }
    }
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortConfig {
    /// Its name (SRV queries may use it: `_http._tcp.web`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port every node answers on.
    pub published: u16,
    /// The task's port.
    pub target: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `ingress` or `host`.
    pub mode: String,
    /// Send a PROXY protocol v2 header to the task, so it sees the client's
    /// address (Shoal's addition; Swarm loses it, moby#25526).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
    /// Send connections only to tasks on the node that took them (Shoal's
    /// addition; one hop, refused when the node has none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local_only: bool,
}

/// The overlay network of the routing mesh: every task of a service with
/// an ingress-mode published port is attached to it, and every node's mesh
/// reaches the service's VIP there.
pub const INGRESS: &str = "ingress";

/// The first port handed out when a published port is left out, as docker's.
pub const FIRST_DYNAMIC_PORT: u16 = 30_000;
/// The last one.
pub const LAST_DYNAMIC_PORT: u16 = 32_767;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Mode.
    pub mode: Mode,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Task template.
    pub task: TaskSpec,
    /// Rolling update.
    pub update: UpdateConfig,
    /// Rollback.
    pub rollback: UpdateConfig,
    /// Published ports.
    pub ports: Vec<PortConfig>,
    /// How the service is found and balanced.
    #[serde(default)]
    pub endpoint: EndpointConfig,
    /// Services (by name) whose tasks must run, and be healthy when they
    /// have a healthcheck, before this one's tasks are placed: a compose
    /// file's `depends_on`, which Swarm ignores and Shoal honours.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

impl ServiceSpec {
    /// Whether a port is published through the routing mesh.
    pub fn uses_ingress(&self) -> bool {
        self.ports.iter().any(|p| p.mode == "ingress")
    }

    /// Whether a mesh port sends only to the receiving node's tasks (the
    /// service then needs a local VIP).
    pub fn uses_local_policy(&self) -> bool {
        self.endpoint.mode == EndpointMode::Vip
            && self.ports.iter().any(|p| p.mode == "ingress" && p.local_only)
    }

    /// The networks the service's tasks are attached to: its own, and
    /// [`INGRESS`] when it publishes a port through the mesh.
    pub fn attached_networks(&self) -> Vec<String> {
        let mut networks = self.task.networks.clone();
        if self.uses_ingress() && !networks.iter().any(|n| n == INGRESS) {
            networks.push(INGRESS.to_owned());
        }
        networks
    }
}

/// Where a rolling update stands, as `service inspect` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Rolling.
    Updating,
    /// Stopped by a failure.
    Paused,
    /// Done.
    Completed,
    /// Rolling back.
    RollbackStarted,
    /// A rollback stopped by a failure.
    RollbackPaused,
    /// Rolled back.
    RollbackCompleted,
}

/// A rolling update in progress or finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// State.
    pub state: UpdateState,
    /// Why it is in that state.
    pub message: String,
    /// When it started, ms.
    pub started_ms: u64,
    /// When it finished, ms.
    pub completed_ms: Option<u64>,
    /// New tasks still being started or monitored.
    #[serde(default)]
    pub in_flight: Vec<InFlight>,
    /// No new batch before this time, ms.
    #[serde(default)]
    pub next_batch_ms: u64,
    /// Tasks updated so far.
    #[serde(default)]
    pub updated: u64,
    /// New tasks that failed while monitored.
    #[serde(default)]
    pub failures: u64,
    /// Tasks to update in all.
    #[serde(default)]
    pub total: u64,
}

/// A task of the current update batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The new task.
    pub new: String,
    /// Start-first: the old task, stopped once the new one runs.
    pub old: Option<String>,
    /// When the new task was first seen running, ms.
    pub running_since: Option<u64>,
}

impl UpdateStatus {
    /// An update (or rollback) that starts at `now`.
    pub fn started(state: UpdateState, message: String, now: u64) -> UpdateStatus {
        UpdateStatus {
            state,
            message,
            started_ms: now,
            completed_ms: None,
            in_flight: Vec::new(),
            next_batch_ms: now,
            updated: 0,
            failures: 0,
            total: 0,
        }
    }

    /// Whether tasks are still being rolled.
    pub fn active(&self) -> bool {
        matches!(self.state, UpdateState::Updating | UpdateState::RollbackStarted)
    }
}

/// An address of a service or task on a network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// Network name.
    pub network: String,
    /// VNI.
    pub vni: u32,
    /// Subnet.
    pub subnet: String,
    /// Address.
    pub ip: std::net::Ipv4Addr,
    /// The service's VIP on this network, on a task's attachment (none in
    /// `dnsrr` mode, and on the service's own VIP attachments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
    /// On a task's `ingress` attachment: the service's local VIP there
    /// (see [`Service::local_vip`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_vip: Option<std::net::Ipv4Addr>,
}

/// What one node runs: its tasks, and its routing mesh's address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    /// Every task assigned to the node.
    pub tasks: Vec<Task>,
    /// The node's address on the `ingress` network, once it exists.
    pub mesh: Option<Attachment>,
}

/// A service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Id.
    pub id: String,
    /// Bumped on every change.
    pub version: u64,
    /// Current spec.
    pub spec: ServiceSpec,
    /// The spec before the last update (what `rollback` returns to).
    pub previous: Option<ServiceSpec>,
    /// Virtual IPs, one per network.
    pub vips: Vec<Attachment>,
    /// A second VIP on `ingress`, for ports with `traffic-policy=local`:
    /// each node balances it over its own tasks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_vip: Option<Attachment>,
    /// Rolling update state.
    pub update_status: Option<UpdateStatus>,
    /// ms.
    pub created_ms: u64,
    /// ms.
    pub updated_ms: u64,
}

/// What a node last said about a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// State.
    pub state: TaskState,
    /// When it reached it, ms.
    pub timestamp_ms: u64,
    /// What happened (`started`, `pending task scheduling`...).
    pub message: String,
    /// Why it failed.
    pub err: Option<String>,
    /// Exit code, once exited.
    pub exit_code: Option<i32>,
    /// `starting`, `healthy` or `unhealthy` when the task has a healthcheck.
    pub health: Option<String>,
}

impl TaskStatus {
    /// A status in `state` at `now`.
    pub fn new(state: TaskState, now: u64, message: &str) -> TaskStatus {
        TaskStatus {
            state,
            timestamp_ms: now,
            message: message.into(),
            err: None,
            exit_code: None,
            health: None,
        }
    }

    /// The same status, with why it failed.
    pub fn with_err(mut self, err: impl Into<String>) -> TaskStatus {
        self.err = Some(err.into());
        self
    }
}

/// What a task's node announces about its service, besides the task: the
/// service directory of every node is made of these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskEndpoint {
    /// Mode, TTL, balancing.
    pub config: EndpointConfig,
    /// The service's ports (SRV answers).
    pub ports: Vec<PortConfig>,
    /// The stack the service belongs to (label `com.docker.stack.namespace`).
    pub stack: Option<String>,
}

/// The label naming a service's stack, as docker's.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

impl TaskEndpoint {
    /// The endpoint of `spec`'s tasks.
    pub fn of(spec: &ServiceSpec) -> TaskEndpoint {
        TaskEndpoint {
            config: spec.endpoint,
            ports: spec.ports.clone(),
            stack: spec.labels.get(STACK_LABEL).cloned(),
        }
    }
}

/// One run of a service's slot on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Id.
    pub id: String,
    /// Service id.
    pub service_id: String,
    /// Service name.
    pub service_name: String,
    /// Slot (1..=replicas); 0 for global tasks.
    pub slot: u64,
    /// The node it is on, once assigned (global tasks: from creation).
    pub node_id: Option<String>,
    /// What it runs.
    pub spec: TaskSpec,
    /// The service version it was made from.
    pub service_version: u64,
    /// What the orchestrator wants.
    pub desired: TaskState,
    /// What the node reports.
    pub status: TaskStatus,
    /// Addresses on its networks.
    pub attachments: Vec<Attachment>,
    /// Not started before this time, ms (restart delay).
    pub start_at_ms: u64,
    /// Restarts of its slot in the current window.
    pub restarts: u64,
    /// When that window began, ms.
    pub window_start_ms: u64,
    /// Stop-first update: not started before this task has stopped.
    pub after: Option<String>,
    /// Whether the orchestrator already handled its end (replaced or not).
    pub handled: bool,
    /// How its service is found and balanced, kept current by the
    /// orchestrator (a change does not replace the task).
    #[serde(default)]
    pub endpoint: TaskEndpoint,
    /// ms.
    pub created_ms: u64,
}

impl Task {
    /// Whether the task counts toward its slot: wanted running and not ended.
    pub fn is_runnable(&self) -> bool {
        self.desired <= TaskState::Running && !self.status.state.is_terminal()
    }

    /// The name docker prints: `web.3` or `web.<node id>`.
    pub fn name(&self) -> String {
        if self.slot == 0 {
            format!("{}.{}", self.service_name, self.node_id.as_deref().unwrap_or(""))
        } else {
            format!("{}.{}", self.service_name, self.slot)
        }
    }
}
