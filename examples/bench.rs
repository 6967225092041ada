//! Benchmarks of a real hivehub started in-process on 127.0.0.1:0 with a fresh temporary SQLite database.
//!
//! ```text
//! cargo run --release --example bench                 # every scenario
//! cargo run --release --example bench -- inserts      # one scenario (several may be named)
//! cargo run --release --example bench -- --seconds 5 longpoll
//! BENCH_SECONDS=30 cargo run --release --example bench -- inserts
//! ```
//!
//! Scenarios (one `async fn` each, listed in [`SCENARIOS`]):
//! - `inserts`: concurrent REST notification inserts for a fixed duration; throughput, per-request
//!   latency, and a check that the stored notifications are exactly the ones answered 201.
//! - `longpoll`: many long-pollers on one device, one notification inserted at a time; time until each
//!   poller has the notification.
//!
//! The load generator shares the process (and the tokio runtime) with the hub, so on a small machine
//! the figures include the clients' own CPU cost. Set `RUST_LOG=hivehub=debug` to see the hub's log
//! (default: warnings and errors only).

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hivehub::config::Settings;
use hivehub::App;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const ADMIN_LOGIN: &str = "dhadmin";
const ADMIN_PASSWORD: &str = "bench-admin-pass-1";

/// The scenarios, in the order `all` runs them. Add new ones here and in [`run_scenario`].
const SCENARIOS: &[(&str, &str)] = &[
    ("inserts", "concurrent REST notification inserts: throughput, latency, stored == acknowledged"),
    ("longpoll", "long-poll wake-up latency: N pollers on one device, one insert at a time"),
];

#[derive(Parser, Debug, Clone)]
#[command(about = "hivehub benchmarks (in-process hub, temporary SQLite database)")]
struct Opts {
    /// Scenarios to run: `inserts`, `longpoll`, or `all` (default).
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
        let c = Config {
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
        Ok(c)
    }
}

#[tokio::main]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let opts = Opts::parse();
    if let Err(e) = run(opts).await {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

async fn run(opts: Opts) -> BenchResult<()> {
    let config = Config::from(&opts)?;
    let selected = select_scenarios(&opts.scenarios)?;

    let hub = BenchHub::start().await?;
    println!("hivehub bench");
    println!(
        "  hub: in-process at {} | SQLite in a temporary dir, synchronous={}, batch_max_rows={}, \
         read pool={} | {} CPUs | load generator in the same process and runtime",
        hub.root,
        hub.settings.database.synchronous,
        hub.settings.database.batch_max_rows,
        hub.settings.database.max_connections,
        available_cpus()
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
                    let _ = write!(msg, "\n  {n:<10} {d}");
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
        other => Err(format!("scenario {other:?} is listed but not implemented").into()),
    }
}

// ---------------------------------------------------------------------------------------------------
// The hub under test and small REST helpers.

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
        settings.database.url = format!("sqlite://{}/bench.db", dir.path().display());
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
