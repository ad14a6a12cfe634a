//! `/v1/actions` and `/v1/bookings`: an action submitted, looked up or cancelled; the bookings
//! kept.

use hyper::body::Bytes;
use hyper::Response;
use serde_json::{json, Value};

use super::super::http::*;
use super::super::server::Body;
use super::super::Control;

/// `POST /v1/actions`.
pub(super) async fn submit(control: &Control, body: &Bytes) -> Response<Body> {
    match parse_body(body) {
        Ok(v) => submit_action(control, &v).await,
        Err(r) => *r,
    }
}

/// `GET /v1/actions/{id}`.
pub(super) async fn one(control: &Control, id: &str) -> Response<Body> {
    match control.action(id).await {
        Ok(a) => ok(crate::control::commands::action_view(&a)),
        Err(r) => error(r.status, r.field.as_deref(), &r.message),
    }
}

/// `DELETE /v1/actions/{id}`: cancel it, if not sent yet.
pub(super) async fn cancel(control: &Control, id: &str) -> Response<Body> {
    match control.cancel_action(id).await {
        Ok(a) => ok(crate::control::commands::action_view(&a)),
        Err(r) => error(r.status, r.field.as_deref(), &r.message),
    }
}

/// `GET /v1/bookings`.
pub(super) async fn bookings(control: &Control) -> Response<Body> {
    match control.bookings().await {
        Ok(list) => {
            let list: Vec<Value> = list
                .iter()
                .map(crate::control::commands::booking_view)
                .collect();
            ok(json!({ "bookings": list }))
        }
        Err(r) => error(r.status, r.field.as_deref(), &r.message),
    }
}

/// `POST /v1/actions`: `{"id", "device", "name", "params", "deadline"}` (the deadline RFC 3339;
/// by default `devices.action_deadline` from now).
pub(super) async fn submit_action(control: &Control, body: &Value) -> Response<Body> {
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
