//! MQTT over WebSocket (`ws://host:port/mqtt`, subprotocol `mqtt`) for browser clients such as
//! MQTT.js: binary WebSocket messages carry the MQTT byte stream into the same connection loop as TCP.
//! Each TCP connection takes an MQTT slot when accepted (the slot then travels with the socket into
//! the upgraded session); over the cap, the upgrade is answered 503.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{connection, MqttShared, MqttSlot};
use crate::error::StartupError;
use crate::net;
use crate::net::http::Peer;

pub async fn start(shared: Arc<MqttShared>, listen: &str) -> Result<SocketAddr, StartupError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| StartupError(format!("cannot listen for MQTT/WebSocket on {listen}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| StartupError(e.to_string()))?;
    let hub = shared.hub.clone();
    let timeouts = net::http::Timeouts::from_settings(&hub.settings.http);
    let app = Router::new().route("/mqtt", get(upgrade)).with_state(shared.clone());
    // Answers every request of a connection over the cap, then closes it.
    let busy = Router::new().fallback(|| async {
        (StatusCode::SERVICE_UNAVAILABLE, [(header::CONNECTION, "close")], "MQTT connection limit reached")
            .into_response()
    });
    tokio::spawn(async move {
        net::accept::run(
            "mqtt-ws",
            listener,
            shared.cap.clone(),
            hub.shutting_down(),
            |stream, peer, slot| {
                let slot = MqttSlot::new(slot, &hub);
                tokio::spawn(net::http::serve_connection(
                    stream,
                    peer,
                    slot,
                    app.clone(),
                    timeouts,
                    hub.shutdown.clone(),
                ));
            },
            |stream, peer, refusal| {
                tokio::spawn(net::http::serve_connection(
                    stream,
                    peer,
                    refusal,
                    busy.clone(),
                    timeouts,
                    hub.shutdown.clone(),
                ));
            },
        )
        .await;
    });
    tracing::info!(%addr, "MQTT over WebSocket listening on /mqtt");
    Ok(addr)
}

async fn upgrade(
    State(shared): State<Arc<MqttShared>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let max = shared.hub.settings.mqtt.max_packet_bytes;
    // The host the client reached, as it named it.
    let local = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| super::host_of_header(h).to_string());
    ws.protocols(["mqtt"]).max_message_size(max).on_upgrade(move |socket| bridge(shared, socket, peer, local))
}

/// Pumps WebSocket binary messages to and from an in-memory byte stream served by the MQTT edge.
async fn bridge(shared: Arc<MqttShared>, socket: WebSocket, peer: Option<std::net::IpAddr>, local: Option<String>) {
    let (edge_side, mut pump_side) = tokio::io::duplex(16 * 1024);
    let (reader, writer) = tokio::io::split(edge_side);
    let edge = tokio::spawn(connection::run_io(shared.clone(), Box::new(reader), Box::new(writer), peer, local));
    let (mut ws_tx, mut ws_rx) = socket.split();
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        tokio::select! {
            m = ws_rx.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if pump_side.write_all(&b).await.is_err() { break; }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_))) => {}
                _ => break,
            },
            n = pump_side.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() { break; }
                }
            },
        }
    }
    drop(pump_side);
    let _ = edge.await;
}
