//! The open sled database, its identity and the syncs that make a flush survive a power cut.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sled::transaction::TransactionError;

use super::bodies::Bodies;
use super::format::{
    decode, endpoint_of_tree, pointed, record_size, resolved, seq_of, tree_name, OutboxRecord,
};
use super::hot::Hot;
use super::wal::{self, Wal};
use super::OutboxError;
use crate::atomic_file::sync_dir;

/// The open sled database and its trees.
pub(super) struct Store {
    pub(super) db: sled::Db,
    /// What makes a sled flush survive a power cut (see [`SyncFiles`]).
    pub(super) sync: Arc<SyncFiles>,
    /// One per queue, in the order of [`Outbox::queues`].
    pub(super) queues: Vec<sled::Tree>,
    pub(super) devices: sled::Tree,
    pub(super) workspaces: sled::Tree,
    pub(super) groups: sled::Tree,
    pub(super) actions: sled::Tree,
    pub(super) bookings: sled::Tree,
    pub(super) dead: sled::Tree,
    pub(super) meta: sled::Tree,
    /// What was written since the last checkpoint (see `hot`).
    pub(super) hot: std::sync::Mutex<Hot>,
    /// The segments holding the bodies of records sled points to (see `bodies`), and their
    /// directory (read without the lock).
    pub(super) bodies: Arc<std::sync::Mutex<Bodies>>,
    pub(super) bodies_dir: PathBuf,
}

impl Store {
    pub(super) fn open(dir: &Path, cache_bytes: u64) -> Result<Store, OutboxError> {
        let db = sled::Config::new()
            .path(dir.join("outbox.sled"))
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000))
            .segment_size(segment_size(dir)?)
            .open()?;
        let sync = Arc::new(SyncFiles::open(&dir.join("outbox.sled"))?);
        // The delivery log lived here before it became a file (`deliver::log`).
        db.drop_tree("attempts")?;
        let meta = db.open_tree("meta")?;
        check_identity(dir, &db, &meta, &sync)?;
        let wal = recover(dir, &db, &meta, &sync)?;
        let bodies_dir = dir.join("outbox.bodies");
        let bodies = Bodies::open(&bodies_dir).map_err(io_error)?;
        Ok(Store {
            bodies: Arc::new(std::sync::Mutex::new(bodies)),
            bodies_dir,
            queues: Vec::new(),
            devices: db.open_tree("devices")?,
            workspaces: db.open_tree("workspaces")?,
            groups: db.open_tree("groups")?,
            actions: db.open_tree("actions")?,
            bookings: db.open_tree("bookings")?,
            dead: db.open_tree("dead")?,
            meta,
            db,
            sync,
            hot: std::sync::Mutex::new(Hot::new(wal)),
        })
    }

    /// What was written since the last checkpoint, locked.
    pub(super) fn hot(&self) -> std::sync::MutexGuard<'_, Hot> {
        self.hot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The segments' appender, locked.
    pub(super) fn bodies(&self) -> std::sync::MutexGuard<'_, Bodies> {
        self.bodies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record a queue value holds, or points to (its body read from its segment).
    pub(super) fn load(&self, seq: u64, value: &[u8]) -> Result<OutboxRecord, OutboxError> {
        match pointed(value) {
            None => decode(seq, value),
            Some(at) => decode(seq, &resolved(value, &self.body(seq, at)?)),
        }
    }

    /// Queue value `seq` as a whole record: a pointer's body read back and put in.
    pub(super) fn whole(&self, seq: u64, value: sled::IVec) -> Result<sled::IVec, OutboxError> {
        match pointed(&value) {
            None => Ok(value),
            Some(at) => Ok(resolved(&value, &self.body(seq, at)?).into()),
        }
    }

    /// The body of record `seq` at `at`. A segment missing or too short, a body not matching
    /// its checksum, or a segment that cannot be read (EIO from a bad sector, how SD cards
    /// fail; a directory in its place) is that record's damage (reported as corrupt, as a
    /// damaged record is), not the store's: it is set aside and delivery goes on (#43.6).
    /// Only a shortage of the process's resources (descriptors, memory) is the store's error,
    /// retried. A card failing as a whole fails its writes too, which stop the writer.
    fn body(&self, seq: u64, at: super::bodies::BodyAt) -> Result<Vec<u8>, OutboxError> {
        super::bodies::read(&self.bodies_dir, at).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof => {
                OutboxError::Corrupt {
                    seq,
                    why: "its body's segment is missing or short",
                }
            }
            std::io::ErrorKind::InvalidData => OutboxError::Corrupt {
                seq,
                why: "its body does not match its checksum",
            },
            _ if is_shortage(&e) => io_error(e),
            _ => OutboxError::Corrupt {
                seq,
                why: "its body's segment cannot be read (an I/O error)",
            },
        })
    }

    /// Open the queue trees of `endpoints`, in that order.
    pub(super) fn open_queues(&mut self, endpoints: &[String]) -> Result<(), OutboxError> {
        self.queues = endpoints
            .iter()
            .map(|e| self.db.open_tree(tree_name(e)))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// Open the queue tree of `endpoint` after the others.
    pub(super) fn add_queue(&mut self, endpoint: &str) -> Result<(), OutboxError> {
        self.queues.push(self.db.open_tree(tree_name(endpoint))?);
        Ok(())
    }

    /// The endpoints that have a queue on disk.
    pub(super) fn queues_on_disk(&self) -> Vec<String> {
        self.db
            .tree_names()
            .iter()
            .filter_map(|n| endpoint_of_tree(n))
            .collect()
    }

    /// One past the highest sequence number on disk.
    pub(super) fn end(&self) -> Result<u64, OutboxError> {
        let mut end = 0;
        for tree in self.queues.iter().chain([&self.dead]) {
            if let Some(seq) = highest_seq(tree)? {
                end = end.max(seq + 1);
            }
        }
        Ok(end)
    }

    /// Records and their bytes in each queue (a full scan: at open only); tells the segments
    /// which of their bodies are pointed to.
    pub(super) fn count(&self) -> Result<Vec<(u64, u64)>, OutboxError> {
        let mut bodies = self.bodies();
        self.queues
            .iter()
            .map(|tree| {
                let (mut n, mut bytes) = (0u64, 0u64);
                for kv in tree.iter() {
                    let (k, v) = kv?;
                    n += 1;
                    bytes += record_size(&v) as u64;
                    if let Some(at) = pointed(&v) {
                        bodies.saw(at.segment, seq_of(&k)?);
                    }
                }
                Ok((n, bytes))
            })
            .collect()
    }
}

/// The highest sequence number among `tree`'s keys (each starts with one, 8 bytes big-endian),
/// found by forward look-ups alone: a binary search for the largest `s` with a key at or after
/// it (64 look-ups, at open). Not `Tree::last`: sled iterates backwards against a 1 MiB
/// constant of 0xff bytes (`MAX_KEY` in its `iter.rs`), which one backward iteration anywhere
/// links into the binary: a fifth of the daemon's size on a Raspberry Pi.
fn highest_seq(tree: &sled::Tree) -> Result<Option<u64>, OutboxError> {
    let first_from = |s: u64| tree.range(s.to_be_bytes()..).next().transpose();
    let Some((mut key, _)) = first_from(0)? else {
        return Ok(None);
    };
    // `key` is the first key at or after `lo`; none is at or after `hi + 1`.
    let (mut lo, mut hi) = (0u64, u64::MAX);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        match first_from(mid)? {
            Some((found, _)) => (lo, key) = (mid, found),
            None => hi = mid - 1,
        }
    }
    seq_of(&key[..8.min(key.len())]).map(Some)
}

/// sled recovers a damaged log by dropping what it cannot read, which can silently leave an
/// empty store. So each store has an id, kept both inside it (`meta`, key `store_id`) and
/// beside it (`outbox.id`); a store that comes back without the id its marker names has lost
/// its history, and is refused rather than used (before its log is opened or made).
fn check_identity(
    dir: &Path,
    db: &sled::Db,
    meta: &sled::Tree,
    sync: &SyncFiles,
) -> Result<(), OutboxError> {
    let marker = dir.join(IDENTITY_FILE);
    let inside = meta
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
            meta.insert(STORE_ID_KEY, id.as_bytes())?;
            db.flush()?;
            sync.sync().map_err(io_error)?;
            write_marker(&marker, &id)
        }
    }
}

/// Apply the write-ahead log's records newer than the last checkpoint, make that a checkpoint,
/// and open the log at its next generation (never a number used before).
fn recover(
    dir: &Path,
    db: &sled::Db,
    meta: &sled::Tree,
    sync: &SyncFiles,
) -> Result<Wal, OutboxError> {
    let through = meta
        .get(WAL_THROUGH)?
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0);
    let (found, highest) = wal::read(dir, through).map_err(io_error)?;
    if let Some((last, _)) = found.last() {
        for (_, batches) in &found {
            for op in batches.iter().flatten() {
                set(&db.open_tree(&op.tree)?, &op.key, op.value.as_deref())?;
            }
        }
        meta.insert(WAL_THROUGH, &last.to_be_bytes())?;
        db.flush()?;
        sync.sync().map_err(io_error)?;
        tracing::info!(
            batches = found.iter().map(|(_, b)| b.len()).sum::<usize>(),
            "outbox: recovered the write-ahead log's batches since the last checkpoint"
        );
    }
    // A generation is started at a checkpoint, before that checkpoint is durable: the last
    // life may have started `through + 2` (its first sync torn, so not found), and a number
    // used again could read that sync's stray records as its own. So the next is past both;
    // its file holds nothing after `wal.through` (now the last found).
    let next = (through + 3).max(highest + 1);
    let wal = Wal::open(dir, next).map_err(io_error)?;
    tracing::debug!(direct = wal.is_direct(), "outbox: write-ahead log open");
    Ok(wal)
}

/// sled frees the node versions an insert replaces through crossbeam's epoch-based
/// reclamation, which keeps them in the inserting thread's bag until that fills and a later
/// pin collects. A checkpoint that puts a backlog of thousands of records into sled at once
/// made garbage faster than that freed it: a heap profile of a lagging burst found about
/// 1.5 MB of replaced nodes and their copies alive at the peak. Handing the thread's garbage
/// over every [`Reclaim::EVERY`] inserts lets it be freed while the checkpoint goes on
/// (bench, burst with the receiver 20 ms late, medians of 3: 16.0–16.1 MB against 17.1–17.6;
/// natural bursts that lag: about 15.0 against 15.8 MB).
#[derive(Default)]
pub(super) struct Reclaim(usize);

impl Reclaim {
    const EVERY: usize = 8;

    /// One insert more.
    pub(super) fn tick(&mut self) {
        self.0 += 1;
        if self.0 % Self::EVERY == 0 {
            crossbeam_epoch::pin().flush();
        }
    }
}

/// Set `key` of `tree` to `value`, or remove it (`None`).
pub(super) fn set(tree: &sled::Tree, key: &[u8], value: Option<&[u8]>) -> Result<(), OutboxError> {
    match value {
        Some(v) => tree.insert(key, v)?,
        None => tree.remove(key)?,
    };
    Ok(())
}

/// The marker file beside the store naming its id (see `Store::check_identity`).
pub(super) const IDENTITY_FILE: &str = "outbox.id";
/// Beside the store: the segment size sled was told when this version created it.
pub(super) const SEGMENT_FILE: &str = "outbox.sled.segment";
/// sled's segment size for a store this version creates, and for one it did not (sled's
/// default, the only size used before).
pub(super) const NEW_SEGMENT: usize = 256 << 10;
pub(super) const OLD_SEGMENT: usize = 512 << 10;

/// sled's segment size for the store in `dir`. It is also the size of each of sled's write
/// buffers, several of which a flush maps at once: 256 KiB instead of sled's 512 KiB takes
/// about 1 MB off a burst's peak when delivery falls behind (measured, README). sled refuses
/// a store with another size than the one it was created with, and its own record of it
/// (`conf`) is written without a sync, so a power cut could leave a store whose size nothing
/// says; the size is recorded here first, synced, before sled creates the store. A store
/// without that record was created by an earlier version, with sled's default.
pub(super) fn segment_size(dir: &Path) -> Result<usize, OutboxError> {
    let path = dir.join(SEGMENT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            io_error(std::io::Error::other(format!(
                "{}: not a segment size ({:?}); it holds the size the store in outbox.sled \
                 was created with (262144, or 524288 for a store an earlier version made)",
                path.display(),
                text.trim()
            )))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join("outbox.sled").exists() {
                return Ok(OLD_SEGMENT);
            }
            std::fs::create_dir_all(dir).map_err(io_error)?;
            crate::atomic_file::replace(&path, format!("{NEW_SEGMENT}\n").as_bytes(), 0o666)
                .map_err(io_error)?;
            Ok(NEW_SEGMENT)
        }
        Err(e) => Err(io_error(e)),
    }
}
pub(super) const STORE_ID_KEY: &str = "store_id";
/// `meta` key: the last generation of the write-ahead log in a durable checkpoint (u64, BE).
pub(super) const WAL_THROUGH: &str = "wal.through";

/// Write `id` to `path` durably (temporary file, fsync, rename).
pub(super) fn write_marker(path: &Path, id: &str) -> Result<(), OutboxError> {
    crate::atomic_file::replace(path, id.as_bytes(), 0o666).map_err(io_error)
}

pub(super) fn io_error(e: std::io::Error) -> OutboxError {
    OutboxError::Storage(sled::Error::Io(e))
}

/// sled's flush writes its log with `sync_file_range`, which neither flushes the drive's
/// volatile write cache (an SD card's, a USB stick's) nor the file's size, and fsyncs only
/// once a second from a background thread; values over 128 KiB go to files of their own in
/// `blobs/` that it never syncs. That is enough against `kill -9` but not against a power cut.
/// So after each flush the log is `fdatasync`ed here, with any blob file written since and
/// the directory naming it: only then is a batch durable and its messages acknowledged.
pub(super) struct SyncFiles {
    log: std::fs::File,
    blobs: PathBuf,
    /// Blob files already synced.
    pub(super) synced: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

impl SyncFiles {
    /// For the sled database in `dir` (already open, so its files exist).
    pub(super) fn open(dir: &Path) -> Result<SyncFiles, OutboxError> {
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

    pub(super) fn sync(&self) -> std::io::Result<()> {
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

pub(super) fn storage_error(e: TransactionError<()>) -> OutboxError {
    match e {
        TransactionError::Storage(e) => OutboxError::Storage(e),
        TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
    }
}

#[cfg(test)]
mod tests {
    use super::highest_seq;

    fn tree_with(keys: &[Vec<u8>]) -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for k in keys {
            tree.insert(k.as_slice(), b"v").unwrap();
        }
        tree
    }

    fn seq(s: u64) -> Vec<u8> {
        s.to_be_bytes().to_vec()
    }

    fn dead(s: u64, endpoint: &str) -> Vec<u8> {
        [&s.to_be_bytes()[..], endpoint.as_bytes()].concat()
    }

    #[test]
    fn highest_seq_is_the_largest_key_prefix() {
        let cases: &[(&[Vec<u8>], Option<u64>)] = &[
            (&[], None),
            (&[seq(0)], Some(0)),
            (&[seq(1), seq(2), seq(7)], Some(7)),
            (&[seq(u64::MAX)], Some(u64::MAX)),
            (&[seq(0), seq(u64::MAX - 1)], Some(u64::MAX - 1)),
            (&[seq(1 << 40), seq(255), seq(256)], Some(1 << 40)),
            // Dead letters: the sequence number, then the endpoint.
            (&[dead(5, ""), dead(9, "roomz"), dead(9, "a")], Some(9)),
            (&[dead(u64::MAX, "zz"), seq(3)], Some(u64::MAX)),
        ];
        for (keys, want) in cases {
            assert_eq!(highest_seq(&tree_with(keys)).unwrap(), *want, "{keys:?}");
        }
    }

    #[test]
    fn highest_seq_agrees_with_the_maximum_of_random_sets() {
        let mut rng = fastrand::Rng::with_seed(22);
        for _ in 0..50 {
            let n = rng.usize(1..40);
            let seqs: Vec<u64> = (0..n)
                .map(|_| match rng.u8(0..3) {
                    0 => rng.u64(..1000),
                    1 => rng.u64(..),
                    _ => u64::MAX - rng.u64(..3),
                })
                .collect();
            let keys: Vec<Vec<u8>> = seqs.iter().map(|&s| seq(s)).collect();
            let want = seqs.iter().copied().max();
            assert_eq!(highest_seq(&tree_with(&keys)).unwrap(), want, "{seqs:?}");
        }
    }
}

/// Whether `e` says the process is short of something (descriptors, memory) or was
/// interrupted: no fault of what was read, so it is tried again.
fn is_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::EINTR | libc::ENOBUFS
        )
    ) || matches!(
        e.kind(),
        std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::OutOfMemory
    )
}
