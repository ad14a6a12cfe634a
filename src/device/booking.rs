//! Bookings sent down by upstream (`booking.start` / `booking.end`, SpaceOS's vocabulary): a
//! workspace is booked from a booking's `start` until its `end` (or its `booking.end`). Pure.
//!
//! How this meets the display rule of [`super::workspace`]: a workspace counts as booked when
//! upstream's calendar says so (a booking in force, whatever the display's health: the calendar
//! is upstream's word, not the display's) **or** its room display reports a booking while it is
//! online. Presence wins over both. A `booking.start` sent early (SpaceOS sends one at T-15)
//! books nothing before `start`: it is kept, and the workspace turns `Booked` at `start`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Millis;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booking {
    pub id: String,
    pub workspace: String,
    pub start: Millis,
    pub end: Millis,
    /// What else upstream said of it (a title, an organiser), passed on to the display.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
    /// When it ended (its `booking.end`, or its end passed). An ended booking books nothing
    /// and is kept, without its details, for [`REMEMBER_ENDED`], so that the same
    /// `booking.start` (resent, replayed within the signature tolerance, pulled again by a
    /// cursor that went back) does not book the room again: a booking id is taken once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Millis>,
}

/// How long an ended booking's id is remembered.
pub const REMEMBER_ENDED: Millis = 7 * 24 * 3600 * 1000;
/// At most this many ended bookings are remembered (the oldest go first).
pub const MAX_ENDED: usize = 4096;

impl Booking {
    /// In force at `now`.
    pub fn books(&self, now: Millis) -> bool {
        self.start <= now && now < self.end
    }

    /// Over at `now` (then it is forgotten).
    pub fn is_over(&self, now: Millis) -> bool {
        self.end <= now
    }

    /// This booking as remembered once it ended at `at`.
    pub fn ended_at(&self, at: Millis) -> Booking {
        Booking {
            details: Value::Null,
            ended: Some(at),
            ..self.clone()
        }
    }

    /// The next moment after `now` at which [`Booking::books`] changes, if any.
    pub fn next_change(&self, now: Millis) -> Option<Millis> {
        [self.start, self.end].into_iter().find(|&t| t > now)
    }
}

/// Whether any of `bookings` books at `now`, and when that may next change.
pub fn booked<'a>(
    bookings: impl IntoIterator<Item = &'a Booking>,
    now: Millis,
) -> (bool, Option<Millis>) {
    let mut booked = false;
    let mut next: Option<Millis> = None;
    for b in bookings {
        booked |= b.books(now);
        if let Some(t) = b.next_change(now) {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
    }
    (booked, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booking(start: Millis, end: Millis) -> Booking {
        Booking {
            id: format!("bk-{start}"),
            workspace: "room-1".into(),
            start,
            end,
            details: Value::Null,
            ended: None,
        }
    }

    #[test]
    fn a_workspace_is_booked_from_start_to_end_and_an_early_notice_books_nothing() {
        let meeting = booking(10_000, 20_000);
        let later = booking(30_000, 40_000);
        // (now, bookings, booked, next change)
        let rows: [(Millis, Vec<&Booking>, bool, Option<Millis>); 8] = [
            (1_000, vec![&meeting], false, Some(10_000)), // the T-15 notice
            (9_999, vec![&meeting], false, Some(10_000)),
            (10_000, vec![&meeting], true, Some(20_000)),
            (19_999, vec![&meeting], true, Some(20_000)),
            (20_000, vec![&meeting], false, None), // over at its end
            (15_000, vec![&meeting, &later], true, Some(20_000)),
            (25_000, vec![&meeting, &later], false, Some(30_000)),
            (25_000, vec![], false, None),
        ];
        for (now, bookings, is_booked, next) in rows {
            assert_eq!(booked(bookings, now), (is_booked, next), "at {now}");
        }
        assert!(meeting.is_over(20_000) && !meeting.is_over(19_999));
    }
}
