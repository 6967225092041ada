//! WebSocket API: the shared action table over a real WebSocket client, subscriptions and pushes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::TestHub;

/// A WebSocket client speaking the DeviceHive JSON protocol.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Ws {
    pub async fn connect(hub: &TestHub) -> Ws {
        let url = format!("{}/api/websocket", hub.root.replace("http://", "ws://"));
        let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Ws { stream, next_id: 1 }
    }

    /// Connects and authenticates with `token`.
    pub async fn authenticated(hub: &TestHub, token: &str) -> Ws {
        let mut ws = Ws::connect(hub).await;
        let r = ws.call("authenticate", json!({"token": token})).await;
        assert_eq!(r["status"], "success", "{r}");
        ws
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::Text(text.into())).await.expect("send");
    }

    /// Next JSON text message (pushes included), failing after 10 s.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(Duration::from_secs(10)).await.expect("a message within 10 s")
    }

    pub async fn recv_within(&mut self, d: Duration) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(d, self.stream.next()).await.ok()??.ok()?;
            if let Message::Text(t) = msg {
                return Some(serde_json::from_str(&t).expect("server sends JSON"));
            }
        }
    }

    /// Sends an action with a fresh requestId and returns its response (pushes before it are skipped).
    pub async fn call(&mut self, action: &str, fields: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = fields;
        req["action"] = json!(action);
        req["requestId"] = json!(id);
        self.send_text(&req.to_string()).await;
        loop {
            let m = self.recv().await;
            if m["requestId"] == json!(id) {
                return m;
            }
        }
    }
}

#[tokio::test]
async fn websocket_smoke() {
    let hub = TestHub::start().await;
    let mut ws = Ws::connect(&hub).await;
    let r = ws.call("server/info", json!({})).await;
    assert_eq!(r["status"], "success");
    assert_eq!(r["info"]["apiVersion"], "3.5.0");
    let r = ws.call("device/list", json!({})).await;
    assert_eq!(
        r,
        json!({"action": "device/list", "requestId": 2, "status": "error", "code": 401, "error": "Unauthorized"})
    );
    ws.send_text("{nope").await;
    assert_eq!(ws.recv().await, json!({"status": "error", "code": 400, "error": "Malformed Json received."}));

    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    let r = ws.call("notification/subscribe", json!({"deviceId": "e50d6085-2aba-48e9-b1c3-73c673e414be"})).await;
    let sub = r["subscriptionId"].as_u64().expect("subscriptionId");
    hub.post(&hub.admin, "/device/e50d6085-2aba-48e9-b1c3-73c673e414be/notification", json!({"notification": "hello"}))
        .await
        .expect(201);
    let push = ws.recv().await;
    assert_eq!(push["action"], "notification/insert");
    assert_eq!(push["subscriptionId"], sub);
    assert_eq!(push["notification"]["notification"], "hello");
}
