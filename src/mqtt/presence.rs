//! Presence of MQTT sessions: connections hand their connect and disconnect events to one task,
//! which writes them to SQL in batches (one transaction for many sessions) and emits
//! `$device-connected` / `$device-disconnected` for client ids that are devices their user may see.
//! A connect storm therefore costs a few transactions, not one per client.
//!
//! A connection waits for its event to be done (`record` answers once the record and its
//! notification are committed): the connect before it answers CONNACK and reads publishes, the
//! disconnect after its last publish. So a device's `$device-connected` is committed before anything
//! it publishes and its `$device-disconnected` after, in the (timestamp, id) order every poller and
//! cursor sees; and a persistent session's record exists before its subscriptions are stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::auth::Principal;
use crate::hub::Hub;
use crate::model::SessionRecord;

pub struct PresenceEvent {
    pub record: SessionRecord,
    pub principal: Principal,
    /// `Some` when a presence notification should be emitted: its parameters.
    pub notification: Option<Value>,
}

/// An event and who waits for it to be written.
type Job = (PresenceEvent, oneshot::Sender<()>);

pub struct Presence {
    tx: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Presence {
    pub fn start(hub: Arc<Hub>) -> Presence {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(hub, rx));
        Presence { tx: Mutex::new(Some(tx)), task: Mutex::new(Some(task)) }
    }

    /// Queues an event; the answer completes once it is written and its notification committed
    /// (or could not be: failures are logged), or at once when presence is closed.
    pub fn record(&self, event: PresenceEvent) -> oneshot::Receiver<()> {
        let (done, answer) = oneshot::channel();
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send((event, done));
        }
        answer
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

async fn run(hub: Arc<Hub>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let records: Vec<SessionRecord> = batch.iter().map(|(e, _)| e.record.clone()).collect();
        // A disconnect that did not apply — the client id connected on another instance since, or the
        // session was marked lost — is not announced: the device is not disconnected.
        let count = records.len();
        let applied = match hub.mqtt_session_records(records).await {
            Ok(applied) => applied,
            Err(e) => {
                tracing::warn!(error = %e, sessions = count, "cannot record MQTT presence");
                vec![true; count]
            }
        };
        // Per client in order (connected before disconnected); different clients side by side, so the
        // message writer commits their notifications together.
        let mut per_client: HashMap<String, Vec<(bool, Value, Principal)>> = HashMap::new();
        let mut waiting = Vec::with_capacity(batch.len());
        for ((event, done), applied) in batch.drain(..).zip(applied) {
            waiting.push(done);
            let Some(parameters) = event.notification.filter(|_| applied) else { continue };
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
        for done in waiting {
            let _ = done.send(());
        }
    }
}
