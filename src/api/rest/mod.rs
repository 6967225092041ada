//! REST routes (§6–10), one file per resource. Handlers decode, call the hub, encode.

mod configuration;
mod device;
mod group;
mod info;
mod message;
mod token;
mod user;

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

use crate::hub::Hub;

pub type ApiResult = Result<Response, crate::error::ApiError>;

/// Every REST route.
pub fn router() -> Router<Arc<Hub>> {
    Router::new()
        .route("/", get(info::welcome))
        .merge(auth_router())
        .route("/info/cache", get(info::cache))
        .route("/info/config/cluster", get(info::cluster))
        .route("/configuration/{name}", get(configuration::get).put(configuration::put).delete(configuration::delete))
        .merge(user::routes())
        .merge(group::routes())
        .merge(device::routes())
        .merge(message::routes())
}

/// Token routes and `GET /info`, also served under `/auth/rest`.
pub fn auth_router() -> Router<Arc<Hub>> {
    Router::new()
        .route("/info", get(info::info))
        .route("/token", post(token::login))
        .route("/token/refresh", post(token::refresh))
        .route("/token/create", post(token::create))
}

const JSON: &str = "application/json;charset=UTF-8";

pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "null".into());
    raw_json(status, text)
}

pub fn ok<T: Serialize>(body: &T) -> ApiResult {
    Ok(json(StatusCode::OK, body))
}

/// A JSON text already serialised (poll results built from shared bytes).
pub fn raw_json(status: StatusCode, text: String) -> Response {
    (status, [(header::CONTENT_TYPE, JSON)], text).into_response()
}

/// 201 with the `Location` of the new resource.
pub fn created<T: Serialize>(location: &str, body: &T) -> ApiResult {
    let mut r = json(StatusCode::CREATED, body);
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

pub fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The REST prefix the request came in on (for `Location` headers).
pub fn base_of(uri: &axum::http::Uri, marker: &str) -> String {
    let path = uri.path();
    match path.find(marker) {
        Some(i) => path[..i].to_string(),
        None => String::new(),
    }
}
