//! The `hivehub` command: `serve` runs the hub, `config` prints the commented default configuration,
//! `migrate-db` copies a hub database into another (SQLite to PostgreSQL, typically); the admin
//! commands (`user`, `admin`, `token`, `db`, `check-config`) live in `hivehub::cli`.

use clap::{Parser, Subcommand};
use hivehub::config::{Settings, DEFAULT_CONFIG};
use hivehub::{cli, App};

#[derive(Parser)]
#[command(name = "hivehub", version, about = "A DeviceHive-compatible IoT device hub in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (the default when no command is given).
    Serve {
        /// Configuration file (TOML). Default: ./broker.toml when present, else built-in defaults.
        #[arg(long)]
        config: Option<String>,
    },
    /// Print the commented default configuration.
    Config,
    /// Copy every row of a hub database into another, keeping ids, timestamps, password hashes and the
    /// JWT secret (old passwords and tokens keep working). Stop the hub first.
    #[command(name = "migrate-db")]
    MigrateDb {
        /// Source database URL, e.g. sqlite://data/hivehub.db
        #[arg(long)]
        from: String,
        /// Target database URL, e.g. postgres://hivehub:secret@localhost:5432/hivehub
        #[arg(long)]
        to: String,
        /// Empty a target that already holds rows (e.g. one a hub has seeded) instead of refusing it.
        #[arg(long)]
        replace: bool,
    },
    /// Manage users: add, passwd, lock, unlock, list (safe while the hub runs).
    User(cli::user::UserArgs),
    /// Administrator recovery: reset-password.
    Admin(cli::user::AdminArgs),
    /// Access tokens: create.
    Token(cli::token::TokenArgs),
    /// Database maintenance: backup.
    Db(cli::db::DbArgs),
    /// Load and validate the configuration; report every problem (exit 1) or a summary (exit 0).
    #[command(name = "check-config")]
    CheckConfig(cli::ConfigArg),
}

fn main() {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Config => print!("{DEFAULT_CONFIG}"),
        Command::Serve { config } => serve(config),
        Command::MigrateDb { from, to, replace } => migrate_db(&from, &to, replace),
        Command::User(args) => std::process::exit(cli::run(cli::user::user(args))),
        Command::Admin(args) => std::process::exit(cli::run(cli::user::admin(args))),
        Command::Token(args) => std::process::exit(cli::run(cli::token::token(args))),
        Command::Db(args) => std::process::exit(cli::run(cli::db::db(args))),
        Command::CheckConfig(args) => std::process::exit(cli::run(async { cli::check_config::check_config(&args) })),
    }
}

/// `hivehub migrate-db`: exit code 0 when every row was copied and the counts match, 1 otherwise.
fn migrate_db(from: &str, to: &str, replace: bool) {
    use hivehub::store::{redact, Store};
    use std::io::Write;
    let open = |url: &str| {
        let mut settings = Settings::defaults().database;
        settings.url = url.to_string();
        settings
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = runtime.block_on(async move {
        let (source, target) = match (Store::open(&open(from)).await, Store::open(&open(to)).await) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(e), _) => {
                eprintln!("hivehub migrate-db: source {}: {e}", redact(from));
                return 1;
            }
            (_, Err(e)) => {
                eprintln!("hivehub migrate-db: target {}: {e}", redact(to));
                return 1;
            }
        };
        eprintln!(
            "hivehub migrate-db: {} ({}) -> {} ({})",
            redact(from),
            source.backend().name(),
            redact(to),
            target.backend().name()
        );
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut last_table = "";
        let mut last_draw = std::time::Instant::now();
        let result = source
            .copy_into(&target, replace, |p| {
                let finished = p.copied == p.total;
                if terminal {
                    // One updating line per table, redrawn at most ten times a second.
                    if finished || last_draw.elapsed().as_millis() >= 100 || p.table != last_table {
                        eprint!(
                            "\r  {:<20} {:>10} / {:<10} rows   (all: {} / {})\x1b[K",
                            p.table, p.copied, p.total, p.all_copied, p.all_total
                        );
                        if finished {
                            eprintln!();
                        }
                        let _ = std::io::stderr().flush();
                        last_draw = std::time::Instant::now();
                    }
                } else if finished {
                    eprintln!("  {:<20} {:>10} rows   (all: {} / {})", p.table, p.copied, p.all_copied, p.all_total);
                }
                last_table = p.table;
            })
            .await;
        source.close().await;
        target.close().await;
        match result {
            Ok(report) => {
                let rows: u64 = report.tables.iter().map(|(_, n)| n).sum();
                println!("hivehub migrate-db: copied {rows} rows in {} tables; counts verified", report.tables.len());
                0
            }
            Err(e) => {
                eprintln!("hivehub migrate-db: {}", e.message);
                1
            }
        }
    });
    std::process::exit(code);
}

fn serve(config: Option<String>) {
    let settings = match Settings::load(config.as_deref()) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("hivehub: bad configuration:");
            for problem in &errors.0 {
                eprintln!("  {problem}");
            }
            std::process::exit(2);
        }
    };
    hivehub::logging::init(&settings.log);
    let admin_login = settings.auth.admin_login.clone();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async move {
        let signal = shutdown_signal();
        let mut app = match App::start(settings).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("hivehub: cannot start: {e}");
                std::process::exit(1);
            }
        };
        // Every listener is bound and the administrator exists: a plain line on stdout, whatever the
        // log level, and never in the log.
        if let Some(password) = app.generated_admin_password.take() {
            println!(
                "hivehub: first start: created the administrator with a generated password (shown only now; \
                 set HIVEHUB__AUTH__ADMIN_PASSWORD to choose one): login={admin_login} password={password}"
            );
        }
        app.run_until(signal).await;
    });
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when it is first
/// polled: called before `App::start`, a signal that arrives while the hub is still starting (it logs
/// "hivehub listening" before the MQTT listeners are up) stops it gracefully instead of killing it.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    let interrupt = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(term) => {},
            _ = wait(interrupt) => {},
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
