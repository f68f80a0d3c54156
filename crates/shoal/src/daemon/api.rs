//! The local API: HTTP/JSON with versioned routes on the daemon's unix
//! socket. Errors are JSON `{"message": ...}` with a status that says whose
//! fault it is.

use std::sync::Arc;

use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use shoal_gossip::MemberState;

use super::cluster::{self, InitRequest};
use super::state::{ApiError, EndpointRequest, State};
use shoal_control::{NodeRecord, Role};
use shoal_orch::TaskState;

/// Serves the API until the task is aborted.
pub async fn serve(listener: tokio::net::UnixListener, state: Arc<State>) {
    let app = Router::new()
        .route("/v1/info", get(info))
        .route("/v1/members", get(members))
        .route("/v1/tables", get(tables))
        .route("/v1/endpoints", get(list_endpoints).post(create_endpoint))
        .route("/v1/endpoints/{sandbox}", delete(remove_endpoint))
        .route("/v1/dataplane", get(dataplane))
        .route("/v1/swarm", get(swarm_info))
        .route("/v1/swarm/init", post(swarm_init))
        .route("/v1/swarm/join", post(swarm_join))
        .route("/v1/swarm/leave", post(swarm_leave))
        .route("/v1/swarm/join-token/{role}", get(join_token))
        .route("/v1/swarm/join-token/{role}/rotate", post(rotate_token))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{id}", get(node_inspect))
        .route("/v1/nodes/{id}/update", post(node_update))
        .route("/v1/nodes/{id}/remove", post(node_remove))
        .route("/v1/networks", get(networks).post(network_create))
        .route("/v1/networks/{name}", get(network_inspect).delete(network_remove))
        .route("/v1/services", get(services).post(service_create))
        .route("/v1/services/{id}", get(service_inspect).delete(service_remove))
        .route("/v1/services/{id}/update", post(service_update))
        .route("/v1/services/{id}/rollback", post(service_rollback))
        .route("/v1/services/{id}/tasks", get(service_tasks))
        .route("/v1/services/{id}/logs", get(service_logs))
        .route("/v1/tasks/{id}", get(task_inspect))
        .route("/v1/local/tasks/{id}/exec", get(task_exec_info))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::NotFound("no such route: see `shoal --help` for what the API offers".into())
        })
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "API server stopped");
    }
}

/// The message of an API error.
pub fn message(e: &ApiError) -> &str {
    match e {
        ApiError::BadRequest(m)
        | ApiError::NotFound(m)
        | ApiError::Conflict(m)
        | ApiError::Internal(m)
        | ApiError::Unavailable(m) => m,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        };
        (status, Json(serde_json::json!({ "message": message }))).into_response()
    }
}

type Shared = Extract<Arc<State>>;

async fn info(Extract(state): Shared) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "id": state.me.id.to_string(),
        "addr": state.me.addr,
        "epoch": state.me.epoch,
    }))
}

async fn members(Extract(state): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::to_value(state.gossip()?.members().await).expect("serialisable")))
}

async fn tables(Extract(state): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    let rows: Vec<serde_json::Value> = state
        .gossip()?
        .rows()
        .await
        .into_iter()
        .map(|r| {
            let value = r.value.as_ref().map(|v| {
                serde_json::from_slice::<serde_json::Value>(v)
                    .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(v).into_owned()))
            });
            serde_json::json!({
                "owner": r.owner.to_string(), "epoch": r.epoch, "network": r.network, "table": r.table,
                "key": r.key, "seq": r.seq, "value": value, "suspended": r.suspended,
            })
        })
        .collect();
    Ok(Json(serde_json::Value::Array(rows)))
}

async fn list_endpoints(Extract(state): Shared) -> Json<serde_json::Value> {
    Json(serde_json::to_value(state.endpoints().await).expect("serialisable"))
}

async fn create_endpoint(
    Extract(state): Shared,
    body: Result<Json<EndpointRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Json(request) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid endpoint request: {}; send {{\"sandbox\", \"vni\", \"subnet\", \"ip\"}}",
            e.body_text()
        ))
    })?;
    let view = state.create_endpoint(request).await?;
    Ok((StatusCode::CREATED, Json(serde_json::to_value(view).expect("serialisable"))))
}

async fn remove_endpoint(
    Extract(state): Shared,
    Path(sandbox): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.remove_endpoint(&sandbox).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn dataplane(Extract(state): Shared) -> Json<serde_json::Value> {
    Json(serde_json::to_value(state.dataplane.counters()).expect("serialisable"))
}

/// Prometheus text exposition of the daemon's counters.
async fn metrics(Extract(state): Shared) -> String {
    let (gossip, members, rows) = match state.gossip() {
        Ok(g) => (g.stats().await.0, g.members().await, g.rows().await),
        Err(_) => Default::default(),
    };
    let dp = state.dataplane.counters();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    metric(
        "shoal_dataplane_networks",
        "gauge",
        "Overlay networks in this node's data plane (those with a local task).",
        &one(state.dataplane.tables().network_count() as u64),
    );
    metric(
        "shoal_gossip_datagrams_received_total",
        "counter",
        "Gossip datagrams received.",
        &one(gossip.datagrams_in),
    );
    metric(
        "shoal_gossip_datagrams_sent_total",
        "counter",
        "Gossip datagrams sent.",
        &one(gossip.datagrams_out),
    );
    metric("shoal_gossip_bytes_received_total", "counter", "Gossip bytes received.", &one(gossip.bytes_in));
    metric("shoal_gossip_bytes_sent_total", "counter", "Gossip bytes sent.", &one(gossip.bytes_out));
    let dropped: Vec<(String, u64)> =
        gossip.dropped.iter().map(|(reason, n)| (format!("{{reason=\"{reason}\"}}"), *n)).collect();
    metric("shoal_gossip_dropped_total", "counter", "Gossip input dropped, by reason.", &dropped);
    metric(
        "shoal_gossip_deltas_applied_total",
        "counter",
        "Table deltas that were new here.",
        &one(gossip.deltas_applied),
    );
    metric("shoal_gossip_syncs_total", "counter", "Anti-entropy exchanges.", &one(gossip.syncs));
    metric(
        "shoal_gossip_sync_repairs_total",
        "counter",
        "Visible rows changed by anti-entropy, which delta gossip had missed (convergence lag).",
        &one(gossip.sync_repairs),
    );
    metric(
        "shoal_gossip_pending_deltas",
        "gauge",
        "Deltas still being gossiped.",
        &one(gossip.pending_deltas),
    );
    metric(
        "shoal_gossip_member_downs_total",
        "counter",
        "Times a member was declared down.",
        &one(gossip.member_downs),
    );
    metric(
        "shoal_gossip_local_health",
        "gauge",
        "Lifeguard local health score (0 is healthy).",
        &one(u64::from(gossip.local_health)),
    );
    let count = |s: MemberState| members.iter().filter(|m| m.state == s).count() as u64;
    let by_state = vec![
        ("{state=\"alive\"}".to_owned(), count(MemberState::Alive)),
        ("{state=\"suspect\"}".to_owned(), count(MemberState::Suspect)),
        ("{state=\"down\"}".to_owned(), count(MemberState::Down)),
    ];
    metric("shoal_gossip_members", "gauge", "Members by state, this node included.", &by_state);
    let live = rows.iter().filter(|r| r.value.is_some() && !r.suspended).count() as u64;
    let table = vec![
        ("{kind=\"live\"}".to_owned(), live),
        ("{kind=\"suspended\"}".to_owned(), rows.iter().filter(|r| r.suspended).count() as u64),
        ("{kind=\"tombstone\"}".to_owned(), rows.iter().filter(|r| r.value.is_none()).count() as u64),
    ];
    metric("shoal_table_rows", "gauge", "Endpoint table rows held.", &table);
    metric(
        "shoal_dataplane_encapsulated_packets_total",
        "counter",
        "Packets sent to other nodes.",
        &one(dp.encapsulated),
    );
    metric(
        "shoal_dataplane_decapsulated_packets_total",
        "counter",
        "Packets received from other nodes.",
        &one(dp.decapsulated),
    );
    let drops: Vec<(String, u64)> =
        dp.drops.iter().map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n)).collect();
    metric("shoal_dataplane_dropped_packets_total", "counter", "Packets dropped, by reason.", &drops);
    out
}

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(b: Body<T>, what: &str) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| ApiError::BadRequest(format!("invalid {what} request: {}", e.body_text())))
}

async fn swarm_info(Extract(state): Shared) -> Json<serde_json::Value> {
    Json(cluster::info(&state).await)
}

async fn swarm_init(
    Extract(state): Shared,
    b: Body<InitRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(cluster::init(&state, body(b, "swarm init")?).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    token: String,
    remote_addr: String,
}

async fn swarm_join(
    Extract(state): Shared,
    b: Body<JoinRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req = body(b, "swarm join")?;
    Ok(Json(cluster::join(&state, &req.token, &req.remote_addr).await?))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Force {
    #[serde(default)]
    force: bool,
}

async fn swarm_leave(Extract(state): Shared, b: Body<Force>) -> Result<StatusCode, ApiError> {
    cluster::leave(&state, body(b, "swarm leave")?.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn role(name: &str) -> Result<Role, ApiError> {
    match name {
        "worker" => Ok(Role::Worker),
        "manager" => Ok(Role::Manager),
        other => Err(ApiError::BadRequest(format!("unknown role {other:?}: use worker or manager"))),
    }
}

async fn join_token(
    Extract(state): Shared,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    Ok(Json(serde_json::json!({ "token": m.join_token(role(&name)?, false)?, "addr": m.addr().to_string() })))
}

async fn rotate_token(
    Extract(state): Shared,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    Ok(Json(serde_json::json!({ "token": m.join_token(role(&name)?, true)?, "addr": m.addr().to_string() })))
}

/// A node as docker's API shows it.
fn node_json(n: &NodeRecord, self_id: &str) -> serde_json::Value {
    let manager = (n.role == Role::Manager).then(|| {
        serde_json::json!({ "Leader": n.leader, "Reachability": "reachable", "Addr": format!("{}:2377", n.addr) })
    });
    serde_json::json!({
        "ID": n.id,
        "Self": n.id == self_id,
        "CreatedAt": n.created_at,
        "UpdatedAt": n.updated_at,
        "Spec": { "Labels": n.labels, "Role": n.role, "Availability": n.availability },
        "Description": {
            "Hostname": n.hostname,
            "Platform": { "OS": n.os, "Architecture": n.arch },
            "Resources": { "NanoCPUs": u64::from(n.cpus) * 1_000_000_000, "MemoryBytes": n.memory_bytes },
            "Engine": { "EngineVersion": n.engine_version },
        },
        "Status": { "State": n.state, "Addr": n.addr },
        "ManagerStatus": manager,
    })
}

async fn nodes(Extract(state): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    let list: Vec<serde_json::Value> = m.nodes()?.iter().map(|n| node_json(n, m.node_id())).collect();
    Ok(Json(serde_json::Value::Array(list)))
}

async fn node_inspect(
    Extract(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    Ok(Json(node_json(&m.find(&id)?, m.node_id())))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeUpdate {
    #[serde(default)]
    label_add: Vec<String>,
    #[serde(default)]
    label_rm: Vec<String>,
    availability: Option<String>,
    role: Option<String>,
}

async fn node_update(
    Extract(state): Shared,
    Path(id): Path<String>,
    b: Body<NodeUpdate>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let update = body(b, "node update")?;
    let m = cluster::manager(&state).await?;
    let _writer = m.writer.lock().unwrap_or_else(|e| e.into_inner());
    let mut node = m.find(&id)?;
    for label in &update.label_add {
        let (k, v) = label.split_once('=').unwrap_or((label, ""));
        if k.is_empty() {
            return Err(ApiError::BadRequest(format!("invalid label {label:?}: use KEY or KEY=VALUE")));
        }
        node.labels.insert(k.to_owned(), v.to_owned());
    }
    for k in &update.label_rm {
        if node.labels.remove(k).is_none() {
            return Err(ApiError::BadRequest(format!("key {k} doesn't exist in node's labels")));
        }
    }
    if let Some(a) = &update.availability {
        if !["active", "pause", "drain"].contains(&a.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "invalid availability {a:?}: use active, pause or drain"
            )));
        }
        node.availability = a.clone();
    }
    if let Some(r) = &update.role {
        let wanted = role(r)?;
        if wanted != node.role {
            return Err(ApiError::Unavailable(match wanted {
                Role::Manager => format!(
                    "cannot promote {}: a second manager needs replicated manager state, which Shoal does not have yet",
                    node.hostname
                ),
                Role::Worker => {
                    format!("cannot demote {}: the swarm would be left without a manager", node.hostname)
                }
            }));
        }
    }
    node.updated_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    m.put(&node)?;
    Ok(Json(node_json(&node, m.node_id())))
}

async fn node_remove(
    Extract(state): Shared,
    Path(id): Path<String>,
    b: Body<Force>,
) -> Result<StatusCode, ApiError> {
    let force = body(b, "node rm")?.force;
    let m = cluster::manager(&state).await?;
    let _writer = m.writer.lock().unwrap_or_else(|e| e.into_inner());
    let node = m.find(&id)?;
    if node.id == m.node_id() {
        return Err(ApiError::BadRequest(format!(
            "rejected removal of node {}: it is the manager; use `shoal swarm leave --force` on it instead",
            node.id
        )));
    }
    if node.state != "down" && !force {
        return Err(ApiError::BadRequest(format!(
            "node {} is not down and can't be removed: stop its daemon first, or use --force",
            node.id
        )));
    }
    m.remove(&node.id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkCreate {
    name: String,
    #[serde(default = "overlay")]
    driver: String,
    subnet: Option<String>,
    #[serde(default)]
    attachable: bool,
}

fn overlay() -> String {
    "overlay".into()
}

fn network_json(n: &shoal_control::NetworkRecord) -> serde_json::Value {
    serde_json::json!({
        "Id": n.id, "Name": n.name, "Driver": n.driver, "Scope": "swarm", "Attachable": n.attachable,
        "Created": n.created_at,
        "IPAM": { "Driver": "default", "Config": [{ "Subnet": n.subnet, "Gateway": n.gateway }] },
        "Options": { "com.docker.network.driver.overlay.vxlanid_list": n.vni.to_string() },
    })
}

async fn network_create(
    Extract(state): Shared,
    b: Body<NetworkCreate>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let req = body(b, "network create")?;
    if req.driver != "overlay" {
        return Err(ApiError::BadRequest(format!(
            "driver {:?} is not supported: Shoal networks use the overlay driver (-d overlay)",
            req.driver
        )));
    }
    let m = cluster::manager(&state).await?;
    let record = m.create_network(&req.name, req.subnet.as_deref(), req.attachable)?;
    Ok((StatusCode::CREATED, Json(network_json(&record))))
}

async fn networks(Extract(state): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    Ok(Json(serde_json::Value::Array(m.networks()?.iter().map(network_json).collect())))
}

async fn network_inspect(
    Extract(state): Shared,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    Ok(Json(network_json(&m.find_network(&name)?)))
}

async fn network_remove(Extract(state): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let m = cluster::manager(&state).await?;
    m.remove_network(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A service as `service ls` and `inspect` show it: the record, plus
/// running and desired task counts.
fn service_view(m: &cluster::Manager, service: &shoal_orch::Service) -> serde_json::Value {
    let tasks = m.service_tasks(&service.id);
    let running = tasks
        .iter()
        .filter(|t| t.desired == TaskState::Running && t.status.state == TaskState::Running)
        .count();
    let desired = match service.spec.mode {
        shoal_orch::Mode::Replicated { replicas } => replicas as usize,
        // One task per eligible node: the orchestrator made them.
        shoal_orch::Mode::Global => tasks.iter().filter(|t| t.desired == TaskState::Running).count(),
    };
    let mut value = serde_json::to_value(service).expect("serialisable");
    value["running"] = running.into();
    value["desired"] = desired.into();
    value
}

async fn services(Extract(state): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    let all: Vec<serde_json::Value> = m.services().iter().map(|s| service_view(&m, s)).collect();
    Ok(Json(serde_json::Value::Array(all)))
}

fn bad_json(e: serde_json::Error) -> ApiError {
    ApiError::BadRequest(format!("invalid service spec: {e}"))
}

async fn service_create(
    Extract(state): Shared,
    Json(body): Json<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let spec: shoal_orch::ServiceSpec = serde_json::from_value(body).map_err(bad_json)?;
    let m = cluster::manager(&state).await?;
    let service = m.create_service(spec)?;
    Ok(Json(serde_json::json!({ "id": service.id, "name": service.spec.name })))
}

async fn service_inspect(
    Extract(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    let service = m.find_service(&id)?;
    Ok(Json(service_view(&m, &service)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    version: u64,
    spec: serde_json::Value,
}

async fn service_update(
    Extract(state): Shared,
    Path(id): Path<String>,
    Json(body): Json<UpdateRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let spec: shoal_orch::ServiceSpec = serde_json::from_value(body.spec).map_err(bad_json)?;
    let m = cluster::manager(&state).await?;
    let service = m.find_service(&id)?;
    if service.version != body.version {
        return Err(ApiError::Conflict(format!(
            "update out of sequence: service {} changed since it was read (version {} now, {} given); try again",
            service.spec.name, service.version, body.version
        )));
    }
    let updated = m.update_service(&service.id, spec, false)?;
    Ok(Json(serde_json::json!({ "id": updated.id, "version": updated.version })))
}

async fn service_rollback(
    Extract(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    let service = m.find_service(&id)?;
    let previous = service.previous.clone().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "service {} does not have a previous spec to roll back to",
            service.spec.name
        ))
    })?;
    let updated = m.update_service(&service.id, previous, true)?;
    Ok(Json(serde_json::json!({ "id": updated.id, "version": updated.version })))
}

async fn service_remove(
    Extract(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    let service = m.find_service(&id)?;
    m.remove_service(&service.id)?;
    Ok(Json(serde_json::json!({ "id": service.id, "name": service.spec.name })))
}

/// A task as `service ps` shows it.
fn task_view(
    task: &shoal_orch::Task,
    service: Option<&shoal_orch::Service>,
    nodes: &[NodeRecord],
) -> serde_json::Value {
    let node = task
        .node_id
        .as_deref()
        .map(|id| nodes.iter().find(|n| n.id == id).map_or_else(|| id.to_owned(), |n| n.hostname.clone()));
    let mut value = serde_json::to_value(task).expect("serialisable");
    value["name"] = task.name().into();
    value["node"] = node.into();
    value["current"] = service.is_some_and(|s| s.spec.task == task.spec).into();
    value["desired_title"] = task.desired.title().into();
    value["state_title"] = task.status.state.title().into();
    value["ports"] =
        service.map_or(serde_json::Value::Null, |s| serde_json::to_value(&s.spec.ports).expect("ok"));
    value
}

async fn service_tasks(
    Extract(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    let service = m.find_service(&id)?;
    let nodes = m.nodes()?;
    let tasks: Vec<serde_json::Value> =
        m.service_tasks(&service.id).iter().map(|t| task_view(t, Some(&service), &nodes)).collect();
    Ok(Json(serde_json::json!({ "service": service_view(&m, &service), "tasks": tasks })))
}

#[derive(serde::Deserialize)]
struct LogQuery {
    #[serde(default)]
    after_ms: u64,
}

async fn service_logs(
    Extract(state): Shared,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<LogQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    let nodes = m.nodes()?;
    // A service's output, or one task's.
    let tasks: Vec<shoal_orch::Task> = match m.find_service(&id) {
        Ok(service) => m.service_tasks(&service.id),
        Err(ApiError::NotFound(_)) => {
            vec![m.find_task(&id).map_err(|_| ApiError::NotFound(format!("no such service or task: {id}")))?]
        }
        Err(e) => return Err(e),
    };
    let names: std::collections::HashMap<&str, (String, String)> = tasks
        .iter()
        .map(|t| {
            let node = t.node_id.as_deref().and_then(|id| nodes.iter().find(|n| n.id == id));
            (t.id.as_str(), (t.name(), node.map_or_else(String::new, |n| n.hostname.clone())))
        })
        .collect();
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    let lines: Vec<serde_json::Value> = m
        .logs(&ids)
        .into_iter()
        .filter(|(_, l)| l.ts_ms > q.after_ms)
        .map(|(task, l)| {
            let (name, node) = names.get(task.as_str()).cloned().unwrap_or_default();
            serde_json::json!({ "task": task, "name": name, "node": node, "ts_ms": l.ts_ms, "stderr": l.stderr, "text": l.text })
        })
        .collect();
    Ok(Json(serde_json::Value::Array(lines)))
}

async fn task_inspect(
    Extract(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = cluster::manager(&state).await?;
    let task = m.find_task(&id)?;
    let service = m.find_service(&task.service_id).ok();
    Ok(Json(task_view(&task, service.as_ref(), &m.nodes()?)))
}

async fn task_exec_info(
    Extract(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = state.agent()?;
    let info = agent.exec_info(&id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no running task {id} on this node: `shoal task exec` runs on the node of the task (see `shoal service ps`)"
        ))
    })?;
    Ok(Json(serde_json::to_value(info).expect("serialisable")))
}
