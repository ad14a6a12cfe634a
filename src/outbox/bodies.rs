//! Event bodies out of sled. At a checkpoint, the records still held in memory (written since
//! the last one and not yet delivered) go into sled as *pointers*: the record's header (type,
//! lane, id) inline, its body appended to a segment file here (see `format::pointer`), with
//! the body's CRC-32 in the pointer, checked at every read. Putting a backlog through sled's
//! tree costs memory (its nodes copied at each split, its cache, its write buffers) and
//! writes (its pages written again); a segment is written once, in order, and deleted whole.
//!
//! # Layout
//! `outbox.bodies/<n>`: segment `n` (decimal), the bodies one after another, nothing else.
//! Segment numbers only grow. A new segment is started when the current one passes
//! [`SEGMENT_BYTES`] and at every open (a segment torn by a crash is never appended to).
//!
//! # Rules
//! 1. A body is synced (`fdatasync`, and the directory for a new segment) before sled holds a
//!    pointer to it: the caller inserts the pointers only after [`Bodies::append`] returned.
//! 2. A segment is deleted only when no queue points into it any more, as of a checkpoint
//!    that is durable: the pointers are counted inside the checkpoint (the state it makes
//!    durable; [`Bodies::collect`]), and [`Bodies::delete`] runs after that checkpoint's sync.
//!    No pointer is ever made into a segment other than the current one, so one unreferenced
//!    stays so. A segment mostly garbage has its survivors put back into sled whole in that
//!    checkpoint first, so the closed segments never hold more than twice what is live.
//! 3. After a crash the log's generations are applied to sled with the records inline, so a
//!    segment written by a checkpoint that did not become durable is simply not referenced.
//! 4. A body that cannot be read back as it was written (its segment missing or short, its
//!    checksum different) is that record's damage alone: the read sets the record aside as a
//!    dead letter (`format::DAMAGED`) and goes on, and a checkpoint leaves its pointer as it
//!    is. It is never sent, and never holds up the records after it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::atomic_file::sync_dir;

/// A segment is closed once it holds this many bytes.
pub(super) const SEGMENT_BYTES: u64 = 4 << 20;

/// Where a body is: segment, offset in it, length, and its CRC-32 (`None` in a pointer an
/// earlier version made, which had none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BodyAt {
    pub(super) segment: u64,
    pub(super) offset: u32,
    pub(super) len: u32,
    pub(super) crc: Option<u32>,
}

/// The body at `at` in the segments of `dir` (read without the appender's lock: a segment is
/// only appended to, and deleted once nothing points into it). `NotFound` or `UnexpectedEof`:
/// the segment is missing or shorter than the pointer says (damaged, or removed by hand);
/// `InvalidData`: the bytes there are not the body's (its checksum differs: a card's bit rot).
pub(super) fn read(dir: &Path, at: BodyAt) -> io::Result<Vec<u8>> {
    let mut body = vec![0; at.len as usize];
    File::open(dir.join(at.segment.to_string()))?.read_exact_at(&mut body, u64::from(at.offset))?;
    if at.crc.is_some_and(|crc| crc != crc32fast::hash(&body)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a body does not match its checksum",
        ));
    }
    Ok(body)
}

/// The segments: the one appended to, and what each holds (by sequence number).
pub(super) struct Bodies {
    dir: PathBuf,
    current: Option<(u64, File, u64)>,
    /// Per segment, the lowest and highest sequence number of the bodies it holds, and its
    /// bytes. Known for the segments written since open and those [`Bodies::saw`] reported.
    held: BTreeMap<u64, Held>,
    /// The next segment's number.
    next: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    lo: u64,
    hi: u64,
    bytes: u64,
}

impl Held {
    /// A segment no body of which anyone is known to need yet (`lo > hi`).
    const NONE: Held = Held {
        lo: u64::MAX,
        hi: 0,
        bytes: 0,
    };
}

impl Bodies {
    /// The segments in `dir` (made if missing). Nothing is appended to them: the next
    /// [`Bodies::append`] starts a new segment.
    pub(super) fn open(dir: &Path) -> io::Result<Bodies> {
        std::fs::create_dir_all(dir)?;
        let mut next = 0;
        let mut held = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            next = next.max(n + 1);
            // Its sequence numbers are learnt from the pointers (`saw`); until then it
            // holds nothing anyone is known to need.
            held.insert(
                n,
                Held {
                    bytes: entry.metadata()?.len(),
                    ..Held::NONE
                },
            );
        }
        Ok(Bodies {
            dir: dir.to_path_buf(),
            current: None,
            held,
            next,
        })
    }

    /// A pointer of `seq` into `segment` exists (learnt at open, from the queues).
    pub(super) fn saw(&mut self, segment: u64, seq: u64) {
        let h = self.held.entry(segment).or_insert(Held::NONE);
        h.lo = h.lo.min(seq);
        h.hi = h.hi.max(seq);
    }

    /// Append `bodies` (sequence number, body) to the current segment, synced; where each is.
    /// After a failure the segment is closed: what was written of it is garbage, and the next
    /// append, in a new segment, cannot count offsets from a length the file no longer has. A
    /// segment closed with nothing good in it is deleted at once: on a full disk every
    /// checkpoint tried (about one a second) would otherwise leave a file behind.
    pub(super) fn append<'a>(
        &mut self,
        bodies: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> io::Result<Vec<BodyAt>> {
        let appended = self.try_append(bodies);
        if appended.is_err() {
            if let Some((n, _, 0)) = self.current.take() {
                self.held.remove(&n);
                // Left behind (it cannot be removed either), it is found at the next open
                // with nothing pointing into it, and goes at the checkpoint after.
                let _ = std::fs::remove_file(self.dir.join(n.to_string()));
            }
        }
        appended
    }

    fn try_append<'a>(
        &mut self,
        bodies: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> io::Result<Vec<BodyAt>> {
        let full = self
            .current
            .as_ref()
            .is_some_and(|(_, _, len)| *len >= SEGMENT_BYTES);
        if full {
            self.current = None;
        }
        if self.current.is_none() {
            // A number taken since open (a checkpoint of the instance before a reopen, still
            // appending when this one listed the directory) is skipped, never appended to.
            let (n, file) = loop {
                let n = self.next;
                self.next = n + 1;
                match OpenOptions::new()
                    .create_new(true)
                    .read(true)
                    .append(true)
                    .open(self.dir.join(n.to_string()))
                {
                    Ok(file) => break (n, file),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => {
                        self.next = n;
                        return Err(e);
                    }
                }
            };
            sync_dir(&self.dir)?;
            self.current = Some((n, file, 0));
        }
        let (segment, file, len) = self.current.as_mut().expect("made above");
        let mut at = Vec::new();
        let mut out = std::io::BufWriter::with_capacity(64 << 10, &*file);
        let mut end = *len;
        let held = self.held.entry(*segment).or_insert(Held::NONE);
        for (seq, body) in bodies {
            out.write_all(body)?;
            at.push(BodyAt {
                segment: *segment,
                offset: u32::try_from(end).map_err(io::Error::other)?,
                len: u32::try_from(body.len()).map_err(io::Error::other)?,
                crc: Some(crc32fast::hash(body)),
            });
            end += body.len() as u64;
            held.lo = held.lo.min(seq);
            held.hi = held.hi.max(seq);
        }
        out.flush()?;
        drop(out);
        if end > *len {
            file.sync_data()?;
        }
        held.bytes = end;
        *len = end;
        Ok(at)
    }

    /// The lowest and highest sequence number the closed segments hold: where a pointer into
    /// one of them can be. None when there is no closed segment with a body anyone saw.
    pub(super) fn closed_span(&self) -> Option<(u64, u64)> {
        let current = self.current.as_ref().map(|(n, _, _)| *n);
        self.held
            .iter()
            .filter(|(n, h)| Some(**n) != current && h.lo <= h.hi)
            .map(|(_, h)| (h.lo, h.hi))
            .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
    }

    /// Given the bytes of the bodies each segment still has pointers to (`live`): the closed
    /// segments nothing points into (to delete), and those mostly garbage — less than half of
    /// their bytes live — whose survivors go back into sled whole first (then they are
    /// deleted too). So the closed segments hold at most twice what is live in them, whatever
    /// a paused endpoint keeps (its surviving health events are scattered across segments).
    pub(super) fn collect(&self, live: &HashMap<u64, u64>) -> (Vec<u64>, Vec<u64>) {
        let current = self.current.as_ref().map(|(n, _, _)| *n);
        let (mut gone, mut emptied) = (Vec::new(), Vec::new());
        for (n, h) in self.held.iter().filter(|(n, _)| Some(**n) != current) {
            match live.get(n).copied().unwrap_or(0) {
                0 => gone.push(*n),
                bytes if bytes * 2 < h.bytes => emptied.push(*n),
                _ => {}
            }
        }
        (gone, emptied)
    }

    /// Delete `segments` (see the module's rule 2 for when).
    pub(super) fn delete(&mut self, segments: &[u64]) -> io::Result<()> {
        for n in segments {
            match std::fs::remove_file(self.dir.join(n.to_string())) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.held.remove(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u64, offset: u32, body: &[u8]) -> BodyAt {
        BodyAt {
            segment,
            offset,
            len: body.len() as u32,
            crc: Some(crc32fast::hash(body)),
        }
    }

    #[test]
    fn bodies_are_read_back_where_append_put_them_across_segments_and_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.bodies");
        let mut b = Bodies::open(&path).unwrap();
        let put = b.append([(1, &b"one"[..]), (2, &b"second"[..])]).unwrap();
        assert_eq!(put, vec![at(0, 0, b"one"), at(0, 3, b"second")]);
        assert_eq!(read(&path, put[1]).unwrap(), b"second");
        drop(b);
        // A new life appends to a new segment; the old one is still read.
        let mut b = Bodies::open(&path).unwrap();
        let later = b.append([(3, &b"third"[..])]).unwrap();
        assert_eq!(later[0].segment, 1);
        assert_eq!(read(&path, put[0]).unwrap(), b"one");
        assert_eq!(read(&path, later[0]).unwrap(), b"third");
    }

    /// A body whose bytes changed on disk fails its checksum; one an earlier version pointed
    /// to (no checksum) is read as it is; a segment cut short is `UnexpectedEof`.
    #[test]
    fn a_body_is_read_back_only_as_it_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Bodies::open(dir.path()).unwrap();
        let put = b.append([(1, &b"one"[..]), (2, &b"two"[..])]).unwrap();
        std::fs::write(dir.path().join("0"), b"onxtw").unwrap();
        let err = |at| read(dir.path(), at).unwrap_err().kind();
        assert_eq!(err(put[0]), io::ErrorKind::InvalidData);
        let old = BodyAt {
            crc: None,
            ..put[0]
        };
        assert_eq!(read(dir.path(), old).unwrap(), b"onx");
        assert_eq!(err(put[1]), io::ErrorKind::UnexpectedEof);
    }

    /// A failed append closes its segment: the next one starts a new segment, whose offsets
    /// are right whatever the failed one left in its file.
    #[test]
    fn an_append_that_fails_closes_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Bodies::open(dir.path()).unwrap();
        b.append([(1, &b"one"[..])]).unwrap();
        // The segment's file taken away under it: the append fails (its sync or write).
        let (_, file, _) = b.current.as_mut().unwrap();
        *file = File::open(dir.path().join("0")).unwrap(); // read-only: writes fail
        assert!(b.append([(2, &b"two"[..])]).is_err());
        assert!(b.current.is_none());
        assert!(dir.path().join("0").exists(), "it holds a good body");
        let put = b.append([(3, &b"three"[..])]).unwrap();
        assert_eq!(put, vec![at(1, 0, b"three")]);
        assert_eq!(read(dir.path(), put[0]).unwrap(), b"three");
        // A new segment whose first append fails holds nothing: it is not left behind.
        b.current = None;
        b.append([]).unwrap(); // segment 2 made, empty
        let (_, file, _) = b.current.as_mut().unwrap();
        *file = File::open(dir.path().join("2")).unwrap();
        assert!(b.append([(4, &b"four"[..])]).is_err());
        assert!(
            !dir.path().join("2").exists(),
            "an empty failed segment is deleted"
        );
        assert_eq!(
            b.append([(5, &b"five"[..])]).unwrap(),
            vec![at(3, 0, b"five")]
        );
    }

    /// Which segments go, and which are emptied first: (live bytes per segment) → (gone,
    /// emptied). Never the current one.
    #[test]
    fn a_segment_goes_when_nothing_points_into_it_and_is_emptied_when_mostly_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Bodies::open(dir.path()).unwrap();
        b.append([(10, &b"aaaa"[..]), (12, &b"bbbb"[..])]).unwrap(); // segment 0: 8 bytes
        b.current = None;
        b.append([(20, &b"cccccccc"[..])]).unwrap(); // segment 1: 8 bytes
        b.current = None;
        b.append([(30, &b"d"[..])]).unwrap(); // segment 2, the current one
        assert_eq!(b.closed_span(), Some((10, 20)));
        for (live, gone, emptied) in [
            (vec![(0, 8), (1, 8), (2, 1)], vec![], vec![]),
            (vec![(0, 4), (1, 8)], vec![], vec![]), // half live: kept as it is
            (vec![(0, 3), (1, 8)], vec![], vec![0]), // less than half: emptied
            (vec![(1, 8)], vec![0], vec![]),
            (vec![], vec![0, 1], vec![]), // never the current one (2)
        ] {
            let live: HashMap<u64, u64> = live.into_iter().collect();
            assert_eq!(b.collect(&live), (gone, emptied), "live {live:?}");
        }
        b.delete(&[0]).unwrap();
        assert!(!dir.path().join("0").exists());
        assert_eq!(b.closed_span(), Some((20, 20)));
    }

    /// A segment found at open that no pointer names (its checkpoint never became durable)
    /// holds nothing anyone needs.
    #[test]
    fn a_segment_no_pointer_names_is_unreferenced_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Bodies::open(dir.path()).unwrap();
        b.append([(5, &b"x"[..])]).unwrap();
        b.append([(6, &b"y"[..])]).unwrap();
        drop(b);
        let mut b = Bodies::open(dir.path()).unwrap();
        assert_eq!(b.closed_span(), None);
        assert_eq!(b.collect(&HashMap::new()), (vec![0], vec![]));
        b.saw(0, 6);
        assert_eq!(b.closed_span(), Some((6, 6)));
        assert_eq!(b.collect(&HashMap::from([(0, 2)])), (vec![], vec![]));
    }
}
