//! MQTT session persistence: the one place in the service layer that reads and writes what the
//! MQTT edge keeps in SQL — session records (presence, clean flag, owner), the stored `dh/`
//! subscriptions of persistent sessions and the commands they are owed — and the device lookups the
//! edge needs. The edge (`crate::mqtt`) keeps only live, in-memory state and calls these.

use serde_json::Value;

use super::bus::EventKind;
use super::Hub;
use crate::auth::{Action, Principal};
use crate::error::Result;
use crate::model::Command;
use crate::model::{SessionRecord, StoredSession, StoredSubscription};

impl Hub {
    /// The stored session of `client_id`, if any.
    pub async fn mqtt_session(&self, client_id: &str) -> Result<Option<StoredSession>> {
        self.store.mqtt_session_get(client_id).await
    }

    /// Whether `client_id` may have a persistent session stored (`false`: certainly not; see
    /// `Store::mqtt_session_may_be_persistent`).
    pub fn mqtt_session_may_be_persistent(&self, client_id: &str) -> bool {
        self.store.mqtt_session_may_be_persistent(client_id)
    }

    /// Makes `owner` the owner of `client_id`'s session, unless another owner holds it persistent
    /// (one conditional statement: of two racing claims only one wins). `false`: refused.
    pub async fn mqtt_session_claim(&self, client_id: &str, owner: Option<i64>, clean: bool) -> Result<bool> {
        self.store.mqtt_session_claim(client_id, owner, clean).await
    }

    /// Hands a session to a new owner (an anonymous session that authenticated).
    pub async fn mqtt_session_set_owner(&self, client_id: &str, owner: Option<i64>) -> Result<()> {
        self.store.mqtt_session_set_owner(client_id, owner).await
    }

    /// Writes presence changes of many sessions of this instance in one transaction, in order; per
    /// record, whether it applied (see `Store::mqtt_session_records`).
    pub async fn mqtt_session_records(&self, records: Vec<SessionRecord>) -> Result<Vec<bool>> {
        self.store.mqtt_session_records(&self.cluster.node_id, records).await
    }

    /// Emits `$device-connected` / `$device-disconnected` for a client id that is a device the
    /// session's principal may see (nothing otherwise), and returns once it is committed.
    pub async fn mqtt_presence_notification(
        &self,
        client_id: &str,
        principal: &Principal,
        connected: bool,
        parameters: Value,
    ) -> Result<()> {
        let Some(device) = self.store.device_get(client_id).await? else { return Ok(()) };
        if !self.device_visible(principal, &device).await? {
            return Ok(());
        }
        self.device_presence(&device.id, connected, parameters).await
    }

    /// The stored `dh/` subscriptions of a persistent session.
    pub async fn mqtt_subscriptions(&self, client_id: &str) -> Result<Vec<StoredSubscription>> {
        self.store.mqtt_subscriptions(client_id).await
    }

    /// Stores (or refreshes the QoS of) a subscription; an existing one keeps its `since`.
    pub async fn mqtt_subscription_put(&self, client_id: &str, filter: &str, qos: u8, since: i64) -> Result<()> {
        self.store.mqtt_subscription_put(client_id, filter, qos, since).await
    }

    pub async fn mqtt_subscription_delete(&self, client_id: &str, filter: &str) -> Result<()> {
        self.store.mqtt_subscription_delete(client_id, filter).await
    }

    /// Forgets the stored subscriptions of a session (a clean session replaces a persistent one).
    pub async fn mqtt_subscriptions_clear(&self, client_id: &str) -> Result<()> {
        self.store.mqtt_subscriptions_clear(client_id).await
    }

    /// The commands a stored command subscription (`request`: its filter's parameters, made at
    /// `since`) is owed with the principal's rights now: created after `since`, not confirmed by
    /// `command/update`, not expired. Empty when the principal may no longer read them.
    pub async fn mqtt_owed_commands(&self, principal: &Principal, request: &Value, since: i64) -> Result<Vec<Command>> {
        let poll = self.poll_request(EventKind::CommandInsert, None, request)?;
        let Some(filter) = self.message_filter(principal, Action::GetDeviceCommand, &poll).await? else {
            return Ok(Vec::new());
        };
        let now = crate::time::now_ms();
        self.store.commands_pending(&filter, since, now, self.max_take() as usize).await
    }

    /// Whether device `device_id` exists and lies in the network and device type a `dh/` topic names
    /// (`None`: any).
    pub async fn mqtt_topic_names_device(
        &self,
        device_id: &str,
        network: Option<i64>,
        device_type: Option<i64>,
    ) -> Result<bool> {
        Ok(self.store.device_get(device_id).await?.is_some_and(|d| {
            network.is_none_or(|n| d.network_id == Some(n)) && device_type.is_none_or(|t| d.device_type_id == Some(t))
        }))
    }

    /// Announces `$device-disconnected` (reason `node-lost`) for a session an instance that died left
    /// connected, when its client id is a device its user may see — as the dead instance would have.
    pub async fn mqtt_session_lost(&self, orphan: &crate::store::OrphanSession) -> Result<()> {
        let Some(user_id) = orphan.user_id else { return Ok(()) };
        let Some(user) = self.store.user_get(user_id).await? else { return Ok(()) };
        let principal = Principal {
            user: Some(std::sync::Arc::new(user)),
            actions: crate::auth::ActionSet::client(),
            networks: crate::auth::IdSet::All,
            device_types: crate::auth::IdSet::All,
        };
        let parameters = serde_json::json!({"clientId": orphan.client_id, "reason": "node-lost", "will": false});
        self.mqtt_presence_notification(&orphan.client_id, &principal, false, parameters).await
    }
}
