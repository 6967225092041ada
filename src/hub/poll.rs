//! Long polling (§10.3–10.4). A poll registers its subscription on the bus *before* it reads history
//! (so nothing committed in between is missed), answers at once when history has messages, and
//! otherwise sleeps until the writer publishes a matching commit — no timers, no re-querying. A waiter
//! costs one small channel and one registry entry.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::bus::{Delivery, Event, EventKind, Sink};
use super::fields::Fields;
use super::Hub;
use crate::auth::{Action, IdSet, Principal};
use crate::error::{ApiError, Result};
use crate::model::Command;
use crate::store::MessageFilter;
use crate::time::now_ms;

/// A parsed poll request.
#[derive(Debug, Clone)]
pub struct PollRequest {
    pub kind: EventKind,
    pub device_id: Option<String>,
    /// `deviceIds` of WebSocket / MQTT subscriptions: several devices at once.
    pub device_ids: Option<Vec<String>>,
    pub network_ids: Option<Vec<i64>>,
    pub device_type_ids: Option<Vec<i64>>,
    pub names: Option<Vec<String>>,
    pub timestamp: Option<i64>,
    pub wait: Duration,
    pub limit: usize,
}

impl Hub {
    /// `waitTimeout` in seconds: default and maximum from `[limits]`.
    pub fn wait_timeout(&self, f: &Fields) -> Result<Duration> {
        let max = self.settings.limits.max_wait_timeout_secs as i64;
        match f.i64("waitTimeout")? {
            None => Ok(Duration::from_secs(self.settings.limits.default_wait_timeout_secs.min(max as u64))),
            Some(t) if t > max => Err(ApiError::bad_request(format!("Timeout can't be more than {max} seconds. "))),
            Some(t) if t < 0 => Err(ApiError::bad_request("Timeout can't be less than 0 seconds. ")),
            Some(t) => Ok(Duration::from_secs(t as u64)),
        }
    }

    /// Parses poll parameters (REST query or any object of the same keys).
    pub fn poll_request(&self, kind: EventKind, device_id: Option<&str>, params: &Value) -> Result<PollRequest> {
        let f = Fields::of(params)?;
        let limit = match f.i64("limit")? {
            Some(l) if l < 0 => return Err(ApiError::bad_request("Limit can't be less than 0.")),
            Some(l) if l > 0 => l.min(self.max_take()) as usize,
            _ => 100,
        };
        let kind = if kind != EventKind::Notification && f.bool("returnUpdatedCommands")?.unwrap_or(false) {
            EventKind::CommandUpdate
        } else {
            kind
        };
        Ok(PollRequest {
            kind,
            device_id: match device_id {
                Some(d) => Some(d.to_string()),
                None => f.text("deviceId")?,
            },
            device_ids: f.list("deviceIds")?,
            network_ids: f.id_list("networkIds")?,
            device_type_ids: f.id_list("deviceTypeIds")?,
            names: f.list("names")?,
            timestamp: f.timestamp("timestamp")?,
            wait: self.wait_timeout(&f)?,
            limit,
        })
    }

    /// Builds the filter of a poll or subscription (§11.2); `None` = the caller can see nothing.
    pub async fn message_filter(
        &self,
        principal: &Principal,
        action: Action,
        req: &PollRequest,
    ) -> Result<Option<MessageFilter>> {
        let user = principal.require(action)?;
        let admin = user.is_admin();
        // `deviceId` (one device) or `deviceIds` (several): every one must exist and be visible; the
        // network and type levels are then irrelevant.
        let wanted: Option<Vec<String>> = match (&req.device_id, &req.device_ids) {
            (Some(id), _) => Some(vec![id.clone()]),
            (None, Some(ids)) => Some(ids.clone()),
            (None, None) => None,
        };
        if let Some(ids) = wanted {
            let mut devices = Vec::with_capacity(ids.len());
            for device_id in ids {
                if device_id.is_empty() {
                    return Err(ApiError::bad_request("Device id is wrong or empty"));
                }
                match self.store.device_get(&device_id).await? {
                    Some(d) if self.device_visible(principal, &d).await? => devices.push(d.id),
                    _ if admin => return Err(ApiError::device_not_found(&device_id)),
                    _ => return Err(ApiError::access_denied()),
                }
            }
            return Ok(Some(MessageFilter {
                devices: Some(devices),
                networks: IdSet::All,
                device_types: IdSet::All,
                names: req.names.clone(),
            }));
        }
        let visible_networks = self.visible_networks(principal).await?;
        let networks = match &req.network_ids {
            None => visible_networks,
            Some(ids) => {
                let mut missing = Vec::new();
                for id in ids {
                    let exists = self.store.group_get(crate::model::GroupKind::Network, *id).await?.is_some();
                    if !exists || !visible_networks.contains(Some(*id)) {
                        missing.push(*id);
                    }
                }
                if !missing.is_empty() {
                    return Err(if admin {
                        ApiError::not_found(format!(
                            "Networks with such networkIds wasn't found: {{{}}}",
                            list_text(&missing)
                        ))
                    } else {
                        ApiError::access_denied()
                    });
                }
                IdSet::Only(ids.iter().copied().collect::<BTreeSet<_>>())
            }
        };
        let device_types = match &req.device_type_ids {
            None => principal.device_types.clone(),
            Some(ids) => {
                let mut missing = Vec::new();
                for id in ids {
                    let exists = self.store.group_get(crate::model::GroupKind::DeviceType, *id).await?.is_some();
                    if !exists || !principal.device_types.contains(Some(*id)) {
                        missing.push(*id);
                    }
                }
                if !missing.is_empty() {
                    return Err(if admin {
                        ApiError::not_found(format!(
                            "Device types with such deviceTypeIds wasn't found: {{{}}}",
                            list_text(&missing)
                        ))
                    } else {
                        ApiError::access_denied()
                    });
                }
                IdSet::Only(ids.iter().copied().collect())
            }
        };
        if networks.is_empty() || device_types.is_empty() {
            return Ok(None);
        }
        Ok(Some(MessageFilter { devices: None, networks, device_types, names: req.names.clone() }))
    }

    /// Runs a poll and returns the messages as a JSON array text (full views, oldest first).
    pub async fn poll(&self, principal: &Principal, req: PollRequest) -> Result<String> {
        let action = match req.kind {
            EventKind::Notification => Action::GetDeviceNotification,
            _ => Action::GetDeviceCommand,
        };
        let Some(filter) = self.message_filter(principal, action, &req).await? else {
            return Ok("[]".to_string());
        };
        let cursor = req.timestamp.unwrap_or_else(now_ms);
        let (tx, mut rx) = mpsc::channel::<Delivery>(4);
        let _guard = self.bus.subscribe_scoped(req.kind, filter.clone(), Sink::new(tx));

        let history: Vec<String> = match req.kind {
            EventKind::Notification => self
                .store
                .notifications_since(&filter, cursor, req.limit)
                .await?
                .iter()
                .map(|n| serde_json::to_string(n).unwrap_or_default())
                .collect(),
            kind => self
                .store
                .commands_since(&filter, cursor, req.limit, kind == EventKind::CommandUpdate)
                .await?
                .iter()
                .map(|c| serde_json::to_string(c).unwrap_or_default())
                .collect(),
        };
        if !history.is_empty() || req.wait.is_zero() {
            crate::metrics::delivered(req.kind, crate::metrics::Transport::LongPoll, history.len());
            return Ok(format!("[{}]", history.join(",")));
        }
        let _waiting = crate::metrics::connection_opened(crate::metrics::Transport::LongPoll);
        let events: Vec<Arc<Event>> = tokio::select! {
            d = rx.recv() => d.map(|d| d.events).unwrap_or_default(),
            _ = tokio::time::sleep(req.wait) => vec![],
            _ = self.shutting_down() => vec![],
        };
        // Rights may have shrunk while the poll waited (user locked, deleted or unassigned).
        let events = self.still_visible(principal, events).await?;
        // Events of one commit share a cursor value; client-supplied timestamps may put some at or
        // before the cursor, which the history query would not return either.
        let mut events: Vec<&Arc<Event>> = events.iter().filter(|e| e.cursor() > cursor).collect();
        events.sort_by_key(|e| (e.cursor(), e.id()));
        let parts: Vec<&str> = events.iter().map(|e| &*e.json).collect();
        crate::metrics::delivered(req.kind, crate::metrics::Transport::LongPoll, parts.len());
        Ok(format!("[{}]", parts.join(",")))
    }

    /// `GET .../command/{id}/poll`: the command once it has been updated, or `None` (204).
    pub async fn command_wait(
        &self,
        principal: &Principal,
        device_id: &str,
        command_id: i64,
        wait: Duration,
    ) -> Result<Option<Command>> {
        self.authorize_device(principal, Action::GetDeviceCommand, device_id).await?;
        let filter = MessageFilter {
            devices: Some(vec![device_id.to_string()]),
            networks: IdSet::All,
            device_types: IdSet::All,
            names: None,
        };
        let (tx, mut rx) = mpsc::channel::<Delivery>(16);
        let _guard = self.bus.subscribe_scoped(EventKind::CommandUpdate, filter, Sink::new(tx));
        match self.store.command_get(device_id, command_id).await? {
            None => return Ok(None),
            Some(c) if c.is_updated => return Ok(Some(c)),
            Some(_) if wait.is_zero() => return Ok(None),
            Some(_) => {}
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let delivery = tokio::select! {
                d = rx.recv() => d,
                _ = tokio::time::sleep_until(deadline) => None,
                _ = self.shutting_down() => None,
            };
            let Some(delivery) = delivery else { return Ok(None) };
            for ev in self.still_visible(principal, delivery.events).await? {
                if let super::bus::Message::Command(c) = &ev.message {
                    if c.id == command_id {
                        return Ok(Some(c.as_ref().clone()));
                    }
                }
            }
        }
    }
}

impl Hub {
    /// The events a waiting principal may still see at delivery time: none when its user is gone or
    /// no longer active, and for a non-admin only those of networks it is still assigned to.
    async fn still_visible(&self, principal: &Principal, events: Vec<Arc<Event>>) -> Result<Vec<Arc<Event>>> {
        if events.is_empty() {
            return Ok(events);
        }
        let Some(now) = self.recheck_principal(principal).await else { return Ok(vec![]) };
        match &now.user {
            Some(u) if !u.is_admin() => {
                let assigned = self.store.user_network_ids(u.id).await?;
                Ok(events.into_iter().filter(|e| e.network_id().is_some_and(|n| assigned.contains(&n))).collect())
            }
            _ => Ok(events),
        }
    }
}

fn list_text(ids: &[i64]) -> String {
    format!("[{}]", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
}
