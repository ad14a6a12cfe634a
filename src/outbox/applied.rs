//! Which batches' message fingerprints the outbox keeps, so that a restart recognises the
//! broker's redeliveries of messages it had already applied (`source::redelivery`).
//!
//! Each synced batch that applied transport messages writes their fingerprints (8 bytes each)
//! under its own `meta` key, `applied.<n>`, numbered in order. A message is redelivered after a
//! restart when its acknowledgement had not reached the broker: at most the broker's in-flight
//! window of messages (mosquitto's default is 20, the README asks for 100), however many
//! batches they were applied in. So the newest batches are kept while they hold fewer than
//! [`KEPT`] messages between them, and older keys are removed in the batch that makes them
//! unneeded. (Until 2026-12 the last four batches were kept, whatever they held: a stop whose
//! acknowledgements had not gone out left more messages than that, applied again at the next
//! start.)

use std::collections::VecDeque;

/// Messages whose fingerprints are kept at least (whole batches): well above any broker's
/// in-flight window.
pub(super) const KEPT: usize = 1024;

const PREFIX: &str = "applied.";

/// The batches kept, oldest first: (number, messages).
#[derive(Debug, Default)]
pub(super) struct Applied {
    kept: VecDeque<(u64, usize)>,
    messages: usize,
    next: u64,
}

impl Applied {
    /// What the store holds: each key's number and its count of fingerprints.
    pub(super) fn new(found: impl IntoIterator<Item = (u64, usize)>) -> Applied {
        let mut kept: Vec<(u64, usize)> = found.into_iter().collect();
        kept.sort_unstable();
        Applied {
            messages: kept.iter().map(|(_, m)| m).sum(),
            next: kept.last().map_or(0, |(n, _)| n + 1),
            kept: kept.into(),
        }
    }

    /// A synced batch applied `messages`: the number of its key, and those of the keys it
    /// makes unneeded (to remove with it).
    pub(super) fn add(&mut self, messages: usize) -> (u64, Vec<u64>) {
        let n = self.next;
        self.next += 1;
        self.kept.push_back((n, messages));
        self.messages += messages;
        let mut gone = Vec::new();
        while let Some(&(old, m)) = self.kept.front() {
            if self.messages - m < KEPT {
                break;
            }
            self.kept.pop_front();
            self.messages -= m;
            gone.push(old);
        }
        (n, gone)
    }
}

/// The `meta` key of batch `n`.
pub(super) fn key(n: u64) -> String {
    format!("{PREFIX}{n}")
}

/// Every batch's key in `meta`: its number and its fingerprints (8 bytes each), in order.
pub(super) fn stored(meta: &sled::Tree) -> sled::Result<Vec<(u64, sled::IVec)>> {
    let mut found = Vec::new();
    for entry in meta.scan_prefix(PREFIX.as_bytes()) {
        let (key, value) = entry?;
        if let Some(n) = number(&key) {
            found.push((n, value));
        }
    }
    Ok(found)
}

/// The number of a key made by [`key`].
fn number(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(PREFIX.as_bytes())?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_batches_are_kept_while_they_hold_fewer_than_kept_messages() {
        // (batches found at open, batches added) → (numbers kept, numbers removed on the way)
        type Case = (
            &'static str,
            Vec<(u64, usize)>,
            Vec<usize>,
            Vec<u64>,
            Vec<u64>,
        );
        let cases: Vec<Case> = vec![
            (
                "small batches are all kept",
                vec![],
                vec![1; 10],
                (0..10).collect(),
                vec![],
            ),
            (
                "a batch of KEPT alone makes every older one unneeded",
                vec![],
                vec![3, 3, KEPT],
                vec![2],
                vec![0, 1],
            ),
            (
                "one short of KEPT in the newer ones keeps the oldest",
                vec![],
                vec![5, KEPT - 1],
                vec![0, 1],
                vec![],
            ),
            (
                "an older store's four keys continue in number",
                vec![(2, 10), (0, 10), (3, 10), (1, 10)],
                vec![KEPT - 20],
                vec![2, 3, 4],
                vec![0, 1],
            ),
        ];
        for (what, found, added, kept, removed) in cases {
            let mut a = Applied::new(found);
            let mut gone = Vec::new();
            for m in added {
                gone.extend(a.add(m).1);
            }
            let numbers: Vec<u64> = a.kept.iter().map(|(n, _)| *n).collect();
            assert_eq!(numbers, kept, "{what}");
            assert_eq!(gone, removed, "{what}");
            assert_eq!(
                a.messages,
                a.kept.iter().map(|(_, m)| m).sum::<usize>(),
                "{what}"
            );
        }
    }

    #[test]
    fn keys_read_back_as_their_numbers() {
        assert_eq!(number(key(0).as_bytes()), Some(0));
        assert_eq!(number(key(u64::MAX).as_bytes()), Some(u64::MAX));
        assert_eq!(number(b"applied."), None);
        assert_eq!(number(b"applied.x"), None);
        assert_eq!(number(b"endpoint.dropped"), None);
    }
}
