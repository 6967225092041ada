//! The process's log: `[log] format` ("text" or "json", one object per line) and `[log] level`, both
//! overridden by `RUST_LOG` when it is set. Levels used across the hub: `info` for the process's own
//! lifecycle (starting, listening, stopped) and rare operational events, `warn`/`error` for what an
//! operator must look at, `debug` for one line per connection lifecycle event (accepted, authenticated,
//! closed and why), never a line per message above `debug`.

use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Targets kept quiet unless `[log] level` names them: sqlx logs every slow statement at info, and
/// the embedded MQTT router's own logs are replaced by the hub's.
const QUIET: &str = "sqlx=warn,rumqttd=off";

/// The filter `[log] level` means: a bare level (`info`) keeps the noisy libraries quiet; a level with
/// directives (`info,hivehub::mqtt=debug`) is used as written.
pub fn filter_directives(level: &str) -> String {
    let level = level.trim();
    match level.contains('=') {
        true => level.to_string(),
        false => format!("{},{QUIET}", if level.is_empty() { "info" } else { level }),
    }
}

/// Whether `[log] level` is a valid filter (for `check-config`).
pub fn check_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    // A bare word would parse as a target name: only the level names are levels.
    if !level.contains(['=', ',']) && !LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
        return Err(format!("log.level = {level:?} is not one of {} (or a RUST_LOG-style filter)", LEVELS.join(", ")));
    }
    EnvFilter::try_new(filter_directives(level)).map(|_| ()).map_err(|e| format!("log.level = {level:?}: {e}"))
}

/// The admin commands' log: warnings and errors on stderr (stdout carries their output: a token, a
/// password), `RUST_LOG` when set.
pub fn init_for_commands() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter_directives("warn")));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Installs the process's subscriber. `RUST_LOG`, when set and valid, replaces `[log] level`.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter_directives(&settings.level)))
        .unwrap_or_else(|_| EnvFilter::new(filter_directives("info")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = match settings.format.as_str() {
        "json" => builder.json().with_current_span(false).try_init(),
        // Colour codes only on a terminal, so redirected logs stay plain text.
        _ => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())).try_init(),
    };
    // Already installed (an embedding program or a test did it): theirs stays.
    let _ = installed;
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bare_level_keeps_libraries_quiet_and_directives_are_taken_as_written() {
        assert_eq!(super::filter_directives("warn"), "warn,sqlx=warn,rumqttd=off");
        assert_eq!(super::filter_directives(""), "info,sqlx=warn,rumqttd=off");
        assert_eq!(super::filter_directives("info,hivehub::mqtt=debug"), "info,hivehub::mqtt=debug");
        assert!(super::check_level("debug").is_ok());
        assert!(super::check_level("loud").is_err());
    }
}
