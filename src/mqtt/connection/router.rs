//! The bridge to rumqttd's router for plain (non-`dh/`) topics: the link, opened on first use,
//! what the router sends this client, and the mapping of the router's packet ids into the one id
//! space the client sees.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol as rq;
use rumqttd::Notification;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::{ended, Conn, End};
use crate::mqtt::codec::{Packet, Publish, SUBACK_FAILURE};
use crate::mqtt::flow::{log_size, Admitted};

/// Bytes queued for the client past which a connection waiting to publish stops taking more from
/// the router (until its socket takes them).
const ADMIT_WAIT_BUFFER: usize = 64 * 1024;

/// Where an outgoing QoS1 publish came from, so its PUBACK goes back there.
pub(super) enum Origin {
    Router(u16),
    Hub,
}

/// The router's serialisation of a publish is the only public way to read its QoS and packet id.
pub(super) fn from_router(p: &rq::Publish) -> Publish {
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
pub(in crate::mqtt) fn to_router(p: &Publish) -> rq::Publish {
    let mut raw = BytesMut::with_capacity(5 + p.topic.len() + p.payload.len());
    raw.put_u8(0x30 | (p.qos << 1) | p.retain as u8);
    raw.put_u16(p.pkid);
    raw.put_u16(p.topic.len() as u16);
    raw.put_slice(p.topic.as_bytes());
    raw.put_slice(&p.payload);
    rq::Publish::deserialize(raw.freeze())
}

/// `$` topics are the broker's own (3.1.1 §4.7.2): the router drops a link that subscribes to one,
/// so such a filter is refused here. So is `$share/...` (MQTT 5 shared subscriptions, which the
/// router would serve from one cursor per group, outside the flow control of `flow`).
pub(super) fn broker_filter(filter: &str) -> bool {
    filter.starts_with('$')
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
    /// Hands a plain publish (authorized) to this instance's router and, in cluster mode, to the
    /// relay for the other instances' routers.
    /// Waits first until every online matching subscriber has room for it (`flow`): meanwhile this
    /// connection reads nothing more from its client, and the router's PUBACK is not sent.
    pub(super) async fn route_plain(&mut self, p: &Publish) -> Result<(), End> {
        let size = log_size(p.topic.len(), p.payload.len());
        // Boxed, so waiting (rare) is not part of every publish's state.
        let admitted = match self.shared.flow.try_admit(&p.topic, size) {
            Some(admitted) => admitted,
            None => Box::pin(self.admit_plain(&p.topic, size)).await?,
        };
        if let Err(end) = self.send_to_router(rq::Packet::Publish(to_router(p), None)).await {
            admitted.release();
            return Err(end);
        }
        if let Some(relay) = &self.shared.relay {
            Box::pin(relay.relay(p)).await;
        }
        Ok(())
    }

    pub(super) async fn send_to_router(&mut self, p: rq::Packet) -> Result<(), End> {
        if self.link.is_none() {
            // Boxed: once per connection, and not part of every publish's state.
            Box::pin(self.open_link()).await?;
        }
        let Some((tx, _)) = self.link.as_deref_mut() else { return Err(self.link_failed()) };
        match tx.send(p).await {
            Ok(_) => Ok(()),
            Err(_) => Err(self.link_failed()),
        }
    }

    /// Why the connection ends when its router link fails. The router drops the link of a client id
    /// that a newer connection linked again — a takeover, which the newer connection already claimed
    /// in `shared.sessions` before opening its link. Otherwise the link failed on its own, and the
    /// session ends with that reason (recorded, `$device-disconnected`), not as a takeover.
    pub(super) fn link_failed(&self) -> End {
        let sessions = self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let still_ours = sessions.get(&self.client_id).is_some_and(|s| s.number == self.number);
        link_end(!still_ours)
    }

    /// Waits for room for a plain publish (`flow`). Meanwhile the client is not read, but what the
    /// router has for it is still taken and written, as `flush` does (stalled included): it may be
    /// the one subscriber the publish waits for, and two connections publishing to each other must
    /// not wait for each other forever.
    async fn admit_plain(&mut self, topic: &str, size: usize) -> Result<Admitted, End> {
        let flow = self.shared.flow.clone();
        let stall = Duration::from_millis(self.settings().stall_ms.max(1));
        let write_timeout = Duration::from_secs(self.settings().write_timeout_secs);
        let mut progress = Instant::now();
        loop {
            let now = Instant::now();
            let waiting = !self.wbuf.is_empty();
            self.stalled = waiting && now.duration_since(progress) >= stall;
            if waiting && now.duration_since(progress) >= write_timeout {
                self.stalled = false;
                return Err(End::NotReading);
            }
            if !waiting {
                progress = now;
            }
            // Take more from the router only while the socket keeps up (or to drop while stalled).
            let take = self.wbuf.len() < ADMIT_WAIT_BUFFER || self.stalled;
            let next_check = match waiting {
                true => progress + if self.stalled { write_timeout } else { stall },
                false => now + write_timeout,
            };
            let step = tokio::select! {
                admitted = flow.admit(topic, size) => {
                    self.stalled = false;
                    return Ok(admitted);
                }
                n = next_from_router(&mut self.link), if take => match n {
                    Ok(Some(n)) => self.on_router_notification(n).await,
                    Ok(None) => Ok(()),
                    Err(_) => Err(self.link_failed()),
                },
                w = self.writer.write(&self.wbuf), if waiting => match w {
                    Ok(0) | Err(_) => Err(End::Network),
                    Ok(n) => {
                        bytes::Buf::advance(&mut self.wbuf, n);
                        progress = Instant::now();
                        Ok(())
                    }
                },
                _ = tokio::time::sleep_until(next_check) => Ok(()),
                end = ended(&self.signal) => Err(end),
                _ = self.shared.hub.shutting_down() => Err(End::Shutdown),
            };
            if let Err(end) = step {
                self.stalled = false;
                return Err(end);
            }
        }
    }

    /// The router's message `f` left its log for this client: the lag of one matching subscription
    /// shrinks (retained messages, `cursor` `None`, come from elsewhere).
    fn taken_from_log(&mut self, f: &rumqttd::Forward) {
        if f.cursor.is_none() {
            return;
        }
        let Ok(topic) = std::str::from_utf8(&f.publish.topic) else { return };
        let size = log_size(f.publish.topic.len(), f.publish.payload.len());
        let Some(rare) = self.rare.as_deref() else { return };
        let mut matching = rare.plain_subs.iter().filter(|(filter, _)| rq::matches(topic, filter));
        let Some((_, first)) = matching.next() else { return };
        // With overlapping filters each copy comes from one of their logs: take it off one that
        // still owes it.
        let lag = std::iter::once(first).chain(matching.map(|(_, l)| l)).find(|l| l.owed() >= size).unwrap_or(first);
        lag.taken(size);
    }

    /// What the router sends this client: publishes on plain topics and acknowledgements. While the
    /// client's socket is stalled (`flush`), QoS 0 publishes are dropped and counted.
    pub(super) async fn on_router_notification(&mut self, n: Notification) -> Result<(), End> {
        if let Notification::Forward(f) = &n {
            self.taken_from_log(f);
        }
        let packet = match Option::<rq::Packet>::from(n) {
            Some(p) => p,
            None => {
                // Unschedule: the router waits for us to ask for more.
                if let Some((_, rx)) = self.link.as_deref() {
                    if Box::pin(rx.wake()).await.is_err() {
                        return Err(self.link_failed());
                    }
                }
                return Ok(());
            }
        };
        match packet {
            rq::Packet::Publish(p, _) => {
                let mut p = from_router(&p);
                if self.stalled && p.qos == 0 {
                    self.rare().dropped_deliveries += 1;
                    self.shared.hub.stats.mqtt_dropped_deliveries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    crate::metrics::dropped(crate::metrics::DropReason::MqttSubscriberStalled);
                    return Ok(());
                }
                if p.qos == 1 {
                    let Some(id) = self.allocate_pkid() else {
                        return Err(End::NotReading);
                    };
                    self.rare().inflight.insert(id, Origin::Router(p.pkid));
                    p.pkid = id;
                }
                self.queue(&Packet::Publish(p));
            }
            rq::Packet::PubAck(a, _) => self.queue(&Packet::PubAck(a.pkid)),
            rq::Packet::PubRec(a, _) => self.queue(&Packet::PubRec(a.pkid)),
            rq::Packet::PubComp(a, _) => self.queue(&Packet::PubComp(a.pkid)),
            rq::Packet::SubAck(a, _) => {
                let router_codes: Vec<u8> = a.return_codes.iter().map(suback_code).collect();
                let (ours, plain) = self.rare().pending_subacks.remove(&a.pkid).unwrap_or_default();
                // Counted from now on: the router has placed the subscriptions' cursors.
                for (filter, code) in plain.into_iter().zip(&router_codes) {
                    if *code != SUBACK_FAILURE && !self.rare().plain_subs.iter().any(|(f, _)| *f == filter) {
                        let lag = self.shared.flow.subscribe(&filter);
                        self.rare().plain_subs.push((filter, lag));
                    }
                }
                let mut router_codes = router_codes.into_iter();
                let codes = match ours.is_empty() {
                    false => ours
                        .into_iter()
                        .map(|c| c.unwrap_or_else(|| router_codes.next().unwrap_or(SUBACK_FAILURE)))
                        .collect(),
                    true => router_codes.collect(),
                };
                self.queue(&Packet::SubAck { pkid: a.pkid, codes });
            }
            rq::Packet::UnsubAck(a, _) => self.queue(&Packet::UnsubAck(a.pkid)),
            rq::Packet::Disconnect(..) => return Err(self.link_failed()),
            _ => {}
        }
        Ok(())
    }

    /// Withdraws plain subscriptions from flow control (all of them when `filters` is `None`).
    pub(super) fn withdraw_plain(&mut self, filters: Option<&[String]>) {
        let Some(rare) = self.rare.as_deref_mut() else { return };
        let flow = &self.shared.flow;
        rare.plain_subs.retain(|(filter, lag)| {
            let withdraw = filters.is_none_or(|fs| fs.contains(filter));
            if withdraw {
                flow.unsubscribe(filter, lag);
            }
            !withdraw
        });
    }

    /// Opens the router link if it is not open yet.
    pub(super) async fn open_link(&mut self) -> Result<(), End> {
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
                self.link = Some(Box::new((tx, rx)));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(client_id = %self.client_id, error = %e, "MQTT router refused the link");
                Err(self.link_failed())
            }
        }
    }
}

/// How a failed router link ends a connection: as a takeover when a newer connection holds the client
/// id, else as a failure of the link.
fn link_end(taken_over: bool) -> End {
    match taken_over {
        true => End::TakenOver,
        false => End::RouterLinkFailed,
    }
}

/// The router's next notification, or never when no link is open.
pub(super) async fn next_from_router(
    link: &mut Option<Box<(LinkTx, LinkRx)>>,
) -> Result<Option<Notification>, rumqttd::local::LinkError> {
    match link.as_deref_mut() {
        Some((_, rx)) => rx.next().await,
        None => std::future::pending().await,
    }
}

/// `next_from_router` for the connection loop's wait: the router's future is boxed, so the state an
/// idle connection keeps does not grow by it (most connections have no link).
pub(super) async fn wait_for_router(
    link: &mut Option<Box<(LinkTx, LinkRx)>>,
) -> Result<Option<Notification>, rumqttd::local::LinkError> {
    match link.as_deref_mut() {
        Some((_, rx)) => Box::pin(rx.next()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_link_is_a_takeover_only_when_a_newer_connection_holds_the_client_id() {
        assert_eq!(link_end(true), End::TakenOver);
        assert_eq!(link_end(false), End::RouterLinkFailed);
        // Only a takeover goes unrecorded; a failed link is reported with its own reason.
        assert_eq!(End::RouterLinkFailed.reason(), "router-link-failed");
        assert!(End::RouterLinkFailed.recorded());
        assert!(!End::TakenOver.recorded());
    }
}
