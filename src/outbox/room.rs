//! Room made under `on_full = "drop_oldest_readings"`: superseded readings first.

use super::*;

impl Outbox {
    /// Delete `sensor.reading.updated` records of `queue` until `bytes` are freed (or a bounded
    /// scan of the oldest finds no more): first those a newer reading of the same device
    /// supersedes, oldest first, then the oldest. Returns how many were deleted, counted for
    /// the endpoint ([`DROPPED`]). Health and workspace events are never deleted. Not flushed:
    /// a crash brings them back, no harm.
    pub fn drop_oldest_readings(&self, queue: QueueId, bytes: u64) -> Result<usize, OutboxError> {
        const SCAN: usize = 10_000;
        let reading = crate::event::EventType::SensorReadingUpdated
            .as_str()
            .as_bytes();
        self.with(|s| {
            self.settle(s, queue)?;
            let (mut dropped, mut freed) = (0, 0u64);
            let tree = &s.queues[queue.0];
            // The readings among the oldest records: (key, size, lane), oldest first.
            let mut readings = Vec::new();
            for kv in tree.iter().take(SCAN) {
                let (k, v) = kv?;
                if record_kind(&v) == Some(reading) {
                    readings.push((
                        k,
                        record_size(&v),
                        record_lane(&v).unwrap_or_default().to_vec(),
                    ));
                }
            }
            // A reading a newer one of the same device supersedes goes first, so upstream
            // still ends knowing each device's latest values; then the oldest.
            let mut newest = std::collections::HashMap::new();
            for (i, (_, _, lane)) in readings.iter().enumerate() {
                newest.insert(lane.as_slice(), i);
            }
            let superseded = |i: usize| newest.get(readings[i].2.as_slice()) != Some(&i);
            let order = (0..readings.len())
                .filter(|&i| superseded(i))
                .chain((0..readings.len()).filter(|&i| !superseded(i)));
            for i in order {
                if freed >= bytes {
                    break;
                }
                let (k, len, _) = &readings[i];
                if tree.remove(k)?.is_some() {
                    s.hot().log(&tree_of(tree), k, None);
                    self.dropped_any.store(true, Ordering::Relaxed);
                    self.forget(queue, *len);
                    dropped += 1;
                    freed += *len as u64;
                }
            }
            if dropped > 0 {
                // What the endpoint will never get is counted with it, in the same log as the
                // removals (so a crash keeps both or neither).
                let q = self.q(queue);
                let total = q.dropped.fetch_add(dropped as u64, Ordering::Relaxed) + dropped as u64;
                let (key, total) = (
                    meta_key(&q.endpoint, DROPPED),
                    serde_json::to_vec(&total).expect("a number"),
                );
                s.meta.insert(key.as_bytes(), total.as_slice())?;
                s.hot().log("meta", key.as_bytes(), Some(&total));
            }
            Ok(dropped)
        })
    }
}
