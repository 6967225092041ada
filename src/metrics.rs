//! Every metric the hub exports at `GET /metrics` (Prometheus text format): the names, their help
//! texts and one small recording function per event, called from the code in one line. Recorded
//! through the `metrics` facade into one process-wide Prometheus recorder, so counters keep counting
//! across restarts of the hub's parts (a writer or listener that is restarted does not reset them).
//! Gauges of state the hub already keeps (pool use, queue depth, MQTT connections, subscriptions)
//! are sampled when `/metrics` is rendered.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::hub::bus::EventKind;
use crate::hub::Hub;

pub const BUILD_INFO: &str = "hivehub_build_info";
pub const NODE_INFO: &str = "hivehub_node_info";
pub const CONNECTIONS: &str = "hivehub_connections";
pub const SUBSCRIPTIONS: &str = "hivehub_subscriptions";
pub const MESSAGES_RECEIVED: &str = "hivehub_messages_received_total";
pub const MESSAGES_DELIVERED: &str = "hivehub_messages_delivered_total";
pub const MESSAGES_DROPPED: &str = "hivehub_messages_dropped_total";
pub const WRITER_COMMITS: &str = "hivehub_writer_commits_total";
pub const WRITER_COMMIT_ROWS: &str = "hivehub_writer_commit_rows";
pub const WRITER_COMMIT_SECONDS: &str = "hivehub_writer_commit_seconds";
pub const WRITER_QUEUE_DEPTH: &str = "hivehub_writer_queue_depth";
pub const AUTH_FAILURES: &str = "hivehub_auth_failures_total";
pub const DB_POOL_CONNECTIONS: &str = "hivehub_db_pool_connections";
pub const DB_POOL_IDLE: &str = "hivehub_db_pool_idle_connections";
pub const DB_POOL_MAX: &str = "hivehub_db_pool_max_connections";

/// Every metric name, for the documentation test.
pub const ALL: [&str; 15] = [
    BUILD_INFO,
    NODE_INFO,
    CONNECTIONS,
    SUBSCRIPTIONS,
    MESSAGES_RECEIVED,
    MESSAGES_DELIVERED,
    MESSAGES_DROPPED,
    WRITER_COMMITS,
    WRITER_COMMIT_ROWS,
    WRITER_COMMIT_SECONDS,
    WRITER_QUEUE_DEPTH,
    AUTH_FAILURES,
    DB_POOL_CONNECTIONS,
    DB_POOL_IDLE,
    DB_POOL_MAX,
];

/// How a message or connection reached the hub (the `transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Rest,
    /// A REST long poll (`.../poll`) waiting for messages.
    LongPoll,
    WebSocket,
    Mqtt,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Rest => "rest",
            Transport::LongPoll => "long_poll",
            Transport::WebSocket => "websocket",
            Transport::Mqtt => "mqtt",
        }
    }
}

const TRANSPORTS: [Transport; 4] = [Transport::Rest, Transport::LongPoll, Transport::WebSocket, Transport::Mqtt];
const KINDS: [EventKind; 3] = [EventKind::Notification, EventKind::CommandInsert, EventKind::CommandUpdate];

/// The message counters by kind and transport, registered once with the recorder: they are bumped
/// per message and per delivery (a fan-out to 1,000 sessions is 1,000 bumps), where the `counter!`
/// macro would build its labelled key and look it up in the registry every time.
struct MessageCounters {
    received: Vec<Counter>,
    delivered: Vec<Counter>,
}

static MESSAGE_COUNTERS: OnceLock<MessageCounters> = OnceLock::new();

impl MessageCounters {
    fn register() -> MessageCounters {
        let each = |name: &'static str| {
            let mut all = Vec::with_capacity(KINDS.len() * TRANSPORTS.len());
            for kind in KINDS {
                for transport in TRANSPORTS {
                    all.push(counter!(name, "kind" => kind_label(kind), "transport" => transport.label()));
                }
            }
            all
        };
        MessageCounters { received: each(MESSAGES_RECEIVED), delivered: each(MESSAGES_DELIVERED) }
    }

    fn index(kind: EventKind, transport: Transport) -> usize {
        let k = KINDS.iter().position(|&k| k == kind).unwrap_or(0);
        let t = TRANSPORTS.iter().position(|&t| t == transport).unwrap_or(0);
        k * TRANSPORTS.len() + t
    }
}

fn kind_label(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Notification => "notification",
        EventKind::CommandInsert => "command",
        EventKind::CommandUpdate => "command_update",
    }
}

/// Why messages were dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// An MQTT publish refused by authorization or validation (never stored or routed).
    MqttPublishRefused,
    /// A subscriber's delivery queue was full: the delivery is lost and the session is closed.
    SubscriberQueueFull,
    /// A plain QoS 0 publish not delivered to an MQTT client whose socket stopped taking data
    /// (`[mqtt] stall_ms`).
    MqttSubscriberStalled,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::MqttPublishRefused => "mqtt_publish_refused",
            DropReason::SubscriberQueueFull => "subscriber_queue_full",
            DropReason::MqttSubscriberStalled => "mqtt_subscriber_stalled",
        }
    }
}

/// What kind of credential failed (the `credential` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Password,
    Token,
}

/// The process's recorder, installed on first use (by `App::start` or the first render).
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        const ROWS: [f64; 12] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0];
        const SECONDS: [f64; 13] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(WRITER_COMMIT_ROWS.into()), &ROWS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(WRITER_COMMIT_SECONDS.into()), &SECONDS))
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (a program embedding the hub): it keeps the
        // events, and this handle renders only what is set below.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder is installed already; /metrics shows only sampled gauges");
        }
        describe();
        MESSAGE_COUNTERS.get_or_init(MessageCounters::register);
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "api_version" => crate::API_VERSION).set(1.0);
        handle
    })
}

fn describe() {
    describe_gauge!(BUILD_INFO, "Always 1; the labels name the hub's version and the DeviceHive API version.");
    describe_gauge!(NODE_INFO, "Always 1; the label names this instance's node id.");
    describe_gauge!(CONNECTIONS, "Open connections by transport (long_poll: REST polls waiting now).");
    describe_gauge!(SUBSCRIPTIONS, "Live message subscriptions (WebSocket, MQTT and waiting long polls).");
    describe_counter!(MESSAGES_RECEIVED, "Messages accepted and stored, by kind and transport.");
    describe_counter!(MESSAGES_DELIVERED, "Messages sent to subscribers, by kind and transport.");
    describe_counter!(MESSAGES_DROPPED, "Messages or deliveries dropped, by reason.");
    describe_counter!(WRITER_COMMITS, "Group commits of the message writer.");
    describe_histogram!(WRITER_COMMIT_ROWS, Unit::Count, "Rows per group commit.");
    describe_histogram!(WRITER_COMMIT_SECONDS, Unit::Seconds, "Time to commit one group.");
    describe_gauge!(WRITER_QUEUE_DEPTH, "Writes waiting for the message writer.");
    describe_counter!(AUTH_FAILURES, "Refused credentials, by kind (password logins, tokens).");
    describe_gauge!(DB_POOL_CONNECTIONS, "Open database connections in the pool.");
    describe_gauge!(DB_POOL_IDLE, "Idle database connections in the pool.");
    describe_gauge!(DB_POOL_MAX, "The pool's connection limit.");
}

/// The text of `GET /metrics`: samples the hub's own state into gauges, then renders everything.
pub fn render(hub: &Hub) -> String {
    let handle = install();
    use std::sync::atomic::Ordering::Relaxed;
    gauge!(NODE_INFO, "node" => hub.cluster.node_id.to_string()).set(1.0);
    gauge!(CONNECTIONS, "transport" => Transport::Mqtt.label()).set(hub.stats.mqtt_connections.load(Relaxed) as f64);
    gauge!(SUBSCRIPTIONS).set(hub.bus.subscription_count() as f64);
    gauge!(WRITER_QUEUE_DEPTH).set(hub.writer.queue_depth() as f64);
    let pool = hub.pool_stats();
    gauge!(DB_POOL_CONNECTIONS).set(pool.size as f64);
    gauge!(DB_POOL_IDLE).set(pool.idle as f64);
    gauge!(DB_POOL_MAX).set(pool.max as f64);
    handle.render()
}

/// A message was accepted and stored. (Before [`install`] there is no recorder to count into.)
pub fn received(kind: EventKind, transport: Transport) {
    if let Some(counters) = MESSAGE_COUNTERS.get() {
        counters.received[MessageCounters::index(kind, transport)].increment(1);
    }
}

/// `count` messages of `kind` were sent to a subscriber.
pub fn delivered(kind: EventKind, transport: Transport, count: usize) {
    if let Some(counters) = MESSAGE_COUNTERS.get().filter(|_| count > 0) {
        counters.delivered[MessageCounters::index(kind, transport)].increment(count as u64);
    }
}

pub fn dropped(reason: DropReason) {
    counter!(MESSAGES_DROPPED, "reason" => reason.label()).increment(1);
}

pub fn auth_failure(credential: Credential) {
    let label = match credential {
        Credential::Password => "password",
        Credential::Token => "token",
    };
    counter!(AUTH_FAILURES, "credential" => label).increment(1);
}

/// The writer committed a group of `rows` in `took`.
pub fn writer_commit(rows: usize, took: Duration) {
    counter!(WRITER_COMMITS).increment(1);
    histogram!(WRITER_COMMIT_ROWS).record(rows as f64);
    histogram!(WRITER_COMMIT_SECONDS).record(took.as_secs_f64());
}

/// Counts an open connection of `transport` while alive.
#[must_use = "the connection counts as open while the guard lives"]
pub struct OpenConnection(Transport);

pub fn connection_opened(transport: Transport) -> OpenConnection {
    gauge!(CONNECTIONS, "transport" => transport.label()).increment(1.0);
    OpenConnection(transport)
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        gauge!(CONNECTIONS, "transport" => self.0.label()).decrement(1.0);
    }
}
