//! The plain-topic relay of cluster mode (PostgreSQL): every plain (non-`dh/`) publish a client hands
//! to this instance's router — its last will included — also reaches the routers of the other
//! instances sharing the database, and retained messages are kept cluster-wide.
//!
//! Out: connections queue their publishes in a bounded outbox; one sender task drains it in batches
//! and sends each batch with one statement (`pg_notify` over an array) — so a round trip carries
//! hundreds of messages, not one — and, in the same transaction, upserts the batch's retained
//! messages into `mqtt_retained`. A message whose notification would pass PostgreSQL's 8000-byte
//! limit is parked in `mqtt_plain_relay` and only its id is notified. When the outbox is full, QoS 0
//! publishes are dropped and counted; QoS 1 ones (and retained ones) wait: the publisher is slowed.
//!
//! In: a listener hands what other nodes sent to this router through one router link of the relay's
//! own, skipping this node's own messages (they were routed here already), so nothing loops. Before
//! the MQTT listener accepts anyone, the router is loaded with every retained message in the database.
//!
//! Why NOTIFY and not a message server (NATS): the database is already the one service every instance
//! needs (one more would be deployed, secured, monitored and failed over beside it), a notification
//! reaches every listening instance in commit order — which is what keeps retained messages in step
//! with `mqtt_retained` — and batched it carries far more than a hub's plain traffic needs: on a loaded
//! 2-core machine (debug build) about 23,600 notes/s at 256 per statement against 760/s at one per
//! statement, and the relay kept pace with the local router (figures: `notify_relay_figures` and
//! `notify_channel_figures` in `tests/api/cluster_plain.rs`, run with `--ignored --nocapture`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol as rq;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::codec::Publish;
use super::connection::to_router;
use super::flow::{log_size, PlainFlow};
use super::LinkFactory;
use crate::error::StartupError;
use crate::hub::Hub;
use crate::store::retained::{PlainListener, RelayBatch, RetainedMessage};

/// The relay's router link. The codec refuses a NUL in client ids, so no client can take it over.
const LINK_CLIENT_ID: &str = "\0hivehub-relay";
/// Messages waiting in the outbox at most...
const OUTBOX_MESSAGES: usize = 4096;
/// ... and their bytes at most (topic, payload and a per-message overhead).
const OUTBOX_BYTES: usize = 16 << 20;
const MESSAGE_OVERHEAD: usize = 256;
/// Messages sent in one statement at most.
const BATCH: usize = 256;
/// PostgreSQL refuses a NOTIFY payload of 8000 bytes or more.
const NOTIFY_LIMIT: usize = 8000;
/// Parked messages are read within milliseconds; those older than this are deleted.
const PARKED_TTL: Duration = Duration::from_secs(60);
const EXPIRE_EVERY: Duration = Duration::from_secs(10);
/// Attempts at sending a batch before it is dropped (the database is away).
const SEND_ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The sending side, shared by every connection of this instance.
pub struct Relay {
    outbox: mpsc::Sender<Outgoing>,
    /// Bytes the outbox may still take.
    budget: Arc<Semaphore>,
    dropped: Arc<AtomicU64>,
}

/// A publish waiting in the outbox; its permit returns its bytes to the budget once sent.
struct Outgoing {
    topic: String,
    payload: Bytes,
    qos: u8,
    retain: bool,
    _permit: OwnedSemaphorePermit,
}

impl Outgoing {
    /// Whether the message changes the retained message of its topic. rumqttd's router clears it on
    /// any empty payload, retained or not, so the database follows the routers it mirrors.
    fn changes_retained(&self) -> bool {
        self.retain || self.payload.is_empty()
    }
}

/// A notification's text: JSON (ASCII only, see `ascii_only`), either a whole message or the id of
/// a parked one.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Note {
    /// The origin node.
    #[serde(rename = "n")]
    node: String,
    /// The origin's sequence number: also keeps two equal messages of one batch apart (PostgreSQL
    /// delivers equal payloads of one transaction once).
    #[serde(rename = "s")]
    seq: u64,
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    parked: Option<i64>,
    #[serde(rename = "t", default)]
    topic: String,
    #[serde(rename = "q", default)]
    qos: u8,
    #[serde(rename = "r", default)]
    retain: bool,
    /// Base64 of the payload.
    #[serde(rename = "p", default)]
    payload: String,
}

impl Note {
    fn text(&self) -> String {
        ascii_only(serde_json::to_string(self).unwrap_or_default())
    }

    /// The publish this note carries, if it is a well-formed plain publish (the database is shared,
    /// so what comes out of it is checked like client input).
    fn publish(&self) -> Option<Publish> {
        let topic = &self.topic;
        let plain = !topic.is_empty() && topic.len() <= u16::MAX as usize && !topic.starts_with("dh/");
        if !plain || topic.contains(['+', '#', '\0']) {
            return None;
        }
        let payload = BASE64.decode(&self.payload).ok()?;
        Some(Publish {
            dup: false,
            qos: self.qos.min(1),
            retain: self.retain,
            topic: topic.clone(),
            pkid: 0,
            payload: payload.into(),
        })
    }
}

/// JSON with every non-ASCII character written as `\uXXXX`: the text reaches listeners byte for byte
/// (the store's PostgreSQL text escape is undone only on reads, not on notifications).
fn ascii_only(json: String) -> String {
    if json.is_ascii() {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 32);
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0u16; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Starts the relay on PostgreSQL (`None` on SQLite): listens, loads the retained messages into the
/// router — before the caller starts accepting clients — then relays both ways until shutdown.
pub async fn start(
    hub: &Arc<Hub>,
    open_link: LinkFactory,
    flow: Arc<PlainFlow>,
) -> Result<Option<Relay>, StartupError> {
    let failed = |e: crate::error::ApiError| StartupError(format!("cannot start the plain-topic relay: {}", e.message));
    // Listen first: a retained message changed between the load and the listen would be missed; one
    // changed after the listen and before the load comes twice, in commit order, which ends the same.
    let Some(listener) = hub.plain_relay_listen().await.map_err(failed)? else { return Ok(None) };
    let retained = hub.retained_messages().await.map_err(failed)?;
    let mut link =
        RelayLink::open(open_link, flow).await.map_err(|e| StartupError(format!("relay router link: {e}")))?;
    for m in &retained {
        let p = Publish {
            dup: false,
            qos: m.qos,
            retain: true,
            topic: m.topic.clone(),
            pkid: 0,
            payload: m.payload.clone().into(),
        };
        link.publish(p).await;
    }
    tracing::info!(retained = retained.len(), "plain-topic relay started");
    let node = hub.cluster.node_id.to_string();
    let (outbox, queued) = mpsc::channel(OUTBOX_MESSAGES);
    let dropped = Arc::new(AtomicU64::new(0));
    tokio::spawn(receive(hub.clone(), node.clone(), listener, link));
    tokio::spawn(send(hub.clone(), node, queued, dropped.clone()));
    Ok(Some(Relay { outbox, budget: Arc::new(Semaphore::new(OUTBOX_BYTES)), dropped }))
}

impl Relay {
    /// Queues a publish this instance's router has taken. QoS 1 and retained publishes wait for room;
    /// QoS 0 ones are dropped (and counted) when the outbox is full.
    pub async fn relay(&self, p: &Publish) {
        let cost = (MESSAGE_OVERHEAD + p.topic.len() + p.payload.len()).min(OUTBOX_BYTES) as u32;
        let wait = p.qos > 0 || p.retain || p.payload.is_empty();
        let permit = match wait {
            true => self.budget.clone().acquire_many_owned(cost).await.ok(),
            false => self.budget.clone().try_acquire_many_owned(cost).ok(),
        };
        let Some(permit) = permit else { return count_dropped(&self.dropped, 1) };
        let m = Outgoing {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            qos: p.qos.min(1),
            retain: p.retain,
            _permit: permit,
        };
        let queued = match wait {
            true => self.outbox.send(m).await.is_ok(),
            false => self.outbox.try_send(m).is_ok(),
        };
        if !queued {
            count_dropped(&self.dropped, 1);
        }
    }
}

/// Counts publishes that did not reach the other instances; logs at powers of two, so a flood of
/// drops is visible without a log line each.
fn count_dropped(dropped: &AtomicU64, n: u64) {
    let before = dropped.fetch_add(n, Ordering::Relaxed);
    let after = before + n;
    if n > 0 && (before == 0 || after.ilog2() > before.ilog2()) {
        tracing::warn!(
            dropped = after,
            "plain publishes not relayed to the other instances (outbox full or database away)"
        );
    }
}

/// The sender task: drains the outbox in batches until every connection is gone; expires parked
/// messages on the side.
async fn send(hub: Arc<Hub>, node: String, mut queued: mpsc::Receiver<Outgoing>, dropped: Arc<AtomicU64>) {
    let mut seq = 0u64;
    let mut expire = tokio::time::interval(EXPIRE_EVERY);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            n = queued.recv_many(&mut batch, BATCH) => if n == 0 { break },
            _ = expire.tick() => {
                if *hub.shutdown.borrow() {
                    continue;
                }
                if let Err(e) = hub.plain_relay_expire(PARKED_TTL).await {
                    tracing::debug!(error = %e.message, "expiring parked relay messages failed");
                }
                continue;
            }
        }
        let (out, lost) = encode(&hub, &node, &mut seq, &batch).await;
        let sent = send_batch(&hub, &out).await;
        count_dropped(&dropped, lost + if sent { 0 } else { batch.len() as u64 - lost });
        batch.clear();
    }
}

/// A batch's notes and retained changes; parks what is too large to notify. Returns how many
/// messages could not be parked.
async fn encode(hub: &Hub, node: &str, seq: &mut u64, batch: &[Outgoing]) -> (RelayBatch, u64) {
    let mut out = RelayBatch::default();
    let mut lost = 0;
    for m in batch {
        *seq += 1;
        if m.changes_retained() {
            out.retained.push(RetainedMessage { topic: m.topic.clone(), payload: m.payload.to_vec(), qos: m.qos });
        }
        let note = Note {
            node: node.to_string(),
            seq: *seq,
            parked: None,
            topic: m.topic.clone(),
            qos: m.qos,
            retain: m.retain,
            payload: BASE64.encode(&m.payload),
        };
        let text = note.text();
        if text.len() < NOTIFY_LIMIT {
            out.notes.push(text);
            continue;
        }
        match hub.plain_relay_park(&text).await {
            Ok(id) => {
                let reference = Note { node: node.to_string(), seq: *seq, parked: Some(id), ..Note::default() };
                out.notes.push(reference.text());
            }
            Err(e) => {
                tracing::warn!(error = %e.message, topic = %m.topic, "cannot park a large plain publish for the relay");
                lost += 1;
            }
        }
    }
    (out, lost)
}

/// Sends a batch, retrying while the database is briefly away; `false` when it was given up.
async fn send_batch(hub: &Hub, out: &RelayBatch) -> bool {
    for attempt in 1..=SEND_ATTEMPTS {
        match hub.plain_relay_send(out).await {
            Ok(()) => return true,
            Err(e) if attempt == SEND_ATTEMPTS => {
                tracing::warn!(error = %e.message, messages = out.notes.len(), "plain-topic relay gave up a batch");
            }
            Err(_) => tokio::time::sleep(RETRY_PAUSE * attempt).await,
        }
    }
    false
}

/// The receiving task: other nodes' publishes into this router, until shutdown.
async fn receive(hub: Arc<Hub>, node: String, mut listener: PlainListener, mut link: RelayLink) {
    loop {
        let text = tokio::select! {
            t = listener.recv() => t,
            _ = hub.shutting_down() => break,
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                // The listener reconnects on the next call; what was sent meanwhile is lost.
                tracing::warn!(error = %e.message, "plain-topic relay lost its listener; reconnecting");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let Some(note) = read_note(&hub, &node, &text).await else { continue };
        match note.publish() {
            Some(p) => link.publish(p).await,
            None => tracing::debug!(node = %note.node, "relayed plain publish is not a valid plain publish; skipped"),
        }
    }
    link.close().await;
}

/// The note of another node (`None`: this node's own, or unreadable), its parked message read back.
async fn read_note(hub: &Hub, node: &str, text: &str) -> Option<Note> {
    let note: Note = serde_json::from_str(text).ok()?;
    if note.node == node {
        return None;
    }
    let Some(id) = note.parked else { return Some(note) };
    match hub.plain_relay_parked(id).await {
        Ok(Some(parked)) => serde_json::from_str(&parked).ok(),
        Ok(None) => {
            tracing::warn!(id, "a parked plain publish expired before it was read; skipped");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e.message, id, "cannot read a parked plain publish; skipped");
            None
        }
    }
}

/// The relay's router link: publishes other nodes' messages (QoS 1 with ids of its own, so QoS 1
/// subscribers get them at QoS 1); a task drains the router's acknowledgements. Reopened if the
/// router drops it.
struct RelayLink {
    open_link: LinkFactory,
    /// Other nodes' publishes wait for room like local ones.
    flow: Arc<PlainFlow>,
    tx: Option<LinkTx>,
    next_pkid: u16,
}

impl RelayLink {
    async fn open(open_link: LinkFactory, flow: Arc<PlainFlow>) -> Result<RelayLink, String> {
        let mut link = RelayLink { open_link, flow, tx: None, next_pkid: 0 };
        link.connect().await?;
        Ok(link)
    }

    async fn connect(&mut self) -> Result<(), String> {
        let open = self.open_link.clone();
        // Building a link waits for the router thread's answer: keep that off the async workers.
        let (tx, rx, _connack) = tokio::task::spawn_blocking(move || open(LINK_CLIENT_ID, true))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))?;
        tokio::spawn(drain_acks(rx));
        self.tx = Some(tx);
        Ok(())
    }

    async fn publish(&mut self, mut p: Publish) {
        if p.qos > 0 {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            p.pkid = self.next_pkid;
        }
        let admitted = self.flow.admit(&p.topic, log_size(p.topic.len(), p.payload.len())).await;
        for _ in 0..2 {
            if self.tx.is_none() {
                if let Err(e) = self.connect().await {
                    tracing::warn!(error = %e, "plain-topic relay cannot open its router link");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            }
            let Some(tx) = self.tx.as_mut() else { continue };
            match tx.send(rq::Packet::Publish(to_router(&p), None)).await {
                Ok(_) => return,
                Err(_) => self.tx = None,
            }
        }
        admitted.release();
        tracing::warn!(topic = %p.topic, "plain-topic relay could not hand a publish to the router");
    }

    /// Leaves the router (its acknowledgement task ends with the link).
    async fn close(&mut self) {
        if let Some(mut tx) = self.tx.take() {
            let bye = rq::Disconnect { reason_code: rq::DisconnectReasonCode::NormalDisconnection };
            let _ = tx.send(rq::Packet::Disconnect(bye, None)).await;
        }
    }
}

/// Reads what the router sends the relay's link (acknowledgements) until the link closes.
async fn drain_acks(mut rx: LinkRx) {
    loop {
        match rx.next().await {
            Ok(Some(n)) => {
                if Option::<rq::Packet>::from(n).is_none() && rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(topic: &str, payload: &[u8]) -> Note {
        Note {
            node: "hub-ä".into(),
            seq: 7,
            topic: topic.into(),
            qos: 1,
            retain: true,
            payload: BASE64.encode(payload),
            ..Note::default()
        }
    }

    #[test]
    fn notes_are_ascii_json_that_reads_back_as_the_publish() {
        let n = note("home/Küche/\u{FFFF}/😀", b"\x00\xffbytes");
        let text = n.text();
        assert!(text.is_ascii(), "{text}");
        assert!(!text.contains('\n'), "notes are newline-separated in a batch");
        let back: Note = serde_json::from_str(&text).unwrap();
        assert_eq!(back, n);
        let p = back.publish().unwrap();
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.qos, p.retain),
            ("home/Küche/\u{FFFF}/😀", &b"\x00\xffbytes"[..], 1, true)
        );
    }

    #[test]
    fn what_is_not_a_plain_publish_is_not_routed() {
        for topic in ["", "dh/notification/1/1/d/x", "a/+/b", "a/#", "a\0b"] {
            assert!(note(topic, b"x").publish().is_none(), "{topic:?}");
        }
        let mut bad = note("a/b", b"x");
        bad.payload = "not base64!".into();
        assert!(bad.publish().is_none());
        assert!(serde_json::from_str::<Note>("{\"s\":1}").is_err(), "a note names its node");
    }

    #[test]
    fn a_reference_to_a_parked_message_stays_small() {
        let r = Note { node: "n".into(), seq: 1, parked: Some(42), ..Note::default() };
        assert_eq!(r.text(), r#"{"n":"n","s":1,"k":42,"t":"","q":0,"r":false,"p":""}"#);
    }

    #[test]
    fn drops_are_counted() {
        let dropped = AtomicU64::new(0);
        count_dropped(&dropped, 1);
        count_dropped(&dropped, 0);
        count_dropped(&dropped, 5);
        assert_eq!(dropped.load(Ordering::Relaxed), 6);
    }
}
