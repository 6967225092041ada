//! `hivehub check-config`: loads the configuration as `serve` would and reports every problem — those
//! loading finds (unknown keys and variables, wrong types, values outside their set) and the values
//! `serve` would only trip over later (addresses, files, the database URL) — without starting anything.

use std::net::ToSocketAddrs;

use super::{CliError, ConfigArg};
use crate::config::Settings;
use crate::store::{redact, URL_FORMS};

pub fn check_config(config: &ConfigArg) -> Result<(), CliError> {
    // Loading problems and the checks of whatever loaded, all in one report.
    let (settings, mut found) = Settings::load_checked(config.config.as_deref());
    if let Some(settings) = &settings {
        found.extend(problems(settings));
    }
    let settings = match settings {
        Some(settings) if found.is_empty() => settings,
        _ => return Err(report(&found)),
    };
    let source = match config.config.as_deref() {
        Some(path) => path,
        None if std::path::Path::new("broker.toml").exists() => "broker.toml",
        None => "built-in defaults",
    };
    println!("configuration OK ({source} and HIVEHUB__ variables)");
    println!("  database  {}", redact(&settings.database.url));
    println!("  http      {}", settings.http.listen);
    if settings.mqtt.enabled {
        for (name, addr) in [
            ("mqtt", &settings.mqtt.listen),
            ("mqtt-ws", &settings.mqtt.ws_listen),
            ("mqtt-tls", &settings.mqtt.tls_listen),
        ] {
            if !addr.is_empty() {
                println!("  {name:<9} {addr}");
            }
        }
    }
    Ok(())
}

fn report(problems: &[String]) -> CliError {
    let noun = if problems.len() == 1 { "problem" } else { "problems" };
    CliError(format!("{} configuration {noun}:\n  {}", problems.len(), problems.join("\n  ")))
}

/// What is wrong with loaded settings, all of it.
pub fn problems(s: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let url = s.database.url.trim();
    if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        out.push(format!("database.url `{}` is not one of {URL_FORMS}", redact(url)));
    }
    let mut address = |key: &str, value: &str| {
        if value.to_socket_addrs().map(|mut a| a.next().is_none()).unwrap_or(true) {
            out.push(format!("{key} = {value:?} is not a host:port address"));
        }
    };
    address("http.listen", &s.http.listen);
    if s.mqtt.enabled {
        address("mqtt.listen", &s.mqtt.listen);
        for (key, value) in [("mqtt.ws_listen", &s.mqtt.ws_listen), ("mqtt.tls_listen", &s.mqtt.tls_listen)] {
            if !value.is_empty() {
                address(key, value);
            }
        }
    }
    if s.metrics.enabled && !s.metrics.listen.is_empty() {
        address("metrics.listen", &s.metrics.listen);
    }
    if s.mqtt.enabled && !s.mqtt.tls_listen.is_empty() {
        for (key, file) in [("mqtt.tls_cert_file", &s.mqtt.tls_cert_file), ("mqtt.tls_key_file", &s.mqtt.tls_key_file)]
        {
            if file.is_empty() {
                out.push(format!("{key} is required when mqtt.tls_listen is set"));
            } else if let Err(e) = std::fs::File::open(file) {
                out.push(format!("{key} = {file:?}: {e}"));
            }
        }
    }
    if let Err(e) = crate::logging::check_level(&s.log.level) {
        out.push(e);
    }
    let paths = [
        ("http.rest_prefix", &s.http.rest_prefix),
        ("http.websocket_path", &s.http.websocket_path),
        ("metrics.path", &s.metrics.path),
    ];
    for (key, path) in paths {
        if !path.starts_with('/') {
            out.push(format!("{key} = {path:?} must start with /"));
        }
    }
    out
}
