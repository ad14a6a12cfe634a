//! `/v1/deliveries`: the delivery log, filtered, and its live stream (server-sent events).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use hyper::body::Bytes;
use hyper::Response;
use serde_json::{json, Value};

use super::super::http::*;
use super::super::server::Body;
use super::super::Control;

/// Live event streams open at once (the console holds one per tab).
pub(super) const MAX_STREAMS: usize = 8;

/// A live stream sends a comment this often, so that a proxy or the browser keeps it open.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(15);

static STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(super) fn attempt_view(a: &crate::deliver::log::Attempt) -> Value {
    json!({
        "at": rfc3339(a.at),
        "endpoint": a.endpoint,
        "event_id": a.event_id,
        "type": (!a.kind.is_empty()).then_some(&a.kind),
        "lane": (!a.lane.is_empty()).then_some(&a.lane),
        "ok": a.ok,
        "status": a.status,
        "ms": a.ms,
        "error": a.error,
    })
}

/// A delivery filter from the query: endpoint, event id, device or workspace, status (`ok`,
/// `failed` or a code).
pub(super) fn attempt_filter(
    q: &Query,
) -> Result<impl Fn(&crate::deliver::log::Attempt) -> bool, Box<Response<Body>>> {
    let endpoint = q.get("endpoint").map(str::to_string);
    let event = q.get("event").map(str::to_string);
    let lane = match (q.get("device"), q.get("workspace")) {
        (Some(d), _) => Some(format!("device:{d}")),
        (None, Some(w)) => Some(format!("workspace:{w}")),
        (None, None) => None,
    };
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
            && lane.as_deref().is_none_or(|l| l == a.lane)
            && status.is_none_or(|(ok, code)| {
                ok.is_none_or(|ok| ok == a.ok) && code.is_none_or(|c| a.status == Some(c))
            })
    })
}

pub(super) fn deliveries(control: &Control, q: &Query) -> Response<Body> {
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

/// One event's deliveries (to `endpoint`, if the query names one): its attempts in the log,
/// and the latest request and answer whole while they are kept (in memory: the latest
/// [`KEEP`](crate::deliver::exchanges::KEEP) requests).
pub(super) fn one(control: &Control, event_id: &str, q: &Query) -> Response<Body> {
    let endpoint = q.get("endpoint");
    let wanted = |a: &crate::deliver::log::Attempt| {
        a.event_id == event_id && endpoint.is_none_or(|e| e == a.endpoint)
    };
    let attempts = match crate::deliver::log::read_matching(control.log.dir(), wanted, 100) {
        Ok(attempts) => attempts,
        Err(e) => return error(503, None, &e.to_string()),
    };
    let exchange = control.log.exchanges().find(event_id, endpoint);
    if attempts.is_empty() && exchange.is_none() {
        return error(
            404,
            None,
            "no attempt to deliver this event is in the delivery log (it keeps the latest outbox.delivery_log attempts)",
        );
    }
    let text = |t: &crate::deliver::exchanges::Text| json!({ "body": t.text, "bytes": t.bytes, "truncated": t.truncated });
    let exchange = exchange.map(|x| {
        let mut request = text(&x.request);
        request["content_type"] = json!(x.content_type);
        let response = x.response.as_ref().map(|(status, body)| {
            let mut response = text(body);
            response["status"] = json!(status);
            response
        });
        json!({
            "at": rfc3339(x.at),
            "endpoint": x.endpoint,
            "events": x.event_ids.len(),
            "request": request,
            "response": response,
        })
    });
    ok(json!({
        "event_id": event_id,
        "attempts": attempts.iter().map(attempt_view).collect::<Vec<_>>(),
        "exchange": exchange,
    }))
}

/// Server-sent events: each delivery attempt as it is logged (`event: delivery`), filtered as
/// `/v1/deliveries` filters; a comment every [`KEEPALIVE`]; `event: lagged` when the
/// follower fell behind and missed some.
pub(super) fn stream(control: &Control, q: &Query, cancel: CancellationToken) -> Response<Body> {
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
