//! Sensor readings: report by exception, as pure functions over [`DeviceState`].
//!
//! A reading is *due* for upstream when a tracked field (any field not listed as metadata)
//! changed since the last report — numbers by at least their deadband, compared numerically —
//! or the device's readings were stale, or `max_interval` has passed since the last report (a
//! heartbeat upstream, sent with `changed: []`). The first reading of a device is always due.
//!
//! A due reading inside `min_interval` of the last report is held, and later readings are merged
//! into it; when the interval has passed, one `sensor.reading.updated` goes out with the latest
//! values. The held values are persisted with the device, so an acknowledged message's change is
//! never lost to a restart.
//!
//! Changes are measured against the last *reported* values, so slow drift below a deadband
//! still adds up to an event. A sensor whose readings stop for `stale_after` while the device is
//! otherwise online is `sensor.reading.stale`, once; its next reading is reported whatever it says.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{DeviceState, Millis};

/// The reading rules of one device class.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadingPolicy {
    pub deadband: BTreeMap<String, f64>,
    pub min_interval: Millis,
    pub max_interval: Option<Millis>,
    pub stale_after: Option<Millis>,
}

/// One `sensor.reading.updated`: the values to send and the tracked fields that changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub fields: Map<String, Value>,
    pub changed: Vec<String>,
}

/// A due report waiting out `min_interval`, persisted with the device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The latest value of every field received since the last report.
    pub fields: Map<String, Value>,
    /// Tracked fields that changed on the way (metadata never appears here).
    pub changed: Vec<String>,
}

/// A change of what the clock decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Timed {
    /// A held report whose `min_interval` has passed.
    Report(Report),
    /// Readings stopped; `last_reading` is when the last one arrived.
    Stale { last_reading: Millis },
}

/// A reading arrived. Returns the report to send now, if any; `dirty` is set when persisted
/// state changed (a report, held values, the stale flag cleared).
pub fn received(
    state: &mut DeviceState,
    policy: &ReadingPolicy,
    fields: &Map<String, Value>,
    metadata: &[String],
    now: Millis,
    dirty: &mut bool,
) -> Option<Report> {
    state.last_reading = now;
    let was_stale = std::mem::take(&mut state.stale);
    *dirty |= was_stale;
    let heartbeat_due = policy
        .max_interval
        .is_some_and(|max| state.last_report > 0 && now >= state.last_report + max);
    let changed = changed_fields(&state.values, fields, metadata, &policy.deadband);
    let mut held = match state.held.take() {
        Some(held) => held,
        None if changed.is_empty() && !was_stale && !heartbeat_due => return None,
        None => Held::default(),
    };
    // An exact repeat of what is already held changes nothing that will be reported.
    let news = held.fields.is_empty()
        || fields.iter().any(|(k, v)| held.fields.get(k) != Some(v))
        || changed.iter().any(|f| !held.changed.contains(f));
    held.fields
        .extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    for field in changed {
        if !held.changed.contains(&field) {
            held.changed.push(field);
        }
    }
    *dirty |= news;
    if state.last_report > 0 && now < state.last_report + policy.min_interval {
        state.held = Some(held);
        return None;
    }
    Some(report(state, held, policy, now))
}

/// Send `held`: its values become what upstream knows. A field that changed and then changed
/// back within the window is not listed as changed.
fn report(state: &mut DeviceState, held: Held, policy: &ReadingPolicy, now: Millis) -> Report {
    let Held { fields, changed } = held;
    let changed = changed
        .into_iter()
        .filter(|k| {
            let db = policy.deadband.get(k).copied().unwrap_or(0.0);
            !state
                .values
                .get(k)
                .zip(fields.get(k))
                .is_some_and(|(old, new)| same_value(old, new, db))
        })
        .collect();
    state
        .values
        .extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    state.last_report = now;
    Report { fields, changed }
}

fn flush_deadline(state: &DeviceState, policy: &ReadingPolicy) -> Option<Millis> {
    state
        .held
        .as_ref()
        .map(|_| state.last_report + policy.min_interval)
}

fn stale_deadline(
    state: &DeviceState,
    policy: &ReadingPolicy,
    online: bool,
    settle: Millis,
) -> Option<Millis> {
    match policy.stale_after {
        Some(after) if online && !state.stale && state.last_reading > 0 => {
            Some((state.last_reading + after).max(settle))
        }
        _ => None,
    }
}

/// When [`due`] next has something to do for this device, if ever. `settle` is the earliest
/// time staleness may be declared (one period after a restart).
pub fn deadline(
    state: &DeviceState,
    policy: &ReadingPolicy,
    online: bool,
    settle: Millis,
) -> Option<Millis> {
    flush_deadline(state, policy)
        .into_iter()
        .chain(stale_deadline(state, policy, online, settle))
        .min()
}

/// Apply whatever the clock decides at `now`: a held report going out, or staleness.
pub fn due(
    state: &mut DeviceState,
    policy: &ReadingPolicy,
    online: bool,
    settle: Millis,
    now: Millis,
) -> Vec<Timed> {
    let mut out = Vec::new();
    if flush_deadline(state, policy).is_some_and(|at| now >= at) {
        let held = state
            .held
            .take()
            .expect("a flush deadline means held values");
        out.push(Timed::Report(report(state, held, policy, now)));
    }
    if stale_deadline(state, policy, online, settle).is_some_and(|at| now >= at) {
        state.stale = true;
        out.push(Timed::Stale {
            last_reading: state.last_reading,
        });
    }
    out
}

/// Tracked fields of `new` whose values differ from `old`'s, in `new`'s order.
pub fn changed_fields(
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    metadata: &[String],
    deadband: &BTreeMap<String, f64>,
) -> Vec<String> {
    new.iter()
        .filter(|(k, _)| !metadata.iter().any(|m| m == *k))
        .filter(|(k, v)| {
            !old.get(*k)
                .is_some_and(|o| same_value(o, v, deadband.get(*k).copied().unwrap_or(0.0)))
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// Values compare as JSON, except that numbers compare numerically (21 == 21.0), and move less
/// than `deadband` counts as the same.
pub fn same_value(a: &Value, b: &Value, deadband: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            // A move of exactly the deadband is a change; the tolerance absorbs decimal
            // rounding (21.4 → 21.5 is 0.0999… in binary).
            (Some(x), Some(y)) if deadband > 0.0 => (x - y).abs() < deadband * (1.0 - 1e-9),
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const META: &[&str] = &["seq", "ts"];

    fn meta() -> Vec<String> {
        META.iter().map(|s| s.to_string()).collect()
    }

    /// Feed readings `(t, payload)` and expect, per step, the `changed` list of the report sent
    /// (`None` = nothing sent).
    fn run(policy: &ReadingPolicy, steps: &[(Millis, Value, Option<&[&str]>)]) -> DeviceState {
        let mut state = DeviceState::default();
        for (i, (t, payload, want)) in steps.iter().enumerate() {
            let mut dirty = false;
            let got = received(
                &mut state,
                policy,
                &obj(payload.clone()),
                &meta(),
                *t,
                &mut dirty,
            );
            let got_changed: Option<Vec<String>> = got.as_ref().map(|r| r.changed.clone());
            let want: Option<Vec<String>> = want.map(|w| w.iter().map(|s| s.to_string()).collect());
            assert_eq!(got_changed, want, "step {i} at t={t}: {payload}");
            if let Some(r) = got {
                assert_eq!(r.fields, obj(payload.clone()), "step {i}: sent as received");
            }
        }
        state
    }

    #[test]
    fn report_by_exception() {
        run(
            &ReadingPolicy::default(),
            &[
                (1, json!({"temp": 21.5, "seq": 1}), Some(&["temp"])), // first reading
                (2, json!({"temp": 21.5, "seq": 2}), None),            // only metadata moved
                (3, json!({"temp": 21.5, "seq": 3, "ts": 99}), None),  // new metadata field
                (4, json!({"temp": 21.6, "seq": 4}), Some(&["temp"])),
                (5, json!({"temp": 21.6}), None),
                (6, json!({"hum": 40}), Some(&["hum"])), // a new tracked field
                (7, json!({"hum": 40.0}), None),         // numbers compare numerically
                (8, json!({"hum": "40"}), Some(&["hum"])), // a string is not a number
                (9, json!({}), None),
            ],
        );
    }

    #[test]
    fn deadband_is_absolute_and_measured_from_the_last_report() {
        let policy = ReadingPolicy {
            deadband: [("temp".to_string(), 0.1)].into(),
            ..Default::default()
        };
        run(
            &policy,
            &[
                (1, json!({"temp": 21.40}), Some(&["temp"])),
                (2, json!({"temp": 21.43}), None), // 0.03 < 0.1
                (3, json!({"temp": 21.47}), None), // 0.07 from the last report
                (4, json!({"temp": 21.50}), Some(&["temp"])), // 0.1 from 21.40: reported
                (5, json!({"temp": 21.41}), None), // 0.09 back
                (6, json!({"temp": 21.39, "hum": 50}), Some(&["hum", "temp"])), // hum has no deadband
                (7, json!({"temp": 21.39, "hum": 50.5}), Some(&["hum"])),
            ],
        );
    }

    #[test]
    fn min_interval_coalesces_into_one_report_with_the_latest_values() {
        let policy = ReadingPolicy {
            min_interval: 1_000,
            ..Default::default()
        };
        let mut state = run(
            &policy,
            &[
                (
                    1_000,
                    json!({"temp": 20, "presence": false, "seq": 1}),
                    Some(&["presence", "temp"]),
                ),
                (
                    1_100,
                    json!({"temp": 21, "presence": false, "seq": 2}),
                    None,
                ), // held
                (1_200, json!({"temp": 21, "presence": true, "seq": 3}), None), // merged
                (1_300, json!({"temp": 20, "presence": true, "seq": 4}), None), // temp back
            ],
        );
        assert_eq!(deadline(&state, &policy, true, 0), Some(2_000));
        assert!(due(&mut state, &policy, true, 0, 1_999).is_empty());
        let out = due(&mut state, &policy, true, 0, 2_000);
        assert_eq!(
            out,
            vec![Timed::Report(Report {
                fields: obj(json!({"temp": 20, "presence": true, "seq": 4})),
                changed: vec!["presence".into()], // temp changed and came back
            })]
        );
        assert_eq!(deadline(&state, &policy, true, 0), None);
        // a change after the interval goes out at once
        let mut dirty = false;
        let r = received(
            &mut state,
            &policy,
            &obj(json!({"temp": 25})),
            &meta(),
            3_500,
            &mut dirty,
        );
        assert_eq!(r.unwrap().changed, ["temp"]);
    }

    #[test]
    fn max_interval_re_reports_unchanged_values() {
        let policy = ReadingPolicy {
            max_interval: Some(10_000),
            ..Default::default()
        };
        run(
            &policy,
            &[
                (1_000, json!({"temp": 20, "seq": 1}), Some(&["temp"])),
                (5_000, json!({"temp": 20, "seq": 2}), None),
                (11_000, json!({"temp": 20, "seq": 3}), Some(&[])), // a heartbeat upstream
                (12_000, json!({"temp": 20, "seq": 4}), None),
            ],
        );
    }

    #[test]
    fn stale_once_then_cleared_by_the_next_reading() {
        let policy = ReadingPolicy {
            stale_after: Some(60_000),
            ..Default::default()
        };
        let mut state = run(&policy, &[(1_000, json!({"temp": 20}), Some(&["temp"]))]);
        assert_eq!(deadline(&state, &policy, true, 0), Some(61_000));
        assert_eq!(
            deadline(&state, &policy, false, 0),
            None,
            "not while offline or lost"
        );
        assert!(due(&mut state, &policy, true, 0, 60_999).is_empty());
        assert_eq!(
            due(&mut state, &policy, true, 0, 61_000),
            vec![Timed::Stale {
                last_reading: 1_000
            }]
        );
        assert!(
            due(&mut state, &policy, true, 0, 200_000).is_empty(),
            "once"
        );
        let mut dirty = false;
        let r = received(
            &mut state,
            &policy,
            &obj(json!({"temp": 20})),
            &meta(),
            200_000,
            &mut dirty,
        );
        assert_eq!(
            r.unwrap().changed,
            Vec::<String>::new(),
            "fresh again, reported unchanged"
        );
        assert!(!state.stale && dirty);
        // after a restart at 500_000, stale waits one period from the start
        assert_eq!(deadline(&state, &policy, true, 560_000), Some(560_000));
    }
}
