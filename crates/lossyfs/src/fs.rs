//! The filesystem: a passthrough onto the backing directory for the namespace, with an in-memory
//! overlay for unsynced file data and a record of which new entries are not durable yet.
//!
//! All state lives in one [`State`] behind a mutex shared by the FUSE session thread and the
//! control thread, so a power loss ([`State::power_loss`]) is atomic with respect to every
//! filesystem request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::overlay::{read_full_at, Overlay};

/// Attributes and entries are never cached by the kernel: after a power loss the namespace and
/// file sizes change under it, and a cached size would e.g. make an O_APPEND write land past the
/// (reverted) end of file.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;
/// Largest file offset Linux accepts (loff_t is signed).
const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Which fsyncs make a newly created entry (file, directory, symlink) survive a power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirSync {
    /// An entry survives once its parent directory was fsynced after it was created, or once the
    /// entry itself was fsynced; an fsync also makes every ancestor directory's entry durable.
    /// This is what ext4 and XFS do in practice (an fsync commits the journal up to that point).
    Lenient,
    /// An entry survives only once its parent directory was fsynced after it was created (the
    /// letter of POSIX). Fsyncing a new file makes its data durable, not its name.
    Strict,
}

/// Counters since the mount started, plus the current amount of unsynced state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes accepted by write requests.
    pub bytes_written: u64,
    /// Bytes written to backing files by fsync/fdatasync.
    pub bytes_synced: u64,
    /// fsync/fdatasync calls on files (including O_SYNC/O_DSYNC writes).
    pub fsyncs: u64,
    /// fsync calls on directories.
    pub dir_fsyncs: u64,
    /// Power losses simulated.
    pub power_losses: u64,
    /// Dirty bytes discarded by all power losses.
    pub bytes_dropped: u64,
    /// Files, directories and symlinks removed by all power losses.
    pub entries_removed: u64,
    /// Unsynced bytes held right now.
    pub dirty_bytes: u64,
    /// Files with unsynced data or size right now.
    pub dirty_files: u64,
    /// New entries that a power loss right now would remove.
    pub pending_entries: u64,
}

/// What one simulated power loss discarded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerLossReport {
    /// Unsynced bytes discarded (written data; reverted truncations count in `files_reverted`).
    pub dirty_bytes: u64,
    /// Files whose unsynced data or size was discarded.
    pub files_reverted: u64,
    /// Files, directories and symlinks removed, counting the contents of removed directories.
    pub entries_removed: u64,
    /// The removed entries, relative to the mount root (a removed directory is listed once).
    pub removed: Vec<String>,
}

/// Kernel caches to invalidate after a power loss, done outside the state lock.
#[derive(Debug)]
pub enum Invalidation {
    Inode(u64),
    Entry { parent: u64, name: OsString },
}

#[derive(Debug)]
struct Node {
    /// None for the root and for entries that are gone (unlinked, replaced, lost): those stay
    /// usable through open handles, like an unlinked file on a real filesystem.
    parent: Option<u64>,
    name: OsString,
    kind: FileType,
    /// Kernel references (lookups minus forgets): the node must keep its number until 0.
    nlookup: u64,
    open_handles: u32,
    /// Backing file, open while there are handles or dirty data.
    file: Option<File>,
    overlay: Option<Overlay>,
    /// Created and not made durable yet: a power loss removes it.
    pending: bool,
}

struct DirSnapshot {
    entries: Vec<(u64, FileType, OsString)>,
}

/// The whole filesystem state.
pub struct State {
    backing: PathBuf,
    dir_sync: DirSync,
    nodes: HashMap<u64, Node>,
    /// (parent, name) -> node for every attached node.
    names: BTreeMap<(u64, OsString), u64>,
    next_ino: u64,
    next_fh: u64,
    dirs: HashMap<u64, DirSnapshot>,
    stats: Stats,
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn file_type(ft: fs::FileType) -> Option<FileType> {
    FileType::from_std(ft)
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = u32::try_from(nsecs.clamp(0, 999_999_999)).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nanos)
    }
}

fn timespec(t: Option<TimeOrNow>) -> rustix::fs::Timespec {
    match t {
        None => rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        Some(TimeOrNow::Now) => rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW },
        Some(TimeOrNow::SpecificTime(t)) => {
            let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
                Err(e) => (-i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX), 0),
            };
            rustix::fs::Timespec { tv_sec: secs, tv_nsec: nanos.into() }
        }
    }
}

impl State {
    pub fn new(backing: PathBuf, dir_sync: DirSync) -> io::Result<State> {
        let meta = fs::metadata(&backing)?;
        if !meta.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "backing is not a directory"));
        }
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                parent: None,
                name: OsString::new(),
                kind: FileType::Directory,
                nlookup: 1,
                open_handles: 0,
                file: None,
                overlay: None,
                pending: false,
            },
        );
        Ok(State {
            backing,
            dir_sync,
            nodes,
            names: BTreeMap::new(),
            next_ino: ROOT + 1,
            next_fh: 1,
            dirs: HashMap::new(),
            stats: Stats::default(),
        })
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// Backing path of an attached node; ENOENT for one that is gone.
    fn path(&self, ino: u64) -> Result<PathBuf, Errno> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let node = self.node(cur)?;
            parts.push(&node.name);
            cur = node.parent.ok_or(Errno::ENOENT)?;
        }
        let mut path = self.backing.clone();
        path.extend(parts.iter().rev());
        Ok(path)
    }

    fn child_path(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_bytes().contains(&b'/') || name == "." || name == ".." {
            return Err(Errno::EINVAL);
        }
        Ok(self.path(parent)?.join(name))
    }

    fn metadata(&self, ino: u64) -> Result<fs::Metadata, Errno> {
        let node = self.node(ino)?;
        match &node.file {
            Some(f) => f.metadata().map_err(errno),
            None => fs::symlink_metadata(self.path(ino)?).map_err(errno),
        }
    }

    fn attr(&self, ino: u64, meta: &fs::Metadata) -> FileAttr {
        let node = self.nodes.get(&ino);
        let overlay = node.and_then(|n| n.overlay.as_ref());
        let kind = node.map_or(FileType::RegularFile, |n| n.kind);
        let (size, blocks) = match overlay {
            Some(ov) => (ov.size(), ov.size().div_ceil(512).max(meta.blocks())),
            None => (meta.len(), meta.blocks()),
        };
        let ctime = system_time(meta.ctime(), meta.ctime_nsec());
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime: system_time(meta.atime(), meta.atime_nsec()),
            mtime: system_time(meta.mtime(), meta.mtime_nsec()),
            ctime,
            crtime: ctime,
            kind,
            perm: u16::try_from(meta.mode() & 0o7777).unwrap_or(0),
            nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: u32::try_from(meta.rdev()).unwrap_or(0),
            blksize: u32::try_from(meta.blksize()).unwrap_or(4096),
            flags: 0,
        }
    }

    fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let meta = self.metadata(ino)?;
        Ok(self.attr(ino, &meta))
    }

    fn insert_node(&mut self, parent: u64, name: &OsStr, kind: FileType, pending: bool) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                parent: Some(parent),
                name: name.to_owned(),
                kind,
                nlookup: 0,
                open_handles: 0,
                file: None,
                overlay: None,
                pending,
            },
        );
        self.names.insert((parent, name.to_owned()), ino);
        ino
    }

    /// The entry is gone from the namespace; the node lives on while the kernel or an open
    /// handle refers to it.
    fn detach(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            if let Some(parent) = node.parent.take() {
                self.names.remove(&(parent, node.name.clone()));
            }
            node.pending = false;
        }
        self.maybe_evict(ino);
    }

    fn has_children(&self, ino: u64) -> bool {
        self.names.range((ino, OsString::new())..).next().is_some_and(|((parent, _), _)| *parent == ino)
    }

    /// Forget a node nobody refers to, unless it carries state that must survive until the next
    /// lookup (unsynced data, pending creation) or has children that need it for their paths.
    fn maybe_evict(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.nodes.get(&ino) else { return };
        if node.nlookup > 0 || node.open_handles > 0 {
            return;
        }
        let attached = node.parent.is_some();
        if attached && (node.pending || node.overlay.is_some() || self.has_children(ino)) {
            return;
        }
        if let Some(node) = self.nodes.remove(&ino) {
            if let Some(parent) = node.parent {
                self.names.remove(&(parent, node.name));
            }
        }
    }

    /// Close the backing file when nothing needs it, so a big directory does not exhaust fds.
    fn maybe_close(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            if node.open_handles == 0 && node.overlay.is_none() {
                node.file = None;
            }
        }
    }

    fn ensure_file(&mut self, ino: u64) -> Result<(), Errno> {
        let node = self.node(ino)?;
        if node.file.is_some() {
            return Ok(());
        }
        match node.kind {
            FileType::RegularFile => {}
            FileType::Directory => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        let path = self.path(ino)?;
        // We run as root, so read-write always works on a writable backing filesystem; the
        // kernel checks the caller's own access mode (default_permissions).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|e| match e.raw_os_error() {
                Some(libc::EROFS) | Some(libc::EACCES) => File::open(&path),
                _ => Err(e),
            })
            .map_err(errno)?;
        self.node_mut(ino)?.file = Some(file);
        Ok(())
    }

    fn overlay_mut(&mut self, ino: u64) -> Result<&mut Overlay, Errno> {
        self.ensure_file(ino)?;
        let node = self.node_mut(ino)?;
        if node.overlay.is_none() {
            let base_len = match &node.file {
                Some(f) => f.metadata().map_err(errno)?.len(),
                None => return Err(Errno::EIO),
            };
            node.overlay = Some(Overlay::new(base_len));
        }
        node.overlay.as_mut().ok_or(Errno::EIO)
    }

    /// (current size, durable size) of a regular file.
    fn sizes(&mut self, ino: u64) -> Result<(u64, u64), Errno> {
        self.ensure_file(ino)?;
        let node = self.node(ino)?;
        match (&node.overlay, &node.file) {
            (Some(ov), _) => Ok((ov.size(), ov.base_len())),
            (None, Some(f)) => {
                let len = f.metadata().map_err(errno)?.len();
                Ok((len, len))
            }
            (None, None) => Err(Errno::EIO),
        }
    }

    /// The entry's name is durable (and in the lenient model its ancestors' too).
    fn entry_made_durable(&mut self, ino: u64, with_ancestors: bool) {
        let mut cur = Some(ino);
        while let Some(i) = cur {
            let Some(node) = self.nodes.get_mut(&i) else { break };
            node.pending = false;
            cur = if with_ancestors { node.parent } else { None };
        }
    }

    fn entry_fsynced(&mut self, ino: u64) {
        if self.dir_sync == DirSync::Lenient {
            self.entry_made_durable(ino, true);
        }
    }

    // ---- operations -------------------------------------------------------------------------

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let path = self.child_path(parent, name)?;
        let meta = fs::symlink_metadata(&path).map_err(errno)?;
        let kind = file_type(meta.file_type()).ok_or(Errno::EIO)?;
        let key = (parent, name.to_owned());
        let ino = match self.names.get(&key).copied() {
            Some(ino) if self.nodes.get(&ino).is_some_and(|n| n.kind == kind) => ino,
            existing => {
                // Only this process changes the backing directory, but if someone else did,
                // trust the backing directory over our memory.
                if let Some(old) = existing {
                    self.detach(old);
                }
                self.insert_node(parent, name, kind, false)
            }
        };
        self.node_mut(ino)?.nlookup += 1;
        Ok(self.attr(ino, &meta))
    }

    fn forget(&mut self, ino: u64, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.nlookup = node.nlookup.saturating_sub(n);
        }
        self.maybe_evict(ino);
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        let kind = self.node(ino)?.kind;
        if let Some(size) = size {
            if kind == FileType::Directory {
                return Err(Errno::EISDIR);
            }
            if size > MAX_FILE_SIZE {
                return Err(Errno::EFBIG);
            }
            self.overlay_mut(ino)?.truncate(size);
        }
        // Metadata changes go straight to the backing file: they are durable at once.
        let node = self.node(ino)?;
        // Owner before mode: chown clears the setuid/setgid bits.
        if uid.is_some() || gid.is_some() {
            match &node.file {
                Some(f) => std::os::unix::fs::fchown(f, uid, gid),
                None => std::os::unix::fs::lchown(self.path(ino)?, uid, gid),
            }
            .map_err(errno)?;
        }
        if let Some(mode) = mode {
            if kind == FileType::Symlink {
                return Err(Errno::ENOTSUP);
            }
            let perms = Permissions::from_mode(mode & 0o7777);
            match &node.file {
                Some(f) => f.set_permissions(perms),
                None => fs::set_permissions(self.path(ino)?, perms),
            }
            .map_err(errno)?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = rustix::fs::Timestamps { last_access: timespec(atime), last_modification: timespec(mtime) };
            match &node.file {
                // Through the descriptor: the file may be unlinked and still open.
                Some(f) => rustix::fs::futimens(f, &times),
                None => rustix::fs::utimensat(
                    rustix::fs::CWD,
                    self.path(ino)?,
                    &times,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                ),
            }
            .map_err(|e| Errno::from_i32(e.raw_os_error()))?;
        }
        self.getattr(ino)
    }

    /// Owner and mode bits for a new entry, following the caller and the parent's setgid bit.
    fn new_owner(&self, parent: u64, req_uid: u32, req_gid: u32) -> Result<(u32, u32, bool), Errno> {
        let pmeta = self.metadata(parent)?;
        let setgid = pmeta.mode() & libc::S_ISGID != 0;
        let gid = if setgid { pmeta.gid() } else { req_gid };
        Ok((req_uid, gid, setgid))
    }

    fn mkdir(&mut self, req: &Request, parent: u64, name: &OsStr, mode: u32, umask: u32) -> Result<FileAttr, Errno> {
        let path = self.child_path(parent, name)?;
        let (uid, gid, setgid) = self.new_owner(parent, req.uid(), req.gid())?;
        let mut mode = mode & !umask & 0o7777;
        if setgid {
            mode |= libc::S_ISGID;
        }
        fs::DirBuilder::new().mode(0o700).create(&path).map_err(errno)?;
        // Owner first (chown clears setuid/setgid), then an explicit chmod: our own umask must
        // not change the caller's mode.
        let finish = std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .and_then(|()| fs::set_permissions(&path, Permissions::from_mode(mode)));
        if let Err(e) = finish {
            let _ = fs::remove_dir(&path);
            return Err(errno(e));
        }
        self.new_entry(parent, name, FileType::Directory, &path)
    }

    fn new_entry(&mut self, parent: u64, name: &OsStr, kind: FileType, path: &Path) -> Result<FileAttr, Errno> {
        if let Some(old) = self.names.get(&(parent, name.to_owned())).copied() {
            self.detach(old);
        }
        let ino = self.insert_node(parent, name, kind, true);
        self.node_mut(ino)?.nlookup += 1;
        let meta = fs::symlink_metadata(path).map_err(errno)?;
        Ok(self.attr(ino, &meta))
    }

    fn create_file(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        exclusive: bool,
    ) -> Result<(FileAttr, u64), Errno> {
        let path = self.child_path(parent, name)?;
        let (uid, gid, _) = self.new_owner(parent, req.uid(), req.gid())?;
        let mode = mode & !umask & 0o7777;
        let file = match OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !exclusive => {
                // Raced with a creation the kernel did not see: open the existing file.
                let attr = self.lookup(parent, name)?;
                let ino = attr.ino.0;
                let fh = self.open(ino)?;
                return Ok((self.getattr(ino)?, fh));
            }
            Err(e) => return Err(errno(e)),
        };
        // Owner first (chown clears setuid/setgid), then the exact mode regardless of our umask.
        let finish = std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .and_then(|()| file.set_permissions(Permissions::from_mode(mode)));
        if let Err(e) = finish {
            let _ = fs::remove_file(&path);
            return Err(errno(e));
        }
        let attr = self.new_entry(parent, name, FileType::RegularFile, &path)?;
        let ino = attr.ino.0;
        let node = self.node_mut(ino)?;
        node.file = Some(file);
        node.open_handles += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        Ok((attr, fh))
    }

    fn symlink(&mut self, req: &Request, parent: u64, name: &OsStr, target: &Path) -> Result<FileAttr, Errno> {
        let path = self.child_path(parent, name)?;
        let (uid, gid, _) = self.new_owner(parent, req.uid(), req.gid())?;
        std::os::unix::fs::symlink(target, &path).map_err(errno)?;
        if let Err(e) = std::os::unix::fs::lchown(&path, Some(uid), Some(gid)) {
            let _ = fs::remove_file(&path);
            return Err(errno(e));
        }
        self.new_entry(parent, name, FileType::Symlink, &path)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let path = self.child_path(parent, name)?;
        if dir {
            fs::remove_dir(&path).map_err(errno)?;
        } else {
            fs::remove_file(&path).map_err(errno)?;
        }
        if let Some(ino) = self.names.get(&(parent, name.to_owned())).copied() {
            self.detach(ino);
        }
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let from = self.child_path(parent, name)?;
        let to = self.child_path(newparent, newname)?;
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &from,
            rustix::fs::CWD,
            &to,
            rustix::fs::RenameFlags::from_bits_retain(flags.bits()),
        )
        .map_err(|e| Errno::from_i32(e.raw_os_error()))?;

        let src = self.names.get(&(parent, name.to_owned())).copied();
        let dst = self.names.get(&(newparent, newname.to_owned())).copied();
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        if src.is_some() && src == dst {
            // Renaming an entry onto itself changes nothing.
            return Ok(());
        }
        if exchange {
            self.names.remove(&(parent, name.to_owned()));
            self.names.remove(&(newparent, newname.to_owned()));
            if let Some(d) = dst {
                self.place(d, parent, name);
            }
        } else if let Some(d) = dst {
            self.detach(d);
        }
        if let Some(s) = src {
            if !exchange {
                self.names.remove(&(parent, name.to_owned()));
            }
            self.place(s, newparent, newname);
        }
        // Simplification: a rename is durable at once, and so is the moved entry's name (its
        // data still needs an fsync).
        let with_ancestors = self.dir_sync == DirSync::Lenient;
        for ino in [src, if exchange { dst } else { None }].into_iter().flatten() {
            self.entry_made_durable(ino, with_ancestors);
        }
        Ok(())
    }

    fn place(&mut self, ino: u64, parent: u64, name: &OsStr) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.parent = Some(parent);
            node.name = name.to_owned();
            self.names.insert((parent, name.to_owned()), ino);
        }
    }

    fn open(&mut self, ino: u64) -> Result<u64, Errno> {
        self.ensure_file(ino)?;
        self.node_mut(ino)?.open_handles += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        Ok(fh)
    }

    fn release(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open_handles = node.open_handles.saturating_sub(1);
        }
        self.maybe_close(ino);
        self.maybe_evict(ino);
    }

    fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.ensure_file(ino)?;
        let node = self.node(ino)?;
        let file = node.file.as_ref().ok_or(Errno::EIO)?;
        match &node.overlay {
            Some(ov) => {
                ov.read(offset, u64::from(size), |buf, off| read_full_at(file, buf, off).map(|_| ())).map_err(errno)
            }
            None => {
                let mut buf = vec![0u8; size as usize];
                let n = read_full_at(file, &mut buf, offset).map_err(errno)?;
                buf.truncate(n);
                Ok(buf)
            }
        }
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8], flags: OpenFlags) -> Result<u32, Errno> {
        let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let (size, durable) = self.sizes(ino)?;
        // The kernel computes an O_APPEND write's offset from its cached size, which is stale for
        // a handle that stayed open across a power loss; our size is the authority (and Linux
        // appends even for pwrite on an O_APPEND handle).
        let offset = if flags.0 & libc::O_APPEND != 0 { size } else { offset };
        let end = offset.checked_add(u64::from(len)).filter(|&e| e <= MAX_FILE_SIZE).ok_or(Errno::EFBIG)?;
        self.reserve(end.saturating_sub(size.max(durable)))?;
        self.overlay_mut(ino)?.write(offset, data);
        self.stats.bytes_written += u64::from(len);
        if flags.0 & libc::O_DSYNC != 0 {
            // O_SYNC includes the O_DSYNC bit; O_SYNC alone also syncs metadata.
            let datasync = flags.0 & libc::O_SYNC != libc::O_SYNC;
            self.fsync(ino, datasync)?;
        }
        Ok(len)
    }

    /// ENOSPC unless the backing filesystem has `extra` bytes left beyond what everything
    /// unsynced will need. A real filesystem reserves space at write time (delayed allocation
    /// included), so a full disk fails the write, not a later fsync.
    fn reserve(&self, extra: u64) -> Result<(), Errno> {
        if extra == 0 {
            return Ok(());
        }
        let reserved: u64 = self.nodes.values().filter_map(|n| n.overlay.as_ref()).map(Overlay::growth).sum();
        let vfs = self.statfs()?;
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        if reserved.saturating_add(extra) > free {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    fn fsync(&mut self, ino: u64, datasync: bool) -> Result<(), Errno> {
        self.ensure_file(ino)?;
        let node = self.node_mut(ino)?;
        let file = node.file.as_ref().ok_or(Errno::EIO)?;
        let synced = match &node.overlay {
            Some(ov) => ov.sync_to(file, datasync).map_err(errno)?,
            None => {
                if datasync { file.sync_data() } else { file.sync_all() }.map_err(errno)?;
                0
            }
        };
        node.overlay = None;
        self.stats.fsyncs += 1;
        self.stats.bytes_synced += synced;
        self.entry_fsynced(ino);
        self.maybe_close(ino);
        Ok(())
    }

    fn fsyncdir(&mut self, ino: u64) -> Result<(), Errno> {
        let path = self.path(ino)?;
        File::open(&path).and_then(|d| d.sync_all()).map_err(errno)?;
        self.stats.dir_fsyncs += 1;
        let children: Vec<u64> = self
            .names
            .range((ino, OsString::new())..)
            .take_while(|((parent, _), _)| *parent == ino)
            .map(|(_, &child)| child)
            .collect();
        for child in children {
            self.entry_made_durable(child, false);
            self.maybe_evict(child);
        }
        self.entry_fsynced(ino);
        Ok(())
    }

    fn fallocate(&mut self, ino: u64, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        let end = offset.checked_add(length).filter(|&e| e <= MAX_FILE_SIZE).ok_or(Errno::EFBIG)?;
        match mode {
            0 => {
                let (size, durable) = self.sizes(ino)?;
                if end > size {
                    self.reserve(end.saturating_sub(size.max(durable)))?;
                    self.overlay_mut(ino)?.truncate(end);
                }
                Ok(())
            }
            // Preallocation without a size change has no visible effect here.
            libc::FALLOC_FL_KEEP_SIZE => {
                self.ensure_file(ino)?;
                Ok(())
            }
            _ => Err(Errno::ENOTSUP),
        }
    }

    fn opendir(&mut self, ino: u64) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        let parent = self.node(ino)?.parent.unwrap_or(ROOT);
        let mut entries =
            vec![(ino, FileType::Directory, OsString::from(".")), (parent, FileType::Directory, OsString::from(".."))];
        for entry in fs::read_dir(&path).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let Some(kind) = entry.file_type().ok().and_then(file_type) else { continue };
            let name = entry.file_name();
            // d_ino is informational only (no readdirplus); for names the kernel never looked
            // up, the backing inode number avoids allocating nodes nobody will forget.
            let child = self.names.get(&(ino, name.clone())).copied().unwrap_or_else(|| entry.ino());
            entries.push((child, kind, name));
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dirs.insert(fh, DirSnapshot { entries });
        Ok(fh)
    }

    fn statfs(&self) -> Result<rustix::fs::StatVfs, Errno> {
        rustix::fs::statvfs(&self.backing).map_err(|e| Errno::from_i32(e.raw_os_error()))
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        for node in self.nodes.values() {
            if let Some(ov) = &node.overlay {
                s.dirty_bytes += ov.dirty_bytes();
                s.dirty_files += 1;
            }
            if node.pending && node.parent.is_some() {
                s.pending_entries += 1;
            }
        }
        s
    }

    /// Simulate a power loss: discard all unsynced data and every pending entry, atomically.
    /// Returns the report and the kernel caches to invalidate once the lock is released.
    pub fn power_loss(&mut self) -> (PowerLossReport, Vec<Invalidation>) {
        let mut report = PowerLossReport::default();
        let mut inval = Vec::new();

        let dirty: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.overlay.is_some()).map(|(&i, _)| i).collect();
        for ino in dirty {
            if let Some(ov) = self.nodes.get_mut(&ino).and_then(|n| n.overlay.take()) {
                report.dirty_bytes += ov.dirty_bytes();
                report.files_reverted += 1;
                inval.push(Invalidation::Inode(ino));
            }
            self.maybe_close(ino);
            self.maybe_evict(ino);
        }

        // Shallowest first, so a removed directory takes its pending contents with it.
        let mut pending: Vec<(usize, u64, PathBuf)> = Vec::new();
        let pending_inos: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.pending).map(|(&i, _)| i).collect();
        for ino in pending_inos {
            match self.path(ino) {
                Ok(path) => pending.push((path.components().count(), ino, path)),
                Err(_) => {
                    if let Some(n) = self.nodes.get_mut(&ino) {
                        n.pending = false;
                    }
                }
            }
        }
        pending.sort();
        let mut removed: HashSet<u64> = HashSet::new();
        for (_, ino, path) in &pending {
            if self.has_ancestor_in(*ino, &removed) {
                removed.insert(*ino);
                continue;
            }
            let count = count_entries(path);
            let res = match fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(path),
                Ok(_) => fs::remove_file(path),
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => {
                    report.entries_removed += count;
                    let rel = path.strip_prefix(&self.backing).unwrap_or(path);
                    report.removed.push(rel.to_string_lossy().into_owned());
                }
                Err(e) => eprintln!("runnel-lossyfs: power loss: removing {}: {e}", path.display()),
            }
            removed.insert(*ino);
            if let Some(node) = self.nodes.get(ino) {
                if let Some(parent) = node.parent {
                    inval.push(Invalidation::Entry { parent, name: node.name.clone() });
                }
            }
        }
        // Every node at or under a removed entry is gone now.
        let gone: Vec<u64> = self.nodes.keys().copied().filter(|&i| self.has_ancestor_in(i, &removed)).collect();
        for ino in gone {
            self.detach(ino);
        }

        self.stats.power_losses += 1;
        self.stats.bytes_dropped += report.dirty_bytes;
        self.stats.entries_removed += report.entries_removed;
        report.removed.sort();
        (report, inval)
    }

    /// Whether `ino` or one of its ancestors is in `set`.
    fn has_ancestor_in(&self, ino: u64, set: &HashSet<u64>) -> bool {
        let mut cur = Some(ino);
        while let Some(i) = cur {
            if set.contains(&i) {
                return true;
            }
            cur = self.nodes.get(&i).and_then(|n| n.parent);
        }
        false
    }
}

/// Entries at and below `path` (1 for a file).
fn count_entries(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return 1;
    }
    1 + fs::read_dir(path).map(|rd| rd.flatten().map(|e| count_entries(&e.path())).sum::<u64>()).unwrap_or(0)
}

/// The FUSE side: every request locks the state once.
pub struct LossyFs {
    state: Arc<Mutex<State>>,
}

impl LossyFs {
    pub fn new(state: Arc<Mutex<State>>) -> Self {
        LossyFs { state }
    }
}

/// Data and metadata bypass the kernel page cache: every read must come to us so that a power
/// loss is visible at once, and every write must come to us to be counted and kept.
fn open_flags() -> FopenFlags {
    FopenFlags::FOPEN_DIRECT_IO
}

impl fuser::Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.state.lock().lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.state.lock().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state.lock().getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.state.lock().setattr(ino.0, mode, uid, gid, size, atime, mtime) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let st = self.state.lock();
        match st.path(ino.0).and_then(|p| fs::read_link(p).map_err(errno)) {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Device nodes, FIFOs and sockets are not needed by anything that runs on this.
            reply.error(Errno::EPERM);
            return;
        }
        let mut st = self.state.lock();
        let res = st.create_file(req, parent.0, name, mode, umask, true).map(|(attr, _fh)| {
            st.release(attr.ino.0);
            attr
        });
        match res {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self.state.lock().mkdir(req, parent.0, name, mode, umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state.lock().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state.lock().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        match self.state.lock().symlink(req, parent.0, link_name, target) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.state.lock().rename(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        // Hard links would give a node several names; the durability bookkeeping assumes one.
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state.lock().open(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), open_flags()),
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
        match self.state.lock().read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
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
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state.lock().write(ino.0, offset, data, flags) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() does not make anything durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state.lock().release(ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        match self.state.lock().fsync(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state.lock().opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let st = self.state.lock();
        let Some(snapshot) = st.dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in snapshot.entries.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.state.lock().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.state.lock().fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.state.lock().statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                u32::try_from(s.f_bsize).unwrap_or(4096),
                u32::try_from(s.f_namemax).unwrap_or(255),
                u32::try_from(s.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let exclusive = flags & libc::O_EXCL != 0;
        match self.state.lock().create_file(req, parent.0, name, mode, umask, exclusive) {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), open_flags()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.state.lock().fallocate(ino.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
