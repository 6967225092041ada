//! The network edge under abuse: idle and slow HTTP clients are cut off by the read timeouts, the HTTP
//! connection cap refuses extra connections without touching MQTT and recovers, and the MQTT cap
//! answers over TLS and WebSocket like over TCP. Every wait is bounded; deadlines are generous.

use std::time::Duration;

use bytes::BytesMut;
use hivehub::mqtt::codec::{self, connack, Connect, Packet};
use rumqttc::{AsyncClient, ConnectReturnCode};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TestHub;
use crate::common::mqtt::tls_connector;
use crate::common::mqtt::{connack as rumqttc_connack, options};

/// Far longer than any timeout configured here: reaching it means the hub never closed the socket.
const GENEROUS: Duration = Duration::from_secs(10);

fn http_addr(hub: &TestHub) -> String {
    hub.root.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes the connection (EOF or reset); returns what it sent, or `None` when the
/// connection is still open after `within`.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(got)
}

/// Sends an MQTT CONNECT and returns the hub's first answer (`None` when it closes without one).
async fn mqtt_connect(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), client_id: &str) -> Option<Packet> {
    let mut out = BytesMut::new();
    let connect = Connect {
        protocol_level: 4,
        client_id: client_id.into(),
        clean_session: true,
        keep_alive: 30,
        username: None,
        password: None,
        will: None,
    };
    codec::encode(&Packet::Connect(Box::new(connect)), &mut out);
    stream.write_all(&out).await.ok()?;
    let mut inbox = BytesMut::new();
    tokio::time::timeout(GENEROUS, async {
        loop {
            if let Some(p) = codec::decode(&mut inbox, 1 << 16).ok()? {
                return Some(p);
            }
            if stream.read_buf(&mut inbox).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    })
    .await
    .expect("the hub answers CONNECT or closes in time")
}

#[tokio::test]
async fn a_half_sent_request_line_is_closed_after_the_header_timeout() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.http.header_read_timeout_secs = 1).await;
    let mut silent = TcpStream::connect(http_addr(&hub)).await.unwrap();
    let mut half = TcpStream::connect(http_addr(&hub)).await.unwrap();
    half.write_all(b"GET /api/rest/inf").await.unwrap();
    let answer = read_until_closed(&mut half, GENEROUS).await.expect("a half request line is cut off");
    assert!(!String::from_utf8_lossy(&answer).contains(" 200 "), "{}", String::from_utf8_lossy(&answer));
    read_until_closed(&mut silent, GENEROUS).await.expect("a connection that sends nothing is cut off");
    // Whole requests are still served.
    let info: Value = reqwest::get(format!("{}/info", hub.base)).await.unwrap().json().await.unwrap();
    assert!(info["apiVersion"].is_string(), "{info}");
}

#[tokio::test]
async fn a_body_slower_than_the_body_timeout_is_ended() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.http.body_read_timeout_secs = 1).await;
    let mut slow = TcpStream::connect(http_addr(&hub)).await.unwrap();
    slow.write_all(
        b"POST /api/rest/token HTTP/1.1\r\nhost: hub\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n\
          {\"login\":",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut slow, GENEROUS).await.expect("a stalled body is ended");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("Request body was not received in time"), "{text}");
}

#[tokio::test]
async fn the_http_cap_refuses_extra_connections_spares_mqtt_and_recovers() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| {
        s.http.max_connections = 20;
        s.http.header_read_timeout_secs = 3;
        s.mqtt.max_connections = 100;
    })
    .await;
    // Twenty clients that never finish a request fill the cap (with the harness's pooled connection,
    // one of them may already be refused).
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(http_addr(&hub)).await.unwrap();
        let _ = s.write_all(b"GET /api/rest/info HT").await;
        idle.push(s);
    }
    for _ in 0..3 {
        let mut extra = TcpStream::connect(http_addr(&hub)).await.unwrap();
        let _ = extra.write_all(b"GET /api/rest/info HTTP/1.1\r\nhost: hub\r\n\r\n").await;
        let answer = read_until_closed(&mut extra, GENEROUS).await.expect("an over-cap connection is closed");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 503"), "over the cap: {text}");
    }
    // The HTTP cap leaves MQTT its own descriptors.
    let (_client, mut eventloop) = AsyncClient::new(options(&hub, "while-http-is-full"), 10);
    assert_eq!(rumqttc_connack(&mut eventloop).await, Ok(ConnectReturnCode::Success));
    // The header timeout frees the slots, and the API answers again.
    for s in &mut idle {
        read_until_closed(s, GENEROUS).await.expect("idle connections are closed by the header timeout");
    }
    let fresh = reqwest::Client::new();
    let reply = tokio::time::timeout(GENEROUS, fresh.get(format!("{}/info", hub.base)).send())
        .await
        .expect("answered in time")
        .expect("answered");
    assert_eq!(reply.status().as_u16(), 200);
}

async fn mqtt_connections(hub: &TestHub) -> String {
    let v: Value = reqwest::get(format!("{}/info/cache", hub.base)).await.unwrap().json().await.unwrap();
    v["cacheStats"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_mqtt_cap_is_answered_over_tcp_tls_and_websocket() {
    skip_unless_backend!();
    use rustls_pki_types::ServerName;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let hub = TestHub::start_with(|s| {
        s.mqtt.max_connections = 1;
        s.mqtt.ws_listen = "127.0.0.1:0".into();
        s.mqtt.tls_listen = "127.0.0.1:0".into();
        s.mqtt.tls_cert_file = format!("{fixtures}/mqtt-test-cert.pem");
        s.mqtt.tls_key_file = format!("{fixtures}/mqtt-test-key.pem");
    })
    .await;
    let tls_connect = || async {
        let tcp = TcpStream::connect(hub.mqtt_tls_addr()).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(GENEROUS, tls_connector().connect(name, tcp)).await.unwrap().expect("TLS handshake")
    };
    let busy = Some(Packet::ConnAck { session_present: false, code: connack::SERVER_UNAVAILABLE });
    let accepted = Some(Packet::ConnAck { session_present: false, code: 0 });

    let mut holder = TcpStream::connect(hub.mqtt_addr()).await.unwrap();
    assert_eq!(mqtt_connect(&mut holder, "holder").await, accepted);
    assert!(mqtt_connections(&hub).await.contains("; 1 MQTT connections;"), "{}", mqtt_connections(&hub).await);

    let mut tcp = TcpStream::connect(hub.mqtt_addr()).await.unwrap();
    assert_eq!(mqtt_connect(&mut tcp, "over-tcp").await, busy, "TCP over the cap");
    let mut tls = tls_connect().await;
    assert_eq!(mqtt_connect(&mut tls, "over-tls").await, busy, "TLS over the cap");
    let mut request = format!("ws://{}/mqtt", hub.mqtt_ws_addr()).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    match tokio::time::timeout(GENEROUS, tokio_tungstenite::connect_async(request)).await.unwrap() {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 503),
        Err(e) => panic!("WebSocket over the cap: expected 503, got {e}"),
        Ok(_) => panic!("WebSocket over the cap: upgraded"),
    }

    // Closing the holder frees its slot (and the count) for the next client.
    drop(holder);
    let mut released = false;
    for _ in 0..100 {
        if mqtt_connections(&hub).await.contains("; 0 MQTT connections;") {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(released, "{}", mqtt_connections(&hub).await);
    let mut tls = tls_connect().await;
    assert_eq!(mqtt_connect(&mut tls, "after-release").await, accepted);
}

/// Sends `request` on a fresh connection and reads the whole answer (the hub closes after it).
async fn raw_exchange(hub: &TestHub, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(http_addr(hub)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // One response is enough; do not wait for a keep-alive connection to close.
                    let text = String::from_utf8_lossy(&out).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        if len.is_some_and(|l| body.len() >= l) {
                            break;
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("an answer within 10 s");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Every client error has the JSON error body, also those the HTTP layer produces before the hub's
/// router sees the request.
#[tokio::test]
async fn http_layer_errors_have_the_json_error_body() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let json_error = |status: u16, head: &str, body: &str| {
        assert!(head.contains("content-type: application/json"), "{status}: {head}");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{status}: JSON body expected: {body:?}"));
        assert_eq!(v["error"], status, "{body}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    };
    // A path segment that is not valid UTF-8 (axum's own rejection).
    let token = hub.admin.clone();
    let req = format!("GET /api/rest/device/%FF%FE HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n");
    let (status, head, body) = raw_exchange(&hub, req.as_bytes()).await;
    assert_eq!(status, 400, "{head}");
    json_error(status, &head, &body);
    // A request hyper cannot parse.
    let (status, head, body) = raw_exchange(&hub, b"GET /api/rest/info HTTP/1.1\r\nbad header line\r\n\r\n").await;
    assert_eq!(status, 400, "{head}");
    json_error(status, &head, &body);
    // A head larger than hyper accepts.
    let req = format!("GET /api/rest/info HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(1 << 20));
    let (status, head, body) = raw_exchange(&hub, req.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    json_error(status, &head, &body);
    // The hub's own errors are unchanged.
    let (status, head, body) = raw_exchange(&hub, b"GET /api/rest/nothing-here HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(status, 404, "{head}");
    json_error(status, &head, &body);
    hub.stop().await;
}
