//! Outbox: the durable queue between the device stage and delivery (sled).
//!
//! # Layout
//! One sled database in the state directory, with these trees:
//!
//! - one *queue* per endpoint: `outbox` for the endpoint named `default` (`[webhook]`),
//!   `outbox.<name>` for the others. Key = 8-byte big-endian sequence number (monotonic, from
//!   sled's crash-safe id generator, so key order is creation order; one event has the same
//!   number in every queue); value = an [`OutboxRecord`] encoded as
//!   `[version=1][u8 type][u16 lane len][lane][u8 id len][id][body]`. `body` is the exact envelope
//!   bytes that are signed and sent. An event is written to the queue of each active endpoint
//!   whose `events` patterns match it ([`Route`]), so endpoints never wait for one another; an
//!   event no endpoint wants is not stored. A queue whose endpoint left the configuration is
//!   kept (and reported) until it is purged.
//! - `devices`: key = device id (UTF-8); value = [`DeviceState`] as JSON.
//! - `workspaces`: key = workspace id (UTF-8); value = [`WorkspaceState`] as JSON.
//! - `dead`: dead letters — events delivery gave up on (`max_attempts` / `max_age`), kept with
//!   why. Key = the event's sequence number followed by the endpoint name (nothing for
//!   `default`); value = `[version=1][u32 info len][DeadInfo JSON]` followed by the record
//!   exactly as it was in its queue. `edgehook outbox replay` moves one back into its queue
//!   under a new sequence number (same event id).
//! - `meta`: small facts: the store's id, and per endpoint (see [`meta_key`]) whether it
//!   is disabled (why and since when, after a 410 Gone), its last success and failure
//!   (Unix ms, written at most once a second), and how many events it will never get because
//!   its share of the outbox was full ([`DROPPED`], written with the batch or the drop).
//!
//! # Invariants
//! 1. A batch of commits (events and the device and workspace states they came from) is written
//!    by the writer task alone, **events first, then the states**, then flushed: sled's flush,
//!    then an `fdatasync` of its files (see [`SyncFiles`]; one sync per batch, not per event; a
//!    batch gathers what arrives within `outbox.commit_delay` of its first message), and
//!    **only then** are the batch's transport acks sent. So an acknowledged MQTT message always
//!    has its events on disk, and so has every state change that decides later events (a
//!    value held back by `min_interval`, an offline inside its debounce, a workspace's hold),
//!    even when it made no event or no endpoint wants its events (`Commit::sync`). A batch
//!    that only moves devices' `last_seen` is written without a sync of its own: it reaches
//!    the disk with the next synced batch or sled's own flush (within a second), and a restart
//!    that finds it older is handled by the device stage (`device::SEEN_RESOLUTION`). sled recovers its log up to the first torn write and no further
//!    (a prefix, in the order of the writes), so whatever part of a batch survives a crash
//!    holds no state without the events it came from: a state on disk always has its events on
//!    disk. No sled transaction is needed for that, and none is used: each one costs two extra
//!    synchronous writes of the log's last page (a roll of the buffer and a batch marker),
//!    which nearly doubled the bytes written per event (6.8 KB against 3.5 KB in the paced
//!    benchmark).
//! 2. Delivery only sees records at or below the *durable watermark* (the highest sequence number
//!    known flushed). An event is never sent before it is on disk: otherwise a crash could lose
//!    the record after sending it, and the broker's redelivery would recreate the event under a
//!    new id, a duplicate the receiver could not recognise.
//! 3. A record is removed only after the receiver answered 2xx for it, or moved (in one
//!    transaction) to `dead` when the configured limits say to give up. Nothing is dropped.
//! 4. A write that fails (disk full, I/O error) is retried with backoff, holding the batch and its
//!    acks: nothing is acknowledged and nothing is dropped. Upstream stages block on their bounded
//!    channels, and the broker stops sending once its in-flight window is full (back-pressure).
//!
//! # After a crash
//! Unflushed work is lost: its MQTT messages were not acknowledged and the broker redelivers
//! them, which recreates the same events with new ids. A batch whose flush was cut short may
//! come back in part (events without their states; never states without their events); its
//! messages were not acknowledged either, so those events are made again from the redelivery:
//! duplicates under new ids, rare (a crash inside one flush) and never a loss. A record whose
//! delivery succeeded but whose removal was not yet flushed is delivered again: a duplicate
//! with the same id, which the receiver drops by its idempotency key.

pub mod config;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::device::{Commit, DeviceState, WorkspaceState};
use crate::event::Envelope;
#[cfg(test)]
use crate::event::EventType;
use crate::metrics::Metrics;
use config::{OnFull, OutboxConfig, DEFAULT_ENDPOINT};

const RECORD_VERSION: u8 = 1;

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
    /// Whether new events are routed here (the endpoint is configured and active).
    routed: bool,
    depth: AtomicU64,
    /// Bytes of the records held (what this queue's share of `outbox.max_size` limits).
    bytes: AtomicU64,
    /// Whether delivery is taking records out of this queue: false while the endpoint is
    /// disabled (410), inactive or no longer configured. A queue that cannot drain never
    /// holds the others back when its share is full (see [`run_writer`]).
    draining: AtomicBool,
    /// Events this queue will never get because its share was full, ever (persisted as [`DROPPED`]).
    dropped: AtomicU64,
    /// Wakes this endpoint's delivery when new records are durable (a stored permit, so a
    /// wake-up while delivery is busy is not lost).
    appended: Notify,
}

/// The queue tree of `endpoint`.
fn tree_name(endpoint: &str) -> String {
    if endpoint == DEFAULT_ENDPOINT {
        "outbox".into()
    } else {
        format!("outbox.{endpoint}")
    }
}

/// The endpoint whose queue `tree` is, if it is one.
fn endpoint_of_tree(tree: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(tree).ok()?;
    match name {
        "outbox" => Some(DEFAULT_ENDPOINT.into()),
        _ => name.strip_prefix("outbox.").map(str::to_owned),
    }
}

/// A dead letter's key: the sequence number, then the endpoint (nothing for `default`).
fn dead_key(seq: u64, endpoint: &str) -> Vec<u8> {
    let mut key = seq.to_be_bytes().to_vec();
    if endpoint != DEFAULT_ENDPOINT {
        key.extend_from_slice(endpoint.as_bytes());
    }
    key
}

/// A dead letter: the record as it was queued, for which endpoint, and why it was given up on.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub endpoint: String,
    pub record: OutboxRecord,
    pub info: DeadInfo,
}

/// One stored event awaiting delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    pub seq: u64,
    pub id: String,
    pub kind: String,
    pub lane: String,
    pub body: Vec<u8>,
}

/// The open sled database and its trees.
struct Store {
    db: sled::Db,
    /// What makes a sled flush survive a power cut (see [`SyncFiles`]).
    sync: Arc<SyncFiles>,
    /// One per queue, in the order of [`Outbox::queues`].
    queues: Vec<sled::Tree>,
    devices: sled::Tree,
    workspaces: sled::Tree,
    dead: sled::Tree,
    meta: sled::Tree,
}

impl Store {
    fn open(dir: &Path, cache_bytes: u64) -> Result<Store, OutboxError> {
        let db = sled::Config::new()
            .path(dir.join("outbox.sled"))
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000))
            .open()?;
        let sync = Arc::new(SyncFiles::open(&dir.join("outbox.sled"))?);
        // The delivery log lived here before it became a file (`deliver::log`).
        db.drop_tree("attempts")?;
        let store = Store {
            queues: Vec::new(),
            devices: db.open_tree("devices")?,
            workspaces: db.open_tree("workspaces")?,
            dead: db.open_tree("dead")?,
            meta: db.open_tree("meta")?,
            db,
            sync,
        };
        store.check_identity(dir)?;
        Ok(store)
    }

    /// sled recovers a damaged log by dropping what it cannot read, which can silently leave an
    /// empty store. So each store has an id, kept both inside it (`meta`, key `store_id`) and
    /// beside it (`outbox.id`); a store that comes back without the id its marker names has
    /// lost its history, and is refused rather than used.
    fn check_identity(&self, dir: &Path) -> Result<(), OutboxError> {
        let marker = dir.join(IDENTITY_FILE);
        let inside = self
            .meta
            .get(STORE_ID_KEY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let beside = std::fs::read_to_string(&marker)
            .ok()
            .map(|s| s.trim().to_string());
        match (beside, inside) {
            (Some(beside), Some(inside)) if beside == inside => Ok(()),
            (Some(beside), inside) => Err(OutboxError::Lost {
                dir: dir.display().to_string(),
                expected: beside,
                found: inside.unwrap_or_else(|| "nothing".into()),
            }),
            (None, Some(inside)) => write_marker(&marker, &inside),
            (None, None) => {
                // The id inside must be durable before the marker that names it: a marker
                // without it is a store that "lost its history" and is refused.
                let id = uuid::Uuid::now_v7().to_string();
                self.meta.insert(STORE_ID_KEY, id.as_bytes())?;
                self.db.flush()?;
                self.sync.sync().map_err(io_error)?;
                write_marker(&marker, &id)
            }
        }
    }

    /// Open the queue trees of `endpoints`, in that order.
    fn open_queues(&mut self, endpoints: &[String]) -> Result<(), OutboxError> {
        self.queues = endpoints
            .iter()
            .map(|e| self.db.open_tree(tree_name(e)))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// The endpoints that have a queue on disk.
    fn queues_on_disk(&self) -> Vec<String> {
        self.db
            .tree_names()
            .iter()
            .filter_map(|n| endpoint_of_tree(n))
            .collect()
    }

    /// One past the highest sequence number on disk.
    fn end(&self) -> Result<u64, OutboxError> {
        let mut end = 0;
        for tree in self.queues.iter().chain([&self.dead]) {
            if let Some((k, _)) = tree.last()? {
                end = end.max(seq_of(&k[..8.min(k.len())])? + 1);
            }
        }
        Ok(end)
    }

    /// Records and their bytes in each queue (a full scan: at open only).
    fn count(&self) -> Result<Vec<(u64, u64)>, OutboxError> {
        self.queues
            .iter()
            .map(|tree| {
                let (mut n, mut bytes) = (0u64, 0u64);
                for kv in tree.iter() {
                    let (_, v) = kv?;
                    n += 1;
                    bytes += v.len() as u64;
                }
                Ok((n, bytes))
            })
            .collect()
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
/// [`OutboxError::Unavailable`] and are retried by their callers.
#[derive(Clone)]
pub struct Outbox {
    store: Arc<RwLock<Option<Store>>>,
    dir: PathBuf,
    cache_bytes: u64,
    /// Records in `dead` (counted at open, then kept).
    dead_depth: Arc<AtomicU64>,
    /// False while writes are failing; `/healthz` reports it.
    writable: Arc<AtomicBool>,
    /// The queues, routed ones (in configuration order) first.
    queues: Arc<Vec<Queue>>,
    /// Which queues take each event type, in the order of `queues`.
    routes: Arc<Vec<Route>>,
    /// Whether old readings were ever dropped to make room (see [`Outbox::was_dropped`]).
    dropped_any: Arc<AtomicBool>,
    /// One past the highest sequence number written (flushed or not).
    written: Arc<AtomicU64>,
    /// Every sequence number below this is known to be flushed (see invariant 2).
    durable: Arc<AtomicU64>,
    /// Batches written that carried message fingerprints (see [`APPLIED`]).
    batches: Arc<AtomicU64>,
    /// Times the store was reopened (see [`Outbox::reopens`]).
    reopens: Arc<AtomicU64>,
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
                Queue {
                    endpoint: endpoint.clone(),
                    routed: i < routes.len(),
                    depth: AtomicU64::new(depth),
                    bytes: AtomicU64::new(bytes),
                    draining: AtomicBool::new(i < routes.len()),
                    dropped: AtomicU64::new(dropped),
                    appended: Notify::new(),
                }
            })
            .collect();
        let dead_depth = Arc::new(AtomicU64::new(store.dead.len() as u64));
        // Whatever sled recovered at open is on disk.
        let end = store.end()?;
        Ok(Outbox {
            dropped_any: Arc::new(AtomicBool::new(false)),
            store: Arc::new(RwLock::new(Some(store))),
            dir: dir.to_path_buf(),
            cache_bytes,
            dead_depth,
            writable: Arc::new(AtomicBool::new(true)),
            queues: Arc::new(queues),
            routes: Arc::new(routes),
            written: Arc::new(AtomicU64::new(end)),
            durable: Arc::new(AtomicU64::new(end)),
            batches: Arc::new(AtomicU64::new(0)),
            reopens: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The queue of `endpoint`, if there is one.
    pub fn queue(&self, endpoint: &str) -> Option<QueueId> {
        self.queues
            .iter()
            .position(|q| q.endpoint == endpoint)
            .map(QueueId)
    }

    /// Every queue: its id, endpoint, and whether new events are routed to it.
    pub fn queues(&self) -> Vec<(QueueId, &str, bool)> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, q)| (QueueId(i), q.endpoint.as_str(), q.routed))
            .collect()
    }

    /// Run `f` on the open store.
    fn with<T>(&self, f: impl FnOnce(&Store) -> Result<T, OutboxError>) -> Result<T, OutboxError> {
        let guard = self.store.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(store) => f(store),
            None => Err(OutboxError::Unavailable),
        }
    }

    /// Drop the store and recover it from disk (after an I/O error; see the type's docs).
    pub fn reopen(&self) -> Result<(), OutboxError> {
        let mut guard = self.store.write().unwrap_or_else(|e| e.into_inner());
        *guard = None; // the broken instance goes first: it holds the file lock
        let mut store = Store::open(&self.dir, self.cache_bytes)?;
        let endpoints: Vec<String> = self.queues.iter().map(|q| q.endpoint.clone()).collect();
        store.open_queues(&endpoints)?;
        let end = store.end()?;
        for (queue, (depth, bytes)) in self.queues.iter().zip(store.count()?) {
            queue.depth.store(depth, Ordering::Relaxed);
            queue.bytes.store(bytes, Ordering::Relaxed);
        }
        self.dead_depth
            .store(store.dead.len() as u64, Ordering::Relaxed);
        // Everything on disk now is durable; what was only in memory is gone.
        self.durable.fetch_max(end, Ordering::SeqCst);
        self.written
            .store(self.durable.load(Ordering::SeqCst), Ordering::SeqCst);
        *guard = Some(store);
        self.reopens.fetch_add(1, Ordering::SeqCst);
        drop(guard);
        self.notify_appended(); // delivery reads its queues again (see `reopens`)
        Ok(())
    }

    /// How many times the store was reopened. What a reader saw before a reopen may differ from
    /// what is on disk after it (removals that were lost with the broken instance, records its
    /// recovery brought back), so a reader that has moved through a queue reads it again from
    /// the start when this changes.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::SeqCst)
    }

    /// The fingerprints of the messages applied in the last batches before this start.
    pub fn applied_before(&self) -> Vec<u64> {
        let read = |s: &Store| {
            let mut all = Vec::new();
            for n in 0..APPLIED_BATCHES {
                if let Some(v) = s.meta.get(format!("{APPLIED}.{n}"))? {
                    all.extend(
                        v.chunks_exact(8)
                            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))),
                    );
                }
            }
            Ok(all)
        };
        self.with(read).unwrap_or_default()
    }

    /// Every persisted device state (read once at start).
    pub fn devices(&self) -> Result<Vec<(String, DeviceState)>, OutboxError> {
        self.with(|s| load_states(&s.devices, "device"))
    }

    /// Every persisted workspace state (read once at start).
    pub fn workspaces(&self) -> Result<Vec<(String, WorkspaceState)>, OutboxError> {
        self.with(|s| load_states(&s.workspaces, "workspace"))
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
        let mut dropped = vec![0u64; self.queues.len()];
        for env in batch.iter().flat_map(|c| &c.envelopes) {
            let wanted =
                (0..self.routes.len()).filter(|&i| (self.routes[i].wants)(env.kind.as_str()));
            let mut queues = Vec::new();
            let mut any = false;
            for i in wanted {
                any = true;
                if refused.get(i).copied().unwrap_or(false) {
                    dropped[i] += 1;
                } else {
                    queues.push(i);
                }
            }
            if !any {
                unrouted += 1;
            }
            if !queues.is_empty() {
                records.push((store.db.generate_id()?, encode(env), queues));
            }
        }
        let devices = encode_states(batch.iter().flat_map(|c| &c.devices));
        let workspaces = encode_states(batch.iter().flat_map(|c| &c.workspaces));
        let written = Written {
            queued: records.len(),
            unrouted,
            dropped,
        };
        let missed = written.dropped.iter().any(|&n| n > 0);
        if records.is_empty() && devices.is_empty() && workspaces.is_empty() && !missed {
            return Ok(written);
        }
        // Events first, then the states they came from, all in this one task (so in log
        // order): see invariant 1 for why this order, not a transaction, keeps them together.
        for (seq, bytes, queues) in &records {
            for &q in queues {
                store.queues[q].insert(seq.to_be_bytes(), bytes.as_slice())?;
            }
        }
        for (id, bytes) in &devices {
            store.devices.insert(id.as_bytes(), bytes.as_slice())?;
        }
        for (id, bytes) in &workspaces {
            store.workspaces.insert(id.as_bytes(), bytes.as_slice())?;
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
            let n = self.batches.fetch_add(1, Ordering::Relaxed) % APPLIED_BATCHES;
            store.meta.insert(format!("{APPLIED}.{n}"), fingerprints)?;
        }
        for (queue, n) in self.queues.iter().zip(&written.dropped) {
            if *n > 0 {
                let total = queue.dropped.load(Ordering::Relaxed) + n;
                let key = meta_key(&queue.endpoint, DROPPED);
                store
                    .meta
                    .insert(key, serde_json::to_vec(&total).expect("a number"))?;
            }
        }
        for (_, bytes, queues) in &records {
            for &q in queues {
                self.queues[q].depth.fetch_add(1, Ordering::Relaxed);
                self.queues[q]
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        }
        if let Some((last, _, _)) = records.last() {
            self.written.fetch_max(*last + 1, Ordering::SeqCst);
        }
        Ok(written)
    }

    /// Make everything written so far durable, and visible to delivery.
    pub async fn flush(&self) -> Result<(), OutboxError> {
        let written = self.written.load(Ordering::SeqCst);
        // A clone of the handle for the await (a lock guard must not be held across it); only
        // the writer task flushes, and it is also the one that reopens, so no clone outlives
        // a flush into a reopen.
        let (db, sync) = self.with(|s| Ok((s.db.clone(), s.sync.clone())))?;
        db.flush_async().await?;
        drop(db);
        tokio::task::spawn_blocking(move || sync.sync())
            .await
            .map_err(|e| io_error(std::io::Error::other(e)))?
            .map_err(io_error)?;
        self.durable.fetch_max(written, Ordering::SeqCst);
        Ok(())
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
        self.with(|s| {
            s.queues[queue.0]
                .range(from.to_be_bytes()..durable.to_be_bytes())
                .take(limit)
                .map(|kv| {
                    let (k, v) = kv?;
                    decode(seq_of(&k)?, &v)
                })
                .collect()
        })
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
        self.with(|s| {
            let mut got = Vec::new();
            let range = s.queues[queue.0].range(from.to_be_bytes()..=end.to_be_bytes());
            for (scanned, kv) in range.enumerate() {
                let (k, v) = kv?;
                let seq = seq_of(&k)?;
                if scanned >= SCAN {
                    return Ok((got, Some(seq)));
                }
                if record_lane(&v) != Some(lane.as_bytes()) {
                    continue;
                }
                if got.len() >= limit {
                    return Ok((got, Some(seq)));
                }
                got.push(decode(seq, &v)?);
            }
            Ok((got, None))
        })
    }

    /// Whether `seq`, loaded for delivery, was dropped from `queue` to make room since. Only
    /// [`Outbox::drop_oldest_readings`] takes a record out early, so until it has run this is
    /// false without a lookup. False when that cannot be read: the caller then goes ahead, and
    /// at worst delivers a dropped reading.
    pub fn was_dropped(&self, queue: QueueId, seq: u64) -> bool {
        self.dropped_any.load(Ordering::Relaxed)
            && self
                .with(|s| Ok(!s.queues[queue.0].contains_key(seq.to_be_bytes())?))
                .unwrap_or(false)
    }

    /// Forget a delivered record. True if it was there.
    pub fn remove(&self, queue: QueueId, seq: u64) -> Result<bool, OutboxError> {
        let removed = self.with(|s| Ok(s.queues[queue.0].remove(seq.to_be_bytes())?))?;
        if let Some(record) = &removed {
            self.forget(queue, record.len());
        }
        Ok(removed.is_some())
    }

    /// Count a record out of `queue`.
    fn forget(&self, queue: QueueId, bytes: usize) {
        let q = &self.queues[queue.0];
        q.depth.fetch_sub(1, Ordering::Relaxed);
        q.bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    /// Give up on `seq` in `queue`: move it to `dead` with `info`, in one transaction. False if
    /// it was not pending (already delivered or buried).
    pub fn bury(&self, queue: QueueId, seq: u64, info: &DeadInfo) -> Result<bool, OutboxError> {
        let info_json = serde_json::to_vec(info).expect("plain data serialises");
        let key = seq.to_be_bytes();
        let dead_key = dead_key(seq, &self.queues[queue.0].endpoint);
        let moved = self.with(|s| {
            (&s.queues[queue.0], &s.dead)
                .transaction(|(ev, dead)| {
                    let Some(record) = ev.remove(&key)? else {
                        return Ok(None);
                    };
                    let mut value = Vec::with_capacity(5 + info_json.len() + record.len());
                    value.push(RECORD_VERSION);
                    value.extend_from_slice(&(info_json.len() as u32).to_be_bytes());
                    value.extend_from_slice(&info_json);
                    value.extend_from_slice(&record);
                    dead.insert(dead_key.as_slice(), value)?;
                    Ok::<_, ConflictableTransactionError<()>>(Some(record.len()))
                })
                .map_err(storage_error)
        })?;
        if let Some(bytes) = moved {
            self.forget(queue, bytes);
            self.dead_depth.fetch_add(1, Ordering::Relaxed);
        }
        Ok(moved.is_some())
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
    /// keeping its event id. False if there is no such dead letter. Flushes.
    pub async fn revive(&self, endpoint: &str, seq: u64) -> Result<bool, OutboxError> {
        let key = dead_key(seq, endpoint);
        let queue = self.queue(endpoint).ok_or(OutboxError::Corrupt {
            seq,
            why: "the dead letter's endpoint has no queue",
        })?;
        let (new_seq, revived) = self.with(|s| {
            let new_seq = s.db.generate_id()?;
            let revived = (&s.queues[queue.0], &s.dead)
                .transaction(|(ev, dead)| {
                    let Some(value) = dead.remove(key.as_slice())? else {
                        return Ok(None);
                    };
                    let record =
                        dead_record_bytes(&value).ok_or(ConflictableTransactionError::Abort(()))?;
                    ev.insert(&new_seq.to_be_bytes(), record)?;
                    Ok(Some(record.len()))
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
        if let Some(bytes) = revived {
            let q = &self.queues[queue.0];
            q.depth.fetch_add(1, Ordering::Relaxed);
            q.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            self.dead_depth.fetch_sub(1, Ordering::Relaxed);
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
                        s.dead.remove(k)?;
                        self.dead_depth.fetch_sub(1, Ordering::Relaxed);
                        n += 1;
                    }
                }
                return Ok(n);
            }
            for (tree, queue) in s.queues.iter().zip(self.queues.iter()) {
                if !chosen(&queue.endpoint) {
                    continue;
                }
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
            let (mut dropped, mut freed) = (0, 0u64);
            let tree = &s.queues[queue.0];
            // The readings among the oldest records: (key, size, lane), oldest first.
            let mut readings = Vec::new();
            for kv in tree.iter().take(SCAN) {
                let (k, v) = kv?;
                if record_kind(&v) == Some(reading) {
                    readings.push((k, v.len(), record_lane(&v).unwrap_or_default().to_vec()));
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
                    self.dropped_any.store(true, Ordering::Relaxed);
                    self.forget(queue, *len);
                    dropped += 1;
                    freed += *len as u64;
                }
            }
            if dropped > 0 {
                // What the endpoint will never get is counted with it, in the same log as the
                // removals (so a crash keeps both or neither).
                let q = &self.queues[queue.0];
                let total = q.dropped.fetch_add(dropped as u64, Ordering::Relaxed) + dropped as u64;
                s.meta.insert(
                    meta_key(&q.endpoint, DROPPED),
                    serde_json::to_vec(&total).expect("a number"),
                )?;
            }
            Ok(dropped)
        })
    }

    /// Bytes of the records waiting in `queue`.
    pub fn queue_bytes(&self, queue: QueueId) -> u64 {
        self.queues[queue.0].bytes.load(Ordering::Relaxed)
    }

    /// Say whether delivery takes records out of `queue` (false while its endpoint is
    /// disabled); a queue that does not drain never holds the others back when full.
    pub fn set_draining(&self, queue: QueueId, draining: bool) {
        self.queues[queue.0]
            .draining
            .store(draining, Ordering::Relaxed);
    }

    pub fn is_draining(&self, queue: QueueId) -> bool {
        self.queues[queue.0].draining.load(Ordering::Relaxed)
    }

    /// Events `queue` will never get because its share was full, ever (see [`DROPPED`]).
    pub fn dropped_for(&self, queue: QueueId) -> u64 {
        self.queues[queue.0].dropped.load(Ordering::Relaxed)
    }

    /// About how many bytes `batch` adds to each queue (in the order of [`Outbox::queues`]).
    fn needs(&self, batch: &[Commit]) -> Vec<u64> {
        let mut needs = vec![0u64; self.queues.len()];
        for env in batch.iter().flat_map(|c| &c.envelopes) {
            for (i, route) in self.routes.iter().enumerate() {
                if (route.wants)(env.kind.as_str()) {
                    needs[i] += size_of(env);
                }
            }
        }
        needs
    }

    /// Set the gauges read off the store (at scrape time): events and bytes held, dead letters,
    /// and per queue its pending events and the age of its oldest.
    pub fn observe(&self, metrics: &Metrics) {
        metrics.set_outbox_depth(self.len() as u64);
        metrics.set_outbox_held(self.bytes(), self.dead_len() as u64);
        for (queue, endpoint, _) in self.queues() {
            let age = self
                .oldest(queue)
                .ok()
                .flatten()
                .and_then(|r| crate::event::created_at(&r.id))
                .and_then(|t| t.elapsed().ok())
                .map_or(0, |d| d.as_millis() as u64);
            metrics
                .endpoint(endpoint)
                .set_pending(self.queue_len(queue) as u64, age);
        }
    }

    /// Dead letters kept.
    pub fn dead_len(&self) -> usize {
        self.dead_depth.load(Ordering::Relaxed) as usize
    }

    /// The oldest pending record of `queue`, if any.
    pub fn oldest(&self, queue: QueueId) -> Result<Option<OutboxRecord>, OutboxError> {
        self.with(|s| match s.queues[queue.0].first()? {
            Some((k, v)) => Ok(Some(decode(seq_of(&k)?, &v)?)),
            None => Ok(None),
        })
    }

    /// A small persisted fact (`meta` tree), as JSON.
    pub fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let bytes = self.with(|s| Ok(s.meta.get(key)?)).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Set (or with `None`, clear) a `meta` fact. Not flushed by itself.
    pub fn set_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: Option<&T>,
    ) -> Result<(), OutboxError> {
        match value {
            Some(v) => {
                let bytes = serde_json::to_vec(v).expect("plain data serialises");
                self.with(|s| Ok(s.meta.insert(key, bytes)?))?;
            }
            None => {
                self.with(|s| Ok(s.meta.remove(key)?))?;
            }
        }
        Ok(())
    }

    /// Records waiting for delivery, in all queues.
    pub fn len(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.depth.load(Ordering::Relaxed) as usize)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records waiting in `queue`.
    pub fn queue_len(&self, queue: QueueId) -> usize {
        self.queues[queue.0].depth.load(Ordering::Relaxed) as usize
    }

    /// Bytes of the records waiting, in all queues.
    pub fn bytes(&self) -> u64 {
        self.queues
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
        self.queues[queue.0].appended.notified().await
    }

    /// Wake the delivery of every queue: new records are durable.
    fn notify_appended(&self) {
        for q in self.queues.iter() {
            q.appended.notify_one();
        }
    }
}

/// The `meta` key of `fact` about `endpoint`: `endpoint.<fact>` for `default` (as before there
/// were several endpoints), `endpoint.<name>.<fact>` for the others.
pub fn meta_key(endpoint: &str, fact: &str) -> String {
    if endpoint == DEFAULT_ENDPOINT {
        format!("endpoint.{fact}")
    } else {
        format!("endpoint.{endpoint}.{fact}")
    }
}

/// `meta` keys `applied.0` … `applied.3`: the fingerprints (8 bytes each) of the transport
/// messages applied in each of the last batches, written with the batch, so that a restart
/// recognises their redeliveries (`source::redelivery`).
const APPLIED: &str = "applied";
const APPLIED_BATCHES: u64 = 4;

/// The `meta` fact counting the events an endpoint will never get because its share of the
/// outbox was full: new events while it could not drain, or its oldest readings deleted by
/// `on_full = drop_oldest_readings` (see [`run_writer`]).
pub const DROPPED: &str = "dropped";

/// The marker file beside the store naming its id (see `Store::check_identity`).
const IDENTITY_FILE: &str = "outbox.id";
const STORE_ID_KEY: &str = "store_id";

/// Write `id` to `path` durably (temporary file, fsync, rename).
fn write_marker(path: &Path, id: &str) -> Result<(), OutboxError> {
    use std::io::Write;
    let tmp = path.with_extension("id.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io_error)?;
    file.write_all(id.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    std::fs::rename(&tmp, path).map_err(io_error)?;
    sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(io_error)
}

fn io_error(e: std::io::Error) -> OutboxError {
    OutboxError::Storage(sled::Error::Io(e))
}

/// sled's flush writes its log with `sync_file_range`, which neither flushes the drive's
/// volatile write cache (an SD card's, a USB stick's) nor the file's size, and fsyncs only
/// once a second from a background thread; values over 128 KiB go to files of their own in
/// `blobs/` that it never syncs. That is enough against `kill -9` but not against a power cut.
/// So after each flush the log is `fdatasync`ed here, with any blob file written since and
/// the directory naming it: only then is a batch durable and its messages acknowledged.
struct SyncFiles {
    log: std::fs::File,
    blobs: PathBuf,
    /// Blob files already synced.
    synced: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

impl SyncFiles {
    /// For the sled database in `dir` (already open, so its files exist).
    fn open(dir: &Path) -> Result<SyncFiles, OutboxError> {
        let log = std::fs::File::open(dir.join("db")).map_err(io_error)?;
        // The files sled created at open, and the directories naming them.
        if let Ok(conf) = std::fs::File::open(dir.join("conf")) {
            conf.sync_all().map_err(io_error)?;
        }
        log.sync_all().map_err(io_error)?;
        sync_dir(dir).map_err(io_error)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(io_error)?;
        }
        Ok(SyncFiles {
            log,
            blobs: dir.join("blobs"),
            synced: Default::default(),
        })
    }

    fn sync(&self) -> std::io::Result<()> {
        self.log.sync_data()?;
        let Ok(entries) = std::fs::read_dir(&self.blobs) else {
            return Ok(()); // no blobs yet
        };
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let mut present = std::collections::HashSet::new();
        let mut new = false;
        for entry in entries {
            let name = entry?.file_name();
            if !synced.contains(&name) {
                // A blob sled has already deleted again is nothing to keep.
                match std::fs::File::open(self.blobs.join(&name)) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            sync_dir(&self.blobs)?;
        }
        *synced = present;
        Ok(())
    }
}

/// fsync a directory, so that the entries created in it survive a power cut.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Why delivery gave up on an event; kept with it in the `dead` tree.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadInfo {
    /// Failed attempts (since the daemon last started).
    pub attempts: u32,
    /// The last HTTP status, if the receiver answered at all.
    pub last_status: Option<u16>,
    pub last_error: String,
    /// When it was given up on, Unix milliseconds.
    pub dead_at: u64,
    /// Which limit: `max_attempts` or `max_age`.
    pub reason: String,
}

fn storage_error(e: TransactionError<()>) -> OutboxError {
    match e {
        TransactionError::Storage(e) => OutboxError::Storage(e),
        TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
    }
}

/// The record bytes inside a dead-letter value.
fn dead_record_bytes(value: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(value.get(1..5)?.try_into().ok()?) as usize;
    value.get(5 + len..)
}

fn decode_dead(key: &[u8], value: &[u8]) -> Result<DeadLetter, OutboxError> {
    let seq = seq_of(key.get(..8).unwrap_or(key))?;
    let endpoint = match &key[8..] {
        [] => DEFAULT_ENDPOINT.to_string(),
        name => String::from_utf8_lossy(name).into_owned(),
    };
    let corrupt = |why| OutboxError::Corrupt { seq, why };
    if value.first() != Some(&RECORD_VERSION) {
        return Err(corrupt("unknown dead-letter version"));
    }
    let len = u32::from_be_bytes(
        value
            .get(1..5)
            .ok_or(corrupt("truncated"))?
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let info = value.get(5..5 + len).ok_or(corrupt("truncated"))?;
    let info: DeadInfo =
        serde_json::from_slice(info).map_err(|_| corrupt("dead-letter info is not JSON"))?;
    let record = decode(seq, dead_record_bytes(value).ok_or(corrupt("truncated"))?)?;
    Ok(DeadLetter {
        endpoint,
        record,
        info,
    })
}

/// JSON-encode states for writing; a later state of the same key replaces an earlier one.
fn encode_states<'a, T: serde::Serialize + 'a>(
    states: impl Iterator<Item = &'a (String, T)>,
) -> Vec<(&'a str, Vec<u8>)> {
    states
        .map(|(id, s)| {
            (
                id.as_str(),
                serde_json::to_vec(s).expect("plain state serialises"),
            )
        })
        .collect()
}

fn load_states<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    what: &'static str,
) -> Result<Vec<(String, T)>, OutboxError> {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let state = serde_json::from_slice(&v).map_err(|e| OutboxError::CorruptState {
                tree: what,
                key: key.clone(),
                why: e.to_string(),
            })?;
            Ok((key, state))
        })
        .collect()
}

fn seq_of(key: &[u8]) -> Result<u64, OutboxError> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| OutboxError::Corrupt {
            seq: 0,
            why: "key is not 8 bytes",
        })
}

fn encode(env: &Envelope) -> Vec<u8> {
    let kind = env.kind.as_str().as_bytes();
    let mut out =
        Vec::with_capacity(4 + kind.len() + env.lane.len() + env.id.len() + env.body.len());
    out.push(RECORD_VERSION);
    out.push(kind.len() as u8);
    out.extend_from_slice(kind);
    let lane = env.lane.as_bytes();
    let lane_len = lane.len().min(u16::MAX as usize);
    out.extend_from_slice(&(lane_len as u16).to_be_bytes());
    out.extend_from_slice(&lane[..lane_len]);
    out.push(env.id.len() as u8);
    out.extend_from_slice(env.id.as_bytes());
    out.extend_from_slice(&env.body);
    out
}

/// The event type of an encoded record, without decoding the rest.
fn record_kind(bytes: &[u8]) -> Option<&[u8]> {
    let len = *bytes.get(1)? as usize;
    bytes.get(2..2 + len)
}

/// The lane of an encoded record, without decoding the rest.
fn record_lane(bytes: &[u8]) -> Option<&[u8]> {
    let at = 2 + *bytes.get(1)? as usize;
    let len = u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as usize;
    bytes.get(at + 2..at + 2 + len)
}

fn decode(seq: u64, bytes: &[u8]) -> Result<OutboxRecord, OutboxError> {
    let corrupt = |why| OutboxError::Corrupt { seq, why };
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], OutboxError> {
        if rest.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    if take(1)?[0] != RECORD_VERSION {
        return Err(corrupt("unknown record version"));
    }
    let kind_len = take(1)?[0] as usize;
    let kind = std::str::from_utf8(take(kind_len)?)
        .map_err(|_| corrupt("type is not UTF-8"))?
        .to_string();
    let lane_len = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
    let lane = std::str::from_utf8(take(lane_len)?)
        .map_err(|_| corrupt("lane is not UTF-8"))?
        .to_string();
    let id_len = take(1)?[0] as usize;
    let id = std::str::from_utf8(take(id_len)?)
        .map_err(|_| corrupt("id is not UTF-8"))?
        .to_string();
    Ok(OutboxRecord {
        seq,
        id,
        kind,
        lane,
        body: rest.to_vec(),
    })
}

/// The outbox writer task: group incoming commits into batches, make room for each within
/// each queue's share of `outbox.max_size`, write it, flush, then send the batch's acks. Ends
/// when the device stage has gone, after writing and flushing everything it sent.
///
/// # Shares
/// Each queue (endpoint) may hold `max_size / queues` bytes, so no endpoint can take the space
/// of another. When a batch does not fit in a queue's share:
/// - a queue that drains (its endpoint is active and not disabled) applies `on_full`:
///   back-pressure (the batch waits, unacknowledged, until delivery frees space) or dropping
///   that queue's readings (superseded ones first, then the oldest);
/// - a queue that cannot drain (disabled by a 410, inactive, no longer configured) would wait
///   for ever and hold every other endpoint and every ack with it, so the batch's events are
///   not stored *for that endpoint only*: counted ([`DROPPED`], `edgehook_endpoint_dropped_total`,
///   `outbox status`) and logged, never silently. The other endpoints get them as usual.
pub async fn run_writer(
    outbox: Outbox,
    mut commits: mpsc::Receiver<Commit>,
    config: OutboxConfig,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut batch: Vec<Commit> = Vec::with_capacity(config.batch_max);
    let mut full = FullLog::new(outbox.queues.len());
    // A batch stays well under a share, so that room for it can always be made.
    let max_batch_bytes = (config.max_size / outbox.queues.len().max(1) as u64 / 8).max(1);
    while let Some(first) = commits.recv().await {
        let mut bytes = commit_size(&first);
        batch.push(first);
        // Group commit: gather what arrives within `commit_delay` of the first, up to the caps.
        let deadline = tokio::time::Instant::now() + config.commit_delay;
        while batch.len() < config.batch_max && bytes < max_batch_bytes {
            let next = match commits.try_recv() {
                Ok(c) => c,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, commits.recv()).await {
                        Ok(Some(c)) => c,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            bytes += commit_size(&next);
            batch.push(next);
        }
        let refused = make_room(&outbox, &batch, &config, &metrics, &cancel, &mut full).await;
        let written = persist(&outbox, &batch, &refused, &metrics).await;
        metrics.unrouted(written.unrouted as u64);
        for (queue, n) in outbox.queues.iter().zip(&written.dropped) {
            if *n > 0 {
                queue.dropped.fetch_add(*n, Ordering::Relaxed);
                metrics.endpoint(&queue.endpoint).dropped(*n);
            }
        }
        for commit in batch.drain(..) {
            for env in &commit.envelopes {
                metrics.event_created(env.kind);
            }
            if let Some(ack) = commit.ack {
                ack.send();
            }
        }
        if written.queued > 0 {
            outbox.notify_appended();
        }
        metrics.set_outbox_depth(outbox.len() as u64);
    }
    if let Err(e) = outbox.flush().await {
        tracing::error!(error = %e, "final outbox flush failed");
    }
    tracing::debug!("outbox writer drained");
}

/// About how many bytes one event takes in one queue.
fn size_of(env: &Envelope) -> u64 {
    (env.body.len() + env.lane.len() + env.id.len() + 32) as u64
}

/// About how many bytes `commit`'s events take in one queue.
fn commit_size(commit: &Commit) -> u64 {
    commit.envelopes.iter().map(size_of).sum()
}

/// How the writer last reported each full queue: one line when it fills, one when it has room.
struct FullLog {
    /// Per queue: since when it is full, and what was dropped meanwhile.
    full: Vec<Option<(std::time::Instant, u64)>>,
}

impl FullLog {
    fn new(queues: usize) -> FullLog {
        FullLog {
            full: vec![None; queues],
        }
    }
}

/// Make room for `batch` in the share of every queue it goes to (see [`run_writer`]): wait
/// (back-pressure), or drop that queue's oldest readings (`on_full = drop_oldest_readings`),
/// for queues that drain; for queues that cannot drain, mark them refused. Returns, per queue,
/// whether the batch's events are left out of it. A queue's share gives way when the queue is
/// empty (one message larger than it is still written) and at shutdown (what the device stage
/// already made is kept).
async fn make_room(
    outbox: &Outbox,
    batch: &[Commit],
    config: &OutboxConfig,
    metrics: &Metrics,
    cancel: &CancellationToken,
    log: &mut FullLog,
) -> Vec<bool> {
    let needs = outbox.needs(batch);
    let share = config.max_size / outbox.queues.len().max(1) as u64;
    let mut refused = vec![false; needs.len()];
    loop {
        let mut waiting = false;
        for (i, &needed) in needs.iter().enumerate() {
            let queue = QueueId(i);
            let used = outbox.queue_bytes(queue);
            let fits = needed == 0 || used + needed <= share || outbox.queue_len(queue) == 0;
            if fits || cancel.is_cancelled() {
                refused[i] = false;
                continue;
            }
            let name = &outbox.queues[i].endpoint;
            let draining = outbox.is_draining(queue);
            if log.full[i].is_none() {
                log.full[i] = Some((std::time::Instant::now(), 0));
                if draining {
                    let policy = match config.on_full {
                        OnFull::Backpressure => "holding new messages unacknowledged until delivery frees space (back-pressure; the broker keeps them)",
                        OnFull::DropOldestReadings => "dropping its sensor readings to make room, superseded ones first (on_full = drop_oldest_readings)",
                    };
                    tracing::error!(endpoint = %name, used_bytes = used, share_bytes = share, pending = outbox.queue_len(queue), "outbox FULL for endpoint `{name}`: {policy}");
                } else {
                    tracing::error!(endpoint = %name, used_bytes = used, share_bytes = share, pending = outbox.queue_len(queue), "outbox share FULL: endpoint `{name}` cannot drain (disabled, inactive or removed), so its new events are DROPPED for it alone (counted in edgehook_endpoint_dropped_total and `edgehook outbox status`); other endpoints still get them. Re-enable or purge it to stop this");
                }
            }
            if !draining {
                refused[i] = true;
                continue;
            }
            if config.on_full == OnFull::DropOldestReadings {
                match outbox.drop_oldest_readings(queue, used + needed - share) {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics.dropped(n as u64);
                        metrics.endpoint(name).dropped(n as u64);
                        if let Some((_, dropped)) = &mut log.full[i] {
                            *dropped += n as u64;
                        }
                        if outbox.queue_bytes(queue) + needed <= share {
                            continue;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot drop old readings"),
                }
            }
            waiting = true;
        }
        metrics.set_outbox_full(waiting);
        if !waiting {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = cancel.cancelled() => {}
        }
    }
    for (i, &needed) in needs.iter().enumerate() {
        let queue = QueueId(i);
        let room = outbox.queue_bytes(queue) + needed <= share || outbox.queue_len(queue) == 0;
        if let (true, Some((since, dropped))) = (room && !refused[i], log.full[i]) {
            tracing::warn!(
                endpoint = %outbox.queues[i].endpoint,
                full_for = %humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                dropped_readings = dropped,
                "outbox has room again"
            );
            log.full[i] = None;
        }
    }
    refused
}

/// Write and flush one batch, retrying until it is durable.
async fn persist(
    outbox: &Outbox,
    batch: &[Commit],
    refused: &[bool],
    metrics: &Metrics,
) -> Written {
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u64;
    loop {
        let started = std::time::Instant::now();
        let result = match outbox.write(batch, refused) {
            Ok(w) if w.queued == 0 && !batch.iter().any(|c| c.sync) => Ok(w),
            Ok(w) => outbox.flush().await.map(|()| w),
            Err(e) => Err(e),
        };
        match result {
            Ok(w) => {
                if w.queued > 0 || batch.iter().any(|c| c.sync) {
                    metrics.outbox_committed(started.elapsed());
                }
                if failures > 0 {
                    tracing::info!(failures, "outbox writable again; resuming");
                    outbox.writable.store(true, Ordering::Relaxed);
                }
                return w;
            }
            Err(e) => {
                failures += 1;
                metrics.outbox_write_failed();
                outbox.writable.store(false, Ordering::Relaxed);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::error!(
                        error = %e,
                        failures,
                        "cannot write the outbox; holding {} messages unacknowledged and retrying (back-pressure, nothing is dropped)",
                        batch.len()
                    );
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                // sled refuses everything after an I/O error: start again from what is on disk.
                if let Err(e) = outbox.reopen() {
                    tracing::debug!(error = %e, "outbox not reopened yet");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use std::time::SystemTime;

    const Q0: QueueId = QueueId(0);

    fn route(endpoint: &str, prefix: &'static str) -> Route {
        Route {
            endpoint: endpoint.into(),
            wants: Arc::new(move |kind: &str| kind.starts_with(prefix)),
        }
    }

    /// One endpoint, `default`, taking every event.
    fn everything() -> Vec<Route> {
        vec![route(DEFAULT_ENDPOINT, "")]
    }

    /// Open the store again once the dropped handle's last flush has let go of sled's file
    /// lock (its flush thread may hold the store a moment after the handle is gone).
    fn open_when_released(dir: &Path, routes: fn() -> Vec<Route>) -> Outbox {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match Outbox::open(dir, 1 << 20, routes()) {
                Ok(ob) => return ob,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("lock") =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn reading(device: &str) -> Envelope {
        let mut fields = serde_json::Map::new();
        fields.insert("t".into(), 21.into());
        let event = Event::device(EventType::SensorReadingUpdated, device, fields);
        Envelope::seal(&event, "gw", SystemTime::now())
    }

    fn envelope(device: &str) -> Envelope {
        Envelope::seal(
            &Event::device(EventType::DeviceOnline, device, Default::default()),
            "gw",
            SystemTime::now(),
        )
    }

    #[test]
    fn records_round_trip() {
        let env = envelope("occ-1");
        let rec = decode(7, &encode(&env)).unwrap();
        assert_eq!(rec.seq, 7);
        assert_eq!(rec.id, env.id);
        assert_eq!(rec.kind, "device.online");
        assert_eq!(rec.lane, "device:occ-1");
        assert_eq!(rec.body, env.body);
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let bytes = encode(&envelope("d"));
        for cut in 0..20 {
            assert!(decode(1, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert!(matches!(
            decode(1, &wrong),
            Err(OutboxError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn delivery_sees_only_flushed_records() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), 1 << 20, everything()).unwrap();
        let commit = || Commit {
            envelopes: vec![envelope("d")],
            ..Default::default()
        };
        ob.write(&[commit()], &[]).unwrap();
        assert!(
            ob.pending_after(Q0, None, 10).unwrap().is_empty(),
            "written, not flushed: invisible"
        );
        ob.flush().await.unwrap();
        let first = ob.pending_after(Q0, None, 10).unwrap();
        assert_eq!(first.len(), 1);
        ob.write(&[commit()], &[]).unwrap();
        assert!(ob
            .pending_after(Q0, Some(first[0].seq), 10)
            .unwrap()
            .is_empty());
        ob.flush().await.unwrap();
        assert_eq!(
            ob.pending_after(Q0, Some(first[0].seq), 10).unwrap().len(),
            1
        );
        assert_eq!(ob.pending_after(Q0, None, 10).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_event_too_large_for_the_log_goes_to_a_synced_blob_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut fields = serde_json::Map::new();
        fields.insert("image".into(), "x".repeat(200 * 1024).into());
        let big = Envelope::seal(
            &Event::device(EventType::SensorReadingUpdated, "cam-1", fields),
            "gw",
            SystemTime::now(),
        );
        let body = big.body.clone();
        {
            let ob = Outbox::open(dir.path(), 1 << 20, everything()).unwrap();
            ob.write(
                &[Commit {
                    envelopes: vec![big],
                    ..Default::default()
                }],
                &[],
            )
            .unwrap();
            ob.flush().await.unwrap();
            let blobs: Vec<_> = std::fs::read_dir(dir.path().join("outbox.sled/blobs"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(
                !blobs.is_empty(),
                "sled keeps a value this large in a blob file"
            );
            let synced = ob
                .with(|s| Ok(s.sync.synced.lock().unwrap().clone()))
                .unwrap();
            for blob in &blobs {
                assert!(synced.contains(blob), "blob {blob:?} was not synced");
            }
        }
        let ob = Outbox::open(dir.path(), 1 << 20, everything()).unwrap();
        let pending = ob.pending_after(Q0, None, 10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].body, body);
    }

    #[tokio::test]
    async fn batches_survive_reopen_in_order_and_removal_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String>;
        {
            let ob = Outbox::open(dir.path(), 1 << 20, everything()).unwrap();
            let commits: Vec<Commit> = (0..5)
                .map(|i| Commit {
                    envelopes: vec![envelope(&format!("d{i}"))],
                    devices: vec![(
                        format!("d{i}"),
                        DeviceState {
                            health: crate::device::Health::Online,
                            ..Default::default()
                        },
                    )],
                    workspaces: vec![(format!("w{}", i % 2), WorkspaceState::default())],
                    sync: true,
                    ack: None,
                })
                .collect();
            ids = commits.iter().map(|c| c.envelopes[0].id.clone()).collect();
            assert_eq!(ob.write(&commits, &[]).unwrap().queued, 5);
            ob.flush().await.unwrap();
            assert_eq!(ob.len(), 5);
            let first = ob.pending_after(Q0, None, 1).unwrap();
            assert!(ob.remove(Q0, first[0].seq).unwrap());
            assert!(!ob.remove(Q0, first[0].seq).unwrap()); // removing twice counts once
            assert_eq!(ob.len(), 4);
            ob.flush().await.unwrap();
        }
        let ob = Outbox::open(dir.path(), 1 << 20, everything()).unwrap();
        assert_eq!(ob.len(), 4, "depth is recounted at open");
        let pending = ob.pending_after(Q0, None, 100).unwrap();
        let got: Vec<String> = pending.iter().map(|r| r.id.clone()).collect();
        assert_eq!(got, ids[1..], "removed record gone, others in order");
        let after = ob.pending_after(Q0, Some(pending[1].seq), 100).unwrap();
        assert_eq!(after.len(), 2);
        assert_eq!(ob.devices().unwrap().len(), 5);
        assert_eq!(ob.workspaces().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn each_endpoint_has_its_own_queue_dead_letters_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let routes = vec![route(DEFAULT_ENDPOINT, ""), route("crm", "device.")];
        let ob = Outbox::open(dir.path(), 1 << 20, routes.clone()).unwrap();
        let (all, crm) = (ob.queue("default").unwrap(), ob.queue("crm").unwrap());
        let commit = Commit {
            envelopes: vec![envelope("d1"), reading("d1"), envelope("d2")],
            ..Default::default()
        };
        assert_eq!(ob.write(&[commit], &[]).unwrap().queued, 3);
        ob.flush().await.unwrap();
        assert_eq!((ob.queue_len(all), ob.queue_len(crm), ob.len()), (3, 2, 5));
        let crm_records = ob.pending_after(crm, None, 10).unwrap();
        assert!(crm_records.iter().all(|r| r.kind == "device.online"));
        // Delivered to crm only: still pending for default, under the same sequence number.
        ob.remove(crm, crm_records[0].seq).unwrap();
        assert_eq!(
            ob.pending_after(all, None, 10).unwrap()[0].seq,
            crm_records[0].seq
        );
        // A dead letter belongs to its endpoint and is replayed into that queue only.
        let info = DeadInfo {
            attempts: 3,
            last_status: Some(500),
            last_error: "HTTP 500".into(),
            dead_at: 0,
            reason: "max_attempts".into(),
        };
        assert!(ob.bury(crm, crm_records[1].seq, &info).unwrap());
        assert!(ob.bury(all, crm_records[1].seq, &info).unwrap());
        let dead = ob.dead_letters(10).unwrap();
        let owners: Vec<&str> = dead.iter().map(|d| d.endpoint.as_str()).collect();
        assert_eq!(owners, ["default", "crm"]);
        assert!(ob.revive("crm", crm_records[1].seq).await.unwrap());
        assert_eq!(
            (ob.queue_len(all), ob.queue_len(crm), ob.dead_len()),
            (2, 1, 1)
        );
        assert_eq!(ob.purge(false, Some("crm")).await.unwrap(), 1);
        assert_eq!((ob.queue_len(all), ob.queue_len(crm)), (2, 0));
        assert_eq!(ob.purge(true, Some("default")).await.unwrap(), 1);
        assert_eq!(ob.dead_len(), 0);
        drop(ob);
        // Without `crm` configured its queue is still found (and kept), just not routed to.
        let ob = open_when_released(dir.path(), everything);
        let queues: Vec<(&str, bool)> = ob.queues().iter().map(|(_, e, r)| (*e, *r)).collect();
        assert_eq!(queues, [("default", true), ("crm", false)]);
        assert_eq!(ob.len(), 2);
    }

    #[tokio::test]
    async fn a_lane_reads_back_its_own_records_in_order_within_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), 1 << 20, everything()).unwrap();
        let commits: Vec<Commit> = (0..10)
            .map(|i| Commit {
                envelopes: vec![reading(if i % 3 == 0 { "a" } else { "b" })],
                ..Default::default()
            })
            .collect();
        ob.write(&commits, &[]).unwrap();
        let q = ob.queue(DEFAULT_ENDPOINT).unwrap();
        assert_eq!(
            ob.lane_records(q, "device:a", 0, 100, 10).unwrap().0,
            vec![],
            "not durable yet"
        );
        ob.flush().await.unwrap();
        let all = ob.pending_after(q, None, 100).unwrap();
        let a: Vec<u64> = all
            .iter()
            .filter(|r| r.lane == "device:a")
            .map(|r| r.seq)
            .collect();
        assert_eq!(a.len(), 4);
        let (got, rest) = ob.lane_records(q, "device:a", 0, 100, 2).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), a[..2]);
        assert_eq!(rest, Some(a[2]));
        let (got, rest) = ob.lane_records(q, "device:a", a[2], a[2], 5).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), a[2..3]);
        assert_eq!(rest, None, "through is inclusive and ends the range");
        assert_eq!(got[0], all.iter().find(|r| r.seq == a[2]).unwrap().clone());
    }

    /// The fingerprints of the messages of the last synced batches come back after a restart,
    /// so that the broker's redeliveries of them are recognised (`source::redelivery`).
    #[tokio::test]
    async fn the_last_batches_messages_are_remembered_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ob = Outbox::open(dir.path(), 1 << 20, everything()).unwrap();
            for batch in 0..6u64 {
                let commits: Vec<Commit> = (0..2)
                    .map(|i| Commit {
                        envelopes: vec![envelope("d")],
                        ack: Some(crate::source::Ack::with_fingerprint(batch * 10 + i, || {})),
                        ..Default::default()
                    })
                    .collect();
                ob.write(&commits, &[]).unwrap();
                ob.flush().await.unwrap();
            }
            // an unsynced batch (no events, no sync) records nothing
            let lazy = Commit {
                ack: Some(crate::source::Ack::with_fingerprint(99, || {})),
                ..Default::default()
            };
            ob.write(&[lazy], &[]).unwrap();
            ob.flush().await.unwrap();
        }
        let ob = Outbox::open(dir.path(), 1 << 20, everything()).unwrap();
        let mut got = ob.applied_before();
        got.sort();
        assert_eq!(
            got,
            [20, 21, 30, 31, 40, 41, 50, 51],
            "the last four batches"
        );
    }

    #[tokio::test]
    async fn an_event_no_endpoint_wants_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), 1 << 20, vec![route("crm", "device.")]).unwrap();
        let commit = Commit {
            envelopes: vec![reading("d1"), envelope("d1")],
            ..Default::default()
        };
        let written = ob.write(&[commit], &[]).unwrap();
        assert_eq!((written.queued, written.unrouted), (1, 1));
        assert_eq!(ob.len(), 1);
    }

    #[tokio::test]
    async fn a_refused_queue_misses_the_batch_and_counts_it_durably() {
        let dir = tempfile::tempdir().unwrap();
        let routes = || vec![route(DEFAULT_ENDPOINT, ""), route("ops", "")];
        {
            let ob = Outbox::open(dir.path(), 1 << 20, routes()).unwrap();
            let commit = Commit {
                envelopes: vec![reading("d1"), envelope("d2")],
                ..Default::default()
            };
            let written = ob.write(&[commit], &[false, true]).unwrap();
            assert_eq!((written.queued, written.unrouted), (2, 0));
            assert_eq!(written.dropped, [0, 2]);
            ob.flush().await.unwrap();
            let ops = ob.queue("ops").unwrap();
            assert_eq!((ob.queue_len(Q0), ob.queue_len(ops)), (2, 0));
            // as the writer does once the batch is durable
            ob.queues[ops.0].dropped.fetch_add(2, Ordering::Relaxed);
        }
        let ob = Outbox::open(dir.path(), 1 << 20, routes()).unwrap();
        assert_eq!(
            ob.dropped_for(ob.queue("ops").unwrap()),
            2,
            "kept across a restart"
        );
        assert_eq!(ob.dropped_for(Q0), 0);
    }

    /// Found by the randomized fault harness: dropping the oldest readings dropped a device's
    /// only — latest — reading while older readings of a busier device stayed, so upstream
    /// ended knowing a state the device had left. Readings a newer reading of the same device
    /// supersedes go first.
    #[tokio::test]
    async fn dropping_for_room_takes_superseded_readings_before_a_devices_latest() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), 1 << 20, everything()).unwrap();
        let envelopes = vec![
            reading("quiet"),
            reading("busy"),
            reading("busy"),
            reading("busy"),
        ];
        let commit = Commit {
            envelopes,
            ..Default::default()
        };
        ob.write(&[commit], &[]).unwrap();
        ob.flush().await.unwrap();
        let one = encode(&reading("busy")).len() as u64;
        assert_eq!(ob.drop_oldest_readings(Q0, one + 1).unwrap(), 2);
        let left: Vec<String> = ob
            .pending_after(Q0, None, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.lane)
            .collect();
        assert_eq!(left, [reading("quiet").lane, reading("busy").lane]);
        // With nothing superseded left, the oldest goes.
        assert_eq!(ob.drop_oldest_readings(Q0, 1).unwrap(), 1);
        assert_eq!(ob.len(), 1);
    }

    #[tokio::test]
    async fn dropping_for_room_takes_only_the_oldest_readings() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), 1 << 20, everything()).unwrap();
        let envelopes = vec![
            envelope("d0"),
            reading("d1"),
            envelope("d2"),
            reading("d3"),
            reading("d4"),
        ];
        let lanes: Vec<String> = envelopes.iter().map(|e| e.lane.clone()).collect();
        let commit = Commit {
            envelopes,
            ..Default::default()
        };
        ob.write(&[commit], &[]).unwrap();
        ob.flush().await.unwrap();
        let before = ob.bytes();
        // Room for a little more than one reading: the two oldest readings go.
        let one = encode(&reading("d9")).len() as u64;
        assert_eq!(ob.drop_oldest_readings(Q0, one + 1).unwrap(), 2);
        let left: Vec<String> = ob
            .pending_after(Q0, None, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.lane)
            .collect();
        assert_eq!(left, [lanes[0].clone(), lanes[2].clone(), lanes[4].clone()]);
        assert!(ob.bytes() < before);
        // Only health events left besides one reading: asking for more drops just that one.
        assert_eq!(ob.drop_oldest_readings(Q0, u64::MAX).unwrap(), 1);
        assert_eq!(ob.len(), 2);
    }
}
