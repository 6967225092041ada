//! An example hivehub device in Rust, speaking the DeviceHive MQTT API of the hub (CONTRACT §12, §13).
//!
//! [`run`] connects to the hub's MQTT broker with a user login and password (or an access JWT as the
//! password), registers the device with `device/save` and waits for the answer, subscribes to the
//! device's command topic, then until `shutdown` completes:
//!
//! * publishes a telemetry notification (`notification/insert` on `dh/request`) every
//!   [`DeviceConfig::telemetry_interval`];
//! * executes every command pushed on `dh/command/+/+/<deviceId>/#` and answers it with
//!   `command/update` (status `"done"` and a result, or `"failed"` when the parameters are unusable).
//!
//! Commands understood (the same set as the Arduino and MicroPython examples):
//!
//! | command        | parameters              | result                                        |
//! |----------------|-------------------------|-----------------------------------------------|
//! | `ping`         | –                       | `{"pong": true, "uptimeSecs": n}`             |
//! | `led`          | `{"on": bool}`          | `{"led": bool}`                               |
//! | `set-interval` | `{"seconds": 1..=3600}` | `{"intervalSeconds": n}` (telemetry period)   |
//! | `read`         | –                       | the current telemetry reading                 |
//! | anything else  | any                     | `{"echo": parameters, "handled": false}`      |
//!
//! Responses of the hub arrive on `dh/response/<action>@<clientId>` only when that exact topic was
//! subscribed before the request is published, so the device subscribes to all its response topics
//! (and waits for the SUBACK) before its first request. The command topic is subscribed only after
//! `device/save` succeeded, because the hub refuses a subscription for a device that does not exist.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Largest MQTT packet the device sends or accepts (commands may carry sizeable parameters).
const MAX_PACKET_BYTES: usize = 64 * 1024;
/// Command ids remembered to ignore a QoS 1 redelivery of a command already executed.
const REMEMBERED_COMMANDS: usize = 256;

/// Everything the device needs to know. Build it with [`DeviceConfig::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Host name or IP address of the hub's MQTT listener.
    pub host: String,
    /// MQTT port of the hub (1883 by default).
    pub port: u16,
    /// Hub user login (MQTT username).
    pub login: String,
    /// The user's password, or an access JWT (MQTT password).
    pub password: String,
    /// Device id: letters, digits and dashes.
    pub device_id: String,
    /// Device name sent with `device/save`.
    pub device_name: String,
    /// Network to register in; `None` lets the hub pick the user's first network.
    pub network_id: Option<i64>,
    /// Device type to register with; `None` lets the hub pick the default.
    pub device_type_id: Option<i64>,
    /// MQTT client id; also the suffix of the response topics. Defaults to the device id.
    pub client_id: String,
    /// Period between telemetry notifications.
    pub telemetry_interval: Duration,
    /// Name of the telemetry notifications.
    pub telemetry_name: String,
    /// How long to wait for CONNACK, SUBACK and the `device/save` response.
    pub request_timeout: Duration,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// Print what the device does to stderr.
    pub verbose: bool,
}

impl DeviceConfig {
    /// A configuration with defaults: client id = device id, name = device id, telemetry every 10 s
    /// named `telemetry`, 10 s request timeout, 30 s keep-alive, quiet.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        login: impl Into<String>,
        password: impl Into<String>,
        device_id: impl Into<String>,
    ) -> DeviceConfig {
        let device_id = device_id.into();
        DeviceConfig {
            host: host.into(),
            port,
            login: login.into(),
            password: password.into(),
            device_name: device_id.clone(),
            client_id: device_id.clone(),
            device_id,
            network_id: None,
            device_type_id: None,
            telemetry_interval: Duration::from_secs(10),
            telemetry_name: "telemetry".into(),
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            verbose: false,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let id_ok = !self.device_id.is_empty() && self.device_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !id_ok {
            return Err(Error::Config(format!(
                "device id {:?} must be non-empty letters, digits and dashes",
                self.device_id
            )));
        }
        if self.client_id.is_empty() || self.client_id.contains(['/', '+', '#', '@']) {
            return Err(Error::Config(format!(
                "client id {:?} must be non-empty without '/', '+', '#', '@'",
                self.client_id
            )));
        }
        if self.device_name.is_empty() || self.device_name.chars().count() > 128 {
            return Err(Error::Config("device name must be 1..128 characters".into()));
        }
        if self.telemetry_interval.is_zero() {
            return Err(Error::Config("telemetry interval must be positive".into()));
        }
        if self.telemetry_name.is_empty() || self.telemetry_name.starts_with('$') {
            return Err(Error::Config("telemetry name must be non-empty and not start with '$'".into()));
        }
        Ok(())
    }
}

/// What the device did during one [`run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Telemetry notifications published.
    pub notifications_sent: u64,
    /// Telemetry notifications the hub confirmed as stored.
    pub notifications_acked: u64,
    /// Distinct commands received.
    pub commands_received: u64,
    /// `command/update` answers published.
    pub commands_answered: u64,
    /// `command/update` answers the hub confirmed.
    pub commands_acked: u64,
    /// Error responses from the hub to the device's requests.
    pub errors: u64,
}

/// Why [`run`] stopped without a clean shutdown.
#[derive(Debug)]
pub enum Error {
    /// The configuration is unusable.
    Config(String),
    /// The MQTT connection could not be opened, or was lost.
    Connection(String),
    /// The hub refused the MQTT connection (bad credentials, ...).
    Refused(ConnectReturnCode),
    /// The hub refused a subscription (SUBACK failure).
    Subscribe(String),
    /// The hub answered a request with an error.
    Rejected { action: String, code: i64, message: String },
    /// No answer in time.
    Timeout(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) => write!(f, "configuration: {m}"),
            Error::Connection(m) => write!(f, "MQTT connection: {m}"),
            Error::Refused(code) => write!(f, "the hub refused the connection: {code:?}"),
            Error::Subscribe(topic) => write!(f, "the hub refused the subscription to {topic}"),
            Error::Rejected { action, code, message } => write!(f, "{action} failed: {code} {message}"),
            Error::Timeout(what) => write!(f, "timed out waiting for {what}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Whether retrying later can help (the binary reconnects on these).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Connection(_) | Error::Timeout(_))
    }
}

/// Runs the device until `shutdown` completes (then disconnects cleanly and returns the statistics) or
/// until an error stops it. A connection loss is returned as [`Error::Connection`]; the caller decides
/// whether to reconnect (the binary does, with a backoff).
pub async fn run<F>(config: DeviceConfig, shutdown: F) -> Result<Stats, Error>
where
    F: Future<Output = ()>,
{
    config.validate()?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut session = tokio::select! {
        s = Session::connect(config) => s?,
        _ = shutdown.as_mut() => return Ok(Stats::default()),
    };
    let started = tokio::select! {
        r = session.start() => Some(r),
        _ = shutdown.as_mut() => None,
    };
    let result = match started {
        None => Ok(()),
        Some(Err(e)) => Err(e),
        Some(Ok(())) => session.serve(shutdown.as_mut()).await,
    };
    let stats = session.close().await;
    result.map(|()| stats)
}

/// What the MQTT pump task forwards.
enum Inbound {
    Publish(String, Vec<u8>),
    SubAck(Vec<SubscribeReasonCode>),
    Closed(String),
}

/// The simulated hardware.
#[derive(Debug)]
pub struct DeviceState {
    started: Instant,
    led: bool,
    interval: Duration,
    seq: u64,
}

impl DeviceState {
    pub fn new(interval: Duration) -> DeviceState {
        DeviceState { started: Instant::now(), led: false, interval, seq: 0 }
    }

    /// Current telemetry period (changed by `set-interval`).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A simulated sensor reading (a slow sine wave around 21.5 °C).
    pub fn reading(&self) -> Value {
        let t = self.seq as f64 / 10.0;
        let celsius = ((21.5 + 1.5 * t.sin()) * 100.0).round() / 100.0;
        let humidity = ((45.0 + 5.0 * (t / 2.0).cos()) * 10.0).round() / 10.0;
        json!({
            "celsius": celsius,
            "humidity": humidity,
            "led": self.led,
            "uptimeSecs": self.started.elapsed().as_secs(),
            "seq": self.seq,
        })
    }

    /// Advances the sequence number and returns the next telemetry reading.
    pub fn next_reading(&mut self) -> Value {
        self.seq += 1;
        self.reading()
    }

    /// Executes a command; returns the `status` and `result` for `command/update`.
    pub fn execute(&mut self, command: &str, parameters: &Value) -> (&'static str, Value) {
        match command {
            "ping" => ("done", json!({"pong": true, "uptimeSecs": self.started.elapsed().as_secs()})),
            "led" => match parameters.get("on").and_then(Value::as_bool) {
                Some(on) => {
                    self.led = on;
                    ("done", json!({"led": on}))
                }
                None => ("failed", json!({"error": "parameters.on must be true or false"})),
            },
            "set-interval" => match parameters.get("seconds").and_then(Value::as_u64) {
                Some(s @ 1..=3600) => {
                    self.interval = Duration::from_secs(s);
                    ("done", json!({"intervalSeconds": s}))
                }
                _ => ("failed", json!({"error": "parameters.seconds must be an integer in 1..3600"})),
            },
            "read" => ("done", self.reading()),
            _ => ("done", json!({"echo": parameters, "handled": false})),
        }
    }
}

struct Session {
    cfg: DeviceConfig,
    client: AsyncClient,
    inbound: mpsc::UnboundedReceiver<Inbound>,
    pump: JoinHandle<()>,
    device: DeviceState,
    stats: Stats,
    seen: (HashSet<i64>, VecDeque<i64>),
    next_request: u64,
}

impl Session {
    /// Opens the MQTT connection and waits for CONNACK.
    async fn connect(cfg: DeviceConfig) -> Result<Session, Error> {
        let mut options = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
        options
            .set_credentials(cfg.login.clone(), cfg.password.clone())
            .set_keep_alive(cfg.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let deadline = cfg.request_timeout;
        let connack = tokio::time::timeout(deadline, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        return match ack.code {
                            ConnectReturnCode::Success => Ok(()),
                            code => Err(Error::Refused(code)),
                        }
                    }
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => return Err(Error::Refused(code)),
                    Err(e) => return Err(Error::Connection(e.to_string())),
                }
            }
        })
        .await;
        match connack {
            Err(_) => return Err(Error::Timeout("CONNACK".into())),
            Ok(r) => r?,
        }
        let (tx, inbound) = mpsc::unbounded_channel();
        let pump = tokio::spawn(pump(eventloop, tx));
        let device = DeviceState::new(cfg.telemetry_interval);
        let session = Session {
            cfg,
            client,
            inbound,
            pump,
            device,
            stats: Stats::default(),
            seen: (HashSet::new(), VecDeque::new()),
            next_request: 0,
        };
        session.log(format_args!("connected to {}:{}", session.cfg.host, session.cfg.port));
        Ok(session)
    }

    fn log(&self, message: fmt::Arguments<'_>) {
        if self.cfg.verbose {
            eprintln!("[{}] {message}", self.cfg.device_id);
        }
    }

    fn response_topic(&self, action: &str) -> String {
        format!("dh/response/{action}@{}", self.cfg.client_id)
    }

    fn command_topic(&self) -> String {
        format!("dh/command/+/+/{}/#", self.cfg.device_id)
    }

    /// Response topics, registration, command subscription.
    async fn start(&mut self) -> Result<(), Error> {
        let responses: Vec<String> =
            ["device/save", "notification/insert", "command/update"].iter().map(|a| self.response_topic(a)).collect();
        self.subscribe(&responses).await?;

        let mut device = json!({"name": self.cfg.device_name});
        if let Some(n) = self.cfg.network_id {
            device["networkId"] = json!(n);
        }
        if let Some(t) = self.cfg.device_type_id {
            device["deviceTypeId"] = json!(t);
        }
        let request_id = self.request("device/save", json!({"deviceId": self.cfg.device_id, "device": device})).await?;
        let response = self.wait_response("device/save", &request_id).await?;
        check_success("device/save", &response)?;
        self.log(format_args!("registered as {:?}", self.cfg.device_name));

        let commands = self.command_topic();
        self.subscribe(&[commands]).await?;
        self.log(format_args!("listening for commands on {}", self.command_topic()));
        Ok(())
    }

    /// The main loop: telemetry ticks, incoming commands and responses, shutdown.
    async fn serve<F: Future<Output = ()>>(&mut self, mut shutdown: Pin<&mut F>) -> Result<(), Error> {
        let mut period = self.device.interval();
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.as_mut() => return Ok(()),
                _ = ticker.tick() => self.send_telemetry().await?,
                msg = self.inbound.recv() => match msg {
                    Some(Inbound::Publish(topic, payload)) => self.handle_publish(&topic, &payload).await?,
                    Some(Inbound::SubAck(_)) => {}
                    Some(Inbound::Closed(reason)) => return Err(Error::Connection(reason)),
                    None => return Err(Error::Connection("event loop stopped".into())),
                },
            }
            if self.device.interval() != period {
                period = self.device.interval();
                ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
        }
    }

    /// Disconnects and stops the MQTT pump; returns the statistics.
    async fn close(mut self) -> Stats {
        let _ = self.client.disconnect().await;
        if tokio::time::timeout(Duration::from_secs(5), &mut self.pump).await.is_err() {
            self.pump.abort();
        }
        self.stats
    }

    async fn subscribe(&mut self, topics: &[String]) -> Result<(), Error> {
        let filters = topics.iter().map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        self.client.subscribe_many(filters).await.map_err(|e| Error::Connection(e.to_string()))?;
        let what = format!("SUBACK for {}", topics.join(", "));
        let codes = self
            .wait_for(&what, |msg| match msg {
                Inbound::SubAck(codes) => Some(codes.clone()),
                _ => None,
            })
            .await?;
        for (topic, code) in topics.iter().zip(&codes) {
            if matches!(code, SubscribeReasonCode::Failure) {
                return Err(Error::Subscribe(topic.clone()));
            }
        }
        Ok(())
    }

    /// Publishes a request on `dh/request`; returns its request id.
    async fn request(&mut self, action: &str, mut body: Value) -> Result<String, Error> {
        self.next_request += 1;
        let request_id = format!("{}-{}", action.replace('/', "-"), self.next_request);
        body["action"] = json!(action);
        body["requestId"] = json!(request_id);
        self.client
            .publish("dh/request", QoS::AtLeastOnce, false, body.to_string())
            .await
            .map_err(|e| Error::Connection(e.to_string()))?;
        Ok(request_id)
    }

    /// Waits for the response to one request (other messages are handled meanwhile).
    async fn wait_response(&mut self, action: &str, request_id: &str) -> Result<Value, Error> {
        let topic = self.response_topic(action);
        self.wait_for(&format!("the {action} response"), |msg| match msg {
            Inbound::Publish(t, payload) if *t == topic => {
                let v: Value = serde_json::from_slice(payload).ok()?;
                (v["requestId"] == request_id).then_some(v)
            }
            _ => None,
        })
        .await
    }

    /// Receives until `pick` accepts a message or the request timeout elapses. Messages `pick` does
    /// not want are processed as usual.
    async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Inbound) -> Option<T>) -> Result<T, Error> {
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.inbound.recv()).await {
                Err(_) => return Err(Error::Timeout(what.to_string())),
                Ok(None) => return Err(Error::Connection("event loop stopped".into())),
                Ok(Some(msg)) => msg,
            };
            if let Some(found) = pick(&msg) {
                return Ok(found);
            }
            match msg {
                Inbound::Publish(topic, payload) => self.handle_publish(&topic, &payload).await?,
                Inbound::SubAck(_) => {}
                Inbound::Closed(reason) => return Err(Error::Connection(reason)),
            }
        }
    }

    async fn send_telemetry(&mut self) -> Result<(), Error> {
        let reading = self.device.next_reading();
        let notification = json!({"notification": self.cfg.telemetry_name, "parameters": reading});
        self.request("notification/insert", json!({"deviceId": self.cfg.device_id, "notification": notification}))
            .await?;
        self.stats.notifications_sent += 1;
        self.log(format_args!("telemetry {reading}"));
        Ok(())
    }

    async fn handle_publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        let Ok(message) = serde_json::from_slice::<Value>(payload) else {
            self.log(format_args!("ignoring a non-JSON message on {topic}"));
            return Ok(());
        };
        if topic.starts_with("dh/command/") && message["action"] == "command/insert" {
            return self.handle_command(&message["command"]).await;
        }
        if topic.starts_with("dh/response/") {
            let action = message["action"].as_str().unwrap_or_default();
            let ok = message["status"] == "success";
            match (action, ok) {
                ("notification/insert", true) => self.stats.notifications_acked += 1,
                ("command/update", true) => self.stats.commands_acked += 1,
                (_, true) => {}
                (_, false) => {
                    self.stats.errors += 1;
                    self.log(format_args!("error response: {message}"));
                }
            }
        }
        Ok(())
    }

    async fn handle_command(&mut self, command: &Value) -> Result<(), Error> {
        let Some(id) = command["id"].as_i64() else {
            self.log(format_args!("ignoring a command without id: {command}"));
            return Ok(());
        };
        if !self.remember(id) {
            return Ok(());
        }
        self.stats.commands_received += 1;
        let name = command["command"].as_str().unwrap_or_default().to_string();
        let (status, result) = self.device.execute(&name, &command["parameters"]);
        self.log(format_args!("command {id} {name:?} -> {status} {result}"));
        let update = json!({
            "deviceId": self.cfg.device_id,
            "commandId": id,
            "command": {"status": status, "result": result},
        });
        self.request("command/update", update).await?;
        self.stats.commands_answered += 1;
        Ok(())
    }

    /// Records a command id; false when it was already seen (a redelivery).
    fn remember(&mut self, id: i64) -> bool {
        let (set, order) = &mut self.seen;
        if !set.insert(id) {
            return false;
        }
        order.push_back(id);
        if order.len() > REMEMBERED_COMMANDS {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }
}

/// Drives the rumqttc event loop and forwards what the device cares about. Stops on the first error
/// (the caller reconnects with a fresh session) or after the DISCONNECT went out.
async fn pump(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Inbound>) {
    loop {
        let forward = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => Inbound::Publish(p.topic, p.payload.to_vec()),
            Ok(Event::Incoming(Packet::SubAck(ack))) => Inbound::SubAck(ack.return_codes),
            Ok(Event::Incoming(Packet::Disconnect)) => {
                let _ = tx.send(Inbound::Closed("the hub sent DISCONNECT".into()));
                return;
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = tx.send(Inbound::Closed("disconnected".into()));
                return;
            }
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Inbound::Closed(e.to_string()));
                return;
            }
        };
        if tx.send(forward).is_err() {
            return;
        }
    }
}

fn check_success(action: &str, response: &Value) -> Result<(), Error> {
    if response["status"] == "success" {
        return Ok(());
    }
    Err(Error::Rejected {
        action: action.to_string(),
        code: response["code"].as_i64().unwrap_or(0),
        message: response["error"].as_str().unwrap_or("unknown error").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let mut d = DeviceState::new(Duration::from_secs(10));
        assert_eq!(d.execute("ping", &Value::Null).0, "done");
        assert_eq!(d.execute("led", &json!({"on": true})), ("done", json!({"led": true})));
        assert_eq!(d.reading()["led"], true);
        assert_eq!(d.execute("led", &json!({})).0, "failed");
        assert_eq!(d.execute("set-interval", &json!({"seconds": 2})), ("done", json!({"intervalSeconds": 2})));
        assert_eq!(d.interval(), Duration::from_secs(2));
        assert_eq!(d.execute("set-interval", &json!({"seconds": 0})).0, "failed");
        assert_eq!(d.execute("reboot", &json!({"x": 1})), ("done", json!({"echo": {"x": 1}, "handled": false})));
    }

    #[test]
    fn config_validation() {
        let ok = DeviceConfig::new("h", 1883, "u", "p", "dev-1");
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.device_id = "dev/1".into();
        assert!(matches!(bad.validate(), Err(Error::Config(_))));
        let mut bad = ok;
        bad.client_id = "a@b".into();
        assert!(matches!(bad.validate(), Err(Error::Config(_))));
    }
}
