//! The FUSE adapter: converts kernel requests into [`FsCore`] calls and replies.
//!
//! Thin on purpose. Every operation that may touch the network moves its `Reply*` into a tokio
//! task and returns at once, so the few FUSE threads only read requests (fuser 0.18 replies are
//! `Send`; a dropped reply sends EIO). Each task runs inside a tracing span naming the op and
//! its arguments. This is the one place that logs failed operations: one line per failure with
//! op, inode, errno and cause. Writes of any kind answer EROFS (the mount is also `ro`, so the
//! kernel normally refuses them before they get here).

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
};
use tracing::Instrument;

use crate::fs::{Attr, FsCore, FsError, ReadOut};
use crate::metrics::{Metrics, global};
use crate::source::EntryKind;

/// How many directory entries the core prepares per readdir call (the kernel buffer takes
/// ~30–100 of them; preparing a few more is cheap).
const READDIR_BATCH: usize = 256;

/// The `fuser::Filesystem` of a mount.
pub struct FuseFs {
    core: Arc<FsCore>,
    rt: tokio::runtime::Handle,
    max_read: u32,
}

/// Largest READ the kernel sends by default: its limit of 256 pages.
pub const MAX_READ: u32 = 1 << 20;

impl FuseFs {
    pub fn new(core: Arc<FsCore>, rt: tokio::runtime::Handle) -> FuseFs {
        FuseFs {
            core,
            rt,
            max_read: MAX_READ,
        }
    }

    /// Asks the kernel for READs of at most `bytes` (a power of two, at least a page).
    pub fn with_max_read(mut self, bytes: u32) -> FuseFs {
        self.max_read = bytes.clamp(4096, MAX_READ);
        self
    }

    fn ttl(&self) -> Duration {
        self.core.config().ttl
    }

    /// Runs `fut` (operation `op`) on the runtime inside `span`.
    fn spawn<F>(&self, op: &'static str, span: tracing::Span, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        Metrics::add(&global().fuse_ops, 1);
        crate::metrics::fuse_op(op);
        self.rt.spawn(fut.instrument(span));
    }

    /// Logs a failed operation on `ino` once (with the inode's path) and returns its errno.
    fn fail(&self, op: &'static str, ino: u64, e: &FsError) -> Errno {
        fail(&self.core, op, ino, None, e)
    }
}

fn kind(k: EntryKind) -> FileType {
    match k {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
    }
}

/// FUSE attributes from the core's.
pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: if a.kind == EntryKind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
    }
}

/// Logs a failed operation once (op, path, errno, cause) and returns its errno. `child` is the
/// name looked up in directory `ino`. The path is only computed here, on failure, and only
/// when the line is going to be written.
fn fail(core: &FsCore, op: &'static str, ino: u64, child: Option<&str>, e: &FsError) -> Errno {
    let errno = e.errno();
    Metrics::add(&global().fuse_errors, 1);
    crate::metrics::fuse_error(op);
    match e {
        // Expected outcomes of ordinary use (`ls` of a missing name, probing xattrs).
        FsError::NotFound | FsError::NoAttr => {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let path = op_path(core, ino, child);
                tracing::debug!(op, path, ino, errno, error = %e, "operation failed");
            }
        }
        _ => {
            let path = op_path(core, ino, child);
            tracing::warn!(op, path, ino, errno, error = %e, "operation failed");
        }
    }
    Errno::from_i32(errno)
}

/// How long past `io_timeout` an operation may run before the adapter answers EIO itself.
const OP_GRACE: Duration = Duration::from_secs(1);

/// One deadline for a whole `open` or `read`. The core bounds each network step by `io_timeout`,
/// but an operation may chain several (a revalidation, then a fetch, then a retry of a random read);
/// under heavy faults the chaos suite saw an `open` take 13.6 s and a read 17.3 s with
/// `io_timeout = 4s`. The promise users get is per operation: an answer, or EIO within
/// `io_timeout` + [`OP_GRACE`]. Work still running (a shared block fetch) goes on for the next
/// reader that wants it. Listings (lookup, readdir, getattr) are not bounded this way: a large
/// directory legitimately takes many pages, each bounded by `io_timeout` on its own.
async fn bounded<T>(
    core: &FsCore,
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, FsError>>,
) -> Result<T, FsError> {
    let limit = core.config().io_timeout + OP_GRACE;
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(FsError::Source(crate::error::SourceError::Timeout(
            limit,
            op.to_string(),
        ))),
    }
}

fn op_path(core: &FsCore, ino: u64, child: Option<&str>) -> String {
    let dir = core.path_of(ino);
    match child {
        Some(c) if dir == "/" => format!("/{c}"),
        Some(c) => format!("{dir}/{c}"),
        None => dir,
    }
}

fn name_str(name: &OsStr) -> Option<String> {
    name.to_str().map(str::to_string)
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // readdirplus: `ls -l` and `find` get attributes with the listing, no lookup per entry.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_ASYNC_READ;
        let _ = config.add_capabilities(wanted & config.capabilities());
        // fuser derives max_pages from the larger of these; the kernel caps it at 256 pages
        // (1 MiB per READ). A smaller max_read lowers both.
        let _ = config.set_max_readahead(self.max_read);
        if self.max_read < MAX_READ {
            let _ = config.set_max_write(self.max_read);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        let core = self.core.clone();
        let ttl = self.ttl();
        let span = tracing::debug_span!("lookup", parent = parent.0, name = %name);
        self.spawn("lookup", span, async move {
            match core.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(fail(&core, "lookup", parent.0, Some(&name), &e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let core = self.core.clone();
        let ttl = self.ttl();
        self.spawn("getattr", tracing::debug_span!("getattr", ino = ino.0), async move {
            match core.getattr(ino.0).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => reply.error(fail(&core, "getattr", ino.0, None, &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let core = self.core.clone();
        self.spawn("readlink", tracing::debug_span!("readlink", ino = ino.0), async move {
            match bounded(&core, "readlink", core.readlink(ino.0)).await {
                Ok(t) => reply.data(t.as_bytes()),
                Err(e) => reply.error(fail(&core, "readlink", ino.0, None, &e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let core = self.core.clone();
        self.spawn("open", tracing::debug_span!("open", ino = ino.0), async move {
            match bounded(&core, "open", core.open(ino.0)).await {
                Ok((fh, keep)) => {
                    let f = if keep {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), f)
                }
                Err(e) => reply.error(fail(&core, "open", ino.0, None, &e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let core = self.core.clone();
        let unique = req.unique().0;
        core.announce_read(fh.0, offset);
        let span = tracing::debug_span!("read", ino = ino.0, fh = fh.0, offset, size);
        self.spawn("read", span, async move {
            match bounded(&core, "read", core.read_for(fh.0, offset, size, Some(unique))).await {
                Ok(ReadOut::Data(data)) => reply.data(&data),
                // The stream wrote the reply to /dev/fuse itself. Dropping `reply` would send a
                // second (refused) EIO answer and log a warning; forgetting it only leaks one
                // reference count of fuser's device handle (crate::splice, "Replying outside").
                Ok(ReadOut::Spliced) => std::mem::forget(reply),
                Err(e) => reply.error(fail(&core, "read", ino.0, None, &e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    // fuser's defaults for the next few answer ENOSYS and log a "[Not Implemented]" warning,
    // which every mount printed at its first `close` and first `cp` (SEEK_DATA). Each has a
    // plain answer for a read-only filesystem.

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        // Nothing is ever written, so there is nothing to flush or report.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        // The kernel sends only SEEK_DATA and SEEK_HOLE (`cp` and `tar` look for holes): a
        // remote file is all data, with its one hole at the end.
        let Ok(size) = self.core.handle_size(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        match (u64::try_from(offset), whence) {
            (Err(_), _) => reply.error(Errno::EINVAL),
            (Ok(o), libc::SEEK_DATA | libc::SEEK_HOLE) if o >= size => reply.error(Errno::ENXIO),
            (Ok(_), libc::SEEK_DATA) => reply.offset(offset),
            (Ok(_), libc::SEEK_HOLE) => reply.offset(size as i64),
            _ => reply.error(Errno::EINVAL),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // No ioctls (`lsattr` asks for inode flags): "inappropriate ioctl", as ext4 answers one
        // it does not know.
        reply.error(Errno::ENOTTY);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let core = self.core.clone();
        self.spawn(
            "readdir",
            tracing::debug_span!("readdir", ino = ino.0, offset),
            async move {
                match core.readdir(ino.0, offset, READDIR_BATCH).await {
                    Ok(items) => {
                        for it in items {
                            if reply.add(INodeNo(it.attr.ino), it.next, kind(it.attr.kind), &it.name) {
                                break;
                            }
                        }
                        reply.ok()
                    }
                    Err(e) => reply.error(fail(&core, "readdir", ino.0, None, &e)),
                }
            },
        );
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let core = self.core.clone();
        let ttl = self.ttl();
        self.spawn(
            "readdirplus",
            tracing::debug_span!("readdirplus", ino = ino.0, offset),
            async move {
                match core.readdir(ino.0, offset, READDIR_BATCH).await {
                    Ok(items) => {
                        for it in items {
                            if reply.add(
                                INodeNo(it.attr.ino),
                                it.next,
                                &it.name,
                                &ttl,
                                &file_attr(&it.attr),
                                Generation(0),
                            ) {
                                break;
                            }
                        }
                        reply.ok()
                    }
                    Err(e) => reply.error(fail(&core, "readdirplus", ino.0, None, &e)),
                }
            },
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // No capacity to speak of: report an empty, full, read-only filesystem.
        reply.statfs(0, 0, 0, self.core.inode_count() as u64, 0, 1 << 20, 255, 1 << 20);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        crate::metrics::fuse_op("getxattr");
        let Some(name) = name_str(name) else {
            return reply.error(Errno::ENODATA);
        };
        match self.core.getxattr(ino.0, &name) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(Errno::ERANGE),
            Err(e) => reply.error(self.fail("getxattr", ino.0, &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        crate::metrics::fuse_op("listxattr");
        match self.core.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() <= size as usize {
                    reply.data(&buf)
                } else {
                    reply.error(Errno::ERANGE)
                }
            }
            Err(e) => reply.error(self.fail("listxattr", ino.0, &e)),
        }
    }

    // Everything that would change the tree: EROFS.

    #[allow(clippy::too_many_arguments)]
    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // Only sent when both files are in this mount, so the target is read-only.
        reply.error(Errno::EROFS);
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _r: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _l: &std::path::Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _wf: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _f: i32, reply: fuser::ReplyCreate) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, _v: &[u8], _f: i32, _p: u32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}
