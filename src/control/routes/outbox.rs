//! `/v1/outbox`: each endpoint's queue, the pending events and dead letters a page at a time,
//! replay and purge.

use crate::outbox::{Last, OutboxRecord};

use super::endpoints::{dead_counts, state};
use hyper::Response;
use serde_json::{json, Value};

use super::super::http::*;
use super::super::server::Body;
use super::super::Control;

pub(super) async fn outbox_status(control: &Control) -> Value {
    let configured = control.endpoints().await;
    let outbox = &control.outbox;
    let dead = dead_counts(outbox);
    let queues: Vec<Value> = outbox
        .queues()
        .into_iter()
        // A deleted endpoint's queue is listed while it holds something to deliver or purge.
        .filter(|(q, name, _)| {
            configured.iter().any(|(c, _, _)| c.name == *name)
                || outbox.queue_len(*q) > 0
                || dead.get(name).is_some_and(|&n| n > 0)
        })
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

pub(super) fn record_view(endpoint: &str, r: &OutboxRecord) -> Value {
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
pub(super) const MAX_OFFSET: usize = 10_000_000;

pub(super) fn outbox_events(control: &Control, q: &Query) -> Response<Body> {
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

pub(super) async fn replay(control: &Control, body: &Value) -> Response<Body> {
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

pub(super) async fn purge(control: &Control, body: &Value) -> Response<Body> {
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
