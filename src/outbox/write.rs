//! A batch of commits written: its events queued to the endpoints that take them and its
//! states, in one write-ahead log record (see the crash contract in `mod.rs`).

use super::*;

impl Outbox {
    /// Write a batch (not yet flushed), leaving out of the queues marked in `refused` (by
    /// their place in [`Outbox::queues`]) the events they would take. Returns how many events
    /// were queued (for at least one endpoint), how many no endpoint wanted, and how many each
    /// refused queue missed.
    pub fn write(&self, batch: &[Commit], refused: &[bool]) -> Result<Written, OutboxError> {
        self.with(|s| self.write_to(s, batch, refused))
    }

    pub(super) fn write_to(
        &self,
        store: &Store,
        batch: &[Commit],
        refused: &[bool],
    ) -> Result<Written, OutboxError> {
        let mut records = Vec::new();
        let mut unrouted = 0;
        // One look at the queues and routes for the whole batch. The store's read lock is
        // held, so no queue is added meanwhile: every route has its tree.
        let queues = self.all_queues();
        let routes = self.routes_now();
        let mut dropped = vec![0u64; queues.len()];
        for env in batch.iter().flat_map(|c| &c.envelopes) {
            let wanted = routes.iter().enumerate().filter_map(|(i, r)| {
                r.as_ref()
                    .filter(|r| (r.wants)(env.kind.as_str()))
                    .map(|_| i)
            });
            let mut targets = Vec::new();
            let mut any = false;
            for i in wanted {
                any = true;
                if refused.get(i).copied().unwrap_or(false) {
                    dropped[i] += 1;
                } else {
                    targets.push(i);
                }
            }
            if !any {
                unrouted += 1;
            }
            if !targets.is_empty() {
                records.push((self.next_seq(), encode(env), targets));
            }
        }
        // Per commit, in order: a device forgotten and heard from again in one batch is known.
        type Encoded<'a> = (Vec<(&'a str, Vec<u8>)>, &'a [String]);
        let devices: Vec<Encoded> = batch
            .iter()
            .map(|c| {
                (
                    encode_states(c.changes.devices.iter()),
                    c.changes.forgotten.as_slice(),
                )
            })
            .filter(|(d, f)| !d.is_empty() || !f.is_empty())
            .collect();
        let workspaces = encode_states(batch.iter().flat_map(|c| &c.changes.workspaces));
        let groups = encode_states(batch.iter().flat_map(|c| &c.changes.groups));
        let actions: Vec<(String, Vec<u8>)> = batch
            .iter()
            .flat_map(|c| &c.changes.actions)
            .map(|a| {
                (
                    a.id.clone(),
                    serde_json::to_vec(a).expect("an action serialises"),
                )
            })
            .collect();
        let forgotten_actions: Vec<&String> = batch
            .iter()
            .flat_map(|c| &c.changes.forgotten_actions)
            .collect();
        let bookings: Vec<(&String, Option<Vec<u8>>)> = batch
            .iter()
            .flat_map(|c| &c.changes.bookings)
            .map(|(id, b)| {
                let bytes = b
                    .as_ref()
                    .map(|b| serde_json::to_vec(b).expect("a booking serialises"));
                (id, bytes)
            })
            .collect();
        let written = Written {
            queued: records.len(),
            unrouted,
            dropped,
        };
        let missed = written.dropped.iter().any(|&n| n > 0);
        if records.is_empty()
            && devices.is_empty()
            && workspaces.is_empty()
            && groups.is_empty()
            && actions.is_empty()
            && forgotten_actions.is_empty()
            && bookings.is_empty()
            && !missed
        {
            return Ok(written);
        }
        // Events first, then the states they came from, in one record of the log (see
        // invariant 1); held in memory until the next checkpoint puts into sled what is left.
        let mut ops = Vec::new();
        let queue_trees: Vec<String> = store.queues.iter().map(tree_of).collect();
        let op = wal::Op::new;
        for (seq, bytes, targets) in &records {
            for &q in targets {
                ops.push(op(&queue_trees[q], &seq.to_be_bytes(), Some(bytes)));
            }
        }
        for (states, forgotten) in &devices {
            for (id, bytes) in states {
                ops.push(op("devices", id.as_bytes(), Some(bytes)));
            }
            for id in *forgotten {
                ops.push(op("devices", id.as_bytes(), None));
            }
        }
        for (id, bytes) in &workspaces {
            ops.push(op("workspaces", id.as_bytes(), Some(bytes)));
        }
        for (id, bytes) in &groups {
            ops.push(op("groups", id.as_bytes(), Some(bytes)));
        }
        for (id, bytes) in &actions {
            ops.push(op("actions", id.as_bytes(), Some(bytes)));
        }
        for id in forgotten_actions {
            ops.push(op("actions", id.as_bytes(), None));
        }
        for (id, bytes) in &bookings {
            ops.push(op("bookings", id.as_bytes(), bytes.as_deref()));
        }
        // Only a batch that is synced before its acks needs them: the acks of one that is not
        // go out at once (and an unsynced write of them would cost the disk a write a second).
        let synced = !records.is_empty() || batch.iter().any(|c| c.sync);
        let fingerprints: Vec<u8> = batch
            .iter()
            .filter_map(|c| c.ack.as_ref()?.fingerprint)
            .flat_map(u64::to_be_bytes)
            .collect();
        if synced && !fingerprints.is_empty() {
            let (n, gone) = self
                .applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(fingerprints.len() / 8);
            ops.push(op("meta", applied::key(n).as_bytes(), Some(&fingerprints)));
            for old in gone {
                ops.push(op("meta", applied::key(old).as_bytes(), None));
            }
        }
        for (queue, n) in queues.iter().zip(&written.dropped) {
            if *n > 0 {
                let total = queue.dropped.load(Ordering::Relaxed) + n;
                let key = meta_key(&queue.endpoint, DROPPED);
                let total = serde_json::to_vec(&total).expect("a number");
                ops.push(op("meta", key.as_bytes(), Some(&total)));
            }
        }
        {
            // A batch that is not synced is not logged: held until the checkpoint, it is lost
            // in a crash, which it may be (its acks never waited for it).
            let mut hot = store.hot();
            if synced {
                let logged = std::mem::take(&mut hot.logged);
                hot.wal.append(logged.iter().chain(&ops));
            }
            let queue_of = |tree: &str| queue_trees.iter().position(|t| t == tree);
            hot.hold(ops, queue_of, tokio::time::Instant::now());
        }
        for (_, bytes, targets) in &records {
            for &q in targets {
                queues[q].depth.fetch_add(1, Ordering::Relaxed);
                queues[q]
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        }
        if let Some((last, _, _)) = records.last() {
            self.written.fetch_max(*last + 1, Ordering::SeqCst);
        }
        Ok(written)
    }

    /// The next sequence number. Counted here from one past the highest on disk at open (sled's
    /// id generator is only crash-safe when sled is flushed, and sled is now flushed at a
    /// checkpoint only): a number is never used twice for records on disk, and one whose
    /// record was delivered and forgotten before a restart may be used again (nothing keeps
    /// it).
    pub(super) fn next_seq(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst)
    }

    /// About how many bytes `batch` adds to each queue (in the order of [`Outbox::queues`]).
    pub(super) fn needs(&self, batch: &[Commit]) -> Vec<u64> {
        let routes = self.routes_now();
        let mut needs = vec![0u64; self.queue_count()];
        for env in batch.iter().flat_map(|c| &c.envelopes) {
            for (i, route) in routes.iter().enumerate() {
                if route.as_ref().is_some_and(|r| (r.wants)(env.kind.as_str())) {
                    needs[i] += writer::size_of(env);
                }
            }
        }
        needs
    }
}
