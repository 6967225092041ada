//! A WebSocket client speaking the DeviceHive JSON protocol, and waits on the hub's live subscription
//! count (so tests wait for a condition, never for a fixed time).

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{assert_error, assert_success, numbered_request, Backend, TestHubOn};

pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn ws_url<B: Backend>(hub: &TestHubOn<B>) -> String {
    format!("{}/api/websocket", hub.root.replace("http://", "ws://"))
}

/// A WebSocket client speaking the DeviceHive JSON protocol. Pushes that arrive while `call` waits for
/// its response are kept, in order, for `recv` / `push`.
pub struct Ws {
    pub stream: Stream,
    pub next_id: u64,
    buffered: VecDeque<Value>,
}

impl Ws {
    pub async fn connect<B: Backend>(hub: &TestHubOn<B>) -> Ws {
        Ws::connect_url(&ws_url(hub)).await
    }

    pub async fn connect_url(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Ws { stream, next_id: 1, buffered: VecDeque::new() }
    }

    /// Connects and authenticates with `token`.
    pub async fn authenticated<B: Backend>(hub: &TestHubOn<B>, token: &str) -> Ws {
        let mut ws = Ws::connect(hub).await;
        ws.authenticate(token).await;
        ws
    }

    pub async fn authenticate(&mut self, token: &str) {
        let r = self.call("authenticate", json!({"token": token})).await;
        assert_eq!(r["status"], "success", "{r}");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::Text(text.into())).await.expect("send");
    }

    /// The next JSON text message read from the socket (`None` on timeout, close or error).
    pub async fn read_within(&mut self, d: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()??.ok()?;
            if let Message::Text(t) = msg {
                return Some(serde_json::from_str(&t).expect("server sends JSON"));
            }
        }
    }

    /// Next message (buffered pushes first), failing after 10 s.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(Duration::from_secs(10)).await.expect("a message within 10 s")
    }

    pub async fn recv_within(&mut self, d: Duration) -> Option<Value> {
        match self.buffered.pop_front() {
            Some(v) => Some(v),
            None => self.read_within(d).await,
        }
    }

    /// The next message, which must be a push (no `status`, no `requestId`).
    pub async fn push(&mut self) -> Value {
        let m = self.recv().await;
        assert!(m.get("status").is_none() && m.get("requestId").is_none(), "expected a push, got {m}");
        m
    }

    pub async fn pushes(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.push().await);
        }
        out
    }

    /// Asserts nothing arrives for `d`.
    pub async fn quiet(&mut self, d: Duration) {
        if let Some(m) = self.recv_within(d).await {
            panic!("unexpected message: {m}");
        }
    }

    /// Sends a raw request object and returns the response carrying its `requestId` (any JSON);
    /// pushes received meanwhile are buffered.
    pub async fn request(&mut self, req: Value) -> Value {
        let rid = req.get("requestId").cloned().unwrap_or(Value::Null);
        self.send_text(&req.to_string()).await;
        loop {
            let m = self.read_within(Duration::from_secs(10)).await.unwrap_or_else(|| panic!("no response to {req}"));
            if m.get("status").is_some() && m.get("requestId").cloned().unwrap_or(Value::Null) == rid {
                return m;
            }
            self.buffered.push_back(m);
        }
    }

    /// Sends an action with a fresh numeric requestId and returns its response.
    pub async fn call(&mut self, action: &str, fields: Value) -> Value {
        let (_, req) = numbered_request(&mut self.next_id, action, fields);
        self.request(req).await
    }

    /// Calls and asserts a success envelope whose keys are exactly the envelope plus `payload`.
    pub async fn ok(&mut self, action: &str, fields: Value, payload: &[&str]) -> Value {
        let id = self.next_id;
        let r = self.call(action, fields).await;
        assert_success(&r, action, payload);
        assert_eq!(r["requestId"], id, "{r}");
        r
    }

    /// Calls and asserts the exact error envelope.
    pub async fn err(&mut self, action: &str, fields: Value, code: u16, message: &str) {
        let id = self.next_id;
        let r = self.call(action, fields.clone()).await;
        assert_error(&r, action, id, &fields, code, message);
    }

    /// Subscribes and returns the subscription id.
    pub async fn subscribe(&mut self, action: &str, fields: Value) -> u64 {
        let r = self.ok(action, fields, &["subscriptionId"]).await;
        r["subscriptionId"].as_u64().expect("numeric subscriptionId")
    }

    /// Waits for the server to close the socket; returns the close frame's (code, reason), `None` if
    /// the socket ended without one or nothing happened within `d`. Other messages are skipped.
    pub async fn closed_within(&mut self, d: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await.ok()?? {
                Ok(Message::Close(Some(frame))) => return Some((frame.code.into(), frame.reason.to_string())),
                Ok(Message::Close(None)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// Live subscriptions of the whole hub, as `GET /info/cache` reports them.
pub async fn live_subscriptions<B: Backend>(hub: &TestHubOn<B>) -> usize {
    let body = hub.request(Method::GET, None, "/info/cache", None).await.expect(200);
    let stats = body["cacheStats"].as_str().expect("cacheStats string");
    let count = stats.split("; ").find_map(|part| part.strip_suffix(" live subscriptions"));
    count.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no count in {stats}"))
}

/// Waits (up to `secs`) until the live subscription count equals `n`.
pub async fn wait_live_subscriptions<B: Backend>(hub: &TestHubOn<B>, n: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let now = live_subscriptions(hub).await;
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "live subscriptions stayed {now}, expected {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 10 s) until `n` subscriptions beyond `base` are live: long polls or subscriptions made
/// concurrently have been registered, so what is inserted next reaches them.
pub async fn wait_new_subscriptions<B: Backend>(hub: &TestHubOn<B>, base: usize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_subscriptions(hub).await < base + n {
        assert!(Instant::now() < deadline, "fewer than {n} new subscriptions within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
