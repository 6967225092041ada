//! `hivehub-rust-device`: runs the example device against a hub until Ctrl-C, reconnecting with a
//! backoff when the connection drops.
//!
//! Configuration: environment variables, overridden by command-line options.
//!
//! | option              | environment               | default            |
//! |---------------------|---------------------------|--------------------|
//! | `--host`            | `HIVEHUB_HOST`            | `127.0.0.1`        |
//! | `--port`            | `HIVEHUB_MQTT_PORT`       | `1883`             |
//! | `--login`           | `HIVEHUB_LOGIN`           | `dhadmin`          |
//! | `--password`        | `HIVEHUB_PASSWORD`        | (required)         |
//! | `--device-id`       | `DEVICE_ID`               | `rust-device-1`    |
//! | `--name`            | `DEVICE_NAME`             | the device id      |
//! | `--network-id`      | `DEVICE_NETWORK_ID`       | the user's first   |
//! | `--device-type-id`  | `DEVICE_TYPE_ID`          | the hub's default  |
//! | `--client-id`       | `MQTT_CLIENT_ID`          | the device id      |
//! | `--interval`        | `TELEMETRY_INTERVAL_SECS` | `10`               |
//! | `--quiet`           | –                         | verbose            |
//!
//! Example: `cargo run -p hivehub-rust-device -- --host 192.168.1.10 --password 's3cret' --interval 5`

use std::process::ExitCode;
use std::time::Duration;

use hivehub_rust_device::{run, DeviceConfig};
use tokio::sync::watch;

const USAGE: &str = "usage: hivehub-rust-device [--host H] [--port P] [--login L] [--password PW] \
[--device-id ID] [--name NAME] [--network-id N] [--device-type-id T] [--client-id C] [--interval SECS] [--quiet]
environment: HIVEHUB_HOST HIVEHUB_MQTT_PORT HIVEHUB_LOGIN HIVEHUB_PASSWORD DEVICE_ID DEVICE_NAME \
DEVICE_NETWORK_ID DEVICE_TYPE_ID MQTT_CLIENT_ID TELEMETRY_INTERVAL_SECS";

fn setting(args: &[String], option: &str, env: &str) -> Option<String> {
    let from_args = args.windows(2).rev().find(|w| w[0] == option).map(|w| w[1].clone());
    from_args.or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

fn number<T: std::str::FromStr>(args: &[String], option: &str, env: &str) -> Result<Option<T>, String> {
    match setting(args, option, env) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| format!("{option} / {env}: not a number: {v:?}")),
    }
}

fn config_from(args: &[String]) -> Result<DeviceConfig, String> {
    const OPTIONS: [&str; 10] = [
        "--host",
        "--port",
        "--login",
        "--password",
        "--device-id",
        "--name",
        "--network-id",
        "--device-type-id",
        "--client-id",
        "--interval",
    ];
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--quiet" => i += 1,
            "-h" | "--help" => return Err(String::new()),
            o if OPTIONS.contains(&o) && i + 1 < args.len() => i += 2,
            o => return Err(format!("unexpected argument {o:?}")),
        }
    }
    let password = setting(args, "--password", "HIVEHUB_PASSWORD")
        .ok_or("a password is required (--password or HIVEHUB_PASSWORD)")?;
    let mut config = DeviceConfig::new(
        setting(args, "--host", "HIVEHUB_HOST").unwrap_or_else(|| "127.0.0.1".into()),
        number(args, "--port", "HIVEHUB_MQTT_PORT")?.unwrap_or(1883),
        setting(args, "--login", "HIVEHUB_LOGIN").unwrap_or_else(|| "dhadmin".into()),
        password,
        setting(args, "--device-id", "DEVICE_ID").unwrap_or_else(|| "rust-device-1".into()),
    );
    if let Some(name) = setting(args, "--name", "DEVICE_NAME") {
        config.device_name = name;
    }
    if let Some(client_id) = setting(args, "--client-id", "MQTT_CLIENT_ID") {
        config.client_id = client_id;
    } else {
        config.client_id = config.device_id.clone();
    }
    config.network_id = number(args, "--network-id", "DEVICE_NETWORK_ID")?;
    config.device_type_id = number(args, "--device-type-id", "DEVICE_TYPE_ID")?;
    if let Some(secs) = number::<u64>(args, "--interval", "TELEMETRY_INTERVAL_SECS")? {
        config.telemetry_interval = Duration::from_secs(secs);
    }
    config.verbose = !args.iter().any(|a| a == "--quiet");
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match config_from(&args) {
        Ok(c) => c,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut backoff = Duration::from_secs(1);
    loop {
        let started = std::time::Instant::now();
        let result = run(config.clone(), stopped(stop_rx.clone())).await;
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        match result {
            Ok(stats) => {
                eprintln!("stopped: {stats:?}");
                return ExitCode::SUCCESS;
            }
            Err(e) if e.is_transient() => {
                eprintln!("{e}; reconnecting in {} s", backoff.as_secs());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(stop_rx.clone()) => return ExitCode::SUCCESS,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
}
