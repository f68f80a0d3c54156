//! Services and tasks.

use serde::{Deserialize, Serialize};
use shoal_orch::{Attachment, TaskState, UpdateState};

use super::{EndpointSpec, ServiceSpec, TaskTemplate, Version};
use crate::clock::rfc3339;

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
    /// The published ports, with the ports the manager picked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<super::PortView>,
    /// Published ports some node could not open (Shoal's addition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_errors: Vec<PortErrorView>,
}

/// `Endpoint.PortErrors[]`: a published port a node could not open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortErrorView {
    /// The node's id (empty if the manager does not know its address).
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Its hostname.
    pub hostname: String,
    /// The port.
    pub published_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// What failed, and who holds the port when known.
    pub error: String,
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
                ports: service.spec.ports.iter().map(super::PortView::from).collect(),
                port_errors: Vec::new(),
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
