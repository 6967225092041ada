//! Typed reads from a JSON object — a request body, a WebSocket message, or REST query parameters
//! turned into a map of strings — with the contract's errors. One reader for every transport keeps
//! their validation identical.

use serde_json::{Map, Value};

use crate::error::{ApiError, Result};

pub struct Fields<'a>(pub &'a Map<String, Value>);

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> Fields<'a> {
    /// Wraps a body; `null` is an empty object, any other non-object → 400.
    pub fn of(value: &'a Value) -> Result<Fields<'a>> {
        match value {
            Value::Object(m) => Ok(Fields(m)),
            Value::Null => Ok(Fields(&EMPTY)),
            _ => Err(ApiError::invalid_params()),
        }
    }

    /// The raw value; JSON null and empty strings count as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        match self.0.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(v) => Some(v),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ApiError::invalid_params()),
        }
    }

    /// A string field, also accepting numbers and booleans (rendered as text).
    pub fn text(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(_) => Err(ApiError::invalid_params()),
        }
    }

    /// An integer given as a JSON number or a string of digits.
    pub fn i64(&self, key: &str) -> Result<Option<i64>> {
        self.i64_or(key, ApiError::invalid_params)
    }

    pub fn i64_or(&self, key: &str, err: impl Fn() -> ApiError) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => as_i64(v).map(Some).ok_or_else(err),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(_) => Err(ApiError::invalid_params()),
        }
    }

    /// `parameters`, `result` or `data`: a JSON object or null.
    pub fn object(&self, key: &str) -> Result<Option<Value>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
            Some(_) => Err(ApiError::object_expected()),
        }
    }

    /// A nested object (e.g. `device` in `device/save`).
    pub fn nested(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// A timestamp in any accepted form.
    pub fn timestamp(&self, key: &str) -> Result<Option<i64>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(v) => crate::time::parse_json(v),
        }
    }

    /// A list given as a JSON array or a comma-separated string; empty entries are skipped.
    pub fn list(&self, key: &str) -> Result<Option<Vec<String>>> {
        let items: Vec<String> = match self.get(key) {
            None => return Ok(None),
            Some(Value::String(s)) => s.split(',').map(|p| p.trim().to_string()).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.trim().to_string()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(ApiError::invalid_params()),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(ApiError::invalid_params()),
        };
        let items: Vec<String> = items.into_iter().filter(|s| !s.is_empty()).collect();
        Ok(if items.is_empty() { None } else { Some(items) })
    }

    /// A list of integer ids.
    pub fn id_list(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.list(key)? {
            None => Ok(None),
            Some(items) => items
                .iter()
                .map(|s| s.parse::<i64>().map_err(|_| ApiError::invalid_params()))
                .collect::<Result<Vec<_>>>()
                .map(Some),
        }
    }

    /// `sortOrder`: ASC/DESC in any case; returns true for descending.
    pub fn sort_descending(&self, default_desc: bool) -> Result<bool> {
        match self.text("sortOrder")? {
            None => Ok(default_desc),
            Some(s) if s.eq_ignore_ascii_case("asc") => Ok(false),
            Some(s) if s.eq_ignore_ascii_case("desc") => Ok(true),
            Some(s) => Err(ApiError::bad_request(format!("Unparseable sort order : {s}"))),
        }
    }

    /// `sortField` matched case-insensitively against `(accepted name, column)` pairs.
    pub fn sort_field(&self, allowed: &[(&str, &'static str)]) -> Result<Option<&'static str>> {
        match self.text("sortField")? {
            None => Ok(None),
            Some(s) => allowed
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(&s))
                .map(|(_, col)| Some(*col))
                .ok_or_else(ApiError::invalid_params),
        }
    }

    /// `take` clamped to `max`; negative → 400.
    pub fn take(&self, max: i64) -> Result<Option<i64>> {
        match self.i64("take")? {
            Some(t) if t < 0 => Err(ApiError::invalid_params()),
            t => Ok(t.map(|t| t.min(max))),
        }
    }

    pub fn skip(&self) -> Result<Option<i64>> {
        match self.i64("skip")? {
            Some(s) if s < 0 => Err(ApiError::invalid_params()),
            s => Ok(s),
        }
    }
}

pub fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}
