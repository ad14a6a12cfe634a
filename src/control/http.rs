//! HTTP for the control API's routes: the query string, the body, and the answers (JSON,
//! errors as `{"error", "field"}`, the console's page), and times as the API writes them.

use std::time::UNIX_EPOCH;

use hyper::body::Bytes;
use hyper::Response;
use serde_json::{json, Map, Value};

use super::server::Body;

/// The OpenAPI document of these routes.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The console: one page, its script and its style (no inline script: see [`page`]).
pub const CONSOLE: &str = include_str!("console/index.html");
pub const CONSOLE_JS: &str = include_str!("console/console.js");
pub const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The most items a list answers with.
pub(super) const MAX_LIMIT: usize = 1000;

/// A query string's parameters.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(query: &str) -> Query {
        let url = reqwest::Url::parse(&format!("http://q/?{query}"))
            .unwrap_or_else(|_| reqwest::Url::parse("http://q/").expect("valid"));
        Query(
            url.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub(super) fn limit(&self) -> Result<usize, Box<Response<Body>>> {
        match self.get("limit") {
            None => Ok(100),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(Box::new(error(
                    400,
                    Some("limit"),
                    "must be a number from 1 to 1000",
                ))),
            },
        }
    }
    pub(super) fn flag(&self, key: &str) -> Result<bool, Box<Response<Body>>> {
        match self.get(key) {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(_) => Err(Box::new(error(400, Some(key), "must be true or false"))),
        }
    }
}

pub(super) fn parse_body(body: &Bytes) -> Result<Value, Box<Response<Body>>> {
    if body.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body)
        .map_err(|e| Box::new(error(400, None, &format!("the body is not JSON: {e}"))))
}

pub fn respond(status: u16, value: Value) -> Response<Body> {
    let mut text = serde_json::to_vec(&value).expect("serialises");
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Body::text(text))
        .expect("valid")
}

pub(super) fn ok(value: Value) -> Response<Body> {
    respond(200, value)
}

pub(super) fn raw(status: u16, content_type: &str, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::text(text))
        .expect("valid")
}

/// The console page, with the headers that keep it from being framed or running anything
/// but its own script: no inline script or style, nothing from elsewhere.
pub(super) fn page() -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "text/html; charset=utf-8")
        .header(
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        )
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-store")
        .body(Body::text(CONSOLE))
        .expect("valid")
}

/// The console's script or style sheet.
pub(super) fn asset(content_type: &str, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Body::text(text))
        .expect("valid")
}

/// An error answer.
pub fn error(status: u16, field: Option<&str>, why: &str) -> Response<Body> {
    let mut body = json!({ "error": why });
    if let Some(field) = field {
        body["field"] = json!(field);
    }
    respond(status, body)
}

pub fn rfc3339(ms: u64) -> Value {
    if ms == 0 {
        return Value::Null;
    }
    json!(crate::clock::rfc3339(ms))
}

/// When the event `id` was made (from its UUIDv7), RFC 3339; null if it does not say.
pub(super) fn created(id: &str) -> Value {
    crate::event::created_at(id)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(Value::Null, |d| rfc3339(d.as_millis() as u64))
}

pub(super) use crate::clock::system_now as now_ms;
