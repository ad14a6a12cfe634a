//! Reads for delivery (pending records after a position, a lane's records), and removal
//! once delivered; records set aside when their body cannot be read.

use super::*;

impl Outbox {
    /// Tests only: record `seq` of `queue` as stored (sled's copy), to be put back later.
    #[cfg(test)]
    pub(crate) fn stored(&self, queue: QueueId, seq: u64) -> Option<IVec> {
        self.with(|s| Ok(s.queues[queue.0].get(seq.to_be_bytes())?))
            .unwrap()
    }

    /// Tests only: the bytes record `seq` of `queue` counts for (its body in a segment or not).
    #[cfg(test)]
    pub(crate) fn stored_size(&self, queue: QueueId, seq: u64) -> Option<u64> {
        self.stored(queue, seq).map(|v| record_size(&v) as u64)
    }

    /// Tests only: put `value` back as record `seq` of `queue`, as a recovery does with a
    /// removal that was not yet durable (the write-ahead log still has the record).
    #[cfg(test)]
    pub(crate) fn put_back(&self, queue: QueueId, seq: u64, value: IVec) {
        self.with(|s| Ok(s.queues[queue.0].insert(seq.to_be_bytes(), value)?))
            .unwrap();
    }

    /// Visit the records of `queue` from `from` up to (not including) `to` in order, those in
    /// sled and those held since the last checkpoint, until `f` says stop.
    pub(super) fn scan(
        &self,
        s: &Store,
        queue: QueueId,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, &IVec) -> Result<bool, OutboxError>,
    ) -> Result<(), OutboxError> {
        if from >= to {
            return Ok(());
        }
        let mut hot = s.hot();
        let mut held = hot.queue(queue.0).range(from..to).peekable();
        let mut cold = s.queues[queue.0]
            .range(from.to_be_bytes()..to.to_be_bytes())
            .peekable();
        loop {
            let cold_seq = match cold.peek() {
                Some(Ok((k, _))) => Some(seq_of(k)?),
                Some(Err(_)) => {
                    return Err(cold.next().and_then(|r| r.err()).expect("an error").into())
                }
                None => None,
            };
            let held_seq = held.peek().map(|(k, _)| **k);
            let (seq, value) = match (held_seq, cold_seq) {
                (None, None) => return Ok(()),
                (Some(h), c) if c.is_none_or(|c| h <= c) => {
                    if c == Some(h) {
                        cold.next(); // moved by a checkpoint while being read: once
                    }
                    let (k, v) = held.next().expect("peeked");
                    (*k, v.clone())
                }
                _ => {
                    let (_, v) = cold.next().expect("peeked")?;
                    (cold_seq.expect("peeked"), v)
                }
            };
            if !f(seq, &value)? {
                return Ok(());
            }
        }
    }

    /// Up to `limit` durable records of `queue` with a sequence number above `after`, in order.
    pub fn pending_after(
        &self,
        queue: QueueId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, OutboxError> {
        let durable = self.durable.load(Ordering::SeqCst);
        let from = after.map_or(0, |seq| seq + 1);
        if from >= durable {
            return Ok(Vec::new());
        }
        let mut damaged = Vec::new();
        let got = self.with(|s| {
            let mut got = Vec::new();
            self.scan(s, queue, from, durable, |seq, v| {
                if got.len() >= limit {
                    return Ok(false);
                }
                got.extend(load_or_note(s, seq, v, &mut damaged)?);
                Ok(true)
            })?;
            Ok(got)
        })?;
        self.set_aside(queue, damaged)?;
        Ok(got)
    }

    /// Up to `limit` durable records of `queue` on `lane`, in order, from `from` through
    /// `through`, and where the lane's records left in that range start (`None`: none left).
    /// Reads at most a few thousand records of other lanes per call; when it stops there, the
    /// second value is where to read on from.
    pub fn lane_records(
        &self,
        queue: QueueId,
        lane: &str,
        from: u64,
        through: u64,
        limit: usize,
    ) -> Result<(Vec<OutboxRecord>, Option<u64>), OutboxError> {
        const SCAN: usize = 4096;
        let durable = self.durable.load(Ordering::SeqCst);
        let Some(end) = durable.checked_sub(1).map(|d| d.min(through)) else {
            return Ok((Vec::new(), None));
        };
        if from > end {
            return Ok((Vec::new(), None));
        }
        let mut damaged = Vec::new();
        let read = self.with(|s| {
            let (mut got, mut scanned, mut next) = (Vec::new(), 0, None);
            self.scan(s, queue, from, end + 1, |seq, v| {
                if scanned >= SCAN {
                    next = Some(seq);
                    return Ok(false);
                }
                scanned += 1;
                if record_lane(v) != Some(lane.as_bytes()) {
                    return Ok(true);
                }
                if got.len() >= limit {
                    next = Some(seq);
                    return Ok(false);
                }
                got.extend(load_or_note(s, seq, v, &mut damaged)?);
                Ok(true)
            })?;
            Ok((got, next))
        })?;
        self.set_aside(queue, damaged)?;
        Ok(read)
    }

    /// Move the records a read found damaged to the dead letters, as [`DAMAGED`] with why,
    /// so that they are never sent and the reads after them go on (rule 4 of `bodies`).
    pub(super) fn set_aside(
        &self,
        queue: QueueId,
        damaged: Vec<(u64, &'static str)>,
    ) -> Result<(), OutboxError> {
        for (seq, why) in damaged {
            let info = DeadInfo {
                attempts: 0,
                last_status: None,
                last_error: format!("damaged on disk: {why}"),
                dead_at: crate::clock::system_now(),
                reason: DAMAGED.into(),
            };
            if self.bury(queue, seq, &info)? {
                tracing::error!(endpoint = %self.q(queue).endpoint, seq, why, "an event in the outbox is damaged on disk: kept as a dead letter, not sent (edgehook outbox list --dead)");
            }
        }
        Ok(())
    }

    /// Whether `seq`, loaded for delivery, was dropped from `queue` to make room since. Only
    /// [`Outbox::drop_oldest_readings`] takes a record out early, so until it has run this is
    /// false without a lookup. False when that cannot be read: the caller then goes ahead, and
    /// at worst delivers a dropped reading.
    pub fn was_dropped(&self, queue: QueueId, seq: u64) -> bool {
        self.dropped_any.load(Ordering::Relaxed)
            && self
                .with(|s| {
                    let held = s.hot().queue(queue.0).contains_key(&seq);
                    Ok(!held && !s.queues[queue.0].contains_key(seq.to_be_bytes())?)
                })
                .unwrap_or(false)
    }

    /// Forget a delivered record. True if it was there.
    pub fn remove(&self, queue: QueueId, seq: u64) -> Result<bool, OutboxError> {
        let removed = self.with(|s| {
            let tree = &s.queues[queue.0];
            let held = s.hot().take(queue.0, seq);
            let removed = match held {
                Some(len) => Some(len),
                None => tree.remove(seq.to_be_bytes())?.map(|r| record_size(&r)),
            };
            if removed.is_some() {
                s.hot().log(&tree_of(tree), &seq.to_be_bytes(), None);
            }
            Ok(removed)
        })?;
        if let Some(len) = removed {
            self.forget(queue, len);
        }
        Ok(removed.is_some())
    }

    /// Count a record out of `queue`.
    pub(super) fn forget(&self, queue: QueueId, bytes: usize) {
        let q = self.q(queue);
        q.depth.fetch_sub(1, Ordering::Relaxed);
        q.bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    /// The oldest pending record of `queue`, if any.
    pub fn oldest(&self, queue: QueueId) -> Result<Option<OutboxRecord>, OutboxError> {
        self.with(|s| {
            let mut first = None;
            self.scan(s, queue, 0, u64::MAX, |seq, v| {
                first = load_or_note(s, seq, v, &mut Vec::new())?;
                Ok(first.is_none()) // a damaged one is passed over (set aside when read)
            })?;
            Ok(first)
        })
    }
}
