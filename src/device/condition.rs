//! A device's condition — its *state fields*: battery level or low-battery flag, tamper, an
//! error code — kept apart from what it senses, as pure functions over [`DeviceState`].
//!
//! A class names its state fields; they are taken out of each reading (so a battery draining
//! by a percent is never a `sensor.reading.updated`) and reported as `sensor.state.updated`
//! when one changes beyond its own deadband (`state_deadband`), measured against what was last
//! reported, so slow drift still adds up to an event. A device's first value of a state field
//! is a change. The last reported values are kept with the device's state.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::reading::changed_fields;
use super::DeviceState;

/// The state-field rules of one device class.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConditionPolicy {
    pub fields: Vec<String>,
    pub deadband: BTreeMap<String, f64>,
}

/// One `sensor.state.updated`: every state field's last reported value, and those that changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionReport {
    pub state: Map<String, Value>,
    pub changed: Vec<String>,
}

impl ConditionPolicy {
    /// `fields` split into what the device senses (the reading) and its state fields.
    pub fn split(&self, fields: &Map<String, Value>) -> (Map<String, Value>, Map<String, Value>) {
        if self.fields.is_empty() {
            return (fields.clone(), Map::new());
        }
        fields
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| !self.fields.contains(k))
    }
}

/// State field values arrived. Returns the report to send, if one changed; `dirty` is set
/// when the persisted state changed.
pub fn received(
    state: &mut DeviceState,
    policy: &ConditionPolicy,
    values: &Map<String, Value>,
    dirty: &mut bool,
) -> Option<ConditionReport> {
    let changed = changed_fields(&state.condition, values, &[], &policy.deadband);
    if changed.is_empty() {
        return None;
    }
    for field in &changed {
        state.condition.insert(field.clone(), values[field].clone());
    }
    *dirty = true;
    Some(ConditionReport {
        state: state.condition.clone(),
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn state_fields_are_split_from_readings() {
        let policy = ConditionPolicy {
            fields: vec!["battery".into(), "tamper".into()],
            ..Default::default()
        };
        let (reading, state) = policy.split(&map(
            json!({"presence": true, "battery": 80, "tamper": false}),
        ));
        assert_eq!(reading, map(json!({"presence": true})));
        assert_eq!(state, map(json!({"battery": 80, "tamper": false})));
        let none = ConditionPolicy::default();
        assert_eq!(none.split(&map(json!({"battery": 80}))).1, Map::new());
    }

    /// Each row: the values received in turn → the `changed` of the report each makes (none:
    /// no report), with a deadband of 5 on `battery`.
    #[test]
    fn changes_as_a_table() {
        let policy = ConditionPolicy {
            fields: vec!["battery".into(), "low".into(), "error".into()],
            deadband: [("battery".to_string(), 5.0)].into(),
        };
        #[rustfmt::skip]
        let rows: Vec<(Value, Option<Vec<&str>>)> = vec![
            (json!({"battery": 90, "low": false}), Some(vec!["battery", "low"])), // the first values are news
            (json!({"battery": 88}), None),                                         // inside the deadband
            (json!({"battery": 86, "low": false}), None),                           // still within 5 of 90
            (json!({"battery": 85}), Some(vec!["battery"])),                        // drift adds up: 5 from 90
            (json!({"low": true}), Some(vec!["low"])),
            (json!({"error": "E42"}), Some(vec!["error"])),                         // a new field
            (json!({"error": "E42", "battery": 85.0}), None),                       // numbers compare numerically
            (json!({}), None),
        ];
        let mut state = DeviceState::default();
        for (i, (values, want)) in rows.into_iter().enumerate() {
            let mut dirty = false;
            let report = received(&mut state, &policy, &map(values), &mut dirty);
            let got = report
                .as_ref()
                .map(|r| r.changed.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(got, want, "row {i}");
            assert_eq!(dirty, report.is_some(), "row {i}");
        }
        assert_eq!(
            state.condition,
            map(json!({"battery": 85, "low": true, "error": "E42"})),
            "what upstream was last told"
        );
    }
}
