//! The lookups every request makes — the caller's user and the target device — may be remembered
//! (`src/store/memo.rs`), but never past a change: each test first makes a request that is accepted
//! (so the lookups are warm), then changes the user, its assignments or the device, and the very
//! next request must be judged on the change.

use serde_json::json;

use super::TestHub;

const PATH: &str = "/device/memo-dev/notification";

/// A hub with networks `a` and `b` and device `memo-dev` in `a`.
async fn hub_with_device() -> (TestHub, i64, i64) {
    let hub = TestHub::start().await;
    let (a, b) = (hub.network("memo-a").await, hub.network("memo-b").await);
    hub.device("memo-dev", a).await;
    (hub, a, b)
}

#[tokio::test]
async fn a_device_moved_to_another_network_is_refused_at_once() {
    skip_unless_backend!();
    let (hub, a, b) = hub_with_device().await;
    let (_, token) = hub.client_user("memo-client", &[a]).await;
    hub.post(&token, PATH, json!({"notification": "before"})).await.expect(201);
    hub.put(&hub.admin, "/device/memo-dev", json!({"name": "memo-dev", "networkId": b})).await.expect(204);
    hub.post(&token, PATH, json!({"notification": "after"})).await.expect(403);
    hub.get(&token, "/device/memo-dev").await.expect(403);
    // Moved back: allowed again at once.
    hub.put(&hub.admin, "/device/memo-dev", json!({"name": "memo-dev", "networkId": a})).await.expect(204);
    hub.post(&token, PATH, json!({"notification": "back"})).await.expect(201);
    hub.stop().await;
}

#[tokio::test]
async fn a_user_unassigned_from_the_network_is_refused_at_once() {
    skip_unless_backend!();
    let (hub, a, _) = hub_with_device().await;
    let (id, token) = hub.client_user("memo-client", &[a]).await;
    hub.post(&token, PATH, json!({"notification": "before"})).await.expect(201);
    hub.delete(&hub.admin, &format!("/user/{id}/network/{a}")).await.expect(204);
    hub.post(&token, PATH, json!({"notification": "after"})).await.expect(403);
    // Assigned again: allowed again at once.
    hub.put(&hub.admin, &format!("/user/{id}/network/{a}"), json!({})).await.expect(204);
    hub.post(&token, PATH, json!({"notification": "again"})).await.expect(201);
    hub.stop().await;
}

#[tokio::test]
async fn a_locked_user_s_token_is_refused_at_once() {
    skip_unless_backend!();
    let (hub, a, _) = hub_with_device().await;
    let (id, token) = hub.client_user("memo-client", &[a]).await;
    hub.post(&token, PATH, json!({"notification": "before"})).await.expect(201);
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"status": 1})).await.expect(204);
    hub.post(&token, PATH, json!({"notification": "after"})).await.expect(401);
    // Unlocked: the same token works again at once.
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"status": 0})).await.expect(204);
    hub.post(&token, PATH, json!({"notification": "again"})).await.expect(201);
    hub.stop().await;
}

#[tokio::test]
async fn a_demoted_administrator_is_refused_at_once() {
    skip_unless_backend!();
    let (hub, _, _) = hub_with_device().await;
    // An administrator sees every network without being assigned to any.
    let body = json!({"login": "memo-admin", "password": "admin-pass-2", "role": 0});
    let id = hub.post(&hub.admin, "/user", body).await.expect(201)["id"].as_i64().unwrap();
    let token = hub.login("memo-admin", "admin-pass-2").await;
    hub.post(&token, PATH, json!({"notification": "before"})).await.expect(201);
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"role": 1})).await.expect(204);
    hub.post(&token, PATH, json!({"notification": "after"})).await.expect(403);
    hub.stop().await;
}

#[tokio::test]
async fn a_deleted_device_or_network_is_gone_at_once() {
    skip_unless_backend!();
    let (hub, a, _) = hub_with_device().await;
    let admin = hub.admin.clone();
    hub.post(&admin, PATH, json!({"notification": "before"})).await.expect(201);
    hub.delete(&admin, "/device/memo-dev").await.expect(204);
    hub.post(&admin, PATH, json!({"notification": "after"})).await.expect(404);
    // Registered again, then its network deleted with its devices.
    hub.device("memo-dev", a).await;
    hub.post(&admin, PATH, json!({"notification": "again"})).await.expect(201);
    hub.delete(&admin, &format!("/network/{a}?force=true")).await.expect(204);
    hub.post(&admin, PATH, json!({"notification": "gone"})).await.expect(404);
    hub.stop().await;
}
