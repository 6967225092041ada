//! The one error type of the hub. Every failure a client can cause maps to an HTTP status and the
//! contract's message (CONTRACT.md §16); REST renders it as `{"error": status, "message": text}`, the
//! WebSocket and MQTT transports reuse the status as `code` and the text as `error`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// A few reference errors carry no body (e.g. a missing configuration entry).
    pub empty_body: bool,
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), empty_body: false }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn invalid_params() -> Self {
        Self::bad_request("Invalid request parameters")
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized")
    }
    pub fn unauthorized_msg(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    pub fn access_denied() -> Self {
        Self::forbidden("Access is denied")
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
    }
    pub fn database_unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "The database is unavailable; try again later")
    }
    pub fn without_body(mut self) -> Self {
        self.empty_body = true;
        self
    }
    pub fn code(&self) -> u16 {
        self.status.as_u16()
    }

    pub fn device_not_found(id: &str) -> Self {
        Self::not_found(format!("Device with such deviceId = {id} not found"))
    }
    pub fn network_not_found(id: i64) -> Self {
        Self::not_found(format!("Network with id = {id} not found"))
    }
    pub fn device_type_not_found(id: i64) -> Self {
        Self::not_found(format!("Device type with id = {id} not found"))
    }
    pub fn user_not_found(id: i64) -> Self {
        Self::not_found(format!("User with id = {id} not found"))
    }
    pub fn command_not_found(id: i64) -> Self {
        Self::not_found(format!("Command with id = {id} not found"))
    }
    pub fn object_expected() -> Self {
        Self::bad_request("'parameters' must be JSON Object!")
    }

    /// JSON body as REST sends it.
    pub fn body_json(&self) -> String {
        serde_json::json!({"error": self.code(), "message": self.message}).to_string()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() || db.is_foreign_key_violation() {
                return ApiError::conflict("Posted data conflicts with internal state.");
            }
            // PostgreSQL's data exceptions (class 22): text it cannot store (a NUL character),
            // numbers out of range — the client's data, not the hub.
            if db.code().is_some_and(|c| c.starts_with("22")) {
                return ApiError::bad_request("Invalid request parameters");
            }
        }
        if database_unavailable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            return ApiError::database_unavailable();
        }
        tracing::error!(error = %e, "database error");
        ApiError::internal()
    }
}

/// The writer's own SQLite connection (`store/sqlite_batch.rs`): the same answers as through sqlx.
impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi;
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            match f.extended_code {
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY
                | ffi::SQLITE_CONSTRAINT_UNIQUE
                | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    return ApiError::conflict("Posted data conflicts with internal state.");
                }
                // SQLITE_BUSY / SQLITE_LOCKED past the busy timeout, as for the pool's connections.
                c if matches!(c & 0xff, ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED) => {
                    tracing::warn!(error = %e, "database unavailable");
                    return ApiError::database_unavailable();
                }
                _ => {}
            }
        }
        tracing::error!(error = %e, "database error");
        ApiError::internal()
    }
}

/// Whether an error means the database cannot be reached or cannot serve now (restarting, down, out
/// of connections, locked): the request may succeed later, so the client gets 503 rather than 500.
fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match db.code() {
            // PostgreSQL: connection exceptions (08...), shutting down / starting up (57P0x), out of
            // connections (53300), read-only standby after a fail-over (25006).
            Some(code) => {
                code.starts_with("08") || code.starts_with("57P") || code == "53300" || code == "25006"
                // SQLite: SQLITE_BUSY / SQLITE_LOCKED past the busy timeout (extended codes too).
                || code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
            }
            None => false,
        },
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.empty_body {
            return self.status.into_response();
        }
        let body = self.body_json();
        (self.status, [(axum::http::header::CONTENT_TYPE, "application/json;charset=UTF-8")], body).into_response()
    }
}

/// A failure to start the hub (bad configuration, unreachable database, port in use).
#[derive(Debug)]
pub struct StartupError(pub String);

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupError {}

impl From<sqlx::Error> for StartupError {
    fn from(e: sqlx::Error) -> Self {
        StartupError(e.to_string())
    }
}

impl From<ApiError> for StartupError {
    fn from(e: ApiError) -> Self {
        StartupError(e.message.to_string())
    }
}
