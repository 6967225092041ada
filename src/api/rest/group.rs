//! `/network...` and `/devicetype...`: the same handlers for both kinds of device groups.

use std::sync::Arc;

use axum::extract::{OriginalUri, Path, State};
use axum::http::Method;
use serde_json::json;

use super::{base_of, created, no_content, ok, ApiResult, Route};
use crate::api::extract::{path_id, Auth, Body, Params};
use crate::hub::fields::Fields;
use crate::hub::Hub;
use crate::model::GroupKind;

type S = State<Arc<Hub>>;

/// The paths of each kind: the collection, its count and one group.
const PATHS: [(GroupKind, &str, &str, &str); 2] = [
    (GroupKind::Network, "/network", "/network/count", "/network/{id}"),
    (GroupKind::DeviceType, "/devicetype", "/devicetype/count", "/devicetype/{id}"),
];

pub fn routes() -> Vec<Route> {
    use Method as M;
    let mut r = Vec::new();
    for (kind, path, count_path, one_path) in PATHS {
        r.extend([
            Route::new(M::GET, path, move |s: S, a: Auth, q: Params| list(kind, s, a, q)),
            Route::new(M::POST, path, move |s: S, a: Auth, u: OriginalUri, b: Body| insert(kind, path, s, a, u, b)),
            Route::new(M::GET, count_path, move |s: S, a: Auth, q: Params| count(kind, s, a, q)),
            Route::new(M::GET, one_path, move |s: S, a: Auth, i: Path<String>| get_one(kind, s, a, i)),
            Route::new(M::PUT, one_path, move |s: S, a: Auth, i: Path<String>, b: Body| update(kind, s, a, i, b)),
            Route::new(M::DELETE, one_path, move |s: S, a: Auth, i: Path<String>, q: Params| delete(kind, s, a, i, q)),
        ]);
    }
    r
}

async fn list(kind: GroupKind, State(hub): State<Arc<Hub>>, Auth(p): Auth, Params(q): Params) -> ApiResult {
    ok(&hub.group_list(kind, &p, &q).await?)
}

async fn count(kind: GroupKind, State(hub): State<Arc<Hub>>, Auth(p): Auth, Params(q): Params) -> ApiResult {
    ok(&json!({"count": hub.group_count(kind, &p, &q).await?}))
}

async fn get_one(kind: GroupKind, State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult {
    ok(&hub.group_get(kind, &p, path_id(&id)?).await?)
}

async fn insert(
    kind: GroupKind,
    path: &str,
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    OriginalUri(uri): OriginalUri,
    Body(b): Body,
) -> ApiResult {
    let id = hub.group_insert(kind, &p, &b).await?;
    created(&format!("{}{path}/{id}", base_of(&uri, path)), &json!({"id": id}))
}

async fn update(
    kind: GroupKind,
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Body(b): Body,
) -> ApiResult {
    hub.group_update(kind, &p, path_id(&id)?, &b).await?;
    no_content()
}

async fn delete(
    kind: GroupKind,
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Params(q): Params,
) -> ApiResult {
    let force = Fields::of(&q)?.bool("force")?.unwrap_or(false);
    hub.group_delete(kind, &p, path_id(&id)?, force).await?;
    no_content()
}
