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
    pub cluster: ClusterSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: String,
    /// A level or a `RUST_LOG`-style filter; `RUST_LOG` replaces it.
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    pub enabled: bool,
    pub path: String,
    /// A listener for the metrics only; empty = none.
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSettings {
    /// Empty: generated at start.
    pub node_id: String,
    pub heartbeat_secs: u64,
    pub node_timeout_secs: u64,
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
    /// Milliseconds a client's socket may take nothing before plain QoS 0 publishes for it are dropped.
    pub stall_ms: u64,
    pub max_inflight: usize,
    pub queue_capacity: usize,
    pub router_segment_bytes: usize,
    pub router_segment_count: usize,
    /// Seconds a QoS 1 `dh/` publish the database cannot take is retried before the connection closes.
    pub database_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebSocketSettings {
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
    pub queue_capacity: usize,
    pub max_queue_bytes: usize,
    pub send_timeout_secs: u64,
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
    pub acquire_timeout_secs: u64,
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
    /// otherwise), then the environment. Every problem found is reported: unknown sections, keys and
    /// `HIVEHUB__` variables (with the closest valid name), values of the wrong type, and values of
    /// enumerated keys outside their set.
    pub fn load(path: Option<&str>) -> Result<Settings, ConfigErrors> {
        match Self::load_checked(path) {
            (Some(settings), errors) if errors.is_empty() => Ok(settings),
            (_, errors) => Err(ConfigErrors(errors)),
        }
    }

    /// Like `load`, but returns every problem beside the settings built from what is valid (when the
    /// rest still makes a configuration), so `hivehub check-config` can check those further.
    pub fn load_checked(path: Option<&str>) -> (Option<Settings>, Vec<String>) {
        let file = match path {
            Some(p) => match read_file(p) {
                Ok(file) => Some(file),
                Err(e) => return (None, e.0),
            },
            None => match std::fs::read_to_string("broker.toml") {
                Ok(text) => Some(("broker.toml".to_string(), text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return (None, vec![format!("cannot read broker.toml: {e}")]),
            },
        };
        Self::build(file.as_ref().map(|(name, text)| (name.as_str(), text.as_str())), std::env::vars())
    }

    /// Defaults plus environment only: what tests start from before adjusting fields.
    pub fn defaults() -> Settings {
        Self::from_sources(None, std::env::vars()).unwrap_or_else(|e| panic!("bad configuration:\n{e}"))
    }

    /// Builds the settings from the defaults, an optional file `(name, TOML text)` and the environment
    /// variables `env` (only those starting with `HIVEHUB__` are read).
    pub fn from_sources(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigErrors> {
        match Self::build(file, env) {
            (Some(settings), errors) if errors.is_empty() => Ok(settings),
            (_, errors) => Err(ConfigErrors(errors)),
        }
    }

    /// Every problem of the sources, and the settings made of the valid ones (`None` when even those
    /// do not make a configuration, e.g. a value of the wrong type in the file).
    fn build(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> (Option<Settings>, Vec<String>) {
        let schema = Schema::get();
        let mut errors = Vec::new();
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_CONFIG, config::FileFormat::Toml));
        if let Some((name, text)) = file {
            let source = config::File::from_str(text, config::FileFormat::Toml);
            match config::Source::collect(&source) {
                Ok(table) => {
                    check_file(name, &table, schema, &mut errors);
                    builder = builder.add_source(source);
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        let mut env: Vec<(String, String)> = env.into_iter().filter(|(name, _)| is_hivehub_var(name)).collect();
        env.sort();
        for (name, value) in env {
            match check_env(&name, &value, schema)
                .and_then(|(key, value)| builder.clone().set_override(key, value).map_err(|e| format!("{name}: {e}")))
            {
                Ok(with) => builder = with,
                Err(e) => errors.push(e),
            }
        }
        match builder.build().and_then(|c| c.try_deserialize::<Settings>()) {
            Ok(settings) => (Some(settings), errors),
            // A value the checks above let through but the settings cannot take: said once.
            Err(e) if errors.is_empty() => (None, vec![e.to_string()]),
            Err(_) => (None, errors),
        }
    }
}

/// Every problem found in the configuration, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

const ENV_PREFIX: &str = "HIVEHUB__";

/// Keys whose value is one of a fixed set (compared exactly: lowercase).
const ENUMERATIONS: [(&str, &[&str]); 3] = [
    ("database.synchronous", &["off", "normal", "full", "extra"]),
    ("log.format", &["text", "json"]),
    ("mqtt.plain_topics", &["open", "authenticated", "off"]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Integer,
    Boolean,
    Float,
}

impl Kind {
    fn of(value: &config::ValueKind) -> Option<Kind> {
        use config::ValueKind as V;
        match value {
            V::String(_) => Some(Kind::String),
            V::I64(_) | V::I128(_) | V::U64(_) | V::U128(_) => Some(Kind::Integer),
            V::Boolean(_) => Some(Kind::Boolean),
            V::Float(_) => Some(Kind::Float),
            V::Nil | V::Table(_) | V::Array(_) => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Integer => "an integer",
            Kind::Boolean => "true or false",
            Kind::Float => "a number",
        }
    }
}

fn describe_value(value: &config::ValueKind) -> String {
    use config::ValueKind as V;
    match value {
        V::String(s) => format!("{s:?}"),
        V::Table(_) => "a table".into(),
        V::Array(_) => "an array".into(),
        other => other.to_string(),
    }
}

/// The valid sections and keys, with the type of each, taken from the compiled-in `broker.toml`.
struct Schema {
    /// (section, [(key, kind)]), sorted.
    sections: Vec<(String, Vec<(String, Kind)>)>,
}

impl Schema {
    fn get() -> &'static Schema {
        static SCHEMA: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
        SCHEMA.get_or_init(|| {
            let table = config::Source::collect(&config::File::from_str(DEFAULT_CONFIG, config::FileFormat::Toml))
                .expect("built-in defaults parse");
            let mut sections: Vec<(String, Vec<(String, Kind)>)> = table
                .into_iter()
                .map(|(section, value)| {
                    let config::ValueKind::Table(keys) = value.kind else {
                        panic!("built-in defaults: `{section}` is not a section")
                    };
                    let mut keys: Vec<(String, Kind)> = keys
                        .into_iter()
                        .map(|(k, v)| {
                            let kind = Kind::of(&v.kind).expect("built-in defaults are scalars");
                            (k, kind)
                        })
                        .collect();
                    keys.sort_by(|a, b| a.0.cmp(&b.0));
                    (section, keys)
                })
                .collect();
            sections.sort_by(|a, b| a.0.cmp(&b.0));
            Schema { sections }
        })
    }

    fn section(&self, name: &str) -> Option<&[(String, Kind)]> {
        self.sections.iter().find(|(s, _)| s == name).map(|(_, keys)| keys.as_slice())
    }

    fn kind(&self, section: &str, key: &str) -> Option<Kind> {
        self.section(section)?.iter().find(|(k, _)| k == key).map(|(_, kind)| *kind)
    }

    fn closest_section(&self, name: &str) -> Option<&str> {
        closest(name, self.sections.iter().map(|(s, _)| s.as_str()))
    }

    /// The valid `(section, key)` closest to an unknown one: a near key of the same (or the nearest)
    /// section, else the same or a near key name in another section.
    fn suggest(&self, section: &str, key: &str) -> Option<(&str, &str)> {
        let in_section = |s: &str| {
            let keys = self.section(s)?;
            let (section, _) = self.sections.iter().find(|(name, _)| name == s)?;
            closest(key, keys.iter().map(|(k, _)| k.as_str())).map(|k| (section.as_str(), k))
        };
        if let Some(found) = in_section(section) {
            return Some(found);
        }
        if self.section(section).is_none() {
            if let Some(found) = self.closest_section(section).and_then(in_section) {
                return Some(found);
            }
        }
        self.sections.iter().find_map(|(s, _)| in_section(s))
    }
}

/// The candidate nearest to `word` (case-insensitive edit distance), when near enough to be a typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance where swapping two adjacent characters also counts as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d: Vec<Vec<usize>> = (0..=a.len()).map(|i| vec![i; b.len() + 1]).collect();
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn read_file(path: &str) -> Result<(String, String), ConfigErrors> {
    let mut last_error = None;
    // Like the `config` crate's `File::with_name`: `PATH`, else `PATH.toml`.
    for candidate in [path.to_string(), format!("{path}.toml")] {
        match std::fs::read_to_string(&candidate) {
            Ok(text) => return Ok((candidate, text)),
            Err(e) => last_error.get_or_insert(e),
        };
    }
    let e = last_error.expect("one attempt was made");
    Err(ConfigErrors(vec![format!("cannot read the configuration file {path}: {e}")]))
}

/// Checks one value of a known key: its type, and for an enumerated key its set.
fn check_value(section: &str, key: &str, value: &config::ValueKind, expected: Kind) -> Result<(), String> {
    if Kind::of(value) != Some(expected) {
        return Err(format!("{section}.{key} must be {}, not {}", expected.describe(), describe_value(value)));
    }
    let full = format!("{section}.{key}");
    if let (Some((_, allowed)), config::ValueKind::String(s)) = (ENUMERATIONS.iter().find(|(k, _)| *k == full), value) {
        if !allowed.contains(&s.as_str()) {
            let list = allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
            let hint =
                closest(s, allowed.iter().copied()).map(|a| format!(" (did you mean {a:?}?)")).unwrap_or_default();
            return Err(format!("{full} = {s:?} is not one of {list}{hint}"));
        }
    }
    Ok(())
}

/// Unknown sections and keys, wrong types and invalid enumerated values in a configuration file.
fn check_file(name: &str, table: &config::Map<String, config::Value>, schema: &Schema, errors: &mut Vec<String>) {
    let mut sections: Vec<_> = table.iter().collect();
    sections.sort_by(|a, b| a.0.cmp(b.0));
    for (section, value) in sections {
        let config::ValueKind::Table(keys) = &value.kind else {
            let hint =
                schema.suggest("", section).map(|(s, k)| format!(" (did you mean {s}.{k}?)")).unwrap_or_default();
            errors.push(format!("{name}: unknown key {section}{hint}"));
            continue;
        };
        if schema.section(section).is_none() {
            let hint = schema.closest_section(section).map(|s| format!(" (did you mean [{s}]?)")).unwrap_or_default();
            errors.push(format!("{name}: unknown section [{section}]{hint}"));
            continue;
        }
        let mut keys: Vec<_> = keys.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (key, value) in keys {
            match schema.kind(section, key) {
                None => {
                    let hint = schema
                        .suggest(section, key)
                        .map(|(s, k)| format!(" (did you mean {s}.{k}?)"))
                        .unwrap_or_default();
                    errors.push(format!("{name}: unknown key {section}.{key}{hint}"));
                }
                Some(kind) => {
                    if let Err(e) = check_value(section, key, &value.kind, kind) {
                        errors.push(format!("{name}: {e}"));
                    }
                }
            }
        }
    }
}

fn is_hivehub_var(name: &str) -> bool {
    name.len() >= ENV_PREFIX.len() && name[..ENV_PREFIX.len()].eq_ignore_ascii_case(ENV_PREFIX)
}

fn env_name(section: &str, key: &str) -> String {
    format!("{ENV_PREFIX}{}__{}", section.to_ascii_uppercase(), key.to_ascii_uppercase())
}

/// A `HIVEHUB__SECTION__KEY` variable as the key `section.key` and its value, typed as the key is:
/// string keys take the text as it is (`007123` stays a string), numbers and booleans are parsed.
fn check_env(name: &str, text: &str, schema: &Schema) -> Result<(String, config::ValueKind), String> {
    let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
    let (section, key) = rest.split_once("__").unwrap_or((rest.as_str(), ""));
    let Some(kind) = schema.kind(section, key) else {
        let hint = schema
            .suggest(section, key)
            .map(|(s, k)| format!(" (did you mean {}?)", env_name(s, k)))
            .unwrap_or_default();
        return Err(format!("unknown variable {name}{hint}"));
    };
    let value = match kind {
        Kind::String => Some(config::ValueKind::String(text.to_string())),
        Kind::Integer => text.trim().parse::<i64>().ok().map(config::ValueKind::I64),
        Kind::Boolean => match text.trim().to_ascii_lowercase().as_str() {
            "true" => Some(config::ValueKind::Boolean(true)),
            "false" => Some(config::ValueKind::Boolean(false)),
            _ => None,
        },
        Kind::Float => text.trim().parse::<f64>().ok().map(config::ValueKind::Float),
    };
    let Some(value) = value else {
        return Err(format!("{name} must be {}, not {text:?}", kind.describe()));
    };
    check_value(section, key, &value, kind).map_err(|e| format!("{name}: {e}"))?;
    Ok((format!("{section}.{key}"), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn errors(file: Option<&str>, vars: &[(&str, &str)]) -> Vec<String> {
        Settings::from_sources(file.map(|t| ("broker.toml", t)), env(vars)).expect_err("a bad configuration").0
    }

    #[test]
    fn environment_strings_stay_strings_and_numbers_and_booleans_still_parse() {
        let s = Settings::from_sources(
            None,
            env(&[
                ("HIVEHUB__AUTH__ADMIN_PASSWORD", "007123"),
                ("HIVEHUB__AUTH__JWT_SECRET", "true"),
                ("HIVEHUB__HTTP__MAX_CONNECTIONS", "100"),
                ("HIVEHUB__MQTT__ENABLED", "false"),
                ("HIVEHUB__DATABASE__SYNCHRONOUS", "extra"),
                ("OTHER_VARIABLE", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.auth.admin_password, "007123");
        assert_eq!(s.auth.jwt_secret, "true");
        assert_eq!(s.http.max_connections, 100);
        assert!(!s.mqtt.enabled);
        assert_eq!(s.database.synchronous, "extra");
    }

    #[test]
    fn a_file_overrides_the_defaults_and_the_environment_overrides_the_file() {
        let file = "[http]\nlisten = \"127.0.0.1:9000\"\nmax_connections = 5\n[mqtt]\nplain_topics = \"off\"\n";
        let s = Settings::from_sources(Some(("broker.toml", file)), env(&[("HIVEHUB__HTTP__MAX_CONNECTIONS", "7")]))
            .unwrap();
        assert_eq!(s.http.listen, "127.0.0.1:9000");
        assert_eq!(s.http.max_connections, 7);
        assert_eq!(s.mqtt.plain_topics, PlainTopics::Off);
    }

    #[test]
    fn unknown_keys_sections_and_variables_name_the_closest_valid_one() {
        let file = "[http]\nlisen = \"127.0.0.1:1\"\n[htpp]\nlisten = \"x\"\n[database]\nsynchronus = \"full\"\n";
        assert_eq!(
            errors(Some(file), &[("HIVEHUB__HTTP__LISEN", "x"), ("HIVEHUB__MQTT__PLAIN_TOPIC", "off")]),
            [
                "broker.toml: unknown key database.synchronus (did you mean database.synchronous?)",
                "broker.toml: unknown section [htpp] (did you mean [http]?)",
                "broker.toml: unknown key http.lisen (did you mean http.listen?)",
                "unknown variable HIVEHUB__HTTP__LISEN (did you mean HIVEHUB__HTTP__LISTEN?)",
                "unknown variable HIVEHUB__MQTT__PLAIN_TOPIC (did you mean HIVEHUB__MQTT__PLAIN_TOPICS?)",
            ]
        );
        // A key in the wrong section, a misspelt section, and names nothing resembles.
        assert_eq!(
            errors(None, &[("HIVEHUB__HTTP__SYNCHRONOUS", "full"), ("HIVEHUB__HTPP__LISTEN", "x")]),
            [
                "unknown variable HIVEHUB__HTPP__LISTEN (did you mean HIVEHUB__HTTP__LISTEN?)",
                "unknown variable HIVEHUB__HTTP__SYNCHRONOUS (did you mean HIVEHUB__DATABASE__SYNCHRONOUS?)",
            ]
        );
        assert_eq!(
            errors(Some("[zzzzzzzz]\nq = 1\n"), &[("HIVEHUB__QQQQQQ", "1")]),
            ["broker.toml: unknown section [zzzzzzzz]", "unknown variable HIVEHUB__QQQQQQ"]
        );
    }

    #[test]
    fn invalid_enumerated_values_and_wrong_types_are_all_reported() {
        let file = "[database]\nsynchronous = \"fulll\"\nmax_connections = \"8\"\n[mqtt]\nplain_topics = \"closed\"\n";
        assert_eq!(
            errors(Some(file), &[("HIVEHUB__HTTP__MAX_CONNECTIONS", "many"), ("HIVEHUB__MQTT__ENABLED", "yes")]),
            [
                "broker.toml: database.max_connections must be an integer, not \"8\"",
                "broker.toml: database.synchronous = \"fulll\" is not one of \"off\", \"normal\", \"full\", \"extra\" \
                 (did you mean \"full\"?)",
                "broker.toml: mqtt.plain_topics = \"closed\" is not one of \"open\", \"authenticated\", \"off\"",
                "HIVEHUB__HTTP__MAX_CONNECTIONS must be an integer, not \"many\"",
                "HIVEHUB__MQTT__ENABLED must be true or false, not \"yes\"",
            ]
        );
        assert_eq!(
            errors(None, &[("HIVEHUB__DATABASE__SYNCHRONOUS", "FULL")]),
            ["HIVEHUB__DATABASE__SYNCHRONOUS: database.synchronous = \"FULL\" is not one of \"off\", \"normal\", \
              \"full\", \"extra\" (did you mean \"full\"?)"]
        );
        // A TOML syntax error is reported with the file's name.
        assert!(errors(Some("[http\n"), &[])[0].starts_with("broker.toml: "));
    }

    #[test]
    fn edit_distance_counts_a_swap_as_one_edit() {
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(edit_distance("htpp", "http"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
