//! HTTP transport: the REST router (under `/api/rest`, `/dh/rest`, and the token routes under
//! `/auth/rest`), CORS, method override, and the JSON error format for everything axum itself refuses.
//! The admin console (`console`) is served at `/admin/`, and `GET /` redirects there.

mod console;
pub mod extract;
mod health;
pub mod metrics;
pub mod rest;
pub mod ws;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::error::ApiError;
use crate::hub::Hub;

/// The complete HTTP application, ready for `axum::serve`.
pub fn app(hub: Arc<Hub>) -> Router {
    let prefix = hub.settings.http.rest_prefix.trim_end_matches('/').to_string();
    let full = rest::router();
    let mut app = Router::new().nest(&prefix, full.clone());
    if prefix != "/dh/rest" {
        app = app.nest("/dh/rest", full);
    }
    if prefix != "/auth/rest" {
        app = app.nest("/auth/rest", rest::auth_router());
    }
    let ws_path = hub.settings.http.websocket_path.clone();
    app = app.route(&ws_path, axum::routing::get(ws::upgrade));
    if ws_path != "/dh/websocket" {
        app = app.route("/dh/websocket", axum::routing::get(ws::upgrade));
    }
    app =
        app.route("/healthz", axum::routing::get(health::healthz)).route("/readyz", axum::routing::get(health::readyz));
    if hub.settings.metrics.enabled {
        app = app.route(&hub.settings.metrics.path, axum::routing::get(metrics::authorized));
    }
    app = app.merge(console::routes());
    app.fallback(not_found).method_not_allowed_fallback(method_not_allowed).with_state(hub)
}

async fn not_found() -> ApiError {
    ApiError::not_found("HTTP 404 Not Found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "HTTP 405 Method Not Allowed")
}

const CORS_HEADERS: [(&str, &str); 5] = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-credentials", "true"),
    ("access-control-allow-methods", "OPTIONS, GET, POST, PUT, DELETE, HEAD"),
    ("access-control-max-age", "0"),
    ("access-control-allow-headers", "Origin, Authorization, Accept, Content-Type, Auth-DeviceID, Auth-DeviceKey"),
];

/// Runs before routing: drops a trailing `/` (so `GET {prefix}/` reaches the welcome route, and
/// `/user/` is `/user`), applies `X-HTTP-Method-Override`, answers CORS preflights, and adds the CORS
/// headers to every response.
pub async fn edge(mut req: Request, next: Next) -> Response {
    strip_trailing_slash(&mut req);
    if req.method() == Method::POST {
        let wanted = req
            .headers()
            .get("x-http-method-override")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_ascii_uppercase());
        if let Some(m) = wanted {
            match m.as_str() {
                "PUT" => *req.method_mut() = Method::PUT,
                "DELETE" => *req.method_mut() = Method::DELETE,
                "HEAD" => *req.method_mut() = Method::HEAD,
                "OPTIONS" => *req.method_mut() = Method::OPTIONS,
                _ => {}
            }
        }
    }
    let head = req.method() == Method::HEAD;
    let mut response =
        if req.method() == Method::OPTIONS { StatusCode::OK.into_response() } else { next.run(req).await };
    if is_plain_text_error(&response) {
        response = as_json_error(response).await;
    }
    // axum put a `content-length` computed from the body's exact size into the map; hyper writes the
    // same header from the same size when the map has none. Without it the five CORS headers fit the
    // six entries of the map's first allocation; a seventh grew it to a 1.3 KiB block, which glibc
    // serves from its large bins after consolidating its fast bins — 3 % of a REST insert's CPU. A
    // HEAD answer has no body, so there the header axum computed for the GET must stay.
    if !head && axum::body::HttpBody::size_hint(response.body()).exact().is_some() {
        response.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
    }
    let headers = response.headers_mut();
    for (name, value) in CORS_HEADERS {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    response
}

/// axum's own rejections (a path segment that is not valid UTF-8, a malformed query, a failed
/// WebSocket upgrade) are plain-text errors; every client error of the hub has the JSON error body.
fn is_plain_text_error(response: &Response) -> bool {
    let status = response.status();
    (status.is_client_error() || status.is_server_error())
        && response
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/plain"))
}

async fn as_json_error(response: Response) -> Response {
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 16 * 1024).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let message = if message.is_empty() { status.canonical_reason().unwrap_or("Error").to_string() } else { message };
    ApiError::new(status, message).into_response()
}

fn strip_trailing_slash(req: &mut Request) {
    let path = req.uri().path();
    if path.len() <= 1 || !path.ends_with('/') {
        return;
    }
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    let rewritten = match req.uri().query() {
        Some(q) => format!("{trimmed}?{q}"),
        None => trimmed.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    let Ok(pq) = rewritten.parse() else { return };
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}
