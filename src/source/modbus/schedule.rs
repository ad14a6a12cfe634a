//! Which device of a bus is read next, and when: the earliest due first (the one with the
//! lowest index among equals), so every device gets its turn whatever the others do. A device
//! that does not answer is read again later and later — its interval doubled for each poll in
//! a row without an answer, up to a minute (or its own interval, when longer) — so a silent
//! device costs the bus a few timeouts a minute, not one every interval. Pure, on the
//! caller's clock.

use std::time::{Duration, Instant};

/// The longest a silent device waits between polls (unless its interval is longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Slot {
    interval: Duration,
    due: Instant,
    failures: u32,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    slots: Vec<Slot>,
}

impl Schedule {
    /// Devices read every `intervals[i]`, all due at `now`.
    pub fn new(intervals: impl IntoIterator<Item = Duration>, now: Instant) -> Schedule {
        let slots = intervals
            .into_iter()
            .map(|interval| Slot {
                interval,
                due: now,
                failures: 0,
            })
            .collect();
        Schedule { slots }
    }

    /// The device to read next and when it is due (`None` without devices).
    pub fn next(&self) -> Option<(usize, Instant)> {
        self.slots
            .iter()
            .enumerate()
            .min_by_key(|(i, s)| (s.due, *i))
            .map(|(i, s)| (i, s.due))
    }

    /// Device `i` was read at `now`; `answered`: whether it answered. Returns its polls in a
    /// row without an answer.
    pub fn done(&mut self, i: usize, now: Instant, answered: bool) -> u32 {
        let slot = &mut self.slots[i];
        slot.failures = if answered { 0 } else { slot.failures + 1 };
        let factor = 1u32 << slot.failures.min(10);
        let wait = slot
            .interval
            .saturating_mul(factor)
            .min(MAX_BACKOFF.max(slot.interval));
        slot.due = now + wait;
        slot.failures
    }

    /// Every device due at `now` (a bus reopened: read them all at once).
    pub fn all_due(&mut self, now: Instant) {
        for slot in &mut self.slots {
            slot.due = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Polls `steps` times, each device answering as `answers` says, each poll taking
    /// `poll_time` (the answer's, or its timeouts'): which device was read, in order.
    fn run(
        intervals: &[u64],
        answers: impl Fn(usize) -> bool,
        poll_time: impl Fn(usize) -> Duration,
        steps: usize,
    ) -> Vec<usize> {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(intervals.iter().map(|&s| S * s as u32), t0);
        let mut now = t0;
        let mut order = Vec::new();
        for _ in 0..steps {
            let (i, due) = schedule.next().unwrap();
            now = now.max(due);
            now += poll_time(i);
            schedule.done(i, now, answers(i));
            order.push(i);
        }
        order
    }

    #[test]
    fn every_device_gets_its_turn_in_order() {
        let order = run(&[1, 1, 1], |_| true, |_| Duration::from_millis(10), 9);
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_device_read_more_often_is_read_more_often() {
        let order = run(&[1, 4], |_| true, |_| Duration::from_millis(10), 10);
        let fast = order.iter().filter(|&&i| i == 0).count();
        assert!(fast >= 7, "{order:?}");
        assert!(order.contains(&1), "{order:?}");
    }

    #[test]
    fn a_silent_device_backs_off_and_never_starves_the_others() {
        // Device 1 never answers and costs 2 s of timeouts each time; the others answer.
        let order = run(
            &[1, 1, 1],
            |i| i != 1,
            |i| {
                if i == 1 {
                    2 * S
                } else {
                    Duration::from_millis(10)
                }
            },
            60,
        );
        let silent = order.iter().filter(|&&i| i == 1).count();
        let others = order.len() - silent;
        assert!(
            silent <= 8,
            "the silent device was read {silent} times: {order:?}"
        );
        assert!(others >= 52, "{order:?}");
        // Between two reads of device 0 there is never more than one of the silent one.
        for w in order.windows(3) {
            assert!(!(w[0] == 1 && w[1] == 1), "{order:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_a_minute_and_an_answer_resets_it() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new([S * 5], t0);
        let waits: Vec<u64> = (0..6)
            .map(|_| {
                schedule.done(0, t0, false);
                (schedule.next().unwrap().1 - t0).as_secs()
            })
            .collect();
        assert_eq!(waits, [10, 20, 40, 60, 60, 60]);
        schedule.done(0, t0, true);
        assert_eq!(schedule.next().unwrap().1 - t0, S * 5);
        // An interval longer than a minute is never shortened.
        let mut slow = Schedule::new([S * 300], t0);
        slow.done(0, t0, false);
        assert_eq!(slow.next().unwrap().1 - t0, S * 300);
    }
}
