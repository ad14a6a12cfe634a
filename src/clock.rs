//! Time, and what edgehook does when the system clock is wrong or jumps.
//!
//! A Raspberry Pi has no real-time clock: it boots with the time of its last shutdown (or
//! 1970) and NTP later *steps* the clock, by hours or years, while edgehook runs. The rules:
//!
//! - **Durations are never measured across a step.** The device stage's [`Clock`] is the wall
//!   time at start plus monotonic time since, so debounces, heartbeats, holds and
//!   `min_interval` run for their real length whatever the wall clock does. When the wall
//!   clock steps (by more than [`STEP_TOLERANCE`]) the clock follows it, and every time the
//!   device stage remembers moves by the same step (`device::Registry::shift`): timestamps in
//!   events (`since`, `last_seen`) agree with the envelope's, and no timer fires early or late.
//! - **A time remembered from the future is taken as now.** State written while the clock was
//!   ahead (then stepped back before a restart) would otherwise hold reports back until the
//!   clock caught up; at start every remembered time later than now is clamped to now.
//! - **Event age counts only real time.** `max_age` subtracts the forward steps this run has
//!   seen since an event was created ([`ClockSteps`]); an event stamped before the clock was
//!   set ([`synchronised`]) has no known age and is never given up on for it; and nothing is
//!   given up on at all (neither `max_age` nor `max_attempts`) while the clock is not set,
//!   since every HTTPS attempt then fails on certificates that look "not yet valid".
//! - **Ids**: an event id is a UUIDv7 of the system clock when the event is made (within
//!   [`STEP_TOLERANCE`] of the envelope's `timestamp`), so ids sort by time only while the
//!   clock does not step back; edgehook's own order (per device, per workspace) comes from the
//!   outbox's sequence numbers, never from ids.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// How far the wall clock may drift from the device stage's clock before it counts as a step.
pub const STEP_TOLERANCE: Millis = 2_000;

/// No clock that reads earlier than this is set: this release did not exist yet. (A gateway
/// that boots at 1970, or at the time of an image built long ago, reads earlier.)
pub const FLOOR: Millis = 1_793_491_200_000; // 2026-11-01T00:00:00Z

/// The wall clock, in [`Millis`].
pub fn system_now() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// A time in [`Millis`] as RFC 3339 text, to the millisecond (`2026-12-07T10:15:02.481Z`).
pub fn rfc3339(at: Millis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at)).to_string()
}

pub fn millis(d: Duration) -> Millis {
    d.as_millis().min(u64::MAX as u128) as Millis
}

/// Whether a wall time can be right (not before [`FLOOR`]).
pub fn synchronised(wall: Millis) -> bool {
    wall >= FLOOR
}

/// The device stage's clock: the wall time at start plus monotonic time since, following the
/// wall clock only when it steps (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_start: Millis,
    mono_at_start: tokio::time::Instant,
    wall: fn() -> Millis,
}

impl Clock {
    pub fn start() -> Clock {
        Clock::with_wall(system_now)
    }

    /// A clock on another wall-time source (tests).
    pub fn with_wall(wall: fn() -> Millis) -> Clock {
        Clock {
            wall_at_start: wall(),
            mono_at_start: tokio::time::Instant::now(),
            wall,
        }
    }

    pub fn now(&self) -> Millis {
        self.wall_at_start + millis(self.mono_at_start.elapsed())
    }

    /// Compare with the wall clock; if it has stepped, follow it and return the step (ms,
    /// positive forward).
    pub fn follow_wall(&mut self) -> Option<i64> {
        let wall = (self.wall)();
        let now = self.now();
        let step = wall as i64 - now as i64;
        if step.unsigned_abs() <= STEP_TOLERANCE {
            return None;
        }
        self.wall_at_start = (self.wall_at_start as i64 + step).max(0) as Millis;
        Some(step)
    }

    /// The monotonic instant of a deadline.
    pub fn instant_at(&self, at: Millis) -> tokio::time::Instant {
        self.mono_at_start + Duration::from_millis(at.saturating_sub(self.wall_at_start))
    }
}

/// Move `at` by `step` milliseconds (never below 0).
pub fn shifted(at: Millis, step: i64) -> Millis {
    (at as i64).saturating_add(step).max(0) as Millis
}

/// The clock steps seen since start, so that an event's age counts only real time. It watches
/// the wall clock itself ([`ClockSteps::observe`]), against its own monotonic anchor, so that
/// whoever asks an age first sees a step first.
#[derive(Debug, Default)]
pub struct ClockSteps {
    inner: Mutex<Steps>,
}

#[derive(Debug, Default)]
struct Steps {
    /// (wall, monotonic) at the last observation.
    anchor: Option<(Millis, std::time::Instant)>,
    /// (wall time just after the step, step in ms), oldest first; the oldest are merged away
    /// past a few dozen.
    steps: Vec<(Millis, i64)>,
}

/// The steps of this process's clock.
pub static STEPS: ClockSteps = ClockSteps {
    inner: Mutex::new(Steps {
        anchor: None,
        steps: Vec::new(),
    }),
};

impl ClockSteps {
    /// Read the wall clock, noting a step since the last observation; returns the wall time.
    pub fn observe(&self) -> Millis {
        let (wall, mono) = (system_now(), std::time::Instant::now());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, then)) = inner.anchor {
            let expected = at + millis(mono.duration_since(then));
            let step = wall as i64 - expected as i64;
            if step.unsigned_abs() > STEP_TOLERANCE {
                inner.record(wall, step);
            }
        }
        inner.anchor = Some((wall, mono));
        wall
    }

    /// Note a step of `step` ms that left the clock at `at`.
    pub fn record(&self, at: Millis, step: i64) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(at, step);
    }

    /// How old an event created at `created` is at `now`, in real time: `None` when that is
    /// unknown (it was stamped before the clock was set). Forward steps since `created` are
    /// taken off; a step back can only make the age smaller (so an event is given up on later,
    /// never sooner).
    pub fn age(&self, created: Millis, now: Millis) -> Option<Duration> {
        if !synchronised(created) {
            return None;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let stepped: i64 = inner
            .steps
            .iter()
            .filter(|(at, _)| *at > created)
            .map(|(_, step)| *step)
            .sum();
        let age = now as i64 - created as i64 - stepped;
        Some(Duration::from_millis(age.max(0) as u64))
    }
}

impl Steps {
    fn record(&mut self, at: Millis, step: i64) {
        self.steps.push((at, step));
        if self.steps.len() > 32 {
            // Merge the two oldest: ages of events older than both are corrected the same.
            let (_, first) = self.steps.remove(0);
            self.steps[0].1 += first;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static WALL: AtomicU64 = AtomicU64::new(FLOOR + 1_000_000);
    fn wall() -> Millis {
        WALL.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_on_monotonic_time_and_follows_steps() {
        let start = wall();
        let mut clock = Clock::with_wall(wall);
        tokio::time::advance(Duration::from_secs(10)).await;
        WALL.store(start + 10_500, Ordering::SeqCst); // drift, not a step
        assert_eq!(clock.follow_wall(), None);
        assert_eq!(clock.now(), start + 10_000);
        WALL.store(start + 10_000 + 3_600_000, Ordering::SeqCst); // NTP: an hour forward
        assert_eq!(clock.follow_wall(), Some(3_600_000));
        assert_eq!(clock.now(), start + 3_610_000);
        let deadline = clock.now() + 5_000;
        let before = tokio::time::Instant::now();
        assert_eq!(clock.instant_at(deadline) - before, Duration::from_secs(5));
        WALL.store(start, Ordering::SeqCst); // back again
        assert_eq!(clock.follow_wall(), Some(-3_610_000));
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn age_counts_real_time_only() {
        let steps = ClockSteps::default();
        let t = FLOOR + 10_000_000;
        // created at t; at t+60 s the clock stepped 2 h forward; now is t+60 s+2 h+30 s
        steps.record(t + 60_000 + 7_200_000, 7_200_000);
        let now = t + 90_000 + 7_200_000;
        assert_eq!(steps.age(t, now), Some(Duration::from_secs(90)));
        // created after the step: no correction
        let later = t + 7_270_000;
        assert_eq!(
            steps.age(later, now),
            Some(Duration::from_millis(now - later))
        );
        // stamped at 1970 (or any time before the floor): unknown
        assert_eq!(steps.age(5_000, now), None);
        // a step back makes an age smaller at worst (given up on later, never sooner)
        let back = ClockSteps::default();
        back.record(t + 1_000 - 86_400_000, -86_400_000);
        let now = t + 2_000 - 86_400_000;
        assert!(back.age(t, now).unwrap() <= Duration::from_secs(2));
    }
}
