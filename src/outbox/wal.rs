//! The write-ahead log: each synced batch as one checksummed record, so that a batch costs one
//! `fdatasync` of one file and only its own bytes, and sled is written lazily (a checkpoint).
//!
//! # Format
//! Two files, `outbox.wal.0` and `outbox.wal.1`, written full of zeros when made (4 MiB each,
//! the size at which a checkpoint is due). Generation `g` is written to file `g % 2` from
//! offset 0, overwriting what an older generation left there, so a sync is of data alone. A
//! file holds records of one generation back to back. Written with direct I/O (where the
//! filesystem allows), a sync writes whole sectors (the device's unit: 512 bytes on an SD
//! card) from the one the last sync ended in (its records again, the same bytes); through the
//! page cache, each sync's records end padded with zeros to a 4 KiB page, so the next sync
//! starts on a page of its own. A record is
//!
//! `[magic u32 = "EHW1"][generation u64][payload length u32][crc32 of generation, length and payload u32][payload]`
//!
//! and its payload is the batch's operations on sled's trees, in order:
//! `[u16 trees][per tree: u16 length, name]` then per operation
//! `[u16 tree][u16 key length][key][u8 0 = remove | 1 = insert][u32 value length][value]`.
//!
//! Reading a file stops at the first record that is torn, of another generation or not a
//! record; a record that does not start where the last one ended is looked for at the next
//! page (the padding). A generation `g` is only overwritten after the checkpoint of `g - 1`
//! is durable (see [`Wal::rotate`]), so every record not yet in a durable checkpoint is
//! readable.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: u32 = u32::from_be_bytes(*b"EHW1");
const HEADER: usize = 20;
pub(super) const PAGE: u64 = 4096;

/// One operation on a sled tree: insert `value` at `key`, or remove `key` (`None`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Op {
    pub tree: String,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl Op {
    pub(super) fn new(tree: &str, key: &[u8], value: Option<&[u8]>) -> Op {
        Op {
            tree: tree.to_string(),
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        }
    }
}

/// Encode one batch's operations as a record of generation `generation`, appended to `out`.
pub(super) fn encode<'a>(
    generation: u64,
    ops: impl IntoIterator<Item = &'a Op>,
    out: &mut Vec<u8>,
) {
    let mut trees: Vec<&str> = Vec::new();
    let mut payload = Vec::new();
    let mut body = Vec::new();
    for op in ops {
        let t = match trees.iter().position(|t| *t == op.tree) {
            Some(t) => t,
            None => {
                trees.push(&op.tree);
                trees.len() - 1
            }
        };
        body.extend_from_slice(&(t as u16).to_be_bytes());
        body.extend_from_slice(&(op.key.len() as u16).to_be_bytes());
        body.extend_from_slice(&op.key);
        match &op.value {
            Some(v) => {
                body.push(1);
                body.extend_from_slice(&(v.len() as u32).to_be_bytes());
                body.extend_from_slice(v);
            }
            None => body.push(0),
        }
    }
    payload.extend_from_slice(&(trees.len() as u16).to_be_bytes());
    for t in &trees {
        payload.extend_from_slice(&(t.len() as u16).to_be_bytes());
        payload.extend_from_slice(t.as_bytes());
    }
    payload.extend_from_slice(&body);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&generation.to_be_bytes());
    crc.update(&(payload.len() as u32).to_be_bytes());
    crc.update(&payload);
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(&payload);
}

/// The record at `at`, read through `read_at` (`None` past the end): its generation,
/// operations and length, if it is a whole record (`None` for anything else: padding, a torn
/// write, other data).
fn decode(
    read_at: &impl Fn(u64, usize) -> Option<Vec<u8>>,
    at: u64,
) -> Option<(u64, Vec<Op>, u64)> {
    let header = read_at(at, HEADER)?;
    let word = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if word(0) != MAGIC {
        return None;
    }
    let generation = u64::from_be_bytes(header[4..12].try_into().expect("8 bytes"));
    let len = word(12) as usize;
    let payload = read_at(at + HEADER as u64, len)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..16]);
    crc.update(&payload);
    if crc.finalize() != word(16) {
        return None;
    }
    let ops = parse(&payload)?;
    Some((generation, ops, (HEADER + len) as u64))
}

/// A payload's operations (`None` if it does not parse: a record written by a bug, not a tear).
fn parse(payload: &[u8]) -> Option<Vec<Op>> {
    let mut at = 0usize;
    let mut take = |n: usize| {
        let s = payload.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let u16_of = |s: &[u8]| u16::from_be_bytes(s.try_into().expect("2 bytes")) as usize;
    let trees = u16_of(take(2)?);
    let mut names = Vec::with_capacity(trees);
    for _ in 0..trees {
        let len = u16_of(take(2)?);
        names.push(String::from_utf8(take(len)?.to_vec()).ok()?);
    }
    let mut ops = Vec::new();
    while let Some(t) = take(2) {
        let tree = names.get(u16_of(t))?.clone();
        let key_len = u16_of(take(2)?);
        let key = take(key_len)?.to_vec();
        let value = match take(1)?[0] {
            0 => None,
            1 => {
                let len = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
                Some(take(len)?.to_vec())
            }
            _ => return None,
        };
        ops.push(Op { tree, key, value });
    }
    Some(ops)
}

/// A generation and the operations of each of its records, in order.
pub(super) type Generation = (u64, Vec<Vec<Op>>);

/// Every whole record at the start of `bytes` of the generation of the first.
pub(super) fn records(bytes: &[u8]) -> Option<Generation> {
    let read_at = |at: u64, n: usize| Some(bytes.get(at as usize..at as usize + n)?.to_vec());
    records_at(read_at, 0)
}

/// Every whole record from the start of what `read_at` reads, of the generation of the
/// first; only that generation if it is not after `through`. One record in memory at a time.
fn records_at(read_at: impl Fn(u64, usize) -> Option<Vec<u8>>, through: u64) -> Option<Generation> {
    let mut at = 0u64;
    let mut generation = None;
    let mut all = Vec::new();
    loop {
        let found =
            decode(&read_at, at).filter(|(g, _, _)| generation.is_none_or(|want| want == *g));
        match found {
            Some((g, _, _)) if g <= through => return Some((g, Vec::new())),
            Some((g, ops, len)) => {
                generation = Some(g);
                all.push(ops);
                at += len;
            }
            None if at % PAGE != 0 => at = at.next_multiple_of(PAGE),
            None => break,
        }
    }
    generation.map(|g| (g, all))
}

fn path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("outbox.wal.{}", generation % 2))
}

/// What the log of `dir` holds of generations after `through`, oldest first, and the highest
/// generation its files name (whether or not it is after `through`).
pub(super) type Found = (Vec<Generation>, u64);

pub(super) fn read(dir: &Path, through: u64) -> io::Result<Found> {
    let mut found = Vec::new();
    let mut highest = 0;
    for file in 0..2 {
        let f = match File::open(path(dir, file)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let read_at = |at: u64, n: usize| {
            if at.checked_add(n as u64)? > len {
                return None;
            }
            let mut bytes = vec![0; n];
            f.read_exact_at(&mut bytes, at).ok()?;
            Some(bytes)
        };
        if let Some((generation, ops)) = records_at(read_at, through) {
            highest = highest.max(generation);
            if generation > through && generation % 2 == file {
                found.push((generation, ops));
            }
        }
    }
    found.sort_by_key(|(g, _)| *g);
    Ok((found, highest))
}

/// The log being written: its generation, where the next sync writes, and what waits for it.
pub(super) struct Wal {
    files: [std::sync::Arc<File>; 2],
    /// `Some` when `files` are open for direct I/O (see [`Wal::open`]): what a write's offset
    /// and length are multiples of (see [`direct_unit`]).
    unit: Option<u64>,
    generation: u64,
    /// Where this generation's records end in its file (buffered: a page boundary).
    offset: u64,
    /// Direct I/O: the records in the sector `offset` is inside, which the next sync writes
    /// again (the same bytes) with what follows them.
    tail: Vec<u8>,
    /// Records encoded since the last sync.
    buf: Vec<u8>,
}

/// The unit of a direct write where the kernel does not say (see [`direct_unit`]): the
/// smallest sector a block device has.
const SECTOR: u64 = 512;

/// Set once a direct write was refused as misaligned (a kernel that does not say a device's
/// unit, and a device of larger sectors): every log opened after it is buffered.
static NO_DIRECT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One sync's write, taken out of the [`Wal`] so that the write and its `fdatasync` happen
/// without holding what guards it.
pub(super) struct Pending {
    file: std::sync::Arc<File>,
    direct: bool,
    offset: u64,
    bytes: Vec<u8>,
}

impl Pending {
    pub(super) fn write(&self) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        if self.direct {
            // Direct I/O wants the memory aligned too.
            let mut raw = vec![0u8; self.bytes.len() + PAGE as usize];
            let at = raw.as_ptr().align_offset(PAGE as usize);
            let aligned = &mut raw[at..at + self.bytes.len()];
            aligned.copy_from_slice(&self.bytes);
            if let Err(e) = self.file.write_all_at(aligned, self.offset) {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    NO_DIRECT.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, "direct writes to the outbox's log refused; writing it through the page cache from now on");
                }
                return Err(e);
            }
        } else {
            self.file.write_all_at(&self.bytes, self.offset)?;
        }
        self.file.sync_data()
    }
}

/// Write zeros to `file` up to `size` (once: a file already that long is left alone), so that
/// its syncs are of data alone: a file that grows makes every `fdatasync` also commit its new
/// size to the filesystem's journal, which on an SD card costs more than the data. Best
/// effort: on a disk too full for it, the file stays as it was and grows as it is written.
fn preallocate(file: &File, size: u64) {
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return;
    };
    if len >= size {
        return;
    }
    let zeros = vec![0u8; 1 << 20];
    let filled = (|| {
        let mut at = len;
        while at < size {
            let n = (size - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_all()
    })();
    if let Err(e) = filled {
        tracing::warn!(error = %e, "the outbox's log could not be given its room in advance; it grows as it is written");
        let _ = file.set_len(len);
    }
}

/// Drop `file`'s pages from the page cache (they are clean: synced or only read). Pages cached
/// by a large write or read come in large folios, and a 4 KiB sync into one of them dirties,
/// counts and writes the whole folio: measured, 1 MiB written per sync after the zeros above.
/// Written afresh, a page is a folio of its own.
fn forget_cached(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its arguments; the descriptor is open for the call.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// What a direct write to `file` must be aligned to (offset and length): what the kernel says
/// (`statx`'s `STATX_DIOALIGN`, Linux 6.1 and later: 512 bytes on an SD card, 4 KiB on a
/// device of 4 KiB sectors), [`SECTOR`] where it does not say, `None` where it says that
/// direct I/O is not supported there or wants more than a page of alignment (then the log goes
/// through the page cache).
fn direct_unit(file: &File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: statx writes into the zeroed struct we own; the empty path with AT_EMPTY_PATH
    // names the open descriptor itself.
    let (ok, st) = unsafe {
        let mut st: libc::statx = std::mem::zeroed();
        let ok = libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut st,
        ) == 0;
        (ok, st)
    };
    if !ok || st.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Some(SECTOR);
    }
    unit_of(st.stx_dio_offset_align, st.stx_dio_mem_align)
}

/// [`direct_unit`]'s rule on the kernel's answer (0: no direct I/O).
fn unit_of(offset_align: u32, memory_align: u32) -> Option<u64> {
    let (offset, memory) = (u64::from(offset_align), u64::from(memory_align));
    (offset > 0 && offset <= PAGE && memory <= PAGE).then_some(offset.max(SECTOR))
}

impl Wal {
    /// Open the log of `dir` to write generation `generation` (everything before it is in a
    /// durable checkpoint). Creates the files (and syncs the directory) the first time.
    ///
    /// The files are written with direct I/O where the filesystem allows it: a sync then
    /// writes the sectors it changes (the last partial one again, with the same bytes), where
    /// through the page cache it writes every page it touches, 4 KiB even for one event.
    pub(super) fn open(dir: &Path, generation: u64) -> io::Result<Wal> {
        let direct = !NO_DIRECT.load(std::sync::atomic::Ordering::Relaxed);
        Wal::open_as(dir, generation, direct)
    }

    fn open_as(dir: &Path, generation: u64, want_direct: bool) -> io::Result<Wal> {
        let mut created = false;
        let open = |n: u64, direct: bool| -> io::Result<File> {
            let mut options = std::fs::OpenOptions::new();
            options.read(true).write(true).create(true).truncate(false);
            if direct {
                use std::os::unix::fs::OpenOptionsExt;
                options.custom_flags(libc::O_DIRECT);
            }
            options.open(path(dir, n))
        };
        for n in 0..2 {
            created |= !path(dir, n).exists();
            let file = open(n, false)?;
            preallocate(&file, super::hot::MAX_LOG_BYTES);
            forget_cached(&file);
        }
        if created {
            crate::atomic_file::sync_dir(dir)?;
        }
        let direct = match (want_direct, open(0, true), open(1, true)) {
            (true, Ok(a), Ok(b)) => direct_unit(&a).map(|unit| ([a, b], unit)),
            _ => None,
        };
        let (files, unit) = match direct {
            Some((files, unit)) => (files, Some(unit)),
            None => ([open(0, false)?, open(1, false)?], None),
        };
        Ok(Wal {
            files: files.map(std::sync::Arc::new),
            unit,
            generation,
            offset: 0,
            tail: Vec::new(),
            buf: Vec::new(),
        })
    }

    pub(super) fn is_direct(&self) -> bool {
        self.unit.is_some()
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes written to this generation's file so far (and waiting).
    pub(super) fn len(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }

    /// Add a record of `ops` to the next sync.
    pub(super) fn append<'a>(&mut self, ops: impl IntoIterator<Item = &'a Op>) {
        let mut ops = ops.into_iter().peekable();
        if ops.peek().is_some() {
            encode(self.generation, ops, &mut self.buf);
        }
    }

    /// Whether a record waits for a sync.
    pub(super) fn is_dirty(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Take what waits for [`Pending::write`]: buffered, padded to a page (so the next sync
    /// starts on a page of its own); direct, from the start of the sector the last sync ended
    /// in, padded to a sector (the next sync writes that sector again, with the same bytes).
    pub(super) fn take(&mut self) -> Pending {
        let file = self.files[(self.generation % 2) as usize].clone();
        let new = std::mem::take(&mut self.buf);
        if new.is_empty() {
            return Pending {
                file,
                direct: self.is_direct(),
                offset: self.offset,
                bytes: Vec::new(),
            };
        }
        let Some(sector) = self.unit else {
            let mut bytes = new;
            bytes.resize((bytes.len() as u64).next_multiple_of(PAGE) as usize, 0);
            let offset = self.offset;
            self.offset += bytes.len() as u64;
            return Pending {
                file,
                direct: false,
                offset,
                bytes,
            };
        };
        let start = self.offset - self.tail.len() as u64;
        let mut bytes = std::mem::take(&mut self.tail);
        bytes.extend_from_slice(&new);
        self.offset += new.len() as u64;
        let sector = sector as usize;
        let whole = bytes.len() / sector * sector;
        self.tail = bytes[whole..].to_vec();
        bytes.resize(bytes.len().next_multiple_of(sector), 0);
        Pending {
            file,
            direct: true,
            offset: start,
            bytes,
        }
    }

    /// Start generation `generation + 1` in the other file. Only once the checkpoint of every
    /// generation before the current one is durable: the new one overwrites the one before.
    /// What waits for a sync moves to the new generation.
    pub(super) fn rotate(&mut self) {
        let waiting = std::mem::take(&mut self.buf);
        self.generation += 1;
        self.offset = 0;
        self.tail.clear();
        // Re-encode what waited under the new generation (records name their generation).
        for ops in records(&waiting).map(|(_, all)| all).unwrap_or_default() {
            encode(self.generation, &ops, &mut self.buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(tree: &str, key: &[u8], value: Option<&[u8]>) -> Op {
        Op::new(tree, key, value)
    }

    fn batch(n: u8) -> Vec<Op> {
        vec![
            op("outbox", &[n; 8], Some(&[n; 300])),
            op("devices", b"room-1", Some(b"{\"online\":true}")),
            op("outbox.b", &[n; 8], None),
        ]
    }

    #[test]
    fn records_come_back_as_written_across_page_padding_and_stop_at_damage() {
        // (what the file holds, the generation and batches read back)
        let mut one = Vec::new();
        encode(3, &batch(1), &mut one);
        let mut padded = one.clone();
        padded.resize(PAGE as usize, 0);
        encode(3, &batch(2), &mut padded);
        let mut two_gens = one.clone();
        encode(4, &batch(2), &mut two_gens);
        let mut torn = padded.clone();
        torn.truncate(torn.len() - 1);
        let mut flipped = padded.clone();
        let last = flipped.len() - 10;
        flipped[last] ^= 1;
        let mut stale_after = padded.clone();
        stale_after.resize(2 * PAGE as usize, 0);
        encode(1, &batch(9), &mut stale_after);
        let cases: Vec<(&str, Vec<u8>, Option<Generation>)> = vec![
            ("empty", vec![], None),
            ("zeros", vec![0; 8192], None),
            ("one", one.clone(), Some((3, vec![batch(1)]))),
            (
                "padded",
                padded.clone(),
                Some((3, vec![batch(1), batch(2)])),
            ),
            (
                "another generation after",
                two_gens,
                Some((3, vec![batch(1)])),
            ),
            ("torn tail", torn, Some((3, vec![batch(1)]))),
            ("flipped bit", flipped, Some((3, vec![batch(1)]))),
            (
                "older record after padding",
                stale_after,
                Some((3, vec![batch(1), batch(2)])),
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(records(&bytes), want, "{name}");
        }
    }

    /// Found by the low-rate benchmark: after the files were written full of zeros, each sync
    /// of one page counted (and wrote) a whole 1 MiB folio of the page cache.
    #[test]
    fn a_sync_of_a_small_batch_writes_a_page_not_a_large_folio() {
        let written = || {
            let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 1).unwrap();
        let before = written();
        for n in 0..50 {
            wal.append(&batch(n));
            wal.take().write().unwrap(); // on this thread, so its I/O is counted here
        }
        let per_sync = (written() - before) / 50;
        assert!(per_sync <= 2 * PAGE, "{per_sync} bytes written per sync");
    }

    #[test]
    fn a_generation_overwrites_the_one_two_before_and_reads_back_in_order() {
        // direct, in 512-byte and 4 KiB sectors (a device of 4 KiB sectors), and buffered
        for (direct, sector) in [(true, 512), (true, 4096), (false, 0)] {
            generations_read_back(direct, sector);
        }
    }

    #[test]
    fn a_direct_write_is_aligned_to_what_the_kernel_says() {
        // (statx's offset and memory alignment) -> the unit, or None for the page cache
        let table = [
            ((512, 512), Some(512)),
            ((512, 4), Some(512)),
            ((4096, 512), Some(4096)),
            ((4, 4), Some(512)),
            ((0, 0), None),
            ((8192, 512), None),
            ((512, 8192), None),
        ];
        for ((offset, memory), want) in table {
            assert_eq!(unit_of(offset, memory), want, "{offset} {memory}");
        }
        // and this machine's temporary directory answers one way or the other
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open_as(dir.path(), 1, true).unwrap();
        eprintln!("direct {}, unit {}", wal.is_direct(), wal.unit.unwrap_or(0));
        assert!(wal
            .unit
            .is_none_or(|unit| [512, 1024, 2048, 4096].contains(&unit)));
    }

    fn generations_read_back(direct: bool, sector: u64) {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open_as(dir.path(), 1, direct).unwrap();
        eprintln!("direct I/O asked {direct}, used {}", wal.is_direct());
        // (never below the device's own unit: on a device of 4 KiB sectors, 512 is refused)
        if let Some(unit) = &mut wal.unit {
            *unit = (*unit).max(sector);
        }
        let sync = |wal: &mut Wal| {
            let pending = wal.take();
            if let Some(sector) = wal.unit {
                let (at, len) = (pending.offset, pending.bytes.len() as u64);
                assert!(
                    at % sector == 0 && len % sector == 0,
                    "{at} {len} in {sector}"
                );
            }
            pending.write().unwrap();
        };
        wal.append(&batch(1));
        wal.append(&batch(2));
        sync(&mut wal);
        wal.append(&batch(3));
        sync(&mut wal);
        if !wal.is_direct() {
            assert_eq!(wal.len(), 2 * PAGE, "each sync on its own page");
        }
        wal.append(&batch(4));
        wal.rotate(); // batch 4 waited: it moves to generation 2
        sync(&mut wal);
        let read_all = |through| read(dir.path(), through).unwrap().0;
        assert_eq!(
            read_all(0),
            vec![(1, vec![batch(1), batch(2), batch(3)]), (2, vec![batch(4)])]
        );
        assert_eq!(read_all(1), vec![(2, vec![batch(4)])]);
        wal.rotate(); // generation 3 overwrites 1, shorter than it
        wal.append(&batch(5));
        sync(&mut wal);
        assert_eq!(
            read_all(0),
            vec![(2, vec![batch(4)]), (3, vec![batch(5)])],
            "generation 1's second page is not read as part of 3"
        );
        assert_eq!(read_all(3), vec![]);
    }
}
