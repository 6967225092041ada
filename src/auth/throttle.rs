//! Throttling of failed logins, per login name and per source address: after a few free failures
//! every further attempt must wait a delay that doubles with each failure (up to a ceiling), so
//! guessing passwords — or locking an account out by failing on purpose — takes minutes instead of
//! milliseconds. Attempts refused by the throttle never reach the password check, so they neither
//! cost an Argon2 hash nor count towards the account lockout. State is in memory and bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures are forgotten after this long without a new one.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The longest delay between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// At most this many keys are tracked; beyond it the stalest are dropped first.
const CAPACITY: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

pub struct LoginThrottle {
    /// Failures allowed per key before delays start.
    free: u32,
    /// Delay after the first failure beyond the free ones; doubles with each further failure.
    base: Duration,
    entries: Mutex<HashMap<String, Failures>>,
}

impl LoginThrottle {
    pub fn new(free: u32, base: Duration) -> LoginThrottle {
        LoginThrottle { free, base, entries: Mutex::new(HashMap::new()) }
    }

    /// Free failures of a key: an address (`ip:...`) may be shared by many users behind one NAT, so
    /// it gets several times a login name's budget.
    fn free_for(&self, key: &str) -> u32 {
        if key.starts_with("ip:") {
            self.free.saturating_mul(5)
        } else {
            self.free
        }
    }

    fn delay(&self, free: u32, count: u32) -> Duration {
        if count < free || self.base.is_zero() {
            return Duration::ZERO;
        }
        let doublings = (count - free).min(20);
        self.base.saturating_mul(1 << doublings).min(MAX_DELAY)
    }

    /// `Err(wait)` when any of `keys` must still wait before its next attempt.
    pub fn check(&self, keys: &[String]) -> Result<(), Duration> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut wait = Duration::ZERO;
        for key in keys {
            if let Some(f) = entries.get(key) {
                let ready = f.last + self.delay(self.free_for(key), f.count);
                if ready > now {
                    wait = wait.max(ready - now);
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Counts a failed attempt against every key.
    pub fn failed(&self, keys: &[String]) {
        crate::metrics::auth_failure(crate::metrics::Credential::Password);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() + keys.len() > CAPACITY {
            entries.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            while entries.len() + keys.len() > CAPACITY {
                let Some(stalest) = entries.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone()) else {
                    break;
                };
                entries.remove(&stalest);
            }
        }
        for key in keys {
            let f = entries.entry(key.clone()).or_insert(Failures { count: 0, last: now });
            if now.duration_since(f.last) >= FORGET_AFTER {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
        }
    }

    /// A successful login clears its login name's failures (not its address's: one good password
    /// must not reset the guessing budget of a whole address).
    pub fn succeeded(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_the_free_failures_and_double() {
        let t = LoginThrottle::new(3, Duration::from_millis(100));
        let keys = vec!["login:a".to_string()];
        for _ in 0..3 {
            assert!(t.check(&keys).is_ok());
            t.failed(&keys);
        }
        let wait = t.check(&keys).unwrap_err();
        assert!(wait > Duration::from_millis(50) && wait <= Duration::from_millis(100), "{wait:?}");
        t.failed(&keys);
        assert!(t.check(&keys).unwrap_err() > Duration::from_millis(150));
        assert_eq!(t.delay(3, 100), MAX_DELAY);
        // Another key is unaffected; success clears the login key.
        assert!(t.check(&["login:b".to_string()]).is_ok());
        t.succeeded("login:a");
        assert!(t.check(&keys).is_ok());
    }
}
