//! Cluster mode, plain MQTT topics: several hubs on one PostgreSQL database are one broker for plain
//! (non-`dh/`) topics. A publish on one instance reaches subscribers on every instance once and in
//! order, large payloads included, and retained messages are the cluster's: a subscriber on any
//! instance — also one started after the publish — gets them, and clearing one anywhere clears it
//! everywhere. Declared in `postgres.rs` only.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};

use super::TestHub;
use crate::common::mqtt::{with_credentials, Mqtt, GRANTED, QUIET};
use crate::common::{ADMIN_LOGIN, ADMIN_PASSWORD};

async fn client(hub: &TestHub, id: &str) -> Mqtt {
    Mqtt::login(hub, id, ADMIN_LOGIN, ADMIN_PASSWORD).await
}

/// Everything `m` receives until it has `n` publishes or `within` has passed.
async fn collect(m: &mut Mqtt, n: usize, within: Duration) -> Vec<(String, Vec<u8>, QoS)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match m.recv_within(left).await {
            Some(msg) => got.push((msg.topic, msg.raw.to_vec(), msg.qos)),
            None => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_qos1_publish_on_one_instance_reaches_subscribers_on_every_instance_once_and_in_order() {
    skip_unless_backend!();
    const PUBLISHERS: usize = 3;
    const PER_PUBLISHER: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let a = TestHub::start_on(database.url.clone(), |_| {}).await;
    let b = TestHub::start_on(database.url.clone(), |_| {}).await;
    let mut on_b = client(&b, "watcher-b").await;
    assert_eq!(on_b.subscribe("plant/#").await, GRANTED);
    // A subscriber on the publishers' own instance: the relay does not bring their messages back.
    let mut on_a = client(&a, "watcher-a").await;
    assert_eq!(on_a.subscribe("plant/+/temperature").await, GRANTED);

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let mut publisher = client(&a, &format!("sensor-{p}")).await;
        publishers.push(tokio::spawn(async move {
            for i in 0..PER_PUBLISHER {
                publisher.publish(&format!("plant/{p}/temperature"), format!("{p}:{i}"), QoS::AtLeastOnce).await;
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let total = PUBLISHERS * PER_PUBLISHER;
    for (name, watcher) in [("on B", &mut on_b), ("on A", &mut on_a)] {
        let mut got = collect(watcher, total, Duration::from_secs(30)).await;
        got.extend(watcher.drain(QUIET).await.into_iter().map(|m| (m.topic, m.raw.to_vec(), m.qos)));
        assert_eq!(got.len(), total, "{name}: every publish once, none twice");
        let mut next: BTreeMap<usize, usize> = BTreeMap::new();
        for (topic, payload, qos) in got {
            assert_eq!(qos, QoS::AtLeastOnce, "{name}: {topic}");
            let text = String::from_utf8(payload).unwrap();
            let (p, i) = text.split_once(':').unwrap();
            let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
            assert_eq!(topic, format!("plant/{p}/temperature"));
            let expected = next.entry(p).or_default();
            assert_eq!(i, *expected, "{name}: publisher {p}'s messages in order");
            *expected += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payload_too_large_for_a_notification_crosses_instances_in_order() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let a = TestHub::start_on(database.url.clone(), |_| {}).await;
    let b = TestHub::start_on(database.url.clone(), |_| {}).await;
    let mut on_b = client(&b, "watcher").await;
    assert_eq!(on_b.subscribe("firmware/#").await, GRANTED);
    let mut publisher = client(&a, "uploader").await;
    // 100 KB of every byte value (not UTF-8), between two small messages.
    let image: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    publisher.publish("firmware/start", "begin", QoS::AtLeastOnce).await;
    publisher.publish("firmware/image", image.clone(), QoS::AtLeastOnce).await;
    publisher.publish("firmware/end", "done", QoS::AtLeastOnce).await;

    let got = collect(&mut on_b, 3, Duration::from_secs(15)).await;
    let topics: Vec<&str> = got.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(topics, ["firmware/start", "firmware/image", "firmware/end"]);
    assert!(got[1].1 == image, "the image arrived byte for byte ({} bytes)", got[1].1.len());
    on_b.quiet(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retained_message_reaches_later_subscribers_on_other_instances_and_on_instances_started_later() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let a = TestHub::start_on(database.url.clone(), |_| {}).await;
    let b = TestHub::start_on(database.url.clone(), |_| {}).await;
    // Live on B: once it is here, A has relayed it (and stored it, in the same transaction).
    let mut probe = client(&b, "probe").await;
    assert_eq!(probe.subscribe("status/#").await, GRANTED);
    let device = client(&a, "dev-1").await;
    device.client.publish("status/dev-1", QoS::AtLeastOnce, true, "online").await.unwrap();
    let live = probe.msg().await;
    assert_eq!((live.topic.as_str(), &live.raw[..]), ("status/dev-1", &b"online"[..]));

    // Subscribing after the publish, only the retained copy can arrive.
    let mut later = client(&b, "later-on-b").await;
    assert_eq!(later.subscribe("status/+").await, GRANTED);
    let kept = later.msg().await;
    assert_eq!((kept.topic.as_str(), &kept.raw[..]), ("status/dev-1", &b"online"[..]));
    later.quiet(QUIET).await;

    let c = TestHub::start_on(database.url.clone(), |_| {}).await;
    let mut on_c = client(&c, "on-c").await;
    assert_eq!(on_c.subscribe("status/dev-1").await, GRANTED);
    let kept = on_c.msg().await;
    assert_eq!((kept.topic.as_str(), &kept.raw[..], kept.qos), ("status/dev-1", &b"online"[..], QoS::AtLeastOnce));
    on_c.quiet(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clearing_a_retained_message_on_one_instance_clears_it_on_every_instance() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let a = TestHub::start_on(database.url.clone(), |_| {}).await;
    let b = TestHub::start_on(database.url.clone(), |_| {}).await;
    let mut probe_a = client(&a, "probe-a").await;
    assert_eq!(probe_a.subscribe("lamp/#").await, GRANTED);
    let mut probe_b = client(&b, "probe-b").await;
    assert_eq!(probe_b.subscribe("lamp/#").await, GRANTED);
    let on_a = client(&a, "lamp-a").await;
    on_a.client.publish("lamp/1", QoS::AtLeastOnce, true, "on").await.unwrap();
    on_a.client.publish("lamp/2", QoS::AtLeastOnce, true, "on").await.unwrap();
    assert_eq!(collect(&mut probe_b, 2, Duration::from_secs(10)).await.len(), 2, "both reached B");

    // Cleared on B (an empty retained payload); once the clear is live on A, A's router has dropped it.
    let on_b = client(&b, "lamp-b").await;
    on_b.client.publish("lamp/1", QoS::AtLeastOnce, true, Vec::<u8>::new()).await.unwrap();
    let seen = collect(&mut probe_a, 3, Duration::from_secs(10)).await;
    assert_eq!(seen.last().map(|(t, p, _)| (t.as_str(), p.len())), Some(("lamp/1", 0)), "{seen:?}");

    let mut later_a = client(&a, "later-a").await;
    assert_eq!(later_a.subscribe("lamp/#").await, GRANTED);
    let kept = later_a.msg().await;
    assert_eq!((kept.topic.as_str(), &kept.raw[..]), ("lamp/2", &b"on"[..]), "only lamp/2 is still retained");
    later_a.quiet(QUIET).await;

    // And the database no longer holds it: an instance started now has only lamp/2.
    let c = TestHub::start_on(database.url.clone(), |_| {}).await;
    let mut on_c = client(&c, "on-c").await;
    assert_eq!(on_c.subscribe("lamp/#").await, GRANTED);
    let kept = on_c.msg().await;
    assert_eq!((kept.topic.as_str(), &kept.raw[..]), ("lamp/2", &b"on"[..]));
    on_c.quiet(QUIET).await;
}

// ---------------------------------------------------------------------------------------------------
// Figures (not a check: `cargo test --test api -- --ignored --nocapture postgres::cluster_plain::notify`).

/// Nanoseconds since the first call, shared by publisher and subscriber (one process).
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Publishes `n` QoS 1 messages of `size` bytes (the send time in the first 8) from `hub`, at most
/// `rate` per second (0: as fast as 100 in flight allow), while `watcher` on `to` collects them.
/// Returns (received, elapsed from first send to last receipt, latencies in µs).
async fn run_figures(
    from: &TestHub,
    watcher: &mut Mqtt,
    id: &str,
    n: usize,
    size: usize,
    rate: u64,
) -> (usize, Duration, Vec<u64>) {
    let mut options = with_credentials(from, id, ADMIN_LOGIN, ADMIN_PASSWORD);
    options.set_inflight(100);
    let (publisher, mut eventloop) = AsyncClient::new(options, 1000);
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            if let Some(offset) = (i as u64 * 1_000_000).checked_div(rate) {
                tokio::time::sleep_until((start + Duration::from_micros(offset)).into()).await;
            }
            let mut payload = vec![b'x'; size.max(8)];
            payload[..8].copy_from_slice(&now_ns().to_be_bytes());
            publisher.publish("bench/relay", QoS::AtLeastOnce, false, payload).await.unwrap();
        }
        publisher
    });
    let mut latencies = Vec::with_capacity(n);
    let mut last = start;
    while latencies.len() < n {
        let Some(m) = watcher.recv_within(Duration::from_secs(5)).await else { break };
        let sent = u64::from_be_bytes(m.raw[..8].try_into().unwrap());
        latencies.push((now_ns() - sent) / 1000);
        last = Instant::now();
    }
    let _publisher = sender.await.unwrap();
    acks.await.unwrap();
    let received = latencies.len();
    latencies.sort_unstable();
    (received, last - start, latencies)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    match sorted.len() {
        0 => 0,
        len => sorted[((len - 1) as f64 * p).round() as usize],
    }
}

/// Relay throughput and latency of 100-byte QoS 1 publishes, A → B, beside the same load A → A
/// (the local router alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "prints figures; run explicitly"]
async fn notify_relay_figures() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let a = TestHub::start_on(database.url.clone(), |_| {}).await;
    let b = TestHub::start_on(database.url.clone(), |_| {}).await;
    const BURST: usize = 20_000;
    const PACED: usize = 3_000;
    for (name, tag, to) in [("A -> A (local router)", "local", &a), ("A -> B (NOTIFY relay)", "relay", &b)] {
        let mut watcher = client(to, &format!("watch-{tag}")).await;
        assert_eq!(watcher.subscribe_qos("bench/#", QoS::AtLeastOnce).await, GRANTED);
        let (got, took, lat) = run_figures(&a, &mut watcher, &format!("burst-{tag}"), BURST, 100, 0).await;
        println!(
            "{name}: burst of {BURST}: received {got} in {:.2} s = {:.0} msg/s; latency p50 {} µs, p99 {} µs, max {} µs",
            took.as_secs_f64(),
            got as f64 / took.as_secs_f64(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(0),
        );
        let (got, _, lat) = run_figures(&a, &mut watcher, &format!("paced-{tag}"), PACED, 100, 1000).await;
        println!(
            "{name}: {PACED} at 1000/s: received {got}; latency p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(0),
        );
        watcher.disconnect().await;
    }
}

/// Sends `n` notes of `note_bytes` (the send time first) on `channel`, `batch` per statement as the
/// relay does, at most `rate` statements per second (0: back to back); `listener` receives them.
/// Returns (received, elapsed from first send to last receipt, latencies in µs).
async fn notify_figures(
    pool: &sqlx::PgPool,
    listener: &mut sqlx::postgres::PgListener,
    n: usize,
    batch: usize,
    note_bytes: usize,
    rate: u64,
) -> (usize, Duration, Vec<u64>) {
    let (pool, start) = (pool.clone(), Instant::now());
    let sender = tokio::spawn(async move {
        for b in 0..n.div_ceil(batch) {
            if let Some(offset) = (b as u64 * 1_000_000).checked_div(rate) {
                tokio::time::sleep_until((start + Duration::from_micros(offset)).into()).await;
            }
            let notes: Vec<String> = (0..batch.min(n - b * batch))
                .map(|_| format!("{:020}:{}", now_ns(), "x".repeat(note_bytes.saturating_sub(21))))
                .collect();
            sqlx::query("SELECT pg_notify($1, note) FROM unnest(string_to_array($2, E'\\n')) AS note")
                .bind("bench_plain")
                .bind(notes.join("\n"))
                .execute(&pool)
                .await
                .unwrap();
        }
    });
    let mut latencies = Vec::with_capacity(n);
    let mut last = start;
    while latencies.len() < n {
        let Ok(Ok(note)) = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await else { break };
        let sent: u64 = note.payload()[..20].parse().unwrap();
        latencies.push((now_ns() - sent) / 1000);
        last = Instant::now();
    }
    sender.await.unwrap();
    latencies.sort_unstable();
    (latencies.len(), last - start, latencies)
}

/// PostgreSQL's NOTIFY alone, between two connections of this process: notes of the relay's size
/// for a 100-byte payload (about 230 bytes), batched as the relay batches them and one per statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "prints figures; run explicitly"]
async fn notify_channel_figures() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await.unwrap();
    listener.listen("bench_plain").await.unwrap();
    for (label, n, batch, rate) in [
        ("256 per statement, back to back", 100_000, 256, 0),
        ("1 per statement, back to back", 5_000, 1, 0),
        ("1 per statement, 1000/s", 3_000, 1, 1000),
    ] {
        let (got, took, lat) = notify_figures(&pool, &mut listener, n, batch, 230, rate).await;
        println!(
            "NOTIFY {label}: {got}/{n} in {:.2} s = {:.0} notes/s; latency p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
            took.as_secs_f64(),
            got as f64 / took.as_secs_f64(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(0),
        );
    }
}
