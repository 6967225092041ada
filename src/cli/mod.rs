//! The admin commands of the `hivehub` binary (`user`, `admin`, `token`, `db`, `check-config`): they
//! work on the configured database (the same `--config` file and `HIVEHUB__...` environment as
//! `serve`) through the service layer, with the REST API's validation, and are safe while a hub runs
//! on that database — a change that takes rights away reaches the running hubs' live sessions
//! (`cluster::outside`). One file per command group; every command returns its exit code.

pub mod check_config;
pub mod db;
mod password_input;
pub mod token;
pub mod user;

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::jwt::JwtKeys;
use crate::auth::{ActionSet, IdSet, Principal};
use crate::config::Settings;
use crate::hub::{Bus, Hub};
use crate::model::{User, ROLE_ADMIN, STATUS_ACTIVE};
use crate::store::writer::Writer;
use crate::store::Store;

/// `--config PATH`, accepted before or after the command's own arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// Configuration file (TOML), as for `serve`. Default: ./broker.toml when present, else built-in
    /// defaults; HIVEHUB__SECTION__KEY variables apply on top.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<String>,
}

/// Why a command failed: printed as `hivehub: <message>`, exit code 1.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// Runs an admin command on a fresh runtime and turns its outcome into an exit code.
pub fn run<F>(command: F) -> i32
where
    F: std::future::Future<Output = Result<(), CliError>>,
{
    crate::logging::init_for_commands();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(command) {
        Ok(()) => 0,
        Err(CliError(message)) => {
            eprintln!("hivehub: {message}");
            1
        }
    }
}

/// The configured database opened as a hub would open it, and the service layer over it, acting as
/// an administrator.
pub struct Context {
    pub settings: Settings,
    pub store: Store,
    pub hub: Arc<Hub>,
    /// A full administrator (user id 0, which no real user has): the operator at the console.
    pub operator: Principal,
    stop: watch::Sender<bool>,
    writer_task: JoinHandle<()>,
}

impl Context {
    /// Loads the configuration, opens (migrating, and on first use seeding, as `serve` does) the
    /// database and builds the service layer over it.
    pub async fn open(config: &ConfigArg) -> Result<Context, CliError> {
        let mut settings = load_settings(config)?;
        let store = Store::open(&settings.database).await?;
        let auth = &settings.auth;
        // A database the CLI touches first is seeded as a hub would seed it, so a hub started on it
        // later finds the same administrator, sample network and configuration.
        let seed = store.seed_if_empty(&auth.admin_login, &auth.admin_password).await?;
        if let Some(password) = seed.generated_admin_password {
            println!(
                "hivehub: first use of this database: created the administrator with a generated password \
                 (shown only now): login={} password={password}",
                auth.admin_login
            );
        }
        let secret = crate::resolve_jwt_secret(&store, &auth.jwt_secret).await?;
        // The CLI is never a hub: a node id of its own, so running hubs do not take its control events
        // for their own echoes.
        settings.cluster.node_id = format!("hivehub-cli-{}", std::process::id());
        let (stop, stop_rx) = watch::channel(false);
        let (writer, writer_task) = Writer::spawn(store.clone(), 1, Box::new(|_| {}), None, stop_rx.clone());
        let keys = JwtKeys::from_secret(&secret);
        let hub = Arc::new(Hub::new(store.clone(), writer, Arc::new(Bus::new()), settings.clone(), keys, stop_rx));
        let operator = User {
            id: 0,
            login: "hivehub-cli".into(),
            password_hash: String::new(),
            password_salt: String::new(),
            role: ROLE_ADMIN,
            status: STATUS_ACTIVE,
            login_attempts: 0,
            locked_until: None,
            last_login: None,
            data: None,
            intro_reviewed: true,
            all_device_types_available: true,
        };
        let operator = Principal {
            user: Some(Arc::new(operator)),
            actions: ActionSet::admin(),
            networks: IdSet::All,
            device_types: IdSet::All,
        };
        Ok(Context { settings, store, hub, operator, stop, writer_task })
    }

    /// The user with this login, or a clear error.
    pub async fn user_by_login(&self, login: &str) -> Result<Value, CliError> {
        let found = self.hub.user_list(&self.operator, &json!({"login": login.trim()})).await.map_err(api)?;
        found.into_iter().next().ok_or_else(|| CliError(format!("no user with login `{}`", login.trim())))
    }

    /// Tells running hubs that `user_id`'s rights may have shrunk (locked, password changed).
    pub async fn announce_user_rights(&self, user_id: i64) -> Result<(), CliError> {
        let from = self.hub.cluster.node_id.to_string();
        crate::cluster::outside::announce_user_rights(&self.store, &from, user_id).await.map_err(api)
    }

    pub async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.writer_task.await;
        self.store.close().await;
    }
}

/// The configuration, or every problem with it.
pub fn load_settings(config: &ConfigArg) -> Result<Settings, CliError> {
    Settings::load(config.config.as_deref())
        .map_err(|errors| CliError(format!("bad configuration:\n  {}", errors.0.join("\n  "))))
}

/// A service-layer error as the CLI shows it: the REST API's message.
pub fn api(e: crate::error::ApiError) -> CliError {
    CliError(e.message)
}
