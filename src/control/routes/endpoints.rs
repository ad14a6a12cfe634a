//! `/v1/endpoints`: the webhook endpoints listed, made, edited, paused, resumed, enabled,
//! tested and deleted, and the view of one.

use std::time::SystemTime;

use crate::control::endpoints::{Change, Pending, Source};
use crate::deliver::config::WebhookConfig;
use crate::outbox::{Last, OutboxRecord};

use hyper::body::Bytes;
use hyper::Response;
use serde_json::{json, Value};

use super::super::http::*;
use super::super::server::Body;
use super::super::Control;

/// `GET /v1/endpoints`.
pub(super) async fn list(control: &Control) -> Response<Body> {
    let all = control.endpoints().await;
    let dead = dead_counts(&control.outbox);
    let list: Vec<Value> = all
        .iter()
        .map(|(c, s, d)| endpoint_view(control, c, *s, *d, &dead))
        .collect();
    ok(json!({ "endpoints": list }))
}

/// `POST /v1/endpoints`, `PUT` and `PATCH /v1/endpoints/{name}`: `make` is the change the body
/// asks for.
pub(super) async fn change(
    control: &Control,
    body: &Bytes,
    make: impl FnOnce(Value) -> Change,
    status: u16,
) -> Response<Body> {
    match parse_body(body) {
        Ok(v) => changed(control, make(v), status).await,
        Err(r) => *r,
    }
}

/// `DELETE /v1/endpoints/{name}?pending=refuse|drain|purge`.
pub(super) async fn delete(control: &Control, name: &str, q: &Query) -> Response<Body> {
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

/// `POST /v1/endpoints/{name}/pause` and `.../resume`.
pub(super) async fn pause(control: &Control, name: &str, paused: bool) -> Response<Body> {
    match control.pause(name, paused).await {
        Ok(()) => one_endpoint(control, name, 200).await,
        Err(r) => error(r.status, r.field.as_deref(), &r.message),
    }
}

/// `POST /v1/endpoints/{name}/enable`.
pub(super) async fn enable(control: &Control, name: &str) -> Response<Body> {
    match control.enable(name).await {
        Ok(_) => one_endpoint(control, name, 200).await,
        Err(r) => error(r.status, r.field.as_deref(), &r.message),
    }
}

pub(super) async fn changed(control: &Control, change: Change, status: u16) -> Response<Body> {
    match control.change(change).await {
        Ok(name) => one_endpoint(control, &name, status).await,
        Err(r) => error(r.status, r.field.as_deref(), &r.message),
    }
}

pub(super) async fn one_endpoint(control: &Control, name: &str, status: u16) -> Response<Body> {
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

/// An endpoint as the API shows it: its settings without secrets (how many are set, and the
/// names of its custom headers only), where it is from, its state and its queue.
/// `dead` holds each endpoint's dead letters, counted once for the request.
pub(super) fn endpoint_view(
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
pub(super) type DeadCounts = std::collections::HashMap<String, usize>;

/// Every endpoint's dead letters, counted from their keys (none if the read fails).
pub(super) fn dead_counts(outbox: &crate::outbox::Outbox) -> DeadCounts {
    outbox.dead_counts().unwrap_or_default()
}

/// What an endpoint is doing, as the API names it.
pub(super) fn state(
    outbox: &crate::outbox::Outbox,
    config: &WebhookConfig,
    draining: bool,
) -> &'static str {
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

/// Send one sample event of a type `name` receives straight to it (not through the outbox),
/// and say what the receiver answered and how long it took.
pub(super) async fn test_event(control: &Control, name: &str) -> Response<Body> {
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
