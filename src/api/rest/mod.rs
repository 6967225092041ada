//! REST routes (§6–10), one file per resource. Handlers decode, call the hub, encode.
//!
//! Every route is one entry of one table ([`routes`]): the router is built from it, and the OpenAPI
//! document (`openapi.json`, served at `{rest_prefix}/openapi.json`) is checked against it by a test,
//! so the two cannot drift apart.

mod configuration;
mod device;
mod group;
mod info;
mod message;
pub mod openapi;
mod token;
mod user;

use std::sync::Arc;

use axum::handler::Handler;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use serde::Serialize;

use crate::hub::Hub;

pub type ApiResult = Result<Response, crate::error::ApiError>;

/// One REST route: a method on a path (relative to the REST prefix, `{name}` for path parameters)
/// and the handler that serves it. The handler is registered for exactly this method.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// Also served under `/auth/rest` (the token routes and `GET /info`).
    pub auth: bool,
    handler: MethodRouter<Arc<Hub>>,
}

impl Route {
    pub fn new<H, T>(method: Method, path: &'static str, handler: H) -> Route
    where
        H: Handler<T, Arc<Hub>>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a REST route uses a standard method");
        Route { method, path, auth: false, handler: on(filter, handler) }
    }

    fn also_under_auth(mut self) -> Route {
        self.auth = true;
        self
    }
}

/// Every REST route (GET routes also answer HEAD; OPTIONS is answered for every path by
/// `api::edge`).
pub fn routes() -> Vec<Route> {
    let mut all = vec![
        Route::new(Method::GET, "/", info::welcome),
        Route::new(Method::GET, "/info", info::info).also_under_auth(),
        Route::new(Method::GET, "/info/cache", info::cache),
        Route::new(Method::GET, "/info/config/cluster", info::cluster),
        Route::new(Method::GET, "/openapi.json", openapi::serve),
        Route::new(Method::POST, "/token", token::login).also_under_auth(),
        Route::new(Method::POST, "/token/refresh", token::refresh).also_under_auth(),
        Route::new(Method::POST, "/token/create", token::create).also_under_auth(),
        Route::new(Method::GET, "/configuration/{name}", configuration::get),
        Route::new(Method::PUT, "/configuration/{name}", configuration::put),
        Route::new(Method::DELETE, "/configuration/{name}", configuration::delete),
    ];
    all.extend(user::routes());
    all.extend(group::routes());
    all.extend(device::routes());
    all.extend(message::routes());
    all
}

/// The router of every REST route.
pub fn router() -> Router<Arc<Hub>> {
    build(routes())
}

/// Token routes and `GET /info`, also served under `/auth/rest`.
pub fn auth_router() -> Router<Arc<Hub>> {
    build(routes().into_iter().filter(|r| r.auth).collect())
}

/// Routes on one path are merged into one method router (a method registered twice panics at start).
fn build(routes: Vec<Route>) -> Router<Arc<Hub>> {
    routes.into_iter().fold(Router::new(), |router, r| router.route(r.path, r.handler))
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
