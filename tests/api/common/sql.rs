//! Raw SQL on a hub's database from the tests, on either backend: `TestDb` (see also the `sql_*`
//! helpers of `TestHub`). Write SQL both SQLite and PostgreSQL accept, with `$1`-style placeholders
//! (sqlx's SQLite driver takes them too). Rows come back as JSON values (integers, floats, strings,
//! booleans, null); cast other column types in the query (`CAST(x AS TEXT)`).

use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Column, PgPool, Row, SqlitePool, TypeInfo};

/// A bind argument of [`TestDb`] queries.
#[derive(Debug, Clone)]
pub enum SqlArg {
    Int(i64),
    Text(String),
    Bool(bool),
}

impl From<i64> for SqlArg {
    fn from(v: i64) -> Self {
        SqlArg::Int(v)
    }
}
impl From<&str> for SqlArg {
    fn from(v: &str) -> Self {
        SqlArg::Text(v.to_string())
    }
}
impl From<String> for SqlArg {
    fn from(v: String) -> Self {
        SqlArg::Text(v)
    }
}
impl From<bool> for SqlArg {
    fn from(v: bool) -> Self {
        SqlArg::Bool(v)
    }
}

/// A connection pool to a hub's database, whatever the backend.
pub enum TestDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for arg in $args {
            q = match arg {
                SqlArg::Int(v) => q.bind(*v),
                SqlArg::Text(v) => q.bind(v.clone()),
                SqlArg::Bool(v) => q.bind(*v),
            };
        }
        q
    }};
}

/// One row as JSON values: each column decoded as the first of these types that fits.
macro_rules! decode_row {
    ($row:expr) => {{
        let row = $row;
        (0..row.len())
            .map(|i| {
                if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
                    return v.map_or(Value::Null, Value::from);
                }
                if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
                    return v.map_or(Value::Null, Value::from);
                }
                if let Ok(v) = row.try_get::<Option<i16>, _>(i) {
                    return v.map_or(Value::Null, Value::from);
                }
                if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
                    return v.map_or(Value::Null, Value::from);
                }
                if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
                    return v.map_or(Value::Null, Value::from);
                }
                if let Ok(v) = row.try_get::<Option<String>, _>(i) {
                    return v.map_or(Value::Null, Value::from);
                }
                if let Ok(v) = row.try_get::<Option<Vec<u8>>, _>(i) {
                    return v.map_or(Value::Null, Value::from);
                }
                let column = row.column(i);
                panic!(
                    "column {} has type {}: cast it in the query, e.g. CAST(x AS TEXT)",
                    column.name(),
                    column.type_info().name()
                )
            })
            .collect::<Vec<Value>>()
    }};
}

impl TestDb {
    /// Connects to the database at `url` (`sqlite://PATH` or `postgres://...`).
    pub async fn connect(url: &str) -> TestDb {
        if is_postgres_url(url) {
            let pool = PgPoolOptions::new().max_connections(2).connect(url).await;
            TestDb::Postgres(pool.unwrap_or_else(|e| panic!("connect to {url}: {e}")))
        } else {
            let pool = SqlitePoolOptions::new().max_connections(2).connect(url).await;
            TestDb::Sqlite(pool.unwrap_or_else(|e| panic!("connect to {url}: {e}")))
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, TestDb::Postgres(_))
    }

    /// Runs one statement; returns the number of rows it affected.
    pub async fn execute(&self, sql: &str, args: &[SqlArg]) -> u64 {
        let done = match self {
            TestDb::Sqlite(pool) => bind_all!(sqlx::query(sql), args).execute(pool).await.map(|r| r.rows_affected()),
            TestDb::Postgres(pool) => bind_all!(sqlx::query(sql), args).execute(pool).await.map(|r| r.rows_affected()),
        };
        done.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Every row of a query, each as its columns' values.
    pub async fn fetch_all(&self, sql: &str, args: &[SqlArg]) -> Vec<Vec<Value>> {
        match self {
            TestDb::Sqlite(pool) => {
                let rows = bind_all!(sqlx::query(sql), args).fetch_all(pool).await;
                rows.unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|row| decode_row!(row)).collect()
            }
            TestDb::Postgres(pool) => {
                let rows = bind_all!(sqlx::query(sql), args).fetch_all(pool).await;
                rows.unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|row| decode_row!(row)).collect()
            }
        }
    }

    /// The only row of a query (panics unless there is exactly one).
    pub async fn fetch_one(&self, sql: &str, args: &[SqlArg]) -> Vec<Value> {
        let mut rows = self.fetch_all(sql, args).await;
        assert_eq!(rows.len(), 1, "one row expected from {sql}: {rows:?}");
        rows.pop().unwrap()
    }

    /// Fault injection: from now on every INSERT into `table` fails with `message` (a trigger).
    pub async fn refuse_inserts(&self, table: &str, message: &str) {
        let message = message.replace('\'', "''");
        match self {
            TestDb::Sqlite(_) => {
                let trigger = format!(
                    "CREATE TRIGGER hivehub_test_refuse_{table} BEFORE INSERT ON {table} \
                     BEGIN SELECT RAISE(ABORT, '{message}'); END"
                );
                self.execute(&trigger, &[]).await;
            }
            TestDb::Postgres(_) => {
                let message = message.replace('%', "%%");
                let function = format!(
                    "CREATE FUNCTION hivehub_test_refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN RAISE EXCEPTION '{message}'; END $$"
                );
                self.execute(&function, &[]).await;
                let trigger = format!(
                    "CREATE TRIGGER hivehub_test_refuse_{table} BEFORE INSERT ON {table} \
                     FOR EACH ROW EXECUTE FUNCTION hivehub_test_refuse_{table}()"
                );
                self.execute(&trigger, &[]).await;
            }
        }
    }

    pub async fn close(self) {
        match self {
            TestDb::Sqlite(pool) => pool.close().await,
            TestDb::Postgres(pool) => pool.close().await,
        }
    }
}
