//! Request extractors: the authenticated `Principal`, JSON bodies with the contract's errors and a
//! size limit, and query strings as a JSON map (empty values dropped, as clients send `names=`).

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde_json::{Map, Value};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::hub::Hub;

/// The caller: anonymous when no `Authorization` header is sent; 401 for a header that is not a
/// valid `Bearer` access token.
pub struct Auth(pub Principal);

impl FromRequestParts<Arc<Hub>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Ok(Auth(Principal::anonymous()));
        };
        let text = value.to_str().map_err(|_| ApiError::unauthorized())?;
        if !text.starts_with("Bearer") || text.len() <= 6 {
            return Err(ApiError::unauthorized());
        }
        let token = text[6..].trim();
        hub.principal_from_token(token).await.map(Auth).map_err(Hub::token_error_to_rest)
    }
}

/// A JSON request body (`null` when empty). Malformed JSON → 400, over the limit → 413.
pub struct Body(pub Value);

impl FromRequest<Arc<Hub>> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, hub: &Arc<Hub>) -> Result<Self, Self::Rejection> {
        // Only login and refresh take a body without a token: anyone else without credentials learns
        // 401 before anything about their body (size, syntax).
        let path = req.uri().path();
        if !req.headers().contains_key(header::AUTHORIZATION)
            && !path.ends_with("/token")
            && !path.ends_with("/token/refresh")
        {
            return Err(ApiError::unauthorized());
        }
        let limit = hub.settings.limits.max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| {
            if crate::net::http::is_body_timeout(&e) {
                return ApiError::new(StatusCode::REQUEST_TIMEOUT, "Request body was not received in time");
            }
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("Request body is larger than {limit} bytes"))
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body(Value::Null));
        }
        serde_json::from_slice(&bytes).map(Body).map_err(|_| ApiError::invalid_params())
    }
}

/// Query parameters as a JSON object of strings.
pub struct Params(pub Value);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut map = Map::new();
        if let Some(q) = parts.uri.query() {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).map_err(|_| ApiError::invalid_params())?;
            for (k, v) in pairs {
                if !v.is_empty() {
                    map.insert(k, Value::String(v));
                }
            }
        }
        Ok(Params(Value::Object(map)))
    }
}

/// Parses a numeric path id; a non-number is an unknown resource (as in the reference).
pub fn path_id(text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| ApiError::not_found("HTTP 404 Not Found"))
}
