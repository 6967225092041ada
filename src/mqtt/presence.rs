//! Presence of MQTT sessions, recorded off the connect path: connections hand their connect and
//! disconnect events to one task, which writes them to SQL in batches (one transaction for many
//! sessions) and emits `$device-connected` / `$device-disconnected` for client ids that are devices
//! their user may see. A connect storm therefore costs a few transactions, not one per client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::auth::Principal;
use crate::hub::Hub;
use crate::store::SessionRecord;

pub struct PresenceEvent {
    pub record: SessionRecord,
    pub principal: Principal,
    /// `Some` when a presence notification should be emitted: its parameters.
    pub notification: Option<Value>,
}

pub struct Presence {
    tx: Mutex<Option<mpsc::UnboundedSender<PresenceEvent>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Presence {
    pub fn start(hub: Arc<Hub>) -> Presence {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(hub, rx));
        Presence { tx: Mutex::new(Some(tx)), task: Mutex::new(Some(task)) }
    }

    pub fn record(&self, event: PresenceEvent) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(event);
        }
    }

    /// Stops taking events and waits until every recorded one is written (at shutdown, before the
    /// message writer and the database close).
    pub async fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn run(hub: Arc<Hub>, mut rx: mpsc::UnboundedReceiver<PresenceEvent>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let records: Vec<SessionRecord> = batch.iter().map(|e| e.record.clone()).collect();
        if let Err(e) = hub.mqtt_session_records(&records).await {
            tracing::warn!(error = %e, sessions = records.len(), "cannot record MQTT presence");
        }
        // Per client in order (connected before disconnected); different clients side by side, so the
        // message writer commits their notifications together.
        let mut per_client: HashMap<String, Vec<(bool, Value, Principal)>> = HashMap::new();
        for event in batch.drain(..) {
            let Some(parameters) = event.notification else { continue };
            let (client_id, connected) = match &event.record {
                SessionRecord::Connected { client_id, .. } => (client_id.clone(), true),
                SessionRecord::Disconnected { client_id, .. } => (client_id.clone(), false),
            };
            per_client.entry(client_id).or_default().push((connected, parameters, event.principal));
        }
        let mut notifications = JoinSet::new();
        for (client_id, events) in per_client {
            let hub = hub.clone();
            notifications.spawn(async move {
                for (connected, parameters, principal) in events {
                    let notified = hub.mqtt_presence_notification(&client_id, &principal, connected, parameters);
                    if let Err(e) = notified.await {
                        tracing::debug!(client_id, error = %e, "presence notification failed");
                    }
                }
            });
        }
        while notifications.join_next().await.is_some() {}
    }
}
