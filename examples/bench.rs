//! Benchmarks of a real hivehub started in-process on 127.0.0.1:0 with a fresh temporary SQLite database
//! (or, with `--database postgres://...`, a fresh database on that PostgreSQL server)
//! (and, for the connection and broker-comparison scenarios, of a hub and a Mosquitto broker started as
//! child processes, so their memory can be read from `/proc/<pid>/status`).
//!
//! ```text
//! cargo run --release --example bench                 # every scenario
//! cargo run --release --example bench -- inserts      # one scenario (several may be named)
//! cargo run --release --example bench -- --seconds 5 longpoll
//! BENCH_SECONDS=30 cargo run --release --example bench -- inserts
//! cargo run --release --example bench -- --help       # every knob (each also has a BENCH_* variable)
//! cargo run --release --example bench -- --database postgres://postgres@127.0.0.1:5432/postgres inserts
//! ```
//!
//! Scenarios (one `async fn` each, listed in [`SCENARIOS`]):
//! - `inserts`: concurrent REST notification inserts for a fixed duration; throughput, per-request
//!   latency, and a check that the stored notifications are exactly the ones answered 201.
//! - `longpoll`: many long-pollers on one device, one notification inserted at a time; time until each
//!   poller has the notification.
//! - `ws`: REST insert -> WebSocket push latency with 100 and 1,000 subscribed sessions, and the push
//!   delivery rate under a writer inserting as fast as it can (every push counted, none may be lost).
//! - `mqtt-latency`: an MQTT device publishes QoS1 notifications to its `dh/notification/...` topic;
//!   time until a WebSocket subscriber (and an MQTT subscriber) has the push, and until the PUBACK.
//! - `mqtt-ingest`: several device connections publish notifications as fast as they can, QoS0 then
//!   QoS1; stored notifications per second, checked through the REST query API.
//! - `mqtt-fleet`: 100 MQTT devices publish 1,000 QoS1 notifications each to their `dh/` topics, 64
//!   unacknowledged per connection; acks/s and publish -> PUBACK latency of the hub (stored before the
//!   PUBACK) and of Mosquitto (child process, not storing) under the same load, and their ratio.
//! - `commands`: command round trip as a DeviceHive application sees it: REST `POST /device/{id}/command`,
//!   then `GET .../command/{commandId}/poll` (wait) until an MQTT device, subscribed to its
//!   `dh/command/...` topic, has published the update to `dh/command_update/...`; a one-at-a-time
//!   baseline, then one command in flight per device; latency percentiles and round trips per second.
//! - `mqtt-connect`: a hub in a child process; authenticated CONNECT -> CONNACK per second (JWT as the
//!   password, and login/password, which hashes Argon2 per connect) and RSS per idle connection.
//! - `cluster-latency` (PostgreSQL): a second hub instance on the same database; an MQTT device on
//!   instance A (several device connections) publish QoS1 notifications at a steady total rate; time
//!   until a WebSocket subscriber on A and one on B have the push (first A alone, then both instances).
//! - `cluster-ingest` (PostgreSQL): MQTT QoS1 ingest with every device on one instance, then with the
//!   devices split over two instances sharing the database.
//! - `clock-lock` (PostgreSQL): the writer's transaction (stamp, insert, notify, commit) straight over
//!   sqlx, with and without the message clock's advisory lock, from one and two connections: what the
//!   cluster-wide ordering costs per commit.
//! - `mosquitto`: plain-topic MQTT (fan-in throughput QoS0/QoS1, publish -> subscriber latency, connects
//!   per second, RSS per idle connection) against Mosquitto and against the hub, both as child processes
//!   driven by the same client code; prints a side-by-side table.
//!
//! The in-process scenarios share the process (and the tokio runtime) with the hub, so on a small
//! machine the figures include the clients' own CPU cost; in the child-process scenarios the broker has
//! its own process but still shares the machine's CPUs with the load generator. Set
//! `RUST_LOG=hivehub=debug` to see the hub's log (default: warnings and errors only). The bench raises
//! its own open-file limit with `prlimit` when it can (children inherit it); otherwise run
//! `ulimit -n 65536` first.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hivehub::config::Settings;
use hivehub::App;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const ADMIN_LOGIN: &str = "dhadmin";
const ADMIN_PASSWORD: &str = "bench-admin-pass-1";

/// The scenarios, in the order `all` runs them. Add new ones here and in [`run_scenario`].
const SCENARIOS: &[(&str, &str)] = &[
    ("inserts", "concurrent REST notification inserts: throughput, latency, stored == acknowledged"),
    ("longpoll", "long-poll wake-up latency: N pollers on one device, one insert at a time"),
    ("ws", "REST insert -> WebSocket push: latency with 100 / 1,000 sessions, deliveries/s, none lost"),
    ("mqtt-latency", "MQTT device QoS1 publish -> stored -> WebSocket (and MQTT) push latency"),
    ("mqtt-ingest", "MQTT notification ingest/s over several device connections, QoS0 and QoS1, verified"),
    ("mqtt-fleet", "100 MQTT devices x 1,000 QoS1 notifications: hub (stored) vs Mosquitto (not storing), acks/s"),
    ("commands", "REST command -> MQTT device -> command_update -> REST wait: round-trip latency and rate"),
    ("mqtt-connect", "hub child process: authenticated MQTT connects/s (JWT, login), RSS per idle connection"),
    ("mosquitto", "plain-topic MQTT: Mosquitto vs hub (child processes), side-by-side table"),
    ("ws-slow", "hub child process: WebSocket sessions that never read; RSS, their closing, a reader's latency"),
    ("cluster-latency", "PostgreSQL, two instances: MQTT QoS1 publish on A -> WebSocket push on A and on B"),
    ("cluster-ingest", "PostgreSQL: MQTT QoS1 ingest/s on one instance vs devices split over two instances"),
    ("clock-lock", "PostgreSQL: commits/s and latency of the writer's transaction with and without the clock lock"),
];

/// Set in the environment of the hub child process the bench starts for `mqtt-connect` and `mosquitto`.
const CHILD_HUB_ENV: &str = "BENCH_CHILD_HUB";

/// Description of a scenario for its heading.
fn describe(name: &str) -> &'static str {
    SCENARIOS.iter().find(|(n, _)| *n == name).map(|(_, d)| *d).unwrap_or("")
}

#[derive(Parser, Debug, Clone)]
#[command(about = "hivehub benchmarks (in-process hub, temporary SQLite or PostgreSQL database)")]
struct Opts {
    /// Scenarios to run: `inserts`, `longpoll`, `ws`, `mqtt-latency`, `mqtt-ingest`, `mqtt-fleet`, `commands`,
    /// `mqtt-connect`, `mosquitto`, `ws-slow`, or `all` (default).
    scenarios: Vec<String>,
    /// Duration of the insert scenario in seconds [env BENCH_SECONDS, default 10].
    #[arg(long)]
    seconds: Option<u64>,
    /// Concurrent HTTP clients of the insert scenario, one connection each [env BENCH_CLIENTS, default 50].
    #[arg(long)]
    clients: Option<usize>,
    /// Devices the inserts are spread over [env BENCH_DEVICES, default 50].
    #[arg(long)]
    devices: Option<usize>,
    /// Long-pollers of the longpoll scenario, one connection each [env BENCH_POLLERS, default 100].
    #[arg(long)]
    pollers: Option<usize>,
    /// Rounds (inserted notifications) of the longpoll scenario [env BENCH_ROUNDS, default 200].
    #[arg(long)]
    rounds: Option<usize>,
    /// Pause in ms between "every poller has re-sent its poll" and the next insert, so the hub has
    /// registered every waiter before the notification commits [env BENCH_SETTLE_MS, default 50].
    #[arg(long)]
    settle_ms: Option<u64>,
    /// WebSocket session counts of the ws scenario, comma separated [env BENCH_WS_SESSIONS, default 100,1000].
    #[arg(long)]
    ws_sessions: Option<String>,
    /// Latency rounds of the ws scenario, one REST insert each [env BENCH_WS_ROUNDS, default 100].
    #[arg(long)]
    ws_rounds: Option<usize>,
    /// Seconds of the ws delivery-rate phase [env BENCH_WS_SECONDS, default 5].
    #[arg(long)]
    ws_seconds: Option<u64>,
    /// Concurrent REST writers (one connection each) of the ws delivery-rate phase [env BENCH_WS_WRITERS, default 4].
    #[arg(long)]
    ws_writers: Option<usize>,
    /// What the ws sessions subscribe to: `device` or `network` [env BENCH_WS_SUBSCRIBE, default device].
    #[arg(long)]
    ws_subscribe: Option<String>,
    /// Messages of each MQTT latency measurement [env BENCH_MQTT_MESSAGES, default 3000].
    #[arg(long)]
    mqtt_messages: Option<usize>,
    /// Publish rate of the MQTT latency measurements in msg/s [env BENCH_MQTT_RATE, default 500].
    #[arg(long)]
    mqtt_rate: Option<u64>,
    /// Seconds of each MQTT throughput phase (mqtt-ingest, mosquitto fan-in) [env BENCH_MQTT_SECONDS, default 5].
    #[arg(long)]
    mqtt_seconds: Option<u64>,
    /// Concurrent MQTT publisher connections (mqtt-ingest devices, fan-in publishers) [env BENCH_MQTT_PUBLISHERS, default 8].
    #[arg(long)]
    mqtt_publishers: Option<usize>,
    /// Unacknowledged QoS1 publishes per publisher connection [env BENCH_MQTT_WINDOW, default 64].
    #[arg(long)]
    mqtt_window: Option<usize>,
    /// Device connections of the mqtt-fleet scenario [env BENCH_FLEET_DEVICES, default 100].
    #[arg(long)]
    fleet_devices: Option<usize>,
    /// QoS1 notifications each mqtt-fleet device publishes [env BENCH_FLEET_MESSAGES, default 1000].
    #[arg(long)]
    fleet_messages: Option<u64>,
    /// MQTT devices of the commands scenario, one connection each, one command in flight each
    /// [env BENCH_COMMAND_DEVICES, default 100].
    #[arg(long)]
    command_devices: Option<usize>,
    /// Command round trips of the commands scenario, spread over the devices [env BENCH_COMMAND_ROUNDS, default 2000].
    #[arg(long)]
    command_rounds: Option<usize>,
    /// Concurrent connectors of the connect-rate measurements (JWT / anonymous) [env BENCH_CONNECTORS, default 200].
    #[arg(long)]
    connectors: Option<usize>,
    /// Concurrent connectors of the login/password (Argon2) connect-rate measurement [env BENCH_LOGIN_CONNECTORS, default 32].
    #[arg(long)]
    login_connectors: Option<usize>,
    /// Seconds of each connect-rate phase [env BENCH_CONNECT_SECONDS, default 5].
    #[arg(long)]
    connect_seconds: Option<u64>,
    /// Timeout of one connection attempt (TCP connect + CONNECT -> CONNACK) in ms [env BENCH_CONNECT_TIMEOUT_MS, default 5000].
    #[arg(long)]
    connect_timeout_ms: Option<u64>,
    /// Database of the hubs under test: empty for a temporary SQLite file, or a PostgreSQL URL
    /// (`postgres://USER@HOST:PORT/DB`) on which every hub gets a fresh database, dropped afterwards
    /// [env BENCH_DATABASE].
    #[arg(long)]
    database: Option<String>,
    /// Idle connections opened to measure a broker's memory per connection [env BENCH_IDLE_CONNECTIONS, default 5000].
    #[arg(long)]
    idle_connections: Option<usize>,
    /// The Mosquitto executable [env BENCH_MOSQUITTO, default /usr/sbin/mosquitto].
    #[arg(long)]
    mosquitto: Option<String>,
    /// Publish rate of the cluster-latency measurements in msg/s [env BENCH_CLUSTER_RATE, default 1000].
    #[arg(long)]
    cluster_rate: Option<u64>,
    /// Seconds of each cluster-latency measurement [env BENCH_CLUSTER_SECONDS, default 15].
    #[arg(long)]
    cluster_seconds: Option<u64>,
    /// MQTT device connections the cluster-latency rate is spread over [env BENCH_CLUSTER_DEVICES, default 20].
    #[arg(long)]
    cluster_devices: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WsTarget {
    Device,
    Network,
}

/// Options with environment variables and defaults applied.
#[derive(Debug, Clone)]
struct Config {
    seconds: u64,
    clients: usize,
    devices: usize,
    pollers: usize,
    rounds: usize,
    settle: Duration,
    ws_sessions: Vec<usize>,
    ws_rounds: usize,
    ws_seconds: u64,
    ws_writers: usize,
    ws_target: WsTarget,
    mqtt_messages: usize,
    mqtt_rate: u64,
    mqtt_seconds: u64,
    mqtt_publishers: usize,
    mqtt_window: usize,
    fleet_devices: usize,
    fleet_messages: u64,
    command_devices: usize,
    command_rounds: usize,
    connectors: usize,
    login_connectors: usize,
    connect_seconds: u64,
    connect_timeout: Duration,
    idle_connections: usize,
    mosquitto: String,
    cluster_rate: u64,
    cluster_seconds: u64,
    cluster_devices: usize,
}

impl Config {
    fn from(opts: &Opts) -> BenchResult<Config> {
        fn pick<T: std::str::FromStr>(cli: Option<T>, env: &str, default: T) -> BenchResult<T> {
            if let Some(v) = cli {
                return Ok(v);
            }
            match std::env::var(env) {
                Ok(s) => s.trim().parse().map_err(|_| format!("{env}={s:?} is not a valid number").into()),
                Err(_) => Ok(default),
            }
        }
        fn text(cli: &Option<String>, env: &str, default: &str) -> String {
            cli.clone().or_else(|| std::env::var(env).ok()).unwrap_or_else(|| default.to_string())
        }
        let ws_sessions = text(&opts.ws_sessions, "BENCH_WS_SESSIONS", "100,1000")
            .split(',')
            .map(|n| n.trim().parse::<usize>().map_err(|_| format!("bad session count {n:?} in ws-sessions")))
            .collect::<Result<Vec<_>, _>>()?;
        let ws_target = match text(&opts.ws_subscribe, "BENCH_WS_SUBSCRIBE", "device").as_str() {
            "device" => WsTarget::Device,
            "network" => WsTarget::Network,
            other => return Err(format!("ws-subscribe must be device or network, not {other:?}").into()),
        };
        let c = Config {
            ws_sessions,
            ws_rounds: pick(opts.ws_rounds, "BENCH_WS_ROUNDS", 100)?,
            ws_seconds: pick(opts.ws_seconds, "BENCH_WS_SECONDS", 5)?,
            ws_writers: pick(opts.ws_writers, "BENCH_WS_WRITERS", 4)?,
            ws_target,
            mqtt_messages: pick(opts.mqtt_messages, "BENCH_MQTT_MESSAGES", 3000)?,
            mqtt_rate: pick(opts.mqtt_rate, "BENCH_MQTT_RATE", 500)?,
            mqtt_seconds: pick(opts.mqtt_seconds, "BENCH_MQTT_SECONDS", 5)?,
            mqtt_publishers: pick(opts.mqtt_publishers, "BENCH_MQTT_PUBLISHERS", 8)?,
            mqtt_window: pick(opts.mqtt_window, "BENCH_MQTT_WINDOW", 64)?,
            fleet_devices: pick(opts.fleet_devices, "BENCH_FLEET_DEVICES", 100)?,
            fleet_messages: pick(opts.fleet_messages, "BENCH_FLEET_MESSAGES", 1000)?,
            command_devices: pick(opts.command_devices, "BENCH_COMMAND_DEVICES", 100)?,
            command_rounds: pick(opts.command_rounds, "BENCH_COMMAND_ROUNDS", 2000)?,
            connectors: pick(opts.connectors, "BENCH_CONNECTORS", 200)?,
            login_connectors: pick(opts.login_connectors, "BENCH_LOGIN_CONNECTORS", 32)?,
            connect_seconds: pick(opts.connect_seconds, "BENCH_CONNECT_SECONDS", 5)?,
            connect_timeout: Duration::from_millis(pick(opts.connect_timeout_ms, "BENCH_CONNECT_TIMEOUT_MS", 5000)?),
            idle_connections: pick(opts.idle_connections, "BENCH_IDLE_CONNECTIONS", 5000)?,
            mosquitto: text(&opts.mosquitto, "BENCH_MOSQUITTO", "/usr/sbin/mosquitto"),
            cluster_rate: pick(opts.cluster_rate, "BENCH_CLUSTER_RATE", 1000)?,
            cluster_seconds: pick(opts.cluster_seconds, "BENCH_CLUSTER_SECONDS", 15)?,
            cluster_devices: pick(opts.cluster_devices, "BENCH_CLUSTER_DEVICES", 20)?,
            seconds: pick(opts.seconds, "BENCH_SECONDS", 10)?,
            clients: pick(opts.clients, "BENCH_CLIENTS", 50)?,
            devices: pick(opts.devices, "BENCH_DEVICES", 50)?,
            pollers: pick(opts.pollers, "BENCH_POLLERS", 100)?,
            rounds: pick(opts.rounds, "BENCH_ROUNDS", 200)?,
            settle: Duration::from_millis(pick(opts.settle_ms, "BENCH_SETTLE_MS", 50)?),
        };
        if c.clients == 0 || c.devices == 0 || c.pollers == 0 || c.rounds == 0 || c.seconds == 0 {
            return Err("seconds, clients, devices, pollers and rounds must be at least 1".into());
        }
        let sizes = [
            c.ws_rounds,
            c.ws_seconds as usize,
            c.ws_writers,
            c.mqtt_messages,
            c.mqtt_rate as usize,
            c.mqtt_seconds as usize,
            c.mqtt_publishers,
            c.mqtt_window,
            c.fleet_devices,
            c.fleet_messages as usize,
            c.command_devices,
            c.command_rounds,
            c.connectors,
            c.login_connectors,
            c.connect_seconds as usize,
            c.idle_connections,
            c.cluster_rate as usize,
            c.cluster_seconds as usize,
            c.cluster_devices,
        ];
        if sizes.contains(&0) || c.ws_sessions.is_empty() || c.ws_sessions.contains(&0) {
            return Err("every ws-*, mqtt-*, command-*, connect and connection count must be at least 1".into());
        }
        if c.mqtt_window > 65_000 {
            return Err("mqtt-window must be at most 65000 (MQTT packet ids)".into());
        }
        Ok(c)
    }
}

#[tokio::main]
async fn main() {
    // The hub's own filter for `[log] level = "warn"`: it keeps the embedded router's logs off, as
    // `hivehub serve` does (a plain "warn" made the router build an error-level span, with the topic
    // formatted, for every publish: ~8 % of the fan-in's CPU that a real hub does not spend).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(hivehub::logging::filter_directives("warn")));
    let child_hub = std::env::var_os(CHILD_HUB_ENV).is_some();
    // The child hub's log goes through a pipe to the bench, which summarises it: no colours there.
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(!child_hub).init();

    if child_hub {
        child_hub_main().await;
        return;
    }
    let opts = Opts::parse();
    if let Err(e) = run(opts).await {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

async fn run(opts: Opts) -> BenchResult<()> {
    let config = Config::from(&opts)?;
    let selected = select_scenarios(&opts.scenarios)?;
    let server = opts.database.clone().or_else(|| std::env::var("BENCH_DATABASE").ok()).filter(|u| !u.is_empty());
    let _ = POSTGRES_SERVER.set(server);

    let hub = BenchHub::start().await?;
    println!("hivehub bench");
    println!(
        "  hub: in-process at {} | {}, synchronous={}, batch_max_rows={}, \
         pool={} | {} CPUs | load generator in the same process and runtime",
        hub.root,
        match POSTGRES_SERVER.get().cloned().flatten() {
            Some(url) => format!("PostgreSQL, a fresh database on {}", hivehub::store::redact(&url)),
            None => "SQLite in a temporary dir".to_string(),
        },
        hub.settings.database.synchronous,
        hub.settings.database.batch_max_rows,
        hub.settings.database.max_connections,
        available_cpus()
    );
    println!(
        "  open-file limit of the bench and its child processes: {}",
        raise_fd_limit(HOLD_CONNECTIONS as u64 + 15_536)
    );

    let mut failed = Vec::new();
    for name in selected {
        println!();
        let started = Instant::now();
        match run_scenario(name, &hub, &config).await {
            Ok(()) => println!("  ({name} took {:.1} s)", started.elapsed().as_secs_f64()),
            Err(e) => {
                println!("  SCENARIO {name} FAILED: {e}");
                failed.push(name);
            }
        }
    }
    hub.stop().await;
    drop_bench_databases().await;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed scenarios: {}", failed.join(", ")).into())
    }
}

fn select_scenarios(args: &[String]) -> BenchResult<Vec<&'static str>> {
    let all: Vec<&'static str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
    if args.is_empty() || args.iter().any(|a| a == "all") {
        return Ok(all);
    }
    let mut out = Vec::new();
    for a in args {
        match all.iter().find(|n| **n == a.as_str()) {
            Some(n) if !out.contains(n) => out.push(*n),
            Some(_) => {}
            None => {
                let mut msg = format!("unknown scenario {a:?}; known:");
                for (n, d) in SCENARIOS {
                    let _ = write!(msg, "\n  {n:<12} {d}");
                }
                return Err(msg.into());
            }
        }
    }
    Ok(out)
}

async fn run_scenario(name: &str, hub: &BenchHub, config: &Config) -> BenchResult<()> {
    match name {
        "inserts" => scenario_inserts(hub, config).await,
        "longpoll" => scenario_longpoll(hub, config).await,
        "ws" => scenario_ws(hub, config).await,
        "mqtt-latency" => scenario_mqtt_latency(hub, config).await,
        "mqtt-ingest" => scenario_mqtt_ingest(hub, config).await,
        "mqtt-fleet" => scenario_mqtt_fleet(hub, config).await,
        "commands" => scenario_commands(hub, config).await,
        "mqtt-connect" => scenario_mqtt_connect(config).await,
        "mosquitto" => scenario_mosquitto(config).await,
        "ws-slow" => scenario_ws_slow().await,
        "cluster-latency" => scenario_cluster_latency(hub, config).await,
        "cluster-ingest" => scenario_cluster_ingest(hub, config).await,
        "clock-lock" => scenario_clock_lock(hub, config).await,
        other => Err(format!("scenario {other:?} is listed but not implemented").into()),
    }
}

// ---------------------------------------------------------------------------------------------------
// The hub under test and small REST helpers.

/// `--database`: the PostgreSQL server the hubs run on (`None`: SQLite).
static POSTGRES_SERVER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
/// Databases the bench created, dropped at the end.
static BENCH_DATABASES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The database URL of a new hub under test: a SQLite file in `dir`, or a fresh PostgreSQL database.
async fn bench_database(dir: &std::path::Path) -> BenchResult<String> {
    let Some(server) = POSTGRES_SERVER.get().cloned().flatten() else {
        return Ok(format!("sqlite://{}/hub.db", dir.display()));
    };
    let name = {
        let mut created = BENCH_DATABASES.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("hivehub_bench_{}_{}", std::process::id(), created.len());
        created.push(name.clone());
        name
    };
    let admin = sqlx::PgPool::connect(&server).await.map_err(|e| format!("PostgreSQL at {server}: {e}"))?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    admin.close().await;
    Ok(with_database(&server, &name))
}

/// `url` with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

async fn drop_bench_databases() {
    let Some(server) = POSTGRES_SERVER.get().cloned().flatten() else { return };
    let names = std::mem::take(&mut *BENCH_DATABASES.lock().unwrap_or_else(|e| e.into_inner()));
    if let Ok(admin) = sqlx::PgPool::connect(&server).await {
        for name in names {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
        }
        admin.close().await;
    }
}

struct BenchHub {
    app: App,
    _dir: tempfile::TempDir,
    settings: Settings,
    root: String,
    base: String,
    admin: String,
    network_id: i64,
    /// For setup and verification requests (not used by measured traffic).
    client: reqwest::Client,
}

impl BenchHub {
    async fn start() -> BenchResult<BenchHub> {
        let dir = tempfile::tempdir()?;
        let mut settings = Settings::defaults();
        settings.http.listen = "127.0.0.1:0".into();
        settings.mqtt.listen = "127.0.0.1:0".into();
        settings.database.url = bench_database(dir.path()).await?;
        settings.auth.admin_login = ADMIN_LOGIN.into();
        settings.auth.admin_password = ADMIN_PASSWORD.into();
        settings.auth.jwt_secret = String::new();
        let app = App::start(settings.clone()).await?;
        let root = format!("http://{}", app.http_addr);
        let base = format!("{root}/api/rest");
        let client = reqwest::Client::builder().pool_max_idle_per_host(16).build()?;
        let mut hub = BenchHub { app, _dir: dir, settings, root, base, admin: String::new(), network_id: 0, client };
        let token = hub
            .call(
                reqwest::Method::POST,
                None,
                "/token",
                Some(json!({"login": ADMIN_LOGIN, "password": ADMIN_PASSWORD})),
            )
            .await?;
        hub.admin = token["accessToken"].as_str().ok_or("no accessToken in the login answer")?.to_string();
        let network =
            hub.call(reqwest::Method::POST, Some(&hub.admin), "/network", Some(json!({"name": "bench"}))).await?;
        hub.network_id = network["id"].as_i64().ok_or("no id in the network answer")?;
        Ok(hub)
    }

    /// A second instance on the same database (PostgreSQL): the cluster scenarios. It shares the
    /// first one's users, JWT secret (stored in the database) and network.
    async fn join(&self) -> BenchResult<BenchHub> {
        let dir = tempfile::tempdir()?;
        let mut settings = self.settings.clone();
        // The administrator exists already; an empty password just says "do not seed".
        settings.auth.admin_password = String::new();
        let app = App::start(settings.clone()).await?;
        let root = format!("http://{}", app.http_addr);
        let base = format!("{root}/api/rest");
        let client = reqwest::Client::builder().pool_max_idle_per_host(16).build()?;
        Ok(BenchHub {
            app,
            _dir: dir,
            settings,
            root,
            base,
            admin: self.admin.clone(),
            network_id: self.network_id,
            client,
        })
    }

    async fn stop(self) {
        self.app.shutdown().await;
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A setup request that must succeed (2xx); returns the JSON body (`Null` when empty).
    async fn call(
        &self,
        method: reqwest::Method,
        token: Option<&str>,
        path: &str,
        body: Option<Value>,
    ) -> BenchResult<Value> {
        let mut rb = self.client.request(method.clone(), self.url(path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(format!("{method} {path} answered {status}: {text}").into());
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The writer's totals from `/metrics`: commits, rows committed, seconds spent committing.
    async fn writer_totals(&self) -> BenchResult<WriterTotals> {
        let text = self
            .client
            .get(format!("{}/metrics", self.root))
            .bearer_auth(&self.admin)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0.0)
        };
        Ok(WriterTotals {
            commits: value("hivehub_writer_commits_total"),
            rows: value("hivehub_writer_commit_rows_sum"),
            seconds: value("hivehub_writer_commit_seconds_sum"),
        })
    }

    /// Registers a device in the bench network.
    async fn device(&self, id: &str) -> BenchResult<()> {
        let body = json!({"name": id, "networkId": self.network_id});
        self.call(reqwest::Method::PUT, Some(&self.admin), &format!("/device/{id}"), Some(body)).await.map(|_| ())
    }

    /// Every stored id of the notifications named `name` of a device, through the REST query API
    /// (pages of up to 1000). The filter leaves out the hub's own `$device-add` notifications.
    async fn stored_notification_ids(&self, device: &str, name: &str) -> BenchResult<Vec<i64>> {
        let take = self.settings.limits.max_take.clamp(1, 1000);
        let mut ids = Vec::new();
        loop {
            let path = format!(
                "/device/{device}/notification?notification={name}&take={take}&skip={}&sortField=timestamp&sortOrder=ASC",
                ids.len()
            );
            let page = self.call(reqwest::Method::GET, Some(&self.admin), &path, None).await?;
            let page = page.as_array().ok_or("notification query did not answer an array")?;
            for n in page {
                ids.push(n["id"].as_i64().ok_or("notification without id")?);
            }
            if (page.len() as i64) < take {
                return Ok(ids);
            }
        }
    }
}

/// The writer's totals at one moment (see [`BenchHub::writer_totals`]).
#[derive(Clone, Copy, Default)]
struct WriterTotals {
    commits: f64,
    rows: f64,
    seconds: f64,
}

impl WriterTotals {
    /// What the writer did between `self` and `later` during `wall`: commits, rows per commit, time
    /// per commit and the share of the wall time spent inside commits.
    fn describe_until(&self, later: &WriterTotals, wall: Duration) -> String {
        let commits = later.commits - self.commits;
        let rows = later.rows - self.rows;
        let seconds = later.seconds - self.seconds;
        format!(
            "writer: {commits:.0} commits, {:.1} rows/commit, {:.2} ms/commit, committing {:.0} % of the time",
            rows / commits.max(1.0),
            seconds * 1000.0 / commits.max(1.0),
            seconds * 100.0 / wall.as_secs_f64().max(1e-9)
        )
    }
}

/// One HTTP client = one keep-alive connection (requests of one task are sequential).
fn dedicated_client() -> BenchResult<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(70))
        .build()?)
}

fn available_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

// ---------------------------------------------------------------------------------------------------
// Statistics.

/// Nearest-rank percentile of a sorted slice (`p` in 0..=100); `None` when empty.
fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Summary of latency samples in microseconds (signed: a "since answer" delay may be negative).
fn summary_us(samples: &mut [i64]) -> String {
    samples.sort_unstable();
    if samples.is_empty() {
        return "no samples".to_string();
    }
    let ms = |v: i64| format!("{:.3} ms", v as f64 / 1000.0);
    let mean = samples.iter().map(|&v| v as f64).sum::<f64>() / samples.len() as f64;
    let p = |q| ms(percentile(samples, q).unwrap_or_default());
    format!(
        "n={} min={} p50={} p90={} p99={} max={} mean={:.3} ms",
        samples.len(),
        ms(samples[0]),
        p(50.0),
        p(90.0),
        p(99.0),
        ms(*samples.last().unwrap_or(&0)),
        mean / 1000.0
    )
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// `later - earlier` in microseconds, negative when `later` is in fact earlier.
fn signed_micros(later: Instant, earlier: Instant) -> i64 {
    if later >= earlier {
        micros(later - earlier)
    } else {
        -micros(earlier - later)
    }
}

/// Counts of unexpected outcomes, keyed by a short description, with a first example of each.
#[derive(Default)]
struct Failures {
    counts: BTreeMap<String, (u64, String)>,
}

impl Failures {
    fn add(&mut self, kind: impl Into<String>, example: impl Into<String>) {
        let e = self.counts.entry(kind.into()).or_insert_with(|| (0, example.into()));
        e.0 += 1;
    }
    fn merge(&mut self, other: Failures) {
        for (k, (n, ex)) in other.counts {
            self.counts.entry(k).or_insert((0, ex)).0 += n;
        }
    }
    fn total(&self) -> u64 {
        self.counts.values().map(|(n, _)| n).sum()
    }
    fn print(&self, indent: &str) {
        for (kind, (n, example)) in &self.counts {
            let example: String = example.chars().take(300).collect();
            println!("{indent}{n} x {kind}; first: {example}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Scenario: notification insert throughput.

struct InsertWorker {
    latencies_us: Vec<i64>,
    ids: Vec<i64>,
    failures: Failures,
}

async fn scenario_inserts(hub: &BenchHub, config: &Config) -> BenchResult<()> {
    let duration = Duration::from_secs(config.seconds);
    println!("== inserts: {}", SCENARIOS[0].1);
    println!(
        "  {} clients (one keep-alive connection each), each looping POST /device/{{id}}/notification for {} s \
         over {} devices; latency = request sent -> 201 answer read, per insert",
        config.clients, config.seconds, config.devices
    );
    let devices: Vec<String> = (0..config.devices).map(|i| format!("bench-ins-{i:03}")).collect();
    for d in &devices {
        hub.device(d).await?;
    }

    let writer_before = hub.writer_totals().await?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(config.clients);
    for worker in 0..config.clients {
        let client = dedicated_client()?;
        let device = &devices[worker % devices.len()];
        let url = hub.url(&format!("/device/{device}/notification"));
        let token = hub.admin.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = InsertWorker { latencies_us: Vec::new(), ids: Vec::new(), failures: Failures::default() };
            let mut seq: u64 = 0;
            while Instant::now() < deadline {
                seq += 1;
                let body = json!({
                    "notification": "temp",
                    "parameters": {"worker": worker, "seq": seq, "value": 20.0 + (seq % 100) as f64 / 10.0}
                });
                let sent = Instant::now();
                let result = client.post(&url).bearer_auth(&token).json(&body).send().await;
                match result {
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        w.latencies_us.push(micros(sent.elapsed()));
                        if status == StatusCode::CREATED {
                            match serde_json::from_str::<Value>(&text).ok().and_then(|v| v["id"].as_i64()) {
                                Some(id) => w.ids.push(id),
                                None => w.failures.add("201 without a numeric id", text),
                            }
                        } else {
                            w.failures.add(format!("HTTP {status}"), text);
                        }
                    }
                    Err(e) => {
                        w.failures.add("transport error", e.to_string());
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            w
        }));
    }
    let mut latencies = Vec::new();
    let mut acked = Vec::new();
    let mut failures = Failures::default();
    for t in tasks {
        let w = t.await?;
        latencies.extend(w.latencies_us);
        acked.extend(w.ids);
        failures.merge(w.failures);
    }
    let elapsed = start.elapsed();

    let ok = acked.len();
    println!(
        "  inserts answered 201: {ok} in {:.2} s = {:.0} inserts/s; other answers/errors: {}",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        failures.total()
    );
    failures.print("    ");
    println!("  latency (all requests): {}", summary_us(&mut latencies));
    println!("  {}", writer_before.describe_until(&hub.writer_totals().await?, elapsed));

    // Verification through the REST query API.
    let verify_started = Instant::now();
    let mut stored = Vec::new();
    for d in &devices {
        stored.extend(hub.stored_notification_ids(d, "temp").await?);
    }
    let acked_set: BTreeSet<i64> = acked.iter().copied().collect();
    let stored_set: BTreeSet<i64> = stored.iter().copied().collect();
    let duplicate_acks = acked.len() - acked_set.len();
    let duplicate_rows = stored.len() - stored_set.len();
    let missing: Vec<i64> = acked_set.difference(&stored_set).copied().collect();
    let extra: Vec<i64> = stored_set.difference(&acked_set).copied().collect();
    let pass = stored.len() == ok && missing.is_empty() && extra.is_empty() && duplicate_acks == 0;
    println!(
        "  check (REST query of all {} devices for notification=temp, {:.2} s): stored {}, acknowledged {} -> {}",
        devices.len(),
        verify_started.elapsed().as_secs_f64(),
        stored.len(),
        ok,
        if pass { "OK (same count, same ids)" } else { "MISMATCH" }
    );
    if !pass {
        println!(
            "    acknowledged but not stored: {} {:?}; stored but not acknowledged: {} {:?}; \
             duplicate ids in 201 answers: {duplicate_acks}; duplicate ids in query results: {duplicate_rows}",
            missing.len(),
            &missing[..missing.len().min(10)],
            extra.len(),
            &extra[..extra.len().min(10)]
        );
        return Err("stored notifications differ from the acknowledged ones".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Scenario: long-poll wake-up latency.

/// What a poller saw for one round.
struct PollReport {
    poller: usize,
    received_at: Instant,
    ids: Vec<i64>,
}

async fn scenario_longpoll(hub: &BenchHub, config: &Config) -> BenchResult<()> {
    let (pollers, rounds) = (config.pollers, config.rounds);
    println!("== longpoll: {}", SCENARIOS[1].1);
    println!(
        "  {pollers} pollers (one connection each) long-poll GET /device/{{id}}/notification/poll?waitTimeout=30&\
         timestamp=<last seen> on the same device; {rounds} rounds. Each round: wait until every poller has \
         re-sent its poll, pause {} ms (so the hub has registered all waiters), then one POST of a notification.",
        config.settle.as_millis()
    );
    println!(
        "  Measured per poller and round: 'from send' = insert POST about to be sent -> that poller's poll \
         answer received and parsed; 'from 201' = insert's 201 answer read by the writer -> same (negative \
         when the poller got it first). 'fan-out spread' = first -> last poller of a round."
    );
    let device = "bench-poll-000";
    hub.device(device).await?;
    let writer = dedicated_client()?;
    let insert_url = hub.url(&format!("/device/{device}/notification"));
    let insert = |round: usize| {
        writer
            .post(&insert_url)
            .bearer_auth(&hub.admin)
            .json(&json!({"notification": "tick", "parameters": {"round": round}}))
            .send()
    };

    // A first notification gives the pollers their starting cursor (its server timestamp).
    let first = insert(usize::MAX).await?;
    if first.status() != StatusCode::CREATED {
        return Err(format!("warm-up insert answered {}", first.status()).into());
    }
    let first: Value = first.json().await?;
    let start_cursor = first["timestamp"].as_str().ok_or("no timestamp in the 201 answer")?.to_string();

    let armed = Arc::new(Semaphore::new(0));
    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<Result<PollReport, String>>();
    let poll_url = hub.url(&format!("/device/{device}/notification/poll"));
    let mut tasks = Vec::with_capacity(pollers);
    for poller in 0..pollers {
        let client = dedicated_client()?;
        let (url, token, armed, tx) = (poll_url.clone(), hub.admin.clone(), armed.clone(), report_tx.clone());
        let mut cursor = start_cursor.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut empty_answers = 0u64;
            while done < rounds {
                armed.add_permits(1);
                let resp = client
                    .get(&url)
                    .bearer_auth(&token)
                    .query(&[("waitTimeout", "30"), ("timestamp", cursor.as_str())])
                    .send()
                    .await;
                let outcome: Result<Vec<Value>, String> = match resp {
                    Ok(r) if r.status() == StatusCode::OK => r.json::<Vec<Value>>().await.map_err(|e| e.to_string()),
                    Ok(r) => {
                        let status = r.status();
                        Err(format!("HTTP {status}: {}", r.text().await.unwrap_or_default()))
                    }
                    Err(e) => Err(format!("transport error: {e}")),
                };
                let received_at = Instant::now();
                match outcome {
                    Ok(list) if list.is_empty() => {
                        // waitTimeout passed with nothing: poll again (the writer notices the stall).
                        empty_answers += 1;
                        continue;
                    }
                    Ok(list) => {
                        if let Some(ts) = list.last().and_then(|n| n["timestamp"].as_str()) {
                            cursor = ts.to_string();
                        }
                        let ids = list.iter().map(|n| n["id"].as_i64().unwrap_or(-1)).collect();
                        done += 1;
                        if tx.send(Ok(PollReport { poller, received_at, ids })).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("poller {poller}: {e}")));
                        break;
                    }
                }
            }
            empty_answers
        }));
    }
    drop(report_tx);

    let mut from_send = Vec::with_capacity(pollers * rounds);
    let mut from_ack = Vec::with_capacity(pollers * rounds);
    let mut insert_rtt = Vec::with_capacity(rounds);
    let mut spread = Vec::with_capacity(rounds);
    let mut failures = Failures::default();
    let mut aborted = None;
    'rounds: for round in 0..rounds {
        // Every poller has sent its next poll request...
        let all_armed = tokio::time::timeout(Duration::from_secs(60), armed.acquire_many(pollers as u32)).await;
        match all_armed {
            Ok(Ok(permits)) => permits.forget(),
            _ => {
                aborted = Some(format!("round {round}: pollers did not re-arm within 60 s"));
                break;
            }
        }
        // ...and had time to reach the hub and register as waiters.
        tokio::time::sleep(config.settle).await;

        let sent = Instant::now();
        let resp = insert(round).await?;
        let acked = Instant::now();
        let status = resp.status();
        let text = resp.text().await?;
        if status != StatusCode::CREATED {
            aborted = Some(format!("round {round}: insert answered {status}: {text}"));
            break;
        }
        let id = serde_json::from_str::<Value>(&text)?["id"].as_i64().ok_or("201 without id")?;
        insert_rtt.push(micros(acked - sent));

        let mut seen = vec![false; pollers];
        let (mut first, mut last) = (None::<Instant>, None::<Instant>);
        for _ in 0..pollers {
            let report = match tokio::time::timeout(Duration::from_secs(40), report_rx.recv()).await {
                Ok(Some(Ok(r))) => r,
                Ok(Some(Err(e))) => {
                    aborted = Some(format!("round {round}: {e}"));
                    break 'rounds;
                }
                Ok(None) => {
                    aborted = Some(format!("round {round}: every poller stopped"));
                    break 'rounds;
                }
                Err(_) => {
                    let missing = seen.iter().filter(|s| !**s).count();
                    aborted =
                        Some(format!("round {round}: {missing} pollers did not receive notification {id} within 40 s"));
                    break 'rounds;
                }
            };
            if std::mem::replace(&mut seen[report.poller], true) {
                failures.add("poller answered twice in one round", format!("poller {}", report.poller));
            }
            if report.ids != [id] {
                failures.add(
                    "poll answer is not exactly the round's notification",
                    format!("round {round}, poller {}: expected [{id}], got {:?}", report.poller, report.ids),
                );
            }
            from_send.push(signed_micros(report.received_at, sent));
            from_ack.push(signed_micros(report.received_at, acked));
            first = Some(first.map_or(report.received_at, |f| f.min(report.received_at)));
            last = Some(last.map_or(report.received_at, |l| l.max(report.received_at)));
        }
        if let (Some(f), Some(l)) = (first, last) {
            spread.push(micros(l - f));
        }
    }
    let mut empty_answers = 0;
    for t in tasks {
        if aborted.is_some() {
            t.abort();
        } else {
            empty_answers += t.await?;
        }
    }
    if empty_answers > 0 {
        failures.add("empty poll answer (waitTimeout elapsed)", format!("{empty_answers} in total"));
    }

    let deliveries = from_send.len();
    println!(
        "  deliveries: {deliveries} of {} expected ({} rounds x {pollers} pollers); anomalies: {}",
        rounds * pollers,
        insert_rtt.len(),
        failures.total()
    );
    failures.print("    ");
    println!("  wake-up latency from send: {}", summary_us(&mut from_send));
    println!("  wake-up latency from 201:  {}", summary_us(&mut from_ack));
    println!("  insert round trip (writer, under {pollers} waiters): {}", summary_us(&mut insert_rtt));
    println!("  fan-out spread per round:  {}", summary_us(&mut spread));
    match aborted {
        Some(reason) => Err(reason.into()),
        None if failures.total() > 0 => Err("long-poll deliveries had anomalies (see above)".into()),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------------
// Helpers shared by the WebSocket and MQTT scenarios.

impl BenchHub {
    fn ws_url(&self) -> String {
        format!("ws://{}{}", self.app.http_addr, self.settings.http.websocket_path)
    }

    fn mqtt_addr(&self) -> BenchResult<SocketAddr> {
        self.app.mqtt_addr.ok_or_else(|| "the hub's MQTT broker is disabled".into())
    }

    /// `dh/notification/<networkId>/<deviceTypeId>/<deviceId>/<name>` of a registered device.
    async fn notification_topic(&self, device: &str, name: &str) -> BenchResult<String> {
        Ok(format!("{}/{name}", self.event_topic("notification", device).await?))
    }

    /// `dh/<kind>/<networkId>/<deviceTypeId>/<deviceId>` of a registered device (`kind` = `notification`,
    /// `command` or `command_update`), without the name level.
    async fn event_topic(&self, kind: &str, device: &str) -> BenchResult<String> {
        let d = self.call(reqwest::Method::GET, Some(&self.admin), &format!("/device/{device}"), None).await?;
        let level = |v: &Value| v.as_i64().map(|i| i.to_string()).unwrap_or_default();
        Ok(format!("dh/{kind}/{}/{}/{device}", level(&d["networkId"]), level(&d["deviceTypeId"])))
    }
}

/// Nanoseconds since `t0` (saturating).
fn nanos_since(t0: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(t0).as_nanos().min(u64::MAX as u128) as u64
}

/// The integer right after the first `key` (e.g. `"seq":`) in `text`, without parsing the JSON.
fn find_i64(text: &str, key: &str) -> Option<i64> {
    let rest = text[text.find(key)? + key.len()..].trim_start();
    let end = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].parse().ok()
}

/// The id of the notification in a `notification/insert` push.
fn push_notification_id(text: &str) -> Option<i64> {
    find_i64(&text[text.find("\"notification\":{")?..], "\"id\":")
}

/// Latency summary with the tail percentiles (samples in microseconds).
fn tail_summary_us(samples: &mut [i64]) -> String {
    samples.sort_unstable();
    if samples.is_empty() {
        return "no samples".to_string();
    }
    let ms = |v: i64| format!("{:.3} ms", v as f64 / 1000.0);
    let p = |q| ms(percentile(samples, q).unwrap_or_default());
    format!(
        "n={} min={} p50={} p90={} p99={} p99.9={} max={}",
        samples.len(),
        ms(samples[0]),
        p(50.0),
        p(90.0),
        p(99.0),
        p(99.9),
        ms(*samples.last().unwrap_or(&0))
    )
}

/// Percentile of sorted microsecond samples in milliseconds (NaN when empty).
fn pct_ms(sorted: &[i64], p: f64) -> f64 {
    percentile(sorted, p).map_or(f64::NAN, |v| v as f64 / 1000.0)
}

fn per_sec(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (soft, hard) open-file limit of this process, from /proc/self/limits.
fn fd_limit() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let mut num = || fields.next().map(|v| if v == "unlimited" { u64::MAX } else { v.parse().unwrap_or(0) });
    Some((num()?, num()?))
}

/// Raises this process's open-file limit to `want` with `prlimit` (util-linux; raising the hard limit
/// needs root) or at least the soft limit to the hard one; children inherit it. Returns a description.
fn raise_fd_limit(want: u64) -> String {
    let Some((soft, hard)) = fd_limit() else { return "unknown".into() };
    if soft < want {
        let pid = std::process::id().to_string();
        for target in [format!("{want}:{}", hard.max(want)), format!("{hard}:{hard}")] {
            let ok = std::process::Command::new("prlimit")
                .args(["--pid", &pid, &format!("--nofile={target}")])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
        }
    }
    match fd_limit() {
        Some((s, h)) if s > soft => format!("{s} (raised from {soft} with prlimit; hard {h})"),
        Some((s, h)) => format!("{s} (hard {h}){}", if s < want { "; run `ulimit -n 65536` for more" } else { "" }),
        None => "unknown".into(),
    }
}

/// Idle connections that fit in the open-file limit (each side holds one descriptor per connection).
fn idle_connections_allowed(wanted: usize) -> usize {
    let soft = fd_limit().map_or(1024, |(s, _)| s);
    wanted.min(soft.saturating_sub(512) as usize).max(1)
}

// ---------------------------------------------------------------------------------------------------
// A minimal MQTT 3.1.1 client: exactly the packets the scenarios need, written and read in batches so
// that the client is cheap next to the broker under test. Used against the hub and Mosquitto alike.

mod mq {
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use hivehub::mqtt::codec::{self, Connect, DecodeError};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::{TcpSocket, TcpStream};

    pub use hivehub::mqtt::codec::{Packet, Publish};

    /// Largest packet MQTT can frame (remaining length 268,435,455 + 5 header bytes): no limit of
    /// the client's own.
    const MAX_PACKET: usize = 268_435_460;

    pub fn connect(out: &mut BytesMut, client_id: &str, keep_alive: u16, credentials: Option<(&str, &str)>) {
        let connect = Connect {
            protocol_level: 4,
            client_id: client_id.to_string(),
            clean_session: true,
            keep_alive,
            username: credentials.map(|(user, _)| user.to_string()),
            password: credentials.map(|(_, password)| Bytes::copy_from_slice(password.as_bytes())),
            will: None,
        };
        codec::encode(&Packet::Connect(Box::new(connect)), out);
    }

    pub fn publish(out: &mut BytesMut, topic: &str, payload: &[u8], qos: u8, pkid: u16) {
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_string(),
            pkid,
            payload: Bytes::copy_from_slice(payload),
        };
        codec::encode(&Packet::Publish(publish), out);
    }

    pub fn puback(out: &mut BytesMut, pkid: u16) {
        codec::encode(&Packet::PubAck(pkid), out);
    }

    pub fn subscribe(out: &mut BytesMut, pkid: u16, filter: &str, qos: u8) {
        codec::encode(&Packet::Subscribe { pkid, filters: vec![(filter.to_string(), qos)] }, out);
    }

    pub fn pingreq(out: &mut BytesMut) {
        codec::encode(&Packet::PingReq, out);
    }

    pub fn disconnect(out: &mut BytesMut) {
        codec::encode(&Packet::Disconnect, out);
    }

    pub struct Reader {
        rd: OwnedReadHalf,
        buf: BytesMut,
        /// A packet (or decode error) taken from `buf` by `has_packet` and not yet returned by `next`.
        peeked: Option<Result<Packet, DecodeError>>,
    }

    impl Reader {
        fn decode(&mut self) -> Option<Result<Packet, DecodeError>> {
            self.peeked.take().or_else(|| codec::decode(&mut self.buf, MAX_PACKET).transpose())
        }

        pub async fn next(&mut self) -> std::io::Result<Packet> {
            loop {
                match self.decode() {
                    Some(Ok(p)) => return Ok(p),
                    Some(Err(e)) => {
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:?}")));
                    }
                    None => {}
                }
                if self.buf.capacity() - self.buf.len() < 1024 {
                    self.buf.reserve(16 * 1024);
                }
                if self.rd.read_buf(&mut self.buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }

        /// Whether another complete packet is already buffered (so a reply can wait for a batch).
        pub fn has_packet(&mut self) -> bool {
            if self.peeked.is_none() {
                self.peeked = self.decode();
            }
            self.peeked.is_some()
        }

        /// Reads until the peer closes the connection or `limit` passes; true when it closed.
        pub async fn wait_closed(&mut self, limit: Duration) -> bool {
            tokio::time::timeout(limit, async {
                loop {
                    self.buf.clear();
                    match self.rd.read_buf(&mut self.buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .is_ok()
        }
    }

    pub struct Writer {
        wr: OwnedWriteHalf,
        pub buf: BytesMut,
    }

    impl Writer {
        pub async fn flush(&mut self) -> std::io::Result<()> {
            if !self.buf.is_empty() {
                self.wr.write_all(&self.buf).await?;
                self.buf.clear();
            }
            Ok(())
        }
    }

    #[derive(Debug)]
    pub enum ConnectError {
        Io(String),
        Timeout,
        Refused(u8),
        Closed,
    }

    /// A TCP connection with TCP_NODELAY; to a loopback broker the source address rotates over
    /// 127.0.0.1-16 (by `source`) so that connection storms cannot run out of ephemeral ports.
    async fn tcp(addr: SocketAddr, source: usize) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        if addr.ip().is_loopback() {
            socket.bind(SocketAddr::from(([127, 0, 0, 1 + (source % 16) as u8], 0)))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// TCP connect + CONNECT (clean session) + CONNACK accepted, within `timeout`.
    pub async fn connect_client(
        addr: SocketAddr,
        source: usize,
        client_id: &str,
        keep_alive: u16,
        credentials: Option<(&str, &str)>,
        timeout: Duration,
    ) -> Result<(Reader, Writer), ConnectError> {
        let attempt = async {
            let stream = tcp(addr, source).await.map_err(|e| ConnectError::Io(e.to_string()))?;
            let (rd, wr) = stream.into_split();
            let mut w = Writer { wr, buf: BytesMut::with_capacity(256) };
            connect(&mut w.buf, client_id, keep_alive, credentials);
            w.flush().await.map_err(|e| ConnectError::Io(e.to_string()))?;
            let mut r = Reader { rd, buf: BytesMut::with_capacity(64), peeked: None };
            match r.next().await {
                Ok(Packet::ConnAck { code: codec::connack::ACCEPTED, .. }) => Ok((r, w)),
                Ok(Packet::ConnAck { code, .. }) => Err(ConnectError::Refused(code)),
                Ok(_) => Err(ConnectError::Io("a packet other than CONNACK came first".into())),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ConnectError::Closed),
                Err(e) => Err(ConnectError::Io(e.to_string())),
            }
        };
        tokio::time::timeout(timeout, attempt).await.unwrap_or(Err(ConnectError::Timeout))
    }

    /// SUBSCRIBE one filter and wait for the SUBACK; returns its return code.
    pub async fn subscribe_one(r: &mut Reader, w: &mut Writer, filter: &str, qos: u8) -> Result<u8, String> {
        subscribe(&mut w.buf, 1, filter, qos);
        w.flush().await.map_err(|e| e.to_string())?;
        let wait = async {
            loop {
                match r.next().await.map_err(|e| e.to_string())? {
                    Packet::SubAck { codes, .. } => {
                        return codes.first().copied().ok_or_else(|| "empty SUBACK".to_string())
                    }
                    _ => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait).await.map_err(|_| "no SUBACK within 10 s".to_string())?
    }
}

/// Credentials of an MQTT CONNECT.
#[derive(Clone)]
enum Creds {
    Anonymous,
    /// Login and password of a hub user (the hub hashes the password with Argon2 on every connect).
    Login(String, String),
    /// An access JWT as the password (the login as the user name; the hub ignores it).
    Jwt(String),
}

impl Creds {
    fn pair(&self) -> Option<(&str, &str)> {
        match self {
            Creds::Anonymous => None,
            Creds::Login(l, p) => Some((l, p)),
            Creds::Jwt(t) => Some((ADMIN_LOGIN, t)),
        }
    }
}

/// Connects and fails the scenario on refusal (for the few long-lived clients of a scenario).
async fn mqtt_client(addr: SocketAddr, client_id: &str, creds: &Creds) -> BenchResult<(mq::Reader, mq::Writer)> {
    mq::connect_client(addr, 0, client_id, 600, creds.pair(), Duration::from_secs(10))
        .await
        .map_err(|e| format!("MQTT connect of {client_id} failed: {e:?}").into())
}

// ---------------------------------------------------------------------------------------------------
// Brokers in child processes: a hub (this very executable in hub mode, configured like `hivehub serve`
// through HIVEHUB__* variables) or Mosquitto. Their RSS comes from /proc/<pid>/status.

/// Hub mode of the bench executable: `App::start` with the settings from the environment, until stdin
/// closes (the parent ends or drops the pipe).
async fn child_hub_main() {
    let settings = Settings::defaults();
    let app = match App::start(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("bench child hub: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        let _ = tx.send(());
    });
    app.run_until(async {
        let _ = rx.await;
    })
    .await;
}

/// Reads the child hub's log, counting lines by kind (timestamp dropped, digits masked).
fn collect_log(out: std::process::ChildStdout, log: &std::sync::Mutex<BTreeMap<String, (u64, String)>>) {
    use std::io::BufRead;
    for line in std::io::BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let text = line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest).trim().to_string();
        let key: String = text.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).take(200).collect();
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.entry(key).or_insert((0, text)).0 += 1;
    }
}

fn free_port() -> BenchResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct ChildBroker {
    label: String,
    child: std::process::Child,
    mqtt: SocketAddr,
    /// The HTTP listener (hub only).
    http: Option<SocketAddr>,
    /// A hub (stops gracefully when its stdin closes) rather than Mosquitto (killed).
    is_hub: bool,
    /// Admin access token (hub only).
    admin: String,
    /// The hub's log lines by kind (digits masked): count and first example.
    log: Arc<std::sync::Mutex<BTreeMap<String, (u64, String)>>>,
    _dir: tempfile::TempDir,
}

impl ChildBroker {
    async fn hub() -> BenchResult<ChildBroker> {
        let dir = tempfile::tempdir()?;
        let (http_port, mqtt_port) = (free_port()?, free_port()?);
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .env(CHILD_HUB_ENV, "1")
            .env("HIVEHUB__HTTP__LISTEN", format!("127.0.0.1:{http_port}"))
            .env("HIVEHUB__MQTT__LISTEN", format!("127.0.0.1:{mqtt_port}"))
            .env("HIVEHUB__MQTT__MAX_CONNECTIONS", "200000")
            .env("HIVEHUB__DATABASE__URL", bench_database(dir.path()).await?)
            .env("HIVEHUB__AUTH__ADMIN_LOGIN", ADMIN_LOGIN)
            .env("HIVEHUB__AUTH__ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let log = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        if let Some(out) = child.stdout.take() {
            let log = log.clone();
            std::thread::spawn(move || collect_log(out, &log));
        }
        let mut broker = ChildBroker {
            label: "hivehub".into(),
            child,
            mqtt: SocketAddr::from(([127, 0, 0, 1], mqtt_port)),
            http: Some(SocketAddr::from(([127, 0, 0, 1], http_port))),
            is_hub: true,
            admin: String::new(),
            log,
            _dir: dir,
        };
        broker.wait_listening().await?;
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{http_port}/api/rest/token");
        let resp = client.post(url).json(&json!({"login": ADMIN_LOGIN, "password": ADMIN_PASSWORD})).send().await?;
        let body: Value = resp.json().await?;
        broker.admin = body["accessToken"].as_str().ok_or("child hub: no accessToken")?.to_string();
        Ok(broker)
    }

    async fn mosquitto(path: &str) -> BenchResult<ChildBroker> {
        if !std::path::Path::new(path).exists() {
            return Err(format!("{path} not found: apt-get install -y mosquitto mosquitto-clients").into());
        }
        let version = std::process::Command::new(path)
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
            .unwrap_or_default();
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"))?;
        let child = std::process::Command::new(path)
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let label = version.strip_prefix("mosquitto version ").map_or("mosquitto".into(), |v| format!("mosquitto {v}"));
        let mut broker = ChildBroker {
            label,
            child,
            mqtt: SocketAddr::from(([127, 0, 0, 1], port)),
            http: None,
            is_hub: false,
            admin: String::new(),
            log: Default::default(),
            _dir: dir,
        };
        broker.wait_listening().await?;
        Ok(broker)
    }

    async fn wait_listening(&mut self) -> BenchResult<()> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("{} exited at start: {status}", self.label).into());
            }
            if tokio::net::TcpStream::connect(self.mqtt).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("{} did not listen on {} within 30 s", self.label, self.mqtt).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss(&self) -> u64 {
        rss_kib(self.pid()).unwrap_or(0)
    }

    /// Closes the hub's stdin (graceful shutdown) or kills Mosquitto; kills whatever still runs after 10 s.
    /// Then prints a summary of the hub's log.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        if !self.is_hub {
            let _ = self.child.kill();
        }
        let mut stopped = false;
        for _ in 0..200 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !stopped {
            println!("  ({} did not stop within 10 s; killed)", self.label);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // the log pipe drains
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_hub {
            let total: u64 = log.values().map(|(n, _)| n).sum();
            println!(
                "  {} child log: {total} lines at WARN or above{}",
                self.label,
                if total > 0 { ", by kind:" } else { "" }
            );
            let mut kinds: Vec<_> = log.values().collect();
            kinds.sort_by_key(|k| std::cmp::Reverse(k.0));
            for (n, example) in kinds.iter().take(12) {
                let example: String = example.chars().take(240).collect();
                println!("    {n} x {example}");
            }
        }
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Scenario: REST insert -> WebSocket push.

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends a request and waits for its answer (skipping pushes); fails unless it is a success.
async fn ws_request(ws: &mut WsStream, request: Value) -> BenchResult<Value> {
    let action = request["action"].as_str().unwrap_or_default().to_string();
    ws.send(Message::text(request.to_string())).await?;
    let wait = async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg? {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["action"] == action.as_str() && v.get("status").is_some() {
                    if v["status"] != "success" {
                        return Err(format!("{action} answered {v}").into());
                    }
                    return Ok(v);
                }
            }
        }
        Err::<Value, Box<dyn Error + Send + Sync>>(format!("connection closed before the {action} answer").into())
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.map_err(|_| format!("no {action} answer within 30 s"))?
}

/// A WebSocket session, authenticated and subscribed with `subscribe` (a notification/subscribe request).
async fn ws_session(url: &str, token: &str, subscribe: &Value) -> BenchResult<WsStream> {
    // tungstenite zero-fills its whole read buffer (128 KiB by default) before every socket read:
    // with a thousand sessions reading one small push each, that memset was most of the bench's
    // own CPU, taken from the hub under test.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    ws_request(&mut ws, json!({"action": "authenticate", "requestId": 1, "token": token})).await?;
    let answer = ws_request(&mut ws, subscribe.clone()).await?;
    if answer["subscriptionId"].as_i64().is_none() {
        return Err(format!("notification/subscribe answered without subscriptionId: {answer}").into());
    }
    Ok(ws)
}

/// Opens `n` sessions, `parallel` handshakes at a time.
async fn ws_sessions(
    url: &str,
    token: &str,
    subscribe: &Value,
    n: usize,
    parallel: usize,
) -> BenchResult<Vec<WsStream>> {
    let gate = Arc::new(Semaphore::new(parallel));
    let mut opening = Vec::with_capacity(n);
    for _ in 0..n {
        let (url, token, subscribe, gate) = (url.to_string(), token.to_string(), subscribe.clone(), gate.clone());
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            ws_session(&url, &token, &subscribe).await
        }));
    }
    let mut sessions = Vec::with_capacity(n);
    for t in opening {
        sessions.push(t.await??);
    }
    Ok(sessions)
}

/// What one session counted of the delivery-rate phase.
#[derive(Default)]
struct WsCounters {
    count: AtomicU64,
    id_sum: AtomicU64,
    last_ns: AtomicU64,
    closed: AtomicBool,
}

async fn scenario_ws(hub: &BenchHub, config: &Config) -> BenchResult<()> {
    println!("== ws: {}", describe("ws"));
    let device = "bench-ws-000";
    hub.device(device).await?;
    let (target, subscribe) = match config.ws_target {
        WsTarget::Device => (
            format!("device {device}"),
            json!({"action": "notification/subscribe", "requestId": 2, "deviceId": device}),
        ),
        WsTarget::Network => (
            format!("network {} (device {device} in it)", hub.network_id),
            json!({"action": "notification/subscribe", "requestId": 2, "networkIds": [hub.network_id]}),
        ),
    };
    println!(
        "  Every session: WebSocket to {}, authenticate (admin access token), notification/subscribe to {target}. \
         A writer on its own keep-alive HTTP connection POSTs notifications to {device}.",
        hub.ws_url()
    );
    println!(
        "  latency: {} rounds; each round one POST {{notification:\"lat\", parameters:{{seq}}}} and a wait until \
         every session has parsed that push. 'from send' = POST about to be sent -> push received by a session; \
         'from 201' = 201 read by the writer -> same (negative when the push came first).",
        config.ws_rounds
    );
    println!(
        "  delivery rate: {} writers POST notification \"thr\" as fast as they can for {} s; every session counts \
         its pushes and sums their ids; it must end with exactly the acknowledged ids (none lost, none extra).",
        config.ws_writers, config.ws_seconds
    );
    println!(
        "  peer: Mosquitto (child process) with as many MQTT subscribers (QoS0) of one plain topic, the same latency \
         rounds (one QoS1 publish each) and {} publishers (QoS1, one unacknowledged each) for the rate phase.",
        config.ws_writers
    );
    let mut result = Ok(());
    for &n in &config.ws_sessions {
        println!("  -- {n} sessions --");
        match ws_run(hub, config, device, &subscribe, n).await {
            Ok(hub_rate) => match ws_peer_mosquitto(config, n).await {
                Ok(peer_rate) => {
                    println!(
                        "  ratio hub / Mosquitto deliveries/s with {n} subscribers: {:.2}x",
                        hub_rate / peer_rate.max(1.0)
                    )
                }
                Err(e) => println!("  Mosquitto not run: {e}"),
            },
            Err(e) => {
                println!("  {n} sessions: FAILED: {e}");
                result = Err(e);
            }
        }
    }
    result
}

async fn ws_run(hub: &BenchHub, config: &Config, device: &str, subscribe: &Value, n: usize) -> BenchResult<f64> {
    let opened = Instant::now();
    let sessions = ws_sessions(&hub.ws_url(), &hub.admin, subscribe, n, 32).await?;
    println!(
        "  setup: {n} sessions connected, authenticated and subscribed in {:.2} s (32 handshakes at a time)",
        opened.elapsed().as_secs_f64()
    );

    // Readers: "lat" pushes go to the collector with their seq; "thr" pushes are counted in place.
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<(usize, i64, Instant)>();
    let t0 = Instant::now();
    let counters: Vec<Arc<WsCounters>> = (0..n).map(|_| Arc::new(WsCounters::default())).collect();
    let mut readers = Vec::with_capacity(n);
    for (idx, mut ws) in sessions.into_iter().enumerate() {
        let (tx, c) = (lat_tx.clone(), counters[idx].clone());
        readers.push(tokio::spawn(async move {
            while let Some(msg) = ws.next().await {
                let Ok(msg) = msg else { break };
                let at = Instant::now();
                match msg {
                    Message::Text(t) => {
                        let s = t.as_str();
                        if !s.starts_with("{\"action\":\"notification/insert\"") {
                            continue;
                        }
                        if s.contains("\"notification\":\"thr\"") {
                            let id = push_notification_id(s).unwrap_or(-1);
                            c.id_sum.fetch_add(id as u64, Ordering::Relaxed);
                            c.last_ns.fetch_max(nanos_since(t0, at), Ordering::Relaxed);
                            c.count.fetch_add(1, Ordering::Release);
                        } else if s.contains("\"notification\":\"lat\"") {
                            let _ = tx.send((idx, find_i64(s, "\"seq\":").unwrap_or(-1), at));
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            c.closed.store(true, Ordering::Release);
        }));
    }
    drop(lat_tx);
    let outcome = ws_measure(hub, config, device, n, t0, &counters, &mut lat_rx).await;
    for r in readers {
        r.abort();
    }
    outcome
}

async fn ws_measure(
    hub: &BenchHub,
    config: &Config,
    device: &str,
    n: usize,
    t0: Instant,
    counters: &[Arc<WsCounters>],
    lat_rx: &mut mpsc::UnboundedReceiver<(usize, i64, Instant)>,
) -> BenchResult<f64> {
    let writer = dedicated_client()?;
    let url = hub.url(&format!("/device/{device}/notification"));

    // Latency rounds.
    let (mut from_send, mut from_ack, mut rtt) = (Vec::new(), Vec::new(), Vec::new());
    let mut failures = Failures::default();
    let cpu_before = cpu_seconds(std::process::id());
    for round in 0..config.ws_rounds as i64 {
        let body = json!({"notification": "lat", "parameters": {"seq": round}});
        let sent = Instant::now();
        let resp = writer.post(&url).bearer_auth(&hub.admin).json(&body).send().await?;
        let acked = Instant::now();
        if resp.status() != StatusCode::CREATED {
            return Err(format!("round {round}: insert answered {}", resp.status()).into());
        }
        rtt.push(micros(acked - sent));
        let mut seen = vec![false; n];
        let mut got = 0;
        while got < n {
            match tokio::time::timeout(Duration::from_secs(10), lat_rx.recv()).await {
                Ok(Some((idx, seq, at))) if seq == round => {
                    if std::mem::replace(&mut seen[idx], true) {
                        failures.add("push received twice", format!("round {round}, session {idx}"));
                        continue;
                    }
                    got += 1;
                    from_send.push(signed_micros(at, sent));
                    from_ack.push(signed_micros(at, acked));
                }
                Ok(Some((idx, seq, _))) => {
                    failures.add("push of another round", format!("round {round}, session {idx}: seq {seq}"))
                }
                _ => {
                    let closed = counters.iter().filter(|c| c.closed.load(Ordering::Acquire)).count();
                    return Err(format!(
                        "round {round}: {} of {n} sessions got no push within 10 s ({closed} sessions closed)",
                        n - got
                    )
                    .into());
                }
            }
        }
    }
    let cpu = cpu_seconds(std::process::id()).zip(cpu_before).map(|(after, before)| after - before);
    println!("  latency from send ({} rounds x {n} sessions): {}", config.ws_rounds, tail_summary_us(&mut from_send));
    if let Some(cpu) = cpu {
        println!(
            "  CPU during the latency rounds (the hub and its {n} clients, one process): {:.1} ms per round",
            cpu * 1000.0 / config.ws_rounds.max(1) as f64
        );
    }
    println!("  latency from 201:                          {}", tail_summary_us(&mut from_ack));
    println!("  insert round trip (POST -> 201) with {n} subscribers: {}", summary_us(&mut rtt));

    // Delivery rate.
    let start = Instant::now();
    let start_ns = nanos_since(t0, start);
    let deadline = start + Duration::from_secs(config.ws_seconds);
    let mut writers = Vec::new();
    for w in 0..config.ws_writers {
        let (client, url, token) = (dedicated_client()?, url.clone(), hub.admin.clone());
        writers.push(tokio::spawn(async move {
            let (mut count, mut id_sum, mut failures) = (0u64, 0u64, Failures::default());
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let body = json!({"notification": "thr", "parameters": {"w": w, "n": seq}});
                match client.post(&url).bearer_auth(&token).json(&body).send().await {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let text = r.text().await.unwrap_or_default();
                        match serde_json::from_str::<Value>(&text).ok().and_then(|v| v["id"].as_i64()) {
                            Some(id) => {
                                count += 1;
                                id_sum = id_sum.wrapping_add(id as u64);
                            }
                            None => failures.add("201 without id", text),
                        }
                    }
                    Ok(r) => {
                        let status = r.status();
                        failures.add(format!("HTTP {status}"), r.text().await.unwrap_or_default());
                    }
                    Err(e) => failures.add("transport error", e.to_string()),
                }
            }
            (count, id_sum, failures)
        }));
    }
    let (mut inserted, mut id_sum) = (0u64, 0u64);
    for w in writers {
        let (c, s, f) = w.await?;
        inserted += c;
        id_sum = id_sum.wrapping_add(s);
        failures.merge(f);
    }
    let insert_elapsed = start.elapsed();
    // Wait until every session has every push, or nothing moves for 10 s.
    let expected = inserted * n as u64;
    let (mut last_total, mut last_progress) = (u64::MAX, Instant::now());
    let delivered = loop {
        let total: u64 = counters.iter().map(|c| c.count.load(Ordering::Acquire)).sum();
        if total >= expected && counters.iter().all(|c| c.count.load(Ordering::Acquire) >= inserted) {
            break total;
        }
        if total != last_total {
            (last_total, last_progress) = (total, Instant::now());
        } else if last_progress.elapsed() > Duration::from_secs(10) {
            break total;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let last_ns = counters.iter().map(|c| c.last_ns.load(Ordering::Relaxed)).max().unwrap_or(start_ns);
    let deliver_elapsed = Duration::from_nanos(last_ns.saturating_sub(start_ns));
    let mut exact = 0;
    let (mut short_sessions, mut lost, mut extra, mut wrong_ids) = (0, 0u64, 0u64, 0);
    for c in counters {
        let (count, sum) = (c.count.load(Ordering::Acquire), c.id_sum.load(Ordering::Relaxed));
        if count == inserted && sum == id_sum {
            exact += 1;
        } else if count < inserted {
            short_sessions += 1;
            lost += inserted - count;
        } else if count > inserted {
            extra += count - inserted;
        } else {
            wrong_ids += 1;
        }
    }
    let closed = counters.iter().filter(|c| c.closed.load(Ordering::Acquire)).count();
    println!(
        "  inserts during the rate phase: {inserted} answered 201 in {:.2} s = {:.0} inserts/s ({} writers); \
         other answers/errors: {}",
        insert_elapsed.as_secs_f64(),
        per_sec(inserted, insert_elapsed),
        config.ws_writers,
        failures.total()
    );
    failures.print("    ");
    println!(
        "  deliveries: {delivered} pushes of {expected} expected ({inserted} x {n}) received by the sessions in \
         {:.2} s (first insert sent -> last push received) = {:.0} deliveries/s",
        deliver_elapsed.as_secs_f64(),
        per_sec(delivered, deliver_elapsed)
    );
    let ok = exact == n && failures.total() == 0;
    println!(
        "  check: {exact} of {n} sessions received exactly the acknowledged notifications; lost {lost} pushes in \
         {short_sessions} sessions; {extra} extra; {wrong_ids} sessions with other ids; {closed} sessions closed by \
         the hub -> {}",
        if ok { "OK (none lost)" } else { "MISMATCH" }
    );
    if ok {
        Ok(per_sec(delivered, deliver_elapsed))
    } else {
        Err("WebSocket deliveries differ from the acknowledged inserts".into())
    }
}

/// The peer of the ws scenario: Mosquitto (child process) with `n` MQTT subscribers (QoS0) of one
/// topic, and the same load as the hub got: latency rounds of one publish each, then `writers`
/// publishers (QoS1, one unacknowledged each, as a REST writer waits for its 201) for the rate phase.
/// Returns deliveries/s of the rate phase.
async fn ws_peer_mosquitto(config: &Config, n: usize) -> BenchResult<f64> {
    let broker = ChildBroker::mosquitto(&config.mosquitto).await?;
    let label = broker.label.clone();
    let result = ws_peer_run(broker.mqtt, broker.pid(), config, n).await;
    broker.stop().await;
    let (rate, mut from_send, cpu) = result?;
    println!("  {label}, {n} MQTT subscribers: latency from send: {}", tail_summary_us(&mut from_send));
    if let Some((broker_s, clients_s)) = cpu {
        let per_round = |s: f64| s * 1000.0 / config.ws_rounds.max(1) as f64;
        println!(
            "  {label}, CPU during the latency rounds: {:.1} ms per round ({:.1} the broker, {:.1} its {n} clients)",
            per_round(broker_s + clients_s),
            per_round(broker_s),
            per_round(clients_s)
        );
    }
    println!("  {label}, {n} MQTT subscribers: deliveries/s {rate:.0}");
    Ok(rate)
}

/// The delivery rate, the latencies from send and, when readable, the CPU seconds of the broker and of
/// this process (its clients) during the latency rounds.
type PeerRun = (f64, Vec<i64>, Option<(f64, f64)>);

async fn ws_peer_run(addr: SocketAddr, broker_pid: u32, config: &Config, n: usize) -> BenchResult<PeerRun> {
    const TOPIC: &str = "bench/ws-peer/fanout";
    let t0 = Instant::now();
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<(i64, Instant)>();
    let counters: Vec<Arc<WsCounters>> = (0..n).map(|_| Arc::new(WsCounters::default())).collect();
    let mut readers = Vec::with_capacity(n);
    for (i, c) in counters.iter().enumerate() {
        let (mut r, mut w) = mqtt_client(addr, &format!("bench-ws-peer-{i}"), &Creds::Anonymous).await?;
        if mq::subscribe_one(&mut r, &mut w, TOPIC, 0).await? > 1 {
            return Err("Mosquitto refused the subscription".into());
        }
        let (tx, c) = (lat_tx.clone(), c.clone());
        readers.push(tokio::spawn(async move {
            let _w = w;
            while let Ok(p) = r.next().await {
                let mq::Packet::Publish(p) = p else { continue };
                let at = Instant::now();
                let text = String::from_utf8_lossy(&p.payload);
                if let Some(seq) = text.strip_prefix("lat ") {
                    let _ = tx.send((seq.parse().unwrap_or(-1), at));
                } else {
                    c.last_ns.fetch_max(nanos_since(t0, at), Ordering::Relaxed);
                    c.count.fetch_add(1, Ordering::Release);
                }
            }
            c.closed.store(true, Ordering::Release);
        }));
    }
    drop(lat_tx);
    let outcome = async {
        // Latency rounds: one QoS1 publish, then every subscriber must have it.
        let (mut pr, mut pw) = mqtt_client(addr, "bench-ws-peer-pub", &Creds::Anonymous).await?;
        let mut from_send = Vec::with_capacity(config.ws_rounds * n);
        let cpu_of = || cpu_seconds(broker_pid).zip(cpu_seconds(std::process::id()));
        let cpu_before = cpu_of();
        for round in 0..config.ws_rounds as i64 {
            let sent = Instant::now();
            mq::publish(&mut pw.buf, TOPIC, format!("lat {round}").as_bytes(), 1, 1);
            pw.flush().await?;
            let mut got = 0;
            while got < n {
                match tokio::time::timeout(Duration::from_secs(10), lat_rx.recv()).await {
                    Ok(Some((seq, at))) if seq == round => {
                        got += 1;
                        from_send.push(signed_micros(at, sent));
                    }
                    Ok(Some(_)) => {}
                    _ => return Err(format!("round {round}: {} of {n} subscribers got nothing in 10 s", n - got).into()),
                }
            }
            while !matches!(pr.next().await?, mq::Packet::PubAck(_)) {}
        }
        let cpu = cpu_of().zip(cpu_before).map(|((b1, c1), (b0, c0))| (b1 - b0, c1 - c0));
        // Rate phase.
        let start = Instant::now();
        let start_ns = nanos_since(t0, start);
        let deadline = start + Duration::from_secs(config.ws_seconds);
        let mut publishers = Vec::new();
        for p in 0..config.ws_writers {
            let (mut r, mut w) = mqtt_client(addr, &format!("bench-ws-peer-thr-{p}"), &Creds::Anonymous).await?;
            publishers.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    mq::publish(&mut w.buf, TOPIC, format!("thr {p} {sent}").as_bytes(), 1, (sent % 65_535) as u16 + 1);
                    if w.flush().await.is_err() {
                        break;
                    }
                    sent += 1;
                    loop {
                        match r.next().await {
                            Ok(mq::Packet::PubAck(_)) => break,
                            Ok(_) => {}
                            Err(_) => return sent,
                        }
                    }
                }
                sent
            }));
        }
        let mut published = 0u64;
        for p in publishers {
            published += p.await?;
        }
        let expected = published * n as u64;
        let (mut last_total, mut last_progress) = (u64::MAX, Instant::now());
        let delivered = loop {
            let total: u64 = counters.iter().map(|c| c.count.load(Ordering::Acquire)).sum();
            if total >= expected {
                break total;
            }
            if total != last_total {
                (last_total, last_progress) = (total, Instant::now());
            } else if last_progress.elapsed() > Duration::from_secs(5) {
                break total;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let last_ns = counters.iter().map(|c| c.last_ns.load(Ordering::Relaxed)).max().unwrap_or(start_ns);
        let elapsed = Duration::from_nanos(last_ns.saturating_sub(start_ns));
        println!(
            "  Mosquitto rate phase: {published} publishes acknowledged, {delivered} of {expected} deliveries in {:.2} s \
             ({} not delivered)",
            elapsed.as_secs_f64(),
            expected.saturating_sub(delivered)
        );
        Ok((per_sec(delivered, elapsed), from_send, cpu))
    }
    .await;
    for r in readers {
        r.abort();
    }
    outcome
}

// ---------------------------------------------------------------------------------------------------
// Scenario: MQTT device publish -> stored -> WebSocket / MQTT push.

/// Which receiver an event of the latency collector comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LatSource {
    WebSocket,
    MqttSubscriber,
    PubAck,
}

async fn scenario_mqtt_latency(hub: &BenchHub, config: &Config) -> BenchResult<()> {
    println!("== mqtt-latency: {}", describe("mqtt-latency"));
    let mqtt = hub.mqtt_addr()?;
    let device = "bench-mqtt-lat";
    hub.device(device).await?;
    let topic = hub.notification_topic(device, "temp").await?;
    let (m, rate) = (config.mqtt_messages, config.mqtt_rate);
    println!(
        "  An MQTT client (id bench-lat-dev, admin JWT as password) publishes {m} QoS1 notifications at {rate}/s to \
         {topic} with payload {{\"notification\":\"temp\",\"parameters\":{{\"seq\":N}}}}. Receivers: a WebSocket \
         session subscribed to deviceId {device}, names [temp]; an MQTT client subscribed (QoS1) to \
         dh/notification/+/+/{device}/temp. Latency = publish written to the socket -> push received and seq \
         parsed; PUBACK = publish written -> PUBACK read (the hub acknowledges after the commit)."
    );
    let creds = Creds::Jwt(hub.admin.clone());
    let (tx, mut rx) = mpsc::unbounded_channel::<(LatSource, i64, Instant)>();

    let subscribe = json!({"action": "notification/subscribe", "requestId": 2, "deviceId": device, "names": ["temp"]});
    let mut ws = ws_session(&hub.ws_url(), &hub.admin, &subscribe).await?;
    let ws_tx = tx.clone();
    let ws_task = tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                let at = Instant::now();
                if let Some(seq) = find_i64(t.as_str(), "\"seq\":") {
                    let _ = ws_tx.send((LatSource::WebSocket, seq, at));
                }
            }
        }
    });

    let (mut sr, mut sw) = mqtt_client(mqtt, "bench-lat-sub", &creds).await?;
    let code = mq::subscribe_one(&mut sr, &mut sw, &format!("dh/notification/+/+/{device}/temp"), 1).await?;
    if code > 1 {
        return Err(format!("the hub refused the MQTT subscription (SUBACK code {code:#x})").into());
    }
    let sub_tx = tx.clone();
    let sub_task = tokio::spawn(async move {
        while let Ok(p) = sr.next().await {
            if let mq::Packet::Publish(mq::Publish { qos, pkid, payload, .. }) = p {
                let at = Instant::now();
                if let Some(seq) = find_i64(&String::from_utf8_lossy(&payload), "\"seq\":") {
                    let _ = sub_tx.send((LatSource::MqttSubscriber, seq, at));
                }
                if qos > 0 {
                    mq::puback(&mut sw.buf, pkid);
                }
                if !sr.has_packet() && sw.flush().await.is_err() {
                    break;
                }
            }
        }
    });

    let (mut dr, mut dw) = mqtt_client(mqtt, "bench-lat-dev", &creds).await?;
    let ack_tx = tx.clone();
    let ack_task = tokio::spawn(async move {
        while let Ok(p) = dr.next().await {
            if let mq::Packet::PubAck(pkid) = p {
                let _ = ack_tx.send((LatSource::PubAck, pkid as i64, Instant::now()));
            }
        }
    });
    drop(tx);

    let sent: Vec<Instant> = {
        let mut sent = Vec::with_capacity(m);
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
        for seq in 0..m {
            tick.tick().await;
            let payload = format!("{{\"notification\":\"temp\",\"parameters\":{{\"seq\":{seq}}}}}");
            mq::publish(&mut dw.buf, &topic, payload.as_bytes(), 1, (seq % 65_535) as u16 + 1);
            sent.push(Instant::now());
            dw.flush().await?;
        }
        sent
    };
    let publish_elapsed = sent.last().map_or(Duration::ZERO, |l| l.duration_since(sent[0]));

    let (mut ws_lat, mut sub_lat, mut ack_lat) = (Vec::new(), Vec::new(), Vec::new());
    let mut failures = Failures::default();
    let mut seen_ws = vec![false; m];
    let mut seen_sub = vec![false; m];
    let mut acks = 0usize;
    while ws_lat.len() < m || sub_lat.len() < m || acks < m {
        let Ok(Some((source, seq, at))) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await else {
            break;
        };
        match source {
            LatSource::PubAck => {
                // The hub handles one connection's publishes in order, so the i-th PUBACK is the i-th publish.
                if acks < m {
                    if seq != (acks % 65_535) as i64 + 1 {
                        failures.add("PUBACK out of order", format!("PUBACK #{acks} has packet id {seq}"));
                    }
                    ack_lat.push(signed_micros(at, sent[acks]));
                }
                acks += 1;
            }
            LatSource::WebSocket | LatSource::MqttSubscriber => {
                let (seen, lat) = if source == LatSource::WebSocket {
                    (&mut seen_ws, &mut ws_lat)
                } else {
                    (&mut seen_sub, &mut sub_lat)
                };
                match usize::try_from(seq).ok().filter(|&s| s < m) {
                    Some(s) if !std::mem::replace(&mut seen[s], true) => lat.push(signed_micros(at, sent[s])),
                    Some(s) => failures.add("duplicate push", format!("seq {s}")),
                    None => failures.add("push with an unknown seq", format!("seq {seq}")),
                }
            }
        }
    }
    ws_task.abort();
    sub_task.abort();
    ack_task.abort();
    println!(
        "  published {m} in {:.2} s ({:.0}/s); received: WebSocket {} of {m}, MQTT subscriber {} of {m}, PUBACKs {acks} \
         of {m}; anomalies: {}",
        publish_elapsed.as_secs_f64(),
        per_sec(m as u64, publish_elapsed),
        ws_lat.len(),
        sub_lat.len(),
        failures.total()
    );
    failures.print("    ");
    println!("  publish -> WebSocket push:       {}", tail_summary_us(&mut ws_lat));
    println!("  publish -> MQTT subscriber push: {}", tail_summary_us(&mut sub_lat));
    println!("  publish -> PUBACK (stored):      {}", tail_summary_us(&mut ack_lat));
    let stored = hub.stored_notification_ids(device, "temp").await?.len();
    println!("  check: stored notifications named temp on {device}: {stored} (published {m})");
    if ws_lat.len() == m && sub_lat.len() == m && acks == m && stored == m && failures.total() == 0 {
        Ok(())
    } else {
        Err("MQTT notifications were lost, duplicated or reordered (see above)".into())
    }
}

// ---------------------------------------------------------------------------------------------------
// Scenario: MQTT notification ingest.

/// Outcome of one publisher connection of a throughput phase.
#[derive(Default)]
struct PubOutcome {
    sent: u64,
    acked: u64,
    /// When the broker had answered everything (PINGRESP after the last QoS0 publish, last PUBACK).
    done_ns: u64,
    error: Option<String>,
}

/// Publishes to `topic` as fast as the broker takes them until `deadline`: QoS0 in batches of 512, each
/// followed by a PINGREQ, at most 3 batches unanswered (brokers answer one connection's packets in
/// order), then waits for the last PINGRESP; QoS1 with at most `window` unacknowledged, then waits for
/// the outstanding PUBACKs (up to 60 s).
async fn publish_flood(
    (mut r, mut w): (mq::Reader, mq::Writer),
    topic: String,
    payload: impl Fn(u64) -> Vec<u8> + Send + 'static,
    qos: u8,
    window: usize,
    deadline: Instant,
    t0: Instant,
) -> PubOutcome {
    let mut out = PubOutcome::default();
    if qos == 0 {
        // QoS0 has no acknowledgement, so a PINGREQ follows every 512 publishes and at most 3 may be
        // unanswered: the broker takes publishes as fast as it can, without megabytes queueing in
        // socket buffers (its PINGRESP means it has read everything before the PINGREQ).
        let pongs = Arc::new(Semaphore::new(3));
        let reader = {
            let pongs = pongs.clone();
            tokio::spawn(async move {
                loop {
                    match r.next().await {
                        Ok(mq::Packet::PingResp) => pongs.add_permits(1),
                        Ok(_) => {}
                        Err(e) => return e.to_string(),
                    }
                }
            })
        };
        let mut ended = None;
        while Instant::now() < deadline && ended.is_none() {
            match tokio::time::timeout(Duration::from_secs(60), pongs.acquire()).await {
                Ok(Ok(p)) => p.forget(),
                _ => ended = Some("no PINGRESP within 60 s".to_string()),
            }
            for _ in 0..512 {
                mq::publish(&mut w.buf, &topic, &payload(out.sent), 0, 0);
                out.sent += 1;
                if w.buf.len() > 32 * 1024 {
                    if let Err(e) = w.flush().await {
                        ended = Some(format!("write failed: {e}"));
                        break;
                    }
                }
            }
            mq::pingreq(&mut w.buf);
            if let Err(e) = w.flush().await {
                ended = Some(format!("write failed: {e}"));
            }
        }
        // Every PINGREQ answered = the broker has read every publish.
        if ended.is_none() {
            match tokio::time::timeout(Duration::from_secs(60), pongs.acquire_many(3)).await {
                Ok(Ok(_)) => out.done_ns = nanos_since(t0, Instant::now()),
                _ if reader.is_finished() => ended = Some("connection ended before the last PINGRESP".into()),
                _ => ended = Some("no PINGRESP within 60 s after the last publish".into()),
            }
        }
        reader.abort();
        out.error = ended;
        return out;
    }
    let window_gate = Arc::new(Semaphore::new(window));
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack = Arc::new(AtomicU64::new(0));
    let reader = {
        let (gate, acked, last_ack) = (window_gate.clone(), acked.clone(), last_ack.clone());
        tokio::spawn(async move {
            loop {
                match r.next().await {
                    Ok(mq::Packet::PubAck(_)) => {
                        last_ack.store(nanos_since(t0, Instant::now()), Ordering::Relaxed);
                        acked.fetch_add(1, Ordering::Release);
                        gate.add_permits(1);
                    }
                    Ok(_) => {}
                    Err(e) => return e.to_string(),
                }
            }
        })
    };
    'send: while Instant::now() < deadline {
        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline.into(), window_gate.acquire()).await else { break };
        permit.forget();
        let mut batch = 1;
        loop {
            mq::publish(&mut w.buf, &topic, &payload(out.sent), 1, (out.sent % 65_535) as u16 + 1);
            out.sent += 1;
            if batch == 64 {
                break;
            }
            match window_gate.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
            batch += 1;
        }
        if let Err(e) = w.flush().await {
            out.error = Some(format!("write failed: {e}"));
            break 'send;
        }
    }
    let until = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Acquire) < out.sent && Instant::now() < until && !reader.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out.acked = acked.load(Ordering::Acquire);
    out.done_ns = last_ack.load(Ordering::Relaxed);
    if out.acked < out.sent && out.error.is_none() {
        out.error = Some(if reader.is_finished() {
            "connection ended with publishes unacknowledged".into()
        } else {
            "publishes still unacknowledged 60 s after the last one".into()
        });
    }
    reader.abort();
    out
}

async fn scenario_mqtt_ingest(hub: &BenchHub, config: &Config) -> BenchResult<()> {
    println!("== mqtt-ingest: {}", describe("mqtt-ingest"));
    let mqtt = hub.mqtt_addr()?;
    let p = config.mqtt_publishers;
    println!(
        "  {p} MQTT connections (admin JWT as password), each a different device bench-mi-NN publishing to its own \
         dh/notification/<net>/<type>/<device>/<name> topic as fast as the connection takes it, {} s per phase; \
         payload {{\"notification\":name,\"parameters\":{{\"seq\":N,\"value\":21.5}}}}. QoS0: batches of 512 \
         publishes, each followed by a PINGREQ, at most 3 batches unanswered (flow control: the hub handles a \
         connection's packets in order); the phase ends at the last PINGRESP. QoS1: at \
         most {} unacknowledged per connection; ends at the last PUBACK. Rates are stored (QoS1: acknowledged) \
         notifications per second over the phase; stored counts come from the REST query API afterwards.",
        config.mqtt_seconds, config.mqtt_window
    );
    let devices: Vec<String> = (0..p).map(|i| format!("bench-mi-{i:02}")).collect();
    for d in &devices {
        hub.device(d).await?;
    }
    let creds = Creds::Jwt(hub.admin.clone());
    let mut failed = false;
    for (qos, name) in [(0u8, "q0"), (1u8, "q1")] {
        let mut conns = Vec::with_capacity(p);
        for d in &devices {
            let topic = hub.notification_topic(d, name).await?;
            conns.push((mqtt_client(mqtt, &format!("{d}-c{qos}"), &creds).await?, topic));
        }
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(config.mqtt_seconds);
        let mut tasks = Vec::with_capacity(p);
        for (conn, topic) in conns {
            let payload = move |seq: u64| {
                format!("{{\"notification\":\"{name}\",\"parameters\":{{\"seq\":{seq},\"value\":21.5}}}}").into_bytes()
            };
            tasks.push(tokio::spawn(publish_flood(conn, topic, payload, qos, config.mqtt_window, deadline, t0)));
        }
        let mut outcomes = Vec::with_capacity(p);
        for t in tasks {
            outcomes.push(t.await?);
        }
        let end = Duration::from_nanos(outcomes.iter().map(|o| o.done_ns).max().unwrap_or(0));
        let sent: u64 = outcomes.iter().map(|o| o.sent).sum();
        let acked: u64 = outcomes.iter().map(|o| o.acked).sum();
        let mut stored_total = 0u64;
        let mut mismatched = Vec::new();
        let verify = Instant::now();
        for (d, o) in devices.iter().zip(&outcomes) {
            let ids = hub.stored_notification_ids(d, name).await?;
            let distinct = ids.iter().collect::<BTreeSet<_>>().len();
            stored_total += ids.len() as u64;
            let expected = if qos == 0 { o.sent } else { o.acked };
            if ids.len() as u64 != expected || distinct != ids.len() {
                mismatched.push(format!(
                    "{d}: sent {} acked {} stored {} ({} distinct)",
                    o.sent,
                    o.acked,
                    ids.len(),
                    distinct
                ));
            }
        }
        let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
        if qos == 0 {
            println!(
                "  QoS0: {sent} publishes sent in {} s; last PINGRESP at {:.2} s; stored {stored_total} = {:.0} stored \
                 notifications/s; not stored {} (REST check took {:.1} s)",
                config.mqtt_seconds,
                end.as_secs_f64(),
                per_sec(stored_total, end),
                sent.saturating_sub(stored_total),
                verify.elapsed().as_secs_f64()
            );
        } else {
            println!(
                "  QoS1: {sent} publishes sent, {acked} PUBACKs, last at {:.2} s = {:.0} acknowledged notifications/s; \
                 stored {stored_total} -> {} (REST check took {:.1} s)",
                end.as_secs_f64(),
                per_sec(acked, end),
                if stored_total == acked && mismatched.is_empty() { "stored == acknowledged" } else { "MISMATCH" },
                verify.elapsed().as_secs_f64()
            );
        }
        for e in &errors {
            println!("    connection problem: {e}");
        }
        for m in &mismatched {
            println!("    {m}");
        }
        // QoS0 promises nothing, so a shortfall there is reported but not a failure.
        failed |= !errors.is_empty() || (qos == 1 && !mismatched.is_empty());
    }
    if failed {
        Err("MQTT ingest lost, duplicated or failed to acknowledge notifications (see above)".into())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// Scenario: a fleet of devices sends a fixed number of QoS1 notifications each — the hub storing
// them (PUBACK after commit) against Mosquitto forwarding nothing (PUBACK at once), same client code.

/// What one fleet connection measured.
#[derive(Default)]
struct FleetOutcome {
    acked: u64,
    /// Publish written -> its PUBACK read, in microseconds.
    ack_us: Vec<i64>,
    /// When the last PUBACK came, since the phase's start.
    done_ns: u64,
    error: Option<String>,
}

/// Publishes `messages` QoS1 publishes to `topic` with at most `window` unacknowledged, timing each
/// PUBACK (brokers acknowledge one connection's publishes in order, so the n-th PUBACK is the n-th
/// publish's).
async fn fleet_device(
    (mut r, mut w): (mq::Reader, mq::Writer),
    topic: String,
    messages: u64,
    window: usize,
    t0: Instant,
) -> FleetOutcome {
    let mut out = FleetOutcome { ack_us: Vec::with_capacity(messages as usize), ..Default::default() };
    let mut sent_at: std::collections::VecDeque<Instant> = std::collections::VecDeque::with_capacity(window);
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while out.acked < messages {
        while sent < messages && sent_at.len() < window {
            let payload = format!("{{\"notification\":\"fleet\",\"parameters\":{{\"seq\":{sent},\"value\":21.5}}}}");
            mq::publish(&mut w.buf, &topic, payload.as_bytes(), 1, (sent % 65_535) as u16 + 1);
            sent += 1;
            sent_at.push_back(Instant::now());
        }
        if let Err(e) = w.flush().await {
            out.error = Some(format!("write failed: {e}"));
            break;
        }
        // Read every PUBACK already here before writing more (batches both ways).
        loop {
            match tokio::time::timeout_at(deadline.into(), r.next()).await {
                Ok(Ok(mq::Packet::PubAck(_))) => {
                    let at = Instant::now();
                    if let Some(s) = sent_at.pop_front() {
                        out.ack_us.push(micros(at - s));
                    }
                    out.acked += 1;
                    out.done_ns = nanos_since(t0, at);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    out.error = Some(format!("read failed: {e}"));
                    return out;
                }
                Err(_) => {
                    out.error = Some("PUBACKs still missing after 120 s".into());
                    return out;
                }
            }
            if !r.has_packet() {
                break;
            }
        }
    }
    out
}

/// One broker's fleet run: every connection opened first, then all publish at once.
async fn fleet_run(
    addr: SocketAddr,
    topics: &[(String, String)],
    creds: &Creds,
    messages: u64,
    window: usize,
) -> BenchResult<(Vec<FleetOutcome>, Duration)> {
    let mut conns = Vec::with_capacity(topics.len());
    for (client_id, topic) in topics {
        conns.push((mqtt_client(addr, client_id, creds).await?, topic.clone()));
    }
    let t0 = Instant::now();
    let tasks: Vec<_> =
        conns.into_iter().map(|(c, topic)| tokio::spawn(fleet_device(c, topic, messages, window, t0))).collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await?);
    }
    let end = Duration::from_nanos(outcomes.iter().map(|o| o.done_ns).max().unwrap_or(0));
    Ok((outcomes, end))
}

/// Prints a fleet run; returns acknowledged publishes per second.
fn print_fleet(label: &str, outcomes: &mut [FleetOutcome], end: Duration) -> f64 {
    let acked: u64 = outcomes.iter().map(|o| o.acked).sum();
    let mut lat: Vec<i64> = outcomes.iter_mut().flat_map(|o| std::mem::take(&mut o.ack_us)).collect();
    let rate = per_sec(acked, end);
    println!("  {label}: {acked} PUBACKs in {:.2} s = {rate:.0} acks/s", end.as_secs_f64());
    println!("    publish -> PUBACK: {}", tail_summary_us(&mut lat));
    for e in outcomes.iter().filter_map(|o| o.error.as_ref()) {
        println!("    connection problem: {e}");
    }
    rate
}

async fn scenario_mqtt_fleet(hub: &BenchHub, config: &Config) -> BenchResult<()> {
    println!("== mqtt-fleet: {}", describe("mqtt-fleet"));
    let (n, m, window) = (config.fleet_devices, config.fleet_messages, config.mqtt_window);
    println!(
        "  {n} MQTT device connections each publish {m} QoS1 notifications (payload \
         {{\"notification\":\"fleet\",\"parameters\":{{\"seq\":N,\"value\":21.5}}}}) to their own \
         dh/notification/<net>/<type>/<device>/fleet topic, at most {window} unacknowledged per connection, all \
         connections at once. The hub (in-process, admin JWT) stores every one before its PUBACK; Mosquitto \
         (child process, anonymous, same topics) stores nothing. Rate = PUBACKs / (start -> last PUBACK)."
    );
    let devices: Vec<String> = (0..n).map(|i| format!("bench-fleet-{i:03}")).collect();
    let mut topics = Vec::with_capacity(n);
    for d in &devices {
        hub.device(d).await?;
        topics.push((format!("{d}-fleet"), hub.notification_topic(d, "fleet").await?));
    }
    let before = hub.writer_totals().await?;
    let (mut outcomes, end) = fleet_run(hub.mqtt_addr()?, &topics, &Creds::Jwt(hub.admin.clone()), m, window).await?;
    let hub_rate = print_fleet("hub (stored)", &mut outcomes, end);
    println!("    {}", before.describe_until(&hub.writer_totals().await?, end));
    let verify = Instant::now();
    let mut mismatched = Vec::new();
    let mut stored_total = 0u64;
    for (d, o) in devices.iter().zip(&outcomes) {
        let ids = hub.stored_notification_ids(d, "fleet").await?;
        let distinct = ids.iter().collect::<BTreeSet<_>>().len();
        stored_total += ids.len() as u64;
        if ids.len() as u64 != o.acked || distinct != ids.len() {
            mismatched.push(format!("{d}: acked {} stored {} ({distinct} distinct)", o.acked, ids.len()));
        }
    }
    println!(
        "    stored {stored_total} -> {} (REST check took {:.1} s)",
        if mismatched.is_empty() { "stored == acknowledged" } else { "MISMATCH" },
        verify.elapsed().as_secs_f64()
    );
    for m in mismatched.iter().take(10) {
        println!("    {m}");
    }
    let errors = outcomes.iter().any(|o| o.error.is_some());
    match ChildBroker::mosquitto(&config.mosquitto).await {
        Ok(broker) => {
            let label = broker.label.clone();
            let run = fleet_run(broker.mqtt, &topics, &Creds::Anonymous, m, window).await;
            broker.stop().await;
            let (mut peer, peer_end) = run?;
            let peer_rate = print_fleet(&format!("{label} (not storing)"), &mut peer, peer_end);
            println!("  ratio hub / Mosquitto: {:.2}x", hub_rate / peer_rate.max(1.0));
        }
        Err(e) => println!("  Mosquitto not run: {e}"),
    }
    if errors || !mismatched.is_empty() {
        return Err("the fleet's notifications were not all acknowledged and stored exactly once".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Scenario: command round trip (REST application -> MQTT device -> REST wait).

/// The MQTT device side of the commands scenario, shared by the device connections.
#[derive(Default)]
struct CommandDevices {
    /// Command id -> when its `command/insert` push reached the device.
    pushes: std::sync::Mutex<BTreeMap<i64, Instant>>,
    /// Update publish written -> its PUBACK read (sent by the hub after the commit), in microseconds.
    update_acks_us: std::sync::Mutex<Vec<i64>>,
    updates_sent: AtomicU64,
    failures: std::sync::Mutex<Failures>,
}

impl CommandDevices {
    fn fail(&self, kind: &str, example: String) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).add(kind, example);
    }
}

/// One MQTT device of the commands scenario: answers every `command/insert` push (QoS1, PUBACKed) with a
/// QoS1 publish of `{"id":..,"status":"done","result":{"seq":..,"device":..}}` to `update_topic`.
async fn command_device(
    (mut r, mut w): (mq::Reader, mq::Writer),
    device: String,
    update_topic: String,
    side: Arc<CommandDevices>,
) {
    let mut pkid: u16 = 0;
    let mut unacked: BTreeMap<u16, Instant> = BTreeMap::new();
    loop {
        let packet = match r.next().await {
            Ok(p) => p,
            Err(e) => {
                side.fail("device connection ended", format!("{device}: {e}"));
                return;
            }
        };
        match packet {
            mq::Packet::Publish(p) => {
                let at = Instant::now();
                if p.qos > 0 {
                    mq::puback(&mut w.buf, p.pkid);
                }
                let push: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                let command = &push["command"];
                match command["id"].as_i64() {
                    Some(id) if push["action"] == "command/insert" => {
                        let seen = side.pushes.lock().unwrap_or_else(|e| e.into_inner()).insert(id, at);
                        if seen.is_some() {
                            side.fail("command pushed twice to its device", format!("{device}: command {id}"));
                        }
                        pkid = pkid % 65_535 + 1;
                        let seq = command["parameters"]["seq"].clone();
                        let update = json!({"id": id, "status": "done", "result": {"seq": seq, "device": device}});
                        mq::publish(&mut w.buf, &update_topic, update.to_string().as_bytes(), 1, pkid);
                        unacked.insert(pkid, Instant::now());
                        side.updates_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => side.fail(
                        "device received a publish that is not a command/insert push with an id",
                        format!("{device} on {}: {}", p.topic, String::from_utf8_lossy(&p.payload)),
                    ),
                }
                if !r.has_packet() {
                    if let Err(e) = w.flush().await {
                        side.fail("device write failed", format!("{device}: {e}"));
                        return;
                    }
                }
            }
            mq::Packet::PubAck(id) => match unacked.remove(&id) {
                Some(sent) => {
                    side.update_acks_us.lock().unwrap_or_else(|e| e.into_inner()).push(micros(sent.elapsed()))
                }
                None => side.fail("PUBACK for an unknown packet id", format!("{device}: {id}")),
            },
            _ => {}
        }
    }
}

/// What one REST client of the commands scenario measured.
#[derive(Default)]
struct CommandWorker {
    done: usize,
    /// POST about to be sent -> wait's 200 answer read.
    round_trip_us: Vec<i64>,
    /// POST about to be sent -> its 201 answer read.
    post_us: Vec<i64>,
    /// POST about to be sent -> the command's push read by the MQTT device.
    to_device_us: Vec<i64>,
    /// Push read by the device -> wait's 200 answer read.
    device_to_answer_us: Vec<i64>,
    failures: Failures,
}

/// `rounds` sequential round trips over one keep-alive connection, cycling over `devices`: POST the
/// command, then wait for its update. Stops at the first failure (a 204 means 30 s without an update).
async fn command_worker(
    client: reqwest::Client,
    base: String,
    token: String,
    devices: Vec<String>,
    rounds: usize,
    seq: Arc<AtomicU64>,
    side: Arc<CommandDevices>,
) -> CommandWorker {
    let mut w = CommandWorker::default();
    for round in 0..rounds {
        let device = &devices[round % devices.len()];
        let seq = seq.fetch_add(1, Ordering::Relaxed);
        let body = json!({"command": "ping", "parameters": {"seq": seq}});
        let sent = Instant::now();
        let resp = client.post(format!("{base}/device/{device}/command")).bearer_auth(&token).json(&body).send().await;
        let id = match resp {
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                match serde_json::from_str::<Value>(&text).ok().and_then(|v| v["id"].as_i64()) {
                    Some(id) if status == StatusCode::CREATED => id,
                    _ => {
                        w.failures.add(format!("POST command answered {status}"), text);
                        break;
                    }
                }
            }
            Err(e) => {
                w.failures.add("POST command: transport error", e.to_string());
                break;
            }
        };
        let created = Instant::now();
        let resp = client
            .get(format!("{base}/device/{device}/command/{id}/poll"))
            .bearer_auth(&token)
            .query(&[("waitTimeout", "30")])
            .send()
            .await;
        let (status, text) = match resp {
            Ok(r) => (r.status(), r.text().await.unwrap_or_default()),
            Err(e) => {
                w.failures.add("wait: transport error", e.to_string());
                break;
            }
        };
        let answered = Instant::now();
        if status == StatusCode::NO_CONTENT {
            w.failures.add("wait answered 204 (no update within waitTimeout=30)", format!("{device} command {id}"));
            break;
        }
        if status != StatusCode::OK {
            w.failures.add(format!("wait answered {status}"), text);
            break;
        }
        let command: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if command["id"].as_i64() != Some(id)
            || command["status"] != "done"
            || command["result"]["seq"].as_u64() != Some(seq)
            || command["result"]["device"] != device.as_str()
        {
            w.failures.add(
                "wait answer is not the command updated to status done with its seq",
                format!("{device} command {id} seq {seq}: {text}"),
            );
            break;
        }
        let pushed = side.pushes.lock().unwrap_or_else(|e| e.into_inner()).get(&id).copied();
        let Some(pushed) = pushed else {
            w.failures.add("wait answered 200 but the device has no push of the command", format!("{id}"));
            break;
        };
        w.done += 1;
        w.round_trip_us.push(micros(answered - sent));
        w.post_us.push(micros(created - sent));
        w.to_device_us.push(signed_micros(pushed, sent));
        w.device_to_answer_us.push(signed_micros(answered, pushed));
    }
    w
}

/// Runs one phase of the commands scenario (`workers` = devices and rounds of each REST client) and
/// prints its figures; returns whether it completed every round without a failure.
async fn command_phase(
    hub: &BenchHub,
    side: &Arc<CommandDevices>,
    seq: &Arc<AtomicU64>,
    label: &str,
    workers: Vec<(Vec<String>, usize)>,
) -> BenchResult<bool> {
    let expected: usize = workers.iter().map(|(_, r)| r).sum();
    let acks_before = side.updates_sent.load(Ordering::Relaxed);
    side.update_acks_us.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(workers.len());
    for (devices, rounds) in workers {
        let client = dedicated_client()?;
        let (base, token, seq, side) = (hub.base.clone(), hub.admin.clone(), seq.clone(), side.clone());
        tasks.push(tokio::spawn(command_worker(client, base, token, devices, rounds, seq, side)));
    }
    let mut all = CommandWorker::default();
    for t in tasks {
        let w = t.await?;
        all.done += w.done;
        all.round_trip_us.extend(w.round_trip_us);
        all.post_us.extend(w.post_us);
        all.to_device_us.extend(w.to_device_us);
        all.device_to_answer_us.extend(w.device_to_answer_us);
        all.failures.merge(w.failures);
    }
    let elapsed = start.elapsed();
    // The update's PUBACK follows the commit that also answers the wait: give stragglers a moment.
    let updates = side.updates_sent.load(Ordering::Relaxed) - acks_before;
    let until = Instant::now() + Duration::from_secs(5);
    let acks = loop {
        let n = side.update_acks_us.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        if n >= updates || Instant::now() >= until {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut update_acks = std::mem::take(&mut *side.update_acks_us.lock().unwrap_or_else(|e| e.into_inner()));
    let device_failures = std::mem::take(&mut *side.failures.lock().unwrap_or_else(|e| e.into_inner()));
    all.failures.merge(device_failures);
    if acks < updates {
        all.failures.add("update publishes never acknowledged", format!("{} of {updates}", updates - acks));
    }
    println!(
        "  {label}: {} of {expected} round trips in {:.2} s = {:.0} round trips/s; failures: {}",
        all.done,
        elapsed.as_secs_f64(),
        per_sec(all.done as u64, elapsed),
        all.failures.total()
    );
    all.failures.print("    ");
    println!("    round trip (POST sent -> wait 200 read):  {}", summary_us(&mut all.round_trip_us));
    println!("    POST sent -> 201 read:                    {}", summary_us(&mut all.post_us));
    println!("    POST sent -> push read by the device:     {}", summary_us(&mut all.to_device_us));
    println!("    push read by the device -> wait 200 read: {}", summary_us(&mut all.device_to_answer_us));
    println!("    device: update publish -> PUBACK read:    {}", summary_us(&mut update_acks));
    Ok(all.done == expected && all.failures.total() == 0)
}

async fn scenario_commands(hub: &BenchHub, config: &Config) -> BenchResult<()> {
    println!("== commands: {}", describe("commands"));
    let mqtt = hub.mqtt_addr()?;
    let (n, rounds) = (config.command_devices, config.command_rounds);
    let baseline = (rounds / 10).clamp(1, 200);
    println!(
        "  {n} devices bench-cmd-NNN, each an MQTT connection (client id = device id, admin JWT as password) \
         subscribed (QoS1) to dh/command/<net>/<type>/<device>/+ and answering each command/insert push with a \
         QoS1 publish of {{\"id\":..,\"status\":\"done\",\"result\":{{..}}}} to dh/command_update/<net>/<type>/\
         <device>/ping. A REST client (one keep-alive connection each) does POST /device/{{id}}/command \
         {{\"command\":\"ping\",\"parameters\":{{\"seq\":N}}}}, then GET /device/{{id}}/command/{{commandId}}/poll?\
         waitTimeout=30, which must answer 200 with status done and the seq; round trip = POST about to be sent \
         -> that 200 read. Baseline: {baseline} round trips by one client, one at a time, over the devices; \
         then {rounds} round trips by {} clients, one per device, one command in flight each.",
        n.min(rounds)
    );
    let devices: Vec<String> = (0..n).map(|i| format!("bench-cmd-{i:03}")).collect();
    for d in &devices {
        hub.device(d).await?;
    }
    let creds = Creds::Jwt(hub.admin.clone());
    let side = Arc::new(CommandDevices::default());
    let mut device_tasks = Vec::with_capacity(n);
    let setup = async {
        for d in &devices {
            let (mut r, mut w) = mqtt_client(mqtt, d, &creds).await?;
            let filter = format!("{}/+", hub.event_topic("command", d).await?);
            let code = mq::subscribe_one(&mut r, &mut w, &filter, 1).await?;
            if code > 1 {
                return Err(format!("the hub refused the subscription to {filter} (SUBACK code {code:#x})").into());
            }
            let update_topic = format!("{}/ping", hub.event_topic("command_update", d).await?);
            device_tasks.push(tokio::spawn(command_device((r, w), d.clone(), update_topic, side.clone())));
        }
        BenchResult::Ok(())
    };
    let result = async {
        setup.await?;
        let seq = Arc::new(AtomicU64::new(0));
        let one = vec![(devices.clone(), baseline)];
        let mut ok = command_phase(hub, &side, &seq, "one at a time", one).await?;
        let spread: Vec<(Vec<String>, usize)> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (vec![d.clone()], rounds / n + usize::from(i < rounds % n)))
            .filter(|(_, r)| *r > 0)
            .collect();
        let label = format!("{} in flight", spread.len());
        ok &= command_phase(hub, &side, &seq, &label, spread).await?;
        BenchResult::Ok(ok)
    }
    .await;
    for t in &device_tasks {
        t.abort();
    }
    if result? {
        Ok(())
    } else {
        Err("command round trips failed (see above)".into())
    }
}

// ---------------------------------------------------------------------------------------------------
// Connection storms and idle connections (hub child process, Mosquitto).

#[derive(Default)]
struct Storm {
    accepted: u64,
    refused: BTreeMap<u8, u64>,
    timeouts: u64,
    failures: Failures,
    /// Accepted connections the broker did not close within 2 s of our DISCONNECT.
    lingering: u64,
    /// TCP connect + CONNECT -> CONNACK of accepted connections, microseconds.
    latencies: Vec<i64>,
    elapsed: Duration,
}

impl Storm {
    fn rate(&self) -> f64 {
        per_sec(self.accepted, self.elapsed)
    }
    fn not_accepted(&self) -> u64 {
        self.refused.values().sum::<u64>() + self.failures.total()
    }
}

/// `connectors` tasks loop for `seconds`: connect, CONNECT, CONNACK, DISCONNECT, wait for the broker to
/// close (so TIME_WAIT stays on the broker's side).
async fn connect_storm(
    addr: SocketAddr,
    connectors: usize,
    seconds: u64,
    creds: &Creds,
    timeout: Duration,
    tag: &str,
) -> Storm {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(connectors);
    for k in 0..connectors {
        let (creds, tag) = (creds.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut s = Storm::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let began = Instant::now();
                let id = format!("{tag}-{k}-{n}");
                match mq::connect_client(addr, k, &id, 60, creds.pair(), timeout).await {
                    Ok((mut r, mut w)) => {
                        s.latencies.push(micros(began.elapsed()));
                        s.accepted += 1;
                        mq::disconnect(&mut w.buf);
                        let _ = w.flush().await;
                        if !r.wait_closed(Duration::from_secs(2)).await {
                            s.lingering += 1;
                        }
                    }
                    Err(mq::ConnectError::Refused(code)) => *s.refused.entry(code).or_default() += 1,
                    Err(mq::ConnectError::Timeout) => s.timeouts += 1,
                    Err(mq::ConnectError::Closed) => s.failures.add("closed without CONNACK", id),
                    Err(mq::ConnectError::Io(e)) => {
                        s.failures.add("I/O error", e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            s
        }));
    }
    let mut total = Storm::default();
    for t in tasks {
        if let Ok(s) = t.await {
            total.accepted += s.accepted;
            for (c, n) in s.refused {
                *total.refused.entry(c).or_default() += n;
            }
            total.timeouts += s.timeouts;
            total.failures.merge(s.failures);
            total.lingering += s.lingering;
            total.latencies.extend(s.latencies);
        }
    }
    total.elapsed = start.elapsed();
    total
}

fn print_storm(what: &str, connectors: usize, s: &mut Storm) {
    println!(
        "  {what}: {} connections accepted (CONNACK 0) in {:.2} s with {connectors} concurrent connectors = {:.0} \
         connects/s; refused {:?}; timeouts {}; other failures {}; not closed by the broker after DISCONNECT: {}",
        s.accepted,
        s.elapsed.as_secs_f64(),
        s.rate(),
        s.refused,
        s.timeouts,
        s.failures.total(),
        s.lingering
    );
    s.failures.print("    ");
    println!("    connect latency (TCP connect + CONNECT -> CONNACK): {}", tail_summary_us(&mut s.latencies));
}

struct Idle {
    opened: usize,
    failed: usize,
    base_kib: u64,
    loaded_kib: u64,
    closed_kib: u64,
    client_delta_kib: i64,
    /// CPU seconds (user + system) the broker spent while the connections were opened.
    accept_cpu_s: f64,
    /// Connections the broker reported open (hub only, `cacheStats`), while they were.
    reported: Option<u64>,
}

/// CPU seconds (utime + stime) a process has used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// The MQTT connection count a hub reports in `GET /info/cache`.
async fn reported_mqtt_connections(broker: &ChildBroker) -> Option<u64> {
    let http = broker.http?;
    let v: Value = reqwest::get(format!("http://{http}/api/rest/info/cache")).await.ok()?.json().await.ok()?;
    let stats = v["cacheStats"].as_str()?;
    stats.split("; ").find_map(|part| part.strip_suffix(" MQTT connections").and_then(|n| n.parse().ok()))
}

impl Idle {
    fn per_conn_kib(&self) -> f64 {
        if self.opened == 0 {
            return f64::NAN;
        }
        (self.loaded_kib as f64 - self.base_kib as f64) / self.opened as f64
    }
}

/// Opens `n` idle connections (keep-alive 0: no pings) to a child broker and reads its RSS before, with
/// them open, and after closing them.
async fn idle_memory(broker: &ChildBroker, n: usize, creds: &Creds, tag: &str) -> Idle {
    let open = |count: usize, tag: String| {
        let (addr, creds) = (broker.mqtt, creds.clone());
        async move {
            let gate = Arc::new(Semaphore::new(64));
            let mut tasks = Vec::with_capacity(count);
            for i in 0..count {
                let (gate, creds, id) = (gate.clone(), creds.clone(), format!("{tag}-{i}"));
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await;
                    mq::connect_client(addr, i, &id, 0, creds.pair(), Duration::from_secs(30)).await
                }));
            }
            let mut conns = Vec::with_capacity(count);
            let mut failed = 0;
            for t in tasks {
                match t.await {
                    Ok(Ok(c)) => conns.push(c),
                    _ => failed += 1,
                }
            }
            (conns, failed)
        }
    };
    // Warm up (threads, allocator arenas, first-use caches), then measure.
    drop(open(100, format!("{tag}-warm")).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let base_kib = broker.rss();
    let client_base = rss_kib(std::process::id()).unwrap_or(0) as i64;
    let cpu_before = cpu_seconds(broker.pid()).unwrap_or(0.0);
    let (conns, failed) = open(n, tag.to_string()).await;
    let accept_cpu_s = cpu_seconds(broker.pid()).unwrap_or(0.0) - cpu_before;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let loaded_kib = broker.rss();
    let reported = reported_mqtt_connections(broker).await;
    let client_delta_kib = rss_kib(std::process::id()).unwrap_or(0) as i64 - client_base;
    let opened = conns.len();
    drop(conns);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Idle { opened, failed, base_kib, loaded_kib, closed_kib: broker.rss(), client_delta_kib, accept_cpu_s, reported }
}

fn print_idle(what: &str, broker: &ChildBroker, i: &Idle) {
    println!(
        "  {what}: {} idle connections open ({} failed) in {} (pid {}): RSS {} KiB before -> {} KiB with them open \
         = {:.2} KiB per connection; {} KiB after closing them; {:.2} s CPU to accept them{}. (Client side, not \
         included: {:+} KiB.)",
        i.opened,
        i.failed,
        broker.label,
        broker.pid(),
        i.base_kib,
        i.loaded_kib,
        i.per_conn_kib(),
        i.closed_kib,
        i.accept_cpu_s,
        i.reported.map_or(String::new(), |n| format!("; the hub reported {n} MQTT connections open")),
        i.client_delta_kib
    );
}

// ---------------------------------------------------------------------------------------------------
// Scenario: authenticated MQTT connects per second and memory per idle connection (hub child process).

/// Idle connections the hub must hold at once (issue 11).
const HOLD_CONNECTIONS: usize = 50_000;

async fn scenario_mqtt_connect(config: &Config) -> BenchResult<()> {
    println!("== mqtt-connect: {}", describe("mqtt-connect"));
    let hub = ChildBroker::hub().await?;
    println!(
        "  hub: child process pid {} (this executable in hub mode, settings from HIVEHUB__* like `hivehub serve`), \
         MQTT on {}, RSS at start {} KiB. Each connector loops: TCP connect (TCP_NODELAY, source 127.0.0.1-16), \
         CONNECT (clean session, unique client id), CONNACK, DISCONNECT, wait for the hub to close; timeout per \
         attempt {} ms; {} s per phase.",
        hub.pid(),
        hub.mqtt,
        hub.rss(),
        config.connect_timeout.as_millis(),
        config.connect_seconds
    );
    let jwt = Creds::Jwt(hub.admin.clone());
    // Memory first, while the process is fresh (storms leave the allocator's high-water mark behind).
    let n = idle_connections_allowed(config.idle_connections);
    let idle = idle_memory(&hub, n, &jwt, "idle").await;
    print_idle("memory, JWT-authenticated clients", &hub, &idle);
    let hold = idle_connections_allowed(HOLD_CONNECTIONS);
    let held = idle_memory(&hub, hold, &Creds::Anonymous, "hold").await;
    print_idle(&format!("hold check, {HOLD_CONNECTIONS} anonymous idle connections wanted"), &hub, &held);
    let held_ok = held.opened == HOLD_CONNECTIONS && held.reported.is_some_and(|n| n >= HOLD_CONNECTIONS as u64);
    println!("  {HOLD_CONNECTIONS} connections held: {}", if held_ok { "yes" } else { "NO" });
    let mut s =
        connect_storm(hub.mqtt, config.connectors, config.connect_seconds, &jwt, config.connect_timeout, "cj").await;
    print_storm("JWT (access token) as password", config.connectors, &mut s);
    let login = Creds::Login(ADMIN_LOGIN.into(), ADMIN_PASSWORD.into());
    let mut l =
        connect_storm(hub.mqtt, config.login_connectors, config.connect_seconds, &login, config.connect_timeout, "cl")
            .await;
    print_storm("login/password (Argon2 per connect)", config.login_connectors, &mut l);
    hub.stop().await;
    let ok = s.timeouts == 0
        && s.not_accepted() == 0
        && l.timeouts == 0
        && l.not_accepted() == 0
        && idle.failed == 0
        && held_ok;
    if ok {
        Ok(())
    } else {
        Err("some connections were refused, failed or timed out (see above)".into())
    }
}

// ---------------------------------------------------------------------------------------------------
// Scenario: WebSocket sessions that subscribe and never read (hub child process).

const WS_SLOW_SESSIONS: usize = 500;
const WS_SLOW_MESSAGES: usize = 2_000;

async fn scenario_ws_slow() -> BenchResult<()> {
    println!("== ws-slow: {}", describe("ws-slow"));
    let hub = ChildBroker::hub().await?;
    let http = hub.http.ok_or("child hub without HTTP")?;
    let rest = format!("http://{http}/api/rest");
    let ws_url = format!("ws://{http}/api/websocket");
    let client = dedicated_client()?;
    let device = "ws-slow-dev";
    let put = client.put(format!("{rest}/device/{device}")).bearer_auth(&hub.admin);
    put.json(&json!({"name": device, "networkId": 1})).send().await?.error_for_status()?;
    let subscribe = json!({"action": "notification/subscribe", "requestId": 2, "deviceId": device});
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = hub.rss();

    // The sessions that never read after subscribing, and one that reads and times its pushes.
    let mut sleepers = Vec::with_capacity(WS_SLOW_SESSIONS);
    for _ in 0..WS_SLOW_SESSIONS {
        sleepers.push(ws_session(&ws_url, &hub.admin, &subscribe).await?);
    }
    let mut reader = ws_session(&ws_url, &hub.admin, &subscribe).await?;
    let with_sessions = hub.rss();

    // 2,000 notifications of ~2 KiB each: 4 MB per session, 2 GB in all if nothing were bounded.
    let pad = "p".repeat(2_000);
    let mut latencies = Vec::with_capacity(WS_SLOW_MESSAGES);
    let mut peak = with_sessions;
    let started = Instant::now();
    for i in 0..WS_SLOW_MESSAGES {
        let sent = Instant::now();
        let body = json!({"notification": "slow", "parameters": {"i": i, "pad": pad}});
        let post = client.post(format!("{rest}/device/{device}/notification")).bearer_auth(&hub.admin);
        post.json(&body).send().await?.error_for_status()?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), reader.next()).await?.ok_or("reader closed")??;
            if let Message::Text(t) = m {
                if t.contains("\"slow\"") {
                    break;
                }
            }
        }
        latencies.push(micros(sent.elapsed()));
        if i % 100 == 0 {
            peak = peak.max(hub.rss());
        }
    }
    let elapsed = started.elapsed();
    peak = peak.max(hub.rss());
    // How many sleepers the hub has closed: read each one's socket until its close frame.
    let mut closed_1008 = 0;
    let mut still_open = 0;
    for ws in sleepers.iter_mut() {
        let code = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Close(frame) = m {
                    return frame.map(|f| u16::from(f.code));
                }
            }
            None
        })
        .await;
        match code {
            Ok(Some(1008)) => closed_1008 += 1,
            Ok(_) => {}
            Err(_) => still_open += 1,
        }
    }
    drop(sleepers);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = hub.rss();
    latencies.sort_unstable();
    println!(
        "  {WS_SLOW_SESSIONS} sessions subscribed and never read while {WS_SLOW_MESSAGES} notifications of ~2 KiB were \
         inserted ({:.0}/s); one reading session beside them."
        , per_sec(WS_SLOW_MESSAGES as u64, elapsed)
    );
    println!(
        "  hub RSS: {base} KiB at start, {with_sessions} KiB with the sessions, peak {peak} KiB \
         ({:.0} KiB per non-reading session), {after} KiB after they were gone.",
        (peak.saturating_sub(with_sessions)) as f64 / WS_SLOW_SESSIONS as f64
    );
    println!(
        "  non-readers closed by the hub with 1008: {closed_1008}; still open after the run: {still_open}. \
         Reader: insert -> push {}",
        summary_us(&mut latencies)
    );
    hub.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Scenario: plain-topic MQTT, Mosquitto vs hub.

#[derive(Default)]
struct Fanin {
    sent: u64,
    acked: u64,
    delivered: u64,
    /// Publishers done (last PINGRESP / PUBACK), from the start.
    publish_elapsed: Duration,
    /// Last delivery to the subscriber, from the start.
    deliver_elapsed: Duration,
    errors: Vec<String>,
}

/// Publishers of the plain-topic fan-in rows (issue 11) and messages each [env BENCH_FANIN_MESSAGES].
const FANIN_PUBLISHERS: usize = 10;
const FANIN_MESSAGES: u64 = 20_000;

fn fanin_messages() -> u64 {
    std::env::var("BENCH_FANIN_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(FANIN_MESSAGES)
}

/// Publishes exactly `count` messages to `topic` as fast as the broker takes them: QoS0 in batches of
/// 512, each followed by a PINGREQ, at most 3 batches unanswered, then waits for the last PINGRESP (the
/// broker has read them all); QoS1 with at most `window` unacknowledged, until all are acknowledged.
async fn count_flood(
    (mut r, mut w): (mq::Reader, mq::Writer),
    topic: String,
    count: u64,
    qos: u8,
    window: usize,
    t0: Instant,
) -> PubOutcome {
    let mut out = PubOutcome::default();
    let payload = |seq: u64| {
        let mut p = vec![b'x'; 64];
        p[..8].copy_from_slice(&seq.to_be_bytes());
        p
    };
    let gate = Arc::new(Semaphore::new(if qos == 0 { 3 } else { window }));
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let (gate, acked) = (gate.clone(), acked.clone());
        tokio::spawn(async move {
            loop {
                match r.next().await {
                    Ok(mq::Packet::PingResp) => gate.add_permits(1),
                    Ok(mq::Packet::PubAck(_)) => {
                        acked.fetch_add(1, Ordering::Release);
                        gate.add_permits(1);
                    }
                    Ok(_) => {}
                    Err(e) => return e.to_string(),
                }
            }
        })
    };
    let patience = Duration::from_secs(120);
    while out.sent < count && out.error.is_none() {
        match tokio::time::timeout(patience, gate.acquire()).await {
            Ok(Ok(p)) => p.forget(),
            _ => {
                out.error = Some(format!("no PINGRESP/PUBACK within {} s", patience.as_secs()));
                break;
            }
        }
        let batch = if qos == 0 { 512 } else { 64 };
        for k in 0..batch {
            if out.sent == count {
                break;
            }
            if qos == 1 && k > 0 {
                match gate.try_acquire() {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
            }
            mq::publish(&mut w.buf, &topic, &payload(out.sent), qos, (out.sent % 65_535) as u16 + 1);
            out.sent += 1;
            if w.buf.len() > 32 * 1024 && w.flush().await.is_err() {
                out.error = Some("write failed".into());
                break;
            }
        }
        if qos == 0 {
            mq::pingreq(&mut w.buf);
        }
        if w.flush().await.is_err() {
            out.error = Some("write failed".into());
        }
    }
    if out.error.is_none() {
        let all = if qos == 0 { 3 } else { window as u32 };
        match tokio::time::timeout(patience, gate.acquire_many(all)).await {
            Ok(Ok(_)) => out.done_ns = nanos_since(t0, Instant::now()),
            _ => out.error = Some("not everything answered within 120 s after the last publish".into()),
        }
    }
    out.acked = acked.load(Ordering::Acquire);
    reader.abort();
    out
}

/// `publishers` connections each publish `count` messages to `bench/fanin/<i>`; one subscriber on
/// `bench/fanin/+` (same QoS) counts deliveries until all arrived or nothing arrives for 5 s after the
/// publishers are done.
async fn plain_fanin_count(
    addr: SocketAddr,
    publishers: usize,
    count: u64,
    qos: u8,
    window: usize,
) -> BenchResult<Fanin> {
    let (mut sr, mut sw) = mqtt_client(addr, &format!("bench-fanc-sub-q{qos}"), &Creds::Anonymous).await?;
    let code = mq::subscribe_one(&mut sr, &mut sw, "bench/fanin/+", qos).await?;
    if code > 1 {
        return Err(format!("subscription refused (SUBACK {code:#x})").into());
    }
    let mut pubs = Vec::with_capacity(publishers);
    for i in 0..publishers {
        pubs.push(mqtt_client(addr, &format!("bench-fanc-pub-q{qos}-{i}"), &Creds::Anonymous).await?);
    }
    let t0 = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let subscriber = {
        let (delivered, last) = (delivered.clone(), last.clone());
        tokio::spawn(async move {
            while let Ok(p) = sr.next().await {
                if let mq::Packet::Publish(mq::Publish { qos, pkid, .. }) = p {
                    delivered.fetch_add(1, Ordering::Relaxed);
                    last.store(nanos_since(t0, Instant::now()), Ordering::Relaxed);
                    if qos > 0 {
                        mq::puback(&mut sw.buf, pkid);
                    }
                    if (!sr.has_packet() || sw.buf.len() > 16 * 1024) && sw.flush().await.is_err() {
                        break;
                    }
                }
            }
        })
    };
    let mut tasks = Vec::with_capacity(publishers);
    for (i, conn) in pubs.into_iter().enumerate() {
        tasks.push(tokio::spawn(count_flood(conn, format!("bench/fanin/{i}"), count, qos, window, t0)));
    }
    let mut f = Fanin::default();
    let mut done_ns = 0;
    for t in tasks {
        let o = t.await?;
        f.sent += o.sent;
        f.acked += o.acked;
        done_ns = done_ns.max(o.done_ns);
        f.errors.extend(o.error);
    }
    f.publish_elapsed = Duration::from_nanos(done_ns);
    let expected = if qos == 0 { f.sent } else { f.acked };
    let (mut seen, mut since) = (u64::MAX, Instant::now());
    loop {
        let d = delivered.load(Ordering::Relaxed);
        if d >= expected {
            break;
        }
        if d != seen {
            (seen, since) = (d, Instant::now());
        } else if since.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    subscriber.abort();
    f.delivered = delivered.load(Ordering::Relaxed);
    f.deliver_elapsed = Duration::from_nanos(last.load(Ordering::Relaxed));
    Ok(f)
}

/// One publisher at `rate`/s, one subscriber, topic `bench/lat`, both QoS1; publish written ->
/// delivery read, per message (microseconds), and how many never arrived.
async fn plain_latency(addr: SocketAddr, m: usize, rate: u64) -> BenchResult<(Vec<i64>, usize)> {
    let (mut sr, mut sw) = mqtt_client(addr, "bench-plat-sub", &Creds::Anonymous).await?;
    let code = mq::subscribe_one(&mut sr, &mut sw, "bench/lat", 1).await?;
    if code > 1 {
        return Err(format!("subscription refused (SUBACK {code:#x})").into());
    }
    let (mut pr, mut pw) = mqtt_client(addr, "bench-plat-pub", &Creds::Anonymous).await?;
    let acks = tokio::spawn(async move { while pr.next().await.is_ok() {} });
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let subscriber = tokio::spawn(async move {
        while let Ok(p) = sr.next().await {
            if let mq::Packet::Publish(mq::Publish { qos, pkid, payload, .. }) = p {
                let at = Instant::now();
                if payload.len() >= 8 {
                    let _ = tx.send((u64::from_be_bytes(payload[..8].try_into().unwrap_or_default()), at));
                }
                if qos > 0 {
                    mq::puback(&mut sw.buf, pkid);
                }
                if !sr.has_packet() && sw.flush().await.is_err() {
                    break;
                }
            }
        }
    });
    let mut sent = Vec::with_capacity(m);
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let mut payload = vec![b'x'; 64];
    for seq in 0..m as u64 {
        tick.tick().await;
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        mq::publish(&mut pw.buf, "bench/lat", &payload, 1, (seq % 65_535) as u16 + 1);
        sent.push(Instant::now());
        pw.flush().await?;
    }
    let mut lat = Vec::with_capacity(m);
    let mut seen = vec![false; m];
    while lat.len() < m {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((seq, at))) => {
                if let Some(s) = usize::try_from(seq).ok().filter(|&s| s < m && !seen[s]) {
                    seen[s] = true;
                    lat.push(signed_micros(at, sent[s]));
                }
            }
            _ => break,
        }
    }
    subscriber.abort();
    acks.abort();
    let missing = m - lat.len();
    Ok((lat, missing))
}

/// The figures of one broker for the side-by-side table.
struct BrokerFigures {
    label: String,
    q0: Fanin,
    q1: Fanin,
    latency: Vec<i64>,
    latency_missing: usize,
    storm: Storm,
    start_rss: u64,
    idle: Idle,
}

async fn plain_suite(broker: &ChildBroker, config: &Config) -> BenchResult<BrokerFigures> {
    println!(
        "  -- {} (pid {}, MQTT on {}, RSS at start {} KiB) --",
        broker.label,
        broker.pid(),
        broker.mqtt,
        broker.rss()
    );
    let start_rss = broker.rss();
    // Memory first, while the process is fresh (floods leave the allocator's high-water mark behind).
    let idle = idle_memory(broker, idle_connections_allowed(config.idle_connections), &Creds::Anonymous, "idle").await;
    print_idle("memory, anonymous clients", broker, &idle);
    let (p, n) = (FANIN_PUBLISHERS, fanin_messages());
    let q0 = plain_fanin_count(broker.mqtt, p, n, 0, config.mqtt_window).await?;
    println!(
        "  QoS0 fan-in ({p} publishers x {n} -> 1 wildcard subscriber, 64-byte payloads): published {} = {:.0} msg/s \
         (until the last PINGRESP at {:.2} s); delivered {} = {:.0} msg/s (until the last delivery at {:.2} s); LOST {}",
        q0.sent,
        per_sec(q0.sent, q0.publish_elapsed),
        q0.publish_elapsed.as_secs_f64(),
        q0.delivered,
        per_sec(q0.delivered, q0.deliver_elapsed),
        q0.deliver_elapsed.as_secs_f64(),
        q0.sent.saturating_sub(q0.delivered)
    );
    for e in &q0.errors {
        println!("    publisher problem: {e}");
    }
    let q1 = plain_fanin_count(broker.mqtt, p, n, 1, config.mqtt_window).await?;
    println!(
        "  QoS1 fan-in ({p} publishers x {n} with {} unacknowledged each -> 1 QoS1 wildcard subscriber): acknowledged \
         {} of {} sent = {:.0} msg/s (until the last PUBACK at {:.2} s); delivered {} = {:.0} msg/s; LOST (acknowledged \
         but not delivered) {}",
        config.mqtt_window,
        q1.acked,
        q1.sent,
        per_sec(q1.acked, q1.publish_elapsed),
        q1.publish_elapsed.as_secs_f64(),
        q1.delivered,
        per_sec(q1.delivered, q1.deliver_elapsed),
        q1.acked.saturating_sub(q1.delivered)
    );
    for e in &q1.errors {
        println!("    publisher problem: {e}");
    }
    let (mut latency, latency_missing) = plain_latency(broker.mqtt, config.mqtt_messages, config.mqtt_rate).await?;
    println!(
        "  latency (QoS1 publish -> QoS1 subscriber, {} messages at {}/s; missing {latency_missing}): {}",
        config.mqtt_messages,
        config.mqtt_rate,
        tail_summary_us(&mut latency)
    );
    let mut storm = connect_storm(
        broker.mqtt,
        config.connectors,
        config.connect_seconds,
        &Creds::Anonymous,
        config.connect_timeout,
        "ca",
    )
    .await;
    print_storm("connects, anonymous", config.connectors, &mut storm);
    Ok(BrokerFigures { label: broker.label.clone(), q0, q1, latency, latency_missing, storm, start_rss, idle })
}

async fn scenario_mosquitto(config: &Config) -> BenchResult<()> {
    println!("== mosquitto: {}", describe("mosquitto"));
    println!(
        "  Both brokers run as child processes on 127.0.0.1 and are driven by the same minimal MQTT 3.1.1 client \
         (TCP_NODELAY, batched writes) in this process, one broker after the other; all clients anonymous, plain \
         (non-dh/) topics. Mosquitto config: listener PORT 127.0.0.1, allow_anonymous true, max_connections -1 (other \
         settings at their defaults, e.g. max_queued_messages 1000). Hub: default settings (plain_topics open)."
    );
    let mut figures = Vec::new();
    for hub in [false, true] {
        let broker = if hub { ChildBroker::hub().await? } else { ChildBroker::mosquitto(&config.mosquitto).await? };
        let result = plain_suite(&broker, config).await;
        broker.stop().await;
        figures.push(result?);
    }
    print_comparison(config, &figures);
    Ok(())
}

/// One cell of the comparison table, computed from a broker's figures.
type TableCell = Box<dyn Fn(&BrokerFigures) -> String>;

fn print_comparison(config: &Config, figs: &[BrokerFigures]) {
    let p = FANIN_PUBLISHERS;
    let rows: Vec<(String, TableCell)> = vec![
        (
            format!("QoS0 fan-in {p}->1: published msg/s"),
            Box::new(|f| format!("{:.0}", per_sec(f.q0.sent, f.q0.publish_elapsed))),
        ),
        (
            "QoS0 fan-in: delivered msg/s".into(),
            Box::new(|f| format!("{:.0}", per_sec(f.q0.delivered, f.q0.deliver_elapsed))),
        ),
        ("QoS0 fan-in: delivered / published".into(), Box::new(|f| format!("{} / {}", f.q0.delivered, f.q0.sent))),
        ("QoS0 fan-in: LOST".into(), Box::new(|f| f.q0.sent.saturating_sub(f.q0.delivered).to_string())),
        (
            format!("QoS1 fan-in {p}->1: acknowledged msg/s"),
            Box::new(|f| format!("{:.0}", per_sec(f.q1.acked, f.q1.publish_elapsed))),
        ),
        (
            "QoS1 fan-in: delivered msg/s".into(),
            Box::new(|f| format!("{:.0}", per_sec(f.q1.delivered, f.q1.deliver_elapsed))),
        ),
        ("QoS1 fan-in: delivered / acknowledged".into(), Box::new(|f| format!("{} / {}", f.q1.delivered, f.q1.acked))),
        (
            "QoS1 fan-in: LOST (acknowledged)".into(),
            Box::new(|f| f.q1.acked.saturating_sub(f.q1.delivered).to_string()),
        ),
        ("QoS1 latency p50 (ms)".into(), Box::new(|f| format!("{:.3}", pct_ms(&f.latency, 50.0)))),
        ("QoS1 latency p99 (ms)".into(), Box::new(|f| format!("{:.3}", pct_ms(&f.latency, 99.0)))),
        ("QoS1 latency p99.9 (ms)".into(), Box::new(|f| format!("{:.3}", pct_ms(&f.latency, 99.9)))),
        ("QoS1 latency max (ms)".into(), Box::new(|f| format!("{:.3}", pct_ms(&f.latency, 100.0)))),
        ("QoS1 latency: messages missing".into(), Box::new(|f| f.latency_missing.to_string())),
        (
            format!("connects/s (anonymous, {} connectors)", config.connectors),
            Box::new(|f| format!("{:.0}", f.storm.rate())),
        ),
        (
            "connects: refused+failed / timeouts".into(),
            Box::new(|f| format!("{} / {}", f.storm.not_accepted(), f.storm.timeouts)),
        ),
        ("connect latency p99 (ms)".into(), Box::new(|f| format!("{:.3}", pct_ms(&f.storm.latencies, 99.0)))),
        ("RSS at start (KiB)".into(), Box::new(|f| f.start_rss.to_string())),
        (
            "RSS per idle connection (KiB)".into(),
            Box::new(|f| format!("{:.2} ({} conns)", f.idle.per_conn_kib(), f.idle.opened)),
        ),
        ("CPU s to accept the idle connections".into(), Box::new(|f| format!("{:.2}", f.idle.accept_cpu_s))),
    ];
    println!();
    println!(
        "  side by side (plain topics, anonymous clients, same client code, brokers as child processes; {} CPUs shared \
         with the load generator):",
        available_cpus()
    );
    let width = 42;
    let mut header = format!("  {:<width$}", "measure");
    for f in figs {
        let _ = write!(header, " | {:>22}", f.label);
    }
    println!("{header}");
    println!("  {}", "-".repeat(width + figs.len() * 25));
    for (name, cell) in &rows {
        let mut line = format!("  {name:<width$}");
        for f in figs {
            let _ = write!(line, " | {:>22}", cell(f));
        }
        println!("{line}");
    }
    // Issue 11's rows: hub / peer (figs[0] is Mosquitto, figs[1] the hub).
    if let [peer, hub] = figs {
        let ratio = |h: f64, m: f64| if m > 0.0 { format!("{:.2}x", h / m) } else { "-".into() };
        let q0 = |f: &BrokerFigures| per_sec(f.q0.delivered, f.q0.deliver_elapsed);
        let q1 = |f: &BrokerFigures| per_sec(f.q1.delivered, f.q1.deliver_elapsed);
        println!();
        println!("  hub / {} (targets: fan-in delivered >= 1.5x with 0 lost; idle KiB <= 2; CPU <= 1.5x):", peer.label);
        println!(
            "    QoS0 fan-in delivered/s: {:.0} vs {:.0} = {}; lost {} vs {}",
            q0(hub),
            q0(peer),
            ratio(q0(hub), q0(peer)),
            hub.q0.sent.saturating_sub(hub.q0.delivered),
            peer.q0.sent.saturating_sub(peer.q0.delivered)
        );
        println!(
            "    QoS1 fan-in delivered/s: {:.0} vs {:.0} = {}; lost (acknowledged) {} vs {}",
            q1(hub),
            q1(peer),
            ratio(q1(hub), q1(peer)),
            hub.q1.acked.saturating_sub(hub.q1.delivered),
            peer.q1.acked.saturating_sub(peer.q1.delivered)
        );
        println!(
            "    idle connections: {:.2} vs {:.2} KiB each = {}; CPU to accept {:.2} vs {:.2} s = {}",
            hub.idle.per_conn_kib(),
            peer.idle.per_conn_kib(),
            ratio(hub.idle.per_conn_kib(), peer.idle.per_conn_kib()),
            hub.idle.accept_cpu_s,
            peer.idle.accept_cpu_s,
            ratio(hub.idle.accept_cpu_s, peer.idle.accept_cpu_s)
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Cluster scenarios (PostgreSQL): two instances on one database.

fn require_postgres(scenario: &str) -> BenchResult<()> {
    match POSTGRES_SERVER.get().cloned().flatten() {
        Some(_) => Ok(()),
        None => {
            Err(format!("{scenario} needs --database postgres://... (instances share a PostgreSQL database)").into())
        }
    }
}

/// Latencies of one WebSocket receiver of a cluster-latency run.
struct Receiver {
    label: String,
    latencies_us: Vec<i64>,
    failures: Failures,
}

/// Publishes `rate` QoS1 notifications per second for `seconds`, round robin over `devices` MQTT
/// device connections on `publisher` (the hub handles one connection's publishes one at a time, each
/// after the previous one's commit, so one connection alone cannot carry 1,000/s), and times each until
/// the WebSocket session of every receiver (label, instance) has its push, and until its PUBACK.
async fn cluster_latency_run(
    publisher: &BenchHub,
    receivers: &[(&str, &BenchHub)],
    tag: &str,
    devices: usize,
    rate: u64,
    seconds: u64,
) -> BenchResult<(Vec<Receiver>, Vec<i64>, Duration)> {
    let m = (rate * seconds) as usize;
    let name = format!("lat-{tag}");
    let subscribe = json!({"action": "notification/subscribe", "requestId": 2, "networkIds": [publisher.network_id],
        "names": [name]});
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, i64, Instant)>();
    let mut tasks = Vec::new();
    for (i, (_, hub)) in receivers.iter().enumerate() {
        let mut ws = ws_session(&hub.ws_url(), &hub.admin, &subscribe).await?;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    let at = Instant::now();
                    if let Some(seq) = find_i64(t.as_str(), "\"seq\":") {
                        let _ = tx.send((i, seq, at));
                    }
                }
            }
        }));
    }
    let ack = receivers.len();
    let mut writers = Vec::with_capacity(devices);
    for d in 0..devices {
        let device = format!("bench-cl-{tag}-{d:02}");
        publisher.device(&device).await?;
        let topic = publisher.notification_topic(&device, &name).await?;
        let (mut dr, dw) =
            mqtt_client(publisher.mqtt_addr()?, &format!("{device}-pub"), &Creds::Jwt(publisher.admin.clone())).await?;
        let ack_tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            // A connection's PUBACKs come in order: the k-th is for seq d + k * devices.
            let mut k = 0;
            while let Ok(p) = dr.next().await {
                if let mq::Packet::PubAck(_) = p {
                    let _ = ack_tx.send((ack, (d + k * devices) as i64, Instant::now()));
                    k += 1;
                }
            }
        }));
        writers.push((dw, topic));
    }
    drop(tx);
    // Collect while publishing, so the receiving end never queues up.
    let collect = tokio::spawn(async move {
        let mut got: Vec<Vec<(i64, Instant)>> = vec![Vec::with_capacity(m); ack + 1];
        let total = m * (ack + 1);
        let mut n = 0;
        while n < total {
            let Ok(Some((i, seq, at))) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await else { break };
            got[i].push((seq, at));
            n += 1;
        }
        got
    });
    let mut sent = Vec::with_capacity(m);
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    for seq in 0..m {
        tick.tick().await;
        let (dw, topic) = &mut writers[seq % devices];
        let payload = format!("{{\"notification\":\"{name}\",\"parameters\":{{\"seq\":{seq}}}}}");
        mq::publish(&mut dw.buf, topic, payload.as_bytes(), 1, ((seq / devices) % 65_535) as u16 + 1);
        sent.push(Instant::now());
        dw.flush().await?;
    }
    let elapsed = sent.last().map_or(Duration::ZERO, |l| l.duration_since(sent[0]));
    let got = collect.await?;
    for t in tasks {
        t.abort();
    }
    let mut out = Vec::new();
    for (i, (label, _)) in receivers.iter().enumerate() {
        let mut r =
            Receiver { label: label.to_string(), latencies_us: Vec::with_capacity(m), failures: Failures::default() };
        let mut seen = vec![false; m];
        // Per device, pushes come in publish order (devices interleave in commit order).
        let mut last = vec![-1i64; devices];
        for &(seq, at) in &got[i] {
            match usize::try_from(seq).ok().filter(|&s| s < m) {
                Some(s) if !std::mem::replace(&mut seen[s], true) => {
                    r.latencies_us.push(signed_micros(at, sent[s]));
                    if seq < last[s % devices] {
                        r.failures.add("push out of order", format!("seq {seq} after {}", last[s % devices]));
                    }
                    last[s % devices] = seq;
                }
                Some(s) => r.failures.add("duplicate push", format!("seq {s}")),
                None => r.failures.add("push with an unknown seq", format!("seq {seq}")),
            }
        }
        let missing = seen.iter().filter(|s| !**s).count();
        if missing > 0 {
            r.failures.add("push missing", format!("{missing} of {m}"));
        }
        out.push(r);
    }
    let acks: Vec<i64> = got[ack]
        .iter()
        .filter_map(|&(seq, at)| usize::try_from(seq).ok().filter(|&s| s < m).map(|s| signed_micros(at, sent[s])))
        .collect();
    Ok((out, acks, elapsed))
}

fn print_cluster_run(what: &str, m: usize, elapsed: Duration, receivers: &mut [Receiver], acks: &mut [i64]) -> bool {
    println!("  {what}: published {m} in {:.2} s ({:.0}/s)", elapsed.as_secs_f64(), per_sec(m as u64, elapsed));
    let mut ok = acks.len() == m;
    for r in receivers.iter_mut() {
        println!(
            "    publish -> WebSocket push on {:<10} {} | anomalies {}",
            r.label,
            tail_summary_us(&mut r.latencies_us),
            r.failures.total()
        );
        r.failures.print("      ");
        ok &= r.failures.total() == 0 && r.latencies_us.len() == m;
    }
    println!("    publish -> PUBACK (stored)       {} (of {m})", tail_summary_us(acks));
    ok
}

async fn scenario_cluster_latency(hub: &BenchHub, config: &Config) -> BenchResult<()> {
    println!("== cluster-latency: {}", describe("cluster-latency"));
    require_postgres("cluster-latency")?;
    let (rate, seconds, devices) = (config.cluster_rate, config.cluster_seconds, config.cluster_devices);
    let m = (rate * seconds) as usize;
    println!(
        "  {devices} MQTT device connections on instance A publish {m} QoS1 notifications in turn, {rate}/s in \
         total for {seconds} s, to their dh/notification/... topics, payload {{\"notification\":name,\
         \"parameters\":{{\"seq\":N}}}}, without waiting for PUBACKs. A WebSocket session per instance, \
         subscribed to the network, receives the pushes. Latency = publish written to the socket -> push \
         received and seq parsed. First A alone (the single-instance figure), then with instance B on the \
         same database and a subscriber on each (B receives through its commit tail: NOTIFY, then a read of \
         the committed rows)."
    );
    let mut ok = true;
    let (mut r, mut acks, elapsed) = cluster_latency_run(hub, &[("A", hub)], "one", devices, rate, seconds).await?;
    ok &= print_cluster_run("one instance", m, elapsed, &mut r, &mut acks);

    let b = hub.join().await?;
    let run = cluster_latency_run(hub, &[("A", hub), ("B", &b)], "two", devices, rate, seconds).await;
    b.stop().await;
    let (mut r, mut acks, elapsed) = run?;
    ok &= print_cluster_run("two instances, devices on A", m, elapsed, &mut r, &mut acks);
    if ok {
        Ok(())
    } else {
        Err("notifications were lost, duplicated, reordered or not acknowledged (see above)".into())
    }
}

/// One QoS1 ingest phase: a device connection per entry of `on` (the instance it connects to); returns
/// acknowledged notifications per second, after checking stored == acknowledged through `hub`.
async fn ingest_phase(hub: &BenchHub, on: &[&BenchHub], tag: &str, config: &Config) -> BenchResult<(f64, bool)> {
    let mut conns = Vec::with_capacity(on.len());
    let mut devices = Vec::with_capacity(on.len());
    for (i, instance) in on.iter().enumerate() {
        let d = format!("bench-ci-{tag}-{i:02}");
        hub.device(&d).await?;
        let topic = hub.notification_topic(&d, "q1").await?;
        conns.push((
            mqtt_client(instance.mqtt_addr()?, &format!("{d}-c"), &Creds::Jwt(hub.admin.clone())).await?,
            topic,
        ));
        devices.push(d);
    }
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(config.mqtt_seconds);
    let mut tasks = Vec::with_capacity(conns.len());
    for (conn, topic) in conns {
        let payload = |seq: u64| {
            format!("{{\"notification\":\"q1\",\"parameters\":{{\"seq\":{seq},\"value\":21.5}}}}").into_bytes()
        };
        tasks.push(tokio::spawn(publish_flood(conn, topic, payload, 1, config.mqtt_window, deadline, t0)));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await?);
    }
    let end = Duration::from_nanos(outcomes.iter().map(|o| o.done_ns).max().unwrap_or(0));
    let acked: u64 = outcomes.iter().map(|o| o.acked).sum();
    let mut stored = 0u64;
    let mut ok = outcomes.iter().all(|o| o.error.is_none());
    for (d, o) in devices.iter().zip(&outcomes) {
        let ids = hub.stored_notification_ids(d, "q1").await?;
        stored += ids.len() as u64;
        ok &= ids.len() as u64 == o.acked && ids.iter().collect::<BTreeSet<_>>().len() == ids.len();
    }
    for e in outcomes.iter().filter_map(|o| o.error.as_ref()) {
        println!("    connection problem: {e}");
    }
    let rate = per_sec(acked, end);
    println!(
        "    {acked} PUBACKs, last at {:.2} s = {rate:.0} acknowledged notifications/s; stored {stored} -> {}",
        end.as_secs_f64(),
        if ok { "stored == acknowledged" } else { "MISMATCH" }
    );
    Ok((rate, ok))
}

async fn scenario_cluster_ingest(hub: &BenchHub, config: &Config) -> BenchResult<()> {
    println!("== cluster-ingest: {}", describe("cluster-ingest"));
    require_postgres("cluster-ingest")?;
    let p = config.mqtt_publishers;
    println!(
        "  {p} MQTT device connections publish QoS1 notifications as fast as acknowledged (at most {} \
         unacknowledged each) for {} s: first all on instance A alone, then with instance B on the same \
         database and the devices split (even on A, odd on B). Both instances commit under the cluster-wide \
         message clock, one batch at a time.",
        config.mqtt_window, config.mqtt_seconds
    );
    println!("  one instance:");
    let (one, ok1) = ingest_phase(hub, &vec![hub; p], "one", config).await?;
    let b = hub.join().await?;
    let on: Vec<&BenchHub> = (0..p).map(|i| if i % 2 == 0 { hub } else { &b }).collect();
    println!("  two instances:");
    let two = ingest_phase(hub, &on, "two", config).await;
    b.stop().await;
    let (two, ok2) = two?;
    println!("  one instance {one:.0} acks/s; two instances {two:.0} acks/s ({:+.0} %)", (two / one - 1.0) * 100.0);
    if ok1 && ok2 {
        Ok(())
    } else {
        Err("MQTT ingest lost, duplicated or failed to acknowledge notifications (see above)".into())
    }
}

/// The writer's transaction on PostgreSQL, over sqlx: `rows` notifications in one statement, stamped
/// under the message clock (`locked`) or with the client's clock only.
async fn clock_commit(pool: &sqlx::PgPool, locked: bool, rows: i64) -> BenchResult<()> {
    let mut tx = pool.begin().await?;
    let mut ts = hivehub::time::now_ms();
    if locked {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(0x0068_6976_6568_7562_i64).execute(&mut *tx).await?;
        ts = sqlx::query_scalar("UPDATE message_clock SET last_ts = GREATEST(last_ts + 1, $1) RETURNING last_ts")
            .bind(ts)
            .fetch_one(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO device_notification (device_id, network_id, device_type_id, notification, timestamp, parameters) \
         SELECT 'bench-clock', NULL, NULL, 'tick', $1, '{\"value\":1}' FROM generate_series(1, $2)",
    )
    .bind(ts)
    .bind(rows)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify('hivehub_bench_clock', $1)").bind(ts.to_string()).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

async fn scenario_clock_lock(hub: &BenchHub, config: &Config) -> BenchResult<()> {
    println!("== clock-lock: {}", describe("clock-lock"));
    require_postgres("clock-lock")?;
    let seconds = config.mqtt_seconds;
    println!(
        "  The writer's transaction straight over sqlx on the hub's database (no hub in the path): BEGIN; \
         [SELECT pg_advisory_xact_lock(clock); UPDATE message_clock ... RETURNING]; INSERT of N notifications \
         in one statement; SELECT pg_notify; COMMIT — with the clock (as the writer does) and without it, from \
         1 connection (one instance) and 2 connections (two instances' writers), {seconds} s each. Latency = \
         BEGIN -> COMMIT answered."
    );
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&hub.settings.database.url).await?;
    for rows in [1i64, 16] {
        for writers in [1usize, 2] {
            for locked in [false, true] {
                let deadline = Instant::now() + Duration::from_secs(seconds);
                let mut tasks = Vec::new();
                for _ in 0..writers {
                    let pool = pool.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut lat = Vec::new();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            clock_commit(&pool, locked, rows).await?;
                            lat.push(micros(t.elapsed()));
                        }
                        Ok::<_, Box<dyn Error + Send + Sync>>(lat)
                    }));
                }
                let mut lat = Vec::new();
                for t in tasks {
                    lat.extend(t.await??);
                }
                let n = lat.len() as u64;
                println!(
                    "  {rows:>2} row(s)/commit, {writers} writer(s), {:<14} {:>6.0} commits/s  {}",
                    if locked { "with clock:" } else { "without clock:" },
                    per_sec(n, Duration::from_secs(seconds)),
                    tail_summary_us(&mut lat)
                );
            }
        }
    }
    sqlx::query("DELETE FROM device_notification WHERE device_id = 'bench-clock'").execute(&pool).await?;
    pool.close().await;
    Ok(())
}
