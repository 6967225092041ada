//! The `dh/` topics, which never reach the router: requests run the shared action table and answer on
//! response topics, direct publishes are inserts stored before they are acknowledged, event filters
//! are subscriptions to the hub's engine (stored for persistent sessions, and restored with the
//! commands they are owed on reconnect).

use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::{json, Value};

use super::{Conn, End};
use crate::hub::bus::{Delivery, EventKind, SubscriptionId};
use crate::hub::dispatch::{self as actions, push_text};
use crate::mqtt::codec::{Publish, SUBACK_FAILURE};
use crate::mqtt::topics::{self, DhFilter};

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
    pub(super) async fn on_request(&mut self, p: &Publish) -> Result<(), End> {
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
        unacknowledged_when_unavailable(p, response.get("code").and_then(Value::as_u64) == Some(503))
    }

    /// A publish to `dh/notification|command|command_update/...`: an insert (or update) when the
    /// session may make it; dropped and counted otherwise. Never echoed to subscribers: they get the
    /// hub's push of the stored message.
    pub(super) async fn on_direct_publish(&mut self, p: &Publish) -> Result<(), End> {
        let Some(target) = topics::parse_direct(&p.topic) else {
            self.refuse_publish("not a publishable dh/ topic", p);
            return Ok(());
        };
        if !self.session.principal.is_authenticated() {
            self.refuse_publish("anonymous session", p);
            return Ok(());
        }
        let body: Value = match serde_json::from_slice(&p.payload) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                self.refuse_publish("payload is not a JSON object", p);
                return Ok(());
            }
        };
        let hub = self.shared.hub.clone();
        let principal = self.session.principal.clone();
        // The topic's network and type levels must match the device.
        match hub.mqtt_topic_names_device(&target.device_id, target.network, target.device_type).await {
            Ok(true) => {}
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => return unacknowledged_when_unavailable(p, true),
            _ => {
                self.refuse_publish("topic does not match the device", p);
                return Ok(());
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
        match result {
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => unacknowledged_when_unavailable(p, true),
            Err(e) => {
                self.refuse_publish(&e.message, p);
                Ok(())
            }
            Ok(()) => Ok(()),
        }
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
                    Ok(id) => {
                        self.dh_by_id.insert(id, filter.to_string());
                        self.dh_subs.insert(filter.to_string(), DhSub { id, qos, private: private_to.is_some() });
                        if self.persistent && !restoring {
                            let now = crate::time::now_ms();
                            let stored = self.shared.hub.mqtt_subscription_put(&self.client_id, filter, qos, now);
                            if let Err(e) = stored.await {
                                // A persistent subscription that is not stored would silently miss
                                // the commands owed while offline: refuse it instead, live and stored.
                                tracing::warn!(client_id = %self.client_id, error = %e, "cannot store MQTT subscription");
                                if let Some(sub) = self.dh_subs.remove(filter) {
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
        self.dh_by_id.remove(&sub.id);
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

    /// Pushes one commit's matching messages, each once even when several filters match it.
    pub(super) fn push(&mut self, d: Delivery) -> Result<(), End> {
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
}

/// A publish the database could not take: QoS 0 is lost as QoS 0 may be; QoS 1 and 2 end the
/// connection unacknowledged, so the client sends them again after reconnecting (never acknowledged
/// and lost).
fn unacknowledged_when_unavailable(p: &Publish, unavailable: bool) -> Result<(), End> {
    if unavailable && p.qos > 0 {
        tracing::warn!(topic = %p.topic, "database unavailable: publish not acknowledged, closing the connection");
        return Err(End::StoreUnavailable);
    }
    Ok(())
}
