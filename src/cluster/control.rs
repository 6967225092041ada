//! Control events: what one instance changes that live state on the others must follow at once —
//! rights that shrank (sessions re-check their user and close or narrow), network and device-type
//! assignments, deleted devices (their subscriptions end) and MQTT client ids claimed by a new
//! connection (the old one, wherever it lives, is taken over). The change itself is already
//! committed in SQL; these only tell the other instances to look. Sent with `pg_notify` on
//! `hivehub_control` by one sender task per instance (in order), received by one listener per
//! instance; an instance applies its own changes locally before announcing them and skips its own
//! echoes.

use serde::{Deserialize, Serialize};

/// The channel control events travel on.
pub const CHANNEL: &str = "hivehub_control";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Control {
    /// The user's rights may have shrunk (locked, deleted, demoted, password or login changed,
    /// assignments changed): its live sessions re-check it.
    UserRights { user: i64 },
    /// Network or device-type assignments may have changed (e.g. a network was deleted).
    Assignments,
    /// The device was deleted: subscriptions pinned to it end.
    DeviceGone { device: String },
    /// An MQTT connection took `client_id` at `at` (epoch ms): an older live connection with that
    /// client id on another instance is taken over (MQTT 3.1.1 §3.1.4).
    MqttClaim { client_id: String, at: i64 },
}

/// A control event on the wire: the event and the instance that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: String,
    #[serde(flatten)]
    pub control: Control,
}

impl Envelope {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `None` for a payload this version does not understand (a newer instance's event): ignored.
    pub fn decode(payload: &str) -> Option<Envelope> {
        serde_json::from_str(payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_unknown_events_are_ignored() {
        for control in [
            Control::UserRights { user: 7 },
            Control::Assignments,
            Control::DeviceGone { device: "d-1\"x".into() },
            Control::MqttClaim { client_id: "c".into(), at: 1_700_000_000_000 },
        ] {
            let e = Envelope { from: "node-a".into(), control };
            assert_eq!(Envelope::decode(&e.encode()), Some(e));
        }
        assert_eq!(Envelope::decode(r#"{"from":"n","event":"something-new"}"#), None);
        assert_eq!(Envelope::decode("not json"), None);
    }
}
