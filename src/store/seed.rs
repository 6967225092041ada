//! First-start seed data (CONTRACT.md §14.2): admin user 1, the sample network, device types, sample
//! device and configuration. Runs only on an empty database.

use super::{Backend, Sql, Store, Tx};
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
        let unseeded = SeedOutcome { seeded: false, generated_admin_password: None };
        if self.db.fetch_one(Sql::new("SELECT COUNT(*) FROM dh_user"), |r| r.i64(0)).await? > 0 {
            return Ok(unseeded);
        }
        let (password, generated) = if admin_password.is_empty() {
            let p = password::generate();
            (p.clone(), Some(p))
        } else {
            (admin_password.to_string(), None)
        };
        let (hash, salt) = password::hash(&password);
        let mut tx = self.db.begin().await?;
        if tx.backend() == Backend::Postgres {
            // Instances starting together on an empty database seed it once: the first takes this lock,
            // the others wait for its commit and then find the admin below.
            tx.execute(Sql::new("SELECT pg_advisory_xact_lock(7205861)")).await?;
            if tx.fetch_one(Sql::new("SELECT COUNT(*) FROM dh_user"), |r| r.i64(0)).await? > 0 {
                return Ok(unseeded);
            }
        }
        tx.execute(
            Sql::new(
                "INSERT INTO dh_user (id, login, password_hash, password_salt, role, status, login_attempts, \
                 intro_reviewed, all_device_types_available) VALUES (1, $1, $2, $3, 0, 0, 0, FALSE, TRUE)",
            )
            .bind(admin_login)
            .bind(hash)
            .bind(salt),
        )
        .await?;
        tx.execute(Sql::new(
            "INSERT INTO network (id, name, description) VALUES (1, 'Sample Network', 'A DeviceHive Sample Network')",
        ))
        .await?;
        for (i, (name, description)) in DEVICE_TYPES.iter().enumerate() {
            let sql = Sql::new("INSERT INTO device_type (id, name, description) VALUES ($1, $2, $3)")
                .bind(i as i64 + 1)
                .bind(*name)
                .bind(*description);
            tx.execute(sql).await?;
        }
        tx.execute(Sql::new(
            "INSERT INTO device (device_id, name, network_id, device_type_id, blocked) \
             VALUES ('e50d6085-2aba-48e9-b1c3-73c673e414be', 'Sample Device', 1, 1, FALSE)",
        ))
        .await?;
        tx.execute(Sql::new("INSERT INTO user_network (user_id, network_id) VALUES (1, 1)")).await?;
        tx.execute(Sql::new("INSERT INTO user_device_type (user_id, device_type_id) VALUES (1, 1)")).await?;
        tx.execute(Sql::new("INSERT INTO configuration (name, value) VALUES ('user.login.lastTimeout', '1000')"))
            .await?;
        advance_sequences(&mut tx, &["dh_user", "network", "device_type"]).await?;
        tx.commit().await?;
        Ok(SeedOutcome { seeded: true, generated_admin_password: generated })
    }
}

/// After rows were inserted with explicit ids, moves PostgreSQL's id sequences past them (SQLite's
/// AUTOINCREMENT follows the largest id by itself).
pub(crate) async fn advance_sequences(tx: &mut Tx, tables: &[&str]) -> crate::error::Result<()> {
    if tx.backend() != Backend::Postgres {
        return Ok(());
    }
    for table in tables {
        tx.execute(Sql::new(format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
        )))
        .await?;
    }
    Ok(())
}
