//! Seen-times checkpointed lazily: commits whose only change is devices' `last_seen` (a
//! heartbeat, an unchanged reading) are held by the writer instead of written, and go to the
//! store with the next batch that is written anyway, or alone once the oldest has waited
//! [`CHECKPOINT_EVERY`]. So devices that keep talking without news cost the card at most one
//! write a minute, whatever their number. Losing the held states in a crash is harmless: after
//! a restart a stale `last_seen` never reports a device lost early (see
//! `device::SEEN_RESOLUTION`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::device::{Commit, DeviceState};

/// How long a held seen-time waits at most for a batch to go with.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// The held states, latest per device, and since when the oldest waits.
#[derive(Default)]
pub(super) struct Seen {
    held: HashMap<String, DeviceState>,
    since: Option<Instant>,
}

impl Seen {
    /// Whether `batch` changes nothing but devices' `last_seen`: nothing to sync, no events,
    /// no other state, nothing to send.
    pub(super) fn only_seen_times(batch: &[Commit]) -> bool {
        batch.iter().all(|c| {
            !c.sync
                && c.envelopes.is_empty()
                && c.changes.workspaces.is_empty()
                && c.changes.groups.is_empty()
                && c.changes.forgotten.is_empty()
                && c.changes.actions.is_empty()
                && c.changes.forgotten_actions.is_empty()
                && c.changes.bookings.is_empty()
                && c.outgoing.is_empty()
        })
    }

    /// Take the device states of `batch` (see [`Seen::only_seen_times`]), replacing those held
    /// for the same devices.
    pub(super) fn hold(&mut self, batch: &mut [Commit], now: Instant) {
        self.held
            .extend(batch.iter_mut().flat_map(|c| c.changes.devices.drain(..)));
        if !self.held.is_empty() {
            self.since.get_or_insert(now);
        }
    }

    /// When the held states must be written, if any are held.
    pub(super) fn due(&self) -> Option<Instant> {
        self.since.map(|since| since + CHECKPOINT_EVERY)
    }

    /// The held states as the first commit of `batch`, which is about to be written, leaving
    /// out the devices whose states the batch writes or forgets (its own are newer).
    pub(super) fn join(&mut self, batch: &mut Vec<Commit>) {
        self.since = None;
        if self.held.is_empty() {
            return;
        }
        let newer: HashSet<&str> = batch
            .iter()
            .flat_map(|c| {
                c.changes
                    .devices
                    .iter()
                    .map(|(id, _)| id)
                    .chain(&c.changes.forgotten)
            })
            .map(String::as_str)
            .collect();
        let devices: Vec<_> = std::mem::take(&mut self.held)
            .into_iter()
            .filter(|(id, _)| !newer.contains(id.as_str()))
            .collect();
        if !devices.is_empty() {
            batch.insert(
                0,
                Commit {
                    changes: crate::device::Changes {
                        devices,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            );
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A commit moving `id`'s `last_seen` to `at`, and nothing else.
    pub(in crate::outbox) fn seen(id: &str, at: u64) -> Commit {
        Commit {
            changes: crate::device::Changes {
                devices: vec![(
                    id.into(),
                    DeviceState {
                        last_seen: at,
                        ..Default::default()
                    },
                )],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn held(batch: &[Commit]) -> Vec<(String, u64)> {
        batch
            .iter()
            .flat_map(|c| &c.changes.devices)
            .map(|(id, s)| (id.clone(), s.last_seen))
            .collect()
    }

    #[test]
    fn what_counts_as_seen_times_alone() {
        let synced = Commit {
            sync: true,
            ..seen("a", 1)
        };
        let forgets = Commit {
            changes: crate::device::Changes {
                forgotten: vec!["b".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let table: [(Vec<Commit>, bool); 5] = [
            (vec![seen("a", 1)], true),
            (vec![seen("a", 1), Commit::default()], true),
            (vec![seen("a", 1), synced], false),
            (vec![forgets], false),
            (
                vec![Commit {
                    changes: crate::device::Changes {
                        workspaces: vec![("w".into(), Default::default())],
                        ..Default::default()
                    },
                    ..Default::default()
                }],
                false,
            ),
        ];
        for (batch, alone) in table {
            assert_eq!(Seen::only_seen_times(&batch), alone, "{batch:?}");
        }
    }

    #[test]
    fn the_latest_per_device_goes_first_in_the_next_batch_unless_the_batch_has_newer() {
        let t0 = Instant::now();
        let mut s = Seen::default();
        assert_eq!(s.due(), None);
        s.hold(&mut [seen("a", 1), seen("b", 1)], t0);
        s.hold(
            &mut [seen("a", 2), seen("c", 2)],
            t0 + Duration::from_secs(30),
        );
        assert_eq!(s.due(), Some(t0 + CHECKPOINT_EVERY), "from the oldest held");

        let mut batch = vec![
            seen("c", 3),
            Commit {
                changes: crate::device::Changes {
                    forgotten: vec!["b".into()],
                    ..Default::default()
                },
                ..Default::default()
            },
        ];
        s.join(&mut batch);
        assert_eq!(
            held(&batch),
            [("a".into(), 2), ("c".into(), 3)],
            "a's latest first; b forgotten and c newer in the batch are not written over"
        );
        assert_eq!(s.due(), None);
        let mut next = vec![seen("d", 4)];
        s.join(&mut next);
        assert_eq!(next.len(), 1, "nothing held any more");
    }
}
