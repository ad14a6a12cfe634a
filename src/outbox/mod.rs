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
//!
//! # Files
//! This file is the crash contract above and the handle ([`Outbox`]: open, metrics, facts in
//! `meta`). The handle's other work is an `impl Outbox` per concern: `queues` (routing, sizes,
//! wake-ups), `write` (a batch into the log), `checkpoint` (sync and checkpoint), `read`
//! (delivery's reads and removals), `room` (`drop_oldest_readings`), `reopen` (reaching the
//! store, and reopening it after a failure), `states` (devices and the rest, read at start),
//! `dead` (dead letters), `facts` (what each endpoint remembers); the formats are `format`,
//! `wal` and `bodies`, the store `store`, the writer task `writer`.

mod applied;
mod bodies;
mod checkpoint;
pub mod config;
mod dead;
mod facts;
mod format;
mod hot;
pub mod metrics;
mod queues;
mod read;
mod reopen;
mod room;
mod seen;
mod states;
mod store;
mod wal;
mod write;
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
pub struct QueueFilter {
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
    routes: Arc<RwLock<Arc<Vec<Option<QueueFilter>>>>>,
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
    pub fn open(
        dir: &Path,
        cache_bytes: u64,
        routes: Vec<QueueFilter>,
    ) -> Result<Outbox, OutboxError> {
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
        let routes: Vec<Option<QueueFilter>> = routes.into_iter().map(Some).collect();
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

    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
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
