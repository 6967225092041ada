//! Wakes live connections whose deadline may have passed (keepalive, the anonymous session's time
//! to authenticate) and, at shutdown, all of them. Connections wait on their `Signal` alone instead
//! of a timer and a shutdown watch each, which keeps an idle connection small; a deadline is
//! therefore noticed within `EVERY` after it passes (MQTT 3.1.1 §3.1.2.10 asks for "within one and
//! a half times the keep alive", which Mosquitto, too, checks periodically).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::MqttShared;
use crate::hub::signal::{clock_ms, Signal};

const EVERY: Duration = Duration::from_millis(250);

pub fn spawn(shared: Arc<MqttShared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = clock_ms();
                    let sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
                    for live in sessions.values() {
                        live.signal.raise_if_due(now);
                    }
                }
                _ = shared.hub.shutting_down() => {
                    // A connection that claims its client id after this sees the shutdown when its
                    // loop starts (`Conn::serve`).
                    let sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
                    for live in sessions.values() {
                        live.signal.raise(Signal::SHUTDOWN);
                    }
                    return;
                }
            }
        }
    })
}
