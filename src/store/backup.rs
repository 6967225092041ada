//! Online backup of a SQLite database: `VACUUM INTO` copies one read snapshot (consistent, while the
//! hub keeps writing) into a new, compacted database file.

use std::path::Path;

use super::{Db, Store};
use crate::error::{ApiError, Result};

impl Store {
    /// Copies the SQLite database into the new file `path` (written as `path.partial`, then renamed, so
    /// a failed backup leaves no file that looks complete). PostgreSQL has pg_dump for this: refused.
    pub async fn backup_into(&self, path: &Path) -> Result<()> {
        let Db::Sqlite(pool) = &self.db else {
            return Err(ApiError::bad_request("online backup is for SQLite; use pg_dump for PostgreSQL"));
        };
        let partial = path.with_extension(match path.extension() {
            Some(ext) => format!("{}.partial", ext.to_string_lossy()),
            None => "partial".to_string(),
        });
        let _ = std::fs::remove_file(&partial);
        let target = partial.to_str().ok_or_else(|| ApiError::bad_request("the backup path is not valid UTF-8"))?;
        // Straight on the pool, so the caller sees SQLite's own message (a full disk, a missing directory).
        if let Err(e) = sqlx::query("VACUUM INTO $1").bind(target).execute(pool).await {
            let _ = std::fs::remove_file(&partial);
            return Err(ApiError::bad_request(e.to_string()));
        }
        std::fs::rename(&partial, path).map_err(|e| ApiError::bad_request(format!("cannot rename the backup: {e}")))
    }
}
