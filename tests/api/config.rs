//! Stored credentials at startup and login: password hashes imported from a DeviceHive database.

use super::TestHub;
use serde_json::json;

/// The reference's seeded administrator: SHA-256 of salt + password, Base64.
const LEGACY_SALT: &str = "sjQbZgcCmFxqTV4CCmGwpIHO";
const LEGACY_HASH: &str = "DFXFrZ8VQIkOYECScBbBwsYinj+o8IlaLsRQ81wO+l8=";
const LEGACY_PASSWORD: &str = "dhadmin_#911";

#[tokio::test]
async fn an_imported_devicehive_hash_is_rehashed_with_argon2_at_the_first_login() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let db = hub.db().await;
    db.execute(
        "INSERT INTO dh_user (login, password_hash, password_salt, role, status) VALUES ('imported', $1, $2, 0, 0)",
        &[LEGACY_HASH.into(), LEGACY_SALT.into()],
    )
    .await;
    let stored = || async {
        let row = db.fetch_one("SELECT password_hash, password_salt FROM dh_user WHERE login = 'imported'", &[]).await;
        (row[0].as_str().unwrap().to_string(), row[1].as_str().unwrap().to_string())
    };

    // A wrong password changes nothing.
    hub.request(reqwest::Method::POST, None, "/token", Some(json!({"login": "imported", "password": "wrong"})))
        .await
        .expect(401);
    assert_eq!(stored().await, (LEGACY_HASH.to_string(), LEGACY_SALT.to_string()));

    hub.login("imported", LEGACY_PASSWORD).await;
    let (hash, salt) = stored().await;
    assert!(hash.starts_with("$argon2"), "rehashed: {hash}");
    assert_eq!(salt, "");
    // The new hash verifies the same password (from a fresh process too), and only that one.
    hub.login("imported", LEGACY_PASSWORD).await;
    hub.request(reqwest::Method::POST, None, "/token", Some(json!({"login": "imported", "password": "dhadmin_#912"})))
        .await
        .expect(401);
    let hub = hub.restart().await;
    hub.login("imported", LEGACY_PASSWORD).await;
    assert_eq!(stored().await.0, hash);
    db.close().await;
    hub.stop().await;
}
