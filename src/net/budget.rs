//! Fits the connection caps under the process's open-file limit. Every connection is a file descriptor;
//! a process that runs out of them cannot accept anything any more — not `/info`, not a CONNACK — and
//! the database cannot open files either. So `[http] max_connections + [mqtt] max_connections` plus a
//! reserve must fit under RLIMIT_NOFILE, and the caps are lowered (with a warning) when they do not.

use crate::config::Settings;
use crate::net::accept::REFUSAL_SLOTS;

/// Descriptors kept free besides the database pool and the refusal slots: listeners, the database's
/// own files (WAL, journal), log files, the runtime's internals.
const RESERVE: u64 = 64;

/// Raises the soft open-file limit to the hard limit, as servers commonly do (the soft default of 1024
/// is a leftover of `select`), and returns the soft limit in force; `None` when it cannot be read.
pub fn raise_open_file_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit only read and write the `rlimit` passed by reference.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        // An unlimited hard limit is not a usable soft value on Linux (capped by fs.nr_open).
        let target = if limit.rlim_max == libc::RLIM_INFINITY { 1 << 20 } else { limit.rlim_max };
        if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < target {
            let raised = libc::rlimit { rlim_cur: target, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = target;
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux only
        Some(limit.rlim_cur as u64)
    }
}

/// Lowers `http.max_connections` and (when MQTT is enabled) `mqtt.max_connections` in proportion so
/// that both, plus the reserve, fit under the open-file limit; warns when it lowers them.
pub fn fit_to_open_file_limit(settings: &mut Settings) {
    let Some(limit) = raise_open_file_limit() else {
        tracing::warn!("cannot read the open-file limit; connection caps are used as configured");
        return;
    };
    let reserve = RESERVE + u64::from(settings.database.max_connections) + 2 * REFUSAL_SLOTS as u64;
    let http = settings.http.max_connections;
    let mqtt = if settings.mqtt.enabled { settings.mqtt.max_connections } else { 0 };
    let (fitted_http, fitted_mqtt) = fit(http, mqtt, limit.saturating_sub(reserve));
    if (fitted_http, fitted_mqtt) == (http, mqtt) {
        tracing::info!(
            open_file_limit = limit,
            http_max_connections = http,
            mqtt_max_connections = mqtt,
            "connection caps fit under the open-file limit"
        );
        return;
    }
    tracing::warn!(
        open_file_limit = limit,
        reserve,
        http_max_connections = fitted_http,
        mqtt_max_connections = fitted_mqtt,
        configured_http = http,
        configured_mqtt = mqtt,
        "connection caps lowered to fit under the open-file limit (raise `ulimit -n` to allow more)"
    );
    settings.http.max_connections = fitted_http;
    if settings.mqtt.enabled {
        settings.mqtt.max_connections = fitted_mqtt;
    }
}

/// `(http, mqtt)` scaled down in proportion to sum to at most `available` (each keeps at least one
/// slot while it had one); unchanged when they already fit.
fn fit(http: usize, mqtt: usize, available: u64) -> (usize, usize) {
    let total = (http + mqtt) as u64;
    if total <= available {
        return (http, mqtt);
    }
    let scale = |n: usize| -> usize {
        let scaled = (n as u128 * available as u128 / total as u128) as usize;
        if n > 0 {
            scaled.max(1)
        } else {
            0
        }
    };
    let http_fitted = scale(http);
    let mqtt_fitted = scale(mqtt);
    (http_fitted, mqtt_fitted)
}

#[cfg(test)]
mod tests {
    use super::fit;

    #[test]
    fn caps_that_fit_are_kept() {
        assert_eq!(fit(10_000, 20_000, 30_000), (10_000, 20_000));
        assert_eq!(fit(100, 0, 100), (100, 0));
    }

    #[test]
    fn caps_that_do_not_fit_shrink_in_proportion() {
        assert_eq!(fit(10_000, 20_000, 900), (300, 600));
        let (h, m) = fit(10_000, 20_000, 19_840);
        assert!(h + m <= 19_840 && h > 6_000 && m > 13_000, "{h} {m}");
        assert_eq!(fit(5_000, 0, 1_000), (1_000, 0));
    }

    #[test]
    fn each_enabled_side_keeps_a_slot() {
        assert_eq!(fit(10, 10, 0), (1, 1));
    }
}
