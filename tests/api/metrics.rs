//! `GET /metrics`: Prometheus text a real parser reads, administrators only on the main port, open
//! on `[metrics] listen`, and counters that move when messages flow through REST, long polls,
//! WebSocket and MQTT. Counters are process-wide (other tests' hubs add to them), so the checks are
//! "grew by at least".

use std::collections::HashMap;

use rumqttc::QoS;
use serde_json::json;

use super::TestHub;
use crate::common::mqtt::{Mqtt, GRANTED};
use crate::common::ws::Ws;

/// Samples by `name{label="value",...}` (labels sorted), counters and gauges as numbers; a
/// histogram as its `_count`.
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        let mut samples = HashMap::new();
        for s in scrape.samples {
            let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(buckets) => buckets.last().map(|b| b.count).unwrap_or(0.0),
                prometheus_parse::Value::Summary(_) => panic!("{} is a summary, not a histogram", s.metric),
            };
            samples.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
        }
        Metrics(samples)
    }

    fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.0.keys().map(|k| k[..k.find('{').unwrap()].to_string()).collect();
        names.sort();
        names.dedup();
        names
    }
}

fn received(kind: &str, transport: &str) -> String {
    format!("hivehub_messages_received_total{{kind=\"{kind}\",transport=\"{transport}\"}}")
}

fn delivered(kind: &str, transport: &str) -> String {
    format!("hivehub_messages_delivered_total{{kind=\"{kind}\",transport=\"{transport}\"}}")
}

/// The metrics listener's text, open to anyone.
async fn scrape(hub: &TestHub) -> Metrics {
    let addr = hub.metrics_addr().expect("metrics listener");
    let response = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    Metrics::parse(&response.text().await.unwrap())
}

async fn hub() -> TestHub {
    TestHub::start_with(|s| s.metrics.listen = "127.0.0.1:0".into()).await
}

#[tokio::test]
async fn the_main_port_serves_metrics_to_administrators_only() {
    skip_unless_backend!();
    let hub = hub().await;
    let url = format!("{}/metrics", hub.root);
    assert_eq!(hub.client.get(&url).send().await.unwrap().status(), 401);
    let (_, client) = hub.client_user("metrics-client", &[]).await;
    assert_eq!(hub.client.get(&url).bearer_auth(&client).send().await.unwrap().status(), 403);
    let response = hub.client.get(&url).bearer_auth(&hub.admin).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let metrics = Metrics::parse(&response.text().await.unwrap());
    let node_info: Vec<(&String, &f64)> =
        metrics.0.iter().filter(|(k, _)| k.starts_with("hivehub_node_info{node=")).collect();
    assert!(!node_info.is_empty() && node_info.iter().all(|(_, v)| **v == 1.0), "{node_info:?}");
    assert_eq!(
        metrics.get(&format!("hivehub_build_info{{api_version=\"3.5.0\",version=\"{}\"}}", env!("CARGO_PKG_VERSION"))),
        1.0
    );

    // `[metrics] enabled = false`: no endpoint.
    let off = TestHub::start_with(|s| s.metrics.enabled = false).await;
    let response = off.client.get(format!("{}/metrics", off.root)).bearer_auth(&off.admin).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn counters_move_when_messages_flow_through_every_transport() {
    skip_unless_backend!();
    let hub = hub().await;
    let net = hub.network("metrics").await;
    let body = json!({"name": "m-dev", "networkId": net, "deviceTypeId": 1});
    hub.put(&hub.admin, "/device/m-dev", body).await.expect(204);
    let before = scrape(&hub).await;

    // Subscribers on WebSocket and MQTT; then one notification in through each transport.
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    ws.subscribe("notification/subscribe", json!({"deviceId": "m-dev"})).await;
    let mut mqtt = Mqtt::token(&hub, "m-sub", &hub.admin).await;
    assert_eq!(mqtt.subscribe("dh/notification/#").await, GRANTED);
    let during = scrape(&hub).await;
    assert!(during.get("hivehub_connections{transport=\"websocket\"}") >= 1.0);
    assert!(during.get("hivehub_connections{transport=\"mqtt\"}") >= 1.0);

    hub.post(&hub.admin, "/device/m-dev/notification", json!({"notification": "rest"})).await.expect(201);
    ws.ok(
        "notification/insert",
        json!({"deviceId": "m-dev", "notification": {"notification": "ws"}}),
        &["notification"],
    )
    .await;
    mqtt.publish(&format!("dh/notification/{net}/1/m-dev/mqtt"), json!({}).to_string(), QoS::AtLeastOnce).await;
    hub.post(&hub.admin, "/device/m-dev/command", json!({"command": "c"})).await.expect(201);
    for _ in 0..3 {
        ws.push().await;
    }
    let mut seen = 0;
    while seen < 3 {
        let m = mqtt.msg().await;
        seen += usize::from(m.topic.starts_with("dh/notification/"));
    }
    let polled =
        hub.get(&hub.admin, "/device/m-dev/notification/poll?timestamp=2000-01-01&waitTimeout=0").await.expect(200);
    assert!(polled.as_array().unwrap().len() >= 3, "{polled}");
    // A wrong password and a bad token count as authentication failures.
    let wrong = json!({"login": crate::common::ADMIN_LOGIN, "password": "wrong-password"});
    assert_eq!(hub.request(reqwest::Method::POST, None, "/token", Some(wrong)).await.status, 401);
    assert_eq!(hub.get("not-a-token", "/user/current").await.status, 401);

    let after = scrape(&hub).await;
    for key in [
        received("notification", "rest"),
        received("notification", "websocket"),
        received("notification", "mqtt"),
        received("command", "rest"),
        "hivehub_writer_commits_total{}".to_string(),
        "hivehub_writer_commit_rows{}".to_string(),
        "hivehub_writer_commit_seconds{}".to_string(),
        "hivehub_auth_failures_total{credential=\"password\"}".to_string(),
        "hivehub_auth_failures_total{credential=\"token\"}".to_string(),
    ] {
        assert!(after.get(&key) >= before.get(&key) + 1.0, "{key}: {} -> {}", before.get(&key), after.get(&key));
    }
    for (key, at_least) in [
        (delivered("notification", "websocket"), 3.0),
        (delivered("notification", "mqtt"), 3.0),
        (delivered("notification", "long_poll"), 3.0),
    ] {
        assert!(after.get(&key) >= before.get(&key) + at_least, "{key}: {} -> {}", before.get(&key), after.get(&key));
    }
    assert!(after.get("hivehub_db_pool_max_connections{}") >= 1.0);
    assert!(after.get("hivehub_db_pool_connections{}") >= 1.0);
    assert!(after.get("hivehub_subscriptions{}") >= 2.0);

    // Every documented metric is exported; every exported hivehub metric is documented.
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/API.md")).unwrap();
    for name in hivehub::metrics::ALL {
        assert!(docs.contains(name), "{name} is not in docs/API.md");
    }
    let exported: Vec<String> = after.names().into_iter().filter(|n| n.starts_with("hivehub_")).collect();
    for name in &exported {
        let base = name.trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum");
        assert!(hivehub::metrics::ALL.contains(&base), "{name} is not in hivehub::metrics::ALL");
    }
    mqtt.disconnect().await;
    ws.close().await;
}
