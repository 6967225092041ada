//! The Rust example device (`firmware-examples/rust-device`) against a real hub: it registers over
//! MQTT, its telemetry is stored, and commands inserted over REST are executed and answered.

use std::time::{Duration, Instant};

use hivehub_rust_device::{run, DeviceConfig, Stats};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::TestHub;
use crate::common::{ADMIN_LOGIN, ADMIN_PASSWORD};

/// Repeats `probe` until it returns `Some` or 15 s pass.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Inserts a command over REST and waits (REST wait endpoint) for the device's answer.
async fn command(hub: &TestHub, device: &str, name: &str, parameters: Value) -> Value {
    let id = hub
        .post(&hub.admin, &format!("/device/{device}/command"), json!({"command": name, "parameters": parameters}))
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    let answered = hub.get(&hub.admin, &format!("/device/{device}/command/{id}/poll?waitTimeout=30")).await.expect(200);
    assert_eq!(answered["id"], id, "{answered}");
    assert_eq!(answered["command"], name, "{answered}");
    answered
}

#[tokio::test]
async fn rust_device_registers_sends_telemetry_and_answers_commands() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let network = hub.network("firmware-net").await;
    let addr = hub.mqtt_addr();
    let device = "fw-rust-1";

    let mut config = DeviceConfig::new(addr.ip().to_string(), addr.port(), ADMIN_LOGIN, ADMIN_PASSWORD, device);
    config.device_name = "Firmware Rust 1".into();
    config.network_id = Some(network);
    config.client_id = "fw-rust-client-1".into();
    config.telemetry_interval = Duration::from_millis(200);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(config, async move {
        let _ = stopped.await;
    }));

    // Registered through MQTT device/save, in the requested network.
    let registered = eventually("the device to be registered", || async {
        let r = hub.get(&hub.admin, &format!("/device/{device}")).await;
        (r.status.as_u16() == 200).then_some(r.body)
    })
    .await;
    assert_eq!(registered["name"], "Firmware Rust 1", "{registered}");
    assert_eq!(registered["networkId"], network, "{registered}");
    assert_eq!(registered["isBlocked"], false, "{registered}");

    // Telemetry is stored. The device subscribes to its command topic before the first telemetry
    // notification, so once one is stored, commands inserted from now on reach it (MQTT subscriptions
    // have no history replay).
    let telemetry = eventually("two telemetry notifications", || async {
        let list =
            hub.get(&hub.admin, &format!("/device/{device}/notification?notification=telemetry")).await.expect(200);
        (list.as_array().unwrap().len() >= 2).then_some(list)
    })
    .await;
    for n in telemetry.as_array().unwrap() {
        assert_eq!(n["deviceId"], device, "{n}");
        assert_eq!(n["networkId"], network, "{n}");
        assert!(n["parameters"]["celsius"].is_number(), "{n}");
        assert!(n["parameters"]["seq"].as_u64().unwrap() >= 1, "{n}");
    }

    // Commands inserted over REST are executed and answered with command/update.
    let pong = command(&hub, device, "ping", json!({})).await;
    assert_eq!(pong["status"], "done", "{pong}");
    assert_eq!(pong["result"]["pong"], true, "{pong}");

    let led = command(&hub, device, "led", json!({"on": true})).await;
    assert_eq!(led["status"], "done", "{led}");
    assert_eq!(led["result"], json!({"led": true}), "{led}");

    let other = command(&hub, device, "reboot", json!({"delay": 1})).await;
    assert_eq!(other["status"], "done", "{other}");
    assert_eq!(other["result"], json!({"echo": {"delay": 1}, "handled": false}), "{other}");

    let bad = command(&hub, device, "set-interval", json!({"seconds": 0})).await;
    assert_eq!(bad["status"], "failed", "{bad}");

    // The LED state shows up in later telemetry.
    eventually("telemetry reporting the LED on", || async {
        let list = hub
            .get(&hub.admin, &format!("/device/{device}/notification?notification=telemetry&take=1"))
            .await
            .expect(200);
        (list[0]["parameters"]["led"] == true).then_some(())
    })
    .await;

    // A clean stop: the device disconnects and reports what it did.
    stop.send(()).unwrap();
    let stats: Stats = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the device stops within 10 s")
        .expect("the device task does not panic")
        .expect("the device stops without error");
    assert_eq!(stats.commands_received, 4, "{stats:?}");
    assert_eq!(stats.commands_answered, 4, "{stats:?}");
    assert!(stats.notifications_sent >= 3, "{stats:?}");
    assert!(stats.notifications_acked >= 2, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");

    hub.stop().await;
}

#[tokio::test]
async fn rust_device_reports_bad_credentials() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let addr = hub.mqtt_addr();
    let config = DeviceConfig::new(addr.ip().to_string(), addr.port(), ADMIN_LOGIN, "wrong-password", "fw-rust-2");
    let result = tokio::time::timeout(Duration::from_secs(15), run(config, std::future::pending::<()>()))
        .await
        .expect("run returns");
    assert!(matches!(result, Err(hivehub_rust_device::Error::Refused(_))), "{result:?}");
    hub.stop().await;
}
