//! Test harness: a real hub on port 0 with a fresh database (a temporary SQLite file, or a database of
//! its own on a throwaway PostgreSQL server: see `Backend`), and a small HTTP client.

#![allow(dead_code)]

pub mod mqtt;
pub mod pg;
pub mod sql;
pub mod ws;

use std::future::Future;
use std::marker::PhantomData;
use std::path::Path;

use hivehub::config::{DatabaseSettings, Settings};
use hivehub::App;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const ADMIN_LOGIN: &str = "dhadmin";
pub const ADMIN_PASSWORD: &str = "admin-pass-1";

/// The database backend a `TestHubOn` runs on: it provides each hub with a fresh database.
pub trait Backend: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    const NAME: &'static str;

    /// A fresh database for a hub whose scratch directory is `dir`.
    fn provision(dir: &Path) -> impl Future<Output = Database> + Send;

    /// Environment for a `hivehub serve` process started in `dir` (binary tests): nothing on SQLite,
    /// whose default `./data/hivehub.db` is in `dir`; `HIVEHUB__DATABASE__URL` of a database of that
    /// directory on PostgreSQL.
    fn serve_env(dir: &Path) -> Vec<(&'static str, String)>;
}

/// SQLite: `<hub dir>/hub.db`.
pub struct Sqlite;

/// PostgreSQL: a database of its own on the shared throwaway server (`pg::shared`), dropped with the
/// hub.
pub struct Postgres;

impl Backend for Sqlite {
    const NAME: &'static str = "sqlite";

    async fn provision(dir: &Path) -> Database {
        Database { url: format!("sqlite://{}/hub.db", dir.display()), lease: None }
    }

    fn serve_env(_dir: &Path) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

impl Backend for Postgres {
    const NAME: &'static str = "postgres";

    async fn provision(_dir: &Path) -> Database {
        let (url, lease) = pg::DbLease::create().await;
        Database { url, lease: Some(lease) }
    }

    fn serve_env(dir: &Path) -> Vec<(&'static str, String)> {
        vec![("HIVEHUB__DATABASE__URL", pg::database_for_dir(dir))]
    }
}

/// A hub's database: its URL, and on PostgreSQL the lease that drops it once the hub is gone.
pub struct Database {
    pub url: String,
    lease: Option<pg::DbLease>,
}

impl Database {
    /// An existing database, left in place (e.g. one of a dedicated PostgreSQL server).
    pub fn existing(url: impl Into<String>) -> Database {
        Database { url: url.into(), lease: None }
    }
}

/// A hub on `B`; the tests use it through the per-backend alias `TestHub` (`sqlite.rs`, `postgres.rs`).
pub struct TestHubOn<B: Backend> {
    app: Option<App>,
    pub dir: TempDir,
    pub base: String,
    pub root: String,
    pub client: reqwest::Client,
    pub admin: String,
    /// The settings the hub was started with.
    settings: Settings,
    /// Last: dropped after the hub.
    database: Database,
    backend: PhantomData<B>,
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

/// The test settings of a hub on the database at `database_url`.
pub fn settings_for(database_url: &str) -> Settings {
    let mut s = Settings::defaults();
    s.http.listen = "127.0.0.1:0".into();
    s.mqtt.listen = "127.0.0.1:0".into();
    s.database.url = database_url.to_string();
    s.auth.admin_login = ADMIN_LOGIN.into();
    s.auth.admin_password = ADMIN_PASSWORD.into();
    s.auth.jwt_secret = String::new();
    s
}

impl<B: Backend> TestHubOn<B> {
    /// The backend's name: `"sqlite"` or `"postgres"`.
    pub const BACKEND: &'static str = B::NAME;

    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, adjust).await
    }

    /// A hub with `dir` as its scratch directory, on a fresh database.
    pub async fn start_in(dir: TempDir, adjust: impl FnOnce(&mut Settings)) -> Self {
        let database = B::provision(dir.path()).await;
        Self::launch(dir, database, adjust).await
    }

    /// A hub on an existing database, left in place when the hub is dropped (e.g. one of a dedicated
    /// PostgreSQL server: `pg::PgServer::dedicated()`, `create_database`, `url`).
    /// A fresh database of this backend (dropped with the returned value on PostgreSQL), for tests that
    /// start hubs themselves.
    pub async fn provision(dir: &Path) -> Database {
        B::provision(dir).await
    }

    pub async fn start_on(database_url: impl Into<String>, adjust: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::launch(dir, Database::existing(database_url), adjust).await
    }

    async fn launch(dir: TempDir, database: Database, adjust: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = settings_for(&database.url);
        adjust(&mut settings);
        let app = App::start(settings.clone()).await.expect("hub starts");
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
        let mut hub = TestHubOn {
            app: Some(app),
            dir,
            base,
            root,
            client,
            admin: String::new(),
            settings,
            database,
            backend: PhantomData,
        };
        hub.admin = hub.login(ADMIN_LOGIN, ADMIN_PASSWORD).await;
        hub
    }

    /// Stops the hub gracefully and starts a new one on the same database.
    pub async fn restart(self) -> Self {
        self.restart_with(|_| {}).await
    }

    /// Like `restart`, with adjusted settings.
    pub async fn restart_with(mut self, adjust: impl FnOnce(&mut Settings)) -> Self {
        self.app.take().unwrap().shutdown().await;
        Self::launch(self.dir, self.database, adjust).await
    }

    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }

    /// The settings the hub was started with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The hub's database settings (`url` is its database, on either backend).
    pub fn database_settings(&self) -> &DatabaseSettings {
        &self.settings.database
    }

    /// A connection pool of its own to the hub's database, for raw SQL (see `sql::TestDb`).
    pub async fn db(&self) -> sql::TestDb {
        sql::TestDb::connect(&self.settings.database.url).await
    }

    /// Runs one statement on the hub's database (portable SQL, `$1` placeholders); returns the number
    /// of rows it affected.
    pub async fn sql_execute(&self, query: &str, args: &[sql::SqlArg]) -> u64 {
        let db = self.db().await;
        let affected = db.execute(query, args).await;
        db.close().await;
        affected
    }

    /// Every row of a query on the hub's database, as JSON values.
    pub async fn sql_fetch_all(&self, query: &str, args: &[sql::SqlArg]) -> Vec<Vec<Value>> {
        let db = self.db().await;
        let rows = db.fetch_all(query, args).await;
        db.close().await;
        rows
    }

    /// The only row of a query on the hub's database, as JSON values.
    pub async fn sql_fetch_one(&self, query: &str, args: &[sql::SqlArg]) -> Vec<Value> {
        let db = self.db().await;
        let row = db.fetch_one(query, args).await;
        db.close().await;
        row
    }

    /// Environment for a `hivehub serve` process started in `dir` (see `Backend::serve_env`).
    pub fn serve_env(dir: &Path) -> Vec<(&'static str, String)> {
        B::serve_env(dir)
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

impl<B: Backend> TestHubOn<B> {
    /// The embedded MQTT broker's address.
    pub fn mqtt_addr(&self) -> std::net::SocketAddr {
        self.app.as_ref().unwrap().mqtt_addr.expect("MQTT enabled")
    }
}

impl<B: Backend> TestHubOn<B> {
    /// The MQTT-over-WebSocket listener's address (start with `s.mqtt.ws_listen = "127.0.0.1:0"`).
    pub fn mqtt_ws_addr(&self) -> std::net::SocketAddr {
        self.app.as_ref().unwrap().mqtt_ws_addr.expect("MQTT over WebSocket enabled")
    }
}

impl<B: Backend> TestHubOn<B> {
    /// The MQTT-over-TLS listener's address (start with `s.mqtt.tls_listen` and the fixture files).
    /// The metrics listener's address, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.app.as_ref().unwrap().metrics_addr
    }

    pub fn mqtt_tls_addr(&self) -> std::net::SocketAddr {
        self.app.as_ref().unwrap().mqtt_tls_addr.expect("MQTT over TLS enabled")
    }
}
