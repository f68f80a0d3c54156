//! The local API: HTTP/JSON with versioned routes on the daemon's unix
//! socket. Errors are JSON `{"message": ...}` with a status that says whose
//! fault it is.

use std::sync::Arc;

use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use shoal_gossip::MemberState;

use super::state::{ApiError, EndpointRequest, State};

/// Serves the API until the task is aborted.
pub async fn serve(listener: tokio::net::UnixListener, state: Arc<State>) {
    let app = Router::new()
        .route("/v1/info", get(info))
        .route("/v1/members", get(members))
        .route("/v1/tables", get(tables))
        .route("/v1/endpoints", get(list_endpoints).post(create_endpoint))
        .route("/v1/endpoints/{sandbox}", delete(remove_endpoint))
        .route("/v1/dataplane", get(dataplane))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::NotFound("no such route: see `shoal --help` for what the API offers".into())
        })
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "API server stopped");
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
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

async fn members(Extract(state): Shared) -> Json<serde_json::Value> {
    Json(serde_json::to_value(state.gossip.members().await).expect("serialisable"))
}

async fn tables(Extract(state): Shared) -> Json<serde_json::Value> {
    let rows: Vec<serde_json::Value> = state
        .gossip
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
    Json(serde_json::Value::Array(rows))
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
    let (gossip, _) = state.gossip.stats().await;
    let members = state.gossip.members().await;
    let rows = state.gossip.rows().await;
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
