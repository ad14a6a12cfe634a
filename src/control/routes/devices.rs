//! `/v1/gateway`, `/v1/devices` and `/v1/workspaces`: what the gateway knows of itself, its
//! devices (a page at a time) and its rooms; forgetting a device, a desired value.

use crate::device::Selection;

use hyper::body::Bytes;
use hyper::Response;
use serde_json::{json, Value};

use super::super::http::*;
use super::super::server::Body;
use super::super::Control;

/// `GET /v1/devices?limit&after`: a page, and where the next starts.
pub(super) async fn list(control: &Control, q: &Query) -> Response<Body> {
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

/// `GET /v1/devices/{id}`.
pub(super) async fn one(control: &Control, id: &str) -> Response<Body> {
    match devices(control, Selection::One(id.to_string())).await {
        Ok((list, _)) => match list.into_iter().next() {
            Some(d) => ok(d),
            None => error(404, None, &format!("no device `{id}`")),
        },
        Err(e) => error(503, None, &e),
    }
}

/// `DELETE /v1/devices/{id}`.
pub(super) async fn forget(control: &Control, id: &str) -> Response<Body> {
    match control.forget_device(id).await {
        Ok(()) => Response::builder()
            .status(204)
            .body(Body::Full(None))
            .expect("valid"),
        Err(r) => error(r.status, r.field.as_deref(), &r.message),
    }
}

/// `PUT /v1/devices/{id}/desired`: `{"value": ...}` (null clears it).
pub(super) async fn desire(control: &Control, id: &str, body: &Bytes) -> Response<Body> {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(value) = v.get("value") else {
        return error(
            400,
            Some("value"),
            "give the value desired (null clears it)",
        );
    };
    let value = Some(value.clone()).filter(|v| !v.is_null());
    match control.desire(id, value).await {
        Ok(()) => one(control, id).await,
        Err(r) => error(r.status, r.field.as_deref(), &r.message),
    }
}

/// `GET /v1/workspaces`.
pub(super) async fn workspaces_list(control: &Control) -> Response<Body> {
    match workspaces(control).await {
        Ok(list) => ok(json!({ "workspaces": list })),
        Err(e) => error(503, None, &e),
    }
}

pub(super) async fn gateway(control: &Control) -> Value {
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
        "modbus": {
            "buses": control.gateway.modbus_buses,
            "open": m.source.modbus_buses_open(),
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
/// [`crate::control::LARGE_READS`] are built at once: the others wait their turn.
pub(super) async fn devices(
    control: &Control,
    selection: Selection,
) -> Result<(Vec<Value>, bool), String> {
    let _turn = control
        .large_reads
        .acquire()
        .await
        .map_err(|e| e.to_string())?;
    // One device's view carries its history of health too.
    let one = matches!(selection, Selection::One(_));
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
            let mut view = json!({
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
            });
            if one {
                view["health_history"] = s
                    .health_history
                    .iter()
                    .map(|c| json!({"at": rfc3339(c.at), "health": c.health}))
                    .collect();
                let classes = control.classes.lock().unwrap_or_else(|e| e.into_inner());
                view["actions"] = json!(classes
                    .iter()
                    .find(|c| Some(&c.name) == class.as_ref())
                    .map_or(&[][..], |c| c.actions()));
            }
            view
        })
        .collect();
    Ok((list, more))
}

pub(super) async fn workspaces(control: &Control) -> Result<Vec<Value>, String> {
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
