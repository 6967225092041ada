//! Health endpoints for load balancers and orchestrators, outside the REST prefix and without
//! authentication: `GET /healthz` (the process answers) and `GET /readyz` (it can serve: the database
//! answers within a second, the message writer runs and the hub is not shutting down). Both say which
//! node answered.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::hub::Hub;

/// How long readiness waits for the database.
const DATABASE_DEADLINE: Duration = Duration::from_secs(1);

pub async fn healthz(State(hub): State<Arc<Hub>>) -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok", "node": &*hub.cluster.node_id}))).into_response()
}

pub async fn readyz(State(hub): State<Arc<Hub>>) -> Response {
    let mut problems = Vec::new();
    if *hub.shutdown.borrow() {
        problems.push("shutting down".to_string());
    }
    if !hub.writer.is_running() {
        problems.push("message writer: stopped".to_string());
    }
    match tokio::time::timeout(DATABASE_DEADLINE, hub.database_ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("database: {}", e.message)),
        Err(_) => problems.push(format!("database: no answer within {DATABASE_DEADLINE:?}")),
    }
    let node = &*hub.cluster.node_id;
    match problems.is_empty() {
        true => (StatusCode::OK, axum::Json(json!({"status": "ready", "node": node}))).into_response(),
        false => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable", "node": node, "problems": problems})),
        )
            .into_response(),
    }
}
