//! What the dispatcher reads from its queue: the records its lanes can take, read again
//! from the start after a reopen or a failed removal.

use super::*;

impl Dispatcher {
    /// The next lane that may send and its head, marked in flight; heads no longer in the
    /// outbox (old readings dropped to make room) are skipped.
    pub(super) fn next_ready(&mut self) -> Option<(String, OutboxRecord)> {
        let (outbox, queue) = (&self.outbox, self.queue);
        self.lanes.start_next(|r| outbox.was_dropped(queue, r.seq))
    }

    /// `records` without those queued before the endpoint's `events` changed, which it no
    /// longer wants, and those at or behind what their lane has delivered (see `passed`):
    /// both are removed from its queue.
    pub(super) fn wanted(
        &self,
        records: Vec<OutboxRecord>,
    ) -> Result<Vec<OutboxRecord>, crate::outbox::OutboxError> {
        let mut keep = Vec::with_capacity(records.len());
        for record in records {
            if self
                .reading
                .passed
                .get(&record.lane)
                .is_some_and(|&seq| record.seq <= seq)
            {
                tracing::debug!(lane = %record.lane, event_id = %record.id, "a record behind what its lane delivered (its removal lost, or a dropped reading brought back): removed, not sent");
                self.outbox.remove(self.queue, record.seq)?;
            } else if self.endpoint.wants(&record.kind) {
                keep.push(record);
            } else {
                self.metrics.filtered();
                self.outbox.remove(self.queue, record.seq)?;
            }
        }
        Ok(keep)
    }

    /// Fill the window from the outbox: first the lanes' records read back from disk (they
    /// are older), then new records past the cursor. Each call reads a bounded amount; when it
    /// stops with more to do, `load_again` says so.
    pub(super) fn load(&mut self) -> Result<(), crate::outbox::OutboxError> {
        self.reading.load_again = false;
        for _ in 0..REFILLS_PER_LOAD {
            let Some((lane, from, through, limit)) = self.lanes.needs_refill() else {
                break;
            };
            let read = self
                .outbox
                .lane_records(self.queue, &lane, from, through, limit)
                .and_then(|(records, rest)| Ok((self.wanted(records)?, rest)));
            match read {
                Ok((records, rest)) => self.lanes.refilled(&lane, records, rest),
                Err(e) => {
                    // Read it back once the store works again (it is being reopened).
                    self.lanes.refill_later(&lane);
                    return Err(e);
                }
            }
            self.reading.load_again = true;
        }
        let mut budget = SCAN_PER_LOAD;
        while self.reading.more_on_disk && self.lanes.has_room() {
            if budget == 0 {
                self.reading.load_again = true;
                break;
            }
            // In small reads: most of a backlog of one busy device is left on disk, and a
            // large read would bring it all into memory at once on its way past.
            let want = self.lanes.room().min(budget).min(READ_CHUNK);
            if want == 0 {
                break; // a chunk's room is made as deliveries finish
            }
            let records = self
                .outbox
                .pending_after(self.queue, self.lanes.cursor(), want)?;
            budget -= records.len().min(budget);
            self.reading.more_on_disk = records.len() == want;
            for record in self.wanted(records)? {
                if self.lanes.offer(record) == Offer::NoRoom {
                    self.reading.more_on_disk = true;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Forget what is held and read the queue again from the start (after the store was
    /// reopened, or a removal failed): every record on disk is sent, none skipped. Backoffs
    /// start afresh; a record delivered but not removed is sent again (a duplicate, never a
    /// loss).
    pub(super) fn rescan(&mut self) {
        let reopens = self.outbox.reopens();
        tracing::info!(endpoint = %self.name, reopened = reopens != self.reading.reopens_seen, "reading the endpoint's queue again from the start (the outbox was reopened or a removal failed)");
        self.reading.reopens_seen = reopens;
        self.reading.out_of_step = None;
        self.lanes = Lanes::new(self.limits);
        self.flight.backoff = DelayQueue::new();
        self.batching.solo.clear();
        self.batching.gathering.clear();
        self.batching.gathering_since = None;
        self.reading.more_on_disk = true;
    }

    /// A removal or burial failed: read the queue again from the start once the store is
    /// reopened, or a second from now (see `out_of_step`).
    pub(super) fn out_of_step_now(&mut self) {
        self.reading
            .out_of_step
            .get_or_insert_with(|| tokio::time::Instant::now() + READ_RETRY);
    }
}
