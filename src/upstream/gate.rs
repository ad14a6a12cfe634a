//! Who may send commands: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) checked against the configured secrets, a timestamp within the
//! tolerance of this gateway's clock either way, and each id taken once within that window (a
//! replayed request is refused; after the window its timestamp refuses it). Pure: the clock is
//! passed in, in Unix seconds.
//!
//! Ids are remembered in memory: after a restart a request replayed inside the window is taken
//! again, which the commands' own ids make harmless (an action id, a booking id, is taken once).

use std::collections::{BTreeSet, HashSet};

use crate::sign::Signer;

/// At most this many ids are remembered (a full window refuses with [`Unauthorized::Busy`]).
pub const MAX_REMEMBERED: usize = 10_000;
/// Longer ids are not taken.
pub const MAX_ID: usize = 256;

/// The three headers of a signed request (or pull answer), as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signed<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Why a request is refused (401, except `Busy`: 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unauthorized {
    /// A header missing or malformed.
    Unsigned,
    /// The timestamp is outside the tolerance.
    Stale,
    /// No configured secret signed it.
    BadSignature,
    /// Its id was taken already within the window.
    Replayed,
    /// Too many ids within the window to remember one more.
    Busy,
}

impl Unauthorized {
    pub fn as_str(self) -> &'static str {
        match self {
            Unauthorized::Unsigned => "unsigned",
            Unauthorized::Stale => "stale",
            Unauthorized::BadSignature => "bad_signature",
            Unauthorized::Replayed => "replayed",
            Unauthorized::Busy => "busy",
        }
    }

    pub fn why(self) -> &'static str {
        match self {
            Unauthorized::Unsigned => {
                "missing or malformed webhook-id, webhook-timestamp or webhook-signature"
            }
            Unauthorized::Stale => {
                "webhook-timestamp is outside the tolerance of the gateway's clock"
            }
            Unauthorized::BadSignature => {
                "webhook-signature does not verify with any configured secret"
            }
            Unauthorized::Replayed => "this webhook-id was taken already",
            Unauthorized::Busy => "too many requests within the tolerance window: try again later",
        }
    }

    pub const ALL: [Unauthorized; 5] = [
        Unauthorized::Unsigned,
        Unauthorized::Stale,
        Unauthorized::BadSignature,
        Unauthorized::Replayed,
        Unauthorized::Busy,
    ];
}

pub struct Gate {
    signer: Signer,
    tolerance: u64,
    /// Ids taken, and when each may be forgotten (its timestamp + tolerance).
    ids: HashSet<String>,
    expiries: BTreeSet<(u64, String)>,
}

impl Gate {
    pub fn new(signer: Signer, tolerance_secs: u64) -> Gate {
        Gate {
            signer,
            tolerance: tolerance_secs,
            ids: HashSet::new(),
            expiries: BTreeSet::new(),
        }
    }

    /// Check `signed` over `body` at `now`; a request that passes has its id remembered.
    pub fn check(&mut self, signed: Signed<'_>, body: &[u8], now: u64) -> Result<(), Unauthorized> {
        let (Some(id), Some(ts), Some(signature)) = (signed.id, signed.timestamp, signed.signature)
        else {
            return Err(Unauthorized::Unsigned);
        };
        let id = id.trim();
        if id.is_empty() || id.len() > MAX_ID {
            return Err(Unauthorized::Unsigned);
        }
        let Ok(ts) = ts.trim().parse::<u64>() else {
            return Err(Unauthorized::Unsigned);
        };
        if ts.abs_diff(now) > self.tolerance {
            return Err(Unauthorized::Stale);
        }
        if !self.signer.verify_standard(id, ts, body, signature) {
            return Err(Unauthorized::BadSignature);
        }
        self.forget_expired(now);
        if self.ids.contains(id) {
            return Err(Unauthorized::Replayed);
        }
        if self.ids.len() >= MAX_REMEMBERED {
            return Err(Unauthorized::Busy);
        }
        self.ids.insert(id.to_string());
        self.expiries.insert((ts + self.tolerance, id.to_string()));
        Ok(())
    }

    /// Forget an id taken by [`Gate::check`] whose request was then not taken (so the sender's
    /// retry of the same request is not refused as a replay).
    pub fn release(&mut self, id: &str) {
        if self.ids.remove(id) {
            self.expiries.retain(|(_, i)| i != id);
        }
    }

    fn forget_expired(&mut self, now: u64) {
        while let Some(first) = self.expiries.first() {
            if first.0 >= now {
                break;
            }
            let (_, id) = self.expiries.pop_first().expect("just seen");
            self.ids.remove(&id);
        }
    }

    pub fn remembered(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::sign::{HmacOptions, SignatureScheme};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn signer() -> Signer {
        Signer::with(
            SignatureScheme::StandardWebhooks,
            &[Secret::new(SECRET)],
            HmacOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn requests_are_taken_once_within_the_tolerance_and_signed() {
        let s = signer();
        let body = br#"{"type":"device.action_requested"}"#;
        let sig = |id: &str, ts: u64| s.sign_standard(id, ts, body);
        let mut gate = Gate::new(signer(), 300);
        // (what, id, timestamp, signature, now, expected)
        type Row<'a> = (
            &'a str,
            &'a str,
            String,
            Option<String>,
            u64,
            Result<(), Unauthorized>,
        );
        let rows: Vec<Row> = vec![
            (
                "signed now",
                "m1",
                "1000".into(),
                Some(sig("m1", 1000)),
                1000,
                Ok(()),
            ),
            (
                "the same id again",
                "m1",
                "1000".into(),
                Some(sig("m1", 1000)),
                1001,
                Err(Unauthorized::Replayed),
            ),
            (
                "the same id re-signed later",
                "m1",
                "1100".into(),
                Some(sig("m1", 1100)),
                1100,
                Err(Unauthorized::Replayed),
            ),
            (
                "at the tolerance's edge",
                "m2",
                "700".into(),
                Some(sig("m2", 700)),
                1000,
                Ok(()),
            ),
            (
                "past it",
                "m3",
                "699".into(),
                Some(sig("m3", 699)),
                1000,
                Err(Unauthorized::Stale),
            ),
            (
                "from the future, within",
                "m4",
                "1300".into(),
                Some(sig("m4", 1300)),
                1000,
                Ok(()),
            ),
            (
                "from the future, past",
                "m5",
                "1301".into(),
                Some(sig("m5", 1301)),
                1000,
                Err(Unauthorized::Stale),
            ),
            (
                "signed for another id",
                "m6",
                "1000".into(),
                Some(sig("m7", 1000)),
                1000,
                Err(Unauthorized::BadSignature),
            ),
            (
                "signed at another time",
                "m6",
                "1001".into(),
                Some(sig("m6", 1000)),
                1000,
                Err(Unauthorized::BadSignature),
            ),
            (
                "no signature",
                "m6",
                "1000".into(),
                None,
                1000,
                Err(Unauthorized::Unsigned),
            ),
            (
                "a timestamp that is not a number",
                "m6",
                "soon".into(),
                Some(sig("m6", 1000)),
                1000,
                Err(Unauthorized::Unsigned),
            ),
            (
                "an empty id",
                "",
                "1000".into(),
                Some(sig("", 1000)),
                1000,
                Err(Unauthorized::Unsigned),
            ),
            // m1 was remembered until 1300; after that its timestamp refuses it, not the set.
            (
                "m1 replayed after its window",
                "m1",
                "1000".into(),
                Some(sig("m1", 1000)),
                1301,
                Err(Unauthorized::Stale),
            ),
            (
                "m6 rightly signed",
                "m6",
                "1000".into(),
                Some(sig("m6", 1000)),
                1000,
                Ok(()),
            ),
        ];
        for (what, id, ts, signature, now, expected) in rows {
            let signed = Signed {
                id: Some(id),
                timestamp: Some(&ts),
                signature: signature.as_deref(),
            };
            assert_eq!(gate.check(signed, body, now), expected, "{what}");
        }
        assert!(
            gate.ids.contains("m1"),
            "m1 is forgotten only when a later check passes"
        );
        gate.check(
            Signed {
                id: Some("m8"),
                timestamp: Some("1400"),
                signature: Some(&sig("m8", 1400)),
            },
            body,
            1400,
        )
        .unwrap();
        assert!(
            !gate.ids.contains("m1") && !gate.ids.contains("m2"),
            "expired ids forgotten"
        );
    }

    #[test]
    fn a_released_id_may_come_again_and_the_memory_is_bounded() {
        let s = signer();
        let mut gate = Gate::new(signer(), 300);
        let signed =
            |id: &str, sig: &str| -> (String, String) { (id.to_string(), sig.to_string()) };
        let (id, sig) = signed("m1", &s.sign_standard("m1", 1000, b"{}"));
        let req = Signed {
            id: Some(&id),
            timestamp: Some("1000"),
            signature: Some(&sig),
        };
        gate.check(req, b"{}", 1000).unwrap();
        gate.release("m1");
        assert_eq!(
            gate.check(req, b"{}", 1001),
            Ok(()),
            "released, so not a replay"
        );
        for i in 0..MAX_REMEMBERED - 1 {
            let id = format!("f{i}");
            gate.ids.insert(id.clone());
            gate.expiries.insert((1300, id));
        }
        let sig = s.sign_standard("m2", 1000, b"{}");
        let req = Signed {
            id: Some("m2"),
            timestamp: Some("1000"),
            signature: Some(&sig),
        };
        assert_eq!(gate.check(req, b"{}", 1000), Err(Unauthorized::Busy));
        assert_eq!(gate.check(req, b"{}", 1301), Err(Unauthorized::Stale));
        let sig = s.sign_standard("m3", 1301, b"{}");
        let req = Signed {
            id: Some("m3"),
            timestamp: Some("1301"),
            signature: Some(&sig),
        };
        assert_eq!(
            gate.check(req, b"{}", 1301),
            Ok(()),
            "the window passed: all forgotten"
        );
        assert_eq!(gate.remembered(), 1);
    }
}
