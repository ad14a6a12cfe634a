//! What was written since the last checkpoint: durable in the write-ahead log, held here in
//! memory, and put into sled only at the next checkpoint — by which time most records have
//! been delivered, so they never reach sled at all.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sled::IVec;
use tokio::time::Instant;

use super::wal::{Op, Wal};

/// A checkpoint once the records held in memory take this many bytes (a receiver that is
/// down: what it cannot take goes to sled rather than filling memory)...
pub(super) const MAX_HELD_BYTES: u64 = 1 << 20;
/// ...or once the log's generation has this many bytes (the log's size on disk, twice).
pub(super) const MAX_LOG_BYTES: u64 = 4 << 20;

pub(super) struct Hot {
    pub(super) wal: Wal,
    /// Per queue (by its place in `Outbox::queues`): records written since the last checkpoint
    /// and not yet delivered.
    pub(super) records: Vec<BTreeMap<u64, IVec>>,
    /// Bytes of `records`.
    pub(super) bytes: u64,
    /// The latest value (or removal) of each key of the other trees written since the last
    /// checkpoint, by tree name.
    pub(super) states: HashMap<String, HashMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Changes made to sled directly (removals of delivered or dropped records, dead letters)
    /// that the log's generations since the last checkpoint would undo at recovery unless
    /// logged too: written with the next synced batch (before it if made before it). Lost in
    /// a crash before that, they are deliveries made again, never a loss.
    pub(super) logged: Vec<Op>,
    /// When the oldest change waiting for a checkpoint was made.
    pub(super) since: Option<Instant>,
}

impl Hot {
    pub(super) fn new(wal: Wal) -> Hot {
        Hot {
            wal,
            records: Vec::new(),
            bytes: 0,
            states: HashMap::new(),
            logged: Vec::new(),
            since: None,
        }
    }

    /// The records of queue `q` (made on first use: a queue added while running).
    pub(super) fn queue(&mut self, q: usize) -> &mut BTreeMap<u64, IVec> {
        if self.records.len() <= q {
            self.records.resize_with(q + 1, BTreeMap::new);
        }
        &mut self.records[q]
    }

    /// Hold `ops` until the checkpoint: queue records (`queue` says which ops are whose, by
    /// tree name) apart, states by key.
    pub(super) fn hold(
        &mut self,
        ops: Vec<Op>,
        queue: impl Fn(&str) -> Option<usize>,
        now: Instant,
    ) {
        for op in ops {
            match (queue(&op.tree), op.value) {
                (Some(q), Some(value)) => {
                    let seq = u64::from_be_bytes(op.key.as_slice().try_into().unwrap_or_default());
                    self.bytes += value.len() as u64;
                    if let Some(old) = self.queue(q).insert(seq, IVec::from(value)) {
                        self.bytes -= old.len() as u64;
                    }
                }
                (Some(_), None) => {} // records are removed through `take`
                (None, value) => {
                    self.states
                        .entry(op.tree)
                        .or_default()
                        .insert(op.key, value);
                }
            }
        }
        self.since.get_or_insert(now);
    }

    /// Every record held: (queue, sequence number, record), by queue, in order.
    pub(super) fn held(&self) -> Vec<(usize, u64, IVec)> {
        self.records
            .iter()
            .enumerate()
            .flat_map(|(q, records)| records.iter().map(move |(seq, r)| (q, *seq, r.clone())))
            .collect()
    }

    /// Take record `seq` out of queue `q` if it is held here: its size.
    pub(super) fn take(&mut self, q: usize, seq: u64) -> Option<usize> {
        let value = self.records.get_mut(q)?.remove(&seq)?;
        self.bytes -= value.len() as u64;
        Some(value.len())
    }

    /// Log with the next sync that `key` of `tree` was set to `value` (or removed) directly in
    /// sled (or, for a record held here, taken out), so that recovery does not undo it.
    pub(super) fn log(&mut self, tree: &str, key: &[u8], value: Option<&[u8]>) {
        self.logged.push(Op::new(tree, key, value));
    }

    /// Whether a checkpoint is due at `now`, one falling due `every` after the first change.
    pub(super) fn due(&self, now: Instant, every: Duration) -> bool {
        self.bytes >= MAX_HELD_BYTES
            || self.wal.len() >= MAX_LOG_BYTES
            || self.since.is_some_and(|t| now >= t + every)
    }

    /// When a checkpoint falls due if nothing more is written.
    pub(super) fn due_at(&self, every: Duration) -> Option<Instant> {
        self.since.map(|t| t + every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(tree: &str, key: &[u8], value: Option<&[u8]>) -> Op {
        Op::new(tree, key, value)
    }

    fn hot() -> (tempfile::TempDir, Hot) {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 1).unwrap();
        (dir, Hot::new(wal))
    }

    fn queues(tree: &str) -> Option<usize> {
        match tree {
            "outbox" => Some(0),
            "outbox.b" => Some(1),
            _ => None,
        }
    }

    #[test]
    fn records_are_held_by_queue_and_states_by_key_the_latest_winning() {
        let (_dir, mut hot) = hot();
        let t0 = Instant::now();
        hot.hold(
            vec![
                op("outbox", &7u64.to_be_bytes(), Some(&[1; 100])),
                op("outbox.b", &7u64.to_be_bytes(), Some(&[1; 100])),
                op("devices", b"d1", Some(b"old")),
                op("devices", b"d2", Some(b"two")),
                op("devices", b"d1", Some(b"new")),
                op("devices", b"d2", None),
            ],
            queues,
            t0,
        );
        assert_eq!(hot.bytes, 200);
        assert_eq!(hot.records[1].keys().collect::<Vec<_>>(), vec![&7]);
        let devices = &hot.states["devices"];
        assert_eq!(devices[b"d1".as_slice()], Some(b"new".to_vec()));
        assert_eq!(devices[b"d2".as_slice()], None, "a removal is held too");
        assert_eq!(hot.take(0, 7), Some(100));
        assert_eq!(hot.take(0, 7), None, "taken once");
        assert_eq!(hot.take(5, 7), None, "a queue with nothing held");
        assert_eq!(hot.bytes, 100);
    }

    #[test]
    fn a_checkpoint_falls_due_an_interval_after_the_first_change_or_when_too_much_is_held() {
        // (what is held, seconds since the first change, due)
        let cases: &[(&str, u64, u64, bool)] = &[
            ("nothing", 0, 3600, false),
            ("a state, just now", 0, 0, false),
            ("a state, 59 s ago", 0, 59, false),
            ("a state, a minute ago", 0, 60, true),
            ("1 MiB of records, just now", MAX_HELD_BYTES, 0, true),
        ];
        for &(name, bytes, after, want) in cases {
            let (_dir, mut hot) = hot();
            let t0 = Instant::now();
            if name != "nothing" {
                hot.hold(vec![op("devices", b"d", Some(b"x"))], queues, t0);
            }
            hot.bytes = bytes;
            let now = t0 + Duration::from_secs(after);
            assert_eq!(hot.due(now, Duration::from_secs(60)), want, "{name}");
        }
        let (_dir, mut hot) = hot();
        hot.wal.append(&[op(
            "outbox",
            &[0; 8],
            Some(&vec![0; MAX_LOG_BYTES as usize]),
        )]);
        assert!(
            hot.due(Instant::now(), Duration::from_secs(60)),
            "a log of 4 MiB"
        );
    }
}
