//! MQTT: the embedded broker with real rumqttc clients.

use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::common::{TestHub, ADMIN_LOGIN, ADMIN_PASSWORD};

/// A connected MQTT client whose incoming publishes arrive on a channel.
pub struct Mqtt {
    pub client: AsyncClient,
    pub id: String,
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    suback: mpsc::UnboundedReceiver<Vec<rumqttc::SubscribeReasonCode>>,
}

pub fn options(hub: &TestHub, id: &str) -> MqttOptions {
    let addr = hub.mqtt_addr();
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
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

impl Mqtt {
    pub async fn connect(options: MqttOptions) -> Mqtt {
        let id = options.client_id();
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        assert_eq!(connack(&mut eventloop).await, Ok(ConnectReturnCode::Success));
        let (tx, rx) = mpsc::unbounded_channel();
        let (stx, suback) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let _ = tx.send((p.topic.clone(), v));
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let _ = stx.send(s.return_codes);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        Mqtt { client, id, rx, suback }
    }

    pub async fn login(hub: &TestHub, id: &str, login: &str, password: &str) -> Mqtt {
        let mut o = options(hub, id);
        o.set_credentials(login, password);
        Mqtt::connect(o).await
    }

    pub async fn subscribe(&mut self, filter: &str) -> rumqttc::SubscribeReasonCode {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let codes = tokio::time::timeout(Duration::from_secs(10), self.suback.recv()).await.unwrap().unwrap();
        codes[0]
    }

    pub async fn recv(&mut self) -> (String, Value) {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv()).await.expect("a publish within 10 s").unwrap()
    }

    #[allow(dead_code)]
    pub async fn recv_within(&mut self, d: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(d, self.rx.recv()).await.ok().flatten()
    }

    /// Publishes a `dh/request` and returns the response from `dh/response/<action>@<id>`.
    pub async fn request(&mut self, action: &str, mut fields: Value) -> Value {
        let topic = format!("dh/response/{action}@{}", self.id);
        assert_eq!(self.subscribe(&topic).await, rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce));
        fields["action"] = json!(action);
        fields["requestId"] = json!("r1");
        self.client.publish("dh/request", QoS::AtLeastOnce, false, fields.to_string()).await.unwrap();
        loop {
            let (t, v) = self.recv().await;
            if t == topic {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn mqtt_smoke() {
    let hub = TestHub::start().await;
    let mut m = Mqtt::login(&hub, "smoke-1", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    let r = m.request("device/list", json!({})).await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["requestId"], "r1");
    assert_eq!(r["devices"][0]["id"], "e50d6085-2aba-48e9-b1c3-73c673e414be");

    assert_eq!(m.subscribe("dh/notification/#").await, rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce));
    hub.post(&hub.admin, "/device/e50d6085-2aba-48e9-b1c3-73c673e414be/notification", json!({"notification": "hi"}))
        .await
        .expect(201);
    let (topic, push) = m.recv().await;
    assert_eq!(topic, "dh/notification/1/1/e50d6085-2aba-48e9-b1c3-73c673e414be/hi");
    assert_eq!(push["action"], "notification/insert");
    assert_eq!(push["notification"]["notification"], "hi");

    // Plain topics are ordinary MQTT.
    assert_eq!(m.subscribe("plain/+").await, rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce));
    m.client.publish("plain/x", QoS::AtLeastOnce, false, "{\"v\":1}").await.unwrap();
    let (topic, v) = m.recv().await;
    assert_eq!((topic.as_str(), v), ("plain/x", json!({"v": 1})));

    // Bad password: refused with a proper CONNACK code.
    let mut o = options(&hub, "bad");
    o.set_credentials(ADMIN_LOGIN, "wrong-password");
    let (_c, mut ev) = AsyncClient::new(o, 10);
    assert_eq!(connack(&mut ev).await, Ok(ConnectReturnCode::BadUserNamePassword));
}
