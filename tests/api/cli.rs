//! The admin commands of the `hivehub` binary (`user`, `admin`, `token`, `db`, `check-config`) on a
//! real database: first with no hub running, then against the database of a running hub, whose live
//! sessions must follow what the command changed (a locked user's WebSocket and MQTT sessions close,
//! an old password stops working at once — also one the hub remembers as recently verified).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use rumqttc::ConnectReturnCode;
use serde_json::{json, Value};

use super::TestHub;
use crate::common::mqtt::{connect_code, with_credentials, Mqtt};
use crate::common::ws::Ws;
use crate::common::{ADMIN_LOGIN, ADMIN_PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_hivehub");
const CLIENT_PASSWORD: &str = "client-pass-1";
/// A change reaches a running hub's sessions within a second or so (SQLite: the hub polls every
/// second); the assertions allow more on a slow machine.
const WITHIN: Duration = Duration::from_secs(10);

/// What a run of the binary gave.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }

    /// The value of `key=` on stdout.
    fn field(&self, key: &str) -> String {
        let start = self.stdout.find(&format!("{key}=")).unwrap_or_else(|| panic!("{key}= in {self:?}"));
        self.stdout[start + key.len() + 1..].split_whitespace().next().unwrap().to_string()
    }
}

/// `hivehub ARGS` on the database at `url` (the environment a test hub is configured with), in an
/// empty directory, with `stdin` piped in.
async fn hivehub(url: &str, args: &[&str], stdin: &str) -> Run {
    let (url, stdin) = (url.to_string(), stdin.to_string());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .args(&args)
            .current_dir(dir.path())
            .env("HIVEHUB__DATABASE__URL", &url)
            .env("HIVEHUB__AUTH__ADMIN_LOGIN", ADMIN_LOGIN)
            .env("HIVEHUB__AUTH__ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("HIVEHUB__AUTH__JWT_SECRET")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

async fn users(url: &str) -> Vec<Value> {
    let run = hivehub(url, &["user", "list", "--json"], "").await.ok();
    serde_json::from_str::<Value>(&run.stdout).unwrap().as_array().unwrap().clone()
}

fn user<'a>(users: &'a [Value], login: &str) -> &'a Value {
    users.iter().find(|u| u["login"] == login).unwrap_or_else(|| panic!("{login} in {users:?}"))
}

#[tokio::test]
async fn every_command_works_on_a_database_no_hub_is_serving() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let url = database.url.as_str();

    // The first command on a new database seeds it as a hub would (administrator, sample network).
    let alice = hivehub(url, &["user", "add", "--login", "alice"], "").await.ok();
    let alice_password = alice.field("password");
    assert!(alice_password.len() >= 20, "{alice:?}");
    hivehub(url, &["user", "add", "--login", "bob", "--password", "bob-pass-1", "--role", "admin"], "").await.ok();
    let listed = users(url).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(user(&listed, ADMIN_LOGIN)["role"], 0);
    assert_eq!((user(&listed, "alice")["role"].clone(), user(&listed, "bob")["role"].clone()), (json!(1), json!(0)));
    let table = hivehub(url, &["user", "list"], "").await.ok();
    assert!(table.stdout.contains("alice") && table.stdout.contains("client"), "{table:?}");

    // The REST API's rules, and clear errors with exit code 1.
    for (args, message) in [
        (vec!["user", "add", "--login", "alice"], "already exists"),
        (vec!["user", "add", "--login", "a!"], "length of login"),
        (vec!["user", "add", "--login", "carol", "--password", "short"], "from 6 to 128"),
        (vec!["user", "lock", "--login", "nobody"], "no user with login `nobody`"),
        (vec!["token", "create", "--login", "alice", "--actions", "Fly"], "unknown action `Fly`"),
        (vec!["admin", "reset-password", "--login", "alice"], "not an administrator"),
    ] {
        let run = hivehub(url, &args, "").await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(run.stderr.contains(message), "{args:?}: {run:?}");
    }
    // Bad arguments are clap's exit code 2; --help works on every command.
    for args in
        [vec!["user", "add"], vec!["user", "frobnicate"], vec!["token", "create", "--login", "a", "--ttl", "3w"]]
    {
        assert_eq!(hivehub(url, &args, "").await.code, 2, "{args:?}");
    }
    for command in [
        "user add",
        "user passwd",
        "user lock",
        "user unlock",
        "user list",
        "admin reset-password",
        "token create",
        "db backup",
        "check-config",
    ] {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--help");
        let run = hivehub(url, &args, "").await.ok();
        assert!(run.stdout.contains("Usage: hivehub"), "{command}: {run:?}");
    }

    // passwd from stdin, --password and --generate; lock and unlock.
    hivehub(url, &["user", "passwd", "--login", "alice"], "alice-pass-2\n").await.ok();
    let generated = hivehub(url, &["user", "passwd", "--login", "bob", "--generate"], "").await.ok();
    let bob_password = generated.field("password");
    let empty = hivehub(url, &["user", "passwd", "--login", "alice"], "").await;
    assert!(empty.code == 1 && empty.stderr.contains("no password on stdin"), "{empty:?}");
    hivehub(url, &["user", "lock", "--login", "bob"], "").await.ok();
    assert_eq!(user(&users(url).await, "bob")["status"], 1);
    hivehub(url, &["user", "unlock", "--login", "bob"], "").await.ok();
    assert_eq!(user(&users(url).await, "bob")["status"], 0);
    let reset = hivehub(url, &["admin", "reset-password", "--login", "bob"], "").await.ok();
    let bob_reset = reset.field("password");
    assert_ne!(bob_reset, bob_password);
    let token = hivehub(url, &["token", "create", "--login", "alice", "--ttl", "1h"], "").await.ok();
    let alice_token = token.stdout.trim().to_string();

    // A backup (SQLite) is a database the commands open; PostgreSQL names pg_dump and fails.
    let backup = dir.path().join("backup.db");
    let run = hivehub(url, &["db", "backup", backup.to_str().unwrap()], "").await;
    if TestHub::BACKEND == "sqlite" {
        assert_eq!(run.code, 0, "{run:?}");
        let copy = format!("sqlite://{}", backup.display());
        assert_eq!(users(&copy).await.len(), 3);
        let again = hivehub(url, &["db", "backup", backup.to_str().unwrap()], "").await;
        assert!(again.code == 1 && again.stderr.contains("already exists"), "{again:?}");
    } else {
        assert!(run.code == 1 && run.stderr.contains("pg_dump"), "{run:?}");
        assert!(!backup.exists());
    }

    // A hub started on the database afterwards honours all of it.
    let hub = TestHub::start_on(url.to_string(), |_| {}).await;
    hub.login("alice", "alice-pass-2").await;
    hub.login("bob", &bob_reset).await;
    let refused = hub
        .request(reqwest::Method::POST, None, "/token", Some(json!({"login": "alice", "password": alice_password})))
        .await;
    assert_eq!(refused.status, 401);
    let me = hub.get(&alice_token, "/user/current").await.expect(200);
    assert_eq!(me["login"], "alice");
    hub.stop().await;
    drop(database);
}

#[tokio::test]
async fn check_config_reports_every_problem() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[http]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[http]\nlisen = \"x\"\n[database]\nsynchronous = \"fulll\"\n[mqtt]\nenabled = \"yes\"\n")
        .unwrap();
    let run = hivehub("sqlite://unused.db", &["check-config", "--config", good.to_str().unwrap()], "").await.ok();
    assert!(run.stdout.contains("configuration OK") && run.stdout.contains("127.0.0.1:8080"), "{run:?}");
    let run = hivehub("sqlite://unused.db", &["check-config", "--config", bad.to_str().unwrap()], "").await;
    assert_eq!(run.code, 1, "{run:?}");
    for problem in ["3 configuration problems", "http.lisen", "\"fulll\"", "mqtt.enabled must be true or false"] {
        assert!(run.stderr.contains(problem), "{problem}: {run:?}");
    }
    // Values only `serve` would trip over are reported too, all of them.
    std::fs::write(&bad, "[http]\nlisten = \"nowhere\"\n[mqtt]\ntls_listen = \"127.0.0.1:0\"\n").unwrap();
    let run = hivehub("mysql://db", &["check-config", "--config", bad.to_str().unwrap()], "").await;
    assert_eq!(run.code, 1, "{run:?}");
    for problem in ["database.url", "http.listen = \"nowhere\"", "mqtt.tls_cert_file is required", "mqtt.tls_key_file"]
    {
        assert!(run.stderr.contains(problem), "{problem}: {run:?}");
    }
    // Both kinds at once: an unknown key and an address that is not one.
    std::fs::write(&bad, "[http]\nlisen = \"x\"\nlisten = \"nowhere\"\n").unwrap();
    let run = hivehub("sqlite://unused.db", &["check-config", "--config", bad.to_str().unwrap()], "").await;
    assert_eq!(run.code, 1, "{run:?}");
    for problem in ["2 configuration problems", "http.lisen", "http.listen = \"nowhere\""] {
        assert!(run.stderr.contains(problem), "{problem}: {run:?}");
    }
    let missing = hivehub("sqlite://unused.db", &["check-config", "--config", "/nonexistent/hub.toml"], "").await;
    assert!(missing.code == 1 && missing.stderr.contains("cannot read"), "{missing:?}");
}

#[tokio::test]
async fn changes_reach_a_running_hub_and_its_live_sessions() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let url = hub.database_settings().url.clone();
    let url = url.as_str();
    let net = hub.network("cli").await;
    let (_uid, token) = hub.client_user("cl-user", &[net]).await;

    // Lock: the live MQTT and WebSocket sessions close, the token and the password stop working.
    let mut mqtt = Mqtt::login(&hub, "cl-1", "cl-user", CLIENT_PASSWORD).await;
    let mut ws = Ws::authenticated(&hub, &token).await;
    ws.subscribe("notification/subscribe", json!({})).await;
    hivehub(url, &["user", "lock", "--login", "cl-user"], "").await.ok();
    assert!(mqtt.closed_within(WITHIN).await, "the locked user's MQTT session is still open");
    assert!(ws.closed_within(WITHIN).await.is_some(), "the locked user's WebSocket session is still open");
    assert_eq!(hub.get(&token, "/user/current").await.status, 401);
    let refused = connect_code(with_credentials(&hub, "cl-2", "cl-user", CLIENT_PASSWORD)).await;
    assert_ne!(refused, Ok(ConnectReturnCode::Success));

    // Unlock, then change a password the hub has just verified (and remembers for a while).
    hivehub(url, &["user", "unlock", "--login", "cl-user"], "").await.ok();
    Mqtt::login(&hub, "cl-3", "cl-user", CLIENT_PASSWORD).await.disconnect().await;
    hivehub(url, &["user", "passwd", "--login", "cl-user", "--password", "client-pass-2"], "").await.ok();
    let old = connect_code(with_credentials(&hub, "cl-4", "cl-user", CLIENT_PASSWORD)).await;
    assert_ne!(old, Ok(ConnectReturnCode::Success), "the old password still connects");
    Mqtt::login(&hub, "cl-5", "cl-user", "client-pass-2").await.disconnect().await;

    // A user added and a token created by the command work on the running hub at once.
    let added = hivehub(url, &["user", "add", "--login", "cl-new"], "").await.ok();
    hub.login("cl-new", &added.field("password")).await;
    let net_arg = net.to_string();
    let args = ["token", "create", "--login", "cl-user", "--actions", "GetNetwork", "--networks", &net_arg];
    let limited = hivehub(url, &args, "").await.ok().stdout.trim().to_string();
    assert_eq!(hub.get(&limited, &format!("/network/{net}")).await.expect(200)["id"], net);
    assert_eq!(hub.get(&limited, "/device").await.status, 403);

    // The administrator's lost password: a new one, printed once; the old one is refused.
    let reset = hivehub(url, &["admin", "reset-password"], "").await.ok();
    hub.login(ADMIN_LOGIN, &reset.field("password")).await;
    let body = json!({"login": ADMIN_LOGIN, "password": ADMIN_PASSWORD});
    assert_eq!(hub.request(reqwest::Method::POST, None, "/token", Some(body)).await.status, 401);

    // An online backup while the hub keeps writing (SQLite); PostgreSQL names pg_dump.
    let device = "cli-dev";
    hub.device(device, net).await;
    let writes = {
        let (client, url, admin) =
            (hub.client.clone(), hub.url(&format!("/device/{device}/notification")), hub.admin.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let body = json!({"notification": "n", "parameters": {"i": i}});
                let _ = client.post(&url).bearer_auth(&admin).json(&body).send().await;
            }
        })
    };
    let backup = hub.dir.path().join("live-backup.db");
    let run = hivehub(url, &["db", "backup", backup.to_str().unwrap()], "").await;
    writes.await.unwrap();
    if TestHub::BACKEND == "sqlite" {
        assert_eq!(run.code, 0, "{run:?}");
        let copy = format!("sqlite://{}", backup.display());
        assert!(users(&copy).await.iter().any(|u| u["login"] == "cl-new"));
    } else {
        assert!(run.code == 1 && run.stderr.contains("pg_dump"), "{run:?}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn serve_writes_json_logs_when_asked() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let url = database.url.clone();
    let work = dir.path().to_path_buf();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut child = Command::new(BIN)
            .arg("serve")
            .current_dir(&work)
            .env("HIVEHUB__DATABASE__URL", &url)
            .env("HIVEHUB__HTTP__LISTEN", "127.0.0.1:0")
            .env("HIVEHUB__MQTT__LISTEN", "127.0.0.1:0")
            .env("HIVEHUB__AUTH__ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("HIVEHUB__LOG__FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
            let listening = line.contains("MQTT broker listening");
            lines.push(line);
            if listening || lines.len() > 50 {
                break;
            }
        }
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let _ = child.wait();
        lines
    })
    .await
    .unwrap();
    // Every log line is one JSON object with a level, a target and the message among its fields.
    let logs: Vec<Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(logs.iter().any(|l| l["fields"]["message"] == "hivehub listening"), "{lines:?}");
    assert!(logs.iter().all(|l| l["level"].is_string() && l["target"].is_string()), "{lines:?}");
    assert_eq!(logs.len(), lines.len(), "a line that is not JSON: {lines:?}");
    drop(database);
}
