//! Outbox: the durable queue between the device stage and delivery (sled).
//!
//! # Layout
//! One sled database in the state directory, with two trees:
//!
//! - `outbox`: key = 8-byte big-endian sequence number (monotonic, from sled's crash-safe id
//!   generator, so key order is creation order); value = an [`OutboxRecord`] encoded as
//!   `[version=1][u8 type][u16 lane len][lane][u8 id len][id][body]`. `body` is the exact envelope
//!   bytes that are signed and sent.
//! - `devices`: key = device id (UTF-8); value = [`DeviceState`] as JSON.
//! - `workspaces`: key = workspace id (UTF-8); value = [`WorkspaceState`] as JSON.
//! - `dead`: dead letters — events delivery gave up on (`max_attempts` / `max_age`), kept with
//!   why. Key = the event's sequence number; value = `[version=1][u32 info len][DeadInfo JSON]`
//!   followed by the record exactly as it was in `outbox`. `edgehook outbox replay` moves one
//!   back into `outbox` under a new sequence number (same event id).
//! - `meta`: small facts about delivery: `endpoint.disabled` (why and since when, after a
//!   410 Gone), `endpoint.last_success` / `endpoint.last_failure` (Unix ms, written at most
//!   once a second).
//!
//! # Invariants
//! 1. A batch of commits (events and the device and workspace states they came from) is written
//!    in **one sled transaction** across the three trees, then flushed (one fsync per batch, not
//!    per event; a batch gathers what arrives within `outbox.commit_delay` of its first message),
//!    and **only then** are the batch's transport acks sent. So an acknowledged MQTT
//!    message always has its events on disk, and a state on disk always has its events on disk.
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
//! Unflushed work is lost as a whole transaction: its MQTT messages were not acknowledged and the
//! broker redelivers them, which recreates the same events with new ids. A record whose delivery
//! succeeded but whose removal was not yet flushed is delivered again: a duplicate with the same
//! id, which the receiver drops by its idempotency key.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{mpsc, Notify};

use crate::device::{DeviceState, WorkspaceState};
use crate::event::Envelope;
#[cfg(test)]
use crate::event::EventType;
use crate::source::Ack;
use crate::telemetry::Metrics;

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

/// What the device stage hands the outbox for one inbound message (or one tick of its clock).
#[derive(Debug, Default)]
pub struct Commit {
    pub envelopes: Vec<Envelope>,
    /// Device states that changed.
    pub devices: Vec<(String, DeviceState)>,
    /// Workspace states that changed.
    pub workspaces: Vec<(String, WorkspaceState)>,
    pub ack: Option<Ack>,
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
    events: sled::Tree,
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
        let store = Store {
            events: db.open_tree("outbox")?,
            devices: db.open_tree("devices")?,
            workspaces: db.open_tree("workspaces")?,
            dead: db.open_tree("dead")?,
            meta: db.open_tree("meta")?,
            db,
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
                let id = uuid::Uuid::now_v7().to_string();
                self.meta.insert(STORE_ID_KEY, id.as_bytes())?;
                self.db.flush()?;
                write_marker(&marker, &id)
            }
        }
    }

    /// One past the highest sequence number on disk.
    fn end(&self) -> Result<u64, OutboxError> {
        Ok(match self.events.last()? {
            Some((k, _)) => seq_of(&k)? + 1,
            None => 0,
        })
    }
}

/// A handle on the store; cheap to clone.
///
/// After an I/O error sled refuses every later operation, so the writer *reopens* the store
/// ([`Outbox::reopen`]): the broken instance is dropped and the database is recovered from
/// disk, which also discards the failed batch's unflushed writes (the batch is then written
/// again, under new sequence numbers, and its messages acknowledged only after that). While
/// the store cannot be reopened (the disk is still full), operations fail with
/// [`OutboxError::Unavailable`] and are retried by their callers.
#[derive(Clone)]
pub struct Outbox {
    store: Arc<RwLock<Option<Store>>>,
    dir: PathBuf,
    cache_bytes: u64,
    /// Records in `dead` (counted at open, then kept).
    dead_depth: Arc<AtomicU64>,
    /// Wakes delivery when new records are durable.
    appended: Arc<Notify>,
    /// False while writes are failing; `/healthz` reports it.
    writable: Arc<AtomicBool>,
    /// Records in `events`. sled's `Tree::len` is a full scan, so the count is kept here:
    /// counted once at open, then adjusted on every write and removal.
    depth: Arc<AtomicU64>,
    /// One past the highest sequence number written (flushed or not).
    written: Arc<AtomicU64>,
    /// Every sequence number below this is known to be flushed (see invariant 2).
    durable: Arc<AtomicU64>,
}

impl Outbox {
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Outbox, OutboxError> {
        let store = Store::open(dir, cache_bytes)?;
        let depth = Arc::new(AtomicU64::new(store.events.len() as u64));
        let dead_depth = Arc::new(AtomicU64::new(store.dead.len() as u64));
        // Whatever sled recovered at open is on disk.
        let end = store.end()?;
        Ok(Outbox {
            store: Arc::new(RwLock::new(Some(store))),
            dir: dir.to_path_buf(),
            cache_bytes,
            dead_depth,
            appended: Arc::new(Notify::new()),
            writable: Arc::new(AtomicBool::new(true)),
            depth,
            written: Arc::new(AtomicU64::new(end)),
            durable: Arc::new(AtomicU64::new(end)),
        })
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
        let store = Store::open(&self.dir, self.cache_bytes)?;
        let end = store.end()?;
        self.depth
            .store(store.events.len() as u64, Ordering::Relaxed);
        self.dead_depth
            .store(store.dead.len() as u64, Ordering::Relaxed);
        // Everything on disk now is durable; what was only in memory is gone.
        self.durable.fetch_max(end, Ordering::SeqCst);
        self.written
            .store(self.durable.load(Ordering::SeqCst), Ordering::SeqCst);
        *guard = Some(store);
        Ok(())
    }

    /// Every persisted device state (read once at start).
    pub fn devices(&self) -> Result<Vec<(String, DeviceState)>, OutboxError> {
        self.with(|s| load_states(&s.devices, "device"))
    }

    /// Every persisted workspace state (read once at start).
    pub fn workspaces(&self) -> Result<Vec<(String, WorkspaceState)>, OutboxError> {
        self.with(|s| load_states(&s.workspaces, "workspace"))
    }

    /// Write a batch atomically (not yet flushed). Returns how many records were added.
    pub fn write(&self, batch: &[Commit]) -> Result<usize, OutboxError> {
        self.with(|s| self.write_to(s, batch))
    }

    fn write_to(&self, store: &Store, batch: &[Commit]) -> Result<usize, OutboxError> {
        let mut records = Vec::new();
        for commit in batch {
            for env in &commit.envelopes {
                records.push((store.db.generate_id()?, encode(env)));
            }
        }
        let devices = encode_states(batch.iter().flat_map(|c| &c.devices));
        let workspaces = encode_states(batch.iter().flat_map(|c| &c.workspaces));
        if records.is_empty() && devices.is_empty() && workspaces.is_empty() {
            return Ok(0);
        }
        (&store.events, &store.devices, &store.workspaces)
            .transaction(|(ev, dev, ws)| {
                for (seq, bytes) in &records {
                    ev.insert(&seq.to_be_bytes(), bytes.as_slice())?;
                }
                for (id, bytes) in &devices {
                    dev.insert(id.as_bytes(), bytes.as_slice())?;
                }
                for (id, bytes) in &workspaces {
                    ws.insert(id.as_bytes(), bytes.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(storage_error)?;
        self.depth
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        if let Some((last, _)) = records.last() {
            self.written.fetch_max(*last + 1, Ordering::SeqCst);
        }
        Ok(records.len())
    }

    /// Make everything written so far durable, and visible to delivery.
    pub async fn flush(&self) -> Result<(), OutboxError> {
        let written = self.written.load(Ordering::SeqCst);
        // A clone of the handle for the await (a lock guard must not be held across it); only
        // the writer task flushes, and it is also the one that reopens, so no clone outlives
        // a flush into a reopen.
        let db = self.with(|s| Ok(s.db.clone()))?;
        db.flush_async().await?;
        drop(db);
        self.durable.fetch_max(written, Ordering::SeqCst);
        Ok(())
    }

    /// Up to `limit` durable records with a sequence number above `after`, in order.
    pub fn pending_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, OutboxError> {
        let durable = self.durable.load(Ordering::SeqCst);
        let from = after.map_or(0, |seq| seq + 1);
        if from >= durable {
            return Ok(Vec::new());
        }
        self.with(|s| {
            s.events
                .range(from.to_be_bytes()..durable.to_be_bytes())
                .take(limit)
                .map(|kv| {
                    let (k, v) = kv?;
                    decode(seq_of(&k)?, &v)
                })
                .collect()
        })
    }

    /// Forget a delivered record.
    pub fn remove(&self, seq: u64) -> Result<(), OutboxError> {
        if self
            .with(|s| Ok(s.events.remove(seq.to_be_bytes())?))?
            .is_some()
        {
            self.depth.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Give up on `seq`: move it to `dead` with `info`, in one transaction. False if it was
    /// not pending (already delivered or buried).
    pub fn bury(&self, seq: u64, info: &DeadInfo) -> Result<bool, OutboxError> {
        let info_json = serde_json::to_vec(info).expect("plain data serialises");
        let key = seq.to_be_bytes();
        let moved = self.with(|s| {
            (&s.events, &s.dead)
                .transaction(|(ev, dead)| {
                    let Some(record) = ev.remove(&key)? else {
                        return Ok(false);
                    };
                    let mut value = Vec::with_capacity(5 + info_json.len() + record.len());
                    value.push(RECORD_VERSION);
                    value.extend_from_slice(&(info_json.len() as u32).to_be_bytes());
                    value.extend_from_slice(&info_json);
                    value.extend_from_slice(&record);
                    dead.insert(&key, value)?;
                    Ok::<_, ConflictableTransactionError<()>>(true)
                })
                .map_err(storage_error)
        })?;
        if moved {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            self.dead_depth.fetch_add(1, Ordering::Relaxed);
        }
        Ok(moved)
    }

    /// Up to `limit` dead letters, oldest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<(OutboxRecord, DeadInfo)>, OutboxError> {
        self.with(|s| {
            s.dead
                .iter()
                .take(limit)
                .map(|kv| {
                    let (k, v) = kv?;
                    decode_dead(seq_of(&k)?, &v)
                })
                .collect()
        })
    }

    /// Move the dead letter `seq` back to the queue, behind everything pending, keeping its
    /// event id. False if there is no such dead letter. Flushes.
    pub async fn revive(&self, seq: u64) -> Result<bool, OutboxError> {
        let key = seq.to_be_bytes();
        let (new_seq, revived) = self.with(|s| {
            let new_seq = s.db.generate_id()?;
            let revived = (&s.events, &s.dead)
                .transaction(|(ev, dead)| {
                    let Some(value) = dead.remove(&key)? else {
                        return Ok(false);
                    };
                    let record =
                        dead_record_bytes(&value).ok_or(ConflictableTransactionError::Abort(()))?;
                    ev.insert(&new_seq.to_be_bytes(), record)?;
                    Ok(true)
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
        if revived {
            self.depth.fetch_add(1, Ordering::Relaxed);
            self.dead_depth.fetch_sub(1, Ordering::Relaxed);
            self.written.fetch_max(new_seq + 1, Ordering::SeqCst);
            self.flush().await?;
            self.appended.notify_one();
        }
        Ok(revived)
    }

    /// Delete every pending record (`dead = false`) or every dead letter. Returns how many.
    pub async fn purge(&self, dead: bool) -> Result<usize, OutboxError> {
        let n = self.with(|s| {
            let tree = if dead { &s.dead } else { &s.events };
            let mut n = 0;
            for key in tree.iter().keys() {
                tree.remove(key?)?;
                n += 1;
            }
            Ok(n)
        })?;
        if dead { &self.dead_depth } else { &self.depth }.store(0, Ordering::Relaxed);
        self.flush().await?;
        Ok(n)
    }

    /// Dead letters kept.
    pub fn dead_len(&self) -> usize {
        self.dead_depth.load(Ordering::Relaxed) as usize
    }

    /// The oldest pending record, if any.
    pub fn oldest(&self) -> Result<Option<OutboxRecord>, OutboxError> {
        self.with(|s| match s.events.first()? {
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

    /// Records waiting for delivery.
    pub fn len(&self) -> usize {
        self.depth.load(Ordering::Relaxed) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// Resolves after the next durable append.
    pub async fn appended(&self) {
        self.appended.notified().await
    }
}

/// The marker file beside the store naming its id (see `Store::check_identity`).
const IDENTITY_FILE: &str = "outbox.id";
const STORE_ID_KEY: &str = "store_id";

/// Write `id` to `path` durably (temporary file, fsync, rename).
fn write_marker(path: &Path, id: &str) -> Result<(), OutboxError> {
    use std::io::Write;
    let tmp = path.with_extension("id.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(marker_error)?;
    file.write_all(id.as_bytes()).map_err(marker_error)?;
    file.sync_all().map_err(marker_error)?;
    std::fs::rename(&tmp, path).map_err(marker_error)
}

fn marker_error(e: std::io::Error) -> OutboxError {
    OutboxError::Storage(sled::Error::Io(e))
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

fn decode_dead(seq: u64, value: &[u8]) -> Result<(OutboxRecord, DeadInfo), OutboxError> {
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
    Ok((record, info))
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

/// The outbox writer task: group incoming commits into batches, write each batch in one
/// transaction, flush, then send the batch's acks. Ends when the device stage has gone, after
/// writing and flushing everything it sent.
pub async fn run_writer(
    outbox: Outbox,
    mut commits: mpsc::Receiver<Commit>,
    batch_max: usize,
    commit_delay: Duration,
    metrics: Arc<Metrics>,
) {
    let mut batch: Vec<Commit> = Vec::with_capacity(batch_max);
    while let Some(first) = commits.recv().await {
        batch.push(first);
        // Group commit: gather what arrives within `commit_delay` of the first, up to the cap.
        let deadline = tokio::time::Instant::now() + commit_delay;
        while batch.len() < batch_max {
            match commits.try_recv() {
                Ok(c) => batch.push(c),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, commits.recv()).await {
                        Ok(Some(c)) => batch.push(c),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        let added = persist(&outbox, &batch, &metrics).await;
        for commit in batch.drain(..) {
            for env in &commit.envelopes {
                metrics.event_created(env.kind);
            }
            if let Some(ack) = commit.ack {
                ack.send();
            }
        }
        if added > 0 {
            outbox.appended.notify_one();
        }
        metrics.set_outbox_depth(outbox.len() as u64);
    }
    if let Err(e) = outbox.flush().await {
        tracing::error!(error = %e, "final outbox flush failed");
    }
    tracing::debug!("outbox writer drained");
}

/// Write and flush one batch, retrying until it is durable. Returns the records added.
async fn persist(outbox: &Outbox, batch: &[Commit], metrics: &Metrics) -> usize {
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u64;
    loop {
        let result = match outbox.write(batch) {
            Ok(0) => Ok(0),
            Ok(n) => outbox.flush().await.map(|()| n),
            Err(e) => Err(e),
        };
        match result {
            Ok(n) => {
                if failures > 0 {
                    tracing::info!(failures, "outbox writable again; resuming");
                    outbox.writable.store(true, Ordering::Relaxed);
                }
                return n;
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
        let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
        let commit = || Commit {
            envelopes: vec![envelope("d")],
            ..Default::default()
        };
        ob.write(&[commit()]).unwrap();
        assert!(
            ob.pending_after(None, 10).unwrap().is_empty(),
            "written, not flushed: invisible"
        );
        ob.flush().await.unwrap();
        let first = ob.pending_after(None, 10).unwrap();
        assert_eq!(first.len(), 1);
        ob.write(&[commit()]).unwrap();
        assert!(ob.pending_after(Some(first[0].seq), 10).unwrap().is_empty());
        ob.flush().await.unwrap();
        assert_eq!(ob.pending_after(Some(first[0].seq), 10).unwrap().len(), 1);
        assert_eq!(ob.pending_after(None, 10).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn batches_survive_reopen_in_order_and_removal_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String>;
        {
            let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
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
                    ack: None,
                })
                .collect();
            ids = commits.iter().map(|c| c.envelopes[0].id.clone()).collect();
            assert_eq!(ob.write(&commits).unwrap(), 5);
            ob.flush().await.unwrap();
            assert_eq!(ob.len(), 5);
            let first = ob.pending_after(None, 1).unwrap();
            ob.remove(first[0].seq).unwrap();
            ob.remove(first[0].seq).unwrap(); // removing twice counts once
            assert_eq!(ob.len(), 4);
            ob.flush().await.unwrap();
        }
        let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(ob.len(), 4, "depth is recounted at open");
        let pending = ob.pending_after(None, 100).unwrap();
        let got: Vec<String> = pending.iter().map(|r| r.id.clone()).collect();
        assert_eq!(got, ids[1..], "removed record gone, others in order");
        let after = ob.pending_after(Some(pending[1].seq), 100).unwrap();
        assert_eq!(after.len(), 2);
        assert_eq!(ob.devices().unwrap().len(), 5);
        assert_eq!(ob.workspaces().unwrap().len(), 2);
    }
}
