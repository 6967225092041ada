//! The WebSocket transport (§12): authenticates, decodes, dispatches to the shared action table and
//! writes. Each session is one task that reads requests, answers them and writes its pushes itself (a
//! push costs one wake-up and one socket write). A client that stops reading holds up only its own
//! session: its deliveries wait in the session's bounded delivery queue, and when that overflows or a
//! write finds no room for `send_timeout_secs`, it is disconnected with a logged reason instead of
//! growing the hub's memory. Pings keep idle sessions alive and detect dead peers.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::Instant;

use crate::hub::dispatch::{self as actions, RevocationWatch, Session};
use crate::hub::signal::Signal;
use crate::hub::Hub;
use crate::net::gate::Gate;
use crate::net::http::Peer;

pub async fn upgrade(
    State(hub): State<Arc<Hub>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string();
    let settings = &hub.settings.websocket;
    let limit = settings.max_message_bytes;
    // The library's own write buffer is bounded too (a client that stops reading cannot make it
    // grow); it must still take the largest push in one piece: a message as large as a request body
    // or an MQTT packet may carry.
    let largest_push = hub.settings.limits.max_body_bytes.max(limit).max(hub.settings.mqtt.max_packet_bytes);
    let write_limit = settings.max_queue_bytes.max(largest_push) + 64 * 1024;
    // tungstenite zero-fills its whole read buffer before every socket read (128 KiB by default): a
    // small one costs a little more per large request, but not 128 KiB of memset per small frame.
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(limit)
        .max_frame_size(limit)
        .write_buffer_size(32 * 1024)
        .max_write_buffer_size(write_limit)
        .on_upgrade(move |socket| run_session(hub, socket, host, peer))
}

/// The WebSocket library's read buffer per session (see `upgrade`).
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Writes a session's outgoing messages to its socket, in the session's own task: a push costs one
/// wake-up and one socket write, with no queue or second task between the session and its socket.
/// A client that does not read holds up only its own session: its further deliveries wait in the
/// session's bounded delivery queue meanwhile.
struct Outbox<'a> {
    /// Raised by the bus when the session's delivery queue overflowed (deliveries were dropped).
    overflow: &'a Signal,
    hub: &'a Hub,
    /// How long one message may wait for room in the socket before the client counts as not reading.
    grace: Duration,
}

impl Outbox<'_> {
    /// Writes `texts` in order and flushes once: one syscall for a burst. A full socket is not yet a
    /// verdict: a reading client drains it while a burst larger than the buffers (a history replay, a
    /// multi-row commit) is written. The client counts as not reading when one message waits for room
    /// for `grace`, or when its delivery queue overflows meanwhile — deliveries were then dropped and
    /// the session cannot go on without a gap.
    async fn send_all(&self, ws: &mut WebSocket, texts: Vec<String>) -> Result<(), End> {
        if texts.is_empty() {
            return Ok(());
        }
        for text in texts {
            self.write(ws.feed(Message::Text(Utf8Bytes::from(text)))).await?;
        }
        self.write(ws.flush()).await
    }

    /// Sends a ping (the peer's liveness is judged by what it sends back).
    async fn ping(&self, ws: &mut WebSocket) -> Result<(), End> {
        self.write(SinkExt::send(ws, Message::Ping(Default::default()))).await
    }

    /// One write to the socket. Most find room at once: no timer is armed for them; one that finds
    /// the socket full waits at most `grace`.
    async fn write(&self, mut write: impl Future<Output = Result<(), axum::Error>> + Unpin) -> Result<(), End> {
        match futures_util::FutureExt::now_or_never(&mut write) {
            Some(Ok(())) => Ok(()),
            Some(Err(_)) => Err(End::ClientClosed),
            None => self.wait(write).await,
        }
    }

    /// Waits for a write that found the socket full, at most `grace`.
    async fn wait(&self, write: impl Future<Output = Result<(), axum::Error>>) -> Result<(), End> {
        tokio::select! {
            written = tokio::time::timeout(self.grace, write) => match written {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::ClientClosed),
                Err(_) => Err(End::NotReading),
            },
            _ = self.overflow.wait() => Err(End::NotReading),
            _ = self.hub.shutting_down() => Err(End::Shutdown),
        }
    }
}

/// What woke a session besides its socket and its deliveries.
enum Rare {
    /// The bus dropped deliveries: the session's queue was full.
    Overflow,
    Shutdown,
    /// The session's user may have lost rights.
    Revocation,
    /// Time to ping, and to check the client was heard from.
    Liveness,
}

/// Why a session ended: the log line and the close frame the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed (its close frame is echoed) or the connection broke.
    ClientClosed,
    NotReading,
    Silent,
    Shutdown,
    /// The session's user was locked, disabled or deleted.
    Revoked,
    /// The client sent a message larger than `max_message_bytes`.
    TooBig,
}

impl End {
    /// The close frame for a server-initiated close.
    fn close_frame(self, max_message_bytes: usize) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::ClientClosed => return None,
            End::NotReading => (close_code::POLICY, "not reading: the session's queue stayed full".to_string()),
            End::Silent => (close_code::AWAY, "no answer to pings".to_string()),
            End::Shutdown => (close_code::AWAY, "the hub is shutting down".to_string()),
            End::Revoked => (close_code::POLICY, "user locked, disabled or deleted".to_string()),
            End::TooBig => (close_code::SIZE, format!("message larger than {max_message_bytes} bytes")),
        };
        Some(CloseFrame { code, reason: reason.into() })
    }
}

/// Whether a read error is a message over the size limit (answered with close code 1009).
fn is_too_big(e: axum::Error) -> bool {
    matches!(e.into_inner().downcast_ref::<tungstenite::Error>(), Some(tungstenite::Error::Capacity(_)))
}

/// How long the end of a session may take: the close frame after what is owed. A client that does
/// not read gets its close frame only if it reads again within this time; its session is gone already.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

async fn run_session(hub: Arc<Hub>, mut ws: WebSocket, host: String, peer: Option<std::net::IpAddr>) {
    let settings = hub.settings.websocket.clone();
    let ping_every = Duration::from_secs(settings.ping_interval_secs.max(1));
    let overflow = Arc::new(Signal::new());
    let mut session = Session::new(hub.clone(), host, settings.queue_capacity, overflow.clone());
    session.peer = peer;
    let _open = crate::metrics::connection_opened(crate::metrics::Transport::WebSocket);
    // Registered once for the session, not on every wake-up: the shutdown and revocation channels are
    // shared by every session, and a registration takes their lock.
    let mut revocations = RevocationWatch::new(hub.revocations());
    let shutdown = hub.shutting_down();
    tokio::pin!(shutdown);
    let overflowed = overflow.wait();
    tokio::pin!(overflowed);
    let mut last_heard = Instant::now();
    let mut liveness = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let out = Outbox { overflow: &overflow, hub: &hub, grace: Duration::from_secs(settings.send_timeout_secs.max(1)) };
    // A push wakes the session for its delivery alone: the socket's read side and the rare events
    // are polled only when their own wakers fired (see `net::gate`).
    let (read_gate, rare_gate) = (Gate::new(), Gate::new());

    let end = loop {
        let me = session.principal.user_id();
        let rare = poll_fn(|cx| {
            rare_gate.poll(cx, |cx| {
                if overflowed.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Rare::Overflow)
                } else if shutdown.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Rare::Shutdown)
                } else if revocations.poll_of(cx, me).is_ready() {
                    Poll::Ready(Rare::Revocation)
                } else if liveness.poll_tick(cx).is_ready() {
                    Poll::Ready(Rare::Liveness)
                } else {
                    Poll::Pending
                }
            })
        });
        tokio::select! {
            frame = poll_fn(|cx| read_gate.poll(cx, |cx| ws.poll_next_unpin(cx))) => {
                last_heard = Instant::now();
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Err(e)) => break if is_too_big(e) { End::TooBig } else { End::ClientClosed },
                    Some(Ok(Message::Close(_))) | None => break End::ClientClosed,
                };
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(request) => actions::handle(&mut session, &request).await,
                    Err(_) => actions::handle(&mut session, &Value::Null).await,
                };
                let mut texts = vec![response.to_string()];
                texts.extend(session.take_pending());
                if let Err(end) = out.send_all(&mut ws, texts).await {
                    break end;
                }
            }
            delivery = session.next_delivery() => {
                session.refresh_visibility().await;
                let mut texts = session.pushes(&delivery);
                // What else is ready goes out in the same write.
                while let Some(more) = session.try_next_delivery() {
                    texts.extend(session.pushes(&more));
                }
                if let Err(end) = out.send_all(&mut ws, texts).await {
                    break end;
                }
            }
            rare = rare => match rare {
                Rare::Overflow => break End::NotReading,
                Rare::Shutdown => break End::Shutdown,
                Rare::Revocation => {
                    if !session.recheck().await {
                        break End::Revoked;
                    }
                }
                Rare::Liveness => {
                    if last_heard.elapsed() > ping_every * 2 {
                        break End::Silent;
                    }
                    if let Err(end) = out.ping(&mut ws).await {
                        break end;
                    }
                }
            },
        }
    };
    match end {
        End::NotReading => tracing::warn!(
            subscriptions = session.subscription_count(),
            "closing WebSocket session: the client is not reading and its queue is full"
        ),
        End::Silent => tracing::debug!("closing WebSocket session: no answer to pings"),
        End::Revoked => tracing::debug!("closing WebSocket session: its user was locked or deleted"),
        End::TooBig => tracing::debug!("closing WebSocket session: message over the size limit"),
        End::ClientClosed | End::Shutdown => {}
    }
    drop(session);
    // The close frame goes out after what was already written (after a client's own close, the
    // library has queued its echo: flushing sends it), bounded in time: a client that does not read
    // gets nothing more.
    let frame = end.close_frame(settings.max_message_bytes);
    let _ = tokio::time::timeout(FINISH_TIMEOUT, async {
        if let Some(frame) = frame {
            let _ = ws.feed(Message::Close(Some(frame))).await;
        }
        let _ = ws.flush().await;
    })
    .await;
}
