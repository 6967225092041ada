//! A client session of a message transport (WebSocket now, MQTT `dh/request` next): who it is
//! authenticated as, its subscriptions, and the formatting of the pushes it receives. The transport
//! owns the socket; the session owns the state the action table needs.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::auth::{Action, Principal};
use crate::error::{ApiError, Result};
use crate::hub::bus::{Delivery, EventKind, Sink, SubscriptionId};
use crate::hub::fields::Fields;
use crate::hub::signal::Signal;
use crate::hub::Hub;

/// Per-subscription state.
struct SubState {
    kind: EventKind,
    /// `SubscriptionInfo` as `subscription/list` reports it.
    info: Value,
    /// (id, cursor) of messages already sent by the replay — live copies of them are skipped — and
    /// the largest order key among them (see `order_key`).
    replayed: Option<(HashSet<(i64, i64)>, i64)>,
}

pub struct Session {
    hub: Arc<Hub>,
    pub principal: Principal,
    /// `Host` the client connected to (for `server/info`).
    pub host: String,
    /// The client's address (login throttling), when the transport knows it.
    pub peer: Option<std::net::IpAddr>,
    /// The transport it runs on (metrics labels); WebSocket unless the transport says otherwise.
    pub transport: crate::metrics::Transport,
    subs: BTreeMap<SubscriptionId, SubState>,
    /// Where the bus sends this session's deliveries, and where the transport takes them: made on
    /// the first subscription, so a session that never subscribes (most device connections) holds
    /// no queue.
    queue: Option<(Sink, mpsc::Receiver<Delivery>)>,
    /// The queue's capacity once made.
    queue_capacity: usize,
    /// Raised (`Signal::OVERFLOW`) by the bus when the queue overflowed.
    overflow: Arc<Signal>,
    /// Pushes to send after the current response (history replay).
    pending: Vec<String>,
    /// For a non-admin user: the networks assigned to it now, and the assignment epoch they were
    /// read at (§11.2: deliveries re-check that the device is still visible).
    assigned: Option<(u64, std::collections::BTreeSet<i64>)>,
}

impl Session {
    /// A new anonymous session. Deliveries for its subscriptions are taken with `next_delivery`
    /// (at most `queue` waiting); `overflow` is raised when they overflowed.
    pub fn new(hub: Arc<Hub>, host: String, queue: usize, overflow: Arc<Signal>) -> Session {
        Session {
            hub,
            principal: Principal::anonymous(),
            host,
            peer: None,
            transport: crate::metrics::Transport::WebSocket,
            subs: BTreeMap::new(),
            queue: None,
            queue_capacity: queue.max(1),
            overflow,
            pending: Vec::new(),
            assigned: None,
        }
    }

    /// The next delivery for this session's subscriptions; never completes while there is none to
    /// come (no subscription yet).
    pub async fn next_delivery(&mut self) -> Delivery {
        match &mut self.queue {
            // The session holds a sender itself, so the queue never closes.
            Some((_, rx)) => match rx.recv().await {
                Some(d) => d,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// A delivery that is ready now.
    pub fn try_next_delivery(&mut self) -> Option<Delivery> {
        self.queue.as_mut().and_then(|(_, rx)| rx.try_recv().ok())
    }

    /// Where the bus sends this session's deliveries (the queue is made on first use).
    fn sink(&mut self) -> Sink {
        let capacity = self.queue_capacity;
        let overflow = &self.overflow;
        let (sink, _) = self.queue.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(capacity);
            (Sink { tx, overflow: Some(overflow.clone()) }, rx)
        });
        sink.clone()
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Pushes queued by the last action (sent after its response).
    pub fn take_pending(&mut self) -> Vec<String> {
        std::mem::take(&mut self.pending)
    }

    /// `authenticate`: binds an access token's principal; a failure keeps the previous one.
    pub async fn authenticate(&mut self, req: &Value) -> Result<Map<String, Value>> {
        let token = Fields::of(req)?.str("token")?.ok_or_else(ApiError::unauthorized)?;
        let principal = self.hub.principal_from_token(token).await.map_err(|e| match e {
            crate::auth::jwt::TokenError::Expired => ApiError::unauthorized_msg("Token expired"),
            crate::auth::jwt::TokenError::Unavailable => ApiError::database_unavailable(),
            _ => ApiError::unauthorized_msg("Invalid credentials"),
        })?;
        if let Some(user) = &principal.user {
            self.hub.touch_last_login(user.id).await?;
        }
        self.principal = principal;
        Ok(Map::new())
    }

    /// `notification/subscribe` and `command/subscribe`: the new subscription's id.
    pub async fn subscribe(&mut self, kind: EventKind, req: &Value) -> Result<SubscriptionId> {
        let hub = self.hub.clone();
        let action =
            if kind == EventKind::Notification { Action::GetDeviceNotification } else { Action::GetDeviceCommand };
        self.principal.require(action)?;
        let f = Fields::of(req)?;
        if let Some(device_id) = f.text("deviceId")? {
            hub.authorize_device(&self.principal, action, &device_id).await?;
        } else if f.has("deviceId") && f.0.get("deviceId").is_some_and(|v| v == "") {
            return Err(ApiError::bad_request("Device id is wrong or empty"));
        }
        let max = hub.settings.websocket.max_subscriptions;
        if self.subs.len() >= max {
            return Err(ApiError::forbidden(format!("Too many subscriptions: at most {max} per session")));
        }
        let mut poll = hub.poll_request(kind, None, req)?;
        if kind != EventKind::Notification {
            if f.bool("returnUpdatedCommands")?.unwrap_or(false) {
                poll.kind = EventKind::CommandUpdate;
            }
            poll.limit = match f.i64("limit")? {
                Some(l) if l < 0 => return Err(ApiError::bad_request("Limit can't be less than 0.")),
                Some(l) if l > 0 => l.min(hub.max_take()) as usize,
                _ => 20,
            };
        } else {
            poll.limit = 100;
        }
        let filter = hub
            .message_filter(&self.principal, action, &poll)
            .await?
            .ok_or_else(|| ApiError::forbidden("No access to any device type or network"))?;

        // Live first, then history: nothing committed in between is lost; duplicates are skipped.
        let id = hub.bus.subscribe(poll.kind, filter.clone(), self.sink());
        let info = json!({
            "subscriptionId": id.0,
            "type": if kind == EventKind::Notification { "notification" } else { "command" },
            "deviceId": f.text("deviceId")?,
            "networkIds": poll.network_ids,
            "deviceTypeIds": poll.device_type_ids,
            "names": poll.names,
            "timestamp": poll.timestamp.map(crate::time::format_ms),
        });
        let mut state = SubState { kind: poll.kind, info, replayed: None };
        if let Some(ts) = poll.timestamp {
            let replay = match poll.kind {
                EventKind::Notification => hub
                    .store
                    .notifications_since(&filter, ts, poll.limit)
                    .await
                    .map(|v| v.iter().map(|n| (n.id, n.timestamp, json_of(n))).collect::<Vec<_>>()),
                k => {
                    let updated = k == EventKind::CommandUpdate;
                    hub.store.commands_since(&filter, ts, poll.limit, updated).await.map(|v| {
                        v.iter()
                            .map(|c| (c.id, if updated { c.last_updated } else { c.timestamp }, json_of(c)))
                            .collect::<Vec<_>>()
                    })
                }
            };
            let replay = match replay {
                Ok(r) => r,
                Err(e) => {
                    hub.bus.unsubscribe(id);
                    return Err(e);
                }
            };
            let mut seen = HashSet::new();
            let mut max_key = i64::MIN;
            for (mid, cursor, body) in replay {
                seen.insert((mid, cursor));
                max_key = max_key.max(order_key(poll.kind, mid, cursor));
                self.pending.push(push_text(poll.kind, id, &body));
            }
            state.replayed = Some((seen, max_key));
        }
        self.subs.insert(id, state);
        Ok(id)
    }

    /// `notification/unsubscribe` / `command/unsubscribe`: one subscription, or all of that type.
    pub fn unsubscribe(&mut self, notification: bool, req: &Value) -> Result<Map<String, Value>> {
        let action = if notification { Action::GetDeviceNotification } else { Action::GetDeviceCommand };
        self.principal.require(action)?;
        self.prune();
        let is_type = |k: EventKind| (k == EventKind::Notification) == notification;
        match Fields::of(req)?.i64("subscriptionId")? {
            Some(raw) => {
                let id = SubscriptionId(raw as u64);
                match self.subs.get(&id) {
                    Some(s) if is_type(s.kind) => {
                        self.subs.remove(&id);
                        self.hub.bus.unsubscribe(id);
                    }
                    _ => return Err(ApiError::not_found(format!("Subscription with id {id} was not found"))),
                }
            }
            None => {
                let ids: Vec<SubscriptionId> =
                    self.subs.iter().filter(|(_, s)| is_type(s.kind)).map(|(id, _)| *id).collect();
                for id in ids {
                    self.subs.remove(&id);
                    self.hub.bus.unsubscribe(id);
                }
            }
        }
        Ok(Map::new())
    }

    /// Ends one of this session's subscriptions (MQTT unsubscribing a `dh/` filter).
    pub fn end_subscription(&mut self, id: SubscriptionId) {
        if self.subs.remove(&id).is_some() {
            self.hub.bus.unsubscribe(id);
        }
    }

    /// Forgets subscriptions the bus ended on its own (their device was deleted).
    fn prune(&mut self) {
        let bus = &self.hub.bus;
        self.subs.retain(|id, _| bus.is_subscribed(*id));
    }

    /// `subscription/list`.
    pub fn list(&mut self, req: &Value) -> Result<Map<String, Value>> {
        let p = &self.principal;
        p.user.as_ref().ok_or_else(ApiError::unauthorized)?;
        let can_n = p.actions.contains(Action::GetDeviceNotification);
        let can_c = p.actions.contains(Action::GetDeviceCommand);
        if !can_n && !can_c {
            return Err(ApiError::access_denied());
        }
        let wanted = Fields::of(req)?.text("type")?;
        self.prune();
        let mut subs: Vec<(&SubscriptionId, &SubState)> = self
            .subs
            .iter()
            .filter(|(_, s)| {
                let n = s.kind == EventKind::Notification;
                (if n { can_n } else { can_c })
                    && wanted.as_deref().is_none_or(|t| t == if n { "notification" } else { "command" })
            })
            .collect();
        subs.sort_by_key(|(id, _)| **id);
        let mut out = Map::new();
        out.insert("subscriptions".into(), Value::Array(subs.iter().map(|(_, s)| s.info.clone()).collect()));
        Ok(out)
    }

    /// Re-reads the session's user after a revocation: `false` when it is gone or no longer active
    /// (the session must end); otherwise its fresh rights (role, assignments) apply from now on.
    /// Anonymous sessions have nothing to lose.
    pub async fn recheck(&mut self) -> bool {
        if !self.principal.is_authenticated() {
            return true;
        }
        match self.hub.recheck_principal(&self.principal).await {
            Some(fresh) => {
                self.principal = fresh;
                self.refresh_visibility().await;
                true
            }
            None => false,
        }
    }

    /// Re-reads the user's network assignments if they may have changed since the last read.
    pub async fn refresh_visibility(&mut self) {
        let Some(user) = self.principal.user.as_ref().filter(|u| !u.is_admin()) else {
            self.assigned = None;
            return;
        };
        let epoch = self.hub.assignment_epoch.load(std::sync::atomic::Ordering::Acquire);
        if self.assigned.as_ref().is_some_and(|(e, _)| *e == epoch) {
            return;
        }
        // Boxed: a read is rare (after an assignment changed), and its state would otherwise be part
        // of every delivery's.
        let user_id = user.id;
        Box::pin(self.reload_visibility(user_id, epoch)).await;
    }

    async fn reload_visibility(&mut self, user_id: i64, epoch: u64) {
        // On a read error keep the previous set rather than widen or drop it.
        if let Ok(ids) = self.hub.store.user_network_ids(user_id).await {
            self.assigned = Some((epoch, ids.into_iter().collect()));
        }
    }

    /// Whether the session's user may still see the message's device (a non-admin user must still be
    /// assigned to its network). Call `refresh_visibility` first.
    pub fn may_see(&self, ev: &crate::hub::bus::Event) -> bool {
        visible_to(&self.assigned, ev)
    }

    /// Formats a delivery as push messages, skipping messages the replay already sent.
    pub fn pushes(&mut self, d: &Delivery) -> Vec<String> {
        let Some(state) = self.subs.get_mut(&d.subscription_id) else {
            return vec![];
        };
        let mut out = Vec::with_capacity(d.events.len());
        let mut past_replay = false;
        for ev in &d.events {
            if !visible_to(&self.assigned, ev) {
                continue;
            }
            if let Some((seen, max_key)) = &state.replayed {
                past_replay |= order_key(ev.kind, ev.id(), ev.cursor()) > *max_key;
                if seen.contains(&(ev.id(), ev.cursor())) {
                    continue;
                }
            }
            out.push(push_text(ev.kind, d.subscription_id, &ev.json));
            crate::metrics::delivered(ev.kind, self.transport, 1);
        }
        // Deliveries come in commit order: once one is from a commit after the replay's last row, no
        // later one can repeat the replay.
        if past_replay {
            state.replayed = None;
        }
        out
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for id in self.subs.keys() {
            self.hub.bus.unsubscribe(*id);
        }
    }
}

fn visible_to(assigned: &Option<(u64, std::collections::BTreeSet<i64>)>, ev: &crate::hub::bus::Event) -> bool {
    let Some((_, nets)) = assigned else { return true };
    let network = match &ev.message {
        crate::hub::bus::Message::Notification(n) => n.network_id,
        crate::hub::bus::Message::Command(c) => c.network_id,
    };
    network.is_some_and(|n| nets.contains(&n))
}

fn json_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// `{"action":"notification/insert","subscriptionId":N,"notification":{...}}` around a message
/// serialised once for every recipient.
pub fn push_text(kind: EventKind, subscription_id: SubscriptionId, message_json: &str) -> String {
    let (action, key) = match kind {
        EventKind::Notification => ("notification/insert", "notification"),
        EventKind::CommandInsert => ("command/insert", "command"),
        EventKind::CommandUpdate => ("command/update", "command"),
    };
    format!(r#"{{"action":"{action}","subscriptionId":{subscription_id},"{key}":{message_json}}}"#)
}

/// A key that grows with commit order: ids for inserts (one writer assigns them in commit order),
/// `lastUpdated` for updates (always stamped by that writer).
fn order_key(kind: EventKind, id: i64, cursor: i64) -> i64 {
    if kind == EventKind::CommandUpdate {
        cursor
    } else {
        id
    }
}

/// Completes when the rights of user `me` may have shrunk: its id was announced on the hub's
/// revocation channel, or announcements were missed (a lagging receiver cannot tell). The MQTT
/// connection selects on it beside its socket and then calls `Session::recheck`; it keeps the
/// receiver in reach for `revocation_pending` between a socket read and serving it.
pub async fn revocation_of(rx: &mut tokio::sync::broadcast::Receiver<i64>, me: Option<i64>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match rx.recv().await {
            // The hub is gone: nothing will be revoked any more.
            Err(RecvError::Closed) => return std::future::pending().await,
            received if concerns(&received, me) => return,
            _ => {}
        }
    }
}

/// Whether what the revocation channel gave concerns user `me`: its id, every user, or missed
/// announcements (a lagging receiver cannot tell whose they were).
fn concerns(received: &Result<i64, tokio::sync::broadcast::error::RecvError>, me: Option<i64>) -> bool {
    match received {
        Ok(id) => Some(*id) == me || *id == crate::hub::EVERY_USER,
        Err(_) => true,
    }
}

/// `revocation_of` for a session that waits on several things behind a wake-up gate (the WebSocket
/// session, `net::gate`): its receive on the revocation channel stays registered between wake-ups,
/// where `revocation_of` on a borrowed receiver registers with the channel (a lock every session
/// shares) on each poll and leaves it when the session's select drops it.
pub struct RevocationWatch {
    next: std::pin::Pin<Box<dyn Future<Output = RevocationRecv> + Send>>,
}

type RevocationRecv = (tokio::sync::broadcast::Receiver<i64>, Result<i64, tokio::sync::broadcast::error::RecvError>);

impl RevocationWatch {
    pub fn new(rx: tokio::sync::broadcast::Receiver<i64>) -> RevocationWatch {
        RevocationWatch { next: Self::recv(rx) }
    }

    fn recv(
        mut rx: tokio::sync::broadcast::Receiver<i64>,
    ) -> std::pin::Pin<Box<dyn Future<Output = RevocationRecv> + Send>> {
        Box::pin(async move {
            let r = rx.recv().await;
            (rx, r)
        })
    }

    /// `Ready` when user `me`'s rights may have shrunk. What was received is judged before the next
    /// announcement is awaited, in the same poll.
    pub fn poll_of(&mut self, cx: &mut std::task::Context<'_>, me: Option<i64>) -> std::task::Poll<()> {
        use std::task::Poll;
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let Poll::Ready((rx, received)) = self.next.as_mut().poll(cx) else { return Poll::Pending };
            if let Err(RecvError::Closed) = received {
                // The hub is gone: nothing will be revoked any more.
                self.next = Box::pin(std::future::pending());
                continue;
            }
            self.next = Self::recv(rx);
            if concerns(&received, me) {
                return Poll::Ready(());
            }
        }
    }
}

/// Whether a revocation of user `me` was already announced (or announcements were missed); consumes
/// what is queued. For checks between a socket read and serving it.
pub fn revocation_pending(rx: &mut tokio::sync::broadcast::Receiver<i64>, me: Option<i64>) -> bool {
    use tokio::sync::broadcast::error::TryRecvError;
    let mut concerned = false;
    loop {
        match rx.try_recv() {
            Ok(id) => concerned |= concerns(&Ok(id), me),
            Err(TryRecvError::Lagged(_)) => concerned = true,
            Err(TryRecvError::Empty | TryRecvError::Closed) => return concerned,
        }
    }
}
