//! Remembers recently verified login/password pairs for a few minutes, so a device that reconnects
//! with its credentials (MQTT CONNECT, REST login) does not pay an Argon2 hash every time — a connect
//! storm of known devices would otherwise be limited to ~100 logins/s per core. Only successes are
//! remembered (failed attempts always run the hash and count towards the lockout), entries are keyed
//! by a keyed SHA-256 of login and password (the key is random per process, nothing leaves memory),
//! and an entry only counts while the user's stored password hash is still the one it was checked
//! against, so a password change takes effect at once. The cache holds at most `capacity` entries; when
//! full, the least recently used one makes room.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::model::User;

type Fingerprint = [u8; 32];

struct Entry {
    user_id: i64,
    password_hash: String,
    expires: Instant,
    /// When the entry was last remembered or used: its key in `Lru::order`.
    used: u64,
}

/// A map bounded to `capacity` entries that evicts the least recently used one.
#[derive(Default)]
struct Lru {
    entries: HashMap<Fingerprint, Entry>,
    /// `Entry::used` → fingerprint, oldest first.
    order: BTreeMap<u64, Fingerprint>,
    clock: u64,
}

impl Lru {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The entry, marked as just used.
    fn get(&mut self, fp: &Fingerprint) -> Option<&Entry> {
        let now = self.tick();
        let entry = self.entries.get_mut(fp)?;
        self.order.remove(&entry.used);
        entry.used = now;
        self.order.insert(now, *fp);
        Some(entry)
    }

    fn remove(&mut self, fp: &Fingerprint) {
        if let Some(old) = self.entries.remove(fp) {
            self.order.remove(&old.used);
        }
    }

    fn insert(&mut self, fp: Fingerprint, mut entry: Entry, capacity: usize) {
        self.remove(&fp);
        if capacity == 0 {
            return;
        }
        while self.entries.len() >= capacity {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.entries.remove(&oldest);
        }
        entry.used = self.tick();
        self.order.insert(entry.used, fp);
        self.entries.insert(fp, entry);
    }
}

pub struct CredentialCache {
    key: [u8; 32],
    ttl: Duration,
    capacity: usize,
    entries: Mutex<Lru>,
}

impl CredentialCache {
    /// Remembers successes for `ttl`, at most `capacity` of them (the least recently used goes first).
    pub fn new(ttl: Duration, capacity: usize) -> CredentialCache {
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        CredentialCache { key, ttl, capacity, entries: Mutex::new(Lru::default()) }
    }

    fn fingerprint(&self, login: &str, password: &str) -> Fingerprint {
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
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = entries.get(&fp) else { return false };
        if e.expires <= Instant::now() {
            entries.remove(&fp);
            return false;
        }
        e.user_id == user.id && e.password_hash == user.password_hash
    }

    pub fn remember(&self, login: &str, password: &str, user: &User) {
        if self.ttl.is_zero() {
            return;
        }
        let fp = self.fingerprint(login, password);
        let entry = Entry {
            user_id: user.id,
            password_hash: user.password_hash.clone(),
            expires: Instant::now() + self.ttl,
            used: 0,
        };
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(fp, entry, self.capacity);
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

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_entry_only() {
        let cache = CredentialCache::new(Duration::from_secs(60), 3);
        let u = user("h1");
        for password in ["a", "b", "c"] {
            cache.remember("dev", password, &u);
        }
        // "a" is used again, so "b" is now the least recently used.
        assert!(cache.verified("dev", "a", &u));
        cache.remember("dev", "d", &u);
        assert!(cache.verified("dev", "a", &u));
        assert!(!cache.verified("dev", "b", &u));
        assert!(cache.verified("dev", "c", &u));
        assert!(cache.verified("dev", "d", &u));
        for i in 0..100 {
            cache.remember("dev", &format!("p{i}"), &u);
        }
        assert!(cache.entries.lock().unwrap().entries.len() <= 3);
        assert!(cache.verified("dev", "p99", &u) && cache.verified("dev", "p98", &u));
    }
}
