//! `GET /`, `/info`, `/info/cache`, `/info/config/cluster`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::json;

use super::{ok, ApiResult};
use crate::hub::Hub;
use crate::time::{format_ms, now_ms};

pub async fn welcome() -> &'static str {
    "The DeviceHive RESTful API is now running, please refer to documentation to get the list of available resources."
}

/// The `Host` the client used and whether it came over TLS (`X-Forwarded-Proto: https` from a proxy).
pub fn client_origin(headers: &HeaderMap) -> (&str, bool) {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    (host, https)
}

pub async fn info(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> ApiResult {
    let (host, https) = client_origin(&headers);
    let scheme = if https { "wss" } else { "ws" };
    ok(&json!({
        "apiVersion": crate::API_VERSION,
        "serverTimestamp": format_ms(now_ms()),
        "webSocketServerUrl": format!("{scheme}://{host}{}", hub.settings.http.websocket_path),
    }))
}

pub async fn cache(State(hub): State<Arc<Hub>>) -> ApiResult {
    ok(&json!({
        "serverTimestamp": format_ms(now_ms()),
        "cacheStats": hub.cache_stats(),
    }))
}

pub async fn cluster() -> ApiResult {
    ok(&json!({"bootstrap.servers": null, "zookeeper.connect": null}))
}
