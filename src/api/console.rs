//! The admin web console: static files under `console/` at the repository root, embedded in the
//! binary and served at `/admin/` (`GET /` redirects there). The console is a client of the public
//! REST and WebSocket APIs only; the page learns their paths from two `<meta>` tags the hub fills in
//! from `[http] rest_prefix` and `websocket_path`, so nothing is hard-coded in the scripts.
//!
//! Every console response carries a Content-Security-Policy that allows scripts, styles and images
//! from the hub itself only (no inline script or style), and connections to the hub's own HTTP and
//! WebSocket origin.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::hub::Hub;

/// Where the console is served (the edge strips a trailing `/`, so `/admin/` arrives as `/admin`).
pub const CONSOLE_PATH: &str = "/admin";

const INDEX_HTML: &str = include_str!("../../console/index.html");

/// The embedded files below `/admin/`: name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", "text/css; charset=utf-8", include_str!("../../console/style.css")),
    ("app.js", JS, include_str!("../../console/app.js")),
    ("api.js", JS, include_str!("../../console/api.js")),
    ("live.js", JS, include_str!("../../console/live.js")),
    ("dom.js", JS, include_str!("../../console/dom.js")),
    ("overview.js", JS, include_str!("../../console/overview.js")),
    ("groups.js", JS, include_str!("../../console/groups.js")),
    ("devices.js", JS, include_str!("../../console/devices.js")),
    ("device.js", JS, include_str!("../../console/device.js")),
    ("users.js", JS, include_str!("../../console/users.js")),
    ("tokens.js", JS, include_str!("../../console/tokens.js")),
    ("favicon.svg", "image/svg+xml", include_str!("../../console/favicon.svg")),
];

const JS: &str = "text/javascript; charset=utf-8";

/// `GET /` and the console's own routes.
pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/", get(redirect))
        .route(CONSOLE_PATH, get(index))
        .route(&format!("{CONSOLE_PATH}/{{file}}"), get(asset))
}

async fn redirect() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/admin/")]).into_response()
}

async fn index(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let rest = hub.settings.http.rest_prefix.trim_end_matches('/');
    let page = INDEX_HTML
        .replace("{{REST_PREFIX}}", &escape_attribute(rest))
        .replace("{{WEBSOCKET_PATH}}", &escape_attribute(&hub.settings.http.websocket_path))
        .replace("{{MQTT_PORT}}", &mqtt_port(&hub.settings.mqtt.listen).to_string());
    console_response("text/html; charset=utf-8", page, &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => console_response(content_type, (*body).to_string(), &headers),
        None => crate::error::ApiError::not_found("HTTP 404 Not Found").into_response(),
    }
}

fn console_response(content_type: &'static str, body: String, headers: &HeaderMap) -> Response {
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(headers)) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change with the binary; revalidating is cheap and avoids a stale mix after an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Only the hub's own origin: `'self'` for scripts, styles, images and fetches, plus the WebSocket
/// URLs of the host the browser reached (older browsers do not let `'self'` cover `ws:`/`wss:`).
fn content_security_policy(headers: &HeaderMap) -> String {
    let mut connect = String::from("'self'");
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| is_plain_host(h)) {
        connect.push_str(&format!(" ws://{host} wss://{host}"));
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src {connect}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// A `Host` header that can be put into the policy as it is: a name or address and a port, nothing
/// that could end the directive or add another.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// The MQTT port for the connection examples of the tokens page: the port of `[mqtt] listen`, or
/// the standard 1883 when it is not a fixed port (0 in tests, or not parseable).
fn mqtt_port(listen: &str) -> u16 {
    match listen.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()) {
        Some(port) if port != 0 => port,
        _ => 1883,
    }
}

/// Text for a double-quoted HTML attribute.
fn escape_attribute(text: &str) -> String {
    text.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_only_a_plain_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("hub.local:8080"));
        let csp = content_security_policy(&headers);
        assert!(csp.contains("connect-src 'self' ws://hub.local:8080 wss://hub.local:8080;"), "{csp}");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        headers.insert(header::HOST, HeaderValue::from_static("evil; script-src *"));
        let csp = content_security_policy(&headers);
        assert!(csp.contains("connect-src 'self';") && !csp.contains("evil"), "{csp}");
    }

    #[test]
    fn attribute_text_is_escaped() {
        assert_eq!(escape_attribute(r#"/a"b<c>&"#), "/a&quot;b&lt;c&gt;&amp;");
    }

    #[test]
    fn every_embedded_file_is_named_once() {
        let mut names: Vec<_> = ASSETS.iter().map(|(n, _, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        for slot in ["{{REST_PREFIX}}", "{{WEBSOCKET_PATH}}", "{{MQTT_PORT}}"] {
            assert!(INDEX_HTML.contains(slot), "{slot}");
        }
    }

    #[test]
    fn mqtt_port_of_the_listen_address() {
        assert_eq!(mqtt_port("0.0.0.0:1884"), 1884);
        assert_eq!(mqtt_port("[::]:8883"), 8883);
        assert_eq!(mqtt_port("127.0.0.1:0"), 1883);
        assert_eq!(mqtt_port(""), 1883);
    }
}
