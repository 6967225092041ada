//! One MQTT connection: CONNECT and authentication, then a loop that reads packets from the socket,
//! writes what the router and the hub's subscription engine send, and watches keepalive.
//!
//! Packet ids: the client sees one packet-id space for everything the hub sends it, but two sources
//! publish to it — rumqttd's router (plain topics) and the hub itself (`dh/` responses and pushes).
//! The edge therefore assigns its own outgoing ids and maps each PUBACK back to its source.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol as rq;
use rumqttd::Notification;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::Instant;

use super::codec::{self, connack, Connect, DecodeError, Packet, Publish, SUBACK_FAILURE};
use super::presence::PresenceEvent;
use super::topics::{self, DhFilter};
use super::{LiveSession, MqttShared};
use crate::auth::Principal;
use crate::config::PlainTopics;
use crate::hub::bus::{Delivery, EventKind};
use crate::hub::dispatch::{self as actions, push_text, Session};
use crate::store::{SessionRecord, StoredSession};

/// Answers a connection over the limit with CONNACK "server unavailable" (over TCP, TLS or WebSocket).
pub async fn refuse_busy(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = BytesMut::with_capacity(64);
    let deadline = Duration::from_secs(5);
    let _ = tokio::time::timeout(deadline, async {
        loop {
            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
            match codec::decode(&mut buf, 1 << 16) {
                Ok(None) => continue,
                Ok(Some(Packet::Connect(_))) => {
                    let mut out = BytesMut::new();
                    codec::encode(
                        &Packet::ConnAck { session_present: false, code: connack::SERVER_UNAVAILABLE },
                        &mut out,
                    );
                    let _ = stream.write_all(&out).await;
                    return;
                }
                _ => return,
            }
        }
    })
    .await;
}

/// Where an outgoing QoS1 publish came from, so its PUBACK goes back there.
enum Origin {
    Router(u16),
    Hub,
}

/// A `dh/` event subscription of this connection.
struct DhSub {
    id: u64,
    qos: u8,
    kind: EventKind,
    private: bool,
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
    link: Option<(LinkTx, LinkRx)>,
    session: Session,
    deliveries: mpsc::Receiver<Delivery>,
    overflow: Arc<Notify>,
    kill: Arc<Notify>,
    /// Filter text → engine subscription.
    dh_subs: HashMap<String, DhSub>,
    /// Engine subscription id → filter text.
    dh_by_id: HashMap<u64, String>,
    /// Exact response topics subscribed, with their QoS.
    response_topics: HashMap<String, u8>,
    /// Outgoing QoS1 publishes awaiting PUBACK.
    inflight: HashMap<u16, Origin>,
    next_pkid: u16,
    /// SUBSCRIBEs partly forwarded to the router: our codes, with `None` where the router answers.
    pending_subacks: HashMap<u16, Vec<Option<u8>>>,
    /// Recently pushed events, so overlapping filters deliver a message once.
    recent: VecDeque<(EventKind, i64, i64)>,
    recent_set: HashSet<(EventKind, i64, i64)>,
    keepalive: Option<Duration>,
    will: Option<codec::Will>,
    /// Clean session off: `dh/` subscriptions are stored, and owed commands replayed on reconnect.
    persistent: bool,
    /// Commands sent by the reconnect replay (live copies are skipped).
    replayed: HashSet<i64>,
    /// QoS 2 `dh/` publishes handled by the hub, awaiting the client's PUBREL.
    own_qos2: HashSet<u16>,
    /// QoS 2 plain publishes handed to the router, awaiting the client's PUBREL. The router drops a
    /// link that releases an id it does not know, so only these go to it.
    router_qos2: HashSet<u16>,
}

const RECENT_EVENTS: usize = 512;
/// Ready router notifications or hub deliveries handled before one write to the socket.
const DRAIN_BATCH: usize = 256;

pub type Reader = Box<dyn AsyncRead + Unpin + Send + Sync>;
pub type Writer = Box<dyn AsyncWrite + Unpin + Send + Sync>;

/// Serves a plain TCP connection.
pub async fn run(shared: Arc<MqttShared>, stream: TcpStream, peer: std::net::SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    run_io(shared, Box::new(reader), Box::new(writer), Some(peer.ip())).await;
}

/// Serves one MQTT connection over any byte stream (TCP, TLS, WebSocket).
/// Serves one MQTT connection over any byte stream; `peer` is the client's address when known (login
/// throttling).
pub async fn run_io(shared: Arc<MqttShared>, mut reader: Reader, mut writer: Writer, peer: Option<std::net::IpAddr>) {
    let settings = shared.hub.settings.mqtt.clone();
    let mut rbuf = BytesMut::with_capacity(256);

    // CONNECT must come first, and soon.
    let connect = tokio::time::timeout(Duration::from_secs(settings.connect_timeout_secs), async {
        loop {
            match codec::decode(&mut rbuf, settings.max_packet_bytes) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            match reader.read_buf(&mut rbuf).await {
                Ok(0) | Err(_) => return Err(DecodeError::Malformed("closed before CONNECT")),
                Ok(_) => {}
            }
        }
    })
    .await;
    let connect = match connect {
        Ok(Ok(Packet::Connect(c))) => *c,
        Ok(Err(DecodeError::UnsupportedProtocol(_))) => {
            let _ = write_packet(
                &mut writer,
                &Packet::ConnAck { session_present: false, code: connack::UNACCEPTABLE_PROTOCOL },
            )
            .await;
            return;
        }
        _ => return,
    };

    let refuse = |code: u8| Packet::ConnAck { session_present: false, code };
    let client_id = match client_id_for(&connect, settings.max_client_id_len) {
        Some(id) => id,
        None => {
            let _ = write_packet(&mut writer, &refuse(connack::IDENTIFIER_REJECTED)).await;
            return;
        }
    };
    // Listen before authenticating, so a user locked meanwhile is not missed.
    let revocations = shared.hub.revocations();
    let principal = match authenticate(&shared, &connect, peer).await {
        Ok(p) => p,
        Err(code) => {
            tracing::info!(client_id = %client_id, code, "MQTT connection refused");
            let _ = write_packet(&mut writer, &refuse(code)).await;
            return;
        }
    };

    let number = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let kill = Arc::new(Notify::new());
    let clean = connect.clean_session;
    let owner = principal.user_id();
    let stored = match claim_session(&shared, &client_id, owner, clean, number, kill.clone()).await {
        Ok(stored) => stored,
        Err(code) => {
            tracing::info!(client_id = %client_id, code, "MQTT connection refused: client id held by another user");
            let _ = write_packet(&mut writer, &refuse(code)).await;
            return;
        }
    };
    let previous = stored.map(|s| s.clean);
    let session_present = !clean && previous == Some(false);
    if clean && previous == Some(false) {
        // A clean session replaces a persistent one: nothing is owed any more.
        let _ = shared.hub.mqtt_subscriptions_clear(&client_id).await;
    }
    let user_id = principal.user_id();
    shared.presence.record(PresenceEvent {
        record: SessionRecord::Connected { client_id: client_id.clone(), user_id, clean, at: crate::time::now_ms() },
        principal: principal.clone(),
        notification: principal.is_authenticated().then(|| json!({"clientId": client_id, "cleanSession": clean})),
    });
    let (mut session, deliveries, overflow) = Session::new(shared.hub.clone(), String::new(), settings.queue_capacity);
    session.peer = peer;
    session.principal = principal;
    let mut conn = Conn {
        shared: shared.clone(),
        client_id: client_id.clone(),
        number,
        owner,
        revocations,
        reader,
        writer,
        rbuf,
        wbuf: BytesMut::new(),
        link: None,
        session,
        deliveries,
        overflow,
        kill,
        dh_subs: HashMap::new(),
        dh_by_id: HashMap::new(),
        response_topics: HashMap::new(),
        inflight: HashMap::new(),
        next_pkid: 0,
        pending_subacks: HashMap::new(),
        recent: VecDeque::new(),
        recent_set: HashSet::new(),
        keepalive: (connect.keep_alive > 0).then(|| Duration::from_millis(connect.keep_alive as u64 * 1500)),
        will: connect.will.clone(),
        persistent: !connect.clean_session,
        replayed: HashSet::new(),
        own_qos2: HashSet::new(),
        router_qos2: HashSet::new(),
    };
    conn.queue(&Packet::ConnAck { session_present, code: connack::ACCEPTED });
    if !clean {
        // A persistent session may have plain-topic state in the router (its graveyard).
        if let Err(end) = conn.open_link().await {
            conn.finish(end).await;
            forget_session(&shared, &client_id, number);
            return;
        }
    }
    let end = match conn.flush().await {
        Ok(()) => match conn.restore().await {
            Ok(()) => conn.serve().await,
            Err(e) => e,
        },
        Err(e) => e,
    };
    conn.finish(end).await;
    forget_session(&shared, &client_id, number);
}

fn forget_session(shared: &MqttShared, client_id: &str, number: u64) {
    let mut sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
    if sessions.get(client_id).is_some_and(|s| s.number == number) {
        sessions.remove(client_id);
    }
}

/// Whether a session owned by `owner` (`None`: anonymous) may be used by `by`.
fn may_use(owner: Option<Option<i64>>, by: Option<i64>) -> bool {
    owner.is_none_or(|o| o == by)
}

/// Takes the client id for this connection, taking over a live connection of the same user (MQTT
/// 3.1.1 §3.1.4). A session belongs to the user who created it: when another user (or anonymous, or
/// a user when anonymous owns it) holds it live or stored persistent, the CONNECT is refused with
/// the CONNACK code returned and nothing changes. Otherwise returns the stored record as it was.
async fn claim_session(
    shared: &MqttShared,
    client_id: &str,
    owner: Option<i64>,
    clean: bool,
    number: u64,
    kill: Arc<Notify>,
) -> Result<Option<StoredSession>, u8> {
    let hub = &shared.hub;
    let stored = hub.mqtt_session(client_id).await.map_err(|_| connack::SERVER_UNAVAILABLE)?;
    if stored.as_ref().is_some_and(|s| !s.clean && !may_use(s.owner, owner)) {
        return Err(connack::NOT_AUTHORIZED);
    }
    let previous = {
        let mut sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(client_id).is_some_and(|live| live.owner != owner) {
            return Err(connack::NOT_AUTHORIZED);
        }
        sessions.insert(client_id.to_string(), LiveSession { number, kill, owner })
    };
    // The record changes hands where ownership matters: a persistent session is made, or a clean one
    // replaces a persistent one. The claim is one conditional statement, so a connection of another
    // user that stored its session since the read above keeps it.
    let persistent_before = stored.as_ref().is_some_and(|s| !s.clean);
    if !clean || persistent_before {
        let claimed = hub.mqtt_session_claim(client_id, owner, clean).await;
        if !matches!(claimed, Ok(true)) {
            let mut sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if sessions.get(client_id).is_some_and(|s| s.number == number) {
                match previous {
                    Some(p) => sessions.insert(client_id.to_string(), p),
                    None => sessions.remove(client_id),
                };
            }
            return Err(if claimed.is_err() { connack::SERVER_UNAVAILABLE } else { connack::NOT_AUTHORIZED });
        }
    }
    if let Some(old) = previous {
        old.kill.notify_one();
    }
    Ok(stored)
}

/// The client id to use, or `None` to refuse it. An empty id gets a generated one when the session is
/// clean (persistent sessions need a stable id).
fn client_id_for(connect: &Connect, max_len: usize) -> Option<String> {
    let id = connect.client_id.as_str();
    if id.is_empty() {
        if !connect.clean_session {
            return None;
        }
        use rand::Rng;
        let n: u64 = rand::thread_rng().gen();
        return Some(format!("hivehub-{n:016x}"));
    }
    if id.len() > max_len || id.contains(['/', '+', '#', '@']) {
        return None;
    }
    Some(id.to_string())
}

/// CONNECT credentials: login/password of a hub user, or an access JWT as the password.
async fn authenticate(shared: &MqttShared, connect: &Connect, peer: Option<std::net::IpAddr>) -> Result<Principal, u8> {
    let hub = &shared.hub;
    let password = connect.password.as_ref().map(|p| String::from_utf8_lossy(p).into_owned());
    match (&connect.username, password) {
        (_, Some(pw)) if looks_like_jwt(&pw) => {
            hub.principal_from_token(&pw).await.map_err(|_| connack::BAD_USERNAME_OR_PASSWORD)
        }
        (Some(login), Some(pw)) => {
            hub.password_principal(login, &pw, peer).await.map_err(|_| connack::BAD_USERNAME_OR_PASSWORD)
        }
        (Some(_), None) | (None, Some(_)) => Err(connack::BAD_USERNAME_OR_PASSWORD),
        (None, None) if hub.settings.mqtt.allow_anonymous => Ok(Principal::anonymous()),
        (None, None) => Err(connack::NOT_AUTHORIZED),
    }
}

fn looks_like_jwt(s: &str) -> bool {
    s.starts_with("eyJ") && s.matches('.').count() == 2
}

async fn write_packet(writer: &mut Writer, p: &Packet) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    codec::encode(p, &mut out);
    writer.write_all(&out).await
}

/// The router's serialisation of a publish is the only public way to read its QoS and packet id.
fn from_router(p: &rq::Publish) -> Publish {
    let raw = p.serialize();
    let header = raw[0];
    let pkid = u16::from_be_bytes([raw[1], raw[2]]);
    Publish {
        dup: false,
        qos: ((header >> 1) & 3).min(1),
        retain: header & 1 != 0,
        topic: String::from_utf8_lossy(&p.topic).into_owned(),
        pkid,
        payload: p.payload.clone(),
    }
}

/// ... and the only public way to build one with a QoS and packet id.
fn to_router(p: &Publish) -> rq::Publish {
    let mut raw = BytesMut::with_capacity(5 + p.topic.len() + p.payload.len());
    raw.put_u8(0x30 | (p.qos << 1) | p.retain as u8);
    raw.put_u16(p.pkid);
    raw.put_u16(p.topic.len() as u16);
    raw.put_slice(p.topic.as_bytes());
    raw.put_slice(&p.payload);
    rq::Publish::deserialize(raw.freeze())
}

/// `$` topics are the broker's own (3.1.1 §4.7.2): the router drops a link that subscribes to one,
/// so such a filter is refused here. `$share...` is the router's shared subscription, not one of them.
fn broker_filter(filter: &str) -> bool {
    filter.starts_with('$') && !filter.starts_with("$share")
}

fn suback_code(c: &rq::SubscribeReasonCode) -> u8 {
    match c {
        rq::SubscribeReasonCode::QoS0 | rq::SubscribeReasonCode::Success(rq::QoS::AtMostOnce) => 0,
        rq::SubscribeReasonCode::QoS1 | rq::SubscribeReasonCode::Success(_) => 1,
        rq::SubscribeReasonCode::QoS2 => 1,
        _ => SUBACK_FAILURE,
    }
}

impl Conn {
    fn settings(&self) -> &crate::config::MqttSettings {
        &self.shared.hub.settings.mqtt
    }

    fn queue(&mut self, p: &Packet) {
        codec::encode(p, &mut self.wbuf);
    }

    /// Writes what is queued; a client that does not take it within the write timeout is cut off.
    async fn flush(&mut self) -> Result<(), End> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_secs(self.settings().write_timeout_secs);
        match tokio::time::timeout(timeout, self.writer.write_all(&self.wbuf)).await {
            Ok(Ok(())) => {
                self.wbuf.clear();
                if self.wbuf.capacity() > 64 * 1024 {
                    self.wbuf = BytesMut::new();
                }
                Ok(())
            }
            Ok(Err(_)) => Err(End::Network),
            Err(_) => Err(End::NotReading),
        }
    }

    fn allocate_pkid(&mut self) -> Option<u16> {
        if self.inflight.len() >= self.settings().max_inflight {
            return None;
        }
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return Some(self.next_pkid);
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
                    self.inflight.insert(id, Origin::Hub);
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

    /// The connection loop; returns why it ended.
    async fn serve(&mut self) -> End {
        let mut deadline = self.keepalive.map(|k| Instant::now() + k);
        let anonymous_limit = Duration::from_secs(self.settings().anonymous_timeout_secs);
        let anonymous_deadline = (!anonymous_limit.is_zero()).then(|| Instant::now() + anonymous_limit);
        loop {
            // Only a session still anonymous has a deadline to authenticate.
            let anonymous_deadline = anonymous_deadline.filter(|_| !self.session.principal.is_authenticated());
            let me = self.session.principal.user_id();
            let step = tokio::select! {
                read = self.reader.read_buf(&mut self.rbuf) => match read {
                    Ok(0) | Err(_) => Err(End::Network),
                    Ok(_) => {
                        deadline = self.keepalive.map(|k| Instant::now() + k);
                        self.read_packets().await
                    }
                },
                n = next_from_router(&mut self.link) => match n {
                    Ok(Some(n)) => self.on_router_notification(n).await,
                    Ok(None) => Ok(()),
                    Err(_) => Err(End::TakenOver),
                },
                Some(d) = self.deliveries.recv() => self.deliver(d).await,
                r = next_revocation_for(&mut self.revocations, me) => self.on_revocation(r.err()).await,
                _ = self.overflow.notified() => Err(End::NotReading),
                _ = sleep_until_opt(deadline) => Err(End::KeepAlive),
                _ = sleep_until_opt(anonymous_deadline) => Err(End::AnonymousTimeout),
                _ = self.kill.notified() => Err(End::TakenOver),
                _ = self.shared.hub.shutting_down() => Err(End::Shutdown),
            };
            // Take whatever else is ready before writing, so a burst goes out in one write.
            let step = match step {
                Ok(()) => self.drain_ready().await,
                err => err,
            };
            if let Err(end) = step {
                // Answer what was already decided (e.g. a PUBACK) before closing, if the client reads.
                let _ = self.flush().await;
                return end;
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            // Large reads leave a large buffer behind; idle connections should stay small.
            if self.rbuf.is_empty() && self.rbuf.capacity() > 16 * 1024 {
                self.rbuf = BytesMut::with_capacity(256);
            }
        }
    }

    /// Handles router notifications and hub deliveries that are ready now, without waiting.
    async fn drain_ready(&mut self) -> Result<(), End> {
        use futures_util::FutureExt;
        for _ in 0..DRAIN_BATCH {
            match next_from_router(&mut self.link).now_or_never() {
                Some(Ok(Some(n))) => self.on_router_notification(n).await?,
                Some(Ok(None)) => {}
                Some(Err(_)) => return Err(End::TakenOver),
                None => break,
            }
        }
        self.apply_revocations().await?;
        self.session.refresh_visibility().await;
        for _ in 0..DRAIN_BATCH {
            match self.deliveries.try_recv() {
                Ok(d) => self.push(d)?,
                Err(_) => break,
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

    /// A revocation of this session's user was announced (`None`), or some were missed (`Lagged`):
    /// the session re-reads its user. Gone or inactive ends the connection; otherwise the fresh
    /// rights (role, assignments) apply from now on.
    async fn on_revocation(&mut self, missed: Option<RecvError>) -> Result<(), End> {
        match missed {
            None => self.recheck_principal().await,
            Some(RecvError::Lagged(_)) => self.recheck_principal().await,
            Some(RecvError::Closed) => Ok(()),
        }
    }

    async fn recheck_principal(&mut self) -> Result<(), End> {
        // Anonymous sessions have nothing to lose.
        if !self.session.principal.is_authenticated() {
            return Ok(());
        }
        match self.shared.hub.recheck_principal(&self.session.principal).await {
            Some(fresh) => {
                self.session.principal = fresh;
                self.session.refresh_visibility().await;
                Ok(())
            }
            None => Err(End::Revoked),
        }
    }

    /// Applies revocations already announced, so nothing is served with rights the user has lost
    /// (the select loop may pick a request or a delivery before the revocation).
    async fn apply_revocations(&mut self) -> Result<(), End> {
        let me = self.session.principal.user_id();
        let mut concerned = false;
        loop {
            match self.revocations.try_recv() {
                Ok(id) => concerned |= me == Some(id),
                Err(TryRecvError::Lagged(_)) => concerned = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if concerned {
            self.recheck_principal().await?;
        }
        Ok(())
    }

    async fn read_packets(&mut self) -> Result<(), End> {
        loop {
            let max = self.settings().max_packet_bytes;
            match codec::decode(&mut self.rbuf, max) {
                Ok(Some(p)) => self.handle(p).await?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::info!(client_id = %self.client_id, error = ?e, "closing MQTT connection: bad packet");
                    return Err(End::Protocol);
                }
            }
        }
    }

    async fn handle(&mut self, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::PubAck(pkid) => {
                match self.inflight.remove(&pkid) {
                    Some(Origin::Router(router_pkid)) => {
                        let ack = rq::PubAck { pkid: router_pkid, reason: rq::PubAckReason::Success };
                        self.send_to_router(rq::Packet::PubAck(ack, None)).await?;
                    }
                    Some(Origin::Hub) | None => {}
                }
                Ok(())
            }
            Packet::PubRel(pkid) => {
                if self.router_qos2.remove(&pkid) {
                    let rel = rq::PubRel { pkid, reason: rq::PubRelReason::Success };
                    return self.send_to_router(rq::Packet::PubRel(rel, None)).await;
                }
                // Ours, or an id nobody knows (e.g. resent after a reconnect, when the publish was
                // already released): either way it is complete (3.1.1 §4.3.3).
                self.own_qos2.remove(&pkid);
                self.queue(&Packet::PubComp(pkid));
                Ok(())
            }
            Packet::PubRec(_) | Packet::PubComp(_) => Ok(()),
            Packet::Subscribe { pkid, filters } => self.on_subscribe(pkid, filters).await,
            Packet::Unsubscribe { pkid, filters } => self.on_unsubscribe(pkid, filters).await,
            Packet::PingReq => {
                self.queue(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect => Err(End::Clean),
            // A second CONNECT, or packets only a server sends.
            _ => Err(End::Protocol),
        }
    }

    async fn send_to_router(&mut self, p: rq::Packet) -> Result<(), End> {
        self.open_link().await?;
        let Some((tx, _)) = self.link.as_mut() else { return Err(End::TakenOver) };
        tx.send(p).await.map(|_| ()).map_err(|_| End::TakenOver)
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
                    self.router_qos2.insert(p.pkid);
                }
                return self.send_to_router(rq::Packet::Publish(to_router(&p), None)).await;
            }
            self.refuse_publish("plain topic not allowed", &p);
        } else if p.topic == "dh/request" {
            self.on_request(&p).await;
        } else {
            self.on_direct_publish(&p).await;
        }
        match p.qos {
            1 => self.queue(&Packet::PubAck(p.pkid)),
            2 => {
                // Handled exactly once, now; PUBREL is answered with PUBCOMP.
                self.own_qos2.insert(p.pkid);
                self.queue(&Packet::PubRec(p.pkid));
            }
            _ => {}
        }
        Ok(())
    }

    /// `dh/request`: runs the action on this session and answers on `dh/response/<action>@<id>`
    /// when the client subscribed to that topic. QoS1 requests are acknowledged after the action
    /// (so after any insert it made is committed).
    async fn on_request(&mut self, p: &Publish) {
        let request: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
        let response = actions::handle(&mut self.session, &request).await;
        self.follow_owner().await;
        let action = request.get("action").and_then(Value::as_str).unwrap_or("error");
        let topic = format!("dh/response/{action}@{}", self.client_id);
        if let Some(sub_qos) = self.response_topics.get(&topic).copied() {
            let payload = Bytes::from(response.to_string());
            if !self.publish_from_hub(topic, payload, p.qos.min(sub_qos)) {
                tracing::debug!(client_id = %self.client_id, "response dropped: too many unacknowledged publishes");
            }
        }
    }

    /// After `authenticate` the session belongs to the user it authenticated as: from then on only
    /// that user may take it over.
    async fn follow_owner(&mut self) {
        let user = self.session.principal.user_id();
        if user == self.owner {
            return;
        }
        self.owner = user;
        {
            let mut sessions = self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(live) = sessions.get_mut(&self.client_id).filter(|s| s.number == self.number) {
                live.owner = user;
            }
        }
        if self.persistent {
            if let Err(e) = self.shared.hub.mqtt_session_set_owner(&self.client_id, user).await {
                tracing::warn!(client_id = %self.client_id, error = %e, "cannot store the MQTT session owner");
            }
        }
    }

    /// A publish to `dh/notification|command|command_update/...`: an insert (or update) when the
    /// session may make it; dropped and counted otherwise. Never echoed to subscribers: they get the
    /// hub's push of the stored message.
    async fn on_direct_publish(&mut self, p: &Publish) {
        let Some(target) = topics::parse_direct(&p.topic) else {
            self.refuse_publish("not a publishable dh/ topic", p);
            return;
        };
        if !self.session.principal.is_authenticated() {
            self.refuse_publish("anonymous session", p);
            return;
        }
        let body: Value = match serde_json::from_slice(&p.payload) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                self.refuse_publish("payload is not a JSON object", p);
                return;
            }
        };
        let hub = self.shared.hub.clone();
        let principal = self.session.principal.clone();
        // The topic's network and type levels must match the device.
        match hub.mqtt_topic_names_device(&target.device_id, target.network, target.device_type).await {
            Ok(true) => {}
            _ => {
                self.refuse_publish("topic does not match the device", p);
                return;
            }
        }
        let mut body = body;
        let result = match target.kind {
            EventKind::Notification => {
                if body.get("notification").is_none_or(Value::is_null) {
                    if let Some(n) = &target.name {
                        body["notification"] = json!(n);
                    }
                }
                hub.notification_insert(&principal, &target.device_id, &body).await.map(|_| ())
            }
            EventKind::CommandInsert => {
                if body.get("command").is_none_or(Value::is_null) {
                    if let Some(n) = &target.name {
                        body["command"] = json!(n);
                    }
                }
                hub.command_insert(&principal, &target.device_id, &body).await.map(|_| ())
            }
            EventKind::CommandUpdate => {
                let id = body.get("id").or_else(|| body.get("commandId")).and_then(crate::hub::fields::as_i64);
                match id {
                    Some(id) => hub.command_update(&principal, &target.device_id, id, &body).await.map(|_| ()),
                    None => Err(crate::error::ApiError::bad_request("Command id is wrong or empty")),
                }
            }
        };
        if let Err(e) = result {
            self.refuse_publish(&e.message, p);
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
        self.pending_subacks.insert(pkid, codes);
        self.send_to_router(rq::Packet::Subscribe(rq::Subscribe { pkid, filters: plain }, None)).await
    }

    /// One `dh/` filter: its SUBACK code.
    async fn subscribe_dh(&mut self, filter: &str, qos: u8, restoring: bool) -> u8 {
        let authenticated = self.session.principal.is_authenticated();
        match topics::parse_filter(filter) {
            DhFilter::Response { action, client_id } => {
                let anonymous_ok = action == "token" || action == "authenticate";
                if client_id != self.client_id || !(authenticated || anonymous_ok) {
                    return SUBACK_FAILURE;
                }
                self.response_topics.insert(filter.to_string(), qos);
                qos
            }
            DhFilter::Events { kind, request, private_to } => {
                if !authenticated || private_to.as_ref().is_some_and(|c| *c != self.client_id) {
                    return SUBACK_FAILURE;
                }
                if let Some(old) = self.dh_subs.remove(filter) {
                    self.drop_engine_subscription(&old);
                }
                let wire_kind = if kind == EventKind::CommandUpdate { EventKind::CommandInsert } else { kind };
                match self.session.subscribe(wire_kind, &request).await {
                    Ok(out) => {
                        let id = out.get("subscriptionId").and_then(Value::as_u64).unwrap_or_default();
                        self.dh_by_id.insert(id, filter.to_string());
                        self.dh_subs.insert(filter.to_string(), DhSub { id, qos, kind, private: private_to.is_some() });
                        if self.persistent && !restoring {
                            let now = crate::time::now_ms();
                            let stored = self.shared.hub.mqtt_subscription_put(&self.client_id, filter, qos, now);
                            if let Err(e) = stored.await {
                                tracing::warn!(client_id = %self.client_id, error = %e, "cannot store MQTT subscription");
                            }
                        }
                        qos
                    }
                    Err(e) => {
                        tracing::debug!(client_id = %self.client_id, filter, error = %e, "MQTT subscription refused");
                        SUBACK_FAILURE
                    }
                }
            }
            DhFilter::Forbidden => SUBACK_FAILURE,
        }
    }

    fn drop_engine_subscription(&mut self, sub: &DhSub) {
        self.dh_by_id.remove(&sub.id);
        let notification = sub.kind == EventKind::Notification;
        let _ = self.session.unsubscribe(notification, &json!({"subscriptionId": sub.id}));
    }

    async fn on_unsubscribe(&mut self, pkid: u16, filters: Vec<String>) -> Result<(), End> {
        let mut plain = Vec::new();
        for f in filters {
            if f.starts_with("dh/") {
                self.response_topics.remove(&f);
                if let Some(sub) = self.dh_subs.remove(&f) {
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
        self.send_to_router(rq::Packet::Unsubscribe(rq::Unsubscribe { pkid, filters: plain }, None)).await
    }

    /// What the router sends this client: publishes on plain topics and acknowledgements.
    async fn on_router_notification(&mut self, n: Notification) -> Result<(), End> {
        let packet = match Option::<rq::Packet>::from(n) {
            Some(p) => p,
            None => {
                // Unschedule: the router waits for us to ask for more.
                if let Some((_, rx)) = &self.link {
                    rx.wake().await.map_err(|_| End::TakenOver)?;
                }
                return Ok(());
            }
        };
        match packet {
            rq::Packet::Publish(p, _) => {
                let mut p = from_router(&p);
                if p.qos == 1 {
                    let Some(id) = self.allocate_pkid() else {
                        return Err(End::NotReading);
                    };
                    self.inflight.insert(id, Origin::Router(p.pkid));
                    p.pkid = id;
                }
                self.queue(&Packet::Publish(p));
            }
            rq::Packet::PubAck(a, _) => self.queue(&Packet::PubAck(a.pkid)),
            rq::Packet::PubRec(a, _) => self.queue(&Packet::PubRec(a.pkid)),
            rq::Packet::PubComp(a, _) => self.queue(&Packet::PubComp(a.pkid)),
            rq::Packet::SubAck(a, _) => {
                let mut router_codes = a.return_codes.iter().map(suback_code);
                let codes = match self.pending_subacks.remove(&a.pkid) {
                    Some(ours) => ours
                        .into_iter()
                        .map(|c| c.unwrap_or_else(|| router_codes.next().unwrap_or(SUBACK_FAILURE)))
                        .collect(),
                    None => router_codes.collect(),
                };
                self.queue(&Packet::SubAck { pkid: a.pkid, codes });
            }
            rq::Packet::UnsubAck(a, _) => self.queue(&Packet::UnsubAck(a.pkid)),
            rq::Packet::Disconnect(..) => return Err(End::TakenOver),
            _ => {}
        }
        Ok(())
    }

    /// A persistent session gets its stored `dh/` subscriptions back, then the commands it is owed:
    /// created after it subscribed, not confirmed by `command/update`, not expired.
    async fn restore(&mut self) -> Result<(), End> {
        if !self.persistent || !self.session.principal.is_authenticated() {
            return Ok(());
        }
        let hub = self.shared.hub.clone();
        let stored = hub.mqtt_subscriptions(&self.client_id).await.unwrap_or_default();
        for sub in stored {
            if self.subscribe_dh(&sub.filter, sub.qos, true).await == SUBACK_FAILURE {
                // The principal lost the right to it: forget it.
                let _ = hub.mqtt_subscription_delete(&self.client_id, &sub.filter).await;
                continue;
            }
            let DhFilter::Events { kind: EventKind::CommandInsert, request, private_to } =
                topics::parse_filter(&sub.filter)
            else {
                continue;
            };
            let Some(engine_id) = self.dh_subs.get(&sub.filter).map(|s| s.id) else { continue };
            let Ok(owed) = hub.mqtt_owed_commands(&self.session.principal, &request, sub.since).await else {
                continue;
            };
            for c in owed {
                if !self.replayed.insert(c.id) {
                    continue;
                }
                let json = serde_json::to_string(&c).unwrap_or_default();
                let message = crate::hub::bus::Message::Command(Arc::new(c));
                let mut topic = topics::message_topic(EventKind::CommandInsert, &message);
                if private_to.is_some() {
                    topic.push('@');
                    topic.push_str(&self.client_id);
                }
                let payload = Bytes::from(push_text(EventKind::CommandInsert, engine_id, &json));
                if !self.publish_from_hub(topic, payload, sub.qos) {
                    return Err(End::NotReading);
                }
            }
            self.flush().await?;
        }
        Ok(())
    }

    /// Opens the router link if it is not open yet.
    async fn open_link(&mut self) -> Result<(), End> {
        if self.link.is_some() {
            return Ok(());
        }
        // Building a link waits for the router thread's answer: keep that off the async workers.
        let (shared, client_id, clean) = (self.shared.clone(), self.client_id.clone(), !self.persistent);
        let opened = tokio::task::spawn_blocking(move || (shared.open_link)(&client_id, clean))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match opened {
            Ok((tx, rx, _connack)) => {
                self.link = Some((tx, rx));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(client_id = %self.client_id, error = %e, "MQTT router refused the link");
                Err(End::TakenOver)
            }
        }
    }

    /// Pushes one commit's matching messages, each once even when several filters match it.
    fn push(&mut self, d: Delivery) -> Result<(), End> {
        let Some(filter) = self.dh_by_id.get(&d.subscription_id) else {
            return Ok(());
        };
        let Some(sub) = self.dh_subs.get(filter) else {
            return Ok(());
        };
        let (qos, private) = (sub.qos, sub.private);
        for ev in &d.events {
            if !self.session.may_see(ev) {
                continue;
            }
            let key = (ev.kind, ev.id(), ev.cursor());
            if ev.kind == EventKind::CommandInsert && self.replayed.contains(&ev.id()) {
                continue;
            }
            if !self.recent_set.insert(key) {
                continue;
            }
            self.recent.push_back(key);
            if self.recent.len() > RECENT_EVENTS {
                if let Some(old) = self.recent.pop_front() {
                    self.recent_set.remove(&old);
                }
            }
            let mut topic = topics::event_topic(ev);
            if private {
                topic.push('@');
                topic.push_str(&self.client_id);
            }
            let payload = Bytes::from(push_text(ev.kind, d.subscription_id, &ev.json));
            if !self.publish_from_hub(topic, payload, qos) {
                return Err(End::NotReading);
            }
        }
        Ok(())
    }

    /// Ends the session: last will unless the client said goodbye, then the router link.
    async fn finish(mut self, end: End) {
        match end {
            End::Clean | End::Shutdown | End::TakenOver => {}
            ref other => tracing::info!(client_id = %self.client_id, reason = ?other, "MQTT connection closed"),
        }
        // A revoked user has no right left to publish, its last will included.
        let will = !matches!(end, End::Clean | End::Revoked) && self.will.is_some();
        let reason = end.reason();
        // After a takeover the session lives on in the new connection: it is not a disconnect.
        if end != End::TakenOver {
            let client_id = self.client_id.clone();
            let principal = self.session.principal.clone();
            self.shared.presence.record(PresenceEvent {
                record: SessionRecord::Disconnected { client_id: client_id.clone(), at: crate::time::now_ms(), reason },
                notification: principal
                    .is_authenticated()
                    .then(|| json!({"clientId": client_id, "reason": reason, "will": will})),
                principal,
            });
        }
        if will {
            if let Some(will) = self.will.take() {
                let p = Publish {
                    dup: false,
                    qos: will.qos.min(1),
                    retain: will.retain,
                    topic: will.topic,
                    pkid: 0,
                    payload: will.payload,
                };
                if p.topic.starts_with("dh/") {
                    self.on_direct_publish(&Publish { qos: 0, ..p }).await;
                } else if self.plain_allowed() {
                    let _ = self.send_to_router(rq::Packet::Publish(to_router(&Publish { qos: 0, ..p }), None)).await;
                }
            }
        }
        if self.link.is_some() {
            let bye = rq::Disconnect { reason_code: rq::DisconnectReasonCode::NormalDisconnection };
            let _ = self.send_to_router(rq::Packet::Disconnect(bye, None)).await;
        }
        let _ = self.writer.shutdown().await;
    }
}

impl End {
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
        }
    }
}

/// Waits for a revocation of user `me` (`Ok`) or for missed ones (`Err(Lagged)`); others' are
/// skipped here, so they cost no wake-up of the connection loop. Never completes when closed.
async fn next_revocation_for(rx: &mut broadcast::Receiver<i64>, me: Option<i64>) -> Result<(), RecvError> {
    loop {
        match rx.recv().await {
            Ok(id) if Some(id) == me => return Ok(()),
            Ok(_) => {}
            Err(RecvError::Closed) => return std::future::pending().await,
            Err(lagged) => return Err(lagged),
        }
    }
}

/// The router's next notification, or never when no link is open.
async fn next_from_router(
    link: &mut Option<(LinkTx, LinkRx)>,
) -> Result<Option<Notification>, rumqttd::local::LinkError> {
    match link {
        Some((_, rx)) => rx.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
