//! The embedded MQTT broker. rumqttd's router does what it is good at — topic matching, fan-out,
//! retained messages, QoS state for plain topics — while the hub owns the network edge
//! (`connection/`): the hub's one accept loop (`net::accept`) with a connection cap shared by TCP, TLS
//! and WebSocket, small buffers, proper CONNACK codes, authentication against the hub's users and
//! tokens, authorization of every SUBSCRIBE and PUBLISH, and the DeviceHive topics (`dh/...`), which never reach the router: requests
//! go to the shared action table, event subscriptions to the hub's subscription engine, and device
//! publishes are stored before they are acknowledged. In cluster mode (PostgreSQL) `relay` carries
//! plain publishes and retained messages to the routers of the other instances.

pub mod codec;
mod connection;
mod flow;
mod presence;
mod relay;
mod sweep;
mod takeover;
mod tls;
pub mod topics;
mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Notification, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::StartupError;
use crate::hub::signal::Signal;
use crate::hub::Hub;
use crate::net;
use crate::net::accept::{Cap, Slot};

/// Opens a router link for a client: (client id, clean session) → link halves and the router's CONNACK.
type LinkFactory = Arc<dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync>;

/// A connection holding a client id.
struct LiveSession {
    /// Which connection (a takeover leaves a newer one in the map).
    number: u64,
    /// Wakes it: taken over, shutdown, its deadline (`sweep`).
    signal: Arc<Signal>,
    /// The user it acts as (`None`: anonymous); only that user may take it over.
    owner: Option<i64>,
    /// When it claimed the client id (epoch ms): of two connections on different instances, the
    /// later claim wins.
    since: i64,
}

/// State shared by every MQTT connection.
pub struct MqttShared {
    hub: Arc<Hub>,
    open_link: LinkFactory,
    /// Live sessions by client id.
    sessions: Mutex<HashMap<String, LiveSession>>,
    next_connection: AtomicU64,
    presence: presence::Presence,
    /// `[mqtt] max_connections`, shared by the TCP, TLS and WebSocket listeners.
    cap: Arc<Cap>,
    /// The HTTP listener's address, for the REST URL sessions report (`server/info`).
    http_addr: SocketAddr,
    /// Cluster mode (PostgreSQL): sends plain publishes to the other instances.
    relay: Option<relay::Relay>,
    /// Holds plain publishes back while a matching subscriber lags (no skipping in the router's logs).
    flow: Arc<flow::PlainFlow>,
}

/// An MQTT connection's place under the cap. While it is held the connection counts in
/// `hub.stats.mqtt_connections`; dropping it — also when the connection's task panics — releases both.
struct MqttSlot {
    _slot: Slot,
    hub: Arc<Hub>,
}

impl MqttSlot {
    fn new(slot: Slot, hub: &Arc<Hub>) -> MqttSlot {
        hub.stats.mqtt_connections.fetch_add(1, Ordering::Relaxed);
        MqttSlot { _slot: slot, hub: hub.clone() }
    }
}

impl Drop for MqttSlot {
    fn drop(&mut self) {
        self.hub.stats.mqtt_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl MqttShared {
    /// Current MQTT connections (TCP, TLS and WebSocket).
    pub fn connection_count(&self) -> usize {
        self.hub.stats.mqtt_connections.load(Ordering::Relaxed)
    }
    /// Waits for the presence records of closed connections to be written (shutdown).
    pub async fn flush_presence(&self) {
        self.presence.close().await;
    }

    pub fn dropped_publish_count(&self) -> u64 {
        self.hub.stats.mqtt_dropped_publishes.load(Ordering::Relaxed)
    }

    /// `host:port` of the HTTP listener for a client that reached the broker at `local` (a host
    /// without port): the HTTP listener's own address when it listens on one, else `local` with the
    /// HTTP port — the client reached this machine there.
    fn http_host(&self, local: Option<&str>) -> String {
        let http = self.http_addr;
        match local {
            Some(host) if http.ip().is_unspecified() && !host.is_empty() => format!("{host}:{}", http.port()),
            _ => http.to_string(),
        }
    }
}

/// An IP address as the host part of a URL (IPv6 in brackets; IPv4-mapped IPv6 as IPv4).
fn url_host(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}

/// The host part of a `Host` header (`name`, `1.2.3.4`, `[::1]`, each with an optional port).
fn host_of_header(host: &str) -> &str {
    match host.find(']') {
        Some(end) if host.starts_with('[') => &host[..=end],
        _ => host.split(':').next().unwrap_or_default(),
    }
}

/// Starts the router and the listener; returns the bound address and the accept task.
/// A started broker.
pub struct Broker {
    pub addr: SocketAddr,
    /// The MQTT-over-WebSocket listener, when configured.
    pub ws_addr: Option<SocketAddr>,
    /// The MQTT-over-TLS listener, when configured.
    pub tls_addr: Option<SocketAddr>,
    pub shared: Arc<MqttShared>,
    pub accept: JoinHandle<()>,
}

/// Starts the router and the listeners; `http_addr` is the HTTP listener's (for the URLs sessions report).
pub async fn start(hub: Arc<Hub>, http_addr: SocketAddr) -> Result<Broker, StartupError> {
    let settings = hub.settings.mqtt.clone();
    let listener = TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| StartupError(format!("cannot listen for MQTT on {}: {e}", settings.listen)))?;
    let addr = listener.local_addr().map_err(|e| StartupError(e.to_string()))?;

    // Small, bounded router memory: rumqttd's defaults allow ~1 GiB per filter.
    let router_config = rumqttd::RouterConfig {
        max_connections: settings.max_connections + 16,
        max_outgoing_packet_count: settings.max_inflight as u64,
        max_segment_size: settings.router_segment_bytes,
        max_segment_count: settings.router_segment_count,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let router_tx = Router::new(0, router_config).spawn();
    let open_link: LinkFactory = Arc::new(move |client_id, clean| {
        LinkBuilder::new(client_id, router_tx.clone())
            .clean_session(clean)
            .build()
            .map_err(|e: LinkError| e.to_string())
    });
    // Before any client is accepted: the router holds the cluster's retained messages.
    let flow = Arc::new(flow::PlainFlow::new(settings.router_segment_bytes, settings.router_segment_count));
    let relay = relay::start(&hub, open_link.clone(), flow.clone()).await?;
    let shared = Arc::new(MqttShared {
        hub: hub.clone(),
        open_link,
        presence: presence::Presence::start(hub.clone()),
        sessions: Mutex::new(HashMap::new()),
        next_connection: AtomicU64::new(1),
        cap: Cap::new(settings.max_connections),
        http_addr,
        relay,
        flow,
    });
    takeover::spawn(shared.clone());
    sweep::spawn(shared.clone());
    tracing::info!(%addr, max_connections = settings.max_connections, plain_lag_bytes = shared.flow.cap(), "MQTT broker listening");
    let ws_addr = match settings.ws_listen.is_empty() {
        true => None,
        false => Some(websocket::start(shared.clone(), &settings.ws_listen).await?),
    };
    let accept_shared = shared.clone();
    let task = tokio::spawn(async move {
        net::accept::run(
            "mqtt",
            listener,
            accept_shared.cap.clone(),
            hub.shutting_down(),
            |stream, peer, slot| {
                let slot = MqttSlot::new(slot, &accept_shared.hub);
                let connection = connection::run(accept_shared.clone(), stream, peer);
                // The slot rides along in `map`'s closure (released when the task ends or panics);
                // an `async` block holding it would store the connection's future twice.
                tokio::spawn(futures_util::FutureExt::map(connection, move |()| drop(slot)));
            },
            |stream, _peer, refusal| {
                tokio::spawn(async move {
                    let _refusal = refusal;
                    connection::refuse_busy(stream).await;
                });
            },
        )
        .await;
    });
    let tls_addr = match settings.tls_listen.is_empty() {
        true => None,
        false => Some(tls::start(shared.clone()).await?),
    };
    Ok(Broker { addr, ws_addr, tls_addr, shared, accept: task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts_of_addresses_and_host_headers() {
        assert_eq!(url_host("10.0.0.5".parse().unwrap()), "10.0.0.5");
        assert_eq!(url_host("::1".parse().unwrap()), "[::1]");
        assert_eq!(url_host("::ffff:10.0.0.5".parse().unwrap()), "10.0.0.5");
        assert_eq!(host_of_header("hub.example.com:9001"), "hub.example.com");
        assert_eq!(host_of_header("hub.example.com"), "hub.example.com");
        assert_eq!(host_of_header("[::1]:9001"), "[::1]");
        assert_eq!(host_of_header("10.0.0.5:9001"), "10.0.0.5");
    }
}
