//! Node heartbeats. Every instance records itself in `cluster_node` at start and beats every
//! `[cluster] heartbeat_secs`; each beat also sweeps: instances silent for `node_timeout_secs` are
//! forgotten, and MQTT sessions still recorded connected on an instance that is not alive are marked
//! disconnected with reason `node-lost` (with `$device-disconnected`), by whichever survivor gets
//! there first. On SQLite there is one instance, so at start every other node is a crashed earlier
//! run of this one and its sessions are marked lost at once.
//!
//! An instance that finds its own record gone (it was too slow to beat: a long pause, or cut off from
//! the database) has had its sessions marked lost by the others: it registers again and closes its
//! MQTT connections, whose clients reconnect and are recorded afresh.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::MqttSignal;
use crate::error::Result;
use crate::hub::Hub;
use crate::store::{Backend, Store};
use crate::time::now_ms;

/// Registers this node and sweeps once, then beats in the background until `stop`.
pub async fn start(hub: Arc<Hub>, store: Store, mut stop: watch::Receiver<bool>) -> Result<JoinHandle<()>> {
    let me = hub.cluster.node_id.to_string();
    let settings = hub.settings.cluster.clone();
    let beat = Duration::from_secs(settings.heartbeat_secs.max(1));
    let timeout_ms = (settings.node_timeout_secs.max(1) * 1000) as i64;
    store.node_register(&me, now_ms()).await?;
    // One instance on SQLite: whoever else is recorded crashed.
    let first_cutoff = match store.backend() {
        Backend::Sqlite => i64::MAX,
        Backend::Postgres => now_ms() - timeout_ms,
    };
    sweep(&hub, &store, &me, first_cutoff).await;
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(beat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            match store.node_heartbeat(&me, now_ms()).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(node_id = %me, "the other instances took this one for dead; closing its MQTT sessions");
                    if store.node_register(&me, now_ms()).await.is_ok() {
                        hub.cluster.signal_mqtt(MqttSignal::AllLost);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "node heartbeat failed"),
            }
            sweep(&hub, &store, &me, now_ms() - timeout_ms).await;
        }
    }))
}

/// Marks the sessions of dead instances lost and announces the devices among them.
async fn sweep(hub: &Arc<Hub>, store: &Store, me: &str, cutoff: i64) {
    let orphans = match store.nodes_sweep(me, cutoff, now_ms()).await {
        Ok(orphans) => orphans,
        Err(e) => {
            tracing::warn!(error = %e, "cannot sweep the sessions of lost instances");
            return;
        }
    };
    if orphans.is_empty() {
        return;
    }
    tracing::info!(sessions = orphans.len(), "MQTT sessions of lost instances marked disconnected (node-lost)");
    for orphan in orphans {
        if let Err(e) = hub.mqtt_session_lost(&orphan).await {
            tracing::debug!(client_id = %orphan.client_id, error = %e, "node-lost notification failed");
        }
    }
}
