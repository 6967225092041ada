//! Plain MQTT across the instances of a cluster (PostgreSQL): the retained messages every instance
//! serves (`mqtt_retained`) and the SQL side of the plain-topic relay (`crate::mqtt::relay`) — its
//! `NOTIFY hivehub_plain` batches, the listener, and the parking table for messages too large for
//! a NOTIFY (`mqtt_plain_relay`). SQLite runs one instance: nothing here is used there.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sqlx::postgres::PgListener;

use super::{Db, Sql, Store};
use crate::error::Result;

/// The channel plain publishes are relayed on.
pub const PLAIN_CHANNEL: &str = "hivehub_plain";

/// A retained plain-topic message (the payload as bytes; stored as base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
}

/// What one relay batch sends, in one transaction when it changes retained messages: those changes
/// (an empty payload deletes the topic's message) and the notification texts, in order. Notifications
/// of a transaction are delivered at its commit and in commit order, so every instance sees retained
/// changes in the order the database applied them.
#[derive(Debug, Default)]
pub struct RelayBatch {
    pub retained: Vec<RetainedMessage>,
    pub notes: Vec<String>,
}

/// One statement notifies a whole batch: the texts travel as one parameter, newline-separated (the
/// relay's texts are JSON and hold no raw newline), and `unnest` keeps their order.
const NOTIFY_BATCH: &str = "SELECT pg_notify($1, note) FROM unnest(string_to_array($2, E'\\n')) AS note";

/// The listening side of the relay: one dedicated connection, reconnected by sqlx when lost.
pub struct PlainListener(PgListener);

impl PlainListener {
    /// The next notification's text. After an error the next call reconnects; notifications sent
    /// meanwhile are lost (plain MQTT across instances is at most once over a lost connection).
    pub async fn recv(&mut self) -> Result<String> {
        Ok(self.0.recv().await?.payload().to_string())
    }
}

fn upsert_retained(m: &RetainedMessage, now: i64) -> Sql {
    if m.payload.is_empty() {
        return Sql::new("DELETE FROM mqtt_retained WHERE topic = $1").bind(&m.topic);
    }
    Sql::new(
        "INSERT INTO mqtt_retained (topic, payload, qos, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos, \
         updated_at = excluded.updated_at",
    )
    .bind(&m.topic)
    .bind(BASE64.encode(&m.payload))
    .bind(m.qos as i64)
    .bind(now)
}

impl Store {
    /// Every retained message (PostgreSQL; empty on SQLite, where the router alone keeps them).
    /// A row whose payload is not base64 (not written by the hub) is skipped.
    pub async fn retained_all(&self) -> Result<Vec<RetainedMessage>> {
        if !matches!(self.db, Db::Postgres(_)) {
            return Ok(Vec::new());
        }
        let rows = self
            .db
            .fetch_all(Sql::new("SELECT topic, payload, qos FROM mqtt_retained ORDER BY topic"), |r| {
                (r.text(0), r.text(1), r.i64(2))
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(topic, payload, qos)| {
                let payload = BASE64.decode(payload).ok()?;
                Some(RetainedMessage { topic, payload, qos: qos.clamp(0, 1) as u8 })
            })
            .collect())
    }

    /// Starts listening for relayed plain publishes; `None` on SQLite.
    pub async fn plain_listen(&self) -> Result<Option<PlainListener>> {
        let Db::Postgres(pool) = &self.db else { return Ok(None) };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(PLAIN_CHANNEL).await?;
        Ok(Some(PlainListener(listener)))
    }

    /// Sends a relay batch: one statement, or one transaction when it changes retained messages.
    pub async fn plain_send(&self, batch: &RelayBatch, now: i64) -> Result<()> {
        let notify = Sql::new(NOTIFY_BATCH).bind(PLAIN_CHANNEL).bind(batch.notes.join("\n"));
        if batch.retained.is_empty() {
            self.db.execute(notify).await?;
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        for m in &batch.retained {
            tx.execute(upsert_retained(m, now)).await?;
        }
        if !batch.notes.is_empty() {
            tx.execute(notify).await?;
        }
        tx.commit().await
    }

    /// Parks a message too large for a NOTIFY; returns the id to notify instead.
    pub async fn plain_park(&self, message: &str, now: i64) -> Result<i64> {
        let sql = Sql::new("INSERT INTO mqtt_plain_relay (message, created_at) VALUES ($1, $2) RETURNING id")
            .bind(message)
            .bind(now);
        self.db.fetch_one(sql, |r| r.i64(0)).await
    }

    /// A parked message, unless it has expired.
    pub async fn plain_parked(&self, id: i64) -> Result<Option<String>> {
        let sql = Sql::new("SELECT message FROM mqtt_plain_relay WHERE id = $1").bind(id);
        self.db.fetch_optional(sql, |r| r.text(0)).await
    }

    /// Deletes parked messages written before `before` (epoch ms); returns how many.
    pub async fn plain_parked_expire(&self, before: i64) -> Result<u64> {
        self.db.execute(Sql::new("DELETE FROM mqtt_plain_relay WHERE created_at < $1").bind(before)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_retained_payload_deletes_the_topic() {
        let clear = RetainedMessage { topic: "a/b".into(), payload: Vec::new(), qos: 1 };
        assert!(upsert_retained(&clear, 1).text().starts_with("DELETE"));
        let keep = RetainedMessage { topic: "a/b".into(), payload: b"on".to_vec(), qos: 1 };
        assert!(upsert_retained(&keep, 1).text().starts_with("INSERT"));
    }
}
