//! Hostile input, generated: thousands of random WebSocket action messages (every action, random
//! field names and values of every JSON type) and random REST query strings. Whatever arrives, the
//! hub answers with a well-formed envelope or error body in the 4xx range — never a 5xx, never a
//! dropped connection — and keeps serving. Deterministic: a fixed-seed xorshift generator.

use futures_util::{SinkExt, StreamExt};
use hivehub::hub::dispatch::ApiAction;
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::Message;

use super::TestHub;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Field names the actions read, plus noise.
const KEYS: &[&str] = &[
    "deviceId",
    "deviceIds",
    "networkId",
    "networkIds",
    "deviceTypeId",
    "deviceTypeIds",
    "userId",
    "commandId",
    "notificationId",
    "subscriptionId",
    "name",
    "value",
    "names",
    "timestamp",
    "start",
    "end",
    "take",
    "skip",
    "sortField",
    "sortOrder",
    "limit",
    "waitTimeout",
    "returnUpdatedCommands",
    "returnUpdated",
    "force",
    "type",
    "token",
    "refreshToken",
    "login",
    "password",
    "payload",
    "notification",
    "command",
    "device",
    "network",
    "deviceType",
    "user",
    "status",
    "result",
    "parameters",
    "lifetime",
    "data",
    "role",
    "isBlocked",
    "x",
];

fn random_text(rng: &mut Rng) -> String {
    let pieces = [
        "",
        "1",
        "0",
        "-1",
        "999999999999999999999",
        "e50d6085-2aba-48e9-b1c3-73c673e414be",
        "*",
        "%",
        "_",
        "null",
        "2018-02-30T25:61:61",
        "1970-01-01",
        "ASC",
        "DESC",
        "notification",
        "\u{0}",
        "ü€😀",
        "'; DROP TABLE dh_user;--",
        "$device-add",
        "a/b/#",
        "+",
    ];
    let mut s = String::new();
    for _ in 0..rng.below(3) + 1 {
        s.push_str(pieces[rng.below(pieces.len())]);
    }
    if rng.below(20) == 0 {
        s.push_str(&"z".repeat(rng.below(5000)));
    }
    s
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64 % 1000),
        3 => json!(i64::MAX - rng.below(3) as i64),
        4 => json!(-(rng.below(1000) as f64) / 7.0),
        5 => json!(random_text(rng)),
        6 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth + 1)).collect()),
        _ => random_object(rng, depth + 1),
    }
}

fn random_object(rng: &mut Rng, depth: usize) -> Value {
    let mut m = Map::new();
    for _ in 0..rng.below(6) {
        m.insert(rng.pick(KEYS).to_string(), random_value(rng, depth));
    }
    Value::Object(m)
}

/// Sends `count` random requests over one WebSocket session and checks every answer.
async fn fuzz_websocket(hub: &TestHub, token: &str, seed: u64, count: usize, spare: &[ApiAction]) {
    let url = format!("{}/api/websocket", hub.root.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let auth = json!({"action": "authenticate", "requestId": 0, "token": token});
    ws.send(Message::Text(auth.to_string().into())).await.unwrap();
    let mut rng = Rng(seed);
    let actions: Vec<ApiAction> = ApiAction::ALL.iter().copied().filter(|a| !spare.contains(a)).collect();
    for i in 1..=count {
        let mut req = random_object(&mut rng, 0);
        let action = if rng.below(10) == 0 { json!(random_text(&mut rng)) } else { json!(rng.pick(&actions).name()) };
        req["action"] = action.clone();
        req["requestId"] = json!(i);
        ws.send(Message::Text(req.to_string().into())).await.unwrap();
        // The answer to this request (pushes of random subscriptions may come in between).
        let answer = loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {req}"))
                .unwrap_or_else(|| panic!("connection closed after {req}"))
                .unwrap_or_else(|e| panic!("connection failed after {req}: {e}"));
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap_or_else(|_| panic!("not JSON: {t}"));
            if v.get("requestId") == Some(&json!(i)) {
                break v;
            }
        };
        match answer["status"].as_str() {
            Some("success") => {}
            Some("error") => {
                let code = answer["code"].as_u64().unwrap_or(0);
                assert!((400..500).contains(&code), "{req} -> {answer}");
                assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{req} -> {answer}");
            }
            _ => panic!("{req} -> no envelope: {answer}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_websocket_requests_never_fail_the_hub() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.auth.login_throttle_base_ms = 0).await;
    let n = hub.network("fuzz").await;
    hub.device("fuzz-dev", n).await;
    let (_, client) = hub.client_user("fuzzer", &[n]).await;
    // The admin keeps its own account (a random update could lock it and end the session).
    let spare = [ApiAction::UserUpdate, ApiAction::UserUpdateCurrent, ApiAction::UserDelete];
    fuzz_websocket(&hub, &hub.admin, 0x9E37_79B9_7F4A_7C15, 1500, &spare).await;
    fuzz_websocket(&hub, &client, 0xD1B5_4A32_D192_ED03, 1500, &[]).await;
    // Still serving.
    hub.get(&hub.admin, "/info").await.expect(200);
    hub.stop().await;
}

#[tokio::test]
async fn random_rest_query_strings_never_fail_the_hub() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let n = hub.network("fuzzq").await;
    hub.device("fuzzq-dev", n).await;
    let paths = [
        "/device",
        "/device/count",
        "/network",
        "/devicetype",
        "/user",
        "/device/fuzzq-dev/notification",
        "/device/fuzzq-dev/command",
        "/device/fuzzq-dev/notification/poll",
        "/device/notification/poll",
        "/device/command/poll",
    ];
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for _ in 0..600 {
        let mut query = String::new();
        for _ in 0..rng.below(5) {
            let key = rng.pick(KEYS);
            let value = random_text(&mut rng);
            let value: String = value.bytes().map(|b| format!("%{b:02X}")).collect();
            query.push_str(&format!("{key}={value}&"));
        }
        // Keep long polls short: a random waitTimeout may still be refused or clamped.
        query.push_str(if rng.below(2) == 0 { "waitTimeout=0" } else { "waitTimeout=zz" });
        let path = format!("{}?{query}", rng.pick(&paths));
        let r = hub.get(&hub.admin, &path).await;
        let status = r.status.as_u16();
        assert!(status < 500, "{path} -> {status} {}", r.text);
        if status >= 400 {
            assert_eq!(r.body["error"], status, "{path} -> {}", r.text);
        }
    }
    hub.stop().await;
}
