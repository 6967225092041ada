//! Plain MQTT across the instances of a cluster: the service-layer side of the MQTT edge's relay
//! (`crate::mqtt::relay`) and of the retained messages every instance serves. The edge has already
//! authorized every publish it relays; these only carry them to and from the store.

use std::time::Duration;

use super::Hub;
use crate::error::Result;
use crate::store::retained::{PlainListener, RelayBatch, RetainedMessage};

impl Hub {
    /// Every retained plain-topic message of the cluster (none on SQLite: its one router keeps them).
    pub async fn retained_messages(&self) -> Result<Vec<RetainedMessage>> {
        self.store.retained_all().await
    }

    /// Listens for the plain publishes other instances relay; `None` on SQLite (one instance).
    pub async fn plain_relay_listen(&self) -> Result<Option<PlainListener>> {
        self.store.plain_listen().await
    }

    /// Sends a batch of relayed publishes, applying its retained changes with it.
    pub async fn plain_relay_send(&self, batch: &RelayBatch) -> Result<()> {
        self.store.plain_send(batch, crate::time::now_ms()).await
    }

    /// Parks a relayed publish too large for a notification; returns the id to send instead.
    pub async fn plain_relay_park(&self, message: &str) -> Result<i64> {
        self.store.plain_park(message, crate::time::now_ms()).await
    }

    /// A parked publish, unless it has expired.
    pub async fn plain_relay_parked(&self, id: i64) -> Result<Option<String>> {
        self.store.plain_parked(id).await
    }

    /// Deletes parked publishes older than `max_age`.
    pub async fn plain_relay_expire(&self, max_age: Duration) -> Result<u64> {
        self.store.plain_parked_expire(crate::time::now_ms() - max_age.as_millis() as i64).await
    }
}
