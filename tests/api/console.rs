//! The admin console (`/admin/`): its routes and headers over HTTP, the message counter its overview
//! reads, and the end-to-end browser tests (`tests/browser/run.mjs`, headless Chromium driven by
//! playwright-core) against a hub on port 0. The browser tests need Node.js, `npm ci` in
//! `tests/browser` and `/usr/bin/chromium` (or `CHROMIUM`); without them they print "skipped" and
//! pass, unless `HIVEHUB_TEST_REQUIRE_BROWSER=1` (CI), where a missing piece fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::redirect::Policy;
use serde_json::{json, Value};

use crate::common::{ADMIN_LOGIN, ADMIN_PASSWORD};

const ASSETS: [&str; 12] = [
    "style.css",
    "app.js",
    "api.js",
    "live.js",
    "dom.js",
    "overview.js",
    "groups.js",
    "devices.js",
    "device.js",
    "users.js",
    "tokens.js",
    "favicon.svg",
];

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

#[tokio::test]
async fn root_redirects_to_the_console_served_under_a_strict_policy() {
    skip_unless_backend!();
    let hub = super::TestHub::start_with(|s| s.http.websocket_path = "/live/ws".into()).await;
    let client = no_redirects();
    let root = client.get(format!("{}/", hub.root)).send().await.unwrap();
    assert_eq!(root.status(), 302);
    assert_eq!(root.headers()["location"], "/admin/");

    for path in ["/admin/", "/admin"] {
        let page = client.get(format!("{}{path}", hub.root)).send().await.unwrap();
        assert_eq!(page.status(), 200, "{path}");
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        let host = hub.root.trim_start_matches("http://");
        assert!(csp.contains(&format!("connect-src 'self' ws://{host} wss://{host};")), "{csp}");
        assert_eq!(page.headers()["x-content-type-options"], "nosniff");
        let html = page.text().await.unwrap();
        // The page tells the scripts where the APIs are; no inline script or style.
        assert!(html.contains(r#"<meta name="hivehub-rest-prefix" content="/api/rest">"#), "{html}");
        assert!(html.contains(r#"<meta name="hivehub-websocket-path" content="/live/ws">"#), "{html}");
        assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains(" style="), "{html}");
    }

    for file in ASSETS {
        let asset = client.get(format!("{}/admin/{file}", hub.root)).send().await.unwrap();
        assert_eq!(asset.status(), 200, "{file}");
        let kind = asset.headers()["content-type"].to_str().unwrap().to_string();
        let expected = match file.rsplit_once('.').unwrap().1 {
            "js" => "text/javascript",
            "css" => "text/css",
            _ => "image/svg+xml",
        };
        assert!(kind.starts_with(expected), "{file}: {kind}");
        assert!(asset.headers().contains_key("content-security-policy"), "{file}");
    }

    let missing = client.get(format!("{}/admin/secrets.txt", hub.root)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap(), json!({"error": 404, "message": "HTTP 404 Not Found"}));
    let escape = client.get(format!("{}/admin/..%2Fbroker.toml", hub.root)).send().await.unwrap();
    assert_eq!(escape.status(), 404);
    // The REST API is where it was.
    let welcome = client.get(format!("{}/", hub.base)).send().await.unwrap();
    assert_eq!(welcome.status(), 200);
}

/// The overview's messages per second come from this counter of `cacheStats`.
#[tokio::test]
async fn cache_stats_count_the_messages_written() {
    skip_unless_backend!();
    let hub = super::TestHub::start().await;
    let written = |text: &str| -> u64 {
        let (before, _) = text.split_once(" messages written").expect(text);
        before.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let stats = || async {
        let v: Value = hub.client.get(hub.url("/info/cache")).send().await.unwrap().json().await.unwrap();
        v["cacheStats"].as_str().unwrap().to_string()
    };
    let network = hub.network("counted").await;
    hub.device("counted-1", network).await; // `$device-add`: one message
    let start = written(&stats().await);
    assert!(start >= 1, "{start}");
    hub.post(&hub.admin, "/device/counted-1/notification", json!({"notification": "t"})).await.expect(201);
    let command = hub.post(&hub.admin, "/device/counted-1/command", json!({"command": "c"})).await.expect(201);
    let id = command["id"].as_i64().unwrap();
    hub.put(&hub.admin, &format!("/device/counted-1/command/{id}"), json!({"status": "done"})).await.expect(204);
    let text = stats().await;
    assert_eq!(written(&text), start + 3, "{text}");
    // The node id stays last (other tests and clients read it there).
    assert!(text.rsplit_once("; node ").is_some_and(|(_, id)| !id.contains(' ')), "{text}");
}

/// What the browser tests need and is missing here (empty: all there).
fn browser_test_prerequisites(browser_dir: &Path, chromium: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        missing.push("node (Node.js 20 or later) on PATH".to_string());
    }
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        missing.push(format!("`npm ci` in {}", browser_dir.display()));
    }
    if !chromium.exists() {
        missing.push(format!("{} (apt-get install chromium)", chromium.display()));
    }
    missing
}

#[tokio::test]
async fn console_end_to_end_in_headless_chromium() {
    skip_unless_backend!();
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let missing = browser_test_prerequisites(&browser_dir, &chromium);
    if !missing.is_empty() {
        let what = missing.join(", ");
        if std::env::var("HIVEHUB_TEST_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("HIVEHUB_TEST_REQUIRE_BROWSER=1 but the browser tests lack: {what}");
        }
        println!(
            "skipped: the console browser tests need {what} (HIVEHUB_TEST_REQUIRE_BROWSER=1 makes this a failure)"
        );
        return;
    }
    // A short access-token lifetime, so the run sees the console refresh its token before expiry.
    let hub = super::TestHub::start_with(|s| s.auth.access_token_lifetime_ms = 70_000).await;
    // Under the cargo target directory (`target/console-screenshots/*.png`).
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("console-screenshots");
    // Output goes to files (a pipe nobody reads while waiting could fill up and stall the run).
    let out_path = hub.dir.path().join("browser-tests.out");
    let err_path = hub.dir.path().join("browser-tests.err");
    let mut child = std::process::Command::new("node")
        .arg("run.mjs")
        .current_dir(&browser_dir)
        .env("HIVEHUB_URL", &hub.root)
        .env("HIVEHUB_MQTT", hub.mqtt_addr().to_string())
        .env("HIVEHUB_LOGIN", ADMIN_LOGIN)
        .env("HIVEHUB_PASSWORD", ADMIN_PASSWORD)
        .env("HIVEHUB_SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("node starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the browser tests did not finish within 5 minutes:\n{}",
                std::fs::read_to_string(&out_path).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    println!("{stdout}");
    assert!(status.success(), "browser tests failed ({status}):\n{stdout}\n{stderr}");
    assert!(stdout.contains("console browser tests ok"), "{stdout}");
}
