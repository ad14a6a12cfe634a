//! The `/v1` routes: what each reads or changes, and the JSON it answers with (the shapes are
//! in the OpenAPI document, `openapi.json`, served at `/v1/openapi.json`). Errors are
//! `{"error": why, "field": the setting at fault}` with a 4xx that says what kind.

use crate::device::Selection;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Bytes;
use hyper::{Method, Response};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::endpoints::{Change, Pending, Source};
use super::server::Body;
use super::Control;
use crate::deliver::config::WebhookConfig;
use crate::outbox::{Last, OutboxRecord};

/// The OpenAPI document of these routes.
pub const OPENAPI: &str = include_str!("openapi.json");
/// The console: one page, its script and style inline.
pub const CONSOLE: &str = include_str!("console.html");

/// The most items a list answers with.
const MAX_LIMIT: usize = 1000;
/// Live event streams open at once (the console holds one per tab).
const MAX_STREAMS: usize = 8;
/// A live stream sends a comment this often, so that a proxy or the browser keeps it open.
const KEEPALIVE: Duration = Duration::from_secs(15);

static STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Answer `method path?query` with `body`.
pub async fn route(
    control: &Control,
    method: &Method,
    path: &str,
    query: &str,
    body: Bytes,
    cancel: CancellationToken,
) -> Response<Body> {
    let q = Query::parse(query);
    let segments: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get = method == Method::GET || method == Method::HEAD;
    match (method.as_str(), segs.as_slice()) {
        (_, [""]) | (_, []) if get => page(),
        ("GET" | "HEAD", ["v1"] | ["v1", "openapi.json"]) => raw(200, "application/json", OPENAPI),
        ("GET" | "HEAD", ["v1", "gateway"]) => ok(gateway(control).await),
        ("GET" | "HEAD", ["v1", "devices"]) => {
            let q = Query::parse(query);
            let limit = match q.limit() {
                Ok(limit) => limit,
                Err(refused) => return *refused,
            };
            let after = q.get("after").map(str::to_string);
            let selection = Selection::Page { after, limit };
            match devices(control, selection).await {
                // A page cut short (by `limit` or its size) says where the next starts.
                Ok((list, more)) => {
                    let next = more.then(|| list.last().map(|d| d["id"].clone())).flatten();
                    ok(json!({ "devices": list, "next": next }))
                }
                Err(e) => error(503, None, &e),
            }
        }
        ("GET" | "HEAD", ["v1", "devices", id]) => {
            match devices(control, Selection::One(id.to_string())).await {
                Ok((list, _)) => match list.into_iter().next() {
                    Some(d) => ok(d),
                    None => error(404, None, &format!("no device `{id}`")),
                },
                Err(e) => error(503, None, &e),
            }
        }
        ("DELETE", ["v1", "devices", id]) => match control.forget_device(id).await {
            Ok(()) => Response::builder()
                .status(204)
                .body(Body::Full(None))
                .expect("valid"),
            Err(r) => error(r.status, r.field.as_deref(), &r.message),
        },
        ("PUT", ["v1", "devices", id, "desired"]) => match parse_body(&body) {
            Ok(v) => match v.get("value") {
                None => error(
                    400,
                    Some("value"),
                    "give the value desired (null clears it)",
                ),
                Some(value) => {
                    let value = Some(value.clone()).filter(|v| !v.is_null());
                    match control.desire(id, value).await {
                        Ok(()) => match devices(control, Selection::One(id.to_string())).await {
                            Ok((list, _)) => match list.into_iter().next() {
                                Some(d) => ok(d),
                                None => error(404, None, &format!("no device `{id}`")),
                            },
                            Err(e) => error(503, None, &e),
                        },
                        Err(r) => error(r.status, r.field.as_deref(), &r.message),
                    }
                }
            },
            Err(r) => *r,
        },
        ("POST", ["v1", "actions"]) => match parse_body(&body) {
            Ok(v) => submit_action(control, &v).await,
            Err(r) => *r,
        },
        ("GET" | "HEAD", ["v1", "actions", id]) => match control.action(id).await {
            Ok(a) => ok(super::commands::action_view(&a)),
            Err(r) => error(r.status, r.field.as_deref(), &r.message),
        },
        ("DELETE", ["v1", "actions", id]) => match control.cancel_action(id).await {
            Ok(a) => ok(super::commands::action_view(&a)),
            Err(r) => error(r.status, r.field.as_deref(), &r.message),
        },
        ("GET" | "HEAD", ["v1", "bookings"]) => match control.bookings().await {
            Ok(list) => {
                let list: Vec<Value> = list.iter().map(super::commands::booking_view).collect();
                ok(json!({ "bookings": list }))
            }
            Err(r) => error(r.status, r.field.as_deref(), &r.message),
        },
        ("GET" | "HEAD", ["v1", "workspaces"]) => match workspaces(control).await {
            Ok(list) => ok(json!({ "workspaces": list })),
            Err(e) => error(503, None, &e),
        },
        ("GET" | "HEAD", ["v1", "endpoints"]) => {
            let all = control.endpoints().await;
            let dead = dead_counts(&control.outbox);
            let list: Vec<Value> = all
                .iter()
                .map(|(c, s, d)| endpoint_view(control, c, *s, *d, &dead))
                .collect();
            ok(json!({ "endpoints": list }))
        }
        ("POST", ["v1", "endpoints"]) => match parse_body(&body) {
            Ok(v) => changed(control, Change::Create(v), 201).await,
            Err(r) => *r,
        },
        ("GET" | "HEAD", ["v1", "endpoints", name]) => one_endpoint(control, name, 200).await,
        ("PUT", ["v1", "endpoints", name]) => match parse_body(&body) {
            Ok(v) => changed(control, Change::Replace(name.to_string(), v), 200).await,
            Err(r) => *r,
        },
        ("PATCH", ["v1", "endpoints", name]) => match parse_body(&body) {
            Ok(v) => changed(control, Change::Patch(name.to_string(), v), 200).await,
            Err(r) => *r,
        },
        ("DELETE", ["v1", "endpoints", name]) => {
            let how = match q.get("pending").unwrap_or("refuse") {
                "refuse" => Pending::Refuse,
                "drain" => Pending::Drain,
                "purge" => Pending::Purge,
                other => {
                    return error(
                        400,
                        Some("pending"),
                        &format!("`{other}`: must be refuse, drain or purge"),
                    )
                }
            };
            match control.change(Change::Delete(name.to_string(), how)).await {
                Ok(_) => match control
                    .endpoints()
                    .await
                    .iter()
                    .find(|(c, _, _)| c.name == *name)
                {
                    // Still draining: shown as it is now.
                    Some((c, s, d)) => respond(
                        202,
                        endpoint_view(control, c, *s, *d, &dead_counts(&control.outbox)),
                    ),
                    None => Response::builder()
                        .status(204)
                        .body(Body::Full(None))
                        .expect("valid"),
                },
                Err(r) => error(r.status, r.field.as_deref(), &r.message),
            }
        }
        ("POST", ["v1", "endpoints", name, action @ ("pause" | "resume")]) => {
            match control.pause(name, *action == "pause").await {
                Ok(()) => one_endpoint(control, name, 200).await,
                Err(r) => error(r.status, r.field.as_deref(), &r.message),
            }
        }
        ("POST", ["v1", "endpoints", name, "enable"]) => match control.enable(name).await {
            Ok(_) => one_endpoint(control, name, 200).await,
            Err(r) => error(r.status, r.field.as_deref(), &r.message),
        },
        ("POST", ["v1", "endpoints", name, "test"]) => test_event(control, name).await,
        ("GET" | "HEAD", ["v1", "outbox"]) => ok(outbox_status(control).await),
        ("GET" | "HEAD", ["v1", "outbox", "events"]) => outbox_events(control, &q),
        ("POST", ["v1", "outbox", "replay"]) => match parse_body(&body) {
            Ok(v) => replay(control, &v).await,
            Err(r) => *r,
        },
        ("POST", ["v1", "outbox", "purge"]) => match parse_body(&body) {
            Ok(v) => purge(control, &v).await,
            Err(r) => *r,
        },
        ("GET" | "HEAD", ["v1", "deliveries"]) => deliveries(control, &q),
        ("GET", ["v1", "deliveries", "stream"]) => stream(control, &q, cancel),
        (_, ["v1", ..]) | (_, [""]) | (_, []) => {
            let known = KNOWN.iter().any(|p| matches_route(p, &segs));
            if known {
                error(405, None, "method not allowed here (see /v1/openapi.json)")
            } else {
                error(404, None, "no such route (see /v1/openapi.json)")
            }
        }
        _ => error(404, None, "try /, /v1/openapi.json, /healthz or /metrics"),
    }
}

/// The routes, for telling a wrong method from a wrong path.
const KNOWN: [&str; 21] = [
    "v1/actions",
    "v1/actions/*",
    "v1/bookings",
    "v1/openapi.json",
    "v1/deliveries",
    "v1/deliveries/stream",
    "v1/gateway",
    "v1/devices",
    "v1/devices/*",
    "v1/devices/*/desired",
    "v1/workspaces",
    "v1/endpoints",
    "v1/endpoints/*",
    "v1/endpoints/*/pause",
    "v1/endpoints/*/resume",
    "v1/endpoints/*/enable",
    "v1/endpoints/*/test",
    "v1/outbox",
    "v1/outbox/events",
    "v1/outbox/replay",
    "v1/outbox/purge",
];

fn matches_route(pattern: &str, segs: &[&str]) -> bool {
    let parts: Vec<&str> = pattern.split('/').collect();
    parts.len() == segs.len() && parts.iter().zip(segs).all(|(p, s)| *p == "*" || p == s)
}

/// A query string's parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Query {
        let url = reqwest::Url::parse(&format!("http://q/?{query}"))
            .unwrap_or_else(|_| reqwest::Url::parse("http://q/").expect("valid"));
        Query(
            url.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn limit(&self) -> Result<usize, Box<Response<Body>>> {
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
    fn flag(&self, key: &str) -> Result<bool, Box<Response<Body>>> {
        match self.get(key) {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(_) => Err(Box::new(error(400, Some(key), "must be true or false"))),
        }
    }
}

fn parse_body(body: &Bytes) -> Result<Value, Box<Response<Body>>> {
    if body.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body)
        .map_err(|e| Box::new(error(400, None, &format!("the body is not JSON: {e}"))))
}

pub(super) fn respond(status: u16, value: Value) -> Response<Body> {
    let mut text = serde_json::to_vec(&value).expect("serialises");
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Body::text(text))
        .expect("valid")
}

fn ok(value: Value) -> Response<Body> {
    respond(200, value)
}

fn raw(status: u16, content_type: &str, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::text(text))
        .expect("valid")
}

/// The console page, with the headers that keep it from being framed or loading anything
/// from elsewhere.
fn page() -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "text/html; charset=utf-8")
        .header(
            "content-security-policy",
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; form-action 'none'",
        )
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer")
        .body(Body::text(CONSOLE))
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

async fn changed(control: &Control, change: Change, status: u16) -> Response<Body> {
    match control.change(change).await {
        Ok(name) => one_endpoint(control, &name, status).await,
        Err(r) => error(r.status, r.field.as_deref(), &r.message),
    }
}

async fn one_endpoint(control: &Control, name: &str, status: u16) -> Response<Body> {
    match control
        .endpoints()
        .await
        .iter()
        .find(|(c, _, _)| c.name == name)
    {
        Some((c, s, d)) => respond(
            status,
            endpoint_view(control, c, *s, *d, &dead_counts(&control.outbox)),
        ),
        None => error(404, None, &format!("no endpoint `{name}`")),
    }
}

pub(super) fn rfc3339(ms: u64) -> Value {
    if ms == 0 {
        return Value::Null;
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    json!(humantime::format_rfc3339_millis(t).to_string())
}

/// When the event `id` was made (from its UUIDv7), RFC 3339; null if it does not say.
fn created(id: &str) -> Value {
    crate::event::created_at(id)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(Value::Null, |d| rfc3339(d.as_millis() as u64))
}

fn now_ms() -> u64 {
    crate::clock::system_now()
}

async fn gateway(control: &Control) -> Value {
    let m = &control.metrics;
    let ready = m.readiness(control.outbox.is_writable());
    json!({
        "id": control.gateway.id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": control.gateway.started.elapsed().as_secs(),
        "event_types": crate::event::EventType::ALL.map(|t| t.as_str()),
        "ready": ready.is_ok(),
        "not_ready": ready.err(),
        "mqtt": {
            "enabled": m.source.mqtt_enabled(),
            "connected": m.source.mqtt_connected(),
            "broker": control.gateway.broker,
        },
        "serial": {
            "ports": control.gateway.serial_ports,
            "open": m.source.serial_ports_open(),
        },
        "outbox": {
            "pending": control.outbox.len(),
            "bytes": control.outbox.bytes(),
            "dead_letters": control.outbox.dead_len(),
            "writable": control.outbox.is_writable(),
        },
    })
}

/// The selected devices: as the running device stage knows them now, else as the store has
/// them (`last_seen` as coarse as `device::SEEN_RESOLUTION`), with the class whose `match`
/// fits; ordered by id; a page within `device::PAGE_BYTES`, and whether more follow. At most
/// [`super::LARGE_READS`] are built at once: the others wait their turn.
async fn devices(control: &Control, selection: Selection) -> Result<(Vec<Value>, bool), String> {
    let _turn = control
        .large_reads
        .acquire()
        .await
        .map_err(|e| e.to_string())?;
    let (known, more): (
        Vec<(String, Option<String>, crate::device::DeviceState)>,
        bool,
    ) = match control.live_devices(selection.clone()).await {
        Some(snapshot) => (
            snapshot
                .devices
                .into_iter()
                .map(|(id, class, state)| (id, Some(class), state))
                .collect(),
            snapshot.more,
        ),
        None => {
            let (states, more) = control
                .outbox
                .devices_page(&selection)
                .map_err(|e| e.to_string())?;
            let classes = control.classes.lock().unwrap_or_else(|e| e.into_inner());
            let known = states
                .into_iter()
                .map(|(id, s)| {
                    // The first class whose `match` fits, as the device stage picks it.
                    let class = classes
                        .iter()
                        .find(|c| c.matches(&id))
                        .map(|c| c.name.clone());
                    (id, class, s)
                })
                .collect();
            (known, more)
        }
    };
    let list = known
        .into_iter()
        .map(|(id, class, s)| {
            json!({
                "id": id,
                "class": class,
                "health": s.health,
                "last_seen": rfc3339(s.last_seen),
                "last_reading": rfc3339(s.last_reading),
                "last_report": rfc3339(s.last_report),
                "values": s.values,
                "report_pending": s.held.is_some(),
                "stale": s.stale,
                "version": s.version,
                "state": s.condition,
                "sync": s.sync.as_ref().map(|y| json!({
                    "reported": y.reported,
                    "in_sync": y.differs_since.is_none(),
                    "differs_since": y.differs_since.map_or(Value::Null, rfc3339),
                    "told": y.told,
                })),
                "desired": s.desired,
            })
        })
        .collect();
    Ok((list, more))
}

async fn workspaces(control: &Control) -> Result<Vec<Value>, String> {
    let states = match control.live_devices(Selection::One(String::new())).await {
        Some(snapshot) => snapshot.workspaces,
        None => control.outbox.workspaces().map_err(|e| e.to_string())?,
    };
    let configured = control
        .workspaces
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(configured
        .iter()
        .map(|w| {
            let state = states.iter().find(|(id, _)| id == &w.id).map(|(_, s)| s);
            json!({
                "id": w.id,
                "status": state.and_then(|s| s.status).map_or("Unknown", |s| s.as_str()),
                "present": state.is_some_and(|s| s.present),
                "vacated_at": state.and_then(|s| s.vacated_at).map_or(Value::Null, rfc3339),
                "since": state.and_then(|s| s.since).map_or(Value::Null, rfc3339),
                "sensors": w.sensors,
                "display": w.display,
            })
        })
        .collect())
}

/// `POST /v1/actions`: `{"id", "device", "name", "params", "deadline"}` (the deadline RFC 3339;
/// by default `devices.action_deadline` from now).
async fn submit_action(control: &Control, body: &Value) -> Response<Body> {
    let Some(data) = body.as_object() else {
        return error(400, None, "the body must be a JSON object");
    };
    match crate::upstream::command::action(data, now_ms()) {
        Err(e) => error(400, Some(&e.field), &e.message),
        Ok(request) => control
            .take(crate::upstream::command::Command::Action(request))
            .await
            .into_response(),
    }
}

/// An endpoint as the API shows it: its settings without secrets (how many are set, and the
/// names of its custom headers only), where it is from, its state and its queue.
/// `dead` holds each endpoint's dead letters, counted once for the request.
fn endpoint_view(
    control: &Control,
    config: &WebhookConfig,
    source: Source,
    draining: bool,
    dead: &DeadCounts,
) -> Value {
    let outbox = &control.outbox;
    let name = config.name.as_str();
    let mut settings = serde_json::to_value(config).expect("serialises");
    if let Value::Object(map) = &mut settings {
        for secret in [
            "secret",
            "secrets",
            "headers",
            "name",
            "description",
            "url",
            "active",
        ] {
            map.remove(secret);
        }
    }
    let queue = outbox.queue(name);
    let pending = queue.map_or(0, |q| outbox.queue_len(q));
    let oldest = queue
        .and_then(|q| outbox.oldest(q).ok().flatten())
        .map_or(Value::Null, |r| created(&r.id));
    let disabled = outbox.disabled(name);
    let paused = outbox.paused(name);
    let last = control.metrics.deliver.endpoint(name).last_seen();
    json!({
        "name": name,
        "description": config.description,
        "source": source,
        "url": crate::secret::redact_url(&config.url),
        "active": config.active,
        "state": state(outbox, config, draining),
        "disabled": disabled.map(|d| json!({"reason": d.reason, "since": d.since})),
        "paused_since": paused.map(|p| p.since),
        "secrets_set": config.signing_secrets().iter().filter(|s| !s.is_empty()).count(),
        "headers": config.headers.keys().collect::<Vec<_>>(),
        "settings": settings,
        "pending": pending,
        "oldest_pending": oldest,
        "dead_letters": dead.get(name).copied().unwrap_or(0),
        "dropped": queue.map_or(0, |q| outbox.dropped_for(q)),
        "last_success": outbox.last(name, Last::Success).map_or(Value::Null, rfc3339),
        "last_failure": outbox.last(name, Last::Failure).map_or(Value::Null, rfc3339),
        "last_error": last.error,
        "last_latency_ms": last.latency.map(|l| l.as_millis() as u64),
    })
}

/// Dead letters per endpoint.
type DeadCounts = std::collections::HashMap<String, usize>;

/// Every endpoint's dead letters, counted from their keys (none if the read fails).
fn dead_counts(outbox: &crate::outbox::Outbox) -> DeadCounts {
    outbox.dead_counts().unwrap_or_default()
}

/// What an endpoint is doing, as the API names it.
fn state(outbox: &crate::outbox::Outbox, config: &WebhookConfig, draining: bool) -> &'static str {
    let name = config.name.as_str();
    if draining {
        "draining"
    } else if !config.active {
        "inactive"
    } else if outbox.disabled(name).is_some() {
        "disabled"
    } else if outbox.paused(name).is_some() {
        "paused"
    } else {
        "active"
    }
}

async fn outbox_status(control: &Control) -> Value {
    let configured = control.endpoints().await;
    let outbox = &control.outbox;
    let dead = dead_counts(outbox);
    let queues: Vec<Value> = outbox
        .queues()
        .into_iter()
        .map(|(q, name, routed)| {
            let config = configured.iter().find(|(c, _, _)| c.name == name);
            let state = match config {
                Some((c, _, draining)) => state(outbox, c, *draining),
                None => "not configured",
            };
            let oldest = outbox
                .oldest(q)
                .ok()
                .flatten()
                .map_or(Value::Null, |r| created(&r.id));
            json!({
                "endpoint": name,
                "state": state,
                "routed": routed,
                "pending": outbox.queue_len(q),
                "oldest_pending": oldest,
                "bytes": outbox.queue_bytes(q),
                "dead_letters": dead.get(&name).copied().unwrap_or(0),
                "dropped": outbox.dropped_for(q),
                "disabled": outbox.disabled(&name).map(|d| json!({"reason": d.reason, "since": d.since})),
                "paused_since": outbox.paused(&name).map(|p| p.since),
                "last_success": outbox.last(&name, Last::Success).map_or(Value::Null, rfc3339),
                "last_failure": outbox.last(&name, Last::Failure).map_or(Value::Null, rfc3339),
            })
        })
        .collect();
    json!({
        "pending": outbox.len(),
        "bytes": outbox.bytes(),
        "max_bytes": control.metrics.outbox.max_bytes(),
        "dead_letters": outbox.dead_len(),
        "writable": outbox.is_writable(),
        "queues": queues,
    })
}

fn record_view(endpoint: &str, r: &OutboxRecord) -> Value {
    json!({
        "endpoint": endpoint,
        "event_id": r.id,
        "type": r.kind,
        "lane": r.lane,
        "created": created(&r.id),
        "bytes": r.body.len(),
    })
}

/// The most matching events an `offset` skips (a command pages through a large outbox).
const MAX_OFFSET: usize = 10_000_000;

fn outbox_events(control: &Control, q: &Query) -> Response<Body> {
    let limit = match q.limit() {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let dead = match q.flag("dead") {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let offset = match q.get("offset").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= MAX_OFFSET => n,
        Some(_) => return error(400, Some("offset"), "must be a number from 0 to 10000000"),
    };
    let endpoint = q.get("endpoint");
    let kind = q.get("type");
    let outbox = &control.outbox;
    if let Some(e) = endpoint {
        if outbox.queue(e).is_none() {
            return error(
                404,
                Some("endpoint"),
                &format!("no endpoint `{e}` in the outbox"),
            );
        }
    }
    let chosen = |name: &str| endpoint.is_none_or(|e| e == name);
    let wanted = |k: &str| kind.is_none_or(|t| wildmatch::WildMatch::new(t).matches(k));
    let mut events = Vec::new();
    // Matching events before `offset` are skipped.
    let mut skip = offset;
    if dead {
        match outbox.dead_letters_where(
            |d| chosen(&d.endpoint) && wanted(&d.record.kind),
            offset,
            limit,
        ) {
            Ok(page) => {
                for d in &page {
                    let mut v = record_view(&d.endpoint, &d.record);
                    v["dead"] = json!({
                        "reason": d.info.reason,
                        "attempts": d.info.attempts,
                        "last_status": d.info.last_status,
                        "last_error": d.info.last_error,
                        "at": rfc3339(d.info.dead_at),
                    });
                    events.push(v);
                }
            }
            Err(e) => return error(503, None, &e.to_string()),
        }
    } else {
        for (queue, name, _) in outbox.queues() {
            if !chosen(&name) {
                continue;
            }
            // Read in bounded stretches: a filter by type or an offset may skip most of it.
            let mut after = None;
            while events.len() < limit {
                let records = match outbox.pending_after(queue, after, MAX_LIMIT) {
                    Ok(r) => r,
                    Err(e) => return error(503, None, &e.to_string()),
                };
                let Some(last) = records.last() else { break };
                after = Some(last.seq);
                for r in records.iter().filter(|r| wanted(&r.kind)) {
                    if skip > 0 {
                        skip -= 1;
                    } else if events.len() < limit {
                        events.push(record_view(&name, r));
                    }
                }
            }
        }
    }
    ok(json!({ "events": events }))
}

async fn replay(control: &Control, body: &Value) -> Response<Body> {
    let id = body.get("event_id").and_then(Value::as_str);
    let all = body
        .get("all_dead")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let endpoint = body.get("endpoint").and_then(Value::as_str);
    if id.is_none() && !all {
        return error(400, Some("event_id"), "give event_id, or all_dead: true");
    }
    if let Err(r) = control.outbox_open().await {
        return error(r.status, None, &r.message);
    }
    let outbox = &control.outbox;
    let chosen = |d: &crate::outbox::DeadLetter| {
        endpoint.is_none_or(|e| e == d.endpoint) && (all || id == Some(d.record.id.as_str()))
    };
    // A letter whose record is damaged cannot be sent: all_dead passes over it. Counted, and
    // the others revived, a page at a time: no answer holds every letter.
    let damaged = match outbox.dead_letters_where(|d| chosen(d) && d.damaged, 0, usize::MAX) {
        Ok(d) => d.len(),
        Err(e) => return error(503, None, &e.to_string()),
    };
    let mut replayed = 0;
    loop {
        let page = match outbox.dead_letters_where(|d| chosen(d) && !d.damaged, 0, 64) {
            Ok(page) => page,
            Err(e) => return error(503, None, &e.to_string()),
        };
        let mut revived = 0;
        for d in &page {
            match outbox.revive(&d.endpoint, d.record.seq).await {
                Ok(true) => revived += 1,
                Ok(false) => {}
                Err(e) => return error(503, None, &e.to_string()),
            }
        }
        replayed += revived;
        if revived == 0 || !all {
            break;
        }
    }
    if replayed == 0 && damaged == 0 {
        return error(404, Some("event_id"), "no such dead letter");
    }
    if replayed == 0 && !all {
        return error(
            409,
            Some("event_id"),
            "this dead letter was set aside as damaged on disk (its body cannot be read back): it cannot be sent again",
        );
    }
    tracing::info!(
        replayed,
        endpoint = endpoint.unwrap_or("*"),
        "control API: dead letters queued again"
    );
    ok(json!({ "replayed": replayed, "damaged_skipped": damaged }))
}

async fn purge(control: &Control, body: &Value) -> Response<Body> {
    let dead = body.get("dead").and_then(Value::as_bool).unwrap_or(false);
    let endpoint = match body.get("endpoint").and_then(Value::as_str) {
        Some(e) => e,
        None => {
            return error(
                400,
                Some("endpoint"),
                "name the endpoint whose events are deleted for good",
            )
        }
    };
    if control.outbox.queue(endpoint).is_none() {
        return error(
            404,
            Some("endpoint"),
            &format!("no endpoint `{endpoint}` in the outbox"),
        );
    }
    if let Err(r) = control.outbox_open().await {
        return error(r.status, None, &r.message);
    }
    match control.outbox.purge(dead, Some(endpoint)).await {
        Ok(n) => {
            tracing::warn!(endpoint, purged = n, dead, "control API: purged");
            ok(json!({ "purged": n }))
        }
        Err(e) => error(503, None, &e.to_string()),
    }
}

fn attempt_view(a: &crate::deliver::log::Attempt) -> Value {
    json!({
        "at": rfc3339(a.at),
        "endpoint": a.endpoint,
        "event_id": a.event_id,
        "ok": a.ok,
        "status": a.status,
        "ms": a.ms,
        "error": a.error,
    })
}

/// A delivery filter from the query: endpoint, event id, status (`ok`, `failed` or a code).
fn attempt_filter(
    q: &Query,
) -> Result<impl Fn(&crate::deliver::log::Attempt) -> bool, Box<Response<Body>>> {
    let endpoint = q.get("endpoint").map(str::to_string);
    let event = q.get("event").map(str::to_string);
    let status = match q.get("status") {
        None => None,
        Some("ok") => Some((Some(true), None)),
        Some("failed") => Some((Some(false), None)),
        Some(code) => match code.parse::<u16>() {
            Ok(c) => Some((None, Some(c))),
            Err(_) => {
                return Err(Box::new(error(
                    400,
                    Some("status"),
                    "must be ok, failed or an HTTP status",
                )))
            }
        },
    };
    Ok(move |a: &crate::deliver::log::Attempt| {
        endpoint.as_deref().is_none_or(|e| e == a.endpoint)
            && event.as_deref().is_none_or(|e| e == a.event_id)
            && status.is_none_or(|(ok, code)| {
                ok.is_none_or(|ok| ok == a.ok) && code.is_none_or(|c| a.status == Some(c))
            })
    })
}

fn deliveries(control: &Control, q: &Query) -> Response<Body> {
    let limit = match q.limit() {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let filter = match attempt_filter(q) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    match crate::deliver::log::read_matching(control.log.dir(), filter, limit) {
        Ok(chosen) => {
            let chosen: Vec<Value> = chosen.iter().map(attempt_view).collect();
            ok(json!({ "deliveries": chosen }))
        }
        Err(e) => error(503, None, &e.to_string()),
    }
}

/// Server-sent events: each delivery attempt as it is logged (`event: delivery`), filtered as
/// `/v1/deliveries` filters; a comment every [`KEEPALIVE`]; `event: lagged` when the
/// follower fell behind and missed some.
fn stream(control: &Control, q: &Query, cancel: CancellationToken) -> Response<Body> {
    let filter = match attempt_filter(q) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let open = STREAMS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if open >= MAX_STREAMS {
        STREAMS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        return error(503, None, "too many live streams open");
    }
    let mut follow = control.log.follow();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        struct Open;
        impl Drop for Open {
            fn drop(&mut self) {
                STREAMS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _open = Open;
        if tx
            .send(Bytes::from_static(b": edgehook deliveries\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let chunk = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(KEEPALIVE) => Bytes::from_static(b": keepalive\n\n"),
                next = follow.recv() => match next {
                    Ok(a) if filter(&a) => Bytes::from(format!("event: delivery\ndata: {}\n\n", attempt_view(&a))),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Bytes::from(format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n")),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-store")
        .body(Body::Stream(rx))
        .expect("valid")
}

/// Send one sample event of a type `name` receives straight to it (not through the outbox),
/// and say what the receiver answered and how long it took.
async fn test_event(control: &Control, name: &str) -> Response<Body> {
    let Some((config, _, _)) = control
        .endpoints()
        .await
        .into_iter()
        .find(|(c, _, _)| c.name == name)
    else {
        return error(404, None, &format!("no endpoint `{name}`"));
    };
    let endpoint = match crate::deliver::endpoint::Endpoint::new(&config) {
        Ok(e) => e,
        Err(e) => return error(500, None, &e.to_string()),
    };
    let Some(sample) = crate::device::samples()
        .into_iter()
        .find(|s| endpoint.wants(s.kind.as_str()))
    else {
        return error(
            409,
            None,
            "the endpoint receives no event type a sample exists for",
        );
    };
    let envelope = crate::event::Envelope::seal(&sample, &control.gateway.id, SystemTime::now());
    let record = OutboxRecord {
        seq: 0,
        id: envelope.id.clone(),
        kind: envelope.kind.as_str().to_string(),
        lane: envelope.lane.clone(),
        body: envelope.body.clone(),
    };
    let transport = match crate::deliver::transport::Http::new(&config) {
        Ok(t) => t,
        Err(e) => return error(500, None, &e.to_string()),
    };
    let started = std::time::Instant::now();
    let outcome = crate::deliver::Transport::send(&transport, &record).await;
    let ms = started.elapsed().as_millis() as u64;
    use crate::deliver::Outcome;
    let (delivered, status, why) = match outcome {
        Outcome::Delivered { status } => (true, Some(status), None),
        Outcome::Retry { status, reason, .. } => (false, status, Some(reason)),
        Outcome::Split { status } => (false, Some(status), None),
        Outcome::Unsendable { reason } => (false, None, Some(reason)),
        Outcome::NotSent => (
            false,
            None,
            Some("the endpoint's format has nothing to send for the sample".into()),
        ),
    };
    tracing::info!(endpoint = %name, delivered, status, ms, "control API: test event sent");
    ok(json!({
        "event_id": record.id,
        "type": record.kind,
        "delivered": delivered,
        "status": status,
        "ms": ms,
        "error": why,
        "at": rfc3339(now_ms()),
    }))
}
