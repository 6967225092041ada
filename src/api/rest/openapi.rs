//! The OpenAPI 3.1 document of the REST API. It is written by hand (`openapi.json` beside this file,
//! embedded in the binary) and served at `{rest_prefix}/openapi.json` with `servers` set to the URL
//! the request came in on. The tests below hold it to the route table (`super::routes`), which is
//! the only source of the router: every route and method is documented and nothing else is.

use std::sync::LazyLock;

use axum::extract::OriginalUri;
use axum::http::HeaderMap;
use serde_json::{json, Value};

use super::info::client_origin;
use super::{base_of, ok, ApiResult};

/// The document as written (its `servers` names the default prefix).
pub const DOCUMENT: &str = include_str!("openapi.json");

static PARSED: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON (checked by the tests)"));

pub async fn serve(headers: HeaderMap, OriginalUri(uri): OriginalUri) -> ApiResult {
    let (host, https) = client_origin(&headers);
    let scheme = if https { "https" } else { "http" };
    // The prefix this request used (`/api/rest`, `/dh/rest`, ...), so the document's URLs work as served.
    let prefix = base_of(&uri, "/openapi.json");
    let mut doc = PARSED.clone();
    doc["servers"] = json!([{"url": format!("{scheme}://{host}{prefix}")}]);
    ok(&doc)
}

/// The HTTP methods an OpenAPI path item can hold (its other keys are not operations).
pub const OPERATION_KEYS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Every `(METHOD, path)` operation of a document, sorted.
pub fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for key in item.as_object().into_iter().flat_map(|i| i.keys()) {
                if OPERATION_KEYS.contains(&key.as_str()) {
                    ops.push((key.to_ascii_uppercase(), path.clone()));
                }
            }
        }
    }
    ops.sort();
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json parses")
    }

    #[test]
    fn document_is_openapi_3_1() {
        let doc = document();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", doc["openapi"]);
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    }

    #[test]
    fn document_has_exactly_the_routes_of_the_router() {
        let mut routed: Vec<(String, String)> =
            super::super::routes().iter().map(|r| (r.method.as_str().to_string(), r.path.to_string())).collect();
        routed.sort();
        let documented = operations(&document());
        let missing: Vec<_> = routed.iter().filter(|r| !documented.contains(r)).collect();
        let extra: Vec<_> = documented.iter().filter(|d| !routed.contains(d)).collect();
        assert!(missing.is_empty(), "routes missing from openapi.json: {missing:?}");
        assert!(extra.is_empty(), "openapi.json documents routes the router does not serve: {extra:?}");
        assert_eq!(routed.len(), documented.len(), "a route is registered twice");
    }

    #[test]
    fn path_items_hold_only_operations_and_shared_fields() {
        for (path, item) in document()["paths"].as_object().expect("paths") {
            for key in item.as_object().expect("path item").keys() {
                let shared = ["summary", "description", "parameters", "servers"].contains(&key.as_str());
                assert!(OPERATION_KEYS.contains(&key.as_str()) || shared, "{path}: unexpected key {key}");
            }
        }
    }

    /// Every path parameter of a path is declared by each of its operations, and nothing else is.
    #[test]
    fn path_parameters_match_the_path() {
        let doc = document();
        for (method, path) in operations(&doc) {
            let mut in_path: Vec<&str> =
                path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
            in_path.sort();
            let op = &doc["paths"][&path][method.to_ascii_lowercase()];
            let mut declared: Vec<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| resolve(&doc, p))
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().expect("parameter name").to_string())
                .collect();
            declared.sort();
            assert_eq!(in_path, declared, "{method} {path}");
        }
    }

    /// Every `$ref` points at something in the document.
    #[test]
    fn references_resolve() {
        fn walk(doc: &Value, v: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let target = r.strip_prefix('#').and_then(|p| doc.pointer(p));
                        assert!(target.is_some(), "unresolved $ref {r}");
                    }
                    m.values().for_each(|x| walk(doc, x));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(doc, x)),
                _ => {}
            }
        }
        let doc = document();
        walk(&doc, &doc);
    }

    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v["$ref"].as_str() {
            Some(r) => doc.pointer(r.trim_start_matches('#')).expect("reference resolves"),
            None => v,
        }
    }
}
