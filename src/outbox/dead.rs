//! Dead letters: events delivery gave up on, kept with why, listed, revived and purged.
//!
//! Bounded: the letters take at most `outbox.max_dead_size` bytes ([`Outbox::set_dead_budget`]);
//! burying past it lets the oldest letters go (counted, logged by the caller), so a template
//! failing on every event, or a receiver refusing everything with `max_attempts` set, cannot
//! fill the card. Counting and listing read them one at a time: no answer holds them all.

use std::sync::atomic::Ordering;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::format::*;
use super::store::storage_error;
use super::{Outbox, OutboxError, QueueId};

impl Outbox {
    /// Give up on `seq` in `queue`: move it to `dead` with `info`, in one transaction. False if
    /// it was not pending (already delivered or buried).
    pub fn bury(&self, queue: QueueId, seq: u64, info: &DeadInfo) -> Result<bool, OutboxError> {
        let info_json = serde_json::to_vec(info).expect("plain data serialises");
        let key = seq.to_be_bytes();
        let dead_key = dead_key(seq, &self.q(queue).endpoint);
        let moved = self.with(|s| {
            self.settle(s, queue)?;
            // A dead letter holds its record whole: a body in a segment is read back first,
            // under the checkpoints' lock (one may empty the segment and delete it). A body
            // that cannot be read back (damaged) leaves the pointer, header and all.
            let record = {
                let _checkpoint = s.hot();
                match s.queues[queue.0].get(key)? {
                    Some(record) => match s.whole(seq, record.clone()) {
                        Err(OutboxError::Corrupt { .. }) => record,
                        whole => whole?,
                    },
                    None => return Ok(None),
                }
            };
            let moved = (&s.queues[queue.0], &s.dead)
                .transaction(|(ev, dead)| {
                    if ev.remove(&key)?.is_none() {
                        return Ok(None);
                    }
                    let mut value = Vec::with_capacity(5 + info_json.len() + record.len());
                    value.push(RECORD_VERSION);
                    value.extend_from_slice(&(info_json.len() as u32).to_be_bytes());
                    value.extend_from_slice(&info_json);
                    value.extend_from_slice(&record);
                    dead.insert(dead_key.as_slice(), value.as_slice())?;
                    Ok::<_, ConflictableTransactionError<()>>(Some((record_size(&record), value)))
                })
                .map_err(storage_error)?;
            if let Some(dead) = &moved {
                // Logged, so that recovery neither brings the record back nor loses the letter.
                let mut hot = s.hot();
                hot.log(&super::tree_of(&s.queues[queue.0]), &key, None);
                hot.log("dead", &dead_key, Some(&dead.1));
            }
            Ok(moved.map(|(bytes, value)| (bytes, value.len())))
        })?;
        if let Some((bytes, letter)) = moved {
            self.forget(queue, bytes);
            self.dead_depth.fetch_add(1, Ordering::Relaxed);
            self.dead_bytes
                .fetch_add((dead_key.len() + letter) as u64, Ordering::Relaxed);
            self.trim_dead(&dead_key)?;
        }
        Ok(moved.is_some())
    }

    /// At most `bytes` of dead letters are kept from now on (the oldest go past it).
    pub fn set_dead_budget(&self, bytes: u64) {
        self.dead_budget.store(bytes, Ordering::Relaxed);
    }

    /// Dead letters let go to keep within the budget, since the outbox opened.
    pub fn dead_trimmed(&self) -> u64 {
        self.dead_trimmed.load(Ordering::Relaxed)
    }

    /// Let the oldest letters go (never `keep`, the one just buried) until the letters are
    /// within the budget. How many went.
    fn trim_dead(&self, keep: &[u8]) -> Result<u64, OutboxError> {
        let budget = self.dead_budget.load(Ordering::Relaxed);
        if self.dead_bytes.load(Ordering::Relaxed) <= budget {
            return Ok(0);
        }
        let trimmed = self.with(|s| {
            let mut n = 0;
            for kv in s.dead.iter() {
                if self.dead_bytes.load(Ordering::Relaxed) <= budget {
                    break;
                }
                let (k, v) = kv?;
                if k.as_ref() == keep {
                    continue;
                }
                if s.dead.remove(&k)?.is_some() {
                    s.hot().log("dead", &k, None);
                    self.dead_depth.fetch_sub(1, Ordering::Relaxed);
                    self.dead_bytes
                        .fetch_sub((k.len() + v.len()) as u64, Ordering::Relaxed);
                    n += 1;
                }
            }
            Ok(n)
        })?;
        self.dead_trimmed.fetch_add(trimmed, Ordering::Relaxed);
        if trimmed > 0 {
            tracing::warn!(
                let_go = trimmed,
                max_dead_size = budget,
                "dead letters past outbox.max_dead_size: the oldest were deleted"
            );
        }
        Ok(trimmed)
    }

    /// Each endpoint's dead letters, counted from their keys (no letter is decoded).
    pub fn dead_counts(&self) -> Result<std::collections::HashMap<String, usize>, OutboxError> {
        self.with(|s| {
            let mut counts = std::collections::HashMap::new();
            for k in s.dead.iter().keys() {
                let k = k?;
                let endpoint = match k.get(8..) {
                    None | Some([]) => super::config::DEFAULT_ENDPOINT.to_string(),
                    Some(name) => String::from_utf8_lossy(name).into_owned(),
                };
                *counts.entry(endpoint).or_insert(0) += 1;
            }
            Ok(counts)
        })
    }

    /// The dead letters `wanted` takes, oldest first, past the first `skip` of them, at most
    /// `limit`: decoded one at a time, so the answer is all that is held.
    pub fn dead_letters_where(
        &self,
        wanted: impl Fn(&DeadLetter) -> bool,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, OutboxError> {
        self.with(|s| {
            let mut out = Vec::new();
            let mut skipped = 0;
            for kv in s.dead.iter() {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = kv?;
                let letter = decode_dead(&k, &v)?;
                if !wanted(&letter) {
                    continue;
                }
                if skipped < skip {
                    skipped += 1;
                    continue;
                }
                out.push(letter);
            }
            Ok(out)
        })
    }

    /// Up to `limit` dead letters, oldest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, OutboxError> {
        self.with(|s| {
            s.dead
                .iter()
                .take(limit)
                .map(|kv| {
                    let (k, v) = kv?;
                    decode_dead(&k, &v)
                })
                .collect()
        })
    }

    /// Move the dead letter `seq` of `endpoint` back to its queue, behind everything pending,
    /// keeping its event id. False if there is no such dead letter. Flushes. A letter set
    /// aside as damaged is refused: its record cannot be read back, and would be set aside
    /// again.
    pub async fn revive(&self, endpoint: &str, seq: u64) -> Result<bool, OutboxError> {
        let key = dead_key(seq, endpoint);
        let queue = self.queue(endpoint).ok_or(OutboxError::Corrupt {
            seq,
            why: "the dead letter's endpoint has no queue",
        })?;
        let letter = self.with(|s| Ok(s.dead.get(key.as_slice())?))?;
        if letter.is_some_and(|v| dead_record_bytes(&v).is_none_or(is_damaged)) {
            return Err(OutboxError::Corrupt {
                seq,
                why: "the dead letter was set aside as damaged: it cannot be sent again",
            });
        }
        let (new_seq, revived) = self.with(|s| {
            let new_seq = self.next_seq();
            let revived = (&s.queues[queue.0], &s.dead)
                .transaction(|(ev, dead)| {
                    let Some(value) = dead.remove(key.as_slice())? else {
                        return Ok(None);
                    };
                    let record =
                        dead_record_bytes(&value).ok_or(ConflictableTransactionError::Abort(()))?;
                    ev.insert(&new_seq.to_be_bytes(), record)?;
                    Ok(Some((record.len(), value.len())))
                })
                .map_err(|e| match e {
                    TransactionError::Storage(e) => OutboxError::Storage(e),
                    TransactionError::Abort(()) => OutboxError::Corrupt {
                        seq,
                        why: "dead letter is truncated",
                    },
                })?;
            Ok((new_seq, revived))
        })?;
        if let Some((bytes, letter)) = revived {
            let q = self.q(queue);
            q.depth.fetch_add(1, Ordering::Relaxed);
            q.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            self.dead_depth.fetch_sub(1, Ordering::Relaxed);
            self.dead_bytes
                .fetch_sub((key.len() + letter) as u64, Ordering::Relaxed);
            self.written.fetch_max(new_seq + 1, Ordering::SeqCst);
            self.flush().await?;
            q.appended.notify_one();
        }
        Ok(revived.is_some())
    }

    /// Delete the pending records (`dead = false`) or the dead letters, of `endpoint` or of
    /// all. Returns how many.
    pub async fn purge(&self, dead: bool, endpoint: Option<&str>) -> Result<usize, OutboxError> {
        let chosen = |e: &str| endpoint.is_none_or(|want| want == e);
        let n = self.with(|s| {
            let mut n = 0;
            if dead {
                for kv in s.dead.iter() {
                    let (k, v) = kv?;
                    if chosen(&decode_dead(&k, &v)?.endpoint) {
                        s.dead.remove(&k)?;
                        self.dead_depth.fetch_sub(1, Ordering::Relaxed);
                        self.dead_bytes
                            .fetch_sub((k.len() + v.len()) as u64, Ordering::Relaxed);
                        n += 1;
                    }
                }
                return Ok(n);
            }
            for (i, (tree, queue)) in s.queues.iter().zip(self.all_queues()).enumerate() {
                if !chosen(&queue.endpoint) {
                    continue;
                }
                self.settle(s, QueueId(i))?;
                for key in tree.iter().keys() {
                    tree.remove(key?)?;
                    n += 1;
                }
                queue.depth.store(0, Ordering::Relaxed);
                queue.bytes.store(0, Ordering::Relaxed);
            }
            Ok(n)
        })?;
        self.flush().await?;
        Ok(n)
    }
}

/// Bytes of the letters in `dead` (keys and values), at open.
pub(super) fn bytes_of(dead: &sled::Tree) -> Result<u64, OutboxError> {
    let mut bytes = 0u64;
    for kv in dead.iter() {
        let (k, v) = kv?;
        bytes += (k.len() + v.len()) as u64;
    }
    Ok(bytes)
}
