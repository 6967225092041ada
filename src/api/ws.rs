//! The WebSocket transport (§12): authenticates, decodes, dispatches to the shared action table and
//! writes. Each session has a reader loop and a writer task joined by a bounded queue; a client that
//! stops reading fills it and is disconnected with a logged reason instead of growing the hub's memory.
//! Pings keep idle sessions alive and detect dead peers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc::error::{SendTimeoutError, TrySendError};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::api::extract::Peer;
use crate::hub::dispatch::{self as actions, Session};
use crate::hub::Hub;

pub async fn upgrade(
    State(hub): State<Arc<Hub>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string();
    let limit = hub.settings.websocket.max_message_bytes;
    ws.max_message_size(limit).max_frame_size(limit).on_upgrade(move |socket| run_session(hub, socket, host, peer))
}

/// Hands a session's outgoing messages to its writer task.
struct Outbox<'a> {
    tx: &'a mpsc::Sender<Message>,
    /// Notified by the bus when the session's delivery queue overflowed (deliveries were dropped).
    overflow: &'a Notify,
    hub: &'a Hub,
    /// How long a full queue may stay full before the client counts as not reading.
    grace: Duration,
}

impl Outbox<'_> {
    /// Queues `texts` in order. A full queue is not yet a verdict: a reading client drains it while
    /// a burst larger than the queue (a history replay, a multi-row commit) is handed over. The
    /// client counts as not reading when the queue stays full for `grace`, or when its delivery
    /// queue overflows meanwhile — deliveries were then dropped and the session cannot go on
    /// without a gap.
    async fn send_all(&self, texts: Vec<String>) -> Result<(), End> {
        for text in texts {
            let msg = Message::Text(Utf8Bytes::from(text));
            let msg = match self.tx.try_send(msg) {
                Ok(()) => continue,
                Err(TrySendError::Closed(_)) => return Err(End::ClientClosed),
                Err(TrySendError::Full(msg)) => msg,
            };
            tokio::select! {
                sent = self.tx.send_timeout(msg, self.grace) => match sent {
                    Ok(()) => {}
                    Err(SendTimeoutError::Timeout(_)) => return Err(End::NotReading),
                    Err(SendTimeoutError::Closed(_)) => return Err(End::ClientClosed),
                },
                _ = self.overflow.notified() => return Err(End::NotReading),
                _ = self.hub.shutting_down() => return Err(End::Shutdown),
            }
        }
        Ok(())
    }
}

/// Why a session ended, for the log.
enum End {
    ClientClosed,
    NotReading,
    Silent,
    Shutdown,
    /// The session's user was locked, disabled or deleted.
    Revoked,
}

async fn run_session(hub: Arc<Hub>, socket: WebSocket, host: String, peer: Option<std::net::IpAddr>) {
    let settings = hub.settings.websocket.clone();
    let ping_every = Duration::from_secs(settings.ping_interval_secs.max(1));
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(settings.queue_capacity.max(16));

    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        loop {
            let msg = tokio::select! {
                m = out_rx.recv() => match m { Some(m) => m, None => break },
                _ = ping.tick() => Message::Ping(Default::default()),
            };
            // Write everything already queued, then flush once: one syscall for a burst of pushes.
            let mut closing = matches!(msg, Message::Close(_));
            if ws_tx.feed(msg).await.is_err() {
                break;
            }
            while !closing {
                let Ok(more) = out_rx.try_recv() else { break };
                closing = matches!(more, Message::Close(_));
                if ws_tx.feed(more).await.is_err() {
                    return;
                }
            }
            if ws_tx.flush().await.is_err() || closing {
                break;
            }
        }
    });

    let (mut session, mut deliveries, overflow) = Session::new(hub.clone(), host, settings.queue_capacity);
    session.peer = peer;
    let mut revocations = hub.revocations();
    let mut last_heard = Instant::now();
    let mut liveness = tokio::time::interval(ping_every);
    let out = Outbox { tx: &out_tx, overflow: &overflow, hub: &hub, grace: ping_every * 2 };

    let end = loop {
        tokio::select! {
            frame = ws_rx.next() => {
                last_heard = Instant::now();
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::ClientClosed,
                };
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(request) => actions::handle(&mut session, &request).await,
                    Err(_) => actions::handle(&mut session, &Value::Null).await,
                };
                let mut texts = vec![response.to_string()];
                texts.extend(session.take_pending());
                if let Err(end) = out.send_all(texts).await {
                    break end;
                }
            }
            Some(delivery) = deliveries.recv() => {
                session.refresh_visibility().await;
                if let Err(end) = out.send_all(session.pushes(&delivery)).await {
                    break end;
                }
            }
            revoked = revocations.recv() => {
                use tokio::sync::broadcast::error::RecvError;
                let mine = match revoked {
                    Ok(user_id) => session.principal.user_id() == Some(user_id),
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => false,
                };
                if mine && session.principal.is_authenticated() {
                    match hub.recheck_principal(&session.principal).await {
                        None => break End::Revoked,
                        Some(p) => {
                            session.principal = p;
                            session.refresh_visibility().await;
                        }
                    }
                }
            }
            _ = overflow.notified() => break End::NotReading,
            _ = liveness.tick() => {
                if last_heard.elapsed() > ping_every * 2 {
                    break End::Silent;
                }
            }
            _ = hub.shutting_down() => break End::Shutdown,
        }
    };
    match end {
        End::NotReading => tracing::warn!(
            subscriptions = session.subscription_count(),
            "closing WebSocket session: the client is not reading and its queue is full"
        ),
        End::Silent => tracing::info!("closing WebSocket session: no answer to pings"),
        End::Revoked => tracing::info!("closing WebSocket session: its user was locked or deleted"),
        End::ClientClosed | End::Shutdown => {}
    }
    drop(session);
    drop(deliveries);
    if matches!(end, End::NotReading | End::Silent) {
        // The client cannot be trusted to drain the queue; do not wait for it.
        writer.abort();
    } else {
        let close = match end {
            End::Revoked => Some(axum::extract::ws::CloseFrame {
                code: axum::extract::ws::close_code::POLICY,
                reason: "user locked, disabled or deleted".into(),
            }),
            _ => None,
        };
        let _ = out_tx.try_send(Message::Close(close));
        drop(out_tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }
}
