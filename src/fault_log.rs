//! Rate-limited fault logs: the first fault of a kind from a source is logged, repeats within a
//! window are only counted (the counters are in the metrics) and summarised with the next logged
//! line, so a misbehaving device cannot flood the journal.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Sources (topics, ports) a [`FaultLog`] tells apart at once.
pub const FAULT_SOURCES: usize = 256;

/// Rate limiter for per-message fault logs: the first fault of a kind from a source is logged,
/// repeats within `window` are only counted and summarised with the next logged one.
pub struct FaultLog {
    window: Duration,
    seen: HashMap<(&'static str, String), (Instant, u64)>,
}

impl FaultLog {
    pub fn new(window: Duration) -> FaultLog {
        FaultLog {
            window,
            seen: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when this fault should be logged now (with how many were suppressed
    /// since the last line), `None` when it should only be counted.
    /// At most [`FAULT_SOURCES`] sources are told apart; past that (a flood of made-up topics),
    /// faults of one kind from any further source share one line a window.
    pub fn admit(&mut self, kind: &'static str, source: &str, now: Instant) -> Option<u64> {
        let mut key = (kind, source.to_string());
        if !self.seen.contains_key(&key) && self.seen.len() >= FAULT_SOURCES {
            let window = self.window;
            self.seen
                .retain(|_, (at, _)| now.duration_since(*at) < window);
            if self.seen.len() >= FAULT_SOURCES {
                key = (kind, "(other sources)".to_string());
            }
        }
        match self.seen.get_mut(&key) {
            Some((at, suppressed)) if now.duration_since(*at) < self.window => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16 #6: a flood of made-up topics used to get a log line each (and an entry each,
    /// for a minute): past [`FAULT_SOURCES`] they share one line a window.
    #[test]
    fn a_flood_of_sources_is_logged_once_a_window_in_bounded_memory() {
        let mut log = FaultLog::new(Duration::from_secs(60));
        let now = Instant::now();
        let logged = (0..10_000)
            .filter(|i| {
                log.admit("not_json", &format!("junk/{i}/reading"), now)
                    .is_some()
            })
            .count();
        assert_eq!(logged, FAULT_SOURCES + 1);
        assert!(log.seen.len() <= FAULT_SOURCES + 1);
        // the next window starts afresh (the counters in /metrics keep the totals)
        let later = now + Duration::from_secs(61);
        assert_eq!(log.admit("not_json", "junk/x/reading", later), Some(0));
        assert_eq!(log.seen.len(), 1);
    }

    #[test]
    fn fault_log_admits_first_then_summarises() {
        let mut log = FaultLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.admit("not_json", "topic/a", t0), Some(0));
        assert_eq!(
            log.admit("not_json", "topic/a", t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            log.admit("not_json", "topic/a", t0 + Duration::from_secs(2)),
            None
        );
        assert_eq!(
            log.admit("oversize", "topic/a", t0),
            Some(0),
            "other kinds are separate"
        );
        assert_eq!(
            log.admit("not_json", "topic/b", t0),
            Some(0),
            "other sources are separate"
        );
        assert_eq!(
            log.admit("not_json", "topic/a", t0 + Duration::from_secs(61)),
            Some(2)
        );
    }
}
