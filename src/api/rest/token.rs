//! `POST /token`, `/token/refresh`, `/token/create` — all answer 201.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;

use super::{json, ApiResult};
use crate::api::extract::{Auth, Body};
use crate::hub::Hub;
use crate::net::http::Peer;

pub async fn login(State(hub): State<Arc<Hub>>, Peer(peer): Peer, Body(body): Body) -> ApiResult {
    Ok(json(StatusCode::CREATED, &hub.login(&body, peer).await?))
}

pub async fn refresh(State(hub): State<Arc<Hub>>, Body(body): Body) -> ApiResult {
    Ok(json(StatusCode::CREATED, &hub.refresh(&body).await?))
}

pub async fn create(State(hub): State<Arc<Hub>>, Auth(p): Auth, Body(body): Body) -> ApiResult {
    Ok(json(StatusCode::CREATED, &hub.create_token(&p, &body).await?))
}
