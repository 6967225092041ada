//! Test harness: a real hub on port 0 with a temporary SQLite database, and a small HTTP client.

#![allow(dead_code)]

pub mod mqtt;
pub mod pg;
pub mod sql;
pub mod ws;

use hivehub::config::Settings;
use hivehub::App;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const ADMIN_LOGIN: &str = "dhadmin";
pub const ADMIN_PASSWORD: &str = "admin-pass-1";

pub struct TestHub {
    app: Option<App>,
    pub dir: TempDir,
    pub base: String,
    pub root: String,
    pub client: reqwest::Client,
    pub admin: String,
}

/// A response: status, headers and the body parsed as JSON (`Value::Null` when empty or not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Reads a response: status, headers and the whole body.
    pub async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, body, text }
    }

    /// Asserts the status and returns the body.
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text);
        self.body
    }
    /// Asserts a contract error: status plus `{"error": status, "message": message}`.
    pub fn expect_error(self, status: u16, message: &str) {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text);
        assert_eq!(self.body, json!({"error": status, "message": message}), "body: {}", self.text);
    }
}

/// Asserts that `v` is an object whose keys are exactly `expected` (in any order).
pub fn assert_keys(v: &Value, expected: &[&str]) {
    let mut got: Vec<&str> =
        v.as_object().unwrap_or_else(|| panic!("object expected: {v}")).keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "keys of {v}");
}

/// The next request of a WebSocket or MQTT session: `fields` with `action` and a fresh numeric
/// `requestId` taken from `next_id`; returns (request id, request).
pub fn numbered_request(next_id: &mut u64, action: &str, mut fields: Value) -> (u64, Value) {
    let id = *next_id;
    *next_id += 1;
    fields["action"] = json!(action);
    fields["requestId"] = json!(id);
    (id, fields)
}

/// Asserts a success response to `action` whose keys are exactly the envelope plus `payload`.
pub fn assert_success(r: &Value, action: &str, payload: &[&str]) {
    assert_eq!(r["status"], "success", "{action}: {r}");
    assert_eq!(r["action"], action, "{r}");
    let mut expected = vec!["action", "requestId", "status"];
    expected.extend_from_slice(payload);
    assert_keys(r, &expected);
}

/// Asserts that `r`, the response to request `id` (`action` with `fields`), is exactly the error
/// envelope with `code` and `message`.
pub fn assert_error(r: &Value, action: &str, id: u64, fields: &Value, code: u16, message: &str) {
    assert_eq!(
        *r,
        json!({"action": action, "requestId": id, "status": "error", "code": code, "error": message}),
        "{action} {fields}"
    );
}

pub fn settings_for(dir: &TempDir) -> Settings {
    let mut s = Settings::defaults();
    s.http.listen = "127.0.0.1:0".into();
    s.mqtt.listen = "127.0.0.1:0".into();
    s.database.url = format!("sqlite://{}/hub.db", dir.path().display());
    s.auth.admin_login = ADMIN_LOGIN.into();
    s.auth.admin_password = ADMIN_PASSWORD.into();
    s.auth.jwt_secret = String::new();
    s
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, adjust).await
    }

    pub async fn start_in(dir: TempDir, adjust: impl FnOnce(&mut Settings)) -> TestHub {
        let mut settings = settings_for(&dir);
        adjust(&mut settings);
        let app = App::start(settings).await.expect("hub starts");
        let root = format!("http://{}", app.http_addr);
        let base = format!("{root}/api/rest");
        // Every request has a deadline (longer than the longest long poll): a hub that hangs fails the
        // test instead of hanging it.
        // Pooled connections are reused only while the hub still keeps them: it closes keep-alive
        // connections idle for `http.header_read_timeout_secs` (10 s), and a request sent on one it is
        // closing at that moment would be reset.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(90))
            .build()
            .unwrap();
        let mut hub = TestHub { app: Some(app), dir, base, root, client, admin: String::new() };
        hub.admin = hub.login(ADMIN_LOGIN, ADMIN_PASSWORD).await;
        hub
    }

    /// Stops the hub gracefully and starts a new one on the same database.
    pub async fn restart(self) -> TestHub {
        self.restart_with(|_| {}).await
    }

    /// Like `restart`, with adjusted settings.
    pub async fn restart_with(mut self, adjust: impl FnOnce(&mut Settings)) -> TestHub {
        self.app.take().unwrap().shutdown().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::start_in(dir, adjust).await
    }

    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn request(&self, method: Method, token: Option<&str>, path: &str, body: Option<Value>) -> Reply {
        let url = if path.starts_with("http") { path.to_string() } else { self.url(path) };
        let mut rb = self.client.request(method, url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b.to_string());
        }
        Reply::read(rb.send().await.expect("request sent")).await
    }

    pub async fn get(&self, token: &str, path: &str) -> Reply {
        self.request(Method::GET, Some(token), path, None).await
    }
    pub async fn post(&self, token: &str, path: &str, body: Value) -> Reply {
        self.request(Method::POST, Some(token), path, Some(body)).await
    }
    pub async fn put(&self, token: &str, path: &str, body: Value) -> Reply {
        self.request(Method::PUT, Some(token), path, Some(body)).await
    }
    pub async fn delete(&self, token: &str, path: &str) -> Reply {
        self.request(Method::DELETE, Some(token), path, None).await
    }

    /// Logs in and returns the access token.
    pub async fn login(&self, login: &str, password: &str) -> String {
        let body = self
            .request(Method::POST, None, "/token", Some(json!({"login": login, "password": password})))
            .await
            .expect(201);
        body["accessToken"].as_str().expect("accessToken").to_string()
    }

    /// Creates a network (as admin) and returns its id.
    pub async fn network(&self, name: &str) -> i64 {
        self.post(&self.admin, "/network", json!({"name": name})).await.expect(201)["id"].as_i64().unwrap()
    }

    /// Registers a device (as admin).
    pub async fn device(&self, id: &str, network_id: i64) {
        self.put(&self.admin, &format!("/device/{id}"), json!({"name": id, "networkId": network_id})).await.expect(204);
    }

    /// Creates a client user assigned to `networks`, and returns (user id, access token).
    pub async fn client_user(&self, login: &str, networks: &[i64]) -> (i64, String) {
        let id = self
            .post(&self.admin, "/user", json!({"login": login, "password": "client-pass-1", "role": 1}))
            .await
            .expect(201)["id"]
            .as_i64()
            .unwrap();
        for n in networks {
            self.put(&self.admin, &format!("/user/{id}/network/{n}"), json!({})).await.expect(204);
        }
        (id, self.login(login, "client-pass-1").await)
    }
}

impl TestHub {
    /// The embedded MQTT broker's address.
    pub fn mqtt_addr(&self) -> std::net::SocketAddr {
        self.app.as_ref().unwrap().mqtt_addr.expect("MQTT enabled")
    }
}

impl TestHub {
    /// The MQTT-over-WebSocket listener's address (start with `s.mqtt.ws_listen = "127.0.0.1:0"`).
    pub fn mqtt_ws_addr(&self) -> std::net::SocketAddr {
        self.app.as_ref().unwrap().mqtt_ws_addr.expect("MQTT over WebSocket enabled")
    }
}

impl TestHub {
    /// The MQTT-over-TLS listener's address (start with `s.mqtt.tls_listen` and the fixture files).
    pub fn mqtt_tls_addr(&self) -> std::net::SocketAddr {
        self.app.as_ref().unwrap().mqtt_tls_addr.expect("MQTT over TLS enabled")
    }
}
