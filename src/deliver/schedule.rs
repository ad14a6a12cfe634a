//! What to do with a record after one attempt, as a pure function of the outcome and the
//! endpoint's limits: remove it, retry it after a delay, bury it as a dead letter, or disable
//! the endpoint. The dispatcher carries the decision out; nothing here touches I/O or a clock.

use std::time::Duration;

use super::retry::{Outcome, RetryPolicy};

/// When an endpoint gives up on an event (`max_attempts`, `max_age`); never, by default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GiveUp {
    pub max_attempts: Option<u32>,
    pub max_age: Option<Duration>,
}

/// What the dispatcher knows about a record when its attempt comes back (nothing matters for
/// a delivered one: the default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Facts {
    /// Failed attempts so far, this one included (for a failure).
    pub failures: u32,
    /// How long ago the event was made, in real time; `None` when that is unknown (an id
    /// that is not a UUIDv7, or the clock stepped since).
    pub age: Option<Duration>,
    /// Whether the system clock is set (see `crate::clock::synchronised`). While it is not,
    /// every HTTPS attempt fails on certificate dates, so no limit may give up on an event.
    pub clock_set: bool,
    /// A random number in [0, 1) spreading the retry delay (see [`RetryPolicy::delay`]).
    pub jitter: f64,
}

/// What becomes of a record after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Delivered: remove it from the queue.
    Remove,
    /// Nothing to send for it: remove it from the queue, not delivered.
    Skip,
    /// Try again once this delay has passed; the lane waits meanwhile.
    RetryAfter(Duration),
    /// Give up on it (which limit said so): move it to the dead letters.
    Bury(&'static str),
    /// The receiver answered 410 Gone: stop sending to the endpoint, keep its events.
    Disable,
    /// Its batch was refused: send it again at once, on its own.
    RetrySolo,
}

/// The one rule: 2xx removes; 410 disables; a limit reached buries; anything else waits out
/// the backoff (the receiver's `Retry-After` when longer). An event the format sends nothing
/// for is skipped; one that cannot be made into a request is buried at once (retrying cannot
/// change it, and an endless retry would hold its lane).
pub fn decide(outcome: &Outcome, facts: Facts, policy: &RetryPolicy, give_up: GiveUp) -> Decision {
    match outcome {
        Outcome::Delivered { .. } => Decision::Remove,
        Outcome::NotSent => Decision::Skip,
        Outcome::Unsendable { .. } => Decision::Bury("unsendable"),
        Outcome::Split { .. } => Decision::RetrySolo,
        Outcome::Retry {
            status: Some(410), ..
        } => Decision::Disable,
        Outcome::Retry { retry_after, .. } => match limit_reached(give_up, facts) {
            Some(limit) => Decision::Bury(limit),
            None => RetryAfter(policy.delay(facts.failures, *retry_after, facts.jitter)),
        },
    }
}
use Decision::RetryAfter;

/// Which limit, if any, says to stop retrying after `facts.failures` failed attempts.
fn limit_reached(give_up: GiveUp, facts: Facts) -> Option<&'static str> {
    if !facts.clock_set {
        return None;
    }
    if give_up
        .max_attempts
        .is_some_and(|max| facts.failures >= max)
    {
        return Some("max_attempts");
    }
    match (give_up.max_age, facts.age) {
        (Some(max), Some(age)) if age >= max => Some("max_age"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: S(1),
            max: S(60),
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    fn failed(status: Option<u16>, retry_after: Option<Duration>) -> Outcome {
        Outcome::Retry {
            status,
            retry_after,
            reason: "test".into(),
        }
    }

    fn facts(failures: u32, age: Option<u64>, clock_set: bool) -> Facts {
        Facts {
            failures,
            age: age.map(S),
            clock_set,
            jitter: 0.5,
        }
    }

    #[test]
    fn decisions_as_a_table() {
        let never = GiveUp::default();
        let three = GiveUp {
            max_attempts: Some(3),
            max_age: None,
        };
        let hour = GiveUp {
            max_attempts: None,
            max_age: Some(S(3600)),
        };
        let ok = Outcome::Delivered { status: 204 };
        #[rustfmt::skip]
        let table: Vec<(&str, Outcome, Facts, GiveUp, Decision)> = vec![
            ("2xx removes", ok.clone(), facts(0, Some(0), true), never, Decision::Remove),
            ("2xx removes even past every limit", ok, facts(9, Some(9999), true), three, Decision::Remove),
            ("first failure waits the initial delay", failed(Some(500), None), facts(1, Some(0), true), never, RetryAfter(S(1))),
            ("the delay doubles", failed(None, None), facts(3, Some(0), true), never, RetryAfter(S(4))),
            ("and is capped", failed(None, None), facts(20, Some(0), true), never, RetryAfter(S(60))),
            ("a longer Retry-After wins", failed(Some(429), Some(S(30))), facts(1, None, true), never, RetryAfter(S(30))),
            ("a shorter Retry-After does not", failed(Some(503), Some(S(0))), facts(2, None, true), never, RetryAfter(S(2))),
            ("a redirect is retried", failed(Some(302), None), facts(1, None, true), never, RetryAfter(S(1))),
            ("410 disables", failed(Some(410), None), facts(1, None, true), three, Decision::Disable),
            ("410 disables even with the clock unset", failed(Some(410), None), facts(5, None, false), three, Decision::Disable),
            ("below max_attempts retries", failed(Some(500), None), facts(2, None, true), three, RetryAfter(S(2))),
            ("at max_attempts buries", failed(Some(500), None), facts(3, None, true), three, Decision::Bury("max_attempts")),
            ("max_attempts never while the clock is unset", failed(None, None), facts(3, None, false), three, RetryAfter(S(4))),
            ("younger than max_age retries", failed(None, None), facts(1, Some(3599), true), hour, RetryAfter(S(1))),
            ("at max_age buries", failed(None, None), facts(1, Some(3600), true), hour, Decision::Bury("max_age")),
            ("an unknown age never buries", failed(None, None), facts(1, None, true), hour, RetryAfter(S(1))),
            ("max_age never while the clock is unset", failed(None, None), facts(1, Some(9999), false), hour, RetryAfter(S(1))),
            ("nothing to send skips", Outcome::NotSent, facts(0, None, true), never, Decision::Skip),
            ("unsendable buries at once", Outcome::Unsendable { reason: "template".into() }, facts(1, None, true), never, Decision::Bury("unsendable")),
            ("unsendable buries with the clock unset too", Outcome::Unsendable { reason: "template".into() }, facts(1, None, false), never, Decision::Bury("unsendable")),
            ("a refused batch is split", Outcome::Split { status: 422 }, facts(1, None, true), three, Decision::RetrySolo),
            ("a split never buries", Outcome::Split { status: 400 }, facts(3, Some(9999), true), three, Decision::RetrySolo),
            ("no limits: retried for ever", failed(Some(400), None), facts(10_000, Some(1 << 30), true), never, RetryAfter(S(60))),
        ];
        for (what, outcome, facts, give_up, want) in table {
            assert_eq!(decide(&outcome, facts, &policy(), give_up), want, "{what}");
        }
    }
}
