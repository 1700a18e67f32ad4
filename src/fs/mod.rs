//! The filesystem core: everything a FUSE operation means, without FUSE.
//!
//! [`FsCore`] maps inode numbers to provider entries ([`inode`]), keeps directory listings and
//! attributes for the metadata TTL, opens files at a pinned version ([`crate::source::Opened`]),
//! and serves reads through the block cache ([`crate::cache`]) with a per-handle prefetcher and
//! checksum verifier ([`verify`]). The FUSE adapter (`crate::fuse`) only converts arguments and
//! replies; tests drive this type directly.
//!
//! ## Locks
//! * `table` (std mutex): the inode table. Held only for lookups/updates, never across `.await`.
//! * `dir_locks` (one tokio mutex per directory being listed): makes listing single-flight, so
//!   100 parallel `stat`s of one stale directory cause one `list` call. May be held across the
//!   provider call; never taken while `table` is held.
//! * `open_locks` (one tokio mutex per file being opened with a request to the source): makes
//!   learning a file's version single-flight, so four readers opening one file at once cost one
//!   request, not four. Held across the provider's `open`; never taken while `table` is held.
//! * `handles` (std mutex): fh → handle. Each handle's verifier has its own tokio mutex.
//!
//! ## Versions and the kernel page cache
//! Each open asks the provider for the current version (revalidating when the metadata is older
//! than the TTL). If the version is the one whose pages the kernel may hold, the open replies
//! `FOPEN_KEEP_CACHE`, so warm re-reads never reach the daemon; otherwise the inode's pages and
//! attributes are invalidated first. A version that failed its checksum is remembered: every
//! later read of it fails with EIO until the provider's validator changes.

pub mod inode;
pub mod name;
pub mod verify;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::cache::memory::{BlockCache, FileCtx, FileKey, Priority};
use crate::cache::prefetch::Prefetcher;
use crate::error::SourceError;
use crate::metrics::{Metrics, global};
use crate::source::{Entry, EntryKind, OpenRequest, Source};
use crate::splice::{Check, FuseDev, Keep, LANE_HOLD, STREAM_AFTER, Served, Streamer};
use inode::{InodeTable, Listing, Node, ROOT};
use verify::{Verdict, Verifier};

/// Errors of filesystem operations, each with one errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("bad file handle")]
    BadHandle,
    #[error("no such attribute")]
    NoAttr,
    #[error("read-only file system")]
    ReadOnly,
    #[error("this version failed its checksum earlier: {0}")]
    BadVersion(String),
}

impl FsError {
    /// The errno the caller sees. Exhaustive on purpose.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Source(e) => e.errno(),
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::BadHandle => libc::EBADF,
            FsError::NoAttr => libc::ENODATA,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadVersion(_) => libc::EIO,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// Attributes of one inode as the core reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// One directory entry with its attributes (for readdirplus).
#[derive(Debug, Clone)]
pub struct DirItem {
    pub name: String,
    pub attr: Attr,
    /// Offset of the next entry.
    pub next: u64,
}

/// The settings the core needs.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u32,
    pub dir_mode: u32,
    pub block_size: u64,
    pub memory: u64,
    pub max_window: u64,
    pub max_request: u64,
    pub io_timeout: Duration,
    /// Stream sequential reads of plain-HTTP files with splice (`crate::splice`).
    pub splice: bool,
}

impl CoreConfig {
    pub fn from_config(c: &crate::config::Config) -> CoreConfig {
        CoreConfig {
            ttl: c.ttl,
            negative_ttl: c.negative_ttl,
            uid: c.uid,
            gid: c.gid,
            file_mode: c.file_mode,
            dir_mode: c.dir_mode,
            block_size: c.cache.block_size,
            memory: c.cache.memory,
            max_window: c.cache.max_window,
            max_request: c.cache.request_size.max(c.cache.block_size),
            io_timeout: c.http.op_timeout,
            splice: c.cache.splice,
        }
    }
}

/// A named source and its root entry.
pub struct Mounted {
    pub name: String,
    pub source: Arc<dyn Source>,
    pub root: Entry,
}

struct Handle {
    ino: u64,
    ctx: Arc<FileCtx>,
    validator: String,
    prefetch: Mutex<Prefetcher>,
    /// Shared with its stream, which hashes what it reads (a verified stream, `crate::splice`).
    verifier: Check,
    /// The zero-copy stream of a sequential reader, where the file and the mount allow one.
    stream: Option<Arc<Streamer>>,
    /// Set once the prefetcher has taken a read of this handle for sequential: only such a
    /// handle keeps its checksum through reads that look random.
    sequential: std::sync::atomic::AtomicBool,
    /// Blocks below this index were released from the memory tier behind this reader.
    released: AtomicU64,
    /// Bytes its verifier has hashed (`u64::MAX` without one): blocks from here on are kept.
    hashed: AtomicU64,
}

/// A long sequential reader's blocks are dropped from the memory tier once it is this far past
/// them (and its checksum has taken them), instead of waiting for the LRU to reach the budget.
///
/// The kernel's page cache already holds what the reader got (that is where `cat` and `dd`
/// re-read from), so a second copy here mostly costs memory, and CPU: reading a checksummed
/// 1 GiB file (SMH emulator), the daemon faulted in 256 MiB of fresh buffers before the first
/// eviction (page faults and zeroing were ~12 % of its `perf` samples). Released buffers
/// return to the pool and the next blocks reuse them: minor faults 90–100k → 38–61k, daemon
/// CPU 0.93 → 0.84 s per GiB (medians of 5 alternating runs). The distance covers READs the
/// kernel sends out of order, which on a loaded machine reach ~9 MiB behind the newest; one
/// later than that is fetched again.
pub const RELEASE_BEHIND: u64 = 16 << 20;
/// Run length (bytes read in order) after which a reader's blocks are released behind it:
/// smaller files and short runs keep theirs, for whoever reads them next.
pub const RELEASE_AFTER: u64 = 32 << 20;

/// Furthest a read may land beyond the verified prefix and still be verified (the gap is
/// filled from the cache); further is a seek, and the handle's checksum is not checked.
const VERIFY_MAX_GAP: u64 = 32 << 20;

/// Retires an announced READ when dropped.
struct Retire(Arc<Streamer>, u64);

impl Drop for Retire {
    fn drop(&mut self) {
        self.0.retire(self.1);
    }
}

/// What a READ is answered with.
#[derive(Debug)]
pub enum ReadOut {
    Data(Bytes),
    /// Already answered on `/dev/fuse` (or dropped by the kernel meanwhile): send nothing.
    Spliced,
}

/// Called to drop the kernel's cached pages and attributes of an inode.
pub type Invalidate = Arc<dyn Fn(u64) + Send + Sync>;

/// A file's turn to ask the source for its version ([`FsCore::open`]); its lock leaves the map
/// with the last open that held or waited for it.
struct OpenTurn<'a> {
    core: &'a FsCore,
    ino: u64,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for OpenTurn<'_> {
    fn drop(&mut self) {
        let mut locks = self.core.open_locks.lock().unwrap();
        drop(self.guard.take());
        // Only the map's reference is left: no open holds or waits for this lock (a waiter
        // clones it under this same map lock, so none can appear in between).
        if locks.get(&self.ino).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&self.ino);
        }
    }
}

/// The filesystem.
pub struct FsCore {
    cfg: CoreConfig,
    sources: Vec<Mounted>,
    table: Mutex<InodeTable>,
    dir_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// One tokio mutex per file whose open is asking the source for its version (see
    /// [`FsCore::open`]); removed when the last open waiting on it is done.
    open_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    cache: Arc<BlockCache>,
    invalidate: OnceLock<Invalidate>,
    fuse_dev: OnceLock<Arc<FuseDev>>,
}

impl FsCore {
    /// A core over `sources`. With `single_root`, the one source is the mount root; otherwise
    /// the root lists one directory per source.
    pub fn new(cfg: CoreConfig, sources: Vec<Mounted>, single_root: bool) -> Arc<FsCore> {
        Self::with_disk(cfg, sources, single_root, None)
    }

    /// Like [`FsCore::new`], with a persistent disk tier behind the RAM cache.
    pub fn with_disk(
        cfg: CoreConfig,
        sources: Vec<Mounted>,
        single_root: bool,
        disk: Option<Arc<crate::cache::disk::DiskCache>>,
    ) -> Arc<FsCore> {
        let now = Instant::now();
        let cache = BlockCache::with_disk(cfg.memory, cfg.block_size, cfg.max_request, cfg.io_timeout, disk);
        let root_node = |source, entry| Node::new(ROOT, ROOT, source, entry, now);
        let table = if single_root {
            let root = sources
                .first()
                .map(|m| m.root.clone())
                .unwrap_or_else(|| Entry::dir("", ""));
            InodeTable::new(root_node(Some(0), root))
        } else {
            let mut root = Entry::dir("", "");
            root.mtime = SystemTime::now();
            let mut t = InodeTable::new(root_node(None, root));
            let mut children = Vec::new();
            let mut by_name = HashMap::new();
            for (i, m) in sources.iter().enumerate() {
                let mut e = m.root.clone();
                e.name = m.name.clone();
                e.kind = EntryKind::Dir;
                let ino = t.upsert(ROOT, Some(i), e, now);
                children.push((m.name.clone(), ino));
                by_name.insert(m.name.clone(), ino);
            }
            t.get_mut(ROOT).unwrap().listing = Some(Arc::new(Listing {
                children,
                by_name,
                fetched: now,
            }));
            t
        };
        Arc::new(FsCore {
            cfg,
            sources,
            table: Mutex::new(table),
            dir_locks: Mutex::new(HashMap::new()),
            open_locks: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            cache,
            invalidate: OnceLock::new(),
            fuse_dev: OnceLock::new(),
        })
    }

    /// Installs the callback that invalidates kernel caches (set once the session exists).
    pub fn set_invalidate(&self, f: Invalidate) {
        let _ = self.invalidate.set(f);
    }

    /// Installs the session's `/dev/fuse` descriptor, on which splice streams answer READs.
    pub fn set_fuse_dev(&self, dev: FuseDev) {
        let _ = self.fuse_dev.set(Arc::new(dev));
    }

    pub fn cache(&self) -> &Arc<BlockCache> {
        &self.cache
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    fn invalidate_kernel(&self, ino: u64) {
        if let Some(f) = self.invalidate.get() {
            let f = f.clone();
            // The kernel may wait for pages locked by a read we are about to answer: never
            // invalidate from the thread that will send that answer.
            tokio::task::spawn_blocking(move || f(ino));
        }
    }

    fn attr_of(&self, node: &Node) -> Attr {
        let e = &node.entry;
        let default_mode = match e.kind {
            EntryKind::Dir => self.cfg.dir_mode,
            EntryKind::File => self.cfg.file_mode,
            EntryKind::Symlink => 0o777,
        };
        let perm = match (e.kind, e.mode) {
            (EntryKind::Symlink, _) => 0o777,
            (_, Some(m)) => m & 0o7777 & !0o222,
            (_, None) => default_mode,
        };
        let size = match e.kind {
            EntryKind::Dir => 0,
            EntryKind::Symlink => e.symlink_target.as_ref().map_or(e.size, |t| t.len() as u64),
            EntryKind::File => e.size,
        };
        Attr {
            ino: node.ino,
            kind: e.kind,
            size,
            mtime: e.mtime,
            perm: perm as u16,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        }
    }

    fn dir_lock(&self, ino: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.dir_locks.lock().unwrap().entry(ino).or_default().clone()
    }

    /// The children of directory `ino`, listed again when older than `max_age`.
    async fn children(&self, ino: u64, max_age: Duration) -> FsResult<Arc<Listing>> {
        let fresh = |t: &InodeTable| -> FsResult<Option<Arc<Listing>>> {
            let node = t.get(ino).ok_or(FsError::NotFound)?;
            if node.entry.kind != EntryKind::Dir {
                return Err(FsError::NotDir);
            }
            Ok(match (&node.listing, node.source) {
                (Some(l), None) => Some(l.clone()),
                (Some(l), Some(_)) if l.fetched.elapsed() < max_age => Some(l.clone()),
                _ => None,
            })
        };
        if let Some(l) = fresh(&self.table.lock().unwrap())? {
            return Ok(l);
        }
        let lock = self.dir_lock(ino);
        let _guard = lock.lock().await;
        let (idx, entry) = {
            let t = self.table.lock().unwrap();
            if let Some(l) = fresh(&t)? {
                return Ok(l);
            }
            let node = t.get(ino).ok_or(FsError::NotFound)?;
            (
                node.source.expect("synthetic root always has a listing"),
                node.entry.clone(),
            )
        };
        let source = &self.sources[idx];
        let entries = source.source.list(&entry).await?;
        let now = Instant::now();
        let mut t = self.table.lock().unwrap();
        let mut children = Vec::with_capacity(entries.len());
        let mut by_name = HashMap::with_capacity(entries.len());
        for e in entries {
            if let Err(why) = name::check(&e.name) {
                tracing::warn!(source = %source.name, dir = %entry.remote, name = ?e.name, why, "skipping an entry whose name cannot be a file name");
                continue;
            }
            if by_name.contains_key(&e.name) {
                tracing::warn!(source = %source.name, dir = %entry.remote, name = %e.name, "skipping a duplicate name");
                continue;
            }
            let name = e.name.clone();
            let child = t.upsert(ino, Some(idx), e, now);
            children.push((name.clone(), child));
            by_name.insert(name, child);
        }
        let listing = Arc::new(Listing {
            children,
            by_name,
            fetched: now,
        });
        let node = t.get_mut(ino).ok_or(FsError::NotFound)?;
        node.listing = Some(listing.clone());
        node.confirmed = now;
        Ok(listing)
    }

    /// FUSE lookup: the attributes of `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let listing = self.children(parent, self.cfg.ttl).await?;
        let found = listing.by_name.get(name).copied();
        let ino = match found {
            Some(ino) => ino,
            None => {
                // Negative entries are trusted for the negative TTL only.
                if listing.fetched.elapsed() < self.cfg.negative_ttl {
                    return Err(FsError::NotFound);
                }
                let listing = self.children(parent, self.cfg.negative_ttl).await?;
                *listing.by_name.get(name).ok_or(FsError::NotFound)?
            }
        };
        let t = self.table.lock().unwrap();
        Ok(self.attr_of(t.get(ino).ok_or(FsError::NotFound)?))
    }

    /// FUSE getattr: attributes, refreshed from the parent's listing after the TTL.
    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let (parent, stale, is_source_root) = {
            let t = self.table.lock().unwrap();
            let node = t.get(ino).ok_or(FsError::NotFound)?;
            let is_root = ino == ROOT || t.get(node.parent).is_some_and(|p| p.source.is_none());
            (node.parent, node.confirmed.elapsed() >= self.cfg.ttl, is_root)
        };
        if stale && !is_source_root {
            let listing = self.children(parent, self.cfg.ttl).await?;
            if !listing.children.iter().any(|(_, i)| *i == ino) {
                // Gone remotely; open handles keep working, new stats see ENOENT.
                return Err(FsError::NotFound);
            }
        }
        let t = self.table.lock().unwrap();
        Ok(self.attr_of(t.get(ino).ok_or(FsError::NotFound)?))
    }

    /// FUSE readdir(plus): entries from `offset` (0 and 1 are `.` and `..`), at most `max`.
    pub async fn readdir(&self, ino: u64, offset: u64, max: usize) -> FsResult<Vec<DirItem>> {
        let listing = self.children(ino, self.cfg.ttl).await?;
        let t = self.table.lock().unwrap();
        let me = t.get(ino).ok_or(FsError::NotFound)?;
        let mut out = Vec::new();
        let mut off = offset;
        while out.len() < max {
            let item = match off {
                0 => DirItem {
                    name: ".".into(),
                    attr: self.attr_of(me),
                    next: 1,
                },
                1 => {
                    let parent = t.get(me.parent).unwrap_or(me);
                    DirItem {
                        name: "..".into(),
                        attr: self.attr_of(parent),
                        next: 2,
                    }
                }
                n => {
                    let Some((name, child)) = listing.children.get((n - 2) as usize) else {
                        break;
                    };
                    let Some(node) = t.get(*child) else {
                        off += 1;
                        continue;
                    };
                    DirItem {
                        name: name.clone(),
                        attr: self.attr_of(node),
                        next: n + 1,
                    }
                }
            };
            off = item.next;
            out.push(item);
        }
        Ok(out)
    }

    /// FUSE readlink.
    pub async fn readlink(&self, ino: u64) -> FsResult<String> {
        let (idx, entry) = {
            let t = self.table.lock().unwrap();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            (n.source, n.entry.clone())
        };
        if entry.kind != EntryKind::Symlink {
            return Err(FsError::Source(SourceError::Invalid("not a symlink".into())));
        }
        if let Some(t) = entry.symlink_target {
            return Ok(t);
        }
        let idx = idx.ok_or(FsError::NotFound)?;
        Ok(self.sources[idx].source.readlink(&entry).await?)
    }

    /// Extended attribute names of `ino`.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<String>> {
        let t = self.table.lock().unwrap();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        Ok(n.entry.xattrs.iter().map(|(k, _)| k.clone()).collect())
    }

    /// One extended attribute of `ino`.
    pub fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        let t = self.table.lock().unwrap();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        n.entry
            .xattrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or(FsError::NoAttr)
    }

    /// `(stale, asks)` for opening `ino` now: whether its metadata is older than the TTL, and
    /// whether the open must ask the source (stale, or no version known yet: a file listed
    /// without one, as an autoindex lists them).
    fn open_asks(&self, ino: u64) -> FsResult<(bool, bool)> {
        let t = self.table.lock().unwrap();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        match n.entry.kind {
            EntryKind::Dir => return Err(FsError::IsDir),
            EntryKind::Symlink => return Err(FsError::Source(SourceError::Invalid("open of a symlink".into()))),
            EntryKind::File => {}
        }
        let stale = n.confirmed.elapsed() >= self.cfg.ttl;
        Ok((stale, stale || n.entry.validator.is_none()))
    }

    /// Waits for this file's turn to ask the source for its version.
    async fn open_turn(&self, ino: u64) -> OpenTurn<'_> {
        let lock = self.open_locks.lock().unwrap().entry(ino).or_default().clone();
        OpenTurn {
            core: self,
            ino,
            guard: Some(lock.lock_owned().await),
        }
    }

    /// FUSE open: pins the current version and returns (fh, keep_cache).
    pub async fn open(&self, ino: u64) -> FsResult<(u64, bool)> {
        let (mut stale, asks) = self.open_asks(ino)?;
        // Opens that ask the source go one at a time per file: those that waited then find the
        // version the first one learned, and ask nothing.
        let _turn = if asks {
            let turn = self.open_turn(ino).await;
            stale = self.open_asks(ino)?.0;
            Some(turn)
        } else {
            None
        };
        if stale {
            self.getattr(ino).await?;
        }
        let (idx, entry) = {
            let t = self.table.lock().unwrap();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            (n.source.ok_or(FsError::IsDir)?, n.entry.clone())
        };
        let mounted = &self.sources[idx];
        let req = OpenRequest {
            block_size: self.cfg.block_size,
            revalidate: stale,
        };
        let opened = mounted.source.open(&entry, &req).await?;
        let fresh = opened.entry;
        let validator = fresh
            .validator
            .clone()
            .unwrap_or_else(|| format!("size:{}:mtime:{:?}", fresh.size, fresh.mtime));
        let (keep_cache, invalidate) = {
            let mut t = self.table.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            if n.bad_version.as_deref() == Some(validator.as_str()) {
                // Departure from DESIGN's "EIO until the validator changes": the bytes that failed
                // were dropped with their blocks and the kernel's pages, so a new open downloads
                // and verifies again. A byte flipped once on the wire heals without a remount
                // (issue 8); an object corrupt at the origin fails again at its EOF.
                n.bad_version = None;
            }
            let size_changed = n.entry.size != fresh.size;
            let name = std::mem::take(&mut n.entry.name);
            n.entry = Entry { name, ..fresh.clone() };
            if stale {
                n.confirmed = Instant::now();
            }
            let keep = n.kernel_validator.as_deref() == Some(validator.as_str()) && !size_changed;
            let inval = !keep && (n.kernel_validator.is_some() || size_changed);
            n.kernel_validator = Some(validator.clone());
            (keep, inval)
        };
        if invalidate {
            self.invalidate_kernel(ino);
        }
        let key = Arc::new(FileKey {
            source: Arc::from(mounted.name.as_str()),
            remote: Arc::from(fresh.remote.as_str()),
            validator: Arc::from(validator.as_str()),
        });
        let ctx = Arc::new(FileCtx {
            key,
            size: fresh.size,
            reader: opened.reader,
        });
        if let Some(prefix) = &opened.prefix {
            self.cache.insert_prefix(&ctx, prefix);
        }
        let verifier = fresh
            .checksum
            .clone()
            .filter(|_| fresh.size > 0)
            .map(|c| Verifier::new(c, fresh.size));
        let has_verifier = verifier.is_some();
        let verifier: Check = Arc::new(tokio::sync::Mutex::new(verifier));
        // With a disk tier, a stream keeps what it reads (see crate::splice, "Kept streams").
        let stream = match self.fuse_dev.get() {
            Some(dev) if self.cfg.splice && fresh.size > STREAM_AFTER => ctx.reader.raw_http().await.map(|t| {
                let check = has_verifier.then(|| verifier.clone());
                let keep = self.cache.disk().is_some().then(|| Keep {
                    cache: self.cache.clone(),
                    file: ctx.clone(),
                });
                Arc::new(Streamer::new(
                    t,
                    dev.clone(),
                    self.cfg.io_timeout,
                    fresh.size,
                    check,
                    keep,
                ))
            }),
            _ => None,
        };
        let handle = Arc::new(Handle {
            ino,
            ctx,
            validator,
            prefetch: Mutex::new(Prefetcher::new(self.cfg.max_window, self.cfg.max_request)),
            verifier,
            stream,
            sequential: std::sync::atomic::AtomicBool::new(false),
            released: AtomicU64::new(0),
            hashed: AtomicU64::new(if has_verifier { 0 } else { u64::MAX }),
        });
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, handle);
        Metrics::add(&global().open_handles, 1);
        Ok((fh, keep_cache))
    }

    /// FUSE release.
    pub fn release(&self, fh: u64) {
        if self.handles.lock().unwrap().remove(&fh).is_some() {
            global().open_handles.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Size of the version open handle `fh` reads.
    pub fn handle_size(&self, fh: u64) -> FsResult<u64> {
        Ok(self.handle(fh)?.ctx.size)
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles.lock().unwrap().get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    /// FUSE read: exactly the bytes of `[offset, offset + size)` clipped to EOF, or an error.
    pub async fn read(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        match self.read_for(fh, offset, size, None).await? {
            ReadOut::Data(d) => Ok(d),
            ReadOut::Spliced => unreachable!("a read without a FUSE request is never spliced"),
        }
    }

    /// FUSE read of request `unique`: like [`FsCore::read`], but a sequential reader's bytes
    /// may be spliced straight into the reply instead of being returned.
    pub async fn read_for(self: &Arc<Self>, fh: u64, offset: u64, size: u32, unique: Option<u64>) -> FsResult<ReadOut> {
        let h = self.handle(fh)?;
        // Answered or not, this READ no longer holds back the ones after it (announce_read).
        let _retire = h
            .stream
            .as_ref()
            .filter(|_| unique.is_some())
            .map(|s| Retire(s.clone(), offset));
        {
            let t = self.table.lock().unwrap();
            if let Some(n) = t.get(h.ino)
                && n.bad_version.as_deref() == Some(h.validator.as_str())
            {
                return Err(FsError::BadVersion(h.validator.clone()));
            }
        }
        let file_size = h.ctx.size;
        if offset >= file_size || size == 0 {
            return Ok(ReadOut::Data(Bytes::new()));
        }
        let range = offset..(offset + size as u64).min(file_size);
        let (plan, scheduled, streak) = {
            let mut p = h.prefetch.lock().unwrap();
            let plan = p.on_read(range.start, range.end - range.start, file_size);
            (plan, p.scheduled_to(), p.streak())
        };
        tracing::trace!(fh, offset, size, direct = plan.direct, prefetch = ?plan.prefetch, "read plan");
        let bs = self.cache.block_size();
        if let (Some(s), Some(unique)) = (&h.stream, unique) {
            if plan.direct {
                // The prefetcher saw a seek: the stream's bytes are not wanted now.
                s.stop().await;
            } else if s.position().is_some() {
                match s.serve(unique, range.clone()).await {
                    Served::Spliced | Served::Gone => return Ok(ReadOut::Spliced),
                    Served::Data(d) => return Ok(ReadOut::Data(d)),
                    Served::Head(head) => return self.read_past_stream(&h, range, head).await,
                    Served::Mismatch { expected, actual } => return Err(self.checksum_failed(&h, expected, actual)),
                    Served::NotMine => {}
                }
            } else if streak >= STREAM_AFTER && s.available() {
                // Blocks up to what the prefetcher already asked for come from the cache, and
                // READs already in the daemon take the ordinary path; the stream starts at the
                // first block after both that is neither cached nor being fetched.
                let in_flight = s.furthest_arrived().map_or(0, |o| o + crate::fuse::MAX_READ as u64);
                let mut at = scheduled.max(range.end).max(in_flight).div_ceil(bs) * bs;
                while at < file_size && self.cache.present(&h.ctx, at / bs) {
                    at += bs;
                }
                // With a disk tier, blocks it has are read from it: a stream starts at a block
                // it lacks and stops at the next one it has.
                let end = self
                    .cache
                    .next_on_disk(&h.ctx, at / bs..file_size.div_ceil(bs))
                    .map_or(file_size, |b| b * bs);
                if at.saturating_add(STREAM_AFTER) < end {
                    // A stream that reads into memory holds part of the budget; without it,
                    // this reader goes on the ordinary way (and asks again later).
                    match s.needs_hold().then(|| self.cache.hold(LANE_HOLD)) {
                        Some(None) => tracing::trace!(fh, "no memory for a stream now"),
                        hold => s.start(at..end, self.hashed_to(&h, at), hold.flatten()),
                    }
                }
            }
        }
        // While a stream is open, the ordinary path fetches nothing it will deliver.
        let stream_at = h.stream.as_ref().and_then(|s| s.position()).unwrap_or(u64::MAX);
        let plan = crate::cache::prefetch::Plan {
            prefetch: plan.prefetch.start..plan.prefetch.end.min(stream_at).max(plan.prefetch.start),
            ..plan
        };
        let all_present = (range.start / bs..=(range.end - 1) / bs).all(|b| self.cache.present(&h.ctx, b));
        // With a disk tier, a handle that has read in order keeps whole blocks even of reads
        // that look random: on a loaded machine the kernel's readahead READs of a sequential
        // reader can land 12 MiB apart and out of order, and those read directly were the
        // blocks a later read of the file downloaded again (1 run in ~30 of the kept-stream
        // mount test).
        let keep_blocks = self.cache.disk().is_some() && h.sequential.load(Ordering::Relaxed);
        if plan.direct && h.ctx.reader.ranges() && !all_present && !keep_blocks {
            // Random access: fetch exactly what was asked, leave the block cache alone. A handle
            // that never read from the start has no checksum to follow; one that did keeps it (a
            // sequential reader's READs, reordered by a loaded machine, can look random) until
            // a real seek ends it (`verify`).
            let data = self.direct_read(&h.ctx, range.clone()).await?;
            if h.sequential.load(Ordering::Relaxed) {
                self.verify(&h, range.start, &data).await?;
            } else {
                *h.verifier.lock().await = None;
                h.hashed.store(u64::MAX, Ordering::Relaxed);
            }
            return Ok(ReadOut::Data(data));
        }
        if !plan.direct {
            h.sequential.store(true, Ordering::Relaxed);
        }
        // The kernel keeps many readahead READs in flight, so a sequential reader's reads can
        // land beyond the prefetch window. A miss then fetches the whole aligned request-sized
        // run around it (one 8 MiB GET instead of eight 1 MiB ones); later reads join it.
        let demand_end = if plan.direct {
            range.end
        } else {
            let req = self.cfg.max_request.max(bs).min(plan.window.max(bs));
            (range.end.div_ceil(req) * req)
                .min(file_size)
                .min(stream_at)
                .max(range.end)
        };
        self.cache.ensure_extended(&h.ctx, range.clone(), demand_end);
        if !plan.prefetch.is_empty() {
            self.cache.ensure(&h.ctx, plan.prefetch.clone(), Priority::Prefetch);
        }
        let data = self.gather(&h.ctx, range.clone()).await?;
        if !plan.direct && streak >= RELEASE_AFTER {
            self.release_behind(&h, range.start, streak);
        }
        if range.end < file_size {
            // Hash off the read's critical path: the verifier takes bytes in any order (it
            // fills gaps from the cache), and only the read that reaches EOF must wait for the
            // verdict, below.
            if h.verifier.try_lock().map(|g| g.is_some()).unwrap_or(true) {
                let (me, h2, d) = (self.clone(), h.clone(), data.clone());
                let at = range.start;
                tokio::spawn(async move {
                    let _ = me.verify(&h2, at, &d).await;
                });
            }
        } else {
            self.verify(&h, range.start, &data).await?;
        }
        Ok(ReadOut::Data(data))
    }

    /// A READ of `range` across the end of a stream that stopped short of the file's end (at a
    /// block the disk tier has), which gave its `head`: the rest comes from the cache.
    async fn read_past_stream(&self, h: &Arc<Handle>, range: Range<u64>, head: Bytes) -> FsResult<ReadOut> {
        let rest = range.start + head.len() as u64..range.end;
        let tail = self.gather(&h.ctx, rest.clone()).await?;
        self.verify(h, rest.start, &tail).await?;
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        out.extend_from_slice(&head);
        out.extend_from_slice(&tail);
        Ok(ReadOut::Data(out.freeze()))
    }

    /// Releases the blocks a sequential reader at `at`, `run` bytes into its run, has left
    /// [`RELEASE_BEHIND`] behind: only blocks of this run (others may be another reader's), and
    /// none its checksum has yet to take (the verifier fills its gaps from the cache).
    fn release_behind(&self, h: &Handle, at: u64, run: u64) {
        let bs = self.cache.block_size();
        let upto = (at.saturating_sub(RELEASE_BEHIND) / bs).min(h.hashed.load(Ordering::Relaxed) / bs);
        let from = h
            .released
            .fetch_max(upto, Ordering::Relaxed)
            .max(at.saturating_sub(run).div_ceil(bs));
        if from < upto {
            self.cache.release(&h.ctx, from..upto);
        }
    }

    /// Called on the FUSE thread as a READ arrives, before it is handed to the runtime (which
    /// may run READs in any order): a streaming handle's later READs wait for this one.
    pub fn announce_read(&self, fh: u64, offset: u64) {
        if let Some(h) = self.handles.lock().unwrap().get(&fh)
            && let Some(s) = &h.stream
        {
            s.announce(offset);
        }
    }

    /// Bytes of `range` from the block cache (fetching missing blocks).
    async fn gather(&self, ctx: &Arc<FileCtx>, range: Range<u64>) -> FsResult<Bytes> {
        let bs = self.cache.block_size();
        let (first, last) = (range.start / bs, (range.end - 1) / bs);
        if first == last {
            let block = self.cache.block(ctx, first).await?;
            let from = (range.start - first * bs) as usize;
            let to = (range.end - first * bs) as usize;
            return block_slice(&block, from, to);
        }
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        for b in first..=last {
            let block = self.cache.block(ctx, b).await?;
            let bstart = b * bs;
            let from = range.start.max(bstart) - bstart;
            let to = range.end.min(bstart + block.len() as u64) - bstart;
            out.extend_from_slice(&block_slice(&block, from as usize, to as usize)?);
        }
        Ok(out.freeze())
    }

    async fn direct_read(&self, ctx: &FileCtx, range: Range<u64>) -> Result<Bytes, SourceError> {
        // One retry covers a connection dropped between requests; Http::send already retried
        // the request itself.
        match crate::source::read_all(&*ctx.reader, range.clone()).await {
            Err(e) if e.is_transient() => crate::source::read_all(&*ctx.reader, range).await,
            r => r,
        }
    }

    /// Feeds a sequential handle's verifier; fails the read that completes a bad checksum.
    async fn verify(&self, h: &Handle, offset: u64, data: &Bytes) -> FsResult<()> {
        let mut guard = h.verifier.lock().await;
        let Some(v) = guard.as_mut() else { return Ok(()) };
        let verdict = self.feed(h, v, offset, data).await;
        h.hashed.store(v.pos, Ordering::Relaxed);
        let verdict = verdict?;
        if verdict != Some(Verdict::Pending) {
            *guard = None;
            h.hashed.store(u64::MAX, Ordering::Relaxed);
        }
        match verdict {
            None | Some(Verdict::Pending) => Ok(()),
            Some(Verdict::Match) => {
                tracing::debug!(remote = %h.ctx.key.remote, "checksum verified");
                Ok(())
            }
            Some(Verdict::Mismatch { expected, actual }) => Err(self.checksum_failed(h, expected, actual)),
        }
    }

    /// A version's checksum came out wrong: its cached blocks and the kernel's pages go, and
    /// every read of it fails from now on. Returns the error for the read that completed it.
    fn checksum_failed(&self, h: &Handle, expected: String, actual: String) -> FsError {
        tracing::error!(remote = %h.ctx.key.remote, %expected, %actual, "checksum mismatch: dropping cached blocks, reads of this version fail with EIO");
        {
            let mut t = self.table.lock().unwrap();
            if let Some(n) = t.get_mut(h.ino) {
                n.bad_version = Some(h.validator.clone());
                n.kernel_validator = None;
            }
        }
        self.cache.drop_file(&h.ctx.key);
        self.invalidate_kernel(h.ino);
        FsError::Source(SourceError::Integrity(format!(
            "{}: expected {expected}, got {actual}",
            h.ctx.key.remote
        )))
    }

    /// For a handle with a checksum, the work its stream waits for before opening at `at`: the
    /// checksum is brought up to `at` from the cache (those blocks are cached or being
    /// fetched), so that the stream can hash everything after in order. `false` (the stream
    /// stays closed, the ordinary path keeps verifying): a failed fetch, or a checksum that
    /// cannot follow this reader.
    fn hashed_to(self: &Arc<Self>, h: &Arc<Handle>, at: u64) -> Option<crate::splice::BoxFuture> {
        if h.hashed.load(Ordering::Relaxed) == u64::MAX {
            return None;
        }
        let (me, h) = (self.clone(), h.clone());
        Some(Box::pin(async move {
            let mut guard = h.verifier.lock().await;
            let Some(v) = guard.as_mut() else { return true };
            let fed = me.feed(&h, v, at, &Bytes::new()).await;
            h.hashed.store(v.pos, Ordering::Relaxed);
            matches!(fed, Ok(Some(Verdict::Pending)))
        }))
    }

    /// Feeds `data` at `offset` to `v`, first filling from the cache a gap left by reads
    /// answered out of order. `None`: the read is too far beyond the prefix to be a sequential
    /// reader's, and the checksum cannot be followed.
    async fn feed(&self, h: &Handle, v: &mut Verifier, offset: u64, data: &Bytes) -> FsResult<Option<Verdict>> {
        if offset > v.pos + VERIFY_MAX_GAP {
            // Not a reader going from 0 to EOF: nothing to verify, and no gap worth fetching.
            tracing::debug!(remote = %h.ctx.key.remote, at = offset, hashed = v.pos, "read out of order: checksum not verified");
            return Ok(None);
        }
        let bs = self.cache.block_size();
        while v.pos < offset {
            let b = v.pos / bs;
            let block = self.cache.block(&h.ctx, b).await?;
            let from = (v.pos - b * bs) as usize;
            let to = (offset.min(b * bs + block.len() as u64) - b * bs) as usize;
            let at = v.pos;
            v.feed(at, &block[from..to]);
        }
        Ok(Some(v.feed(offset, data)))
    }

    /// The path of `ino` inside the mount (`/dir/file`), for log lines about failed operations;
    /// `?` stands for an inode the table no longer knows. Walks the parent chain, so call it on
    /// failures only.
    pub fn path_of(&self, ino: u64) -> String {
        let t = self.table.lock().unwrap();
        let mut parts = Vec::new();
        let mut cur = ino;
        // Bounded by the table size: a cycle would be a bug, not a reason to hang a log line.
        for _ in 0..=t.len() {
            if cur == ROOT {
                break;
            }
            match t.get(cur) {
                Some(n) => {
                    parts.push(n.entry.name.clone());
                    cur = n.parent;
                }
                None => {
                    parts.push("?".to_string());
                    break;
                }
            }
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Number of inodes known (tests, stats).
    pub fn inode_count(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

fn block_slice(block: &Bytes, from: usize, to: usize) -> FsResult<Bytes> {
    if to > block.len() || from > to {
        return Err(FsError::Source(SourceError::Protocol(
            "block shorter than expected".into(),
        )));
    }
    Ok(block.slice(from..to))
}
