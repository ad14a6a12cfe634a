//! A simulated SD card that loses power: a FUSE filesystem, all in memory, that keeps apart what
//! was written and what was made durable, and on a power cut throws away everything that was
//! not.
//!
//! What survives a cut, and nothing more:
//! - a file's bytes (and its size) as of its last `fsync`/`fdatasync`; with tearing, also a
//!   random prefix of the writes after it, in the order they were made, the last one cut at a
//!   512-byte sector (as a card that lost power mid-write leaves them);
//! - a directory's entries as of its last `fsync`: a create, rename or unlink whose directory
//!   was not synced afterwards is undone, whether or not the file itself was synced.
//!
//! [`PowerCut::cut`] freezes the filesystem at once (every operation fails with `EIO`, as on a
//! card without power) and reverts it to what was durable; [`PowerCut::power_on`] serves again.
//! Files are opened with direct I/O and no attribute caching, so that the kernel's page cache
//! keeps nothing the cut threw away. Mounting needs `/dev/fuse` and `fusermount3` (Debian
//! package `fuse3`); only the mounting user (and root) may use the mount.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const SECTOR: usize = 512;
const NO_TTL: Duration = Duration::ZERO;

/// One write since the last sync, as the card may or may not have it after a cut.
#[derive(Debug, Clone)]
enum Pending {
    Write { offset: usize, data: Vec<u8> },
    Truncate(usize),
}

#[derive(Debug, Default)]
struct Node {
    dir: bool,
    perm: u16,
    /// What a read sees now.
    data: Vec<u8>,
    /// What a cut leaves.
    durable: Vec<u8>,
    /// The writes between `durable` and `data`, in order.
    pending: Vec<Pending>,
    entries: BTreeMap<OsString, u64>,
    durable_entries: BTreeMap<OsString, u64>,
    mtime: Option<SystemTime>,
}

#[derive(Debug)]
struct State {
    nodes: HashMap<u64, Node>,
    next: u64,
    frozen: bool,
    /// A full card: every write, and every create, fails with `ENOSPC` — an overwrite too, as
    /// on a copy-on-write filesystem or a card whose controller has no spare block left (a
    /// full ext4 still overwrites in place: the tmpfs test in `faults` covers that one).
    full: bool,
    /// Cut the power right after the next unlink (see [`PowerCut::cut_at_next_unlink`]).
    cut_at_unlink: bool,
    rng: fastrand::Rng,
    /// Bytes written and synced, for the test's account.
    written: u64,
    syncs: u64,
}

/// The filesystem; see the module docs.
#[derive(Clone)]
pub struct PowerCut {
    state: Arc<Mutex<State>>,
}

/// A mounted [`PowerCut`]; unmounted on drop.
pub struct Mounted {
    pub fs: PowerCut,
    _session: fuser::BackgroundSession,
}

impl PowerCut {
    /// An empty filesystem; `seed` decides what tearing keeps.
    pub fn new(seed: u64) -> PowerCut {
        let mut nodes = HashMap::new();
        nodes.insert(
            INodeNo::ROOT.0,
            Node {
                dir: true,
                perm: 0o755,
                ..Default::default()
            },
        );
        PowerCut {
            state: Arc::new(Mutex::new(State {
                nodes,
                next: INodeNo::ROOT.0 + 1,
                frozen: false,
                full: false,
                cut_at_unlink: false,
                rng: fastrand::Rng::with_seed(seed),
                written: 0,
                syncs: 0,
            })),
        }
    }

    /// Mount at `mountpoint` (an existing empty directory), served by background threads.
    pub fn mount(self, mountpoint: &Path) -> std::io::Result<Mounted> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("powercut".into())];
        let session = fuser::spawn_mount(self.clone(), mountpoint, &config)?;
        Ok(Mounted {
            fs: self,
            _session: session,
        })
    }

    /// Lose power now: freeze, and keep only what was durable (with `tear`, also a random
    /// prefix of each file's later writes).
    pub fn cut(&self, tear: bool) {
        self.lock().cut(tear);
    }

    /// Lose power at the next unlink, right after it (and with it made durable: a card may
    /// well have it, its directory's journal written on its own). For a test that a file is
    /// only deleted once nothing durable needs it.
    pub fn cut_at_next_unlink(&self) {
        self.lock().cut_at_unlink = true;
    }

    /// Power back on: serve again, from what the cut left.
    pub fn power_on(&self) {
        self.lock().frozen = false;
    }

    /// Fill the card (`true`: every write and every create fails with
    /// `ENOSPC`) or make room again.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// (bytes written, syncs) so far.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.written, st.syncs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the state unless the power is off.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut st = self.lock();
        if st.frozen {
            return Err(Errno::EIO);
        }
        f(&mut st)
    }
}

fn write_at(data: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    if data.len() < offset + bytes.len() {
        data.resize(offset + bytes.len(), 0);
    }
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
}

impl State {
    /// See [`PowerCut::cut`].
    fn cut(&mut self, tear: bool) {
        self.frozen = true;
        self.cut_at_unlink = false;
        let State { nodes, rng, .. } = self;
        for node in nodes.values_mut() {
            node.entries = node.durable_entries.clone();
            let mut data = std::mem::take(&mut node.durable);
            if tear && !node.pending.is_empty() {
                let keep = rng.usize(..=node.pending.len());
                for (i, p) in node.pending.iter().enumerate().take(keep + 1) {
                    let torn = i == keep;
                    match p {
                        Pending::Truncate(len) if !torn => data.resize(*len, 0),
                        Pending::Write {
                            offset,
                            data: bytes,
                        } => {
                            let n = if torn {
                                (rng.usize(..=bytes.len() / SECTOR) * SECTOR).min(bytes.len())
                            } else {
                                bytes.len()
                            };
                            write_at(&mut data, *offset, &bytes[..n]);
                        }
                        Pending::Truncate(_) => {}
                    }
                }
            }
            node.pending.clear();
            node.durable = data.clone();
            node.data = data;
        }
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.nodes.get(&ino.0).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let size = node.data.len() as u64;
        let t = node.mtime.unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: if node.dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: node.perm,
            nlink: if node.dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<u64, Errno> {
        self.node(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn add(&mut self, parent: INodeNo, name: &OsStr, dir: bool, perm: u16) -> Result<u64, Errno> {
        if self.full {
            return Err(Errno::ENOSPC);
        }
        if !self.node(parent)?.dir {
            return Err(Errno::ENOTDIR);
        }
        if self.node(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                dir,
                perm,
                mtime: Some(SystemTime::now()),
                ..Default::default()
            },
        );
        self.node_mut(parent)?.entries.insert(name.to_owned(), ino);
        Ok(ino)
    }
}

fn reply_entry(result: Result<FileAttr, Errno>, reply: ReplyEntry) {
    match result {
        Ok(attr) => reply.entry(&NO_TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(result: Result<(), Errno>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PowerCut {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(
            self.with(|st| {
                let ino = st.child(parent, name)?;
                st.attr(ino)
            }),
            reply,
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|st| st.attr(ino.0)) {
            Ok(attr) => reply.attr(&NO_TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.with(|st| {
            let node = st.node_mut(ino)?;
            if let Some(mode) = mode {
                node.perm = (mode & 0o7777) as u16;
            }
            if let Some(size) = size {
                node.data.resize(size as usize, 0);
                node.pending.push(Pending::Truncate(size as usize));
                node.mtime = Some(SystemTime::now());
            }
            st.attr(ino.0)
        });
        match result {
            Ok(attr) => reply.attr(&NO_TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            self.with(|st| {
                let ino = st.add(parent, name, true, ((mode & !umask) & 0o7777) as u16)?;
                st.attr(ino)
            }),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            self.with(|st| {
                let dir = st.node_mut(parent)?;
                dir.entries.remove(name).ok_or(Errno::ENOENT)?;
                if st.cut_at_unlink {
                    st.node_mut(parent)?.durable_entries.remove(name);
                    st.cut(false);
                }
                Ok(())
            }),
            reply,
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            self.with(|st| {
                let ino = st.child(parent, name)?;
                if !st.nodes[&ino].entries.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                st.node_mut(parent)?.entries.remove(name);
                Ok(())
            }),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            self.with(|st| {
                let ino = st.child(parent, name)?;
                st.node_mut(parent)?.entries.remove(name);
                st.node_mut(newparent)?
                    .entries
                    .insert(newname.to_owned(), ino);
                Ok(())
            }),
            reply,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|st| st.node(ino).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.with(|st| {
            let ino = match st.child(parent, name) {
                Ok(ino) => ino,
                Err(_) => st.add(parent, name, false, ((mode & !umask) & 0o7777) as u16)?,
            };
            st.attr(ino)
        });
        match result {
            Ok(attr) => reply.created(
                &NO_TTL,
                &attr,
                Generation(0),
                FileHandle(attr.ino.0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.with(|st| {
            let data = &st.node(ino)?.data;
            let start = (offset as usize).min(data.len());
            let end = (start + size as usize).min(data.len());
            Ok(data[start..end].to_vec())
        });
        match result {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.with(|st| {
            let full = st.full;
            st.node_mut(ino)?;
            if full {
                return Err(Errno::ENOSPC);
            }
            st.written += data.len() as u64;
            let node = st.node_mut(ino)?;
            write_at(&mut node.data, offset as usize, data);
            node.pending.push(Pending::Write {
                offset: offset as usize,
                data: data.to_vec(),
            });
            node.mtime = Some(SystemTime::now());
            Ok(data.len() as u32)
        });
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.with(|_| Ok(())), reply); // close() is not a sync
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            self.with(|st| {
                st.syncs += 1;
                let node = st.node_mut(ino)?;
                node.durable = node.data.clone();
                node.pending.clear();
                Ok(())
            }),
            reply,
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|st| st.node(ino).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.with(|st| {
            let node = st.node(ino)?;
            let mut all = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (ino.0, FileType::Directory, OsString::from("..")),
            ];
            for (name, child) in &node.entries {
                let kind = if st.nodes.get(child).is_some_and(|n| n.dir) {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                all.push((*child, kind, name.clone()));
            }
            Ok(all)
        });
        match result {
            Ok(all) => {
                for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            self.with(|st| {
                st.syncs += 1;
                let node = st.node_mut(ino)?;
                node.durable_entries = node.entries.clone();
                Ok(())
            }),
            reply,
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 20, 1 << 19, 1 << 19, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply_empty(self.with(|st| st.node(ino).map(|_| ())), reply);
    }
}
