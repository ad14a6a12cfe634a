//! Outbox: the durable queue between the device stage and delivery: a write-ahead log of
//! batches (`wal`), with sled as its checkpoint.
//!
//! # Layout
//! - `outbox.wal.0`, `outbox.wal.1`: the write-ahead log (format in `wal`). Each synced batch
//!   is one record holding every change it makes to the trees below, in order; generation
//!   `g` (the records since the checkpoint before it) is written to file `g % 2`.
//! - One sled database, `outbox.sled`: the trees as of the last checkpoint, plus what is
//!   written to sled directly (removals, dead letters, facts). `meta` key `wal.through` names
//!   the last generation a durable checkpoint holds.
//! - `outbox.sled.segment`: the segment size sled was told when this version created the
//!   store (256 KiB; absent: an earlier version's, 512 KiB), written and synced first
//!   (`store::segment_size`).
//! - `outbox.bodies/<n>`: the bodies of the records a checkpoint put into sled as pointers
//!   (format and rules in `bodies`): written once, in order, deleted a segment at a time.
//!
//! What was written since the last checkpoint is also held in memory (`hot`): the records not
//! yet delivered, and the latest value of each state. A checkpoint puts those into sled, once a
//! minute while anything waits, or sooner when the records held pass 1 MiB or the log 4 MiB,
//! and at shutdown. A record delivered before the checkpoint never reaches sled: with a
//! receiver that keeps up, the disk sees each event once, in the log.
//!
//! sled's trees:
//!
//! - one *queue* per endpoint: `outbox` for the endpoint named `default` (`[webhook]`),
//!   `outbox.<name>` for the others. Key = 8-byte big-endian sequence number (monotonic:
//!   counted from one past the highest on disk at open; one event has the same number in
//!   every queue); value = an [`OutboxRecord`] encoded as
//!   `[version=1][u8 type][u16 lane len][lane][u8 id len][id][body]`. `body` is the exact envelope
//!   bytes that are signed and sent. A record a checkpoint put into sled is a *pointer*
//!   instead: `[version=3]`, the same header, then where its body is in `outbox.bodies`
//!   (segment u64, offset u32, length u32) and the body's CRC-32 (u32); read back whole and
//!   checked (`Store::load`; an earlier version's `[version=2]` pointer has no CRC). Dead
//!   letters (but those set aside as damaged) and the records the log puts back after a crash
//!   are always whole. An event is written to the queue of each active endpoint
//!   whose `events` patterns match it ([`Route`]), so endpoints never wait for one another; an
//!   event no endpoint wants is not stored. A queue whose endpoint left the configuration is
//!   kept (and reported) until it is purged.
//! - `devices`: key = device id (UTF-8); value = [`DeviceState`] as JSON. A device forgotten
//!   (`device.unregistered`) has its key removed, in the batch of its event, after the event.
//! - `workspaces`: key = workspace id (UTF-8); value = [`WorkspaceState`] as JSON.
//! - `groups`: key = group id (UTF-8); value = its `device::group::GroupState` as JSON (what
//!   was last reported of it).
//! - `actions`: key = action id (UTF-8); value = its `device::action::Action` as JSON, written
//!   with the batch that changed it (after its events); deleted once done and past its
//!   deadline. An action is marked `sent` in a batch before it is published (after that batch
//!   is synced), so after a crash it is sent again, never lost.
//! - `dead`: dead letters — events delivery gave up on (`max_attempts` / `max_age`), and those
//!   a read found damaged (`DAMAGED`: rule 4 of `bodies`), kept with why. Key = the event's
//!   sequence number followed by the endpoint name (nothing for `default`); value =
//!   `[version=1][u32 info len][DeadInfo JSON]` followed by the record, whole (a damaged one
//!   exactly as it was in its queue). `edgehook outbox replay` moves one back into its queue
//!   under a new sequence number (same event id); never a damaged one.
//! - `meta`: small facts: the store's id, and per endpoint (see `format::meta_key`; typed in `facts`) whether it
//!   is disabled (why and since when, after a 410 Gone) or paused (since when), its last success and failure
//!   (Unix ms, at most once a second, held until the next checkpoint), and how many events it will never get because
//!   its share of the outbox was full ([`DROPPED`], written with the batch or the drop).
//!
//! # Invariants
//! 1. A batch of commits (events and the device and workspace states they came from) is
//!    written by the writer task alone, as **one record of the log** (events first, then the
//!    states), then `fdatasync`ed (one sync per batch, not per event; a batch gathers what
//!    arrives within `outbox.commit_delay` of its first message), and **only then** are the
//!    batch's transport acks sent. So an acknowledged MQTT message always has its events on
//!    disk, and so has every state change that decides later events (a value held back by
//!    `min_interval`, an offline inside its debounce, a workspace's hold), even when it made no
//!    event or no endpoint wants its events (`Commit::sync`). A record is checksummed and
//!    whole or not there: no state is ever on disk without the events it came from. A batch
//!    that needs no sync (it only moves devices' `last_seen`, or changes nothing that decides
//!    an event) is not logged: it is held in memory and reaches sled at the next checkpoint;
//!    a crash before it loses it, which is allowed (the device stage handles a `last_seen`
//!    older than the truth: `device::SEEN_RESOLUTION`). The writer also holds seen-times alone
//!    for up to a minute (`seen`) so that they ride with a batch or the minute's checkpoint.
//! 2. Delivery only sees records at or below the *durable watermark* (the highest sequence number
//!    known synced). An event is never sent before it is on disk: otherwise a crash could lose
//!    the record after sending it, and the broker's redelivery would recreate the event under a
//!    new id, a duplicate the receiver could not recognise.
//! 3. A record is removed only after the receiver answered 2xx for it, or moved to `dead` when
//!    the configured limits say to give up. Nothing is dropped. A removal is logged with the
//!    next synced batch (and written to sled if the record is there).
//! 4. A write that fails (disk full, I/O error) is retried with backoff, holding the batch and its
//!    acks: nothing is acknowledged and nothing is dropped. Upstream stages block on their bounded
//!    channels, and the broker stops sending once its in-flight window is full (back-pressure).
//! 5. A checkpoint first appends the bodies of the records held to a segment and syncs it
//!    (a pointer is never in sled before its body is on disk), then writes into sled what is
//!    held (those records as pointers), then `wal.through` = the current
//!    generation, starts the next generation (in the other file), then flushes sled and
//!    `fdatasync`s its files ([`SyncFiles`]). sled recovers its log up to the first torn write
//!    (a prefix, in the order of the writes), so `wal.through` is only on disk with everything
//!    before it. A generation's file is overwritten only by the generation after next, which
//!    starts after this checkpoint is durable (checkpoints and syncs take turns), so every
//!    generation after `wal.through` is still readable in its file. A segment of bodies is
//!    deleted only after a durable checkpoint in which nothing points into it (one mostly
//!    garbage has its survivors put back into sled whole in that checkpoint first).
//!
//! # After a crash
//! At open, the log's generations after `wal.through` are applied to sled in order (inserts
//! and removals: applying one twice changes nothing), made a checkpoint, and the next
//! generation starts under a number never used before (so a
//! torn sync of the last life is never read as part of it). Unsynced work is lost: its MQTT messages were not
//! acknowledged and the broker redelivers them, which recreates the same events with new ids.
//! A sync cut short may leave some of its records whole (their batch not acknowledged): they
//! come back, and the redelivery makes their events again — duplicates under new ids, rare (a
//! crash inside one sync) and never a loss. A record whose delivery succeeded but whose removal
//! was not yet logged is delivered again: a duplicate with the same id, which the receiver drops
//! by its idempotency key. Records put into sled before their checkpoint (to be dropped,
//! buried or purged) come back from the log if the crash is before it: delivered or buried
//! again, never lost. Messages whose batch was synced but whose acknowledgements had not
//! reached the broker are redelivered too: the fingerprints of at least the last 1,024
//! messages applied, written with their batches (`applied`), let the first connection after
//! the start recognise them and not apply them twice (`source::redelivery`).

mod applied;
mod bodies;
pub mod config;
mod dead;
mod facts;
mod format;
mod hot;
pub mod metrics;
mod seen;
mod store;
mod wal;
mod writer;

pub use facts::{Disabled, Last, Paused};
use format::*;
pub use format::{DeadInfo, DeadLetter, OutboxRecord, DAMAGED, DROPPED};
use store::{io_error, Store};
pub use writer::run_writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sled::IVec;
use tokio::sync::Notify;

use crate::device::{Commit, DeviceState, WorkspaceState};
use metrics::OutboxMetrics;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("outbox record {seq} is corrupt: {why}")]
    Corrupt { seq: u64, why: &'static str },
    #[error("the outbox is being reopened after a storage error")]
    Unavailable,
    #[error(
        "the outbox in {dir} has lost its history: its marker names store {expected}, the store holds {found} — \
         the files are damaged or were replaced. Nothing was deleted. To start afresh, move the \
         directory aside (see README: Recovering the state directory)"
    )]
    Lost {
        dir: String,
        expected: String,
        found: String,
    },
    #[error("{tree} state for `{key}` is corrupt: {why}")]
    CorruptState {
        tree: &'static str,
        key: String,
        why: String,
    },
}

/// What one [`Outbox::write`] stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    /// Events queued for at least one endpoint.
    pub queued: usize,
    /// Events no active endpoint subscribes to (not stored).
    pub unrouted: usize,
    /// Per queue (in the order of [`Outbox::queues`]): events not stored for it because its
    /// share was full while it could not drain.
    pub dropped: Vec<u64>,
}

/// Which events one endpoint's queue takes.
#[derive(Clone)]
pub struct Route {
    pub endpoint: String,
    pub wants: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

/// A queue, by its place in [`Outbox::queues`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueId(usize);

/// One endpoint's queue: its name and counts (sled's `Tree::len` is a full scan, so they are
/// counted once at open, then adjusted on every write and removal).
struct Queue {
    endpoint: String,
    depth: AtomicU64,
    /// Bytes of the records held (what this queue's share of `outbox.max_size` limits).
    bytes: AtomicU64,
    /// Whether delivery is taking records out of this queue: false while the endpoint is
    /// paused, disabled (410), inactive or no longer configured. A queue that cannot drain never
    /// holds the others back when its share is full (see [`run_writer`]).
    draining: AtomicBool,
    /// Events this queue will never get because its share was full, ever (persisted as [`DROPPED`]).
    dropped: AtomicU64,
    /// Wakes this endpoint's delivery when new records are durable (a stored permit, so a
    /// wake-up while delivery is busy is not lost).
    appended: Notify,
}

/// See [`Outbox::outage`].
#[cfg(test)]
pub(crate) struct Outage {
    store: Arc<RwLock<Option<Store>>>,
    held: Option<Store>,
}

#[cfg(test)]
impl Drop for Outage {
    fn drop(&mut self) {
        *self.store.write().unwrap_or_else(|e| e.into_inner()) = self.held.take();
    }
}

/// A handle on the store; cheap to clone.
///
/// After an I/O error sled refuses every later operation, so the writer *reopens* the store
/// ([`Outbox::reopen`]): the broken instance is dropped and the database is recovered from
/// disk, which also discards the failed batch's unflushed writes (the batch is then written
/// again, under new sequence numbers, and its messages acknowledged only after that; any part
/// of it sled had already written is recovered like a batch cut short by a crash). While
/// the store cannot be reopened (the disk is still full), operations fail with
/// [`OutboxError::Unavailable`] and are retried by their callers. The error may first be met
/// by someone else — sled's own periodic flush of delivery's removals, with no device
/// publishing — so any operation that fails on storage wakes the writer to check the store
/// and reopen it ([`Outbox::storage_failed`]); only the writer reopens.
#[derive(Clone)]
pub struct Outbox {
    store: Arc<RwLock<Option<Store>>>,
    dir: PathBuf,
    cache_bytes: u64,
    /// Records in `dead` (counted at open, then kept).
    dead_depth: Arc<AtomicU64>,
    /// Bytes of the records in `dead` (counted at open, then kept), and at most how many
    /// ([`Outbox::set_dead_budget`]; the oldest go past it), and how many were let go.
    dead_bytes: Arc<AtomicU64>,
    dead_budget: Arc<AtomicU64>,
    dead_trimmed: Arc<AtomicU64>,
    /// False while writes are failing; `/healthz` reports it.
    writable: Arc<AtomicBool>,
    /// The queues: those routed at open (in configuration order), the others found on disk,
    /// then those added while running ([`Outbox::route`]). None is taken out while the store
    /// is open, so a [`QueueId`] stays valid.
    queues: Arc<RwLock<Vec<Arc<Queue>>>>,
    /// Which events each queue takes, by the queue's place (`None`: none; missing at the end:
    /// none). Replaced whole when an endpoint is routed or unrouted.
    routes: Arc<RwLock<Arc<Vec<Option<Route>>>>>,
    /// Whether old readings were ever dropped to make room (see [`Outbox::was_dropped`]).
    dropped_any: Arc<AtomicBool>,
    /// One past the highest sequence number written (flushed or not).
    written: Arc<AtomicU64>,
    /// Every sequence number below this is known to be flushed (see invariant 2).
    durable: Arc<AtomicU64>,
    /// The batches whose message fingerprints are kept (see `applied`).
    applied: Arc<std::sync::Mutex<applied::Applied>>,
    /// Times the store was reopened (see [`Outbox::reopens`]).
    reopens: Arc<AtomicU64>,
    /// An operation failed on storage since the last reopen; wakes the writer (see
    /// [`Outbox::storage_failed`]).
    failed: Arc<AtomicBool>,
    failed_wake: Arc<Notify>,
    /// Woken by each reopen that succeeds (see [`Outbox::open_within`]).
    reopened: Arc<Notify>,
    /// Held by a sync of the log and by a checkpoint: one at a time.
    syncing: Arc<tokio::sync::Mutex<()>>,
}

impl Outbox {
    /// Open the store in `dir`, with a queue for each route (events are written to the queues
    /// whose route wants them) and one for every other queue already on disk.
    pub fn open(dir: &Path, cache_bytes: u64, routes: Vec<Route>) -> Result<Outbox, OutboxError> {
        let mut store = Store::open(dir, cache_bytes)?;
        let mut endpoints: Vec<String> = routes.iter().map(|r| r.endpoint.clone()).collect();
        let mut others = store.queues_on_disk();
        others.sort();
        others.retain(|e| !endpoints.contains(e));
        endpoints.extend(others);
        store.open_queues(&endpoints)?;
        let queues = endpoints
            .iter()
            .zip(store.count()?)
            .enumerate()
            .map(|(i, (endpoint, (depth, bytes)))| {
                let dropped = store
                    .meta
                    .get(meta_key(endpoint, DROPPED))
                    .ok()
                    .flatten()
                    .and_then(|v| serde_json::from_slice(&v).ok())
                    .unwrap_or(0);
                Arc::new(Queue {
                    endpoint: endpoint.clone(),
                    depth: AtomicU64::new(depth),
                    bytes: AtomicU64::new(bytes),
                    draining: AtomicBool::new(i < routes.len()),
                    dropped: AtomicU64::new(dropped),
                    appended: Notify::new(),
                })
            })
            .collect();
        let routes: Vec<Option<Route>> = routes.into_iter().map(Some).collect();
        let dead_depth = Arc::new(AtomicU64::new(store.dead.len() as u64));
        let dead_bytes = Arc::new(AtomicU64::new(dead::bytes_of(&store.dead)?));
        // Whatever sled recovered at open is on disk.
        let end = store.end()?;
        let found = applied::stored(&store.meta)?
            .into_iter()
            .map(|(n, fingerprints)| (n, fingerprints.len() / 8));
        Ok(Outbox {
            dropped_any: Arc::new(AtomicBool::new(false)),
            store: Arc::new(RwLock::new(Some(store))),
            dir: dir.to_path_buf(),
            cache_bytes,
            dead_depth,
            dead_bytes,
            dead_budget: Arc::new(AtomicU64::new(u64::MAX)),
            dead_trimmed: Arc::new(AtomicU64::new(0)),
            writable: Arc::new(AtomicBool::new(true)),
            queues: Arc::new(RwLock::new(queues)),
            routes: Arc::new(RwLock::new(Arc::new(routes))),
            written: Arc::new(AtomicU64::new(end)),
            durable: Arc::new(AtomicU64::new(end)),
            applied: Arc::new(std::sync::Mutex::new(applied::Applied::new(found))),
            reopens: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicBool::new(false)),
            failed_wake: Arc::new(Notify::new()),
            reopened: Arc::new(Notify::new()),
            syncing: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The queue of `endpoint`, if there is one.
    pub fn queue(&self, endpoint: &str) -> Option<QueueId> {
        read(&self.queues)
            .iter()
            .position(|q| q.endpoint == endpoint)
            .map(QueueId)
    }

    /// Every queue: its id, endpoint, and whether new events are routed to it.
    pub fn queues(&self) -> Vec<(QueueId, String, bool)> {
        let routes = self.routes_now();
        self.all_queues()
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let routed = routes.get(i).is_some_and(Option::is_some);
                (QueueId(i), q.endpoint.clone(), routed)
            })
            .collect()
    }

    /// Queue the events `route` wants for its endpoint from the next batch on, making the
    /// endpoint a queue if it has none (an endpoint created while running). Its queue is
    /// marked draining: the caller starts its delivery.
    pub fn route(&self, route: Route) -> Result<QueueId, OutboxError> {
        let queue = self.queue_or_add(&route.endpoint)?;
        self.set_route(queue, Some(route));
        Ok(queue)
    }

    /// Queue nothing more for `endpoint` (deactivated, deleted, or gone from the file); what
    /// its queue holds is kept. False if it has no queue.
    pub fn unroute(&self, endpoint: &str) -> bool {
        match self.queue(endpoint) {
            Some(queue) => {
                self.set_route(queue, None);
                true
            }
            None => false,
        }
    }

    fn set_route(&self, queue: QueueId, route: Option<Route>) {
        let mut routes = write(&self.routes);
        let mut new = Vec::clone(&routes);
        if new.len() <= queue.0 {
            new.resize(queue.0 + 1, None);
        }
        new[queue.0] = route;
        *routes = Arc::new(new);
    }

    /// The queue of `endpoint`, opened now if it has none.
    fn queue_or_add(&self, endpoint: &str) -> Result<QueueId, OutboxError> {
        if let Some(queue) = self.queue(endpoint) {
            return Ok(queue);
        }
        // The store's lock first, then the queues' (as everywhere), so that a reopen, which
        // opens the store's trees from the queues' names, sees both or neither.
        let mut guard = self.store.write().unwrap_or_else(|e| e.into_inner());
        let store = guard.as_mut().ok_or(OutboxError::Unavailable)?;
        let mut queues = write(&self.queues);
        if let Some(i) = queues.iter().position(|q| q.endpoint == endpoint) {
            return Ok(QueueId(i));
        }
        store.add_queue(endpoint)?;
        let dropped = store
            .meta
            .get(meta_key(endpoint, DROPPED))?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or(0);
        queues.push(Arc::new(Queue {
            endpoint: endpoint.to_string(),
            depth: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            dropped: AtomicU64::new(dropped),
            appended: Notify::new(),
        }));
        Ok(QueueId(queues.len() - 1))
    }

    /// One queue.
    fn q(&self, queue: QueueId) -> Arc<Queue> {
        read(&self.queues)[queue.0].clone()
    }

    /// Every queue, as they are now.
    fn all_queues(&self) -> Vec<Arc<Queue>> {
        read(&self.queues).clone()
    }

    fn queue_count(&self) -> usize {
        read(&self.queues).len()
    }

    /// The routes, as they are now.
    fn routes_now(&self) -> Arc<Vec<Option<Route>>> {
        read(&self.routes).clone()
    }

    /// Run `f` on the open store. A storage error (sled refuses everything after one) wakes
    /// the writer to reopen the store, whoever met it.
    fn with<T>(&self, f: impl FnOnce(&Store) -> Result<T, OutboxError>) -> Result<T, OutboxError> {
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

    /// Resolves once an operation has failed on storage since the last reopen (at once if one
    /// has): the writer then checks the store with a checkpoint, which reopens it if it is
    /// broken. Found by the fault harness: the disk filled while only delivery wrote (removals,
    /// put on disk by sled's own periodic flush), every removal and read then failed, and the
    /// writer — which had nothing to write — never reopened the store.
    pub(crate) async fn storage_failed(&self) {
        let wake = self.failed_wake.notified();
        if !self.failed.load(Ordering::SeqCst) {
            wake.await;
        }
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

    /// How many times the store was reopened. What a reader saw before a reopen may differ from
    /// what is on disk after it (removals that were lost with the broken instance, records its
    /// recovery brought back), so a reader that has moved through a queue reads it again from
    /// the start when this changes.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::SeqCst)
    }

    /// The fingerprints of the messages applied in the last batches before this start (at
    /// least the last `applied::KEPT` messages).
    pub fn applied_before(&self) -> Vec<u64> {
        let read = |s: &Store| {
            let mut all = Vec::new();
            for (_, fingerprints) in applied::stored(&s.meta)? {
                all.extend(
                    fingerprints
                        .chunks_exact(8)
                        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))),
                );
            }
            Ok(all)
        };
        self.with(read).unwrap_or_default()
    }

    /// Every persisted device state (read once at start).
    pub fn devices(&self) -> Result<Vec<(String, DeviceState)>, OutboxError> {
        self.with(|s| load_states(&s.devices, "device"))
    }

    /// The persisted devices `selection` takes, by id, a page within
    /// [`crate::device::PAGE_BYTES`] of stored state; and whether more follow. Reads only the
    /// page, however many devices there are.
    #[allow(clippy::type_complexity)]
    pub fn devices_page(
        &self,
        selection: &crate::device::Selection,
    ) -> Result<(Vec<(String, DeviceState)>, bool), OutboxError> {
        use std::ops::Bound;
        self.with(|s| match selection {
            crate::device::Selection::One(id) => Ok((
                match s.devices.get(id.as_bytes())? {
                    Some(v) => vec![format::load_state(id.as_bytes(), &v, "device")?],
                    None => Vec::new(),
                },
                false,
            )),
            crate::device::Selection::Page { after, limit } => {
                let from = match after {
                    Some(a) => Bound::Excluded(a.as_bytes()),
                    None => Bound::Unbounded,
                };
                let mut page = Vec::new();
                let mut bytes = 0usize;
                for kv in s.devices.range::<&[u8], _>((from, Bound::Unbounded)) {
                    let (k, v) = kv?;
                    bytes += k.len() + v.len() + crate::device::VIEW_BYTES;
                    if page.len() == *limit
                        || (!page.is_empty() && bytes > crate::device::PAGE_BYTES)
                    {
                        return Ok((page, true));
                    }
                    page.push(format::load_state(&k, &v, "device")?);
                }
                Ok((page, false))
            }
        })
    }

    /// Every persisted workspace state (read once at start).
    pub fn workspaces(&self) -> Result<Vec<(String, WorkspaceState)>, OutboxError> {
        self.with(|s| load_states(&s.workspaces, "workspace"))
    }

    /// Every persisted action (read once at start).
    pub fn actions(&self) -> Result<Vec<crate::device::action::Action>, OutboxError> {
        self.with(|s| load_states(&s.actions, "action"))
            .map(|all| all.into_iter().map(|(_, a)| a).collect())
    }

    /// Every persisted booking (read once at start).
    pub fn bookings(&self) -> Result<Vec<crate::device::booking::Booking>, OutboxError> {
        self.with(|s| load_states(&s.bookings, "booking"))
            .map(|all| all.into_iter().map(|(_, b)| b).collect())
    }

    /// Every persisted group state (read once at start).
    pub fn groups(&self) -> Result<Vec<(String, crate::device::group::GroupState)>, OutboxError> {
        self.with(|s| load_states(&s.groups, "group"))
    }

    /// Write a batch (not yet flushed), leaving out of the queues marked in `refused` (by
    /// their place in [`Outbox::queues`]) the events they would take. Returns how many events
    /// were queued (for at least one endpoint), how many no endpoint wanted, and how many each
    /// refused queue missed.
    pub fn write(&self, batch: &[Commit], refused: &[bool]) -> Result<Written, OutboxError> {
        self.with(|s| self.write_to(s, batch, refused))
    }

    fn write_to(
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
            .map(|c| (encode_states(c.devices.iter()), c.forgotten.as_slice()))
            .filter(|(d, f)| !d.is_empty() || !f.is_empty())
            .collect();
        let workspaces = encode_states(batch.iter().flat_map(|c| &c.workspaces));
        let groups = encode_states(batch.iter().flat_map(|c| &c.groups));
        let actions: Vec<(String, Vec<u8>)> = batch
            .iter()
            .flat_map(|c| &c.actions)
            .map(|a| {
                (
                    a.id.clone(),
                    serde_json::to_vec(a).expect("an action serialises"),
                )
            })
            .collect();
        let forgotten_actions: Vec<&String> =
            batch.iter().flat_map(|c| &c.forgotten_actions).collect();
        let bookings: Vec<(&String, Option<Vec<u8>>)> = batch
            .iter()
            .flat_map(|c| &c.bookings)
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
    fn next_seq(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst)
    }

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
    fn settle(&self, s: &Store, queue: QueueId) -> Result<(), OutboxError> {
        settle_held(s, &mut s.hot(), queue)
    }

    /// Visit the records of `queue` from `from` up to (not including) `to` in order, those in
    /// sled and those held since the last checkpoint, until `f` says stop.
    fn scan(
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
    fn set_aside(
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
    fn forget(&self, queue: QueueId, bytes: usize) {
        let q = self.q(queue);
        q.depth.fetch_sub(1, Ordering::Relaxed);
        q.bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
    }

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

    /// Bytes of the records waiting in `queue`.
    pub fn queue_bytes(&self, queue: QueueId) -> u64 {
        self.q(queue).bytes.load(Ordering::Relaxed)
    }

    /// Say whether delivery takes records out of `queue` (false while its endpoint is
    /// disabled); a queue that does not drain never holds the others back when full.
    pub fn set_draining(&self, queue: QueueId, draining: bool) {
        self.q(queue).draining.store(draining, Ordering::Relaxed);
    }

    pub fn is_draining(&self, queue: QueueId) -> bool {
        self.q(queue).draining.load(Ordering::Relaxed)
    }

    /// Events `queue` will never get because its share was full, ever (see [`DROPPED`]).
    pub fn dropped_for(&self, queue: QueueId) -> u64 {
        self.q(queue).dropped.load(Ordering::Relaxed)
    }

    /// About how many bytes `batch` adds to each queue (in the order of [`Outbox::queues`]).
    fn needs(&self, batch: &[Commit]) -> Vec<u64> {
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

    /// Set the gauges read off the store (at scrape time): events and bytes held, dead letters,
    /// and per queue its pending events and the age of its oldest.
    pub fn observe(&self, metrics: &OutboxMetrics) {
        metrics.set_depth(self.len());
        metrics.set_held(self.bytes(), self.dead_len());
        metrics.set_dead(self.dead_bytes.load(Ordering::Relaxed), self.dead_trimmed());
        for (queue, endpoint, _) in self.queues() {
            let endpoint = endpoint.as_str();
            let age = self
                .oldest(queue)
                .ok()
                .flatten()
                .and_then(|r| crate::event::created_at(&r.id))
                .and_then(|t| t.elapsed().ok())
                .map_or(std::time::Duration::ZERO, |d| {
                    std::time::Duration::from_millis(d.as_millis() as u64)
                });
            metrics.set_pending(endpoint, self.queue_len(queue), age);
        }
    }

    /// Dead letters kept.
    pub fn dead_len(&self) -> usize {
        self.dead_depth.load(Ordering::Relaxed) as usize
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

    /// A small persisted fact (`meta` tree), as JSON: as held for the next checkpoint, or
    /// as in sled.
    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let bytes = self
            .with(|s| {
                let held = s
                    .hot()
                    .states
                    .get("meta")
                    .and_then(|m| m.get(key.as_bytes()).cloned());
                match held {
                    Some(value) => Ok(value.map(IVec::from)),
                    None => Ok(s.meta.get(key)?),
                }
            })
            .ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Set a `meta` fact that may be lost in a crash: held in memory until the next
    /// checkpoint (a fact that changes every second would otherwise cost sled's log a page
    /// rewritten every second).
    fn hold_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), OutboxError> {
        let bytes = serde_json::to_vec(value).expect("plain data serialises");
        self.with(|s| {
            let mut hot = s.hot();
            let meta = hot.states.entry("meta".to_string()).or_default();
            meta.insert(key.as_bytes().to_vec(), Some(bytes));
            Ok(())
        })
    }

    /// Set (or with `None`, clear) a `meta` fact. Not flushed by itself.
    fn set_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: Option<&T>,
    ) -> Result<(), OutboxError> {
        let bytes = value.map(|v| serde_json::to_vec(v).expect("plain data serialises"));
        self.with(|s| {
            // A fact held for the checkpoint is older than this one.
            if let Some(meta) = s.hot().states.get_mut("meta") {
                meta.remove(key.as_bytes());
            }
            store::set(&s.meta, key.as_bytes(), bytes.as_deref())
        })
    }

    /// Records waiting for delivery, in all queues.
    pub fn len(&self) -> usize {
        self.all_queues()
            .iter()
            .map(|q| q.depth.load(Ordering::Relaxed) as usize)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records waiting in `queue`.
    pub fn queue_len(&self, queue: QueueId) -> usize {
        self.q(queue).depth.load(Ordering::Relaxed) as usize
    }

    /// Bytes of the records waiting, in all queues.
    pub fn bytes(&self) -> u64 {
        self.all_queues()
            .iter()
            .map(|q| q.bytes.load(Ordering::Relaxed))
            .sum()
    }

    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// Resolves after the next durable append to `queue` (or at once if there was one since
    /// the last call).
    pub async fn appended(&self, queue: QueueId) {
        let q = self.q(queue);
        q.appended.notified().await
    }

    /// Wake the delivery of every queue: new records are durable.
    fn notify_appended(&self) {
        for q in self.all_queues() {
            q.appended.notify_one();
        }
    }
}

/// Move the records of `queue` held since the last checkpoint into its sled tree.
fn settle_held(s: &Store, hot: &mut hot::Hot, queue: QueueId) -> Result<(), OutboxError> {
    let mut reclaim = store::Reclaim::default();
    for (seq, value) in std::mem::take(hot.queue(queue.0)) {
        hot.bytes -= value.len() as u64;
        s.queues[queue.0].insert(seq.to_be_bytes(), value)?;
        reclaim.tick();
    }
    Ok(())
}

/// Record `seq` as `Store::load` reads it; a damaged one (`Corrupt`) noted in `damaged`, to
/// be set aside once the read is done, instead of failing the read.
fn load_or_note(
    s: &Store,
    seq: u64,
    value: &IVec,
    damaged: &mut Vec<(u64, &'static str)>,
) -> Result<Option<OutboxRecord>, OutboxError> {
    match s.load(seq, value) {
        Ok(record) => Ok(Some(record)),
        Err(OutboxError::Corrupt { seq, why }) => {
            damaged.push((seq, why));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Inside a checkpoint: count the pointers into the closed segments, put the survivors of
/// those mostly garbage back into sled whole, and return the segments nothing points into
/// any more (to delete once the checkpoint is durable).
fn collect_segments(s: &Store) -> Result<Vec<u64>, OutboxError> {
    let span = s.bodies().closed_span();
    let Some((lo, hi)) = span else {
        return Ok(s.bodies().collect(&Default::default()).0);
    };
    let range = lo.to_be_bytes()..=hi.to_be_bytes();
    let mut live = std::collections::HashMap::<u64, u64>::new();
    for tree in &s.queues {
        for kv in tree.range(range.clone()) {
            let (_, v) = kv?;
            if let Some(at) = pointed(&v) {
                *live.entry(at.segment).or_default() += u64::from(at.len);
            }
        }
    }
    let (mut gone, emptied) = s.bodies().collect(&live);
    if !emptied.is_empty() {
        for tree in &s.queues {
            for kv in tree.range(range.clone()) {
                let (k, v) = kv?;
                if pointed(&v).is_some_and(|at| emptied.contains(&at.segment)) {
                    let whole = match s.whole(seq_of(&k)?, v.clone()) {
                        Ok(whole) => whole,
                        // Damaged: left a pointer, set aside when delivery reads it.
                        Err(OutboxError::Corrupt { .. }) => continue,
                        Err(e) => return Err(e),
                    };
                    // Only if it is still there: a removal that read `hot` before this
                    // checkpoint took it may be removing it from sled now (not resurrected).
                    let _ = tree.compare_and_swap(k, Some(v), Some(whole))?;
                }
            }
        }
        gone.extend(emptied);
    }
    Ok(gone)
}

/// Run blocking file I/O (a write and its sync) off the async workers.
async fn blocking(
    io: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Result<(), OutboxError> {
    tokio::task::spawn_blocking(io)
        .await
        .map_err(|e| io_error(std::io::Error::other(e)))?
        .map_err(io_error)
}

/// The name of a sled tree, as the log names it.
fn tree_of(tree: &sled::Tree) -> String {
    String::from_utf8_lossy(&tree.name()).into_owned()
}

/// A read guard, through a poisoned lock (what it guards is plain data, whole at every step).
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
