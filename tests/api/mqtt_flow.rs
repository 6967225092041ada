//! Plain-topic flow control (README "Plain topics: flow control"): with router logs far smaller than
//! a burst, a reading subscriber loses nothing at QoS 0, every acknowledged QoS 1 publish reaches a
//! slow subscriber (its publishers are slowed instead), and a subscriber that stops reading gets its
//! QoS 0 publishes dropped and counted, is disconnected, and holds nobody up.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use hivehub::mqtt::codec::{self, Packet as Wire};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TestHub;
use crate::common::mqtt::options;

/// Router logs of 3 x 1 KiB: a subscriber may lag 2 KiB (about 18 of the messages below) per filter.
fn small_router_logs(s: &mut hivehub::config::Settings) {
    s.mqtt.router_segment_bytes = 1024;
    s.mqtt.router_segment_count = 3;
}

/// Generous bound for a test that would otherwise hang (never a timing assertion).
const PATIENCE: Duration = Duration::from_secs(120);

fn payload(publisher: usize, n: usize) -> String {
    format!("{publisher}-{n}-{}", "x".repeat(96))
}

/// A subscriber on `filter` collecting payloads; it stops after every `every` messages for `pause`.
async fn subscriber(
    hub: &TestHub,
    id: &str,
    filter: &str,
    qos: QoS,
    every: usize,
    pause: Duration,
) -> Arc<Mutex<HashSet<String>>> {
    let (client, mut eventloop) = AsyncClient::new(options(hub, id), 100);
    let got = Arc::new(Mutex::new(HashSet::new()));
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    client.subscribe(filter, qos).await.unwrap();
    let seen = got.clone();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        let mut n = 0usize;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    seen.lock().unwrap().insert(String::from_utf8_lossy(&p.payload).into_owned());
                    n += 1;
                    if every > 0 && n.is_multiple_of(every) {
                        tokio::time::sleep(pause).await;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed).await.expect("SUBACK").unwrap();
    got
}

/// `publishers` clients each publish `n` messages to `<prefix>/<i>` at `qos`, then one QoS 1 message
/// `<i>-end` (acknowledged after everything before it was taken). Returns the payloads whose
/// publish was acknowledged (all of them at QoS 0 once the end message is acknowledged).
async fn publish_all(hub: &TestHub, prefix: &str, publishers: usize, n: usize, qos: QoS) -> HashSet<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..publishers {
        let mut o: MqttOptions = options(hub, &format!("{prefix}-pub-{i}"));
        o.set_inflight(50);
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        let topic = format!("{prefix}/{i}");
        tasks.spawn(async move {
            let sender = client.clone();
            let topic2 = topic.clone();
            let send = tokio::spawn(async move {
                for k in 0..n {
                    sender.publish(topic2.as_str(), qos, false, payload(i, k)).await.unwrap();
                }
                sender.publish(topic2.as_str(), QoS::AtLeastOnce, false, format!("{i}-end")).await.unwrap();
            });
            let expected_acks = if qos == QoS::AtLeastOnce { n + 1 } else { 1 };
            let mut acks = 0;
            while acks < expected_acks {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publisher {i}: {e}"),
                }
            }
            send.await.unwrap();
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
            (0..n).map(|k| payload(i, k)).chain([format!("{i}-end")]).collect::<Vec<_>>()
        });
    }
    let mut acked = HashSet::new();
    while let Some(done) = tasks.join_next().await {
        acked.extend(done.unwrap());
    }
    acked
}

/// Waits until `got` holds everything in `want`; panics with what is missing after `PATIENCE`.
async fn until_received(got: &Arc<Mutex<HashSet<String>>>, want: &HashSet<String>) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let missing = want.difference(&got.lock().unwrap()).count();
        if missing == 0 {
            return;
        }
        if tokio::time::Instant::now() > give_up {
            panic!("{missing} of {} acknowledged publishes never reached the subscriber", want.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cache_stats(hub: &TestHub) -> String {
    let v: Value = reqwest::get(format!("{}/info/cache", hub.base)).await.unwrap().json().await.unwrap();
    v["cacheStats"].as_str().unwrap().to_string()
}

/// The number before `what` in the cacheStats text ("...; 3 MQTT connections; ...").
fn stat(stats: &str, what: &str) -> u64 {
    stats
        .split("; ")
        .find_map(|part| part.strip_suffix(what).and_then(|n| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {what:?} in {stats:?}"))
}

#[tokio::test]
async fn every_acknowledged_plain_qos1_publish_reaches_a_slow_subscriber() {
    skip_unless_backend!();
    let hub = TestHub::start_with(small_router_logs).await;
    // Reads 10 messages, then pauses: far slower than four publishers with 50 unacknowledged each.
    let got = subscriber(&hub, "flow-slow-sub", "flowq1/#", QoS::AtLeastOnce, 10, Duration::from_millis(2)).await;
    let acked = publish_all(&hub, "flowq1", 4, 300, QoS::AtLeastOnce).await;
    assert_eq!(acked.len(), 4 * 301);
    until_received(&got, &acked).await;
}

#[tokio::test]
async fn a_reading_subscriber_loses_nothing_under_a_plain_qos0_burst() {
    skip_unless_backend!();
    let hub = TestHub::start_with(small_router_logs).await;
    let got = subscriber(&hub, "flow-q0-sub", "flowq0/+", QoS::AtMostOnce, 0, Duration::ZERO).await;
    let sent = publish_all(&hub, "flowq0", 4, 1500, QoS::AtMostOnce).await;
    until_received(&got, &sent).await;
    assert!(cache_stats(&hub).await.contains("; 0 MQTT deliveries dropped"), "{}", cache_stats(&hub).await);
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_has_qos0_dropped_and_counted_and_is_disconnected() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| {
        small_router_logs(s);
        s.mqtt.stall_ms = 100;
        s.mqtt.write_timeout_secs = 2;
    })
    .await;
    // A raw subscriber that reads its CONNACK and SUBACK, then nothing more.
    let mut stuck = TcpStream::connect(hub.mqtt_addr()).await.unwrap();
    let mut out = BytesMut::new();
    codec::encode(
        &Wire::Connect(Box::new(codec::Connect {
            protocol_level: 4,
            client_id: "flow-stuck".into(),
            clean_session: true,
            keep_alive: 0,
            username: None,
            password: None,
            will: None,
        })),
        &mut out,
    );
    codec::encode(&Wire::Subscribe { pkid: 1, filters: vec![("stuck/#".into(), 0)] }, &mut out);
    stuck.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut answers = Vec::new();
    while answers.len() < 2 {
        match codec::decode(&mut buf, 1 << 20).unwrap() {
            Some(p) => answers.push(p),
            None => assert!(stuck.read_buf(&mut buf).await.unwrap() > 0, "closed before SUBACK"),
        }
    }
    assert!(matches!(answers[1], Wire::SubAck { pkid: 1, .. }), "{answers:?}");
    assert!(cache_stats(&hub).await.contains("; 0 MQTT deliveries dropped"));

    // Far more than socket buffers hold: the publisher is held back until the subscriber counts as
    // stalled, then its QoS 0 publishes are dropped for it, and the publisher finishes.
    let (client, mut eventloop) = AsyncClient::new(options(&hub, "flow-stuck-pub"), 100);
    let big = vec![b'y'; 32 * 1024];
    let sender = client.clone();
    let send = tokio::spawn(async move {
        for _ in 0..1000 {
            sender.publish("stuck/big", QoS::AtMostOnce, false, big.clone()).await.unwrap();
        }
        sender.publish("stuck/end", QoS::AtLeastOnce, false, "end").await.unwrap();
    });
    let acked = tokio::time::timeout(PATIENCE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "the publisher stayed held up by a subscriber that stopped reading");
    send.await.unwrap();

    // Counted, and the stalled subscriber is disconnected as not reading (the publisher remains).
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = cache_stats(&hub).await;
        if stat(&stats, "MQTT deliveries dropped") > 0 && stat(&stats, "MQTT connections") == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the hub had written before is still there to read, then the connection ends.
    let mut sink = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(PATIENCE, stuck.read(&mut sink)).await.expect("closed") {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // The publisher is unaffected.
    client.publish("stuck/after", QoS::AtLeastOnce, false, "after").await.unwrap();
    let after = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = eventloop.poll().await {
                return;
            }
        }
    })
    .await;
    assert!(after.is_ok());
}
