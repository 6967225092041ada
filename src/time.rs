//! Timestamps: epoch milliseconds inside the hub, the contract's `yyyy-MM-ddTHH:mm:ss.SSS` (UTC, no zone)
//! on the wire, and the lenient input forms of CONTRACT.md §1.4.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

use crate::error::ApiError;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Formats epoch milliseconds as `2018-03-15T15:04:25.123`.
///
/// Every stored message, every delivery and every answer carries a timestamp, so this runs once per
/// message per recipient format; chrono's `format` interprets its pattern each time (2.6 % of a REST
/// insert's CPU), while the arithmetic below is a few dozen instructions. Instants outside the
/// years 0000–9999, which the hub never stores (see [`writable`]), still go through chrono.
pub fn format_ms(ms: i64) -> String {
    if !(EARLIEST_MS..=LATEST_MS).contains(&ms) {
        return match Utc.timestamp_millis_opt(ms).single() {
            Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
            None => "1970-01-01T00:00:00.000".to_string(),
        };
    }
    let days = ms.div_euclid(86_400_000);
    let of_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let mut out = String::with_capacity(23);
    let mut digits = |value: i64, width: u32, then: Option<char>| {
        for place in (0..width).rev() {
            out.push(char::from(b'0' + (value / 10_i64.pow(place) % 10) as u8));
        }
        out.extend(then);
    };
    digits(year, 4, Some('-'));
    digits(month, 2, Some('-'));
    digits(day, 2, Some('T'));
    digits(of_day / 3_600_000, 2, Some(':'));
    digits(of_day / 60_000 % 60, 2, Some(':'));
    digits(of_day / 1000 % 60, 2, Some('.'));
    digits(of_day % 1000, 3, None);
    out
}

/// Year, month and day of the proleptic Gregorian calendar for days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
    fn the_formatter_writes_what_chrono_writes() {
        let chrono_format =
            |ms: i64| Utc.timestamp_millis_opt(ms).single().unwrap().format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
        // Leap days, century years (1900 is not a leap year, 2000 is), the epoch, negative instants,
        // both ends of the writable range, and a pseudo-random walk across it.
        let mut samples = vec![
            0,
            -1,
            1,
            951_782_400_000,
            951_868_799_999,
            -2_203_891_200_000,
            -2_208_988_800_001,
            4_107_542_400_000,
            EARLIEST_MS,
            EARLIEST_MS + 86_399_999,
            LATEST_MS,
            LATEST_MS - 86_400_000,
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(EARLIEST_MS + (x % (LATEST_MS - EARLIEST_MS + 1) as u64) as i64);
        }
        for ms in samples {
            assert_eq!(format_ms(ms), chrono_format(ms), "{ms}");
        }
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
