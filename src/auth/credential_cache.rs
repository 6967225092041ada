//! Remembers recently verified login/password pairs for a few minutes, so a device that reconnects
//! with its credentials (MQTT CONNECT, REST login) does not pay an Argon2 hash every time — a connect
//! storm of known devices would otherwise be limited to ~100 logins/s per core. Only successes are
//! remembered (failed attempts always run the hash and count towards the lockout), entries are keyed
//! by a keyed SHA-256 of login and password (the key is random per process, nothing leaves memory),
//! and an entry only counts while the user's stored password hash is still the one it was checked
//! against, so a password change takes effect at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::model::User;

struct Entry {
    user_id: i64,
    password_hash: String,
    expires: Instant,
}

pub struct CredentialCache {
    key: [u8; 32],
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl CredentialCache {
    pub fn new(ttl: Duration, capacity: usize) -> CredentialCache {
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        CredentialCache { key, ttl, capacity, entries: Mutex::new(HashMap::new()) }
    }

    fn fingerprint(&self, login: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((login.len() as u64).to_be_bytes());
        h.update(login.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether `password` was verified for `user` recently and the user's password is unchanged.
    pub fn verified(&self, login: &str, password: &str, user: &User) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let fp = self.fingerprint(login, password);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(&fp).is_some_and(|e| {
            e.user_id == user.id && e.password_hash == user.password_hash && e.expires > Instant::now()
        })
    }

    pub fn remember(&self, login: &str, password: &str, user: &User) {
        if self.ttl.is_zero() {
            return;
        }
        let fp = self.fingerprint(login, password);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries
            .insert(fp, Entry { user_id: user.id, password_hash: user.password_hash.clone(), expires: now + self.ttl });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(hash: &str) -> User {
        User {
            id: 7,
            login: "dev".into(),
            password_hash: hash.into(),
            password_salt: String::new(),
            role: 1,
            status: 0,
            login_attempts: 0,
            locked_until: None,
            last_login: None,
            data: None,
            intro_reviewed: false,
            all_device_types_available: true,
        }
    }

    #[test]
    fn remembers_only_the_same_password_and_hash() {
        let cache = CredentialCache::new(Duration::from_secs(60), 10);
        let u = user("h1");
        assert!(!cache.verified("dev", "secret", &u));
        cache.remember("dev", "secret", &u);
        assert!(cache.verified("dev", "secret", &u));
        assert!(!cache.verified("dev", "secret2", &u));
        assert!(!cache.verified("de", "vsecret", &u));
        // A changed password hash invalidates the entry.
        assert!(!cache.verified("dev", "secret", &user("h2")));
        assert!(!CredentialCache::new(Duration::ZERO, 10).verified("dev", "secret", &u));
    }
}
