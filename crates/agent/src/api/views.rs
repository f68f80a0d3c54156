//! Every docker-shaped object the API serves, made here and only here: the
//! node, network, service and task objects of docker's Engine API (field
//! names, nesting, durations in nanoseconds, times in RFC 3339), typed in
//! both directions so the CLI reads them as types and a service spec comes
//! back in the shape it went out. Shoal's additions (`Self`, a task's
//! `Name` and `Status.Health`) are extra fields, never changed meanings.
//!
//! Invariant: a service spec survives the round trip orchestrator ->
//! docker shape -> orchestrator unchanged (a `service scale` must not roll
//! every task because a field moved).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_control::{Availability, NetworkRecord, NodeRecord, NodeState, Role};
use shoal_orch::{
    Attachment, FailureAction, HealthCheck, Placement, PortConfig, Resources, RestartCondition,
    RestartPolicy, TaskState, UpdateConfig as OrchUpdate, UpdateOrder, UpdateState,
};

use crate::clock::rfc3339;
use crate::error::Error;

const NS_PER_MS: u64 = 1_000_000;

fn ns(ms: u64) -> u64 {
    ms.saturating_mul(NS_PER_MS)
}

fn ms(ns: u64) -> u64 {
    ns / NS_PER_MS
}

/// An object's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Bumped on every change.
    #[serde(rename = "Index")]
    pub index: u64,
}

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
    /// Address management.
    #[serde(rename = "IPAM")]
    pub ipam: NetworkIpam,
    /// Driver options: the VNI.
    pub options: BTreeMap<String, String>,
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
            ipam: NetworkIpam {
                driver: "default".into(),
                config: vec![IpamConfig { subnet: n.subnet.clone(), gateway: n.gateway.clone() }],
            },
            options: BTreeMap::from([(VXLAN_ID_OPTION.to_owned(), n.vni.to_string())]),
        }
    }
}

// === Service specs ===

/// A service spec, as docker's API takes and gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What every task runs.
    pub task_template: TaskTemplate,
    /// Replicated or global.
    pub mode: Mode,
    /// Rolling updates.
    pub update_config: UpdateConfig,
    /// Rollbacks.
    pub rollback_config: UpdateConfig,
    /// Published ports.
    pub endpoint_spec: EndpointSpec,
}

/// `Spec.TaskTemplate`, and a task's `Spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskTemplate {
    /// The program and how it runs.
    pub container_spec: ContainerSpec,
    /// Limits and reservations.
    pub resources: ResourceRequirements,
    /// When tasks are replaced.
    pub restart_policy: RestartPolicyView,
    /// Where tasks go.
    pub placement: PlacementView,
    /// Networks joined.
    pub networks: Vec<NetworkAttachment>,
    /// Bumped by `service update --force`.
    pub force_update: u64,
}

/// `TaskTemplate.ContainerSpec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSpec {
    /// The program ("image"), looked up on each node's PATH.
    pub image: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// User.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Wait before SIGKILL, ns.
    pub stop_grace_period: u64,
    /// `SIGTERM`...
    pub stop_signal: String,
    /// The healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
}

/// `ContainerSpec.Healthcheck`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["CMD-SHELL", "command"]`.
    pub test: Vec<String>,
    /// ns.
    pub interval: u64,
    /// ns.
    pub timeout: u64,
    /// Failures in a row before unhealthy.
    pub retries: u64,
    /// ns.
    pub start_period: u64,
}

/// `TaskTemplate.Resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceRequirements {
    /// Limits.
    pub limits: Limits,
    /// Reservations.
    pub reservations: Reservations,
}

/// `Resources.Limits`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// nano-CPUs; 0 is none.
    #[serde(rename = "NanoCPUs")]
    pub nano_cpus: u64,
    /// Bytes; 0 is none.
    #[serde(rename = "MemoryBytes")]
    pub memory_bytes: u64,
    /// Processes; 0 is none.
    #[serde(rename = "Pids")]
    pub pids: u64,
}

/// `Resources.Reservations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservations {
    /// nano-CPUs.
    #[serde(rename = "NanoCPUs")]
    pub nano_cpus: u64,
    /// Bytes.
    #[serde(rename = "MemoryBytes")]
    pub memory_bytes: u64,
}

/// `TaskTemplate.RestartPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicyView {
    /// `none`, `on-failure`, `any`.
    pub condition: RestartCondition,
    /// ns.
    pub delay: u64,
    /// 0 is unlimited.
    pub max_attempts: u64,
    /// ns; 0 is forever.
    pub window: u64,
}

/// `TaskTemplate.Placement`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PlacementView {
    /// `node.labels.zone==east`...
    pub constraints: Vec<String>,
    /// Spread preferences.
    pub preferences: Vec<Preference>,
    /// Tasks per node; 0 is unlimited.
    pub max_replicas: u64,
}

/// `Placement.Preferences[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preference {
    /// Spread over a label's values.
    #[serde(rename = "Spread")]
    pub spread: Spread,
}

/// `Preference.Spread`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// `node.labels.KEY`.
    #[serde(rename = "SpreadDescriptor")]
    pub spread_descriptor: String,
}

/// `TaskTemplate.Networks[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// Network name.
    #[serde(rename = "Target")]
    pub target: String,
}

/// `Spec.Mode`: `{"Replicated": {"Replicas": 3}}` or `{"Global": {}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// This many tasks.
    Replicated {
        /// Desired tasks.
        #[serde(rename = "Replicas")]
        replicas: u64,
    },
    /// One task per eligible node.
    Global {},
}

/// `Spec.UpdateConfig` and `Spec.RollbackConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateConfig {
    /// Tasks at once; 0 is all.
    pub parallelism: u64,
    /// Between batches, ns.
    pub delay: u64,
    /// `pause`, `continue`, `rollback`.
    pub failure_action: FailureAction,
    /// Watch for failure, ns.
    pub monitor: u64,
    /// Failures tolerated, as a fraction.
    pub max_failure_ratio: f64,
    /// `stop-first` or `start-first`.
    pub order: UpdateOrder,
}

/// `Spec.EndpointSpec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSpec {
    /// `vip`.
    pub mode: String,
    /// Published ports.
    pub ports: Vec<PortView>,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortView {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The task's port.
    pub target_port: u16,
    /// The port every node answers on.
    pub published_port: u16,
    /// `ingress` or `host`.
    pub publish_mode: String,
}

impl From<&PortConfig> for PortView {
    fn from(p: &PortConfig) -> PortView {
        PortView {
            protocol: p.protocol.clone(),
            target_port: p.target,
            published_port: p.published,
            publish_mode: p.mode.clone(),
        }
    }
}

impl From<&PortView> for PortConfig {
    fn from(p: &PortView) -> PortConfig {
        PortConfig {
            published: p.published_port,
            target: p.target_port,
            protocol: p.protocol.clone(),
            mode: p.publish_mode.clone(),
        }
    }
}

impl From<&OrchUpdate> for UpdateConfig {
    fn from(u: &OrchUpdate) -> UpdateConfig {
        UpdateConfig {
            parallelism: u.parallelism,
            delay: ns(u.delay_ms),
            failure_action: u.failure_action,
            monitor: ns(u.monitor_ms),
            max_failure_ratio: u.max_failure_ratio,
            order: u.order,
        }
    }
}

impl From<&UpdateConfig> for OrchUpdate {
    fn from(u: &UpdateConfig) -> OrchUpdate {
        OrchUpdate {
            parallelism: u.parallelism,
            delay_ms: ms(u.delay),
            failure_action: u.failure_action,
            monitor_ms: ms(u.monitor),
            max_failure_ratio: u.max_failure_ratio,
            order: u.order,
        }
    }
}

/// The label key of a `node.labels.KEY` spread descriptor.
const SPREAD_PREFIX: &str = "node.labels.";

impl From<&shoal_orch::TaskSpec> for TaskTemplate {
    fn from(t: &shoal_orch::TaskSpec) -> TaskTemplate {
        let r = &t.resources;
        TaskTemplate {
            container_spec: ContainerSpec {
                image: t.image.clone(),
                args: t.args.clone(),
                env: t.env.clone(),
                dir: t.workdir.clone(),
                user: t.user.clone(),
                hostname: t.hostname.clone(),
                stop_grace_period: ns(t.stop_grace_ms),
                stop_signal: t.stop_signal.clone(),
                healthcheck: t.health.as_ref().map(|h| HealthConfig {
                    test: vec!["CMD-SHELL".into(), h.cmd.clone()],
                    interval: ns(h.interval_ms),
                    timeout: ns(h.timeout_ms),
                    retries: h.retries,
                    start_period: ns(h.start_period_ms),
                }),
            },
            resources: ResourceRequirements {
                limits: Limits {
                    nano_cpus: r.limit_nano_cpus,
                    memory_bytes: r.limit_memory,
                    pids: r.limit_pids,
                },
                reservations: Reservations { nano_cpus: r.reserve_nano_cpus, memory_bytes: r.reserve_memory },
            },
            restart_policy: RestartPolicyView {
                condition: t.restart.condition,
                delay: ns(t.restart.delay_ms),
                max_attempts: t.restart.max_attempts,
                window: ns(t.restart.window_ms),
            },
            placement: PlacementView {
                constraints: t.placement.constraints.clone(),
                preferences: t
                    .placement
                    .spread
                    .iter()
                    .map(|k| Preference {
                        spread: Spread { spread_descriptor: format!("{SPREAD_PREFIX}{k}") },
                    })
                    .collect(),
                max_replicas: t.placement.max_replicas,
            },
            networks: t.networks.iter().map(|n| NetworkAttachment { target: n.clone() }).collect(),
            force_update: t.force_update,
        }
    }
}

impl TryFrom<&TaskTemplate> for shoal_orch::TaskSpec {
    type Error = Error;

    fn try_from(t: &TaskTemplate) -> Result<shoal_orch::TaskSpec, Error> {
        let c = &t.container_spec;
        let health = match &c.healthcheck {
            None => None,
            Some(h) => match h.test.as_slice() {
                [kind] if kind == "NONE" => None,
                [kind, cmd] if kind == "CMD-SHELL" => Some(HealthCheck {
                    cmd: cmd.clone(),
                    interval_ms: ms(h.interval),
                    timeout_ms: ms(h.timeout),
                    retries: h.retries,
                    start_period_ms: ms(h.start_period),
                }),
                other => {
                    return Err(Error::Invalid(format!(
                        "unsupported healthcheck test {other:?}: use [\"CMD-SHELL\", \"command\"] or [\"NONE\"]"
                    )));
                }
            },
        };
        let spread = t
            .placement
            .preferences
            .iter()
            .map(|p| {
                p.spread
                    .spread_descriptor
                    .strip_prefix(SPREAD_PREFIX)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "unsupported spread descriptor {:?}: use node.labels.KEY",
                            p.spread.spread_descriptor
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        let r = &t.resources;
        Ok(shoal_orch::TaskSpec {
            image: c.image.clone(),
            args: c.args.clone(),
            env: c.env.clone(),
            workdir: c.dir.clone(),
            user: c.user.clone(),
            hostname: c.hostname.clone(),
            networks: t.networks.iter().map(|n| n.target.clone()).collect(),
            placement: Placement {
                constraints: t.placement.constraints.clone(),
                spread,
                max_replicas: t.placement.max_replicas,
            },
            resources: Resources {
                limit_nano_cpus: r.limits.nano_cpus,
                limit_memory: r.limits.memory_bytes,
                limit_pids: r.limits.pids,
                reserve_nano_cpus: r.reservations.nano_cpus,
                reserve_memory: r.reservations.memory_bytes,
            },
            restart: RestartPolicy {
                condition: t.restart_policy.condition,
                delay_ms: ms(t.restart_policy.delay),
                max_attempts: t.restart_policy.max_attempts,
                window_ms: ms(t.restart_policy.window),
            },
            health,
            stop_signal: c.stop_signal.clone(),
            stop_grace_ms: ms(c.stop_grace_period),
            force_update: t.force_update,
        })
    }
}

impl From<&shoal_orch::ServiceSpec> for ServiceSpec {
    fn from(s: &shoal_orch::ServiceSpec) -> ServiceSpec {
        ServiceSpec {
            name: s.name.clone(),
            labels: s.labels.clone(),
            task_template: TaskTemplate::from(&s.task),
            mode: match s.mode {
                shoal_orch::Mode::Replicated { replicas } => Mode::Replicated { replicas },
                shoal_orch::Mode::Global => Mode::Global {},
            },
            update_config: UpdateConfig::from(&s.update),
            rollback_config: UpdateConfig::from(&s.rollback),
            endpoint_spec: EndpointSpec {
                mode: "vip".into(),
                ports: s.ports.iter().map(PortView::from).collect(),
            },
        }
    }
}

impl TryFrom<&ServiceSpec> for shoal_orch::ServiceSpec {
    type Error = Error;

    fn try_from(s: &ServiceSpec) -> Result<shoal_orch::ServiceSpec, Error> {
        if s.endpoint_spec.mode != "vip" {
            return Err(Error::Invalid(format!(
                "endpoint mode {:?} is not supported yet: use vip",
                s.endpoint_spec.mode
            )));
        }
        Ok(shoal_orch::ServiceSpec {
            name: s.name.clone(),
            mode: match s.mode {
                Mode::Replicated { replicas } => shoal_orch::Mode::Replicated { replicas },
                Mode::Global {} => shoal_orch::Mode::Global,
            },
            labels: s.labels.clone(),
            task: shoal_orch::TaskSpec::try_from(&s.task_template)?,
            update: OrchUpdate::from(&s.update_config),
            rollback: OrchUpdate::from(&s.rollback_config),
            ports: s.endpoint_spec.ports.iter().map(PortConfig::from).collect(),
        })
    }
}

// === Services ===

/// A service, as `docker service inspect` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    /// Service id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Bumped on every change; `service update` names the one it read.
    pub version: Version,
    /// When it was made.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// What was asked.
    pub spec: ServiceSpec,
    /// What `rollback` returns to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    /// Its virtual IPs and ports.
    pub endpoint: Endpoint,
    /// The last rolling update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatusView>,
    /// Running and desired tasks.
    pub service_status: ServiceStatus,
}

/// `Service.Endpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Endpoint {
    /// The spec it follows.
    pub spec: EndpointSpec,
    /// One per network.
    #[serde(rename = "VirtualIPs")]
    pub virtual_ips: Vec<VirtualIp>,
}

/// `Endpoint.VirtualIPs[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualIp {
    /// Network name.
    #[serde(rename = "Network")]
    pub network: String,
    /// `ip/prefix`.
    #[serde(rename = "Addr")]
    pub addr: String,
}

/// `Service.UpdateStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStatusView {
    /// `updating`, `paused`, `completed`, `rollback_started`...
    pub state: UpdateState,
    /// Why.
    pub message: String,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// `Service.ServiceStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceStatus {
    /// Tasks running that should be.
    pub running_tasks: u64,
    /// Tasks that should run.
    pub desired_tasks: u64,
}

/// `ip/prefix` of an attachment.
fn with_prefix(a: &Attachment) -> String {
    format!("{}/{}", a.ip, a.subnet.split('/').nth(1).unwrap_or("24"))
}

impl Service {
    /// `service` with the counts of `tasks` (all of its tasks).
    pub fn new(service: &shoal_orch::Service, tasks: &[shoal_orch::Task]) -> Service {
        let wanted = |t: &&shoal_orch::Task| t.desired == TaskState::Running;
        let running = tasks.iter().filter(wanted).filter(|t| t.status.state == TaskState::Running).count();
        let desired = match service.spec.mode {
            shoal_orch::Mode::Replicated { replicas } => replicas,
            // One task per eligible node: the orchestrator made them.
            shoal_orch::Mode::Global => tasks.iter().filter(wanted).count() as u64,
        };
        let spec = ServiceSpec::from(&service.spec);
        Service {
            id: service.id.clone(),
            version: Version { index: service.version },
            created_at: rfc3339(service.created_ms),
            updated_at: rfc3339(service.updated_ms),
            endpoint: Endpoint {
                spec: spec.endpoint_spec.clone(),
                virtual_ips: service
                    .vips
                    .iter()
                    .map(|v| VirtualIp { network: v.network.clone(), addr: with_prefix(v) })
                    .collect(),
            },
            spec,
            previous_spec: service.previous.as_ref().map(ServiceSpec::from),
            update_status: service.update_status.as_ref().map(|u| UpdateStatusView {
                state: u.state,
                message: u.message.clone(),
                started_at: rfc3339(u.started_ms),
                completed_at: u.completed_ms.map(rfc3339),
            }),
            service_status: ServiceStatus { running_tasks: running as u64, desired_tasks: desired },
        }
    }
}

// === Tasks ===

/// A task, as `docker inspect TASK` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    /// Task id.
    #[serde(rename = "ID")]
    pub id: String,
    /// `web.3` or `web.<node id>` (Shoal's addition; docker's CLI makes it).
    pub name: String,
    /// When it was made.
    pub created_at: String,
    /// Its service.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Slot; 0 for global tasks.
    pub slot: u64,
    /// Its node, once assigned.
    #[serde(rename = "NodeID", default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// What it runs.
    pub spec: TaskTemplate,
    /// What its node reports.
    pub status: TaskStatusView,
    /// What the orchestrator wants.
    pub desired_state: TaskState,
    /// Its addresses.
    pub networks_attachments: Vec<TaskAttachment>,
}

/// `Task.Status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatusView {
    /// When it reached its state.
    pub timestamp: String,
    /// `running`, `failed`...
    pub state: TaskState,
    /// What happened.
    pub message: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
    /// How its process ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_status: Option<ContainerStatus>,
    /// `starting`, `healthy`, `unhealthy` (Shoal's addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// `Task.Status.ContainerStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Exit code.
    #[serde(rename = "ExitCode")]
    pub exit_code: i32,
}

/// `Task.NetworksAttachments[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskAttachment {
    /// The network.
    pub network: AttachedNetwork,
    /// `ip/prefix`.
    pub addresses: Vec<String>,
}

/// `NetworksAttachments[].Network`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttachedNetwork {
    /// Its spec.
    pub spec: AttachedNetworkSpec,
}

/// `NetworksAttachments[].Network.Spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttachedNetworkSpec {
    /// Network name.
    pub name: String,
}

impl From<&shoal_orch::Task> for Task {
    fn from(t: &shoal_orch::Task) -> Task {
        Task {
            id: t.id.clone(),
            name: t.name(),
            created_at: rfc3339(t.created_ms),
            service_id: t.service_id.clone(),
            slot: t.slot,
            node_id: t.node_id.clone(),
            spec: TaskTemplate::from(&t.spec),
            status: TaskStatusView {
                timestamp: rfc3339(t.status.timestamp_ms),
                state: t.status.state,
                message: t.status.message.clone(),
                err: t.status.err.clone(),
                container_status: t.status.exit_code.map(|exit_code| ContainerStatus { exit_code }),
                health: t.status.health.clone(),
            },
            desired_state: t.desired,
            networks_attachments: t
                .attachments
                .iter()
                .map(|a| TaskAttachment {
                    network: AttachedNetwork { spec: AttachedNetworkSpec { name: a.network.clone() } },
                    addresses: vec![with_prefix(a)],
                })
                .collect(),
        }
    }
}

/// A service and its tasks, read at one moment (what `service ps` and the
/// progress view show).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceTasks {
    /// The service.
    pub service: Service,
    /// Its tasks, by slot, newest first.
    pub tasks: Vec<Task>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_orch::TaskSpec;

    fn full_spec() -> shoal_orch::ServiceSpec {
        shoal_orch::ServiceSpec {
            name: "web".into(),
            mode: shoal_orch::Mode::Replicated { replicas: 5 },
            labels: BTreeMap::from([("tier".into(), "front".into())]),
            task: TaskSpec {
                image: "python3".into(),
                args: vec!["-m".into(), "http.server".into()],
                env: vec!["A=1".into()],
                workdir: Some("/srv".into()),
                user: Some("nobody".into()),
                hostname: Some("h".into()),
                networks: vec!["front".into()],
                placement: Placement {
                    constraints: vec!["node.role==worker".into()],
                    spread: vec!["zone".into()],
                    max_replicas: 2,
                },
                resources: Resources {
                    limit_nano_cpus: 500_000_000,
                    limit_memory: 64 << 20,
                    limit_pids: 100,
                    reserve_nano_cpus: 1,
                    reserve_memory: 2,
                },
                restart: RestartPolicy {
                    condition: RestartCondition::OnFailure,
                    delay_ms: 1500,
                    max_attempts: 3,
                    window_ms: 60_000,
                },
                health: Some(HealthCheck {
                    cmd: "curl -f localhost".into(),
                    interval_ms: 1000,
                    timeout_ms: 500,
                    retries: 2,
                    start_period_ms: 250,
                }),
                stop_signal: "SIGQUIT".into(),
                stop_grace_ms: 2000,
                force_update: 4,
            },
            update: OrchUpdate {
                parallelism: 2,
                delay_ms: 10,
                failure_action: FailureAction::Rollback,
                monitor_ms: 3000,
                max_failure_ratio: 0.25,
                order: UpdateOrder::StartFirst,
            },
            rollback: OrchUpdate::default(),
            ports: vec![PortConfig {
                published: 8080,
                target: 80,
                protocol: "tcp".into(),
                mode: "ingress".into(),
            }],
        }
    }

    #[test]
    fn a_spec_comes_back_as_it_went_out() {
        for spec in [full_spec(), shoal_orch::ServiceSpec { mode: shoal_orch::Mode::Global, ..full_spec() }] {
            let docker = ServiceSpec::from(&spec);
            let text = serde_json::to_string(&docker).unwrap();
            let back: ServiceSpec = serde_json::from_str(&text).unwrap();
            assert_eq!(shoal_orch::ServiceSpec::try_from(&back).unwrap(), spec, "{text}");
        }
    }

    #[test]
    fn specs_have_docker_field_names() {
        let v = serde_json::to_value(ServiceSpec::from(&full_spec())).unwrap();
        assert_eq!(v["Mode"]["Replicated"]["Replicas"], 5);
        let c = &v["TaskTemplate"]["ContainerSpec"];
        assert_eq!(c["StopGracePeriod"], 2_000_000_000u64);
        assert_eq!(c["Healthcheck"]["Test"], serde_json::json!(["CMD-SHELL", "curl -f localhost"]));
        assert_eq!(v["TaskTemplate"]["Resources"]["Limits"]["NanoCPUs"], 500_000_000);
        assert_eq!(v["TaskTemplate"]["RestartPolicy"]["Condition"], "on-failure");
        assert_eq!(
            v["TaskTemplate"]["Placement"]["Preferences"][0]["Spread"]["SpreadDescriptor"],
            "node.labels.zone"
        );
        assert_eq!(v["UpdateConfig"]["FailureAction"], "rollback");
        assert_eq!(v["UpdateConfig"]["Order"], "start-first");
        assert_eq!(v["EndpointSpec"]["Ports"][0]["PublishedPort"], 8080);
        let global =
            ServiceSpec::from(&shoal_orch::ServiceSpec { mode: shoal_orch::Mode::Global, ..full_spec() });
        assert_eq!(serde_json::to_value(global).unwrap()["Mode"], serde_json::json!({ "Global": {} }));
    }

    #[test]
    fn specs_shoal_cannot_run_are_refused_with_the_reason() {
        let mut docker = ServiceSpec::from(&full_spec());
        docker.task_template.container_spec.healthcheck.as_mut().unwrap().test =
            vec!["CMD".into(), "true".into()];
        let err = shoal_orch::ServiceSpec::try_from(&docker).unwrap_err().to_string();
        assert!(err.contains("use [\"CMD-SHELL\", \"command\"]"), "{err}");
        let mut docker = ServiceSpec::from(&full_spec());
        docker.task_template.placement.preferences[0].spread.spread_descriptor = "node.role".into();
        assert!(
            shoal_orch::ServiceSpec::try_from(&docker).unwrap_err().to_string().contains("node.labels.KEY")
        );
        let mut docker = ServiceSpec::from(&full_spec());
        docker.task_template.container_spec.healthcheck.as_mut().unwrap().test = vec!["NONE".into()];
        assert_eq!(shoal_orch::ServiceSpec::try_from(&docker).unwrap().task.health, None);
    }

    #[test]
    fn nodes_and_networks_have_docker_field_names() {
        let record = NodeRecord {
            id: "n1".into(),
            hostname: "node1".into(),
            role: Role::Manager,
            availability: Availability::Drain,
            labels: BTreeMap::new(),
            addr: "198.18.0.1".into(),
            state: NodeState::Down,
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            engine_version: "0.1.0".into(),
            leader: true,
            created_at: 1_795_000_000,
            updated_at: 1_795_000_000,
        };
        let v = serde_json::to_value(Node::new(&record, "n1")).unwrap();
        assert_eq!(v["Self"], true);
        assert_eq!(v["Spec"]["Availability"], "drain");
        assert_eq!(v["Status"]["State"], "down");
        assert_eq!(v["Description"]["Resources"]["NanoCPUs"], 2_000_000_000u64);
        assert_eq!(v["ManagerStatus"]["Leader"], true);
        assert_eq!(v["CreatedAt"], "2026-11-18T11:06:40.000000000Z");
        let worker = NodeRecord { role: Role::Worker, ..record };
        assert!(serde_json::to_value(Node::new(&worker, "n1")).unwrap().get("ManagerStatus").is_none());
        let network = NetworkRecord {
            id: "x".into(),
            name: "front".into(),
            driver: "overlay".into(),
            attachable: false,
            subnet: "10.0.1.0/24".into(),
            gateway: "10.0.1.1".into(),
            vni: 4096,
            created_at: 0,
        };
        let v = serde_json::to_value(Network::from(&network)).unwrap();
        assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
        assert_eq!(v["Options"][VXLAN_ID_OPTION], "4096");
    }
}
