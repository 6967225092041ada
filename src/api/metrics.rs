//! `GET /metrics` (path: `[metrics] path`) in the Prometheus text format. On the main HTTP listener it
//! needs an administrator's access token: the hub is often reachable from the internet (devices
//! connect to it), and connection counts, traffic and the node id are nobody else's business. On the
//! metrics listener of its own (`[metrics] listen`, meant for a private interface) it is open, as
//! Prometheus expects.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::extract::Auth;
use crate::error::ApiError;
use crate::hub::Hub;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The main listener's endpoint: administrators only.
pub async fn authorized(State(hub): State<Arc<Hub>>, Auth(principal): Auth) -> Result<Response, ApiError> {
    if !principal.is_authenticated() {
        return Err(ApiError::unauthorized());
    }
    if !principal.is_admin() {
        return Err(ApiError::access_denied());
    }
    Ok(render(&hub))
}

/// The metrics listener's application: the endpoint, open.
pub fn open_app(hub: Arc<Hub>) -> Router {
    let path = hub.settings.metrics.path.clone();
    Router::new()
        .route(&path, axum::routing::get(|State(hub): State<Arc<Hub>>| async move { render(&hub) }))
        .with_state(hub)
}

fn render(hub: &Hub) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], crate::metrics::render(hub)).into_response()
}
