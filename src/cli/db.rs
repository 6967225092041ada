//! `hivehub db backup PATH`: an online, consistent copy of a SQLite database while the hub runs.

use clap::Subcommand;

use super::{CliError, ConfigArg};
use crate::store::{redact, Backend, Store};

#[derive(clap::Args, Debug)]
pub struct DbArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(subcommand)]
    pub command: DbCommand,
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Write a consistent copy of the SQLite database to PATH (a new file) while the hub runs. On
    /// PostgreSQL use pg_dump instead.
    Backup {
        /// The backup file to create; it must not exist.
        path: std::path::PathBuf,
    },
}

pub async fn db(args: DbArgs) -> Result<(), CliError> {
    let DbCommand::Backup { path } = args.command;
    let settings = super::load_settings(&args.config)?;
    if path.exists() {
        return Err(CliError(format!("{} already exists; choose a new file", path.display())));
    }
    let store = Store::open(&settings.database).await?;
    if store.backend() == Backend::Postgres {
        store.close().await;
        return Err(CliError(format!(
            "the database is PostgreSQL ({}): back it up with pg_dump, e.g. \
             `pg_dump --format=custom --file=hivehub.dump DATABASE_URL` (restore with pg_restore)",
            redact(&settings.database.url)
        )));
    }
    let result = store.backup_into(&path).await;
    store.close().await;
    result.map_err(|e| CliError(format!("backup to {} failed: {}", path.display(), e.message)))?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("backed up {} to {} ({size} bytes)", redact(&settings.database.url), path.display());
    Ok(())
}
