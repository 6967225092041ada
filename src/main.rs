//! The `hivehub` command: `serve` runs the hub, `config` prints the commented default configuration.

use clap::{Parser, Subcommand};
use hivehub::config::{Settings, DEFAULT_CONFIG};
use hivehub::App;

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
}

fn main() {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Config => print!("{DEFAULT_CONFIG}"),
        Command::Serve { config } => serve(config),
    }
}

fn serve(config: Option<String>) {
    tracing_subscriber::fmt()
        // Colour codes only on a terminal, so redirected logs stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,rumqttd=off".into()),
        )
        .init();
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
