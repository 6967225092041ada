//! The seam between the store's shared code and the two databases.
//!
//! Entity files build statements as [`Sql`]: text in the dialect both databases accept (`$n`
//! placeholders — sqlx's SQLite driver reads them too —, `ON CONFLICT`, `TRUE`/`FALSE`, `RETURNING`)
//! plus typed parameters. [`Db`] and [`Tx`] run them on whichever pool the database URL picked, and
//! [`Row`] reads results from either. Only what differs (pool options, migrations, the writer's bulk
//! insert, table copies) matches on the backend itself.
//!
//! Why not `sqlx::Any`: its builder emits `?` placeholders (PostgreSQL rejects them) and it knows few
//! types. Why not code generic over `sqlx::Database`: every query would carry a wall of trait bounds.
//! An enum over the pools keeps entity code plain and still monomorphic underneath.

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Postgres, Row as _, Sqlite, SqlitePool};

use crate::error::Result;

/// PostgreSQL `TEXT` cannot hold U+0000, which SQLite stores and clients may send (a notification
/// named `"a\u0000b"`). So on PostgreSQL every text parameter goes in with U+0000 written as U+FFFF
/// `0` and U+FFFF as U+FFFF `F`, and every text read undoes it: both backends store and return the
/// same strings, and equality, `IN` and `LIKE` on escaped values still match. U+FFFF is a
/// noncharacter, so real text practically never pays for more than the scan.
const ESCAPE: char = '\u{FFFF}';

pub(crate) fn needs_escape(s: &str) -> bool {
    s.contains(['\0', ESCAPE])
}

fn pg_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\0' => out.extend([ESCAPE, '0']),
            ESCAPE => out.extend([ESCAPE, 'F']),
            c => out.push(c),
        }
    }
    out
}

fn pg_unescape(s: String) -> String {
    if !s.contains(ESCAPE) {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != ESCAPE {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some('F') | None => out.push(ESCAPE),
            // Not written by the hub (e.g. imported data): kept as it is.
            Some(other) => out.extend([ESCAPE, other]),
        }
    }
    out
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// A statement parameter.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    I64(Option<i64>),
    Text(Option<String>),
    Bool(bool),
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::I64(Some(v))
    }
}
impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        Param::I64(v)
    }
}
impl From<bool> for Param {
    fn from(v: bool) -> Self {
        Param::Bool(v)
    }
}
impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(Some(v.to_string()))
    }
}
impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Text(Some(v))
    }
}
impl From<&String> for Param {
    fn from(v: &String) -> Self {
        Param::Text(Some(v.clone()))
    }
}
impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Self {
        Param::Text(v)
    }
}
impl From<&Option<String>> for Param {
    fn from(v: &Option<String>) -> Self {
        Param::Text(v.clone())
    }
}
impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Self {
        Param::Text(v.map(str::to_string))
    }
}

/// A statement: portable SQL text and its parameters, in placeholder order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sql {
    text: String,
    params: Vec<Param>,
}

impl Sql {
    /// A statement whose text may already hold `$1`, `$2`, ... for parameters given with [`Sql::bind`].
    pub fn new(text: impl Into<String>) -> Sql {
        Sql { text: text.into(), params: Vec::new() }
    }
    /// Appends text.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }
    /// Appends a placeholder for the next parameter, and the parameter.
    pub fn push_bind(&mut self, p: impl Into<Param>) -> &mut Self {
        self.params.push(p.into());
        self.text.push('$');
        self.text.push_str(&self.params.len().to_string());
        self
    }
    /// `(p1, p2, ...)`-style list of placeholders, for `IN`.
    pub fn push_list<P: Into<Param>>(&mut self, items: impl IntoIterator<Item = P>) -> &mut Self {
        self.text.push('(');
        for (i, p) in items.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.push_bind(p);
        }
        self.text.push(')');
        self
    }
    /// Adds the parameter of the next `$n` already written in the text.
    pub fn bind(mut self, p: impl Into<Param>) -> Sql {
        self.params.push(p.into());
        self
    }
    #[cfg(test)]
    pub fn text(&self) -> &str {
        &self.text
    }
    /// The statement as PostgreSQL must get it (see [`ESCAPE`]).
    fn for_postgres(mut self) -> Sql {
        for p in &mut self.params {
            if let Param::Text(Some(t)) = p {
                if needs_escape(t) {
                    *t = pg_escape(t);
                }
            }
        }
        self
    }
}

/// Binds `sql`'s parameters to a query of either backend (the same code, monomorphised twice).
macro_rules! bound {
    ($sql:expr) => {{
        let mut q = sqlx::query($sql.text.as_str());
        for p in &$sql.params {
            q = match p {
                Param::I64(v) => q.bind(*v),
                Param::Text(v) => q.bind(v.as_deref()),
                Param::Bool(v) => q.bind(*v),
            };
        }
        q
    }};
}

/// A result row of either backend.
pub(crate) enum Row<'r> {
    Sqlite(&'r SqliteRow),
    Postgres(&'r PgRow),
    /// The writer's own SQLite connection (`sqlite_batch.rs`).
    Rusqlite(&'r rusqlite::Row<'r>),
}

macro_rules! get {
    ($row:expr, $col:expr, $t:ty) => {
        match $row {
            Row::Sqlite(r) => r.get::<$t, _>($col),
            Row::Postgres(r) => r.get::<$t, _>($col),
            // The hub's own schema: a column of another type is a bug, read as the default.
            Row::Rusqlite(r) => r.get::<_, $t>($col).unwrap_or_default(),
        }
    };
}

/// Column index: by name or position.
pub(crate) trait Col:
    sqlx::ColumnIndex<SqliteRow> + sqlx::ColumnIndex<PgRow> + rusqlite::RowIndex + Copy
{
}
impl Col for &str {}
impl Col for usize {}

impl Row<'_> {
    pub fn i64(&self, col: impl Col) -> i64 {
        get!(self, col, i64)
    }
    pub fn opt_i64(&self, col: impl Col) -> Option<i64> {
        get!(self, col, Option<i64>)
    }
    pub fn text(&self, col: impl Col) -> String {
        match self {
            Row::Sqlite(r) => r.get(col),
            Row::Postgres(r) => pg_unescape(r.get(col)),
            Row::Rusqlite(r) => r.get(col).unwrap_or_default(),
        }
    }
    pub fn opt_text(&self, col: impl Col) -> Option<String> {
        match self {
            Row::Sqlite(r) => r.get(col),
            Row::Postgres(r) => r.get::<Option<String>, _>(col).map(pg_unescape),
            Row::Rusqlite(r) => r.get(col).unwrap_or_default(),
        }
    }
    pub fn bool(&self, col: impl Col) -> bool {
        get!(self, col, bool)
    }
}

/// The pool of whichever backend the URL picked.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(super::breaker::Pg),
}

/// A transaction on either backend.
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

macro_rules! on_tx {
    ($tx:expr, $ex:ident => $body:expr) => {
        match $tx {
            Tx::Sqlite($ex) => $body,
            Tx::Postgres($ex) => $body,
        }
    };
}

macro_rules! rows {
    ($kind:ident, $rows:expr, $map:expr) => {
        $rows.iter().map(|r| $map(&Row::$kind(r))).collect()
    };
}

impl Db {
    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    pub async fn begin(&self) -> Result<Tx> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Db::Postgres(p) => Tx::Postgres(p.guard(p.begin()).await?),
        })
    }

    /// Runs a statement; returns the number of rows it changed.
    pub async fn execute(&self, sql: Sql) -> Result<u64> {
        Ok(match self {
            Db::Sqlite(p) => bound!(sql).execute(p).await?.rows_affected(),
            Db::Postgres(p) => {
                let sql = sql.for_postgres();
                p.guard(bound!(sql).execute(&**p)).await?.rows_affected()
            }
        })
    }

    pub async fn fetch_all<T>(&self, sql: Sql, map: impl Fn(&Row) -> T) -> Result<Vec<T>> {
        Ok(match self {
            Db::Sqlite(p) => rows!(Sqlite, bound!(sql).fetch_all(p).await?, map),
            Db::Postgres(p) => {
                let sql = sql.for_postgres();
                rows!(Postgres, p.guard(bound!(sql).fetch_all(&**p)).await?, map)
            }
        })
    }

    pub async fn fetch_optional<T>(&self, sql: Sql, map: impl Fn(&Row) -> T) -> Result<Option<T>> {
        Ok(match self {
            Db::Sqlite(p) => bound!(sql).fetch_optional(p).await?.map(|r| map(&Row::Sqlite(&r))),
            Db::Postgres(p) => {
                let sql = sql.for_postgres();
                p.guard(bound!(sql).fetch_optional(&**p)).await?.map(|r| map(&Row::Postgres(&r)))
            }
        })
    }

    pub async fn fetch_one<T>(&self, sql: Sql, map: impl Fn(&Row) -> T) -> Result<T> {
        Ok(match self {
            Db::Sqlite(p) => map(&Row::Sqlite(&bound!(sql).fetch_one(p).await?)),
            Db::Postgres(p) => {
                let sql = sql.for_postgres();
                map(&Row::Postgres(&p.guard(bound!(sql).fetch_one(&**p)).await?))
            }
        })
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

impl Tx {
    pub fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(_) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
    }

    pub async fn execute(&mut self, sql: Sql) -> Result<u64> {
        Ok(match self {
            Tx::Sqlite(t) => bound!(sql).execute(&mut **t).await?.rows_affected(),
            Tx::Postgres(t) => {
                let sql = sql.for_postgres();
                bound!(sql).execute(&mut **t).await?.rows_affected()
            }
        })
    }

    pub async fn fetch_all<T>(&mut self, sql: Sql, map: impl Fn(&Row) -> T) -> Result<Vec<T>> {
        Ok(match self {
            Tx::Sqlite(t) => rows!(Sqlite, bound!(sql).fetch_all(&mut **t).await?, map),
            Tx::Postgres(t) => {
                let sql = sql.for_postgres();
                rows!(Postgres, bound!(sql).fetch_all(&mut **t).await?, map)
            }
        })
    }

    pub async fn fetch_optional<T>(&mut self, sql: Sql, map: impl Fn(&Row) -> T) -> Result<Option<T>> {
        Ok(match self {
            Tx::Sqlite(t) => bound!(sql).fetch_optional(&mut **t).await?.map(|r| map(&Row::Sqlite(&r))),
            Tx::Postgres(t) => {
                let sql = sql.for_postgres();
                bound!(sql).fetch_optional(&mut **t).await?.map(|r| map(&Row::Postgres(&r)))
            }
        })
    }

    pub async fn fetch_one<T>(&mut self, sql: Sql, map: impl Fn(&Row) -> T) -> Result<T> {
        Ok(match self {
            Tx::Sqlite(t) => map(&Row::Sqlite(&bound!(sql).fetch_one(&mut **t).await?)),
            Tx::Postgres(t) => {
                let sql = sql.for_postgres();
                map(&Row::Postgres(&bound!(sql).fetch_one(&mut **t).await?))
            }
        })
    }

    /// Starts a savepoint on PostgreSQL when `guarded`: PostgreSQL aborts the whole transaction on the
    /// first failed statement; SQLite undoes only the failed statement, so it needs none.
    pub async fn savepoint(&mut self, guarded: bool) -> Result<()> {
        if let (Tx::Postgres(t), true) = (&mut *self, guarded) {
            sqlx::query("SAVEPOINT one_row").execute(&mut **t).await?;
        }
        Ok(())
    }

    /// Ends the savepoint of [`Tx::savepoint`]: kept when `result` is a success, undone otherwise,
    /// so the transaction goes on either way. Returns `result`.
    pub async fn end_savepoint<T>(&mut self, guarded: bool, result: Result<T>) -> Result<T> {
        if let (Tx::Postgres(t), true) = (&mut *self, guarded) {
            let end = if result.is_ok() { "RELEASE SAVEPOINT one_row" } else { "ROLLBACK TO SAVEPOINT one_row" };
            sqlx::query(end).execute(&mut **t).await?;
        }
        result
    }

    pub async fn commit(self) -> Result<()> {
        on_tx!(self, t => t.commit().await?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_bind_order() {
        let mut q = Sql::new("SELECT 1 FROM t WHERE a = $1").bind(1i64);
        q.push(" AND b IN ").push_list(["x", "y"]).push(" AND c = ").push_bind(true);
        assert_eq!(q.text(), "SELECT 1 FROM t WHERE a = $1 AND b IN ($2, $3) AND c = $4");
        assert_eq!(q.params.len(), 4);
    }

    #[test]
    fn postgres_text_escape_round_trips() {
        for s in ["", "plain", "nul\0byte", "\0", "\u{FFFF}", "a\u{FFFF}0b\0\u{FFFF}F", "ünï\0cödé"] {
            let stored = pg_escape(s);
            assert!(!stored.contains('\0'), "{s:?}");
            assert_eq!(pg_unescape(stored), s);
            assert_eq!(needs_escape(s), s.contains(['\0', '\u{FFFF}']));
        }
        assert_eq!(pg_unescape("no escape".to_string()), "no escape");
    }
}
