//! MQTT helpers shared by the MQTT, network and session tests: a rumqttc client speaking the
//! DeviceHive MQTT API (requests on `dh/request`, answers and pushes collected in order), CONNECT
//! helpers, and a TLS client for the TLS listener.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::{assert_error, assert_success, numbered_request, Backend, TestHubOn};

/// SUBACK codes of a granted (QoS 1) and a refused filter.
pub const GRANTED: SubscribeReasonCode = SubscribeReasonCode::Success(QoS::AtLeastOnce);
pub const REFUSED: SubscribeReasonCode = SubscribeReasonCode::Failure;

/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(400);

/// A TLS client trusting the fixture CA.
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mqtt-test-ca.pem")).unwrap();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One publish received by a client.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub qos: QoS,
    /// The payload as JSON (`Value::Null` when it is not JSON).
    pub payload: Value,
    pub raw: Bytes,
}

/// A connected MQTT client whose incoming publishes and acknowledgements arrive on channels.
pub struct Mqtt {
    pub client: AsyncClient,
    pub id: String,
    rx: mpsc::UnboundedReceiver<Msg>,
    suback: mpsc::UnboundedReceiver<Vec<SubscribeReasonCode>>,
    pub puback: mpsc::UnboundedReceiver<u16>,
    unsuback: mpsc::UnboundedReceiver<()>,
    closed: oneshot::Receiver<String>,
    /// Publishes that arrived while a request waited for its response.
    buffered: VecDeque<Msg>,
    /// Response topics already subscribed.
    pub responses: HashSet<String>,
    next_id: u64,
}

pub fn options<B: Backend>(hub: &TestHubOn<B>, id: &str) -> MqttOptions {
    let addr = hub.mqtt_addr();
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Polls the event loop until CONNACK; returns its code.
pub async fn connack(eventloop: &mut EventLoop) -> Result<ConnectReturnCode, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Err(_) => return Err("no CONNACK within 10 s".into()),
            Ok(Ok(Event::Incoming(Packet::ConnAck(a)))) => return Ok(a.code),
            Ok(Ok(_)) => {}
            Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => return Ok(code),
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// The CONNACK code a CONNECT with these options gets.
pub async fn connect_code(options: MqttOptions) -> Result<ConnectReturnCode, String> {
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    connack(&mut eventloop).await
}

pub fn with_credentials<B: Backend>(hub: &TestHubOn<B>, id: &str, user: &str, password: &str) -> MqttOptions {
    let mut o = options(hub, id);
    o.set_credentials(user, password);
    o
}

impl Mqtt {
    pub async fn connect(options: MqttOptions) -> Mqtt {
        let id = options.client_id();
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        assert_eq!(connack(&mut eventloop).await, Ok(ConnectReturnCode::Success), "CONNECT of {id}");
        let (tx, rx) = mpsc::unbounded_channel();
        let (stx, suback) = mpsc::unbounded_channel();
        let (ptx, puback) = mpsc::unbounded_channel();
        let (utx, unsuback) = mpsc::unbounded_channel();
        let (ctx, closed) = oneshot::channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let payload = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let _ = tx.send(Msg { topic: p.topic.clone(), qos: p.qos, payload, raw: p.payload.clone() });
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let _ = stx.send(s.return_codes);
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) => {
                        let _ = ptx.send(a.pkid);
                    }
                    Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                        let _ = utx.send(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Polling again would reconnect; a closed session stays closed.
                        let _ = ctx.send(e.to_string());
                        break;
                    }
                }
            }
        });
        Mqtt {
            client,
            id,
            rx,
            suback,
            puback,
            unsuback,
            closed,
            buffered: VecDeque::new(),
            responses: HashSet::new(),
            next_id: 1,
        }
    }

    pub async fn login<B: Backend>(hub: &TestHubOn<B>, id: &str, login: &str, password: &str) -> Mqtt {
        Mqtt::connect(with_credentials(hub, id, login, password)).await
    }

    /// Connects with an access token as the password.
    pub async fn token<B: Backend>(hub: &TestHubOn<B>, id: &str, token: &str) -> Mqtt {
        Mqtt::connect(with_credentials(hub, id, "device", token)).await
    }

    pub async fn anonymous<B: Backend>(hub: &TestHubOn<B>, id: &str) -> Mqtt {
        Mqtt::connect(options(hub, id)).await
    }

    pub async fn subscribe_qos(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
        self.client.subscribe(filter, qos).await.unwrap();
        let codes = tokio::time::timeout(Duration::from_secs(10), self.suback.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no SUBACK for {filter}", self.id))
            .unwrap();
        assert_eq!(codes.len(), 1);
        codes[0]
    }

    pub async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.subscribe_qos(filter, QoS::AtLeastOnce).await
    }

    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.unsuback.recv())
            .await
            .expect("UNSUBACK within 10 s")
            .unwrap();
    }

    /// Publishes; a QoS1 publish returns once its PUBACK arrived.
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>, qos: QoS) {
        self.client.publish(topic, qos, false, payload.into()).await.unwrap();
        if qos == QoS::AtLeastOnce {
            tokio::time::timeout(Duration::from_secs(10), self.puback.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no PUBACK for a publish to {topic}", self.id))
                .unwrap();
        }
    }

    pub async fn publish_json(&mut self, topic: &str, payload: Value) {
        self.publish(topic, payload.to_string(), QoS::AtLeastOnce).await;
    }

    pub async fn recv_within(&mut self, d: Duration) -> Option<Msg> {
        if let Some(m) = self.buffered.pop_front() {
            return Some(m);
        }
        tokio::time::timeout(d, self.rx.recv()).await.ok().flatten()
    }

    pub async fn msg(&mut self) -> Msg {
        let id = self.id.clone();
        self.recv_within(Duration::from_secs(10)).await.unwrap_or_else(|| panic!("{id}: no publish within 10 s"))
    }

    /// The next publish as (topic, payload).
    pub async fn recv(&mut self) -> (String, Value) {
        let m = self.msg().await;
        (m.topic, m.payload)
    }

    /// Asserts nothing arrives for `d`.
    pub async fn quiet(&mut self, d: Duration) {
        if let Some(m) = self.recv_within(d).await {
            panic!("{}: unexpected publish on {}: {}", self.id, m.topic, m.payload);
        }
    }

    /// Everything that arrives until the client has been quiet for `d`.
    pub async fn drain(&mut self, d: Duration) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.recv_within(d).await {
            out.push(m);
        }
        out
    }

    /// Whether the hub closed this connection within `d`.
    pub async fn closed_within(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, &mut self.closed).await.is_ok()
    }

    fn response_topic(&self, request: &Value) -> String {
        let action = request.get("action").and_then(Value::as_str).unwrap_or("error");
        format!("dh/response/{action}@{}", self.id)
    }

    /// Subscribes to the response topic of `request` (once) and publishes it to `dh/request`.
    pub async fn send_request(&mut self, request: &Value, qos: QoS) -> String {
        let topic = self.response_topic(request);
        if !self.responses.contains(&topic) {
            assert_eq!(self.subscribe(&topic).await, GRANTED, "{topic}");
            self.responses.insert(topic.clone());
        }
        self.publish("dh/request", request.to_string(), qos).await;
        topic
    }

    /// Waits for the next publish on `topic`, buffering others.
    pub async fn response_on(&mut self, topic: &str) -> Msg {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no response on {topic} within 10 s", self.id))
                .expect("event loop alive");
            if m.topic == topic {
                return m;
            }
            self.buffered.push_back(m);
        }
    }

    /// Publishes a raw request object and returns its response.
    pub async fn request_raw(&mut self, request: Value) -> Value {
        let topic = self.send_request(&request, QoS::AtLeastOnce).await;
        self.response_on(&topic).await.payload
    }

    /// Publishes `action` with a string requestId `r1` (the smoke test's shape).
    pub async fn request(&mut self, action: &str, mut fields: Value) -> Value {
        fields["action"] = json!(action);
        fields["requestId"] = json!("r1");
        self.request_raw(fields).await
    }

    /// Publishes `action` with a fresh numeric requestId and returns its response.
    pub async fn call(&mut self, action: &str, fields: Value) -> Value {
        let (id, req) = numbered_request(&mut self.next_id, action, fields);
        let r = self.request_raw(req).await;
        assert_eq!(r["requestId"], id, "{r}");
        r
    }

    /// Calls and asserts a success envelope whose keys are exactly the envelope plus `payload`.
    pub async fn ok(&mut self, action: &str, fields: Value, payload: &[&str]) -> Value {
        let r = self.call(action, fields).await;
        assert_success(&r, action, payload);
        r
    }

    /// Calls and asserts the exact error envelope.
    pub async fn err(&mut self, action: &str, fields: Value, code: u16, message: &str) {
        let id = self.next_id;
        let r = self.call(action, fields.clone()).await;
        assert_error(&r, action, id, &fields, code, message);
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
    }
}
