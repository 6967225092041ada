//! Settings: the commented defaults in `broker.toml` (compiled in), an optional file, then
//! `HIVEHUB__SECTION__KEY` environment variables.

use serde::Deserialize;

/// The commented default configuration, printed by `hivehub config`.
pub const DEFAULT_CONFIG: &str = include_str!("../broker.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub websocket: WebSocketSettings,
    pub mqtt: MqttSettings,
}

/// Who may use plain (non-`dh/`) MQTT topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlainTopics {
    Open,
    Authenticated,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MqttSettings {
    pub enabled: bool,
    pub listen: String,
    pub ws_listen: String,
    pub tls_listen: String,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub allow_anonymous: bool,
    pub plain_topics: PlainTopics,
    pub max_connections: usize,
    pub max_packet_bytes: usize,
    pub max_client_id_len: usize,
    pub connect_timeout_secs: u64,
    /// Seconds an anonymous session may stay without authenticating (dh/request `authenticate`); 0 = no limit.
    pub anonymous_timeout_secs: u64,
    pub write_timeout_secs: u64,
    pub max_inflight: usize,
    pub queue_capacity: usize,
    pub router_segment_bytes: usize,
    pub router_segment_count: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebSocketSettings {
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
    pub queue_capacity: usize,
    pub ping_interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub listen: String,
    /// The hub's public base URL (e.g. `https://hub.example.com`) for the URLs it reports; empty: made
    /// from the address the client reached.
    pub public_url: String,
    pub rest_prefix: String,
    pub websocket_path: String,
    pub header_read_timeout_secs: u64,
    pub body_read_timeout_secs: u64,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub synchronous: String,
    pub max_connections: u32,
    pub message_retention_secs: u64,
    pub batch_max_rows: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: String,
    pub admin_login: String,
    pub admin_password: String,
    pub access_token_lifetime_ms: i64,
    pub refresh_token_lifetime_ms: i64,
    pub restrict_token_create: bool,
    pub credential_cache_secs: u64,
    pub lockout_secs: u64,
    pub login_throttle_free_attempts: u32,
    pub login_throttle_base_ms: u64,
    pub require_old_password: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    pub max_body_bytes: usize,
    pub max_take: i64,
    pub default_wait_timeout_secs: u64,
    pub max_wait_timeout_secs: u64,
}

impl Settings {
    /// Loads defaults, then `path` (required when given explicitly; `./broker.toml` when present
    /// otherwise), then the environment.
    pub fn load(path: Option<&str>) -> Result<Settings, config::ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_CONFIG, config::FileFormat::Toml));
        builder = match path {
            Some(p) => builder.add_source(config::File::with_name(p).format(config::FileFormat::Toml)),
            None => builder
                .add_source(config::File::with_name("broker.toml").format(config::FileFormat::Toml).required(false)),
        };
        Self::from_builder(builder)
    }

    /// Defaults plus environment only: what tests start from before adjusting fields.
    pub fn defaults() -> Settings {
        let builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_CONFIG, config::FileFormat::Toml));
        Self::from_builder(builder).expect("built-in defaults are valid")
    }

    fn from_builder(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Settings, config::ConfigError> {
        builder
            .add_source(
                config::Environment::with_prefix("HIVEHUB").prefix_separator("__").separator("__").try_parsing(true),
            )
            .build()?
            .try_deserialize()
    }
}
