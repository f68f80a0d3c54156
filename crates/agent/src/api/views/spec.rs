//! Service specs, typed both ways.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_orch::{
    EndpointConfig, EndpointMode, FailureAction, HealthCheck, LbPolicy, Placement, PortConfig, Resources,
    RestartCondition, RestartPolicy, UpdateConfig as OrchUpdate, UpdateOrder,
};

use super::{ms, ns};
use crate::error::Error;

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
    /// Services started first (Shoal's addition: compose's `depends_on`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
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
    /// Volumes, binds and tmpfs mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountView>,
}

/// `ContainerSpec.Mounts[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountView {
    /// `volume`, `bind` or `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: shoal_orch::MountKind,
    /// The volume's name or the node's path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// The path inside the task.
    pub target: String,
    /// Read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
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
    /// More names of the service on this network.
    #[serde(rename = "Aliases", default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
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

/// `Spec.EndpointSpec`: docker's mode and ports, and what Shoal adds
/// (DNS TTL, balancing policy, client affinity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSpec {
    /// `vip` or `dnsrr`.
    pub mode: EndpointMode,
    /// Published ports.
    pub ports: Vec<PortView>,
    /// TTL of DNS answers, seconds (Shoal's addition).
    #[serde(rename = "DNSTTL", default = "default_ttl")]
    pub dns_ttl: u32,
    /// How the VIP balances: `round-robin`, `least-conn`, `maglev` (Shoal's addition).
    #[serde(rename = "LBPolicy", default)]
    pub lb_policy: LbPolicy,
    /// Client-IP affinity timeout, ns (Shoal's addition; absent: off).
    #[serde(rename = "ClientIPAffinity", default, skip_serializing_if = "Option::is_none")]
    pub client_ip_affinity: Option<u64>,
}

fn default_ttl() -> u32 {
    shoal_orch::DEFAULT_DNS_TTL_SECS
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortView {
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The task's port.
    pub target_port: u16,
    /// The port every node answers on.
    pub published_port: u16,
    /// `ingress` or `host`.
    pub publish_mode: String,
    /// `v2`: a PROXY protocol v2 header goes first (Shoal's addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// `local`: only tasks of the node that took the connection (Shoal's
    /// addition; `cluster` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<String>,
}

impl From<&PortConfig> for PortView {
    fn from(p: &PortConfig) -> PortView {
        PortView {
            name: p.name.clone(),
            protocol: p.protocol.clone(),
            target_port: p.target,
            published_port: p.published,
            publish_mode: p.mode.clone(),
            proxy_protocol: p.proxy_protocol.then(|| "v2".to_owned()),
            traffic_policy: p.local_only.then(|| "local".to_owned()),
        }
    }
}

impl From<&PortView> for PortConfig {
    fn from(p: &PortView) -> PortConfig {
        PortConfig {
            name: p.name.clone(),
            published: p.published_port,
            target: p.target_port,
            protocol: p.protocol.clone(),
            mode: p.publish_mode.clone(),
            proxy_protocol: p.proxy_protocol.as_deref() == Some("v2"),
            local_only: p.traffic_policy.as_deref() == Some("local"),
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
                mounts: t
                    .mounts
                    .iter()
                    .map(|m| MountView {
                        kind: m.kind,
                        source: m.source.clone(),
                        target: m.target.clone(),
                        read_only: m.readonly,
                    })
                    .collect(),
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
            networks: t
                .networks
                .iter()
                .map(|n| NetworkAttachment {
                    target: n.clone(),
                    aliases: t.aliases.get(n).cloned().unwrap_or_default(),
                })
                .collect(),
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
            aliases: t
                .networks
                .iter()
                .filter(|n| !n.aliases.is_empty())
                .map(|n| (n.target.clone(), n.aliases.clone()))
                .collect(),
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
            mounts: c
                .mounts
                .iter()
                .map(|m| shoal_orch::Mount {
                    kind: m.kind,
                    source: m.source.clone(),
                    target: m.target.clone(),
                    readonly: m.read_only,
                })
                .collect(),
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
                mode: s.endpoint.mode,
                ports: s.ports.iter().map(PortView::from).collect(),
                dns_ttl: s.endpoint.dns_ttl_secs,
                lb_policy: s.endpoint.lb,
                client_ip_affinity: s.endpoint.affinity_ms.map(ns),
            },
            depends_on: s.depends_on.clone(),
        }
    }
}

impl TryFrom<&ServiceSpec> for shoal_orch::ServiceSpec {
    type Error = Error;

    fn try_from(s: &ServiceSpec) -> Result<shoal_orch::ServiceSpec, Error> {
        let e = &s.endpoint_spec;
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
            ports: e.ports.iter().map(PortConfig::from).collect(),
            endpoint: EndpointConfig {
                mode: e.mode,
                dns_ttl_secs: e.dns_ttl,
                lb: e.lb_policy,
                affinity_ms: e.client_ip_affinity.map(ms),
            },
            depends_on: s.depends_on.clone(),
        })
    }
}
