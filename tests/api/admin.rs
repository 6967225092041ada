//! Administration over real HTTP: info, tokens, configuration, users, networks, device types and the
//! HTTP edge (CORS, method override, routing errors, bodies, Authorization header).

use hivehub::auth::jwt::{JwtKeys, TokenPayload};
use hivehub::time::now_ms;
use reqwest::Method;
use serde_json::{json, Value};

use super::TestHub;
use crate::common::{Reply, ADMIN_LOGIN, ADMIN_PASSWORD};

const CLIENT_PASSWORD: &str = "client-pass-1";
const CLIENT_ACTIONS: [i64; 13] = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 16, 17];
const ACCESS_LIFETIME_MS: i64 = 1_800_000;
const REFRESH_LIFETIME_MS: i64 = 15_724_800_000;

const CORS: [(&str, &str); 5] = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-credentials", "true"),
    ("access-control-allow-methods", "OPTIONS, GET, POST, PUT, DELETE, HEAD"),
    ("access-control-max-age", "0"),
    ("access-control-allow-headers", "Origin, Authorization, Accept, Content-Type, Auth-DeviceID, Auth-DeviceKey"),
];

// ---------------------------------------------------------------------------------------------
// helpers

/// A request with arbitrary headers and a raw (possibly malformed) body; no header is added.
async fn raw(hub: &TestHub, method: Method, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let url = if path.starts_with("http") { path.to_string() } else { hub.url(path) };
    let mut rb = hub.client.request(method, url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.body(b.to_string());
    }
    Reply::read(rb.send().await.expect("request sent")).await
}

async fn anon(hub: &TestHub, method: Method, path: &str, body: Option<Value>) -> Reply {
    hub.request(method, None, path, body).await
}

/// `POST /token` without asserting anything.
async fn try_login(hub: &TestHub, login: &str, password: &str) -> Reply {
    anon(hub, Method::POST, "/token", Some(json!({"login": login, "password": password}))).await
}

/// Logs in and returns (access, refresh).
async fn login_pair(hub: &TestHub, login: &str, password: &str) -> (String, String) {
    let body = try_login(hub, login, password).await.expect(201);
    (body["accessToken"].as_str().unwrap().to_string(), body["refreshToken"].as_str().unwrap().to_string())
}

/// The `payload` claim of a JWT, decoded without verifying it.
fn claims(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).expect("three JWT parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).expect("base64url payload");
    let v: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    assert_eq!(v.as_object().unwrap().len(), 1, "only the payload claim: {v}");
    v["payload"].clone()
}

/// Asserts the contract timestamp format `yyyy-MM-ddTHH:mm:ss.SSS` (UTC, no zone).
fn assert_ts(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("timestamp string expected, got {v}"));
    assert_eq!(s.len(), 23, "timestamp {s}");
    assert!(chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.3f").is_ok(), "timestamp {s}");
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array().expect("array").iter().map(|x| x["id"].as_i64().unwrap()).collect()
}

fn logins(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|x| x["login"].as_str().unwrap().to_string()).collect()
}

/// Creates a user as admin and returns its id.
async fn user(hub: &TestHub, body: Value) -> i64 {
    hub.post(&hub.admin, "/user", body).await.expect(201)["id"].as_i64().unwrap()
}

async fn get_user(hub: &TestHub, id: i64) -> Value {
    hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200)
}

async fn user_status(hub: &TestHub, id: i64) -> i64 {
    hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200)["status"].as_i64().unwrap()
}

async fn create_token(hub: &TestHub, token: &str, body: Value) -> Reply {
    hub.post(token, "/token/create", body).await
}

fn assert_cors(reply: &Reply) {
    for (name, value) in CORS {
        assert_eq!(
            reply.headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "header {name} (status {})",
            reply.status
        );
    }
}

// ---------------------------------------------------------------------------------------------
// info

#[tokio::test]
async fn info_endpoints_need_no_auth() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let host = hub.root.trim_start_matches("http://").to_string();

    let info = anon(&hub, Method::GET, "/info", None).await.expect(200);
    assert_eq!(keys(&info), ["apiVersion", "serverTimestamp", "webSocketServerUrl"]);
    assert_eq!(info["apiVersion"], "3.5.0");
    assert_ts(&info["serverTimestamp"]);
    assert_eq!(info["webSocketServerUrl"], format!("ws://{host}/api/websocket"));

    let secure = raw(&hub, Method::GET, "/info", &[("X-Forwarded-Proto", "https")], None).await.expect(200);
    assert_eq!(secure["webSocketServerUrl"], format!("wss://{host}/api/websocket"));
    let plain = raw(&hub, Method::GET, "/info", &[("X-Forwarded-Proto", "http")], None).await.expect(200);
    assert_eq!(plain["webSocketServerUrl"], format!("ws://{host}/api/websocket"));

    let cache = anon(&hub, Method::GET, "/info/cache", None).await.expect(200);
    assert_eq!(keys(&cache), ["cacheStats", "serverTimestamp"]);
    assert_ts(&cache["serverTimestamp"]);
    assert!(cache["cacheStats"].is_string());
    // Names this instance (cluster mode): a generated node id, as none is configured here.
    let node = cache["cacheStats"].as_str().unwrap().rsplit_once("; node ").map(|(_, id)| id.to_string());
    assert!(node.is_some_and(|id| id.len() > 9 && !id.contains(' ')), "{cache}");

    let cluster = anon(&hub, Method::GET, "/info/config/cluster", None).await.expect(200);
    assert_eq!(keys(&cluster), ["bootstrap.servers", "zookeeper.connect"]);
    for v in cluster.as_object().unwrap().values() {
        assert!(v.is_null() || v.is_string(), "{cluster}");
    }

    for path in ["/", ""] {
        let welcome = anon(&hub, Method::GET, path, None).await;
        assert_eq!(welcome.status.as_u16(), 200, "GET {path:?}: {}", welcome.text);
        let ct = welcome.headers["content-type"].to_str().unwrap();
        assert!(ct.starts_with("text/plain"), "content type {ct}");
        assert!(welcome.text.contains("DeviceHive RESTful API is now running"), "{}", welcome.text);
    }
    let welcome = anon(&hub, Method::GET, &format!("{}/dh/rest/", hub.root), None).await;
    assert!(welcome.text.contains("DeviceHive RESTful API is now running"), "{}", welcome.text);
    // A trailing slash is ignored elsewhere too (the query string is kept).
    let users = hub.get(&hub.admin, "/user/?login=dhadmin").await.expect(200);
    assert_eq!(logins(&users), [ADMIN_LOGIN]);
    hub.stop().await;
}

#[tokio::test]
async fn dh_rest_and_auth_rest_aliases() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let dh = format!("{}/dh/rest", hub.root);
    let auth = format!("{}/auth/rest", hub.root);

    for base in [&dh, &auth] {
        let info = anon(&hub, Method::GET, &format!("{base}/info"), None).await.expect(200);
        assert_eq!(info["apiVersion"], "3.5.0");
    }
    // Token routes under /auth/rest and /dh/rest.
    let pair = anon(
        &hub,
        Method::POST,
        &format!("{auth}/token"),
        Some(json!({"login": ADMIN_LOGIN, "password": ADMIN_PASSWORD})),
    )
    .await
    .expect(201);
    let access = pair["accessToken"].as_str().unwrap();
    let refreshed =
        anon(&hub, Method::POST, &format!("{auth}/token/refresh"), Some(json!({"refreshToken": pair["refreshToken"]})))
            .await
            .expect(201);
    assert!(refreshed["accessToken"].is_string());
    let created =
        hub.post(access, &format!("{auth}/token/create"), json!({"userId": 1, "actions": ["*"]})).await.expect(201);
    assert!(created["accessToken"].is_string());
    anon(&hub, Method::POST, &format!("{dh}/token"), Some(json!({"login": ADMIN_LOGIN, "password": ADMIN_PASSWORD})))
        .await
        .expect(201);

    // The whole API under /dh/rest, with Location headers under that prefix.
    let users = hub.get(access, &format!("{dh}/user")).await.expect(200);
    assert_eq!(logins(&users), [ADMIN_LOGIN]);
    let reply = hub.post(access, &format!("{dh}/network"), json!({"name": "via dh"})).await;
    let location = reply.headers.get("location").map(|v| v.to_str().unwrap().to_string());
    let id = reply.expect(201)["id"].as_i64().unwrap();
    assert_eq!(location.as_deref(), Some(format!("/dh/rest/network/{id}").as_str()));
    let net = hub.get(access, &format!("/network/{id}")).await.expect(200);
    assert_eq!(net["name"], "via dh");

    // /auth/rest serves only the token routes and /info.
    hub.get(access, &format!("{auth}/user")).await.expect_error(404, "HTTP 404 Not Found");
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// tokens

#[tokio::test]
async fn login_returns_both_tokens_with_the_contract_claims() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let reply = try_login(&hub, ADMIN_LOGIN, ADMIN_PASSWORD).await;
    let ct = reply.headers["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "{ct}");
    let body = reply.expect(201);
    assert_eq!(keys(&body), ["accessToken", "refreshToken"]);
    let before = now_ms();
    let access = claims(body["accessToken"].as_str().unwrap());
    let refresh = claims(body["refreshToken"].as_str().unwrap());
    assert_eq!(access["u"], 1);
    assert_eq!(access["a"], json!([0]));
    assert_eq!(access["n"], json!(["*"]));
    assert_eq!(access["dt"], json!(["*"]));
    assert_eq!(access["t"], 1);
    let e = access["e"].as_i64().unwrap();
    assert!((e - (before + ACCESS_LIFETIME_MS)).abs() < 60_000, "access e {e}");
    assert_eq!(refresh["t"], 0);
    assert_eq!(refresh["a"], json!([0]));
    let e = refresh["e"].as_i64().unwrap();
    assert!((e - (before + REFRESH_LIFETIME_MS)).abs() < 60_000, "refresh e {e}");

    // A client gets the client action set and its networks as strings.
    let a = hub.network("Net A").await;
    let b = hub.network("Net B").await;
    let (client_id, _) = hub.client_user("client1", &[b, a]).await;
    let (access, refresh) = login_pair(&hub, "client1", CLIENT_PASSWORD).await;
    let c = claims(&access);
    assert_eq!(c["u"], client_id);
    assert_eq!(c["a"], json!(CLIENT_ACTIONS));
    assert_eq!(c["n"], json!([a.to_string(), b.to_string()]));
    assert_eq!(c["dt"], json!(["*"]));
    assert_eq!(c["t"], 1);
    let r = claims(&refresh);
    assert_eq!((&r["a"], &r["n"], &r["dt"], &r["t"]), (&c["a"], &c["n"], &c["dt"], &json!(0)));

    // A client without networks gets n = []; with restricted device types, their ids.
    let id = user(&hub, json!({"login": "client2", "password": CLIENT_PASSWORD, "role": 1})).await;
    hub.delete(&hub.admin, &format!("/user/{id}/devicetype/all")).await.expect(204);
    hub.put(&hub.admin, &format!("/user/{id}/devicetype/3"), json!({})).await.expect(204);
    let (access, _) = login_pair(&hub, "client2", CLIENT_PASSWORD).await;
    let c = claims(&access);
    assert_eq!(c["n"], json!([]));
    assert_eq!(c["dt"], json!(["3"]));

    // The login sets lastLogin.
    let me = hub.get(&access, "/user/current").await.expect(200);
    assert_ts(&me["lastLogin"]);
    hub.stop().await;
}

#[tokio::test]
async fn login_errors() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let blank = "Invalid or empty authorization request parameters";
    try_login(&hub, "   ", "whatever").await.expect_error(400, blank);
    try_login(&hub, ADMIN_LOGIN, "").await.expect_error(400, blank);
    anon(&hub, Method::POST, "/token", Some(json!({}))).await.expect_error(400, blank);
    anon(&hub, Method::POST, "/token", Some(json!({"login": ADMIN_LOGIN}))).await.expect_error(400, blank);
    try_login(&hub, "nobody", "some-pass").await.expect_error(401, "Invalid credentials");
    try_login(&hub, ADMIN_LOGIN, "wrong-pass").await.expect_error(401, "Invalid credentials");
    // The login is trimmed.
    try_login(&hub, &format!(" {ADMIN_LOGIN} "), ADMIN_PASSWORD).await.expect(201);
    hub.stop().await;
}

#[tokio::test]
async fn ten_wrong_passwords_lock_the_user_and_kill_its_tokens() {
    skip_unless_backend!();
    // The lockout counter itself, without the throttle's delays or an expiring lock.
    let hub = TestHub::start_with(|s| {
        s.auth.login_throttle_base_ms = 0;
        s.auth.lockout_secs = 0;
    })
    .await;
    let (id, _) = hub.client_user("victim", &[]).await;
    let (access, refresh) = login_pair(&hub, "victim", CLIENT_PASSWORD).await;

    // A successful login resets the counter.
    for _ in 0..9 {
        try_login(&hub, "victim", "wrong-pass").await.expect_error(401, "Invalid credentials");
    }
    assert_eq!(user_status(&hub, id).await, 0);
    try_login(&hub, "victim", CLIENT_PASSWORD).await.expect(201);
    for _ in 0..9 {
        try_login(&hub, "victim", "wrong-pass").await.expect_error(401, "Invalid credentials");
    }
    assert_eq!(user_status(&hub, id).await, 0);
    hub.get(&access, "/user/current").await.expect(200);

    // The tenth consecutive failure locks the account.
    try_login(&hub, "victim", "wrong-pass").await.expect_error(401, "Invalid credentials");
    assert_eq!(user_status(&hub, id).await, 1);
    try_login(&hub, "victim", CLIENT_PASSWORD).await.expect_error(401, "Invalid credentials");
    try_login(&hub, "victim", "wrong-pass").await.expect_error(401, "Invalid credentials");
    hub.get(&access, "/user/current").await.expect_error(401, "Unauthorized");
    hub.get(&access, "/network").await.expect_error(401, "Unauthorized");
    let r = anon(&hub, Method::POST, "/token/refresh", Some(json!({"refreshToken": refresh}))).await;
    r.expect_error(401, "Unauthorized");
    // Token create for a locked user is refused.
    create_token(&hub, &hub.admin, json!({"userId": id, "actions": ["*"]}))
        .await
        .expect_error(403, "User is locked or disabled");

    // Only an admin can unlock; then everything works again.
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"status": 0})).await.expect(204);
    hub.get(&access, "/user/current").await.expect(200);
    try_login(&hub, "victim", CLIENT_PASSWORD).await.expect(201);

    // A disabled user cannot log in either.
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"status": 2})).await.expect(204);
    try_login(&hub, "victim", CLIENT_PASSWORD).await.expect_error(401, "Invalid credentials");
    hub.get(&access, "/user/current").await.expect_error(401, "Unauthorized");
    hub.stop().await;
}

#[tokio::test]
async fn max_login_attempts_comes_from_configuration() {
    skip_unless_backend!();
    // The lockout counter itself, without the throttle's delays or an expiring lock.
    let hub = TestHub::start_with(|s| {
        s.auth.login_throttle_base_ms = 0;
        s.auth.lockout_secs = 0;
    })
    .await;
    let (id, _) = hub.client_user("fragile", &[]).await;
    hub.put(&hub.admin, "/configuration/user.login.maxAttempts", json!({"value": "3"})).await.expect(200);
    for _ in 0..2 {
        try_login(&hub, "fragile", "wrong-pass").await.expect_error(401, "Invalid credentials");
    }
    try_login(&hub, "fragile", CLIENT_PASSWORD).await.expect(201);
    for _ in 0..3 {
        try_login(&hub, "fragile", "wrong-pass").await.expect_error(401, "Invalid credentials");
    }
    assert_eq!(user_status(&hub, id).await, 1);
    try_login(&hub, "fragile", CLIENT_PASSWORD).await.expect_error(401, "Invalid credentials");
    // Unlocking also clears the failure counter.
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"status": 0})).await.expect(204);
    for _ in 0..2 {
        try_login(&hub, "fragile", "wrong-pass").await.expect_error(401, "Invalid credentials");
    }
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"status": 0})).await.expect(204);
    for _ in 0..2 {
        try_login(&hub, "fragile", "wrong-pass").await.expect_error(401, "Invalid credentials");
    }
    assert_eq!(user_status(&hub, id).await, 0);
    try_login(&hub, "fragile", "wrong-pass").await.expect_error(401, "Invalid credentials");
    assert_eq!(user_status(&hub, id).await, 1);
    hub.stop().await;
}

#[tokio::test]
async fn last_login_is_throttled_by_configuration() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let id = user(&hub, json!({"login": "stamp", "password": CLIENT_PASSWORD, "role": 1})).await;
    assert_eq!(get_user(&hub, id).await["lastLogin"], Value::Null);

    hub.put(&hub.admin, "/configuration/user.login.lastTimeout", json!({"value": "3600000"})).await.expect(200);
    let (_, refresh) = login_pair(&hub, "stamp", CLIENT_PASSWORD).await;
    let first = get_user(&hub, id).await["lastLogin"].clone();
    assert_ts(&first);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    login_pair(&hub, "stamp", CLIENT_PASSWORD).await;
    anon(&hub, Method::POST, "/token/refresh", Some(json!({"refreshToken": refresh}))).await.expect(201);
    assert_eq!(get_user(&hub, id).await["lastLogin"], first, "within the throttle window");

    hub.put(&hub.admin, "/configuration/user.login.lastTimeout", json!({"value": "0"})).await.expect(200);
    login_pair(&hub, "stamp", CLIENT_PASSWORD).await;
    let second = get_user(&hub, id).await["lastLogin"].clone();
    assert_ts(&second);
    assert!(second.as_str().unwrap() > first.as_str().unwrap(), "{second} after {first}");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    anon(&hub, Method::POST, "/token/refresh", Some(json!({"refreshToken": refresh}))).await.expect(201);
    let third = get_user(&hub, id).await["lastLogin"].clone();
    assert!(third.as_str().unwrap() > second.as_str().unwrap(), "refresh sets lastLogin: {third}");
    hub.stop().await;
}

#[tokio::test]
async fn refresh_tokens() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let n = hub.network("Refresh Net").await;
    let (_, _) = hub.client_user("refresher", &[n]).await;
    let (access, refresh) = login_pair(&hub, "refresher", CLIENT_PASSWORD).await;

    let body = anon(&hub, Method::POST, "/token/refresh", Some(json!({"refreshToken": refresh}))).await.expect(201);
    assert_eq!(keys(&body), ["accessToken"]);
    let fresh = body["accessToken"].as_str().unwrap();
    let (old, new) = (claims(&access), claims(fresh));
    assert_eq!((&new["u"], &new["a"], &new["n"], &new["dt"]), (&old["u"], &old["a"], &old["n"], &old["dt"]));
    assert_eq!(new["t"], 1);
    let me = hub.get(fresh, "/user/current").await.expect(200);
    assert_eq!(me["login"], "refresher");
    assert_eq!(ids(&hub.get(fresh, "/network").await.expect(200)), [n]);

    // An access token is not a refresh token, and vice versa.
    anon(&hub, Method::POST, "/token/refresh", Some(json!({"refreshToken": access})))
        .await
        .expect_error(401, "Invalid token type");
    hub.get(&refresh, "/user/current").await.expect_error(401, "Unauthorized");
    create_token(&hub, &refresh, json!({"userId": 1})).await.expect_error(401, "Unauthorized");

    // Garbage → 401 with the JSON error body; a missing token → 400.
    anon(&hub, Method::POST, "/token/refresh", Some(json!({"refreshToken": "garbage.token.here"})))
        .await
        .expect_error(401, "Unauthorized");
    anon(&hub, Method::POST, "/token/refresh", Some(json!({}))).await.expect_error(400, "Invalid request parameters");

    // The user of the refresh token is gone → 401 (with the JSON error body).
    let gone = user(&hub, json!({"login": "ghost", "password": CLIENT_PASSWORD, "role": 1})).await;
    let (_, ghost_refresh) = login_pair(&hub, "ghost", CLIENT_PASSWORD).await;
    hub.delete(&hub.admin, &format!("/user/{gone}")).await.expect(204);
    let r = anon(&hub, Method::POST, "/token/refresh", Some(json!({"refreshToken": ghost_refresh}))).await;
    r.expect_error(401, "Unauthorized");

    // An expired refresh token.
    let past = now_ms() - 60_000;
    let pair =
        create_token(&hub, &hub.admin, json!({"userId": 1, "actions": ["*"], "expiration": past})).await.expect(201);
    assert_eq!(claims(pair["refreshToken"].as_str().unwrap())["e"], past);
    anon(&hub, Method::POST, "/token/refresh", Some(json!({"refreshToken": pair["refreshToken"]})))
        .await
        .expect_error(401, "Token has expired");
    hub.stop().await;
}

#[tokio::test]
async fn expired_and_badly_signed_tokens_are_refused() {
    skip_unless_backend!();
    const SECRET: &str = "a-known-test-secret-0123456789";
    let hub = TestHub::start_with(|s| s.auth.jwt_secret = SECRET.into()).await;
    let past = now_ms() - 60_000;
    for expiration in [json!(past), json!(hivehub::time::format_ms(past)), json!("2001-01-01")] {
        let pair = create_token(
            &hub,
            &hub.admin,
            json!({"userId": 1, "actions": ["*"], "networkIds": ["*"], "deviceTypeIds": ["*"], "expiration": expiration}),
        )
        .await
        .expect(201);
        let token = pair["accessToken"].as_str().unwrap();
        hub.get(token, "/user").await.expect_error(401, "Token expired");
    }
    create_token(&hub, &hub.admin, json!({"userId": 1, "expiration": "yesterday"}))
        .await
        .expect_error(400, "Unparseable timestamp");

    // Tampered signature, or a token signed with another secret.
    let (head, sig) = hub.admin.rsplit_once('.').unwrap();
    let first = if sig.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{head}.{first}{}", &sig[1..]);
    hub.get(&tampered, "/user").await.expect_error(401, "Unauthorized");
    let payload = TokenPayload {
        u: Some(1),
        a: Some(vec![json!(0)]),
        n: Some(vec![json!("*")]),
        dt: Some(vec![json!("*")]),
        e: Some(now_ms() + 600_000),
        t: Some(1),
        tpc: None,
    };
    let forged = JwtKeys::from_secret("c29tZSBvdGhlciBzZWNyZXQ").sign(&payload);
    hub.get(&forged, "/user").await.expect_error(401, "Unauthorized");

    // The configured secret is the one the hub signs with.
    let keys_ = JwtKeys::from_secret(SECRET);
    let users = hub.get(&keys_.sign(&payload), "/user").await.expect(200);
    assert_eq!(logins(&users), [ADMIN_LOGIN]);
    // Well signed but invalid: unknown action id, missing type, missing expiry, unknown user.
    let bad = [
        TokenPayload { a: Some(vec![json!(99)]), ..payload.clone() },
        TokenPayload { t: None, ..payload.clone() },
        TokenPayload { e: None, ..payload.clone() },
        TokenPayload { u: Some(4242), ..payload.clone() },
    ];
    for p in bad {
        hub.get(&keys_.sign(&p), "/user").await.expect_error(401, "Unauthorized");
    }
    hub.stop().await;
}

#[tokio::test]
async fn token_create_as_admin() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let client = user(&hub, json!({"login": "target", "password": CLIENT_PASSWORD, "role": 1})).await;

    let pair = create_token(
        &hub,
        &hub.admin,
        json!({"userId": client, "actions": ["GetNetwork", "getdevice", "NoSuchAction", 5], "networkIds": [1, "7"], "deviceTypeIds": ["2"]}),
    )
    .await;
    assert!(pair.headers.get("location").is_none());
    let pair = pair.expect(201);
    assert_eq!(keys(&pair), ["accessToken", "refreshToken"]);
    let c = claims(pair["accessToken"].as_str().unwrap());
    assert_eq!(c["u"], client);
    assert_eq!(c["a"], json!([2, 3, 5]));
    assert_eq!(c["n"], json!(["1", "7"]));
    assert_eq!(c["dt"], json!(["2"]));
    assert_eq!(c["t"], 1);
    assert_eq!(claims(pair["refreshToken"].as_str().unwrap())["t"], 0);

    // `*` is 0; integers are taken as ids; [] stays [] (the client set).
    let c = claims(
        create_token(&hub, &hub.admin, json!({"userId": 1, "actions": ["*"]})).await.expect(201)["accessToken"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(c["a"], json!([0]));
    let c = claims(
        create_token(&hub, &hub.admin, json!({"userId": 1, "actions": []})).await.expect(201)["accessToken"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(c["a"], json!([]));

    // Actions omitted → a=[1]: the token can do nothing.
    let pair = create_token(&hub, &hub.admin, json!({"userId": 1})).await.expect(201);
    let token = pair["accessToken"].as_str().unwrap();
    assert_eq!(claims(token)["a"], json!([1]));
    hub.get(token, "/device").await.expect_error(403, "Access is denied");
    hub.get(token, "/user/current").await.expect_error(403, "Access is denied");

    // Expirations.
    let exp = now_ms() + 3_600_000;
    let rexp = now_ms() + 7_200_000;
    let pair = create_token(
        &hub,
        &hub.admin,
        json!({"userId": 1, "actions": ["*"], "expiration": exp, "refreshExpiration": rexp}),
    )
    .await
    .expect(201);
    assert_eq!(claims(pair["accessToken"].as_str().unwrap())["e"], exp);
    assert_eq!(claims(pair["refreshToken"].as_str().unwrap())["e"], rexp);
    let pair =
        create_token(&hub, &hub.admin, json!({"userId": 1, "actions": ["*"], "expiration": exp})).await.expect(201);
    assert_eq!(claims(pair["refreshToken"].as_str().unwrap())["e"], exp);

    // Errors.
    create_token(&hub, &hub.admin, json!({"actions": ["*"]})).await.expect_error(400, "Invalid request parameters");
    create_token(&hub, &hub.admin, json!({"userId": 1, "actions": [true]}))
        .await
        .expect_error(400, "Actions list should contain only Strings or Integers");
    create_token(&hub, &hub.admin, json!({"userId": 1, "actions": "GetDevice"}))
        .await
        .expect_error(400, "Actions list should contain only Strings or Integers");
    create_token(&hub, &hub.admin, json!({"userId": 1, "actions": ["*"], "networkIds": "1"}))
        .await
        .expect_error(400, "Invalid request parameters");
    create_token(&hub, &hub.admin, json!({"userId": 1, "actions": ["*"], "deviceTypeIds": [{"id": 1}]}))
        .await
        .expect_error(400, "Invalid request parameters");
    create_token(&hub, &hub.admin, json!({"userId": "one", "actions": ["*"]}))
        .await
        .expect_error(400, "Invalid request parameters");
    create_token(&hub, &hub.admin, json!({"userId": 999, "actions": ["*"]}))
        .await
        .expect_error(404, "User with id = 999 not found");
    anon(&hub, Method::POST, "/token/create", Some(json!({"userId": 1}))).await.expect_error(401, "Unauthorized");
    hub.stop().await;
}

#[tokio::test]
async fn token_create_is_restricted_for_clients_by_default() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.network("Own Net").await;
    let b = hub.network("Other Net").await;
    let (me, token) = hub.client_user("minter", &[a]).await;
    let other = user(&hub, json!({"login": "bystander", "password": CLIENT_PASSWORD, "role": 1})).await;

    // Another user, or more than the caller has, is refused.
    for body in [
        json!({"userId": 1, "actions": ["*"], "networkIds": ["*"]}),
        json!({"userId": 1, "actions": ["GetNetwork"]}),
        json!({"userId": other, "actions": ["GetNetwork"]}),
        json!({"userId": me, "actions": ["*"]}),
        json!({"userId": me, "actions": ["ManageUser"]}),
        json!({"userId": me, "actions": [12]}),
        json!({"userId": me, "actions": ["GetNetwork"], "networkIds": [b]}),
        json!({"userId": me, "actions": ["GetNetwork"], "networkIds": ["*"]}),
        json!({"userId": me, "actions": ["GetNetwork"], "expiration": now_ms() + REFRESH_LIFETIME_MS + 86_400_000}),
        json!({"userId": me, "actions": ["GetNetwork"], "refreshExpiration": now_ms() + 100 * REFRESH_LIFETIME_MS}),
    ] {
        let r = create_token(&hub, &token, body.clone()).await;
        assert_eq!(r.status.as_u16(), 403, "{body}: {}", r.text);
        assert_eq!(r.body, json!({"error": 403, "message": "Access is denied"}), "{body}");
    }

    // A subset of its own rights, for itself, is fine — and limited to that subset.
    let pair = create_token(
        &hub,
        &token,
        json!({"userId": me, "actions": ["GetNetwork", "GetDevice", "ManageToken"], "networkIds": [a]}),
    )
    .await
    .expect(201);
    let limited = pair["accessToken"].as_str().unwrap();
    assert_eq!(claims(limited)["a"], json!([2, 3, 15]));
    assert_eq!(ids(&hub.get(limited, "/network").await.expect(200)), [a]);
    hub.get(limited, "/user/current").await.expect_error(403, "Access is denied");
    // The full client set (`[]`) is within a client's own rights, but not within a limited token's.
    create_token(&hub, &token, json!({"userId": me, "actions": []})).await.expect(201);
    create_token(&hub, limited, json!({"userId": me, "actions": []})).await.expect_error(403, "Access is denied");
    hub.stop().await;
}

#[tokio::test]
async fn a_limited_admin_token_cannot_mint_a_stronger_one() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let pair = create_token(
        &hub,
        &hub.admin,
        json!({"userId": 1, "actions": ["ManageToken", "GetNetwork"], "networkIds": ["1"]}),
    )
    .await
    .expect(201);
    let limited = pair["accessToken"].as_str().unwrap();
    hub.get(limited, "/user").await.expect_error(403, "Access is denied");
    for body in [
        json!({"userId": 1, "actions": ["*"], "networkIds": ["*"], "deviceTypeIds": ["*"]}),
        json!({"userId": 1, "actions": ["ManageUser"]}),
        json!({"userId": 1, "actions": ["GetNetwork"], "networkIds": ["*"]}),
    ] {
        let r = create_token(&hub, limited, body.clone()).await;
        assert_eq!(r.body, json!({"error": 403, "message": "Access is denied"}), "{body}: {}", r.text);
    }
    create_token(&hub, limited, json!({"userId": 1, "actions": ["GetNetwork"], "networkIds": ["1"]})).await.expect(201);
    // A full admin token still mints anything for anyone.
    let client = user(&hub, json!({"login": "anyone", "password": CLIENT_PASSWORD, "role": 1})).await;
    create_token(&hub, &hub.admin, json!({"userId": client, "actions": ["*"], "networkIds": ["*"]})).await.expect(201);
    hub.stop().await;
}

#[tokio::test]
async fn token_create_reference_behaviour_when_unrestricted() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.auth.restrict_token_create = false).await;
    // An administrator holding a limited token with ManageToken may mint any token (the reference)...
    let limited = create_token(&hub, &hub.admin, json!({"userId": 1, "actions": ["ManageToken"]})).await.expect(201);
    let limited = limited["accessToken"].as_str().unwrap();
    let pair = create_token(
        &hub,
        limited,
        json!({"userId": 1, "actions": ["*"], "networkIds": ["*"], "deviceTypeIds": ["*"]}),
    )
    .await
    .expect(201);
    let minted = pair["accessToken"].as_str().unwrap();
    assert_eq!(claims(minted)["u"], 1);
    hub.get(minted, "/user").await.expect(200);
    // ...but a client-role user never mints beyond its own rights, whatever the setting.
    let (_, token) = hub.client_user("escalator", &[]).await;
    create_token(&hub, &token, json!({"userId": 1, "actions": ["*"], "networkIds": ["*"], "deviceTypeIds": ["*"]}))
        .await
        .expect_error(403, "Access is denied");
    // Without ManageToken, still nothing.
    let pair = create_token(&hub, &hub.admin, json!({"userId": 1, "actions": ["GetNetwork"]})).await.expect(201);
    create_token(&hub, pair["accessToken"].as_str().unwrap(), json!({"userId": 1, "actions": ["*"]}))
        .await
        .expect_error(403, "Access is denied");
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// configuration

#[tokio::test]
async fn configuration_get_put_delete() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let r = hub.get(&hub.admin, "/configuration/test.key").await;
    assert_eq!(r.status.as_u16(), 404);
    assert_eq!(r.text, "", "404 with an empty body");

    let v1 = hub.put(&hub.admin, "/configuration/test.key", json!({"value": "v1"})).await.expect(200);
    assert_eq!(keys(&v1), ["entityVersion", "name", "value"]);
    assert_eq!((&v1["name"], &v1["value"]), (&json!("test.key"), &json!("v1")));
    assert_eq!(hub.get(&hub.admin, "/configuration/test.key").await.expect(200), v1);
    let v2 = hub.put(&hub.admin, "/configuration/test.key", json!({"value": "v2"})).await.expect(200);
    assert_eq!(v2["value"], "v2");
    assert!(v2["entityVersion"].as_i64().unwrap() > v1["entityVersion"].as_i64().unwrap());
    assert_eq!(hub.get(&hub.admin, "/configuration/test.key").await.expect(200)["value"], "v2");

    hub.delete(&hub.admin, "/configuration/test.key").await.expect(204);
    let r = hub.get(&hub.admin, "/configuration/test.key").await;
    assert_eq!((r.status.as_u16(), r.text.as_str()), (404, ""));
    hub.delete(&hub.admin, "/configuration/test.key")
        .await
        .expect_error(404, "Requested config with name = test.key not found in the database");

    // Name length 1..32, value required and at most 128.
    let long = "n".repeat(33);
    hub.put(&hub.admin, &format!("/configuration/{long}"), json!({"value": "x"}))
        .await
        .expect_error(400, "Name cannot be empty. The name's length should not be more than 32 symbols.");
    hub.put(&hub.admin, &format!("/configuration/{}", "n".repeat(32)), json!({"value": "x"})).await.expect(200);
    for body in [json!({}), json!({"value": ""}), json!({"value": "v".repeat(129)})] {
        let r = hub.put(&hub.admin, "/configuration/other.key", body).await;
        assert_eq!(r.status.as_u16(), 400, "{}", r.text);
    }
    assert_eq!(hub.get(&hub.admin, "/configuration/other.key").await.status.as_u16(), 404);

    // Seeded values are readable by an admin; the JWT secret is not, by anybody (an operator's job).
    let operator_only = "Configuration entry jwt.secret is managed by the operator, not the API";
    hub.get(&hub.admin, "/configuration/jwt.secret").await.expect_error(403, operator_only);
    hub.put(&hub.admin, "/configuration/jwt.secret", json!({"value": "mine"})).await.expect_error(403, operator_only);
    hub.delete(&hub.admin, "/configuration/jwt.secret").await.expect_error(403, operator_only);
    let timeout = hub.get(&hub.admin, "/configuration/user.login.lastTimeout").await.expect(200);
    assert_eq!(timeout["value"], "1000");

    // Clients may not touch configuration; anonymous callers are 401.
    let (_, client) = hub.client_user("reader", &[]).await;
    hub.get(&client, "/configuration/jwt.secret").await.expect_error(403, "Access is denied");
    hub.put(&client, "/configuration/jwt.secret", json!({"value": "mine"})).await.expect_error(403, "Access is denied");
    hub.delete(&client, "/configuration/jwt.secret").await.expect_error(403, "Access is denied");
    for body in [json!({"value": {"x": 1}}), json!([1]), json!({"value": ["a"]})] {
        hub.put(&client, "/configuration/jwt.secret", body).await.expect_error(403, "Access is denied");
    }
    anon(&hub, Method::GET, "/configuration/jwt.secret", None).await.expect_error(401, "Unauthorized");
    // The admin's token still verifies: the secret was not changed by any of the attempts.
    hub.get(&hub.admin, "/configuration/user.login.lastTimeout").await.expect(200);
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// users

#[tokio::test]
async fn user_list_and_count_filters_and_sorting() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let alpha = user(&hub, json!({"login": "alpha1", "password": CLIENT_PASSWORD, "role": 1})).await;
    let beta = user(&hub, json!({"login": "beta22", "password": CLIENT_PASSWORD, "role": 0})).await;
    let gamma = user(&hub, json!({"login": "gamma3", "password": CLIENT_PASSWORD, "role": 1, "status": 2})).await;

    let all = hub.get(&hub.admin, "/user").await.expect(200);
    assert_eq!(ids(&all), [1, alpha, beta, gamma]);
    for u in all.as_array().unwrap() {
        assert_eq!(
            keys(u),
            ["allDeviceTypesAvailable", "data", "id", "introReviewed", "lastLogin", "login", "role", "status"]
        );
    }
    assert_eq!(
        all[1],
        json!({"id": alpha, "login": "alpha1", "role": 1, "status": 0, "lastLogin": null, "data": null,
               "introReviewed": false, "allDeviceTypesAvailable": true})
    );

    let cases: [(&str, &[&str]); 12] = [
        ("login=alpha1", &["alpha1"]),
        ("login=alpha", &[]),
        ("loginPattern=%25a%25", &["dhadmin", "alpha1", "beta22", "gamma3"]),
        ("loginPattern=%25a_", &["alpha1", "gamma3"]),
        ("loginPattern=%253&login=alpha1", &["gamma3"]),
        ("role=1", &["alpha1", "gamma3"]),
        ("role=0", &["dhadmin", "beta22"]),
        ("status=2", &["gamma3"]),
        ("role=1&status=0", &["alpha1"]),
        ("login=&role=", &["dhadmin", "alpha1", "beta22", "gamma3"]),
        ("sortField=login&sortOrder=desc", &["gamma3", "dhadmin", "beta22", "alpha1"]),
        ("sortField=LOGIN&sortOrder=Asc&take=2&skip=1", &["beta22", "dhadmin"]),
    ];
    for (query, expected) in cases {
        let list = hub.get(&hub.admin, &format!("/user?{query}")).await.expect(200);
        assert_eq!(logins(&list), expected, "GET /user?{query}");
        let count = hub.get(&hub.admin, &format!("/user/count?{query}")).await.expect(200);
        let n = if query.contains("take=") { 4 } else { expected.len() };
        assert_eq!(count, json!({"count": n}), "GET /user/count?{query}");
    }
    let list = hub.get(&hub.admin, "/user?sortField=id&sortOrder=DESC").await.expect(200);
    assert_eq!(ids(&list), [gamma, beta, alpha, 1]);
    let list = hub.get(&hub.admin, "/user?take=1").await.expect(200);
    assert_eq!(ids(&list), [1]);

    hub.get(&hub.admin, "/user?sortField=role").await.expect_error(400, "Invalid request parameters");
    hub.get(&hub.admin, "/user?sortOrder=x").await.expect_error(400, "Unparseable sort order : x");
    hub.get(&hub.admin, "/user?role=admin").await.expect_error(400, "Invalid request parameters");
    hub.get(&hub.admin, "/user?take=-1").await.expect_error(400, "Invalid request parameters");

    let (_, client) = hub.client_user("lister", &[]).await;
    hub.get(&client, "/user").await.expect_error(403, "Access is denied");
    hub.get(&client, "/user/count").await.expect_error(403, "Access is denied");
    anon(&hub, Method::GET, "/user", None).await.expect_error(401, "Unauthorized");
    hub.stop().await;
}

#[tokio::test]
async fn user_get_and_current_use_the_published_view() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.network("Pub A").await;
    hub.put(&hub.admin, &format!("/network/{a}"), json!({"description": "first"})).await.expect(204);
    let b = hub.network("Pub B").await;
    let (id, client) = hub.client_user("published", &[b, a]).await;

    let u = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    let last_login = u["lastLogin"].clone();
    assert_ts(&last_login);
    assert_eq!(
        u,
        json!({"id": id, "login": "published", "role": 1, "status": 0, "lastLogin": last_login, "data": null,
               "introReviewed": false, "allDeviceTypesAvailable": true,
               "networks": [{"id": a, "name": "Pub A", "description": "first"},
                            {"id": b, "name": "Pub B", "description": null}]})
    );
    assert!(!u.to_string().to_lowercase().contains("password"));
    assert_eq!(hub.get(&client, "/user/current").await.expect(200), u);

    let admin = hub.get(&hub.admin, "/user/1").await.expect(200);
    assert_eq!(admin["login"], ADMIN_LOGIN);
    assert_eq!(admin["role"], 0);
    assert_eq!(
        admin["networks"],
        json!([{"id": 1, "name": "Sample Network", "description": "A DeviceHive Sample Network"}])
    );
    assert_eq!(hub.get(&hub.admin, "/user/current").await.expect(200), admin);

    hub.get(&hub.admin, "/user/999").await.expect_error(404, "User with id = 999 not found");
    hub.get(&hub.admin, "/user/abc").await.expect_error(404, "HTTP 404 Not Found");
    // Clients read themselves through /user/current only.
    hub.get(&client, &format!("/user/{id}")).await.expect_error(403, "Access is denied");
    anon(&hub, Method::GET, "/user/current", None).await.expect_error(401, "Unauthorized");

    // A deleted user's tokens stop working.
    hub.delete(&hub.admin, &format!("/user/{id}")).await.expect(204);
    hub.get(&client, "/user/current").await.expect_error(401, "Unauthorized");
    hub.stop().await;
}

#[tokio::test]
async fn client_updates_itself_but_not_its_login_role_or_status() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let (_, client) = hub.client_user("selfie", &[]).await;

    hub.put(&client, "/user/current", json!({"data": {"theme": "dark"}, "introReviewed": true})).await.expect(204);
    let me = hub.get(&client, "/user/current").await.expect(200);
    assert_eq!((&me["data"], &me["introReviewed"]), (&json!({"theme": "dark"}), &json!(true)));
    // `data` is replaced: an update without it clears it; other fields are partial.
    hub.put(&client, "/user/current", json!({"introReviewed": false})).await.expect(204);
    let me = hub.get(&client, "/user/current").await.expect(200);
    assert_eq!((&me["data"], &me["introReviewed"]), (&Value::Null, &json!(false)));

    for body in [
        json!({"login": "renamed"}),
        json!({"role": 0}),
        json!({"role": 1}),
        json!({"status": 0}),
        json!({"status": 1, "data": {"x": 1}}),
    ] {
        let r = hub.put(&client, "/user/current", body.clone()).await;
        assert_eq!(
            r.body,
            json!({"error": 403, "message": "Admin permissions required for this action"}),
            "{body}: {}",
            r.text
        );
    }
    let me = hub.get(&client, "/user/current").await.expect(200);
    assert_eq!(
        (&me["login"], &me["role"], &me["status"], &me["data"]),
        (&json!("selfie"), &json!(1), &json!(0), &Value::Null)
    );

    hub.put(&client, "/user/current", json!({"data": "text"}))
        .await
        .expect_error(400, "'parameters' must be JSON Object!");
    hub.put(&client, "/user/current", json!({"password": "short"}))
        .await
        .expect_error(400, "Password can contain only from 6 to 128 symbols!");
    // A password change: a wrong oldPassword is refused, a right one (or none) accepted.
    hub.put(&client, "/user/current", json!({"password": "brand-new-pass", "oldPassword": "whatever"}))
        .await
        .expect_error(403, "The old password is incorrect");
    hub.put(&client, "/user/current", json!({"password": "brand-new-pass", "oldPassword": CLIENT_PASSWORD}))
        .await
        .expect(204);
    try_login(&hub, "selfie", CLIENT_PASSWORD).await.expect_error(401, "Invalid credentials");
    try_login(&hub, "selfie", "brand-new-pass").await.expect(201);

    // An admin may change its own login through /user/current.
    hub.put(&hub.admin, "/user/current", json!({"login": "superuser"})).await.expect(204);
    try_login(&hub, "superuser", ADMIN_PASSWORD).await.expect(201);
    hub.stop().await;
}

#[tokio::test]
async fn user_insert_view_location_and_validation() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let r = hub
        .post(
            &hub.admin,
            "/user",
            json!({"login": "  fresh.user@x-y  ", "password": "secret-pass", "role": 1, "status": 0,
                   "data": {"a": 1}, "introReviewed": true, "allDeviceTypesAvailable": false, "id": 77}),
        )
        .await;
    let location = r.headers.get("location").map(|v| v.to_str().unwrap().to_string());
    let body = r.expect(201);
    let id = body["id"].as_i64().unwrap();
    assert_ne!(id, 77);
    assert_eq!(
        body,
        json!({"id": id, "lastLogin": null, "data": {"a": 1}, "introReviewed": true, "allDeviceTypesAvailable": false})
    );
    assert_eq!(location.as_deref(), Some(format!("/api/rest/user/{id}").as_str()));
    let u = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    assert_eq!((&u["login"], &u["role"], &u["status"]), (&json!("fresh.user@x-y"), &json!(1), &json!(0)));
    try_login(&hub, "fresh.user@x-y", "secret-pass").await.expect(201);

    // Defaults.
    let body = hub
        .post(&hub.admin, "/user", json!({"login": "defaults", "password": "secret-pass", "role": 0}))
        .await
        .expect(201);
    assert_eq!(
        body,
        json!({"id": body["id"], "lastLogin": null, "data": null, "introReviewed": false, "allDeviceTypesAvailable": true})
    );
    let u = hub.get(&hub.admin, &format!("/user/{}", body["id"])).await.expect(200);
    assert_eq!((&u["status"], &u["role"]), (&json!(0), &json!(0)));

    let role = "User role is invalid or empty";
    let password = "Password can contain only from 6 to 128 symbols!";
    let login_len = "Field cannot be empty. The length of login should be from 3 to 128 symbols.";
    let login_chars = "Login can contain only lowercase or uppercase letters, numbers, and some special symbols (_@.)";
    let cases = [
        (json!({"login": "nobody1", "password": "secret-pass"}), 400, role),
        (json!({"login": "nobody1", "password": "secret-pass", "role": 2}), 400, role),
        (json!({"login": "nobody1", "password": "secret-pass", "role": -1}), 400, role),
        (json!({"login": "nobody1", "password": "secret-pass", "role": "admin"}), 400, role),
        (json!({"login": "nobody1", "role": 1}), 400, password),
        (json!({"login": "nobody1", "password": "12345", "role": 1}), 400, password),
        (json!({"login": "nobody1", "password": "p".repeat(129), "role": 1}), 400, password),
        (json!({"password": "secret-pass", "role": 1}), 400, login_len),
        (json!({"login": "ab", "password": "secret-pass", "role": 1}), 400, login_len),
        (json!({"login": "   ab  ", "password": "secret-pass", "role": 1}), 400, login_len),
        (json!({"login": "l".repeat(129), "password": "secret-pass", "role": 1}), 400, login_len),
        (json!({"login": "bad login", "password": "secret-pass", "role": 1}), 400, login_chars),
        (json!({"login": "bad!login", "password": "secret-pass", "role": 1}), 400, login_chars),
        (json!({"login": "jörg", "password": "secret-pass", "role": 1}), 400, login_chars),
        (
            json!({"login": "nobody1", "password": "secret-pass", "role": 1, "status": 3}),
            400,
            "Invalid request parameters",
        ),
        (
            json!({"login": "nobody1", "password": "secret-pass", "role": 1, "data": "x"}),
            400,
            "'parameters' must be JSON Object!",
        ),
        (
            json!({"login": "nobody1", "password": "secret-pass", "role": 1, "data": [1]}),
            400,
            "'parameters' must be JSON Object!",
        ),
        (
            json!({"login": "defaults", "password": "secret-pass", "role": 1}),
            403,
            "User with such login already exists. Please, select another one",
        ),
        (
            json!({"login": " defaults ", "password": "secret-pass", "role": 1}),
            403,
            "User with such login already exists. Please, select another one",
        ),
    ];
    for (body, status, message) in cases {
        let r = hub.post(&hub.admin, "/user", body.clone()).await;
        assert_eq!(r.body, json!({"error": status, "message": message}), "{body}: {} {}", r.status, r.text);
    }
    // Boundaries: logins 3..128, passwords 6..128 characters.
    user(&hub, json!({"login": "l".repeat(128), "password": "p".repeat(128), "role": 1})).await;
    try_login(&hub, &"l".repeat(128), &"p".repeat(128)).await.expect(201);
    user(&hub, json!({"login": "abc", "password": "123456", "role": 1})).await;
    try_login(&hub, "abc", "123456").await.expect(201);
    assert_eq!(hub.get(&hub.admin, "/user/count").await.expect(200), json!({"count": 5}));

    let (_, client) = hub.client_user("notadmin", &[]).await;
    hub.post(&client, "/user", json!({"login": "sneaky", "password": "secret-pass", "role": 0}))
        .await
        .expect_error(403, "Access is denied");
    hub.stop().await;
}

#[tokio::test]
async fn user_update_and_delete() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let id = user(&hub, json!({"login": "updatee", "password": CLIENT_PASSWORD, "role": 1, "data": {"k": 1}})).await;
    let (token, _) = login_pair(&hub, "updatee", CLIENT_PASSWORD).await;

    hub.put(&hub.admin, &format!("/user/{id}"), json!({"data": {"k": 2}, "introReviewed": true})).await.expect(204);
    let u = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    assert_eq!((&u["data"], &u["introReviewed"], &u["login"]), (&json!({"k": 2}), &json!(true), &json!("updatee")));
    // data is replaced; allDeviceTypesAvailable in the body is ignored.
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"allDeviceTypesAvailable": false, "role": 0})).await.expect(204);
    let u = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    assert_eq!(
        (&u["data"], &u["allDeviceTypesAvailable"], &u["role"], &u["introReviewed"]),
        (&Value::Null, &json!(true), &json!(0), &json!(true))
    );
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"role": 1, "login": " updated "})).await.expect(204);
    let u = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    assert_eq!((&u["login"], &u["role"]), (&json!("updated"), &json!(1)));
    // The same login again is not a clash.
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"login": "updated"})).await.expect(204);

    let before = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    let cases = [
        (json!({"login": ADMIN_LOGIN}), 403, "User with such login already exists. Please, select another one"),
        (json!({"login": "x"}), 400, "Field cannot be empty. The length of login should be from 3 to 128 symbols."),
        (json!({"password": "123"}), 400, "Password can contain only from 6 to 128 symbols!"),
        (json!({"role": 5}), 400, "User role is invalid or empty"),
        (json!({"status": 3}), 400, "Invalid request parameters"),
        (json!({"data": 5}), 400, "'parameters' must be JSON Object!"),
    ];
    for (body, status, message) in cases {
        let r = hub.put(&hub.admin, &format!("/user/{id}"), body.clone()).await;
        assert_eq!(r.body, json!({"error": status, "message": message}), "{body}: {}", r.text);
    }
    assert_eq!(hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200), before, "failed updates change nothing");
    hub.put(&hub.admin, "/user/999", json!({"data": null})).await.expect_error(404, "User with id = 999 not found");
    hub.put(&token, &format!("/user/{id}"), json!({"data": null})).await.expect_error(403, "Access is denied");

    // Password change, then log in with the new one.
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"password": "changed-pass"})).await.expect(204);
    try_login(&hub, "updated", CLIENT_PASSWORD).await.expect_error(401, "Invalid credentials");
    try_login(&hub, "updated", "changed-pass").await.expect(201);
    // An empty password is "no change".
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"password": ""})).await.expect(204);
    try_login(&hub, "updated", "changed-pass").await.expect(201);

    // Delete: never yourself; others 204, then 404.
    hub.delete(&hub.admin, "/user/1")
        .await
        .expect_error(403, "You can not delete a user or access key that you use to authenticate this request");
    hub.delete(&token, &format!("/user/{id}")).await.expect_error(403, "Access is denied");
    hub.delete(&hub.admin, &format!("/user/{id}")).await.expect(204);
    hub.get(&hub.admin, &format!("/user/{id}")).await.expect_error(404, &format!("User with id = {id} not found"));
    hub.delete(&hub.admin, &format!("/user/{id}")).await.expect_error(404, &format!("User with id = {id} not found"));
    hub.get(&token, "/network").await.expect_error(401, "Unauthorized");
    try_login(&hub, "updated", "changed-pass").await.expect_error(401, "Invalid credentials");
    // The login is free again.
    user(&hub, json!({"login": "updated", "password": CLIENT_PASSWORD, "role": 1})).await;
    hub.stop().await;
}

#[tokio::test]
async fn user_network_assignment() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.network("Assign A").await;
    let b = hub.network("Assign B").await;
    let (id, client) = hub.client_user("assignee", &[]).await;
    let path = |n: i64| format!("/user/{id}/network/{n}");

    hub.put(&hub.admin, &path(a), json!({})).await.expect(204);
    hub.put(&hub.admin, &path(a), json!({})).await.expect(204);
    hub.request(Method::PUT, Some(&hub.admin), &path(b), None).await.expect(204);
    assert_eq!(
        hub.get(&hub.admin, &path(a)).await.expect(200),
        json!({"network": {"id": a, "name": "Assign A", "description": null}})
    );
    let u = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    assert_eq!(ids(&u["networks"]), [a, b]);

    hub.delete(&hub.admin, &path(b)).await.expect(204);
    hub.delete(&hub.admin, &path(b)).await.expect(204);
    hub.get(&hub.admin, &path(b))
        .await
        .expect_error(404, &format!("Network with id {b} for user with id {id} was not found"));
    hub.get(&hub.admin, "/user/999/network/1").await.expect_error(404, "User with id = 999 not found");
    hub.put(&hub.admin, "/user/999/network/1", json!({})).await.expect_error(404, "User with id = 999 not found");
    hub.put(&hub.admin, &path(999), json!({})).await.expect_error(404, "Network with id = 999 not found");
    hub.delete(&hub.admin, &path(999)).await.expect_error(404, "Network with id = 999 not found");
    hub.delete(&hub.admin, "/user/999/network/1").await.expect_error(404, "User with id = 999 not found");

    // Clients cannot manage assignments.
    hub.put(&client, &path(b), json!({})).await.expect_error(403, "Access is denied");
    hub.delete(&client, &path(a)).await.expect_error(403, "Access is denied");
    let u = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    assert_eq!(ids(&u["networks"]), [a]);

    // Deleting a network removes the assignment.
    hub.delete(&hub.admin, &format!("/network/{a}")).await.expect(204);
    let u = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    assert_eq!(u["networks"], json!([]));
    hub.stop().await;
}

#[tokio::test]
async fn user_device_type_assignment() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let (id, _) = hub.client_user("typed", &[]).await;
    let all_types = hub.get(&hub.admin, "/devicetype").await.expect(200);
    assert_eq!(ids(&all_types), [1, 2, 3, 4, 5, 6, 7, 8]);

    // A user with all device types: the list is every type; explicit assignment is refused.
    assert_eq!(hub.get(&hub.admin, &format!("/user/{id}/devicetype")).await.expect(200), all_types);
    assert_eq!(
        hub.get(&hub.admin, &format!("/user/{id}/devicetype/5")).await.expect(200),
        json!({"deviceType": all_types[4]})
    );
    let refused = "Cannot assign device type to user with all device types allowed";
    hub.put(&hub.admin, &format!("/user/{id}/devicetype/2"), json!({})).await.expect_error(403, refused);
    hub.delete(&hub.admin, &format!("/user/{id}/devicetype/2")).await.expect_error(403, refused);

    // Switch to explicit assignments.
    hub.delete(&hub.admin, &format!("/user/{id}/devicetype/all")).await.expect(204);
    let u = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    assert_eq!(u["allDeviceTypesAvailable"], false);
    assert_eq!(hub.get(&hub.admin, &format!("/user/{id}/devicetype")).await.expect(200), json!([]));
    let (token, _) = login_pair(&hub, "typed", CLIENT_PASSWORD).await;
    assert_eq!(hub.get(&token, "/devicetype").await.expect(200), json!([]));
    assert_eq!(hub.get(&token, "/devicetype/count").await.expect(200), json!({"count": 0}));

    hub.put(&hub.admin, &format!("/user/{id}/devicetype/2"), json!({})).await.expect(204);
    hub.put(&hub.admin, &format!("/user/{id}/devicetype/4"), json!({})).await.expect(204);
    hub.put(&hub.admin, &format!("/user/{id}/devicetype/4"), json!({})).await.expect(204);
    assert_eq!(
        hub.get(&hub.admin, &format!("/user/{id}/devicetype")).await.expect(200),
        json!([all_types[1], all_types[3]])
    );
    assert_eq!(
        hub.get(&hub.admin, &format!("/user/{id}/devicetype/2")).await.expect(200),
        json!({"deviceType": all_types[1]})
    );
    hub.get(&hub.admin, &format!("/user/{id}/devicetype/3"))
        .await
        .expect_error(404, &format!("Device type with id 3 for user with id {id} not found"));
    let (token, _) = login_pair(&hub, "typed", CLIENT_PASSWORD).await;
    assert_eq!(claims(&token)["dt"], json!(["2", "4"]));
    assert_eq!(ids(&hub.get(&token, "/devicetype").await.expect(200)), [2, 4]);
    hub.get(&token, "/devicetype/3").await.expect_error(403, "Access is denied");
    hub.get(&token, "/devicetype/2").await.expect(200);

    hub.delete(&hub.admin, &format!("/user/{id}/devicetype/4")).await.expect(204);
    hub.delete(&hub.admin, &format!("/user/{id}/devicetype/4")).await.expect(204);
    assert_eq!(ids(&hub.get(&hub.admin, &format!("/user/{id}/devicetype")).await.expect(200)), [2]);
    // The live assignment narrows an older token.
    assert_eq!(ids(&hub.get(&token, "/devicetype").await.expect(200)), [2]);

    // Errors.
    hub.put(&hub.admin, &format!("/user/{id}/devicetype/999"), json!({}))
        .await
        .expect_error(404, "Device type with id = 999 not found");
    for path in ["/user/999/devicetype", "/user/999/devicetype/2", "/user/999/devicetype/all"] {
        let r = hub.get(&hub.admin, path).await;
        if path.ends_with("/all") {
            assert_eq!(r.status.as_u16(), 405, "{path}: {}", r.text);
        } else {
            r.expect_error(404, "User with id = 999 not found");
        }
    }
    hub.put(&hub.admin, "/user/999/devicetype/2", json!({})).await.expect_error(404, "User with id = 999 not found");
    hub.put(&hub.admin, "/user/999/devicetype/all", json!({})).await.expect_error(404, "User with id = 999 not found");
    hub.delete(&hub.admin, "/user/999/devicetype/all").await.expect_error(404, "User with id = 999 not found");
    hub.get(&token, &format!("/user/{id}/devicetype")).await.expect_error(403, "Access is denied");
    hub.put(&token, &format!("/user/{id}/devicetype/all"), json!({})).await.expect_error(403, "Access is denied");

    // Back to all types: the explicit assignments are removed.
    hub.put(&hub.admin, &format!("/user/{id}/devicetype/all"), json!({})).await.expect(204);
    let u = hub.get(&hub.admin, &format!("/user/{id}")).await.expect(200);
    assert_eq!(u["allDeviceTypesAvailable"], true);
    assert_eq!(hub.get(&hub.admin, &format!("/user/{id}/devicetype")).await.expect(200), all_types);
    hub.delete(&hub.admin, &format!("/user/{id}/devicetype/all")).await.expect(204);
    assert_eq!(hub.get(&hub.admin, &format!("/user/{id}/devicetype")).await.expect(200), json!([]));
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// networks and device types

#[tokio::test]
async fn network_crud_and_errors() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let r = hub.post(&hub.admin, "/network", json!({"id": 999, "name": "Alpha Net", "description": "first one"})).await;
    let location = r.headers.get("location").map(|v| v.to_str().unwrap().to_string());
    let body = r.expect(201);
    assert_eq!(keys(&body), ["id"]);
    let a = body["id"].as_i64().unwrap();
    assert_ne!(a, 999);
    assert_eq!(location.as_deref(), Some(format!("/api/rest/network/{a}").as_str()));
    assert_eq!(
        hub.get(&hub.admin, &format!("/network/{a}")).await.expect(200),
        json!({"id": a, "name": "Alpha Net", "description": "first one", "devices": []})
    );
    let b = hub.network("Beta Net").await;

    let exists = "Network cannot be created. Network with such name already exists";
    hub.post(&hub.admin, "/network", json!({"name": "Alpha Net"})).await.expect_error(403, exists);
    for body in [
        json!({}),
        json!({"description": "no name"}),
        json!({"name": ""}),
        json!({"name": "n".repeat(129)}),
        json!({"name": "ok name", "description": "d".repeat(129)}),
        json!({"name": 5}),
    ] {
        hub.post(&hub.admin, "/network", body).await.expect_error(400, "Invalid request parameters");
    }
    hub.post(&hub.admin, "/network", json!({"name": "n".repeat(128), "description": "d".repeat(128)}))
        .await
        .expect(201);

    // Partial updates; `id` in the body is ignored.
    hub.put(&hub.admin, &format!("/network/{a}"), json!({"description": "changed"})).await.expect(204);
    hub.put(&hub.admin, &format!("/network/{a}"), json!({"id": b, "name": "Alpha Prime"})).await.expect(204);
    let got = hub.get(&hub.admin, &format!("/network/{a}")).await.expect(200);
    assert_eq!(got, json!({"id": a, "name": "Alpha Prime", "description": "changed", "devices": []}));
    assert_eq!(hub.get(&hub.admin, &format!("/network/{b}")).await.expect(200)["name"], "Beta Net");
    hub.put(&hub.admin, &format!("/network/{a}"), json!({"description": null})).await.expect(204);
    assert_eq!(hub.get(&hub.admin, &format!("/network/{a}")).await.expect(200)["description"], Value::Null);
    hub.put(&hub.admin, &format!("/network/{a}"), json!({"name": "Beta Net"})).await.expect_error(403, exists);
    hub.put(&hub.admin, &format!("/network/{a}"), json!({"name": "Alpha Prime"})).await.expect(204);
    for body in [json!({"name": "n".repeat(129)}), json!({"name": ""}), json!({"name": "  "}), json!({"name": 7})] {
        hub.put(&hub.admin, &format!("/network/{a}"), body).await.expect_error(400, "Invalid request parameters");
    }
    hub.put(&hub.admin, &format!("/network/{a}"), json!({"name": null})).await.expect(204);
    assert_eq!(hub.get(&hub.admin, &format!("/network/{a}")).await.expect(200)["name"], "Alpha Prime");
    hub.put(&hub.admin, "/network/999", json!({"name": "ghost"}))
        .await
        .expect_error(404, "Network with id = 999 not found");
    hub.get(&hub.admin, "/network/999").await.expect_error(404, "Network with id = 999 not found");

    // List and count.
    let list = hub.get(&hub.admin, "/network").await.expect(200);
    assert_eq!(list.as_array().unwrap().len(), 4);
    assert_eq!(list[0], json!({"id": 1, "name": "Sample Network", "description": "A DeviceHive Sample Network"}));
    let cases: [(&str, &[i64]); 6] = [
        ("name=Beta%20Net", &[b]),
        ("namePattern=%25Net%25", &[1, b]),
        ("namePattern=Alpha%25&name=Beta%20Net", &[a]),
        ("sortField=name&sortOrder=ASC&namePattern=%25a%25", &[a, b, 1]),
        ("sortField=NAME&sortOrder=desc&namePattern=%25a%25", &[1, b, a]),
        ("sortField=id&sortOrder=desc&take=2&skip=1&namePattern=%25a%25", &[a, 1]),
    ];
    for (query, expected) in cases {
        let list = hub.get(&hub.admin, &format!("/network?{query}")).await.expect(200);
        assert_eq!(ids(&list), expected, "GET /network?{query}");
    }
    assert_eq!(hub.get(&hub.admin, "/network/count?namePattern=%25Net%25").await.expect(200), json!({"count": 2}));
    assert_eq!(hub.get(&hub.admin, "/network/count").await.expect(200), json!({"count": 4}));
    hub.get(&hub.admin, "/network?sortField=description").await.expect_error(400, "Invalid request parameters");
    hub.get(&hub.admin, "/network?sortOrder=up").await.expect_error(400, "Unparseable sort order : up");

    // Delete: refused with devices unless forced; force deletes the devices.
    hub.device("dev-b2", b).await;
    hub.device("dev-b1", b).await;
    hub.put(&hub.admin, "/device/dev-b3", json!({"name": "third", "networkId": b, "data": {"x": 1}})).await.expect(204);
    let got = hub.get(&hub.admin, &format!("/network/{b}")).await.expect(200);
    assert_eq!(
        got["devices"],
        json!([
            {"id": "dev-b2", "name": "dev-b2", "data": null, "isBlocked": false},
            {"id": "dev-b1", "name": "dev-b1", "data": null, "isBlocked": false},
            {"id": "dev-b3", "name": "third", "data": {"x": 1}, "isBlocked": false},
        ])
    );
    let refused = "There are the following devices within this network: dev-b2, dev-b1, dev-b3. \
                   Please review and delete them first.";
    hub.delete(&hub.admin, &format!("/network/{b}")).await.expect_error(400, refused);
    hub.delete(&hub.admin, &format!("/network/{b}?force=false")).await.expect_error(400, refused);
    hub.get(&hub.admin, "/device/dev-b1").await.expect(200);
    hub.delete(&hub.admin, &format!("/network/{b}?force=true")).await.expect(204);
    hub.get(&hub.admin, &format!("/network/{b}")).await.expect_error(404, &format!("Network with id = {b} not found"));
    for d in ["dev-b1", "dev-b2", "dev-b3"] {
        hub.get(&hub.admin, &format!("/device/{d}"))
            .await
            .expect_error(404, &format!("Device with such deviceId = {d} not found"));
    }
    hub.delete(&hub.admin, &format!("/network/{a}")).await.expect(204);
    hub.delete(&hub.admin, &format!("/network/{a}"))
        .await
        .expect_error(404, &format!("Network with id = {a} not found"));
    hub.delete(&hub.admin, "/network/1?force=maybe").await.expect_error(400, "Invalid request parameters");
    assert_eq!(hub.get(&hub.admin, "/network/count").await.expect(200), json!({"count": 2}));
    hub.stop().await;
}

#[tokio::test]
async fn device_type_crud_and_errors() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let seeded = hub.get(&hub.admin, "/devicetype/1").await.expect(200);
    assert_eq!(seeded["name"], "Default Device Type");
    assert_eq!(seeded["description"], "Default DeviceHive device type");
    assert_eq!(
        seeded["devices"],
        json!([{"id": "e50d6085-2aba-48e9-b1c3-73c673e414be", "name": "Sample Device", "data": null, "isBlocked": false}])
    );

    let r = hub.post(&hub.admin, "/devicetype", json!({"id": 1, "name": "Robots", "description": "r"})).await;
    let location = r.headers.get("location").map(|v| v.to_str().unwrap().to_string());
    let body = r.expect(201);
    assert_eq!(keys(&body), ["id"]);
    let t = body["id"].as_i64().unwrap();
    assert_eq!(t, 9);
    assert_eq!(location.as_deref(), Some("/api/rest/devicetype/9"));
    let exists = "Device type cannot be created. Device type with such name already exists";
    hub.post(&hub.admin, "/devicetype", json!({"name": "Cameras"})).await.expect_error(403, exists);
    hub.post(&hub.admin, "/devicetype", json!({"description": "x"}))
        .await
        .expect_error(400, "Invalid request parameters");
    hub.put(&hub.admin, &format!("/devicetype/{t}"), json!({"name": "Cars"})).await.expect_error(403, exists);
    hub.put(&hub.admin, &format!("/devicetype/{t}"), json!({"name": "Drones"})).await.expect(204);
    assert_eq!(
        hub.get(&hub.admin, &format!("/devicetype/{t}")).await.expect(200),
        json!({"id": t, "name": "Drones", "description": "r", "devices": []})
    );
    hub.put(&hub.admin, "/devicetype/99", json!({"name": "x"}))
        .await
        .expect_error(404, "Device type with id = 99 not found");
    hub.get(&hub.admin, "/devicetype/99").await.expect_error(404, "Device type with id = 99 not found");
    hub.delete(&hub.admin, "/devicetype/99").await.expect_error(404, "Device type with id = 99 not found");

    assert_eq!(hub.get(&hub.admin, "/devicetype/count").await.expect(200), json!({"count": 9}));
    let list = hub.get(&hub.admin, "/devicetype?namePattern=C%25&sortField=name&sortOrder=desc").await.expect(200);
    assert_eq!(ids(&list), [8, 7, 2]);
    assert_eq!(hub.get(&hub.admin, "/devicetype/count?namePattern=C%25").await.expect(200), json!({"count": 3}));
    hub.get(&hub.admin, "/devicetype?sortField=devices").await.expect_error(400, "Invalid request parameters");

    hub.put(&hub.admin, "/device/drone-1", json!({"name": "drone", "networkId": 1, "deviceTypeId": t}))
        .await
        .expect(204);
    hub.delete(&hub.admin, &format!("/devicetype/{t}")).await.expect_error(
        400,
        "There are the following devices within this device type: drone-1. Please review and delete them first.",
    );
    hub.delete(&hub.admin, &format!("/devicetype/{t}?force=true")).await.expect(204);
    hub.get(&hub.admin, "/device/drone-1").await.expect_error(404, "Device with such deviceId = drone-1 not found");
    hub.get(&hub.admin, &format!("/devicetype/{t}"))
        .await
        .expect_error(404, &format!("Device type with id = {t} not found"));
    // An empty type is deleted without force, and its user assignments go with it.
    let typed = user(&hub, json!({"login": "typed", "password": CLIENT_PASSWORD, "role": 1})).await;
    hub.delete(&hub.admin, &format!("/user/{typed}/devicetype/all")).await.expect(204);
    hub.put(&hub.admin, &format!("/user/{typed}/devicetype/8"), json!({})).await.expect(204);
    hub.put(&hub.admin, &format!("/user/{typed}/devicetype/3"), json!({})).await.expect(204);
    hub.delete(&hub.admin, "/devicetype/8").await.expect(204);
    assert_eq!(ids(&hub.get(&hub.admin, &format!("/user/{typed}/devicetype")).await.expect(200)), [3]);
    assert_eq!(hub.get(&hub.admin, "/devicetype/count").await.expect(200), json!({"count": 7}));

    let (_, client) = hub.client_user("typer", &[]).await;
    assert_eq!(hub.get(&client, "/devicetype/count").await.expect(200), json!({"count": 7}));
    hub.post(&client, "/devicetype", json!({"name": "Mine"})).await.expect_error(403, "Access is denied");
    hub.put(&client, "/devicetype/2", json!({"name": "Mine"})).await.expect_error(403, "Access is denied");
    hub.delete(&client, "/devicetype/2").await.expect_error(403, "Access is denied");
    hub.stop().await;
}

#[tokio::test]
async fn client_sees_only_its_networks() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.network("Visible A").await;
    let b = hub.network("Hidden B").await;
    hub.device("dev-a", a).await;
    hub.device("dev-b", b).await;
    let (id, token) = hub.client_user("watcher", &[a]).await;

    let list = hub.get(&token, "/network").await.expect(200);
    assert_eq!(list, json!([{"id": a, "name": "Visible A", "description": null}]));
    assert_eq!(hub.get(&token, "/network/count").await.expect(200), json!({"count": 1}));
    assert_eq!(hub.get(&token, "/network?namePattern=%25B").await.expect(200), json!([]));
    let got = hub.get(&token, &format!("/network/{a}")).await.expect(200);
    assert_eq!(got["devices"].as_array().unwrap().len(), 1);
    assert_eq!(got["devices"][0]["id"], "dev-a");
    // Not in the token's networks → 403, existing or not.
    hub.get(&token, &format!("/network/{b}")).await.expect_error(403, "Access is denied");
    hub.get(&token, "/network/999").await.expect_error(403, "Access is denied");
    hub.get(&token, "/network/1").await.expect_error(403, "Access is denied");

    // Clients cannot manage networks.
    hub.post(&token, "/network", json!({"name": "Mine"})).await.expect_error(403, "Access is denied");
    hub.put(&token, &format!("/network/{a}"), json!({"name": "Mine"})).await.expect_error(403, "Access is denied");
    hub.delete(&token, &format!("/network/{a}?force=true")).await.expect_error(403, "Access is denied");
    hub.get(&hub.admin, "/device/dev-a").await.expect(200);

    // A network assigned after login needs a new token.
    hub.put(&hub.admin, &format!("/user/{id}/network/{b}"), json!({})).await.expect(204);
    hub.get(&token, &format!("/network/{b}")).await.expect_error(403, "Access is denied");
    assert_eq!(ids(&hub.get(&token, "/network").await.expect(200)), [a]);
    let fresh = hub.login("watcher", CLIENT_PASSWORD).await;
    assert_eq!(ids(&hub.get(&fresh, "/network").await.expect(200)), [a, b]);
    hub.get(&fresh, &format!("/network/{b}")).await.expect(200);

    // Unassigning takes effect at once: then the network is "not found" for the client.
    hub.delete(&hub.admin, &format!("/user/{id}/network/{a}")).await.expect(204);
    hub.get(&token, &format!("/network/{a}")).await.expect_error(404, &format!("Network with id = {a} not found"));
    assert_eq!(hub.get(&token, "/network").await.expect(200), json!([]));
    assert_eq!(hub.get(&token, "/network/count").await.expect(200), json!({"count": 0}));
    assert_eq!(ids(&hub.get(&fresh, "/network").await.expect(200)), [b]);

    // A token restricted to some networks narrows an admin too.
    let pair = create_token(&hub, &hub.admin, json!({"userId": 1, "actions": ["GetNetwork"], "networkIds": [b]}))
        .await
        .expect(201);
    let narrow = pair["accessToken"].as_str().unwrap();
    assert_eq!(ids(&hub.get(narrow, "/network").await.expect(200)), [b]);
    hub.get(narrow, &format!("/network/{a}")).await.expect_error(403, "Access is denied");
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// HTTP edge

#[tokio::test]
async fn cors_headers_and_preflight() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    for path in ["/user", "/network/1", "/configuration/jwt.secret", "/no/such/route", "/token"] {
        let r = raw(
            &hub,
            Method::OPTIONS,
            path,
            &[("Origin", "http://example.com"), ("Access-Control-Request-Method", "PUT")],
            None,
        )
        .await;
        assert!(matches!(r.status.as_u16(), 200 | 204), "OPTIONS {path}: {} {}", r.status, r.text);
        assert_cors(&r);
    }
    let ok = anon(&hub, Method::GET, "/info", None).await;
    assert_cors(&ok);
    let unauthorized = anon(&hub, Method::GET, "/user", None).await;
    assert_cors(&unauthorized);
    let created = hub.post(&hub.admin, "/network", json!({"name": "Cors Net"})).await;
    assert_cors(&created);
    let missing = hub.get(&hub.admin, "/no/such/route").await;
    assert_cors(&missing);
    let bad = raw(&hub, Method::POST, "/token", &[], Some("{oops")).await;
    assert_cors(&bad);
    hub.stop().await;
}

/// Every answer says its length (hyper writes it; the edge drops axum's copy to keep the header map
/// small), and a HEAD answer keeps the length of the GET it stands for, with no body.
#[tokio::test]
async fn answers_carry_their_length_and_head_that_of_the_get() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let length = |r: &Reply| r.headers.get("content-length").and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let ok = anon(&hub, Method::GET, "/info", None).await;
    let created = hub.post(&hub.admin, "/network", json!({"name": "Length Net"})).await;
    let missing = hub.get(&hub.admin, "/no/such/route").await;
    for r in [&ok, &created, &missing] {
        assert!(!r.text.is_empty(), "{}", r.status);
        assert_eq!(length(r), Some(r.text.len()), "{} {}", r.status, r.text);
    }
    let head = raw(&hub, Method::HEAD, "/info", &[], None).await;
    assert_eq!(head.status, 200);
    assert!(head.text.is_empty(), "HEAD answered a body: {}", head.text);
    // The GET's body differs only in its serverTimestamp, whose width is fixed.
    assert_eq!(length(&head), Some(ok.text.len()));
    hub.stop().await;
}

#[tokio::test]
async fn method_override_header() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let n = hub.network("Override Me").await;
    let auth = format!("Bearer {}", hub.admin);
    let path = format!("/network/{n}");
    raw(
        &hub,
        Method::POST,
        &path,
        &[("Authorization", &auth), ("Content-Type", "application/json"), ("X-HTTP-Method-Override", "PUT")],
        Some(r#"{"name": "Overridden"}"#),
    )
    .await
    .expect(204);
    assert_eq!(hub.get(&hub.admin, &path).await.expect(200)["name"], "Overridden");
    raw(&hub, Method::POST, &path, &[("Authorization", &auth), ("x-http-method-override", "delete")], None)
        .await
        .expect(204);
    hub.get(&hub.admin, &path).await.expect_error(404, &format!("Network with id = {n} not found"));
    // OPTIONS via override: a preflight answer without auth.
    let r = raw(&hub, Method::POST, "/user", &[("X-HTTP-Method-Override", "OPTIONS")], None).await;
    assert!(matches!(r.status.as_u16(), 200 | 204), "{}", r.status);
    assert_cors(&r);
    // An unknown override is ignored: a plain POST.
    let r = raw(
        &hub,
        Method::POST,
        "/network",
        &[("Authorization", &auth), ("X-HTTP-Method-Override", "PATCH")],
        Some(r#"{"name": "Plain Post"}"#),
    )
    .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    hub.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    for path in ["/no/such/thing", "/usr", "/user/1/nothing"] {
        hub.get(&hub.admin, path).await.expect_error(404, "HTTP 404 Not Found");
    }
    anon(&hub, Method::GET, &format!("{}/outside/the/api", hub.root), None)
        .await
        .expect_error(404, "HTTP 404 Not Found");
    let not_allowed = "HTTP 405 Method Not Allowed";
    hub.delete(&hub.admin, "/user").await.expect_error(405, not_allowed);
    hub.put(&hub.admin, "/network/count", json!({})).await.expect_error(405, not_allowed);
    hub.request(Method::PATCH, Some(&hub.admin), "/network/1", Some(json!({"name": "x"})))
        .await
        .expect_error(405, not_allowed);
    anon(&hub, Method::GET, "/token", None).await.expect_error(405, not_allowed);
    hub.post(&hub.admin, "/configuration/x", json!({"value": "y"})).await.expect_error(405, not_allowed);
    hub.request(Method::DELETE, Some(&hub.admin), &format!("{}/dh/rest/user", hub.root), None)
        .await
        .expect_error(405, not_allowed);
    hub.stop().await;
}

#[tokio::test]
async fn malformed_json_changes_nothing() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let auth = format!("Bearer {}", hub.admin);
    let json_ct = ("Content-Type", "application/json");
    for body in [r#"{"name": "Broken""#, "{name: 'x'}", "not json", r#"{"name": "x"} trailing"#] {
        raw(&hub, Method::POST, "/network", &[("Authorization", &auth), json_ct], Some(body))
            .await
            .expect_error(400, "Invalid request parameters");
    }
    // Valid JSON that is not an object.
    for body in ["[1, 2]", "\"name\"", "42"] {
        raw(&hub, Method::POST, "/network", &[("Authorization", &auth), json_ct], Some(body))
            .await
            .expect_error(400, "Invalid request parameters");
    }
    assert_eq!(hub.get(&hub.admin, "/network/count").await.expect(200), json!({"count": 1}));

    let before = hub.get(&hub.admin, "/user/1").await.expect(200);
    raw(&hub, Method::PUT, "/user/1", &[("Authorization", &auth), json_ct], Some(r#"{"data": {"a": 1}"#))
        .await
        .expect_error(400, "Invalid request parameters");
    assert_eq!(hub.get(&hub.admin, "/user/1").await.expect(200), before);
    raw(&hub, Method::POST, "/token", &[json_ct], Some("{\"login\": "))
        .await
        .expect_error(400, "Invalid request parameters");
    raw(&hub, Method::PUT, "/configuration/k", &[("Authorization", &auth), json_ct], Some("{\"value\""))
        .await
        .expect_error(400, "Invalid request parameters");
    assert_eq!(hub.get(&hub.admin, "/configuration/k").await.status.as_u16(), 404);
    hub.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.limits.max_body_bytes = 200).await;
    let auth = format!("Bearer {}", hub.admin);
    let big = json!({"name": "Too Big", "description": "d".repeat(250)}).to_string();
    let r = raw(
        &hub,
        Method::POST,
        "/network",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(&big),
    )
    .await;
    assert_eq!(r.status.as_u16(), 413, "{}", r.text);
    assert_eq!(r.body["error"], 413);
    assert_cors(&r);
    let r = hub.put(&hub.admin, "/user/current", json!({"data": {"blob": "x".repeat(300)}})).await;
    assert_eq!(r.status.as_u16(), 413, "{}", r.text);
    assert_eq!(hub.get(&hub.admin, "/network/count").await.expect(200), json!({"count": 1}));
    assert_eq!(hub.get(&hub.admin, "/user/current").await.expect(200)["data"], Value::Null);
    // Bodies within the limit are fine.
    hub.post(&hub.admin, "/network", json!({"name": "Small"})).await.expect(201);
    hub.stop().await;
}

#[tokio::test]
async fn bodies_without_content_type_are_json() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let auth = format!("Bearer {}", hub.admin);
    let r = raw(&hub, Method::POST, "/network", &[("Authorization", &auth)], Some(r#"{"name": "No CT"}"#)).await;
    assert!(r.headers.get("content-type").is_some());
    let id = r.expect(201)["id"].as_i64().unwrap();
    assert_eq!(hub.get(&hub.admin, &format!("/network/{id}")).await.expect(200)["name"], "No CT");
    let body = format!(r#"{{"login": "{ADMIN_LOGIN}", "password": "{ADMIN_PASSWORD}"}}"#);
    raw(&hub, Method::POST, "/token", &[], Some(&body)).await.expect(201);
    // Even a wrong content type is read as JSON.
    raw(&hub, Method::POST, "/token", &[("Content-Type", "text/plain")], Some(&body)).await.expect(201);
    hub.stop().await;
}

#[tokio::test]
async fn authorization_header_handling() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let protected: [(Method, &str, Option<Value>); 9] = [
        (Method::GET, "/user", None),
        (Method::GET, "/user/current", None),
        (Method::GET, "/network", None),
        (Method::GET, "/devicetype/1", None),
        (Method::GET, "/configuration/jwt.secret", None),
        (Method::POST, "/network", Some(json!({"name": "anon"}))),
        (Method::POST, "/user", Some(json!({"login": "anon1", "password": "secret-pass", "role": 0}))),
        (Method::POST, "/token/create", Some(json!({"userId": 1, "actions": ["*"]}))),
        (Method::DELETE, "/user/1", None),
    ];
    for (method, path, body) in protected {
        anon(&hub, method.clone(), path, body.clone()).await.expect_error(401, "Unauthorized");
        let body_text = body.map(|b| b.to_string());
        for header in
            ["Basic x", "Basic ZGhhZG1pbjphZG1pbi1wYXNzLTE=", "Bearer", "Bearer ", "Bearer garbage", "bearer x"]
        {
            let r = raw(&hub, method.clone(), path, &[("Authorization", header)], body_text.as_deref()).await;
            assert_eq!(
                r.body,
                json!({"error": 401, "message": "Unauthorized"}),
                "{method} {path} with {header:?}: {} {}",
                r.status,
                r.text
            );
        }
        let lower = format!("bearer {}", hub.admin);
        let r = raw(&hub, method.clone(), path, &[("Authorization", &lower)], None).await;
        assert_eq!(r.status.as_u16(), 401, "{method} {path} lowercase bearer");
    }
    assert_eq!(hub.get(&hub.admin, "/network/count").await.expect(200), json!({"count": 1}));
    assert_eq!(hub.get(&hub.admin, "/user/count").await.expect(200), json!({"count": 1}));
    // Public endpoints work anonymously.
    anon(&hub, Method::GET, "/info", None).await.expect(200);
    hub.stop().await;
}

/// Health endpoints for load balancers: outside the REST prefix, no authentication, the node named.
#[tokio::test]
async fn health_and_readiness_answer_without_authentication() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.cluster.node_id = "health-node".into()).await;
    for (path, status) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let resp = hub.client.get(format!("{}{path}", hub.root)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body, json!({"status": status, "node": "health-node"}), "{path}");
    }
    // Not part of the REST API: unknown under the prefix.
    anon(&hub, Method::GET, "/healthz", None).await.expect_error(404, "HTTP 404 Not Found");
}
