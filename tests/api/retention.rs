//! Message retention: notifications and commands older than `database.message_retention_secs` are
//! deleted by the hub's retention task (it runs at start and then hourly).

use std::time::Duration;

use serde_json::json;

use super::TestHub;

#[tokio::test]
async fn old_messages_are_deleted_and_recent_ones_kept() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.admin.clone();
    hub.device("keeper", 1).await;
    for t in ["2001-01-01T00:00:00.000", "2002-01-01T00:00:00.000"] {
        hub.post(&a, "/device/keeper/notification", json!({"notification": "old", "timestamp": t})).await.expect(201);
        hub.post(&a, "/device/keeper/command", json!({"command": "old", "timestamp": t})).await.expect(201);
    }
    hub.post(&a, "/device/keeper/notification", json!({"notification": "new"})).await.expect(201);
    hub.post(&a, "/device/keeper/command", json!({"command": "new"})).await.expect(201);

    // Restart with a one-day retention: the start-up pass removes what is older.
    let hub = hub.restart_with(|s| s.database.message_retention_secs = 86_400).await;
    let a = hub.admin.clone();
    let mut names = Vec::new();
    for _ in 0..100 {
        let n = hub.get(&a, "/device/keeper/notification?end=2100-01-01&take=100").await.expect(200);
        let c = hub.get(&a, "/device/keeper/command?end=2100-01-01&take=100").await.expect(200);
        names = [n, c]
            .iter()
            .flat_map(|l| l.as_array().unwrap().clone())
            .map(|m| m.get("notification").or(m.get("command")).unwrap().as_str().unwrap().to_string())
            .collect();
        if !names.contains(&"old".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    names.sort();
    assert_eq!(names, ["$device-add", "new", "new"]);
}
