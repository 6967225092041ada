//! Timestamps: epoch milliseconds inside the hub, the contract's `yyyy-MM-ddTHH:mm:ss.SSS` (UTC, no zone)
//! on the wire, and the lenient input forms of CONTRACT.md §1.4.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

use crate::error::ApiError;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Formats epoch milliseconds as `2018-03-15T15:04:25.123`.
pub fn format_ms(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
        None => "1970-01-01T00:00:00.000".to_string(),
    }
}

/// The earliest and latest instants the wire format writes (years 0000 to 9999): a timestamp outside
/// them is refused as unparseable, not stored to come back as `+39975-09-29T...`.
const EARLIEST_MS: i64 = -62_167_219_200_000;
const LATEST_MS: i64 = 253_402_300_799_999;

fn writable(ms: i64) -> Option<i64> {
    (EARLIEST_MS..=LATEST_MS).contains(&ms).then_some(ms)
}

/// Parses every accepted input form; `None` when the text is not a timestamp the hub can write back.
pub fn parse(text: &str) -> Option<i64> {
    parse_any(text).and_then(writable)
}

fn parse_any(text: &str) -> Option<i64> {
    let s = text.trim();
    if s.is_empty() {
        return None;
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().ok();
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    // Zone offsets without seconds or fractional digits, e.g. `2018-03-15T15:04+02:00`, are rare; the
    // common forms are handled below with a missing zone meaning UTC.
    let (body, zulu) = match s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        Some(b) => (b, true),
        None => (s, false),
    };
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(body, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    if !zulu {
        if let Ok(d) = NaiveDate::parse_from_str(body, "%Y-%m-%d") {
            return Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis());
        }
        if let Ok(t) = DateTime::parse_from_rfc2822(s) {
            return Some(t.timestamp_millis());
        }
    }
    None
}

/// Parses a timestamp given by a client, answering the contract's 400 when it cannot.
pub fn parse_input(text: &str) -> Result<i64, ApiError> {
    parse(text).ok_or_else(|| ApiError::bad_request("Unparseable timestamp"))
}

/// Parses a JSON timestamp field: a string in any accepted form or a number of epoch milliseconds.
pub fn parse_json(value: &serde_json::Value) -> Result<Option<i64>, ApiError> {
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => parse_input(s).map(Some),
        serde_json::Value::Number(n) => {
            n.as_i64().and_then(writable).map(Some).ok_or_else(|| ApiError::bad_request("Unparseable timestamp"))
        }
        _ => Err(ApiError::bad_request("Unparseable timestamp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_three_fraction_digits_and_no_zone() {
        assert_eq!(format_ms(1_521_126_265_123), "2018-03-15T15:04:25.123");
        assert_eq!(format_ms(1_521_126_265_000), "2018-03-15T15:04:25.000");
    }

    #[test]
    fn parses_every_documented_form() {
        let base = 1_521_126_265_123;
        assert_eq!(parse("2018-03-15T15:04:25.123"), Some(base));
        assert_eq!(parse("2018-03-15T15:04:25.123Z"), Some(base));
        assert_eq!(parse("2018-03-15T15:04:25.123456789"), Some(base));
        assert_eq!(parse("2018-03-15T17:04:25.123+02:00"), Some(base));
        assert_eq!(parse("2018-03-15T15:04:25Z"), Some(base - 123));
        assert_eq!(parse("2018-03-15T15:04:25"), Some(base - 123));
        assert_eq!(parse("2018-03-15"), Some(1_521_072_000_000));
        assert_eq!(parse("1521126265123"), Some(base));
        assert_eq!(parse("nonsense"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn only_timestamps_the_wire_format_can_write_are_accepted() {
        assert_eq!(format_ms(LATEST_MS), "9999-12-31T23:59:59.999");
        assert_eq!(format_ms(EARLIEST_MS), "0000-01-01T00:00:00.000");
        assert_eq!(parse("9999-12-31T23:59:59.999"), Some(LATEST_MS));
        assert_eq!(parse(&LATEST_MS.to_string()), Some(LATEST_MS));
        assert_eq!(parse(&(LATEST_MS + 1).to_string()), None);
        assert_eq!(parse(&(EARLIEST_MS - 1).to_string()), None);
        assert_eq!(parse("1199345373621439"), None);
        assert!(parse_json(&serde_json::json!(1_199_345_373_621_439_i64)).is_err());
        assert!(parse_json(&serde_json::json!(i64::MIN)).is_err());
        assert_eq!(parse_json(&serde_json::json!(1_521_126_265_123_i64)).unwrap(), Some(1_521_126_265_123));
    }
}
