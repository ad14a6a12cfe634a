//! Groups of sensors reported as one (`[[groups]]`: a floor, a zone, a workspace's sensors),
//! as pure functions over plain state.
//!
//! A group's *reading* is measured from its usable members only — online and not stale, as
//! in the workspace rules: how many members it has and how many are usable, how many of
//! those report presence, the occupancy ratio (present ÷ usable; null when none is usable),
//! and per numeric field the aggregate its configuration names (`mean`, `min`, `max`).
//! `sensor.group.reading.updated` goes out when one of those moves beyond its deadband
//! (`deadband`, by the same names: `occupancy`, `present`, a field) from what was last
//! reported, at most once per `min_interval` (a change inside it is held, and sent with the
//! latest values when it ends). `sensor.group.reading.stale` when no member has sent a
//! reading for `stale_after`, once; the next reading is reported whatever it says.
//!
//! The group's *state* — members, usable, and per state field the aggregate named in
//! `state_aggregates` (the lowest battery, a tamper flag anywhere) — is
//! `sensor.group.state.updated` when it changes, at once.
//!
//! What was last reported is kept on disk ([`GroupState`]), so a restart neither repeats
//! nor forgets a report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::reading::changed_fields;
use super::Millis;

/// How a numeric field of the members makes the group's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Mean,
    Min,
    Max,
    /// How many members report it true (flags: tamper, low battery).
    Count,
}

/// The rules of one group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupPolicy {
    pub presence_field: String,
    pub aggregates: BTreeMap<String, Aggregate>,
    pub state_aggregates: BTreeMap<String, Aggregate>,
    pub deadband: BTreeMap<String, f64>,
    pub min_interval: Millis,
    pub stale_after: Option<Millis>,
}

/// What one member gives the group.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// Online and not stale.
    pub usable: bool,
    /// Its latest reading values.
    pub values: &'a Map<String, Value>,
    /// Its state fields.
    pub condition: &'a Map<String, Value>,
}

/// A group's aggregates kept up to date member by member, so that one member's reading costs
/// the group O(fields × log members), not a pass over every member (#43.12: a group of
/// 10,000 cost 1.4-3.4 ms of CPU per reading). [`Tally::measure`] gives what [`measure`] gives
/// over the same members (the tests hold them to it).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Each member's last contribution.
    members: std::collections::HashMap<String, Contribution>,
    usable: usize,
    present: usize,
    /// Per field of `aggregates`, over the usable members.
    fields: BTreeMap<String, FieldTally>,
    /// Per field of `state_aggregates`, over every member.
    conditions: BTreeMap<String, FieldTally>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Contribution {
    usable: bool,
    present: bool,
    fields: Vec<(String, f64)>,
    conditions: Vec<(String, f64)>,
}

/// The finite values of one field, as a multiset (for min and max) and a fixed-point sum (for
/// the mean: adding and taking away the same values leaves no rounding behind).
#[derive(Debug, Clone, Default)]
struct FieldTally {
    values: BTreeMap<Ordered, usize>,
    count: usize,
    nonzero: usize,
    /// The sum in millionths.
    sum: i128,
}

/// An f64 ordered as a number (finite values only).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ordered(f64);
impl Eq for Ordered {}
impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A value in millionths, clamped far beyond any sensor's range.
fn fixed(v: f64) -> i128 {
    (v.clamp(-1e24, 1e24) * 1e6).round() as i128
}

impl FieldTally {
    fn add(&mut self, v: f64) {
        *self.values.entry(Ordered(v)).or_insert(0) += 1;
        self.count += 1;
        self.nonzero += usize::from(v != 0.0);
        self.sum += fixed(v);
    }

    fn take(&mut self, v: f64) {
        if let Some(n) = self.values.get_mut(&Ordered(v)) {
            *n -= 1;
            if *n == 0 {
                self.values.remove(&Ordered(v));
            }
            self.count -= 1;
            self.nonzero -= usize::from(v != 0.0);
            self.sum -= fixed(v);
        }
    }

    fn value(&self, how: Aggregate) -> Value {
        if self.count == 0 {
            return Value::Null;
        }
        let x = match how {
            Aggregate::Mean => self.sum as f64 / 1e6 / self.count as f64,
            Aggregate::Min => self.values.keys().next().map_or(0.0, |v| v.0),
            Aggregate::Max => self.values.keys().next_back().map_or(0.0, |v| v.0),
            Aggregate::Count => self.nonzero as f64,
        };
        serde_json::Number::from_f64((x * 100.0).round() / 100.0).map_or(Value::Null, Value::Number)
    }
}

impl Tally {
    /// Member `id` is now `member` (`None`: no longer a member, or no longer known).
    pub fn set(&mut self, policy: &GroupPolicy, id: &str, member: Option<&Member>) {
        let new = member.map(|m| Contribution {
            usable: m.usable,
            present: m
                .values
                .get(&policy.presence_field)
                .and_then(super::registry::truthy)
                == Some(true),
            fields: policy
                .aggregates
                .keys()
                .filter_map(|f| Some((f.clone(), finite(m.values.get(f)?)?)))
                .collect(),
            conditions: policy
                .state_aggregates
                .keys()
                .filter_map(|f| Some((f.clone(), finite(m.condition.get(f)?)?)))
                .collect(),
        });
        if self.members.get(id) == new.as_ref() {
            return;
        }
        if let Some(old) = self.members.remove(id) {
            self.count(&old, false);
        }
        if let Some(new) = new {
            self.count(&new, true);
            self.members.insert(id.to_string(), new);
        }
    }

    /// Add (`true`) or take away a member's contribution.
    fn count(&mut self, c: &Contribution, add: bool) {
        let step = |n: &mut usize, on: bool| {
            if on {
                if add {
                    *n += 1
                } else {
                    *n -= 1
                }
            }
        };
        step(&mut self.usable, c.usable);
        step(&mut self.present, c.usable && c.present);
        if c.usable {
            for (f, v) in &c.fields {
                let t = self.fields.entry(f.clone()).or_default();
                if add {
                    t.add(*v)
                } else {
                    t.take(*v)
                }
            }
        }
        for (f, v) in &c.conditions {
            let t = self.conditions.entry(f.clone()).or_default();
            if add {
                t.add(*v)
            } else {
                t.take(*v)
            }
        }
    }

    /// The group's reading and state, as [`measure`] gives them.
    pub fn measure(&self, policy: &GroupPolicy) -> (Map<String, Value>, Map<String, Value>) {
        let mut reading = Map::new();
        reading.insert("members".into(), self.members.len().into());
        reading.insert("usable".into(), self.usable.into());
        reading.insert("present".into(), self.present.into());
        reading.insert(
            "occupancy".into(),
            if self.usable == 0 {
                Value::Null
            } else {
                aggregate(
                    Aggregate::Mean,
                    [self.present as f64 / self.usable as f64].into_iter(),
                )
            },
        );
        let empty = FieldTally::default();
        for (field, how) in &policy.aggregates {
            let t = self.fields.get(field).unwrap_or(&empty);
            reading.insert(field.clone(), t.value(*how));
        }
        let mut state = Map::new();
        state.insert("members".into(), self.members.len().into());
        state.insert("usable".into(), self.usable.into());
        for (field, how) in &policy.state_aggregates {
            let t = self.conditions.get(field).unwrap_or(&empty);
            state.insert(field.clone(), t.value(*how));
        }
        (reading, state)
    }
}

/// The tally's measure and the full pass's agree: the same keys, the same counts, numbers
/// within a rounding step (the tally's mean is summed exactly, the pass's in floating point).
#[cfg(test)]
pub fn assert_close(
    tally: &(Map<String, Value>, Map<String, Value>),
    full: &(Map<String, Value>, Map<String, Value>),
) {
    for (t, f) in [(&tally.0, &full.0), (&tally.1, &full.1)] {
        assert_eq!(t.keys().collect::<Vec<_>>(), f.keys().collect::<Vec<_>>());
        for (k, tv) in t {
            let fv = &f[k];
            match (tv.as_f64(), fv.as_f64()) {
                (Some(a), Some(b)) => assert!((a - b).abs() <= 0.011, "{k}: tally {a}, pass {b}"),
                _ => assert_eq!(tv, fv, "{k}"),
            }
        }
    }
}

fn finite(v: &Value) -> Option<f64> {
    number(v).filter(|v| v.is_finite())
}

/// What is kept of a group, persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupState {
    /// The reading last reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<Map<String, Value>>,
    pub last_report: Millis,
    /// A change is waiting out `min_interval`.
    pub held: bool,
    /// When a member last sent a reading.
    pub last_reading: Millis,
    /// `sensor.group.reading.stale` was sent and no reading has come since.
    pub stale: bool,
    /// The state last reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Map<String, Value>>,
}

impl GroupState {
    /// Apply `f` to every time this state remembers (see `crate::clock`).
    pub fn map_times(&mut self, f: impl Fn(Millis) -> Millis) {
        for t in [&mut self.last_report, &mut self.last_reading] {
            if *t > 0 {
                *t = f(*t);
            }
        }
    }
}

/// One event's worth: the values, and those that changed.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupReport {
    pub values: Map<String, Value>,
    pub changed: Vec<String>,
}

/// A change of the group the clock decided.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupTimed {
    Report(GroupReport),
    Stale { last_reading: Millis },
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn aggregate(how: Aggregate, values: impl Iterator<Item = f64>) -> Value {
    let values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return Value::Null;
    }
    let x = match how {
        Aggregate::Mean => values.iter().sum::<f64>() / values.len() as f64,
        Aggregate::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
        Aggregate::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Aggregate::Count => values.iter().filter(|v| **v != 0.0).count() as f64,
    };
    // Two decimals: a mean of readings has no more meaning, and it keeps the JSON short.
    serde_json::Number::from_f64((x * 100.0).round() / 100.0).map_or(Value::Null, Value::Number)
}

/// The group's reading and state now, from its members.
pub fn measure(
    policy: &GroupPolicy,
    members: &[Member],
) -> (Map<String, Value>, Map<String, Value>) {
    let usable: Vec<&Member> = members.iter().filter(|m| m.usable).collect();
    let present = usable
        .iter()
        .filter(|m| {
            m.values
                .get(&policy.presence_field)
                .and_then(super::registry::truthy)
                == Some(true)
        })
        .count();
    let mut reading = Map::new();
    reading.insert("members".into(), members.len().into());
    reading.insert("usable".into(), usable.len().into());
    reading.insert("present".into(), present.into());
    reading.insert(
        "occupancy".into(),
        if usable.is_empty() {
            Value::Null
        } else {
            aggregate(
                Aggregate::Mean,
                [present as f64 / usable.len() as f64].into_iter(),
            )
        },
    );
    for (field, how) in &policy.aggregates {
        let values = usable
            .iter()
            .filter_map(|m| m.values.get(field).and_then(number));
        reading.insert(field.clone(), aggregate(*how, values));
    }
    let mut state = Map::new();
    state.insert("members".into(), members.len().into());
    state.insert("usable".into(), usable.len().into());
    for (field, how) in &policy.state_aggregates {
        // A member's condition counts while it is known, usable or not (a flat battery is
        // news about a member that has gone quiet, too).
        let values = members
            .iter()
            .filter_map(|m| m.condition.get(field).and_then(number));
        state.insert(field.clone(), aggregate(*how, values));
    }
    (reading, state)
}

/// What in `now` moved beyond its deadband from `last` (everything, when nothing was told).
fn changes(
    last: Option<&Map<String, Value>>,
    now: &Map<String, Value>,
    policy: &GroupPolicy,
) -> Vec<String> {
    changed_fields(last.unwrap_or(&Map::new()), now, &[], &policy.deadband)
}

/// A member's reading arrived at `now` (`reading`: the group's reading measured after it).
/// Returns the report to send now, if any.
pub fn reading_arrived(
    state: &mut GroupState,
    policy: &GroupPolicy,
    reading: &Map<String, Value>,
    now: Millis,
    dirty: &mut bool,
) -> Option<GroupReport> {
    state.last_reading = now;
    let was_stale = std::mem::take(&mut state.stale);
    *dirty |= was_stale;
    observe(state, policy, reading, was_stale, now, dirty)
}

/// The group's reading may have changed (a member's health or reading) at `now`. `force`
/// reports even with nothing changed (after staleness).
pub fn observe(
    state: &mut GroupState,
    policy: &GroupPolicy,
    reading: &Map<String, Value>,
    force: bool,
    now: Millis,
    dirty: &mut bool,
) -> Option<GroupReport> {
    let changed = changes(state.reported.as_ref(), reading, policy);
    if changed.is_empty() && !force {
        if state.held {
            // Back within the deadband of what was reported: nothing to send after all.
            state.held = false;
            *dirty = true;
        }
        return None;
    }
    if state.last_report > 0 && now < state.last_report + policy.min_interval {
        *dirty |= !state.held;
        state.held = true;
        return None;
    }
    Some(report(state, reading, changed, now, dirty))
}

fn report(
    state: &mut GroupState,
    reading: &Map<String, Value>,
    changed: Vec<String>,
    now: Millis,
    dirty: &mut bool,
) -> GroupReport {
    state.reported = Some(reading.clone());
    state.last_report = now;
    state.held = false;
    *dirty = true;
    GroupReport {
        values: reading.clone(),
        changed,
    }
}

/// When [`due`] has something to do: a held change's `min_interval` ending, or staleness.
/// `settle` is the earliest staleness may be declared (one period after a restart).
pub fn deadline(state: &GroupState, policy: &GroupPolicy, settle: Millis) -> Option<Millis> {
    let flush = state
        .held
        .then_some(state.last_report + policy.min_interval);
    let stale = match policy.stale_after {
        Some(after) if !state.stale && state.last_reading > 0 => {
            Some((state.last_reading + after).max(settle))
        }
        _ => None,
    };
    flush.into_iter().chain(stale).min()
}

/// What the clock decides at `now`, with `reading` the group's reading now.
pub fn due(
    state: &mut GroupState,
    policy: &GroupPolicy,
    reading: &Map<String, Value>,
    settle: Millis,
    now: Millis,
    dirty: &mut bool,
) -> Vec<GroupTimed> {
    let mut out = Vec::new();
    if state.held && now >= state.last_report + policy.min_interval {
        state.held = false;
        *dirty = true;
        let changed = changes(state.reported.as_ref(), reading, policy);
        if !changed.is_empty() {
            out.push(GroupTimed::Report(report(
                state, reading, changed, now, dirty,
            )));
        }
    }
    if let Some(after) = policy.stale_after {
        let since = state.last_reading;
        if !state.stale && since > 0 && now >= (since + after).max(settle) {
            state.stale = true;
            *dirty = true;
            out.push(GroupTimed::Stale {
                last_reading: since,
            });
        }
    }
    out
}

/// The group's state measured now: the change to tell, if any (no interval: a member going
/// away or a battery going flat is news at once).
pub fn state_observed(
    state: &mut GroupState,
    policy: &GroupPolicy,
    measured: &Map<String, Value>,
    dirty: &mut bool,
) -> Option<GroupReport> {
    let changed = changes(state.state.as_ref(), measured, policy);
    if changed.is_empty() {
        return None;
    }
    state.state = Some(measured.clone());
    *dirty = true;
    Some(GroupReport {
        values: measured.clone(),
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

    /// The tally, member by member, measures what a pass over every member measures, through
    /// a long seeded story of members coming, changing, going unusable and leaving.
    #[test]
    fn a_tally_kept_member_by_member_measures_what_a_full_pass_does() {
        let policy = policy();
        let mut rng = fastrand::Rng::with_seed(43);
        let mut tally = Tally::default();
        let mut members: BTreeMap<String, (bool, Map<String, Value>, Map<String, Value>)> =
            BTreeMap::new();
        for step in 0..3_000 {
            let id = format!("m{}", rng.usize(0..40));
            if rng.u8(0..10) == 0 {
                members.remove(&id);
                tally.set(&policy, &id, None);
            } else {
                let (t, co2, battery) =
                    (15.0 + rng.f64() * 10.0, rng.u32(300..2000), rng.u8(0..100));
                let (has_t, has_co2, has_battery) = (rng.bool(), rng.bool(), rng.bool());
                let or_null = |on: bool, v: Value| if on { v } else { Value::Null };
                let values = map(json!({
                    "presence": rng.bool(),
                    "temperature": or_null(has_t, json!(t)),
                    "co2": or_null(has_co2, json!(co2)),
                }));
                let condition = map(json!({
                    "battery": or_null(has_battery, json!(battery)),
                    "tamper": rng.bool(),
                }));
                let usable = rng.u8(0..4) != 0;
                let member = Member {
                    usable,
                    values: &values,
                    condition: &condition,
                };
                tally.set(&policy, &id, Some(&member));
                members.insert(id, (usable, values, condition));
            }
            let all: Vec<Member> = members
                .values()
                .map(|(usable, values, condition)| Member {
                    usable: *usable,
                    values,
                    condition,
                })
                .collect();
            let full = measure(&policy, &all);
            let kept = tally.measure(&policy);
            assert_eq!(kept.0["members"], full.0["members"], "step {step}");
            assert_close(&kept, &full);
        }
    }

    fn policy() -> GroupPolicy {
        GroupPolicy {
            presence_field: "presence".into(),
            aggregates: [
                ("temperature".to_string(), Aggregate::Mean),
                ("co2".to_string(), Aggregate::Max),
            ]
            .into(),
            state_aggregates: [
                ("battery".to_string(), Aggregate::Min),
                ("tamper".to_string(), Aggregate::Count),
            ]
            .into(),
            deadband: [
                ("temperature".to_string(), 0.5),
                ("occupancy".to_string(), 0.2),
            ]
            .into(),
            min_interval: 10_000,
            stale_after: Some(60_000),
        }
    }

    #[test]
    fn only_usable_members_count_and_each_field_gets_its_aggregate() {
        let (a, b, c) = (
            map(json!({"presence": true, "temperature": 21.0, "co2": 600})),
            map(json!({"presence": false, "temperature": 22.0, "co2": 900})),
            map(json!({"presence": true, "temperature": 30.0, "co2": 2000})),
        );
        let (sa, sb, sc) = (
            map(json!({"battery": 80, "tamper": false})),
            map(json!({"battery": 15})),
            map(json!({"battery": 5, "tamper": true})),
        );
        let members = [
            Member {
                usable: true,
                values: &a,
                condition: &sa,
            },
            Member {
                usable: true,
                values: &b,
                condition: &sb,
            },
            // offline or stale: its reading does not count, its condition does
            Member {
                usable: false,
                values: &c,
                condition: &sc,
            },
        ];
        let (reading, state) = measure(&policy(), &members);
        assert_eq!(
            Value::Object(reading),
            json!({"members": 3, "usable": 2, "present": 1, "occupancy": 0.5, "temperature": 21.5, "co2": 900.0})
        );
        assert_eq!(
            Value::Object(state),
            json!({"members": 3, "usable": 2, "battery": 5.0, "tamper": 1.0})
        );
        let (reading, _) = measure(&policy(), &[]);
        assert_eq!(
            reading["occupancy"],
            Value::Null,
            "no usable member: unknown"
        );
        assert_eq!(reading["temperature"], Value::Null);
    }

    /// Each row: at this time, the group's reading (occupancy, temperature) after a member's
    /// reading → the `changed` of the report sent (none: no report).
    #[test]
    fn reports_as_a_table() {
        let p = policy();
        let r = |occ: f64, t: f64| map(json!({"occupancy": occ, "temperature": t}));
        #[rustfmt::skip]
        type Row = (Millis, Map<String, Value>, Option<Vec<&'static str>>);
        let rows: Vec<Row> = vec![
            (1_000, r(0.0, 21.0), Some(vec!["occupancy", "temperature"])), // the first is news
            (2_000, r(0.1, 21.2), None),                                   // inside both deadbands
            (3_000, r(0.5, 21.2), None), // a change inside min_interval: held
            (4_000, r(0.5, 21.4), None),
            (11_000, r(0.5, 21.4), Some(vec!["occupancy"])), // flushed by the next reading after it ends
            (12_000, r(1.0, 21.4), None),                    // held again
            (13_000, r(0.6, 21.4), None), // back within the deadband: nothing held
            (30_000, r(0.6, 21.4), None),
        ];
        let mut s = GroupState::default();
        for (i, (now, reading, want)) in rows.into_iter().enumerate() {
            let mut dirty = false;
            let got = reading_arrived(&mut s, &p, &reading, now, &mut dirty);
            let got = got.map(|g| g.changed.clone());
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "row {i} at {now}");
        }
        assert!(!s.held);
    }

    #[test]
    fn a_held_change_goes_out_when_its_interval_ends_and_silence_is_stale_once() {
        let p = policy();
        let mut s = GroupState::default();
        let mut dirty = false;
        let first = map(json!({"occupancy": 0.0}));
        assert!(reading_arrived(&mut s, &p, &first, 1_000, &mut dirty).is_some());
        let now = map(json!({"occupancy": 1.0}));
        assert!(reading_arrived(&mut s, &p, &now, 2_000, &mut dirty).is_none());
        assert_eq!(deadline(&s, &p, 0), Some(11_000));
        let out = due(&mut s, &p, &now, 0, 11_000, &mut dirty);
        assert_eq!(
            out,
            [GroupTimed::Report(GroupReport {
                values: now.clone(),
                changed: vec!["occupancy".into()]
            })]
        );
        // No member reading for a minute: stale, once.
        assert_eq!(deadline(&s, &p, 0), Some(62_000));
        assert_eq!(
            due(&mut s, &p, &now, 0, 62_000, &mut dirty),
            [GroupTimed::Stale {
                last_reading: 2_000
            }]
        );
        assert!(due(&mut s, &p, &now, 0, 200_000, &mut dirty).is_empty());
        assert_eq!(deadline(&s, &p, 0), None);
        // The next reading is reported whatever it says.
        let report = reading_arrived(&mut s, &p, &now, 300_000, &mut dirty).unwrap();
        assert!(report.changed.is_empty());
    }

    #[test]
    fn state_changes_are_told_at_once() {
        let p = policy();
        let mut s = GroupState::default();
        let mut dirty = false;
        let st = |usable: u64, battery: f64| {
            map(json!({"members": 3, "usable": usable, "battery": battery}))
        };
        assert!(state_observed(&mut s, &p, &st(3, 80.0), &mut dirty).is_some());
        assert!(state_observed(&mut s, &p, &st(3, 80.0), &mut dirty).is_none());
        let r = state_observed(&mut s, &p, &st(2, 80.0), &mut dirty).unwrap();
        assert_eq!(r.changed, ["usable"]);
        let r = state_observed(&mut s, &p, &st(2, 10.0), &mut dirty).unwrap();
        assert_eq!(r.changed, ["battery"]);
    }
}
