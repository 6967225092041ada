//! The service layer: every read and write from every transport goes through `Hub` methods, which take
//! the caller's `Principal` and check permissions here, in one place. Transports only decode, call and
//! encode. One file per resource; `bus` fans out committed messages; `poll` serves long polls.

pub mod bus;
mod configuration;
mod device;
pub mod dispatch;
pub mod fields;
mod group;
mod message;
mod mqtt_session;
mod poll;
mod retained;
pub mod signal;
mod token;
mod user;

use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::jwt::JwtKeys;
use crate::auth::{Action, IdSet, Principal};
use crate::config::Settings;
use crate::error::{ApiError, Result};
use crate::model::Device;
use crate::store::writer::Writer;
use crate::store::{DeviceScope, Store};

pub use bus::Bus;
pub use poll::PollRequest;
pub use user::UserAccess;

/// Announced on the revocation channel: every user's rights may have changed.
pub const EVERY_USER: i64 = i64::MIN;

/// Counters reported by `GET /info/cache` (`cacheStats`).
#[derive(Default)]
pub struct HubStats {
    pub mqtt_connections: std::sync::atomic::AtomicUsize,
    /// MQTT publishes refused by authorization or validation (dropped, never stored or routed).
    pub mqtt_dropped_publishes: std::sync::atomic::AtomicU64,
    /// Plain QoS 0 publishes not delivered to an MQTT client whose socket stalled (`[mqtt] stall_ms`).
    pub mqtt_dropped_deliveries: std::sync::atomic::AtomicU64,
}

pub struct Hub {
    /// Only the service layer reads and writes the store: transports go through `Hub` methods.
    store: Store,
    pub writer: Writer,
    pub bus: Arc<Bus>,
    pub settings: Settings,
    pub keys: JwtKeys,
    /// Becomes true when the hub shuts down; long polls return at once.
    pub shutdown: watch::Receiver<bool>,
    /// Recently verified login/password pairs (see `auth::credential_cache`).
    pub credentials: crate::auth::credential_cache::CredentialCache,
    /// Delays between failed logins per login name and per source address.
    pub login_throttle: crate::auth::throttle::LoginThrottle,
    /// Bumped whenever a user's network assignments may have changed; sessions re-read the assignments
    /// of their (non-admin) user when it moves, so unassigning a network stops deliveries at once.
    pub assignment_epoch: std::sync::atomic::AtomicU64,
    /// Ids of users whose rights may have shrunk (locked, deleted, role lowered, password changed,
    /// assignments changed). Live sessions of that user re-check it (`recheck_principal`) and close
    /// or narrow themselves at once.
    pub revocations: tokio::sync::broadcast::Sender<i64>,
    pub stats: HubStats,
    /// This instance's node id and its control events to the other instances.
    pub cluster: crate::cluster::Cluster,
    /// When this process last wrote each user's `lastLogin` (throttles concurrent logins).
    pub recent_last_login: std::sync::Mutex<std::collections::HashMap<i64, i64>>,
}

impl Hub {
    /// The service layer over `store`, with the writer and bus already running.
    pub fn new(
        store: Store,
        writer: Writer,
        bus: Arc<Bus>,
        settings: Settings,
        keys: JwtKeys,
        shutdown: watch::Receiver<bool>,
    ) -> Hub {
        let auth = &settings.auth;
        let credentials = crate::auth::credential_cache::CredentialCache::new(
            std::time::Duration::from_secs(auth.credential_cache_secs),
            100_000,
        );
        let login_throttle = crate::auth::throttle::LoginThrottle::new(
            auth.login_throttle_free_attempts,
            std::time::Duration::from_millis(auth.login_throttle_base_ms),
        );
        let cluster = crate::cluster::Cluster::new(&store, &settings.cluster.node_id);
        Hub {
            cluster,
            store,
            writer,
            bus,
            settings,
            keys,
            shutdown,
            credentials,
            login_throttle,
            recent_last_login: Default::default(),
            assignment_epoch: Default::default(),
            revocations: tokio::sync::broadcast::channel(1024).0,
            stats: Default::default(),
        }
    }

    /// Devices this principal may see (§5.4): live user assignment for non-admins, plus token scope.
    pub fn device_scope(&self, principal: &Principal) -> DeviceScope {
        let assigned_to_user = match &principal.user {
            Some(u) if !u.is_admin() => Some(u.id),
            _ => None,
        };
        DeviceScope {
            assigned_to_user,
            networks: principal.networks.clone(),
            device_types: principal.device_types.clone(),
        }
    }

    /// The networks a principal may see as a concrete set: token scope ∩ live assignment for
    /// non-admins (admins keep the token scope, possibly "all").
    pub async fn visible_networks(&self, principal: &Principal) -> Result<IdSet> {
        match &principal.user {
            Some(u) if !u.is_admin() => {
                let assigned = IdSet::Only(self.store.user_network_ids(u.id).await?.into_iter().collect());
                Ok(assigned.intersect(&principal.networks))
            }
            _ => Ok(principal.networks.clone()),
        }
    }

    /// The device types a principal may see as a concrete set: token scope ∩ live assignment for
    /// non-admins without "all device types".
    pub async fn visible_device_types(&self, principal: &Principal) -> Result<IdSet> {
        match &principal.user {
            Some(u) if !u.is_admin() && !u.all_device_types_available => {
                let assigned: std::collections::BTreeSet<i64> =
                    self.store.user_device_types(u.id).await?.iter().map(|t| t.id).collect();
                Ok(IdSet::Only(assigned).intersect(&principal.device_types))
            }
            _ => Ok(principal.device_types.clone()),
        }
    }

    /// 404 unless the device exists (`notification/get|list` check existence before visibility).
    pub async fn device_must_exist(&self, device_id: &str) -> Result<()> {
        match self.store.device_get(device_id).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::device_not_found(device_id)),
        }
    }

    /// Whether a device is visible to the principal (§5.4).
    pub async fn device_visible(&self, principal: &Principal, device: &Device) -> Result<bool> {
        if !principal.networks.contains(device.network_id) || !principal.device_types.contains(device.device_type_id) {
            return Ok(false);
        }
        match &principal.user {
            Some(u) if !u.is_admin() => {
                let Some(net) = device.network_id else { return Ok(false) };
                Ok(self.store.user_network_ids(u.id).await?.contains(&net))
            }
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    /// The permission check with a device target (§5.3 rule 4), then the lookup: restricted principals
    /// get 403 for devices they cannot see (existing or not), unrestricted ones 404 for missing devices.
    pub async fn authorize_device(&self, principal: &Principal, action: Action, device_id: &str) -> Result<Device> {
        principal.require(action)?;
        let device = self.store.device_get(device_id).await?;
        match device {
            Some(d) if self.device_visible(principal, &d).await? => Ok(d),
            Some(_) => Err(ApiError::access_denied()),
            None if principal.is_unrestricted() => Err(ApiError::device_not_found(device_id)),
            None => Err(ApiError::access_denied()),
        }
    }

    /// Sets the user's `lastLogin` (throttled by `user.login.lastTimeout`), e.g. on WS `authenticate`.
    pub async fn touch_last_login(&self, user_id: i64) -> Result<()> {
        let gap = self.store.config_i64("user.login.lastTimeout", 1000).await?;
        self.store.user_touch_last_login(user_id, crate::time::now_ms(), gap).await
    }

    /// One round trip to the database (readiness).
    pub async fn database_ping(&self) -> Result<()> {
        self.store.ping().await
    }

    /// The database pool's use (metrics).
    pub fn pool_stats(&self) -> crate::store::PoolStats {
        self.store.pool_stats()
    }

    /// Whether the hub has started shutting down.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Completes when the hub starts shutting down.
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Network or device-type assignments may have changed: sessions here and on every other
    /// instance re-read them.
    pub fn assignments_changed(&self) {
        self.apply_assignments_changed();
        self.cluster.announce(crate::cluster::Control::Assignments);
    }

    /// `assignments_changed` on this instance only (what another instance announced).
    pub fn apply_assignments_changed(&self) {
        self.assignment_epoch.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Live sessions hear here of users whose rights may have shrunk. A lagging receiver
    /// (`RecvError::Lagged`) must re-check its principal as if its own user had been named.
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<i64> {
        self.revocations.subscribe()
    }

    /// Tells every live session, on every instance, that `user_id`'s rights may have shrunk, and
    /// makes sessions re-read network assignments. (Remembered credentials need no telling: a hit is
    /// checked against the user's stored password hash, read fresh.)
    pub fn user_rights_changed(&self, user_id: i64) {
        self.apply_user_rights_changed(user_id);
        self.cluster.announce(crate::cluster::Control::UserRights { user: user_id });
    }

    /// `user_rights_changed` on this instance only (what another instance announced).
    pub fn apply_user_rights_changed(&self, user_id: i64) {
        self.apply_assignments_changed();
        let _ = self.revocations.send(user_id);
    }

    /// Control events from other instances may have been missed (the listener lost its connection):
    /// every live session re-checks its user and assignments.
    pub fn apply_everything_may_have_changed(&self) {
        self.apply_assignments_changed();
        let _ = self.revocations.send(EVERY_USER);
    }

    /// A device was deleted: subscriptions pinned to it end here and on every other instance (§9.3).
    pub fn device_gone(&self, device_id: &str) {
        self.bus.end_device_subscriptions(device_id);
        self.cluster.announce(crate::cluster::Control::DeviceGone { device: device_id.to_string() });
    }

    /// Re-reads the user a live session acts as. `None`: the user is gone or no longer active, so the
    /// session must end. Otherwise the principal with the fresh user (its role decides from now on).
    pub async fn recheck_principal(&self, principal: &Principal) -> Option<Principal> {
        let user = principal.user.as_ref()?;
        match self.store.user_get(user.id).await {
            Ok(Some(fresh)) if fresh.is_active() => Some(principal.with_user(fresh)),
            Ok(_) => None,
            // On a read error keep the session as it is rather than drop or widen it.
            Err(_) => Some(principal.clone()),
        }
    }

    /// The `cacheStats` text of `GET /info/cache` and WebSocket `server/cacheInfo`.
    pub fn cache_stats(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        format!(
            "messages stored in SQL; {} live subscriptions; {} MQTT connections; {} MQTT publishes dropped; \
             {} MQTT deliveries dropped; {} messages written; node {}",
            self.bus.subscription_count(),
            self.stats.mqtt_connections.load(Relaxed),
            self.stats.mqtt_dropped_publishes.load(Relaxed),
            self.stats.mqtt_dropped_deliveries.load(Relaxed),
            self.writer.messages_written(),
            self.cluster.node_id,
        )
    }

    /// The REST API's URL as reported to clients (`server/info`): under `[http] public_url` when set,
    /// else on `host` (`host[:port]` the client reached the HTTP listener at) over plain HTTP.
    pub fn rest_server_url(&self, host: &str) -> String {
        let prefix = &self.settings.http.rest_prefix;
        match self.settings.http.public_url.trim_end_matches('/') {
            "" => format!("http://{host}{prefix}"),
            public => format!("{public}{prefix}"),
        }
    }

    pub fn max_take(&self) -> i64 {
        self.settings.limits.max_take.max(1)
    }
}
