//! Workspace status (ROOMZ-style `workspace.status.updated`) as a pure function of the bound
//! devices' health and latest values.
//!
//! A workspace (a desk, a room) is bound to one or more occupancy sensors and optionally a room
//! display. Only *usable* sensors vote: online, with a presence value. The rules, in order:
//!
//! | usable sensors                    | was        | display booked | status                   |
//! |-----------------------------------|------------|----------------|--------------------------|
//! | any reports presence              | any        | any            | `Occupied` at once       |
//! | all report absence, < hold ago    | `Occupied` | any            | `Occupied` (holding)     |
//! | all report absence                | other      | yes            | `Booked`                 |
//! | all report absence                | other      | no / none      | `Free`                   |
//! | none: every sensor lost/offline   | any        | any            | `Unknown`                |
//! | none: some not heard from yet     | any        | any            | unchanged (none at first)|
//!
//! "All report absence, < hold ago" counts from the moment the last presence ended — the last
//! present sensor reporting absence, or going lost or offline. So one quiet PIR reading does not
//! free a room, and a room whose only present sensor died is freed only after the hold. A
//! display counts as booked only while it is online.

use serde::{Deserialize, Serialize};

use super::Millis;

/// Workspace status values, as sent in `workspace.status.updated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkspaceStatus {
    Free,
    Occupied,
    Booked,
    Unknown,
}

impl WorkspaceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceStatus::Free => "Free",
            WorkspaceStatus::Occupied => "Occupied",
            WorkspaceStatus::Booked => "Booked",
            WorkspaceStatus::Unknown => "Unknown",
        }
    }
}

/// What one bound sensor says, for the rules above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    Present,
    Absent,
    /// Online, or never heard from, but no presence value yet.
    Silent,
    /// Lost or offline.
    Unavailable,
}

/// A workspace's persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceState {
    /// What upstream was last told; `None` until the first status.
    pub status: Option<WorkspaceStatus>,
    /// Someone was present at the last evaluation.
    pub present: bool,
    /// When the last presence ended (the hold runs from here).
    pub vacated_at: Option<Millis>,
    /// When `status` became what it is (absent in stores written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Millis>,
}

impl WorkspaceState {
    /// Apply `f` to every time this state remembers (see `crate::clock`).
    pub fn map_times(&mut self, f: impl Fn(Millis) -> Millis) {
        for t in [&mut self.vacated_at, &mut self.since]
            .into_iter()
            .flatten()
        {
            *t = f(*t);
        }
    }
}

/// The new state at `now`. The caller sends an event when `status` differs from before.
pub fn evaluate(
    prev: &WorkspaceState,
    votes: &[Vote],
    booked: bool,
    hold: Millis,
    now: Millis,
) -> WorkspaceState {
    let mut next = prev.clone();
    if votes.contains(&Vote::Present) {
        next.present = true;
        next.vacated_at = None;
        next.status = Some(WorkspaceStatus::Occupied);
    } else if votes.contains(&Vote::Absent) {
        if prev.present {
            next.present = false;
            next.vacated_at = Some(now);
        }
        let holding = prev.status == Some(WorkspaceStatus::Occupied)
            && next.vacated_at.is_some_and(|at| now < at + hold);
        next.status = Some(if holding {
            WorkspaceStatus::Occupied
        } else if booked {
            WorkspaceStatus::Booked
        } else {
            WorkspaceStatus::Free
        });
        if !holding {
            next.vacated_at = None;
        }
    } else if votes.iter().all(|v| *v == Vote::Unavailable) {
        next.present = false;
        next.vacated_at = None;
        next.status = Some(WorkspaceStatus::Unknown);
    }
    if next.status != prev.status {
        next.since = Some(now);
    }
    next
}

/// When the hold ends, if one is running.
pub fn deadline(state: &WorkspaceState, hold: Millis) -> Option<Millis> {
    match state.status {
        Some(WorkspaceStatus::Occupied) if !state.present => state.vacated_at.map(|at| at + hold),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Vote::*;
    use WorkspaceStatus::*;

    const HOLD: Millis = 300_000;

    /// The state before, the votes, booked, now → the status after.
    type Case = (
        WorkspaceState,
        &'static [Vote],
        bool,
        Millis,
        Option<WorkspaceStatus>,
    );

    /// Each row: the state before, the votes, booked, now → the status after.
    #[test]
    fn rules_as_a_table() {
        let was = |status: Option<WorkspaceStatus>, present: bool, vacated: Option<Millis>| {
            WorkspaceState {
                status,
                present,
                vacated_at: vacated,
                since: None,
            }
        };
        let cases: &[Case] = &[
            // nobody heard yet: no status
            (was(None, false, None), &[Silent, Silent], false, 0, None),
            // first absence everywhere: Free at once (nothing to hold)
            (
                was(None, false, None),
                &[Absent, Absent],
                false,
                0,
                Some(Free),
            ),
            // one sensor still silent, the other absent: the usable one decides
            (
                was(None, false, None),
                &[Absent, Silent],
                false,
                0,
                Some(Free),
            ),
            // any presence: Occupied at once
            (
                was(Some(Free), false, None),
                &[Absent, Present],
                false,
                0,
                Some(Occupied),
            ),
            // booked display, nobody present: Booked
            (
                was(Some(Free), false, None),
                &[Absent],
                true,
                0,
                Some(Booked),
            ),
            // booked and someone present: Occupied
            (
                was(Some(Booked), false, None),
                &[Present],
                true,
                0,
                Some(Occupied),
            ),
            // presence just ended: still Occupied, the hold starts now
            (
                was(Some(Occupied), true, None),
                &[Absent, Absent],
                false,
                1_000,
                Some(Occupied),
            ),
            // inside the hold
            (
                was(Some(Occupied), false, Some(1_000)),
                &[Absent, Absent],
                false,
                300_999,
                Some(Occupied),
            ),
            // hold over: Free, or Booked when the display says so
            (
                was(Some(Occupied), false, Some(1_000)),
                &[Absent, Absent],
                false,
                301_000,
                Some(Free),
            ),
            (
                was(Some(Occupied), false, Some(1_000)),
                &[Absent],
                true,
                301_000,
                Some(Booked),
            ),
            // the only present sensor went lost: presence ended, hold applies
            (
                was(Some(Occupied), true, None),
                &[Unavailable, Absent],
                false,
                5_000,
                Some(Occupied),
            ),
            // every sensor lost or offline: Unknown, whatever it was
            (
                was(Some(Occupied), true, None),
                &[Unavailable, Unavailable],
                false,
                0,
                Some(Unknown),
            ),
            (
                was(Some(Free), false, None),
                &[Unavailable],
                true,
                0,
                Some(Unknown),
            ),
            // back from Unknown reporting absence: Free at once (it was not Occupied)
            (
                was(Some(Unknown), false, None),
                &[Absent, Unavailable],
                false,
                0,
                Some(Free),
            ),
            // lost and never-heard sensors: not all unavailable, keep what it was
            (
                was(Some(Free), false, None),
                &[Unavailable, Silent],
                false,
                0,
                Some(Free),
            ),
        ];
        for (i, (prev, votes, booked, now, want)) in cases.iter().enumerate() {
            let next = evaluate(prev, votes, *booked, HOLD, *now);
            assert_eq!(
                next.status, *want,
                "case {i}: {prev:?} {votes:?} booked={booked} t={now}"
            );
        }
    }

    #[test]
    fn hold_runs_from_the_end_of_presence_and_restarts_on_presence() {
        let mut s = WorkspaceState::default();
        s = evaluate(&s, &[Present, Absent], false, HOLD, 0);
        assert_eq!(deadline(&s, HOLD), None, "no hold while someone is there");
        s = evaluate(&s, &[Absent, Absent], false, HOLD, 10_000);
        assert_eq!(s.status, Some(Occupied));
        assert_eq!(deadline(&s, HOLD), Some(310_000));
        // a quiet reading in between does not move the hold
        s = evaluate(&s, &[Absent, Absent], false, HOLD, 200_000);
        assert_eq!(deadline(&s, HOLD), Some(310_000));
        // presence again: the hold is cancelled, and starts afresh when it ends
        s = evaluate(&s, &[Absent, Present], false, HOLD, 250_000);
        assert_eq!(deadline(&s, HOLD), None);
        s = evaluate(&s, &[Absent, Absent], false, HOLD, 260_000);
        assert_eq!(deadline(&s, HOLD), Some(560_000));
        assert_eq!(
            evaluate(&s, &[Absent, Absent], false, HOLD, 559_999).status,
            Some(Occupied)
        );
        let freed = evaluate(&s, &[Absent, Absent], false, HOLD, 560_000);
        assert_eq!(freed.status, Some(Free));
        assert_eq!(deadline(&freed, HOLD), None);
    }

    #[test]
    fn since_is_when_the_status_became_what_it_is() {
        let mut s = WorkspaceState::default();
        s = evaluate(&s, &[Silent], false, HOLD, 1_000);
        assert_eq!(s.since, None, "no status, no since");
        s = evaluate(&s, &[Present], false, HOLD, 2_000);
        assert_eq!((s.status, s.since), (Some(Occupied), Some(2_000)));
        s = evaluate(&s, &[Present], false, HOLD, 3_000);
        assert_eq!(s.since, Some(2_000), "unchanged status, unchanged since");
        s = evaluate(&s, &[Absent], false, HOLD, 4_000);
        assert_eq!(
            (s.status, s.since),
            (Some(Occupied), Some(2_000)),
            "holding"
        );
        s = evaluate(&s, &[Absent], true, HOLD, 4_000 + HOLD);
        assert_eq!((s.status, s.since), (Some(Booked), Some(4_000 + HOLD)));
        s = evaluate(&s, &[Unavailable], true, HOLD, 9_000_000);
        assert_eq!((s.status, s.since), (Some(Unknown), Some(9_000_000)));
    }
}
