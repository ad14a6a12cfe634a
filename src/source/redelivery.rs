//! Recognising the broker's redeliveries of messages edgehook has already applied.
//!
//! When the connection to the broker is lost (a broker restart, a network blip), every QoS 1
//! message edgehook received on it but had not acknowledged yet is redelivered on the next
//! connection — including messages whose events and state are already durable and whose
//! acknowledgement was dropped with the connection (it must not go out on the new one, see
//! `source::mqtt`). Applying such a message a second time, on top of the newer state it led
//! to, is not a harmless duplicate: an old reading arriving after the latest one reads as a
//! change *back*, so upstream saw a room go occupied → free → occupied for nothing (found by
//! the randomized fault harness).
//!
//! So each message awaiting its acknowledgement is remembered by a fingerprint of its topic
//! and payload, with the connection it came on — and, once acknowledged, the last thousand or
//! so still are: an acknowledgement queued when the connection broke never reached the broker.
//! A redelivery carries the DUP flag (MQTT 3.1.1 §3.3.1.1); a message with it and the same
//! fingerprint on a later connection is the redelivery: once the original is durable, it is
//! acknowledged without being applied again (at once if the original already is; otherwise
//! when the original's turn comes). A message without DUP is the broker's first delivery of it,
//! so it is new whatever it repeats: a device's birth `online` again after a reconnect is news
//! (found by the randomized fault harness). Only a few connections' worth are kept.
//!
//! A crash (`kill -9`, a power cut) between a batch's sync and its acknowledgements reaching
//! the broker leaves the same situation across a restart, so the outbox keeps the fingerprints
//! of the messages of its last batches (at least the last thousand messages, far more than a
//! broker's in-flight window) with the batches themselves (durable together). After
//! a start, the broker's redeliveries come first: those that match are acknowledged without
//! being applied (only copies with DUP: a retained birth without it may come among them).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// Entries kept at most; past this, those of earlier connections are forgotten.
const MAX_ENTRIES: usize = 16 * 1024;
/// Messages acknowledged on their own connection that are remembered (more than the broker's
/// in-flight window: mosquitto's default is 20, edgehook's README asks for 100).
const KEPT_ACKED: usize = 1024;

/// What a message is, on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Apply it, and acknowledge it once it is durable.
    New,
    /// A redelivery of a message already applied: do not apply it. `ack_now`: the original
    /// is durable, acknowledge this copy now; otherwise its acknowledgement goes out with the
    /// original's ([`Redeliveries::durable`]).
    Redelivered { ack_now: bool },
}

#[derive(Debug)]
struct Entry {
    /// The connection (generation) the original came on.
    received_on: u64,
    durable: bool,
    /// Copies redelivered before the original was durable: (packet id, connection).
    copies: Vec<(u16, u64)>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Redeliveries {
    entries: Mutex<HashMap<u64, Entry>>,
    /// Messages acknowledged on their own connection, newest last: kept a while, since an
    /// acknowledgement still queued when that connection broke never reaches the broker.
    acked: Mutex<std::collections::VecDeque<(u64, u64)>>,
    /// Applied before this start; consulted until the first message not in it.
    before_restart: Mutex<Option<std::collections::HashSet<u64>>>,
}

impl Redeliveries {
    pub fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        topic.hash(&mut h);
        payload.hash(&mut h);
        h.finish()
    }

    /// Messages applied (and durable) before this start, by fingerprint.
    pub fn applied_before_restart(&self, applied: Vec<u64>) {
        let set = (!applied.is_empty()).then(|| applied.into_iter().collect());
        *self
            .before_restart
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = set;
    }

    /// A QoS 1 message with fingerprint `fp` and packet id `pkid` arrived on connection `now`,
    /// with the DUP flag (`dup`) or without.
    pub fn arrived(&self, fp: u64, pkid: u16, now: u64, dup: bool) -> Arrival {
        {
            let mut before = self
                .before_restart
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(set) = before.as_mut() {
                // Only a copy with DUP can be one (a retained birth delivered on resubscribe,
                // without DUP, may come among them, so it ends nothing).
                if dup && set.remove(&fp) {
                    return Arrival::Redelivered { ack_now: true };
                }
                if set.is_empty() {
                    *before = None;
                }
            }
        }
        let mut entries = self.lock();
        match entries.get_mut(&fp) {
            Some(e) if dup && e.received_on < now && e.durable => {
                entries.remove(&fp);
                Arrival::Redelivered { ack_now: true }
            }
            Some(e) if dup && e.received_on < now => {
                e.copies.push((pkid, now));
                Arrival::Redelivered { ack_now: false }
            }
            // A first delivery repeating one still awaiting its copies: new, and not
            // remembered (its acknowledgement goes out as usual).
            Some(e) if e.received_on < now && !(e.durable && e.copies.is_empty()) => Arrival::New,
            _ => {
                if entries.len() >= MAX_ENTRIES {
                    entries.retain(|_, e| e.received_on >= now);
                }
                entries.insert(
                    fp,
                    Entry {
                        received_on: now,
                        durable: false,
                        copies: Vec::new(),
                    },
                );
                Arrival::New
            }
        }
    }

    /// The message `fp` that arrived on connection `received_on` is durable, and the connection
    /// now is `now`. Returns whether its own acknowledgement may go out (it is still the same
    /// connection), and the packet ids of redelivered copies to acknowledge instead.
    pub fn durable(&self, fp: u64, received_on: u64, now: u64) -> (bool, Vec<u16>) {
        let mut entries = self.lock();
        let Some(e) = entries
            .get_mut(&fp)
            .filter(|e| e.received_on == received_on)
        else {
            return (received_on == now, Vec::new());
        };
        if received_on == now {
            // Kept, durable, in case the acknowledgement dies in the connection's buffers.
            e.durable = true;
            let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
            acked.push_back((fp, received_on));
            if acked.len() > KEPT_ACKED {
                if let Some((old, on)) = acked.pop_front() {
                    if entries
                        .get(&old)
                        .is_some_and(|e| e.received_on == on && e.durable)
                    {
                        entries.remove(&old);
                    }
                }
            }
            return (true, Vec::new());
        }
        let copies: Vec<u16> = e
            .copies
            .drain(..)
            .filter(|(_, on)| *on == now)
            .map(|(pkid, _)| pkid)
            .collect();
        if copies.is_empty() {
            e.durable = true; // its redelivery may still come
        } else {
            entries.remove(&fp);
        }
        (false, copies)
    }

    /// A new connection is up, and the one before it was `previous` (0: this is the first):
    /// what came before that can be redelivered no more (the broker redelivers on the next
    /// connection only). Nor can what was applied before this start, once the first
    /// connection has ended: on a connection, only the broker's redeliveries at its start
    /// carry DUP, so a copy with DUP later names a message this run received and may not have
    /// applied (kept, the set could take such a copy of an `online` for one applied before the
    /// restart, and skip it).
    pub fn forget_before(&self, previous: u64) {
        if previous != 0 {
            *self
                .before_restart
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
        }
        self.lock().retain(|_, e| e.received_on >= previous);
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, on)| *on >= previous);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broker restarts: A was durable before it came back, B only after its copy arrived,
    /// C was never applied before (it is new), and a fresh message is applied as usual.
    #[test]
    fn redeliveries_are_acknowledged_once_the_original_is_durable_and_never_applied_again() {
        let r = Redeliveries::default();
        let [a, b, c] = [1u64, 2, 3];
        assert_eq!(r.arrived(a, 10, 1, false), Arrival::New);
        assert_eq!(r.arrived(b, 11, 1, false), Arrival::New);
        // connection 1 lost; A becomes durable meanwhile: its own ack must not go out
        assert_eq!(r.durable(a, 1, 2), (false, vec![]));
        r.forget_before(1);
        assert_eq!(
            r.arrived(a, 20, 3, true),
            Arrival::Redelivered { ack_now: true }
        );
        assert_eq!(
            r.arrived(b, 21, 3, true),
            Arrival::Redelivered { ack_now: false }
        );
        assert_eq!(r.arrived(c, 22, 3, true), Arrival::New);
        // B's original becomes durable: the copy's packet id is acknowledged instead
        assert_eq!(r.durable(b, 1, 3), (false, vec![21]));
        assert_eq!(r.durable(c, 3, 3), (true, vec![]));
        // C was acknowledged on its own connection, but that ack may die with it: a copy on
        // the next connection is recognised too
        r.forget_before(3);
        assert_eq!(
            r.arrived(c, 40, 4, true),
            Arrival::Redelivered { ack_now: true }
        );
        // on its own connection, the same payload again is a new message
        assert_eq!(r.arrived(a, 30, 4, false), Arrival::New);
        assert_eq!(r.durable(a, 4, 4), (true, vec![]));
        assert_eq!(r.arrived(a, 31, 4, false), Arrival::New);
    }

    /// Found by the randomized fault harness: `kill -9` after a batch was synced but before its
    /// acknowledgements reached the broker; after the restart its messages came again and the
    /// older readings among them read as changes back.
    #[test]
    fn after_a_restart_the_first_redeliveries_of_applied_messages_are_recognised() {
        let r = Redeliveries::default();
        r.applied_before_restart(vec![7, 8]);
        assert_eq!(
            r.arrived(8, 1, 1, true),
            Arrival::Redelivered { ack_now: true }
        );
        // a redelivery of a message never applied does not end the check
        assert_eq!(r.arrived(9, 2, 1, true), Arrival::New);
        assert_eq!(
            r.arrived(7, 3, 1, true),
            Arrival::Redelivered { ack_now: true }
        );
        r.applied_before_restart(vec![7]);
        // a first delivery (a retained birth on resubscribe) is new and ends nothing
        assert_eq!(r.arrived(7, 4, 1, false), Arrival::New);
        assert_eq!(
            r.arrived(7, 5, 1, true),
            Arrival::Redelivered { ack_now: true }
        );
        // the first connection's redeliveries are the only ones it can recognise
        r.applied_before_restart(vec![6]);
        r.forget_before(0); // connection 1 is up: the first
        r.forget_before(1); // 1 lost, 2 is up
        assert_eq!(r.arrived(6, 6, 2, true), Arrival::New);
    }

    /// Found by the randomized fault harness: a device announcing itself `online` again after
    /// a broker restart (the same topic and payload as its first birth, which was acknowledged
    /// a connection earlier) was taken for a redelivery and skipped, so the device stayed
    /// offline upstream. Without DUP it is the broker's first delivery: new.
    #[test]
    fn a_first_delivery_is_new_even_when_it_repeats_an_acknowledged_message() {
        let r = Redeliveries::default();
        let birth = 1u64;
        assert_eq!(r.arrived(birth, 10, 1, false), Arrival::New);
        assert_eq!(r.durable(birth, 1, 1), (true, vec![]));
        r.forget_before(1); // connection 1 lost, 2 is up
        assert_eq!(r.arrived(birth, 20, 2, false), Arrival::New);
        assert_eq!(r.durable(birth, 2, 2), (true, vec![]));
        // and once more, its acknowledgement lost with connection 2: the copy is recognised
        r.forget_before(2);
        assert_eq!(
            r.arrived(birth, 30, 3, true),
            Arrival::Redelivered { ack_now: true }
        );
    }

    #[test]
    fn old_connections_are_forgotten() {
        let r = Redeliveries::default();
        r.arrived(1, 1, 1, false);
        r.forget_before(1); // connection 1 lost, a reconnect failed (2), 3 is up
        assert_eq!(r.lock().len(), 1);
        r.forget_before(3); // 3 lost too, 4 is up
        assert!(r.lock().is_empty());
    }
}
