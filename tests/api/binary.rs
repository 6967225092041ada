//! The `hivehub` binary itself: `config` prints the commented defaults, `serve` prints the first
//! admin's generated password once on stdout after every listener is bound, a bad configuration exits
//! with code 2 naming every problem, and SIGTERM shuts it down gracefully (long polls answered, exit 0).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_hivehub");
#[test]
fn config_prints_the_commented_defaults() {
    skip_unless_backend!();
    let out = Command::new(BIN).arg("config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for key in ["[http]", "listen = \"0.0.0.0:8080\"", "[database]", "[auth]", "[mqtt]", "[limits]", "# "] {
        assert!(text.contains(key), "missing {key}");
    }
}

/// The child's stdout, read line by line on a thread so waits can time out.
struct Output {
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Output {
    fn of(child: &mut Child) -> Output {
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Output { lines, seen: Vec::new() }
    }

    /// The next line matching `pred` (within 30 s); panics when the hub exits or stays silent.
    fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("timed out waiting for the line; seen {:?}", self.seen),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the hub exited before the expected line; seen {:?}", self.seen)
                }
            }
        }
    }

    /// Everything printed until the process closes its stdout.
    fn rest(&mut self) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(30)) {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(&format!("{key}=")).unwrap_or_else(|| panic!("{key} in {line}")) + key.len() + 1;
    line[start..].split_whitespace().next().unwrap()
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `hivehub serve` in `dir` with a fresh HTTP port (returned) and `env`; stdout and stderr piped.
fn serve(dir: &std::path::Path, env: &[(&str, &str)]) -> (Child, u16) {
    let port = free_port();
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .current_dir(dir)
        .env("HIVEHUB__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("HIVEHUB__MQTT__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("HIVEHUB__AUTH__ADMIN_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // On PostgreSQL, the database of this directory (SQLite uses its default file in `dir`).
    for (k, v) in super::TestHub::serve_env(dir) {
        command.env(k, v);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    (command.spawn().unwrap(), port)
}

/// Waits up to 30 s for the process to exit (killing it after that).
fn exit_status(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the hub did not exit: {:?}", child.wait());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(child: &mut Child) -> ExitStatus {
    let killed = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(killed.success());
    exit_status(child)
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    child.stderr.take().unwrap().read_to_string(&mut text).unwrap();
    text
}

/// The status of a password login.
async fn login_status(port: u16, login: &str, password: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/rest/token"))
        .json(&json!({"login": login, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn is_password_line(line: &str) -> bool {
    line.contains("generated password")
}

#[tokio::test]
async fn serve_prints_a_generated_password_once_and_stops_gracefully_on_sigterm() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = serve(dir.path(), &[]);
    let mut out = Output::of(&mut child);
    let password_line = out.wait_for(is_password_line);
    let password = field(&password_line, "password").to_string();
    assert!(password.len() >= 20, "a strong password: {password}");
    // Printed once every listener is bound: the HTTP and MQTT listeners were announced before it.
    assert!(out.seen.iter().any(|l| l.contains("hivehub listening")), "{:?}", out.seen);
    assert!(out.seen.iter().any(|l| l.contains("MQTT broker listening")), "{:?}", out.seen);
    let base = format!("http://127.0.0.1:{port}/api/rest");
    // The default database file was created with its folder (SQLite only: the PostgreSQL variant is
    // given a database URL).
    if super::TestHub::BACKEND == "sqlite" {
        assert!(dir.path().join("data/hivehub.db").exists());
    }

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
    out.wait_for(|l| l.contains("hivehub stopped"));
    assert!(exit_status(&mut child).success());

    // Second start on the same database: no new password is generated or printed.
    let (mut child, _) = serve(dir.path(), &[]);
    let mut out = Output::of(&mut child);
    out.wait_for(|l| l.contains("MQTT broker listening"));
    assert!(terminate(&mut child).success());
    let printed = out.rest();
    assert!(!printed.iter().any(|l| is_password_line(l)), "password printed again: {printed:?}");
}

#[tokio::test]
async fn the_generated_password_is_printed_on_stdout_whatever_the_log_level() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = serve(dir.path(), &[("RUST_LOG", "error")]);
    let mut out = Output::of(&mut child);
    let line = out.wait_for(is_password_line);
    assert_eq!(login_status(port, "dhadmin", field(&line, "password")).await, 201);
    assert!(terminate(&mut child).success());
}

#[tokio::test]
async fn a_first_start_that_cannot_bind_does_not_burn_the_generated_password() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    // The MQTT port is taken: the HTTP listener binds, the MQTT one does not.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let (mut child, _) = serve(dir.path(), &[("HIVEHUB__MQTT__LISTEN", &busy_addr)]);
    let mut out = Output::of(&mut child);
    assert!(!exit_status(&mut child).success());
    let printed = out.rest();
    assert!(!printed.iter().any(|l| is_password_line(l)), "a password was printed: {printed:?}");
    assert!(stderr_of(&mut child).contains("cannot listen for MQTT"));
    drop(busy);

    // The next start, with a free port, creates the administrator and prints a password that works.
    let (mut child, port) = serve(dir.path(), &[]);
    let mut out = Output::of(&mut child);
    let line = out.wait_for(is_password_line);
    let password = field(&line, "password").to_string();
    assert_eq!(login_status(port, "dhadmin", &password).await, 201);
    assert!(terminate(&mut child).success());

    // A password configured once the administrator exists is ignored, and the start says so.
    let (mut child, port) =
        serve(dir.path(), &[("HIVEHUB__AUTH__ADMIN_PASSWORD", "a-new-password-1"), ("RUST_LOG", "warn")]);
    let mut out = Output::of(&mut child);
    let warning = out.wait_for(|l| l.contains("admin_password"));
    assert!(warning.contains("ignored") && warning.contains("dhadmin"), "{warning}");
    assert!(!out.seen.iter().any(|l| is_password_line(l)), "{:?}", out.seen);
    // Let the listeners come up (the warning may precede them), then check both passwords.
    let mut status = 0;
    for _ in 0..100 {
        match reqwest::Client::new().get(format!("http://127.0.0.1:{port}/api/rest/info")).send().await {
            Ok(_) => {
                status = login_status(port, "dhadmin", &password).await;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(status, 201, "the first password still logs in");
    assert_eq!(login_status(port, "dhadmin", "a-new-password-1").await, 401);
    assert!(terminate(&mut child).success());
}

#[tokio::test]
async fn environment_values_of_string_keys_are_taken_as_written() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = serve(dir.path(), &[("HIVEHUB__AUTH__ADMIN_PASSWORD", "007123")]);
    let mut out = Output::of(&mut child);
    out.wait_for(|l| l.contains("MQTT broker listening"));
    assert_eq!(login_status(port, "dhadmin", "007123").await, 201, "the password is the string 007123");
    assert!(terminate(&mut child).success());
}

#[test]
fn a_bad_configuration_exits_with_code_2_and_names_every_problem() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hub.toml"), "[htpp]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "hub.toml"])
        .current_dir(dir.path())
        .env("HIVEHUB__HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HIVEHUB__MQTT__LISTEN", "127.0.0.1:0")
        .env("HIVEHUB__HTTP__LISEN", "127.0.0.1:0")
        .env("HIVEHUB__DATABASE__SYNCHRONOUS", "fulll")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_status(&mut child);
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(2), "{stderr}");
    for problem in [
        "hub.toml: unknown section [htpp] (did you mean [http]?)",
        "unknown variable HIVEHUB__HTTP__LISEN (did you mean HIVEHUB__HTTP__LISTEN?)",
        "HIVEHUB__DATABASE__SYNCHRONOUS: database.synchronous = \"fulll\" is not one of",
    ] {
        assert!(stderr.contains(problem), "missing `{problem}` in {stderr}");
    }
    assert!(!dir.path().join("data").exists(), "no database was created");
}

/// kill -9 while REST clients and an MQTT device insert as fast as they can: after a restart on the
/// same database every acknowledged notification (201, or PUBACK for QoS 1) is stored, and none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingest_loses_no_acknowledged_message_and_stores_none_twice() {
    skip_unless_backend!();
    use hivehub::mqtt::codec::{self, Connect, Packet, Publish};
    use std::collections::{BTreeSet, HashMap};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PASSWORD: &str = "kill-test-pass-1";
    const DEVICE: &str = "e50d6085-2aba-48e9-b1c3-73c673e414be";
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = free_port();
    let mqtt_listen = format!("127.0.0.1:{mqtt_port}");
    let env = [("HIVEHUB__AUTH__ADMIN_PASSWORD", PASSWORD), ("HIVEHUB__MQTT__LISTEN", mqtt_listen.as_str())];
    let (mut child, port) = serve(dir.path(), &env);
    let mut out = Output::of(&mut child);
    out.wait_for(|l| l.contains("MQTT broker listening"));
    let base = format!("http://127.0.0.1:{port}/api/rest");
    let client = reqwest::Client::new();
    let login: serde_json::Value = client
        .post(format!("{base}/token"))
        .json(&json!({"login": "dhadmin", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["accessToken"].as_str().unwrap().to_string();
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));

    // REST writers: each records the seqs answered 201, until the hub is gone.
    let mut writers = Vec::new();
    for w in 0..6i64 {
        let (base, token, acked) = (base.clone(), token.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0.. {
                let seq = w * 1_000_000 + i;
                let sent = client
                    .post(format!("{base}/device/{DEVICE}/notification"))
                    .bearer_auth(&token)
                    .json(&json!({"notification": "kill", "parameters": {"seq": seq}}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => acked.lock().unwrap().push(seq),
                    Ok(r) => assert!(r.status().is_server_error(), "unexpected answer {}", r.status()),
                    Err(_) => return,
                }
            }
        }));
    }
    // An MQTT device: QoS 1 publishes with a window of 32 in flight; a PUBACK marks its seq acked.
    let mqtt = {
        let (token, acked) = (token.clone(), acked.clone());
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", mqtt_port)).await.unwrap();
            let mut buf = bytes::BytesMut::new();
            codec::encode(
                &Packet::Connect(Box::new(Connect {
                    protocol_level: 4,
                    client_id: "kill-9-device".into(),
                    clean_session: true,
                    keep_alive: 60,
                    username: None,
                    password: Some(bytes::Bytes::from(token)),
                    will: None,
                })),
                &mut buf,
            );
            let topic = format!("dh/notification/1/1/{DEVICE}/kill");
            let mut in_flight: HashMap<u16, i64> = HashMap::new();
            let mut inbox = bytes::BytesMut::new();
            let mut next = 0i64;
            let mut connected = false;
            loop {
                while connected && in_flight.len() < 32 {
                    let pkid = (next % 60_000) as u16 + 1;
                    let seq = 9_000_000 + next;
                    next += 1;
                    in_flight.insert(pkid, seq);
                    let payload = json!({"parameters": {"seq": seq}}).to_string();
                    let publish = Publish {
                        dup: false,
                        qos: 1,
                        retain: false,
                        topic: topic.clone(),
                        pkid,
                        payload: payload.into(),
                    };
                    codec::encode(&Packet::Publish(publish), &mut buf);
                }
                if !buf.is_empty() {
                    if stream.write_all(&buf).await.is_err() {
                        return;
                    }
                    buf.clear();
                }
                match stream.read_buf(&mut inbox).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while let Ok(Some(p)) = codec::decode(&mut inbox, 1 << 20) {
                    match p {
                        Packet::ConnAck { code: 0, .. } => connected = true,
                        Packet::PubAck(pkid) => {
                            if let Some(seq) = in_flight.remove(&pkid) {
                                acked.lock().unwrap().push(seq);
                            }
                        }
                        _ => {}
                    }
                }
            }
        })
    };

    // Let ingest run, then kill -9 mid-stream.
    let started = Instant::now();
    while acked.lock().unwrap().len() < 300 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Command::new("kill").arg("-KILL").arg(child.id().to_string()).status().unwrap();
    assert!(killed.success());
    let _ = child.wait();
    for w in writers {
        w.await.unwrap();
    }
    mqtt.await.unwrap();
    let acked: BTreeSet<i64> = acked.lock().unwrap().iter().copied().collect();
    assert!(acked.len() >= 300, "too little was acknowledged before the kill: {}", acked.len());
    assert!(acked.iter().any(|s| *s >= 9_000_000), "no MQTT publish was acknowledged");

    // Restart on the same database and read everything back.
    let (mut child, port) = serve(dir.path(), &env);
    let mut out = Output::of(&mut child);
    out.wait_for(|l| l.contains("MQTT broker listening"));
    let base = format!("http://127.0.0.1:{port}/api/rest");
    let stored: Vec<serde_json::Value> = client
        .get(format!("{base}/device/{DEVICE}/notification?take=1000000&sortOrder=ASC"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    for n in &stored {
        if n["notification"] != "kill" {
            continue;
        }
        let seq = n["parameters"]["seq"].as_i64().expect("seq");
        assert!(seen.insert(seq), "seq {seq} stored twice");
    }
    let lost: Vec<_> = acked.difference(&seen).collect();
    assert!(lost.is_empty(), "{} acknowledged notifications lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    assert!(terminate(&mut child).success());
}
