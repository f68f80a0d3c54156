//! The local API: HTTP/JSON with versioned routes on the daemon's unix
//! socket. Handlers (`routes`) are thin: they find the node's part that
//! answers, call it, and shape the answer with `views`. Errors are JSON
//! `{"message": ...}` with a status that says whose fault it is (`error`).

pub mod error;
mod routes;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post};

use crate::error::Error;
use crate::node::Node;

/// The API's routes over `node`.
pub fn router(node: Arc<Node>) -> Router {
    use routes::*;
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/members", get(members))
        .route("/v1/tables", get(tables))
        .route("/v1/endpoints", get(list_endpoints).post(create_endpoint))
        .route("/v1/endpoints/{sandbox}", delete(remove_endpoint))
        .route("/v1/dataplane", get(dataplane))
        .route("/v1/directory", get(directory))
        .route("/v1/mesh", get(mesh))
        .route("/v1/swarm", get(swarm_info))
        .route("/v1/swarm/init", post(swarm_init))
        .route("/v1/swarm/join", post(swarm_join))
        .route("/v1/swarm/leave", post(swarm_leave))
        .route("/v1/swarm/join-token/{role}", get(join_token))
        .route("/v1/swarm/join-token/{role}/rotate", post(rotate_token))
        .route("/v1/swarm/rotate-gossip-key", post(rotate_gossip_key))
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
        .route("/v1/volumes", get(volumes).post(volume_create))
        .route("/v1/volumes/{name}", get(volume_inspect).delete(volume_remove))
        .route("/v1/local/tasks/{id}/exec", get(task_exec_info))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            Error::NotFound("no such route: see `shoal --help` for what the API offers".into())
        })
        .method_not_allowed_fallback(|| async {
            Error::Invalid(
                "this route does not take that method: see `shoal --help` for what the API offers".into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(error::BODY_LIMIT))
        .with_state(node)
}

/// Serves the API on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::UnixListener, node: Arc<Node>) {
    if let Err(e) = axum::serve(listener, router(node)).await {
        tracing::error!(error = %e, "API server stopped");
    }
}
