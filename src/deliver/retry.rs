//! The retry schedule and what counts as delivered, as plain functions over plain data.
//!
//! delay(n) = min(initial · multiplier^(n-1), max), spread by ±jitter/2, where n is the number
//! of failed attempts so far; a `Retry-After` from the receiver (seconds or HTTP date, capped at
//! one hour) replaces the computed delay when it is longer. Attempts are unlimited.

use std::time::{Duration, SystemTime};

use super::config::RetryConfig;

/// Longest `Retry-After` we honour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The retry schedule, as data.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub jitter: f64,
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        RetryPolicy {
            initial: c.initial,
            max: c.max,
            multiplier: c.multiplier,
            jitter: c.jitter,
        }
    }
}

impl RetryPolicy {
    /// Delay before the next attempt after `failures` failed attempts (≥ 1). `unit` is a random
    /// number in [0, 1) that spreads the delay by ±jitter/2.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let exp = self
            .multiplier
            .powi(failures.saturating_sub(1).min(64) as i32);
        let base = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let spread = 1.0 + self.jitter * (unit - 0.5);
        let computed = Duration::from_secs_f64((base * spread).max(0.0));
        match retry_after {
            Some(ra) => computed.max(ra.min(MAX_RETRY_AFTER)),
            None => computed,
        }
    }
}

/// What one attempt's result means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx, which one.
    Delivered { status: u16 },
    Retry {
        status: Option<u16>,
        retry_after: Option<Duration>,
        reason: String,
    },
    /// Nothing to send: the endpoint's format has nothing to say about this event (a
    /// workspace whose status is Unknown, for `roomz-presence`). Nothing went out.
    NotSent,
    /// The event cannot be made into this endpoint's request (its template fails on it):
    /// every retry would fail the same way. Nothing went out.
    Unsendable { reason: String },
    /// The batch it went in was refused with a 4xx (`status`): one event may be what the
    /// receiver refuses, so each is sent again on its own, at once.
    Split { status: u16 },
}

/// What the receiver answered, as far as classifying it goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Answer<'a> {
    pub status: u16,
    /// The `Retry-After` header.
    pub retry_after: Option<&'a str>,
    /// The `Location` header (of a redirect).
    pub location: Option<&'a str>,
    /// The start of what it said (its body, made one line of text): kept in the reason.
    pub said: &'a str,
}

/// The most of a receiver's answer a failure's reason keeps.
pub const SAID_BYTES: usize = 200;

/// The start of a receiver's answer as one line of plain text: control characters as spaces,
/// at most [`SAID_BYTES`] bytes (cut at a character), `…` when cut.
pub fn said(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    for c in text.chars() {
        if out.len() + c.len_utf8() > SAID_BYTES {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    let words: Vec<&str> = out.split_whitespace().collect();
    words.join(" ")
}

/// 2xx is delivered; every other answer is retried (the receiver may be mid-deploy, or
/// misconfigured and about to be fixed: we never drop an event on its say-so). A 3xx is a
/// failure like a 4xx: redirects are never followed (the signature and the endpoint's headers
/// must not go to another address, and a login page answering 200 has not received the event);
/// its reason names the `Location`, without its query.
pub fn classify(answer: Answer, now: SystemTime) -> Outcome {
    let status = answer.status;
    if (200..300).contains(&status) {
        return Outcome::Delivered { status };
    }
    let reason = match answer.location {
        Some(location) if (300..400).contains(&status) => {
            let location = location.split(['?', '#']).next().unwrap_or_default();
            format!("HTTP {status} redirect to {location} (not followed: set the endpoint's url to the receiver itself)")
        }
        _ if answer.said.is_empty() => format!("HTTP {status}"),
        _ => format!("HTTP {status}: {}", answer.said),
    };
    Outcome::Retry {
        status: Some(status),
        retry_after: answer.retry_after.and_then(|v| parse_retry_after(v, now)),
        reason,
    }
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    httpdate::parse_http_date(value)
        .ok()
        .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule_grows_caps_and_jitters() {
        let p = RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.2,
        };
        let mid = |n| p.delay(n, None, 0.5);
        assert_eq!(mid(1), Duration::from_secs(1));
        assert_eq!(mid(2), Duration::from_secs(2));
        assert_eq!(mid(3), Duration::from_secs(4));
        assert_eq!(mid(7), Duration::from_secs(60));
        assert_eq!(mid(1000), Duration::from_secs(60));
        assert_eq!(p.delay(1, None, 0.0), Duration::from_millis(900));
        assert!(p.delay(1, None, 0.999_999) <= Duration::from_millis(1100));
        // Retry-After wins when longer, is capped at an hour, and never shortens our delay
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(30)), 0.5),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.delay(7, Some(Duration::from_secs(5)), 0.5),
            Duration::from_secs(60)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(86_400)), 0.5),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn classification_table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00Z
        let cases: &[(u16, Option<&str>, bool, Option<u64>)] = &[
            (200, None, true, None),
            (204, None, true, None),
            (299, None, true, None),
            (301, None, false, None),
            (302, None, false, None),
            (307, Some("5"), false, Some(5)),
            (400, None, false, None),
            (408, None, false, None),
            (429, Some("7"), false, Some(7)),
            (500, None, false, None),
            (503, Some("Wed, 21 Oct 2015 07:28:30 GMT"), false, Some(30)),
            (503, Some("in a bit"), false, None),
        ];
        for (status, ra, delivered, secs) in cases {
            let answer = Answer {
                status: *status,
                retry_after: *ra,
                ..Default::default()
            };
            match classify(answer, now) {
                Outcome::Delivered { .. } => assert!(delivered, "{status}"),
                Outcome::Retry {
                    retry_after,
                    status: s,
                    ..
                } => {
                    assert!(!delivered, "{status}");
                    assert_eq!(s, Some(*status));
                    assert_eq!(
                        retry_after,
                        secs.map(Duration::from_secs),
                        "{status} {ra:?}"
                    );
                }
                other => panic!("an answer is delivered or retried: {other:?}"),
            }
        }
    }

    #[test]
    fn a_redirect_is_a_failure_that_names_where_it_pointed_without_the_query() {
        let answer = Answer {
            status: 302,
            retry_after: None,
            location: Some("https://sso.example.com/login?token=secret#x"),
            ..Default::default()
        };
        let Outcome::Retry { status, reason, .. } = classify(answer, SystemTime::now()) else {
            panic!("a redirect is not a delivery");
        };
        assert_eq!(status, Some(302));
        assert!(reason.contains("https://sso.example.com/login"), "{reason}");
        assert!(!reason.contains("secret"), "{reason}");
    }

    /// A failure's reason carries the start of what the receiver said ("HTTP 422" alone left
    /// the operator guessing), as one line of text, cut at SAID_BYTES.
    #[test]
    fn a_failure_keeps_the_start_of_what_the_receiver_said() {
        let answer = |said| Answer {
            status: 422,
            said,
            ..Default::default()
        };
        let reason = |a| match classify(a, SystemTime::now()) {
            Outcome::Retry { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(answer("")), "HTTP 422");
        let told = said(b"{\"error\": \"missing field\n `workspace_id`\"}\r\n");
        assert_eq!(told, "{\"error\": \"missing field `workspace_id`\"}");
        assert_eq!(
            reason(answer(&told)),
            "HTTP 422: {\"error\": \"missing field `workspace_id`\"}"
        );
        let long = said("é".repeat(400).as_bytes());
        assert!(
            long.len() <= SAID_BYTES + '…'.len_utf8() && long.ends_with('…'),
            "{long}"
        );
        assert_eq!(said(&[0xff, b'o', b'k']), "\u{fffd}ok");
    }
}
