//! Security behaviours found by attacking the hub as a hostile tenant: role checks that look at the
//! user's role and not only at the token's actions, rights cut down on refresh, login throttling and
//! expiring lockout, revocation reaching live sessions, no leaks between clients, and permission
//! before validation on every action.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::TestHub;
use crate::common::ws::{live_subscriptions, wait_new_subscriptions, Ws};
use crate::common::{ADMIN_LOGIN, ADMIN_PASSWORD};

const PASSWORD: &str = "client-pass-1";
const ADMIN_ONLY: &str = "Admin permissions required for this action";

async fn anon(hub: &TestHub, method: Method, path: &str, body: Option<Value>) -> crate::common::Reply {
    hub.request(method, None, path, body).await
}

async fn try_login(hub: &TestHub, login: &str, password: Value) -> crate::common::Reply {
    anon(hub, Method::POST, "/token", Some(json!({"login": login, "password": password}))).await
}

/// An access token for `user_id` minted by the admin with `actions` and every network.
async fn token_with(hub: &TestHub, user_id: i64, actions: &[&str]) -> String {
    let body = json!({"userId": user_id, "actions": actions, "networkIds": ["*"], "deviceTypeIds": ["*"]});
    hub.post(&hub.admin, "/token/create", body).await.expect(201)["accessToken"].as_str().unwrap().to_string()
}

async fn user_role_and_status(hub: &TestHub, id: i64) -> (i64, i64) {
    let u = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    (u["role"].as_i64().unwrap(), u["status"].as_i64().unwrap())
}

#[tokio::test]
async fn a_client_with_manage_user_cannot_raise_lock_or_take_over_users() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let (me, _) = hub.client_user("mallory", &[]).await;
    let (victim, _) = hub.client_user("victim", &[]).await;
    let token = token_with(&hub, me, &["ManageUser", "GetCurrentUser", "UpdateCurrentUser"]).await;

    // role, status or login in the body: 403, for itself and for anybody else.
    for (id, body) in [
        (me, json!({"role": 0})),
        (me, json!({"status": 0, "data": {"x": 1}})),
        (me, json!({"login": "mallory2"})),
        (victim, json!({"status": 1})),
        (1, json!({"role": 1})),
    ] {
        hub.put(&token, &format!("/user/{id}"), body).await.expect_error(403, ADMIN_ONLY);
    }
    // Another user's password or data: refused as in the reference (401), nothing changes.
    hub.put(&token, "/user/1", json!({"password": "taken-over-1"})).await.expect_error(401, "Unauthorized");
    hub.put(&token, &format!("/user/{victim}"), json!({"data": {"x": 1}})).await.expect_error(401, "Unauthorized");
    assert_eq!(user_role_and_status(&hub, me).await, (1, 0));
    assert_eq!(user_role_and_status(&hub, victim).await, (1, 0));
    try_login(&hub, ADMIN_LOGIN, json!(ADMIN_PASSWORD)).await.expect(201);

    // No admin is ever created by a client; a client user may be.
    let admin_body = json!({"login": "evil-admin", "password": "evil-pass-1", "role": 0});
    hub.post(&token, "/user", admin_body).await.expect_error(403, ADMIN_ONLY);
    hub.post(&token, "/user", json!({"login": "helper", "password": "helper-pass", "role": 1})).await.expect(201);

    // Other users are out of reach: not read, listed or deleted.
    hub.get(&token, &format!("/user/{victim}")).await.expect_error(403, "Access is denied");
    hub.get(&token, "/user/999999").await.expect_error(403, "Access is denied");
    hub.delete(&token, &format!("/user/{victim}")).await.expect_error(403, "Access is denied");
    let listed = hub.get(&token, "/user").await.expect(200);
    let logins: Vec<&str> = listed.as_array().unwrap().iter().map(|u| u["login"].as_str().unwrap()).collect();
    assert_eq!(logins, ["mallory"]);
    assert_eq!(hub.get(&token, "/user/count").await.expect(200)["count"], 1);
    hub.get(&token, &format!("/user/{me}")).await.expect(200);

    // The same over WebSocket.
    let mut ws = Ws::authenticated(&hub, &token).await;
    ws.err("user/update", json!({"userId": me, "user": {"role": 0}}), 403, ADMIN_ONLY).await;
    ws.err("user/update", json!({"userId": victim, "user": {"status": 1}}), 403, ADMIN_ONLY).await;
    ws.err("user/update", json!({"userId": 1, "user": {"password": "taken-over-1"}}), 401, "Unauthorized").await;
    // The user target is checked before the body is.
    ws.err("user/update", json!({"userId": 1}), 401, "Unauthorized").await;
    ws.err("user/get", json!({"userId": victim}), 403, "Access is denied").await;
    ws.err("user/delete", json!({"userId": 1}), 403, "Access is denied").await;
    ws.err("user/insert", json!({"user": {"login": "evil2", "password": "evil-pass-1", "role": 0}}), 403, ADMIN_ONLY)
        .await;
    assert_eq!(user_role_and_status(&hub, me).await, (1, 0));
    assert_eq!(user_role_and_status(&hub, victim).await, (1, 0));
    hub.stop().await;
}

#[tokio::test]
async fn a_client_grants_only_networks_and_device_types_it_holds() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mine = hub.network("mine").await;
    let theirs = hub.network("theirs").await;
    let (me, _) = hub.client_user("granter", &[mine]).await;
    let (other, _) = hub.client_user("grantee", &[]).await;
    let token = token_with(&hub, me, &["ManageNetwork", "ManageDeviceType", "GetNetwork"]).await;

    hub.put(&token, &format!("/user/{me}/network/{theirs}"), json!({})).await.expect_error(403, "Access is denied");
    hub.put(&token, &format!("/user/{other}/network/{theirs}"), json!({})).await.expect_error(403, "Access is denied");
    hub.delete(&token, &format!("/user/1/network/{mine}")).await.expect_error(403, ADMIN_ONLY);
    // Its own network it may share with another client.
    hub.put(&token, &format!("/user/{other}/network/{mine}"), json!({})).await.expect(204);
    let nets = hub.get(&hub.admin, &format!("/user/{me}")).await.expect(200)["networks"].clone();
    assert_eq!(nets.as_array().unwrap().len(), 1, "{nets}");

    // Managing a network means holding it: not renamed or deleted through a token's `*` scope.
    hub.put(&token, &format!("/network/{theirs}"), json!({"name": "renamed"}))
        .await
        .expect_error(403, "Access is denied");
    hub.delete(&token, &format!("/network/{theirs}")).await.expect_error(403, "Access is denied");
    hub.delete(&token, "/network/999999").await.expect_error(403, "Access is denied");
    assert_eq!(hub.get(&hub.admin, &format!("/network/{theirs}")).await.expect(200)["name"], "theirs");
    hub.put(&token, &format!("/network/{mine}"), json!({"description": "ok"})).await.expect(204);

    // "All device types" is more than a client holds.
    hub.put(&token, &format!("/user/{other}/devicetype/all"), json!({})).await.expect_error(403, ADMIN_ONLY);
    hub.put(&token, &format!("/user/{me}/devicetype/all"), json!({})).await.expect_error(403, ADMIN_ONLY);

    // Reading another user's assignments leaks nothing, whether that user exists or not.
    let reader = token_with(&hub, me, &["GetNetwork", "GetDeviceType", "ManageDeviceType"]).await;
    for uid in [other, 1, 999_999] {
        hub.get(&reader, &format!("/user/{uid}/network/{mine}")).await.expect_error(403, "Access is denied");
        hub.get(&reader, &format!("/user/{uid}/devicetype/1")).await.expect_error(403, "Access is denied");
        hub.get(&reader, &format!("/user/{uid}/devicetype")).await.expect_error(403, "Access is denied");
    }
    hub.get(&reader, &format!("/user/{me}/network/{mine}")).await.expect(200);
    let mut ws = Ws::authenticated(&hub, &reader).await;
    ws.err("user/getNetwork", json!({"userId": 1, "networkId": 1}), 403, "Access is denied").await;
    ws.err("user/getDeviceType", json!({"userId": other, "deviceTypeId": 1}), 403, "Access is denied").await;
    hub.stop().await;
}

#[tokio::test]
async fn configuration_is_for_administrators_and_never_shows_the_jwt_secret() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let (me, _) = hub.client_user("configurer", &[]).await;
    let token = token_with(&hub, me, &["ManageConfiguration"]).await;
    hub.get(&token, "/configuration/user.login.maxAttempts").await.expect_error(403, ADMIN_ONLY);
    hub.put(&token, "/configuration/user.login.maxAttempts", json!({"value": "1000000"}))
        .await
        .expect_error(403, ADMIN_ONLY);
    let mut ws = Ws::authenticated(&hub, &token).await;
    ws.err("configuration/get", json!({"name": "jwt.secret"}), 403, ADMIN_ONLY).await;

    let mut admin = Ws::authenticated(&hub, &hub.admin).await;
    let operator_only = "Configuration entry jwt.secret is managed by the operator, not the API";
    admin.err("configuration/get", json!({"name": "jwt.secret"}), 403, operator_only).await;
    admin.err("configuration/put", json!({"name": "jwt.secret", "value": "known"}), 403, operator_only).await;
    hub.stop().await;
}

#[tokio::test]
async fn refresh_and_live_tokens_follow_the_users_current_role() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let net = hub.network("kept").await;
    let id = hub
        .post(&hub.admin, "/user", json!({"login": "second-admin", "password": PASSWORD, "role": 0}))
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    hub.put(&hub.admin, &format!("/user/{id}/network/{net}"), json!({})).await.expect(204);
    let pair = try_login(&hub, "second-admin", json!(PASSWORD)).await.expect(201);
    let (access, refresh) = (pair["accessToken"].as_str().unwrap(), pair["refreshToken"].as_str().unwrap());
    hub.get(access, "/user").await.expect(200);

    // Demoted to client.
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"role": 1})).await.expect(204);

    // Its old access token no longer carries administrator rights.
    let body = json!({"login": "new-admin", "password": PASSWORD, "role": 0});
    hub.post(access, "/user", body.clone()).await.expect_error(403, "Access is denied");
    hub.get(access, "/user").await.expect_error(403, "Access is denied");
    hub.post(access, "/network", json!({"name": "not-mine"})).await.expect_error(403, "Access is denied");

    // Refresh builds the new token from the current role and assignments.
    let renewed = anon(&hub, Method::POST, "/token/refresh", Some(json!({"refreshToken": refresh}))).await.expect(201);
    let renewed = renewed["accessToken"].as_str().unwrap();
    hub.post(renewed, "/user", body).await.expect_error(403, "Access is denied");
    hub.get(renewed, "/configuration/user.login.maxAttempts").await.expect_error(403, "Access is denied");
    let networks = hub.get(renewed, "/network").await.expect(200);
    let ids: Vec<i64> = networks.as_array().unwrap().iter().map(|n| n["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [net]);
    let create = json!({"userId": 1, "actions": ["*"], "networkIds": ["*"]});
    hub.post(renewed, "/token/create", create).await.expect_error(403, "Access is denied");
    hub.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_and_a_lockout_lifts_by_itself() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| {
        s.auth.login_throttle_free_attempts = 3;
        s.auth.login_throttle_base_ms = 60_000;
        s.auth.lockout_secs = 1;
    })
    .await;
    hub.client_user("target", &[]).await;
    // Three free failures, then the login must wait: 429 without checking the password, so even the
    // right one does not get in now, and the lockout counter does not move.
    for _ in 0..3 {
        try_login(&hub, "target", json!("wrong-pass")).await.expect_error(401, "Invalid credentials");
    }
    for password in ["wrong-pass", PASSWORD] {
        let r = try_login(&hub, "target", json!(password)).await;
        assert_eq!(r.status.as_u16(), 429, "{}", r.text);
        assert_eq!(r.body["error"], 429);
    }
    // Other logins from the same address are not affected yet (the address has a larger budget).
    try_login(&hub, ADMIN_LOGIN, json!(ADMIN_PASSWORD)).await.expect(201);
    hub.stop().await;

    // The lockout expires: 3 failures lock the account, the lock lifts after `lockout_secs`.
    let hub = TestHub::start_with(|s| {
        s.auth.login_throttle_base_ms = 0;
        s.auth.lockout_secs = 1;
    })
    .await;
    let (id, token) = hub.client_user("target", &[]).await;
    hub.put(&hub.admin, "/configuration/user.login.maxAttempts", json!({"value": "3"})).await.expect(200);
    for _ in 0..3 {
        try_login(&hub, "target", json!("wrong-pass")).await.expect_error(401, "Invalid credentials");
    }
    try_login(&hub, "target", json!(PASSWORD)).await.expect_error(401, "Invalid credentials");
    hub.get(&token, "/user/current").await.expect_error(401, "Unauthorized");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if try_login(&hub, "target", json!(PASSWORD)).await.status.as_u16() == 201 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the lockout never lifted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hub.get(&token, "/user/current").await.expect(200);
    assert_eq!(hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200)["status"], 0);
    // A lock set by an administrator does not lift by itself.
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"status": 1})).await.expect(204);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    try_login(&hub, "target", json!(PASSWORD)).await.expect_error(401, "Invalid credentials");
    hub.stop().await;
}

#[tokio::test]
async fn concurrent_failures_lock_exactly_once_and_count_exactly() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| {
        s.auth.login_throttle_base_ms = 0;
        s.auth.lockout_secs = 0;
    })
    .await;
    let (id, _) = hub.client_user("crowd", &[]).await;
    let attempts: Vec<_> = (0..25).map(|_| try_login(&hub, "crowd", json!("wrong-pass"))).collect();
    for r in futures_util::future::join_all(attempts).await {
        r.expect_error(401, "Invalid credentials");
    }
    // Locked at the tenth failure; the fifteen after it counted nothing (a locked account has no
    // counter to raise), so the stored counter is back at zero.
    let store = hivehub::store::Store::open(hub.database_settings()).await.unwrap();
    let user = store.user_get(id).await.unwrap().unwrap();
    assert_eq!((user.status, user.login_attempts), (1, 0));
    store.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn login_answers_do_not_tell_unknown_wrong_and_locked_apart() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.auth.login_throttle_base_ms = 0).await;
    let (id, _) = hub.client_user("locked-one", &[]).await;
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"status": 1})).await.expect(204);
    try_login(&hub, "nobody-at-all", json!("some-pass")).await.expect_error(401, "Invalid credentials");
    try_login(&hub, ADMIN_LOGIN, json!("wrong-pass")).await.expect_error(401, "Invalid credentials");
    try_login(&hub, "locked-one", json!(PASSWORD)).await.expect_error(401, "Invalid credentials");
    // Non-string values are a failed login, not a malformed request.
    try_login(&hub, ADMIN_LOGIN, json!(1111)).await.expect_error(401, "Invalid credentials");
    try_login(&hub, ADMIN_LOGIN, json!({"x": 1})).await.expect_error(401, "Invalid credentials");
    let mut ws = Ws::connect(&hub).await;
    ws.err("token", json!({"login": ADMIN_LOGIN, "password": 1111}), 401, "Invalid credentials").await;
    ws.err("token", json!({"login": 5, "password": "x"}), 401, "Invalid credentials").await;
    hub.stop().await;
}

#[tokio::test]
async fn non_string_passwords_count_towards_the_lockout() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.auth.login_throttle_base_ms = 0).await;
    let (id, _) = hub.client_user("numeric", &[]).await;
    hub.put(&hub.admin, "/configuration/user.login.maxAttempts", json!({"value": "2"})).await.expect(200);
    try_login(&hub, "numeric", json!(1234)).await.expect_error(401, "Invalid credentials");
    try_login(&hub, "numeric", json!(true)).await.expect_error(401, "Invalid credentials");
    assert_eq!(hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200)["status"], 1);
    hub.stop().await;
}

#[tokio::test]
async fn password_changes_check_the_old_password() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.auth.require_old_password = true).await;
    let (id, token) = hub.client_user("changer", &[]).await;
    let new = "changed-pass-1";
    hub.put(&token, "/user/current", json!({"password": new}))
        .await
        .expect_error(403, "The old password is required to change the password");
    hub.put(&token, "/user/current", json!({"password": new, "oldPassword": "nope-nope"}))
        .await
        .expect_error(403, "The old password is incorrect");
    hub.put(&token, "/user/current", json!({"password": new, "oldPassword": PASSWORD})).await.expect(204);
    try_login(&hub, "changer", json!(new)).await.expect(201);
    // An administrator resetting a client's password needs no old password, but a wrong one given
    // is still refused.
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"password": PASSWORD})).await.expect(204);
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"password": new, "oldPassword": "wrong-one"}))
        .await
        .expect_error(403, "The old password is incorrect");
    hub.stop().await;
}

#[tokio::test]
async fn revoked_users_lose_their_long_polls_and_websocket_sessions() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let net = hub.network("watched").await;
    hub.device("watched-dev", net).await;
    let (id, token) = hub.client_user("watcher", &[net]).await;

    // A long poll in flight when the user loses the network delivers nothing posted after that.
    let base = live_subscriptions(&hub).await;
    let poll = {
        let url = "/device/watched-dev/notification/poll?waitTimeout=3";
        let (hub_ref, token) = (&hub, token.clone());
        async move { hub_ref.get(&token, url).await }
    };
    let unassign_then_post = async {
        wait_new_subscriptions(&hub, base, 1).await;
        hub.delete(&hub.admin, &format!("/user/{id}/network/{net}")).await.expect(204);
        hub.post(&hub.admin, "/device/watched-dev/notification", json!({"notification": "secret"})).await.expect(201);
    };
    let (reply, _) = tokio::join!(poll, unassign_then_post);
    let body = reply.expect(200);
    assert_eq!(body, json!([]), "delivered after unassignment: {body}");

    // A WebSocket session of a user who gets locked is closed with a reason and answers nothing.
    hub.put(&hub.admin, &format!("/user/{id}/network/{net}"), json!({})).await.expect(204);
    let mut ws = Ws::authenticated(&hub, &token).await;
    ws.subscribe("notification/subscribe", json!({"deviceId": "watched-dev"})).await;
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"status": 1})).await.expect(204);
    let closed = ws.closed_within(Duration::from_secs(5)).await;
    assert_eq!(closed.map(|(code, _)| code), Some(1008), "the session must end with a policy close");

    // Deleting the user ends a poll in flight too: nothing posted afterwards reaches it.
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"status": 0})).await.expect(204);
    let base = live_subscriptions(&hub).await;
    let poll = {
        let token = token.clone();
        let hub_ref = &hub;
        async move { hub_ref.get(&token, "/device/watched-dev/notification/poll?waitTimeout=3").await }
    };
    let delete_then_post = async {
        wait_new_subscriptions(&hub, base, 1).await;
        hub.delete(&hub.admin, &format!("/user/{id}")).await.expect(204);
        hub.post(&hub.admin, "/device/watched-dev/notification", json!({"notification": "later"})).await.expect(201);
    };
    let (reply, _) = tokio::join!(poll, delete_then_post);
    assert_eq!(reply.expect(200), json!([]));
    hub.stop().await;
}

#[tokio::test]
async fn permission_comes_before_validation_on_every_action() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let (me, _) = hub.client_user("narrow", &[]).await;
    let token = token_with(&hub, me, &["GetNetwork"]).await;
    let mut ws = Ws::authenticated(&hub, &token).await;
    // Without the action, the body does not matter: 403, never 400.
    for action in [
        "notification/insert",
        "notification/get",
        "notification/list",
        "command/insert",
        "command/update",
        "command/get",
        "device/get",
        "device/save",
        "device/delete",
        "user/update",
        "user/get",
        "user/insert",
        "user/delete",
        "devicetype/get",
        "devicetype/update",
        "network/update",
        "network/insert",
        "configuration/put",
        "token/create",
        "user/assignNetwork",
    ] {
        ws.err(action, json!({}), 403, "Access is denied").await;
    }

    // With the action: the target comes next (admin 404, client outside its scope 403), then the body.
    let mut admin = Ws::authenticated(&hub, &hub.admin).await;
    admin.err("network/update", json!({"networkId": 999999}), 404, "Network with id = 999999 not found").await;
    admin
        .err("devicetype/update", json!({"deviceTypeId": 999999}), 404, "Device type with id = 999999 not found")
        .await;
    admin.err("network/update", json!({"networkId": 1}), 400, "Network is required").await;
    admin.err("network/update", json!({}), 400, "Network id is wrong or empty").await;
    let manager = token_with(&hub, me, &["ManageNetwork"]).await;
    let limited = hub
        .post(&hub.admin, "/token/create", json!({"userId": me, "actions": ["ManageNetwork"], "networkIds": ["2"]}))
        .await
        .expect(201)["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    for t in [manager, limited] {
        let mut client = Ws::authenticated(&hub, &t).await;
        client.err("network/update", json!({"networkId": 999999}), 403, "Access is denied").await;
    }
    let creator = token_with(&hub, me, &["CreateDeviceNotification"]).await;
    let mut client = Ws::authenticated(&hub, &creator).await;
    client.err("notification/insert", json!({"deviceId": "not-visible"}), 403, "Access is denied").await;
    client.err("notification/insert", json!({}), 400, "Device id is wrong or empty").await;
    admin
        .err(
            "notification/insert",
            json!({"deviceId": "no-such-device"}),
            404,
            "Device with such deviceId = no-such-device not found",
        )
        .await;
    hub.stop().await;
}
