//! The events the device stage makes, from health transitions, readings and workspace votes.

use super::*;

pub(super) fn rfc3339(at: Millis) -> Value {
    Value::String(rfc3339_text(at))
}

pub(super) use crate::clock::rfc3339 as rfc3339_text;

pub(super) fn one_field(key: &str, value: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.into(), value);
    m
}

pub(super) fn health_event(device_id: &str, t: Transition) -> Event {
    match t {
        Transition::Online => Event::device(EventType::DeviceOnline, device_id, Map::new()),
        Transition::Offline { since } => Event::device(
            EventType::DeviceOffline,
            device_id,
            one_field("since", rfc3339(since)),
        ),
        Transition::Lost { last_seen } => Event::device(
            EventType::DeviceLostCommunication,
            device_id,
            one_field("last_seen", rfc3339(last_seen)),
        ),
    }
}

pub(super) fn reading_event(device_id: &str, report: Report) -> Event {
    let mut data = Map::new();
    data.insert("fields".into(), Value::Object(report.fields));
    data.insert(
        "changed".into(),
        Value::Array(report.changed.into_iter().map(Value::String).collect()),
    );
    Event::device(EventType::SensorReadingUpdated, device_id, data)
}

pub(super) fn app_updated_event(
    device_id: &str,
    field: &str,
    previous: Value,
    version: Value,
) -> Event {
    let mut data = Map::new();
    data.insert("field".into(), field.into());
    data.insert("previous".into(), previous);
    data.insert("version".into(), version);
    Event::device(EventType::DeviceAppUpdated, device_id, data)
}

pub(super) fn registered_event(
    device_id: &str,
    class: &str,
    identity: Map<String, Value>,
) -> Event {
    let mut data = Map::new();
    data.insert("class".into(), class.into());
    data.insert("identity".into(), Value::Object(identity));
    Event::device(EventType::DeviceRegistered, device_id, data)
}

/// Why a device was forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    /// Not heard from for its class's `forget_after`.
    Silent,
    /// By an operator (the control API, `edgehook devices forget`).
    Operator,
}

pub(super) fn unregistered_event(
    device_id: &str,
    class: &str,
    last_seen: Millis,
    why: Forgotten,
) -> Event {
    let mut data = Map::new();
    data.insert("class".into(), class.into());
    data.insert(
        "last_seen".into(),
        if last_seen > 0 {
            rfc3339(last_seen)
        } else {
            Value::Null
        },
    );
    data.insert(
        "reason".into(),
        match why {
            Forgotten::Silent => "forget_after",
            Forgotten::Operator => "operator",
        }
        .into(),
    );
    Event::device(EventType::DeviceUnregistered, device_id, data)
}

pub(super) fn sync_event(device_id: &str, field: &str, change: sync::SyncChange) -> Event {
    let mut data = Map::new();
    data.insert("field".into(), field.into());
    match change {
        sync::SyncChange::OutOfSync {
            reported,
            desired,
            since,
        } => {
            data.insert("reported".into(), reported);
            data.insert("desired".into(), desired);
            data.insert("since".into(), rfc3339(since));
            Event::device(EventType::DeviceOutOfSync, device_id, data)
        }
        sync::SyncChange::InSync { reported } => {
            data.insert("reported".into(), reported);
            Event::device(EventType::DeviceInSync, device_id, data)
        }
    }
}

pub(super) fn condition_event(device_id: &str, report: condition::ConditionReport) -> Event {
    let mut data = Map::new();
    data.insert("state".into(), Value::Object(report.state));
    data.insert(
        "changed".into(),
        Value::Array(report.changed.into_iter().map(Value::String).collect()),
    );
    Event::device(EventType::SensorStateUpdated, device_id, data)
}

pub(super) fn group_reading_event(group_id: &str, report: group::GroupReport) -> Event {
    let mut data = report.values;
    data.insert(
        "changed".into(),
        Value::Array(report.changed.into_iter().map(Value::String).collect()),
    );
    Event::group(EventType::SensorGroupReadingUpdated, group_id, data)
}

pub(super) fn group_stale_event(group_id: &str, last_reading: Millis) -> Event {
    Event::group(
        EventType::SensorGroupReadingStale,
        group_id,
        one_field("last_reading", rfc3339(last_reading)),
    )
}

pub(super) fn group_state_event(group_id: &str, report: group::GroupReport) -> Event {
    let mut data = report.values;
    data.insert(
        "changed".into(),
        Value::Array(report.changed.into_iter().map(Value::String).collect()),
    );
    Event::group(EventType::SensorGroupStateUpdated, group_id, data)
}

pub(super) fn action_completed_event(a: &action::Action, c: action::Completion) -> Event {
    let mut data = Map::new();
    data.insert("action_id".into(), a.id.clone().into());
    data.insert("name".into(), a.name.clone().into());
    data.insert("status".into(), c.status.as_str().into());
    data.insert("reason".into(), c.reason.map_or(Value::Null, Value::String));
    data.insert("result".into(), c.result.unwrap_or(Value::Null));
    Event::device(EventType::DeviceActionCompleted, &a.device, data)
}

pub(super) fn stale_event(device_id: &str, last_reading: Millis) -> Event {
    Event::device(
        EventType::SensorReadingStale,
        device_id,
        one_field("last_reading", rfc3339(last_reading)),
    )
}

/// One event of every type, made by the functions that make the real ones (for checking an
/// endpoint's template against each type it subscribes to).
pub fn samples() -> Vec<Event> {
    let at = 1_764_000_000_000;
    let mut fields = Map::new();
    fields.insert("presence".into(), Value::Bool(true));
    fields.insert("temperature".into(), 21.5.into());
    let samples = vec![
        health_event("sample-device", Transition::Online),
        health_event("sample-device", Transition::Offline { since: at }),
        health_event("sample-device", Transition::Lost { last_seen: at }),
        app_updated_event("sample-device", "firmware", "1.4.2".into(), "1.5.0".into()),
        registered_event(
            "sample-device",
            "sensors",
            one_field("model", "OCC-200".into()),
        ),
        unregistered_event("sample-device", "sensors", at, Forgotten::Silent),
        sync_event(
            "sample-device",
            "config_version",
            sync::SyncChange::OutOfSync {
                reported: "v11".into(),
                desired: "v12".into(),
                since: at,
            },
        ),
        sync_event(
            "sample-device",
            "config_version",
            sync::SyncChange::InSync {
                reported: "v12".into(),
            },
        ),
        reading_event(
            "sample-device",
            Report {
                fields,
                changed: vec!["presence".into()],
            },
        ),
        stale_event("sample-device", at),
        condition_event(
            "sample-device",
            condition::ConditionReport {
                state: one_field("battery", 15.into()),
                changed: vec!["battery".into()],
            },
        ),
        group_reading_event(
            "sample-group",
            group::GroupReport {
                values: serde_json::json!({"members": 4, "usable": 3, "present": 2, "occupancy": 0.67, "temperature": 21.4})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                changed: vec!["present".into(), "occupancy".into()],
            },
        ),
        group_stale_event("sample-group", at),
        action_completed_event(
            &action::Action {
                id: "act-7".into(),
                device: "sample-device".into(),
                name: "show_message".into(),
                params: serde_json::json!({"text": "Welcome"}),
                submitted: at,
                seq: 1,
                deadline: at + 86_400_000,
                state: action::ActionState::Waiting,
            },
            action::Completion {
                status: action::ActionStatus::Succeeded,
                reason: None,
                result: Some(serde_json::json!({"shown": true})),
            },
        ),
        group_state_event(
            "sample-group",
            group::GroupReport {
                values: serde_json::json!({"members": 4, "usable": 3, "battery": 15.0})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                changed: vec!["usable".into()],
            },
        ),
        workspace_event(
            "sample-workspace",
            WorkspaceStatus::Occupied,
            Some(WorkspaceStatus::Free),
            Some("sample-device"),
        ),
    ];
    debug_assert_eq!(samples.len(), EventType::ALL.len());
    samples
}

pub(super) fn workspace_event(
    workspace_id: &str,
    status: WorkspaceStatus,
    previous: Option<WorkspaceStatus>,
    cause: Option<&str>,
) -> Event {
    let mut data = Map::new();
    data.insert("workspace_id".into(), workspace_id.into());
    data.insert("status".into(), status.as_str().into());
    data.insert(
        "previous_status".into(),
        previous.map_or(Value::Null, |p| p.as_str().into()),
    );
    data.insert("device_id".into(), cause.map_or(Value::Null, |d| d.into()));
    Event::workspace(workspace_id, data)
}
