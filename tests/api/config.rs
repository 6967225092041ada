//! Stored credentials at startup and login: password hashes imported from a DeviceHive database.

use crate::common::TestHub;
use serde_json::json;
use sqlx::Row;

/// The reference's seeded administrator: SHA-256 of salt + password, Base64.
const LEGACY_SALT: &str = "sjQbZgcCmFxqTV4CCmGwpIHO";
const LEGACY_HASH: &str = "DFXFrZ8VQIkOYECScBbBwsYinj+o8IlaLsRQ81wO+l8=";
const LEGACY_PASSWORD: &str = "dhadmin_#911";

#[tokio::test]
async fn an_imported_devicehive_hash_is_rehashed_with_argon2_at_the_first_login() {
    let hub = TestHub::start().await;
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}/hub.db", hub.dir.path().display())).await.unwrap();
    sqlx::query(
        "INSERT INTO dh_user (login, password_hash, password_salt, role, status, login_attempts, intro_reviewed, \
         all_device_types_available) VALUES ('imported', ?, ?, 0, 0, 0, 0, 1)",
    )
    .bind(LEGACY_HASH)
    .bind(LEGACY_SALT)
    .execute(&db)
    .await
    .unwrap();
    let stored = || async {
        let row = sqlx::query("SELECT password_hash, password_salt FROM dh_user WHERE login = 'imported'")
            .fetch_one(&db)
            .await
            .unwrap();
        (row.get::<String, _>(0), row.get::<String, _>(1))
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
