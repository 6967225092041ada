//! The DeviceHive topic space (CONTRACT.md §13.3–13.5): what a `dh/...` topic or filter means, and the
//! concrete topic a pushed message is published on.

use serde_json::{json, Map, Value};

use crate::hub::bus::{Event, EventKind, Message};

/// What a `dh/...` subscription filter asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhFilter {
    /// `dh/response/<action>@<clientId>`.
    Response { action: String, client_id: String },
    /// `dh/notification|command|command_update/<net>/<type>/<device>/<name>[@clientId]`.
    Events { kind: EventKind, request: Value, private_to: Option<String> },
    /// `dh/request` and anything else under `dh/`: not subscribable.
    Forbidden,
}

/// Splits a trailing `@clientId` off a topic.
pub fn split_private(topic: &str) -> (&str, Option<&str>) {
    match topic.rsplit_once('@') {
        Some((t, id)) if !id.is_empty() && !id.contains('/') => (t, Some(id)),
        _ => (topic, None),
    }
}

fn kind_of(level: &str) -> Option<EventKind> {
    match level {
        "notification" => Some(EventKind::Notification),
        "command" => Some(EventKind::CommandInsert),
        "command_update" => Some(EventKind::CommandUpdate),
        _ => None,
    }
}

fn literal(level: Option<&&str>) -> Option<String> {
    match level {
        None => None,
        Some(l) if l.is_empty() || *l == "+" || *l == "#" => None,
        Some(l) => Some(l.to_string()),
    }
}

/// Interprets a subscription filter that starts with `dh/`.
pub fn parse_filter(filter: &str) -> DhFilter {
    let Some(rest) = filter.strip_prefix("dh/") else {
        return DhFilter::Forbidden;
    };
    if let Some(resp) = rest.strip_prefix("response/") {
        return match split_private(resp) {
            (action, Some(client)) if !action.is_empty() && !action.contains(['+', '#']) => {
                DhFilter::Response { action: action.to_string(), client_id: client.to_string() }
            }
            _ => DhFilter::Forbidden,
        };
    }
    let (body, private_to) = split_private(rest);
    let levels: Vec<&str> = body.split('/').collect();
    let Some(kind) = kind_of(levels[0]) else {
        return DhFilter::Forbidden;
    };
    // `#` may only be the last level; levels after it make no sense.
    if levels
        .iter()
        .enumerate()
        .any(|(i, l)| (l.contains('#') && (*l != "#" || i + 1 != levels.len())) || (l.contains('+') && *l != "+"))
    {
        return DhFilter::Forbidden;
    }
    if levels.len() > 5 {
        return DhFilter::Forbidden;
    }
    let network = literal(levels.get(1));
    let device_type = literal(levels.get(2));
    let device = literal(levels.get(3));
    let name = literal(levels.get(4));
    let mut req = Map::new();
    match device {
        Some(d) => {
            req.insert("deviceId".into(), json!(d));
        }
        None => {
            // Network and type levels filter only when the device level is open (P23).
            if let Some(n) = network {
                let Ok(id) = n.parse::<i64>() else {
                    return DhFilter::Forbidden;
                };
                req.insert("networkIds".into(), json!([id]));
            }
            if let Some(t) = device_type {
                let Ok(id) = t.parse::<i64>() else {
                    return DhFilter::Forbidden;
                };
                req.insert("deviceTypeIds".into(), json!([id]));
            }
        }
    }
    if let Some(n) = name {
        req.insert("names".into(), json!([n]));
    }
    if kind == EventKind::CommandUpdate {
        req.insert("returnUpdatedCommands".into(), json!(true));
    }
    DhFilter::Events { kind, request: Value::Object(req), private_to: private_to.map(str::to_string) }
}

/// A publish to an event topic (§13.5): which insert it is, for which device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectPublish {
    pub kind: EventKind,
    pub network: Option<i64>,
    pub device_type: Option<i64>,
    pub device_id: String,
    pub name: Option<String>,
}

/// Interprets a publish topic under `dh/` other than `dh/request`; `None` = not an insert topic.
pub fn parse_direct(topic: &str) -> Option<DirectPublish> {
    let rest = topic.strip_prefix("dh/")?;
    let (body, _) = split_private(rest);
    let levels: Vec<&str> = body.split('/').collect();
    let kind = kind_of(levels[0])?;
    if levels.len() < 4 || levels.len() > 5 || levels.iter().any(|l| l.contains(['+', '#'])) {
        return None;
    }
    let id = |l: &str| {
        if l.is_empty() {
            Ok(None)
        } else {
            l.parse::<i64>().map(Some)
        }
    };
    Some(DirectPublish {
        kind,
        network: id(levels[1]).ok()?,
        device_type: id(levels[2]).ok()?,
        device_id: levels[3].to_string(),
        name: levels.get(4).filter(|n| !n.is_empty()).map(|n| n.to_string()),
    })
}

/// `dh/<kind>/<network>/<type>/<device>/<name>` of a committed message.
pub fn event_topic(ev: &Event) -> String {
    message_topic(ev.kind, &ev.message)
}

/// The concrete topic of a message pushed as `kind`.
pub fn message_topic(kind: EventKind, message: &Message) -> String {
    let kind = match kind {
        EventKind::Notification => "notification",
        EventKind::CommandInsert => "command",
        EventKind::CommandUpdate => "command_update",
    };
    let id = |v: Option<i64>| v.map(|i| i.to_string()).unwrap_or_default();
    match message {
        Message::Notification(n) => format!(
            "dh/{kind}/{}/{}/{}/{}",
            id(n.network_id),
            id(n.device_type_id),
            n.device_id,
            name_level(&n.notification)
        ),
        Message::Command(c) => format!(
            "dh/{kind}/{}/{}/{}/{}",
            id(c.network_id),
            id(c.device_type_id),
            c.device_id,
            name_level(&c.command)
        ),
    }
}

/// A message name as a topic level. Names are free text, but a PUBLISH topic must not contain the
/// wildcards `+` `#` or U+0000 (MQTT 3.1.1 §4.7.1, §4.7.3; strict clients disconnect on them), so
/// those are percent-encoded. Everything else (including `/`, as in the reference) stays as it is.
fn name_level(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains(['+', '#', '\0']) {
        return name.into();
    }
    name.replace('+', "%2B").replace('#', "%23").replace('\0', "%00").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_map_to_engine_requests() {
        assert_eq!(
            parse_filter("dh/notification/1/2/dev-1/temp"),
            DhFilter::Events {
                kind: EventKind::Notification,
                request: json!({"deviceId": "dev-1", "names": ["temp"]}),
                private_to: None
            }
        );
        assert_eq!(
            parse_filter("dh/command/5/+/+/#"),
            DhFilter::Events { kind: EventKind::CommandInsert, request: json!({"networkIds": [5]}), private_to: None }
        );
        assert_eq!(
            parse_filter("dh/command_update/#@c1"),
            DhFilter::Events {
                kind: EventKind::CommandUpdate,
                request: json!({"returnUpdatedCommands": true}),
                private_to: Some("c1".into())
            }
        );
        assert_eq!(
            parse_filter("dh/response/device/list@c1"),
            DhFilter::Response { action: "device/list".into(), client_id: "c1".into() }
        );
        for bad in [
            "dh/request",
            "dh/response/#",
            "dh/response/token",
            "dh/#",
            "dh/+/1",
            "dh/notification/a/+/+",
            "dh/notification/#/x",
            "dh/notification/1+/+",
            "dh/other/1",
        ] {
            assert_eq!(parse_filter(bad), DhFilter::Forbidden, "{bad}");
        }
    }

    #[test]
    fn message_names_never_put_wildcards_into_topics() {
        assert_eq!(name_level("temp"), "temp");
        assert_eq!(name_level("a/b"), "a/b");
        assert_eq!(name_level("a+b#c\0d"), "a%2Bb%23c%00d");
    }

    #[test]
    fn direct_publish_topics() {
        assert_eq!(
            parse_direct("dh/notification/1/1/dev-1/temp"),
            Some(DirectPublish {
                kind: EventKind::Notification,
                network: Some(1),
                device_type: Some(1),
                device_id: "dev-1".into(),
                name: Some("temp".into())
            })
        );
        assert_eq!(parse_direct("dh/notification/+/1/dev-1/temp"), None);
        assert_eq!(parse_direct("dh/response/x@c"), None);
        assert_eq!(parse_direct("dh/command/1/1"), None);
    }
}
