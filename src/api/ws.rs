//! The WebSocket transport (§12): authenticates, decodes, dispatches to the shared action table and
//! writes. Each session has a reader loop and a writer task joined by a bounded queue; a client that
//! stops reading fills it and is disconnected with a logged reason instead of growing the hub's memory.
//! Pings keep idle sessions alive and detect dead peers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{SendTimeoutError, TrySendError};
use tokio::time::Instant;

use crate::hub::dispatch::{self as actions, revocation_of, Session};
use crate::hub::signal::Signal;
use crate::hub::Hub;
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

/// Hands a session's outgoing messages to its writer task, counting the bytes queued.
struct Outbox<'a> {
    tx: &'a mpsc::Sender<Message>,
    /// Bytes of text queued for the writer and not yet written to the socket.
    queued: &'a AtomicUsize,
    /// The most bytes that may be queued before the client counts as not reading.
    max_queued: usize,
    /// Raised by the bus when the session's delivery queue overflowed (deliveries were dropped).
    overflow: &'a Signal,
    hub: &'a Hub,
    /// How long a full queue may stay full before the client counts as not reading.
    grace: Duration,
}

impl Outbox<'_> {
    /// Queues `texts` in order. A full queue is not yet a verdict: a reading client drains it while
    /// a burst larger than the queue (a history replay, a multi-row commit) is handed over. The
    /// client counts as not reading when the queue stays full (in messages or bytes) for `grace`, or
    /// when its delivery queue overflows meanwhile — deliveries were then dropped and the session
    /// cannot go on without a gap.
    async fn send_all(&self, texts: Vec<String>) -> Result<(), End> {
        for text in texts {
            let len = text.len();
            if self.queued.load(Ordering::Acquire) + len > self.max_queued {
                self.wait_for_room(len).await?;
            }
            self.queued.fetch_add(len, Ordering::AcqRel);
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
                _ = self.overflow.wait() => return Err(End::NotReading),
                _ = self.hub.shutting_down() => return Err(End::Shutdown),
            }
        }
        Ok(())
    }

    /// Waits (at most `grace`) until the writer has drained enough queued bytes for `len` more. A
    /// message larger than the whole budget goes out once the queue is empty.
    async fn wait_for_room(&self, len: usize) -> Result<(), End> {
        let deadline = Instant::now() + self.grace;
        loop {
            let queued = self.queued.load(Ordering::Acquire);
            if queued == 0 || queued + len <= self.max_queued {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(End::NotReading);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = self.overflow.wait() => return Err(End::NotReading),
                _ = self.hub.shutting_down() => return Err(End::Shutdown),
            }
        }
    }
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

/// How the writer ends: the close frame to send (`None` after the client's own close, whose echo
/// the library has queued), and whether what is still queued goes out first.
struct Closing {
    frame: Option<CloseFrame>,
    drain: bool,
}

/// The writer task: writes queued messages (a burst in one flush) and pings; on `close` — also while
/// a write is blocked on a client that does not read — it writes what is still queued when asked to,
/// then the close frame, and ends.
async fn write_loop(
    mut ws_tx: futures_util::stream::SplitSink<WebSocket, Message>,
    mut out_rx: mpsc::Receiver<Message>,
    mut close: tokio::sync::oneshot::Receiver<Closing>,
    queued: Arc<AtomicUsize>,
    ping_every: Duration,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    loop {
        let msg = tokio::select! {
            biased;
            closing = &mut close => return finish(ws_tx, out_rx, closing.ok()).await,
            m = out_rx.recv() => match m { Some(m) => m, None => return },
            _ = ping.tick() => Message::Ping(Default::default()),
        };
        let burst = write_burst(&mut ws_tx, &mut out_rx, msg, &queued);
        let ok = tokio::select! {
            biased;
            closing = &mut close => return finish(ws_tx, out_rx, closing.ok()).await,
            ok = burst => ok,
        };
        if !ok {
            return;
        }
    }
}

/// Writes `first` and everything already queued, then flushes once: one syscall for a burst.
async fn write_burst(
    ws_tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    out_rx: &mut mpsc::Receiver<Message>,
    first: Message,
    queued: &AtomicUsize,
) -> bool {
    let written = |m: &Message| {
        if let Message::Text(t) = m {
            queued.fetch_sub(t.len(), Ordering::AcqRel);
        }
    };
    written(&first);
    if ws_tx.feed(first).await.is_err() {
        return false;
    }
    while let Ok(more) = out_rx.try_recv() {
        written(&more);
        if ws_tx.feed(more).await.is_err() {
            return false;
        }
    }
    ws_tx.flush().await.is_ok()
}

/// How long the end of a session may take: what is owed, then the close frame. A client that does not
/// read gets its close frame only if it reads again within this time; its session is gone already.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The end of a session's writing, bounded in time: a client that does not read gets nothing more.
async fn finish(
    mut ws_tx: futures_util::stream::SplitSink<WebSocket, Message>,
    mut out_rx: mpsc::Receiver<Message>,
    closing: Option<Closing>,
) {
    let Some(closing) = closing else { return };
    let _ = tokio::time::timeout(FINISH_TIMEOUT, async {
        while let (true, Ok(m)) = (closing.drain, out_rx.try_recv()) {
            if ws_tx.feed(m).await.is_err() {
                return;
            }
        }
        // After a client's close frame the library has queued its echo; flushing sends it.
        if let Some(frame) = closing.frame {
            let _ = ws_tx.feed(Message::Close(Some(frame))).await;
        }
        let _ = ws_tx.flush().await;
    })
    .await;
}

async fn run_session(hub: Arc<Hub>, socket: WebSocket, host: String, peer: Option<std::net::IpAddr>) {
    let settings = hub.settings.websocket.clone();
    let ping_every = Duration::from_secs(settings.ping_interval_secs.max(1));
    let (ws_tx, mut ws_rx) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(settings.queue_capacity.max(16));
    let (close_tx, close_rx) = tokio::sync::oneshot::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let mut writer = tokio::spawn(write_loop(ws_tx, out_rx, close_rx, queued.clone(), ping_every));

    let overflow = Arc::new(Signal::new());
    let mut session = Session::new(hub.clone(), host, settings.queue_capacity, overflow.clone());
    session.peer = peer;
    let _open = crate::metrics::connection_opened(crate::metrics::Transport::WebSocket);
    let mut revocations = hub.revocations();
    let mut last_heard = Instant::now();
    let mut liveness = tokio::time::interval(ping_every);
    let out = Outbox {
        tx: &out_tx,
        queued: &queued,
        max_queued: settings.max_queue_bytes.max(settings.max_message_bytes),
        overflow: &overflow,
        hub: &hub,
        grace: Duration::from_secs(settings.send_timeout_secs.max(1)),
    };

    let end = loop {
        let me = session.principal.user_id();
        tokio::select! {
            frame = ws_rx.next() => {
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
                if let Err(end) = out.send_all(texts).await {
                    break end;
                }
            }
            delivery = session.next_delivery() => {
                session.refresh_visibility().await;
                if let Err(end) = out.send_all(session.pushes(&delivery)).await {
                    break end;
                }
            }
            _ = revocation_of(&mut revocations, me) => {
                if !session.recheck().await {
                    break End::Revoked;
                }
            }
            _ = overflow.wait() => break End::NotReading,
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
        End::Silent => tracing::debug!("closing WebSocket session: no answer to pings"),
        End::Revoked => tracing::debug!("closing WebSocket session: its user was locked or deleted"),
        End::TooBig => tracing::debug!("closing WebSocket session: message over the size limit"),
        End::ClientClosed | End::Shutdown => {}
    }
    drop(session);
    // What was answered before a close the client or the hub chose still goes out; a client that
    // does not read, or may no longer read, gets only the close frame.
    let drain = matches!(end, End::ClientClosed | End::Shutdown);
    let _ = close_tx.send(Closing { frame: end.close_frame(settings.max_message_bytes), drain });
    if tokio::time::timeout(FINISH_TIMEOUT + Duration::from_secs(1), &mut writer).await.is_err() {
        writer.abort();
    }
}
