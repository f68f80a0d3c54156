//! The API's handlers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_control::Role;

use super::error::Checked;
use super::views;
use crate::endpoints::Interface;
use crate::error::Error;
use crate::node::Node;
use crate::swarm::{InitRequest, Manager, NodeUpdate};

type Shared = State<Arc<Node>>;
type Answer<T = Value> = Result<Json<T>, Error>;

fn to_json(value: impl serde::Serialize) -> Json<Value> {
    Json(serde_json::to_value(value).expect("views serialise"))
}

async fn manager(node: &Node) -> Result<Arc<Manager>, Error> {
    node.swarm.manager().await
}

pub async fn info(State(node): Shared) -> Json<Value> {
    Json(json!({ "id": node.me.id.to_string(), "addr": node.me.addr, "epoch": node.me.epoch }))
}

pub async fn members(State(node): Shared) -> Answer {
    Ok(to_json(node.gossip.get()?.members().await))
}

pub async fn tables(State(node): Shared) -> Answer {
    let rows: Vec<Value> = node
        .gossip
        .get()?
        .rows()
        .await
        .into_iter()
        .map(|r| {
            let value = r.value.as_ref().map(|v| {
                serde_json::from_slice::<Value>(v)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(v).into_owned()))
            });
            json!({
                "owner": r.owner.to_string(), "epoch": r.epoch, "network": r.network, "table": r.table,
                "key": r.key, "seq": r.seq, "value": value, "suspended": r.suspended,
            })
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}

pub async fn list_endpoints(State(node): Shared) -> Json<Value> {
    to_json(node.endpoints.list().await)
}

/// What `debug endpoint add` asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    sandbox: String,
    vni: u32,
    subnet: String,
    ip: std::net::Ipv4Addr,
}

pub async fn create_endpoint(
    State(node): Shared,
    Checked(Json(req)): Checked<Json<EndpointRequest>>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let iface = Interface::parse(req.vni, &req.subnet, req.ip)?;
    let mut created = node.endpoints.create(&req.sandbox, &[iface], false).await?;
    Ok((StatusCode::CREATED, to_json(created.remove(0))))
}

pub async fn remove_endpoint(
    State(node): Shared,
    Checked(Path(sandbox)): Checked<Path<String>>,
) -> Result<StatusCode, Error> {
    node.endpoints.remove(&sandbox).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn dataplane(State(node): Shared) -> Json<Value> {
    to_json(node.dataplane.counters())
}

/// The agent's metrics, in the OpenMetrics text format prometheus-client
/// writes (which Prometheus scrapes with this content type).
pub async fn metrics(State(node): Shared) -> impl axum::response::IntoResponse {
    let text = node.metrics.render(&node.snapshot().await);
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}

pub async fn swarm_info(State(node): Shared) -> Json<Value> {
    to_json(node.swarm.info().await)
}

/// Runs a change of the node's membership to its end even if the client
/// hangs up (hyper drops a handler's future when its connection closes): a
/// join cut halfway would leave its session running while the node says
/// it is in no swarm, and an init its control port bound.
async fn to_the_end<T: Send + 'static>(
    change: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(change).await.map_err(Error::internal)?
}

pub async fn swarm_init(State(node): Shared, Checked(Json(req)): Checked<Json<InitRequest>>) -> Answer {
    Ok(to_json(to_the_end(async move { node.swarm.init(req).await }).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    token: String,
    remote_addr: String,
}

pub async fn swarm_join(State(node): Shared, Checked(Json(req)): Checked<Json<JoinRequest>>) -> Answer {
    Ok(to_json(to_the_end(async move { node.swarm.join(&req.token, &req.remote_addr).await }).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Force {
    #[serde(default)]
    force: bool,
}

pub async fn swarm_leave(
    State(node): Shared,
    Checked(Json(req)): Checked<Json<Force>>,
) -> Result<StatusCode, Error> {
    to_the_end(async move { node.swarm.leave(req.force).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn role(name: &str) -> Result<Role, Error> {
    match name {
        "worker" => Ok(Role::Worker),
        "manager" => Ok(Role::Manager),
        other => Err(Error::Invalid(format!("unknown role {other:?}: use worker or manager"))),
    }
}

async fn token(node: &Node, name: &str, rotate: bool) -> Answer {
    let m = manager(node).await?;
    let token = m.join_token(role(name)?, rotate)?;
    Ok(Json(json!({ "token": token, "addr": m.addr().to_string() })))
}

pub async fn join_token(State(node): Shared, Checked(Path(name)): Checked<Path<String>>) -> Answer {
    token(&node, &name, false).await
}

pub async fn rotate_token(State(node): Shared, Checked(Path(name)): Checked<Path<String>>) -> Answer {
    token(&node, &name, true).await
}

pub async fn rotate_gossip_key(State(node): Shared) -> Answer {
    manager(&node).await?.rotate_gossip_key().await?;
    Ok(Json(json!({})))
}

pub async fn nodes(State(node): Shared) -> Answer<Vec<views::Node>> {
    let m = manager(&node).await?;
    Ok(Json(m.nodes()?.iter().map(|n| views::Node::new(n, m.node_id())).collect()))
}

pub async fn node_inspect(
    State(node): Shared,
    Checked(Path(id)): Checked<Path<String>>,
) -> Answer<views::Node> {
    let m = manager(&node).await?;
    Ok(Json(views::Node::new(&m.find_node(&id)?, m.node_id())))
}

pub async fn node_update(
    State(node): Shared,
    Checked(Path(id)): Checked<Path<String>>,
    Checked(Json(update)): Checked<Json<NodeUpdate>>,
) -> Answer<views::Node> {
    let m = manager(&node).await?;
    Ok(Json(views::Node::new(&m.update_node(&id, &update)?, m.node_id())))
}

pub async fn node_remove(
    State(node): Shared,
    Checked(Path(id)): Checked<Path<String>>,
    Checked(Json(req)): Checked<Json<Force>>,
) -> Result<StatusCode, Error> {
    manager(&node).await?.remove_node(&id, req.force)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    name: String,
    #[serde(default = "overlay")]
    driver: String,
    subnet: Option<String>,
    #[serde(default)]
    attachable: bool,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

fn overlay() -> String {
    "overlay".into()
}

pub async fn network_create(
    State(node): Shared,
    Checked(Json(req)): Checked<Json<NetworkCreate>>,
) -> Result<(StatusCode, Json<views::Network>), Error> {
    if req.driver != "overlay" {
        return Err(Error::Invalid(format!(
            "driver {:?} is not supported: Shoal networks use the overlay driver (-d overlay)",
            req.driver
        )));
    }
    let m = manager(&node).await?;
    let record = m.create_network(&req.name, req.subnet.as_deref(), req.attachable, req.labels)?;
    Ok((StatusCode::CREATED, Json(views::Network::from(&record))))
}

pub async fn networks(State(node): Shared) -> Answer<Vec<views::Network>> {
    Ok(Json(manager(&node).await?.networks()?.iter().map(views::Network::from).collect()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectQuery {
    #[serde(default)]
    verbose: bool,
}

pub async fn network_inspect(
    State(node): Shared,
    Checked(Path(name)): Checked<Path<String>>,
    Checked(Query(q)): Checked<Query<InspectQuery>>,
) -> Answer<views::Network> {
    let record = manager(&node).await?.find_network(&name)?;
    let mut network = views::Network::from(&record);
    if q.verbose {
        let index = node.directory.index();
        let services = index.networks.get(&record.vni).map(|n| &n.services).into_iter().flatten();
        network.services =
            Some(services.map(|(_, s)| (s.name.clone(), views::NetworkService::new(s))).collect());
    }
    Ok(Json(network))
}

/// This node's routing mesh: its listeners and the backends they reach.
pub async fn mesh(State(node): Shared) -> Json<Value> {
    to_json(&node.mesh.view(node.dataplane.lb_stats()).await)
}

/// This node's service directory, network by network.
pub async fn directory(State(node): Shared) -> Json<Value> {
    to_json(&*node.directory.index())
}

pub async fn network_remove(
    State(node): Shared,
    Checked(Path(name)): Checked<Path<String>>,
) -> Result<StatusCode, Error> {
    manager(&node).await?.remove_network(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

fn service_view(node: &Node, m: &Manager, service: &shoal_orch::Service) -> views::Service {
    let mut view = views::Service::new(service, &m.orchestration().service_tasks(&service.id));
    view.endpoint.port_errors = port_errors(node, m, service);
    view
}

/// The published ports of `service` that nodes could not open, as the
/// directory knows them from gossip.
fn port_errors(node: &Node, m: &Manager, service: &shoal_orch::Service) -> Vec<views::PortErrorView> {
    let problems = node.directory.port_problems();
    if problems.is_empty() {
        return Vec::new();
    }
    let nodes = m.nodes().unwrap_or_default();
    let mut out = Vec::new();
    for (addr, list) in problems {
        let record = nodes.iter().find(|n| n.addr == addr.to_string());
        for p in list {
            if service.spec.ports.iter().any(|q| q.published == p.port && q.protocol == p.protocol) {
                out.push(views::PortErrorView {
                    node_id: record.map(|n| n.id.clone()).unwrap_or_default(),
                    hostname: record.map_or_else(|| addr.to_string(), |n| n.hostname.clone()),
                    published_port: p.port,
                    protocol: p.protocol.clone(),
                    error: crate::mesh::describe(&p),
                });
            }
        }
    }
    out
}

pub async fn services(State(node): Shared) -> Answer<Vec<views::Service>> {
    let m = manager(&node).await?;
    Ok(Json(m.orchestration().services().iter().map(|s| service_view(&node, &m, s)).collect()))
}

pub async fn service_create(
    State(node): Shared,
    Checked(Json(spec)): Checked<Json<views::ServiceSpec>>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let spec = shoal_orch::ServiceSpec::try_from(&spec)?;
    let service = manager(&node).await?.orchestration().create_service(spec)?;
    Ok((StatusCode::CREATED, Json(json!({ "ID": service.id, "Warnings": [] }))))
}

pub async fn service_inspect(
    State(node): Shared,
    Checked(Path(id)): Checked<Path<String>>,
) -> Answer<views::Service> {
    let m = manager(&node).await?;
    let service = m.orchestration().find_service(&id)?;
    Ok(Json(service_view(&node, &m, &service)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateQuery {
    /// The version the spec was read at, as docker's API takes it.
    version: u64,
}

pub async fn service_update(
    State(node): Shared,
    Checked(Path(id)): Checked<Path<String>>,
    Checked(Query(q)): Checked<Query<UpdateQuery>>,
    Checked(Json(spec)): Checked<Json<views::ServiceSpec>>,
) -> Answer<views::Service> {
    let spec = shoal_orch::ServiceSpec::try_from(&spec)?;
    let m = manager(&node).await?;
    let orch = m.orchestration();
    let service = orch.find_service(&id)?;
    let updated = orch.update_service(&service.id, Some(q.version), spec, false)?;
    Ok(Json(service_view(&node, &m, &updated)))
}

pub async fn service_rollback(
    State(node): Shared,
    Checked(Path(id)): Checked<Path<String>>,
) -> Answer<views::Service> {
    let m = manager(&node).await?;
    let orch = m.orchestration();
    let service = orch.find_service(&id)?;
    let previous = service.previous.clone().ok_or_else(|| {
        Error::Invalid(format!("service {} does not have a previous spec to roll back to", service.spec.name))
    })?;
    let updated = orch.update_service(&service.id, None, previous, true)?;
    Ok(Json(service_view(&node, &m, &updated)))
}

pub async fn service_remove(State(node): Shared, Checked(Path(id)): Checked<Path<String>>) -> Answer {
    let m = manager(&node).await?;
    let orch = m.orchestration();
    let service = orch.find_service(&id)?;
    orch.remove_service(&service.id)?;
    Ok(Json(json!({ "ID": service.id, "Name": service.spec.name })))
}

pub async fn service_tasks(
    State(node): Shared,
    Checked(Path(id)): Checked<Path<String>>,
) -> Answer<views::ServiceTasks> {
    let m = manager(&node).await?;
    let orch = m.orchestration();
    let service = orch.find_service(&id)?;
    let tasks = orch.service_tasks(&service.id);
    let errors = port_errors(&node, &m, &service);
    let mut views: Vec<views::Task> = tasks.iter().map(views::Task::from).collect();
    // A running task on a node that could not open one of the service's
    // ports shows why in `service ps`'s ERROR column.
    for t in views
        .iter_mut()
        .filter(|t| t.status.state == shoal_orch::TaskState::Running && t.status.err.is_none())
    {
        let here: Vec<String> = errors
            .iter()
            .filter(|e| Some(&e.node_id) == t.node_id.as_ref())
            .map(|e| format!("port {}/{}: {}", e.published_port, e.protocol, e.error))
            .collect();
        if !here.is_empty() {
            t.status.err = Some(here.join("; "));
        }
    }
    let mut service = views::Service::new(&service, &tasks);
    service.endpoint.port_errors = errors;
    Ok(Json(views::ServiceTasks { service, tasks: views }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    #[serde(default)]
    after_ms: u64,
}

pub async fn service_logs(
    State(node): Shared,
    Checked(Path(id)): Checked<Path<String>>,
    Checked(Query(q)): Checked<Query<LogQuery>>,
) -> Answer {
    let m = manager(&node).await?;
    let orch = m.orchestration();
    let nodes = m.nodes()?;
    // A service's output, or one task's.
    let tasks: Vec<shoal_orch::Task> = match orch.find_service(&id) {
        Ok(service) => orch.service_tasks(&service.id),
        Err(Error::NotFound(_)) => {
            vec![orch.find_task(&id).map_err(|_| Error::NotFound(format!("no such service or task: {id}")))?]
        }
        Err(e) => return Err(e),
    };
    let names: HashMap<&str, (String, String)> = tasks
        .iter()
        .map(|t| {
            let node = t.node_id.as_deref().and_then(|id| nodes.iter().find(|n| n.id == id));
            (t.id.as_str(), (t.name(), node.map_or_else(String::new, |n| n.hostname.clone())))
        })
        .collect();
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    let lines: Vec<Value> = orch
        .logs(&ids)
        .into_iter()
        .filter(|(_, l)| l.ts_ms > q.after_ms)
        .map(|(task, l)| {
            let (name, node) = names.get(task.as_str()).cloned().unwrap_or_default();
            json!({ "task": task, "name": name, "node": node, "ts_ms": l.ts_ms, "stderr": l.stderr, "text": l.text })
        })
        .collect();
    Ok(Json(Value::Array(lines)))
}

pub async fn task_inspect(
    State(node): Shared,
    Checked(Path(id)): Checked<Path<String>>,
) -> Answer<views::Task> {
    let m = manager(&node).await?;
    Ok(Json(views::Task::from(&m.orchestration().find_task(&id)?)))
}

pub async fn task_exec_info(State(node): Shared, Checked(Path(id)): Checked<Path<String>>) -> Answer {
    let info = node.task_runner()?.exec_info(&id).ok_or_else(|| {
        Error::NotFound(format!(
            "no running task {id} on this node: `shoal task exec` runs on the node of the task (see `shoal service ps`)"
        ))
    })?;
    Ok(to_json(info))
}

// === Volumes (this node's own, as docker's local volumes) ===

pub async fn volumes(State(node): Shared) -> Answer<views::VolumeList> {
    let volumes = node.volumes.list()?.iter().map(views::Volume::from).collect();
    Ok(Json(views::VolumeList { volumes, warnings: Vec::new() }))
}

pub async fn volume_inspect(
    State(node): Shared,
    Checked(Path(name)): Checked<Path<String>>,
) -> Answer<views::Volume> {
    Ok(Json(views::Volume::from(&node.volumes.get(&name)?)))
}

pub async fn volume_create(
    State(node): Shared,
    Checked(Json(req)): Checked<Json<views::VolumeCreate>>,
) -> Result<(StatusCode, Json<views::Volume>), Error> {
    if !matches!(req.driver.as_str(), "" | "local") {
        return Err(Error::Invalid(format!(
            "create {}: driver {:?} is not supported: Shoal volumes use the local driver",
            req.name, req.driver
        )));
    }
    if !req.driver_opts.is_empty() {
        return Err(Error::Invalid(format!(
            "create {}: the local driver here takes no options (--opt): a volume is a directory of the node",
            req.name
        )));
    }
    // Docker names an unnamed volume with 64 random hex digits.
    let name = if req.name.is_empty() {
        shoal_control::ca::random::<32>()?.iter().map(|b| format!("{b:02x}")).collect()
    } else {
        req.name
    };
    let volume = node.volumes.create(&name, req.labels)?;
    Ok((StatusCode::CREATED, Json(views::Volume::from(&volume))))
}

/// `force` is taken, as docker takes it, and changes nothing: a volume in
/// use is never removed.
pub async fn volume_remove(
    State(node): Shared,
    Checked(Path(name)): Checked<Path<String>>,
    Checked(Query(_force)): Checked<Query<Force>>,
) -> Result<StatusCode, Error> {
    // A volume's files may be many: removed off the async threads.
    tokio::task::spawn_blocking(move || node.volumes.remove(&name, || node.volumes_in_use()))
        .await
        .map_err(Error::internal)??;
    Ok(StatusCode::NO_CONTENT)
}
