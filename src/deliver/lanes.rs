//! Which records delivery holds in memory, per lane, and which lane sends next: plain state, no
//! I/O, tested as it is used.
//!
//! A *lane* is one device or one workspace: its records are sent one at a time, in outbox
//! order. Up to `max_concurrency` lanes send at once. Memory is bounded three ways, so that no
//! lane can keep the others from being loaded (one device the receiver rejects used to fill
//! the whole window and stall every other device behind it):
//! - the window: at most `window` records and `window_bytes` bytes held, all lanes together
//!   (at least one record, however large);
//! - per lane: at most [`Limits::per_lane`] records held; the lane's further records stay on
//!   disk and are read back when it has room ([`Lanes::needs_refill`]);
//! - a failing lane holds nothing: while it waits out its backoff, even its head is released
//!   and read back from disk when it is due.
//!
//! # Order
//! The loader reads the queue in order past a *cursor* and offers each record ([`Lanes::offer`]).
//! A record a lane cannot take now stays on disk: the lane remembers the first such sequence
//! number (`on_disk_from`). Every record of that lane from there up to the cursor is on disk
//! and not held, and every record it holds comes before it; a refill reads the lane's records
//! in `[on_disk_from, cursor]` in order and appends them. So each lane still sends its records
//! in outbox order, whatever was released and read back.

use std::collections::{HashMap, VecDeque};

use crate::outbox::OutboxRecord;

/// How much delivery may hold in memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Records held, all lanes together.
    pub window: usize,
    /// Bytes of records held, all lanes together (one record is always allowed).
    pub window_bytes: usize,
    /// Records one lane holds; the rest of its records wait on disk.
    pub per_lane: usize,
}

/// Free records' worth the window waits for before the loader reads on (see [`Lanes::room`]).
pub const LOW_WATER: usize = 16;

/// What [`Lanes::offer`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Held for delivery.
    Held,
    /// Left on disk for its lane to read back later; the cursor moved past it.
    LeftOnDisk,
    /// No room in the window: not taken, the cursor did not move; stop loading.
    NoRoom,
}

#[derive(Debug, Default)]
struct Lane {
    /// Records held, in outbox order; only the head is ever in flight.
    queue: VecDeque<OutboxRecord>,
    /// An attempt for the head is in flight.
    busy: bool,
    /// Failed attempts at the head.
    failures: u32,
    /// Waiting out a backoff (holds nothing meanwhile).
    backing_off: bool,
    /// The first of this lane's records that is on disk and not held (see the module docs).
    on_disk_from: Option<u64>,
    /// The head `failures` counts the failures of: if it is gone when the lane reads back
    /// (dropped to make room), the next record starts afresh.
    failed_head: Option<u64>,
}

impl Lane {
    fn idle(&self) -> bool {
        !self.busy && !self.backing_off
    }
}

/// Every lane of one endpoint; see the module docs.
#[derive(Debug)]
pub struct Lanes {
    limits: Limits,
    lanes: HashMap<String, Lane>,
    /// Lanes whose head may be sent now, oldest first (may name lanes that are gone or busy:
    /// they are skipped).
    ready: VecDeque<String>,
    /// Lanes with records on disk to read back now.
    refill: VecDeque<String>,
    held: usize,
    held_bytes: usize,
    /// The highest sequence number the loader has passed.
    cursor: Option<u64>,
}

impl Lanes {
    pub fn new(limits: Limits) -> Lanes {
        Lanes {
            limits: Limits {
                window: limits.window.max(1),
                window_bytes: limits.window_bytes,
                per_lane: limits.per_lane.max(1),
            },
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            refill: VecDeque::new(),
            held: 0,
            held_bytes: 0,
            cursor: None,
        }
    }

    /// The highest sequence number the loader has passed: it reads on from the next one.
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    /// Records held in memory, and their bytes.
    pub fn held(&self) -> (usize, usize) {
        (self.held, self.held_bytes)
    }

    /// Whether the window has room for another record.
    pub fn has_room(&self) -> bool {
        self.held == 0
            || (self.held < self.limits.window && self.held_bytes < self.limits.window_bytes)
    }

    /// Records the window has room for: by count, and by bytes at the size of the records it
    /// holds. While records are held, 0 until an eighth of the window (at most
    /// [`LOW_WATER`] records) is free: the loader then reads a chunk at a time, not a record
    /// per delivery — a read past the cursor decodes up to a chunk, and what finds no room is
    /// read again later, so a window bound by bytes used to decode dozens of records for
    /// every one it took.
    pub fn room(&self) -> usize {
        if self.held == 0 {
            return self.limits.window;
        }
        if !self.has_room() {
            return 0;
        }
        let size = self.held_bytes.div_ceil(self.held).max(1);
        let by_bytes = (self.limits.window_bytes - self.held_bytes) / size;
        let room = (self.limits.window - self.held).min(by_bytes);
        let capacity = self.limits.window.min(self.limits.window_bytes / size);
        if room < (capacity / 8).clamp(1, LOW_WATER) {
            0
        } else {
            room
        }
    }

    /// The loader read `record`, the next one past the cursor.
    pub fn offer(&mut self, record: OutboxRecord) -> Offer {
        if !self.has_room() {
            return Offer::NoRoom;
        }
        self.cursor = Some(record.seq);
        let per_lane = self.limits.per_lane;
        let lane = self.lanes.entry(record.lane.clone()).or_default();
        if lane.on_disk_from.is_some() {
            return Offer::LeftOnDisk; // behind records of its lane already left on disk
        }
        if lane.backing_off || lane.queue.len() >= per_lane {
            lane.on_disk_from = Some(record.seq);
            return Offer::LeftOnDisk;
        }
        let name = record.lane.clone();
        let was_empty = lane.queue.is_empty();
        let ready = was_empty && lane.idle();
        self.held += 1;
        self.held_bytes += record.body.len();
        lane.queue.push_back(record);
        if ready {
            self.ready.push_back(name);
        }
        Offer::Held
    }

    /// The next lane with room to read back its records from disk, with where to read from
    /// and how many to read: `(lane, from, through = cursor, limit)`.
    pub fn needs_refill(&mut self) -> Option<(String, u64, u64, usize)> {
        while let Some(name) = self.refill.pop_front() {
            let Some(lane) = self.lanes.get(&name) else {
                continue;
            };
            let (Some(from), Some(through)) = (lane.on_disk_from, self.cursor) else {
                continue;
            };
            if !lane.idle() {
                continue; // in flight or backing off: it asks again when it is idle
            }
            if !self.has_room() {
                self.refill.push_front(name);
                return None;
            }
            let room = self.limits.per_lane.saturating_sub(lane.queue.len());
            if room == 0 {
                continue;
            }
            // A lane that has failed reads back only its head: it may fail again.
            let limit = if lane.failures > 0 { 1 } else { room };
            return Some((name, from, through, limit.min(self.room().max(1))));
        }
        None
    }

    /// Reading back for `lane` failed (the store is being reopened): ask again later.
    pub fn refill_later(&mut self, name: &str) {
        if self.lanes.contains_key(name) {
            self.refill.push_back(name.to_string());
        }
    }

    /// The records read back for `lane` (in order, all within the range asked for), and where
    /// its records on disk now start (`None`: none left up to the cursor).
    pub fn refilled(&mut self, name: &str, records: Vec<OutboxRecord>, rest_from: Option<u64>) {
        let Some(lane) = self.lanes.get_mut(name) else {
            return;
        };
        let was_empty = lane.queue.is_empty();
        if let Some(first) = records.first() {
            if lane.failed_head.is_some_and(|seq| seq != first.seq) {
                lane.failures = 0;
                lane.failed_head = None;
            }
        }
        for record in records {
            self.held += 1;
            self.held_bytes += record.body.len();
            lane.queue.push_back(record);
        }
        lane.on_disk_from = rest_from;
        if was_empty && !lane.queue.is_empty() && lane.idle() {
            self.ready.push_back(name.to_string());
        } else if lane.queue.is_empty() && lane.on_disk_from.is_none() && lane.idle() {
            self.forget_if_done(name);
        } else if lane.queue.is_empty() && lane.idle() {
            // Nothing found yet in the part read; read on.
            self.refill.push_back(name.to_string());
        }
    }

    /// Take the next lane that may send now: its name and head, marked in flight. `skip`
    /// says whether a head is no longer in the outbox (dropped to make room): such heads are
    /// discarded.
    pub fn start_next(
        &mut self,
        mut skip: impl FnMut(&OutboxRecord) -> bool,
    ) -> Option<(String, OutboxRecord)> {
        while let Some(name) = self.ready.pop_front() {
            let Some(lane) = self.lanes.get_mut(&name) else {
                continue;
            };
            if !lane.idle() {
                continue;
            }
            while let Some(head) = lane.queue.front() {
                if !skip(head) {
                    break;
                }
                let gone = lane.queue.pop_front().expect("has a head");
                self.held -= 1;
                self.held_bytes -= gone.body.len();
                lane.failures = 0;
                lane.failed_head = None;
            }
            let Some(head) = lane.queue.front() else {
                self.after_empty(&name);
                continue;
            };
            lane.busy = true;
            return Some((name, head.clone()));
        }
        None
    }

    /// The in-flight head of `lane` is done with: delivered, or given up on. Returns it.
    pub fn done(&mut self, name: &str) -> Option<OutboxRecord> {
        let lane = self.lanes.get_mut(name)?;
        lane.busy = false;
        lane.failures = 0;
        lane.failed_head = None;
        let head = lane.queue.pop_front()?;
        self.held -= 1;
        self.held_bytes -= head.body.len();
        if lane.queue.is_empty() {
            self.after_empty(name);
        } else {
            self.ready.push_back(name.to_string());
        }
        Some(head)
    }

    /// The in-flight head of `lane` failed: the lane releases everything it holds (its head
    /// first of all, so it is read back first) and waits out a backoff. Returns the head and
    /// the lane's failures so far.
    pub fn failed(&mut self, name: &str) -> Option<(OutboxRecord, u32)> {
        let lane = self.lanes.get_mut(name)?;
        lane.busy = false;
        lane.failures += 1;
        lane.backing_off = true;
        let head = lane.queue.front()?.clone();
        for record in lane.queue.drain(..) {
            self.held -= 1;
            self.held_bytes -= record.body.len();
        }
        lane.on_disk_from = Some(head.seq);
        lane.failed_head = Some(head.seq);
        Some((head, lane.failures))
    }

    /// The head of `lane` that [`Lanes::failed`] released was given up on (buried, so it is no
    /// longer on disk): the lane goes on with its next record, afresh.
    pub fn given_up(&mut self, name: &str) {
        if let Some(lane) = self.lanes.get_mut(name) {
            lane.failures = 0;
            lane.failed_head = None;
            lane.backing_off = false;
            self.after_empty(name);
        }
    }

    /// `lane`'s backoff is over: read its head back.
    pub fn retry_due(&mut self, name: &str) {
        if let Some(lane) = self.lanes.get_mut(name) {
            lane.backing_off = false;
            self.refill.push_back(name.to_string());
        }
    }

    /// Lanes known (holding records, waiting, or with records on disk).
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// `lane` holds nothing any more: read on from disk, or forget it.
    fn after_empty(&mut self, name: &str) {
        match self.lanes.get(name) {
            Some(lane) if lane.on_disk_from.is_some() => self.refill.push_back(name.to_string()),
            Some(_) => self.forget_if_done(name),
            None => {}
        }
    }

    fn forget_if_done(&mut self, name: &str) {
        if self.lanes.get(name).is_some_and(|l| {
            l.queue.is_empty() && l.idle() && l.on_disk_from.is_none() && l.failures == 0
        }) {
            self.lanes.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, lane: &str) -> OutboxRecord {
        OutboxRecord {
            seq,
            id: format!("id-{seq}"),
            kind: "sensor.reading.updated".into(),
            lane: lane.into(),
            body: vec![0; 10],
        }
    }

    /// A stand-in for the queue on disk: what a refill reads.
    fn read_back(
        disk: &[OutboxRecord],
        lane: &str,
        from: u64,
        through: u64,
        limit: usize,
    ) -> (Vec<OutboxRecord>, Option<u64>) {
        let mut matching = disk
            .iter()
            .filter(|r| r.lane == lane && r.seq >= from && r.seq <= through);
        let got: Vec<OutboxRecord> = matching.by_ref().take(limit).cloned().collect();
        (got, matching.next().map(|r| r.seq))
    }

    fn limits(window: usize, per_lane: usize) -> Limits {
        Limits {
            window,
            window_bytes: 1 << 20,
            per_lane,
        }
    }

    /// Issue 16 #3: a device whose every event the receiver rejects may hold neither the window
    /// nor a place in it: the other devices' events behind it are loaded and sent.
    #[test]
    fn a_rejected_lane_never_keeps_other_lanes_from_being_loaded() {
        let mut disk: Vec<OutboxRecord> = (0..20).map(|i| rec(i, "bad")).collect();
        disk.push(rec(20, "good"));
        let mut lanes = Lanes::new(limits(16, 4));
        let mut offers = Vec::new();
        for r in &disk {
            offers.push(lanes.offer(r.clone()));
        }
        assert_eq!(
            offers.iter().filter(|o| **o == Offer::Held).count(),
            5,
            "{offers:?}"
        );
        assert!(!offers.contains(&Offer::NoRoom));
        let (name, head) = lanes.start_next(|_| false).unwrap();
        assert_eq!((name.as_str(), head.seq), ("bad", 0));
        let (name, head) = lanes.start_next(|_| false).unwrap();
        assert_eq!((name.as_str(), head.seq), ("good", 20));
        assert!(lanes.start_next(|_| false).is_none());
        // `bad` fails: it releases all it holds
        let (head, failures) = lanes.failed("bad").unwrap();
        assert_eq!((head.seq, failures), (0, 1));
        assert_eq!(lanes.held(), (1, 10));
        assert_eq!(lanes.done("good").unwrap().seq, 20);
        assert_eq!(lanes.needs_refill(), None, "bad waits out its backoff");
        // its backoff ends: only its head is read back
        lanes.retry_due("bad");
        let (name, from, through, limit) = lanes.needs_refill().unwrap();
        assert_eq!((name.as_str(), from, through, limit), ("bad", 0, 20, 1));
        let (got, rest) = read_back(&disk, &name, from, through, limit);
        lanes.refilled(&name, got, rest);
        let (_, head) = lanes.start_next(|_| false).unwrap();
        assert_eq!(head.seq, 0, "the same head, again");
    }

    /// Whatever is released and read back, each lane sends its records in outbox order, each
    /// exactly once it is done, and memory stays within the limits at every step.
    #[test]
    fn lanes_send_in_order_within_their_limits_through_failures_and_refills() {
        let names = ["a", "b", "c"];
        let mut disk: Vec<OutboxRecord> = (0..300)
            .map(|i| rec(i, names[(i as usize * 7 / 3) % 3]))
            .collect();
        let all = disk.clone();
        let mut buried = Vec::new();
        let l = limits(8, 3);
        let mut lanes = Lanes::new(l);
        let mut next = 0usize;
        let mut sent: HashMap<String, Vec<u64>> = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut in_flight: Vec<String> = Vec::new();
        for _ in 0..100_000 {
            // load
            while next < all.len() {
                if buried.contains(&all[next].seq) {
                    next += 1;
                    continue;
                }
                match lanes.offer(all[next].clone()) {
                    Offer::NoRoom => break,
                    _ => next += 1,
                }
            }
            while let Some((name, from, through, limit)) = lanes.needs_refill() {
                let (got, rest) = read_back(&disk, &name, from, through, limit);
                assert!(got.iter().all(|r| r.seq <= through));
                lanes.refilled(&name, got, rest);
            }
            assert!(lanes.held().0 <= l.window);
            while in_flight.len() < 2 {
                match lanes.start_next(|_| false) {
                    Some((name, _)) => in_flight.push(name),
                    None => break,
                }
            }
            if in_flight.is_empty() {
                // only backoffs left: they end
                for n in names {
                    lanes.retry_due(n);
                }
                if lanes.is_empty() && next == all.len() {
                    break;
                }
                continue;
            }
            let name = in_flight.remove(rng.usize(..in_flight.len()));
            if rng.f64() < 0.3 {
                let (head, _) = lanes.failed(&name).unwrap();
                if rng.f64() < 0.1 {
                    // given up on: it leaves the disk, and the lane goes on
                    disk.retain(|r| r.seq != head.seq);
                    buried.push(head.seq);
                    lanes.given_up(&name);
                } else if rng.bool() {
                    lanes.retry_due(&name);
                }
            } else {
                let head = lanes.done(&name).unwrap();
                sent.entry(name).or_default().push(head.seq);
            }
        }
        assert!(lanes.is_empty(), "{lanes:?}");
        assert!(!buried.is_empty());
        for n in names {
            let want: Vec<u64> = disk.iter().filter(|r| r.lane == n).map(|r| r.seq).collect();
            assert_eq!(
                sent[n], want,
                "lane {n}: every record not given up on, in order"
            );
        }
        assert_eq!(lanes.held(), (0, 0));
    }

    /// Issue 16 #12: the window is bounded in bytes too (a backlog of large readings used to
    /// take `window` × 64 KiB), always allowing one record however large.
    #[test]
    fn the_window_is_bounded_in_bytes_and_always_takes_one_record() {
        let mut lanes = Lanes::new(Limits {
            window: 100,
            window_bytes: 25,
            per_lane: 100,
        });
        let mut big = rec(0, "a");
        big.body = vec![0; 1000];
        assert_eq!(lanes.offer(big), Offer::Held, "one record, however large");
        assert_eq!(lanes.offer(rec(1, "a")), Offer::NoRoom);
        assert_eq!(lanes.cursor(), Some(0));
        lanes.start_next(|_| false).unwrap();
        lanes.done("a").unwrap();
        for seq in 1..=3 {
            assert_eq!(lanes.offer(rec(seq, "b")), Offer::Held);
        }
        assert_eq!(
            lanes.offer(rec(4, "b")),
            Offer::NoRoom,
            "30 bytes held, 25 allowed"
        );
        assert_eq!(lanes.held(), (3, 30));
    }

    /// The room the loader reads for, as a table: (window, window_bytes, records held of
    /// 100 bytes) -> room. By bytes at the size of the records held; nothing until an eighth
    /// of the window (at most 16 records) is free.
    #[test]
    fn room_is_counted_in_records_of_the_size_held_and_waits_for_a_chunk() {
        let cases = [
            ((4096, 1 << 20, 0), 4096),
            // By bytes: 1 MiB of 100-byte records is 10,485; 4,096 by count.
            ((4096, 1 << 20, 1), 4095),
            // 256 KiB: 2,621 records' worth; 2,000 held leave 621.
            ((4096, 256 << 10, 2000), 621),
            // 2,610 held leave 11, under 16: wait.
            ((4096, 256 << 10, 2610), 0),
            ((4096, 256 << 10, 2605), 16),
            // A small window: an eighth of it, at least one record.
            ((16, 1 << 20, 14), 2),
            ((16, 1 << 20, 15), 0),
            ((4, 1 << 20, 3), 1),
            // Bytes full: nothing.
            ((4096, 1000, 10), 0),
        ];
        for ((window, window_bytes, held), want) in cases {
            let mut lanes = Lanes::new(Limits {
                window,
                window_bytes,
                per_lane: 4096,
            });
            for seq in 0..held {
                let mut r = rec(seq as u64, &format!("l{seq}"));
                r.body = vec![0; 100];
                assert_eq!(lanes.offer(r), Offer::Held);
            }
            assert_eq!(
                lanes.room(),
                want,
                "window {window}, {window_bytes} bytes, {held} held"
            );
        }
    }

    /// Found by the randomized fault harness: a read-back that failed (a full disk, the store
    /// being reopened) left its lane waiting for ever, holding all of its device's events.
    #[test]
    fn a_failed_read_back_is_asked_again() {
        let mut lanes = Lanes::new(limits(10, 1));
        lanes.offer(rec(0, "a"));
        assert_eq!(lanes.offer(rec(1, "a")), Offer::LeftOnDisk);
        lanes.start_next(|_| false).unwrap();
        lanes.done("a").unwrap();
        let asked = lanes.needs_refill().unwrap();
        assert_eq!(lanes.needs_refill(), None);
        lanes.refill_later(&asked.0);
        assert_eq!(lanes.needs_refill(), Some(asked));
    }

    #[test]
    fn a_dropped_head_is_skipped_and_the_lane_goes_on() {
        let mut lanes = Lanes::new(limits(10, 10));
        for seq in 0..3 {
            lanes.offer(rec(seq, "a"));
        }
        let (_, head) = lanes.start_next(|r| r.seq < 2).unwrap();
        assert_eq!(head.seq, 2);
        assert_eq!(lanes.held(), (1, 10));
    }
}
