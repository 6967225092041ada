//! Readiness and fast 503s while PostgreSQL is away (README "Deployment"): with the default acquire
//! timeout (10 s) a request must not wait it out — once the hub has found the server unreachable it
//! answers 503 at once (one request at a time probes) — and `/readyz` says 503 until the server is
//! back, then 200, without a restart. Declared in `postgres.rs` only: it stops a server of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::TestHub;
use crate::common::pg::{start_server, stop_server, PgServer};

/// `(status, body, took)` of an unauthenticated GET on the hub's root.
async fn get(hub: &TestHub, path: &str) -> (u16, Value, Duration) {
    let t0 = Instant::now();
    let resp = hub.client.get(format!("{}{path}", hub.root)).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null), t0.elapsed())
}

/// An authenticated REST GET: `(status, took)`.
async fn rest(hub: &TestHub) -> (u16, Duration) {
    let t0 = Instant::now();
    let resp = hub.client.get(format!("{}/device", hub.base)).bearer_auth(&hub.admin).send().await.unwrap();
    (resp.status().as_u16(), t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_fast_503s_follow_the_database() {
    skip_unless_backend!();
    let server = Arc::new(PgServer::dedicated());
    let name = server.create_database().await;
    let hub = TestHub::start_on(server.url(&name), |s| s.cluster.node_id = "ready-node".into()).await;
    assert_eq!(get(&hub, "/readyz").await.0, 200);
    assert_eq!(rest(&hub).await.0, 200);

    stop_server(&server).await;
    // The first statements find the server gone; after that nothing waits for the pool's 10 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut fast = 0;
    while fast < 5 {
        let (status, took) = rest(&hub).await;
        assert!(status == 503, "REST answered {status} with the database stopped");
        fast = if took < Duration::from_secs(3) { fast + 1 } else { 0 };
        assert!(Instant::now() < deadline, "503s never became fast (last took {took:?})");
    }
    let (status, body, took) = get(&hub, "/readyz").await;
    assert_eq!((status, &body["status"], &body["node"]), (503, &"unavailable".into(), &"ready-node".into()), "{body}");
    assert!(body["problems"][0].as_str().unwrap().starts_with("database: "), "{body}");
    assert!(took < Duration::from_secs(3), "readyz took {took:?}");
    // Still alive, though not ready.
    assert_eq!(get(&hub, "/healthz").await.0, 200);

    start_server(&server).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&hub, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "not ready again within 30 s of the database's return");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rest(&hub).await.0, 200);
}
