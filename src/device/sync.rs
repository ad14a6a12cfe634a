//! In sync or not: whether the version or configuration a device reports (its class's
//! `sync_field`) is the one desired — the class's `desired`, or one set for the device alone
//! through the control API — as pure functions over [`DeviceState`].
//!
//! A difference is news only once it has lasted `sync_grace` (an update rolling out is not):
//! then `device.out_of_sync`, once. When the device reports the desired value again, or the
//! desired value becomes what it reports, `device.in_sync`, once — only after an
//! `out_of_sync`. A device whose value matches from the start, or that has nothing desired,
//! is in sync silently. Kept with the device's state, so a restart neither repeats nor forgets.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reading::same_value;
use super::{DeviceState, Millis};

/// The sync rules of one device class.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncPolicy {
    /// The field compared; none: the class does not watch sync.
    pub field: Option<String>,
    /// The class's desired value.
    pub desired: Option<Value>,
    pub grace: Millis,
}

/// What is known of one device's sync, persisted with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    /// The last value of the sync field the device reported.
    pub reported: Value,
    /// Since when it has differed from the desired value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differs_since: Option<Millis>,
    /// `device.out_of_sync` was sent, and no `device.in_sync` since.
    #[serde(default)]
    pub told: bool,
}

/// A change to tell upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncChange {
    OutOfSync {
        reported: Value,
        desired: Value,
        since: Millis,
    },
    InSync {
        reported: Value,
    },
}

/// The value desired for this device: its own, else its class's.
pub fn desired<'a>(state: &'a DeviceState, policy: &'a SyncPolicy) -> Option<&'a Value> {
    state.desired.as_ref().or(policy.desired.as_ref())
}

/// The device reported `value` in its sync field at `now`.
pub fn reported(
    state: &mut DeviceState,
    policy: &SyncPolicy,
    value: &Value,
    now: Millis,
    dirty: &mut bool,
) -> Option<SyncChange> {
    match &mut state.sync {
        Some(s) if s.reported == *value => {}
        Some(s) => {
            s.reported = value.clone();
            *dirty = true;
        }
        None => {
            state.sync = Some(SyncState {
                reported: value.clone(),
                ..Default::default()
            });
            *dirty = true;
        }
    }
    evaluate(state, policy, now, dirty)
}

/// Compare what the device last reported with what is desired now (after a report, or after
/// the desired value changed).
pub fn evaluate(
    state: &mut DeviceState,
    policy: &SyncPolicy,
    now: Millis,
    dirty: &mut bool,
) -> Option<SyncChange> {
    let wanted = desired(state, policy).cloned();
    let sync = state.sync.as_mut()?;
    let matches = wanted
        .as_ref()
        .is_none_or(|d| same_value(d, &sync.reported, 0.0));
    if matches {
        *dirty |= sync.differs_since.take().is_some();
        if std::mem::take(&mut sync.told) {
            *dirty = true;
            return Some(SyncChange::InSync {
                reported: sync.reported.clone(),
            });
        }
    } else if sync.differs_since.is_none() {
        sync.differs_since = Some(now);
        *dirty = true;
    }
    None
}

/// When [`due`] has something to do: the grace of a difference not yet told running out.
pub fn deadline(state: &DeviceState, policy: &SyncPolicy) -> Option<Millis> {
    let sync = state.sync.as_ref()?;
    match (sync.told, sync.differs_since) {
        (false, Some(since)) => Some(since + policy.grace),
        _ => None,
    }
}

/// At `now`: a difference that outlasted its grace becomes `device.out_of_sync`.
pub fn due(state: &mut DeviceState, policy: &SyncPolicy, now: Millis) -> Option<SyncChange> {
    if deadline(state, policy).is_none_or(|at| now < at) {
        return None;
    }
    let wanted = desired(state, policy)?.clone();
    let sync = state.sync.as_mut()?;
    sync.told = true;
    Some(SyncChange::OutOfSync {
        reported: sync.reported.clone(),
        desired: wanted,
        since: sync.differs_since.unwrap_or(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GRACE: Millis = 60_000;

    /// What happens, in turn, to one device of a class that wants "1.5".
    enum Step {
        Reports(Value),
        /// The device's own desired value is set (or cleared) through the API.
        Wants(Option<Value>),
        Tick,
    }

    /// Each row: at this time, this happens → the change told (if any).
    #[test]
    fn sync_as_a_table() {
        use Step::*;
        let policy = SyncPolicy {
            field: Some("config".into()),
            desired: Some(json!("1.5")),
            grace: GRACE,
        };
        let out = |r: &str, d: &str, since| {
            Some(SyncChange::OutOfSync {
                reported: json!(r),
                desired: json!(d),
                since,
            })
        };
        let back = |r: &str| Some(SyncChange::InSync { reported: json!(r) });
        #[rustfmt::skip]
        let rows: Vec<(Millis, Step, Option<SyncChange>)> = vec![
            (0, Reports(json!("1.5")), None),                    // in sync from the start: silent
            (1_000, Reports(json!("1.4")), None),                // differs: the grace starts
            (30_000, Tick, None),                                // within the grace
            (40_000, Reports(json!("1.4")), None),               // the same value does not restart it
            (61_000, Tick, out("1.4", "1.5", 1_000)),            // the grace ran out
            (62_000, Tick, None),                                // told once
            (70_000, Reports(json!("1.3")), None),               // another wrong value: still out, not told again
            (80_000, Reports(json!("1.5")), back("1.5")),        // matches again
            (90_000, Reports(json!("1.6")), None),               // differs again: a new grace
            (100_000, Reports(json!("1.5")), None),              // back within it: nothing was told
            (200_000, Tick, None),
            (210_000, Wants(Some(json!("2.0"))), None),          // the device alone is told to run 2.0
            (270_000, Tick, out("1.5", "2.0", 210_000)),
            (280_000, Wants(None), back("1.5")),                 // its own wish cleared: the class's is met
        ];
        let mut state = DeviceState::default();
        for (i, (now, step, want)) in rows.into_iter().enumerate() {
            let mut dirty = false;
            let got = match step {
                Reports(v) => reported(&mut state, &policy, &v, now, &mut dirty),
                Wants(v) => {
                    state.desired = v;
                    evaluate(&mut state, &policy, now, &mut dirty)
                }
                Tick => due(&mut state, &policy, now),
            };
            assert_eq!(got, want, "row {i} at {now}");
        }
    }

    #[test]
    fn nothing_desired_is_in_sync() {
        let policy = SyncPolicy {
            field: Some("config".into()),
            desired: None,
            grace: GRACE,
        };
        let mut state = DeviceState::default();
        let mut dirty = false;
        assert_eq!(
            reported(&mut state, &policy, &json!("x"), 0, &mut dirty),
            None
        );
        assert!(dirty, "the reported value is kept");
        assert_eq!(deadline(&state, &policy), None);
        assert_eq!(due(&mut state, &policy, 10 * GRACE), None);
    }
}
