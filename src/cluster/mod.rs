//! Cluster mode: instances sharing one PostgreSQL database behave as one hub. Messages need nothing
//! from here — every instance's commit tail (`store::tail`) reads every instance's commits in one
//! order. This module owns the rest: the node id, control events between instances (`control`), and
//! node heartbeats with the sessions of dead instances marked lost (`nodes`). On SQLite (one
//! instance) control events stay local and the heartbeat only cleans up after a crashed process.

pub mod control;
pub mod nodes;
pub mod outside;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::hub::Hub;
use crate::store::{Db, Store};
pub use control::Control;
use control::Envelope;

/// What the MQTT edge of this instance must do because of another instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttSignal {
    /// `client_id` was claimed at `at` on instance `node`: take over an older live connection here.
    Claimed { client_id: String, at: i64, node: String },
    /// The other instances took this one for dead and marked its sessions lost: close them all (their
    /// clients reconnect and are recorded afresh).
    AllLost,
}

/// This instance's part of the cluster: its node id and the way out for control events.
pub struct Cluster {
    pub node_id: Arc<str>,
    /// To the sender task (PostgreSQL only).
    outbox: Option<mpsc::UnboundedSender<Control>>,
    mqtt: broadcast::Sender<MqttSignal>,
}

impl Cluster {
    /// Starts the sender task on PostgreSQL; it ends when the `Cluster` is dropped.
    pub fn new(store: &Store, node_id: &str) -> Cluster {
        let node_id: Arc<str> = node_id.into();
        let outbox = match &store.db {
            Db::Postgres(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(send_controls(store.clone(), node_id.clone(), rx));
                Some(tx)
            }
            _ => None,
        };
        Cluster { node_id, outbox, mqtt: broadcast::channel(1024).0 }
    }

    /// Tells the other instances (the caller has applied the change here already).
    pub fn announce(&self, control: Control) {
        if let Some(outbox) = &self.outbox {
            let _ = outbox.send(control);
        }
    }

    pub fn mqtt_signals(&self) -> broadcast::Receiver<MqttSignal> {
        self.mqtt.subscribe()
    }

    pub(crate) fn signal_mqtt(&self, signal: MqttSignal) {
        let _ = self.mqtt.send(signal);
    }
}

/// Control events sent in one statement at most (a connect storm claims thousands of client ids).
const SEND_BATCH: usize = 256;

/// Sends control events in order, up to `SEND_BATCH` per round trip (one `pg_notify` per event in
/// one statement; encoded envelopes hold no raw newline, so they travel joined by one). A failed send
/// is retried a few times (the database may be restarting), then dropped with a warning — the change
/// itself is in SQL, and sessions re-check their user on their next request anyway.
async fn send_controls(store: Store, node_id: Arc<str>, mut rx: mpsc::UnboundedReceiver<Control>) {
    let mut batch = Vec::with_capacity(SEND_BATCH);
    while rx.recv_many(&mut batch, SEND_BATCH).await > 0 {
        let payloads: Vec<String> =
            batch.drain(..).map(|control| Envelope { from: node_id.to_string(), control }.encode()).collect();
        let joined = payloads.join("\n");
        for attempt in 1..=20 {
            let sql = crate::store::Sql::new(
                "SELECT pg_notify($1, t.payload) FROM unnest(string_to_array($2, E'\\n')) \
                 WITH ORDINALITY AS t(payload, n) ORDER BY t.n",
            )
            .bind(control::CHANNEL)
            .bind(joined.as_str());
            match store.db.execute(sql).await {
                Ok(_) => break,
                Err(e) if attempt == 20 => {
                    tracing::warn!(error = %e, events = payloads.len(), "cannot announce control events to the other instances")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * attempt)).await,
            }
        }
    }
}

/// Starts listening for other instances' control events (PostgreSQL) and the node heartbeat (both
/// backends). The node is registered before this returns, so it is alive before any MQTT session
/// it holds is recorded.
pub async fn start(hub: Arc<Hub>, store: Store, stop: watch::Receiver<bool>) -> Result<Vec<JoinHandle<()>>> {
    let mut tasks = vec![nodes::start(hub.clone(), store.clone(), stop.clone()).await?];
    tasks.extend(outside::spawn_watch(hub.clone(), store.clone(), stop.clone()));
    if let Db::Postgres(pool) = &store.db {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(control::CHANNEL).await?;
        tasks.push(tokio::spawn(listen(hub, listener, stop)));
    }
    Ok(tasks)
}

async fn listen(hub: Arc<Hub>, mut listener: PgListener, mut stop: watch::Receiver<bool>) {
    loop {
        let received = tokio::select! {
            r = listener.try_recv() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match received {
            Ok(Some(n)) => match Envelope::decode(n.payload()) {
                Some(e) if *e.from != *hub.cluster.node_id => apply(&hub, e),
                Some(_) => {}
                None => tracing::debug!(payload = n.payload(), "unknown control event ignored"),
            },
            // The connection was lost and is re-established on the next call: events sent meanwhile
            // are gone, so every live session re-checks its user and assignments.
            Ok(None) => {
                tracing::warn!("control listener reconnected; re-checking every live session");
                hub.apply_everything_may_have_changed();
            }
            Err(e) => {
                tracing::warn!(error = %e, "control listener failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

fn apply(hub: &Hub, e: Envelope) {
    tracing::debug!(from = %e.from, control = ?e.control, "control event");
    match e.control {
        Control::UserRights { user } => hub.apply_user_rights_changed(user),
        Control::Assignments => hub.apply_assignments_changed(),
        Control::DeviceGone { device } => {
            hub.bus.end_device_subscriptions(&device);
        }
        Control::MqttClaim { client_id, at } => {
            hub.cluster.signal_mqtt(MqttSignal::Claimed { client_id, at, node: e.from })
        }
    }
}

/// This instance's node id: `[cluster] node_id`, or the host name with a random suffix (a restarted
/// instance is a new node, so a survivor can tell its old sessions from its new ones).
pub fn node_id(configured: &str) -> String {
    let configured = configured.trim();
    if !configured.is_empty() {
        return configured.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).collect())
        .filter(|h: &String| !h.is_empty())
        .unwrap_or_else(|| "hivehub".to_string());
    let suffix: u32 = rand::random();
    format!("{host}-{suffix:08x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_configured_node_id_is_kept_and_generated_ones_differ() {
        assert_eq!(super::node_id(" hub-a "), "hub-a");
        let (a, b) = (super::node_id(""), super::node_id(""));
        assert_ne!(a, b);
        assert!(a.len() > 9 && !a.contains(' '));
    }
}
