//! One MQTT connection: CONNECT and authentication (`handshake`), then a loop that reads packets
//! from the socket, writes what the router (`router`) and the hub's subscription engine (`dh`) send,
//! and watches keepalive.
//!
//! Packet ids: the client sees one packet-id space for everything the hub sends it, but two sources
//! publish to it — rumqttd's router (plain topics) and the hub itself (`dh/` responses and pushes).
//! The edge therefore assigns its own outgoing ids and maps each PUBACK back to its source.

mod dh;
mod handshake;
mod router;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol as rq;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::codec::{self, connack, Packet, Publish, SUBACK_FAILURE};
use super::flow::Lag;
use super::presence::PresenceEvent;
use super::MqttShared;
use crate::config::PlainTopics;
use crate::hub::bus::{Delivery, EventKind, SubscriptionId};
use crate::hub::dispatch::{revocation_of, revocation_pending, Session};
use crate::hub::signal::{clock_ms, Signal};
use crate::model::SessionRecord;

use dh::DhSub;
pub use handshake::refuse_busy;
pub(super) use router::to_router;
use router::{broker_filter, next_from_router, wait_for_router, Origin};

/// What woke the connection loop (`Conn::wake`). Moved straight into its handling, never kept
/// across a wait, so its size costs nothing while the connection is idle.
#[allow(clippy::large_enum_variant)]
enum Wake {
    /// Bytes read into `rbuf` (0: the client closed).
    Read(Result<usize, ()>),
    Router(Result<Option<rumqttd::Notification>, ()>),
    Delivery(Delivery),
    /// A revocation concerning the session's user was announced.
    Revocation,
    End(End),
}

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// DISCONNECT from the client: no last will.
    Clean,
    Network,
    KeepAlive,
    Protocol,
    NotReading,
    TakenOver,
    Shutdown,
    /// The user was locked or deleted while connected.
    Revoked,
    /// An anonymous session did not authenticate in time.
    AnonymousTimeout,
    /// The rumqttd router link failed (refused, dropped or closed) while no newer connection holds
    /// the client id.
    RouterLinkFailed,
    /// The database could not store a QoS 1/2 publish within `[mqtt] database_grace_secs`: it is
    /// not acknowledged, and closing the connection makes the client send it again once it reconnects.
    StoreUnavailable,
}

struct Conn {
    shared: Arc<MqttShared>,
    client_id: String,
    /// This connection's number in `shared.sessions`.
    number: u64,
    /// Who the session belongs to (`None`: anonymous); moves to the user an anonymous session
    /// authenticates as.
    owner: Option<i64>,
    /// Ids of users whose rights may have shrunk.
    revocations: broadcast::Receiver<i64>,
    reader: Reader,
    writer: Writer,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// The rumqttd router link, opened on first use of a plain topic: sessions that only speak `dh/`
    /// never cost router memory.
    link: Option<Box<(LinkTx, LinkRx)>>,
    session: Session,
    /// Raised when the connection must end (taken over, shutdown, its delivery queue overflowed)
    /// or check its deadline (`Signal`, `sweep`).
    signal: Arc<Signal>,
    next_pkid: u16,
    /// The client's socket has taken nothing for `[mqtt] stall_ms`: plain QoS 0 publishes for it are
    /// dropped (and counted) instead of holding up their publishers.
    stalled: bool,
    /// The last read filled the read buffer: the client keeps sending, and the next read gets
    /// `READ_ROOM`. Otherwise the buffer is let go once empty, and an idle connection keeps none.
    streaming: bool,
    /// 1.5 × the CONNECT keep alive, in milliseconds; `None` when the client set none.
    keepalive_ms: Option<u64>,
    will: Option<Box<codec::Will>>,
    /// Clean session off: `dh/` subscriptions are stored, and owed commands replayed on reconnect.
    persistent: bool,
    /// Packets read while a publish waited for the database (`dh::Grace`), handled after it in
    /// order; PINGREQs among them were answered at once.
    held: VecDeque<Packet>,
    /// State most connections never need (`Conn::rare`), made on first use so an idle device
    /// connection stays small.
    rare: Option<Box<Rare>>,
}

/// The part of a connection's state that subscriptions, plain topics and QoS 2 need.
#[derive(Default)]
struct Rare {
    /// Outgoing QoS1 publishes awaiting PUBACK.
    inflight: HashMap<u16, Origin>,
    /// Filter text → engine subscription.
    dh_subs: HashMap<String, DhSub>,
    /// Engine subscription id → filter text.
    dh_by_id: HashMap<SubscriptionId, String>,
    /// Exact response topics subscribed, with their QoS.
    response_topics: HashMap<String, u8>,
    /// Recently pushed events, so overlapping filters deliver a message once.
    recent: VecDeque<(EventKind, i64, i64)>,
    recent_set: HashSet<(EventKind, i64, i64)>,
    /// Commands sent by the reconnect replay (live copies are skipped).
    replayed: HashSet<i64>,
    /// SUBSCRIBEs partly forwarded to the router: our codes, with `None` where the router answers,
    /// and the plain filters sent to it.
    pending_subacks: HashMap<u16, (Vec<Option<u8>>, Vec<String>)>,
    /// Plain subscriptions the router accepted, with what this client still has to take from their
    /// logs (`flow`).
    plain_subs: Vec<(String, Arc<Lag>)>,
    /// Plain QoS 0 publishes dropped while the client's socket was stalled.
    dropped_deliveries: u64,
    /// QoS 2 `dh/` publishes handled by the hub, awaiting the client's PUBREL.
    own_qos2: HashSet<u16>,
    /// QoS 2 plain publishes handed to the router, awaiting the client's PUBREL. The router drops a
    /// link that releases an id it does not know, so only these go to it.
    router_qos2: HashSet<u16>,
}

/// Ready router notifications or hub deliveries handled before one write to the socket.
const DRAIN_BATCH: usize = 256;

/// Room made in the read buffer for a client that keeps sending (`Conn::streaming`) and for a
/// burst's read-ahead (`dh`).
const READ_ROOM: usize = 8 * 1024;

pub type Reader = Box<dyn AsyncRead + Unpin + Send + Sync>;
pub type Writer = Box<dyn AsyncWrite + Unpin + Send + Sync>;

/// Serves a plain TCP connection.
pub fn run(
    shared: Arc<MqttShared>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) -> impl std::future::Future<Output = ()> + Send {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok().map(|a| super::url_host(a.ip()));
    let (reader, writer) = stream.into_split();
    run_io(shared, Box::new(reader), Box::new(writer), Some(peer.ip()), local)
}

/// Serves one MQTT connection over any byte stream (TCP, TLS, WebSocket); `peer` is the client's
/// address when known (login throttling), `local` the host (no port) the client reached the broker
/// at, when known (the REST URL `server/info` reports).
///
/// The connection's task keeps only what an idle connection waits with: the steps that run once
/// (handshake, start, finish) and each wake-up's handling are boxed while they run (see `serve`).
/// Not an `async fn`: its arguments go into the boxed handshake, not into the task's state.
pub fn run_io(
    shared: Arc<MqttShared>,
    reader: Reader,
    writer: Writer,
    peer: Option<std::net::IpAddr>,
    local: Option<String>,
) -> impl std::future::Future<Output = ()> + Send {
    let opening = Box::pin(open(shared.clone(), reader, writer, peer, local));
    async move {
        let Some(mut conn) = opening.await else { return };
        let end = match Box::pin(conn.start()).await {
            Ok(()) => conn.serve().await,
            Err(end) => end,
        };
        let number = conn.number;
        let client_id = conn.client_id.clone();
        Box::pin(conn.finish(end)).await;
        forget_session(&shared, &client_id, number);
    }
}

/// The handshake, then the session recorded and its state made; `None` when the connection was
/// refused or closed.
async fn open(
    shared: Arc<MqttShared>,
    mut reader: Reader,
    mut writer: Writer,
    peer: Option<std::net::IpAddr>,
    local: Option<String>,
) -> Option<Conn> {
    let accepted = handshake::accept(&shared, &mut reader, &mut writer, peer).await?;
    let handshake::Accepted { connect, client_id, principal, revocations, number, signal, session_present, rbuf } =
        accepted;
    let clean = connect.clean_session;
    let user_id = principal.user_id();
    // The session is recorded, and `$device-connected` committed, before CONNACK and before anything
    // the client publishes is read (see `presence`).
    let recorded = shared.presence.record(PresenceEvent {
        record: SessionRecord::Connected { client_id: client_id.clone(), user_id, clean, at: crate::time::now_ms() },
        principal: principal.clone(),
        notification: principal.is_authenticated().then(|| json!({"clientId": client_id, "cleanSession": clean})),
    });
    let _ = recorded.await;
    let host = shared.http_host(local.as_deref());
    let queue = shared.hub.settings.mqtt.queue_capacity;
    let mut session = Session::new(shared.hub.clone(), host, queue, signal.clone());
    session.peer = peer;
    session.transport = crate::metrics::Transport::Mqtt;
    session.principal = principal;
    let mut conn = Conn {
        shared,
        client_id,
        number,
        owner: user_id,
        revocations,
        reader,
        writer,
        // The handshake's buffer is not kept for nothing (see `on_wake`).
        rbuf: if rbuf.is_empty() { BytesMut::new() } else { rbuf },
        wbuf: BytesMut::new(),
        link: None,
        session,
        signal,
        next_pkid: 0,
        stalled: false,
        streaming: false,
        keepalive_ms: (connect.keep_alive > 0).then(|| connect.keep_alive as u64 * 1500),
        will: connect.will.map(Box::new),
        persistent: !clean,
        held: VecDeque::new(),
        rare: None,
    };
    conn.queue(&Packet::ConnAck { session_present, code: connack::ACCEPTED });
    Some(conn)
}

fn forget_session(shared: &MqttShared, client_id: &str, number: u64) {
    let mut sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
    if sessions.get(client_id).is_some_and(|s| s.number == number) {
        sessions.remove(client_id);
    }
}

impl Conn {
    fn settings(&self) -> &crate::config::MqttSettings {
        &self.shared.hub.settings.mqtt
    }

    /// The rarely used state, made on first use.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    /// At least half of `READ_ROOM` free in the read buffer.
    fn make_read_room(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < READ_ROOM / 2 {
            self.rbuf.reserve(READ_ROOM);
        }
    }

    fn queue(&mut self, p: &Packet) {
        codec::encode(p, &mut self.wbuf);
    }

    /// Writes what is queued. Meanwhile nothing more is taken from the router, so a slow client slows
    /// the publishers of what it subscribed to (`flow`). A socket that takes nothing for
    /// `[mqtt] stall_ms` counts as stalled: see `write_stalled`.
    async fn flush(&mut self) -> Result<(), End> {
        let stall = Duration::from_millis(self.settings().stall_ms.max(1));
        while !self.wbuf.is_empty() {
            match tokio::time::timeout(stall, self.writer.write(&self.wbuf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Network),
                Ok(Ok(n)) => bytes::Buf::advance(&mut self.wbuf, n),
                // Boxed: a stall is rare, and its wait would make every flush's state large.
                Err(_) => Box::pin(self.write_stalled(stall)).await?,
            }
        }
        if self.wbuf.capacity() > 64 * 1024 {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    /// The socket takes nothing: the router is still drained, so publishers are not held up by a
    /// client that stopped reading. Plain QoS 0 publishes for it are dropped and counted; QoS 1 ones
    /// are queued (the router sends at most its inflight window of them unacknowledged), holding up
    /// their publishers. Ends when the socket takes bytes again, or after `[mqtt] write_timeout_secs`
    /// in all as not reading.
    async fn write_stalled(&mut self, stalled_for: Duration) -> Result<(), End> {
        let limit = Duration::from_secs(self.settings().write_timeout_secs).saturating_sub(stalled_for);
        let deadline = Instant::now() + limit;
        self.stalled = true;
        let result = loop {
            tokio::select! {
                w = self.writer.write(&self.wbuf) => break match w {
                    Ok(0) | Err(_) => Err(End::Network),
                    Ok(n) => {
                        bytes::Buf::advance(&mut self.wbuf, n);
                        Ok(())
                    }
                },
                n = next_from_router(&mut self.link) => {
                    let step = match n {
                        Ok(Some(n)) => self.on_router_notification(n).await,
                        Ok(None) => Ok(()),
                        Err(_) => Err(self.link_failed()),
                    };
                    if let Err(end) = step {
                        break Err(end);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break Err(End::NotReading),
                end = ended(&self.signal) => break Err(end),
                _ = self.shared.hub.shutting_down() => break Err(End::Shutdown),
            }
        };
        self.stalled = false;
        result
    }

    fn allocate_pkid(&mut self) -> Option<u16> {
        let max = self.settings().max_inflight;
        let mut next = self.next_pkid;
        let inflight = &self.rare().inflight;
        if inflight.len() >= max {
            return None;
        }
        loop {
            next = next.wrapping_add(1);
            if next != 0 && !inflight.contains_key(&next) {
                self.next_pkid = next;
                return Some(next);
            }
        }
    }

    /// Queues a publish from the hub; QoS1 takes a packet id. `false` when the client has too many
    /// unacknowledged publishes (it is not keeping up).
    fn publish_from_hub(&mut self, topic: String, payload: Bytes, qos: u8) -> bool {
        let qos = qos.min(1);
        let pkid = if qos == 1 {
            match self.allocate_pkid() {
                Some(id) => {
                    self.rare().inflight.insert(id, Origin::Hub);
                    id
                }
                None => return false,
            }
        } else {
            0
        };
        self.queue(&Packet::Publish(Publish { dup: false, qos, retain: false, topic, pkid, payload }));
        true
    }

    /// CONNACK, then for a persistent session its router link (it may have plain-topic state in the
    /// router's graveyard), its stored `dh/` subscriptions and the commands it is owed.
    async fn start(&mut self) -> Result<(), End> {
        if self.persistent {
            self.open_link().await?;
        }
        self.flush().await?;
        self.restore().await
    }

    /// The connection loop; returns why it ended. It waits in `wake` — a few small futures — and
    /// handles each wake-up in a boxed `on_wake`, so the state an idle connection keeps is small.
    /// Its deadlines (keepalive, and for a session still anonymous the time it has to authenticate)
    /// are watched by `sweep` while it waits, not by a timer of its own.
    async fn serve(&mut self) -> End {
        let keepalive_ms = self.keepalive_ms;
        let mut keepalive = keepalive_ms.map(|k| clock_ms() + k);
        let anonymous_secs = self.settings().anonymous_timeout_secs;
        let anonymous_deadline = (anonymous_secs > 0).then(|| clock_ms() + anonymous_secs * 1000);
        // `sweep` raised the shutdown for the connections it knew of; this one may have claimed its
        // client id after.
        if self.shared.hub.is_shutting_down() {
            return End::Shutdown;
        }
        // Packets the client sent right behind its CONNECT (read with it) come first.
        if !self.rbuf.is_empty() {
            if let Err(end) = Box::pin(self.on_wake(Wake::Read(Ok(self.rbuf.len())))).await {
                return end;
            }
        }
        loop {
            // Only a session still anonymous has a deadline to authenticate.
            let anonymous = anonymous_deadline.filter(|_| !self.session.principal.is_authenticated());
            let deadline = match (keepalive, anonymous) {
                (Some(k), Some(a)) => Some(k.min(a)),
                (k, a) => k.or(a),
            };
            self.signal.set_deadline(deadline);
            // In a block of its own, so the wake-up is not part of the state kept while it is handled.
            let (read, handling) = {
                let wake = self.wake(keepalive, anonymous).await;
                // Deadlines count while the connection waits for its client, not while it serves it
                // (a publish may wait for the database).
                self.signal.set_deadline(None);
                (matches!(wake, Wake::Read(_)), Box::pin(self.on_wake(wake)))
            };
            if let Err(end) = handling.await {
                return end;
            }
            if read {
                // After the packets: a publish waiting for the database may have taken long, the
                // client pinging meanwhile.
                keepalive = keepalive_ms.map(|k| clock_ms() + k);
            }
        }
    }

    /// Waits for the next thing to do; a raised signal is a wake-up only when it ends the connection
    /// (a raised deadline that has moved is waited past).
    async fn wake(&mut self, keepalive: Option<u64>, anonymous: Option<u64>) -> Wake {
        if self.streaming {
            self.make_read_room();
        }
        let me = self.session.principal.user_id();
        loop {
            return tokio::select! {
                read = self.reader.read_buf(&mut self.rbuf) => Wake::Read(read.map_err(|_| ())),
                n = wait_for_router(&mut self.link) => Wake::Router(n.map_err(|_| ())),
                d = self.session.next_delivery() => Wake::Delivery(d),
                _ = revocation_of(&mut self.revocations, me) => Wake::Revocation,
                reasons = self.signal.wait() => match self.signalled(reasons, keepalive, anonymous) {
                    Some(end) => Wake::End(end),
                    None => continue,
                },
            };
        }
    }

    /// Why the connection ends after its signal was raised, if it does: a raised deadline is
    /// checked against the deadlines it has now (they move when the client sends something).
    fn signalled(&self, reasons: u32, keepalive: Option<u64>, anonymous: Option<u64>) -> Option<End> {
        if let Some(end) = end_of(reasons) {
            return Some(end);
        }
        let now = clock_ms();
        if anonymous.is_some_and(|a| a <= now) {
            return Some(End::AnonymousTimeout);
        }
        if keepalive.is_some_and(|k| k <= now) {
            return Some(End::KeepAlive);
        }
        self.signal.clear(Signal::DEADLINE);
        None
    }

    /// Handles a wake-up, then whatever else is ready, and writes the result in one go.
    async fn on_wake(&mut self, wake: Wake) -> Result<(), End> {
        let step = match wake {
            Wake::Read(Ok(0) | Err(())) => Err(End::Network),
            Wake::Read(Ok(_)) => {
                self.streaming = self.rbuf.len() == self.rbuf.capacity();
                self.read_packets().await
            }
            Wake::Router(Ok(Some(n))) => self.on_router_notification(n).await,
            Wake::Router(Ok(None)) => Ok(()),
            Wake::Router(Err(())) => Err(self.link_failed()),
            Wake::Delivery(d) => self.deliver(d).await,
            Wake::Revocation => self.on_revocation().await,
            Wake::End(end) => Err(end),
        };
        // Take whatever else is ready before writing, so a burst goes out in one write.
        let step = match step {
            Ok(()) => self.drain_ready().await,
            err => err,
        };
        if let Err(end) = step {
            // Answer what was already decided (e.g. a PUBACK) before closing, if the client reads.
            let _ = self.flush().await;
            return Err(end);
        }
        self.flush().await?;
        // Unless the client keeps sending, the read buffer goes once empty: an idle connection keeps
        // none, its next read takes a small one (`read_buf` reserves 64 bytes) and a packet larger
        // than that reserves its whole size. A large packet's buffer goes in any case.
        let capacity = self.rbuf.capacity();
        if self.rbuf.is_empty() && (!self.streaming && capacity > 64 || capacity > 4 * READ_ROOM) {
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Handles router notifications and hub deliveries that are ready now, without waiting.
    async fn drain_ready(&mut self) -> Result<(), End> {
        use futures_util::FutureExt;
        for _ in 0..DRAIN_BATCH {
            match next_from_router(&mut self.link).now_or_never() {
                Some(Ok(Some(n))) => self.on_router_notification(n).await?,
                Some(Ok(None)) => {}
                Some(Err(_)) => return Err(self.link_failed()),
                None => break,
            }
        }
        self.apply_revocations().await?;
        self.session.refresh_visibility().await;
        for _ in 0..DRAIN_BATCH {
            match self.session.try_next_delivery() {
                Some(d) => self.push(d)?,
                None => break,
            }
        }
        Ok(())
    }

    /// Pushes one delivery with the rights the user has now.
    async fn deliver(&mut self, d: Delivery) -> Result<(), End> {
        self.apply_revocations().await?;
        self.session.refresh_visibility().await;
        self.push(d)
    }

    /// The session's user may have lost rights: gone or inactive ends the connection.
    async fn on_revocation(&mut self) -> Result<(), End> {
        if self.session.recheck().await {
            Ok(())
        } else {
            Err(End::Revoked)
        }
    }

    /// Applies revocations already announced, so nothing is served with rights the user has lost
    /// (the select loop may pick a request or a delivery before the revocation).
    async fn apply_revocations(&mut self) -> Result<(), End> {
        if revocation_pending(&mut self.revocations, self.session.principal.user_id()) {
            // Boxed: rare, and a re-check's state is large next to a publish's.
            Box::pin(self.on_revocation()).await?;
        }
        Ok(())
    }

    async fn read_packets(&mut self) -> Result<(), End> {
        loop {
            // Packets held back while a publish waited for the database come before the rest.
            if let Some(p) = self.held.pop_front() {
                self.handle(p).await?;
                continue;
            }
            let max = self.settings().max_packet_bytes;
            match codec::decode(&mut self.rbuf, max) {
                Ok(Some(p)) => self.handle(p).await?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::debug!(client_id = %self.client_id, error = ?e, "closing MQTT connection: bad packet");
                    return Err(End::Protocol);
                }
            }
        }
    }

    async fn handle(&mut self, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::PubAck(pkid) => {
                match self.rare.as_mut().and_then(|r| r.inflight.remove(&pkid)) {
                    Some(Origin::Router(router_pkid)) => {
                        let ack = rq::PubAck { pkid: router_pkid, reason: rq::PubAckReason::Success };
                        self.send_to_router(rq::Packet::PubAck(ack, None)).await?;
                    }
                    Some(Origin::Hub) | None => {}
                }
                Ok(())
            }
            Packet::PubRel(pkid) => {
                if self.rare.as_mut().is_some_and(|r| r.router_qos2.remove(&pkid)) {
                    let rel = rq::PubRel { pkid, reason: rq::PubRelReason::Success };
                    return self.send_to_router(rq::Packet::PubRel(rel, None)).await;
                }
                // Ours, or an id nobody knows (e.g. resent after a reconnect, when the publish was
                // already released): either way it is complete (3.1.1 §4.3.3).
                if let Some(r) = self.rare.as_mut() {
                    r.own_qos2.remove(&pkid);
                }
                self.queue(&Packet::PubComp(pkid));
                Ok(())
            }
            Packet::PubRec(_) | Packet::PubComp(_) => Ok(()),
            // Boxed, as rare next to publishes and acknowledgements (see `on_publish`).
            Packet::Subscribe { pkid, filters } => Box::pin(self.on_subscribe(pkid, filters)).await,
            Packet::Unsubscribe { pkid, filters } => Box::pin(self.on_unsubscribe(pkid, filters)).await,
            Packet::PingReq => {
                self.queue(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect => Err(End::Clean),
            // A second CONNECT, or packets only a server sends.
            _ => Err(End::Protocol),
        }
    }

    /// Which plain (non-`dh/`) topics this session may use.
    fn plain_allowed(&self) -> bool {
        match self.settings().plain_topics {
            PlainTopics::Open => true,
            PlainTopics::Authenticated => self.session.principal.is_authenticated(),
            PlainTopics::Off => false,
        }
    }

    fn refuse_publish(&mut self, reason: &str, p: &Publish) {
        self.shared.hub.stats.mqtt_dropped_publishes.fetch_add(1, Ordering::Relaxed);
        crate::metrics::dropped(crate::metrics::DropReason::MqttPublishRefused);
        tracing::debug!(client_id = %self.client_id, topic = %p.topic, reason, "MQTT publish dropped");
    }

    /// Handles a PUBLISH and acknowledges it once handled — for `dh/` topics that is after the action
    /// or insert is committed. Refused publishes are acknowledged too: MQTT 3.1.1 has no negative
    /// acknowledgement, and a client must not resend forever what will never be accepted.
    async fn on_publish(&mut self, p: Publish) -> Result<(), End> {
        if p.topic.starts_with("dh/") {
            self.apply_revocations().await?;
        }
        if !p.topic.starts_with("dh/") {
            if self.plain_allowed() && !p.topic.is_empty() && !p.topic.contains(['+', '#']) {
                // The router acknowledges plain publishes itself (PUBACK, or PUBREC for QoS 2).
                if p.qos == 2 {
                    self.rare().router_qos2.insert(p.pkid);
                }
                return self.route_plain(&p).await;
            }
            self.refuse_publish("plain topic not allowed", &p);
        } else if p.topic == "dh/request" {
            // The `dh/` paths are boxed: their states (an action's, a burst's commit) are many
            // kilobytes, which every plain publish and every wake-up would otherwise make room for
            // and copy.
            Box::pin(self.on_request(&p)).await?;
        } else {
            // Acknowledges them itself, in order, once committed.
            return Box::pin(self.on_direct_publishes(p)).await;
        }
        self.acknowledge(&p);
        Ok(())
    }

    /// Acknowledges a publish the hub has handled (for `dh/` topics: committed, or refused).
    fn acknowledge(&mut self, p: &Publish) {
        match p.qos {
            1 => self.queue(&Packet::PubAck(p.pkid)),
            2 => {
                // Handled exactly once, now; PUBREL is answered with PUBCOMP.
                self.rare().own_qos2.insert(p.pkid);
                self.queue(&Packet::PubRec(p.pkid));
            }
            _ => {}
        }
    }

    async fn on_subscribe(&mut self, pkid: u16, filters: Vec<(String, u8)>) -> Result<(), End> {
        let mut codes: Vec<Option<u8>> = Vec::with_capacity(filters.len());
        let mut plain: Vec<rq::Filter> = Vec::new();
        for (filter, qos) in filters {
            let qos = qos.min(1);
            if !filter.starts_with("dh/") {
                if self.plain_allowed() && !broker_filter(&filter) && rq::valid_filter(&filter) {
                    plain.push(rq::Filter {
                        path: filter,
                        qos: if qos == 1 { rq::QoS::AtLeastOnce } else { rq::QoS::AtMostOnce },
                        nolocal: false,
                        preserve_retain: false,
                        retain_forward_rule: rq::RetainForwardRule::OnEverySubscribe,
                    });
                    codes.push(None);
                } else {
                    codes.push(Some(SUBACK_FAILURE));
                }
                continue;
            }
            codes.push(Some(self.subscribe_dh(&filter, qos, false).await));
        }
        if plain.is_empty() {
            let codes = codes.into_iter().map(|c| c.unwrap_or(SUBACK_FAILURE)).collect();
            self.queue(&Packet::SubAck { pkid, codes });
            return Ok(());
        }
        let names = plain.iter().map(|f| f.path.clone()).collect();
        self.rare().pending_subacks.insert(pkid, (codes, names));
        self.send_to_router(rq::Packet::Subscribe(rq::Subscribe { pkid, filters: plain }, None)).await
    }

    async fn on_unsubscribe(&mut self, pkid: u16, filters: Vec<String>) -> Result<(), End> {
        let mut plain = Vec::new();
        for f in filters {
            if f.starts_with("dh/") {
                let sub = self.rare.as_mut().and_then(|r| {
                    r.response_topics.remove(&f);
                    r.dh_subs.remove(&f)
                });
                if let Some(sub) = sub {
                    self.drop_engine_subscription(&sub);
                    if self.persistent {
                        let _ = self.shared.hub.mqtt_subscription_delete(&self.client_id, &f).await;
                    }
                }
            } else {
                plain.push(f);
            }
        }
        if plain.is_empty() {
            self.queue(&Packet::UnsubAck(pkid));
            return Ok(());
        }
        // No longer counted, so no publisher waits for what this client will not take.
        self.withdraw_plain(Some(&plain));
        self.send_to_router(rq::Packet::Unsubscribe(rq::Unsubscribe { pkid, filters: plain }, None)).await
    }

    /// Ends the session: last will unless the client said goodbye, then the router link. Its
    /// steps that are not always taken are boxed: a mass disconnect holds every closing
    /// connection's `finish` at once.
    async fn finish(mut self, end: End) {
        // First, so that no publish (the last will included) waits for what this client will not take.
        self.withdraw_plain(None);
        match end {
            End::Clean | End::Shutdown | End::TakenOver => {}
            ref other => tracing::debug!(client_id = %self.client_id, reason = ?other, "MQTT connection closed"),
        }
        // A revoked user has no right left to publish, its last will included.
        let will = !matches!(end, End::Clean | End::Revoked) && self.will.is_some();
        if will {
            if let Some(will) = self.will.take() {
                let will = *will;
                let p = Publish {
                    dup: false,
                    qos: will.qos.min(1),
                    retain: will.retain,
                    topic: will.topic,
                    pkid: 0,
                    payload: will.payload,
                };
                if p.topic.starts_with("dh/") {
                    // QoS 0: a will the database cannot take is lost, never an error here.
                    let _ = Box::pin(self.on_direct_publish(&Publish { qos: 0, ..p })).await;
                } else if self.plain_allowed() {
                    let _ = Box::pin(self.route_plain(&Publish { qos: 0, ..p })).await;
                }
            }
        }
        // After a takeover the session lives on in the new connection: it is not a disconnect. Else
        // `$device-disconnected` follows everything the session published, its last will included.
        let mut recorded = None;
        if end.recorded() {
            let reason = end.reason();
            let client_id = self.client_id.clone();
            let principal = self.session.principal.clone();
            recorded = Some(
                self.shared.presence.record(PresenceEvent {
                    record: SessionRecord::Disconnected {
                        client_id: client_id.clone(),
                        at: crate::time::now_ms(),
                        reason,
                    },
                    notification: principal
                        .is_authenticated()
                        .then(|| json!({"clientId": client_id, "reason": reason, "will": will})),
                    principal,
                }),
            );
        }
        let dropped = self.rare.as_ref().map_or(0, |r| r.dropped_deliveries);
        if dropped > 0 {
            tracing::info!(client_id = %self.client_id, dropped, "plain QoS 0 publishes dropped for a stalled MQTT client");
        }
        if self.link.is_some() {
            let bye = rq::Disconnect { reason_code: rq::DisconnectReasonCode::NormalDisconnection };
            let _ = Box::pin(self.send_to_router(rq::Packet::Disconnect(bye, None))).await;
        }
        let _ = self.writer.shutdown().await;
        if let Some(recorded) = recorded {
            let _ = recorded.await;
        }
    }
}

impl End {
    /// Whether the end is recorded as a disconnect (`$device-disconnected`). After a takeover the
    /// session lives on in the newer connection.
    fn recorded(&self) -> bool {
        *self != End::TakenOver
    }

    /// How the disconnect is reported in presence records.
    fn reason(&self) -> &'static str {
        match self {
            End::Clean => "disconnect",
            End::Network => "connection-lost",
            End::KeepAlive => "keepalive-timeout",
            End::Protocol => "protocol-error",
            End::NotReading => "not-reading",
            End::TakenOver => "taken-over",
            End::Shutdown => "shutdown",
            End::Revoked => "revoked",
            End::AnonymousTimeout => "anonymous-timeout",
            End::RouterLinkFailed => "router-link-failed",
            End::StoreUnavailable => "database-unavailable",
        }
    }
}

/// The end a signal's reasons call for; `None` when only a deadline was raised.
fn end_of(reasons: u32) -> Option<End> {
    if reasons & Signal::TAKEN_OVER != 0 {
        Some(End::TakenOver)
    } else if reasons & Signal::SHUTDOWN != 0 {
        Some(End::Shutdown)
    } else if reasons & Signal::OVERFLOW != 0 {
        Some(End::NotReading)
    } else {
        None
    }
}

/// Waits, outside the connection loop's own wait, for a reason that ends the connection. A
/// deadline raised meanwhile is stale (deadlines count only while the loop waits): it is cleared.
async fn ended(signal: &Signal) -> End {
    loop {
        if let Some(end) = end_of(signal.wait().await) {
            return end;
        }
        signal.clear(Signal::DEADLINE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_output<A, R>(_f: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// An idle connection's memory is mostly its task's state: what `run` returns, which holds the
    /// `Conn` and the loop's wait (`serve` awaiting `wake`); everything else is boxed while it runs.
    /// A closing connection's `finish` is alive for every connection of a mass disconnect at once.
    /// The bounds leave room for compiler differences (this build, debug: `run` 992 bytes, `Conn`
    /// 520, `finish` 1,296); failing them means something large moved into these states.
    #[test]
    fn an_idle_connection_waits_in_a_small_state() {
        let run = size_of_output(|(s, t, p): (Arc<MqttShared>, TcpStream, _)| run(s, t, p));
        let conn = std::mem::size_of::<Conn>();
        let wake = size_of_output(|c: &mut Conn| c.wake(None, None));
        assert!(conn <= 700, "Conn is {conn} bytes");
        assert!(wake <= 512, "the loop's wait is {wake} bytes");
        assert!(run <= 1_400, "the connection task's state is {run} bytes");
        let finish = size_of_output(|c: Conn| c.finish(End::Clean));
        assert!(finish <= 2_000, "a closing connection's state is {finish} bytes");
    }

    /// Each wake-up boxes `on_wake` and each packet awaits `handle`: their states are made (and
    /// copied) per wake-up and per packet, so the rare large paths taken from them — an action, a
    /// `dh/` burst's commit, a subscription, a stalled socket, a rights re-check — are boxed where
    /// they are taken. Before, `on_wake` was 13 KB and copying it a quarter of the CPU of a plain
    /// fan-in. (This build, debug: `on_wake` 2,296 bytes, `handle` 1,192.)
    #[test]
    fn a_wake_up_and_a_packet_are_handled_in_a_small_state() {
        let on_wake = size_of_output(|c: &mut Conn| c.on_wake(Wake::Revocation));
        let handle = size_of_output(|c: &mut Conn| c.handle(Packet::PingReq));
        assert!(on_wake <= 3_000, "a wake-up's handling is {on_wake} bytes");
        assert!(handle <= 1_600, "a packet's handling is {handle} bytes");
    }
}
