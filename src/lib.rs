//! hivehub: a DeviceHive-compatible device hub in one process. `App::start` opens the store, starts the
//! group-commit writer, binds the HTTP API and the MQTT listeners, and only then seeds an empty
//! database; tests start it on port 0.

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod hub;
pub mod logging;
mod memory;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod net;
pub mod store;
pub mod time;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::jwt::{generate_secret, JwtKeys};
use crate::config::Settings;
use crate::error::StartupError;
use crate::hub::{Bus, Hub};
use crate::store::writer::Writer;
use crate::store::Store;

/// The DeviceHive API version the hub implements.
pub const API_VERSION: &str = "3.5.0";

/// A running hub.
pub struct App {
    pub http_addr: SocketAddr,
    /// The MQTT listener, when `[mqtt] enabled`.
    pub mqtt_addr: Option<SocketAddr>,
    /// The MQTT-over-WebSocket listener, when `[mqtt] ws_listen` is set.
    pub mqtt_ws_addr: Option<SocketAddr>,
    /// The MQTT-over-TLS listener, when `[mqtt] tls_listen` is set.
    pub mqtt_tls_addr: Option<SocketAddr>,
    /// The metrics listener, when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The first administrator's password when this start created it with a generated one: the caller
    /// shows it (the `hivehub` command prints it on stdout) — it is not logged and cannot be recovered.
    pub generated_admin_password: Option<String>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl App {
    /// Opens the database, starts serving on `settings.http.listen` (and the MQTT listeners), and seeds
    /// the database when empty — only once every listener is bound, so a start that fails (a port in
    /// use) leaves it empty and a generated administrator password is never lost.
    pub async fn start(mut settings: Settings) -> Result<App, StartupError> {
        net::budget::fit_to_open_file_limit(&mut settings);
        settings.cluster.node_id = cluster::node_id(&settings.cluster.node_id);
        metrics::install();
        tracing::info!(node_id = %settings.cluster.node_id, "hivehub starting");
        let store = Store::open(&settings.database).await?;
        let secret = resolve_jwt_secret(&store, &settings.auth.jwt_secret).await?;
        let listener = TcpListener::bind(&settings.http.listen)
            .await
            .map_err(|e| StartupError(format!("cannot listen on {}: {e}", settings.http.listen)))?;
        let http_addr = listener.local_addr().map_err(|e| StartupError(e.to_string()))?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (writer_stop, writer_stop_rx) = watch::channel(false);
        let bus = Arc::new(Bus::new());
        let publish_bus = bus.clone();
        let deliver: crate::store::writer::OnCommit = Box::new(move |rows| publish_bus.publish(rows));
        // On PostgreSQL commits reach the bus through the commit tail, which also brings those of other
        // instances sharing the database, in one order; on SQLite the writer hands them over itself.
        let (on_commit, delivered) = match store.backend() {
            crate::store::Backend::Postgres => {
                let tail = crate::store::tail::spawn(store.clone(), deliver, shutdown_rx.clone())
                    .await
                    .map_err(|e| StartupError(format!("cannot listen for commits: {}", e.message)))?
                    .ok_or_else(|| StartupError("no commit tail on PostgreSQL".into()))?;
                let nothing: crate::store::writer::OnCommit = Box::new(|_| {});
                (nothing, Some(tail.delivered))
            }
            crate::store::Backend::Sqlite => (deliver, None),
        };
        let (writer, writer_task) =
            Writer::spawn(store.clone(), settings.database.batch_max_rows, on_commit, delivered, writer_stop_rx);
        let trimmer = memory::spawn_trimmer(shutdown_rx.clone());
        let retention = spawn_retention(store.clone(), settings.database.message_retention_secs, shutdown_rx.clone());
        let keys = JwtKeys::from_secret(&secret);
        let hub = Arc::new(Hub::new(store.clone(), writer, bus, settings, keys, shutdown_rx.clone()));
        tracing::info!(%http_addr, "hivehub listening");
        let abandon = |e: StartupError| {
            // Stops what was started (the process exits on this error; an embedding caller goes on).
            let _ = shutdown.send(true);
            let _ = writer_stop.send(true);
            e
        };
        // The node is alive in the database before any MQTT session it holds is recorded.
        let cluster_tasks = cluster::start(hub.clone(), store.clone(), shutdown_rx.clone())
            .await
            .map_err(|e| abandon(StartupError(format!("cannot join the cluster: {}", e.message))))?;
        let mqtt = match hub.settings.mqtt.enabled {
            true => Some(mqtt::start(hub.clone(), http_addr).await.map_err(abandon)?),
            false => None,
        };
        let metrics_addr = serve_metrics(&hub, shutdown_rx.clone()).await.map_err(abandon)?;
        let auth = &hub.settings.auth;
        let seed = store.seed_if_empty(&auth.admin_login, &auth.admin_password).await.map_err(abandon)?;
        if !seed.seeded && !auth.admin_password.is_empty() {
            let exists = matches!(store.user_by_login(&auth.admin_login).await, Ok(Some(_)));
            let note = match exists {
                true => "the administrator already exists and keeps its password",
                false => "the database already has users (none with this login), so no administrator is created",
            };
            tracing::warn!(login = %auth.admin_login, "auth.admin_password (HIVEHUB__AUTH__ADMIN_PASSWORD) is ignored: {note}");
        }
        let mqtt_addr = mqtt.as_ref().map(|b| b.addr);
        let mqtt_ws_addr = mqtt.as_ref().and_then(|b| b.ws_addr);
        let mqtt_tls_addr = mqtt.as_ref().and_then(|b| b.tls_addr);

        let node_id = hub.cluster.node_id.clone();
        let mut stop = shutdown_rx;
        let task = tokio::spawn(async move {
            run(listener, hub, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            if let Some(mqtt::Broker { shared, accept, .. }) = mqtt {
                let _ = accept.await;
                // MQTT connections close on the shutdown signal; let in-flight inserts finish.
                for _ in 0..500 {
                    if shared.connection_count() == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                shared.flush_presence().await;
            }
            for task in cluster_tasks {
                task.abort();
            }
            // Every session of this instance is recorded disconnected: it leaves the cluster.
            if let Err(e) = store.node_forget(&node_id).await {
                tracing::warn!(error = %e, "cannot remove this node from the cluster's records");
            }
            // Every request has been answered, so nothing can queue more writes: flush and close.
            let _ = writer_stop.send(true);
            let _ = writer_task.await;
            retention.abort();
            trimmer.abort();
            store.close().await;
            tracing::info!("hivehub stopped");
        });
        Ok(App {
            http_addr,
            mqtt_addr,
            mqtt_ws_addr,
            mqtt_tls_addr,
            metrics_addr,
            generated_admin_password: seed.generated_admin_password,
            shutdown,
            task,
        })
    }

    /// Stops accepting, finishes in-flight requests (long polls return at once), flushes pending
    /// writes and closes the database.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Serves the HTTP API on `listener` until `shutdown` completes, then waits for in-flight requests
/// (upgraded WebSocket sessions end on the hub's own shutdown signal).
pub async fn run(listener: TcpListener, hub: Arc<Hub>, shutdown: impl Future<Output = ()> + Send + 'static) {
    use tower::Layer;
    let timeouts = net::http::Timeouts::from_settings(&hub.settings.http);
    let cap = net::accept::Cap::new(hub.settings.http.max_connections);
    let service = axum::middleware::from_fn(api::edge).layer(api::app(hub));
    let (stop, stopped) = watch::channel(false);
    // Every connection task holds a sender; when all are dropped, every connection has finished.
    let (in_flight, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    net::accept::run(
        "http",
        listener,
        cap,
        shutdown,
        |stream, peer, slot| {
            let service = service.clone();
            let stopped = stopped.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                net::http::serve_connection(stream, peer, slot, service, timeouts, stopped).await;
                drop(in_flight);
            });
        },
        |stream, _peer, _slot| net::http::refuse_busy(stream),
    )
    .await;
    let _ = stop.send(true);
    drop(in_flight);
    let _ = all_done.recv().await;
}

/// Serves `GET /metrics` on `[metrics] listen` of its own, when set, until `stop`.
async fn serve_metrics(hub: &Arc<Hub>, mut stop: watch::Receiver<bool>) -> Result<Option<SocketAddr>, StartupError> {
    let config = &hub.settings.metrics;
    let addr = config.listen.trim();
    if !config.enabled || addr.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartupError(format!("cannot listen on {addr} (metrics.listen): {e}")))?;
    let bound = listener.local_addr().map_err(|e| StartupError(e.to_string()))?;
    let app = api::metrics::open_app(hub.clone());
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
            tracing::warn!(error = %e, "the metrics listener failed");
        }
    });
    tracing::info!(%bound, "metrics listening");
    Ok(Some(bound))
}

/// §4.2: configured secret (then also stored), else the stored one, else a new one, stored.
pub(crate) async fn resolve_jwt_secret(store: &Store, configured: &str) -> Result<String, StartupError> {
    let to_startup = |e: crate::error::ApiError| StartupError(e.to_string());
    if !configured.is_empty() {
        store.config_put("jwt.secret", configured).await.map_err(to_startup)?;
        return Ok(configured.to_string());
    }
    if let Some(c) = store.config_get("jwt.secret").await.map_err(to_startup)? {
        if !c.value.is_empty() {
            return Ok(c.value);
        }
    }
    // Another instance starting on the same database may generate one at the same moment: whichever
    // is stored first is the secret of both.
    let stored = store.config_put_if_absent("jwt.secret", &generate_secret()).await.map_err(to_startup)?;
    Ok(stored.value)
}

/// Deletes notifications and commands older than the retention period, hourly.
fn spawn_retention(store: Store, retention_secs: u64, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        if retention_secs == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let before = time::now_ms() - (retention_secs as i64) * 1000;
            match (store.notifications_expire(before).await, store.commands_expire(before).await) {
                (Ok(n), Ok(c)) if n + c > 0 => {
                    tracing::info!(notifications = n, commands = c, "retention: deleted old messages")
                }
                (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "retention failed"),
                _ => {}
            }
        }
    })
}
