//! Password hashing. New hashes use Argon2id (PHC string in `password_hash`, `password_salt` empty).
//! Hashes imported from a DeviceHive database (`base64(SHA-256(salt + password))` with a separate salt)
//! still verify, so an existing user base can be migrated without resetting passwords; each is replaced
//! by an Argon2 hash at the user's first successful login (`upgrade_legacy`).

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Hashes a password for storage. Returns (hash, salt); the salt lives inside the PHC string.
pub fn hash(password: &str) -> (String, String) {
    let salt = SaltString::generate(&mut OsRng);
    let phc = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string();
    (phc, String::new())
}

/// Whether a stored hash is in the imported DeviceHive format (SHA-256 with a separate salt).
pub fn is_legacy(stored_hash: &str) -> bool {
    !stored_hash.starts_with("$argon2")
}

/// After a successful login with `password`: an imported DeviceHive hash is replaced by an Argon2 one
/// (salt cleared) in the database and in `user`. Best effort — a failed write is logged and the login
/// goes on — and a password changed meanwhile is never overwritten.
pub async fn upgrade_legacy(store: &crate::store::Store, user: &mut crate::model::User, password: &str) {
    if !is_legacy(&user.password_hash) {
        return;
    }
    let (new_hash, new_salt) = hash(password);
    match store.user_set_password_hash(user.id, &user.password_hash, &new_hash, &new_salt).await {
        Ok(true) => {
            tracing::info!(login = %user.login, "rehashed an imported DeviceHive password with Argon2");
            user.password_hash = new_hash;
            user.password_salt = new_salt;
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(login = %user.login, error = %e, "cannot store the rehashed password"),
    }
}

/// Checks a password against a stored hash in either format.
pub fn verify(password: &str, stored_hash: &str, stored_salt: &str) -> bool {
    if stored_hash.starts_with("$argon2") {
        return match PasswordHash::new(stored_hash) {
            Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
            Err(_) => false,
        };
    }
    let mut h = Sha256::new();
    h.update(stored_salt.as_bytes());
    h.update(password.as_bytes());
    let legacy = base64::engine::general_purpose::STANDARD.encode(h.finalize());
    constant_time_eq(legacy.as_bytes(), stored_hash.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A strong random password (used for the first admin when none is configured).
pub fn generate() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_round_trip() {
        let (h, s) = hash("secret-pass");
        assert!(verify("secret-pass", &h, &s));
        assert!(!verify("secret-pasS", &h, &s));
    }

    #[test]
    fn devicehive_legacy_hash_verifies() {
        // The reference's seeded admin (CONTRACT.md §3).
        let salt = "sjQbZgcCmFxqTV4CCmGwpIHO";
        let hash = "DFXFrZ8VQIkOYECScBbBwsYinj+o8IlaLsRQ81wO+l8=";
        assert!(verify("dhadmin_#911", hash, salt));
        assert!(!verify("dhadmin_#912", hash, salt));
    }
}
