//! Reaching the store, and reopening it after a failure (a full disk, an I/O error): every
//! use goes through `with`, which notes a failure and lets the next use reopen.

use super::*;

impl Outbox {
    /// Run `f` on the open store. A storage error (sled refuses everything after one) wakes
    /// the writer to reopen the store, whoever met it.
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        let guard = self.store.read().unwrap_or_else(|e| e.into_inner());
        let result = match guard.as_ref() {
            Some(store) => f(store),
            None => Err(OutboxError::Unavailable),
        };
        if let Err(OutboxError::Storage(e)) = &result {
            if !matches!(
                e,
                sled::Error::CollectionNotFound(_) | sled::Error::Unsupported(_)
            ) && !self.failed.swap(true, Ordering::SeqCst)
            {
                self.failed_wake.notify_one();
            }
        }
        result
    }

    /// Whether an operation failed on storage since the last reopen or the last call.
    pub(crate) fn take_failed(&self) -> bool {
        self.failed.swap(false, Ordering::SeqCst)
    }

    /// Drop the store and recover it from disk (after an I/O error; see the type's docs).
    pub fn reopen(&self) -> Result<(), OutboxError> {
        let mut guard = self.store.write().unwrap_or_else(|e| e.into_inner());
        *guard = None; // the broken instance goes first: it holds the file lock
        let mut store = Store::open(&self.dir, self.cache_bytes)?;
        let queues = self.all_queues();
        let endpoints: Vec<String> = queues.iter().map(|q| q.endpoint.clone()).collect();
        store.open_queues(&endpoints)?;
        let end = store.end()?;
        for (queue, (depth, bytes)) in queues.iter().zip(store.count()?) {
            queue.depth.store(depth, Ordering::Relaxed);
            queue.bytes.store(bytes, Ordering::Relaxed);
        }
        self.dead_depth
            .store(store.dead.len() as u64, Ordering::Relaxed);
        self.dead_bytes
            .store(dead::bytes_of(&store.dead)?, Ordering::Relaxed);
        // Everything on disk now is durable; what was only in memory is gone.
        self.durable.fetch_max(end, Ordering::SeqCst);
        self.written
            .store(self.durable.load(Ordering::SeqCst), Ordering::SeqCst);
        *guard = Some(store);
        self.failed.store(false, Ordering::SeqCst);
        self.reopens.fetch_add(1, Ordering::SeqCst);
        drop(guard);
        self.notify_appended(); // delivery reads its queues again (see `reopens`)
        self.reopened.notify_waiters();
        Ok(())
    }

    /// Whether the store is open: false while it is being reopened after a storage error
    /// (every operation then fails with [`OutboxError::Unavailable`]).
    pub fn is_open(&self) -> bool {
        self.store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Wait while the store is being reopened, at most `limit`; whether it is open. For who
    /// would rather wait a moment than fail: an operator's change right after a full disk was
    /// freed, while the writer's next attempt to reopen is still up to 5 s away.
    pub async fn open_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let reopened = self.reopened.notified();
            tokio::pin!(reopened);
            reopened.as_mut().enable();
            if self.is_open() {
                return true;
            }
            if tokio::time::timeout_at(deadline, reopened).await.is_err() {
                return self.is_open();
            }
        }
    }

    /// Tests only: the store taken away, as a reopen that failed leaves it (every operation
    /// fails with [`OutboxError::Unavailable`]) until the guard is dropped. Unlike a reopen,
    /// getting it back wakes no one: a reader must retry on its own.
    #[cfg(test)]
    pub(crate) fn outage(&self) -> Outage {
        let held = self.store.write().unwrap_or_else(|e| e.into_inner()).take();
        Outage {
            store: self.store.clone(),
            held,
        }
    }

    /// How many times the store was reopened. What a reader saw before a reopen may differ from
    /// what is on disk after it (removals that were lost with the broken instance, records its
    /// recovery brought back), so a reader that has moved through a queue reads it again from
    /// the start when this changes.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::SeqCst)
    }
}
