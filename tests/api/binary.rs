//! The `hivehub` binary itself: `config` prints the commented defaults, `serve` generates and prints
//! the first admin password once, and SIGTERM shuts it down gracefully (long polls answered, exit 0).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_hivehub");

#[test]
fn config_prints_the_commented_defaults() {
    let out = Command::new(BIN).arg("config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for key in ["[http]", "listen = \"0.0.0.0:8080\"", "[database]", "[auth]", "[mqtt]", "[limits]", "# "] {
        assert!(text.contains(key), "missing {key}");
    }
}

/// Reads the child's log until a line matching `pred`, returning it.
fn wait_for_line(lines: &mut impl Iterator<Item = String>, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in lines.by_ref() {
        if pred(&line) {
            return line;
        }
        assert!(Instant::now() < deadline, "timed out waiting for the log line");
    }
    panic!("the hub exited before the expected log line");
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(&format!("{key}=")).unwrap_or_else(|| panic!("{key} in {line}")) + key.len() + 1;
    line[start..].split_whitespace().next().unwrap()
}

#[tokio::test]
async fn serve_prints_a_generated_password_once_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let start = |dir: &std::path::Path| {
        Command::new(BIN)
            .arg("serve")
            .current_dir(dir)
            .env("HIVEHUB__HTTP__LISTEN", "127.0.0.1:0")
            .env("HIVEHUB__MQTT__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("HIVEHUB__AUTH__ADMIN_PASSWORD")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = start(dir.path());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let password_line = wait_for_line(&mut lines, |l| l.contains("generated password"));
    let password = field(&password_line, "password").to_string();
    assert!(password.len() >= 20, "a strong password: {password}");
    let listen_line = wait_for_line(&mut lines, |l| l.contains("hivehub listening"));
    let base = format!("http://{}/api/rest", field(&listen_line, "http_addr"));
    // The default database file was created with its folder.
    assert!(dir.path().join("data/hivehub.db").exists());

    let client = reqwest::Client::new();
    let login: serde_json::Value = client
        .post(format!("{base}/token"))
        .json(&json!({"login": "dhadmin", "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["accessToken"].as_str().expect("the printed password logs in").to_string();

    // A long poll in flight when SIGTERM arrives is answered at once, and the process exits 0.
    let poll = tokio::spawn({
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move {
            let started = Instant::now();
            let r = client
                .get(format!("{base}/device/notification/poll?waitTimeout=60"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap(), started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(killed.success());
    let (status, body, waited) = poll.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "[]"));
    assert!(waited < Duration::from_secs(30), "the poll was not cut short by the shutdown: {waited:?}");
    wait_for_line(&mut lines, |l| l.contains("hivehub stopped"));
    assert!(child.wait().unwrap().success());

    // Second start on the same database: no new password is generated or printed.
    let mut child = start(dir.path());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let first = wait_for_line(&mut lines, |l| l.contains("hivehub listening") || l.contains("generated password"));
    assert!(first.contains("hivehub listening"), "password printed again: {first}");
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success());
}
