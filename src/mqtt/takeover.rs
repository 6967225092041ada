//! Takeover across instances: when a client id is claimed on another instance (MQTT 3.1.1 §3.1.4,
//! announced as a control event), a live connection with that client id here is closed as taken
//! over — unless it claimed the id later (two clients connecting at once on two instances: the later
//! claim wins on both, ties broken by node id). When the other instances took this one for dead, all
//! of its connections close.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::MqttShared;
use crate::cluster::MqttSignal;
use crate::hub::signal::Signal;

pub fn spawn(shared: Arc<MqttShared>) -> JoinHandle<()> {
    let mut signals = shared.hub.cluster.mqtt_signals();
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                s = signals.recv() => s,
                _ = shared.hub.shutting_down() => return,
            };
            match signal {
                Ok(MqttSignal::Claimed { client_id, at, node }) => {
                    let me = &*shared.hub.cluster.node_id;
                    let sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(live) = sessions.get(&client_id) {
                        if (live.since, me) < (at, node.as_str()) {
                            tracing::debug!(client_id, node, "MQTT client id taken over by another instance");
                            live.signal.raise(Signal::TAKEN_OVER);
                        }
                    }
                }
                Ok(MqttSignal::AllLost) => close_all(&shared),
                // Missed claims: which connections are concerned is unknown, so none is closed; a
                // client id connected on two instances is settled at its next claim.
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "MQTT takeover signals missed"),
                Err(RecvError::Closed) => return,
            }
        }
    })
}

fn close_all(shared: &MqttShared) {
    let sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
    for live in sessions.values() {
        live.signal.raise(Signal::TAKEN_OVER);
    }
}
