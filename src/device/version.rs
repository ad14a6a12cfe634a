//! `device.app_updated`: the firmware or app version a device reports (its class's
//! `version_field`) changed. The version is kept with the device's state, so a restart neither
//! repeats the event nor misses a change made while edgehook was down. The first version heard
//! from a device (or from one in a store written before versions were kept) is remembered, not
//! reported: nothing changed that upstream could know of.

use serde_json::{Map, Value};

use super::{app_updated_event, DeviceState};
use crate::event::Event;

/// A reading with `fields` arrived from `device_id`: the event when its `field` changed.
/// `dirty` is set when the remembered version changed.
pub fn seen(
    state: &mut DeviceState,
    device_id: &str,
    field: &str,
    fields: &Map<String, Value>,
    dirty: &mut bool,
) -> Option<Event> {
    let now = fields.get(field)?;
    let before = state.version.replace(now.clone());
    if before.as_ref() != Some(now) {
        *dirty = true;
    }
    match before {
        Some(old) if old != *now => Some(app_updated_event(device_id, field, old, now.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_as_a_table() {
        // (remembered before, the reading, an event's previous → version, remembered after)
        type Row = (Option<Value>, Value, Option<(Value, Value)>, Option<Value>);
        #[rustfmt::skip]
        let table: &[Row] = &[
            (None, json!({"fw": "1.0"}), None, Some(json!("1.0"))),
            (Some(json!("1.0")), json!({"fw": "1.0"}), None, Some(json!("1.0"))),
            (Some(json!("1.0")), json!({"fw": "1.1"}), Some((json!("1.0"), json!("1.1"))), Some(json!("1.1"))),
            (Some(json!("1.1")), json!({"presence": true}), None, Some(json!("1.1"))),
            (Some(json!(7)), json!({"fw": 8}), Some((json!(7), json!(8))), Some(json!(8))),
        ];
        for (before, reading, want, after) in table {
            let mut state = DeviceState {
                version: before.clone(),
                ..Default::default()
            };
            let mut dirty = false;
            let fields = reading.as_object().unwrap();
            let got = seen(&mut state, "d", "fw", fields, &mut dirty);
            let got = got.map(|e| (e.data["previous"].clone(), e.data["version"].clone()));
            assert_eq!(got, *want, "{before:?} then {reading}");
            assert_eq!(state.version, *after);
            assert_eq!(dirty, before != after, "persisted only when it changed");
        }
    }
}
