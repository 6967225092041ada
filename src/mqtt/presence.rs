//! Presence of MQTT sessions, recorded off the connect path: connections hand their connect and
//! disconnect events to one task, which writes them to SQL in batches (one transaction for many
//! sessions) and emits `$device-connected` / `$device-disconnected` for client ids that are devices
//! their user may see. A connect storm therefore costs a few transactions, not one per client.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::auth::Principal;
use crate::hub::Hub;
use crate::store::SessionRecord;

pub struct PresenceEvent {
    pub record: SessionRecord,
    pub principal: Principal,
    /// `Some` when a presence notification should be emitted: its parameters.
    pub notification: Option<Value>,
}

#[derive(Clone)]
pub struct Presence {
    tx: mpsc::UnboundedSender<PresenceEvent>,
}

impl Presence {
    pub fn start(hub: Arc<Hub>) -> Presence {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(hub, rx));
        Presence { tx }
    }

    pub fn record(&self, event: PresenceEvent) {
        let _ = self.tx.send(event);
    }
}

async fn run(hub: Arc<Hub>, mut rx: mpsc::UnboundedReceiver<PresenceEvent>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let records: Vec<SessionRecord> = batch.iter().map(|e| e.record.clone()).collect();
        if let Err(e) = hub.store.mqtt_session_records(&records).await {
            tracing::warn!(error = %e, sessions = records.len(), "cannot record MQTT presence");
        }
        for event in batch.drain(..) {
            let Some(parameters) = event.notification else { continue };
            let (client_id, connected) = match &event.record {
                SessionRecord::Connected { client_id, .. } => (client_id.clone(), true),
                SessionRecord::Disconnected { client_id, .. } => (client_id.clone(), false),
            };
            // Each notification waits for a commit; run them side by side so the writer batches them.
            let hub = hub.clone();
            tokio::spawn(async move {
                let Ok(Some(device)) = hub.store.device_get(&client_id).await else { return };
                if !hub.device_visible(&event.principal, &device).await.unwrap_or(false) {
                    return;
                }
                if let Err(e) = hub.device_presence(&device.id, connected, parameters).await {
                    tracing::debug!(client_id, error = %e, "presence notification failed");
                }
            });
        }
    }
}
