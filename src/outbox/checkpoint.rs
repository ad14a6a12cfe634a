//! The sync of the write-ahead log and the checkpoint that puts what it holds, and is still
//! needed, into sled.

use super::*;

impl Outbox {
    /// Make every batch written so far durable, and visible to delivery: one record of the
    /// write-ahead log per batch, one `fdatasync` (see invariant 1).
    pub async fn sync(&self) -> Result<(), OutboxError> {
        let written = self.written.load(Ordering::SeqCst);
        let _one = self.syncing.lock().await;
        let pending = self.with(|s| {
            let mut hot = s.hot();
            if hot.wal.is_dirty() {
                // Riding along with a batch, never a write of their own.
                let logged = std::mem::take(&mut hot.logged);
                hot.wal.append(&logged);
            }
            Ok(hot.wal.take())
        })?;
        blocking(move || pending.write()).await?;
        self.durable.fetch_max(written, Ordering::SeqCst);
        Ok(())
    }

    /// Whether a checkpoint is due (see `hot`; one `every` after the first change), and when
    /// one will be if nothing is written.
    pub fn checkpoint_due(&self, every: Duration) -> (bool, Option<tokio::time::Instant>) {
        let now = tokio::time::Instant::now();
        self.with(|s| {
            let hot = s.hot();
            Ok((hot.due(now, every), hot.due_at(every)))
        })
        .unwrap_or((false, None))
    }

    /// A checkpoint: put into sled what was written since the last one and is still there
    /// (records not yet delivered, the latest states), start the log's next generation, and
    /// make sled durable (its flush, then an `fdatasync` of its files: see [`SyncFiles`]).
    /// Everything written so far is then durable, and also whatever else was written to sled
    /// directly (facts, dead letters, removals).
    pub async fn flush(&self) -> Result<(), OutboxError> {
        let written = self.written.load(Ordering::SeqCst);
        // One at a time, and never during a sync of the log: a generation is only overwritten
        // once the checkpoint of the one before it is durable.
        let _one = self.syncing.lock().await;
        // The bodies of the records held go to a segment first, synced (rule 1 of `bodies`),
        // off the async workers and without taking the records out of `hot`: they stay
        // readable, and removable by delivery, meanwhile.
        let (held, appender) = self.with(|s| Ok((s.hot().held(), s.bodies.clone())))?;
        let (held, spilled) = if held.is_empty() {
            (held, Vec::new())
        } else {
            let bodies = appender.clone();
            let (held, appended) = tokio::task::spawn_blocking(move || {
                let mut bodies = bodies.lock().unwrap_or_else(|e| e.into_inner());
                let appended = bodies.append(
                    held.iter()
                        .filter_map(|(_, seq, r)| header_len(r).map(|h| (*seq, &r[h..]))),
                );
                (held, appended)
            })
            .await
            .map_err(|e| io_error(std::io::Error::other(e)))?;
            (held, appended.map_err(io_error)?)
        };
        // A clone of the handle for the await (a lock guard must not be held across it); the
        // writer task, which reopens, never does so while a flush it started is running.
        let (db, sync, unreferenced, bodies) = self.with(|s| {
            let mut hot = s.hot();
            // Each record still held (not delivered meanwhile) goes to sled as a pointer to
            // its body; those written since, with their bodies. Not if the store was reopened
            // meanwhile (a replay's checkpoint while the writer reopens): the records taken
            // above were the old store's, and the new one may number others the same.
            let same_store = Arc::ptr_eq(&s.bodies, &appender);
            let mut at = spilled.iter().filter(|_| same_store);
            let mut reclaim = store::Reclaim::default();
            for (q, seq, record) in &held {
                if header_len(record).is_none() {
                    continue; // not spilled: settled whole below
                }
                let Some(at) = at.next() else { break };
                if let Some(value) = pointer(record, *at) {
                    if hot.take(*q, *seq).is_some() {
                        s.queues[*q].insert(seq.to_be_bytes(), value)?;
                        reclaim.tick();
                    }
                }
            }
            for q in 0..hot.records.len() {
                settle_held(s, &mut hot, QueueId(q))?;
            }
            for (tree, states) in std::mem::take(&mut hot.states) {
                let tree = s.db.open_tree(tree)?;
                for (key, value) in states {
                    store::set(&tree, &key, value.as_deref())?;
                }
            }
            let generation = hot.wal.generation();
            s.meta
                .insert(store::WAL_THROUGH, &generation.to_be_bytes())?;
            hot.wal.rotate();
            hot.since = None;
            // What was logged of sled's direct changes is in this checkpoint (they were made
            // before now): logged later, it could undo a change made after it.
            hot.logged.clear();
            // The segments no queue points into once this checkpoint is durable (rule 2 of
            // `bodies`), and those mostly garbage, whose survivors go back into sled whole now.
            let unreferenced = collect_segments(s)?;
            Ok((s.db.clone(), s.sync.clone(), unreferenced, s.bodies.clone()))
        })?;
        db.flush_async().await?;
        drop(db);
        blocking(move || sync.sync()).await?;
        self.durable.fetch_max(written, Ordering::SeqCst);
        if !unreferenced.is_empty() {
            let deleted = blocking(move || {
                bodies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .delete(&unreferenced)
            })
            .await;
            if let Err(e) = deleted {
                tracing::warn!(error = %e, "cannot delete a segment of event bodies nothing points to (tried again at the next checkpoint)");
            }
        }
        Ok(())
    }

    /// Put the records of `queue` held since the last checkpoint into sled (not flushed: the
    /// log still has them), for what works on sled alone (dropping, burying, purging).
    pub(super) fn settle(&self, s: &Store, queue: QueueId) -> Result<(), OutboxError> {
        settle_held(s, &mut s.hot(), queue)
    }
}
