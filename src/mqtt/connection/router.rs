//! The bridge to rumqttd's router for plain (non-`dh/`) topics: the link, opened on first use,
//! what the router sends this client, and the mapping of the router's packet ids into the one id
//! space the client sees.

use bytes::{BufMut, BytesMut};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol as rq;
use rumqttd::Notification;

use super::{Conn, End};
use crate::mqtt::codec::{Packet, Publish, SUBACK_FAILURE};

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
/// so such a filter is refused here. `$share...` is the router's shared subscription, not one of them.
pub(super) fn broker_filter(filter: &str) -> bool {
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
    /// Hands a plain publish (authorized) to this instance's router and, in cluster mode, to the
    /// relay for the other instances' routers.
    pub(super) async fn route_plain(&mut self, p: &Publish) -> Result<(), End> {
        self.send_to_router(rq::Packet::Publish(to_router(p), None)).await?;
        if let Some(relay) = &self.shared.relay {
            relay.relay(p).await;
        }
        Ok(())
    }

    pub(super) async fn send_to_router(&mut self, p: rq::Packet) -> Result<(), End> {
        self.open_link().await?;
        let Some((tx, _)) = self.link.as_mut() else { return Err(self.link_failed()) };
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

    /// What the router sends this client: publishes on plain topics and acknowledgements.
    pub(super) async fn on_router_notification(&mut self, n: Notification) -> Result<(), End> {
        let packet = match Option::<rq::Packet>::from(n) {
            Some(p) => p,
            None => {
                // Unschedule: the router waits for us to ask for more.
                if let Some((_, rx)) = &self.link {
                    if rx.wake().await.is_err() {
                        return Err(self.link_failed());
                    }
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
            rq::Packet::Disconnect(..) => return Err(self.link_failed()),
            _ => {}
        }
        Ok(())
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
                self.link = Some((tx, rx));
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
    link: &mut Option<(LinkTx, LinkRx)>,
) -> Result<Option<Notification>, rumqttd::local::LinkError> {
    match link {
        Some((_, rx)) => rx.next().await,
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
