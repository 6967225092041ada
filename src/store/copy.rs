//! Copying a whole hub database into another (`hivehub migrate-db`): every table, keeping ids and
//! timestamps, so users log in with their old passwords and tokens signed with the copied JWT secret
//! stay valid. Works between any two backends (SQLite → PostgreSQL is the usual move).
//!
//! The source is read inside one transaction (a consistent snapshot, even if something writes to it
//! meanwhile); the target is written in chunks of a few hundred rows per transaction and refused when
//! it already holds data, unless `replace` empties it first.

use super::seed::advance_sequences;
use super::sql::Param;
use super::{Backend, Row, Sql, Store, Tx};
use crate::error::{ApiError, Result};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    OptInt,
    Text,
    OptText,
    Bool,
}
use Kind::*;

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    /// Ordering for paging: `id` tables page by key, the MQTT session tables by their text keys.
    order: &'static str,
    has_id: bool,
}

/// Every table, parents before children (foreign keys hold at every chunk).
const TABLES: &[Table] = &[
    Table {
        name: "dh_user",
        columns: &[
            ("id", Int),
            ("login", Text),
            ("password_hash", Text),
            ("password_salt", Text),
            ("role", Int),
            ("status", Int),
            ("login_attempts", Int),
            ("last_login", OptInt),
            ("data", OptText),
            ("intro_reviewed", Bool),
            ("all_device_types_available", Bool),
            ("entity_version", Int),
            ("locked_until", OptInt),
        ],
        order: "id",
        has_id: true,
    },
    Table {
        name: "network",
        columns: &[("id", Int), ("name", Text), ("description", OptText), ("entity_version", Int)],
        order: "id",
        has_id: true,
    },
    Table {
        name: "device_type",
        columns: &[("id", Int), ("name", Text), ("description", OptText), ("entity_version", Int)],
        order: "id",
        has_id: true,
    },
    Table {
        name: "user_network",
        columns: &[("id", Int), ("user_id", Int), ("network_id", Int)],
        order: "id",
        has_id: true,
    },
    Table {
        name: "user_device_type",
        columns: &[("id", Int), ("user_id", Int), ("device_type_id", Int)],
        order: "id",
        has_id: true,
    },
    Table {
        name: "device",
        columns: &[
            ("id", Int),
            ("device_id", Text),
            ("name", Text),
            ("network_id", OptInt),
            ("device_type_id", OptInt),
            ("data", OptText),
            ("blocked", Bool),
            ("entity_version", Int),
        ],
        order: "id",
        has_id: true,
    },
    Table {
        name: "configuration",
        columns: &[("id", Int), ("name", Text), ("value", Text), ("entity_version", Int)],
        order: "id",
        has_id: true,
    },
    Table {
        name: "device_notification",
        columns: &[
            ("id", Int),
            ("device_id", Text),
            ("network_id", OptInt),
            ("device_type_id", OptInt),
            ("notification", Text),
            ("timestamp", Int),
            ("parameters", OptText),
        ],
        order: "id",
        has_id: true,
    },
    Table {
        name: "device_command",
        columns: &[
            ("id", Int),
            ("device_id", Text),
            ("network_id", OptInt),
            ("device_type_id", OptInt),
            ("command", Text),
            ("timestamp", Int),
            ("last_updated", Int),
            ("user_id", OptInt),
            ("parameters", OptText),
            ("lifetime", OptInt),
            ("status", OptText),
            ("result", OptText),
            ("is_updated", Bool),
        ],
        order: "id",
        has_id: true,
    },
    Table {
        name: "mqtt_session",
        columns: &[
            ("client_id", Text),
            ("user_id", OptInt),
            ("clean", Bool),
            ("connected", Bool),
            ("connected_at", OptInt),
            ("disconnected_at", OptInt),
            ("disconnect_reason", OptText),
            ("owner", OptText),
            ("node_id", OptText),
        ],
        order: "client_id",
        has_id: false,
    },
    Table {
        name: "mqtt_subscription",
        columns: &[("client_id", Text), ("filter", Text), ("qos", Int), ("since", Int)],
        order: "client_id, filter",
        has_id: false,
    },
    Table {
        name: "mqtt_retained",
        columns: &[("topic", Text), ("payload", Text), ("qos", Int), ("updated_at", Int)],
        order: "topic",
        has_id: false,
    },
];

/// Tables deliberately not copied: the instances alive on the source are not alive on the target (their
/// sessions are marked `node-lost` by the first hub started on it).
#[cfg(test)]
const NOT_COPIED: &[&str] = &["cluster_node"];

/// Rows per target transaction; also keeps a multi-row INSERT under both databases' parameter limits.
const CHUNK: usize = 500;

/// Where a copy stands, for progress reports.
#[derive(Debug, Clone)]
pub struct Progress {
    pub table: &'static str,
    pub copied: u64,
    pub total: u64,
    /// Rows copied so far over all tables, and rows to copy in all.
    pub all_copied: u64,
    pub all_total: u64,
}

/// The outcome: rows per table, counted in the target after the copy.
#[derive(Debug, Clone)]
pub struct CopyReport {
    pub tables: Vec<(&'static str, u64)>,
}

fn read(r: &Row, i: usize, kind: Kind) -> Param {
    match kind {
        Int => Param::I64(Some(r.i64(i))),
        OptInt => Param::I64(r.opt_i64(i)),
        Text => Param::Text(Some(r.text(i))),
        OptText => Param::Text(r.opt_text(i)),
        Bool => Param::Bool(r.bool(i)),
    }
}

async fn count(tx: &mut Tx, table: &str) -> Result<u64> {
    Ok(tx.fetch_one(Sql::new(format!("SELECT COUNT(*) FROM {table}")), |r| r.i64(0)).await? as u64)
}

fn failed(message: String) -> ApiError {
    ApiError::new(axum::http::StatusCode::CONFLICT, message)
}

impl Store {
    /// Copies every row of this database into `target` (see the module documentation). `replace`
    /// empties a target that already holds rows; without it such a target is refused. Verifies at the
    /// end that every table holds as many rows in the target as in the source.
    pub async fn copy_into(
        &self,
        target: &Store,
        replace: bool,
        mut progress: impl FnMut(&Progress),
    ) -> Result<CopyReport> {
        let mut source = self.db.begin().await?;
        if source.backend() == Backend::Postgres {
            source.execute(Sql::new("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")).await?;
        }
        let mut totals = Vec::with_capacity(TABLES.len());
        for t in TABLES {
            totals.push(count(&mut source, t.name).await?);
        }
        let all_total: u64 = totals.iter().sum();

        let mut check = target.db.begin().await?;
        let mut occupied = Vec::new();
        for t in TABLES {
            if count(&mut check, t.name).await? > 0 {
                occupied.push(t.name);
            }
        }
        drop(check);
        if !occupied.is_empty() {
            if !replace {
                return Err(failed(format!(
                    "the target database is not empty (rows in {}); pass --replace to empty it first",
                    occupied.join(", ")
                )));
            }
            let mut wipe = target.db.begin().await?;
            for t in TABLES.iter().rev() {
                wipe.execute(Sql::new(format!("DELETE FROM {}", t.name))).await?;
            }
            wipe.commit().await?;
        }

        let mut all_copied = 0u64;
        for (t, &total) in TABLES.iter().zip(&totals) {
            let select = t.columns.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ");
            let mut copied = 0u64;
            let mut last_id = i64::MIN;
            progress(&Progress { table: t.name, copied, total, all_copied, all_total });
            loop {
                let mut page = Sql::new(format!("SELECT {select} FROM {}", t.name));
                if t.has_id {
                    page.push(" WHERE id > ").push_bind(last_id);
                    page.push(&format!(" ORDER BY id LIMIT {CHUNK}"));
                } else {
                    page.push(&format!(" ORDER BY {} LIMIT {CHUNK} OFFSET {copied}", t.order));
                }
                let rows: Vec<Vec<Param>> = source
                    .fetch_all(page, |r| t.columns.iter().enumerate().map(|(i, (_, k))| read(r, i, *k)).collect())
                    .await?;
                if rows.is_empty() {
                    break;
                }
                if t.has_id {
                    if let Some(Param::I64(Some(id))) = rows.last().and_then(|r| r.first()) {
                        last_id = *id;
                    }
                }
                let mut insert = Sql::new(format!("INSERT INTO {} ({select}) VALUES ", t.name));
                for (i, row) in rows.iter().enumerate() {
                    if i > 0 {
                        insert.push(", ");
                    }
                    insert.push_list(row.iter().cloned());
                }
                let mut tx = target.db.begin().await?;
                tx.execute(insert).await?;
                tx.commit().await?;
                copied += rows.len() as u64;
                all_copied += rows.len() as u64;
                progress(&Progress { table: t.name, copied, total, all_copied, all_total });
            }
        }
        drop(source);

        let mut tx = target.db.begin().await?;
        let id_tables: Vec<&str> = TABLES.iter().filter(|t| t.has_id).map(|t| t.name).collect();
        advance_sequences(&mut tx, &id_tables).await?;
        if tx.backend() == Backend::Postgres {
            // The cluster's message clock (writer.rs) starts after every copied stamp.
            tx.execute(Sql::new(
                "UPDATE message_clock SET last_ts = GREATEST(last_ts, \
                 (SELECT COALESCE(MAX(timestamp), 0) FROM device_notification), \
                 (SELECT COALESCE(MAX(last_updated), 0) FROM device_command))",
            ))
            .await?;
        }
        let mut report = CopyReport { tables: Vec::with_capacity(TABLES.len()) };
        let mut mismatches = Vec::new();
        for (t, &total) in TABLES.iter().zip(&totals) {
            let n = count(&mut tx, t.name).await?;
            if n != total {
                mismatches.push(format!("{}: {n} rows in the target, {total} in the source", t.name));
            }
            report.tables.push((t.name, n));
        }
        tx.commit().await?;
        if !mismatches.is_empty() {
            return Err(failed(format!("verification failed: {}", mismatches.join("; "))));
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy list names every table the migrations create, with every column: a new column or
    /// table must be added here or `migrate-db` would silently drop it.
    #[tokio::test]
    async fn every_table_and_column_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::config::Settings::defaults().database;
        settings.url = format!("sqlite://{}/c.db", dir.path().display());
        let store = Store::open(&settings).await.unwrap();
        let tables = store
            .db
            .fetch_all(
                Sql::new(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
                     AND name NOT LIKE '_sqlx%' ORDER BY name",
                ),
                |r| r.text(0),
            )
            .await
            .unwrap();
        let mut listed: Vec<&str> = TABLES.iter().map(|t| t.name).chain(NOT_COPIED.iter().copied()).collect();
        listed.sort_unstable();
        assert_eq!(tables, listed);
        for t in TABLES {
            let mut columns = store
                .db
                .fetch_all(Sql::new(format!("SELECT name FROM pragma_table_info('{}')", t.name)), |r| r.text(0))
                .await
                .unwrap();
            columns.sort();
            let mut copied: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
            copied.sort_unstable();
            assert_eq!(columns, copied, "columns of {}", t.name);
        }
    }
}
