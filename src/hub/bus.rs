//! The bus: fans committed messages out to subscriptions (long polls now; WebSocket and MQTT sessions
//! use the same registry). Subscriptions are indexed by device, network, device type or "global", so
//! routing a message costs in proportion to the subscriptions that could match it, not to all of them.
//! Each message is serialised once; recipients share the bytes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::hub::signal::Signal;

use crate::auth::IdSet;
use crate::model::{Command, Notification};
use crate::store::writer::Written;
use crate::store::MessageFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Notification,
    CommandInsert,
    CommandUpdate,
}

/// The committed message behind an event.
#[derive(Debug, Clone)]
pub enum Message {
    Notification(Arc<Notification>),
    Command(Arc<Command>),
}

/// A committed message as routed: matching keys plus its full-view JSON, serialised once.
#[derive(Debug)]
pub struct Event {
    pub kind: EventKind,
    pub message: Message,
    /// Full view JSON of the message.
    pub json: Box<str>,
}

impl Event {
    /// The kind and message of a committed row (cheap: `Arc` clones).
    fn parts(w: &Written) -> (EventKind, Message) {
        match w {
            Written::Notification(n) => (EventKind::Notification, Message::Notification(n.clone())),
            Written::Command(c) => (EventKind::CommandInsert, Message::Command(c.clone())),
            Written::CommandUpdated(c) => (EventKind::CommandUpdate, Message::Command(c.clone())),
        }
    }

    /// The event with its JSON, serialised here once.
    fn new(kind: EventKind, message: Message) -> Event {
        let json = match &message {
            Message::Notification(n) => serde_json::to_string(n.as_ref()),
            Message::Command(c) => serde_json::to_string(c.as_ref()),
        }
        .unwrap_or_default()
        .into_boxed_str();
        Event { kind, message, json }
    }

    /// The network of the message's device when it was written.
    pub fn network_id(&self) -> Option<i64> {
        match &self.message {
            Message::Notification(n) => n.network_id,
            Message::Command(c) => c.network_id,
        }
    }

    pub fn id(&self) -> i64 {
        match &self.message {
            Message::Notification(n) => n.id,
            Message::Command(c) => c.id,
        }
    }

    /// The value a client resumes from: `timestamp`, or `lastUpdated` for command updates.
    pub fn cursor(&self) -> i64 {
        match &self.message {
            Message::Notification(n) => n.timestamp,
            Message::Command(c) if self.kind == EventKind::CommandUpdate => c.last_updated,
            Message::Command(c) => c.timestamp,
        }
    }

    fn keys_of(message: &Message) -> (&str, Option<i64>, Option<i64>, &str) {
        match message {
            Message::Notification(n) => (&n.device_id, n.network_id, n.device_type_id, &n.notification),
            Message::Command(c) => (&c.device_id, c.network_id, c.device_type_id, &c.command),
        }
    }
}

/// A live subscription's id: unique in the process, shown to clients as `subscriptionId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

impl std::fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a subscription receives: the matching events of one commit, in commit order.
#[derive(Debug)]
pub struct Delivery {
    pub subscription_id: SubscriptionId,
    pub events: Vec<Arc<Event>>,
}

/// Where a subscription's deliveries go. A session transport passes `overflow`, which the bus
/// notifies when the queue is full — the subscriber is not keeping up and must be disconnected
/// rather than allowed to grow the hub's memory.
#[derive(Clone)]
pub struct Sink {
    pub tx: mpsc::Sender<Delivery>,
    pub overflow: Option<Arc<Signal>>,
}

impl Sink {
    pub fn new(tx: mpsc::Sender<Delivery>) -> Sink {
        Sink { tx, overflow: None }
    }
}

struct Subscription {
    kind: EventKind,
    filter: MessageFilter,
    sink: Sink,
}

/// Where a subscription is indexed: the narrowest key its filter pins down.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IndexKey {
    Device(EventKind, String),
    Network(EventKind, i64),
    DeviceType(EventKind, i64),
    Global(EventKind),
}

fn index_keys(kind: EventKind, f: &MessageFilter) -> Vec<IndexKey> {
    if let Some(devices) = &f.devices {
        return devices.iter().map(|d| IndexKey::Device(kind, d.clone())).collect();
    }
    if let IdSet::Only(ids) = &f.networks {
        return ids.iter().map(|i| IndexKey::Network(kind, *i)).collect();
    }
    if let IdSet::Only(ids) = &f.device_types {
        return ids.iter().map(|i| IndexKey::DeviceType(kind, *i)).collect();
    }
    vec![IndexKey::Global(kind)]
}

#[derive(Default)]
struct Registry {
    subs: HashMap<SubscriptionId, Subscription>,
    index: HashMap<IndexKey, HashSet<SubscriptionId>>,
}

impl Registry {
    /// Removes a subscription and every index entry pointing at it.
    fn remove(&mut self, id: SubscriptionId) -> bool {
        let Some(sub) = self.subs.remove(&id) else {
            return false;
        };
        for key in index_keys(sub.kind, &sub.filter) {
            if let Some(set) = self.index.get_mut(&key) {
                set.remove(&id);
                if set.is_empty() {
                    self.index.remove(&key);
                }
            }
        }
        true
    }
}

pub struct Bus {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub fn new() -> Bus {
        // Subscription ids look like the reference's (epoch millis * 1000 + counter) and stay below
        // 2^53 so JavaScript clients read them exactly.
        let start = (crate::time::now_ms() as u64) * 1000;
        Bus { registry: Mutex::new(Registry::default()), next_id: AtomicU64::new(start) }
    }

    /// Registers a subscription; matching commits are sent to `sink` from now on.
    pub fn subscribe(&self, kind: EventKind, filter: MessageFilter, sink: Sink) -> SubscriptionId {
        let id = SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        for key in index_keys(kind, &filter) {
            reg.index.entry(key).or_default().insert(id);
        }
        reg.subs.insert(id, Subscription { kind, filter, sink });
        id
    }

    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.remove(id)
    }

    /// Ends every subscription pinned to `device_id` (§9.3: a deleted device's subscriptions must not
    /// match a later device of the same id). Their sinks are dropped, so a long poll waiting on one
    /// of them returns at once. Returns how many ended.
    pub fn end_device_subscriptions(&self, device_id: &str) -> usize {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut ended = 0;
        for kind in [EventKind::Notification, EventKind::CommandInsert, EventKind::CommandUpdate] {
            let ids: Vec<SubscriptionId> = match reg.index.get(&IndexKey::Device(kind, device_id.to_string())) {
                Some(ids) => ids.iter().copied().collect(),
                None => continue,
            };
            let key = IndexKey::Device(kind, device_id.to_string());
            for id in ids {
                // A `deviceIds` subscription keeps its other devices; one for this device alone ends.
                let narrowed = match reg.subs.get_mut(&id).and_then(|s| s.filter.devices.as_mut()) {
                    Some(devices) if devices.len() > 1 => {
                        devices.retain(|d| d != device_id);
                        true
                    }
                    _ => false,
                };
                if narrowed {
                    if let Some(set) = reg.index.get_mut(&key) {
                        set.remove(&id);
                    }
                } else {
                    ended += reg.remove(id) as usize;
                }
            }
            if reg.index.get(&key).is_some_and(|set| set.is_empty()) {
                reg.index.remove(&key);
            }
        }
        ended
    }

    /// Whether subscription `id` is still registered.
    pub fn is_subscribed(&self, id: SubscriptionId) -> bool {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).subs.contains_key(&id)
    }

    /// Like `subscribe`, but the subscription ends when the returned guard is dropped.
    pub fn subscribe_scoped(self: &Arc<Self>, kind: EventKind, filter: MessageFilter, sink: Sink) -> SubscriptionGuard {
        let id = self.subscribe(kind, filter, sink);
        SubscriptionGuard { bus: self.clone(), id }
    }

    pub fn subscription_count(&self) -> usize {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).subs.len()
    }

    /// Routes one commit's rows. Called by the writer in commit order, after the commit.
    pub fn publish(&self, written: &[Written]) {
        let mut per_sub: HashMap<SubscriptionId, Vec<Arc<Event>>> = HashMap::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if reg.subs.is_empty() {
            return;
        }
        for w in written {
            // Serialised once, and only when some subscription wants it: stored-only traffic (an
            // ingest nobody watches) pays no JSON.
            let mut event: Option<Arc<Event>> = None;
            let (kind, message) = Event::parts(w);
            let (device, network, device_type, name) = Event::keys_of(&message);
            let ev_kind = kind;
            let mut candidates: Vec<SubscriptionId> = Vec::new();
            let lookups = [IndexKey::Device(ev_kind, device.to_string()), IndexKey::Global(ev_kind)];
            for key in lookups.iter() {
                if let Some(set) = reg.index.get(key) {
                    candidates.extend(set.iter().copied());
                }
            }
            if let Some(n) = network {
                if let Some(set) = reg.index.get(&IndexKey::Network(ev_kind, n)) {
                    candidates.extend(set.iter().copied());
                }
            }
            if let Some(t) = device_type {
                if let Some(set) = reg.index.get(&IndexKey::DeviceType(ev_kind, t)) {
                    candidates.extend(set.iter().copied());
                }
            }
            for id in candidates {
                let Some(sub) = reg.subs.get(&id) else { continue };
                if sub.filter.matches(device, network, device_type, name) {
                    let ev = event.get_or_insert_with(|| Arc::new(Event::new(kind, message.clone())));
                    per_sub.entry(id).or_default().push(ev.clone());
                }
            }
        }
        for (id, events) in per_sub {
            let Some(sink) = reg.subs.get(&id).map(|s| &s.sink) else { continue };
            let delivery = Delivery { subscription_id: id, events };
            if let Err(mpsc::error::TrySendError::Full(_)) = sink.tx.try_send(delivery) {
                crate::metrics::dropped(crate::metrics::DropReason::SubscriberQueueFull);
                // Long polls need only their first delivery; sessions are told to disconnect.
                if let Some(overflow) = &sink.overflow {
                    overflow.raise(Signal::OVERFLOW);
                }
            }
        }
    }
}

/// Ends its subscription when dropped (e.g. when a long-poll request completes or is abandoned).
pub struct SubscriptionGuard {
    bus: Arc<Bus>,
    pub id: SubscriptionId,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.bus.unsubscribe(self.id);
    }
}
