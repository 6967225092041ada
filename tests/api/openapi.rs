//! The OpenAPI document served at `{rest_prefix}/openapi.json`: JSON, OpenAPI 3.1, naming the URL it
//! was fetched from, and in step with the router — every documented operation is routed (not the
//! router's 404/405 fallback) and every other method on a documented path is the 405 fallback.
//! (`src/api/rest/openapi.rs` compares the document with the route table itself; .ci/schemathesis.sh
//! validates it and checks the responses against it.)

use reqwest::Method;
use serde_json::Value;

use super::TestHub;
use hivehub::api::rest::openapi::operations;

/// A path of the document with each `{param}` replaced by `1` (a valid number and device id).
fn concrete(path: &str) -> String {
    path.split('/').map(|s| if s.starts_with('{') { "1" } else { s }).collect::<Vec<_>>().join("/")
}

async fn served(hub: &TestHub, base: &str) -> Value {
    let reply = hub.request(Method::GET, None, &format!("{base}/openapi.json"), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let content_type = reply.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    serde_json::from_str(&reply.text).expect("the document is JSON")
}

#[tokio::test]
async fn the_served_document_is_openapi_3_1_with_the_routes_of_the_router() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let doc = served(&hub, &hub.base).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", doc["openapi"]);
    assert_eq!(doc["servers"], serde_json::json!([{"url": hub.base}]));
    // The alias prefix serves it too, naming itself.
    let alias = served(&hub, &format!("{}/dh/rest", hub.root)).await;
    assert_eq!(alias["servers"][0]["url"], format!("{}/dh/rest", hub.root));

    let mut routed: Vec<(String, String)> =
        hivehub::api::rest::routes().iter().map(|r| (r.method.as_str().to_string(), r.path.to_string())).collect();
    routed.sort();
    let documented = operations(&doc);
    assert_eq!(documented, routed);
}

/// Anonymous requests: a routed operation answers from its handler (200, 400 or 401 here), never
/// with the router's `HTTP 404 Not Found` or 405; other methods on a documented path get the 405.
#[tokio::test]
async fn every_documented_operation_is_routed_and_nothing_else_on_its_path() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let doc = served(&hub, &hub.base).await;
    let ops = operations(&doc);
    assert!(ops.len() > 40, "{} operations", ops.len());
    for (method, path) in &ops {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = hub.request(m, None, &concrete(path), None).await;
        let status = reply.status.as_u16();
        assert!([200, 400, 401].contains(&status), "{method} {path}: {status} {} (the router's fallback?)", reply.text);
    }
    let mut paths: Vec<&String> = ops.iter().map(|(_, p)| p).collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if ops.contains(&(method.to_string(), path.clone())) {
                continue;
            }
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            hub.request(m, None, &concrete(path), None).await.expect_error(405, "HTTP 405 Method Not Allowed");
        }
    }
}

/// `/auth/rest` serves the token routes and `GET /info` of the document, and nothing else.
#[tokio::test]
async fn the_auth_prefix_serves_the_token_routes_and_info() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let auth_base = format!("{}/auth/rest", hub.root);
    let auth_routes: Vec<_> = hivehub::api::rest::routes().into_iter().filter(|r| r.auth).collect();
    let mut auth_paths: Vec<&str> = auth_routes.iter().map(|r| r.path).collect();
    auth_paths.sort();
    assert_eq!(auth_paths, ["/info", "/token", "/token/create", "/token/refresh"]);
    for r in &auth_routes {
        let status = hub.request(r.method.clone(), None, &format!("{auth_base}{}", r.path), None).await.status;
        assert!([200, 400, 401].contains(&status.as_u16()), "{} {}: {status}", r.method, r.path);
    }
    hub.request(Method::GET, None, &format!("{auth_base}/openapi.json"), None)
        .await
        .expect_error(404, "HTTP 404 Not Found");
}
