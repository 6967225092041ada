//! First-start seed data (CONTRACT.md §14.2): admin user 1, the sample network, device types, sample
//! device and configuration. Runs only on an empty database.

use sqlx::Row;

use super::Store;
use crate::auth::password;
use crate::error::StartupError;

pub struct SeedOutcome {
    /// Whether the database was empty and has been seeded now.
    pub seeded: bool,
    /// The generated admin password, when one was generated (printed once by the caller).
    pub generated_admin_password: Option<String>,
}

const DEVICE_TYPES: [(&str, &str); 8] = [
    ("Default Device Type", "Default DeviceHive device type"),
    ("Cameras", "Security and web cameras"),
    ("Lightning", "Lights, lamps and light switches"),
    ("Door Locks", "Smart door locks"),
    ("Thermostats", "Thermostats and climate sensors"),
    ("Entertainment", "TVs, speakers and media players"),
    ("Cars", "Vehicles and their telemetry units"),
    ("Cooking", "Kitchen appliances"),
];

impl Store {
    /// Seeds an empty database; a no-op when any user exists.
    pub async fn seed_if_empty(&self, admin_login: &str, admin_password: &str) -> Result<SeedOutcome, StartupError> {
        let users: i64 = sqlx::query("SELECT COUNT(*) FROM dh_user").fetch_one(&self.pool).await?.get(0);
        if users > 0 {
            return Ok(SeedOutcome { seeded: false, generated_admin_password: None });
        }
        let (password, generated) = if admin_password.is_empty() {
            let p = password::generate();
            (p.clone(), Some(p))
        } else {
            (admin_password.to_string(), None)
        };
        let (hash, salt) = password::hash(&password);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO dh_user (id, login, password_hash, password_salt, role, status, login_attempts, \
             intro_reviewed, all_device_types_available) VALUES (1, ?, ?, ?, 0, 0, 0, 0, 1)",
        )
        .bind(admin_login)
        .bind(hash)
        .bind(salt)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO network (id, name, description) VALUES (1, 'Sample Network', 'A DeviceHive Sample Network')",
        )
        .execute(&mut *tx)
        .await?;
        for (i, (name, description)) in DEVICE_TYPES.iter().enumerate() {
            sqlx::query("INSERT INTO device_type (id, name, description) VALUES (?, ?, ?)")
                .bind(i as i64 + 1)
                .bind(name)
                .bind(description)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO device (device_id, name, network_id, device_type_id, blocked) \
             VALUES ('e50d6085-2aba-48e9-b1c3-73c673e414be', 'Sample Device', 1, 1, 0)",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO user_network (user_id, network_id) VALUES (1, 1)").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO user_device_type (user_id, device_type_id) VALUES (1, 1)").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO configuration (name, value) VALUES ('user.login.lastTimeout', '1000')")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(SeedOutcome { seeded: true, generated_admin_password: generated })
    }
}
