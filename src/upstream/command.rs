//! What upstream sends down, pushed or pulled: one JSON command
//!
//! ```json
//! {"type": "device.action_requested", "data": {"id": "a-1", "device": "room-1-display",
//!   "name": "show_message", "params": {"text": "Welcome"}, "deadline": "2026-12-03T18:00:00Z"}}
//! {"type": "booking.start", "data": {"booking_id": "bk-abc123", "workspace_id": "room-1",
//!   "start": "2026-12-03T10:00:00Z", "end": "2026-12-03T11:00:00Z", "title": "Standup"}}
//! {"type": "booking.end", "data": {"booking_id": "bk-abc123", "workspace_id": "room-1"}}
//! ```
//!
//! SpaceOS's own webhook shape is taken as it is: `event` for `type`, `meeting_space_id` for
//! `workspace_id`, `start_time` / `end_time` for `start` / `end`; `booking.cancelled` ends a
//! booking like `booking.end`. Pure: a malformed command names the field.

use std::time::UNIX_EPOCH;

use serde_json::{Map, Value};

use crate::device::booking::Booking;
use crate::device::{ActionRequest, Millis};

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Action(ActionRequest),
    BookingStart(Booking),
    BookingEnd {
        booking_id: String,
        workspace: String,
    },
}

/// A field that is missing or wrong (400, naming it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// The command types taken.
pub const TYPES: [&str; 4] = [
    "device.action_requested",
    "booking.start",
    "booking.end",
    "booking.cancelled",
];

/// Parse one command; `now` refuses deadlines already past.
pub fn parse(body: &Value, now: Millis) -> Result<Command, FieldError> {
    let Some(object) = body.as_object() else {
        return Err(field_error(
            "type",
            "the body must be a JSON object {\"type\", \"data\"}",
        ));
    };
    let (key, kind) = match (object.get("type"), object.get("event")) {
        (Some(t), _) => ("type", t),
        (None, Some(e)) => ("event", e),
        (None, None) => {
            return Err(field_error(
                "type",
                format!("missing: one of {}", TYPES.join(", ")),
            ))
        }
    };
    let Some(data) = object.get("data").and_then(Value::as_object) else {
        return Err(field_error("data", "must be an object"));
    };
    let at = |field: &str| format!("data.{field}");
    match kind.as_str() {
        Some("device.action_requested") => action(data, now)
            .map(Command::Action)
            .map_err(|e| field_error(&at(&e.field), e.message)),
        Some("booking.start") => booking(data, now).map(Command::BookingStart),
        Some("booking.end" | "booking.cancelled") => Ok(Command::BookingEnd {
            booking_id: text(data, &["booking_id"])
                .map_err(|m| field_error("data.booking_id", m))?,
            workspace: text(data, &["workspace_id", "meeting_space_id"])
                .map_err(|m| field_error("data.workspace_id", m))?,
        }),
        _ => Err(field_error(
            key,
            format!("must be one of {}", TYPES.join(", ")),
        )),
    }
}

/// An action request: `{"id", "device", "name", "params", "deadline"}` (the deadline RFC 3339,
/// in the future; unset: `devices.action_deadline` from acceptance). Field names are bare.
pub fn action(data: &Map<String, Value>, now: Millis) -> Result<ActionRequest, FieldError> {
    let id = text(data, &["id"]).map_err(|m| field_error("id", m))?;
    let device = text(data, &["device"]).map_err(|m| field_error("device", m))?;
    let name = text(data, &["name"]).map_err(|m| field_error("name", m))?;
    let deadline = match data.get("deadline") {
        None | Some(Value::Null) => None,
        Some(t) => Some(time(t).map_err(|m| field_error("deadline", m))?),
    };
    if deadline.is_some_and(|d| d <= now) {
        return Err(field_error("deadline", "is already past"));
    }
    Ok(ActionRequest {
        id,
        device,
        name,
        params: data.get("params").cloned().unwrap_or(Value::Null),
        deadline,
    })
}

fn booking(data: &Map<String, Value>, now: Millis) -> Result<Booking, FieldError> {
    let id = text(data, &["booking_id"]).map_err(|m| field_error("data.booking_id", m))?;
    let workspace = text(data, &["workspace_id", "meeting_space_id"])
        .map_err(|m| field_error("data.workspace_id", m))?;
    let get = |names: [&str; 2]| {
        let field = format!("data.{}", names[0]);
        let value = names
            .iter()
            .find_map(|n| data.get(*n))
            .ok_or_else(|| field_error(&field, "missing: an RFC 3339 time"))?;
        time(value).map_err(|m| field_error(&field, m))
    };
    let start = get(["start", "start_time"])?;
    let end = get(["end", "end_time"])?;
    if end <= start {
        return Err(field_error("data.end", "must be after start"));
    }
    if end <= now {
        return Err(field_error(
            "data.end",
            "is already past: the booking is over",
        ));
    }
    let known = [
        "booking_id",
        "workspace_id",
        "meeting_space_id",
        "start",
        "start_time",
        "end",
        "end_time",
    ];
    let details: Map<String, Value> = data
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Booking {
        id,
        workspace,
        start,
        end,
        details: if details.is_empty() {
            Value::Null
        } else {
            Value::Object(details)
        },
        ended: None,
    })
}

/// The first of `names` present: a string of 1 to 128 characters (trimmed).
fn text(data: &Map<String, Value>, names: &[&str]) -> Result<String, String> {
    match names.iter().find_map(|n| data.get(*n)) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.trim().len() <= 128 => {
            Ok(s.trim().to_string())
        }
        _ => Err("must be a string of 1 to 128 characters".into()),
    }
}

fn time(value: &Value) -> Result<Millis, String> {
    let bad = || "must be an RFC 3339 time, e.g. 2026-12-03T18:00:00Z".to_string();
    let text = value.as_str().ok_or_else(bad)?;
    let at = humantime::parse_rfc3339_weak(text).map_err(|_| bad())?;
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: Millis = 1_796_302_800_000; // 2026-12-03T13:00:00Z

    #[test]
    fn commands_parse_or_name_the_field() {
        // (body, Ok(kind) or Err(field))
        let rows: Vec<(Value, Result<&str, &str>)> = vec![
            (
                json!({"type": "device.action_requested", "data": {"id": "a", "device": "d", "name": "identify"}}),
                Ok("action"),
            ),
            (
                json!({"type": "device.action_requested", "data": {"id": "a", "device": "d", "name": "identify", "deadline": "2026-12-03T14:00:00Z"}}),
                Ok("action"),
            ),
            (
                json!({"type": "device.action_requested", "data": {"id": "a", "device": "d", "name": "identify", "deadline": "2026-12-03T12:00:00Z"}}),
                Err("data.deadline"),
            ),
            (
                json!({"type": "device.action_requested", "data": {"id": "", "device": "d", "name": "identify"}}),
                Err("data.id"),
            ),
            (
                json!({"type": "device.action_requested", "data": {"id": "a", "name": "identify"}}),
                Err("data.device"),
            ),
            (
                json!({"type": "device.action_requested", "data": {"id": "a", "device": "d", "name": 7}}),
                Err("data.name"),
            ),
            (
                json!({"type": "booking.start", "data": {"booking_id": "b", "workspace_id": "w", "start": "2026-12-03T13:15:00Z", "end": "2026-12-03T14:00:00Z"}}),
                Ok("start"),
            ),
            // SpaceOS's own shape
            (
                json!({"event": "booking.start", "timestamp": "2026-12-03T13:00:00Z", "data": {"booking_id": "bk-abc123", "meeting_space_id": "ms-xyz789", "organization_id": "org-123", "start_time": "2026-12-03T13:15:00Z", "end_time": "2026-12-03T14:00:00Z"}}),
                Ok("start"),
            ),
            (
                json!({"type": "booking.start", "data": {"booking_id": "b", "workspace_id": "w", "start": "2026-12-03T13:15:00Z"}}),
                Err("data.end"),
            ),
            (
                json!({"type": "booking.start", "data": {"booking_id": "b", "workspace_id": "w", "start": "2026-12-03T13:15:00Z", "end": "2026-12-03T13:10:00Z"}}),
                Err("data.end"),
            ),
            (
                json!({"type": "booking.start", "data": {"booking_id": "b", "workspace_id": "w", "start": "2026-12-03T11:00:00Z", "end": "2026-12-03T12:00:00Z"}}),
                Err("data.end"),
            ),
            (
                json!({"type": "booking.start", "data": {"booking_id": "b", "workspace_id": "w", "start": "tomorrow", "end": "2026-12-03T14:00:00Z"}}),
                Err("data.start"),
            ),
            (
                json!({"type": "booking.start", "data": {"workspace_id": "w", "start": "2026-12-03T13:15:00Z", "end": "2026-12-03T14:00:00Z"}}),
                Err("data.booking_id"),
            ),
            (
                json!({"type": "booking.end", "data": {"booking_id": "b", "workspace_id": "w"}}),
                Ok("end"),
            ),
            (
                json!({"event": "booking.cancelled", "data": {"booking_id": "b", "meeting_space_id": "w"}}),
                Ok("end"),
            ),
            (
                json!({"type": "booking.end", "data": {"booking_id": "b"}}),
                Err("data.workspace_id"),
            ),
            (json!({"type": "room.explode", "data": {}}), Err("type")),
            (json!({"event": 3, "data": {}}), Err("event")),
            (json!({"data": {}}), Err("type")),
            (json!({"type": "booking.end"}), Err("data")),
            (json!([1, 2]), Err("type")),
        ];
        for (body, expected) in rows {
            let got = parse(&body, NOW);
            match (&got, expected) {
                (Ok(Command::Action(_)), Ok("action"))
                | (Ok(Command::BookingStart(_)), Ok("start"))
                | (Ok(Command::BookingEnd { .. }), Ok("end")) => {}
                (Err(e), Err(field)) if e.field == field => {}
                _ => panic!("{body}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_booking_keeps_what_else_upstream_said_of_it() {
        let body = json!({"event": "booking.start", "data": {"booking_id": "bk-abc123", "meeting_space_id": "ms-xyz789", "organization_id": "org-123", "title": "Standup", "start_time": "2026-12-03T13:15:00Z", "end_time": "2026-12-03T14:00:00Z"}});
        let Ok(Command::BookingStart(b)) = parse(&body, NOW) else {
            panic!("a booking")
        };
        assert_eq!(
            b,
            Booking {
                id: "bk-abc123".into(),
                workspace: "ms-xyz789".into(),
                start: NOW + 15 * 60_000,
                end: NOW + 60 * 60_000,
                details: json!({"organization_id": "org-123", "title": "Standup"}),
                ended: None,
            }
        );
    }
}
