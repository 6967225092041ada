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
        }
        tracing::error!(error = %e, "database error");
        ApiError::internal()
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
