//! The `dh/` topics, which never reach the router: requests run the shared action table and answer on
//! response topics, direct publishes are inserts stored before they are acknowledged, event filters
//! are subscriptions to the hub's engine (stored for persistent sessions, and restored with the
//! commands they are owed on reconnect).
//!
//! While the database is away, a QoS 1/2 publish is retried for `[mqtt] database_grace_secs`
//! before the connection gives up on it (`Grace`); the packets that follow it wait (`Waiting`).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{ended, Conn, End, Reader, Writer};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::hub::bus::{Delivery, EventKind, SubscriptionId};
use crate::hub::dispatch::{self as actions, push_text};
use crate::hub::signal::Signal;
use crate::hub::Hub;
use crate::mqtt::codec::{self, Packet, Publish, SUBACK_FAILURE};
use crate::mqtt::topics::{self, DhFilter, DirectPublish};
use crate::store::writer::{Committed, WriteOp};

/// Builds the `Waiting` view of a connection from its fields, so the future it awaits may borrow
/// other fields (the session).
macro_rules! waiting {
    ($conn:ident) => {
        Waiting {
            reader: &mut $conn.reader,
            rbuf: &mut $conn.rbuf,
            writer: &mut $conn.writer,
            wbuf: &mut $conn.wbuf,
            held: &mut $conn.held,
            max_packet: $conn.shared.hub.settings.mqtt.max_packet_bytes,
            write_timeout: Duration::from_secs($conn.shared.hub.settings.mqtt.write_timeout_secs),
        }
    };
}

/// Recently pushed events remembered, so overlapping filters deliver a message once.
const RECENT_EVENTS: usize = 512;

/// A `dh/` event subscription of this connection.
pub(super) struct DhSub {
    pub id: SubscriptionId,
    pub qos: u8,
    pub private: bool,
}

impl Conn {
    /// `dh/request`: runs the action on this session and answers on `dh/response/<action>@<id>`
    /// when the client subscribed to that topic. QoS1 requests are acknowledged after the action
    /// (so after any insert it made is committed); not at all when the database was unavailable.
    /// A QoS 1/2 request answered 503 is run again within the grace period, as the client would
    /// send it again after reconnecting; only the last answer is published.
    pub(super) async fn on_request(&mut self, p: &Publish) -> Result<(), End> {
        let request: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
        let mut response = actions::handle(&mut self.session, &request).await;
        let mut grace = Grace::new(self.settings().database_grace_secs, p.qos);
        while is_unavailable(&response) {
            let Some(pause) = grace.next_pause() else { break };
            self.pause(pause).await?;
            response = waiting!(self).until(actions::handle(&mut self.session, &request)).await?;
        }
        self.follow_owner().await;
        let action = request.get("action").and_then(Value::as_str).unwrap_or("error");
        let topic = format!("dh/response/{action}@{}", self.client_id);
        if let Some(sub_qos) = self.rare.as_ref().and_then(|r| r.response_topics.get(&topic)).copied() {
            let payload = Bytes::from(response.to_string());
            if !self.publish_from_hub(topic, payload, p.qos.min(sub_qos)) {
                tracing::debug!(client_id = %self.client_id, "response dropped: too many unacknowledged publishes");
            }
        }
        unacknowledged_when_unavailable(p, is_unavailable(&response))
    }

    /// A publish to `dh/notification|command|command_update/...`: an insert (or update) when the
    /// session may make it; dropped and counted otherwise. Never echoed to subscribers: they get the
    /// hub's push of the stored message. While the database is away a QoS 1/2 publish is tried again
    /// within the grace period, the packets after it held back, so acknowledgements keep their order.
    pub(super) async fn on_direct_publish(&mut self, p: &Publish) -> Result<(), End> {
        let Some(write) = self.direct_write(p) else { return Ok(()) };
        let hub = self.shared.hub.clone();
        let result = write.run(&hub).await;
        self.settle_direct(p, &write, result).await
    }

    /// Direct publishes that arrived together: each is checked and queued for the writer right
    /// after the one before, without waiting for its commit, and then they are acknowledged in
    /// order as their commits come back. Rows queued one after the other commit in that order, so
    /// the stored order and the acknowledgement order are the publish order, as one at a time —
    /// but a connection's burst shares one commit and one wake-up instead of paying one each.
    /// Takes the following direct publishes from the held packets or the read buffer (at most
    /// `PIPELINED_PUBLISHES`, and none once a revocation is announced: those go the single way,
    /// which applies it first).
    pub(super) async fn on_direct_publishes(&mut self, first: Publish) -> Result<(), End> {
        let hub = self.shared.hub.clone();
        let mut queued: VecDeque<(Publish, Queued)> = VecDeque::new();
        let mut bad_packet = None;
        let mut next = Some(first);
        while let Some(p) = next.take() {
            let q = match self.direct_write(&p) {
                None => Queued::Refused,
                Some(write) => match write.op(&hub).await {
                    Ok(op) => match hub.writer.enqueue(op).await {
                        Ok(committed) => Queued::Writing(write, committed),
                        Err(e) => Queued::Failed(write, e),
                    },
                    Err(e) => Queued::Failed(write, e),
                },
            };
            // A check that failed (the database away, most likely) ends the burst: the checks of
            // the publishes after it would wait for the database too, answering no PINGREQ meanwhile.
            let failed = matches!(q, Queued::Failed(..));
            queued.push_back((p, q));
            if !failed && queued.len() < PIPELINED_PUBLISHES && self.revocations.is_empty() {
                next = self.next_direct_publish(&mut bad_packet);
            }
        }
        for (p, q) in queued {
            match q {
                Queued::Refused => {}
                Queued::Writing(write, committed) => {
                    let result = committed.await.map(|_| ());
                    self.settle_direct(&p, &write, result).await?;
                }
                Queued::Failed(write, e) => self.settle_direct(&p, &write, Err(e)).await?,
            }
            self.acknowledge(&p);
        }
        if let Some(e) = bad_packet {
            tracing::info!(client_id = %self.client_id, error = ?e, "closing MQTT connection: bad packet");
            return Err(End::Protocol);
        }
        Ok(())
    }

    /// The next packet when it is a direct publish (from the held packets first, which came before
    /// anything still in the read buffer); any other packet is left held, to be handled next.
    fn next_direct_publish(&mut self, bad_packet: &mut Option<codec::DecodeError>) -> Option<Publish> {
        let is_direct = |p: &Packet| matches!(p, Packet::Publish(p) if is_direct_publish(p));
        if let Some(front) = self.held.front() {
            return if is_direct(front) {
                match self.held.pop_front() {
                    Some(Packet::Publish(p)) => Some(p),
                    _ => None,
                }
            } else {
                None
            };
        }
        let max_packet = self.settings().max_packet_bytes;
        loop {
            return match codec::decode(&mut self.rbuf, max_packet) {
                Ok(Some(Packet::Publish(p))) if is_direct_publish(&p) => Some(p),
                Ok(Some(other)) => {
                    self.held.push_back(other);
                    None
                }
                Ok(None) if self.read_ready() => continue,
                Ok(None) => None,
                Err(e) => {
                    *bad_packet = Some(e);
                    None
                }
            };
        }
    }

    /// Reads what the socket already holds, without waiting; whether it read anything. The
    /// connection loop reads into a small buffer (idle connections stay small), so a client's
    /// window of publishes arrives a packet or two per read; without this a burst was one publish
    /// long and each connection stored one publish per commit (mqtt-fleet bench: 11k/s). An end of
    /// stream or an error is left for the connection loop's next read, which sees it again.
    fn read_ready(&mut self) -> bool {
        use futures_util::FutureExt;
        self.make_read_room();
        matches!(self.reader.read_buf(&mut self.rbuf).now_or_never(), Some(Ok(n)) if n > 0)
    }

    /// What becomes of a direct publish after its first try: while the database is away a QoS 1/2
    /// publish is tried again within the grace period (the packets after it held back, so
    /// acknowledgements keep their order); a refused one is dropped and counted.
    async fn settle_direct(
        &mut self,
        p: &Publish,
        write: &DirectWrite,
        first: Result<(), ApiError>,
    ) -> Result<(), End> {
        let hub = self.shared.hub.clone();
        let mut result = first;
        let mut grace = Grace::new(self.settings().database_grace_secs, p.qos);
        while result.as_ref().is_err_and(|e| e.status == StatusCode::SERVICE_UNAVAILABLE) {
            let Some(pause) = grace.next_pause() else { break };
            self.pause(pause).await?;
            result = waiting!(self).until(write.run(&hub)).await?;
        }
        if result.is_ok() {
            crate::metrics::received(write.target.kind, crate::metrics::Transport::Mqtt)
        }
        match result {
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
                if p.qos == 0 {
                    self.refuse_publish("database unavailable", p);
                }
                unacknowledged_when_unavailable(p, true)
            }
            Err(e) => {
                self.refuse_publish(&e.message, p);
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// What a direct publish asks the hub to store; `None` (dropped and counted) when it cannot be
    /// one: not a publishable topic, an anonymous session, or not a JSON object.
    fn direct_write(&mut self, p: &Publish) -> Option<DirectWrite> {
        let Some(target) = topics::parse_direct(&p.topic) else {
            self.refuse_publish("not a publishable dh/ topic", p);
            return None;
        };
        if !self.session.principal.is_authenticated() {
            self.refuse_publish("anonymous session", p);
            return None;
        }
        match serde_json::from_slice(&p.payload) {
            Ok(body @ Value::Object(_)) => {
                Some(DirectWrite { principal: self.session.principal.clone(), target, body })
            }
            _ => {
                self.refuse_publish("payload is not a JSON object", p);
                None
            }
        }
    }

    /// Waits `pause` before the next try to store, answering PINGREQs meanwhile; a takeover or the
    /// hub's shutdown ends the wait (and the connection) at once.
    async fn pause(&mut self, pause: Duration) -> Result<(), End> {
        let (signal, hub) = (self.signal.clone(), self.shared.hub.clone());
        waiting!(self).until(pause_unless_ended(pause, signal, hub)).await?
    }

    /// One `dh/` filter: its SUBACK code.
    pub(super) async fn subscribe_dh(&mut self, filter: &str, qos: u8, restoring: bool) -> u8 {
        let authenticated = self.session.principal.is_authenticated();
        match topics::parse_filter(filter) {
            DhFilter::Response { action, client_id } => {
                let anonymous_ok = action == "token" || action == "authenticate";
                if client_id != self.client_id || !(authenticated || anonymous_ok) {
                    return SUBACK_FAILURE;
                }
                self.rare().response_topics.insert(filter.to_string(), qos);
                qos
            }
            DhFilter::Events { kind, request, private_to } => {
                if !authenticated || private_to.as_ref().is_some_and(|c| *c != self.client_id) {
                    return SUBACK_FAILURE;
                }
                if let Some(old) = self.rare().dh_subs.remove(filter) {
                    self.drop_engine_subscription(&old);
                }
                let wire_kind = if kind == EventKind::CommandUpdate { EventKind::CommandInsert } else { kind };
                match self.session.subscribe(wire_kind, &request).await {
                    Ok(id) => {
                        let rare = self.rare();
                        rare.dh_by_id.insert(id, filter.to_string());
                        rare.dh_subs.insert(filter.to_string(), DhSub { id, qos, private: private_to.is_some() });
                        if self.persistent && !restoring {
                            let now = crate::time::now_ms();
                            let stored = self.shared.hub.mqtt_subscription_put(&self.client_id, filter, qos, now);
                            if let Err(e) = stored.await {
                                // A persistent subscription that is not stored would silently miss
                                // the commands owed while offline: refuse it instead, live and stored.
                                tracing::warn!(client_id = %self.client_id, error = %e, "cannot store MQTT subscription");
                                if let Some(sub) = self.rare().dh_subs.remove(filter) {
                                    self.drop_engine_subscription(&sub);
                                }
                                let _ = self.shared.hub.mqtt_subscription_delete(&self.client_id, filter).await;
                                return SUBACK_FAILURE;
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

    pub(super) fn drop_engine_subscription(&mut self, sub: &DhSub) {
        self.rare().dh_by_id.remove(&sub.id);
        self.session.end_subscription(sub.id);
    }

    /// A persistent session gets its stored `dh/` subscriptions back, then the commands it is owed:
    /// created after it subscribed, not confirmed by `command/update`, not expired.
    pub(super) async fn restore(&mut self) -> Result<(), End> {
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
            let Some(engine_id) = self.rare().dh_subs.get(&sub.filter).map(|s| s.id) else { continue };
            let Ok(owed) = hub.mqtt_owed_commands(&self.session.principal, &request, sub.since).await else {
                continue;
            };
            for c in owed {
                if !self.rare().replayed.insert(c.id) {
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

    /// Pushes one commit's matching messages, each once even when several filters match it.
    pub(super) fn push(&mut self, d: Delivery) -> Result<(), End> {
        let Some(rare) = self.rare.as_deref() else { return Ok(()) };
        let Some(filter) = rare.dh_by_id.get(&d.subscription_id) else {
            return Ok(());
        };
        let Some(sub) = rare.dh_subs.get(filter) else {
            return Ok(());
        };
        let (qos, private) = (sub.qos, sub.private);
        for ev in &d.events {
            if !self.session.may_see(ev) {
                continue;
            }
            let key = (ev.kind, ev.id(), ev.cursor());
            let rare = self.rare();
            if ev.kind == EventKind::CommandInsert && rare.replayed.contains(&ev.id()) {
                continue;
            }
            if !rare.recent_set.insert(key) {
                continue;
            }
            rare.recent.push_back(key);
            if rare.recent.len() > RECENT_EVENTS {
                if let Some(old) = rare.recent.pop_front() {
                    rare.recent_set.remove(&old);
                }
            }
            let mut topic = topics::event_topic(ev);
            if private {
                topic.push('@');
                topic.push_str(&self.client_id);
            }
            let payload = Bytes::from(push_text(ev.kind, d.subscription_id, &ev.json));
            crate::metrics::delivered(ev.kind, crate::metrics::Transport::Mqtt, 1);
            if !self.publish_from_hub(topic, payload, qos) {
                return Err(End::NotReading);
            }
        }
        Ok(())
    }
}

/// A publish the database could not take (within the grace period): QoS 0 is lost as QoS 0 may be;
/// QoS 1 and 2 end the connection unacknowledged, so the client sends them again after reconnecting
/// (never acknowledged and lost).
fn unacknowledged_when_unavailable(p: &Publish, unavailable: bool) -> Result<(), End> {
    if unavailable && p.qos > 0 {
        tracing::warn!(topic = %p.topic, "database unavailable: publish not acknowledged, closing the connection");
        return Err(End::StoreUnavailable);
    }
    Ok(())
}

fn is_unavailable(response: &Value) -> bool {
    response.get("code").and_then(Value::as_u64) == Some(503)
}

/// Direct publishes one connection queues for the writer before waiting for the first commit.
const PIPELINED_PUBLISHES: usize = 256;

/// A `dh/` publish that is an insert or update (not `dh/request`).
pub(super) fn is_direct_publish(p: &Publish) -> bool {
    p.topic.starts_with("dh/") && p.topic != "dh/request"
}

/// A direct publish of a burst (`on_direct_publishes`), between queueing and acknowledging.
enum Queued {
    /// Dropped and counted already; only acknowledged.
    Refused,
    Writing(DirectWrite, Committed),
    /// Its check or queueing failed (a 503 is tried again when settled).
    Failed(DirectWrite, ApiError),
}

/// One direct publish's write, kept so it can be tried again while the database is away.
struct DirectWrite {
    principal: Principal,
    target: DirectPublish,
    body: Value,
}

impl DirectWrite {
    /// One try: the row to write, then the write.
    async fn run(&self, hub: &Hub) -> Result<(), ApiError> {
        let op = self.op(hub).await?;
        hub.writer.write(op).await.map(|_| ())
    }

    /// The topic's network and type levels must match the device, then the service layer checks
    /// and builds the insert (or update). A 503 is the database being away; any other error refuses
    /// the publish.
    async fn op(&self, hub: &Hub) -> Result<WriteOp, ApiError> {
        let t = &self.target;
        match hub.mqtt_topic_names_device(&t.device_id, t.network, t.device_type).await {
            Ok(true) => {}
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => return Err(e),
            _ => return Err(ApiError::bad_request("topic does not match the device")),
        }
        let body = &self.body;
        let p = &self.principal;
        match t.kind {
            EventKind::Notification => {
                let body = name_from_topic(body, "notification", &t.name);
                hub.notification_op(p, &t.device_id, &body).await
            }
            EventKind::CommandInsert => {
                let body = name_from_topic(body, "command", &t.name);
                hub.command_op(p, &t.device_id, &body).await
            }
            EventKind::CommandUpdate => {
                let id = body.get("id").or_else(|| body.get("commandId")).and_then(crate::hub::fields::as_i64);
                match id {
                    Some(id) => hub.command_update_op(p, &t.device_id, id, body).await,
                    None => Err(ApiError::bad_request("Command id is wrong or empty")),
                }
            }
        }
    }
}

/// The topic's last level names the notification or command when the body does not (the body is
/// kept for a retry, so a copy gets the name; a body that names it is used as it is).
fn name_from_topic<'a>(body: &'a Value, field: &str, name: &Option<String>) -> std::borrow::Cow<'a, Value> {
    match (body.get(field).is_none_or(Value::is_null), name) {
        (true, Some(n)) => {
            let mut named = body.clone();
            named[field] = json!(n);
            std::borrow::Cow::Owned(named)
        }
        _ => std::borrow::Cow::Borrowed(body),
    }
}

/// First and longest pause between two tries to store a publish while the database is away.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// How long a QoS 1/2 `dh/` publish the database cannot take is tried again: until
/// `[mqtt] database_grace_secs` after its first failure, with pauses growing from `FIRST_PAUSE` to
/// `LONGEST_PAUSE`. QoS 0 and a grace of 0 get no second try.
struct Grace {
    deadline: Option<Instant>,
    pause: Duration,
}

impl Grace {
    fn new(grace_secs: u64, qos: u8) -> Grace {
        let deadline = (qos > 0 && grace_secs > 0).then(|| Instant::now() + Duration::from_secs(grace_secs));
        Grace { deadline, pause: FIRST_PAUSE }
    }

    /// The pause before the next try; `None` once the grace period is over. The last pause ends at
    /// the deadline, so the last try is made then. A try in progress at the deadline is awaited,
    /// never abandoned: it may still commit, and must then be acknowledged.
    fn next_pause(&mut self) -> Option<Duration> {
        let left = self.deadline?.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let pause = self.pause.min(left);
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        Some(pause)
    }
}

async fn pause_unless_ended(pause: Duration, signal: Arc<Signal>, hub: Arc<Hub>) -> Result<(), End> {
    tokio::select! {
        _ = tokio::time::sleep(pause) => Ok(()),
        end = ended(&signal) => Err(end),
        _ = hub.shutting_down() => Err(End::Shutdown),
    }
}

/// Packets read ahead while a publish waits for the database; beyond them the socket is left unread
/// (the client is slowed by TCP), so the wait costs bounded memory.
const HELD_PACKETS: usize = 32;

/// The socket while a publish waits for the database. The client may go on sending: PINGREQs are
/// answered at once — a PINGRESP acknowledges nothing, so no acknowledgement is reordered, and the
/// client's keepalive does not give up on a connection that is only waiting. Every other packet is
/// held back and handled after the publish, in order (`Conn::read_packets`).
struct Waiting<'a> {
    reader: &'a mut Reader,
    rbuf: &'a mut BytesMut,
    writer: &'a mut Writer,
    wbuf: &'a mut BytesMut,
    held: &'a mut VecDeque<Packet>,
    max_packet: usize,
    write_timeout: Duration,
}

impl Waiting<'_> {
    /// Awaits `work`, answering PINGREQs meanwhile. Ends early only when the client is gone or
    /// sends a malformed packet (the publish is then unacknowledged, as with any lost connection).
    async fn until<F: Future>(mut self, work: F) -> Result<F::Output, End> {
        tokio::pin!(work);
        // Answers already decided (e.g. PUBACKs of earlier publishes) go out before the wait.
        self.take_packets()?;
        self.flush().await?;
        loop {
            let room = self.held.len() < HELD_PACKETS && self.rbuf.len() <= self.max_packet;
            tokio::select! {
                out = &mut work => return Ok(out),
                read = self.reader.read_buf(self.rbuf), if room => match read {
                    Ok(0) | Err(_) => return Err(End::Network),
                    Ok(_) => {
                        self.take_packets()?;
                        self.flush().await?;
                    }
                },
            }
        }
    }

    /// Moves complete packets from the read buffer to the held queue, answering PINGREQs.
    fn take_packets(&mut self) -> Result<(), End> {
        while self.held.len() < HELD_PACKETS {
            match codec::decode(self.rbuf, self.max_packet) {
                Ok(Some(Packet::PingReq)) => codec::encode(&Packet::PingResp, self.wbuf),
                Ok(Some(p)) => self.held.push_back(p),
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::debug!(error = ?e, "closing MQTT connection: bad packet");
                    return Err(End::Protocol);
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.write_timeout, self.writer.write_all(self.wbuf)).await {
            Ok(Ok(())) => {
                self.wbuf.clear();
                Ok(())
            }
            Ok(Err(_)) => Err(End::Network),
            Err(_) => Err(End::NotReading),
        }
    }
}
